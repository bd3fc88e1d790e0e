//! Prompt-injection detection: a scored detector over normalised text
//! ([`super::normalize`]), with embedded base64, hex and percent-encoded
//! segments decoded and read too.
//!
//! Signals, each a family of phrasings scored by how strongly it marks an
//! injection (README: *Guardrails*): instruction override, role and turn
//! markers, requests to reveal prompts or secrets, exfiltration (sending
//! data to a URL, markdown images carrying data in their URL), fake
//! delimiters, and hidden text (tag-character smuggling, bidirectional
//! overrides, runs of zero-width characters, CSS that hides text). Each
//! hit is damped when the text around it discusses or quotes attacks
//! (security write-ups are not attacks). The verdict combines the best hit
//! of each signal as a noisy OR: `1 - Π(1 - s)`.

use std::sync::OnceLock;

use regex::bytes::{Regex, RegexBuilder};
use regex_automata::{Anchored, Input, meta, util::syntax};

use super::normalize::{Normalized, normalize};

/// Score from which text is treated as an injection.
pub const THRESHOLD: f32 = 0.5;
/// Longest text scanned; beyond it, the rest is scanned in windows of
/// this size (a phrase cut by a window edge may be missed).
const WINDOW: usize = 256 * 1024;
/// Shortest base64 run decoded.
const MIN_BASE64: usize = 24;
/// Shortest hex run decoded.
const MIN_HEX: usize = 32;

/// A family of injection evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    /// "Ignore previous instructions", "you are now …", new instructions.
    Override,
    /// Chat-template tokens, role labels and tags, fake tool results.
    Role,
    /// Requests to reveal the prompt, keys or credentials.
    Reveal,
    /// Sending data to a URL; markdown images with data in the URL.
    Exfiltration,
    /// Fake ends of input and begin-system banners.
    Delimiter,
    /// Invisible or hidden text.
    Hidden,
}

impl Signal {
    /// As a word: `override`, `role`, `reveal`, `exfiltration`,
    /// `delimiter`, `hidden`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Override => "override",
            Self::Role => "role",
            Self::Reveal => "reveal",
            Self::Exfiltration => "exfiltration",
            Self::Delimiter => "delimiter",
            Self::Hidden => "hidden",
        }
    }
}

/// One piece of evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Its family.
    pub signal: Signal,
    /// Its score (0 to 1), after damping.
    pub score: f32,
    /// Byte span in the text scanned.
    pub start: usize,
    /// End (exclusive).
    pub end: usize,
    /// Found in a decoded (base64, hex or percent-encoded) segment.
    pub encoded: bool,
}

/// The detector's answer on one text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    /// Combined score, 0 to 1.
    pub score: f32,
    /// The evidence, in order of position.
    pub hits: Vec<Hit>,
}

impl Verdict {
    /// Whether the score reaches [`THRESHOLD`].
    pub fn injection(&self) -> bool {
        self.score >= THRESHOLD
    }

