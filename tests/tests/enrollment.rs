//! Enrollment refusals: each asserts the exact code and reason, and that
//! nothing changed (the join token is still usable where it should be).

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

use std::time::Duration;

use tonic::Code;
use warden_control_plane::agents::join_token_hash;
use warden_control_plane::identity::ca::Ca;
use warden_shared::agent::AgentId;
use warden_shared::proto::v1 as pb;
use warden_shared::spiffe::{SpiffeId, TrustDomain};
use warden_sidecar::identity::enroll::key_and_csr;
use warden_tests::*;

fn spiffe(agent: &str) -> SpiffeId {
    TrustDomain::new(TD)
        .unwrap()
        .agent(&AgentId::new(agent).unwrap())
}

fn enroll_req(agent: &str, token: &str, csr_der: Vec<u8>) -> pb::EnrollRequest {
    pb::EnrollRequest {
        agent_id: agent.into(),
        join_token: token.into(),
        csr_der,
    }
}

#[tokio::test]
async fn join_token_is_single_use() {
    let mesh = Mesh::start().await.unwrap();
    mesh.register("a1", &["data:read"], 2).await.unwrap();
    let token = mesh.join_token("a1").await.unwrap();
    let mut c = mesh.anonymous_identity().await.unwrap();
    let (_, csr) = key_and_csr(&spiffe("a1")).unwrap();
    let ok = c
        .enroll(enroll_req("a1", &token, csr.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.certificate.unwrap().spiffe_id, spiffe("a1").to_string());
    assert_refused(
        c.enroll(enroll_req("a1", &token, csr)).await,
        Code::Unauthenticated,
        "JOIN_TOKEN_USED",
    );
}

#[tokio::test]
async fn expired_join_token_is_refused() {
    let mesh = Mesh::start().await.unwrap();
    mesh.register("a1", &["data:read"], 2).await.unwrap();
    let now = warden_control_plane::now_unix();
    let token = "wjt_expired_for_test";
    let a1 = AgentId::new("a1").unwrap();
    mesh.cp
        .state
        .store
        .insert_join_token(&join_token_hash(token), &a1, "root", now - 700, now - 100)
        .await
        .unwrap();
    let mut c = mesh.anonymous_identity().await.unwrap();
    let (_, csr) = key_and_csr(&spiffe("a1")).unwrap();
    assert_refused(
        c.enroll(enroll_req("a1", token, csr)).await,
        Code::Unauthenticated,
        "JOIN_TOKEN_EXPIRED",
    );
}

#[tokio::test]
async fn join_token_of_another_agent_is_refused_and_stays_usable() {
    let mesh = Mesh::start().await.unwrap();
    mesh.register("a1", &["data:read"], 2).await.unwrap();
    mesh.register("a2", &["data:read"], 2).await.unwrap();
    let token = mesh.join_token("a1").await.unwrap();
    let mut c = mesh.anonymous_identity().await.unwrap();
    let (_, csr2) = key_and_csr(&spiffe("a2")).unwrap();
    assert_refused(
        c.enroll(enroll_req("a2", &token, csr2)).await,
        Code::PermissionDenied,
        "JOIN_TOKEN_WRONG_AGENT",
    );
    let (_, csr1) = key_and_csr(&spiffe("a1")).unwrap();
    c.enroll(enroll_req("a1", &token, csr1))
        .await
        .expect("token must still work for its own agent");
}

#[tokio::test]
async fn unknown_join_token_and_unknown_agent_are_refused_alike() {
    let mesh = Mesh::start().await.unwrap();
    mesh.register("a1", &["data:read"], 2).await.unwrap();
    let mut c = mesh.anonymous_identity().await.unwrap();
    let (_, csr) = key_and_csr(&spiffe("a1")).unwrap();
    assert_refused(
        c.enroll(enroll_req("a1", "wjt_nope", csr.clone())).await,
        Code::Unauthenticated,
        "JOIN_TOKEN_UNKNOWN",
    );
    let (_, csr) = key_and_csr(&spiffe("ghost")).unwrap();
    assert_refused(
        c.enroll(enroll_req("ghost", "wjt_nope", csr)).await,
        Code::Unauthenticated,
        "JOIN_TOKEN_UNKNOWN",
    );
}

#[tokio::test]
async fn malformed_csr_is_refused_and_token_survives() {
    let mesh = Mesh::start().await.unwrap();
    mesh.register("a1", &["data:read"], 2).await.unwrap();
    let token = mesh.join_token("a1").await.unwrap();
    let mut c = mesh.anonymous_identity().await.unwrap();
    assert_refused(
        c.enroll(enroll_req("a1", &token, b"garbage".to_vec()))
            .await,
        Code::InvalidArgument,
        "CSR_MALFORMED",
    );
    assert_refused(
        c.enroll(enroll_req("a1", &token, vec![])).await,
        Code::InvalidArgument,
        "CSR_MALFORMED",
    );
    let (_, csr) = key_and_csr(&spiffe("a1")).unwrap();
    c.enroll(enroll_req("a1", &token, csr))
        .await
        .expect("token must survive a malformed CSR");
}

#[tokio::test]
async fn csr_asking_for_another_identity_is_refused_and_token_survives() {
    let mesh = Mesh::start().await.unwrap();
    mesh.register("a1", &["data:read"], 2).await.unwrap();
    mesh.register("a2", &["data:read"], 2).await.unwrap();
    let token = mesh.join_token("a1").await.unwrap();
    let mut c = mesh.anonymous_identity().await.unwrap();
    let (_, csr) = key_and_csr(&spiffe("a2")).unwrap();
    let s = assert_refused(
        c.enroll(enroll_req("a1", &token, csr)).await,
        Code::PermissionDenied,
        "CSR_IDENTITY_MISMATCH",
    );
    assert!(s.message().contains("agent/a2"), "{}", s.message());
    let (_, csr) = key_and_csr(&spiffe("a1")).unwrap();
    c.enroll(enroll_req("a1", &token, csr)).await.unwrap();
}

#[tokio::test]
async fn client_certificate_from_a_foreign_ca_fails_the_handshake() {
    let mesh = Mesh::start().await.unwrap();
    mesh.register("a1", &["data:read"], 2).await.unwrap();
    let other = tempfile::tempdir().unwrap();
    let td = TrustDomain::new(TD).unwrap();
    let foreign = Ca::create(&td, other.path()).unwrap();
    let cred = foreign
        .issue(&spiffe("a1"), &[], &[], false, Duration::from_secs(600))
        .unwrap();
    let result = async {
        let ch = mesh
            .mtls_channel(&cred.cert_pem, &cred.key_pem)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut c =
            warden_shared::proto::v1::identity_service_client::IdentityServiceClient::new(ch);
        c.issue_token(pb::IssueTokenRequest {
            scopes: vec!["data:read".into()],
            ..Default::default()
        })
        .await
    }
    .await;
    let s = result.expect_err("a foreign client certificate must not get a token");
    // The TLS handshake itself is refused: no handler ever runs.
    assert!(
        matches!(s.code(), Code::Unknown | Code::Unavailable),
        "{s:?}"
    );
    assert!(
        format!("{s:?}").contains("fatal alert"),
        "expected a TLS alert: {s:?}"
    );
    let open = mesh
        .cp
        .state
        .store
        .open_sessions(
            &AgentId::new("a1").unwrap(),
            warden_control_plane::now_unix(),
        )
        .await
        .unwrap();
    assert_eq!(open, 0);
}

#[tokio::test]
async fn admin_api_refuses_agent_certificates_and_anonymous_callers() {
    let mesh = Mesh::start().await.unwrap();
    let sc = mesh.agent("a1", &["data:read"], 2).await.unwrap();
    let id = sc.identity.snapshot().current.clone().unwrap();
    let ch = mesh
        .mtls_channel(
            &id.cert_pem,
            &std::fs::read_to_string(sc.data_dir.join("identity/identity.pem")).unwrap(),
        )
        .await
        .unwrap();
    let mut admin = warden_shared::proto::v1::admin_service_client::AdminServiceClient::new(ch);
    let r = admin
        .suspend_agent(pb::SuspendAgentRequest {
            id: "a1".into(),
            reason: "self".into(),
        })
        .await;
    assert_refused(r, Code::PermissionDenied, "WRONG_PRINCIPAL");
    let ch = mesh.anonymous_identity().await.unwrap();
    drop(ch);
    let ca = std::fs::read_to_string(mesh.ca_path()).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca));
    let anon = tonic::transport::Endpoint::from_shared(mesh.url())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let r = warden_shared::proto::v1::admin_service_client::AdminServiceClient::new(anon)
        .list_agents(pb::ListAgentsRequest {})
        .await;
    assert_refused(r, Code::Unauthenticated, "NO_CLIENT_CERTIFICATE");
    // Nothing changed.
    let a = mesh
        .admin()
        .await
        .unwrap()
        .get_agent(pb::GetAgentRequest { id: "a1".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.agent.unwrap().status, pb::AgentStatus::Active as i32);
}

#[tokio::test]
async fn concurrent_enrollments_with_one_join_token_yield_one_certificate() {
    let mesh = Mesh::start().await.unwrap();
    mesh.register("a1", &["data:read"], 2).await.unwrap();
    let token = mesh.join_token("a1").await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut c = mesh.anonymous_identity().await.unwrap();
        let (_, csr) = key_and_csr(&spiffe("a1")).unwrap();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            c.enroll(enroll_req("a1", &token, csr)).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(s) => assert_eq!(reason(&s), "JOIN_TOKEN_USED", "{s:?}"),
        }
    }
    assert_eq!(ok, 1, "a single-use token enrolled {ok} times");
}
