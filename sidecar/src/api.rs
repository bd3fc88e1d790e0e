//! The agent-facing gRPC API (`warden.v1.AgentService`), on loopback TCP and
//! a Unix socket. Every request must carry `warden-agent: true`.

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Response, Status};
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::agent_service_server::AgentService;
use warden_shared::refusal::{Reason, status};
use warden_shared::token::Claims;
use warden_shared::{AGENT_HEADER, AGENT_HEADER_VALUE};

use crate::cp::ControlPlane;
use crate::gateway::Refusal;
use crate::gateway::authenticate::{Authenticator, Credentials};
use crate::gateway::pipeline::{self, Gateway};
use crate::gateway::session::{self, forward};
use crate::identity::rotation::Manager;
use crate::now_unix;

/// Refuses requests without the agent header (see [`AGENT_HEADER`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequireAgentHeader;

impl Interceptor for RequireAgentHeader {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        match req.metadata().get(AGENT_HEADER) {
            Some(v) if v.as_bytes() == AGENT_HEADER_VALUE.as_bytes() => Ok(req),
            _ => Err(status(
                Reason::AgentHeaderMissing,
                format!(
                    "security header missing: set metadata `{AGENT_HEADER}: {AGENT_HEADER_VALUE}`"
                ),
            )),
        }
    }
}

/// The agent API.
#[derive(Debug, Clone)]
pub struct AgentApi {
    identity: Arc<Manager>,
    cp: Arc<ControlPlane>,
    auth: Arc<Authenticator>,
    gateway: Arc<Gateway>,
}

fn ts(secs: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: secs,
        nanos: 0,
    }
}

impl AgentApi {
    /// Wires the API.
    pub fn new(
        identity: Arc<Manager>,
        cp: Arc<ControlPlane>,
        auth: Arc<Authenticator>,
        gateway: Arc<Gateway>,
    ) -> Self {
        Self {
            identity,
            cp,
            auth,
            gateway,
        }
    }

