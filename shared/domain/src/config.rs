//! Configuration, read from the environment in this one place.

use std::collections::HashMap;
use url::Url;

/// Deployment settings every function shares.
#[derive(Debug, Clone)]
pub struct Config {
    /// DynamoDB table holding sessions, flows, integrations and connections.
    pub table_name: String,
    /// Secrets Manager name prefix; every secret the broker writes starts with it.
    pub secret_prefix: String,
    /// Public base URL of the broker (scheme, host, optional path prefix).
    /// Redirect URIs are built from it, never from a request's Host header.
    /// When unset (a stack deployed without a custom domain), the API
    /// Gateway domain from the request context is used: API Gateway sets it,
    /// the client cannot.
    pub public_base_url: Option<Url>,
    /// Customer-managed KMS key for new secrets; the account default when unset.
    pub kms_key_id: Option<String>,
    /// Local development only: lets providers and popup origins use
    /// `http://` on loopback hosts.
    pub allow_insecure_loopback: bool,
    /// Lifetime of a pending authorization flow, in seconds.
    pub flow_ttl_seconds: i64,
    /// Default lifetime of a connect session, in seconds.
    pub session_ttl_seconds: i64,
    /// Upper bound a backend may ask for a connect session's lifetime.
    pub session_max_ttl_seconds: i64,
    /// A token expiring within this many seconds is refreshed before it is
    /// handed out, and the sweep refreshes connections this long before expiry.
    pub refresh_margin_seconds: i64,
    /// A token obtained less than this many seconds ago is never refreshed
    /// again: concurrent and back-to-back callers share one refresh.
    pub refresh_coalesce_seconds: i64,
    /// A forced refresh is satisfied by a token obtained less than this many
    /// seconds ago, which keeps a secret under one write a minute however
    /// often callers force.
    pub force_coalesce_seconds: i64,
    /// The sweep refreshes connections that fall due before its next run
    /// (its schedule's period: `rate(5 minutes)` in template.yaml).
    pub sweep_lookahead_seconds: i64,
    /// Total timeout of one provider request, in milliseconds.
    pub provider_timeout_ms: u64,
    /// Time a proxied call may take, all attempts and waits included, in
    /// milliseconds: under the HTTP API's 30 s integration timeout.
    pub proxy_budget_ms: u64,
    /// Secrets Manager writes per second one sweep allows itself (the
    /// regional PutSecretValue quota is 50/s).
    pub sweep_writes_per_second: u32,
    /// Secrets Manager writes per second that every writer of the deployment
    /// shares (a counter in the table): under the regional 50/s quota.
    pub secret_writes_per_second: u32,
    /// Refreshes one sweep runs at once.
    pub sweep_concurrency: usize,
    /// Sustained pace of one connection's secret writes: one per this many
    /// seconds (AWS advises at most one `PutSecretValue` per secret every
    /// 10 minutes; faster, versions pile up to the per-secret quota).
    pub secret_write_interval_seconds: i64,
    /// Writes one connection may make faster than that pace before it is
    /// held to it (a reconnect, a forced refresh, a short-lived token).
    pub secret_write_burst: i64,
    /// One attempt of an AWS SDK call, in milliseconds.
    pub aws_attempt_timeout_ms: u64,
    /// One AWS SDK call with its retries, in milliseconds.
    pub aws_operation_timeout_ms: u64,
    /// Days a connection's activity log keeps an event (`EVENT_RETENTION_DAYS`).
    pub event_retention: crate::events::Retention,
    /// The SQS FIFO queue webhook deliveries go through
    /// (`DELIVERY_QUEUE_URL`); only the functions that enqueue have it.
    pub delivery_queue_url: Option<String>,
    /// Waits between delivery attempts (`WEBHOOK_RETRY_SCHEDULE`, seconds,
    /// comma-separated).
    pub webhook_schedule: crate::webhooks::Schedule,
    /// Total timeout of one webhook delivery, in milliseconds.
    pub webhook_timeout_ms: u64,
    /// Trust anchors of every HTTPS connection (`TLS_ROOTS`,
    /// `EXTRA_CA_FILE`, `SSL_CERT_FILE`; see [`crate::tls`]).
    pub tls: crate::tls::TlsSettings,
}

