//! The MCP front door: the Model Context Protocol's streamable HTTP
//! transport on a loopback address, beside the gRPC agent API and in front
//! of the same pipeline. One endpoint, `/mcp`, takes JSON-RPC requests by
//! `POST` and answers each with `application/json`; notifications and
//! responses get `202 Accepted`. A client that declares the elicitation
//! capability at `initialize` gets an `Mcp-Session-Id`, and its
//! `tools/call`s are answered with an event stream, so that the sidecar can
//! ask its user to confirm a call (`elicitation/create`) before the result;
//! any other client is served statelessly (no session, `GET` is `405`).
//!
//! - Authentication is the session token as a bearer, on every request, as
//!   the MCP authorization rules have a resource server do: a missing or
//!   refused token gets `401` with a `WWW-Authenticate` challenge naming
//!   the protected resource metadata (RFC 9728), served at
//!   `/.well-known/oauth-protected-resource`, which names the sidecar as
//!   the authorization server a token comes from ([`oauth`]: the
//!   `client_credentials` grant for the agent it serves). The token is checked exactly
//!   as on the agent API (audience: this agent; bound to this sidecar's
//!   certificate) and is never passed to an upstream.
//! - A browser or a tricked fetch cannot use it: a request with an `Origin`
//!   other than a loopback one, or a `Host` other than the bound address or
//!   `localhost:<port>`, is refused (`403`: DNS rebinding gives a page a
//!   foreign name for this address), and only
//!   `Content-Type: application/json` is accepted, which no simple
//!   (unpreflighted) cross-origin request can send.
//! - `tools/list` shows what the session may call; `tools/call` runs every
//!   stage; a refusal is a tool error (`isError`) whose text and `_meta`
//!   carry Warden's reason, stage and rule. An unknown tool is the
//!   protocol's `-32602`.

pub mod oauth;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use warden_shared::refusal::{Reason, Refusal, Stage};

use crate::gateway::approve::{Confirmation, UserChannel, UserConfirm};
use crate::gateway::authenticate::Credentials;
use crate::gateway::execute::mcp::RESULT_TYPE;
use crate::gateway::pipeline::{self, Gateway};
use crate::identity::rotation::Manager;

/// Protocol revisions spoken, newest first: a client asking for one of
/// them gets it; any other gets the newest.
/// (Earlier revisions are not spoken: 2025-03-26 requires batches, and
/// 2024-11-05 has no streamable HTTP.)
pub const PROTOCOL_VERSIONS: [&str; 2] = ["2025-11-25", "2025-06-18"];
/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The endpoint's path.
pub const PATH: &str = "/mcp";
/// Where the protected resource metadata is served.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";
/// Connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 128;
/// Longest wait for a request's headers (a new one on a kept-alive
/// connection included).
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest a request may take, its body and the tool call included.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

// JSON-RPC error codes.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const INTERNAL_ERROR: i64 = -32603;

/// MCP sessions kept at once (clients that can be asked questions); the
/// one used least recently goes first.
const MAX_SESSIONS: usize = 1024;
/// An MCP session unused this long is forgotten.
const SESSION_IDLE: std::time::Duration = std::time::Duration::from_secs(3600);
/// Questions to one session's user waiting for an answer, at most.
const MAX_QUESTIONS: usize = 64;
/// Events buffered for one event-stream answer.
const STREAM_EVENTS: usize = 8;

/// A client that can be asked questions: made at `initialize`, named by
/// `Mcp-Session-Id`. The questions it was sent wait here for its answers.
#[derive(Debug)]
struct Session {
    last_used: std::sync::Mutex<std::time::Instant>,
    next: std::sync::atomic::AtomicU64,
    pending:
        std::sync::Mutex<std::collections::HashMap<String, tokio::sync::oneshot::Sender<Value>>>,
}

