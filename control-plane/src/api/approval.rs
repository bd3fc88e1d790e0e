//! `warden.v1.ApprovalService`: the approval desk as sidecars use it. A
//! sidecar files a request for one call (bound to it by a digest of tool,
//! canonical arguments and session), learns the decision over its mesh
//! stream ([`part`]), and spends an approval once. Agent certificates only;
//! every request is the calling agent's own.

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
use crate::state::State;
use crate::store::{self, ApprovalState, NewApproval};
use crate::{now_unix, timestamp};

/// Pending requests one agent may have at once: an agent in a loop fills
/// its own queue, not the desk.
pub const MAX_PENDING_PER_AGENT: u64 = 2000;
/// How far back a sidecar that holds no decisions is sent them (seconds):
/// past the longest deadline a call can wait.
pub const DECIDED_HORIZON: i64 = 3900;
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
pub fn denial(a: &store::Approval) -> (String, String) {
    a.decisions
        .iter()
        .find(|d| !d.approve)
        .filter(|_| a.state == ApprovalState::Denied)
        .map(|d| (d.approver.clone(), d.comment.clone()))
        .unwrap_or_default()
}

/// One step of an approval request, as an audit event (target
/// `warden::audit`): `requested`, `approved` or `denied` (a decision that
/// settles it), `decision` (an approval short of the quorum), `used`,
/// `cancelled`. The actor is the agent or the admin who took the step.
pub async fn audit(
    state: &State,
    step: &str,
    actor_kind: &str,
    actor: &str,
    a: &store::Approval,
    comment: &str,
) {
    let r = &a.request;
    tracing::info!(
        target: "warden::audit",
        event = "approval",
        step,
        actor_kind,
        actor,
        approval = %r.id,
        agent = %r.agent_id,
        session = %r.session_id,
        user = %r.user_id,
        tool = %r.tool,
        trace_id = %r.trace_id,
        because = %r.because,
        quorum = r.quorum,
        approvals = a.decisions.iter().filter(|d| d.approve).count(),
        state = a.state.as_str(),
        comment = ?comment,
        "approval {step}"
    );
    let kind = match actor_kind {
        "agent" => warden_shared::audit::ActorKind::Agent,
        _ => warden_shared::audit::ActorKind::Human,
    };
    let mut e = crate::audit::event(&format!("approval.{step}"), kind, actor);
    e.agent = r.agent_id.to_string();
    e.session.clone_from(&r.session_id);
    e.user.clone_from(&r.user_id);
    e.tool.clone_from(&r.tool);
    e.trace_id.clone_from(&r.trace_id);
    e.approval.clone_from(&r.id);
    e.outcome = a.state.as_str().to_owned();
    e.detail.insert("quorum".into(), r.quorum.to_string());
    e.detail.insert(
        "approvals".into(),
        a.decisions.iter().filter(|d| d.approve).count().to_string(),
    );
    if !comment.is_empty() {
        e.detail
            .insert("comment".into(), comment.chars().take(256).collect());
    }
    state.audit.note(e).await;
}

/// A decision was recorded on `a` by `actor`: audited, the waiting
/// sidecar woken (it learns the decision over its mesh stream), watchers
/// and webhooks told.
pub async fn announce(
    state: &State,
    actor_kind: &str,
    actor: &str,
    a: &store::Approval,
    comment: &str,
) {
    let step = match a.state {
        ApprovalState::Approved => "approved",
        ApprovalState::Denied => "denied",
        _ => "decision",
    };
    audit(state, step, actor_kind, actor, a, comment).await;
    if a.state != ApprovalState::Pending {
        state.hub.agent_changed(&a.request.agent_id);
    }
    state
        .approval_event(crate::webhooks::Event::Decided, a)
        .await;
}

