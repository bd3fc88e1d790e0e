//! Limiter benchmark, in one run: the in-process limiter (a check of one
//! rate, and a whole call's check with its keys built), the Redis check
//! script (GCRA and quota, one EVALSHA), and the envoy-ratelimit approach as
//! the baseline: a fixed-window `INCR` + `EXPIRE` pipeline. Redis is the
//! local one (`WARDEN_TEST_REDIS_URL`, default 127.0.0.1:6379), keys under a
//! fresh prefix.
//!
//! Run: `cargo bench -p warden-tests --bench limits`

#![allow(
    clippy::unwrap_used,
    reason = "a benchmark aborts on any unexpected error"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use warden_shared::policy::Policy;
use warden_sidecar::gateway::limit::redis::{RedisConfig, RedisLimiter};
use warden_sidecar::gateway::limit::{CallKey, Item, Kind, LimitSet, Limiter, LocalLimiter};
use warden_tests::redis::{command, shared_url, unique_prefix};

const RUN: Duration = Duration::from_secs(3);

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e6
}

/// Runs `op` from `callers` tasks for `RUN`; prints rate and latencies.
async fn drive<F, Fut>(name: &str, callers: usize, op: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let op = Arc::clone(&op);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while start.elapsed() < RUN {
                let t = Instant::now();
                op().await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "  {name:<44} {callers:>2} callers {:>9.0} checks/s   p50 {:>6.0} µs   p99 {:>6.0} µs",
        lat.len() as f64 / secs,
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99)
    );
}

fn limits() -> LimitSet {
    let doc = r#"
version: 1
tools:
  - name: t
    description: T.
    input_schema: { type: object }
    scopes: ["x:y"]
    risk: low
    cost: 3
limits:
  - { name: rate, key: agent, rate: { calls: 1000000000, per: 1s } }
  - { name: budget, key: agent, quota: { budget: 1000000000, per: 1d } }
"#;
    LimitSet::compile(&Policy::parse(doc).unwrap().document).unwrap()
}

const CALL: CallKey<'static> = CallKey {
    agent: "bench",
    owner: "team",
    session: "s",
    tool: "t",
    cost: 3,
};

#[tokio::main]
async fn main() {
    println!("warden limiter benchmark (Redis at {})", shared_url());

    // In process.
    let local = LocalLimiter::default();
    let item = [Item {
        key: "warden:{a:bench}:rate:a:bench".into(),
        kind: Kind::Rate {
            interval_us: 1,
            burst: 1_000_000_000,
        },
        weight: 1,
        enforce: true,
        limit: 0,
    }];
    let n = 2_000_000u32;
    let t = Instant::now();
    let mut now = warden_sidecar::gateway::limit::now_us();
    for _ in 0..n {
        now += 1;
        std::hint::black_box(local.check(&item, now, true));
    }
    let one = t.elapsed().as_nanos() as f64 / f64::from(n);
    let set = limits();
    let whole = Limiter::default();
    let t = Instant::now();
    let m = 200_000u32;
    for _ in 0..m {
        let items = set.items(whole.prefix(), &CALL);
        std::hint::black_box(whole.check(&set, &items).await);
    }
    let call = t.elapsed().as_nanos() as f64 / f64::from(m);
    println!("\nin process:");
    println!("  one rate check (key given)                  {one:>8.0} ns");
    println!("  a call's check (rate + quota, keys built)   {call:>8.0} ns");

    // Redis.
    let prefix = unique_prefix();
    let mut cfg = RedisConfig::new(&shared_url());
    cfg.key_prefix = prefix.clone();
    cfg.timeout_ms = 1000;
    let shared = Arc::new(RedisLimiter::new(&cfg).unwrap());
    let items = Arc::new(set.items(&prefix, &CALL));
    shared.check(&items).await.unwrap();
    command(&shared_url(), redis::cmd("CONFIG").arg("RESETSTAT"))
        .await
        .unwrap();
    let client = redis::Client::open(shared_url()).unwrap();
    let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let incr_key = format!("{prefix}fixed");
    for callers in [1usize, 16] {
        println!("\n{callers} caller(s):");
        let (s, i) = (Arc::clone(&shared), Arc::clone(&items));
        drive(
            "Redis check script (GCRA + quota, EVALSHA)",
            callers,
            move || {
                let (s, i) = (Arc::clone(&s), Arc::clone(&i));
                async move {
                    s.check(&i).await.unwrap();
                }
            },
        )
        .await;
        let (c, k) = (conn.clone(), incr_key.clone());
        drive("baseline: INCR + EXPIRE pipeline", callers, move || {
            let (mut c, k) = (c.clone(), k.clone());
            async move {
                let _: (i64, i64) = redis::pipe()
                    .incr(&k, 1)
                    .expire(&k, 60)
                    .query_async(&mut c)
                    .await
                    .unwrap();
            }
        })
        .await;
    }
    // One round trip per check: every script run is one EVALSHA, never an
    // EVAL or SCRIPT LOAD (the script stayed cached).
    let info = warden_tests::redis::info(&shared_url(), "commandstats")
        .await
        .unwrap();
    let calls = |cmd: &str| {
        info.lines()
            .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|v| v.split(',').next())
            .map_or(0, |v| v.parse::<u64>().unwrap_or(0))
    };
    println!(
        "\nround trips: {} EVALSHA, {} EVAL, {} SCRIPT (one round trip per check)",
        calls("evalsha"),
        calls("eval"),
        calls("script|load") + calls("script")
    );
}
