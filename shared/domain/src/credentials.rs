//! Where a connection's credential goes on a call to the provider's API,
//! as the registry says: an OAuth access token in `Authorization: Bearer`
//! unless the provider declares `api_auth` (Mailchimp's `OAuth `, Zoho's
//! `Zoho-oauthtoken `, a query parameter); an API key per `api_key`
//! (a header with a prefix, HTTP Basic with a fixed user, or a query
//! parameter). Used by connection tests and the proxy alike.

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
    };
    let header = |name: &str, value: String| {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| Unsendable)?;
        let mut value = HeaderValue::from_str(&value).map_err(|_| Unsendable)?;
        value.set_sensitive(true);
        Ok(Some((name, value)))
    };
    let placed = match placement(provider, credentials) {
        Some(p) if p.basic_username.is_some() => {
            use base64::Engine;
            let user = p.basic_username.as_deref().unwrap_or_default();
            let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
            header("authorization", format!("Basic {pair}"))
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

    fn b64(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    }
}
