//! Rate limits and cost quotas against a real Redis: several limiter
//! clients (each as a sidecar of the same agent would hold it) share one
//! budget; Redis stopping makes each limit fail closed or fall back to its
//! local share, and its return resumes shared limiting without a restart;
//! a flushed script cache is reloaded. Unique key prefixes per test.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use warden_shared::policy::Policy;
use warden_sidecar::gateway::limit::redis::{RedisConfig, RedisLimiter};
use warden_sidecar::gateway::limit::{CallKey, LimitSet, Limiter, Verdict};
use warden_tests::redis::{PrivateRedis, command, shared_url, unique_prefix};

fn limits(yaml_limits: &str, cost: u32) -> LimitSet {
    let doc = format!(
        r#"
version: 1
tools:
  - name: t
    description: T.
    input_schema: {{ type: object }}
    scopes: ["x:y"]
    risk: low
    cost: {cost}
limits:
{yaml_limits}
"#
    );
    LimitSet::compile(&Policy::parse(&doc).unwrap().document).unwrap()
}

fn limiter(url: &str, prefix: &str, timeout_ms: u64) -> Limiter {
    let mut cfg = RedisConfig::new(url);
    cfg.key_prefix = prefix.to_owned();
    cfg.timeout_ms = timeout_ms;
    cfg.breaker_failures = 2;
    cfg.breaker_cooldown_ms = 200;
    Limiter::with_redis(RedisLimiter::new(&cfg).unwrap())
}

const CALL: CallKey<'static> = CallKey {
    agent: "ag",
    owner: "team",
    session: "s1",
    tool: "t",
    cost: 0,
};

async fn check(l: &Limiter, set: &LimitSet, cost: u32) -> Verdict {
    let key = CallKey { cost, ..CALL };
    let items = set.items(l.prefix(), &key);
    l.check(set, &items).await
}

