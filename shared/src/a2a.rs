//! Agent-to-agent message envelopes: the canonical byte encoding that the
//! HMAC covers, signing and verifying with a pairwise key, and the
//! derivation of pairwise keys from the control plane's messaging secret.
//!
//! The encoding is specified in the README ("Message envelope
//! specification") with a test vector; [`tests`] checks that vector, so the
//! two cannot drift apart.

use std::fmt;

use ring::hmac;

use crate::proto::v1 as pb;
use crate::spiffe::SpiffeId;

/// The envelope format this build writes and reads.
pub const VERSION: u32 = 1;
/// Random bytes in a nonce.
pub const NONCE_BYTES: usize = 16;
/// Bytes of a MAC (HMAC-SHA256).
pub const MAC_BYTES: usize = 32;
/// Bytes of a pairwise key.
pub const KEY_BYTES: usize = 32;
/// Largest payload any policy may allow.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Longest content type.
pub const MAX_CONTENT_TYPE_BYTES: usize = 128;
/// Longest SPIFFE ID in an envelope.
pub const MAX_ID_BYTES: usize = 2048;

/// Domain separation for the MAC input.
const MAC_LABEL: &[u8] = b"warden-a2a-v1";
/// Domain separation for pair-key derivation.
const PAIR_LABEL: &[u8] = b"warden-a2a-pair-v1";

/// Why an envelope cannot even be checked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Malformed {
    /// Another envelope format.
    #[error("envelope version {0} is not supported (expected {VERSION})")]
    Version(u32),
    /// A SPIFFE ID field does not parse.
    #[error("{field} is not a SPIFFE ID: {detail}")]
    Id {
        /// `sender` or `recipient`.
        field: &'static str,
        /// Why.
        detail: String,
    },
    /// A field has the wrong size.
    #[error("{field} must be {expected} bytes, got {got}")]
    Size {
        /// The field.
        field: &'static str,
        /// The size it must have (or its maximum).
        expected: usize,
        /// What it has.
        got: usize,
    },
}

/// A pairwise HMAC key. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct PairKey([u8; KEY_BYTES]);

impl fmt::Debug for PairKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairKey([redacted])")
    }
}

impl PairKey {
    /// Wraps key bytes; `None` unless exactly [`KEY_BYTES`].
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; KEY_BYTES]>::try_from(b).ok().map(Self)
    }

    /// The key bytes (to push to a sidecar; never log them).
    pub fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    fn hmac(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.0)
    }
}

/// The control plane's messaging secret, from which every pair key is
/// derived. `Debug` never prints it.
#[derive(Clone)]
pub struct MasterKey(hmac::Key);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

