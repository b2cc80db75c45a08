//! Outbound webhooks as the Standard Webhooks specification has them:
//! `webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64>`
//! over `{id}.{timestamp}.{body}`, HMAC-SHA256 keyed by the base64-decoded
//! part of a `whsec_` secret, one signature per live key (rotation).
//!
//! The published test vector is `standard_webhooks_published_vector`; the
//! end-to-end tests verify every delivery with the official
//! `standardwebhooks` npm library (`tests/tests/e2e_webhooks.rs`).

use crate::clock::UnixTime;
use crate::crypto::random_bytes;
use crate::error::ApiError;
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

/// Random bytes in a new signing secret (the specification asks for 24 to 64).
pub const SECRET_BYTES: usize = 32;

/// A new `whsec_` signing secret.
pub fn new_secret() -> SecretString {
    SecretString::from(format!(
        "whsec_{}",
        STANDARD.encode(random_bytes(SECRET_BYTES))
    ))
}

/// The HMAC key of a `whsec_` secret; `None` if it is not one.
fn key_of(secret: &SecretString) -> Option<hmac::Key> {
    let b64 = secret.expose_secret().strip_prefix("whsec_")?;
    let raw = STANDARD.decode(b64).ok()?;
    Some(hmac::Key::new(hmac::HMAC_SHA256, &raw))
}

/// `v1,<base64 HMAC>` of one delivery under one secret.
pub fn sign(secret: &SecretString, id: &str, timestamp: UnixTime, body: &[u8]) -> Option<String> {
    let key = key_of(secret)?;
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    Some(format!("v1,{}", STANDARD.encode(ctx.sign().as_ref())))
}

/// One signing key and until when it signs (`None`: the current key).
#[derive(Clone, Serialize, Deserialize)]
pub struct SigningKey {
    #[serde(serialize_with = "crate::model::expose")]
    pub secret: SecretString,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<UnixTime>,
}

/// What an endpoint's secret holds: its current key first, then keys that
/// still sign during a rotation's overlap.
#[derive(Clone, Serialize, Deserialize)]
pub struct SigningKeys {
    pub keys: Vec<SigningKey>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKeys({} keys, [REDACTED])", self.keys.len())
    }
}

impl SigningKeys {
    pub fn new(secret: SecretString) -> Self {
        SigningKeys {
            keys: vec![SigningKey {
                secret,
                until: None,
            }],
        }
    }

    /// A rotation: `secret` becomes current; the old current key signs
    /// until `overlap_until`; keys whose overlap ended are dropped.
    pub fn rotated(&self, secret: SecretString, now: UnixTime, overlap_until: UnixTime) -> Self {
        let mut keys = vec![SigningKey {
            secret,
            until: None,
        }];
        for k in &self.keys {
            let until = k.until.unwrap_or(overlap_until);
            if until > now {
                keys.push(SigningKey {
                    secret: k.secret.clone(),
                    until: Some(until.min(overlap_until)),
                });
            }
        }
        SigningKeys { keys }
    }

    /// The `webhook-signature` header: one `v1,` signature per live key.
    pub fn signature_header(
        &self,
        now: UnixTime,
        id: &str,
        timestamp: UnixTime,
        body: &[u8],
    ) -> Option<String> {
        let sigs: Vec<String> = self
            .keys
            .iter()
            .filter(|k| k.until.is_none_or(|u| u > now))
            .filter_map(|k| sign(&k.secret, id, timestamp, body))
            .collect();
        (!sigs.is_empty()).then(|| sigs.join(" "))
    }

    pub fn parse(text: &str) -> Result<Self, ApiError> {
        serde_json::from_str(text)
            .map_err(|_| ApiError::Unexpected("webhook signing keys unreadable".into()))
    }

    pub fn to_secret(&self) -> SecretString {
        SecretString::from(serde_json::to_string(self).expect("keys serialize"))
    }
}

/// Waits before each retry of a failed delivery, in seconds: the Standard
/// Webhooks schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: about 27.6 h
/// after the first attempt, 8 attempts in all).
pub const DEFAULT_SCHEDULE: [u64; ATTEMPTS as usize - 1] =
    [5, 300, 1800, 7200, 18000, 36000, 36000];

/// The longest one wait can be: SQS's visibility timeout limit (12 h,
/// counted from when the message was received), less the time a delivery
/// may already have taken (the function's 120 s timeout, with margin).
pub const MAX_WAIT_SECONDS: u64 = 43_200 - 300;

/// The retry schedule of deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(pub Vec<u64>);

/// Attempts per delivery: the delivery queue's `maxReceiveCount` in
/// template.yaml (`the_queues_max_receive_count_is_the_schedules_attempts`).
pub const ATTEMPTS: u32 = 8;

impl Default for Schedule {
    fn default() -> Self {
        Schedule(DEFAULT_SCHEDULE.to_vec())
    }
}

