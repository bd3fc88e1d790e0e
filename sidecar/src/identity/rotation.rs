//! Keeps the sidecar's certificate fresh: renews at about `renew_fraction`
//! of its lifetime (jittered), retries with jittered exponential backoff
//! while the current certificate stays in service, and, once it has lapsed,
//! says so and waits for a new join token.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{Mutex, watch};
use warden_shared::spiffe::SpiffeId;

use super::{Error, Identity, enroll};
use crate::config::{Config, JOIN_TOKEN_FILE, RETRY_MAX, RETRY_MIN};
use crate::now_unix;

/// What readers see: the current identity, and the thumbprint of the one
/// before it (tokens bound to it stay valid until they expire).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Current certificate, possibly lapsed.
    pub current: Option<Arc<Identity>>,
    /// Thumbprint of the previous certificate.
    pub previous_thumbprint: Option<String>,
}

impl Snapshot {
    /// The current identity if it is valid at `now`.
    pub fn valid(&self, now: i64) -> Option<&Arc<Identity>> {
        self.current.as_ref().filter(|i| i.valid_at(now))
    }
}

/// Never renew sooner than this after receiving a certificate (unless it
/// expires sooner): a CA near its own end issues ever shorter leaves.
const MIN_RENEW_DELAY_SECS: i64 = 5;

/// When to renew an identity: `fraction` of its lifetime, ±10% jitter of
/// the lifetime, never before `not_before`.
pub fn renew_at(id: &Identity, fraction: f64, jitter: f64) -> i64 {
    // Time from when we got it: not_before is backdated for clock skew, and
    // a certificate loaded from disk may be half used already.
    let start = id.not_before.max(id.received_at).min(id.not_after);
    let life = (id.not_after - start).max(1) as f64;
    let offset = life * (fraction + jitter.clamp(-0.1, 0.1));
    (start + offset.round() as i64).max(start + MIN_RENEW_DELAY_SECS.min(id.not_after - start))
}

/// Owns the identity and publishes it.
pub struct Manager {
    config: Config,
    expected: SpiffeId,
    dir: PathBuf,
    tx: watch::Sender<Snapshot>,
    // Serialises enroll/renew so two never race on the files.
    busy: Mutex<()>,
    // A configured join token not yet used because the control plane was
    // unreachable; retried with backoff (a sidecar may boot first).
    pending: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("expected", &self.expected.to_string())
            .field("dir", &self.dir)
            .field("config", &self.config)
            .field("pending_join_token", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// Loads a persisted identity (if any) and, when none is valid, enrolls
    /// with the configured join token. Never fails on a missing identity:
    /// the sidecar then reports itself not ready and waits for a token.
    pub async fn start(config: Config, expected: SpiffeId) -> Result<Arc<Self>, Error> {
        let dir = config.data_dir.join("identity");
        super::private_dir(&config.data_dir)?;
        let loaded = match Identity::load(&dir, &expected, now_unix()) {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(error = %e, "persisted identity is unusable; ignoring it");
                None
            }
        };
        let (tx, _) = watch::channel(Snapshot {
            current: loaded.map(Arc::new),
            previous_thumbprint: None,
        });
        let m = Arc::new(Self {
            config,
            expected,
            dir,
            tx,
            busy: Mutex::new(()),
            pending: std::sync::Mutex::new(None),
        });
        let valid = m.snapshot().valid(now_unix()).is_some();
        if !valid {
            match m.config.join_token.clone() {
                Some(token) => {
                    m.enroll_or_keep(token).await;
                }
                None => m.report_missing(),
            }
        }
        Ok(m)
    }

    fn report_missing(&self) {
        let snap = self.snapshot();
        let token_file = self.config.data_dir.join(JOIN_TOKEN_FILE);
        match &snap.current {
            Some(id) => tracing::error!(
                not_after = id.not_after,
                "certificate has lapsed; provide a new join token in {} (or restart with --join-token)",
                token_file.display()
            ),
            None => tracing::warn!(
                "not enrolled; provide a join token in {} (or start with --join-token)",
                token_file.display()
            ),
        }
    }

