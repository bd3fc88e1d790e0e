use warden_shared::policy::Policy;

use super::*;

const DOC: &str = r#"
version: 1
tools:
  - name: a
    description: A.
    input_schema: { type: object }
    scopes: ["x:y"]
    risk: low
    cost: 5
    limits: { calls_per_minute: 30 }
  - name: b
    description: B.
    input_schema: { type: object }
    scopes: ["x:y"]
    risk: low
limits:
  - { name: per-agent, key: agent, rate: { calls: 10, per: 1s, burst: 2 } }
  - { name: per-session, key: session, tools: [b], rate: { calls: 1, per: 1m } }
  - name: agent-budget
    key: agent
    quota: { budget: 100, per: 1d }
    on_failure: local_fallback
    expected_replicas: 4
    shadow: true
"#;

fn set(doc: &str) -> LimitSet {
    LimitSet::compile(&Policy::parse(doc).unwrap().document).unwrap()
}

fn call<'a>(tool: &'a str) -> CallKey<'a> {
    CallKey {
        agent: "ag",
        owner: "team",
        session: "s1",
        tool,
        cost: 5,
    }
}

#[test]
fn limits_compile_into_items_under_one_hash_tag() {
    let s = set(DOC);
    let items = s.items("w:", &call("a"));
    let keys: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "w:{a:ag}:per-agent:r200000:a:ag",
            "w:{a:ag}:agent-budget:q86400000000:a:ag",
            "w:{a:ag}:a.calls_per_minute:r60000000:t:ag:a"
        ]
    );
    assert_eq!(
        items[0].kind,
        Kind::Rate {
            interval_us: 100_000,
            burst: 2
        }
    );
    assert_eq!(
        (items[1].weight, items[1].enforce),
        (5, false),
        "cost; shadow"
    );
    assert_eq!(
        items[2].kind,
        Kind::Rate {
            interval_us: 2_000_000,
            burst: 30
        }
    );
    // The session limit applies to b only.
    let keys: Vec<String> = s
        .items("w:", &call("b"))
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert!(
        keys.contains(&"w:{a:ag}:per-session:r60000000:s:s1".to_owned()),
        "{keys:?}"
    );
    // An owner limit puts every key under the owner's tag.
    let with_owner = DOC.replace("key: session", "key: owner");
    let keys: Vec<String> = set(&with_owner)
        .items("w:", &call("b"))
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert!(
        keys.iter().all(|k| k.starts_with("w:{o:team}:")),
        "{keys:?}"
    );
}

#[test]
fn a_local_share_divides_the_limit() {
    let s = set(DOC);
    let budget = s.iter().find(|l| l.name == "agent-budget").unwrap();
    assert_eq!(budget.fallback_replicas, Some(4));
    assert_eq!(
        budget.share(4),
        Kind::Quota {
            window_us: 86_400_000_000,
            budget: 25
        }
    );
    let rate = s.iter().find(|l| l.name == "per-agent").unwrap();
    assert_eq!(rate.fallback_replicas, None, "fail closed by default");
    assert_eq!(
        rate.share(4),
        Kind::Rate {
            interval_us: 400_000,
            burst: 1
        }
    );
}

#[tokio::test]
async fn without_redis_the_local_limiter_decides_and_counts() {
    let s = set(DOC);
    let l = Limiter::default();
    let items = s.items(l.prefix(), &call("a"));
    assert_eq!(l.check(&s, &items).await, Verdict::Admit);
    assert_eq!(l.check(&s, &items).await, Verdict::Admit);
    match l.check(&s, &items).await {
        Verdict::Refuse {
            limit,
            quota,
            retry_after,
        } => {
            assert_eq!((limit.as_str(), quota), ("per-agent", false));
            assert!(retry_after <= Duration::from_millis(100), "{retry_after:?}");
        }
        v => panic!("{v:?}"),
    }
    let m = l.metrics.snapshot();
    assert_eq!(m["per-agent"].refused, 1);
    assert_eq!(m["per-agent"].allowed, 2);
}
