//! The provider catalog: `GET /providers` (filters `category`, `auth_mode`,
//! free-text `q`; id order; `limit` and `cursor`) and `GET /providers/{id}`
//! with what a setup screen needs. Built-in providers only: no secrets and
//! no tenant data.

use crate::http::{self, Query};
use crate::views::{
    ConfigFieldView, PageCredentialField, ProviderDetail, ProviderPage, ProviderSummary,
};
use domain::App;
use domain::error::ApiError;
use lambda_http::{Body, Request, Response};
use providers::{AuthMode, CATEGORIES, Provider};

fn auth_mode(p: &Provider) -> &'static str {
    p.auth_mode().as_str()
}

fn summary(p: &Provider) -> ProviderSummary<'_> {
    ProviderSummary {
        id: &p.id,
        display_name: &p.display_name,
        categories: &p.categories,
        auth_mode: auth_mode(p),
        docs_url: Some(p.docs_url.as_str()).filter(|u| !u.is_empty()),
        logo_url: p.logo_url.as_deref(),
    }
}

/// What a setup screen needs to configure an integration of `p`.
pub fn detail(p: &Provider) -> ProviderDetail<'_> {
    let config_fields = p
        .config_fields
        .iter()
        .map(|(name, f)| ConfigFieldView {
            name,
            pattern: &f.pattern,
            description: &f.description,
            example: &f.example,
            end_user: f.end_user,
            label: f.label.as_deref(),
            host_suffixes: &f.host_suffixes,
        })
        .collect();
    ProviderDetail {
        summary: summary(p),
        default_scopes: &p.default_scopes,
        scope_separator: &p.scope_separator,
        pkce: p.pkce && p.auth_mode() == AuthMode::Oauth2,
        openid_connect: p.oidc.is_some(),
        config_fields,
        credentials: PageCredentialField::of(p),
        callback_params: &p.callback_params,
        supports_revocation: p.revocation_url.is_some(),
        supports_connection_test: p.verification().is_some(),
        api_base_url: p.api_base_url.as_deref(),
        redirect_uri_template: "{broker_base_url}/oauth/{integration_id}/callback",
        definition: None,
    }
}

/// `GET /providers`.
pub fn list(app: &App, req: &Request) -> Result<Response<Body>, ApiError> {
    let q = Query::of(req);
    let category = q.single("category")?;
    if let Some(c) = category {
        if !CATEGORIES.contains(&c) {
            return Err(ApiError::InvalidRequest(format!(
                "unknown category; one of: {}",
                CATEGORIES.join(", ")
            )));
        }
    }
    let mode = q.single("auth_mode")?;
    if mode.is_some_and(|m| AuthMode::parse(m).is_none()) {
        let names: Vec<&str> = AuthMode::ALL.iter().map(|m| m.as_str()).collect();
        return Err(ApiError::InvalidRequest(format!(
            "auth_mode must be one of {}",
            names.join(", ")
        )));
    }
    let text = q.single("q")?.map(str::to_lowercase);
    if text.as_ref().is_some_and(|t| t.len() > 100) {
        return Err(ApiError::InvalidRequest(
            "q is at most 100 characters".into(),
        ));
    }
    let limit = match q.single("limit")? {
        None => 50,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=200).contains(n))
            .ok_or_else(|| ApiError::InvalidRequest("limit must be 1..200".into()))?,
    };
    let after = q.single("cursor")?;
    let matches = |p: &&Provider| {
        category.is_none_or(|c| p.categories.iter().any(|x| x == c))
            && mode.is_none_or(|m| auth_mode(p) == m)
            && text.as_ref().is_none_or(|t| {
                p.id.contains(t.as_str()) || p.display_name.to_lowercase().contains(t.as_str())
            })
            && after.is_none_or(|a| p.id.as_str() > a)
    };
    let mut page: Vec<&Provider> = app
        .registry()
        .iter()
        .filter(matches)
        .take(limit + 1)
        .collect();
    let next = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|p| p.id.clone())
    } else {
        None
    };
    let providers = page.into_iter().map(summary).collect();
    Ok(http::json(
        200,
        &ProviderPage {
            providers,
            next_cursor: next,
        },
    ))
}

/// `GET /providers/{id}`.
pub fn get(app: &App, id: &str) -> Result<Response<Body>, ApiError> {
    let p = app.registry().get(id).ok_or(ApiError::UnknownProvider)?;
    Ok(http::json(200, &detail(p)))
}
