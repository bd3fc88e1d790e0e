//! The policy's `messaging` section: which agents may message which, and
//! how pairwise keys rotate and how old a message may be.
//!
//! ```yaml
//! messaging:
//!   rotation: 1h        # a new key epoch every hour
//!   grace: 5m           # the previous epoch's key verifies this long after
//!   max_age: 5m         # older messages are refused
//!   max_skew: 30s       # messages this far in the future are tolerated
//!   max_payload_bytes: 65536
//!   allow:
//!     - { from: "agent:coder-1", to: "type:reviewer" }
//!     - { from: "type:reviewer", to: "type:coder", both_ways: true }
//! ```
//!
//! A selector is `agent:<id>`, `type:<agent type>` or `*`. Nobody may message
//! anybody unless a rule says so; an agent never messages itself.

use serde::{Deserialize, Serialize};

use super::parse_duration;
use crate::agent::AgentId;

/// Most rules in the section.
pub const MAX_RULES: usize = 1000;

/// The section as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Messaging {
    /// Key epoch length (1m to 30d; default 1h).
    #[serde(default)]
    pub rotation: Option<String>,
    /// How long after its epoch a key still verifies (at most `rotation`;
    /// default 5m).
    #[serde(default)]
    pub grace: Option<String>,
    /// Oldest message accepted (1s to 1h; default 5m).
    #[serde(default)]
    pub max_age: Option<String>,
    /// How far in the future a timestamp may be (at most `max_age`;
    /// default 30s).
    #[serde(default)]
    pub max_skew: Option<String>,
    /// Largest payload (default 64 KiB, at most 1 MiB).
    #[serde(default)]
    pub max_payload_bytes: Option<u32>,
    /// Who may message whom.
    #[serde(default)]
    pub allow: Vec<Rule>,
}

/// One direction (or both) between two sets of agents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Senders: `agent:<id>`, `type:<agent type>` or `*`.
    pub from: String,
    /// Recipients, same grammar.
    pub to: String,
    /// Also allow `to` to message `from`.
    #[serde(default)]
    pub both_ways: bool,
}

/// A parsed selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Selector {
    /// One agent.
    Agent(String),
    /// Every agent of a type.
    Type(String),
    /// Every agent.
    Any,
}

impl Selector {
    /// Parses `agent:<id>`, `type:<type>` or `*`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(Self::Any);
        }
        if let Some(id) = s.strip_prefix("agent:") {
            return AgentId::new(id)
                .map(|_| Self::Agent(id.to_owned()))
                .map_err(|e| e.to_string());
        }
        if let Some(t) = s.strip_prefix("type:") {
            let ok = !t.is_empty()
                && t.len() <= 64
                && t.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
            return if ok {
                Ok(Self::Type(t.to_owned()))
            } else {
                Err(format!("agent type {t:?} must be 1-64 of [A-Za-z0-9._-]"))
            };
        }
        Err(format!(
            "selector {s:?} must be `agent:<id>`, `type:<agent type>` or `*`"
        ))
    }

    /// Whether an agent matches.
    pub fn matches(&self, id: &str, agent_type: &str) -> bool {
        match self {
            Self::Agent(a) => a == id,
            Self::Type(t) => t == agent_type,
            Self::Any => true,
        }
    }
}

/// The compiled section (defaults filled in).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Key epoch length, ms.
    pub rotation_ms: u64,
    /// Grace after an epoch, ms.
    pub grace_ms: u64,
    /// Oldest message accepted, ms.
    pub max_age_ms: u64,
    /// Future tolerance, ms.
    pub max_skew_ms: u64,
    /// Largest payload.
    pub max_payload_bytes: u32,
    /// `(senders, recipients)` pairs, both ways expanded.
    pub rules: Vec<(Selector, Selector)>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            rotation_ms: 3_600_000,
            grace_ms: 300_000,
            max_age_ms: 300_000,
            max_skew_ms: 30_000,
            max_payload_bytes: 64 * 1024,
            rules: Vec::new(),
        }
    }
}

fn ms(field: &str, v: Option<&String>, default: u64, min: u64, max: u64) -> Result<u64, String> {
    let Some(v) = v else { return Ok(default) };
    let d = parse_duration(v)
        .ok_or_else(|| format!("{field} {v:?} is not a duration like 30s, 5m, 1h"))?;
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if !(min..=max).contains(&ms) {
        return Err(format!("{field} must be between {min} ms and {max} ms"));
    }
    Ok(ms)
}

