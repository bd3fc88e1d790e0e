//! Calls that wait for people, end to end: a real control plane and
//! sidecar, the agent's gRPC calls held at stage 6 until an admin decides
//! over the admin API, the decision reaching the sidecar over its mesh
//! stream. Approved calls run once; denials carry the approver's reason;
//! deadlines refuse; an approval binds one call (arguments, session);
//! requests survive a control-plane restart and the async mode picks the
//! decision up; 50 calls pending at once are each released with their own
//! decision.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails on any unexpected error"
)]

use std::time::Duration;

use rand::seq::SliceRandom;
use tonic::Code;
use warden_shared::agent::AgentId;
use warden_shared::proto::v1 as pb;
use warden_shared::refusal::metadata_of;
use warden_tests::approvals::{ApprovalMesh, call, decide};
use warden_tests::{assert_refused, reason};

fn approval_id(s: &tonic::Status) -> String {
    metadata_of(s)
        .get("approval_id")
        .cloned()
        .unwrap_or_default()
}

fn state_of(m: &ApprovalMesh, id: &str) -> impl std::future::Future<Output = String> {
    let store = std::sync::Arc::clone(&m.mesh.cp.state.store);
    let id = id.to_owned();
    async move {
        store
            .get_approval(&id, warden_control_plane::now_unix())
            .await
            .unwrap()
            .unwrap()
            .state
            .as_str()
            .to_owned()
    }
}

#[tokio::test]
async fn an_approved_call_runs_once_and_binds_its_arguments_and_session() {
    let m = ApprovalMesh::start().await.unwrap();
    let (session, mut agent) = m.session().await.unwrap();
    let args = r#"{"order": "o-1", "amount": 500, "card": "4111111111111111"}"#;

    // The call waits for a person.
    let waiting = {
        let mut agent = agent.clone();
        tokio::spawn(async move { agent.call_tool(call("refund", args, false)).await })
    };
    let pending = m.pending(1).await.unwrap();
    let r = &pending[0];
    assert_eq!(
        (
            r.tool.as_str(),
            r.agent_id.as_str(),
            r.session_id.as_str(),
            r.quorum,
            r.because.as_str(),
            r.reason.as_str(),
            r.trace_id.as_str()
        ),
        (
            "refund",
            "a1",
            session.session_id.as_str(),
            1,
            "risk high",
            "the customer asked",
            "trace-approval"
        )
    );
    // Approvers see the arguments, with what the schema marks sensitive
    // redacted; the binding is the call's.
    let shown: serde_json::Value = serde_json::from_str(&r.arguments_json).unwrap();
    assert_eq!(
        shown,
        serde_json::json!({"order": "o-1", "amount": 500, "card": "[redacted]"})
    );
    let bound = warden_shared::policy::approval_binding(
        "refund",
        &serde_json::from_str(args).unwrap(),
        &session.session_id,
    )
    .unwrap();
    assert_eq!(r.binding, bound);
    assert!(
        !waiting.is_finished(),
        "the call must wait for the decision"
    );

    let mut admin = m.mesh.admin().await.unwrap();
    admin
        .decide_approval(decide(&r.id, true, "verified with the customer"))
        .await
        .unwrap();
    let ran = waiting.await.unwrap().unwrap().into_inner();
    let echoed: serde_json::Value = serde_json::from_slice(&ran.content).unwrap();
    assert_eq!(echoed["order"], "o-1");
    assert_eq!(state_of(&m, &r.id).await, "used");

    // The identical call again needs a new approval.
    let again = agent
        .call_tool(call("refund", args, true))
        .await
        .unwrap_err();
    assert_eq!(
        (again.code(), reason(&again).as_str()),
        (Code::FailedPrecondition, "APPROVAL_PENDING")
    );
    let second = approval_id(&again);
    assert!(second.starts_with("apr_") && second != r.id, "{second}");
    // Asking again without waiting finds the same request.
    let same = agent
        .call_tool(call("refund", args, true))
        .await
        .unwrap_err();
    assert_eq!(approval_id(&same), second);

    // Approved, it runs for exactly these arguments in this session: one
    // argument changed, or another session, is another call.
    admin
        .decide_approval(decide(&second, true, ""))
        .await
        .unwrap();
    let changed = r#"{"order": "o-1", "amount": 5000, "card": "4111111111111111"}"#;
    let other = agent
        .call_tool(call("refund", changed, true))
        .await
        .unwrap_err();
    assert_eq!(reason(&other), "APPROVAL_PENDING");
    assert_ne!(approval_id(&other), second);
    let (_, mut elsewhere) = m.session().await.unwrap();
    let other = elsewhere
        .call_tool(call("refund", args, true))
        .await
        .unwrap_err();
    assert_eq!(reason(&other), "APPROVAL_PENDING");
    assert_ne!(approval_id(&other), second);
    // The async mode: the same call made again runs, once.
    let ran = agent.call_tool(call("refund", args, true)).await.unwrap();
    assert!(!ran.into_inner().content.is_empty());
    assert_eq!(state_of(&m, &second).await, "used");
    let third = agent
        .call_tool(call("refund", args, true))
        .await
        .unwrap_err();
    assert_eq!(reason(&third), "APPROVAL_PENDING");

    // Calls that need no approval never file one.
    agent.call_tool(call("echo", "{}", false)).await.unwrap();
    let listed = m.pending(1).await.unwrap();
    assert!(listed.iter().all(|a| a.tool == "refund"), "{listed:?}");
}

