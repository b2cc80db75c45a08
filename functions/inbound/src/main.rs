//! The `inbound` Lambda function: provider webhooks in, verified, deduplicated
//! and recorded for delivery. See [`shared::handlers::inbound`].

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::telemetry::init();
    let app = shared::App::from_env().await?;
    let receiver = shared::handlers::inbound::Receiver::default();
    let (app, receiver) = (&app, &receiver);
    lambda_http::run(lambda_http::service_fn(move |req| async move {
        Ok::<_, std::convert::Infallible>(
            shared::handlers::inbound::handle(app, receiver, req).await,
        )
    }))
    .await
}
