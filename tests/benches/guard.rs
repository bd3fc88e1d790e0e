//! Throughput and latency of the guardrail detectors (issue 16): prompt
//! injection, personal data and the built-in credential rules together, as
//! stage 8 runs them on a tool's answer, against a plain copy of the same
//! bytes, in one run: phases interleaved, medians of the pairs.
//!
//! The text is mixed and realistic: a JSON list of support tickets (names,
//! e-mail addresses, phone numbers, order ids, dates, prose, URLs, a few
//! code snippets), without an attack, so every detector reads it in full.
//!
//! Run: `cargo bench -p warden-tests --bench guard`

#![allow(
    clippy::unwrap_used,
    reason = "a benchmark aborts on any unexpected error"
)]

use std::hint::black_box;

use serde_json::json;
use warden_shared::guard::{injection, pii, secrets::Rules};
use warden_tests::bench;

/// Interleaved pairs per figure (`WARDEN_BENCH_ROUNDS` sets another
/// count: more pairs ride out a machine whose speed drifts).
fn rounds() -> usize {
    std::env::var("WARDEN_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(9)
}

fn text(bytes: usize) -> String {
    let prose = [
        "The customer reports that the export fails after the upgrade; logs attached.",
        "Please follow the instructions in the knowledge base article to reset the device.",
        "We shipped a replacement on Monday, tracking number 1Z999AA10123456784.",
        "Build 4f2a9c1 deployed to eu-west-1; latency back under 200 ms.",
        "The assistant manager approved the refund of 59.90 EUR for order 4421.",
        "See https://status.example.com/incidents/812 for the timeline.",
    ];
    let mut items = Vec::new();
    let mut size = 0;
    let mut i = 0usize;
    while size < bytes {
        let item = json!({
            "id": 10_000 + i,
            "customer": format!("Customer {i}"),
            "email": format!("user{i}@example.com"),
            "phone": format!("+44 20 7946 {:04}", i % 10_000),
            "opened": format!("2026-11-{:02}T10:{:02}:00Z", 1 + i % 28, i % 60),
            "subject": prose[i % prose.len()],
            "body": format!("{} {} config: retries = 3, timeout_ms = 5000", prose[(i + 1) % prose.len()], prose[(i + 2) % prose.len()]),
        });
        size += item.to_string().len() + 1;
        items.push(item);
        i += 1;
    }
    serde_json::to_string(&json!({"tickets": items})).unwrap()
}

fn main() {
    let rules = Rules::builtin().unwrap();
    let rounds = rounds();
    println!(
        "guardrail detectors (injection + PII + credential rules) against a plain copy (median of {rounds} interleaved pairs):"
    );
    for bytes in [4 * 1024, 64 * 1024, 1024 * 1024] {
        let t = text(bytes);
        let n = match bytes {
            4096 => 2_000,
            65536 => 150,
            _ => 10,
        };
        // Each detector alone, then all three.
        let (inj, copy, _) = bench::interleaved(
            rounds,
            n,
            || {
                black_box(injection::scan(black_box(&t)));
            },
            || {
                black_box(black_box(&t).clone());
            },
        );
        let (p, _, _) = bench::interleaved(
            rounds,
            n,
            || {
                black_box(pii::scan(black_box(&t)));
            },
            || {
                black_box(black_box(&t).clone());
            },
        );
        let (s, _, _) = bench::interleaved(
            rounds,
            n,
            || {
                black_box(rules.scan(black_box(&t)));
            },
            || {
                black_box(black_box(&t).clone());
            },
        );
        let (all, copy2, r) = bench::interleaved(
            rounds,
            n,
            || {
                black_box(injection::scan(black_box(&t)));
                black_box(pii::scan(black_box(&t)));
                black_box(rules.scan(black_box(&t)));
            },
            || {
                black_box(black_box(&t).clone());
            },
        );
        let mbs = |ns: f64| t.len() as f64 / ns * 1e3;
        println!(
            "  {:>8} B: all three {:>9.1} µs ({:>5.0} MB/s; ×{r:.0} the copy, {:.2} µs)   injection {:.1} µs ({:.0} MB/s)   PII {:.1} µs ({:.0} MB/s)   credentials {:.1} µs ({:.0} MB/s)   copy {:.2} µs",
            t.len(),
            all / 1e3,
            mbs(all),
            copy2 / 1e3,
            inj / 1e3,
            mbs(inj),
            p / 1e3,
            mbs(p),
            s / 1e3,
            mbs(s),
            copy / 1e3,
        );
    }
}
