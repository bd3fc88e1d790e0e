//! A secret's value never appears in any response, log line or audit event:
//! every log line of this process (control plane, sidecar, upstream, at
//! debug level and trace for Warden's own crates) is captured and searched,
//! with the responses, after calls that inject the secret into a header
//! and a body field, an upstream that echoes it back, and refusals.
//! Raw argument values are never logged either. (Its own test binary: the
//! log capture is process-wide.)

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

use warden_tests::gateway::{GatewayMesh, authorize, call};

#[tokio::test]
async fn no_secret_in_any_response_log_line_or_audit_event() {
    let logs = warden_tests::logs::Capture::install();

    let g = GatewayMesh::start().await.unwrap();
    let (_, mut c) = g
        .session(&["crm:read", "crm:write", "echo:call"], 0, &[])
        .await
        .unwrap();
    let mut seen: Vec<u8> = Vec::new();
    let mut call_ids = Vec::new();
    for (tool, args) in [
        ("lookup", r#"{"id": "c1"}"#),
        ("post_note", r#"{"note": "ARG-SENSITIVE-NOTE"}"#),
    ] {
        let r = c.call_tool(call(tool, args)).await.unwrap().into_inner();
        assert!(
            r.redactions >= 1,
            "{tool}: the upstream echoed the secret back"
        );
        seen.extend_from_slice(&r.content);
        call_ids.push(r.call_id);
    }
    // Refusals: a schema violation carrying a sensitive value, an unknown
    // tool, an Authorize denial.
    let e = c
        .call_tool(call("echo", r#"{"text": "x", "n": "ARG-SENSITIVE-N"}"#))
        .await
        .unwrap_err();
    seen.extend_from_slice(e.message().as_bytes());
    seen.extend_from_slice(e.details());
    let e = c.call_tool(call("nope", "{}")).await.unwrap_err();
    seen.extend_from_slice(e.message().as_bytes());
    let a = c
        .authorize(authorize("refund", r#"{"k": "ARG-SENSITIVE-K"}"#))
        .await
        .unwrap()
        .into_inner();
    seen.extend_from_slice(format!("{a:?}").as_bytes());
    // The upstream did receive the secret (the test would prove nothing
    // otherwise).
    let received = g.upstream.seen.lock().unwrap().clone();
    assert!(
        received
            .iter()
            .any(|s| s.headers.iter().any(|(_, v)| v.contains(&g.secret))),
        "the secret never reached the upstream"
    );

    // The audit lines are written by their own thread: wait for them.
    assert!(g.sidecar.api.gateway().recorder.flush());
    let logs = logs.text();
    assert!(!logs.is_empty());
    let responses = String::from_utf8_lossy(&seen);
    assert!(
        !responses.contains(&g.secret),
        "a response holds the secret"
    );
    assert!(!logs.contains(&g.secret), "a log line holds the secret");
    for v in ["ARG-SENSITIVE-NOTE", "ARG-SENSITIVE-N", "ARG-SENSITIVE-K"] {
        assert!(!logs.contains(v), "a log line holds the raw argument {v}");
    }

    // Every call has its audit event; arguments appear only as size and
    // keyed hash.
    let audit: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "warden::audit")
        .collect();
    for id in &call_ids {
        let e = audit
            .iter()
            .find(|v| v["fields"]["call_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no audit event for {id}"));
        assert_eq!(e["fields"]["outcome"], "allowed");
        assert_eq!(e["fields"]["arguments_hmac"].as_str().unwrap().len(), 32);
    }
    let denied: Vec<&serde_json::Value> = audit
        .iter()
        .filter(|v| v["fields"]["outcome"] == "denied")
        .collect();
    let reasons: Vec<&str> = denied
        .iter()
        .map(|v| v["fields"]["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["ARGUMENTS_INVALID", "TOOL_UNKNOWN", "ARGUMENTS_INVALID"]
    );
    assert_eq!(denied[2]["fields"]["stage"], "validate");
    assert_eq!(denied[2]["fields"]["rpc"], "Authorize");
}
