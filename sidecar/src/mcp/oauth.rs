//! Where an MCP client gets its session token without Warden-specific code:
//! the sidecar is the authorization server its protected resource metadata
//! names (RFC 9728), with authorization server metadata (RFC 8414) and a
//! token endpoint for the OAuth 2.1 `client_credentials` grant. The client
//! is the agent this sidecar serves: its `client_id` is the agent id and
//! its `client_secret` a random value the sidecar keeps in a file of its
//! data directory (readable by the agent's user only). A token is a
//! 15-minute session token issued by the control plane for the requested
//! `scope` (by default every scope the catalog's tools need, narrowed by
//! the control plane to the agent's allowance); the client asks for a new
//! one when it expires (there are no refresh tokens).

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tonic::Code;
use warden_shared::proto::v1 as pb;

use crate::cp::ControlPlane;
use crate::gateway::authenticate::Authenticator;
use crate::gateway::session;

/// The token endpoint's path.
pub const TOKEN_PATH: &str = "/oauth/token";
/// The authorization endpoint's path (no interactive grant is served).
pub const AUTHORIZE_PATH: &str = "/oauth/authorize";
/// Where the authorization server metadata is served.
pub const AS_METADATA_PATH: &str = "/.well-known/oauth-authorization-server";
/// Largest token request body.
pub const MAX_FORM_BYTES: usize = 16 * 1024;
/// Most scopes in one request.
pub const MAX_SCOPES: usize = 64;
/// The secret file's name in the data directory.
pub const SECRET_FILE: &str = "mcp-client-secret";

/// The token endpoint's parts.
pub struct Issuer {
    auth: Arc<Authenticator>,
    cp: Arc<ControlPlane>,
    client_id: String,
    secret: String,
    /// Failed client authentications: when one was last logged, and how
    /// many were not logged since (at most one line a second).
    failures: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// The client secret kept in `dir`: read, or made (32 random bytes,
/// base64url) and written with mode 0600 if there is none.
pub fn client_secret(dir: &std::path::Path) -> std::io::Result<String> {
    let path = dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 32 => return Ok(s.trim().to_owned()),
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} holds fewer than 32 characters; delete it to have a new one made",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut b = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut b);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let tmp = dir.join(format!("{SECRET_FILE}.tmp"));
    {
        use std::io::Write;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let mut f = o.open(&tmp)?;
        f.write_all(secret.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(secret)
}

/// An OAuth error answer (RFC 6749 §5.2).
fn oauth_error(status: StatusCode, error: &str, description: &str) -> super::Answer {
    let mut r = super::json_answer(
        status,
        &json!({"error": error, "error_description": description}),
    );
    no_store(&mut r);
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"warden-sidecar\""),
        );
    }
    r
}

fn no_store(r: &mut super::Answer) {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// Decodes `application/x-www-form-urlencoded` text; `None` if malformed
/// or a name repeats (RFC 6749 §3.2: no parameter more than once).
pub fn form(body: &[u8]) -> Option<Vec<(String, String)>> {
    let text = std::str::from_utf8(body).ok()?;
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (decode(k)?, decode(v)?);
        if out.iter().any(|(n, _)| *n == k) {
            return None;
        }
        out.push((k, v));
    }
    Some(out)
}

/// Percent-decodes form text (`+` is a space).
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

impl Issuer {
    /// The token endpoint for the agent `auth` serves, whose client secret
    /// is `secret`.
    pub fn new(auth: Arc<Authenticator>, cp: Arc<ControlPlane>, secret: String) -> Self {
        Self {
            client_id: auth.agent_id().to_owned(),
            auth,
            cp,
            secret,
            failures: std::sync::Mutex::new((None, 0)),
        }
    }

