//! The mesh stream sends only what changed: the first push carries every
//! part a sidecar lacks, later pushes only the parts that changed, and a
//! reconnecting sidecar that names what it holds receives only what differs.
//! Every sidecar learns which agents of the mesh are blocked. A refused part
//! is not sent again until it changes, and never holds back the others.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

use std::time::Duration;

use warden_shared::proto::v1 as pb;
use warden_tests::raw::{RawStream, held_after};
use warden_tests::*;

/// Which parts a push carries, in a fixed order, for exact assertions.
fn parts(p: &pb::StreamResponse) -> Vec<&'static str> {
    [
        p.standing.as_ref().map(|_| "standing"),
        p.revoked_sessions.as_ref().map(|_| "revoked_sessions"),
        p.keys.as_ref().map(|_| "keys"),
        p.policy.as_ref().map(|_| "policy"),
        p.blocked_agents.as_ref().map(|_| "blocked_agents"),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[tokio::test]
async fn pushes_carry_only_what_changed_and_reconnects_only_what_differs() {
    let mesh = Mesh::start().await.unwrap();
    let mut admin = mesh.admin().await.unwrap();
    admin
        .apply_policy(apply_policy(EXAMPLE_POLICY))
        .await
        .unwrap();
    mesh.register("b1", &["data:read"], 4).await.unwrap();
    let ch = mesh.enrolled_channel("a1").await.unwrap();

    let mut s = RawStream::open(ch.clone(), pb::Hello::default())
        .await
        .unwrap();
    let first = s.next().await.unwrap();
    assert_eq!(
        parts(&first),
        [
            "standing",
            "revoked_sessions",
            "keys",
            "policy",
            "blocked_agents"
        ]
    );
    assert!(first.blocked_agents.as_ref().unwrap().complete);
    assert_eq!(first.policy.as_ref().unwrap().version, 1);
    s.ack(&first).await.unwrap();

    // Another agent suspended: only the blocked list moves, as a change.
    admin
        .suspend_agent(pb::SuspendAgentRequest {
            id: "b1".into(),
            reason: "audit".into(),
        })
        .await
        .unwrap();
    let p = s.next().await.unwrap();
    assert_eq!(parts(&p), ["blocked_agents"]);
    let b = p.blocked_agents.as_ref().unwrap();
    assert!(!b.complete);
    assert_eq!(b.from_seq, first.blocked_agents.as_ref().unwrap().seq);
    assert_eq!(b.blocked[0].agent_id, "b1");
    assert_eq!(b.blocked[0].status, pb::AgentStatus::Suspended as i32);
    s.ack(&p).await.unwrap();
    let suspended = p;

    // Resumed: cleared.
    admin
        .resume_agent(pb::ResumeAgentRequest { id: "b1".into() })
        .await
        .unwrap();
    let p = s.next().await.unwrap();
    assert_eq!(parts(&p), ["blocked_agents"]);
    assert_eq!(p.blocked_agents.as_ref().unwrap().cleared, ["b1"]);
    s.ack(&p).await.unwrap();
    let resumed = p;

    // A policy change: only the policy.
    let changed = EXAMPLE_POLICY.replace("calls_per_minute: 30", "calls_per_minute: 31");
    admin.apply_policy(apply_policy(&changed)).await.unwrap();
    let p = s.next().await.unwrap();
    assert_eq!(parts(&p), ["policy"]);
    assert_eq!(p.policy.as_ref().unwrap().version, 2);
    s.ack(&p).await.unwrap();
    let policy2 = p;

    // A key rotation: only the keys.
    admin
        .rotate_signing_key(pb::RotateSigningKeyRequest {})
        .await
        .unwrap();
    let p = s.next().await.unwrap();
    assert_eq!(parts(&p), ["keys"]);
    s.ack(&p).await.unwrap();
    let keys2 = p;
    drop(s);

    // Reconnecting with everything held: one empty push (you are current).
    let all = held_after(&[&first, &suspended, &resumed, &policy2, &keys2]);
    let mut s = RawStream::open(
        ch.clone(),
        pb::Hello {
            held_version: keys2.version,
            held: Some(all),
        },
    )
    .await
    .unwrap();
    let p = s.next().await.unwrap();
    assert_eq!(parts(&p), Vec::<&str>::new());
    s.ack(&p).await.unwrap();
    drop(s);

    // Reconnecting from before the policy change and the rotation: exactly
    // those two parts.
    let older = held_after(&[&first, &suspended, &resumed]);
    let mut s = RawStream::open(
        ch,
        pb::Hello {
            held_version: resumed.version,
            held: Some(older),
        },
    )
    .await
    .unwrap();
    let p = s.next().await.unwrap();
    assert_eq!(parts(&p), ["keys", "policy"]);
    assert_eq!(
        p.policy.as_ref().unwrap().digest,
        policy2.policy.unwrap().digest
    );
    s.ack(&p).await.unwrap();
}

#[tokio::test]
async fn a_refused_part_is_not_resent_and_does_not_hold_back_the_kill_switch() {
    let mesh = Mesh::start().await.unwrap();
    let mut admin = mesh.admin().await.unwrap();
    admin
        .apply_policy(apply_policy(EXAMPLE_POLICY))
        .await
        .unwrap();
    let ch = mesh.enrolled_channel("a1").await.unwrap();
    let mut s = RawStream::open(ch, pb::Hello::default()).await.unwrap();
    let first = s.next().await.unwrap();
    s.ack(&first).await.unwrap();

    // The sidecar refuses policy v2.
    let changed = EXAMPLE_POLICY.replace("calls_per_minute: 30", "calls_per_minute: 31");
    admin.apply_policy(apply_policy(&changed)).await.unwrap();
    let p = s.next().await.unwrap();
    assert_eq!(parts(&p), ["policy"]);
    s.nack(&p, pb::MeshPart::Policy, held_after(&[&first]))
        .await
        .unwrap();
    assert!(
        s.quiet_for(Duration::from_millis(300)).await,
        "a refused part must not be sent again until it changes"
    );

    // The kill switch still gets through, without the refused policy.
    admin
        .suspend_agent(pb::SuspendAgentRequest {
            id: "a1".into(),
            reason: "incident".into(),
        })
        .await
        .unwrap();
    // Its own standing and the blocked list (in one push or two).
    let mut seen = Vec::new();
    while !(seen.contains(&"standing") && seen.contains(&"blocked_agents")) {
        let p = s.next().await.unwrap();
        s.ack(&p).await.unwrap();
        if let Some(st) = &p.standing {
            assert_eq!(st.status, pb::AgentStatus::Suspended as i32);
        }
        seen.extend(parts(&p));
    }
    assert!(!seen.contains(&"policy"), "{seen:?}");

    let r = admin
        .list_sidecars(pb::ListSidecarsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.sidecars[0].nack_reason, "refused by the test");
    assert_eq!(r.sidecars[0].policy_version, 1, "it still holds v1");
    // Its policy age grows while it lags behind the policy in force.
    let ages = eventually(Duration::from_secs(5), || {
        let mut admin = admin.clone();
        async move {
            let r = admin
                .list_sidecars(pb::ListSidecarsRequest {})
                .await
                .unwrap()
                .into_inner();
            r.sidecars[0].policy_age_seconds >= 1
        }
    })
    .await;
    assert!(ages, "a sidecar behind the policy in force shows its age");
    assert_eq!(r.current_policy_version, 2);

    // A newer policy is sent again.
    let v3 = EXAMPLE_POLICY.replace("calls_per_minute: 30", "calls_per_minute: 32");
    admin.apply_policy(apply_policy(&v3)).await.unwrap();
    let p = s.next().await.unwrap();
    assert_eq!(parts(&p), ["policy"]);
    assert_eq!(p.policy.as_ref().unwrap().version, 3);
}

#[tokio::test]
async fn a_refused_change_list_is_answered_with_the_complete_blocked_list() {
    let mesh = Mesh::start().await.unwrap();
    let mut admin = mesh.admin().await.unwrap();
    mesh.register("b1", &["data:read"], 4).await.unwrap();
    let ch = mesh.enrolled_channel("a1").await.unwrap();
    let mut s = RawStream::open(ch, pb::Hello::default()).await.unwrap();
    let first = s.next().await.unwrap();
    s.ack(&first).await.unwrap();
    admin
        .suspend_agent(pb::SuspendAgentRequest {
            id: "b1".into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    let p = s.next().await.unwrap();
    assert!(!p.blocked_agents.as_ref().unwrap().complete);
    // The sidecar lost its list (say, it holds none).
    let mut held = held_after(&[&first]);
    held.blocked_agents_seq = 0;
    s.nack(&p, pb::MeshPart::BlockedAgents, held).await.unwrap();
    let p = s.next().await.unwrap();
    assert_eq!(parts(&p), ["blocked_agents"]);
    let b = p.blocked_agents.unwrap();
    assert!(b.complete);
    assert_eq!(b.blocked.len(), 1);
    assert_eq!(b.blocked[0].agent_id, "b1");
}

#[tokio::test]
async fn every_sidecar_learns_which_agents_are_blocked() {
    let mesh = Mesh::start().await.unwrap();
    let a = mesh.agent("a1", &["data:read"], 4).await.unwrap();
    let b = mesh.agent("b1", &["data:read"], 4).await.unwrap();
    mesh.register("c1", &["data:read"], 4).await.unwrap();
    let mut admin = mesh.admin().await.unwrap();
    let blocked = |sc: &warden_sidecar::app::Running, id: &str| {
        sc.auth
            .state()
            .held()
            .blocked_agents
            .get(id, warden_sidecar::now_unix())
    };

    admin
        .revoke_agent(pb::RevokeAgentRequest {
            id: "b1".into(),
            reason: "compromised".into(),
        })
        .await
        .unwrap();
    admin
        .suspend_agent(pb::SuspendAgentRequest {
            id: "c1".into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            blocked(&a, "b1").is_some_and(|x| x.revoked)
                && blocked(&a, "c1").is_some_and(|x| !x.revoked)
        })
        .await,
        "a1's sidecar should hold b1 revoked and c1 suspended"
    );
    let until = blocked(&a, "b1").unwrap().until.unwrap();
    let now = warden_sidecar::now_unix();
    // Listed until every credential b1 held has expired: certificate
    // lifetime plus token lifetime (default 1 h + 15 min).
    assert!(
        (now + 3600 + 900 - 5..=now + 3600 + 900).contains(&until),
        "until {until}, now {now}"
    );
    assert_eq!(blocked(&a, "a1"), None);
    drop(b);

    admin
        .resume_agent(pb::ResumeAgentRequest { id: "c1".into() })
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            blocked(&a, "c1").is_none()
        })
        .await,
        "a resumed agent is cleared"
    );

    // The list survives a restart of the sidecar during an outage.
    let dir = a.data_dir.clone();
    let config = {
        let mut c = mesh.sidecar_config("a1", None);
        c.data_dir = dir;
        c
    };
    a.shutdown().await.unwrap();
    let Mesh { dir: tmp, cp, ctl } = mesh;
    cp.shutdown().await.unwrap();
    let a = warden_sidecar::app::start(config).await.unwrap();
    assert!(blocked(&a, "b1").is_some_and(|x| x.revoked));
    drop((tmp, ctl));
}

