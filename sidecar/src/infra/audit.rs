//! The audit sink: the spool with what the sidecar's `[audit]` settings
//! make of a failure to spool. Tool calls (`gateway::record`) and
//! agent-to-agent messages (`a2a`) write through the same sink, so they
//! meet the same rule: in `refuse` mode (the default) an action whose
//! event cannot be spooled does not happen; in `continue` mode it does, and
//! the lost events are counted, alerted on and recorded as one gap event
//! once the spool takes events again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use warden_shared::audit::Event;

use super::spool::{Spool, SpoolError};
use crate::config::AuditOnFull;

/// How long a strict spool may take to sync an event before the action is
/// refused.
const SYNC_LIMIT: Duration = Duration::from_secs(5);

/// The spool, and what a failure to spool means.
#[derive(Debug)]
pub struct Sink {
    spool: Arc<Spool>,
    on_full: AuditOnFull,
    strict: bool,
    /// Events lost in `continue` mode since the last gap was recorded.
    dropped: AtomicU64,
}

impl Sink {
    /// Events go to `spool`; `strict` waits until each is on disk.
    pub fn new(spool: Arc<Spool>, on_full: AuditOnFull, strict: bool) -> Self {
        Self {
            spool,
            on_full,
            strict,
            dropped: AtomicU64::new(0),
        }
    }

    /// Whether an action may go on: in `refuse` mode, only while the spool
    /// has room for its event (what is kept beyond that is room for the
    /// event of a refusal).
    pub fn ready(&self) -> Result<(), SpoolError> {
        match self.on_full {
            AuditOnFull::Refuse => self.spool.has_room(),
            AuditOnFull::Continue => Ok(()),
        }
    }

    /// In strict mode, waits until the event `seq` is on disk.
    pub async fn settle(&self, seq: Option<u64>) -> Result<(), SpoolError> {
        match seq {
            Some(seq) if self.strict => self.spool.wait_synced(seq, SYNC_LIMIT).await,
            _ => Ok(()),
        }
    }

    /// Appends `event`: its sequence number; in `continue` mode a failure
    /// is counted (and recorded as a gap later), not returned.
    pub fn append(&self, event: &Event) -> Result<Option<u64>, SpoolError> {
        let lost = self.dropped.load(Ordering::Relaxed);
        if lost > 0 {
            let mut gap = event.clone();
            gap.kind = "audit.gap".into();
            gap.outcome = "lost".into();
            gap.arguments = None;
            gap.detail = BTreeMap::from([("lost_events".to_owned(), lost.to_string())]);
            if let Ok(bytes) = serde_json::to_vec(&gap)
                && self.spool.append(&bytes).is_ok()
            {
                self.dropped.fetch_sub(lost, Ordering::Relaxed);
                tracing::warn!(
                    lost,
                    "the audit spool takes events again; the gap is recorded"
                );
            }
        }
        let appended = serde_json::to_vec(event)
            .map_err(|e| SpoolError::Io(e.to_string()))
            .and_then(|bytes| self.spool.append(&bytes));
        match appended {
            Ok(seq) => Ok(Some(seq)),
            Err(e) if self.on_full == AuditOnFull::Continue => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 || n.is_power_of_two() {
                    tracing::error!(lost = n, error = %e, "ALERT: audit events are being lost (on_full = continue)");
                }
                Ok(None)
            }
            Err(e) => {
                tracing::error!(error = %e, kind = %event.kind, "an audit event could not be spooled (on_full = refuse: an action it allows is refused)");
                Err(e)
            }
        }
    }

    /// Bytes the spool holds, and its bound.
    pub fn usage(&self) -> (u64, u64) {
        self.spool.usage()
    }

    /// Audit events lost in `continue` mode and not yet recorded as a gap.
    pub fn lost(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::spool::{Cursor, Sync};

    fn event(kind: &str) -> Event {
        Event {
            kind: kind.into(),
            outcome: "allowed".into(),
            detail: BTreeMap::from([("pad".to_owned(), "p".repeat(400))]),
            ..Default::default()
        }
    }

    fn sink(dir: &std::path::Path, on_full: AuditOnFull) -> Sink {
        let spool = Spool::open(dir, 64 << 10, Sync::Every(Duration::from_millis(5))).unwrap();
        Sink::new(spool, on_full, false)
    }

    /// Appends events, then single bytes, until the spool takes not even
    /// one more byte; the last sequence number.
    fn fill(s: &Sink) -> u64 {
        let filler = serde_json::to_vec(&event("filler")).unwrap();
        while s.spool.append(&filler).is_ok() {}
        while s.spool.append(b"x").is_ok() {}
        s.spool.next_seq() - 1
    }

    #[tokio::test]
    async fn in_refuse_mode_an_event_the_spool_cannot_take_fails_the_action() {
        let d = tempfile::tempdir().unwrap();
        let s = sink(d.path(), AuditOnFull::Refuse);
        assert_eq!(s.ready(), Ok(()));
        assert_eq!(s.append(&event("first")).unwrap(), Some(1));
        let n = fill(&s);
        assert!(n > 100, "{n}");
        assert!(matches!(s.ready(), Err(SpoolError::Full { .. })));
        assert!(matches!(
            s.append(&event("refused")),
            Err(SpoolError::Full { .. })
        ));
        assert_eq!(s.lost(), 0, "nothing is lost: the action was refused");
        assert_eq!(s.settle(Some(1)).await, Ok(()), "not strict: no wait");
    }

    #[tokio::test]
    async fn in_continue_mode_the_loss_is_counted_and_recorded_as_one_gap() {
        let d = tempfile::tempdir().unwrap();
        let s = sink(d.path(), AuditOnFull::Continue);
        let filled = fill(&s);
        assert_eq!(s.ready(), Ok(()), "continue mode never holds an action");
        for _ in 0..3 {
            assert_eq!(s.append(&event("lost")).unwrap(), None);
        }
        assert_eq!(s.lost(), 3);
        // Shipped and acknowledged: room again. The next event is preceded
        // by the gap, which names the number lost.
        s.spool.acked(filled);
        let seq = s.append(&event("after")).unwrap().unwrap();
        assert_eq!(s.lost(), 0);
        s.spool
            .wait_synced(seq, Duration::from_secs(5))
            .await
            .unwrap();
        let got = s.spool.read(&mut Cursor::at(seq - 1), 10, 1 << 20).unwrap();
        let kinds: Vec<(String, Option<String>)> = got
            .iter()
            .map(|(_, b)| {
                let e: Event = serde_json::from_slice(b).unwrap();
                (e.kind, e.detail.get("lost_events").cloned())
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("audit.gap".to_owned(), Some("3".to_owned())),
                ("after".to_owned(), None)
            ]
        );
    }

    #[tokio::test]
    async fn in_strict_mode_an_action_waits_until_its_event_is_on_disk() {
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::open(d.path(), 64 << 10, Sync::Strict).unwrap();
        let s = Sink::new(Arc::clone(&spool), AuditOnFull::Refuse, true);
        let seq = s.append(&event("strict")).unwrap();
        s.settle(seq).await.unwrap();
        assert!(*spool.synced().borrow() >= seq.unwrap());
    }
}
