//! Logging, set up once per function at init.
//!
//! The operator's level (`AWS_LAMBDA_LOG_LEVEL`, set by the template's
//! `LogLevel` through Lambda's logging controls, else `RUST_LOG`) applies
//! to the broker's own code only. Every other crate is held at `info` or
//! below whatever the level: at `debug` and `trace` the Lambda runtime logs
//! raw events (codes, cookies, `Authorization` headers, bodies with client
//! secrets and API keys), and the AWS SDK and HTTP stacks log request and
//! response bodies (secret values). The level is read as a level, never as
//! filter directives, so no setting can open those targets.
//! `no_secrets_in_logs` runs the whole suite at `debug` and finds none.

use lambda_http::tracing::subscriber::filter::{EnvFilter, LevelFilter};
use std::str::FromStr;

/// The crates whose logs follow the operator's level: this library and
/// the function binaries (crate names, `-` as `_`).
const OWN_CRATES: &[&str] = &[
    "shared",
    "admin",
    "api",
    "authorize",
    "callback",
    "refresh",
    "test_connection",
    "token",
];

/// The filter for `level` (`trace` ... `error`, any case; unknown means
/// `info`): that level for [`OWN_CRATES`], at most `info` for the rest.
pub fn filter(level: Option<&str>) -> EnvFilter {
    let own = level
        .and_then(|l| LevelFilter::from_str(l.trim()).ok())
        .unwrap_or(LevelFilter::INFO);
    let others = own.min(LevelFilter::INFO);
    let mut directives = others.to_string().to_lowercase();
    for krate in OWN_CRATES {
        directives.push_str(&format!(",{krate}={}", own.to_string().to_lowercase()));
    }
    EnvFilter::builder()
        .parse(directives)
        .expect("static directives")
}

/// Installs the subscriber: the level from the environment, JSON lines when
/// Lambda's `AWS_LAMBDA_LOG_FORMAT` is `JSON`, no timestamps (Lambda adds them).
pub fn init() {
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok();
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = lambda_http::tracing::subscriber::fmt()
        .with_target(false)
        .without_time()
        .with_env_filter(filter(level.as_deref()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directives(level: Option<&str>) -> std::collections::BTreeSet<String> {
        filter(level)
            .to_string()
            .split(',')
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn dependencies_stay_at_info_whatever_the_level() {
        let d = directives(Some("trace"));
        assert!(d.contains("info"), "{d:?}");
        assert!(
            d.contains("shared=trace") && d.contains("test_connection=trace"),
            "{d:?}"
        );
        assert_eq!(d.len(), OWN_CRATES.len() + 1, "{d:?}");
        let d = directives(Some("WARN"));
        assert!(d.contains("warn") && d.contains("token=warn"), "{d:?}");
        // Directives are not honoured: a level is all the setting can say.
        let d = directives(Some("aws_smithy_runtime=trace"));
        assert!(
            d.contains("info") && !d.iter().any(|x| x.contains("smithy")),
            "{d:?}"
        );
        assert!(directives(None).contains("api=info"));
    }
}
