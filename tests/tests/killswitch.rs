//! The kill switch: suspensions, revocations and session revocations reach
//! the agent's sidecar over its mesh stream and take effect there at once,
//! for tokens already issued too.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

use std::time::{Duration, Instant};

use tonic::Code;
use warden_shared::proto::v1 as pb;
use warden_tests::*;

/// Polls until the token is refused with `reason`; returns how long it took.
async fn refused_within(sc: &warden_sidecar::app::Running, token: &str, reason_: &str) -> Duration {
    let start = Instant::now();
    let ok = eventually(Duration::from_secs(10), || async {
        who(sc, token).await.is_err_and(|s| reason(&s) == reason_)
    })
    .await;
    assert!(ok, "the sidecar never refused the token with {reason_}");
    start.elapsed()
}

#[tokio::test]
async fn revoking_an_agent_refuses_its_live_tokens_at_the_sidecar() {
    let mesh = Mesh::start().await.unwrap();
    let sc = mesh.agent("a1", &["data:read"], 4).await.unwrap();
    let s = session(&sc).await;
    who(&sc, &s.token).await.unwrap();
    // Wait until the stream is up and has delivered its first push.
    assert!(
        eventually(Duration::from_secs(10), || async {
            sc.auth.state().held_version() > 0
        })
        .await
    );

    mesh.admin()
        .await
        .unwrap()
        .revoke_agent(pb::RevokeAgentRequest {
            id: "a1".into(),
            reason: "compromised".into(),
        })
        .await
        .unwrap();
    let took = refused_within(&sc, &s.token, "AGENT_REVOKED").await;
    assert!(took < Duration::from_secs(2), "propagation took {took:?}");
    let s = assert_refused(
        who(&sc, &s.token).await,
        Code::PermissionDenied,
        "AGENT_REVOKED",
    );
    assert!(s.message().contains("compromised"), "{}", s.message());
    let mut c = agent_tcp(&sc, AgentAuth::default()).await.unwrap();
    let r = c
        .start_session(pb::StartSessionRequest {
            scopes: vec!["data:read".into()],
            ..Default::default()
        })
        .await;
    assert_refused(r, Code::PermissionDenied, "AGENT_REVOKED");
}

#[tokio::test]
async fn suspension_refuses_live_tokens_until_resumed() {
    let mesh = Mesh::start().await.unwrap();
    let sc = mesh.agent("a1", &["data:read"], 4).await.unwrap();
    let s = session(&sc).await;
    let mut admin = mesh.admin().await.unwrap();
    admin
        .suspend_agent(pb::SuspendAgentRequest {
            id: "a1".into(),
            reason: "audit".into(),
        })
        .await
        .unwrap();
    refused_within(&sc, &s.token, "AGENT_SUSPENDED").await;
    admin
        .resume_agent(pb::ResumeAgentRequest { id: "a1".into() })
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            who(&sc, &s.token).await.is_ok()
        })
        .await
    );
}

#[tokio::test]
async fn revoking_a_session_refuses_that_token_only() {
    let mesh = Mesh::start().await.unwrap();
    let sc = mesh.agent("a1", &["data:read"], 4).await.unwrap();
    let victim = session(&sc).await;
    let other = session(&sc).await;
    let mut admin = mesh.admin().await.unwrap();
    let r = admin
        .revoke_session(pb::RevokeSessionRequest {
            session_id: victim.session_id.clone(),
            reason: "leaked".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.agent_id, "a1");
    refused_within(&sc, &victim.token, "SESSION_REVOKED").await;
    who(&sc, &other.token)
        .await
        .expect("the other session is untouched");
    let r = admin
        .revoke_session(pb::RevokeSessionRequest {
            session_id: "ses_nope".into(),
            reason: String::new(),
        })
        .await;
    assert_refused(r, Code::NotFound, "SESSION_NOT_FOUND");
}

#[tokio::test]
async fn a_revoked_agent_cannot_open_a_stream() {
    let mesh = Mesh::start().await.unwrap();
    let sc = mesh.agent("a1", &["data:read"], 4).await.unwrap();
    let id = sc.identity.snapshot().current.clone().unwrap();
    sc.shutdown().await.unwrap();
    mesh.admin()
        .await
        .unwrap()
        .revoke_agent(pb::RevokeAgentRequest {
            id: "a1".into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    let ch = mesh.mtls_channel(&id.cert_pem, id.key_pem()).await.unwrap();
    let mut c = warden_shared::proto::v1::mesh_service_client::MeshServiceClient::new(ch);
    let hello = pb::StreamRequest {
        kind: Some(pb::stream_request::Kind::Hello(pb::Hello::default())),
    };
    let r = c.stream(tokio_stream::iter([hello])).await;
    assert_refused(r.map(|_| ()), Code::PermissionDenied, "AGENT_REVOKED");
}

#[tokio::test]
async fn sidecars_list_shows_each_stream_and_what_it_acknowledged() {
    let mesh = Mesh::start().await.unwrap();
    let a = mesh.agent("a1", &["data:read"], 4).await.unwrap();
    let b = mesh.agent("b1", &["data:read"], 4).await.unwrap();
    let mut admin = mesh.admin().await.unwrap();
    let listed = |r: &pb::ListSidecarsResponse| {
        r.sidecars
            .iter()
            .map(|s| s.agent_id.clone())
            .collect::<Vec<_>>()
    };
    let both_acked = eventually(Duration::from_secs(10), || {
        let mut admin = admin.clone();
        async move {
            let r = admin
                .list_sidecars(pb::ListSidecarsRequest {})
                .await
                .unwrap()
                .into_inner();
            r.sidecars.len() == 2 && r.sidecars.iter().all(|s| s.acked_version > 0)
        }
    })
    .await;
    assert!(both_acked, "both sidecars should connect and acknowledge");
    let r = admin
        .list_sidecars(pb::ListSidecarsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed(&r), ["a1", "b1"]);
    let a1 = &r.sidecars[0];
    assert_eq!(a1.acked_version, a.auth.state().held_version());
    assert_eq!((a1.lag_seconds, a1.nack_reason.as_str()), (0, ""));
    assert!(a1.peer.starts_with("127.0.0.1:"), "{}", a1.peer);

    b.shutdown().await.unwrap();
    let gone = eventually(Duration::from_secs(10), || {
        let mut admin = admin.clone();
        async move {
            admin
                .list_sidecars(pb::ListSidecarsRequest {})
                .await
                .unwrap()
                .into_inner()
                .sidecars
                .len()
                == 1
        }
    })
    .await;
    assert!(gone, "a closed stream must leave the list");
    let r = admin
        .list_sidecars(pb::ListSidecarsRequest {})
        .await
        .unwrap()
        .into_inner();
    let ended: u64 = r.stream_endings.values().sum();
    assert!(
        ended >= 1,
        "stream endings are counted by reason: {:?}",
        r.stream_endings
    );
}
