//! What a sidecar holds from the control plane, as one immutable snapshot:
//! the agent's standing, its revoked sessions, the signing keys, the policy,
//! and the mesh-wide blocked agents. A push builds the next snapshot from
//! the current one (parts it does not carry are kept) or is refused whole;
//! readers switch from one snapshot to the next in one step.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use warden_shared::agent::AgentId;
use warden_shared::policy::{Policy, Risk};
use warden_shared::proto::v1 as pb;
use warden_shared::token::{JwkSet, Verifier};

use crate::policy::catalog::Catalog;

/// Most revoked sessions one push may carry.
pub const MAX_REVOKED: usize = 100_000;
/// Most blocked agents held.
pub const MAX_BLOCKED: usize = 100_000;
/// Most pair keys one push may carry (peers in both directions, three
/// epochs each).
pub const MAX_PAIR_KEYS: usize = 6 * 2048;

/// The policy a sidecar holds: the validated document of one version, and
/// the tools this agent may call under it.
#[derive(Debug)]
pub struct HeldPolicy {
    /// Policy version.
    pub version: u64,
    /// The validated, compiled policy.
    pub policy: Policy,
    /// Tools this agent may call, with their effective risk.
    pub tools: BTreeMap<String, Risk>,
    /// The catalog compiled for enforcement.
    pub catalog: Catalog,
    /// The rate limits and quotas.
    pub limits: crate::policy::limits::LimitSet,
}

/// Token-signing keys; `generation` changes with every new key set (the
/// signature cache is valid for one generation).
#[derive(Debug, Default)]
pub struct Keys {
    /// Increases with every key set installed.
    pub generation: u64,
    /// Verifies signatures.
    pub verifier: Verifier,
}

/// A suspended or revoked agent of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockedAgent {
    /// Revoked (else suspended).
    pub revoked: bool,
    /// When the entry drops out (unix seconds); `None` while suspended.
    pub until: Option<i64>,
}

/// The mesh-wide blocked list.
#[derive(Debug, Default)]
pub struct BlockedAgents {
    /// The control plane's sequence number of this list (0: none held).
    pub seq: u64,
    /// The epoch of that sequence number.
    pub epoch: u64,
    /// By agent id.
    pub agents: HashMap<String, BlockedAgent>,
}

impl BlockedAgents {
    /// Whether `agent` is blocked at `now`.
    pub fn get(&self, agent: &str, now: i64) -> Option<BlockedAgent> {
        self.agents
            .get(agent)
            .filter(|b| b.until.is_none_or(|u| u > now))
            .copied()
    }
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = |p: Option<u64>| p.map(|d| format!("{d:016x}"));
        f.debug_struct("Raw")
            .field("standing", &d(self.standing.as_ref().map(|p| p.digest)))
            .field("sessions", &d(self.sessions.as_ref().map(|p| p.digest)))
            .field("keys", &d(self.keys.as_ref().map(|p| p.digest)))
            .field("policy", &d(self.policy.as_ref().map(|p| p.digest)))
            .field("pairs", &d(self.pairs.as_ref().map(|p| p.digest)))
            .finish()
    }
}

/// One pairwise message key of one epoch.
#[derive(Debug, Clone)]
pub struct HeldPairKey {
    /// The epoch (an envelope's `key_id`).
    pub epoch: u64,
    /// The key (its `Debug` is redacted).
    pub key: warden_shared::a2a::PairKey,
    /// The epoch's span, unix ms.
    pub not_before_ms: i64,
    /// End of the span (it verifies until this plus the grace period).
    pub not_after_ms: i64,
}

/// This agent's pairwise message keys and the settings they follow.
#[derive(Debug, Default)]
pub struct PairKeys {
    /// From the policy's messaging section.
    pub settings: pb::MessagingSettings,
    /// By sender, then recipient (agent ids), oldest epoch first.
    pub pairs: HashMap<String, HashMap<String, Vec<HeldPairKey>>>,
    /// Messages signed before this (unix ms) are refused as stale: this
    /// sidecar's replay memory may not cover them. Set when keys are first
    /// held (so at every start, as the in-process cache starts empty) and
    /// whenever the acceptance window (`max_age + max_skew`) grows (nonces
    /// recorded under the shorter window may already be forgotten).
    pub accept_from_ms: i64,
}

