//! X.509-SVID helpers: read the SPIFFE ID out of a certificate, and compute
//! the RFC 8705 certificate thumbprint that binds tokens to it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe::{self, SpiffeId};

/// Why a certificate is not a usable SVID.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not a DER X.509 certificate.
    #[error("not a DER X.509 certificate")]
    Parse,
    /// An X.509-SVID carries exactly one URI SAN.
    #[error("an X.509-SVID must carry exactly one URI SAN, found {0}")]
    UriSanCount(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN is not a valid SPIFFE ID: {0}")]
    SpiffeId(#[from] spiffe::Error),
}

/// The SPIFFE ID in a certificate's single URI SAN.
pub fn spiffe_id_of(cert_der: &[u8]) -> Result<SpiffeId, Error> {
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|_| Error::Parse)?;
    spiffe_id_of_parsed(&cert)
}

/// [`spiffe_id_of`] for an already parsed certificate.
pub fn spiffe_id_of_parsed(cert: &X509Certificate<'_>) -> Result<SpiffeId, Error> {
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(_) => return Err(Error::Parse),
    };
    match uris.as_slice() {
        [one] => Ok(SpiffeId::parse(one)?),
        _ => Err(Error::UriSanCount(uris.len())),
    }
}

/// `x5t#S256`: base64url (no padding) of SHA-256 over the certificate DER
/// (RFC 8705 §3.1).
pub fn thumbprint(cert_der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, cert_der))
}

/// PEM encoding (RFC 7468) of DER bytes under `tag`, e.g. `CERTIFICATE`.
pub fn pem(tag: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {tag}-----\n");
    for chunk in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {tag}-----\n"));
    out
}
