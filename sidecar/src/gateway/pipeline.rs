//! The pipeline every tool call runs, whatever front door it came through,
//! in this order; each stage may stop it with a [`Refusal`]:
//!
//! 1. authenticate — the session token (signature, expiry, revocation, key
//!    binding, the agent's standing), then the session's `max_tool_calls`
//! 2. validate — a bounded trace id; the tool exists; the arguments are
//!    bounded JSON matching its input schema
//! 3. inspect input — prompt injection in argument strings
//!    ([`inspect::injection`])
//! 4. authorize — scopes, identity lists and overrides, Cedar, risk
//! 5. limit — rate limits and quotas ([`Limiter`])
//! 6. approve — calls the policy marks wait for people ([`approve::Desk`])
//! 7. execute — the upstream call, secrets injected by the sidecar
//! 8. inspect output — injected secrets removed; credentials, personal data
//!    and prompt injection handled as the tool's filters say
//! 9. record — every decision, allowed or not
//!
//! [`Gateway::authorize`] runs stages 1–6 and records; [`Gateway::call_tool`]
//! runs them all. Both read the one snapshot of what the sidecar holds that
//! the token was verified against, so a push landing during a call applies
//! from the next call on, never to half of one. They return domain types;
//! a front door (the gRPC agent API) only converts them.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use rand::Rng;
use warden_shared::policy::Guard;
use warden_shared::refusal::Reason;
use warden_shared::token::Claims;

use super::authenticate::{self, Authenticator, Credentials};
use super::authorize::{self, Authorization, Caller};
use super::catalog::ToolEntry;
use super::execute::Executor;
use super::execute::mcp::Standing;
use super::inspect::{self, Noted};
use super::limit::{CallKey, Limiter, SessionCalls};
use super::record::{Event, Kept, Outcome, Recorder};
use super::validate::MAX_TRACE_ID;
use super::{Refusal, Stage, approve, validate};
use crate::state::held::{Held, HeldPolicy};

/// What the agent asked. `Debug` leaves the arguments out.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// The operation, for the record (`CallTool`, `Authorize`, an MCP
    /// method).
    pub rpc: &'static str,
    /// The tool's name.
    pub tool: &'a str,
    /// The arguments (JSON text).
    pub arguments: &'a str,
    /// The agent's stated reason.
    pub reason: &'a str,
    /// The agent's trace id.
    pub trace_id: &'a str,
    /// A call that needs approval is refused with `APPROVAL_PENDING` at
    /// once rather than wait for it.
    pub no_wait: bool,
    /// How the end user is reached, for tools whose calls they confirm.
    pub user: approve::UserChannel<'a>,
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("rpc", &self.rpc)
            .field("tool", &self.tool)
            .field("arguments_bytes", &self.arguments.len())
            .field("trace_id", &self.trace_id)
            .field("no_wait", &self.no_wait)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The stages an allowed `Authorize` passed, in order.
pub const CHECKS: [Stage; 6] = [
    Stage::Authenticate,
    Stage::Validate,
    Stage::InspectInput,
    Stage::Authorize,
    Stage::Limit,
    Stage::Approve,
];

/// The answer to `Authorize`: a refusal is a decision, not an error.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The call's id, as recorded.
    pub call_id: String,
    /// `None`: allowed.
    pub refusal: Option<Refusal>,
}

impl Decision {
    /// The stages the call passed.
    pub fn passed(&self) -> impl Iterator<Item = Stage> + '_ {
        // A refusal that names no stage stops the call before any.
        let stop = self
            .refusal
            .as_ref()
            .map(|r| r.stage.unwrap_or(Stage::Authenticate));
        CHECKS
            .into_iter()
            .take_while(move |s| stop.is_none_or(|stop| *s < stop))
    }
}

/// What an executed call returns to the agent.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The call's id, as recorded.
    pub call_id: String,
    /// The upstream's body, secrets removed.
    pub content: Vec<u8>,
    /// Its media type, secrets removed.
    pub content_type: String,
    /// The upstream's HTTP status (0 for builtins).
    pub upstream_status: u16,
    /// Values removed from the answer.
    pub redactions: u32,
}

/// The tools a session may call.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// The policy version they come from (0: none held).
    pub policy_version: u64,
    /// The tools, never a critical one that cannot run.
    pub tools: Vec<Arc<ToolEntry>>,
}

