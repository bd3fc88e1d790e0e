//! Capturing every log line of a test process, to search it for what must
//! never be logged (secrets, keys, raw arguments, payloads). A test binary
//! that uses it holds one test: the capture is process-wide.

use std::io::Write;
use std::sync::{Arc, Mutex};

/// Everything logged, as JSON lines.
#[derive(Clone, Default, Debug)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Installs the process's subscriber: JSON, at debug, and at trace for
    /// Warden's own crates.
    pub fn install() -> Self {
        let logs = Self::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "debug,warden_sidecar=trace,warden_control_plane=trace,warden_shared=trace",
            ))
            .with_writer(move || writer.clone())
            .init();
        logs
    }

    /// What was logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}
