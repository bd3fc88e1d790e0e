//! Stage 9: every decision is recorded: as an audit event appended to the
//! audit spool before the call's answer leaves (shipped from there to the
//! control plane's tamper-evident log; see `infra::spool`, and
//! `infra::audit` for what a failure to spool means), as a
//! structured log line (target `warden::audit`) and as a metric. The line
//! leaves the call as an owned line on a bounded queue to a writer thread,
//! so a slow log reader does not hold a runtime worker while the queue has
//! room; when it is full the call writes its line itself (nothing is
//! dropped, and the line carries its decision time, as the order of lines
//! may then differ from the order of decisions). Arguments
//! are never recorded: only their size and a keyed hash (HMAC-SHA256 under
//! a key random per sidecar process), which tells equal arguments apart
//! without revealing them. The agent's stated reason is kept, truncated.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use rand::Rng;
use warden_shared::audit::{Actor, ActorKind, Arguments, ArgumentsMode};

use crate::infra::audit::Sink;
use crate::infra::spool::SpoolError;

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
    /// Whether an identity provider proved `user` (a delegated session).
    pub user_verified: bool,
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
    pub denial: Option<&'a super::Refusal>,
    /// The upstream's status, when executed.
    pub upstream_status: u16,
    /// Values redacted from the output.
    pub redactions: u32,
    /// What stage 8's detectors found and did (`signal@where[span]:action`,
    /// space-separated; never a value).
    pub findings: &'a str,
    /// Time in the sidecar, µs.
    pub micros: u64,
    /// The approval spent on the call, if it needed one.
    pub approval: &'a str,
    /// Bytes of the answer the agent was given.
    pub bytes_out: u64,
    /// Where the request came from.
    pub peer: &'a str,
    /// The arguments as the tool's policy keeps them (`None`: not
    /// validated, so only their keyed hash).
    pub kept: Option<Kept>,
}

/// A call's arguments as its audit event keeps them.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    /// How.
    pub mode: ArgumentsMode,
    /// The value (`redacted`, `full`); `None` for `hash`, or when it was
    /// too large to keep.
    pub value: Option<serde_json::Value>,
}

/// Largest kept arguments value, as JSON: the rest of the event must fit
/// in the control plane's bound.
pub const MAX_KEPT_BYTES: usize = 8 * 1024;

impl Kept {
    /// The arguments `args` of `tool` as its `audit_arguments` setting says.
    pub fn of(
        tool: &super::catalog::ToolEntry,
        policy: &warden_shared::policy::Policy,
        args: &serde_json::Value,
    ) -> Self {
        let mode = tool.spec.audit_arguments;
        let value = match mode {
            ArgumentsMode::Hash => None,
            ArgumentsMode::Redacted => Some(super::sensitive::without_sensitive(
                tool, policy, args, true,
            )),
            ArgumentsMode::Full => Some(super::sensitive::without_sensitive(
                tool, policy, args, false,
            )),
        };
        // Too large to keep: the hash and size stand for it.
        let value =
            value.filter(|v| serde_json::to_vec(v).is_ok_and(|b| b.len() <= MAX_KEPT_BYTES));
        Self { mode, value }
    }
}

/// Lines waiting for the writer thread, at most.
const QUEUE: usize = 4096;

/// One audit line, owned, as the writer thread emits it.
#[derive(Debug)]
struct Line {
    /// When the call was decided (unix ms): the log line's own timestamp
    /// is when it was written, and with the queue full a later decision
    /// can be written before earlier ones.
    decided_at_ms: i64,
    call_id: String,
    rpc: String,
    agent: String,
    session: String,
    user: String,
    user_verified: bool,
    tool: String,
    outcome: &'static str,
    stage: &'static str,
    reason: &'static str,
    rule: String,
    approval: String,
    arguments_bytes: usize,
    arguments_hmac: String,
    stated_reason: String,
    trace_id: String,
    upstream_status: u16,
    redactions: u32,
    micros: u64,
}

impl Line {
    fn emit(&self) {
        tracing::info!(
            target: "warden::audit",
            decided_at_ms = self.decided_at_ms,
            call_id = %self.call_id,
            rpc = %self.rpc,
            actor = "agent",
            agent = %self.agent,
            session = %self.session,
            user = %self.user,
            user_verified = self.user_verified,
            tool = ?self.tool,
            outcome = self.outcome,
            stage = self.stage,
            reason = self.reason,
            rule = %self.rule,
            approval = %self.approval,
            arguments_bytes = self.arguments_bytes,
            arguments_hmac = %self.arguments_hmac,
            stated_reason = ?self.stated_reason,
            trace_id = ?self.trace_id,
            upstream_status = self.upstream_status,
            redactions = self.redactions,
            micros = self.micros,
            "tool call"
        );
    }
}

