use super::*;

use crate::store::Grantee;
use crate::store::testing::{agent, session};

async fn store() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("w.db"), false)
        .await
        .unwrap();
    (s, dir)
}

#[tokio::test]
async fn agents_round_trip_and_conflict() {
    let (s, _d) = store().await;
    let a = agent("a1", 2);
    s.create_agent(&a).await.unwrap();
    assert!(matches!(s.create_agent(&a).await, Err(Error::Conflict)));
    assert_eq!(s.get_agent(&a.id).await.unwrap().unwrap(), a);
    let up = s
        .set_agent_status(&a.id, AgentStatus::Suspended, "why", 200)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(up.status, AgentStatus::Suspended);
    assert_eq!(up.updated_at, 200);
    let revoked = s
        .set_agent_status(&a.id, AgentStatus::Revoked, "gone", 300)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.status, AgentStatus::Revoked);
    // Revocation is final in the store itself, whatever the caller checked.
    for st in [AgentStatus::Active, AgentStatus::Suspended] {
        assert!(
            s.set_agent_status(&a.id, st, "", 400)
                .await
                .unwrap()
                .is_none()
        );
    }
    let still = s.get_agent(&a.id).await.unwrap().unwrap();
    assert_eq!(
        (still.status, still.updated_at),
        (AgentStatus::Revoked, 300)
    );
    assert!(
        s.set_agent_status(&AgentId::new("zz").unwrap(), AgentStatus::Active, "", 1)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(s.list_agents().await.unwrap().len(), 1);
}

#[tokio::test]
async fn join_tokens_are_single_use_and_bound() {
    let (s, _d) = store().await;
    s.create_agent(&agent("a1", 2)).await.unwrap();
    s.create_agent(&agent("a2", 2)).await.unwrap();
    let a1 = AgentId::new("a1").unwrap();
    let a2 = AgentId::new("a2").unwrap();
    s.insert_join_token(b"h1", &a1, "admin", 100, 200)
        .await
        .unwrap();
    assert_eq!(
        s.consume_join_token(b"h1", &a2, 150).await.unwrap(),
        JoinTokenUse::WrongAgent
    );
    assert_eq!(
        s.consume_join_token(b"h1", &a1, 150).await.unwrap(),
        JoinTokenUse::Consumed
    );
    assert_eq!(
        s.consume_join_token(b"h1", &a1, 151).await.unwrap(),
        JoinTokenUse::Used
    );
    s.insert_join_token(b"h2", &a1, "admin", 100, 200)
        .await
        .unwrap();
    assert_eq!(
        s.consume_join_token(b"h2", &a1, 200).await.unwrap(),
        JoinTokenUse::Expired
    );
    assert_eq!(
        s.consume_join_token(b"nope", &a1, 150).await.unwrap(),
        JoinTokenUse::Unknown
    );
}

#[tokio::test]
async fn session_cap_holds_under_concurrency() {
    let (s, _d) = store().await;
    s.create_agent(&agent("a1", 3)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.open_session(&session(&format!("s{i}"), "a1", 1000), 3, 150)
                .await
                .unwrap()
        }));
    }
    let mut opened = 0;
    for t in tasks {
        opened += usize::from(t.await.unwrap());
    }
    assert_eq!(opened, 3);
    let a1 = AgentId::new("a1").unwrap();
    assert_eq!(s.open_sessions(&a1, 150).await.unwrap(), 3);
    // Expired sessions do not count.
    assert_eq!(s.open_sessions(&a1, 1000).await.unwrap(), 0);
}

#[tokio::test]
async fn signing_key_rotation_retires_previous() {
    let (s, _d) = store().await;
    s.rotate_signing_key("k1", b"one", 100).await.unwrap();
    s.rotate_signing_key("k2", b"two", 200).await.unwrap();
    let keys = s.signing_keys().await.unwrap();
    assert_eq!(keys[0].kid, "k2");
    assert_eq!(keys[0].retired_at, None);
    assert_eq!(keys[1].retired_at, Some(200));
    assert!(format!("{:?}", keys[0]).contains("[redacted]"));
}

#[tokio::test]
async fn a_refused_write_does_not_affect_others_in_its_batch() {
    let (s, _d) = store().await;
    s.create_agent(&agent("a1", 2)).await.unwrap();
    // Interleave writes that violate the foreign key with valid ones, all at
    // once, so they share commit batches.
    let mut tasks = Vec::new();
    for i in 0..40u8 {
        let s = s.clone();
        let who = if i % 2 == 0 { "a1" } else { "ghost" };
        tasks.push(tokio::spawn(async move {
            let r = s
                .insert_join_token(&[i], &AgentId::new(who).unwrap(), "t", 100, 200)
                .await;
            (i, r.is_ok())
        }));
    }
    for t in tasks {
        let (i, ok) = t.await.unwrap();
        assert_eq!(ok, i % 2 == 0, "write {i}");
        let want = if i % 2 == 0 {
            JoinTokenUse::Consumed
        } else {
            JoinTokenUse::Unknown
        };
        let peeked = s
            .peek_join_token(&[i], &AgentId::new("a1").unwrap(), 150)
            .await
            .unwrap();
        assert_eq!(peeked, want, "write {i}");
    }
}

