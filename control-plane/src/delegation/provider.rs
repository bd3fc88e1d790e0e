//! One trusted OpenID Connect provider: its configuration, its endpoints
//! (configured, or read from its discovery document), and its JWK Set,
//! fetched on first use, kept for [`KEYS_MAX_AGE`], and fetched again when a
//! token names a key it does not hold (at most once per
//! [`REFETCH_INTERVAL`], so a stream of made-up key ids cannot make the
//! control plane hammer the provider).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use warden_shared::oidc::{self, Alg, Jwks};

/// How long a fetched JWK Set is used before it is fetched again.
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
/// The least time between two fetches a token's unknown key id causes.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Each fetch, connect to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest discovery document or JWK Set read.
const MAX_DOCUMENT: usize = 256 * 1024;
/// Most groups carried from a token into a session.
pub const MAX_GROUPS: usize = 32;
/// Most bytes of group names carried from a token into a session.
pub const MAX_GROUPS_BYTES: usize = 2048;
/// Longest mapped claim value carried.
pub const MAX_CLAIM_LEN: usize = 256;

/// A trusted identity provider, as configured (`[[identity_providers]]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Short name, for pages and logs.
    pub name: String,
    /// The issuer identifier (`iss`), compared exactly; discovery reads
    /// `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// The JWK Set's URL; read from discovery when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Accepted `aud` values (usually Warden's client id at the provider).
    pub audiences: Vec<String>,
    /// Accepted signature algorithms.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, seconds (at most 300).
    #[serde(default = "default_skew")]
    pub clock_skew_secs: u32,
    /// Which of the provider's claims become the session's user attributes.
    #[serde(default)]
    pub claims: ClaimMap,
    /// CA certificates (PEM) to trust for the provider; the system's roots
    /// when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Warden's OAuth client id at the provider (for the consent pages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// A file holding Warden's client secret at the provider (for the
    /// consent pages); a public client (PKCE only) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
}

/// Provider claim names for the session's user attributes; an attribute
/// whose claim is unset or absent from a token is left out.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClaimMap {
    /// A string claim: `context.tier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// A string or list-of-strings claim: `context.groups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<String>,
    /// A string claim: `context.email`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_skew() -> u32 {
    60
}

/// Why a provider's configuration was refused.
#[derive(Debug, thiserror::Error)]
#[error("identity provider {name:?}: {why}")]
pub struct ConfigError {
    name: String,
    why: String,
}

/// Why a provider's keys or endpoints could not be had.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("identity provider {provider:?}: {why}")]
pub struct Unavailable {
    /// The provider's name.
    pub provider: String,
    /// What failed (never a token).
    pub why: String,
}

/// The endpoints discovery found (or the configuration gave).
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    /// The JWK Set.
    pub jwks: Option<http::Uri>,
    /// Where the browser signs in.
    pub authorization: Option<http::Uri>,
    /// Where the code is exchanged.
    pub token: Option<http::Uri>,
}

#[derive(Debug)]
struct Keys {
    set: Arc<Jwks>,
    fetched: Instant,
}

