//! What the hardening of issue 11 costs on the request path, each measured
//! against its baseline in the same run, phases interleaved (A B A B …),
//! ratios taken pair by pair, medians reported:
//!
//! - redaction of one injected secret from a 1 KiB and a 64 KiB JSON answer
//!   (with JSON escapes in it, so both searches run), against the previous
//!   implementation (exact forms, one pass per form, kept here as the
//!   baseline) and against a plain copy of the bytes;
//! - the session call cap with its journal (one appended line per counted
//!   call) against the in-memory count alone;
//! - argument validation of a schema with `oneOf` (validated, then checked
//!   by evaluation for undeclared properties) against a closed schema with
//!   the same properties.
//!
//! - a file secret resolved from the cache (issue 12: read again only when
//!   the file changes) against reading it from the disk on every call, as
//!   before.
//!
//! - the audit event of a call (issue 12: queued to a writer thread) against
//!   writing it on the caller's thread, both formatted as production does
//!   (JSON, through the tracing subscriber, to a sink).
//!
//! Run: `cargo bench -p warden-tests --bench hardening`

#![allow(
    clippy::unwrap_used,
    reason = "a benchmark aborts on any unexpected error"
)]

use std::hint::black_box;
use std::time::Instant;

use serde_json::json;
use warden_shared::policy::InputSchema;
use warden_sidecar::gateway::execute::secrets::Secret;
use warden_sidecar::gateway::inspect::{REDACTED, redact_secrets};
use warden_sidecar::gateway::limit::SessionCalls;
use warden_tests::bench;

/// Pairs of phases.
const ROUNDS: usize = 9;

/// Runs `a` and `b` in interleaved pairs of phases of `n` runs; returns
/// (median a, median b, median a/b) in ns.
fn pairs(n: usize, a: impl FnMut(), b: impl FnMut()) -> (f64, f64, f64) {
    bench::interleaved(ROUNDS, n, a, b)
}

/// The redaction before issue 11: each exact form replaced in its own pass.
mod previous {
    use base64::Engine;

    fn replace_all(h: &[u8], needle: &[u8], with: &[u8]) -> Option<Vec<u8>> {
        if needle.is_empty() || h.len() < needle.len() {
            return None;
        }
        let mut out = Vec::with_capacity(h.len());
        let (mut i, mut n) = (0, 0);
        while i + needle.len() <= h.len() {
            if &h[i..i + needle.len()] == needle {
                out.extend_from_slice(with);
                i += needle.len();
                n += 1;
            } else {
                out.push(h[i]);
                i += 1;
            }
        }
        out.extend_from_slice(&h[i..]);
        (n > 0).then_some(out)
    }

    pub(super) fn redact(mut content: Vec<u8>, secret: &str) -> Vec<u8> {
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        let json = serde_json::to_string(secret).unwrap();
        let json = json[1..json.len() - 1].to_owned();
        let mut forms: Vec<Vec<u8>> = vec![
            secret.as_bytes().to_vec(),
            json.clone().into_bytes(),
            json.replace('/', "\\/").into_bytes(),
            STANDARD.encode(secret).into_bytes(),
            STANDARD_NO_PAD.encode(secret).into_bytes(),
            URL_SAFE.encode(secret).into_bytes(),
            URL_SAFE_NO_PAD.encode(secret).into_bytes(),
        ];
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        forms.dedup();
        for f in forms {
            if let Some(out) = replace_all(&content, &f, super::REDACTED.as_bytes()) {
                content = out;
            }
        }
        content
    }
}

/// A JSON answer of about `bytes` bytes with the secret echoed once.
fn answer(bytes: usize, secret: &str) -> Vec<u8> {
    let items = bench::customer_items(bytes);
    serde_json::to_vec(&json!({"items": items, "echo": format!("Bearer {secret}")})).unwrap()
}

