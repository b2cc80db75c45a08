//! One connection's configuration: the values that fill its provider's URL
//! templates (a Shopify shop, a Zendesk subdomain, an Okta domain).
//!
//! A value comes from one of three places, in this order of precedence:
//! 1. the app's backend, for one connection, in the connect session;
//! 2. the integration's `config`, a default for all its connections;
//! 3. the end user, on the Connect page, only for a field the provider
//!    marks `end_user` and neither of the above sets.
//!
//! The end user can never change a value the app or the integration set,
//! nor set a field that is a whole host (the token request carries the
//! tenant's client secret there; [`crate`] refuses such a field
//! as `end_user`). Every value is checked against the field's anchored
//! pattern before any URL is built, and the filled URLs still pass the
//! network guard when they are resolved. A connection keeps its own values
//! (1 and 3) and reads the integration's defaults when it is used: every
//! later call (refresh, test, revocation) fills its URLs with the
//! connection's own values over the integration's current defaults (a
//! changed default moves the connections that rely on it).
//! Held by `a_templated_value_typed_by_the_end_user_is_checked_before_any_request`
//! and `own_values_refuse_what_the_end_user_may_not_set`.

use crate::{ConfigField, Provider};
use serde::Serialize;
use std::collections::BTreeMap;

/// Field name -> value.
pub type Values = BTreeMap<String, String>;

/// At most this many values per connection, each at most this long.
pub const MAX_VALUES: usize = 20;
pub const MAX_VALUE_LEN: usize = 256;

/// A connection value refused, and why (the domain answers it as
/// `invalid_connection_config`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("connection config: {0}")]
pub struct InvalidConfig(pub String);

fn invalid(m: String) -> InvalidConfig {
    InvalidConfig(m)
}

/// Parses values sent by a browser or a backend: bounded in number and
/// length, names of letters, digits and `_`, no control characters. The
/// provider's patterns are checked later, by [`own_values`].
pub fn parse_values(raw: &Values) -> Result<Values, InvalidConfig> {
    if raw.len() > MAX_VALUES {
        return Err(invalid(format!("at most {MAX_VALUES} values")));
    }
    for (k, v) in raw {
        let name_ok = !k.is_empty()
            && k.len() <= 64
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            return Err(invalid("field names are letters, digits and _".into()));
        }
        if v.is_empty() || v.len() > MAX_VALUE_LEN || v.chars().any(char::is_control) {
            return Err(invalid(format!(
                "value of '{k}' must be 1-{MAX_VALUE_LEN} printable characters"
            )));
        }
    }
    Ok(raw.clone())
}

/// Who sets a field, as the Connect page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "FieldSource")]
pub enum Source {
    /// The integration's default.
    Integration,
    /// The app's backend, in the connect session.
    App,
    /// The end user types it.
    EndUser,
    /// Read from the key file the end user uploads (a service account's
    /// email), not typed.
    KeyFile,
    /// Nobody may: the app must set it (a whole-host field, say).
    Missing,
}

/// One field of a provider as it stands for one connect session.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "PageField", deny_unknown_fields)]
pub struct FieldState {
    pub name: String,
    pub label: String,
    pub description: String,
    pub example: String,
    /// The anchored pattern (also checked in the browser, as a hint).
    pub pattern: String,
    pub source: Source,
    /// The fixed value, when the app or the integration set it.
    pub value: Option<String>,
}

fn state(name: &str, f: &ConfigField, source: Source, value: Option<&String>) -> FieldState {
    FieldState {
        name: name.to_string(),
        label: f.label.clone().unwrap_or_else(|| name.to_string()),
        description: f.description.clone(),
        example: f.example.clone(),
        pattern: f.pattern.clone(),
        source,
        value: value.cloned(),
    }
}

/// The provider's fields for one session: fixed ones with their value and
/// who set it, the ones the end user fills, and the ones nobody may.
pub fn fields(provider: &Provider, defaults: &Values, app_values: &Values) -> Vec<FieldState> {
    let from_file = |name: &str| {
        provider
            .signed_jwt()
            .and_then(|s| s.key_file)
            .is_some_and(|k| k.values().contains(&name))
    };
    provider
        .config_fields
        .iter()
        .map(
            |(name, f)| match (app_values.get(name), defaults.get(name)) {
                (Some(v), _) => state(name, f, Source::App, Some(v)),
                (None, Some(v)) => state(name, f, Source::Integration, Some(v)),
                (None, None) if f.end_user && from_file(name) => {
                    state(name, f, Source::KeyFile, None)
                }
                (None, None) if f.end_user => state(name, f, Source::EndUser, None),
                (None, None) => state(name, f, Source::Missing, None),
            },
        )
        .collect()
}

