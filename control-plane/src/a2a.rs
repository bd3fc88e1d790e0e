//! Pairwise message keys: derived from the control plane's messaging secret
//! for each (sender, recipient, epoch) that the policy's `messaging` rules
//! allow, and pushed to the two parties' sidecars only.
//!
//! The directory of agents (id and type) that rules are matched against is
//! read from the store once per change and shared by every stream; blocked
//! agents are left out at push time, so revoking an agent removes its pair
//! keys from every sidecar through the mesh stream.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::RngCore;
use warden_shared::a2a::{KEY_BYTES, MasterKey};
use warden_shared::agent::AgentId;
use warden_shared::policy::messaging::{Selector, Settings};
use warden_shared::proto::v1 as pb;
use warden_shared::spiffe::TrustDomain;

use crate::digest::digest;
use crate::store::{self, Store};

/// Most peers one agent holds keys for, per direction; beyond this the
/// lowest agent ids win and a warning is logged.
pub const MAX_PEERS: usize = 2048;
/// The secret's file in the data directory.
pub const KEY_FILE: &str = "messaging.key";

/// Reads the messaging secret, creating it (0600) on first use.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<MasterKey> {
    let path = data_dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(b) => MasterKey::new(&b).ok_or_else(|| {
            anyhow::anyhow!(
                "{} holds {} bytes; a messaging secret has at least {KEY_BYTES}",
                path.display(),
                b.len()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; KEY_BYTES];
            rand::rng().fill_bytes(&mut secret);
            crate::identity::ca::write_private(&path, &secret)?;
            tracing::info!(path = %path.display(), "created the messaging secret");
            MasterKey::new(&secret).ok_or_else(|| anyhow::anyhow!("messaging secret"))
        }
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

/// Active agents by id, and by type.
#[derive(Debug, Default)]
pub struct Directory {
    types: HashMap<String, String>,
    /// Identity expiry, unix seconds (agents without one are absent).
    expires: HashMap<String, i64>,
    by_type: HashMap<String, Vec<String>>,
    all: Vec<String>,
}

impl Directory {
    fn build(agents: Vec<store::Agent>) -> Self {
        let mut d = Self::default();
        for a in agents {
            if a.status != warden_shared::agent::AgentStatus::Active {
                continue;
            }
            let id = a.id.to_string();
            if let Some(e) = a.expires_at {
                d.expires.insert(id.clone(), e);
            }
            d.by_type
                .entry(a.agent_type.clone())
                .or_default()
                .push(id.clone());
            d.all.push(id.clone());
            d.types.insert(id, a.agent_type);
        }
        d.all.sort();
        d
    }

    fn expired(&self, id: &str, now_ms: i64) -> bool {
        self.expires
            .get(id)
            .is_some_and(|e| e.saturating_mul(1000) <= now_ms)
    }

    fn members<'a>(&'a self, s: &'a Selector) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        match s {
            Selector::Agent(id) => {
                Box::new(self.types.get_key_value(id).map(|(k, _)| k).into_iter())
            }
            Selector::Type(t) => Box::new(self.by_type.get(t).into_iter().flatten()),
            Selector::Any => Box::new(self.all.iter()),
        }
    }

    /// The agents `me` may message, and those that may message `me`.
    fn peers<'a>(
        &'a self,
        rules: &'a Settings,
        me: &str,
    ) -> (BTreeSet<&'a str>, BTreeSet<&'a str>) {
        let (mut to, mut from) = (BTreeSet::new(), BTreeSet::new());
        let Some(my_type) = self.types.get(me) else {
            return (to, from);
        };
        for (f, t) in &rules.rules {
            if f.matches(me, my_type) {
                to.extend(self.members(t).map(String::as_str));
            }
            if t.matches(me, my_type) {
                from.extend(self.members(f).map(String::as_str));
            }
        }
        to.remove(me);
        from.remove(me);
        (to, from)
    }
}

/// The messaging secret and the shared directory.
#[derive(Debug)]
pub struct Messaging {
    master: MasterKey,
    /// Bumped when agents are registered.
    generation: AtomicU64,
    directory: tokio::sync::Mutex<(u64, Arc<Directory>)>,
}

