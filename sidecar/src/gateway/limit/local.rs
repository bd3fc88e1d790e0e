//! The in-process limiter: GCRA for rates and fixed windows for quotas, one
//! map under one lock, so that the several limits of a call are checked and
//! counted together (all or nothing). It is the whole limiter when no Redis
//! is configured, the first layer in front of Redis (a replica alone over
//! the global limit is refused without a round trip), and the fallback's
//! budget when Redis is away.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Item, Kind, Outcome};

/// Most keys held. Past it, idle state is swept (at most once a second);
/// if the map is still full, calls needing a new key are refused (fail
/// closed) — never is live state dropped.
const MAX_KEYS: usize = 65_536;

#[derive(Debug, Clone, Copy)]
enum State {
    /// GCRA: the theoretical arrival time of the next call (µs).
    Tat(i64),
    /// Quota: the window's index, when it ends (µs), and what it has used.
    Used { window: i64, ends: i64, used: u64 },
}

impl State {
    /// Whether the state still holds anything at `now`.
    fn live(&self, now: i64) -> bool {
        match *self {
            Self::Tat(t) => t > now,
            Self::Used { ends, .. } => ends > now,
        }
    }
}

/// What one item would do to its state.
fn evaluate(state: Option<State>, kind: Kind, weight: u64, now: i64) -> (Outcome, State) {
    match kind {
        Kind::Rate { interval_us, burst } => {
            let tat = match state {
                Some(State::Tat(t)) => t.max(now),
                _ => now,
            };
            let new = tat.saturating_add(interval_us.saturating_mul(weight as i64));
            let limit = interval_us.saturating_mul(burst as i64);
            let ahead = new - now;
            let admitted = ahead <= limit;
            (
                Outcome {
                    admitted,
                    retry_after_us: if admitted { 0 } else { ahead - limit },
                    usage_permille: u32::try_from(ahead.saturating_mul(1000) / limit.max(1))
                        .unwrap_or(u32::MAX),
                },
                State::Tat(new),
            )
        }
        Kind::Quota { window_us, budget } => {
            let window = now.div_euclid(window_us);
            let used = match state {
                Some(State::Used {
                    window: w, used, ..
                }) if w == window => used,
                _ => 0,
            };
            let new = used.saturating_add(weight);
            let admitted = new <= budget;
            (
                Outcome {
                    admitted,
                    retry_after_us: if admitted {
                        0
                    } else {
                        (window + 1) * window_us - now
                    },
                    usage_permille: u32::try_from(new.saturating_mul(1000) / budget.max(1))
                        .unwrap_or(u32::MAX),
                },
                State::Used {
                    window,
                    ends: (window + 1) * window_us,
                    used: new,
                },
            )
        }
    }
}

/// The in-process limiter.
#[derive(Debug, Default)]
pub struct LocalLimiter {
    states: Mutex<Map>,
}

#[derive(Debug, Default)]
struct Map {
    states: HashMap<String, State>,
    /// No sweep before this instant (µs).
    next_sweep: i64,
}

