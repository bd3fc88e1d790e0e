//! What every service of the control plane shares ([`State`]).

use std::sync::Arc;

use tokio::sync::watch;
use warden_shared::spiffe::TrustDomain;

use crate::config::Config;
use crate::identity::ca::Ca;
use crate::identity::keys::KeyRing;
use crate::store::Store;

/// Everything a request handler needs.
#[derive(Debug)]
pub struct State {
    /// Settings.
    pub config: Config,
    /// Trust domain.
    pub td: TrustDomain,
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Certificate authority.
    pub ca: Ca,
    /// Token-signing keys.
    pub keys: KeyRing,
    /// Wakes the mesh streams a change concerns; the blocked-agents list.
    pub hub: Arc<crate::mesh::hub::Hub>,
    /// Turns true when the control plane stops: long-lived streams end so
    /// that the server can drain.
    pub stopping: watch::Sender<bool>,
    /// Open mesh streams.
    pub sidecars: Arc<crate::mesh::registry::Registry>,
    /// The latest policy version, parsed once for every stream.
    pub policy: crate::policy::InForce,
    /// Pairwise message keys.
    pub messaging: crate::a2a::Messaging,
    /// Approval requests as they are filed and decided, for whoever watches
    /// (`wardenctl approvals watch`).
    pub approval_events: tokio::sync::broadcast::Sender<Arc<crate::store::Approval>>,
    /// Approval notifications to webhooks.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// The tamper-evident audit log.
    pub audit: crate::audit::AuditLog,
    /// Trusted identity providers, for delegated sessions.
    pub delegation: crate::delegation::Delegation,
}

impl State {
    /// An approval request was filed, decided, used or cancelled: tell
    /// the watchers.
    pub fn approval_changed(&self, a: &crate::store::Approval) {
        // Nobody watching is not an error.
        let _ = self.approval_events.send(Arc::new(a.clone()));
    }

    /// An approval request was filed or decided: tell the watchers, and
    /// put the webhooks' notifications in the outbox (before the caller is
    /// answered, so that none is lost).
    pub async fn approval_event(&self, event: crate::webhooks::Event, a: &crate::store::Approval) {
        self.approval_changed(a);
        if let Err(e) = self
            .webhooks
            .notify(self.store.as_ref(), event, a, crate::now_unix())
            .await
        {
            tracing::error!(approval = %a.request.id, error = %e, "could not queue the approval's webhook notifications");
        }
    }

    /// Reloads the latest policy version from the store and wakes every
    /// stream. A stored document that no longer parses is logged and
    /// skipped (the previous one stays in force).
    pub async fn reload_policy(&self) -> anyhow::Result<()> {
        if self.policy.reload(self.store.as_ref()).await? {
            self.hub.global_changed();
        }
        Ok(())
    }

    /// The policy in force.
    pub fn current_policy(&self) -> Option<Arc<crate::policy::CurrentPolicy>> {
        self.policy.get()
    }

    /// How long a revoked or expired agent stays on the mesh-wide blocked
    /// list: until every certificate and token it held has expired.
    pub fn blocked_horizon(&self) -> i64 {
        i64::try_from(self.config.cert_ttl_secs).unwrap_or(i64::MAX / 2)
            + warden_shared::token::TOKEN_TTL_SECS
    }

    /// An agent's standing changed: its own streams are told at once (the
    /// kill switch), then every sidecar through the blocked list, in the
    /// background so that the admin's call returns without waiting for it.
    pub fn agent_standing_changed(self: &Arc<Self>, agent: &warden_shared::agent::AgentId) {
        self.messaging.agents_changed();
        self.hub.agent_changed(agent);
        let state = Arc::clone(self);
        tokio::spawn(async move {
            let (now, horizon) = (crate::now_unix(), state.blocked_horizon());
            if let Err(e) = state
                .hub
                .refresh_blocked(state.store.as_ref(), now, horizon)
                .await
            {
                // The periodic refresh retries.
                tracing::warn!(error = %e, "could not refresh the blocked-agents list");
            }
        });
    }
}
