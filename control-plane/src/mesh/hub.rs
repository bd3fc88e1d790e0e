//! Wakes the mesh streams that a change concerns, and keeps the mesh-wide
//! list of blocked agents with a bounded log of its changes.
//!
//! A change to one agent (its status, a revoked session) wakes only that
//! agent's streams, through a watch channel per agent that exists while the
//! agent has a stream open; a change for everyone (policy, signing keys, the
//! blocked list) wakes every stream through one watch channel. Streams read
//! the state they need when woken, so a burst of changes costs one push.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;
use warden_shared::agent::{AgentId, AgentStatus};
use warden_shared::proto::v1 as pb;

use crate::store::{self, Store};

/// Changes of the blocked list remembered for deltas; a sidecar further
/// behind receives the complete list.
const BLOCKED_LOG_MAX: usize = 4096;

/// Why an agent is on the blocked list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    /// Revoked (or expired), else suspended.
    pub revoked: bool,
    /// When the entry drops out (unix seconds); `None` while suspended.
    pub until: Option<i64>,
}

/// The blocked list and its recent changes.
#[derive(Debug)]
struct BlockedLog {
    current: HashMap<String, Blocked>,
    /// `(seq, agent)` for each change, oldest first.
    log: VecDeque<(u64, String)>,
    /// A delta can be computed from any sequence number `>= base`.
    base: u64,
    seq: u64,
    /// Random per process: sequence numbers are only comparable within it.
    epoch: u64,
}

