//! The tamper-evident audit log: one task appends events to the store's
//! Merkle tree (RFC 9162) in batches, keeps the tree's right edge in
//! memory, and signs tree heads with an Ed25519 key, periodically and on
//! demand. Appends and signatures go through that one task, so a head
//! always covers exactly what was committed before it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ring::signature::{Ed25519KeyPair, KeyPair};
use tokio::sync::{mpsc, oneshot, watch};
use warden_shared::audit::{
    self, Actor, ActorKind, CONTROL_PLANE_SOURCE, Event, RECORD_VERSION, Record, TreeHead,
};
use warden_shared::merkle::{self, Frontier, Hash, Node};

use crate::store::{
    self, AuditAppend, AuditGuard, AuditKey, AuditRow, BuildAppend, Store, StoredHead,
};

/// Events appended in one transaction, at most.
const MAX_BATCH_EVENTS: usize = 8192;
/// Appends waiting for the log task before callers are back-pressured.
const QUEUE: usize = 1024;

/// Why the log could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed; nothing was appended.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The log task has stopped.
    #[error("the audit log has stopped")]
    Stopped,
    /// The stored tree lacks a subtree it must have.
    #[error("the stored audit tree lacks subtree {0:?} (the database was altered)")]
    Incomplete(Node),
    /// A stored signing key is unusable.
    #[error("stored audit key {0} is unusable")]
    BadKey(String),
}

/// One event to append: from a source's spool (with its sequence number)
/// or the control plane's own (numbered by the log).
#[derive(Clone, Debug)]
pub struct Incoming {
    /// Its number in the source; `None` for the control plane's events.
    pub seq: Option<u64>,
    /// The event.
    pub event: Event,
}

enum Msg {
    Append {
        source: String,
        events: Vec<Incoming>,
        done: oneshot::Sender<Result<u64, Error>>,
    },
    Guarded {
        guarded: Box<(Event, AuditGuard)>,
        done: oneshot::Sender<Result<bool, Error>>,
    },
    Sign {
        done: oneshot::Sender<Result<StoredHead, Error>>,
    },
    SourceSeq {
        source: String,
        done: oneshot::Sender<Result<u64, Error>>,
    },
}

/// The audit log's handle.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    /// The log's id in signed heads: the trust domain.
    pub log_id: String,
    /// Entries in the log, as each append commits.
    pub size: watch::Receiver<u64>,
}

/// The head-signing key.
struct Signer {
    kid: String,
    key: Ed25519KeyPair,
}

impl Signer {
    fn sign(&self, log_id: &str, head: TreeHead) -> StoredHead {
        StoredHead {
            head,
            kid: self.kid.clone(),
            signature: self
                .key
                .sign(&audit::head_message(log_id, &head))
                .as_ref()
                .to_vec(),
        }
    }
}

/// The key id of a public key: the first 8 bytes of its SHA-256, hex.
pub fn key_id(public_key: &[u8]) -> String {
    merkle::hex(&ring::digest::digest(&ring::digest::SHA256, public_key).as_ref()[..8])
}

async fn load_signer(store: &dyn Store) -> Result<Signer, Error> {
    let keys = store.audit_keys().await?;
    if let Some(k) = keys.last() {
        let key = Ed25519KeyPair::from_pkcs8(&k.pkcs8).map_err(|_| Error::BadKey(k.kid.clone()))?;
        return Ok(Signer {
            kid: k.kid.clone(),
            key,
        });
    }
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| Error::BadKey("new".into()))?;
    let key =
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| Error::BadKey("new".into()))?;
    let public_key = key.public_key().as_ref().to_vec();
    let kid = key_id(&public_key);
    store
        .audit_add_key(&AuditKey {
            kid: kid.clone(),
            pkcs8: pkcs8.as_ref().to_vec(),
            public_key,
            created_ms: crate::now_unix_ms(),
        })
        .await?;
    tracing::info!(kid = %kid, "created the audit log's head-signing key");
    Ok(Signer { kid, key })
}

/// Reads the subtrees `nodes` from the store; every one must be there.
pub async fn read_nodes(store: &dyn Store, nodes: &[Node]) -> Result<HashMap<Node, Hash>, Error> {
    let got = store.audit_nodes(nodes).await?;
    nodes
        .iter()
        .zip(got)
        .map(|(n, h)| h.map(|h| (*n, h)).ok_or(Error::Incomplete(*n)))
        .collect()
}

