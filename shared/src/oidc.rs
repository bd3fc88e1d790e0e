//! Users' ID tokens from a trusted OpenID Connect provider (issue 17):
//! the provider's JWK Set and the verification of a token it issued —
//! signature by a key of the set, `alg` from the provider's allow-list,
//! `iss`, `aud`, `exp`, `nbf` and `iat` within a bounded clock skew, and a
//! subject.
//!
//! Only asymmetric algorithms are ever accepted (RS256/384/512, PS256,
//! ES256, ES384, EdDSA): `none` and the HMAC family are refused before any
//! key is looked at, so a token "signed" with the provider's public key as
//! an HMAC secret cannot pass. A key is used only for the algorithm its
//! type serves, and a `kid` the set does not hold is its own error, so the
//! caller can fetch the set again once ([`Error::UnknownKey`]).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;

/// Longest user token accepted.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Most keys read from one JWK Set.
pub const MAX_KEYS: usize = 64;
/// Largest clock skew a provider may be configured with, seconds.
pub const MAX_SKEW_SECS: i64 = 300;
/// Longest subject accepted.
pub const MAX_SUBJECT_LEN: usize = 256;

/// A signature algorithm Warden accepts for user tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
    /// Ed25519.
    EdDsa,
}

impl Alg {
    /// The JOSE name, or `None` for one Warden never accepts (`none`,
    /// `HS256`, …, or unknown).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "EdDSA" => Self::EdDsa,
            _ => return None,
        })
    }

    /// The key type (`kty`) that serves it.
    fn kty(self) -> &'static str {
        match self {
            Self::Rs256 | Self::Rs384 | Self::Rs512 | Self::Ps256 => "RSA",
            Self::Es256 | Self::Es384 => "EC",
            Self::EdDsa => "OKP",
        }
    }
}

/// Why a user token (or a provider's JWK Set) was refused. The messages
/// name what failed, never the token.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// Not a compact JWS of base64url JSON, or too long.
    #[error("the user token is malformed: {0}")]
    Malformed(&'static str),
    /// `alg` is `none`, symmetric, unknown, or not in the provider's list.
    #[error("the user token's algorithm {0:?} is not accepted from this provider")]
    Algorithm(String),
    /// No key of the set has this `kid` (the set may need fetching again).
    #[error("the user token is signed with a key the provider does not publish (kid {0:?})")]
    UnknownKey(String),
    /// The signature does not verify with the provider's key.
    #[error("the user token's signature does not verify")]
    BadSignature,
    /// `iss` is not the provider.
    #[error("the user token was issued by {0:?}, not by this provider")]
    WrongIssuer(String),
    /// `aud` names none of the accepted audiences.
    #[error("the user token is not meant for Warden (audience {0:?})")]
    WrongAudience(String),
    /// `exp` has passed (beyond the skew), or is missing.
    #[error("the user token has expired")]
    Expired,
    /// `nbf` or `iat` is in the future beyond the skew.
    #[error("the user token is not valid yet")]
    NotYetValid,
    /// No `sub`, or one too long.
    #[error("the user token names no usable subject")]
    Subject,
    /// The JWK Set is not usable.
    #[error("the provider's JWK Set is not usable: {0}")]
    Jwks(String),
}

/// One public key of a provider.
#[derive(Debug, Clone)]
struct Key {
    kid: Option<String>,
    kty: &'static str,
    /// `alg` as the set declares it, if it does.
    alg: Option<Alg>,
    /// RSA: (n, e); EC: the uncompressed point; OKP: the public key.
    material: Material,
}

