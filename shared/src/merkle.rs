//! The Merkle tree hash of RFC 9162 (Certificate Transparency 2.0) §2.1,
//! for the tamper-evident audit log: leaf and node hashes, the tree head of
//! any prefix of the log, inclusion proofs (§2.1.3) and consistency proofs
//! between two sizes (§2.1.4), and their verification, which needs nothing
//! but the hashes (an auditor can check them offline).
//!
//! - leaf hash: `SHA-256(0x00 || entry)`
//! - node hash: `SHA-256(0x01 || left || right)`
//! - the tree of no leaves: `SHA-256("")`; of one: its leaf hash; of `n > 1`
//!   leaves: the node hash of the tree of the first `k` leaves and of the
//!   rest, `k` the largest power of two below `n`.

use ring::digest::{Context, SHA256};

/// A SHA-256 value.
pub type Hash = [u8; 32];

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Lower-case hex, as hashes and key ids are shown.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// The hash of one log entry as a leaf.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    sha256(&[&[0x00], entry])
}

/// The hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[0x01], left, right])
}

/// The largest power of two strictly below `n` (`n > 1`).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// The tree head (root hash) of the tree whose leaf hashes are `leaves`.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => sha256(&[]),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The inclusion proof (audit path) of leaf `index` in the tree of
/// `leaves`; `None` when `index` is outside it.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
    if index >= leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    path(leaves, index, &mut proof);
    Some(proof)
}

fn path(leaves: &[Hash], m: usize, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(&leaves[..k], m, out);
        out.push(root(&leaves[k..]));
    } else {
        path(&leaves[k..], m - k, out);
        out.push(root(&leaves[..k]));
    }
}

/// The consistency proof between the tree of the first `old` leaves and the
/// tree of all of `leaves`; `None` unless `0 < old <= leaves.len()`.
pub fn consistency_proof(leaves: &[Hash], old: usize) -> Option<Vec<Hash>> {
    if old == 0 || old > leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    subproof(old, leaves, true, &mut proof);
    Some(proof)
}

fn subproof(m: usize, leaves: &[Hash], complete: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            out.push(root(leaves));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &leaves[..k], complete, out);
        out.push(root(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, out);
        out.push(root(&leaves[..k]));
    }
}

/// Whether `proof` shows the leaf hash `leaf` at `index` in the tree of
/// `size` leaves whose head is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && r == *root
}

/// Whether `proof` shows that the tree of `new_size` leaves with head
/// `new_root` extends the tree of `old_size` leaves with head `old_root`
/// (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old_size == 0 || old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    // With an old size that is a power of two, its head starts the path.
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f_n, mut s_n) = (old_size - 1, new_size - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut f_r, mut s_r) = (*first, *first);
    for c in rest {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            s_r = node_hash(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    f_r == *old_root && s_r == *new_root && s_n == 0
}

/// A perfect subtree of the log: the `2^level` leaves from
/// `index * 2^level` on. A stored log keeps the head of every such subtree
/// that is complete, so that a proof for any leaf among millions needs a
/// few dozen lookups rather than the whole log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    /// Height: 0 for a leaf.
    pub level: u32,
    /// Position among the subtrees of that height.
    pub index: u64,
}

/// The head of the leaves `start..end`, asking `node` only for complete,
/// aligned perfect subtrees (the ranges RFC 9162's recursion visits are
/// aligned, so each step is one lookup).
fn range_head(start: u64, end: u64, node: &mut dyn FnMut(Node) -> Hash) -> Hash {
    let n = end - start;
    match n {
        0 => sha256(&[]),
        _ if n.is_power_of_two() && start.is_multiple_of(n) => node(Node {
            level: n.trailing_zeros(),
            index: start / n,
        }),
        1 => unreachable!("a single leaf is always aligned"),
        _ => {
            let k = split_u64(n);
            node_hash(
                &range_head(start, start + k, node),
                &range_head(start + k, end, node),
            )
        }
    }
}

