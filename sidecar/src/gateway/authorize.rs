//! Stage 4: may this session make this call? The token's scopes must cover
//! every scope the tool requires; the agent's identity lists and the
//! document's overrides must leave it the tool; the Cedar rules must permit
//! it in context (time, user, tier, arguments); and a critical tool never
//! runs automatically.

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityUid, Request, RestrictedExpression,
};
use time::OffsetDateTime;
use tonic::Code;
use warden_shared::policy::Risk;
use warden_shared::proto::v1 as pb;
use warden_shared::refusal::Reason;
use warden_shared::scope::Scope;
use warden_shared::token::Claims;

use super::catalog::{ToolEntry, uid};
use super::{Denial, Stage};
use crate::mesh::held::HeldPolicy;

fn refuse(reason: Reason, message: impl Into<String>) -> Denial {
    Denial::new(Stage::Authorize, Code::PermissionDenied, reason, message)
}

/// Who is calling: the agent (as pushed) and the session (its token).
#[derive(Debug)]
pub struct Caller<'a> {
    /// The agent's id.
    pub agent_id: &'a str,
    /// The agent's standing, with its type, owner and environment.
    pub standing: &'a pb::StandingPart,
    /// The session's claims.
    pub claims: &'a Claims,
}

/// Whether the session's scopes cover all of `tool`'s.
pub fn scopes_cover(claims: &Claims, tool: &ToolEntry) -> Result<(), String> {
    let held: Vec<Scope> = claims
        .scopes()
        .filter_map(|s| Scope::parse(s).ok())
        .collect();
    match tool
        .scopes
        .iter()
        .find(|need| !held.iter().any(|h| h.covers(need)))
    {
        Some(missing) => Err(missing.to_string()),
        None => Ok(()),
    }
}

/// Runs the stage.
pub fn check(
    policy: &HeldPolicy,
    tool: &ToolEntry,
    caller: &Caller<'_>,
    args: &serde_json::Value,
    now: OffsetDateTime,
) -> Result<(), Denial> {
    let name = &tool.spec.name;
    if let Err(missing) = scopes_cover(caller.claims, tool) {
        return Err(refuse(
            Reason::ScopeMissing,
            format!("{name} needs scope {missing}, which this session was not granted"),
        )
        .rule(format!("scope {missing}")));
    }
    let Some(risk) = tool.risk else {
        return Err(refuse(
            Reason::ToolDenied,
            format!("agent {} may not call {name}", caller.agent_id),
        )
        .rule("identity or override"));
    };
    cedar(policy, tool, risk, caller, args, now)?;
    if risk == Risk::Critical {
        return Err(refuse(
            Reason::ToolCritical,
            format!("{name} is critical: it never runs automatically"),
        )
        .rule("risk critical"));
    }
    Ok(())
}

fn entities(
    tool: &ToolEntry,
    risk: Risk,
    caller: &Caller<'_>,
) -> Result<(EntityUid, Entities), String> {
    let s = caller.standing;
    let agent = uid("Agent", caller.agent_id)?;
    let agent_type = uid("AgentType", &s.agent_type)?;
    let attrs = HashMap::from([
        (
            "agent_type".to_owned(),
            RestrictedExpression::new_string(s.agent_type.clone()),
        ),
        (
            "owner".to_owned(),
            RestrictedExpression::new_string(s.owner.clone()),
        ),
        (
            "environment".to_owned(),
            RestrictedExpression::new_string(s.environment.clone()),
        ),
    ]);
    let principal = Entity::new(agent.clone(), attrs, HashSet::from([agent_type.clone()]))
        .map_err(|e| e.to_string())?;
    let resource = Entity::new(
        tool.resource.clone(),
        HashMap::from([(
            "risk".to_owned(),
            RestrictedExpression::new_string(risk.as_str().to_owned()),
        )]),
        HashSet::new(),
    )
    .map_err(|e| e.to_string())?;
    let all = [
        principal,
        Entity::new_no_attrs(agent_type, HashSet::new()),
        resource,
    ];
    let entities = Entities::from_entities(all, None).map_err(|e| e.to_string())?;
    Ok((agent, entities))
}

fn context(
    policy: &HeldPolicy,
    tool: &ToolEntry,
    caller: &Caller<'_>,
    args: &serde_json::Value,
    now: OffsetDateTime,
) -> Result<Context, String> {
    let mut ctx = serde_json::json!({
        "time": {
            "unix": now.unix_timestamp(),
            "hour": now.hour(),
            "weekday": now.weekday().number_from_monday(),
        },
        "arguments": warden_shared::policy::cedar::arguments(&tool.spec.input_schema, args),
    });
    if let Some(user) = caller.claims.user_id() {
        ctx["user"] = user.into();
    }
    if let Some(tier) = caller.claims.ctx.get("tier") {
        ctx["tier"] = tier.as_str().into();
    }
    Context::from_json_value(ctx, Some((&policy.policy.cedar_schema, &tool.action)))
        .map_err(|e| e.to_string())
}

fn cedar(
    policy: &HeldPolicy,
    tool: &ToolEntry,
    risk: Risk,
    caller: &Caller<'_>,
    args: &serde_json::Value,
    now: OffsetDateTime,
) -> Result<(), Denial> {
    let name = &tool.spec.name;
    // Fail closed: a request that cannot be built is a denial.
    let broken = |e: String| {
        tracing::error!(tool = %name, error = %e, "cannot build the policy request");
        refuse(
            Reason::PolicyDenied,
            format!("the policy request for {name} could not be built; see the sidecar log"),
        )
        .rule("request")
    };
    let (principal, entities) = entities(tool, risk, caller).map_err(broken)?;
    let ctx = context(policy, tool, caller, args, now).map_err(broken)?;
    let request = Request::new(
        principal,
        tool.action.clone(),
        tool.resource.clone(),
        ctx,
        None,
    )
    .map_err(|e| broken(e.to_string()))?;
    let set = &policy.policy.cedar;
    let response = Authorizer::new().is_authorized(&request, set, &entities);
    for e in response.diagnostics().errors() {
        tracing::warn!(tool = %name, error = %e, "a policy rule failed to evaluate (ignored)");
    }
    if response.decision() == Decision::Allow {
        return Ok(());
    }
    // The forbids that fired, by their @id annotation where they have one.
    let rules: Vec<String> = response
        .diagnostics()
        .reason()
        .map(|id| {
            set.annotation(id, "id")
                .map_or_else(|| id.to_string(), str::to_owned)
        })
        .collect();
    let rule = if rules.is_empty() {
        "no permit (default deny)".to_owned()
    } else {
        rules.join(", ")
    };
    Err(refuse(
        Reason::PolicyDenied,
        format!("the policy forbids this call to {name} ({rule})"),
    )
    .rule(rule))
}
