//! Sidecar configuration: a TOML file or flags, with environment overrides
//! whose names live in [`env`]. A leaf: it imports nothing else of the
//! sidecar, and the modules configured by it import their settings from
//! here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Environment variable names, in one place.
pub mod env {
    /// Control-plane URL.
    pub const CONTROL_PLANE: &str = "WARDEN_CONTROL_PLANE";
    /// Trust bundle for the first contact (PEM).
    pub const CA_BUNDLE: &str = "WARDEN_CA_BUNDLE";
    /// Agent id.
    pub const AGENT_ID: &str = "WARDEN_AGENT_ID";
    /// Data directory.
    pub const DATA_DIR: &str = "WARDEN_SIDECAR_DATA_DIR";
    /// Join token (prefer the file in the data directory).
    pub const JOIN_TOKEN: &str = "WARDEN_JOIN_TOKEN";
    /// Agent API TCP address.
    pub const LISTEN: &str = "WARDEN_SIDECAR_LISTEN";
    /// Health HTTP address.
    pub const HEALTH_LISTEN: &str = "WARDEN_SIDECAR_HEALTH_LISTEN";
    /// `text` or `json`.
    pub const LOG_FORMAT: &str = "WARDEN_LOG_FORMAT";
}

mod redis;

pub use redis::RedisConfig;

/// Most nonces the in-process replay cache remembers, by default.
pub const DEFAULT_REPLAY_MAX: usize = 1_000_000;
/// Most verified messages waiting for the agent, by default.
pub const DEFAULT_INBOX_CAPACITY: usize = 1024;
/// Most payload bytes waiting for the agent, by default.
pub const DEFAULT_INBOX_MAX_BYTES: usize = 64 * 1024 * 1024;

/// What to do when Redis cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Refuse messages (a replay could otherwise pass another replica).
    #[default]
    FailClosed,
    /// Check this sidecar's own memory only (replays to another replica go
    /// unnoticed during the outage).
    LocalFallback,
}

/// Name of the file a new join token may be dropped into, in the data dir.
pub const JOIN_TOKEN_FILE: &str = "join-token";

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value is missing or out of range.
    #[error("invalid sidecar config: {0}")]
    Invalid(String),
    /// The config file could not be read or parsed.
    #[error("cannot load {path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
}

/// Sidecar settings. The four without a default (`control_plane`,
/// `ca_bundle`, `agent_id`, `data_dir`) may come from the file, a flag or
/// the environment; a file may leave them out (they read as empty, and
/// [`Config::validate`] refuses what is still empty after the overrides).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Control-plane URL, e.g. `https://localhost:7443`.
    #[serde(default)]
    pub control_plane: String,
    /// PEM trust bundle used to verify the control plane before enrollment.
    #[serde(default)]
    pub ca_bundle: PathBuf,
    /// The agent this sidecar serves.
    #[serde(default)]
    pub agent_id: String,
    /// SPIFFE trust domain of the mesh.
    #[serde(default = "default_td")]
    pub trust_domain: String,
    /// Identity and state directory (0700).
    #[serde(default)]
    pub data_dir: PathBuf,
    /// Serve the agent API on TCP too (every local user can reach a
    /// loopback port; on shared hosts turn it off and use the socket).
    #[serde(default = "yes")]
    pub tcp: bool,
    /// Agent API on TCP; must be a loopback address.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Agent API on a Unix socket (default `<data_dir>/agent.sock`).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Health HTTP endpoint (`/healthz`, `/readyz`).
    #[serde(default = "default_health")]
    pub health_listen: SocketAddr,
    /// The MCP front door (streamable HTTP at `/mcp`); must be a loopback
    /// address. Off unless set.
    #[serde(default)]
    pub mcp_listen: Option<SocketAddr>,
    /// Programs this sidecar may start as stdio MCP servers (absolute
    /// paths). A policy alone cannot make the host run a program: a stdio
    /// server whose `command` is not listed here is refused. Empty by
    /// default.
    #[serde(default)]
    pub mcp_commands: Vec<PathBuf>,
    /// Join token for the first enrollment (never logged).
    #[serde(default, skip_serializing)]
    pub join_token: Option<String>,
    /// Fraction of the certificate lifetime after which to renew.
    #[serde(default = "default_renew_fraction")]
    pub renew_fraction: f64,
    /// Refuse tokens (fail closed) once out of contact with the control
    /// plane for longer than this many seconds. Off by default: the last
    /// held policy keeps being enforced.
    #[serde(default)]
    pub max_policy_age_secs: Option<u64>,
    /// `text` or `json`.
    #[serde(default = "default_log_format")]
    pub log_format: String,
    /// Share rate limits and quotas with the agent's other sidecars through
    /// Redis (default: in-process limits only).
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// Agent-to-agent messaging: where this sidecar receives deliveries,
    /// where its agent's peers' sidecars are, the replay cache.
    #[serde(default)]
    pub messaging: Messaging,
    /// The audit spool: its bound, how it syncs, what happens when full.
    #[serde(default)]
    pub audit: Audit,
}

