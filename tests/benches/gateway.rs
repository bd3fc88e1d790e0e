//! Tool-gateway benchmark: what the sidecar adds to a call, measured
//! against a floor that differs from the measured call only by the work
//! the sidecar does.
//!
//! - **Floor**: `Ping`, a no-op RPC on the same agent API, through the same
//!   interceptor and codec, carrying the same token (unchecked).
//! - **Authorize**: stages 1–6 (token, schema, Cedar, limits) and the record.
//! - **CallTool → HTTP**: every stage, the upstream called over HTTP/1.1
//!   with a secret injected and the answer inspected; against **direct**,
//!   the same request sent to the upstream without the sidecar.
//!
//! Each phase is driven twice, by two load generators: this binary's own
//! client (tonic/hyper; fixed-rate load paced by one OS thread releasing
//! each call at its own instant, so calls do not leave in 1 ms bunches) and
//! `h2load` (Debian `nghttp2-client`), a third-party generator speaking
//! h2c gRPC and HTTP/1.1. The phases run in rounds, interleaved
//! (floor, Authorize, direct, CallTool, floor, …), and every ratio is taken
//! within a round, pair by pair; the summary gives the medians over rounds.
//!
//! The sidecar and the upstream run in processes of their own (this binary
//! re-executed); the control plane and the load generators share the parent
//! process, each on a tokio runtime of its own (so the control plane's
//! bursts of work do not delay the generator's timing). Everything is on
//! 127.0.0.1 and shares two cores.
//!
//! Run: `cargo bench -p warden-tests --bench gateway`. Knobs:
//! `WARDEN_BENCH_ROUNDS` (default 5), `WARDEN_BENCH_SECS` (per phase,
//! default 3), `WARDEN_BENCH_PIPELINE_ONLY=1` (the in-process figure alone),
//! `WARDEN_BENCH_PROFILE=ping|authorize|upstream_ok` (that operation flat
//! out for a phase, alone, to attach a profiler to the sidecar whose pid it
//! prints),
//! `WARDEN_BENCH_LOG=warn` (the sidecar's log filter: `warn` leaves out the
//! audit events), `WARDEN_BENCH_RT=current|N` (the sidecar's runtime).

#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::too_many_arguments,
    reason = "a benchmark aborts on any unexpected error and prints floats"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::agent_service_client::AgentServiceClient;
use warden_tests::bench::{
    Phase, cpu_us, env_or, h2load, median, phase_secs, rss_kib, spawn_child, status_kib,
};
use warden_tests::*;

/// Concurrent callers (connections) of this binary's client.
const CALLERS: usize = 32;
/// The fixed rate, calls per second.
const RATE: u32 = 3000;
/// h2load's clients at the fixed rate (each at `RATE / H2_CLIENTS`/s).
const H2_CLIENTS: u32 = 30;

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

/// The runtime of the sidecar's process (and the relay's):
/// `WARDEN_BENCH_RT=current|N`, tokio's default otherwise.
fn child_runtime() -> tokio::runtime::Runtime {
    match std::env::var("WARDEN_BENCH_RT").as_deref() {
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
    }
}

/// The sidecar process.
fn child_main(config: &str) {
    bench::json_logs(&std::env::var("WARDEN_BENCH_LOG").unwrap_or_else(|_| "info".into()));
    let rt = child_runtime();
    let cfg = bench::sidecar_config(config);
    rt.block_on(bench::serve_sidecar(cfg, |sc| sc.agent_addr.unwrap()));
}

