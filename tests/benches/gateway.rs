//! Tool-gateway benchmark. In one run, 32 concurrent callers, at a fixed
//! 3,000 calls/s and flat out:
//!
//! - the floor: a no-op tonic RPC (gRPC health `Check`) on the sidecar's
//!   agent port;
//! - `WhoAmI` (a diagnostic: the token check alone);
//! - the sidecar's `Authorize` (stages 1–6: token, schema, Cedar, limits);
//! - `CallTool` to a local HTTP upstream (secret injected, output
//!   inspected), against calling that upstream directly with the same
//!   request.
//!
//! The sidecar runs in its own process (this binary re-executed) so that
//! its RSS is its own; the control plane, the upstream and the callers share
//! the parent process. Everything is on 127.0.0.1 and shares two cores.
//!
//! Run: `cargo bench -p warden-tests --bench gateway`. Knobs for profiling:
//! `WARDEN_BENCH_PIPELINE_ONLY=1` (the in-process pipeline alone),
//! `WARDEN_BENCH_PROFILE_CALLTOOL=1` (a flat-out CallTool phase first, to
//! attach a profiler to the sidecar), `WARDEN_BENCH_LOG=warn` (the
//! sidecar's log filter: `warn` leaves out the audit events), `WARDEN_BENCH_RT=current|N` (the
//! sidecar's runtime: current-thread or N workers).

#![allow(
    clippy::unwrap_used,
    reason = "a benchmark aborts on any unexpected error"
)]

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::agent_service_client::AgentServiceClient;
use warden_tests::*;

const CALLERS: usize = 32;
const RATE: f64 = 3000.0;
const RUN: Duration = Duration::from_secs(4);

const SECRET: &str = "sk-bench-0123456789abcdef";

const POLICY: &str = r#"
version: 1
secrets:
  key: "file:{SECRET_FILE}"
tools:
  - name: echo
    description: Returns its arguments.
    input_schema:
      type: object
      properties: { text: { type: string, maxLength: 100 } }
      required: [text]
      additionalProperties: false
    scopes: ["bench:call"]
    risk: low
    upstream: { kind: builtin, address: echo }
    limits: { calls_per_minute: 100000000 }
  - name: upstream_ok
    description: A local HTTP upstream.
    input_schema:
      type: object
      properties: { text: { type: string, maxLength: 100 } }
      required: [text]
      additionalProperties: false
    scopes: ["bench:call"]
    risk: low
    upstream:
      kind: http
      address: "{UPSTREAM}/ok"
      method: POST
      headers: { Authorization: "Bearer ${secret:key}" }
    secrets: [key]
    limits: { calls_per_minute: 100000000 }
cedar: |
  permit (principal, action, resource);
  forbid (principal, action == Warden::Action::"echo", resource)
  when { context.arguments.text == "forbidden" };
"#;

/// The sidecar process.
fn child_main(config: &str) {
    let c: serde_json::Value = serde_json::from_str(config).unwrap();
    let s = |k: &str| c[k].as_str().unwrap().to_owned();
    // Logs as the real binary writes them (JSON, info, to stderr, which the
    // parent discards): every call's audit event is formatted and written.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("WARDEN_BENCH_LOG").unwrap_or_else(|_| "info".into()),
        ))
        .with_writer(std::io::stderr)
        .json()
        .init();
    let rt = match std::env::var("WARDEN_BENCH_RT").as_deref() {
        Ok("current") => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        Ok(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.parse().unwrap())
            .enable_all()
            .build()
            .unwrap(),
        Err(_) => tokio::runtime::Runtime::new().unwrap(),
    };
    rt.block_on(async {
        let mut cfg = warden_sidecar::config::Config::new(
            &s("url"),
            s("ca").into(),
            &s("agent"),
            s("dir").into(),
        );
        cfg.trust_domain = TD.into();
        cfg.listen = any_port();
        cfg.health_listen = any_port();
        cfg.join_token = Some(s("token"));
        let sc = warden_sidecar::app::start(cfg).await.unwrap();
        let ok = eventually(Duration::from_secs(10), || async {
            sc.auth.state().held().policy.is_some()
        })
        .await;
        assert!(ok, "no policy reached the sidecar");
        println!("READY {}", sc.agent_addr.unwrap());
        let _ = tokio::task::spawn_blocking(|| std::io::stdin().lines().count()).await;
    });
}

