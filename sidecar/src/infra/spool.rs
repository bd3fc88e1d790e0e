//! The audit spool: an append-only, bounded queue of audit events on the
//! sidecar's disk, written before a call's answer leaves and shipped to the
//! control plane from there.
//!
//! Events are frames in segment files `<dir>/<first seq, 20 digits>.seg`:
//! length (4 bytes LE, of what follows the checksum), CRC-32 (4 bytes LE,
//! of what follows it), sequence number (8 bytes LE), the event's bytes. An
//! append is one `write` to the current segment under a lock: once it
//! returns, the event is in the kernel's page cache, and a killed process
//! loses nothing. A sync thread makes it durable: every `interval`, or, in
//! strict mode, as soon as an append asks (appends that arrive meanwhile
//! share the sync). Only synced events are shipped, so a machine crash that
//! loses unsynced events cannot make the spool reuse a sequence number the
//! control plane already holds. On open, a torn frame at the end of the
//! last segment (a crash mid-write) is cut off.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

/// A segment is closed and a new one started past this size (or an
/// eighth of the spool's bound, if smaller).
const SEGMENT_BYTES: u64 = 4 << 20;
/// Frame header: length, checksum, sequence number.
const HEADER: usize = 16;
/// Largest event a frame holds.
pub const MAX_EVENT: usize = 64 * 1024;
/// The file naming the spool.
const ID_FILE: &str = "spool.id";

/// Why an event could not be spooled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpoolError {
    /// The spool holds its maximum of events not yet acknowledged.
    #[error("the audit spool is full ({used} of {max} bytes wait to be shipped)")]
    Full {
        /// Bytes held.
        used: u64,
        /// The bound.
        max: u64,
    },
    /// The disk refused the write or the sync.
    #[error("the audit spool cannot be written: {0}")]
    Io(String),
    /// An event larger than a frame may be.
    #[error("an audit event of {0} bytes is larger than the spool takes")]
    TooLarge(usize),
}

/// How the spool makes events durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Synced in batches this often: a machine crash loses at most this
    /// much (a killed process loses nothing).
    Every(Duration),
    /// Synced before the append's caller goes on (`wait_synced`).
    Strict,
}

#[derive(Debug)]
struct Segment {
    first: u64,
    path: PathBuf,
    len: u64,
}

#[derive(Debug)]
struct Inner {
    /// The last segment, open for appending (`None` after a failed write:
    /// reopened on the next append).
    file: Option<File>,
    /// Oldest first; the last one is written to.
    segments: Vec<Segment>,
    next_seq: u64,
    total: u64,
    /// Closed segments not yet synced.
    closed: Vec<File>,
    /// The sync thread has been asked for a sync (strict mode).
    asked: bool,
}

/// Where a reader is in the spool.
#[derive(Debug, Clone, Default)]
pub struct Cursor {
    /// The next sequence number to read.
    pub seq: u64,
    /// The segment and offset of that frame, once known.
    at: Option<(u64, u64)>,
}

impl Cursor {
    /// A cursor at `seq`.
    pub fn at(seq: u64) -> Self {
        Self { seq, at: None }
    }
}

/// The spool.
#[derive(Debug)]
pub struct Spool {
    id: String,
    dir: PathBuf,
    max_bytes: u64,
    sync: Sync,
    inner: Mutex<Inner>,
    wake: Condvar,
    synced: watch::Sender<u64>,
}

fn io(e: std::io::Error) -> SpoolError {
    SpoolError::Io(e.to_string())
}

/// CRC-32 (IEEE 802.3, reflected), table-driven.
fn crc32(parts: &[&[u8]]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !0u32;
    for p in parts {
        for b in *p {
            c = TABLE[((c ^ u32::from(*b)) & 0xff) as usize] ^ (c >> 8);
        }
    }
    !c
}

fn frame(seq: u64, event: &[u8]) -> Vec<u8> {
    let seq = seq.to_le_bytes();
    let mut f = Vec::with_capacity(HEADER + event.len());
    let len = u32::try_from(8 + event.len()).unwrap_or(u32::MAX);
    f.extend_from_slice(&len.to_le_bytes());
    f.extend_from_slice(&crc32(&[&seq, event]).to_le_bytes());
    f.extend_from_slice(&seq);
    f.extend_from_slice(event);
    f
}

