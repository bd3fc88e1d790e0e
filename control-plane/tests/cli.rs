//! The command-line tools against a real control plane: `wardenctl` output
//! (human and `--json`), its errors, and `warden-control-plane` config errors.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use warden_control_plane::{app, config::Config, init};

async fn control_plane(dir: &Path) -> (app::Running, String) {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    init::run(&init::InitOptions {
        data_dir: dir.join("cp"),
        trust_domain: "cli.test".into(),
        admin_name: "ops".into(),
        admin_ttl: Duration::from_secs(3600),
        import_ca: None,
        listen: any,
        jwks_listen: any,
    })
    .unwrap();
    let mut c = Config::load(&dir.join("cp")).unwrap();
    c.durable_sync = false;
    let cp = app::start(c).await.unwrap();
    let addr = format!("https://localhost:{}", cp.grpc_addr.port());
    (cp, addr)
}

/// Runs wardenctl off the async runtime (it is a blocking child process).
async fn ctl(dir: &Path, addr: &str, args: &[&str]) -> Output {
    let (dir, addr) = (dir.join("cp/admin"), addr.to_owned());
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_wardenctl"))
            .arg("--config-dir")
            .arg(dir)
            .arg("--address")
            .arg(addr)
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn wardenctl_manages_agents_and_join_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (_cp, addr) = control_plane(dir.path()).await;
    let d = dir.path();

    let o = ctl(
        d,
        &addr,
        &[
            "agents",
            "register",
            "coder-1",
            "--type",
            "coder",
            "--owner",
            "platform",
            "--scope",
            "repo:read",
            "--scope",
            "repo:write:*",
            "--deny-tool",
            "shell",
            "--max-sessions",
            "3",
            "--expires-in",
            "30d",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o).contains("spiffe://cli.test/agent/coder-1"),
        "{}",
        out(&o)
    );
    assert!(out(&o).contains("status:       active"), "{}", out(&o));

    let o = ctl(d, &addr, &["--json", "agents", "list"]).await;
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v[0]["id"], "coder-1");
    assert_eq!(
        v[0]["allowed_scopes"],
        serde_json::json!(["repo:read", "repo:write:*"])
    );
    assert_eq!(v[0]["denied_tools"], serde_json::json!(["shell"]));
    assert_eq!(v[0]["max_concurrent_sessions"], 3);

    let o = ctl(
        d,
        &addr,
        &["--json", "join-token", "create", "coder-1", "--ttl", "120"],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert!(v["join_token"].as_str().unwrap().starts_with("wjt_"));

    let o = ctl(
        d,
        &addr,
        &[
            "--json", "agents", "suspend", "coder-1", "--reason", "audit",
        ],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["status_reason"].as_str()),
        (Some("suspended"), Some("audit"))
    );
    let o = ctl(d, &addr, &["agents", "resume", "coder-1"]).await;
    assert!(out(&o).contains("status:       active"));
    let o = ctl(d, &addr, &["agents", "revoke", "coder-1"]).await;
    assert!(out(&o).contains("status:       revoked"));
    let o = ctl(d, &addr, &["agents", "resume", "coder-1"]).await;
    assert!(!o.status.success());
    assert!(err(&o).contains("[AGENT_STATE_FINAL]"), "{}", err(&o));

    // Credentials from flags instead of the config directory.
    let admin = d.join("cp/admin");
    let (ca, cert, key) = (
        admin.join("ca.crt"),
        admin.join("admin.crt"),
        admin.join("admin.key"),
    );
    let addr2 = addr.clone();
    let o = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_wardenctl"))
            .args(["--config-dir", "/nonexistent", "--address", &addr2, "--ca"])
            .arg(ca)
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .args(["--json", "agents", "get", "coder-1"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("\"status\":\"revoked\""), "{}", out(&o));

    let o = ctl(d, &addr, &["keys", "rotate"]).await;
    assert!(out(&o).contains("active key:"), "{}", out(&o));
}

