//! The token-signing key ring: one active ES256 key, plus retired keys that
//! stay published in the JWKS until every token they signed has expired.

use std::sync::{Arc, RwLock};

use warden_shared::token::{JwkSet, SigningKey, TOKEN_TTL_SECS};

use crate::store::{self, Store};

/// How long a retired key stays published: a token lifetime plus margin for
/// clock skew and caches.
pub const RETIRED_KEY_GRACE_SECS: i64 = TOKEN_TTL_SECS + 300;

/// Why the key ring could not be loaded or rotated.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A stored key is unusable.
    #[error("stored signing key {kid} is unusable: {source}")]
    BadKey {
        /// Its id.
        kid: String,
        /// Why.
        #[source]
        source: warden_shared::token::Error,
    },
    /// Generating a key failed.
    #[error("generating a signing key failed: {0}")]
    Generate(#[source] warden_shared::token::Error),
}

/// A consistent view: the active key and what is published.
#[derive(Debug)]
pub struct Ring {
    /// Signs new tokens.
    pub active: SigningKey,
    /// Published keys, active first.
    pub jwks: JwkSet,
    /// `jwks` as JSON text.
    pub jwks_json: String,
    /// Digest of `jwks_json`, naming this key set on the mesh stream.
    pub digest: u64,
}

/// The shared key ring.
#[derive(Debug)]
pub struct KeyRing {
    ring: RwLock<Arc<Ring>>,
}

async fn build(store: &dyn Store, now: i64) -> Result<Option<Ring>, Error> {
    let keys = store.signing_keys().await?;
    let mut active = None;
    let mut jwks = JwkSet::default();
    for k in keys {
        let live = k
            .retired_at
            .is_none_or(|r| now - r < RETIRED_KEY_GRACE_SECS);
        if !live {
            continue;
        }
        let key = SigningKey::from_pkcs8(&k.pkcs8).map_err(|source| Error::BadKey {
            kid: k.kid.clone(),
            source,
        })?;
        jwks.keys.push(key.jwk().clone());
        if k.retired_at.is_none() && active.is_none() {
            active = Some(key);
        }
    }
    Ok(active.map(|active| {
        let jwks_json = serde_json::to_string(&jwks).unwrap_or_default();
        Ring {
            active,
            digest: crate::digest::digest(jwks_json.as_bytes()),
            jwks,
            jwks_json,
        }
    }))
}

impl KeyRing {
    /// Loads the ring, generating the first key if there is none.
    pub async fn load(store: &dyn Store, now: i64) -> Result<Self, Error> {
        let ring = match build(store, now).await? {
            Some(r) => r,
            None => {
                let (key, pkcs8) = SigningKey::generate().map_err(Error::Generate)?;
                store.rotate_signing_key(key.kid(), &pkcs8, now).await?;
                build(store, now)
                    .await?
                    .ok_or_else(|| Error::Generate(warden_shared::token::Error::Key("vanished")))?
            }
        };
        Ok(Self {
            ring: RwLock::new(Arc::new(ring)),
        })
    }

    /// The current ring.
    pub fn current(&self) -> Arc<Ring> {
        Arc::clone(&self.ring.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Makes a fresh key active; the old one stays published for
    /// [`RETIRED_KEY_GRACE_SECS`].
    pub async fn rotate(&self, store: &dyn Store, now: i64) -> Result<Arc<Ring>, Error> {
        let (key, pkcs8) = SigningKey::generate().map_err(Error::Generate)?;
        store.rotate_signing_key(key.kid(), &pkcs8, now).await?;
        let ring = Arc::new(
            build(store, now)
                .await?
                .ok_or_else(|| Error::Generate(warden_shared::token::Error::Key("vanished")))?,
        );
        *self.ring.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&ring);
        Ok(ring)
    }
}
