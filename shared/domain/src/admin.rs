//! The operator function (no HTTP route; invoked with `aws lambda invoke`
//! or `cargo lambda invoke`): creates backend API keys.

use crate::App;
use crate::auth;
use crate::error::ApiError;
use crate::ids::Id;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};

/// Operator actions.
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminCommand {
    /// Mints an API key for `tenant_id` (creating the tenant implicitly).
    CreateApiKey { tenant_id: String },
}

/// Runs one operator command; the answer holds the new key, shown once.
pub async fn handle(app: &App, event: Value) -> Result<Value, ApiError> {
    let cmd: AdminCommand = serde_json::from_value(event)
        .map_err(|e| ApiError::InvalidRequest(format!("unknown command: {e}")))?;
    match cmd {
        AdminCommand::CreateApiKey { tenant_id } => {
            if !Id::is_valid(&tenant_id) {
                return Err(ApiError::InvalidRequest(
                    "tenant_id must match [a-z0-9][a-z0-9_-]{0,62}".into(),
                ));
            }
            let minted = auth::mint(&tenant_id, app.now());
            app.ports.api_key_issuer.put_api_key(&minted.record).await?;
            tracing::info!(tenant_id, key_id = minted.record.key_id, "api key created");
            Ok(json!({
                "tenant_id": tenant_id,
                "key_id": minted.record.key_id,
                "api_key": minted.key.expose_secret(),
            }))
        }
    }
}