impl PairKeys {
    /// The acceptance window, ms.
    pub fn window_ms(&self) -> u64 {
        self.settings
            .max_age_ms
            .saturating_add(self.settings.max_skew_ms)
    }

    /// The keys of messages from `sender` to `recipient`.
    pub fn of(&self, sender: &str, recipient: &str) -> Option<&[HeldPairKey]> {
        self.pairs.get(sender)?.get(recipient).map(Vec::as_slice)
    }
}

fn pair_keys(p: &pb::PairKeysPart, held: &PairKeys, now_ms: i64) -> Result<PairKeys, String> {
    if p.keys.len() > MAX_PAIR_KEYS {
        return Err(format!("more than {MAX_PAIR_KEYS} pair keys"));
    }
    let settings = p.settings.ok_or("pair keys without messaging settings")?;
    if settings.rotation_ms == 0 || settings.max_age_ms == 0 || settings.max_payload_bytes == 0 {
        return Err("messaging settings out of range".into());
    }
    let mut pairs: HashMap<String, HashMap<String, Vec<HeldPairKey>>> = HashMap::new();
    for k in &p.keys {
        for id in [&k.sender, &k.recipient] {
            AgentId::new(id).map_err(|e| format!("pair key: {e}"))?;
        }
        let key = warden_shared::a2a::PairKey::from_slice(&k.key)
            .ok_or_else(|| format!("pair key {}->{}: not 32 bytes", k.sender, k.recipient))?;
        if k.not_after_ms <= k.not_before_ms {
            return Err(format!(
                "pair key {}->{}: empty span",
                k.sender, k.recipient
            ));
        }
        pairs
            .entry(k.sender.clone())
            .or_default()
            .entry(k.recipient.clone())
            .or_default()
            .push(HeldPairKey {
                epoch: k.epoch,
                key,
                not_before_ms: k.not_before_ms,
                not_after_ms: k.not_after_ms,
            });
    }
    for v in pairs.values_mut().flat_map(HashMap::values_mut) {
        v.sort_by_key(|k| k.epoch);
    }
    let mut next = PairKeys {
        settings,
        pairs,
        accept_from_ms: held.accept_from_ms,
    };
    if next.window_ms() > held.window_ms() {
        next.accept_from_ms = now_ms;
    }
    Ok(next)
}

/// Refuses pair keys of pairs `me` is not part of: a sidecar never holds
/// a key it has no business with.
pub fn check_pair_membership(keys: &PairKeys, me: &str) -> Result<(), String> {
    let stranger = keys
        .pairs
        .iter()
        .find_map(|(s, to)| to.keys().find(|r| s != me && *r != me).map(|r| (s, r)));
    match stranger {
        Some((s, r)) => Err(format!(
            "pair key for {s}->{r}, a pair this agent ({me}) is not part of"
        )),
        None => Ok(()),
    }
}

/// The parts as received, kept to report their digests and to persist.
/// `Debug` prints digests only: the pair keys part holds key bytes.
#[derive(Default, Clone)]
pub struct Raw {
    /// Standing.
    pub standing: Option<Arc<pb::StandingPart>>,
    /// Revoked sessions.
    pub sessions: Option<Arc<pb::RevokedSessionsPart>>,
    /// Signing keys.
    pub keys: Option<Arc<pb::KeysPart>>,
    /// Policy.
    pub policy: Option<Arc<pb::PolicyPart>>,
    /// Pair keys (persisted with the rest: the snapshot file is 0600).
    pub pairs: Option<Arc<pb::PairKeysPart>>,
}

/// The agent as the rules see it (from its pushed standing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// The standing part's digest: the rules' entities are rebuilt when it
    /// changes.
    pub digest: u64,
    /// The agent's type.
    pub agent_type: String,
    /// Its owner.
    pub owner: String,
    /// Its environment.
    pub environment: String,
}

