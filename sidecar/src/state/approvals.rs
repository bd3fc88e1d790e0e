//! The decisions on this agent's approval requests, as the control plane
//! pushes them over the mesh stream (each decision once, in order, after
//! the last one held), and the calls waiting for them. Held apart from the [`super::held::Held`]
//! snapshot: a decision must reach its waiting call in microseconds, not
//! after a snapshot is rebuilt and written to disk, and a restarted sidecar
//! has no waiting calls to hold them for.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use warden_shared::proto::v1 as pb;

use super::held::PushError;

/// Most decisions one push may carry (the control plane sends at most
/// 2,000).
const MAX_DECIDED: usize = 10_000;
/// Decisions kept, at most: the oldest go first.
const MAX_HELD: usize = 20_000;
/// How long a decision is kept: past the longest a call waits (1 h).
const KEEP: Duration = Duration::from_secs(3900);
/// Longest id, name or comment accepted.
const MAX_FIELD: usize = 1024;

/// What people decided on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The quorum approved: the call may run, once.
    Approved,
    /// Someone denied it.
    Denied {
        /// Who.
        by: String,
        /// Why.
        comment: String,
    },
}

#[derive(Debug, Default)]
struct Set {
    /// The last decision held (0: none).
    seq: u64,
    decided: HashMap<String, Decision>,
    /// When each arrived, oldest first, for pruning.
    arrived: VecDeque<(Instant, String)>,
}

/// The decided set and a signal for the calls waiting on it.
#[derive(Debug)]
pub struct Decisions {
    set: Mutex<Set>,
    /// Bumped on every change; waiters look their request up again.
    changed: watch::Sender<u64>,
}

