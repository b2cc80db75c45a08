//! The scheduled refresh function's event: `{}` from the schedule, or
//! `{"tenant_id": "...", "limit": N}` from an operator.

use crate::error::ApiError;
use crate::sweep::{SweepReport, Sweeper, sweep};
use serde::Deserialize;

/// A sweep request.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SweepRequest {
    /// Only this tenant's connections.
    pub tenant_id: Option<String>,
    /// At most this many connections (default 1000).
    pub limit: Option<usize>,
}

/// Runs one sweep, within the invocation's `deadline`.
pub async fn handle(
    s: &Sweeper<'_>,
    event: serde_json::Value,
    deadline: crate::deadline::Deadline,
) -> Result<SweepReport, ApiError> {
    let req: SweepRequest = if event.is_null() {
        SweepRequest::default()
    } else {
        serde_json::from_value(event)
            .map_err(|e| ApiError::InvalidRequest(format!("sweep event: {e}")))?
    };
    sweep(
        s,
        req.tenant_id.as_deref(),
        req.limit.unwrap_or(1000).clamp(1, 10_000),
        deadline,
    )
    .await
}