/// Runs `f` over the stored tree: learns which subtrees it reads, fetches
/// them at once, then runs it on them.
pub async fn over_stored<T>(
    store: &dyn Store,
    f: impl Fn(&mut dyn FnMut(Node) -> Hash) -> T,
) -> Result<T, Error> {
    let nodes = merkle::nodes_read(|n| {
        f(n);
    });
    let map = read_nodes(store, &nodes).await?;
    Ok(f(&mut |n| map.get(&n).copied().unwrap_or_default()))
}

impl AuditLog {
    /// Opens the log: the signing key (made on first use), the tree's right
    /// edge, a check of the stored tree against the latest signed head.
    /// Spawns the log task, which signs a head every `interval` when the
    /// log grew, and a last one when every handle is gone.
    pub async fn open(
        store: Arc<dyn Store>,
        log_id: String,
        interval: Duration,
    ) -> Result<Self, Error> {
        let signer = load_signer(store.as_ref()).await?;
        let size = store.audit_size().await?;
        let peaks_at = Frontier::peaks_of(size);
        let peaks = read_nodes(store.as_ref(), &peaks_at).await?;
        let frontier = Frontier::restore(size, peaks_at.iter().map(|n| peaks[n]).collect())
            .ok_or(Error::Incomplete(Node { level: 0, index: 0 }))?;
        let latest = store.audit_head(None).await?;
        if let Some(h) = &latest {
            let root = if h.head.size == size {
                frontier.root()
            } else {
                over_stored(store.as_ref(), |n| merkle::stored_root(h.head.size, n)).await?
            };
            if root != h.head.root || h.head.size > size {
                tracing::error!(
                    signed_size = h.head.size,
                    size,
                    "the stored audit log does not match its latest signed head: it was altered; run `wardenctl audit verify`"
                );
            }
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let (size_tx, size_rx) = watch::channel(size);
        let task = Task {
            store,
            log_id: log_id.clone(),
            signer,
            frontier,
            signed: latest.map_or(0, |h| h.head.size),
            seqs: HashMap::new(),
            size: size_tx,
        };
        tokio::spawn(task.run(rx, interval));
        Ok(Self {
            tx,
            log_id,
            size: size_rx,
        })
    }

    /// Appends a source's events; answers the source's last stored
    /// sequence number once they are committed. Events at or below it are
    /// skipped (shipped twice).
    pub async fn append(&self, source: String, events: Vec<Incoming>) -> Result<u64, Error> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Msg::Append {
                source,
                events,
                done,
            })
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Records one of the control plane's own events (waits until it is
    /// committed).
    pub async fn record(&self, event: Event) -> Result<(), Error> {
        self.append(
            CONTROL_PLANE_SOURCE.into(),
            vec![Incoming { seq: None, event }],
        )
        .await
        .map(|_| ())
    }

    /// Does what `guard` says and records `event` for it in one
    /// transaction: both or neither. Whether the guard took effect (the
    /// event is recorded only if it did).
    pub async fn record_guarded(&self, event: Event, guard: AuditGuard) -> Result<bool, Error> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Msg::Guarded {
                guarded: Box::new((event, guard)),
                done,
            })
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Records an event of the control plane's own, logging (not
    /// returning) a failure: for acts already done that must not be undone
    /// because their record failed.
    pub async fn note(&self, event: Event) {
        let kind = event.kind.clone();
        if let Err(e) = self.record(event).await {
            tracing::error!(kind = %kind, error = %e, "could not append an event to the audit log");
        }
    }

    /// Signs a head over the log as it is now (the latest head if the log
    /// has not grown since).
    pub async fn sign(&self) -> Result<StoredHead, Error> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Msg::Sign { done })
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// The last sequence number stored from `source`.
    pub async fn source_seq(&self, source: String) -> Result<u64, Error> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Msg::SourceSeq { source, done })
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }
}

/// An event of the control plane's own, now.
pub fn event(kind: &str, actor: ActorKind, actor_id: &str) -> Event {
    Event {
        time_ms: crate::now_unix_ms(),
        kind: kind.into(),
        actor: Actor {
            kind: actor,
            id: actor_id.into(),
        },
        ..Event::default()
    }
}

struct Task {
    store: Arc<dyn Store>,
    log_id: String,
    signer: Signer,
    frontier: Frontier,
    /// Size of the latest signed head.
    signed: u64,
    /// Last stored sequence number by source (read from the store once).
    seqs: HashMap<String, u64>,
    size: watch::Sender<u64>,
}

