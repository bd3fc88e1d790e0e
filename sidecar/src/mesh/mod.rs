//! The sidecar end of the mesh stream: holds one stream to the control
//! plane, applies every push (the parts that changed: the agent's standing,
//! revoked sessions, signing keys, policy, the mesh's blocked agents) or
//! refuses it whole naming the part at fault, acknowledges each, persists
//! what it holds, and reconnects with jittered exponential backoff, reset
//! after a good push, saying what it holds so that only what differs is
//! sent. A clean end reconnects at once; a refusal that cannot change by
//! retrying (the agent is revoked, the request is invalid) stops the loop
//! with a clear log.

pub mod keys;
pub mod snapshot;

use crate::state::held;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::mesh_service_client::MeshServiceClient;

use crate::config::{RETRY_MAX, RETRY_MIN};
use crate::cp::ControlPlane;
use crate::identity::rotation::Manager;
use crate::now_unix;
use crate::state::State;
pub use snapshot::{SnapshotError, SnapshotFile};

/// Largest push accepted: the parts' own caps (a 1 MiB policy document,
/// 100,000 revoked sessions, 100,000 blocked agents) together.
const MAX_PUSH_BYTES: usize = 16 * 1024 * 1024;

/// Applies a push whole, or refuses it with the part at fault and keeps
/// what is held.
pub fn apply(
    state: &State,
    me: &str,
    push: &pb::StreamResponse,
    now: i64,
) -> Result<(), held::PushError> {
    apply_at(state, me, push, now.saturating_mul(1000))
}

