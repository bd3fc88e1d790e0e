//! Warden control plane: the certificate authority, session-token issuer and
//! admin API of the mesh. `main.rs` parses flags; [`app`] wires the pieces.

pub mod a2a;
pub mod agents;
pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod config;
pub mod consent;
pub mod ctl;
pub mod delegation;
pub mod digest;
pub mod grants;
pub mod http_client;
pub mod identity;
pub mod init;
pub mod jwks;
pub mod mesh;
pub mod otlp;
pub mod policy;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod token_exchange;
pub mod webhooks;

/// Current time, unix seconds.
pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Unix milliseconds.
pub fn now_unix_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX)
}

/// Unix seconds as RFC 3339 text (empty when out of range).
pub fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Unix seconds as a protobuf timestamp.
pub fn timestamp(secs: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: secs,
        nanos: 0,
    }
}
