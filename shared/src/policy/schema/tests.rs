use serde_json::json;

use super::*;

fn check(schema: &Value, args: &Value) -> Vec<String> {
    InputSchema::compile(schema).unwrap().errors(args, 5)
}

#[track_caller]
fn accepted(schema: &Value, args: &Value) {
    let e = check(schema, args);
    assert!(e.is_empty(), "{args} refused: {e:?}");
}

#[track_caller]
fn refused(schema: &Value, args: &Value, at: &str) {
    let e = check(schema, args);
    assert!(
        e.iter().any(|m| m.starts_with(&format!("{at}: "))),
        "{args} not refused at {at}: {e:?}"
    );
}

#[test]
fn plain_schemas_are_closed_as_before() {
    let s = json!({"type": "object", "properties": {
        "a": {"type": "string"},
        "o": {"type": "object", "properties": {"x": {"type": "integer"}}},
        "open": {"type": "object", "additionalProperties": true}
    }});
    accepted(&s, &json!({"a": "1", "o": {"x": 1}, "open": {"any": 1}}));
    refused(&s, &json!({"a": "1", "evil": 1}), "/");
    refused(&s, &json!({"o": {"x": 1, "evil": 1}}), "/o");
}

#[test]
fn all_of_merges_its_branches_and_refuses_what_none_declares() {
    let s = json!({"type": "object", "allOf": [
        {"properties": {"a": {"type": "string"}}, "required": ["a"]},
        {"properties": {"b": {"type": "integer"}}}
    ]});
    accepted(&s, &json!({"a": "x", "b": 1}));
    accepted(&s, &json!({"a": "x"}));
    refused(&s, &json!({"a": "x", "evil": 1}), "/");
    // The branches themselves still validate.
    refused(&s, &json!({"a": "x", "b": "not a number"}), "/b");
}

#[test]
fn any_of_and_one_of_count_only_the_branches_the_value_matched() {
    for combinator in ["anyOf", "oneOf"] {
        let s = json!({"type": "object", "properties": {"kind": {"type": "string"}},
        combinator: [
            {"properties": {"kind": {"const": "email"}, "to": {"type": "string"}}, "required": ["to"]},
            {"properties": {"kind": {"const": "sms"}, "phone": {"type": "string"}}, "required": ["phone"]}
        ]});
        accepted(&s, &json!({"kind": "email", "to": "a@b"}));
        accepted(&s, &json!({"kind": "sms", "phone": "1"}));
        // `phone` is declared only by the branch this value did not match.
        refused(
            &s,
            &json!({"kind": "email", "to": "a@b", "phone": "1"}),
            "/",
        );
        refused(&s, &json!({"kind": "email", "to": "a@b", "evil": 1}), "/");
    }
}

#[test]
fn nested_objects_inside_branches_are_closed() {
    let s = json!({"type": "object", "properties": {
        "target": {"anyOf": [
            {"type": "object", "properties": {"id": {"type": "string"}}},
            {"type": "string"}
        ]},
        "opts": {"allOf": [{"type": "object"}]}
    }});
    accepted(&s, &json!({"target": {"id": "x"}}));
    accepted(&s, &json!({"target": "x"}));
    refused(&s, &json!({"target": {"id": "x", "evil": 1}}), "/target");
    refused(&s, &json!({"opts": {"evil": 1}}), "/opts");
    accepted(&s, &json!({"opts": {}}));
}

#[test]
fn refs_and_defs_are_followed() {
    let s = json!({"type": "object",
        "$defs": {"addr": {"type": "object", "properties": {"city": {"type": "string"}}}},
        "properties": {"home": {"$ref": "#/$defs/addr"}, "list": {"type": "array", "items": {"$ref": "#/$defs/addr"}}}
    });
    accepted(&s, &json!({"home": {"city": "x"}, "list": [{"city": "y"}]}));
    refused(&s, &json!({"home": {"city": "x", "evil": 1}}), "/home");
    refused(
        &s,
        &json!({"list": [{"city": "y"}, {"evil": 1}]}),
        "/list/1",
    );
    refused(&s, &json!({"home": {}, "evil": 1}), "/");
}

