//! Sidecar-to-sidecar transport over mTLS: both sides present their
//! X.509-SVIDs (the certificates the control plane issued, rotated in
//! place), chain them to the trust bundle, and check the other's SPIFFE ID:
//! the sender's sidecar accepts only the recipient's ID from the server, and
//! the recipient's sidecar accepts an envelope only from its sender's ID.
//! Agent certificates carry no DNS name, so the server name is not checked;
//! the SPIFFE ID is (as SPIFFE's X.509-SVID rules say).

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};
use warden_shared::spiffe::SpiffeId;
use warden_shared::svid;

use crate::identity::Identity;
use crate::identity::rotation::Manager;

/// Longest TLS handshake accepted.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once.
const MAX_HANDSHAKES: usize = 256;
/// Peer connections open at once (each may carry a few deliveries).
const MAX_CONNECTIONS: usize = 512;
/// Connections one peer (SPIFFE ID) may hold open, so that no peer can take
/// every slot.
const MAX_PER_PEER: usize = 8;
/// Deadline of one delivery.
pub const DELIVER_TIMEOUT: Duration = Duration::from_secs(5);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn roots(id: &Identity) -> io::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut id.bundle_pem.as_bytes()) {
        roots.add(c?).map_err(tls_err)?;
    }
    Ok(roots)
}

fn chain_and_key(
    id: &Identity,
) -> io::Result<(
    Vec<CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
)> {
    let chain = vec![CertificateDer::from(id.cert_der.clone())];
    let key = rustls_pemfile::private_key(&mut id.key_pem().as_bytes())?
        .ok_or_else(|| tls_err("the identity holds no private key"))?;
    Ok((chain, key))
}

/// The peer's SPIFFE ID, read from its verified certificate.
#[derive(Debug, Clone)]
pub struct PeerIdentity(pub SpiffeId);

/// A TLS connection whose client certificate verified.
#[derive(Debug)]
pub struct PeerConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SpiffeId,
    /// Its place under [`MAX_CONNECTIONS`], released when it closes.
    _slot: tokio::sync::OwnedSemaphorePermit,
    /// Its place under [`MAX_PER_PEER`], released when it closes.
    _peer_slot: PeerSlot,
}

/// Connections open per peer.
type PerPeer = Arc<Mutex<HashMap<String, usize>>>;

/// One connection counted for its peer.
#[derive(Debug)]
struct PeerSlot {
    counts: PerPeer,
    peer: String,
}

impl PeerSlot {
    fn take(counts: &PerPeer, peer: &str) -> Option<Self> {
        let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.entry(peer.to_owned()).or_insert(0);
        if *n >= MAX_PER_PEER {
            return None;
        }
        *n += 1;
        Some(Self {
            counts: Arc::clone(counts),
            peer: peer.to_owned(),
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = c.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.peer);
            }
        }
    }
}

impl Connected for PeerConn {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        PeerIdentity(self.peer.clone())
    }
}

impl AsyncRead for PeerConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// TLS configurations for the current certificate, rebuilt when it rotates.
#[derive(Debug)]
pub struct PeerTls {
    identity: Arc<Manager>,
    server: Mutex<Option<(String, Arc<rustls::ServerConfig>)>>,
}

impl PeerTls {
    /// Bound to the identity manager.
    pub fn new(identity: Arc<Manager>) -> Self {
        Self {
            identity,
            server: Mutex::new(None),
        }
    }

    fn current(&self) -> io::Result<Arc<Identity>> {
        let snap = self.identity.snapshot();
        snap.valid(crate::now_unix())
            .cloned()
            .ok_or_else(|| tls_err("this sidecar holds no valid certificate"))
    }

    fn server_config(&self) -> io::Result<Arc<rustls::ServerConfig>> {
        let id = self.current()?;
        let mut held = self.server.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((thumb, c)) = held.as_ref()
            && *thumb == id.thumbprint
        {
            return Ok(Arc::clone(c));
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots(&id)?),
            provider(),
        )
        .build()
        .map_err(tls_err)?;
        let (chain, key) = chain_and_key(&id)?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(tls_err)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let config = Arc::new(config);
        *held = Some((id.thumbprint.clone(), Arc::clone(&config)));
        Ok(config)
    }

    /// A client configuration that presents our certificate and accepts
    /// only a server certificate naming `expected`.
    fn client_config(&self, expected: SpiffeId) -> io::Result<(String, rustls::ClientConfig)> {
        let id = self.current()?;
        let verifier = Arc::new(SpiffeServerVerifier {
            roots: Arc::new(roots(&id)?),
            expected,
            provider: provider(),
        });
        let (chain, key) = chain_and_key(&id)?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain, key)
            .map_err(tls_err)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok((id.thumbprint.clone(), config))
    }
}

