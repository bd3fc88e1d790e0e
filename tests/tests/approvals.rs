//! Deciding approval requests through the admin API: requests filed in the
//! control plane's own store (as a sidecar will file them), then listed,
//! shown, approved and denied over mTLS by an admin — one person counting
//! once — and refused to an agent certificate. Bad input changes nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails on any unexpected error"
)]

use tonic::Code;
use warden_control_plane::store::{NewApproval, SqliteStore, Store};
use warden_shared::agent::AgentId;
use warden_shared::proto::v1 as pb;
use warden_tests::{Mesh, assert_refused};

fn request(id: &str, binding: &str, quorum: u32) -> NewApproval {
    let now = warden_control_plane::now_unix();
    NewApproval {
        id: id.into(),
        binding: binding.into(),
        agent_id: AgentId::new("a1").unwrap(),
        session_id: "ses_1".into(),
        user_id: String::new(),
        tool: "refund".into(),
        arguments: r#"{"amount":500}"#.into(),
        reason: "the customer asked".into(),
        trace_id: "t-1".into(),
        because: "large-refund".into(),
        quorum,
        created_at: now,
        deadline: now + 300,
        by_user: false,
    }
}

fn decide(id: &str, approve: bool, comment: &str) -> pb::DecideApprovalRequest {
    pb::DecideApprovalRequest {
        id: id.into(),
        approve,
        comment: comment.into(),
    }
}

#[tokio::test]
async fn admins_list_show_approve_and_deny_and_one_person_counts_once() {
    let mesh = Mesh::start().await.unwrap();
    let store = SqliteStore::open(&mesh.dir.path().join("cp/warden.db"), false)
        .await
        .unwrap();
    let now = warden_control_plane::now_unix();
    store
        .request_approval(&request("apr_two", "b1", 2), now)
        .await
        .unwrap();
    store
        .request_approval(&request("apr_one", "b2", 1), now)
        .await
        .unwrap();
    store
        .request_approval(&request("apr_no", "b3", 1), now)
        .await
        .unwrap();
    let mut admin = mesh.admin().await.unwrap();

    let listed = admin
        .list_approvals(pb::ListApprovalsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<&str> = listed.approvals.iter().map(|a| a.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["apr_no", "apr_one", "apr_two"]);
    let shown = admin
        .get_approval(pb::GetApprovalRequest {
            id: "apr_two".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    assert_eq!(
        (
            shown.tool.as_str(),
            shown.quorum,
            shown.state.as_str(),
            shown.because.as_str()
        ),
        ("refund", 2, "pending", "large-refund")
    );

    // Bad input: a typed refusal, nothing changed.
    assert_refused(
        admin
            .get_approval(pb::GetApprovalRequest {
                id: "apr_none".into(),
            })
            .await,
        Code::NotFound,
        "APPROVAL_NOT_FOUND",
    );
    assert_refused(
        admin
            .get_approval(pb::GetApprovalRequest { id: String::new() })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_refused(
        admin.decide_approval(decide("apr_no", false, "")).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_refused(
        admin
            .list_approvals(pb::ListApprovalsRequest {
                state: "weird".into(),
                limit: 0,
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let still = store.get_approval("apr_no", now).await.unwrap().unwrap();
    assert!(still.decisions.is_empty());

    // A quorum of two: the same admin twice is still one approval.
    let a = admin
        .decide_approval(decide("apr_two", true, "looks right"))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    assert_eq!(a.state, "pending");
    assert_eq!(a.decisions.len(), 1);
    assert!(
        a.decisions[0].approver.contains("root"),
        "{:?}",
        a.decisions
    );
    assert_refused(
        admin.decide_approval(decide("apr_two", true, "")).await,
        Code::AlreadyExists,
        "APPROVAL_ALREADY_DECIDED",
    );
    // A quorum of one: approved, then no more decisions; used once.
    let a = admin
        .decide_approval(decide("apr_one", true, ""))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    assert_eq!(a.state, "approved");
    assert_refused(
        admin
            .decide_approval(decide("apr_one", false, "changed my mind"))
            .await,
        Code::FailedPrecondition,
        "APPROVAL_NOT_PENDING",
    );
    assert!(
        store
            .use_approval(&AgentId::new("a1").unwrap(), "b2", now + 1)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .use_approval(&AgentId::new("a1").unwrap(), "b2", now + 2)
            .await
            .unwrap()
            .is_none()
    );
    // A denial carries its reason.
    let a = admin
        .decide_approval(decide("apr_no", false, "refunds over 100 need a ticket"))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    assert_eq!(a.state, "denied");
    assert_eq!(a.decisions[0].comment, "refunds over 100 need a ticket");
    let denied = admin
        .list_approvals(pb::ListApprovalsRequest {
            state: "denied".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied.approvals.len(), 1);

    // An agent certificate can never decide.
    let sc = mesh.agent("a1", &["data:read"], 2).await.unwrap();
    let id = sc.identity.snapshot().current.clone().unwrap();
    let ch = mesh.mtls_channel(&id.cert_pem, id.key_pem()).await.unwrap();
    let mut as_agent = pb::admin_service_client::AdminServiceClient::new(ch);
    assert_refused(
        as_agent.decide_approval(decide("apr_two", true, "")).await,
        Code::PermissionDenied,
        "WRONG_PRINCIPAL",
    );
    assert_refused(
        as_agent
            .list_approvals(pb::ListApprovalsRequest::default())
            .await,
        Code::PermissionDenied,
        "WRONG_PRINCIPAL",
    );
    let two = store.get_approval("apr_two", now).await.unwrap().unwrap();
    assert_eq!(
        two.decisions.len(),
        1,
        "the agent's decision must not count"
    );
}
