//! `warden.v1.ApprovalService`: the approval desk as sidecars use it. A
//! sidecar files a request for one call (bound to it by a digest of tool,
//! canonical arguments and session), learns the decision over its mesh
//! stream ([`part`]), and spends an approval once. Agent certificates only;
//! every request is the calling agent's own.

use std::fmt::Write;
use std::sync::Arc;

use base64::Engine;
use rand::RngCore;
use tonic::{Request, Response, Status};
use warden_shared::agent::AgentId;
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::approval_service_server::ApprovalService;
use warden_shared::refusal::{Reason, status};

use crate::agents::{ensure_active, registered_agent, store_error};
use crate::auth;
use crate::digest::digest;
use crate::state::State;
use crate::store::{self, ApprovalState, NewApproval};
use crate::{now_unix, timestamp};

/// Pending requests one agent may have at once: an agent in a loop fills
/// its own queue, not the desk.
pub const MAX_PENDING_PER_AGENT: u64 = 2000;
/// How long a decision stays in the pushed set (seconds).
pub const DECIDED_HORIZON: i64 = 600;
/// Most decisions in one push.
pub const DECIDED_MAX: u32 = 2000;
/// Largest arguments shown to approvers.
const MAX_ARGUMENTS: usize = 64 * 1024;
/// Longest reason, trace id, user, session.
const MAX_REASON: usize = 1024;
const MAX_ID: usize = 128;
/// Quorum and deadline bounds, as the policy's.
const QUORUM: std::ops::RangeInclusive<u32> = 1..=5;
const DEADLINE: std::ops::RangeInclusive<u32> = 30..=3600;

/// The approval service.
#[derive(Debug, Clone)]
pub struct ApprovalApi {
    state: Arc<State>,
}

impl ApprovalApi {
    /// Wraps the shared state.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }

    /// The calling agent, registered and active.
    async fn agent<T>(&self, req: &Request<T>) -> Result<AgentId, Status> {
        let (_, id) = auth::agent(req, &self.state.td)?;
        ensure_active(&registered_agent(&self.state, &id).await?, now_unix())?;
        Ok(id)
    }
}

fn invalid(m: impl Into<String>) -> Status {
    status(Reason::InvalidArgument, m)
}

/// A hex SHA-256.
fn binding(b: &str) -> Result<&str, Status> {
    if b.len() != 64 || !b.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(invalid("binding must be 64 lower-case hex digits"));
    }
    Ok(b)
}

/// Printable text of at most `max` bytes (empty allowed unless `required`).
fn text(field: &str, v: &str, max: usize, required: bool) -> Result<String, Status> {
    if required && v.is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    if v.len() > max || v.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{field} must be at most {max} bytes of printable text"
        )));
    }
    Ok(v.to_owned())
}

/// The wire form of a state.
pub fn status_pb(s: ApprovalState) -> pb::ApprovalStatus {
    use pb::ApprovalStatus as P;
    match s {
        ApprovalState::Pending => P::Pending,
        ApprovalState::Approved => P::Approved,
        ApprovalState::Denied => P::Denied,
        ApprovalState::Used => P::Used,
        ApprovalState::Expired => P::Expired,
        ApprovalState::Cancelled => P::Cancelled,
    }
}

/// Who denied `a`, and why (empty unless denied).
fn denial(a: &store::Approval) -> (String, String) {
    a.decisions
        .iter()
        .find(|d| !d.approve)
        .filter(|_| a.state == ApprovalState::Denied)
        .map(|d| (d.approver.clone(), d.comment.clone()))
        .unwrap_or_default()
}

