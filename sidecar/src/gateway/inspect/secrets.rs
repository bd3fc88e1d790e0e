//! One matcher for all of a call's injected secrets, built once per set of
//! secret values and cached: a single pass over the answer finds every place
//! where a match of any encoding of any secret can start, and only there
//! does [`scrub`]'s exact matcher run.
//!
//! Every match of a pattern starts with one of its anchors (the literal, or
//! a spelling of its first units: [`Pattern::anchors`]). The matcher keeps
//! the first two bytes of every anchor, in either case, as a set of byte
//! pairs (a 64 Kibit table), and per pair the patterns it can start; the
//! pass reads each pair of adjacent bytes once. A position whose pair is not
//! in the set cannot start a match, so taking the longest match at each
//! position that is, left to right, finds what trying every pattern at
//! every position finds ([`scrub::Reference`]), for far fewer steps. (An
//! Aho–Corasick automaton over the anchors, tried first, read 1.6 ns a byte
//! here against 0.45 ns for the table: BENCHMARKS.md.)
//!
//! Most candidates are then decided without running the units at all
//! ([`Shortcut`]): a hex form is compared in either case, and a text or
//! percent form whose escapes all start with bytes the value lacks (`\`,
//! `&`, `%`, `+`) is compared as plain bytes unless one of those bytes
//! stands before the first difference.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::scrub::{self, Exhausted, Pattern, Search, Shortcut};
use crate::gateway::execute::secrets::Secret;

/// Most secret sets whose matcher is kept.
const CACHE_MAX: usize = 64;

/// A pair of bytes as a table index.
fn pair(a: u8, b: u8) -> usize {
    (usize::from(a) << 8) | usize::from(b)
}

/// The matcher of one set of secret values.
pub(crate) struct Scrubber {
    /// The values it finds (compared on a cache hit).
    values: Vec<String>,
    patterns: Vec<Pattern>,
    /// Per pattern, its shortcut.
    shortcuts: Vec<Shortcut>,
    /// The pairs an anchor starts with, in every case, as bits.
    pairs: Box<[u64; 1024]>,
    /// Per pair (lower case), the patterns with an anchor starting with it.
    by_pair: HashMap<usize, Vec<u32>>,
    /// Per byte (lower case), the patterns with an anchor of that one byte.
    by_byte: HashMap<u8, Vec<u32>>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the values, nor the patterns spelled from them.
        f.debug_struct("Scrubber")
            .field("values", &self.values.len())
            .field("patterns", &self.patterns.len())
            .finish_non_exhaustive()
    }
}