/// What the writer thread is sent.
#[derive(Debug)]
enum Message {
    Line(Box<Line>),
    /// Answered once every line sent before it is written.
    Flush(SyncSender<()>),
}

/// How long the writer naps after a burst before it waits for the next
/// line: while calls keep coming, they find it napping, not waiting, so a
/// call's send wakes no thread (one wakeup per nap instead of one per
/// line). A line is written at most this much later.
const NAP: std::time::Duration = std::time::Duration::from_millis(1);

fn writer(rx: Receiver<Message>) {
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        loop {
            while let Some(m) = next.take().or_else(|| rx.try_recv().ok()) {
                handle(m);
            }
            std::thread::sleep(NAP);
            match rx.try_recv() {
                Ok(m) => next = Some(m),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
            }
        }
    }
}

fn handle(m: Message) {
    match m {
        // A line that cannot be written (a panicking subscriber) must not
        // take the queue and every line in it down with it.
        Message::Line(l) => {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l.emit())).is_err() {
                eprintln!(
                    "warden: an audit line could not be written (the log subscriber panicked)"
                );
            }
        }
        Message::Flush(done) => {
            let _ = done.send(());
        }
    }
}

/// Records decisions.
#[derive(Debug)]
pub struct Recorder {
    key: ring::hmac::Key,
    counts: Mutex<BTreeMap<(String, Outcome, &'static str), u64>>,
    /// To the writer thread; `None` writes inline (the thread could not
    /// be started).
    queue: Option<SyncSender<Message>>,
    /// The audit sink (`None`: log lines only, as the in-process fixtures
    /// run).
    spooling: Option<Arc<Sink>>,
}

/// The findings (space-separated) that fit an audit field, whole, and how
/// many more there were (`+N more`).
fn findings_within_bound(all: &str) -> String {
    let max = warden_shared::audit::MAX_FIELD_BYTES - " +9999 more".len();
    let mut kept = String::new();
    let mut left = 0;
    for f in all.split(' ') {
        if left == 0 && kept.len() + f.len() < max {
            if !kept.is_empty() {
                kept.push(' ');
            }
            kept.push_str(f);
        } else {
            left += 1;
        }
    }
    if left > 0 {
        kept.push_str(&format!(" +{left} more"));
    }
    kept
}

/// An event for the audit log, as the spool keeps it.
fn audit_event(e: &Event<'_>, hmac: String, time_ms: i64) -> warden_shared::audit::Event {
    let mut detail = BTreeMap::new();
    detail.insert("rpc".to_owned(), e.rpc.to_owned());
    if e.upstream_status != 0 {
        detail.insert("upstream_status".into(), e.upstream_status.to_string());
    }
    if e.redactions != 0 {
        detail.insert("redactions".into(), e.redactions.to_string());
    }
    if !e.findings.is_empty() {
        detail.insert("findings".into(), findings_within_bound(e.findings));
    }
    if !e.user.is_empty() {
        detail.insert("user_verified".into(), e.user_verified.to_string());
    }
    if !e.reason.is_empty() {
        detail.insert(
            "stated_reason".into(),
            e.reason.chars().take(MAX_REASON_CHARS).collect(),
        );
    }
    let cut = |s: &str| -> String {
        let mut end = s.len().min(warden_shared::audit::MAX_FIELD_BYTES);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_owned()
    };
    warden_shared::audit::Event {
        time_ms,
        kind: if e.rpc == "CallTool" {
            "tool.call"
        } else {
            "tool.authorize"
        }
        .into(),
        actor: Actor {
            kind: ActorKind::Agent,
            id: e.agent.to_owned(),
        },
        agent: e.agent.to_owned(),
        session: e.session.to_owned(),
        user: cut(e.user),
        trace_id: e.trace_id.to_owned(),
        call_id: e.call_id.to_owned(),
        tool: e.tool.to_owned(),
        outcome: e.outcome.as_str().into(),
        stage: e.denial.map_or("", super::Refusal::stage_str).into(),
        reason: e.denial.map_or("", |d| d.reason.as_str()).into(),
        rule: e.denial.map_or_else(String::new, |d| cut(&d.rule)),
        approval: e
            .denial
            .map_or(e.approval, |d| d.approval_id.as_str())
            .to_owned(),
        peer: cut(e.peer),
        duration_us: e.micros,
        bytes_in: e.arguments.len() as u64,
        bytes_out: e.bytes_out,
        arguments: Some(Arguments {
            mode: e.kept.as_ref().map_or(ArgumentsMode::Hash, |k| k.mode),
            bytes: e.arguments.len() as u64,
            hmac,
            value: e.kept.as_ref().and_then(|k| k.value.clone()),
        }),
        detail,
    }
}

impl Default for Recorder {
    fn default() -> Self {
        let (tx, rx) = sync_channel(QUEUE);
        let queue = std::thread::Builder::new()
            .name("warden-audit".into())
            .spawn(move || writer(rx))
            .map_err(|e| tracing::error!(error = %e, "no audit writer thread; writing inline"))
            .ok()
            .map(|_| tx);
        Self::with_queue(queue)
    }
}

impl Recorder {
    /// A recorder that writes every line on the caller's thread (what
    /// the queue replaced; kept for comparison in the benchmark).
    pub fn inline() -> Self {
        Self::with_queue(None)
    }