/// The upstream process: prints its address, serves until stdin closes.
fn upstream_main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let addr = upstream().await;
        println!("READY {addr}");
        let _ = tokio::task::spawn_blocking(|| std::io::stdin().lines().count()).await;
    });
}

/// Starts this binary as a child in `role` (env `WARDEN_BENCH_<role>`)
/// and reads the address it prints.
fn spawn_child(role: &str, value: &str) -> (std::process::Child, SocketAddr) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(role, value)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().strip_prefix("READY ").unwrap().parse().unwrap();
    (child, addr)
}

/// A minimal upstream: answers every request with a small JSON document.
async fn upstream() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let _ = req.into_body().collect().await;
                        let mut r = hyper::Response::new(Full::new(Bytes::from_static(
                            br#"{"ok":true,"id":"rec_42"}"#,
                        )));
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, std::convert::Infallible>(r)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[derive(Default)]
struct Stats {
    lat: Vec<Duration>,
    secs: f64,
    errors: usize,
}

impl Stats {
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.lat.clone();
        v.sort();
        v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e6
    }
    fn rate(&self) -> f64 {
        self.lat.len() as f64 / self.secs
    }
    fn line(&self, name: &str) {
        println!(
            "  {name:<34} {:>8.0}/s   p50 {:>6.0} µs   p99 {:>6.0} µs   p99.9 {:>6.0} µs{}",
            self.rate(),
            self.pct(0.50),
            self.pct(0.99),
            self.pct(0.999),
            if self.errors > 0 {
                format!("   ({} errors)", self.errors)
            } else {
                String::new()
            }
        );
    }
}

