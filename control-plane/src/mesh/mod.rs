//! Pushing state to sidecars: one long-lived gRPC stream per sidecar.

pub mod stream;
