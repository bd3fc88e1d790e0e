//! Agent-to-agent messages: the sidecar signs its agent's messages with the
//! pairwise key the control plane issued for (sender, recipient, epoch),
//! and verifies messages addressed to its agent before the agent sees them.
//!
//! Verification runs these checks in order, each with its own refusal:
//! envelope (well formed) → recipient (this agent) → sender (not suspended
//! or revoked) → size → pair (a key for sender → this agent exists, i.e.
//! policy allows it) → key (the envelope's epoch is held) → MAC
//! (constant-time) → key age (the epoch ended less than the grace period
//! ago) → freshness (not older than `max_age`, not further ahead than
//! `max_skew`) → replay (this (sender, nonce) was never accepted; recorded
//! last, so a forged envelope cannot burn a nonce).

pub mod inbox;
pub mod peer;
pub mod replay;
pub mod service;

use std::sync::Arc;

use rand::RngCore;
use warden_shared::a2a::{Envelope, MAC_BYTES, NONCE_BYTES};
use warden_shared::agent::AgentId;
use warden_shared::proto::v1 as pb;
use warden_shared::refusal::Reason;
use warden_shared::spiffe::{Principal, SpiffeId, TrustDomain};

use crate::state::State;
use crate::state::held::Held;
use crate::state::held::HeldPairKey;

/// A refused message: the reason (and so the code) the caller receives;
/// its message never holds the payload or a key.
pub use warden_shared::refusal::Refusal;

/// The checks of a verification, in order.
pub const CHECKS: [&str; 10] = [
    "envelope",
    "recipient",
    "sender",
    "size",
    "pair",
    "key",
    "mac",
    "key_age",
    "freshness",
    "replay",
];

/// A message whose envelope verified.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The envelope.
    pub envelope: Envelope,
    /// The sender's agent id.
    pub sender: AgentId,
}

