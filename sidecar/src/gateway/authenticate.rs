//! Stage 1 of the pipeline, whole: the bearer token read from the request
//! ([`bearer`]) and verified locally — signature against the JWKS (fetched
//! once, through the mesh module, when it names an unknown key), issuer,
//! audience (this agent), expiry, key binding to our current or previous
//! certificate, not ended or revoked, the agent neither blocked nor
//! expired — and then the session's `max_tool_calls` ([`count_call`]); each
//! failure is mapped to its refusal ([`auth_denial`]).
//!
//! Signature verification (an ECDSA verify, tens of µs) is cached per token
//! string: the cache maps the exact token text to the claims it was proven
//! to carry, which is safe because a different token text misses the cache.
//! Everything time- or state-dependent is re-checked on every call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warden_shared::token::{self, Claims, Expect};

use tonic::{Request, Status};
use warden_shared::refusal::Reason;

use super::limit::SessionCalls;
use super::limit::session::Error as SessionCallsError;
use super::{Refusal, Stage};
use crate::identity::rotation::Snapshot;
use crate::state::held::Held;
use crate::state::{State, Unusable};

/// Most cached verified tokens; the cache is swept of expired entries, then
/// cleared, when full.
const CACHE_MAX: usize = 16_384;
/// Minimum interval between JWKS refreshes triggered by unknown key ids.
const REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Allowed clock skew for `iat`.
const LEEWAY_SECS: i64 = 30;

/// Why a token was refused (or could not be checked).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The token itself is bad.
    #[error(transparent)]
    Token(#[from] token::Error),
    /// The session was ended.
    #[error("session {0} has ended")]
    SessionEnded(String),
    /// The sidecar has no valid certificate to bind tokens to.
    #[error("the sidecar holds no valid certificate")]
    NoIdentity,
    /// The control plane pushed that the agent is suspended or revoked.
    #[error("agent is {} ({})", if *.revoked { "revoked" } else { "suspended" }, .reason)]
    AgentBlocked {
        /// Revoked (else suspended).
        revoked: bool,
        /// The admin's reason.
        reason: String,
    },
    /// The agent's identity expired (the instant was pushed with its
    /// standing; it is enforced here without another push).
    #[error("agent identity expired at {0} (unix seconds); an admin must register it again")]
    AgentExpired(i64),
    /// The control plane pushed that this session was revoked.
    #[error("session {0} was revoked")]
    SessionRevoked(String),
    /// No pushed state is held yet (fail closed until the first push or a
    /// valid persisted snapshot).
    #[error("the sidecar holds no policy from the control plane yet")]
    NoPolicy,
    /// Out of contact with the control plane for longer than `max_policy_age`.
    #[error(
        "the held policy is {0} s old, beyond max_policy_age; the control plane is unreachable"
    )]
    PolicyStale(i64),
}

/// Verified claims by the exact token text.
type ClaimsCache = HashMap<Arc<str>, Arc<Claims>>;

/// Asks the mesh module to fetch the JWKS now; the sender is answered once
/// the fetch has been installed (or has failed).
pub type KeyRefresh = tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>;

/// How long a call waits for a JWKS fetch it asked for.
const REFRESH_WAIT: Duration = Duration::from_secs(3);

/// What a request presents to stage 1: its bearer token (or why it has
/// none) and the identity the token must be bound to. `Debug` leaves the
/// token out.
pub struct Credentials<'a> {
    /// The bearer token, or the refusal for a request without one.
    pub token: Result<&'a str, Refusal>,
    /// This sidecar's certificates when the request arrived.
    pub identity: Snapshot,
    /// Where the request came from (`host:port`, or `unix` for the
    /// socket), for the record.
    pub peer: String,
}

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.token.as_ref().map(|t| t.len()))
            .finish_non_exhaustive()
    }
}

impl<'a> Credentials<'a> {
    /// The credentials of a gRPC request.
    pub fn of<T>(req: &'a Request<T>, identity: Snapshot) -> Self {
        Self {
            token: bearer(req),
            identity,
            peer: req
                .remote_addr()
                .map_or_else(|| "unix".to_owned(), |a| a.to_string()),
        }
    }
}

/// Verifies session tokens presented to this sidecar.
#[derive(Debug)]
pub struct Authenticator {
    issuer: String,
    audience: String,
    /// Verified claims by exact token text, valid for one key generation.
    cache: Mutex<(u64, ClaimsCache)>,
    ended: Mutex<HashMap<String, i64>>,
    ended_file: Option<PathBuf>,
    /// Serialises writes of `ended_file` (outside `ended`'s lock).
    ended_writer: Mutex<()>,
    last_refresh: Mutex<Option<Instant>>,
    /// Where to ask for a JWKS fetch (unset: never fetched on demand).
    refresh: std::sync::OnceLock<KeyRefresh>,
    /// What the control plane pushed (read here, written by the mesh task).
    state: Arc<State>,
}