/// A provider ready to verify its users' tokens.
#[derive(Debug)]
pub struct Provider {
    config: ProviderConfig,
    algorithms: Vec<Alg>,
    tls: Option<Arc<rustls::ClientConfig>>,
    client_secret: Option<String>,
    endpoints: RwLock<Option<Arc<Endpoints>>>,
    keys: RwLock<Option<Keys>>,
    /// One fetch at a time; holds when the last unknown-kid fetch began.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

fn secret_text(path: &std::path::Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > 4096 {
        return Err("larger than 4 KiB".into());
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let text = text.trim();
    if text.is_empty() {
        return Err("empty".into());
    }
    Ok(text.to_owned())
}

impl Provider {
    /// Checks a configured provider and reads its client secret.
    pub fn load(config: &ProviderConfig) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError {
            name: config.name.clone(),
            why,
        };
        if config.name.is_empty()
            || config.name.len() > 64
            || !config
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(bad(
                "name must be 1-64 letters, digits, '-', '_' or '.'".into()
            ));
        }
        let issuer = crate::http_client::target(&config.issuer)
            .map_err(|e| bad(format!("issuer {:?}: {e}", config.issuer)))?;
        if config.issuer.contains('#') || config.issuer.contains('?') {
            return Err(bad("issuer must not have a query or fragment".into()));
        }
        // A user is `<issuer>#<subject>`: kept within the audit log's field bound.
        if config.issuer.len() > 512 {
            return Err(bad("issuer must be at most 512 bytes".into()));
        }
        if let Some(j) = &config.jwks_uri {
            crate::http_client::target(j).map_err(|e| bad(format!("jwks_uri {j:?}: {e}")))?;
        }
        if config.audiences.is_empty()
            || config.audiences.len() > 16
            || config
                .audiences
                .iter()
                .any(|a| a.is_empty() || a.len() > 256)
        {
            return Err(bad("audiences must list 1-16 non-empty values".into()));
        }
        if config.algorithms.is_empty() {
            return Err(bad("algorithms must list at least one".into()));
        }
        let algorithms = config
            .algorithms
            .iter()
            .map(|a| {
                Alg::parse(a).ok_or_else(|| {
                    bad(format!(
                        "algorithm {a:?} is not accepted (RS256, RS384, RS512, PS256, ES256, ES384, EdDSA)"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if i64::from(config.clock_skew_secs) > oidc::MAX_SKEW_SECS {
            return Err(bad(format!(
                "clock_skew_secs must be at most {}",
                oidc::MAX_SKEW_SECS
            )));
        }
        for (what, claim) in [
            ("tier", &config.claims.tier),
            ("groups", &config.claims.groups),
            ("email", &config.claims.email),
        ] {
            if claim
                .as_ref()
                .is_some_and(|c| c.is_empty() || c.len() > 256)
            {
                return Err(bad(format!("claims.{what} must be 1-256 bytes")));
            }
        }
        let tls = if issuer.scheme_str() == Some("https")
            || config
                .jwks_uri
                .as_deref()
                .is_some_and(|j| j.starts_with("https:"))
        {
            Some(
                crate::http_client::client_tls(config.ca_file.as_deref()).map_err(
                    |(path, why)| {
                        bad(match path {
                            Some(p) => format!("ca_file {}: {why}", p.display()),
                            None => why,
                        })
                    },
                )?,
            )
        } else {
            None
        };
        let client_secret = match &config.client_secret_file {
            Some(p) => Some(
                secret_text(p)
                    .map_err(|why| bad(format!("client_secret_file {}: {why}", p.display())))?,
            ),
            None => None,
        };
        Ok(Self {
            config: config.clone(),
            algorithms,
            tls,
            client_secret,
            endpoints: RwLock::new(None),
            keys: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(None),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// The client secret, if the configuration names one.
    pub fn client_secret(&self) -> Option<&str> {
        self.client_secret.as_deref()
    }

    fn unavailable(&self, why: impl Into<String>) -> Unavailable {
        Unavailable {
            provider: self.config.name.clone(),
            why: why.into(),
        }
    }

    /// Sends `req` to `url` (through TLS for https) within the fetch
    /// timeout; the answer's status and body.
    async fn send(
        &self,
        url: &http::Uri,
        req: http::request::Builder,
        body: Bytes,
    ) -> Result<(http::StatusCode, Bytes), Unavailable> {
        let tls = match url.scheme_str() {
            Some("https") => Some(
                self.tls
                    .as_ref()
                    .ok_or_else(|| self.unavailable("no TLS settings for an https URL"))?,
            ),
            _ => None,
        };
        let req = req
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(body))
            .map_err(|e| self.unavailable(format!("request: {e}")))?;
        tokio::time::timeout(
            FETCH_TIMEOUT,
            crate::http_client::send(url, tls, req, MAX_DOCUMENT),
        )
        .await
        .map_err(|_| self.unavailable(format!("{url}: no answer within {FETCH_TIMEOUT:?}")))?
        .map_err(|e| self.unavailable(format!("{url}: {e}")))
    }

    /// GETs `url` as JSON; the body of a 2xx answer.
    pub(crate) async fn get_json(&self, url: &http::Uri) -> Result<Bytes, Unavailable> {
        let req = crate::http_client::request(http::Method::GET, url);
        let (status, body) = self.send(url, req, Bytes::new()).await?;
        if !status.is_success() {
            return Err(self.unavailable(format!("{url} answered {status}")));
        }
        Ok(body)
    }

    /// POSTs a form to `url`; the status and body.
    pub(crate) async fn post_form(
        &self,
        url: &http::Uri,
        form: String,
    ) -> Result<(http::StatusCode, Bytes), Unavailable> {
        let req = crate::http_client::request(http::Method::POST, url).header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        );
        self.send(url, req, Bytes::from(form)).await
    }

    /// The provider's endpoints: configured, or read once from its
    /// discovery document (whose `issuer` must be this provider's).
    pub async fn endpoints(&self) -> Result<Arc<Endpoints>, Unavailable> {
        if let Some(e) = self
            .endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Ok(Arc::clone(e));
        }
        let configured_jwks = match &self.config.jwks_uri {
            Some(j) => Some(
                crate::http_client::target(j)
                    .map_err(|e| self.unavailable(format!("jwks_uri: {e}")))?,
            ),
            None => None,
        };
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let url = crate::http_client::target(&url).map_err(|e| self.unavailable(e))?;
        let discovered = match self.get_json(&url).await {
            Ok(body) => Some(body),
            // Discovery is needed only for what the configuration left out.
            Err(e) if configured_jwks.is_none() => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "no discovery document; using the configured jwks_uri");
                None
            }
        };
        let mut found = Endpoints {
            jwks: configured_jwks,
            ..Endpoints::default()
        };
        if let Some(body) = discovered {
            #[derive(Deserialize)]
            struct Discovery {
                issuer: String,
                #[serde(default)]
                jwks_uri: Option<String>,
                #[serde(default)]
                authorization_endpoint: Option<String>,
                #[serde(default)]
                token_endpoint: Option<String>,
            }
            let d: Discovery = serde_json::from_slice(&body)
                .map_err(|e| self.unavailable(format!("the discovery document: {e}")))?;
            // OpenID Connect Discovery 1.0 §4.3.
            if d.issuer != self.config.issuer {
                return Err(self.unavailable(format!(
                    "the discovery document names issuer {:?}",
                    d.issuer.chars().take(256).collect::<String>()
                )));
            }
            let url = |name: &str, v: Option<String>| -> Result<Option<http::Uri>, Unavailable> {
                v.map(|u| {
                    crate::http_client::target(&u).map_err(|e| {
                        self.unavailable(format!("the discovery document's {name}: {e}"))
                    })
                })
                .transpose()
            };
            if found.jwks.is_none() {
                found.jwks = url("jwks_uri", d.jwks_uri)?;
            }
            found.authorization = url("authorization_endpoint", d.authorization_endpoint)?;
            found.token = url("token_endpoint", d.token_endpoint)?;
        }
        if found.jwks.is_none() {
            return Err(self.unavailable("no jwks_uri configured or discovered"));
        }
        let found = Arc::new(found);
        *self.endpoints.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&found));
        Ok(found)
    }

    fn cached(&self, max_age: Duration) -> Option<Arc<Jwks>> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|k| k.fetched.elapsed() < max_age)
            .map(|k| Arc::clone(&k.set))
    }

