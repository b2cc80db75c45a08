//! The `admin` Lambda function (no HTTP route): operator commands such as
//! minting a tenant's API key. See [`domain::admin`].

use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    aws::telemetry::init();
    let app = aws::app_from_env(aws::functions::ADMIN).await?;
    let app = &app;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        domain::admin::handle(&*app.ports.api_key_issuer, &*app.clock, event.payload)
            .await
            .map_err(|e| {
                lambda_runtime::Error::from(format!("{}: {}", e.code(), e.public_message()))
            })
    }))
    .await
}
