//! Verified messages waiting for the agent's `ReceiveMessages` stream: a
//! bounded queue in memory. A delivery reserves its place before the
//! envelope is verified, so a full inbox refuses without spending the
//! message's nonce; one receiver drains it at a time, and a message taken
//! by a receiver that went away is handed to the next one first.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Mutex, OwnedMutexGuard, mpsc};
use warden_shared::proto::v1 as pb;

/// Default capacity.
pub const DEFAULT_CAPACITY: usize = 1024;

/// The receiving end and a message not yet handed over.
#[derive(Debug)]
pub struct Receiver {
    rx: mpsc::Receiver<pb::VerifiedMessage>,
    pending: Option<pb::VerifiedMessage>,
}

impl Receiver {
    /// The next message (a returned one first).
    pub async fn next(&mut self) -> Option<pb::VerifiedMessage> {
        match self.pending.take() {
            Some(m) => Some(m),
            None => self.rx.recv().await,
        }
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
    /// Messages queued.
    pub queued: AtomicU64,
    /// Deliveries refused because the inbox was full.
    pub full: AtomicU64,
}

impl Inbox {
    /// Holds at most `capacity` messages.
    pub fn new(capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        Self {
            tx,
            rx: Arc::new(Mutex::new(Receiver { rx, pending: None })),
            queued: AtomicU64::new(0),
            full: AtomicU64::new(0),
        }
    }

    /// A place for one message, or `None` when full.
    pub fn reserve(&self) -> Option<mpsc::Permit<'_, pb::VerifiedMessage>> {
        match self.tx.try_reserve() {
            Ok(p) => Some(p),
            Err(_) => {
                self.full.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Counts a queued message.
    pub fn queued(&self) {
        self.queued.fetch_add(1, Ordering::Relaxed);
    }

    /// The receiving end, once the previous receiver is done with it.
    pub async fn receiver(&self) -> OwnedMutexGuard<Receiver> {
        Arc::clone(&self.rx).lock_owned().await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_inboxes_refuse_and_returned_messages_come_first() {
        let inbox = Inbox::new(1);
        let m = |id: &str| pb::VerifiedMessage {
            message_id: id.into(),
            ..Default::default()
        };
        inbox.reserve().unwrap().send(m("a"));
        assert!(inbox.reserve().is_none());
        assert_eq!(inbox.full.load(Ordering::Relaxed), 1);
        let mut r = inbox.receiver().await;
        let a = r.next().await.unwrap();
        inbox.reserve().unwrap().send(m("b"));
        r.give_back(a);
        assert_eq!(r.next().await.unwrap().message_id, "a");
        assert_eq!(r.next().await.unwrap().message_id, "b");
    }
}
