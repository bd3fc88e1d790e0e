//! The stdio transport: the sidecar starts the server as a child process
//! (with only the environment the policy gives it), writes one JSON-RPC
//! message per line to its stdin and reads one per line from its stdout;
//! its stderr goes to the sidecar's log, with the secrets it was given
//! removed. Requests are matched to answers by id, so calls run
//! concurrently. A process that exits (or writes something that is not a
//! message) fails the requests in flight and is started again on the next
//! use, no sooner than a backoff that doubles from 1 s to 30 s; each start
//! is a new session, after which the tools are read again before a call.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Notify, oneshot};

use super::super::http::fill_secrets;
use super::super::secrets::Secret;
use super::{Ctx, Failure, rpc};
use crate::gateway::execute::http::Failure as HttpFailure;

/// Longest line (one message) read from a server.
const MAX_LINE: usize = 8 * 1024 * 1024;
/// Longest stderr line logged.
const MAX_LOG_LINE: usize = 512;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Value, i64>>>>;

/// A running server process.
#[derive(Debug)]
struct Proc {
    stdin: tokio::sync::Mutex<ChildStdin>,
    pending: Arc<Pending>,
    alive: Arc<AtomicBool>,
    /// Killed when the link drops it.
    _child: Child,
}

impl Proc {
    async fn send(&self, msg: &Value) -> Result<(), Failure> {
        let mut line = serde_json::to_vec(msg).map_err(|e| Failure::Protocol(e.to_string()))?;
        line.push(b'\n');
        let mut w = self.stdin.lock().await;
        let written = async {
            w.write_all(&line).await?;
            w.flush().await
        };
        written.await.map_err(|e| {
            Failure::Transport(HttpFailure::Unavailable(format!(
                "writing to the server: {e}"
            )))
        })
    }
}

#[derive(Debug)]
struct Restarts {
    last: Option<Instant>,
    backoff: Duration,
}

/// One server's link: its process, if one runs.
#[derive(Debug)]
pub(super) struct Link {
    proc: Mutex<Option<Arc<Proc>>>,
    starting: tokio::sync::Mutex<()>,
    restarts: Mutex<Restarts>,
    next_id: AtomicU64,
    epoch: AtomicU64,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            proc: Mutex::new(None),
            starting: tokio::sync::Mutex::new(()),
            restarts: Mutex::new(Restarts {
                last: None,
                backoff: FIRST_BACKOFF,
            }),
            next_id: AtomicU64::new(1),
            epoch: AtomicU64::new(0),
        }
    }
}

fn unavailable(m: impl Into<String>) -> Failure {
    Failure::Transport(HttpFailure::Unavailable(m.into()))
}

/// Reads the server's stdout: answers go to their requests, a changed tool
/// list is told, pings are answered, other requests refused. Ends (and
/// fails what is pending) at end of stream or on a line that is not a
/// message.
async fn read_out(
    out: tokio::process::ChildStdout,
    pending: Arc<Pending>,
    alive: Arc<AtomicBool>,
    changed: Arc<Notify>,
    replies: tokio::sync::mpsc::Sender<Value>,
    server: String,
) {
    let mut r = BufReader::with_capacity(64 * 1024, out);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match (&mut r)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(server = %server, error = %e, "mcp: reading the server failed");
                break;
            }
        };
        if n == 0 {
            break;
        }
        if line.len() > MAX_LINE {
            tracing::warn!(server = %server, "mcp: the server wrote a message over 8 MiB; stopped");
            break;
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<Value>(text) else {
            tracing::warn!(server = %server, "mcp: the server wrote a line that is not JSON; stopped");
            break;
        };
        match rpc::classify(&v) {
            Ok(rpc::Message::Answer(id, result)) => {
                let waiter = pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                if let Some(w) = waiter {
                    let _ = w.send(result);
                }
            }
            Ok(rpc::Message::Notification(m)) => {
                if m == "notifications/tools/list_changed" {
                    changed.notify_one();
                }
            }
            Ok(rpc::Message::Request(id, method)) => {
                let reply = if method == "ping" {
                    serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {}})
                } else {
                    serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {
                        "code": -32601, "message": "the Warden sidecar serves no requests"}})
                };
                let _ = replies.try_send(reply);
            }
            Ok(rpc::Message::Other) => {}
            Err(_) => {
                tracing::warn!(server = %server, "mcp: the server wrote a message that is not JSON-RPC; stopped");
                break;
            }
        }
    }
    alive.store(false, Ordering::Release);
    // Dropping the senders fails every waiter.
    pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// Logs the server's stderr, line by line, secrets removed.
async fn read_err(err: tokio::process::ChildStderr, server: String, secrets: Vec<Secret>) {
    let mut r = BufReader::new(err);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut r).take(64 * 1024).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut text = String::from_utf8_lossy(&line).trim_end().to_owned();
        for s in &secrets {
            if !s.expose().is_empty() {
                text = text.replace(s.expose(), crate::gateway::inspect::REDACTED);
            }
        }
        let cut: String = text.chars().take(MAX_LOG_LINE).collect();
        tracing::debug!(target: "warden::mcp::stderr", server = %server, "{cut}");
    }
}