impl Scrubber {
    /// The matcher for `secrets` (empty values are skipped); `None` when
    /// there is nothing to find.
    pub(crate) fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let values: Vec<String> = secrets
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let patterns: Vec<Pattern> = values.iter().flat_map(|v| scrub::patterns(v)).collect();
        let mut pairs = Box::new([0u64; 1024]);
        let mut by_pair: HashMap<usize, Vec<u32>> = HashMap::new();
        let mut by_byte: HashMap<u8, Vec<u32>> = HashMap::new();
        for (p, pattern) in patterns.iter().enumerate() {
            let p = u32::try_from(p).ok()?;
            for a in pattern.anchors() {
                let owners = match *a.as_slice() {
                    [] => continue,
                    [b] => by_byte.entry(b.to_ascii_lowercase()).or_default(),
                    [b0, b1, ..] => {
                        for x in [b0.to_ascii_lowercase(), b0.to_ascii_uppercase()] {
                            for y in [b1.to_ascii_lowercase(), b1.to_ascii_uppercase()] {
                                let k = pair(x, y);
                                pairs[k >> 6] |= 1 << (k & 63);
                            }
                        }
                        by_pair
                            .entry(pair(b0.to_ascii_lowercase(), b1.to_ascii_lowercase()))
                            .or_default()
                    }
                };
                if owners.last() != Some(&p) {
                    owners.push(p);
                }
            }
        }
        if by_pair.is_empty() && by_byte.is_empty() {
            return None;
        }
        Some(Self {
            values,
            shortcuts: patterns.iter().map(Pattern::shortcut).collect(),
            patterns,
            pairs,
            by_pair,
            by_byte,
        })
    }

    /// Replaces every secret found in `h` (as it is and unescaped) with
    /// `with`; returns the result and the count.
    pub(crate) fn redact(&self, h: Vec<u8>, with: &[u8]) -> Result<(Vec<u8>, u32), Exhausted> {
        scrub::redact(h, self, with)
    }

    /// Whether a match can start at `i` (by the pair there).
    fn paired(&self, h: &[u8], i: usize) -> bool {
        h.get(i + 1).is_some_and(|&b| {
            let k = pair(h[i], b);
            (self.pairs[k >> 6] >> (k & 63)) & 1 == 1
        })
    }

    /// The end of the longest match at `i`, of the patterns whose anchors
    /// start as the text there does.
    fn longest_at(
        &self,
        h: &[u8],
        i: usize,
        budget: &mut usize,
    ) -> Result<Option<usize>, Exhausted> {
        let lower = h[i].to_ascii_lowercase();
        let by_pair = h
            .get(i + 1)
            .and_then(|b| self.by_pair.get(&pair(lower, b.to_ascii_lowercase())));
        let by_byte = self.by_byte.get(&lower);
        let mut end = None;
        for &p in by_pair.into_iter().chain(by_byte).flatten() {
            let p = p as usize;
            let found = match self.shortcuts[p].decide(h, i, budget)? {
                Some(found) => found,
                None => self.patterns[p].match_at(h, i, budget)?,
            };
            end = end.max(found);
        }
        Ok(end)
    }
}

impl Search for Scrubber {
    fn find(&self, h: &[u8], budget: &mut usize) -> Result<Vec<(usize, usize)>, Exhausted> {
        let mut spans = Vec::new();
        let singles = !self.by_byte.is_empty();
        let mut i = 0;
        while i < h.len() {
            if !singles {
                // The hot loop: skip to the next pair in the set.
                match h[i..].windows(2).position(|w| {
                    let k = pair(w[0], w[1]);
                    (self.pairs[k >> 6] >> (k & 63)) & 1 == 1
                }) {
                    Some(d) => i += d,
                    None => break,
                }
            } else if !self.paired(h, i) && !self.by_byte.contains_key(&h[i].to_ascii_lowercase()) {
                i += 1;
                continue;
            }
            match self.longest_at(h, i, budget)? {
                Some(e) if e > i => {
                    spans.push((i, e));
                    i = e;
                }
                _ => i += 1,
            }
        }
        Ok(spans)
    }
}

/// Matchers by a hash of their values; a hit is compared value by value, so
/// two sets that hash alike never share a matcher.
type Cache = HashMap<u64, Arc<Scrubber>>;

/// The matcher for a call's `secrets`, built once per set of values (kept
/// for the last [`CACHE_MAX`] sets: a rotated secret gets its own, and the
/// cache starts over when full). `None`: no secret has a value.
pub(crate) fn scrubber(secrets: &[Secret]) -> Option<Arc<Scrubber>> {
    use std::hash::{Hash, Hasher};
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    let values: Vec<&str> = secrets
        .iter()
        .map(Secret::expose)
        .filter(|s| !s.is_empty())
        .collect();
    if values.is_empty() {
        return None;
    }
    let mut hasher = std::hash::DefaultHasher::new();
    values.hash(&mut hasher);
    let key = hasher.finish();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(s) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
        && s.values
            .iter()
            .map(String::as_str)
            .eq(values.iter().copied())
    {
        return Some(Arc::clone(s));
    }
    // Built outside the lock: another call's lookup need not wait for it.
    let built = Arc::new(Scrubber::new(values.iter().copied())?);
    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
    if c.len() >= CACHE_MAX {
        c.clear();
    }
    c.insert(key, Arc::clone(&built));
    Some(built)
}
