//! Users' ID tokens (issue 17): signed by PyJWT with real RSA, EC and
//! Ed25519 keys, judged by Warden's verifier — each attack refused with
//! its own reason.

use serde_json::{Value, json};
use warden_shared::oidc::{Alg, Error, Expect, Jwks, verify};

const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "warden";

#[test]
fn user_tokens_from_a_third_party_signer_are_verified_and_attacks_refused() {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let out = warden_tests::python_stdin(
        "user_tokens.py",
        &json!({"issuer": ISSUER, "audience": AUDIENCE, "now": now}).to_string(),
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    let keys = Jwks::parse(v["jwks"].to_string().as_bytes()).unwrap();
    assert!(keys.has_kid("rsa-1") && keys.has_kid("ec-1") && keys.has_kid("ed-1"));
    let audiences = vec![AUDIENCE.to_owned()];
    let all = [Alg::Rs256, Alg::Ps256, Alg::Es256, Alg::EdDsa];
    let expect = Expect {
        issuer: ISSUER,
        audiences: &audiences,
        algorithms: &all,
        skew_secs: 60,
        now,
    };
    let token = |name: &str| v["tokens"][name].as_str().unwrap().to_owned();
    for (name, sub) in [
        ("rs256", "alice"),
        ("ps256", "alice"),
        ("es256", "bob"),
        ("eddsa", "alice"),
        ("aud_list", "alice"),
    ] {
        let u = verify(&token(name), &keys, &expect).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(u.subject, sub, "{name}");
        assert_eq!(u.qualified(), format!("{ISSUER}#{sub}"));
    }
    for (name, want) in [
        ("forged", Error::BadSignature),
        ("expired", Error::Expired),
        ("not_yet", Error::NotYetValid),
        ("wrong_aud", Error::WrongAudience("another-app".into())),
        (
            "wrong_iss",
            Error::WrongIssuer("https://evil.example".into()),
        ),
        ("alg_none", Error::Algorithm("none".into())),
        ("hs256_public_key", Error::Algorithm("HS256".into())),
        ("unknown_kid", Error::UnknownKey("rsa-2".into())),
        ("no_sub", Error::Subject),
        // An EC signature under the RSA key's id: that key cannot serve it.
        ("es256_with_rsa_kid", Error::UnknownKey("rsa-1".into())),
    ] {
        assert_eq!(verify(&token(name), &keys, &expect), Err(want), "{name}");
    }
    // Only the provider's algorithms: an RS256-only provider refuses ES256.
    let rs_only = Expect {
        algorithms: &[Alg::Rs256],
        ..expect.clone()
    };
    assert_eq!(
        verify(&token("es256"), &keys, &rs_only),
        Err(Error::Algorithm("ES256".into()))
    );
    // The skew is bounded: an hour-old expiry is not forgiven by asking.
    let lax = Expect {
        skew_secs: 86_400,
        ..expect.clone()
    };
    assert_eq!(verify(&token("expired"), &keys, &lax), Err(Error::Expired));
    // Malformed input gets a typed error, never a panic.
    for bad in ["", "a.b", "a.b.c.d", "!!!.e30.e30", &"x".repeat(20_000)] {
        assert!(
            matches!(verify(bad, &keys, &expect), Err(Error::Malformed(_))),
            "{bad:.20}"
        );
    }
}

#[test]
fn jwk_sets_that_cannot_be_used_are_refused() {
    for (set, says) in [
        (json!({"keys": []}), "no usable signing key"),
        (
            json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
            "no usable signing key",
        ),
        (
            json!({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}),
            "bits",
        ),
        (
            json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}]}),
            "wrong size",
        ),
        (json!({"nokeys": 1}), "not a JWK Set"),
    ] {
        let e = Jwks::parse(set.to_string().as_bytes()).unwrap_err();
        assert!(e.to_string().contains(says), "{set}: {e}");
    }
}