impl Link {
    /// How many processes were started so far.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn running(&self) -> Option<Arc<Proc>> {
        self.proc
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|p| p.alive.load(Ordering::Acquire))
    }

    /// Stops the process (it is killed when the last request holding it
    /// ends).
    pub(super) fn stop(&self) {
        *self.proc.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The running process, or a new one that has been initialized.
    async fn process(&self, ctx: &Ctx<'_>, timeout: Duration) -> Result<Arc<Proc>, Failure> {
        if let Some(p) = self.running() {
            return Ok(p);
        }
        let _one = self.starting.lock().await;
        if let Some(p) = self.running() {
            return Ok(p);
        }
        {
            let mut r = self.restarts.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(last) = r.last {
                let since = last.elapsed();
                if since < r.backoff {
                    let wait = r.backoff - since;
                    return Err(unavailable(format!(
                        "the server exited; it is started again in {} ms",
                        wait.as_millis()
                    )));
                }
                // A process that lived past the backoff resets it.
                r.backoff = if since > MAX_BACKOFF {
                    FIRST_BACKOFF
                } else {
                    (r.backoff * 2).min(MAX_BACKOFF)
                };
            }
            r.last = Some(Instant::now());
        }
        let proc = self.start(ctx, timeout).await?;
        *self.proc.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&proc));
        self.epoch.fetch_add(1, Ordering::AcqRel);
        Ok(proc)
    }

    async fn start(&self, ctx: &Ctx<'_>, timeout: Duration) -> Result<Arc<Proc>, Failure> {
        let cfg = ctx.server;
        let program = cfg.command.as_deref().unwrap_or_default();
        let mut cmd = Command::new(program);
        cmd.args(&cfg.args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, template) in &cfg.env {
            let v = fill_secrets(template, ctx.secrets).map_err(Failure::Transport)?;
            cmd.env(k, v);
        }
        // The secrets themselves, not the values built around them: a
        // server that prints only the secret has it removed too.
        let given: Vec<Secret> = ctx.secrets.values().cloned().collect();
        let mut child = cmd.spawn().map_err(|e| {
            Failure::Transport(HttpFailure::Build(format!("starting {program}: {e}")))
        })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(unavailable("the server's pipes are missing"));
        };
        let pending: Arc<Pending> = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (replies, mut replies_rx) = tokio::sync::mpsc::channel::<Value>(16);
        tokio::spawn(read_out(
            stdout,
            Arc::clone(&pending),
            Arc::clone(&alive),
            Arc::clone(ctx.changed),
            replies,
            ctx.name.to_owned(),
        ));
        tokio::spawn(read_err(stderr, ctx.name.to_owned(), given));
        let proc = Arc::new(Proc {
            stdin: tokio::sync::Mutex::new(stdin),
            pending,
            alive,
            _child: child,
        });
        // The server's own requests (pings) are answered while it lives.
        let weak = Arc::downgrade(&proc);
        tokio::spawn(async move {
            while let Some(reply) = replies_rx.recv().await {
                let Some(p) = weak.upgrade() else { return };
                let _ = p.send(&reply).await;
            }
        });
        let result = self
            .exchange(&proc, "initialize", &rpc::initialize_params(), timeout)
            .await?
            .map_err(|code| Failure::Protocol(format!("initialize failed with error {code}")))?;
        super::negotiated(&result)?;
        proc.send(&rpc::notification("notifications/initialized", None))
            .await?;
        Ok(proc)
    }

    async fn exchange(
        &self,
        proc: &Proc,
        method: &str,
        params: &Value,
        timeout: Duration,
    ) -> Result<Result<Value, i64>, Failure> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        proc.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        if let Err(e) = proc.send(&rpc::request(id, method, params)).await {
            proc.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(unavailable("the server exited before it answered")),
            Err(_) => {
                proc.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                let cancel = rpc::notification(
                    "notifications/cancelled",
                    Some(&serde_json::json!({"requestId": id, "reason": "timeout"})),
                );
                let _ = proc.send(&cancel).await;
                Err(Failure::Transport(HttpFailure::Timeout(timeout)))
            }
        }
    }

    /// Sends request `method` to the process (started first if need be)
    /// and waits for its answer: the result, or the error code.
    pub(super) async fn request(
        &self,
        ctx: &Ctx<'_>,
        method: &str,
        params: &Value,
        timeout: Duration,
    ) -> Result<Result<Value, i64>, Failure> {
        let started = tokio::time::Instant::now();
        let proc = self.process(ctx, timeout).await?;
        let timeout = timeout.saturating_sub(started.elapsed());
        self.exchange(&proc, method, params, timeout).await
    }
}
