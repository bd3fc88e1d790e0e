//! `http` upstreams: the request is built from the tool's upstream settings
//! and the call's arguments (a URL template, query parameters or a JSON
//! body), secrets are injected into headers and body fields, and the
//! answer is read within a timeout and a size cap. TLS is rustls with the
//! ring provider; connections are pooled per TLS configuration and
//! upstream ([`Pool`]), and each exchange is driven by the call that makes
//! it: the call writes the request and reads the answer on its own task,
//! with no hand-off to a connection task and back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tower::ServiceExt;
use warden_shared::policy::{Upstream, UpstreamTls};

use super::Output;
use super::secrets::Secret;

pub(super) type HttpClient = Arc<Pool>;

/// A connection's byte stream: TCP, or TLS over TCP.
type Io = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

/// Longest a connection is kept idle.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per upstream (scheme, host and port).
const MAX_IDLE: usize = 64;
/// Upstreams with idle connections, at most (the pool is emptied past it).
const MAX_UPSTREAMS: usize = 1024;

/// One HTTP/1.1 connection to an upstream.
struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    /// `None` once it has ended (dropped then, which hands back a request
    /// it had not sent).
    conn: Option<http1::Connection<Io, Full<Bytes>>>,
    idle_since: Instant,
}

/// The HTTP/1.1 connections of one TLS configuration, idle ones kept per
/// upstream. A connection in use belongs to the call using it, which polls
/// it while it sends its request and reads the answer. An idle one is not
/// polled: when taken, it is polled once without waiting, so that an end
/// of stream the upstream sent meanwhile is seen and the connection
/// dropped; one that ends while the request is still unsent is dropped
/// too, and the request goes once more on a new connection.
pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    idle: Mutex<HashMap<String, Vec<Conn>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = self
            .idle
            .lock()
            .map_or(0, |m| m.values().map(Vec::len).sum());
        f.debug_struct("Pool")
            .field("idle", &idle)
            .finish_non_exhaustive()
    }
}

/// How a call on one connection ended.
enum Driven {
    /// The answer (its head and body), and whether the connection may be
    /// used again.
    Answer(http::response::Parts, Bytes, bool),
    /// The connection was closed before the request left: it can go on
    /// another.
    NotSent(http::Request<Full<Bytes>>),
    /// Failed after the request may have left.
    Failed(Failure),
}

fn body_error(e: &(dyn std::error::Error + Send + Sync + 'static), max: usize) -> Failure {
    if e.downcast_ref::<http_body_util::LengthLimitError>()
        .is_some()
    {
        Failure::TooLarge(max)
    } else {
        Failure::Unavailable(e.to_string())
    }
}

/// Whether the body read so far holds all that is wanted of it (an event
/// stream that carried its answer and stays open, say): reading stops
/// there, and the connection is not used again.
pub(super) type Enough<'a> = &'a (dyn Fn(&http::response::Parts, &[u8]) -> bool + Sync);

/// Reads `body` to its end, or until `enough` says so (then the
/// connection is not reusable: `false`), at most `max` bytes.
async fn read_body(
    parts: &http::response::Parts,
    body: hyper::body::Incoming,
    max: usize,
    enough: Option<Enough<'_>>,
) -> Result<(Bytes, bool), Failure> {
    let Some(enough) = enough else {
        return match Limited::new(body, max).collect().await {
            Ok(b) => Ok((b.to_bytes(), true)),
            Err(e) => Err(body_error(e.as_ref(), max)),
        };
    };
    let mut body = body;
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Failure::Unavailable(error_chain(&e)))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(Failure::TooLarge(max));
            }
            buf.extend_from_slice(&data);
            if enough(parts, &buf) {
                return Ok((Bytes::from(buf), false));
            }
        }
    }
    Ok((Bytes::from(buf), true))
}

