//! The one mapping from failure to HTTP status and stable error code.
//!
//! Clients see a code from this list and a fixed message; the cause (with
//! its chain) goes to the log only. Codes are part of the API: never rename
//! one.

use crate::storage::StoreError;

/// Every failure a handler can answer with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("the body must be sent as application/json")]
    UnsupportedMediaType,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("unknown or invalid connect session")]
    InvalidSession,
    #[error("connect session expired")]
    SessionExpired,
    #[error("a connect link cannot be opened directly; start the connection from the app")]
    UnboundLink,
    #[error("the connection was not started by a page of the session's origin")]
    OriginMismatch,
    #[error("this connect session has already been used")]
    SessionUsed,
    #[error("the connect session does not allow this integration")]
    IntegrationNotAllowed,
    #[error("unknown integration")]
    UnknownIntegration,
    #[error("unknown provider")]
    UnknownProvider,
    #[error("integration already exists")]
    IntegrationExists,
    #[error("state parameter missing")]
    MissingState,
    #[error("binding cookie missing")]
    MissingBindingCookie,
    #[error("unknown, used or unbound state")]
    InvalidState,
    #[error("authorization flow expired")]
    StateExpired,
    #[error("issuer in the authorization response does not match")]
    IssuerMismatch,
    #[error(
        "the authorization response does not name its issuer, which this provider always does (RFC 9207)"
    )]
    IssuerMissing,
    #[error("authorization code missing")]
    MissingCode,
    #[error("the user denied access")]
    AccessDenied,
    #[error("the provider returned an error")]
    ProviderError,
    #[error("token exchange failed: {0}")]
    TokenExchangeFailed(String),
    #[error("id_token invalid: {0}")]
    InvalidIdToken(String),
    #[error("the connection needs re-authorization")]
    NeedsReauth,
    #[error("the connection is not usable (status {0})")]
    ConnectionUnusable(String),
    #[error("the access token expired and cannot be refreshed")]
    TokenExpired,
    #[error("the provider is unavailable")]
    ProviderUnavailable { retry_after: Option<i64> },
    #[error("another refresh of this connection is still running")]
    RefreshInProgress,
    #[error("this connection's token was refreshed as often as its secret may be written")]
    RefreshPaced { retry_after: i64 },
    #[error("the provider refused the refresh: {0}")]
    RefreshFailed(String),
    #[error("the provider rejected the API key")]
    ApiKeyRejected,
    #[error("the provider rejected the credentials")]
    CredentialsRejected,
    #[error("connection config: {0}")]
    InvalidConnectionConfig(String),
    #[error("this provider has no verification request")]
    VerificationUnsupported,
    #[error("still used by {0} connection(s) or integration(s)")]
    IntegrationInUse(usize),
    #[error("a custom provider with this id exists")]
    CustomProviderExists,
    #[error("the resource changed meanwhile; read it again and retry")]
    Conflict,
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
    #[error("unexpected: {0}")]
    Unexpected(String),
    #[error("the webhook's signature or its timestamp is missing")]
    SignatureMissing,
    #[error("the webhook's signature does not match")]
    SignatureInvalid,
    #[error("the webhook's timestamp is outside the tolerance")]
    SignatureStale,
    #[error(
        "this integration takes no provider webhooks (no webhook secret, or its provider signs none)"
    )]
    WebhooksNotConfigured,
    #[error("this connection's provider declares no API the proxy can call")]
    ProxyUnsupported,
    #[error("invalid proxy path: {0}")]
    InvalidProxyPath(&'static str),
    #[error("the base URL is not among the provider's API hosts")]
    BaseUrlRefused,
    #[error("the provider did not answer within the proxy's time budget")]
    ProxyTimeout,
    #[error("the provider could not be reached")]
    ProviderUnreachable,
    #[error("the provider's response is larger than a Lambda response may be")]
    ResponseTooLarge,
}

impl From<providers::connconfig::InvalidConfig> for ApiError {
    fn from(e: providers::connconfig::InvalidConfig) -> Self {
        ApiError::InvalidConnectionConfig(e.0)
    }
}

