//! Request parsing and response building shared by every handler.
//!
//! Handlers read the raw path and query themselves rather than relying on
//! API Gateway path parameters, so the same code runs behind the HTTP API,
//! a function URL and `cargo lambda watch`.

use domain::error::ApiError;
use lambda_http::http::{HeaderValue, StatusCode, header};
use lambda_http::{Body, Request, RequestExt, Response};
use serde::de::DeserializeOwned;

/// Largest JSON body the API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Headers every response carries.
const NO_STORE: &str = "no-store";

pub use providers::netguard::is_loopback_url;

/// The query string's parameters.
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn of(req: &Request) -> Self {
        Self::parse(req.uri().query().unwrap_or(""))
    }

    /// Parameters of a query string or an `application/x-www-form-urlencoded` body.
    pub fn parse(text: &str) -> Self {
        Self(
            url::form_urlencoded::parse(text.as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// The parameter's value; a parameter given twice is refused, since a
    /// second `state` or `code` is a sign of tampering.
    pub fn single(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut it = self.0.iter().filter(|(k, _)| k == name);
        let first = it.next().map(|(_, v)| v.as_str());
        if it.next().is_some() {
            return Err(ApiError::InvalidRequest(format!(
                "parameter '{name}' repeated"
            )));
        }
        Ok(first)
    }

    /// The parameters named `{prefix}{name}`, by name (the Connect page's
    /// `config.shop`); a name given twice is refused.
    pub fn prefixed(
        &self,
        prefix: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
        let mut out = std::collections::BTreeMap::new();
        for (k, v) in &self.0 {
            if let Some(name) = k.strip_prefix(prefix) {
                if out.insert(name.to_string(), v.clone()).is_some() {
                    return Err(ApiError::InvalidRequest(format!(
                        "parameter '{k}' repeated"
                    )));
                }
            }
        }
        Ok(out)
    }
}

/// The value of cookie `name`, if the request carries it once.
pub fn cookie(req: &Request, name: &str) -> Option<String> {
    let mut found = None;
    for value in req.headers().get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=') {
                if k == name {
                    if found.is_some() {
                        return None;
                    }
                    found = Some(v.to_string());
                }
            }
        }
    }
    found
}

/// The bearer token of the `Authorization` header; none when the header
/// is missing, repeated or not ASCII.
pub fn bearer(req: &Request) -> Option<&str> {
    let mut all = req.headers().get_all(header::AUTHORIZATION).iter();
    let (v, None) = (all.next()?, all.next()) else {
        return None;
    };
    let v = v.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The domain API Gateway received the request on (never the client's Host header).
pub fn gateway_domain(req: &Request) -> Option<String> {
    match req.request_context_ref()? {
        lambda_http::request::RequestContext::ApiGatewayV2(ctx) => ctx.domain_name.clone(),
        _ => None,
    }
}

/// The path without any trailing slash, split in segments.
pub fn segments(req: &Request) -> Vec<String> {
    req.uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect()
}

/// A path segment, percent-decoded (`+` stays `+`: it is no space in a
/// path); bytes that are no UTF-8 become U+FFFD.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The value of header `name` when the request carries it exactly once,
/// as visible ASCII.
pub fn single_header<'r>(req: &'r Request, name: &str) -> Option<&'r str> {
    let mut all = req.headers().get_all(name).iter();
    let (Some(v), None) = (all.next(), all.next()) else {
        return None;
    };
    v.to_str().ok()
}

/// Whether the request says, once, that its body is of media type `essence`
/// (parameters such as `charset` allowed).
pub(crate) fn has_media_type(req: &Request, essence: &str) -> bool {
    single_header(req, header::CONTENT_TYPE.as_str()).is_some_and(|v| {
        v.split(';')
            .next()
            .is_some_and(|e| e.trim().eq_ignore_ascii_case(essence))
    })
}

fn is_json(req: &Request) -> bool {
    has_media_type(req, "application/json")
}

/// Largest form body a browser page posts to the broker.
pub const MAX_FORM_BYTES: usize = 4 * 1024;

