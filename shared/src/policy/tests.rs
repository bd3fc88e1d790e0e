use std::collections::BTreeMap;

use super::*;
use crate::policy::{Policy, Risk};

const EXAMPLE: &str = include_str!("../../../deploy/policies/example.yaml");

fn with(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value = serde_norway::from_str(EXAMPLE).unwrap();
    edit(&mut v);
    serde_norway::to_string(&v).unwrap()
}

fn err(yaml: &str) -> Error {
    Policy::parse(yaml).expect_err("must be refused")
}

#[test]
fn the_example_is_valid() {
    let p = Policy::parse(EXAMPLE).unwrap();
    assert_eq!(p.document.tools.len(), 5);
    assert_eq!(p.document.tools[2].risk, Risk::High);
    assert_eq!(p.digest.len(), 64);
    // Formatting does not change the digest; content does.
    let reformatted = with(|_| {});
    assert_eq!(Policy::parse(&reformatted).unwrap().digest, p.digest);
    let changed = with(|v| v["tools"][0]["risk"] = "high".into());
    assert_ne!(Policy::parse(&changed).unwrap().digest, p.digest);
}

#[test]
fn yaml_that_does_not_parse() {
    assert!(matches!(err("version: 1\ntools: [\n"), Error::Yaml(_)));
    assert!(matches!(err("just a string"), Error::Yaml(_)));
}

#[test]
fn unknown_fields_are_refused_at_every_level() {
    assert!(
        matches!(err(&with(|v| v["colour"] = "blue".into())), Error::UnknownField(m) if m.contains("colour"))
    );
    assert!(
        matches!(err(&with(|v| v["tools"][0]["retries"] = 3.into())), Error::UnknownField(m) if m.contains("retries"))
    );
    assert!(matches!(
        err(&with(|v| v["tools"][0]["limits"]["burst"] = 3.into())),
        Error::UnknownField(_)
    ));
}

#[test]
fn a_json_schema_that_does_not_compile() {
    let e = err(&with(|v| {
        v["tools"][1]["input_schema"]["properties"]["customer_id"]["pattern"] = "([".into()
    }));
    assert!(
        matches!(&e, Error::Schema { tool, .. } if tool == "lookup_customer"),
        "{e}"
    );
    let e = err(&with(|v| {
        v["tools"][1]["input_schema"]["properties"]["customer_id"]["type"] = "strang".into()
    }));
    assert!(matches!(e, Error::Schema { .. }), "{e}");
    let e = err(&with(|v| {
        v["tools"][1]["input_schema"] = serde_json::json!({"type": "string"})
    }));
    assert!(matches!(e, Error::Schema { .. }), "{e}");
}

#[test]
fn cedar_that_does_not_parse_or_type_check() {
    let e = err(&with(|v| {
        v["cedar"] = "permit (principal, action, resource) when {".into()
    }));
    assert!(matches!(e, Error::CedarParse(_)), "{e}");
    // A rule on an argument the tool does not have.
    let e = err(&with(|v| {
        v["cedar"] = r#"forbid (principal, action == Warden::Action::"send_email", resource) when { context.arguments.bcc == "x" };"#.into()
    }));
    assert!(matches!(e, Error::CedarValidation(_)), "{e}");
    // A type error: comparing a string argument with a number.
    let e = err(&with(|v| {
        v["cedar"] = r#"forbid (principal, action == Warden::Action::"send_email", resource) when { context.arguments.to > 3 };"#.into()
    }));
    assert!(matches!(e, Error::CedarValidation(_)), "{e}");
    // An action for a tool that is not in the catalog.
    let e = err(&with(|v| {
        v["cedar"] = r#"forbid (principal, action == Warden::Action::"rm_rf", resource);"#.into()
    }));
    assert!(matches!(e, Error::CedarValidation(_)), "{e}");
}

#[test]
fn undefined_secret_and_bad_secret_refs() {
    let e = err(&with(|v| {
        v["tools"][0]["secrets"] = serde_json::json!(["smtp_password"])
    }));
    assert_eq!(
        e,
        Error::UndefinedSecret {
            tool: "send_email".into(),
            secret: "smtp_password".into()
        }
    );
    let e = err(&with(|v| {
        v["secrets"]["mail_api_key"] = "vault:kv/mail".into()
    }));
    assert!(matches!(e, Error::SecretRef { .. }), "{e}");
    let e = err(&with(|v| {
        v["secrets"]["crm_token"] = "file:relative/path".into()
    }));
    assert!(matches!(e, Error::SecretRef { .. }), "{e}");
}

