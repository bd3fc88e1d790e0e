//! Agent lifecycle: suspended, revoked and expired agents get nothing, on
//! every call (not once per connection); renewal; lapse and re-enrollment.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

use std::time::Duration;

use tonic::Code;
use warden_control_plane::agents::join_token_hash;
use warden_control_plane::store::Agent;
use warden_shared::agent::{AgentId, AgentStatus};
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::identity_service_client::IdentityServiceClient;
use warden_shared::spiffe::TrustDomain;
use warden_sidecar::identity::Error as IdError;
use warden_sidecar::identity::enroll::key_and_csr;
use warden_tests::*;

fn session_req() -> pb::StartSessionRequest {
    pb::StartSessionRequest {
        scopes: vec!["data:read".into()],
        ..Default::default()
    }
}

fn refused_reason(e: IdError) -> (Code, String) {
    match e {
        IdError::Refused(s) => (s.code(), reason(&s)),
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test]
async fn suspended_agent_is_refused_everything_until_resumed() {
    let mesh = Mesh::start().await.unwrap();
    let sc = mesh.agent("a1", &["data:read"], 4).await.unwrap();
    let mut agent = agent_tcp(&sc, AgentAuth::default()).await.unwrap();
    // Establish the sidecar's mTLS connection before the suspension.
    agent.start_session(session_req()).await.unwrap();
    let spare_token = mesh.join_token("a1").await.unwrap();
    let mut admin = mesh.admin().await.unwrap();
    admin
        .suspend_agent(pb::SuspendAgentRequest {
            id: "a1".into(),
            reason: "investigation".into(),
        })
        .await
        .unwrap();

    assert_refused(
        agent.start_session(session_req()).await,
        Code::PermissionDenied,
        "AGENT_SUSPENDED",
    );
    assert_eq!(
        refused_reason(sc.identity.renew_once().await.unwrap_err()),
        (Code::PermissionDenied, "AGENT_SUSPENDED".into())
    );
    let mut anon = mesh.anonymous_identity().await.unwrap();
    let spiffe = TrustDomain::new(TD)
        .unwrap()
        .agent(&AgentId::new("a1").unwrap());
    let (_, csr) = key_and_csr(&spiffe).unwrap();
    let r = anon
        .enroll(pb::EnrollRequest {
            agent_id: "a1".into(),
            join_token: spare_token.clone(),
            csr_der: csr.clone(),
        })
        .await;
    assert_refused(r, Code::PermissionDenied, "AGENT_SUSPENDED");
    let r = admin
        .create_join_token(pb::CreateJoinTokenRequest {
            agent_id: "a1".into(),
            ttl_seconds: 0,
        })
        .await;
    assert_refused(r, Code::PermissionDenied, "AGENT_SUSPENDED");

    admin
        .resume_agent(pb::ResumeAgentRequest { id: "a1".into() })
        .await
        .unwrap();
    agent.start_session(session_req()).await.unwrap();
    // The refused enrollment did not spend the token.
    anon.enroll(pb::EnrollRequest {
        agent_id: "a1".into(),
        join_token: spare_token,
        csr_der: csr,
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn revoked_agent_is_refused_everything_for_good() {
    let mesh = Mesh::start().await.unwrap();
    let sc = mesh.agent("a1", &["data:read"], 4).await.unwrap();
    let mut agent = agent_tcp(&sc, AgentAuth::default()).await.unwrap();
    agent.start_session(session_req()).await.unwrap();
    let spare_token = mesh.join_token("a1").await.unwrap();
    let mut admin = mesh.admin().await.unwrap();
    let r = admin
        .revoke_agent(pb::RevokeAgentRequest {
            id: "a1".into(),
            reason: "compromised".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        r.into_inner().agent.unwrap().status,
        pb::AgentStatus::Revoked as i32
    );

    assert_refused(
        agent.start_session(session_req()).await,
        Code::PermissionDenied,
        "AGENT_REVOKED",
    );
    assert_eq!(
        refused_reason(sc.identity.renew_once().await.unwrap_err()),
        (Code::PermissionDenied, "AGENT_REVOKED".into())
    );
    let spiffe = TrustDomain::new(TD)
        .unwrap()
        .agent(&AgentId::new("a1").unwrap());
    let (_, csr) = key_and_csr(&spiffe).unwrap();
    let mut anon = mesh.anonymous_identity().await.unwrap();
    let r = anon
        .enroll(pb::EnrollRequest {
            agent_id: "a1".into(),
            join_token: spare_token,
            csr_der: csr,
        })
        .await;
    assert_refused(r, Code::PermissionDenied, "AGENT_REVOKED");
    let r = admin
        .resume_agent(pb::ResumeAgentRequest { id: "a1".into() })
        .await;
    assert_refused(r, Code::FailedPrecondition, "AGENT_STATE_FINAL");
    assert_refused(
        agent.start_session(session_req()).await,
        Code::PermissionDenied,
        "AGENT_REVOKED",
    );
}

#[tokio::test]
async fn expired_agent_cannot_enroll_renew_or_get_tokens() {
    let mesh = Mesh::start().await.unwrap();
    let now = warden_control_plane::now_unix();
    let id = AgentId::new("old").unwrap();
    // Registration refuses a past expiry, so write the record as it would
    // stand once its expiry has passed.
    mesh.cp
        .state
        .store
        .create_agent(&Agent {
            id: id.clone(),
            agent_type: "test".into(),
            version: String::new(),
            owner: "t".into(),
            environment: String::new(),
            created_at: now - 100,
            updated_at: now - 100,
            expires_at: Some(now - 1),
            max_sessions: 2,
            allowed_scopes: vec!["data:read".into()],
            allowed_tools: vec![],
            denied_tools: vec![],
            status: AgentStatus::Active,
            status_reason: String::new(),
        })
        .await
        .unwrap();
    mesh.cp
        .state
        .store
        .insert_join_token(&join_token_hash("wjt_old"), &id, "root", now, now + 600)
        .await
        .unwrap();
    let spiffe = TrustDomain::new(TD).unwrap().agent(&id);
    let (key_pem, csr) = key_and_csr(&spiffe).unwrap();
    let mut anon = mesh.anonymous_identity().await.unwrap();
    let r = anon
        .enroll(pb::EnrollRequest {
            agent_id: "old".into(),
            join_token: "wjt_old".into(),
            csr_der: csr.clone(),
        })
        .await;
    assert_refused(r, Code::PermissionDenied, "AGENT_EXPIRED");

    // A certificate it may still hold (signed by the real CA) buys nothing.
    let signed = mesh
        .cp
        .state
        .ca
        .sign_csr(&csr, &spiffe, Duration::from_secs(600))
        .unwrap();
    let cert_pem = pem_cert(&signed.der);
    let ch = mesh.mtls_channel(&cert_pem, &key_pem).await.unwrap();
    let mut c = IdentityServiceClient::new(ch);
    let r = c
        .issue_token(pb::IssueTokenRequest {
            scopes: vec!["data:read".into()],
            ..Default::default()
        })
        .await;
    assert_refused(r, Code::PermissionDenied, "AGENT_EXPIRED");
    let (_, csr2) = key_and_csr(&spiffe).unwrap();
    assert_refused(
        c.renew(pb::RenewRequest { csr_der: csr2 }).await,
        Code::PermissionDenied,
        "AGENT_EXPIRED",
    );
}

fn pem_cert(der: &[u8]) -> String {
    warden_shared::svid::pem("CERTIFICATE", der)
}

#[tokio::test]
async fn renewal_rotates_the_key_and_tokens_bound_to_the_previous_cert_still_verify() {
    let mesh = Mesh::start().await.unwrap();
    let sc = mesh.agent("a1", &["data:read"], 4).await.unwrap();
    let before = sc.identity.snapshot().current.clone().unwrap();
    let mut agent = agent_tcp(&sc, AgentAuth::default()).await.unwrap();
    let s = agent
        .start_session(session_req())
        .await
        .unwrap()
        .into_inner();

    sc.identity.renew_once().await.unwrap();
    let after = sc.identity.snapshot().current.clone().unwrap();
    assert_ne!(before.serial, after.serial);
    assert_ne!(before.thumbprint, after.thumbprint);
    assert_eq!(before.spiffe_id, after.spiffe_id);
    let on_disk = std::fs::read_to_string(sc.data_dir.join("identity/svid.crt")).unwrap();
    assert_eq!(on_disk, after.cert_pem);

    let mut with_old = agent_tcp(
        &sc,
        AgentAuth {
            token: Some(s.token),
            no_header: false,
        },
    )
    .await
    .unwrap();
    with_old
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect("token bound to the previous certificate");
    // New sessions use the new certificate (the mTLS channel was rebuilt).
    let s2 = agent
        .start_session(session_req())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        jwt_payload(&s2.token)["cnf"]["x5t#S256"],
        after.thumbprint.as_str()
    );
}

#[tokio::test]
async fn failed_renewal_keeps_serving_the_valid_certificate() {
    let mesh = Mesh::start().await.unwrap();
    let sc = mesh.agent("a1", &["data:read"], 4).await.unwrap();
    let mut agent = agent_tcp(&sc, AgentAuth::default()).await.unwrap();
    let s = agent
        .start_session(session_req())
        .await
        .unwrap()
        .into_inner();
    let before = sc.identity.snapshot().current.clone().unwrap();
    let Mesh { dir, cp, ctl } = mesh;
    cp.shutdown().await.unwrap();
    let e = sc.identity.renew_once().await.unwrap_err();
    assert!(matches!(e, IdError::Transport(_)), "{e}");
    assert_eq!(
        sc.identity.snapshot().current.unwrap().serial,
        before.serial
    );
    let (code, _) = http_get(sc.health_addr, "/readyz").await.unwrap();
    assert_eq!(code, 200);
    let mut c = agent_tcp(
        &sc,
        AgentAuth {
            token: Some(s.token),
            no_header: false,
        },
    )
    .await
    .unwrap();
    c.who_am_i(pb::WhoAmIRequest {})
        .await
        .expect("local verification needs no control plane");
    drop((dir, ctl));
}

#[tokio::test]
async fn lapsed_certificate_is_reported_and_a_new_join_token_recovers() {
    let mesh = Mesh::start().await.unwrap();
    mesh.register("a1", &["data:read"], 4).await.unwrap();
    let config = mesh.sidecar_config("a1", None);
    // Plant an identity whose certificate has already expired (real CA,
    // zero lifetime), as a sidecar that was down for too long would hold.
    let spiffe = TrustDomain::new(TD)
        .unwrap()
        .agent(&AgentId::new("a1").unwrap());
    let (key_pem, csr) = key_and_csr(&spiffe).unwrap();
    let signed = mesh
        .cp
        .state
        .ca
        .sign_csr(&csr, &spiffe, Duration::ZERO)
        .unwrap();
    let idir = config.data_dir.join("identity");
    std::fs::create_dir_all(&idir).unwrap();
    let bundle = std::fs::read_to_string(mesh.ca_path()).unwrap();
    std::fs::write(
        idir.join("identity.pem"),
        format!("{key_pem}{}{bundle}", pem_cert(&signed.der)),
    )
    .unwrap();

    let sc = warden_sidecar::app::start(config.clone()).await.unwrap();
    let (code, body) = http_get(sc.health_addr, "/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("lapsed"), "{body}");
    let mut agent = agent_tcp(&sc, AgentAuth::default()).await.unwrap();
    assert_refused(
        agent.start_session(session_req()).await,
        Code::FailedPrecondition,
        "NO_IDENTITY",
    );

    // Hand it a new join token through the data directory.
    let token = mesh.join_token("a1").await.unwrap();
    std::fs::write(config.data_dir.join("join-token"), token).unwrap();
    let ready = eventually(Duration::from_secs(10), || async {
        http_get(sc.health_addr, "/readyz")
            .await
            .is_ok_and(|r| r.0 == 200)
    })
    .await;
    assert!(ready, "sidecar did not re-enroll from the join-token file");
    assert!(
        !config.data_dir.join("join-token").exists(),
        "the spent token file is removed"
    );
    agent.start_session(session_req()).await.unwrap();
}

#[tokio::test]
async fn a_sidecar_started_before_the_control_plane_enrolls_once_it_is_up() {
    let mesh = Mesh::start().await.unwrap();
    mesh.register("early", &["data:read"], 4).await.unwrap();
    let token = mesh.join_token("early").await.unwrap();
    let config = mesh.sidecar_config("early", Some(token));
    let Mesh { dir, cp, ctl } = mesh;
    let (addr, jwks) = (cp.grpc_addr, cp.jwks_addr);
    cp.shutdown().await.unwrap();

    let sc = warden_sidecar::app::start(config).await.unwrap();
    assert!(sc.identity.snapshot().current.is_none());
    let (code, _) = http_get(sc.health_addr, "/readyz").await.unwrap();
    assert_eq!(code, 503);

    let mut cfg = warden_control_plane::config::Config::load(&dir.path().join("cp")).unwrap();
    cfg.durable_sync = false;
    cfg.listen = addr;
    cfg.jwks_listen = jwks;
    let _cp = warden_control_plane::app::start(cfg).await.unwrap();
    let ready = eventually(Duration::from_secs(15), || async {
        http_get(sc.health_addr, "/readyz")
            .await
            .is_ok_and(|r| r.0 == 200)
    })
    .await;
    assert!(ready, "the sidecar did not retry its join token");
    let mut agent = agent_tcp(&sc, AgentAuth::default()).await.unwrap();
    agent.start_session(session_req()).await.unwrap();
    drop(ctl);
}

#[tokio::test]
async fn a_token_never_outlives_the_certificate_it_is_bound_to() {
    let mesh = Mesh::start_with(|c| {
        c.durable_sync = false;
        c.cert_ttl_secs = 120;
    })
    .await
    .unwrap();
    let sc = mesh.agent("short", &["data:read"], 4).await.unwrap();
    let mut agent = agent_tcp(&sc, AgentAuth::default()).await.unwrap();
    let s = agent
        .start_session(session_req())
        .await
        .unwrap()
        .into_inner();
    let cert_not_after = sc.identity.snapshot().current.unwrap().not_after;
    assert_eq!(s.expires_at.unwrap().seconds, cert_not_after);
    assert_eq!(
        jwt_payload(&s.token)["exp"].as_i64().unwrap(),
        cert_not_after
    );
}

#[tokio::test]
async fn an_expiring_identity_caps_its_credentials_and_its_sidecar_refuses_at_that_instant() {
    let mesh = Mesh::start().await.unwrap();
    let expires = warden_control_plane::now_unix() + 4;
    mesh.register_expiring("brief", expires).await.unwrap();
    let sc = mesh.enrolled_sidecar("brief").await.unwrap();
    // Neither credential outlives the identity.
    let cert = sc.identity.snapshot().current.clone().unwrap();
    assert!(cert.not_after <= expires, "{} > {expires}", cert.not_after);
    let s = session(&sc).await;
    assert!(s.expires_at.unwrap().seconds <= expires);
    assert!(jwt_payload(&s.token)["exp"].as_i64().unwrap() <= expires);
    who(&sc, &s.token).await.unwrap();

    // With the control plane gone, the sidecar refuses on its own, from the
    // pushed instant on, with the identity's own reason.
    let Mesh { dir, cp, ctl } = mesh;
    cp.shutdown().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let e = loop {
        match who(&sc, &s.token).await {
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the sidecar kept accepting an expired identity"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => break e,
        }
    };
    let at = warden_control_plane::now_unix();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::PermissionDenied, "AGENT_EXPIRED"),
        "{}",
        e.message()
    );
    assert!(
        (expires..=expires + 1).contains(&at),
        "refused at {at}, expiry {expires}"
    );
    let mut c = agent_tcp(&sc, AgentAuth::default()).await.unwrap();
    assert_refused(
        c.start_session(session_req()).await,
        Code::PermissionDenied,
        "AGENT_EXPIRED",
    );
    drop((dir, ctl));
}
