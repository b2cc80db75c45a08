//! The `deliver` Lambda function: webhooks from the table's stream, through
//! the FIFO delivery queue, to the tenants' endpoints. See
//! [`domain::delivery`].

use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    aws::telemetry::init();
    let app = aws::app_from_env(aws::functions::DELIVER).await?;
    let deliverer = domain::delivery::Deliverer::new(&app.config, &app.tls);
    let (app, deliverer) = (&app, &deliverer);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let deadline = domain::deadline::Deadline::from_epoch_ms(event.context.deadline);
        domain::delivery::handle(&app.courier(), deliverer, event.payload, deadline)
            .await
            .map_err(|e| {
                lambda_runtime::Error::from(format!("{}: {}", e.code(), e.public_message()))
            })
    }))
    .await
}