/// A call that passed stages 1–6. `Debug` leaves the arguments out.
struct Admitted {
    policy: Arc<HeldPolicy>,
    tool: Arc<ToolEntry>,
    args: serde_json::Value,
    /// What stage 3 found in the arguments.
    findings: Vec<Noted>,
    /// The approval spent on it, if it needed one.
    approval: String,
    /// Whether it waited for people (approvers or its user).
    waited: bool,
}

impl Admitted {
    /// A call that waited for people goes on only if its caller still may
    /// call now: a kill switch, a revoked session or an expired token during
    /// the wait stops it.
    async fn still_allowed(
        &self,
        gateway: &Gateway,
        creds: &Credentials<'_>,
    ) -> Result<(), Refusal> {
        if self.waited {
            gateway.authenticate(creds).await?;
        }
        Ok(())
    }
}

/// The audit event's `findings`: stage 3's, then stage 8's, one
/// `signal@where[span]:action` each, space-separated.
fn findings_line(input: &[Noted], output: &[Noted]) -> String {
    input
        .iter()
        .chain(output)
        .map(Noted::line)
        .collect::<Vec<_>>()
        .join(" ")
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("policy", &self.policy.version)
            .field("tool", &self.tool.spec.name)
            .finish_non_exhaustive()
    }
}

/// The gateway's parts: one per stage that keeps something between calls.
#[derive(Debug)]
pub struct Gateway {
    agent_id: String,
    /// Stage 1: tokens, against what the sidecar holds.
    auth: Arc<Authenticator>,
    /// Stage 1: the sessions' call counts.
    calls: SessionCalls,
    /// Stage 4: Cedar entities of the policy in force.
    authorization: Authorization,
    /// Stage 5: rate limits and quotas.
    pub limiter: Arc<Limiter>,
    /// Stage 6: the control plane's approval desk (`None`: calls that need
    /// approval are refused).
    desk: Option<approve::Desk>,
    /// Stage 7: upstream calls (and their circuit breakers).
    pub executor: Executor,
    /// Stage 9: the record of every decision.
    pub recorder: Recorder,
}

/// The upstream timeout of `tool`.
fn tool_timeout(tool: &ToolEntry) -> std::time::Duration {
    tool.spec
        .limits
        .timeout_ms
        .map_or(super::execute::DEFAULT_TIMEOUT, |ms| {
            std::time::Duration::from_millis(u64::from(ms))
        })
}

fn call_id() -> String {
    let mut b = [0u8; 12];
    rand::rng().fill(&mut b);
    format!(
        "call_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
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
            // Nobody waits for the answer: a spool failure is logged there.
            let _ = self.gateway.record(e, Outcome::Cancelled, None, self.t0);
        }
    }
}

impl Gateway {
    /// A gateway for the agent `auth` serves, with `limiter`.
    pub fn new(auth: Arc<Authenticator>, limiter: Limiter) -> Self {
        Self {
            agent_id: auth.agent_id().to_owned(),
            auth,
            calls: SessionCalls::default(),
            authorization: Authorization::default(),
            limiter: Arc::new(limiter),
            desk: None,
            executor: Executor::default(),
            recorder: Recorder::default(),
        }
    }

    /// Asks `desk` for the approvals calls need.
    #[must_use]
    pub fn with_desk(mut self, desk: approve::Desk) -> Self {
        self.desk = Some(desk);
        self
    }

    /// Appends every decision to the audit spool before the call goes on.
    #[must_use]
    pub fn with_audit_spool(mut self, sink: Arc<crate::infra::audit::Sink>) -> Self {
        let r = std::mem::replace(&mut self.recorder, Recorder::inline());
        self.recorder = r.with_sink(sink);
        self
    }

    /// Keeps the sessions' call counts in `path` across restarts.
    pub fn with_call_journal(mut self, path: &std::path::Path) -> std::io::Result<Self> {
        self.calls = SessionCalls::with_journal(path, crate::now_unix())?;
        Ok(self)
    }

    /// Stage 1: who calls, and the one snapshot the call goes on with.
    pub async fn authenticate(
        &self,
        creds: &Credentials<'_>,
    ) -> Result<(Arc<Claims>, Arc<Held>), Refusal> {
        self.auth.authenticate(creds).await
    }

