//! `warden.v1.AdminService`: admin certificates only.

use std::sync::Arc;

use base64::Engine;
use rand::RngCore;
use tonic::{Request, Response, Status};
use warden_shared::agent::{AgentId, AgentStatus};
use warden_shared::audit::{ActorKind, Event};
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::admin_service_server::AdminService;
use warden_shared::refusal::{self, Reason, status};
use warden_shared::scope::Scope;

use crate::agents::{join_token_hash, store_error};
use crate::auth;
use crate::state::State;
use crate::store::{self, Agent, ApprovalState, NewPolicy, PolicyMeta};
use crate::{now_unix, timestamp};

/// Longest free-text field (type, version, owner, environment, reason).
const MAX_TEXT: usize = 256;
/// Most tools in an allow or deny list.
const MAX_TOOLS: usize = 256;
/// Longest join-token lifetime.
const MAX_JOIN_TTL: u32 = 86_400;
/// Highest session cap.
const MAX_SESSIONS: u32 = 10_000;

/// An approval request on the wire.
fn approval_pb(a: &store::Approval) -> pb::Approval {
    let r = &a.request;
    pb::Approval {
        id: r.id.clone(),
        agent_id: r.agent_id.to_string(),
        session_id: r.session_id.clone(),
        user_id: r.user_id.clone(),
        tool: r.tool.clone(),
        arguments_json: r.arguments.clone(),
        reason: r.reason.clone(),
        trace_id: r.trace_id.clone(),
        because: r.because.clone(),
        quorum: r.quorum,
        created_at: Some(timestamp(r.created_at)),
        deadline: Some(timestamp(r.deadline)),
        state: a.state.as_str().to_owned(),
        decisions: a
            .decisions
            .iter()
            .map(|d| pb::ApprovalDecision {
                approver: d.approver.clone(),
                approve: d.approve,
                comment: d.comment.clone(),
                decided_at: Some(timestamp(d.decided_at)),
            })
            .collect(),
        binding: r.binding.clone(),
    }
}

/// Most grants one ListGrants answers with.
const MAX_LISTED_GRANTS: u32 = 10_000;

/// A consent grant on the wire.
pub(crate) fn grant_pb(g: &store::Grant) -> pb::Grant {
    let (agent_id, agent_type) = match &g.grantee {
        store::Grantee::Agent(a) => (a.to_string(), String::new()),
        store::Grantee::AgentType(t) => (String::new(), t.clone()),
    };
    pb::Grant {
        id: g.id.clone(),
        user_id: g.user_id.clone(),
        agent_id,
        agent_type,
        scopes: g.scopes.clone(),
        created_at: Some(timestamp(g.created_at)),
        expires_at: Some(timestamp(g.expires_at)),
        revoked_at: g.revoked_at.map(timestamp),
        revoked_by: g.revoked_by.clone(),
    }
}

/// An approval id as given: `apr_` and at most 64 visible characters.
fn approval_id(id: &str) -> Result<&str, Status> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("id must be 1-64 visible ASCII characters"));
    }
    Ok(id)
}

/// Pending requests sent when a watch starts, at most.
const WATCH_INITIAL: u32 = 1000;

/// The stream `WatchApprovals` answers with.
pub type ApprovalFeed = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::WatchApprovalsResponse, Status>> + Send>,
>;

/// Feeds one watcher: the pending requests, then every change; the pending
/// list again whenever the watcher fell behind the changes.
async fn feed(
    state: Arc<State>,
    mut events: tokio::sync::broadcast::Receiver<Arc<store::Approval>>,
    tx: tokio::sync::mpsc::Sender<Result<pb::WatchApprovalsResponse, Status>>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut stopping = state.stopping.subscribe();
    loop {
        let pending = match state
            .store
            .list_approvals(Some(ApprovalState::Pending), WATCH_INITIAL, now_unix())
            .await
        {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Err(store_error(e))).await;
                return;
            }
        };
        // Oldest first, as a feed reads.
        for a in pending.iter().rev() {
            let item = pb::WatchApprovalsResponse {
                initial: true,
                approval: Some(approval_pb(a)),
            };
            if tx.send(Ok(item)).await.is_err() {
                return;
            }
        }
        loop {
            let event = tokio::select! {
                _ = async { let _ = stopping.wait_for(|s| *s).await; } => return,
                () = tx.closed() => return,
                e = events.recv() => e,
            };
            match event {
                Ok(a) => {
                    let item = pb::WatchApprovalsResponse {
                        initial: false,
                        approval: Some(approval_pb(&a)),
                    };
                    if tx.send(Ok(item)).await.is_err() {
                        return;
                    }
                }
                // Missed changes: start over from the pending list.
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "an approval watcher fell behind; sending the pending list again"
                    );
                    break;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}

