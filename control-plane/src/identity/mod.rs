//! Identity: the CA, the token-signing key ring, and the gRPC identity API
//! (enroll, renew, issue tokens).

pub mod ca;
pub mod keys;
pub mod service;