/// Sends `req` on `c` and reads the answer (at most `max` body bytes, and
/// no further than `enough`), polling the connection on this task.
async fn drive(
    c: &mut Conn,
    req: http::Request<Full<Bytes>>,
    max: usize,
    enough: Option<Enough<'_>>,
) -> Driven {
    let Conn { sender, conn, .. } = c;
    let exchange = async move {
        if std::future::poll_fn(|cx| sender.poll_ready(cx))
            .await
            .is_err()
        {
            return Driven::NotSent(req);
        }
        let resp = match sender.try_send_request(req).await {
            Ok(r) => r,
            Err(mut e) => {
                return match e.take_message() {
                    Some(req) => Driven::NotSent(req),
                    None => Driven::Failed(Failure::Unavailable(error_chain(e.error()))),
                };
            }
        };
        let (parts, body) = resp.into_parts();
        match read_body(&parts, body, max, enough).await {
            Ok((b, whole)) => Driven::Answer(parts, b, whole),
            Err(f) => Driven::Failed(f),
        }
    };
    tokio::pin!(exchange);
    let driven = std::future::poll_fn(|cx| {
        if let Some(io) = conn.as_mut()
            && std::pin::Pin::new(io).poll(cx).is_ready()
        {
            // Ended (closed, or failed): dropped, which hands back a
            // request it had not sent, and fails an answer half read.
            *conn = None;
        }
        exchange.as_mut().poll(cx)
    })
    .await;
    match driven {
        Driven::Answer(parts, body, whole) => Driven::Answer(parts, body, whole && conn.is_some()),
        other => other,
    }
}

impl Pool {
    fn new(connector: HttpsConnector<HttpConnector>) -> Self {
        Self {
            connector,
            idle: Mutex::new(HashMap::new()),
        }
    }

    fn take(&self, key: &str) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(key)?;
        // An end of stream that arrived while it was idle is read here,
        // without waiting.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        while let Some(mut c) = list.pop() {
            if c.idle_since.elapsed() >= IDLE_TIMEOUT || c.sender.is_closed() {
                continue;
            }
            if let Some(io) = c.conn.as_mut()
                && std::pin::Pin::new(io).poll(&mut cx).is_pending()
            {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, key: String, mut c: Conn) {
        c.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= MAX_UPSTREAMS && !idle.contains_key(&key) {
            idle.clear();
        }
        let list = idle.entry(key).or_default();
        list.retain(|c| c.idle_since.elapsed() < IDLE_TIMEOUT);
        if list.len() < MAX_IDLE {
            list.push(c);
        }
    }

    async fn connect(&self, uri: http::Uri) -> Result<Conn, Failure> {
        let io = self
            .connector
            .clone()
            .oneshot(uri)
            .await
            .map_err(|e| Failure::Unavailable(error_chain(e.as_ref())))?;
        let (sender, conn) = http1::handshake(io)
            .await
            .map_err(|e| Failure::Unavailable(error_chain(&e)))?;
        Ok(Conn {
            sender,
            conn: Some(conn),
            idle_since: Instant::now(),
        })
    }

    /// Sends `req` (an absolute URI) and reads the answer, at most `max`
    /// body bytes, on a pooled connection or a new one.
    pub(super) async fn exchange(
        &self,
        req: http::Request<Full<Bytes>>,
        max: usize,
    ) -> Result<(http::response::Parts, Bytes), Failure> {
        self.exchange_until(req, max, None).await
    }

