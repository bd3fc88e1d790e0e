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
    ($($(#[$m:meta])* $v:ident = $s:literal => $code:ident,)*) => {
        /// Stable reasons carried in `ErrorInfo.reason`. Each reason
        /// determines the gRPC code it is sent with ([`Reason::code`]).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason { $($(#[$m])* $v,)* }
        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Self::$v,)*];

            /// The wire form, e.g. `JOIN_TOKEN_USED`.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s,)* }
            }

            /// The reason whose wire form is `s`, if there is one.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(Self::$v),)* _ => None }
            }

            /// The gRPC code a refusal for this reason is sent with.
            pub fn code(self) -> Code {
                match self { $(Self::$v => Code::$code,)* }
            }
        }
    };
}

reasons! {
    /// A request field is missing or malformed.
    InvalidArgument = "INVALID_ARGUMENT" => InvalidArgument,
    /// The request message is larger than this API accepts.
    RequestTooLarge = "REQUEST_TOO_LARGE" => ResourceExhausted,
    /// The request is not a valid protobuf message for the method (a string
    /// field that is not UTF-8, a truncated field, no message at all).
    RequestMalformed = "REQUEST_MALFORMED" => InvalidArgument,
    /// A message is flagged compressed but the request names no `grpc-encoding`
    /// (the gRPC specification requires `INTERNAL`).
    CompressionUnnamed = "COMPRESSION_UNNAMED" => Internal,
    /// The request is compressed; Warden accepts uncompressed requests only
    /// (the gRPC specification requires `UNIMPLEMENTED`).
    CompressionUnsupported = "COMPRESSION_UNSUPPORTED" => Unimplemented,
    /// The join token is unknown.
    JoinTokenUnknown = "JOIN_TOKEN_UNKNOWN" => Unauthenticated,
    /// The join token was already used.
    JoinTokenUsed = "JOIN_TOKEN_USED" => Unauthenticated,
    /// The join token has expired.
    JoinTokenExpired = "JOIN_TOKEN_EXPIRED" => Unauthenticated,
    /// The join token belongs to another agent.
    JoinTokenWrongAgent = "JOIN_TOKEN_WRONG_AGENT" => PermissionDenied,
    /// The CSR cannot be parsed or its signature is wrong.
    CsrMalformed = "CSR_MALFORMED" => InvalidArgument,
    /// The CSR asks for an identity other than the caller's.
    CsrIdentityMismatch = "CSR_IDENTITY_MISMATCH" => PermissionDenied,
    /// The call needs a client certificate and none was presented.
    NoClientCertificate = "NO_CLIENT_CERTIFICATE" => Unauthenticated,
    /// The caller's certificate names a principal not allowed here.
    WrongPrincipal = "WRONG_PRINCIPAL" => PermissionDenied,
    /// The client certificate does not parse or is not an X.509-SVID.
    ClientCertificateInvalid = "CLIENT_CERTIFICATE_INVALID" => Unauthenticated,
    /// The client certificate has expired: enroll again with a join token.
    ClientCertificateExpired = "CLIENT_CERTIFICATE_EXPIRED" => Unauthenticated,
    /// The agent does not exist.
    AgentUnknown = "AGENT_UNKNOWN" => NotFound,
    /// The caller presents the identity of an agent that is not registered.
    AgentNotRegistered = "AGENT_NOT_REGISTERED" => PermissionDenied,
    /// The agent already exists.
    AgentExists = "AGENT_EXISTS" => AlreadyExists,
    /// The agent is suspended.
    AgentSuspended = "AGENT_SUSPENDED" => PermissionDenied,
    /// The agent is revoked.
    AgentRevoked = "AGENT_REVOKED" => PermissionDenied,
    /// The agent's identity record has expired.
    AgentExpired = "AGENT_EXPIRED" => PermissionDenied,
    /// A revoked agent cannot change state again.
    AgentStateFinal = "AGENT_STATE_FINAL" => FailedPrecondition,
    /// No requested scope is within the agent's allowed scopes.
    ScopeNotAllowed = "SCOPE_NOT_ALLOWED" => PermissionDenied,
    /// The agent already has its maximum number of open sessions.
    SessionLimit = "SESSION_LIMIT" => ResourceExhausted,
    /// The session is unknown, ended or belongs to another agent.
    SessionUnknown = "SESSION_UNKNOWN" => Unauthenticated,
    /// An admin or agent named a session that is not open (ending or revoking it).
    SessionNotFound = "SESSION_NOT_FOUND" => NotFound,
    /// The session was revoked by an admin.
    SessionRevoked = "SESSION_REVOKED" => Unauthenticated,
    /// No bearer token was presented.
    TokenMissing = "TOKEN_MISSING" => Unauthenticated,
    /// The token is not a well-formed compact JWS of the expected type.
    TokenMalformed = "TOKEN_MALFORMED" => Unauthenticated,
    /// The token's signature does not verify against the JWKS.
    TokenBadSignature = "TOKEN_BAD_SIGNATURE" => Unauthenticated,
    /// The token has expired.
    TokenExpired = "TOKEN_EXPIRED" => Unauthenticated,
    /// The token was issued for another audience.
    TokenWrongAudience = "TOKEN_WRONG_AUDIENCE" => Unauthenticated,
    /// The token was issued by another issuer.
    TokenWrongIssuer = "TOKEN_WRONG_ISSUER" => Unauthenticated,
    /// The token was issued in the future (clock skew beyond the leeway).
    TokenNotYetValid = "TOKEN_NOT_YET_VALID" => Unauthenticated,
    /// The token is bound (`cnf`) to another certificate.
    TokenKeyBindingMismatch = "TOKEN_KEY_BINDING_MISMATCH" => Unauthenticated,
    /// The user token is not a well-formed JWT.
    UserTokenMalformed = "USER_TOKEN_MALFORMED" => Unauthenticated,
    /// The user token's `alg` is not on its provider's allow-list (`none`
    /// and HMAC never are).
    UserTokenAlgorithm = "USER_TOKEN_ALGORITHM" => Unauthenticated,
    /// The user token names a key its provider's JWK Set does not hold,
    /// even after fetching the set again.
    UserTokenUnknownKey = "USER_TOKEN_UNKNOWN_KEY" => Unauthenticated,
    /// The user token's signature does not verify.
    UserTokenBadSignature = "USER_TOKEN_BAD_SIGNATURE" => Unauthenticated,
    /// The user token comes from no configured identity provider.
    UserTokenWrongIssuer = "USER_TOKEN_WRONG_ISSUER" => Unauthenticated,
    /// The user token was issued for another audience.
    UserTokenWrongAudience = "USER_TOKEN_WRONG_AUDIENCE" => Unauthenticated,
    /// The user token has expired.
    UserTokenExpired = "USER_TOKEN_EXPIRED" => Unauthenticated,
    /// The user token is not valid yet (`nbf` or `iat` in the future).
    UserTokenNotYetValid = "USER_TOKEN_NOT_YET_VALID" => Unauthenticated,
    /// The user token has no usable subject.
    UserTokenNoSubject = "USER_TOKEN_NO_SUBJECT" => Unauthenticated,
    /// The stated `user_id` is not the user the user token proves.
    UserMismatch = "USER_MISMATCH" => PermissionDenied,
    /// The identity provider's keys could not be fetched.
    IdentityProviderUnavailable = "IDENTITY_PROVIDER_UNAVAILABLE" => Unavailable,
    /// The user has not consented to this agent acting for them (or not to
    /// any requested scope); the consent URL is in the metadata.
    ConsentRequired = "CONSENT_REQUIRED" => PermissionDenied,
    /// The tool requires a user verified by an identity provider, and the
    /// session's user was only stated by the agent (or there is none).
    UserNotVerified = "USER_NOT_VERIFIED" => PermissionDenied,
    /// No consent grant with that id.
    GrantNotFound = "GRANT_NOT_FOUND" => NotFound,
    /// The request lacks the agent API metadata header.
    AgentHeaderMissing = "AGENT_HEADER_MISSING" => InvalidArgument,
    /// The sidecar holds no valid certificate (not enrolled, or lapsed).
    NoIdentity = "NO_IDENTITY" => FailedPrecondition,
    /// The sidecar holds no policy from the control plane yet.
    PolicyNotLoaded = "POLICY_NOT_LOADED" => FailedPrecondition,
    /// The sidecar has been out of contact longer than `max_policy_age`.
    PolicyStale = "POLICY_STALE" => FailedPrecondition,
    /// The control plane could not be reached.
    ControlPlaneUnavailable = "CONTROL_PLANE_UNAVAILABLE" => Unavailable,
    /// The latest policy version is not the one the caller expected.
    PolicyVersionConflict = "POLICY_VERSION_CONFLICT" => FailedPrecondition,
    /// No such policy version (or none applied yet).
    PolicyVersionUnknown = "POLICY_VERSION_UNKNOWN" => NotFound,
    /// No audit log entry at that position, or no signed tree head of that
    /// size.
    AuditNotFound = "AUDIT_NOT_FOUND" => NotFound,
    /// The sidecar cannot record the call (its audit spool is full or
    /// cannot be written), and its setting is to refuse calls then.
    AuditUnavailable = "AUDIT_UNAVAILABLE" => Unavailable,
    /// An internal failure; details are in the server log.
    Internal = "INTERNAL" => Internal,
    /// The control plane's store failed; retry later.
    StoreUnavailable = "STORE_UNAVAILABLE" => Unavailable,
    /// The session has made its `max_tool_calls` calls.
    ToolCallLimit = "TOOL_CALL_LIMIT" => ResourceExhausted,
    /// No tool of that name in the policy in force.
    ToolUnknown = "TOOL_UNKNOWN" => NotFound,
    /// The arguments are not a JSON object.
    ArgumentsNotJson = "ARGUMENTS_NOT_JSON" => InvalidArgument,
    /// The arguments are larger than the tool allows.
    ArgumentsTooLarge = "ARGUMENTS_TOO_LARGE" => InvalidArgument,
    /// The arguments nest deeper than allowed.
    ArgumentsTooDeep = "ARGUMENTS_TOO_DEEP" => InvalidArgument,
    /// The arguments do not match the tool's input schema.
    ArgumentsInvalid = "ARGUMENTS_INVALID" => InvalidArgument,
    /// Input inspection found an attack in the arguments.
    InputRejected = "INPUT_REJECTED" => PermissionDenied,
    /// The tool is not among this agent's tools (identity or overrides).
    ToolDenied = "TOOL_DENIED" => PermissionDenied,
    /// The session's scopes do not cover the tool's required scopes.
    ScopeMissing = "SCOPE_MISSING" => PermissionDenied,
    /// A policy rule (Cedar) forbids the call.
    PolicyDenied = "POLICY_DENIED" => PermissionDenied,
    /// The tool is critical: it never runs automatically.
    ToolCritical = "TOOL_CRITICAL" => PermissionDenied,
    /// A rate limit was reached; retry later.
    RateLimited = "RATE_LIMITED" => ResourceExhausted,
    /// A cost quota is spent for the current window; retry in the next.
    QuotaExceeded = "QUOTA_EXCEEDED" => ResourceExhausted,
    /// A limit's shared store is unreachable and the limit fails closed.
    LimiterUnavailable = "LIMITER_UNAVAILABLE" => Unavailable,
    /// The tool needs a human approval, and this deployment cannot ask for
    /// one (no approval desk).
    ApprovalRequired = "APPROVAL_REQUIRED" => PermissionDenied,
    /// The call waits for a human approval and the agent asked not to wait:
    /// the same call made again runs once it is approved (the ErrorInfo
    /// metadata names `approval_id`).
    ApprovalPending = "APPROVAL_PENDING" => FailedPrecondition,
    /// A person denied the call (the message carries who and why).
    ApprovalDenied = "APPROVAL_DENIED" => PermissionDenied,
    /// Nobody decided before the deadline.
    ApprovalTimeout = "APPROVAL_TIMEOUT" => DeadlineExceeded,
    /// The control plane could not be reached to file the request or learn
    /// its decision within the deadline.
    ApprovalUnavailable = "APPROVAL_UNAVAILABLE" => Unavailable,
    /// The tool's calls are confirmed by the end user, and the client the
    /// call came through cannot ask them (an MCP client without the
    /// elicitation capability, or the gRPC agent API).
    UserConfirmationUnavailable = "USER_CONFIRMATION_UNAVAILABLE" => FailedPrecondition,
    /// No approval request with that id.
    ApprovalNotFound = "APPROVAL_NOT_FOUND" => NotFound,
    /// The approval request is decided, used or expired already.
    ApprovalNotPending = "APPROVAL_NOT_PENDING" => FailedPrecondition,
    /// This person has decided on this request already: one person counts
    /// once towards a quorum.
    ApprovalAlreadyDecided = "APPROVAL_ALREADY_DECIDED" => AlreadyExists,
    /// The tool has no upstream to execute.
    UpstreamNotConfigured = "UPSTREAM_NOT_CONFIGURED" => FailedPrecondition,
    /// The request to the upstream could not be built from the tool's
    /// configuration and the arguments.
    UpstreamRequestInvalid = "UPSTREAM_REQUEST_INVALID" => FailedPrecondition,
    /// A secret the tool needs could not be resolved.
    SecretUnavailable = "SECRET_UNAVAILABLE" => FailedPrecondition,
    /// The upstream could not be reached or failed.
    UpstreamUnavailable = "UPSTREAM_UNAVAILABLE" => Unavailable,
    /// The upstream did not answer in time.
    UpstreamTimeout = "UPSTREAM_TIMEOUT" => DeadlineExceeded,
    /// The tool's MCP server no longer offers it as the policy pinned it
    /// (its description or input schema changed, or it is gone): it is
    /// withdrawn until the policy or the server is fixed.
    ToolWithdrawn = "TOOL_WITHDRAWN" => FailedPrecondition,
    /// The upstream's circuit breaker is open after repeated failures.
    UpstreamCircuitOpen = "UPSTREAM_CIRCUIT_OPEN" => Unavailable,
    /// The upstream's answer is larger than allowed.
    UpstreamResponseTooLarge = "UPSTREAM_RESPONSE_TOO_LARGE" => ResourceExhausted,
    /// The upstream's answer could not be searched for injected secrets
    /// within the work bound; it is withheld.
    OutputUninspectable = "OUTPUT_UNINSPECTABLE" => FailedPrecondition,
    /// The upstream's answer holds a credential or personal data the
    /// tool's filters block; it is withheld.
    OutputBlocked = "OUTPUT_BLOCKED" => PermissionDenied,
    /// An argument (stage 3) or the upstream's answer (stage 8) reads as a
    /// prompt injection and the tool's filters block it.
    PromptInjection = "PROMPT_INJECTION" => PermissionDenied,
    /// The policy's external injection classifier did not answer usably
    /// (an error, a timeout, an answer of the wrong shape, too much text)
    /// and its `on_failure` is `block`.
    ClassifierUnavailable = "CLASSIFIER_UNAVAILABLE" => Unavailable,
    /// An argument holds a credential and the tool's
    /// `filters.argument_secrets` blocks it.
    ArgumentSecret = "ARGUMENT_SECRET" => PermissionDenied,
    /// An envelope field is missing, of the wrong size or version.
    MessageMalformed = "MESSAGE_MALFORMED" => InvalidArgument,
    /// The envelope is addressed to another agent.
    MessageWrongRecipient = "MESSAGE_WRONG_RECIPIENT" => PermissionDenied,
    /// Policy does not let this sender message this recipient (no pair key).
    MessagePairNotAllowed = "MESSAGE_PAIR_NOT_ALLOWED" => PermissionDenied,
    /// The sender is suspended or revoked.
    MessageSenderBlocked = "MESSAGE_SENDER_BLOCKED" => PermissionDenied,
    /// No key of this pair has the envelope's key id.
    MessageUnknownKey = "MESSAGE_UNKNOWN_KEY" => PermissionDenied,
    /// The key's epoch ended more than the grace period ago.
    MessageKeyExpired = "MESSAGE_KEY_EXPIRED" => PermissionDenied,
    /// The MAC does not verify: the envelope was forged or changed.
    MessageBadMac = "MESSAGE_BAD_MAC" => Unauthenticated,
    /// Older than the policy's `max_age`.
    MessageStale = "MESSAGE_STALE" => PermissionDenied,
    /// Dated further in the future than `max_skew`.
    MessageFromFuture = "MESSAGE_FROM_FUTURE" => PermissionDenied,
    /// This (sender, nonce) was accepted before.
    MessageReplayed = "MESSAGE_REPLAYED" => AlreadyExists,
    /// The replay cache cannot be reached and the fail mode is closed.
    ReplayCacheUnavailable = "REPLAY_CACHE_UNAVAILABLE" => Unavailable,
    /// The payload is larger than the policy allows.
    MessageTooLarge = "MESSAGE_TOO_LARGE" => InvalidArgument,
    /// The sidecar holds no message keys yet (no policy from the control
    /// plane since it started): retry later.
    MessageKeysUnavailable = "MESSAGE_KEYS_UNAVAILABLE" => Unavailable,
    /// This sidecar has no address for the recipient's sidecar (add it to
    /// its configuration).
    MessagePeerUnreachable = "MESSAGE_PEER_UNREACHABLE" => FailedPrecondition,
    /// The recipient's sidecar could not be reached or failed: retry later.
    MessagePeerUnavailable = "MESSAGE_PEER_UNAVAILABLE" => Unavailable,
    /// The recipient's inbox is full: retry later.
    MessageInboxFull = "MESSAGE_INBOX_FULL" => ResourceExhausted,
}

