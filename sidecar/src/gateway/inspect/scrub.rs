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
//! The families (see the README's "Which encodings of a secret are removed"):
//!
//! - **text**: each character as itself, or JSON-escaped (`\"`, `\\`, `\/`,
//!   `\b`, `\f`, `\n`, `\r`, `\t`, `\uXXXX` in either case, a surrogate pair
//!   beyond the BMP), or as an HTML/XML character reference (`&amp;`,
//!   `&lt;`, `&gt;`, `&quot;`, `&apos;`, `&#D…;`, `&#xH…;` in either case);
//! - **percent**: each UTF-8 byte as itself or `%HH` in either case, a space
//!   also as `+`;
//! - **hex**: every byte as two hex digits, in either case;
//! - **base64**: standard and URL-safe alphabets, with or without padding,
//!   of the whole value.
//!
//! Separately, every JSON string token of the answer that holds an escape
//! is decoded and scanned in every family, so an encoding inside JSON
//! escaping (base64 with `\/`, say) is found too; the token is then written
//! back re-encoded with the secret replaced.

use base64::Engine;

/// One spelling of a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Alt {
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
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    units: Vec<Vec<Alt>>,
    /// Bytes a match can start with.
    first: [bool; 256],
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
        Some(Self { units, first })
    }

    /// The end of the longest match starting at `i`.
    fn match_at(&self, h: &[u8], i: usize) -> Option<usize> {
        if !self.first[usize::from(*h.get(i)?)] {
            return None;
        }
        let mut at = vec![i];
        let mut next = Vec::new();
        for unit in &self.units {
            next.clear();
            for &p in &at {
                next.extend(
                    unit.iter()
                        .filter(|a| a.at(h, p))
                        .map(|a| p + a.bytes.len()),
                );
            }
            if next.is_empty() {
                return None;
            }
            next.sort_unstable();
            next.dedup();
            std::mem::swap(&mut at, &mut next);
        }
        at.last().copied()
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
    let named = match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        '"' => Some("&quot;"),
        '\'' => Some("&apos;"),
        _ => None,
    };
    alts.extend(named.map(Alt::exact));
    alts.push(Alt::exact(format!("&#{};", u32::from(c))));
    alts.push(Alt::any_case(format!("&#x{:x};", u32::from(c))));
    alts
}

fn percent_unit(b: u8) -> Vec<Alt> {
    let mut alts = vec![Alt::exact([b]), Alt::any_case(format!("%{b:02x}"))];
    if b == b' ' {
        alts.push(Alt::exact("+"));
    }
    alts
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
    b64.sort();
    b64.dedup();
    out.extend(
        b64.into_iter()
            .filter_map(|f| Pattern::new(vec![vec![Alt::exact(f)]])),
    );
    out
}

/// Replaces every match of any of `patterns` in `h` with `with`, the
/// longest match at each position first; returns the count.
pub(crate) fn replace(h: &[u8], patterns: &[Pattern], with: &[u8]) -> (Vec<u8>, u32) {
    let mut out = Vec::new();
    let (mut i, mut copied, mut n) = (0, 0, 0u32);
    while i < h.len() {
        let end = patterns.iter().filter_map(|p| p.match_at(h, i)).max();
        match end {
            Some(end) if end > i => {
                out.extend_from_slice(&h[copied..i]);
                out.extend_from_slice(with);
                n += 1;
                i = end;
                copied = end;
            }
            _ => i += 1,
        }
    }
    if n == 0 {
        return (h.to_vec(), 0);
    }
    out.extend_from_slice(&h[copied..]);
    (out, n)
}

/// The end of the JSON string token opening at `start` (a `"`), past its
/// closing quote, and whether it holds an escape.
fn string_token(h: &[u8], start: usize) -> Option<(usize, bool)> {
    let (mut i, mut escapes) = (start + 1, false);
    while i < h.len() {
        match h[i] {
            b'\\' => {
                escapes = true;
                i += 2;
            }
            b'"' => return Some((i + 1, escapes)),
            _ => i += 1,
        }
    }
    None
}

/// Decodes every JSON string token of `h` that holds an escape, and writes
/// back, re-encoded, each one in which a pattern matched. Tokens without an
/// escape read the same decoded, so [`replace`] sees them as they are.
pub(crate) fn replace_in_json_strings(
    h: &[u8],
    patterns: &[Pattern],
    with: &[u8],
) -> (Vec<u8>, u32) {
    let mut out = Vec::new();
    let (mut i, mut copied, mut n) = (0, 0, 0u32);
    while let Some(q) = memchr(b'"', h, i) {
        let Some((end, escapes)) = string_token(h, q) else {
            break;
        };
        i = end;
        if !escapes {
            continue;
        }
        let Ok(decoded) = serde_json::from_slice::<String>(&h[q..end]) else {
            continue;
        };
        let (scrubbed, found) = replace(decoded.as_bytes(), patterns, with);
        if found == 0 {
            continue;
        }
        let text = String::from_utf8_lossy(&scrubbed);
        let Ok(encoded) = serde_json::to_string(&text) else {
            continue;
        };
        out.extend_from_slice(&h[copied..q]);
        out.extend_from_slice(encoded.as_bytes());
        copied = end;
        n += found;
    }
    if n == 0 {
        return (h.to_vec(), 0);
    }
    out.extend_from_slice(&h[copied..]);
    (out, n)
}

fn memchr(b: u8, h: &[u8], from: usize) -> Option<usize> {
    h.get(from..)?
        .iter()
        .position(|x| *x == b)
        .map(|p| p + from)
}
