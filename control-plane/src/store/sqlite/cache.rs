//! Agents as last read, for [`super::SqliteStore::get_agent`]: every
//! session start and enrollment reads its agent, and a read through the
//! pool is a round trip to SQLite's thread. The only writes to `agents` are
//! the store's own, which drop the entry once they are done; a read that
//! raced a write (its generation changed meanwhile) is not kept, so the
//! cache is never staler than the database.

use std::collections::HashMap;
use std::sync::Mutex;

use warden_shared::agent::AgentId;

use crate::store::Agent;

/// Agents kept at most; past it the cache starts over.
const MAX_AGENTS: usize = 16_384;

#[derive(Debug, Default)]
pub(super) struct Agents {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bumped by every write to an agent.
    generation: u64,
    agents: HashMap<AgentId, Agent>,
}

impl Agents {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached agent `id`.
    pub(super) fn get(&self, id: &AgentId) -> Option<Agent> {
        self.lock().agents.get(id).cloned()
    }

    /// Taken before a read whose result may be kept.
    pub(super) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Keeps `agent` as read when no write happened since `generation`.
    pub(super) fn keep(&self, generation: u64, agent: &Agent) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.agents.len() >= MAX_AGENTS {
            inner.agents.clear();
        }
        inner.agents.insert(agent.id.clone(), agent.clone());
    }

    /// Called once a write to agent `id` is done (or failed: its outcome
    /// may be unknown).
    pub(super) fn forget(&self, id: &AgentId) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.agents.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::agent;

    #[test]
    fn a_read_that_raced_a_write_is_not_kept() {
        let c = Agents::default();
        let a = agent("a1", 2);
        let before = c.generation();
        c.forget(&a.id);
        c.keep(before, &a);
        assert!(c.get(&a.id).is_none());
        let now = c.generation();
        c.keep(now, &a);
        assert_eq!(c.get(&a.id), Some(a.clone()));
        c.forget(&a.id);
        assert!(c.get(&a.id).is_none());
    }
}
