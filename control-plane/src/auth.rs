//! Who is calling: the SPIFFE ID in the verified client certificate. The TLS
//! layer has already checked the chain against our CA; here we read the
//! identity and check it belongs to our trust domain and the right kind.

use tonic::{Request, Status};
use warden_shared::agent::AgentId;
use warden_shared::refusal::{Reason, status};
use warden_shared::spiffe::{Principal, SpiffeId, TrustDomain};
use warden_shared::svid;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Its SPIFFE ID.
    pub id: SpiffeId,
    /// Which principal that is.
    pub principal: Principal,
    /// Leaf certificate DER.
    pub cert_der: Vec<u8>,
    /// The leaf's `notAfter`, unix seconds.
    pub not_after: i64,
}

/// Reads the caller's identity from its client certificate.
pub fn caller<T>(req: &Request<T>, td: &TrustDomain) -> Result<Caller, Status> {
    caller_of(req.peer_certs().as_deref().map(Vec::as_slice), td)
}

/// The caller whose verified chain is `certs` (leaf first), on any of the
/// gRPC port's routes.
pub fn caller_of(
    certs: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    td: &TrustDomain,
) -> Result<Caller, Status> {
    let certs = certs.filter(|c| !c.is_empty()).ok_or_else(|| {
        status(
            Reason::NoClientCertificate,
            "this call requires a client certificate (mTLS)",
        )
    })?;
    let leaf = certs[0].as_ref();
    let parsed = x509_parser::parse_x509_certificate(leaf)
        .map(|(_, c)| c)
        .map_err(|_| {
            status(
                Reason::ClientCertificateInvalid,
                "client certificate does not parse",
            )
        })?;
    let not_after = parsed.validity().not_after.timestamp();
    let id = svid::spiffe_id_of_parsed(&parsed).map_err(|e| {
        status(
            Reason::ClientCertificateInvalid,
            format!("client certificate is not an X.509-SVID: {e}"),
        )
    })?;
    if id.trust_domain() != td {
        return Err(status(
            Reason::WrongPrincipal,
            format!("client identity {id} is not in trust domain {td}"),
        ));
    }
    let principal = id
        .principal()
        .map_err(|e| status(Reason::WrongPrincipal, e.to_string()))?;
    Ok(Caller {
        id,
        principal,
        cert_der: leaf.to_vec(),
        not_after,
    })
}

/// The caller, which must be an admin.
pub fn admin<T>(req: &Request<T>, td: &TrustDomain) -> Result<(Caller, String), Status> {
    let c = caller(req, td)?;
    match &c.principal {
        Principal::Admin(name) => {
            let name = name.clone();
            Ok((c, name))
        }
        _ => Err(status(
            Reason::WrongPrincipal,
            format!(
                "the admin API requires an admin certificate; caller is {}",
                c.id
            ),
        )),
    }
}

/// The caller, which must be an agent with an unexpired certificate (an
/// HTTP/2 connection can outlive the certificate it was opened with).
pub fn agent<T>(req: &Request<T>, td: &TrustDomain) -> Result<(Caller, AgentId), Status> {
    agent_of(caller(req, td)?)
}

/// `c`, which must be an agent with an unexpired certificate.
pub fn agent_of(c: Caller) -> Result<(Caller, AgentId), Status> {
    if c.not_after <= time::OffsetDateTime::now_utc().unix_timestamp() {
        return Err(status(
            Reason::ClientCertificateExpired,
            "client certificate has expired; enroll again with a join token",
        ));
    }
    match &c.principal {
        Principal::Agent(id) => {
            let id = id.clone();
            Ok((c, id))
        }
        _ => Err(status(
            Reason::WrongPrincipal,
            format!(
                "this call requires an agent certificate; caller is {}",
                c.id
            ),
        )),
    }
}