#[tokio::test]
async fn an_expired_identity_cannot_open_a_stream() {
    let mesh = Mesh::start().await.unwrap();
    let expires = warden_control_plane::now_unix() + 2;
    mesh.register_expiring("short", expires).await.unwrap();
    let ch = mesh.enroll_channel("short").await.unwrap();
    let mut s = RawStream::open(ch.clone(), pb::Hello::default())
        .await
        .unwrap();
    let first = s.next().await.unwrap();
    let standing = first.standing.unwrap();
    assert_eq!(standing.status, pb::AgentStatus::Active as i32);
    // The expiry travels with the standing, for the sidecar to enforce.
    assert_eq!(standing.expires_at.map(|t| t.seconds), Some(expires));
    // Once expired, a new stream is refused at open (the sidecar stops
    // instead of reopening it in a loop). The enrolled certificate ends with
    // the identity, so present one that outlives it, as a certificate issued
    // before its expiry was shortened would.
    let spiffe = warden_shared::spiffe::TrustDomain::new(TD)
        .unwrap()
        .agent(&warden_shared::agent::AgentId::new("short").unwrap());
    let (key, csr) = warden_sidecar::identity::enroll::key_and_csr(&spiffe).unwrap();
    let long = mesh
        .cp
        .state
        .ca
        .sign_csr(&csr, &spiffe, Duration::from_secs(600))
        .unwrap();
    let long = mesh
        .mtls_channel(&warden_shared::svid::pem("CERTIFICATE", &long.der), &key)
        .await
        .unwrap();
    drop(ch);
    let refused = eventually(Duration::from_secs(8), || {
        let ch = long.clone();
        async move {
            RawStream::open(ch, pb::Hello::default())
                .await
                .is_err_and(|e| reason(&e) == "AGENT_EXPIRED")
        }
    })
    .await;
    assert!(refused, "an expired identity must be refused at open");
}
