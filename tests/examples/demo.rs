//! The Warden walkthrough: real processes on this machine, in a temporary
//! directory, cleaned up at the end. Run it with `./deploy/demo.sh`.
//!
//! It starts a control plane and two sidecars, registers and enrolls agents,
//! opens a session as an agent would, shows the token and the certificate
//! identity, applies a policy and calls tools through the sidecar's gateway
//! (a secret-backed HTTP upstream the agent never holds the key of), then
//! shows each refusal failing with its reason.

#![allow(clippy::unwrap_used, reason = "a demo stops at the first surprise")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tonic::Status;
use warden_control_plane::identity::ca::Ca;
use warden_shared::agent::AgentId;
use warden_shared::proto::v1 as pb;
use warden_shared::spiffe::TrustDomain;
use warden_shared::token::Claims;
use warden_sidecar::identity::enroll::key_and_csr;
use warden_tests::{AgentAuth, agent_unix, eventually, http_get, jwt_payload, reason};

const TD: &str = "demo.warden";

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn step(title: &str) {
    println!("\n\x1b[1m▶ {title}\x1b[0m");
}

fn refused<T: std::fmt::Debug>(case: &str, r: Result<T, Status>) {
    match r {
        Ok(v) => panic!("{case}: expected a refusal, got {v:?}"),
        Err(s) => {
            let meta = warden_shared::refusal::metadata_of(&s);
            let at = match (meta.get("stage"), meta.get("rule")) {
                (Some(st), Some(r)) => format!(" [{st}: {r}]"),
                (Some(st), None) => format!(" [{st}]"),
                _ => String::new(),
            };
            println!(
                "  ✗ {case:<44} {:?} {}{at} — {}",
                s.code(),
                reason(&s),
                s.message()
            )
        }
    }
}

struct Demo {
    bin: PathBuf,
    dir: PathBuf,
    cp_addr: SocketAddr,
}

impl Demo {
    fn ctl(&self, args: &[&str]) -> Result<String, String> {
        println!("  $ wardenctl {}", args.join(" "));
        let o = Command::new(self.bin.join("wardenctl"))
            .arg("--config-dir")
            .arg(self.dir.join("cp/admin"))
            .args(args)
            .output()
            .unwrap();
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        );
        if o.status.success() {
            Ok(out)
        } else {
            Err(err)
        }
    }

    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self
            .ctl(args)
            .unwrap_or_else(|e| panic!("wardenctl failed: {e}"));
        for l in out.lines() {
            println!("    {l}");
        }
        out
    }

    fn sidecar(
        &self,
        agent: &str,
        join_token: &str,
        messaging: &[&str],
    ) -> (Child, PathBuf, SocketAddr) {
        let data = self.dir.join(format!("sidecar-{agent}"));
        let health = free_addr();
        let log = std::fs::File::create(self.dir.join(format!("sidecar-{agent}.log"))).unwrap();
        let child = Command::new(self.bin.join("warden-sidecar"))
            .args([
                "--control-plane",
                &format!("https://localhost:{}", self.cp_addr.port()),
            ])
            .arg("--ca-bundle")
            .arg(self.dir.join("cp/admin/ca.crt"))
            .args(["--agent-id", agent, "--trust-domain", TD])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen",
                &free_addr().to_string(),
                "--health-listen",
                &health.to_string(),
            ])
            .args(messaging)
            .env("WARDEN_JOIN_TOKEN", join_token)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        (child, data, health)
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.cp_addr.port())
    }

    async fn anonymous(
        &self,
    ) -> warden_shared::proto::v1::identity_service_client::IdentityServiceClient<
        tonic::transport::Channel,
    > {
        let ca = std::fs::read_to_string(self.dir.join("cp/admin/ca.crt")).unwrap();
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca));
        let ch = tonic::transport::Endpoint::from_shared(self.url())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        warden_shared::proto::v1::identity_service_client::IdentityServiceClient::new(ch)
    }

    async fn mtls(
        &self,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<tonic::transport::Channel, Status> {
        let ca = std::fs::read_to_string(self.dir.join("cp/admin/ca.crt")).unwrap();
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
        tonic::transport::Endpoint::from_shared(self.url())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .map_err(|e| {
                Status::unavailable(format!("TLS handshake refused: {}", source_chain(&e)))
            })
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s = format!("{s}: {c}");
        cur = c.source();
    }
    s
}

fn spiffe(agent: &str) -> warden_shared::spiffe::SpiffeId {
    TrustDomain::new(TD)
        .unwrap()
        .agent(&AgentId::new(agent).unwrap())
}

