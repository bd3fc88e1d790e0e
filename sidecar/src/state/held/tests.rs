use super::*;

fn blocked(id: &str, revoked: bool, until: Option<i64>) -> pb::BlockedAgent {
    pb::BlockedAgent {
        agent_id: id.into(),
        status: if revoked {
            pb::AgentStatus::Revoked
        } else {
            pb::AgentStatus::Suspended
        }
        .into(),
        until: until.map(|s| prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        }),
    }
}

fn push(version: u64) -> pb::StreamResponse {
    pb::StreamResponse {
        version,
        ..Default::default()
    }
}

fn standing(status: pb::AgentStatus, digest: u64) -> pb::StandingPart {
    pb::StandingPart {
        digest,
        status: status.into(),
        reason: "r".into(),
        ..Default::default()
    }
}

#[test]
fn parts_not_carried_are_kept() {
    let mut p = push(1);
    p.standing = Some(standing(pb::AgentStatus::Suspended, 7));
    let h = Held::default().apply(&p, 100).unwrap();
    assert_eq!(h.blocked, Some((false, "r".into())));
    let mut p = push(2);
    p.revoked_sessions = Some(pb::RevokedSessionsPart {
        digest: 8,
        sessions: vec![pb::RevokedSession {
            session_id: "s1".into(),
            expires_at: Some(prost_types::Timestamp {
                seconds: 200,
                nanos: 0,
            }),
        }],
    });
    let h2 = h.apply(&p, 100).unwrap();
    assert_eq!(h2.version, 2);
    assert_eq!(h2.blocked, Some((false, "r".into())), "standing kept");
    assert!(h2.revoked_sessions.contains_key("s1"));
    let d = h2.digests();
    assert_eq!((d.standing, d.revoked_sessions, d.keys), (7, 8, 0));
}

#[test]
fn a_refused_push_names_its_part_and_changes_nothing() {
    let mut p = push(1);
    p.standing = Some(standing(pb::AgentStatus::Active, 7));
    let h = Held::default().apply(&p, 0).unwrap();

    let mut bad = push(2);
    bad.standing = Some(standing(pb::AgentStatus::Suspended, 9));
    bad.keys = Some(pb::KeysPart {
        digest: 3,
        jwks_json: "{not json".into(),
    });
    let e = h.apply(&bad, 0).unwrap_err();
    let (part, why) = (e.part(), e.to_string());
    assert_eq!(part, pb::MeshPart::Keys);
    assert!(why.contains("invalid JWKS"), "{why}");
    // `h` itself is untouched (apply builds a new snapshot).
    assert_eq!((h.version, h.blocked.clone()), (1, None));

    let mut bad = push(3);
    bad.policy = Some(pb::PolicyPart {
        digest: 4,
        version: 5,
        document: "version: [".into(),
        tools: vec![],
    });
    let e = h.apply(&bad, 0).unwrap_err();
    let (part, why) = (e.part(), e.to_string());
    assert_eq!(part, pb::MeshPart::Policy);
    assert!(
        why.contains("policy v5") && why.contains("POLICY_YAML"),
        "{why}"
    );

    let mut bad = push(4);
    bad.standing = Some(pb::StandingPart {
        digest: 1,
        status: 42,
        ..Default::default()
    });
    assert_eq!(h.apply(&bad, 0).unwrap_err().part(), pb::MeshPart::Standing);
}

#[test]
fn blocked_agents_apply_complete_lists_and_changes_from_the_held_sequence() {
    let mut p = push(1);
    p.blocked_agents = Some(pb::BlockedAgentsPart {
        complete: true,
        from_seq: 0,
        seq: 10,
        epoch: 7,
        blocked: vec![blocked("a", true, Some(500)), blocked("b", false, None)],
        cleared: vec![],
    });
    let h = Held::default().apply(&p, 100).unwrap();
    assert_eq!(h.blocked_agents.seq, 10);
    assert!(h.blocked_agents.get("a", 100).unwrap().revoked);
    assert!(h.blocked_agents.get("a", 500).is_none(), "expired entry");

    // Changes from 10: b resumed, c revoked.
    let mut p = push(2);
    p.blocked_agents = Some(pb::BlockedAgentsPart {
        complete: false,
        from_seq: 10,
        seq: 11,
        epoch: 7,
        blocked: vec![blocked("c", true, Some(900))],
        cleared: vec!["b".into()],
    });
    let h2 = h.apply(&p, 100).unwrap();
    assert!(h2.blocked_agents.get("b", 100).is_none());
    assert!(h2.blocked_agents.get("c", 100).is_some());
    assert_eq!(h2.digests().blocked_agents_seq, 11);

    // The same changes again do not apply on top of 11.
    let e = h2.apply(&p, 100).unwrap_err();
    let (part, why) = (e.part(), e.to_string());
    assert_eq!(part, pb::MeshPart::BlockedAgents);
    assert!(why.contains("from 10"), "{why}");
    // Nor changes from another epoch (another control plane process).
    let mut other = p.clone();
    if let Some(b) = other.blocked_agents.as_mut() {
        b.epoch = 8;
    }
    assert!(h.apply(&other, 100).is_err());

    // A bad id or status is refused.
    let mut p = push(3);
    p.blocked_agents = Some(pb::BlockedAgentsPart {
        complete: true,
        from_seq: 0,
        seq: 12,
        epoch: 7,
        blocked: vec![blocked("Not An Id", true, None)],
        cleared: vec![],
    });
    assert_eq!(
        h2.apply(&p, 100).unwrap_err().part(),
        pb::MeshPart::BlockedAgents
    );

    // What is persisted reloads to the same state.
    let again = Held::default().apply(&h2.to_push(), 100).unwrap();
    assert_eq!(again.blocked_agents.agents, h2.blocked_agents.agents);
    assert_eq!(again.digests(), h2.digests());
}
