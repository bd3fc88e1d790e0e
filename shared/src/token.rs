//! Session tokens: RFC 9068 JWT access tokens signed with ES256, bound to
//! the sidecar's certificate with `cnf.x5t#S256` (RFC 8705), and the JWK Set
//! that lets anyone verify them offline.

use std::collections::HashMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde::{Deserialize, Serialize};

/// Longest token accepted for verification.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Lifetime of a session token.
pub const TOKEN_TTL_SECS: i64 = 15 * 60;
/// The JOSE `typ` of RFC 9068 access tokens.
pub const TYP: &str = "at+jwt";

/// Why a token could not be signed or was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Not three base64url parts, bad JSON, wrong `typ`, or too long.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `alg` is not ES256.
    #[error("unsupported token algorithm (only ES256 is accepted)")]
    Algorithm,
    /// The `kid` is not in the JWK Set.
    #[error("token signed with unknown key id {0:?}; the JWK Set may need a refresh")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("token signature does not verify")]
    BadSignature,
    /// `exp` has passed.
    #[error("token expired at {0} (unix seconds)")]
    Expired(i64),
    /// `iat` is in the future beyond the allowed skew.
    #[error("token issued in the future")]
    NotYetValid,
    /// `aud` is not the expected audience.
    #[error("token audience {0:?} is not this sidecar's")]
    WrongAudience(String),
    /// `iss` is not the expected issuer.
    #[error("token issuer {0:?} is not the expected issuer")]
    WrongIssuer(String),
    /// `cnf.x5t#S256` names a certificate this verifier does not hold.
    #[error("token is bound to another certificate")]
    KeyBinding,
    /// A key could not be loaded or generated.
    #[error("invalid signing key: {0}")]
    Key(&'static str),
    /// A JWK in the set is malformed.
    #[error("invalid JWK: {0}")]
    Jwk(&'static str),
}

/// RFC 8705 confirmation claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// SHA-256 thumbprint of the bound certificate.
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

/// Limits carried in the token and enforced by the sidecar.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraints {
    /// Tool calls allowed in this session; 0 means no cap.
    #[serde(default)]
    pub max_tool_calls: u32,
}

/// The claims of a Warden session token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: the control plane's SPIFFE ID.
    pub iss: String,
    /// Subject: the end user if the session is on behalf of one, otherwise
    /// the agent's SPIFFE ID (RFC 9068 §2.2).
    pub sub: String,
    /// Audience: the agent's SPIFFE ID, i.e. the agent's own sidecar.
    pub aud: String,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Unique token id.
    pub jti: String,
    /// The agent's SPIFFE ID.
    pub client_id: String,
    /// Space-separated granted scopes.
    pub scope: String,
    /// Session id.
    pub sid: String,
    /// Key binding to the sidecar certificate.
    pub cnf: Confirmation,
    /// Session constraints.
    #[serde(default)]
    pub constraints: Constraints,
    /// The session's context as the agent stated it at `StartSession`
    /// (e.g. the user's `tier`); bounded to 16 short entries. Policy rules
    /// read it.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub ctx: std::collections::BTreeMap<String, String>,
    /// RFC 8693 §4.1 actor: present only when the session acts for a user
    /// whose identity provider vouched for them (`sub` is then that user,
    /// issuer-qualified, and `act.sub` the agent's SPIFFE ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    /// The verified user's attributes, as the control plane's configuration
    /// maps them from the provider's token, and the grant the session was
    /// issued under. Present exactly when `act` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usr: Option<Delegation>,
}

/// RFC 8693 `act` claim: who acts for the subject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The acting agent's SPIFFE ID.
    pub sub: String,
}

/// What a delegated session knows of its user besides `sub`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    /// The consent grant the session was issued under.
    pub grant: String,
    /// Mapped `tier` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Mapped `email` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Mapped `groups` claim.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

impl Claims {
    /// The end user, if the session acts for one.
    pub fn user_id(&self) -> Option<&str> {
        (self.sub != self.client_id).then_some(self.sub.as_str())
    }

