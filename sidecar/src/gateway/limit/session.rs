//! The per-session tool-call cap (`max_tool_calls`), checked by stage 1.
//!
//! Counts survive a restart of the sidecar: with a journal file, every
//! counted call is appended to it (one short line, written to the file
//! before the call goes on, so a killed process loses no count; the page
//! cache is not synced, so a machine crash can lose the last few), and the
//! file is read back at start. It is compacted, one line per live session,
//! when it has grown to several times that.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Most sessions whose calls are counted at once.
const SESSIONS_MAX: usize = 100_000;
/// Journal lines written before a compaction is considered.
const COMPACT_MIN_LINES: usize = 4096;
/// Largest journal read at start (compaction keeps it far below: at most
/// four lines of about 50 bytes per counted session).
const MAX_JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

/// Why a call could not be counted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The session has made its `max_tool_calls` calls.
    #[error("this session has made its {0} tool calls (max_tool_calls)")]
    Spent(u32),
    /// Too many sessions are counted at once (the count is never dropped).
    #[error("too many sessions are being counted; retry when some have expired")]
    Full,
    /// The count could not be written to the journal: the call is refused
    /// rather than let a restart forget it.
    #[error("the session's call count could not be recorded: {0}")]
    Journal(String),
}

#[derive(Debug, Default)]
struct Counts {
    /// Session id → (calls made, token expiry).
    calls: HashMap<String, (u32, i64)>,
    journal: Option<Journal>,
}

#[derive(Debug)]
struct Journal {
    path: PathBuf,
    file: std::fs::File,
    lines: usize,
    /// A write failed: its line may be torn, so the file is rewritten
    /// before anything is appended again.
    torn: bool,
}

/// Tool calls made per session, for `max_tool_calls`. The count lives in
/// the sidecar (a token is bound to it); an entry drops out when its token
/// expires.
#[derive(Debug, Default)]
pub struct SessionCalls {
    counts: Mutex<Counts>,
}

/// A session id as the journal can hold it (the control plane issues
/// `ses_` and base64url; anything else is refused, never written).
fn journalable(sid: &str) -> bool {
    !sid.is_empty() && sid.len() <= 128 && sid.bytes().all(|b| b.is_ascii_graphic())
}

fn read_journal(path: &Path, now: i64) -> std::io::Result<HashMap<String, (u32, i64)>> {
    let mut calls: HashMap<String, (u32, i64)> = HashMap::new();
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(calls),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() || file.metadata()?.len() > MAX_JOURNAL_BYTES {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file of at most {MAX_JOURNAL_BYTES} bytes; move it away to start counting afresh",
            path.display()
        )));
    }
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        let mut f = line.split(' ');
        let parsed = (|| {
            let sid = f.next().filter(|s| journalable(s))?;
            let exp: i64 = f.next()?.parse().ok()?;
            let n: u32 = f.next()?.parse().ok()?;
            f.next().is_none().then_some((sid, exp, n))
        })();
        // A torn last line (a crash mid-write) is all a kill can leave.
        let Some((sid, exp, n)) = parsed else {
            continue;
        };
        if exp > now {
            let e = calls.entry(sid.to_owned()).or_insert((0, exp));
            e.0 = e.0.saturating_add(n);
        }
    }
    Ok(calls)
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl SessionCalls {
    /// Counts kept in `path` across restarts: what it holds is read now.
    pub fn with_journal(path: &Path, now: i64) -> std::io::Result<Self> {
        let calls = read_journal(path, now)?;
        let mut counts = Counts {
            calls,
            journal: Some(Journal {
                path: path.to_owned(),
                file: open_append(path)?,
                lines: 0,
                torn: false,
            }),
        };
        // Start from a compact file: the old one may be long.
        compact(&mut counts)?;
        Ok(Self {
            counts: Mutex::new(counts),
        })
    }

    /// Counts a call of session `sid` (token expiry `exp`) if it stays
    /// within `max` (0: no cap); returns the count.
    pub fn take(&self, sid: &str, max: u32, exp: i64, now: i64) -> Result<u32, Error> {
        if max == 0 {
            return Ok(0);
        }
        let mut guard = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let c = &mut *guard;
        if c.calls.len() >= SESSIONS_MAX && !c.calls.contains_key(sid) {
            c.calls.retain(|_, (_, e)| *e > now);
            if c.calls.len() >= SESSIONS_MAX {
                // Fail closed rather than forget a count.
                return Err(Error::Full);
            }
        }
        let made = c.calls.get(sid).map_or(0, |e| e.0);
        if made >= max {
            return Err(Error::Spent(max));
        }
        if c.journal.as_ref().is_some_and(|j| j.torn) {
            compact(c).map_err(|e| Error::Journal(e.to_string()))?;
        }
        if let Some(j) = &mut c.journal {
            if !journalable(sid) {
                return Err(Error::Journal("session id cannot be recorded".into()));
            }
            if let Err(e) = j.file.write_all(format!("{sid} {exp} 1\n").as_bytes()) {
                j.torn = true;
                return Err(Error::Journal(e.to_string()));
            }
            j.lines += 1;
        }
        let entry = c.calls.entry(sid.to_owned()).or_insert((0, exp));
        entry.0 += 1;
        let count = entry.0;
        let compact_due = c
            .journal
            .as_ref()
            .is_some_and(|j| j.lines >= COMPACT_MIN_LINES.max(4 * c.calls.len()));
        if compact_due {
            c.calls.retain(|_, (_, e)| *e > now);
            if let Err(e) = compact(c) {
                // The appended journal still holds every count.
                tracing::warn!(error = %e, "could not compact the session call journal");
            }
        }
        Ok(count)
    }
}