    /// `Authorize`: stages 1–6, recorded. A caller that is not
    /// authenticated is refused; past that, a refusal is a decision.
    pub async fn authorize(
        &self,
        creds: &Credentials<'_>,
        r: &Request<'_>,
    ) -> Result<Decision, Refusal> {
        let t0 = Instant::now();
        let call_id = call_id();
        let (claims, held) = self.admit_caller(creds, r, &call_id, t0).await?;
        let mut e = self.event(r, &creds.peer, Some(&claims), &call_id, &held);
        let admitted = match self.admit(&held, &claims, r, &call_id).await {
            Ok(a) => a.still_allowed(self, creds).await.map(|()| a),
            Err(d) => Err(d),
        };
        let refusal = match &admitted {
            Ok(a) => {
                e.approval = &a.approval;
                e.kept = Some(Kept::of(&a.tool, &a.policy.policy, &a.args));
                let findings = findings_line(&a.findings, &[]);
                e.findings = &findings;
                // An allowed call the record cannot keep is refused.
                self.recorded(e, Outcome::Allowed, None, t0).await.err()
            }
            Err(d) => {
                let _ = self.recorded(e, Outcome::Denied, Some(d), t0).await;
                Some(d.clone())
            }
        };
        Ok(Decision { call_id, refusal })
    }

    /// `CallTool`: every stage.
    pub async fn call_tool(
        &self,
        creds: &Credentials<'_>,
        r: &Request<'_>,
    ) -> Result<Answer, Refusal> {
        let t0 = Instant::now();
        let call_id = call_id();
        // 1. authenticate
        let (claims, held) = self.admit_caller(creds, r, &call_id, t0).await?;
        let mut e = self.event(r, &creds.peer, Some(&claims), &call_id, &held);
        // 1–6, up to the approval
        let admitted = match self.admit(&held, &claims, r, &call_id).await {
            Ok(a) => a.still_allowed(self, creds).await.map(|()| a),
            Err(d) => Err(d),
        };
        let a = match admitted.and_then(|a| self.recordable().map(|()| a)) {
            Ok(a) => a,
            Err(d) => {
                let _ = self.recorded(e, Outcome::Denied, Some(&d), t0).await;
                return Err(d);
            }
        };
        e.approval = &a.approval;
        e.kept = Some(Kept::of(&a.tool, &a.policy.policy, &a.args));
        // Stage 3's findings are in the record whatever happens next.
        let arg_findings = findings_line(&a.findings, &[]);
        e.findings = &arg_findings;
        // 7. execute; from here the upstream may act, so an agent that goes
        // away is recorded as having abandoned the call.
        let mut abandoned = Abandoned {
            gateway: self,
            event: Some(e.clone()),
            t0,
        };
        let out = match self
            .executor
            .run(&a.tool, &a.policy.policy, &a.args, &call_id, r.trace_id)
            .await
        {
            Ok(o) => o,
            Err(d) => {
                abandoned.event = None;
                let _ = self.recorded(e, Outcome::Failed, Some(&d), t0).await;
                return Err(d);
            }
        };
        e.upstream_status = out.status;
        // 8. inspect output (still abandonable: a large answer waits for a
        // thread)
        let filters = &a.tool.spec.filters;
        let on = |g| {
            if filters.redact_output { g } else { Guard::Off }
        };
        let guards = inspect::Guards {
            secrets: on(filters.secrets),
            pii: on(filters.pii),
            rules: Arc::clone(&a.policy.policy.secret_rules),
            injection: inspect::injection::action(&a.tool, true),
            tool: a.tool.spec.name.clone(),
        };
        let ask = self.ask(&a.policy.policy);
        let inspected = inspect::output(
            out.content,
            out.content_type,
            out.secrets,
            guards,
            ask,
            &call_id,
        )
        .await;
        abandoned.event = None;
        drop(abandoned);
        let seen = match inspected {
            Ok(seen) => seen,
            Err(d) => {
                // Executed, but its answer is withheld.
                let _ = self.recorded(e, Outcome::Failed, Some(&d), t0).await;
                return Err(d);
            }
        };
        // 9. record: the answer leaves only once its event is spooled.
        e.redactions = seen.redactions;
        let findings = findings_line(&a.findings, &seen.findings);
        e.findings = &findings;
        e.bytes_out = seen.content.len() as u64;
        self.recorded(e, Outcome::Allowed, None, t0).await?;
        Ok(Answer {
            call_id,
            content: seen.content,
            content_type: seen.content_type,
            upstream_status: out.status,
            redactions: seen.redactions,
        })
    }