impl From<&Verified> for pb::VerifiedMessage {
    fn from(v: &Verified) -> Self {
        let e = &v.envelope;
        Self {
            sender_spiffe_id: e.sender.to_string(),
            sender_agent_id: v.sender.to_string(),
            payload: e.payload.clone(),
            content_type: e.content_type.clone(),
            sent_at: Some(prost_types::Timestamp {
                seconds: e.timestamp_ms.div_euclid(1000),
                nanos: i32::try_from(e.timestamp_ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
            }),
            key_id: e.key_id,
            checks: CHECKS.iter().map(|c| (*c).to_owned()).collect(),
            message_id: e.nonce.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// Signs and verifies for one agent.
#[derive(Debug)]
pub struct Messenger {
    td: TrustDomain,
    me: AgentId,
    me_spiffe: SpiffeId,
    state: Arc<State>,
    replay: replay::ReplayCache,
    /// Where message decisions are recorded, shipped to the audit log.
    sink: Option<Arc<crate::infra::audit::Sink>>,
}

/// The refusal of a message whose decision cannot be recorded.
fn unrecordable(e: crate::infra::spool::SpoolError) -> Refusal {
    Refusal::new(
        Reason::AuditUnavailable,
        format!("the message cannot be recorded, so it is refused: {e}"),
    )
}

impl Messenger {
    /// For agent `me` of `td`, keys from what `state` holds.
    pub fn new(
        td: TrustDomain,
        me: AgentId,
        state: Arc<State>,
        replay: replay::ReplayCache,
    ) -> Self {
        Self {
            me_spiffe: td.agent(&me),
            td,
            me,
            state,
            replay,
            sink: None,
        }
    }

    /// Records every message decision in `sink` too.
    #[must_use]
    pub fn with_sink(mut self, sink: Arc<crate::infra::audit::Sink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Whether a message may be signed or taken now: in the audit's
    /// `refuse` mode, only while the spool has room for its event (checked
    /// before the message's nonce is spent, so the sender can retry it).
    pub fn ready(&self) -> Result<(), Refusal> {
        self.sink
            .as_ref()
            .map_or(Ok(()), |s| s.ready().map_err(unrecordable))
    }

    /// Appends a message decision to the audit spool. An allowed one whose
    /// event cannot be spooled is refused (`AUDIT_UNAVAILABLE`) in `refuse`
    /// mode, and in strict mode waits until its event is on disk; for a
    /// denied one a failure is only logged, and its own refusal stands.
    pub async fn record(
        &self,
        event: &warden_shared::audit::Event,
        allowed: bool,
    ) -> Result<(), Refusal> {
        let Some(sink) = &self.sink else {
            return Ok(());
        };
        match sink.append(event) {
            Ok(seq) if allowed => sink.settle(seq).await.map_err(unrecordable),
            Err(e) if allowed => Err(unrecordable(e)),
            _ => Ok(()),
        }
    }

    /// This agent's id.
    pub fn agent_id(&self) -> &AgentId {
        &self.me
    }

    /// This agent's SPIFFE ID.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.me_spiffe
    }

    /// What is held now (keys, blocked agents).
    pub fn held(&self) -> Arc<Held> {
        self.state.held()
    }

    /// The replay cache (for metrics).
    pub fn replay(&self) -> &replay::ReplayCache {
        &self.replay
    }

    /// Signs `payload` for `recipient` at `now_ms` with the current epoch's
    /// key of the pair, from what is held now.
    pub fn sign(
        &self,
        recipient: &str,
        payload: Vec<u8>,
        content_type: String,
        now_ms: i64,
    ) -> Result<Envelope, Refusal> {
        self.sign_with(&self.state.held(), recipient, payload, content_type, now_ms)
    }

    /// [`Messenger::sign`] with the keys of `held`: the snapshot the
    /// caller's token was verified against.
    pub fn sign_with(
        &self,
        held: &Held,
        recipient: &str,
        payload: Vec<u8>,
        content_type: String,
        now_ms: i64,
    ) -> Result<Envelope, Refusal> {
        let to = AgentId::new(recipient)
            .map_err(|e| Refusal::new(Reason::InvalidArgument, e.to_string()))?;
        if content_type.len() > warden_shared::a2a::MAX_CONTENT_TYPE_BYTES {
            return Err(Refusal::new(
                Reason::MessageMalformed,
                format!(
                    "content_type is longer than {} bytes",
                    warden_shared::a2a::MAX_CONTENT_TYPE_BYTES
                ),
            ));
        }
        let keys = &held.pair_keys;
        no_keys_yet(keys)?;
        let max = usize::try_from(keys.settings.max_payload_bytes).unwrap_or(usize::MAX);
        if payload.len() > max {
            return Err(too_large(payload.len(), max));
        }
        let pair = keys.of(self.me.as_str(), to.as_str()).ok_or_else(|| {
            Refusal::new(
                Reason::MessagePairNotAllowed,
                format!("policy does not allow {} to message {to}", self.me),
            )
        })?;
        let key = pair
            .iter()
            .find(|k| k.not_before_ms <= now_ms && now_ms < k.not_after_ms)
            .ok_or_else(|| {
                Refusal::new(
                    Reason::MessageKeysUnavailable,
                    "no key of this pair covers the current time (the control plane has been away for a whole key epoch)",
                )
            })?;
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        Ok(Envelope {
            sender: self.me_spiffe.clone(),
            recipient: self.td.agent(&to),
            timestamp_ms: now_ms,
            nonce,
            key_id: key.epoch,
            content_type,
            payload,
            mac: [0; MAC_BYTES],
        }
        .sign(&key.key))
    }

    /// Verifies an envelope addressed to this agent (see the module doc for
    /// the checks and their order), and records its nonce.
    pub async fn verify(&self, wire: &pb::Envelope, now_ms: i64) -> Result<Verified, Refusal> {
        self.verify_with(&self.state.held(), wire, now_ms).await
    }

    /// [`Messenger::verify`] against `held`: the snapshot the caller's
    /// token was verified against.
    pub async fn verify_with(
        &self,
        held: &Held,
        wire: &pb::Envelope,
        now_ms: i64,
    ) -> Result<Verified, Refusal> {
        let (v, ttl_ms) = self.check(held, wire, now_ms)?;
        match self
            .replay
            .first_time(
                self.me.as_str(),
                v.sender.as_str(),
                &v.envelope.nonce,
                ttl_ms,
                v.envelope.timestamp_ms,
                now_ms,
            )
            .await
        {
            Ok(true) => Ok(v),
            Ok(false) => Err(Refusal::new(
                Reason::MessageReplayed,
                "this message was accepted before (same sender and nonce)",
            )),
            Err(e) => Err(Refusal::new(
                Reason::ReplayCacheUnavailable,
                format!("cannot check for replays: {e}; retry later"),
            )),
        }
    }

    /// Every check but the replay cache; returns how long the nonce must
    /// be remembered.
    pub fn check(
        &self,
        held: &Held,
        wire: &pb::Envelope,
        now_ms: i64,
    ) -> Result<(Verified, u64), Refusal> {
        let env = Envelope::try_from(wire)
            .map_err(|e| Refusal::new(Reason::MessageMalformed, e.to_string()))?;
        if env.recipient != self.me_spiffe {
            return Err(Refusal::new(
                Reason::MessageWrongRecipient,
                format!(
                    "the message is for {}, not {}",
                    env.recipient, self.me_spiffe
                ),
            ));
        }
        let sender = match env.sender.principal() {
            Ok(Principal::Agent(a)) if env.sender.trust_domain() == &self.td => a,
            _ => {
                return Err(Refusal::new(
                    Reason::MessagePairNotAllowed,
                    format!("{} is not an agent of trust domain {}", env.sender, self.td),
                ));
            }
        };
        if let Some(b) = held.blocked_agents.get(sender.as_str(), now_ms / 1000) {
            let what = if b.revoked { "revoked" } else { "suspended" };
            return Err(Refusal::new(
                Reason::MessageSenderBlocked,
                format!("the sender {sender} is {what}"),
            ));
        }
        let keys = &held.pair_keys;
        no_keys_yet(keys)?;
        let s = &keys.settings;
        let max = usize::try_from(s.max_payload_bytes).unwrap_or(usize::MAX);
        if env.payload.len() > max {
            return Err(too_large(env.payload.len(), max));
        }
        let pair = keys.of(sender.as_str(), self.me.as_str()).ok_or_else(|| {
            Refusal::new(
                Reason::MessagePairNotAllowed,
                format!("policy does not allow {sender} to message {}", self.me),
            )
        })?;
        let key: &HeldPairKey = pair.iter().find(|k| k.epoch == env.key_id).ok_or_else(|| {
            Refusal::new(
                Reason::MessageUnknownKey,
                format!("no key of this pair has id {}", env.key_id),
            )
        })?;
        if !env.mac_verifies(&key.key) {
            return Err(Refusal::new(
                Reason::MessageBadMac,
                "the MAC does not verify: the message was forged or changed",
            ));
        }
        let grace = i64::try_from(s.grace_ms).unwrap_or(i64::MAX);
        if now_ms >= key.not_after_ms.saturating_add(grace) {
            return Err(Refusal::new(
                Reason::MessageKeyExpired,
                format!(
                    "key {} expired {} ms ago (grace {} ms)",
                    key.epoch,
                    now_ms - key.not_after_ms,
                    s.grace_ms
                ),
            ));
        }
        let (max_age, skew) = (
            i64::try_from(s.max_age_ms).unwrap_or(i64::MAX),
            i64::try_from(s.max_skew_ms).unwrap_or(i64::MAX),
        );
        let age = now_ms.saturating_sub(env.timestamp_ms);
        if age >= max_age {
            return Err(Refusal::new(
                Reason::MessageStale,
                format!("the message is {age} ms old; at most {max_age} ms is accepted"),
            ));
        }
        if -age > skew {
            return Err(Refusal::new(
                Reason::MessageFromFuture,
                format!(
                    "the message is dated {} ms ahead; at most {skew} ms is tolerated",
                    -age
                ),
            ));
        }
        if env.timestamp_ms < keys.accept_from_ms {
            return Err(Refusal::new(
                Reason::MessageStale,
                "the message was signed before this sidecar's replay memory began (a restart, or a longer max_age); sign it again",
            ));
        }
        // Remembered until it could no longer pass the freshness check:
        // `age < max_age` fails from `timestamp + max_age` on.
        let ttl_ms = u64::try_from(
            env.timestamp_ms
                .saturating_add(max_age)
                .saturating_add(skew)
                .saturating_sub(now_ms),
        )
        .unwrap_or(1)
        .max(1);
        Ok((
            Verified {
                envelope: env,
                sender,
            },
            ttl_ms,
        ))
    }
}

fn no_keys_yet(keys: &crate::state::held::PairKeys) -> Result<(), Refusal> {
    if keys.settings.rotation_ms == 0 {
        return Err(Refusal::new(
            Reason::MessageKeysUnavailable,
            "this sidecar holds no message keys (no policy from the control plane yet)",
        ));
    }
    Ok(())
}

fn too_large(got: usize, max: usize) -> Refusal {
    Refusal::new(
        Reason::MessageTooLarge,
        format!("the payload is {got} bytes; the policy allows {max}"),
    )
}

#[cfg(test)]
mod tests;
