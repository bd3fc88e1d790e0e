//! Tool input schemas as Warden enforces them: what the policy's rules see
//! of the arguments must be what the upstream receives, so an object may
//! carry only the properties its schema declares.
//!
//! A schema without in-place applicators (`allOf`, `anyOf`, `oneOf`,
//! `not`, `if`/`then`/`else`, `$ref`, `dependentSchemas`) is closed before
//! it is compiled: every object schema that does not say otherwise gets
//! `additionalProperties: false` ([`closed`]).
//!
//! Closing each branch of a combinator that way would refuse valid input
//! (`allOf` of two branches, each declaring one property, would accept no
//! object at all), so a schema with applicators is compiled as written and
//! checked in two steps: it must validate, and then every property of
//! every object must be one that a schema which applied to that object —
//! counting only the branches the value matched — declares (`properties`,
//! `patternProperties`) or lets in (`additionalProperties`,
//! `unevaluatedProperties`). These are the annotations JSON Schema itself
//! collects for `unevaluatedProperties`, read from the validator's
//! evaluation. An object schema there that declares no property at all
//! (`{"type": "object"}`) is closed too, as above.

use std::collections::{HashMap, HashSet};

use jsonschema::OutputUnit;
use serde_json::Value;

/// Deepest schema nesting walked.
const MAX_DEPTH: usize = 64;
/// Keywords that apply subschemas to the same instance location.
const IN_PLACE: [&str; 9] = [
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "$ref",
    "dependentSchemas",
];
/// Keywords whose annotations name the properties they evaluated.
const PROPERTY_KEYWORDS: [&str; 4] = [
    "properties",
    "patternProperties",
    "additionalProperties",
    "unevaluatedProperties",
];

/// A tool's input schema, compiled for enforcement.
#[derive(Debug)]
pub struct InputSchema {
    validator: jsonschema::Validator,
    /// Has in-place applicators: checked by evaluation.
    applicators: bool,
}

/// How a keyword holds subschemas.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Holds {
    /// A map of names to subschemas (`properties`, `$defs`, …).
    Map,
    /// One subschema, or an array of them (`allOf`, `not`, `items`, …).
    Some,
}

fn holds(keyword: &str) -> Option<Holds> {
    match keyword {
        "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas" => {
            Some(Holds::Map)
        }
        "allOf"
        | "anyOf"
        | "oneOf"
        | "not"
        | "if"
        | "then"
        | "else"
        | "items"
        | "prefixItems"
        | "additionalItems"
        | "unevaluatedItems"
        | "contains"
        | "propertyNames"
        | "additionalProperties"
        | "unevaluatedProperties" => Some(Holds::Some),
        _ => None,
    }
}

/// The subschemas a keyword's value holds.
fn held(h: Holds, v: &Value) -> Vec<&Value> {
    match (h, v) {
        (Holds::Map, Value::Object(m)) => m.values().collect(),
        (Holds::Some, Value::Array(a)) => a.iter().collect(),
        (Holds::Some, v) => vec![v],
        (Holds::Map, _) => Vec::new(),
    }
}

/// Calls `f` on `v` and every subschema in it, depth first, following
/// only the keywords that hold schemas (so a property named like a keyword
/// is not taken for one).
pub(crate) fn walk(v: &Value, depth: usize, f: &mut impl FnMut(&serde_json::Map<String, Value>)) {
    if depth > MAX_DEPTH {
        return;
    }
    let Some(o) = v.as_object() else { return };
    f(o);
    for (k, sub) in o {
        if let Some(h) = holds(k) {
            for s in held(h, sub) {
                walk(s, depth + 1, f);
            }
        }
    }
}

/// [`walk`], changing the schemas.
fn walk_mut(v: &mut Value, depth: usize, f: &mut impl FnMut(&mut serde_json::Map<String, Value>)) {
    if depth > MAX_DEPTH {
        return;
    }
    let Some(o) = v.as_object_mut() else { return };
    f(o);
    for (k, sub) in o.iter_mut() {
        match (holds(k), sub) {
            (Some(Holds::Map), Value::Object(m)) => {
                m.values_mut().for_each(|s| walk_mut(s, depth + 1, f));
            }
            (Some(Holds::Some), Value::Array(a)) => {
                a.iter_mut().for_each(|s| walk_mut(s, depth + 1, f));
            }
            (Some(Holds::Some), s) => walk_mut(s, depth + 1, f),
            _ => {}
        }
    }
}

fn has_in_place(schema: &Value) -> bool {
    let mut found = false;
    walk(schema, 0, &mut |o| {
        found |= IN_PLACE.iter().any(|k| o.contains_key(*k));
    });
    found
}

fn is_object_schema(o: &serde_json::Map<String, Value>) -> bool {
    let typed = match o.get("type") {
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
        _ => false,
    };
    typed || o.contains_key("properties")
}

/// `schema` with every object schema that does not say otherwise closed
/// (`additionalProperties: false`), wherever it stands (`properties`,
/// `items`, `prefixItems`, `additionalProperties`, `patternProperties`,
/// `contains`, …). A schema that wants open objects says
/// `additionalProperties: true` (or gives a schema for them).
pub fn closed(schema: &Value) -> Value {
    let mut s = schema.clone();
    walk_mut(&mut s, 0, &mut |o| {
        if is_object_schema(o) && !o.contains_key("additionalProperties") {
            o.insert("additionalProperties".into(), Value::Bool(false));
        }
    });
    s
}