    async fn fetch_keys(&self) -> Result<Arc<Jwks>, Unavailable> {
        let endpoints = self.endpoints().await?;
        let url = endpoints
            .jwks
            .as_ref()
            .ok_or_else(|| self.unavailable("no jwks_uri"))?;
        let body = self.get_json(url).await?;
        let set = Arc::new(Jwks::parse(&body).map_err(|e| self.unavailable(e.to_string()))?);
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Some(Keys {
            set: Arc::clone(&set),
            fetched: Instant::now(),
        });
        tracing::info!(provider = %self.config.name, "identity provider keys fetched");
        Ok(set)
    }

    /// The key set: cached while fresh; a stale one is kept when fetching
    /// fails.
    async fn keys(&self) -> Result<Arc<Jwks>, Unavailable> {
        if let Some(k) = self.cached(KEYS_MAX_AGE) {
            return Ok(k);
        }
        let _one = self.fetching.lock().await;
        if let Some(k) = self.cached(KEYS_MAX_AGE) {
            return Ok(k);
        }
        match self.fetch_keys().await {
            Ok(k) => Ok(k),
            Err(e) => match self.cached(Duration::MAX) {
                Some(stale) => {
                    tracing::warn!(error = %e, "identity provider keys could not be refreshed; using the ones held");
                    Ok(stale)
                }
                None => Err(e),
            },
        }
    }