#[tokio::test]
async fn a_multi_statement_write_is_all_or_nothing() {
    let (s, _d) = store().await;
    s.rotate_signing_key("k1", b"one", 100).await.unwrap();
    // Same kid again: the INSERT fails, so the UPDATE retiring k1 must not
    // stay; the caller gets the statement's own error, not a commit failure.
    let refused = s.rotate_signing_key("k1", b"again", 200).await;
    assert!(matches!(refused, Err(Error::Database(_))), "{refused:?}");
    let keys = s.signing_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(
        keys[0].retired_at, None,
        "the failed rotation retired the active key"
    );
}

#[tokio::test]
async fn prune_drops_only_what_ended_before_the_cutoff() {
    let (s, _d) = store().await;
    s.create_agent(&agent("a1", 10)).await.unwrap();
    let a1 = AgentId::new("a1").unwrap();
    s.insert_join_token(b"old", &a1, "t", 100, 200)
        .await
        .unwrap();
    s.insert_join_token(b"new", &a1, "t", 100, 2000)
        .await
        .unwrap();
    s.open_session(&session("s-old", "a1", 300), 10, 100)
        .await
        .unwrap();
    s.open_session(&session("s-new", "a1", 3000), 10, 100)
        .await
        .unwrap();
    assert_eq!(s.prune(1000).await.unwrap(), 2);
    assert_eq!(
        s.peek_join_token(b"old", &a1, 150).await.unwrap(),
        JoinTokenUse::Unknown
    );
    assert_eq!(
        s.peek_join_token(b"new", &a1, 150).await.unwrap(),
        JoinTokenUse::Consumed
    );
    assert_eq!(s.open_sessions(&a1, 150).await.unwrap(), 1);
}

#[tokio::test]
async fn blocked_agents_are_suspended_recently_revoked_or_recently_expired() {
    let (s, _d) = store().await;
    for id in [
        "ok",
        "sus",
        "rev-old",
        "rev-new",
        "exp-new",
        "exp-old",
        "exp-later",
    ] {
        let mut a = agent(id, 1);
        a.expires_at = match id {
            "exp-new" => Some(950),
            "exp-old" => Some(100),
            "exp-later" => Some(5000),
            _ => None,
        };
        s.create_agent(&a).await.unwrap();
    }
    let id = |s: &str| AgentId::new(s).unwrap();
    s.set_agent_status(&id("sus"), AgentStatus::Suspended, "", 200)
        .await
        .unwrap();
    s.set_agent_status(&id("rev-old"), AgentStatus::Revoked, "", 300)
        .await
        .unwrap();
    s.set_agent_status(&id("rev-new"), AgentStatus::Revoked, "", 900)
        .await
        .unwrap();
    // At 1000, looking back to 500.
    let got: Vec<String> = s
        .blocked_agents(1000, 500)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id.to_string())
        .collect();
    assert_eq!(got, ["exp-new", "rev-new", "sus"]);
}

fn approval(id: &str, binding: &str, quorum: u32, deadline: i64) -> NewApproval {
    NewApproval {
        id: id.into(),
        binding: binding.into(),
        agent_id: AgentId::new("a1").unwrap(),
        session_id: "ses_1".into(),
        user_id: String::new(),
        tool: "refund".into(),
        arguments: r#"{"amount":500}"#.into(),
        reason: "customer asked".into(),
        trace_id: "t-1".into(),
        because: "large-refund".into(),
        quorum,
        created_at: 100,
        deadline,
        by_user: false,
    }
}

fn a1() -> AgentId {
    AgentId::new("a1").unwrap()
}

fn decision(who: &str, approve: bool) -> ApprovalDecision {
    ApprovalDecision {
        approver: who.into(),
        approve,
        comment: if approve { "ok" } else { "not today" }.into(),
        decided_at: 110,
    }
}