    fn with_queue(queue: Option<SyncSender<Message>>) -> Self {
        let mut k = [0u8; 32];
        rand::rng().fill(&mut k);
        Self {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k),
            counts: Mutex::default(),
            queue,
            spooling: None,
        }
    }

    /// Appends every decision to `sink` before the call goes on.
    #[must_use]
    pub fn with_sink(mut self, sink: Arc<Sink>) -> Self {
        self.spooling = Some(sink);
        self
    }

    /// Whether a call may go on to act: in `refuse` mode, only while the
    /// spool has room for its record.
    pub fn ready(&self) -> Result<(), SpoolError> {
        self.spooling.as_ref().map_or(Ok(()), |s| s.ready())
    }

    /// In strict mode, waits until the event `seq` is on disk.
    pub async fn settle(&self, seq: Option<u64>) -> Result<(), SpoolError> {
        match &self.spooling {
            Some(s) => s.settle(seq).await,
            None => Ok(()),
        }
    }

    /// Bytes the spool holds, and its bound (`None` without a spool).
    pub fn spool_usage(&self) -> Option<(u64, u64)> {
        self.spooling.as_ref().map(|s| s.usage())
    }

    /// Audit events lost in `continue` mode and not yet recorded as a gap.
    pub fn lost(&self) -> u64 {
        self.spooling.as_ref().map_or(0, |s| s.lost())
    }