impl Authenticator {
    /// Expects tokens from `issuer` for `audience`, checked against what
    /// `state` holds. Ended sessions are kept in `ended_file` (if given) so a
    /// restart does not revive their tokens.
    pub fn new(
        issuer: String,
        audience: String,
        ended_file: Option<PathBuf>,
        state: Arc<State>,
    ) -> Self {
        let ended = ended_file.as_deref().map(load_ended).unwrap_or_default();
        Self {
            issuer,
            audience,
            cache: Mutex::new((0, HashMap::new())),
            ended: Mutex::new(ended),
            ended_file,
            ended_writer: Mutex::new(()),
            last_refresh: Mutex::new(None),
            refresh: std::sync::OnceLock::new(),
            state,
        }
    }

    /// Sends JWKS fetches for unknown key ids to `refresh` (set once).
    pub fn set_key_refresh(&self, refresh: KeyRefresh) {
        let _ = self.refresh.set(refresh);
    }

    /// Stage 1 up to the token: verified against what is held now, with
    /// one JWKS fetch (rate-limited) when it names an unknown key. Returns
    /// the claims and the one snapshot of what is held that the rest of
    /// the call reads.
    pub async fn authenticate(
        &self,
        creds: &Credentials<'_>,
    ) -> Result<(Arc<Claims>, Arc<Held>), Refusal> {
        let token = creds.token.as_ref().map_err(Clone::clone)?;
        let ids = &creds.identity;
        match self.verify_held(token, ids, crate::now_unix()) {
            Err(Error::Token(token::Error::UnknownKey(_))) if self.fetch_keys().await => self
                .verify_held(token, ids, crate::now_unix())
                .map_err(|e| auth_denial(&e)),
            r => r.map_err(|e| {
                tracing::info!(error = %e, "token refused");
                auth_denial(&e)
            }),
        }
    }

    /// Asks for a JWKS fetch (at most one per [`REFRESH_INTERVAL`]) and
    /// waits, bounded, until it is installed. False when none was asked
    /// for (too soon, or nowhere to ask).
    async fn fetch_keys(&self) -> bool {
        let Some(refresh) = self.refresh.get() else {
            return false;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut last = self.last_refresh.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < REFRESH_INTERVAL) {
                return false;
            }
            if refresh.try_send(tx).is_err() {
                return false;
            }
            *last = Some(Instant::now());
        }
        let _ = tokio::time::timeout(REFRESH_WAIT, rx).await;
        true
    }

    /// What the control plane pushed, as this authenticator reads it.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// This sidecar's agent id (the last segment of the audience, its
    /// SPIFFE ID).
    pub fn agent_id(&self) -> &str {
        self.audience.rsplit('/').next().unwrap_or_default()
    }

    /// Marks a session as ended here until its token would have expired,
    /// and persists the list.
    /// The session is refused from the moment the list in memory holds it;
    /// the file is written after, without holding the lock every `verify`
    /// takes (a blocking write and sync: call it off the runtime).
    pub fn end_session(&self, sid: &str, exp: i64, now: i64) -> std::io::Result<()> {
        {
            let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
            ended.retain(|_, e| *e > now);
            ended.insert(sid.to_owned(), exp);
        }
        let Some(path) = &self.ended_file else {
            return Ok(());
        };
        // One writer at a time, each writing the list as it is then, so the
        // last write holds every ended session.
        let _writing = self.ended_writer.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone();
        save_ended(path, &snapshot)
    }

    /// Verifies `token` at `now` against the identity snapshot.
    pub fn verify(&self, token: &str, ids: &Snapshot, now: i64) -> Result<Arc<Claims>, Error> {
        self.verify_held(token, ids, now).map(|(claims, _)| claims)
    }

    /// [`Authenticator::verify`], also returning the snapshot of what is
    /// held that the token was verified against: the rest of the call
    /// reads that one, so a push landing meanwhile cannot split a call
    /// between two policies.
    pub fn verify_held(
        &self,
        token: &str,
        ids: &Snapshot,
        now: i64,
    ) -> Result<(Arc<Claims>, Arc<Held>), Error> {
        let held = self.state.held();
        // A known expiry, suspension or revocation is the most precise
        // answer, even on a stale policy.
        if let Some(e) = held.expires_at.filter(|e| *e <= now) {
            return Err(Error::AgentExpired(e));
        }
        if let Some((revoked, reason)) = &held.blocked {
            return Err(Error::AgentBlocked {
                revoked: *revoked,
                reason: reason.clone(),
            });
        }
        let current = ids.valid(now).ok_or(Error::NoIdentity)?;
        self.state
            .check_policy_of(&held, now)
            .map_err(|e| match e {
                Unusable::NoPolicy => Error::NoPolicy,
                Unusable::Stale(age) => Error::PolicyStale(age),
            })?;
        let claims = self.signature(token, &held, now)?;
        let mut thumbs: [&str; 2] = [&current.thumbprint, ""];
        let n = match &ids.previous_thumbprint {
            Some(p) => {
                thumbs[1] = p;
                2
            }
            None => 1,
        };
        token::check(
            &claims,
            &Expect {
                issuer: &self.issuer,
                audience: &self.audience,
                thumbprints: &thumbs[..n],
                now,
                leeway: LEEWAY_SECS,
            },
        )?;
        if held.revoked_sessions.contains_key(&claims.sid) {
            return Err(Error::SessionRevoked(claims.sid.clone()));
        }
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        if ended.contains_key(&claims.sid) {
            return Err(Error::SessionEnded(claims.sid.clone()));
        }
        drop(ended);
        Ok((claims, held))
    }

    fn signature(&self, token: &str, held: &Held, now: i64) -> Result<Arc<Claims>, Error> {
        let generation = held.keys.generation;
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.0 < generation {
                // A key may have left the set: re-prove every token.
                *cache = (generation, HashMap::new());
            }
            if cache.0 == generation
                && let Some(c) = cache.1.get(token)
            {
                return Ok(Arc::clone(c));
            }
        }
        let claims = Arc::new(held.keys.verifier.verify_signature(token)?);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        // Cached only under the generation it was proven with; a reader
        // holding an older snapshot neither reads nor writes the cache.
        if cache.0 == generation {
            if cache.1.len() >= CACHE_MAX {
                cache.1.retain(|_, c| c.exp > now);
                if cache.1.len() >= CACHE_MAX {
                    cache.1.clear();
                }
            }
            cache.1.insert(Arc::from(token), Arc::clone(&claims));
        }
        Ok(claims)
    }
}

