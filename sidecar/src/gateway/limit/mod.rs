//! Stage 5: rate limits and cost quotas, and the per-session tool-call cap
//! that stage 1 checks.
//!
//! The policy's limits ([`LimitSet`], compiled with each policy) are keyed
//! by agent, agent and tool, session or owner. Rates are GCRA (`calls` per
//! `per`, bursts of `burst`); quotas count each call's cost in fixed,
//! UTC-aligned windows. Without Redis the in-process [`LocalLimiter`] is
//! authoritative. With Redis ([`redis::RedisLimiter`]) all the limits of a
//! call are checked and counted in one atomic script, so that every sidecar
//! of an agent shares one budget; the local limiter first refuses what one
//! replica alone has already exceeded, and when Redis is unreachable each
//! limit fails closed or falls back to a local share of its budget.

pub mod local;
pub mod redis;
pub mod session;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use warden_shared::policy::{Document, LimitSpec, parse_duration};

pub use local::LocalLimiter;
pub use session::SessionCalls;

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// GCRA: one call every `interval_us`, up to `burst` at once.
    Rate {
        /// Emission interval, µs.
        interval_us: i64,
        /// Calls allowed at once.
        burst: u64,
    },
    /// At most `budget` cost units per `window_us` (aligned to the epoch).
    Quota {
        /// Window, µs.
        window_us: i64,
        /// Units per window.
        budget: u64,
    },
}

/// What is counted together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// The agent, across its sessions and sidecars.
    Agent,
    /// The agent and the tool.
    AgentTool,
    /// The session.
    Session,
    /// Every agent of one owner.
    Owner,
}

/// A compiled limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    /// Its name (refusals and metrics).
    pub name: String,
    /// What it counts.
    pub key: KeyKind,
    /// The tools it applies to (empty: all).
    pub tools: Vec<String>,
    /// Rate or quota.
    pub kind: Kind,
    /// `Some(n)`: with Redis unreachable, admit within 1/n of the limit
    /// locally; `None`: refuse (fail closed).
    pub fallback_replicas: Option<u32>,
    /// Count, never refuse.
    pub shadow: bool,
}

impl Limit {
    fn compile(l: &LimitSpec) -> Result<Self, String> {
        let key = match l.key.as_str() {
            "agent" => KeyKind::Agent,
            "agent_tool" => KeyKind::AgentTool,
            "session" => KeyKind::Session,
            "owner" => KeyKind::Owner,
            other => return Err(format!("limit {}: unknown key {other}", l.name)),
        };
        let us = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        let kind = match (&l.rate, &l.quota) {
            (Some(r), None) => {
                let per = parse_duration(&r.per).ok_or("bad rate.per")?;
                let calls = u64::try_from(r.calls).map_err(|_| "bad rate.calls")?.max(1);
                Kind::Rate {
                    // Rounded up: never faster than the policy says.
                    interval_us: i64::try_from((us(per) as u64).div_ceil(calls))
                        .unwrap_or(i64::MAX)
                        .max(1),
                    burst: u64::try_from(r.burst.unwrap_or(r.calls))
                        .map_err(|_| "bad rate.burst")?
                        .max(1),
                }
            }
            (None, Some(q)) => Kind::Quota {
                window_us: us(parse_duration(&q.per).ok_or("bad quota.per")?),
                budget: u64::try_from(q.budget).map_err(|_| "bad quota.budget")?,
            },
            _ => return Err(format!("limit {}: needs a rate or a quota", l.name)),
        };
        Ok(Self {
            name: l.name.clone(),
            key,
            tools: l.tools.clone(),
            kind,
            fallback_replicas: (l.on_failure.as_deref() == Some("local_fallback")).then(|| {
                l.expected_replicas
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(1)
            }),
            shadow: l.shadow,
        })
    }

    /// This limit's share for one of `replicas` sidecars.
    fn share(&self, replicas: u32) -> Kind {
        let n = i64::from(replicas.max(1));
        match self.kind {
            Kind::Rate { interval_us, burst } => Kind::Rate {
                interval_us: interval_us.saturating_mul(n),
                burst: (burst / n as u64).max(1),
            },
            Kind::Quota { window_us, budget } => Kind::Quota {
                window_us,
                budget: budget / n as u64,
            },
        }
    }
}

/// The limits of one policy.
#[derive(Debug, Default)]
pub struct LimitSet {
    limits: Vec<Limit>,
    /// Some limit counts per owner: every key of a call is then hash-tagged
    /// by owner, so that one Redis Cluster slot holds them all (one atomic
    /// script per call).
    by_owner: bool,
}

