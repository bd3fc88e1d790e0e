//! Stage 6: human approval. A call needs one when its tool's risk is
//! `high` (or `critical` with a quorum of at least two in the document), or
//! when one of the document's `approval_rules` — Cedar permits over the
//! same request the rules of stage 4 allowed — matches it; the quorum is
//! the tool's `approval.approvals` or a matching rule's `@approvals`,
//! whichever is larger.
//!
//! Such a call goes to the control plane's approval desk ([`Desk`]): the
//! sidecar files a request bound to the exact call (tool, canonical
//! arguments, session; `warden_shared::policy::approval_binding`), with the
//! arguments shown to approvers redacted, then holds the call until the
//! decision arrives over its mesh stream (no polling), up to the tool's
//! deadline. Approved: the approval is spent (once, at the control plane)
//! and the call goes on. Denied, timed out, or the control plane out of
//! reach for the whole deadline: refused, each with its own reason. An
//! agent that asks not to wait gets `APPROVAL_PENDING` with the request's
//! id at once, and the same call made again later runs once approved. A
//! waiting call the agent abandons withdraws its request.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cedar_policy::{Authorizer, Decision as CedarDecision};
use tokio::task::JoinHandle;
use tonic::Code;
use warden_shared::policy::{Policy, Risk, approval_binding};
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::approval_service_client::ApprovalServiceClient;
use warden_shared::refusal::Reason;

use super::authorize::Authorized;
use super::catalog::ToolEntry;
use super::{Refusal, Stage};
use crate::cp::ControlPlane;
use crate::state::State;
use crate::state::approvals::Decision;
use crate::state::held::HeldPolicy;

/// Why a call needs approval, and from how many people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needed {
    /// Distinct people.
    pub approvals: u32,
    /// Why: `risk high`, or the matching rules' ids.
    pub because: Vec<String>,
}

/// Whether the call needs approval (and why), from its tool's risk and the
/// approval rules. A rule that fails to evaluate counts as matching: the
/// call waits for a person rather than run unasked.
pub fn needed(
    policy: &HeldPolicy,
    tool: &ToolEntry,
    risk: Risk,
    authorized: &Authorized,
) -> Option<Needed> {
    let mut n = Needed {
        approvals: 0,
        because: Vec::new(),
    };
    if risk >= Risk::High {
        n.approvals = tool.spec.approvals();
        n.because.push(format!("risk {}", risk.as_str()));
    }
    let rules = policy.policy.approval_rules.for_tool(&tool.spec.name);
    if !rules.is_empty() {
        let response =
            Authorizer::new().is_authorized(&authorized.request, rules, &authorized.entities);
        let name_of = |id: &cedar_policy::PolicyId| {
            rules
                .annotation(id, "id")
                .map_or_else(|| id.to_string(), str::to_owned)
        };
        let quorum_of = |id: &cedar_policy::PolicyId| {
            rules
                .annotation(id, "approvals")
                .and_then(|a| a.parse().ok())
                .unwrap_or(1)
                .max(tool.spec.approvals())
        };
        for e in response.diagnostics().errors() {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(p) = e;
            tracing::warn!(tool = %tool.spec.name, rule = %name_of(p.policy_id()), "an approval rule failed to evaluate; the call needs approval");
            n.approvals = n.approvals.max(quorum_of(p.policy_id()));
            n.because
                .push(format!("evaluation error in {}", name_of(p.policy_id())));
        }
        if response.decision() == CedarDecision::Allow {
            for id in response.diagnostics().reason() {
                n.approvals = n.approvals.max(quorum_of(id));
                n.because.push(name_of(id));
            }
        }
    }
    (n.approvals > 0).then_some(n)
}

/// What the end user answered when asked to confirm a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    /// An explicit yes.
    Accepted,
    /// No, or dismissed.
    Declined,
    /// No answer (the deadline passed, the client went away): why.
    Unanswered(String),
}

/// A front door that can ask the agent's end user to confirm a call (the
/// MCP front door, through the client's elicitation).
pub trait UserConfirm: Send + Sync {
    /// Asks; answers within `deadline`.
    fn confirm<'a>(
        &'a self,
        message: String,
        deadline: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Confirmation> + Send + 'a>>;
}