/// Reads frames from `r` (at `offset`) while they are whole and check;
/// calls `each(seq, event, offset after)`; returns the offset after the
/// last good frame.
fn scan(
    r: &mut impl Read,
    mut offset: u64,
    end: u64,
    mut each: impl FnMut(u64, &[u8], u64) -> bool,
) -> u64 {
    let mut head = [0u8; 8];
    let mut body = Vec::new();
    while offset + HEADER as u64 <= end {
        if r.read_exact(&mut head).is_err() {
            break;
        }
        let len = u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if !(8..=(8 + MAX_EVENT as u64)).contains(&len) || offset + 8 + len > end {
            break;
        }
        body.resize(usize::try_from(len).unwrap_or(0), 0);
        if r.read_exact(&mut body).is_err() || crc32(&[&body]) != crc {
            break;
        }
        let mut s = [0u8; 8];
        s.copy_from_slice(&body[..8]);
        offset += 8 + len;
        if !each(u64::from_le_bytes(s), &body[8..], offset) {
            break;
        }
    }
    offset
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

fn new_id() -> String {
    use base64::Engine;
    let mut b = [0u8; 18];
    rand::Rng::fill(&mut rand::rng(), &mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl Spool {
    /// Opens (creating) the spool in `dir`, recovers its last segment, and
    /// starts its sync thread.
    pub fn open(dir: &Path, max_bytes: u64, sync: Sync) -> Result<Arc<Self>, SpoolError> {
        std::fs::create_dir_all(dir).map_err(io)?;
        let id_path = dir.join(ID_FILE);
        let id = match std::fs::read_to_string(&id_path) {
            Ok(s) if (16..=64).contains(&s.trim().len()) => s.trim().to_owned(),
            Ok(_) => {
                return Err(SpoolError::Io(format!(
                    "{} does not hold a spool id",
                    id_path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = new_id();
                let tmp = dir.join("spool.id.tmp");
                std::fs::write(&tmp, &id).map_err(io)?;
                File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
                std::fs::rename(&tmp, &id_path).map_err(io)?;
                id
            }
            Err(e) => return Err(io(e)),
        };
        let mut segments: Vec<Segment> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let first = name.strip_suffix(".seg")?.parse().ok()?;
                let len = e.metadata().ok()?.len();
                Some(Segment {
                    first,
                    path: e.path(),
                    len,
                })
            })
            .collect();
        segments.sort_by_key(|s| s.first);
        let mut next_seq = 1;
        if let Some(last) = segments.last_mut() {
            // Whole frames stay; a torn one at the end is cut off.
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&last.path)
                .map_err(io)?;
            let mut r = std::io::BufReader::new(&mut f);
            let mut seq = last.first;
            let good = scan(&mut r, 0, last.len, |s, _, _| {
                seq = s + 1;
                true
            });
            drop(r);
            if good < last.len {
                tracing::warn!(
                    segment = %last.path.display(),
                    cut = last.len - good,
                    "the audit spool's last segment ended in a torn write; cut it off"
                );
                f.set_len(good).map_err(io)?;
                last.len = good;
            }
            next_seq = seq;
        }
        // What a killed process left in the page cache is made durable now.
        for s in &segments {
            File::open(&s.path)
                .and_then(|f| f.sync_data())
                .map_err(io)?;
        }
        let total = segments.iter().map(|s| s.len).sum();
        let (synced, _) = watch::channel(next_seq - 1);
        let spool = Arc::new(Self {
            id,
            dir: dir.to_owned(),
            max_bytes,
            sync,
            inner: Mutex::new(Inner {
                file: None,
                segments,
                next_seq,
                total,
                closed: Vec::new(),
                asked: false,
            }),
            wake: Condvar::new(),
            synced,
        });
        let weak = Arc::downgrade(&spool);
        std::thread::Builder::new()
            .name("warden-spool-sync".into())
            .spawn(move || syncer(&weak))
            .map_err(io)?;
        Ok(spool)
    }

    /// The spool's id (what the control plane knows it by).
    pub fn id(&self) -> &str {
        &self.id
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Bytes held (not yet acknowledged), and the bound.
    pub fn usage(&self) -> (u64, u64) {
        (self.lock().total, self.max_bytes)
    }

    /// Whether an audit event of the largest size would fit now.
    pub fn has_room(&self) -> Result<(), SpoolError> {
        let used = self.lock().total;
        if used + (HEADER + warden_shared::audit::MAX_EVENT_BYTES) as u64 > self.max_bytes {
            return Err(SpoolError::Full {
                used,
                max: self.max_bytes,
            });
        }
        Ok(())
    }

    /// Appends one event; returns its sequence number once it is written
    /// (in the page cache: a killed process loses nothing).
    pub fn append(&self, event: &[u8]) -> Result<u64, SpoolError> {
        if event.len() > MAX_EVENT {
            return Err(SpoolError::TooLarge(event.len()));
        }
        let mut g = self.lock();
        let inner = &mut *g;
        let len = (HEADER + event.len()) as u64;
        if inner.total + len > self.max_bytes {
            return Err(SpoolError::Full {
                used: inner.total,
                max: self.max_bytes,
            });
        }
        let seq = inner.next_seq;
        // A segment is at most an eighth of the bound, so that shipped
        // ones free room however small the bound.
        let segment_bytes = SEGMENT_BYTES.min(self.max_bytes / 8);
        let rotate = inner.segments.last().is_none_or(|s| s.len >= segment_bytes);
        if rotate {
            if let Some(old) = inner.file.take() {
                inner.closed.push(old);
            }
            let path = segment_path(&self.dir, seq);
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io)?;
            inner.segments.push(Segment {
                first: seq,
                path,
                len: 0,
            });
            inner.file = Some(f);
        }
        let Some(seg) = inner.segments.last_mut() else {
            return Err(SpoolError::Io("no segment".into()));
        };
        if inner.file.is_none() {
            inner.file = Some(
                OpenOptions::new()
                    .append(true)
                    .open(&seg.path)
                    .map_err(io)?,
            );
        }
        let Some(file) = inner.file.as_mut() else {
            return Err(SpoolError::Io("no segment file".into()));
        };
        if let Err(e) = file.write_all(&frame(seq, event)) {
            // A partial frame is cut off, so the next one starts clean.
            let _ = file.set_len(seg.len);
            inner.file = None;
            return Err(io(e));
        }
        seg.len += len;
        inner.total += len;
        inner.next_seq += 1;
        if self.sync == Sync::Strict {
            inner.asked = true;
            self.wake.notify_one();
        }
        Ok(seq)
    }

    /// Waits until `seq` is on disk (strict mode calls this before the
    /// answer leaves); an error when the disk refuses for `limit`.
    pub async fn wait_synced(&self, seq: u64, limit: Duration) -> Result<(), SpoolError> {
        let mut rx = self.synced.subscribe();
        match tokio::time::timeout(limit, rx.wait_for(|s| *s >= seq)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(SpoolError::Io(format!(
                "event {seq} was not synced to disk within {} ms",
                limit.as_millis()
            ))),
        }
    }

    /// Every event up to the returned number is on disk.
    pub fn synced(&self) -> watch::Receiver<u64> {
        self.synced.subscribe()
    }

    /// Reads synced events from `cursor` on, at most `max_events` and
    /// about `max_bytes`; advances the cursor.
    pub fn read(
        &self,
        cursor: &mut Cursor,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, SpoolError> {
        let synced = *self.synced.borrow();
        let (path, first, len) = {
            let g = self.lock();
            // Events already dropped from the spool are skipped.
            if let Some(oldest) = g.segments.first()
                && cursor.seq < oldest.first
            {
                *cursor = Cursor::at(oldest.first);
            }
            let Some(seg) = g.segments.iter().rev().find(|s| s.first <= cursor.seq) else {
                return Ok(Vec::new());
            };
            (seg.path.clone(), seg.first, seg.len)
        };
        if cursor.seq > synced {
            return Ok(Vec::new());
        }
        let offset = match cursor.at {
            Some((f, o)) if f == first => o,
            _ => 0,
        };
        let mut f = File::open(&path).map_err(io)?;
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut r = std::io::BufReader::new(f);
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        let mut at = offset;
        scan(&mut r, offset, len, |seq, event, after| {
            if seq > synced || out.len() >= max_events || (bytes >= max_bytes && !out.is_empty()) {
                return false;
            }
            at = after;
            if seq >= cursor.seq {
                bytes += event.len();
                out.push((seq, event.to_vec()));
            }
            true
        });
        match out.last() {
            Some((seq, _)) => {
                cursor.seq = seq + 1;
                cursor.at = Some((first, at));
            }
            None if at >= len => {
                // The end of a closed segment: go on to the next.
                let g = self.lock();
                if let Some(next) = g.segments.iter().find(|s| s.first > first)
                    && next.first <= synced
                {
                    *cursor = Cursor::at(next.first.max(cursor.seq));
                    drop(g);
                    return self.read(cursor, max_events, max_bytes);
                }
            }
            None => cursor.at = Some((first, at)),
        }
        Ok(out)
    }

    /// The control plane holds every event up to `seq`: segments wholly
    /// at or below it are removed.
    pub fn acked(&self, seq: u64) {
        let mut g = self.lock();
        let mut removed = 0;
        while g.segments.len() > 1 && g.segments[1].first <= seq + 1 {
            let s = g.segments.remove(0);
            g.total -= s.len;
            removed += 1;
            if let Err(e) = std::fs::remove_file(&s.path) {
                tracing::warn!(segment = %s.path.display(), error = %e, "could not remove a shipped audit segment");
            }
        }
        if removed > 0 {
            tracing::debug!(removed, acked = seq, "shipped audit segments removed");
        }
    }

    /// The next sequence number to be appended.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }
}

/// The sync thread: syncs what was appended every interval, or at once
/// when a strict append asks; ends with the spool.
fn syncer(spool: &Weak<Spool>) {
    loop {
        let Some(s) = spool.upgrade() else { return };
        let wait = match s.sync {
            Sync::Every(d) => d,
            Sync::Strict => Duration::from_millis(200),
        };
        let (files, last) = {
            let mut g = s.lock();
            if !g.asked {
                s.wake.wait_for(&mut g, wait);
            }
            g.asked = false;
            let last = g.next_seq - 1;
            if last == *s.synced.borrow() {
                continue;
            }
            let mut files: Vec<File> = std::mem::take(&mut g.closed);
            if let Some(f) = g.file.as_ref().and_then(|f| f.try_clone().ok()) {
                files.push(f);
            }
            (files, last)
        };
        match files.iter().try_for_each(File::sync_data) {
            Ok(()) => {
                s.synced.send_replace(last);
            }
            Err(e) => {
                // The closed segments are synced again next time too.
                s.lock().closed.extend(files);
                tracing::error!(error = %e, "the audit spool could not be synced to disk; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, max: u64) -> Arc<Spool> {
        Spool::open(dir, max, Sync::Every(Duration::from_millis(5))).unwrap()
    }

    async fn synced(s: &Spool) {
        let seq = s.next_seq() - 1;
        s.wait_synced(seq, Duration::from_secs(5)).await.unwrap();
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
    }

    #[tokio::test]
    async fn appends_read_back_in_order_and_survive_a_reopen() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path(), 1 << 30);
        let id = s.id().to_owned();
        for i in 1..=100u64 {
            assert_eq!(s.append(format!("e{i}").as_bytes()).unwrap(), i);
        }
        synced(&s).await;
        let mut c = Cursor::at(1);
        let got = s.read(&mut c, 30, 1 << 20).unwrap();
        assert_eq!(got.len(), 30);
        assert_eq!(got[0], (1, b"e1".to_vec()));
        let rest = s.read(&mut c, 1000, 1 << 20).unwrap();
        assert_eq!(rest.first().unwrap().0, 31);
        assert_eq!(rest.last().unwrap().0, 100);
        assert!(s.read(&mut c, 1000, 1 << 20).unwrap().is_empty());
        drop(s);
        let s = open(d.path(), 1 << 30);
        assert_eq!(s.id(), id, "the spool keeps its id");
        assert_eq!(s.append(b"after").unwrap(), 101);
    }

    #[tokio::test]
    async fn a_torn_frame_at_the_end_is_cut_off() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path(), 1 << 30);
        s.append(b"one").unwrap();
        s.append(b"two").unwrap();
        drop(s);
        let seg = segment_path(d.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&frame(3, b"three")[..10]).unwrap();
        let s = open(d.path(), 1 << 30);
        assert_eq!(s.append(b"three").unwrap(), 3);
        synced(&s).await;
        let got = s.read(&mut Cursor::at(1), 10, 1 << 20).unwrap();
        assert_eq!(
            got.iter().map(|e| e.1.as_slice()).collect::<Vec<_>>(),
            [&b"one"[..], b"two", b"three"]
        );
    }

    #[tokio::test]
    async fn a_full_spool_refuses_until_shipped_segments_are_acknowledged() {
        let d = tempfile::tempdir().unwrap();
        let s = open(d.path(), 12 << 20);
        let event = vec![b'x'; 60_000];
        let mut n = 0;
        let err = loop {
            match s.append(&event) {
                Ok(_) => n += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(err, SpoolError::Full { .. }), "{err}");
        // Small events fill the rest; then not even one more fits.
        while s.append(b"small").is_ok() {
            n += 1;
        }
        assert!(s.has_room().is_err());
        assert!(n > 150, "{n}");
        synced(&s).await;
        // Read across segment boundaries, then acknowledge.
        let mut c = Cursor::at(1);
        let mut seen = 0;
        loop {
            let got = s.read(&mut c, 1000, 1 << 20).unwrap();
            if got.is_empty() {
                break;
            }
            for (seq, e) in &got {
                seen += 1;
                assert_eq!(*seq, seen);
                assert!(e.len() == 60_000 || e == b"small");
            }
        }
        assert_eq!(seen, n);
        s.acked(n);
        assert!(s.has_room().is_ok());
        assert!(s.usage().0 < SEGMENT_BYTES + 100_000, "{:?}", s.usage());
        assert_eq!(s.append(&event).unwrap(), n + 1);
        assert!(matches!(
            s.append(&vec![0; MAX_EVENT + 1]),
            Err(SpoolError::TooLarge(_))
        ));
    }

    #[tokio::test]
    async fn strict_mode_syncs_before_the_caller_goes_on() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path(), 1 << 30, Sync::Strict).unwrap();
        let seq = s.append(b"now").unwrap();
        s.wait_synced(seq, Duration::from_secs(5)).await.unwrap();
        assert!(*s.synced().borrow() >= seq);
    }
}
