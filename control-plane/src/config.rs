//! Control-plane configuration: a TOML file written by `init`, overridden by
//! environment variables (names in [`env`]) and flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variable names, in one place.
pub mod env {
    /// Overrides `listen`.
    pub const LISTEN: &str = "WARDEN_CP_LISTEN";
    /// Overrides `jwks_listen`.
    pub const JWKS_LISTEN: &str = "WARDEN_CP_JWKS_LISTEN";
    /// Overrides `oauth_listen`.
    pub const OAUTH_LISTEN: &str = "WARDEN_CP_OAUTH_LISTEN";
    /// Overrides `data_dir`.
    pub const DATA_DIR: &str = "WARDEN_CP_DATA_DIR";
    /// Overrides `log_format` (`text` or `json`).
    pub const LOG_FORMAT: &str = "WARDEN_LOG_FORMAT";
}

/// Name of the config file `init` writes into the data directory.
pub const CONFIG_FILE: &str = "control-plane.toml";

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {path}: {source} (run `warden-control-plane init` first?)")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this struct.
    #[error("invalid config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Control-plane settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// SPIFFE trust domain, e.g. `warden.local`.
    pub trust_domain: String,
    /// Directory holding the CA, the database and admin credentials.
    #[serde(default)]
    pub data_dir: PathBuf,
    /// gRPC (mTLS) listen address.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// JWKS HTTP listen address.
    #[serde(default = "default_jwks_listen")]
    pub jwks_listen: SocketAddr,
    /// The RFC 8693 token endpoint's listen address (HTTPS, agents'
    /// client certificates).
    #[serde(default = "default_oauth_listen")]
    pub oauth_listen: SocketAddr,
    /// DNS names in the control plane's server certificate.
    #[serde(default = "default_server_names")]
    pub server_names: Vec<String>,
    /// Agent certificate lifetime, seconds.
    #[serde(default = "default_cert_ttl")]
    pub cert_ttl_secs: u64,
    /// Default join token lifetime, seconds.
    #[serde(default = "default_join_ttl")]
    pub join_token_ttl_secs: u32,
    /// Default cap on concurrent sessions for agents registered without one.
    #[serde(default = "default_max_sessions")]
    pub default_max_sessions: u32,
    /// Default tool-call cap per session (0: none).
    #[serde(default)]
    pub default_max_tool_calls: u32,
    /// `true`: every commit reaches the disk (SQLite synchronous=FULL).
    #[serde(default = "yes")]
    pub durable_sync: bool,
    /// Spent/expired join tokens, ended sessions and lapsed certificate
    /// records are deleted this many days after they ended (0: never).
    #[serde(default = "default_retention")]
    pub retention_days: u32,
    /// `text` or `json`.
    #[serde(default = "default_log_format")]
    pub log_format: String,
    /// Where approval requests and decisions are posted (Standard Webhooks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approval_webhooks: Vec<crate::webhooks::WebhookConfig>,
    /// How often the audit log's tree head is signed when the log grew,
    /// seconds (1-3600).
    #[serde(default = "default_head_interval")]
    pub audit_head_interval_secs: u32,
    /// Where the audit log is exported as OpenTelemetry log records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_otlp: Option<crate::otlp::OtlpConfig>,
    /// OpenID Connect providers whose users agents may act for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identity_providers: Vec<crate::delegation::ProviderConfig>,
    /// The URL users reach the control plane's HTTP listener at (the
    /// consent pages, the token endpoint); `http://<jwks_listen>` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// The longest a user's consent grant may last, days (1-365).
    #[serde(default = "default_max_grant_days")]
    pub max_grant_days: u32,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7443))
}
fn default_jwks_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7480))
}
fn default_oauth_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7444))
}
fn default_server_names() -> Vec<String> {
    vec!["localhost".into()]
}
fn default_cert_ttl() -> u64 {
    3600
}
fn default_join_ttl() -> u32 {
    600
}
fn default_max_sessions() -> u32 {
    10
}
fn default_retention() -> u32 {
    30
}
fn default_head_interval() -> u32 {
    10
}
fn default_max_grant_days() -> u32 {
    30
}
fn yes() -> bool {
    true
}
fn default_log_format() -> String {
    "text".into()
}

