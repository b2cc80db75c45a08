//! The `inbound` Lambda function: provider webhooks in, verified, deduplicated
//! and recorded for delivery. See [`web::handlers::inbound`].

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    aws::telemetry::init();
    let app = aws::app_from_env(aws::functions::INBOUND).await?;
    let receiver = web::handlers::inbound::Receiver::default();
    let (app, receiver) = (&app, &receiver);
    lambda_http::run(lambda_http::service_fn(move |req| async move {
        Ok::<_, std::convert::Infallible>(web::handlers::inbound::handle(app, receiver, req).await)
    }))
    .await
}