impl From<crate::inbound::Refusal> for ApiError {
    fn from(r: crate::inbound::Refusal) -> Self {
        match r {
            crate::inbound::Refusal::Missing => ApiError::SignatureMissing,
            crate::inbound::Refusal::Invalid => ApiError::SignatureInvalid,
            crate::inbound::Refusal::Stale => ApiError::SignatureStale,
        }
    }
}

impl ApiError {
    /// The HTTP status this failure is answered with.
    pub fn status(&self) -> u16 {
        use ApiError::*;
        match self {
            Unauthorized | InvalidSession | SessionExpired => 401,
            SignatureMissing | SignatureInvalid | SignatureStale => 401,
            WebhooksNotConfigured => 404,
            ProxyUnsupported | InvalidProxyPath(_) | BaseUrlRefused => 400,
            ProxyTimeout => 504,
            ProviderUnreachable | ResponseTooLarge => 502,
            IntegrationNotAllowed | AccessDenied | UnboundLink | OriginMismatch => 403,
            NotFound | UnknownIntegration | UnknownProvider => 404,
            MethodNotAllowed => 405,
            IntegrationExists
            | SessionUsed
            | NeedsReauth
            | ConnectionUnusable(_)
            | TokenExpired
            | VerificationUnsupported
            | IntegrationInUse(_)
            | CustomProviderExists
            | Conflict => 409,
            ProviderUnavailable { .. } | RefreshInProgress => 503,
            RefreshPaced { .. } => 429,
            RefreshFailed(_) => 502,
            ApiKeyRejected | CredentialsRejected | InvalidConnectionConfig(_) => 400,
            PayloadTooLarge => 413,
            UnsupportedMediaType => 415,
            InvalidRequest(_) | MissingState | MissingBindingCookie | InvalidState
            | StateExpired | IssuerMismatch | IssuerMissing | MissingCode | ProviderError => 400,
            TokenExchangeFailed(_) | InvalidIdToken(_) => 502,
            Storage(StoreError::Unavailable(_)) => 503,
            Storage(_) | Unexpected(_) => 500,
        }
    }

    /// Every code [`Self::code`] answers with (the OpenAPI document's
    /// `Error` schema lists them; `the_documented_error_codes_are_the_codes_the_broker_answers_with`).
    pub const CODES: &[&str] = &[
        "unauthorized",
        "invalid_request",
        "payload_too_large",
        "unsupported_media_type",
        "not_found",
        "method_not_allowed",
        "invalid_session",
        "session_expired",
        "unbound_link",
        "origin_mismatch",
        "session_used",
        "integration_not_allowed",
        "unknown_integration",
        "unknown_provider",
        "integration_exists",
        "missing_state",
        "missing_binding_cookie",
        "invalid_state",
        "state_expired",
        "issuer_mismatch",
        "issuer_missing",
        "missing_code",
        "access_denied",
        "provider_error",
        "token_exchange_failed",
        "invalid_id_token",
        "needs_reauth",
        "connection_unusable",
        "token_expired",
        "provider_unavailable",
        "refresh_in_progress",
        "refresh_paced",
        "refresh_failed",
        "api_key_rejected",
        "credentials_rejected",
        "invalid_connection_config",
        "verification_unsupported",
        "in_use",
        "custom_provider_exists",
        "conflict",
        "temporarily_unavailable",
        "internal_error",
        "signature_missing",
        "signature_invalid",
        "signature_stale",
        "webhooks_not_configured",
        "proxy_unsupported",
        "invalid_proxy_path",
        "base_url_refused",
        "proxy_timeout",
        "provider_unreachable",
        "response_too_large",
    ];

