//! A circuit breaker per upstream: after `failures` consecutive failures it
//! opens and refuses calls at once for `cooldown`; then it lets one probe
//! through (half-open): success closes it, failure opens it again.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use warden_shared::policy::CircuitBreaker;

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls pass; `failures` in a row so far.
    Closed {
        /// Consecutive failures.
        failures: u32,
    },
    /// Calls are refused until `until`.
    Open {
        /// When a probe may go.
        until: Instant,
    },
    /// One probe is out; others are refused until it returns.
    HalfOpen,
}

impl State {
    /// `closed`, `open` or `half_open`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Closed { .. } => "closed",
            Self::Open { .. } => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// The breakers of every upstream, keyed by upstream (tool name).
#[derive(Debug, Default)]
pub struct Breakers {
    states: Mutex<BTreeMap<String, State>>,
}

impl Breakers {
    /// Whether a call to `key` may go now; `Err` carries the time until a
    /// probe may.
    pub fn admit(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut m = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let s = m
            .entry(key.to_owned())
            .or_insert(State::Closed { failures: 0 });
        match *s {
            State::Closed { .. } => Ok(()),
            State::Open { until } if now >= until => {
                *s = State::HalfOpen;
                Ok(())
            }
            State::Open { until } => Err(until - now),
            // The probe is out: wait for its outcome.
            State::HalfOpen => Err(Duration::from_millis(100)),
        }
    }

    /// Records the outcome of an admitted call.
    pub fn record(&self, key: &str, ok: bool, cfg: &CircuitBreaker, now: Instant) {
        let mut m = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let s = m
            .entry(key.to_owned())
            .or_insert(State::Closed { failures: 0 });
        let open = State::Open {
            until: now + Duration::from_millis(u64::from(cfg.cooldown_ms)),
        };
        *s = match (*s, ok) {
            // A call admitted before the circuit opened says nothing about
            // the upstream now; only the half-open probe closes it.
            (State::Open { until }, true) => State::Open { until },
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < cfg.failures => State::Closed {
                failures: failures + 1,
            },
            (State::Closed { .. } | State::HalfOpen, false) => {
                tracing::warn!(upstream = key, "circuit opened after repeated failures");
                open
            }
            (State::Open { until }, false) => State::Open { until },
        };
    }

    /// Every breaker's state, for health and metrics.
    pub fn states(&self) -> BTreeMap<String, State> {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// An admitted call ended without an outcome (the caller went away, or
    /// it never started): it says nothing about the upstream. If it was the
    /// half-open probe, the next call probes instead, so the breaker never
    /// stays half-open.
    pub fn abandon(&self, key: &str, now: Instant) {
        let mut m = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s @ State::HalfOpen) = m.get_mut(key) {
            *s = State::Open { until: now };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_n_failures_probes_after_cooldown_and_closes_on_success() {
        let b = Breakers::default();
        let cfg = CircuitBreaker {
            failures: 3,
            cooldown_ms: 1000,
        };
        let t0 = Instant::now();
        for _ in 0..2 {
            b.admit("u", t0).unwrap();
            b.record("u", false, &cfg, t0);
        }
        assert_eq!(b.states()["u"], State::Closed { failures: 2 });
        b.admit("u", t0).unwrap();
        b.record("u", false, &cfg, t0);
        assert_eq!(b.states()["u"].name(), "open");
        assert!(b.admit("u", t0 + Duration::from_millis(500)).is_err());
        // After the cool-down one probe goes; a second waits for it.
        let t1 = t0 + Duration::from_millis(1000);
        b.admit("u", t1).unwrap();
        assert!(b.admit("u", t1).is_err());
        // The probe fails: open again.
        b.record("u", false, &cfg, t1);
        assert_eq!(b.states()["u"].name(), "open");
        let t2 = t1 + Duration::from_millis(1000);
        // A late success of a call from before the opening changes nothing.
        b.record("u", true, &cfg, t1);
        assert_eq!(b.states()["u"].name(), "open");
        b.admit("u", t2).unwrap();
        b.record("u", true, &cfg, t2);
        assert_eq!(b.states()["u"], State::Closed { failures: 0 });
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_call_probe_and_counts_nothing() {
        let b = Breakers::default();
        let cfg = CircuitBreaker {
            failures: 1,
            cooldown_ms: 1000,
        };
        let t0 = Instant::now();
        // Abandoned calls while closed count as nothing.
        b.admit("u", t0).unwrap();
        b.abandon("u", t0);
        assert_eq!(b.states()["u"], State::Closed { failures: 0 });
        b.record("u", false, &cfg, t0);
        let t1 = t0 + Duration::from_millis(1000);
        b.admit("u", t1).unwrap();
        assert!(b.admit("u", t1).is_err(), "the probe is out");
        b.abandon("u", t1);
        // Not stuck half-open: the next call is the probe.
        b.admit("u", t1).unwrap();
        b.record("u", true, &cfg, t1);
        assert_eq!(b.states()["u"], State::Closed { failures: 0 });
    }
}
