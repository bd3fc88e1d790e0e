//! The identity gRPC API: `Enroll` (join token + CSR), `Renew` and
//! `IssueToken` (mTLS). The agent's status is read from the store on every
//! call, so a suspension or revocation takes effect on the next request even
//! on an established connection.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rand::RngCore;
use tonic::{Request, Response, Status};
use warden_shared::agent::AgentId;
use warden_shared::audit::ActorKind;
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::identity_service_server::IdentityService;
use warden_shared::refusal::{Reason, Refusal, status};
use warden_shared::scope::{self, Scope};
use warden_shared::svid;
use warden_shared::token::{Actor, Claims, Confirmation, Constraints, Delegation, TOKEN_TTL_SECS};

use crate::agents::{ensure_active, join_token_hash, registered_agent, store_error};
use crate::auth;
use crate::delegation::VerifiedUser;
use crate::identity::ca::{self, Signed};
use crate::state::State;
use crate::store::{Agent, AuditGuard, Grant, IssuedCert, JoinTokenUse, NewSession};
use crate::{now_unix, timestamp};

/// Longest join token accepted.
const MAX_JOIN_TOKEN_LEN: usize = 128;
/// Bounds on session context.
const MAX_CONTEXT_ENTRIES: usize = 16;
const MAX_CONTEXT_KEY: usize = 64;
const MAX_CONTEXT_VALUE: usize = 256;
const MAX_USER_ID: usize = 128;

/// The identity service.
#[derive(Debug, Clone)]
pub struct IdentityApi {
    state: Arc<State>,
}

