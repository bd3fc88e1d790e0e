//! Stage 8's detectors on a tool's answer: credentials (the policy's rules)
//! and personal data, each handled as the tool's filters say (`redact`,
//! `mask`, `block`, `off`).
//!
//! An answer that is JSON is rewritten value by value: every string (not
//! the object keys) is scanned as decoded text and replaced inside the
//! string, so the answer stays valid JSON (re-serialised only when
//! something changed). Other UTF-8 answers are scanned as text; an answer
//! that is not UTF-8 is passed as it is (the injected-secret search still
//! ran over it).

use warden_shared::guard::{self, Finding, Kind};
use warden_shared::policy::Guard;
use warden_shared::refusal::Reason;

use super::{Guards, REDACTED};
use crate::gateway::{Refusal, Stage};

/// Most findings listed in a call's audit event (the count is exact).
pub const MAX_NOTED: usize = 32;

/// One finding as the audit event keeps it: never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Noted {
    /// `pii.email`, …, or `secret:<rule id>`.
    pub signal: String,
    /// Where: a JSON pointer to the string, or `body`.
    pub at: String,
    /// Byte span in that string.
    pub span: (usize, usize),
    /// What was done (`redact`, `mask`, `block`, `mark`, `flag`).
    pub action: &'static str,
}

impl Noted {
    /// `signal@at[start..end]:action`.
    pub fn line(&self) -> String {
        format!(
            "{}@{}[{}..{}]:{}",
            self.signal, self.at, self.span.0, self.span.1, self.action
        )
    }
}

/// The body after the detectors.
#[derive(Debug)]
pub(super) struct Checked {
    pub(super) content: Vec<u8>,
    pub(super) replaced: u32,
    pub(super) noted: Vec<Noted>,
}

fn action(g: &Guards, k: &Kind) -> Guard {
    match k {
        Kind::Secret(_) => g.secrets,
        _ => g.pii,
    }
}

fn signal(k: &Kind) -> String {
    match k {
        Kind::Secret(rule) => format!("secret:{rule}"),
        other => other.family().to_owned(),
    }
}

/// The findings in `text` that the filters act on.
fn scan(g: &Guards, text: &str) -> Vec<Finding> {
    let mut found = Vec::new();
    if g.pii != Guard::Off {
        found.extend(guard::pii::scan(text));
    }
    if g.secrets != Guard::Off {
        found.extend(g.rules.scan(text));
    }
    let found = guard::settle(found);
    // The marker of an earlier redaction is not a finding.
    found
        .into_iter()
        .filter(|f| !text[f.start..f.end].contains(REDACTED))
        .collect()
}

struct Pass<'a> {
    guards: &'a Guards,
    stage: Stage,
    replaced: u32,
    noted: Vec<Noted>,
    count: usize,
}

impl Pass<'_> {
    /// `text` rewritten, or `None` when nothing in it is acted on.
    fn text(&mut self, text: &str, at: &str) -> Result<Option<String>, Refusal> {
        let found = scan(self.guards, text);
        if found.is_empty() {
            return Ok(None);
        }
        for f in &found {
            let act = action(self.guards, &f.kind);
            self.count += 1;
            if self.noted.len() < MAX_NOTED {
                self.noted.push(Noted {
                    signal: signal(&f.kind),
                    at: at.to_owned(),
                    span: (f.start, f.end),
                    action: act.as_str(),
                });
            }
            if act == Guard::Block {
                let sig = signal(&f.kind);
                return Err(if self.stage == Stage::InspectInput {
                    Refusal::at(
                        Stage::InspectInput,
                        Reason::ArgumentSecret,
                        format!(
                            "argument {at} of {} holds {sig}, which this tool's filters block",
                            self.guards.tool
                        ),
                    )
                    .rule(format!("filters argument_secrets {sig}"))
                } else {
                    Refusal::at(
                        Stage::InspectOutput,
                        Reason::OutputBlocked,
                        format!("the answer holds {sig} ({at}), which this tool's filters block"),
                    )
                    .rule(format!("filters {sig}"))
                });
            }
        }
        self.replaced = self
            .replaced
            .saturating_add(u32::try_from(found.len()).unwrap_or(u32::MAX));
        Ok(Some(guard::replace(text, &found, |f, s| {
            match action(self.guards, &f.kind) {
                Guard::Mask => guard::masked(s),
                _ => format!("[REDACTED:{}]", f.kind.label()),
            }
        })))
    }
}