/// The bare relay: the agent API's server as the sidecar runs it (tonic,
/// the same per-connection limit, `TCP_NODELAY`), whose `CallTool` sends
/// the arguments to the upstream with the sidecar's own HTTP client and
/// answers with what came back, and nothing else: no token check, no
/// stages, no audit event, no output inspection. It measures what the
/// transport parts cost on their own on this machine, the figure any
/// sidecar built from them can at best reach.
struct Relay {
    clients: warden_sidecar::gateway::execute::http::Clients,
    upstream: warden_shared::policy::Upstream,
    secrets: std::collections::HashMap<String, warden_sidecar::gateway::execute::secrets::Secret>,
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for Relay {
    async fn ping(
        &self,
        _: tonic::Request<pb::PingRequest>,
    ) -> Result<tonic::Response<pb::PingResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::PingResponse {}))
    }

    async fn call_tool(
        &self,
        req: tonic::Request<pb::CallToolRequest>,
    ) -> Result<tonic::Response<pb::CallToolResponse>, tonic::Status> {
        use warden_sidecar::gateway::execute::http;
        let args: serde_json::Value = serde_json::from_str(&req.get_ref().arguments_json)
            .map_err(|_| tonic::Status::invalid_argument("arguments"))?;
        let out = http::call(
            &self.clients,
            http::Call {
                upstream: &self.upstream,
                args: &args,
                secrets: &self.secrets,
                call_id: "relay",
                trace_id: "",
                timeout: Duration::from_secs(5),
                max_bytes: 1 << 20,
            },
        )
        .await
        .map_err(|_| tonic::Status::unavailable("upstream"))?;
        Ok(tonic::Response::new(pb::CallToolResponse {
            call_id: "relay".into(),
            content: out.content,
            content_type: out.content_type,
            upstream_status: u32::from(out.status),
            is_error: out.status >= 400,
            redactions: 0,
        }))
    }

    async fn start_session(
        &self,
        _: tonic::Request<pb::StartSessionRequest>,
    ) -> Result<tonic::Response<pb::StartSessionResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("relay"))
    }

    async fn end_session(
        &self,
        _: tonic::Request<pb::EndSessionRequest>,
    ) -> Result<tonic::Response<pb::EndSessionResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("relay"))
    }

    async fn who_am_i(
        &self,
        _: tonic::Request<pb::WhoAmIRequest>,
    ) -> Result<tonic::Response<pb::WhoAmIResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("relay"))
    }

    async fn list_tools(
        &self,
        _: tonic::Request<pb::ListToolsRequest>,
    ) -> Result<tonic::Response<pb::ListToolsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("relay"))
    }

    async fn authorize(
        &self,
        _: tonic::Request<pb::AuthorizeRequest>,
    ) -> Result<tonic::Response<pb::AuthorizeResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("relay"))
    }

    async fn confirm_call(
        &self,
        _: tonic::Request<pb::ConfirmCallRequest>,
    ) -> Result<tonic::Response<pb::ConfirmCallResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("relay"))
    }
}

/// The `warden-sidecar` binary as shipped (`cargo build --release -p
/// warden-sidecar`: the release profile, which benchmarks share the
/// directory of), or where `WARDEN_BENCH_SIDECAR_BIN` says.
fn sidecar_binary() -> Result<std::path::PathBuf, String> {
    if let Ok(p) = std::env::var("WARDEN_BENCH_SIDECAR_BIN") {
        return Ok(p.into());
    }
    // <target>/<profile>/deps/gateway-<hash> → <target>/<profile>/warden-sidecar
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("warden-sidecar"))
        .ok_or("no directory above this binary")?;
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build it with `cargo build --release -p warden-sidecar`, or set WARDEN_BENCH_SIDECAR_BIN",
            bin.display()
        ))
    }
}

