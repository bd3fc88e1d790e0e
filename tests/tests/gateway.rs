//! The tool gateway end to end: every tool call through the sidecar's
//! pipeline, each refusal asserted by its exact code, reason and stage.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

use std::time::Duration;

use tonic::Code;
use warden_shared::proto::v1 as pb;
use warden_tests::gateway::{ALL_SCOPES, GatewayMesh, authorize, call, stage_rule};
use warden_tests::*;

#[track_caller]
fn refused<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    why: &str,
    stage: &str,
) -> tonic::Status {
    let s = assert_refused(r.map(tonic::Response::into_inner), code, why);
    assert_eq!(stage_rule(&s).0, stage, "stage of {why}: {}", s.message());
    s
}

#[tokio::test]
async fn list_tools_shows_only_what_this_session_may_call() {
    let g = GatewayMesh::start().await.unwrap();
    let (_, mut c) = g
        .session(&["echo:call", "time:read"], 0, &[])
        .await
        .unwrap();
    let r = c
        .list_tools(pb::ListToolsRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = r.tools.iter().map(|t| t.name.as_str()).collect();
    // Not shell (the identity denies it), not lookup (no crm:read).
    assert_eq!(names, ["calc", "clock", "echo", "limited", "no_upstream"]);
    assert_eq!(r.policy_version, 1);
    let echo = r.tools.iter().find(|t| t.name == "echo").unwrap();
    let schema: serde_json::Value = serde_json::from_str(&echo.input_schema_json).unwrap();
    assert_eq!(schema["required"], serde_json::json!(["text"]));
    assert_eq!(
        (echo.risk.as_str(), echo.scopes.clone()),
        ("low", vec!["echo:call".to_owned()])
    );

    let (_, mut all) = g.session(&ALL_SCOPES, 0, &[]).await.unwrap();
    let r = all
        .list_tools(pb::ListToolsRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = r.tools.iter().map(|t| t.name.as_str()).collect();
    assert!(
        names.contains(&"refund") && names.contains(&"lookup"),
        "{names:?}"
    );
    assert!(
        !names.contains(&"delete_repo"),
        "critical tools are never listed"
    );
    assert!(!names.contains(&"shell"));
}

#[tokio::test]
async fn allowed_calls_run_and_return_the_upstream_answer() {
    let g = GatewayMesh::start().await.unwrap();
    let (_, mut c) = g.session(&ALL_SCOPES, 0, &[]).await.unwrap();
    let r = c
        .call_tool(call("echo", r#"{"text": "hi", "n": 2}"#))
        .await
        .unwrap()
        .into_inner();
    let v: serde_json::Value = serde_json::from_slice(&r.content).unwrap();
    assert_eq!(v, serde_json::json!({"text": "hi", "n": 2}));
    assert_eq!((r.upstream_status, r.is_error), (0, false));
    assert!(r.call_id.starts_with("call_"));

    let r = c.call_tool(call("clock", "")).await.unwrap().into_inner();
    let v: serde_json::Value = serde_json::from_slice(&r.content).unwrap();
    let now = warden_control_plane::now_unix();
    assert!((v["unix"].as_i64().unwrap() - now).abs() <= 2, "{v}");

    // Inside the company: the Cedar rule permits it.
    c.call_tool(call(
        "send_email",
        r#"{"to": "a@example.com", "subject": "s"}"#,
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn every_refusal_names_its_stage_and_reason() {
    let g = GatewayMesh::start().await.unwrap();
    let (_, mut c) = g
        .session(
            &["echo:call", "mail:send", "payments:refund", "repo:admin"],
            0,
            &[],
        )
        .await
        .unwrap();

    // validate
    refused(
        c.call_tool(call("nope", "{}")).await,
        Code::NotFound,
        "TOOL_UNKNOWN",
        "validate",
    );
    let s = refused(
        c.call_tool(call("echo", "{not json")).await,
        Code::InvalidArgument,
        "ARGUMENTS_NOT_JSON",
        "validate",
    );
    assert!(s.message().contains("not JSON"), "{}", s.message());
    refused(
        c.call_tool(call("echo", "[1]")).await,
        Code::InvalidArgument,
        "ARGUMENTS_NOT_JSON",
        "validate",
    );
    let s = refused(
        c.call_tool(call("echo", r#"{"text": "x", "n": "SECRET-VALUE-42"}"#))
            .await,
        Code::InvalidArgument,
        "ARGUMENTS_INVALID",
        "validate",
    );
    assert!(s.message().contains("/n"), "{}", s.message());
    assert!(
        !s.message().contains("SECRET-VALUE-42"),
        "values are masked: {}",
        s.message()
    );
    let big = format!(r#"{{"text": "{}"}}"#, "x".repeat(3000));
    let s = refused(
        c.call_tool(call("echo", &big)).await,
        Code::InvalidArgument,
        "ARGUMENTS_TOO_LARGE",
        "validate",
    );
    assert_eq!(stage_rule(&s).1, "max_argument_bytes");
    let deep = format!(
        r#"{{"text": "x", "nested": {}1{}}}"#,
        "[".repeat(40),
        "]".repeat(40)
    );
    refused(
        c.call_tool(call("echo", &deep)).await,
        Code::InvalidArgument,
        "ARGUMENTS_TOO_DEEP",
        "validate",
    );
    refused(
        c.call_tool(call(
            "send_email",
            r#"{"to": "not an address", "subject": "s"}"#,
        ))
        .await,
        Code::InvalidArgument,
        "ARGUMENTS_INVALID",
        "validate",
    );

    // authorize
    let s = refused(
        c.call_tool(call("clock", "{}")).await,
        Code::PermissionDenied,
        "SCOPE_MISSING",
        "authorize",
    );
    assert_eq!(stage_rule(&s).1, "scope time:read");
    refused(
        c.call_tool(call("shell", "{}")).await,
        Code::PermissionDenied,
        "TOOL_DENIED",
        "authorize",
    );
    let s = refused(
        c.call_tool(call(
            "send_email",
            r#"{"to": "x@evil.test", "subject": "s"}"#,
        ))
        .await,
        Code::PermissionDenied,
        "POLICY_DENIED",
        "authorize",
    );
    assert_eq!(stage_rule(&s).1, "mail-stays-internal");
    refused(
        c.call_tool(call("delete_repo", "{}")).await,
        Code::PermissionDenied,
        "TOOL_CRITICAL",
        "authorize",
    );

    // approve: the agent asks not to wait, so the call is refused at once
    // while its request waits for a person (tests/tests/approvals.rs
    // follows requests to their decisions).
    let s = refused(
        c.call_tool(pb::CallToolRequest {
            no_wait: true,
            ..call("refund", "{}")
        })
        .await,
        Code::FailedPrecondition,
        "APPROVAL_PENDING",
        "approve",
    );
    assert!(
        warden_shared::refusal::metadata_of(&s)["approval_id"].starts_with("apr_"),
        "{s:?}"
    );

    // execute
    refused(
        c.call_tool(call("no_upstream", "{}")).await,
        Code::FailedPrecondition,
        "UPSTREAM_NOT_CONFIGURED",
        "execute",
    );
}

#[tokio::test]
async fn the_session_context_reaches_the_policy_rules() {
    let g = GatewayMesh::start().await.unwrap();
    let (_, mut free) = g
        .session(&["mail:send"], 0, &[("tier", "free")])
        .await
        .unwrap();
    let s = refused(
        free.call_tool(call(
            "send_email",
            r#"{"to": "a@example.com", "subject": "s"}"#,
        ))
        .await,
        Code::PermissionDenied,
        "POLICY_DENIED",
        "authorize",
    );
    assert_eq!(stage_rule(&s).1, "free-tier-no-email");
    let (_, mut pro) = g
        .session(&["mail:send"], 0, &[("tier", "pro")])
        .await
        .unwrap();
    pro.call_tool(call(
        "send_email",
        r#"{"to": "a@example.com", "subject": "s"}"#,
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn rate_limits_refuse_with_a_retry_time() {
    let g = GatewayMesh::start().await.unwrap();
    let (_, mut c) = g.session(&["echo:call"], 0, &[]).await.unwrap();
    for _ in 0..3 {
        c.call_tool(call("limited", "{}")).await.unwrap();
    }
    let s = refused(
        c.call_tool(call("limited", "{}")).await,
        Code::ResourceExhausted,
        "RATE_LIMITED",
        "limit",
    );
    let meta = warden_shared::refusal::metadata_of(&s);
    let retry: u64 = meta["retry_after_ms"].parse().unwrap();
    assert!(
        (1..=20_000).contains(&retry),
        "one call every 20 s: {retry}"
    );
    // Authorize counts too: it is the call, for an agent that makes it itself.
    let a = c
        .authorize(authorize("limited", "{}"))
        .await
        .unwrap()
        .into_inner();
    assert!(!a.allowed);
    assert_eq!(a.denial.unwrap().reason, "RATE_LIMITED");
}

#[tokio::test]
async fn session_refusals_at_the_first_stage() {
    let g = GatewayMesh::start().await.unwrap();
    // max_tool_calls
    let (_, mut c) = g.session(&["echo:call"], 2, &[]).await.unwrap();
    c.call_tool(call("echo", r#"{"text": "1"}"#)).await.unwrap();
    c.authorize(authorize("echo", r#"{"text": "2"}"#))
        .await
        .unwrap();
    refused(
        c.call_tool(call("echo", r#"{"text": "3"}"#)).await,
        Code::ResourceExhausted,
        "TOOL_CALL_LIMIT",
        "authenticate",
    );
    // No token.
    let mut anon = agent_tcp(&g.sidecar, AgentAuth::default()).await.unwrap();
    refused(
        anon.call_tool(call("echo", "{}")).await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
        "authenticate",
    );
    // A revoked session.
    let (s, c) = g.session(&["echo:call"], 0, &[]).await.unwrap();
    g.mesh
        .admin()
        .await
        .unwrap()
        .revoke_session(pb::RevokeSessionRequest {
            session_id: s.session_id,
            reason: "leaked".into(),
        })
        .await
        .unwrap();
    let revoked = eventually(Duration::from_secs(10), || {
        let mut c = c.clone();
        async move {
            c.call_tool(call("echo", r#"{"text": "x"}"#))
                .await
                .is_err_and(|e| reason(&e) == "SESSION_REVOKED")
        }
    })
    .await;
    assert!(revoked);
    let mut c = c.clone();
    refused(
        c.call_tool(call("echo", r#"{"text": "x"}"#)).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
        "authenticate",
    );
    refused(
        c.authorize(authorize("echo", r#"{"text": "x"}"#)).await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
        "authenticate",
    );
    // A forged token: a real one with its signature changed.
    let (s, _) = g.session(&["echo:call"], 0, &[]).await.unwrap();
    let (body, sig) = s.token.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{body}.{flipped}{}", &sig[1..]);
    let mut c = with_token(&g.sidecar, &forged).await.unwrap();
    refused(
        c.call_tool(call("echo", r#"{"text": "x"}"#)).await,
        Code::Unauthenticated,
        "TOKEN_BAD_SIGNATURE",
        "authenticate",
    );
    refused(
        c.authorize(authorize("echo", r#"{"text": "x"}"#)).await,
        Code::Unauthenticated,
        "TOKEN_BAD_SIGNATURE",
        "authenticate",
    );
    // An expired token (its claims re-signed with the real key, but past
    // their expiry).
    let (s, _) = g.session(&["echo:call"], 0, &[]).await.unwrap();
    let mut c: warden_shared::token::Claims =
        serde_json::from_value(jwt_payload(&s.token)).unwrap();
    c.iat -= 1000;
    c.exp = warden_control_plane::now_unix() - 1;
    let expired = g.mesh.cp.state.keys.current().active.sign(&c).unwrap();
    let mut c = with_token(&g.sidecar, &expired).await.unwrap();
    refused(
        c.call_tool(call("echo", r#"{"text": "x"}"#)).await,
        Code::Unauthenticated,
        "TOKEN_EXPIRED",
        "authenticate",
    );
    // Another agent's token at this sidecar.
    let other = g.mesh.agent("b1", &["data:read"], 4).await.unwrap();
    let sb = session(&other).await;
    let mut c = with_token(&g.sidecar, &sb.token).await.unwrap();

    refused(
        c.call_tool(call("echo", r#"{"text": "x"}"#)).await,
        Code::Unauthenticated,
        "TOKEN_WRONG_AUDIENCE",
        "authenticate",
    );
}

#[tokio::test]
async fn authorize_returns_a_decision_with_its_reasons() {
    let g = GatewayMesh::start().await.unwrap();
    let (_, mut c) = g.session(&["echo:call"], 0, &[]).await.unwrap();
    let a = c
        .authorize(authorize("echo", r#"{"text": "x"}"#))
        .await
        .unwrap()
        .into_inner();
    assert!(a.allowed);
    assert_eq!(
        a.checks,
        [
            "authenticate",
            "validate",
            "inspect_input",
            "authorize",
            "limit",
            "approve"
        ]
    );
    let a = c
        .authorize(authorize("clock", "{}"))
        .await
        .unwrap()
        .into_inner();
    assert!(!a.allowed);
    assert_eq!(a.checks, ["authenticate", "validate", "inspect_input"]);
    let d = a.denial.unwrap();
    assert_eq!(
        (d.stage.as_str(), d.reason.as_str(), d.rule.as_str()),
        ("authorize", "SCOPE_MISSING", "scope time:read")
    );
    // An unauthenticated caller gets an error, not a decision.
    let mut anon = agent_tcp(&g.sidecar, AgentAuth::default()).await.unwrap();
    refused(
        anon.authorize(authorize("echo", "{}")).await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
        "authenticate",
    );
}

#[tokio::test]
async fn secrets_are_injected_by_the_sidecar_and_never_returned() {
    let g = GatewayMesh::start().await.unwrap();
    let (_, mut c) = g.session(&["crm:read", "crm:write"], 0, &[]).await.unwrap();
    let r = c
        .call_tool(call("lookup", r#"{"id": "cus 1/2"}"#))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.upstream_status, r.is_error), (200, false));
    // The upstream got the secret, the path argument percent-encoded.
    let seen = g.upstream.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.uri, "/echo/cus%201%2F2");
    let auth = seen
        .headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .unwrap();
    assert_eq!(auth.1, format!("Bearer {}", g.secret));
    assert!(
        seen.headers
            .iter()
            .any(|(k, v)| k == "x-warden-trace-id" && v == "trace-1")
    );
    // The upstream echoed it back; the agent does not get it.
    let body = String::from_utf8(r.content).unwrap();
    assert!(!body.contains(&g.secret), "{body}");
    assert!(body.contains("Bearer [REDACTED]"), "{body}");
    assert_eq!(r.redactions, 1);

    // In a JSON body field too.
    let r = c
        .call_tool(call("post_note", r#"{"note": "hello"}"#))
        .await
        .unwrap()
        .into_inner();
    let v: serde_json::Value = serde_json::from_slice(&r.content).unwrap();
    let sent: serde_json::Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["note"], "hello");
    assert_eq!(sent["api_key"], "[REDACTED]");
    assert!(!String::from_utf8_lossy(&r.content).contains(&g.secret));

    // A missing secret is refused before anything is sent.
    std::fs::remove_file(g.mesh.dir.path().join("upstream-key")).unwrap();
    let before = g.upstream.seen.lock().unwrap().len();
    let s = refused(
        c.call_tool(call("lookup", r#"{"id": "x"}"#)).await,
        Code::FailedPrecondition,
        "SECRET_UNAVAILABLE",
        "execute",
    );
    assert!(
        !s.message().contains("upstream-key"),
        "no secret location: {}",
        s.message()
    );
    assert_eq!(g.upstream.seen.lock().unwrap().len(), before);
}

#[tokio::test]
async fn slow_huge_and_failing_upstreams() {
    let g = GatewayMesh::start().await.unwrap();
    let (_, mut c) = g.session(&["crm:read"], 0, &[]).await.unwrap();
    let t = std::time::Instant::now();
    let s = refused(
        c.call_tool(call("slow", "{}")).await,
        Code::DeadlineExceeded,
        "UPSTREAM_TIMEOUT",
        "execute",
    );
    assert_eq!(stage_rule(&s).1, "timeout_ms");
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    refused(
        c.call_tool(call("big", "{}")).await,
        Code::ResourceExhausted,
        "UPSTREAM_RESPONSE_TOO_LARGE",
        "execute",
    );

    // Down: two failures open the circuit; calls are then refused at once.
    for _ in 0..2 {
        refused(
            c.call_tool(call("flaky", "{}")).await,
            Code::Unavailable,
            "UPSTREAM_UNAVAILABLE",
            "execute",
        );
    }
    refused(
        c.call_tool(call("flaky", "{}")).await,
        Code::Unavailable,
        "UPSTREAM_CIRCUIT_OPEN",
        "execute",
    );
    let (_, body) = http_get(g.sidecar.health_addr, "/readyz").await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["upstreams"]["flaky"], "open", "{body}");
    let (_, metrics) = http_get(g.sidecar.health_addr, "/metrics").await.unwrap();
    assert!(
        metrics.contains(r#"warden_upstream_circuit{tool="flaky",state="open"} 1"#),
        "{metrics}"
    );

    // The upstream comes back: after the cool-down a probe goes through and
    // the circuit closes.
    let _up = g.bring_up().unwrap();
    let recovered = eventually(Duration::from_secs(5), || {
        let mut c = c.clone();
        async move { c.call_tool(call("flaky", "{}")).await.is_ok() }
    })
    .await;
    assert!(
        recovered,
        "the circuit should close once the upstream is back"
    );
    let (_, body) = http_get(g.sidecar.health_addr, "/readyz").await.unwrap();
    assert!(body.contains(r#""flaky":"closed""#), "{body}");
}

#[tokio::test]
async fn https_upstreams_with_a_private_ca_and_a_client_certificate() {
    use warden_tests::upstream::{TestPki, Upstream};
    let mesh = Mesh::start().await.unwrap();
    let pki = TestPki::new().unwrap();
    let mtls = Upstream::start_tls(pki.server_config(true).unwrap())
        .await
        .unwrap();
    let dir = mesh.dir.path();
    let ca = dir.join("upstream-ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    std::fs::write(dir.join("client.crt"), &pki.client.0).unwrap();
    std::fs::write(dir.join("client.key"), &pki.client.1).unwrap();
    let port = mtls.addr.port();
    let doc = format!(
        r#"
version: 1
secrets:
  cert: "file:{d}/client.crt"
  key: "file:{d}/client.key"
tools:
  - name: mtls
    description: HTTPS with a client certificate.
    input_schema: {{ type: object }}
    scopes: ["crm:read"]
    risk: low
    upstream:
      kind: http
      address: "https://localhost:{port}/echo/mtls"
      method: GET
      tls: {{ ca_file: "{ca}", client_cert: cert, client_key: key }}
    secrets: [cert, key]
  - name: no_client_cert
    description: The same upstream without a client certificate.
    input_schema: {{ type: object }}
    scopes: ["crm:read"]
    risk: low
    upstream:
      kind: http
      address: "https://localhost:{port}/echo/anon"
      method: GET
      tls: {{ ca_file: "{ca}" }}
  - name: unknown_ca
    description: The system trust store does not know the private CA.
    input_schema: {{ type: object }}
    scopes: ["crm:read"]
    risk: low
    upstream: {{ kind: http, address: "https://localhost:{port}/echo/x", method: GET }}
cedar: "permit (principal, action, resource);"
"#,
        d = dir.display(),
        ca = ca.display(),
    );
    mesh.admin()
        .await
        .unwrap()
        .apply_policy(apply_policy(&doc))
        .await
        .unwrap();
    let sc = mesh.agent("a1", &["crm:read"], 4).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            sc.auth.state().held().policy.is_some()
        })
        .await
    );
    let s = session_with(&sc, &["crm:read"]).await;
    let mut c = with_token(&sc, &s.token).await.unwrap();
    let r = c.call_tool(call("mtls", "{}")).await.unwrap().into_inner();
    assert_eq!(r.upstream_status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.content).unwrap();
    assert_eq!(v["path"], "/echo/mtls");
    // The private key of the client certificate is a secret too: never
    // returned.
    assert!(!String::from_utf8_lossy(&r.content).contains("PRIVATE KEY"));
    // Without a client certificate the upstream refuses the handshake; a
    // CA the sidecar does not trust fails it on our side.
    refused(
        c.call_tool(call("no_client_cert", "{}")).await,
        Code::Unavailable,
        "UPSTREAM_UNAVAILABLE",
        "execute",
    );
    refused(
        c.call_tool(call("unknown_ca", "{}")).await,
        Code::Unavailable,
        "UPSTREAM_UNAVAILABLE",
        "execute",
    );
    let paths: Vec<String> = mtls
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.uri.clone())
        .collect();
    assert_eq!(
        paths,
        ["/echo/mtls"],
        "only the mutual-TLS call got through"
    );
}

#[tokio::test]
async fn what_the_policy_cannot_see_does_not_reach_the_upstream() {
    let g = GatewayMesh::start().await.unwrap();
    let (_, mut c) = g
        .session(&["mail:send", "echo:call", "crm:read"], 0, &[])
        .await
        .unwrap();
    // An undeclared argument would reach the upstream without the rules
    // seeing it: objects are closed unless the schema opens them.
    let s = refused(
        c.call_tool(call(
            "send_email",
            r#"{"to": "a@example.com", "subject": "s", "bcc": "x@evil.test"}"#,
        ))
        .await,
        Code::InvalidArgument,
        "ARGUMENTS_INVALID",
        "validate",
    );
    assert!(
        s.message().contains("bcc") || s.message().contains("Additional"),
        "{}",
        s.message()
    );
    // An integer the rules would not see faithfully is refused.
    let s = refused(
        c.call_tool(call("calc", r#"{"n": 18446744073709551615}"#))
            .await,
        Code::InvalidArgument,
        "ARGUMENTS_INVALID",
        "validate",
    );
    assert_eq!(stage_rule(&s).1, "policy representation");
    // A rule that fails to evaluate (an overflow) refuses; it is not skipped.
    c.call_tool(call("calc", r#"{"n": 0}"#)).await.unwrap();
    let s = refused(
        c.call_tool(call("calc", r#"{"n": 3}"#)).await,
        Code::PermissionDenied,
        "POLICY_DENIED",
        "authorize",
    );
    assert_eq!(stage_rule(&s).1, "evaluation error in overflow-guard");
    // A URL placeholder cannot climb out of its segment.
    for bad in ["..", ".", ""] {
        let args = format!(r#"{{"doc": "{bad}"}}"#);
        let s = refused(
            c.call_tool(call("fetch_doc", &args)).await,
            Code::InvalidArgument,
            "ARGUMENTS_INVALID",
            "validate",
        );
        assert_eq!(stage_rule(&s).1, "url placeholder");
    }
    let r = c
        .call_tool(call("fetch_doc", r#"{"doc": "a/../b"}"#))
        .await
        .unwrap()
        .into_inner();
    let v: serde_json::Value = serde_json::from_slice(&r.content).unwrap();
    assert_eq!(
        v["path"], "/echo/docs/a%2F..%2Fb/raw",
        "slashes are encoded"
    );
    // A compressed answer cannot be inspected: refused.
    refused(
        c.call_tool(call("gzip", "{}")).await,
        Code::Unavailable,
        "UPSTREAM_UNAVAILABLE",
        "execute",
    );
}

#[tokio::test]
async fn arguments_behind_schema_combinators_are_declared_or_refused_and_seen_by_the_rules() {
    let g = GatewayMesh::start().await.unwrap();
    let (_, mut c) = g.session(&ALL_SCOPES, 0, &[]).await.unwrap();
    let args = r#"{"channel": "sms", "phone": "+4412", "options": {"flash": true}}"#;
    let r = c
        .call_tool(call("notify", args))
        .await
        .unwrap()
        .into_inner();
    let v: serde_json::Value = serde_json::from_slice(&r.content).unwrap();
    assert_eq!(v, serde_json::from_str::<serde_json::Value>(args).unwrap());
    for undeclared in [
        // Declared only by the branch the value did not match.
        r#"{"channel": "email", "to": "a@example.com", "phone": "+4412"}"#,
        r#"{"channel": "email", "to": "a@example.com", "evil": 1}"#,
        // Inside an object the matched branch reaches through $ref.
        r#"{"channel": "sms", "phone": "+4412", "options": {"flash": true, "evil": 1}}"#,
    ] {
        let s = refused(
            c.call_tool(call("notify", undeclared)).await,
            Code::InvalidArgument,
            "ARGUMENTS_INVALID",
            "validate",
        );
        assert!(!s.message().contains("evil") || s.message().contains("declare"));
    }
    // A property that only a branch declares is one the rules can read.
    let s = refused(
        c.call_tool(call(
            "notify",
            r#"{"channel": "sms", "phone": "+19005551234"}"#,
        ))
        .await,
        Code::PermissionDenied,
        "POLICY_DENIED",
        "authorize",
    );
    assert_eq!(stage_rule(&s).1, "no-premium-numbers");
}