#[tokio::test]
async fn a_denial_refuses_with_the_approvers_reason_and_stands() {
    let m = ApprovalMesh::start().await.unwrap();
    let (_, agent) = m.session().await.unwrap();
    let args = r#"{"order": "o-2", "amount": 90}"#;
    let waiting = {
        let mut agent = agent.clone();
        tokio::spawn(async move { agent.call_tool(call("refund", args, false)).await })
    };
    let id = m.pending(1).await.unwrap()[0].id.clone();
    let mut admin = m.mesh.admin().await.unwrap();
    admin
        .decide_approval(decide(&id, false, "refunds need a ticket number"))
        .await
        .unwrap();
    let s = waiting.await.unwrap().unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::PermissionDenied, "APPROVAL_DENIED")
    );
    assert!(
        s.message().contains("refunds need a ticket number"),
        "{}",
        s.message()
    );
    assert_eq!(approval_id(&s), id);
    assert_eq!(metadata_of(&s)["stage"], "approve");
    // Asked again at once, the call stays denied (no new request).
    let mut agent = agent;
    let s = agent
        .call_tool(call("refund", args, true))
        .await
        .unwrap_err();
    assert_eq!(
        (reason(&s).as_str(), approval_id(&s)),
        ("APPROVAL_DENIED", id)
    );
}

