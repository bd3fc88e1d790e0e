//! `wardenctl`: the admin CLI. Human output by default, `--json` for scripts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;
use warden_control_plane::ctl::{self, CtlConfig};
use warden_shared::proto::v1 as pb;

#[derive(Parser)]
#[command(
    name = "wardenctl",
    version,
    about = "Administer a Warden mesh: agents, join tokens, signing keys, policies, approvals, the audit log"
)]
struct Cli {
    /// Directory with ca.crt, admin.crt, admin.key and wardenctl.toml
    /// (written by `warden-control-plane init` into <data-dir>/admin).
    #[arg(long, env = "WARDEN_CONFIG_DIR", global = true)]
    config_dir: Option<PathBuf>,
    /// Control-plane address, e.g. https://localhost:7443 (overrides wardenctl.toml).
    #[arg(long, env = "WARDEN_ADDRESS", global = true)]
    address: Option<String>,
    /// CA certificate (PEM) to verify the control plane (overrides the config directory's).
    #[arg(long, env = "WARDEN_CA", global = true)]
    ca: Option<PathBuf>,
    /// Admin certificate (PEM) (overrides the config directory's).
    #[arg(long, env = "WARDEN_CERT", global = true, requires = "key")]
    cert: Option<PathBuf>,
    /// Admin private key (PEM) (overrides the config directory's).
    #[arg(long, env = "WARDEN_KEY", global = true, requires = "cert")]
    key: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Agent identities.
    #[command(subcommand)]
    Agents(Agents),
    /// Single-use enrollment tokens.
    #[command(subcommand, name = "join-token")]
    JoinToken(JoinToken),
    /// Token-signing keys.
    #[command(subcommand)]
    Keys(Keys),
    /// Sessions.
    #[command(subcommand)]
    Sessions(Sessions),
    /// Users' consent grants: which agents may act for which users.
    #[command(subcommand)]
    Grants(GrantsCmd),
    /// Sidecars connected over their mesh streams.
    #[command(subcommand)]
    Sidecars(SidecarsCmd),
    /// Policy documents (tool catalog, Cedar rules, overrides).
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Calls waiting for people to approve them.
    #[command(subcommand)]
    Approvals(ApprovalsCmd),
    /// The tamper-evident audit log: read, verify, prove.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// The guardrail detectors, offline: score text, measure on a corpus.
    #[command(subcommand)]
    Guard(GuardCmd),
}

