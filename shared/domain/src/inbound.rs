//! Provider webhooks in: how each provider signs the webhooks it sends,
//! as registry data ([`WebhookScheme`]), and the one verifier that reads it.
//!
//! Verification is over the raw body bytes, fails closed (a missing header,
//! timestamp or secret is a refusal, never a pass) and compares in constant
//! time (`aws_lc_rs::hmac::verify`). What a verified request says (its
//! delivery id, event type, the account it concerns, its payload) is read
//! only after the signature holds.
//!
//! Vectors: GitHub's and Slack's documented examples, and requests signed by
//! the providers' own SDKs (npm `stripe`, `twilio`, `@octokit/webhooks-methods`)
//! in `tests/tests/e2e_provider_webhooks.rs`; the unit tests below hold every
//! refusal.

use crate::clock::UnixTime;
use crate::model::Connection;
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
pub use providers::webhooks::*;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

/// The largest body accepted (GitHub caps payloads at 25 MB; the broker
/// keeps each event, payload included, in one table item of at most 400 KB).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Most signatures of one header tried (Stripe sends one per live secret).
const MAX_CANDIDATES: usize = 8;

/// Longest delivery id, event type or account value kept.
const MAX_FIELD_CHARS: usize = 256;

/// A provider's webhook as it arrived: what the signature may cover.
pub struct Inbound<'a> {
    pub method: &'a str,
    /// The public URL the provider posts to, with the query.
    pub url: &'a str,
    /// Header lookup by lower-case name.
    pub header: &'a (dyn Fn(&str) -> Option<String> + Sync),
    pub body: &'a [u8],
    pub form: bool,
}

/// Why a webhook was refused. Each is a 401 with its own stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the signature or its timestamp is missing")]
    Missing,
    #[error("the timestamp is outside the tolerance")]
    Stale,
    #[error("no signature matches")]
    Invalid,
}

/// What a verified webhook says.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The provider's delivery id, when it sends one.
    pub delivery_id: Option<String>,
    /// Hex SHA-256 of the raw body (of its JSON less the scheme's
    /// `dedupe_ignore` fields, where it has some): the second dedupe key. A
    /// delivery id in a header is not signed (GitHub's, Shopify's,
    /// Twilio's), so a captured request re-posted with a new one is still a
    /// duplicate.
    pub body_sha256: String,
    /// Hex SHA-256 of the message that was signed, where it is not the
    /// body's bytes (Twilio signs the URL and the *parsed* form): one more
    /// dedupe key, so the same signed request re-encoded (parameters
    /// reordered, `A` as `%41`) or with its fields' boundaries moved
    /// (Twilio's concatenation cannot tell them apart) is a duplicate.
    pub signed_sha256: Option<String>,
    pub event_type: Option<String>,
    pub account: Option<String>,
    /// The body as JSON, or the form's fields as an object.
    pub payload: Value,
    /// The answer to a URL-verification handshake.
    pub challenge: Option<String>,
}

fn decode(encoding: Encoding, s: &str) -> Option<Vec<u8>> {
    match encoding {
        Encoding::Hex => {
            if s.len() % 2 != 0 {
                return None;
            }
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
                .collect()
        }
        Encoding::Base64 => STANDARD.decode(s).ok(),
    }
}

/// The dedupe keys of a verified delivery: its delivery id (when the
/// provider sends one) and its body. Either seen before makes it a
/// duplicate.
pub fn dedupe_keys(v: &Verified) -> Vec<String> {
    let mut keys: Vec<String> = v
        .delivery_id
        .iter()
        .map(|id| format!("id:{}", crate::crypto::sha256_hex(id)))
        .collect();
    keys.push(format!("body:{}", v.body_sha256));
    keys.extend(v.signed_sha256.iter().map(|h| format!("signed:{h}")));
    keys
}