impl LimitSet {
    /// The document's limits, and each tool's `calls_per_minute` as an
    /// agent-and-tool rate named `<tool>.calls_per_minute`.
    pub fn compile(doc: &Document) -> Result<Self, String> {
        let mut limits = doc
            .limits
            .iter()
            .map(Limit::compile)
            .collect::<Result<Vec<_>, _>>()?;
        for t in &doc.tools {
            if let Some(n) = t.limits.calls_per_minute {
                limits.push(Limit {
                    name: format!("{}.calls_per_minute", t.name),
                    key: KeyKind::AgentTool,
                    tools: vec![t.name.clone()],
                    kind: Kind::Rate {
                        interval_us: 60_000_000_u64.div_ceil(u64::from(n.max(1))) as i64,
                        burst: u64::from(n.max(1)),
                    },
                    fallback_replicas: None,
                    shadow: false,
                });
            }
        }
        let by_owner = limits.iter().any(|l| l.key == KeyKind::Owner);
        Ok(Self { limits, by_owner })
    }

    /// Every limit.
    pub fn iter(&self) -> impl Iterator<Item = &Limit> {
        self.limits.iter()
    }

    /// The items a call counts against: its applicable limits with their
    /// keys (under `prefix`) and weights.
    pub fn items(&self, prefix: &str, call: &CallKey<'_>) -> Vec<Item> {
        let tag = if self.by_owner {
            format!("{{o:{}}}", call.owner)
        } else {
            format!("{{a:{}}}", call.agent)
        };
        self.limits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.tools.is_empty() || l.tools.iter().any(|t| t == call.tool))
            .map(|(i, l)| {
                // The limit's kind and period are part of its key: a policy
                // that changes them starts a new count instead of reading
                // state of another shape.
                let shape = match l.kind {
                    Kind::Rate { interval_us, burst } => format!("r{}", interval_us * burst as i64),
                    Kind::Quota { window_us, .. } => format!("q{window_us}"),
                };
                let scope = match l.key {
                    KeyKind::Agent => format!("a:{}", call.agent),
                    KeyKind::AgentTool => format!("t:{}:{}", call.agent, call.tool),
                    KeyKind::Session => format!("s:{}", call.session),
                    KeyKind::Owner => "o".to_owned(),
                };
                Item {
                    key: format!("{prefix}{tag}:{}:{shape}:{scope}", l.name),
                    kind: l.kind,
                    weight: match l.kind {
                        Kind::Rate { .. } => 1,
                        Kind::Quota { .. } => u64::from(call.cost),
                    },
                    enforce: !l.shadow,
                    limit: i,
                }
            })
            .collect()
    }

    /// The limit an item counts against.
    pub fn get(&self, i: usize) -> Option<&Limit> {
        self.limits.get(i)
    }
}

/// Who makes a call, for limit keys.
#[derive(Debug, Clone, Copy)]
pub struct CallKey<'a> {
    /// The agent.
    pub agent: &'a str,
    /// Its owner.
    pub owner: &'a str,
    /// The session.
    pub session: &'a str,
    /// The tool.
    pub tool: &'a str,
    /// The tool's cost.
    pub cost: u32,
}

/// One limit as a call counts against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The state's key.
    pub key: String,
    /// Rate or quota.
    pub kind: Kind,
    /// 1 for a rate; the tool's cost for a quota.
    pub weight: u64,
    /// False in shadow mode.
    pub enforce: bool,
    /// Index of the limit in its [`LimitSet`].
    pub limit: usize,
}

/// What a limit said about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Within the limit.
    pub admitted: bool,
    /// When refused: how long until it would be admitted, µs.
    pub retry_after_us: i64,
    /// How full the limit is with this call, ‰ (≥ 800: near the limit).
    pub usage_permille: u32,
}

/// The stage's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every enforced limit admits the call (and it was counted).
    Admit,
    /// `limit` refuses it; retry after this long.
    Refuse {
        /// The limit's name.
        limit: String,
        /// A quota (else a rate).
        quota: bool,
        /// How long until it would be admitted.
        retry_after: Duration,
    },
    /// The shared store is unreachable and `limit` fails closed.
    Unavailable {
        /// The limit's name.
        limit: String,
    },
}

/// Counters per limit, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Calls it admitted.
    pub allowed: u64,
    /// Calls it refused.
    pub refused: u64,
    /// Calls it admitted at ≥ 80% of the limit.
    pub near_limit: u64,
    /// Calls a shadow limit would have refused.
    pub shadow_refused: u64,
    /// Calls decided by the local fallback while the shared store was away.
    pub fallback: u64,
}

/// Counters by limit name (bounded: a policy has at most 64 limits plus
/// one per tool).
#[derive(Debug, Default)]
pub struct LimitMetrics {
    counts: Mutex<BTreeMap<String, Counts>>,
}

