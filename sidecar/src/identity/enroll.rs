//! Talking to the control plane's identity API: enrollment with a join
//! token, renewal over mTLS, and the mTLS channel itself.

use std::time::Duration;

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::identity_service_client::IdentityServiceClient;
use warden_shared::spiffe::SpiffeId;

use super::{Error, Identity};

/// Deadline for one identity RPC.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh key pair (generated here, never sent) and a CSR naming `id`.
pub fn key_and_csr(id: &SpiffeId) -> Result<(String, Vec<u8>), Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
    let csr = p.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// A channel to the control plane, optionally presenting our certificate.
pub fn channel(url: &str, bundle_pem: &str, identity: Option<&Identity>) -> Result<Channel, Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(bundle_pem));
    if let Some(id) = identity {
        tls = tls.identity(TlsIdentity::from_pem(&id.cert_pem, id.key_pem()));
    }
    let ep = Endpoint::from_shared(url.to_owned())
        .map_err(|e| Error::Transport(format!("invalid control-plane URL {url:?}: {e}")))?
        .tls_config(tls)
        .map_err(|e| Error::Transport(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(RPC_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(30));
    Ok(ep.connect_lazy())
}

fn rpc_error(s: tonic::Status) -> Error {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
            Error::Transport(s.message().to_owned())
        }
        _ => Error::Refused(s),
    }
}

fn certificate(
    c: Option<pb::Certificate>,
    key_pem: String,
    expected: &SpiffeId,
    now: i64,
) -> Result<Identity, Error> {
    let c = c.ok_or_else(|| Error::Untrusted("empty response".into()))?;
    Identity::verify(
        c.certificate_der,
        key_pem,
        &c.trust_bundle_der,
        expected,
        now,
        true,
    )
}

/// Enrolls with a join token, trusting `bundle_pem` for the control plane.
pub async fn enroll(
    url: &str,
    bundle_pem: &str,
    id: &SpiffeId,
    agent_id: &str,
    join_token: &str,
    now: i64,
) -> Result<Identity, Error> {
    let (key_pem, csr_der) = key_and_csr(id)?;
    let mut client = IdentityServiceClient::new(channel(url, bundle_pem, None)?);
    let resp = client
        .enroll(pb::EnrollRequest {
            agent_id: agent_id.to_owned(),
            join_token: join_token.to_owned(),
            csr_der,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    certificate(resp.certificate, key_pem, id, now)
}

/// Renews: a new key, authenticated by the current certificate.
pub async fn renew(url: &str, current: &Identity, now: i64) -> Result<Identity, Error> {
    let (key_pem, csr_der) = key_and_csr(&current.spiffe_id)?;
    let mut client = IdentityServiceClient::new(channel(url, &current.bundle_pem, Some(current))?);
    let resp = client
        .renew(pb::RenewRequest { csr_der })
        .await
        .map_err(rpc_error)?
        .into_inner();
    certificate(resp.certificate, key_pem, &current.spiffe_id, now)
}
