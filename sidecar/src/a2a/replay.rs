//! The replay cache: each (sender, nonce) is accepted once while it could
//! still pass the freshness check. In process by default; in Redis (`SET
//! NX PX`) when replicas of a recipient must share the memory, with the
//! limiter's connection, timeout and breaker, and an explicit fail mode.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::infra::redis::Redis;

/// Default bound of the in-process cache (entries).
pub const DEFAULT_LOCAL_MAX: usize = crate::config::DEFAULT_REPLAY_MAX;
/// How long after its timestamp Redis keeps a nonce: the longest window any
/// policy allows (`max_age` ≤ 1 h, `max_skew` ≤ `max_age`). Replicas of one
/// recipient may hold different policy versions for a while (one cut off
/// from the control plane); each must find the nonces the others recorded.
pub const SHARED_WINDOW_MS: i64 = 2 * 3_600_000;

/// Why a nonce could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The in-process cache is full of live nonces.
    #[error("the replay cache is full ({0} live nonces)")]
    Full(usize),
    /// Redis failed or timed out, and the fail mode is closed.
    #[error("the shared replay cache is unreachable ({0})")]
    Redis(String),
}

pub use crate::config::OnFailure;

/// Nonces seen, with when they may be forgotten (unix ms).
#[derive(Debug)]
pub struct Local {
    seen: Mutex<HashMap<(String, [u8; 16]), i64>>,
    max: usize,
}

impl Local {
    /// At most `max` live entries.
    pub fn new(max: usize) -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    /// Records the nonce; `Ok(false)` if it is already recorded and live.
    pub fn first_time(
        &self,
        sender: &str,
        nonce: &[u8; 16],
        ttl_ms: u64,
        now_ms: i64,
    ) -> Result<bool, Error> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let key = (sender.to_owned(), *nonce);
        if seen.get(&key).is_some_and(|until| *until > now_ms) {
            return Ok(false);
        }
        if seen.len() >= self.max {
            seen.retain(|_, until| *until > now_ms);
            if seen.len() >= self.max {
                // Forgetting a live nonce would let its replay through.
                return Err(Error::Full(seen.len()));
            }
        }
        let until = now_ms.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
        seen.insert(key, until);
        Ok(true)
    }

    /// Whether the nonce is recorded and live.
    pub fn contains(&self, sender: &str, nonce: &[u8; 16], now_ms: i64) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&(sender.to_owned(), *nonce))
            .is_some_and(|until| *until > now_ms)
    }

    /// Live and expired entries held.
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The replay cache in use.
#[derive(Debug)]
pub enum ReplayCache {
    /// This sidecar's memory (the embedded default).
    Local(Local),
    /// Redis, shared by every replica of the recipient.
    Redis {
        /// The connection (shared with the limiter).
        redis: Arc<Redis>,
        /// Its fail mode.
        on_failure: OnFailure,
        /// Used while Redis is unreachable under `LocalFallback`.
        fallback: Local,
        /// Messages checked locally because Redis failed.
        fallbacks: AtomicU64,
    },
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

impl ReplayCache {
    /// Records `(sender, nonce)` of a message to `recipient` signed at
    /// `signed_at_ms`, for at least `ttl_ms`; `Ok(false)` if it was recorded
    /// before.
    pub async fn first_time(
        &self,
        recipient: &str,
        sender: &str,
        nonce: &[u8; 16],
        ttl_ms: u64,
        signed_at_ms: i64,
        now_ms: i64,
    ) -> Result<bool, Error> {
        match self {
            Self::Local(l) => l.first_time(sender, nonce, ttl_ms, now_ms),
            Self::Redis {
                redis,
                on_failure,
                fallback,
                fallbacks,
            } => {
                let key = format!(
                    "{}a2a:nonce:{recipient}:{sender}:{}",
                    redis.prefix,
                    hex(nonce)
                );
                let shared = u64::try_from(
                    signed_at_ms
                        .saturating_add(SHARED_WINDOW_MS)
                        .saturating_sub(now_ms),
                )
                .unwrap_or(0)
                .max(ttl_ms);
                match redis.set_nx(&key, shared).await {
                    // Nonces accepted here during an outage are only in this
                    // sidecar's memory: still replays after Redis is back.
                    Ok(true) => Ok(!fallback.contains(sender, nonce, now_ms)),
                    Ok(false) => Ok(false),
                    Err(e) if *on_failure == OnFailure::LocalFallback => {
                        fallbacks.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "replay cache: Redis failed; checking this sidecar's memory only");
                        fallback.first_time(sender, nonce, ttl_ms, now_ms)
                    }
                    Err(e) => Err(Error::Redis(e.to_string())),
                }
            }
        }
    }

    /// `local` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Local(_) => "local",
            Self::Redis { .. } => "redis",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_accepted_once_while_live_and_the_bound_holds() {
        let l = Local::new(2);
        let n = [1u8; 16];
        assert!(l.first_time("a", &n, 1000, 0).unwrap());
        assert!(!l.first_time("a", &n, 1000, 999).unwrap());
        // Another sender's identical nonce is another message.
        assert!(l.first_time("b", &n, 1000, 0).unwrap());
        // Full of live nonces: refused, never forgotten.
        assert!(matches!(
            l.first_time("c", &n, 1000, 10),
            Err(Error::Full(2))
        ));
        assert!(!l.first_time("a", &n, 1000, 10).unwrap());
        // Once expired, they make room (and the old nonce could no longer
        // pass the freshness check anyway).
        assert!(l.first_time("c", &n, 1000, 1000).unwrap());
        assert_eq!(l.len(), 1);
    }
}