    /// Stages 1 (the session's call cap) to 6, on one snapshot.
    async fn admit(
        &self,
        held: &Held,
        claims: &Claims,
        r: &Request<'_>,
        call_id: &str,
    ) -> Result<Admitted, Refusal> {
        let now = time::OffsetDateTime::now_utc();
        // 1. authenticate: the session's call cap
        authenticate::count_call(&self.calls, claims, now.unix_timestamp())?;
        // 2. validate
        validate::trace_id(r.trace_id)?;
        let (policy, tool) = validate::tool(held, r.tool)?;
        // An MCP server's tool it no longer offers as admitted: refused
        // before the call spends anything (its tools are read first if
        // they are not fresh).
        if let Some(u) = tool.spec.upstream.as_ref().filter(|u| u.kind == "mcp")
            && let Standing::Withdrawn(why) = self
                .executor
                .mcp
                .standing(&policy.policy, &tool.spec.name, u, tool_timeout(&tool))
                .await
        {
            return Err(Refusal::at(Stage::Validate, Reason::ToolWithdrawn, why).rule("pin"));
        }
        let mut args = validate::arguments(&tool, r.arguments)?;
        // 3. inspect input: credentials (when the tool looks), injection
        let filters = &tool.spec.filters;
        let (changed, mut findings) = if filters.argument_secrets == Guard::Off {
            (false, Vec::new())
        } else {
            inspect::detect::arguments(
                &mut args,
                &inspect::Guards {
                    secrets: filters.argument_secrets,
                    pii: Guard::Off,
                    rules: Arc::clone(&policy.policy.secret_rules),
                    injection: warden_shared::policy::OnInjection::Off,
                    tool: tool.spec.name.clone(),
                },
            )?
        };
        findings.extend(
            inspect::injection::arguments(&tool, &mut args, self.ask(&policy.policy), call_id)
                .await?,
        );
        if changed || findings.iter().any(|n| n.action == "redact") {
            // What is left must still be valid arguments.
            let text = serde_json::to_string(&args).unwrap_or_default();
            args = validate::arguments(&tool, &text)?;
        }
        // 4. authorize
        let standing = held.standing.as_deref().ok_or_else(|| {
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
        let authorized = self
            .authorization
            .check(&policy, &tool, &caller, &args, now)?;
        // 5. limit
        let key = CallKey {
            agent: &self.agent_id,
            owner: &standing.owner,
            session: &claims.sid,
            tool: &tool.spec.name,
            cost: tool.spec.cost,
        };
        self.limiter.admit(&policy.limits, &key).await?;
        // 6. approve
        let risk = tool.risk.unwrap_or(warden_shared::policy::Risk::Critical);
        let mut approval = String::new();
        let needed = approve::needed(&policy, &tool, risk, &authorized);
        let waited = needed.is_some();
        if let Some(n) = needed {
            let call = approve::Call {
                tool: &tool,
                policy: &policy.policy,
                args: &args,
                session: &claims.sid,
                user: claims.user_id().unwrap_or_default(),
                reason: r.reason,
                trace_id: r.trace_id,
                no_wait: r.no_wait,
            };
            if tool.spec.confirmed_by_user() {
                approval =
                    approve::confirm_by_user(r.user, self.desk.as_ref(), &call, &self.agent_id)
                        .await?;
            } else {
                let Some(desk) = &self.desk else {
                    return Err(approve::required(&tool, &n));
                };
                approval = desk.obtain(&call, &n, false).await?;
            }
        }
        Ok(Admitted {
            policy,
            tool,
            args,
            findings,
            approval,
            waited,
        })
    }

    /// `ListTools`: the tools this session may call (a critical one only
    /// when the document gives it a quorum: then it runs once approved),
    /// after stage 1.
    pub async fn list_tools(&self, creds: &Credentials<'_>) -> Result<Listing, Refusal> {
        let (claims, held) = self.authenticate(creds).await?;
        let Some(policy) = &held.policy else {
            return Ok(Listing::default());
        };
        let candidates: Vec<&Arc<ToolEntry>> = policy
            .catalog
            .iter()
            .filter(|t| {
                t.risk.is_some_and(|r| {
                    r < warden_shared::policy::Risk::Critical || t.spec.critical_with_quorum()
                })
            })
            .filter(|t| authorize::scopes_cover(&claims, t).is_ok())
            .collect();
        // An MCP server's tool is listed only while the server offers it as
        // admitted: the servers' tools are read first (all at once).
        let mcp_upstream = |t: &ToolEntry| {
            t.spec
                .upstream
                .as_ref()
                .filter(|u| u.kind == "mcp")
                .cloned()
        };
        let servers: std::collections::BTreeSet<String> = candidates
            .iter()
            .filter_map(|t| mcp_upstream(t).map(|u| u.address))
            .collect();
        if !servers.is_empty() {
            self.executor
                .mcp
                .read_servers(&policy.policy, servers.iter().map(String::as_str))
                .await;
        }
        let tools = candidates
            .into_iter()
            .filter(|t| {
                mcp_upstream(t).is_none_or(|u| {
                    self.executor
                        .mcp
                        .known_standing(&policy.policy, &t.spec.name, &u)
                        == Standing::Offered
                })
            })
            .cloned()
            .collect();
        Ok(Listing {
            policy_version: policy.version,
            tools,
        })
    }

    /// The policy's injection classifier, if it has one.
    fn ask<'a>(
        &'a self,
        policy: &'a warden_shared::policy::Policy,
    ) -> Option<inspect::classifier::Ask<'a>> {
        policy
            .document
            .classifier
            .as_ref()
            .map(|spec| inspect::classifier::Ask {
                spec,
                secrets: &policy.document.secrets,
                clients: self.executor.clients(),
            })
    }

