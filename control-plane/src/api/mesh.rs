//! `warden.v1.MeshService/Stream`: after the sidecar's `Hello` (which names
//! the parts it holds), the control plane pushes the parts that differ, then
//! waits for changes and pushes only the parts that changed. One push is in
//! flight at a time: the next waits for the sidecar's Ack or Nack, so the
//! control plane always knows exactly what the sidecar holds, and changes
//! made meanwhile are coalesced into one push. A refused part is not sent
//! again until it changes. A revoked agent gets a last push saying so, then
//! the stream ends; a revoked agent cannot open one.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rand::RngCore;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use warden_shared::agent::{AgentId, AgentStatus};
use warden_shared::proto::v1 as pb;
use warden_shared::proto::v1::mesh_service_server::MeshService;
use warden_shared::refusal::{Reason, status};

use crate::api::parts::{self, AgentParts};
use crate::auth;
use crate::mesh::registry::Registration;
use crate::now_unix;
use crate::state::State;

/// Pushes waiting to be written to one stream.
const OUTBOUND: usize = 2;

/// What the stream task hands to the transport. Boxed: a channel allocates
/// a block of 32 slots up front, and 32 unboxed pushes would cost every
/// connected stream about 9 KiB.
type Outbound = Result<Box<pb::StreamResponse>, Box<Status>>;
/// A sidecar that neither Acks nor Nacks a push for this long is dropped
/// (it reconnects and resyncs).
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// The mesh service.
#[derive(Debug, Clone)]
pub struct MeshApi {
    state: Arc<State>,
}

impl MeshApi {
    /// Wraps the shared state.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

/// Digests of the parts (0: none), and the blocked list's sequence number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Digests {
    standing: u64,
    sessions: u64,
    keys: u64,
    policy: u64,
    blocked: u64,
    pairs: u64,
}

impl From<&pb::HeldParts> for Digests {
    fn from(h: &pb::HeldParts) -> Self {
        Self {
            standing: h.standing,
            sessions: h.revoked_sessions,
            keys: h.keys,
            policy: h.policy,
            blocked: h.blocked_agents_seq,
            pairs: h.pair_keys,
        }
    }
}

/// What a sidecar reports holding, as this control plane reads it: a
/// blocked-list position from another epoch (another process) counts as
/// none.
fn held_here(state: &State, h: &pb::HeldParts) -> Digests {
    let mut d = Digests::from(h);
    if h.blocked_agents_epoch != state.hub.blocked_epoch() {
        d.blocked = 0;
    }
    d
}

/// What this stream knows of its sidecar.
#[derive(Debug, Default)]
struct Tracker {
    /// What the sidecar holds (after the push in flight, if any, is applied).
    held: Digests,
    /// What it refused; not sent again until it changes.
    refused: Digests,
    /// The push awaiting an answer.
    in_flight: Option<InFlight>,
    /// A Nack reset `held`: re-read everything on the next evaluation.
    resync: bool,
    /// The digest and version of the policy part last read.
    policy: (u64, u64),
    /// The last approval decision the sidecar holds (after the push in
    /// flight), one it refused, and whether more wait to be sent.
    approvals: u64,
    approvals_refused: Option<u64>,
    approvals_more: bool,
}

/// A push awaiting the sidecar's answer.
#[derive(Debug)]
struct InFlight {
    version: u64,
    /// The digests of the parts it carried (0: not carried).
    carried: Digests,
    /// Whether its blocked-agents part was the complete list.
    blocked_complete: bool,
    /// The last approval decision it carried, if it carried any.
    approvals: Option<u64>,
}

