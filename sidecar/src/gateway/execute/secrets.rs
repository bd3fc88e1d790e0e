//! Secret references resolved at execution time: `env:NAME` reads the
//! sidecar's environment, `file:/path` reads a file (a trailing newline is
//! dropped). Values are never logged, returned or recorded: [`Secret`]
//! prints `[redacted]`.

/// Largest secret value accepted, bytes.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// A resolved secret value.
#[derive(Clone)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl Secret {
    /// Wraps a value.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The value, for injection into an upstream request.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Why a secret could not be resolved (names the reference, never a value).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The environment variable is not set (or not UTF-8).
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    /// The file could not be read.
    #[error("secret file {path}: {detail}")]
    File {
        /// The file.
        path: String,
        /// Why.
        detail: String,
    },
    /// Empty or too large. (A value with a line break cannot go into a
    /// header: building that request fails, and nothing is sent.)
    #[error("secret {0} is empty or larger than 64 KiB")]
    Unusable(String),
    /// Not `env:` or `file:` (the policy validation prevents this).
    #[error("secret reference {0:?} is not env:NAME or file:/path")]
    BadReference(String),
}

/// A file secret as last read, with what identified the file then.
struct Cached {
    stamp: Stamp,
    value: String,
    /// When it was read: it is read again after [`MAX_AGE`] whatever the
    /// file's times say (a network filesystem may report cached times).
    read_at: std::time::Instant,
}

/// Longest a file secret is served from memory without reading the file.
const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);

/// What identifies a file's content without reading it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// A file changed less than this long before it was read is read again
/// on every use: file times are coarse (a few ms), so a second write in
/// the same tick could otherwise keep the first content cached.
const SETTLED_SECS: i64 = 2;
/// Most file secrets kept.
const CACHE_MAX: usize = 1024;

type FileCache = std::collections::HashMap<String, Cached>;

static CACHE: std::sync::OnceLock<std::sync::Mutex<FileCache>> = std::sync::OnceLock::new();

/// Whether the file secret at `path` is held in the cache.
pub fn is_cached(path: &str) -> bool {
    CACHE.get().is_some_and(|c| {
        c.lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(path)
    })
}

/// Reads a file secret, from the cache when the file is the one read
/// before (same device, inode, size, modification and change times), had
/// settled by then, and was read less than [`MAX_AGE`] ago; otherwise from
/// the disk.
fn read_file(path: &str) -> Result<String, Error> {
    use std::io::Read;
    let fail = |detail: String| Error::File {
        path: path.to_owned(),
        detail,
    };
    let cache = CACHE.get_or_init(std::sync::Mutex::default);
    let stamp = match std::fs::metadata(path) {
        Ok(m) => Stamp::of(&m),
        Err(e) => {
            cache.lock().unwrap_or_else(|p| p.into_inner()).remove(path);
            return Err(fail(e.to_string()));
        }
    };
    if let Some(c) = cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(path)
        .filter(|c| c.stamp == stamp && c.read_at.elapsed() < MAX_AGE)
    {
        return Ok(c.value.clone());
    }
    let f = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let opened = Stamp::of(&f.metadata().map_err(|e| fail(e.to_string()))?);
    let mut text = String::new();
    f.take(MAX_SECRET_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| fail(e.to_string()))?;
    let value = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .map(str::to_owned)
        .unwrap_or(text);
    let now = crate::now_unix();
    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
    if opened.mtime.0 < now - SETTLED_SECS && opened.ctime.0 < now - SETTLED_SECS {
        if c.len() >= CACHE_MAX {
            c.clear();
        }
        c.insert(
            path.to_owned(),
            Cached {
                stamp: opened,
                value: value.clone(),
                read_at: std::time::Instant::now(),
            },
        );
    } else {
        c.remove(path);
    }
    Ok(value)
}

/// Resolves `reference` now.
pub fn resolve(reference: &str) -> Result<Secret, Error> {
    let value = if let Some(var) = reference.strip_prefix("env:") {
        std::env::var(var).map_err(|_| Error::EnvMissing(var.to_owned()))?
    } else if let Some(path) = reference.strip_prefix("file:") {
        read_file(path)?
    } else {
        return Err(Error::BadReference(reference.to_owned()));
    };
    if value.is_empty() || value.len() as u64 > MAX_SECRET_BYTES {
        return Err(Error::Unusable(reference.to_owned()));
    }
    Ok(Secret(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_at_resolution_and_bad_values_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "v1\n").unwrap();
        let r = format!("file:{}", p.display());
        assert_eq!(resolve(&r).unwrap().expose(), "v1");
        std::fs::write(&p, "v2").unwrap();
        assert_eq!(resolve(&r).unwrap().expose(), "v2", "read each time");
        std::fs::write(&p, "-----BEGIN X-----\nAA==\n-----END X-----\n").unwrap();
        assert_eq!(
            resolve(&r).unwrap().expose(),
            "-----BEGIN X-----\nAA==\n-----END X-----",
            "multi-line values (PEM) are kept"
        );
        std::fs::write(&p, "").unwrap();
        assert_eq!(resolve(&r).unwrap_err(), Error::Unusable(r.clone()));
        assert!(matches!(
            resolve("file:/nonexistent/x"),
            Err(Error::File { .. })
        ));
        assert_eq!(
            resolve("env:WARDEN_TEST_SURELY_UNSET").unwrap_err(),
            Error::EnvMissing("WARDEN_TEST_SURELY_UNSET".into())
        );
        assert_eq!(
            format!("{:?}", Secret::new("x".into())),
            "Secret([redacted])"
        );
    }

    #[test]
    fn a_settled_file_is_read_once_and_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let r = format!("file:{}", p.display());
        let settle = |p: &std::path::Path| {
            let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(old)
                .unwrap();
        };
        std::fs::write(&p, "v1").unwrap();
        settle(&p);
        // ctime moved with set_modified: not settled yet, read each time.
        assert_eq!(resolve(&r).unwrap().expose(), "v1");
        std::fs::write(&p, "v2").unwrap();
        assert_eq!(resolve(&r).unwrap().expose(), "v2");
        // Replaced by a file whose times are old (a rename of a prepared
        // file): a new inode, read again.
        let q = dir.path().join("k.new");
        std::fs::write(&q, "v3").unwrap();
        settle(&q);
        std::fs::rename(&q, &p).unwrap();
        assert_eq!(resolve(&r).unwrap().expose(), "v3");
        assert!(!is_cached(&p.display().to_string()));

        // Once settled (its change time 2 s old), it is read once, and
        // read again as soon as it changes.
        let path = p.display().to_string();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !is_cached(&path) {
            assert!(std::time::Instant::now() < deadline, "never cached");
            assert_eq!(resolve(&r).unwrap().expose(), "v3");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(resolve(&r).unwrap().expose(), "v3");
        std::fs::write(&p, "v4").unwrap();
        assert_eq!(resolve(&r).unwrap().expose(), "v4");
        assert!(!is_cached(&path));
    }
}
