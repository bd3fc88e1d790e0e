//! Helpers shared by the benchmarks: child processes, phases and their
//! percentiles, `h2load` runs, `/proc` readings.

#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::too_many_arguments,
    clippy::missing_panics_doc,
    reason = "a benchmark aborts on any unexpected error and prints floats"
)]

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

/// Starts this binary as a child in `role` (env `WARDEN_BENCH_<role>`)
/// and reads the address it prints.
pub fn spawn_child(role: &str, value: &str) -> (std::process::Child, SocketAddr) {
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

pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// One `kB` field of `/proc/<pid>/status` (`key` with its colon).
pub fn status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn phase_secs() -> u64 {
    env_or("WARDEN_BENCH_SECS", 3)
}

/// One phase's result: latencies (µs), completed calls per second, and
/// the CPU time the sidecar spent per call (µs; 0 when not measured).
#[derive(Debug, Default, Clone)]
pub struct Phase {
    /// Latencies, µs.
    pub lat: Vec<f64>,
    /// Completed calls per second.
    pub rate: f64,
    /// Failed calls.
    pub errors: u64,
    /// The measured process's CPU time per call, µs (0: not measured).
    pub cpu_per_call: f64,
}

/// A process's CPU time so far (user + system), µs, from `/proc`.
pub fn cpu_us(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // USER_HZ, 100 on Linux.
    let hz = 100.0;
    ticks * 1e6 / hz
}

impl Phase {
    pub fn pct(&self, p: f64) -> f64 {
        let mut v = self.lat.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
    }

    pub fn line(&self, name: &str) {
        println!(
            "    {name:<28} {:>8.0}/s   p50 {:>6.0} µs   p99 {:>6.0} µs{}{}",
            self.rate,
            self.pct(0.50),
            self.pct(0.99),
            if self.cpu_per_call > 0.0 {
                format!("   sidecar CPU {:>4.0} µs/call", self.cpu_per_call)
            } else {
                String::new()
            },
            if self.errors > 0 {
                format!("   ({} errors)", self.errors)
            } else {
                String::new()
            }
        );
    }
}

/// One `h2load` phase against `url`, posting `body` with `headers`; at
/// `rps` per client with `clients` clients, or flat out. Latencies come
/// from its per-request log.
pub fn h2load(
    url: &str,
    body: &Path,
    headers: &[String],
    clients: u32,
    rps: Option<u32>,
    h1: bool,
    min_data: u64,
    log: &Path,
) -> Phase {
    let secs = phase_secs();
    // h2load appends to its log: each phase starts with none.
    let _ = std::fs::remove_file(log);
    let mut cmd = Command::new("h2load");
    cmd.arg(format!("--clients={clients}"))
        .arg("--max-concurrent-streams=1")
        .arg(format!("--threads={}", 1))
        .arg(format!("--duration={secs}"))
        .arg("--warm-up-time=1")
        .arg(format!("--log-file={}", log.display()))
        .arg(format!("--data={}", body.display()));
    if let Some(r) = rps {
        cmd.arg(format!("--rps={r}"));
    }
    if h1 {
        cmd.arg("--h1");
    }
    for h in headers {
        cmd.arg(format!("--header={h}"));
    }
    let out = cmd
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("h2load runs (install Debian's nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "h2load failed: {text}");
    // "requests: 9000 total, 9000 started, 9000 done, 9000 succeeded, 0 failed, 0 errored, 0 timeout"
    let field = |line: &str, name: &str| -> u64 {
        line.split(',')
            .find(|p| p.trim().ends_with(name))
            .and_then(|p| p.split_whitespace().rev().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let requests = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_default();
    let mut failed =
        field(requests, "failed") + field(requests, "errored") + field(requests, "timeout");
    // gRPC refuses with a trailers-only response (HTTP 200, no DATA): the
    // answers of the phase must carry at least `min_data` bytes of DATA
    // each on average, or the phase counts its calls as failed.
    // "traffic: 3.36MB (3525120) total, 1.11MB (1163520) headers (…), 1.55MB (1625600) data"
    let data: u64 = text
        .lines()
        .find(|l| l.starts_with("traffic:"))
        .and_then(|l| l.rsplit('(').next())
        .and_then(|t| t.split(')').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let done = field(requests, "succeeded").max(1);
    if data < done * min_data {
        failed = failed.max(done);
    }
    let log_text = std::fs::read_to_string(log).unwrap_or_default();
    let mut lat = Vec::new();
    let mut bad = 0;
    for row in log_text.lines() {
        let cols: Vec<&str> = row.split('\t').collect();
        match (cols.get(1), cols.get(2).and_then(|c| c.parse::<f64>().ok())) {
            (Some(&"200"), Some(us)) => lat.push(us),
            _ => bad += 1,
        }
    }
    // "finished in 3.00s, 2999.67 req/s, 1.11MB/s" (the measured period)
    let rate = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or(lat.len() as f64 / secs as f64);
    Phase {
        cpu_per_call: 0.0,
        rate,
        lat,
        errors: failed.max(bad),
    }
}

/// The `p` quantile (0 to 1) of `v`, nearest rank; NaN when empty.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Customer records (JSON values with a `\"` escape in each) adding up to
/// about `bytes` bytes: the body of an ordinary tool answer.
pub fn customer_items(bytes: usize) -> Vec<serde_json::Value> {
    let mut items = Vec::new();
    let mut size = 0;
    let mut i = 0;
    while size < bytes {
        let item = serde_json::json!({"id": i, "name": format!("customer {i}"), "note": "ordinary text, \"quoted\", nothing to hide / ok"});
        size += item.to_string().len() + 1;
        items.push(item);
        i += 1;
    }
    items
}

/// ns per run of `f`, over `n` runs.
pub fn ns_per_op(n: usize, mut f: impl FnMut()) -> f64 {
    let t = std::time::Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

/// Runs `a` and `b` (each `n` times a phase) in `rounds` interleaved pairs
/// of phases (A B A B …); returns the median ns per run of `a`, of `b`, and
/// the median of the ratios a/b taken pair by pair.
pub fn interleaved(
    rounds: usize,
    n: usize,
    mut a: impl FnMut(),
    mut b: impl FnMut(),
) -> (f64, f64, f64) {
    let (mut ta, mut tb, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let x = ns_per_op(n, &mut a);
        let y = ns_per_op(n, &mut b);
        ta.push(x);
        tb.push(y);
        r.push(x / y);
    }
    (median(ta), median(tb), median(r))
}

/// The median of `v` (the upper one of an even count); NaN when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Sidecar settings as a parent process passes them (JSON: `url`, `ca`,
/// `agent`, `token`, `dir`), on free loopback ports.
pub fn sidecar_config(json: &str) -> warden_sidecar::config::Config {
    let c: serde_json::Value = serde_json::from_str(json).unwrap();
    let s = |k: &str| c[k].as_str().unwrap().to_owned();
    let mut cfg = warden_sidecar::config::Config::new(
        &s("url"),
        s("ca").into(),
        &s("agent"),
        s("dir").into(),
    );
    cfg.trust_domain = crate::TD.into();
    cfg.listen = crate::any_port();
    cfg.health_listen = crate::any_port();
    cfg.join_token = Some(s("token"));
    cfg
}

/// Logs as the real binary writes them (JSON, to stderr, which the parent
/// discards), filtered by `filter`: every call's audit event is formatted
/// and written.
pub fn json_logs(filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .json()
        .init();
}

/// Starts a sidecar with `cfg`, waits until it holds a policy, prints
/// `READY <addr>` (the address `pick` names), and serves until stdin
/// closes.
pub async fn serve_sidecar(
    cfg: warden_sidecar::config::Config,
    pick: impl Fn(&warden_sidecar::app::Running) -> SocketAddr,
) {
    let sc = warden_sidecar::app::start(cfg).await.unwrap();
    let ok = crate::eventually(std::time::Duration::from_secs(10), || async {
        sc.auth.state().held().policy.is_some()
    })
    .await;
    assert!(ok, "no policy reached the sidecar");
    println!("READY {}", pick(&sc));
    let _ = tokio::task::spawn_blocking(|| std::io::stdin().lines().count()).await;
}

/// A loopback HTTP/1.1 server for a benchmark's upstream: each request's
/// body goes to `answer`, whose status and JSON body (none: empty) are the
/// reply. Returns its address; serves until the runtime ends.
pub async fn http_upstream(
    answer: fn(&[u8]) -> (http::StatusCode, Option<bytes::Bytes>),
) -> SocketAddr {
    use http_body_util::{BodyExt, Full};
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
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let (status, json) = answer(&body);
                        let mut r =
                            hyper::Response::new(Full::new(json.clone().unwrap_or_default()));
                        *r.status_mut() = status;
                        if json.is_some() {
                            r.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                        }
                        Ok::<_, std::convert::Infallible>(r)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// Registers `n` agents `bench-0…` (scopes `data:*`, 10,000 sessions each)
/// with enrolled sidecars; returns an mTLS channel to the control plane
/// under each agent's identity, and the sidecars.
pub async fn enrolled_agents(
    mesh: &crate::Mesh,
    n: usize,
) -> (Vec<tonic::transport::Channel>, Vec<crate::Sidecar>) {
    let mut channels = Vec::new();
    let mut sidecars = Vec::new();
    for a in 0..n {
        let sc = mesh
            .agent(&format!("bench-{a}"), &["data:*"], 10_000)
            .await
            .unwrap();
        let id = sc.identity.snapshot().current.clone().unwrap();
        let key = std::fs::read_to_string(sc.data_dir.join("identity/identity.pem")).unwrap();
        channels.push(mesh.mtls_channel(&id.cert_pem, &key).await.unwrap());
        sidecars.push(sc);
    }
    (channels, sidecars)
}
