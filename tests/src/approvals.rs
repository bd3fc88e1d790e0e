//! A mesh set up for approval tests: a policy with high-risk tools (one
//! approval, a quorum of two, a short deadline), an agent allowed all of
//! them, its sidecar holding the policy, and admins to decide.

use std::time::Duration;

use anyhow::Context;
use tonic::transport::Channel;
use warden_control_plane::ctl::{self, CtlConfig};
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::admin_service_client::AdminServiceClient;

use crate::{AgentAuth, AgentClient, Mesh, Sidecar, agent_tcp, apply_policy, eventually};

/// The policy: every tool echoes its arguments once it may run.
pub const POLICY: &str = r##"
version: 1
tools:
  - name: refund
    description: Refunds an order (echoed).
    input_schema:
      type: object
      properties:
        order: { type: string }
        amount: { type: integer }
        card: { type: string, writeOnly: true }
      required: [order, amount]
    scopes: ["payments:refund"]
    risk: high
    upstream: { kind: builtin, address: echo }
  - name: wire
    description: Wires money; two people must approve.
    input_schema: { type: object, properties: { to: { type: string } } }
    scopes: ["payments:refund"]
    risk: high
    approval: { approvals: 2 }
    upstream: { kind: builtin, address: echo }
  - name: quick
    description: A decision is due within 30 seconds.
    input_schema: { type: object, properties: { n: { type: integer } } }
    scopes: ["payments:refund"]
    risk: high
    approval: { deadline: 30s }
    upstream: { kind: builtin, address: echo }
  - name: transfer
    description: Moves money; the end user confirms each call.
    input_schema: { type: object, properties: { order: { type: string } } }
    scopes: ["payments:refund"]
    risk: high
    approval: { by: user }
    upstream: { kind: builtin, address: echo }
  - name: echo
    description: Low risk, never waits.
    input_schema: { type: object }
    scopes: ["payments:refund"]
    risk: low
    upstream: { kind: builtin, address: echo }
cedar: |
  permit (principal, action, resource);
privileged_scopes:
  "payments:admin": { approvals: 1, deadline: 2m }
"##;

/// The approval test setup: agent `a1` and its sidecar.
#[derive(Debug)]
pub struct ApprovalMesh {
    /// The control plane.
    pub mesh: Mesh,
    /// `a1`'s sidecar.
    pub sidecar: Sidecar,
}

impl ApprovalMesh {
    /// Starts the control plane with [`POLICY`] and `a1`'s sidecar.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(Mesh::start().await?).await
    }

    /// [`ApprovalMesh::start`] on a control plane already started.
    pub async fn start_on(mesh: Mesh) -> anyhow::Result<Self> {
        let mut admin = mesh.admin().await?;
        admin.apply_policy(apply_policy(POLICY)).await?;
        admin
            .register_agent(pb::RegisterAgentRequest {
                id: "a1".into(),
                agent_type: "payments-bot".into(),
                owner: "team".into(),
                max_concurrent_sessions: 64,
                allowed_scopes: vec!["payments:refund".into(), "payments:admin".into()],
                ..Default::default()
            })
            .await?;
        let token = mesh.join_token("a1").await?;
        let sidecar = warden_sidecar::app::start(mesh.sidecar_config("a1", Some(token))).await?;
        let held = eventually(Duration::from_secs(10), || async {
            sidecar.auth.state().held().policy.is_some()
        })
        .await;
        anyhow::ensure!(held, "the sidecar received no policy");
        Ok(Self { mesh, sidecar })
    }

    /// A new session and an agent client carrying its token.
    pub async fn session(&self) -> anyhow::Result<(pb::StartSessionResponse, AgentClient)> {
        let mut c = agent_tcp(&self.sidecar, AgentAuth::default()).await?;
        let s = c
            .start_session(pb::StartSessionRequest {
                scopes: vec!["payments:refund".into()],
                ..Default::default()
            })
            .await
            .context("start session")?
            .into_inner();
        let client = crate::with_token(&self.sidecar, &s.token).await?;
        Ok((s, client))
    }

    /// An admin client for another person, `name`.
    pub async fn other_admin(&self, name: &str) -> anyhow::Result<AdminServiceClient<Channel>> {
        let out = self.mesh.dir.path().join(format!("admin-{name}"));
        let state = &self.mesh.cp.state;
        warden_control_plane::init::issue_admin(
            &state.ca,
            name,
            Duration::from_secs(3600),
            &out,
            &state.config,
        )?;
        let cfg = CtlConfig::from_dir(&out, Some(self.mesh.url()))?;
        ctl::connect(&cfg).await
    }

    /// Waits until `n` requests are pending; returns them.
    pub async fn pending(&self, n: usize) -> anyhow::Result<Vec<pb::Approval>> {
        let mut admin = self.mesh.admin().await?;
        let end = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let listed = admin
                .list_approvals(pb::ListApprovalsRequest {
                    state: "pending".into(),
                    limit: 1000,
                })
                .await?
                .into_inner()
                .approvals;
            if listed.len() >= n {
                return Ok(listed);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < end,
                "{} requests pending, not {n}",
                listed.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A `CallTool` request.
pub fn call(tool: &str, args: &str, no_wait: bool) -> pb::CallToolRequest {
    pb::CallToolRequest {
        tool: tool.into(),
        arguments_json: args.into(),
        reason: "the customer asked".into(),
        trace_id: "trace-approval".into(),
        no_wait,
    }
}

/// A decision.
pub fn decide(id: &str, approve: bool, comment: &str) -> pb::DecideApprovalRequest {
    pb::DecideApprovalRequest {
        id: id.into(),
        approve,
        comment: comment.into(),
    }
}
