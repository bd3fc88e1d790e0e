//! The pipeline every tool call runs, in this order; each stage may stop it
//! with a [`Refusal`]:
//!
//! 1. authenticate — the session token (read and verified by
//!    [`super::authenticate`]: signature, expiry, revocation, key binding;
//!    the API layer calls it and refreshes the JWKS once for an unknown key),
//!    then the session's `max_tool_calls`
//! 2. validate — the tool exists; the arguments are bounded JSON matching
//!    its input schema
//! 3. inspect input — attacks in argument strings ([`InputInspector`])
//! 4. authorize — scopes, identity lists and overrides, Cedar, risk
//! 5. limit — rate limits ([`Limiter`])
//! 6. approve — high-risk calls need a human
//! 7. execute — the upstream call, secrets injected by the sidecar
//! 8. inspect output — injected secrets removed, size capped
//! 9. record — every decision, allowed or not
//!
//! `Authorize` runs stages 1–6 and records; `CallTool` runs them all.
//! Every stage reads the one snapshot of what the sidecar holds that the
//! token was verified against, so a push landing during a call applies
//! from the next call on, never to half of one.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use rand::Rng;
use warden_shared::proto::v1 as pb;
use warden_shared::refusal::Reason;
use warden_shared::token::Claims;

use super::authorize::{self, Caller};
use super::catalog::ToolEntry;
use super::execute::Executor;
use super::inspect::{self, InputInspector, PassThrough};
use super::limit::session::Error as SessionCallsError;
use super::limit::{CallKey, Limiter, SessionCalls, Verdict};
use super::record::{Event, Outcome, Recorder};
use super::{Refusal, Stage, approve, validate};
use crate::state::held::{Held, HeldPolicy};

/// Longest trace id accepted.
const MAX_TRACE_ID: usize = 128;

/// What the agent asked. `Debug` leaves the arguments out.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// `CallTool` or `Authorize`.
    pub rpc: &'static str,
    /// The tool's name.
    pub tool: &'a str,
    /// The arguments (JSON text).
    pub arguments: &'a str,
    /// The agent's stated reason.
    pub reason: &'a str,
    /// The agent's trace id.
    pub trace_id: &'a str,
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("rpc", &self.rpc)
            .field("tool", &self.tool)
            .field("arguments_bytes", &self.arguments.len())
            .field("trace_id", &self.trace_id)
            .finish_non_exhaustive()
    }
}

/// A call that passed stages 1–6. `Debug` leaves the arguments out.
struct Admitted {
    policy: Arc<HeldPolicy>,
    tool: Arc<ToolEntry>,
    args: serde_json::Value,
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("policy", &self.policy.version)
            .field("tool", &self.tool.spec.name)
            .finish_non_exhaustive()
    }
}

/// The gateway's parts.
#[derive(Debug)]
pub struct Gateway {
    agent_id: String,
    /// Rate limits and quotas.
    pub limiter: Arc<Limiter>,
    calls: SessionCalls,
    input: Arc<dyn InputInspector>,
    /// Upstream calls (and their circuit breakers).
    pub executor: Executor,
    /// The record of every decision.
    pub recorder: Recorder,
    /// Cedar entities for (policy version, standing digest).
    entities: std::sync::Mutex<EntityCache>,
}

type EntityCache = Option<((u64, u64), Arc<cedar_policy::Entities>)>;

fn call_id() -> String {
    let mut b = [0u8; 12];
    rand::rng().fill(&mut b);
    format!(
        "call_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

/// Whether the policy held has a tool named `name` (metrics count calls
/// to other names as one label, so that an agent cannot grow them).
fn known_tool(held: &Held, name: &str) -> bool {
    held.policy
        .as_ref()
        .is_some_and(|p| p.catalog.get(name).is_some())
}

/// Records a call the agent abandoned (dropped its request) after it was
/// admitted: the upstream may have acted on it, so the record must say so.
struct Abandoned<'a> {
    gateway: &'a Gateway,
    event: Option<Event<'a>>,
    t0: Instant,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.event.take() {
            self.gateway.record(e, Outcome::Cancelled, None, self.t0);
        }
    }
}