#[tokio::test]
async fn an_approval_needs_its_quorum_of_distinct_people_and_is_used_once() {
    let (s, _d) = store().await;
    let a = s
        .request_approval(&approval("apr_1", "b1", 2, 400), 100)
        .await
        .unwrap();
    assert_eq!(a.state, ApprovalState::Pending);
    // Filing the same call again gives the same request.
    let again = s
        .request_approval(&approval("apr_2", "b1", 2, 400), 101)
        .await
        .unwrap();
    assert_eq!(again.request.id, "apr_1");
    // Nothing to use yet.
    assert_eq!(s.use_approval(&a1(), "b1", 110).await.unwrap(), None);
    // The same person twice counts once.
    assert_eq!(
        s.decide_approval("apr_1", &decision("alice", true), 110)
            .await
            .unwrap(),
        Decided::Recorded(ApprovalState::Pending)
    );
    assert_eq!(
        s.decide_approval("apr_1", &decision("alice", true), 111)
            .await
            .unwrap(),
        Decided::AlreadyDecided
    );
    assert_eq!(
        s.get_approval("apr_1", 112).await.unwrap().unwrap().state,
        ApprovalState::Pending
    );
    assert_eq!(
        s.decide_approval("apr_1", &decision("bob", true), 112)
            .await
            .unwrap(),
        Decided::Recorded(ApprovalState::Approved)
    );
    // Used once; the identical call after that needs a new request.
    let used = s.use_approval(&a1(), "b1", 120).await.unwrap().unwrap();
    assert_eq!(
        (used.request.id.as_str(), used.state),
        ("apr_1", ApprovalState::Used)
    );
    assert_eq!(used.decisions.len(), 2);
    assert_eq!(s.use_approval(&a1(), "b1", 121).await.unwrap(), None);
    let fresh = s
        .request_approval(&approval("apr_3", "b1", 2, 500), 122)
        .await
        .unwrap();
    assert_eq!(
        (fresh.request.id.as_str(), fresh.state),
        ("apr_3", ApprovalState::Pending)
    );
    // Another call's binding has nothing.
    assert_eq!(s.use_approval(&a1(), "b2", 122).await.unwrap(), None);
    assert_eq!(
        s.decide_approval("apr_1", &decision("carol", true), 123)
            .await
            .unwrap(),
        Decided::NotPending(ApprovalState::Used)
    );
    assert_eq!(
        s.decide_approval("apr_none", &decision("carol", true), 123)
            .await
            .unwrap(),
        Decided::Unknown
    );
}

#[tokio::test]
async fn a_denial_decides_and_a_deadline_expires() {
    let (s, _d) = store().await;
    s.request_approval(&approval("apr_d", "bd", 2, 400), 100)
        .await
        .unwrap();
    assert_eq!(
        s.decide_approval("apr_d", &decision("alice", false), 110)
            .await
            .unwrap(),
        Decided::Recorded(ApprovalState::Denied)
    );
    let a = s.get_approval("apr_d", 111).await.unwrap().unwrap();
    assert_eq!(a.state, ApprovalState::Denied);
    // Asked again before its deadline, the call stays denied; after it, a
    // new request is filed.
    let again = s
        .request_approval(&approval("apr_d2", "bd", 2, 500), 111)
        .await
        .unwrap();
    assert_eq!(
        (again.request.id.as_str(), again.state),
        ("apr_d", ApprovalState::Denied)
    );
    assert_eq!(a.decisions[0].comment, "not today");
    assert_eq!(s.use_approval(&a1(), "bd", 112).await.unwrap(), None);
    // Past its deadline, a pending request is expired and cannot be decided.
    s.request_approval(&approval("apr_e", "be", 1, 200), 100)
        .await
        .unwrap();
    assert_eq!(
        s.get_approval("apr_e", 200).await.unwrap().unwrap().state,
        ApprovalState::Expired
    );
    assert_eq!(
        s.decide_approval("apr_e", &decision("alice", true), 201)
            .await
            .unwrap(),
        Decided::NotPending(ApprovalState::Expired)
    );
    let pending = s
        .list_approvals(Some(ApprovalState::Pending), 10, 201)
        .await
        .unwrap();
    assert!(pending.is_empty(), "{pending:?}");
    let all = s.list_approvals(None, 10, 201).await.unwrap();
    assert_eq!(all.len(), 2);
}

#[tokio::test]
async fn a_pending_request_survives_a_restart_and_can_still_be_decided() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    {
        let s = SqliteStore::open(&path, true).await.unwrap();
        s.request_approval(&approval("apr_r", "br", 1, 400), 100)
            .await
            .unwrap();
    }
    let s = SqliteStore::open(&path, true).await.unwrap();
    assert_eq!(
        s.decide_approval("apr_r", &decision("alice", true), 110)
            .await
            .unwrap(),
        Decided::Recorded(ApprovalState::Approved)
    );
    assert!(s.use_approval(&a1(), "br", 111).await.unwrap().is_some());
}