fn nonce() -> String {
    let mut b = [0u8; 12];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The parts of `agent` (if read) and the mesh-wide ones that the sidecar
/// neither holds nor refused.
fn build(
    state: &State,
    t: &Tracker,
    agent: Option<AgentParts>,
    pairs: Option<pb::PairKeysPart>,
    approvals: Option<pb::ApprovalsPart>,
) -> (pb::StreamResponse, Digests) {
    let mut carried = Digests::default();
    let mut push = pb::StreamResponse::default();
    let new = |d: u64, held: u64, refused: u64| d != held && d != refused;
    if let Some(a) = agent {
        if new(a.standing.digest, t.held.standing, t.refused.standing) {
            carried.standing = a.standing.digest;
            push.standing = Some(a.standing);
        }
        if new(a.sessions.digest, t.held.sessions, t.refused.sessions) {
            carried.sessions = a.sessions.digest;
            push.revoked_sessions = Some(a.sessions);
        }
        if let Some(p) = a.policy
            && new(p.digest, t.held.policy, t.refused.policy)
        {
            carried.policy = p.digest;
            push.policy = Some(p);
        }
    }
    let ring = state.keys.current();
    if new(ring.digest, t.held.keys, t.refused.keys) {
        carried.keys = ring.digest;
        push.keys = Some(pb::KeysPart {
            digest: ring.digest,
            jwks_json: ring.jwks_json.clone(),
        });
    }
    if let Some(p) = pairs
        && new(p.digest, t.held.pairs, t.refused.pairs)
    {
        carried.pairs = p.digest;
        push.pair_keys = Some(p);
    }
    push.approvals = approvals.filter(|a| t.approvals_refused != Some(a.seq));
    if let Some(b) = state.hub.blocked_part(t.held.blocked)
        && b.seq != t.refused.blocked
    {
        carried.blocked = b.seq;
        push.blocked_agents = Some(b);
    }
    (push, carried)
}

/// What the pair keys were last computed from: the policy version, the
/// directory's generation, the blocked list's sequence and the epoch.
type PairsAt = (u64, u64, u64, u64);

/// The agent's pair keys under the policy in force (none without a
/// policy), unless nothing they depend on changed since `memo` (then
/// `None`: the part is not computed again on every wake).
async fn pairs(
    state: &State,
    agent: &AgentId,
    policy: Option<&crate::policy::CurrentPolicy>,
    memo: &mut Option<PairsAt>,
) -> Result<Option<pb::PairKeysPart>, Status> {
    let Some(p) = policy else { return Ok(None) };
    let now_ms = crate::now_unix_ms();
    let at = (
        p.version,
        state.messaging.generation(),
        state.hub.blocked_seq(),
        warden_shared::a2a::epoch_of(now_ms, p.messaging.rotation_ms),
    );
    if *memo == Some(at) {
        return Ok(None);
    }
    *memo = Some(at);
    let dir = state
        .messaging
        .directory(state.store.as_ref())
        .await
        .map_err(crate::agents::store_error)?;
    Ok(Some(state.messaging.part(
        &state.td,
        &p.messaging,
        &dir,
        agent,
        now_ms,
        |a| state.hub.is_blocked(a).is_some(),
    )))
}

type PushStream = Pin<Box<dyn Stream<Item = Result<pb::StreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl MeshService for MeshApi {
    type StreamStream = PushStream;

    async fn stream(
        &self,
        req: Request<Streaming<pb::StreamRequest>>,
    ) -> Result<Response<PushStream>, Status> {
        let (_, agent) = auth::agent(&req, &self.state.td)?;
        let record = self
            .state
            .store
            .get_agent(&agent)
            .await
            .map_err(crate::agents::store_error)?;
        if let Some(a) = &record {
            if a.status == AgentStatus::Revoked {
                return Err(status(
                    Reason::AgentRevoked,
                    format!("agent {agent} is revoked: {}", a.status_reason),
                ));
            }
            // Refused at open (a fatal refusal for the sidecar), not only
            // pushed: a stream that ended after saying so would be reopened.
            if a.expires_at.is_some_and(|e| e <= now_unix()) {
                return Err(status(
                    Reason::AgentExpired,
                    format!("agent {agent} has expired"),
                ));
            }
        }
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let mut inbound = req.into_inner();
        let (held_version, held, approvals) = match inbound.message().await? {
            Some(pb::StreamRequest {
                kind: Some(pb::stream_request::Kind::Hello(h)),
            }) => (
                h.held_version,
                h.held.as_ref().map(|h| held_here(&self.state, h)),
                h.held.as_ref().map_or(0, |h| h.approvals_seq),
            ),
            _ => {
                return Err(status(
                    Reason::InvalidArgument,
                    "the first message must be Hello",
                ));
            }
        };
        let (tx, rx) = mpsc::channel(OUTBOUND);
        let state = Arc::clone(&self.state);
        let span = tracing::info_span!("mesh_stream", agent = %agent);
        tokio::spawn(
            async move {
                tracing::info!(held_version, "sidecar stream opened");
                let reg = state.sidecars.open(agent.clone(), peer, now_unix());
                let tracker = Tracker {
                    held: held.unwrap_or_default(),
                    approvals,
                    ..Tracker::default()
                };
                let ending = serve(Arc::clone(&state), agent, inbound, tx, &reg, tracker).await;
                state.sidecars.ended(ending);
                tracing::info!(ending, "sidecar stream ended");
            }
            .instrument(span),
        );
        let out = ReceiverStream::new(rx).map(|o: Outbound| o.map(|p| *p).map_err(|s| *s));
        Ok(Response::new(Box::pin(out)))
    }
}

/// Runs one stream; returns why it ended.
async fn serve(
    state: Arc<State>,
    agent: AgentId,
    mut inbound: Streaming<pb::StreamRequest>,
    tx: mpsc::Sender<Outbound>,
    reg: &Registration,
    mut t: Tracker,
) -> &'static str {
    // Subscribe before reading any state, so no change can fall between.
    let mut sub = state.hub.subscribe(&agent);
    let mut stopping = state.stopping.subscribe();
    // What the agent's parts were last read at: its change counter and the
    // policy version (the tools depend on both).
    let mut read_at: Option<(u64, u64)> = None;
    let mut first = true;
    let mut deadline = tokio::time::Instant::now();
    // When the pair keys rotate (`None`: this agent holds none).
    let mut rotation: Option<tokio::time::Instant> = None;
    let mut pairs_at: Option<PairsAt> = None;
    let mut has_pair_keys = false;
    loop {
        if t.in_flight.is_none() {
            let agent_gen = *sub.agent_changes.borrow_and_update();
            sub.global_changes.borrow_and_update();
            let policy = state.current_policy();
            let at = (agent_gen, policy.as_ref().map_or(0, |p| p.version));
            let reread = t.resync || read_at != Some(at);
            // Decisions on approval requests: after the one the sidecar
            // holds; all recent ones on the stream's first evaluation if it
            // holds none, or a number this store never gave.
            let approvals = if first || reread || t.approvals_more {
                let complete = first
                    && (t.approvals == 0
                        || state
                            .store
                            .last_decision_seq()
                            .await
                            .is_ok_and(|last| t.approvals > last));
                match crate::api::approval::part(&state, &agent, t.approvals, complete).await {
                    Ok((p, more)) => {
                        t.approvals_more = more;
                        p
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Box::new(e))).await;
                        return "error";
                    }
                }
            } else {
                None
            };
            let agent_parts = if reread {
                match Box::pin(parts::read(&state, &agent, policy.as_deref())).await {
                    Ok(p) => Some(p),
                    Err(e) => {
                        let _ = tx.send(Err(Box::new(e))).await;
                        return "error";
                    }
                }
            } else {
                None
            };
            read_at = Some(at);
            t.resync = false;
            let revoked = agent_parts.as_ref().is_some_and(AgentParts::revoked);
            if let Some(p) = agent_parts.as_ref().and_then(|a| a.policy.as_ref()) {
                t.policy = (p.digest, p.version);
                if first && t.held.policy == p.digest {
                    reg.holds_policy(p.version);
                }
            }
            let pair_keys = match pairs(&state, &agent, policy.as_deref(), &mut pairs_at).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(Box::new(e))).await;
                    return "error";
                }
            };
            if let Some(p) = &pair_keys {
                has_pair_keys = !p.keys.is_empty();
            }
            // Set at every evaluation: after a clock step backwards the
            // epoch may not have changed when the timer fires.
            rotation = match policy.as_deref() {
                Some(p) if has_pair_keys => Some(
                    tokio::time::Instant::now()
                        + crate::a2a::next_rotation(&p.messaging, crate::now_unix_ms()),
                ),
                _ => None,
            };
            let approvals_seq = approvals.as_ref().map(|a| a.seq);
            let (mut push, carried) = build(&state, &t, agent_parts, pair_keys, approvals);
            // The first push is sent even when empty: it tells the sidecar
            // that it is connected and current.
            if first || !push.carries_nothing() {
                first = false;
                push.version = state.hub.version();
                push.nonce = nonce();
                let version = push.version;
                let blocked_complete = push.blocked_agents.as_ref().is_some_and(|b| b.complete);
                let push_approvals = push.approvals.as_ref().and(approvals_seq);
                if tx.send(Ok(Box::new(push))).await.is_err() {
                    return "sidecar gone";
                }
                reg.pushed(version, now_unix());
                t.in_flight = Some(InFlight {
                    version,
                    carried,
                    blocked_complete,
                    approvals: push_approvals,
                });
                deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
            }
            sub.evaluated(agent_gen);
            if revoked {
                return "agent revoked";
            }
        }
        let waiting = t.in_flight.is_some();
        tokio::select! {
            // (The guard `wait_for` returns must not live across the awaits below.)
            _ = async { let _ = stopping.wait_for(|s| *s).await; } => return "control plane stopping",
            // While a push is in flight, changes wait (their flags stay set)
            // and are coalesced into the next push.
            r = sub.agent_changes.changed(), if !waiting => if r.is_err() { return "control plane stopping" },
            r = sub.global_changes.changed(), if !waiting => if r.is_err() { return "control plane stopping" },
            _ = tokio::time::sleep_until(deadline), if waiting => return "ack timeout",
            // A new key epoch: evaluate again (the keys part changes).
            _ = tokio::time::sleep_until(rotation.unwrap_or(deadline)), if rotation.is_some() && !waiting => {}
            msg = inbound.message() => match msg {
                Ok(Some(pb::StreamRequest { kind: Some(pb::stream_request::Kind::Ack(a)) })) => {
                    if let Some(f) = t.in_flight.take_if(|f| f.version == a.version) {
                        tracing::debug!(version = f.version, "push acknowledged");
                        merge(&mut t.held, &f.carried);
                        if let Some(seq) = f.approvals {
                            t.approvals = seq;
                        }
                        reg.acked(f.version, now_unix());
                        if f.carried.policy != 0 && f.carried.policy == t.policy.0 {
                            reg.holds_policy(t.policy.1);
                        }
                    }
                }
                Ok(Some(pb::StreamRequest { kind: Some(pb::stream_request::Kind::Nack(n)) })) => {
                    let reason: String = n.reason.chars().take(512).collect();
                    tracing::warn!(version = n.version, part = ?n.part(), %reason, "push refused by the sidecar");
                    reg.nacked(n.version, reason);
                    if let Some(f) = t.in_flight.take_if(|f| f.version == n.version) {
                        t.held = n.held.as_ref().map(|h| held_here(&state, h)).unwrap_or_default();
                        t.approvals = n.held.as_ref().map_or(0, |h| h.approvals_seq);
                        refuse(&mut t, &f, n.part());
                        pairs_at = None;
                    }
                }
                Ok(Some(_)) => {
                    let refusal = status(Reason::InvalidArgument, "unexpected message");
                    let _ = tx.send(Err(Box::new(refusal))).await;
                    return "protocol error";
                }
                Ok(None) => return "closed by the sidecar",
                Err(_) => return "transport error",
            },
        }
    }
}

