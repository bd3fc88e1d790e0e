//! Approval release benchmark: how long a call held for approval takes to
//! be released once a person decides, with 1 and with 1,000 requests
//! pending at once.
//!
//! A real control plane (SQLite, durable: every write synced, as deployed)
//! and a real sidecar in this process; agent calls over gRPC on loopback
//! (twenty connections). In each round, phase **one** holds a single call and
//! approves it, `SAMPLES` times in a row; phase **thousand** holds 1,000
//! calls at once (distinct arguments, so 1,000 requests), then approves
//! `SAMPLES` of them, picked at random, one after the other, each once
//! the previous call was released; the rest are denied to end the round.
//! The latency of one release is from the moment the admin's
//! `DecideApproval` is sent to the moment the held call's answer reaches
//! the agent: the decision written, pushed over the sidecar's mesh stream,
//! the approval spent (a second write), the tool run. Rounds interleave
//! the phases (one, thousand, one, …); the summary gives p50 and p99 over
//! all samples of each phase and the median of the per-round p99 ratios.
//!
//! Run: `cargo bench -p warden-tests --bench approvals`. Knobs:
//! `WARDEN_BENCH_ROUNDS` (default 3), `WARDEN_BENCH_SAMPLES` (per phase,
//! default 50), `WARDEN_BENCH_PENDING` (default 1000).

#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a benchmark aborts on any unexpected error and prints floats"
)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use tokio::sync::oneshot;
use warden_shared::agent::AgentId;
use warden_tests::approvals::{ApprovalMesh, call, decide};
use warden_tests::bench::{env_or, median, percentile as pct};
use warden_tests::{AgentClient, Mesh};

/// Agent connections the held calls are spread over (the sidecar serves at
/// most 64 calls at once on one connection).
const CONNECTIONS: usize = 20;

/// Holds `pending` calls, approves `samples` of them one after the other
/// (the rest denied); returns each approval's release latency in ms.
async fn phase(
    m: &ApprovalMesh,
    clients: &[AgentClient],
    pending: usize,
    samples: usize,
    tag: &str,
) -> Vec<f64> {
    let mut released: HashMap<String, oneshot::Receiver<(Instant, bool)>> = HashMap::new();
    let mut tasks = Vec::with_capacity(pending);
    for i in 0..pending {
        let order = format!("{tag}-{i}");
        let mut client = clients[i % clients.len()].clone();
        let (tx, rx) = oneshot::channel();
        released.insert(order.clone(), rx);
        tasks.push(tokio::spawn(async move {
            let args = format!(r#"{{"order": "{order}", "amount": {i}}}"#);
            let r = client.call_tool(call("refund", &args, false)).await;
            let _ = tx.send((Instant::now(), r.is_ok()));
        }));
    }
    let listed = m.pending(pending).await.unwrap();
    let mut ids: Vec<(String, String)> = listed
        .iter()
        .map(|a| {
            let args: serde_json::Value = serde_json::from_str(&a.arguments_json).unwrap();
            (args["order"].as_str().unwrap().to_owned(), a.id.clone())
        })
        .filter(|(order, _)| released.contains_key(order))
        .collect();
    assert_eq!(ids.len(), pending, "every held call has its request");
    ids.shuffle(&mut rand::rng());
    let mut admin = m.mesh.admin().await.unwrap();
    let mut lat = Vec::with_capacity(samples);
    let (approve, deny) = ids.split_at(samples.min(pending));
    for (order, id) in approve {
        let rx = released.remove(order).unwrap();
        let t0 = Instant::now();
        admin.decide_approval(decide(id, true, "")).await.unwrap();
        let (at, ok) = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("released within 30 s")
            .unwrap();
        assert!(ok, "an approved call failed");
        lat.push(at.duration_since(t0).as_secs_f64() * 1e3);
    }
    for (_, id) in deny {
        admin
            .decide_approval(decide(id, false, "end of round"))
            .await
            .unwrap();
    }
    for t in tasks {
        t.await.unwrap();
    }
    lat
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rounds = env_or("WARDEN_BENCH_ROUNDS", 3) as usize;
    let samples = env_or("WARDEN_BENCH_SAMPLES", 50) as usize;
    let many = env_or("WARDEN_BENCH_PENDING", 1000) as usize;
    let mesh = Mesh::start_with(|c| c.durable_sync = true).await.unwrap();
    let m = ApprovalMesh::start_on(mesh).await.unwrap();
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        clients.push(m.session().await.unwrap().1);
    }
    println!(
        "approval release latency (DecideApproval sent → held call answered), ms; {samples} approvals per phase; durable SQLite"
    );
    println!(
        "{:<6} {:<10} {:>8} {:>8} {:>8} {:>8}",
        "round", "phase", "pending", "p50", "p99", "max"
    );
    let (mut all_one, mut all_many, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let mut one = Vec::with_capacity(samples);
        for s in 0..samples {
            one.extend(phase(&m, &clients, 1, 1, &format!("r{r}-one-{s}")).await);
        }
        let thousand = phase(&m, &clients, many, samples, &format!("r{r}-many")).await;
        for (name, pending, v) in [("one", 1, &one), ("thousand", many, &thousand)] {
            println!(
                "{:<6} {:<10} {:>8} {:>8.2} {:>8.2} {:>8.2}",
                r + 1,
                name,
                pending,
                pct(v, 0.5),
                pct(v, 0.99),
                pct(v, 1.0)
            );
        }
        ratios.push(pct(&thousand, 0.99) / pct(&one, 0.99));
        all_one.extend(one);
        all_many.extend(thousand);
    }
    let left = m
        .mesh
        .cp
        .state
        .store
        .pending_approvals(
            &AgentId::new("a1").unwrap(),
            warden_control_plane::now_unix(),
        )
        .await
        .unwrap();
    assert_eq!(left, 0, "every request was decided");
    println!();
    println!(
        "summary: 1 pending p50 {:.2} ms p99 {:.2} ms; {many} pending p50 {:.2} ms p99 {:.2} ms (goal p99 ≤ 50 ms); median per-round p99 ratio {:.2}×",
        pct(&all_one, 0.5),
        pct(&all_one, 0.99),
        pct(&all_many, 0.5),
        pct(&all_many, 0.99),
        median(ratios)
    );
}