/// How the front door a call came through can reach the agent's end user.
#[derive(Clone, Copy, Default)]
pub enum UserChannel<'a> {
    /// It cannot (an MCP client without elicitation).
    #[default]
    None,
    /// It asks them itself (MCP elicitation).
    Ask(&'a dyn UserConfirm),
    /// The user's application answers through the agent API's
    /// `ConfirmCall`: the request goes to the control plane, for the user
    /// to decide, and the call waits as for people.
    AgentApi,
}

impl std::fmt::Debug for UserChannel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "None",
            Self::Ask(_) => "Ask",
            Self::AgentApi => "AgentApi",
        })
    }
}

/// Longest a confirmation question to the user may be.
const MAX_QUESTION: usize = 4096;

/// Has the end user confirm `call` through `channel`: runs on an explicit
/// yes only. Returns the approval spent, when the user decided through the
/// agent API.
pub async fn confirm_by_user(
    channel: UserChannel<'_>,
    desk: Option<&Desk>,
    call: &Call<'_>,
    agent: &str,
) -> Result<String, Refusal> {
    let tool = call.tool.spec.name.as_str();
    let asker = match (channel, desk) {
        (UserChannel::Ask(a), _) => a,
        (UserChannel::AgentApi, Some(desk)) => {
            let n = Needed {
                approvals: 1,
                because: vec!["user confirms".to_owned()],
            };
            return desk.obtain(call, &n, true).await;
        }
        _ => {
            return Err(refuse(
                Reason::UserConfirmationUnavailable,
                format!(
                    "{tool} runs only once its end user confirms the call, and this client cannot ask them: call it through an MCP client that supports elicitation, or the agent API (the user's application answers with ConfirmCall)"
                ),
            )
            .rule("by user"));
        }
    };
    let mut question = format!(
        "Agent {agent} asks to call {tool} with {}",
        for_display(call.tool, call.policy, call.args)
    );
    if !call.reason.is_empty() {
        question.push_str(&format!(
            " (its reason: {})",
            printable(call.reason, MAX_REASON)
        ));
    }
    question.push_str(". Allow this call, once?");
    let question = printable(&question, MAX_QUESTION);
    match asker
        .confirm(question, call.tool.spec.approval_deadline())
        .await
    {
        Confirmation::Accepted => Ok(String::new()),
        Confirmation::Declined => Err(refuse(
            Reason::ApprovalDenied,
            format!("the user declined this call of {tool}"),
        )
        .rule("by user")),
        Confirmation::Unanswered(why) => Err(refuse(
            Reason::ApprovalTimeout,
            format!("the user did not confirm this call of {tool}: {why}"),
        )
        .rule("by user")),
    }
}

/// The refusal for a call that needs approval where no desk is configured.
pub fn required(tool: &ToolEntry, n: &Needed) -> Refusal {
    let because = n.because.join(", ");
    Refusal::at(
        Stage::Approve,
        Reason::ApprovalRequired,
        format!(
            "{} needs {} human approval{} within {} s ({because}), and this sidecar has no approval desk",
            tool.spec.name,
            n.approvals,
            if n.approvals == 1 { "" } else { "s" },
            tool.spec.approval_deadline().as_secs(),
        ),
    )
    .rule(because)
}

/// The call to approve, as the desk files it. `Debug` leaves the arguments
/// out.
#[derive(Clone, Copy)]
pub struct Call<'a> {
    /// The tool.
    pub tool: &'a ToolEntry,
    /// The policy in force (for the tool's secrets).
    pub policy: &'a Policy,
    /// The validated arguments.
    pub args: &'a serde_json::Value,
    /// The session.
    pub session: &'a str,
    /// Its user, if any.
    pub user: &'a str,
    /// The agent's stated reason.
    pub reason: &'a str,
    /// The agent's trace id.
    pub trace_id: &'a str,
    /// Refuse with `APPROVAL_PENDING` rather than wait.
    pub no_wait: bool,
}

impl std::fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("tool", &self.tool.spec.name)
            .field("session", &self.session)
            .field("no_wait", &self.no_wait)
            .finish_non_exhaustive()
    }
}

