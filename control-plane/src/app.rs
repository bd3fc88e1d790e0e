//! Builds and runs the control plane: store, CA, key ring, gRPC services on
//! one mTLS listener, JWKS over HTTP, health reporting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use warden_shared::proto::v1::admin_service_server::AdminServiceServer;
use warden_shared::proto::v1::approval_service_server::ApprovalServiceServer;
use warden_shared::proto::v1::audit_service_server::AuditServiceServer;
use warden_shared::proto::v1::identity_service_server::IdentityServiceServer;
use warden_shared::spiffe::TrustDomain;

use crate::api::admin::AdminApi;
use crate::api::approval::ApprovalApi;
use crate::api::audit::AuditApi;
use crate::api::identity::IdentityApi;
use crate::api::mesh::MeshApi;
use crate::config::Config;
use crate::identity::ca::Ca;
use crate::identity::keys::KeyRing;
use crate::store::SqliteStore;
use warden_shared::proto::v1::mesh_service_server::MeshServiceServer;

pub use crate::policy::CurrentPolicy;
pub use crate::state::State;

/// Largest gRPC message accepted.
pub const MAX_MESSAGE_BYTES: usize = 2 * 1024 * 1024;
/// Approval events kept for a slow watcher before it misses some.
const APPROVAL_EVENTS: usize = 1024;

/// A running control plane.
#[derive(Debug)]
pub struct Running {
    /// Bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// Bound JWKS address (and the consent pages).
    pub jwks_addr: SocketAddr,
    /// Bound token endpoint address (HTTPS).
    pub oauth_addr: SocketAddr,
    /// Shared state (tests inspect the store and keys through it).
    pub state: Arc<State>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

/// Path of the database file inside the data directory.
pub fn db_path(config: &Config) -> std::path::PathBuf {
    config.data_dir.join("warden.db")
}

/// Opens the state of an initialised data directory.
pub async fn open_state(config: Config) -> anyhow::Result<State> {
    let td = TrustDomain::new(&config.trust_domain)?;
    let ca = Ca::load(&td, &config.data_dir.join("ca")).context("loading the CA")?;
    let store = SqliteStore::open(&db_path(&config), config.durable_sync)
        .await
        .context("opening the store")?;
    let keys = KeyRing::load(&store, crate::now_unix())
        .await
        .context("loading signing keys")?;
    let (stopping, _) = watch::channel(false);
    let messaging = crate::a2a::Messaging::new(
        crate::a2a::load_or_create(&config.data_dir).context("loading the messaging secret")?,
    );
    let webhooks = Arc::new(
        crate::webhooks::Webhooks::load(&config.approval_webhooks)
            .context("loading approval_webhooks")?,
    );
    let delegation =
        crate::delegation::Delegation::load(&config.identity_providers, &config.public_url())
            .context("loading identity_providers")?;
    let store: Arc<dyn crate::store::Store> = Arc::new(store);
    let audit = crate::audit::AuditLog::open(
        Arc::clone(&store),
        td.to_string(),
        Duration::from_secs(u64::from(config.audit_head_interval_secs)),
    )
    .await
    .context("opening the audit log")?;
    let state = State {
        config,
        td,
        store,
        ca,
        keys,
        hub: Arc::default(),
        stopping,
        sidecars: Arc::default(),
        policy: crate::policy::InForce::default(),
        messaging,
        approval_events: tokio::sync::broadcast::channel(APPROVAL_EVENTS).0,
        webhooks,
        audit,
        delegation,
    };
    state
        .reload_policy()
        .await
        .context("loading the current policy")?;
    state
        .hub
        .refresh_blocked(
            state.store.as_ref(),
            crate::now_unix(),
            state.blocked_horizon(),
        )
        .await
        .context("loading the blocked agents")?;
    Ok(state)
}

/// Starts serving; returns once both listeners are bound.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let state = Arc::new(open_state(config).await?);
    let config = &state.config;

