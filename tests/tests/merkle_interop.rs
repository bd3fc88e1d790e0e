//! Warden's RFC 9162 Merkle proofs checked by an independent implementation:
//! a verifier written in Python with hashlib only (`tests/python/
//! merkle_verify.py`), as an outside auditor would write one from the
//! README. Every inclusion and consistency proof of trees up to 40 leaves
//! verifies there, and altered ones (another entry, another root, a
//! reordered proof) do not.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails on any unexpected error"
)]

use serde_json::{Value, json};
use warden_shared::merkle::{self, Hash};

fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn python_verdicts(input: &Value) -> Vec<bool> {
    serde_json::from_str(&warden_tests::python_stdin(
        "merkle_verify.py",
        &input.to_string(),
    ))
    .unwrap()
}

#[test]
fn an_independent_verifier_accepts_every_proof_and_refuses_altered_ones() {
    let entries: Vec<Vec<u8>> = (0u32..40)
        .map(|i| format!("{{\"event\":{i}}}").into_bytes())
        .collect();
    let leaves: Vec<Hash> = entries.iter().map(|e| merkle::leaf_hash(e)).collect();
    let (mut inclusion, mut consistency, mut expected) = (Vec::new(), Vec::new(), Vec::new());
    for n in [1usize, 2, 3, 7, 8, 9, 16, 31, 40] {
        let tree = &leaves[..n];
        let root = merkle::root(tree);
        for (i, entry) in entries.iter().enumerate().take(n) {
            let proof: Vec<String> = merkle::inclusion_proof(tree, i)
                .unwrap()
                .iter()
                .map(|p| hex(p))
                .collect();
            inclusion.push(json!({"entry": hex(entry), "index": i, "size": n,
                "proof": proof, "root": hex(&root)}));
            expected.push(true);
            // Another entry at that place does not verify.
            inclusion.push(json!({"entry": hex(b"another"), "index": i, "size": n,
                "proof": proof, "root": hex(&root)}));
            expected.push(false);
        }
    }
    let ninc = expected.len();
    let mut cexpected = Vec::new();
    for n in [2usize, 5, 8, 13, 40] {
        let tree = &leaves[..n];
        let root = merkle::root(tree);
        for m in 1..n {
            let old = merkle::root(&tree[..m]);
            let mut proof: Vec<String> = merkle::consistency_proof(tree, m)
                .unwrap()
                .iter()
                .map(|p| hex(p))
                .collect();
            consistency.push(json!({"old": m, "new": n, "old_root": hex(&old),
                "new_root": hex(&root), "proof": proof.clone()}));
            cexpected.push(true);
            // A rewritten history (another old head) does not verify.
            consistency.push(json!({"old": m, "new": n, "old_root": hex(&root),
                "new_root": hex(&root), "proof": proof.clone()}));
            cexpected.push(false);
            if proof.len() > 1 {
                proof.swap(0, 1);
                consistency.push(json!({"old": m, "new": n, "old_root": hex(&old),
                    "new_root": hex(&root), "proof": proof}));
                cexpected.push(false);
            }
        }
    }
    expected.extend(cexpected);
    let verdicts = python_verdicts(&json!({"inclusion": inclusion, "consistency": consistency}));
    assert_eq!(verdicts.len(), expected.len());
    for (k, (got, want)) in verdicts.iter().zip(&expected).enumerate() {
        let what = if k < ninc {
            &inclusion[k]
        } else {
            &consistency[k - ninc]
        };
        assert_eq!(got, want, "case {k}: {what}");
    }
}