fn put(out: &mut Vec<u8>, field: &[u8]) {
    // Fields are bounded far below 64 KiB (checked before encoding).
    let len = u16::try_from(field.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(field);
}

impl MasterKey {
    /// Wraps secret bytes (at least 32).
    pub fn new(secret: &[u8]) -> Option<Self> {
        (secret.len() >= KEY_BYTES).then(|| Self(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }

    /// The key for messages from `sender` to `recipient` in `epoch` of a
    /// rotation period of `rotation_ms`:
    /// `HMAC-SHA256(secret, "warden-a2a-pair-v1" || len16 sender || sender
    /// || len16 recipient || recipient || u64 rotation_ms || u64 epoch)`.
    pub fn pair_key(
        &self,
        sender: &SpiffeId,
        recipient: &SpiffeId,
        rotation_ms: u64,
        epoch: u64,
    ) -> PairKey {
        let mut input = Vec::with_capacity(160);
        input.extend_from_slice(PAIR_LABEL);
        put(&mut input, sender.to_string().as_bytes());
        put(&mut input, recipient.to_string().as_bytes());
        input.extend_from_slice(&rotation_ms.to_be_bytes());
        input.extend_from_slice(&epoch.to_be_bytes());
        let tag = hmac::sign(&self.0, &input);
        let mut k = [0u8; KEY_BYTES];
        k.copy_from_slice(tag.as_ref());
        PairKey(k)
    }
}

/// An envelope whose fields are well formed (not yet verified).
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Who signed it.
    pub sender: SpiffeId,
    /// Who it is for.
    pub recipient: SpiffeId,
    /// When it was signed, unix milliseconds.
    pub timestamp_ms: i64,
    /// Random; each (sender, nonce) is accepted once.
    pub nonce: [u8; NONCE_BYTES],
    /// The key epoch used.
    pub key_id: u64,
    /// The payload's media type (may be empty).
    pub content_type: String,
    /// The message.
    pub payload: Vec<u8>,
    /// HMAC-SHA256 over [`Envelope::signed_bytes`].
    pub mac: [u8; MAC_BYTES],
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The payload is the agents' data: never in a log line.
        f.debug_struct("Envelope")
            .field("sender", &self.sender.to_string())
            .field("recipient", &self.recipient.to_string())
            .field("timestamp_ms", &self.timestamp_ms)
            .field("key_id", &self.key_id)
            .field("payload_bytes", &self.payload.len())
            .finish_non_exhaustive()
    }
}

impl Envelope {
    /// The canonical bytes the MAC covers:
    /// `"warden-a2a-v1" || u8 version || len16 sender || sender || len16
    /// recipient || recipient || i64 timestamp_ms || nonce (16) || u64
    /// key_id || len16 content_type || content_type || SHA-256(payload)`,
    /// integers big-endian, lengths as u16.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(MAC_LABEL);
        out.push(u8::try_from(VERSION).unwrap_or(u8::MAX));
        put(&mut out, self.sender.to_string().as_bytes());
        put(&mut out, self.recipient.to_string().as_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.key_id.to_be_bytes());
        put(&mut out, self.content_type.as_bytes());
        out.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, &self.payload).as_ref());
        out
    }

    /// Signs: fills in the MAC.
    pub fn sign(mut self, key: &PairKey) -> Self {
        let tag = hmac::sign(&key.hmac(), &self.signed_bytes());
        self.mac.copy_from_slice(tag.as_ref());
        self
    }

    /// Whether the MAC is right for `key` (constant-time comparison).
    pub fn mac_verifies(&self, key: &PairKey) -> bool {
        hmac::verify(&key.hmac(), &self.signed_bytes(), &self.mac).is_ok()
    }
}

fn spiffe(field: &'static str, s: &str) -> Result<SpiffeId, Malformed> {
    if s.len() > MAX_ID_BYTES {
        return Err(Malformed::Size {
            field,
            expected: MAX_ID_BYTES,
            got: s.len(),
        });
    }
    SpiffeId::parse(s).map_err(|e| Malformed::Id {
        field,
        detail: e.to_string(),
    })
}

fn exact<const N: usize>(field: &'static str, b: &[u8]) -> Result<[u8; N], Malformed> {
    <[u8; N]>::try_from(b).map_err(|_| Malformed::Size {
        field,
        expected: N,
        got: b.len(),
    })
}

impl TryFrom<&pb::Envelope> for Envelope {
    type Error = Malformed;

    fn try_from(e: &pb::Envelope) -> Result<Self, Malformed> {
        if e.version != VERSION {
            return Err(Malformed::Version(e.version));
        }
        let at_most = |field, max: usize, got: usize| {
            if got > max {
                Err(Malformed::Size {
                    field,
                    expected: max,
                    got,
                })
            } else {
                Ok(())
            }
        };
        at_most("payload", MAX_PAYLOAD_BYTES, e.payload.len())?;
        at_most("content_type", MAX_CONTENT_TYPE_BYTES, e.content_type.len())?;
        Ok(Self {
            sender: spiffe("sender", &e.sender)?,
            recipient: spiffe("recipient", &e.recipient)?,
            timestamp_ms: e.timestamp_ms,
            nonce: exact("nonce", &e.nonce)?,
            key_id: e.key_id,
            content_type: e.content_type.clone(),
            payload: e.payload.clone(),
            mac: exact("mac", &e.mac)?,
        })
    }
}

impl From<&Envelope> for pb::Envelope {
    fn from(e: &Envelope) -> Self {
        Self {
            version: VERSION,
            sender: e.sender.to_string(),
            recipient: e.recipient.to_string(),
            timestamp_ms: e.timestamp_ms,
            nonce: e.nonce.to_vec(),
            key_id: e.key_id,
            content_type: e.content_type.clone(),
            payload: e.payload.clone(),
            mac: e.mac.to_vec(),
        }
    }
}

/// The epoch of `at_ms` for a rotation period.
pub fn epoch_of(at_ms: i64, rotation_ms: u64) -> u64 {
    u64::try_from(at_ms).unwrap_or(0) / rotation_ms.max(1)
}

#[cfg(test)]
mod tests;
