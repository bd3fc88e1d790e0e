//! The control plane's durable state, behind [`Store`] so that SQLite (the
//! embedded default) and PostgreSQL (for replicas) are interchangeable.

mod audit;
mod sqlite;

use async_trait::async_trait;
use warden_shared::agent::{AgentId, AgentStatus};

pub use audit::{
    AuditAppend, AuditEntry, AuditGuard, AuditKey, AuditQuery, AuditRow, AuditStore, BuildAppend,
    StoredHead,
};
pub use sqlite::SqliteStore;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database refused or failed the operation.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Schema migration failed at startup.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row could not be decoded (a corrupted or foreign database).
    #[error("corrupt row in {table}: {detail}")]
    Corrupt {
        /// Table of the bad row.
        table: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A record with this key already exists.
    #[error("already exists")]
    Conflict,
    /// The batch holding this write failed to commit; nothing was written.
    #[error("write not committed: {0}")]
    Commit(String),
    /// The write was not run: the writer has stopped or could not start a
    /// transaction.
    #[error("the store could not run the write (writer stopped or transaction failed to start)")]
    WriterGone,
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An agent's identity record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    /// Agent id.
    pub id: AgentId,
    /// Kind of agent.
    pub agent_type: String,
    /// Agent software version.
    pub version: String,
    /// Accountable owner.
    pub owner: String,
    /// Deployment environment.
    pub environment: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Unix seconds; `None` for no expiry.
    pub expires_at: Option<i64>,
    /// Cap on concurrently open sessions.
    pub max_sessions: u32,
    /// Scope patterns the agent may be granted.
    pub allowed_scopes: Vec<String>,
    /// Tools the agent may call (empty: decided by policy).
    pub allowed_tools: Vec<String>,
    /// Tools the agent may never call.
    pub denied_tools: Vec<String>,
    /// Lifecycle state.
    pub status: AgentStatus,
    /// Why the status was last changed.
    pub status_reason: String,
}

/// Outcome of presenting a join token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinTokenUse {
    /// The token is valid (from a peek) or was valid and is now spent.
    Consumed,
    /// No such token.
    Unknown,
    /// Already spent.
    Used,
    /// Past its expiry.
    Expired,
    /// Issued for another agent; left unspent.
    WrongAgent,
}

/// A session to open.
#[derive(Clone, Debug)]
pub struct NewSession {
    /// Session id.
    pub id: String,
    /// Owning agent.
    pub agent_id: AgentId,
    /// End user, or empty.
    pub user_id: String,
    /// Granted scopes, space-separated.
    pub scopes: String,
    /// Session context as a JSON object.
    pub context: String,
    /// Token id.
    pub jti: String,
    /// Thumbprint of the certificate the token is bound to.
    pub thumbprint: String,
    /// Tool-call cap (0: none).
    pub max_tool_calls: u32,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// The consent grant a delegated session is issued under.
    pub grant_id: Option<String>,
}

/// Whom a consent grant lets act for its user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grantee {
    /// One agent.
    Agent(AgentId),
    /// Every agent of a type.
    AgentType(String),
}

/// A user's consent that an agent act for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// `gr_…`.
    pub id: String,
    /// `<issuer>#<subject>`.
    pub user_id: String,
    /// The agent or agent type.
    pub grantee: Grantee,
    /// The consented scopes.
    pub scopes: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Unix seconds, once revoked.
    pub revoked_at: Option<i64>,
    /// `user:<id>` or `admin:<name>`, once revoked.
    pub revoked_by: String,
}

/// An issued certificate, for the record.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// Hex serial.
    pub serial: String,
    /// Subject agent.
    pub agent_id: AgentId,
    /// `x5t#S256`.
    pub thumbprint: String,
    /// Unix seconds.
    pub not_after: i64,
    /// Unix seconds.
    pub issued_at: i64,
    /// `enroll` or `renew`.
    pub reason: &'static str,
}

/// Metadata of a stored policy version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyMeta {
    /// Version number (1, 2, …).
    pub version: i64,
    /// SHA-256 of the canonical document, hex.
    pub digest: String,
    /// Number of tools in the catalog.
    pub tools: u32,
    /// Admin who applied it.
    pub applied_by: String,
    /// Unix seconds.
    pub applied_at: i64,
}

/// Outcome of [`Store::apply_policy`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyApply {
    /// Stored as a new version.
    Stored(PolicyMeta),
    /// Identical to the latest version; nothing stored.
    Unchanged(PolicyMeta),
    /// The latest version is not the one the caller expected.
    Conflict {
        /// The latest version (0: none).
        latest: i64,
    },
}

