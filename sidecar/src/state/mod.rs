//! What the sidecar was told by the control plane, as one immutable
//! snapshot ([`held::Held`]), and its one owner ([`State`]): the mesh task
//! writes it (and a JWKS fetch for an unknown key adds keys), every call
//! reads a snapshot, cheaply, and goes on with that one.

pub mod approvals;
pub mod held;

use std::sync::{Arc, Mutex, RwLock};

use warden_shared::token::{self, JwkSet};

use held::Held;

/// The mesh link as seen by the sidecar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Link {
    /// Whether the stream is up.
    pub connected: bool,
    /// When it last went up or down (unix seconds).
    pub since: i64,
}

/// Why the held state cannot serve calls now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    /// Nothing pushed yet (and no persisted snapshot).
    #[error("the sidecar holds no policy from the control plane yet")]
    NoPolicy,
    /// Out of contact for longer than `max_policy_age` (seconds so far).
    #[error(
        "the held policy is {0} s old, beyond max_policy_age; the control plane is unreachable"
    )]
    Stale(i64),
}

/// The owner of what is held: one snapshot, swapped whole.
#[derive(Debug)]
pub struct State {
    held: RwLock<Arc<Held>>,
    /// Serialises writers of `held`, which build the next snapshot without
    /// holding `held`'s lock (compiling a policy takes a while).
    writer: Mutex<()>,
    link: Mutex<Link>,
    max_policy_age: Option<i64>,
    /// The decisions on this agent's approval requests.
    pub approvals: approvals::Decisions,
}

impl State {
    /// Nothing held yet; with `max_policy_age` (seconds), calls are refused
    /// once out of contact with the control plane for longer (fail closed).
    pub fn new(max_policy_age: Option<u64>) -> Self {
        Self {
            held: RwLock::new(Arc::new(Held::default())),
            writer: Mutex::new(()),
            link: Mutex::new(Link {
                connected: false,
                since: crate::now_unix(),
            }),
            max_policy_age: max_policy_age.map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
            approvals: approvals::Decisions::default(),
        }
    }

    /// Records the stream going up or down.
    pub fn set_connected(&self, connected: bool, now: i64) {
        let mut l = self.link.lock().unwrap_or_else(|p| p.into_inner());
        if l.connected != connected {
            *l = Link {
                connected,
                since: now,
            };
        }
    }

    /// The link state.
    pub fn link(&self) -> Link {
        *self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether calls may be served on the held policy: one is held, and it
    /// is not older than `max_policy_age` (when set).
    pub fn check_policy(&self, now: i64) -> Result<(), Unusable> {
        self.check_policy_of(&self.held(), now)
    }

    /// [`State::check_policy`] for `held`, a snapshot already taken (the one
    /// a call goes on with).
    pub fn check_policy_of(&self, held: &Held, now: i64) -> Result<(), Unusable> {
        if held.version == 0 {
            return Err(Unusable::NoPolicy);
        }
        if let Some(max) = self.max_policy_age {
            let age = self.policy_age(now);
            if age > max {
                return Err(Unusable::Stale(age));
            }
        }
        Ok(())
    }

    /// How stale the held policy may be: 0 while connected, else the time
    /// since the stream went down (or since start).
    pub fn policy_age(&self, now: i64) -> i64 {
        let l = self.link();
        if l.connected {
            0
        } else {
            (now - l.since).max(0)
        }
    }

    /// Builds the next snapshot from the current one with `f` and switches
    /// readers to it in one step (they see the old or the new one, never a
    /// mix); nothing changes if `f` fails.
    pub fn update<E>(&self, f: impl FnOnce(&Held) -> Result<Held, E>) -> Result<(), E> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let next = f(&self.held())?;
        *self.held.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(())
    }

    /// The version of the last applied push (0: none yet).
    pub fn held_version(&self) -> u64 {
        self.held().version
    }

    /// What is held from the control plane.
    pub fn held(&self) -> Arc<Held> {
        Arc::clone(&self.held.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Installs a JWK Set fetched outside the mesh stream (a token named an
    /// unknown key). The control plane is not told of it: its digest is
    /// unknown, so a reconnect receives the pushed keys again.
    pub fn set_jwks(&self, set: &JwkSet) -> Result<(), token::Error> {
        let json = serde_json::to_string(set).map_err(|_| token::Error::Jwk("unserialisable"))?;
        self.update(|held| {
            if held.raw.keys.as_ref().is_some_and(|k| k.jwks_json == json) {
                return Ok(held.clone());
            }
            // A fetch that started before a pushed rotation may land after
            // it: never replace pushed keys with a set that lacks one of them.
            if let Some(pushed) = held.raw.keys.as_ref().filter(|k| k.digest != 0) {
                let pushed: JwkSet = serde_json::from_str(&pushed.jwks_json)
                    .map_err(|_| token::Error::Jwk("held key set unreadable"))?;
                if pushed
                    .keys
                    .iter()
                    .any(|k| !set.keys.iter().any(|f| f.kid == k.kid))
                {
                    return Ok(held.clone());
                }
            }
            let verifier = warden_shared::token::Verifier::new(set)?;
            let mut next = held.clone();
            next.keys = Arc::new(held::Keys {
                generation: held.keys.generation + 1,
                verifier,
            });
            next.raw.keys = Some(Arc::new(warden_shared::proto::v1::KeysPart {
                digest: 0,
                jwks_json: json,
            }));
            Ok(next)
        })
    }
}