impl Messaging {
    /// Keys derived from `master`.
    pub fn new(master: MasterKey) -> Self {
        Self {
            master,
            generation: AtomicU64::new(1),
            directory: tokio::sync::Mutex::new((0, Arc::default())),
        }
    }

    /// An agent was registered or its status changed: the directory is
    /// read again.
    pub fn agents_changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Changes with every registration and status change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The directory, read from the store if agents changed since.
    pub async fn directory(&self, store: &dyn Store) -> store::Result<Arc<Directory>> {
        let want = self.generation.load(Ordering::Acquire);
        let mut held = self.directory.lock().await;
        if held.0 != want {
            let agents = store.list_agents().await?;
            *held = (want, Arc::new(Directory::build(agents)));
        }
        Ok(Arc::clone(&held.1))
    }

    /// `me`'s pair keys at `now_ms`: for each peer and direction the
    /// policy allows, the keys of the previous, current and next epochs
    /// (the next one is held ahead, so a push that arrives late never
    /// leaves a sidecar without the key of the epoch that has begun).
    /// Agents `blocked` says are suspended or revoked get and give none.
    pub fn part(
        &self,
        td: &TrustDomain,
        settings: &Settings,
        dir: &Directory,
        me: &AgentId,
        now_ms: i64,
        blocked: impl Fn(&str) -> bool,
    ) -> pb::PairKeysPart {
        let rot = settings.rotation_ms.max(1);
        let blocked = |a: &str| blocked(a) || dir.expired(a, now_ms);
        let mut keys = Vec::new();
        if !blocked(me.as_str()) {
            let (to, from) = dir.peers(settings, me.as_str());
            let mut pairs = Vec::new();
            for (dir_name, set, outgoing) in [("to", to, true), ("from", from, false)] {
                let live: Vec<&str> = set.into_iter().filter(|p| !blocked(p)).collect();
                if live.len() > MAX_PEERS {
                    tracing::warn!(agent = %me, direction = dir_name, peers = live.len(), max = MAX_PEERS, "too many messaging peers; keeping the first by id");
                }
                for p in live.into_iter().take(MAX_PEERS) {
                    let Ok(p) = AgentId::new(p) else { continue };
                    pairs.push(if outgoing {
                        (me.clone(), p)
                    } else {
                        (p, me.clone())
                    });
                }
            }
            let now = warden_shared::a2a::epoch_of(now_ms, rot);
            for (s, r) in pairs {
                let (sid, rid) = (td.agent(&s), td.agent(&r));
                for epoch in now.saturating_sub(1)..=now + 1 {
                    let start = i64::try_from(epoch.saturating_mul(rot)).unwrap_or(i64::MAX);
                    keys.push(pb::PairKey {
                        sender: s.to_string(),
                        recipient: r.to_string(),
                        epoch,
                        key: self
                            .master
                            .pair_key(&sid, &rid, rot, epoch)
                            .as_bytes()
                            .to_vec(),
                        not_before_ms: start,
                        not_after_ms: start.saturating_add(i64::try_from(rot).unwrap_or(i64::MAX)),
                    });
                }
            }
        }
        let s = pb::MessagingSettings {
            rotation_ms: rot,
            grace_ms: settings.grace_ms,
            max_age_ms: settings.max_age_ms,
            max_skew_ms: settings.max_skew_ms,
            max_payload_bytes: settings.max_payload_bytes,
        };
        let mut canon = Vec::with_capacity(40 + keys.len() * 96);
        for n in [
            s.rotation_ms,
            s.grace_ms,
            s.max_age_ms,
            s.max_skew_ms,
            u64::from(s.max_payload_bytes),
        ] {
            canon.extend_from_slice(&n.to_be_bytes());
        }
        for k in &keys {
            canon.extend_from_slice(k.sender.as_bytes());
            canon.push(0);
            canon.extend_from_slice(k.recipient.as_bytes());
            canon.push(0);
            canon.extend_from_slice(&k.epoch.to_be_bytes());
            canon.extend_from_slice(&k.key);
        }
        pb::PairKeysPart {
            digest: digest(&canon),
            keys,
            settings: Some(s),
        }
    }
}

