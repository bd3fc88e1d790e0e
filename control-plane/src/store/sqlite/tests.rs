use super::*;

use crate::store::testing::agent;

async fn store() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("w.db"), false)
        .await
        .unwrap();
    (s, dir)
}

fn session(id: &str, agent: &str, exp: i64) -> NewSession {
    NewSession {
        id: id.into(),
        agent_id: AgentId::new(agent).unwrap(),
        user_id: String::new(),
        scopes: "data:read".into(),
        context: "{}".into(),
        jti: format!("j-{id}"),
        thumbprint: "t".into(),
        max_tool_calls: 0,
        created_at: 100,
        expires_at: exp,
    }
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
    // Same kid again: the INSERT fails, so the UPDATE retiring k1 must not stay.
    assert!(s.rotate_signing_key("k1", b"again", 200).await.is_err());
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
