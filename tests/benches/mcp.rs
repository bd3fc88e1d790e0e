//! MCP benchmark: `tools/call` on one upstream MCP server, directly,
//! through the Warden sidecar (its MCP front door, the whole pipeline, and
//! its MCP client to the server), and through IBM's ContextForge MCP
//! gateway, side by side in one run.
//!
//! - **Upstream**: a minimal stateless MCP server (streamable HTTP, JSON
//!   answers) in a process of its own (this binary re-executed), answering
//!   `tools/call` of `echo` with the text it was given.
//! - **direct**: `tools/call` posted to the upstream itself.
//! - **sidecar**: the same call posted to the sidecar's `/mcp` with a
//!   session token (got from its OAuth token endpoint); the tool is the
//!   server's `echo`, admitted and pinned by the policy as `bench.echo`.
//! - **ContextForge**: the same call posted to ContextForge's MCP endpoint,
//!   the upstream registered as a gateway in its default embedded setup
//!   (SQLite). Set `WARDEN_BENCH_CONTEXTFORGE` to the virtualenv holding
//!   `mcp-contextforge-gateway` (see BENCHMARKS.md); without it, that
//!   column is skipped.
//!
//! Load comes from `h2load` (Debian `nghttp2-client`) over HTTP/1.1: one
//! client back to back (latency without queueing), a fixed rate every
//! target sustains (latency, p50 and p99 from h2load's per-request log),
//! then flat out (saturation throughput). Phases run in
//! rounds, interleaved (direct, sidecar, ContextForge, direct, …); the
//! ratios are taken within a round and the summary gives their medians.
//!
//! Run: `cargo bench -p warden-tests --bench mcp`. Knobs:
//! `WARDEN_BENCH_ROUNDS` (default 5), `WARDEN_BENCH_SECS` (per phase,
//! default 3), `WARDEN_BENCH_RATE` (the fixed rate, default 500/s),
//! `WARDEN_BENCH_CONTEXTFORGE` (a virtualenv path), `WARDEN_BENCH_LOG=warn`
//! (the sidecar's log filter: `warn` leaves out the audit events),
//! `WARDEN_BENCH_RT=current` (the sidecar on a current-thread runtime),
//! `WARDEN_BENCH_HOLD=1`
//! (print the targets and keep everything up until stdin closes, for a
//! profiler or a load generator by hand).

#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a benchmark aborts on any unexpected error and prints floats"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use warden_tests::bench::{Phase, env_or, h2load, median, phase_secs, spawn_child};
use warden_tests::*;

/// h2load's clients in the fixed-rate phases.
const RATE_CLIENTS: u32 = 10;
/// h2load's clients flat out.
const FLAT_CLIENTS: u32 = 32;

const DESCRIPTION: &str = "Echoes the text.";

fn input_schema() -> Value {
    json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]})
}

const POLICY: &str = r#"
version: 1
mcp_servers:
  bench:
    url: "{UPSTREAM}"
tools:
  - name: bench.echo
    description: Echoes the text.
    input_schema:
      type: object
      properties: { text: { type: string, maxLength: 100 } }
      required: [text]
      additionalProperties: false
    scopes: ["bench:call"]
    risk: low
    upstream: { kind: mcp, address: bench, tool: echo, pin: "{PIN}" }
    limits: { calls_per_minute: 100000000 }
cedar: |
  permit (principal, action, resource);
"#;