#[derive(Debug, Clone)]
enum Material {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec { curve: &'static str, point: Vec<u8> },
    Ed25519(Vec<u8>),
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

/// A provider's published keys (its `jwks_uri` document).
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    keys: Vec<Key>,
}

fn b64(v: &serde_json::Value, field: &str) -> Result<Vec<u8>, Error> {
    v.get(field)
        .and_then(serde_json::Value::as_str)
        .and_then(|s| B64.decode(s.trim_end_matches('=')).ok())
        .ok_or_else(|| Error::Jwks(format!("a key's {field} is not base64url")))
}

impl Jwks {
    /// Reads a JWK Set document. Keys for signing (`use` absent or `sig`)
    /// of a supported type are kept; others (encryption keys, symmetric
    /// keys, unknown curves) are skipped. A set with no usable key, more
    /// than [`MAX_KEYS`] keys, or a malformed key of a supported type is
    /// refused.
    pub fn parse(json: &[u8]) -> Result<Self, Error> {
        let raw: RawSet =
            serde_json::from_slice(json).map_err(|e| Error::Jwks(format!("not a JWK Set: {e}")))?;
        if raw.keys.len() > MAX_KEYS {
            return Err(Error::Jwks(format!("more than {MAX_KEYS} keys")));
        }
        let mut keys = Vec::new();
        for k in &raw.keys {
            let s = |f: &str| k.get(f).and_then(serde_json::Value::as_str);
            if s("use").is_some_and(|u| u != "sig") {
                continue;
            }
            let alg = match s("alg") {
                Some(a) => match Alg::parse(a) {
                    Some(a) => Some(a),
                    None => continue,
                },
                None => None,
            };
            let kid = s("kid").map(str::to_owned);
            let (kty, material) = match s("kty") {
                Some("RSA") => {
                    let n = b64(k, "n")?;
                    let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
                    if !(2048..=8192).contains(&bits) {
                        return Err(Error::Jwks(format!(
                            "an RSA key of {bits} bits (2048 to 8192 accepted)"
                        )));
                    }
                    ("RSA", Material::Rsa { n, e: b64(k, "e")? })
                }
                Some("EC") => {
                    let (curve, len) = match s("crv") {
                        Some("P-256") => ("P-256", 32),
                        Some("P-384") => ("P-384", 48),
                        _ => continue,
                    };
                    let (x, y) = (b64(k, "x")?, b64(k, "y")?);
                    if x.len() != len || y.len() != len {
                        return Err(Error::Jwks(format!("an {curve} key of the wrong size")));
                    }
                    let mut point = vec![4];
                    point.extend(x);
                    point.extend(y);
                    ("EC", Material::Ec { curve, point })
                }
                Some("OKP") if s("crv") == Some("Ed25519") => {
                    let x = b64(k, "x")?;
                    if x.len() != 32 {
                        return Err(Error::Jwks("an Ed25519 key of the wrong size".into()));
                    }
                    ("OKP", Material::Ed25519(x))
                }
                _ => continue,
            };
            keys.push(Key {
                kid,
                kty,
                alg,
                material,
            });
        }
        if keys.is_empty() {
            return Err(Error::Jwks("no usable signing key".into()));
        }
        Ok(Self { keys })
    }