    /// Stage 1 for a tool call: a refusal (no claim known yet) is
    /// recorded.
    async fn admit_caller(
        &self,
        creds: &Credentials<'_>,
        r: &Request<'_>,
        call_id: &str,
        t0: Instant,
    ) -> Result<(Arc<Claims>, Arc<Held>), Refusal> {
        self.authenticate(creds).await.inspect_err(|d| {
            let e = self.event(r, &creds.peer, None, call_id, &Held::default());
            let _ = self.record(e, Outcome::Denied, Some(d), t0);
        })
    }

    fn event<'a>(
        &'a self,
        r: &Request<'a>,
        peer: &'a str,
        claims: Option<&'a Claims>,
        call_id: &'a str,
        held: &Held,
    ) -> Event<'a> {
        // Metrics count calls to names the policy lacks as one label, so
        // that an agent cannot grow them.
        let known_tool = held
            .policy
            .as_ref()
            .is_some_and(|p| p.catalog.get(r.tool).is_some());
        Event {
            call_id,
            rpc: r.rpc,
            agent: &self.agent_id,
            session: claims.map_or("", |c| c.sid.as_str()),
            user: claims.and_then(Claims::user_id).unwrap_or_default(),
            user_verified: claims.is_some_and(Claims::user_verified),
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
            findings: "",
            micros: 0,
            approval: "",
            bytes_out: 0,
            peer,
            kept: None,
        }
    }

    fn record<'a>(
        &'a self,
        mut e: Event<'a>,
        outcome: Outcome,
        denial: Option<&'a Refusal>,
        t0: Instant,
    ) -> Result<Option<u64>, Refusal> {
        e.outcome = outcome;
        e.denial = denial;
        e.micros = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.recorder.record(&e).map_err(record_refusal)
    }

    /// Records a decision, and in strict mode waits until it is on disk.
    async fn recorded<'a>(
        &'a self,
        e: Event<'a>,
        outcome: Outcome,
        denial: Option<&'a Refusal>,
        t0: Instant,
    ) -> Result<(), Refusal> {
        let seq = self.record(e, outcome, denial, t0)?;
        self.recorder.settle(seq).await.map_err(record_refusal)
    }

    /// Stage 9 before the upstream acts: in `refuse` mode, a call whose
    /// record the spool could not take does not run.
    fn recordable(&self) -> Result<(), Refusal> {
        self.recorder.ready().map_err(record_refusal)
    }
}

fn record_refusal(e: crate::infra::spool::SpoolError) -> Refusal {
    Refusal::at(
        Stage::Record,
        Reason::AuditUnavailable,
        format!("the call cannot be recorded, so it is refused: {e}"),
    )
}

#[cfg(test)]
mod tests;
