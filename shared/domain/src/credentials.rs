//! Where a connection's credential goes on a call to the provider's API,
//! as the registry says: an OAuth access token in `Authorization: Bearer`
//! unless the provider declares `api_auth` (Mailchimp's `OAuth `, Zoho's
//! `Zoho-oauthtoken `, a query parameter); an API key per `api_key`
//! (a header with a prefix, HTTP Basic with a fixed user, or a query
//! parameter); a user name and password as HTTP Basic (the registry's
//! `basic` mode, with its user-name suffix). Used by connection tests and
//! the proxy alike.

use crate::model::Credentials;
use http::{HeaderName, HeaderValue};
use providers::{ApiKeyPlacement, Provider};
use secrecy::ExposeSecret;
use url::Url;

/// The credential placed: a header to send (marked sensitive, so it is
/// never printed), or nothing when it went into `url`'s query.
pub struct Placed {
    pub header: Option<(HeaderName, HeaderValue)>,
}

/// The placement that applies to `credentials` of `provider`.
fn placement<'p>(provider: &'p Provider, credentials: &Credentials) -> Option<&'p ApiKeyPlacement> {
    match credentials {
        Credentials::Oauth2(_) => provider.api_auth.as_ref(),
        Credentials::ApiKey { .. } => provider.api_key(),
        Credentials::Basic { .. } | Credentials::Client { .. } | Credentials::PrivateKey { .. } => {
            None
        }
    }
}

/// The header name the credential travels in (`None`: a query parameter),
/// which a caller's own headers may never set.
pub fn header_name(provider: &Provider, credentials: &Credentials) -> Option<String> {
    match placement(provider, credentials) {
        Some(p) if p.query.is_some() => None,
        Some(p) => Some(p.header.clone().unwrap_or_else(|| "authorization".into())),
        None => Some("authorization".into()),
    }
}

/// The query parameter the credential travels in, if it does.
pub fn query_name<'p>(provider: &'p Provider, credentials: &Credentials) -> Option<&'p str> {
    placement(provider, credentials).and_then(|p| p.query.as_deref())
}

/// The credential cannot travel where the registry puts it (a stored key
/// with a line break, or a header name the registry got wrong).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsendable;

/// Places `credentials` on a call to `url`.
pub fn place(
    provider: &Provider,
    credentials: &Credentials,
    url: &mut Url,
) -> Result<Placed, Unsendable> {
    let secret = match credentials {
        Credentials::Oauth2(t) => t.access_token.expose_secret(),
        Credentials::ApiKey { api_key } => api_key.expose_secret(),
        Credentials::Basic { username, password } => {
            let suffix = provider.basic().map_or("", |b| b.username_suffix.as_str());
            let user = format!("{}{suffix}", username.expose_secret());
            return Ok(Placed {
                header: basic_header(&user, password.expose_secret())?,
            });
        }
        // A client's secret is never sent to the API: its minted token is.
        // A private key never leaves the broker: what it signed is sent.
        Credentials::Client { .. } | Credentials::PrivateKey { .. } => return Err(Unsendable),
    };
    let placed = match placement(provider, credentials) {
        Some(p) if p.basic_username.is_some() => {
            let user = p.basic_username.as_deref().unwrap_or_default();
            basic_header(user, secret)
        }
        Some(p) if p.basic_password.is_some() => {
            basic_header(secret, p.basic_password.as_deref().unwrap_or_default())
        }
        Some(p) if p.query.is_some() => {
            url.query_pairs_mut()
                .append_pair(p.query.as_deref().unwrap_or_default(), secret);
            Ok(None)
        }
        Some(p) => header(
            p.header.as_deref().unwrap_or("authorization"),
            format!("{}{secret}", p.prefix),
        ),
        None => header("authorization", format!("Bearer {secret}")),
    }?;
    Ok(Placed { header: placed })
}

/// A sensitive header (never printed) named `name`.
fn header(name: &str, value: String) -> Result<Option<(HeaderName, HeaderValue)>, Unsendable> {
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| Unsendable)?;
    let mut value = HeaderValue::from_str(&value).map_err(|_| Unsendable)?;
    value.set_sensitive(true);
    Ok(Some((name, value)))
}