fn redaction() {
    let secret = "sk-live-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c";
    let s = [Secret::new(secret.into())];
    println!("redaction of one injected secret (median of {ROUNDS} interleaved pairs):");
    for bytes in [1024, 64 * 1024] {
        let body = answer(bytes, secret);
        let n = if bytes <= 1024 { 20_000 } else { 400 };
        let (now, prev, r) = pairs(
            n,
            || {
                black_box(redact_secrets(black_box(body.clone()), &s).unwrap());
            },
            || {
                black_box(previous::redact(black_box(body.clone()), secret));
            },
        );
        let (_, copy, rc) = pairs(
            n,
            || {
                black_box(redact_secrets(black_box(body.clone()), &s).unwrap());
            },
            || {
                black_box(black_box(&body).clone());
            },
        );
        println!(
            "  {:>6} B: now {:>9.2} µs ({:>6.0} MB/s)   previous {:>8.2} µs (×{r:.2})   plain copy {:>6.2} µs (×{rc:.0})",
            body.len(),
            now / 1e3,
            body.len() as f64 / now * 1e3,
            prev / 1e3,
            copy / 1e3,
        );
    }
}

fn journal() {
    let dir = tempfile::tempdir().unwrap();
    let journaled = SessionCalls::with_journal(&dir.path().join("session-calls"), 0).unwrap();
    let memory = SessionCalls::default();
    let (mut a, mut b) = (0u64, 0u64);
    let (j, m, r) = pairs(
        50_000,
        || {
            a += 1;
            black_box(journaled.take(&format!("ses_{}", a % 64), u32::MAX, i64::MAX, 0)).ok();
        },
        || {
            b += 1;
            black_box(memory.take(&format!("ses_{}", b % 64), u32::MAX, i64::MAX, 0)).ok();
        },
    );
    println!(
        "max_tool_calls count: journaled {:.2} µs, in memory {:.2} µs (×{r:.1}, +{:.2} µs per capped call)",
        j / 1e3,
        m / 1e3,
        (j - m) / 1e3
    );
}

fn validation() {
    let combined = json!({"type": "object", "properties": {"channel": {"type": "string"}},
    "required": ["channel"],
    "oneOf": [
        {"properties": {"channel": {"const": "email"}, "to": {"type": "string"}, "subject": {"type": "string"}}, "required": ["to"]},
        {"properties": {"channel": {"const": "sms"}, "phone": {"type": "string"}}, "required": ["phone"]}
    ]});
    let plain = json!({"type": "object", "properties": {
        "channel": {"type": "string"}, "to": {"type": "string"}, "subject": {"type": "string"}},
        "required": ["channel", "to"]});
    let args = json!({"channel": "email", "to": "a@example.com", "subject": "hello"});
    let (c, p) = (
        InputSchema::compile(&combined).unwrap(),
        InputSchema::compile(&plain).unwrap(),
    );
    assert!(c.errors(&args, 3).is_empty() && p.errors(&args, 3).is_empty());
    let (tc, tp, r) = pairs(
        20_000,
        || {
            black_box(c.errors(black_box(&args), 3));
        },
        || {
            black_box(p.errors(black_box(&args), 3));
        },
    );
    println!(
        "argument validation: oneOf schema {:.2} µs, closed plain schema {:.2} µs (×{r:.1})",
        tc / 1e3,
        tp / 1e3
    );
}

fn file_secret() {
    use warden_sidecar::gateway::execute::secrets;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, "sk-live-0123456789abcdef0123456789abcdef\n").unwrap();
    let (p, r) = (
        path.display().to_string(),
        format!("file:{}", path.display()),
    );
    // Cached once its change time has settled (2 s).
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !secrets::is_cached(&p) {
        assert!(
            Instant::now() < deadline,
            "the secret file was never cached"
        );
        secrets::resolve(&r).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (c, d, ratio) = pairs(
        50_000,
        || {
            black_box(secrets::resolve(black_box(&r)).unwrap());
        },
        || {
            black_box(std::fs::read_to_string(black_box(&path)).unwrap());
        },
    );
    println!(
        "file secret: cached (one stat) {:.2} µs, read from disk {:.2} µs (×{ratio:.2})",
        c / 1e3,
        d / 1e3
    );
}

