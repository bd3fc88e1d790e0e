//! Identity benchmark: token issuance and enrollment end to end over mTLS
//! gRPC against a no-op RPC (gRPC health `Check`) on the same server in the
//! same run, and the sidecar's local token check.
//!
//! Run: `cargo bench -p warden-tests --bench identity`

#![allow(
    clippy::unwrap_used,
    reason = "a benchmark aborts on any unexpected error"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use warden_shared::agent::AgentId;
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::identity_service_client::IdentityServiceClient;
use warden_shared::spiffe::TrustDomain;
use warden_sidecar::identity::enroll::key_and_csr;
use warden_tests::*;

const WORKERS: usize = 32;
const AGENTS: usize = 32;
const RUN: Duration = Duration::from_secs(4);

struct Stats {
    ops: usize,
    secs: f64,
    lat: Vec<Duration>,
}

impl Stats {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    fn pct(&self, p: f64) -> Duration {
        let mut v = self.lat.clone();
        v.sort();
        v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
    }
    fn line(&self, name: &str) {
        println!(
            "{name:<28} {:>9.0} ops/s   p50 {:>7.0} µs   p99 {:>7.0} µs   ({} ops)",
            self.rate(),
            self.pct(0.50).as_secs_f64() * 1e6,
            self.pct(0.99).as_secs_f64() * 1e6,
            self.ops
        );
    }
}

/// Runs `op` from `WORKERS` tasks for `RUN` (or until `limit` ops in total).
async fn drive<F, Fut>(limit: usize, op: F) -> Stats
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (op, counter) = (Arc::clone(&op), Arc::clone(&counter));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= limit || start.elapsed() >= RUN {
                    break;
                }
                let t = Instant::now();
                op(w, i).await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    Stats {
        ops: lat.len(),
        secs: start.elapsed().as_secs_f64(),
        lat,
    }
}

