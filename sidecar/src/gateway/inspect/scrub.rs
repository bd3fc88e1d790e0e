//! Finds a secret in the forms an upstream may echo it in, and removes it.
//!
//! A secret becomes a few [`Pattern`]s, one per family of encodings. A
//! pattern is a sequence of units (a character, or a byte) and each unit
//! may appear in any of its alternative spellings, independently of its
//! neighbours, so one pattern covers every mix an encoder can produce
//! (which characters a JSON or percent encoder escapes, and in which hex
//! case, differs between libraries). Matching runs the units as a small
//! NFA over positions, so ambiguous spellings never backtrack.
//!
//! The families (the README's "Which encodings of a secret are removed"):
//!
//! - **text**: each character as itself, or JSON-escaped (`\"`, `\\`, `\/`,
//!   `\b`, `\f`, `\n`, `\r`, `\t`, `\uXXXX` in either case, a surrogate pair
//!   beyond the BMP), or as an HTML/XML character reference (`&amp;`,
//!   `&lt;`, `&gt;`, `&quot;`, `&apos;`, `&#D…;`, `&#xH…;`);
//! - **percent**: each UTF-8 byte as itself or `%HH` in either case, a space
//!   also as `+`;
//! - **hex**: every byte as two hex digits, in either case;
//! - **base64**: standard and URL-safe alphabets, at each of the three
//!   alignments inside a larger blob (the characters the value alone
//!   determines), and the whole value with or without padding.
//!
//! The answer is searched as it is and, when it holds a `\` or an `&`, once
//! more as an unescaped view ([`Unescaped`]: every valid JSON escape and
//! HTML character reference decoded, anything else kept), so an encoding
//! behind JSON or HTML escaping (base64 with `\/`, hex digits as `\u0033`)
//! is found whatever surrounds it; a match there removes the escaped text
//! it came from. Matches of both searches are merged and replaced once.
//!
//! The work is bounded: at most [`STEPS_PER_BYTE`] matcher steps per byte
//! searched. An answer built to exceed that (a long run that keeps almost
//! matching a long secret) is refused, never passed on unsearched.

use base64::Engine;

/// Matcher steps allowed per byte searched (both views), plus a constant.
pub(crate) const STEPS_PER_BYTE: usize = 64;
/// Most spellings of a pattern's first units taken as its anchors.
const ANCHORS_PER_PATTERN: usize = 40;
/// Most units an anchor spans.
const ANCHOR_UNITS: usize = 8;
/// Shortest base64 core matched on its own (shorter ones would match
/// ordinary text; the value's whole encodings are matched instead).
const MIN_BASE64_CORE: usize = 8;

/// The search ran out of its step budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the answer could not be searched for secrets within the work bound")]
pub struct Exhausted;

/// One spelling of a unit (spelled from a secret: no `Debug`, so it
/// cannot be logged by mistake).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Alt {
    bytes: Vec<u8>,
    /// ASCII letters match in either case (hex digits).
    any_case: bool,
}

impl Alt {
    fn exact(bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            bytes: bytes.into(),
            any_case: false,
        }
    }

    fn any_case(text: String) -> Self {
        Self {
            bytes: text.into_bytes(),
            any_case: true,
        }
    }

    fn at(&self, h: &[u8], i: usize) -> bool {
        h.get(i..i + self.bytes.len()).is_some_and(|s| {
            if self.any_case {
                s.eq_ignore_ascii_case(&self.bytes)
            } else {
                s == self.bytes.as_slice()
            }
        })
    }
}

/// A secret in one family of encodings.
#[derive(Clone)]
pub(crate) enum Pattern {
    /// One exact spelling (base64).
    Literal(Vec<u8>),
    /// Units, each in any of its spellings.
    Units {
        units: Vec<Vec<Alt>>,
        /// Bytes a match can start with.
        first: Box<[bool; 256]>,
    },
}

/// A quicker way to the same answer as [`Pattern::match_at`].
pub(crate) enum Shortcut {
    /// Every unit has one spelling (hex): the bytes, letters in either
    /// case.
    Caseless(Vec<u8>),
    /// Each unit's first spelling is plain (`raw` holds them all), every
    /// other starts with a byte of `special`, and no plain byte is special.
    /// Paths through the units can only part at a special byte, so where
    /// the text up to the first difference from `raw` holds none, the plain
    /// path is the only one: `raw` matches in full, or nothing does.
    Plain {
        raw: Vec<u8>,
        special: Box<[bool; 256]>,
    },
    /// Run the units.
    None,
}

