//! The Cedar schema Warden defines for agents, tools and the call context.
//!
//! Entities: `Warden::Agent` (in `Warden::AgentType`, with `agent_type`,
//! `owner`, `environment`), `Warden::Tool` (with `risk`). One action per tool,
//! named like the tool (`Warden::Action::"send_email"`), whose context is
//! `{ time: { unix, hour, weekday }, user?: String, user_verified: Bool,
//! tier?: String, groups?: Set<String>, email?: String, arguments: {…} }`
//! (`user_verified` when an identity provider proved the user; `tier`,
//! `groups` and `email` then come from the provider's token as the control
//! plane maps them, `tier` otherwise from what the agent stated). The `arguments` record is derived from the tool's
//! input JSON Schema: `string` → `String`, `integer` → `Long`, `boolean` →
//! `Bool`, `array` → `Set<…>`, `object` with `properties` → a record
//! (required properties required, others optional). The properties of an
//! object are its own and those its `allOf`, `anyOf` and `oneOf` branches
//! and local `$ref`s declare (required only where validation guarantees
//! them: its own `required` and those of `allOf` branches). Properties of
//! other types, or declared with types that disagree, are left out, so a
//! rule that reads them fails validation.

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

/// Subschemas visited to gather one object's properties, at most: a
/// schema that needs more is refused when the policy is validated
/// ([`too_complex`]), so the work per call is bounded too.
const MEMBER_BUDGET: usize = 1024;

/// The target of a local `$ref` (`#/…` into `root`).
fn target<'a>(root: &'a Value, schema: &Value) -> Option<&'a Value> {
    let r = schema.get("$ref").and_then(Value::as_str)?;
    root.pointer(r.strip_prefix('#')?)
}

/// The schema that gives `schema` its `type`: itself, or the target of
/// its local `$ref` (followed as far as needed).
fn typed<'a>(root: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..MAX_DEPTH {
        if schema.get("type").is_some() {
            return schema;
        }
        match target(root, schema) {
            Some(t) => schema = t,
            None => return schema,
        }
    }
    schema
}

/// A property an object schema declares, with every schema it is declared
/// with, and whether validation guarantees it is there.
#[derive(Default)]
struct Member<'a> {
    schemas: Vec<&'a Value>,
    required: bool,
}

/// The properties of an object schema: its own, and those of its local
/// `$ref`, its `allOf`, `anyOf` and `oneOf` branches, `then`, `else` and
/// `dependentSchemas`. Only its own `required` and those of what always
/// applies (`$ref`, `allOf`) make one required. Returns false when the
/// budget ran out (the gathering is incomplete).
fn members<'a>(
    root: &'a Value,
    schema: &'a Value,
    always: bool,
    depth: usize,
    budget: &mut usize,
    out: &mut std::collections::BTreeMap<&'a str, Member<'a>>,
) -> bool {
    if depth > MAX_DEPTH {
        return true;
    }
    let Some(left) = budget.checked_sub(1) else {
        return false;
    };
    *budget = left;
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            out.entry(name.as_str()).or_default().schemas.push(sub);
        }
    }
    let mut complete = true;
    if let Some(t) = target(root, schema) {
        complete &= members(root, t, always, depth + 1, budget, out);
    }
    let branches = |key: &str| -> Vec<&'a Value> {
        match schema.get(key) {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(Value::Object(m)) if key == "dependentSchemas" => m.values().collect(),
            Some(v @ Value::Object(_)) => vec![v],
            _ => Vec::new(),
        }
    };
    for (key, always_there) in [
        ("allOf", always),
        ("anyOf", false),
        ("oneOf", false),
        ("then", false),
        ("else", false),
        ("dependentSchemas", false),
    ] {
        for branch in branches(key) {
            complete &= members(root, branch, always_there, depth + 1, budget, out);
        }
    }
    if always {
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(m) = name.as_str().and_then(|n| out.get_mut(n)) {
                m.required = true;
            }
        }
    }
    complete
}

/// Whether gathering the properties of some object of `schema` needs more
/// than [`MEMBER_BUDGET`] subschemas (such a schema is refused).
pub fn too_complex(schema: &Value) -> bool {
    let mut complex = false;
    super::schema::walk(schema, 0, &mut |o| {
        let mut budget = MEMBER_BUDGET;
        let mut all = std::collections::BTreeMap::new();
        let v = Value::Object(o.clone());
        complex |= !members(schema, &v, true, 0, &mut budget, &mut all);
    });
    complex
}

/// The Cedar type of a property: the one every declaration of it agrees
/// on, if they do.
fn member_ty(root: &Value, m: &Member<'_>, depth: usize) -> Option<String> {
    let mut types = m.schemas.iter().map(|s| ty(root, s, depth));
    let first = types.next()??;
    types.all(|t| t.as_ref() == Some(&first)).then_some(first)
}