/// The admin service.
#[derive(Debug, Clone)]
pub struct AdminApi {
    state: Arc<State>,
}

impl AdminApi {
    /// Wraps the shared state.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

pub(super) fn invalid(m: impl Into<String>) -> Status {
    status(Reason::InvalidArgument, m)
}

fn text(field: &str, v: &str, required: bool) -> Result<String, Status> {
    if required && v.is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    if v.len() > MAX_TEXT || v.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{field} must be at most {MAX_TEXT} printable characters"
        )));
    }
    Ok(v.to_owned())
}

fn tool_list(field: &str, v: &[String]) -> Result<Vec<String>, Status> {
    if v.len() > MAX_TOOLS {
        return Err(invalid(format!(
            "{field} has more than {MAX_TOOLS} entries"
        )));
    }
    for t in v {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b));
        if !ok {
            return Err(invalid(format!(
                "{field}: invalid tool name {t:?} (use [A-Za-z0-9_./-], at most 128)"
            )));
        }
    }
    Ok(v.to_vec())
}

fn agent_id(s: &str) -> Result<AgentId, Status> {
    AgentId::new(s).map_err(|e| invalid(e.to_string()))
}

/// Store record to wire form.
pub fn to_proto(a: &Agent, state: &State) -> pb::Agent {
    pb::Agent {
        id: a.id.to_string(),
        agent_type: a.agent_type.clone(),
        version: a.version.clone(),
        owner: a.owner.clone(),
        environment: a.environment.clone(),
        created_at: Some(timestamp(a.created_at)),
        expires_at: a.expires_at.map(timestamp),
        max_concurrent_sessions: a.max_sessions,
        allowed_scopes: a.allowed_scopes.clone(),
        allowed_tools: a.allowed_tools.clone(),
        denied_tools: a.denied_tools.clone(),
        status: pb::AgentStatus::from(a.status).into(),
        spiffe_id: state.td.agent(&a.id).to_string(),
        updated_at: Some(timestamp(a.updated_at)),
        status_reason: a.status_reason.clone(),
    }
}

impl AdminApi {
    /// Records an admin's act in the audit log.
    async fn note(&self, kind: &str, admin: &str, fill: impl FnOnce(&mut Event)) {
        let mut e = crate::audit::event(kind, ActorKind::Human, admin);
        e.outcome = "ok".into();
        fill(&mut e);
        self.state.audit.note(e).await;
    }

    async fn load_agent(&self, id: &AgentId) -> Result<Agent, Status> {
        crate::agents::agent_or(&self.state, id, Reason::AgentUnknown).await
    }