/// Shown to approvers in place of a sensitive value.
/// Largest arguments shown to approvers.
const MAX_DISPLAY: usize = 64 * 1024;
/// Longest reason sent with a request.
const MAX_REASON: usize = 1024;
/// Ids asked for without waiting, remembered so that an abandoned waiter
/// does not cancel a request an agent means to come back to.
const MAX_NOT_WAITED: usize = 4096;
/// Each call to the desk, at most.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the request of a call that went away is tried to be withdrawn.
const WITHDRAW_FOR: Duration = Duration::from_secs(3);

/// The arguments as approvers see them: values the schema marks sensitive
/// (`writeOnly: true` or `x-sensitive: true`) and strings holding one of
/// the tool's secrets replaced by `[redacted]`.
pub fn for_display(tool: &ToolEntry, policy: &Policy, args: &serde_json::Value) -> String {
    let shown = super::sensitive::without_sensitive(tool, policy, args, true);
    let text = serde_json::to_string(&shown).unwrap_or_default();
    if text.len() <= MAX_DISPLAY {
        text
    } else {
        serde_json::to_string(&format!(
            "(arguments of {} bytes, too large to show; the approval binds them exactly)",
            text.len()
        ))
        .unwrap_or_default()
    }
}

/// `s` cut to at most `max` bytes at a character boundary, control
/// characters removed.
fn printable(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// What the desk answered a filing with.
struct Ticket {
    id: String,
    status: pb::ApprovalStatus,
    /// When people stop deciding it.
    deadline: tokio::time::Instant,
    decided_by: String,
    comment: String,
}

/// The sidecar's end of the approval desk.
#[derive(Debug)]
pub struct Desk {
    cp: Arc<ControlPlane>,
    state: Arc<State>,
    /// Requests filed by calls that asked not to wait: they stand until
    /// decided, whoever else waits for them.
    not_waited: Arc<Mutex<HashSet<String>>>,
}

/// What a waiting call has filed, for [`Withdraw`].
enum Filed {
    /// The filing, not answered yet.
    InFlight(JoinHandle<Result<pb::RequestApprovalResponse, Refusal>>),
    /// The pending request.
    Pending(String),
}

/// Withdraws what a waiting call filed when the call goes away first: at
/// once when the desk has answered the filing, or once it does (a call
/// abandoned mid-filing must not leave its request standing until its
/// deadline).
struct Withdraw {
    cp: Arc<ControlPlane>,
    not_waited: Arc<Mutex<HashSet<String>>>,
    filed: Option<Filed>,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        let Some(filed) = self.filed.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (cp, not_waited) = (Arc::clone(&self.cp), Arc::clone(&self.not_waited));
        rt.spawn(async move {
            let id = match filed {
                Filed::Pending(id) => id,
                Filed::InFlight(filing) => match filing.await {
                    Ok(Ok(r)) if r.status() == pb::ApprovalStatus::Pending => r.id,
                    _ => return,
                },
            };
            if contains(&not_waited, &id) {
                return;
            }
            withdraw(&cp, &id).await;
        });
    }
}

/// Withdraws request `id` for a call that went away, retrying what may pass
/// for a few seconds, since nobody is left to see a failure.
async fn withdraw(cp: &ControlPlane, id: &str) {
    let until = tokio::time::Instant::now() + WITHDRAW_FOR;
    let cancelled = retrying(cp, until, |mut c| {
        let mut req = tonic::Request::new(pb::CancelApprovalRequest { id: id.to_owned() });
        req.set_timeout(RPC_TIMEOUT);
        async move { c.cancel_approval(req).await }
    })
    .await;
    match cancelled {
        Ok(r) if r.cancelled => {
            tracing::info!(approval = %id, "approval request withdrawn: the waiting call went away");
        }
        Ok(_) => {}
        Err(r) => {
            tracing::warn!(approval = %id, error = %r.message, "could not withdraw an approval request");
        }
    }
}

/// Whether a failed desk call may pass if tried again.
fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Internal
    )
}

fn contains(set: &Mutex<HashSet<String>>, id: &str) -> bool {
    set.lock().unwrap_or_else(|p| p.into_inner()).contains(id)
}

