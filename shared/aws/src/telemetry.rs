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

use lambda_runtime::tracing::subscriber::filter::LevelFilter;
use lambda_runtime::tracing::subscriber::layer::{Context, Layer};
use lambda_runtime::tracing::{Level, Metadata, Subscriber};
use std::str::FromStr;
use tracing::subscriber::Interest;

/// The crates whose logs follow the operator's level: this library and
/// the function binaries (crate names, `-` as `_`).
const OWN_CRATES: &[&str] = &[
    "providers",
    "domain",
    "aws",
    "web",
    "admin",
    "api",
    "authorize",
    "callback",
    "deliver",
    "inbound",
    "proxy",
    "refresh",
    "test_connection",
    "token",
];

/// Which events pass: those of [`OWN_CRATES`] up to the operator's level,
/// every other crate's up to `info` at most. A target belongs to a crate
/// when its first path segment is the crate's name, exactly: a prefix
/// match (tracing's `Targets`) would let the crate `aws` open the SDK's
/// `aws_smithy_runtime` and `aws_config`.
#[derive(Debug, Clone, Copy)]
pub struct CrateLevels {
    own: LevelFilter,
    rest: LevelFilter,
}

impl CrateLevels {
    /// Whether an event of `target` at `level` is logged.
    pub fn would_enable(&self, target: &str, level: &Level) -> bool {
        let krate = target.split("::").next().unwrap_or(target);
        let max = if OWN_CRATES.contains(&krate) {
            self.own
        } else {
            self.rest
        };
        max >= *level
    }
}

impl<S: Subscriber> Layer<S> for CrateLevels {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        // A callsite's target and level never change: decided once.
        if self.would_enable(meta.target(), meta.level()) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, _: Context<'_, S>) -> bool {
        self.would_enable(meta.target(), meta.level())
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.own.max(self.rest))
    }
}

/// The filter for `level` (`trace` ... `error`, any case; unknown means
/// `info`): that level for [`OWN_CRATES`], at most `info` for the rest.
/// Built from values, not parsed from directives: nothing to compile at
/// init (an `EnvFilter` compiles a regex to parse its directives).
pub fn filter(level: Option<&str>) -> CrateLevels {
    let own = level
        .and_then(|l| LevelFilter::from_str(l.trim()).ok())
        .unwrap_or(LevelFilter::INFO);
    CrateLevels {
        own,
        rest: own.min(LevelFilter::INFO),
    }
}

/// Installs the subscriber: the level from the environment, JSON lines when
/// Lambda's `AWS_LAMBDA_LOG_FORMAT` is `JSON`, no timestamps (Lambda adds them).
pub fn init() {
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok();
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = lambda_runtime::tracing::subscriber::fmt()
        .with_target(false)
        .without_time()
        .with_max_level(LevelFilter::TRACE);
    let filter = filter(level.as_deref());
    use lambda_runtime::tracing::subscriber::layer::SubscriberExt;
    use lambda_runtime::tracing::subscriber::util::SubscriberInitExt;
    if json {
        builder.json().finish().with(filter).init();
    } else {
        builder.finish().with(filter).init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_stay_at_info_whatever_the_level() {
        let f = filter(Some("trace"));
        assert!(f.would_enable("domain::refresh", &Level::TRACE));
        assert!(f.would_enable("aws::dynamo", &Level::TRACE));
        assert!(f.would_enable("aws", &Level::TRACE));
        assert!(!f.would_enable("aws_config::imds", &Level::DEBUG));
        assert!(!f.would_enable("webpki::verify", &Level::DEBUG));
        assert!(f.would_enable("test_connection", &Level::TRACE));
        assert!(f.would_enable("proxy", &Level::TRACE));
        assert!(f.would_enable("lambda_runtime", &Level::INFO));
        assert!(!f.would_enable("lambda_runtime", &Level::DEBUG));
        assert!(!f.would_enable("aws_smithy_runtime::client", &Level::DEBUG));
        assert!(!f.would_enable("hyper_util", &Level::TRACE));
        let f = filter(Some("WARN"));
        assert!(f.would_enable("token", &Level::WARN));
        assert!(!f.would_enable("token", &Level::INFO));
        assert!(!f.would_enable("reqwest", &Level::INFO));
        // Directives are not honoured: a level is all the setting can say.
        let f = filter(Some("aws_smithy_runtime=trace"));
        assert!(!f.would_enable("aws_smithy_runtime", &Level::DEBUG));
        assert!(f.would_enable("api", &Level::INFO));
        assert!(!f.would_enable("api", &Level::DEBUG));
        assert!(filter(None).would_enable("api", &Level::INFO));
    }
}