/// When the pair keys next change by themselves: the start of the next
/// epoch, plus up to a tenth of an epoch (at most a minute) of jitter so
/// that thousands of streams do not push at the same instant (the next
/// epoch's key is already held, so nothing waits on this push).
pub fn next_rotation(settings: &Settings, now_ms: i64) -> std::time::Duration {
    let rot = settings.rotation_ms.max(1);
    let now = u64::try_from(now_ms).unwrap_or(0);
    let to_boundary = rot - now % rot;
    let jitter = rand::random::<u64>() % (rot / 10).clamp(1, 60_000);
    std::time::Duration::from_millis(to_boundary + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::agent;

    fn dir(agents: &[(&str, &str)]) -> Directory {
        Directory::build(
            agents
                .iter()
                .map(|(id, t)| store::Agent {
                    agent_type: (*t).to_owned(),
                    ..agent(id, 1)
                })
                .collect(),
        )
    }

    fn settings(yaml: &str) -> Settings {
        serde_norway::from_str::<warden_shared::policy::messaging::Messaging>(yaml)
            .unwrap()
            .compile()
            .unwrap()
    }

    #[test]
    fn keys_go_only_to_allowed_pairs_and_both_parties_agree() {
        let td = TrustDomain::new("warden.local").unwrap();
        let m = Messaging::new(MasterKey::new(&[9; 32]).unwrap());
        let d = dir(&[("coder", "coder"), ("rev", "reviewer"), ("ops", "deployer")]);
        let s = settings("allow: [{from: 'type:coder', to: 'type:reviewer'}]");
        let id = |s: &str| AgentId::new(s).unwrap();
        let now = 10 * 3_600_000 + 5;
        let coder = m.part(&td, &s, &d, &id("coder"), now, |_| false);
        let rev = m.part(&td, &s, &d, &id("rev"), now, |_| false);
        let ops = m.part(&td, &s, &d, &id("ops"), now, |_| false);
        // Epochs 9, 10 and 11 of the one pair, on both sides, identical.
        assert_eq!(coder.keys.len(), 3);
        assert_eq!(coder.keys, rev.keys);
        assert!(
            coder
                .keys
                .iter()
                .all(|k| k.sender == "coder" && k.recipient == "rev")
        );
        assert_eq!(
            coder.keys.iter().map(|k| k.epoch).collect::<Vec<_>>(),
            [9, 10, 11]
        );
        assert_eq!(coder.keys[1].not_before_ms, 10 * 3_600_000);
        // Not a party: nothing.
        assert!(ops.keys.is_empty());
        // Blocked: the pair disappears from both sides, and the digest moves.
        let gone = m.part(&td, &s, &d, &id("rev"), now, |a| a == "coder");
        assert!(gone.keys.is_empty());
        assert_ne!(gone.digest, rev.digest);
        assert!(
            m.part(&td, &s, &d, &id("coder"), now, |a| a == "coder")
                .keys
                .is_empty()
        );
        // The next epoch rotates the set.
        let later = m.part(&td, &s, &d, &id("coder"), now + 3_600_000, |_| false);
        assert_eq!(later.keys[0], coder.keys[1]);
        assert_ne!(later.digest, coder.digest);
        // Another master secret, other keys.
        let other = Messaging::new(MasterKey::new(&[8; 32]).unwrap());
        assert_ne!(
            other.part(&td, &s, &d, &id("coder"), now, |_| false).keys[1].key,
            coder.keys[1].key
        );
    }

    #[test]
    fn rotation_wakes_after_the_boundary() {
        let s = settings("rotation: 1h");
        let w = next_rotation(&s, 3_600_000 * 5 + 1000);
        assert!(w >= std::time::Duration::from_millis(3_600_000 - 1000));
        assert!(w <= std::time::Duration::from_millis(3_600_000 - 1000 + 60_000));
    }

    #[test]
    fn the_secret_is_created_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_create(dir.path()).unwrap();
        let (x, y) = (AgentId::new("x").unwrap(), AgentId::new("y").unwrap());
        let td = TrustDomain::new("t.local").unwrap();
        assert_eq!(
            a.pair_key(&td.agent(&x), &td.agent(&y), 1, 1),
            b.pair_key(&td.agent(&x), &td.agent(&y), 1, 1)
        );
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        assert!(
            load_or_create(dir.path())
                .unwrap_err()
                .to_string()
                .contains("at least")
        );
    }
}
