//! Exports the audit log to a SIEM as OpenTelemetry log records over OTLP
//! (HTTP, JSON encoding: `POST <endpoint>` with an
//! `ExportLogsServiceRequest`). Each record's body is the entry's exact
//! record (so the receiver can hash it again), its attributes the fields a
//! SIEM filters on. The exporter sends in position order, at most 500
//! entries a request, and remembers in the store what the collector
//! acknowledged (a 2xx answer): a collector that is down, or a control
//! plane that restarts, loses nothing and sends nothing twice on purpose
//! (a request whose answer was lost is sent again).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use warden_shared::audit::Record;

use crate::store::{AuditEntry, Store};

/// Entries per request.
const BATCH: u32 = 500;
/// How long one request may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// The `[audit_otlp]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's OTLP/HTTP logs URL, e.g.
    /// `https://collector.example:4318/v1/logs` (plain `http` to a loopback
    /// address only).
    pub endpoint: String,
    /// CA certificates (PEM) to verify the collector (default: the
    /// system's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// A configured exporter.
#[derive(Clone)]
pub struct Exporter {
    url: http::Uri,
    tls: Option<Arc<rustls::ClientConfig>>,
    log_id: String,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("url", &self.url.to_string())
            .finish_non_exhaustive()
    }
}

impl Exporter {
    /// Checks the configuration; `log_id` names the log (the trust domain).
    pub fn load(c: &OtlpConfig, log_id: &str) -> Result<Self, String> {
        let url = crate::http_client::target(&c.endpoint)
            .map_err(|why| format!("audit_otlp.endpoint {:?}: {why}", c.endpoint))?;
        let tls = match url.scheme_str() {
            Some("https") => Some(
                crate::http_client::client_tls(c.ca_file.as_deref()).map_err(|(path, why)| {
                    match path {
                        Some(p) => format!("audit_otlp.ca_file {}: {why}", p.display()),
                        None => format!("audit_otlp: {why}"),
                    }
                })?,
            ),
            _ => None,
        };
        Ok(Self {
            url,
            tls,
            log_id: log_id.to_owned(),
        })
    }

    /// The name its position is kept under.
    fn name(&self) -> String {
        format!("otlp {}", self.url)
    }

    /// Sends the log from where it stopped, and every entry as the log
    /// grows, until `stop`.
    pub async fn run(
        self,
        store: Arc<dyn Store>,
        mut grown: watch::Receiver<u64>,
        mut stop: watch::Receiver<bool>,
    ) {
        let name = self.name();
        let mut backoff = RETRY_MIN;
        loop {
            grown.borrow_and_update();
            let result = self.step(store.as_ref(), &name).await;
            let wait = match result {
                Ok(true) => {
                    backoff = RETRY_MIN;
                    continue;
                }
                Ok(false) => None,
                Err(e) => {
                    tracing::warn!(collector = %self.url, error = %e, retry_in = ?backoff, "audit export to OTLP failed; will retry");
                    let b = backoff;
                    backoff = (backoff * 2).min(RETRY_MAX);
                    Some(b)
                }
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                r = grown.changed(), if wait.is_none() => if r.is_err() { return },
                () = tokio::time::sleep(wait.unwrap_or(RETRY_MAX)), if wait.is_some() => {}
            }
        }
    }

