//! Typed refusals on the wire: every refusal is a gRPC status whose details
//! carry a `google.rpc.ErrorInfo` with a stable machine-readable reason in
//! domain [`DOMAIN`], so callers (and tests) branch on the reason, never on
//! the message text.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every Warden refusal.
pub const DOMAIN: &str = "warden.dev";

macro_rules! reasons {
    ($($(#[$m:meta])* $v:ident = $s:literal,)*) => {
        /// Stable reasons carried in `ErrorInfo.reason`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason { $($(#[$m])* $v,)* }
        impl Reason {
            /// The wire form, e.g. `JOIN_TOKEN_USED`.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s,)* }
            }

            /// The reason whose wire form is `s`, if there is one.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(Self::$v),)* _ => None }
            }
        }
    };
}

reasons! {
    /// A request field is missing or malformed.
    InvalidArgument = "INVALID_ARGUMENT",
    /// The request message is larger than this API accepts.
    RequestTooLarge = "REQUEST_TOO_LARGE",
    /// The request is not a valid protobuf message for the method (a string
    /// field that is not UTF-8, a truncated field, no message at all).
    RequestMalformed = "REQUEST_MALFORMED",
    /// The join token is unknown.
    JoinTokenUnknown = "JOIN_TOKEN_UNKNOWN",
    /// The join token was already used.
    JoinTokenUsed = "JOIN_TOKEN_USED",
    /// The join token has expired.
    JoinTokenExpired = "JOIN_TOKEN_EXPIRED",
    /// The join token belongs to another agent.
    JoinTokenWrongAgent = "JOIN_TOKEN_WRONG_AGENT",
    /// The CSR cannot be parsed or its signature is wrong.
    CsrMalformed = "CSR_MALFORMED",
    /// The CSR asks for an identity other than the caller's.
    CsrIdentityMismatch = "CSR_IDENTITY_MISMATCH",
    /// The call needs a client certificate and none was presented.
    NoClientCertificate = "NO_CLIENT_CERTIFICATE",
    /// The caller's certificate names a principal not allowed here.
    WrongPrincipal = "WRONG_PRINCIPAL",
    /// The agent does not exist.
    AgentUnknown = "AGENT_UNKNOWN",
    /// The agent already exists.
    AgentExists = "AGENT_EXISTS",
    /// The agent is suspended.
    AgentSuspended = "AGENT_SUSPENDED",
    /// The agent is revoked.
    AgentRevoked = "AGENT_REVOKED",
    /// The agent's identity record has expired.
    AgentExpired = "AGENT_EXPIRED",
    /// A revoked agent cannot change state again.
    AgentStateFinal = "AGENT_STATE_FINAL",
    /// No requested scope is within the agent's allowed scopes.
    ScopeNotAllowed = "SCOPE_NOT_ALLOWED",
    /// The agent already has its maximum number of open sessions.
    SessionLimit = "SESSION_LIMIT",
    /// The session is unknown, ended or belongs to another agent.
    SessionUnknown = "SESSION_UNKNOWN",
    /// The session was revoked by an admin.
    SessionRevoked = "SESSION_REVOKED",
    /// No bearer token was presented.
    TokenMissing = "TOKEN_MISSING",
    /// The token is not a well-formed compact JWS of the expected type.
    TokenMalformed = "TOKEN_MALFORMED",
    /// The token's signature does not verify against the JWKS.
    TokenBadSignature = "TOKEN_BAD_SIGNATURE",
    /// The token has expired.
    TokenExpired = "TOKEN_EXPIRED",
    /// The token was issued for another audience.
    TokenWrongAudience = "TOKEN_WRONG_AUDIENCE",
    /// The token was issued by another issuer.
    TokenWrongIssuer = "TOKEN_WRONG_ISSUER",
    /// The token was issued in the future (clock skew beyond the leeway).
    TokenNotYetValid = "TOKEN_NOT_YET_VALID",
    /// The token is bound (`cnf`) to another certificate.
    TokenKeyBindingMismatch = "TOKEN_KEY_BINDING_MISMATCH",
    /// The request lacks the agent API metadata header.
    AgentHeaderMissing = "AGENT_HEADER_MISSING",
    /// The sidecar holds no valid certificate (not enrolled, or lapsed).
    NoIdentity = "NO_IDENTITY",
    /// The sidecar holds no policy from the control plane yet.
    PolicyNotLoaded = "POLICY_NOT_LOADED",
    /// The sidecar has been out of contact longer than `max_policy_age`.
    PolicyStale = "POLICY_STALE",
    /// The control plane could not be reached.
    ControlPlaneUnavailable = "CONTROL_PLANE_UNAVAILABLE",
    /// The latest policy version is not the one the caller expected.
    PolicyVersionConflict = "POLICY_VERSION_CONFLICT",
    /// No such policy version (or none applied yet).
    PolicyVersionUnknown = "POLICY_VERSION_UNKNOWN",
    /// An internal failure; details are in the server log.
    Internal = "INTERNAL",
    /// The session has made its `max_tool_calls` calls.
    ToolCallLimit = "TOOL_CALL_LIMIT",
    /// No tool of that name in the policy in force.
    ToolUnknown = "TOOL_UNKNOWN",
    /// The arguments are not a JSON object.
    ArgumentsNotJson = "ARGUMENTS_NOT_JSON",
    /// The arguments are larger than the tool allows.
    ArgumentsTooLarge = "ARGUMENTS_TOO_LARGE",
    /// The arguments nest deeper than allowed.
    ArgumentsTooDeep = "ARGUMENTS_TOO_DEEP",
    /// The arguments do not match the tool's input schema.
    ArgumentsInvalid = "ARGUMENTS_INVALID",
    /// Input inspection found an attack in the arguments.
    InputRejected = "INPUT_REJECTED",
    /// The tool is not among this agent's tools (identity or overrides).
    ToolDenied = "TOOL_DENIED",
    /// The session's scopes do not cover the tool's required scopes.
    ScopeMissing = "SCOPE_MISSING",
    /// A policy rule (Cedar) forbids the call.
    PolicyDenied = "POLICY_DENIED",
    /// The tool is critical: it never runs automatically.
    ToolCritical = "TOOL_CRITICAL",
    /// A rate limit was reached; retry later.
    RateLimited = "RATE_LIMITED",
    /// A cost quota is spent for the current window; retry in the next.
    QuotaExceeded = "QUOTA_EXCEEDED",
    /// A limit's shared store is unreachable and the limit fails closed.
    LimiterUnavailable = "LIMITER_UNAVAILABLE",
    /// The tool needs a human approval.
    ApprovalRequired = "APPROVAL_REQUIRED",
    /// The tool has no upstream to execute.
    UpstreamNotConfigured = "UPSTREAM_NOT_CONFIGURED",
    /// A secret the tool needs could not be resolved.
    SecretUnavailable = "SECRET_UNAVAILABLE",
    /// The upstream could not be reached or failed.
    UpstreamUnavailable = "UPSTREAM_UNAVAILABLE",
    /// The upstream did not answer in time.
    UpstreamTimeout = "UPSTREAM_TIMEOUT",
    /// The upstream's circuit breaker is open after repeated failures.
    UpstreamCircuitOpen = "UPSTREAM_CIRCUIT_OPEN",
    /// The upstream's answer is larger than allowed.
    UpstreamResponseTooLarge = "UPSTREAM_RESPONSE_TOO_LARGE",
    /// The upstream's answer could not be searched for injected secrets
    /// within the work bound; it is withheld.
    OutputUninspectable = "OUTPUT_UNINSPECTABLE",
    /// An envelope field is missing, of the wrong size or version.
    MessageMalformed = "MESSAGE_MALFORMED",
    /// The envelope is addressed to another agent.
    MessageWrongRecipient = "MESSAGE_WRONG_RECIPIENT",
    /// Policy does not let this sender message this recipient (no pair key).
    MessagePairNotAllowed = "MESSAGE_PAIR_NOT_ALLOWED",
    /// The sender is suspended or revoked.
    MessageSenderBlocked = "MESSAGE_SENDER_BLOCKED",
    /// No key of this pair has the envelope's key id.
    MessageUnknownKey = "MESSAGE_UNKNOWN_KEY",
    /// The key's epoch ended more than the grace period ago.
    MessageKeyExpired = "MESSAGE_KEY_EXPIRED",
    /// The MAC does not verify: the envelope was forged or changed.
    MessageBadMac = "MESSAGE_BAD_MAC",
    /// Older than the policy's `max_age`.
    MessageStale = "MESSAGE_STALE",
    /// Dated further in the future than `max_skew`.
    MessageFromFuture = "MESSAGE_FROM_FUTURE",
    /// This (sender, nonce) was accepted before.
    MessageReplayed = "MESSAGE_REPLAYED",
    /// The replay cache cannot be reached and the fail mode is closed.
    ReplayCacheUnavailable = "REPLAY_CACHE_UNAVAILABLE",
    /// The payload is larger than the policy allows.
    MessageTooLarge = "MESSAGE_TOO_LARGE",
    /// The sidecar holds no message keys yet (no policy from the control
    /// plane since it started): retry later.
    MessageKeysUnavailable = "MESSAGE_KEYS_UNAVAILABLE",
    /// The recipient's sidecar has no address here, or cannot be reached.
    MessagePeerUnreachable = "MESSAGE_PEER_UNREACHABLE",
    /// The recipient's inbox is full: retry later.
    MessageInboxFull = "MESSAGE_INBOX_FULL",
}