fn session_req(scopes: &[&str]) -> pb::StartSessionRequest {
    pb::StartSessionRequest {
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

async fn wait_ready(health: SocketAddr, what: &str) {
    let ok = eventually(Duration::from_secs(20), || async {
        http_get(health, "/readyz").await.is_ok_and(|r| r.0 == 200)
    })
    .await;
    assert!(ok, "{what} did not become ready");
}

#[tokio::main]
async fn main() {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().to_owned();
    for b in ["warden-control-plane", "wardenctl", "warden-sidecar"] {
        assert!(
            bin.join(b).exists(),
            "{} is not built; run ./deploy/demo.sh",
            bin.join(b).display()
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let mut procs = Procs(Vec::new());
    let cp_addr = free_addr();
    let demo = Demo {
        bin: bin.clone(),
        dir: dir.clone(),
        cp_addr,
    };
    println!(
        "Warden demo — everything lives in {} and is removed at the end",
        dir.display()
    );

    step("1. Initialise the control plane: a CA, a config, the first admin credential");
    let jwks_addr = free_addr();
    let o = Command::new(bin.join("warden-control-plane"))
        .args([
            "init",
            "--trust-domain",
            TD,
            "--listen",
            &cp_addr.to_string(),
            "--jwks-listen",
            &jwks_addr.to_string(),
            "--oauth-listen",
            &free_addr().to_string(),
            "--data-dir",
        ])
        .arg(dir.join("cp"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    print!(
        "{}",
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    let log = std::fs::File::create(dir.join("control-plane.log")).unwrap();
    procs.0.push(
        Command::new(bin.join("warden-control-plane"))
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.join("cp"))
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let up = eventually(Duration::from_secs(20), || async {
        demo.ctl(&["agents", "list"]).is_ok()
    })
    .await;
    assert!(
        up,
        "control plane did not start; see {}/control-plane.log",
        dir.display()
    );
    println!(
        "    control plane serving gRPC (mTLS) on {cp_addr}, JWKS on http://{jwks_addr}/.well-known/jwks.json"
    );

    step("2. Register two agents (non-human identities) and create join tokens");
    demo.ctl_ok(&[
        "agents",
        "register",
        "coder-1",
        "--type",
        "coder",
        "--owner",
        "platform-team",
        "--environment",
        "dev",
        "--scope",
        "repo:read",
        "--scope",
        "repo:write:*",
        "--scope",
        "tickets:read",
        "--deny-tool",
        "shell",
        "--max-sessions",
        "2",
    ]);
    demo.ctl_ok(&[
        "agents",
        "register",
        "reviewer-1",
        "--type",
        "reviewer",
        "--owner",
        "platform-team",
        "--scope",
        "repo:read",
    ]);
    let coder_token = demo
        .ctl_ok(&["join-token", "create", "coder-1"])
        .trim()
        .to_owned();
    let reviewer_token = demo
        .ctl_ok(&["join-token", "create", "reviewer-1"])
        .trim()
        .to_owned();

    step(
        "3. Start a sidecar per agent: each generates its key locally and enrolls with its join token",
    );
    // The reviewer's sidecar takes messages on its own mTLS port; the
    // coder's sidecar is told where that is.
    let reviewer_inbox = free_addr().to_string();
    let peer = format!("reviewer-1={reviewer_inbox}");
    // The coder's sidecar also serves MCP, for MCP clients.
    let mcp_addr = free_addr();
    let (c1, coder_dir, coder_health) = demo.sidecar(
        "coder-1",
        &coder_token,
        &[
            "--messaging-peer",
            &peer,
            "--mcp-listen",
            &mcp_addr.to_string(),
        ],
    );
    procs.0.push(c1);
    let (c2, reviewer_dir, reviewer_health) = demo.sidecar(
        "reviewer-1",
        &reviewer_token,
        &["--messaging-listen", &reviewer_inbox],
    );
    procs.0.push(c2);
    wait_ready(coder_health, "coder-1's sidecar").await;
    wait_ready(reviewer_health, "reviewer-1's sidecar").await;
    let (_, body) = http_get(coder_health, "/readyz").await.unwrap();
    println!("    GET /readyz → {body}");

    step("4. As the agent: open a session over the sidecar's Unix socket");
    let sock = coder_dir.join("agent.sock");
    let mut agent = agent_unix(&sock, AgentAuth::default()).await.unwrap();
    let s = agent
        .start_session(pb::StartSessionRequest {
            scopes: vec![
                "repo:read".into(),
                "repo:write:warden".into(),
                "tickets:read".into(),
                "payments:send".into(),
            ],
            user_id: "usr_alice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    println!("    asked for  repo:read repo:write:warden tickets:read payments:send");
    println!(
        "    granted    {}   (requested ∩ allowed; payments:send dropped)",
        s.scopes.join(" ")
    );
    println!("    session    {}", s.session_id);
    println!(
        "    token claims (ES256, typ at+jwt, 15 minutes, bound to the sidecar's certificate):"
    );
    for l in serde_json::to_string_pretty(&jwt_payload(&s.token))
        .unwrap()
        .lines()
    {
        println!("      {l}");
    }
    let cert = std::fs::read(coder_dir.join("identity/svid.crt")).unwrap();
    let der = rustls_pem_first(&cert);
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    println!(
        "    certificate: SPIFFE ID {} , serial {}, valid until {}",
        warden_shared::svid::spiffe_id_of(&der).unwrap(),
        parsed.raw_serial_as_string(),
        parsed.validity().not_after
    );
    let mut with_token = agent_unix(
        &sock,
        AgentAuth {
            token: Some(s.token.clone()),
            no_header: false,
        },
    )
    .await
    .unwrap();
    let me = with_token
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    println!(
        "    WhoAmI (verified locally by the sidecar): agent {} for user {}, scopes {:?}",
        me.agent_id, me.user_id, me.scopes
    );

    let _upstream = gateway(&demo, &with_token).await;
    let mcp_token = mcp(mcp_addr, &coder_dir).await;
    // The MCP client's session ends (the agent may hold two at once).
    let auth = AgentAuth {
        token: Some(mcp_token),
        no_header: false,
    };
    if let Ok(mut c) = agent_unix(&sock, auth).await {
        let _ = c.end_session(pb::EndSessionRequest {}).await;
    }
    if std::env::args().any(|a| a == "--serve") {
        serve(&demo, &sock, mcp_addr, &coder_dir).await;
        step("Stopping processes and removing the temporary directory");
        drop(procs);
        drop(tmp);
        return;
    }
    messages(&sock, &s.token, &reviewer_dir.join("agent.sock")).await;

    step("8. Refusals — each with its gRPC code and reason");
    // Agent API.
    let mut no_header = agent_unix(
        &sock,
        AgentAuth {
            token: None,
            no_header: true,
        },
    )
    .await
    .unwrap();
    refused(
        "request without the agent header",
        no_header.start_session(session_req(&["repo:read"])).await,
    );
    refused(
        "scopes beyond the allowed set",
        agent.start_session(session_req(&["payments:send"])).await,
    );
    agent
        .start_session(session_req(&["repo:read"]))
        .await
        .unwrap();
    refused(
        "third session (max 2 concurrent)",
        agent.start_session(session_req(&["repo:read"])).await,
    );
    // Tokens.
    let mut claims: Claims = serde_json::from_value(jwt_payload(&s.token)).unwrap();
    let parts: Vec<&str> = s.token.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut forged_claims = claims.clone();
    forged_claims.scope = "repo:* admin:*".into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(serde_json::to_vec(&forged_claims).unwrap()),
        parts[2]
    );
    refused("token with a forged payload", who(&sock, forged).await);
    // The demo re-signs claims with the control plane's real key to show
    // what the sidecar does with an expired or re-bound token.
    let store = warden_control_plane::store::SqliteStore::open(&dir.join("cp/warden.db"), false)
        .await
        .unwrap();
    let ring = warden_control_plane::identity::keys::KeyRing::load(
        &store,
        warden_control_plane::now_unix(),
    )
    .await
    .unwrap();
    let key = &ring.current().active;
    claims.exp = warden_control_plane::now_unix() - 1;
    refused(
        "expired token (exp in the past)",
        who(&sock, key.sign(&claims).unwrap()).await,
    );
    let mut reviewer = agent_unix(&reviewer_dir.join("agent.sock"), AgentAuth::default())
        .await
        .unwrap();
    let rs = reviewer
        .start_session(session_req(&["repo:read"]))
        .await
        .unwrap()
        .into_inner();
    refused(
        "reviewer-1's token at coder-1's sidecar",
        who(&sock, rs.token.clone()).await,
    );
    let mut rebound: Claims = serde_json::from_value(jwt_payload(&rs.token)).unwrap();
    rebound.aud = spiffe("coder-1").to_string();
    refused(
        "token bound to another certificate",
        who(&sock, key.sign(&rebound).unwrap()).await,
    );
    // Enrollment.
    let mut anon = demo.anonymous().await;
    let enroll = |agent: &str, token: &str, csr: Vec<u8>| pb::EnrollRequest {
        agent_id: agent.into(),
        join_token: token.into(),
        csr_der: csr,
    };
    let (_, csr) = key_and_csr(&spiffe("coder-1")).unwrap();
    refused(
        "reused join token",
        anon.enroll(enroll("coder-1", &coder_token, csr.clone()))
            .await,
    );
    let short = demo
        .ctl(&["join-token", "create", "coder-1", "--ttl", "1"])
        .unwrap()
        .trim()
        .to_owned();
    println!("    (waiting 2 s for a 1-second join token to expire)");
    tokio::time::sleep(Duration::from_secs(2)).await;
    refused(
        "expired join token",
        anon.enroll(enroll("coder-1", &short, csr.clone())).await,
    );
    let fresh = demo
        .ctl(&["join-token", "create", "coder-1"])
        .unwrap()
        .trim()
        .to_owned();
    let (_, rcsr) = key_and_csr(&spiffe("reviewer-1")).unwrap();
    refused(
        "join token of another agent",
        anon.enroll(enroll("reviewer-1", &fresh, rcsr.clone()))
            .await,
    );
    refused(
        "malformed CSR",
        anon.enroll(enroll("coder-1", &fresh, b"not a CSR".to_vec()))
            .await,
    );
    refused(
        "CSR asking for another identity",
        anon.enroll(enroll("coder-1", &fresh, rcsr)).await,
    );
    // Certificates.
    let foreign_dir = dir.join("foreign-ca");
    let foreign = Ca::create(&TrustDomain::new(TD).unwrap(), &foreign_dir).unwrap();
    let cred = foreign
        .issue(
            &spiffe("coder-1"),
            &[],
            &[],
            false,
            Duration::from_secs(600),
        )
        .unwrap();
    let foreign_call = async {
        let ch = demo.mtls(&cred.cert_pem, &cred.key_pem).await?;
        let mut c =
            warden_shared::proto::v1::identity_service_client::IdentityServiceClient::new(ch);
        c.issue_token(pb::IssueTokenRequest {
            scopes: vec!["repo:read".into()],
            ..Default::default()
        })
        .await
    };
    match foreign_call.await {
        Ok(v) => panic!("foreign CA accepted: {v:?}"),
        Err(s) => println!(
            "  ✗ {:<44} {:?} — the control plane refused the TLS handshake: {}",
            "client certificate from a foreign CA",
            s.code(),
            std::error::Error::source(&s)
                .map(source_chain)
                .unwrap_or_else(|| s.message().to_owned())
        ),
    }
    let agent_cert = std::fs::read_to_string(coder_dir.join("identity/svid.crt")).unwrap();
    let agent_key = std::fs::read_to_string(coder_dir.join("identity/identity.pem")).unwrap();
    let ch = demo.mtls(&agent_cert, &agent_key).await.unwrap();
    let mut as_admin = warden_shared::proto::v1::admin_service_client::AdminServiceClient::new(ch);
    refused(
        "admin call with an agent certificate",
        as_admin
            .revoke_agent(pb::RevokeAgentRequest {
                id: "reviewer-1".into(),
                reason: String::new(),
            })
            .await,
    );
    // Lifecycle.
    demo.ctl_ok(&["agents", "suspend", "coder-1", "--reason", "demo"]);
    refused(
        "suspended agent opening a session",
        agent.start_session(session_req(&["repo:read"])).await,
    );
    demo.ctl_ok(&["agents", "resume", "coder-1"]);
    demo.ctl_ok(&[
        "agents",
        "revoke",
        "reviewer-1",
        "--reason",
        "demo kill switch",
    ]);
    refused(
        "revoked agent opening a session",
        reviewer.start_session(session_req(&["repo:read"])).await,
    );
    let reviewer_sock = reviewer_dir.join("agent.sock");
    let took = until_refused(&reviewer_sock, &rs.token).await;
    refused(
        &format!("revoked agent's live token ({} ms)", took.as_millis()),
        who(&reviewer_sock, rs.token.clone()).await,
    );
    demo.ctl_ok(&[
        "sessions",
        "revoke",
        &s.session_id,
        "--reason",
        "token leaked",
    ]);
    let took = until_refused(&sock, &s.token).await;
    refused(
        &format!("revoked session's token ({} ms)", took.as_millis()),
        who(&sock, s.token.clone()).await,
    );
    demo.ctl_ok(&[
        "agents",
        "register",
        "temp-1",
        "--type",
        "batch",
        "--owner",
        "platform-team",
        "--scope",
        "repo:read",
        "--expires-in",
        "2s",
    ]);
    let temp_token = demo
        .ctl(&["join-token", "create", "temp-1"])
        .unwrap()
        .trim()
        .to_owned();
    println!("    (waiting 3 s for temp-1's identity to expire)");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, tcsr) = key_and_csr(&spiffe("temp-1")).unwrap();
    refused(
        "expired agent enrolling",
        anon.enroll(enroll("temp-1", &temp_token, tcsr)).await,
    );

    step("9. The JWKS anyone can verify tokens with (e.g. PyJWT)");
    let (_, jwks) = http_get(jwks_addr, "/.well-known/jwks.json").await.unwrap();
    println!("    GET http://{jwks_addr}/.well-known/jwks.json → {jwks}");

    step(
        "10. The audit trail: every decision, from the sidecars' spools into a signed Merkle-tree log",
    );
    // Sidecars ship what their spools synced (every 100 ms by default).
    tokio::time::sleep(Duration::from_secs(1)).await;
    demo.ctl_ok(&["audit", "query", "--kind", "tool.call", "--limit", "8"]);
    demo.ctl_ok(&["audit", "sign"]);
    demo.ctl_ok(&["audit", "verify"]);
    let key = demo.dir.join("audit-key.json");
    let proof = demo.dir.join("proof.json");
    std::fs::write(&key, demo.ctl(&["--json", "audit", "key"]).unwrap()).unwrap();
    std::fs::write(&proof, demo.ctl(&["audit", "prove", "3"]).unwrap()).unwrap();
    println!(
        "    (the inclusion proof of entry 3 and the log's public key, saved; checked offline:)"
    );
    demo.ctl_ok(&[
        "audit",
        "check",
        &proof.display().to_string(),
        "--key",
        &key.display().to_string(),
    ]);

    step("Done — stopping processes and removing the temporary directory");
    drop(procs);
    drop(store);
    drop(tmp);
}

/// The policy the demo applies: a secret-backed HTTP upstream (run by the
/// demo itself), builtins, a Cedar rule, a critical tool and a rate limit.
const POLICY: &str = r#"version: 1
secrets:
  tickets_key: "file:{SECRET_FILE}"
tools:
  - name: search_tickets
    description: Search the ticket tracker.
    input_schema:
      type: object
      properties: { query: { type: string, maxLength: 200 } }
      required: [query]
      additionalProperties: false
    scopes: ["tickets:read"]
    risk: low
    upstream:
      kind: http
      address: "{UPSTREAM}/echo/tickets"
      method: GET
      headers: { Authorization: "Bearer ${secret:tickets_key}" }
    secrets: [tickets_key]
    limits: { calls_per_minute: 3 }
  - name: send_email
    description: Send an email (a builtin echo for the demo).
    input_schema:
      type: object
      properties: { to: { type: string, format: email }, body: { type: string } }
      required: [to, body]
    scopes: ["repo:read"]
    risk: medium
    upstream: { kind: builtin, address: echo }
  - name: clock
    description: The time.
    input_schema: { type: object }
    scopes: ["time:read"]
    risk: low
    upstream: { kind: builtin, address: clock }
  - name: delete_repository
    description: Never without a human.
    input_schema: { type: object, properties: { repo: { type: string } }, required: [repo] }
    scopes: ["repo:read"]
    risk: critical
  - name: shell
    description: Run a shell command.
    input_schema: { type: object }
    scopes: ["repo:read"]
    risk: high
  - name: merge_release
    description: Merge a release branch (a builtin echo for the demo); a person approves each merge.
    input_schema:
      type: object
      properties:
        branch: { type: string }
        signing_key: { type: string, writeOnly: true }
      required: [branch]
    scopes: ["repo:read"]
    risk: high
    upstream: { kind: builtin, address: echo }
messaging:
  allow:
    - { from: "type:coder", to: "type:reviewer" }
cedar: |
  permit (principal, action, resource);
  @id("email-stays-internal")
  forbid (principal, action == Warden::Action::"send_email", resource)
  unless { context.arguments.to like "*@example.com" };
"#;

/// `--serve`: the mesh stays up for the developer's own agent, until
/// Ctrl-C; Enter prints a fresh session token.
async fn serve(demo: &Demo, sock: &Path, mcp_addr: SocketAddr, sidecar_dir: &Path) {
    step("Serving: point your own agent at this mesh (Ctrl-C stops it)");
    println!("    agent coder-1, its sidecar's APIs:");
    println!(
        "      gRPC  unix socket {} (metadata `warden-agent: true`, `authorization: Bearer <token>`)",
        sock.display()
    );
    println!("      MCP   http://{mcp_addr}/mcp (header `Authorization: Bearer <token>`)");
    println!(
        "            or OAuth client_credentials: client id coder-1, secret in {}",
        sidecar_dir.join("mcp-client-secret").display()
    );
    println!(
        "    policy {} (tools search_tickets, send_email, …)",
        demo.dir.join("policy.yaml").display()
    );
    println!(
        "    admin: {} --config-dir {} agents list",
        demo.bin.join("wardenctl").display(),
        demo.dir.join("cp/admin").display()
    );
    let mut agent = agent_unix(sock, AgentAuth::default()).await.unwrap();
    // Lines typed, read on a thread of their own; closed with stdin.
    let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<()>(1);
    std::thread::spawn(move || {
        for l in std::io::stdin().lines() {
            if l.is_err() || lines_tx.blocking_send(()).is_err() {
                return;
            }
        }
    });
    let mut interactive = true;
    let mut previous: Option<String> = None;
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    loop {
        if interactive {
            // One session at a time: the agent may hold only two.
            if let Some(token) = previous.take() {
                let auth = AgentAuth {
                    token: Some(token),
                    no_header: false,
                };
                if let Ok(mut c) = agent_unix(sock, auth).await {
                    let _ = c.end_session(pb::EndSessionRequest {}).await;
                }
            }
            match agent
                .start_session(pb::StartSessionRequest {
                    scopes: vec!["repo:read".into(), "tickets:read".into()],
                    ..Default::default()
                })
                .await
            {
                Ok(s) => {
                    let s = s.into_inner();
                    println!(
                        "    session token (scopes {}, 15 minutes):\n{}",
                        s.scopes.join(" "),
                        s.token
                    );
                    previous = Some(s.token);
                }
                Err(e) => println!("    no session: {} ({})", e.message(), reason(&e)),
            }
            println!("    Enter: a new session token · Ctrl-C: stop");
        }
        tokio::select! {
            line = lines.recv(), if interactive => {
                // Without a terminal (stdin closed), wait for Ctrl-C alone.
                interactive = line.is_some();
            }
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
        }
    }
}

/// One JSON-RPC request to the MCP front door (HTTP/1.1, a fresh connection).
async fn mcp_post(addr: SocketAddr, token: &str, msg: &serde_json::Value) -> serde_json::Value {
    warden_tests::http1::mcp_rpc(addr, token, msg)
        .await
        .map_or(serde_json::Value::Null, |(_, v)| v)
}

/// A token from the sidecar's OAuth token endpoint (`client_credentials`,
/// HTTP Basic), as an MCP client's own OAuth support gets it.
async fn oauth_token(addr: SocketAddr, client_id: &str, secret: &str) -> serde_json::Value {
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{secret}"))
    );
    let headers = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Authorization", basic.as_str()),
    ];
    warden_tests::http1::exchange(
        addr,
        "POST",
        "/oauth/token",
        &headers,
        b"grant_type=client_credentials",
    )
    .await
    .ok()
    .and_then(|(_, _, body)| serde_json::from_str(&body).ok())
    .unwrap_or(serde_json::Value::Null)
}

/// Step 6: the same gateway through the MCP front door, with a token the
/// client got by OAuth (returned).
async fn mcp(addr: SocketAddr, sidecar_dir: &Path) -> String {
    step("6. The same tools over MCP (streamable HTTP), with a token got by OAuth");
    let secret_file = sidecar_dir.join("mcp-client-secret");
    let secret = std::fs::read_to_string(&secret_file).unwrap_or_default();
    let t = oauth_token(addr, "coder-1", secret.trim()).await;
    let token = t["access_token"].as_str().unwrap_or_default().to_owned();
    println!(
        "    the client follows the 401 to http://{addr}/.well-known/oauth-protected-resource,"
    );
    println!(
        "    then POST /oauth/token (client_credentials; id coder-1, secret from {}) → {} token, scope \"{}\", {} s",
        secret_file.display(),
        t["token_type"].as_str().unwrap_or("no"),
        t["scope"].as_str().unwrap_or_default(),
        t["expires_in"]
    );
    let init = mcp_post(
        addr,
        &token,
        &serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "demo", "version": "0"}}}),
    )
    .await;
    println!(
        "    initialize → protocol {}, server {}",
        init["result"]["protocolVersion"], init["result"]["serverInfo"]["name"]
    );
    let listed = mcp_post(
        addr,
        &token,
        &serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    let names: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    println!("    tools/list → {}", names.join(", "));
    for to in ["bob@example.com", "eve@evil.test"] {
        let r = mcp_post(
            addr,
            &token,
            &serde_json::json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
                "name": "send_email", "arguments": {"to": to, "body": "hi"}}}),
        )
        .await;
        println!(
            "    tools/call send_email to {to} → isError {}: {}",
            r["result"]["isError"], r["result"]["content"][0]["text"]
        );
    }
    token
}