    /// Whether the user was proven by a trusted identity provider (the
    /// session was issued per RFC 8693 with an `act` claim naming this
    /// agent) rather than merely stated by the agent.
    pub fn user_verified(&self) -> bool {
        self.usr.is_some() && self.act.as_ref().is_some_and(|a| a.sub == self.client_id)
    }

    /// The user's tier: the provider's mapped claim when the user is
    /// verified, else what the agent stated.
    pub fn tier(&self) -> Option<&str> {
        match &self.usr {
            Some(d) if self.user_verified() => d.tier.as_deref(),
            _ => self.ctx.get("tier").map(String::as_str),
        }
    }

    /// The granted scopes as strings.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split(' ').filter(|s| !s.is_empty())
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

/// One public key of a JWK Set (RFC 7517/7518, EC P-256).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `EC`
    pub kty: String,
    /// `P-256`
    pub crv: String,
    /// base64url x coordinate.
    pub x: String,
    /// base64url y coordinate.
    pub y: String,
    /// Key id: the RFC 7638 thumbprint.
    pub kid: String,
    /// `ES256`
    pub alg: String,
    /// `sig`
    #[serde(rename = "use")]
    pub use_: String,
}

/// A JWK Set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    /// The keys; the active signing key first.
    pub keys: Vec<Jwk>,
}

impl Jwk {
    fn from_public(point: &[u8]) -> Result<Self, Error> {
        // Uncompressed SEC1 point: 0x04 || x (32) || y (32).
        if point.len() != 65 || point[0] != 4 {
            return Err(Error::Key("expected an uncompressed P-256 point"));
        }
        let (x, y) = (B64.encode(&point[1..33]), B64.encode(&point[33..]));
        // RFC 7638: members in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = B64.encode(ring::digest::digest(
            &ring::digest::SHA256,
            canonical.as_bytes(),
        ));
        Ok(Self {
            kty: "EC".into(),
            crv: "P-256".into(),
            x,
            y,
            kid,
            alg: "ES256".into(),
            use_: "sig".into(),
        })
    }

    fn point(&self) -> Result<Vec<u8>, Error> {
        if self.kty != "EC" || self.crv != "P-256" {
            return Err(Error::Jwk("only EC P-256 keys are supported"));
        }
        let x = B64
            .decode(&self.x)
            .map_err(|_| Error::Jwk("x is not base64url"))?;
        let y = B64
            .decode(&self.y)
            .map_err(|_| Error::Jwk("y is not base64url"))?;
        if x.len() != 32 || y.len() != 32 {
            return Err(Error::Jwk("coordinates must be 32 bytes"));
        }
        let mut p = Vec::with_capacity(65);
        p.push(4);
        p.extend_from_slice(&x);
        p.extend_from_slice(&y);
        Ok(p)
    }
}

/// An ES256 signing key. Its `Debug` never prints key material.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    jwk: Jwk,
    header_b64: String,
    rng: SystemRandom,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.jwk.kid)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl SigningKey {
    /// Generates a fresh key; returns it with its PKCS#8 encoding for storage.
    pub fn generate() -> Result<(Self, Vec<u8>), Error> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| Error::Key("key generation failed"))?;
        let key = Self::from_pkcs8(pkcs8.as_ref())?;
        Ok((key, pkcs8.as_ref().to_vec()))
    }

    /// Loads a key from PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, Error> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|_| Error::Key("not a P-256 PKCS#8 key"))?;
        let jwk = Jwk::from_public(pair.public_key().as_ref())?;
        let header = Header {
            alg: "ES256".into(),
            typ: TYP.into(),
            kid: jwk.kid.clone(),
        };
        let header_b64 = B64.encode(serde_json::to_vec(&header).map_err(|_| Error::Key("header"))?);
        Ok(Self {
            pair,
            jwk,
            header_b64,
            rng,
        })
    }

    /// The key id (RFC 7638 thumbprint).
    pub fn kid(&self) -> &str {
        &self.jwk.kid
    }

    /// The public half as a JWK.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// Signs claims into a compact JWS.
    pub fn sign(&self, claims: &Claims) -> Result<String, Error> {
        let payload = serde_json::to_vec(claims).map_err(|_| Error::Malformed("claims"))?;
        let mut out = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 100);
        out.push_str(&self.header_b64);
        out.push('.');
        B64.encode_string(&payload, &mut out);
        let sig = self
            .pair
            .sign(&self.rng, out.as_bytes())
            .map_err(|_| Error::Key("signing failed"))?;
        out.push('.');
        B64.encode_string(sig.as_ref(), &mut out);
        Ok(out)
    }
}