impl LimitMetrics {
    /// Records what each limit said about one call. A shadow limit is not
    /// counted for a call an enforced limit refused: its counts answer
    /// "what would it refuse that passes today?".
    pub fn record(&self, set: &LimitSet, items: &[Item], outcomes: &[Outcome], fallback: bool) {
        let refused = items
            .iter()
            .zip(outcomes)
            .any(|(i, o)| i.enforce && !o.admitted);
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        for (it, o) in items.iter().zip(outcomes) {
            if refused && !it.enforce {
                continue;
            }
            let Some(l) = set.get(it.limit) else { continue };
            let c = match m.get_mut(&l.name) {
                Some(c) => c,
                None => m.entry(l.name.clone()).or_default(),
            };
            match (o.admitted, it.enforce) {
                (true, _) => {
                    c.allowed += 1;
                    if o.usage_permille >= 800 {
                        c.near_limit += 1;
                    }
                }
                (false, true) => c.refused += 1,
                (false, false) => c.shadow_refused += 1,
            }
            if fallback {
                c.fallback += 1;
            }
        }
    }

    /// The counters.
    pub fn snapshot(&self) -> BTreeMap<String, Counts> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The first enforced refusal among `outcomes`, as a verdict.
pub fn verdict(set: &LimitSet, items: &[Item], outcomes: &[Outcome]) -> Verdict {
    for (it, o) in items.iter().zip(outcomes) {
        if it.enforce && !o.admitted {
            let name = set
                .get(it.limit)
                .map(|l| l.name.clone())
                .unwrap_or_default();
            return Verdict::Refuse {
                limit: name,
                quota: matches!(it.kind, Kind::Quota { .. }),
                retry_after: Duration::from_micros(u64::try_from(o.retry_after_us).unwrap_or(0)),
            };
        }
    }
    Verdict::Admit
}

/// The limit stage's engine: the in-process limiter alone, or in front of
/// the shared one.
#[derive(Debug, Default)]
pub struct Limiter {
    local: LocalLimiter,
    fallback: LocalLimiter,
    shared: Option<std::sync::Arc<redis::RedisLimiter>>,
    /// Counters per limit.
    pub metrics: LimitMetrics,
}

impl Limiter {
    /// Limits shared through Redis.
    pub fn with_redis(shared: impl Into<std::sync::Arc<redis::RedisLimiter>>) -> Self {
        Self {
            shared: Some(shared.into()),
            ..Self::default()
        }
    }

    /// The shared limiter, if configured.
    pub fn shared(&self) -> Option<&std::sync::Arc<redis::RedisLimiter>> {
        self.shared.as_ref()
    }

    /// The prefix of every state key.
    pub fn prefix(&self) -> &str {
        self.shared
            .as_ref()
            .map_or("warden:", |r| r.prefix.as_str())
    }

    /// Checks and counts a call's `items`.
    pub async fn check(&self, set: &LimitSet, items: &[Item]) -> Verdict {
        if items.is_empty() {
            return Verdict::Admit;
        }
        let now = now_us();
        let Some(shared) = &self.shared else {
            let o = self.local.check(items, now, true);
            self.metrics.record(set, items, &o, false);
            return verdict(set, items, &o);
        };
        // This replica alone already over a limit: no round trip needed.
        let local = self.local.check(items, now, false);
        if let v @ Verdict::Refuse { .. } = verdict(set, items, &local) {
            self.metrics.record(set, items, &local, false);
            return v;
        }
        match shared.check(items).await {
            Ok(o) => {
                let v = verdict(set, items, &o);
                if v == Verdict::Admit {
                    self.local.check(items, now, true);
                }
                self.metrics.record(set, items, &o, false);
                v
            }
            Err(_) => self.fall_back(set, items, now),
        }
    }

    /// Redis is unreachable: each limit fails closed, or admits within its
    /// local share (the limit divided by the expected replicas).
    fn fall_back(&self, set: &LimitSet, items: &[Item], now: i64) -> Verdict {
        let mut scaled = Vec::with_capacity(items.len());
        for it in items {
            let Some(l) = set.get(it.limit) else { continue };
            match l.fallback_replicas {
                Some(n) => scaled.push(Item {
                    key: format!("fallback:{}", it.key),
                    kind: l.share(n),
                    ..it.clone()
                }),
                None if it.enforce => {
                    return Verdict::Unavailable {
                        limit: l.name.clone(),
                    };
                }
                // A shadow limit without a fallback: nothing to evaluate.
                None => {}
            }
        }
        let o = self.fallback.check(&scaled, now, true);
        self.metrics.record(set, &scaled, &o, true);
        verdict(set, &scaled, &o)
    }
}

/// Wall clock, µs since the epoch.
pub fn now_us() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros(),
    )
    .unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
