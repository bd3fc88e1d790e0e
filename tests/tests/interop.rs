//! Interoperability: a session token verifies with PyJWT against the JWKS
//! endpoint, and the `cryptography` package reads the SPIFFE ID and the
//! thumbprint from the issued certificate. Runs `tests/python/verify_token.py`
//! with the interpreter in `WARDEN_PYTHON` (set up by `tests/run.sh`).

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

use std::process::Command;

use warden_shared::proto::v1 as pb;
use warden_tests::*;

const NO_PYTHON: &str = "WARDEN_PYTHON must point at a Python with tests/python/requirements.txt installed; run the tests with ./tests/run.sh";

/// Runs `tests/python/<script>` with `args`: (success, stdout, stderr).
fn python(script: &'static str) -> impl Fn(Vec<String>) -> (bool, String, String) + Clone {
    let python = std::env::var("WARDEN_PYTHON").expect(NO_PYTHON);
    let script = format!("{}/python/{script}", env!("CARGO_MANIFEST_DIR"));
    move |args: Vec<String>| {
        let out = Command::new(&python)
            .arg(&script)
            .args(args)
            .output()
            .expect("running python");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[tokio::test]
async fn pyjwt_verifies_tokens_and_cryptography_reads_the_svid() {
    let run = python("verify_token.py");
    let mesh = Mesh::start().await.unwrap();
    let sc = mesh.agent("py-agent", &["data:read"], 2).await.unwrap();
    let mut c = agent_tcp(&sc, AgentAuth::default()).await.unwrap();
    let s = c
        .start_session(pb::StartSessionRequest {
            scopes: vec!["data:read".into()],
            user_id: "usr_7".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let id = sc.identity.snapshot().current.clone().unwrap();
    let jwks_url = format!("http://{}/.well-known/jwks.json", mesh.cp.jwks_addr);
    let cert = sc.data_dir.join("identity/svid.crt");
    let (issuer, audience) = (
        format!("spiffe://{TD}/control-plane"),
        id.spiffe_id.to_string(),
    );
    let thumbprint = format!("--expect-thumbprint={}", id.thumbprint);
    let args = [
        "--jwks-url",
        &jwks_url,
        "--token",
        &s.token,
        "--issuer",
        &issuer,
        "--audience",
        &audience,
        "--cert",
        cert.to_str().unwrap(),
        "--expect-spiffe-id",
        &audience,
        // One argument: a base64url thumbprint may start with `-`, which
        // argparse would take for an option.
        &thumbprint,
    ];
    let owned = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    // The JWKS is fetched by Python over real HTTP; run it off the runtime.
    let run2 = run.clone();
    let ok = tokio::task::spawn_blocking({
        let a = owned(&args);
        move || run2(a)
    });
    let (success, stdout, stderr) = ok.await.unwrap();
    assert!(success, "python verification failed: {stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["sub"], "usr_7");
    assert_eq!(v["spiffe_id"], audience.as_str());

    // And it must be able to fail: a wrong audience is refused by PyJWT.
    let mut bad = owned(&args);
    bad[7] = format!("spiffe://{TD}/agent/someone-else");
    let (success, _, stderr) = tokio::task::spawn_blocking(move || run(bad)).await.unwrap();
    assert!(!success, "PyJWT accepted a wrong audience");
    assert!(stderr.to_lowercase().contains("audience"), "{stderr}");
}

#[tokio::test]
async fn a_python_agent_uses_the_sidecar_over_its_unix_socket() {
    let python = std::env::var("WARDEN_PYTHON").expect(NO_PYTHON);
    let mesh = Mesh::start().await.unwrap();
    let sc = mesh.agent("py-agent", &["data:*"], 2).await.unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/agent_client.py");
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    let socket = sc.socket_path.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(["--proto-dir", proto, "--scope", "data:read", "--socket"])
            .arg(socket)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python agent failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["agent_id"], "py-agent");
    assert_eq!(v["user_id"], "usr_py");
    assert_eq!(v["scopes"], serde_json::json!(["data:read"]));
    assert_eq!(v["spiffe_id"], format!("spiffe://{TD}/agent/py-agent"));
}

/// The envelope specification in the README is enough to interoperate: an
/// independent Python implementation (standard library only) checks the
/// README's test vector, verifies an envelope a real sidecar signed, and
/// refuses it with one payload byte changed.
#[tokio::test]
async fn python_verifies_envelopes_from_the_readme_specification() {
    let run = python("verify_envelope.py");
    let r = run.clone();
    let (ok, out, _) = tokio::task::spawn_blocking(move || r(vec!["--vector".into()]))
        .await
        .unwrap();
    assert!(ok && out.contains("test vector OK"), "{out}");

    let mesh = Mesh::start().await.unwrap();
    let policy = "version: 1\nmessaging:\n  allow: [{from: 'agent:py-a', to: 'agent:py-b'}]\n";
    mesh.admin()
        .await
        .unwrap()
        .apply_policy(apply_policy(policy))
        .await
        .unwrap();
    let a = mesh.agent("py-a", &["data:read"], 2).await.unwrap();
    let _b = mesh.agent("py-b", &["data:read"], 2).await.unwrap();
    let keyed = eventually(std::time::Duration::from_secs(10), || async {
        a.auth.state().held().pair_keys.of("py-a", "py-b").is_some()
    })
    .await;
    assert!(keyed, "py-a's sidecar holds no key for py-b");
    let mut c = warden_tests::messaging::client(&a).await.unwrap();
    let e = c
        .sign_message(pb::SignMessageRequest {
            recipient_agent: "py-b".into(),
            payload: b"{\"task\": \"review\"}".to_vec(),
            content_type: "application/json".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .envelope
        .unwrap();
    let held = a.auth.state().held();
    let key = held
        .pair_keys
        .of("py-a", "py-b")
        .unwrap()
        .iter()
        .find(|k| k.epoch == e.key_id)
        .unwrap()
        .key
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let json = |e: &pb::Envelope| {
        serde_json::json!({
            "version": e.version, "sender": e.sender, "recipient": e.recipient,
            "timestamp_ms": e.timestamp_ms, "nonce": hex(&e.nonce), "key_id": e.key_id,
            "content_type": e.content_type, "payload": hex(&e.payload), "mac": hex(&e.mac),
        })
        .to_string()
    };
    let args = |e: &pb::Envelope| {
        vec![
            "--key".to_owned(),
            key.clone(),
            "--envelope".to_owned(),
            json(e),
        ]
    };
    let (r, a1) = (run.clone(), args(&e));
    let (ok, out, _) = tokio::task::spawn_blocking(move || r(a1)).await.unwrap();
    assert!(ok, "python refused a genuine envelope");
    assert_eq!(out.trim(), format!("spiffe://{TD}/agent/py-a"));
    let mut t = e.clone();
    t.payload[0] ^= 1;
    let a2 = args(&t);
    let (ok, _, _) = tokio::task::spawn_blocking(move || run(a2)).await.unwrap();
    assert!(!ok, "python accepted a changed payload");
}

/// The README's Python example for messages: two Python agents, each over
/// its own sidecar's Unix socket, sign and verify (`agent_messages.py`).
#[tokio::test]
async fn python_agents_sign_and_verify_messages() {
    let mesh = Mesh::start().await.unwrap();
    let policy =
        "version: 1\nmessaging:\n  allow: [{from: 'agent:py-sender', to: 'agent:py-recipient'}]\n";
    mesh.admin()
        .await
        .unwrap()
        .apply_policy(apply_policy(policy))
        .await
        .unwrap();
    let a = mesh.agent("py-sender", &["data:read"], 2).await.unwrap();
    let b = mesh.agent("py-recipient", &["data:read"], 2).await.unwrap();
    let keyed = eventually(std::time::Duration::from_secs(10), || async {
        a.auth
            .state()
            .held()
            .pair_keys
            .of("py-sender", "py-recipient")
            .is_some()
    })
    .await;
    assert!(keyed, "the sender's sidecar holds no key");
    let run = python("agent_messages.py");
    let args = vec![
        "--proto-dir".to_owned(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/../proto").to_owned(),
        "--sender-socket".to_owned(),
        a.socket_path.display().to_string(),
        "--recipient-socket".to_owned(),
        b.socket_path.display().to_string(),
        "--recipient".to_owned(),
        "py-recipient".to_owned(),
    ];
    let (ok, out, err) = tokio::task::spawn_blocking(move || run(args))
        .await
        .unwrap();
    assert!(ok, "python agents failed: {err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["sender"], "py-sender");
    assert_eq!(v["payload"], r#"{"task": "review PR 42"}"#);
    assert_eq!(v["replay"], "ALREADY_EXISTS");
    assert_eq!(v["checks"].as_array().unwrap().len(), 10);
}