/// A setting is missing or malformed; the function must not start.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&std::env::vars().collect())
    }

    /// Reads settings from `vars` (the environment, or a map in tests).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |k: &str| vars.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let required = |k: &str| get(k).ok_or_else(|| ConfigError(format!("{k} is required")));
        let int = |k: &str, default: i64, min: i64, max: i64| -> Result<i64, ConfigError> {
            match get(k) {
                None => Ok(default),
                Some(v) => v
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| ConfigError(format!("{k} must be an integer in {min}..={max}"))),
            }
        };

        let secret_prefix = required("SECRET_PREFIX")?.to_string();
        if !secret_prefix.ends_with('/') {
            return Err(ConfigError("SECRET_PREFIX must end with '/'".into()));
        }
        let allow_insecure_loopback = matches!(get("ALLOW_INSECURE_LOOPBACK"), Some("true" | "1"));
        let public_base_url = get("PUBLIC_BASE_URL")
            .map(|raw| parse_base_url(raw, allow_insecure_loopback))
            .transpose()?;
        // Values up to a day (the old limit) still start; sessions never
        // live more than an hour.
        let session_max_ttl_seconds = int("SESSION_MAX_TTL_SECONDS", 1800, 60, 86_400)?.min(3600);
        Ok(Self {
            table_name: required("TABLE_NAME")?.to_string(),
            secret_prefix,
            public_base_url,
            kms_key_id: get("SECRETS_KMS_KEY_ID").map(str::to_string),
            allow_insecure_loopback,
            flow_ttl_seconds: int("FLOW_TTL_SECONDS", 600, 30, 3600)?,
            session_ttl_seconds: int("SESSION_TTL_SECONDS", 600, 30, session_max_ttl_seconds)?,
            session_max_ttl_seconds,
            refresh_margin_seconds: int("REFRESH_MARGIN_SECONDS", 300, 0, 86_400)?,
            refresh_coalesce_seconds: int("REFRESH_COALESCE_SECONDS", 10, 0, 600)?,
            force_coalesce_seconds: int("REFRESH_FORCE_COALESCE_SECONDS", 60, 1, 3600)?,
            sweep_lookahead_seconds: int("SWEEP_LOOKAHEAD_SECONDS", 300, 0, 3600)?,
            provider_timeout_ms: int("PROVIDER_TIMEOUT_MS", 10_000, 100, 60_000)? as u64,
            proxy_budget_ms: int("PROXY_BUDGET_MS", 25_000, 1_000, 28_000)? as u64,
            sweep_writes_per_second: int("SWEEP_WRITES_PER_SECOND", 20, 1, 50)? as u32,
            secret_writes_per_second: int("SECRET_WRITES_PER_SECOND", 40, 1, 50)? as u32,
            sweep_concurrency: int("SWEEP_CONCURRENCY", 8, 1, 64)? as usize,
            secret_write_interval_seconds: int("SECRET_WRITE_INTERVAL_SECONDS", 600, 0, 86_400)?,
            secret_write_burst: int("SECRET_WRITE_BURST", 6, 1, 100)?,
            aws_attempt_timeout_ms: int("AWS_ATTEMPT_TIMEOUT_MS", 1_000, 100, 300_000)? as u64,
            aws_operation_timeout_ms: int("AWS_OPERATION_TIMEOUT_MS", 2_000, 100, 300_000)? as u64,
            event_retention: crate::events::Retention(int("EVENT_RETENTION_DAYS", 30, 1, 365)?),
            delivery_queue_url: get("DELIVERY_QUEUE_URL").map(str::to_string),
            webhook_schedule: match get("WEBHOOK_RETRY_SCHEDULE") {
                None => crate::webhooks::Schedule::default(),
                Some(v) => crate::webhooks::Schedule::parse(v)
                    .map_err(|e| ConfigError(format!("WEBHOOK_RETRY_SCHEDULE: {e}")))?,
            },
            webhook_timeout_ms: int("WEBHOOK_TIMEOUT_MS", 10_000, 100, 30_000)? as u64,
            tls: crate::tls::TlsSettings {
                roots: match get("TLS_ROOTS") {
                    None | Some("compiled") => crate::tls::TlsRoots::Compiled,
                    Some("system") => crate::tls::TlsRoots::System,
                    Some(_) => {
                        return Err(ConfigError("TLS_ROOTS must be compiled or system".into()));
                    }
                },
                extra_ca_file: get("EXTRA_CA_FILE").map(Into::into),
                system_bundle: get("SSL_CERT_FILE").map(Into::into),
            },
        })
    }

    /// The broker's base URL: the configured one, else `https://{domain}/`
    /// with the domain API Gateway put in the request context.
    pub fn base_url(&self, gateway_domain: Option<&str>) -> Option<Url> {
        match (&self.public_base_url, gateway_domain) {
            (Some(u), _) => Some(u.clone()),
            (None, Some(d)) => Url::parse(&format!("https://{d}/")).ok(),
            (None, None) => None,
        }
    }
}

