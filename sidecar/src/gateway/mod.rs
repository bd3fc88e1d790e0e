//! The tool gateway: every tool call runs one ordered pipeline
//! ([`pipeline`]); each stage can stop it with a typed [`Denial`] that the
//! agent receives as a gRPC status and the record keeps.

pub mod approve;
pub mod authenticate;
pub mod authorize;
pub mod execute;
pub mod inspect;
pub mod limit;
pub mod pipeline;
pub mod record;
pub mod validate;

pub use crate::policy::catalog;

use tonic::{Code, Status};
use warden_shared::proto::v1 as pb;
use warden_shared::refusal::{Reason, denial};

/// The stages, in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Token, revocation, key binding, session limits.
    Authenticate,
    /// The tool exists; the arguments are bounded JSON matching its schema.
    Validate,
    /// Attacks hidden in argument strings.
    InspectInput,
    /// Scopes, identity lists, Cedar rules, risk.
    Authorize,
    /// Rate limits.
    Limit,
    /// Human approval of high-risk calls.
    Approve,
    /// The upstream call.
    Execute,
    /// Redaction of what the upstream returned.
    InspectOutput,
}

impl Stage {
    /// The stage's name on the wire and in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authenticate => "authenticate",
            Self::Validate => "validate",
            Self::InspectInput => "inspect_input",
            Self::Authorize => "authorize",
            Self::Limit => "limit",
            Self::Approve => "approve",
            Self::Execute => "execute",
            Self::InspectOutput => "inspect_output",
        }
    }
}

/// Why a stage stopped a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The stage that refused.
    pub stage: Stage,
    /// The gRPC code the agent receives.
    pub code: Code,
    /// The stable reason.
    pub reason: Reason,
    /// The rule that decided, if one did (a Cedar policy id, a limit).
    pub rule: String,
    /// For the agent: what is wrong, without internals or secrets.
    pub message: String,
    /// When retrying later can succeed: after this long.
    pub retry_after_ms: Option<u64>,
}

impl Denial {
    /// A denial without a rule.
    pub fn new(stage: Stage, code: Code, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            stage,
            code,
            reason,
            rule: String::new(),
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// Names the rule that decided.
    pub fn rule(mut self, rule: impl Into<String>) -> Self {
        self.rule = rule.into();
        self
    }

    /// The agent-facing status (ErrorInfo: reason; metadata: stage, rule,
    /// retry_after_ms).
    pub fn to_status(&self) -> Status {
        denial(
            self.code,
            self.reason,
            self.stage.as_str(),
            &self.rule,
            self.retry_after_ms,
            self.message.clone(),
        )
    }

    /// The wire form inside an `AuthorizeResponse`.
    pub fn to_proto(&self) -> pb::Denial {
        pb::Denial {
            stage: self.stage.as_str().to_owned(),
            reason: self.reason.as_str().to_owned(),
            rule: self.rule.clone(),
            message: self.message.clone(),
            retry_after_ms: self.retry_after_ms.unwrap_or(0),
        }
    }
}