/// The stages passed by an allowed call, in order.
const CHECKS: [Stage; 6] = [
    Stage::Authenticate,
    Stage::Validate,
    Stage::InspectInput,
    Stage::Authorize,
    Stage::Limit,
    Stage::Approve,
];

impl Gateway {
    /// A gateway for `agent_id` with `limiter` and no input inspection
    /// beyond validation.
    pub fn new(agent_id: &str, limiter: Limiter) -> Self {
        Self {
            agent_id: agent_id.to_owned(),
            limiter: Arc::new(limiter),
            calls: SessionCalls::default(),
            input: Arc::new(PassThrough),
            executor: Executor::default(),
            recorder: Recorder::default(),
            entities: std::sync::Mutex::new(None),
        }
    }

    /// Keeps the sessions' call counts in `path` across restarts.
    pub fn with_call_journal(mut self, path: &std::path::Path) -> std::io::Result<Self> {
        self.calls = SessionCalls::with_journal(path, crate::now_unix())?;
        Ok(self)
    }

    /// Stages 1 (the session's call cap) to 6.
    async fn admit(
        &self,
        held: &Held,
        claims: &Claims,
        r: &Request<'_>,
    ) -> Result<Admitted, Refusal> {
        let now = time::OffsetDateTime::now_utc();
        let max = claims.constraints.max_tool_calls;
        if let Err(e) = self
            .calls
            .take(&claims.sid, max, claims.exp, now.unix_timestamp())
        {
            return Err(match e {
                SessionCallsError::Spent(_) | SessionCallsError::Full => {
                    Refusal::at(Stage::Authenticate, Reason::ToolCallLimit, e.to_string())
                }
                SessionCallsError::Journal(_) => {
                    tracing::error!(error = %e, "session call journal");
                    Refusal::at(
                        Stage::Authenticate,
                        Reason::Internal,
                        "the session's call count could not be recorded; see the sidecar log",
                    )
                }
            }
            .rule("max_tool_calls"));
        }
        if r.trace_id.len() > MAX_TRACE_ID || !r.trace_id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Refusal::at(
                Stage::Validate,
                Reason::InvalidArgument,
                format!("trace_id must be at most {MAX_TRACE_ID} visible ASCII characters"),
            ));
        }
        let unknown = || {
            Refusal::at(
                Stage::Validate,
                Reason::ToolUnknown,
                "no such tool in the policy in force".to_owned(),
            )
        };
        let policy = held.policy.clone().ok_or_else(unknown)?;
        let tool = policy.catalog.get(r.tool).cloned().ok_or_else(unknown)?;
        let args = validate::arguments(&tool, r.arguments)?;
        if tool.spec.filters.injection_check {
            self.input.inspect(&tool, &args)?;
        }
        let standing = held.raw.standing.as_deref().ok_or_else(|| {
            Refusal::at(
                Stage::Authorize,
                Reason::PolicyNotLoaded,
                "the sidecar holds no standing for its agent yet",
            )
        })?;
        let caller = Caller {
            agent_id: &self.agent_id,
            standing,
            claims,
        };
        // What the rules see; a value they would not see faithfully refuses
        // the call rather than let it be decided without it.
        let projected = warden_shared::policy::cedar::arguments(&tool.spec.input_schema, &args)
            .map_err(|e| {
                Refusal::at(
                    Stage::Validate,
                    Reason::ArgumentsInvalid,
                    format!("arguments of {}: {e}", tool.spec.name),
                )
                .rule("policy representation")
            })?;
        let entities = self.entities(&policy, standing)?;
        authorize::check(&policy, &entities, &tool, &caller, &projected, now)?;
        let risk = tool.risk.unwrap_or(warden_shared::policy::Risk::Critical);
        self.limit(&policy, &tool, standing, claims).await?;
        approve::check(&tool.spec.name, risk)?;
        Ok(Admitted { policy, tool, args })
    }

    /// Stage 5: every limit that applies to the call, checked and counted
    /// together.
    async fn limit(
        &self,
        policy: &HeldPolicy,
        tool: &ToolEntry,
        standing: &pb::StandingPart,
        claims: &Claims,
    ) -> Result<(), Refusal> {
        let key = CallKey {
            agent: &self.agent_id,
            owner: &standing.owner,
            session: &claims.sid,
            tool: &tool.spec.name,
            cost: tool.spec.cost,
        };
        let items = policy.limits.items(self.limiter.prefix(), &key);
        match self.limiter.check(&policy.limits, &items).await {
            Verdict::Admit => Ok(()),
            Verdict::Refuse {
                limit,
                quota,
                retry_after,
            } => {
                let ms = u64::try_from(retry_after.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1);
                let (reason, what) = if quota {
                    (Reason::QuotaExceeded, "quota")
                } else {
                    (Reason::RateLimited, "rate limit")
                };
                Err(Refusal::at(
                    Stage::Limit,
                    reason,
                    format!("{what} {limit} reached; retry in {ms} ms"),
                )
                .rule(limit)
                .retry_after_ms(ms))
            }
            Verdict::Unavailable { limit } => Err(Refusal::at(
                Stage::Limit,
                Reason::LimiterUnavailable,
                format!("limit {limit} cannot be checked (its shared store is unreachable) and fails closed; retry later"),
            )
            .rule(limit)),
        }
    }

    /// The Cedar entities for this policy and standing, built once.
    fn entities(
        &self,
        policy: &HeldPolicy,
        standing: &pb::StandingPart,
    ) -> Result<Arc<cedar_policy::Entities>, Refusal> {
        let key = (policy.version, standing.digest);
        let mut cache = self.entities.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, e)) = cache.as_ref()
            && *k == key
        {
            return Ok(Arc::clone(e));
        }
        let e = Arc::new(
            authorize::entities(policy, &self.agent_id, standing).map_err(|e| {
                tracing::error!(error = %e, "cannot build the policy entities");
                Refusal::at(
                    Stage::Authorize,
                    Reason::PolicyDenied,
                    "the policy entities could not be built; see the sidecar log",
                )
                .rule("entities")
            })?,
        );
        *cache = Some((key, Arc::clone(&e)));
        Ok(e)
    }

    fn event<'a>(
        &self,
        r: &Request<'a>,
        claims: Option<&'a Claims>,
        call_id: &'a str,
        known_tool: bool,
    ) -> Event<'a> {
        Event {
            call_id,
            rpc: r.rpc,
            agent: "",
            session: claims.map_or("", |c| c.sid.as_str()),
            user: claims.and_then(Claims::user_id).unwrap_or_default(),
            tool: if warden_shared::policy::valid_tool_name(r.tool) {
                r.tool
            } else {
                "(invalid name)"
            },
            known_tool,
            arguments: r.arguments,
            reason: r.reason,
            trace_id: if r.trace_id.len() <= MAX_TRACE_ID {
                r.trace_id
            } else {
                "(too long)"
            },
            outcome: Outcome::Denied,
            denial: None,
            upstream_status: 0,
            redactions: 0,
            micros: 0,
        }
    }

    fn record<'a>(
        &'a self,
        mut e: Event<'a>,
        outcome: Outcome,
        denial: Option<&'a Refusal>,
        t0: Instant,
    ) {
        e.agent = &self.agent_id;
        e.outcome = outcome;
        e.denial = denial;
        e.micros = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.recorder.record(&e);
    }

    /// Records an authentication failure (stage 1, before any claim is known).
    pub fn refused_unauthenticated(&self, r: &Request<'_>, d: &Refusal, t0: Instant) {
        let id = call_id();
        let e = self.event(r, None, &id, false);
        self.record(e, Outcome::Denied, Some(d), t0);
    }

    /// `Authorize`: stages 1–6, recorded; a denial is a decision, not an error.
    pub async fn authorize(
        &self,
        held: &Held,
        claims: &Claims,
        r: &Request<'_>,
        t0: Instant,
    ) -> pb::AuthorizeResponse {
        let id = call_id();
        let result = self.admit(held, claims, r).await;
        let known = known_tool(held, r.tool);
        let e = self.event(r, Some(claims), &id, known);
        match result {
            Ok(_) => {
                self.record(e, Outcome::Allowed, None, t0);
                pb::AuthorizeResponse {
                    call_id: id,
                    allowed: true,
                    checks: CHECKS.iter().map(|s| s.as_str().to_owned()).collect(),
                    denial: None,
                }
            }
            Err(d) => {
                self.record(e, Outcome::Denied, Some(&d), t0);
                pb::AuthorizeResponse {
                    checks: CHECKS
                        .iter()
                        .take_while(|s| Some(**s) < d.stage)
                        .map(|s| s.as_str().to_owned())
                        .collect(),
                    call_id: id,
                    allowed: false,
                    denial: Some(d.to_proto()),
                }
            }
        }
    }

    /// `CallTool`: every stage.
    pub async fn call_tool(
        &self,
        held: &Held,
        claims: &Claims,
        r: &Request<'_>,
        t0: Instant,
    ) -> Result<pb::CallToolResponse, Refusal> {
        let id = call_id();
        let admitted = self.admit(held, claims, r).await;
        let known = known_tool(held, r.tool);
        let mut e = self.event(r, Some(claims), &id, known);
        let a = match admitted {
            Ok(a) => a,
            Err(d) => {
                self.record(e, Outcome::Denied, Some(&d), t0);
                return Err(d);
            }
        };
        let secrets = &a.policy.policy.document.secrets;
        let mut abandoned = Abandoned {
            gateway: self,
            event: Some(e.clone()),
            t0,
        };
        let result = self
            .executor
            .run(&a.tool, secrets, &a.args, &id, r.trace_id)
            .await;
        let out = match result {
            Ok(o) => o,
            Err(d) => {
                abandoned.event = None;
                self.record(e, Outcome::Failed, Some(&d), t0);
                return Err(d);
            }
        };
        e.upstream_status = out.status;
        // Still abandonable: inspecting a large answer waits for a thread.
        let inspected = inspect::output(out.content, out.content_type, out.secrets).await;
        abandoned.event = None;
        drop(abandoned);
        let seen = match inspected {
            Ok(seen) => seen,
            Err(d) => {
                // Executed, but its answer is withheld.
                self.record(e, Outcome::Failed, Some(&d), t0);
                return Err(d);
            }
        };
        e.redactions = seen.redactions;
        self.record(e, Outcome::Allowed, None, t0);
        Ok(pb::CallToolResponse {
            call_id: id,
            content: seen.content,
            content_type: seen.content_type,
            upstream_status: u32::from(out.status),
            is_error: out.status >= 400,
            redactions: seen.redactions,
        })
    }

    /// `ListTools`: the tools this session may call (never the critical ones).
    pub fn list_tools(&self, held: &Held, claims: &Claims) -> pb::ListToolsResponse {
        let Some(policy) = &held.policy else {
            return pb::ListToolsResponse::default();
        };
        let tools = policy
            .catalog
            .iter()
            .filter(|t| {
                t.risk
                    .is_some_and(|r| r < warden_shared::policy::Risk::Critical)
            })
            .filter(|t| authorize::scopes_cover(claims, t).is_ok())
            .map(|t| pb::ToolDescription {
                name: t.spec.name.clone(),
                description: t.spec.description.clone(),
                input_schema_json: t.input_schema_json.clone(),
                risk: t.risk.map(|r| r.as_str().to_owned()).unwrap_or_default(),
                scopes: t.spec.scopes.clone(),
            })
            .collect();
        pb::ListToolsResponse {
            tools,
            policy_version: policy.version,
        }
    }
}