/// What waits in a batch.
enum Pending {
    /// A source's events.
    Events(String, Vec<Incoming>, oneshot::Sender<Result<u64, Error>>),
    /// One of the control plane's events and the write it stands for.
    Guarded(
        Box<(Event, AuditGuard)>,
        oneshot::Sender<Result<bool, Error>>,
    ),
}

impl Pending {
    fn source(&self) -> &str {
        match self {
            Self::Events(source, ..) => source,
            Self::Guarded(..) => CONTROL_PLANE_SOURCE,
        }
    }

    fn fail(self, e: Error) {
        match self {
            Self::Events(.., done) => drop(done.send(Err(e))),
            Self::Guarded(.., done) => drop(done.send(Err(e))),
        }
    }
}

/// Who is answered once a batch commits.
enum Waiter {
    /// With the source's last stored number.
    Events(oneshot::Sender<Result<u64, Error>>, String),
    /// With whether the guard (its index in the batch) took effect.
    Guarded(oneshot::Sender<Result<bool, Error>>, usize),
}

/// A batch's events from one caller, as the append is built from them.
#[derive(Clone)]
struct Part {
    source: String,
    events: Vec<Incoming>,
    /// The index of the guard the events stand for.
    guard: Option<usize>,
}

/// The tree and the sources' numbers after an append.
type Built = (Frontier, HashMap<String, u64>);