/// A new policy version to store.
#[derive(Clone, Debug)]
pub struct NewPolicy {
    /// The YAML document as applied.
    pub document: String,
    /// Its digest.
    pub digest: String,
    /// Number of tools.
    pub tools: u32,
    /// Applying admin.
    pub applied_by: String,
    /// Unix seconds.
    pub applied_at: i64,
}

/// A stored token-signing key.
#[derive(Clone)]
pub struct StoredKey {
    /// Key id.
    pub kid: String,
    /// PKCS#8 DER.
    pub pkcs8: Vec<u8>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; `None` while active.
    pub retired_at: Option<i64>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("pkcs8", &"[redacted]")
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish()
    }
}

/// Where an approval request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApprovalState {
    /// Waiting for people.
    Pending,
    /// The quorum approved; the call may run once.
    Approved,
    /// Someone denied it.
    Denied,
    /// Approved, and the call ran.
    Used,
    /// The deadline passed first.
    Expired,
    /// Withdrawn by the sidecar: nobody waits for it any more.
    Cancelled,
}

impl ApprovalState {
    /// Lower-case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Used => "used",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        }
    }

    /// The state named `s` (as stored and on the wire).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "approved" => Self::Approved,
            "denied" => Self::Denied,
            "used" => Self::Used,
            "expired" => Self::Expired,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

/// A request for approval, as the sidecar files it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewApproval {
    /// Its id (`apr_…`).
    pub id: String,
    /// The digest binding it to one call (tool, canonical arguments,
    /// session).
    pub binding: String,
    /// The agent.
    pub agent_id: AgentId,
    /// The session.
    pub session_id: String,
    /// The session's user, if any.
    pub user_id: String,
    /// The tool.
    pub tool: String,
    /// The arguments for display (sensitive values already redacted).
    pub arguments: String,
    /// The agent's stated reason.
    pub reason: String,
    /// The call's trace id.
    pub trace_id: String,
    /// Why approval is needed (`risk high`, rule ids).
    pub because: String,
    /// Distinct people who must approve.
    pub quorum: u32,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds: undecided by then, it expires.
    pub deadline: i64,
    /// Decided by the agent's end user (through the agent API), not by
    /// admins.
    pub by_user: bool,
}

/// One person's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalDecision {
    /// Who (the admin certificate's identity).
    pub approver: String,
    /// Approved (or denied).
    pub approve: bool,
    /// The comment, or the reason for a denial.
    pub comment: String,
    /// Unix seconds.
    pub decided_at: i64,
}

/// A stored request with its decisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    /// As filed.
    pub request: NewApproval,
    /// Where it stands (an expired deadline reads as `Expired`).
    pub state: ApprovalState,
    /// Every decision so far, oldest first.
    pub decisions: Vec<ApprovalDecision>,
}

/// A decision as pushed to the agent's sidecar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The request.
    pub id: String,
    /// Approved, denied, or used already.
    pub state: ApprovalState,
    /// Its place in the order of decisions.
    pub seq: u64,
    /// Who denied it, and why (empty unless denied).
    pub denied_by: String,
    /// The denier's reason.
    pub comment: String,
}

/// What a decision did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decided {
    /// Recorded; the request now stands as given.
    Recorded(ApprovalState),
    /// This person has decided on this request already: one person counts
    /// once.
    AlreadyDecided,
    /// The request is not pending (decided, used or expired).
    NotPending(ApprovalState),
    /// No such request.
    Unknown,
}

/// A webhook delivery to make (one event to one endpoint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDelivery {
    /// `msg_…`: the `webhook-id`, the same on every attempt.
    pub id: String,
    /// The endpoint.
    pub url: String,
    /// The JSON posted.
    pub body: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// A delivery waiting in the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// As enqueued.
    pub id: String,
    /// The endpoint.
    pub url: String,
    /// The JSON posted.
    pub body: String,
    /// Attempts so far.
    pub attempts: u32,
}

/// How one attempt at a delivery went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Answered with a 2xx status: done.
    Delivered,
    /// Failed; try again at `at` (unix seconds).
    Retry {
        /// When.
        at: i64,
        /// Why it failed.
        error: String,
    },
    /// Failed for the last time: kept, undelivered.
    Abandoned {
        /// Why it failed.
        error: String,
    },
}

