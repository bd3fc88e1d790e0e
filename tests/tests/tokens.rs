//! Local token verification at the sidecar: bad signature, expiry, wrong
//! audience, key binding to another certificate, key rotation, JWKS.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

use tonic::Code;
use warden_shared::proto::v1 as pb;
use warden_shared::token::{Claims, JwkSet};
use warden_tests::*;

fn claims_of(token: &str) -> Claims {
    serde_json::from_value(jwt_payload(token)).unwrap()
}

#[tokio::test]
async fn tampered_token_fails_signature_check() {
    let mesh = Mesh::start().await.unwrap();
    let sc = mesh.agent("a1", &["data:*"], 4).await.unwrap();
    let s = session(&sc).await;
    let mut c = claims_of(&s.token);
    c.scope = "data:* admin:*".into();
    use base64::Engine;
    let parts: Vec<&str> = s.token.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap()),
        parts[2]
    );
    assert_refused(
        who(&sc, forged).await,
        Code::Unauthenticated,
        "TOKEN_BAD_SIGNATURE",
    );
    assert_refused(
        who(&sc, "not-a-jwt").await,
        Code::Unauthenticated,
        "TOKEN_MALFORMED",
    );
    let mut none = agent_tcp(&sc, AgentAuth::default()).await.unwrap();
    assert_refused(
        none.who_am_i(pb::WhoAmIRequest {}).await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    who(&sc, s.token)
        .await
        .expect("the genuine token still works");
}

#[tokio::test]
async fn expired_token_is_refused() {
    let mesh = Mesh::start().await.unwrap();
    let sc = mesh.agent("a1", &["data:*"], 4).await.unwrap();
    let s = session(&sc).await;
    // Same claims, re-signed by the real signing key, but already expired.
    let mut c = claims_of(&s.token);
    c.iat -= 1000;
    c.exp = warden_control_plane::now_unix() - 1;
    let expired = mesh.cp.state.keys.current().active.sign(&c).unwrap();
    assert_refused(
        who(&sc, expired).await,
        Code::Unauthenticated,
        "TOKEN_EXPIRED",
    );
}

#[tokio::test]
async fn token_of_another_agent_is_refused_at_this_sidecar() {
    let mesh = Mesh::start().await.unwrap();
    let a = mesh.agent("a1", &["data:*"], 4).await.unwrap();
    let b = mesh.agent("b1", &["data:*"], 4).await.unwrap();
    let sb = session(&b).await;
    assert_refused(
        who(&a, sb.token.clone()).await,
        Code::Unauthenticated,
        "TOKEN_WRONG_AUDIENCE",
    );
    // Even re-addressed to a1 (and validly signed), it is bound to b1's certificate.
    let mut c = claims_of(&sb.token);
    c.aud = format!("spiffe://{TD}/agent/a1");
    let rebound = mesh.cp.state.keys.current().active.sign(&c).unwrap();
    assert_refused(
        who(&a, rebound).await,
        Code::Unauthenticated,
        "TOKEN_KEY_BINDING_MISMATCH",
    );
    who(&b, sb.token).await.unwrap();
}

#[tokio::test]
async fn signing_key_rotation_is_picked_up_and_old_tokens_stay_valid() {
    let mesh = Mesh::start().await.unwrap();
    let sc = mesh.agent("a1", &["data:*"], 4).await.unwrap();
    let old = session(&sc).await;
    let old_kid = mesh.cp.state.keys.current().active.kid().to_owned();
    let r = mesh
        .admin()
        .await
        .unwrap()
        .rotate_signing_key(pb::RotateSigningKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_ne!(r.kid, old_kid);
    assert_eq!(r.published_kids, [r.kid.clone(), old_kid.clone()]);

    let (code, body) = http_get(mesh.cp.jwks_addr, "/.well-known/jwks.json")
        .await
        .unwrap();
    assert_eq!(code, 200);
    let set: JwkSet = serde_json::from_str(&body).unwrap();
    assert_eq!(
        set.keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
        [r.kid.as_str(), old_kid.as_str()]
    );

    let new = session(&sc).await;
    who(&sc, new.token)
        .await
        .expect("the sidecar fetches the new key on an unknown kid");
    who(&sc, old.token)
        .await
        .expect("tokens signed by the retired key stay valid");
}
