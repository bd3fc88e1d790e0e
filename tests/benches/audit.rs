//! Audit log benchmark: control-plane ingest with the Merkle tree
//! maintained, and inclusion proofs in a log of ten million entries.
//!
//! **Ingest.** A real control plane (SQLite, durable: every commit synced,
//! as deployed); `STREAMS` shipping streams over mTLS from one agent
//! certificate, each sending requests of 1,000 events (about 250 bytes of
//! JSON each) and reading the acknowledgements. Phase **ship** measures
//! events per second acknowledged (parsed, canonicalised, hashed, the
//! tree's subtrees computed, committed). Phase **floor** appends the same
//! number of prepared rows straight to another SQLite store without tree
//! nodes, records or gRPC: what the database alone takes. Rounds
//! interleave the phases; the summary gives the median of each and of the
//! per-round ratios.
//!
//! **Proofs.** A store of `WARDEN_BENCH_LEAVES` (default 10,000,000) small
//! entries with every subtree stored, built once (its build rate printed);
//! then, interleaved, `SAMPLES` inclusion proofs for random positions
//! against the full tree (the subtrees read with one query each, as the
//! admin API does) and, as the floor, the read of the same entry alone.
//!
//! Run: `cargo bench -p warden-tests --bench audit`. Knobs:
//! `WARDEN_BENCH_ROUNDS` (3), `WARDEN_BENCH_EVENTS` (per ingest phase,
//! 100,000), `WARDEN_BENCH_LEAVES`, `WARDEN_BENCH_SAMPLES` (1,000).

#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a benchmark aborts on any unexpected error and prints floats"
)]

use std::sync::Arc;
use std::time::Instant;

use rand::Rng;
use tokio_stream::StreamExt;
use warden_control_plane::audit::over_stored;
use warden_control_plane::store::{AuditAppend, AuditRow, AuditStore, SqliteStore, Store};
use warden_shared::merkle::{self, Frontier};
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::audit_service_client::AuditServiceClient;
use warden_tests::Mesh;
use warden_tests::bench::{env_or, median, percentile as pct};

const STREAMS: usize = 4;
const PER_REQUEST: usize = 1000;

fn event(seq: u64) -> Vec<u8> {
    serde_json::json!({
        "time_ms": 1_790_000_000_000i64 + seq as i64,
        "kind": "tool.call",
        "actor": {"kind": "agent", "id": "bench"},
        "agent": "bench",
        "session": format!("ses_{}", seq / 100),
        "tool": format!("tool_{}", seq % 50),
        "outcome": "allowed",
        "call_id": format!("call_{seq:012}"),
        "duration_us": 180 + seq % 97,
        "bytes_in": 412,
        "bytes_out": 1380,
        "arguments": {"mode": "hash", "bytes": 412, "hmac": "5f0c1a2b3c4d5e6f708192a3b4c5d6e7"},
    })
    .to_string()
    .into_bytes()
}

