//! The `inbound` function's cache of provider webhook secrets, one entry
//! per integration, timed by the app's clock.
//!
//! - A read secret is used for [`SECRET_TTL_MS`]; a secret set through the
//!   API takes effect at once, because it gives the integration (read on
//!   every request) a new `webhook_secret_version`
//!   (`a_webhook_secret_set_anew_takes_effect_at_once`).
//! - A signature that matches no cached secret reads it again, at most once
//!   per [`REREAD_AFTER_MS`] (a secret changed in Secrets Manager directly
//!   takes effect within that), so forgeries cost at most one read per
//!   interval per instance and integration
//!   (`forgeries_read_the_secret_again_at_most_once_per_interval`).
//! - A read that fails is not tried again within [`REREAD_AFTER_MS`],
//!   whatever the failure, so no flood makes one read per request.
//! - Throttled or unavailable: the secret last read is still used, for at
//!   most [`SERVE_STALE_MS`] after that read, and a signature it does not
//!   match is 503 (it may be genuine, signed with a newer secret; the
//!   provider retries)
//!   (`a_secrets_manager_outage_refuses_no_webhook_a_read_secret_verifies`).
//! - Gone, denied or refused otherwise (a disabled key, a secret marked for
//!   deletion): forgotten at once, never served again
//!   (`a_secret_denied_or_gone_is_never_served_from_the_cache`).

use crate::clock::Clock;
use crate::error::ApiError;
use crate::storage::{SecretReader, StoreError};
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::sync::Mutex;
use subtle::ConstantTimeEq;

/// How long a read secret is used without reading it again.
pub const SECRET_TTL_MS: i64 = 60_000;
/// The least time between two reads of one secret after a mismatch or a
/// failure.
pub const REREAD_AFTER_MS: i64 = 5_000;
/// How long after its last successful read a secret is still used while
/// Secrets Manager is unavailable.
pub const SERVE_STALE_MS: i64 = 15 * 60_000;

/// How the last read of a secret failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Throttled, timed out, or a retryable service error.
    Unavailable,
    /// The secret does not exist.
    Gone,
    /// Denied, or refused otherwise.
    Refused,
}

#[derive(Clone)]
struct Entry {
    /// The secret last read, while it may still be used.
    secret: Option<SecretString>,
    /// When `secret` was read (ms).
    read_at: i64,
    /// When a read was last tried (ms).
    tried_at: i64,
    failure: Option<Failure>,
    /// The integration's `webhook_secret_version` it was read for.
    version: Option<String>,
}

/// A secret to verify with; `stale` when Secrets Manager could not be
/// asked whether it is still the current one.
pub struct Usable {
    pub secret: SecretString,
    pub stale: bool,
}

/// Where the receiver reads a secret, and its clock: the one port it calls.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub secrets: &'a dyn SecretReader,
    pub clock: &'a dyn Clock,
}

/// The cache, kept across a warm instance's requests.
#[derive(Default)]
pub struct Receiver {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Receiver {
    /// The secret of `name` for the integration's `version`.
    pub async fn secret(
        &self,
        from: Source<'_>,
        name: &str,
        version: Option<&str>,
    ) -> Result<Usable, ApiError> {
        let now = from.clock.now_ms();
        let wait = |e: &Entry| match e.failure {
            None => SECRET_TTL_MS,
            Some(_) => REREAD_AFTER_MS,
        };
        let entry = match self.entry(name, version) {
            Some(e) if now - e.tried_at < wait(&e) => e,
            _ => self.read(from, name, version).await,
        };
        usable(&entry, now)
    }

    /// After a signature matched the secret [`Receiver::secret`] gave: the
    /// secret read again when it was last tried long enough ago, `Some`
    /// only when it is another.
    pub async fn reread(
        &self,
        from: Source<'_>,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<SecretString>, ApiError> {
        let Some(old) = self
            .entry(name, version)
            .and_then(|e| e.secret.clone().map(|s| (s, e)))
        else {
            return Ok(None);
        };
        if from.clock.now_ms() - old.1.tried_at < REREAD_AFTER_MS {
            return Ok(None);
        }
        let entry = self.read(from, name, version).await;
        match (entry.failure, entry.secret) {
            (None, Some(new)) => {
                let same = new
                    .expose_secret()
                    .as_bytes()
                    .ct_eq(old.0.expose_secret().as_bytes());
                Ok((!bool::from(same)).then_some(new))
            }
            (failure, _) => Err(error(failure.unwrap_or(Failure::Refused))),
        }
    }

    fn entry(&self, name: &str, version: Option<&str>) -> Option<Entry> {
        self.lock()
            .get(name)
            .filter(|e| e.version.as_deref() == version)
            .cloned()
    }

    /// One read of the secret, recorded whatever its outcome.
    async fn read(&self, from: Source<'_>, name: &str, version: Option<&str>) -> Entry {
        let result = from.secrets.get_secret(name).await;
        let now = from.clock.now_ms();
        let prior = self.entry(name, version);
        let failed = |failure, secret: Option<SecretString>, read_at| Entry {
            secret,
            read_at,
            tried_at: now,
            failure: Some(failure),
            version: version.map(str::to_string),
        };
        let entry = match result {
            Ok(Some(secret)) => Entry {
                secret: Some(secret),
                read_at: now,
                tried_at: now,
                failure: None,
                version: version.map(str::to_string),
            },
            Ok(None) => failed(Failure::Gone, None, 0),
            Err(StoreError::Unavailable(e)) => {
                tracing::warn!(error = e, "webhook secret not read: unavailable");
                let (secret, read_at) = prior.map_or((None, 0), |p| (p.secret, p.read_at));
                failed(Failure::Unavailable, secret, read_at)
            }
            Err(e) => {
                tracing::warn!(error = %e, "webhook secret not read: refused");
                failed(Failure::Refused, None, 0)
            }
        };
        let mut entries = self.lock();
        // Bounded: an entry not tried for as long as a stale secret may be
        // used is of no more use.
        entries.retain(|_, e| now - e.tried_at < SERVE_STALE_MS);
        entries.insert(name.to_string(), entry.clone());
        entry
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What an entry gives a request now.
fn usable(e: &Entry, now: i64) -> Result<Usable, ApiError> {
    match (e.failure, &e.secret) {
        (None, Some(secret)) => Ok(Usable {
            secret: secret.clone(),
            stale: false,
        }),
        (Some(Failure::Unavailable), Some(secret)) if now - e.read_at < SERVE_STALE_MS => {
            Ok(Usable {
                secret: secret.clone(),
                stale: true,
            })
        }
        (failure, _) => Err(error(failure.unwrap_or(Failure::Refused))),
    }
}

fn error(f: Failure) -> ApiError {
    match f {
        Failure::Unavailable => ApiError::Storage(StoreError::Unavailable(
            "the webhook secret could not be read".into(),
        )),
        Failure::Gone => ApiError::WebhooksNotConfigured,
        Failure::Refused => ApiError::Unexpected("the webhook secret was refused".into()),
    }
}
