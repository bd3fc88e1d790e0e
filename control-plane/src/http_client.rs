//! The control plane's outbound HTTP/1.1: webhooks, the OTLP exporter and
//! identity providers (discovery, JWK Sets, the token endpoint). `https`,
//! or plain `http` to a loopback address only; every answer is read up to a
//! bound.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// Largest file of CA certificates read.
const MAX_CA_FILE: u64 = 1024 * 1024;

/// A URL Warden sends to: `https`, or `http` to a loopback address only,
/// with a host and without credentials.
pub(crate) fn target(text: &str) -> Result<http::Uri, &'static str> {
    let url: http::Uri = text.parse().map_err(|_| "not a URL")?;
    let host = url.host().ok_or("no host")?;
    match url.scheme_str() {
        Some("https") => {}
        Some("http") => {
            let loopback = host == "localhost"
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                return Err("plain http only to a loopback address; use https");
            }
        }
        _ => return Err("must be https:// (or http:// to loopback)"),
    }
    if url.authority().is_none_or(|a| a.as_str().contains('@')) {
        return Err("credentials in the URL are not accepted");
    }
    Ok(url)
}

/// A TLS client trusting `ca_file`'s certificates, or the system's roots;
/// on error, the file at fault (if one is) and why.
pub(crate) fn client_tls(
    ca_file: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, (Option<PathBuf>, String)> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca_file {
        let fail = |why: String| (Some(ca.to_owned()), why);
        let meta = std::fs::metadata(ca).map_err(|e| fail(e.to_string()))?;
        if meta.len() > MAX_CA_FILE {
            return Err(fail("too large".into()));
        }
        let pem = std::fs::read(ca).map_err(|e| fail(e.to_string()))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| fail(e.to_string()))?;
            roots.add(cert).map_err(|e| fail(e.to_string()))?;
        }
    } else {
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| (None, format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    ))
}

/// The host (without IPv6 brackets) and port `url` is reached at.
fn endpoint(url: &http::Uri, https: bool) -> (String, u16) {
    let host = url
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    (host, url.port_u16().unwrap_or(if https { 443 } else { 80 }))
}

/// A request to `url` (its path and query) with `Host` and `User-Agent`.
pub(crate) fn request(method: http::Method, url: &http::Uri) -> http::request::Builder {
    http::Request::builder()
        .method(method)
        .uri(url.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            http::header::HOST,
            url.authority().map_or("", |a| a.as_str()),
        )
        .header(
            http::header::USER_AGENT,
            concat!("warden-control-plane/", env!("CARGO_PKG_VERSION")),
        )
}

/// Connects to `url` (through TLS when `tls` is given), sends `req` and
/// reads the answer: its status and body, refused past `limit` bytes.
pub(crate) async fn send(
    url: &http::Uri,
    tls: Option<&Arc<rustls::ClientConfig>>,
    req: http::Request<Full<Bytes>>,
    limit: usize,
) -> Result<(http::StatusCode, Bytes), String> {
    let (host, port) = endpoint(url, tls.is_some());
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    over(tcp, &host, tls, req, Some(limit)).await
}

/// Sends `req` over `tcp` (through TLS to `host` when `tls` is given); the
/// answer's status, and its body when `limit` is given (refused past it;
/// otherwise a bounded part is read and dropped).
pub(crate) async fn over(
    tcp: tokio::net::TcpStream,
    host: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    req: http::Request<Full<Bytes>>,
    limit: Option<usize>,
) -> Result<(http::StatusCode, Bytes), String> {
    if let Some(tls) = tls {
        let name = rustls::pki_types::ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        )
        .map_err(|e| format!("server name: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        exchange(stream, req, limit).await
    } else {
        exchange(tcp, req, limit).await
    }
}

async fn exchange<S>(
    stream: S,
    req: http::Request<Full<Bytes>>,
    limit: Option<usize>,
) -> Result<(http::StatusCode, Bytes), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
    let conn = tokio::spawn(conn);
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut kept = Vec::new();
        let mut seen = 0usize;
        let bound = limit.unwrap_or(64 * 1024);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("HTTP: {e}"))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            seen += data.len();
            if seen > bound {
                if limit.is_some() {
                    return Err(format!("the answer is larger than {bound} bytes"));
                }
                break;
            }
            if limit.is_some() {
                kept.extend_from_slice(data);
            }
        }
        Ok((status, Bytes::from(kept)))
    }
    .await;
    conn.abort();
    result
}
