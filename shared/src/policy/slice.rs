//! Cedar rules sliced per tool, so that a call evaluates only the rules that
//! can apply to it.
//!
//! Cedar evaluates a rule as `principal-scope && action-scope &&
//! resource-scope && conditions`, stopping at the first false: a rule whose
//! action scope excludes the tool's action, or whose resource scope names
//! another tool, is false for that tool's calls without evaluating anything
//! else, so it can neither permit, forbid nor fail. Leaving it out changes
//! neither the decision nor its diagnostics (the rules that decided, the
//! rules that failed). Every tool has its own action (`Warden::Action::"t"`)
//! and resource (`Warden::Tool::"t"`), and the derived schema gives neither
//! a parent, so a rule applies to tool `t` unless its scopes name another
//! tool's action or resource. A scope naming anything else (an action group
//! a future schema might declare) keeps the rule in every slice. A set with
//! templates is not sliced (every tool gets the whole set).

use std::collections::HashMap;

use cedar_policy::{ActionConstraint, EntityUid, PolicySet, ResourceConstraint};

/// What a slice could not be built from.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tool's name is not a Cedar entity id (it always is for a name that
    /// passed validation).
    #[error("tool {0:?} has no Cedar identifier: {1}")]
    Name(String, String),
    /// Cedar refused a rule in a slice (a duplicate id cannot arise from a
    /// parsed set).
    #[error("rule {0} cannot be added to a slice: {1}")]
    Add(String, String),
}

/// A rule set, whole and split by tool.
#[derive(Debug, Clone)]
pub struct Slices {
    /// Every rule (the reference the slices are tested against).
    whole: PolicySet,
    /// Per tool name, the rules that can apply to its calls.
    by_tool: HashMap<String, PolicySet>,
    /// The rules that can apply to a tool the catalog does not have.
    other: PolicySet,
}

/// `Warden::<ty>::"<id>"`.
fn uid(ty: &str, id: &str) -> Result<EntityUid, String> {
    let quoted = serde_json::to_string(id).map_err(|e| e.to_string())?;
    format!("Warden::{ty}::{quoted}")
        .parse()
        .map_err(|e: cedar_policy::ParseErrors| e.to_string())
}

/// The tool an action or resource uid stands for, if it is one of ours.
fn tool_of<'a>(u: &'a EntityUid, ty: &str, tools: &HashMap<String, usize>) -> Option<&'a str> {
    let id = u.id().unescaped();
    (u.type_name().to_string() == ty && tools.contains_key(id)).then_some(id)
}

/// Which tools (by index) a rule can apply to; `None`: every tool.
fn applies(p: &cedar_policy::Policy, tools: &HashMap<String, usize>) -> Option<Vec<usize>> {
    let named = |us: &[EntityUid], ty: &str| -> Option<Vec<usize>> {
        let mut out = Vec::with_capacity(us.len());
        for u in us {
            // Anything but a tool of the catalog may have members: keep the
            // rule everywhere.
            out.push(tools[tool_of(u, ty, tools)?]);
        }
        Some(out)
    };
    let by_action = match p.action_constraint() {
        ActionConstraint::Any => None,
        ActionConstraint::Eq(u) => named(std::slice::from_ref(&u), "Warden::Action"),
        ActionConstraint::In(us) => named(&us, "Warden::Action"),
    };
    let by_resource = match p.resource_constraint() {
        ResourceConstraint::Eq(u) | ResourceConstraint::In(u) => {
            named(std::slice::from_ref(&u), "Warden::Tool")
        }
        ResourceConstraint::Any | ResourceConstraint::Is(_) | ResourceConstraint::IsIn(_, _) => {
            None
        }
    };
    match (by_action, by_resource) {
        (None, r) => r,
        (a, None) => a,
        (Some(a), Some(r)) => Some(a.into_iter().filter(|t| r.contains(t)).collect()),
    }
}

impl Slices {
    /// Slices `whole` over the tools named `tools`.
    pub fn new<'a>(
        whole: PolicySet,
        tools: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, Error> {
        let names: Vec<&str> = tools.into_iter().collect();
        let index: HashMap<String, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| ((*n).to_owned(), i))
            .collect();
        for n in &names {
            uid("Action", n).map_err(|e| Error::Name((*n).to_owned(), e))?;
        }
        let mut sets = vec![PolicySet::new(); names.len()];
        let mut other = PolicySet::new();
        if whole.templates().next().is_some() {
            return Ok(Self {
                by_tool: names
                    .iter()
                    .map(|n| ((*n).to_owned(), whole.clone()))
                    .collect(),
                other: whole.clone(),
                whole,
            });
        }
        let add = |set: &mut PolicySet, p: &cedar_policy::Policy| {
            set.add(p.clone())
                .map_err(|e| Error::Add(p.id().to_string(), e.to_string()))
        };
        for p in whole.policies() {
            match applies(p, &index) {
                None => {
                    for s in &mut sets {
                        add(s, p)?;
                    }
                    add(&mut other, p)?;
                }
                Some(ts) => {
                    for t in ts {
                        // `in [a, a]` names a tool twice.
                        if sets[t].policy(p.id()).is_none() {
                            add(&mut sets[t], p)?;
                        }
                    }
                }
            }
        }
        Ok(Self {
            by_tool: names.iter().map(|n| (*n).to_owned()).zip(sets).collect(),
            other,
            whole,
        })
    }

    /// The rules that can apply to a call of the tool named `tool`.
    pub fn for_tool(&self, tool: &str) -> &PolicySet {
        self.by_tool.get(tool).unwrap_or(&self.other)
    }

    /// Every rule.
    pub fn whole(&self) -> &PolicySet {
        &self.whole
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.whole.is_empty()
    }
}

#[cfg(test)]
mod tests;
