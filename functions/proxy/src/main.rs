//! The `proxy` Lambda function: init once, then serve every request with
//! [`web::handlers::proxy::handle`].

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    aws::telemetry::init();
    let app = aws::app_from_env(aws::functions::PROXY).await?;
    let app = &app;
    lambda_http::run(lambda_http::service_fn(move |req| async move {
        Ok::<_, std::convert::Infallible>(web::handlers::proxy::handle(app, req).await)
    }))
    .await
}
