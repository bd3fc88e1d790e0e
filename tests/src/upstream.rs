//! A real HTTP server standing in for a tool's upstream, on 127.0.0.1:
//!
//! - `/echo/…`: answers 200 with the request as JSON (method, path, query,
//!   headers, body), so a test sees what the sidecar sent — and what it
//!   would hand back if the sidecar did not redact it;
//! - `/slow?ms=N`: answers after N ms;
//! - `/big?bytes=N`: answers N bytes;
//! - `/status/N`: answers with status N;
//! - `/gzip`: answers with `Content-Encoding: gzip`;
//! - anything else: 404.
//!
//! Every request's headers are also kept for the test to inspect.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A request the upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Path and query.
    pub uri: String,
    /// Headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// A running upstream; stops when dropped.
#[derive(Debug)]
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it received.
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn query(uri: &http::Uri, key: &str) -> Option<u64> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

async fn handle(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let uri = req.uri().clone();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let method = req.method().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap_or_else(|p| p.into_inner()).push(Seen {
        uri: uri.to_string(),
        headers: headers.clone(),
        body: body.to_vec(),
    });
    let path = uri.path();
    let json = |status: u16, v: serde_json::Value| {
        let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    };
    let resp = if path.starts_with("/echo") {
        json(
            200,
            serde_json::json!({
                "method": method,
                "path": path,
                "query": uri.query().unwrap_or_default(),
                "headers": headers.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>(),
                "body": String::from_utf8_lossy(&body),
            }),
        )
    } else if path == "/slow" {
        tokio::time::sleep(Duration::from_millis(query(&uri, "ms").unwrap_or(1000))).await;
        json(200, serde_json::json!({"slow": true}))
    } else if path == "/big" {
        let n = query(&uri, "bytes").unwrap_or(1 << 20) as usize;
        Response::new(Full::new(Bytes::from(vec![b'x'; n])))
    } else if path == "/gzip" {
        let mut r = Response::new(Full::new(Bytes::from_static(b"\x1f\x8b\x08\x00")));
        r.headers_mut().insert(
            http::header::CONTENT_ENCODING,
            http::HeaderValue::from_static("gzip"),
        );
        r
    } else if let Some(code) = path.strip_prefix("/status/") {
        json(
            code.parse().unwrap_or(500),
            serde_json::json!({"status": code}),
        )
    } else {
        json(404, serde_json::json!({"error": "not found"}))
    };
    Ok(resp)
}

impl Upstream {
    /// Starts on an ephemeral port.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Self> {
        Self::serve(TcpListener::bind(addr).await?, None)
    }

    /// Starts listening on a socket reserved by [`reserve_port`].
    pub fn start_reserved(socket: tokio::net::TcpSocket) -> anyhow::Result<Self> {
        Self::serve(socket.listen(1024)?, None)
    }

    /// Starts an HTTPS upstream on an ephemeral port with `tls`.
    pub async fn start_tls(tls: rustls::ServerConfig) -> anyhow::Result<Self> {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        Self::serve(TcpListener::bind("127.0.0.1:0").await?, Some(acceptor))
    }

    fn serve(
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (tls, seen) = (tls.clone(), Arc::clone(&seen2));
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |r| handle(r, Arc::clone(&seen)));
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        // A client without an acceptable certificate fails here.
                        Some(tls) => match tls.accept(stream).await {
                            Ok(s) => http.serve_connection(TokioIo::new(s), svc).await,
                            Err(_) => return,
                        },
                        None => http.serve_connection(TokioIo::new(stream), svc).await,
                    };
                });
            }
        });
        Ok(Self { addr, seen, task })
    }

    /// The base URL, e.g. `http://127.0.0.1:4711`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A loopback port held by a bound socket that does not listen: connections
/// to it are refused, and no other socket can take it, until
/// [`Upstream::start_reserved`] starts listening on it.
pub fn reserve_port() -> anyhow::Result<(tokio::net::TcpSocket, u16)> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let port = s.local_addr()?.port();
    Ok((s, port))
}

/// A private CA with a server certificate for `localhost` and a client
/// certificate, PEM, for mutual-TLS upstream tests.
#[derive(Debug)]
pub struct TestPki {
    /// The CA certificate.
    pub ca_pem: String,
    /// The server's certificate and key.
    pub server: (String, String),
    /// The client's certificate and key.
    pub client: (String, String),
}

impl TestPki {
    /// Generates everything.
    pub fn new() -> anyhow::Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |names: Vec<String>| -> anyhow::Result<(String, String)> {
            let key = KeyPair::generate()?;
            let cert = CertificateParams::new(names)?.signed_by(&key, &issuer)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        Ok(Self {
            ca_pem: ca_cert.pem(),
            server: leaf(vec!["localhost".into()])?,
            client: leaf(vec!["warden-sidecar.test".into()])?,
        })
    }

    /// A server configuration presenting the server certificate and, if
    /// `require_client`, demanding a client certificate from this CA.
    pub fn server_config(&self, require_client: bool) -> anyhow::Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<_> =
            rustls_pemfile::certs(&mut self.server.0.as_bytes()).collect::<Result<_, _>>()?;
        let key = rustls_pemfile::private_key(&mut self.server.1.as_bytes())?
            .ok_or_else(|| anyhow::anyhow!("no key"))?;
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?;
        let builder = if require_client {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut self.ca_pem.as_bytes()) {
                roots.add(c?)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        Ok(builder.with_single_cert(certs, key)?)
    }
}
