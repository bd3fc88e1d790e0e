//! The per-session tool-call cap (`max_tool_calls`), checked by stage 1.

use std::collections::HashMap;
use std::sync::Mutex;

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
    fn session_calls_stop_at_the_cap() {
        let s = SessionCalls::default();
        assert_eq!(s.take("s1", 2, 100, 0), Ok(1));
        assert_eq!(s.take("s1", 2, 100, 0), Ok(2));
        assert_eq!(s.take("s1", 2, 100, 0), Err(2));
        assert_eq!(s.take("s2", 2, 100, 0), Ok(1));
        assert_eq!(s.take("s3", 0, 100, 0), Ok(0), "no cap");
    }
}
