//! The sidecar's X.509-SVID: generated locally, enrolled with a join token,
//! persisted 0600, renewed before it lapses.

pub mod enroll;
pub mod rotation;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use rcgen::{KeyPair, PublicKeyData};
use warden_shared::spiffe::SpiffeId;
use warden_shared::svid;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why an identity could not be obtained, loaded or trusted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The control plane refused the request.
    #[error("control plane refused: {}", .0.message())]
    Refused(#[source] tonic::Status),
    /// The control plane could not be reached.
    #[error("cannot reach the control plane: {0}")]
    Transport(String),
    /// The certificate received is not acceptable.
    #[error("received certificate rejected: {0}")]
    Untrusted(String),
    /// Key or CSR generation failed.
    #[error("key generation failed: {0}")]
    Key(#[from] rcgen::Error),
    /// Reading or writing identity files failed.
    #[error("{path}: {source}")]
    Io {
        /// File involved.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No valid certificate is held.
    #[error("no valid certificate: {0}")]
    NoIdentity(String),
}

/// A certificate, its private key and the trust bundle. `Debug` never prints
/// the key.
#[derive(Clone)]
pub struct Identity {
    /// SPIFFE ID in the certificate.
    pub spiffe_id: SpiffeId,
    /// Leaf DER.
    pub cert_der: Vec<u8>,
    /// Leaf PEM.
    pub cert_pem: String,
    key_pem: String,
    /// Trust anchors, PEM.
    pub bundle_pem: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// When this sidecar received (or loaded) it, unix seconds: renewal is
    /// timed from here, since `not_before` is backdated for clock skew.
    pub received_at: i64,
    /// Hex serial.
    pub serial: String,
    /// `x5t#S256` of the leaf.
    pub thumbprint: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// The authoritative file: key, leaf and bundle together (0600), replaced
/// in one atomic rename so a crash never pairs a key with another's cert.
const IDENTITY: &str = "identity.pem";
/// Public copies for operators and tools (not read back).
const CERT: &str = "svid.crt";
const BUNDLE: &str = "bundle.crt";

use warden_shared::svid::pem;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` to `path` atomically (temp file, fsync, rename, fsync
/// of the directory) with `mode`.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(path))?;
    f.write_all(contents).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(())
}

impl Identity {
    /// Checks a certificate before trusting it: its SAN is exactly
    /// `expected`, it certifies our key, it chains to the bundle, and (if
    /// `require_valid`) it is valid at `now`.
    pub fn verify(
        cert_der: Vec<u8>,
        key_pem: String,
        bundle_der: &[Vec<u8>],
        expected: &SpiffeId,
        now: i64,
        require_valid: bool,
    ) -> Result<Self, Error> {
        let bad = |m: String| Error::Untrusted(m);
        let (_, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|e| bad(format!("not a certificate: {e}")))?;
        let id = svid::spiffe_id_of_parsed(&cert).map_err(|e| bad(e.to_string()))?;
        if &id != expected {
            return Err(bad(format!("certificate names {id}, expected {expected}")));
        }
        let key = KeyPair::from_pem(&key_pem)?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(bad("certificate does not certify this sidecar's key".into()));
        }
        let chained = bundle_der.iter().any(|ca| {
            X509Certificate::from_der(ca)
                .is_ok_and(|(_, ca)| cert.verify_signature(Some(ca.public_key())).is_ok())
        });
        if !chained {
            return Err(bad("certificate does not chain to the trust bundle".into()));
        }
        let (not_before, not_after) = (
            cert.validity().not_before.timestamp(),
            cert.validity().not_after.timestamp(),
        );
        if require_valid && not_after <= now {
            return Err(Error::NoIdentity(format!(
                "certificate expired at {not_after}"
            )));
        }
        let serial = cert
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let bundle_pem = bundle_der.iter().map(|d| pem("CERTIFICATE", d)).collect();
        Ok(Self {
            spiffe_id: id,
            cert_pem: pem("CERTIFICATE", &cert_der),
            thumbprint: svid::thumbprint(&cert_der),
            cert_der,
            key_pem,
            bundle_pem,
            not_before,
            not_after,
            received_at: now,
            serial,
        })
    }

    /// The private key PEM, for this sidecar's TLS client. Never log it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Whether the certificate is valid at `now`.
    pub fn valid_at(&self, now: i64) -> bool {
        self.not_before <= now && now < self.not_after
    }

    /// Persists to `dir` (0700): the identity file (0600) in one atomic
    /// replacement, then public copies of the certificate and bundle.
    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        private_dir(dir)?;
        let all = format!("{}{}{}", self.key_pem, self.cert_pem, self.bundle_pem);
        write_atomic(&dir.join(IDENTITY), all.as_bytes(), 0o600)?;
        write_atomic(&dir.join(CERT), self.cert_pem.as_bytes(), 0o644)?;
        write_atomic(&dir.join(BUNDLE), self.bundle_pem.as_bytes(), 0o644)
    }

    /// Loads a persisted identity; `Ok(None)` if there is none. It is
    /// verified exactly like a received one, except that a lapsed
    /// certificate is still returned (the caller reports the lapse).
    pub fn load(dir: &Path, expected: &SpiffeId, now: i64) -> Result<Option<Self>, Error> {
        let path = dir.join(IDENTITY);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut key = None;
        let mut certs = Vec::new();
        for item in rustls_pemfile::read_all(&mut bytes.as_slice()) {
            match item.map_err(|e| Error::Untrusted(format!("{}: {e}", path.display())))? {
                rustls_pemfile::Item::Pkcs8Key(k) if key.is_none() => {
                    key = Some(pem("PRIVATE KEY", k.secret_pkcs8_der()));
                }
                rustls_pemfile::Item::X509Certificate(c) => certs.push(c.to_vec()),
                _ => {
                    return Err(Error::Untrusted(format!(
                        "{}: unexpected PEM block",
                        path.display()
                    )));
                }
            }
        }
        let key =
            key.ok_or_else(|| Error::Untrusted(format!("{}: no private key", path.display())))?;
        if certs.len() < 2 {
            return Err(Error::Untrusted(format!(
                "{}: needs a certificate and a bundle",
                path.display()
            )));
        }
        let leaf = certs.remove(0);
        Self::verify(leaf, key, &certs, expected, now, false).map(Some)
    }
}

/// Creates a private directory (0700), tightening an existing one.
pub fn private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
}

/// A throwaway CA and an identity it certifies for `id`, valid from a
/// minute before `now` for `ttl_secs`: for tests and benchmarks that run
/// the gateway without a control plane. The sidecar never uses it.
#[doc(hidden)]
pub fn self_issued(id: &SpiffeId, now: i64, ttl_secs: i64) -> Result<Identity, Error> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, SanType};
    let at = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .map_err(|e| Error::Untrusted(format!("time {t}: {e}")))
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.not_before = at(now - 60)?;
    ca.not_after = at(now + ttl_secs)?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(Vec::<String>::new())?;
    leaf.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
    leaf.not_before = at(now - 60)?;
    leaf.not_after = at(now + ttl_secs)?;
    let cert = leaf.signed_by(&key, &issuer)?;
    Identity::verify(
        cert.der().to_vec(),
        key.serialize_pem(),
        &[ca_cert.der().to_vec()],
        id,
        now,
        true,
    )
}