/// How the audit spool makes events durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditSync {
    /// In batches every `sync_interval_ms` (a killed process loses nothing;
    /// a machine crash at most that interval).
    #[default]
    Interval,
    /// Before each call's answer leaves.
    Strict,
}

/// What a call meets when its event cannot be spooled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOnFull {
    /// Refused with `AUDIT_UNAVAILABLE`, as an audit device that cannot
    /// write does.
    #[default]
    Refuse,
    /// Served; the lost events are counted, alerted on and recorded as a gap.
    Continue,
}

/// The `[audit]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    /// Most bytes of events waiting to be shipped (64 KiB to 64 GiB).
    #[serde(default = "default_spool_bytes")]
    pub spool_max_bytes: u64,
    /// `interval` (default) or `strict`.
    #[serde(default)]
    pub sync: AuditSync,
    /// With `interval`: how often, ms (1 to 10000).
    #[serde(default = "default_sync_ms")]
    pub sync_interval_ms: u64,
    /// `refuse` (default) or `continue`.
    #[serde(default)]
    pub on_full: AuditOnFull,
}

impl Default for Audit {
    fn default() -> Self {
        Self {
            spool_max_bytes: default_spool_bytes(),
            sync: AuditSync::default(),
            sync_interval_ms: default_sync_ms(),
            on_full: AuditOnFull::default(),
        }
    }
}

fn default_spool_bytes() -> u64 {
    256 << 20
}
fn default_sync_ms() -> u64 {
    100
}

/// The `[messaging]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Messaging {
    /// Address for deliveries from other sidecars (mTLS); none: this agent
    /// receives no `SendMessage` (it can still verify envelopes).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Recipient agent id → its sidecar's messaging address (`host:port`).
    #[serde(default)]
    pub peers: std::collections::BTreeMap<String, String>,
    /// `local` (default: this sidecar's memory) or `redis` (shared by every
    /// replica of this agent; needs `[redis]`).
    #[serde(default)]
    pub replay_cache: ReplayCacheKind,
    /// With `redis`: `fail_closed` (default) or `local_fallback` while
    /// Redis is unreachable.
    #[serde(default)]
    pub on_redis_failure: OnFailure,
    /// Most nonces remembered in process.
    #[serde(default = "default_replay_max")]
    pub replay_cache_max: usize,
    /// Most verified messages waiting for the agent.
    #[serde(default = "default_inbox")]
    pub inbox_capacity: usize,
    /// Most payload bytes waiting for the agent.
    #[serde(default = "default_inbox_bytes")]
    pub inbox_max_bytes: usize,
}

impl Default for Messaging {
    fn default() -> Self {
        Self {
            listen: None,
            peers: std::collections::BTreeMap::new(),
            replay_cache: ReplayCacheKind::default(),
            on_redis_failure: OnFailure::default(),
            replay_cache_max: default_replay_max(),
            inbox_capacity: default_inbox(),
            inbox_max_bytes: default_inbox_bytes(),
        }
    }
}

/// Where nonces are remembered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayCacheKind {
    /// In process.
    #[default]
    Local,
    /// In Redis.
    Redis,
}

fn default_replay_max() -> usize {
    DEFAULT_REPLAY_MAX
}

fn default_inbox() -> usize {
    DEFAULT_INBOX_CAPACITY
}

fn default_inbox_bytes() -> usize {
    DEFAULT_INBOX_MAX_BYTES
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("control_plane", &self.control_plane)
            .field("ca_bundle", &self.ca_bundle)
            .field("agent_id", &self.agent_id)
            .field("trust_domain", &self.trust_domain)
            .field("data_dir", &self.data_dir)
            .field("tcp", &self.tcp)
            .field("listen", &self.listen)
            .field("socket", &self.socket_path())
            .field("health_listen", &self.health_listen)
            .field("mcp_listen", &self.mcp_listen)
            .field("mcp_commands", &self.mcp_commands)
            .field(
                "join_token",
                &self.join_token.as_ref().map(|_| "[redacted]"),
            )
            .field("renew_fraction", &self.renew_fraction)
            .field("max_policy_age_secs", &self.max_policy_age_secs)
            .field("log_format", &self.log_format)
            .field("redis", &self.redis)
            .field("messaging", &self.messaging)
            .field("audit", &self.audit)
            .finish()
    }
}