/// Ships `events` over `STREAMS` streams; events per second acknowledged.
async fn ship(
    client: &AuditServiceClient<tonic::transport::Channel>,
    events: usize,
    round: usize,
) -> f64 {
    let per_stream = events / STREAMS;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..STREAMS {
        let mut client = client.clone();
        let spool = format!("bench-spool-{round:04}-{s:04}");
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(pb::ShipRequest {
                spool_id: spool.clone(),
                events: vec![],
            })
            .await
            .unwrap();
            let mut acks = client
                .ship(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(acks.next().await.unwrap().unwrap().acked, 0);
            let total = per_stream as u64;
            let feeder = tokio::spawn(async move {
                let mut seq = 1u64;
                while seq <= total {
                    let n = (total - seq + 1).min(PER_REQUEST as u64);
                    let events = (seq..seq + n)
                        .map(|i| pb::SpooledEvent {
                            seq: i,
                            event: event(i),
                        })
                        .collect();
                    tx.send(pb::ShipRequest {
                        spool_id: spool.clone(),
                        events,
                    })
                    .await
                    .unwrap();
                    seq += n;
                }
            });
            while let Some(a) = acks.next().await {
                if a.unwrap().acked == total {
                    break;
                }
            }
            feeder.await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (per_stream * STREAMS) as f64 / start.elapsed().as_secs_f64()
}

/// Appends `events` prepared rows (no tree) to `store`; rows per second.
async fn floor(store: &SqliteStore, events: usize, next: &mut u64) -> f64 {
    let rows: Vec<AuditRow> = (0..events as u64)
        .map(|i| AuditRow {
            position: *next + i,
            record: event(i),
            time_ms: 1_790_000_000_000 + i as i64,
            kind: "tool.call".into(),
            agent: "bench".into(),
            session: format!("ses_{}", i / 100),
            tool: format!("tool_{}", i % 50),
            outcome: "allowed".into(),
        })
        .collect();
    *next += events as u64;
    let start = Instant::now();
    let mut batches = Vec::new();
    for chunk in rows.chunks(PER_REQUEST * STREAMS) {
        batches.push(AuditAppend {
            rows: chunk.to_vec(),
            ..AuditAppend::default()
        });
    }
    for b in batches {
        store.audit_append(b).await.unwrap();
    }
    events as f64 / start.elapsed().as_secs_f64()
}

async fn build(store: &SqliteStore, leaves: u64) -> Frontier {
    let mut f = Frontier::default();
    let start = Instant::now();
    const BATCH: u64 = 50_000;
    let mut i = 0;
    while i < leaves {
        let n = (leaves - i).min(BATCH);
        let mut b = AuditAppend::default();
        for p in i..i + n {
            let record = format!("{{\"i\":{p}}}").into_bytes();
            f.push(merkle::leaf_hash(&record), &mut b.nodes);
            b.rows.push(AuditRow {
                position: p,
                record,
                time_ms: 1,
                kind: "k".into(),
                agent: String::new(),
                session: String::new(),
                tool: String::new(),
                outcome: String::new(),
            });
        }
        store.audit_append(b).await.unwrap();
        i += n;
    }
    println!(
        "built a log of {leaves} entries in {:.0} s ({:.0} entries/s with every subtree stored)",
        start.elapsed().as_secs_f64(),
        leaves as f64 / start.elapsed().as_secs_f64()
    );
    f
}

#[tokio::main]
async fn main() {
    let rounds = env_or("WARDEN_BENCH_ROUNDS", 3) as usize;
    let events = env_or("WARDEN_BENCH_EVENTS", 100_000) as usize;
    let leaves = env_or("WARDEN_BENCH_LEAVES", 10_000_000);
    let samples = env_or("WARDEN_BENCH_SAMPLES", 1000) as usize;

    // Ingest.
    let mesh = Mesh::start_with(|c| c.durable_sync = true).await.unwrap();
    let sc = mesh.agent("bench", &["data:read"], 2).await.unwrap();
    let id = sc.identity.snapshot().current.clone().unwrap();
    let client =
        AuditServiceClient::new(mesh.mtls_channel(&id.cert_pem, id.key_pem()).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let floor_store = SqliteStore::open(&dir.path().join("floor.db"), true)
        .await
        .unwrap();
    let mut next = 0;
    let (mut shipped, mut floors, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let a = ship(&client, events, round).await;
        let b = floor(&floor_store, events, &mut next).await;
        println!(
            "round {round}: ship {a:.0} events/s, floor {b:.0} rows/s, ratio {:.2}",
            a / b
        );
        shipped.push(a);
        floors.push(b);
        ratios.push(a / b);
    }
    println!(
        "ingest (median of {rounds} rounds of {events} events, {STREAMS} streams, durable): ship {:.0} events/s with the tree maintained; floor {:.0} rows/s; ship/floor {:.2}",
        median(shipped),
        median(floors),
        median(ratios)
    );
    drop(sc);
    drop(mesh);

    // Proofs among `leaves`.
    let store = SqliteStore::open(&dir.path().join("proofs.db"), false)
        .await
        .unwrap();
    let f = build(&store, leaves).await;
    let size = f.size();
    let store: Arc<dyn Store> = Arc::new(store);
    let mut rng = rand::rng();
    let (mut proofs, mut reads) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        let p = rng.random_range(0..size);
        let t = Instant::now();
        let path = over_stored(store.as_ref(), |n| {
            merkle::stored_inclusion_proof(size, p, n).unwrap()
        })
        .await
        .unwrap();
        proofs.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        let e = store.audit_entries(p, p + 1, 1, true).await.unwrap();
        reads.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(merkle::verify_inclusion(
            &e[0].leaf.unwrap(),
            p,
            size,
            &path,
            &f.root()
        ));
    }
    println!(
        "inclusion proof among {size} entries ({samples} random positions, each verified): p50 {:.0} µs, p99 {:.0} µs; one entry's read alone: p50 {:.0} µs, p99 {:.0} µs",
        pct(&proofs, 0.5),
        pct(&proofs, 0.99),
        pct(&reads, 0.5),
        pct(&reads, 0.99)
    );
}
