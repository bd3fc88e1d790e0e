use super::*;

fn claims(now: i64) -> Claims {
    Claims {
        iss: "spiffe://t.test/control-plane".into(),
        sub: "spiffe://t.test/agent/a".into(),
        aud: "spiffe://t.test/agent/a".into(),
        exp: now + 900,
        iat: now,
        jti: "j1".into(),
        client_id: "spiffe://t.test/agent/a".into(),
        scope: "data:read mail:send".into(),
        sid: "s1".into(),
        cnf: Confirmation {
            x5t_s256: "thumb".into(),
        },
        constraints: Constraints { max_tool_calls: 5 },
        ctx: Default::default(),
        act: None,
        usr: None,
    }
}

fn expect(now: i64) -> Expect<'static> {
    Expect {
        issuer: "spiffe://t.test/control-plane",
        audience: "spiffe://t.test/agent/a",
        thumbprints: &["thumb"],
        now,
        leeway: 30,
    }
}

#[test]
fn round_trip_and_checks() {
    let (key, pkcs8) = SigningKey::generate().unwrap();
    let reloaded = SigningKey::from_pkcs8(&pkcs8).unwrap();
    assert_eq!(key.kid(), reloaded.kid());
    let v = Verifier::new(&JwkSet {
        keys: vec![key.jwk().clone()],
    })
    .unwrap();
    let c = claims(1000);
    let t = key.sign(&c).unwrap();
    let got = v.verify_signature(&t).unwrap();
    assert_eq!(got, c);
    assert_eq!(got.scopes().collect::<Vec<_>>(), ["data:read", "mail:send"]);
    assert_eq!(got.user_id(), None);
    check(&got, &expect(1000)).unwrap();
    assert_eq!(check(&got, &expect(1900)), Err(Error::Expired(1900)));
    assert_eq!(check(&got, &expect(900)), Err(Error::NotYetValid));
    let mut e = expect(1000);
    e.audience = "spiffe://t.test/agent/b";
    assert!(matches!(check(&got, &e), Err(Error::WrongAudience(_))));
    let mut e = expect(1000);
    e.thumbprints = &["other"];
    assert_eq!(check(&got, &e), Err(Error::KeyBinding));
    let mut e = expect(1000);
    e.issuer = "x";
    assert!(matches!(check(&got, &e), Err(Error::WrongIssuer(_))));
}

#[test]
fn refuses_tampering_and_foreign_keys() {
    let (key, _) = SigningKey::generate().unwrap();
    let (other, _) = SigningKey::generate().unwrap();
    let v = Verifier::new(&JwkSet {
        keys: vec![key.jwk().clone()],
    })
    .unwrap();
    let t = key.sign(&claims(1000)).unwrap();
    let parts: Vec<&str> = t.split('.').collect();
    let mut c = claims(1000);
    c.scope = "admin:*".into();
    let forged_payload = B64.encode(serde_json::to_vec(&c).unwrap());
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert_eq!(v.verify_signature(&forged), Err(Error::BadSignature));
    let foreign = other.sign(&claims(1000)).unwrap();
    assert!(matches!(
        v.verify_signature(&foreign),
        Err(Error::UnknownKey(_))
    ));
    assert!(matches!(
        v.verify_signature("a.b"),
        Err(Error::Malformed(_))
    ));
    assert!(matches!(
        v.verify_signature(&"a".repeat(MAX_TOKEN_LEN + 1)),
        Err(Error::Malformed(_))
    ));
    // alg=none style downgrade.
    let none = format!(
        "{}.{}.",
        B64.encode(format!(
            r#"{{"alg":"none","typ":"at+jwt","kid":"{}"}}"#,
            key.kid()
        )),
        parts[1]
    );
    assert_eq!(v.verify_signature(&none), Err(Error::Algorithm));
}

#[test]
fn kid_is_rfc7638_thumbprint_and_debug_is_redacted() {
    let (key, _) = SigningKey::generate().unwrap();
    let j = key.jwk();
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        j.x, j.y
    );
    let kid = B64.encode(ring::digest::digest(
        &ring::digest::SHA256,
        canonical.as_bytes(),
    ));
    assert_eq!(j.kid, kid);
    let dbg = format!("{key:?}");
    assert!(dbg.contains("[redacted]"));
}
