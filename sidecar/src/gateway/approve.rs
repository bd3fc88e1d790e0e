//! Stage 6: human approval of high-risk calls. Approvals held by the
//! control plane (bound to the exact call, single-use, decided by a human)
//! are a later issue; until then a `high` tool is refused with
//! `APPROVAL_REQUIRED`, never run. (`critical` tools never reach this stage:
//! authorization refuses them.)

use warden_shared::policy::Risk;
use warden_shared::refusal::Reason;

use super::{Refusal, Stage};

/// Runs the stage.
pub fn check(tool: &str, risk: Risk) -> Result<(), Refusal> {
    if risk >= Risk::High {
        return Err(Refusal::at(
            Stage::Approve,
            Reason::ApprovalRequired,
            format!("{tool} is high-risk: it needs a human approval, which this deployment cannot grant yet"),
        )
        .rule(format!("risk {}", risk.as_str())));
    }
    Ok(())
}