#[tokio::main]
async fn main() {
    println!(
        "warden identity benchmark ({WORKERS} concurrent callers, {} s per phase, one process, 127.0.0.1)",
        RUN.as_secs()
    );
    let mesh = Mesh::start_with(|c| c.durable_sync = std::env::var("BENCH_NORMAL").is_err())
        .await
        .unwrap();

    // Agents with enrolled sidecar identities; their mTLS channels carry the load.
    let (channels, sidecars) = warden_tests::bench::enrolled_agents(&mesh, AGENTS).await;
    let channels = Arc::new(channels);

    // Warm-up: connections, JIT-free but caches and allocators settle.
    let ch = Arc::clone(&channels);
    drive(2_000, move |w, _| {
        let mut h = HealthClient::new(ch[w % AGENTS].clone());
        async move {
            h.check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
        }
    })
    .await;

    let ch = Arc::clone(&channels);
    let noop = drive(usize::MAX, move |w, _| {
        let mut h = HealthClient::new(ch[w % AGENTS].clone());
        async move {
            h.check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
        }
    })
    .await;

    let ch = Arc::clone(&channels);
    let issue = drive(AGENTS * 1_900, move |w, _| {
        let mut c = IdentityServiceClient::new(ch[w % AGENTS].clone());
        async move {
            c.issue_token(pb::IssueTokenRequest {
                scopes: vec!["data:read".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        }
    })
    .await;

    // Enrollment: join tokens and CSRs are prepared up front (an admin and
    // the sidecars do that), only the Enroll RPCs are timed.
    let n_enroll = 6_000;
    let mut admin = mesh.admin().await.unwrap();
    let td = TrustDomain::new(TD).unwrap();
    let mut prepared = Vec::with_capacity(n_enroll);
    for i in 0..n_enroll {
        let agent = format!("bench-{}", i % AGENTS);
        let t = admin
            .create_join_token(pb::CreateJoinTokenRequest {
                agent_id: agent.clone(),
                ttl_seconds: 3600,
            })
            .await
            .unwrap()
            .into_inner()
            .join_token;
        let (_, csr) = key_and_csr(&td.agent(&AgentId::new(&agent).unwrap())).unwrap();
        prepared.push((agent, t, csr));
    }
    let prepared = Arc::new(prepared);
    let mut anon = Vec::new();
    for _ in 0..AGENTS {
        anon.push(mesh.anonymous_channel().await.unwrap());
    }
    let anon = Arc::new(anon);
    let (a2, p2) = (Arc::clone(&anon), Arc::clone(&prepared));
    let noop_anon = drive(usize::MAX, move |w, _| {
        let mut h = HealthClient::new(a2[w % AGENTS].clone());
        let _ = &p2;
        async move {
            h.check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
        }
    })
    .await;
    let (a2, p2) = (Arc::clone(&anon), Arc::clone(&prepared));
    let enroll = drive(n_enroll, move |w, i| {
        let mut c = IdentityServiceClient::new(a2[w % AGENTS].clone());
        let (agent, token, csr) = p2[i].clone();
        async move {
            c.enroll(pb::EnrollRequest {
                agent_id: agent,
                join_token: token,
                csr_der: csr,
            })
            .await
            .unwrap();
        }
    })
    .await;

    println!();
    println!("control plane over mTLS gRPC (store: SQLite, synchronous=FULL)");
    noop.line("no-op RPC (health, mTLS)");
    issue.line("IssueToken");
    noop_anon.line("no-op RPC (health, TLS)");
    enroll.line("Enroll");
    println!(
        "IssueToken: {:.0}/s = {:.2}x the no-op rate (goal >= 5000/s); Enroll: {:.0}/s = {:.2}x the no-op rate (goal >= 1000/s)",
        issue.rate(),
        issue.rate() / noop.rate(),
        enroll.rate(),
        enroll.rate() / noop_anon.rate()
    );

    // The sidecar's local token check.
    let sc = &sidecars[0];
    let mut c = agent_tcp(sc, AgentAuth::default()).await.unwrap();
    let token = c
        .start_session(pb::StartSessionRequest {
            scopes: vec!["data:read".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let snap = sc.identity.snapshot();
    let now = warden_sidecar::now_unix();
    sc.auth.verify(&token, &snap, now).unwrap();
    let iters = 200_000;
    let t = Instant::now();
    for _ in 0..iters {
        std::hint::black_box(
            sc.auth
                .verify(std::hint::black_box(&token), &snap, now)
                .unwrap(),
        );
    }
    let cached = t.elapsed().as_secs_f64() * 1e9 / iters as f64;
    // Uncached: a full ES256 signature verification every time.
    let set: warden_shared::token::JwkSet =
        serde_json::from_str(&mesh.cp.state.keys.current().jwks_json).unwrap();
    let v = warden_shared::token::Verifier::new(&set).unwrap();
    let iters_full = 5_000;
    let t = Instant::now();
    for _ in 0..iters_full {
        std::hint::black_box(v.verify_signature(std::hint::black_box(&token)).unwrap());
    }
    let full = t.elapsed().as_secs_f64() * 1e9 / iters_full as f64;
    // Baseline: one hash-map lookup keyed by the same token string.
    let mut m = std::collections::HashMap::new();
    m.insert(token.clone(), 1u8);
    let t = Instant::now();
    for _ in 0..iters {
        std::hint::black_box(m.get(std::hint::black_box(token.as_str())));
    }
    let lookup = t.elapsed().as_secs_f64() * 1e9 / iters as f64;
    println!();
    println!("sidecar local token check (token {} bytes)", token.len());
    println!(
        "  cached verify (per call)     {:>8.0} ns   (goal <= 10000 ns)",
        cached
    );
    println!("  full ES256 verify (uncached) {:>8.0} ns", full);
    println!("  baseline: HashMap lookup     {:>8.0} ns", lookup);
    drop(sidecars);
}
