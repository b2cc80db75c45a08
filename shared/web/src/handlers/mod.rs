//! Request handlers, one module per function. Each takes the [`domain::App`]
//! by reference and always answers a response: expected failures are 4xx
//! responses with a stable code, never a Lambda invocation error.

pub mod api;
pub mod authorize;
pub mod callback;
pub mod catalog;
pub mod connect;
pub mod connections;
pub mod custom_providers;
pub mod events;
pub mod health;
pub mod inbound;
pub mod integrations;
pub mod proxy;
pub mod test_connection;
pub mod token;
pub mod webhook_endpoints;

use crate::http;
use crate::page::{Outcome, ResultPage};
use domain::error::ApiError;
use lambda_http::{Body, Response};

/// A failure answered with the popup page, posting to `origin` when known.
pub(crate) struct PageFailure {
    pub origin: Option<String>,
    pub error: ApiError,
    pub detail: Option<String>,
    pub cookies: Vec<String>,
    /// Where a flow started from the hosted Connect page goes back to.
    pub retry: Option<String>,
}

impl PageFailure {
    pub fn new(error: ApiError) -> Self {
        Self {
            origin: None,
            error,
            detail: None,
            cookies: Vec::new(),
            retry: None,
        }
    }
}

impl From<domain::storage::StoreError> for PageFailure {
    fn from(e: domain::storage::StoreError) -> Self {
        Self::new(e.into())
    }
}

impl From<ApiError> for PageFailure {
    fn from(error: ApiError) -> Self {
        Self::new(error)
    }
}

/// What a flow ended with, as its session records it for apps that poll.
pub(crate) fn session_result(
    outcome: Result<&domain::model::Connection, &ApiError>,
    at: domain::clock::UnixTime,
) -> domain::model::SessionResult {
    domain::model::SessionResult {
        status: if outcome.is_ok() {
            "connected"
        } else {
            "error"
        }
        .into(),
        connection_id: outcome.ok().map(|c| c.id().to_string()),
        error: outcome.err().map(|e| e.code().to_string()),
        at,
    }
}

pub(crate) fn failure_page(f: PageFailure) -> Response<Body> {
    f.error.log();
    let page = ResultPage {
        origin: f.origin.as_deref(),
        outcome: Outcome::Failed {
            code: f.error.code(),
        },
        detail: f.detail.as_deref(),
        retry: f.retry.as_deref(),
    };
    let (body, csp) = page.render();
    http::html(f.error.status(), body, &csp, &f.cookies)
}
