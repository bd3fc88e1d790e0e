//! `warden-sidecar`: parses flags and wires; see `app.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use warden_sidecar::app;
use warden_sidecar::config::{Config, env};

/// Exit code for a bad configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "warden-sidecar",
    version,
    about = "Warden sidecar: enrolls the agent's identity and serves its local API",
    after_help = "A sidecar without a valid certificate starts anyway, reports not ready on /readyz, \
                  and enrolls as soon as a join token is written to <data-dir>/join-token."
)]
struct Cli {
    /// TOML config file; flags and environment override it, and it may leave
    /// out control_plane, ca_bundle, agent_id and data_dir when they give them.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Control-plane URL, e.g. https://localhost:7443.
    #[arg(long, env = env::CONTROL_PLANE)]
    control_plane: Option<String>,
    /// PEM trust bundle to verify the control plane at enrollment.
    #[arg(long, env = env::CA_BUNDLE)]
    ca_bundle: Option<PathBuf>,
    /// The agent this sidecar serves.
    #[arg(long, env = env::AGENT_ID)]
    agent_id: Option<String>,
    /// SPIFFE trust domain.
    #[arg(long)]
    trust_domain: Option<String>,
    /// Identity and state directory (created 0700).
    #[arg(long, env = env::DATA_DIR)]
    data_dir: Option<PathBuf>,
    /// Join token for the first enrollment (prefer WARDEN_JOIN_TOKEN or the join-token file).
    #[arg(long, env = env::JOIN_TOKEN, hide_env_values = true)]
    join_token: Option<String>,
    /// Agent API address (loopback only).
    #[arg(long, env = env::LISTEN)]
    listen: Option<SocketAddr>,
    /// Serve the agent API on the Unix socket only (recommended on hosts shared with other users).
    #[arg(long)]
    no_tcp: bool,
    /// Agent API Unix socket (default <data-dir>/agent.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Health HTTP address (/healthz, /readyz).
    #[arg(long, env = env::HEALTH_LISTEN)]
    health_listen: Option<SocketAddr>,
    /// Serve MCP (streamable HTTP, at /mcp) on this loopback address, e.g. 127.0.0.1:7603.
    #[arg(long, value_name = "ADDR")]
    mcp_listen: Option<SocketAddr>,
    /// A program the policy may have this sidecar start as a stdio MCP server (absolute path; repeatable).
    #[arg(long = "mcp-command", value_name = "PATH")]
    mcp_commands: Vec<PathBuf>,
    /// Log format: text or json.
    #[arg(long, env = env::LOG_FORMAT)]
    log_format: Option<String>,
    /// Address for messages delivered by other agents' sidecars (mTLS), e.g. 0.0.0.0:7602.
    #[arg(long, value_name = "ADDR")]
    messaging_listen: Option<SocketAddr>,
    /// Where a peer agent's sidecar takes deliveries, as AGENT=HOST:PORT (repeatable).
    #[arg(long = "messaging-peer", value_name = "AGENT=HOST:PORT")]
    messaging_peers: Vec<String>,
}

fn build(cli: Cli) -> Result<Config, String> {
    // The file may leave out what flags or the environment give.
    let mut c = match &cli.config {
        Some(p) => Config::from_file(p).map_err(|e| e.to_string())?,
        None => Config::new("", PathBuf::new(), "", PathBuf::new()),
    };
    if let Some(v) = cli.control_plane {
        c.control_plane = v;
    }
    if let Some(v) = cli.ca_bundle {
        c.ca_bundle = v;
    }
    if let Some(v) = cli.agent_id {
        c.agent_id = v;
    }
    if let Some(v) = cli.trust_domain {
        c.trust_domain = v;
    }
    if let Some(v) = cli.data_dir {
        c.data_dir = v;
    }
    if let Some(v) = cli.join_token {
        c.join_token = Some(v);
    }
    if let Some(v) = cli.listen {
        c.listen = v;
    }
    if cli.no_tcp {
        c.tcp = false;
    }
    if let Some(v) = cli.socket {
        c.socket = Some(v);
    }
    if let Some(v) = cli.health_listen {
        c.health_listen = v;
    }
    if let Some(v) = cli.mcp_listen {
        c.mcp_listen = Some(v);
    }
    c.mcp_commands.extend(cli.mcp_commands);
    if let Some(v) = cli.log_format {
        c.log_format = v;
    }
    if let Some(v) = cli.messaging_listen {
        c.messaging.listen = Some(v);
    }
    for p in cli.messaging_peers {
        let (agent, addr) = p
            .split_once('=')
            .ok_or_else(|| format!("--messaging-peer {p:?}: give AGENT=HOST:PORT"))?;
        c.messaging.peers.insert(agent.to_owned(), addr.to_owned());
    }
    if let Some(key) = c.missing().first() {
        let flag = key.replace('_', "-");
        let var = match *key {
            "control_plane" => env::CONTROL_PLANE,
            "ca_bundle" => env::CA_BUNDLE,
            "agent_id" => env::AGENT_ID,
            _ => env::DATA_DIR,
        };
        return Err(format!(
            "missing --{flag}: give the flag, {var}, or `{key}` in the --config file"
        ));
    }
    c.validate().map_err(|e| e.to_string())?;
    Ok(c)
}

fn init_logs(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match build(Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logs(config.log_format == "json");
    tracing::info!(config = ?config, "effective configuration");
    let running = match app::start(config).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "sidecar failed to start");
            return ExitCode::FAILURE;
        }
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install SIGTERM handler");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    let gateway = std::sync::Arc::clone(running.api.gateway());
    let drained = tokio::time::timeout(Duration::from_secs(10), running.shutdown()).await;
    if drained.is_err() {
        // The drain ran out of time: the audit lines still go out.
        app::flush_audit(&gateway).await;
    }
    match drained {
        Ok(Ok(())) | Err(_) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!(error = format!("{e:#}"), "server error");
            ExitCode::FAILURE
        }
    }
}
