//! Pushing state to sidecars: one long-lived gRPC stream per sidecar.

pub mod registry;
pub mod stream;