    /// Subscribes to identity changes.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.tx.subscribe()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Snapshot {
        self.tx.borrow().clone()
    }

    fn install(&self, id: Identity) -> Result<(), Error> {
        id.save(&self.dir)?;
        tracing::info!(spiffe_id = %id.spiffe_id, serial = %id.serial, not_after = id.not_after, "certificate installed");
        self.tx.send_modify(|s| {
            s.previous_thumbprint = s.current.as_ref().map(|c| c.thumbprint.clone());
            s.current = Some(Arc::new(id));
        });
        Ok(())
    }

    /// Enrolls with a join token.
    pub async fn enroll(&self, join_token: &str) -> Result<(), Error> {
        let _g = self.busy.lock().await;
        let bundle =
            std::fs::read_to_string(&self.config.ca_bundle).map_err(|source| Error::Io {
                path: self.config.ca_bundle.clone(),
                source,
            })?;
        let id = enroll::enroll(
            &self.config.control_plane,
            &bundle,
            &self.expected,
            &self.config.agent_id,
            join_token.trim(),
            now_unix(),
        )
        .await?;
        self.install(id)
    }

    /// Renews now. On failure the current certificate stays in service.
    pub async fn renew_once(&self) -> Result<(), Error> {
        let _g = self.busy.lock().await;
        let now = now_unix();
        let current = self
            .snapshot()
            .valid(now)
            .cloned()
            .ok_or_else(|| Error::NoIdentity("nothing to renew".into()))?;
        let id = enroll::renew(&self.config.control_plane, &current, now).await?;
        self.install(id)
    }

    /// Enrolls with `token`; if the control plane is unreachable, keeps the
    /// token for a retry. Returns whether a retry is pending.
    async fn enroll_or_keep(&self, token: String) -> bool {
        let retry = match self.enroll(&token).await {
            Ok(()) => false,
            Err(e @ Error::Transport(_)) => {
                tracing::warn!(error = %e, "enrollment failed; will retry with the same join token");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "enrollment refused");
                false
            }
        };
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = retry.then_some(token);
        retry
    }

    /// Consumes a join token dropped into the data directory, if any.
    async fn try_token_file(&self) {
        let path = self.config.data_dir.join(JOIN_TOKEN_FILE);
        let Ok(token) = std::fs::read_to_string(&path) else {
            return;
        };
        match self.enroll(&token).await {
            Ok(()) => tracing::info!("enrolled with the join token from {}", path.display()),
            // Keep the file: the control plane may only be briefly away.
            Err(e @ Error::Transport(_)) => {
                tracing::warn!(error = %e, "enrollment with {} failed; will retry", path.display());
                return;
            }
            Err(e) => tracing::error!(error = %e, "enrollment with {} refused", path.display()),
        }
        // Used or refused: a single-use token is never tried again.
        let _ = std::fs::remove_file(&path);
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = RETRY_MIN;
        let mut reported_lapse = false;
        // One jitter draw per certificate, so the renewal point is stable.
        let mut jitter: (String, f64) = (String::new(), 0.0);
        loop {
            let now = now_unix();
            let snap = self.snapshot();
            let wait = match snap.valid(now) {
                Some(id) => {
                    reported_lapse = false;
                    if jitter.0 != id.serial {
                        jitter = (id.serial.clone(), rand::rng().random_range(-0.1..0.1));
                    }
                    let at = renew_at(id, self.config.renew_fraction, jitter.1);
                    if now >= at {
                        match self.renew_once().await {
                            Ok(()) => {
                                backoff = RETRY_MIN;
                                continue;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, retry_in = ?backoff, expires_at = id.not_after, "renewal failed; still serving the current certificate");
                                let w = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
                                backoff = (backoff * 2).min(RETRY_MAX);
                                w
                            }
                        }
                    } else {
                        Duration::from_secs((at - now) as u64)
                    }
                }
                None => {
                    let pending = self
                        .pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take();
                    let retrying = match pending {
                        Some(token) => self.enroll_or_keep(token).await,
                        None => false,
                    };
                    if !retrying && !reported_lapse && self.snapshot().valid(now_unix()).is_none() {
                        self.report_missing();
                        reported_lapse = true;
                    }
                    self.try_token_file().await;
                    if self.snapshot().valid(now_unix()).is_some() {
                        backoff = RETRY_MIN;
                        continue;
                    }
                    if retrying {
                        let w = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
                        backoff = (backoff * 2).min(RETRY_MAX);
                        w.max(Duration::from_millis(200))
                    } else {
                        Duration::from_secs(1)
                    }
                }
            };
            // Wake early if the identity changes (e.g. a manual renewal).
            let mut changes = self.subscribe();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = changes.changed() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk(not_before: i64, not_after: i64, received_at: i64) -> Identity {
        Identity {
            spiffe_id: SpiffeId::parse("spiffe://t/agent/a").unwrap(),
            cert_der: vec![],
            cert_pem: String::new(),
            key_pem: String::new(),
            bundle_pem: String::new(),
            not_before,
            not_after,
            received_at,
            serial: String::new(),
            thumbprint: String::new(),
        }
    }

    #[test]
    fn renews_at_half_life_with_bounded_jitter() {
        let id = mk(1000, 4600, 1000);
        assert_eq!(renew_at(&id, 0.5, 0.0), 2800);
        assert_eq!(renew_at(&id, 0.5, 0.5), 2800 + 360);
        assert_eq!(renew_at(&id, 0.5, -0.5), 2800 - 360);
        assert!(!id.valid_at(999) && id.valid_at(1000) && !id.valid_at(4600));
    }

    #[test]
    fn renewal_is_timed_from_receipt_not_from_the_backdated_start() {
        // A 60 s certificate backdated by 60 s: renewing at "half life"
        // measured from not_before would be due at once, forever.
        let id = mk(940, 1060, 1000);
        assert_eq!(renew_at(&id, 0.5, 0.0), 1030);
        // Never sooner than the minimum delay, unless it expires sooner.
        assert_eq!(renew_at(&mk(0, 1008, 1000), 0.1, -0.1), 1005);
        assert_eq!(renew_at(&mk(0, 1002, 1000), 0.1, -0.1), 1002);
    }
}