    async fn transition(
        &self,
        admin: &str,
        id: &str,
        to: AgentStatus,
        reason: &str,
    ) -> Result<pb::Agent, Status> {
        let id = agent_id(id)?;
        let reason = text("reason", reason, false)?;
        let current = self.load_agent(&id).await?;
        // Revocation is final: a revoked identity is never brought back.
        if current.status == AgentStatus::Revoked && to != AgentStatus::Revoked {
            return Err(status(
                Reason::AgentStateFinal,
                format!("agent {id} is revoked; register a new agent id instead"),
            ));
        }
        let updated = self
            .state
            .store
            .set_agent_status(&id, to, &reason, now_unix())
            .await
            .map_err(store_error)?;
        let Some(updated) = updated else {
            // Revoked (or removed) between the read above and the write.
            return Err(status(
                Reason::AgentStateFinal,
                format!("agent {id} is revoked; register a new agent id instead"),
            ));
        };
        tracing::warn!(agent = %id, admin, status = to.as_str(), reason = %reason, "agent status changed");
        let kind = match to {
            AgentStatus::Active => "agent.resumed",
            AgentStatus::Suspended => "agent.suspended",
            AgentStatus::Revoked => "agent.revoked",
        };
        self.note(kind, admin, |e| {
            e.agent = id.to_string();
            if !reason.is_empty() {
                e.detail.insert("reason".into(), reason.clone());
            }
        })
        .await;
        // Push it to the agent's sidecars now (the kill switch).
        self.state.agent_standing_changed(&id);
        Ok(to_proto(&updated, &self.state))
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    type WatchApprovalsStream = ApprovalFeed;
    type QueryAuditStream = super::audit::EntryFeed<pb::QueryAuditResponse>;
    type ExportAuditStream = super::audit::EntryFeed<pb::ExportAuditResponse>;

    async fn register_agent(
        &self,
        req: Request<pb::RegisterAgentRequest>,
    ) -> Result<Response<pb::RegisterAgentResponse>, Status> {
        let (_, admin) = auth::admin(&req, &self.state.td)?;
        let r = req.into_inner();
        let now = now_unix();
        let id = agent_id(&r.id)?;
        let scopes = Scope::parse_all(&r.allowed_scopes)
            .map_err(|e| invalid(format!("allowed_scopes: {e}")))?;
        let expires_at = r.expires_at.map(|t| t.seconds);
        if expires_at.is_some_and(|e| e <= now) {
            return Err(invalid("expires_at must be in the future"));
        }
        let max_sessions = match r.max_concurrent_sessions {
            0 => self.state.config.default_max_sessions,
            n if n <= MAX_SESSIONS => n,
            _ => {
                return Err(invalid(format!(
                    "max_concurrent_sessions must be at most {MAX_SESSIONS}"
                )));
            }
        };
        let agent = Agent {
            id: id.clone(),
            agent_type: text("agent_type", &r.agent_type, true)?,
            version: text("version", &r.version, false)?,
            owner: text("owner", &r.owner, true)?,
            environment: text("environment", &r.environment, false)?,
            created_at: now,
            updated_at: now,
            expires_at,
            max_sessions,
            allowed_scopes: scopes.iter().map(ToString::to_string).collect(),
            allowed_tools: tool_list("allowed_tools", &r.allowed_tools)?,
            denied_tools: tool_list("denied_tools", &r.denied_tools)?,
            status: AgentStatus::Active,
            status_reason: String::new(),
        };
        match self.state.store.create_agent(&agent).await {
            Ok(()) => {}
            Err(store::Error::Conflict) => {
                return Err(status(
                    Reason::AgentExists,
                    format!("agent {id} already exists"),
                ));
            }
            Err(e) => return Err(store_error(e)),
        }
        tracing::info!(agent = %id, admin, "agent registered");
        self.note("agent.registered", &admin, |e| {
            e.agent = id.to_string();
            e.detail.insert("owner".into(), agent.owner.clone());
            e.detail.insert("type".into(), agent.agent_type.clone());
        })
        .await;
        // Peers that the messaging rules pair with it get its keys.
        self.state.messaging.agents_changed();
        self.state.hub.global_changed();
        Ok(Response::new(pb::RegisterAgentResponse {
            agent: Some(to_proto(&agent, &self.state)),
        }))
    }

    async fn get_agent(
        &self,
        req: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::GetAgentResponse>, Status> {
        auth::admin(&req, &self.state.td)?;
        let id = agent_id(&req.get_ref().id)?;
        let a = self.load_agent(&id).await?;
        Ok(Response::new(pb::GetAgentResponse {
            agent: Some(to_proto(&a, &self.state)),
        }))
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        auth::admin(&req, &self.state.td)?;
        let all = self.state.store.list_agents().await.map_err(store_error)?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: all.iter().map(|a| to_proto(a, &self.state)).collect(),
        }))
    }

    async fn suspend_agent(
        &self,
        req: Request<pb::SuspendAgentRequest>,
    ) -> Result<Response<pb::SuspendAgentResponse>, Status> {
        let (_, admin) = auth::admin(&req, &self.state.td)?;
        let r = req.get_ref();
        let agent = self
            .transition(&admin, &r.id, AgentStatus::Suspended, &r.reason)
            .await?;
        Ok(Response::new(pb::SuspendAgentResponse {
            agent: Some(agent),
        }))
    }

    async fn resume_agent(
        &self,
        req: Request<pb::ResumeAgentRequest>,
    ) -> Result<Response<pb::ResumeAgentResponse>, Status> {
        let (_, admin) = auth::admin(&req, &self.state.td)?;
        let agent = self
            .transition(&admin, &req.get_ref().id, AgentStatus::Active, "")
            .await?;
        Ok(Response::new(pb::ResumeAgentResponse {
            agent: Some(agent),
        }))
    }

    async fn revoke_agent(
        &self,
        req: Request<pb::RevokeAgentRequest>,
    ) -> Result<Response<pb::RevokeAgentResponse>, Status> {
        let (_, admin) = auth::admin(&req, &self.state.td)?;
        let r = req.get_ref();
        let agent = self
            .transition(&admin, &r.id, AgentStatus::Revoked, &r.reason)
            .await?;
        Ok(Response::new(pb::RevokeAgentResponse {
            agent: Some(agent),
        }))
    }

    async fn list_sidecars(
        &self,
        req: Request<pb::ListSidecarsRequest>,
    ) -> Result<Response<pb::ListSidecarsResponse>, Status> {
        auth::admin(&req, &self.state.td)?;
        let now = now_unix();
        let current = self.state.current_policy();
        // How long a sidecar has been without the policy in force.
        let behind = |held: u64| match &current {
            Some(c) if held != c.version => (now - c.applied_at).max(0),
            _ => 0,
        };
        let sidecars = self
            .state
            .sidecars
            .list()
            .into_iter()
            .map(|e| pb::Sidecar {
                agent_id: e.agent.to_string(),
                peer: e.peer.clone(),
                connected_at: Some(timestamp(e.connected_at)),
                acked_version: e.acked.0,
                acked_at: (e.acked.0 > 0).then(|| timestamp(e.acked.1)),
                nacked_version: e.nack.as_ref().map_or(0, |n| n.0),
                nack_reason: e.nack.as_ref().map(|n| n.1.clone()).unwrap_or_default(),
                lag_seconds: e.lag(now),
                policy_version: e.policy,
                policy_age_seconds: behind(e.policy),
            })
            .collect();
        Ok(Response::new(pb::ListSidecarsResponse {
            sidecars,
            current_version: self.state.hub.version(),
            current_policy_version: current.as_ref().map_or(0, |p| p.version),
            stream_endings: self
                .state
                .sidecars
                .endings()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        }))
    }

    async fn revoke_session(
        &self,
        req: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        let (_, admin) = auth::admin(&req, &self.state.td)?;
        let r = req.into_inner();
        let reason = text("reason", &r.reason, false)?;
        if r.session_id.is_empty() || r.session_id.len() > 64 {
            return Err(invalid("session_id must be 1-64 bytes"));
        }
        let (agent, exp) = self
            .state
            .store
            .revoke_session(&r.session_id, now_unix())
            .await
            .map_err(store_error)?
            .ok_or_else(|| status(Reason::SessionNotFound, "no live session with that id"))?;
        tracing::warn!(admin, session = %r.session_id, agent = %agent, reason = %reason, "session revoked");
        self.note("session.revoked", &admin, |e| {
            e.agent = agent.to_string();
            e.session.clone_from(&r.session_id);
            if !reason.is_empty() {
                e.detail.insert("reason".into(), reason.clone());
            }
        })
        .await;
        self.state.hub.agent_changed(&agent);
        Ok(Response::new(pb::RevokeSessionResponse {
            session_id: r.session_id,
            agent_id: agent.to_string(),
            expires_at: Some(timestamp(exp)),
        }))
    }

    async fn list_grants(
        &self,
        req: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        auth::admin(&req, &self.state.td)?;
        let r = req.into_inner();
        if r.user_id.len() > 512 {
            return Err(invalid("user_id must be at most 512 bytes"));
        }
        let user = (!r.user_id.is_empty()).then_some(r.user_id.as_str());
        let grants = self
            .state
            .store
            .list_grants(user, r.all, now_unix(), MAX_LISTED_GRANTS)
            .await
            .map_err(store_error)?;
        Ok(Response::new(pb::ListGrantsResponse {
            grants: grants.iter().map(grant_pb).collect(),
        }))
    }

    async fn revoke_grant(
        &self,
        req: Request<pb::RevokeGrantRequest>,
    ) -> Result<Response<pb::RevokeGrantResponse>, Status> {
        let (_, admin) = auth::admin(&req, &self.state.td)?;
        let r = req.into_inner();
        let reason = text("reason", &r.reason, false)?;
        if r.grant_id.is_empty() || r.grant_id.len() > 64 {
            return Err(invalid("grant_id must be 1-64 bytes"));
        }
        let (grant, sessions) = crate::grants::revoke(
            &self.state,
            &r.grant_id,
            crate::grants::By::Admin(&admin),
            &reason,
        )
        .await
        .map_err(store_error)?
        .ok_or_else(|| status(Reason::GrantNotFound, "no live grant with that id"))?;
        Ok(Response::new(pb::RevokeGrantResponse {
            grant: Some(grant_pb(&grant)),
            session_ids: sessions,
        }))
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let (_, admin) = auth::admin(&req, &self.state.td)?;
        let r = req.into_inner();
        let id = agent_id(&r.agent_id)?;
        let ttl = match r.ttl_seconds {
            0 => self.state.config.join_token_ttl_secs,
            n if n <= MAX_JOIN_TTL => n,
            _ => {
                return Err(invalid(format!(
                    "ttl_seconds must be at most {MAX_JOIN_TTL}"
                )));
            }
        };
        let agent = self.load_agent(&id).await?;
        let now = now_unix();
        crate::agents::ensure_active(&agent, now)?;
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let token = format!(
            "wjt_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        let expires_at = now + i64::from(ttl);
        self.state
            .store
            .insert_join_token(&join_token_hash(&token), &id, &admin, now, expires_at)
            .await
            .map_err(store_error)?;
        tracing::info!(agent = %id, admin, expires_at, "join token created");
        self.note("join_token.created", &admin, |e| {
            e.agent = id.to_string();
            e.detail.insert("expires_at".into(), expires_at.to_string());
        })
        .await;
        Ok(Response::new(pb::CreateJoinTokenResponse {
            join_token: token,
            agent_id: id.to_string(),
            expires_at: Some(timestamp(expires_at)),
        }))
    }

    async fn rotate_signing_key(
        &self,
        req: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        let (_, admin) = auth::admin(&req, &self.state.td)?;
        let ring = self
            .state
            .keys
            .rotate(self.state.store.as_ref(), now_unix())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "signing key rotation failed");
                let reason = match e {
                    crate::identity::keys::Error::Store(_) => Reason::StoreUnavailable,
                    _ => Reason::Internal,
                };
                status(
                    reason,
                    "signing key rotation failed; see the control plane log",
                )
            })?;
        tracing::warn!(admin, kid = ring.active.kid(), "token signing key rotated");
        self.note("key.rotated", &admin, |e| {
            e.detail.insert("kid".into(), ring.active.kid().to_owned());
        })
        .await;
        self.state.hub.global_changed();
        Ok(Response::new(pb::RotateSigningKeyResponse {
            kid: ring.active.kid().to_owned(),
            published_kids: ring.jwks.keys.iter().map(|k| k.kid.clone()).collect(),
        }))
    }

    async fn apply_policy(
        &self,
        req: Request<pb::ApplyPolicyRequest>,
    ) -> Result<Response<pb::ApplyPolicyResponse>, Status> {
        let (_, admin) = auth::admin(&req, &self.state.td)?;
        let r = req.into_inner();
        // Validated here again, whatever the client checked.
        let policy = crate::policy::validate(&r.document)
            .await
            .inspect_err(|s| {
                tracing::info!(admin, kind = ?refusal::reason_of(s), "policy refused");
            })?;
        let tools = u32::try_from(policy.document.tools.len()).unwrap_or(u32::MAX);
        if r.dry_run {
            return Ok(Response::new(pb::ApplyPolicyResponse {
                version: 0,
                changed: false,
                digest: policy.digest,
                tools,
            }));
        }
        let expected = (r.expected_version != 0)
            .then(|| i64::try_from(r.expected_version).unwrap_or(i64::MAX));
        let new = NewPolicy {
            document: r.document,
            digest: policy.digest.clone(),
            tools,
            applied_by: admin.clone(),
            applied_at: now_unix(),
        };
        let stored = crate::policy::store(self.state.store.as_ref(), &new, expected)
            .await
            .map_err(store_error)?;
        let (meta, changed) = match stored {
            crate::policy::Stored::Version(m, changed) => (m, changed),
            crate::policy::Stored::Conflict { latest } => {
                return Err(status(
                    Reason::PolicyVersionConflict,
                    format!(
                        "the latest policy version is {latest}, not {}; review `wardenctl policy diff` and apply again",
                        r.expected_version
                    ),
                ));
            }
        };
        if changed {
            if let Err(e) = self.state.reload_policy().await {
                tracing::error!(error = %e, "could not reload the applied policy");
            }
            tracing::warn!(admin, version = meta.version, digest = %meta.digest, tools, "policy applied");
            self.note("policy.applied", &admin, |e| {
                e.detail.insert("version".into(), meta.version.to_string());
                e.detail.insert("digest".into(), meta.digest.clone());
                e.detail.insert("tools".into(), tools.to_string());
            })
            .await;
        }
        Ok(Response::new(pb::ApplyPolicyResponse {
            version: u64::try_from(meta.version).unwrap_or(0),
            changed,
            digest: meta.digest,
            tools,
        }))
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        auth::admin(&req, &self.state.td)?;
        let v = req.get_ref().version;
        let version = (v != 0).then(|| i64::try_from(v).unwrap_or(i64::MAX));
        let (meta, document) = self
            .state
            .store
            .get_policy(version)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                let what = if v == 0 {
                    "no policy has been applied yet".to_owned()
                } else {
                    format!("no policy version {v}")
                };
                status(Reason::PolicyVersionUnknown, what)
            })?;
        Ok(Response::new(pb::GetPolicyResponse {
            policy: Some(policy_proto(&meta)),
            document,
        }))
    }

    async fn list_policy_versions(
        &self,
        req: Request<pb::ListPolicyVersionsRequest>,
    ) -> Result<Response<pb::ListPolicyVersionsResponse>, Status> {
        auth::admin(&req, &self.state.td)?;
        let all = self
            .state
            .store
            .list_policies(req.get_ref().limit)
            .await
            .map_err(store_error)?;
        Ok(Response::new(pb::ListPolicyVersionsResponse {
            versions: all.iter().map(policy_proto).collect(),
        }))
    }

    async fn list_approvals(
        &self,
        req: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        auth::admin(&req, &self.state.td)?;
        let r = req.into_inner();
        let state = match r.state.as_str() {
            "" => Some(ApprovalState::Pending),
            "all" => None,
            s => Some(ApprovalState::parse(s).ok_or_else(|| {
                invalid("state must be pending, approved, denied, used, expired, cancelled or all")
            })?),
        };
        let limit = match r.limit {
            0 => 100,
            n if n > 1000 => return Err(invalid("limit must be at most 1000")),
            n => n,
        };
        let all = self
            .state
            .store
            .list_approvals(state, limit, now_unix())
            .await
            .map_err(store_error)?;
        Ok(Response::new(pb::ListApprovalsResponse {
            approvals: all.iter().map(approval_pb).collect(),
        }))
    }

    async fn get_approval(
        &self,
        req: Request<pb::GetApprovalRequest>,
    ) -> Result<Response<pb::GetApprovalResponse>, Status> {
        auth::admin(&req, &self.state.td)?;
        let id = approval_id(&req.get_ref().id)?;
        let a = self
            .state
            .store
            .get_approval(id, now_unix())
            .await
            .map_err(store_error)?
            .ok_or_else(|| status(Reason::ApprovalNotFound, "no approval request with that id"))?;
        Ok(Response::new(pb::GetApprovalResponse {
            approval: Some(approval_pb(&a)),
        }))
    }

    async fn decide_approval(
        &self,
        req: Request<pb::DecideApprovalRequest>,
    ) -> Result<Response<pb::DecideApprovalResponse>, Status> {
        let (_, admin) = auth::admin(&req, &self.state.td)?;
        let r = req.get_ref();
        let id = approval_id(&r.id)?.to_owned();
        let comment = text("comment", &r.comment, !r.approve)?;
        let now = now_unix();
        // The agent's end user decides these, not admins.
        if self
            .state
            .store
            .get_approval(&id, now)
            .await
            .map_err(store_error)?
            .is_some_and(|a| a.request.by_user)
        {
            return Err(status(
                Reason::WrongPrincipal,
                "this call is confirmed by the agent's end user, not by admins",
            ));
        }
        let decision = store::ApprovalDecision {
            approver: admin.to_string(),
            approve: r.approve,
            comment,
            decided_at: now,
        };
        let outcome = self
            .state
            .store
            .decide_approval(&id, &decision, now)
            .await
            .map_err(store_error)?;
        match outcome {
            store::Decided::Recorded(_) => {}
            store::Decided::AlreadyDecided => {
                return Err(status(
                    Reason::ApprovalAlreadyDecided,
                    "you have decided on this request already: one person counts once",
                ));
            }
            store::Decided::NotPending(state) => {
                return Err(status(
                    Reason::ApprovalNotPending,
                    format!("the request is {}, not pending", state.as_str()),
                ));
            }
            store::Decided::Unknown => {
                return Err(status(
                    Reason::ApprovalNotFound,
                    "no approval request with that id",
                ));
            }
        }
        let a = self
            .state
            .store
            .get_approval(&id, now)
            .await
            .map_err(store_error)?
            .ok_or_else(|| status(Reason::ApprovalNotFound, "no approval request with that id"))?;
        crate::api::approval::announce(&self.state, "human", &admin, &a, &decision.comment).await;
        Ok(Response::new(pb::DecideApprovalResponse {
            approval: Some(approval_pb(&a)),
        }))
    }

    async fn watch_approvals(
        &self,
        req: Request<pb::WatchApprovalsRequest>,
    ) -> Result<Response<ApprovalFeed>, Status> {
        let (_, admin) = auth::admin(&req, &self.state.td)?;
        tracing::info!(admin = %admin, "approval watch opened");
        // Subscribed before the pending list is read: no change falls between.
        let events = self.state.approval_events.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(feed(Arc::clone(&self.state), events, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn query_audit(
        &self,
        req: Request<pb::QueryAuditRequest>,
    ) -> Result<Response<Self::QueryAuditStream>, Status> {
        auth::admin(&req, &self.state.td)?;
        super::audit::query(Arc::clone(&self.state), req.into_inner())
            .await
            .map(Response::new)
    }

    async fn export_audit(
        &self,
        req: Request<pb::ExportAuditRequest>,
    ) -> Result<Response<Self::ExportAuditStream>, Status> {
        auth::admin(&req, &self.state.td)?;
        super::audit::export(Arc::clone(&self.state), req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_tree_heads(
        &self,
        req: Request<pb::ListTreeHeadsRequest>,
    ) -> Result<Response<pb::ListTreeHeadsResponse>, Status> {
        auth::admin(&req, &self.state.td)?;
        super::audit::list_heads(&self.state, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn sign_tree_head(
        &self,
        req: Request<pb::SignTreeHeadRequest>,
    ) -> Result<Response<pb::SignTreeHeadResponse>, Status> {
        auth::admin(&req, &self.state.td)?;
        super::audit::sign(&self.state).await.map(Response::new)
    }

    async fn prove_inclusion(
        &self,
        req: Request<pb::ProveInclusionRequest>,
    ) -> Result<Response<pb::ProveInclusionResponse>, Status> {
        auth::admin(&req, &self.state.td)?;
        super::audit::prove_inclusion(&self.state, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn prove_consistency(
        &self,
        req: Request<pb::ProveConsistencyRequest>,
    ) -> Result<Response<pb::ProveConsistencyResponse>, Status> {
        auth::admin(&req, &self.state.td)?;
        super::audit::prove_consistency(&self.state, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_audit_keys(
        &self,
        req: Request<pb::GetAuditKeysRequest>,
    ) -> Result<Response<pb::GetAuditKeysResponse>, Status> {
        auth::admin(&req, &self.state.td)?;
        super::audit::keys(&self.state).await.map(Response::new)
    }

    async fn prune_audit(
        &self,
        req: Request<pb::PruneAuditRequest>,
    ) -> Result<Response<pb::PruneAuditResponse>, Status> {
        let (_, admin) = auth::admin(&req, &self.state.td)?;
        super::audit::prune(&self.state, &admin, req.into_inner())
            .await
            .map(Response::new)
    }
}

fn policy_proto(m: &PolicyMeta) -> pb::PolicyVersion {
    pb::PolicyVersion {
        version: u64::try_from(m.version).unwrap_or(0),
        digest: m.digest.clone(),
        applied_by: m.applied_by.clone(),
        applied_at: Some(timestamp(m.applied_at)),
        tools: m.tools,
    }
}