impl Default for Decisions {
    fn default() -> Self {
        Self {
            set: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl Decisions {
    /// The last decision held (0: none), for the mesh `Hello`.
    pub fn seq(&self) -> u64 {
        self.set.lock().unwrap_or_else(|p| p.into_inner()).seq
    }

    /// Adds the pushed decisions (or, for a complete part, replaces what is
    /// held with them), or refuses the part whole.
    pub fn apply(&self, part: &pb::ApprovalsPart) -> Result<(), PushError> {
        self.apply_at(part, Instant::now())
    }

    fn apply_at(&self, part: &pb::ApprovalsPart, now: Instant) -> Result<(), PushError> {
        let bad = |m: String| Err(PushError::Approvals(m));
        if part.decided.len() > MAX_DECIDED {
            return bad(format!(
                "{} decisions, more than {MAX_DECIDED}",
                part.decided.len()
            ));
        }
        let mut decided = Vec::with_capacity(part.decided.len());
        for o in &part.decided {
            if o.id.is_empty()
                || [&o.id, &o.decided_by, &o.comment]
                    .iter()
                    .any(|f| f.len() > MAX_FIELD)
            {
                return bad("a decision with an empty or oversized field".to_owned());
            }
            let d = match o.status() {
                // Used: approved, and spent already (by an identical call);
                // a call waiting for it finds nothing left to spend.
                pb::ApprovalStatus::Approved | pb::ApprovalStatus::Used => Decision::Approved,
                pb::ApprovalStatus::Denied => Decision::Denied {
                    by: o.decided_by.clone(),
                    comment: o.comment.clone(),
                },
                other => {
                    return bad(format!(
                        "decision {} has status {}, neither approved nor denied",
                        o.id,
                        other.as_str_name()
                    ));
                }
            };
            decided.push((o.id.clone(), d));
        }
        {
            let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
            if part.complete {
                *set = Set::default();
            }
            set.seq = part.seq;
            for (id, d) in decided {
                set.arrived.push_back((now, id.clone()));
                set.decided.insert(id, d);
            }
            while set
                .arrived
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > KEEP)
                || set.arrived.len() > MAX_HELD
            {
                if let Some((_, id)) = set.arrived.pop_front() {
                    set.decided.remove(&id);
                }
            }
        }
        self.changed.send_modify(|g| *g += 1);
        Ok(())
    }

    /// The decision on request `id`, if one is held.
    pub fn get(&self, id: &str) -> Option<Decision> {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .decided
            .get(id)
            .cloned()
    }

    /// Waits for the decision on `id` until `deadline`; `None` when none
    /// came.
    pub async fn wait(&self, id: &str, deadline: tokio::time::Instant) -> Option<Decision> {
        // Subscribed before the first look, so no push falls between.
        let mut rx = self.changed.subscribe();
        loop {
            if let Some(d) = self.get(id) {
                return Some(d);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // Timed out, or the sender is gone (it lives as long as self).
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(id: &str, s: pb::ApprovalStatus) -> pb::ApprovalOutcome {
        pb::ApprovalOutcome {
            id: id.into(),
            status: s.into(),
            decided_by: "alice".into(),
            comment: "no".into(),
        }
    }

    #[tokio::test]
    async fn a_waiting_call_learns_its_decision_and_only_its_own() {
        let d = std::sync::Arc::new(Decisions::default());
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        let waiter = {
            let d = std::sync::Arc::clone(&d);
            tokio::spawn(async move { d.wait("apr_b", far).await })
        };
        d.apply(&pb::ApprovalsPart {
            seq: 1,
            decided: vec![outcome("apr_a", pb::ApprovalStatus::Approved)],
            complete: true,
        })
        .unwrap();
        d.apply(&pb::ApprovalsPart {
            seq: 2,
            decided: vec![outcome("apr_b", pb::ApprovalStatus::Denied)],
            complete: false,
        })
        .unwrap();
        assert_eq!(
            waiter.await.unwrap(),
            Some(Decision::Denied {
                by: "alice".into(),
                comment: "no".into()
            })
        );
        assert_eq!(d.seq(), 2);
        assert_eq!(d.get("apr_a"), Some(Decision::Approved), "kept from before");
        // A complete part replaces what is held.
        d.apply(&pb::ApprovalsPart {
            seq: 7,
            decided: vec![outcome("apr_z", pb::ApprovalStatus::Used)],
            complete: true,
        })
        .unwrap();
        assert_eq!((d.seq(), d.get("apr_a")), (7, None));
        assert_eq!(d.get("apr_z"), Some(Decision::Approved));
        // Nothing comes for an unknown request: the deadline ends the wait.
        let soon = tokio::time::Instant::now() + std::time::Duration::from_millis(20);
        assert_eq!(d.wait("apr_c", soon).await, None);
    }

    #[test]
    fn a_malformed_set_is_refused_whole() {
        let d = Decisions::default();
        d.apply(&pb::ApprovalsPart {
            seq: 5,
            decided: vec![outcome("apr_a", pb::ApprovalStatus::Approved)],
            complete: false,
        })
        .unwrap();
        for bad in [
            vec![outcome("apr_x", pb::ApprovalStatus::Pending)],
            vec![outcome("", pb::ApprovalStatus::Approved)],
            vec![outcome(&"x".repeat(2000), pb::ApprovalStatus::Approved)],
        ] {
            let e = d
                .apply(&pb::ApprovalsPart {
                    seq: 6,
                    decided: bad,
                    complete: true,
                })
                .unwrap_err();
            assert_eq!(e.part(), pb::MeshPart::Approvals);
        }
        assert_eq!((d.seq(), d.get("apr_a")), (5, Some(Decision::Approved)));
    }

    #[test]
    fn old_decisions_are_forgotten() {
        let d = Decisions::default();
        let t0 = Instant::now();
        let part = |seq: u64, id: &str| pb::ApprovalsPart {
            seq,
            decided: vec![outcome(id, pb::ApprovalStatus::Approved)],
            complete: false,
        };
        d.apply_at(&part(1, "apr_old"), t0).unwrap();
        d.apply_at(&part(2, "apr_new"), t0 + KEEP + Duration::from_secs(1))
            .unwrap();
        assert_eq!(d.get("apr_old"), None);
        assert_eq!(d.get("apr_new"), Some(Decision::Approved));
    }
}