#[tokio::test]
async fn a_quorum_needs_distinct_people() {
    let m = ApprovalMesh::start().await.unwrap();
    let (_, agent) = m.session().await.unwrap();
    let waiting = {
        let mut agent = agent.clone();
        tokio::spawn(async move { agent.call_tool(call("wire", r#"{"to": "x"}"#, false)).await })
    };
    let r = m.pending(1).await.unwrap().remove(0);
    assert_eq!(r.quorum, 2);
    let mut alice = m.mesh.admin().await.unwrap();
    alice
        .decide_approval(decide(&r.id, true, ""))
        .await
        .unwrap();
    // The same person twice is still one approval: the call still waits.
    assert_refused(
        alice.decide_approval(decide(&r.id, true, "")).await,
        Code::AlreadyExists,
        "APPROVAL_ALREADY_DECIDED",
    );
    assert_eq!(state_of(&m, &r.id).await, "pending");
    assert!(!waiting.is_finished());
    let mut bob = m.other_admin("bob").await.unwrap();
    let a = bob
        .decide_approval(decide(&r.id, true, "second pair of eyes"))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    assert_eq!(a.state, "approved");
    assert_eq!(a.decisions.len(), 2);
    waiting.await.unwrap().unwrap();
    assert_eq!(state_of(&m, &r.id).await, "used");
}

#[tokio::test]
async fn nobody_deciding_refuses_at_the_deadline_and_an_abandoned_call_withdraws() {
    let m = ApprovalMesh::start().await.unwrap();
    let (_, mut agent) = m.session().await.unwrap();
    let started = tokio::time::Instant::now();
    let s = agent
        .call_tool(call("quick", r#"{"n": 1}"#, false))
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::DeadlineExceeded, "APPROVAL_TIMEOUT")
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(29) && waited < Duration::from_secs(40),
        "{waited:?}"
    );
    assert_eq!(state_of(&m, &approval_id(&s)).await, "expired");

    // An agent that stops waiting withdraws its request.
    let waiting = {
        let mut agent = agent.clone();
        tokio::spawn(async move {
            agent
                .call_tool(call("refund", r#"{"order": "o-9", "amount": 1}"#, false))
                .await
        })
    };
    let id = m.pending(1).await.unwrap()[0].id.clone();
    waiting.abort();
    let store = std::sync::Arc::clone(&m.mesh.cp.state.store);
    let withdrawn = warden_tests::eventually(Duration::from_secs(10), || {
        let (store, id) = (std::sync::Arc::clone(&store), id.clone());
        async move {
            store
                .get_approval(&id, warden_control_plane::now_unix())
                .await
                .unwrap()
                .is_some_and(|a| a.state.as_str() == "cancelled")
        }
    })
    .await;
    assert!(withdrawn, "the abandoned call's request was not withdrawn");
    let mut admin = m.mesh.admin().await.unwrap();
    assert_refused(
        admin.decide_approval(decide(&id, true, "")).await,
        Code::FailedPrecondition,
        "APPROVAL_NOT_PENDING",
    );
}

#[tokio::test]
async fn a_pending_request_survives_a_control_plane_restart() {
    let m = ApprovalMesh::start().await.unwrap();
    let (_, mut agent) = m.session().await.unwrap();
    let args = r#"{"order": "o-3", "amount": 700}"#;
    let s = agent
        .call_tool(call("refund", args, true))
        .await
        .unwrap_err();
    assert_eq!(reason(&s), "APPROVAL_PENDING");
    let id = approval_id(&s);
    let ApprovalMesh { mesh, sidecar } = m;
    let mesh = mesh.restart().await.unwrap();
    let m = ApprovalMesh { mesh, sidecar };
    let listed = m.pending(1).await.unwrap();
    assert_eq!(listed[0].id, id);
    let mut admin = m.mesh.admin().await.unwrap();
    admin.decide_approval(decide(&id, true, "")).await.unwrap();
    // The async mode picks the decision up (the sidecar may still be
    // reconnecting: the desk retries while the control plane is away).
    let ran = agent.call_tool(call("refund", args, true)).await.unwrap();
    let echoed: serde_json::Value = serde_json::from_slice(&ran.into_inner().content).unwrap();
    assert_eq!(echoed["amount"], 700);
}

#[tokio::test]
async fn fifty_pending_calls_are_each_released_with_their_own_decision() {
    let m = ApprovalMesh::start().await.unwrap();
    let (_, agent) = m.session().await.unwrap();
    let n = 50;
    let mut calls = Vec::new();
    for i in 0..n {
        let mut agent = agent.clone();
        calls.push(tokio::spawn(async move {
            let args = format!(r#"{{"order": "o-{i}", "amount": {i}}}"#);
            agent.call_tool(call("refund", &args, false)).await
        }));
    }
    let mut pending = m.pending(n).await.unwrap();
    assert_eq!(pending.len(), n);
    pending.shuffle(&mut rand::rng());
    let mut admin = m.mesh.admin().await.unwrap();
    let mut approved = std::collections::BTreeSet::new();
    for (k, r) in pending.iter().enumerate() {
        let args: serde_json::Value = serde_json::from_str(&r.arguments_json).unwrap();
        let amount = args["amount"].as_i64().unwrap();
        let approve = k % 3 != 0;
        if approve {
            approved.insert(amount);
        }
        admin
            .decide_approval(decide(&r.id, approve, &format!("decision for {amount}")))
            .await
            .unwrap();
    }
    for (i, c) in calls.into_iter().enumerate() {
        let i = i64::try_from(i).unwrap();
        match c.await.unwrap() {
            Ok(r) => {
                assert!(approved.contains(&i), "call {i} ran without approval");
                let echoed: serde_json::Value =
                    serde_json::from_slice(&r.into_inner().content).unwrap();
                assert_eq!(echoed["amount"], i);
            }
            Err(s) => {
                assert!(!approved.contains(&i), "approved call {i} refused: {s:?}");
                assert_eq!(reason(&s), "APPROVAL_DENIED");
                assert!(
                    s.message().contains(&format!("decision for {i}")),
                    "{}",
                    s.message()
                );
            }
        }
    }
}

#[tokio::test]
async fn the_desk_is_the_agents_own_and_refuses_bad_input() {
    let m = ApprovalMesh::start().await.unwrap();
    let (_, mut agent) = m.session().await.unwrap();
    let s = agent
        .call_tool(call("refund", r#"{"order": "o-4", "amount": 1}"#, true))
        .await
        .unwrap_err();
    let id = approval_id(&s);
    // Another agent's certificate can neither cancel nor spend a1's request.
    let b = m.mesh.agent("b1", &["payments:refund"], 2).await.unwrap();
    let snap = b.identity.snapshot().current.clone().unwrap();
    let ch = m
        .mesh
        .mtls_channel(&snap.cert_pem, snap.key_pem())
        .await
        .unwrap();
    let mut desk = pb::approval_service_client::ApprovalServiceClient::new(ch);
    let r = desk
        .cancel_approval(pb::CancelApprovalRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.cancelled);
    let pending = m.pending(1).await.unwrap();
    let binding = pending[0].binding.clone();
    let mut admin = m.mesh.admin().await.unwrap();
    admin.decide_approval(decide(&id, true, "")).await.unwrap();
    let used = desk
        .use_approval(pb::UseApprovalRequest {
            binding: binding.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!used.used, "another agent spent a1's approval");
    // Bad input: typed refusals, nothing filed.
    let good = pb::RequestApprovalRequest {
        binding: "ab".repeat(32),
        session_id: "ses_x".into(),
        tool: "refund".into(),
        arguments_json: "{}".into(),
        because: "risk high".into(),
        quorum: 1,
        deadline_seconds: 60,
        ..Default::default()
    };
    for bad in [
        pb::RequestApprovalRequest {
            binding: "nothex".into(),
            ..good.clone()
        },
        pb::RequestApprovalRequest {
            quorum: 0,
            ..good.clone()
        },
        pb::RequestApprovalRequest {
            quorum: 6,
            ..good.clone()
        },
        pb::RequestApprovalRequest {
            deadline_seconds: 5,
            ..good.clone()
        },
        pb::RequestApprovalRequest {
            arguments_json: "{not json".into(),
            ..good.clone()
        },
        pb::RequestApprovalRequest {
            tool: "bad tool name".into(),
            ..good.clone()
        },
        pb::RequestApprovalRequest {
            session_id: String::new(),
            ..good.clone()
        },
        pb::RequestApprovalRequest {
            reason: "line\nbreak".into(),
            ..good.clone()
        },
    ] {
        assert_refused(
            desk.request_approval(bad).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
    }
    assert_refused(
        desk.use_approval(pb::UseApprovalRequest {
            binding: "short".into(),
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let b1 = AgentId::new("b1").unwrap();
    let filed = m
        .mesh
        .cp
        .state
        .store
        .pending_approvals(&b1, warden_control_plane::now_unix())
        .await
        .unwrap();
    assert_eq!(filed, 0);
    // An admin certificate is not an agent: refused.
    let admin_ch = warden_control_plane::ctl::endpoint(&m.mesh.ctl)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut as_admin = pb::approval_service_client::ApprovalServiceClient::new(admin_ch);
    assert_refused(
        as_admin.request_approval(good).await,
        Code::PermissionDenied,
        "WRONG_PRINCIPAL",
    );
    // a1's own approval is still there to spend.
    agent
        .call_tool(call("refund", r#"{"order": "o-4", "amount": 1}"#, true))
        .await
        .unwrap();
}

#[tokio::test]
async fn privileged_scopes_join_a_session_only_once_a_person_approves() {
    use warden_tests::{AgentAuth, agent_tcp, jwt_payload};
    let m = ApprovalMesh::start().await.unwrap();
    let mut c = agent_tcp(&m.sidecar, AgentAuth::default()).await.unwrap();
    let start = |scopes: &[&str], wait: bool| pb::StartSessionRequest {
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        user_id: "u-1".into(),
        wait_for_approval: wait,
        ..Default::default()
    };
    let both = ["payments:refund", "payments:admin"];

    // Not waiting: the session starts at once with the rest.
    let s = c
        .start_session(start(&both, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.scopes, ["payments:refund"]);
    assert_eq!(jwt_payload(&s.token)["scope"], "payments:refund");
    let step = s.step_up.unwrap();
    assert_eq!(
        (step.withheld_scopes.clone(), step.state.as_str()),
        (vec!["payments:admin".to_owned()], "pending")
    );
    // The same queue, the same commands.
    let listed = m.pending(1).await.unwrap();
    let r = listed.iter().find(|a| a.id == step.approval_id).unwrap();
    assert_eq!(
        (r.tool.as_str(), r.because.as_str(), r.user_id.as_str()),
        ("step-up", "privileged scopes payments:admin", "u-1")
    );
    let mut admin = m.mesh.admin().await.unwrap();
    admin
        .decide_approval(decide(&step.approval_id, true, ""))
        .await
        .unwrap();
    // Approved: the next session for this user has them, once.
    let s = c
        .start_session(start(&both, false))
        .await
        .unwrap()
        .into_inner();
    assert!(s.step_up.is_none(), "{:?}", s.step_up);
    assert_eq!(
        jwt_payload(&s.token)["scope"],
        "payments:refund payments:admin"
    );
    let s = c
        .start_session(start(&both, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.scopes, ["payments:refund"]);
    let again = s.step_up.unwrap().approval_id;
    assert_ne!(again, step.approval_id);

    // Waiting: StartSession returns once a person decides, with them.
    let waiting = {
        let mut c = c.clone();
        tokio::spawn(async move { c.start_session(start(&both, true)).await })
    };
    admin
        .decide_approval(decide(&again, true, ""))
        .await
        .unwrap();
    let s = waiting.await.unwrap().unwrap().into_inner();
    assert!(s.step_up.is_none());
    assert_eq!(s.scopes, both);

    // Only privileged scopes, denied while the session waits (its request
    // is filed by the waiting call itself): refused with the reason.
    let waiting = {
        let mut c = c.clone();
        tokio::spawn(async move { c.start_session(start(&["payments:admin"], true)).await })
    };
    let id = loop {
        let p = m.pending(1).await.unwrap();
        if let Some(a) = p.iter().find(|a| a.tool == "step-up") {
            break a.id.clone();
        }
    };
    admin
        .decide_approval(decide(&id, false, "not during the freeze"))
        .await
        .unwrap();
    let s = waiting.await.unwrap().unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str(), approval_id(&s)),
        (Code::PermissionDenied, "APPROVAL_DENIED", id)
    );
    assert!(
        s.message().contains("not during the freeze"),
        "{}",
        s.message()
    );
}

#[tokio::test]
async fn the_users_application_confirms_a_call_through_the_agent_api() {
    let m = ApprovalMesh::start().await.unwrap();
    let (_, mut agent) = m.session().await.unwrap();
    // Asked not to wait: pending, for the user (not admins) to decide.
    let s = agent
        .call_tool(call("transfer", r#"{"order": "o-1"}"#, true))
        .await
        .unwrap_err();
    assert_eq!(reason(&s), "APPROVAL_PENDING");
    assert!(s.message().contains("ConfirmCall"), "{}", s.message());
    let first = approval_id(&s);
    let mut admin = m.mesh.admin().await.unwrap();
    assert_refused(
        admin.decide_approval(decide(&first, true, "")).await,
        Code::PermissionDenied,
        "WRONG_PRINCIPAL",
    );
    // Another session (another user's application) cannot confirm it.
    let (_, mut other) = m.session().await.unwrap();
    let confirm = |id: &str, allow: bool, comment: &str| pb::ConfirmCallRequest {
        approval_id: id.into(),
        allow,
        comment: comment.into(),
    };
    assert_refused(
        other.confirm_call(confirm(&first, true, "")).await,
        Code::NotFound,
        "APPROVAL_NOT_FOUND",
    );
    assert_refused(
        agent.confirm_call(confirm("", true, "")).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(state_of(&m, &first).await, "pending");
    // The user says yes: the same call made again runs, once.
    let r = agent
        .confirm_call(confirm(&first, true, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state, "approved");
    agent
        .call_tool(call("transfer", r#"{"order": "o-1"}"#, true))
        .await
        .unwrap();
    assert_eq!(state_of(&m, &first).await, "used");

    // A held call is released by the user's answer, here a no.
    let held = {
        let mut agent = agent.clone();
        tokio::spawn(async move {
            agent
                .call_tool(call("transfer", r#"{"order": "o-2"}"#, false))
                .await
        })
    };
    let id = loop {
        let p = m.pending(1).await.unwrap();
        if let Some(a) = p.iter().find(|a| a.arguments_json.contains("o-2")) {
            break a.id.clone();
        }
    };
    let r = agent
        .confirm_call(confirm(&id, false, "not this account"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state, "denied");
    let s = held.await.unwrap().unwrap_err();
    assert_eq!(reason(&s), "APPROVAL_DENIED");
    assert!(s.message().contains("not this account"), "{}", s.message());
    assert_refused(
        agent.confirm_call(confirm(&id, true, "")).await,
        Code::FailedPrecondition,
        "APPROVAL_NOT_PENDING",
    );
}

#[tokio::test]
async fn a_session_revoked_during_the_wait_stops_the_call_it_was_approved_for() {
    let m = ApprovalMesh::start().await.unwrap();
    let (session, agent) = m.session().await.unwrap();
    let held = {
        let mut agent = agent.clone();
        tokio::spawn(async move {
            agent
                .call_tool(call("refund", r#"{"order": "o-k", "amount": 1}"#, false))
                .await
        })
    };
    let id = m.pending(1).await.unwrap()[0].id.clone();
    let mut admin = m.mesh.admin().await.unwrap();
    admin
        .revoke_session(pb::RevokeSessionRequest {
            session_id: session.session_id.clone(),
            reason: "the kill switch".into(),
        })
        .await
        .unwrap();
    admin.decide_approval(decide(&id, true, "")).await.unwrap();
    let s = held.await.unwrap().unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::Unauthenticated, "SESSION_REVOKED"),
        "{s:?}"
    );
}