fn refuse(reason: Reason, message: impl Into<String>) -> Refusal {
    Refusal::at(Stage::Approve, reason, message)
}

fn denied(tool: &str, id: &str, by: &str, comment: &str) -> Refusal {
    refuse(
        Reason::ApprovalDenied,
        format!("{by} denied this call of {tool}: {comment}"),
    )
    .approval(id)
}

impl Desk {
    /// A desk reached through `cp`, learning decisions from `state`.
    pub fn new(cp: Arc<ControlPlane>, state: Arc<State>) -> Self {
        Self {
            cp,
            state,
            not_waited: Arc::default(),
        }
    }

    fn remember_not_waited(&self, id: &str) {
        let mut set = self.not_waited.lock().unwrap_or_else(|p| p.into_inner());
        if set.len() >= MAX_NOT_WAITED {
            set.clear();
        }
        set.insert(id.to_owned());
    }

    /// Obtains the approval `call` needs (from its end user when `by_user`,
    /// who answers through the agent API): returns the id of the approval
    /// spent, or the refusal.
    pub async fn obtain(
        &self,
        call: &Call<'_>,
        n: &Needed,
        by_user: bool,
    ) -> Result<String, Refusal> {
        let tool = call.tool.spec.name.as_str();
        let binding = approval_binding(tool, call.args, call.session).map_err(|e| {
            refuse(
                Reason::InvalidArgument,
                format!("the arguments cannot be canonicalized to bind an approval: {e}"),
            )
        })?;
        let until = tokio::time::Instant::now() + call.tool.spec.approval_deadline();
        let filing = pb::RequestApprovalRequest {
            binding: binding.clone(),
            session_id: call.session.to_owned(),
            user_id: printable(call.user, 128),
            tool: tool.to_owned(),
            arguments_json: for_display(call.tool, call.policy, call.args),
            reason: printable(call.reason, MAX_REASON),
            trace_id: call.trace_id.to_owned(),
            because: printable(&n.because.join(", "), MAX_REASON),
            quorum: n.approvals,
            deadline_seconds: u32::try_from(call.tool.spec.approval_deadline().as_secs())
                .unwrap_or(u32::MAX),
            by_user,
        };
        let mut withdraw = Withdraw {
            cp: Arc::clone(&self.cp),
            not_waited: Arc::clone(&self.not_waited),
            filed: None,
        };
        // An approval an identical call spent first sends this one round
        // again, for its own; a few rounds at most.
        for _ in 0..3 {
            let guard = (!call.no_wait).then_some(&mut withdraw);
            let t = self.file(&filing, until, guard).await?;
            let decision = match t.status {
                pb::ApprovalStatus::Approved => Decision::Approved,
                pb::ApprovalStatus::Denied => Decision::Denied {
                    by: t.decided_by,
                    comment: t.comment,
                },
                _ if call.no_wait => {
                    self.remember_not_waited(&t.id);
                    let waits_for = if by_user {
                        "its user's confirmation (ConfirmCall)".to_owned()
                    } else {
                        format!(
                            "{} human approval{}",
                            n.approvals,
                            if n.approvals == 1 { "" } else { "s" }
                        )
                    };
                    return Err(refuse(
                        Reason::ApprovalPending,
                        format!(
                            "{tool} waits for {waits_for}; make the same call again once it is approved"
                        ),
                    )
                    .rule(n.because.join(", "))
                    .approval(&t.id));
                }
                _ => {
                    withdraw.filed = Some(Filed::Pending(t.id.clone()));
                    let decided = self
                        .state
                        .approvals
                        .wait(&t.id, until.min(t.deadline))
                        .await;
                    withdraw.filed = None;
                    match decided {
                        Some(d) => d,
                        None if !self.state.link().connected => {
                            return Err(refuse(
                                Reason::ApprovalUnavailable,
                                "the control plane was out of reach until the approval's deadline; no decision could be learned",
                            )
                            .approval(&t.id));
                        }
                        None => {
                            return Err(refuse(
                                Reason::ApprovalTimeout,
                                format!(
                                    "nobody decided on this call of {tool} before its deadline"
                                ),
                            )
                            .approval(&t.id));
                        }
                    }
                }
            };
            match decision {
                Decision::Denied { by, comment } => {
                    return Err(denied(tool, &t.id, &by, &comment));
                }
                Decision::Approved => {
                    if let Some(id) = self.spend(&binding, until).await? {
                        return Ok(id);
                    }
                    // An identical call spent it first: this one needs its
                    // own approval.
                }
            }
        }
        Err(refuse(
            Reason::ApprovalUnavailable,
            format!("identical calls of {tool} kept spending the approvals this one was given"),
        ))
    }