    /// The key set fetched again for a token naming an unknown key, unless
    /// one was fetched for that reason within [`REFETCH_INTERVAL`] (then
    /// `None`, unless another caller's fetch brought `kid` meanwhile).
    async fn refetch_for(&self, kid: &str) -> Result<Option<Arc<Jwks>>, Unavailable> {
        let mut last = self.fetching.lock().await;
        if let Some(k) = self.cached(Duration::MAX).filter(|k| k.has_kid(kid)) {
            return Ok(Some(k));
        }
        if last.is_some_and(|t| t.elapsed() < REFETCH_INTERVAL) {
            return Ok(None);
        }
        *last = Some(Instant::now());
        self.fetch_keys().await.map(Some)
    }

    /// Verifies a user token from this provider.
    pub async fn verify(&self, token: &str, now: i64) -> Result<oidc::User, Failure> {
        let expect = oidc::Expect {
            issuer: &self.config.issuer,
            audiences: &self.config.audiences,
            algorithms: &self.algorithms,
            skew_secs: i64::from(self.config.clock_skew_secs),
            now,
        };
        let keys = self.keys().await.map_err(Failure::Unavailable)?;
        match oidc::verify(token, &keys, &expect) {
            Err(oidc::Error::UnknownKey(kid)) => {
                match self.refetch_for(&kid).await.map_err(Failure::Unavailable)? {
                    Some(fresh) => oidc::verify(token, &fresh, &expect).map_err(Failure::Token),
                    None => Err(Failure::Token(oidc::Error::UnknownKey(kid))),
                }
            }
            r => r.map_err(Failure::Token),
        }
    }