/// The front door's parts.
#[derive(Debug)]
pub struct McpServer {
    gateway: Arc<Gateway>,
    identity: Arc<Manager>,
    addr: SocketAddr,
    issuer: Option<oauth::Issuer>,
    sessions: std::sync::Mutex<std::collections::HashMap<String, Arc<Session>>>,
}

type Answer = http::Response<http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>>;

fn json_answer(status: StatusCode, body: &Value) -> Answer {
    let mut r = http::Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn empty(status: StatusCode) -> Answer {
    let mut r = http::Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = status;
    r
}

fn rpc_error(id: &Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = json!({"code": code, "message": message});
    if let Some(d) = data {
        error["data"] = d;
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error})
}

fn rpc_result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// A refusal's reason, stage and rule, for a tool error's `_meta` or an
/// error's `data`.
fn refusal_meta(r: &Refusal) -> Value {
    let mut m = json!({"reason": r.reason.as_str(), "stage": r.stage_str()});
    if !r.rule.is_empty() {
        m["rule"] = json!(r.rule);
    }
    if let Some(ms) = r.retry_after_ms {
        m["retry_after_ms"] = json!(ms);
    }
    if !r.approval_id.is_empty() {
        m["approval_id"] = json!(r.approval_id);
    }
    m
}

/// `tools/call`: the pipeline's answer as the protocol's result (a refusal
/// is a tool error); `confirm` asks the user when the tool needs it.
async fn call(
    gateway: &Gateway,
    creds: &Credentials<'_>,
    id: &Value,
    params: &Value,
    user: UserChannel<'_>,
) -> Value {
    let Some(name) = params.get("name").and_then(Value::as_str) else {
        return rpc_error(id, INVALID_PARAMS, "tools/call needs a tool name", None);
    };
    let arguments = match params.get("arguments") {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(a @ Value::Object(_)) => a.to_string(),
        Some(_) => {
            return rpc_error(id, INVALID_PARAMS, "arguments must be an object", None);
        }
    };
    let meta = params.get("_meta");
    let trace_id = meta
        .and_then(|m| m.get("traceId"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    // A call that needs approval waits for it unless the client asks
    // not to (then: APPROVAL_PENDING and the request's id).
    let no_wait = meta
        .and_then(|m| m.get("warden.dev/noWait"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let r = pipeline::Request {
        rpc: "mcp tools/call",
        tool: name,
        arguments: &arguments,
        reason: "",
        trace_id,
        no_wait,
        user,
    };
    match gateway.call_tool(creds, &r).await {
        Ok(a) => {
            let meta = json!({"warden.dev/call": {
                "call_id": a.call_id,
                "upstream_status": a.upstream_status,
                "content_type": a.content_type,
                "redactions": a.redactions,
            }});
            // An MCP server's result (inspected) goes on as it is.
            if a.content_type == RESULT_TYPE
                && let Ok(Value::Object(mut result)) = serde_json::from_slice(&a.content)
            {
                result.insert("_meta".into(), meta);
                return rpc_result(id, Value::Object(result));
            }
            let text = String::from_utf8_lossy(&a.content).into_owned();
            rpc_result(
                id,
                json!({
                    "content": [{"type": "text", "text": text}],
                    "isError": a.upstream_status >= 400,
                    "_meta": meta,
                }),
            )
        }
        Err(refusal) if refusal.reason == Reason::ToolUnknown => rpc_error(
            id,
            INVALID_PARAMS,
            &format!("unknown tool: {name}"),
            Some(refusal_meta(&refusal)),
        ),
        Err(refusal) => rpc_result(
            id,
            json!({
                "content": [{"type": "text", "text": format!(
                    "refused by Warden at {}: {}: {}",
                    refusal.stage_str(),
                    refusal.reason.as_str(),
                    refusal.message
                )}],
                "isError": true,
                "_meta": {"warden.dev/refusal": refusal_meta(&refusal)},
            }),
        ),
    }
}

/// One server-sent event carrying `msg`.
fn sse_event(msg: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {msg}\n\n"))
}

/// Whether an `initialize` declares the elicitation capability, in form
/// mode (an empty object means form in the 2025-06-18 revision).
fn can_elicit(params: &Value) -> bool {
    params
        .get("capabilities")
        .and_then(|c| c.get("elicitation"))
        .and_then(Value::as_object)
        .is_some_and(|e| e.is_empty() || e.contains_key("form"))
}

/// Asks a session's user, on the event stream of the call that needs it.
struct Asker {
    session: Arc<Session>,
    events: tokio::sync::mpsc::Sender<Bytes>,
}

impl UserConfirm for Asker {
    fn confirm<'a>(
        &'a self,
        message: String,
        deadline: std::time::Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Confirmation> + Send + 'a>> {
        Box::pin(async move {
            let n = self
                .session
                .next
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let qid = format!("warden-confirm-{n}");
            let (tx, rx) = tokio::sync::oneshot::channel();
            {
                let mut pending = self
                    .session
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if pending.len() >= MAX_QUESTIONS {
                    return Confirmation::Unanswered(
                        "too many questions wait for this user".into(),
                    );
                }
                pending.insert(qid.clone(), tx);
            }
            let question = json!({
                "jsonrpc": "2.0",
                "id": qid,
                "method": "elicitation/create",
                "params": {
                    "message": message,
                    "requestedSchema": {
                        "type": "object",
                        "properties": {
                            "allow": {
                                "type": "boolean",
                                "title": "Allow this call",
                                "description": "Yes runs the call once.",
                            }
                        },
                        "required": ["allow"],
                    },
                },
            });
            let answered = async {
                if self.events.send(sse_event(&question)).await.is_err() {
                    return Confirmation::Unanswered("the client went away".into());
                }
                match tokio::time::timeout(deadline, rx).await {
                    Ok(Ok(answer)) => read_answer(&answer),
                    Ok(Err(_)) => Confirmation::Unanswered("the session ended".into()),
                    Err(_) => Confirmation::Unanswered("no answer before the deadline".into()),
                }
            };
            let c = answered.await;
            self.session
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&qid);
            c
        })
    }
}

/// The user's answer: an explicit `accept` with `allow: true` only.
fn read_answer(answer: &Value) -> Confirmation {
    let Some(result) = answer.get("result") else {
        return Confirmation::Unanswered("the client answered with an error".into());
    };
    let accepted = result.get("action").and_then(Value::as_str) == Some("accept");
    let allow = result
        .get("content")
        .and_then(|c| c.get("allow"))
        .and_then(Value::as_bool)
        == Some(true);
    if accepted && allow {
        Confirmation::Accepted
    } else {
        Confirmation::Declined
    }
}

/// Whether `origin` is a page served from this machine's loopback.
fn loopback_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split(']').next().map(|h| format!("[{h}]")),
        None => rest.split(':').next().map(str::to_owned),
    };
    matches!(host.as_deref(), Some("localhost" | "127.0.0.1" | "[::1]"))
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

impl McpServer {
    /// The front door to `gateway`, for requests bound to `identity`'s
    /// certificate, served at `addr`.
    pub fn new(gateway: Arc<Gateway>, identity: Arc<Manager>, addr: SocketAddr) -> Self {
        Self {
            gateway,
            identity,
            addr,
            issuer: None,
            sessions: std::sync::Mutex::default(),
        }
    }

    /// A new session for a client that can be asked questions; its id.
    fn open_session(&self) -> String {
        let mut b = [0u8; 16];
        rand::Rng::fill(&mut rand::rng(), &mut b);
        let id: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let now = std::time::Instant::now();
        let mut all = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, s| {
            now.duration_since(*s.last_used.lock().unwrap_or_else(|p| p.into_inner()))
                < SESSION_IDLE
        });
        if all.len() >= MAX_SESSIONS
            && let Some(oldest) = all
                .iter()
                .min_by_key(|(_, s)| *s.last_used.lock().unwrap_or_else(|p| p.into_inner()))
                .map(|(k, _)| k.clone())
        {
            all.remove(&oldest);
        }
        all.insert(
            id.clone(),
            Arc::new(Session {
                last_used: std::sync::Mutex::new(now),
                next: std::sync::atomic::AtomicU64::new(1),
                pending: std::sync::Mutex::default(),
            }),
        );
        id
    }

    /// The session `id` names, if it is known (and marks it used).
    fn session(&self, id: &str) -> Option<Arc<Session>> {
        let all = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let s = all.get(id)?;
        *s.last_used.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
        Some(Arc::clone(s))
    }

    /// Serves the OAuth token endpoint with `issuer`, and names it in the
    /// protected resource metadata.
    pub fn with_issuer(mut self, issuer: oauth::Issuer) -> Self {
        self.issuer = Some(issuer);
        self
    }

    fn issuer_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether `host` (a `Host` header) names this endpoint: its bound
    /// address, or `localhost` with its port.
    fn our_host(&self, host: &str) -> bool {
        host.eq_ignore_ascii_case(&self.addr.to_string())
            || host.eq_ignore_ascii_case(&format!("localhost:{}", self.addr.port()))
    }

    fn resource(&self) -> String {
        format!("http://{}{PATH}", self.addr)
    }

    fn metadata_url(&self) -> String {
        format!("http://{}{METADATA_PATH}", self.addr)
    }

    /// `401` with the challenge an MCP client follows to the metadata.
    fn unauthorized(&self, id: &Value, refusal: &Refusal) -> Answer {
        let mut challenge = format!("Bearer resource_metadata=\"{}\"", self.metadata_url());
        if refusal.reason != Reason::TokenMissing {
            challenge.push_str(", error=\"invalid_token\"");
        }
        let mut r = json_answer(
            StatusCode::UNAUTHORIZED,
            &rpc_error(
                id,
                INVALID_REQUEST,
                &refusal.message,
                Some(refusal_meta(refusal)),
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        r
    }

    /// One HTTP request.
    pub async fn handle(&self, req: http::Request<Incoming>) -> Answer {
        let peer = req
            .extensions()
            .get::<Peer>()
            .map(|p| p.0.to_string())
            .unwrap_or_default();
        let path = req.uri().path().to_owned();
        let h = req.headers();
        // A name that resolves here only by DNS rebinding is not ours.
        if let Some(host) = h.get(header::HOST)
            && !host.to_str().is_ok_and(|v| self.our_host(v))
        {
            return json_answer(
                StatusCode::FORBIDDEN,
                &rpc_error(
                    &Value::Null,
                    INVALID_REQUEST,
                    "the Host header must name a loopback address",
                    None,
                ),
            );
        }
        if let Some(origin) = h.get(header::ORIGIN)
            && !origin.to_str().is_ok_and(loopback_origin)
        {
            return json_answer(
                StatusCode::FORBIDDEN,
                &rpc_error(
                    &Value::Null,
                    INVALID_REQUEST,
                    "cross-origin requests are refused",
                    None,
                ),
            );
        }
        let get_only = |answer: Answer| {
            if req.method() == Method::GET {
                answer
            } else {
                empty(StatusCode::METHOD_NOT_ALLOWED)
            }
        };
        if path == METADATA_PATH || path == format!("{METADATA_PATH}{PATH}") {
            let mut m = json!({
                "resource": self.resource(),
                "bearer_methods_supported": ["header"],
                "resource_name": "Warden sidecar",
            });
            if let Some(i) = &self.issuer {
                m["authorization_servers"] = json!([self.issuer_url()]);
                m["scopes_supported"] = json!(i.default_scopes());
            }
            return get_only(json_answer(StatusCode::OK, &m));
        }
        match (path.as_str(), &self.issuer) {
            (oauth::AS_METADATA_PATH, Some(_)) => {
                return get_only(json_answer(
                    StatusCode::OK,
                    &oauth::Issuer::metadata(&self.issuer_url()),
                ));
            }
            (oauth::AUTHORIZE_PATH, Some(_)) => {
                return json_answer(
                    StatusCode::BAD_REQUEST,
                    &json!({
                        "error": "unsupported_response_type",
                        "error_description": "no interactive grant is served: use client_credentials at the token endpoint",
                    }),
                );
            }
            (oauth::TOKEN_PATH, Some(issuer)) => {
                if req.method() != Method::POST {
                    let mut r = empty(StatusCode::METHOD_NOT_ALLOWED);
                    r.headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static("POST"));
                    return r;
                }
                let (parts, body) = req.into_parts();
                let Ok(body) = Limited::new(body, oauth::MAX_FORM_BYTES).collect().await else {
                    return json_answer(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &json!({"error": "invalid_request", "error_description": "the request is too large"}),
                    );
                };
                return issuer
                    .token(&parts.headers, &body.to_bytes(), &self.resource())
                    .await;
            }
            _ => {}
        }
        if path != PATH {
            return empty(StatusCode::NOT_FOUND);
        }
        if req.method() != Method::POST {
            let mut r = empty(StatusCode::METHOD_NOT_ALLOWED);
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return r;
        }
        let json_body = header_str(h, header::CONTENT_TYPE).is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
        if !json_body {
            return json_answer(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &rpc_error(
                    &Value::Null,
                    INVALID_REQUEST,
                    "Content-Type must be application/json",
                    None,
                ),
            );
        }
        if let Some(v) = header_str(h, header::HeaderName::from_static("mcp-protocol-version"))
            && !PROTOCOL_VERSIONS.contains(&v)
        {
            return json_answer(
                StatusCode::BAD_REQUEST,
                &rpc_error(
                    &Value::Null,
                    INVALID_REQUEST,
                    &format!(
                        "unsupported MCP-Protocol-Version; supported: {}",
                        PROTOCOL_VERSIONS.join(", ")
                    ),
                    None,
                ),
            );
        }
        let session_id =
            header_str(h, header::HeaderName::from_static("mcp-session-id")).map(str::to_owned);
        // Every request carries the session token.
        let token = header_str(h, header::AUTHORIZATION)
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        let missing = || {
            Refusal::at(
                Stage::Authenticate,
                Reason::TokenMissing,
                "send the session token as `Authorization: Bearer <token>`",
            )
        };
        let creds = Credentials {
            token: token.as_deref().ok_or_else(missing),
            identity: self.identity.snapshot(),
            peer: peer.clone(),
        };
        if let Err(r) = self.gateway.authenticate(&creds).await {
            return match r.code() {
                tonic::Code::Unauthenticated => self.unauthorized(&Value::Null, &r),
                code => json_answer(
                    if code == tonic::Code::PermissionDenied {
                        StatusCode::FORBIDDEN
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    },
                    &rpc_error(
                        &Value::Null,
                        INVALID_REQUEST,
                        &r.message,
                        Some(refusal_meta(&r)),
                    ),
                ),
            };
        }
        let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return json_answer(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &rpc_error(
                        &Value::Null,
                        INVALID_REQUEST,
                        &format!("the request is larger than {MAX_BODY_BYTES} bytes"),
                        None,
                    ),
                );
            }
        };
        let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
            return json_answer(
                StatusCode::BAD_REQUEST,
                &rpc_error(&Value::Null, PARSE_ERROR, "the body is not JSON", None),
            );
        };
        let Value::Object(m) = &msg else {
            return json_answer(
                StatusCode::BAD_REQUEST,
                &rpc_error(
                    &Value::Null,
                    INVALID_REQUEST,
                    "one JSON-RPC message per request (batches are not accepted)",
                    None,
                ),
            );
        };
        let id = m.get("id").cloned();
        let valid_id = id
            .as_ref()
            .is_none_or(|i| i.is_string() || i.is_i64() || i.is_u64());
        if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") || !valid_id {
            return json_answer(
                StatusCode::BAD_REQUEST,
                &rpc_error(
                    &Value::Null,
                    INVALID_REQUEST,
                    "not a JSON-RPC 2.0 message",
                    None,
                ),
            );
        }
        // A session this sidecar does not know (forgotten, or from before a
        // restart): the client starts a new one.
        let session = match &session_id {
            None => None,
            Some(sid) => match self.session(sid) {
                Some(s) => Some(s),
                None => {
                    return json_answer(
                        StatusCode::NOT_FOUND,
                        &rpc_error(
                            &Value::Null,
                            INVALID_REQUEST,
                            "unknown Mcp-Session-Id: initialize again",
                            None,
                        ),
                    );
                }
            },
        };
        // The answer to a question of ours goes to the call that asked it.
        if m.get("method").is_none()
            && (m.contains_key("result") || m.contains_key("error"))
            && let (Some(s), Some(qid)) = (&session, id.as_ref().and_then(Value::as_str))
        {
            let waiting = s
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(qid);
            if let Some(tx) = waiting {
                let _ = tx.send(msg.clone());
            }
            return empty(StatusCode::ACCEPTED);
        }
        let Some(id) = id else {
            // A notification, or a response to a request of ours (we send
            // none): accepted, nothing to answer.
            let notification = m.get("method").is_some_and(Value::is_string);
            let response = m.contains_key("result") || m.contains_key("error");
            if notification || response {
                return empty(StatusCode::ACCEPTED);
            }
            return json_answer(
                StatusCode::BAD_REQUEST,
                &rpc_error(
                    &Value::Null,
                    INVALID_REQUEST,
                    "neither a request, a notification nor a response",
                    None,
                ),
            );
        };
        let Some(method) = m.get("method").and_then(Value::as_str) else {
            if m.contains_key("result") || m.contains_key("error") {
                return empty(StatusCode::ACCEPTED);
            }
            return json_answer(
                StatusCode::BAD_REQUEST,
                &rpc_error(&id, INVALID_REQUEST, "a request needs a method", None),
            );
        };
        let params = m.get("params").cloned().unwrap_or(Value::Null);
        if method == "tools/call"
            && let Some(s) = session
        {
            // Answered as an event stream: a question to the user may come
            // before the result.
            return self.call_streamed(token, peer, s, id, params);
        }
        let reply = self.dispatch(&creds, &id, method, &params).await;
        let mut answer = json_answer(StatusCode::OK, &reply);
        if method == "initialize"
            && reply.get("result").is_some()
            && can_elicit(&params)
            && let Ok(v) = HeaderValue::from_str(&self.open_session())
        {
            answer.headers_mut().insert("mcp-session-id", v);
        }
        answer
    }

    /// `tools/call` for a client that can be asked questions: an event
    /// stream carrying them (`elicitation/create`), then the result.
    fn call_streamed(
        &self,
        token: Option<String>,
        peer: String,
        session: Arc<Session>,
        id: Value,
        params: Value,
    ) -> Answer {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(STREAM_EVENTS);
        let gateway = Arc::clone(&self.gateway);
        let identity = self.identity.snapshot();
        let asker = Asker {
            session,
            events: tx.clone(),
        };
        tokio::spawn(async move {
            let creds = Credentials {
                token: token.as_deref().ok_or_else(|| {
                    Refusal::at(Stage::Authenticate, Reason::TokenMissing, "no token")
                }),
                identity,
                peer,
            };
            let reply = tokio::select! {
                r = tokio::time::timeout(REQUEST_TIMEOUT, call(&gateway, &creds, &id, &params, UserChannel::Ask(&asker))) => r.unwrap_or_else(|_| {
                    rpc_error(&id, INTERNAL_ERROR, "the request took too long", None)
                }),
                // The client went away: the call is abandoned.
                () = tx.closed() => return,
            };
            let _ = tx.send(sse_event(&reply)).await;
        });
        let body = http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx)
                .map(|b| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b))),
        );
        let mut r = http::Response::new(BodyExt::boxed(body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r
    }

    async fn dispatch(
        &self,
        creds: &Credentials<'_>,
        id: &Value,
        method: &str,
        params: &Value,
    ) -> Value {
        match method {
            "initialize" => {
                let asked = params.get("protocolVersion").and_then(Value::as_str);
                let version = asked
                    .filter(|v| PROTOCOL_VERSIONS.contains(v))
                    .unwrap_or(PROTOCOL_VERSIONS[0]);
                rpc_result(
                    id,
                    json!({
                        "protocolVersion": version,
                        "capabilities": {"tools": {"listChanged": false}},
                        "serverInfo": {
                            "name": "warden-sidecar",
                            "version": env!("CARGO_PKG_VERSION"),
                        },
                        "instructions": "Tools are enforced by Warden: a refused call is a tool error naming the reason and the stage that refused it.",
                    }),
                )
            }
            "ping" => rpc_result(id, json!({})),
            "tools/list" => match self.gateway.list_tools(creds).await {
                Ok(listing) => {
                    let tools: Vec<Value> = listing
                        .tools
                        .iter()
                        .map(|t| {
                            json!({
                                "name": t.spec.name,
                                "description": t.spec.description,
                                "inputSchema": t.spec.input_schema,
                            })
                        })
                        .collect();
                    rpc_result(id, json!({"tools": tools}))
                }
                Err(r) => rpc_error(id, INTERNAL_ERROR, &r.message, Some(refusal_meta(&r))),
            },
            "tools/call" => call(&self.gateway, creds, id, params, UserChannel::None).await,
            _ => rpc_error(
                id,
                METHOD_NOT_FOUND,
                &format!("method {method:?} is not served here"),
                None,
            ),
        }
    }
}

