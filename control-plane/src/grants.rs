//! Users' consent grants as the services use them: stored when a user
//! consents, revoked by the user or an admin. Revoking a grant revokes the
//! live sessions issued under it and pushes that to the sidecars through
//! the kill-switch path (as `RevokeSession` does), so their tokens are
//! refused within the revocation figures.

use std::collections::BTreeSet;

use base64::Engine;
use rand::RngCore;
use warden_shared::audit::ActorKind;

use crate::state::State;
use crate::store::{self, Grant, Grantee};

/// A new grant id.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    format!(
        "gr_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

/// Whom a grant names, for pages, logs and the audit.
pub fn grantee_text(g: &Grantee) -> String {
    match g {
        Grantee::Agent(a) => format!("agent {a}"),
        Grantee::AgentType(t) => format!("agents of type {t}"),
    }
}

fn audit_fill(e: &mut warden_shared::audit::Event, g: &Grant) {
    e.user.clone_from(&g.user_id);
    if let Grantee::Agent(a) = &g.grantee {
        e.agent = a.to_string();
    }
    e.outcome = "ok".into();
    e.detail.insert("grant".into(), g.id.clone());
    e.detail.insert("grantee".into(), grantee_text(&g.grantee));
    e.detail.insert("scopes".into(), g.scopes.join(" "));
    e.detail
        .insert("expires_at".into(), g.expires_at.to_string());
}

/// Stores a grant the user just gave, and records it.
pub async fn give(state: &State, g: &Grant) -> Result<(), store::Error> {
    state.store.insert_grant(g).await?;
    state.delegation.grants.forget_user(&g.user_id);
    tracing::info!(grant = %g.id, user = %g.user_id, grantee = %grantee_text(&g.grantee), scopes = %g.scopes.join(" "), "consent granted");
    let mut e = crate::audit::event("grant.given", ActorKind::Human, &g.user_id);
    audit_fill(&mut e, g);
    state.audit.note(e).await;
    Ok(())
}

/// Who revokes a grant.
#[derive(Debug, Clone, Copy)]
pub enum By<'a> {
    /// The grant's user, from the grants page.
    User(&'a str),
    /// An admin, by name.
    Admin(&'a str),
}

/// Revokes a live grant (only `user`'s own when the user revokes) and the
/// sessions issued under it; the grant and the ended session ids, `None`
/// when there is no such live grant.
pub async fn revoke(
    state: &State,
    id: &str,
    by: By<'_>,
    reason: &str,
) -> Result<Option<(Grant, Vec<String>)>, store::Error> {
    let (only_user, who, actor) = match by {
        By::User(u) => (Some(u), format!("user:{u}"), u),
        By::Admin(a) => (None, format!("admin:{a}"), a),
    };
    let now = crate::now_unix();
    let Some((grant, sessions)) = state.store.revoke_grant(id, only_user, &who, now).await? else {
        return Ok(None);
    };
    state.delegation.grants.forget(&grant.id);
    // The kill switch: each agent's streams are told at once.
    let agents: BTreeSet<_> = sessions.iter().map(|(_, a)| a.clone()).collect();
    for a in &agents {
        state.hub.agent_changed(a);
    }
    let ids: Vec<String> = sessions.into_iter().map(|(s, _)| s).collect();
    tracing::warn!(grant = %grant.id, by = %who, sessions = ids.len(), "consent grant revoked");
    let mut e = crate::audit::event("grant.revoked", ActorKind::Human, actor);
    audit_fill(&mut e, &grant);
    e.detail.insert("revoked_by".into(), who);
    e.detail.insert("sessions".into(), ids.join(" "));
    if !reason.is_empty() {
        e.detail.insert("reason".into(), reason.to_owned());
    }
    state.audit.note(e).await;
    Ok(Some((grant, ids)))
}