/// [`apply`] at `now_ms` (unix milliseconds).
pub fn apply_at(
    state: &State,
    me: &str,
    push: &pb::StreamResponse,
    now_ms: i64,
) -> Result<(), held::PushError> {
    state.update(|h| {
        let next = h.apply_at(push, now_ms)?;
        held::check_pair_membership(&next.pair_keys, me).map_err(held::PushError::PairKeys)?;
        Ok(next)
    })
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

/// The parts a push carried, for the log.
fn describe(p: &pb::StreamResponse) -> String {
    let parts: Vec<String> = [
        p.standing.as_ref().map(|_| "standing".to_owned()),
        p.revoked_sessions
            .as_ref()
            .map(|r| format!("revoked_sessions({})", r.sessions.len())),
        p.keys.as_ref().map(|_| "keys".to_owned()),
        p.policy.as_ref().map(|x| format!("policy(v{})", x.version)),
        p.blocked_agents.as_ref().map(|b| {
            format!(
                "blocked_agents({}{})",
                if b.complete { "all " } else { "+" },
                b.blocked.len() + b.cleared.len()
            )
        }),
        p.pair_keys
            .as_ref()
            .map(|k| format!("pair_keys({})", k.keys.len())),
        p.approvals
            .as_ref()
            .map(|a| format!("approvals({})", a.decided.len())),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        "none (current)".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The control plane refused the stream because the agent is revoked (or
/// its identity `expired`): hold and persist that, so every token is
/// refused with the reason, across restarts too.
fn revoked_at_open(state: &State, snapshots: &SnapshotFile, message: &str, expired: bool) {
    let now = crate::now_unix();
    let r = state.update(|h| {
        if h.blocked.as_ref().is_some_and(|(revoked, _)| *revoked) && (!expired || h.expired(now)) {
            return Err(());
        }
        let mut next = h.clone();
        next.blocked = Some((true, message.to_owned()));
        let mut standing = h.raw.standing.as_deref().cloned().unwrap_or_default();
        if expired && !h.expired(now) {
            next.expires_at = Some(now);
            standing.expires_at = Some(prost_types::Timestamp {
                seconds: now,
                nanos: 0,
            });
        }
        standing.digest = 0;
        standing.status = pb::AgentStatus::Revoked.into();
        standing.reason = message.to_owned();
        next.standing = Some(Arc::new(held::Standing::from(&standing)));
        next.raw.standing = Some(Arc::new(standing));
        next.version = next.version.max(1);
        Ok(next)
    });
    if r.is_ok()
        && let Err(e) = snapshots.save(&state.held().to_push())
    {
        tracing::error!(error = %e, "mesh: could not persist the snapshot");
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
    state: Arc<State>,
    me: String,
    snapshots: SnapshotFile,
    stats: Arc<MeshStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = RETRY_MIN;
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
                kind: Some(pb::stream_request::Kind::Hello({
                    let held = state.held();
                    pb::Hello {
                        held_version: held.version,
                        held: Some(pb::HeldParts {
                            approvals_seq: state.approvals.seq(),
                            ..held.digests()
                        }),
                    }
                })),
            };
            let _ = tx.send(hello).await;
            let mut client = MeshServiceClient::new(ch).max_decoding_message_size(MAX_PUSH_BYTES);
            let opened = tokio::select! {
                r = client.stream(ReceiverStream::new(rx)) => r,
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
            };
            let mut inbound = match opened {
                Ok(r) => r.into_inner(),
                Err(s) if fatal(&s) => {
                    use warden_shared::refusal::Reason;
                    let why = warden_shared::refusal::typed_reason_of(&s);
                    if matches!(why, Some(Reason::AgentRevoked | Reason::AgentExpired)) {
                        let (state, snapshots) = (Arc::clone(&state), snapshots.clone());
                        let message = s.message().to_owned();
                        let expired = why == Some(Reason::AgentExpired);
                        let _ = tokio::task::spawn_blocking(move || {
                            revoked_at_open(&state, &snapshots, &message, expired);
                        })
                        .await;
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
                    Ok(Some(mut push)) => {
                        state.set_connected(true, now_unix());
                        let (version, nonce) = (push.version, push.nonce.clone());
                        let parts = describe(&push);
                        // Decisions on approval requests go to the waiting
                        // calls once the rest is applied (a session revoked
                        // in the same push stops the call it releases); a
                        // push of nothing else needs no snapshot rebuilt or
                        // written.
                        let decided = push.approvals.take();
                        let only_decided = decided.is_some()
                            && push.carries_nothing()
                            && state.held_version() != 0;
                        let applied = if only_decided {
                            Ok(parts)
                        } else {
                            // Compiling a policy (schemas, Cedar) and writing
                            // the snapshot are blocking work: off the runtime.
                            let (state, me, snapshots) =
                                (Arc::clone(&state), me.clone(), snapshots.clone());
                            tokio::task::spawn_blocking(move || {
                                apply_at(&state, &me, &push, crate::now_ms())?;
                                if let Err(e) = snapshots.save(&state.held().to_push()) {
                                    tracing::error!(error = %e, "mesh: could not persist the snapshot");
                                }
                                Ok(parts)
                            })
                            .await
                            .unwrap_or_else(|_| {
                                tracing::error!(version, "mesh: applying the push panicked");
                                Err(held::PushError::Internal)
                            })
                        };
                        let applied = applied.and_then(|parts| {
                            decided
                                .as_ref()
                                .map_or(Ok(()), |a| state.approvals.apply(a))
                                .map(|()| parts)
                        });
                        let reply = match applied {
                            Ok(parts) => {
                                tracing::info!(version, parts = %parts, "mesh: push applied");
                                pb::stream_request::Kind::Ack(pb::Ack { version, nonce })
                            }
                            Err(e) => {
                                let part = e.part();
                                tracing::warn!(version, ?part, reason = %e, "mesh: push refused; keeping what is held");
                                pb::stream_request::Kind::Nack(pb::Nack {
                                    version,
                                    nonce,
                                    reason: e.to_string(),
                                    part: part.into(),
                                    held: Some(pb::HeldParts {
                                        approvals_seq: state.approvals.seq(),
                                        ..state.held().digests()
                                    }),
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
        state.set_connected(false, now_unix());
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
