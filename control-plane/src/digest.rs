//! Content digests of pushed parts and key sets: the first 8 bytes of a
//! SHA-256 over a canonical encoding, never 0 (which means "nothing held").

/// Digest of a canonical encoding.
pub fn digest(bytes: &[u8]) -> u64 {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(b).max(1)
}