/// Within step 5: a high-risk call waits for a person.
async fn approval(demo: &Demo, agent: &mut warden_tests::AgentClient) {
    let merge = pb::CallToolRequest {
        tool: "merge_release".into(),
        arguments_json: r#"{"branch": "release-1.4", "signing_key": "sk-do-not-show"}"#.into(),
        reason: "the release checklist is green".into(),
        trace_id: "demo-trace".into(),
        // The demo asks not to wait, to show the queue; without it the call
        // would be held until the decision.
        no_wait: true,
    };
    let s = agent.call_tool(merge.clone()).await.unwrap_err();
    let id = warden_shared::refusal::metadata_of(&s)
        .get("approval_id")
        .cloned()
        .unwrap_or_default();
    println!(
        "  ⏸ CallTool merge_release (high risk)              {:?} {} — {}",
        s.code(),
        reason(&s),
        s.message()
    );
    println!("    an admin on duty sees the request (the signing key redacted) and approves it:");
    demo.ctl_ok(&["approvals", "list"]);
    demo.ctl_ok(&["approvals", "show", &id]);
    demo.ctl_ok(&[
        "approvals",
        "approve",
        &id,
        "--comment",
        "checked the changelog",
    ]);
    let r = agent.call_tool(merge.clone()).await.unwrap().into_inner();
    println!(
        "    CallTool merge_release again → ran once approved: {}",
        String::from_utf8_lossy(&r.content)
    );
    refused(
        "the same merge once more (an approval runs once)",
        agent.call_tool(merge).await,
    );
}

