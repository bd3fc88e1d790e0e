//! Stage 4: may this session make this call? The token's scopes must cover
//! every scope the tool requires; the agent's identity lists and the
//! document's overrides must leave it the tool; the Cedar rules must permit
//! it in context (time, user, tier, arguments); and a critical tool never
//! runs automatically.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityUid, PolicySet, Request,
    RestrictedExpression,
};
use time::OffsetDateTime;
use warden_shared::policy::Risk;
use warden_shared::refusal::Reason;
use warden_shared::scope::Scope;
use warden_shared::token::Claims;

use super::catalog::{ToolEntry, uid};
use super::{Refusal, Stage};
use crate::state::held::{HeldPolicy, Standing};

fn refuse(reason: Reason, message: impl Into<String>) -> Refusal {
    Refusal::at(Stage::Authorize, reason, message)
}

/// Who is calling: the agent (as pushed) and the session (its token).
#[derive(Debug)]
pub struct Caller<'a> {
    /// The agent's id.
    pub agent_id: &'a str,
    /// The agent's standing, with its type, owner and environment.
    pub standing: &'a Standing,
    /// The session's claims.
    pub claims: &'a Claims,
}

/// Cedar entities for one (policy version, standing digest).
type EntityCache = Option<((u64, u64), Arc<Entities>)>;

/// A call the rules allowed: its Cedar request and entities, for the
/// approval rules (stage 6) to read the same call.
#[derive(Debug)]
pub struct Authorized {
    /// The request as the rules saw it.
    pub request: Request,
    /// The entities it was decided with.
    pub entities: Arc<Entities>,
}

/// The stage, with what it keeps between calls: the Cedar entities of the
/// policy and standing in force, built once.
#[derive(Debug, Default)]
pub struct Authorization {
    entities: Mutex<EntityCache>,
}

impl Authorization {
    /// Runs the stage for `caller`'s call of `tool` with the validated
    /// `args`: the arguments as the rules see them (a value they would not
    /// see faithfully refuses the call rather than let it be decided
    /// without it), then [`check`].
    pub fn check(
        &self,
        policy: &HeldPolicy,
        tool: &ToolEntry,
        caller: &Caller<'_>,
        args: &serde_json::Value,
        now: OffsetDateTime,
    ) -> Result<Authorized, Refusal> {
        let projected = warden_shared::policy::cedar::arguments(&tool.spec.input_schema, args)
            .map_err(|e| {
                Refusal::at(
                    Stage::Validate,
                    Reason::ArgumentsInvalid,
                    format!("arguments of {}: {e}", tool.spec.name),
                )
                .rule("policy representation")
            })?;
        let entities = self.entities(policy, caller)?;
        let request = check(policy, &entities, tool, caller, &projected, now)?;
        Ok(Authorized { request, entities })
    }

    /// The Cedar entities for this policy and standing, built once.
    fn entities(&self, policy: &HeldPolicy, caller: &Caller<'_>) -> Result<Arc<Entities>, Refusal> {
        let key = (policy.version, caller.standing.digest);
        let mut cache = self.entities.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, e)) = cache.as_ref()
            && *k == key
        {
            return Ok(Arc::clone(e));
        }
        let e = Arc::new(
            entities(policy, caller.agent_id, caller.standing).map_err(|e| {
                tracing::error!(error = %e, "cannot build the policy entities");
                refuse(
                    Reason::PolicyDenied,
                    "the policy entities could not be built; see the sidecar log",
                )
                .rule("entities")
            })?,
        );
        *cache = Some((key, Arc::clone(&e)));
        Ok(e)
    }
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

/// Runs the stage; `args` are the arguments as projected for the policy
/// (see `warden_shared::policy::cedar::arguments`). Returns the request
/// the rules allowed. Only the rules that can apply to the tool are
/// evaluated (its slice, `warden_shared::policy::slice`).
pub fn check(
    policy: &HeldPolicy,
    entities: &Entities,
    tool: &ToolEntry,
    caller: &Caller<'_>,
    args: &serde_json::Value,
    now: OffsetDateTime,
) -> Result<Request, Refusal> {
    let rules = policy.policy.cedar.for_tool(&tool.spec.name);
    check_with(rules, entities, tool, caller, args, now)
}

