//! The sidecar end of the mesh stream: holds one stream to the control
//! plane, applies every push (the agent's standing, revoked sessions, signing
//! keys) or refuses it whole, acknowledges each, and reconnects with
//! jittered exponential backoff, reset after a good push. A clean end
//! reconnects at once; a refusal that cannot change by retrying (the agent
//! is revoked, the request is invalid) stops the loop with a clear log.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use warden_shared::policy::{Policy, Risk};
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::mesh_service_client::MeshServiceClient;
use warden_shared::token::JwkSet;

use crate::config::{RETRY_MAX, RETRY_MIN};
use crate::cp::ControlPlane;
use crate::gateway::authenticate::{Authenticator, HeldPolicy, Standing};
use crate::identity::rotation::Manager;
use crate::now_unix;

/// Most revoked sessions one push may carry.
const MAX_REVOKED: usize = 100_000;

fn risk(s: &str) -> Option<Risk> {
    match s {
        "low" => Some(Risk::Low),
        "medium" => Some(Risk::Medium),
        "high" => Some(Risk::High),
        "critical" => Some(Risk::Critical),
        _ => None,
    }
}

/// The pushed policy, validated here again: a document this sidecar cannot
/// compile is refused, never half-applied. An unchanged version is not
/// compiled twice.
fn check_policy(
    push: &pb::StreamResponse,
    held: Option<&Arc<HeldPolicy>>,
) -> Result<Option<Arc<HeldPolicy>>, String> {
    let v = push.policy_version;
    if v == 0 {
        return Ok(None);
    }
    let fail = |m: String| format!("policy v{v}: {m}");
    let mut tools = BTreeMap::new();
    for t in &push.tools {
        let r = risk(&t.risk)
            .ok_or_else(|| fail(format!("tool {:?} has unknown risk {:?}", t.name, t.risk)))?;
        tools.insert(t.name.clone(), r);
    }
    if let Some(h) = held.filter(|h| h.version == v && h.tools == tools) {
        return Ok(Some(Arc::clone(h)));
    }
    let policy =
        Policy::parse(&push.policy_document).map_err(|e| fail(format!("{e} [{}]", e.kind())))?;
    if let Some(name) = tools
        .keys()
        .find(|n| !policy.document.tools.iter().any(|d| &d.name == *n))
    {
        return Err(fail(format!("tool {name:?} is not in the document")));
    }
    Ok(Some(Arc::new(HeldPolicy {
        version: v,
        policy,
        tools,
    })))
}

/// Why a push was refused (sent back in the Nack).
fn check(
    push: &pb::StreamResponse,
    now: i64,
    held: Option<&Arc<HeldPolicy>>,
) -> Result<(Standing, Option<JwkSet>), String> {
    let reason = push.agent_status_reason.clone();
    let blocked = match pb::AgentStatus::try_from(push.agent_status) {
        Ok(pb::AgentStatus::Active) => None,
        Ok(pb::AgentStatus::Suspended) => Some((false, reason)),
        Ok(pb::AgentStatus::Revoked) => Some((true, reason)),
        _ => return Err(format!("unknown agent status {}", push.agent_status)),
    };
    if push.revoked_sessions.len() > MAX_REVOKED {
        return Err(format!("more than {MAX_REVOKED} revoked sessions"));
    }
    let mut revoked_sessions = HashMap::with_capacity(push.revoked_sessions.len());
    for r in &push.revoked_sessions {
        let exp = r
            .expires_at
            .as_ref()
            .map(|t| t.seconds)
            .ok_or("revoked session without expiry")?;
        if r.session_id.is_empty() {
            return Err("revoked session without id".into());
        }
        if exp > now {
            revoked_sessions.insert(r.session_id.clone(), exp);
        }
    }
    let jwks = match push.jwks_json.as_str() {
        "" => None,
        text => {
            let set: JwkSet =
                serde_json::from_str(text).map_err(|e| format!("invalid JWKS: {e}"))?;
            warden_shared::token::Verifier::new(&set).map_err(|e| format!("invalid JWKS: {e}"))?;
            Some(set)
        }
    };
    let policy = check_policy(push, held)?;
    Ok((
        Standing {
            blocked,
            revoked_sessions,
            version: push.version,
            policy,
        },
        jwks,
    ))
}

/// Applies a checked push: keys first, then the standing in one step.
pub fn apply(auth: &Authenticator, push: &pb::StreamResponse, now: i64) -> Result<(), String> {
    let held = auth.standing().policy.clone();
    let (standing, jwks) = check(push, now, held.as_ref())?;
    if let Some(set) = jwks {
        auth.set_jwks(&set)
            .map_err(|e| format!("invalid JWKS: {e}"))?;
    }
    auth.set_standing(standing);
    Ok(())
}

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
        let mut f = std::fs::File::create(&tmp)?;
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