impl LocalLimiter {
    /// Evaluates every item at `now` (µs); if `commit`, counts the admitted
    /// ones — but only when no enforced item is refused (a refused call
    /// consumes nothing).
    pub fn check(&self, items: &[Item], now: i64, commit: bool) -> Vec<Outcome> {
        let mut map = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let m = &mut *map;
        let mut out = Vec::with_capacity(items.len());
        let mut next = Vec::with_capacity(items.len());
        for it in items {
            let (o, s) = evaluate(
                m.states.get(it.key.as_str()).copied(),
                it.kind,
                it.weight,
                now,
            );
            out.push(o);
            next.push(s);
        }
        let new_keys = items
            .iter()
            .filter(|i| !m.states.contains_key(i.key.as_str()))
            .count();
        // New keys that cannot be kept (the map is full of live state).
        let mut unkept = vec![false; items.len()];
        if new_keys > 0 && m.states.len() + new_keys > MAX_KEYS {
            if now >= m.next_sweep {
                m.states.retain(|_, s| s.live(now));
                m.next_sweep = now + 1_000_000;
            }
            if m.states.len() + new_keys > MAX_KEYS {
                // Full of live state: refuse rather than forget any of it.
                let full = Outcome {
                    admitted: false,
                    retry_after_us: 1_000_000,
                    usage_permille: 1000,
                };
                for ((it, o), u) in items.iter().zip(out.iter_mut()).zip(unkept.iter_mut()) {
                    if !m.states.contains_key(it.key.as_str()) {
                        *o = full;
                        *u = true;
                    }
                }
                // An enforced limit that cannot count refuses the call; a
                // shadow one only reports it, and the enforced limits
                // still count below.
                if items.iter().zip(&unkept).any(|(i, u)| *u && i.enforce) {
                    return out;
                }
            }
        }
        let refused = items
            .iter()
            .zip(&out)
            .any(|(i, o)| i.enforce && !o.admitted);
        if commit && !refused {
            for (((it, o), s), u) in items.iter().zip(&out).zip(next).zip(&unkept) {
                if o.admitted && !u {
                    match m.states.get_mut(it.key.as_str()) {
                        Some(v) => *v = s,
                        None => {
                            m.states.insert(it.key.clone(), s);
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(key: &str, per_call_us: i64, burst: u64) -> Item {
        Item {
            key: key.into(),
            kind: Kind::Rate {
                interval_us: per_call_us,
                burst,
            },
            weight: 1,
            enforce: true,
            limit: 0,
        }
    }

    #[test]
    fn a_full_map_keeps_live_state_and_refuses_new_keys() {
        let l = LocalLimiter::default();
        let now = 1_000_000_000_000;
        for i in 0..MAX_KEYS {
            assert!(l.check(&[rate(&format!("k{i}"), 10_000_000, 5)], now, true)[0].admitted);
        }
        // Full of live state: a new key is refused, the old ones kept.
        assert!(!l.check(&[rate("new", 10_000_000, 5)], now, true)[0].admitted);
        assert!(l.check(&[rate("k0", 10_000_000, 5)], now, true)[0].admitted);
        // A new shadow key cannot be kept either, but the enforced limit
        // beside it still counts: five calls of k1's burst of five left
        // after the fill, then refused.
        let mut shadow = rate("new-shadow", 10_000_000, 5);
        shadow.enforce = false;
        let pair = [rate("k1", 10_000_000, 5), shadow];
        for _ in 0..4 {
            let o = l.check(&pair, now, true);
            assert!(o[0].admitted && !o[1].admitted);
        }
        assert!(!l.check(&pair, now, true)[0].admitted, "k1 was counted");
        // Once the old state is idle (its arrival time passed), it is swept.
        let later = now + 60_000_000;
        assert!(l.check(&[rate("new", 10_000_000, 5)], later, true)[0].admitted);
    }

    #[test]
    fn gcra_admits_a_burst_then_the_sustained_rate() {
        let l = LocalLimiter::default();
        let item = [rate("a", 10_000_000, 6)]; // one per 10 s, bursts of 6
        let t0 = 1_000_000_000_000;
        for _ in 0..6 {
            assert!(l.check(&item, t0, true)[0].admitted);
        }
        let o = l.check(&item, t0, true)[0];
        assert!(!o.admitted);
        assert_eq!(o.retry_after_us, 10_000_000);
        let t1 = t0 + 10_000_000;
        assert!(l.check(&item, t1, true)[0].admitted);
        assert!(!l.check(&item, t1, true)[0].admitted);
        let t2 = t1 + 60_000_000;
        for _ in 0..6 {
            assert!(l.check(&item, t2, true)[0].admitted);
        }
    }

    #[test]
    fn a_refusal_by_one_item_counts_nothing_and_quotas_reset_per_window() {
        let l = LocalLimiter::default();
        let quota = Item {
            key: "q".into(),
            kind: Kind::Quota {
                window_us: 60_000_000,
                budget: 10,
            },
            weight: 4,
            enforce: true,
            limit: 1,
        };
        let items = [rate("r", 1_000_000, 1), quota];
        let t0 = 6_000_000_000; // a window boundary
        assert!(l.check(&items, t0, true).iter().all(|o| o.admitted));
        // The rate refuses: the quota is not charged.
        let o = l.check(&items, t0, true);
        assert!(!o[0].admitted && o[1].admitted);
        let o = l.check(&items, t0 + 1_000_000, true);
        assert!(o.iter().all(|o| o.admitted), "4 + 4 = 8 <= 10");
        let o = l.check(&items, t0 + 2_000_000, true);
        assert!(!o[1].admitted, "12 > 10");
        assert_eq!(o[1].retry_after_us, 58_000_000, "until the next window");
        assert_eq!(o[1].usage_permille, 1200);
        // A shadow item never blocks the others.
        let mut shadow = items.clone();
        shadow[1].enforce = false;
        let o = l.check(&shadow, t0 + 3_000_000, true);
        assert!(o[0].admitted && !o[1].admitted);
        // The next window starts from zero.
        assert!(l.check(&items, t0 + 61_000_000, true)[1].admitted);
    }
}
