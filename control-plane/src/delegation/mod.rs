//! Delegation (issue 17): an agent acts for a user only with the user's
//! identity proven by a trusted OpenID Connect provider and the user's
//! consent grant. [`Delegation::verify`] turns a user token into the
//! verified user; `IssueToken` then looks the grant up and issues the
//! session token per RFC 8693 (`sub` the user, `act.sub` the agent).

pub mod browser;
pub mod provider;

use std::sync::Arc;

use warden_shared::oidc;
use warden_shared::refusal::{Reason, Refusal};

pub use provider::{Attributes, Failure, Provider, ProviderConfig};

/// The configured providers.
#[derive(Debug, Default)]
pub struct Delegation {
    providers: Vec<Arc<Provider>>,
    /// Base URL of the control plane's HTTP listener, for consent links
    /// (set once the listener is bound, unless configured).
    public_url: std::sync::RwLock<String>,
    /// The consent pages' sign-ins and signed-in browsers.
    pub browsers: browser::Browsers,
    /// Live grants recently looked up, by user and agent (see [`Grants`]).
    pub grants: Grants,
}

/// Most grants held by [`Grants`]; it starts over when full.
const MAX_CACHED_GRANTS: usize = 16_384;

/// Live grants as recently looked up, so that a delegated session start
/// costs no read of the store when the same user starts another. Only
/// live grants are held, each until it expires; giving a grant forgets the
/// user's, revoking one forgets it. Correctness does not rest on it: the
/// session's insert checks, in the same statement, that its grant is still
/// live, so a grant revoked meanwhile never gains a session.
#[derive(Debug, Default)]
pub struct Grants {
    held: std::sync::Mutex<std::collections::HashMap<(String, String), crate::store::Grant>>,
}

impl Grants {
    fn map(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, String), crate::store::Grant>>
    {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live grant held for `user` and `agent`, if any.
    pub fn get(&self, user: &str, agent: &str, now: i64) -> Option<crate::store::Grant> {
        self.map()
            .get(&(user.to_owned(), agent.to_owned()))
            .filter(|g| g.revoked_at.is_none() && g.expires_at > now)
            .cloned()
    }

    /// Holds a live grant found for `user` and `agent`.
    pub fn put(&self, user: &str, agent: &str, grant: &crate::store::Grant) {
        let mut m = self.map();
        if m.len() >= MAX_CACHED_GRANTS {
            m.clear();
        }
        m.insert((user.to_owned(), agent.to_owned()), grant.clone());
    }

    /// Forgets every grant held for `user` (they gave another).
    pub fn forget_user(&self, user: &str) {
        self.map().retain(|(u, _), _| u != user);
    }

    /// Forgets grant `id` (it was revoked).
    pub fn forget(&self, id: &str) {
        self.map().retain(|_, g| g.id != id);
    }
}

/// A user a provider vouched for.
#[derive(Debug, Clone)]
pub struct VerifiedUser {
    /// `<issuer>#<subject>`.
    pub id: String,
    /// The provider's name.
    pub provider: String,
    /// The mapped attributes.
    pub attributes: Attributes,
    /// The token's `exp`.
    pub token_expires_at: i64,
}

impl Delegation {
    /// Loads every configured provider; `public_url` is where the consent
    /// pages are reached (see [`Delegation::listening`]).
    pub fn load(
        configs: &[ProviderConfig],
        public_url: &str,
    ) -> Result<Self, provider::ConfigError> {
        let providers = configs
            .iter()
            .map(|c| Provider::load(c).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            providers,
            public_url: std::sync::RwLock::new(public_url.trim_end_matches('/').to_owned()),
            browsers: browser::Browsers::default(),
            grants: Grants::default(),
        })
    }

    /// Whether any provider is configured.
    pub fn enabled(&self) -> bool {
        !self.providers.is_empty()
    }

    /// The providers.
    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    /// The provider named `name`.
    pub fn provider(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.config().name == name)
    }

    /// Whether `user_id` is spelled like a verified user of a configured
    /// provider (`<issuer>#…`): an agent may not state such a user without
    /// the user's token.
    pub fn looks_verified(&self, user_id: &str) -> bool {
        self.providers.iter().any(|p| {
            user_id
                .strip_prefix(p.config().issuer.as_str())
                .is_some_and(|r| r.starts_with('#'))
        })
    }

    /// Verifies a user token with the provider its `iss` names.
    pub async fn verify(&self, token: &str, now: i64) -> Result<VerifiedUser, Refusal> {
        let iss = oidc::claimed_issuer(token).map_err(|e| refusal(&Failure::Token(e)))?;
        let Some(p) = self.providers.iter().find(|p| p.config().issuer == iss) else {
            let why = if self.providers.is_empty() {
                "no identity provider is configured on this control plane".to_owned()
            } else {
                format!(
                    "the user token was issued by {:?}, which is not a trusted identity provider",
                    iss.chars().take(256).collect::<String>()
                )
            };
            return Err(Refusal::new(Reason::UserTokenWrongIssuer, why));
        };
        let user = p.verify(token, now).await.map_err(|e| refusal(&e))?;
        Ok(VerifiedUser {
            id: user.qualified(),
            provider: p.config().name.clone(),
            attributes: p.attributes(&user),
            token_expires_at: user.expires_at,
        })
    }

    /// The HTTP listener is bound at `addr`: without a configured
    /// `public_url`, that is where users reach it.
    pub fn listening(&self, configured: bool, addr: std::net::SocketAddr) {
        if !configured {
            *self.public_url.write().unwrap_or_else(|p| p.into_inner()) = format!("http://{addr}");
        }
    }

    /// Where `user` consents to `agent` acting for them within `scopes`.
    pub fn consent_url(&self, agent: &str, scopes: &[String]) -> String {
        format!(
            "{}/consent?agent={}&scope={}",
            self.public_url(),
            form_encode(agent),
            form_encode(&scopes.join(" "))
        )
    }

    /// The base URL of the consent pages.
    pub fn public_url(&self) -> String {
        self.public_url
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The refusal for a failed verification: each kind of failure its own
/// reason; the message names what failed, never the token.
pub fn refusal(f: &Failure) -> Refusal {
    match f {
        Failure::Unavailable(u) => {
            tracing::warn!(error = %u, "identity provider unavailable");
            Refusal::new(
                Reason::IdentityProviderUnavailable,
                format!(
                    "the keys of identity provider {:?} could not be fetched; retry later",
                    u.provider
                ),
            )
        }
        Failure::Token(e) => {
            let reason = match e {
                oidc::Error::Malformed(_) | oidc::Error::Jwks(_) => Reason::UserTokenMalformed,
                oidc::Error::Algorithm(_) => Reason::UserTokenAlgorithm,
                oidc::Error::UnknownKey(_) => Reason::UserTokenUnknownKey,
                oidc::Error::BadSignature => Reason::UserTokenBadSignature,
                oidc::Error::WrongIssuer(_) => Reason::UserTokenWrongIssuer,
                oidc::Error::WrongAudience(_) => Reason::UserTokenWrongAudience,
                oidc::Error::Expired => Reason::UserTokenExpired,
                oidc::Error::NotYetValid => Reason::UserTokenNotYetValid,
                oidc::Error::Subject => Reason::UserTokenNoSubject,
            };
            Refusal::new(reason, e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_escapes_all_but_unreserved() {
        assert_eq!(form_encode("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
        assert_eq!(
            form_encode("tools:read-1_x.y*"),
            "tools:read-1_x.y*".replace(':', "%3A")
        );
    }
}
