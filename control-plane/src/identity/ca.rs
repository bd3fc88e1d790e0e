//! The certificate authority: creates or imports the trust domain's CA,
//! signs agent CSRs into short-lived X.509-SVIDs, and issues the control
//! plane's server certificate and admin credentials.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PKCS_ED25519, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::OffsetDateTime;
use warden_shared::spiffe::{SpiffeId, TrustDomain};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Largest CSR accepted.
pub const MAX_CSR_LEN: usize = 16 * 1024;
/// Backdating of `notBefore`, to tolerate clock skew between hosts.
const BACKDATE: Duration = Duration::from_secs(60);

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CSR cannot be parsed, its signature does not verify, or it asks
    /// for extensions the CA does not sign.
    #[error("malformed CSR: {0}")]
    CsrMalformed(String),
    /// The CSR asks for an identity other than the one being enrolled.
    #[error("CSR requests {requested} but this credential is for {expected}")]
    CsrIdentity {
        /// What the CSR asked for.
        requested: String,
        /// What the caller is entitled to.
        expected: String,
    },
    /// The CSR's key type is not accepted.
    #[error("CSR key type not accepted: use ECDSA P-256 or Ed25519")]
    KeyType,
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// Reading or writing CA files failed.
    #[error("{path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The CA certificate on disk is unusable.
    #[error("invalid CA certificate: {0}")]
    BadCa(String),
}

/// A signed leaf certificate.
#[derive(Debug, Clone)]
pub struct Signed {
    /// Leaf DER.
    pub der: Vec<u8>,
    /// Hex serial.
    pub serial: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// A certificate with its freshly generated private key (PEM). The key never
/// appears in `Debug`.
pub struct KeyedCert {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Private key PEM (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for KeyedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCert")
            .field("key_pem", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// A CSR that passed [`Ca::check_csr`].
#[derive(Debug)]
pub struct CheckedCsr(CertificateSigningRequestParams);

/// The trust domain's certificate authority.
pub struct Ca {
    td: TrustDomain,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    not_after: i64,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.td)
            .field("key", &"[redacted]")
            .finish()
    }
}

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";

/// Writes `contents` to `path` with mode 0600, creating it exclusively
/// unless `overwrite`.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    // The mode above applies only on creation; enforce it for existing files.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)
}

fn random_serial() -> (SerialNumber, String) {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b[0] &= 0x7f; // positive INTEGER
    b[0] |= 0x01; // no leading zero byte to strip
    (
        SerialNumber::from_slice(&b),
        b.iter().map(|x| format!("{x:02x}")).collect(),
    )
}

fn uri_san(id: &SpiffeId) -> Result<SanType, Error> {
    Ok(SanType::URI(id.to_string().try_into()?))
}

impl Ca {
    /// Creates a new self-signed CA in `dir` (key 0600). Refuses to replace
    /// an existing one.
    pub fn create(td: &TrustDomain, dir: &Path) -> Result<Self, Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Warden");
        dn.push(DnType::CommonName, format!("Warden CA {td}"));
        p.distinguished_name = dn;
        p.subject_alt_names = vec![SanType::URI(format!("spiffe://{td}").try_into()?)];
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        p.not_before = now - BACKDATE;
        p.not_after = now + Duration::from_secs(10 * 365 * 86_400);
        p.serial_number = Some(random_serial().0);
        let cert = p.self_signed(&key)?;
        Self::save(dir, &cert.pem(), &key.serialize_pem())?;
        Self::load(td, dir)
    }