/// Checks the server's chain against the trust bundle and its SPIFFE ID
/// against the one expected; the server name is not used.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let id = svid::spiffe_id_of(end_entity)
            .map_err(|e| rustls::Error::General(format!("peer certificate: {e}")))?;
        if id != self.expected {
            return Err(rustls::Error::General(format!(
                "peer is {id}, expected {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Accepts mTLS connections on `listener` and yields those whose client
/// certificate verified and names a SPIFFE ID, until `stop`.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<PeerTls>,
    mut stop: watch::Receiver<bool>,
) -> mpsc::Receiver<io::Result<PeerConn>> {
    let (tx, rx) = mpsc::channel(64);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_peer: PerPeer = Arc::default();
    tokio::spawn(async move {
        loop {
            let Some((tcp, addr)) =
                crate::infra::net::accept(&listener, &mut stop, "messages").await
            else {
                return;
            };
            let Ok(slot) = Arc::clone(&connections).try_acquire_owned() else {
                tracing::warn!(%addr, "messaging listener: {MAX_CONNECTIONS} connections open; connection dropped");
                continue;
            };
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                tracing::warn!(%addr, "messaging listener: too many handshakes in progress; connection dropped");
                continue;
            };
            let (tls, tx, per_peer) = (Arc::clone(&tls), tx.clone(), Arc::clone(&per_peer));
            tokio::spawn(async move {
                let _permit = permit;
                let _ = tcp.set_nodelay(true);
                let config = match tls.server_config() {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "messaging listener: no TLS configuration");
                        return;
                    }
                };
                let accept = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
                let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        tracing::info!(%addr, error = %e, "messaging listener: TLS handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
                let peer = conn
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| svid::spiffe_id_of(c.as_ref()));
                match peer {
                    Some(Ok(peer)) => {
                        let Some(peer_slot) = PeerSlot::take(&per_peer, &peer.to_string()) else {
                            tracing::warn!(%addr, %peer, "messaging listener: {MAX_PER_PEER} connections of this peer open; connection dropped");
                            return;
                        };
                        let _ = tx
                            .send(Ok(PeerConn {
                                inner: conn,
                                peer,
                                _slot: slot,
                                _peer_slot: peer_slot,
                            }))
                            .await;
                    }
                    _ => {
                        tracing::info!(%addr, "messaging listener: client certificate is not an X.509-SVID")
                    }
                }
            });
        }
    });
    rx
}

/// Channels to recipients' sidecars, by agent, for the current certificate.
#[derive(Debug)]
pub struct PeerClient {
    tls: Arc<PeerTls>,
    /// Recipient agent id → its sidecar's messaging address (`host:port`).
    peers: HashMap<String, String>,
    channels: Mutex<HashMap<String, (String, Channel)>>,
}

impl PeerClient {
    /// Addresses from the configuration.
    pub fn new(tls: Arc<PeerTls>, peers: HashMap<String, String>) -> Self {
        Self {
            tls,
            peers,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an address is configured for `agent`.
    pub fn knows(&self, agent: &str) -> bool {
        self.peers.contains_key(agent)
    }

    /// A channel to `agent`'s sidecar, which must present `expected`.
    pub fn channel(&self, agent: &str, expected: &SpiffeId) -> io::Result<Channel> {
        let addr = self
            .peers
            .get(agent)
            .ok_or_else(|| tls_err(format!("no address configured for {agent}")))?;
        let (thumb, config) = self.tls.client_config(expected.clone())?;
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, ch)) = channels.get(agent)
            && *t == thumb
        {
            return Ok(ch.clone());
        }
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let target = addr.clone();
        let connect = tower::service_fn(move |_: http::Uri| {
            let (connector, target) = (connector.clone(), target.clone());
            async move {
                let tcp = TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                // The name is not checked (see SpiffeServerVerifier).
                let name = ServerName::try_from("warden-peer").map_err(tls_err)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, io::Error>(TokioIo::new(tls))
            }
        });
        let ch = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(tls_err)?
            .connect_timeout(DELIVER_TIMEOUT)
            .timeout(DELIVER_TIMEOUT)
            .connect_with_connector_lazy(connect);
        channels.insert(agent.to_owned(), (thumb, ch.clone()));
        Ok(ch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_holds_at_most_its_share_of_connections() {
        let counts = PerPeer::default();
        let held: Vec<PeerSlot> = (0..MAX_PER_PEER)
            .map(|_| PeerSlot::take(&counts, "spiffe://t/agent/a").unwrap())
            .collect();
        assert!(PeerSlot::take(&counts, "spiffe://t/agent/a").is_none());
        // Another peer is not affected.
        let b = PeerSlot::take(&counts, "spiffe://t/agent/b").unwrap();
        drop(held);
        assert!(PeerSlot::take(&counts, "spiffe://t/agent/a").is_some());
        drop(b);
        assert!(counts.lock().unwrap().is_empty());
    }
}
