//! The tool catalog as this sidecar enforces it, compiled once per pushed
//! policy: per tool, its compiled input schema, parsed scopes, effective
//! risk for this agent (or that the agent may not call it), and the Cedar
//! identifiers of its action and resource.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::EntityUid;
use warden_shared::policy::{InputSchema, Policy, Risk, Tool};
use warden_shared::scope::Scope;

/// One tool of the catalog.
#[derive(Debug)]
pub struct ToolEntry {
    /// The tool as the document defines it.
    pub spec: Tool,
    /// Its compiled input schema.
    pub schema: InputSchema,
    /// The scopes a session needs (all of them).
    pub scopes: Vec<Scope>,
    /// The effective risk for this agent; `None`: the agent may not call
    /// the tool (its identity's lists or the document's overrides).
    pub risk: Option<Risk>,
    /// `Warden::Action::"<tool>"`.
    pub action: EntityUid,
    /// `Warden::Tool::"<tool>"`.
    pub resource: EntityUid,
    /// The input schema as JSON text (for `ListTools`).
    pub input_schema_json: String,
}

/// Every tool of the document, by name.
#[derive(Debug, Default)]
pub struct Catalog {
    tools: HashMap<String, Arc<ToolEntry>>,
}

/// A Cedar entity uid `Warden::<ty>::"<id>"`.
pub fn uid(ty: &str, id: &str) -> Result<EntityUid, String> {
    let quoted = serde_json::to_string(id).map_err(|e| e.to_string())?;
    EntityUid::from_str(&format!("Warden::{ty}::{quoted}")).map_err(|e| e.to_string())
}

impl Catalog {
    /// Compiles the document's tools; `effective` are this agent's tools
    /// with their risk (as the control plane computed them).
    pub fn compile(policy: &Policy, effective: &BTreeMap<String, Risk>) -> Result<Self, String> {
        let mut tools = HashMap::with_capacity(policy.document.tools.len());
        for t in &policy.document.tools {
            let fail = |m: String| format!("tool {:?}: {m}", t.name);
            let entry = ToolEntry {
                schema: InputSchema::compile(&t.input_schema).map_err(fail)?,
                scopes: Scope::parse_all(&t.scopes).map_err(|e| fail(e.to_string()))?,
                risk: effective.get(&t.name).copied(),
                action: uid("Action", &t.name).map_err(fail)?,
                resource: uid("Tool", &t.name).map_err(fail)?,
                input_schema_json: serde_json::to_string(&t.input_schema)
                    .map_err(|e| fail(e.to_string()))?,
                spec: t.clone(),
            };
            tools.insert(t.name.clone(), Arc::new(entry));
        }
        Ok(Self { tools })
    }

    /// The tool named `name`, if the document has one.
    pub fn get(&self, name: &str) -> Option<&Arc<ToolEntry>> {
        self.tools.get(name)
    }

    /// Every tool, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ToolEntry>> {
        let mut all: Vec<&Arc<ToolEntry>> = self.tools.values().collect();
        all.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        all.into_iter()
    }
}
