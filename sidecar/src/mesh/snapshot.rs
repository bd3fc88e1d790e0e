//! The last acknowledged state on disk, so that a restart during a
//! control-plane outage still enforces it; an altered file is refused.

use rand::Rng;
use warden_shared::proto::v1 as pb;

/// Why a persisted snapshot was refused.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The MAC does not match: the file was altered or corrupted.
    #[error("the snapshot's MAC does not verify (altered or corrupted)")]
    Tampered,
    /// The content does not decode.
    #[error("the snapshot does not decode: {0}")]
    Decode(String),
}

/// The last acknowledged push, persisted as `HMAC-SHA256 (32 bytes) ||
/// protobuf`, keyed by a random key kept beside it (0600): a restart during
/// a control-plane outage still enforces it, and an altered file is refused.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    path: std::path::PathBuf,
    key_path: std::path::PathBuf,
}

impl SnapshotFile {
    /// Files in the data directory.
    pub fn new(data_dir: &std::path::Path) -> Self {
        Self {
            path: data_dir.join("mesh-snapshot.bin"),
            key_path: data_dir.join("mesh-snapshot.key"),
        }
    }

    fn key(&self, create: bool) -> Result<Option<ring::hmac::Key>, SnapshotError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::read(&self.key_path) {
            Ok(k) if k.len() == 32 => {
                return Ok(Some(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k)));
            }
            Ok(_) => return Err(SnapshotError::Tampered),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let mut k = [0u8; 32];
        rand::rng().fill(&mut k);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.key_path)?;
        f.write_all(&k)?;
        f.sync_all()?;
        Ok(Some(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k)))
    }

    /// Persists a push atomically.
    pub fn save(&self, push: &pb::StreamResponse) -> Result<(), SnapshotError> {
        use prost::Message;
        use std::io::Write;
        let key = self.key(true)?.ok_or(SnapshotError::Tampered)?;
        let body = push.encode_to_vec();
        let tag = ring::hmac::sign(&key, &body);
        let tmp = self.path.with_extension("tmp");
        // It holds the pairwise message keys: owner-only, and a fresh file
        // (a leftover, or a link planted in its place, is removed first).
        let _ = std::fs::remove_file(&tmp);
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?
        };
        f.write_all(tag.as_ref())?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
    }

    /// Loads and verifies the persisted push, if any.
    pub fn load(&self) -> Result<Option<pb::StreamResponse>, SnapshotError> {
        use prost::Message;
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let key = self.key(false)?.ok_or(SnapshotError::Tampered)?;
        if bytes.len() < 32 {
            return Err(SnapshotError::Tampered);
        }
        let (tag, body) = bytes.split_at(32);
        // ring's verify compares in constant time.
        ring::hmac::verify(&key, body, tag).map_err(|_| SnapshotError::Tampered)?;
        pb::StreamResponse::decode(body)
            .map(Some)
            .map_err(|e| SnapshotError::Decode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_is_owner_only_and_an_altered_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = SnapshotFile::new(dir.path());
        // A leftover temporary file is replaced, not written through.
        std::fs::write(dir.path().join("mesh-snapshot.tmp"), b"junk").unwrap();
        let push = pb::StreamResponse {
            version: 9,
            ..Default::default()
        };
        f.save(&push).unwrap();
        for name in ["mesh-snapshot.bin", "mesh-snapshot.key"] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        assert_eq!(f.load().unwrap().unwrap().version, 9);
        let path = dir.path().join("mesh-snapshot.bin");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(f.load(), Err(SnapshotError::Tampered)));
    }
}