impl From<&pb::StandingPart> for Standing {
    fn from(p: &pb::StandingPart) -> Self {
        Self {
            digest: p.digest,
            agent_type: p.agent_type.clone(),
            owner: p.owner.clone(),
            environment: p.environment.clone(),
        }
    }
}

/// Everything pushed, as of one version.
#[derive(Debug, Default, Clone)]
pub struct Held {
    /// The version of the last push applied (0: nothing held yet; the
    /// sidecar serves no call).
    pub version: u64,
    /// `Some((revoked, reason))` while the agent is suspended or revoked.
    pub blocked: Option<(bool, String)>,
    /// When the agent's identity expires (unix seconds): from then on it
    /// is refused here, whatever else is held.
    pub expires_at: Option<i64>,
    /// The agent as the rules see it, once its standing is held.
    pub standing: Option<Arc<Standing>>,
    /// Revoked session ids and when their tokens expire.
    pub revoked_sessions: Arc<HashMap<String, i64>>,
    /// Token-signing keys.
    pub keys: Arc<Keys>,
    /// The policy in force, if one has been applied.
    pub policy: Option<Arc<HeldPolicy>>,
    /// Blocked agents of the whole mesh.
    pub blocked_agents: Arc<BlockedAgents>,
    /// Pairwise message keys.
    pub pair_keys: Arc<PairKeys>,
    /// The parts as received.
    pub raw: Raw,
}

/// Why a push was refused (nothing of it is applied). The part at fault,
/// which the Nack names, is the variant; the text is the Nack's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The agent's standing.
    #[error("{0}")]
    Standing(String),
    /// The revoked sessions.
    #[error("{0}")]
    RevokedSessions(String),
    /// The token-signing keys.
    #[error("{0}")]
    Keys(String),
    /// The policy.
    #[error("{0}")]
    Policy(String),
    /// The mesh's blocked agents.
    #[error("{0}")]
    BlockedAgents(String),
    /// The pair keys.
    #[error("{0}")]
    PairKeys(String),
    /// The decisions on approval requests.
    #[error("{0}")]
    Approvals(String),
    /// Applying it failed in this sidecar (a panic), not in the push.
    #[error("applying the push failed in the sidecar; see its log")]
    Internal,
}

impl PushError {
    /// The part the Nack names.
    pub fn part(&self) -> pb::MeshPart {
        use pb::MeshPart as P;
        match self {
            Self::Standing(_) => P::Standing,
            Self::RevokedSessions(_) => P::RevokedSessions,
            Self::Keys(_) => P::Keys,
            Self::Policy(_) => P::Policy,
            Self::BlockedAgents(_) => P::BlockedAgents,
            Self::PairKeys(_) => P::PairKeys,
            Self::Approvals(_) => P::Approvals,
            Self::Internal => P::Unspecified,
        }
    }
}

fn risk(s: &str) -> Option<Risk> {
    match s {
        "low" => Some(Risk::Low),
        "medium" => Some(Risk::Medium),
        "high" => Some(Risk::High),
        "critical" => Some(Risk::Critical),
        _ => None,
    }
}

fn standing(p: &pb::StandingPart) -> Result<Option<(bool, String)>, String> {
    let reason = p.reason.clone();
    match pb::AgentStatus::try_from(p.status) {
        Ok(pb::AgentStatus::Active) => Ok(None),
        Ok(pb::AgentStatus::Suspended) => Ok(Some((false, reason))),
        Ok(pb::AgentStatus::Revoked) => Ok(Some((true, reason))),
        _ => Err(format!("unknown agent status {}", p.status)),
    }
}

fn sessions(p: &pb::RevokedSessionsPart, now: i64) -> Result<HashMap<String, i64>, String> {
    if p.sessions.len() > MAX_REVOKED {
        return Err(format!("more than {MAX_REVOKED} revoked sessions"));
    }
    let mut out = HashMap::with_capacity(p.sessions.len());
    for r in &p.sessions {
        let exp = r
            .expires_at
            .as_ref()
            .map(|t| t.seconds)
            .ok_or("revoked session without expiry")?;
        if r.session_id.is_empty() {
            return Err("revoked session without id".into());
        }
        if exp > now {
            out.insert(r.session_id.clone(), exp);
        }
    }
    Ok(out)
}