    /// The tool gateway.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// What a request presents to stage 1.
    fn credentials<'a, T>(&self, req: &'a Request<T>) -> Credentials<'a> {
        Credentials::of(req, self.identity.snapshot())
    }

    /// Stage 1 for the calls outside the gateway's pipeline.
    async fn authenticate<T>(&self, req: &Request<T>) -> Result<Arc<Claims>, Status> {
        self.gateway
            .authenticate(&self.credentials(req))
            .await
            .map(|(claims, _)| claims)
            .map_err(Status::from)
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn start_session(
        &self,
        req: Request<pb::StartSessionRequest>,
    ) -> Result<Response<pb::StartSessionResponse>, Status> {
        let r = req.into_inner();
        let resp = session::start(
            &self.auth,
            &self.cp,
            pb::IssueTokenRequest {
                scopes: r.scopes,
                user_id: r.user_id,
                context: r.context,
                max_tool_calls: r.max_tool_calls,
                wait_for_approval: r.wait_for_approval,
                user_token: r.user_token,
            },
        )
        .await?;
        Ok(Response::new(pb::StartSessionResponse {
            token: resp.token,
            session_id: resp.session_id,
            scopes: resp.scopes,
            expires_at: resp.expires_at,
            step_up: resp.step_up,
        }))
    }

    async fn end_session(
        &self,
        req: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::EndSessionResponse>, Status> {
        let claims = self.authenticate(&req).await?;
        // Refuse the token here at once, whatever the control plane says
        // (the list is written to disk off the runtime).
        let (auth, sid, exp) = (Arc::clone(&self.auth), claims.sid.clone(), claims.exp);
        let saved = tokio::task::spawn_blocking(move || auth.end_session(&sid, exp, now_unix()))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        if let Err(e) = saved {
            // Refused in memory already; only a restart could revive it.
            tracing::error!(error = %e, session = %claims.sid, "could not persist the ended session");
        }
        let mut client = self.cp.identity_client()?;
        client
            .release_session(pb::ReleaseSessionRequest {
                session_id: claims.sid.clone(),
            })
            .await
            .map_err(forward)?;
        tracing::info!(session = %claims.sid, "session ended");
        Ok(Response::new(pb::EndSessionResponse {}))
    }

    async fn list_tools(
        &self,
        req: Request<pb::ListToolsRequest>,
    ) -> Result<Response<pb::ListToolsResponse>, Status> {
        let listing = self.gateway.list_tools(&self.credentials(&req)).await?;
        Ok(Response::new(pb::ListToolsResponse {
            tools: listing
                .tools
                .iter()
                .map(|t| pb::ToolDescription {
                    name: t.spec.name.clone(),
                    description: t.spec.description.clone(),
                    input_schema_json: t.input_schema_json.clone(),
                    risk: t.risk.map(|r| r.as_str().to_owned()).unwrap_or_default(),
                    scopes: t.spec.scopes.clone(),
                })
                .collect(),
            policy_version: listing.policy_version,
        }))
    }

    async fn call_tool(
        &self,
        req: Request<pb::CallToolRequest>,
    ) -> Result<Response<pb::CallToolResponse>, Status> {
        let m = req.get_ref();
        let r = pipeline::Request {
            rpc: "CallTool",
            tool: &m.tool,
            arguments: &m.arguments_json,
            reason: &m.reason,
            trace_id: &m.trace_id,
            no_wait: m.no_wait,
            user: crate::gateway::approve::UserChannel::AgentApi,
        };
        let a = self.gateway.call_tool(&self.credentials(&req), &r).await?;
        Ok(Response::new(pb::CallToolResponse {
            call_id: a.call_id,
            content: a.content,
            content_type: a.content_type,
            upstream_status: u32::from(a.upstream_status),
            is_error: a.upstream_status >= 400,
            redactions: a.redactions,
        }))
    }

    async fn authorize(
        &self,
        req: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let m = req.get_ref();
        let r = pipeline::Request {
            rpc: "Authorize",
            tool: &m.tool,
            arguments: &m.arguments_json,
            reason: &m.reason,
            trace_id: &m.trace_id,
            no_wait: m.no_wait,
            user: crate::gateway::approve::UserChannel::AgentApi,
        };
        let d = self.gateway.authorize(&self.credentials(&req), &r).await?;
        Ok(Response::new(pb::AuthorizeResponse {
            checks: d.passed().map(|s| s.as_str().to_owned()).collect(),
            allowed: d.refusal.is_none(),
            denial: d.refusal.as_ref().map(Refusal::to_proto),
            call_id: d.call_id,
        }))
    }

    async fn ping(
        &self,
        _req: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        Ok(Response::new(pb::PingResponse {}))
    }

    async fn confirm_call(
        &self,
        req: Request<pb::ConfirmCallRequest>,
    ) -> Result<Response<pb::ConfirmCallResponse>, Status> {
        let claims = self.authenticate(&req).await?;
        let r = req.into_inner();
        if r.approval_id.is_empty()
            || r.approval_id.len() > 128
            || r.comment.len() > 1024
            || r.comment.chars().any(char::is_control)
        {
            return Err(status(
                Reason::InvalidArgument,
                "approval_id (1-128 bytes) is required; comment is at most 1024 bytes of printable text",
            ));
        }
        let mut client = self.cp.approval_client()?;
        let decided = client
            .decide_as_user(pb::DecideAsUserRequest {
                id: r.approval_id,
                session_id: claims.sid.clone(),
                approve: r.allow,
                comment: r.comment,
            })
            .await
            .map_err(forward)?
            .into_inner();
        let state = match decided.status() {
            pb::ApprovalStatus::Approved => "approved",
            pb::ApprovalStatus::Denied => "denied",
            _ => "pending",
        };
        Ok(Response::new(pb::ConfirmCallResponse {
            state: state.to_owned(),
        }))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let claims = self.authenticate(&req).await?;
        let snap = self.identity.snapshot();
        let id = snap
            .valid(now_unix())
            .ok_or_else(|| status(Reason::NoIdentity, "no valid certificate"))?;
        let agent_id = match id.spiffe_id.principal() {
            Ok(warden_shared::spiffe::Principal::Agent(a)) => a.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::WhoAmIResponse {
            spiffe_id: id.spiffe_id.to_string(),
            agent_id,
            session_id: claims.sid.clone(),
            scopes: claims.scopes().map(str::to_owned).collect(),
            user_id: claims.user_id().unwrap_or_default().to_owned(),
            token_expires_at: Some(ts(claims.exp)),
            certificate_not_after: Some(ts(id.not_after)),
            certificate_serial: id.serial.clone(),
            max_tool_calls: claims.constraints.max_tool_calls,
            user_verified: claims.user_verified(),
        }))
    }
}
