//! `warden-control-plane`: parses flags and wires; see `app.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use warden_control_plane::config::{self, Config};
use warden_control_plane::{app, init, telemetry};

/// Exit code for a bad configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "warden-control-plane",
    version,
    about = "Warden control plane: CA, session-token issuer and admin API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a data directory: CA (or import one), config, first admin credential.
    Init {
        /// Data directory to create (0700).
        #[arg(long, env = config::env::DATA_DIR)]
        data_dir: PathBuf,
        /// SPIFFE trust domain, e.g. example.org.
        #[arg(long, default_value = "warden.local")]
        trust_domain: String,
        /// Name of the first admin (spiffe://<td>/admin/<name>).
        #[arg(long, default_value = "admin")]
        admin_name: String,
        /// Admin certificate lifetime in hours.
        #[arg(long, default_value_t = 168)]
        admin_ttl_hours: u64,
        /// Import this CA certificate (PEM) instead of creating a CA; needs --ca-key.
        #[arg(long, requires = "ca_key")]
        ca_cert: Option<PathBuf>,
        /// Private key (PEM) of the imported CA.
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        /// gRPC listen address written to the config.
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
        /// JWKS HTTP listen address written to the config.
        #[arg(long, default_value = "127.0.0.1:7480")]
        jwks_listen: SocketAddr,
        /// RFC 8693 token endpoint (HTTPS, agents' certificates) listen address written to the config.
        #[arg(long, default_value = "127.0.0.1:7444")]
        oauth_listen: SocketAddr,
    },
    /// Serve the gRPC API (mTLS) and the JWKS (HTTP) until SIGINT/SIGTERM.
    Serve {
        /// Data directory created by `init`.
        #[arg(long, env = config::env::DATA_DIR)]
        data_dir: PathBuf,
    },
    /// Issue another admin credential into a wardenctl config directory.
    IssueAdmin {
        /// Data directory created by `init`.
        #[arg(long, env = config::env::DATA_DIR)]
        data_dir: PathBuf,
        /// Admin name (spiffe://<td>/admin/<name>).
        #[arg(long)]
        name: String,
        /// Output directory (created 0700).
        #[arg(long)]
        out: PathBuf,
        /// Certificate lifetime in hours.
        #[arg(long, default_value_t = 168)]
        ttl_hours: u64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Init {
            data_dir,
            trust_domain,
            admin_name,
            admin_ttl_hours,
            ca_cert,
            ca_key,
            listen,
            jwks_listen,
            oauth_listen,
        } => {
            telemetry::init(false);
            let opts = init::InitOptions {
                data_dir: data_dir.clone(),
                trust_domain,
                admin_name,
                admin_ttl: Duration::from_secs(admin_ttl_hours * 3600),
                import_ca: ca_cert.zip(ca_key),
                listen,
                jwks_listen,
                oauth_listen,
            };
            match init::run(&opts) {
                Ok(c) => {
                    println!(
                        "initialised {} for trust domain {}",
                        data_dir.display(),
                        c.trust_domain
                    );
                    println!(
                        "admin credential: {}/admin (use: wardenctl --config-dir {}/admin ...)",
                        data_dir.display(),
                        data_dir.display()
                    );
                    println!(
                        "next: warden-control-plane serve --data-dir {}",
                        data_dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        Command::Serve { data_dir } => {
            let config = match Config::load(&data_dir) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            telemetry::init(config.log_format == "json");
            tracing::info!(config = ?config, "effective configuration");
            let running = match app::start(config).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "control plane failed to start");
                    return ExitCode::FAILURE;
                }
            };
            wait_for_signal().await;
            tracing::info!("shutting down");
            match tokio::time::timeout(Duration::from_secs(10), running.shutdown()).await {
                Ok(Ok(())) => ExitCode::SUCCESS,
                Ok(Err(e)) => {
                    tracing::error!(error = format!("{e:#}"), "server error");
                    ExitCode::FAILURE
                }
                Err(_) => {
                    tracing::warn!("drain grace period elapsed");
                    ExitCode::SUCCESS
                }
            }
        }
        Command::IssueAdmin {
            data_dir,
            name,
            out,
            ttl_hours,
        } => {
            telemetry::init(false);
            let result = (|| -> anyhow::Result<()> {
                let config = Config::load(&data_dir)?;
                let td = warden_shared::spiffe::TrustDomain::new(&config.trust_domain)?;
                let ca = warden_control_plane::identity::ca::Ca::load(&td, &data_dir.join("ca"))?;
                init::issue_admin(
                    &ca,
                    &name,
                    Duration::from_secs(ttl_hours * 3600),
                    &out,
                    &config,
                )
            })();
            match result {
                Ok(()) => {
                    println!("admin credential for {name} written to {}", out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
    }
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