    /// Its signals with their best scores, strongest first:
    /// `override 0.85, role 0.55`.
    pub fn summary(&self) -> String {
        let mut best: Vec<(&'static str, f32)> = Vec::new();
        for h in &self.hits {
            match best.iter_mut().find(|(s, _)| *s == h.signal.as_str()) {
                Some(b) => b.1 = b.1.max(h.score),
                None => best.push((h.signal.as_str(), h.score)),
            }
        }
        best.sort_by(|a, b| b.1.total_cmp(&a.1));
        best.iter()
            .map(|(s, x)| format!("{s} {x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// (signal, score, pattern) over normalised text (lower case, whitespace
/// collapsed, confusables folded).
const PATTERNS: &[(Signal, f32, &str)] = &[
    (
        Signal::Override,
        0.85,
        r"\b(?:ignore|disregard|forget|override|bypass|skip|abandon|discard|neglect|set aside|do not follow|don'?t follow|do not obey|don'?t obey|stop following|no longer follow)\s+(?:(?:all|any|every|each|the|your|my|of|these|those|its|previous|prior|above|earlier|preceding|foregoing|initial|original|existing|current|old|system|safety|developer|given|other|whatever)\s+){0,4}(?:instructions?|rules?|prompts?|directives?|guidelines?|guardrails?|constraints?|context|messages?|commands?|polic(?:y|ies)|restrictions?|programming|orders?|training|limitations?)\b",
    ),
    (
        Signal::Override,
        0.65,
        r"\b(?:new|updated|revised|real|actual|true|secret|hidden|additional|override|priority)\s+(?:system\s+)?(?:instructions?|rules|directives?|task|orders?|objective)\s*(?::|-|—|are\b|is\b)",
    ),
    (
        Signal::Override,
        0.6,
        r"\byour\s+(?:new|real|true|only|actual|primary)\s+(?:task|goal|purpose|job|instructions?|objective|mission)\s+(?:is|are|now)\b",
    ),
    (
        Signal::Override,
        0.8,
        r"\b(?:act|behave|respond|roleplay|role-play|pretend|operate)\s+(?:as|like|to be)\s+(?:an?\s+)?(?:unrestricted|unfiltered|uncensored|jailbroken|evil|unethical|amoral|dan\b|developer mode|ai without)",
    ),
    (
        Signal::Override,
        0.8,
        r"\bdo anything now\b|\bjailbreak(?:ed)?\s+mode\b|\bdeveloper mode (?:enabled|on|activated)\b",
    ),
    (
        Signal::Override,
        0.5,
        r"\bfrom now on,?\s+(?:you|your|always|never|respond|answer|only)\b",
    ),
    (
        Signal::Override,
        0.45,
        r"\byou\s+are\s+(?:now|no longer)\s+(?:an?\s+|in\s+|free|not\s+bound|allowed|able)",
    ),
    (
        Signal::Override,
        0.55,
        r"\b(?:attention|important|urgent|note|message|instructions?)\s*(?:!|:)?\s*(?:to|for)?\s*(?:the\s+|all\s+|any\s+)?(?:ai|assistant|agent|llm|language model|chatbot|model|gpt|claude)s?(?:\s+[a-z]+){0,4}\s*[:!,]",
    ),
    (
        Signal::Override,
        0.6,
        r"\bif you are an?\s+(?:ai|llm|assistant|language model|agent|bot)\b",
    ),
    (
        Signal::Override,
        0.35,
        r"\bwithout\s+(?:any\s+)?(?:restrictions|filters|limitations|censorship|safety)\b",
    ),
    (
        Signal::Override,
        0.5,
        r"\binstead,?\s+(?:you\s+(?:must|should|will|need to)|do the following|follow these|perform)\b",
    ),
    (
        Signal::Role,
        0.8,
        r"<\|(?:im_start|im_end|im_sep|system|user|assistant|endoftext|begin_of_text|end_of_text|start_header_id|end_header_id|eot_id|eom_id|tool)\|>|\[/?inst\]|<</?sys>>|<start_of_turn>|<end_of_turn>",
    ),
    (
        Signal::Role,
        0.55,
        r"(?m)^\s*(?:#{1,6}\s*)?(?:system|developer)\s*(?:message|prompt)?\s*:",
    ),
    (
        Signal::Role,
        0.4,
        r"(?m)^\s*(?:#{1,6}\s*)?(?:assistant|human|ai)\s*:",
    ),
    (
        Signal::Role,
        0.55,
        r"</?(?:system|system_prompt|system-prompt|instructions|assistant|tool_result|tool_response|function_results|function_calls|tool_call|admin)>",
    ),
    (
        Signal::Role,
        0.55,
        r#""role"\s*:\s*"(?:system|developer|assistant)""#,
    ),
    (
        Signal::Reveal,
        0.6,
        r"\b(?:reveal|print|output|repeat|display|tell me|give me|leak|dump|disclose|expose|recite|spell out|write out|show me|share)\s+(?:me\s+)?(?:(?:all|the|any|my|of|exact|full|entire|complete|verbatim)\s+){0,3}(?:system\s+prompt|(?:your|the\s+(?:initial|hidden|original|secret|system|previous|above|preceding))\s+(?:(?:exact|full|entire|complete|original|initial|hidden|secret|system)\s+){0,2}(?:instructions|prompts?|rules|guidelines)|(?:your\s+|the\s+)?(?:api[\s_-]?keys?|secrets?|passwords?|credentials|access tokens?|environment variables|env vars|private keys?))\b",
    ),
    (
        Signal::Reveal,
        0.55,
        r"\b(?:what(?:'s|\s+is|\s+are|\s+were)|tell me)\s+(?:your|the)\s+(?:system\s+prompt|(?:initial|hidden|original|secret|system)\s+(?:instructions|prompt|rules))\b",
    ),
    (
        Signal::Reveal,
        0.3,
        r"\b(?:system prompt|your instructions|the instructions above|the text above)\b",
    ),
    (
        Signal::Exfiltration,
        0.65,
        r"!\[[^\]\n]{0,100}\]\(\s*https?://[^)\s]{1,300}\?[^)\s]{0,300}=[^)\s]*\)",
    ),
    (
        Signal::Exfiltration,
        0.5,
        r#"<img[^>]{0,200}\bsrc\s*=\s*["']?https?://[^"'>\s]{1,300}\?[^"'>\s]{0,300}="#,
    ),
    (
        Signal::Exfiltration,
        0.4,
        r"\b(?:send|post|upload|forward|e-?mail|transmit|exfiltrate|submit|leak|copy|append|encode|include)\b(?:[^.\n]|\.[a-z0-9])*?\b(?:to|at|into|in|via)\s+(?:https?://|www\.|(?:this|the following|my|our|an?|that)\s+(?:url|link|endpoint|webhook|server|address|e-?mail address|site|domain))",
    ),
    (
        Signal::Exfiltration,
        0.7,
        r"\b(?:send|post|upload|forward|e-?mail|transmit|exfiltrate|submit|leak|copy|append|encode|include)\b(?:[^.\n]|\.[a-z0-9])*?(?:\b(?:history|conversation|chat|e-?mails|inbox|messages|secrets?|keys?|tokens?|passwords?|credentials|cookies|contents|database|documents|files|card numbers|credit cards?|personal data|user data)\b|\.env\b)(?:[^.\n]|\.[a-z0-9])*?\b(?:to|at|into|in|via)\s+(?:https?://|www\.|(?:this|the following|my|our|an?|that)\s+(?:url|link|endpoint|webhook|server|address|e-?mail address|site|domain))",
    ),
    (
        Signal::Override,
        0.55,
        r"\b(?:do not|don'?t|never)\s+(?:tell|mention|inform|alert|notify|reveal (?:this|it) to|let)\s+(?:\w+\s+){0,2}(?:the\s+)?user\b|\bwithout\s+(?:telling|informing|notifying|alerting)\s+(?:the\s+)?user\b|\bkeep\s+(?:this|it)\s+(?:secret|hidden)\s+from\s+(?:the\s+)?user\b",
    ),
    (
        Signal::Exfiltration,
        0.45,
        r"\b(?:curl|wget|fetch|requests\.post|invoke-webrequest)\b[^\n]{0,120}(?:-d\b|--data|\?[a-z_]+=)",
    ),
    (
        Signal::Delimiter,
        0.5,
        r"(?m)^\s*(?:-{3,}|={3,}|#{3,}|\*{3,}|\[{2,}|<{3,})\s*(?:begin|start|new|end)?\s*(?:system|instructions?|admin|developer|override|new task)\b",
    ),
    (
        Signal::Delimiter,
        0.6,
        r"\[(?:system|admin|developer|assistant)(?:\s+(?:message|note|override|instructions?))?\]",
    ),
    (
        Signal::Delimiter,
        0.45,
        r"\b(?:end of|ignore the)\s+(?:the\s+)?(?:user|tool|function|untrusted)\s+(?:input|data|output|content|results?)\b",
    ),
    (
        Signal::Hidden,
        0.3,
        r"(?:display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0(?:px|pt|em)?\b|opacity\s*:\s*0(?:\.0+)?\b|color\s*:\s*(?:white|#fff(?:fff)?|transparent)\b)",
    ),
];

/// Words that, shortly before a hit, say the text discusses attacks
/// rather than makes one.
const DISCUSSION: &str = r"\b(?:example|e\.g\.|such as|phrases? like|attacks?|attackers?|injections?|jailbreaks?|known as|called|for instance|detect(?:s|ed|ion|or)?|classif(?:y|ier)|payloads?|malicious|adversarial|red team|researchers?|paper|article|blog|quoted?|warns?|beware|prevent|defen[cs]e|story|novel|fiction|character|villain|hero|plot)\b";

struct Compiled {
    /// Every pattern, searched leftmost-first: where any of them starts.
    any: meta::Regex,
    /// Each pattern alone.
    each: Vec<meta::Regex>,
    discussion: Regex,
}

/// ASCII classes and word boundaries, over bytes: the text is normalised
/// (what matters is folded to ASCII), and Unicode word boundaries would
/// keep the matcher off its DFA.
fn ascii() -> syntax::Config {
    syntax::Config::new().unicode(false).utf8(false)
}

#[allow(
    clippy::unwrap_used,
    reason = "constant patterns; a test compiles them"
)]
fn compiled() -> &'static Compiled {
    static C: OnceLock<Compiled> = OnceLock::new();
    C.get_or_init(|| {
        let sources: Vec<&str> = PATTERNS.iter().map(|p| p.2).collect();
        let one = |p: &str| meta::Regex::builder().syntax(ascii()).build(p).unwrap();
        Compiled {
            any: meta::Regex::builder()
                .syntax(ascii())
                .build_many(&sources)
                .unwrap(),
            each: sources.iter().map(|s| one(s)).collect(),
            discussion: RegexBuilder::new(DISCUSSION)
                .unicode(false)
                .build()
                .unwrap(),
        }
    })
}

/// Which patterns match somewhere in `text`. Each place where some
/// pattern starts is found by a leftmost search resumed one byte after the
/// last such place, and there every pattern not yet seen is tried,
/// anchored: every start of every pattern is visited, without the cost of
/// an overlapping search of all patterns over the whole text.
fn matching(c: &Compiled, text: &[u8]) -> Vec<usize> {
    let mut seen = vec![false; c.each.len()];
    let mut left = seen.len();
    let mut from = 0;
    while left > 0 && from <= text.len() {
        let Some(m) = c.any.search(&Input::new(text).range(from..)) else {
            break;
        };
        let s = m.start();
        for (k, re) in c.each.iter().enumerate() {
            if !seen[k]
                && (k == m.pattern().as_usize()
                    || re
                        .search_half(&Input::new(text).range(s..).anchored(Anchored::Yes))
                        .is_some())
            {
                seen[k] = true;
                left -= 1;
            }
        }
        from = s + 1;
    }
    seen.iter()
        .enumerate()
        .filter_map(|(k, s)| s.then_some(k))
        .collect()
}

/// Hits in normalised text, spans in its own bytes.
fn phrase_hits(n: &Normalized, encoded: bool, out: &mut Vec<Hit>) {
    let c = compiled();
    let text = n.text.as_bytes();
    for k in matching(c, text) {
        let (signal, score, _) = PATTERNS[k];
        for m in c.each[k].find_iter(text) {
            let mut score = score;
            // What comes just before: a discussion, or an opening quote.
            let before = &text[m.start().saturating_sub(80)..m.start()];
            if c.discussion.is_match(before) {
                score *= 0.5;
            }
            let quotes: [&[u8]; 6] = [
                b"\"",
                b"'",
                b"`",
                "\u{201C}".as_bytes(),
                "\u{2018}".as_bytes(),
                "\u{AB}".as_bytes(),
            ];
            if quotes.iter().any(|q| before.ends_with(q)) {
                score *= 0.6;
            }
            let (start, end) = n.original(m.start(), m.end());
            out.push(Hit {
                signal,
                score,
                start,
                end,
                encoded,
            });
        }
    }
}

/// Evidence from invisible characters.
fn hidden_hits(n: &Normalized, raw: &str, out: &mut Vec<Hit>) {
    if n.hidden == 0 {
        return;
    }
    for &(s, e) in &n.smuggled {
        out.push(Hit {
            signal: Signal::Hidden,
            score: 0.9,
            start: s,
            end: e,
            encoded: false,
        });
    }
    let overrides = raw
        .char_indices()
        .filter(|(_, c)| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'))
        .map(|(i, _)| i)
        .collect::<Vec<_>>();
    if let (Some(&s), Some(&e)) = (overrides.first(), overrides.last()) {
        out.push(Hit {
            signal: Signal::Hidden,
            score: 0.4,
            start: s,
            end: e + 3,
            encoded: false,
        });
    }
    let zero_width = raw
        .chars()
        .filter(|c| matches!(c, '\u{200B}' | '\u{2060}' | '\u{180E}'))
        .count();
    if zero_width >= 3 {
        out.push(Hit {
            signal: Signal::Hidden,
            score: 0.35,
            start: 0,
            end: raw.len(),
            encoded: false,
        });
    }
}

/// Decoded text of an embedded segment, if it reads as text.
fn printable(bytes: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(bytes).ok()?;
    let good = s
        .chars()
        .filter(|c| !c.is_control() || c.is_whitespace())
        .count();
    (s.len() >= 8 && good * 10 >= s.chars().count() * 9).then(|| s.to_owned())
}

/// Embedded encoded segments: (span in `raw`, decoded text).
fn embedded(raw: &str) -> Vec<((usize, usize), String)> {
    use base64::Engine;
    /// The bytes of base64 (either alphabet) and hex.
    static B64: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            t[b] = c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'-' | b'_');
            b += 1;
        }
        t
    };
    let mut out = Vec::new();
    let h = raw.as_bytes();
    let mut i = 0;
    while i < h.len() {
        if !B64[usize::from(h[i])] {
            i += 1;
            continue;
        }
        let mut e = i + 1;
        while e < h.len() && B64[usize::from(h[e])] {
            e += 1;
        }
        // Words and numbers are far shorter than an encoded segment.
        if e - i < MIN_HEX.min(MIN_BASE64) {
            i = e;
            continue;
        }
        let mut end = e;
        while end < h.len() && h[end] == b'=' && end - e < 2 {
            end += 1;
        }
        let run = &raw[i..e];
        if run.len() >= MIN_HEX
            && run.len().is_multiple_of(2)
            && run.bytes().all(|b| b.is_ascii_hexdigit())
        {
            let bytes: Option<Vec<u8>> = (0..run.len())
                .step_by(2)
                .map(|k| u8::from_str_radix(&run[k..k + 2], 16).ok())
                .collect();
            if let Some(text) = bytes.as_deref().and_then(printable) {
                out.push(((i, e), text));
            }
        } else if run.len() >= MIN_BASE64 {
            let trimmed = run.trim_end_matches('=');
            let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(trimmed.replace(['-', '_'], "+").as_bytes())
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed));
            if let Some(text) = decoded.ok().as_deref().and_then(printable) {
                out.push(((i, end), text));
            }
        }
        i = end.max(i + 1);
    }
    // Percent-encoding: the whole text decoded once when it has three or
    // more escapes.
    let escapes = memchr::memchr_iter(b'%', h)
        .filter(|&k| {
            h.get(k + 1).is_some_and(u8::is_ascii_hexdigit)
                && h.get(k + 2).is_some_and(u8::is_ascii_hexdigit)
        })
        .count();
    if escapes >= 3 {
        let mut bytes = Vec::with_capacity(h.len());
        let mut k = 0;
        while k < h.len() {
            if h[k] == b'%'
                && let Some(v) = raw
                    .get(k + 1..k + 3)
                    .and_then(|x| u8::from_str_radix(x, 16).ok())
            {
                bytes.push(v);
                k += 3;
                continue;
            }
            bytes.push(if h[k] == b'+' { b' ' } else { h[k] });
            k += 1;
        }
        if let Ok(text) = String::from_utf8(bytes) {
            out.push(((0, raw.len()), text));
        }
    }
    out
}