impl Config {
    /// Defaults for a trust domain and data directory.
    pub fn new(trust_domain: &str, data_dir: &Path) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            data_dir: data_dir.into(),
            listen: default_listen(),
            jwks_listen: default_jwks_listen(),
            oauth_listen: default_oauth_listen(),
            server_names: default_server_names(),
            cert_ttl_secs: default_cert_ttl(),
            join_token_ttl_secs: default_join_ttl(),
            default_max_sessions: default_max_sessions(),
            default_max_tool_calls: 0,
            durable_sync: true,
            retention_days: default_retention(),
            log_format: default_log_format(),
            approval_webhooks: Vec::new(),
            audit_head_interval_secs: default_head_interval(),
            audit_otlp: None,
            identity_providers: Vec::new(),
            public_url: None,
            max_grant_days: default_max_grant_days(),
        }
    }

    /// Where users reach the HTTP listener.
    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.jwks_listen))
    }

    /// Reads `<data_dir>/control-plane.toml`, then applies environment
    /// overrides, then validates.
    pub fn load(data_dir: &Path) -> Result<Self, Error> {
        let path = data_dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        let mut c: Self = toml::from_str(&text).map_err(|source| Error::Parse { path, source })?;
        c.data_dir = data_dir.into();
        c.apply_env()?;
        c.validate()?;
        Ok(c)
    }

    fn apply_env(&mut self) -> Result<(), Error> {
        let addr = |name: &str| -> Result<Option<SocketAddr>, Error> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .map(Some)
                    .map_err(|_| Error::Invalid(format!("{name}={v:?} is not host:port"))),
                Err(_) => Ok(None),
            }
        };
        if let Some(a) = addr(env::LISTEN)? {
            self.listen = a;
        }
        if let Some(a) = addr(env::JWKS_LISTEN)? {
            self.jwks_listen = a;
        }
        if let Some(a) = addr(env::OAUTH_LISTEN)? {
            self.oauth_listen = a;
        }
        if let Ok(v) = std::env::var(env::LOG_FORMAT) {
            self.log_format = v;
        }
        Ok(())
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), Error> {
        warden_shared::spiffe::TrustDomain::new(&self.trust_domain)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        if !(60..=30 * 86_400).contains(&self.cert_ttl_secs) {
            return Err(Error::Invalid(
                "cert_ttl_secs must be between 60 and 2592000".into(),
            ));
        }
        if !(1..=86_400).contains(&self.join_token_ttl_secs) {
            return Err(Error::Invalid(
                "join_token_ttl_secs must be between 1 and 86400".into(),
            ));
        }
        if !(1..=10_000).contains(&self.default_max_sessions) {
            return Err(Error::Invalid(
                "default_max_sessions must be between 1 and 10000".into(),
            ));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(Error::Invalid("log_format must be text or json".into()));
        }
        if !(1..=3600).contains(&self.audit_head_interval_secs) {
            return Err(Error::Invalid(
                "audit_head_interval_secs must be between 1 and 3600".into(),
            ));
        }
        if let Some(o) = &self.audit_otlp {
            crate::otlp::Exporter::load(o, &self.trust_domain).map_err(Error::Invalid)?;
        }
        if self.approval_webhooks.len() > 16 {
            return Err(Error::Invalid("at most 16 approval_webhooks".into()));
        }
        for w in &self.approval_webhooks {
            crate::webhooks::Endpoint::load(w).map_err(|e| Error::Invalid(e.to_string()))?;
        }
        if self.identity_providers.len() > 8 {
            return Err(Error::Invalid("at most 8 identity_providers".into()));
        }
        let mut names = std::collections::HashSet::new();
        let mut issuers = std::collections::HashSet::new();
        for p in &self.identity_providers {
            if !names.insert(&p.name) || !issuers.insert(&p.issuer) {
                return Err(Error::Invalid(format!(
                    "identity provider {:?}: names and issuers must be unique",
                    p.name
                )));
            }
        }
        crate::delegation::Delegation::load(&self.identity_providers, &self.public_url())
            .map_err(|e| Error::Invalid(e.to_string()))?;
        if let Some(u) = &self.public_url {
            let url: http::Uri = u
                .parse()
                .map_err(|_| Error::Invalid(format!("public_url {u:?} is not a URL")))?;
            if !matches!(url.scheme_str(), Some("http" | "https"))
                || url.host().is_none()
                || url.query().is_some()
            {
                return Err(Error::Invalid(format!(
                    "public_url {u:?} must be an http(s) URL without a query"
                )));
            }
        }
        if !(1..=365).contains(&self.max_grant_days) {
            return Err(Error::Invalid(
                "max_grant_days must be between 1 and 365".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delegation::ProviderConfig;

    fn provider(name: &str, issuer: &str) -> ProviderConfig {
        ProviderConfig {
            name: name.into(),
            issuer: issuer.into(),
            jwks_uri: None,
            audiences: vec!["warden".into()],
            algorithms: vec!["RS256".into()],
            clock_skew_secs: 60,
            claims: Default::default(),
            ca_file: None,
            client_id: None,
            client_secret_file: None,
        }
    }

    #[test]
    fn delegation_settings_are_checked() {
        let base = Config::new("warden.local", Path::new("/tmp"));
        base.validate().unwrap();
        let mut ok = base.clone();
        ok.identity_providers = vec![
            provider("a", "https://a.example"),
            provider("b", "https://b.example"),
        ];
        ok.public_url = Some("https://warden.example.com/".into());
        ok.validate().unwrap();
        let refused = |tweak: &dyn Fn(&mut Config), says: &str| {
            let mut c = ok.clone();
            tweak(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(says), "{says}: {e}");
        };
        refused(
            &|c| {
                c.identity_providers
                    .push(provider("a", "https://c.example"))
            },
            "names and issuers must be unique",
        );
        refused(
            &|c| {
                c.identity_providers
                    .push(provider("c", "https://a.example"))
            },
            "names and issuers must be unique",
        );
        refused(
            &|c| {
                c.identity_providers = (0..9)
                    .map(|i| provider(&format!("p{i}"), &format!("https://{i}.example")))
                    .collect();
            },
            "at most 8 identity_providers",
        );
        refused(
            &|c| c.identity_providers[0].algorithms = vec!["none".into()],
            "algorithm \"none\" is not accepted",
        );
        refused(&|c| c.public_url = Some("ftp://x".into()), "public_url");
        refused(
            &|c| c.public_url = Some("https://x.example/?a=b".into()),
            "without a query",
        );
        refused(&|c| c.max_grant_days = 0, "max_grant_days");
        refused(&|c| c.max_grant_days = 366, "max_grant_days");
    }
}
