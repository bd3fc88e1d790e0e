//! The `[redis]` table: where the shared limiter and replay cache live.

use serde::{Deserialize, Serialize};

/// Redis settings (the sidecar config's `[redis]` table).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`, or `rediss://` for TLS (rustls). With
    /// `cluster`, any node of the cluster (the others are discovered).
    pub url: String,
    /// Speak Redis Cluster: follow the slot map and `MOVED` redirects.
    #[serde(default)]
    pub cluster: bool,
    /// A file holding the password (else one in the URL, or none).
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    /// PEM CA certificates for `rediss://` (default: the system store).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Longest wait for one check, ms (the decision path waits this at most).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Prefix of every key (several meshes may share one Redis).
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// Consecutive failures that open the breaker.
    #[serde(default = "default_failures")]
    pub breaker_failures: u32,
    /// How long the breaker stays open before one probe, ms.
    #[serde(default = "default_cooldown")]
    pub breaker_cooldown_ms: u32,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password, which may itself hold `@`: the host
        // follows the last one.
        let url = match self.url.rsplit_once('@') {
            Some((scheme_user, host)) => {
                let scheme = scheme_user.split("://").next().unwrap_or("redis");
                format!("{scheme}://[redacted]@{host}")
            }
            None => self.url.clone(),
        };
        f.debug_struct("RedisConfig")
            .field("url", &url)
            .field("cluster", &self.cluster)
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .field("timeout_ms", &self.timeout_ms)
            .field("key_prefix", &self.key_prefix)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_cooldown_ms", &self.breaker_cooldown_ms)
            .finish()
    }
}

fn default_timeout_ms() -> u64 {
    5
}
fn default_prefix() -> String {
    "warden:".into()
}
fn default_failures() -> u32 {
    3
}
fn default_cooldown() -> u32 {
    1000
}

impl RedisConfig {
    /// Settings for `url` with defaults.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.into(),
            cluster: false,
            password_file: None,
            ca_file: None,
            timeout_ms: default_timeout_ms(),
            key_prefix: default_prefix(),
            breaker_failures: default_failures(),
            breaker_cooldown_ms: default_cooldown(),
        }
    }

    /// Refuses settings that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("redis://") || self.url.starts_with("rediss://")) {
            return Err("redis.url must start with redis:// or rediss://".into());
        }
        if !(1..=10_000).contains(&self.timeout_ms) {
            return Err("redis.timeout_ms must be 1..=10000".into());
        }
        if !(1..=1000).contains(&self.breaker_failures)
            || !(10..=600_000).contains(&self.breaker_cooldown_ms)
        {
            return Err(
                "redis.breaker_failures must be 1..=1000 and breaker_cooldown_ms 10..=600000"
                    .into(),
            );
        }
        if self.key_prefix.len() > 64 || self.key_prefix.contains(['{', '}']) {
            return Err("redis.key_prefix must be at most 64 bytes without braces".into());
        }
        Ok(())
    }
}
