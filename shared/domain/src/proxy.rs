//! The proxy's rules, free of I/O ((`web::handlers::proxy`) does the
//! calls): which provider path a request names and the URL it becomes,
//! which headers cross in each direction, when a failed attempt is tried
//! again and how long the broker waits first, and how an answer is framed
//! for Lambda.
//!
//! - **Paths** ([`provider_path`]) are taken raw, as the caller encoded
//!   them, and refused when a segment decodes to `.`/`..`, holds an encoded
//!   `/` or `\`, a control character, or is empty (`//`); the first segment
//!   may not look like a scheme (`https:`) or carry user info (`@`). The
//!   target is built by appending the segments to the base URL's path
//!   ([`target_url`]), and its scheme, host and port are compared with the
//!   base's after the join: a path never changes the host
//!   (`a_path_never_changes_the_host`).
//! - **Headers**: only those the caller prefixes with `Proxy-` reach the
//!   provider, with the prefix removed, and never a hop-by-hop header,
//!   `Host`, `Content-Length` or the header the credential goes in
//!   ([`forwarded_headers`]); `Content-Type` describes the body and goes as
//!   sent. The provider's answer loses its hop-by-hop headers and its
//!   framing (`Content-Length`, `Transfer-Encoding`: the Lambda response is
//!   framed anew) and keeps the rest ([`answer_headers`]).
//! - **Retries** ([`retries_allowed`], [`wait_before_retry`]): idempotent
//!   methods, and others when the caller sends an idempotency key or asks
//!   with `Broker-Retries`, on network errors, 429 and 500/502/503/504;
//!   the provider's own word on when to come back (`Retry-After` in either
//!   form, `RateLimit-Reset`, `X-RateLimit-Reset` and the registry's
//!   headers) wins over jittered exponential backoff.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use providers::{RateLimitHeader, ResetForm};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use url::Url;

/// Prefix of the request headers the caller wants forwarded.
pub const FORWARD_PREFIX: &str = "proxy-";
/// On every answer the broker made itself (not the provider): its error code.
pub const BROKER_ERROR_HEADER: &str = "broker-error";
/// On every answer the provider made: how many attempts it took.
pub const ATTEMPTS_HEADER: &str = "broker-proxy-attempts";
/// When a retry did not fit the budget: when the caller may try again (RFC 3339).
pub const RETRY_AT_HEADER: &str = "broker-retry-at";
/// A base URL other than the registry's, inside the provider's API hosts.
pub const BASE_URL_HEADER: &str = "broker-base-url";
/// How many times to retry (0 to 5); also what lets a POST or PATCH retry.
pub const RETRIES_HEADER: &str = "broker-retries";
/// A budget below the broker's own, in milliseconds.
pub const TIMEOUT_HEADER: &str = "broker-timeout-ms";
/// Retries an idempotent call gets by default.
pub const DEFAULT_RETRIES: u32 = 3;
/// The most retries a caller may ask for.
pub const MAX_RETRIES: u32 = 5;
/// Largest request body the broker forwards: base64 in the Lambda event
/// (4/3 of it) must stay under the 6 MB invocation payload.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Lambda's limit on a synchronous response payload (the whole JSON event).
pub const MAX_LAMBDA_RESPONSE_BYTES: usize = 6 * 1024 * 1024;
/// Room kept in that payload for the status, headers and JSON framing.
pub const RESPONSE_OVERHEAD_BYTES: usize = 64 * 1024;

/// The longest wait the provider's word is taken for (a day): anything
/// longer is no wait a call can make, and the sums stay small.
pub const MAX_WAIT_SECS: u64 = 86_400;

/// Headers that describe one connection, never the message (RFC 9110 7.6.1),
/// and the framing the broker sets itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Why a provider path was refused (the caller's error detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRefusal {
    DotSegment,
    EncodedSeparator,
    EmptySegment,
    ControlCharacter,
    SchemeOrUserInfo,
}