/// A new request id (`apr_…`).
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    format!(
        "apr_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

/// The decisions on `agent`'s requests that a sidecar holding `held` (the
/// sequence number of its last) lacks, as pushed over its mesh stream:
/// those after `held`, or, when `complete` (the sidecar holds nothing, or a
/// number this store never gave), those of the last [`DECIDED_HORIZON`]
/// seconds. `None`: nothing to send. At most [`DECIDED_MAX`] at once;
/// `more` says whether more remain.
pub async fn part(
    state: &State,
    agent: &AgentId,
    held: u64,
    complete: bool,
) -> Result<(Option<pb::ApprovalsPart>, bool), Status> {
    let now = now_unix();
    let (after, since) = if complete {
        (0, now - DECIDED_HORIZON)
    } else {
        (held, 0)
    };
    let outcomes = state
        .store
        .approval_outcomes(agent, after, since, DECIDED_MAX)
        .await
        .map_err(store_error)?;
    let more = outcomes.len() >= DECIDED_MAX as usize;
    let Some(last) = outcomes.last().map(|o| o.seq) else {
        // A sidecar holding decisions this store never made starts over.
        return Ok((
            (complete && held != 0).then(|| pb::ApprovalsPart {
                seq: 0,
                decided: Vec::new(),
                complete: true,
            }),
            false,
        ));
    };
    let decided = outcomes
        .into_iter()
        .map(|o| pb::ApprovalOutcome {
            id: o.id,
            status: status_pb(o.state).into(),
            decided_by: o.denied_by,
            comment: o.comment,
        })
        .collect();
    Ok((
        Some(pb::ApprovalsPart {
            seq: last,
            decided,
            complete,
        }),
        more,
    ))
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
            by_user: r.by_user,
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
            audit(&self.state, "requested", "agent", agent.as_str(), &a, "").await;
            self.state
                .approval_event(crate::webhooks::Event::Requested, &a)
                .await;
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
            audit(&self.state, "used", "agent", agent.as_str(), a, "").await;
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
        if cancelled && let Ok(Some(a)) = self.state.store.get_approval(&id, now_unix()).await {
            audit(
                &self.state,
                "cancelled",
                "agent",
                agent.as_str(),
                &a,
                "nobody waits for it",
            )
            .await;
            self.state.approval_changed(&a);
        }
        Ok(Response::new(pb::CancelApprovalResponse { cancelled }))
    }

    async fn decide_as_user(
        &self,
        req: Request<pb::DecideAsUserRequest>,
    ) -> Result<Response<pb::DecideAsUserResponse>, Status> {
        let agent = self.agent(&req).await?;
        let r = req.into_inner();
        let id = text("id", &r.id, MAX_ID, true)?;
        let session = text("session_id", &r.session_id, MAX_ID, true)?;
        let comment = text("comment", &r.comment, MAX_REASON, false)?;
        let now = now_unix();
        let not_found = || {
            status(
                Reason::ApprovalNotFound,
                "no such request for this session's user to decide",
            )
        };
        // Only the agent's own request, filed for its user to decide, in the
        // very session that confirms.
        let a = self
            .state
            .store
            .get_approval(&id, now)
            .await
            .map_err(store_error)?
            .filter(|a| {
                a.request.agent_id == agent && a.request.by_user && a.request.session_id == session
            })
            .ok_or_else(not_found)?;
        let approver = if a.request.user_id.is_empty() {
            format!("user of session {session}")
        } else {
            format!("user {}", a.request.user_id)
        };
        let decision = store::ApprovalDecision {
            approver: approver.clone(),
            approve: r.approve,
            comment: if r.approve || !comment.is_empty() {
                comment
            } else {
                "the user declined".to_owned()
            },
            decided_at: now,
        };
        match self
            .state
            .store
            .decide_approval(&id, &decision, now)
            .await
            .map_err(store_error)?
        {
            store::Decided::Recorded(_) => {}
            store::Decided::NotPending(s) => {
                return Err(status(
                    Reason::ApprovalNotPending,
                    format!("the request is {}, not pending", s.as_str()),
                ));
            }
            store::Decided::AlreadyDecided | store::Decided::Unknown => return Err(not_found()),
        }
        let a = self
            .state
            .store
            .get_approval(&id, now)
            .await
            .map_err(store_error)?
            .ok_or_else(not_found)?;
        announce(&self.state, "user", &approver, &a, &decision.comment).await;
        Ok(Response::new(pb::DecideAsUserResponse {
            status: status_pb(a.state).into(),
        }))
    }
}