    /// Imports an existing CA from PEM files into `dir`.
    pub fn import(
        td: &TrustDomain,
        dir: &Path,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self, Error> {
        // Validate before writing anything.
        Self::from_pem(td, cert_pem, key_pem)?;
        Self::save(dir, cert_pem, key_pem)?;
        Self::load(td, dir)
    }

    fn save(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<(), Error> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
            .map_err(|source| Error::Io {
                path: dir.to_owned(),
                source,
            })?;
        let key_path = dir.join(CA_KEY);
        if key_path.exists() {
            return Err(Error::BadCa(format!(
                "{} already exists; refusing to replace a CA",
                key_path.display()
            )));
        }
        write_private(&key_path, key_pem.as_bytes())?;
        fs::write(dir.join(CA_CERT), cert_pem).map_err(|source| Error::Io {
            path: dir.join(CA_CERT),
            source,
        })
    }

    /// Loads the CA from `dir`.
    pub fn load(td: &TrustDomain, dir: &Path) -> Result<Self, Error> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(|source| Error::Io { path, source })
        };
        Self::from_pem(td, &read(CA_CERT)?, &read(CA_KEY)?)
    }

    fn from_pem(td: &TrustDomain, cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let key = KeyPair::from_pem(key_pem)?;
        let der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .next()
            .ok_or_else(|| Error::BadCa("no certificate in PEM".into()))?
            .map_err(|e| Error::BadCa(e.to_string()))?;
        let (_, parsed) =
            X509Certificate::from_der(&der).map_err(|e| Error::BadCa(e.to_string()))?;
        if !parsed.is_ca() {
            return Err(Error::BadCa(
                "certificate is not a CA (basicConstraints cA=false)".into(),
            ));
        }
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(Error::BadCa(
                "the key does not match the CA certificate".into(),
            ));
        }
        let not_after = parsed.validity().not_after.timestamp();
        let issuer = Issuer::from_ca_cert_der(&der, key)?;
        Ok(Self {
            td: td.clone(),
            cert_der: der,
            cert_pem: cert_pem.to_owned(),
            not_after,
            issuer,
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.td
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn leaf_params(
        &self,
        id: &SpiffeId,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<(CertificateParams, String), Error> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Warden");
        dn.push(
            DnType::CommonName,
            id.path().rsplit('/').next().unwrap_or_default(),
        );
        p.distinguished_name = dn;
        p.subject_alt_names = vec![uri_san(id)?];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        p.not_before = now - BACKDATE;
        // A leaf never outlives its CA.
        let ca_end = OffsetDateTime::from_unix_timestamp(self.not_after).unwrap_or(now);
        p.not_after = (now + ttl).min(ca_end);
        let (serial, hex) = random_serial();
        p.serial_number = Some(serial);
        Ok((p, hex))
    }

    /// Verifies a CSR (signature, key type, requested identity) and signs an
    /// X.509-SVID for exactly `id`, valid for `ttl`. The CSR may name no
    /// identity or exactly `id`; anything else is refused.
    pub fn sign_csr(&self, csr_der: &[u8], id: &SpiffeId, ttl: Duration) -> Result<Signed, Error> {
        let csr = self.check_csr(csr_der, id)?;
        self.sign(&csr, id, ttl)
    }

    /// The checks of [`Ca::sign_csr`], without signing: lets a caller refuse
    /// a bad CSR before spending anything (a join token).
    pub fn check_csr(&self, csr_der: &[u8], id: &SpiffeId) -> Result<CheckedCsr, Error> {
        if csr_der.is_empty() || csr_der.len() > MAX_CSR_LEN {
            return Err(Error::CsrMalformed(format!(
                "CSR must be 1..={MAX_CSR_LEN} bytes of DER"
            )));
        }
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| Error::CsrMalformed(e.to_string()))?;
        let alg = csr.public_key.algorithm();
        if alg != &PKCS_ECDSA_P256_SHA256 && alg != &PKCS_ED25519 {
            return Err(Error::KeyType);
        }
        let want = id.to_string();
        for san in &csr.params.subject_alt_names {
            let requested = match san {
                SanType::URI(u) if u.as_str() == want => continue,
                SanType::URI(u) => u.as_str().to_owned(),
                SanType::DnsName(d) => format!("DNS:{}", d.as_str()),
                SanType::IpAddress(ip) => format!("IP:{ip}"),
                SanType::Rfc822Name(e) => format!("email:{}", e.as_str()),
                _ => "otherName".to_owned(),
            };
            return Err(Error::CsrIdentity {
                requested,
                expected: want,
            });
        }
        Ok(CheckedCsr(csr))
    }

    /// Signs a checked CSR for `id`.
    pub fn sign(&self, csr: &CheckedCsr, id: &SpiffeId, ttl: Duration) -> Result<Signed, Error> {
        let now = OffsetDateTime::now_utc();
        let (mut p, serial) = self.leaf_params(id, ttl, now)?;
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let not_after = p.not_after.unix_timestamp();
        let cert = p.signed_by(&csr.0.public_key, &self.issuer)?;
        Ok(Signed {
            der: cert.der().to_vec(),
            serial,
            not_after,
        })
    }

    /// Issues a key pair and certificate for `id` (the control plane's own
    /// server certificate, or an admin credential).
    pub fn issue(
        &self,
        id: &SpiffeId,
        dns: &[String],
        ips: &[IpAddr],
        server: bool,
        ttl: Duration,
    ) -> Result<KeyedCert, Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let (mut p, _) = self.leaf_params(id, ttl, OffsetDateTime::now_utc())?;
        for d in dns {
            p.subject_alt_names
                .push(SanType::DnsName(d.as_str().try_into()?));
        }
        p.subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        p.extended_key_usages = if server {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(KeyedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests;
