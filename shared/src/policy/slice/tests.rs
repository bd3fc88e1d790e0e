//! The slices decide exactly as the whole set: generated policies (every
//! kind of action, resource and principal scope, conditions that hold, fail
//! or err) and generated calls, decided both ways.

use std::collections::{BTreeSet, HashMap, HashSet};

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityUid, PolicySet, Request, Response,
    RestrictedExpression,
};
use proptest::prelude::*;

use crate::policy::Policy;

const TOOLS: usize = 5;

fn uid(ty: &str, id: &str) -> EntityUid {
    format!("Warden::{ty}::\"{id}\"").parse().unwrap()
}

#[derive(Debug, Clone)]
struct Rule {
    permit: bool,
    principal: u8,
    action: (u8, Vec<usize>),
    resource: (u8, usize),
    condition: u8,
    k: i64,
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        any::<bool>(),
        0u8..4,
        (0u8..3, prop::collection::vec(0..TOOLS, 1..4)),
        (0u8..4, 0..TOOLS),
        0u8..6,
        -3i64..4,
    )
        .prop_map(|(permit, principal, action, resource, condition, k)| Rule {
            permit,
            principal,
            action,
            resource,
            condition,
            k,
        })
}

impl Rule {
    fn cedar(&self, i: usize) -> String {
        let effect = if self.permit { "permit" } else { "forbid" };
        let principal = match self.principal {
            0 => "principal".to_owned(),
            1 => "principal == Warden::Agent::\"a\"".to_owned(),
            2 => "principal == Warden::Agent::\"b\"".to_owned(),
            _ => "principal in Warden::AgentType::\"x\"".to_owned(),
        };
        let action = match self.action.0 {
            0 => "action".to_owned(),
            1 => format!("action == Warden::Action::\"t{}\"", self.action.1[0]),
            _ => format!(
                "action in [{}]",
                self.action
                    .1
                    .iter()
                    .map(|t| format!("Warden::Action::\"t{t}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let resource = match self.resource.0 {
            0 => "resource".to_owned(),
            1 => format!("resource == Warden::Tool::\"t{}\"", self.resource.1),
            2 => format!("resource in Warden::Tool::\"t{}\"", self.resource.1),
            _ => "resource is Warden::Tool".to_owned(),
        };
        let k = self.k;
        let when = match self.condition {
            0 => String::new(),
            1 => format!(" when {{ context.arguments has n && context.arguments.n > {k} }}"),
            // Overflows (an evaluation error) when n is large.
            2 => {
                " when { context.arguments has n && context.arguments.n * 4611686018427387904 > 0 }"
                    .to_owned()
            }
            3 => format!(" when {{ context.time.hour < {} }}", k + 12),
            4 => " when { principal.owner == \"o\" }".to_owned(),
            _ => " unless { resource.risk == \"low\" }".to_owned(),
        };
        format!("@id(\"r{i}\")\n{effect}({principal}, {action}, {resource}){when};\n")
    }
}

fn document(rules: &[Rule]) -> String {
    let mut doc = String::from("version: 1\ntools:\n");
    for t in 0..TOOLS {
        doc.push_str(&format!(
            "  - name: t{t}\n    description: tool {t}\n    input_schema:\n      type: object\n      \
             properties:\n        n: {{ type: integer }}\n    scopes: [\"t:call\"]\n    risk: low\n"
        ));
    }
    doc.push_str("cedar: |\n");
    for (i, r) in rules.iter().enumerate() {
        for line in r.cedar(i).lines() {
            doc.push_str("  ");
            doc.push_str(line);
            doc.push('\n');
        }
    }
    doc
}

fn entities(agent: &str, agent_type: &str) -> Entities {
    let mut all = vec![
        Entity::new(
            uid("Agent", agent),
            HashMap::from([
                (
                    "agent_type".to_owned(),
                    RestrictedExpression::new_string(agent_type.to_owned()),
                ),
                (
                    "owner".to_owned(),
                    RestrictedExpression::new_string("o".into()),
                ),
                (
                    "environment".to_owned(),
                    RestrictedExpression::new_string("prod".into()),
                ),
            ]),
            HashSet::from([uid("AgentType", agent_type)]),
        )
        .unwrap(),
        Entity::new_no_attrs(uid("AgentType", agent_type), HashSet::new()),
    ];
    for t in 0..TOOLS {
        all.push(
            Entity::new(
                uid("Tool", &format!("t{t}")),
                HashMap::from([(
                    "risk".to_owned(),
                    RestrictedExpression::new_string(
                        if t % 2 == 0 { "low" } else { "high" }.into(),
                    ),
                )]),
                HashSet::new(),
            )
            .unwrap(),
        );
    }
    Entities::from_entities(all, None).unwrap()
}

/// What a decision is made of: the decision, the rules that decided, the
/// rules that failed.
fn outcome(r: &Response) -> (Decision, BTreeSet<String>, BTreeSet<String>) {
    let reasons = r.diagnostics().reason().map(ToString::to_string).collect();
    let errors = r
        .diagnostics()
        .errors()
        .map(|e| match e {
            cedar_policy::AuthorizationError::PolicyEvaluationError(p) => p.policy_id().to_string(),
        })
        .collect();
    (r.decision(), reasons, errors)
}

fn decide(
    set: &PolicySet,
    q: &Request,
    e: &Entities,
) -> (Decision, BTreeSet<String>, BTreeSet<String>) {
    outcome(&Authorizer::new().is_authorized(q, set, e))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn slices_decide_as_the_whole_set(
        rules in prop::collection::vec(rule(), 0..24),
        calls in prop::collection::vec((0..TOOLS, 0u8..3, prop::option::of(-4i64..4), 0i64..24, any::<bool>()), 1..12),
    ) {
        let policy = Policy::parse(&document(&rules)).unwrap();
        let slices = &policy.cedar;
        let total: usize = (0..TOOLS).map(|t| slices.for_tool(&format!("t{t}")).policies().count()).sum();
        // Rules scoped to one tool are in one slice only.
        prop_assert!(total <= rules.len() * TOOLS);
        for (tool, agent, n, hour, big) in calls {
            let (agent, agent_type) = match agent { 0 => ("a", "x"), 1 => ("b", "y"), _ => ("c", "x") };
            let e = entities(agent, agent_type);
            let mut args = serde_json::Map::new();
            if let Some(n) = n {
                args.insert("n".into(), (if big { n * 1_000_000_000 } else { n }).into());
            }
            let name = format!("t{tool}");
            let context = Context::from_json_value(
                serde_json::json!({
                    "time": {"unix": 0, "hour": hour, "weekday": 1},
                    "user_verified": false,
                    "arguments": args,
                }),
                Some((&policy.cedar_schema, &uid("Action", &name))),
            ).unwrap();
            let q = Request::new(uid("Agent", agent), uid("Action", &name), uid("Tool", &name), context, None).unwrap();
            prop_assert_eq!(
                decide(slices.for_tool(&name), &q, &e),
                decide(slices.whole(), &q, &e),
                "tool {} agent {}", name, agent
            );
        }
    }
}

#[test]
fn a_rule_scoped_to_one_tool_is_in_its_slice_only() {
    let rules = [
        Rule {
            permit: true,
            principal: 0,
            action: (1, vec![1]),
            resource: (0, 0),
            condition: 0,
            k: 0,
        },
        Rule {
            permit: false,
            principal: 0,
            action: (2, vec![2, 3, 2]),
            resource: (0, 0),
            condition: 0,
            k: 0,
        },
        Rule {
            permit: true,
            principal: 0,
            action: (0, vec![0]),
            resource: (1, 4),
            condition: 0,
            k: 0,
        },
        Rule {
            permit: true,
            principal: 1,
            action: (0, vec![0]),
            resource: (0, 0),
            condition: 1,
            k: 0,
        },
        // Names t0 by action and t1 by resource: applies to nothing.
        Rule {
            permit: true,
            principal: 0,
            action: (1, vec![0]),
            resource: (2, 1),
            condition: 0,
            k: 0,
        },
    ];
    let policy = Policy::parse(&document(&rules)).unwrap();
    let ids = |t: &str| -> BTreeSet<String> {
        policy
            .cedar
            .for_tool(t)
            .policies()
            .map(|p| p.annotation("id").unwrap().to_owned())
            .collect()
    };
    let set = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
    assert_eq!(ids("t0"), set(&["r3"]));
    assert_eq!(ids("t1"), set(&["r0", "r3"]));
    assert_eq!(ids("t2"), set(&["r1", "r3"]));
    assert_eq!(ids("t3"), set(&["r1", "r3"]));
    assert_eq!(ids("t4"), set(&["r2", "r3"]));
    // A tool the catalog lacks gets the rules that apply to any tool.
    assert_eq!(ids("nope"), set(&["r3"]));
    assert_eq!(policy.cedar.whole().policies().count(), 5);
}
