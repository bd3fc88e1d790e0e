//! Static stability: a sidecar keeps enforcing its last acknowledged state
//! while the control plane is away — across its own restart, from a
//! persisted and integrity-checked snapshot — and fails closed once that
//! state is older than `max_policy_age` when one is set.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

use std::time::Duration;

use tonic::Code;
use warden_shared::proto::v1 as pb;
use warden_tests::*;

#[tokio::test]
async fn a_restart_during_an_outage_enforces_the_persisted_snapshot() {
    let mesh = Mesh::start().await.unwrap();
    mesh.register("a1", &["data:read"], 4).await.unwrap();
    let config = mesh.sidecar_config("a1", Some(mesh.join_token("a1").await.unwrap()));
    let sc = warden_sidecar::app::start(config.clone()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            sc.auth.state().held_version() > 0
        })
        .await
    );
    let keep = session(&sc).await;
    let revoked = session(&sc).await;
    let mut admin = mesh.admin().await.unwrap();
    admin
        .revoke_session(pb::RevokeSessionRequest {
            session_id: revoked.session_id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            who(&sc, &revoked.token).await.is_err()
        })
        .await
    );
    let held = sc.auth.state().held_version();
    sc.shutdown().await.unwrap();

    // The control plane goes away; the sidecar restarts from its data dir.
    let Mesh { dir, cp, ctl } = mesh;
    cp.shutdown().await.unwrap();
    let mut again = config.clone();
    again.join_token = None;
    let sc = warden_sidecar::app::start(again.clone()).await.unwrap();
    assert_eq!(
        sc.auth.state().held_version(),
        held,
        "the snapshot was not loaded"
    );
    who(&sc, &keep.token)
        .await
        .expect("the held policy is enforced, and allows this session");
    assert_refused(
        who(&sc, &revoked.token).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
    let (code, body) = http_get(sc.health_addr, "/readyz").await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("control plane is unreachable"), "{body}");
    sc.shutdown().await.unwrap();

    // A tampered snapshot is refused: nothing is served on it.
    let path = again.data_dir.join("mesh-snapshot.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let sc = warden_sidecar::app::start(again).await.unwrap();
    assert_eq!(sc.auth.state().held_version(), 0);
    assert_refused(
        who(&sc, &keep.token).await,
        Code::FailedPrecondition,
        "POLICY_NOT_LOADED",
    );
    let (code, _) = http_get(sc.health_addr, "/readyz").await.unwrap();
    assert_eq!(code, 503);
    drop((dir, ctl));
}

#[tokio::test]
async fn max_policy_age_fails_closed_once_out_of_contact_too_long() {
    let mesh = Mesh::start().await.unwrap();
    mesh.register("a1", &["data:read"], 4).await.unwrap();
    let mut config = mesh.sidecar_config("a1", Some(mesh.join_token("a1").await.unwrap()));
    config.max_policy_age_secs = Some(1);
    let sc = warden_sidecar::app::start(config).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            sc.auth.state().held_version() > 0
        })
        .await
    );
    let s = session(&sc).await;
    who(&sc, &s.token).await.unwrap();

    let Mesh { dir, cp, ctl } = mesh;
    cp.shutdown().await.unwrap();
    let stale = eventually(Duration::from_secs(10), || async {
        who(&sc, &s.token)
            .await
            .is_err_and(|e| reason(&e) == "POLICY_STALE")
    })
    .await;
    assert!(
        stale,
        "the sidecar kept serving on a policy older than max_policy_age"
    );
    let (code, body) = http_get(sc.health_addr, "/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("max_policy_age"), "{body}");
    // The lost stream is counted by reason.
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let endings = v["policy"]["stream_endings"].as_object().unwrap();
    assert!(
        endings.values().map(|n| n.as_u64().unwrap()).sum::<u64>() >= 1,
        "{body}"
    );
    drop((dir, ctl));
}

#[tokio::test]
async fn a_sessions_tool_call_cap_survives_a_restart_of_its_sidecar() {
    let mesh = Mesh::start().await.unwrap();
    mesh.register("a1", &["data:read"], 4).await.unwrap();
    let config = mesh.sidecar_config("a1", Some(mesh.join_token("a1").await.unwrap()));
    let sc = start_sidecar(config.clone()).await.unwrap();
    let mut c = agent_tcp(&sc, AgentAuth::default()).await.unwrap();
    let s = c
        .start_session(pb::StartSessionRequest {
            scopes: vec!["data:read".into()],
            max_tool_calls: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let reason = |r: pb::AuthorizeResponse| r.denial.map(|d| d.reason).unwrap_or_default();
    let mut a = with_token(&sc, &s.token).await.unwrap();
    for _ in 0..2 {
        let r = a
            .authorize(warden_tests::gateway::authorize("search", "{}"))
            .await
            .unwrap()
            .into_inner();
        assert_ne!(reason(r), "TOOL_CALL_LIMIT");
    }
    sc.shutdown().await.unwrap();

    let mut again = config;
    again.join_token = None;
    let sc = start_sidecar(again).await.unwrap();
    let mut a = with_token(&sc, &s.token).await.unwrap();
    let r = a
        .authorize(warden_tests::gateway::authorize("search", "{}"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reason(r), "TOOL_CALL_LIMIT");
    drop(mesh);
}
