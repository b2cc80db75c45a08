//! The `refresh` Lambda function: the scheduled sweep (EventBridge), also
//! invocable by an operator with `{"tenant_id": "...", "limit": N}`. See
//! [`shared::handlers::refresh`].

use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::telemetry::init();
    let app = shared::App::from_env().await?;
    let app = &app;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let deadline = shared::deadline::Deadline::from_epoch_ms(event.context.deadline);
        shared::handlers::refresh::handle(app, event.payload, deadline)
            .await
            .map_err(|e| {
                lambda_runtime::Error::from(format!("{}: {}", e.code(), e.public_message()))
            })
    }))
    .await
}
