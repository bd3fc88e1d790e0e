//! Agent identity domain types.

use std::fmt;

/// Why an agent id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid agent id {0:?}: use 1-63 characters [a-z0-9._-], starting with a letter or digit")]
pub struct InvalidAgentId(pub String);

/// A validated agent id: `[a-z0-9][a-z0-9._-]{0,62}`, safe in a SPIFFE path,
/// a file name and a log line.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId(String);

impl AgentId {
    /// Validates an agent id.
    pub fn new(s: &str) -> Result<Self, InvalidAgentId> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidAgentId(s.to_owned()))
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lifecycle state of an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentStatus {
    /// May enroll, renew and open sessions.
    Active,
    /// Temporarily refused everything; can be resumed.
    Suspended,
    /// Permanently refused everything.
    Revoked,
}

impl AgentStatus {
    /// Stable lower-case name, as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Revoked => "revoked",
        }
    }

    /// Parses [`AgentStatus::as_str`] output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "suspended" => Some(Self::Suspended),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }
}

impl From<AgentStatus> for crate::proto::v1::AgentStatus {
    fn from(s: AgentStatus) -> Self {
        match s {
            AgentStatus::Active => Self::Active,
            AgentStatus::Suspended => Self::Suspended,
            AgentStatus::Revoked => Self::Revoked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids() {
        assert!(AgentId::new("coder-1").is_ok());
        assert!(AgentId::new("a.b_c").is_ok());
        for bad in ["", "-a", "A", "a/b", "a b", &"a".repeat(64)] {
            assert!(AgentId::new(bad).is_err(), "{bad:?}");
        }
    }
}
