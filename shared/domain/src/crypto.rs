//! Random tokens, one-way hashes and constant-time comparison.
//!
//! Everything that is handed to a browser or a backend (session tokens,
//! state, binding cookies, API keys) is stored only as its SHA-256, so a
//! read of the table never yields a usable credential.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;

/// Fills `buf` from the operating system's random source, through
/// aws-lc-rs (the one crypto library the broker links).
fn fill(buf: &mut [u8]) {
    aws_lc_rs::rand::fill(buf).expect("the operating system's random source");
}

/// A uniformly random integer in `low..=high`, for retry jitter (not
/// secrets; the modulo bias of 64 random bits over a range of milliseconds
/// is nil in practice).
pub fn random_in(low: u64, high: u64) -> u64 {
    if high <= low {
        return low;
    }
    let mut b = [0u8; 8];
    fill(&mut b);
    low + u64::from_le_bytes(b) % (high - low + 1)
}

/// A random number in `-1.0..=1.0`, for jitter.
pub fn random_unit_signed() -> f64 {
    let mut b = [0u8; 8];
    fill(&mut b);
    // 53 random bits as a fraction of 2^53, then scaled to -1..=1.
    let x = (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
    x * 2.0 - 1.0
}

/// `bytes` of OS randomness, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    fill(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// `bytes` of OS randomness, lower-case hex.
pub fn random_bytes_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    fill(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// `bytes` of OS randomness.
pub fn random_bytes(bytes: usize) -> Vec<u8> {
    let mut buf = vec![0u8; bytes];
    fill(&mut buf);
    buf
}

/// Lower-case hex SHA-256 of `input`.
pub fn sha256_hex(input: &str) -> String {
    sha256_hex_bytes(input.as_bytes())
}

/// Lower-case hex SHA-256 of raw bytes.
pub fn sha256_hex_bytes(input: &[u8]) -> String {
    let digest = sha256(input);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// SHA-256 of raw bytes.
pub fn sha256(input: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, input);
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// A PKCE pair (RFC 7636, `S256`): the verifier, 32 random bytes as
/// base64url (43 characters), and its challenge, the base64url SHA-256 of
/// the verifier (`pkce_challenge_matches_rfc_7636_appendix_b`).
pub fn pkce_pair() -> (String, String) {
    let verifier = random_token(32);
    let challenge = pkce_challenge(&verifier);
    (verifier, challenge)
}

/// The `S256` challenge of `verifier`.
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha256(verifier.as_bytes()))
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
    fn pkce_challenge_matches_rfc_7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let (verifier, challenge) = pkce_pair();
        assert_eq!(verifier.len(), 43);
        assert_eq!(challenge, pkce_challenge(&verifier));
        assert_ne!(pkce_pair().0, verifier);
    }

    #[test]
    fn random_in_stays_in_its_range_and_varies() {
        let xs: Vec<u64> = (0..200).map(|_| random_in(50, 60)).collect();
        assert!(xs.iter().all(|x| (50..=60).contains(x)));
        assert!(xs.iter().any(|x| *x != xs[0]));
        assert_eq!(random_in(7, 7), 7);
        assert_eq!(random_in(9, 3), 9);
        let us: Vec<f64> = (0..200).map(|_| random_unit_signed()).collect();
        assert!(us.iter().all(|u| (-1.0..=1.0).contains(u)));
        assert!(us.iter().any(|u| *u < 0.0) && us.iter().any(|u| *u > 0.0));
    }

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
