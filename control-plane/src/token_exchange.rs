//! The RFC 8693 token-exchange endpoint, `POST /oauth/token` on its own
//! HTTPS listener (`oauth_listen`; HTTP/1.1, the control plane's server
//! certificate): an agent, authenticated by its client certificate (RFC
//! 8705, verified against the trust domain's CA), trades its user's ID
//! token for a session token acting for that user, exactly as `IssueToken`
//! with `user_token` would issue it. Form-encoded; the standard parameters
//! and errors (RFC 6749 §5.2, RFC 8693 §2.2.2).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State as AxState};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use rustls::pki_types::CertificateDer;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_types::StatusExt;
use warden_shared::proto::v1 as pb;
use warden_shared::refusal::{DOMAIN, Reason};

use crate::state::State;

/// Where it is served.
pub const PATH: &str = "/oauth/token";
/// RFC 8693 §2.1.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The token types accepted for `subject_token` (RFC 8693 §3).
pub const SUBJECT_TYPES: [&str; 2] = [
    "urn:ietf:params:oauth:token-type:id_token",
    "urn:ietf:params:oauth:token-type:jwt",
];
/// The type of the token issued.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Largest form accepted.
const MAX_FORM: usize = 64 * 1024;
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 1024;
/// A TLS handshake, and a request's headers, must arrive within this.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The client certificate chain a connection presented, if any (verified
/// against the trust domain's CA by the TLS layer).
#[derive(Debug, Clone, Default)]
struct PeerCerts(Option<Arc<Vec<CertificateDer<'static>>>>);

/// TLS for the endpoint: the control plane's server certificate; client
/// certificates verified against the trust domain's CA when presented (a
/// request without one is answered `invalid_client`); HTTP/1.1.
pub fn server_tls(
    state: &State,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(state.ca.cert_der().to_vec()))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    )
    .allow_unauthenticated()
    .build()?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())?
        .ok_or_else(|| anyhow::anyhow!("no private key"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the endpoint on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use tower::ServiceExt;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let router = routes(state);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            s = Arc::clone(&slots).acquire_owned() => s?,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            // (The guard `wait_for` returns must not live across awaits.)
            () = async { let _ = stop.wait_for(|s| *s).await; } => return Ok(()),
        };
        let (sock, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, say: not a reason to spin.
                tracing::warn!(error = %e, "token endpoint: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let (acceptor, router, mut stop) = (acceptor.clone(), router.clone(), stop.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(Ok(stream)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await
            else {
                return;
            };
            let peer =
                PeerCerts(stream.get_ref().1.peer_certificates().map(|c| {
                    Arc::new(c.iter().map(|c| c.clone().into_owned()).collect::<Vec<_>>())
                }));
            let svc =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer.clone());
                    router.clone().oneshot(req.map(axum::body::Body::new))
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .max_buf_size(MAX_FORM * 2)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
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

/// The endpoint's route.
pub fn routes(state: Arc<State>) -> Router {
    Router::new().route(PATH, post(token)).with_state(state)
}

/// An OAuth error answer.
fn error(status: StatusCode, code: &str, description: &str, uri: Option<&str>) -> Response {
    let mut body = json!({ "error": code, "error_description": description });
    if let Some(u) = uri {
        body["error_uri"] = json!(u);
    }
    let mut r = (status, axum::Json(body)).into_response();
    no_store(&mut r);
    if status == StatusCode::UNAUTHORIZED {
        // RFC 6749 §5.2: the scheme the client used; here, its certificate.
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("mTLS realm=\"warden\""),
        );
    }
    r
}

fn no_store(r: &mut Response) {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

fn bad(description: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        description,
        None,
    )
}

/// The OAuth error for a refusal `IssueToken` would have answered with.
fn refused(s: &tonic::Status) -> Response {
    let info = s.get_details_error_info().filter(|i| i.domain == DOMAIN);
    let reason = info.as_ref().and_then(|i| Reason::parse(&i.reason));
    let message = s.message();
    let (status, code) = match reason {
        Some(
            Reason::NoClientCertificate
            | Reason::ClientCertificateInvalid
            | Reason::ClientCertificateExpired
            | Reason::WrongPrincipal
            | Reason::AgentNotRegistered
            | Reason::AgentSuspended
            | Reason::AgentRevoked
            | Reason::AgentExpired,
        ) => (StatusCode::UNAUTHORIZED, "invalid_client"),
        Some(
            Reason::UserTokenMalformed
            | Reason::UserTokenAlgorithm
            | Reason::UserTokenUnknownKey
            | Reason::UserTokenBadSignature
            | Reason::UserTokenWrongIssuer
            | Reason::UserTokenWrongAudience
            | Reason::UserTokenExpired
            | Reason::UserTokenNotYetValid
            | Reason::UserTokenNoSubject
            | Reason::UserMismatch
            | Reason::ConsentRequired,
        ) => (StatusCode::BAD_REQUEST, "invalid_grant"),
        Some(Reason::ScopeNotAllowed | Reason::ApprovalPending | Reason::ApprovalDenied) => {
            (StatusCode::BAD_REQUEST, "invalid_scope")
        }
        Some(Reason::InvalidArgument | Reason::SessionLimit) => {
            (StatusCode::BAD_REQUEST, "invalid_request")
        }
        Some(Reason::IdentityProviderUnavailable | Reason::StoreUnavailable) => {
            (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
    };
    let consent = info
        .as_ref()
        .and_then(|i| i.metadata.get("consent_url"))
        .map(String::as_str);
    // The Warden reason rides along for clients that branch on it.
    let described = match reason {
        Some(r) => format!("{}: {message}", r.as_str()),
        None => message.to_owned(),
    };
    error(status, code, &described, consent)
}

async fn token(AxState(state): AxState<Arc<State>>, req: Request) -> Response {
    let certs = req
        .extensions()
        .get::<PeerCerts>()
        .and_then(|p| p.0.clone());
    let caller = match crate::auth::caller_of(certs.as_deref().map(Vec::as_slice), &state.td)
        .and_then(crate::auth::agent_of)
    {
        Ok(c) => c,
        Err(s) => return refused(&s),
    };
    let form_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if form_type != Some("application/x-www-form-urlencoded") {
        return bad("the body must be application/x-www-form-urlencoded");
    }
    let body: Bytes = match axum::body::to_bytes(req.into_body(), MAX_FORM).await {
        Ok(b) => b,
        Err(_) => return bad("the form is larger than 64 KiB"),
    };
    let mut form: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(&body).take(64) {
        // RFC 6749 §3.2: parameters must not be included more than once.
        if form.iter().any(|(seen, _)| *seen == k) {
            return bad(&format!("parameter {k} is repeated"));
        }
        form.push((k.into_owned(), v.into_owned()));
    }
    let get = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    match get("grant_type") {
        Some(GRANT_TYPE) => {}
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("only {GRANT_TYPE} is served here"),
                None,
            );
        }
        None => return bad("grant_type is missing"),
    }
    let Some(subject) = get("subject_token").filter(|t| !t.is_empty()) else {
        return bad("subject_token is missing");
    };
    match get("subject_token_type") {
        Some(t) if SUBJECT_TYPES.contains(&t) => {}
        Some(_) => {
            return bad(&format!(
                "subject_token_type must be one of {}",
                SUBJECT_TYPES.join(", ")
            ));
        }
        None => return bad("subject_token_type is missing"),
    }
    if get("actor_token").is_some() || get("actor_token_type").is_some() {
        return bad("the actor is the agent of the client certificate; send no actor_token");
    }
    if let Some(t) = get("requested_token_type")
        && t != ACCESS_TOKEN_TYPE
        && t != "urn:ietf:params:oauth:token-type:jwt"
    {
        return bad(&format!("requested_token_type must be {ACCESS_TOKEN_TYPE}"));
    }
    // The token's audience is the agent's own sidecar: nothing else can
    // be asked for.
    let spiffe = caller.0.id.to_string();
    for target in ["audience", "resource"] {
        if get(target).is_some_and(|t| t != spiffe) {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                &format!("the only {target} served is the agent itself ({spiffe})"),
                None,
            );
        }
    }
    let scopes: Vec<String> = match get("scope") {
        Some(s) => s
            .split(' ')
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
    };
    let (caller, agent_id) = caller;
    let scopes = if scopes.is_empty() {
        // RFC 8693 §2.1: without `scope`, what policy allows.
        match crate::agents::registered_agent(&state, &agent_id).await {
            Ok(a) => a.allowed_scopes,
            Err(s) => return refused(&s),
        }
    } else {
        scopes
    };
    let issued = crate::api::identity::issue(
        &state,
        &caller,
        &agent_id,
        pb::IssueTokenRequest {
            scopes,
            user_token: subject.to_owned(),
            ..Default::default()
        },
    )
    .await;
    match issued {
        Ok(t) => {
            let expires_in = t
                .expires_at
                .map_or(0, |e| (e.seconds - crate::now_unix()).max(0));
            let mut r = axum::Json(json!({
                "access_token": t.token,
                "issued_token_type": ACCESS_TOKEN_TYPE,
                "token_type": "Bearer",
                "expires_in": expires_in,
                "scope": t.scopes.join(" "),
            }))
            .into_response();
            no_store(&mut r);
            r
        }
        Err(s) => refused(&s),
    }
}
