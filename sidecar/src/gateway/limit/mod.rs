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

pub use local::LocalLimiter;
pub use session::SessionCalls;
use warden_shared::refusal::{Reason, Refusal, Stage};

pub use crate::policy::limits::{CallKey, Item, KeyKind, Kind, Limit, LimitSet};

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

    /// Stage 5: every limit of `set` that applies to the call `key`,
    /// checked and counted together; a refusal names the limit and when to
    /// retry.
    pub async fn admit(&self, set: &LimitSet, key: &CallKey<'_>) -> Result<(), Refusal> {
        let items = set.items(self.prefix(), key);
        match self.check(set, &items).await {
            Verdict::Admit => Ok(()),
            Verdict::Refuse {
                limit,
                quota,
                retry_after,
            } => {
                let ms = u64::try_from(retry_after.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1);
                let (reason, what) = if quota {
                    (Reason::QuotaExceeded, "quota")
                } else {
                    (Reason::RateLimited, "rate limit")
                };
                Err(Refusal::at(
                    Stage::Limit,
                    reason,
                    format!("{what} {limit} reached; retry in {ms} ms"),
                )
                .rule(limit)
                .retry_after_ms(ms))
            }
            Verdict::Unavailable { limit } => Err(Refusal::at(
                Stage::Limit,
                Reason::LimiterUnavailable,
                format!(
                    "limit {limit} cannot be checked (its shared store is unreachable) and fails closed; retry later"
                ),
            )
            .rule(limit)),
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
