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
    about = "Administer a Warden mesh: agents, join tokens, signing keys"
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

async fn run(cli: Cli) -> anyhow::Result<()> {
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