fn new_id() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    format!(
        "apr_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

/// The decisions on `agent`'s recent requests, as pushed over its mesh
/// stream.
pub async fn part(state: &State, agent: &AgentId) -> Result<pb::ApprovalsPart, Status> {
    let now = now_unix();
    let decided = state
        .store
        .decided_approvals(agent, now - DECIDED_HORIZON, DECIDED_MAX, now)
        .await
        .map_err(store_error)?;
    let mut decided: Vec<pb::ApprovalOutcome> = decided
        .iter()
        .map(|a| {
            let (decided_by, comment) = denial(a);
            pb::ApprovalOutcome {
                id: a.request.id.clone(),
                status: status_pb(a.state).into(),
                decided_by,
                comment,
            }
        })
        .collect();
    decided.sort_by(|a, b| a.id.cmp(&b.id));
    let mut canon = String::new();
    for o in &decided {
        let _ = writeln!(
            canon,
            "{}\0{}\0{}\0{}",
            o.id, o.status, o.decided_by, o.comment
        );
    }
    Ok(pb::ApprovalsPart {
        digest: digest(canon.as_bytes()),
        decided,
    })
}

#[tonic::async_trait]
impl ApprovalService for ApprovalApi {
    async fn request_approval(
        &self,
        req: Request<pb::RequestApprovalRequest>,
    ) -> Result<Response<pb::RequestApprovalResponse>, Status> {
        let agent = self.agent(&req).await?;
        let r = req.into_inner();
        let now = now_unix();
        let binding = binding(&r.binding)?.to_owned();
        if !warden_shared::policy::valid_tool_name(&r.tool) {
            return Err(invalid("tool is not a valid tool name"));
        }
        if !QUORUM.contains(&r.quorum) {
            return Err(invalid("quorum must be 1 to 5 people"));
        }
        if !DEADLINE.contains(&r.deadline_seconds) {
            return Err(invalid("deadline_seconds must be 30 to 3600"));
        }
        if r.arguments_json.len() > MAX_ARGUMENTS
            || serde_json::from_str::<serde_json::Value>(&r.arguments_json).is_err()
        {
            return Err(invalid(format!(
                "arguments_json must be JSON of at most {MAX_ARGUMENTS} bytes"
            )));
        }
        let new = NewApproval {
            id: new_id(),
            binding,
            agent_id: agent.clone(),
            session_id: text("session_id", &r.session_id, MAX_ID, true)?,
            user_id: text("user_id", &r.user_id, MAX_ID, false)?,
            tool: r.tool,
            arguments: r.arguments_json,
            reason: text("reason", &r.reason, MAX_REASON, false)?,
            trace_id: text("trace_id", &r.trace_id, MAX_ID, false)?,
            because: text("because", &r.because, MAX_REASON, true)?,
            quorum: r.quorum,
            created_at: now,
            deadline: now + i64::from(r.deadline_seconds),
        };
        let pending = self
            .state
            .store
            .pending_approvals(&agent, now)
            .await
            .map_err(store_error)?;
        if pending >= MAX_PENDING_PER_AGENT {
            return Err(status(
                Reason::RateLimited,
                format!(
                    "agent {agent} has {pending} approval requests pending, the most it may have"
                ),
            ));
        }
        let a = self
            .state
            .store
            .request_approval(&new, now)
            .await
            .map_err(store_error)?;
        if a.request.id == new.id {
            tracing::warn!(
                approval = %a.request.id,
                agent = %agent,
                tool = %a.request.tool,
                session = %a.request.session_id,
                because = %a.request.because,
                quorum = a.request.quorum,
                deadline = a.request.deadline,
                "approval requested"
            );
            self.state.approval_changed(&a);
        }
        let (decided_by, comment) = denial(&a);
        Ok(Response::new(pb::RequestApprovalResponse {
            id: a.request.id.clone(),
            status: status_pb(a.state).into(),
            deadline: Some(timestamp(a.request.deadline)),
            decided_by,
            comment,
        }))
    }

    async fn use_approval(
        &self,
        req: Request<pb::UseApprovalRequest>,
    ) -> Result<Response<pb::UseApprovalResponse>, Status> {
        let agent = self.agent(&req).await?;
        let binding = binding(&req.get_ref().binding)?;
        let used = self
            .state
            .store
            .use_approval(&agent, binding, now_unix())
            .await
            .map_err(store_error)?;
        if let Some(a) = &used {
            tracing::info!(approval = %a.request.id, agent = %agent, "approval used");
            self.state.approval_changed(a);
        }
        let id = used.map(|a| a.request.id).unwrap_or_default();
        Ok(Response::new(pb::UseApprovalResponse {
            used: !id.is_empty(),
            id,
        }))
    }

    async fn cancel_approval(
        &self,
        req: Request<pb::CancelApprovalRequest>,
    ) -> Result<Response<pb::CancelApprovalResponse>, Status> {
        let agent = self.agent(&req).await?;
        let id = text("id", &req.get_ref().id, MAX_ID, true)?;
        let cancelled = self
            .state
            .store
            .cancel_approval(&agent, &id, now_unix())
            .await
            .map_err(store_error)?;
        if cancelled {
            tracing::info!(approval = %id, agent = %agent, "approval cancelled: nobody waits for it");
            if let Ok(Some(a)) = self.state.store.get_approval(&id, now_unix()).await {
                self.state.approval_changed(&a);
            }
        }
        Ok(Response::new(pb::CancelApprovalResponse { cancelled }))
    }
}