fn split_u64(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The tree head of the first `size` leaves of a stored log.
pub fn stored_root(size: u64, node: &mut dyn FnMut(Node) -> Hash) -> Hash {
    range_head(0, size, node)
}

/// The inclusion proof of leaf `index` in the tree of the first `size`
/// leaves of a stored log; `None` when `index` is outside it.
pub fn stored_inclusion_proof(
    size: u64,
    index: u64,
    node: &mut dyn FnMut(Node) -> Hash,
) -> Option<Vec<Hash>> {
    if index >= size {
        return None;
    }
    let mut out = Vec::new();
    stored_path(0, size, index, node, &mut out);
    Some(out)
}

fn stored_path(
    start: u64,
    end: u64,
    m: u64,
    node: &mut dyn FnMut(Node) -> Hash,
    out: &mut Vec<Hash>,
) {
    let n = end - start;
    if n <= 1 {
        return;
    }
    let k = split_u64(n);
    if m < k {
        stored_path(start, start + k, m, node, out);
        out.push(range_head(start + k, end, node));
    } else {
        stored_path(start + k, end, m - k, node, out);
        out.push(range_head(start, start + k, node));
    }
}

/// The consistency proof between the first `old` and the first `size`
/// leaves of a stored log; `None` unless `0 < old <= size`.
pub fn stored_consistency_proof(
    old: u64,
    size: u64,
    node: &mut dyn FnMut(Node) -> Hash,
) -> Option<Vec<Hash>> {
    if old == 0 || old > size {
        return None;
    }
    let mut out = Vec::new();
    stored_subproof(old, 0, size, true, node, &mut out);
    Some(out)
}

fn stored_subproof(
    m: u64,
    start: u64,
    end: u64,
    complete: bool,
    node: &mut dyn FnMut(Node) -> Hash,
    out: &mut Vec<Hash>,
) {
    let n = end - start;
    if m == n {
        if !complete {
            out.push(range_head(start, end, node));
        }
        return;
    }
    let k = split_u64(n);
    if m <= k {
        stored_subproof(m, start, start + k, complete, node, out);
        out.push(range_head(start + k, end, node));
    } else {
        stored_subproof(m - k, start + k, end, false, node, out);
        out.push(range_head(start, start + k, node));
    }
}

/// The subtrees a computation over a stored log reads: run it once with
/// this to learn them, fetch them in one go, then run it again.
pub fn nodes_read(f: impl FnOnce(&mut dyn FnMut(Node) -> Hash)) -> Vec<Node> {
    let mut seen = std::collections::BTreeSet::new();
    f(&mut |n| {
        seen.insert(n);
        [0; 32]
    });
    seen.into_iter().collect()
}

/// The right edge of a growing log: the heads of the complete perfect
/// subtrees its leaves form (one per set bit of its size, largest first).
/// Appending a leaf yields every subtree it completes, for storage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    peaks: Vec<Hash>,
}

impl Frontier {
    /// The subtrees whose heads restore the frontier of a log of `size`
    /// leaves, largest first.
    pub fn peaks_of(size: u64) -> Vec<Node> {
        let mut start = 0u64;
        let mut out = Vec::new();
        for level in (0..64u32).rev() {
            if size >> level & 1 == 1 {
                out.push(Node {
                    level,
                    index: start >> level,
                });
                start += 1 << level;
            }
        }
        out
    }

    /// The frontier of a log of `size` leaves from the heads of
    /// [`Frontier::peaks_of`]; `None` if their number is wrong.
    pub fn restore(size: u64, peaks: Vec<Hash>) -> Option<Self> {
        (peaks.len() == size.count_ones() as usize).then_some(Self { size, peaks })
    }

    /// Leaves so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf; pushes onto `out` the leaf and every subtree it
    /// completes.
    pub fn push(&mut self, leaf: Hash, out: &mut Vec<(Node, Hash)>) {
        let index = self.size;
        out.push((Node { level: 0, index }, leaf));
        let (mut h, mut level) = (leaf, 0u32);
        while index >> level & 1 == 1 {
            let Some(left) = self.peaks.pop() else { break };
            h = node_hash(&left, &h);
            level += 1;
            out.push((
                Node {
                    level,
                    index: index >> level,
                },
                h,
            ));
        }
        self.peaks.push(h);
        self.size += 1;
    }

