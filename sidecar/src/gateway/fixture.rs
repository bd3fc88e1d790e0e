//! A gateway with everything a call needs, built in process without a
//! control plane: the snapshot a push would leave (standing, signing keys,
//! a policy), a certificate from a throwaway CA, and session tokens signed
//! for it. For the pipeline's tests and benchmarks; the sidecar never uses
//! it.

use std::sync::Arc;

use warden_shared::proto::v1 as pb;
use warden_shared::spiffe::SpiffeId;
use warden_shared::token::{Claims, Confirmation, JwkSet, SigningKey};

use super::authenticate::{Authenticator, Credentials};
use super::limit::Limiter;
use super::pipeline::Gateway;
use crate::identity::rotation::Snapshot;
use crate::state::State;

/// The trust domain of fixtures.
pub const TRUST_DOMAIN: &str = "fixture.warden";
/// The agent a fixture's gateway serves.
pub const AGENT: &str = "fixture-agent";

/// A gateway and the means to call it.
#[derive(Debug)]
pub struct Fixture {
    /// The gateway under test.
    pub gateway: Gateway,
    /// What it holds; apply pushes with [`Fixture::push`].
    pub state: Arc<State>,
    /// This sidecar's certificate.
    pub identity: Snapshot,
    key: SigningKey,
    version: std::sync::atomic::AtomicU64,
}

fn issuer() -> String {
    format!("spiffe://{TRUST_DOMAIN}/control-plane")
}

fn audience() -> String {
    format!("spiffe://{TRUST_DOMAIN}/agent/{AGENT}")
}

impl Fixture {
    /// A gateway holding the policy `doc` (its tools' effective risks are
    /// `tools`: name and risk) and a standing for an active agent, with
    /// `limiter`.
    ///
    /// # Panics
    ///
    /// If the document does not compile: a fixture is built by a test.
    pub fn new(doc: &str, tools: &[(&str, &str)], limiter: Limiter) -> Self {
        let now = crate::now_unix();
        let spiffe = SpiffeId::parse(&audience()).expect("fixture SPIFFE ID");
        let id = crate::identity::self_issued(&spiffe, now, 3600).expect("fixture certificate");
        let identity = Snapshot {
            current: Some(Arc::new(id)),
            previous_thumbprint: None,
        };
        let (key, _) = SigningKey::generate().expect("fixture signing key");
        let jwks = serde_json::to_string(&JwkSet {
            keys: vec![key.jwk().clone()],
        })
        .expect("JWKS");
        let state = Arc::new(State::new(None));
        let auth = Arc::new(Authenticator::new(
            issuer(),
            audience(),
            None,
            Arc::clone(&state),
        ));
        let f = Self {
            gateway: Gateway::new(auth, limiter),
            state,
            identity,
            key,
            version: std::sync::atomic::AtomicU64::new(0),
        };
        f.push(pb::StreamResponse {
            standing: Some(pb::StandingPart {
                digest: 1,
                status: pb::AgentStatus::Active.into(),
                agent_type: "fixture".into(),
                owner: "team-fixture".into(),
                environment: "test".into(),
                ..Default::default()
            }),
            keys: Some(pb::KeysPart {
                digest: 2,
                jwks_json: jwks,
            }),
            policy: Some(pb::PolicyPart {
                digest: 3,
                version: 1,
                document: doc.into(),
                tools: tools
                    .iter()
                    .map(|(name, risk)| pb::EffectiveTool {
                        name: (*name).into(),
                        risk: (*risk).into(),
                    })
                    .collect(),
            }),
            ..Default::default()
        });
        f
    }

    /// Applies `push` (its version is set to the next one), as the mesh
    /// task would.
    ///
    /// # Panics
    ///
    /// If the push is refused.
    pub fn push(&self, mut push: pb::StreamResponse) {
        push.version = 1 + self
            .version
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.state
            .update(|h| h.apply(&push, crate::now_unix()))
            .expect("fixture push applies");
        self.state.set_connected(true, crate::now_unix());
    }

    /// The claims of a session `sid` granted `scope`, bound to this
    /// sidecar's certificate, for 15 minutes.
    pub fn claims(&self, sid: &str, scope: &str) -> Claims {
        let now = crate::now_unix();
        let thumbprint = self
            .identity
            .current
            .as_ref()
            .map(|i| i.thumbprint.clone())
            .unwrap_or_default();
        Claims {
            iss: issuer(),
            sub: audience(),
            aud: audience(),
            exp: now + 900,
            iat: now,
            jti: format!("jti-{sid}"),
            client_id: audience(),
            scope: scope.into(),
            sid: sid.into(),
            cnf: Confirmation {
                x5t_s256: thumbprint,
            },
            constraints: Default::default(),
            ctx: Default::default(),
            act: None,
            usr: None,
        }
    }

    /// `claims` signed.
    ///
    /// # Panics
    ///
    /// If signing fails.
    pub fn token(&self, claims: &Claims) -> String {
        self.key.sign(claims).expect("fixture token")
    }

    /// What a request carrying `token` presents.
    pub fn credentials<'a>(&self, token: &'a str) -> Credentials<'a> {
        Credentials {
            token: Ok(token),
            identity: self.identity.clone(),
            peer: "fixture".into(),
        }
    }
}