fn parse_base_url(raw: &str, allow_insecure_loopback: bool) -> Result<Url, ConfigError> {
    let mut url = Url::parse(raw).map_err(|e| ConfigError(format!("PUBLIC_BASE_URL: {e}")))?;
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    if url.scheme() != "https"
        && !(allow_insecure_loopback && providers::netguard::is_loopback_url(&url))
    {
        return Err(ConfigError(
            "PUBLIC_BASE_URL must be https (http only on loopback with ALLOW_INSECURE_LOOPBACK)"
                .into(),
        ));
    }
    Ok(url)
}

/// Redirect URI of an integration under `base`.
pub fn callback_url(base: &Url, integration_id: &str) -> String {
    format!("{base}oauth/{integration_id}/callback")
}

/// The hosted Connect page.
pub fn connect_page_url(base: &Url) -> Url {
    base.join("connect").unwrap_or_else(|_| base.clone())
}

/// The path of an integration's callback under `base`.
pub fn callback_path(base: &Url, integration_id: &str) -> String {
    format!("{}oauth/{integration_id}/callback", base.path())
}

/// The cookie that binds a flow to the browser that started it, as the
/// broker at `base` sets and reads it. Over https it is a `__Host-` cookie
/// (Secure, `Path=/`, no `Domain`): a browser stores one only from the
/// broker's own host, so a sibling host sharing its cookie scope cannot
/// plant one (cookie tossing); the un-prefixed name is never read there.
/// Over plain http (the loopback stack only) the prefix is not allowed and
/// the cookie is scoped to the callback's path. Held by
/// `production_binding_cookie_is_host_prefixed_and_a_tossed_one_is_ignored`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingCookie {
    pub name: String,
    pub path: String,
    pub secure: bool,
}