/// Hammers `set` from `clients` limiters (8 tasks each) for `run`; returns
/// the calls admitted, and the cost admitted.
async fn hammer(
    clients: &[Arc<Limiter>],
    set: &Arc<LimitSet>,
    cost: u32,
    run: Duration,
) -> (u64, u64) {
    let admitted = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in clients {
        for _ in 0..8 {
            let (c, set, admitted) = (Arc::clone(c), Arc::clone(set), Arc::clone(&admitted));
            tasks.push(tokio::spawn(async move {
                while start.elapsed() < run {
                    match check(&c, &set, cost).await {
                        Verdict::Admit => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        Verdict::Refuse { .. } => {}
                        Verdict::Unavailable { limit } => panic!("Redis unavailable ({limit})"),
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = admitted.load(Ordering::Relaxed);
    (n, n * u64::from(cost))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_clients_never_admit_more_than_the_rate_plus_the_burst() {
    let prefix = unique_prefix();
    let set = Arc::new(limits(
        "  - { name: r, key: agent, rate: { calls: 40, per: 1s, burst: 10 } }",
        1,
    ));
    let clients: Vec<Arc<Limiter>> = (0..4)
        // A generous timeout: these tests are about accuracy, and the
        // machine is busy with the other tests.
        .map(|_| Arc::new(limiter(&shared_url(), &prefix, 2000)))
        .collect();
    let run = Duration::from_millis(2500);
    let start = Instant::now();
    let (n, _) = hammer(&clients, &set, 1, run).await;
    let secs = start.elapsed().as_secs_f64();
    // GCRA: at most the burst, then 40 per second.
    let most = 10.0 + 40.0 * secs;
    assert!(
        (n as f64) <= most + 1.0,
        "admitted {n} in {secs:.2} s; the limit allows {most:.0}"
    );
    assert!(
        (n as f64) >= 0.8 * (10.0 + 40.0 * 2.5),
        "admitted only {n}: the shared limit should be used up"
    );
    // Every client refused some: they shared one budget.
    for c in &clients {
        assert!(c.metrics.snapshot()["r"].refused > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_quota_is_never_overspent_across_replicas() {
    let prefix = unique_prefix();
    let set = Arc::new(limits(
        "  - { name: budget, key: agent, quota: { budget: 100, per: 1d } }",
        7,
    ));
    let clients: Vec<Arc<Limiter>> = (0..4)
        // A generous timeout: these tests are about accuracy, and the
        // machine is busy with the other tests.
        .map(|_| Arc::new(limiter(&shared_url(), &prefix, 2000)))
        .collect();
    let (n, cost) = hammer(&clients, &set, 7, Duration::from_millis(800)).await;
    assert_eq!((n, cost), (14, 98), "14 calls of 7 fit in 100, not 15");
    match check(&clients[0], &set, 7).await {
        Verdict::Refuse {
            limit,
            quota,
            retry_after,
        } => {
            assert_eq!((limit.as_str(), quota), ("budget", true));
            assert!(retry_after <= Duration::from_secs(86_400));
        }
        v => panic!("{v:?}"),
    }
    // A cheaper call still fits (100 - 98 = 2).
    assert_eq!(check(&clients[1], &set, 2).await, Verdict::Admit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_closed_or_falls_back_and_its_return_resumes_sharing() {
    let mut redis = PrivateRedis::start().await.unwrap();
    let prefix = unique_prefix();
    let closed = limits(
        "  - { name: closed, key: agent, rate: { calls: 1000, per: 1s } }",
        1,
    );
    let fallback = limits(
        "  - { name: fb, key: agent, rate: { calls: 40, per: 1s, burst: 40 }, on_failure: local_fallback, expected_replicas: 4 }",
        1,
    );
    let l = limiter(&redis.url(), &prefix, 50);
    assert_eq!(check(&l, &closed, 1).await, Verdict::Admit);
    assert_eq!(check(&l, &fallback, 1).await, Verdict::Admit);
    assert_eq!(l.shared().unwrap().breaker_state(), "closed");

    redis.stop();
    let t = Instant::now();
    assert_eq!(
        check(&l, &closed, 1).await,
        Verdict::Unavailable {
            limit: "closed".into()
        }
    );
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "refused within the timeout: {:?}",
        t.elapsed()
    );
    // The breaker opens: later checks do not wait for Redis at all.
    let _ = check(&l, &closed, 1).await;
    assert_eq!(l.shared().unwrap().breaker_state(), "open");
    let t = Instant::now();
    assert!(matches!(
        check(&l, &closed, 1).await,
        Verdict::Unavailable { .. }
    ));
    assert!(t.elapsed() < Duration::from_millis(20), "{:?}", t.elapsed());
    // local_fallback: a quarter of the burst (10), then refusals.
    let mut admitted = 0;
    for _ in 0..30 {
        if check(&l, &fallback, 1).await == Verdict::Admit {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10, "the local share of 40 over 4 replicas");
    assert!(l.metrics.snapshot()["fb"].fallback > 0);

    // Redis comes back: shared limiting resumes without a restart.
    redis.restart().await.unwrap();
    let resumed = warden_tests::eventually(Duration::from_secs(5), || async {
        check(&l, &closed, 1).await == Verdict::Admit
    })
    .await;
    assert!(resumed, "shared limiting should resume once Redis is back");
    assert_eq!(l.shared().unwrap().breaker_state(), "closed");
    // The restarted server ran the script (loaded again: it had none).
    let info = warden_tests::redis::info(&redis.url(), "commandstats")
        .await
        .unwrap();
    assert!(
        info.contains("cmdstat_eval") || info.contains("cmdstat_evalsha"),
        "the check ran on the restarted Redis: {info}"
    );
}

#[tokio::test]
async fn a_flushed_script_cache_is_reloaded() {
    let mut redis = PrivateRedis::start().await.unwrap();
    let set = limits(
        "  - { name: r, key: agent, rate: { calls: 100, per: 1s } }",
        1,
    );
    let l = limiter(&redis.url(), &unique_prefix(), 50);
    assert_eq!(check(&l, &set, 1).await, Verdict::Admit);
    command(&redis.url(), redis::cmd("SCRIPT").arg("FLUSH"))
        .await
        .unwrap();
    assert_eq!(check(&l, &set, 1).await, Verdict::Admit);
    assert_eq!(l.shared().unwrap().errors.load(Ordering::Relaxed), 0);
    redis.stop();
}

#[tokio::test]
async fn two_sidecars_of_one_agent_share_its_limits_and_shadow_limits_never_refuse() {
    use warden_tests::gateway::call;
    use warden_tests::*;
    let mesh = Mesh::start().await.unwrap();
    let doc = r#"
version: 1
tools:
  - name: echo
    description: Echo.
    input_schema: { type: object, properties: { n: { type: integer } } }
    scopes: ["data:read"]
    risk: low
    upstream: { kind: builtin, address: echo }
limits:
  - { name: three-per-minute, key: agent, rate: { calls: 3, per: 1m } }
  - { name: trial-one-per-minute, key: agent, rate: { calls: 1, per: 1m }, shadow: true }
cedar: "permit (principal, action, resource);"
"#;
    mesh.admin()
        .await
        .unwrap()
        .apply_policy(apply_policy(doc))
        .await
        .unwrap();
    mesh.register("a1", &["data:read"], 8).await.unwrap();
    let prefix = unique_prefix();
    let mut sidecars = Vec::new();
    for _ in 0..2 {
        let mut cfg = mesh.sidecar_config("a1", Some(mesh.join_token("a1").await.unwrap()));
        let mut r = RedisConfig::new(&shared_url());
        r.key_prefix = prefix.clone();
        r.timeout_ms = 2000;
        cfg.redis = Some(r);
        let sc = warden_sidecar::app::start(cfg).await.unwrap();
        assert!(
            eventually(Duration::from_secs(10), || async {
                sc.auth.state().held().policy.is_some()
            })
            .await
        );
        sidecars.push(sc);
    }
    let mut clients = Vec::new();
    for sc in &sidecars {
        let s = session(sc).await;
        clients.push(with_token(sc, &s.token).await.unwrap());
    }
    for c in [0, 0, 1] {
        clients[c].call_tool(call("echo", "{}")).await.unwrap();
    }
    for c in &mut clients {
        let s = assert_refused(
            c.call_tool(call("echo", "{}")).await,
            tonic::Code::ResourceExhausted,
            "RATE_LIMITED",
        );
        let meta = warden_shared::refusal::metadata_of(&s);
        assert_eq!(meta["rule"], "three-per-minute");
        assert_eq!(meta["stage"], "limit");
    }
    // The shadow limit would have refused the second and third calls, and
    // said so in the metrics, without refusing any.
    let mut shadow = 0;
    for sc in &sidecars {
        let (_, m) = http_get(sc.health_addr, "/metrics").await.unwrap();
        for l in m.lines() {
            if let Some(n) = l.strip_prefix(
                r#"warden_limit_decisions_total{limit="trial-one-per-minute",decision="shadow_refused"} "#,
            ) {
                shadow += n.parse::<u64>().unwrap();
            }
        }
        assert!(
            m.contains("warden_limit_redis_breaker{state=\"closed\"} 1"),
            "{m}"
        );
    }
    assert_eq!(shadow, 2);
}

#[tokio::test]
async fn redis_with_a_password_and_over_tls() {
    use warden_tests::upstream::TestPki;
    let set = limits(
        "  - { name: r, key: agent, rate: { calls: 100, per: 1s } }",
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    // A password, from a file.
    let redis =
        PrivateRedis::start_with(&["--requirepass", "s3cret-pw"], "redis://127.0.0.1:{port}")
            .await
            .unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret-pw\n").unwrap();
    let mut cfg = RedisConfig::new(&redis.url());
    cfg.key_prefix = unique_prefix();
    cfg.timeout_ms = 2000;
    let without = Limiter::with_redis(RedisLimiter::new(&cfg).unwrap());
    assert_eq!(
        check(&without, &set, 1).await,
        Verdict::Unavailable { limit: "r".into() },
        "no password: refused by Redis, the limit fails closed"
    );
    cfg.password_file = Some(pw);
    let with = Limiter::with_redis(RedisLimiter::new(&cfg).unwrap());
    assert_eq!(check(&with, &set, 1).await, Verdict::Admit);

    // TLS (rustls), the server's CA from a file.
    let pki = TestPki::new().unwrap();
    for (name, pem) in [
        ("ca.pem", &pki.ca_pem),
        ("srv.crt", &pki.server.0),
        ("srv.key", &pki.server.1),
    ] {
        std::fs::write(dir.path().join(name), pem).unwrap();
    }
    let p = |n: &str| dir.path().join(n).display().to_string();
    let (ca, crt, key) = (p("ca.pem"), p("srv.crt"), p("srv.key"));
    let tls = PrivateRedis::start_with(
        &[
            "--tls-port",
            "{port}",
            "--tls-cert-file",
            &crt,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ],
        "rediss://localhost:{port}",
    )
    .await
    .unwrap();
    let mut cfg = RedisConfig::new(&tls.url());
    cfg.key_prefix = unique_prefix();
    cfg.timeout_ms = 2000;
    cfg.ca_file = Some(ca.into());
    let l = Limiter::with_redis(RedisLimiter::new(&cfg).unwrap());
    assert_eq!(check(&l, &set, 1).await, Verdict::Admit);
    // Without the private CA the server's certificate is not trusted.
    cfg.ca_file = None;
    let untrusted = Limiter::with_redis(RedisLimiter::new(&cfg).unwrap());
    assert!(matches!(
        check(&untrusted, &set, 1).await,
        Verdict::Unavailable { .. }
    ));
}

#[tokio::test]
async fn a_redis_cluster_shares_limits_whatever_slot_an_agent_hashes_to() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let conf = dir.path().join(format!("nodes-{i}.conf"));
        let conf = conf.display().to_string();
        let n = PrivateRedis::start_with(
            &[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &conf,
                "--cluster-node-timeout",
                "5000",
            ],
            "redis://127.0.0.1:{port}",
        )
        .await
        .unwrap();
        nodes.push(n);
    }
    // Three primaries, the 16384 slots split between them.
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let out = std::process::Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli (package redis-tools)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for n in &nodes {
        let ok = warden_tests::eventually(Duration::from_secs(20), || async {
            command(&n.url(), redis::cmd("CLUSTER").arg("INFO"))
                .await
                .is_ok_and(|v| warden_tests::redis::text(v).contains("cluster_state:ok"))
        })
        .await;
        assert!(ok, "the cluster did not become ready");
    }
    let set = limits(
        "  - { name: r, key: agent, rate: { calls: 3, per: 1m } }",
        1,
    );
    let mut cfg = RedisConfig::new(&nodes[0].url());
    cfg.cluster = true;
    cfg.key_prefix = unique_prefix();
    cfg.timeout_ms = 2000;
    let a = Limiter::with_redis(RedisLimiter::new(&cfg).unwrap());
    let b = Limiter::with_redis(RedisLimiter::new(&cfg).unwrap());
    // Twelve agents hash to slots on all three nodes; each has 3 calls a
    // minute, shared by the two limiters.
    for i in 0..12 {
        let agent = format!("agent-{i}");
        let key = CallKey {
            agent: &agent,
            ..CALL
        };
        let items = set.items(a.prefix(), &key);
        for l in [&a, &b, &a] {
            assert_eq!(l.check(&set, &items).await, Verdict::Admit, "{agent}");
        }
        assert!(
            matches!(b.check(&set, &items).await, Verdict::Refuse { .. }),
            "{agent}: the fourth call across both limiters"
        );
    }
    // A flushed script cache on every node is reloaded where it is needed.
    for n in &nodes {
        command(&n.url(), redis::cmd("SCRIPT").arg("FLUSH"))
            .await
            .unwrap();
    }
    let key = CallKey {
        agent: "fresh",
        ..CALL
    };
    let items = set.items(a.prefix(), &key);
    assert_eq!(a.check(&set, &items).await, Verdict::Admit);
    assert_eq!(a.shared().unwrap().errors.load(Ordering::Relaxed), 0);
}

/// What the agent receives: a spent quota is `QUOTA_EXCEEDED` at stage
/// `limit` naming the limit and when to retry; with Redis gone, a limit that
/// fails closed is `LIMITER_UNAVAILABLE` within the timeout, and the spent
/// quota stays spent.
#[tokio::test]
async fn the_agent_sees_quota_exceeded_and_limiter_unavailable() {
    use warden_tests::gateway::call;
    use warden_tests::*;
    let mut redis = PrivateRedis::start().await.unwrap();
    let mesh = Mesh::start().await.unwrap();
    let doc = r#"
version: 1
tools:
  - name: paid
    description: Costs two units.
    input_schema: { type: object }
    scopes: ["data:read"]
    risk: low
    cost: 2
    upstream: { kind: builtin, address: echo }
  - name: free
    description: Echo.
    input_schema: { type: object }
    scopes: ["data:read"]
    risk: low
    upstream: { kind: builtin, address: echo }
limits:
  - { name: paid-budget, key: agent, tools: [paid], quota: { budget: 4, per: 1h } }
  - { name: any-rate, key: agent, rate: { calls: 1000, per: 1m } }
cedar: "permit (principal, action, resource);"
"#;
    mesh.admin()
        .await
        .unwrap()
        .apply_policy(apply_policy(doc))
        .await
        .unwrap();
    mesh.register("q1", &["data:read"], 8).await.unwrap();
    let mut cfg = mesh.sidecar_config("q1", Some(mesh.join_token("q1").await.unwrap()));
    let mut r = RedisConfig::new(&redis.url());
    r.key_prefix = unique_prefix();
    r.timeout_ms = 100;
    cfg.redis = Some(r);
    let sc = warden_sidecar::app::start(cfg).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            sc.auth.state().held().policy.is_some()
        })
        .await
    );
    let s = session(&sc).await;
    let mut c = with_token(&sc, &s.token).await.unwrap();
    for _ in 0..2 {
        c.call_tool(call("paid", "{}")).await.unwrap();
    }
    let q = assert_refused(
        c.call_tool(call("paid", "{}")).await,
        tonic::Code::ResourceExhausted,
        "QUOTA_EXCEEDED",
    );
    let meta = warden_shared::refusal::metadata_of(&q);
    assert_eq!(
        (meta["stage"].as_str(), meta["rule"].as_str()),
        ("limit", "paid-budget")
    );
    let retry: u64 = meta["retry_after_ms"].parse().unwrap();
    assert!(retry > 0 && retry <= 3_600_000, "{retry}");

    redis.stop();
    let t = Instant::now();
    let u = assert_refused(
        c.call_tool(call("free", "{}")).await,
        tonic::Code::Unavailable,
        "LIMITER_UNAVAILABLE",
    );
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(warden_shared::refusal::metadata_of(&u)["stage"], "limit");
    // Redis back: the quota spent before the outage is still spent.
    redis.restart().await.unwrap();
    let spent = eventually(Duration::from_secs(10), || {
        let mut c = c.clone();
        async move {
            c.call_tool(call("paid", "{}"))
                .await
                .is_err_and(|e| reason(&e) == "QUOTA_EXCEEDED")
                && c.call_tool(call("free", "{}")).await.is_ok()
        }
    })
    .await;
    assert!(spent, "the quota was forgotten, or sharing did not resume");
    sc.shutdown().await.unwrap();
}
