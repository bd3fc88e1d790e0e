//! Agent-to-agent messaging benchmark, in one run:
//!
//! - in process: SHA-256 of the payload plus HMAC-SHA256 over an
//!   envelope's canonical bytes (the baseline: the cryptography alone), then `Envelope::sign`, the sidecar's sign (key lookup,
//!   nonce) and its full verification (every check and the in-process
//!   replay cache), in operations per second on one thread;
//! - through the mesh: a control plane and two sidecars (in this process,
//!   on real sockets, mTLS between the sidecars), agent A's `SendMessage`
//!   until agent B's `ReceiveMessages` stream yields it, one sender and 32
//!   concurrent senders, against `WhoAmI` at sidecar A (one agent-API hop
//!   with a token check) as the floor.
//!
//! Run: `cargo bench -p warden-tests --bench messaging`

#![allow(
    clippy::unwrap_used,
    reason = "a benchmark aborts on any unexpected error"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use warden_shared::a2a::{Envelope, MAC_BYTES, MasterKey};
use warden_shared::agent::AgentId;
use warden_shared::proto::v1 as pb;
use warden_shared::spiffe::TrustDomain;
use warden_sidecar::a2a::{Messenger, replay};
use warden_sidecar::gateway::authenticate::Authenticator;
use warden_tests::messaging::client;
use warden_tests::{Mesh, apply_policy, eventually};

const RUN: Duration = Duration::from_secs(3);
const ROT: u64 = 3_600_000;

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e6
}

