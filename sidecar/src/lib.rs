//! Warden sidecar: holds the agent's certificate, verifies its session
//! tokens locally, and serves the agent-facing API. `main.rs` parses flags;
//! [`app`] wires the pieces.

pub mod a2a;
pub mod api;
pub mod app;
pub mod config;
pub mod cp;
pub mod gateway;
pub mod health;
pub mod identity;
pub mod infra;
pub mod mcp;
pub mod mesh;
pub mod policy;
pub mod state;

/// Current time, unix seconds.
pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX)
}