    /// Sends the next batch; `Ok(true)` if one was sent, `Ok(false)` when
    /// there was nothing to send.
    async fn step(&self, store: &dyn Store, name: &str) -> Result<bool, String> {
        let from = store
            .audit_export_position(name)
            .await
            .map_err(|e| e.to_string())?;
        let page = store
            .audit_entries(from, u64::MAX >> 1, BATCH, false)
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = page.last().map(|e| e.position) else {
            return Ok(false);
        };
        let body = request(&page, &self.log_id).to_string().into_bytes();
        tokio::time::timeout(ATTEMPT_TIMEOUT, self.post(body))
            .await
            .map_err(|_| format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs()))??;
        store
            .set_audit_export_position(name, last + 1)
            .await
            .map_err(|e| e.to_string())?;
        Ok(true)
    }

    async fn post(&self, body: Vec<u8>) -> Result<(), String> {
        let host = self.url.host().unwrap_or_default().to_owned();
        let port = self
            .url
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((
            host.trim_start_matches('[').trim_end_matches(']'),
            port,
        ))
        .await
        .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let req = http::Request::post(self.url.path_and_query().map_or("/", |p| p.as_str()))
            .header(
                http::header::HOST,
                self.url.authority().map_or(host.as_str(), |a| a.as_str()),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("warden-control-plane/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("request: {e}"))?;
        let (status, _) =
            crate::http_client::over(tcp, &host, self.tls.as_ref(), req, None).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the collector answered {status}"))
        }
    }
}

fn text(key: &str, v: &str) -> Option<Value> {
    (!v.is_empty()).then(|| json!({"key": key, "value": {"stringValue": v}}))
}

fn int(key: &str, v: u64) -> Value {
    // OTLP's JSON encoding writes 64-bit integers as strings.
    json!({"key": key, "value": {"intValue": v.to_string()}})
}

/// One entry as an OTLP log record.
fn log_record(e: &AuditEntry) -> Value {
    let body = String::from_utf8_lossy(&e.record).into_owned();
    let mut attributes = vec![int("warden.audit.position", e.position)];
    let (time, observed, severity) = match Record::from_bytes(&e.record) {
        Ok(r) => {
            let ev = &r.event;
            attributes.push(int("warden.audit.seq", r.seq));
            attributes.extend(
                [
                    ("warden.audit.source", r.source.as_str()),
                    ("warden.kind", ev.kind.as_str()),
                    ("warden.actor.kind", actor_kind(ev.actor.kind)),
                    ("warden.actor.id", ev.actor.id.as_str()),
                    ("warden.agent", ev.agent.as_str()),
                    ("warden.session", ev.session.as_str()),
                    ("warden.user", ev.user.as_str()),
                    ("warden.tool", ev.tool.as_str()),
                    ("warden.outcome", ev.outcome.as_str()),
                    ("warden.stage", ev.stage.as_str()),
                    ("warden.reason", ev.reason.as_str()),
                    ("warden.call_id", ev.call_id.as_str()),
                    ("warden.trace_id", ev.trace_id.as_str()),
                    ("warden.peer", ev.peer.as_str()),
                ]
                .iter()
                .filter_map(|(k, v)| text(k, v)),
            );
            let warn = matches!(
                ev.outcome.as_str(),
                "denied" | "failed" | "rejected" | "lost"
            );
            (
                nanos(ev.time_ms),
                nanos(r.received_ms),
                if warn { (13, "WARN") } else { (9, "INFO") },
            )
        }
        Err(_) => (String::from("0"), String::from("0"), (17, "ERROR")),
    };
    json!({
        "timeUnixNano": time,
        "observedTimeUnixNano": observed,
        "severityNumber": severity.0,
        "severityText": severity.1,
        "body": {"stringValue": body},
        "attributes": attributes,
    })
}

fn actor_kind(k: warden_shared::audit::ActorKind) -> &'static str {
    match k {
        warden_shared::audit::ActorKind::Agent => "agent",
        warden_shared::audit::ActorKind::Human => "human",
        warden_shared::audit::ActorKind::System => "system",
    }
}

fn nanos(ms: i64) -> String {
    (i128::from(ms.max(0)) * 1_000_000).to_string()
}

/// An `ExportLogsServiceRequest` (OTLP/JSON) for `entries`.
pub fn request(entries: &[AuditEntry], log_id: &str) -> Value {
    json!({
        "resourceLogs": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": "warden-control-plane"}},
                {"key": "warden.log_id", "value": {"stringValue": log_id}},
            ]},
            "scopeLogs": [{
                "scope": {"name": "warden.audit", "version": env!("CARGO_PKG_VERSION")},
                "logRecords": entries.iter().map(log_record).collect::<Vec<_>>(),
            }],
        }],
    })
}