impl BlockedLog {
    /// Replaces the list; returns the agents whose entry changed.
    fn replace(&mut self, next: HashMap<String, Blocked>, seq: u64) -> Vec<String> {
        let mut changed: Vec<String> = next
            .iter()
            .filter(|(k, v)| self.current.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        changed.extend(
            self.current
                .keys()
                .filter(|k| !next.contains_key(*k))
                .cloned(),
        );
        if changed.is_empty() {
            return changed;
        }
        self.seq = seq;
        self.log.extend(changed.iter().map(|a| (seq, a.clone())));
        while self.log.len() > BLOCKED_LOG_MAX {
            if let Some((s, _)) = self.log.pop_front() {
                self.base = s;
            }
        }
        self.current = next;
        changed
    }

    fn entry(&self, agent: &str) -> Option<pb::BlockedAgent> {
        self.current.get(agent).map(|b| pb::BlockedAgent {
            agent_id: agent.to_owned(),
            status: if b.revoked {
                pb::AgentStatus::Revoked
            } else {
                pb::AgentStatus::Suspended
            }
            .into(),
            until: b.until.map(crate::timestamp),
        })
    }

    /// What a sidecar holding `from` needs, or `None` when it is current.
    fn part(&self, from: u64) -> Option<pb::BlockedAgentsPart> {
        if from == self.seq {
            return None;
        }
        if from >= self.base && from < self.seq {
            let agents: BTreeSet<&str> = self
                .log
                .iter()
                .filter(|(s, _)| *s > from)
                .map(|(_, a)| a.as_str())
                .collect();
            let (blocked, cleared): (Vec<&str>, Vec<&str>) = agents
                .into_iter()
                .partition(|a| self.current.contains_key(*a));
            return Some(pb::BlockedAgentsPart {
                complete: false,
                from_seq: from,
                seq: self.seq,
                epoch: self.epoch,
                blocked: blocked.iter().filter_map(|a| self.entry(a)).collect(),
                cleared: cleared.into_iter().map(str::to_owned).collect(),
            });
        }
        let mut all: Vec<&String> = self.current.keys().collect();
        all.sort();
        Some(pb::BlockedAgentsPart {
            complete: true,
            from_seq: 0,
            seq: self.seq,
            epoch: self.epoch,
            blocked: all.iter().filter_map(|a| self.entry(a)).collect(),
            cleared: Vec::new(),
        })
    }
}

/// How long a blocked-list change waits for the concerned agents' own
/// streams to push before every other stream is woken.
const OWN_FIRST: std::time::Duration = std::time::Duration::from_millis(100);

/// The channels of one agent's open streams.
#[derive(Debug)]
struct AgentEntry {
    /// Wakes them.
    changes: watch::Sender<u64>,
    /// Per stream (by id): the last change it has evaluated (and pushed).
    evaluated: Vec<(u64, watch::Receiver<u64>)>,
}

/// The streams' wake-up channels and the blocked list.
#[derive(Debug)]
pub struct Hub {
    version: Mutex<u64>,
    next_stream: std::sync::atomic::AtomicU64,
    agents: Mutex<HashMap<AgentId, AgentEntry>>,
    global: watch::Sender<u64>,
    blocked: RwLock<BlockedLog>,
    /// Serialises blocked-list refreshes so that each diff is against the
    /// list the previous one left.
    refreshing: tokio::sync::Mutex<()>,
}

impl Default for Hub {
    fn default() -> Self {
        let seq = wall_ms();
        Self {
            version: Mutex::new(seq),
            next_stream: std::sync::atomic::AtomicU64::new(0),
            agents: Mutex::default(),
            global: watch::channel(0).0,
            blocked: RwLock::new(BlockedLog {
                current: HashMap::new(),
                log: VecDeque::new(),
                base: seq,
                seq,
                epoch: rand::random::<u64>().max(1),
            }),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }
}

fn wall_ms() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// One stream's wake-up channels; leaving drops the agent's channel once
/// its last stream is gone.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Hub>,
    agent: AgentId,
    id: u64,
    /// Changes of this agent.
    pub agent_changes: watch::Receiver<u64>,
    /// Changes for everyone.
    pub global_changes: watch::Receiver<u64>,
    evaluated: watch::Sender<u64>,
}

impl Subscription {
    /// The stream has evaluated (and, if needed, pushed) this agent change.
    pub fn evaluated(&self, change: u64) {
        self.evaluated.send_replace(change);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut agents = self.hub.agents.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = agents.get_mut(&self.agent) {
            e.evaluated.retain(|(id, _)| *id != self.id);
            if e.evaluated.is_empty() {
                agents.remove(&self.agent);
            }
        }
    }
}

impl Hub {
    /// The next push version: increasing, and (with a millisecond wall clock
    /// as floor) increasing across restarts too, since a sidecar may report
    /// a version from before one.
    pub fn next_version(&self) -> u64 {
        let mut v = self.version.lock().unwrap_or_else(|p| p.into_inner());
        *v = (*v + 1).max(wall_ms());
        *v
    }