    /// The user attributes the configuration maps from a verified token.
    pub fn attributes(&self, user: &oidc::User) -> Attributes {
        let text = |claim: &Option<String>| {
            claim
                .as_ref()
                .and_then(|c| user.claims.get(c))
                .and_then(serde_json::Value::as_str)
                .filter(|s| s.len() <= MAX_CLAIM_LEN && !s.chars().any(char::is_control))
                .map(str::to_owned)
        };
        let groups = match self
            .config
            .claims
            .groups
            .as_ref()
            .and_then(|c| user.claims.get(c))
        {
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(serde_json::Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        // Bounded in count and in bytes, so that the session token stays
        // well within the sidecars' token bound.
        let mut budget = MAX_GROUPS_BYTES;
        let mut groups: Vec<String> = groups
            .into_iter()
            .filter(|g| {
                !g.is_empty() && g.len() <= MAX_CLAIM_LEN && !g.chars().any(char::is_control)
            })
            .take(MAX_GROUPS)
            .take_while(|g| {
                let fits = g.len() <= budget;
                budget = budget.saturating_sub(g.len());
                fits
            })
            .collect();
        groups.sort();
        groups.dedup();
        Attributes {
            tier: text(&self.config.claims.tier),
            email: text(&self.config.claims.email),
            groups,
        }
    }
}

/// A verified user's mapped attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// `tier`.
    pub tier: Option<String>,
    /// `email`.
    pub email: Option<String>,
    /// `groups`, sorted.
    pub groups: Vec<String>,
}

/// Why a user token was not accepted.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The token itself is at fault.
    #[error(transparent)]
    Token(#[from] oidc::Error),
    /// The provider's keys could not be had.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Provider {
        Provider::load(&ProviderConfig {
            name: "corp".into(),
            issuer: "https://idp.example".into(),
            jwks_uri: None,
            audiences: vec!["warden".into()],
            algorithms: default_algorithms(),
            clock_skew_secs: 60,
            claims: ClaimMap {
                tier: Some("tier".into()),
                groups: Some("roles".into()),
                email: Some("email".into()),
            },
            ca_file: None,
            client_id: None,
            client_secret_file: None,
        })
        .unwrap()
    }

    fn user(claims: serde_json::Value) -> oidc::User {
        oidc::User {
            issuer: "https://idp.example".into(),
            subject: "alice".into(),
            expires_at: 0,
            claims: claims.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn mapped_claims_are_bounded_and_malformed_ones_left_out() {
        let p = provider();
        let a = p.attributes(&user(serde_json::json!({
            "tier": "gold", "email": "a@example.com", "roles": ["b", "a", "b", "", "x\ny"],
        })));
        assert_eq!(a.tier.as_deref(), Some("gold"));
        assert_eq!(a.email.as_deref(), Some("a@example.com"));
        assert_eq!(a.groups, ["a", "b"]);
        // A string group, a number tier, an over-long email.
        let a = p.attributes(&user(serde_json::json!({
            "tier": 3, "email": "e".repeat(300), "roles": "ops",
        })));
        assert_eq!(
            (a.tier, a.email, a.groups),
            (None, None, vec!["ops".to_owned()])
        );
        // Many long groups: at most MAX_GROUPS and MAX_GROUPS_BYTES.
        let many: Vec<String> = (0..100).map(|i| format!("{i:0>200}")).collect();
        let a = p.attributes(&user(serde_json::json!({ "roles": many })));
        assert!(a.groups.len() <= MAX_GROUPS);
        assert!(a.groups.iter().map(String::len).sum::<usize>() <= MAX_GROUPS_BYTES);
        assert_eq!(a.groups.len(), MAX_GROUPS_BYTES / 200);
    }

    #[test]
    fn bad_provider_settings_are_refused_naming_the_setting() {
        let base = provider().config().clone();
        for (tweak, says) in [
            (
                Box::new(|c: &mut ProviderConfig| c.issuer = "http://idp.example".into())
                    as Box<dyn Fn(&mut ProviderConfig)>,
                "plain http only to a loopback address",
            ),
            (Box::new(|c| c.audiences.clear()), "audiences"),
            (Box::new(|c| c.algorithms = vec!["HS256".into()]), "HS256"),
            (Box::new(|c| c.algorithms = vec!["none".into()]), "none"),
            (Box::new(|c| c.clock_skew_secs = 301), "clock_skew_secs"),
            (Box::new(|c| c.name = "bad name".into()), "name"),
            (
                Box::new(|c| c.issuer = "https://idp.example/#x".into()),
                "fragment",
            ),
            (
                Box::new(|c| c.issuer = format!("https://idp.example/{}", "a".repeat(600))),
                "512 bytes",
            ),
            (
                Box::new(|c| c.client_secret_file = Some("/nonexistent/secret".into())),
                "client_secret_file",
            ),
        ] {
            let mut c = base.clone();
            tweak(&mut c);
            let e = Provider::load(&c).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }
}