#[tokio::test]
async fn requests_are_the_agents_own_and_decided_ones_are_listed_for_it() {
    let (s, _d) = store().await;
    let other = AgentId::new("a2").unwrap();
    s.request_approval(&approval("apr_x", "bx", 1, 400), 100)
        .await
        .unwrap();
    // Another agent filing the same binding gets its own request, and
    // cannot spend or cancel a1's.
    let theirs = s
        .request_approval(
            &NewApproval {
                agent_id: other.clone(),
                ..approval("apr_y", "bx", 1, 400)
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(theirs.request.id, "apr_y");
    s.decide_approval("apr_x", &decision("alice", true), 110)
        .await
        .unwrap();
    assert!(!s.cancel_approval(&other, "apr_x", 111).await.unwrap());
    assert_eq!(s.use_approval(&other, "bx", 111).await.unwrap(), None);
    // a1's decisions: the approval, not the other agent's.
    let decided = s.approval_outcomes(&a1(), 0, 0, 100).await.unwrap();
    assert_eq!(decided.len(), 1);
    assert_eq!(
        (decided[0].id.as_str(), decided[0].state),
        ("apr_x", ApprovalState::Approved)
    );
    let first = decided[0].seq;
    assert!(first > 0);
    // A denial comes next, with the denier's reason; a used approval says so.
    s.request_approval(&approval("apr_z", "bz", 1, 400), 100)
        .await
        .unwrap();
    s.decide_approval("apr_z", &decision("bob", false), 112)
        .await
        .unwrap();
    assert!(s.use_approval(&a1(), "bx", 113).await.unwrap().is_some());
    let decided = s.approval_outcomes(&a1(), 0, 0, 100).await.unwrap();
    assert_eq!(decided.len(), 2);
    assert_eq!(decided[0].state, ApprovalState::Used);
    assert_eq!(
        (
            decided[1].state,
            decided[1].denied_by.as_str(),
            decided[1].comment.as_str()
        ),
        (ApprovalState::Denied, "bob", "not today")
    );
    assert!(decided[1].seq > first);
    assert_eq!(s.last_decision_seq().await.unwrap(), decided[1].seq);
    // After a sequence number: only what came later; since a time: only
    // what was decided then.
    let later = s.approval_outcomes(&a1(), first, 0, 100).await.unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].id, "apr_z");
    assert!(
        s.approval_outcomes(&a1(), 0, 113, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.approval_outcomes(&a1(), 0, 0, 1).await.unwrap().len(), 1);
    // Cancelling: only a pending request, once.
    assert!(s.cancel_approval(&other, "apr_y", 115).await.unwrap());
    assert!(!s.cancel_approval(&other, "apr_y", 116).await.unwrap());
    assert_eq!(
        s.get_approval("apr_y", 116).await.unwrap().unwrap().state,
        ApprovalState::Cancelled
    );
    let cancelled = s
        .list_approvals(Some(ApprovalState::Cancelled), 10, 116)
        .await
        .unwrap();
    assert_eq!(cancelled.len(), 1);
    // Filing again after a cancel makes a new request.
    let again = s
        .request_approval(
            &NewApproval {
                agent_id: other,
                ..approval("apr_w", "bx", 1, 400)
            },
            117,
        )
        .await
        .unwrap();
    assert_eq!(again.request.id, "apr_w");
    // The expired filter finds a pending request past its deadline.
    let expired = s
        .list_approvals(Some(ApprovalState::Expired), 10, 401)
        .await
        .unwrap();
    assert_eq!(expired.len(), 1, "{expired:?}");
}

#[tokio::test]
async fn the_webhook_outbox_keeps_deliveries_until_they_are_made() {
    use crate::store::{Attempt, NewDelivery};
    let (s, _d) = store().await;
    let d = |id: &str, at: i64| NewDelivery {
        id: id.into(),
        url: "http://127.0.0.1:9/hook".into(),
        body: format!("{{\"n\":\"{id}\"}}"),
        created_at: at,
    };
    s.enqueue_webhooks(&[d("msg_a", 100), d("msg_b", 101)])
        .await
        .unwrap();
    assert_eq!(s.next_webhook_at().await.unwrap(), Some(100));
    assert!(s.due_webhooks(99, 10).await.unwrap().is_empty());
    let due = s.due_webhooks(101, 10).await.unwrap();
    assert_eq!(
        due.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(),
        ["msg_a", "msg_b"]
    );
    assert_eq!(due[0].attempts, 0);
    // a fails and waits; b is delivered.
    s.webhook_attempted(
        "msg_a",
        &Attempt::Retry {
            at: 200,
            error: "connect: refused".into(),
        },
        101,
    )
    .await
    .unwrap();
    s.webhook_attempted("msg_b", &Attempt::Delivered, 101)
        .await
        .unwrap();
    assert!(s.due_webhooks(150, 10).await.unwrap().is_empty());
    assert_eq!(s.next_webhook_at().await.unwrap(), Some(200));
    let again = s.due_webhooks(200, 10).await.unwrap();
    assert_eq!((again.len(), again[0].attempts), (1, 1));
    // Abandoned: no longer due, and pruned with the delivered one.
    s.webhook_attempted(
        "msg_a",
        &Attempt::Abandoned {
            error: "answered 500".into(),
        },
        201,
    )
    .await
    .unwrap();
    assert_eq!(s.next_webhook_at().await.unwrap(), None);
    assert_eq!(s.prune(102).await.unwrap(), 2);
}

fn grant(id: &str, user: &str, grantee: Grantee, exp: i64) -> Grant {
    Grant {
        id: id.into(),
        user_id: user.into(),
        grantee,
        scopes: vec!["data:read".into()],
        created_at: 100,
        expires_at: exp,
        revoked_at: None,
        revoked_by: String::new(),
    }
}

#[tokio::test]
async fn grants_are_found_for_an_agent_or_its_type_and_revoked_with_their_sessions() {
    let (s, _d) = store().await;
    s.create_agent(&agent("a1", 10)).await.unwrap();
    let a1 = AgentId::new("a1").unwrap();
    let alice = "https://idp#alice";
    // The type's grant, then one for the agent itself: the agent's wins.
    s.insert_grant(&grant(
        "g-type",
        alice,
        Grantee::AgentType("coder".into()),
        5000,
    ))
    .await
    .unwrap();
    assert_eq!(
        s.live_grant(alice, &a1, "coder", 150)
            .await
            .unwrap()
            .unwrap()
            .id,
        "g-type"
    );
    s.insert_grant(&grant("g-a1", alice, Grantee::Agent(a1.clone()), 5000))
        .await
        .unwrap();
    assert_eq!(
        s.live_grant(alice, &a1, "coder", 150)
            .await
            .unwrap()
            .unwrap()
            .id,
        "g-a1"
    );
    assert!(matches!(
        s.insert_grant(&grant("g-a1", alice, Grantee::Agent(a1.clone()), 5000))
            .await,
        Err(Error::Conflict)
    ));
    // Another user, another type, an expired grant: none.
    assert!(
        s.live_grant("https://idp#bob", &a1, "coder", 150)
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.live_grant(alice, &a1, "", 150).await.unwrap().unwrap().id == "g-a1");
    assert!(
        s.live_grant(alice, &a1, "coder", 6000)
            .await
            .unwrap()
            .is_none()
    );

    let mut s1 = session("s1", "a1", 1000);
    s1.grant_id = Some("g-a1".into());
    let mut s2 = session("s2", "a1", 1000);
    s2.grant_id = Some("g-a1".into());
    assert!(s.open_session(&s1, 10, 150).await.unwrap());
    assert!(s.open_session(&s2, 10, 150).await.unwrap());
    assert!(
        s.open_session(&session("s3", "a1", 1000), 10, 150)
            .await
            .unwrap()
    );
    // Only the grant's user may revoke it as a user.
    assert!(
        s.revoke_grant("g-a1", Some("https://idp#bob"), "user:bob", 160)
            .await
            .unwrap()
            .is_none()
    );
    let (g, ended) = s
        .revoke_grant("g-a1", Some(alice), "user:alice", 160)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (g.revoked_at, g.revoked_by.as_str()),
        (Some(160), "user:alice")
    );
    assert_eq!(
        ended,
        [("s1".to_owned(), a1.clone()), ("s2".to_owned(), a1.clone())]
    );
    assert_eq!(
        s.revoked_sessions(&a1, 170).await.unwrap().len(),
        2,
        "pushed to the sidecars like an admin's revocation"
    );
    // Revoking again changes nothing; a session under the revoked grant
    // is not opened, even when the grant was looked up before.
    assert!(
        s.revoke_grant("g-a1", None, "admin:root", 170)
            .await
            .unwrap()
            .is_none()
    );
    let mut late = session("s4", "a1", 1000);
    late.grant_id = Some("g-a1".into());
    assert!(!s.open_session(&late, 10, 170).await.unwrap());
    // Lists: live ones by default, all on request.
    let live = s.list_grants(Some(alice), false, 170, 0).await.unwrap();
    assert_eq!(
        live.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(),
        ["g-type"]
    );
    let all = s.list_grants(None, true, 170, 0).await.unwrap();
    assert_eq!(all.len(), 2);
    // Pruned once past retention.
    s.prune(7000).await.unwrap();
    assert!(s.get_grant("g-a1").await.unwrap().is_none());
}