#[test]
fn duplicate_tool_names() {
    let e = err(&with(|v| {
        let t = v["tools"][0].clone();
        v["tools"].as_array_mut().unwrap().push(t);
    }));
    assert_eq!(e, Error::DuplicateTool("send_email".into()));
}

#[test]
fn other_bad_fields() {
    assert!(matches!(
        err(&with(|v| v["version"] = 2.into())),
        Error::Version(2)
    ));
    assert!(matches!(
        err(&with(|v| v["tools"][0]["name"] = "Send Email".into())),
        Error::Tool { .. }
    ));
    assert!(matches!(
        err(&with(|v| v["tools"][0]["scopes"] = serde_json::json!([]))),
        Error::Tool { .. }
    ));
    assert!(matches!(
        err(&with(
            |v| v["tools"][0]["scopes"] = serde_json::json!(["mail"])
        )),
        Error::Tool { .. }
    ));
    assert!(matches!(
        err(&with(|v| v["tools"][0]["risk"] = "extreme".into())),
        Error::Yaml(_)
    ));
    assert!(matches!(
        err(&with(|v| v["tools"][0]["upstream"]["kind"] = "ftp".into())),
        Error::Tool { .. }
    ));
    assert!(matches!(
        err(&with(|v| v["tools"][0]["limits"]["timeout_ms"] = 0.into())),
        Error::Tool { .. }
    ));
    let e = err(&with(|v| {
        v["overrides"]["agent_types"]["support-bot"]["deny_tools"] = serde_json::json!(["nope"])
    }));
    assert!(matches!(e, Error::Override(_)), "{e}");
    assert!(matches!(
        err(&"#".repeat(MAX_DOCUMENT_BYTES + 1)),
        Error::TooLarge
    ));
}