/// Parses an `application/x-www-form-urlencoded` body of at most
/// [`MAX_FORM_BYTES`] (415 for another type, 400 for bytes that are not UTF-8).
pub fn form_body(req: &Request) -> Result<Query, ApiError> {
    let bytes: &[u8] = match req.body() {
        Body::Text(t) => t.as_bytes(),
        Body::Binary(b) => b,
        _ => b"",
    };
    if bytes.len() > MAX_FORM_BYTES {
        return Err(ApiError::PayloadTooLarge);
    }
    if !bytes.is_empty() && !has_media_type(req, "application/x-www-form-urlencoded") {
        return Err(ApiError::UnsupportedMediaType);
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::InvalidRequest("the form is not UTF-8".into()))?;
    Ok(Query::parse(text))
}

/// Parses a JSON body of at most [`MAX_BODY_BYTES`], sent as
/// `application/json` (415 otherwise). Bytes that are not UTF-8 JSON (an
/// API Gateway base64 body decoding to anything else included) are a 400.
pub fn json_body<T: DeserializeOwned>(req: &Request) -> Result<T, ApiError> {
    let bytes: &[u8] = match req.body() {
        Body::Empty => b"",
        Body::Text(t) => t.as_bytes(),
        Body::Binary(b) => b,
        _ => b"",
    };
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge);
    }
    if bytes.is_empty() {
        return Err(ApiError::InvalidRequest("a JSON body is required".into()));
    }
    if !is_json(req) {
        return Err(ApiError::UnsupportedMediaType);
    }
    serde_json::from_slice(bytes).map_err(|e| {
        // serde names a missing, unknown or repeated field, which helps; any
        // other mismatch may quote the value whole (a private key sent where
        // an object belongs, or as an enum's variant), so it says only where
        // (`a_value_of_the_wrong_type_is_never_echoed`).
        let message = e.to_string();
        let names_a_field = ["missing field", "unknown field", "duplicate field"]
            .iter()
            .any(|p| message.starts_with(p));
        let what = match e.classify() {
            serde_json::error::Category::Data if names_a_field => {
                format!("body does not match the schema: {message}")
            }
            serde_json::error::Category::Data => format!(
                "body does not match the schema: a value of the wrong type or form at line {} column {}",
                e.line(),
                e.column()
            ),
            _ => "body is not valid JSON".to_string(),
        };
        ApiError::InvalidRequest(what)
    })
}

fn base(status: u16) -> lambda_http::http::response::Builder {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CACHE_CONTROL, NO_STORE)
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
}

