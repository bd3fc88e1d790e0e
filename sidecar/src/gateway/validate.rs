//! Stage 2: the arguments are a bounded JSON object that matches the tool's
//! input schema. Sizes are checked before anything is parsed, and nesting
//! depth by a scan of the bytes, so hostile input costs little.

use warden_shared::refusal::Reason;

use std::sync::Arc;

use super::catalog::ToolEntry;
use super::{Refusal, Stage};
use crate::state::held::{Held, HeldPolicy};

/// The argument document's size cap unless the tool sets `max_argument_bytes`.
pub const DEFAULT_MAX_ARGUMENT_BYTES: usize = 64 * 1024;
/// Deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: usize = 32;
/// Schema violations reported to the agent, at most.
const MAX_REPORTED: usize = 3;

/// Longest trace id accepted.
pub const MAX_TRACE_ID: usize = 128;

fn refuse(reason: Reason, message: impl Into<String>) -> Refusal {
    Refusal::at(Stage::Validate, reason, message)
}

/// The agent's trace id: at most [`MAX_TRACE_ID`] visible ASCII characters.
pub fn trace_id(id: &str) -> Result<(), Refusal> {
    if id.len() > MAX_TRACE_ID || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(refuse(
            Reason::InvalidArgument,
            format!("trace_id must be at most {MAX_TRACE_ID} visible ASCII characters"),
        ));
    }
    Ok(())
}

/// The tool named `name` in the policy `held`, with that policy.
pub fn tool(held: &Held, name: &str) -> Result<(Arc<HeldPolicy>, Arc<ToolEntry>), Refusal> {
    let unknown = || refuse(Reason::ToolUnknown, "no such tool in the policy in force");
    let policy = held.policy.clone().ok_or_else(unknown)?;
    let tool = policy.catalog.get(name).cloned().ok_or_else(unknown)?;
    Ok((policy, tool))
}

/// The deepest nesting in `text`, scanning at most until it passes `max`.
fn depth_exceeds(text: &str, max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Checks `text` against `tool`; returns the parsed arguments. An empty
/// text is the empty object.
pub fn arguments(tool: &ToolEntry, text: &str) -> Result<serde_json::Value, Refusal> {
    let max = tool
        .spec
        .limits
        .max_argument_bytes
        .map_or(DEFAULT_MAX_ARGUMENT_BYTES, |m| m as usize);
    if text.len() > max {
        return Err(refuse(
            Reason::ArgumentsTooLarge,
            format!(
                "arguments are {} bytes; {} accepts at most {max}",
                text.len(),
                tool.spec.name
            ),
        )
        .rule("max_argument_bytes"));
    }
    if depth_exceeds(text, MAX_DEPTH) {
        return Err(refuse(
            Reason::ArgumentsTooDeep,
            format!("arguments nest deeper than {MAX_DEPTH} levels"),
        ));
    }
    let text = if text.trim().is_empty() { "{}" } else { text };
    let args: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        // serde_json's message names a position, never the content.
        refuse(
            Reason::ArgumentsNotJson,
            format!("arguments are not JSON: {e}"),
        )
    })?;
    if !args.is_object() {
        return Err(refuse(
            Reason::ArgumentsNotJson,
            "arguments must be a JSON object",
        ));
    }
    // A URL placeholder must not become a path segment of its own making.
    if let Some(u) = tool.spec.upstream.as_ref().filter(|u| u.kind == "http") {
        for name in u.placeholders() {
            let v = match args.get(name) {
                Some(serde_json::Value::String(s)) => s.as_str(),
                _ => continue,
            };
            if v.is_empty() || v == "." || v == ".." {
                return Err(refuse(
                    Reason::ArgumentsInvalid,
                    format!("/{name}: may not be empty, \".\" or \"..\" (it goes into the URL)"),
                )
                .rule("url placeholder"));
            }
        }
    }
    let errors = tool.schema.errors(&args, MAX_REPORTED);
    if !errors.is_empty() {
        return Err(refuse(
            Reason::ArgumentsInvalid,
            format!(
                "arguments do not match the input schema of {}: {}",
                tool.spec.name,
                errors.join("; ")
            ),
        )
        .rule("input_schema"));
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_measured_outside_strings() {
        assert!(!depth_exceeds(r#"{"a": [1, {"b": 2}]}"#, 3));
        assert!(depth_exceeds(r#"{"a": [1, {"b": [2]}]}"#, 3));
        assert!(!depth_exceeds(r#"{"a": "[[[[[[[[\"[[[["}"#, 1));
        assert!(depth_exceeds(&"[".repeat(33), MAX_DEPTH));
        assert!(!depth_exceeds(&"[".repeat(32), MAX_DEPTH));
    }
}
