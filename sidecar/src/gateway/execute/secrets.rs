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

/// Resolves `reference` now.
pub fn resolve(reference: &str) -> Result<Secret, Error> {
    let value = if let Some(var) = reference.strip_prefix("env:") {
        std::env::var(var).map_err(|_| Error::EnvMissing(var.to_owned()))?
    } else if let Some(path) = reference.strip_prefix("file:") {
        use std::io::Read;
        let fail = |detail: String| Error::File {
            path: path.to_owned(),
            detail,
        };
        let f = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
        let mut text = String::new();
        f.take(MAX_SECRET_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| fail(e.to_string()))?;
        text.strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .map(str::to_owned)
            .unwrap_or(text)
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
}
