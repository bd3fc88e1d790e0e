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

#[tokio::test]
async fn pyjwt_verifies_tokens_and_cryptography_reads_the_svid() {
    let python = std::env::var("WARDEN_PYTHON").expect(
        "WARDEN_PYTHON must point at a Python with tests/python/requirements.txt installed; run the tests with ./tests/run.sh",
    );
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
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/verify_token.py");
    let jwks_url = format!("http://{}/.well-known/jwks.json", mesh.cp.jwks_addr);
    let cert = sc.data_dir.join("identity/svid.crt");
    let (issuer, audience) = (
        format!("spiffe://{TD}/control-plane"),
        id.spiffe_id.to_string(),
    );
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
        "--expect-thumbprint",
        &id.thumbprint,
    ];
    let run = move |args: Vec<String>| {
        let out = Command::new(&python)
            .arg(script)
            .args(args)
            .output()
            .expect("running python");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
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
    let python = std::env::var("WARDEN_PYTHON").expect(
        "WARDEN_PYTHON must point at a Python with tests/python/requirements.txt installed; run the tests with ./tests/run.sh",
    );
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
