//! One budget of Secrets Manager writes per second for every writer in the
//! deployment ([`crate::storage::WriteBudget`]), reserved before anything
//! is asked of a provider.

use crate::App;
use crate::error::ApiError;
use crate::storage::StoreError;

/// How often a writer tries again for a slot in the write budget before it
/// gives up (answering 503), and how long it waits between tries: about a
/// second in all, so a full second's budget is followed by the next one's.
const BUDGET_TRIES: u32 = 5;
const BUDGET_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Reserves one Secrets Manager write in the deployment-wide budget
/// ([`crate::storage::WriteBudget`]). Callers reserve *before* asking the
/// provider for tokens, so a spent budget never strands a token the
/// provider has already rotated.
pub async fn reserve_secret_write(app: &App) -> Result<(), ApiError> {
    for attempt in 0..BUDGET_TRIES {
        if app
            .ports
            .write_budget
            .take_secret_write(app.now(), app.config.secret_writes_per_second)
            .await?
        {
            return Ok(());
        }
        if attempt + 1 < BUDGET_TRIES {
            tokio::time::sleep(BUDGET_WAIT).await;
        }
    }
    tracing::warn!("secret write budget spent; refusing for now");
    Err(ApiError::Storage(StoreError::Unavailable(
        "secret write budget spent".into(),
    )))
}