impl std::fmt::Debug for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the bytes: they spell a secret.
        match self {
            Self::Literal(l) => write!(f, "Pattern::Literal([redacted; {}])", l.len()),
            Self::Units { units, .. } => write!(f, "Pattern::Units([redacted; {}])", units.len()),
        }
    }
}

impl std::fmt::Debug for Shortcut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Caseless(_) => "Shortcut::Caseless([redacted])",
            Self::Plain { .. } => "Shortcut::Plain([redacted])",
            Self::None => "Shortcut::None",
        })
    }
}

impl Shortcut {
    /// The end of the longest match at `i`: `Some(answer)`, or `None` when
    /// the units must be run; spends a step of `budget` per byte compared.
    pub(crate) fn decide(
        &self,
        h: &[u8],
        i: usize,
        budget: &mut usize,
    ) -> Result<Option<Option<usize>>, Exhausted> {
        let mut spend = |n: usize| {
            *budget = budget.checked_sub(n.max(1)).ok_or(Exhausted)?;
            Ok::<_, Exhausted>(())
        };
        match self {
            Self::Caseless(b) => {
                spend(b.len())?;
                Ok(Some(
                    h.get(i..i + b.len())
                        .is_some_and(|s| s.eq_ignore_ascii_case(b))
                        .then_some(i + b.len()),
                ))
            }
            Self::Plain { raw, special } => {
                let rest = &h[i..];
                let same = rest.iter().zip(raw).take_while(|(a, b)| a == b).count();
                spend(same + 1)?;
                if same == raw.len() {
                    return Ok(Some(Some(i + raw.len())));
                }
                // The plain prefix and the byte that differs (if any).
                let seen = &rest[..(same + 1).min(rest.len())];
                Ok(if seen.iter().any(|b| special[usize::from(*b)]) {
                    None
                } else {
                    Some(None)
                })
            }
            Self::None => Ok(None),
        }
    }
}

/// Most positions an NFA step tracks on the stack (more go to the heap).
const INLINE_POSITIONS: usize = 8;

/// A small set of positions, sorted and without duplicates.
#[derive(Default)]
struct Positions {
    inline: [usize; INLINE_POSITIONS],
    len: usize,
    spill: Vec<usize>,
}

impl Positions {
    fn one(p: usize) -> Self {
        let mut s = Self::default();
        s.inline[0] = p;
        s.len = 1;
        s
    }

    fn as_slice(&self) -> &[usize] {
        if self.spill.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spill
        }
    }

    fn clear(&mut self) {
        self.len = 0;
        self.spill.clear();
    }

    fn insert(&mut self, p: usize) {
        if !self.spill.is_empty() {
            if let Err(k) = self.spill.binary_search(&p) {
                self.spill.insert(k, p);
            }
            return;
        }
        let cur = &self.inline[..self.len];
        let Err(k) = cur.binary_search(&p) else {
            return;
        };
        if self.len == INLINE_POSITIONS {
            self.spill = cur.to_vec();
            self.spill.insert(k, p);
            return;
        }
        self.inline.copy_within(k..self.len, k + 1);
        self.inline[k] = p;
        self.len += 1;
    }
}

impl Pattern {
    fn new(units: Vec<Vec<Alt>>) -> Option<Self> {
        let mut first = [false; 256];
        for a in units.first()? {
            let b = *a.bytes.first()?;
            first[usize::from(b)] = true;
            if a.any_case {
                first[usize::from(b.to_ascii_lowercase())] = true;
                first[usize::from(b.to_ascii_uppercase())] = true;
            }
        }
        Some(Self::Units {
            units,
            first: Box::new(first),
        })
    }

    fn literal(text: String) -> Option<Self> {
        (!text.is_empty()).then(|| Self::Literal(text.into_bytes()))
    }

    /// What every match starts with: the literal itself, or each spelling
    /// of the pattern's first units (as many units as keep the spellings at
    /// most [`ANCHORS_PER_PATTERN`], and at most [`ANCHOR_UNITS`]). Letters
    /// are to be matched in either case.
    pub(crate) fn anchors(&self) -> Vec<Vec<u8>> {
        let units = match self {
            Self::Literal(l) => return vec![l.clone()],
            Self::Units { units, .. } => units,
        };
        let mut k = 1;
        let mut n = units[0].len();
        while k < units.len().min(ANCHOR_UNITS) && n * units[k].len() <= ANCHORS_PER_PATTERN {
            n *= units[k].len();
            k += 1;
        }
        let mut out: Vec<Vec<u8>> = vec![Vec::new()];
        for unit in &units[..k] {
            out = out
                .iter()
                .flat_map(|prefix| {
                    unit.iter().map(move |a| {
                        let mut p = prefix.clone();
                        p.extend_from_slice(&a.bytes);
                        p
                    })
                })
                .collect();
        }
        out
    }