    /// [`Pool::exchange`], reading the answer's body no further than
    /// `enough` needs.
    pub(super) async fn exchange_until(
        &self,
        mut req: http::Request<Full<Bytes>>,
        max: usize,
        enough: Option<Enough<'_>>,
    ) -> Result<(http::response::Parts, Bytes), Failure> {
        let uri = req.uri().clone();
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(Failure::Build(format!("{uri} is not an absolute URL")));
        };
        let key = format!("{scheme}://{}", authority.as_str());
        // HTTP/1.1 on the wire: the path in the request line, the
        // authority in `Host`.
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| Failure::Build(format!("{uri}: invalid authority")))?;
        req.headers_mut().insert(http::header::HOST, host);
        *req.uri_mut() = uri.path_and_query().map_or_else(
            || http::Uri::from_static("/"),
            |p| http::Uri::from(p.clone()),
        );
        let mut pooled = true;
        loop {
            let mut c = match self.take(&key) {
                Some(c) => c,
                None => {
                    pooled = false;
                    self.connect(uri.clone()).await?
                }
            };
            match drive(&mut c, req, max, enough).await {
                Driven::Answer(parts, body, live) => {
                    if live && !c.sender.is_closed() {
                        self.put(key, c);
                    }
                    return Ok((parts, body));
                }
                // A pooled connection the upstream had closed: once more, on
                // a new one.
                Driven::NotSent(r) if pooled => req = r,
                Driven::NotSent(_) => {
                    return Err(Failure::Unavailable(
                        "the connection closed before the request was sent".into(),
                    ));
                }
                Driven::Failed(f) => return Err(f),
            }
        }
    }
}

/// Why an upstream call failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The request could not be built (a bad template value, a bad TLS file).
    #[error("request could not be built: {0}")]
    Build(String),
    /// Connecting or exchanging failed.
    #[error("upstream failed: {0}")]
    Unavailable(String),
    /// No complete answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The answer exceeds the cap.
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    /// The answer is content-encoded (compressed): output inspection could
    /// not see into it.
    #[error("answer is content-encoded ({0}); only identity is accepted")]
    Encoded(String),
}

/// The sidecar's HTTP clients: one with the system trust store, and one per
/// distinct upstream TLS configuration.
#[derive(Default)]
pub struct Clients {
    system: Mutex<Option<HttpClient>>,
    custom: Mutex<HashMap<Vec<u8>, HttpClient>>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients").finish_non_exhaustive()
    }
}

fn client(tls: rustls::ClientConfig) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Arc::new(Pool::new(https))
}

fn roots(ca_file: Option<&str>) -> Result<rustls::RootCertStore, String> {
    let mut store = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("tls.ca_file {path}: {e}"))?;
            for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                let c = c.map_err(|e| format!("tls.ca_file {path}: {e}"))?;
                store
                    .add(c)
                    .map_err(|e| format!("tls.ca_file {path}: {e}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
        }
    }
    if store.is_empty() {
        return Err("no trusted CA certificates (tls.ca_file or the system store)".into());
    }
    Ok(store)
}

fn tls_config(
    tls: Option<&UpstreamTls>,
    client_auth: Option<(&Secret, &Secret)>,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(tls.and_then(|t| t.ca_file.as_deref()))?);
    match client_auth {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain: Result<Vec<_>, _> =
                rustls_pemfile::certs(&mut cert.expose().as_bytes()).collect();
            let chain = chain.map_err(|e| format!("tls.client_cert: {e}"))?;
            let key = rustls_pemfile::private_key(&mut key.expose().as_bytes())
                .map_err(|e| format!("tls.client_key: {e}"))?
                .ok_or("tls.client_key holds no private key")?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("tls client certificate: {e}"))
        }
    }
}

