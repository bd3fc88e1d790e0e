//! The audit log's storage: entries, the heads of every complete perfect
//! subtree, signed tree heads, the keys that sign them, and the last
//! sequence number stored from each source. Rows are append-only (the
//! schema's triggers refuse UPDATE and DELETE).

use async_trait::async_trait;
use warden_shared::audit::TreeHead;
use warden_shared::merkle::{Hash, Node};

use super::Result;

/// One entry to append, with the columns queries read.
#[derive(Clone, Debug)]
pub struct AuditRow {
    /// Leaf index.
    pub position: u64,
    /// The record's exact bytes.
    pub record: Vec<u8>,
    /// The event's time, unix ms.
    pub time_ms: i64,
    /// The event's kind.
    pub kind: String,
    /// The event's agent.
    pub agent: String,
    /// The event's session.
    pub session: String,
    /// The event's tool.
    pub tool: String,
    /// The event's outcome.
    pub outcome: String,
}

/// What one append writes, all or nothing.
#[derive(Clone, Debug, Default)]
pub struct AuditAppend {
    /// The entries, in position order.
    pub rows: Vec<AuditRow>,
    /// Every subtree the entries complete (their leaves included).
    pub nodes: Vec<(Node, Hash)>,
    /// Each source's last sequence number after the append.
    pub sources: Vec<(String, u64)>,
}

/// A write an audit event stands for, run in the append's own transaction
/// before its entries: the event is appended only if the write took effect,
/// and neither is committed without the other.
#[derive(Clone, Debug)]
pub enum AuditGuard {
    /// Opens a session, with the checks of [`super::Store::open_session`].
    OpenSession {
        /// The session.
        session: super::NewSession,
        /// The agent's most open sessions.
        max: u32,
        /// Unix seconds.
        now: i64,
    },
    /// Ends a session, with the checks of [`super::Store::end_session`]
    /// (the agent's own, open and not expired).
    EndSession {
        /// The agent.
        agent: warden_shared::agent::AgentId,
        /// The session's id.
        id: String,
        /// Unix seconds.
        now: i64,
    },
}

/// Makes an append once the guards have run, from their outcomes (one per
/// guard, in order: whether it took effect). It may be called more than
/// once (a store may first try the append as if every guard took); the
/// last call is what was written.
pub type BuildAppend = Box<dyn Fn(&[bool]) -> AuditAppend + Send>;

/// A signed tree head as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredHead {
    /// The head.
    pub head: TreeHead,
    /// The signing key's id.
    pub kid: String,
    /// Ed25519 signature.
    pub signature: Vec<u8>,
}

/// A head-signing key.
#[derive(Clone, Debug)]
pub struct AuditKey {
    /// Its id.
    pub kid: String,
    /// PKCS#8 private key.
    pub pkcs8: Vec<u8>,
    /// Raw public key.
    pub public_key: Vec<u8>,
    /// Unix ms.
    pub created_ms: i64,
}

/// Which entries a query wants.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    /// Only this agent's.
    pub agent: Option<String>,
    /// Only this session's.
    pub session: Option<String>,
    /// Only this tool's.
    pub tool: Option<String>,
    /// Only with this outcome.
    pub outcome: Option<String>,
    /// Only of this kind.
    pub kind: Option<String>,
    /// Event time at or after, unix ms.
    pub since_ms: Option<i64>,
    /// Event time before, unix ms.
    pub until_ms: Option<i64>,
    /// Positions after this one.
    pub after: Option<u64>,
    /// At most this many, oldest first.
    pub limit: u32,
}

/// One stored entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Leaf index.
    pub position: u64,
    /// The record's bytes.
    pub record: Vec<u8>,
    /// The leaf hash recorded for the position (when asked for).
    pub leaf: Option<Hash>,
}

/// The audit log's storage.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends entries, subtree heads and source positions in one
    /// transaction.
    async fn audit_append(&self, batch: AuditAppend) -> Result<()>;
    /// Runs `guards` in order, then appends what `build` makes of their
    /// outcomes, all in one transaction; the outcomes.
    async fn audit_append_guarded(
        &self,
        guards: Vec<AuditGuard>,
        build: BuildAppend,
    ) -> Result<Vec<bool>>;
    /// Entries in the log.
    async fn audit_size(&self) -> Result<u64>;
    /// Subtree heads, `None` for those not stored.
    async fn audit_nodes(&self, nodes: &[Node]) -> Result<Vec<Option<Hash>>>;
    /// The last sequence number stored from `source` (0: none).
    async fn audit_source_seq(&self, source: &str) -> Result<u64>;
    /// Entries `from..to` in position order, at most `limit`, with their
    /// recorded leaf hashes if `leaves`.
    async fn audit_entries(
        &self,
        from: u64,
        to: u64,
        limit: u32,
        leaves: bool,
    ) -> Result<Vec<AuditEntry>>;
    /// Entries matching `q`.
    async fn audit_query(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>>;
    /// Stores a signed head ([`super::Error::Conflict`] if one of that size
    /// exists).
    async fn audit_add_head(&self, head: &StoredHead) -> Result<()>;
    /// Heads of at least `from_size`, smallest first, at most `limit`.
    async fn audit_heads(&self, from_size: u64, limit: u32) -> Result<Vec<StoredHead>>;
    /// The head of exactly `size`, or the latest when `None`.
    async fn audit_head(&self, size: Option<u64>) -> Result<Option<StoredHead>>;
    /// Stores a head-signing key.
    async fn audit_add_key(&self, key: &AuditKey) -> Result<()>;
    /// Every head-signing key, oldest first.
    async fn audit_keys(&self) -> Result<Vec<AuditKey>>;
    /// Deletes the entries below `below` and the subtrees wholly inside
    /// that prefix except the heads of its largest complete subtrees
    /// ([`warden_shared::merkle::Frontier::peaks_of`]), and records the
    /// point; entries deleted. The point must rise.
    async fn audit_prune(&self, below: u64, by: &str, now_ms: i64) -> Result<u64>;
    /// The prune point (0: nothing pruned).
    async fn audit_pruned(&self) -> Result<u64>;
    /// The next position exporter `name` sends (0: from the start).
    async fn audit_export_position(&self, name: &str) -> Result<u64>;
    /// Records that exporter `name` has sent everything before `position`.
    async fn set_audit_export_position(&self, name: &str, position: u64) -> Result<()>;
}
