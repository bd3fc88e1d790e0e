//! Every refusal of signing and verifying, with its exact reason, against
//! keys pushed the way the control plane pushes them.

use super::*;
use crate::gateway::authenticate::Authenticator;
use warden_shared::a2a::MasterKey;

const ROT: u64 = 3_600_000;
/// Twenty minutes into epoch 100.
const NOW: i64 = 100 * 3_600_000 + 1_200_000;

fn td() -> TrustDomain {
    TrustDomain::new("warden.local").unwrap()
}

fn master() -> MasterKey {
    MasterKey::new(&[42; 32]).unwrap()
}

/// The keys of `pairs` (epochs 98 to 101), as pushed.
fn part(pairs: &[(&str, &str)]) -> pb::PairKeysPart {
    let (td, m) = (td(), master());
    let mut keys = Vec::new();
    for (s, r) in pairs {
        let (sa, ra) = (AgentId::new(s).unwrap(), AgentId::new(r).unwrap());
        for epoch in 98..=101u64 {
            let start = i64::try_from(epoch * ROT).unwrap();
            keys.push(pb::PairKey {
                sender: (*s).into(),
                recipient: (*r).into(),
                epoch,
                key: m
                    .pair_key(&td.agent(&sa), &td.agent(&ra), ROT, epoch)
                    .as_bytes()
                    .to_vec(),
                not_before_ms: start,
                not_after_ms: start + 3_600_000,
            });
        }
    }
    pb::PairKeysPart {
        digest: 1,
        keys,
        settings: Some(pb::MessagingSettings {
            rotation_ms: ROT,
            grace_ms: 300_000,
            max_age_ms: 900_000,
            max_skew_ms: 30_000,
            max_payload_bytes: 1024,
        }),
    }
}