/// Step 5: the tool gateway, as the agent sees it.
async fn gateway(
    demo: &Demo,
    agent: &warden_tests::AgentClient,
) -> warden_tests::upstream::Upstream {
    step("5. The tool gateway: a policy, then tool calls through the sidecar");
    let upstream = warden_tests::upstream::Upstream::start().await.unwrap();
    let key = format!("tk_live_{}", warden_tests::rand_suffix());
    let key_file = demo.dir.join("tickets-api-key");
    std::fs::write(&key_file, &key).unwrap();
    let policy = POLICY
        .replace("{UPSTREAM}", &upstream.url())
        .replace("{SECRET_FILE}", &key_file.display().to_string());
    let policy_file = demo.dir.join("policy.yaml");
    std::fs::write(&policy_file, policy).unwrap();
    let file = policy_file.display().to_string();
    demo.ctl_ok(&["policy", "validate", &file]);
    demo.ctl_ok(&["policy", "apply", &file]);
    let mut agent = agent.clone();
    let held = eventually(Duration::from_secs(10), || {
        let mut a = agent.clone();
        async move {
            a.list_tools(pb::ListToolsRequest {})
                .await
                .is_ok_and(|r| r.into_inner().policy_version > 0)
        }
    })
    .await;
    assert!(held, "the policy did not reach the sidecar");
    let tools = agent
        .list_tools(pb::ListToolsRequest {})
        .await
        .unwrap()
        .into_inner();
    println!(
        "    ListTools → {} (not clock: no time:read in this session; not shell: coder-1's identity denies it; never a critical tool)",
        tools
            .tools
            .iter()
            .map(|t| format!("{} ({})", t.name, t.risk))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let call = |tool: &str, args: &str| pb::CallToolRequest {
        tool: tool.into(),
        arguments_json: args.into(),
        reason: "the demo asked".into(),
        trace_id: "demo-trace".into(),
        no_wait: false,
    };
    let r = agent
        .call_tool(call("search_tickets", r#"{"query": "login bug"}"#))
        .await
        .unwrap()
        .into_inner();
    let seen = upstream.seen.lock().unwrap().last().cloned().unwrap();
    let auth = seen
        .headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    println!(
        "    CallTool search_tickets → HTTP {} from the upstream ({})",
        r.upstream_status, r.call_id
    );
    println!(
        "      the upstream received {} and `authorization: {}…` (injected by the sidecar)",
        seen.uri,
        &auth[..auth.len().min(14)]
    );
    let body = String::from_utf8_lossy(&r.content);
    let echoed = body
        .split('"')
        .find(|p| p.starts_with("authorization:"))
        .unwrap_or_default();
    println!(
        "      it echoed the header back; the agent got `{echoed}` ({} redaction) — the key never reaches the agent",
        r.redactions
    );
    assert!(!body.contains(&key));
    let r = agent
        .call_tool(call(
            "send_email",
            r#"{"to": "bob@example.com", "body": "hi"}"#,
        ))
        .await
        .unwrap()
        .into_inner();
    println!(
        "    CallTool send_email to bob@example.com → {}",
        String::from_utf8_lossy(&r.content)
    );
    refused(
        "tool this session has no scope for",
        agent.call_tool(call("clock", "{}")).await,
    );
    refused(
        "tool the agent's identity denies",
        agent.call_tool(call("shell", "{}")).await,
    );
    refused("unknown tool", agent.call_tool(call("rm_rf", "{}")).await);
    refused(
        "arguments against the schema",
        agent
            .call_tool(call("search_tickets", r#"{"query": 42}"#))
            .await,
    );
    refused(
        "Cedar rule (email outside the company)",
        agent
            .call_tool(call(
                "send_email",
                r#"{"to": "eve@evil.test", "body": "the secrets"}"#,
            ))
            .await,
    );
    refused(
        "critical tool",
        agent
            .call_tool(call("delete_repository", r#"{"repo": "warden"}"#))
            .await,
    );
    for _ in 0..2 {
        agent
            .call_tool(call("search_tickets", r#"{"query": "again"}"#))
            .await
            .unwrap();
    }
    refused(
        "4th call in a minute (limit 3/min)",
        agent
            .call_tool(call("search_tickets", r#"{"query": "more"}"#))
            .await,
    );
    approval(demo, &mut agent).await;
    let a = agent
        .authorize(pb::AuthorizeRequest {
            tool: "send_email".into(),
            arguments_json: r#"{"to": "eve@evil.test", "body": "x"}"#.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let d = a.denial.unwrap_or_default();
    println!(
        "    Authorize send_email to eve@evil.test → allowed {}, passed {:?}, refused at {} by {} ({})",
        a.allowed, a.checks, d.stage, d.rule, d.reason
    );
    println!(
        "    every decision above is an audit event (target warden::audit) in {}",
        demo.dir.join("sidecar-coder-1.log").display()
    );
    upstream
}

/// Polls the sidecar until it refuses `token` (the push has landed).
async fn until_refused(sock: &Path, token: &str) -> Duration {
    let start = std::time::Instant::now();
    let done = eventually(Duration::from_secs(10), || async {
        who(sock, token.to_owned()).await.is_err()
    })
    .await;
    assert!(done, "the sidecar kept accepting the token");
    start.elapsed()
}

async fn who(sock: &Path, token: String) -> Result<pb::WhoAmIResponse, Status> {
    let mut c = agent_unix(
        sock,
        AgentAuth {
            token: Some(token),
            no_header: false,
        },
    )
    .await
    .unwrap();
    c.who_am_i(pb::WhoAmIRequest {})
        .await
        .map(tonic::Response::into_inner)
}

fn rustls_pem_first(pem: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(pem);
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

/// Step 6: two agents exchange messages through their sidecars.
async fn messages(coder_sock: &Path, coder_token: &str, reviewer_sock: &Path) {
    use warden_shared::proto::v1::messaging_service_client::MessagingServiceClient;
    step(
        "7. Agent-to-agent messages: signed by the sidecars with a pairwise key, verified before delivery",
    );
    let client = |sock: &Path, token: String| {
        let sock = sock.to_owned();
        async move {
            MessagingServiceClient::with_interceptor(
                warden_tests::unix_channel(&sock).await.unwrap(),
                AgentAuth {
                    token: Some(token),
                    no_header: false,
                },
            )
        }
    };
    let mut coder = client(coder_sock, coder_token.to_owned()).await;
    let rs = agent_unix(reviewer_sock, AgentAuth::default())
        .await
        .unwrap()
        .start_session(session_req(&["repo:read"]))
        .await
        .unwrap()
        .into_inner();
    let mut reviewer = client(reviewer_sock, rs.token).await;
    let text = |to: &str, t: &str| pb::SignMessageRequest {
        recipient_agent: to.into(),
        payload: t.as_bytes().to_vec(),
        content_type: "text/plain".into(),
    };
    // The pair keys follow the policy applied in step 5.
    let keyed = eventually(Duration::from_secs(10), || {
        let mut c = coder.clone();
        async move { c.sign_message(text("reviewer-1", "ping")).await.is_ok() }
    })
    .await;
    assert!(keyed, "coder-1's sidecar holds no key for reviewer-1");
    println!("    policy: messaging.allow: [{{from: type:coder, to: type:reviewer}}]");
    let mut inbox = reviewer
        .receive_messages(pb::ReceiveMessagesRequest {})
        .await
        .unwrap()
        .into_inner();
    let sent = coder
        .send_message(pb::SendMessageRequest {
            recipient_agent: "reviewer-1".into(),
            payload: b"PR #42 is ready for review".to_vec(),
            content_type: "text/plain".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .envelope
        .unwrap();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    println!(
        "    coder-1 SendMessage → envelope v{} {} → {}, key epoch {}, nonce {}, mac {}…",
        sent.version,
        sent.sender,
        sent.recipient,
        sent.key_id,
        hex(&sent.nonce),
        &hex(&sent.mac)[..16]
    );
    println!("      (delivered over mTLS: each sidecar checked the other's SPIFFE ID)");
    let got = tokio::time::timeout(Duration::from_secs(10), inbox.message())
        .await
        .expect("delivered")
        .unwrap()
        .unwrap()
        .message
        .unwrap();
    println!(
        "    reviewer-1 ReceiveMessages ← {:?} from {} after checks {}",
        String::from_utf8_lossy(&got.payload),
        got.sender_agent_id,
        got.checks.join(" → ")
    );
    let e = coder
        .sign_message(text("reviewer-1", "LGTM?"))
        .await
        .unwrap()
        .into_inner()
        .envelope
        .unwrap();
    let verify = |e: &pb::Envelope| pb::VerifyMessageRequest {
        envelope: Some(e.clone()),
    };
    let mut tampered = e.clone();
    tampered.payload = b"LGTM!".to_vec();
    refused(
        "tampered payload (VerifyMessage)",
        reviewer.verify_message(verify(&tampered)).await,
    );
    let v = reviewer
        .verify_message(verify(&e))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    println!(
        "  ✓ VerifyMessage of the genuine envelope → {:?} from {}",
        String::from_utf8_lossy(&v.payload),
        v.sender_spiffe_id
    );
    refused(
        "the same envelope again (replay)",
        reviewer.verify_message(verify(&e)).await,
    );
    refused(
        "the delivered envelope replayed",
        reviewer.verify_message(verify(&sent)).await,
    );
    refused(
        "reviewer-1 → coder-1 (no rule allows it)",
        reviewer.sign_message(text("coder-1", "I approve")).await,
    );
    let mut forged = e.clone();
    forged.sender = spiffe("temp-1").to_string();
    refused(
        "a sender policy does not pair with reviewer-1",
        reviewer.verify_message(verify(&forged)).await,
    );
}