impl PathRefusal {
    pub fn detail(self) -> &'static str {
        match self {
            PathRefusal::DotSegment => "the path may not hold '.' or '..' segments",
            PathRefusal::EncodedSeparator => "the path may not hold an encoded '/' or '\\'",
            PathRefusal::EmptySegment => "the path may not hold an empty segment ('//')",
            PathRefusal::ControlCharacter => "the path may not hold control characters",
            PathRefusal::SchemeOrUserInfo => {
                "the path's first segment may not look like a scheme or hold '@'"
            }
        }
    }
}

/// The provider path's segments, still encoded as the caller sent them.
/// `rest` is what follows `/proxy/{connection_id}/`; empty is the base URL.
pub fn provider_path(rest: &str) -> Result<Vec<&str>, PathRefusal> {
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let segments: Vec<&str> = rest.split('/').collect();
    for (i, raw) in segments.iter().enumerate() {
        // A trailing slash is a path of its own (`/items/`), not an escape.
        if raw.is_empty() {
            if i + 1 == segments.len() && i > 0 {
                continue;
            }
            return Err(PathRefusal::EmptySegment);
        }
        if raw.contains('\\') {
            return Err(PathRefusal::EncodedSeparator);
        }
        let decoded = percent_encoding::percent_decode_str(raw).collect::<Vec<u8>>();
        if decoded.contains(&b'/') || decoded.contains(&b'\\') {
            return Err(PathRefusal::EncodedSeparator);
        }
        if decoded.iter().any(|b| b.is_ascii_control()) {
            return Err(PathRefusal::ControlCharacter);
        }
        if decoded == b"." || decoded == b".." {
            return Err(PathRefusal::DotSegment);
        }
        if i == 0 && (decoded.ends_with(b":") || decoded.contains(&b'@')) {
            return Err(PathRefusal::SchemeOrUserInfo);
        }
    }
    Ok(segments)
}

