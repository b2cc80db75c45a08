//! The `refresh` Lambda function: the scheduled sweep (EventBridge), also
//! invocable by an operator with `{"tenant_id": "...", "limit": N}`. See
//! [`domain::scheduled`].

use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    aws::telemetry::init();
    let app = aws::app_from_env(aws::functions::REFRESH).await?;
    let app = &app;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let deadline = domain::deadline::Deadline::from_epoch_ms(event.context.deadline);
        domain::scheduled::handle(&app.sweeper(), event.payload, deadline)
            .await
            .map_err(|e| {
                lambda_runtime::Error::from(format!("{}: {}", e.code(), e.public_message()))
            })
    }))
    .await
}