    /// The stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            Unauthorized => "unauthorized",
            InvalidRequest(_) => "invalid_request",
            PayloadTooLarge => "payload_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            InvalidSession => "invalid_session",
            SessionExpired => "session_expired",
            UnboundLink => "unbound_link",
            OriginMismatch => "origin_mismatch",
            SessionUsed => "session_used",
            IntegrationNotAllowed => "integration_not_allowed",
            UnknownIntegration => "unknown_integration",
            UnknownProvider => "unknown_provider",
            IntegrationExists => "integration_exists",
            MissingState => "missing_state",
            MissingBindingCookie => "missing_binding_cookie",
            InvalidState => "invalid_state",
            StateExpired => "state_expired",
            IssuerMismatch => "issuer_mismatch",
            IssuerMissing => "issuer_missing",
            MissingCode => "missing_code",
            AccessDenied => "access_denied",
            ProviderError => "provider_error",
            TokenExchangeFailed(_) => "token_exchange_failed",
            InvalidIdToken(_) => "invalid_id_token",
            NeedsReauth => "needs_reauth",
            ConnectionUnusable(_) => "connection_unusable",
            TokenExpired => "token_expired",
            ProviderUnavailable { .. } => "provider_unavailable",
            RefreshInProgress => "refresh_in_progress",
            RefreshPaced { .. } => "refresh_paced",
            RefreshFailed(_) => "refresh_failed",
            ApiKeyRejected => "api_key_rejected",
            CredentialsRejected => "credentials_rejected",
            InvalidConnectionConfig(_) => "invalid_connection_config",
            VerificationUnsupported => "verification_unsupported",
            IntegrationInUse(_) => "in_use",
            CustomProviderExists => "custom_provider_exists",
            Conflict => "conflict",
            Storage(StoreError::Unavailable(_)) => "temporarily_unavailable",
            Storage(_) | Unexpected(_) => "internal_error",
            SignatureMissing => "signature_missing",
            SignatureInvalid => "signature_invalid",
            SignatureStale => "signature_stale",
            WebhooksNotConfigured => "webhooks_not_configured",
            ProxyUnsupported => "proxy_unsupported",
            InvalidProxyPath(_) => "invalid_proxy_path",
            BaseUrlRefused => "base_url_refused",
            ProxyTimeout => "proxy_timeout",
            ProviderUnreachable => "provider_unreachable",
            ResponseTooLarge => "response_too_large",
        }
    }

    /// The message a client sees. Only variants whose detail is our own
    /// validation text show it; upstream and internal causes stay in the log.
    pub fn public_message(&self) -> String {
        match self {
            ApiError::InvalidRequest(detail) => format!("invalid request: {detail}"),
            ApiError::TokenExchangeFailed(_) => "token exchange with the provider failed".into(),
            ApiError::InvalidIdToken(_) => "the provider's id_token failed validation".into(),
            ApiError::RefreshFailed(code) => format!("the provider refused the refresh ({code})"),
            ApiError::Storage(StoreError::Unavailable(_)) => {
                "temporarily unavailable, retry".into()
            }
            ApiError::Storage(_) | ApiError::Unexpected(_) => "internal error".into(),
            other => other.to_string(),
        }
    }

    /// Seconds a client should wait before retrying, when known.
    pub fn retry_after(&self) -> Option<i64> {
        match self {
            ApiError::ProviderUnavailable { retry_after } => *retry_after,
            ApiError::RefreshInProgress => Some(1),
            ApiError::RefreshPaced { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// Logs the failure once, at a level that matches who is at fault.
    pub fn log(&self) {
        if self.status() >= 500 {
            tracing::error!(code = self.code(), error = %self, "request failed");
        } else {
            tracing::info!(code = self.code(), error = %self, "request refused");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_causes_are_not_shown_to_clients() {
        let e = ApiError::Unexpected("dynamo said arn:aws:secret/xyz".into());
        assert_eq!(e.status(), 500);
        assert_eq!(e.public_message(), "internal error");
        let e = ApiError::TokenExchangeFailed("body: {\"access_token\":\"x\"}".into());
        assert!(!e.public_message().contains("access_token"));
    }

    #[test]
    fn expected_failures_are_client_errors() {
        for e in [
            ApiError::Unauthorized,
            ApiError::InvalidState,
            ApiError::MissingBindingCookie,
            ApiError::StateExpired,
            ApiError::IssuerMismatch,
            ApiError::IssuerMissing,
            ApiError::IntegrationNotAllowed,
            ApiError::SessionExpired,
        ] {
            assert!((400..500).contains(&e.status()), "{}", e.code());
        }
    }
}