/// [`check`] against the given `rules`: the tool's slice, or the whole set
/// (the reference the slices are tested and benchmarked against).
pub fn check_with(
    rules: &PolicySet,
    entities: &Entities,
    tool: &ToolEntry,
    caller: &Caller<'_>,
    args: &serde_json::Value,
    now: OffsetDateTime,
) -> Result<Request, Refusal> {
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
    if tool.spec.verified_user && !caller.claims.user_verified() {
        return Err(refuse(
            Reason::UserNotVerified,
            format!(
                "{name} acts only for a user proven by an identity provider; start the session with the user's token (user_token)"
            ),
        )
        .rule("verified_user"));
    }
    let request = cedar(rules, entities, tool, caller, args, now)?;
    // A critical tool goes on (to its approvals) only with a quorum of at
    // least two people in the document.
    if risk == Risk::Critical && !tool.spec.critical_with_quorum() {
        return Err(refuse(
            Reason::ToolCritical,
            format!("{name} is critical: it never runs automatically"),
        )
        .rule("risk critical"));
    }
    Ok(request)
}

/// The Cedar entities of one agent under one policy: the agent (with its
/// type, owner and environment), its type, and every tool it may call
/// (with its effective risk). Built once per policy and standing, not per
/// call.
pub fn entities(
    policy: &HeldPolicy,
    agent_id: &str,
    standing: &Standing,
) -> Result<Entities, String> {
    let agent_type = uid("AgentType", &standing.agent_type)?;
    let attrs = HashMap::from([
        (
            "agent_type".to_owned(),
            RestrictedExpression::new_string(standing.agent_type.clone()),
        ),
        (
            "owner".to_owned(),
            RestrictedExpression::new_string(standing.owner.clone()),
        ),
        (
            "environment".to_owned(),
            RestrictedExpression::new_string(standing.environment.clone()),
        ),
    ]);
    let principal = Entity::new(
        uid("Agent", agent_id)?,
        attrs,
        HashSet::from([agent_type.clone()]),
    )
    .map_err(|e| e.to_string())?;
    let mut all = vec![principal, Entity::new_no_attrs(agent_type, HashSet::new())];
    for t in policy.catalog.iter() {
        let Some(risk) = t.risk else { continue };
        let e = Entity::new(
            t.resource.clone(),
            HashMap::from([(
                "risk".to_owned(),
                RestrictedExpression::new_string(risk.as_str().to_owned()),
            )]),
            HashSet::new(),
        )
        .map_err(|e| e.to_string())?;
        all.push(e);
    }
    Entities::from_entities(all, None).map_err(|e| e.to_string())
}

/// A JSON value (already projected onto the schema's shape) as a Cedar
/// expression; `null` and non-integral numbers have none.
fn value(v: &serde_json::Value) -> Option<RestrictedExpression> {
    use serde_json::Value as V;
    match v {
        V::String(s) => Some(RestrictedExpression::new_string(s.clone())),
        V::Number(n) => n.as_i64().map(RestrictedExpression::new_long),
        V::Bool(b) => Some(RestrictedExpression::new_bool(*b)),
        V::Array(a) => Some(RestrictedExpression::new_set(a.iter().filter_map(value))),
        V::Object(o) => RestrictedExpression::new_record(
            o.iter()
                .filter_map(|(k, v)| value(v).map(|x| (k.clone(), x))),
        )
        .ok(),
        V::Null => None,
    }
}

