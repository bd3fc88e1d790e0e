//! Refusals that tonic would write itself, before any handler runs — a
//! request over the size bound, a string field that is not UTF-8 — carry a
//! code and a reason on the agent API, the identity API and the admin API,
//! change nothing, and leave the server serving.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

use tonic::Code;
use warden_tests::rawgrpc::{unary, with_field};
use warden_tests::*;

/// Invalid UTF-8 (a lone continuation byte and an overlong encoding).
const NOT_UTF8: &[u8] = b"a\x80b\xc0\xaf";

#[tokio::test]
async fn the_agent_api_refuses_oversized_and_undecodable_requests_with_reasons() {
    let mesh = Mesh::start().await.unwrap();
    let sc = mesh.agent("a1", &["data:read"], 4).await.unwrap();
    let addr = sc.agent_addr.unwrap();
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let big = with_field(2, &vec![b'x'; warden_sidecar::app::MAX_MESSAGE_BYTES + 1]);
    let s = assert_refused(
        unary(ch.clone(), "/warden.v1.AgentService/CallTool", big, true).await,
        Code::ResourceExhausted,
        "REQUEST_TOO_LARGE",
    );
    assert!(s.message().contains("limit"), "{}", s.message());
    let s = assert_refused(
        unary(
            ch.clone(),
            "/warden.v1.AgentService/StartSession",
            with_field(1, NOT_UTF8),
            true,
        )
        .await,
        Code::InvalidArgument,
        "REQUEST_MALFORMED",
    );
    assert!(!s.message().contains("a\u{fffd}b"), "{}", s.message());
    // The messaging service on the same port, too.
    assert_refused(
        unary(
            ch.clone(),
            "/warden.v1.MessagingService/SignMessage",
            with_field(1, NOT_UTF8),
            true,
        )
        .await,
        Code::InvalidArgument,
        "REQUEST_MALFORMED",
    );
    // Still serving, and no session was opened by the refused request.
    let s = session(&sc).await;
    who(&sc, &s.token).await.unwrap();
}

#[tokio::test]
async fn the_identity_and_admin_apis_refuse_them_with_reasons_and_change_nothing() {
    let mesh = Mesh::start().await.unwrap();
    let anon = mesh.anonymous_channel().await.unwrap();
    assert_refused(
        unary(
            anon.clone(),
            "/warden.v1.IdentityService/Enroll",
            with_field(1, NOT_UTF8),
            false,
        )
        .await,
        Code::InvalidArgument,
        "REQUEST_MALFORMED",
    );
    let big = with_field(
        2,
        &vec![b'x'; warden_control_plane::app::MAX_MESSAGE_BYTES + 1],
    );
    assert_refused(
        unary(
            anon,
            "/warden.v1.IdentityService/Enroll",
            big.clone(),
            false,
        )
        .await,
        Code::ResourceExhausted,
        "REQUEST_TOO_LARGE",
    );

    let admin = warden_control_plane::ctl::endpoint(&mesh.ctl)
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_refused(
        unary(
            admin.clone(),
            "/warden.v1.AdminService/RegisterAgent",
            with_field(1, NOT_UTF8),
            false,
        )
        .await,
        Code::InvalidArgument,
        "REQUEST_MALFORMED",
    );
    assert_refused(
        unary(admin, "/warden.v1.AdminService/RegisterAgent", big, false).await,
        Code::ResourceExhausted,
        "REQUEST_TOO_LARGE",
    );
    // Nothing was registered, and the admin API still serves.
    let agents = mesh
        .admin()
        .await
        .unwrap()
        .list_agents(warden_shared::proto::v1::ListAgentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(agents.agents.is_empty(), "{agents:?}");
}
