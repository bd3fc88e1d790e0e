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

/// Projects call arguments onto the record type [`schema_for`] derives
/// from the same input schema, so that Cedar parses them against it: only
/// the properties the schema carries, integers as `Long`, arrays as sets.
/// A value of another shape (which schema validation already refused) is
/// left out.
pub fn arguments(input_schema: &Value, args: &Value) -> Value {
    project_record(input_schema, args, 0).unwrap_or_else(|| Value::Object(Default::default()))
}

fn project(schema: &Value, v: &Value, depth: usize) -> Option<Value> {
    if depth > MAX_DEPTH {
        return None;
    }
    match schema.get("type").and_then(Value::as_str)? {
        "string" => v.as_str().map(|s| Value::String(s.to_owned())),
        "integer" => v
            .as_i64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            })
            .map(Value::from),
        "boolean" => v.as_bool().map(Value::Bool),
        "array" => {
            let items = schema.get("items")?;
            let out: Option<Vec<Value>> = v
                .as_array()?
                .iter()
                .map(|x| project(items, x, depth + 1))
                .collect();
            out.map(Value::Array)
        }
        "object" => project_record(schema, v, depth + 1),
        _ => None,
    }
}

fn project_record(schema: &Value, v: &Value, depth: usize) -> Option<Value> {
    let obj = v.as_object()?;
    let mut out = serde_json::Map::new();
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            if quote(name).is_none() || ty(sub, depth).is_none() {
                continue;
            }
            if let Some(x) = obj.get(name).and_then(|x| project(sub, x, depth)) {
                out.insert(name.clone(), x);
            }
        }
    }
    Some(Value::Object(out))
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn arguments_follow_the_derived_record_type() {
        let schema = json!({
            "type": "object",
            "properties": {
                "to": {"type": "string"},
                "n": {"type": "integer"},
                "ratio": {"type": "number"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "opts": {"type": "object", "properties": {"dry": {"type": "boolean"}}},
                "bad name!": {"type": "string"}
            }
        });
        let args = json!({
            "to": "a@example.com", "n": 3.0, "ratio": 0.5, "tags": ["x", "y"],
            "opts": {"dry": true, "extra": 1}, "bad name!": "z", "unknown": 1
        });
        assert_eq!(
            arguments(&schema, &args),
            json!({"to": "a@example.com", "n": 3, "tags": ["x", "y"], "opts": {"dry": true}})
        );
        assert_eq!(arguments(&schema, &json!("not an object")), json!({}));
    }
}
