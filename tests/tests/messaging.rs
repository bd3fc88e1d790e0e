//! Agent-to-agent messages end to end: a control plane whose policy lets
//! coders message reviewers, real sidecars over mTLS, the recipient's two
//! replicas sharing a replay cache in a real Redis.

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Endpoint;
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::messaging_peer_service_client::MessagingPeerServiceClient;
use warden_sidecar::app::Running as Sidecar;
use warden_sidecar::config::ReplayCacheKind;
use warden_tests::messaging::client;
use warden_tests::redis::PrivateRedis;
use warden_tests::{Mesh, apply_policy, assert_refused, eventually, rand_suffix};

const POLICY: &str = r#"
version: 1
messaging:
  max_age: 5m
  allow:
    - { from: "type:coder", to: "type:reviewer" }
    - { from: "agent:reviewer", to: "agent:coder" }
"#;

type Client = warden_tests::messaging::MessagingClient;

/// A control plane holding `POLICY`.
async fn with_policy() -> Mesh {
    let mesh = Mesh::start().await.expect("a control plane");
    mesh.admin()
        .await
        .expect("an admin client")
        .apply_policy(apply_policy(POLICY))
        .await
        .expect("the policy applied");
    mesh
}

async fn register(mesh: &Mesh, id: &str, agent_type: &str) -> anyhow::Result<()> {
    mesh.admin()
        .await?
        .register_agent(pb::RegisterAgentRequest {
            id: id.into(),
            agent_type: agent_type.into(),
            owner: "team".into(),
            max_concurrent_sessions: 8,
            allowed_scopes: vec!["data:read".into()],
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// Starts a sidecar for `agent` with a messaging listener, `peers`, an
/// inbox of `inbox_capacity` messages and a replay cache (Redis at `redis`,
/// if given, with its fail mode).
async fn sidecar(
    mesh: &Mesh,
    agent: &str,
    peers: &[(&str, &Sidecar)],
    redis: Option<(&str, &str, warden_sidecar::a2a::replay::OnFailure)>,
    inbox_capacity: usize,
) -> anyhow::Result<Sidecar> {
    mesh.messaging_sidecar(agent, peers, |c| {
        c.messaging.inbox_capacity = inbox_capacity;
        if let Some((url, prefix, on_failure)) = redis {
            let mut r = warden_sidecar::gateway::limit::redis::RedisConfig::new(url);
            r.key_prefix = prefix.into();
            r.timeout_ms = 200;
            c.redis = Some(r);
            c.messaging.replay_cache = ReplayCacheKind::Redis;
            c.messaging.on_redis_failure = on_failure;
        }
    })
    .await
}

fn send(to: &str, text: &str) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        recipient_agent: to.into(),
        payload: text.as_bytes().to_vec(),
        content_type: "text/plain".into(),
    }
}

fn sign(to: &str, text: &str) -> pb::SignMessageRequest {
    pb::SignMessageRequest {
        recipient_agent: to.into(),
        payload: text.as_bytes().to_vec(),
        content_type: "text/plain".into(),
    }
}

fn verify(e: &pb::Envelope) -> pb::VerifyMessageRequest {
    pb::VerifyMessageRequest {
        envelope: Some(e.clone()),
    }
}

async fn signed(c: &mut Client, to: &str, text: &str) -> pb::Envelope {
    c.sign_message(sign(to, text))
        .await
        .expect("signed")
        .into_inner()
        .envelope
        .expect("an envelope")
}

/// Messages the replica checked in its own memory because Redis failed.
fn fallbacks(sc: &Sidecar) -> u64 {
    match sc.messenger.replay() {
        warden_sidecar::a2a::replay::ReplayCache::Redis { fallbacks, .. } => {
            fallbacks.load(std::sync::atomic::Ordering::Relaxed)
        }
        warden_sidecar::a2a::replay::ReplayCache::Local(_) => 0,
    }
}

/// Every pair key a sidecar holds names its own agent.
fn holds_only_its_own_pairs(sc: &Sidecar, me: &str) -> usize {
    let held = sc.auth.state().held();
    let mut n = 0;
    for (s, to) in &held.pair_keys.pairs {
        for r in to.keys() {
            assert!(s == me || r == me, "{me}'s sidecar holds {s}->{r}");
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_are_delivered_verified_and_every_abuse_is_refused() {
    let redis = PrivateRedis::start().await.unwrap();
    let prefix = format!("warden-test-{}:", rand_suffix());
    let mesh = with_policy().await;
    for (id, t) in [
        ("coder", "coder"),
        ("reviewer", "reviewer"),
        ("mallory", "intruder"),
    ] {
        register(&mesh, id, t).await.unwrap();
    }
    use warden_sidecar::a2a::replay::OnFailure;
    let url = redis.url();
    let rev1 = sidecar(
        &mesh,
        "reviewer",
        &[],
        Some((&url, &prefix, OnFailure::FailClosed)),
        2,
    )
    .await
    .unwrap();
    let rev2 = sidecar(
        &mesh,
        "reviewer",
        &[],
        Some((&url, &prefix, OnFailure::LocalFallback)),
        16,
    )
    .await
    .unwrap();
    let coder = sidecar(&mesh, "coder", &[("reviewer", &rev1)], None, 16)
        .await
        .unwrap();
    let mallory = sidecar(&mesh, "mallory", &[("reviewer", &rev1)], None, 16)
        .await
        .unwrap();

    // Keys: coder->reviewer and reviewer->coder, three epochs each, on both
    // sides; nothing for mallory; nobody holds a stranger's pair.
    assert_eq!(holds_only_its_own_pairs(&coder, "coder"), 2);
    assert_eq!(holds_only_its_own_pairs(&rev1, "reviewer"), 2);
    assert_eq!(holds_only_its_own_pairs(&mallory, "mallory"), 0);

    let (mut c, mut r1, mut r2, mut m) = (
        client(&coder).await.unwrap(),
        client(&rev1).await.unwrap(),
        client(&rev2).await.unwrap(),
        client(&mallory).await.unwrap(),
    );

    // Nobody receiving yet: the inbox (capacity 2) fills, then refuses.
    for i in 0..2 {
        c.send_message(send("reviewer", &format!("queued {i}")))
            .await
            .unwrap();
    }
    assert_refused(
        c.send_message(send("reviewer", "one too many")).await,
        Code::ResourceExhausted,
        "MESSAGE_INBOX_FULL",
    );
    let mut inbox = r1
        .receive_messages(pb::ReceiveMessagesRequest {})
        .await
        .unwrap()
        .into_inner();
    for i in 0..2 {
        let m = inbox.next().await.unwrap().unwrap().message.unwrap();
        assert_eq!(m.payload, format!("queued {i}").as_bytes());
    }

    // Delivery: the reviewer's agent receives the verified message.
    let sent = c
        .send_message(send("reviewer", "please review PR 42"))
        .await
        .unwrap()
        .into_inner()
        .envelope
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), inbox.next())
        .await
        .expect("delivered in time")
        .unwrap()
        .unwrap()
        .message
        .unwrap();
    assert_eq!(got.sender_agent_id, "coder");
    assert_eq!(got.sender_spiffe_id, "spiffe://test.warden/agent/coder");
    assert_eq!(got.payload, b"please review PR 42");
    assert_eq!(got.content_type, "text/plain");
    assert_eq!(got.checks.last().map(String::as_str), Some("replay"));

    // The delivered envelope replayed, at either replica: refused.
    assert_refused(
        r1.verify_message(verify(&sent)).await,
        Code::AlreadyExists,
        "MESSAGE_REPLAYED",
    );
    assert_refused(
        r2.verify_message(verify(&sent)).await,
        Code::AlreadyExists,
        "MESSAGE_REPLAYED",
    );
    // An envelope verified at one replica is a replay at the other.
    let e = signed(&mut c, "reviewer", "second").await;
    let v = r2
        .verify_message(verify(&e))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(v.payload, b"second");
    assert_refused(
        r1.verify_message(verify(&e)).await,
        Code::AlreadyExists,
        "MESSAGE_REPLAYED",
    );

    // Tampered: one payload byte, the MAC, the sender, the recipient, the
    // key id.
    let e = signed(&mut c, "reviewer", "third").await;
    type Change = fn(&mut pb::Envelope);
    let tampered: [(Change, Code, &str); 5] = [
        (
            |t| t.payload[0] ^= 1,
            Code::Unauthenticated,
            "MESSAGE_BAD_MAC",
        ),
        (|t| t.mac[0] ^= 1, Code::Unauthenticated, "MESSAGE_BAD_MAC"),
        (
            |t| t.sender = "spiffe://test.warden/agent/mallory".into(),
            Code::PermissionDenied,
            "MESSAGE_PAIR_NOT_ALLOWED",
        ),
        (
            |t| t.recipient = "spiffe://test.warden/agent/mallory".into(),
            Code::PermissionDenied,
            "MESSAGE_WRONG_RECIPIENT",
        ),
        (
            |t| t.key_id += 7,
            Code::PermissionDenied,
            "MESSAGE_UNKNOWN_KEY",
        ),
    ];
    for (change, code, why) in tampered {
        let mut t = e.clone();
        change(&mut t);
        assert_refused(r1.verify_message(verify(&t)).await, code, why);
    }
    // ... and a message for the reviewer, at mallory's sidecar.
    assert_refused(
        m.verify_message(verify(&e)).await,
        Code::PermissionDenied,
        "MESSAGE_WRONG_RECIPIENT",
    );
    // None of these spent the genuine message's nonce.
    r1.verify_message(verify(&e)).await.unwrap();

    // Unauthorised: mallory may message nobody; the reviewer may not
    // message mallory.
    assert_refused(
        m.sign_message(sign("reviewer", "hi")).await,
        Code::PermissionDenied,
        "MESSAGE_PAIR_NOT_ALLOWED",
    );
    assert_refused(
        m.send_message(send("reviewer", "hi")).await,
        Code::PermissionDenied,
        "MESSAGE_PAIR_NOT_ALLOWED",
    );
    assert_refused(
        r1.sign_message(sign("mallory", "hi")).await,
        Code::PermissionDenied,
        "MESSAGE_PAIR_NOT_ALLOWED",
    );
    assert_refused(
        c.send_message(send("mallory", "hi")).await,
        Code::FailedPrecondition,
        "MESSAGE_PEER_UNREACHABLE",
    );

    // mTLS: mallory's sidecar handing over coder's envelope is refused by
    // the reviewer's sidecar (the client certificate is not the sender's).
    let e = signed(&mut c, "reviewer", "relayed").await;
    let tls = std::sync::Arc::new(warden_sidecar::a2a::peer::PeerTls::new(
        mallory.identity.clone(),
    ));
    let relay = warden_sidecar::a2a::peer::PeerClient::new(
        std::sync::Arc::clone(&tls),
        [(
            "reviewer".to_owned(),
            rev1.messaging_addr.unwrap().to_string(),
        )]
        .into(),
    );
    let reviewer_id =
        warden_shared::spiffe::SpiffeId::parse("spiffe://test.warden/agent/reviewer").unwrap();
    let ch = relay.channel("reviewer", &reviewer_id).unwrap();
    assert_refused(
        MessagingPeerServiceClient::new(ch)
            .deliver(pb::DeliverRequest {
                envelope: Some(e.clone()),
            })
            .await,
        Code::PermissionDenied,
        "WRONG_PRINCIPAL",
    );
    // ... and a sender's sidecar refuses a server that is not the recipient.
    let impostor = warden_sidecar::a2a::peer::PeerClient::new(
        tls,
        [(
            "reviewer".to_owned(),
            coder.messaging_addr.unwrap().to_string(),
        )]
        .into(),
    );
    let ch = impostor.channel("reviewer", &reviewer_id).unwrap();
    let err = MessagingPeerServiceClient::new(ch)
        .deliver(pb::DeliverRequest {
            envelope: Some(e.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    // The replay cache fails closed at replica 1 and falls back to memory
    // at replica 2 when Redis is gone.
    let mut redis = redis;
    redis.stop();
    let e2 = signed(&mut c, "reviewer", "during the outage").await;
    assert_refused(
        r1.verify_message(verify(&e2)).await,
        Code::Unavailable,
        "REPLAY_CACHE_UNAVAILABLE",
    );
    r2.verify_message(verify(&e2)).await.unwrap();
    assert_refused(
        r2.verify_message(verify(&e2)).await,
        Code::AlreadyExists,
        "MESSAGE_REPLAYED",
    );

    // Redis back: the nonce accepted from memory during the outage is still
    // a replay at that replica (once Redis answers it again).
    redis.restart().await.unwrap();
    let rev2_ref = &rev2;
    let answered = eventually(Duration::from_secs(10), || {
        let (mut c, mut r2) = (c.clone(), r2.clone());
        let before = fallbacks(rev2_ref);
        async move {
            let e = signed(&mut c, "reviewer", "probe").await;
            r2.verify_message(verify(&e)).await.is_ok() && fallbacks(rev2_ref) == before
        }
    })
    .await;
    assert!(answered, "Redis did not come back");
    assert_refused(
        r2.verify_message(verify(&e2)).await,
        Code::AlreadyExists,
        "MESSAGE_REPLAYED",
    );

    // A policy change that drops a rule drops the pair's keys.
    let one_way = POLICY.replace(
        "    - { from: \"agent:reviewer\", to: \"agent:coder\" }\n",
        "",
    );
    assert_ne!(one_way, POLICY);
    mesh.admin()
        .await
        .unwrap()
        .apply_policy(apply_policy(&one_way))
        .await
        .unwrap();
    // Both ends must have applied the push (the sender's sidecar is the
    // one that refuses to sign).
    let dropped = eventually(Duration::from_secs(5), || async {
        [&coder, &rev1].iter().all(|sc| {
            sc.auth
                .state()
                .held()
                .pair_keys
                .of("reviewer", "coder")
                .is_none()
        })
    })
    .await;
    assert!(dropped, "the reviewer->coder keys are still held");
    assert_eq!(holds_only_its_own_pairs(&coder, "coder"), 1);
    assert_refused(
        r1.sign_message(sign("coder", "hi")).await,
        Code::PermissionDenied,
        "MESSAGE_PAIR_NOT_ALLOWED",
    );

    // Suspending the sender removes its keys everywhere; resuming brings
    // them back.
    let pending = signed(&mut c, "reviewer", "before the suspension").await;
    mesh.admin()
        .await
        .unwrap()
        .suspend_agent(pb::SuspendAgentRequest {
            id: "coder".into(),
            reason: "investigating".into(),
        })
        .await
        .unwrap();
    let gone = eventually(Duration::from_secs(5), || async {
        rev1.auth
            .state()
            .held()
            .pair_keys
            .of("coder", "reviewer")
            .is_none()
    })
    .await;
    assert!(gone, "a suspended agent's keys are still held");
    assert_refused(
        r1.verify_message(verify(&pending)).await,
        Code::PermissionDenied,
        "MESSAGE_SENDER_BLOCKED",
    );
    mesh.admin()
        .await
        .unwrap()
        .resume_agent(pb::ResumeAgentRequest { id: "coder".into() })
        .await
        .unwrap();
    let back = eventually(Duration::from_secs(5), || async {
        rev1.auth
            .state()
            .held()
            .pair_keys
            .of("coder", "reviewer")
            .is_some()
            && rev1
                .auth
                .state()
                .held()
                .blocked_agents
                .get("coder", 0)
                .is_none()
    })
    .await;
    assert!(back, "a resumed agent's keys did not come back");
    // (Replica 1 reconnects to the restarted Redis by itself.)
    let accepted = eventually(Duration::from_secs(10), || {
        let mut r1 = r1.clone();
        let pending = pending.clone();
        async move { r1.verify_message(verify(&pending)).await.is_ok() }
    })
    .await;
    assert!(accepted, "the resumed agent's message was not accepted");

    // Revoking the sender: every sidecar refuses its messages, and the pair
    // keys disappear from the reviewer's sidecar through the stream.
    mesh.admin()
        .await
        .unwrap()
        .revoke_agent(pb::RevokeAgentRequest {
            id: "coder".into(),
            reason: "compromised".into(),
        })
        .await
        .unwrap();
    let gone = eventually(Duration::from_secs(5), || async {
        rev2.auth.state().held().pair_keys.pairs.is_empty()
            && rev1.auth.state().held().pair_keys.pairs.is_empty()
    })
    .await;
    assert!(gone, "the revoked agent's pair keys are still held");
    assert_refused(
        r2.verify_message(verify(&e)).await,
        Code::PermissionDenied,
        "MESSAGE_SENDER_BLOCKED",
    );
    assert_refused(
        c.sign_message(sign("reviewer", "still here?")).await,
        Code::PermissionDenied,
        "AGENT_REVOKED",
    );

    // Every message decision reaches the control plane's audit log, from
    // the sidecar that made it: signatures (allowed and refused), deliveries,
    // verifications; never the payload.
    let kinds = || async {
        let mut feed = mesh
            .admin()
            .await
            .unwrap()
            .export_audit(pb::ExportAuditRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut seen = Vec::new();
        while let Some(page) = feed.message().await.unwrap() {
            for e in page.entries {
                let text = String::from_utf8(e.record).unwrap();
                assert!(!text.contains("still here?"), "a payload in {text}");
                let r = warden_shared::audit::Record::from_bytes(text.as_bytes()).unwrap();
                if r.event.kind.starts_with("message.") {
                    seen.push((r.event.kind, r.event.agent, r.event.outcome));
                }
            }
        }
        seen
    };
    let shipped = warden_tests::eventually(Duration::from_secs(20), || async {
        let seen = kinds().await;
        let has =
            |k: &str, a: &str, o: &str| seen.iter().any(|s| s == &(k.into(), a.into(), o.into()));
        has("message.signed", "coder", "allowed")
            && has("message.signed", "mallory", "denied")
            && has("message.delivered", "reviewer", "allowed")
            && has("message.verified", "reviewer", "denied")
            && seen
                .iter()
                .any(|(k, a, _)| k != "message.signed" && a == "reviewer")
    })
    .await;
    assert!(shipped, "{:?}", kinds().await);

    for sc in [coder, rev1, rev2, mallory] {
        sc.shutdown().await.unwrap();
    }
}

/// Calls `f` until it is refused with `AUDIT_UNAVAILABLE` (its events
/// filled the audit spool); the number of calls it took.
async fn until_unrecordable<T, F>(mut f: impl FnMut() -> F) -> usize
where
    F: std::future::Future<Output = Result<T, tonic::Status>>,
{
    for n in 1..=2_000 {
        if let Err(s) = f().await
            && warden_tests::reason(&s) == "AUDIT_UNAVAILABLE"
        {
            return n;
        }
    }
    panic!("2,000 refused messages did not fill a 64 KiB audit spool");
}

#[tokio::test]
async fn a_message_whose_decision_cannot_be_recorded_is_refused_until_the_spool_drains() {
    let mesh = with_policy().await;
    register(&mesh, "coder", "coder").await.unwrap();
    register(&mesh, "reviewer", "reviewer").await.unwrap();
    let small = |c: &mut warden_sidecar::config::Config| c.audit.spool_max_bytes = 64 << 10;
    let rev = mesh
        .messaging_sidecar("reviewer", &[], small)
        .await
        .unwrap();
    let coder = mesh
        .messaging_sidecar("coder", &[("reviewer", &rev)], small)
        .await
        .unwrap();
    let (mut c, mut r) = (client(&coder).await.unwrap(), client(&rev).await.unwrap());
    // Signed while the spool has room, verified only later.
    let early = signed(&mut c, "reviewer", "signed early").await;
    let mut refused = Vec::new();
    let mesh = mesh
        .while_down(|| async {
            // With the control plane away, events stay in the spools. Refused
            // messages are recorded too, and fill them. The recipient's first:
            // refused verifications fill its spool, then a message it would
            // accept is refused, its nonce not spent.
            let garbage = pb::Envelope {
                sender: "spiffe://warden.local/agent/coder".into(),
                ..Default::default()
            };
            let n = until_unrecordable(|| {
                let mut r = r.clone();
                let g = garbage.clone();
                async move { r.verify_message(verify(&g)).await }
            })
            .await;
            assert!(n > 20, "{n}");
            refused.push(r.verify_message(verify(&early)).await.map(|_| ()));
            // A delivery to it is refused there, and the sender is told why.
            refused.push(c.send_message(send("reviewer", "late")).await.map(|_| ()));
            // Then the sender's: once its spool is full, a message it would
            // sign is refused, and so is a send: nothing leaves unrecorded.
            let n = until_unrecordable(|| {
                let mut c = c.clone();
                async move { c.sign_message(sign("nobody", "x")).await }
            })
            .await;
            assert!(n > 20, "{n}");
            refused.push(c.sign_message(sign("reviewer", "late")).await.map(|_| ()));
            refused.push(c.send_message(send("reviewer", "late")).await.map(|_| ()));
        })
        .await
        .unwrap();
    assert!(rev.inbox.is_empty(), "the refused delivery was not taken");
    for (i, e) in refused.into_iter().enumerate() {
        let s = match e {
            Ok(v) => panic!("refusal {i}: served {v:?}"),
            Err(s) => s,
        };
        assert_eq!(
            (s.code(), warden_tests::reason(&s).as_str()),
            (Code::Unavailable, "AUDIT_UNAVAILABLE"),
            "refusal {i}: {}",
            s.message()
        );
    }
    // Once the spools drain, the same message verifies (once) and signing
    // works again.
    let verified = eventually(Duration::from_secs(30), || {
        let mut r = r.clone();
        let e = early.clone();
        async move { r.verify_message(verify(&e)).await.is_ok() }
    })
    .await;
    assert!(
        verified,
        "the early message verifies once the spool drained"
    );
    assert_refused(
        r.verify_message(verify(&early)).await,
        Code::AlreadyExists,
        "MESSAGE_REPLAYED",
    );
    let signs = eventually(Duration::from_secs(30), || {
        let mut c = c.clone();
        async move { c.sign_message(sign("reviewer", "again")).await.is_ok() }
    })
    .await;
    assert!(signs, "signing works again once the spool drained");
    // The log holds the refusals of the early message and then its one
    // verification.
    let id: String = early.nonce.iter().map(|b| format!("{b:02x}")).collect();
    let allowed = ("allowed".to_owned(), String::new());
    let logged = eventually(Duration::from_secs(30), || async {
        verified_events(&mesh, &id)
            .await
            .last()
            .is_some_and(|(_, r)| r == "MESSAGE_REPLAYED")
    })
    .await;
    let events = verified_events(&mesh, &id).await;
    assert!(logged, "{events:?}");
    // Refused (once, or more while the spool drained), verified once, and
    // the replay above refused.
    let [refusals @ .., verified, replayed] = events.as_slice() else {
        panic!("{events:?}");
    };
    assert_eq!(verified, &allowed, "{events:?}");
    assert_eq!(
        replayed,
        &("denied".to_owned(), "MESSAGE_REPLAYED".to_owned()),
        "{events:?}"
    );
    assert!(!refusals.is_empty(), "{events:?}");
    assert!(
        refusals
            .iter()
            .all(|(o, r)| o == "denied" && r == "AUDIT_UNAVAILABLE"),
        "{events:?}"
    );
}

/// The outcomes and reasons of the `message.verified` events of message
/// `id` in the control plane's log.
async fn verified_events(mesh: &Mesh, id: &str) -> Vec<(String, String)> {
    mesh.audit_records()
        .await
        .expect("the audit log exported")
        .into_iter()
        .filter(|r| {
            r.event.kind == "message.verified"
                && r.event.detail.get("message_id").map(String::as_str) == Some(id)
        })
        .map(|r| (r.event.outcome, r.event.reason))
        .collect()
}

#[tokio::test]
async fn a_bad_messaging_section_is_refused_with_its_reason() {
    let mesh = Mesh::start().await.unwrap();
    let bad = "version: 1\nmessaging:\n  allow: [{from: coder, to: '*'}]\n";
    assert_refused(
        mesh.admin()
            .await
            .unwrap()
            .apply_policy(apply_policy(bad))
            .await,
        Code::InvalidArgument,
        "POLICY_MESSAGING",
    );
}

/// Accepts any server certificate: the test is about what the server
/// refuses.
#[derive(Debug)]
struct AnyServer(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[tokio::test]
async fn the_delivery_listener_refuses_clients_without_a_mesh_certificate() {
    let mesh = with_policy().await;
    register(&mesh, "reviewer", "reviewer").await.unwrap();
    let rev = sidecar(&mesh, "reviewer", &[], None, 4).await.unwrap();
    let addr = rev.messaging_addr.unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = || {
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(AnyServer(
                std::sync::Arc::clone(&provider),
            )))
    };
    // A certificate from another CA that claims a mesh identity's name is
    // as good as none.
    let pki = warden_tests::upstream::TestPki::new().unwrap();
    let chain = rustls_pemfile::certs(&mut pki.client.0.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut pki.client.1.as_bytes())
        .unwrap()
        .unwrap();
    let configs = [
        ("no client certificate", builder().with_no_client_auth()),
        (
            "a certificate of another CA",
            builder().with_client_auth_cert(chain, key).unwrap(),
        ),
    ];
    for (case, mut config) in configs {
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let ch = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                let connector = connector.clone();
                async move {
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    let name = rustls::pki_types::ServerName::try_from("peer").unwrap();
                    let tls = connector.connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                }
            }));
        let err = MessagingPeerServiceClient::new(ch)
            .deliver(pb::DeliverRequest {
                envelope: Some(pb::Envelope::default()),
            })
            .await
            .unwrap_err();
        // Refused by the TLS layer: the service never ran.
        assert_eq!(
            warden_shared::refusal::reason_of(&err),
            None,
            "{case}: {err:?}"
        );
        let why = format!("{err:?}");
        assert!(why.contains("received fatal alert"), "{case}: {why}");
    }
    assert_eq!(
        rev.inbox.queued.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
