//! `warden-sidecar` refuses bad configuration with exit code 64 and a
//! message that says what to fix.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_warden-sidecar"))
        .args(args)
        .env_clear()
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_exits_64() {
    let (code, err) = run(&[
        "--ca-bundle",
        "/x",
        "--agent-id",
        "a",
        "--data-dir",
        "/tmp/x",
    ]);
    assert_eq!(code, Some(64));
    assert!(err.contains("missing --control-plane"), "{err}");

    let base = [
        "--control-plane",
        "https://localhost:7443",
        "--ca-bundle",
        "/x",
        "--data-dir",
        "/tmp/x",
    ];
    let (code, err) = run(&[&base[..], &["--agent-id", "Bad Id"]].concat());
    assert_eq!(code, Some(64));
    assert!(err.contains("invalid agent id"), "{err}");

    let (code, err) = run(&[&base[..], &["--agent-id", "a", "--listen", "0.0.0.0:7600"]].concat());
    assert_eq!(code, Some(64));
    assert!(err.contains("not a loopback address"), "{err}");

    let (code, err) = run(&[
        "--control-plane",
        "http://localhost:1",
        "--ca-bundle",
        "/x",
        "--data-dir",
        "/tmp/x",
        "--agent-id",
        "a",
    ]);
    assert_eq!(code, Some(64));
    assert!(err.contains("https://"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sidecar.toml");
    std::fs::write(&cfg, "control_plane = \"https://x\"\nunknown_key = 1\n").unwrap();
    let (code, err) = run(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(64));
    assert!(err.contains("unknown field"), "{err}");
}

#[test]
fn a_config_file_may_leave_the_required_settings_to_flags_and_environment() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sidecar.toml");
    std::fs::write(
        &cfg,
        "[redis]\nurl = \"redis://127.0.0.1:6379\"\nkey_prefix = \"warden:cli-test:\"\n",
    )
    .unwrap();
    let parsed = warden_sidecar::config::Config::from_file(&cfg).unwrap();
    assert_eq!(
        parsed.missing(),
        ["control_plane", "ca_bundle", "agent_id", "data_dir"]
    );
    assert!(parsed.validate().is_err());

    // Named only partly: the first missing one, with where to give it.
    let (code, err) = run(&["--config", cfg.to_str().unwrap(), "--agent-id", "a"]);
    assert_eq!(code, Some(64));
    assert!(
        err.contains("missing --control-plane") && err.contains("WARDEN_CONTROL_PLANE"),
        "{err}"
    );

    // Given by a flag and the environment: the sidecar starts (and, with no
    // control plane to enroll with, waits for one).
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden-sidecar"))
        .args(["--config", cfg.to_str().unwrap()])
        .args(["--control-plane", "https://localhost:1", "--agent-id", "a"])
        .args(["--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0"])
        .env_clear()
        .env("WARDEN_CA_BUNDLE", dir.path().join("ca.crt"))
        .env("WARDEN_SIDECAR_DATA_DIR", &data)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen = String::new();
    let effective = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("effective configuration") => break Some(line),
            Ok(line) => seen.push_str(&line),
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    child.wait().unwrap();
    let effective = effective.unwrap_or_else(|| panic!("no effective configuration: {seen}"));
    assert!(
        effective.contains("agent_id: \"a\"") && effective.contains("warden:cli-test:"),
        "{effective}"
    );
}

#[test]
fn the_example_config_in_deploy_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/config/sidecar.toml");
    let c = warden_sidecar::config::Config::from_file(std::path::Path::new(path)).unwrap();
    c.validate().unwrap();
    assert_eq!(c.agent_id, "coder-1");
}

#[test]
fn the_redis_example_config_in_deploy_is_valid() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/config/sidecar-redis.toml"
    );
    let c = warden_sidecar::config::Config::from_file(std::path::Path::new(path)).unwrap();
    c.validate().unwrap();
    let r = c.redis.unwrap();
    assert_eq!((r.timeout_ms, r.key_prefix.as_str()), (5, "warden:prod:"));
    // The URL's password never reaches a log line.
    let mut with_pw = r.clone();
    with_pw.url = "redis://:hunter2@redis:6379".into();
    assert!(!format!("{with_pw:?}").contains("hunter2"));
    with_pw.timeout_ms = 0;
    assert!(with_pw.validate().is_err());
}