impl IdentityApi {
    /// Wraps the shared state.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

fn csr_error(e: ca::Error) -> Status {
    match e {
        ca::Error::CsrMalformed(_) | ca::Error::KeyType => {
            status(Reason::CsrMalformed, e.to_string())
        }
        ca::Error::CsrIdentity { .. } => status(Reason::CsrIdentityMismatch, e.to_string()),
        other => {
            tracing::error!(error = %other, "certificate signing failed");
            status(Reason::Internal, "certificate signing failed")
        }
    }
}

/// A session's id: its creation time (milliseconds, 12 hex digits) before 16
/// random bytes, so that ids opened together sort together and their inserts
/// touch the last pages of the indexes keyed by them rather than pages all
/// over (ids are not secrets; the token is).
fn session_id() -> String {
    session_id_at(crate::now_unix_ms())
}

fn session_id_at(ms: i64) -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    format!(
        "ses_{:012x}{}",
        ms.clamp(0, 0xffff_ffff_ffff),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

fn random_id(prefix: &str) -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    format!(
        "{prefix}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

impl IdentityApi {
    async fn agent(&self, id: &AgentId) -> Result<Agent, Status> {
        registered_agent(&self.state, id).await
    }
}

/// The verified user of a delegated request (`None` without a user
/// token). Without one, `user_id` may not be spelled like a verified
/// user; with one, it must be that user (or empty).
async fn delegated(
    state: &State,
    user_id: &str,
    user_token: &str,
    now: i64,
) -> Result<Option<VerifiedUser>, Status> {
    let delegation = &state.delegation;
    if user_token.is_empty() {
        if delegation.looks_verified(user_id) {
            return Err(status(
                Reason::UserMismatch,
                "user_id names a user of a trusted identity provider; only that user's token (user_token) can start a session for them",
            ));
        }
        return Ok(None);
    }
    let user = delegation
        .verify(user_token, now)
        .await
        .map_err(|r| r.to_status())?;
    if !user_id.is_empty() && user_id != user.id {
        return Err(status(
            Reason::UserMismatch,
            "user_id names another user than the one the user token proves",
        ));
    }
    Ok(Some(user))
}

/// `granted` cut to what `user` consented to for `agent`, and the
/// grant; `CONSENT_REQUIRED` (with the consent URL) without a live
/// grant or when it covers none of the scopes.
async fn consented(
    state: &State,
    user: &VerifiedUser,
    agent: &Agent,
    granted: Vec<Scope>,
    requested: &[String],
    now: i64,
) -> Result<(Vec<Scope>, Grant), Status> {
    let url = state.delegation.consent_url(agent.id.as_str(), requested);
    let required = |why: String| {
        Refusal::new(
            Reason::ConsentRequired,
            format!("{why}; the user can consent at {url}"),
        )
        .consent(url.clone())
        .to_status()
    };
    let held = state
        .delegation
        .grants
        .get(&user.id, agent.id.as_str(), now);
    let grant = match held {
        Some(g) => Some(g),
        None => {
            let found = state
                .store
                .live_grant(&user.id, &agent.id, &agent.agent_type, now)
                .await
                .map_err(store_error)?;
            if let Some(g) = &found {
                state.delegation.grants.put(&user.id, agent.id.as_str(), g);
            }
            found
        }
    };
    let grant = grant.ok_or_else(|| {
        required(format!(
            "the user has not consented to agent {} acting for them",
            agent.id
        ))
    })?;
    let consented = Scope::parse_all(&grant.scopes).map_err(|e| {
        tracing::error!(grant = %grant.id, error = %e, "stored grant scopes do not parse");
        status(Reason::Internal, "grant record is invalid")
    })?;
    let granted = scope::intersect(&granted, &consented).map_err(|e| {
        status(
            Reason::InvalidArgument,
            format!("{e}; request narrower scopes"),
        )
    })?;
    if granted.is_empty() {
        return Err(required(format!(
            "the user consented to none of the requested scopes for agent {}",
            agent.id
        )));
    }
    Ok((granted, grant))
}

impl IdentityApi {
    /// Signs a certificate for `agent`, never valid past the identity's
    /// expiry; nothing is recorded yet.
    fn sign_cert(&self, agent: &Agent, csr: &ca::CheckedCsr) -> Result<Signed, Status> {
        let id = self.state.td.agent(&agent.id);
        let ttl = Duration::from_secs(capped_ttl(
            self.state.config.cert_ttl_secs,
            agent.expires_at,
            now_unix(),
        ));
        let signed = self.state.ca.sign(csr, &id, ttl).map_err(csr_error)?;
        // The control plane checks the SAN it signs.
        if svid::spiffe_id_of(&signed.der).ok().as_ref() != Some(&id) {
            return Err(status(
                Reason::Internal,
                "issued certificate failed self-check",
            ));
        }
        Ok(signed)
    }

    /// Records a signed certificate and builds the reply.
    async fn issue_cert(
        &self,
        agent: &AgentId,
        signed: Signed,
        reason: &'static str,
    ) -> Result<pb::Certificate, Status> {
        let id = self.state.td.agent(agent);
        let Signed {
            der,
            serial,
            not_after,
        } = signed;
        let record = IssuedCert {
            serial: serial.clone(),
            agent_id: agent.clone(),
            thumbprint: svid::thumbprint(&der),
            not_after,
            issued_at: now_unix(),
            reason,
        };
        self.state
            .store
            .record_certificate(&record)
            .await
            .map_err(store_error)?;
        tracing::info!(agent = %agent, %serial, not_after, reason, "certificate issued");
        let mut e = crate::audit::event(
            if reason == "enroll" {
                "agent.enrolled"
            } else {
                "certificate.renewed"
            },
            ActorKind::Agent,
            agent.as_str(),
        );
        e.agent = agent.to_string();
        e.outcome = "ok".into();
        e.detail.insert("serial".into(), serial.clone());
        e.detail.insert("not_after".into(), not_after.to_string());
        self.state.audit.note(e).await;
        Ok(pb::Certificate {
            certificate_der: der,
            trust_bundle_der: vec![self.state.ca.cert_der().to_vec()],
            spiffe_id: id.to_string(),
            not_after: Some(timestamp(not_after)),
            serial,
        })
    }
}

/// `ttl` seconds from `now`, cut short so that it ends no later than the
/// identity's expiry (at least 1 s: an expired identity is refused before).
fn capped_ttl(ttl: u64, expires_at: Option<i64>, now: i64) -> u64 {
    match expires_at {
        Some(e) => ttl.min(u64::try_from(e - now).unwrap_or(0).max(1)),
        None => ttl,
    }
}

fn check_context(
    user_id: &str,
    context: &std::collections::HashMap<String, String>,
) -> Result<(), Status> {
    let bad = |m: String| status(Reason::InvalidArgument, m);
    if user_id.len() > MAX_USER_ID || user_id.chars().any(char::is_control) {
        return Err(bad(format!(
            "user_id must be at most {MAX_USER_ID} printable characters"
        )));
    }
    if context.len() > MAX_CONTEXT_ENTRIES {
        return Err(bad(format!(
            "context has more than {MAX_CONTEXT_ENTRIES} entries"
        )));
    }
    if context
        .iter()
        .any(|(k, v)| k.is_empty() || k.len() > MAX_CONTEXT_KEY || v.len() > MAX_CONTEXT_VALUE)
    {
        return Err(bad(format!(
            "context keys must be 1..={MAX_CONTEXT_KEY} bytes and values at most {MAX_CONTEXT_VALUE}"
        )));
    }
    Ok(())
}

/// Spends `agent`'s approved step-up for `binding`, if there is one.
async fn spend(state: &State, agent: &AgentId, binding: &str, now: i64) -> Result<bool, Status> {
    let used = state
        .store
        .use_approval(agent, binding, now)
        .await
        .map_err(store_error)?;
    if let Some(a) = &used {
        crate::api::approval::audit(state, "used", "agent", agent.as_str(), a, "").await;
        state.approval_changed(a);
    }
    Ok(used.is_some())
}

/// Splits `granted` into what the session gets now and the step-up: the
/// scopes covering one of the policy's `privileged_scopes` are granted only
/// with an approved step-up request for exactly them (spent here, once);
/// otherwise they are withheld and a request is filed (or the one standing
/// is named).
async fn step_up(
    state: &State,
    agent: &AgentId,
    user: &str,
    granted: Vec<Scope>,
    now: i64,
) -> Result<(Vec<Scope>, Option<pb::StepUp>), Status> {
    let Some(policy) = state.current_policy() else {
        return Ok((granted, None));
    };
    let privileged: Vec<(Scope, &warden_shared::policy::ApprovalSpec)> = policy
        .document
        .privileged_scopes
        .iter()
        .filter_map(|(s, a)| Scope::parse(s).ok().map(|s| (s, a)))
        .collect();
    let (held_back, rest): (Vec<Scope>, Vec<Scope>) = granted
        .into_iter()
        .partition(|g| privileged.iter().any(|(p, _)| g.covers(p)));
    if held_back.is_empty() {
        return Ok((rest, None));
    }
    let names: Vec<String> = held_back.iter().map(ToString::to_string).collect();
    let binding = warden_shared::policy::step_up_binding(agent.as_str(), user, &names);
    if spend(state, agent, &binding, now).await? {
        let mut all = rest;
        all.extend(held_back);
        return Ok((all, None));
    }
    let specs: Vec<&warden_shared::policy::ApprovalSpec> = privileged
        .iter()
        .filter(|(p, _)| held_back.iter().any(|g| g.covers(p)))
        .map(|(_, a)| *a)
        .collect();
    let quorum = specs.iter().map(|a| a.quorum()).max().unwrap_or(1);
    let deadline = specs
        .iter()
        .map(|a| a.deadline())
        .max()
        .unwrap_or(warden_shared::policy::DEFAULT_APPROVAL_DEADLINE);
    let new = crate::store::NewApproval {
        id: crate::api::approval::new_id(),
        binding,
        agent_id: agent.clone(),
        session_id: String::new(),
        user_id: user.to_owned(),
        tool: "step-up".into(),
        arguments: serde_json::json!({ "scopes": names }).to_string(),
        reason: String::new(),
        trace_id: String::new(),
        because: format!("privileged scopes {}", names.join(" ")),
        quorum,
        created_at: now,
        deadline: now + i64::try_from(deadline.as_secs()).unwrap_or(3600),
        by_user: false,
    };
    let a = state
        .store
        .request_approval(&new, now)
        .await
        .map_err(store_error)?;
    if a.request.id == new.id {
        crate::api::approval::audit(state, "requested", "agent", agent.as_str(), &a, "").await;
        state
            .approval_event(crate::webhooks::Event::Requested, &a)
            .await;
    }
    // Approved between the first look and now: spend it.
    if a.state == crate::store::ApprovalState::Approved
        && spend(state, agent, &new.binding, now).await?
    {
        let mut all = rest;
        all.extend(held_back);
        return Ok((all, None));
    }
    let (decided_by, comment) = crate::api::approval::denial(&a);
    Ok((
        rest,
        Some(pb::StepUp {
            withheld_scopes: names,
            approval_id: a.request.id.clone(),
            state: a.state.as_str().to_owned(),
            deadline: Some(timestamp(a.request.deadline)),
            decided_by,
            comment,
        }),
    ))
}

#[tonic::async_trait]
impl IdentityService for IdentityApi {
    async fn enroll(
        &self,
        req: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let req = req.into_inner();
        let agent_id = AgentId::new(&req.agent_id)
            .map_err(|e| status(Reason::InvalidArgument, e.to_string()))?;
        if req.join_token.is_empty() || req.join_token.len() > MAX_JOIN_TOKEN_LEN {
            return Err(status(
                Reason::JoinTokenUnknown,
                "join token is missing or malformed",
            ));
        }
        let now = now_unix();
        let hash = join_token_hash(&req.join_token);
        // Check everything that can fail before spending the token, so a bad
        // request leaves it usable.
        let agent = self
            .state
            .store
            .get_agent(&agent_id)
            .await
            .map_err(store_error)?;
        let Some(agent) = agent else {
            return Err(status(Reason::JoinTokenUnknown, "join token is not valid"));
        };
        let token_error = |u: JoinTokenUse| match u {
            JoinTokenUse::Consumed => None,
            JoinTokenUse::Unknown => {
                Some(status(Reason::JoinTokenUnknown, "join token is not valid"))
            }
            JoinTokenUse::Used => Some(status(
                Reason::JoinTokenUsed,
                "join token was already used; ask an admin for a new one (`wardenctl join-token create`)",
            )),
            JoinTokenUse::Expired => Some(status(
                Reason::JoinTokenExpired,
                "join token has expired; ask an admin for a new one (`wardenctl join-token create`)",
            )),
            JoinTokenUse::WrongAgent => Some(status(
                Reason::JoinTokenWrongAgent,
                format!("join token was not issued for agent {agent_id}"),
            )),
        };
        let peek = self
            .state
            .store
            .peek_join_token(&hash, &agent_id, now)
            .await
            .map_err(store_error)?;
        if let Some(e) = token_error(peek) {
            tracing::warn!(agent = %agent_id, reason = ?peek, "enrollment refused");
            return Err(e);
        }
        ensure_active(&agent, now)?;
        let spiffe = self.state.td.agent(&agent_id);
        let csr = self
            .state
            .ca
            .check_csr(&req.csr_der, &spiffe)
            .map_err(csr_error)?;
        // Sign before spending: a signing failure leaves the token usable. A
        // certificate signed for a token that a concurrent use then spends
        // is discarded, never returned.
        let signed = self.sign_cert(&agent, &csr)?;
        let spent = self
            .state
            .store
            .consume_join_token(&hash, &agent_id, now)
            .await
            .map_err(store_error)?;
        if let Some(e) = token_error(spent) {
            return Err(e);
        }
        let cert = self.issue_cert(&agent_id, signed, "enroll").await?;
        Ok(Response::new(pb::EnrollResponse {
            certificate: Some(cert),
        }))
    }

    async fn renew(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let (_, agent_id) = auth::agent(&req, &self.state.td)?;
        let agent = self.agent(&agent_id).await?;
        ensure_active(&agent, now_unix())?;
        let spiffe = self.state.td.agent(&agent_id);
        let csr = self
            .state
            .ca
            .check_csr(&req.get_ref().csr_der, &spiffe)
            .map_err(csr_error)?;
        let cert = self
            .issue_cert(&agent_id, self.sign_cert(&agent, &csr)?, "renew")
            .await?;
        Ok(Response::new(pb::RenewResponse {
            certificate: Some(cert),
        }))
    }

    async fn issue_token(
        &self,
        req: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        let (caller, agent_id) = auth::agent(&req, &self.state.td)?;
        issue(&self.state, &caller, &agent_id, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn release_session(
        &self,
        req: Request<pb::ReleaseSessionRequest>,
    ) -> Result<Response<pb::ReleaseSessionResponse>, Status> {
        let (_, agent_id) = auth::agent(&req, &self.state.td)?;
        ensure_active(&self.agent(&agent_id).await?, now_unix())?;
        let id = req.into_inner().session_id;
        let mut e = crate::audit::event("session.ended", ActorKind::Agent, agent_id.as_str());
        e.agent = agent_id.to_string();
        e.session.clone_from(&id);
        e.outcome = "ok".into();
        // The end and its audit event are committed together: no session
        // ended without its record.
        let guard = AuditGuard::EndSession {
            agent: agent_id.clone(),
            id: id.clone(),
            now: now_unix(),
        };
        let ended = self
            .state
            .audit
            .record_guarded(e, guard)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "could not end a session and record it");
                status(
                    Reason::StoreUnavailable,
                    "the control plane's store failed; retry later",
                )
            })?;
        if !ended {
            return Err(status(
                Reason::SessionNotFound,
                "no open session with that id for this agent",
            ));
        }
        tracing::info!(agent = %agent_id, session = %id, "session ended");
        Ok(Response::new(pb::ReleaseSessionResponse {}))
    }

    async fn get_jwks(
        &self,
        req: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        let caller = auth::caller(&req, &self.state.td)?;
        // Suspended, revoked or expired agents get nothing, not even public keys.
        if let warden_shared::spiffe::Principal::Agent(id) = &caller.principal {
            ensure_active(&self.agent(id).await?, now_unix())?;
        }
        Ok(Response::new(pb::GetJwksResponse {
            jwks_json: self.state.keys.current().jwks_json.clone(),
        }))
    }
}

/// Opens a session for `agent_id` (the caller, authenticated by its
/// certificate) and issues its token: `IssueToken`, and the token-exchange
/// endpoint.
pub(crate) async fn issue(
    state: &State,
    caller: &auth::Caller,
    agent_id: &AgentId,
    req: pb::IssueTokenRequest,
) -> Result<pb::IssueTokenResponse, Status> {
    let agent_id = agent_id.clone();
    let now = now_unix();
    let agent = registered_agent(state, &agent_id).await?;
    ensure_active(&agent, now)?;
    check_context(&req.user_id, &req.context)?;
    let delegated = delegated(state, &req.user_id, &req.user_token, now).await?;
    let user_id = delegated
        .as_ref()
        .map_or_else(|| req.user_id.clone(), |u| u.id.clone());
    if req.scopes.is_empty() {
        return Err(status(
            Reason::InvalidArgument,
            "request at least one scope",
        ));
    }
    let requested = Scope::parse_all(&req.scopes)
        .map_err(|e| status(Reason::InvalidArgument, e.to_string()))?;
    let allowed = Scope::parse_all(&agent.allowed_scopes).map_err(|e| {
        tracing::error!(agent = %agent_id, error = %e, "stored allowed_scopes do not parse");
        status(Reason::Internal, "agent record is invalid")
    })?;
    let granted = scope::intersect(&requested, &allowed).map_err(|e| {
        status(
            Reason::InvalidArgument,
            format!("{e}; request narrower scopes"),
        )
    })?;
    if granted.is_empty() {
        return Err(status(
            Reason::ScopeNotAllowed,
            format!("none of the requested scopes is allowed for agent {agent_id}"),
        ));
    }
    // A delegated session: only within the user's consent.
    let (granted, grant) = match &delegated {
        Some(u) => {
            let (granted, grant) = consented(state, u, &agent, granted, &req.scopes, now).await?;
            (granted, Some(grant))
        }
        None => (granted, None),
    };
    // Step-up: privileged scopes only with people's approval.
    let (granted, step_up) = step_up(state, &agent_id, &user_id, granted, now).await?;
    if let Some(s) = &step_up {
        let wait = req.wait_for_approval && s.state == "pending";
        if wait || granted.is_empty() {
            if !wait {
                let (reason, message) = if s.state == "denied" {
                    (
                        Reason::ApprovalDenied,
                        format!(
                            "{} denied the privileged scopes {}: {}",
                            s.decided_by,
                            s.withheld_scopes.join(" "),
                            s.comment
                        ),
                    )
                } else {
                    (
                        Reason::ApprovalPending,
                        format!(
                            "the privileged scopes {} wait for approval; start the session again once they are approved",
                            s.withheld_scopes.join(" ")
                        ),
                    )
                };
                return Err(Refusal::new(reason, message)
                    .approval(&s.approval_id)
                    .to_status());
            }
            // No session yet: the caller waits for the decision.
            return Ok(pb::IssueTokenResponse {
                step_up,
                ..Default::default()
            });
        }
    }
    let scope_str = granted
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ");

    // The token never outlives the certificate it is bound to, nor the
    // identity it speaks for.
    let cert_not_after = caller.not_after;
    let exp = (now + TOKEN_TTL_SECS)
        .min(cert_not_after)
        .min(agent.expires_at.unwrap_or(i64::MAX))
        .min(grant.as_ref().map_or(i64::MAX, |g| g.expires_at));
    if exp <= now {
        return Err(status(
            Reason::ClientCertificateExpired,
            "client certificate has expired",
        ));
    }
    let max_tool_calls = match (req.max_tool_calls, state.config.default_max_tool_calls) {
        (0, d) => d,
        (r, 0) => r,
        (r, d) => r.min(d),
    };
    let thumbprint = svid::thumbprint(&caller.cert_der);
    let session = NewSession {
        id: session_id(),
        agent_id: agent_id.clone(),
        user_id: user_id.clone(),
        scopes: scope_str.clone(),
        context: serde_json::to_string(&req.context.iter().collect::<BTreeMap<_, _>>())
            .unwrap_or_default(),
        jti: random_id("tok"),
        thumbprint: thumbprint.clone(),
        max_tool_calls,
        created_at: now,
        expires_at: exp,
        grant_id: grant.as_ref().map(|g| g.id.clone()),
    };
    let spiffe = caller.id.to_string();
    let claims = Claims {
        iss: state.td.control_plane().to_string(),
        sub: if user_id.is_empty() {
            spiffe.clone()
        } else {
            user_id.clone()
        },
        aud: spiffe.clone(),
        exp,
        iat: now,
        jti: session.jti.clone(),
        client_id: spiffe.clone(),
        scope: scope_str,
        sid: session.id.clone(),
        cnf: Confirmation {
            x5t_s256: thumbprint,
        },
        constraints: Constraints { max_tool_calls },
        ctx: req.context.into_iter().collect(),
        // RFC 8693 §4.1: the agent acts for the verified user.
        act: delegated.as_ref().map(|_| Actor {
            sub: spiffe.clone(),
        }),
        usr: delegated
            .as_ref()
            .zip(grant.as_ref())
            .map(|(u, g)| Delegation {
                grant: g.id.clone(),
                tier: u.attributes.tier.clone(),
                email: u.attributes.email.clone(),
                groups: u.attributes.groups.clone(),
            }),
    };
    let token = state.keys.current().active.sign(&claims).map_err(|e| {
        tracing::error!(error = %e, "token signing failed");
        status(Reason::Internal, "token signing failed")
    })?;
    let mut e = crate::audit::event("session.started", ActorKind::Agent, agent_id.as_str());
    e.agent = agent_id.to_string();
    e.session.clone_from(&session.id);
    e.user.clone_from(&session.user_id);
    e.outcome = "ok".into();
    e.detail.insert("scopes".into(), claims.scope.clone());
    e.detail.insert("expires_at".into(), exp.to_string());
    if let Some(s) = &step_up {
        e.approval.clone_from(&s.approval_id);
    }
    if let (Some(u), Some(g)) = (&delegated, &grant) {
        e.detail.insert("user_verified".into(), "true".into());
        e.detail.insert("act".into(), claims.client_id.clone());
        e.detail.insert("grant".into(), g.id.clone());
        e.detail.insert("provider".into(), u.provider.clone());
    } else if !user_id.is_empty() {
        e.detail.insert("user_verified".into(), "false".into());
    }
    // The session and its audit event are committed together: no session
    // without its record, and one durable commit for both.
    let guard = AuditGuard::OpenSession {
        session: session.clone(),
        max: agent.max_sessions,
        now,
    };
    let opened = state.audit.record_guarded(e, guard).await.map_err(|e| {
        tracing::error!(error = %e, "could not open a session and record it");
        status(
            Reason::StoreUnavailable,
            "the control plane's store failed; retry later",
        )
    })?;
    if !opened {
        // Revoked (or lapsed) between the lookup and the insert.
        if let Some(g) = &grant {
            state.delegation.grants.forget(&g.id);
            let live = state
                .store
                .get_grant(&g.id)
                .await
                .map_err(store_error)?
                .is_some_and(|g| g.revoked_at.is_none() && g.expires_at > now);
            if !live {
                let url = state.delegation.consent_url(agent_id.as_str(), &req.scopes);
                return Err(Refusal::new(
                    Reason::ConsentRequired,
                    format!("the user's consent was revoked or has expired; the user can consent again at {url}"),
                )
                .consent(url)
                .to_status());
            }
        }
        return Err(status(
            Reason::SessionLimit,
            format!(
                "agent {agent_id} already has {} open sessions (its maximum); end one first",
                agent.max_sessions
            ),
        ));
    }
    tracing::info!(agent = %agent_id, session = %session.id, scopes = %claims.scope, exp, "session token issued");
    Ok(pb::IssueTokenResponse {
        token,
        session_id: session.id,
        scopes: granted.iter().map(ToString::to_string).collect(),
        expires_at: Some(timestamp(exp)),
        step_up,
    })
}

#[cfg(test)]
mod tests {
    use super::{session_id, session_id_at};

    #[test]
    fn session_ids_sort_by_creation_time_and_stay_unguessable() {
        // Whatever the random part, a later millisecond sorts after.
        for (t, later) in [
            (0, 1),
            (1_774_800_000_123, 1_774_800_000_124),
            (0xfff, 0x1000),
        ] {
            let (a, b) = (session_id_at(t), session_id_at(later));
            assert!(a < b, "{a} then {b}");
        }
        let first = session_id();
        assert_eq!(first.len(), "ses_".len() + 12 + 22);
        assert!(first.starts_with("ses_"));
        // The random part differs between ids of the same millisecond.
        let (a, b) = (session_id(), session_id());
        assert_ne!(a[16..], b[16..]);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        );
    }
}