impl Messaging {
    /// Validates and fills in defaults.
    pub fn compile(&self) -> Result<Settings, String> {
        let d = Settings::default();
        let rotation_ms = ms(
            "rotation",
            self.rotation.as_ref(),
            d.rotation_ms,
            60_000,
            30 * 86_400_000,
        )?;
        let grace_ms = ms("grace", self.grace.as_ref(), d.grace_ms, 1, rotation_ms)?;
        let max_age_ms = ms(
            "max_age",
            self.max_age.as_ref(),
            d.max_age_ms,
            1000,
            3_600_000,
        )?;
        let max_skew_ms = ms(
            "max_skew",
            self.max_skew.as_ref(),
            d.max_skew_ms,
            1,
            max_age_ms,
        )?;
        let max_payload_bytes = self.max_payload_bytes.unwrap_or(d.max_payload_bytes);
        let cap = u32::try_from(crate::a2a::MAX_PAYLOAD_BYTES).unwrap_or(u32::MAX);
        if !(1..=cap).contains(&max_payload_bytes) {
            return Err(format!("max_payload_bytes must be 1 to {cap}"));
        }
        if self.allow.len() > MAX_RULES {
            return Err(format!("more than {MAX_RULES} rules"));
        }
        let mut rules = Vec::new();
        for (i, r) in self.allow.iter().enumerate() {
            let at = |e: String| format!("allow[{i}]: {e}");
            let from = Selector::parse(&r.from).map_err(at)?;
            let to = Selector::parse(&r.to).map_err(at)?;
            if r.both_ways {
                rules.push((to.clone(), from.clone()));
            }
            rules.push((from, to));
        }
        Ok(Settings {
            rotation_ms,
            grace_ms,
            max_age_ms,
            max_skew_ms,
            max_payload_bytes,
            rules,
        })
    }
}

impl Settings {
    /// Whether `(from_id, from_type)` may message `(to_id, to_type)`.
    pub fn allows(&self, from: (&str, &str), to: (&str, &str)) -> bool {
        from.0 != to.0
            && self
                .rules
                .iter()
                .any(|(f, t)| f.matches(from.0, from.1) && t.matches(to.0, to.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(yaml: &str) -> Result<Settings, String> {
        serde_norway::from_str::<Messaging>(yaml)
            .map_err(|e| e.to_string())?
            .compile()
    }

    #[test]
    fn rules_allow_only_what_they_name() {
        let s = m("allow:\n- {from: 'agent:coder', to: 'type:reviewer'}\n- {from: 'type:reviewer', to: 'agent:deployer', both_ways: true}\n").unwrap();
        assert!(s.allows(("coder", "coder"), ("r1", "reviewer")));
        assert!(!s.allows(("r1", "reviewer"), ("coder", "coder")));
        assert!(s.allows(("r1", "reviewer"), ("deployer", "ops")));
        assert!(s.allows(("deployer", "ops"), ("r1", "reviewer")));
        assert!(!s.allows(("other", "coder"), ("r1", "reviewer")));
        // Never to itself, even under `*`.
        let any = m("allow: [{from: '*', to: '*'}]").unwrap();
        assert!(!any.allows(("a", "t"), ("a", "t")));
        assert!(any.allows(("a", "t"), ("b", "t")));
        assert_eq!(m("{}").unwrap(), Settings::default());
        assert!(!Settings::default().allows(("a", "t"), ("b", "t")));
    }

    #[test]
    fn bad_sections_say_what_to_fix() {
        let e = m("allow: [{from: 'coder', to: '*'}]").unwrap_err();
        assert!(e.contains("allow[0]") && e.contains("agent:<id>"), "{e}");
        assert!(m("allow: [{from: 'agent:Bad', to: '*'}]").is_err());
        assert!(m("rotation: 10s").unwrap_err().contains("rotation"));
        assert!(m("rotation: 1h\ngrace: 2h").unwrap_err().contains("grace"));
        assert!(
            m("max_age: 1m\nmax_skew: 2m")
                .unwrap_err()
                .contains("max_skew")
        );
        assert!(m("max_age: soon").unwrap_err().contains("not a duration"));
        assert!(m("max_payload_bytes: 0").is_err());
        assert!(m("allow: [{from: '*', to: '*', extra: 1}]").is_err());
    }
}