/// Rewrites the journal as one line per session, atomically: a new file is
/// written and synced, renamed over the old one, and appended to from then
/// on (the handle follows the file through the rename).
fn compact(c: &mut Counts) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(j) = &mut c.journal else {
        return Ok(());
    };
    let tmp = j.path.with_extension("tmp");
    // A leftover would keep its old mode.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(0o600)
        .open(&tmp)?;
    let mut text = String::new();
    for (sid, (n, exp)) in &c.calls {
        text.push_str(&format!("{sid} {exp} {n}\n"));
    }
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &j.path)?;
    if let Some(dir) = j.path.parent() {
        // The rename itself reaches the disk with the directory.
        std::fs::File::open(dir)?.sync_all()?;
    }
    j.file = f;
    j.lines = c.calls.len();
    j.torn = false;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_calls_stop_at_the_cap() {
        let s = SessionCalls::default();
        assert_eq!(s.take("s1", 2, 100, 0), Ok(1));
        assert_eq!(s.take("s1", 2, 100, 0), Ok(2));
        assert_eq!(s.take("s1", 2, 100, 0), Err(Error::Spent(2)));
        assert_eq!(s.take("s2", 2, 100, 0), Ok(1));
        assert_eq!(s.take("s3", 0, 100, 0), Ok(0), "no cap");
    }

    #[test]
    fn counts_survive_a_restart_and_expired_sessions_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session-calls");
        let s = SessionCalls::with_journal(&path, 0).unwrap();
        assert_eq!(s.take("ses_a", 3, 100, 0), Ok(1));
        assert_eq!(s.take("ses_a", 3, 100, 0), Ok(2));
        assert_eq!(s.take("ses_b", 3, 50, 0), Ok(1));
        // Killed: nothing flushed by hand, nothing compacted.
        drop(s);
        let s = SessionCalls::with_journal(&path, 10).unwrap();
        assert_eq!(s.take("ses_a", 3, 100, 10), Ok(3));
        assert_eq!(s.take("ses_a", 3, 100, 10), Err(Error::Spent(3)));
        drop(s);
        // After b's token expired it is gone from the compacted file.
        let s = SessionCalls::with_journal(&path, 60).unwrap();
        assert_eq!(s.take("ses_a", 3, 100, 60), Err(Error::Spent(3)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("ses_b"), "{text}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_count_that_cannot_be_written_refuses_the_call_and_is_not_kept() {
        // Writes go to a full device; a compaction would go to the temp dir.
        let dir = tempfile::tempdir().unwrap();
        let s = SessionCalls {
            counts: Mutex::new(Counts {
                calls: HashMap::new(),
                journal: Some(Journal {
                    path: dir.path().join("session-calls"),
                    file: open_append(Path::new("/dev/full")).unwrap(),
                    lines: 0,
                    torn: false,
                }),
            }),
        };
        assert!(matches!(s.take("ses_a", 3, 100, 0), Err(Error::Journal(_))));
        assert!(s.counts.lock().unwrap().calls.is_empty());
        assert!(s.counts.lock().unwrap().journal.as_ref().unwrap().torn);
        // The next call first rewrites the journal (here, into the temp dir)
        // and is then counted there.
        assert_eq!(s.take("ses_a", 3, 100, 0), Ok(1));
        let text = std::fs::read_to_string(dir.path().join("session-calls")).unwrap();
        assert_eq!(text, "ses_a 100 1\n");
        // Not a regular file, or too large: refused at start.
        assert!(SessionCalls::with_journal(Path::new("/dev/full"), 0).is_err());
    }

    #[test]
    fn a_torn_line_is_skipped_and_compaction_keeps_every_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session-calls");
        std::fs::write(&path, "ses_a 100 2\nses_a 100 1\nses_a 10").unwrap();
        let s = SessionCalls::with_journal(&path, 0).unwrap();
        for i in 0..COMPACT_MIN_LINES as u32 {
            assert_eq!(s.take("ses_a", u32::MAX, 100, 0), Ok(4 + i));
        }
        drop(s);
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines < 16, "compacted: {lines} lines");
        let s = SessionCalls::with_journal(&path, 0).unwrap();
        let next = 4 + COMPACT_MIN_LINES as u32;
        assert_eq!(s.take("ses_a", u32::MAX, 100, 0), Ok(next));
        assert_eq!(
            s.take("bad id", 5, 100, 0),
            Err(Error::Journal("session id cannot be recorded".into()))
        );
    }
}
