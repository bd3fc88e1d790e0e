//! Verified messages waiting for the agent's `ReceiveMessages` stream: a
//! bounded queue in memory. A delivery reserves its place before the
//! envelope is verified, so a full inbox refuses without spending the
//! message's nonce; one receiver drains it at a time, and a message taken
//! by a receiver that went away is handed to the next one first.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{Mutex, OwnedMutexGuard, mpsc};
use warden_shared::proto::v1 as pb;

/// Default capacity.
pub const DEFAULT_CAPACITY: usize = crate::config::DEFAULT_INBOX_CAPACITY;
/// Default bound of the payload bytes waiting.
pub const DEFAULT_MAX_BYTES: usize = crate::config::DEFAULT_INBOX_MAX_BYTES;

/// The receiving end and a message not yet handed over.
#[derive(Debug)]
pub struct Receiver {
    rx: mpsc::Receiver<pb::VerifiedMessage>,
    pending: Option<pb::VerifiedMessage>,
    bytes: Arc<AtomicUsize>,
}

impl Receiver {
    /// The next message (a returned one first).
    pub async fn next(&mut self) -> Option<pb::VerifiedMessage> {
        if let Some(m) = self.pending.take() {
            return Some(m);
        }
        let m = self.rx.recv().await?;
        self.bytes.fetch_sub(m.payload.len(), Ordering::AcqRel);
        Some(m)
    }

    /// Gives back a message that could not be handed over.
    pub fn give_back(&mut self, m: pb::VerifiedMessage) {
        self.pending = Some(m);
    }
}

/// The agent's inbox.
#[derive(Debug)]
pub struct Inbox {
    tx: mpsc::Sender<pb::VerifiedMessage>,
    rx: Arc<Mutex<Receiver>>,
    /// Payload bytes waiting (reserved or queued).
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    /// Messages queued.
    pub queued: AtomicU64,
    /// Deliveries refused because the inbox was full.
    pub full: AtomicU64,
}

impl Inbox {
    /// Holds at most `capacity` messages and `max_bytes` of payload.
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let bytes = Arc::new(AtomicUsize::new(0));
        Self {
            tx,
            rx: Arc::new(Mutex::new(Receiver {
                rx,
                pending: None,
                bytes: Arc::clone(&bytes),
            })),
            bytes,
            max_bytes,
            queued: AtomicU64::new(0),
            full: AtomicU64::new(0),
        }
    }

    /// A place for one message of up to `size` payload bytes, or `None`
    /// when full (by count or by bytes).
    pub fn reserve(&self, size: usize) -> Option<Reservation<'_>> {
        let fits = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b + size <= self.max_bytes).then_some(b + size)
            })
            .is_ok();
        let permit = if fits {
            self.tx.try_reserve().ok()
        } else {
            None
        };
        match permit {
            Some(permit) => Some(Reservation {
                permit: Some(permit),
                size,
                inbox: self,
            }),
            None => {
                if fits {
                    self.bytes.fetch_sub(size, Ordering::AcqRel);
                }
                self.full.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// The receiving end, once the previous receiver is done with it.
    pub async fn receiver(&self) -> OwnedMutexGuard<Receiver> {
        Arc::clone(&self.rx).lock_owned().await
    }

    /// The bound of the payload bytes waiting.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Whether no message waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A reserved place; dropped unused, it is given back.
#[derive(Debug)]
pub struct Reservation<'a> {
    permit: Option<mpsc::Permit<'a, pb::VerifiedMessage>>,
    size: usize,
    inbox: &'a Inbox,
}

impl Reservation<'_> {
    /// Queues the message (its payload at most the reserved size).
    pub fn send(mut self, m: pb::VerifiedMessage) {
        let unused = self.size.saturating_sub(m.payload.len());
        self.inbox.bytes.fetch_sub(unused, Ordering::AcqRel);
        self.size = 0;
        if let Some(p) = self.permit.take() {
            p.send(m);
            self.inbox.queued.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.permit.is_some() {
            self.inbox.bytes.fetch_sub(self.size, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_inboxes_refuse_and_returned_messages_come_first() {
        let inbox = Inbox::new(1, 10);
        let m = |id: &str| pb::VerifiedMessage {
            message_id: id.into(),
            payload: b"four".to_vec(),
            ..Default::default()
        };
        inbox.reserve(4).unwrap().send(m("a"));
        assert!(inbox.reserve(4).is_none());
        assert_eq!(inbox.full.load(Ordering::Relaxed), 1);
        let mut r = inbox.receiver().await;
        let a = r.next().await.unwrap();
        // Too many bytes for what is left, then a reservation given back.
        assert!(inbox.reserve(11).is_none());
        drop(inbox.reserve(10).unwrap());
        inbox.reserve(4).unwrap().send(m("b"));
        assert_eq!(inbox.bytes.load(Ordering::Relaxed), 4);
        r.give_back(a);
        assert_eq!(r.next().await.unwrap().message_id, "a");
        assert_eq!(r.next().await.unwrap().message_id, "b");
    }
}
