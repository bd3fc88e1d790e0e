//! A mesh set up for tool-gateway tests: a policy whose tools cover every
//! stage (builtins, a secret-backed HTTP upstream, slow, huge and failing
//! upstreams, Cedar rules, risk levels, limits), a real upstream server,
//! and one enrolled sidecar holding that policy.

use std::time::Duration;

use anyhow::Context;
use warden_shared::proto::v1 as pb;

use crate::upstream::{Upstream, reserve_port};
use crate::{AgentAuth, AgentClient, Mesh, Sidecar, agent_tcp, apply_policy, eventually};

/// The policy; `{UPSTREAM}`, `{DOWN}` and `{SECRET_FILE}` are filled in.
pub const POLICY: &str = r##"
version: 1
secrets:
  upstream_key: "file:{SECRET_FILE}"
tools:
  - name: echo
    description: Returns its arguments.
    input_schema:
      type: object
      properties:
        text: { type: string, maxLength: 100 }
        n: { type: integer }
        nested: { type: array }
      required: [text]
      additionalProperties: false
    scopes: ["echo:call"]
    risk: low
    upstream: { kind: builtin, address: echo }
    limits: { calls_per_minute: 1000, max_argument_bytes: 2048 }
  - name: limited
    description: Echo, three calls per minute.
    input_schema: { type: object }
    scopes: ["echo:call"]
    risk: low
    upstream: { kind: builtin, address: echo }
    limits: { calls_per_minute: 3 }
  - name: clock
    description: The time.
    input_schema: { type: object, properties: {}, additionalProperties: false }
    scopes: ["time:read"]
    risk: low
    upstream: { kind: builtin, address: clock }
  - name: send_email
    description: Sends an email (echoed).
    input_schema:
      type: object
      properties:
        to: { type: string, format: email }
        subject: { type: string }
      required: [to, subject]
    scopes: ["mail:send"]
    risk: medium
    upstream: { kind: builtin, address: echo }
  - name: lookup
    description: Looks a record up upstream, with a secret the agent never sees.
    input_schema:
      type: object
      properties: { id: { type: string, maxLength: 64 } }
      required: [id]
    scopes: ["crm:read"]
    risk: low
    upstream:
      kind: http
      address: "{UPSTREAM}/echo/{id}"
      method: GET
      headers: { Authorization: "Bearer ${secret:upstream_key}" }
    secrets: [upstream_key]
  - name: post_note
    description: Posts a note upstream; the key goes in the body.
    input_schema:
      type: object
      properties: { note: { type: string } }
      required: [note]
    scopes: ["crm:write"]
    risk: medium
    upstream:
      kind: http
      address: "{UPSTREAM}/echo/notes"
      method: POST
      body_fields: { api_key: "${secret:upstream_key}" }
    secrets: [upstream_key]
  - name: slow
    description: An upstream that takes a second.
    input_schema: { type: object }
    scopes: ["crm:read"]
    risk: low
    upstream: { kind: http, address: "{UPSTREAM}/slow?ms=1000", method: GET }
    limits: { timeout_ms: 200 }
  - name: big
    description: An upstream that answers 1 MiB.
    input_schema: { type: object }
    scopes: ["crm:read"]
    risk: low
    upstream: { kind: http, address: "{UPSTREAM}/big?bytes=1048576", method: GET, max_response_bytes: 4096 }
  - name: flaky
    description: An upstream that is down until a test starts it.
    input_schema: { type: object }
    scopes: ["crm:read"]
    risk: low
    upstream:
      kind: http
      address: "http://127.0.0.1:{DOWN}/echo/ok"
      method: GET
      circuit_breaker: { failures: 2, cooldown_ms: 300 }
  - name: refund
    description: High risk.
    input_schema: { type: object }
    scopes: ["payments:refund"]
    risk: high
    upstream: { kind: builtin, address: echo }
  - name: transfer
    description: Moves money; the end user confirms each call.
    input_schema:
      type: object
      properties:
        order: { type: string }
        card: { type: string, writeOnly: true }
      required: [order]
    scopes: ["payments:refund"]
    risk: high
    approval: { by: user, deadline: 1m }
    upstream: { kind: builtin, address: echo }
  - name: delete_repo
    description: Critical.
    input_schema: { type: object }
    scopes: ["repo:admin"]
    risk: critical
    upstream: { kind: builtin, address: echo }
  - name: shell
    description: Denied to the test agent by its identity.
    input_schema: { type: object }
    scopes: ["echo:call"]
    risk: low
    upstream: { kind: builtin, address: echo }
  - name: calc
    description: Echoes an integer; a rule multiplies it.
    input_schema:
      type: object
      properties: { n: { type: integer } }
      required: [n]
    scopes: ["echo:call"]
    risk: low
    upstream: { kind: builtin, address: echo }
  - name: fetch_doc
    description: Fetches a document by path segment.
    input_schema:
      type: object
      properties: { doc: { type: string } }
      required: [doc]
    scopes: ["crm:read"]
    risk: low
    upstream: { kind: http, address: "{UPSTREAM}/echo/docs/{doc}/raw", method: GET }
  - name: gzip
    description: An upstream that answers compressed.
    input_schema: { type: object }
    scopes: ["crm:read"]
    risk: low
    upstream: { kind: http, address: "{UPSTREAM}/gzip", method: GET }
  - name: notify
    description: Notifies by email or SMS (echoed); each channel declares its own fields.
    input_schema:
      type: object
      properties: { channel: { type: string } }
      required: [channel]
      oneOf:
        - properties: { channel: { const: email }, to: { type: string } }
          required: [to]
        - properties:
            channel: { const: sms }
            phone: { type: string }
            options: { $ref: "#/$defs/options" }
          required: [phone]
      $defs:
        options: { type: object, properties: { flash: { type: boolean } } }
    scopes: ["mail:send"]
    risk: low
    upstream: { kind: builtin, address: echo }
  - name: no_upstream
    description: Declared without an upstream.
    input_schema: { type: object }
    scopes: ["echo:call"]
    risk: low