fn messenger(me: &str, pairs: &[(&str, &str)], blocked: &[&str]) -> Messenger {
    let audience = td().agent(&AgentId::new(me).unwrap()).to_string();
    let auth = Arc::new(Authenticator::new(
        "cp".into(),
        audience,
        None,
        Arc::new(crate::state::State::new(None)),
    ));
    let push = pb::StreamResponse {
        version: 1,
        pair_keys: Some(part(pairs)),
        blocked_agents: Some(pb::BlockedAgentsPart {
            complete: true,
            seq: 1,
            epoch: 1,
            blocked: blocked
                .iter()
                .map(|a| pb::BlockedAgent {
                    agent_id: (*a).into(),
                    status: pb::AgentStatus::Revoked.into(),
                    until: None,
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    // Keys held for an hour already: messages signed since are accepted.
    crate::mesh::apply(auth.state(), auth.agent_id(), &push, NOW / 1000 - 3600).unwrap();
    Messenger::new(
        td(),
        AgentId::new(me).unwrap(),
        Arc::clone(auth.state()),
        replay::ReplayCache::Local(replay::Local::new(1000)),
    )
}

/// coder → rev and ops → rev are allowed; rev → coder too.
const PAIRS: [(&str, &str); 3] = [("coder", "rev"), ("ops", "rev"), ("rev", "coder")];

fn signed(at: i64) -> pb::Envelope {
    let coder = messenger("coder", &[("coder", "rev")], &[]);
    let e = coder
        .sign(
            "rev",
            b"please review PR 42".to_vec(),
            "text/plain".into(),
            at,
        )
        .unwrap();
    pb::Envelope::from(&e)
}

async fn refusal(m: &Messenger, e: &pb::Envelope, at: i64) -> Reason {
    m.verify(e, at).await.unwrap_err().reason
}

#[tokio::test]
async fn a_signed_message_verifies_once() {
    let rev = messenger("rev", &PAIRS, &[]);
    let e = signed(NOW);
    assert_eq!(e.key_id, 100);
    let v = rev.verify(&e, NOW + 50).await.unwrap();
    assert_eq!(v.sender.as_str(), "coder");
    assert_eq!(v.envelope.payload, b"please review PR 42");
    let wire = pb::VerifiedMessage::from(&v);
    assert_eq!(wire.checks.len(), CHECKS.len());
    assert_eq!(wire.sender_spiffe_id, "spiffe://warden.local/agent/coder");
    // The replay is refused, and so is one a minute later.
    assert_eq!(refusal(&rev, &e, NOW + 60).await, Reason::MessageReplayed);
    assert_eq!(
        refusal(&rev, &e, NOW + 60_000).await,
        Reason::MessageReplayed
    );
}

#[tokio::test]
async fn tampering_is_refused_with_its_reason() {
    let rev = messenger("rev", &PAIRS, &[]);
    let good = signed(NOW);
    type Change = Box<dyn Fn(&mut pb::Envelope)>;
    let cases: Vec<(&str, Change, Reason)> = vec![
        (
            "forged mac",
            Box::new(|e| e.mac[7] ^= 0x40),
            Reason::MessageBadMac,
        ),
        (
            "payload byte",
            Box::new(|e| e.payload[0] ^= 1),
            Reason::MessageBadMac,
        ),
        (
            "sender swapped for another allowed peer",
            Box::new(|e| e.sender = "spiffe://warden.local/agent/ops".into()),
            Reason::MessageBadMac,
        ),
        (
            "sender swapped for a stranger",
            Box::new(|e| e.sender = "spiffe://warden.local/agent/mallory".into()),
            Reason::MessagePairNotAllowed,
        ),
        (
            "sender from another trust domain",
            Box::new(|e| e.sender = "spiffe://evil.example/agent/coder".into()),
            Reason::MessagePairNotAllowed,
        ),
        (
            "recipient changed",
            Box::new(|e| e.recipient = "spiffe://warden.local/agent/ops".into()),
            Reason::MessageWrongRecipient,
        ),
        (
            "timestamp moved",
            Box::new(|e| e.timestamp_ms -= 1),
            Reason::MessageBadMac,
        ),
        (
            "unknown key id",
            Box::new(|e| e.key_id = 7),
            Reason::MessageUnknownKey,
        ),
        (
            "next key id",
            Box::new(|e| e.key_id = 101),
            Reason::MessageBadMac,
        ),
        (
            "nonce cut",
            Box::new(|e| e.nonce.truncate(8)),
            Reason::MessageMalformed,
        ),
        (
            "version",
            Box::new(|e| e.version = 9),
            Reason::MessageMalformed,
        ),
        (
            "no mac",
            Box::new(|e| e.mac.clear()),
            Reason::MessageMalformed,
        ),
        (
            "too large",
            Box::new(|e| e.payload = vec![b'x'; 1025]),
            Reason::MessageTooLarge,
        ),
    ];
    for (name, change, want) in cases {
        let mut e = good.clone();
        change(&mut e);
        assert_eq!(refusal(&rev, &e, NOW + 10).await, want, "{name}");
    }
    // None of them spent the nonce: the genuine message still verifies.
    rev.verify(&good, NOW + 10).await.unwrap();
}

#[tokio::test]
async fn a_message_for_another_agent_is_refused_there() {
    let ops = messenger("ops", &[("coder", "ops")], &[]);
    assert_eq!(
        refusal(&ops, &signed(NOW), NOW).await,
        Reason::MessageWrongRecipient
    );
}

#[tokio::test]
async fn stale_and_future_messages_are_refused() {
    let rev = messenger("rev", &PAIRS, &[]);
    // max_age 15 min, max_skew 30 s.
    let old = signed(NOW - 900_001);
    assert_eq!(refusal(&rev, &old, NOW).await, Reason::MessageStale);
    rev.verify(&signed(NOW - 899_000), NOW).await.unwrap();
    let ahead = signed(NOW + 30_001);
    assert_eq!(refusal(&rev, &ahead, NOW).await, Reason::MessageFromFuture);
    rev.verify(&signed(NOW + 29_000), NOW).await.unwrap();
}

#[tokio::test]
async fn the_previous_epoch_verifies_only_within_the_grace_period() {
    let rev = messenger("rev", &PAIRS, &[]);
    // Signed one second before epoch 100 began, with epoch 99's key.
    let start = 100 * 3_600_000;
    let e = signed(start - 1000);
    assert_eq!(e.key_id, 99);
    // Grace is 5 minutes after the epoch's end.
    rev.verify(&e, start + 299_000).await.unwrap();
    let e = signed(start - 2000);
    assert_eq!(
        refusal(&rev, &e, start + 300_000).await,
        Reason::MessageKeyExpired
    );
}

#[tokio::test]
async fn pairs_policy_does_not_allow_and_blocked_senders_are_refused() {
    // rev may not message ops: no key, nothing signed.
    let rev = messenger("rev", &PAIRS, &[]);
    let r = rev
        .sign("ops", b"hi".to_vec(), String::new(), NOW)
        .unwrap_err();
    assert_eq!(r.reason, Reason::MessagePairNotAllowed);
    assert_eq!(
        rev.sign("Not An Id", vec![], String::new(), NOW)
            .unwrap_err()
            .reason,
        Reason::InvalidArgument
    );
    assert_eq!(
        rev.sign("coder", vec![0; 1025], String::new(), NOW)
            .unwrap_err()
            .reason,
        Reason::MessageTooLarge
    );
    // A recipient without the pair's key refuses what a sender signed.
    let lonely = messenger("rev", &[("rev", "coder")], &[]);
    assert_eq!(
        refusal(&lonely, &signed(NOW), NOW).await,
        Reason::MessagePairNotAllowed
    );
    // A revoked sender: refused even while its key is still held.
    let wary = messenger("rev", &PAIRS, &["coder"]);
    assert_eq!(
        refusal(&wary, &signed(NOW), NOW).await,
        Reason::MessageSenderBlocked
    );
}

#[test]
fn a_sidecar_refuses_keys_of_pairs_it_is_not_part_of() {
    let audience = td().agent(&AgentId::new("rev").unwrap()).to_string();
    let auth = Authenticator::new(
        "cp".into(),
        audience,
        None,
        Arc::new(crate::state::State::new(None)),
    );
    let push = pb::StreamResponse {
        version: 1,
        pair_keys: Some(part(&[("coder", "rev"), ("coder", "ops")])),
        ..Default::default()
    };
    let e = crate::mesh::apply(auth.state(), auth.agent_id(), &push, NOW / 1000).unwrap_err();
    let (part, why) = (e.part(), e.to_string());
    assert_eq!(part, pb::MeshPart::PairKeys);
    assert!(why.contains("coder->ops"), "{why}");
    assert!(
        auth.state().held().pair_keys.pairs.is_empty(),
        "nothing applied"
    );
}

#[tokio::test]
async fn messages_signed_before_the_replay_memory_began_are_refused() {
    // A sidecar that got its keys (started) at NOW: its replay memory
    // starts then, so an older message could be a replay it cannot see.
    let audience = td().agent(&AgentId::new("rev").unwrap()).to_string();
    let auth = Arc::new(Authenticator::new(
        "cp".into(),
        audience,
        None,
        Arc::new(crate::state::State::new(None)),
    ));
    let mut push = pb::StreamResponse {
        version: 1,
        pair_keys: Some(part(&PAIRS)),
        ..Default::default()
    };
    crate::mesh::apply(auth.state(), auth.agent_id(), &push, NOW / 1000).unwrap();
    let rev = Messenger::new(
        td(),
        AgentId::new("rev").unwrap(),
        Arc::clone(auth.state()),
        replay::ReplayCache::Local(replay::Local::new(1000)),
    );
    assert_eq!(
        refusal(&rev, &signed(NOW - 5000), NOW + 2000).await,
        Reason::MessageStale
    );
    rev.verify(&signed(NOW + 1000), NOW + 2000).await.unwrap();
    // The same keys pushed again later: nothing moves.
    crate::mesh::apply(auth.state(), auth.agent_id(), &push, NOW / 1000 + 60).unwrap();
    rev.verify(&signed(NOW + 3000), NOW + 4000).await.unwrap();
    // A longer window: nonces remembered under the shorter one may be gone,
    // so only messages signed from now on are accepted.
    if let Some(p) = push.pair_keys.as_mut() {
        p.settings.as_mut().unwrap().max_age_ms += 60_000;
    }
    crate::mesh::apply(auth.state(), auth.agent_id(), &push, NOW / 1000 + 120).unwrap();
    assert_eq!(
        refusal(&rev, &signed(NOW + 5000), NOW + 122_000).await,
        Reason::MessageStale
    );
    rev.verify(&signed(NOW + 121_000), NOW + 122_000)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_sidecar_without_keys_says_to_retry_later() {
    let audience = td().agent(&AgentId::new("rev").unwrap()).to_string();
    let auth = Arc::new(Authenticator::new(
        "cp".into(),
        audience,
        None,
        Arc::new(crate::state::State::new(None)),
    ));
    let rev = Messenger::new(
        td(),
        AgentId::new("rev").unwrap(),
        Arc::clone(auth.state()),
        replay::ReplayCache::Local(replay::Local::new(10)),
    );
    assert_eq!(
        refusal(&rev, &signed(NOW), NOW).await,
        Reason::MessageKeysUnavailable
    );
    let r = rev.sign("coder", vec![1], String::new(), NOW).unwrap_err();
    assert_eq!(
        (r.code(), r.reason),
        (tonic::Code::Unavailable, Reason::MessageKeysUnavailable)
    );
}
