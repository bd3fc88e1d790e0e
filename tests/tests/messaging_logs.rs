//! No pair key and no message payload ever appears in a log line or audit
//! event: every log line of this process (control plane and sidecars, at
//! debug level and trace for Warden's own crates) is captured while two
//! agents exchange messages (delivered, verified, replayed, tampered), then
//! searched for every pair key either sidecar holds (hex, base64, and as a
//! Rust byte list) and for the payloads. (Its own test binary: the log
//! capture is process-wide.)

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

use std::time::Duration;

use base64::Engine;
use tokio_stream::StreamExt;
use warden_shared::proto::v1 as pb;
use warden_tests::messaging::client;
use warden_tests::{Mesh, apply_policy, eventually};

const PAYLOAD: &str = "PAYLOAD-SENSITIVE-7f3a";

#[tokio::test]
async fn no_pair_key_or_payload_in_any_log_line() {
    let logs = warden_tests::logs::Capture::install();

    let mesh = Mesh::start().await.unwrap();
    let policy = "version: 1\nmessaging:\n  allow: [{from: 'agent:lg-a', to: 'agent:lg-b', both_ways: true}]\n";
    mesh.admin()
        .await
        .unwrap()
        .apply_policy(apply_policy(policy))
        .await
        .unwrap();
    for id in ["lg-a", "lg-b"] {
        mesh.register(id, &["data:read"], 4).await.unwrap();
    }
    let b = mesh.messaging_sidecar("lg-b", &[], |_| {}).await.unwrap();
    let a = mesh
        .messaging_sidecar("lg-a", &[("lg-b", &b)], |_| {})
        .await
        .unwrap();
    let keyed = eventually(Duration::from_secs(10), || async {
        a.auth.state().held().pair_keys.of("lg-a", "lg-b").is_some()
            && b.auth.state().held().pair_keys.of("lg-b", "lg-a").is_some()
    })
    .await;
    assert!(keyed, "no pair keys");
    let (mut ca, mut cb) = (client(&a).await.unwrap(), client(&b).await.unwrap());
    let mut inbox = cb
        .receive_messages(pb::ReceiveMessagesRequest {})
        .await
        .unwrap()
        .into_inner();
    let sent = ca
        .send_message(pb::SendMessageRequest {
            recipient_agent: "lg-b".into(),
            payload: PAYLOAD.as_bytes().to_vec(),
            content_type: "text/plain".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .envelope
        .unwrap();
    let got = inbox.next().await.unwrap().unwrap().message.unwrap();
    assert_eq!(got.payload, PAYLOAD.as_bytes());
    let verify = |e: &pb::Envelope| pb::VerifyMessageRequest {
        envelope: Some(e.clone()),
    };
    // A replay and a tampered copy: refusals are logged too.
    assert!(cb.verify_message(verify(&sent)).await.is_err());
    let mut t = sent.clone();
    t.payload[0] ^= 1;
    assert!(cb.verify_message(verify(&t)).await.is_err());
    // And the other way, signed and verified.
    let e = ca
        .sign_message(pb::SignMessageRequest {
            recipient_agent: "lg-b".into(),
            payload: PAYLOAD.as_bytes().to_vec(),
            content_type: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .envelope
        .unwrap();
    cb.verify_message(verify(&e)).await.unwrap();

    let text = logs.text();
    assert!(
        text.contains("\"kind\":\"message\""),
        "the audit events were not captured"
    );
    assert!(!text.contains(PAYLOAD), "a payload reached the logs");
    let mut keys = Vec::new();
    for sc in [&a, &b] {
        let held = sc.auth.state().held();
        for to in held.pair_keys.pairs.values() {
            for k in to.values().flatten() {
                keys.push(k.key.as_bytes().to_vec());
            }
        }
    }
    assert!(keys.len() >= 6, "{} keys", keys.len());
    for k in &keys {
        let forms = [
            k.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            base64::engine::general_purpose::STANDARD.encode(k),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k),
            format!("{k:?}"),
        ];
        for f in forms {
            assert!(!text.contains(&f), "a pair key reached the logs ({f})");
        }
    }
    // The snapshot the sidecar keeps prints no key in Debug either.
    let debug = format!("{:?}", a.auth.state().held());
    for k in &keys {
        assert!(!debug.contains(&format!("{k:?}")), "Debug printed a key");
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