/// Runs `op` on this thread for `RUN`; prints operations per second.
fn ops(name: &str, mut op: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN {
        for _ in 0..256 {
            op();
        }
        n += 256;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    println!(
        "  {name:<52} {rate:>10.0} ops/s   {:>6.2} µs/op",
        1e6 / rate
    );
    rate
}

/// A messenger for `me` holding the keys of `pairs` at `now_ms`.
fn messenger(me: &str, pairs: &[(&str, &str)], now_ms: i64) -> Messenger {
    let td = TrustDomain::new("bench.warden").unwrap();
    let master = MasterKey::new(&[7; 32]).unwrap();
    let epoch = warden_shared::a2a::epoch_of(now_ms, ROT);
    let mut keys = Vec::new();
    for (s, r) in pairs {
        let (sa, ra) = (AgentId::new(s).unwrap(), AgentId::new(r).unwrap());
        for e in epoch - 1..=epoch + 1 {
            let start = (e * ROT) as i64;
            keys.push(pb::PairKey {
                sender: (*s).into(),
                recipient: (*r).into(),
                epoch: e,
                key: master
                    .pair_key(&td.agent(&sa), &td.agent(&ra), ROT, e)
                    .as_bytes()
                    .to_vec(),
                not_before_ms: start,
                not_after_ms: start + ROT as i64,
            });
        }
    }
    let me_id = AgentId::new(me).unwrap();
    let auth = Arc::new(Authenticator::new(
        "cp".into(),
        td.agent(&me_id).to_string(),
        None,
        Arc::new(warden_sidecar::state::State::new(None)),
    ));
    let push = pb::StreamResponse {
        version: 1,
        pair_keys: Some(pb::PairKeysPart {
            digest: 1,
            keys,
            settings: Some(pb::MessagingSettings {
                rotation_ms: ROT,
                grace_ms: 300_000,
                max_age_ms: 300_000,
                max_skew_ms: 30_000,
                max_payload_bytes: 64 * 1024,
            }),
        }),
        ..Default::default()
    };
    // Held for a minute already: messages signed now are accepted.
    warden_sidecar::mesh::apply(auth.state(), auth.agent_id(), &push, now_ms / 1000 - 60).unwrap();
    Messenger::new(
        td,
        me_id,
        Arc::clone(auth.state()),
        replay::ReplayCache::Local(replay::Local::new(replay::DEFAULT_LOCAL_MAX)),
    )
}

fn in_process() {
    println!("in process, one thread:");
    let now = warden_sidecar::now_ms();
    let a = messenger("agent-a", &[("agent-a", "agent-b")], now);
    let b = messenger("agent-b", &[("agent-a", "agent-b")], now);
    for size in [256usize, 4096] {
        println!(" payload {size} bytes:");
        let payload = vec![b'x'; size];
        let env = a
            .sign("agent-b", payload.clone(), "text/plain".into(), now)
            .unwrap();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[9; 32]);
        let input = env.signed_bytes();
        // The irreducible cryptography: SHA-256 of the payload, then
        // HMAC-SHA256 of the canonical bytes.
        let base = ops(
            "baseline: SHA-256(payload) + HMAC of the canonical bytes",
            || {
                std::hint::black_box(ring::digest::digest(
                    &ring::digest::SHA256,
                    std::hint::black_box(&payload),
                ));
                std::hint::black_box(ring::hmac::sign(&key, std::hint::black_box(&input)));
            },
        );
        let pk = warden_shared::a2a::PairKey::from_slice(&[9; 32]).unwrap();
        let e2 = Envelope {
            mac: [0; MAC_BYTES],
            ..env.clone()
        };
        ops("Envelope::sign (encode, SHA-256 payload, HMAC)", || {
            std::hint::black_box(e2.clone().sign(&pk));
        });
        let sign = ops("sidecar sign (key lookup, nonce, envelope)", || {
            std::hint::black_box(
                a.sign("agent-b", payload.clone(), "text/plain".into(), now)
                    .unwrap(),
            );
        });
        let wire = pb::Envelope::from(&env);
        let held = b.held();
        let check = ops("sidecar verify, every check but replay", || {
            std::hint::black_box(b.check(&held, &wire, now).unwrap());
        });
        // Distinct envelopes, so that the replay cache accepts each once.
        let many: Vec<pb::Envelope> = (0..200_000)
            .map(|_| {
                pb::Envelope::from(
                    &a.sign("agent-b", payload.clone(), "text/plain".into(), now)
                        .unwrap(),
                )
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut i = 0;
        let verify = ops(
            "sidecar verify, all checks + in-process replay cache",
            || {
                let e = &many[i % many.len()];
                i += 1;
                let r = rt.block_on(b.verify(e, now));
                // Past the prepared set, replays are refused: still a full run.
                std::hint::black_box(r.is_ok());
            },
        );
        println!(
            "  → sign {:.1}× and verify {:.1}× ({:.1}× with replay) the baseline's cost",
            base / sign,
            base / check,
            base / verify
        );
    }
}

fn report(name: &str, lat: &mut [Duration], secs: f64) {
    println!(
        "  {name:<44} {:>8.0} msgs/s   p50 {:>6.0} µs   p99 {:>6.0} µs   p99.9 {:>6.0} µs",
        lat.len() as f64 / secs,
        pct(lat, 0.5),
        pct(lat, 0.99),
        pct(lat, 0.999)
    );
}

async fn through_the_mesh() {
    println!(
        "through the mesh (control plane and two sidecars in this process; mTLS between the sidecars):"
    );
    let mesh = Mesh::start().await.unwrap();
    let policy =
        "version: 1\nmessaging:\n  allow: [{from: 'agent:agent-a', to: 'agent:agent-b'}]\n";
    mesh.admin()
        .await
        .unwrap()
        .apply_policy(apply_policy(policy))
        .await
        .unwrap();
    for id in ["agent-a", "agent-b"] {
        mesh.register(id, &["data:read"], 8).await.unwrap();
    }
    let inbox_of = |c: &mut warden_sidecar::config::Config| c.messaging.inbox_capacity = 4096;
    let b = mesh
        .messaging_sidecar("agent-b", &[], inbox_of)
        .await
        .unwrap();
    let a = mesh
        .messaging_sidecar("agent-a", &[("agent-b", &b)], inbox_of)
        .await
        .unwrap();
    let keyed = eventually(Duration::from_secs(10), || async {
        a.auth
            .state()
            .held()
            .pair_keys
            .of("agent-a", "agent-b")
            .is_some()
            && b.auth
                .state()
                .held()
                .pair_keys
                .of("agent-a", "agent-b")
                .is_some()
    })
    .await;
    assert!(keyed, "no pair keys");
    let sender = client(&a).await.unwrap();
    let who = warden_tests::with_token(&a, &warden_tests::session(&a).await.token)
        .await
        .unwrap();
    let mut receiver = client(&b).await.unwrap();
    let mut inbox = receiver
        .receive_messages(pb::ReceiveMessagesRequest {})
        .await
        .unwrap()
        .into_inner();
    let req = || pb::SendMessageRequest {
        recipient_agent: "agent-b".into(),
        payload: vec![b'x'; 256],
        content_type: "text/plain".into(),
    };
    // Warm up the connections.
    for _ in 0..200 {
        sender.clone().send_message(req()).await.unwrap();
        inbox.next().await.unwrap().unwrap();
    }

    // One caller: the floor, then send → receive.
    let t0 = Instant::now();
    let mut lat = Vec::new();
    while t0.elapsed() < RUN {
        let t = Instant::now();
        who.clone().who_am_i(pb::WhoAmIRequest {}).await.unwrap();
        lat.push(t.elapsed());
    }
    report(
        "floor: WhoAmI at sidecar A, 1 caller",
        &mut lat,
        t0.elapsed().as_secs_f64(),
    );
    let floor_p50 = pct(&mut lat, 0.5);
    let t0 = Instant::now();
    let mut lat = Vec::new();
    while t0.elapsed() < RUN {
        let t = Instant::now();
        sender.clone().send_message(req()).await.unwrap();
        inbox.next().await.unwrap().unwrap();
        lat.push(t.elapsed());
    }
    report(
        "send → received by agent B, 1 sender",
        &mut lat,
        t0.elapsed().as_secs_f64(),
    );
    let send_p50 = pct(&mut lat, 0.5);
    println!(
        "  → one message costs {:.1}× a WhoAmI round trip at p50",
        send_p50 / floor_p50
    );

    // 32 senders: messages/s received, and the senders' latency (a send
    // returns once B's sidecar verified and queued the message).
    for (name, floor) in [
        ("floor: WhoAmI at sidecar A, 32 callers", true),
        ("SendMessage, 32 senders, all received by B", false),
    ] {
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (s, w) = (sender.clone(), who.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while t0.elapsed() < RUN {
                    let t = Instant::now();
                    if floor {
                        w.clone().who_am_i(pb::WhoAmIRequest {}).await.unwrap();
                    } else {
                        s.clone().send_message(req()).await.unwrap();
                    }
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let received = if floor {
            0
        } else {
            let mut n = 0usize;
            while t0.elapsed() < RUN {
                if let Ok(Some(Ok(_))) =
                    tokio::time::timeout(Duration::from_millis(200), inbox.next()).await
                {
                    n += 1;
                }
            }
            n
        };
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        let secs = t0.elapsed().as_secs_f64();
        report(name, &mut lat, secs);
        if !floor {
            // Drain what is still queued.
            while let Ok(Some(Ok(_))) =
                tokio::time::timeout(Duration::from_millis(200), inbox.next()).await
            {}
            println!(
                "  {:<44} {:>8.0} msgs/s",
                "  received by agent B within the run",
                received as f64 / secs
            );
        }
    }
    println!(
        "  sidecar B: {} messages queued, {} refused as inbox full",
        b.inbox.queued.load(std::sync::atomic::Ordering::Relaxed),
        b.inbox.full.load(std::sync::atomic::Ordering::Relaxed)
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

fn main() {
    in_process();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(through_the_mesh());
}