/// Stream endings by reason, for health and operators.
#[derive(Debug, Default)]
pub struct MeshStats {
    endings: std::sync::Mutex<BTreeMap<&'static str, u64>>,
}

impl MeshStats {
    /// Counts one ending.
    pub fn ended(&self, reason: &'static str) {
        *self
            .endings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// Endings so far, by reason.
    pub fn endings(&self) -> BTreeMap<&'static str, u64> {
        self.endings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Whether retrying cannot help.
fn fatal(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        Code::InvalidArgument | Code::FailedPrecondition | Code::PermissionDenied
    )
}

/// Runs until `shutdown`.
pub async fn run(
    identity: Arc<Manager>,
    cp: Arc<ControlPlane>,
    auth: Arc<Authenticator>,
    snapshots: SnapshotFile,
    stats: Arc<MeshStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = RETRY_MIN;
    let mut held = auth.standing_version();
    loop {
        let wait = 'attempt: {
            if identity.snapshot().valid(now_unix()).is_none() {
                break 'attempt Duration::from_secs(1);
            }
            let ch = match cp.channel() {
                Ok(ch) => ch,
                Err(e) => {
                    tracing::warn!(error = %e.message(), "mesh: no channel to the control plane");
                    {
                        stats.ended("no channel");
                        break 'attempt backoff;
                    }
                }
            };
            let (tx, rx) = mpsc::channel(8);
            let hello = pb::StreamRequest {
                kind: Some(pb::stream_request::Kind::Hello(pb::Hello {
                    held_version: held,
                })),
            };
            let _ = tx.send(hello).await;
            let mut client = MeshServiceClient::new(ch);
            let opened = tokio::select! {
                r = client.stream(ReceiverStream::new(rx)) => r,
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
            };
            let mut inbound = match opened {
                Ok(r) => r.into_inner(),
                Err(s) if fatal(&s) => {
                    let known = auth
                        .standing()
                        .blocked
                        .as_ref()
                        .is_some_and(|(revoked, _)| *revoked);
                    if !known
                        && warden_shared::refusal::reason_of(&s).as_deref() == Some("AGENT_REVOKED")
                    {
                        auth.set_standing(Standing {
                            blocked: Some((true, s.message().to_owned())),
                            ..Standing::default()
                        });
                    }
                    tracing::error!(code = ?s.code(), error = %s.message(), "mesh: the control plane refused the stream; not retrying");
                    stats.ended("refused by the control plane");
                    return;
                }
                Err(s) => {
                    tracing::warn!(code = ?s.code(), error = %s.message(), retry_in = ?backoff, "mesh: cannot open the stream");
                    stats.ended("open failed");
                    break 'attempt backoff;
                }
            };
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
                };
                match msg {
                    Ok(Some(push)) => {
                        auth.set_connected(true, now_unix());
                        // Compiling a policy (schemas, Cedar) is CPU work: off the runtime.
                        let applied = {
                            let (auth, push) = (Arc::clone(&auth), push.clone());
                            tokio::task::spawn_blocking(move || apply(&auth, &push, now_unix()))
                                .await
                                .unwrap_or_else(|_| Err("applying the push panicked".to_owned()))
                        };
                        let reply = match applied {
                            Ok(()) => {
                                held = push.version;
                                if let Err(e) = snapshots.save(&push) {
                                    tracing::error!(error = %e, "mesh: could not persist the snapshot");
                                }
                                tracing::info!(version = push.version, "mesh: push applied");
                                pb::stream_request::Kind::Ack(pb::Ack {
                                    version: push.version,
                                    nonce: push.nonce,
                                })
                            }
                            Err(reason) => {
                                tracing::warn!(version = push.version, %reason, "mesh: push refused; keeping what is held");
                                pb::stream_request::Kind::Nack(pb::Nack {
                                    version: push.version,
                                    nonce: push.nonce,
                                    reason,
                                })
                            }
                        };
                        backoff = RETRY_MIN;
                        if tx
                            .send(pb::StreamRequest { kind: Some(reply) })
                            .await
                            .is_err()
                        {
                            stats.ended("ack failed");
                            break 'attempt Duration::ZERO;
                        }
                    }
                    Ok(None) => {
                        tracing::info!("mesh: stream ended by the control plane; reconnecting");
                        stats.ended("ended by the control plane");
                        break 'attempt Duration::ZERO;
                    }
                    Err(s) => {
                        tracing::warn!(code = ?s.code(), error = %s.message(), retry_in = ?backoff, "mesh: stream failed");
                        stats.ended("stream failed");
                        break 'attempt backoff;
                    }
                }
            }
        };
        auth.set_connected(false, now_unix());
        if !wait.is_zero() {
            let jittered = wait.mul_f64(rand::rng().random_range(0.5..1.0));
            backoff = (backoff * 2).min(RETRY_MAX);
            tokio::select! {
                _ = tokio::time::sleep(jittered) => {}
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
            }
        }
    }
}
