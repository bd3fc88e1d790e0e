//! Identity: the CA and the token-signing key ring (the gRPC identity API
//! that uses them is `api::identity`).

pub mod ca;
pub mod keys;