    /// The latest version handed out.
    pub fn version(&self) -> u64 {
        *self.version.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Channels for a new stream of `agent`.
    pub fn subscribe(self: &Arc<Self>, agent: &AgentId) -> Subscription {
        let id = self
            .next_stream
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (evaluated, done) = watch::channel(0);
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        let entry = agents.entry(agent.clone()).or_insert_with(|| AgentEntry {
            changes: watch::channel(0).0,
            evaluated: Vec::new(),
        });
        entry.evaluated.push((id, done));
        Subscription {
            hub: Arc::clone(self),
            agent: agent.clone(),
            id,
            agent_changes: entry.changes.subscribe(),
            global_changes: self.global.subscribe(),
            evaluated,
        }
    }

    /// Something concerning `agent` changed: wake its streams. Returns the
    /// change's version.
    pub fn agent_changed(&self, agent: &AgentId) -> u64 {
        let v = self.next_version();
        if let Some(e) = self
            .agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(agent)
        {
            e.changes.send_replace(v);
        }
        v
    }

    /// Waits (until `deadline`) for every open stream of `agent` to have
    /// evaluated change `v`.
    async fn evaluated(&self, agent: &AgentId, v: u64, deadline: tokio::time::Instant) {
        let streams: Vec<watch::Receiver<u64>> = self
            .agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(agent)
            .map(|e| e.evaluated.iter().map(|(_, r)| r.clone()).collect())
            .unwrap_or_default();
        for mut rx in streams {
            // A stream that ends meanwhile has nothing left to push.
            let _ = tokio::time::timeout_at(deadline, rx.wait_for(|g| *g >= v)).await;
        }
    }

    /// Something concerning everyone changed: wake every stream.
    pub fn global_changed(&self) {
        let v = self.next_version();
        self.global.send_replace(v);
    }

    /// Agents with a stream open (for tests and metrics).
    pub fn agents_connected(&self) -> usize {
        self.agents.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The blocked-list part for a sidecar holding `from`.
    pub fn blocked_part(&self, from: u64) -> Option<pb::BlockedAgentsPart> {
        self.blocked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .part(from)
    }

    /// The blocked list's epoch (random per process).
    pub fn blocked_epoch(&self) -> u64 {
        self.blocked.read().unwrap_or_else(|p| p.into_inner()).epoch
    }

    /// The blocked list's current sequence number.
    pub fn blocked_seq(&self) -> u64 {
        self.blocked.read().unwrap_or_else(|p| p.into_inner()).seq
    }

    /// Whether `agent` is on the blocked list.
    pub fn is_blocked(&self, agent: &str) -> Option<Blocked> {
        self.blocked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .current
            .get(agent)
            .copied()
    }

    /// Reads the blocked agents from the store and, if the list changed,
    /// wakes the changed agents' own streams, then every stream. Revoked
    /// and expired agents stay listed for `horizon` seconds after the fact:
    /// by then every certificate and token they held has expired.
    pub async fn refresh_blocked(
        &self,
        store: &dyn Store,
        now: i64,
        horizon: i64,
    ) -> store::Result<usize> {
        let _serial = self.refreshing.lock().await;
        let mut next = HashMap::new();
        for a in store.blocked_agents(now, now - horizon).await? {
            let expired = a.expires_at.is_some_and(|e| e <= now);
            let entry = match a.status {
                AgentStatus::Suspended => Blocked {
                    revoked: false,
                    until: None,
                },
                AgentStatus::Revoked => Blocked {
                    revoked: true,
                    until: Some(a.updated_at + horizon),
                },
                AgentStatus::Active if expired => Blocked {
                    revoked: true,
                    until: a.expires_at.map(|e| e + horizon),
                },
                AgentStatus::Active => continue,
            };
            if entry.until.is_none_or(|u| u > now) {
                next.insert(a.id.to_string(), entry);
            }
        }
        let seq = self.next_version();
        let changed = self
            .blocked
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .replace(next, seq);
        if changed.is_empty() {
            return Ok(0);
        }
        // The agents' own streams first: they carry the kill switch, and
        // waking every stream at once would queue theirs behind thousands.
        let deadline = tokio::time::Instant::now() + OWN_FIRST;
        let own: Vec<(AgentId, u64)> = changed
            .iter()
            .filter_map(|a| AgentId::new(a).ok())
            .map(|id| {
                let v = self.agent_changed(&id);
                (id, v)
            })
            .collect();
        for (id, v) in &own {
            self.evaluated(id, *v, deadline).await;
        }
        self.global.send_replace(seq);
        Ok(changed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(revoked: bool) -> Blocked {
        Blocked {
            revoked,
            until: None,
        }
    }

    #[test]
    fn deltas_carry_the_changes_since_the_held_sequence() {
        let mut log = BlockedLog {
            current: HashMap::new(),
            log: VecDeque::new(),
            base: 10,
            seq: 10,
            epoch: 1,
        };
        assert!(log.part(10).is_none());
        let full = log.part(0).unwrap();
        assert!(full.complete && full.blocked.is_empty() && full.seq == 10);

        let changed = log.replace(HashMap::from([("a".into(), b(false))]), 11);
        assert_eq!(changed, vec!["a".to_owned()]);
        let d = log.part(10).unwrap();
        assert!(!d.complete);
        assert_eq!((d.from_seq, d.seq), (10, 11));
        assert_eq!(d.blocked[0].agent_id, "a");

        // a revoked, b suspended: from 11 the delta names both; from 10 too.
        log.replace(
            HashMap::from([("a".into(), b(true)), ("b".into(), b(false))]),
            12,
        );
        assert_eq!(log.part(11).unwrap().blocked.len(), 2);
        // a dropped out: cleared.
        log.replace(HashMap::from([("b".into(), b(false))]), 13);
        let d = log.part(11).unwrap();
        assert_eq!(d.cleared, vec!["a".to_owned()]);
        assert_eq!(d.blocked.len(), 1);
        // Unchanged lists record nothing.
        assert!(
            log.replace(HashMap::from([("b".into(), b(false))]), 14)
                .is_empty()
        );
        assert_eq!(log.seq, 13);
        // Before the base, or from the future: the complete list.
        assert!(log.part(9).unwrap().complete);
        assert!(log.part(99).unwrap().complete);
    }

    #[test]
    fn the_log_is_bounded_and_moves_its_base() {
        let mut log = BlockedLog {
            current: HashMap::new(),
            log: VecDeque::new(),
            base: 1,
            seq: 1,
            epoch: 1,
        };
        for i in 0..(BLOCKED_LOG_MAX as u64 + 10) {
            let next = if i % 2 == 0 {
                HashMap::from([("x".into(), b(false))])
            } else {
                HashMap::new()
            };
            log.replace(next, 2 + i);
        }
        assert_eq!(log.log.len(), BLOCKED_LOG_MAX);
        assert!(log.base > 1);
        assert!(log.part(1).unwrap().complete);
        assert!(!log.part(log.base).unwrap().complete);
    }
}

#[cfg(test)]
mod store_tests {
    use super::*;
    use crate::store::SqliteStore;
    use crate::store::testing::agent;

    #[tokio::test]
    async fn refresh_lists_blocked_agents_until_their_credentials_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("w.db"), false)
            .await
            .unwrap();
        for id in ["a", "b"] {
            store.create_agent(&agent(id, 1)).await.unwrap();
        }
        let hub = Arc::new(Hub::default());
        let a = AgentId::new("a").unwrap();
        let mut sub = hub.subscribe(&a);
        store
            .set_agent_status(&a, AgentStatus::Revoked, "", 1000)
            .await
            .unwrap();
        assert_eq!(hub.refresh_blocked(&store, 1001, 100).await.unwrap(), 1);
        assert_eq!(
            hub.is_blocked("a"),
            Some(Blocked {
                revoked: true,
                until: Some(1100)
            })
        );
        // The agent's own stream and every stream were woken.
        assert!(sub.agent_changes.has_changed().unwrap());
        assert!(sub.global_changes.has_changed().unwrap());
        sub.global_changes.borrow_and_update();
        // Nothing changed: nothing recorded, nobody woken.
        let seq = hub.blocked_seq();
        assert_eq!(hub.refresh_blocked(&store, 1050, 100).await.unwrap(), 0);
        assert_eq!(hub.blocked_seq(), seq);
        assert!(!sub.global_changes.has_changed().unwrap());
        // Past the horizon it drops out, announced as cleared.
        assert_eq!(hub.refresh_blocked(&store, 1101, 100).await.unwrap(), 1);
        assert_eq!(hub.is_blocked("a"), None);
        assert_eq!(hub.blocked_part(seq).unwrap().cleared, ["a"]);
        // The agents map forgets an agent whose last stream is gone.
        assert_eq!(hub.agents_connected(), 1);
        drop(sub);
        assert_eq!(hub.agents_connected(), 0);
    }
}
