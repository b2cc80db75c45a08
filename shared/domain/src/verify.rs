//! The provider's verification request: proves a credential works, for
//! connection tests and before an API key is stored.

use crate::clock::UnixTime;
use crate::model::{ConnectionTest, Credentials};
use crate::oauth::{self, OAuthError};
use providers::{Provider, Verification};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What the provider said about the credential.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Accepted.
    Ok,
    /// Refused as unauthenticated or forbidden (HTTP 401/403, or `ok: false`).
    Rejected { status: u16 },
    /// Any other answer, or none.
    Failed { status: Option<u16>, code: String },
}

/// A verification outcome with its timing.
#[derive(Debug, Clone)]
pub struct Checked {
    pub verdict: Verdict,
    pub latency_ms: u64,
}

impl Checked {
    /// The record kept on the connection.
    pub fn to_test(&self, checked_at: UnixTime) -> ConnectionTest {
        let (ok, status, error_code) = match &self.verdict {
            Verdict::Ok => (true, Some(200), None),
            Verdict::Rejected { status } => {
                (false, Some(*status), Some("unauthorized".to_string()))
            }
            Verdict::Failed { status, code } => (false, *status, Some(code.clone())),
        };
        ConnectionTest {
            ok,
            status,
            latency_ms: self.latency_ms,
            checked_at,
            error_code,
        }
    }
}

/// Sends the provider's verification request with `credentials`. GETs are
/// idempotent, so transient failures are retried (bounded, jittered).
pub async fn verify(
    http: &reqwest::Client,
    provider: &Provider,
    verification: &Verification,
    config: &BTreeMap<String, String>,
    allow_loopback: bool,
    credentials: &Credentials,
) -> Result<Checked, crate::error::ApiError> {
    let url = provider
        .url(&verification.url, config, allow_loopback)
        .map_err(|e| crate::error::ApiError::InvalidConnectionConfig(e.to_string()))?;
    let started = Instant::now();
    let idempotent = verification.method == "GET";
    let result = oauth::with_retries(
        if idempotent { 3 } else { 1 },
        Duration::from_secs(2),
        |e: &OAuthError| e.is_transient(),
        || send(http, provider, verification, url.clone(), credentials),
    )
    .await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let verdict = match result {
        Ok(v) => v,
        Err(e) => Verdict::Failed {
            status: match &e {
                OAuthError::Provider { status, .. } => Some(*status),
                _ => None,
            },
            code: e.code().to_string(),
        },
    };
    Ok(Checked {
        verdict,
        latency_ms,
    })
}

async fn send(
    http: &reqwest::Client,
    provider: &Provider,
    verification: &Verification,
    mut url: url::Url,
    credentials: &Credentials,
) -> Result<Verdict, OAuthError> {
    let placed = crate::credentials::place(provider, credentials, &mut url)
        .map_err(|_| OAuthError::Transport("the credential cannot be sent as stored".into()))?;
    let mut req = match verification.method.as_str() {
        "POST" => http.post(url),
        _ => http.get(url),
    };
    req = req.header("accept", "application/json");
    for (k, v) in &verification.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    if let Some((name, value)) = placed.header {
        req = req.header(name, value);
    }
    let resp = req.send().await.map_err(|e| {
        if e.is_timeout() {
            OAuthError::Timeout
        } else if e.is_connect() {
            OAuthError::Connect(e.without_url().to_string())
        } else {
            OAuthError::Transport(e.without_url().to_string())
        }
    })?;
    let status = resp.status().as_u16();
    if status == 401 || status == 403 {
        return Ok(Verdict::Rejected { status });
    }
    if status == 429 || status >= 500 {
        let wait = crate::clock::retry_after(resp.headers(), std::time::SystemTime::now());
        return Err(OAuthError::Provider {
            status,
            error: crate::oauth::OAuthCode::http(status),
            retry_after: wait.map(|d| d.as_secs()),
        });
    }
    if !(200..300).contains(&status) {
        return Ok(Verdict::Failed {
            status: Some(status),
            code: format!("http_{status}"),
        });
    }
    if let Some(field) = &verification.ok_field {
        let body = crate::oauth::read_limited(resp).await?;
        let ok = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get(field).and_then(|b| b.as_bool()))
            .unwrap_or(false);
        if !ok {
            return Ok(Verdict::Rejected { status });
        }
    }
    Ok(Verdict::Ok)
}