/// The request context, built directly (parsing JSON against the schema
/// cost most of a call): the arguments were projected onto the derived
/// schema's types, and the rules were type-checked against it.
fn context(
    caller: &Caller<'_>,
    args: &serde_json::Value,
    now: OffsetDateTime,
) -> Result<Context, String> {
    let time = RestrictedExpression::new_record([
        (
            "unix".to_owned(),
            RestrictedExpression::new_long(now.unix_timestamp()),
        ),
        (
            "hour".to_owned(),
            RestrictedExpression::new_long(i64::from(now.hour())),
        ),
        (
            "weekday".to_owned(),
            RestrictedExpression::new_long(i64::from(now.weekday().number_from_monday())),
        ),
    ])
    .map_err(|e| e.to_string())?;
    let arguments = value(args)
        .ok_or("arguments are not a record")
        .map_err(str::to_owned)?;
    let mut pairs = vec![
        ("time".to_owned(), time),
        ("arguments".to_owned(), arguments),
    ];
    if let Some(user) = caller.claims.user_id() {
        pairs.push((
            "user".to_owned(),
            RestrictedExpression::new_string(user.to_owned()),
        ));
    }
    let verified = caller.claims.user_verified();
    pairs.push((
        "user_verified".to_owned(),
        RestrictedExpression::new_bool(verified),
    ));
    if let Some(tier) = caller.claims.tier() {
        pairs.push((
            "tier".to_owned(),
            RestrictedExpression::new_string(tier.to_owned()),
        ));
    }
    if let Some(d) = caller.claims.usr.as_ref().filter(|_| verified) {
        pairs.push((
            "groups".to_owned(),
            RestrictedExpression::new_set(
                d.groups
                    .iter()
                    .map(|g| RestrictedExpression::new_string(g.clone())),
            ),
        ));
        if let Some(email) = &d.email {
            pairs.push((
                "email".to_owned(),
                RestrictedExpression::new_string(email.clone()),
            ));
        }
    }
    Context::from_pairs(pairs).map_err(|e| e.to_string())
}

/// The agent's entity id, parsed once per thread (a sidecar serves one
/// agent) rather than on every call.
fn principal(agent_id: &str) -> Result<EntityUid, String> {
    thread_local! {
        static PRINCIPAL: RefCell<Option<(String, EntityUid)>> = const { RefCell::new(None) };
    }
    PRINCIPAL.with_borrow_mut(|held| {
        if let Some((id, uid)) = held.as_ref()
            && id == agent_id
        {
            return Ok(uid.clone());
        }
        let parsed = uid("Agent", agent_id)?;
        *held = Some((agent_id.to_owned(), parsed.clone()));
        Ok(parsed)
    })
}

fn cedar(
    set: &PolicySet,
    entities: &Entities,
    tool: &ToolEntry,
    caller: &Caller<'_>,
    args: &serde_json::Value,
    now: OffsetDateTime,
) -> Result<Request, Refusal> {
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
    let principal = principal(caller.agent_id).map_err(broken)?;
    let ctx = context(caller, args, now).map_err(broken)?;
    let request = Request::new(
        principal,
        tool.action.clone(),
        tool.resource.clone(),
        ctx,
        None,
    )
    .map_err(|e| broken(e.to_string()))?;
    let response = Authorizer::new().is_authorized(&request, set, entities);
    // Fail closed: Cedar skips a rule that errors (an overflow, a missing
    // attribute), and a skipped forbid would let the call through.
    let name_of = |id: &cedar_policy::PolicyId| {
        set.annotation(id, "id")
            .map_or_else(|| id.to_string(), str::to_owned)
    };
    // Sorted: Cedar reports them in no particular order.
    let mut failed: Vec<String> = response
        .diagnostics()
        .errors()
        .map(|e| match e {
            cedar_policy::AuthorizationError::PolicyEvaluationError(p) => name_of(p.policy_id()),
        })
        .collect();
    failed.sort();
    if !failed.is_empty() {
        // The error text can hold argument values: log the rule ids only.
        tracing::warn!(tool = %name, rules = ?failed, "policy rules failed to evaluate; refusing");
        return Err(refuse(
            Reason::PolicyDenied,
            format!("a policy rule could not be evaluated for this call to {name}"),
        )
        .rule(format!("evaluation error in {}", failed.join(", "))));
    }
    if response.decision() == Decision::Allow {
        return Ok(request);
    }
    // The forbids that fired, by their @id annotation where they have one.
    let mut rules: Vec<String> = response.diagnostics().reason().map(name_of).collect();
    rules.sort();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_principal_is_the_agent_that_calls_whichever_called_before() {
        for id in ["a1", "a2", "a2", "a1", "agent \"quoted\"::x"] {
            let p = principal(id).unwrap();
            assert_eq!(p, uid("Agent", id).unwrap());
            assert_eq!(p.id().unescaped(), id);
        }
    }
}