#[test]
fn if_then_else_and_not_declare_only_when_they_apply() {
    let s = json!({"type": "object", "properties": {"mode": {"type": "string"}},
        "if": {"properties": {"mode": {"const": "a"}}},
        "then": {"properties": {"x": {"type": "string"}}},
        "else": {"properties": {"y": {"type": "string"}}},
    });
    accepted(&s, &json!({"mode": "a", "x": "1"}));
    accepted(&s, &json!({"mode": "b", "y": "1"}));
    refused(&s, &json!({"mode": "a", "y": "1"}), "/");
    // A `not` branch never declares (its annotations are dropped).
    let s = json!({"type": "object", "properties": {"a": {"type": "string"}},
        "not": {"properties": {"evil": {"type": "integer"}}, "required": ["evil"]}});
    refused(&s, &json!({"a": "1", "evil": "s"}), "/");
}

#[test]
fn explicit_openings_are_honoured() {
    let s = json!({"type": "object", "allOf": [{"properties": {"a": {"type": "string"}}}],
        "unevaluatedProperties": {"type": "integer"}});
    accepted(&s, &json!({"a": "x", "n": 1}));
    refused(&s, &json!({"a": "x", "n": "s"}), "/");
    let s = json!({"type": "object", "anyOf": [
        {"properties": {"tags": {"type": "object", "additionalProperties": {"type": "string"}}}}
    ]});
    accepted(&s, &json!({"tags": {"k1": "v", "k2": "w"}}));
    let s =
        json!({"type": "object", "anyOf": [{"patternProperties": {"^x_": {"type": "string"}}}]});
    accepted(&s, &json!({"x_1": "v"}));
    refused(&s, &json!({"x_1": "v", "y": "w"}), "/");
}

#[test]
fn property_names_that_look_like_keywords_are_not_keywords() {
    let s = json!({"type": "object", "allOf": [{"properties": {
        "properties": {"type": "object", "properties": {"x": {"type": "string"}}},
        "default": {"type": "object", "properties": {"y": {"type": "string"}}}
    }}]});
    accepted(
        &s,
        &json!({"properties": {"x": "1"}, "default": {"y": "2"}}),
    );
    refused(&s, &json!({"default": {"y": "2", "evil": 1}}), "/default");
    refused(&s, &json!({"properties": {"evil": 1}}), "/properties");
}

#[test]
fn a_property_named_like_a_property_keyword_opens_nothing() {
    let s = json!({"type": "object", "allOf": [{"properties": {
        "unevaluatedProperties": {"type": "string"},
        "additionalProperties": {"type": "string"}
    }}]});
    accepted(
        &s,
        &json!({"unevaluatedProperties": "x", "additionalProperties": "y"}),
    );
    refused(&s, &json!({"unevaluatedProperties": "x", "evil": 1}), "/");
    assert_eq!(
        last_keyword("/allOf/0/properties/unevaluatedProperties"),
        None
    );
    assert_eq!(
        last_keyword("/allOf/0/unevaluatedProperties"),
        Some("unevaluatedProperties")
    );
    assert_eq!(
        last_keyword("/properties/a/items/0/properties"),
        Some("properties")
    );
    assert_eq!(last_keyword("/$ref/properties"), Some("properties"));
}

#[test]
fn objects_everywhere_in_a_plain_schema_are_closed() {
    let s = json!({"type": "object", "properties": {
        "by_name": {"type": "object", "additionalProperties": {"type": "object", "properties": {"v": {"type": "string"}}}},
        "pair": {"type": "array", "prefixItems": [{"type": "object", "properties": {"k": {"type": "string"}}}]}
    }});
    accepted(
        &s,
        &json!({"by_name": {"x": {"v": "1"}}, "pair": [{"k": "a"}]}),
    );
    refused(
        &s,
        &json!({"by_name": {"x": {"v": "1", "evil": 1}}}),
        "/by_name/x",
    );
    refused(&s, &json!({"pair": [{"k": "a", "evil": 1}]}), "/pair/0");
}

#[test]
fn a_ref_to_any_place_in_the_document_is_closed() {
    let s = json!({"type": "object", "x-shared": {"target": {"type": "object"}},
        "properties": {"t": {"$ref": "#/x-shared/target"}}});
    accepted(&s, &json!({"t": {}}));
    refused(&s, &json!({"t": {"evil": 1}}), "/t");
}
