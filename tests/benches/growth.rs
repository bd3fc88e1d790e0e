//! How the per-call cost of stages 4 and 8 grows with the work (issue 18),
//! each against the implementation it replaces, in the same run: phases
//! interleaved (A B A B …), ratios taken pair by pair, medians reported.
//!
//! - Stage 4 (`authorize::check`, entities cached) with 10, 100 and 1,000
//!   Cedar rules spread over 200 tools: the tool's slice against the whole
//!   set (what every call evaluated before).
//! - Secret scrubbing (stage 8) of 1, 4 and 16 injected secrets from 1 KiB,
//!   64 KiB and 1 MiB JSON answers (with JSON escapes, so the unescaped view
//!   is searched too, and the secrets echoed once): the one-pass search
//!   against the reference search (every pattern tried at each byte a match
//!   can start with), and a plain copy of the bytes.
//!
//! Run: `cargo bench -p warden-tests --bench growth` (`WARDEN_BENCH_ONLY=stage4`
//! or `=scrubbing` for one part).

#![allow(
    clippy::unwrap_used,
    reason = "a benchmark aborts on any unexpected error"
)]

use std::fmt::Write;
use std::hint::black_box;
use std::time::Instant;

use serde_json::json;
use warden_sidecar::gateway::authorize::{self, Authorization, Caller};
use warden_sidecar::gateway::execute::secrets::Secret;
use warden_sidecar::gateway::fixture::{AGENT, Fixture};
use warden_sidecar::gateway::inspect::{redact_secrets, redact_secrets_reference};
use warden_sidecar::gateway::limit::Limiter;
use warden_tests::bench;

/// Pairs of phases.
const ROUNDS: usize = 9;
/// Tools the rules are spread over.
const TOOLS: usize = 200;

/// Runs `a` and `b` in interleaved pairs of phases of `n` runs; returns
/// (median a, median b, median a/b) in ns.
fn pairs(n: usize, a: impl FnMut(), b: impl FnMut()) -> (f64, f64, f64) {
    bench::interleaved(ROUNDS, n, a, b)
}

/// A policy of `TOOLS` tools and `rules` Cedar rules: one in ten forbids,
/// one in twenty names three tools (`action in [...]`), the others one
/// tool each, round robin, every rule with a condition on the context or
/// the arguments; plus one rule over every tool.
fn document(rules: usize, shape: Shape) -> String {
    let mut doc = String::from("version: 1\ntools:\n");
    for t in 0..TOOLS {
        let _ = write!(
            doc,
            "  - name: t{t:03}\n    description: tool {t}\n    input_schema:\n      type: object\n      \
             properties:\n        n: {{ type: integer }}\n        to: {{ type: string }}\n      \
             required: [n, to]\n    scopes: [\"t:call\"]\n    risk: low\n"
        );
    }
    doc.push_str("cedar: |\n");
    doc.push_str(
        "  @id(\"night\")\n  forbid(principal, action, resource) when { context.time.hour > 24 };\n",
    );
    for i in 0..rules.saturating_sub(1) {
        let t = i % TOOLS;
        let action = if i % 20 == 19 {
            format!(
                "action in [Warden::Action::\"t{t:03}\", Warden::Action::\"t{:03}\", Warden::Action::\"t{:03}\"]",
                (t + 1) % TOOLS,
                (t + 2) % TOOLS
            )
        } else {
            format!("action == Warden::Action::\"t{t:03}\"")
        };
        let (effect, when) = if i % 10 == 9 {
            ("forbid", format!("context.arguments.n > {}", 1000 + i))
        } else {
            (
                "permit",
                match shape {
                    Shape::Mixed => format!(
                        "context.arguments.n < {} && context.arguments.to like \"*@example.com\"",
                        100 + i
                    ),
                    Shape::Bare => "true".to_owned(),
                    Shape::Compare => format!("context.arguments.n < {}", 100 + i),
                    Shape::Like => "context.arguments.to like \"*@example.com\"".to_owned(),
                },
            )
        };
        let _ = writeln!(
            doc,
            "  @id(\"r{i}\")\n  {effect}(principal, {action}, resource) when {{ {when} }};"
        );
    }
    doc
}

/// The condition of the permits.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// `n < k && to like "*@example.com"`.
    Mixed,
    /// `true`.
    Bare,
    /// `n < k`.
    Compare,
    /// `to like "*@example.com"`.
    Like,
}