fn finish(b: lambda_http::http::response::Builder, body: Body) -> Response<Body> {
    b.body(body).unwrap_or_else(|_| {
        let mut r = Response::new(Body::Empty);
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

/// A JSON response.
pub fn json<T: crate::views::View>(status: u16, value: &T) -> Response<Body> {
    // A view's maps have string keys: it always serializes.
    let text = serde_json::to_string(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "a response body did not serialize");
        r#"{"error":{"code":"internal_error","message":"internal error"}}"#.into()
    });
    finish(
        base(status).header(header::CONTENT_TYPE, "application/json"),
        Body::Text(text),
    )
}

/// A JSON response from text that is JSON already.
pub fn json_text(status: u16, text: &'static str) -> Response<Body> {
    finish(
        base(status).header(header::CONTENT_TYPE, "application/json"),
        Body::Text(text.to_string()),
    )
}

/// The JSON error body every API failure uses: `{"error": {"code", "message"}}`.
pub fn json_error(err: &ApiError) -> Response<Body> {
    err.log();
    let mut resp = json(
        err.status(),
        &crate::views::ErrorBody {
            error: crate::views::ErrorDetail {
                code: err.code(),
                message: &err.public_message(),
            },
        },
    );
    if matches!(err, ApiError::Unauthorized) {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(secs) = err.retry_after() {
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    resp
}

/// An HTML page with its own `Referrer-Policy` (instead of `no-referrer`).
pub fn html_with_referrer_policy(
    status: u16,
    body: String,
    csp: &str,
    policy: &'static str,
) -> Response<Body> {
    let mut resp = html(status, body, csp, &[]);
    resp.headers_mut()
        .insert(header::REFERRER_POLICY, HeaderValue::from_static(policy));
    resp
}

/// An HTML response with its own Content-Security-Policy and cookies.
pub fn html(status: u16, body: String, csp: &str, cookies: &[String]) -> Response<Body> {
    let mut b = base(status)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header("content-security-policy", csp)
        .header("x-frame-options", "DENY");
    for c in cookies {
        b = b.header(header::SET_COOKIE, c);
    }
    finish(b, Body::Text(body))
}

/// A 303 redirect (after the callback's work: the browser must GET the
/// target, never repeat the request) that sets cookies.
pub fn see_other(location: &str, cookies: &[String]) -> Response<Body> {
    let mut b = base(303).header(header::LOCATION, location);
    for c in cookies {
        b = b.header(header::SET_COOKIE, c);
    }
    finish(b, Body::Empty)
}

/// A 302 redirect that sets cookies.
pub fn redirect(location: &str, cookies: &[String]) -> Response<Body> {
    let mut b = base(302).header(header::LOCATION, location);
    for c in cookies {
        b = b.header(header::SET_COOKIE, c);
    }
    finish(b, Body::Empty)
}

/// A `Set-Cookie` header for a short-lived, HttpOnly binding cookie.
pub fn set_cookie(scope: &domain::config::BindingCookie, value: &str, max_age: i64) -> String {
    let domain::config::BindingCookie { name, path, secure } = scope;
    let secure = if *secure { "; Secure" } else { "" };
    format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}")
}

/// The invocation's deadline, from the Lambda context when there is one.
pub fn deadline(req: &Request) -> domain::deadline::Deadline {
    req.lambda_context_ref()
        .map(|c| domain::deadline::Deadline::from_epoch_ms(c.deadline))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, cookie_header: Option<&str>) -> Request {
        let mut b = lambda_http::http::Request::builder().uri(uri);
        if let Some(c) = cookie_header {
            b = b.header("cookie", c);
        }
        b.body(Body::Empty).unwrap()
    }

    #[test]
    fn repeated_query_parameter_is_refused() {
        let r = req("https://x/cb?state=a&state=b", None);
        assert!(Query::of(&r).single("state").is_err());
        let r = req("https://x/cb?state=a%2Bb", None);
        assert_eq!(Query::of(&r).single("state").unwrap(), Some("a+b"));
    }

    #[test]
    fn cookie_is_found_once_and_duplicates_are_ignored() {
        assert_eq!(
            cookie(&req("https://x/", Some("a=1; b=2")), "b").as_deref(),
            Some("2")
        );
        assert_eq!(cookie(&req("https://x/", Some("b=1; b=2")), "b"), None);
        assert_eq!(cookie(&req("https://x/", None), "b"), None);
    }

    #[test]
    fn a_value_of_the_wrong_type_is_never_echoed() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Body1 {
            config: std::collections::BTreeMap<String, String>,
        }
        let body = format!(
            r#"{{"config": "-----BEGIN {}-----secret-bytes"}}"#,
            "PRIVATE KEY"
        );
        let r = lambda_http::http::Request::builder()
            .header("content-type", "application/json")
            .body(Body::Text(body))
            .unwrap();
        let err = json_body::<Body1>(&r).unwrap_err().to_string();
        assert!(!err.contains("secret-bytes"), "{err}");
        assert!(err.contains("line 1 column"), "{err}");
        let r = lambda_http::http::Request::builder()
            .header("content-type", "application/json")
            .body(Body::Text("{}".into()))
            .unwrap();
        let err = json_body::<Body1>(&r).unwrap_err().to_string();
        assert!(err.contains("missing field `config`"), "{err}");
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        enum Mode {
            A,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Body2 {
            mode: Mode,
        }
        let r = lambda_http::http::Request::builder()
            .header("content-type", "application/json")
            .body(Body::Text(r#"{"mode": "secret-bytes"}"#.into()))
            .unwrap();
        let err = json_body::<Body2>(&r).unwrap_err().to_string();
        assert!(!err.contains("secret-bytes"), "an unknown variant: {err}");
    }

    #[test]
    fn segments_are_percent_decoded() {
        assert_eq!(
            segments(&req("https://x/oauth/a%2Fb/authorize", None)),
            ["oauth", "a/b", "authorize"]
        );
    }
}