fn audit_event() {
    use warden_sidecar::gateway::record::{Event, Outcome, Recorder};
    let queued = Recorder::default();
    let inline = Recorder::inline();
    let args = r#"{"to": "a@example.com", "subject": "hello", "body": "a short note"}"#;
    let event = Event {
        call_id: "call_0123456789abcdef",
        rpc: "CallTool",
        agent: "coder-1",
        session: "ses_0123456789abcdef0123",
        user: "usr_42",
        user_verified: false,
        tool: "send_email",
        known_tool: true,
        arguments: args,
        reason: "the user asked for it",
        trace_id: "trace-1",
        outcome: Outcome::Allowed,
        denial: None,
        upstream_status: 200,
        redactions: 0,
        findings: "",
        micros: 180,
        approval: "",
        bytes_out: 1380,
        peer: "127.0.0.1:50123",
        // As the default `redacted` mode keeps them (stage 9 serialises it).
        kept: Some(warden_sidecar::gateway::record::Kept {
            mode: warden_shared::audit::ArgumentsMode::Redacted,
            value: Some(serde_json::from_str(args).unwrap()),
        }),
    };
    // Chunks smaller than the queue, drained between chunks (not timed), so
    // the queued phase measures the hand-off, not the fallback.
    let n = 2_000;
    let (mut tq, mut ti, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS * 3 {
        let q = bench::ns_per_op(n, || {
            let _ = queued.record(black_box(&event));
        });
        queued.flush();
        let i = bench::ns_per_op(n, || {
            let _ = inline.record(black_box(&event));
        });
        tq.push(q);
        ti.push(i);
        r.push(q / i);
    }
    println!(
        "audit event on the call's path: queued {:.2} µs, written inline {:.2} µs (×{:.2})",
        bench::median(tq) / 1e3,
        bench::median(ti) / 1e3,
        bench::median(r)
    );
    spooled(&event);
}

/// The record stage with the audit spool (issue 15) against without it:
/// each `record` timed alone, phases interleaved in chunks; p50 of each,
/// and the median of the per-chunk p50 differences.
fn spooled(event: &warden_sidecar::gateway::record::Event<'_>) {
    use warden_sidecar::config::AuditOnFull;
    use warden_sidecar::gateway::record::Recorder;
    use warden_sidecar::infra::audit::Sink;
    use warden_sidecar::infra::spool::{Spool, Sync};
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(
        dir.path(),
        1 << 36,
        Sync::Every(std::time::Duration::from_millis(100)),
    )
    .unwrap();
    let plain = Recorder::default();
    let spooling = Recorder::default().with_sink(std::sync::Arc::new(Sink::new(
        spool,
        AuditOnFull::Refuse,
        false,
    )));
    let each = |r: &Recorder, n: usize| -> Vec<f64> {
        (0..n)
            .map(|_| {
                let t = Instant::now();
                let _ = black_box(r.record(black_box(event)));
                t.elapsed().as_nanos() as f64
            })
            .collect()
    };
    let p50 = |v: &[f64]| bench::median(v.to_vec());
    let (mut a, mut b, mut d) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS * 3 {
        let x = each(&plain, 2_000);
        plain.flush();
        let y = each(&spooling, 2_000);
        spooling.flush();
        d.push(p50(&y) - p50(&x));
        a.extend(x);
        b.extend(y);
    }
    println!(
        "record stage, p50 per call: without the spool {:.2} µs, with the spool (one write to the page cache) {:.2} µs; added {:.2} µs (median of {} interleaved chunks)",
        p50(&a) / 1e3,
        p50(&b) / 1e3,
        bench::median(d) / 1e3,
        ROUNDS * 3
    );
}

fn main() {
    // The audit event is formatted as in production: JSON lines, here to
    // a sink.
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::sink)
        .init();
    println!("warden hardening benchmark (issues 11 and 12)\n");
    redaction();
    journal();
    validation();
    file_secret();
    audit_event();
}
