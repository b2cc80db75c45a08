//! The broker's HTTP layer: each HTTP function's handler, request parsing,
//! the one mapping from failure to response, the popup and Connect pages
//! and their assets, and the OpenAPI document.
//!
//! Handlers take the [`domain::App`] by reference and always answer a
//! response: expected failures are 4xx with a stable code, never a Lambda
//! invocation error. Tests drive them in-process with the memory adapters
//! of `testkit`.

pub mod fuzzing;
pub mod handlers;
pub mod http;
pub mod keyfile;
pub mod openapi;
pub mod page;
pub mod routes;
pub mod views;