#[test]
fn derived_cedar_schema_types_arguments() {
    let p = Policy::parse(EXAMPLE).unwrap();
    let s = crate::policy::cedar::schema_for(&p.document.tools);
    assert!(s.contains(r#""to": String"#), "{s}");
    assert!(s.contains(r#""cc"?: Set<String>"#), "{s}");
    assert!(s.contains(r#""amount_cents": Long"#), "{s}");
}

#[test]
fn tools_for_applies_identity_lists_and_overrides() {
    let p = Policy::parse(EXAMPLE).unwrap();
    let d = &p.document;
    let names = |m: &BTreeMap<String, Risk>| m.keys().cloned().collect::<Vec<_>>();
    let all = d.tools_for("x", "coder", &[], &[]);
    assert_eq!(all.len(), 5);
    let denied = d.tools_for("x", "coder", &[], &["clock".into()]);
    assert!(!denied.contains_key("clock"));
    let allowed = d.tools_for("x", "coder", &["clock".into(), "send_email".into()], &[]);
    assert_eq!(names(&allowed), ["clock", "send_email"]);
    // The support-bot type may not delete repositories; one agent's refunds are critical.
    let bot = d.tools_for("support-bot-eu-1", "support-bot", &[], &[]);
    assert_eq!(
        names(&bot),
        ["clock", "lookup_customer", "refund_payment", "send_email"]
    );
    assert_eq!(bot["refund_payment"], Risk::Critical);
    assert_eq!(
        d.tools_for("support-bot-us-1", "support-bot", &[], &[])["refund_payment"],
        Risk::High
    );
}

#[test]
fn upstream_settings_are_checked() {
    let tool_err = |f: fn(&mut serde_json::Value)| match err(&with(f)) {
        Error::Tool { detail, .. } => detail,
        e => panic!("expected a tool error, got {e}"),
    };
    let d = tool_err(|v| v["tools"][4]["upstream"]["address"] = "shell".into());
    assert!(d.contains("unknown builtin"), "{d}");
    let d = tool_err(|v| v["tools"][4]["upstream"]["method"] = "GET".into());
    assert!(d.contains("no http settings"), "{d}");
    // lookup_customer: GET https://crm…/customers/{customer_id}
    let d = tool_err(|v| {
        v["tools"][1]["upstream"]["address"] = "https://crm.internal.example/c/{nope}".into()
    });
    assert!(d.contains("{nope}"), "{d}");
    let d = tool_err(|v| {
        v["tools"][1]["upstream"]["address"] = "https://{customer_id}.example/".into()
    });
    assert!(d.contains("literal host"), "{d}");
    let d = tool_err(|v| v["tools"][1]["upstream"]["address"] = "https://h:99999/".into());
    assert!(d.contains("invalid port"), "{d}");
    let d = tool_err(|v| v["tools"][1]["upstream"]["method"] = "FETCH".into());
    assert!(d.contains("unknown method"), "{d}");
    let d = tool_err(|v| v["tools"][1]["upstream"]["headers"]["Host"] = "x".into());
    assert!(d.contains("settable header"), "{d}");
    let d = tool_err(|v| v["tools"][1]["upstream"]["headers"]["X-A"] = "a\r\nb".into());
    assert!(d.contains("line break"), "{d}");
    let d = tool_err(|v| v["tools"][1]["upstream"]["body_fields"]["k"] = "v".into());
    assert!(d.contains("body_fields need a method with a body"), "{d}");
    let d =
        tool_err(|v| v["tools"][0]["upstream"]["headers"]["X-Key"] = "${secret:crm_token}".into());
    assert!(d.contains("not in the tool's secrets"), "{d}");
    let d = tool_err(|v| {
        v["tools"][0]["upstream"]["address"] = "http://mail.internal.example/send".into()
    });
    assert!(d.contains("clear text"), "{d}");
    let d = tool_err(|v| {
        v["tools"][0]["upstream"]["address"] = "http://127.0.0.1:8080/send".into();
        v["tools"][0]["upstream"]["tls"] = serde_json::json!({"ca_file": "/etc/ca.pem"});
    });
    assert!(d.contains("tls settings need an https"), "{d}");
    let d = tool_err(|v| {
        v["tools"][0]["upstream"]["tls"] = serde_json::json!({"client_cert": "mail_api_key"})
    });
    assert!(d.contains("go together"), "{d}");
    let d = tool_err(|v| v["tools"][0]["upstream"]["body_fields"]["to"] = "x".into());
    assert!(d.contains("not an argument"), "{d}");
    let d = tool_err(|v| v["tools"][0]["upstream"]["max_response_bytes"] = 0.into());
    assert!(d.contains("max_response_bytes"), "{d}");
    let d = tool_err(|v| {
        v["tools"][0]["upstream"]["circuit_breaker"] = serde_json::json!({"failures": 0})
    });
    assert!(d.contains("circuit_breaker"), "{d}");
    // Secrets over plain http to loopback are fine (a local proxy or test).
    let p = Policy::parse(&with(|v| {
        v["tools"][0]["upstream"]["address"] = "http://127.0.0.1:8080/send".into()
    }));
    assert!(p.is_ok(), "{:?}", p.err());
}

#[test]
fn placeholders_and_secret_uses_are_found() {
    let p = Policy::parse(EXAMPLE).unwrap();
    let u = p.document.tools[1].upstream.as_ref().unwrap();
    assert_eq!(u.placeholders(), ["customer_id"]);
    assert_eq!(u.secret_uses(), ["crm_token"]);
}

#[test]
fn limits_are_checked() {
    let limit_err = |f: fn(&mut serde_json::Value)| match err(&with(f)) {
        Error::Limit { detail, .. } => detail,
        e => panic!("expected a limit error, got {e}"),
    };
    fn rate(v: &mut serde_json::Value, r: serde_json::Value) {
        v["limits"] = serde_json::json!([{"name": "l", "key": "agent", "rate": r}]);
    }
    let d = limit_err(|v| rate(v, serde_json::json!({"calls": -5, "per": "1m"})));
    assert!(d.contains("rate.calls must be"), "{d}");
    let d = limit_err(|v| rate(v, serde_json::json!({"calls": 5, "per": "0s"})));
    assert!(d.contains("not a positive duration"), "{d}");
    let d = limit_err(|v| rate(v, serde_json::json!({"calls": 5, "per": "1 fortnight"})));
    assert!(d.contains("not a positive duration"), "{d}");
    let d = limit_err(|v| rate(v, serde_json::json!({"calls": 5, "per": "1m", "burst": 0})));
    assert!(d.contains("rate.burst"), "{d}");
    let d = limit_err(|v| {
        v["limits"] =
            serde_json::json!([{"name": "l", "key": "tenant", "rate": {"calls": 1, "per": "1s"}}])
    });
    assert!(d.contains("unknown key \"tenant\""), "{d}");
    let d = limit_err(|v| {
        v["limits"] =
            serde_json::json!([{"name": "l", "key": "agent", "quota": {"budget": 0, "per": "1d"}}])
    });
    assert!(d.contains("quota.budget"), "{d}");
    let d = limit_err(|v| {
        v["limits"] =
            serde_json::json!([{"name": "l", "key": "agent", "quota": {"budget": 9, "per": "10s"}}])
    });
    assert!(d.contains("at least 1m"), "{d}");
    let d = limit_err(|v| v["limits"] = serde_json::json!([{"name": "l", "key": "agent"}]));
    assert!(d.contains("exactly one of rate and quota"), "{d}");
    let d = limit_err(
        |v| v["limits"] = serde_json::json!([{"name": "l", "key": "agent", "tools": ["nope"], "rate": {"calls": 1, "per": "1s"}}]),
    );
    assert!(d.contains("unknown tool"), "{d}");
    let d = limit_err(|v| {
        v["limits"] = serde_json::json!([
            {"name": "l", "key": "agent", "rate": {"calls": 1, "per": "1s"}},
            {"name": "l", "key": "owner", "rate": {"calls": 1, "per": "1s"}}
        ])
    });
    assert!(d.contains("duplicate"), "{d}");
    let d = limit_err(
        |v| v["limits"] = serde_json::json!([{"name": "l", "key": "agent", "rate": {"calls": 1, "per": "1s"}, "on_failure": "local_fallback"}]),
    );
    assert!(d.contains("expected_replicas"), "{d}");
    let d = limit_err(|v| {
        v["limits"] = serde_json::json!([{"name": "l", "key": "agent", "rate": {"calls": 8, "per": "1s", "burst": 2},
            "on_failure": "local_fallback", "expected_replicas": 4}])
    });
    assert!(d.contains("local share"), "{d}");
    let d = limit_err(
        |v| v["limits"] = serde_json::json!([{"name": "send_email.calls_per_minute", "key": "agent_tool", "rate": {"calls": 1, "per": "1s"}}]),
    );
    assert!(d.contains("tools' own limits"), "{d}");
    let d = limit_err(
        |v| v["limits"] = serde_json::json!([{"name": "l", "key": "agent", "rate": {"calls": 1, "per": "1s"}, "on_failure": "fail_open"}]),
    );
    assert!(d.contains("unknown on_failure"), "{d}");
    let ok = Policy::parse(&with(|v| {
        v["limits"] = serde_json::json!([
            {"name": "per-agent", "key": "agent", "rate": {"calls": 100, "per": "1m", "burst": 20},
             "on_failure": "local_fallback", "expected_replicas": 4},
            {"name": "owner-budget", "key": "owner", "quota": {"budget": 5000, "per": "1d"}, "shadow": true}
        ])
    }));
    assert!(ok.is_ok(), "{:?}", ok.err());
    assert_eq!(
        err(&with(|v| rate(
            v,
            serde_json::json!({"calls": 0, "per": "1s"})
        )))
        .kind(),
        "POLICY_LIMIT",
        "kind"
    );
}

#[test]
fn durations_parse() {
    use std::time::Duration;
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
    assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86_400)));
    for bad in ["", "0s", "-1s", "1", "s", "1w", "1.5s"] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
}

/// The example with an MCP server `files` (stdio) and `search` (HTTP),
/// and one tool of each.
fn with_mcp(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    with(|v| {
        v["secrets"]["search_key"] = "env:SEARCH_KEY".into();
        v["mcp_servers"] = serde_json::json!({
            "files": {"command": "/usr/bin/files-mcp", "args": ["--root", "/srv"],
                      "env": {"TOKEN": "${secret:search_key}"}},
            "search": {"url": "https://search.example/mcp",
                       "headers": {"Authorization": "Bearer ${secret:search_key}"},
                       "refresh": "30s"},
        });
        let tools = v["tools"].as_array_mut().unwrap();
        tools.push(serde_json::json!({
            "name": "files.read", "description": "Reads a file.",
            "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
            "scopes": ["files:read"], "risk": "low",
            "upstream": {"kind": "mcp", "address": "files", "tool": "read_file",
                         "pin": format!("sha256:{}", "ab".repeat(32))},
        }));
        tools.push(serde_json::json!({
            "name": "search.query", "description": "Searches.",
            "input_schema": {"type": "object"},
            "scopes": ["search:read"], "risk": "low",
            "upstream": {"kind": "mcp", "address": "search"},
        }));
        edit(v);
    })
}

#[test]
fn mcp_servers_and_their_tools_are_checked() {
    let p = Policy::parse(&with_mcp(|_| {})).unwrap();
    let t = p
        .document
        .tools
        .iter()
        .find(|t| t.name == "search.query")
        .unwrap();
    let u = t.upstream.as_ref().unwrap();
    assert_eq!(u.remote_tool(&t.name), "query");
    let t = p
        .document
        .tools
        .iter()
        .find(|t| t.name == "files.read")
        .unwrap();
    assert_eq!(
        t.upstream.as_ref().unwrap().remote_tool(&t.name),
        "read_file"
    );
    assert_eq!(
        p.document.mcp_servers["search"].refresh_every(),
        std::time::Duration::from_secs(30)
    );
    let mcp_tool = |v: &mut serde_json::Value| -> usize {
        v["tools"]
            .as_array()
            .unwrap()
            .iter()
            .position(|t| t["name"] == "files.read")
            .unwrap()
    };
    type Edit = fn(&mut serde_json::Value);
    let bad_server: [(&str, Edit); 9] = [
        ("both transports", |v| {
            v["mcp_servers"]["files"]["url"] = "http://127.0.0.1:1/mcp".into()
        }),
        ("no transport", |v| {
            v["mcp_servers"]["files"] = serde_json::json!({})
        }),
        ("relative command", |v| {
            v["mcp_servers"]["files"]["command"] = "files-mcp".into()
        }),
        ("undefined secret", |v| {
            v["mcp_servers"]["search"]["headers"]["X-Key"] = "${secret:nope}".into()
        }),
        ("secret in clear text", |v| {
            v["mcp_servers"]["search"]["url"] = "http://search.example/mcp".into()
        }),
        ("headers on stdio", |v| {
            v["mcp_servers"]["files"]["headers"] = serde_json::json!({"A": "b"})
        }),
        ("bad refresh", |v| {
            v["mcp_servers"]["search"]["refresh"] = "5h".into()
        }),
        ("bad name", |v| {
            let s = v["mcp_servers"]["files"].clone();
            v["mcp_servers"]["Files.X"] = s;
        }),
        ("env name", |v| {
            v["mcp_servers"]["files"]["env"]["A-B"] = "x".into()
        }),
    ];
    for (what, edit) in bad_server {
        let e = err(&with_mcp(edit));
        assert!(matches!(e, Error::McpServer { .. }), "{what}: {e}");
        assert_eq!(e.kind(), "POLICY_MCP_SERVER");
    }
    type EditTool = fn(&mut serde_json::Value, usize);
    let bad_tool: [(&str, EditTool); 6] = [
        ("unknown server", |v, i| {
            v["tools"][i]["upstream"]["address"] = "nope".into()
        }),
        ("outside its namespace", |v, i| {
            v["tools"][i]["name"] = "read_file".into()
        }),
        ("bad pin", |v, i| {
            v["tools"][i]["upstream"]["pin"] = "sha256:XYZ".into()
        }),
        ("bad remote name", |v, i| {
            v["tools"][i]["upstream"]["tool"] = "read file".into()
        }),
        ("http settings", |v, i| {
            v["tools"][i]["upstream"]["method"] = "GET".into()
        }),
        ("empty tool part", |v, i| {
            v["tools"][i]["name"] = "files.".into()
        }),
    ];
    for (what, edit) in bad_tool {
        let e = err(&with_mcp(|v| {
            let i = mcp_tool(v);
            edit(v, i);
        }));
        assert!(matches!(e, Error::Tool { .. }), "{what}: {e}");
    }
    // tool and pin belong to mcp upstreams only.
    let e = err(&with(|v| {
        v["tools"][0]["upstream"]["pin"] = format!("sha256:{}", "ab".repeat(32)).into()
    }));
    assert!(matches!(e, Error::Tool { .. }), "{e}");
}

#[test]
fn mcp_pins_are_canonical() {
    let a = serde_json::json!({"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}});
    let b: serde_json::Value = serde_json::from_str(
        r#"{"properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "type": "object"}"#,
    )
    .unwrap();
    let pin = mcp_pin("Reads.", &a);
    assert_eq!(pin, mcp_pin("Reads.", &b));
    assert!(pin.starts_with("sha256:") && pin.len() == 71);
    assert_ne!(pin, mcp_pin("Reads!", &a));
    let mut out = String::new();
    canonical_json(&b, &mut out);
    assert_eq!(
        out,
        r#"{"properties":{"a":{"type":"integer"},"b":{"type":"string"}},"type":"object"}"#
    );
    // A known value: SHA-256 of {"description":"","inputSchema":{}}.
    assert_eq!(
        mcp_pin("", &serde_json::json!({})),
        format!(
            "sha256:{}",
            ring::digest::digest(
                &ring::digest::SHA256,
                br#"{"description":"","inputSchema":{}}"#
            )
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
        )
    );
}

#[test]
fn approval_settings_and_rules_are_checked() {
    let ok = with(|v| {
        v["tools"][0]["approval"] = serde_json::json!({"approvals": 2, "deadline": "10m"});
        v["approval_rules"] = r#"@id("outside") @approvals("2")
permit (principal, action == Warden::Action::"send_email", resource)
unless { context.arguments.to like "*@example.com" };"#
            .into();
    });
    let p = Policy::parse(&ok).unwrap();
    assert_eq!(p.approval_rules.whole().policies().count(), 1);
    assert_eq!(p.document.tools[0].approvals(), 2);
    assert_eq!(
        p.document.tools[0].approval_deadline(),
        std::time::Duration::from_secs(600)
    );
    type Edit = fn(&mut serde_json::Value);
    let bad: [(&str, Edit); 6] = [
        (
            "quorum 0",
            (|v| v["tools"][0]["approval"] = serde_json::json!({"approvals": 0})),
        ),
        (
            "quorum 6",
            (|v| v["tools"][0]["approval"] = serde_json::json!({"approvals": 6})),
        ),
        (
            "deadline 2h",
            (|v| v["tools"][0]["approval"] = serde_json::json!({"deadline": "2h"})),
        ),
        (
            "rule that does not parse",
            (|v| v["approval_rules"] = "permit (".into()),
        ),
        (
            "rule on an unknown argument",
            (|v| {
                v["approval_rules"] = r#"permit (principal, action == Warden::Action::"send_email", resource) when { context.arguments.bcc == "x" };"#.into()
            }),
        ),
        (
            "a forbid",
            (|v| v["approval_rules"] = "forbid (principal, action, resource);".into()),
        ),
    ];
    for (what, edit) in bad {
        let e = err(&with(edit));
        assert!(
            matches!(e, Error::Tool { .. } | Error::Approval(_)),
            "{what}: {e}"
        );
    }
    let e = err(&with(|v| {
        v["approval_rules"] = r#"@approvals("9") permit (principal, action, resource);"#.into()
    }));
    assert_eq!(e.kind(), "POLICY_APPROVAL", "{e}");
    // Privileged scopes: real scopes, approvals and deadlines in bounds.
    let ok = with(|v| {
        v["privileged_scopes"] =
            serde_json::json!({"data:*": {"approvals": 2, "deadline": "10m"}, "repo:admin": {}});
    });
    let p = Policy::parse(&ok).unwrap();
    let spec = &p.document.privileged_scopes["data:*"];
    assert_eq!((spec.quorum(), spec.deadline().as_secs()), (2, 600));
    assert_eq!(p.document.privileged_scopes["repo:admin"].quorum(), 1);
    for bad in [
        serde_json::json!({"not a scope": {}}),
        serde_json::json!({"data:*": {"approvals": 0}}),
        serde_json::json!({"data:*": {"approvals": 6}}),
        serde_json::json!({"data:*": {"deadline": "5s"}}),
        serde_json::json!({"data:*": {"deadline": "2h"}}),
        serde_json::json!({"data:*": {"quorum": 2}}),
    ] {
        let text = with(|v| v["privileged_scopes"] = bad.clone());
        let e = Policy::parse(&text).expect_err(&bad.to_string());
        assert!(
            e.kind() == "POLICY_APPROVAL" || e.to_string().contains("unknown field"),
            "{bad}: {} {e}",
            e.kind()
        );
    }
}

#[test]
fn a_user_confirms_alone_and_only_a_tools_calls() {
    let tool = |approval: serde_json::Value| {
        with(move |v| {
            v["tools"][0]["risk"] = "high".into();
            v["tools"][0]["approval"] = approval;
        })
    };
    let p = Policy::parse(&tool(serde_json::json!({"by": "user"}))).unwrap();
    assert!(p.document.tools[0].confirmed_by_user());
    let p = Policy::parse(&tool(serde_json::json!({"by": "people"}))).unwrap();
    assert!(!p.document.tools[0].confirmed_by_user());
    let e = err(&tool(serde_json::json!({"by": "user", "approvals": 2})));
    assert!(e.to_string().contains("one person"), "{e}");
    assert!(Policy::parse(&tool(serde_json::json!({"by": "robot"}))).is_err());
    let e = err(&with(|v| {
        v["privileged_scopes"] = serde_json::json!({"data:*": {"by": "user"}});
    }));
    assert_eq!(e.kind(), "POLICY_APPROVAL", "{e}");
}

#[test]
fn step_up_bindings_name_the_agent_the_user_and_the_scopes() {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let h = step_up_binding("a1", "u-1", &s(&["data:*", "repo:admin"]));
    assert_eq!(h.len(), 64);
    assert_eq!(
        h,
        step_up_binding("a1", "u-1", &s(&["repo:admin", "data:*"]))
    );
    assert_ne!(
        h,
        step_up_binding("a1", "u-2", &s(&["data:*", "repo:admin"]))
    );
    assert_ne!(
        h,
        step_up_binding("a2", "u-1", &s(&["data:*", "repo:admin"]))
    );
    assert_ne!(h, step_up_binding("a1", "u-1", &s(&["data:*"])));
}

#[test]
fn approval_bindings_follow_the_call_not_its_formatting() {
    let a: serde_json::Value = serde_json::from_str(r#"{"amount": 150, "to": "acct-1"}"#).unwrap();
    let b: serde_json::Value =
        serde_json::from_str(r#"{ "to" : "acct-1", "amount" : 1.5e2 }"#).unwrap();
    let h = approval_binding("refund", &a, "ses_1").unwrap();
    assert_eq!(h.len(), 64);
    assert_eq!(h, approval_binding("refund", &b, "ses_1").unwrap());
    assert_ne!(h, approval_binding("refund", &a, "ses_2").unwrap());
    assert_ne!(h, approval_binding("refunds", &a, "ses_1").unwrap());
    let changed = serde_json::json!({"amount": 151, "to": "acct-1"});
    assert_ne!(h, approval_binding("refund", &changed, "ses_1").unwrap());
    // Lengths frame the parts: moving a character between them changes it.
    assert_ne!(
        approval_binding("ab", &serde_json::json!({}), "c").unwrap(),
        approval_binding("a", &serde_json::json!({}), "bc").unwrap()
    );
}

#[test]
fn a_tools_audit_arguments_mode_is_redacted_unless_set() {
    use crate::audit::ArgumentsMode;
    let p = Policy::parse(EXAMPLE).unwrap();
    assert!(
        p.document
            .tools
            .iter()
            .all(|t| t.audit_arguments == ArgumentsMode::Redacted)
    );
    for (mode, want) in [("hash", ArgumentsMode::Hash), ("full", ArgumentsMode::Full)] {
        let p = Policy::parse(&with(|v| v["tools"][0]["audit_arguments"] = mode.into())).unwrap();
        assert_eq!(p.document.tools[0].audit_arguments, want);
    }
    assert!(matches!(
        err(&with(|v| v["tools"][0]["audit_arguments"] = "raw".into())),
        Error::Yaml(_) | Error::UnknownField(_)
    ));
}

#[test]
fn secret_rules_load_and_a_malformed_file_is_refused_naming_the_rule() {
    let ok = with(|v| {
        v["secret_rules"] =
            "[[rules]]\nid = \"acme\"\nregex = '''acme_[a-z0-9]{16}'''\nkeywords = [\"acme_\"]\n"
                .into()
    });
    let p = Policy::parse(&ok).unwrap();
    assert!(!p.secret_rules.scan("x acme_0123456789abcdef y").is_empty());
    let e = err(&with(|v| {
        v["secret_rules"] = "[[rules]]\nid = \"acme\"\nregex = '''(unclosed'''\n".into()
    }));
    assert_eq!(e.kind(), "POLICY_SECRET_RULES");
    assert!(
        e.to_string()
            .starts_with("secret_rules: rule acme: regex does not compile"),
        "{e}"
    );
    // Filters take the four actions and nothing else.
    let p = Policy::parse(&with(|v| {
        v["tools"][0]["filters"]["pii"] = "mask".into();
        v["tools"][0]["filters"]["secrets"] = "block".into();
    }))
    .unwrap();
    assert_eq!(p.document.tools[0].filters.pii, crate::policy::Guard::Mask);
    assert_eq!(
        p.document.tools[0].filters.secrets,
        crate::policy::Guard::Block
    );
    assert!(matches!(
        err(&with(|v| v["tools"][0]["filters"]["pii"] = "hide".into())),
        Error::Yaml(_) | Error::UnknownField(_)
    ));
    // Injection actions: the five words, per direction, nothing else.
    let p = Policy::parse(&with(|v| {
        v["tools"][0]["filters"]["injection"] = serde_json::json!({"output": "redact"});
    }))
    .unwrap();
    let i = p.document.tools[0].filters.injection;
    assert_eq!(
        (i.arguments, i.output),
        (
            crate::policy::OnInjection::Block,
            crate::policy::OnInjection::Redact
        )
    );
    assert!(matches!(
        err(&with(
            |v| v["tools"][0]["filters"]["injection"] = serde_json::json!({"output": "warn"})
        )),
        Error::Yaml(_) | Error::UnknownField(_)
    ));
    assert!(matches!(
        err(&with(
            |v| v["tools"][0]["filters"]["injection"] = serde_json::json!({"input": "block"})
        )),
        Error::Yaml(_) | Error::UnknownField(_)
    ));
}

#[test]
fn the_classifier_and_the_newer_filters_are_validated() {
    let p = Policy::parse(&with(|v| {
        v["classifier"] = serde_json::json!({"url": "http://127.0.0.1:9000/predict"});
    }))
    .unwrap();
    let c = p.document.classifier.as_ref().unwrap();
    assert_eq!(
        (c.timeout_ms, c.on_failure, c.threshold, c.max_chunks),
        (300, crate::policy::classifier::OnFailure::Block, 0.5, 32)
    );
    assert!(c.counts("injection") && c.counts("JAILBREAK") && !c.counts("SAFE"));
    for (bad, says) in [
        (
            serde_json::json!({"url": "ftp://x/"}),
            "http:// or https://",
        ),
        (serde_json::json!({"url": "http://x/{a}"}), "placeholders"),
        (
            serde_json::json!({"url": "http://h/", "timeout_ms": 0}),
            "timeout_ms",
        ),
        (
            serde_json::json!({"url": "http://h/", "threshold": 1.5}),
            "threshold",
        ),
        (
            serde_json::json!({"url": "http://h/", "labels": []}),
            "labels",
        ),
        (
            serde_json::json!({"url": "http://h/", "max_chunks": 0}),
            "max_chunks",
        ),
        (
            serde_json::json!({"url": "http://h/", "headers": {"authorization": "Bearer ${secret:nope}"}}),
            "undefined secret",
        ),
        (
            serde_json::json!({"url": "http://h/", "tls": {}}),
            "https://",
        ),
    ] {
        let e = err(&with(|v| v["classifier"] = bad.clone()));
        assert_eq!(e.kind(), "POLICY_CLASSIFIER", "{bad}: {e}");
        assert!(e.to_string().contains(says), "{bad}: {e}");
    }
    assert!(matches!(
        err(&with(
            |v| v["classifier"] = serde_json::json!({"url": "http://h/", "on_failure": "maybe"})
        )),
        Error::Yaml(_) | Error::UnknownField(_)
    ));
    // The description action: block, flag or off.
    let p = Policy::parse(&with(|v| {
        v["tools"][0]["filters"]["injection"] = serde_json::json!({"description": "flag"});
        v["tools"][0]["filters"]["argument_secrets"] = "block".into();
    }))
    .unwrap();
    let f = &p.document.tools[0].filters;
    assert_eq!(f.injection.description, crate::policy::OnInjection::Flag);
    assert_eq!(f.argument_secrets, crate::policy::Guard::Block);
    assert_eq!(
        Policy::parse(&with(|_| {})).unwrap().document.tools[0]
            .filters
            .argument_secrets,
        crate::policy::Guard::Off
    );
    let e = err(&with(|v| {
        v["tools"][0]["filters"]["injection"] = serde_json::json!({"description": "mark"});
    }));
    assert_eq!(e.kind(), "POLICY_TOOL");
    assert!(
        e.to_string()
            .contains("description must be block, flag or off"),
        "{e}"
    );
}