/// The client's address, as a request extension.
#[derive(Clone, Copy, Debug)]
struct Peer(std::net::SocketAddr);

/// Serves `server` on `listener` until `shutdown`: at most
/// [`MAX_CONNECTIONS`] at once, each request's headers within 10 s and the
/// whole request within 5 minutes.
pub async fn serve(
    listener: TcpListener,
    server: Arc<McpServer>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // (The guard `wait_for` returns must not live across an await.)
        let stopping = async {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        let slot = tokio::select! {
            s = Arc::clone(&slots).acquire_owned() => s?,
            () = stopping => return Ok(()),
        };
        let Some((sock, addr)) = crate::infra::net::accept(&listener, &mut shutdown, "mcp").await
        else {
            return Ok(());
        };
        let _ = sock.set_nodelay(true);
        let server = Arc::clone(&server);
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(Peer(addr));
                let server = Arc::clone(&server);
                async move {
                    let answer = tokio::time::timeout(REQUEST_TIMEOUT, server.handle(req))
                        .await
                        .unwrap_or_else(|_| {
                            json_answer(
                                StatusCode::SERVICE_UNAVAILABLE,
                                &rpc_error(
                                    &Value::Null,
                                    INTERNAL_ERROR,
                                    "the request took too long",
                                    None,
                                ),
                            )
                        });
                    Ok::<_, std::convert::Infallible>(answer)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(sock), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.wait_for(|s| *s) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::loopback_origin;

    #[test]
    fn only_loopback_origins_pass() {
        for ok in [
            "http://localhost:3000",
            "http://127.0.0.1",
            "https://[::1]:8443",
        ] {
            assert!(loopback_origin(ok), "{ok}");
        }
        for bad in [
            "http://evil.example",
            "http://localhost.evil.example",
            "http://127.0.0.1.evil.example",
            "null",
            "file://",
            "http://[::2]",
        ] {
            assert!(!loopback_origin(bad), "{bad}");
        }
    }
}