/// The upstream's answer to one JSON-RPC message (`None`: a notification,
/// answered `202`).
fn answer(msg: &Value) -> Option<Value> {
    let id = msg.get("id")?.clone();
    let result = match msg["method"].as_str().unwrap_or_default() {
        "initialize" => json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {"tools": {"listChanged": false}},
            "serverInfo": {"name": "bench-upstream", "version": "1"},
        }),
        "ping" => json!({}),
        "tools/list" => json!({"tools": [{
            "name": "echo", "description": DESCRIPTION, "inputSchema": input_schema(),
        }]}),
        "tools/call" => json!({
            "content": [{"type": "text",
                         "text": msg["params"]["arguments"]["text"].as_str().unwrap_or_default()}],
            "isError": false,
        }),
        _ => {
            return Some(json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": -32601, "message": "no such method"}}));
        }
    };
    Some(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

/// The upstream process: a stateless MCP server; prints its address,
/// serves until stdin closes.
fn upstream_main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let addr = bench::http_upstream(|body| {
            let msg: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            match answer(&msg) {
                Some(a) => (http::StatusCode::OK, Some(Bytes::from(a.to_string()))),
                None => (http::StatusCode::ACCEPTED, None),
            }
        })
        .await;
        println!("READY {addr}");
        let _ = tokio::task::spawn_blocking(|| std::io::stdin().lines().count()).await;
    });
}

/// The sidecar process: prints its MCP address once it holds the policy.
fn sidecar_main(config: &str) {
    bench::json_logs(&std::env::var("WARDEN_BENCH_LOG").unwrap_or_else(|_| "info".into()));
    let mut cfg = bench::sidecar_config(config);
    cfg.mcp_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let rt = if std::env::var("WARDEN_BENCH_RT").as_deref() == Ok("current") {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Runtime::new().unwrap()
    };
    rt.block_on(bench::serve_sidecar(cfg, |sc| sc.mcp_addr.unwrap()));
}

/// One round: per target, its back-to-back, fixed-rate and flat-out
/// phases.
type Round = Vec<[Phase; 3]>;

/// A target of the benchmark: where `tools/call` goes, and how.
struct Target {
    name: &'static str,
    url: String,
    headers: Vec<String>,
    body: PathBuf,
}

/// One POST of `body` to `url` with `headers` ("name: value"), on a fresh
/// connection; the answer as JSON (an event stream's first message).
async fn post(url: &str, headers: &[String], body: &[u8]) -> Value {
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr: SocketAddr = tokio::net::lookup_host(authority)
        .await
        .unwrap()
        .next()
        .unwrap();
    let mut h: Vec<(&str, &str)> = headers
        .iter()
        .map(|l| {
            let (k, v) = l.split_once(": ").unwrap();
            (k, v)
        })
        .collect();
    h.push(("Host", authority));
    let (status, _, text) = http1::exchange(addr, "POST", path, &h, body).await.unwrap();
    assert!((200..300).contains(&status), "{url}: HTTP {status}: {text}");
    let json = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or(&text);
    serde_json::from_str(json).unwrap_or(Value::Null)
}