impl Schedule {
    /// `5,300,1800`: seconds before each retry.
    pub fn parse(s: &str) -> Result<Self, String> {
        let waits = s
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("{p:?} is no number of seconds"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if waits.iter().any(|w| *w == 0 || *w > MAX_WAIT_SECONDS) {
            return Err(format!("each wait must be 1..={MAX_WAIT_SECONDS} seconds"));
        }
        // The queue moves a message to the DLQ on its ATTEMPTS+1st receive:
        // a shorter schedule would spin finished messages until then, a
        // longer one be cut short.
        if waits.len() + 1 != ATTEMPTS as usize {
            return Err(format!(
                "{} waits given; the delivery queue's maxReceiveCount is {ATTEMPTS}, so list {}",
                waits.len(),
                ATTEMPTS - 1
            ));
        }
        Ok(Schedule(waits))
    }

    /// Attempts in all, the first included.
    pub fn attempts(&self) -> u32 {
        self.0.len() as u32 + 1
    }

    /// The wait after failed attempt `attempt` (1-based), jittered by up to
    /// a fifth either way, at least what the receiver's `Retry-After` asked
    /// for; `None` when that was the last attempt.
    pub fn next_wait(&self, attempt: u32, retry_after: Option<u64>, jitter: f64) -> Option<u64> {
        let base = *self.0.get(attempt.checked_sub(1)? as usize)?;
        let jittered = (base as f64 * (1.0 + 0.2 * jitter.clamp(-1.0, 1.0))).round() as u64;
        Some(
            jittered
                .max(1)
                .max(retry_after.unwrap_or(0))
                .min(MAX_WAIT_SECONDS),
        )
    }
}

/// Parses an endpoint URL: https (http only to loopback in local
/// development), no user info or fragment, at most 2048 characters, a host
/// the network guard allows.
pub fn parse_endpoint_url(raw: &str, allow_loopback: bool) -> Result<Url, ApiError> {
    let bad = |why: &str| ApiError::InvalidRequest(format!("url: {why}"));
    if raw.len() > 2048 {
        return Err(bad("at most 2048 characters"));
    }
    let url = Url::parse(raw).map_err(|_| bad("not an absolute URL"))?;
    let loopback_http =
        url.scheme() == "http" && allow_loopback && providers::netguard::is_loopback_url(&url);
    if url.scheme() != "https" && !loopback_http {
        return Err(bad("must be https"));
    }
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(bad("no user info or fragment"));
    }
    crate::netguard::check_url(&url, allow_loopback).map_err(|e| bad(&e))?;
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_published_vector() {
        let secret = SecretString::from("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
        let sig = sign(
            &secret,
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(
            sig.as_deref(),
            Some("v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=")
        );
    }

    #[test]
    fn a_rotation_signs_with_both_keys_until_the_overlap_ends() {
        let old = SigningKeys::new(SecretString::from("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"));
        let rotated = old.rotated(new_secret(), 100, 200);
        let header = rotated.signature_header(150, "m", 1, b"{}").unwrap();
        assert_eq!(header.split(' ').count(), 2, "{header}");
        let header = rotated.signature_header(200, "m", 1, b"{}").unwrap();
        assert_eq!(
            header.split(' ').count(),
            1,
            "the old key stops at the overlap's end"
        );
        // A second rotation drops keys whose overlap ended.
        assert_eq!(rotated.rotated(new_secret(), 250, 300).keys.len(), 2);
        assert!(!format!("{rotated:?}").contains("whsec_"));
    }

    #[test]
    fn new_secrets_are_whsec_with_32_random_bytes() {
        let s = new_secret();
        let b64 = s.expose_secret().strip_prefix("whsec_").unwrap();
        assert_eq!(STANDARD.decode(b64).unwrap().len(), SECRET_BYTES);
        assert_ne!(s.expose_secret(), new_secret().expose_secret());
    }

    #[test]
    fn the_schedule_spans_a_day_and_honours_retry_after() {
        let s = Schedule::default();
        let total: u64 = (1..s.attempts())
            .map(|a| s.next_wait(a, None, 0.0).unwrap())
            .sum();
        assert!(total > 86_400, "{total}");
        assert_eq!(s.next_wait(s.attempts(), None, 0.0), None);
        assert_eq!(s.next_wait(1, Some(60), 0.0), Some(60));
        assert_eq!(
            s.next_wait(1, Some(10_000_000), 0.0),
            Some(MAX_WAIT_SECONDS)
        );
        assert_eq!(s.next_wait(2, None, 1.0), Some(360));
        assert_eq!(s.next_wait(2, None, -1.0), Some(240));
        assert_eq!(s.attempts(), ATTEMPTS);
        assert!(Schedule::parse("1,0,1,1,1,1,1").is_err());
        assert!(
            Schedule::parse("1,2").is_err(),
            "fewer attempts than the queue's"
        );
        assert!(Schedule::parse("1,1,1,1,1,1,1,1").is_err(), "more");
        assert_eq!(
            Schedule::parse("1, 2,3,4,5,6,7").unwrap(),
            Schedule(vec![1, 2, 3, 4, 5, 6, 7])
        );
    }

    #[test]
    fn endpoint_urls_are_https_and_pass_the_guard() {
        assert!(parse_endpoint_url("https://hooks.example.com/x", false).is_ok());
        assert!(parse_endpoint_url("http://hooks.example.com/x", false).is_err());
        assert!(parse_endpoint_url("http://127.0.0.1:9/x", true).is_ok());
        assert!(parse_endpoint_url("https://169.254.169.254/latest", false).is_err());
        assert!(parse_endpoint_url("https://u:p@hooks.example.com/", false).is_err());
        assert!(parse_endpoint_url("https://hooks.example.com/#f", false).is_err());
    }
}