/// Scans `text` (and what is encoded in it, one level deep).
pub fn scan(text: &str) -> Verdict {
    let mut hits = Vec::new();
    let mut at = 0;
    while at < text.len() {
        let mut end = (at + WINDOW).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let part = &text[at..end];
        let n = normalize(part);
        let mut local = Vec::new();
        phrase_hits(&n, false, &mut local);
        hidden_hits(&n, part, &mut local);
        for ((s, e), decoded) in embedded(part) {
            let inner = normalize(&decoded);
            let mut found = Vec::new();
            phrase_hits(&inner, true, &mut found);
            for h in found {
                // Encoding an instruction is itself a sign.
                local.push(Hit {
                    score: (h.score + 0.1).min(1.0),
                    start: s,
                    end: e,
                    ..h
                });
            }
        }
        for h in &mut local {
            h.start += at;
            h.end += at;
        }
        hits.extend(local);
        at = end;
    }
    hits.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    // Per signal: the strongest hit, and each further distinct hit adds
    // half its weight of what is left (two weak role markers together say
    // more than one).
    let mut spans: std::collections::BTreeMap<(Signal, usize, usize), f32> =
        std::collections::BTreeMap::new();
    for h in &hits {
        let s = spans.entry((h.signal, h.start, h.end)).or_insert(0.0);
        *s = s.max(h.score);
    }
    let mut by_signal: std::collections::BTreeMap<Signal, Vec<f32>> =
        std::collections::BTreeMap::new();
    for ((signal, _, _), score) in spans {
        by_signal.entry(signal).or_default().push(score);
    }
    let best = by_signal.into_values().map(|mut v| {
        v.sort_by(|a, b| b.total_cmp(a));
        v.iter().skip(1).fold(v[0], |s, x| s + 0.5 * x * (1.0 - s))
    });
    let score = 1.0 - best.map(|s| 1.0 - s).product::<f32>();
    Verdict { score, hits }
}

/// The spans of `v`'s hits merged (for removal).
pub fn spans(v: &Verdict) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for h in &v.hits {
        match out.last_mut() {
            Some(last) if h.start <= last.1 => last.1 = last.1.max(h.end),
            _ => out.push((h.start, h.end)),
        }
    }
    out
}

#[cfg(test)]
mod tests;
