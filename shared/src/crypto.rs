//! Random tokens, one-way hashes and constant-time comparison.
//!
//! Everything that is handed to a browser or a backend (session tokens,
//! state, binding cookies, API keys) is stored only as its SHA-256, so a
//! read of the table never yields a usable credential.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// `bytes` of OS randomness, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// `bytes` of OS randomness, lower-case hex.
pub fn random_bytes_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// `bytes` of OS randomness.
pub fn random_bytes(bytes: usize) -> Vec<u8> {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    buf
}

/// Lower-case hex SHA-256 of `input`.
pub fn sha256_hex(input: &str) -> String {
    sha256_hex_bytes(input.as_bytes())
}

/// Lower-case hex SHA-256 of raw bytes.
pub fn sha256_hex_bytes(input: &[u8]) -> String {
    let digest = Sha256::digest(input);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A secret version's name (Secrets Manager's `ClientRequestToken`: 32 hex
/// characters) derived from `seed`, so a retried write names the same version.
pub fn version_token(seed: &str) -> String {
    sha256_hex(seed)[..32].to_string()
}

/// Compares two strings without leaking where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_token_has_requested_entropy_and_differs() {
        let a = random_token(32);
        let b = random_token(32);
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
    }

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn constant_time_eq_compares_content_and_length() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
    }
}