/// Parses a JWK Set into a verifier.
pub fn keys(jwks_json: &str, generation: u64) -> Result<Keys, String> {
    let set: JwkSet = serde_json::from_str(jwks_json).map_err(|e| format!("invalid JWKS: {e}"))?;
    let verifier = Verifier::new(&set).map_err(|e| format!("invalid JWKS: {e}"))?;
    Ok(Keys {
        generation,
        verifier,
    })
}

/// The pushed policy, validated here again: a document this sidecar cannot
/// compile is refused. An unchanged version is not compiled twice.
fn policy(p: &pb::PolicyPart, held: Option<&Arc<HeldPolicy>>) -> Result<Arc<HeldPolicy>, String> {
    let v = p.version;
    let fail = |m: String| format!("policy v{v}: {m}");
    let mut tools = BTreeMap::new();
    for t in &p.tools {
        let r = risk(&t.risk)
            .ok_or_else(|| fail(format!("tool {:?} has unknown risk {:?}", t.name, t.risk)))?;
        tools.insert(t.name.clone(), r);
    }
    if let Some(h) = held.filter(|h| h.version == v && h.tools == tools) {
        return Ok(Arc::clone(h));
    }
    let policy = Policy::parse(&p.document).map_err(|e| fail(format!("{e} [{}]", e.kind())))?;
    if let Some(name) = tools
        .keys()
        .find(|n| !policy.document.tools.iter().any(|d| &d.name == *n))
    {
        return Err(fail(format!("tool {name:?} is not in the document")));
    }
    let catalog = Catalog::compile(&policy, &tools).map_err(fail)?;
    let limits = crate::policy::limits::LimitSet::compile(&policy.document).map_err(fail)?;
    Ok(Arc::new(HeldPolicy {
        version: v,
        policy,
        tools,
        catalog,
        limits,
    }))
}

fn blocked_agents(
    p: &pb::BlockedAgentsPart,
    held: &BlockedAgents,
    now: i64,
) -> Result<BlockedAgents, String> {
    let mut agents = if p.complete {
        HashMap::new()
    } else if p.from_seq == held.seq && p.epoch == held.epoch {
        held.agents.clone()
    } else {
        return Err(format!(
            "blocked-agents changes from {} (epoch {:x}) do not apply to the held list {} (epoch {:x})",
            p.from_seq, p.epoch, held.seq, held.epoch
        ));
    };
    for id in &p.cleared {
        agents.remove(id);
    }
    for b in &p.blocked {
        AgentId::new(&b.agent_id).map_err(|e| format!("blocked agent: {e}"))?;
        let revoked = match pb::AgentStatus::try_from(b.status) {
            Ok(pb::AgentStatus::Suspended) => false,
            Ok(pb::AgentStatus::Revoked) => true,
            _ => {
                return Err(format!(
                    "blocked agent {} has status {}",
                    b.agent_id, b.status
                ));
            }
        };
        let until = b.until.as_ref().map(|t| t.seconds);
        agents.insert(b.agent_id.clone(), BlockedAgent { revoked, until });
    }
    agents.retain(|_, b| b.until.is_none_or(|u| u > now));
    if agents.len() > MAX_BLOCKED {
        return Err(format!("more than {MAX_BLOCKED} blocked agents"));
    }
    Ok(BlockedAgents {
        seq: p.seq,
        epoch: p.epoch,
        agents,
    })
}

impl Held {
    /// The snapshot after `push` at `now` (unix seconds), or why it is
    /// refused (nothing applied).
    pub fn apply(&self, push: &pb::StreamResponse, now: i64) -> Result<Self, PushError> {
        self.apply_at(push, now.saturating_mul(1000))
    }

