//! Stage 6: human approval. A call needs one when its tool's risk is
//! `high` (or `critical` with a quorum of at least two in the document), or
//! when one of the document's `approval_rules` — Cedar permits over the
//! same request the rules of stage 4 allowed — matches it; the quorum is
//! the tool's `approval.approvals` or a matching rule's `@approvals`,
//! whichever is larger. Approvals held by the control plane (bound to the
//! exact call, single-use, decided by people) are not built yet: until
//! they are, a call that needs one is refused with `APPROVAL_REQUIRED`,
//! naming why, the quorum and the deadline.

use cedar_policy::{Authorizer, Decision};
use warden_shared::policy::Risk;
use warden_shared::refusal::Reason;

use super::authorize::Authorized;
use super::catalog::ToolEntry;
use super::{Refusal, Stage};
use crate::state::held::HeldPolicy;

/// Why a call needs approval, and from how many people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needed {
    /// Distinct people.
    pub approvals: u32,
    /// Why: `risk high`, or the matching rules' ids.
    pub because: Vec<String>,
}

/// Whether the call needs approval (and why), from its tool's risk and the
/// approval rules. A rule that fails to evaluate counts as matching: the
/// call waits for a person rather than run unasked.
pub fn needed(
    policy: &HeldPolicy,
    tool: &ToolEntry,
    risk: Risk,
    authorized: &Authorized,
) -> Option<Needed> {
    let mut n = Needed {
        approvals: 0,
        because: Vec::new(),
    };
    if risk >= Risk::High {
        n.approvals = tool.spec.approvals();
        n.because.push(format!("risk {}", risk.as_str()));
    }
    let rules = &policy.policy.approval_rules;
    if !rules.is_empty() {
        let response =
            Authorizer::new().is_authorized(&authorized.request, rules, &authorized.entities);
        let name_of = |id: &cedar_policy::PolicyId| {
            rules
                .annotation(id, "id")
                .map_or_else(|| id.to_string(), str::to_owned)
        };
        let quorum_of = |id: &cedar_policy::PolicyId| {
            rules
                .annotation(id, "approvals")
                .and_then(|a| a.parse().ok())
                .unwrap_or(1)
                .max(tool.spec.approvals())
        };
        for e in response.diagnostics().errors() {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(p) = e;
            tracing::warn!(tool = %tool.spec.name, rule = %name_of(p.policy_id()), "an approval rule failed to evaluate; the call needs approval");
            n.approvals = n.approvals.max(quorum_of(p.policy_id()));
            n.because
                .push(format!("evaluation error in {}", name_of(p.policy_id())));
        }
        if response.decision() == Decision::Allow {
            for id in response.diagnostics().reason() {
                n.approvals = n.approvals.max(quorum_of(id));
                n.because.push(name_of(id));
            }
        }
    }
    (n.approvals > 0).then_some(n)
}

/// Runs the stage.
pub fn check(
    policy: &HeldPolicy,
    tool: &ToolEntry,
    risk: Risk,
    authorized: &Authorized,
) -> Result<(), Refusal> {
    let Some(n) = needed(policy, tool, risk, authorized) else {
        return Ok(());
    };
    let because = n.because.join(", ");
    Err(Refusal::at(
        Stage::Approve,
        Reason::ApprovalRequired,
        format!(
            "{} needs {} human approval{} within {} s ({because}), which this deployment cannot grant yet",
            tool.spec.name,
            n.approvals,
            if n.approvals == 1 { "" } else { "s" },
            tool.spec.approval_deadline().as_secs(),
        ),
    )
    .rule(because))
}