/// The stages of the tool gateway's pipeline, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
    /// The record of the decision (the audit spool).
    Record,
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
            Self::Record => "record",
        }
    }
}

/// Why Warden refused: the one refusal type of the gateway, messages and
/// the APIs. Its gRPC code is its reason's ([`Reason::code`]); a refusal
/// of the gateway also names its stage, and the rule that decided if one
/// did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The stable reason.
    pub reason: Reason,
    /// For the caller: what is wrong, without internals or secrets.
    pub message: String,
    /// The gateway stage that refused, if a stage did.
    pub stage: Option<Stage>,
    /// The rule that decided, if one did (a Cedar policy id, a limit).
    pub rule: String,
    /// When retrying later can succeed: after this long.
    pub retry_after_ms: Option<u64>,
    /// The approval request concerned, if one is (`apr_…`).
    pub approval_id: String,
    /// Where the user consents (for [`Reason::ConsentRequired`]).
    pub consent_url: String,
}

impl Refusal {
    /// A refusal for `reason`.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            stage: None,
            rule: String::new(),
            retry_after_ms: None,
            approval_id: String::new(),
            consent_url: String::new(),
        }
    }

    /// A refusal of the gateway's `stage`.
    pub fn at(stage: Stage, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            stage: Some(stage),
            ..Self::new(reason, message)
        }
    }

    /// Names the rule that decided.
    #[must_use]
    pub fn rule(mut self, rule: impl Into<String>) -> Self {
        self.rule = rule.into();
        self
    }

    /// Names the approval request concerned.
    #[must_use]
    pub fn approval(mut self, id: impl Into<String>) -> Self {
        self.approval_id = id.into();
        self
    }

    /// Says when retrying can succeed.
    /// Names where the user consents.
    #[must_use]
    pub fn consent(mut self, url: impl Into<String>) -> Self {
        self.consent_url = url.into();
        self
    }

    #[must_use]
    pub fn retry_after_ms(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }

    /// The gRPC code: the reason's.
    pub fn code(&self) -> Code {
        self.reason.code()
    }

    /// The stage's wire name, or "" when no stage refused.
    pub fn stage_str(&self) -> &'static str {
        self.stage.map_or("", Stage::as_str)
    }

    /// The status the caller receives: the reason in an `ErrorInfo` whose
    /// metadata carries `stage`, `rule`, `retry_after_ms` and `approval_id`
    /// when set.
    pub fn to_status(&self) -> Status {
        let mut meta = HashMap::new();
        if let Some(stage) = self.stage {
            meta.insert("stage".to_owned(), stage.as_str().to_owned());
        }
        if !self.rule.is_empty() {
            meta.insert("rule".to_owned(), self.rule.clone());
        }
        if let Some(ms) = self.retry_after_ms {
            meta.insert("retry_after_ms".to_owned(), ms.to_string());
        }
        if !self.approval_id.is_empty() {
            meta.insert("approval_id".to_owned(), self.approval_id.clone());
        }
        if !self.consent_url.is_empty() {
            meta.insert("consent_url".to_owned(), self.consent_url.clone());
        }
        Status::with_error_details(
            self.code(),
            self.message.clone(),
            ErrorDetails::with_error_info(self.reason.as_str(), DOMAIN, meta),
        )
    }
}