#[tokio::test]
async fn wardenctl_errors_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let (_cp, addr) = control_plane(dir.path()).await;
    let d = dir.path();

    let o = ctl(d, &addr, &["agents", "get", "ghost"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("NotFound") && err(&o).contains("[AGENT_UNKNOWN]"),
        "{}",
        err(&o)
    );

    let o = ctl(
        d,
        &addr,
        &[
            "agents", "register", "Bad Id", "--type", "x", "--owner", "y",
        ],
    )
    .await;
    assert!(
        err(&o).contains("[INVALID_ARGUMENT]") && err(&o).contains("invalid agent id"),
        "{}",
        err(&o)
    );

    let o = ctl(
        d,
        &addr,
        &[
            "agents", "register", "a", "--type", "x", "--owner", "y", "--scope", "nocolon",
        ],
    )
    .await;
    assert!(
        err(&o).contains("needs at least resource:action"),
        "{}",
        err(&o)
    );

    let o = ctl(
        d,
        &addr,
        &[
            "agents",
            "register",
            "a",
            "--type",
            "x",
            "--owner",
            "y",
            "--expires-in",
            "3y",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "clap usage error");
    assert!(err(&o).contains("unit must be s, m, h or d"), "{}", err(&o));

    // Nothing was registered by the refused calls.
    let o = ctl(d, &addr, &["--json", "agents", "list"]).await;
    assert_eq!(out(&o).trim(), "[]");

    let missing = tokio::task::spawn_blocking(|| {
        Command::new(env!("CARGO_BIN_EXE_wardenctl"))
            .args(["--config-dir", "/nonexistent/warden", "agents", "list"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        err(&missing).contains("pass --address"),
        "{}",
        err(&missing)
    );
}

#[test]
fn control_plane_refuses_bad_configuration_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_warden-control-plane"))
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64));
    assert!(
        err(&o).contains("run `warden-control-plane init` first"),
        "{}",
        err(&o)
    );

    let data = dir.path().join("cp");
    let init = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_warden-control-plane"))
            .args(["init", "--data-dir"])
            .arg(&data)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = init(&["--trust-domain", "Bad_Domain"]);
    assert_eq!(o.status.code(), Some(64));
    assert!(err(&o).contains("invalid trust domain"), "{}", err(&o));
    assert!(
        !data.join("ca/ca.key").exists(),
        "a refused init writes no key"
    );
    assert!(init(&[]).status.success());
    let o = init(&[]);
    assert_eq!(o.status.code(), Some(64));
    assert!(
        err(&o).contains("this data directory is initialised"),
        "{}",
        err(&o)
    );

    std::fs::write(
        data.join("control-plane.toml"),
        "trust_domain = \"x\"\nbogus = 1\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_warden-control-plane"))
        .args(["serve", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64));
    assert!(err(&o).contains("unknown field"), "{}", err(&o));
}

#[test]
fn the_example_config_in_deploy_is_valid_and_matches_the_defaults() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/config/control-plane.toml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let c: Config = toml::from_str(&text).unwrap();
    c.validate().unwrap();
    let d = Config::new("warden.local", Path::new(""));
    assert_eq!(toml::to_string(&c).unwrap(), toml::to_string(&d).unwrap());
}

#[tokio::test]
async fn wardenctl_policy_commands() {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/policies/example.yaml"
    );
    // Offline validation needs no server and no credentials.
    let o = Command::new(env!("CARGO_BIN_EXE_wardenctl"))
        .args([
            "--config-dir",
            "/nonexistent",
            "policy",
            "validate",
            example,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("valid (5 tools"), "{}", out(&o));
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(example)
            .unwrap()
            .replace("secrets: [mail_api_key]", "secrets: [smtp]"),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_wardenctl"))
        .args(["--config-dir", "/nonexistent", "policy", "validate"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("undefined secret \"smtp\"")
            && err(&o).contains("[POLICY_UNDEFINED_SECRET]"),
        "{}",
        err(&o)
    );

    let (_cp, addr) = control_plane(dir.path()).await;
    let d = dir.path();
    let o = ctl(d, &addr, &["policy", "apply", example]).await;
    assert!(
        out(&o).contains("applied as version 1"),
        "{} {}",
        out(&o),
        err(&o)
    );
    let o = ctl(d, &addr, &["policy", "apply", example]).await;
    assert!(
        out(&o).contains("unchanged: identical to version 1"),
        "{}",
        out(&o)
    );
    let o = ctl(d, &addr, &["policy", "apply", bad.to_str().unwrap()]).await;
    assert!(err(&o).contains("[POLICY_UNDEFINED_SECRET]"), "{}", err(&o));

    let changed = d.join("changed.yaml");
    std::fs::write(
        &changed,
        std::fs::read_to_string(example)
            .unwrap()
            .replace("calls_per_minute: 30", "calls_per_minute: 10"),
    )
    .unwrap();
    let o = ctl(d, &addr, &["policy", "diff", changed.to_str().unwrap()]).await;
    assert!(
        out(&o).contains("-    limits: { calls_per_minute: 30")
            && out(&o).contains("+    limits: { calls_per_minute: 10"),
        "{}",
        out(&o)
    );
    let o = ctl(
        d,
        &addr,
        &[
            "policy",
            "apply",
            changed.to_str().unwrap(),
            "--expect-version",
            "1",
        ],
    )
    .await;
    assert!(
        out(&o).contains("applied as version 2"),
        "{} {}",
        out(&o),
        err(&o)
    );
    let o = ctl(
        d,
        &addr,
        &["policy", "apply", example, "--expect-version", "1"],
    )
    .await;
    assert!(err(&o).contains("[POLICY_VERSION_CONFLICT]"), "{}", err(&o));
    let o = ctl(d, &addr, &["--json", "policy", "history"]).await;
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["applied_by"], "ops");
    let o = ctl(d, &addr, &["policy", "get", "--version", "1"]).await;
    assert_eq!(out(&o), std::fs::read_to_string(example).unwrap());
}