/// `Authorization: Basic` for `user` and `password` (RFC 7617; a user
/// name with a colon could not be told from its password, so it is not
/// sendable).
fn basic_header(
    user: &str,
    password: &str,
) -> Result<Option<(HeaderName, HeaderValue)>, Unsendable> {
    use base64::Engine;
    if user.contains(':') {
        return Err(Unsendable);
    }
    let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    header("authorization", format!("Basic {pair}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TokenSet;
    use providers::Registry;
    use secrecy::SecretString;

    fn oauth(token: &str) -> Credentials {
        Credentials::Oauth2(TokenSet {
            access_token: SecretString::from(token.to_string()),
            refresh_token: None,
            id_token: None,
            token_type: "bearer".into(),
            scope: None,
            expires_at: None,
            obtained_at: 0,
            supersedes: None,
        })
    }

    /// A provider that takes its key in the query (no built-in one does).
    const QUERY_KEY: &str = r#"
[query-key]
display_name = "Query key"
categories = ["developer-tools"]
docs_url = "https://example.com/docs"
auth_mode = "api_key"
api_key = { query = "api_key" }
verification = { url = "https://api.example.com/me" }
api_base_url = "https://api.example.com"
"#;

    #[test]
    fn each_registry_placement_puts_the_credential_where_the_provider_reads_it() {
        let r = Registry::embedded();
        let url = || Url::parse("https://api.example.com/x?a=1").unwrap();
        let mut u = url();
        let p = place(r.get("github").unwrap(), &oauth("t1"), &mut u).unwrap();
        let (n, v) = p.header.unwrap();
        assert_eq!(
            (n.as_str(), v.to_str().unwrap()),
            ("authorization", "Bearer t1")
        );
        assert!(v.is_sensitive());
        let mut u = url();
        let (n, v) = place(r.get("mailchimp").unwrap(), &oauth("t2"), &mut u)
            .unwrap()
            .header
            .unwrap();
        assert_eq!(
            (n.as_str(), v.to_str().unwrap()),
            ("authorization", "OAuth t2")
        );
        let mut u = url();
        let (_, v) = place(r.get("zoho").unwrap(), &oauth("t3"), &mut u)
            .unwrap()
            .header
            .unwrap();
        assert_eq!(v.to_str().unwrap(), "Zoho-oauthtoken t3");
        let key = |k: &str| Credentials::ApiKey {
            api_key: SecretString::from(k.to_string()),
        };
        for (provider, expect_header, expect_query) in [
            (
                "demo-api-key",
                Some(("authorization", "Bearer k1".to_string())),
                None,
            ),
            (
                "mailgun",
                Some(("authorization", format!("Basic {}", b64("api:k1")))),
                None,
            ),
        ] {
            let mut u = url();
            let placed = place(r.get(provider).unwrap(), &key("k1"), &mut u).unwrap();
            let got = placed
                .header
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()));
            assert_eq!(
                got,
                expect_header.map(|(n, v)| (n.to_string(), v)),
                "{provider}"
            );
            assert_eq!(u.query(), expect_query.or(Some("a=1")), "{provider}");
        }
        let fixture = Registry::parse(QUERY_KEY).unwrap();
        let query_provider = fixture.get("query-key").unwrap();
        let mut u = url();
        assert!(
            place(query_provider, &key("k1"), &mut u)
                .unwrap()
                .header
                .is_none()
        );
        let name = query_name(query_provider, &key("k1")).unwrap();
        assert_eq!(u.query(), Some(format!("a=1&{name}=k1").as_str()));
        assert_eq!(header_name(query_provider, &key("k1")), None);
        // A stored key that cannot be a header value is refused, not dropped.
        let mut u = url();
        assert!(place(r.get("demo-api-key").unwrap(), &key("k1\r\nx: y"), &mut u).is_err());
    }

    /// A basic provider with a user-name suffix (Zendesk's shape) and a key
    /// sent as the user name with a fixed password (Freshdesk's).
    const BASIC: &str = r#"
[pair]
display_name = "Pair"
categories = ["support"]
docs_url = "https://example.com/docs"
auth_mode = "basic"
basic = { username_label = "Email", password_label = "API token", username_suffix = "/token" }
verification = { url = "https://api.example.com/me" }

[key-as-user]
display_name = "Key as user"
categories = ["support"]
docs_url = "https://example.com/docs"
auth_mode = "api_key"
api_key = { basic_password = "X" }
verification = { url = "https://api.example.com/me" }
"#;

    #[test]
    fn basic_pairs_are_sent_as_http_basic_with_the_providers_user_name_suffix() {
        let r = Registry::parse(BASIC).unwrap();
        let pair = |u: &str, p: &str| Credentials::Basic {
            username: SecretString::from(u.to_string()),
            password: SecretString::from(p.to_string()),
        };
        let sent = |provider: &str, c: &Credentials| {
            let mut u = Url::parse("https://api.example.com/x").unwrap();
            let placed = place(r.get(provider).unwrap(), c, &mut u).map(|p| {
                let (n, v) = p.header.unwrap();
                assert!(v.is_sensitive());
                (n.to_string(), v.to_str().unwrap().to_string())
            });
            assert_eq!(u.query(), None, "nothing in the URL");
            placed
        };
        assert_eq!(
            sent("pair", &pair("ann@example.com", "s3cret:x")).unwrap(),
            (
                "authorization".to_string(),
                format!("Basic {}", b64("ann@example.com/token:s3cret:x"))
            )
        );
        assert_eq!(
            header_name(r.get("pair").unwrap(), &pair("a", "b")).as_deref(),
            Some("authorization")
        );
        // A user name with a colon would be read as part of the password.
        assert!(sent("pair", &pair("a:b", "c")).is_err());
        let key = Credentials::ApiKey {
            api_key: SecretString::from("k1".to_string()),
        };
        assert_eq!(
            sent("key-as-user", &key).unwrap().1,
            format!("Basic {}", b64("k1:X"))
        );
        // One placement only.
        let two = BASIC.replace(
            "basic_password = \"X\"",
            "basic_password = \"X\", header = \"H\"",
        );
        let e = Registry::parse(&two).unwrap_err().to_string();
        assert!(e.contains("exactly one of"), "{e}");
    }

    fn b64(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    }
}
