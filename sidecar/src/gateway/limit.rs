//! Stage 5: rate limits, behind the [`Limiter`] interface (the in-process
//! GCRA here; a shared Redis backend plugs in behind the same interface),
//! and the per-session tool-call cap checked by stage 1.
//!
//! GCRA: a limit of `n` calls per `period` spaces calls `period / n` apart
//! (the emission interval) and tolerates a burst of `n` at once; the state
//! per key is one instant, the theoretical arrival time of the next call.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A limit: `calls` per `period`, bursts of up to `calls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Calls allowed per period.
    pub calls: u32,
    /// The period.
    pub period: Duration,
}

impl Rate {
    /// `calls` per minute.
    pub fn per_minute(calls: u32) -> Self {
        Self {
            calls,
            period: Duration::from_secs(60),
        }
    }
}

/// Decides whether a call under `key` fits `rate`; `Err` carries how long
/// until it would.
pub trait Limiter: Send + Sync + std::fmt::Debug {
    /// Checks and, if admitted, counts one call.
    fn check(&self, key: &str, rate: Rate, now: Instant) -> Result<(), Duration>;
}

const SHARDS: usize = 16;
/// Keys per shard before idle ones are swept.
const SWEEP_AT: usize = 4096;

/// The in-process GCRA limiter.
#[derive(Debug)]
pub struct LocalLimiter {
    shards: [Mutex<HashMap<String, Instant>>; SHARDS],
}

impl Default for LocalLimiter {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }
}

impl Limiter for LocalLimiter {
    fn check(&self, key: &str, rate: Rate, now: Instant) -> Result<(), Duration> {
        if rate.calls == 0 {
            return Err(rate.period);
        }
        let interval = rate.period / rate.calls;
        let tolerance = rate.period;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let shard = &self.shards[(h.finish() as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SWEEP_AT && !map.contains_key(key) {
            // A key whose next arrival time has passed holds no debt.
            map.retain(|_, tat| *tat > now);
        }
        let tat = map.get(key).copied().unwrap_or(now).max(now);
        let next = tat + interval;
        if next.duration_since(now) > tolerance {
            return Err(next.duration_since(now) - tolerance);
        }
        match map.get_mut(key) {
            Some(t) => *t = next,
            None => {
                map.insert(key.to_owned(), next);
            }
        }
        Ok(())
    }
}

/// Most sessions whose calls are counted at once.
const SESSIONS_MAX: usize = 100_000;

/// Tool calls made per session, for `max_tool_calls`. The count lives in
/// the sidecar (a token is bound to it); an entry drops out when its token
/// expires.
#[derive(Debug, Default)]
pub struct SessionCalls {
    calls: Mutex<HashMap<String, (u32, i64)>>,
}

impl SessionCalls {
    /// Counts a call of session `sid` (token expiry `exp`) if it stays
    /// within `max` (0: no cap); returns the count, or `Err(max)`.
    pub fn take(&self, sid: &str, max: u32, exp: i64, now: i64) -> Result<u32, u32> {
        if max == 0 {
            return Ok(0);
        }
        let mut m = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= SESSIONS_MAX && !m.contains_key(sid) {
            m.retain(|_, (_, e)| *e > now);
            if m.len() >= SESSIONS_MAX {
                // Fail closed rather than forget a count.
                return Err(max);
            }
        }
        let entry = m.entry(sid.to_owned()).or_insert((0, exp));
        if entry.0 >= max {
            return Err(max);
        }
        entry.0 += 1;
        Ok(entry.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_admits_a_burst_then_the_sustained_rate() {
        let l = LocalLimiter::default();
        let t0 = Instant::now();
        let rate = Rate::per_minute(6); // one every 10 s, bursts of 6
        for _ in 0..6 {
            l.check("a", rate, t0).unwrap();
        }
        let wait = l.check("a", rate, t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(10));
        // Other keys are independent.
        l.check("b", rate, t0).unwrap();
        // After 10 s, one more; not two.
        let t1 = t0 + Duration::from_secs(10);
        l.check("a", rate, t1).unwrap();
        assert!(l.check("a", rate, t1).is_err());
        // After a quiet minute, a full burst again.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..6 {
            l.check("a", rate, t2).unwrap();
        }
        assert!(l.check("a", rate, t2).is_err());
    }

    #[test]
    fn session_calls_stop_at_the_cap() {
        let s = SessionCalls::default();
        assert_eq!(s.take("s1", 2, 100, 0), Ok(1));
        assert_eq!(s.take("s1", 2, 100, 0), Ok(2));
        assert_eq!(s.take("s1", 2, 100, 0), Err(2));
        assert_eq!(s.take("s2", 2, 100, 0), Ok(1));
        assert_eq!(s.take("s3", 0, 100, 0), Ok(0), "no cap");
    }
}
