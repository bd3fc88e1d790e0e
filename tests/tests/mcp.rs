//! The MCP front door, from outside: the official Python MCP SDK as the
//! client (unchanged, its streamable HTTP transport and a bearer token),
//! and raw HTTP for what the specification says a server must refuse.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails on any unexpected error"
)]

use std::net::SocketAddr;
use std::process::Command;

use serde_json::{Value, json};
use warden_tests::gateway::GatewayMesh;
use warden_tests::http1::header;

const NO_PYTHON: &str = "WARDEN_PYTHON must point at a Python with tests/python/requirements.txt installed; run the tests with ./tests/run.sh";

/// One HTTP/1.1 exchange on a fresh connection: status, headers (lower-case
/// names), body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    warden_tests::http1::exchange(addr, method, path, headers, body)
        .await
        .unwrap()
}

/// A `POST /mcp` of `body` as JSON with `auth` and `extra` headers.
async fn post(
    addr: SocketAddr,
    auth: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Authorization", auth),
    ];
    headers.extend_from_slice(extra);
    http(addr, "POST", "/mcp", &headers, body).await
}

/// Runs `tests/python/<script> URL TOKEN` (the official SDK as the client)
/// and reads the JSON it prints.
async fn sdk_client(script: &str, addr: SocketAddr, token: &str) -> Value {
    let python = std::env::var("WARDEN_PYTHON").expect(NO_PYTHON);
    let script = format!("{}/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let (url, token) = (format!("http://{addr}/mcp"), token.to_owned());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(url)
            .arg(token)
            .output()
            .expect("running python")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    serde_json::from_slice(&out.stdout).expect(&stderr)
}

/// A JSON-RPC POST with the usual headers and `token`.
async fn rpc(addr: SocketAddr, token: &str, msg: &Value) -> (u16, Value) {
    warden_tests::http1::mcp_rpc(addr, token, msg)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_python_sdk_lists_and_calls_tools_through_the_pipeline() {
    let g = GatewayMesh::start().await.unwrap();
    let addr = g.sidecar.mcp_addr.expect("MCP front door");
    let (s, _) = g
        .session(&["echo:call", "payments:refund"], 0, &[])
        .await
        .unwrap();
    let seen = sdk_client("mcp_client.py", addr, &s.token).await;
    assert_eq!(seen["server"], "warden-sidecar");
    assert!(
        warden_sidecar::mcp::PROTOCOL_VERSIONS
            .contains(&seen["protocol_version"].as_str().unwrap())
    );
    // Only what this session may call: `lookup` needs crm:read.
    let tools: Vec<&str> = seen["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tools.contains(&"echo") && tools.contains(&"limited"),
        "{tools:?}"
    );
    assert!(!tools.contains(&"lookup"), "{tools:?}");
    assert_eq!(seen["echo_schema"]["required"], json!(["text"]));
    // An allowed call, end to end.
    assert_eq!(seen["echo"]["is_error"], false, "{seen}");
    let echoed: Value = serde_json::from_str(seen["echo"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["text"], "hello");
    // Refusals are tool errors carrying the reason and the stage.
    let refusal = |k: &str| {
        (
            seen[k]["is_error"].clone(),
            seen[k]["refusal"]["reason"].clone(),
            seen[k]["refusal"]["stage"].clone(),
        )
    };
    assert_eq!(
        refusal("invalid"),
        (json!(true), json!("ARGUMENTS_INVALID"), json!("validate"))
    );
    assert_eq!(
        refusal("scope"),
        (json!(true), json!("SCOPE_MISSING"), json!("authorize"))
    );
    assert!(
        seen["scope"]["text"]
            .as_str()
            .unwrap()
            .contains("SCOPE_MISSING")
    );
    // A high-risk tool waits for a human; asked not to wait, the call is
    // refused at once with the request's id.
    assert_eq!(
        refusal("approval"),
        (json!(true), json!("APPROVAL_PENDING"), json!("approve"))
    );
    assert!(
        seen["approval"]["refusal"]["approval_id"]
            .as_str()
            .unwrap()
            .starts_with("apr_")
    );
    // `limited` allows three calls a minute.
    let limited = seen["limited"].as_array().unwrap();
    assert!(
        limited[..3].iter().all(|l| l["is_error"] == false),
        "{limited:?}"
    );
    assert_eq!(limited[3]["refusal"]["reason"], "RATE_LIMITED");
    assert_eq!(limited[3]["refusal"]["stage"], "limit");
    assert!(limited[3]["refusal"]["retry_after_ms"].as_u64().unwrap() > 0);
    // An unknown tool is the protocol's invalid-params error.
    assert_eq!(seen["unknown"]["code"], -32602);
    assert_eq!(seen["unknown"]["data"]["reason"], "TOOL_UNKNOWN");
}

#[tokio::test]
async fn bad_requests_get_the_specifications_errors_and_change_nothing() {
    let g = GatewayMesh::start().await.unwrap();
    let addr = g.sidecar.mcp_addr.expect("MCP front door");
    let (s, _) = g.session(&["echo:call"], 0, &[]).await.unwrap();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "raw", "version": "0"}}});

    // No token: 401 and the challenge naming the resource metadata.
    let (status, h, _) = http(
        addr,
        "POST",
        "/mcp",
        &[("Content-Type", "application/json")],
        init.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 401);
    let challenge = header(&h, "www-authenticate").expect("challenge");
    let metadata_url = format!("http://{addr}/.well-known/oauth-protected-resource");
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains(&format!("resource_metadata=\"{metadata_url}\"")),
        "{challenge}"
    );
    // The metadata names this endpoint as the resource.
    let (status, _, body) = http(
        addr,
        "GET",
        "/.well-known/oauth-protected-resource",
        &[],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let meta: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(meta["resource"], format!("http://{addr}/mcp"));
    assert_eq!(meta["bearer_methods_supported"], json!(["header"]));
    // A wrong token: 401, invalid_token; the token is not echoed.
    let bogus = "eyJhbGciOiJFUzI1NiJ9.e30.c2lnbmF0dXJl";
    let (status, h, body) = http(
        addr,
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {bogus}")),
        ],
        init.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        header(&h, "www-authenticate")
            .unwrap()
            .contains("error=\"invalid_token\"")
    );
    assert!(!body.contains(bogus));

    let auth = format!("Bearer {}", s.token);
    // A page of another origin (a browser, a tricked fetch): refused.
    let (status, _, _) = post(
        addr,
        &auth,
        &[("Origin", "https://evil.example")],
        init.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 403);
    // A page served from this machine, and the endpoint named `localhost`:
    // served.
    let (status, _, _) = post(
        addr,
        &auth,
        &[("Origin", "http://localhost:3000")],
        init.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    let localhost = format!("LOCALHOST:{}", addr.port());
    let (status, _, _) = post(
        addr,
        &auth,
        &[("Host", &localhost)],
        init.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    // A CORS preflight is not answered with a permission.
    let (status, h, _) = http(
        addr,
        "OPTIONS",
        "/mcp",
        &[
            ("Origin", "https://evil.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    )
    .await;
    assert!(status >= 400, "{status}");
    assert!(header(&h, "access-control-allow-origin").is_none());
    // A name rebound to this address (DNS rebinding): refused too.
    let (status, _, _) = post(
        addr,
        &auth,
        &[("Host", "rebound.evil.example:7603")],
        init.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 403);
    // No simple-request path: a form or text body is refused.
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let (status, _, _) = http(
            addr,
            "POST",
            "/mcp",
            &[("Content-Type", ct), ("Authorization", &auth)],
            init.to_string().as_bytes(),
        )
        .await;
        assert_eq!(status, 415, "{ct}");
    }
    // No server-to-client stream here.
    let (status, h, _) = http(addr, "GET", "/mcp", &[("Authorization", &auth)], b"").await;
    assert_eq!(status, 405);
    assert_eq!(header(&h, "allow"), Some("POST"));
    // An unsupported protocol revision header.
    let (status, _, _) = post(
        addr,
        &auth,
        &[("MCP-Protocol-Version", "1999-01-01")],
        init.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 400);
    // Malformed JSON, a batch, not JSON-RPC 2.0, an unknown method.
    for (body, code) in [
        ("{\"jsonrpc\": \"2.0\", \"id\": 1,", -32700),
        (
            "[{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \"ping\"}]",
            -32600,
        ),
        ("{\"jsonrpc\": \"2.0\"}", -32600),
        (
            "{\"jsonrpc\": \"1.0\", \"id\": 1, \"method\": \"ping\"}",
            -32600,
        ),
        (
            "{\"jsonrpc\": \"2.0\", \"id\": {\"a\": 1}, \"method\": \"ping\"}",
            -32600,
        ),
    ] {
        let (status, _, reply) = http(
            addr,
            "POST",
            "/mcp",
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &auth),
            ],
            body.as_bytes(),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        let reply: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(reply["error"]["code"], code, "{body}");
    }
    let (status, reply) = rpc(
        addr,
        &s.token,
        &json!({"jsonrpc": "2.0", "id": "x", "method": "resources/list"}),
    )
    .await;
    assert_eq!(
        (status, reply["error"]["code"].clone(), reply["id"].clone()),
        (200, json!(-32601), json!("x"))
    );
    // Too large: refused before it is parsed.
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{{\"pad\":\"{}\"}}}}",
        "x".repeat(warden_sidecar::mcp::MAX_BODY_BYTES)
    );
    let (status, _, _) = http(
        addr,
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
        big.as_bytes(),
    )
    .await;
    assert_eq!(status, 413);
    // A notification: accepted, no body.
    let (status, _, body) = http(
        addr,
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
        br#"{"jsonrpc": "2.0", "method": "notifications/initialized"}"#,
    )
    .await;
    assert_eq!((status, body.as_str()), (202, ""));
    // Still serving, and the version asked for is the version given; an
    // unknown one gets the newest.
    let (status, reply) = rpc(addr, &s.token, &init).await;
    assert_eq!(status, 200);
    assert_eq!(reply["result"]["protocolVersion"], "2025-06-18");
    let mut other = init.clone();
    other["params"]["protocolVersion"] = json!("2000-01-01");
    let (_, reply) = rpc(addr, &s.token, &other).await;
    assert_eq!(
        reply["result"]["protocolVersion"],
        warden_sidecar::mcp::PROTOCOL_VERSIONS[0]
    );
    // Nothing was called by the refused requests: the session's first
    // call of `limited` is allowed three times.
    for _ in 0..3 {
        let (_, reply) = rpc(addr, &s.token, &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "limited", "arguments": {}}})).await;
        assert_eq!(reply["result"]["isError"], false, "{reply}");
    }
}