    /// What lets a search decide a candidate without running the units
    /// (see [`Shortcut`]).
    pub(crate) fn shortcut(&self) -> Shortcut {
        let units = match self {
            Self::Literal(_) => return Shortcut::None,
            Self::Units { units, .. } => units,
        };
        if units.iter().all(|u| u.len() == 1) {
            return Shortcut::Caseless(units.iter().flat_map(|u| u[0].bytes.clone()).collect());
        }
        let mut special = [false; 256];
        let mut raw = Vec::new();
        for unit in units {
            let Some((plain, others)) = unit.split_first() else {
                return Shortcut::None;
            };
            if plain.any_case {
                return Shortcut::None;
            }
            raw.extend_from_slice(&plain.bytes);
            for a in others {
                let b = a.bytes[0];
                special[usize::from(b)] = true;
                if a.any_case {
                    special[usize::from(b.to_ascii_lowercase())] = true;
                    special[usize::from(b.to_ascii_uppercase())] = true;
                }
            }
        }
        if raw.iter().any(|b| special[usize::from(*b)]) {
            return Shortcut::None;
        }
        Shortcut::Plain {
            raw,
            special: Box::new(special),
        }
    }

    /// Marks the bytes a match can start with.
    fn starts(&self, table: &mut [bool; 256]) {
        match self {
            Self::Literal(l) => table[usize::from(l[0])] = true,
            Self::Units { first, .. } => {
                for (t, f) in table.iter_mut().zip(first.iter()) {
                    *t |= *f;
                }
            }
        }
    }

    /// The end of the longest match starting at `i`; every position tried
    /// spends a step of `budget`.
    pub(crate) fn match_at(
        &self,
        h: &[u8],
        i: usize,
        budget: &mut usize,
    ) -> Result<Option<usize>, Exhausted> {
        let (units, first) = match self {
            Self::Literal(l) => {
                if h[i] != l[0] {
                    return Ok(None);
                }
                *budget = budget.checked_sub(1).ok_or(Exhausted)?;
                return Ok(h[i..].starts_with(l).then_some(i + l.len()));
            }
            Self::Units { units, first } => (units, first),
        };
        if !first[usize::from(h[i])] {
            return Ok(None);
        }
        let mut at = Positions::one(i);
        let mut next = Positions::default();
        for unit in units {
            *budget = budget.checked_sub(at.as_slice().len()).ok_or(Exhausted)?;
            next.clear();
            for &p in at.as_slice() {
                for a in unit {
                    if a.at(h, p) {
                        next.insert(p + a.bytes.len());
                    }
                }
            }
            if next.as_slice().is_empty() {
                return Ok(None);
            }
            std::mem::swap(&mut at, &mut next);
        }
        Ok(at.as_slice().last().copied())
    }
}

fn text_unit(c: char) -> Vec<Alt> {
    let mut alts = vec![Alt::exact(c.to_string())];
    let short = match c {
        '"' => Some("\\\""),
        '\\' => Some("\\\\"),
        '/' => Some("\\/"),
        '\u{8}' => Some("\\b"),
        '\u{c}' => Some("\\f"),
        '\n' => Some("\\n"),
        '\r' => Some("\\r"),
        '\t' => Some("\\t"),
        _ => None,
    };
    alts.extend(short.map(Alt::exact));
    let mut units = [0u16; 2];
    let escaped: String = c
        .encode_utf16(&mut units)
        .iter()
        .map(|u| format!("\\u{u:04x}"))
        .collect();
    alts.push(Alt::any_case(escaped));
    alts.extend(named_reference(c).map(Alt::exact));
    alts.push(Alt::exact(format!("&#{};", u32::from(c))));
    alts.push(Alt::any_case(format!("&#x{:x};", u32::from(c))));
    alts
}

fn named_reference(c: char) -> Option<&'static str> {
    match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        '"' => Some("&quot;"),
        '\'' => Some("&apos;"),
        _ => None,
    }
}

fn percent_unit(b: u8) -> Vec<Alt> {
    let mut alts = vec![Alt::exact([b]), Alt::any_case(format!("%{b:02x}"))];
    if b == b' ' {
        alts.push(Alt::exact("+"));
    }
    alts
}