fn stage4() {
    println!("stage 4 (authorize::check, entities cached), {TOOLS} tools, the call permitted:");
    println!("  (median of {ROUNDS} interleaved pairs; the slice against the whole set)");
    let mut at10 = None;
    let shapes = [
        (10, Shape::Mixed),
        (100, Shape::Mixed),
        (1000, Shape::Mixed),
        (1000, Shape::Bare),
        (1000, Shape::Compare),
        (1000, Shape::Like),
    ];
    for (rules, shape) in shapes {
        let doc = document(rules, shape);
        let tools: Vec<(String, &str)> = (0..TOOLS).map(|t| (format!("t{t:03}"), "low")).collect();
        let named: Vec<(&str, &str)> = tools.iter().map(|(n, r)| (n.as_str(), *r)).collect();
        let f = Fixture::new(&doc, &named, Limiter::default());
        let held = f.state.held();
        let policy = held.policy.as_ref().unwrap();
        let standing = held.standing.as_ref().unwrap();
        let claims = f.claims("ses_bench", "t:call");
        let caller = Caller {
            agent_id: AGENT,
            standing,
            claims: &claims,
        };
        let tool = policy.catalog.get("t000").unwrap();
        let args = json!({"n": 5, "to": "a@example.com"});
        let projected =
            warden_shared::policy::cedar::arguments(&tool.spec.input_schema, &args).unwrap();
        // Entities built once, as the stage caches them.
        let authorization = Authorization::default();
        authorization
            .check(
                policy,
                tool,
                &caller,
                &args,
                time::OffsetDateTime::now_utc(),
            )
            .unwrap();
        let entities = authorize::entities(policy, AGENT, standing).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let slice = policy.policy.cedar.for_tool("t000");
        let whole = policy.policy.cedar.whole();
        // Both decide alike.
        assert!(authorize::check_with(slice, &entities, tool, &caller, &projected, now).is_ok());
        assert!(authorize::check_with(whole, &entities, tool, &caller, &projected, now).is_ok());
        let n = if rules >= 1000 { 2_000 } else { 20_000 };
        let (sliced, all, r) = pairs(
            n,
            || {
                black_box(
                    authorize::check(policy, &entities, tool, &caller, &projected, now).unwrap(),
                );
            },
            || {
                black_box(
                    authorize::check_with(whole, &entities, tool, &caller, &projected, now)
                        .unwrap(),
                );
            },
        );
        // Each call timed on its own, for its percentiles.
        let mut each: Vec<f64> = (0..n)
            .map(|_| {
                let t = Instant::now();
                black_box(
                    authorize::check(policy, &entities, tool, &caller, &projected, now).unwrap(),
                );
                t.elapsed().as_nanos() as f64
            })
            .collect();
        each.sort_by(f64::total_cmp);
        let base = *at10.get_or_insert(sliced);
        println!(
            "  {rules:>5} rules, {shape:?} ({:>3} in the slice): sliced {:>7.2} µs (×{:.2} of 10 rules; per call p50 {:.2} µs, p99 {:.2} µs)   whole set {:>8.2} µs   sliced/whole ×{r:.3}",
            slice.policies().count(),
            sliced / 1e3,
            sliced / base,
            each[each.len() / 2] / 1e3,
            each[each.len() * 99 / 100] / 1e3,
            all / 1e3,
        );
    }
}

/// A JSON answer of about `bytes` bytes with JSON escapes in it, echoing
/// each secret once (raw, then JSON-escaped, then base64, in turn).
fn answer(bytes: usize, secrets: &[String]) -> Vec<u8> {
    use base64::Engine;
    let items = bench::customer_items(bytes);
    let echoes: Vec<String> = secrets
        .iter()
        .enumerate()
        .map(|(k, s)| match k % 3 {
            0 => format!("Bearer {s}"),
            1 => format!("k=\"{s}\""),
            _ => base64::engine::general_purpose::STANDARD.encode(s),
        })
        .collect();
    serde_json::to_vec(&json!({"items": items, "echo": echoes})).unwrap()
}

fn scrubbing() {
    println!("secret scrubbing (stage 8), JSON answers with escapes, each secret echoed once:");
    println!("  (median of {ROUNDS} interleaved pairs; one pass against the reference search)");
    for count in [1usize, 4, 16] {
        let values: Vec<String> = (0..count)
            .map(|k| format!("sk-live-{k:02}f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c"))
            .collect();
        let secrets: Vec<Secret> = values.iter().map(|v| Secret::new(v.clone())).collect();
        for bytes in [1024, 64 * 1024, 1024 * 1024] {
            let body = answer(bytes, &values);
            // Both find every echo, alike.
            let (a, na) = redact_secrets(body.clone(), &secrets).unwrap();
            let (b, nb) = redact_secrets_reference(body.clone(), &secrets).unwrap();
            assert_eq!((a, na), (b, nb));
            assert!(na as usize >= count);
            let n = match bytes {
                1024 => 20_000,
                65536 => 300,
                _ => 12,
            };
            let (now, reference, r) = pairs(
                n,
                || {
                    black_box(redact_secrets(black_box(body.clone()), &secrets).unwrap());
                },
                || {
                    black_box(redact_secrets_reference(black_box(body.clone()), &secrets).unwrap());
                },
            );
            let (_, copy, _) = pairs(
                n,
                || {
                    black_box(redact_secrets(black_box(body.clone()), &secrets).unwrap());
                },
                || {
                    black_box(black_box(&body).clone());
                },
            );
            println!(
                "  {count:>2} secrets, {:>7} B: one pass {:>9.2} µs ({:>5.0} MB/s)   reference {:>9.2} µs ({:>5.0} MB/s, ×{r:.3})   plain copy {:>7.2} µs",
                body.len(),
                now / 1e3,
                body.len() as f64 / now * 1e3,
                reference / 1e3,
                body.len() as f64 / reference * 1e3,
                copy / 1e3,
            );
        }
    }
}

fn main() {
    // `WARDEN_BENCH_ONLY=stage4` or `=scrubbing` runs one part.
    let only = std::env::var("WARDEN_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "stage4" {
        stage4();
    }
    if only.is_empty() || only == "scrubbing" {
        scrubbing();
    }
}
