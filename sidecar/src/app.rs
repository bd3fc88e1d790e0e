//! Builds and runs the sidecar: identity manager, control-plane client,
//! token authenticator, agent API on TCP and a Unix socket, health.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use warden_shared::agent::AgentId;
use warden_shared::proto::v1::agent_service_server::AgentServiceServer;
use warden_shared::proto::v1::messaging_peer_service_server::MessagingPeerServiceServer;
use warden_shared::proto::v1::messaging_service_server::MessagingServiceServer;
use warden_shared::spiffe::TrustDomain;

use crate::api::{AgentApi, RequireAgentHeader};
use crate::config::Config;
use crate::cp::ControlPlane;
use crate::gateway::authenticate::Authenticator;
use crate::identity::rotation::Manager;

/// How often the JWKS is refetched even without an unknown key id.
const JWKS_REFRESH: std::time::Duration = std::time::Duration::from_secs(300);

/// Largest agent request accepted.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// A running sidecar.
#[derive(Debug)]
pub struct Running {
    /// Bound agent API address (`None` with TCP turned off).
    pub agent_addr: Option<SocketAddr>,
    /// Bound MCP front door address (`None` unless `mcp_listen` is set).
    pub mcp_addr: Option<SocketAddr>,
    /// Agent API Unix socket.
    pub socket_path: PathBuf,
    /// Bound health address.
    pub health_addr: SocketAddr,
    /// The data directory (identity under `identity/`).
    pub data_dir: PathBuf,
    /// The identity manager.
    pub identity: Arc<Manager>,
    /// The agent API (tests and benches call it directly too).
    pub api: AgentApi,
    /// The token authenticator.
    pub auth: Arc<Authenticator>,
    /// Bound address for deliveries from other sidecars (mTLS), if any.
    pub messaging_addr: Option<SocketAddr>,
    /// Signs and verifies the agent's messages.
    pub messenger: Arc<crate::a2a::Messenger>,
    /// Verified messages waiting for the agent.
    pub inbox: Arc<crate::a2a::inbox::Inbox>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

/// Starts the sidecar; returns once every listener is bound. A sidecar
/// without a valid certificate still starts (and reports not ready).
pub async fn start(config: Config) -> anyhow::Result<Running> {
    config.validate()?;
    let td = TrustDomain::new(&config.trust_domain)?;
    let agent = AgentId::new(&config.agent_id)?;
    let expected = td.agent(&agent);
    let identity = Manager::start(config.clone(), expected.clone()).await?;
    let cp = Arc::new(ControlPlane::new(
        config.control_plane.clone(),
        Arc::clone(&identity),
    ));
    let state = Arc::new(crate::state::State::new(config.max_policy_age_secs));
    let auth = Arc::new(Authenticator::new(
        td.control_plane().to_string(),
        expected.to_string(),
        Some(config.data_dir.join("ended-sessions.json")),
        Arc::clone(&state),
    ));
    // Unknown key ids ask the mesh module for a JWKS fetch: wired before
    // any server starts (the task that answers starts below).
    let (keys_tx, keys_rx) = tokio::sync::mpsc::channel(crate::mesh::keys::QUEUE);
    auth.set_key_refresh(keys_tx);
    // Enforce the last acknowledged state at once, even with the control
    // plane away; a tampered snapshot is refused.
    let snapshots = crate::mesh::SnapshotFile::new(&config.data_dir);
    match snapshots.load() {
        Ok(Some(push)) if push.standing.is_none() => {
            tracing::error!(
                "persisted mesh snapshot is incomplete (no standing); waiting for the control plane"
            )
        }
        Ok(Some(push)) => {
            match crate::mesh::apply_at(auth.state(), auth.agent_id(), &push, crate::now_ms()) {
                Ok(()) => {
                    tracing::info!(version = push.version, "loaded the persisted mesh snapshot")
                }
                Err(reason) => {
                    tracing::error!(%reason, "persisted mesh snapshot is unusable; waiting for the control plane")
                }
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(error = %e, "persisted mesh snapshot refused; waiting for the control plane")
        }
    }
    // One Redis connection (and breaker) for the limiter and the replay
    // cache.
    let redis = match &config.redis {
        Some(r) => Some(Arc::new(
            crate::infra::redis::Redis::new(r).map_err(anyhow::Error::msg)?,
        )),
        None => None,
    };
    let limiter = match &redis {
        Some(r) => crate::gateway::limit::Limiter::with_redis(
            crate::gateway::limit::redis::RedisLimiter::on(Arc::clone(r)),
        ),
        None => crate::gateway::limit::Limiter::default(),
    };
    let m = &config.messaging;
    let replay = match (&redis, m.replay_cache) {
        (Some(r), crate::config::ReplayCacheKind::Redis) => {
            crate::a2a::replay::ReplayCache::Redis {
                redis: Arc::clone(r),
                on_failure: m.on_redis_failure,
                fallback: crate::a2a::replay::Local::new(m.replay_cache_max),
                fallbacks: std::sync::atomic::AtomicU64::new(0),
            }
        }
        _ => crate::a2a::replay::ReplayCache::Local(crate::a2a::replay::Local::new(
            m.replay_cache_max,
        )),
    };
    let a = &config.audit;
    let spool_dir = config.data_dir.join("audit-spool");
    let spool = crate::infra::spool::Spool::open(
        &spool_dir,
        a.spool_max_bytes,
        match a.sync {
            crate::config::AuditSync::Interval => crate::infra::spool::Sync::Every(
                std::time::Duration::from_millis(a.sync_interval_ms),
            ),
            crate::config::AuditSync::Strict => crate::infra::spool::Sync::Strict,
        },
    )
    .with_context(|| format!("opening the audit spool {}", spool_dir.display()))?;
    // Tool calls and messages write through one sink: one rule for a full
    // spool, one count of lost events.
    let sink = Arc::new(crate::infra::audit::Sink::new(
        Arc::clone(&spool),
        a.on_full,
        a.sync == crate::config::AuditSync::Strict,
    ));
    let messenger = Arc::new(
        crate::a2a::Messenger::new(td.clone(), agent.clone(), Arc::clone(auth.state()), replay)
            .with_sink(Arc::clone(&sink)),
    );
    let inbox = Arc::new(crate::a2a::inbox::Inbox::new(
        m.inbox_capacity,
        m.inbox_max_bytes,
    ));
    let peer_tls = Arc::new(crate::a2a::peer::PeerTls::new(Arc::clone(&identity)));
    let peers = Arc::new(crate::a2a::peer::PeerClient::new(
        Arc::clone(&peer_tls),
        m.peers.clone().into_iter().collect(),
    ));
    let journal = config.data_dir.join("session-calls");
    let gateway = Arc::new(
        crate::gateway::pipeline::Gateway::new(Arc::clone(&auth), limiter)
            .with_desk(crate::gateway::approve::Desk::new(
                Arc::clone(&cp),
                Arc::clone(auth.state()),
            ))
            .with_call_journal(&journal)
            .with_context(|| format!("opening {}", journal.display()))?
            .with_audit_spool(sink),
    );
    gateway.executor.mcp.allow_commands(&config.mcp_commands);
    let api = AgentApi::new(
        Arc::clone(&identity),
        Arc::clone(&cp),
        Arc::clone(&auth),
        Arc::clone(&gateway),
    );
    if identity.snapshot().valid(crate::now_unix()).is_some()
        && let Err(e) = crate::mesh::keys::fetch(&cp, auth.state()).await
    {
        tracing::warn!(error = %e, "initial JWKS fetch failed; will retry on first token");
    }

    let tcp = match config.tcp {
        true => Some(
            TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("binding {}", config.listen))?,
        ),
        false => None,
    };
    let agent_addr = tcp.as_ref().map(TcpListener::local_addr).transpose()?;
    let socket_path = config.socket_path();
    // A stale socket from a previous run would make bind fail.
    let _ = std::fs::remove_file(&socket_path);
    let uds = UnixListener::bind(&socket_path)
        .with_context(|| format!("binding {}", socket_path.display()))?;
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))?;
    let health = TcpListener::bind(config.health_listen)
        .await
        .with_context(|| format!("binding {}", config.health_listen))?;
    let health_addr = health.local_addr()?;

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let (shutdown, rx) = watch::channel(false);
    let svc = tonic::service::interceptor::InterceptedService::new(
        AgentServiceServer::new(api.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
        RequireAgentHeader,
    );
    let messaging_svc = tonic::service::interceptor::InterceptedService::new(
        MessagingServiceServer::new(crate::a2a::service::MessagingApi::new(
            Arc::clone(&auth),
            Arc::clone(&identity),
            Arc::clone(&messenger),
            Arc::clone(&inbox),
            peers,
            rx.clone(),
        ))
        .max_decoding_message_size(MAX_MESSAGE_BYTES + 64 * 1024),
        RequireAgentHeader,
    );
    let mut tasks: Vec<JoinHandle<anyhow::Result<()>>> = Vec::new();
    let messaging_addr = match m.listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding messaging.listen {addr}"))?;
            let bound = l.local_addr()?;
            let incoming = crate::a2a::peer::incoming(l, peer_tls, rx.clone());
            let peer_svc = MessagingPeerServiceServer::new(crate::a2a::service::PeerApi::new(
                Arc::clone(&messenger),
                Arc::clone(&inbox),
            ))
            .max_decoding_message_size(MAX_MESSAGE_BYTES + 64 * 1024);
            let mut stop = rx.clone();
            tasks.push(tokio::spawn(async move {
                Server::builder()
                    .concurrency_limit_per_connection(16)
                    .max_concurrent_streams(16)
                    // Unread request data buffered per connection.
                    .initial_connection_window_size(256 * 1024)
                    .initial_stream_window_size(256 * 1024)
                    // Idle senders give their slot back, and a peer cannot
                    // keep one forever.
                    .max_connection_age(std::time::Duration::from_secs(300))
                    .timeout(crate::a2a::peer::DELIVER_TIMEOUT)
                    .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
                    .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
                    // Deliveries being decoded and verified at once, over all
                    // connections: bounds the memory bodies can take.
                    .layer(tower::limit::GlobalConcurrencyLimitLayer::new(64))
                    .layer(warden_shared::edge::reasoned_refusals())
                    .add_service(peer_svc)
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::ReceiverStream::new(incoming),
                        async move {
                            let _ = stop.wait_for(|s| *s).await;
                        },
                    )
                    .await?;
                Ok(())
            }));
            Some(bound)
        }
        None => None,
    };
    let listeners = tcp
        .map(Incoming::Tcp)
        .into_iter()
        .chain([Incoming::Unix(uds)]);
    for incoming in listeners {
        let svc = svc.clone();
        let messaging_svc = messaging_svc.clone();
        let health_service = health_service.clone();
        let mut stop = rx.clone();
        tasks.push(tokio::spawn(async move {
            let router = Server::builder()
                // Bounds what one agent connection can have in flight.
                .concurrency_limit_per_connection(64)
                .layer(warden_shared::edge::reasoned_refusals())
                .add_service(health_service)
                .add_service(svc)
                .add_service(messaging_svc);
            let signal = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            match incoming {
                Incoming::Tcp(l) => {
                    router
                        .serve_with_incoming_shutdown(
                            tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true)),
                            signal,
                        )
                        .await?
                }
                Incoming::Unix(l) => {
                    router
                        .serve_with_incoming_shutdown(
                            tokio_stream::wrappers::UnixListenerStream::new(l),
                            signal,
                        )
                        .await?
                }
            }
            Ok(())
        }));
    }
    let stats = Arc::new(crate::mesh::MeshStats::default());
    let h = crate::health::Health {
        identity: Arc::clone(&identity),
        auth: Arc::clone(&auth),
        stats: Arc::clone(&stats),
        gateway: Arc::clone(&gateway),
    };
    tasks.push(tokio::spawn(crate::health::serve_http(
        health,
        h.clone(),
        rx.clone(),
    )));
    let rx2 = rx.clone();
    tasks.push(tokio::spawn(async move {
        crate::health::track(reporter, h, rx2).await;
        Ok(())
    }));
    // The audit spool drains to the control plane's log.
    tasks.push(tokio::spawn({
        let (spool, cp, stop) = (Arc::clone(&spool), Arc::clone(&cp), rx.clone());
        async move {
            crate::cp::ship::run(spool, cp, stop).await;
            Ok(())
        }
    }));
    // Unknown key ids ask for a fetch; the periodic one also drops keys
    // the control plane no longer publishes.
    let keys = crate::mesh::keys::run(
        Arc::clone(&identity),
        Arc::clone(&cp),
        Arc::clone(auth.state()),
        keys_rx,
        rx.clone(),
        JWKS_REFRESH,
    );
    tasks.push(tokio::spawn(async move {
        keys.await;
        Ok(())
    }));
    let stats5 = Arc::clone(&stats);
    let (id5, cp5, auth5, rx5) = (
        Arc::clone(&identity),
        Arc::clone(&cp),
        Arc::clone(&auth),
        rx.clone(),
    );
    tasks.push(tokio::spawn(async move {
        crate::mesh::run(
            id5,
            cp5,
            Arc::clone(auth5.state()),
            auth5.agent_id().to_owned(),
            snapshots,
            stats5,
            rx5,
        )
        .await;
        Ok(())
    }));
    let (id3, rx3) = (Arc::clone(&identity), rx.clone());
    tasks.push(tokio::spawn(async move {
        id3.run(rx3).await;
        Ok(())
    }));
    let mcp_addr = match config.mcp_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            let local = l.local_addr()?;
            let secret = crate::mcp::oauth::client_secret(&config.data_dir)
                .context("the MCP client secret")?;
            let issuer = crate::mcp::oauth::Issuer::new(Arc::clone(&auth), Arc::clone(&cp), secret);
            let server = Arc::new(
                crate::mcp::McpServer::new(Arc::clone(&gateway), Arc::clone(&identity), local)
                    .with_issuer(issuer),
            );
            tasks.push(tokio::spawn(crate::mcp::serve(l, server, rx.clone())));
            Some(local)
        }
        None => None,
    };
    tracing::info!(agent_addr = ?agent_addr, mcp_addr = ?mcp_addr, messaging_addr = ?messaging_addr, socket = %socket_path.display(), %health_addr, spiffe_id = %expected, "sidecar serving");
    Ok(Running {
        agent_addr,
        mcp_addr,
        socket_path,
        health_addr,
        data_dir: config.data_dir.clone(),
        identity,
        api,
        auth,
        messaging_addr,
        messenger,
        inbox,
        shutdown,
        tasks,
    })
}

enum Incoming {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Running {
    /// Stops and drains.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        let mut first_error = None;
        for t in self.tasks {
            let r = t.await.map_err(anyhow::Error::from).and_then(|r| r);
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        let _ = std::fs::remove_file(&self.socket_path);
        // Every decision made is written before the process goes on.
        flush_audit(self.api.gateway()).await;
        first_error.map_or(Ok(()), Err)
    }
}

/// Waits until every queued audit line is written (off the runtime).
pub async fn flush_audit(gateway: &Arc<crate::gateway::pipeline::Gateway>) {
    let gateway = Arc::clone(gateway);
    match tokio::task::spawn_blocking(move || gateway.recorder.flush()).await {
        Ok(true) => {}
        _ => tracing::error!("the audit writer is gone; queued lines may be lost"),
    }
}
