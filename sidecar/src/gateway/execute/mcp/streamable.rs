//! The streamable HTTP transport, client side: every message is a `POST`
//! to the server's endpoint, answered with JSON or with an event stream
//! that carries the answer. The session the server names at `initialize`
//! (`Mcp-Session-Id`) is sent with every later message; a `404` to a
//! request in a session means the session is gone, and the next request
//! starts a new one (and the server's tools are read again before a call).
//! No `GET` stream is opened: the tool list is read again on a period.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use http_body_util::Full;
use serde_json::Value;

use super::super::http::{coding_refused, fill_secrets};
use super::{Ctx, Failure, rpc};
use crate::gateway::execute::http::Failure as HttpFailure;

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

#[derive(Clone, Debug)]
struct Session {
    id: Option<HeaderValue>,
    version: String,
}

/// One server's link: its session, if one is open.
#[derive(Debug)]
pub(super) struct Link {
    url: String,
    session: Mutex<Option<Session>>,
    starting: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    epoch: AtomicU64,
}

impl Link {
    /// A link to `url`, no session yet.
    pub(super) fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            session: Mutex::new(None),
            starting: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(1),
            epoch: AtomicU64::new(0),
        }
    }

    /// How many sessions were started so far.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn current(&self) -> Option<Session> {
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn post(
        &self,
        ctx: &Ctx<'_>,
        message: &Value,
        session: Option<&Session>,
    ) -> Result<http::Request<Full<Bytes>>, Failure> {
        let body = serde_json::to_vec(message).map_err(|e| Failure::Protocol(e.to_string()))?;
        let mut req = http::Request::builder()
            .method(http::Method::POST)
            .uri(&self.url)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream")
            // Output inspection reads the answer as sent: no compression.
            .header(http::header::ACCEPT_ENCODING, "identity")
            .header(
                USER_AGENT,
                concat!("warden-sidecar/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(s) = session {
            req = req.header(VERSION_HEADER, &s.version);
            if let Some(id) = &s.id {
                req = req.header(SESSION_HEADER, id);
            }
        }
        let mut req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Failure::Transport(HttpFailure::Build(e.to_string())))?;
        for (name, template) in &ctx.server.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| {
                Failure::Transport(HttpFailure::Build(format!("header {name}: {e}")))
            })?;
            let uses_secret = template.contains("${secret:");
            let mut value = HeaderValue::from_str(
                &fill_secrets(template, ctx.secrets).map_err(Failure::Transport)?,
            )
            .map_err(|_| {
                Failure::Transport(HttpFailure::Build(format!("header {name}: invalid value")))
            })?;
            value.set_sensitive(uses_secret);
            req.headers_mut().insert(name, value);
        }
        Ok(req)
    }

    /// Sends `message` and reads what comes back.
    async fn exchange(
        &self,
        ctx: &Ctx<'_>,
        message: &Value,
        session: Option<&Session>,
        timeout: Duration,
        max: usize,
    ) -> Result<(http::response::Parts, Bytes), Failure> {
        let req = self.post(ctx, message, session)?;
        let tls = ctx.server.tls.as_ref();
        let client_auth = match tls.and_then(|t| t.client_cert.as_ref().zip(t.client_key.as_ref()))
        {
            Some((c, k)) => Some((
                ctx.secrets.get(c).ok_or_else(|| {
                    Failure::Transport(HttpFailure::Build("client certificate not resolved".into()))
                })?,
                ctx.secrets.get(k).ok_or_else(|| {
                    Failure::Transport(HttpFailure::Build("client key not resolved".into()))
                })?,
            )),
            None => None,
        };
        let client = ctx
            .clients
            .get(tls, client_auth)
            .map_err(Failure::Transport)?;
        // An event stream is read until it has carried the answer: a
        // server may keep it open after.
        let id = message.get("id").and_then(Value::as_u64);
        let enough = move |parts: &http::response::Parts, body: &[u8]| {
            id.is_some_and(|id| rpc::stream_answered(parts, body, id))
        };
        let (parts, body) =
            tokio::time::timeout(timeout, client.exchange_until(req, max, Some(&enough)))
                .await
                .map_err(|_| Failure::Transport(HttpFailure::Timeout(timeout)))?
                .map_err(Failure::Transport)?;
        if let Some(enc) = coding_refused(&parts.headers) {
            return Err(Failure::Transport(HttpFailure::Encoded(enc)));
        }
        Ok((parts, body))
    }

    /// Reads the answer to request `id` from an exchange's result.
    fn answer(
        ctx: &Ctx<'_>,
        parts: &http::response::Parts,
        body: &[u8],
        id: u64,
        in_session: bool,
    ) -> Result<Result<Value, i64>, Failure> {
        let status = parts.status;
        if status == http::StatusCode::NOT_FOUND && in_session {
            return Err(Failure::SessionExpired);
        }
        if matches!(status.as_u16(), 401 | 403) {
            return Err(Failure::Transport(HttpFailure::Unavailable(format!(
                "the server refused the sidecar's credentials (HTTP {})",
                status.as_u16()
            ))));
        }
        let content_type = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let mut changed = |m: &str| {
            if m == "notifications/tools/list_changed" {
                ctx.changed.notify_one();
            }
        };
        match rpc::answer_in(content_type, body, id, &mut changed) {
            Ok(r) => Ok(r),
            Err(_) if !status.is_success() => Err(Failure::Transport(HttpFailure::Unavailable(
                format!("the server answered HTTP {}", status.as_u16()),
            ))),
            Err(e) => Err(e),
        }
    }

    /// The open session, or a new one (`initialize`, then `initialized`).
    async fn session(&self, ctx: &Ctx<'_>, timeout: Duration) -> Result<Session, Failure> {
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let _one = self.starting.lock().await;
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let init = rpc::request(id, "initialize", &rpc::initialize_params());
        let (parts, body) = self
            .exchange(ctx, &init, None, timeout, super::MAX_LIST_BYTES)
            .await?;
        let result = Self::answer(ctx, &parts, &body, id, false)?
            .map_err(|code| Failure::Protocol(format!("initialize failed with error {code}")))?;
        let version = super::negotiated(&result)?;
        let sid = parts
            .headers
            .get(SESSION_HEADER)
            .filter(|v| {
                v.as_bytes().len() <= 256 && v.as_bytes().iter().all(|b| (0x21..=0x7e).contains(b))
            })
            .cloned();
        let session = Session { id: sid, version };
        let note = rpc::notification("notifications/initialized", None);
        let (parts, _) = self
            .exchange(ctx, &note, Some(&session), timeout, 64 * 1024)
            .await?;
        if !parts.status.is_success() {
            return Err(Failure::Transport(HttpFailure::Unavailable(format!(
                "the server answered HTTP {} to notifications/initialized",
                parts.status.as_u16()
            ))));
        }
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = Some(session.clone());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        Ok(session)
    }

    /// Sends request `method` in the session (started first if need be)
    /// and waits for its answer: the result, or the error code.
    pub(super) async fn request(
        &self,
        ctx: &Ctx<'_>,
        method: &str,
        params: &Value,
        timeout: Duration,
        max: usize,
    ) -> Result<Result<Value, i64>, Failure> {
        let started = tokio::time::Instant::now();
        let session = self.session(ctx, timeout).await?;
        let timeout = timeout.saturating_sub(started.elapsed());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let msg = rpc::request(id, method, params);
        let (parts, body) = self
            .exchange(ctx, &msg, Some(&session), timeout, max)
            .await?;
        let r = Self::answer(ctx, &parts, &body, id, session.id.is_some());
        if matches!(r, Err(Failure::SessionExpired)) {
            let mut s = self.session.lock().unwrap_or_else(|p| p.into_inner());
            if s.as_ref().and_then(|s| s.id.as_ref()) == session.id.as_ref() {
                *s = None;
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::gateway::execute::http::Clients;

    /// Reads one request (head and `Content-Length` body): its JSON body.
    async fn read_request(s: &mut TcpStream) -> Option<Value> {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            buf.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.ok()?;
        serde_json::from_slice(&body).ok()
    }

    /// A server that answers `initialize` with JSON and a session, and
    /// every request after with an event stream it never closes.
    async fn server() -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    while let Some(msg) = read_request(&mut s).await {
                        let Some(id) = msg.get("id").cloned() else {
                            let _ = s
                                .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                                .await;
                            continue;
                        };
                        if msg["method"] == "initialize" {
                            let body = serde_json::json!({"jsonrpc": "2.0", "id": id,
                                "result": {"protocolVersion": "2025-06-18", "capabilities": {},
                                           "serverInfo": {"name": "t", "version": "0"}}})
                            .to_string();
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nmcp-session-id: s1\r\ncontent-length: {}\r\n\r\n",
                                body.len()
                            );
                            let _ = s.write_all(head.as_bytes()).await;
                            let _ = s.write_all(body.as_bytes()).await;
                            continue;
                        }
                        let event = format!(
                            "event: message\ndata: {}\n\n",
                            serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {"ok": true}})
                        );
                        let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                        let _ = s
                            .write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
                            )
                            .await;
                        let _ = s.write_all(chunk.as_bytes()).await;
                        // The stream stays open.
                        std::future::pending::<()>().await;
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn an_event_stream_left_open_still_gives_its_answer() {
        let addr = server().await;
        let url = format!("http://{addr}/mcp");
        let config = warden_shared::policy::McpServer {
            url: Some(url.clone()),
            headers: BTreeMap::new(),
            tls: None,
            command: None,
            args: Vec::new(),
            env: BTreeMap::new(),
            refresh: None,
        };
        let secrets = HashMap::new();
        let clients = Clients::default();
        let changed = Arc::new(tokio::sync::Notify::new());
        let ctx = Ctx {
            name: "t",
            server: &config,
            secrets: &secrets,
            clients: &clients,
            changed: &changed,
        };
        let link = Link::new(&url);
        for _ in 0..2 {
            let r = tokio::time::timeout(
                Duration::from_secs(5),
                link.request(
                    &ctx,
                    "tools/list",
                    &serde_json::json!({}),
                    Duration::from_secs(10),
                    1 << 20,
                ),
            )
            .await
            .expect("the answer, without waiting for the stream's end")
            .unwrap();
            assert_eq!(r, Ok(serde_json::json!({"ok": true})));
        }
        assert_eq!(link.epoch(), 1);
    }
}
