//! Starting an authorization flow: state, PKCE, nonce, binding cookie and
//! the provider URL.

use crate::clock::UnixTime;
use crate::crypto::{random_token, sha256_hex};
use crate::model::{ConnectSession, Integration, PendingFlow};
use providers::{Provider, ResolvedEndpoints};
use secrecy::SecretString;
use std::collections::BTreeMap;
use url::Url;

/// A started flow: the record to store and what goes to the browser.
pub struct StartedFlow {
    pub flow: PendingFlow,
    /// The provider's authorization URL with every parameter set.
    pub authorization_url: Url,
    /// Value of the binding cookie (its name and scope:
    /// [`crate::config::BindingCookie`]).
    pub cookie_value: SecretString,
}

/// Name of the cookie that binds the flow for `state_sha256` to the
/// browser, before any prefix; derived from the state so parallel flows do
/// not collide.
pub fn binding_cookie_name(state_sha256: &str) -> String {
    format!("obk_flow_{}", &state_sha256[..16])
}

/// Builds a new flow for `integration` started from `session`, for a
/// connection with its own values `connection_config` (checked, and filled
/// into `endpoints`).
#[allow(clippy::too_many_arguments)]
pub fn start(
    provider: &Provider,
    endpoints: &ResolvedEndpoints,
    integration: &Integration,
    session: &ConnectSession,
    redirect_uri: &str,
    connection_config: BTreeMap<String, String>,
    now: UnixTime,
    ttl_seconds: i64,
) -> StartedFlow {
    // 256 bits of state; the flow is stored under its hash only.
    let state = random_token(32);
    let state_sha256 = sha256_hex(&state);
    let binding = random_token(32);
    let nonce = provider.oidc.as_ref().map(|_| random_token(32));
    let (verifier, challenge) = crate::crypto::pkce_pair();

    let scopes = if integration.scopes.is_empty() {
        provider.default_scopes.clone()
    } else {
        integration.scopes.clone()
    };

    let mut url = endpoints.authorization_url.clone();
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in &provider.authorization_params {
            q.append_pair(k, v);
        }
        q.append_pair("response_type", "code");
        q.append_pair("client_id", &integration.client_id);
        q.append_pair("redirect_uri", redirect_uri);
        if !scopes.is_empty() {
            q.append_pair("scope", &scopes.join(&provider.scope_separator));
        }
        q.append_pair("state", &state);
        if provider.pkce {
            q.append_pair("code_challenge", &challenge);
            q.append_pair("code_challenge_method", "S256");
        }
        if let Some(n) = &nonce {
            q.append_pair("nonce", n);
        }
    }

    StartedFlow {
        flow: PendingFlow {
            state_sha256: state_sha256.clone(),
            binding_sha256: sha256_hex(&binding),
            tenant_id: session.tenant_id.clone(),
            integration_id: integration.id.clone(),
            end_user_id: session.end_user_id.clone(),
            origin: session.origin.clone(),
            session_sha256: session.token_sha256.clone(),
            return_to: session.return_to.clone(),
            pkce_verifier: SecretString::from(verifier),
            nonce,
            expected_issuer: endpoints.issuer.clone(),
            iss_required: provider.authorization_response_iss,
            iss_omitted_on_errors: provider.iss_omitted_on_errors,
            redirect_uri: redirect_uri.to_string(),
            scopes,
            connection_config,
            hosted: false,
            created_at: now,
            expires_at: now + ttl_seconds,
            consumed_at: None,
            intent: None,
        },
        authorization_url: url,
        cookie_value: SecretString::from(binding),
    }
}
