//! What the consent pages remember between a user's requests, in memory
//! and bounded: sign-ins under way (the OAuth `state`, the PKCE verifier,
//! the OpenID `nonce`, where to go back) and signed-in browsers (a cookie
//! naming the verified user, with the token that guards the pages' forms
//! against cross-site requests). A restart signs every browser out; a
//! grant already given is in the store.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rand::RngCore;

/// How long a sign-in may take, from leaving for the provider to coming
/// back.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);
/// How long a signed-in browser stays signed in.
pub const BROWSER_TTL: Duration = Duration::from_secs(1800);
/// Most sign-ins under way, and most signed-in browsers, held at once.
pub const MAX_HELD: usize = 10_000;

/// 32 random bytes, base64url.
pub fn random() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    B64.encode(b)
}

/// The PKCE S256 challenge of `verifier` (RFC 7636 §4.2).
pub fn challenge(verifier: &str) -> String {
    B64.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// A sign-in under way.
#[derive(Debug, Clone)]
pub struct Login {
    /// The provider's name.
    pub provider: String,
    /// The PKCE code verifier.
    pub verifier: String,
    /// The OpenID `nonce` the ID token must carry.
    pub nonce: String,
    /// Where the browser goes once signed in (a path of ours).
    pub return_to: String,
    created: Instant,
}

/// A signed-in browser.
#[derive(Debug, Clone)]
pub struct Browser {
    /// `<issuer>#<subject>`.
    pub user: String,
    /// The provider's name.
    pub provider: String,
    /// Guards the pages' forms (sent back in each POST).
    pub csrf: String,
    created: Instant,
}

/// A bounded map whose entries lapse after `ttl`.
#[derive(Debug)]
struct Lapsing<T> {
    ttl: Duration,
    map: Mutex<HashMap<String, T>>,
}

trait Created {
    fn created(&self) -> Instant;
}
impl Created for Login {
    fn created(&self) -> Instant {
        self.created
    }
}
impl Created for Browser {
    fn created(&self) -> Instant {
        self.created
    }
}

impl<T: Created + Clone> Lapsing<T> {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Holds `v` under `key`; `false` when full of live entries.
    fn put(&self, key: String, v: T) -> bool {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_HELD {
            let ttl = self.ttl;
            m.retain(|_, v| v.created().elapsed() < ttl);
            if m.len() >= MAX_HELD {
                return false;
            }
        }
        m.insert(key, v);
        true
    }

    fn get(&self, key: &str) -> Option<T> {
        let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.get(key)
            .filter(|v| v.created().elapsed() < self.ttl)
            .cloned()
    }

    fn take(&self, key: &str) -> Option<T> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(key).filter(|v| v.created().elapsed() < self.ttl)
    }
}

/// Sign-ins under way and signed-in browsers.
#[derive(Debug)]
pub struct Browsers {
    logins: Lapsing<Login>,
    signed_in: Lapsing<Browser>,
}

impl Default for Browsers {
    fn default() -> Self {
        Self {
            logins: Lapsing::new(LOGIN_TTL),
            signed_in: Lapsing::new(BROWSER_TTL),
        }
    }
}

/// The key a cookie is held under: its SHA-256, so that the map never
/// holds a usable cookie.
fn cookie_key(cookie: &str) -> String {
    B64.encode(ring::digest::digest(
        &ring::digest::SHA256,
        cookie.as_bytes(),
    ))
}

impl Browsers {
    /// Starts a sign-in: its `state` value, or `None` when too many are
    /// under way.
    pub fn start(&self, provider: &str, return_to: &str) -> Option<(String, Login)> {
        let state = random();
        let login = Login {
            provider: provider.to_owned(),
            verifier: random(),
            nonce: random(),
            return_to: return_to.to_owned(),
            created: Instant::now(),
        };
        self.logins
            .put(state.clone(), login.clone())
            .then_some((state, login))
    }

    /// The sign-in `state` names, once.
    pub fn finish(&self, state: &str) -> Option<Login> {
        self.logins.take(state)
    }

    /// Signs a browser in: its cookie, or `None` when too many are.
    pub fn sign_in(&self, user: &str, provider: &str) -> Option<String> {
        let cookie = random();
        let b = Browser {
            user: user.to_owned(),
            provider: provider.to_owned(),
            csrf: random(),
            created: Instant::now(),
        };
        self.signed_in.put(cookie_key(&cookie), b).then_some(cookie)
    }

    /// The browser a cookie names.
    pub fn browser(&self, cookie: &str) -> Option<Browser> {
        self.signed_in.get(&cookie_key(cookie))
    }

    /// Signs a browser out.
    pub fn sign_out(&self, cookie: &str) {
        self.signed_in.take(&cookie_key(cookie));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_follows_rfc_7636_appendix_b() {
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn a_sign_in_is_finished_once_and_cookies_are_not_held_as_given() {
        let b = Browsers::default();
        let (state, login) = b.start("corp", "/grants").unwrap();
        assert_eq!(b.finish(&state).unwrap().verifier, login.verifier);
        assert!(b.finish(&state).is_none());
        let cookie = b.sign_in("https://idp#alice", "corp").unwrap();
        assert_eq!(b.browser(&cookie).unwrap().user, "https://idp#alice");
        assert!(!b.signed_in.map.lock().unwrap().contains_key(&cookie));
        b.sign_out(&cookie);
        assert!(b.browser(&cookie).is_none());
    }
}
