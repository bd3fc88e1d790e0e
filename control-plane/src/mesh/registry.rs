//! Who is connected: one entry per open mesh stream, with what it was
//! pushed and what it acknowledged (for `wardenctl sidecars list`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use warden_shared::agent::AgentId;

/// One open stream.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The sidecar's agent.
    pub agent: AgentId,
    /// Client address.
    pub peer: String,
    /// Unix seconds.
    pub connected_at: i64,
    /// Last version pushed, and when.
    pub pushed: (u64, i64),
    /// Last version acknowledged (0: none), and when.
    pub acked: (u64, i64),
    /// Last refused version and the sidecar's reason.
    pub nack: Option<(u64, String)>,
    /// The policy version the sidecar holds (0: none).
    pub policy: u64,
}

impl Entry {
    /// Seconds the latest push has waited for its acknowledgement (0 when
    /// the sidecar holds what it was pushed).
    pub fn lag(&self, now: i64) -> i64 {
        if self.acked.0 >= self.pushed.0 {
            0
        } else {
            (now - self.pushed.1).max(0)
        }
    }
}

/// All open streams.
#[derive(Debug, Default)]
pub struct Registry {
    next: AtomicU64,
    streams: Mutex<HashMap<u64, Entry>>,
    endings: Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

/// Removes its entry when the stream ends, however it ends.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Registration {
    fn update(&self, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self
            .registry
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&self.id)
        {
            f(e);
        }
    }

    /// A push was sent.
    pub fn pushed(&self, version: u64, now: i64) {
        self.update(|e| e.pushed = (version, now));
    }

    /// A push was acknowledged.
    pub fn acked(&self, version: u64, now: i64) {
        self.update(|e| e.acked = (version, now));
    }

    /// The sidecar holds this policy version.
    pub fn holds_policy(&self, version: u64) {
        self.update(|e| e.policy = version);
    }

    /// A push was refused.
    pub fn nacked(&self, version: u64, reason: String) {
        self.update(|e| e.nack = Some((version, reason)));
    }
}

impl Registry {
    /// Records a new stream.
    pub fn open(self: &Arc<Self>, agent: AgentId, peer: String, now: i64) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            agent,
            peer,
            connected_at: now,
            pushed: (0, now),
            acked: (0, 0),
            nack: None,
            policy: 0,
        };
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, entry);
        Registration {
            registry: Arc::clone(self),
            id,
        }
    }

    /// Counts a stream ending by its reason.
    pub fn ended(&self, reason: &'static str) {
        *self
            .endings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// Stream endings so far, by reason.
    pub fn endings(&self) -> Vec<(&'static str, u64)> {
        self.endings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// Every open stream, by agent.
    pub fn list(&self) -> Vec<Entry> {
        let mut all: Vec<Entry> = self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| (&a.agent, a.connected_at).cmp(&(&b.agent, b.connected_at)));
        all
    }
}
