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
/// from the same input schema, so that Cedar evaluates them against it:
/// integers as `Long`, arrays as sets, records. Properties whose type the
/// schema leaves out of Cedar (numbers, untyped values) are left out here
/// too. A value the policy would not see faithfully (an integer beyond
/// `Long`) is an error: the call must be refused, not decided without it.
pub fn arguments(input_schema: &Value, args: &Value) -> Result<Value, String> {
    project_record(input_schema, args, 0, "")
}

fn project(schema: &Value, v: &Value, depth: usize, at: &str) -> Result<Option<Value>, String> {
    if depth > MAX_DEPTH {
        return Ok(None);
    }
    let Some(ty) = schema.get("type").and_then(Value::as_str) else {
        return Ok(None);
    };
    let lossy = || {
        Err(format!(
            "{at}: the value cannot be represented for the policy"
        ))
    };
    Ok(match ty {
        "string" => v.as_str().map(|s| Value::String(s.to_owned())),
        "integer" => match v.as_i64().or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }) {
            Some(i) => Some(Value::from(i)),
            None if v.is_number() => return lossy(),
            None => None,
        },
        "boolean" => v.as_bool().map(Value::Bool),
        "array" => {
            let (Some(items), Some(a)) = (schema.get("items"), v.as_array()) else {
                return Ok(None);
            };
            let mut out = Vec::with_capacity(a.len());
            for (i, x) in a.iter().enumerate() {
                match project(items, x, depth + 1, &format!("{at}/{i}"))? {
                    Some(p) => out.push(p),
                    None => return Ok(None),
                }
            }
            Some(Value::Array(out))
        }
        "object" => Some(project_record(schema, v, depth + 1, at)?),
        _ => None,
    })
}

fn project_record(schema: &Value, v: &Value, depth: usize, at: &str) -> Result<Value, String> {
    let mut out = serde_json::Map::new();
    let Some(obj) = v.as_object() else {
        return Ok(Value::Object(out));
    };
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            if quote(name).is_none() || ty(sub, depth).is_none() {
                continue;
            }
            if let Some(x) = obj.get(name)
                && let Some(p) = project(sub, x, depth, &format!("{at}/{name}"))?
            {
                out.insert(name.clone(), p);
            }
        }
    }
    Ok(Value::Object(out))
}

/// Property names the rules cannot name (they need no escaping in the
/// schema syntax), anywhere in an input schema.
pub fn unnameable_properties(schema: &Value) -> Vec<String> {
    fn walk(v: &Value, depth: usize, out: &mut Vec<String>) {
        if depth > MAX_DEPTH {
            return;
        }
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (name, sub) in props {
                if quote(name).is_none() {
                    out.push(name.clone());
                }
                walk(sub, depth + 1, out);
            }
        }
        if let Some(items) = v.get("items") {
            walk(items, depth + 1, out);
        }
    }
    let mut out = Vec::new();
    walk(schema, 0, &mut out);
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
            arguments(&schema, &args).unwrap(),
            json!({"to": "a@example.com", "n": 3, "tags": ["x", "y"], "opts": {"dry": true}})
        );
        assert_eq!(
            arguments(&schema, &json!("not an object")).unwrap(),
            json!({})
        );
        // An integer the policy cannot see faithfully is an error, not a gap.
        let e = arguments(&schema, &json!({"n": 18446744073709551615u64})).unwrap_err();
        assert!(e.starts_with("/n:"), "{e}");
        assert!(arguments(&schema, &json!({"n": 1e20})).is_err());
        assert_eq!(unnameable_properties(&schema), ["bad name!"]);
    }
}
