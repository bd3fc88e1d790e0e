//! Approval webhooks with a receiver that is down, then up: a request is
//! filed by a real sidecar while nothing listens at the webhook's address,
//! stands and is listed; once the receiver starts, the notification arrives
//! (retried with backoff from the control plane's outbox), and so does the
//! decision's. Every delivery verifies with the Standard Webhooks reference
//! library (`standardwebhooks`, PyPI); a tampered one does not. Each step
//! is an audit event, and the sensitive argument is in no log line. (This
//! binary holds one test: the log capture is process-wide.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails on any unexpected error"
)]

use std::time::Duration;

use serde_json::{Value, json};
use warden_control_plane::webhooks::WebhookConfig;
use warden_tests::approvals::{ApprovalMesh, call, decide};
use warden_tests::upstream::{Upstream, reserve_port};
use warden_tests::{Mesh, eventually, reason};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Runs the Standard Webhooks library over `deliveries`.
fn verify(deliveries: &[Value]) -> Vec<Value> {
    let input = json!({"secret": SECRET, "deliveries": deliveries});
    warden_tests::python_stdin("verify_webhook.py", &input.to_string())
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn a_receiver_that_is_down_loses_nothing_and_every_delivery_verifies() {
    let logs = warden_tests::logs::Capture::install();
    let (socket, port) = reserve_port().unwrap();
    let secret_dir = tempfile::tempdir().unwrap();
    let secret_file = secret_dir.path().join("webhook-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let hook = WebhookConfig {
        url: format!("http://127.0.0.1:{port}/echo/hook"),
        secret_file,
        ca_file: None,
    };
    let mesh = Mesh::start_with(move |c| {
        c.durable_sync = false;
        c.approval_webhooks = vec![hook];
    })
    .await
    .unwrap();
    let m = ApprovalMesh::start_on(mesh).await.unwrap();
    let (_, mut agent) = m.session().await.unwrap();
    let args = r#"{"order": "o-w", "amount": 42, "card": "4111111111111111"}"#;
    let s = agent
        .call_tool(call("refund", args, true))
        .await
        .unwrap_err();
    assert_eq!(reason(&s), "APPROVAL_PENDING");
    // The receiver is down: the request stands and is listed.
    let listed = m.pending(1).await.unwrap();
    let id = listed[0].id.clone();
    let outbox_tried = eventually(Duration::from_secs(10), || async {
        m.mesh
            .cp
            .state
            .store
            .next_webhook_at()
            .await
            .unwrap()
            .is_some_and(|at| at > warden_control_plane::now_unix())
    })
    .await;
    assert!(outbox_tried, "a failed delivery is scheduled again");

    // Up: the notification arrives, then the decision's.
    let receiver = Upstream::start_reserved(socket).unwrap();
    let mut admin = m.mesh.admin().await.unwrap();
    admin
        .decide_approval(decide(&id, false, "no ticket"))
        .await
        .unwrap();
    let hooks = || {
        receiver
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.uri == "/echo/hook")
            .cloned()
            .collect::<Vec<_>>()
    };
    let both = eventually(Duration::from_secs(20), || async { hooks().len() >= 2 }).await;
    assert!(both, "deliveries seen: {:?}", hooks());
    let deliveries: Vec<Value> = hooks()
        .iter()
        .map(|s| {
            let headers: serde_json::Map<String, Value> = s
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            json!({"headers": headers, "body": String::from_utf8_lossy(&s.body)})
        })
        .collect();
    let verified = verify(&deliveries);
    let payloads: Vec<&Value> = verified.iter().map(|v| &v["payload"]).collect();
    assert!(
        payloads.iter().all(|p| p.is_object()),
        "every delivery verifies: {verified:?}"
    );
    let requested = payloads
        .iter()
        .find(|p| p["type"] == "approval.requested")
        .expect("the request's notification");
    assert_eq!(requested["data"]["id"], id.as_str());
    assert_eq!(requested["data"]["tool"], "refund");
    assert_eq!(requested["data"]["arguments"]["card"], "[redacted]");
    let decided = payloads
        .iter()
        .find(|p| p["type"] == "approval.decided")
        .expect("the decision's notification");
    assert_eq!(decided["data"]["state"], "denied");
    assert_eq!(decided["data"]["decisions"][0]["comment"], "no ticket");
    // Each delivery has its own id, kept across its attempts.
    let ids: std::collections::BTreeSet<&str> = deliveries
        .iter()
        .map(|d| d["headers"]["webhook-id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), deliveries.len());

    // A changed body, or another secret's signature, does not verify.
    let mut tampered = deliveries[0].clone();
    tampered["body"] = json!(
        tampered["body"]
            .as_str()
            .unwrap()
            .replace("refund", "refunX")
    );
    let mut forged = deliveries[0].clone();
    forged["headers"]["webhook-signature"] =
        json!("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    let refused = verify(&[tampered, forged]);
    assert!(
        refused.iter().all(|v| v["error"].is_string()),
        "{refused:?}"
    );

    // Every step is an audit event with its actor; the card number the
    // schema marks sensitive is in no log line.
    let text = logs.text();
    let steps: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "warden::audit" && v["fields"]["event"] == "approval")
        .map(|v| v["fields"].clone())
        .collect();
    let step = |name: &str| {
        steps
            .iter()
            .find(|f| f["step"] == name)
            .unwrap_or_else(|| panic!("no {name} event in {steps:?}"))
    };
    assert_eq!(
        (
            step("requested")["actor_kind"].as_str(),
            step("requested")["actor"].as_str()
        ),
        (Some("agent"), Some("a1"))
    );
    let denied = step("denied");
    assert_eq!(denied["actor_kind"], "human");
    assert_eq!(denied["approval"], id.as_str());
    assert!(
        !text.contains("4111111111111111"),
        "a sensitive argument was logged"
    );
}
