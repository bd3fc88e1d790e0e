//! The tool gateway. Today: authentication of session tokens; the later
//! pipeline stages (validate, inspect, authorize, limit, approve, execute)
//! are added beside it.

pub mod authenticate;