/// Every string of `v` (not the object keys), in the order
/// [`each_string`] visits them.
pub(super) fn strings<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    use serde_json::Value as V;
    match v {
        V::String(s) => out.push(s),
        V::Array(a) => a.iter().for_each(|x| strings(x, out)),
        V::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// Calls `f` on every string of `v` (not the object keys) with its JSON
/// pointer; `f` returns a replacement, if any. Whether any changed.
pub(super) fn each_string<E>(
    v: &mut serde_json::Value,
    at: &mut String,
    f: &mut impl FnMut(&str, &str) -> Result<Option<String>, E>,
) -> Result<bool, E> {
    use serde_json::Value as V;
    let mut changed = false;
    match v {
        V::String(s) => {
            let here = if at.is_empty() { "/" } else { at.as_str() };
            if let Some(new) = f(s, here)? {
                *s = new;
                changed = true;
            }
        }
        V::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                let len = at.len();
                at.push('/');
                at.push_str(&i.to_string());
                changed |= each_string(x, at, f)?;
                at.truncate(len);
            }
        }
        V::Object(o) => {
            for (k, x) in o.iter_mut() {
                let len = at.len();
                at.push('/');
                at.push_str(&k.replace('~', "~0").replace('/', "~1"));
                changed |= each_string(x, at, f)?;
                at.truncate(len);
            }
        }
        _ => {}
    }
    Ok(changed)
}

/// An answer with its text rewritten by `f` (given each text and where it
/// stands, returning a replacement, if any): each string of a JSON answer
/// (which is written again only if one changed, so it stays JSON), or the
/// whole of another UTF-8 answer (`body`); an answer that is not UTF-8
/// comes back as it was.
pub(super) fn rewrite<E>(
    content: Vec<u8>,
    f: &mut impl FnMut(&str, &str) -> Result<Option<String>, E>,
) -> Result<Vec<u8>, E> {
    Ok(
        if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&content) {
            if each_string(&mut v, &mut String::new(), f)? {
                serde_json::to_vec(&v).unwrap_or(content)
            } else {
                content
            }
        } else if let Ok(text) = std::str::from_utf8(&content) {
            match f(text, "body")? {
                Some(new) => new.into_bytes(),
                None => content,
            }
        } else {
            content
        },
    )
}

/// Runs the detectors the filters turn on over `content`.
pub(super) fn check(content: Vec<u8>, g: &Guards) -> Result<Checked, Refusal> {
    let mut pass = Pass {
        guards: g,
        stage: Stage::InspectOutput,
        replaced: 0,
        noted: Vec::new(),
        count: 0,
    };
    if g.pii == Guard::Off && g.secrets == Guard::Off {
        return Ok(Checked {
            content,
            replaced: 0,
            noted: Vec::new(),
        });
    }
    let content = rewrite(content, &mut |t, at| pass.text(t, at))?;
    if pass.count > pass.noted.len() {
        tracing::debug!(
            findings = pass.count,
            listed = pass.noted.len(),
            "more findings than the audit event lists"
        );
    }
    Ok(Checked {
        content,
        replaced: pass.replaced,
        noted: pass.noted,
    })
}

/// Stage 3: credentials in the argument strings (the policy's rules), as
/// `g.secrets` (the tool's `filters.argument_secrets`) says; returns
/// whether `args` changed and what was found.
pub fn arguments(args: &mut serde_json::Value, g: &Guards) -> Result<(bool, Vec<Noted>), Refusal> {
    if g.secrets == Guard::Off {
        return Ok((false, Vec::new()));
    }
    let mut pass = Pass {
        guards: g,
        stage: Stage::InspectInput,
        replaced: 0,
        noted: Vec::new(),
        count: 0,
    };
    let changed = each_string(args, &mut String::new(), &mut |t, at| pass.text(t, at))?;
    Ok((changed, pass.noted))
}

#[cfg(test)]
mod tests;
