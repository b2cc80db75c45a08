//! The AWS SDK's HTTP client: reqwest with the process's one TLS
//! configuration ([`crate::tls`]), in place of the SDK's own hyper-rustls
//! client, which loads the operating system's certificate directory (every
//! file of `/etc/ssl/certs`) when it is built.
//!
//! The SDK's orchestrator keeps doing what it does (signing, retries,
//! attempt and operation timeouts, endpoint resolution); this only moves
//! bytes. Responses are read whole (the services the broker calls answer
//! small JSON documents) and handed to the SDK as one buffer.

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The connect timeout when the SDK names none (the SDK's own default).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(3100);

/// An [`HttpClient`] for the SDK, built on first use: a function that
/// makes no AWS call builds nothing.
#[derive(Debug)]
struct ReqwestClient {
    tls: Arc<rustls::ClientConfig>,
    connector: OnceLock<SharedHttpConnector>,
}

/// The SDK's client over `tls`.
pub fn http_client(tls: Arc<rustls::ClientConfig>) -> SharedHttpClient {
    SharedHttpClient::new(ReqwestClient {
        tls,
        connector: OnceLock::new(),
    })
}

impl HttpClient for ReqwestClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        // One connector per process, built with the first caller's connect
        // timeout. The app's calls are bounded by the SDK's attempt and
        // operation timeouts (`App::from_env`), which the orchestrator
        // enforces whatever the connector; a read timeout is not applied
        // here. In Lambda the credentials come from the environment, so no
        // credential provider with settings of its own calls through this.
        self.connector
            .get_or_init(|| {
                let connect = settings
                    .connect_timeout()
                    .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
                let http = reqwest::Client::builder()
                    .use_preconfigured_tls((*self.tls).clone())
                    .redirect(reqwest::redirect::Policy::none())
                    // The SDK resolves its endpoints itself; a proxy from the
                    // environment is not its business.
                    .no_proxy()
                    .connect_timeout(connect)
                    .build()
                    .expect("static client configuration");
                SharedHttpConnector::new(Connector { http })
            })
            .clone()
    }
}

#[derive(Debug)]
struct Connector {
    http: reqwest::Client,
}

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let http = self.http.clone();
        HttpConnectorFuture::new(async move { send(&http, request).await })
    }
}

async fn send(
    http: &reqwest::Client,
    request: HttpRequest,
) -> Result<HttpResponse, ConnectorError> {
    let request = request
        .try_into_http1x()
        .map_err(|e| ConnectorError::user(e.into()))?;
    let (parts, body) = request.into_parts();
    let mut req = reqwest::Request::new(
        parts.method,
        reqwest::Url::parse(&parts.uri.to_string()).map_err(|e| ConnectorError::user(e.into()))?,
    );
    *req.headers_mut() = parts.headers;
    // The body is handed over as the body it is, not as its bytes: the
    // SDK's stalled-stream protection watches the request body being read,
    // and a body never read looks stalled, so a response slower than its
    // grace period (5 s) would be cancelled and the call sent again
    // (`a_disconnect_during_a_refresh_waits_for_its_lease_and_then_revokes`).
    *req.body_mut() = Some(reqwest::Body::wrap(body));
    let resp = http.execute(req).await.map_err(classify)?;
    let mut builder = http::Response::builder().status(resp.status());
    if let Some(headers) = builder.headers_mut() {
        headers.extend(resp.headers().iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let body = resp.bytes().await.map_err(classify)?;
    let resp = builder
        .body(SdkBody::from(body))
        .map_err(|e| ConnectorError::other(e.into(), None))?;
    HttpResponse::try_from(resp).map_err(|e| ConnectorError::other(e.into(), None))
}

/// Timeouts and connection failures are retried by the SDK; the rest are not.
fn classify(e: reqwest::Error) -> ConnectorError {
    let e = e.without_url();
    if e.is_timeout() {
        ConnectorError::timeout(e.into())
    } else if e.is_connect() || e.is_request() || e.is_body() {
        ConnectorError::io(e.into())
    } else {
        ConnectorError::other(e.into(), None)
    }
}