/// ContextForge, started from the virtualenv `venv` on a free port with its
/// default embedded database (SQLite in `dir`), the upstream registered as
/// a gateway and its tool put in a virtual server: its MCP URL, the
/// headers a call needs, and the tool's name there. Besides the secrets it
/// refuses to start without, two settings differ from its defaults: an
/// upstream on localhost is allowed (`SSRF_ALLOW_LOCALHOST`), and its rate
/// limiter is off (Warden's limits are set out of reach too).
async fn contextforge(
    venv: &Path,
    dir: &Path,
    upstream: SocketAddr,
) -> (Child, String, Vec<String>, String) {
    // A free port, released for ContextForge to bind.
    let port = upstream::reserve_port().unwrap().1;
    let random = || (0..6).map(|_| rand_suffix()).collect::<String>();
    let jwt_secret = random();
    let bin = venv.join("bin");
    let env = [
        ("JWT_SECRET_KEY", jwt_secret.clone()),
        (
            "AUTH_ENCRYPTION_SECRET",
            format!("{}{}", rand_suffix(), rand_suffix()).repeat(2),
        ),
        ("SSRF_ALLOW_LOCALHOST", "true".to_owned()),
        ("RATE_LIMITING_ENABLED", "false".to_owned()),
        (
            "DATABASE_URL",
            format!("sqlite:///{}/mcp.db", dir.display()),
        ),
    ];
    let child = Command::new(bin.join("mcpgateway"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("contextforge.log")).unwrap())
        .spawn()
        .expect("starting ContextForge's mcpgateway");
    let base = format!("http://127.0.0.1:{port}");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let up = eventually(Duration::from_secs(180), || async {
        matches!(
            http1::exchange(addr, "GET", "/health", &[], b"").await,
            Ok((200, _, _))
        )
    })
    .await;
    assert!(
        up,
        "ContextForge did not come up on {base}: {}",
        std::fs::read_to_string(dir.join("contextforge.log")).unwrap_or_default()
    );
    let out = Command::new(bin.join("python"))
        .args([
            "-m",
            "mcpgateway.utils.create_jwt_token",
            "--username",
            "admin@example.com",
            "--exp",
            "120",
            "--secret",
            &jwt_secret,
        ])
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let jwt = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let auth = format!("Authorization: Bearer {jwt}");
    let json_headers = vec!["Content-Type: application/json".to_owned(), auth.clone()];
    let gw = post(
        &format!("{base}/gateways"),
        &json_headers,
        json!({"name": "bench", "url": format!("http://localhost:{}/mcp", upstream.port()),
               "transport": "STREAMABLEHTTP"})
        .to_string()
        .as_bytes(),
    )
    .await;
    assert!(gw["id"].is_string(), "registering the upstream: {gw}");
    let tools = post_get(&format!("{base}/tools"), &json_headers).await;
    let tool = tools
        .as_array()
        .and_then(|t| t.iter().find(|t| t["originalName"] == "echo"))
        .expect("ContextForge lists the upstream's echo")
        .clone();
    let server = post(
        &format!("{base}/servers"),
        &json_headers,
        json!({"server": {"name": "bench_vs", "description": "bench",
                          "associated_tools": [tool["id"]]}})
        .to_string()
        .as_bytes(),
    )
    .await;
    let sid = server["id"].as_str().expect("a virtual server").to_owned();
    let headers = vec![
        "Content-Type: application/json".to_owned(),
        "Accept: application/json, text/event-stream".to_owned(),
        "MCP-Protocol-Version: 2025-06-18".to_owned(),
        auth,
    ];
    (
        child,
        format!("{base}/servers/{sid}/mcp"),
        headers,
        tool["name"].as_str().unwrap().to_owned(),
    )
}

async fn post_get(url: &str, headers: &[String]) -> Value {
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr: SocketAddr = authority.parse().unwrap();
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|l| l.split_once(": ").unwrap())
        .chain([("Host", authority)])
        .collect();
    let (_, _, text) = http1::exchange(addr, "GET", path, &h, b"").await.unwrap();
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// A phase against `t`: at `rps` per client with `clients` clients, or
/// flat out.
fn phase(t: &Target, clients: u32, rps: Option<u32>, log: &Path) -> Phase {
    h2load(&t.url, &t.body, &t.headers, clients, rps, true, 20, log)
}