/// What a verified token must satisfy besides its signature.
#[derive(Clone, Copy, Debug)]
pub struct Expect<'a> {
    /// Required `iss`.
    pub issuer: &'a str,
    /// Required `aud`.
    pub audience: &'a str,
    /// Certificate thumbprints the token may be bound to.
    pub thumbprints: &'a [&'a str],
    /// Current time, unix seconds.
    pub now: i64,
    /// Allowed clock skew for `iat`, seconds.
    pub leeway: i64,
}

/// Verifies token signatures against a JWK Set.
#[derive(Debug, Default)]
pub struct Verifier {
    keys: HashMap<String, Vec<u8>>,
}

impl Verifier {
    /// Builds a verifier from a JWK Set; refuses a malformed key.
    pub fn new(set: &JwkSet) -> Result<Self, Error> {
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            if jwk.alg != "ES256" {
                return Err(Error::Jwk("only ES256 keys are supported"));
            }
            keys.insert(jwk.kid.clone(), jwk.point()?);
        }
        Ok(Self { keys })
    }

    /// Whether the set has a key with this id.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// Checks structure and signature and returns the claims, without
    /// checking expiry, audience or binding (see [`check`]).
    pub fn verify_signature(&self, token: &str) -> Result<Claims, Error> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Error::Malformed("too long"));
        }
        let mut parts = token.splitn(3, '.');
        let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Error::Malformed("expected three dot-separated parts"));
        };
        let header: Header = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(Error::Malformed("header is not base64url JSON"))?;
        if header.alg != "ES256" {
            return Err(Error::Algorithm);
        }
        if !header.typ.eq_ignore_ascii_case(TYP)
            && !header.typ.eq_ignore_ascii_case("application/at+jwt")
        {
            return Err(Error::Malformed("typ is not at+jwt"));
        }
        let key = self
            .keys
            .get(&header.kid)
            .ok_or_else(|| Error::UnknownKey(header.kid.clone()))?;
        let sig = B64
            .decode(s)
            .map_err(|_| Error::Malformed("signature is not base64url"))?;
        let signed = &token[..h.len() + 1 + p.len()];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key)
            .verify(signed.as_bytes(), &sig)
            .map_err(|_| Error::BadSignature)?;
        let payload = B64
            .decode(p)
            .map_err(|_| Error::Malformed("payload is not base64url"))?;
        serde_json::from_slice(&payload)
            .map_err(|_| Error::Malformed("payload is not the expected claims"))
    }
}

/// Checks the time-, audience- and binding-dependent claims.
pub fn check(claims: &Claims, expect: &Expect<'_>) -> Result<(), Error> {
    if claims.iss != expect.issuer {
        return Err(Error::WrongIssuer(claims.iss.clone()));
    }
    if claims.aud != expect.audience {
        return Err(Error::WrongAudience(claims.aud.clone()));
    }
    if expect.now >= claims.exp {
        return Err(Error::Expired(claims.exp));
    }
    if claims.iat > expect.now + expect.leeway {
        return Err(Error::NotYetValid);
    }
    if !expect.thumbprints.iter().any(|t| *t == claims.cnf.x5t_s256) {
        return Err(Error::KeyBinding);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
