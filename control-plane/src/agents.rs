//! Agent records and join tokens as the services see them: an agent that
//! must exist and be active, a join token's stored hash, and the store's
//! failures as the status every service returns.

use tonic::Status;
use warden_shared::agent::{AgentId, AgentStatus};
use warden_shared::refusal::{Reason, status};

use crate::state::State;
use crate::store::{self, Agent};

/// Hash under which a join token is stored.
pub fn join_token_hash(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

pub fn store_error(e: store::Error) -> Status {
    tracing::error!(error = %e, "store failure");
    status(
        Reason::StoreUnavailable,
        "the control plane's store failed; retry later",
    )
}

/// Refuses an agent that is not active or has expired.
pub fn ensure_active(agent: &Agent, now: i64) -> Result<(), Status> {
    match agent.status {
        AgentStatus::Active => {}
        AgentStatus::Suspended => {
            return Err(status(
                Reason::AgentSuspended,
                format!("agent {} is suspended", agent.id),
            ));
        }
        AgentStatus::Revoked => {
            return Err(status(
                Reason::AgentRevoked,
                format!("agent {} is revoked", agent.id),
            ));
        }
    }
    if agent.expires_at.is_some_and(|e| e <= now) {
        return Err(status(
            Reason::AgentExpired,
            format!("agent {} has expired", agent.id),
        ));
    }
    Ok(())
}

/// The record of agent `id` when the caller acts as that agent: an
/// unregistered agent is refused with `AGENT_NOT_REGISTERED`.
pub async fn registered_agent(state: &State, id: &AgentId) -> Result<Agent, Status> {
    agent_or(state, id, Reason::AgentNotRegistered).await
}

/// The record of agent `id`; an unregistered agent is refused with
/// `reason` (`AGENT_UNKNOWN` when an admin names it).
pub async fn agent_or(state: &State, id: &AgentId, reason: Reason) -> Result<Agent, Status> {
    state
        .store
        .get_agent(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| status(reason, format!("agent {id} is not registered")))
}
