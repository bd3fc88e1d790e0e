//! Starting a session: the token comes from the control plane, which
//! grants the requested scopes that the agent's allowance covers. Both
//! front doors start sessions here: the agent API's `StartSession` and the
//! MCP front door's OAuth token endpoint.

use tonic::Status;
use warden_shared::proto::v1 as pb;
use warden_shared::refusal::{Reason, status};

use super::authenticate::{self, Authenticator, auth_status};
use crate::cp::ControlPlane;
use crate::now_unix;

/// A control plane failure as the agent should see it: a refusal from the
/// control plane carries its own code, message and reason, written for the
/// caller, and is passed on; anything without a reason is a transport
/// failure between sidecar and control plane.
pub fn forward(s: Status) -> Status {
    if warden_shared::refusal::reason_of(&s).is_some() {
        return s;
    }
    tracing::warn!(code = ?s.code(), error = %s.message(), "control plane call failed");
    status(
        Reason::ControlPlaneUnavailable,
        "the control plane is unreachable; retry later",
    )
}

/// Asks the control plane for a session token for this sidecar's agent.
/// With `wait_for_approval`, privileged scopes waiting for people are
/// waited for (the decision arrives over the mesh stream, up to the
/// request's deadline) before the session starts.
pub async fn start(
    auth: &Authenticator,
    cp: &ControlPlane,
    mut req: pb::IssueTokenRequest,
) -> Result<pb::IssueTokenResponse, Status> {
    // An expiry or a revocation is final: refuse without asking. (A
    // suspension is left to the control plane, which also knows about a
    // resume that has not reached this sidecar yet.)
    let held = auth.state().held();
    if let Some(e) = held.expires_at.filter(|e| *e <= now_unix()) {
        return Err(auth_status(&authenticate::Error::AgentExpired(e)));
    }
    if let Some((true, reason)) = held.blocked.clone() {
        return Err(auth_status(&authenticate::Error::AgentBlocked {
            revoked: true,
            reason,
        }));
    }
    let mut client = cp.identity_client()?;
    let mut resp = client
        .issue_token(req.clone())
        .await
        .map_err(forward)?
        .into_inner();
    if resp.token.is_empty()
        && let Some(s) = &resp.step_up
    {
        // No session yet: wait for the step-up's decision, then ask again
        // (a moment before the deadline, while the request still stands).
        let left = s.deadline.as_ref().map_or(0, |d| {
            d.seconds.saturating_sub(now_unix()).saturating_sub(1)
        });
        let until = tokio::time::Instant::now()
            + std::time::Duration::from_secs(u64::try_from(left).unwrap_or(0));
        tracing::info!(approval = %s.approval_id, scopes = ?s.withheld_scopes, "session waits for the approval of privileged scopes");
        let _ = auth.state().approvals.wait(&s.approval_id, until).await;
        req.wait_for_approval = false;
        resp = client.issue_token(req).await.map_err(forward)?.into_inner();
    }
    tracing::info!(session = %resp.session_id, scopes = ?resp.scopes, "session started");
    Ok(resp)
}