#[derive(Subcommand)]
enum GuardCmd {
    /// Precision, recall and false-positive rate of the detectors per
    /// family, on a labelled corpus (JSON lines of family, label, text).
    Eval {
        /// The corpus, e.g. tests/corpus/guard/corpus.jsonl.
        corpus: PathBuf,
    },
    /// What the detectors find in a text (read from the file, or `-` for
    /// standard input): the injection score and its signals, credentials
    /// and personal data, by kind and span (never the values).
    Scan {
        /// The text.
        file: PathBuf,
        /// A gitleaks rule file added to the built-in credential rules.
        #[arg(long)]
        secret_rules: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Entries matching filters, oldest first.
    Query {
        /// Only this agent's.
        #[arg(long)]
        agent: Option<String>,
        /// Only this session's.
        #[arg(long)]
        session: Option<String>,
        /// Only this tool's.
        #[arg(long)]
        tool: Option<String>,
        /// Only with this outcome (allowed, denied, failed, cancelled, ok…).
        #[arg(long)]
        outcome: Option<String>,
        /// Only of this kind (tool.call, approval.decided, agent.revoked…).
        #[arg(long)]
        kind: Option<String>,
        /// Events at or after: RFC 3339, unix ms, or a duration ago (2h).
        #[arg(long, value_parser = ctl::audit::parse_time)]
        since: Option<i64>,
        /// Events before: RFC 3339, unix ms, or a duration ago.
        #[arg(long, value_parser = ctl::audit::parse_time)]
        until: Option<i64>,
        /// Entries after this position only.
        #[arg(long)]
        after: Option<u64>,
        /// At most this many (1-10000); not with --follow.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print each new matching entry as it arrives (after --after, or
        /// from now on).
        #[arg(long)]
        follow: bool,
    },
    /// Every entry from a position, as JSON lines (the records exactly as
    /// hashed), for archiving or a SIEM.
    Export {
        /// First position.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Stop before this position (default: the end).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Recomputes the Merkle tree from every entry and checks every signed
    /// head; names the first altered, missing or reordered entry. Exits 1
    /// when the log does not verify.
    Verify {
        /// The log's public keys (from `wardenctl audit key --json`);
        /// without it, the keys the control plane names now.
        #[arg(long)]
        key: Option<PathBuf>,
        /// The pruned prefix as `audit export --to N` printed it: checked
        /// with the rest against every signed head.
        #[arg(long)]
        archive: Option<PathBuf>,
    },
    /// Retention: deletes the entries below POSITION (at most the latest
    /// signed head's size), keeping the hashes that keep later entries
    /// provable and every signed head checkable. Archive them first with
    /// `audit export --to POSITION > FILE`.
    Prune {
        /// Entries below this position are deleted.
        #[arg(long)]
        below: u64,
        /// Confirms the entries below were archived.
        #[arg(long)]
        yes: bool,
    },
    /// Prints an inclusion proof (JSON) for the entry at POSITION, against a
    /// signed head; check it offline with `wardenctl audit check`.
    Prove {
        /// The entry's position (as `audit query` prints it).
        position: u64,
        /// The size of the signed head to prove against (default: the latest,
        /// signed now if none covers the entry yet).
        #[arg(long)]
        tree_size: Option<u64>,
    },
    /// Prints a consistency proof (JSON) between two signed heads: the
    /// later log extends the earlier one unchanged.
    Consistency {
        /// Size of the earlier signed head.
        old: u64,
        /// Size of the later signed head.
        new: u64,
    },
    /// Checks a proof file offline against the log's public keys.
    Check {
        /// A proof printed by `prove` or `consistency`.
        proof: PathBuf,
        /// The log's public keys (from `wardenctl audit key --json`).
        #[arg(long)]
        key: PathBuf,
    },
    /// Signed tree heads.
    Heads {
        /// Heads of at least this size.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Signs a tree head over the log as it is now.
    Sign,
    /// The log's head-signing public keys (save `--json` for offline checks).
    Key,
}

#[derive(Subcommand)]
enum ApprovalsCmd {
    /// List requests, newest first (the pending ones unless --state is given).
    List {
        /// pending, approved, denied, used, expired, cancelled or all.
        #[arg(long, default_value = "pending")]
        state: String,
        /// At most this many (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one request: the call, its arguments (sensitive values redacted), decisions.
    Show { id: String },
    /// Approve a request (one person counts once towards its quorum).
    Approve {
        id: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Deny a request; the agent is told the reason.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Follow requests live: the pending ones, then each as it is filed or decided (Ctrl-C ends).
    Watch,
}

#[derive(Subcommand)]
enum SidecarsCmd {
    /// List connected sidecars: agent, acknowledged version, last refusal, lag.
    List,
}

#[derive(Subcommand)]
enum Sessions {
    /// Revoke a session: its token is refused at every sidecar until it expires.
    Revoke {
        session_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum GrantsCmd {
    /// List live grants (newest first): id, user, agent or type, scopes, expiry.
    List {
        /// Only this user's (`<issuer>#<subject>`).
        #[arg(long, default_value = "")]
        user: String,
        /// Include revoked and expired grants.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a grant; the sessions issued under it end at every sidecar.
    Revoke {
        grant_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Validate a policy file offline (no server needed).
    Validate { file: PathBuf },
    /// Validate on the server and store as the next version.
    Apply {
        file: PathBuf,
        /// Apply only if this is still the latest version.
        #[arg(long)]
        expect_version: Option<u64>,
        /// Validate on the server without storing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print a stored version (default: the latest).
    Get {
        #[arg(long)]
        version: Option<u64>,
    },
    /// List stored versions, newest first.
    History {
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Show how a file differs from a stored version (default: the latest).
    Diff {
        file: PathBuf,
        #[arg(long)]
        version: Option<u64>,
    },
}

#[derive(Subcommand)]
enum Agents {
    /// Register an agent identity.
    Register {
        /// Agent id: 1-63 of [a-z0-9._-].
        id: String,
        /// Kind of agent, e.g. coder.
        #[arg(long = "type")]
        agent_type: String,
        /// Accountable owner (person or team).
        #[arg(long)]
        owner: String,
        #[arg(long, default_value = "")]
        version: String,
        #[arg(long, default_value = "")]
        environment: String,
        /// Identity lifetime from now, e.g. 90s, 30m, 12h, 30d (default: no expiry).
        #[arg(long, value_parser = ctl::parse_duration)]
        expires_in: Option<std::time::Duration>,
        /// Maximum concurrent sessions (default: the server's).
        #[arg(long, default_value_t = 0)]
        max_sessions: u32,
        /// Allowed scope pattern; repeat for several (e.g. --scope 'data:*').
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Allowed tool; repeat for several.
        #[arg(long = "allow-tool")]
        allowed_tools: Vec<String>,
        /// Denied tool; repeat for several.
        #[arg(long = "deny-tool")]
        denied_tools: Vec<String>,
    },
    /// List agents.
    List,
    /// Show one agent.
    Get { id: String },
    /// Suspend an agent: refused everything until resumed.
    Suspend {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Resume a suspended agent.
    Resume { id: String },
    /// Revoke an agent permanently (the kill switch).
    Revoke {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum JoinToken {
    /// Create a single-use join token for an agent (printed once).
    Create {
        agent_id: String,
        /// Lifetime in seconds (default 600, at most 86400).
        #[arg(long, default_value_t = 0)]
        ttl: u32,
    },
}

#[derive(Subcommand)]
enum Keys {
    /// Make a new signing key active; old keys stay published until their tokens expire.
    Rotate,
}

fn status_name(s: i32) -> &'static str {
    match pb::AgentStatus::try_from(s) {
        Ok(pb::AgentStatus::Active) => "active",
        Ok(pb::AgentStatus::Suspended) => "suspended",
        Ok(pb::AgentStatus::Revoked) => "revoked",
        _ => "unknown",
    }
}

fn ts(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
}

fn agent_json(a: &pb::Agent) -> serde_json::Value {
    json!({
        "id": a.id, "spiffe_id": a.spiffe_id, "type": a.agent_type, "version": a.version,
        "owner": a.owner, "environment": a.environment, "status": status_name(a.status),
        "status_reason": a.status_reason, "created_at": ts(a.created_at.as_ref()),
        "updated_at": ts(a.updated_at.as_ref()), "expires_at": a.expires_at.as_ref().map(|t| ts(Some(t))),
        "max_concurrent_sessions": a.max_concurrent_sessions, "allowed_scopes": a.allowed_scopes,
        "allowed_tools": a.allowed_tools, "denied_tools": a.denied_tools,
    })
}

fn print_agent(a: &pb::Agent, as_json: bool) {
    if as_json {
        println!("{}", agent_json(a));
        return;
    }
    println!("id:           {}", a.id);
    println!("spiffe id:    {}", a.spiffe_id);
    println!(
        "status:       {}{}",
        status_name(a.status),
        if a.status_reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", a.status_reason)
        }
    );
    println!(
        "type:         {}  version: {}",
        a.agent_type,
        if a.version.is_empty() {
            "-"
        } else {
            &a.version
        }
    );
    println!(
        "owner:        {}  environment: {}",
        a.owner,
        if a.environment.is_empty() {
            "-"
        } else {
            &a.environment
        }
    );
    println!(
        "created:      {}  expires: {}",
        ts(a.created_at.as_ref()),
        ts(a.expires_at.as_ref())
    );
    println!("max sessions: {}", a.max_concurrent_sessions);
    println!("scopes:       {}", a.allowed_scopes.join(" "));
    println!(
        "tools:        allow [{}] deny [{}]",
        a.allowed_tools.join(", "),
        a.denied_tools.join(", ")
    );
}

fn read_policy(file: &std::path::Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?;
    anyhow::ensure!(
        meta.len() <= warden_shared::policy::MAX_DOCUMENT_BYTES as u64,
        "{} is larger than {} bytes",
        file.display(),
        warden_shared::policy::MAX_DOCUMENT_BYTES
    );
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

/// `policy validate`: offline, before any connection.
fn validate_offline(file: &std::path::Path, as_json: bool) -> anyhow::Result<()> {
    let text = read_policy(file)?;
    match warden_shared::policy::Policy::parse(&text) {
        Ok(p) => {
            if as_json {
                println!(
                    "{}",
                    json!({"valid": true, "digest": p.digest, "tools": p.document.tools.len()})
                );
            } else {
                println!(
                    "{}: valid ({} tools, digest {})",
                    file.display(),
                    p.document.tools.len(),
                    &p.digest[..16]
                );
            }
            Ok(())
        }
        Err(e) => {
            if as_json {
                println!(
                    "{}",
                    json!({"valid": false, "kind": e.kind(), "error": e.to_string()})
                );
            }
            anyhow::bail!("{}: {e} [{}]", file.display(), e.kind())
        }
    }
}

fn approval_json(a: &pb::Approval) -> serde_json::Value {
    let arguments: serde_json::Value =
        serde_json::from_str(&a.arguments_json).unwrap_or(serde_json::Value::Null);
    json!({
        "id": a.id, "state": a.state, "agent_id": a.agent_id, "session_id": a.session_id,
        "user_id": a.user_id, "tool": a.tool, "arguments": arguments, "reason": a.reason,
        "trace_id": a.trace_id, "because": a.because, "quorum": a.quorum,
        "approvals": a.decisions.iter().filter(|d| d.approve).count(),
        "created_at": ts(a.created_at.as_ref()), "deadline": ts(a.deadline.as_ref()),
        "binding": a.binding,
        "decisions": a.decisions.iter().map(|d| json!({
            "approver": d.approver, "approve": d.approve, "comment": d.comment,
            "decided_at": ts(d.decided_at.as_ref()),
        })).collect::<Vec<_>>(),
    })
}

/// One line per request, for `list` and `watch`.
fn approval_line(a: &pb::Approval) -> String {
    format!(
        "{:<28} {:<10} {:<16} {:<18} {:>3}/{:<3} {:<22} {}",
        a.id,
        a.state,
        a.agent_id,
        a.tool,
        a.decisions.iter().filter(|d| d.approve).count(),
        a.quorum,
        ts(a.deadline.as_ref()),
        a.because
    )
}

const APPROVAL_HEADER: &str = "ID                           STATE      AGENT            TOOL               OK/NEED DEADLINE               BECAUSE";

fn print_approval(a: &pb::Approval, as_json: bool) {
    if as_json {
        println!("{}", approval_json(a));
        return;
    }
    println!("id:        {}", a.id);
    println!(
        "state:     {} ({} of {} approvals)",
        a.state,
        a.decisions.iter().filter(|d| d.approve).count(),
        a.quorum
    );
    println!("agent:     {}  session: {}", a.agent_id, a.session_id);
    if !a.user_id.is_empty() {
        println!("user:      {}", a.user_id);
    }
    println!("tool:      {}", a.tool);
    println!("because:   {}", a.because);
    println!(
        "reason:    {}",
        if a.reason.is_empty() { "-" } else { &a.reason }
    );
    println!(
        "created:   {}  deadline: {}",
        ts(a.created_at.as_ref()),
        ts(a.deadline.as_ref())
    );
    if !a.trace_id.is_empty() {
        println!("trace:     {}", a.trace_id);
    }
    let args = serde_json::from_str::<serde_json::Value>(&a.arguments_json)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| a.arguments_json.clone());
    println!("arguments:");
    for line in args.lines() {
        println!("  {line}");
    }
    for d in &a.decisions {
        println!(
            "{}  {} by {}{}",
            ts(d.decided_at.as_ref()),
            if d.approve { "approved" } else { "denied" },
            d.approver,
            if d.comment.is_empty() {
                String::new()
            } else {
                format!(": {}", d.comment)
            }
        );
    }
}

fn version_line(v: &pb::PolicyVersion) -> String {
    format!(
        "{:<8} {:<22} {:<16} {:>5}  {}",
        v.version,
        ts(v.applied_at.as_ref()),
        v.applied_by,
        v.tools,
        &v.digest[..v.digest.len().min(16)]
    )
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Policy(PolicyCmd::Validate { file }) = &cli.command {
        return validate_offline(file, cli.json);
    }
    if let Command::Guard(cmd) = &cli.command {
        return ctl::guard::run(cmd_of(cmd), cli.json);
    }
    if let Command::Audit(AuditCmd::Check { proof, key }) = &cli.command {
        let keys = ctl::audit::Keys::load(key)?;
        let proof = ctl::audit::load_proof(proof)?;
        let shown = ctl::audit::check(&proof, &keys).context("the proof does NOT verify")?;
        if cli.json {
            println!("{}", json!({"verified": true, "shows": shown}));
        } else {
            println!("verified: {shown}");
        }
        return Ok(());
    }
    let dir = match cli.config_dir {
        Some(d) => d,
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".config/warden"))
            .context("no --config-dir given and $HOME is unset")?,
    };
    let mut cfg = CtlConfig::from_dir(&dir, cli.address)?;
    if let Some(ca) = cli.ca {
        cfg.files.ca = ca;
    }
    if let (Some(cert), Some(key)) = (cli.cert, cli.key) {
        cfg.files.cert = cert;
        cfg.files.key = key;
    }
    let mut client = ctl::connect(&cfg).await?;
    let j = cli.json;
    match cli.command {
        Command::Agents(cmd) => match cmd {
            Agents::Register {
                id,
                agent_type,
                owner,
                version,
                environment,
                expires_in,
                max_sessions,
                scopes,
                allowed_tools,
                denied_tools,
            } => {
                let expires_at = expires_in.map(|d| prost_types::Timestamp {
                    seconds: time::OffsetDateTime::now_utc().unix_timestamp() + d.as_secs() as i64,
                    nanos: 0,
                });
                let r = client
                    .register_agent(pb::RegisterAgentRequest {
                        id,
                        agent_type,
                        version,
                        owner,
                        environment,
                        expires_at,
                        max_concurrent_sessions: max_sessions,
                        allowed_scopes: scopes,
                        allowed_tools,
                        denied_tools,
                    })
                    .await?
                    .into_inner();
                print_agent(&r.agent.context("empty response")?, j);
            }
            Agents::List => {
                let r = client
                    .list_agents(pb::ListAgentsRequest {})
                    .await?
                    .into_inner();
                if j {
                    println!(
                        "{}",
                        serde_json::Value::Array(r.agents.iter().map(agent_json).collect())
                    );
                } else {
                    println!(
                        "{:<24} {:<10} {:<14} {:<16} SCOPES",
                        "ID", "STATUS", "TYPE", "OWNER"
                    );
                    for a in &r.agents {
                        println!(
                            "{:<24} {:<10} {:<14} {:<16} {}",
                            a.id,
                            status_name(a.status),
                            a.agent_type,
                            a.owner,
                            a.allowed_scopes.join(" ")
                        );
                    }
                }
            }
            Agents::Get { id } => {
                let r = client
                    .get_agent(pb::GetAgentRequest { id })
                    .await?
                    .into_inner();
                print_agent(&r.agent.context("empty response")?, j);
            }
            Agents::Suspend { id, reason } => {
                let r = client
                    .suspend_agent(pb::SuspendAgentRequest { id, reason })
                    .await?
                    .into_inner();
                print_agent(&r.agent.context("empty response")?, j);
            }
            Agents::Resume { id } => {
                let r = client
                    .resume_agent(pb::ResumeAgentRequest { id })
                    .await?
                    .into_inner();
                print_agent(&r.agent.context("empty response")?, j);
            }
            Agents::Revoke { id, reason } => {
                let r = client
                    .revoke_agent(pb::RevokeAgentRequest { id, reason })
                    .await?
                    .into_inner();
                print_agent(&r.agent.context("empty response")?, j);
            }
        },
        Command::JoinToken(JoinToken::Create { agent_id, ttl }) => {
            let r = client
                .create_join_token(pb::CreateJoinTokenRequest {
                    agent_id,
                    ttl_seconds: ttl,
                })
                .await?
                .into_inner();
            if j {
                println!(
                    "{}",
                    json!({"join_token": r.join_token, "agent_id": r.agent_id, "expires_at": ts(r.expires_at.as_ref())})
                );
            } else {
                println!("{}", r.join_token);
                eprintln!(
                    "single use, for agent {}, expires {}",
                    r.agent_id,
                    ts(r.expires_at.as_ref())
                );
            }
        }
        Command::Policy(cmd) => match cmd {
            PolicyCmd::Validate { .. } => unreachable!("handled before connecting"),
            PolicyCmd::Apply {
                file,
                expect_version,
                dry_run,
            } => {
                let document = read_policy(&file)?;
                let r = client
                    .apply_policy(pb::ApplyPolicyRequest {
                        document,
                        expected_version: expect_version.unwrap_or(0),
                        dry_run,
                    })
                    .await?
                    .into_inner();
                if j {
                    println!(
                        "{}",
                        json!({"version": r.version, "changed": r.changed, "digest": r.digest, "tools": r.tools, "dry_run": dry_run})
                    );
                } else if dry_run {
                    println!(
                        "valid on the server ({} tools, digest {}); nothing stored",
                        r.tools,
                        &r.digest[..16]
                    );
                } else if r.changed {
                    println!(
                        "applied as version {} ({} tools, digest {})",
                        r.version,
                        r.tools,
                        &r.digest[..16]
                    );
                } else {
                    println!("unchanged: identical to version {}", r.version);
                }
            }
            PolicyCmd::Get { version } => {
                let r = client
                    .get_policy(pb::GetPolicyRequest {
                        version: version.unwrap_or(0),
                    })
                    .await?
                    .into_inner();
                let v = r.policy.context("empty response")?;
                if j {
                    println!(
                        "{}",
                        json!({"version": v.version, "digest": v.digest, "applied_by": v.applied_by, "applied_at": ts(v.applied_at.as_ref()), "tools": v.tools, "document": r.document})
                    );
                } else {
                    eprintln!(
                        "# version {} applied by {} at {}",
                        v.version,
                        v.applied_by,
                        ts(v.applied_at.as_ref())
                    );
                    print!("{}", r.document);
                }
            }
            PolicyCmd::History { limit } => {
                let r = client
                    .list_policy_versions(pb::ListPolicyVersionsRequest { limit })
                    .await?
                    .into_inner();
                if j {
                    let rows: Vec<_> = r.versions.iter().map(|v| json!({"version": v.version, "digest": v.digest, "applied_by": v.applied_by, "applied_at": ts(v.applied_at.as_ref()), "tools": v.tools})).collect();
                    println!("{}", serde_json::Value::Array(rows));
                } else {
                    println!(
                        "{:<8} {:<22} {:<16} {:>5}  DIGEST",
                        "VERSION", "APPLIED", "BY", "TOOLS"
                    );
                    for v in &r.versions {
                        println!("{}", version_line(v));
                    }
                }
            }
            PolicyCmd::Diff { file, version } => {
                let local = read_policy(&file)?;
                let r = client
                    .get_policy(pb::GetPolicyRequest {
                        version: version.unwrap_or(0),
                    })
                    .await?
                    .into_inner();
                let v = r.policy.context("empty response")?;
                let diff = similar::TextDiff::from_lines(&r.document, &local);
                let text = diff
                    .unified_diff()
                    .context_radius(3)
                    .header(
                        &format!("version {}", v.version),
                        &file.display().to_string(),
                    )
                    .to_string();
                if j {
                    println!(
                        "{}",
                        json!({"version": v.version, "identical": text.is_empty(), "diff": text})
                    );
                } else if text.is_empty() {
                    println!("{} is identical to version {}", file.display(), v.version);
                } else {
                    print!("{text}");
                }
            }
        },
        Command::Sidecars(SidecarsCmd::List) => {
            let r = client
                .list_sidecars(pb::ListSidecarsRequest {})
                .await?
                .into_inner();
            if j {
                let rows: Vec<_> = r
                    .sidecars
                    .iter()
                    .map(|s| json!({"agent_id": s.agent_id, "peer": s.peer, "connected_at": ts(s.connected_at.as_ref()),
                        "acked_version": s.acked_version, "acked_at": s.acked_at.as_ref().map(|t| ts(Some(t))),
                        "nacked_version": s.nacked_version, "nack_reason": s.nack_reason, "lag_seconds": s.lag_seconds,
                        "policy_version": s.policy_version, "policy_age_seconds": s.policy_age_seconds}))
                    .collect();
                println!(
                    "{}",
                    json!({"current_version": r.current_version, "current_policy_version": r.current_policy_version,
                        "sidecars": rows, "stream_endings": r.stream_endings})
                );
            } else {
                println!("policy in force: v{}", r.current_policy_version);
                println!(
                    "{:<20} {:<22} {:<16} {:<18} {:>6}  LAST NACK",
                    "AGENT", "CONNECTED", "ACKED", "POLICY", "LAG(s)"
                );
                for s in &r.sidecars {
                    let nack = if s.nack_reason.is_empty() {
                        "-".to_owned()
                    } else {
                        format!("v{}: {}", s.nacked_version, s.nack_reason)
                    };
                    println!(
                        "{:<20} {:<22} {:<16} {:<18} {:>6}  {nack}",
                        s.agent_id,
                        ts(s.connected_at.as_ref()),
                        s.acked_version,
                        if s.policy_age_seconds > 0 {
                            format!("v{} ({}s behind)", s.policy_version, s.policy_age_seconds)
                        } else {
                            format!("v{}", s.policy_version)
                        },
                        s.lag_seconds
                    );
                }
                if !r.stream_endings.is_empty() {
                    let mut e: Vec<_> = r
                        .stream_endings
                        .iter()
                        .map(|(k, v)| format!("{k}: {v}"))
                        .collect();
                    e.sort();
                    println!("stream endings: {}", e.join(", "));
                }
            }
        }
        Command::Grants(GrantsCmd::List { user, all }) => {
            let r = client
                .list_grants(pb::ListGrantsRequest { user_id: user, all })
                .await?
                .into_inner();
            for g in &r.grants {
                let grantee = if g.agent_id.is_empty() {
                    format!("type:{}", g.agent_type)
                } else {
                    format!("agent:{}", g.agent_id)
                };
                if j {
                    println!(
                        "{}",
                        json!({"id": g.id, "user_id": g.user_id, "agent_id": g.agent_id,
                               "agent_type": g.agent_type, "scopes": g.scopes,
                               "created_at": ts(g.created_at.as_ref()),
                               "expires_at": ts(g.expires_at.as_ref()),
                               "revoked_at": g.revoked_at.as_ref().map(|t| ts(Some(t))),
                               "revoked_by": g.revoked_by})
                    );
                } else {
                    let state = match &g.revoked_at {
                        Some(t) => format!("revoked {} by {}", ts(Some(t)), g.revoked_by),
                        None => format!("until {}", ts(g.expires_at.as_ref())),
                    };
                    println!(
                        "{}  {}  {}  {}  {}",
                        g.id,
                        g.user_id,
                        grantee,
                        g.scopes.join(" "),
                        state
                    );
                }
            }
            if !j && r.grants.is_empty() {
                eprintln!("no grants");
            }
        }
        Command::Grants(GrantsCmd::Revoke { grant_id, reason }) => {
            let r = client
                .revoke_grant(pb::RevokeGrantRequest { grant_id, reason })
                .await?
                .into_inner();
            let g = r.grant.unwrap_or_default();
            if j {
                println!(
                    "{}",
                    json!({"grant_id": g.id, "user_id": g.user_id, "sessions": r.session_ids})
                );
            } else {
                println!(
                    "revoked grant {} of {}; {} live session(s) ended{}",
                    g.id,
                    g.user_id,
                    r.session_ids.len(),
                    if r.session_ids.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", r.session_ids.join(" "))
                    }
                );
            }
        }
        Command::Sessions(Sessions::Revoke { session_id, reason }) => {
            let r = client
                .revoke_session(pb::RevokeSessionRequest { session_id, reason })
                .await?
                .into_inner();
            if j {
                println!(
                    "{}",
                    json!({"session_id": r.session_id, "agent_id": r.agent_id, "expires_at": ts(r.expires_at.as_ref())})
                );
            } else {
                println!(
                    "revoked session {} of agent {} (its token would have expired {})",
                    r.session_id,
                    r.agent_id,
                    ts(r.expires_at.as_ref())
                );
            }
        }
        Command::Approvals(cmd) => match cmd {
            ApprovalsCmd::List { state, limit } => {
                anyhow::ensure!((1..=1000).contains(&limit), "--limit must be 1 to 1000");
                let r = client
                    .list_approvals(pb::ListApprovalsRequest { state, limit })
                    .await?
                    .into_inner();
                if j {
                    println!(
                        "{}",
                        serde_json::Value::Array(r.approvals.iter().map(approval_json).collect())
                    );
                } else {
                    println!("{APPROVAL_HEADER}");
                    for a in &r.approvals {
                        println!("{}", approval_line(a));
                    }
                }
            }
            ApprovalsCmd::Show { id } => {
                let r = client
                    .get_approval(pb::GetApprovalRequest { id })
                    .await?
                    .into_inner();
                print_approval(&r.approval.context("empty response")?, j);
            }
            ApprovalsCmd::Approve { id, comment } => {
                let r = client
                    .decide_approval(pb::DecideApprovalRequest {
                        id,
                        approve: true,
                        comment,
                    })
                    .await?
                    .into_inner();
                print_approval(&r.approval.context("empty response")?, j);
            }
            ApprovalsCmd::Deny { id, reason } => {
                anyhow::ensure!(
                    !reason.trim().is_empty(),
                    "--reason must say why: the agent is told"
                );
                let r = client
                    .decide_approval(pb::DecideApprovalRequest {
                        id,
                        approve: false,
                        comment: reason,
                    })
                    .await?
                    .into_inner();
                print_approval(&r.approval.context("empty response")?, j);
            }
            ApprovalsCmd::Watch => {
                let mut feed = client
                    .watch_approvals(pb::WatchApprovalsRequest {})
                    .await?
                    .into_inner();
                if !j {
                    println!("{APPROVAL_HEADER}");
                }
                while let Some(item) = feed.message().await? {
                    let Some(a) = item.approval else { continue };
                    if j {
                        let mut v = approval_json(&a);
                        v["initial"] = json!(item.initial);
                        println!("{v}");
                    } else {
                        println!("{}", approval_line(&a));
                    }
                }
                anyhow::bail!("the control plane ended the watch (it is stopping); run it again");
            }
        },
        Command::Audit(cmd) => audit(&mut client, cmd, j).await?,
        // Run offline, above.
        Command::Guard(_) => {}
        Command::Keys(Keys::Rotate) => {
            let r = client
                .rotate_signing_key(pb::RotateSigningKeyRequest {})
                .await?
                .into_inner();
            if j {
                println!(
                    "{}",
                    json!({"kid": r.kid, "published_kids": r.published_kids})
                );
            } else {
                println!("active key: {}", r.kid);
                println!("published:  {}", r.published_kids.join(", "));
            }
        }
    }
    Ok(())
}

fn head_line(h: &pb::TreeHead) -> String {
    let when =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(h.timestamp_ms) * 1_000_000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| "-".into());
    let root = warden_shared::merkle::hex(&h.root_hash);
    format!("{:<10} {:<29} {:<16} {root}", h.size, when, h.key_id)
}

fn head_json(h: &pb::TreeHead) -> serde_json::Value {
    json!({
        "tree_size": h.size,
        "root_hash": warden_shared::merkle::hex(&h.root_hash),
        "timestamp_ms": h.timestamp_ms,
        "key_id": h.key_id,
    })
}

async fn audit(client: &mut ctl::audit::Client, cmd: AuditCmd, j: bool) -> anyhow::Result<()> {
    use ctl::audit as a;
    match cmd {
        AuditCmd::Query {
            agent,
            session,
            tool,
            outcome,
            kind,
            since,
            until,
            after,
            limit,
            follow,
        } => {
            anyhow::ensure!((1..=10_000).contains(&limit), "--limit must be 1 to 10000");
            let mut feed = client
                .query_audit(pb::QueryAuditRequest {
                    agent: agent.unwrap_or_default(),
                    session: session.unwrap_or_default(),
                    tool: tool.unwrap_or_default(),
                    outcome: outcome.unwrap_or_default(),
                    kind: kind.unwrap_or_default(),
                    since_ms: since.unwrap_or(0),
                    until_ms: until.unwrap_or(0),
                    after_position: after,
                    limit,
                    follow,
                })
                .await?
                .into_inner();
            if !j {
                println!("{}", a::ENTRY_HEADER);
            }
            while let Some(page) = feed.message().await? {
                for e in &page.entries {
                    if j {
                        println!("{}", a::entry_json(e));
                    } else {
                        println!("{}", a::entry_line(e));
                    }
                }
            }
            anyhow::ensure!(
                !follow,
                "the control plane ended the stream (it is stopping); run it again with --after"
            );
        }
        AuditCmd::Export { from, to } => {
            use std::io::Write;
            let mut feed = client
                .export_audit(pb::ExportAuditRequest {
                    from,
                    to: to.unwrap_or(0),
                })
                .await?
                .into_inner();
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            while let Some(page) = feed.message().await? {
                for e in page.entries {
                    out.write_all(&e.record)?;
                    out.write_all(b"\n")?;
                }
            }
            out.flush()?;
        }
        AuditCmd::Verify { key, archive } => {
            let keys = match key {
                Some(k) => a::Keys::load(&k)?,
                None => a::keys(client).await?,
            };
            let v = a::verify(client, &keys, archive.as_deref()).await?;
            if j {
                println!(
                    "{}",
                    json!({
                        "verified": v.finding.is_none(),
                        "entries": v.entries,
                        "heads": v.heads,
                        "uncovered": v.uncovered,
                        "pruned_below": v.pruned_below,
                        "heads_skipped": v.heads_skipped,
                        "finding": v.finding.as_ref().map(ToString::to_string),
                    })
                );
            }
            if let Some(f) = v.finding {
                anyhow::bail!("the audit log does NOT verify: {f}");
            }
            if !j {
                println!(
                    "verified: {} entries against {} signed heads; {} entries since the last signed head",
                    v.entries, v.heads, v.uncovered
                );
                if v.heads_skipped > 0 {
                    println!(
                        "entries below {} were pruned: {} earlier heads not checked (give --archive to check them)",
                        v.pruned_below, v.heads_skipped
                    );
                }
            }
        }
        AuditCmd::Prune { below, yes } => {
            anyhow::ensure!(
                yes,
                "prune deletes the entries below {below} from the control plane: archive them first (wardenctl audit export --to {below} > FILE), then run again with --yes"
            );
            let r = client
                .prune_audit(pb::PruneAuditRequest { below })
                .await?
                .into_inner();
            if j {
                println!("{}", json!({"below": r.below, "deleted": r.deleted}));
            } else {
                println!("pruned: {} entries below {}", r.deleted, r.below);
            }
        }
        AuditCmd::Prove {
            position,
            tree_size,
        } => {
            let p = a::prove(client, position, tree_size.unwrap_or(0)).await?;
            println!("{}", serde_json::to_string_pretty(&p)?);
        }
        AuditCmd::Consistency { old, new } => {
            let p = a::consistency(client, old, new).await?;
            println!("{}", serde_json::to_string_pretty(&p)?);
        }
        AuditCmd::Check { .. } => unreachable!("checked offline before connecting"),
        AuditCmd::Heads { from, limit } => {
            anyhow::ensure!((1..=10_000).contains(&limit), "--limit must be 1 to 10000");
            let r = client
                .list_tree_heads(pb::ListTreeHeadsRequest {
                    from_size: from,
                    limit,
                })
                .await?
                .into_inner();
            if j {
                println!(
                    "{}",
                    json!({"log_size": r.log_size, "heads": r.heads.iter().map(head_json).collect::<Vec<_>>()})
                );
            } else {
                println!("{:<10} {:<29} {:<16} ROOT", "SIZE", "SIGNED", "KEY");
                for h in &r.heads {
                    println!("{}", head_line(h));
                }
                println!("entries in the log: {}", r.log_size);
            }
        }
        AuditCmd::Sign => {
            let r = client
                .sign_tree_head(pb::SignTreeHeadRequest {})
                .await?
                .into_inner();
            let h = r.head.context("empty response")?;
            if j {
                println!("{}", head_json(&h));
            } else {
                println!("{}", head_line(&h));
            }
        }
        AuditCmd::Key => {
            let k = a::keys(client).await?;
            if j {
                println!("{}", serde_json::to_string_pretty(&k)?);
            } else {
                println!("log: {}", k.log_id);
                for key in &k.keys {
                    println!("{}  {}  {}", key.key_id, key.algorithm, key.public_key);
                }
            }
        }
    }
    Ok(())
}

fn cmd_of(cmd: &GuardCmd) -> ctl::guard::Cmd<'_> {
    match cmd {
        GuardCmd::Eval { corpus } => ctl::guard::Cmd::Eval { corpus },
        GuardCmd::Scan { file, secret_rules } => ctl::guard::Cmd::Scan {
            file,
            secret_rules: secret_rules.as_deref(),
        },
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(s) => {
                    let reason = warden_shared::refusal::reason_of(s)
                        .map(|r| format!(" [{r}]"))
                        .unwrap_or_default();
                    eprintln!("error: {:?}: {}{reason}", s.code(), s.message());
                }
                None => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}