#[tokio::main]
async fn main() {
    if let Ok(c) = std::env::var("WARDEN_BENCH_SIDECAR") {
        return tokio::task::spawn_blocking(move || sidecar_main(&c))
            .await
            .unwrap();
    }
    if std::env::var("WARDEN_BENCH_UPSTREAM").is_ok() {
        return tokio::task::spawn_blocking(upstream_main).await.unwrap();
    }
    let rounds = env_or("WARDEN_BENCH_ROUNDS", 5);
    let rate = env_or("WARDEN_BENCH_RATE", 500) as u32;
    let mesh = Mesh::start().await.unwrap();
    let (mut up_child, up) = spawn_child("WARDEN_BENCH_UPSTREAM", "1");
    let upstream_url = format!("http://{up}/mcp");
    let pin = warden_shared::policy::mcp_pin(DESCRIPTION, &input_schema());
    let doc = POLICY
        .replace("{UPSTREAM}", &upstream_url)
        .replace("{PIN}", &pin);
    mesh.admin()
        .await
        .unwrap()
        .apply_policy(apply_policy(&doc))
        .await
        .unwrap();
    mesh.register("bench", &["bench:call"], 64).await.unwrap();
    let token = mesh.join_token("bench").await.unwrap();
    let dir = mesh.dir.path().join("sidecar");
    let config = json!({
        "url": mesh.url(), "ca": mesh.ca_path(), "agent": "bench", "token": token,
        "dir": dir,
    });
    let (mut sc_child, mcp_addr) = spawn_child("WARDEN_BENCH_SIDECAR", &config.to_string());
    // A session token, as an MCP client gets it: OAuth client_credentials.
    let secret = std::fs::read_to_string(dir.join("mcp-client-secret")).unwrap();
    let t = post(
        &format!("http://{mcp_addr}/oauth/token"),
        &["Content-Type: application/x-www-form-urlencoded".to_owned()],
        format!(
            "grant_type=client_credentials&client_id=bench&client_secret={}",
            secret.trim()
        )
        .as_bytes(),
    )
    .await;
    let session = t["access_token"].as_str().unwrap().to_owned();

    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, v: &Value| {
        let p = files.path().join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p
    };
    let call = |tool: &str| {
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
               "params": {"name": tool, "arguments": {"text": "hello"}}})
    };
    let mcp_headers = |auth: Option<&str>| {
        let mut h = vec![
            "Content-Type: application/json".to_owned(),
            "Accept: application/json, text/event-stream".to_owned(),
            "MCP-Protocol-Version: 2025-06-18".to_owned(),
        ];
        h.extend(auth.map(|a| format!("Authorization: Bearer {a}")));
        h
    };
    let mut targets = vec![
        Target {
            name: "direct",
            url: upstream_url.clone(),
            headers: mcp_headers(None),
            body: write("direct", &call("echo")),
        },
        Target {
            name: "sidecar",
            url: format!("http://{mcp_addr}/mcp"),
            headers: mcp_headers(Some(&session)),
            body: write("sidecar", &call("bench.echo")),
        },
    ];
    let mut cf_child = None;
    match std::env::var("WARDEN_BENCH_CONTEXTFORGE") {
        Ok(venv) => {
            let cf_dir = mesh.dir.path().join("contextforge");
            std::fs::create_dir_all(&cf_dir).unwrap();
            let (child, url, headers, tool) = contextforge(Path::new(&venv), &cf_dir, up).await;
            cf_child = Some(child);
            targets.push(Target {
                name: "ContextForge",
                url,
                headers,
                body: write("contextforge", &call(&tool)),
            });
        }
        Err(_) => println!(
            "ContextForge: skipped (set WARDEN_BENCH_CONTEXTFORGE to a virtualenv holding mcp-contextforge-gateway)"
        ),
    }
    // Each target answers the call before it is timed.
    for t in &targets {
        let body = std::fs::read(&t.body).unwrap();
        let r = post(&t.url, &t.headers, &body).await;
        let text = r["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default();
        assert!(
            text == "hello" && r["result"]["isError"] != true,
            "{}: {r}",
            t.name
        );
    }

    if std::env::var("WARDEN_BENCH_HOLD").is_ok() {
        // Everything stays up for a profiler or a load generator by hand.
        for t in &targets {
            println!(
                "{}: {} body {} headers {:?} (sidecar pid {})",
                t.name,
                t.url,
                t.body.display(),
                t.headers,
                sc_child.id()
            );
        }
        let _ = tokio::task::spawn_blocking(|| std::io::stdin().lines().count()).await;
    }
    println!(
        "MCP tools/call, {rounds} rounds × {} s per phase; h2load --h1, {RATE_CLIENTS} clients at {rate}/s in all, then {FLAT_CLIENTS} clients flat out",
        phase_secs()
    );
    let log = files.path().join("log");
    let per_client = (rate / RATE_CLIENTS).max(1);
    // results[round][target] = [back-to-back, fixed rate, flat out]
    let mut results: Vec<Round> = Vec::new();
    for round in 0..rounds {
        println!("  round {}", round + 1);
        let mut row: Round = vec![Default::default(); targets.len()];
        for (i, t) in targets.iter().enumerate() {
            let p = phase(t, 1, None, &log);
            p.line(&format!("{} back to back", t.name));
            row[i][0] = p;
        }
        // ContextForge sustains far less than the fixed rate: queueing
        // would be all its latency showed, so it has no fixed-rate phase.
        for (i, t) in targets.iter().enumerate().take(2) {
            let p = phase(t, RATE_CLIENTS, Some(per_client), &log);
            p.line(&format!("{} at {rate}/s", t.name));
            row[i][1] = p;
        }
        for (i, t) in targets.iter().enumerate() {
            let p = phase(t, FLAT_CLIENTS, None, &log);
            p.line(&format!("{} flat out", t.name));
            row[i][2] = p;
        }
        results.push(row);
    }

    println!("summary (medians over rounds; ratios pair by pair within a round):");
    let med = |f: &dyn Fn(&Round) -> f64| median(results.iter().map(f).collect());
    for (i, t) in targets.iter().enumerate() {
        println!(
            "  {:<13} back to back: p50 {:>6.0} µs p99 {:>6.0} µs | at {rate}/s: p50 {:>6.0} µs p99 {:>6.0} µs | flat out: {:>6.0}/s p50 {:>6.0} µs p99 {:>6.0} µs",
            t.name,
            med(&|r| r[i][0].pct(0.50)),
            med(&|r| r[i][0].pct(0.99)),
            med(&|r| r[i][1].pct(0.50)),
            med(&|r| r[i][1].pct(0.99)),
            med(&|r| r[i][2].rate),
            med(&|r| r[i][2].pct(0.50)),
            med(&|r| r[i][2].pct(0.99)),
        );
    }
    let added = |k: usize, p: f64| med(&|r| r[1][k].pct(p) - r[0][k].pct(p));
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "  sidecar over direct, back to back: +{:.0} µs at p50 (goal ≤ 200 µs: {}), +{:.0} µs at p99",
        added(0, 0.50),
        verdict(added(0, 0.50) <= 200.0),
        added(0, 0.99)
    );
    println!(
        "  sidecar over direct at {rate}/s: +{:.0} µs at p50 (goal ≤ 200 µs: {}), +{:.0} µs at p99",
        added(1, 0.50),
        verdict(added(1, 0.50) <= 200.0),
        added(1, 0.99)
    );
    println!(
        "  sidecar flat out: {:.0}% of direct's throughput",
        100.0 * med(&|r| r[1][2].rate / r[0][2].rate)
    );
    if targets.len() > 2 {
        let x = med(&|r| r[1][2].rate / r[2][2].rate);
        let p99 = |k: usize| med(&|r| r[1][k].pct(0.99) / r[2][k].pct(0.99));
        println!(
            "  sidecar vs ContextForge: {x:.1}× its throughput flat out (goal ≥ 5×: {}); p99 {:.4}× its p99 back to back, {:.4}× flat out (goal < 1: {})",
            verdict(x >= 5.0),
            p99(0),
            p99(2),
            verdict(p99(0) < 1.0 && p99(2) < 1.0)
        );
    }
    let errors: u64 = results
        .iter()
        .flatten()
        .map(|p| p.iter().map(|x| x.errors).sum::<u64>())
        .sum();
    println!("  errors in all phases: {errors}");
    drop(sc_child.stdin.take());
    let _ = sc_child.wait();
    drop(up_child.stdin.take());
    let _ = up_child.wait();
    if let Some(mut c) = cf_child {
        let _ = c.kill();
        let _ = c.wait();
    }
}
