//! Guardrail detectors over text: personal data ([`pii`]) and credentials
//! ([`secrets`], with rules in the gitleaks TOML format). A detector reports
//! [`Finding`]s (what, where), never the value; what to do with them
//! (redact, mask, block, record) is the caller's policy.

pub mod eval;
pub mod injection;
pub mod normalize;
pub mod pii;
pub mod secrets;

/// What a finding is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// An e-mail address.
    Email,
    /// A phone number.
    Phone,
    /// A payment card number (Luhn-valid, of a known network).
    Card,
    /// An IBAN (checksum-valid, of its country's length).
    Iban,
    /// A US social security number.
    Ssn,
    /// An IPv4 or IPv6 address.
    Ip,
    /// A credential, by the id of the rule that found it.
    Secret(String),
}

impl Kind {
    /// The family: `pii.email`, …, `secret`.
    pub fn family(&self) -> &'static str {
        match self {
            Self::Email => "pii.email",
            Self::Phone => "pii.phone",
            Self::Card => "pii.card",
            Self::Iban => "pii.iban",
            Self::Ssn => "pii.ssn",
            Self::Ip => "pii.ip",
            Self::Secret(_) => "secret",
        }
    }

    /// The label a redaction leaves: `email`, …, or the secret rule's id.
    pub fn label(&self) -> &str {
        match self {
            Self::Secret(rule) => rule,
            other => other.family().trim_start_matches("pii."),
        }
    }
}

/// One finding: its kind and byte span in the text scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was found.
    pub kind: Kind,
    /// Start (byte offset).
    pub start: usize,
    /// End (exclusive).
    pub end: usize,
}

impl Finding {
    /// A finding of `kind` over `start..end`.
    pub fn new(kind: Kind, start: usize, end: usize) -> Self {
        Self { kind, start, end }
    }
}

/// Findings sorted by start, overlaps dropped (the earlier, then the longer,
/// wins).
pub fn settle(mut found: Vec<Finding>) -> Vec<Finding> {
    found.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    let mut out: Vec<Finding> = Vec::with_capacity(found.len());
    for f in found {
        if out.last().is_none_or(|l| f.start >= l.end) {
            out.push(f);
        }
    }
    out
}

/// `text` with every finding replaced by `[REDACTED:<label>]`.
pub fn redact(text: &str, findings: &[Finding]) -> String {
    replace(text, findings, |f, _| {
        format!("[REDACTED:{}]", f.kind.label())
    })
}

/// `text` with every finding masked: each character but the last four
/// letters or digits becomes `*` (separators kept).
pub fn mask(text: &str, findings: &[Finding]) -> String {
    replace(text, findings, |_, s| masked(s))
}

/// `s` with each letter or digit but the last four as `*`.
pub fn masked(s: &str) -> String {
    // With four or fewer, nothing is kept.
    let keep_from = s
        .char_indices()
        .filter(|(_, c)| c.is_alphanumeric())
        .map(|(i, _)| i)
        .rev()
        .nth(3)
        .filter(|_| s.chars().filter(|c| c.is_alphanumeric()).count() > 4)
        .unwrap_or(usize::MAX);
    s.char_indices()
        .map(|(i, c)| {
            if i >= keep_from || !c.is_alphanumeric() {
                c
            } else {
                '*'
            }
        })
        .collect()
}

/// `text` with each finding (sorted, not overlapping: [`settle`]) replaced
/// by what `with` makes of it and its text.
pub fn replace(
    text: &str,
    findings: &[Finding],
    with: impl Fn(&Finding, &str) -> String,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for f in findings {
        if f.start < copied
            || f.end > text.len()
            || !text.is_char_boundary(f.start)
            || !text.is_char_boundary(f.end)
        {
            continue;
        }
        out.push_str(&text[copied..f.start]);
        out.push_str(&with(f, &text[f.start..f.end]));
        copied = f.end;
    }
    out.push_str(&text[copied..]);
    out
}
