//! The policy's rate limits and cost quotas, compiled with each policy
//! ([`LimitSet`]), and the keys a call counts under ([`LimitSet::items`]).
//! Stage 5 (`gateway::limit`) checks and counts them.

use std::time::Duration;

use warden_shared::policy::{Document, LimitSpec, parse_duration};

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
    pub(crate) fn share(&self, replicas: u32) -> Kind {
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