/// The last check of stage 1: the session's `max_tool_calls`, counted (the
/// count survives a restart when `calls` keeps a journal).
pub fn count_call(calls: &SessionCalls, claims: &Claims, now: i64) -> Result<(), Refusal> {
    let max = claims.constraints.max_tool_calls;
    calls
        .take(&claims.sid, max, claims.exp, now)
        .map(|_| ())
        .map_err(|e| {
            match e {
                SessionCallsError::Spent(_) | SessionCallsError::Full => {
                    Refusal::at(Stage::Authenticate, Reason::ToolCallLimit, e.to_string())
                }
                SessionCallsError::Journal(_) => {
                    tracing::error!(error = %e, "session call journal");
                    Refusal::at(
                        Stage::Authenticate,
                        Reason::Internal,
                        "the session's call count could not be recorded; see the sidecar log",
                    )
                }
            }
            .rule("max_tool_calls")
        })
}

/// Maps an authentication failure to the gateway's stage-1 denial.
pub fn auth_denial(e: &Error) -> Refusal {
    use token::Error as T;
    let reason = match e {
        Error::NoIdentity => Reason::NoIdentity,
        Error::SessionEnded(_) => Reason::SessionUnknown,
        Error::SessionRevoked(_) => Reason::SessionRevoked,
        Error::NoPolicy => Reason::PolicyNotLoaded,
        Error::PolicyStale(_) => Reason::PolicyStale,
        Error::AgentExpired(_) => Reason::AgentExpired,
        Error::AgentBlocked { revoked: true, .. } => Reason::AgentRevoked,
        Error::AgentBlocked { revoked: false, .. } => Reason::AgentSuspended,
        Error::Token(t) => match t {
            T::Expired(_) => Reason::TokenExpired,
            T::BadSignature | T::UnknownKey(_) => Reason::TokenBadSignature,
            T::WrongAudience(_) => Reason::TokenWrongAudience,
            T::WrongIssuer(_) => Reason::TokenWrongIssuer,
            T::KeyBinding => Reason::TokenKeyBindingMismatch,
            T::NotYetValid => Reason::TokenNotYetValid,
            _ => Reason::TokenMalformed,
        },
    };
    Refusal::at(Stage::Authenticate, reason, e.to_string())
}

/// Maps an authentication failure to the agent-facing status.
pub fn auth_status(e: &Error) -> Status {
    auth_denial(e).to_status()
}

/// The bearer token of a request.
pub fn bearer<T>(req: &Request<T>) -> Result<&str, Refusal> {
    let missing = || {
        Refusal::at(
            Stage::Authenticate,
            Reason::TokenMissing,
            "send the session token as `authorization: Bearer <token>`",
        )
    };
    let v = req.metadata().get("authorization").ok_or_else(missing)?;
    let v = v.to_str().map_err(|_| missing())?;
    v.strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(missing)
}

/// Most ended sessions remembered (each drops out when its token expires).
const ENDED_MAX: usize = 100_000;

fn load_ended(path: &Path) -> HashMap<String, i64> {
    let now = crate::now_unix();
    match std::fs::read_to_string(path) {
        Ok(text) => match serde_json::from_str::<HashMap<String, i64>>(&text) {
            Ok(mut m) => {
                m.retain(|_, e| *e > now);
                m
            }
            Err(e) => {
                tracing::error!(error = %e, file = %path.display(), "ended-session list is corrupt; ignoring it");
                HashMap::new()
            }
        },
        Err(_) => HashMap::new(),
    }
}

fn save_ended(path: &Path, ended: &HashMap<String, i64>) -> std::io::Result<()> {
    use std::io::Write;
    if ended.len() > ENDED_MAX {
        return Err(std::io::Error::other("too many ended sessions to remember"));
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(serde_json::to_string(ended).unwrap_or_default().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