    /// Whether the set holds a key with this id.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// What a provider's tokens are held to.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// The provider's issuer identifier, compared exactly.
    pub issuer: &'a str,
    /// Audiences of which `aud` must name one.
    pub audiences: &'a [String],
    /// The algorithms accepted from this provider.
    pub algorithms: &'a [Alg],
    /// Clock skew allowed on `exp`, `nbf` and `iat`, seconds.
    pub skew_secs: i64,
    /// Now, unix seconds.
    pub now: i64,
}

/// A verified user token's claims.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// `exp`.
    pub expires_at: i64,
    /// Every claim, for the configuration to map (groups, tier…).
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl User {
    /// The user as Warden names it: issuer-qualified, so two providers'
    /// subjects never collide (`<iss>#<sub>`).
    pub fn qualified(&self) -> String {
        format!("{}#{}", self.issuer, self.subject)
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

fn number(claims: &serde_json::Map<String, serde_json::Value>, k: &str) -> Option<i64> {
    claims.get(k).and_then(|v| {
        v.as_i64()
            .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
    })
}

/// The `iss` a token claims, read without verifying anything: only to
/// choose which provider's keys and rules to verify it with.
pub fn claimed_issuer(token: &str) -> Result<String, Error> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(Error::Malformed("too long"));
    }
    let payload = token
        .split('.')
        .nth(1)
        .ok_or(Error::Malformed("not three dot-separated parts"))?;
    #[derive(Deserialize)]
    struct Iss {
        #[serde(default)]
        iss: Option<serde_json::Value>,
    }
    let claims: Iss = B64
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(Error::Malformed("the payload is not base64url JSON"))?;
    match claims.iss {
        Some(serde_json::Value::String(s)) => Ok(s),
        _ => Err(Error::WrongIssuer(String::new())),
    }
}

/// Verifies `token` against the provider's `keys` and `expect`.
pub fn verify(token: &str, keys: &Jwks, expect: &Expect<'_>) -> Result<User, Error> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(Error::Malformed("too long"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::Malformed("not three dot-separated parts"));
    };
    let header: Header = B64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(Error::Malformed("the header is not base64url JSON"))?;
    let alg = Alg::parse(&header.alg)
        .filter(|a| expect.algorithms.contains(a))
        .ok_or_else(|| Error::Algorithm(header.alg.chars().take(32).collect()))?;
    // The key: by kid when the token names one, else the only key that
    // serves the algorithm.
    let fits = |k: &&Key| k.kty == alg.kty() && k.alg.is_none_or(|a| a == alg);
    let key = match &header.kid {
        Some(kid) => keys
            .keys
            .iter()
            .filter(fits)
            .find(|k| k.kid.as_deref() == Some(kid.as_str()))
            .ok_or_else(|| Error::UnknownKey(kid.chars().take(128).collect()))?,
        None => {
            let mut candidates = keys.keys.iter().filter(fits);
            match (candidates.next(), candidates.next()) {
                (Some(k), None) => k,
                _ => return Err(Error::UnknownKey(String::new())),
            }
        }
    };
    let sig = B64
        .decode(s)
        .map_err(|_| Error::Malformed("the signature is not base64url"))?;
    let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
    let ok = match (&key.material, alg) {
        (Material::Rsa { n, e }, a) => {
            let params = match a {
                Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                Alg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                Alg::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                _ => &signature::RSA_PSS_2048_8192_SHA256,
            };
            signature::RsaPublicKeyComponents { n, e }
                .verify(params, signed, &sig)
                .is_ok()
        }
        (Material::Ec { curve, point }, a) => {
            let params = match (a, *curve) {
                (Alg::Es256, "P-256") => &signature::ECDSA_P256_SHA256_FIXED,
                (Alg::Es384, "P-384") => &signature::ECDSA_P384_SHA384_FIXED,
                _ => return Err(Error::BadSignature),
            };
            UnparsedPublicKey::new(params, point)
                .verify(signed, &sig)
                .is_ok()
        }
        (Material::Ed25519(x), _) => UnparsedPublicKey::new(&signature::ED25519, x)
            .verify(signed, &sig)
            .is_ok(),
    };
    if !ok {
        return Err(Error::BadSignature);
    }
    let claims: serde_json::Map<String, serde_json::Value> = B64
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(Error::Malformed("the payload is not base64url JSON"))?;
    let str_claim = |k: &str| claims.get(k).and_then(serde_json::Value::as_str);
    let iss = str_claim("iss").unwrap_or_default();
    if iss != expect.issuer {
        return Err(Error::WrongIssuer(iss.chars().take(256).collect()));
    }
    let aud: Vec<&str> = match claims.get("aud") {
        Some(serde_json::Value::String(a)) => vec![a.as_str()],
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
        _ => Vec::new(),
    };
    if !aud.iter().any(|a| expect.audiences.iter().any(|e| e == a)) {
        return Err(Error::WrongAudience(
            aud.join(" ").chars().take(256).collect(),
        ));
    }
    let skew = expect.skew_secs.clamp(0, MAX_SKEW_SECS);
    let exp = number(&claims, "exp").ok_or(Error::Expired)?;
    if expect.now >= exp.saturating_add(skew) {
        return Err(Error::Expired);
    }
    for k in ["nbf", "iat"] {
        if number(&claims, k).is_some_and(|t| t > expect.now.saturating_add(skew)) {
            return Err(Error::NotYetValid);
        }
    }
    let subject = str_claim("sub")
        .filter(|s| !s.is_empty() && s.len() <= MAX_SUBJECT_LEN && !s.chars().any(char::is_control))
        .ok_or(Error::Subject)?
        .to_owned();
    Ok(User {
        issuer: iss.to_owned(),
        subject,
        expires_at: exp,
        claims,
    })
}