    /// Files the request (or finds the one standing), retrying while the
    /// control plane is out of reach, until `until`.
    async fn file(
        &self,
        filing: &pb::RequestApprovalRequest,
        until: tokio::time::Instant,
        withdraw: Option<&mut Withdraw>,
    ) -> Result<Ticket, Refusal> {
        // A task of its own, so that a call going away mid-filing can still
        // withdraw what the desk files.
        let (cp, filing) = (Arc::clone(&self.cp), filing.clone());
        let task = tokio::spawn(async move {
            retrying(&cp, until, |mut c| {
                let mut req = tonic::Request::new(filing.clone());
                req.set_timeout(RPC_TIMEOUT);
                async move { c.request_approval(req).await }
            })
            .await
        });
        let answered = match withdraw {
            Some(w) => {
                let task = w.filed.insert(Filed::InFlight(task));
                let Filed::InFlight(task) = task else {
                    unreachable!("just inserted")
                };
                let answered = task.await;
                w.filed = None;
                answered
            }
            None => task.await,
        };
        let r = answered.map_err(|_| {
            refuse(
                Reason::ApprovalUnavailable,
                "the filing of the approval request failed",
            )
        })??;
        let now = crate::now_unix();
        let left = r
            .deadline
            .as_ref()
            .map_or(0, |d| d.seconds.saturating_sub(now).max(0));
        Ok(Ticket {
            status: r.status(),
            id: r.id,
            deadline: tokio::time::Instant::now()
                + Duration::from_secs(u64::try_from(left).unwrap_or(0)),
            decided_by: r.decided_by,
            comment: r.comment,
        })
    }

    /// Spends the approval for `binding`: its id, or `None` when there was
    /// none left to spend.
    async fn spend(
        &self,
        binding: &str,
        until: tokio::time::Instant,
    ) -> Result<Option<String>, Refusal> {
        // Spending may outlast the deadline a little: the decision is in.
        let until = until.max(tokio::time::Instant::now() + RPC_TIMEOUT);
        let r = retrying(&self.cp, until, |mut c| {
            let mut req = tonic::Request::new(pb::UseApprovalRequest {
                binding: binding.to_owned(),
            });
            req.set_timeout(RPC_TIMEOUT);
            async move { c.use_approval(req).await }
        })
        .await?;
        Ok(r.used.then_some(r.id))
    }
}

/// Runs `rpc` until it answers, retrying what may pass (the control plane
/// unreachable or failing) with backoff until `until`.
async fn retrying<T, F, Fut>(
    cp: &ControlPlane,
    until: tokio::time::Instant,
    rpc: F,
) -> Result<T, Refusal>
where
    F: Fn(ApprovalServiceClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut backoff = Duration::from_millis(50);
    loop {
        let status = match cp.approval_client() {
            Ok(c) => match tokio::time::timeout_at(until, rpc(c)).await {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(s)) => s,
                Err(_) => tonic::Status::deadline_exceeded("the approval's deadline passed"),
            },
            Err(s) => s,
        };
        if !transient(status.code()) {
            tracing::warn!(code = ?status.code(), error = %status.message(), "the approval desk refused");
            let reason = if status.code() == Code::ResourceExhausted {
                Reason::RateLimited
            } else {
                Reason::ApprovalUnavailable
            };
            return Err(refuse(
                reason,
                format!("the approval desk refused: {}", status.message()),
            ));
        }
        if tokio::time::Instant::now() + backoff >= until {
            tracing::warn!(code = ?status.code(), error = %status.message(), "the approval desk stayed out of reach");
            return Err(refuse(
                Reason::ApprovalUnavailable,
                "the control plane could not be reached to ask for approval before the deadline",
            ));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
