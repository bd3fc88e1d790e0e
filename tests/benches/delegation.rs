//! Delegation benchmark (issue 17): a delegated session start — the user's
//! ID token verified (RS256, the provider's JWK Set cached), the consent
//! grant looked up, the session opened and its token signed — against a
//! plain one, in the same run, on the same mTLS channels, phases
//! interleaved (plain, delegated, plain, delegated, …) and each ratio taken
//! pair by pair. Measured at the control plane (`IssueToken`) and through a
//! sidecar (`StartSession`, agent → sidecar → control plane).
//!
//! The identity provider is `tests/python/oidc_provider.py` (Authlib); the
//! grant is given once on the consent pages, for the agents' type. The
//! sessions a phase opened are ended after it (untimed), so every phase
//! starts from none open: the per-agent cap check counts open sessions.
//!
//! Run: `WARDEN_PYTHON=… cargo bench -p warden-tests --bench delegation`
//! (`./tests/run.sh` sets up that Python; `WARDEN_BENCH_ROUNDS` pairs, 5 by
//! default).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark aborts on any unexpected error"
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use warden_shared::agent::AgentId;
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::identity_service_client::IdentityServiceClient;
use warden_tests::bench::{Phase, median};
use warden_tests::idp::Idp;
use warden_tests::*;

/// Concurrent callers (`WARDEN_BENCH_WORKERS`, 32 by default).
fn workers() -> usize {
    std::env::var("WARDEN_BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(32)
}
const AGENTS: usize = 32;
const PHASE: Duration = Duration::from_secs(3);

/// Runs `op` from `workers()` tasks for `PHASE`.
async fn drive<F, Fut>(op: F) -> Phase
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers() {
        let op = Arc::clone(&op);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while start.elapsed() < PHASE {
                let t = Instant::now();
                op(w).await;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    Phase {
        rate: lat.len() as f64 / start.elapsed().as_secs_f64(),
        lat,
        ..Phase::default()
    }
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("WARDEN_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    println!(
        "warden delegation benchmark ({} concurrent callers, {} s per phase, {rounds} interleaved pairs, one process, 127.0.0.1)",
        workers(),
        PHASE.as_secs()
    );
    let dir = tempfile::tempdir().unwrap();
    let idp = Idp::start(dir.path()).await.unwrap();
    let provider = idp.provider();
    let mesh = Mesh::start_with(move |c| {
        c.durable_sync = std::env::var("BENCH_NORMAL").is_err();
        c.identity_providers = vec![provider];
    })
    .await
    .unwrap();

    let (channels, sidecars) = warden_tests::bench::enrolled_agents(&mesh, AGENTS).await;
    let channels = Arc::new(channels);
    // Every agent is of type `test`: one grant for the type covers them.
    let token = idp.mint(json!({"sub": "alice"})).await.unwrap();
    let url = format!(
        "http://{}/consent?agent=bench-0&scope=data%3Aread",
        mesh.cp.jwks_addr
    );
    let input = json!({"action": "approve", "url": url, "user": "alice", "grantee": "type"});
    let out =
        tokio::task::spawn_blocking(move || python_stdin("consent_flow.py", &input.to_string()))
            .await
            .unwrap();
    assert!(out.contains("agents of type test"), "consent failed: {out}");
    let token = Arc::new(token);

    // The sessions a phase opened: (agent index, session id).
    let opened: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let sidecars = Arc::new(sidecars);
    let clients = {
        let mut v = Vec::new();
        for sc in sidecars.iter() {
            v.push(agent_tcp(sc, AgentAuth::default()).await.unwrap());
        }
        Arc::new(v)
    };
    // One session start: `IssueToken` at the control plane, or
    // `StartSession` through the agent's sidecar; with the user's token
    // when delegated.
    let start = |via_sidecar: bool, delegated: bool| {
        let (ch, clients, token, opened) = (
            Arc::clone(&channels),
            Arc::clone(&clients),
            Arc::clone(&token),
            Arc::clone(&opened),
        );
        move |w: usize| {
            let a = w % AGENTS;
            let mut cp = IdentityServiceClient::new(ch[a].clone());
            let mut sc = clients[a].clone();
            let opened = Arc::clone(&opened);
            let scopes = vec!["data:read".to_owned()];
            let user_token = if delegated {
                token.as_str().to_owned()
            } else {
                String::new()
            };
            async move {
                let session_id = if via_sidecar {
                    let r = sc.start_session(pb::StartSessionRequest {
                        scopes,
                        user_token,
                        ..Default::default()
                    });
                    r.await.unwrap().into_inner().session_id
                } else {
                    let r = cp.issue_token(pb::IssueTokenRequest {
                        scopes,
                        user_token,
                        ..Default::default()
                    });
                    let r = r.await.unwrap().into_inner();
                    assert!(!r.token.is_empty());
                    r.session_id
                };
                opened.lock().unwrap().push((a, session_id));
            }
        }
    };
    // Ends what a phase opened, off the clock.
    let store = Arc::clone(&mesh.cp.state.store);
    let end_all = || {
        let (opened, store) = (Arc::clone(&opened), Arc::clone(&store));
        async move {
            let all = std::mem::take(&mut *opened.lock().unwrap());
            let all = Arc::new(all);
            let mut tasks = Vec::new();
            for t in 0..workers() {
                let (all, store) = (Arc::clone(&all), Arc::clone(&store));
                tasks.push(tokio::spawn(async move {
                    let now = warden_control_plane::now_unix();
                    for (a, id) in all.iter().skip(t).step_by(workers()) {
                        let agent = AgentId::new(&format!("bench-{a}")).unwrap();
                        store.end_session(&agent, id, now).await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    // Warm-up: connections, the provider's keys, SQLite's pages.
    drive(start(false, true)).await;
    end_all().await;
    drive(start(true, false)).await;
    end_all().await;
    let reads = idp.jwks_reads().await.unwrap();

    for (name, via_sidecar) in [
        ("IssueToken at the control plane", false),
        ("StartSession through a sidecar", true),
    ] {
        println!();
        println!(
            "{name} (store: SQLite, synchronous={}):",
            if std::env::var("BENCH_NORMAL").is_err() {
                "FULL"
            } else {
                "NORMAL"
            }
        );
        println!(
            "  pair   plain/s   delegated/s   ratio   plain p50/p99 µs   delegated p50/p99 µs"
        );
        let mut ratios = Vec::new();
        let mut plain_rates = Vec::new();
        let mut delegated_rates = Vec::new();
        for r in 0..rounds {
            let plain = drive(start(via_sidecar, false)).await;
            end_all().await;
            let delegated = drive(start(via_sidecar, true)).await;
            end_all().await;
            let ratio = delegated.rate / plain.rate;
            println!(
                "  {:>4}   {:>7.0}   {:>11.0}   {:>5.2}   {:>7.0} / {:<7.0}    {:>7.0} / {:<7.0}",
                r + 1,
                plain.rate,
                delegated.rate,
                ratio,
                plain.pct(0.5),
                plain.pct(0.99),
                delegated.pct(0.5),
                delegated.pct(0.99)
            );
            ratios.push(ratio);
            plain_rates.push(plain.rate);
            delegated_rates.push(delegated.rate);
        }
        println!(
            "  median: plain {:.0}/s, delegated {:.0}/s (goal >= 3000/s), delegated/plain {:.2}",
            median(plain_rates),
            median(delegated_rates),
            median(ratios)
        );
    }
    println!();
    println!(
        "provider key fetches during the timed phases: {}",
        idp.jwks_reads().await.unwrap() - reads
    );
    drop(sidecars);
}
