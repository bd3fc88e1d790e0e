//! Approval notifications to webhooks, signed per the Standard Webhooks
//! specification (<https://www.standardwebhooks.com>): each new request
//! and each decision is posted as JSON to every configured URL with
//! `webhook-id`, `webhook-timestamp` and `webhook-signature` (`v1,` and the
//! base64 HMAC-SHA256 of `id.timestamp.body` under the endpoint's secret).
//!
//! Deliveries go through an outbox in the store, written before the
//! request's filer or decider is answered: a receiver that is down, or a
//! control plane that restarts, loses nothing. A delivery is retried with
//! backoff ([`BACKOFF`]) until it is answered with a 2xx status or its
//! attempts run out (then it is logged at error and kept, undelivered).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Notify;

use crate::store::{self, Approval, Attempt, NewDelivery, Store};

/// Waits before each retry: attempt n + 1 comes `BACKOFF[n]` after attempt
/// n; after the last, the delivery is abandoned (about 2 h 45 min in all).
pub const BACKOFF: [Duration; 9] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(300),
    Duration::from_secs(900),
    Duration::from_secs(1800),
    Duration::from_secs(3600),
    Duration::from_secs(3600),
];
/// How soon the outbox is read again after the store failed.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Each attempt, connect to answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries sent per pass.
const BATCH: u32 = 32;
/// The longest a webhook secret file may be.
const MAX_SECRET_FILE: u64 = 4096;

/// One webhook endpoint, as configured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `https://…`, or `http://` to a loopback address.
    pub url: String,
    /// A file holding the endpoint's secret: `whsec_` and the base64 of 24
    /// to 64 random bytes, as Standard Webhooks issues them.
    pub secret_file: PathBuf,
    /// PEM CA certificates to trust for this endpoint instead of the
    /// system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// Why a webhook setting is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The URL is not one this notifier posts to.
    #[error("approval_webhooks: {url:?}: {why}")]
    Url {
        /// As configured.
        url: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The secret or CA file cannot be used.
    #[error("approval_webhooks: {path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// A parsed endpoint: where, and the key signing what is sent there.
#[derive(Clone)]
pub struct Endpoint {
    url: http::Uri,
    key: Arc<[u8]>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url.to_string())
            .finish_non_exhaustive()
    }
}

/// The key in a `whsec_…` secret.
pub fn secret_key(text: &str) -> Option<Vec<u8>> {
    let b64 = text.trim().strip_prefix("whsec_")?;
    let key = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    (24..=64).contains(&key.len()).then_some(key)
}

fn read_small(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let fail = |why: String| ConfigError::File {
        path: path.to_owned(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.len() > MAX_SECRET_FILE * 16 {
        return Err(fail("too large".into()));
    }
    std::fs::read(path).map_err(|e| fail(e.to_string()))
}

impl Endpoint {
    /// Checks one configured endpoint and reads its secret.
    pub fn load(c: &WebhookConfig) -> Result<Self, ConfigError> {
        let bad = |why| ConfigError::Url {
            url: c.url.clone(),
            why,
        };
        let url = crate::http_client::target(&c.url).map_err(bad)?;
        let secret = read_small(&c.secret_file)?;
        if secret.len() as u64 > MAX_SECRET_FILE {
            return Err(ConfigError::File {
                path: c.secret_file.clone(),
                why: "too large for a secret".into(),
            });
        }
        let key = std::str::from_utf8(&secret)
            .ok()
            .and_then(secret_key)
            .ok_or_else(|| ConfigError::File {
                path: c.secret_file.clone(),
                why: "not a Standard Webhooks secret (whsec_ and the base64 of 24 to 64 bytes)"
                    .into(),
            })?;
        let tls = if url.scheme_str() == Some("https") {
            Some(
                crate::http_client::client_tls(c.ca_file.as_deref()).map_err(|(path, why)| {
                    ConfigError::File {
                        path: path.unwrap_or_else(|| c.secret_file.clone()),
                        why,
                    }
                })?,
            )
        } else {
            None
        };
        Ok(Self {
            url,
            key: key.into(),
            tls,
        })
    }

    /// The URL, for the outbox.
    pub fn url(&self) -> String {
        self.url.to_string()
    }
}

/// `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body` under `key`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut ctx = ring::hmac::Context::with_key(&k);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref())
    )
}

/// What happened to an approval request, as a webhook event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A sidecar filed it.
    Requested,
    /// A person decided on it (the request may still wait for more).
    Decided,
}

impl Event {
    fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "approval.requested",
            Self::Decided => "approval.decided",
        }
    }
}

/// The event's JSON, as posted.
pub fn payload(event: Event, a: &Approval, now: i64) -> String {
    let r = &a.request;
    let arguments: serde_json::Value =
        serde_json::from_str(&r.arguments).unwrap_or(serde_json::Value::Null);
    json!({
        "type": event.as_str(),
        "timestamp": crate::rfc3339(now),
        "data": {
            "id": r.id,
            "state": a.state.as_str(),
            "agent_id": r.agent_id.as_str(),
            "session_id": r.session_id,
            "user_id": r.user_id,
            "tool": r.tool,
            "arguments": arguments,
            "reason": r.reason,
            "trace_id": r.trace_id,
            "because": r.because,
            "quorum": r.quorum,
            "created_at": crate::rfc3339(r.created_at),
            "deadline": crate::rfc3339(r.deadline),
            "decisions": a.decisions.iter().map(|d| json!({
                "approver": d.approver,
                "approve": d.approve,
                "comment": d.comment,
                "decided_at": crate::rfc3339(d.decided_at),
            })).collect::<Vec<_>>(),
        },
    })
    .to_string()
}

