//! Pushing state to sidecars: one long-lived gRPC stream per sidecar.

pub mod hub;
pub mod parts;
pub mod registry;
pub mod stream;
