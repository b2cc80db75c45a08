//! The OpenAPI 3.1 description of every route (`shared/web/openapi.json`,
//! kept in the repository and served at `GET /openapi.json`). Its paths
//! and methods are the route table's ([`crate::routes`]), held by
//! `tests/tests/openapi_doc.rs`.

/// The document, as served.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");