    /// The keyed hash of an argument text (16 bytes, hex).
    pub fn arguments_digest(&self, text: &str) -> String {
        let tag = ring::hmac::sign(&self.key, text.as_bytes());
        tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Records one decision: the event appended to the spool (its
    /// sequence number), the line queued for the writer (or, with the
    /// queue full, written here), the metric counted.
    pub fn record(&self, e: &Event<'_>) -> Result<Option<u64>, SpoolError> {
        let reason_code = e.denial.map_or("", |d| d.reason.as_str());
        let now = crate::now_ms();
        let hmac = self.arguments_digest(e.arguments);
        let spooled = match &self.spooling {
            Some(s) => s.append(&audit_event(e, hmac.clone(), now)),
            None => Ok(None),
        };
        let line = Box::new(Line {
            decided_at_ms: now,
            call_id: e.call_id.to_owned(),
            rpc: e.rpc.to_owned(),
            agent: e.agent.to_owned(),
            session: e.session.to_owned(),
            user: e.user.to_owned(),
            user_verified: e.user_verified,
            tool: e.tool.to_owned(),
            outcome: e.outcome.as_str(),
            stage: e.denial.map_or("", super::Refusal::stage_str),
            reason: reason_code,
            rule: e.denial.map_or_else(String::new, |d| d.rule.clone()),
            approval: e
                .denial
                .map_or(e.approval, |d| d.approval_id.as_str())
                .to_owned(),
            arguments_bytes: e.arguments.len(),
            arguments_hmac: hmac,
            stated_reason: e.reason.chars().take(MAX_REASON_CHARS).collect(),
            trace_id: e.trace_id.to_owned(),
            upstream_status: e.upstream_status,
            redactions: e.redactions,
            micros: e.micros,
        });
        match &self.queue {
            Some(q) => {
                // Full (or the writer gone): written here, never dropped.
                if let Err(
                    TrySendError::Full(Message::Line(l))
                    | TrySendError::Disconnected(Message::Line(l)),
                ) = q.try_send(Message::Line(line))
                {
                    l.emit();
                }
            }
            None => line.emit(),
        }
        let tool = if e.known_tool { e.tool } else { "(unknown)" };
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((tool.to_owned(), e.outcome, reason_code))
            .or_default() += 1;
        spooled
    }

    /// Waits until every line recorded so far is written (for shutdown and
    /// for tests that read the log); false if the writer is gone (lines
    /// recorded since were written inline).
    pub fn flush(&self) -> bool {
        let Some(q) = &self.queue else {
            return true;
        };
        let (done, wait) = sync_channel(1);
        q.send(Message::Flush(done)).is_ok() && wait.recv().is_ok()
    }

    /// Calls by tool, outcome and reason, for metrics.
    pub fn counts(&self) -> BTreeMap<(String, Outcome, &'static str), u64> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use super::*;

    /// Log lines written on this thread.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn event(call_id: &str) -> Event<'_> {
        Event {
            call_id,
            rpc: "CallTool",
            agent: "a1",
            session: "ses_1",
            user: "",
            user_verified: false,
            tool: "echo",
            known_tool: true,
            arguments: r#"{"secret-argument": "ARG-VALUE"}"#,
            reason: "",
            trace_id: "",
            outcome: Outcome::Allowed,
            denial: None,
            upstream_status: 0,
            redactions: 0,
            findings: "",
            micros: 1,
            approval: "",
            bytes_out: 0,
            peer: "",
            kept: None,
        }
    }

    #[test]
    fn the_audit_event_carries_the_findings_and_redactions() {
        let mut e = event("call_1");
        e.redactions = 2;
        e.findings = "pii.email@/to[0..16]:redact injection:0.85@/text[0..32]:flag";
        let a = audit_event(&e, "hmac".into(), 0);
        assert_eq!(a.detail["findings"], e.findings);
        assert_eq!(a.detail["redactions"], "2");
        // None found: no entry.
        let a = audit_event(&event("call_2"), "hmac".into(), 0);
        assert!(!a.detail.contains_key("findings"));
        // Many: as many whole findings as the field holds, then a count;
        // the event stays valid.
        let many: Vec<String> = (0..40)
            .map(|i| format!("pii.email@/items/{i}/email[0..16]:redact"))
            .collect();
        let many = many.join(" ");
        let mut e = event("call_3");
        e.findings = &many;
        let a = audit_event(&e, "hmac".into(), 1_800_000_000_000);
        let kept = &a.detail["findings"];
        assert!(
            kept.len() <= warden_shared::audit::MAX_FIELD_BYTES,
            "{}",
            kept.len()
        );
        assert!(
            kept.starts_with("pii.email@/items/0/email[0..16]:redact "),
            "{kept}"
        );
        assert!(kept.ends_with(" more"), "{kept}");
        a.check().expect("a valid event");
    }

    #[test]
    fn a_line_the_queue_cannot_take_is_written_by_the_call_itself() {
        // A recorder whose writer is gone: every line falls back to the
        // caller's thread, none is dropped, and flush says so.
        let (tx, rx) = sync_channel(1);
        drop(rx);
        let r = Recorder::with_queue(Some(tx));
        // Tracing caches, process-wide, whether anyone listens at a call
        // site, computed when the site is first hit: another test's writer
        // thread (no subscriber) hitting the line's site while ours arrives
        // can cache "nobody" over ours. Hit the site first (it is then
        // registered), and rebuild the cache once ours is in place.
        Recorder::inline().record(&event("call_warmup")).unwrap();
        let out = Captured::default();
        let w = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::callsite::rebuild_interest_cache();
            r.record(&event("call_fallback")).unwrap();
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("call_fallback") && text.contains("decided_at_ms"),
            "{text}"
        );
        assert!(!text.contains("ARG-VALUE"), "arguments are never written");
        assert!(!r.flush());
        assert_eq!(r.counts().values().sum::<u64>(), 1);
    }

    #[test]
    fn queued_lines_are_all_written_before_flush_returns() {
        let r = Recorder::default();
        for i in 0..100 {
            r.record(&event(&format!("call_{i}"))).unwrap();
        }
        assert!(r.flush());
        assert!(Recorder::inline().flush());
    }
}