/// Numbers a batch's events and hashes them into the tree, from the tree
/// and each source's last stored number as they were: the append, and the
/// tree and numbers after it. Events a source shipped before are skipped;
/// events whose guard did not take effect are left out.
fn build(
    mut frontier: Frontier,
    mut seqs: HashMap<String, u64>,
    parts: Vec<Part>,
    took: &[bool],
    received_ms: i64,
) -> (AuditAppend, Built) {
    let mut append = AuditAppend::default();
    for Part {
        source,
        events,
        guard,
    } in parts
    {
        if guard.is_some_and(|i| !took.get(i).copied().unwrap_or(false)) {
            continue;
        }
        let mut last = seqs.get(&source).copied().unwrap_or(0);
        for Incoming { seq, event } in events {
            let seq = match seq {
                Some(s) if s <= last => continue,
                Some(s) => s,
                None => last + 1,
            };
            last = seq;
            let row = AuditRow {
                position: frontier.size(),
                time_ms: event.time_ms,
                kind: event.kind.clone(),
                agent: event.agent.clone(),
                session: event.session.clone(),
                tool: event.tool.clone(),
                outcome: event.outcome.clone(),
                record: Record {
                    v: RECORD_VERSION,
                    source: source.clone(),
                    seq,
                    received_ms,
                    event,
                }
                .to_bytes(),
            };
            frontier.push(merkle::leaf_hash(&row.record), &mut append.nodes);
            append.rows.push(row);
        }
        seqs.insert(source, last);
    }
    append.sources = seqs.iter().map(|(s, n)| (s.clone(), *n)).collect();
    (append, (frontier, seqs))
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => self.handle(m, &mut rx).await,
                    None => break,
                },
                _ = tick.tick() => self.sign_if_grown().await,
            }
        }
        self.sign_if_grown().await;
    }

    async fn sign_if_grown(&mut self) {
        if self.frontier.size() > self.signed
            && let Err(e) = self.sign().await
        {
            tracing::warn!(error = %e, "could not sign an audit tree head; will retry");
        }
    }

    async fn sign(&mut self) -> Result<StoredHead, Error> {
        if self.frontier.size() == self.signed
            && let Some(h) = self.store.audit_head(Some(self.signed)).await?
        {
            return Ok(h);
        }
        let head = TreeHead {
            size: self.frontier.size(),
            root: self.frontier.root(),
            time_ms: crate::now_unix_ms(),
        };
        let signed = self.signer.sign(&self.log_id, head);
        self.store.audit_add_head(&signed).await?;
        self.signed = head.size;
        Ok(signed)
    }

    async fn seq(&mut self, source: &str) -> Result<u64, Error> {
        if let Some(s) = self.seqs.get(source) {
            return Ok(*s);
        }
        let s = self.store.audit_source_seq(source).await?;
        self.seqs.insert(source.to_owned(), s);
        Ok(s)
    }

    async fn handle(&mut self, first: Msg, rx: &mut mpsc::Receiver<Msg>) {
        let mut batch = Vec::new();
        let mut events = 0;
        let mut next = Some(first);
        // Every append already queued joins this one transaction.
        while let Some(m) = next.take() {
            match m {
                Msg::Append {
                    source,
                    events: e,
                    done,
                } => {
                    events += e.len();
                    batch.push(Pending::Events(source, e, done));
                }
                Msg::Guarded { guarded, done } => {
                    events += 1;
                    batch.push(Pending::Guarded(guarded, done));
                }
                Msg::Sign { done } => {
                    self.commit(std::mem::take(&mut batch)).await;
                    let _ = done.send(self.sign().await);
                }
                Msg::SourceSeq { source, done } => {
                    self.commit(std::mem::take(&mut batch)).await;
                    let _ = done.send(self.seq(&source).await);
                }
            }
            if events < MAX_BATCH_EVENTS {
                next = rx.try_recv().ok();
            }
        }
        self.commit(batch).await;
    }

    async fn commit(&mut self, batch: Vec<Pending>) {
        if batch.is_empty() {
            return;
        }
        // Each source's last stored number, before the transaction.
        let mut seqs: HashMap<String, u64> = HashMap::new();
        let mut parts = Vec::with_capacity(batch.len());
        let mut waiters = Vec::with_capacity(batch.len());
        let mut guards = Vec::new();
        for p in batch {
            if !seqs.contains_key(p.source()) {
                match self.seq(p.source()).await {
                    Ok(s) => {
                        seqs.insert(p.source().to_owned(), s);
                    }
                    Err(e) => {
                        p.fail(e);
                        continue;
                    }
                }
            }
            match p {
                Pending::Events(source, events, done) => {
                    waiters.push(Waiter::Events(done, source.clone()));
                    parts.push(Part {
                        source,
                        events,
                        guard: None,
                    });
                }
                Pending::Guarded(guarded, done) => {
                    let (event, guard) = *guarded;
                    waiters.push(Waiter::Guarded(done, guards.len()));
                    parts.push(Part {
                        source: CONTROL_PLANE_SOURCE.into(),
                        events: vec![Incoming { seq: None, event }],
                        guard: Some(guards.len()),
                    });
                    guards.push(guard);
                }
            }
        }
        if waiters.is_empty() {
            return;
        }
        let (frontier, received_ms) = (self.frontier.clone(), crate::now_unix_ms());
        let (result, built) = if guards.is_empty() {
            let (append, built) = build(frontier, seqs, parts, &[], received_ms);
            let result = if append.rows.is_empty() {
                Ok(Vec::new())
            } else {
                self.store.audit_append(append).await.map(|()| Vec::new())
            };
            (result, Some(built))
        } else {
            // Built inside the transaction, once the guards have run (perhaps
            // twice: first as if every guard took); what the last build
            // leaves the tree at comes back through `after`.
            let after: Arc<std::sync::Mutex<Option<Built>>> = Arc::default();
            let slot = Arc::clone(&after);
            let make: BuildAppend = Box::new(move |took: &[bool]| {
                let (append, built) = build(
                    frontier.clone(),
                    seqs.clone(),
                    parts.clone(),
                    took,
                    received_ms,
                );
                if let Ok(mut s) = slot.lock() {
                    *s = Some(built);
                }
                append
            });
            let result = self.store.audit_append_guarded(guards, make).await;
            let built = after.lock().ok().and_then(|mut s| s.take());
            (result, built)
        };
        match (result, built) {
            (Ok(took), Some((frontier, seqs))) => {
                self.frontier = frontier;
                self.seqs.extend(seqs);
                self.size.send_replace(self.frontier.size());
                for w in waiters {
                    match w {
                        Waiter::Events(done, source) => {
                            let _ = done.send(Ok(self.seqs.get(&source).copied().unwrap_or(0)));
                        }
                        Waiter::Guarded(done, i) => {
                            let _ = done.send(Ok(took.get(i).copied().unwrap_or(false)));
                        }
                    }
                }
            }
            (result, _) => {
                let msg = match result {
                    Err(e) => e.to_string(),
                    Ok(_) => "the append was not built".to_owned(),
                };
                tracing::error!(error = %msg, "could not append to the audit log");
                for w in waiters {
                    let e = || Error::Store(store::Error::Commit(msg.clone()));
                    match w {
                        Waiter::Events(done, _) => drop(done.send(Err(e()))),
                        Waiter::Guarded(done, _) => drop(done.send(Err(e()))),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;
    use crate::store::testing::{agent, session};
    use warden_shared::agent::AgentId;

    async fn log() -> (AuditLog, Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join("w.db"), false)
                .await
                .unwrap(),
        );
        store.create_agent(&agent("a1", 5)).await.unwrap();
        let log = AuditLog::open(Arc::clone(&store), "td".into(), Duration::from_secs(3600))
            .await
            .unwrap();
        (log, store, dir)
    }

    fn opening(id: &str) -> (Event, AuditGuard) {
        let mut e = event("session.started", ActorKind::Agent, "a1");
        e.session = id.into();
        let session = session(id, "a1", 1000);
        (
            e,
            AuditGuard::OpenSession {
                session,
                max: 5,
                now: 150,
            },
        )
    }

    /// Every stored record, decoded, and the root over them.
    async fn stored(store: &dyn Store) -> (Vec<Record>, Hash) {
        let size = store.audit_size().await.unwrap();
        let entries = store.audit_entries(0, size, 10_000, false).await.unwrap();
        assert_eq!(entries.len() as u64, size);
        let leaves: Vec<Hash> = entries
            .iter()
            .map(|e| merkle::leaf_hash(&e.record))
            .collect();
        let records = entries
            .iter()
            .map(|e| Record::from_bytes(&e.record).unwrap())
            .collect();
        (records, merkle::root(&leaves))
    }

    #[tokio::test]
    async fn a_guarded_event_is_recorded_only_with_its_write() {
        let (log, store, _d) = log().await;
        // Twelve openings race six plain events; the cap is five sessions.
        let mut tasks = Vec::new();
        for i in 0..12 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let (e, g) = opening(&format!("s{i}"));
                log.record_guarded(e, g).await.map(|took| took as u64)
            }));
        }
        for i in 0..6 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut e = event("agent.suspended", ActorKind::Human, "root");
                e.detail.insert("n".into(), i.to_string());
                log.record(e).await.map(|()| 0)
            }));
        }
        let mut opened = 0;
        for t in tasks {
            opened += t.await.unwrap().unwrap();
        }
        assert_eq!(opened, 5);
        let a1 = AgentId::new("a1").unwrap();
        assert_eq!(store.open_sessions(&a1, 150).await.unwrap(), 5);

        let (records, root) = stored(store.as_ref()).await;
        assert_eq!(records.len(), 11, "5 sessions and 6 plain events");
        assert_eq!(*log.size.borrow(), 11);
        // Numbered without gaps: a refused opening takes no number.
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=11).collect::<Vec<_>>());
        // Each recorded opening is an open session (and there are five of each).
        let recorded: Vec<&Record> = records
            .iter()
            .filter(|r| r.event.kind == "session.started")
            .collect();
        assert_eq!(recorded.len(), 5);
        for r in recorded {
            assert!(
                store.end_session(&a1, &r.event.session, 150).await.unwrap(),
                "{} recorded but not opened",
                r.event.session
            );
        }
        // The tree the log holds is the tree over what was stored.
        let head = log.sign().await.unwrap();
        assert_eq!((head.head.size, head.head.root), (11, root));
        let from_nodes = over_stored(store.as_ref(), |n| merkle::stored_root(11, n))
            .await
            .unwrap();
        assert_eq!(from_nodes, root);
    }

    #[tokio::test]
    async fn a_failed_guard_records_nothing_and_opens_nothing() {
        let (log, store, _d) = log().await;
        let (e, g) = opening("s1");
        assert!(log.record_guarded(e, g).await.unwrap());
        // The same session id again: the insert fails, so does the append.
        let (mut e, mut g) = opening("s1");
        e.detail.insert("again".into(), "1".into());
        let AuditGuard::OpenSession { session, .. } = &mut g else {
            panic!("opening() opens a session");
        };
        session.jti = "j-other".into();
        assert!(matches!(
            log.record_guarded(e, g).await,
            Err(Error::Store(_))
        ));
        let (records, root) = stored(store.as_ref()).await;
        assert_eq!(records.len(), 1);
        assert_eq!(*log.size.borrow(), 1);
        // The log goes on from where it was.
        let (e, g) = opening("s2");
        assert!(log.record_guarded(e, g).await.unwrap());
        let (records, _) = stored(store.as_ref()).await;
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
        let head = log.sign().await.unwrap();
        assert_ne!(head.head.root, root);
        assert_eq!(head.head.root, stored(store.as_ref()).await.1);
    }
}
