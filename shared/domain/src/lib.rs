//! The broker's domain: ids and records, credentials, the connection state
//! machine and the flows that drive it (connect, refresh, test, disconnect,
//! reconcile, sweep), events and webhooks, and the storage ports as traits.
//!
//! No AWS SDK, no Lambda runtime and no HTTP server in its dependency tree
//! (`crate_dependencies_follow_the_layers`): adapters live in the `aws`
//! crate, in-memory ones in `testkit`, and the HTTP layer in `web`.

pub mod admin;
pub mod app;
pub mod assertion;
pub mod auth;
pub mod budget;
pub mod clock;
pub mod config;
pub mod connection;
pub mod credentials;
pub mod crypto;
pub mod deadline;
pub mod delivery;
pub mod discovery;
pub mod error;
pub mod events;
pub mod flow;
pub mod ids;
pub mod inbound;
pub mod inbound_secrets;
pub mod integration;
pub mod mint;
pub mod model;
pub mod netguard;
pub mod oauth;
pub mod ports;
pub mod proxy;
pub mod rate;
pub mod reconcile;
pub mod refresh;
pub mod revoke;
pub mod scheduled;
pub mod stats;
pub mod storage;
pub mod sweep;
pub mod tls;
pub mod verify;
pub mod webhooks;

pub use app::App;
pub use config::Config;
pub use error::ApiError;