#[tokio::test]
async fn sessions_opened_together_hold_each_cap_as_if_opened_one_by_one() {
    use crate::store::{AuditAppend, AuditGuard, AuditStore};
    let (s, _d) = store().await;
    s.create_agent(&agent("a1", 2)).await.unwrap();
    s.create_agent(&agent("a2", 1)).await.unwrap();
    let alice = "https://idp#alice";
    let a1 = AgentId::new("a1").unwrap();
    s.insert_grant(&grant("g-live", alice, Grantee::Agent(a1.clone()), 5000))
        .await
        .unwrap();
    s.insert_grant(&grant("g-gone", alice, Grantee::Agent(a1.clone()), 5000))
        .await
        .unwrap();
    s.revoke_grant("g-gone", None, "admin:root", 120)
        .await
        .unwrap()
        .unwrap();
    assert!(
        s.open_session(&session("s0", "a1", 1000), 2, 150)
            .await
            .unwrap()
    );
    let open = |id: &str, agent: &str, max: u32, grant: Option<&str>| {
        let mut session = session(id, agent, 1000);
        session.grant_id = grant.map(str::to_owned);
        AuditGuard::OpenSession {
            session,
            max,
            now: 150,
        }
    };
    // a1 has one open of two: the revoked grant's session takes no slot,
    // the next one takes the last, the one after finds none; a2 its own.
    let guards = vec![
        open("s1", "a1", 2, Some("g-gone")),
        open("s2", "a1", 2, Some("g-live")),
        open("s3", "a1", 2, None),
        open("s4", "a2", 1, None),
        open("s5", "a2", 1, None),
    ];
    let (seen, build) = recording(|_| AuditAppend::default());
    let took = s.audit_append_guarded(guards, build).await.unwrap();
    assert_eq!(took, [false, true, false, true, false]);
    assert_eq!(
        seen.lock().unwrap().last(),
        Some(&took),
        "the append is built from the outcomes"
    );
    assert_eq!(s.open_sessions(&a1, 150).await.unwrap(), 2);
    assert_eq!(
        s.open_sessions(&AgentId::new("a2").unwrap(), 150)
            .await
            .unwrap(),
        1
    );
    // A session that cannot be stored fails the whole append: nothing of
    // it is kept.
    let failing = vec![open("s6", "a2", 5, None), open("s4", "a2", 5, None)];
    assert!(
        s.audit_append_guarded(failing, Box::new(|_| AuditAppend::default()))
            .await
            .is_err()
    );
    assert_eq!(
        s.open_sessions(&AgentId::new("a2").unwrap(), 150)
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn a_session_ends_with_its_event_only_if_it_was_the_agents_and_open() {
    use crate::store::{AuditGuard, AuditStore};
    let (s, _d) = store().await;
    s.create_agent(&agent("a1", 5)).await.unwrap();
    s.create_agent(&agent("a2", 5)).await.unwrap();
    for (id, a) in [("s1", "a1"), ("s2", "a1"), ("s3", "a2")] {
        assert!(s.open_session(&session(id, a, 1000), 5, 150).await.unwrap());
    }
    let a1 = AgentId::new("a1").unwrap();
    let end = |id: &str| AuditGuard::EndSession {
        agent: a1.clone(),
        id: id.into(),
        now: 160,
    };
    // s1 ends; an unknown id, another agent's session and s1 a second time
    // do not; a session opened beside them still opens.
    let guards = vec![
        end("s1"),
        end("nope"),
        end("s3"),
        AuditGuard::OpenSession {
            session: session("s4", "a1", 1000),
            max: 5,
            now: 160,
        },
        end("s1"),
    ];
    let (seen, build) = recording(|took| rows_for(0, took));
    let took = s.audit_append_guarded(guards, build).await.unwrap();
    assert_eq!(took, [true, false, false, true, false]);
    assert_eq!(seen.lock().unwrap().last(), Some(&took));
    assert_eq!(
        s.audit_size().await.unwrap(),
        2,
        "one event per guard that took"
    );
    assert_eq!(s.open_sessions(&a1, 160).await.unwrap(), 2, "s2 and s4");
    assert_eq!(
        s.open_sessions(&AgentId::new("a2").unwrap(), 160)
            .await
            .unwrap(),
        1
    );
    // An end whose append fails (its row's position is taken) is not kept
    // either.
    let failing = vec![end("s2")];
    assert!(
        s.audit_append_guarded(failing, Box::new(|took| rows_for(0, took)))
            .await
            .is_err()
    );
    assert_eq!(
        s.open_sessions(&a1, 160).await.unwrap(),
        2,
        "s2 is still open"
    );
}

/// What every build of a guarded append was given (in order), and the
/// build, which makes its append with `make`.
fn recording(
    make: fn(&[bool]) -> crate::store::AuditAppend,
) -> (
    std::sync::Arc<std::sync::Mutex<Vec<Vec<bool>>>>,
    crate::store::BuildAppend,
) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = std::sync::Arc::clone(&seen);
    let build: crate::store::BuildAppend = Box::new(move |took: &[bool]| {
        record.lock().unwrap().push(took.to_vec());
        make(took)
    });
    (seen, build)
}

/// An append whose rows stand for the guards that took, numbered from
/// `from`: one row per session opened.
fn rows_for(from: u64, took: &[bool]) -> crate::store::AuditAppend {
    use crate::store::{AuditAppend, AuditRow};
    let rows = took
        .iter()
        .filter(|t| **t)
        .enumerate()
        .map(|(i, _)| AuditRow {
            position: from + i as u64,
            record: format!("event {}", from + i as u64).into_bytes(),
            time_ms: 1,
            kind: "session.started".into(),
            agent: "a1".into(),
            session: String::new(),
            tool: String::new(),
            outcome: "allowed".into(),
        })
        .collect();
    AuditAppend {
        rows,
        ..AuditAppend::default()
    }
}

/// Opens sessions s0–s2 of agent a1 (at most `max` open) in one guarded
/// append whose rows stand for the sessions opened: what took, and what
/// each build was given.
async fn open_three(s: &SqliteStore, max: u32) -> (Vec<bool>, Vec<Vec<bool>>) {
    use crate::store::{AuditGuard, AuditStore};
    let guards = (0..3)
        .map(|i| AuditGuard::OpenSession {
            session: session(&format!("s{i}"), "a1", 1000),
            max,
            now: 150,
        })
        .collect();
    let (builds, build) = recording(|took| rows_for(0, took));
    let took = s.audit_append_guarded(guards, build).await.unwrap();
    let builds = builds.lock().unwrap().clone();
    (took, builds)
}

/// Opens s0–s2 of a1 under a cap of `cap` in a lone guarded append: what
/// took and what each build was given, the entries and sessions left, and
/// that the writer takes the next write (no transaction left open).
async fn lone_append(cap: u32, took: &[bool], builds: &[Vec<bool>]) {
    use crate::store::AuditStore;
    let (s, _d) = store().await;
    s.create_agent(&agent("a1", cap)).await.unwrap();
    let (got, built) = open_three(&s, cap).await;
    assert_eq!(got, took);
    assert_eq!(built, builds, "the builds, the last one written");
    let opened = took.iter().filter(|t| **t).count();
    // Only the last build's rows, and no session twice.
    assert_eq!(s.audit_size().await.unwrap(), opened as u64);
    assert_eq!(
        s.open_sessions(&AgentId::new("a1").unwrap(), 150)
            .await
            .unwrap(),
        u32::try_from(opened).unwrap()
    );
    s.create_agent(&agent("a2", 1)).await.unwrap();
}

#[tokio::test]
async fn a_guarded_append_alone_commits_in_one_try_when_every_guard_takes() {
    // Built once, as if every guard took.
    lone_append(3, &[true; 3], &[vec![true; 3]]).await;
}

#[tokio::test]
async fn a_guard_that_does_not_take_undoes_the_first_try_entirely() {
    // Tried as if all took, then built from what did.
    lone_append(
        2,
        &[true, true, false],
        &[vec![true; 3], vec![true, true, false]],
    )
    .await;
}

#[tokio::test]
async fn guarded_appends_queued_together_share_a_transaction_and_each_keeps_its_outcome() {
    use crate::store::{AuditGuard, AuditStore};
    let (s, _d) = store().await;
    s.create_agent(&agent("a1", 10)).await.unwrap();
    // Twenty appends at once: most are batched with others (no one owns the
    // transaction), some may run alone; each sees its own guard's outcome.
    let appends = (0..20u64).map(|i| {
        let s = s.clone();
        async move {
            let guard = AuditGuard::OpenSession {
                session: session(&format!("s{i}"), "a1", 1000),
                max: 10,
                now: 150,
            };
            s.audit_append_guarded(vec![guard], Box::new(move |took| rows_for(i, took)))
                .await
                .unwrap()
        }
    });
    let mut tasks = tokio::task::JoinSet::new();
    for a in appends {
        tasks.spawn(a);
    }
    let took: Vec<Vec<bool>> = tasks.join_all().await;
    let opened = took.iter().filter(|t| t[0]).count();
    assert_eq!(opened, 10, "the cap holds across the batch");
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(
        rows, 10,
        "an entry for each session opened, none for the others"
    );
    assert_eq!(
        s.open_sessions(&AgentId::new("a1").unwrap(), 150)
            .await
            .unwrap(),
        10
    );
}

#[tokio::test]
async fn a_plain_append_alone_owns_its_transaction() {
    use crate::store::AuditStore;
    let (s, _d) = store().await;
    s.audit_append(rows_for(0, &[true, true])).await.unwrap();
    assert_eq!(s.audit_size().await.unwrap(), 2);
    // A position taken twice is refused and leaves nothing behind.
    assert!(s.audit_append(rows_for(1, &[true, true])).await.is_err());
    assert_eq!(s.audit_size().await.unwrap(), 2);
    s.audit_append(rows_for(2, &[true])).await.unwrap();
    assert_eq!(s.audit_size().await.unwrap(), 3);
}

#[tokio::test]
async fn entries_keep_every_byte_and_every_character_through_the_append() {
    use crate::store::{AuditAppend, AuditQuery, AuditRow, AuditStore};
    use warden_shared::merkle::Node;
    let (s, _d) = store().await;
    // Texts JSON must escape, characters outside ASCII, and a NUL.
    let texts = [
        "a\"b\\c",
        "tool/ü ✓ 𝄞",
        "line\nbreak\ttab",
        "nul\0inside",
        "",
        "'; DROP TABLE audit_log; --",
    ];
    let n = texts.len();
    // Entry p carries texts[p % n] (the positions below start at multiples of n).
    let append = |from: u64, count: usize| AuditAppend {
        rows: (0..count)
            .map(|i| {
                // Every byte value, and bytes that are not UTF-8.
                let mut record: Vec<u8> = (0..=255u8).collect();
                record.extend([0xff, 0xfe, 0x00, b'"', i as u8]);
                AuditRow {
                    position: from + i as u64,
                    record,
                    time_ms: i64::MAX - i as i64,
                    kind: texts[i % n].into(),
                    agent: texts[(i + 1) % n].into(),
                    session: texts[(i + 2) % n].into(),
                    tool: texts[i % n].into(),
                    outcome: texts[(i + 3) % n].into(),
                }
            })
            .collect(),
        nodes: vec![
            (
                Node {
                    level: 0,
                    index: from,
                },
                [0xa5; 32],
            ),
            (
                Node {
                    level: 63,
                    index: from,
                },
                [0; 32],
            ),
        ],
        sources: vec![(texts[1].to_owned(), from)],
    };
    // Small and alone (owning its transaction); small beside another write
    // (in one batch when the writer takes both together); and large (more
    // than FIXED_MAX entries: the other way of writing them).
    let first = append(0, n);
    s.audit_append(first.clone()).await.unwrap();
    let second = append(n as u64, n);
    let key = crate::store::AuditKey {
        kid: "k".into(),
        pkcs8: vec![1],
        public_key: vec![2],
        created_ms: 1,
    };
    let (a, b) = tokio::join!(s.audit_append(second.clone()), s.audit_add_key(&key));
    a.unwrap();
    b.unwrap();
    let third = append(2 * n as u64, 100);
    s.audit_append(third.clone()).await.unwrap();
    let size = (2 * n + 100) as u64;
    let stored = s.audit_entries(0, size, 200, true).await.unwrap();
    let written: Vec<&AuditRow> = [&first, &second, &third]
        .iter()
        .flat_map(|a| &a.rows)
        .collect();
    assert_eq!(stored.len(), written.len());
    for (e, w) in stored.iter().zip(&written) {
        assert_eq!((e.position, &e.record), (w.position, &w.record));
    }
    // The subtrees, exactly, from both ways of writing them.
    let at = |level, index| Node { level, index };
    let nodes = [
        at(0, 0),
        at(63, 0),
        at(0, 6),
        at(63, 6),
        at(0, 12),
        at(63, 12),
    ];
    assert_eq!(
        s.audit_nodes(&nodes).await.unwrap(),
        [
            [0xa5; 32], [0; 32], [0xa5; 32], [0; 32], [0xa5; 32], [0; 32]
        ]
        .map(Some)
    );
    assert_eq!(s.audit_source_seq(texts[1]).await.unwrap(), 2 * n as u64);
    // Each column holds its text exactly: a query by it finds its rows.
    for (i, t) in texts.iter().enumerate() {
        let q = AuditQuery {
            tool: Some((*t).to_owned()),
            agent: Some(texts[(i + 1) % n].to_owned()),
            outcome: Some(texts[(i + 3) % n].to_owned()),
            limit: 200,
            ..AuditQuery::default()
        };
        let found: Vec<u64> = s
            .audit_query(&q)
            .await
            .unwrap()
            .iter()
            .map(|e| e.position)
            .collect();
        let want: Vec<u64> = (0..size).filter(|p| *p as usize % n == i).collect();
        assert_eq!(found, want, "{t:?}");
    }
}
