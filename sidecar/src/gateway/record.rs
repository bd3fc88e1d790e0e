//! Stage 9: every decision is recorded. Until the durable, tamper-evident
//! audit trail lands (a later issue, behind [`Recorder`]), a record is a
//! structured log event (target `warden::audit`) and a metric. Arguments
//! are never recorded: only their size and a keyed hash (HMAC-SHA256 under
//! a key random per sidecar process), which tells equal arguments apart
//! without revealing them. The agent's stated reason is kept, truncated.

use std::collections::BTreeMap;
use std::sync::Mutex;

use rand::Rng;

/// The agent's stated reason is kept up to this many characters.
const MAX_REASON_CHARS: usize = 256;

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Authorized (`Authorize`) or executed (`CallTool`).
    Allowed,
    /// A stage refused it.
    Denied,
    /// Allowed, but the upstream failed.
    Failed,
    /// Allowed and sent to the upstream, but the agent went away before
    /// the answer (the upstream may have acted on it).
    Cancelled,
}

impl Outcome {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One record.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    /// The call's id.
    pub call_id: &'a str,
    /// `CallTool` or `Authorize`.
    pub rpc: &'a str,
    /// The agent.
    pub agent: &'a str,
    /// The session (empty if authentication failed).
    pub session: &'a str,
    /// The end user, if any.
    pub user: &'a str,
    /// The tool asked for.
    pub tool: &'a str,
    /// Whether the policy has that tool (metrics count unknown names as
    /// one, so that an agent cannot grow them without bound).
    pub known_tool: bool,
    /// The arguments as sent (hashed here, never recorded).
    pub arguments: &'a str,
    /// The agent's stated reason.
    pub reason: &'a str,
    /// The agent's trace id.
    pub trace_id: &'a str,
    /// How it ended.
    pub outcome: Outcome,
    /// The refusing stage and reason and rule, when denied or failed.
    pub denial: Option<&'a super::Denial>,
    /// The upstream's status, when executed.
    pub upstream_status: u16,
    /// Values redacted from the output.
    pub redactions: u32,
    /// Time in the sidecar, µs.
    pub micros: u64,
}

/// Records decisions.
#[derive(Debug)]
pub struct Recorder {
    key: ring::hmac::Key,
    counts: Mutex<BTreeMap<(String, Outcome, &'static str), u64>>,
}

impl Default for Recorder {
    fn default() -> Self {
        let mut k = [0u8; 32];
        rand::rng().fill(&mut k);
        Self {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k),
            counts: Mutex::default(),
        }
    }
}

impl Recorder {
    /// The keyed hash of an argument text (16 bytes, hex).
    pub fn arguments_digest(&self, text: &str) -> String {
        let tag = ring::hmac::sign(&self.key, text.as_bytes());
        tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Records one decision.
    pub fn record(&self, e: &Event<'_>) {
        let reason_code = e.denial.map_or("", |d| d.reason.as_str());
        let stage = e.denial.map_or("", |d| d.stage.as_str());
        let rule = e.denial.map_or("", |d| d.rule.as_str());
        let stated: String = e.reason.chars().take(MAX_REASON_CHARS).collect();
        tracing::info!(
            target: "warden::audit",
            call_id = e.call_id,
            rpc = e.rpc,
            actor = "agent",
            agent = e.agent,
            session = e.session,
            user = e.user,
            tool = ?e.tool,
            outcome = e.outcome.as_str(),
            stage,
            reason = reason_code,
            rule,
            arguments_bytes = e.arguments.len(),
            arguments_hmac = %self.arguments_digest(e.arguments),
            stated_reason = ?stated,
            trace_id = ?e.trace_id,
            upstream_status = e.upstream_status,
            redactions = e.redactions,
            micros = e.micros,
            "tool call"
        );
        let tool = if e.known_tool { e.tool } else { "(unknown)" };
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((tool.to_owned(), e.outcome, reason_code))
            .or_default() += 1;
    }

    /// Calls by tool, outcome and reason, for metrics.
    pub fn counts(&self) -> BTreeMap<(String, Outcome, &'static str), u64> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