impl Clients {
    /// The client for `tls` (the system trust store without a `ca_file`),
    /// with `client_auth` (a certificate chain and key) for mutual TLS.
    pub(super) fn get(
        &self,
        tls: Option<&UpstreamTls>,
        client_auth: Option<(&Secret, &Secret)>,
    ) -> Result<HttpClient, Failure> {
        let custom = tls.is_some_and(|t| t.ca_file.is_some()) || client_auth.is_some();
        if !custom {
            if let Some(c) = self
                .system
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
            {
                return Ok(c.clone());
            }
            // Built outside the lock (it reads the trust store); a failure is
            // not kept, so a fixed store is used on the next call.
            let c = client(tls_config(None, None).map_err(Failure::Build)?);
            *self.system.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
            return Ok(c);
        }
        // Keyed by a digest of the settings and credentials: a rotated
        // client key gets a fresh client.
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        if let Some(f) = tls.and_then(|t| t.ca_file.as_deref()) {
            ctx.update(f.as_bytes());
        }
        ctx.update(b"\0");
        if let Some((c, k)) = client_auth {
            ctx.update(c.expose().as_bytes());
            ctx.update(b"\0");
            ctx.update(k.expose().as_bytes());
        }
        let key = ctx.finish().as_ref().to_vec();
        if let Some(c) = self
            .custom
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(c.clone());
        }
        // Built outside the lock: it reads files.
        let c = client(tls_config(tls, client_auth).map_err(Failure::Build)?);
        let mut m = self.custom.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= 256 {
            m.clear();
        }
        m.insert(key, c.clone());
        Ok(c)
    }
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
/// Percent-encodes `s` (RFC 3986 unreserved characters kept) onto `out`.
pub(crate) fn encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Fills `${secret:NAME}` from `secrets`.
pub(super) fn fill_secrets(
    template: &str,
    secrets: &HashMap<String, Secret>,
) -> Result<String, Failure> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find("${secret:") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 9..];
        let j = after
            .find('}')
            .ok_or_else(|| Failure::Build("unterminated ${secret:…}".into()))?;
        let s = secrets
            .get(&after[..j])
            .ok_or_else(|| Failure::Build(format!("secret {} not resolved", &after[..j])))?;
        out.push_str(s.expose());
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A call to make. `Debug` leaves the arguments out.
pub struct Call<'a> {
    /// The upstream settings.
    pub upstream: &'a Upstream,
    /// The validated arguments (a JSON object).
    pub args: &'a Value,
    /// Resolved secrets by name.
    pub secrets: &'a HashMap<String, Secret>,
    /// Sent as `x-warden-call-id`.
    pub call_id: &'a str,
    /// Sent as `x-warden-trace-id` when set.
    pub trace_id: &'a str,
    /// For the whole exchange, body included.
    pub timeout: Duration,
    /// Largest body accepted.
    pub max_bytes: usize,
}

impl std::fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("upstream", &self.upstream.address)
            .field("call_id", &self.call_id)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn build(c: &Call<'_>) -> Result<http::Request<Full<Bytes>>, Failure> {
    let u = c.upstream;
    let empty = serde_json::Map::new();
    let args = c.args.as_object().unwrap_or(&empty);
    let placeholders = u.placeholders();
    let mut url = String::with_capacity(u.address.len() + 32);
    let mut rest = u.address.as_str();
    while let Some(i) = rest.find('{') {
        let Some(j) = rest[i..].find('}') else { break };
        url.push_str(&rest[..i]);
        let name = &rest[i + 1..i + j];
        let v = args
            .get(name)
            .ok_or_else(|| Failure::Build(format!("argument {name} missing for the URL")))?;
        encode(&scalar(v), &mut url);
        rest = &rest[i + j + 1..];
    }
    url.push_str(rest);
    let method = u.method.as_deref().unwrap_or("POST");
    let rest_args = args
        .iter()
        .filter(|(k, _)| !placeholders.contains(&k.as_str()));
    let body = if matches!(method, "GET" | "DELETE") {
        let mut sep = if url.contains('?') { '&' } else { '?' };
        for (k, v) in rest_args {
            let values: Vec<&Value> = match v {
                Value::Array(a) => a.iter().collect(),
                Value::Null => continue,
                other => vec![other],
            };
            for v in values {
                url.push(sep);
                sep = '&';
                encode(k, &mut url);
                url.push('=');
                encode(&scalar(v), &mut url);
            }
        }
        None
    } else {
        let mut obj: serde_json::Map<String, Value> =
            rest_args.map(|(k, v)| (k.clone(), v.clone())).collect();
        for (k, t) in &u.body_fields {
            obj.insert(k.clone(), Value::String(fill_secrets(t, c.secrets)?));
        }
        Some(serde_json::to_vec(&obj).map_err(|e| Failure::Build(e.to_string()))?)
    };
    let mut req = http::Request::builder()
        .method(method)
        .uri(&url)
        .header(ACCEPT, "application/json, */*;q=0.5")
        // Output inspection reads the answer as sent: no compression.
        .header(http::header::ACCEPT_ENCODING, "identity")
        .header(
            USER_AGENT,
            concat!("warden-sidecar/", env!("CARGO_PKG_VERSION")),
        )
        .header("x-warden-call-id", c.call_id);
    if !c.trace_id.is_empty() {
        req = req.header("x-warden-trace-id", c.trace_id);
    }
    if body.is_some() {
        req = req.header(CONTENT_TYPE, "application/json");
    }
    let mut req = req
        .body(Full::new(body.map(Bytes::from).unwrap_or_default()))
        .map_err(|e| Failure::Build(e.to_string()))?;
    for (name, template) in &u.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| Failure::Build(format!("header {name}: {e}")))?;
        let uses_secret = template.contains("${secret:");
        let mut value = HeaderValue::from_str(&fill_secrets(template, c.secrets)?)
            .map_err(|_| Failure::Build(format!("header {name}: invalid value")))?;
        // Never indexed by HPACK, hidden from hyper's debug output.
        value.set_sensitive(uses_secret);
        req.headers_mut().insert(name, value);
    }
    Ok(req)
}