/// `Basic` credentials for the token endpoint.
fn basic(id: &str, secret: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

#[tokio::test]
async fn the_token_endpoint_follows_oauth_and_refuses_what_it_must() {
    let g = GatewayMesh::start().await.unwrap();
    let addr = g.sidecar.mcp_addr.expect("MCP front door");
    let secret = std::fs::read_to_string(g.sidecar.data_dir.join("mcp-client-secret")).unwrap();
    let issuer = format!("http://{addr}");

    // The resource metadata names the sidecar as the authorization server,
    // whose metadata names the token endpoint.
    let (_, _, body) = http(
        addr,
        "GET",
        "/.well-known/oauth-protected-resource",
        &[],
        b"",
    )
    .await;
    let meta: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(meta["authorization_servers"], json!([issuer]));
    assert!(
        meta["scopes_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("echo:call")),
        "{meta}"
    );
    let (status, _, body) = http(
        addr,
        "GET",
        "/.well-known/oauth-authorization-server",
        &[],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let as_meta: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(as_meta["issuer"], issuer);
    assert_eq!(as_meta["token_endpoint"], format!("{issuer}/oauth/token"));
    assert_eq!(
        as_meta["grant_types_supported"],
        json!(["client_credentials"])
    );

    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let token_req = |auth: Option<String>,
                     body: &'static str,
                     extra: Vec<(&'static str, String)>| {
        let mut headers: Vec<(String, String)> = form
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        if let Some(a) = auth {
            headers.push(("Authorization".into(), a));
        }
        for (k, v) in extra {
            headers.push((k.into(), v));
        }
        async move {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let (status, h, body) = http(addr, "POST", "/oauth/token", &h, body.as_bytes()).await;
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            (status, header(&h, "cache-control").map(str::to_owned), v)
        }
    };
    let good = Some(basic("a1", &secret));
    // Refusals, each with the error RFC 6749 names.
    let cases = [
        (None, "grant_type=client_credentials", 401, "invalid_client"),
        (
            Some(basic("a1", "wrong")),
            "grant_type=client_credentials",
            401,
            "invalid_client",
        ),
        (
            Some(basic("a2", &secret)),
            "grant_type=client_credentials",
            401,
            "invalid_client",
        ),
        (
            good.clone(),
            "grant_type=password&username=x&password=y",
            400,
            "unsupported_grant_type",
        ),
        (
            good.clone(),
            "grant_type=client_credentials&grant_type=client_credentials",
            400,
            "invalid_request",
        ),
        (
            good.clone(),
            "grant_type=client_credentials&resource=http%3A%2F%2Fevil.example%2Fmcp",
            400,
            "invalid_target",
        ),
        (
            good.clone(),
            "grant_type=client_credentials&scope=nothing%3Aknown",
            400,
            "invalid_scope",
        ),
    ];
    for (auth, body, status, error) in cases {
        let (got, cache, v) = token_req(auth, body, vec![]).await;
        assert_eq!(
            (got, v["error"].as_str()),
            (status, Some(error)),
            "{body}: {v}"
        );
        assert_eq!(cache.as_deref(), Some("no-store"), "{body}");
        assert!(!v.to_string().contains(secret.trim()), "{v}");
    }
    // Both client authentication methods at once: refused.
    let both = format!("grant_type=client_credentials&client_id=a1&client_secret={secret}");
    let (status, _, body) = http(
        addr,
        "POST",
        "/oauth/token",
        &[form[0], ("Authorization", good.as_deref().unwrap())],
        both.as_bytes(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    // A page of another origin cannot ask for a token.
    let (status, _, _) = token_req(
        good.clone(),
        "grant_type=client_credentials",
        vec![("Origin", "http://evil.example".into())],
    )
    .await;
    assert_eq!(status, 403);
    // Not a form: refused.
    let (status, _, body) = http(
        addr,
        "POST",
        "/oauth/token",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", good.as_deref().unwrap()),
        ],
        br#"{"grant_type":"client_credentials"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");

    // The client secret in the body works too, and the token it gives
    // serves the MCP endpoint for the scopes granted.
    let (status, _, body) = http(
        addr,
        "POST",
        "/oauth/token",
        &form,
        format!("grant_type=client_credentials&client_id=a1&client_secret={secret}&scope=echo%3Acall&resource=http%3A%2F%2F{addr}%2Fmcp").as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let t: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["scope"], "echo:call");
    let token = t["access_token"].as_str().unwrap();
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let (status, reply) = rpc(addr, token, &list).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = reply["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"echo") && !names.contains(&"lookup"),
        "{names:?}"
    );
}

#[tokio::test]
async fn the_end_user_confirms_a_call_through_the_sdks_elicitation() {
    let g = GatewayMesh::start().await.unwrap();
    let addr = g.sidecar.mcp_addr.expect("MCP front door");
    let (s, _) = g
        .session(&["echo:call", "payments:refund"], 0, &[])
        .await
        .unwrap();
    let seen = sdk_client("mcp_elicit.py", addr, &s.token).await;
    // A client that can ask gets a session; one that cannot, none.
    assert_eq!(
        (seen["has_session"].clone(), seen["plain_session"].clone()),
        (json!(true), json!(false))
    );
    // Asked once per call of the confirmed tool, never for the others; the
    // question shows the call with sensitive values redacted.
    let asked = seen["asked"].as_array().unwrap();
    assert_eq!(asked.len(), 3, "{asked:?}");
    let first = asked[0]["message"].as_str().unwrap();
    assert!(
        first.contains("transfer") && first.contains("o-yes"),
        "{first}"
    );
    assert!(!first.contains("4111111111111111"), "{first}");
    assert_eq!(asked[0]["schema"]["properties"]["allow"]["type"], "boolean");
    // An explicit yes runs the call; no, or a dismissal, refuses it.
    assert_eq!(seen["accepted"]["is_error"], false, "{seen}");
    assert!(seen["accepted"]["text"].as_str().unwrap().contains("o-yes"));
    for k in ["declined", "cancelled"] {
        assert_eq!(seen[k]["is_error"], true, "{k}: {seen}");
        assert_eq!(seen[k]["refusal"]["reason"], "APPROVAL_DENIED", "{k}");
        assert_eq!(seen[k]["refusal"]["rule"], "by user", "{k}");
    }
    assert_eq!(seen["unasked"]["is_error"], false);
    // A client without the capability: a clear refusal. (Over gRPC the
    // user's application answers: tests/tests/approval_flow.rs.)
    assert_eq!(
        seen["cannot_ask"]["refusal"]["reason"],
        "USER_CONFIRMATION_UNAVAILABLE"
    );
}