fn ty(root: &Value, schema: &Value, depth: usize) -> Option<String> {
    if depth > MAX_DEPTH {
        return None;
    }
    let schema = typed(root, schema);
    match schema.get("type").and_then(Value::as_str)? {
        "string" => Some("String".into()),
        "integer" => Some("Long".into()),
        "boolean" => Some("Bool".into()),
        "array" => ty(root, schema.get("items")?, depth + 1).map(|t| format!("Set<{t}>")),
        "object" => Some(record(root, schema, depth + 1)),
        _ => None,
    }
}

fn record(root: &Value, schema: &Value, depth: usize) -> String {
    let mut all = std::collections::BTreeMap::new();
    let mut budget = MEMBER_BUDGET;
    members(root, schema, true, depth, &mut budget, &mut all);
    let mut out = String::from("{");
    let mut first = true;
    for (name, m) in &all {
        let (Some(q), Some(t)) = (quote(name), member_ty(root, m, depth)) else {
            continue;
        };
        let opt = if m.required { "" } else { "?" };
        if !first {
            out.push_str(", ");
        }
        first = false;
        let _ = write!(out, "{q}{opt}: {t}");
    }
    out.push('}');
    out
}

/// Projects call arguments onto the record type [`schema_for`] derives
/// from the same input schema, so that Cedar evaluates them against it:
/// integers as `Long`, arrays as sets, records. Properties whose type the
/// schema leaves out of Cedar (numbers, untyped values, or declarations
/// that disagree) are left out here too. A value the policy would not see
/// faithfully (an integer beyond `Long`) is an error: the call must be
/// refused, not decided without it.
pub fn arguments(input_schema: &Value, args: &Value) -> Result<Value, String> {
    project_record(input_schema, input_schema, args, 0, "")
}

fn project(
    root: &Value,
    schema: &Value,
    v: &Value,
    depth: usize,
    at: &str,
) -> Result<Option<Value>, String> {
    if depth > MAX_DEPTH {
        return Ok(None);
    }
    let schema = typed(root, schema);
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
                match project(root, items, x, depth + 1, &format!("{at}/{i}"))? {
                    Some(p) => out.push(p),
                    None => return Ok(None),
                }
            }
            Some(Value::Array(out))
        }
        "object" => Some(project_record(root, schema, v, depth + 1, at)?),
        _ => None,
    })
}

fn project_record(
    root: &Value,
    schema: &Value,
    v: &Value,
    depth: usize,
    at: &str,
) -> Result<Value, String> {
    let mut out = serde_json::Map::new();
    let Some(obj) = v.as_object() else {
        return Ok(Value::Object(out));
    };
    let mut all = std::collections::BTreeMap::new();
    let mut budget = MEMBER_BUDGET;
    members(root, schema, true, depth, &mut budget, &mut all);
    for (name, m) in &all {
        if quote(name).is_none() || member_ty(root, m, depth).is_none() {
            continue;
        }
        if let Some(x) = obj.get(*name)
            && let Some(p) = project(root, m.schemas[0], x, depth, &format!("{at}/{name}"))?
        {
            out.insert((*name).to_owned(), p);
        }
    }
    Ok(Value::Object(out))
}

/// Property names the rules cannot name (they need no escaping in the
/// schema syntax), anywhere in an input schema.
pub fn unnameable_properties(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    super::schema::walk(schema, 0, &mut |o| {
        if let Some(props) = o.get("properties").and_then(Value::as_object) {
            out.extend(props.keys().filter(|n| quote(n).is_none()).cloned());
        }
    });
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
        let args = record(&t.input_schema, &t.input_schema, 0);
        let _ = writeln!(
            s,
            "  action \"{}\" appliesTo {{ principal: [Agent], resource: [Tool], context: \
             {{ \"time\": Time, \"user\"?: String, \"user_verified\": Bool, \"tier\"?: String, \
             \"groups\"?: Set<String>, \"email\"?: String, \"arguments\": {args} }} }};",
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

    #[test]
    fn properties_of_branches_and_refs_are_seen_by_the_rules() {
        let schema = json!({
            "type": "object",
            "$defs": {"amount": {"type": "integer"}},
            "properties": {"kind": {"type": "string"}},
            "required": ["kind"],
            "allOf": [{"properties": {"total": {"$ref": "#/$defs/amount"}}, "required": ["total"]}],
            "anyOf": [
                {"properties": {"to": {"type": "string"}, "clash": {"type": "string"}}},
                {"properties": {"phone": {"type": "string"}, "clash": {"type": "integer"}}}
            ]
        });
        let r = record(&schema, &schema, 0);
        assert_eq!(
            r,
            r#"{"kind": String, "phone"?: String, "to"?: String, "total": Long}"#
        );
        assert_eq!(
            arguments(
                &schema,
                &json!({"kind": "k", "total": 5, "to": "x", "clash": 1})
            )
            .unwrap(),
            json!({"kind": "k", "total": 5, "to": "x"})
        );
        let bad =
            json!({"type": "object", "anyOf": [{"properties": {"bad name!": {"type": "string"}}}]});
        assert_eq!(unnameable_properties(&bad), ["bad name!"]);
    }
}
