//! The admin API: agent identity records, their lifecycle (the kill switch)
//! and join tokens.

pub mod service;