/// A status with `code`, an operator-readable `message` and `reason` in its
/// `ErrorInfo`.
pub fn status(code: Code, reason: Reason, message: impl Into<String>) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason.as_str(), DOMAIN, HashMap::new()),
    )
}

/// Like [`status`], with a reason defined elsewhere (e.g. a policy
/// validation [`kind`](crate::policy::Error::kind)).
pub fn status_with(code: Code, reason: &'static str, message: impl Into<String>) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, DOMAIN, HashMap::new()),
    )
}

/// A refusal of the tool gateway: like [`status`], with the pipeline stage
/// that refused and the rule (if one) in the `ErrorInfo` metadata, and
/// `retry_after_ms` when retrying later can succeed.
pub fn denial(
    code: Code,
    reason: Reason,
    stage: &str,
    rule: &str,
    retry_after_ms: Option<u64>,
    message: impl Into<String>,
) -> Status {
    let mut meta = HashMap::from([("stage".to_owned(), stage.to_owned())]);
    if !rule.is_empty() {
        meta.insert("rule".to_owned(), rule.to_owned());
    }
    if let Some(ms) = retry_after_ms {
        meta.insert("retry_after_ms".to_owned(), ms.to_string());
    }
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason.as_str(), DOMAIN, meta),
    )
}

/// The `ErrorInfo` metadata of a Warden status (stage, rule, …).
pub fn metadata_of(status: &Status) -> HashMap<String, String> {
    status
        .get_error_details()
        .error_info()
        .filter(|i| i.domain == DOMAIN)
        .map(|i| i.metadata.clone())
        .unwrap_or_default()
}

/// The Warden reason of a status, typed, if it carries one this build knows.
pub fn typed_reason_of(status: &Status) -> Option<Reason> {
    reason_of(status).and_then(|r| Reason::parse(&r))
}

/// The Warden reason of a status, if it carries one.
pub fn reason_of(status: &Status) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .filter(|i| i.domain == DOMAIN)
        .map(|i| i.reason.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_parses_back_from_its_wire_form() {
        for r in [
            Reason::AgentExpired,
            Reason::RequestTooLarge,
            Reason::MessageInboxFull,
            Reason::OutputUninspectable,
        ] {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
        assert_eq!(Reason::parse("NOT_A_REASON"), None);
        let s = status(Code::PermissionDenied, Reason::AgentRevoked, "x");
        assert_eq!(typed_reason_of(&s), Some(Reason::AgentRevoked));
    }
}