    /// The authorization server metadata for `issuer` (`http://<addr>`).
    pub fn metadata(issuer: &str) -> Value {
        json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}{AUTHORIZE_PATH}"),
            "token_endpoint": format!("{issuer}{TOKEN_PATH}"),
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": [],
        })
    }

    /// The scopes the catalog's tools need (what a request without
    /// `scope` asks for), at most [`MAX_SCOPES`].
    pub fn default_scopes(&self) -> Vec<String> {
        let held = self.auth.state().held();
        let mut out: Vec<String> = held
            .policy
            .iter()
            .flat_map(|p| p.catalog.iter())
            .flat_map(|t| t.spec.scopes.iter().cloned())
            .collect();
        out.sort_unstable();
        out.dedup();
        out.truncate(MAX_SCOPES);
        out
    }

    /// Logs a failed client authentication (the client id it named, cut
    /// and made printable; never the secret), at most once a second, with
    /// the count of those not logged in between.
    fn log_failure(&self, client_id: Option<&str>) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if f.0
            .is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1))
        {
            f.1 += 1;
            return;
        }
        let named: String = client_id
            .unwrap_or("(none)")
            .chars()
            .take(64)
            .map(|c| if c.is_ascii_graphic() { c } else { '?' })
            .collect();
        tracing::warn!(client_id = %named, not_logged_since = f.1, "mcp oauth: a token request failed client authentication");
        *f = (Some(now), 0);
    }

    /// Whether `id` and `secret` are this agent's client credentials
    /// (compared in constant time).
    fn client_ok(&self, id: &str, secret: &str) -> bool {
        let id_ok = id.as_bytes().ct_eq(self.client_id.as_bytes());
        let secret_ok = secret.as_bytes().ct_eq(self.secret.as_bytes());
        bool::from(id_ok & secret_ok)
    }

    /// A token request (its headers and form body); `resource` is the MCP
    /// endpoint's URL.
    pub async fn token(
        &self,
        headers: &http::HeaderMap,
        body: &Bytes,
        resource: &str,
    ) -> super::Answer {
        let bad = |d: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_request", d);
        let form_type = super::header_str(headers, header::CONTENT_TYPE).is_some_and(|t| {
            t.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
        if !form_type {
            return bad("the body must be application/x-www-form-urlencoded");
        }
        let Some(params) = form(body) else {
            return bad("the form is malformed or repeats a parameter");
        };
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        // The client: HTTP Basic, or the body (not both, RFC 6749 §2.3).
        let basic = super::header_str(headers, header::AUTHORIZATION)
            .and_then(|v| v.strip_prefix("Basic "))
            .map(str::trim);
        let body_id = get("client_id");
        let body_secret = get("client_secret");
        let creds = match (basic, body_secret) {
            (Some(_), Some(_)) => {
                return bad("authenticate the client one way: HTTP Basic or the body");
            }
            (Some(b), None) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .ok()
                .and_then(|raw| String::from_utf8(raw).ok())
                .and_then(|s| {
                    let (i, p) = s.split_once(':')?;
                    Some((decode(i)?, decode(p)?))
                })
                .filter(|(i, _)| body_id.is_none_or(|b| b == i)),
            (None, Some(s)) => body_id.map(|i| (i.to_owned(), s.to_owned())),
            (None, None) => None,
        };
        let authenticated = creds.as_ref().is_some_and(|(i, s)| self.client_ok(i, s));
        if !authenticated {
            self.log_failure(creds.as_ref().map(|(i, _)| i.as_str()));
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "unknown client or wrong secret: the client id is the agent id, the secret is in the sidecar's data directory",
            );
        }
        if get("grant_type") != Some("client_credentials") {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only client_credentials is served",
            );
        }
        if get("resource").is_some_and(|r| r.trim_end_matches('/') != resource) {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                &format!("the only resource served here is {resource}"),
            );
        }
        let scopes: Vec<String> = match get("scope") {
            Some(s) => s
                .split(' ')
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect(),
            None => self.default_scopes(),
        };
        if scopes.is_empty() || scopes.len() > MAX_SCOPES {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                &format!("request 1 to {MAX_SCOPES} scopes"),
            );
        }
        let req = pb::IssueTokenRequest {
            scopes,
            ..Default::default()
        };
        match session::start(&self.auth, &self.cp, req).await {
            Ok(t) => {
                let expires_in = (t.expires_at.map_or(0, |e| e.seconds) - crate::now_unix()).max(0);
                let mut r = super::json_answer(
                    StatusCode::OK,
                    &json!({
                        "access_token": t.token,
                        "token_type": "Bearer",
                        "expires_in": expires_in,
                        "scope": t.scopes.join(" "),
                    }),
                );
                no_store(&mut r);
                r
            }
            Err(s) => match s.code() {
                Code::InvalidArgument | Code::PermissionDenied
                    if warden_shared::refusal::reason_of(&s).is_some_and(|r| {
                        matches!(r.as_str(), "SCOPE_NOT_ALLOWED" | "INVALID_ARGUMENT")
                    }) =>
                {
                    oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", s.message())
                }
                Code::Unavailable | Code::DeadlineExceeded | Code::Internal => oauth_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    s.message(),
                ),
                _ => oauth_error(StatusCode::BAD_REQUEST, "unauthorized_client", s.message()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_and_refuse_repeats() {
        let f = form(b"grant_type=client_credentials&scope=tools%3Aread+tools%3Awrite&x=").unwrap();
        assert_eq!(
            f,
            [
                ("grant_type".into(), "client_credentials".into()),
                ("scope".into(), "tools:read tools:write".into()),
                ("x".into(), String::new()),
            ]
        );
        assert!(form(b"a=1&a=2").is_none());
        assert!(form(b"a=%zz").is_none());
        assert!(form(b"a=%f").is_none());
        assert!(form(&[b'a', b'=', 0xff]).is_none());
    }

    #[test]
    fn the_secret_is_made_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let a = client_secret(dir.path()).unwrap();
        let b = client_secret(dir.path()).unwrap();
        assert_eq!(a, b);
        assert!(a.len() >= 43);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.path().join(SECRET_FILE), "short").unwrap();
        assert!(client_secret(dir.path()).is_err());
    }
}