/// The notifier: endpoints, the outbox, and the task that empties it.
#[derive(Debug)]
pub struct Webhooks {
    endpoints: Vec<Endpoint>,
    wake: Notify,
}

impl Webhooks {
    /// Loads the configured endpoints (none: notifications are off).
    pub fn load(configs: &[WebhookConfig]) -> Result<Self, ConfigError> {
        Ok(Self {
            endpoints: configs
                .iter()
                .map(Endpoint::load)
                .collect::<Result<_, _>>()?,
            wake: Notify::new(),
        })
    }

    /// Whether any endpoint is configured.
    pub fn enabled(&self) -> bool {
        !self.endpoints.is_empty()
    }

    /// Writes `event` on `a` to the outbox, one delivery per endpoint, and
    /// wakes the sender.
    pub async fn notify(
        &self,
        store: &dyn Store,
        event: Event,
        a: &Approval,
        now: i64,
    ) -> store::Result<()> {
        if self.endpoints.is_empty() {
            return Ok(());
        }
        let body = payload(event, a, now);
        let deliveries: Vec<NewDelivery> = self
            .endpoints
            .iter()
            .map(|e| NewDelivery {
                id: new_id(),
                url: e.url(),
                body: body.clone(),
                created_at: now,
            })
            .collect();
        store.enqueue_webhooks(&deliveries).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Sends what the outbox holds, retrying with backoff, until `stop`.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        if self.endpoints.is_empty() {
            return;
        }
        loop {
            let now = crate::now_unix();
            let due = match store.due_webhooks(now, BATCH).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "webhooks: cannot read the outbox");
                    Vec::new()
                }
            };
            let full = due.len() == BATCH as usize;
            let idle = due.is_empty();
            for d in due {
                let Some(ep) = self.endpoints.iter().find(|e| e.url() == d.url) else {
                    // The endpoint was removed from the configuration.
                    let gone = Attempt::Abandoned {
                        error: "the endpoint is no longer configured".into(),
                    };
                    let _ = store.webhook_attempted(&d.id, &gone, now).await;
                    continue;
                };
                let attempts = d.attempts + 1;
                let outcome = match send(ep, &d.id, d.body.as_bytes()).await {
                    Ok(()) => {
                        tracing::debug!(url = %d.url, delivery = %d.id, attempts, "webhook delivered");
                        Attempt::Delivered
                    }
                    Err(error) => match BACKOFF.get(attempts as usize - 1) {
                        Some(wait) => {
                            tracing::warn!(url = %d.url, delivery = %d.id, attempts, %error, retry_in = ?wait, "webhook delivery failed; will retry");
                            Attempt::Retry {
                                at: now + i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
                                error,
                            }
                        }
                        None => {
                            tracing::error!(url = %d.url, delivery = %d.id, attempts, %error, "webhook delivery abandoned after its last attempt");
                            Attempt::Abandoned { error }
                        }
                    },
                };
                if let Err(e) = store
                    .webhook_attempted(&d.id, &outcome, crate::now_unix())
                    .await
                {
                    tracing::error!(error = %e, "webhooks: cannot record an attempt");
                }
            }
            if full {
                continue;
            }
            let wait = match store.next_webhook_at().await {
                Ok(Some(at)) => {
                    Duration::from_secs(u64::try_from(at - crate::now_unix()).unwrap_or(0))
                        .min(Duration::from_secs(3600))
                }
                Ok(None) => Duration::from_secs(3600),
                // The store failing: try again soon, not in an hour.
                Err(_) => STORE_RETRY,
            };
            // Nothing was due yet something is: the store misreads (or a
            // clock step); do not spin.
            let wait = if idle { wait.max(STORE_RETRY) } else { wait };
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

fn new_id() -> String {
    let mut b = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
    format!(
        "msg_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

/// Posts `body` once; `Err` with why, for the log and the outbox.
async fn send(ep: &Endpoint, id: &str, body: &[u8]) -> Result<(), String> {
    tokio::time::timeout(ATTEMPT_TIMEOUT, post(ep, id, body))
        .await
        .map_err(|_| format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs()))?
}

async fn post(ep: &Endpoint, id: &str, body: &[u8]) -> Result<(), String> {
    let host = ep.url.host().unwrap_or_default().to_owned();
    let https = ep.tls.is_some();
    let port = ep.url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp =
        tokio::net::TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let timestamp = crate::now_unix();
    let req = http::Request::post(ep.url.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            http::header::HOST,
            ep.url.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("warden-control-plane/", env!("CARGO_PKG_VERSION")),
        )
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature(&ep.key, id, timestamp, body))
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| format!("request: {e}"))?;
    let (status, _) = crate::http_client::over(tcp, &host, ep.tls.as_ref(), req, None).await?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_follows_standard_webhooks() {
        // The example of the Standard Webhooks specification's reference
        // libraries: secret, id, timestamp and payload, and the signature
        // they give.
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_and_urls_are_checked() {
        assert!(secret_key("whsec_short").is_none());
        assert!(secret_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_none());
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("s");
        std::fs::write(&secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        let cfg = |url: &str| WebhookConfig {
            url: url.into(),
            secret_file: secret.clone(),
            ca_file: None,
        };
        assert!(Endpoint::load(&cfg("http://127.0.0.1:9/hook")).is_ok());
        assert!(Endpoint::load(&cfg("https://hooks.example.com/x")).is_ok());
        for bad in [
            "http://hooks.example.com/x",
            "ftp://127.0.0.1/x",
            "not a url",
            "https://user:pw@hooks.example.com/x",
        ] {
            assert!(Endpoint::load(&cfg(bad)).is_err(), "{bad}");
        }
        std::fs::write(&secret, "hunter2").unwrap();
        let e = Endpoint::load(&cfg("http://127.0.0.1:9/hook")).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
