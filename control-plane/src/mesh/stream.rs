//! `warden.v1.MeshService/Stream`: after the sidecar's `Hello`, the control
//! plane pushes the complete state that concerns its agent — the agent's
//! status, its revoked sessions, the signing keys — and pushes again
//! whenever that state changes (the generation in [`State`] is bumped by
//! every admin change). Each push carries a version and a nonce that the
//! sidecar echoes in its Ack or Nack. A revoked agent gets a last push
//! saying so, then the stream ends; a revoked agent cannot open one.

use std::pin::Pin;
use std::sync::Arc;

use base64::Engine;
use rand::RngCore;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument;
use warden_shared::agent::{AgentId, AgentStatus};
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::mesh_service_server::MeshService;
use warden_shared::refusal::{Reason, status};

use crate::app::State;
use crate::auth;
use crate::identity::service::store_error;
use crate::{now_unix, timestamp};

/// Pushes waiting to be written to one stream.
const OUTBOUND: usize = 4;

/// The mesh service.
#[derive(Debug, Clone)]
pub struct MeshApi {
    state: Arc<State>,
}

impl MeshApi {
    /// Wraps the shared state.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

/// What one agent's sidecar is told; pushed again only when it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct View {
    status: AgentStatus,
    reason: String,
    revoked: Vec<(String, i64)>,
    jwks: String,
    policy: Option<(u64, Arc<str>)>,
    tools: Vec<(String, &'static str)>,
}

async fn view(state: &State, agent: &AgentId) -> Result<View, Status> {
    let now = now_unix();
    let a = state
        .store
        .get_agent(agent)
        .await
        .map_err(store_error)?
        .ok_or_else(|| {
            status(
                Code::PermissionDenied,
                Reason::AgentUnknown,
                format!("agent {agent} is not registered"),
            )
        })?;
    // An expired identity is refused like a revoked one.
    let expired = a.expires_at.is_some_and(|e| e <= now);
    let (status, reason) = if expired && a.status == AgentStatus::Active {
        (AgentStatus::Revoked, "identity expired".to_owned())
    } else {
        (a.status, a.status_reason)
    };
    let revoked = state
        .store
        .revoked_sessions(agent, now)
        .await
        .map_err(store_error)?;
    let (policy, tools) = match state.current_policy() {
        Some(p) => {
            let tools = p
                .document
                .tools_for(
                    a.id.as_str(),
                    &a.agent_type,
                    &a.allowed_tools,
                    &a.denied_tools,
                )
                .into_iter()
                .map(|(name, risk)| (name, risk.as_str()))
                .collect();
            (Some((p.version, Arc::from(p.text.as_str()))), tools)
        }
        None => (None, Vec::new()),
    };
    Ok(View {
        status,
        reason,
        revoked,
        jwks: state.keys.current().jwks_json.clone(),
        policy,
        tools,
    })
}

fn nonce() -> String {
    let mut b = [0u8; 12];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn push(version: u64, v: &View) -> pb::StreamResponse {
    pb::StreamResponse {
        version,
        nonce: nonce(),
        agent_status: pb::AgentStatus::from(v.status).into(),
        agent_status_reason: v.reason.clone(),
        revoked_sessions: v
            .revoked
            .iter()
            .map(|(id, exp)| pb::RevokedSession {
                session_id: id.clone(),
                expires_at: Some(timestamp(*exp)),
            })
            .collect(),
        jwks_json: v.jwks.clone(),
        policy_version: v.policy.as_ref().map_or(0, |p| p.0),
        policy_document: v
            .policy
            .as_ref()
            .map(|p| p.1.to_string())
            .unwrap_or_default(),
        tools: v
            .tools
            .iter()
            .map(|(name, risk)| pb::EffectiveTool {
                name: name.clone(),
                risk: (*risk).to_owned(),
            })
            .collect(),
    }
}

type PushStream = Pin<Box<dyn Stream<Item = Result<pb::StreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl MeshService for MeshApi {
    type StreamStream = PushStream;

    async fn stream(
        &self,
        req: Request<Streaming<pb::StreamRequest>>,
    ) -> Result<Response<PushStream>, Status> {
        let (_, agent) = auth::agent(&req, &self.state.td)?;
        let first = view(&self.state, &agent).await?;
        if first.status == AgentStatus::Revoked {
            return Err(status(
                Code::PermissionDenied,
                Reason::AgentRevoked,
                format!("agent {agent} is revoked: {}", first.reason),
            ));
        }
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let mut inbound = req.into_inner();
        let held = match inbound.message().await? {
            Some(pb::StreamRequest {
                kind: Some(pb::stream_request::Kind::Hello(h)),
            }) => h.held_version,
            _ => {
                return Err(status(
                    Code::InvalidArgument,
                    Reason::InvalidArgument,
                    "the first message must be Hello",
                ));
            }
        };
        let (tx, rx) = mpsc::channel(OUTBOUND);
        let state = Arc::clone(&self.state);
        let span = tracing::info_span!("mesh_stream", agent = %agent);
        tokio::spawn(
            async move {
                tracing::info!(held, "sidecar stream opened");
                let reg = state.sidecars.open(agent.clone(), peer, now_unix());
                let ending = serve(Arc::clone(&state), agent, inbound, tx, &reg).await;
                state.sidecars.ended(ending);
                tracing::info!(ending, "sidecar stream ended");
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Runs one stream; returns why it ended.
async fn serve(
    state: Arc<State>,
    agent: AgentId,
    mut inbound: Streaming<pb::StreamRequest>,
    tx: mpsc::Sender<Result<pb::StreamResponse, Status>>,
    reg: &crate::mesh::registry::Registration,
) -> &'static str {
    // Subscribe before reading the state, so no change can fall between.
    let mut changes = state.changes.subscribe();
    let mut stopping = state.stopping.subscribe();
    let mut sent: Option<View> = None;
    loop {
        let version = *state.generation.borrow();
        let current = match view(&state, &agent).await {
            Ok(v) => v,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return "error";
            }
        };
        if sent.as_ref() != Some(&current) {
            if tx.send(Ok(push(version, &current))).await.is_err() {
                return "sidecar gone";
            }
            reg.pushed(version, now_unix());
            sent = Some(current.clone());
        }
        if current.status == AgentStatus::Revoked {
            return "agent revoked";
        }
        // Wait for a change that concerns this agent; acknowledgements are
        // recorded without re-reading any state.
        'wait: loop {
            tokio::select! {
                // (The guard `wait_for` returns must not live across the awaits below.)
                _ = async { let _ = stopping.wait_for(|s| *s).await; } => return "control plane stopping",
                change = changes.recv() => match change {
                    // Someone else's change: nothing to push here.
                    Ok(c) if c.agent.as_ref().is_some_and(|a| *a != agent) => continue 'wait,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break 'wait,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return "control plane stopping",
                },
                msg = inbound.message() => match msg {
                    Ok(Some(pb::StreamRequest { kind: Some(pb::stream_request::Kind::Ack(a)) })) => {
                        tracing::debug!(version = a.version, "push acknowledged");
                        reg.acked(a.version, now_unix());
                    }
                    Ok(Some(pb::StreamRequest { kind: Some(pb::stream_request::Kind::Nack(n)) })) => {
                        tracing::warn!(version = n.version, reason = %n.reason, "push refused by the sidecar");
                        reg.nacked(n.version, n.reason.chars().take(512).collect());
                    }
                    Ok(Some(_)) => {
                        let _ = tx
                            .send(Err(status(Code::InvalidArgument, Reason::InvalidArgument, "unexpected message")))
                            .await;
                        return "protocol error";
                    }
                    Ok(None) => return "closed by the sidecar",
                    Err(_) => return "transport error",
                },
            }
        }
    }
}