    // A fresh server certificate each start: short-lived, key only in memory.
    let server = state.ca.issue(
        &state.td.control_plane(),
        &config.server_names,
        &[std::net::IpAddr::from([127, 0, 0, 1])],
        true,
        Duration::from_secs(30 * 86_400),
    )?;
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&server.cert_pem, &server.key_pem))
        .client_ca_root(Certificate::from_pem(state.ca.cert_pem()))
        // Enroll is the one call without a client certificate; every other
        // handler demands one (auth.rs). A presented certificate must still
        // chain to our CA or the handshake fails.
        .client_auth_optional(true)
        .timeout(Duration::from_secs(10));

    let grpc = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let jwks = TcpListener::bind(config.jwks_listen)
        .await
        .with_context(|| format!("binding {}", config.jwks_listen))?;
    let grpc_addr = grpc.local_addr()?;
    let jwks_addr = jwks.local_addr()?;
    let oauth = TcpListener::bind(config.oauth_listen)
        .await
        .with_context(|| format!("binding {}", config.oauth_listen))?;
    let oauth_addr = oauth.local_addr()?;
    let oauth_tls = crate::token_exchange::server_tls(&state, &server.cert_pem, &server.key_pem)
        .context("the token endpoint's TLS settings")?;
    state
        .delegation
        .listening(config.public_url.is_some(), jwks_addr);

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AdminServiceServer<AdminApi>>()
        .await;
    health_reporter
        .set_serving::<IdentityServiceServer<IdentityApi>>()
        .await;
    health_reporter
        .set_serving::<MeshServiceServer<MeshApi>>()
        .await;
    health_reporter
        .set_serving::<ApprovalServiceServer<ApprovalApi>>()
        .await;
    health_reporter
        .set_serving::<AuditServiceServer<AuditApi>>()
        .await;

    let (shutdown, rx) = watch::channel(false);
    let admin = AdminServiceServer::new(AdminApi::new(Arc::clone(&state)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let identity = IdentityServiceServer::new(IdentityApi::new(Arc::clone(&state)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mesh = MeshServiceServer::new(MeshApi::new(Arc::clone(&state)));
    let approval = ApprovalServiceServer::new(ApprovalApi::new(Arc::clone(&state)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let audit = AuditServiceServer::new(AuditApi::new(Arc::clone(&state)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES * 16);
    let mut stop = rx.clone();
    let grpc_task = tokio::spawn(async move {
        Server::builder()
            .tls_config(tls)?
            .concurrency_limit_per_connection(256)
            .layer(warden_shared::edge::reasoned_refusals())
            .add_service(health_service)
            .add_service(admin)
            .add_service(identity)
            .add_service(mesh)
            .add_service(approval)
            .add_service(audit)
            .serve_with_incoming_shutdown(
                // Small responses must not wait on Nagle + delayed ACK (40 ms).
                tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            )
            .await?;
        Ok(())
    });
    let jwks_task = tokio::spawn(crate::jwks::serve(jwks, Arc::clone(&state), rx.clone()));
    let oauth_task = tokio::spawn(crate::token_exchange::serve(
        oauth,
        oauth_tls,
        Arc::clone(&state),
        rx.clone(),
    ));
    let prune_task = tokio::spawn(prune(Arc::clone(&state), rx.clone()));
    let blocked_task = tokio::spawn(refresh_blocked(Arc::clone(&state), rx.clone()));
    let exporter_stop = rx.clone();
    let webhooks_task = tokio::spawn({
        let (hooks, store) = (Arc::clone(&state.webhooks), Arc::clone(&state.store));
        async move {
            hooks.run(store, rx).await;
            Ok(())
        }
    });
    let mut tasks = vec![
        grpc_task,
        jwks_task,
        oauth_task,
        prune_task,
        blocked_task,
        webhooks_task,
    ];
    if let Some(c) = &config.audit_otlp {
        let exporter =
            crate::otlp::Exporter::load(c, &config.trust_domain).map_err(|e| anyhow::anyhow!(e))?;
        let (store, grown, stop) = (
            Arc::clone(&state.store),
            state.audit.size.clone(),
            exporter_stop,
        );
        tasks.push(tokio::spawn(async move {
            exporter.run(store, grown, stop).await;
            Ok(())
        }));
    }
    tracing::info!(%grpc_addr, %jwks_addr, %oauth_addr, trust_domain = %state.td, "control plane serving");
    Ok(Running {
        grpc_addr,
        jwks_addr,
        oauth_addr,
        state,
        shutdown,
        tasks,
    })
}

/// How often the blocked list is read again: identities expire and revoked
/// agents age out without an admin action.
const BLOCKED_REFRESH: Duration = Duration::from_secs(30);

/// Keeps the blocked-agents list current, until `stop`.
async fn refresh_blocked(state: Arc<State>, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(BLOCKED_REFRESH) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        let now = crate::now_unix();
        match state
            .hub
            .refresh_blocked(state.store.as_ref(), now, state.blocked_horizon())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(changed = n, "blocked-agents list changed"),
            Err(e) => {
                tracing::warn!(error = %e, "could not refresh the blocked-agents list; will retry")
            }
        }
    }
}

/// Deletes records past their retention, hourly, until `stop`.
async fn prune(state: Arc<State>, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let days = i64::from(state.config.retention_days);
    if days == 0 {
        return Ok(());
    }
    loop {
        let before = crate::now_unix() - days * 86_400;
        match state.store.prune(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "pruned records past retention"),
            Err(e) => tracing::warn!(error = %e, "pruning failed; will retry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
}

impl Running {
    /// Stops accepting, drains in-flight calls, and waits for the servers.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.state.stopping.send(true);
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            t.await??;
        }
        // What the last calls recorded is covered by a signed head.
        self.state.audit.sign().await?;
        Ok(())
    }
}