/// Runs `op` from `CALLERS` tasks for `RUN`, each at `rate / CALLERS`
/// calls per second (`None`: as fast as answers come).
async fn drive<F, Fut>(rate: Option<f64>, op: F) -> Stats
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CALLERS {
        let op = Arc::clone(&op);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            let interval = rate.map(|r| Duration::from_secs_f64(CALLERS as f64 / r));
            // Spread the callers' schedules over one interval.
            let mut next =
                start + interval.map_or(Duration::ZERO, |i| i.mul_f64(w as f64 / CALLERS as f64));
            while start.elapsed() < RUN {
                if let Some(i) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += i;
                }
                let t = Instant::now();
                if op(w).await {
                    lat.push(t.elapsed());
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let mut s = Stats::default();
    for t in tasks {
        let (l, e) = t.await.unwrap();
        s.lat.extend(l);
        s.errors += e;
    }
    s.secs = start.elapsed().as_secs_f64();
    s
}

/// The pipeline alone, in process: stages 2–6 and the record of an
/// `Authorize` (no transport, token already verified). Returns µs per call.
fn pipeline_only(doc: &str, iterations: u32) -> f64 {
    use warden_sidecar::gateway::pipeline::{Gateway, Request};
    let push = pb::StreamResponse {
        version: 1,
        standing: Some(pb::StandingPart {
            digest: 1,
            status: pb::AgentStatus::Active.into(),
            agent_type: "bench".into(),
            owner: "bench".into(),
            ..Default::default()
        }),
        policy: Some(pb::PolicyPart {
            digest: 2,
            version: 1,
            document: doc.into(),
            tools: ["echo", "upstream_ok"]
                .map(|t| pb::EffectiveTool {
                    name: t.into(),
                    risk: "low".into(),
                })
                .into(),
        }),
        ..Default::default()
    };
    let now = warden_control_plane::now_unix();
    let held = warden_sidecar::state::held::Held::default()
        .apply(&push, now)
        .unwrap();
    let claims = warden_shared::token::Claims {
        iss: "spiffe://bench.warden/control-plane".into(),
        sub: "usr_1".into(),
        aud: "spiffe://bench.warden/agent/bench".into(),
        exp: now + 900,
        iat: now,
        jti: "j".into(),
        client_id: "spiffe://bench.warden/agent/bench".into(),
        scope: "bench:call".into(),
        sid: "s".into(),
        cnf: warden_shared::token::Confirmation {
            x5t_s256: "t".into(),
        },
        constraints: Default::default(),
        ctx: Default::default(),
    };
    let g = Gateway::new("bench", Default::default());
    let r = Request {
        rpc: "Authorize",
        tool: "echo",
        arguments: r#"{"text":"hello"}"#,
        reason: "",
        trace_id: "",
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert!(
        rt.block_on(g.authorize(&held, &claims, &r, Instant::now()))
            .allowed
    );
    let t = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(rt.block_on(g.authorize(&held, &claims, &r, Instant::now())));
    }
    t.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
}

type Agents = Arc<Vec<AgentServiceClient<InterceptedService<Channel, AgentAuth>>>>;

/// One caller's operation: `Authorize` (`authorize`) or `CallTool` of `tool`
/// with `{"text":"hello"}`; true when it succeeded (and was allowed).
fn agent_op(
    agents: &Agents,
    tool: &'static str,
    authorize: bool,
) -> impl Fn(usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
+ Send
+ Sync
+ 'static {
    let agents = Arc::clone(agents);
    move |w| {
        let mut c = agents[w].clone();
        Box::pin(async move {
            let args = r#"{"text":"hello"}"#.to_owned();
            if authorize {
                c.authorize(pb::AuthorizeRequest {
                    tool: tool.into(),
                    arguments_json: args,
                    ..Default::default()
                })
                .await
                .is_ok_and(|r| r.into_inner().allowed)
            } else {
                c.call_tool(pb::CallToolRequest {
                    tool: tool.into(),
                    arguments_json: args,
                    ..Default::default()
                })
                .await
                .is_ok()
            }
        })
    }
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::main]
async fn main() {
    if let Ok(c) = std::env::var("WARDEN_BENCH_SIDECAR") {
        return tokio::task::spawn_blocking(move || child_main(&c))
            .await
            .unwrap();
    }
    if std::env::var("WARDEN_BENCH_UPSTREAM").is_ok() {
        return tokio::task::spawn_blocking(upstream_main).await.unwrap();
    }
    let pipeline = {
        let doc = POLICY
            .replace("{UPSTREAM}", "http://127.0.0.1:9")
            .replace("{SECRET_FILE}", "/k");
        tokio::task::spawn_blocking(move || pipeline_only(&doc, 200_000))
            .await
            .unwrap()
    };
    if std::env::var("WARDEN_BENCH_PIPELINE_ONLY").is_ok() {
        println!("pipeline alone: {pipeline:.2} µs per Authorize");
        return;
    }
    let mesh = Mesh::start().await.unwrap();
    // The upstream in a process of its own: calling it directly crosses
    // processes as calling it through the sidecar does.
    let (mut up_child, up) = spawn_child("WARDEN_BENCH_UPSTREAM", "1");
    let secret_file = mesh.dir.path().join("key");
    std::fs::write(&secret_file, SECRET).unwrap();
    let doc = POLICY
        .replace("{UPSTREAM}", &format!("http://{up}"))
        .replace("{SECRET_FILE}", &secret_file.display().to_string());
    mesh.admin()
        .await
        .unwrap()
        .apply_policy(apply_policy(&doc))
        .await
        .unwrap();
    mesh.register("bench", &["bench:call"], 64).await.unwrap();
    let token = mesh.join_token("bench").await.unwrap();
    let config = serde_json::json!({
        "url": mesh.url(), "ca": mesh.ca_path(), "agent": "bench", "token": token,
        "dir": mesh.dir.path().join("sidecar"),
    });
    let (mut child, agent_addr) = spawn_child("WARDEN_BENCH_SIDECAR", &config.to_string());
    let pid = child.id();
    let idle_rss = rss_kib(pid);

    let mut channels = Vec::new();
    for _ in 0..CALLERS {
        let ch: Channel = Endpoint::from_shared(format!("http://{agent_addr}"))
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap();
        channels.push(ch);
    }
    let mut first = AgentServiceClient::with_interceptor(channels[0].clone(), AgentAuth::default());
    let session = first
        .start_session(pb::StartSessionRequest {
            scopes: vec!["bench:call".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let auth = AgentAuth {
        token: Some(session.token),
        no_header: false,
    };
    let agents: Agents = Arc::new(
        channels
            .iter()
            .map(|c| AgentServiceClient::with_interceptor(c.clone(), auth.clone()))
            .collect(),
    );
    let health: Arc<Vec<_>> = Arc::new(
        channels
            .iter()
            .map(|c| HealthClient::new(c.clone()))
            .collect(),
    );
    let direct: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CALLERS)
        .build_http();
    let body = r#"{"text":"hello"}"#;

    // Sanity: each operation works before it is timed.
    let r = agents[0]
        .clone()
        .call_tool(pb::CallToolRequest {
            tool: "upstream_ok".into(),
            arguments_json: body.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.upstream_status, 200);

    println!(
        "warden gateway benchmark ({CALLERS} concurrent callers, {} s per phase)",
        RUN.as_secs()
    );
    println!("sidecar RSS idle: {:.1} MiB", idle_rss as f64 / 1024.0);
    println!(
        "pipeline alone, in process (stages 2-6 and the record of an Authorize): {pipeline:.2} µs"
    );
    if std::env::var("WARDEN_BENCH_PROFILE_CALLTOOL").is_ok() {
        // For a profiler attached to the sidecar: CallTool flat out, alone.
        drive(None, agent_op(&agents, "upstream_ok", false))
            .await
            .line("CallTool → HTTP upstream");
    }
    for rate in [Some(RATE), None] {
        match rate {
            Some(r) => println!("\nfixed rate {r:.0} calls/s:"),
            None => println!("\nflat out:"),
        }
        let h = Arc::clone(&health);
        let echo = drive(rate, move |w| {
            let mut c = h[w].clone();
            async move {
                c.check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok()
            }
        })
        .await;
        echo.line("no-op tonic RPC (floor)");
        // Diagnostic: the same hop with the session token verified (cached)
        // and nothing else, between the floor and Authorize.
        let a2 = Arc::clone(&agents);
        drive(rate, move |w| {
            let mut c = a2[w].clone();
            async move { c.who_am_i(pb::WhoAmIRequest {}).await.is_ok() }
        })
        .await
        .line("WhoAmI (token check only)");
        let authz = drive(rate, agent_op(&agents, "echo", true)).await;
        authz.line("Authorize");
        let builtin = drive(rate, agent_op(&agents, "echo", false)).await;
        builtin.line("CallTool → builtin echo");
        let call = drive(rate, agent_op(&agents, "upstream_ok", false)).await;
        call.line("CallTool → HTTP upstream");
        let d = direct.clone();
        let direct_stats = drive(rate, move |_| {
            let d = d.clone();
            async move {
                let req = hyper::Request::post(format!("http://{up}/ok"))
                    .header("content-type", "application/json")
                    .header("authorization", format!("Bearer {SECRET}"))
                    .body(Full::new(Bytes::from_static(body.as_bytes())))
                    .unwrap();
                match d.request(req).await {
                    Ok(r) => r.into_body().collect().await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
        direct_stats.line("direct call to the upstream");
        println!(
            "  → Authorize / floor: p50 {:.2}×, p99 {:.2}×;  CallTool − direct: p50 +{:.0} µs, p99 +{:.0} µs;  throughput CallTool / direct: {:.0}%",
            authz.pct(0.5) / echo.pct(0.5),
            authz.pct(0.99) / echo.pct(0.99),
            call.pct(0.5) - direct_stats.pct(0.5),
            call.pct(0.99) - direct_stats.pct(0.99),
            100.0 * call.rate() / direct_stats.rate(),
        );
    }
    println!(
        "\nsidecar RSS: idle {:.1} MiB, after the runs {:.1} MiB",
        idle_rss as f64 / 1024.0,
        rss_kib(pid) as f64 / 1024.0
    );
    for c in [&mut child, &mut up_child] {
        drop(c.stdin.take());
        let _ = c.kill();
        let _ = c.wait();
    }
}
