//! The policy as this sidecar compiled it for enforcement: the tool
//! catalog ([`catalog`]) and the limits ([`limits`]). Below the held state
//! and the gateway, which both read it.

pub mod catalog;
pub mod limits;
