//! Stage 9: every decision is recorded. Until the durable, tamper-evident
//! audit trail lands (a later issue, behind [`Recorder`]), a record is a
//! structured log event (target `warden::audit`) and a metric. The event
//! leaves the call as an owned line on a bounded queue to a writer thread,
//! so a slow log reader does not hold a runtime worker while the queue has
//! room; when it is full the call writes its line itself (nothing is
//! dropped, and the line carries its decision time, as the order of lines
//! may then differ from the order of decisions). Arguments
//! are never recorded: only their size and a keyed hash (HMAC-SHA256 under
//! a key random per sidecar process), which tells equal arguments apart
//! without revealing them. The agent's stated reason is kept, truncated.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

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
    pub denial: Option<&'a super::Refusal>,
    /// The upstream's status, when executed.
    pub upstream_status: u16,
    /// Values redacted from the output.
    pub redactions: u32,
    /// Time in the sidecar, µs.
    pub micros: u64,
    /// The approval spent on the call, if it needed one.
    pub approval: &'a str,
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
        }
    }

    /// The keyed hash of an argument text (16 bytes, hex).
    pub fn arguments_digest(&self, text: &str) -> String {
        let tag = ring::hmac::sign(&self.key, text.as_bytes());
        tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Records one decision: the line is queued for the writer (or, with
    /// the queue full, written here), the metric counted.
    pub fn record(&self, e: &Event<'_>) {
        let reason_code = e.denial.map_or("", |d| d.reason.as_str());
        let line = Box::new(Line {
            decided_at_ms: crate::now_ms(),
            call_id: e.call_id.to_owned(),
            rpc: e.rpc.to_owned(),
            agent: e.agent.to_owned(),
            session: e.session.to_owned(),
            user: e.user.to_owned(),
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
            arguments_hmac: self.arguments_digest(e.arguments),
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
            tool: "echo",
            known_tool: true,
            arguments: r#"{"secret-argument": "ARG-VALUE"}"#,
            reason: "",
            trace_id: "",
            outcome: Outcome::Allowed,
            denial: None,
            upstream_status: 0,
            redactions: 0,
            micros: 1,
            approval: "",
        }
    }

    #[test]
    fn a_line_the_queue_cannot_take_is_written_by_the_call_itself() {
        // A recorder whose writer is gone: every line falls back to the
        // caller's thread, none is dropped, and flush says so.
        let (tx, rx) = sync_channel(1);
        drop(rx);
        let r = Recorder::with_queue(Some(tx));
        let out = Captured::default();
        let w = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || r.record(&event("call_fallback")));
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
            r.record(&event(&format!("call_{i}")));
        }
        assert!(r.flush());
        assert!(Recorder::inline().flush());
    }
}