/// Durable control-plane state. Every mutation is atomic.
#[async_trait]
pub trait Store: AuditStore + Send + Sync + std::fmt::Debug + 'static {
    /// Inserts a new agent; [`Error::Conflict`] if the id exists.
    async fn create_agent(&self, agent: &Agent) -> Result<()>;
    /// Loads one agent.
    async fn get_agent(&self, id: &AgentId) -> Result<Option<Agent>>;
    /// All agents, by id.
    async fn list_agents(&self) -> Result<Vec<Agent>>;
    /// Files a request for approval, or returns the one of the same agent
    /// already standing for the same call (pending, or approved and unused,
    /// within its deadline; or denied, until its deadline): filing the same
    /// call twice makes one request, and a denied call asked again at once
    /// stays denied.
    async fn request_approval(&self, new: &NewApproval, now: i64) -> Result<Approval>;
    /// One request, with its decisions.
    async fn get_approval(&self, id: &str, now: i64) -> Result<Option<Approval>>;
    /// Requests, newest first: only those in `state` when given; at most
    /// `limit`.
    async fn list_approvals(
        &self,
        state: Option<ApprovalState>,
        limit: u32,
        now: i64,
    ) -> Result<Vec<Approval>>;
    /// Records `approver`'s decision on request `id`: a denial decides it,
    /// approvals decide it once `quorum` distinct people have approved.
    async fn decide_approval(
        &self,
        id: &str,
        decision: &ApprovalDecision,
        now: i64,
    ) -> Result<Decided>;
    /// Spends `agent`'s approved, unused request for the call `binding`:
    /// its one use. `None` when there is none (pending, denied, expired,
    /// used).
    async fn use_approval(
        &self,
        agent: &AgentId,
        binding: &str,
        now: i64,
    ) -> Result<Option<Approval>>;
    /// Puts webhook deliveries in the outbox, due now.
    async fn enqueue_webhooks(&self, deliveries: &[NewDelivery]) -> Result<()>;
    /// Deliveries due at `now`, oldest first, at most `limit`.
    async fn due_webhooks(&self, now: i64, limit: u32) -> Result<Vec<Delivery>>;
    /// Records an attempt at delivery `id`.
    async fn webhook_attempted(&self, id: &str, attempt: &Attempt, now: i64) -> Result<()>;
    /// When the next delivery falls due (`None`: nothing waits).
    async fn next_webhook_at(&self) -> Result<Option<i64>>;
    /// How many of `agent`'s requests are pending now.
    async fn pending_approvals(&self, agent: &AgentId, now: i64) -> Result<u64>;
    /// Cancels `agent`'s pending request `id`; whether it was pending.
    async fn cancel_approval(&self, agent: &AgentId, id: &str, now: i64) -> Result<bool>;
    /// The decisions on `agent`'s requests after sequence number `after`,
    /// made at or after `since` (unix seconds), in order, at most `limit`.
    async fn approval_outcomes(
        &self,
        agent: &AgentId,
        after: u64,
        since: i64,
        limit: u32,
    ) -> Result<Vec<Outcome>>;
    /// The highest decision sequence number (0: none).
    async fn last_decision_seq(&self) -> Result<u64>;
    /// Agents the whole mesh must refuse: suspended ones, ones revoked after
    /// `since`, and active ones whose expiry passed between `since` and `now`.
    async fn blocked_agents(&self, now: i64, since: i64) -> Result<Vec<Agent>>;
    /// Sets an agent's status; returns the updated record, or `None` if the
    /// agent is unknown or revoked (revocation is final: only `Revoked` may
    /// be written over `Revoked`).
    async fn set_agent_status(
        &self,
        id: &AgentId,
        status: AgentStatus,
        reason: &str,
        now: i64,
    ) -> Result<Option<Agent>>;

    /// Records a join token by its hash.
    async fn insert_join_token(
        &self,
        hash: &[u8],
        agent: &AgentId,
        created_by: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<()>;
    /// Spends a join token if it is valid for `agent` at `now`; a token for
    /// another agent is left unspent.
    async fn consume_join_token(
        &self,
        hash: &[u8],
        agent: &AgentId,
        now: i64,
    ) -> Result<JoinTokenUse>;
    /// What [`Store::consume_join_token`] would answer, without spending.
    async fn peek_join_token(&self, hash: &[u8], agent: &AgentId, now: i64)
    -> Result<JoinTokenUse>;

    /// Records an issued certificate.
    async fn record_certificate(&self, cert: &IssuedCert) -> Result<()>;

    /// Opens a session unless the agent already has `max` open ones, or
    /// (for a delegated session) its grant is no longer live; returns
    /// whether it was opened. The checks and the insert are one statement,
    /// so a grant revoked after it was looked up never gains a session.
    async fn open_session(&self, session: &NewSession, max: u32, now: i64) -> Result<bool>;
    /// Ends an agent's open session; returns whether one was ended.
    async fn end_session(&self, agent: &AgentId, id: &str, now: i64) -> Result<bool>;
    /// Revokes (and ends) a session that has not expired; returns its agent
    /// and expiry, `None` if there is no such live session. Idempotent.
    async fn revoke_session(&self, id: &str, now: i64) -> Result<Option<(AgentId, i64)>>;
    /// An agent's revoked sessions whose tokens have not expired yet.
    async fn revoked_sessions(&self, agent: &AgentId, now: i64) -> Result<Vec<(String, i64)>>;
    /// Stores a new consent grant.
    async fn insert_grant(&self, grant: &Grant) -> Result<()>;
    /// The live grant (not revoked, not expired) of `user` for `agent`:
    /// one for the agent itself before one for its type, the newest first.
    async fn live_grant(
        &self,
        user: &str,
        agent: &AgentId,
        agent_type: &str,
        now: i64,
    ) -> Result<Option<Grant>>;
    /// A grant by id.
    async fn get_grant(&self, id: &str) -> Result<Option<Grant>>;
    /// Grants, newest first: `user`'s only when given; live ones only
    /// unless `all`; at most `limit`.
    async fn list_grants(
        &self,
        user: Option<&str>,
        all: bool,
        now: i64,
        limit: u32,
    ) -> Result<Vec<Grant>>;
    /// Revokes a live grant and every live session issued under it, in one
    /// transaction; returns the grant and the ended sessions with their
    /// agents, `None` when there is no live grant with that id (and `user`,
    /// when given).
    async fn revoke_grant(
        &self,
        id: &str,
        user: Option<&str>,
        by: &str,
        now: i64,
    ) -> Result<Option<(Grant, Vec<(String, AgentId)>)>>;

    /// Number of open sessions of an agent.
    async fn open_sessions(&self, agent: &AgentId, now: i64) -> Result<u32>;

    /// Deletes join tokens, sessions and certificate records that ended
    /// (were spent, expired or lapsed) before `before`, and webhook
    /// deliveries made (or abandoned) that were enqueued before it;
    /// returns how many.
    async fn prune(&self, before: i64) -> Result<u64>;

    /// Stores `policy` as the next version unless it equals the latest, or
    /// `expected` is given and is not the latest. One atomic step.
    async fn apply_policy(&self, policy: &NewPolicy, expected: Option<i64>) -> Result<PolicyApply>;
    /// A stored version and its document (`None` version: the latest).
    async fn get_policy(&self, version: Option<i64>) -> Result<Option<(PolicyMeta, String)>>;
    /// Stored versions, newest first (`limit` 0: all).
    async fn list_policies(&self, limit: u32) -> Result<Vec<PolicyMeta>>;

    /// Adds a signing key and retires every other active one.
    async fn rotate_signing_key(&self, kid: &str, pkcs8: &[u8], now: i64) -> Result<()>;
    /// All signing keys, newest first.
    async fn signing_keys(&self) -> Result<Vec<StoredKey>>;
}

/// Records for tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Agent, NewSession};
    use warden_shared::agent::{AgentId, AgentStatus};

    /// Session `id` of `agent`, created at 100, expiring at `exp`.
    pub(crate) fn session(id: &str, agent: &str, exp: i64) -> NewSession {
        NewSession {
            id: id.into(),
            agent_id: AgentId::new(agent).unwrap(),
            user_id: String::new(),
            scopes: "data:read".into(),
            context: "{}".into(),
            jti: format!("j-{id}"),
            thumbprint: "t".into(),
            max_tool_calls: 0,
            created_at: 100,
            expires_at: exp,
            grant_id: None,
        }
    }

    /// An active agent `id` with at most `max` sessions.
    pub(crate) fn agent(id: &str, max: u32) -> Agent {
        Agent {
            id: AgentId::new(id).unwrap(),
            agent_type: "coder".into(),
            version: "1".into(),
            owner: "team".into(),
            environment: "test".into(),
            created_at: 100,
            updated_at: 100,
            expires_at: None,
            max_sessions: max,
            allowed_scopes: vec!["data:*".into()],
            allowed_tools: vec![],
            denied_tools: vec!["rm".into()],
            status: AgentStatus::Active,
            status_reason: String::new(),
        }
    }
}