    /// [`Held::apply`] at `now_ms` (unix milliseconds): when pair keys are
    /// first held, messages signed before that instant are refused.
    pub fn apply_at(&self, push: &pb::StreamResponse, now_ms: i64) -> Result<Self, PushError> {
        let now = now_ms.div_euclid(1000);
        let mut next = self.clone();
        if let Some(p) = &push.standing {
            next.blocked = standing(p).map_err(PushError::Standing)?;
            next.expires_at = p.expires_at.as_ref().map(|t| t.seconds);
            next.standing = Some(Arc::new(Standing::from(p)));
            next.raw.standing = Some(Arc::new(p.clone()));
        }
        if let Some(p) = &push.revoked_sessions {
            next.revoked_sessions = Arc::new(sessions(p, now).map_err(PushError::RevokedSessions)?);
            next.raw.sessions = Some(Arc::new(p.clone()));
        }
        if let Some(p) = &push.keys {
            next.keys =
                Arc::new(keys(&p.jwks_json, self.keys.generation + 1).map_err(PushError::Keys)?);
            next.raw.keys = Some(Arc::new(p.clone()));
        }
        if let Some(p) = &push.policy {
            next.policy = Some(policy(p, self.policy.as_ref()).map_err(PushError::Policy)?);
            next.raw.policy = Some(Arc::new(p.clone()));
        }
        if let Some(p) = &push.blocked_agents {
            next.blocked_agents = Arc::new(
                blocked_agents(p, &self.blocked_agents, now).map_err(PushError::BlockedAgents)?,
            );
        }
        if let Some(p) = &push.pair_keys {
            next.pair_keys =
                Arc::new(pair_keys(p, &self.pair_keys, now_ms).map_err(PushError::PairKeys)?);
            next.raw.pairs = Some(Arc::new(p.clone()));
        }
        next.version = push.version;
        Ok(next)
    }

    /// Whether the agent's identity has expired at `now` (unix seconds).
    pub fn expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }

    /// The digests of the parts held, for Hello and Nack.
    pub fn digests(&self) -> pb::HeldParts {
        pb::HeldParts {
            standing: self.raw.standing.as_ref().map_or(0, |p| p.digest),
            revoked_sessions: self.raw.sessions.as_ref().map_or(0, |p| p.digest),
            keys: self.raw.keys.as_ref().map_or(0, |p| p.digest),
            policy: self.raw.policy.as_ref().map_or(0, |p| p.digest),
            blocked_agents_seq: self.blocked_agents.seq,
            blocked_agents_epoch: self.blocked_agents.epoch,
            pair_keys: self.raw.pairs.as_ref().map_or(0, |p| p.digest),
            // Held apart, in [`super::approvals::Decisions`].
            approvals_seq: 0,
        }
    }

    /// Everything held, as one complete push (what is persisted).
    pub fn to_push(&self) -> pb::StreamResponse {
        let mut ids: Vec<&String> = self.blocked_agents.agents.keys().collect();
        ids.sort();
        pb::StreamResponse {
            version: self.version,
            nonce: String::new(),
            standing: self.raw.standing.as_deref().cloned(),
            revoked_sessions: self.raw.sessions.as_deref().cloned(),
            keys: self.raw.keys.as_deref().cloned(),
            policy: self.raw.policy.as_deref().cloned(),
            pair_keys: self.raw.pairs.as_deref().cloned(),
            // Not persisted: a restarted sidecar has no call waiting.
            approvals: None,
            blocked_agents: (self.blocked_agents.seq != 0).then(|| pb::BlockedAgentsPart {
                complete: true,
                from_seq: 0,
                seq: self.blocked_agents.seq,
                epoch: self.blocked_agents.epoch,
                blocked: ids
                    .into_iter()
                    .map(|id| {
                        let b = self.blocked_agents.agents[id];
                        pb::BlockedAgent {
                            agent_id: id.clone(),
                            status: if b.revoked {
                                pb::AgentStatus::Revoked
                            } else {
                                pb::AgentStatus::Suspended
                            }
                            .into(),
                            until: b.until.map(|s| prost_types::Timestamp {
                                seconds: s,
                                nanos: 0,
                            }),
                        }
                    })
                    .collect(),
                cleared: Vec::new(),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