/// Makes the call.
pub async fn call(clients: &Clients, c: Call<'_>) -> Result<Output, Failure> {
    let tls = c.upstream.tls.as_ref();
    let client_auth = match tls.and_then(|t| t.client_cert.as_ref().zip(t.client_key.as_ref())) {
        Some((cert, key)) => Some((
            c.secrets
                .get(cert)
                .ok_or_else(|| Failure::Build("client certificate not resolved".into()))?,
            c.secrets
                .get(key)
                .ok_or_else(|| Failure::Build("client key not resolved".into()))?,
        )),
        None => None,
    };
    let client = clients.get(tls, client_auth)?;
    let req = build(&c)?;
    let exchange = async {
        let (parts, body) = client.exchange(req, c.max_bytes).await?;
        let status = parts.status.as_u16();
        if let Some(enc) = coding_refused(&parts.headers) {
            return Err(Failure::Encoded(enc));
        }
        let content_type = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        Ok(Output {
            content: body.to_vec(),
            content_type,
            status,
            secrets: Vec::new(),
        })
    };
    tokio::time::timeout(c.timeout, exchange)
        .await
        .map_err(|_| Failure::Timeout(c.timeout))?
}

/// The first coding of the answer that output inspection could not see
/// through, if any: every `Content-Encoding` line must name only
/// `identity`, and every `Transfer-Encoding` line only `chunked` (which
/// the HTTP client removes). Each header may come as several lines and
/// each line as a list, so every element of every line is checked.
pub(super) fn coding_refused(headers: &http::HeaderMap) -> Option<String> {
    let refused = |name: http::header::HeaderName, allowed: &str| {
        headers.get_all(name).iter().find_map(|v| {
            let Ok(text) = v.to_str() else {
                return Some("(not text)".to_owned());
            };
            text.split(',')
                .map(str::trim)
                .find(|c| !c.is_empty() && !c.eq_ignore_ascii_case(allowed))
                .map(|c| c.chars().take(32).collect())
        })
    };
    refused(http::header::CONTENT_ENCODING, "identity")
        .or_else(|| refused(http::header::TRANSFER_ENCODING, "chunked"))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(address: &str, method: &str) -> Upstream {
        Upstream {
            kind: "http".into(),
            address: address.into(),
            tool: None,
            pin: None,
            method: Some(method.into()),
            headers: [("Authorization".to_owned(), "Bearer ${secret:k}".to_owned())].into(),
            body_fields: Default::default(),
            tls: None,
            max_response_bytes: None,
            circuit_breaker: None,
        }
    }

    #[test]
    fn requests_fill_the_template_query_body_and_secret_headers() {
        let secrets = HashMap::from([("k".to_owned(), Secret::new("s3cret".into()))]);
        let args = serde_json::json!({"id": "a/b c", "q": "x&y", "tags": ["1", "2"], "n": 3});
        let u = upstream("http://127.0.0.1:9/items/{id}", "GET");
        let call = Call {
            upstream: &u,
            args: &args,
            secrets: &secrets,
            call_id: "call_1",
            trace_id: "",
            timeout: Duration::from_secs(1),
            max_bytes: 10,
        };
        let req = build(&call).unwrap();
        assert_eq!(req.uri().path(), "/items/a%2Fb%20c");
        let mut query: Vec<&str> = req.uri().query().unwrap().split('&').collect();
        query.sort_unstable();
        assert_eq!(query, ["n=3", "q=x%26y", "tags=1", "tags=2"]);
        let auth = &req.headers()["authorization"];
        assert_eq!(auth, "Bearer s3cret");
        assert!(auth.is_sensitive());
        assert!(req.headers().get("x-warden-trace-id").is_none());

        let mut u = upstream("http://127.0.0.1:9/items/{id}", "POST");
        u.body_fields = [("api_key".to_owned(), "${secret:k}".to_owned())].into();
        let call = Call {
            upstream: &u,
            trace_id: "t-1",
            ..call
        };
        let req = build(&call).unwrap();
        assert_eq!(req.uri().path(), "/items/a%2Fb%20c");
        assert_eq!(req.headers()["x-warden-trace-id"], "t-1");
        let body = futures_body(req);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"q": "x&y", "tags": ["1", "2"], "n": 3, "api_key": "s3cret"})
        );
    }

    #[test]
    fn a_secret_that_would_split_a_header_builds_no_request() {
        let secrets = HashMap::from([("k".to_owned(), Secret::new("a\r\nX-Evil: 1".into()))]);
        let u = upstream("http://127.0.0.1:9/x", "GET");
        let args = serde_json::json!({});
        let call = Call {
            upstream: &u,
            args: &args,
            secrets: &secrets,
            call_id: "c",
            trace_id: "",
            timeout: Duration::from_secs(1),
            max_bytes: 10,
        };
        assert!(matches!(build(&call), Err(Failure::Build(_))));
    }

    #[test]
    fn any_coding_but_identity_or_chunked_is_refused_on_any_line() {
        let map = |lines: &[(&str, &str)]| {
            let mut m = http::HeaderMap::new();
            for (k, v) in lines {
                m.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            m
        };
        for (lines, refused) in [
            (vec![], None),
            (vec![("content-encoding", "identity")], None),
            (vec![("content-encoding", "Identity, ")], None),
            (vec![("transfer-encoding", "chunked")], None),
            (vec![("content-encoding", "gzip")], Some("gzip")),
            (
                vec![
                    ("content-encoding", "identity"),
                    ("content-encoding", "gzip"),
                ],
                Some("gzip"),
            ),
            (vec![("content-encoding", "identity, br")], Some("br")),
            (vec![("transfer-encoding", "gzip, chunked")], Some("gzip")),
            (
                vec![
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "deflate"),
                ],
                Some("deflate"),
            ),
        ] {
            assert_eq!(
                coding_refused(&map(&lines)).as_deref(),
                refused,
                "{lines:?}"
            );
        }
    }

    /// A hostile upstream on a real socket: each answer is written byte for
    /// byte, so duplicated header lines reach the client as sent.
    #[tokio::test]
    async fn a_compressed_answer_behind_an_identity_line_is_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let answers = [
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Encoding: identity\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\nab",
            "HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Encoding: identity\r\nContent-Length: 2\r\n\r\nok",
        ];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for a in answers {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                s.write_all(a.as_bytes()).await.unwrap();
                s.shutdown().await.unwrap();
            }
        });
        let secrets = HashMap::new();
        let args = serde_json::json!({});
        let mut u = upstream(&format!("http://{addr}/x"), "GET");
        u.headers.clear();
        let clients = Clients::default();
        for expected in ["gzip", "gzip", ""] {
            let r = call(
                &clients,
                Call {
                    upstream: &u,
                    args: &args,
                    secrets: &secrets,
                    call_id: "c",
                    trace_id: "",
                    timeout: Duration::from_secs(5),
                    max_bytes: 1024,
                },
            )
            .await;
            match r {
                Err(Failure::Encoded(c)) => assert_eq!(c, expected),
                Ok(o) => assert!(expected.is_empty() && o.content == b"ok"),
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// A raw HTTP/1.1 upstream: answers each request on a connection with
    /// `ok`, keeping the connection (`close_after` answers per connection,
    /// then closes it without saying so). Returns its address and a count
    /// of the connections it accepted, and of the requests it saw, each
    /// with its request line and `Host`.
    async fn raw_upstream(
        close_after: usize,
    ) -> (
        std::net::SocketAddr,
        Arc<std::sync::atomic::AtomicUsize>,
        Arc<Mutex<Vec<String>>>,
        tokio::sync::mpsc::UnboundedReceiver<()>,
    ) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
        let (a, s) = (Arc::clone(&accepted), Arc::clone(&seen));
        tokio::spawn(async move {
            loop {
                let (sock, _) = listener.accept().await.unwrap();
                a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (s, closed_tx) = (Arc::clone(&s), closed_tx.clone());
                tokio::spawn(async move {
                    let mut sock = tokio::io::BufReader::new(sock);
                    for _ in 0..close_after {
                        let mut head = Vec::new();
                        loop {
                            let mut line = String::new();
                            if sock.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            head.push(line.trim_end().to_owned());
                        }
                        let host = head
                            .iter()
                            .find(|l| l.to_ascii_lowercase().starts_with("host:"))
                            .cloned()
                            .unwrap_or_default();
                        s.lock().unwrap().push(format!("{} | {host}", head[0]));
                        sock.get_mut()
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await
                            .unwrap();
                    }
                    // Closed without a `Connection: close`: a pooled
                    // connection goes stale.
                    drop(sock);
                    let _ = closed_tx.send(());
                });
            }
        });
        (addr, accepted, seen, closed)
    }

    async fn get(clients: &Clients, u: &Upstream) -> Result<Output, Failure> {
        call(
            clients,
            Call {
                upstream: u,
                args: &serde_json::json!({}),
                secrets: &HashMap::new(),
                call_id: "c",
                trace_id: "",
                timeout: Duration::from_secs(5),
                max_bytes: 1024,
            },
        )
        .await
    }

    #[tokio::test]
    async fn a_kept_alive_connection_is_used_again_and_a_stale_one_replaced() {
        let (addr, accepted, seen, _) = raw_upstream(usize::MAX).await;
        let mut u = upstream(&format!("http://{addr}/x?q=1"), "GET");
        u.headers.clear();
        let clients = Clients::default();
        for _ in 0..3 {
            assert_eq!(get(&clients, &u).await.unwrap().content, b"ok");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        // The request line carries the path, `Host` the authority.
        let lines = seen.lock().unwrap().clone();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], format!("GET /x?q=1 HTTP/1.1 | host: {addr}"));

        // An upstream that closes each connection after one answer: the
        // pooled connection is stale by the next call, which goes on a new
        // one and succeeds.
        let (addr, accepted, _, mut closed) = raw_upstream(1).await;
        let mut u = upstream(&format!("http://{addr}/y"), "GET");
        u.headers.clear();
        for n in 1..=3 {
            // Quickly: a stale connection must not wait for the timeout.
            let t = Instant::now();
            assert_eq!(get(&clients, &u).await.unwrap().content, b"ok");
            assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
            // The upstream has closed the connection the answer came on
            // (it sits in the pool, closed, unknown to it).
            closed.recv().await.unwrap();
            assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), n);
        }
    }

    fn futures_body(req: http::Request<Full<Bytes>>) -> Bytes {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async { req.into_body().collect().await.unwrap().to_bytes() })
    }
}
