//! The agent-facing gRPC API (`warden.v1.AgentService`), on loopback TCP and
//! a Unix socket. Every request must carry `warden-agent: true`.

use std::sync::Arc;
use std::time::Instant;

use tonic::service::Interceptor;
use tonic::{Request, Response, Status};
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::agent_service_server::AgentService;
use warden_shared::refusal::{Reason, status};
use warden_shared::token::{self, Claims};
use warden_shared::{AGENT_HEADER, AGENT_HEADER_VALUE};

use crate::cp::ControlPlane;
use crate::gateway::Refusal;
use crate::gateway::authenticate::{self, Authenticator, auth_denial, auth_status, bearer};
use crate::gateway::pipeline::{self, Gateway};
use crate::identity::rotation::Manager;
use crate::now_unix;
use crate::state::held::Held;

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

    /// Fetches the JWKS from the control plane into the held state.
    pub async fn refresh_jwks(&self) -> Result<(), Status> {
        let mut client = self.cp.identity_client()?;
        let r = client.get_jwks(pb::GetJwksRequest {}).await?.into_inner();
        let set: token::JwkSet = serde_json::from_str(&r.jwks_json).map_err(|_| {
            status(
                Reason::ControlPlaneUnavailable,
                "control plane sent an invalid JWKS",
            )
        })?;
        // Installing takes the snapshot writer's lock, which a policy
        // compile may hold for a while: off the runtime.
        let auth = Arc::clone(&self.auth);
        tokio::task::spawn_blocking(move || auth.state().set_jwks(&set))
            .await
            .map_err(|_| status(Reason::Internal, "installing the JWKS panicked"))?
            .map_err(|e| {
                status(
                    Reason::ControlPlaneUnavailable,
                    format!("invalid JWKS: {e}"),
                )
            })
    }

    /// Authenticates the request's bearer token, refreshing the JWKS once
    /// (rate-limited) if the token names an unknown key.
    pub async fn authenticate<T>(&self, req: &Request<T>) -> Result<Arc<Claims>, Refusal> {
        self.authenticate_held(req).await.map(|(claims, _)| claims)
    }

    /// [`AgentApi::authenticate`], with the snapshot of what is held that
    /// the token was verified against (the one the call goes on with).
    pub async fn authenticate_held<T>(
        &self,
        req: &Request<T>,
    ) -> Result<(Arc<Claims>, Arc<Held>), Refusal> {
        let token = bearer(req)?;
        let snap = self.identity.snapshot();
        match self.auth.verify_held(token, &snap, now_unix()) {
            Err(authenticate::Error::Token(token::Error::UnknownKey(_)))
                if self.auth.may_refresh() =>
            {
                if let Err(e) = self.refresh_jwks().await {
                    tracing::warn!(error = %e.message(), "JWKS refresh failed");
                }
                self.auth
                    .verify_held(token, &snap, now_unix())
                    .map_err(|e| auth_denial(&e))
            }
            r => r.map_err(|e| {
                tracing::info!(error = %e, "token refused");
                auth_denial(&e)
            }),
        }
    }

    /// Verifies `token` against what is held now (no JWKS refresh): for
    /// long-lived streams that check their session again.
    pub fn check_token(&self, token: &str) -> Result<Arc<Claims>, Refusal> {
        self.auth
            .verify(token, &self.identity.snapshot(), now_unix())
            .map_err(|e| auth_denial(&e))
    }

    /// Authenticates, recording a refusal as a gateway decision.
    async fn gateway_caller<T>(
        &self,
        req: &Request<T>,
        r: &pipeline::Request<'_>,
        t0: Instant,
    ) -> Result<(Arc<Claims>, Arc<Held>), Status> {
        self.authenticate_held(req).await.map_err(|d| {
            self.gateway.refused_unauthenticated(r, &d, t0);
            d.to_status()
        })
    }
}

fn forward(s: Status) -> Status {
    // A refusal from the control plane carries its own code, message and
    // reason, written for the caller: pass it on. Anything without a reason
    // is a transport failure between sidecar and control plane.
    if warden_shared::refusal::reason_of(&s).is_some() {
        return s;
    }
    tracing::warn!(code = ?s.code(), error = %s.message(), "control plane call failed");
    status(
        Reason::ControlPlaneUnavailable,
        "the control plane is unreachable; retry later",
    )
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn start_session(
        &self,
        req: Request<pb::StartSessionRequest>,
    ) -> Result<Response<pb::StartSessionResponse>, Status> {
        // An expiry or a revocation is final: refuse without asking. (A
        // suspension is left to the control plane, which also knows about a
        // resume that has not reached this sidecar yet.)
        let held = self.auth.state().held();
        if let Some(e) = held.expires_at.filter(|e| *e <= now_unix()) {
            return Err(auth_status(&authenticate::Error::AgentExpired(e)));
        }
        if let Some((true, reason)) = held.blocked.clone() {
            return Err(auth_status(&authenticate::Error::AgentBlocked {
                revoked: true,
                reason,
            }));
        }
        let mut client = self.cp.identity_client()?;
        let r = req.into_inner();
        let resp = client
            .issue_token(pb::IssueTokenRequest {
                scopes: r.scopes,
                user_id: r.user_id,
                context: r.context,
                max_tool_calls: r.max_tool_calls,
            })
            .await
            .map_err(forward)?
            .into_inner();
        tracing::info!(session = %resp.session_id, scopes = ?resp.scopes, "session started");
        Ok(Response::new(pb::StartSessionResponse {
            token: resp.token,
            session_id: resp.session_id,
            scopes: resp.scopes,
            expires_at: resp.expires_at,
        }))
    }

    async fn end_session(
        &self,
        req: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::EndSessionResponse>, Status> {
        let claims = self.authenticate(&req).await.map_err(|d| d.to_status())?;
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
        let (claims, held) = self
            .authenticate_held(&req)
            .await
            .map_err(|d| d.to_status())?;
        Ok(Response::new(self.gateway.list_tools(&held, &claims)))
    }

    async fn call_tool(
        &self,
        req: Request<pb::CallToolRequest>,
    ) -> Result<Response<pb::CallToolResponse>, Status> {
        let t0 = Instant::now();
        let m = req.get_ref();
        let r = pipeline::Request {
            rpc: "CallTool",
            tool: &m.tool,
            arguments: &m.arguments_json,
            reason: &m.reason,
            trace_id: &m.trace_id,
        };
        let (claims, held) = self.gateway_caller(&req, &r, t0).await?;
        self.gateway
            .call_tool(&held, &claims, &r, t0)
            .await
            .map(Response::new)
            .map_err(|d| d.to_status())
    }

    async fn authorize(
        &self,
        req: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let t0 = Instant::now();
        let m = req.get_ref();
        let r = pipeline::Request {
            rpc: "Authorize",
            tool: &m.tool,
            arguments: &m.arguments_json,
            reason: &m.reason,
            trace_id: &m.trace_id,
        };
        let (claims, held) = self.gateway_caller(&req, &r, t0).await?;
        Ok(Response::new(
            self.gateway.authorize(&held, &claims, &r, t0).await,
        ))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let claims = self.authenticate(&req).await.map_err(|d| d.to_status())?;
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
        }))
    }
}
