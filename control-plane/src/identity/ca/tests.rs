use std::os::unix::fs::PermissionsExt;

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use warden_shared::agent::AgentId;
use warden_shared::svid;

use super::*;

fn csr(sans: Vec<String>) -> Vec<u8> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = sans
        .into_iter()
        .map(|s| SanType::URI(s.try_into().unwrap()))
        .collect();
    p.serialize_request(&key).unwrap().der().to_vec()
}

#[test]
fn creates_ca_with_private_key_0600_and_signs_svids() {
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("t.test").unwrap();
    let ca = Ca::create(&td, dir.path()).unwrap();
    let mode = fs::metadata(dir.path().join(CA_KEY))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        matches!(Ca::create(&td, dir.path()), Err(Error::BadCa(_))),
        "must not overwrite"
    );

    let id = td.agent(&AgentId::new("a1").unwrap());
    let signed = ca
        .sign_csr(&csr(vec![]), &id, Duration::from_secs(3600))
        .unwrap();
    assert_eq!(svid::spiffe_id_of(&signed.der).unwrap(), id);
    let signed = ca
        .sign_csr(&csr(vec![id.to_string()]), &id, Duration::from_secs(3600))
        .unwrap();
    let (_, cert) = X509Certificate::from_der(&signed.der).unwrap();
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(life, 3600 + 60);
    assert!(
        cert.verify_signature(Some(
            X509Certificate::from_der(ca.cert_der())
                .unwrap()
                .1
                .public_key()
        ))
        .is_ok()
    );

    // Reloads from disk.
    let again = Ca::load(&td, dir.path()).unwrap();
    assert_eq!(again.cert_der(), ca.cert_der());
}

#[test]
fn refuses_foreign_identity_and_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("t.test").unwrap();
    let ca = Ca::create(&td, dir.path()).unwrap();
    let id = td.agent(&AgentId::new("a1").unwrap());
    let other = csr(vec!["spiffe://t.test/agent/a2".into()]);
    assert!(matches!(
        ca.sign_csr(&other, &id, Duration::from_secs(60)),
        Err(Error::CsrIdentity { .. })
    ));
    assert!(matches!(
        ca.sign_csr(b"not a csr", &id, Duration::from_secs(60)),
        Err(Error::CsrMalformed(_))
    ));
    let mut tampered = csr(vec![]);
    let n = tampered.len();
    tampered[n - 5] ^= 0xff;
    assert!(matches!(
        ca.sign_csr(&tampered, &id, Duration::from_secs(60)),
        Err(Error::CsrMalformed(_))
    ));
}

#[test]
fn import_checks_key_matches() {
    let a = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("t.test").unwrap();
    let ca = Ca::create(&td, a.path()).unwrap();
    let key = fs::read_to_string(a.path().join(CA_KEY)).unwrap();
    let other_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem();
    let b = tempfile::tempdir().unwrap();
    assert!(matches!(
        Ca::import(&td, b.path(), ca.cert_pem(), &other_key),
        Err(Error::BadCa(_))
    ));
    assert!(
        !b.path().join(CA_KEY).exists(),
        "nothing written on refusal"
    );
    Ca::import(&td, b.path(), ca.cert_pem(), &key).unwrap();
}