/// The base64 characters of `raw` that do not depend on what surrounds it
/// when it starts `offset` bytes into a 3-byte group.
fn base64_core(engine: &impl Engine, raw: &[u8], offset: usize) -> String {
    let mut padded = vec![0u8; offset];
    padded.extend_from_slice(raw);
    let text = engine.encode(&padded);
    let text = text.trim_end_matches('=');
    // Characters mixing bits of the bytes before: one for offset 1 (after
    // the one pure-prefix character), two for offset 2 (after two).
    let skip = match offset {
        0 => 0,
        1 => 2,
        _ => 3,
    };
    // The last character is partial unless the value ends a group.
    let keep = if (offset + raw.len()).is_multiple_of(3) {
        text.len()
    } else {
        text.len().saturating_sub(1)
    };
    text.get(skip..keep).unwrap_or_default().to_owned()
}

/// The patterns of one secret value, every family.
pub(crate) fn patterns(secret: &str) -> Vec<Pattern> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let raw = secret.as_bytes();
    let mut out: Vec<Pattern> = [
        Pattern::new(secret.chars().map(text_unit).collect()),
        Pattern::new(raw.iter().map(|b| percent_unit(*b)).collect()),
        Pattern::new(
            raw.iter()
                .map(|b| vec![Alt::any_case(format!("{b:02x}"))])
                .collect(),
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut b64: Vec<String> = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .map(|e| e.encode(raw))
        .collect();
    for offset in 0..3 {
        for core in [
            base64_core(&STANDARD, raw, offset),
            base64_core(&URL_SAFE, raw, offset),
        ] {
            if core.len() >= MIN_BASE64_CORE {
                b64.push(core);
            }
        }
    }
    b64.sort();
    b64.dedup();
    out.extend(b64.into_iter().filter_map(Pattern::literal));
    out
}

/// A search for secrets: every match, the longest at each position where
/// one starts, left to right, a match's end the next position looked at.
pub(crate) trait Search {
    /// The matches in `h`, as byte ranges, spending steps of `budget`.
    fn find(&self, h: &[u8], budget: &mut usize) -> Result<Vec<(usize, usize)>, Exhausted>;
}

/// The search of issue 11: at every byte a match can start with, every
/// pattern tried (the reference the one-pass search is tested and
/// benchmarked against).
pub(crate) struct Reference<'a>(pub(crate) &'a [&'a Pattern]);

impl Search for Reference<'_> {
    fn find(&self, h: &[u8], budget: &mut usize) -> Result<Vec<(usize, usize)>, Exhausted> {
        find(h, self.0, budget)
    }
}

/// Every match of any of `patterns` in `h`, the longest at each position,
/// as byte ranges.
fn find(
    h: &[u8],
    patterns: &[&Pattern],
    budget: &mut usize,
) -> Result<Vec<(usize, usize)>, Exhausted> {
    let mut starts = [false; 256];
    for p in patterns {
        p.starts(&mut starts);
    }
    let mut spans = Vec::new();
    let mut i = 0;
    while i < h.len() {
        if !starts[usize::from(h[i])] {
            i += 1;
            continue;
        }
        let mut end = None;
        for p in patterns {
            if let Some(e) = p.match_at(h, i, budget)? {
                end = end.max(Some(e));
            }
        }
        match end {
            Some(e) if e > i => {
                spans.push((i, e));
                i = e;
            }
            _ => i += 1,
        }
    }
    Ok(spans)
}

/// A view of an answer with every valid JSON escape and HTML character
/// reference decoded; invalid ones are kept as they are, and a lone
/// surrogate becomes U+FFFD. Positions map back to the escaped text.
struct Unescaped {
    bytes: Vec<u8>,
    /// Decoded runs that came from an escape: (decoded start, decoded
    /// length, original start, original length), in order.
    escapes: Vec<(usize, usize, usize, usize)>,
}

fn hex4(h: &[u8], i: usize) -> Option<u32> {
    let s = std::str::from_utf8(h.get(i..i + 4)?).ok()?;
    u32::from_str_radix(s, 16).ok()
}

/// The character a JSON escape at `i` (a `\`) stands for, and its length.
fn json_escape(h: &[u8], i: usize) -> Option<(char, usize)> {
    let c = match *h.get(i + 1)? {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => {
            let u = hex4(h, i + 2)?;
            if (0xd800..0xdc00).contains(&u) {
                let low = (h.get(i + 6..i + 8) == Some(b"\\u"))
                    .then(|| hex4(h, i + 8))
                    .flatten()
                    .filter(|l| (0xdc00..0xe000).contains(l));
                return Some(match low {
                    Some(l) => (
                        char::from_u32(0x10000 + ((u - 0xd800) << 10) + (l - 0xdc00))?,
                        12,
                    ),
                    None => ('\u{fffd}', 6),
                });
            }
            return Some((char::from_u32(u).unwrap_or('\u{fffd}'), 6));
        }
        _ => return None,
    };
    Some((c, 2))
}

/// The character an HTML character reference at `i` (a `&`) stands for,
/// and its length.
fn html_reference(h: &[u8], i: usize) -> Option<(char, usize)> {
    for (name, c) in [
        ("&amp;", '&'),
        ("&lt;", '<'),
        ("&gt;", '>'),
        ("&quot;", '"'),
        ("&apos;", '\''),
    ] {
        if h.get(i..i + name.len()) == Some(name.as_bytes()) {
            return Some((c, name.len()));
        }
    }
    if h.get(i + 1) != Some(&b'#') {
        return None;
    }
    let (radix, start) = match h.get(i + 2) {
        Some(b'x' | b'X') => (16, i + 3),
        _ => (10, i + 2),
    };
    let digits = h
        .get(start..)?
        .iter()
        .take(10)
        .take_while(|b| b.is_ascii_hexdigit() && (radix == 16 || b.is_ascii_digit()))
        .count();
    if digits == 0 || h.get(start + digits) != Some(&b';') {
        return None;
    }
    let text = std::str::from_utf8(&h[start..start + digits]).ok()?;
    let c = char::from_u32(u32::from_str_radix(text, radix).ok()?)?;
    Some((c, start + digits + 1 - i))
}

impl Unescaped {
    fn new(h: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(h.len());
        let mut escapes = Vec::new();
        let mut i = 0;
        while i < h.len() {
            // Copy the run up to the next possible escape at once.
            let run = memchr::memchr2(b'\\', b'&', &h[i..]).unwrap_or(h.len() - i);
            bytes.extend_from_slice(&h[i..i + run]);
            i += run;
            if i == h.len() {
                break;
            }
            let decoded = match h[i] {
                b'\\' => json_escape(h, i),
                b'&' => html_reference(h, i),
                _ => None,
            };
            match decoded {
                Some((c, len)) => {
                    let mut buf = [0u8; 4];
                    let s = c.encode_utf8(&mut buf);
                    escapes.push((bytes.len(), s.len(), i, len));
                    bytes.extend_from_slice(s.as_bytes());
                    i += len;
                }
                None => {
                    bytes.push(h[i]);
                    i += 1;
                }
            }
        }
        Self { bytes, escapes }
    }

    /// The escape whose decoded run contains or precedes decoded byte `d`.
    fn escape_at(&self, d: usize) -> Option<&(usize, usize, usize, usize)> {
        let n = self.escapes.partition_point(|e| e.0 <= d);
        n.checked_sub(1).map(|k| &self.escapes[k])
    }

    /// The original position of decoded byte `d` (the start of its escape).
    fn start(&self, d: usize) -> usize {
        match self.escape_at(d) {
            Some(&(ds, dl, os, _)) if d < ds + dl => os,
            Some(&(ds, dl, os, ol)) => os + ol + (d - ds - dl),
            None => d,
        }
    }

    /// The original end of a decoded range ending (exclusive) at `e > 0`.
    fn end(&self, e: usize) -> usize {
        match self.escape_at(e - 1) {
            Some(&(ds, dl, os, ol)) if e - 1 < ds + dl => os + ol,
            _ => self.start(e - 1) + 1,
        }
    }
}

/// Replaces every match `search` finds in `h`, as it is and in its
/// unescaped view, with `with`; returns the result and the count. An
/// answer without a match is returned as it came.
pub(crate) fn redact(
    h: Vec<u8>,
    search: &impl Search,
    with: &[u8],
) -> Result<(Vec<u8>, u32), Exhausted> {
    let mut budget = STEPS_PER_BYTE.saturating_mul(h.len().saturating_mul(2)) + 4096;
    let mut spans = search.find(&h, &mut budget)?;
    if memchr::memchr2(b'\\', b'&', &h).is_some() {
        let view = Unescaped::new(&h);
        if !view.escapes.is_empty() {
            for (s, e) in search.find(&view.bytes, &mut budget)? {
                spans.push((view.start(s), view.end(e)));
            }
        }
    }
    if spans.is_empty() {
        return Ok((h, 0));
    }
    spans.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    for (s, e) in spans {
        match merged.last_mut() {
            Some(last) if s < last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let mut out = Vec::with_capacity(h.len());
    let mut copied = 0;
    for &(s, e) in &merged {
        out.extend_from_slice(&h[copied..s]);
        out.extend_from_slice(with);
        copied = e;
    }
    out.extend_from_slice(&h[copied..]);
    Ok((out, u32::try_from(merged.len()).unwrap_or(u32::MAX)))
}
