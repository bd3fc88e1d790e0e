//! The Cedar schema Warden defines for agents, tools and the call context.
//!
//! Entities: `Warden::Agent` (in `Warden::AgentType`, with `agent_type`,
//! `owner`, `environment`), `Warden::Tool` (with `risk`). One action per tool,
//! named like the tool (`Warden::Action::"send_email"`), whose context is
//! `{ time: { unix, hour, weekday }, user?: String, tier?: String,
//! arguments: {…} }`. The `arguments` record is derived from the tool's
//! input JSON Schema: `string` → `String`, `integer` → `Long`, `boolean` →
//! `Bool`, `array` → `Set<…>`, `object` with `properties` → a record
//! (required properties required, others optional). Properties of other
//! types are left out, so a rule that reads them fails validation.

use std::fmt::Write;

use serde_json::Value;

use super::Tool;

/// Deepest nesting of argument records carried into the schema.
const MAX_DEPTH: usize = 8;

fn quote(s: &str) -> Option<String> {
    // Keep to names that need no escaping in the schema syntax.
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-.:/ @".contains(c))
        .then(|| format!("\"{s}\""))
}

fn ty(schema: &Value, depth: usize) -> Option<String> {
    if depth > MAX_DEPTH {
        return None;
    }
    match schema.get("type").and_then(Value::as_str)? {
        "string" => Some("String".into()),
        "integer" => Some("Long".into()),
        "boolean" => Some("Bool".into()),
        "array" => ty(schema.get("items")?, depth + 1).map(|t| format!("Set<{t}>")),
        "object" => Some(record(schema, depth + 1)),
        _ => None,
    }
}

fn record(schema: &Value, depth: usize) -> String {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = String::from("{");
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        let mut first = true;
        for (name, sub) in props {
            let (Some(q), Some(t)) = (quote(name), ty(sub, depth)) else {
                continue;
            };
            let opt = if required.contains(&name.as_str()) {
                ""
            } else {
                "?"
            };
            if !first {
                out.push_str(", ");
            }
            first = false;
            let _ = write!(out, "{q}{opt}: {t}");
        }
    }
    out.push('}');
    out
}

/// The Cedar schema (Cedar syntax) for a catalog.
pub fn schema_for(tools: &[Tool]) -> String {
    let mut s = String::from(
        "namespace Warden {\n\
         \x20 type Time = { \"unix\": Long, \"hour\": Long, \"weekday\": Long };\n\
         \x20 entity AgentType;\n\
         \x20 entity Agent in [AgentType] = { \"agent_type\": String, \"owner\": String, \"environment\": String };\n\
         \x20 entity Tool = { \"risk\": String };\n",
    );
    for t in tools {
        let args = record(&t.input_schema, 0);
        let _ = writeln!(
            s,
            "  action \"{}\" appliesTo {{ principal: [Agent], resource: [Tool], context: \
             {{ \"time\": Time, \"user\"?: String, \"tier\"?: String, \"arguments\": {args} }} }};",
            t.name
        );
    }
    s.push_str("}\n");
    s
}
