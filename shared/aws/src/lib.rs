//! The AWS side of the broker: adapters of the domain's ports (DynamoDB,
//! Secrets Manager, KMS, SQS), the SDK's HTTP client over the one TLS
//! configuration, and the boot of a function on Lambda (configuration
//! from the environment, SDK clients built once, logging).
//!
//! May depend on the domain and provider crates and the AWS SDK; nothing
//! here is imported by the domain (`crate_dependencies_follow_the_layers`).

pub mod aws_http;
pub mod dynamo;
pub mod functions;
pub mod iam;
pub mod keys;
pub mod kms;
pub mod secrets;
pub mod sqs;
pub mod telemetry;

#[cfg(test)]
#[path = "tests/moto.rs"]
mod moto_tests;

pub use dynamo::DynamoStore;
pub use kms::KmsKeys;
pub use secrets::SecretsManagerVault;
pub use sqs::SqsQueue;

use domain::App;
use domain::config::Config;
use domain::ports::{Port, Ports};
use domain::storage::{KeyService, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// Maps an AWS SDK failure: IAM refusals are [`StoreError::AccessDenied`];
/// timeouts, dispatch failures and the service's `retryable_codes` are
/// [`StoreError::Unavailable`]; the rest is
/// [`StoreError::Backend`]. The text keeps the whole error chain for the log.
pub(crate) fn classify_sdk_error<E, R>(
    err: aws_sdk_dynamodb::error::SdkError<E, R>,
    retryable_codes: &[&str],
) -> StoreError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
    let retryable = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => true,
        SdkError::ServiceError(e) => e.err().code().is_some_and(|c| retryable_codes.contains(&c)),
        _ => false,
    };
    let denied = matches!(&err, SdkError::ServiceError(e)
        if e.err().code().is_some_and(|c| c == "AccessDeniedException" || c == "AccessDenied"));
    let text = DisplayErrorContext(&err).to_string();
    if denied {
        StoreError::AccessDenied(text)
    } else if retryable {
        StoreError::Unavailable(text)
    } else {
        StoreError::Backend(text)
    }
}

/// Init failed; the function must not serve requests.
#[derive(Debug, thiserror::Error)]
#[error("init: {0}")]
pub struct InitError(String);

/// Builds the app from the environment with the AWS adapters. SDK
/// clients are built here once; they reach local emulators through
/// `AWS_ENDPOINT_URL`, never through code branches.
pub async fn app_from_env(wanted: &[Port]) -> Result<App, InitError> {
    let config = Config::from_env().map_err(|e| InitError(e.to_string()))?;
    let tls = domain::tls::client_configs(&config.tls).map_err(|e| InitError(e.to_string()))?;
    // Every AWS call is bounded, so the storage allowance of a refresh's
    // lease (`refresh::lease_seconds`) holds.
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .operation_attempt_timeout(Duration::from_millis(config.aws_attempt_timeout_ms))
        .operation_timeout(Duration::from_millis(config.aws_operation_timeout_ms))
        .build();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(aws_http::http_client(tls.aws))
        .timeout_config(timeouts)
        .load()
        .await;
    let ports = ports(wanted, &config, &sdk);
    Ok(App::with_tls(
        config,
        ports,
        Arc::new(domain::clock::SystemClock),
        tls.providers,
    ))
}

/// The `wanted` ports, each from its adapter; a client is built only for
/// a service some wanted port uses.
fn ports(wanted: &[Port], config: &Config, sdk: &aws_config::SdkConfig) -> Ports {
    let uses = |ports: &[Port]| ports.iter().any(|p| wanted.contains(p));
    let mut out = Ports::unbuilt();
    if uses(iam::RECORD_PORTS) {
        let store = DynamoStore::new(
            aws_sdk_dynamodb::Client::new(sdk),
            config.table_name.clone(),
        );
        out = out.with_records(wanted, &Arc::new(store));
    }
    if uses(iam::VAULT_PORTS) {
        let vault = SecretsManagerVault::new(
            aws_sdk_secretsmanager::Client::new(sdk),
            config.kms_key_id.clone(),
        );
        out = out.with_vault(wanted, &Arc::new(vault));
    }
    // The key that seals a refreshed token set whose secret write failed:
    // the one Secrets Manager encrypts the secrets with.
    if uses(&[Port::KeyService]) {
        let keys = config.kms_key_id.clone().map(|key| {
            Arc::new(KmsKeys::new(aws_sdk_kms::Client::new(sdk), key)) as Arc<dyn KeyService>
        });
        out = out.with_keys(wanted, keys);
    }
    if uses(&[Port::DeliveryQueue, Port::Redelivery]) {
        let queue = config
            .delivery_queue_url
            .clone()
            .map(|url| Arc::new(SqsQueue::new(aws_sdk_sqs::Client::new(sdk), url)));
        out = out.with_queue(wanted, queue);
    }
    out
}
