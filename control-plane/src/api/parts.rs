//! The parts of an agent's pushed state and their digests. A digest names
//! a part's content (the first 8 bytes of a SHA-256 over a canonical
//! encoding, never 0, which means "nothing held"); the sidecar echoes the
//! digests of what it holds, so a reconnect sends only what differs.

use std::fmt::Write;

use tonic::Status;
use warden_shared::agent::{AgentId, AgentStatus};
use warden_shared::proto::v1 as pb;

use crate::agents::store_error;
use crate::digest::digest;
use crate::policy::CurrentPolicy;
use crate::state::State;
use crate::{now_unix, timestamp};

/// An agent's own parts, read from the store.
#[derive(Debug)]
pub struct AgentParts {
    /// Status and reason.
    pub standing: pb::StandingPart,
    /// Revoked sessions not yet expired.
    pub sessions: pb::RevokedSessionsPart,
    /// The policy in force with this agent's tools (`None`: no policy yet).
    pub policy: Option<pb::PolicyPart>,
}

impl AgentParts {
    /// Whether the agent is revoked (its stream ends after this push).
    pub fn revoked(&self) -> bool {
        self.standing.status == i32::from(pb::AgentStatus::Revoked)
    }
}

fn standing(status: AgentStatus, reason: String, a: &crate::store::Agent) -> pb::StandingPart {
    let canon = format!(
        "{}\0{reason}\0{}\0{}\0{}\0{}",
        status.as_str(),
        a.agent_type,
        a.owner,
        a.environment,
        a.expires_at.unwrap_or(0)
    );
    pb::StandingPart {
        digest: digest(canon.as_bytes()),
        status: pb::AgentStatus::from(status).into(),
        reason,
        agent_type: a.agent_type.clone(),
        owner: a.owner.clone(),
        environment: a.environment.clone(),
        expires_at: a.expires_at.map(timestamp),
    }
}

fn sessions(mut revoked: Vec<(String, i64)>) -> pb::RevokedSessionsPart {
    revoked.sort();
    let mut canon = String::new();
    for (id, exp) in &revoked {
        let _ = writeln!(canon, "{id}\0{exp}");
    }
    pb::RevokedSessionsPart {
        digest: digest(canon.as_bytes()),
        sessions: revoked
            .into_iter()
            .map(|(session_id, exp)| pb::RevokedSession {
                session_id,
                expires_at: Some(timestamp(exp)),
            })
            .collect(),
    }
}

fn policy(p: &CurrentPolicy, agent: &crate::store::Agent) -> pb::PolicyPart {
    let tools = p.document.tools_for(
        agent.id.as_str(),
        &agent.agent_type,
        &agent.allowed_tools,
        &agent.denied_tools,
    );
    let mut canon = p.version.to_be_bytes().to_vec();
    for (name, risk) in &tools {
        canon.extend_from_slice(name.as_bytes());
        canon.push(0);
        canon.extend_from_slice(risk.as_str().as_bytes());
        canon.push(b'\n');
    }
    pb::PolicyPart {
        digest: digest(&canon),
        version: p.version,
        document: p.text.clone(),
        tools: tools
            .into_iter()
            .map(|(name, risk)| pb::EffectiveTool {
                name,
                risk: risk.as_str().to_owned(),
            })
            .collect(),
    }
}

/// Reads what concerns `agent` now.
pub async fn read(
    state: &State,
    agent: &AgentId,
    current: Option<&CurrentPolicy>,
) -> Result<AgentParts, Status> {
    let now = now_unix();
    let a = crate::agents::registered_agent(state, agent).await?;
    // An expired identity is refused like a revoked one.
    let expired = a.expires_at.is_some_and(|e| e <= now);
    let standing = if expired && a.status == AgentStatus::Active {
        standing(AgentStatus::Revoked, "identity expired".to_owned(), &a)
    } else {
        standing(a.status, a.status_reason.clone(), &a)
    };
    let revoked = state
        .store
        .revoked_sessions(agent, now)
        .await
        .map_err(store_error)?;
    Ok(AgentParts {
        standing,
        sessions: sessions(revoked),
        policy: current.map(|p| policy(p, &a)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_follow_content_only() {
        let a = sessions(vec![("s2".into(), 5), ("s1".into(), 9)]);
        let b = sessions(vec![("s1".into(), 9), ("s2".into(), 5)]);
        assert_eq!(a.digest, b.digest, "order does not matter");
        assert_ne!(a.digest, sessions(vec![("s1".into(), 9)]).digest);
        let agent = crate::store::testing::agent("a", 1);
        let st = |reason: &str, a: &crate::store::Agent| {
            standing(AgentStatus::Suspended, reason.into(), a).digest
        };
        assert_ne!(st("x", &agent), st("y", &agent));
        let moved = crate::store::Agent {
            environment: "prod".into(),
            ..agent.clone()
        };
        assert_ne!(st("x", &agent), st("x", &moved));
        let expiring = crate::store::Agent {
            expires_at: Some(1_900_000_000),
            ..agent.clone()
        };
        assert_ne!(st("x", &agent), st("x", &expiring));
        assert_eq!(
            standing(AgentStatus::Active, String::new(), &expiring)
                .expires_at
                .map(|t| t.seconds),
            Some(1_900_000_000)
        );
        assert_ne!(digest(b""), 0);
    }
}