fn yes() -> bool {
    true
}
fn default_td() -> String {
    "warden.local".into()
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7600))
}
fn default_health() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7601))
}
fn default_renew_fraction() -> f64 {
    0.5
}
fn default_log_format() -> String {
    "text".into()
}

impl Config {
    /// Minimal settings with defaults.
    pub fn new(control_plane: &str, ca_bundle: PathBuf, agent_id: &str, data_dir: PathBuf) -> Self {
        Self {
            control_plane: control_plane.into(),
            ca_bundle,
            agent_id: agent_id.into(),
            trust_domain: default_td(),
            data_dir,
            tcp: true,
            listen: default_listen(),
            socket: None,
            health_listen: default_health(),
            mcp_listen: None,
            mcp_commands: Vec::new(),
            join_token: None,
            renew_fraction: default_renew_fraction(),
            max_policy_age_secs: None,
            log_format: default_log_format(),
            redis: None,
            messaging: Messaging::default(),
            audit: Audit::default(),
        }
    }

    /// Loads a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, Error> {
        let err = |detail: String| Error::File {
            path: path.into(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        toml::from_str(&text).map_err(|e| err(e.to_string()))
    }

    /// The Unix socket path.
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join("agent.sock"))
    }

    /// The required settings that are still empty, by their key.
    pub fn missing(&self) -> Vec<&'static str> {
        [
            ("control_plane", self.control_plane.is_empty()),
            ("ca_bundle", self.ca_bundle.as_os_str().is_empty()),
            ("agent_id", self.agent_id.is_empty()),
            ("data_dir", self.data_dir.as_os_str().is_empty()),
        ]
        .into_iter()
        .filter_map(|(k, empty)| empty.then_some(k))
        .collect()
    }

    /// Checks values.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(key) = self.missing().first() {
            return Err(Error::Invalid(format!("{key} is not set")));
        }
        warden_shared::agent::AgentId::new(&self.agent_id)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        warden_shared::spiffe::TrustDomain::new(&self.trust_domain)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        if !self.control_plane.starts_with("https://") {
            return Err(Error::Invalid(
                "control_plane must be an https:// URL".into(),
            ));
        }
        if !self.listen.ip().is_loopback() {
            return Err(Error::Invalid(format!(
                "listen {} is not a loopback address; the agent API must not be reachable from the network",
                self.listen
            )));
        }
        if let Some(m) = self.mcp_listen
            && !m.ip().is_loopback()
        {
            return Err(Error::Invalid(format!(
                "mcp_listen {m} is not a loopback address; the MCP front door must not be reachable from the network"
            )));
        }
        if let Some(c) = self.mcp_commands.iter().find(|c| !c.is_absolute()) {
            return Err(Error::Invalid(format!(
                "mcp_commands: {} is not an absolute path",
                c.display()
            )));
        }
        if !(0.1..=0.9).contains(&self.renew_fraction) {
            return Err(Error::Invalid(
                "renew_fraction must be between 0.1 and 0.9".into(),
            ));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(Error::Invalid("log_format must be text or json".into()));
        }
        if let Some(r) = &self.redis {
            r.validate().map_err(Error::Invalid)?;
        }
        if !(64 << 10..=64 << 30).contains(&self.audit.spool_max_bytes)
            || !(1..=10_000).contains(&self.audit.sync_interval_ms)
        {
            return Err(Error::Invalid(
                "audit.spool_max_bytes must be 64 KiB to 64 GiB and audit.sync_interval_ms 1 to 10000"
                    .into(),
            ));
        }
        let m = &self.messaging;
        if m.replay_cache == ReplayCacheKind::Redis && self.redis.is_none() {
            return Err(Error::Invalid(
                "messaging.replay_cache = \"redis\" needs a [redis] table".into(),
            ));
        }
        for (agent, addr) in &m.peers {
            warden_shared::agent::AgentId::new(agent)
                .map_err(|e| Error::Invalid(format!("messaging.peers: {e}")))?;
            if addr.is_empty() || addr.contains("://") || !addr.contains(':') {
                return Err(Error::Invalid(format!(
                    "messaging.peers.{agent} = {addr:?}: give host:port"
                )));
            }
        }
        if !(1..=1 << 34).contains(&m.inbox_max_bytes) {
            return Err(Error::Invalid(
                "messaging.inbox_max_bytes must be between 1 and 16 GiB".into(),
            ));
        }
        if !(1..=1_000_000).contains(&m.inbox_capacity)
            || !(1..=100_000_000).contains(&m.replay_cache_max)
        {
            return Err(Error::Invalid(
                "messaging.inbox_capacity must be 1..=1000000 and replay_cache_max 1..=100000000"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Backoff bounds for renewal retries.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// See [`RETRY_MIN`].
pub const RETRY_MAX: Duration = Duration::from_secs(60);