/// The idle RSS (KiB: total, anonymous) of the `warden-sidecar` binary
/// itself, enrolled as an agent of its own and ready. The benchmark's
/// sidecar is this binary re-executed: it maps the code of the control
/// plane, the load generators and the test harness too, and its RSS counts
/// pages of that code which the parent brought into memory.
async fn binary_idle_rss(mesh: &Mesh) -> Result<(u64, u64), String> {
    let bin = sidecar_binary()?;
    mesh.register("idle", &["bench:call"], 4)
        .await
        .map_err(|e| e.to_string())?;
    let token = mesh.join_token("idle").await.map_err(|e| e.to_string())?;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())
    };
    let health = free()?;
    let mut child = std::process::Command::new(&bin)
        .args(["--control-plane", &mesh.url()])
        .arg("--ca-bundle")
        .arg(mesh.ca_path())
        .args(["--agent-id", "idle", "--trust-domain", TD])
        .arg("--data-dir")
        .arg(mesh.dir.path().join("sidecar-idle"))
        .args(["--listen", &free()?.to_string()])
        .args(["--health-listen", &health.to_string()])
        .env("WARDEN_JOIN_TOKEN", token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    // Ready: enrolled, and holding its policy.
    let ready = async {
        loop {
            if readyz(health).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let waited = tokio::time::timeout(Duration::from_secs(30), ready).await;
    let rss = waited.map_err(|_| "the sidecar binary was not ready within 30 s".to_owned());
    let rss = rss.map(|()| (rss_kib(child.id()), status_kib(child.id(), "RssAnon:")));
    let _ = child.kill();
    let _ = child.wait();
    rss
}

/// Whether the sidecar's health listener at `addr` answers `/readyz` 200.
async fn readyz(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.is_ok() && head.ends_with(b"200")
}

fn print_binary_rss(r: Result<&(u64, u64), &String>) {
    match r {
        Ok((total, anon)) => println!(
            "warden-sidecar binary RSS idle: {:.1} MiB (goal ≤ 25; anonymous {:.1} MiB)",
            *total as f64 / 1024.0,
            *anon as f64 / 1024.0
        ),
        Err(e) => println!("warden-sidecar binary RSS idle: not measured ({e})"),
    }
}

/// The relay's process: prints its address, serves until stdin closes.
fn relay_main(upstream: &str) {
    use warden_sidecar::gateway::execute::secrets::Secret;
    let rt = child_runtime();
    rt.block_on(async {
        let relay = Relay {
            clients: Default::default(),
            upstream: serde_json::from_value(serde_json::json!({
                "kind": "http",
                "address": format!("http://{upstream}/ok"),
                "method": "POST",
                "headers": { "Authorization": "Bearer ${secret:key}" },
            }))
            .unwrap(),
            secrets: [("key".to_owned(), Secret::new(SECRET.into()))].into(),
        };
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("READY {}", l.local_addr().unwrap());
        let server = tonic::transport::Server::builder()
            .concurrency_limit_per_connection(64)
            .add_service(pb::agent_service_server::AgentServiceServer::new(relay))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true)),
                async {
                    let _ = tokio::task::spawn_blocking(|| std::io::stdin().lines().count()).await;
                },
            );
        server.await.unwrap();
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

/// A minimal upstream: answers every request with a small JSON document.
async fn upstream() -> SocketAddr {
    bench::http_upstream(|_| {
        (
            http::StatusCode::OK,
            Some(Bytes::from_static(br#"{"ok":true,"id":"rec_42"}"#)),
        )
    })
    .await
}

/// Runs `phase`, measuring the CPU time `pid` spent per completed call.
async fn with_cpu<F: Future<Output = Phase>>(pid: u32, phase: F) -> Phase {
    let before = cpu_us(pid);
    let t = Instant::now();
    let mut p = phase.await;
    let calls = p.rate * t.elapsed().as_secs_f64();
    p.cpu_per_call = (cpu_us(pid) - before) / calls.max(1.0);
    p
}

type Op = Arc<dyn Fn(usize) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// Runs `op` from `CALLERS` tasks for a phase. At a fixed `rate`, one OS
/// thread releases each call at its own instant (a high-resolution sleep,
/// not the runtime's 1 ms timer wheel) and the callers take them in turn;
/// latency is from when a caller starts the call. `None`: each caller
/// calls again as soon as it has its answer.
async fn drive(rate: Option<u32>, op: Op) -> Phase {
    let run = Duration::from_secs(phase_secs());
    let start = Instant::now();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let pacer = rate.map(|r| {
        std::thread::spawn(move || {
            let interval = Duration::from_secs_f64(1.0 / f64::from(r));
            let mut due = start;
            while due.duration_since(start) < run {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if tx.send(()).is_err() {
                    return;
                }
                due += interval;
            }
        })
    });
    let mut tasks = Vec::new();
    for w in 0..CALLERS {
        let (op, rx) = (Arc::clone(&op), Arc::clone(&rx));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            loop {
                if rate.is_some() {
                    if rx.lock().await.recv().await.is_none() {
                        break;
                    }
                } else if start.elapsed() >= run {
                    break;
                }
                let t = Instant::now();
                if op(w).await {
                    lat.push(t.elapsed().as_secs_f64() * 1e6);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let mut p = Phase::default();
    for t in tasks {
        let (l, e) = t.await.unwrap();
        p.lat.extend(l);
        p.errors += e;
    }
    if let Some(h) = pacer {
        h.join().unwrap();
    }
    p.rate = p.lat.len() as f64 / start.elapsed().as_secs_f64();
    p
}

/// A gRPC request body: the length-prefixed message.
fn grpc_frame(m: &impl Message) -> Vec<u8> {
    let body = m.encode_to_vec();
    let mut f = vec![0u8];
    f.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    f.extend_from_slice(&body);
    f
}

/// The in-process pipeline: `Authorize` with its token verified (cached),
/// stages 2–6 and the record, the audit event formatted as production
/// formats it (JSON) by the writer thread. Returns µs per call.
fn pipeline_only(doc: &str, iterations: u32) -> f64 {
    use warden_sidecar::gateway::fixture::Fixture;
    use warden_sidecar::gateway::pipeline::Request;
    let f = Fixture::new(
        doc,
        &[("echo", "low"), ("upstream_ok", "low")],
        Default::default(),
    );
    let token = f.token(&f.claims("ses_bench", "bench:call"));
    let creds = f.credentials(&token);
    let r = Request {
        rpc: "Authorize",
        tool: "echo",
        arguments: r#"{"text":"hello"}"#,
        reason: "",
        trace_id: "",
        no_wait: false,
        user: warden_sidecar::gateway::approve::UserChannel::None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let d = rt.block_on(f.gateway.authorize(&creds, &r)).unwrap();
    assert!(d.refusal.is_none(), "{:?}", d.refusal);
    let t = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(rt.block_on(f.gateway.authorize(&creds, &r)).unwrap());
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / f64::from(iterations);
    assert!(f.gateway.recorder.flush());
    us
}

type Agents = Arc<Vec<AgentServiceClient<InterceptedService<Channel, AgentAuth>>>>;

fn agent_op(agents: &Agents, what: &'static str) -> Op {
    let agents = Arc::clone(agents);
    Arc::new(move |w| {
        let mut c = agents[w].clone();
        Box::pin(async move {
            let args = r#"{"text":"hello"}"#.to_owned();
            match what {
                "ping" => c.ping(pb::PingRequest {}).await.is_ok(),
                "authorize" => c
                    .authorize(pb::AuthorizeRequest {
                        tool: "echo".into(),
                        arguments_json: args,
                        ..Default::default()
                    })
                    .await
                    .is_ok_and(|r| r.into_inner().allowed),
                _ => c
                    .call_tool(pb::CallToolRequest {
                        tool: what.into(),
                        arguments_json: args,
                        ..Default::default()
                    })
                    .await
                    .is_ok_and(|r| r.into_inner().upstream_status == 200),
            }
        })
    })
}

/// The figures of one round: p50/p99 per phase at the fixed rate and the
/// flat-out rates.
#[derive(Default, Clone)]
struct Round {
    floor: Phase,
    authorize: Phase,
    direct: Phase,
    call: Phase,
    floor_max: f64,
    direct_max: f64,
    call_max: f64,
}

impl Round {
    fn ratios(&self) -> [f64; 5] {
        let two_hop = 1.0 / (1.0 / self.floor_max + 1.0 / self.direct_max);
        [
            self.authorize.pct(0.5) / self.floor.pct(0.5),
            self.authorize.pct(0.99) / self.floor.pct(0.99),
            self.call.pct(0.5) / (self.floor.pct(0.5) + self.direct.pct(0.5)),
            self.call.pct(0.99) / (self.floor.pct(0.99) + self.direct.pct(0.99)),
            self.call_max / two_hop,
        ]
    }
}

const RATIO_NAMES: [&str; 5] = [
    "Authorize p50 / floor p50           (goal ≤ 1.3)",
    "Authorize p99 / floor p99           (goal ≤ 2.0)",
    "CallTool p50 / (floor + direct) p50 (goal ≤ 1.2)",
    "CallTool p99 / (floor + direct) p99 (goal ≤ 1.5)",
    "CallTool max / two-hop ceiling      (goal ≥ 0.70)",
];

/// Prints the medians over `rounds` (the `Authorize` figures only when
/// `authorize`: the relay has none).
fn summary(name: &str, rounds: &[Round], authorize: bool) {
    println!("\n{name}: medians over {} rounds", rounds.len());
    let per: Vec<[f64; 5]> = rounds.iter().map(Round::ratios).collect();
    for (i, n) in RATIO_NAMES.iter().enumerate() {
        if !authorize && i < 2 {
            continue;
        }
        let v: Vec<f64> = per.iter().map(|r| r[i]).collect();
        println!(
            "  {n}: {:.2}   (rounds: {})",
            median(v.clone()),
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let med = |f: &dyn Fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    println!(
        "  p50/p99 µs at {RATE}/s: floor {:.0}/{:.0}, Authorize {:.0}/{:.0}, direct {:.0}/{:.0}, CallTool {:.0}/{:.0}",
        med(&|r| r.floor.pct(0.5)),
        med(&|r| r.floor.pct(0.99)),
        med(&|r| r.authorize.pct(0.5)),
        med(&|r| r.authorize.pct(0.99)),
        med(&|r| r.direct.pct(0.5)),
        med(&|r| r.direct.pct(0.99)),
        med(&|r| r.call.pct(0.5)),
        med(&|r| r.call.pct(0.99)),
    );
    println!(
        "  flat out: floor {:.0}/s, direct {:.0}/s, CallTool {:.0}/s",
        med(&|r| r.floor_max),
        med(&|r| r.direct_max),
        med(&|r| r.call_max),
    );
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
    if let Ok(up) = std::env::var("WARDEN_BENCH_RELAY") {
        return tokio::task::spawn_blocking(move || relay_main(&up))
            .await
            .unwrap();
    }
    // Logs as the sidecar writes them (JSON, info), to nowhere: the
    // in-process figure pays for formatting every audit event.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::sink)
        .json()
        .init();
    let pipeline = {
        let doc = POLICY
            .replace("{UPSTREAM}", "http://127.0.0.1:9")
            .replace("{SECRET_FILE}", "/k");
        tokio::task::spawn_blocking(move || pipeline_only(&doc, 200_000))
            .await
            .unwrap()
    };
    println!(
        "pipeline alone, in process (Authorize: cached token check, stages 2-6, the audit event formatted as JSON): {pipeline:.2} µs"
    );
    if std::env::var("WARDEN_BENCH_PIPELINE_ONLY").is_ok() {
        return;
    }
    let rounds = env_or("WARDEN_BENCH_ROUNDS", 5);
    // The control plane on threads of its own: it stands for another
    // machine, and its work (ingesting the shipped audit events, in bursts
    // every sync interval) must not run on the load generator's threads,
    // where it would hold back the timing of calls the sidecar has already
    // answered. It still shares the two cores, as every process here does.
    // Leaked: the process ends with it.
    let cp_rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-control-plane")
            .enable_all()
            .build()
            .unwrap(),
    ));
    let mesh = cp_rt.spawn(Mesh::start()).await.unwrap().unwrap();
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
    let binary_rss = binary_idle_rss(&mesh).await;

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
    // The bare relay in a process of its own, reached the same way.
    let (mut relay_child, relay_addr) = spawn_child("WARDEN_BENCH_RELAY", &up.to_string());
    let relay_pid = relay_child.id();
    let mut relay_channels = Vec::new();
    for _ in 0..CALLERS {
        let ch: Channel = Endpoint::from_shared(format!("http://{relay_addr}"))
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap();
        relay_channels.push(ch);
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
        token: Some(session.token.clone()),
        no_header: false,
    };
    let agents: Agents = Arc::new(
        channels
            .iter()
            .map(|c| AgentServiceClient::with_interceptor(c.clone(), auth.clone()))
            .collect(),
    );
    // The same token goes to the relay, which does not look at it.
    let relays: Agents = Arc::new(
        relay_channels
            .iter()
            .map(|c| AgentServiceClient::with_interceptor(c.clone(), auth.clone()))
            .collect(),
    );
    let direct_client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CALLERS)
        .build_http();
    let body = r#"{"text":"hello"}"#;
    let direct: Op = Arc::new(move |_| {
        let d = direct_client.clone();
        Box::pin(async move {
            let req = hyper::Request::post(format!("http://{up}/ok"))
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {SECRET}"))
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap();
            match d.request(req).await {
                Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
                Err(_) => false,
            }
        })
    });
    // Sanity: each operation works before it is timed.
    for what in ["ping", "authorize", "upstream_ok"] {
        assert!(agent_op(&agents, what)(0).await, "{what} fails");
    }
    assert!(direct(0).await, "the direct call fails");
    for what in ["ping", "upstream_ok"] {
        assert!(agent_op(&relays, what)(0).await, "the relay's {what} fails");
    }

    // h2load's inputs: request bodies and headers.
    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = files.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let ping_body = write("ping", &grpc_frame(&pb::PingRequest {}));
    let authorize_body = write(
        "authorize",
        &grpc_frame(&pb::AuthorizeRequest {
            tool: "echo".into(),
            arguments_json: body.into(),
            ..Default::default()
        }),
    );
    let call_body = write(
        "call",
        &grpc_frame(&pb::CallToolRequest {
            tool: "upstream_ok".into(),
            arguments_json: body.into(),
            ..Default::default()
        }),
    );
    let direct_body = write("direct", body.as_bytes());
    let log = files.path().join("log");
    let grpc_headers = [
        "content-type: application/grpc".to_owned(),
        "te: trailers".to_owned(),
        "warden-agent: true".to_owned(),
        format!("authorization: Bearer {}", session.token),
    ];
    let direct_headers = [
        "content-type: application/json".to_owned(),
        format!("authorization: Bearer {SECRET}"),
    ];
    let method = |m: &str| format!("http://{agent_addr}/warden.v1.AgentService/{m}");
    let h2 = |url: &str, body: &Path, headers: &[String], rate: Option<u32>, h1: bool| {
        let (clients, rps) = match rate {
            Some(r) => (H2_CLIENTS, Some(r / H2_CLIENTS)),
            None => (CALLERS as u32, None),
        };
        // A gRPC answer carries at least its 5-byte frame header; the
        // upstream's, its JSON document.
        let min_data = if h1 { 10 } else { 5 };
        let before = cpu_us(pid);
        let mut p = h2load(url, body, headers, clients, rps, h1, min_data, &log);
        if !h1 {
            // (its 1 s warm-up runs at the same rate)
            p.cpu_per_call = (cpu_us(pid) - before) / (p.rate * (phase_secs() + 1) as f64).max(1.0);
        }
        p
    };

    println!(
        "warden gateway benchmark: {rounds} rounds; per round, at {RATE} calls/s and flat out, floor, Authorize, direct and CallTool, {} s each, by each load generator",
        phase_secs()
    );
    println!(
        "sidecar RSS idle (this benchmark binary as the sidecar): {:.1} MiB",
        idle_rss as f64 / 1024.0
    );
    print_binary_rss(binary_rss.as_ref());
    if let Ok(op) = std::env::var("WARDEN_BENCH_PROFILE") {
        // For a profiler attached to the sidecar: one operation flat out,
        // alone (`ping`, `authorize` or `upstream_ok`).
        let op: &'static str = match op.as_str() {
            "ping" => "ping",
            "authorize" => "authorize",
            _ => "upstream_ok",
        };
        println!("PROFILE sidecar pid {pid}");
        with_cpu(pid, drive(None, agent_op(&agents, op)))
            .await
            .line(op);
        return;
    }
    let (mut ours, mut theirs, mut relayed) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        println!("\nround {round}");
        let mut o = Round::default();
        println!("  own client, {RATE}/s:");
        o.floor = with_cpu(pid, drive(Some(RATE), agent_op(&agents, "ping"))).await;
        o.floor.line("floor (Ping)");
        o.authorize = with_cpu(pid, drive(Some(RATE), agent_op(&agents, "authorize"))).await;
        o.authorize.line("Authorize");
        o.direct = drive(Some(RATE), Arc::clone(&direct)).await;
        o.direct.line("direct call to the upstream");
        o.call = with_cpu(pid, drive(Some(RATE), agent_op(&agents, "upstream_ok"))).await;
        o.call.line("CallTool → HTTP upstream");
        println!("  own client, flat out:");
        let f = with_cpu(pid, drive(None, agent_op(&agents, "ping"))).await;
        f.line("floor (Ping)");
        let d = drive(None, Arc::clone(&direct)).await;
        d.line("direct call to the upstream");
        let a = with_cpu(pid, drive(None, agent_op(&agents, "authorize"))).await;
        a.line("Authorize");
        let c = with_cpu(pid, drive(None, agent_op(&agents, "upstream_ok"))).await;
        c.line("CallTool → HTTP upstream");
        (o.floor_max, o.direct_max, o.call_max) = (f.rate, d.rate, c.rate);

        // The bare relay, against this round's direct phases.
        let mut r = Round {
            direct: o.direct.clone(),
            direct_max: o.direct_max,
            ..Round::default()
        };
        println!("  bare relay, own client, {RATE}/s:");
        r.floor = with_cpu(relay_pid, drive(Some(RATE), agent_op(&relays, "ping"))).await;
        r.floor.line("relay floor (Ping)");
        r.call = with_cpu(
            relay_pid,
            drive(Some(RATE), agent_op(&relays, "upstream_ok")),
        )
        .await;
        r.call.line("relay CallTool → HTTP upstream");
        println!("  bare relay, own client, flat out:");
        let f = with_cpu(relay_pid, drive(None, agent_op(&relays, "ping"))).await;
        f.line("relay floor (Ping)");
        let c = with_cpu(relay_pid, drive(None, agent_op(&relays, "upstream_ok"))).await;
        c.line("relay CallTool → HTTP upstream");
        (r.floor_max, r.call_max) = (f.rate, c.rate);
        ours.push(o);
        relayed.push(r);

        let mut t = Round::default();
        let upstream_url = format!("http://{up}/ok");
        println!("  h2load, {RATE}/s:");
        t.floor = h2(
            &method("Ping"),
            &ping_body,
            &grpc_headers,
            Some(RATE),
            false,
        );
        t.floor.line("floor (Ping)");
        t.authorize = h2(
            &method("Authorize"),
            &authorize_body,
            &grpc_headers,
            Some(RATE),
            false,
        );
        t.authorize.line("Authorize");
        t.direct = h2(
            &upstream_url,
            &direct_body,
            &direct_headers,
            Some(RATE),
            true,
        );
        t.direct.line("direct call to the upstream");
        t.call = h2(
            &method("CallTool"),
            &call_body,
            &grpc_headers,
            Some(RATE),
            false,
        );
        t.call.line("CallTool → HTTP upstream");
        println!("  h2load, flat out:");
        let f = h2(&method("Ping"), &ping_body, &grpc_headers, None, false);
        f.line("floor (Ping)");
        let d = h2(&upstream_url, &direct_body, &direct_headers, None, true);
        d.line("direct call to the upstream");
        let c = h2(&method("CallTool"), &call_body, &grpc_headers, None, false);
        c.line("CallTool → HTTP upstream");
        (t.floor_max, t.direct_max, t.call_max) = (f.rate, d.rate, c.rate);
        theirs.push(t);
    }
    summary("own client", &ours, true);
    summary("h2load", &theirs, true);
    summary(
        "bare relay (own client; the same direct phases): tonic server + the sidecar's HTTP client, nothing else",
        &relayed,
        false,
    );
    println!(
        "\nsidecar RSS (this benchmark binary as the sidecar): idle {:.1} MiB, after the runs {:.1} MiB",
        idle_rss as f64 / 1024.0,
        rss_kib(pid) as f64 / 1024.0
    );
    print_binary_rss(binary_rss.as_ref());
    for c in [&mut child, &mut up_child, &mut relay_child] {
        drop(c.stdin.take());
        let _ = c.kill();
        let _ = c.wait();
    }
}