impl BindingCookie {
    pub fn of(base: &Url, integration_id: &str, state_sha256: &str) -> Self {
        let name = crate::flow::binding_cookie_name(state_sha256);
        if base.scheme() == "https" {
            Self {
                name: format!("__Host-{name}"),
                path: "/".into(),
                secure: true,
            }
        } else {
            Self {
                name,
                path: callback_path(base, integration_id),
                secure: false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn config_reads_required_settings_and_defaults() {
        let c = Config::from_vars(&vars(&[
            ("TABLE_NAME", "t"),
            ("SECRET_PREFIX", "p/"),
            ("PUBLIC_BASE_URL", "https://auth.example.com"),
        ]))
        .unwrap();
        assert_eq!(c.flow_ttl_seconds, 600);
        let base = c.base_url(Some("ignored.example")).unwrap();
        assert_eq!(
            callback_url(&base, "g"),
            "https://auth.example.com/oauth/g/callback"
        );
        assert_eq!(callback_path(&base, "g"), "/oauth/g/callback");
        let cookie = BindingCookie::of(&base, "g", &"a".repeat(64));
        assert_eq!(cookie.name, format!("__Host-obk_flow_{}", "a".repeat(16)));
        assert_eq!((cookie.path.as_str(), cookie.secure), ("/", true));
        let local = Url::parse("http://localhost:9000/").unwrap();
        let cookie = BindingCookie::of(&local, "g", &"a".repeat(64));
        assert_eq!(cookie.name, format!("obk_flow_{}", "a".repeat(16)));
        assert_eq!(
            (cookie.path.as_str(), cookie.secure),
            ("/oauth/g/callback", false)
        );
    }

    #[test]
    fn config_refuses_plain_http_base_url_unless_loopback_is_allowed() {
        let base = [
            ("TABLE_NAME", "t"),
            ("SECRET_PREFIX", "p/"),
            ("PUBLIC_BASE_URL", "http://localhost:9000"),
        ];
        assert!(Config::from_vars(&vars(&base)).is_err());
        let mut allowed = base.to_vec();
        allowed.push(("ALLOW_INSECURE_LOOPBACK", "true"));
        assert!(Config::from_vars(&vars(&allowed)).is_ok());
        let remote = [
            ("TABLE_NAME", "t"),
            ("SECRET_PREFIX", "p/"),
            ("PUBLIC_BASE_URL", "http://example.com"),
            ("ALLOW_INSECURE_LOOPBACK", "true"),
        ];
        assert!(Config::from_vars(&vars(&remote)).is_err());
    }

    #[test]
    fn tls_settings_default_to_compiled_roots_and_refuse_unknown_modes() {
        let base = [("TABLE_NAME", "t"), ("SECRET_PREFIX", "p/")];
        let c = Config::from_vars(&vars(&base)).unwrap();
        assert_eq!(c.tls, crate::tls::TlsSettings::default());
        let mut with = base.to_vec();
        with.extend([
            ("TLS_ROOTS", "system"),
            ("EXTRA_CA_FILE", "/opt/ca.pem"),
            ("SSL_CERT_FILE", "/etc/b.pem"),
        ]);
        let c = Config::from_vars(&vars(&with)).unwrap();
        assert_eq!(c.tls.roots, crate::tls::TlsRoots::System);
        assert_eq!(c.tls.extra_ca_file.as_deref(), Some("/opt/ca.pem".as_ref()));
        assert_eq!(c.tls.system_bundle.as_deref(), Some("/etc/b.pem".as_ref()));
        let mut bad = base.to_vec();
        bad.push(("TLS_ROOTS", "native"));
        assert!(Config::from_vars(&vars(&bad)).is_err());
    }

    #[test]
    fn base_url_falls_back_to_the_gateway_domain() {
        let c = Config::from_vars(&vars(&[("TABLE_NAME", "t"), ("SECRET_PREFIX", "p/")])).unwrap();
        assert_eq!(
            c.base_url(Some("abc.execute-api.eu-west-1.amazonaws.com"))
                .unwrap()
                .as_str(),
            "https://abc.execute-api.eu-west-1.amazonaws.com/"
        );
        assert!(c.base_url(None).is_none());
    }

    #[test]
    fn config_requires_table_and_prefix_ending_in_slash() {
        assert!(Config::from_vars(&vars(&[("SECRET_PREFIX", "p/")])).is_err());
        assert!(
            Config::from_vars(&vars(&[
                ("TABLE_NAME", "t"),
                ("SECRET_PREFIX", "p"),
                ("PUBLIC_BASE_URL", "https://a")
            ]))
            .is_err()
        );
    }
}
