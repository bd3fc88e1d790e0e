//! Values that must not be shown or kept: those the tool's schema marks
//! sensitive (`writeOnly: true` or `x-sensitive: true`) and strings holding
//! one of the tool's resolved secrets. Used for the arguments approvers see
//! (stage 6) and for those the audit event keeps (stage 9).

use warden_shared::policy::Policy;

use super::catalog::ToolEntry;
use super::execute::secrets;

/// What a removed value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// The tool's secrets as resolved now (empty ones left out).
fn tool_secrets(tool: &ToolEntry, policy: &Policy) -> Vec<String> {
    tool.spec
        .secrets
        .iter()
        .filter_map(|s| policy.document.secrets.get(s))
        .filter_map(|r| secrets::resolve(r).ok())
        .map(|s| s.expose().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `args` with every string holding one of the tool's secrets replaced,
/// and, with `by_schema`, every value the schema marks sensitive.
pub fn without_sensitive(
    tool: &ToolEntry,
    policy: &Policy,
    args: &serde_json::Value,
    by_schema: bool,
) -> serde_json::Value {
    let secrets = tool_secrets(tool, policy);
    let mut shown = args.clone();
    let schema = by_schema.then_some(&tool.spec.input_schema);
    redact(&mut shown, schema, &secrets);
    shown
}

fn redact(v: &mut serde_json::Value, schema: Option<&serde_json::Value>, secrets: &[String]) {
    use serde_json::Value;
    let flag = |k: &str| schema.and_then(|s| s.get(k)) == Some(&Value::Bool(true));
    if flag("writeOnly") || flag("x-sensitive") {
        *v = Value::String(REDACTED.to_owned());
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                let sub = schema
                    .and_then(|s| s.get("properties"))
                    .and_then(|p| p.get(k))
                    .or_else(|| schema.and_then(|s| s.get("additionalProperties")));
                redact(x, sub, secrets);
            }
        }
        Value::Array(a) => {
            for x in a {
                redact(x, schema.and_then(|s| s.get("items")), secrets);
            }
        }
        Value::String(s) if secrets.iter().any(|secret| s.contains(secret.as_str())) => {
            *s = REDACTED.to_owned();
        }
        _ => {}
    }
}