/// `v` without the `ignore` fields, at its top level or in each object of
/// a top-level array (its maps print with sorted keys: one text for one
/// content).
fn without_fields(v: &Value, ignore: &[String]) -> Value {
    let strip = |m: &Map<String, Value>| {
        Value::Object(
            m.iter()
                .filter(|(k, _)| !ignore.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    };
    match v {
        Value::Object(m) => strip(m),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| match i {
                    Value::Object(m) => strip(m),
                    other => other.clone(),
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// The verifier's view of a registry scheme (the type is the provider
/// crate's; the rules that read a request are the domain's).
struct Scheme<'a>(&'a WebhookScheme);

impl std::ops::Deref for Scheme<'_> {
    type Target = WebhookScheme;
    fn deref(&self) -> &WebhookScheme {
        self.0
    }
}

/// Verification of a request against a provider's [`WebhookScheme`].
pub trait Verify {
    /// See [`Scheme::verify`].
    fn verify(
        &self,
        secret: &SecretString,
        req: &Inbound,
        now: UnixTime,
    ) -> Result<Verified, Refusal>;
    /// The account a connection is, as this scheme's webhooks name it.
    fn connection_account(&self, c: &Connection) -> Option<String>;
}

impl Verify for WebhookScheme {
    fn verify(
        &self,
        secret: &SecretString,
        req: &Inbound,
        now: UnixTime,
    ) -> Result<Verified, Refusal> {
        Scheme(self).verify(secret, req, now)
    }
    fn connection_account(&self, c: &Connection) -> Option<String> {
        Scheme(self).connection_account(c)
    }
}

/// For the fuzz target of provider webhooks only: verifies `req`, then
/// reads what it says as if it had verified, so hostile input reaches
/// every reader.
#[doc(hidden)]
pub fn fuzz_verify_and_read(scheme: &WebhookScheme, secret: &SecretString, req: &Inbound) {
    let _ = Scheme(scheme).verify(secret, req, 1_800_000_000);
    let _ = Scheme(scheme).read(req);
}

impl Scheme<'_> {
    /// The timestamp (as sent) and the candidate signatures.
    fn signatures(&self, req: &Inbound) -> Result<(Option<String>, Vec<Vec<u8>>), Refusal> {
        let raw = (req.header)(&self.signature_header.to_ascii_lowercase())
            .filter(|v| !v.trim().is_empty())
            .ok_or(Refusal::Missing)?;
        let (timestamp, encoded): (Option<String>, Vec<String>) = match &self.signature_list {
            Some(list) => {
                let mut ts = None;
                let mut sigs = Vec::new();
                for part in raw.split(',') {
                    let Some((k, v)) = part.trim().split_once('=') else {
                        continue;
                    };
                    if k == list.timestamp {
                        ts = Some(v.to_string());
                    } else if k == list.signature {
                        sigs.push(v.to_string());
                    }
                }
                (Some(ts.ok_or(Refusal::Missing)?), sigs)
            }
            None => {
                let ts = match &self.timestamp_header {
                    Some(h) => Some(
                        (req.header)(&h.to_ascii_lowercase())
                            .filter(|v| !v.is_empty())
                            .ok_or(Refusal::Missing)?,
                    ),
                    None => None,
                };
                let sig = raw
                    .trim()
                    .strip_prefix(self.signature_prefix.as_str())
                    .ok_or(Refusal::Invalid)?;
                (ts, vec![sig.to_string()])
            }
        };
        let decoded: Vec<Vec<u8>> = encoded
            .iter()
            .take(MAX_CANDIDATES)
            .filter_map(|s| decode(self.encoding, s))
            .collect();
        if decoded.is_empty() {
            return Err(Refusal::Invalid);
        }
        Ok((timestamp, decoded))
    }

    fn check_time(&self, timestamp: Option<&str>, now: UnixTime) -> Result<(), Refusal> {
        let (Some(tolerance), Some(ts)) = (self.tolerance_seconds, timestamp) else {
            return Ok(());
        };
        let n: i64 = ts.trim().parse().map_err(|_| Refusal::Invalid)?;
        let secs = match self.timestamp_unit {
            TimestampUnit::Seconds => n,
            TimestampUnit::Milliseconds => n.div_euclid(1000),
        };
        // abs_diff: no overflow whatever the sender wrote.
        if now.abs_diff(secs) > tolerance.unsigned_abs() {
            return Err(Refusal::Stale);
        }
        Ok(())
    }

    /// The bytes the provider signed.
    fn signed_bytes(&self, req: &Inbound, timestamp: Option<&str>) -> Vec<u8> {
        let mut out = Vec::with_capacity(req.body.len() + 64);
        // Validated at load: the template parses.
        for p in pieces(&self.signed).unwrap_or_default() {
            match p {
                Piece::Text(t) => out.extend_from_slice(t.as_bytes()),
                Piece::Field("body") => out.extend_from_slice(req.body),
                Piece::Field("timestamp") => {
                    out.extend_from_slice(timestamp.unwrap_or("").as_bytes())
                }
                Piece::Field("method") => out.extend_from_slice(req.method.as_bytes()),
                Piece::Field("url") => out.extend_from_slice(req.url.as_bytes()),
                Piece::Field("sorted_form") if req.form => {
                    let mut pairs = form_pairs(req.body);
                    pairs.sort();
                    for (k, v) in pairs {
                        out.extend_from_slice(k.as_bytes());
                        out.extend_from_slice(v.as_bytes());
                    }
                }
                Piece::Field(_) => {}
            }
        }
        out
    }

    /// Verifies `req` with `secret` at `now`, then reads what it says.
    pub fn verify(
        &self,
        secret: &SecretString,
        req: &Inbound,
        now: UnixTime,
    ) -> Result<Verified, Refusal> {
        if secret.expose_secret().is_empty() {
            return Err(Refusal::Invalid);
        }
        let (timestamp, candidates) = self.signatures(req)?;
        self.check_time(timestamp.as_deref(), now)?;
        let alg = match self.algorithm {
            Algorithm::HmacSha256 => hmac::HMAC_SHA256,
            Algorithm::HmacSha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        };
        // A scheme that signs the form signs nothing of a body that is not
        // one (Twilio's JSON webhooks sign only the URL): refused.
        let signs_form = self.signed.contains("{sorted_form}");
        if signs_form && !req.form {
            return Err(Refusal::Invalid);
        }
        let key = hmac::Key::new(alg, secret.expose_secret().as_bytes());
        let message = self.signed_bytes(req, timestamp.as_deref());
        let tag = hmac::sign(&key, &message);
        // One HMAC, compared in constant time with every candidate (Stripe
        // signs with each live secret; at most MAX_CANDIDATES are read).
        let ok = candidates.iter().fold(false, |ok, sig| {
            bool::from(tag.as_ref().ct_eq(sig.as_slice())) | ok
        });
        if !ok {
            return Err(Refusal::Invalid);
        }
        let mut verified = self.read(req);
        if signs_form {
            verified.signed_sha256 = Some(crate::crypto::sha256_hex_bytes(&message));
        }
        Ok(verified)
    }

    /// What a verified request says.
    fn read(&self, req: &Inbound) -> Verified {
        let json: Option<Value> = serde_json::from_slice(req.body).ok();
        let form = if req.form {
            form_pairs(req.body)
        } else {
            Vec::new()
        };
        let get = |s: &Source| -> Option<String> {
            let v = match s {
                Source::Header(h) => (req.header)(h),
                Source::Json(p) => json.as_ref().and_then(|j| at_path(j, p)).and_then(scalar),
                Source::Form(n) => form.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()),
            }?;
            let v = v.trim().to_string();
            (!v.is_empty() && v.chars().count() <= MAX_FIELD_CHARS).then_some(v)
        };
        let delivery_id = self.delivery_id.as_ref().and_then(&get);
        let challenge = self.challenge.as_ref().and_then(|c| {
            (get(&c.field).as_deref() == Some(c.equals.as_str()))
                .then(|| get(&c.answer).unwrap_or_default())
        });
        let event_type = self.event_type.as_ref().and_then(&get);
        let account = self.account.as_ref().and_then(&get);
        let body_sha256 = match (&self.dedupe_ignore[..], &json) {
            ([], _) | (_, None) => crate::crypto::sha256_hex_bytes(req.body),
            (ignore, Some(j)) => {
                let kept = without_fields(j, ignore);
                crate::crypto::sha256_hex_bytes(kept.to_string().as_bytes())
            }
        };
        // The parsed body moves into the payload (it may be 256 KiB).
        let payload = match json {
            Some(j) => j,
            None => Value::Object(
                form.into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect::<Map<_, _>>(),
            ),
        };
        Verified {
            body_sha256,
            signed_sha256: None,
            delivery_id,
            event_type,
            account,
            payload,
            challenge,
        }
    }

    /// The account a connection is, in the form its webhooks name it;
    /// `None` when the scheme matches no connection or the connection
    /// lacks a value the template needs.
    pub fn connection_account(&self, c: &Connection) -> Option<String> {
        let template = self.connection_match.as_deref()?;
        let mut out = String::new();
        for p in pieces(template).ok()? {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Field("account_id") => out.push_str(c.provider_account_id()?),
                Piece::Field(f) => {
                    let v = if let Some(n) = f.strip_prefix("values.") {
                        c.provider_values().get(n)?
                    } else {
                        c.connection_config().get(f.strip_prefix("config.")?)?
                    };
                    out.push_str(v);
                }
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

/// `a.b.0.c`: object keys, and number segments as array indexes.
fn at_path<'a>(v: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(v, |cur, key| match cur {
        Value::Array(a) => a.get(key.parse::<usize>().ok()?),
        _ => cur.get(key),
    })
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A connection's key in the match index under `scheme` (none without one).
pub fn connection_match(scheme: Option<&WebhookScheme>, c: &Connection) -> Option<String> {
    let account = scheme?.connection_account(c)?;
    Some(match_key(c.tenant_id(), c.integration_id(), &account))
}

/// The key of a connection in the match index: tenant, integration and a
/// hash of the account (bounded, and the same for the writer and the
/// reader).
pub fn match_key(tenant_id: &str, integration_id: &str, account: &str) -> String {
    format!(
        "{tenant_id}#{integration_id}#{}",
        crate::crypto::sha256_hex(account)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn scheme(toml_text: &str) -> WebhookScheme {
        let s: WebhookScheme = toml::from_str(toml_text).unwrap();
        s.validate().unwrap();
        s
    }

    fn github() -> WebhookScheme {
        scheme(
            r#"algorithm = "hmac-sha256"
signature_header = "X-Hub-Signature-256"
signature_prefix = "sha256="
encoding = "hex"
signed = "{body}"
delivery_id = "header:X-GitHub-Delivery"
account = "json:installation.id"
connection_match = "{values.installation_id}""#,
        )
    }

    fn slack() -> WebhookScheme {
        scheme(
            r#"algorithm = "hmac-sha256"
signature_header = "X-Slack-Signature"
signature_prefix = "v0="
encoding = "hex"
timestamp_header = "X-Slack-Request-Timestamp"
tolerance_seconds = 300
signed = "v0:{timestamp}:{body}"
delivery_id = "json:event_id"
account = "json:team_id"
challenge = { field = "json:type", equals = "url_verification", answer = "json:challenge" }"#,
        )
    }

    fn headers(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + Sync + use<> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        move |name: &str| map.get(name).cloned()
    }

    fn run(
        s: &WebhookScheme,
        secret: &str,
        hs: &[(&str, &str)],
        body: &[u8],
        now: UnixTime,
    ) -> Result<Verified, Refusal> {
        let h = headers(hs);
        let req = Inbound {
            method: "POST",
            url: "https://broker.example/webhooks/t/i",
            header: &h,
            body,
            form: false,
        };
        s.verify(&SecretString::from(secret.to_string()), &req, now)
    }

    const GH_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn github_documented_vector_is_accepted() {
        let v = run(
            &github(),
            "It's a Secret to Everybody",
            &[
                ("X-Hub-Signature-256", GH_SIG),
                ("X-GitHub-Delivery", "d-1"),
            ],
            b"Hello, World!",
            0,
        )
        .unwrap();
        assert_eq!(v.delivery_id.as_deref(), Some("d-1"));
    }

    #[test]
    fn github_refuses_a_wrong_secret_an_altered_body_and_a_missing_header() {
        let s = github();
        let h = [("X-Hub-Signature-256", GH_SIG)];
        assert_eq!(
            run(&s, "It's a Secret to Everybody!", &h, b"Hello, World!", 0),
            Err(Refusal::Invalid)
        );
        assert_eq!(
            run(&s, "It's a Secret to Everybody", &h, b"Hello, World?", 0),
            Err(Refusal::Invalid)
        );
        assert_eq!(
            run(&s, "It's a Secret to Everybody", &[], b"Hello, World!", 0),
            Err(Refusal::Missing)
        );
        // Without its prefix, or in another encoding, it is not a signature.
        let bare = [("X-Hub-Signature-256", &GH_SIG[7..])];
        assert_eq!(
            run(&s, "It's a Secret to Everybody", &bare, b"Hello, World!", 0),
            Err(Refusal::Invalid)
        );
        assert_eq!(run(&s, "", &h, b"Hello, World!", 0), Err(Refusal::Invalid));
    }

    // Slack's documented example (api.slack.com/authentication/verifying-requests-from-slack).
    const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const SLACK_TS: &str = "1531420618";
    const SLACK_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SLACK_SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    #[test]
    fn slack_documented_vector_is_accepted_within_five_minutes_only() {
        let s = slack();
        let h = [
            ("X-Slack-Signature", SLACK_SIG),
            ("X-Slack-Request-Timestamp", SLACK_TS),
        ];
        let at = 1531420618;
        assert!(run(&s, SLACK_SECRET, &h, SLACK_BODY.as_bytes(), at + 300).is_ok());
        assert!(run(&s, SLACK_SECRET, &h, SLACK_BODY.as_bytes(), at - 300).is_ok());
        assert_eq!(
            run(&s, SLACK_SECRET, &h, SLACK_BODY.as_bytes(), at + 301),
            Err(Refusal::Stale)
        );
        let no_ts = [("X-Slack-Signature", SLACK_SIG)];
        assert_eq!(
            run(&s, SLACK_SECRET, &no_ts, SLACK_BODY.as_bytes(), at),
            Err(Refusal::Missing)
        );
        // The timestamp is signed: moving it breaks the signature.
        let moved = [
            ("X-Slack-Signature", SLACK_SIG),
            ("X-Slack-Request-Timestamp", "1531420619"),
        ];
        assert_eq!(
            run(&s, SLACK_SECRET, &moved, SLACK_BODY.as_bytes(), at),
            Err(Refusal::Invalid)
        );
        // Extreme timestamps are stale, never an overflow.
        for ts in ["-9223372036854775808", "9223372036854775807"] {
            let h = [
                ("X-Slack-Signature", SLACK_SIG),
                ("X-Slack-Request-Timestamp", ts),
            ];
            assert_eq!(
                run(&s, SLACK_SECRET, &h, SLACK_BODY.as_bytes(), at),
                Err(Refusal::Stale)
            );
        }
    }

    fn sign_hex(secret: &str, msg: &[u8]) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        hmac::sign(&key, msg)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn stripe_lists_are_tried_signature_by_signature() {
        let s = scheme(
            r#"algorithm = "hmac-sha256"
signature_header = "Stripe-Signature"
signature_list = { timestamp = "t", signature = "v1" }
encoding = "hex"
tolerance_seconds = 300
signed = "{timestamp}.{body}"
delivery_id = "json:id"
event_type = "json:type"
account = "json:account""#,
        );
        let body = br#"{"id":"evt_1","type":"account.updated","account":"acct_9"}"#;
        let good = sign_hex("whsec_test", &[b"1700000000.".as_slice(), body].concat());
        let header = format!("t=1700000000,v1={},v1={good},v0=ignored", "00".repeat(32));
        let v = run(
            &s,
            "whsec_test",
            &[("Stripe-Signature", &header)],
            body,
            1_700_000_100,
        )
        .unwrap();
        assert_eq!(
            (v.delivery_id.as_deref(), v.account.as_deref()),
            (Some("evt_1"), Some("acct_9"))
        );
        assert_eq!(v.event_type.as_deref(), Some("account.updated"));
        // Past the first MAX_CANDIDATES signatures nothing is read.
        let many = format!("t=1700000000,{}v1={good}", "v1=00,".repeat(MAX_CANDIDATES));
        assert_eq!(
            run(
                &s,
                "whsec_test",
                &[("Stripe-Signature", &many)],
                body,
                1_700_000_100
            ),
            Err(Refusal::Invalid)
        );
        let only_bad = format!("t=1700000000,v1={}", "00".repeat(32));
        assert_eq!(
            run(
                &s,
                "whsec_test",
                &[("Stripe-Signature", &only_bad)],
                body,
                1_700_000_100
            ),
            Err(Refusal::Invalid)
        );
        let no_t = format!("v1={good}");
        assert_eq!(
            run(
                &s,
                "whsec_test",
                &[("Stripe-Signature", &no_t)],
                body,
                1_700_000_100
            ),
            Err(Refusal::Missing)
        );
        assert_eq!(
            run(
                &s,
                "whsec_test",
                &[("Stripe-Signature", &header)],
                body,
                1_700_000_301
            ),
            Err(Refusal::Stale)
        );
    }

    #[test]
    fn twilio_signs_the_url_and_the_sorted_form() {
        let s = scheme(
            r#"algorithm = "hmac-sha1"
signature_header = "X-Twilio-Signature"
encoding = "base64"
signed = "{url}{sorted_form}"
account = "form:AccountSid""#,
        );
        let body = b"To=%2B1555&From=%2B1666&AccountSid=AC1&Body=hi";
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"token");
        let msg = "https://broker.example/webhooks/t/iAccountSidAC1BodyhiFrom+1666To+1555";
        let sig = STANDARD.encode(hmac::sign(&key, msg.as_bytes()).as_ref());
        let h = headers(&[("X-Twilio-Signature", &sig)]);
        let req = Inbound {
            method: "POST",
            url: "https://broker.example/webhooks/t/i",
            header: &h,
            body,
            form: true,
        };
        let v = s.verify(&SecretString::from("token"), &req, 0).unwrap();
        assert_eq!(v.account.as_deref(), Some("AC1"));
        assert_eq!(v.delivery_id, None);
        let keys = dedupe_keys(&v);
        assert_eq!(
            keys,
            vec![
                format!("body:{}", crate::crypto::sha256_hex_bytes(body)),
                format!("signed:{}", crate::crypto::sha256_hex_bytes(msg.as_bytes())),
            ],
            "without a delivery id, the body and the signed message dedupe"
        );
        assert_eq!(v.payload["Body"], "hi");
        // The same signed request re-encoded, and with its fields'
        // boundaries moved: both verify (Twilio's scheme cannot tell), and
        // both are the same delivery by the signed message.
        for variant in [
            &b"AccountSid=A%431&Body=hi&To=%2B1555&From=%2B1666"[..],
            &b"AccountSid=AC1Bodyhi&From=%2B1666&To=%2B1555"[..],
        ] {
            let again = Inbound {
                body: variant,
                ..req
            };
            let w = s.verify(&SecretString::from("token"), &again, 0).unwrap();
            let k = dedupe_keys(&w);
            assert_ne!(k[0], keys[0], "another body");
            assert_eq!(k[1], keys[1], "the same signed message");
        }
        let other_url = Inbound {
            url: "https://broker.example/webhooks/t/j",
            ..req
        };
        assert_eq!(
            s.verify(&SecretString::from("token"), &other_url, 0),
            Err(Refusal::Invalid)
        );
        // The same bytes sent as JSON: the form is not what was signed.
        let as_json = Inbound {
            form: false,
            ..other_url
        };
        let as_json = Inbound {
            url: "https://broker.example/webhooks/t/i",
            ..as_json
        };
        assert_eq!(
            s.verify(&SecretString::from("token"), &as_json, 0),
            Err(Refusal::Invalid)
        );
    }

    #[test]
    fn twilio_documented_vector_is_accepted() {
        // Twilio's example (twilio.com/docs/usage/security), which npm
        // `twilio`'s getExpectedTwilioSignature also gives.
        let s = scheme(
            r#"algorithm = "hmac-sha1"
signature_header = "X-Twilio-Signature"
encoding = "base64"
signed = "{url}{sorted_form}""#,
        );
        let body = b"CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1234&From=%2B12349013030&To=%2B18005551212";
        let h = headers(&[("X-Twilio-Signature", "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")]);
        let req = Inbound {
            method: "POST",
            url: "https://mycompany.com/myapp.php?foo=1&bar=2",
            header: &h,
            body,
            form: true,
        };
        assert!(s.verify(&SecretString::from("12345"), &req, 0).is_ok());
        assert_eq!(
            s.verify(&SecretString::from("12346"), &req, 0),
            Err(Refusal::Invalid)
        );
    }

    #[test]
    fn stripe_sdk_vector_is_accepted() {
        // npm `stripe` 23: webhooks.generateTestHeaderString({payload: "{}",
        // secret: "whsec_x", timestamp: 1700000000}).
        let s: WebhookScheme = toml::from_str(
            r#"algorithm = "hmac-sha256"
signature_header = "Stripe-Signature"
signature_list = { timestamp = "t", signature = "v1" }
encoding = "hex"
tolerance_seconds = 300
signed = "{timestamp}.{body}""#,
        )
        .unwrap();
        let h = [(
            "Stripe-Signature",
            "t=1700000000,v1=be8cb8325f2202445260a855532f967e30ad2a9394ce28da66ee02880ddcb661",
        )];
        assert!(run(&s, "whsec_x", &h, b"{}", 1_700_000_000).is_ok());
        assert_eq!(
            run(&s, "whsec_y", &h, b"{}", 1_700_000_000),
            Err(Refusal::Invalid)
        );
    }

    #[test]
    fn a_challenge_is_answered_only_when_asked() {
        let s = slack();
        let body = br#"{"type":"url_verification","challenge":"abc","token":"x"}"#;
        let sig = format!(
            "v0={}",
            sign_hex("sec", &[b"v0:100:".as_slice(), body].concat())
        );
        let v = run(
            &s,
            "sec",
            &[
                ("X-Slack-Signature", &sig),
                ("X-Slack-Request-Timestamp", "100"),
            ],
            body,
            100,
        )
        .unwrap();
        assert_eq!(v.challenge.as_deref(), Some("abc"));
        let body =
            br#"{"type":"event_callback","event_id":"Ev1","team_id":"T1","challenge":"abc"}"#;
        let sig = format!(
            "v0={}",
            sign_hex("sec", &[b"v0:100:".as_slice(), body].concat())
        );
        let v = run(
            &s,
            "sec",
            &[
                ("X-Slack-Signature", &sig),
                ("X-Slack-Request-Timestamp", "100"),
            ],
            body,
            100,
        )
        .unwrap();
        assert_eq!(
            (v.challenge, v.account.as_deref(), v.delivery_id.as_deref()),
            (None, Some("T1"), Some("Ev1"))
        );
    }

    #[test]
    fn a_hubspot_retry_differing_only_in_its_attempt_number_is_the_same_delivery() {
        // The registry's own HubSpot scheme.
        let hubspot = providers::Registry::embedded()
            .get("hubspot")
            .expect("hubspot is in the registry");
        let s = hubspot
            .webhooks
            .clone()
            .expect("hubspot signs its webhooks");
        let key_of = |body: &str| {
            let v = Scheme(&s).read(&Inbound {
                method: "POST",
                url: "https://b.example/webhooks/t/h",
                header: &|_: &str| None,
                body: body.as_bytes(),
                form: false,
            });
            dedupe_keys(&v)
        };
        let first = key_of(
            r#"[{"eventId":1,"portalId":7,"attemptNumber":0},{"eventId":2,"portalId":7,"attemptNumber":0}]"#,
        );
        let retry = key_of(
            r#"[{"attemptNumber":1,"eventId":1,"portalId":7},{"eventId":2,"portalId":7,"attemptNumber":1}]"#,
        );
        let other = key_of(
            r#"[{"eventId":3,"portalId":7,"attemptNumber":0},{"eventId":2,"portalId":7,"attemptNumber":0}]"#,
        );
        assert_eq!(first, retry, "a retry is a duplicate");
        assert_ne!(first, other, "other events are not");
        // Not JSON: the raw bytes, as for every scheme.
        assert_eq!(
            key_of("not json"),
            vec![format!(
                "body:{}",
                crate::crypto::sha256_hex_bytes(b"not json")
            )]
        );
    }

    #[test]
    fn milliseconds_timestamps_and_array_paths() {
        let s = scheme(
            r#"algorithm = "hmac-sha256"
signature_header = "X-HubSpot-Signature-v3"
encoding = "base64"
timestamp_header = "X-HubSpot-Request-Timestamp"
timestamp_unit = "milliseconds"
tolerance_seconds = 300
signed = "{method}{url}{body}{timestamp}"
account = "json:0.portalId""#,
        );
        let body = br#"[{"portalId":62515,"eventId":1}]"#;
        let msg = [
            b"POSThttps://broker.example/webhooks/t/i".as_slice(),
            body,
            b"1700000000000",
        ]
        .concat();
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"client-secret");
        let sig = STANDARD.encode(hmac::sign(&key, &msg).as_ref());
        let h = [
            ("X-HubSpot-Signature-v3", sig.as_str()),
            ("X-HubSpot-Request-Timestamp", "1700000000000"),
        ];
        let v = run(&s, "client-secret", &h, body, 1_700_000_299).unwrap();
        assert_eq!(v.account.as_deref(), Some("62515"));
        assert_eq!(
            run(&s, "client-secret", &h, body, 1_700_000_301),
            Err(Refusal::Stale)
        );
    }

    #[test]
    fn schemes_that_could_pass_unsigned_are_refused_at_load() {
        for bad in [
            // Signs no body.
            r#"algorithm = "hmac-sha256"
signature_header = "X"
encoding = "hex"
signed = "{method}""#,
            // A timestamp that is not signed could be moved at will.
            r#"algorithm = "hmac-sha256"
signature_header = "X"
encoding = "hex"
timestamp_header = "T"
tolerance_seconds = 300
signed = "{body}""#,
            // Unknown field.
            r#"algorithm = "hmac-sha256"
signature_header = "X"
encoding = "hex"
signed = "{body}{secret}""#,
        ] {
            let s: WebhookScheme = toml::from_str(bad).unwrap();
            assert!(s.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_connection_is_named_as_its_webhooks_name_it() {
        let mut s = github();
        let c = Connection::default();
        assert_eq!(s.connection_account(&c), None);
        let c = crate::connection::patched(
            &c,
            serde_json::json!({"provider_values": {"installation_id": "42"}}),
        );
        assert_eq!(s.connection_account(&c).as_deref(), Some("42"));
        s.connection_match = Some("{config.shop}.myshopify.com".into());
        let c = crate::connection::patched(
            &c,
            serde_json::json!({"connection_config": {"shop": "acme"}}),
        );
        assert_eq!(
            s.connection_account(&c).as_deref(),
            Some("acme.myshopify.com")
        );
    }
}