/// The values a new connection owns: the app's for it and the end user's,
/// checked against the provider, and complete with the integration's
/// defaults. Refuses an end-user value for a field the app or the
/// integration set, or that the provider does not let the end user set.
pub fn own_values(
    provider: &Provider,
    defaults: &Values,
    app_values: &Values,
    user_values: &Values,
    allow_loopback: bool,
) -> Result<Values, InvalidConfig> {
    let user_values = parse_values(user_values)?;
    let mut own = parse_values(app_values)?;
    for (name, value) in user_values {
        let field = provider
            .config_fields
            .get(&name)
            .ok_or_else(|| invalid(format!("'{name}' is not a field of this provider")))?;
        if own.contains_key(&name) || defaults.contains_key(&name) {
            return Err(invalid(format!("'{name}' is set by the app")));
        }
        if !field.end_user {
            return Err(invalid(format!("'{name}' must be set by the app")));
        }
        own.insert(name, value);
    }
    provider
        .check_partial(&own)
        .map_err(|e| invalid(e.to_string()))?;
    let all = effective(defaults, &own);
    provider
        .check_config(&all)
        .map_err(|e| invalid(e.to_string()))?;
    // Every URL it fills, checked now: a value the pattern admits may still
    // make an address the guard refuses.
    provider
        .check_urls(&all, allow_loopback)
        .map_err(|e| invalid(e.to_string()))?;
    // A value equal to the default is the default: one spelling of each
    // connection, whichever way its values were given.
    own.retain(|k, v| defaults.get(k) != Some(v));
    Ok(own)
}

/// The values a call for a connection uses: its own over the integration's.
pub fn effective(defaults: &Values, own: &Values) -> Values {
    let mut out = defaults.clone();
    out.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;

    fn v(pairs: &[(&str, &str)]) -> Values {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn own_values_refuse_what_the_end_user_may_not_set() {
        let shop = Registry::embedded().get("demo-shop").unwrap();
        let defaults = v(&[("host", "localhost:9100")]);
        // The end user fills the open field.
        let own = own_values(shop, &defaults, &v(&[]), &v(&[("shop", "acme")]), true).unwrap();
        assert_eq!(own, v(&[("shop", "acme")]));
        assert_eq!(
            effective(&defaults, &own),
            v(&[("host", "localhost:9100"), ("shop", "acme")])
        );
        for (app, user, why) in [
            // The host is the integration's: the end user cannot move it.
            (
                v(&[]),
                v(&[("host", "evil.example:80")]),
                "is set by the app",
            ),
            // The app fixed the shop for this connection.
            (
                v(&[("shop", "acme")]),
                v(&[("shop", "globex")]),
                "is set by the app",
            ),
            // A value outside the pattern, before any URL is built.
            (
                v(&[]),
                v(&[("shop", "acme.evil.example")]),
                "does not match",
            ),
            (v(&[]), v(&[("shop", "ACME")]), "does not match"),
            (v(&[]), v(&[("realm", "x")]), "not a field"),
            // Nothing typed: the field is required.
            (v(&[]), v(&[]), "is required"),
        ] {
            let e = own_values(shop, &defaults, &app, &user, true).unwrap_err();
            assert!(e.to_string().contains(why), "{e} (wanted {why})");
        }
        // A field that is a whole host is never the end user's.
        let gitlab = Registry::embedded().get("gitlab-self-managed").unwrap();
        let none = v(&[]);
        let e = own_values(
            gitlab,
            &none,
            &none,
            &v(&[("hostname", "a.example.com")]),
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("must be set by the app"), "{e}");
        // The app may set it, but not to an address the guard refuses
        // (Keycloak's host pattern admits an IP literal).
        let app = |h: &str| own_values(gitlab, &none, &v(&[("hostname", h)]), &none, false);
        assert!(app("git.acme.com").is_ok());
        let keycloak = Registry::embedded().get("keycloak").unwrap();
        let kc = |h: &str| {
            own_values(
                keycloak,
                &none,
                &v(&[("host", h), ("realm", "acme")]),
                &none,
                false,
            )
        };
        assert!(kc("sso.acme.com").is_ok());
        let e = kc("10.0.0.1").unwrap_err();
        assert!(e.0.contains("10.0.0.1"), "{e}");
        // The app's value equal to the default is the default.
        let own = own_values(
            shop,
            &defaults,
            &v(&[("host", "localhost:9100"), ("shop", "acme")]),
            &none,
            true,
        )
        .unwrap();
        assert_eq!(own, v(&[("shop", "acme")]));
    }

    #[test]
    fn fields_say_who_sets_each_value() {
        let shop = Registry::embedded().get("demo-shop").unwrap();
        let f = fields(shop, &v(&[("host", "localhost:9100")]), &v(&[]));
        let by: BTreeMap<_, _> = f.iter().map(|s| (s.name.as_str(), s.source)).collect();
        assert_eq!(by["host"], Source::Integration);
        assert_eq!(by["shop"], Source::EndUser);
        let f = fields(shop, &v(&[]), &v(&[("shop", "acme")]));
        let by: BTreeMap<_, _> = f.iter().map(|s| (s.name.as_str(), s.source)).collect();
        assert_eq!(by["host"], Source::Missing);
        assert_eq!(by["shop"], Source::App);
    }

    #[test]
    fn oversized_or_control_values_are_refused_before_patterns() {
        assert!(parse_values(&v(&[("shop", &"a".repeat(257))])).is_err());
        assert!(parse_values(&v(&[("shop", "a\nb")])).is_err());
        assert!(parse_values(&v(&[("sh-op", "a")])).is_err());
        let many: Values = (0..21).map(|i| (format!("f{i}"), "x".into())).collect();
        assert!(parse_values(&many).is_err());
    }
}
