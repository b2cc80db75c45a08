//! The library every broker function links: provider registry, OAuth flow
//! logic, storage ports with DynamoDB / Secrets Manager / in-memory adapters,
//! the one error-to-response mapping and the popup result page.
//!
//! Each Lambda binary in `functions/` is a thin `main.rs` that builds an
//! [`app::App`] once at init and hands every request to one of the
//! [`handlers`]. Handlers take the `App` by reference, so tests drive them
//! in-process with the in-memory adapters.

pub mod app;
pub mod auth;
pub mod aws_http;
pub mod clock;
pub mod config;
pub mod connconfig;
pub mod credentials;
pub mod crypto;
pub mod deadline;
pub mod error;
pub mod events;
pub mod flow;
pub mod fuzzing;
pub mod handlers;
pub mod http;
pub mod inbound;
pub mod lifecycle;
pub mod model;
pub mod netguard;
pub mod oauth;
pub mod openapi;
pub mod page;
pub mod providers;
pub mod proxy;
pub mod reconcile;
pub mod refresh;
pub mod stats;
pub mod storage;
pub mod sweep;
pub mod telemetry;
pub mod tls;
pub mod verify;
pub mod webhooks;

pub use app::App;
pub use config::Config;
pub use error::ApiError;