cedar: |
  permit (principal, action, resource);
  @id("mail-stays-internal")
  forbid (principal, action == Warden::Action::"send_email", resource)
  unless { context.arguments.to like "*@example.com" };
  @id("overflow-guard")
  forbid (principal, action == Warden::Action::"calc", resource)
  when { context.arguments.n * 4611686018427387904 > 1 };
  @id("no-premium-numbers")
  forbid (principal, action == Warden::Action::"notify", resource)
  when { context.arguments has phone && context.arguments.phone like "+1900*" };
  @id("free-tier-no-email")
  forbid (principal, action == Warden::Action::"send_email", resource)
  when { context has tier && context.tier == "free" };
"##;

/// Every scope the policy's tools need.
pub const ALL_SCOPES: [&str; 7] = [
    "echo:call",
    "time:read",
    "mail:send",
    "crm:read",
    "crm:write",
    "payments:refund",
    "repo:admin",
];

/// The gateway test setup.
#[derive(Debug)]
pub struct GatewayMesh {
    /// The control plane.
    pub mesh: Mesh,
    /// The agent `a1`'s sidecar.
    pub sidecar: Sidecar,
    /// The upstream server.
    pub upstream: Upstream,
    /// A port nothing listens on until a test starts an upstream there.
    pub down_port: u16,
    /// The socket holding `down_port` (see [`GatewayMesh::bring_up`]).
    down: std::sync::Mutex<Option<tokio::net::TcpSocket>>,
    /// The secret the `lookup` and `post_note` upstreams receive.
    pub secret: String,
}

impl GatewayMesh {
    /// Starts everything; agent `a1` may have every scope but is denied `shell`.
    pub async fn start() -> anyhow::Result<Self> {
        let mesh = Mesh::start().await?;
        let upstream = Upstream::start().await?;
        let (down, down_port) = reserve_port()?;
        let secret = format!("sk-test-{}", crate::rand_suffix());
        let secret_file = mesh.dir.path().join("upstream-key");
        std::fs::write(&secret_file, format!("{secret}\n"))?;
        let doc = POLICY
            .replace("{UPSTREAM}", &upstream.url())
            .replace("{DOWN}", &down_port.to_string())
            .replace("{SECRET_FILE}", &secret_file.display().to_string());
        let mut admin = mesh.admin().await?;
        admin.apply_policy(apply_policy(&doc)).await?;
        admin
            .register_agent(pb::RegisterAgentRequest {
                id: "a1".into(),
                agent_type: "support-bot".into(),
                owner: "team".into(),
                max_concurrent_sessions: 16,
                allowed_scopes: ALL_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
                denied_tools: vec!["shell".into()],
                ..Default::default()
            })
            .await?;
        let token = mesh.join_token("a1").await?;
        let mut config = mesh.sidecar_config("a1", Some(token));
        // The MCP front door too, on a port of its own.
        config.mcp_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        let sidecar = warden_sidecar::app::start(config).await?;
        let held = eventually(Duration::from_secs(10), || async {
            sidecar.auth.state().held().policy.is_some()
        })
        .await;
        anyhow::ensure!(held, "the sidecar received no policy");
        Ok(Self {
            mesh,
            sidecar,
            upstream,
            down_port,
            down: std::sync::Mutex::new(Some(down)),
            secret,
        })
    }

    /// Starts an upstream on `down_port`.
    pub fn bring_up(&self) -> anyhow::Result<Upstream> {
        let socket = self
            .down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .context("already up")?;
        Upstream::start_reserved(socket)
    }

    /// A session with `scopes` (and a tool-call cap, 0 for none), and an
    /// agent client carrying its token.
    pub async fn session(
        &self,
        scopes: &[&str],
        max_tool_calls: u32,
        context: &[(&str, &str)],
    ) -> anyhow::Result<(pb::StartSessionResponse, AgentClient)> {
        let mut c = agent_tcp(&self.sidecar, AgentAuth::default()).await?;
        let s = c
            .start_session(pb::StartSessionRequest {
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                max_tool_calls,
                context: context
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                ..Default::default()
            })
            .await
            .context("start session")?
            .into_inner();
        let client = crate::with_token(&self.sidecar, &s.token).await?;
        Ok((s, client))
    }
}

/// A `CallTool` request.
pub fn call(tool: &str, args: &str) -> pb::CallToolRequest {
    pb::CallToolRequest {
        tool: tool.into(),
        arguments_json: args.into(),
        reason: "test".into(),
        trace_id: "trace-1".into(),
        no_wait: false,
    }
}

/// An `Authorize` request.
pub fn authorize(tool: &str, args: &str) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        tool: tool.into(),
        arguments_json: args.into(),
        reason: "test".into(),
        trace_id: String::new(),
        no_wait: false,
    }
}

/// The stage and rule a gateway refusal names.
pub fn stage_rule(s: &tonic::Status) -> (String, String) {
    let m = warden_shared::refusal::metadata_of(s);
    (
        m.get("stage").cloned().unwrap_or_default(),
        m.get("rule").cloned().unwrap_or_default(),
    )
}