impl Refusal {
    /// The wire form inside an `AuthorizeResponse`.
    pub fn to_proto(&self) -> crate::proto::v1::Denial {
        crate::proto::v1::Denial {
            stage: self.stage_str().to_owned(),
            reason: self.reason.as_str().to_owned(),
            rule: self.rule.clone(),
            message: self.message.clone(),
            retry_after_ms: self.retry_after_ms.unwrap_or(0),
            approval_id: self.approval_id.clone(),
        }
    }
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Self {
        r.to_status()
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.message)
    }
}

impl std::error::Error for Refusal {}

/// The status of a refusal for `reason` (its code is the reason's).
pub fn status(reason: Reason, message: impl Into<String>) -> Status {
    Refusal::new(reason, message).to_status()
}

/// A status for a reason defined elsewhere (a policy validation
/// [`kind`](crate::policy::Error::kind)), sent as `INVALID_ARGUMENT`: the
/// caller's document is at fault.
pub fn invalid_with(reason: &'static str, message: impl Into<String>) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        message,
        ErrorDetails::with_error_info(reason, DOMAIN, HashMap::new()),
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
        let s = status(Reason::AgentRevoked, "x");
        assert_eq!(typed_reason_of(&s), Some(Reason::AgentRevoked));
        assert_eq!(s.code(), Code::PermissionDenied);
    }

    #[test]
    fn every_reason_has_one_wire_form_and_the_code_it_is_sent_with() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()), "{} twice", r.as_str());
            assert_eq!(Reason::parse(r.as_str()), Some(*r));
            assert_eq!(status(*r, "m").code(), r.code());
            assert_ne!(r.code(), Code::Ok);
        }
        assert!(Reason::ALL.len() > 70);
    }

    #[test]
    fn a_gateway_refusal_carries_stage_rule_and_retry() {
        let r = Refusal::at(Stage::Limit, Reason::RateLimited, "slow down")
            .rule("per_minute")
            .retry_after_ms(250);
        let s = r.to_status();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(typed_reason_of(&s), Some(Reason::RateLimited));
        let m = metadata_of(&s);
        assert_eq!(m["stage"], "limit");
        assert_eq!(m["rule"], "per_minute");
        assert_eq!(m["retry_after_ms"], "250");
        let plain = metadata_of(&status(Reason::TokenMissing, "x"));
        assert!(plain.is_empty(), "{plain:?}");
    }
}