/// For the evaluation check: every object schema declares its properties,
/// if only as `properties: {}` (which validates nothing), so that the
/// objects it applies to are checked.
fn declaring(schema: &Value) -> Value {
    let mut s = schema.clone();
    let mut declare = |o: &mut serde_json::Map<String, Value>| {
        if is_object_schema(o) && !PROPERTY_KEYWORDS.iter().any(|k| o.contains_key(*k)) {
            o.insert("properties".into(), Value::Object(serde_json::Map::new()));
        }
    };
    walk_mut(&mut s, 0, &mut declare);
    // A local `$ref` may point anywhere in the document, also where no
    // keyword leads (`#/x-shared/…`): its targets are declared too.
    let mut targets = Vec::new();
    walk(&s, 0, &mut |o| {
        if let Some(r) = o.get("$ref").and_then(Value::as_str)
            && let Some(p) = r.strip_prefix('#')
        {
            targets.push(p.to_owned());
        }
    });
    for p in targets {
        if let Some(target) = s.pointer_mut(&p) {
            walk_mut(target, 0, &mut declare);
        }
    }
    s
}
/// JSON Pointer of a child location.
fn pointer(parent: &str, key: &str) -> String {
    format!("{parent}/{}", key.replace('~', "~0").replace('/', "~1"))
}

impl InputSchema {
    /// Compiles `schema` the one way Warden does everywhere (the control
    /// plane validating a document, the sidecar enforcing it): formats are
    /// asserted (`format: email` must be an address), nothing is fetched
    /// (a remote `$ref` is an error).
    pub fn compile(schema: &Value) -> Result<Self, String> {
        let applicators = has_in_place(schema);
        let built = if applicators {
            declaring(schema)
        } else {
            closed(schema)
        };
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&built)
            .map_err(|e| e.to_string())?;
        Ok(Self {
            validator,
            applicators,
        })
    }

    /// What is wrong with `args`, at most `max` findings; empty: nothing.
    /// Messages name the place and the rule, never a value.
    pub fn errors(&self, args: &Value, max: usize) -> Vec<String> {
        let at = |p: &str| {
            if p.is_empty() {
                "/".to_owned()
            } else {
                p.to_owned()
            }
        };
        let invalid: Vec<String> = self
            .validator
            .iter_errors(args)
            .take(max)
            .map(|e| format!("{}: {}", at(e.instance_path().as_str()), e.masked()))
            .collect();
        if !invalid.is_empty() || !self.applicators {
            return invalid;
        }
        let evaluation = self.validator.evaluate(args);
        let mut declared = HashMap::new();
        collect(evaluation.root(), &mut declared);
        let mut out = Vec::new();
        undeclared(args, "", &declared, max, &mut out);
        out
    }
}

/// What the schemas that applied at one instance location say of its
/// properties.
#[derive(Debug, Default)]
struct Declared<'a> {
    names: HashSet<&'a str>,
    /// An `unevaluatedProperties` schema applied (and held): every
    /// property was evaluated by something.
    open: bool,
}

/// Gathers, from the units of a valid evaluation that held (a unit that
/// failed drops what its subschemas said), the property names each
/// property keyword evaluated, by instance location. (This validator
/// annotates `unevaluatedProperties` with nothing, so a unit of it that
/// held opens its location.)
fn collect<'a>(unit: OutputUnit<'a>, declared: &mut HashMap<&'a str, Declared<'a>>) {
    for child in unit.children() {
        if !child.valid() {
            continue;
        }
        let keyword = last_keyword(child.evaluation_path().as_str());
        if let Some(keyword) = keyword.filter(|k| PROPERTY_KEYWORDS.contains(k)) {
            let entry = declared
                .entry(child.instance_location().as_str())
                .or_default();
            if keyword == "unevaluatedProperties" {
                entry.open = true;
            }
            if let Some(names) = child.annotations().and_then(|a| a.value().as_array()) {
                entry.names.extend(names.iter().filter_map(Value::as_str));
            }
        }
        collect(child, declared);
    }
}

/// The last segment of an evaluation path (a JSON Pointer of keywords,
/// names and indices) if it stands where a keyword stands: not the name
/// of a property (after `properties`, `$defs`, …) nor an index (after
/// `allOf`, `prefixItems`, …). A property named `unevaluatedProperties` is
/// not the keyword.
fn last_keyword(path: &str) -> Option<&str> {
    #[derive(PartialEq)]
    enum Next {
        Keyword,
        Name,
        Maybe,
    }
    let mut next = Next::Keyword;
    let mut last = None;
    for seg in path.split('/').skip(1) {
        if next == Next::Maybe && !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            // An index into a keyword's array of subschemas.
            next = Next::Keyword;
            last = None;
            continue;
        }
        if next == Next::Name {
            next = Next::Keyword;
            last = None;
            continue;
        }
        last = Some(seg);
        next = match holds(seg) {
            Some(Holds::Map) => Next::Name,
            Some(Holds::Some) => Next::Maybe,
            None => Next::Keyword,
        };
    }
    last
}

/// Reports the objects in `v` that carry a property no applied schema
/// declares; an object no property keyword applied to is left as it is
/// (its schema says nothing of its properties).
fn undeclared(
    v: &Value,
    at: &str,
    declared: &HashMap<&str, Declared<'_>>,
    max: usize,
    out: &mut Vec<String>,
) {
    if out.len() >= max {
        return;
    }
    match v {
        Value::Object(o) => {
            if let Some(d) = declared.get(at)
                && !d.open
                && o.keys().any(|k| !d.names.contains(k.as_str()))
            {
                let place = if at.is_empty() { "/" } else { at };
                out.push(format!(
                    "{place}: a property that neither the schema nor the branch of it the value matched declares"
                ));
            }
            for (k, sub) in o {
                undeclared(sub, &pointer(at, k), declared, max, out);
            }
        }
        Value::Array(a) => {
            for (i, sub) in a.iter().enumerate() {
                undeclared(sub, &pointer(at, &i.to_string()), declared, max, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