/// `base` with `segments` appended to its path and `query` as its query;
/// `None` if the result is not on the base's scheme, host and port.
pub fn target_url(base: &Url, segments: &[&str], query: Option<&str>) -> Option<Url> {
    let mut url = base.clone();
    let mut path = base.path().trim_end_matches('/').to_string();
    for s in segments {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() {
        path.push('/');
    }
    url.set_path(&path);
    url.set_query(query.filter(|q| !q.is_empty()));
    url.set_fragment(None);
    let same = url.scheme() == base.scheme()
        && url.host() == base.host()
        && url.port_or_known_default() == base.port_or_known_default()
        && url.username().is_empty()
        && url.password().is_none();
    same.then_some(url)
}

/// The query without the parameter `name` (the broker sets its own).
pub fn query_without(query: Option<&str>, name: &str) -> Option<String> {
    let q = query?;
    let kept: Vec<&str> = q
        .split('&')
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
            !key.eq_ignore_ascii_case(name) && !pair.is_empty()
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// What a path is recorded as: no query, and segments that look like ids
/// (all digits, or four characters or more with a digit or an `@`)
/// replaced with `{id}`, so the log holds no account data.
pub fn path_template(segments: &[&str]) -> String {
    let mut out = String::new();
    for s in segments {
        out.push('/');
        let id_like = s.bytes().all(|b| b.is_ascii_digit())
            || (s.len() >= 4
                && s.bytes()
                    .any(|b| b.is_ascii_digit() || b == b'@' || b == b'%'));
        if id_like {
            out.push_str("{id}");
        } else {
            out.push_str(s);
        }
        if out.len() > 200 {
            let mut cut = 200;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            break;
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The request headers that reach the provider: `Proxy-X: v` as `X: v`,
/// and `Content-Type`, never a hop-by-hop header, `Host`,
/// `Content-Length`, `Authorization` or `credential_header`.
pub fn forwarded_headers(
    headers: &HeaderMap,
    credential_header: Option<&str>,
) -> Vec<(HeaderName, HeaderValue)> {
    let reserved = |n: &str| {
        HOP_BY_HOP.contains(&n)
            || matches!(n, "host" | "content-length" | "authorization")
            || credential_header.is_some_and(|c| c.eq_ignore_ascii_case(n))
    };
    let explicit_type = headers.contains_key("proxy-content-type");
    let mut out = Vec::new();
    for (name, value) in headers {
        let n = name.as_str();
        if n == "content-type" && !explicit_type {
            out.push((name.clone(), value.clone()));
            continue;
        }
        if HOP_BY_HOP.contains(&n) {
            continue;
        }
        let Some(stripped) = n.strip_prefix(FORWARD_PREFIX) else {
            continue;
        };
        if stripped.is_empty() || reserved(stripped) {
            continue;
        }
        if let Ok(h) = HeaderName::from_bytes(stripped.as_bytes()) {
            out.push((h, value.clone()));
        }
    }
    out
}

/// The provider's response headers the caller gets: all but hop-by-hop
/// ones, those its `Connection` header names, and the framing.
pub fn answer_headers(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        let n = name.as_str();
        // `broker-*` is the broker's to say: a provider may not pose as it.
        let framing = n == "content-length" || n.starts_with("broker-");
        if HOP_BY_HOP.contains(&n) || framing || named.iter().any(|t| t == n) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// Whether `method` may be repeated without the caller's say (RFC 9110 9.2.2).
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// How many retries a call gets: what the caller asked (`Broker-Retries`,
/// at most [`MAX_RETRIES`]), else [`DEFAULT_RETRIES`] for idempotent
/// methods and for any call that carries an idempotency key, else none.
/// `None` when the header is not a number in range.
pub fn retries_allowed(method: &Method, headers: &HeaderMap) -> Option<u32> {
    if let Some(v) = headers.get(RETRIES_HEADER) {
        return v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|n| *n <= MAX_RETRIES);
    }
    let keyed = headers.contains_key("proxy-idempotency-key");
    Some(if idempotent(method) || keyed {
        DEFAULT_RETRIES
    } else {
        0
    })
}

/// Whether an answer with this status is worth another attempt.
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504)
}

/// How long the provider says to wait before the next attempt, from the
/// first of: `Retry-After` (seconds or an HTTP date), the registry's
/// headers, `RateLimit-Reset` (seconds), `X-RateLimit-Reset` (seconds, or
/// a Unix time when it reads as one). `now` is the wall clock.
pub fn provider_wait(
    headers: &HeaderMap,
    declared: &[RateLimitHeader],
    now: SystemTime,
) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(d) = crate::clock::retry_after(headers, now) {
        return Some(d.min(Duration::from_secs(MAX_WAIT_SECS)));
    }
    for h in declared {
        if let Some(v) = text(&h.name) {
            if let Some(d) = reset(v, h.form, now) {
                return Some(d);
            }
        }
    }
    if let Some(d) = text("ratelimit-reset").and_then(|v| reset(v, ResetForm::Seconds, now)) {
        return Some(d);
    }
    let v = text("x-ratelimit-reset")?;
    let n: f64 = v.parse().ok()?;
    let form = if n >= 1e12 {
        ResetForm::EpochMilliseconds
    } else if n >= 1e9 {
        ResetForm::EpochSeconds
    } else {
        ResetForm::Seconds
    };
    reset(v, form, now)
}

fn reset(v: &str, form: ResetForm, now: SystemTime) -> Option<Duration> {
    let n: f64 = v
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let since_epoch = now.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    let secs = match form {
        ResetForm::Seconds => n,
        ResetForm::Milliseconds => n / 1000.0,
        ResetForm::EpochSeconds => n - since_epoch,
        ResetForm::EpochMilliseconds => n / 1000.0 - since_epoch,
    };
    Some(Duration::from_secs_f64(
        secs.clamp(0.0, MAX_WAIT_SECS as f64),
    ))
}

/// Jittered exponential backoff before retry `retry` (1-based): a uniform
/// draw from 50 ms up to 250 ms x 2^(retry-1), capped at 4 s.
pub fn backoff(retry: u32) -> Duration {
    let cap = (250u64 << retry.saturating_sub(1).min(6)).min(4_000);
    Duration::from_millis(crate::crypto::random_in(50, cap.max(50)))
}

/// The wait before the next attempt: the provider's word when it gave one
/// on a 429 or 503, else [`backoff`].
pub fn wait_before_retry(
    status: Option<u16>,
    headers: Option<&HeaderMap>,
    declared: &[RateLimitHeader],
    retry: u32,
    now: SystemTime,
) -> Duration {
    let said = match (status, headers) {
        (Some(429 | 503), Some(h)) => provider_wait(h, declared, now),
        _ => None,
    };
    said.unwrap_or_else(|| backoff(retry))
}

/// Whether a body of this content type travels as text in the Lambda
/// response (UTF-8 text and JSON), rather than base64.
pub fn is_text(content_type: Option<&str>, content_encoding: Option<&str>) -> bool {
    if content_encoding.is_some_and(|e| !e.eq_ignore_ascii_case("identity")) {
        return false;
    }
    let Some(ct) = content_type else { return false };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence.starts_with("text/")
        || essence == "application/json"
        || essence.ends_with("+json")
        || essence == "application/xml"
        || essence.ends_with("+xml")
        || essence == "application/x-www-form-urlencoded"
        || essence == "application/javascript"
}

/// The size the body takes in the Lambda response: JSON-escaped text, or base64.
pub fn encoded_len(body: &[u8], as_text: bool) -> usize {
    if as_text {
        body.iter()
            .map(|b| match b {
                b'"' | b'\\' => 2,
                0x00..=0x1f => 6,
                _ => 1,
            })
            .sum()
    } else {
        body.len().div_ceil(3) * 4
    }
}

/// The size headers take in the Lambda response, roughly (names, values, quotes).
pub fn headers_len(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 8)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://api.example.com/v2").unwrap()
    }

    fn target(rest: &str) -> Result<Option<Url>, PathRefusal> {
        provider_path(rest).map(|s| target_url(&base(), &s, None))
    }

    #[test]
    fn a_path_is_appended_to_the_base_path_as_encoded() {
        let u = target("users/me/items%20x").unwrap().unwrap();
        assert_eq!(u.as_str(), "https://api.example.com/v2/users/me/items%20x");
        let u = target("").unwrap().unwrap();
        assert_eq!(u.as_str(), "https://api.example.com/v2");
        let u = target("users/").unwrap().unwrap();
        assert_eq!(u.as_str(), "https://api.example.com/v2/users/");
        let u = provider_path("a")
            .map(|s| target_url(&base(), &s, Some("x=1&y=%2F")))
            .unwrap()
            .unwrap();
        assert_eq!(u.as_str(), "https://api.example.com/v2/a?x=1&y=%2F");
        // Discord's `@me` is a path segment, past the first.
        let u = target("users/@me").unwrap().unwrap();
        assert_eq!(u.path(), "/v2/users/@me");
    }

    #[test]
    fn traversal_encoded_slashes_and_host_escapes_are_refused() {
        for (rest, why) in [
            ("..", PathRefusal::DotSegment),
            ("a/../../admin", PathRefusal::DotSegment),
            ("a/%2e%2E/b", PathRefusal::DotSegment),
            ("a/./b", PathRefusal::DotSegment),
            ("a/%2Fb", PathRefusal::EncodedSeparator),
            ("a/%5cb", PathRefusal::EncodedSeparator),
            ("a\\b", PathRefusal::EncodedSeparator),
            ("/evil.example/x", PathRefusal::EmptySegment),
            ("a//b", PathRefusal::EmptySegment),
            ("a/%00b", PathRefusal::ControlCharacter),
            ("a/%0d%0aHost:x", PathRefusal::ControlCharacter),
            ("https:", PathRefusal::SchemeOrUserInfo),
            ("@evil.example", PathRefusal::SchemeOrUserInfo),
            ("user%40evil.example", PathRefusal::SchemeOrUserInfo),
        ] {
            assert_eq!(provider_path(rest), Err(why), "{rest}");
        }
    }

    #[test]
    fn a_path_never_changes_the_host() {
        // Whatever gets past the segment rules, the join keeps the host.
        assert!(provider_path("x:y@evil.example").is_err());
        for (rest, path) in [
            ("a/@evil.example", "/v2/a/@evil.example"),
            ("a/%40evil.example/b", "/v2/a/%40evil.example/b"),
            ("a?b", "/v2/a%3Fb"),
            ("a#b", "/v2/a%23b"),
        ] {
            let segs = provider_path(rest).unwrap();
            let u = target_url(&base(), &segs, None).unwrap();
            assert_eq!(u.host_str(), Some("api.example.com"), "{rest}");
            assert_eq!(u.path(), path, "{rest}");
            assert!(u.username().is_empty() && u.fragment().is_none() && u.query().is_none());
        }
    }

    #[test]
    fn the_broker_sets_its_own_query_credential() {
        assert_eq!(
            query_without(Some("api_key=theirs&a=1"), "api_key").as_deref(),
            Some("a=1")
        );
        assert_eq!(query_without(Some("API%5FKEY=x"), "api_key"), None);
        assert_eq!(query_without(None, "api_key"), None);
    }

    #[test]
    fn only_prefixed_headers_cross_and_never_hop_by_hop_or_credentials() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("proxy-x-custom", "1"),
            ("proxy-accept", "application/json"),
            ("x-unprefixed", "no"),
            ("authorization", "Bearer broker-key"),
            ("proxy-authorization", "Bearer mine"),
            ("proxy-connection", "keep-alive"),
            ("proxy-host", "evil.example"),
            ("proxy-content-length", "5"),
            ("proxy-transfer-encoding", "chunked"),
            ("proxy-te", "trailers"),
            ("proxy-upgrade", "websocket"),
            ("proxy-x-api-key", "override"),
            ("proxy-", "empty"),
            ("content-type", "application/json"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out: Vec<(String, String)> = forwarded_headers(&h, Some("X-Api-Key"))
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        assert_eq!(
            out,
            vec![
                ("x-custom".to_string(), "1".to_string()),
                ("accept".into(), "application/json".into()),
                ("content-type".into(), "application/json".into()),
            ]
        );
    }

    #[test]
    fn answers_lose_hop_by_hop_headers_and_framing() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "close, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("content-length", "99"),
            ("content-type", "application/json"),
            ("set-cookie", "a=1"),
            ("x-ratelimit-remaining", "4"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h.append("set-cookie", HeaderValue::from_static("b=2"));
        let out = answer_headers(&h);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            vec!["content-type", "set-cookie", "x-ratelimit-remaining"]
        );
        assert_eq!(out.get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn retries_are_for_idempotent_calls_unless_a_key_or_the_caller_says_so() {
        let none = HeaderMap::new();
        assert_eq!(retries_allowed(&Method::GET, &none), Some(3));
        assert_eq!(retries_allowed(&Method::DELETE, &none), Some(3));
        assert_eq!(retries_allowed(&Method::POST, &none), Some(0));
        assert_eq!(retries_allowed(&Method::PATCH, &none), Some(0));
        let mut keyed = HeaderMap::new();
        keyed.insert("proxy-idempotency-key", HeaderValue::from_static("k1"));
        assert_eq!(retries_allowed(&Method::POST, &keyed), Some(3));
        let mut asked = HeaderMap::new();
        asked.insert(RETRIES_HEADER, HeaderValue::from_static("5"));
        assert_eq!(retries_allowed(&Method::POST, &asked), Some(5));
        asked.insert(RETRIES_HEADER, HeaderValue::from_static("0"));
        assert_eq!(retries_allowed(&Method::GET, &asked), Some(0));
        asked.insert(RETRIES_HEADER, HeaderValue::from_static("6"));
        assert_eq!(retries_allowed(&Method::GET, &asked), None);
    }

    #[test]
    fn the_provider_says_when_to_come_back_in_every_common_form() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let wait = |k: &'static str, v: &str, declared: &[RateLimitHeader]| {
            let mut h = HeaderMap::new();
            h.insert(k, HeaderValue::from_str(v).unwrap());
            provider_wait(&h, declared, now)
        };
        assert_eq!(wait("retry-after", "7", &[]), Some(Duration::from_secs(7)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            wait("retry-after", &date, &[]),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(wait("retry-after", &past, &[]), Some(Duration::ZERO));
        assert_eq!(wait("retry-after", "soon", &[]), None);
        assert_eq!(
            wait("ratelimit-reset", "12", &[]),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            wait("x-ratelimit-reset", "1700000042", &[]),
            Some(Duration::from_secs(42))
        );
        assert_eq!(
            wait("x-ratelimit-reset", "1700000005000", &[]),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            wait("x-ratelimit-reset", "9", &[]),
            Some(Duration::from_secs(9))
        );
        assert_eq!(wait("x-ratelimit-reset", "1e400", &[]), None);
        assert_eq!(wait("x-ratelimit-reset", "-5", &[]), None);
        let linear = [RateLimitHeader {
            name: "x-ratelimit-requests-reset".into(),
            form: ResetForm::EpochMilliseconds,
        }];
        assert_eq!(
            wait("x-ratelimit-requests-reset", "1700000003000", &linear),
            Some(Duration::from_secs(3))
        );
        // Far futures are capped at a day.
        assert_eq!(
            wait("retry-after", "18446744073709551615", &[]),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            wait("ratelimit-reset", "999999", &[]),
            Some(Duration::from_secs(86_400))
        );
    }

    #[test]
    fn backoff_is_jittered_and_bounded() {
        for retry in 1..10 {
            for _ in 0..50 {
                let d = backoff(retry).as_millis() as u64;
                assert!((50..=4_000).contains(&d), "{retry}: {d}");
            }
        }
        // Only a 429 or 503 makes the provider's headers count.
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("9"));
        let now = SystemTime::now();
        assert_eq!(
            wait_before_retry(Some(429), Some(&h), &[], 1, now),
            Duration::from_secs(9)
        );
        assert!(wait_before_retry(Some(500), Some(&h), &[], 1, now) <= Duration::from_millis(250));
    }

    #[test]
    fn text_travels_as_text_and_the_rest_as_base64_with_its_size_known() {
        assert!(is_text(Some("application/json; charset=utf-8"), None));
        assert!(is_text(Some("application/vnd.api+json"), None));
        assert!(!is_text(Some("application/json"), Some("gzip")));
        assert!(!is_text(Some("image/png"), None));
        assert!(!is_text(None, None));
        assert_eq!(encoded_len(b"ab\"\n", true), 1 + 1 + 2 + 6);
        assert_eq!(encoded_len(&[0u8; 4], false), 8);
    }

    #[test]
    fn recorded_paths_hold_no_ids_or_query() {
        assert_eq!(
            path_template(&["v2", "users", "12345", "repos"]),
            "/v2/users/{id}/repos"
        );
        assert_eq!(path_template(&["users", "a%40b.example"]), "/users/{id}");
        assert_eq!(
            path_template(&["contacts", "conn_9f8e7d"]),
            "/contacts/{id}"
        );
        assert_eq!(path_template(&[]), "/");
        let long = "é".repeat(150);
        assert!(
            path_template(&["x", &long]).len() <= 200,
            "cut on a character boundary"
        );
    }
}