    /// The tree head of the leaves so far.
    pub fn root(&self) -> Hash {
        let mut it = self.peaks.iter().rev();
        let Some(last) = it.next() else {
            return sha256(&[]);
        };
        it.fold(*last, |r, p| node_hash(p, &r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(hex: &str) -> Hash {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    /// The eight entries of the Certificate Transparency reference tests.
    fn entries() -> Vec<Vec<u8>> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|x| {
            (0..x.len() / 2)
                .map(|i| u8::from_str_radix(&x[2 * i..2 * i + 2], 16).unwrap())
                .collect()
        })
        .collect()
    }

    /// The reference tree heads for sizes 0 to 8.
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn leaves() -> Vec<Hash> {
        entries().iter().map(|e| leaf_hash(e)).collect()
    }

    #[test]
    fn tree_heads_match_the_reference_vectors() {
        let l = leaves();
        for (n, want) in ROOTS.iter().enumerate() {
            assert_eq!(root(&l[..n]), h(want), "size {n}");
        }
    }

    #[test]
    fn inclusion_proofs_match_the_reference_vectors_and_verify() {
        let l = leaves();
        let cases: [(usize, usize, &[&str]); 4] = [
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                3,
                &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
            (
                1,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (index, size, want) in cases {
            let proof = inclusion_proof(&l[..size], index).unwrap();
            assert_eq!(
                proof,
                want.iter().map(|x| h(x)).collect::<Vec<_>>(),
                "{index} of {size}"
            );
            let r = h(ROOTS[size]);
            assert!(verify_inclusion(
                &l[index],
                index as u64,
                size as u64,
                &proof,
                &r
            ));
            assert!(!verify_inclusion(
                &l[index],
                index as u64 + 1,
                size as u64,
                &proof,
                &r
            ));
            assert!(!verify_inclusion(
                &l[(index + 1) % size],
                index as u64,
                size as u64,
                &proof,
                &r
            ));
        }
        assert!(inclusion_proof(&l, 8).is_none());
    }

    #[test]
    fn consistency_proofs_match_the_reference_vectors_and_verify() {
        let l = leaves();
        let cases: [(usize, usize, &[&str]); 4] = [
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (old, new, want) in cases {
            let proof = consistency_proof(&l[..new], old).unwrap();
            assert_eq!(
                proof,
                want.iter().map(|x| h(x)).collect::<Vec<_>>(),
                "{old} to {new}"
            );
            let (ro, rn) = (h(ROOTS[old]), h(ROOTS[new]));
            assert!(verify_consistency(old as u64, new as u64, &ro, &rn, &proof));
            assert!(!verify_consistency(old as u64, new as u64, &rn, &ro, &proof) || old == new);
        }
        assert!(consistency_proof(&l, 0).is_none());
        assert!(consistency_proof(&l[..3], 4).is_none());
    }

    #[test]
    fn every_proof_of_every_size_verifies_and_a_changed_leaf_fails() {
        let l: Vec<Hash> = (0u16..37).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for n in 1..=l.len() {
            let tree = &l[..n];
            let r = root(tree);
            for i in 0..n {
                let p = inclusion_proof(tree, i).unwrap();
                assert!(
                    verify_inclusion(&tree[i], i as u64, n as u64, &p, &r),
                    "{i} of {n}"
                );
                let forged = leaf_hash(b"forged");
                assert!(!verify_inclusion(&forged, i as u64, n as u64, &p, &r));
            }
            for m in 1..=n {
                let p = consistency_proof(tree, m).unwrap();
                let old = root(&tree[..m]);
                assert!(
                    verify_consistency(m as u64, n as u64, &old, &r, &p),
                    "{m} to {n}"
                );
                if m < n {
                    // Another history for the first m leaves does not verify.
                    let mut other = tree[..m].to_vec();
                    other[0] = leaf_hash(b"rewritten");
                    assert!(!verify_consistency(
                        m as u64,
                        n as u64,
                        &root(&other),
                        &r,
                        &p
                    ));
                }
            }
        }
    }
    #[test]
    fn a_stored_log_gives_the_same_heads_and_proofs_as_the_leaves() {
        let l: Vec<Hash> = (0u16..70).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut stored = std::collections::HashMap::new();
        let mut f = Frontier::default();
        for (n, leaf) in l.iter().enumerate() {
            assert_eq!(f.size(), n as u64);
            assert_eq!(f.root(), root(&l[..n]), "head of {n}");
            let mut out = Vec::new();
            f.push(*leaf, &mut out);
            for (node, h) in out {
                assert!(stored.insert(node, h).is_none(), "{node:?} stored twice");
            }
            let peaks: Vec<Hash> = Frontier::peaks_of(f.size())
                .iter()
                .map(|p| stored[p])
                .collect();
            assert_eq!(Frontier::restore(f.size(), peaks), Some(f.clone()));
        }
        let mut read = |n: Node| *stored.get(&n).unwrap_or_else(|| panic!("{n:?} not stored"));
        for size in 1..=l.len() {
            let tree = &l[..size];
            assert_eq!(stored_root(size as u64, &mut read), root(tree));
            for i in 0..size {
                assert_eq!(
                    stored_inclusion_proof(size as u64, i as u64, &mut read),
                    inclusion_proof(tree, i),
                    "{i} of {size}"
                );
            }
            for m in 1..=size {
                assert_eq!(
                    stored_consistency_proof(m as u64, size as u64, &mut read),
                    consistency_proof(tree, m),
                    "{m} to {size}"
                );
            }
        }
        assert!(stored_inclusion_proof(5, 5, &mut read).is_none());
        assert!(stored_consistency_proof(0, 5, &mut read).is_none());
        // A proof among a billion leaves reads a few dozen subtrees.
        let reads = nodes_read(|node| {
            stored_inclusion_proof(1_000_000_007, 123_456_789, node);
        });
        assert!(reads.len() <= 2 * 30, "{}", reads.len());
    }
}