/// `held` after applying a push that carried `c` (0: not carried).
fn merge(held: &mut Digests, c: &Digests) {
    for (h, c) in [
        (&mut held.standing, c.standing),
        (&mut held.sessions, c.sessions),
        (&mut held.keys, c.keys),
        (&mut held.policy, c.policy),
        (&mut held.blocked, c.blocked),
        (&mut held.pairs, c.pairs),
    ] {
        if c != 0 {
            *h = c;
        }
    }
}

/// Records a refusal: the refused part is not sent again until it changes,
/// and everything is read again for the next push. A refused delta of the
/// blocked list is answered with the complete list; only a refused complete
/// list is held back.
fn refuse(t: &mut Tracker, f: &InFlight, part: pb::MeshPart) {
    use pb::MeshPart as P;
    let (refused, carried) = (&mut t.refused, &f.carried);
    match part {
        P::Standing => refused.standing = carried.standing,
        P::RevokedSessions => refused.sessions = carried.sessions,
        P::Keys => refused.keys = carried.keys,
        P::Policy => refused.policy = carried.policy,
        P::PairKeys => refused.pairs = carried.pairs,
        P::Approvals => t.approvals_refused = f.approvals,
        P::BlockedAgents if f.blocked_complete => refused.blocked = carried.blocked,
        P::BlockedAgents => t.held.blocked = 0,
        // The sidecar could not tell which part (applying it panicked):
        // hold back everything it carried but the agent's own standing and
        // sessions, which are retried alone; if those fail too, they are
        // held back as well. Each such refusal holds back more, so this
        // cannot loop.
        P::Unspecified => {
            let bulky = [carried.keys, carried.policy, carried.blocked, carried.pairs];
            let parts = if bulky.iter().any(|d| *d != 0) {
                [
                    (&mut refused.keys, carried.keys),
                    (&mut refused.policy, carried.policy),
                    (&mut refused.blocked, carried.blocked),
                    (&mut refused.pairs, carried.pairs),
                ]
            } else {
                [
                    (&mut refused.standing, carried.standing),
                    (&mut refused.sessions, carried.sessions),
                    (&mut refused.keys, 0),
                    (&mut refused.pairs, 0),
                ]
            };
            for (r, c) in parts {
                if c != 0 {
                    *r = c;
                }
            }
        }
    }
    t.resync = true;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_keeps_what_a_push_did_not_carry() {
        let mut held = Digests {
            standing: 1,
            sessions: 2,
            keys: 3,
            policy: 4,
            blocked: 5,
            pairs: 6,
        };
        merge(
            &mut held,
            &Digests {
                keys: 9,
                blocked: 10,
                ..Digests::default()
            },
        );
        assert_eq!(
            held,
            Digests {
                standing: 1,
                sessions: 2,
                keys: 9,
                policy: 4,
                blocked: 10,
                pairs: 6,
            }
        );
        let mut t = Tracker::default();
        let f = InFlight {
            version: 7,
            carried: held,
            blocked_complete: false,
            approvals: Some(9),
        };
        refuse(&mut t, &f, pb::MeshPart::Approvals);
        assert_eq!(t.approvals_refused, Some(9));
        refuse(&mut t, &f, pb::MeshPart::Policy);
        assert_eq!(t.refused.policy, 4);
        assert_eq!(t.refused.keys, 0);
        assert!(t.resync);
        // A refused delta of the blocked list: the complete list comes next.
        t.held.blocked = 10;
        refuse(&mut t, &f, pb::MeshPart::BlockedAgents);
        assert_eq!((t.held.blocked, t.refused.blocked), (0, 0));
        let f = InFlight {
            blocked_complete: true,
            ..f
        };
        refuse(&mut t, &f, pb::MeshPart::BlockedAgents);
        assert_eq!(t.refused.blocked, 10);

        // An unattributed refusal holds back the bulky parts first, then
        // the agent's own parts: it cannot loop.
        let mut t = Tracker::default();
        refuse(&mut t, &f, pb::MeshPart::Unspecified);
        assert_eq!(
            (t.refused.keys, t.refused.policy, t.refused.blocked),
            (9, 4, 10)
        );
        assert_eq!((t.refused.standing, t.refused.sessions), (0, 0));
        let own = InFlight {
            carried: Digests {
                standing: 1,
                sessions: 2,
                ..Digests::default()
            },
            ..f
        };
        refuse(&mut t, &own, pb::MeshPart::Unspecified);
        assert_eq!((t.refused.standing, t.refused.sessions), (1, 2));
    }
}
