//! Stages 3 and 8: inspection of what goes in and what comes out.
//!
//! Input: prompt-injection detection on argument strings is a later issue;
//! [`InputInspector`] is the seam it plugs into, and [`PassThrough`] is what
//! runs until then. It refuses nothing; `Authorize`'s `checks` still list
//! the stage as passed (the README names it a seam).
//!
//! Output: every secret value the sidecar injected into this call is
//! removed from what the upstream returned, as raw text and in each
//! encoding [`scrub`] knows, so that an upstream echoing a header back
//! cannot hand the agent a credential. (Pattern-based secret and PII
//! redaction is a later issue; it plugs in beside this.)

mod scrub;

use super::Denial;
use super::catalog::ToolEntry;
use super::execute::secrets::Secret;

/// What replaces a redacted value.
pub const REDACTED: &str = "[REDACTED]";

/// Inspects a call's arguments before authorization.
pub trait InputInspector: Send + Sync + std::fmt::Debug {
    /// Refuses arguments that carry an attack.
    fn inspect(&self, tool: &ToolEntry, args: &serde_json::Value) -> Result<(), Denial>;
}

/// Refuses nothing (until injection detection lands).
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThrough;

impl InputInspector for PassThrough {
    fn inspect(&self, _tool: &ToolEntry, _args: &serde_json::Value) -> Result<(), Denial> {
        Ok(())
    }
}

/// Removes every injected secret value, in each encoding [`scrub`] knows,
/// from `content`; returns the content and how many values were removed.
pub fn redact_secrets(content: Vec<u8>, secrets: &[Secret]) -> (Vec<u8>, u32) {
    let patterns: Vec<scrub::Pattern> = secrets
        .iter()
        .filter(|s| !s.expose().is_empty())
        .flat_map(|s| scrub::patterns(s.expose()))
        .collect();
    if patterns.is_empty() {
        return (content, 0);
    }
    let (content, in_strings) =
        scrub::replace_in_json_strings(&content, &patterns, REDACTED.as_bytes());
    let (content, elsewhere) = scrub::replace(&content, &patterns, REDACTED.as_bytes());
    (content, in_strings + elsewhere)
}

#[cfg(test)]
mod tests;
