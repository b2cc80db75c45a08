//! Test harness for the end-to-end and adapter tests: reaches the local
//! stack started by `scripts/test` (moto server, oidc-provider,
//! `cargo lambda watch`) through the environment it exports, and drives a
//! browser-like, cookie-keeping HTTP client through the real provider.

use aws_sdk_secretsmanager::types::Filter;
use rand_free::suffix;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use url::Url;

pub mod jwt;
pub mod openapi;

mod rand_free {
    /// A short unique suffix for per-test names (tenants, tables, prefixes).
    pub fn suffix() -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!(
            "{:x}{:x}{:x}",
            std::process::id(),
            nanos % 0xffff_ffff,
            N.fetch_add(1, Ordering::SeqCst)
        )
    }
}

pub use rand_free::suffix as unique_suffix;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run these tests through scripts/test, which starts the local stack"
        )
    })
}

/// The access key id of a profile of the local stack's credentials file
/// (each function signs as its own IAM user).
pub fn profile_key(profile: &str) -> Option<String> {
    let path = std::env::var("AWS_SHARED_CREDENTIALS_FILE").ok()?;
    let text = std::fs::read_to_string(path).ok()?;
    let mut in_profile = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_profile = line == format!("[{profile}]");
        } else if in_profile && let Some(v) = line.strip_prefix("aws_access_key_id") {
            return Some(v.trim_start_matches([' ', '=']).trim().to_string());
        }
    }
    None
}

/// Records a secret value the test saw, for the log-hygiene check that runs
/// after the stack stops (`no_secrets_in_logs`).
pub fn ledger(secret: &str) {
    if secret.len() < 8 {
        return;
    }
    let path = format!("{}/secrets-ledger.txt", env("STACK_DIR"));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("ledger");
    writeln!(f, "{secret}").expect("ledger write");
}

/// AWS SDK configuration pointed at moto server (through `AWS_ENDPOINT_URL`).
pub async fn sdk_config() -> aws_config::SdkConfig {
    env("AWS_ENDPOINT_URL");
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(sdk_http_client())
        .load()
        .await
}

/// The broker's own SDK HTTP client (`aws::aws_http`), which every
/// harness call goes through too.
pub fn sdk_http_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    aws::aws_http::http_client(
        domain::tls::client_config(&domain::tls::TlsSettings::default()).expect("compiled roots"),
    )
}

/// Creates a table with the deployed schema (read from template.yaml by
/// scripts/create_table.py) and returns its name.
pub fn create_table(prefix: &str) -> String {
    let name = format!("{prefix}-{}", suffix());
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let status = std::process::Command::new(format!("{root}/.venv/bin/python"))
        .arg(format!("{root}/scripts/create_table.py"))
        .arg(&name)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run create_table.py");
    assert!(status.success(), "create_table.py failed");
    name
}

/// The running local stack.
#[derive(Clone)]
pub struct Stack {
    pub broker: Url,
    pub issuer: Url,
    pub table: String,
    pub secret_prefix: String,
    pub http: reqwest::Client,
    pub dynamo: aws_sdk_dynamodb::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
}

/// A tenant created for one test, with its backend API key.
#[derive(Clone)]
pub struct Tenant {
    pub id: String,
    pub api_key: String,
}

/// A client registered at the provider for one test.
#[derive(Clone)]
pub struct ProviderClient {
    pub client_id: String,
    pub client_secret: String,
}

impl ProviderClient {
    /// The client of a registration answer (a client that authenticates
    /// with a private key has no secret: empty).
    pub fn of(registration: &Value) -> Self {
        Self {
            client_id: registration["client_id"]
                .as_str()
                .expect("client_id")
                .into(),
            client_secret: registration["client_secret"]
                .as_str()
                .unwrap_or_default()
                .into(),
        }
    }
}

/// A machine client's registration metadata: the client credentials grant
/// only, authenticated as `auth_method`.
pub fn m2m_registration(auth_method: &str) -> Value {
    json!({
        "redirect_uris": [],
        "grant_types": ["client_credentials"],
        "response_types": [],
        "token_endpoint_auth_method": auth_method,
    })
}

impl Stack {
    pub async fn from_env() -> Self {
        let sdk = sdk_config().await;
        Self {
            broker: Url::parse(&format!("{}/", env("BROKER_URL").trim_end_matches('/')))
                .expect("BROKER_URL"),
            issuer: Url::parse(&env("OIDC_ISSUER")).expect("OIDC_ISSUER"),
            table: env("TABLE_NAME"),
            secret_prefix: env("SECRET_PREFIX"),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(std::time::Duration::from_secs(120))
                .build()
                .expect("client"),
            dynamo: aws_sdk_dynamodb::Client::new(&sdk),
            secrets: aws_sdk_secretsmanager::Client::new(&sdk),
        }
    }

    pub fn url(&self, path: &str) -> String {
        self.broker
            .join(path.trim_start_matches('/'))
            .expect("url")
            .to_string()
    }

    /// Creates a tenant and its API key through the `admin` function.
    pub async fn create_tenant(&self) -> Tenant {
        let id = format!("t-{}", suffix());
        let resp = self
            .http
            .post(self.url("/2015-03-31/functions/admin/invocations"))
            .json(&json!({"action": "create_api_key", "tenant_id": id}))
            .send()
            .await
            .expect("invoke admin");
        assert!(
            resp.status().is_success(),
            "admin invoke: {}",
            resp.status()
        );
        let v: Value = resp.json().await.expect("admin json");
        let api_key = v["api_key"].as_str().expect("api_key").to_string();
        ledger(&api_key);
        Tenant { id, api_key }
    }

    /// Registers a fresh client at the provider (open dynamic registration).
    pub async fn register_client(&self, integration_id: &str) -> ProviderClient {
        let redirect = self.url(&format!("/oauth/{integration_id}/callback"));
        let v = self
            .register_at_provider(&json!({
                "redirect_uris": [redirect],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "client_secret_basic",
            }))
            .await;
        ProviderClient::of(&v)
    }

    /// Registers a fresh machine client at the provider: the client
    /// credentials grant only, authenticated as `auth_method`
    /// (`client_secret_basic`, `client_secret_post`).
    pub async fn register_m2m_client(&self, auth_method: &str) -> ProviderClient {
        ProviderClient::of(
            &self
                .register_at_provider(&m2m_registration(auth_method))
                .await,
        )
    }

    /// Registers `metadata` at the provider (RFC 7591) and answers its
    /// registration, whose secrets go to the ledger.
    pub async fn register_at_provider(&self, metadata: &Value) -> Value {
        let v: Value = self
            .http
            .post(self.issuer.join("reg").unwrap())
            .json(metadata)
            .send()
            .await
            .expect("register")
            .error_for_status()
            .expect("registration accepted")
            .json()
            .await
            .expect("registration json");
        for k in ["client_secret", "registration_access_token"] {
            if let Some(s) = v[k].as_str() {
                ledger(s);
            }
        }
        v
    }

    /// Sets the lifetime of the access tokens the provider issues to
    /// `client` from now on, code exchanges included (the stack's default
    /// first token lives 4 s, so a new connection is due at once).
    pub async fn set_access_token_ttl(&self, client: &ProviderClient, seconds: u64) {
        let mut u = self.issuer.join("__test/access-token-ttl").unwrap();
        u.query_pairs_mut()
            .append_pair("client_id", &client.client_id)
            .append_pair("ttl", &seconds.to_string());
        self.http
            .put(u)
            .send()
            .await
            .expect("set ttl")
            .error_for_status()
            .expect("ttl accepted");
    }

    /// Creates an integration of the demo provider for `tenant`.
    pub async fn create_integration(&self, tenant: &Tenant, id: &str, client: &ProviderClient) {
        let host = format!(
            "{}:{}",
            self.issuer.host_str().unwrap(),
            self.issuer.port().unwrap()
        );
        let resp = self
            .api(tenant, reqwest::Method::POST, "/integrations")
            .json(&json!({
                "id": id, "provider": "demo", "client_id": client.client_id,
                "client_secret": client.client_secret, "config": {"host": host}
            }))
            .send()
            .await
            .expect("create integration");
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "{}",
            resp.text().await.unwrap_or_default()
        );
    }

    /// An authenticated backend API request.
    pub fn api(
        &self,
        tenant: &Tenant,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&tenant.api_key)
    }

    /// A backend API call with an optional JSON body: its status and its
    /// body as JSON (or as a JSON string when it is not JSON).
    pub async fn call(
        &self,
        tenant: &Tenant,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.api(tenant, method, path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("api request");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Mints a connect session; returns its token.
    pub async fn connect_session(
        &self,
        tenant: &Tenant,
        end_user: &str,
        integrations: &[&str],
        origin: &str,
    ) -> String {
        let resp = self
            .api(tenant, reqwest::Method::POST, "/connect-sessions")
            .json(&json!({"end_user_id": end_user, "integrations": integrations, "origin": origin}))
            .send()
            .await
            .expect("connect session");
        assert_eq!(resp.status(), StatusCode::CREATED);
        let v: Value = resp.json().await.unwrap();
        let token = v["token"].as_str().unwrap().to_string();
        ledger(&token);
        token
    }

    /// Token endpoint requests the provider counted for `client_id`.
    pub async fn token_requests(&self, client_id: &str) -> u64 {
        let mut u = self.issuer.join("__test/token-requests").unwrap();
        u.query_pairs_mut().append_pair("client_id", client_id);
        let v: Value = self.http.get(u).send().await.unwrap().json().await.unwrap();
        v["count"].as_u64().expect("count")
    }

    /// Names of the connection secrets stored for `tenant`.
    pub async fn connection_secrets(&self, tenant: &Tenant) -> Vec<String> {
        let prefix = format!("{}connections/{}/", self.secret_prefix, tenant.id);
        let out = self
            .secrets
            .list_secrets()
            .filters(
                Filter::builder()
                    .key("name".into())
                    .values(prefix.clone())
                    .build(),
            )
            .max_results(100)
            .send()
            .await
            .expect("list secrets");
        out.secret_list()
            .iter()
            .filter_map(|s| s.name())
            .filter(|n| n.starts_with(&prefix))
            .map(String::from)
            .collect()
    }

    /// Connection items stored for `tenant` (one Query on its partition).
    pub async fn connection_items(
        &self,
        tenant: &Tenant,
    ) -> Vec<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> {
        use aws_sdk_dynamodb::types::AttributeValue as A;
        let out = self
            .dynamo
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :c)")
            .expression_attribute_values(":pk", A::S(format!("TENANT#{}", tenant.id)))
            .expression_attribute_values(":c", A::S("CONNECTION#".into()))
            .send()
            .await
            .expect("query");
        out.items().to_vec()
    }

    /// Reads a secret's current value.
    pub async fn secret_json(&self, name: &str) -> Value {
        let out = self
            .secrets
            .get_secret_value()
            .secret_id(name)
            .send()
            .await
            .expect("get secret");
        serde_json::from_str(out.secret_string().expect("string secret")).expect("secret json")
    }
}

/// Cookies by (host, name), holding (path, value).
type CookieJar = BTreeMap<(String, String), (String, String)>;

/// A cookie-keeping, non-redirecting HTTP client that behaves like the
/// popup's browser: cookies by host and path, redirects followed by hand.
#[derive(Clone)]
pub struct Browser {
    http: reqwest::Client,
    jar: Arc<Mutex<CookieJar>>,
    /// Origin of the page that starts connect flows in this browser (the
    /// `Origin` header of its authorize POST).
    page_origin: String,
}

/// The app page's origin every end-to-end suite mints its sessions for.
pub const APP_ORIGIN: &str = "http://localhost:9299";

/// One response, with the pieces the tests look at.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub url: Url,
    pub location: Option<Url>,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    /// The JSON message the popup page posts to its opener.
    pub fn posted_message(&self) -> Option<Value> {
        let re = regex::Regex::new(r#"(?s)<script type="application/json" id="result" data-origin="([^"]*)"[^>]*>(.*?)</script>"#).unwrap();
        let c = re.captures(&self.body)?;
        serde_json::from_str(c.get(2)?.as_str()).ok()
    }

    /// The origin the popup page posts to.
    pub fn post_origin(&self) -> Option<String> {
        let re = regex::Regex::new(r#"id="result" data-origin="([^"]*)""#).unwrap();
        re.captures(&self.body).map(|c| c[1].to_string())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Self {
        Self::at(APP_ORIGIN)
    }

    /// A browser whose connect flows are started by a page of `origin`.
    pub fn at(origin: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(std::time::Duration::from_secs(120))
                .build()
                .unwrap(),
            jar: Arc::default(),
            page_origin: origin.to_string(),
        }
    }

    /// A browser with the same cookies (another tab of the same browser).
    pub fn same_cookies(&self) -> Self {
        self.clone()
    }

    fn cookie_header(&self, url: &Url) -> Option<String> {
        let host = url.host_str()?.to_string();
        let jar = self.jar.lock().unwrap();
        let v: Vec<String> = jar
            .iter()
            .filter(|((h, _), (path, _))| *h == host && url.path().starts_with(path.as_str()))
            .map(|((_, name), (_, value))| format!("{name}={value}"))
            .collect();
        (!v.is_empty()).then(|| v.join("; "))
    }

    fn store_cookies(&self, url: &Url, headers: &reqwest::header::HeaderMap) {
        let host = url.host_str().unwrap_or_default().to_string();
        let mut jar = self.jar.lock().unwrap();
        for h in headers.get_all("set-cookie") {
            let Ok(text) = h.to_str() else { continue };
            let mut parts = text.split(';');
            let Some((name, value)) = parts.next().and_then(|p| p.trim().split_once('=')) else {
                continue;
            };
            let mut path = "/".to_string();
            let mut expired = value.is_empty();
            for attr in parts {
                let attr = attr.trim();
                if let Some(p) = attr
                    .strip_prefix("Path=")
                    .or_else(|| attr.strip_prefix("path="))
                {
                    path = p.to_string();
                }
                let lower = attr.to_ascii_lowercase();
                if lower == "max-age=0" || lower.starts_with("expires=thu, 01 jan 1970") {
                    expired = true;
                }
            }
            let key = (host.clone(), name.to_string());
            if expired {
                jar.remove(&key);
            } else {
                jar.insert(key, (path, value.to_string()));
            }
        }
    }

    /// Drops every cookie (a different browser).
    pub fn clear_cookies(&self) {
        self.jar.lock().unwrap().clear();
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: &Url,
        form: Option<&[(&str, &str)]>,
    ) -> Page {
        self.send_from(method, url, form, None).await
    }

    async fn send_from(
        &self,
        method: reqwest::Method,
        url: &Url,
        form: Option<&[(&str, &str)]>,
        origin: Option<&str>,
    ) -> Page {
        let mut req = self.http.request(method, url.clone());
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        if let Some(c) = self.cookie_header(url) {
            req = req.header("cookie", c);
        }
        if let Some(f) = form {
            req = req.form(f);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("request to {} failed: {e}", url.path()));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        self.store_cookies(url, &headers);
        let location = headers
            .get("location")
            .and_then(|l| l.to_str().ok())
            .and_then(|l| url.join(l).ok());
        let body = resp.text().await.unwrap_or_default();
        Page {
            status,
            url: url.clone(),
            location,
            headers,
            body,
        }
    }

    pub async fn get(&self, url: &str) -> Page {
        self.send(reqwest::Method::GET, &Url::parse(url).expect("url"), None)
            .await
    }

    pub async fn post_form(&self, url: &Url, form: &[(&str, &str)]) -> Page {
        self.send(reqwest::Method::POST, url, Some(form)).await
    }

    /// What the broker's connect page does once a page of this browser's
    /// page origin handed it the session of `authorize_url`
    /// (`.../authorize?session=TOKEN`) by `postMessage`: posts the token and
    /// the message's origin to the authorize route, from the broker's own
    /// origin. (`tests/browser` runs the page itself in Chromium.)
    ///
    /// Other parameters of `authorize_url` are posted as the page's other
    /// form fields (the Connect page's `config.NAME` values).
    pub async fn start_connect(&self, authorize_url: &str) -> Page {
        let mut url = Url::parse(authorize_url).expect("url");
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert!(
            pairs.iter().any(|(k, _)| k == "session"),
            "an authorize URL names its session"
        );
        url.set_query(None);
        let broker = url.origin().ascii_serialization();
        let mut form: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        form.push(("origin", &self.page_origin));
        self.send_from(reqwest::Method::POST, &url, Some(&form), Some(&broker))
            .await
    }

    /// What a page of this browser's page origin does when it posts the
    /// session to the authorize route itself (redirect mode): its own Origin.
    pub async fn post_session_from_page(&self, authorize_url: &str, session: &str) -> Page {
        self.send_from(
            reqwest::Method::POST,
            &Url::parse(authorize_url).expect("url"),
            Some(&[("session", session)]),
            Some(&self.page_origin),
        )
        .await
    }

    /// Follows redirects from `url` until a response is not a redirect, or
    /// the next hop would be `stop_before` (returned unfollowed).
    pub async fn follow(&self, url: &Url, stop_before: &str) -> Result<Page, Url> {
        let page = self.send(reqwest::Method::GET, url, None).await;
        self.follow_from(page, stop_before).await
    }

    /// Follows the redirects `page` starts.
    pub async fn follow_from(&self, mut page: Page, stop_before: &str) -> Result<Page, Url> {
        for _ in 0..20 {
            match page.location.clone() {
                Some(next) if (300..400).contains(&page.status) => {
                    if next.as_str().starts_with(stop_before) {
                        return Err(next);
                    }
                    page = self.send(reqwest::Method::GET, &next, None).await;
                }
                _ => return Ok(page),
            }
        }
        panic!("redirect loop");
    }

    /// Starts a connect flow with `authorize_url` ([`Browser::start_connect`])
    /// and passes the provider's login and consent (or denies it), returning
    /// the callback URL the provider redirects to, unfollowed.
    pub async fn sign_in_at_provider(
        &self,
        authorize_url: &str,
        login: &str,
        consent: bool,
        callback_prefix: &str,
    ) -> Url {
        let form_re = regex::Regex::new(r#"<form method="post" action="([^"]+)""#).unwrap();
        // The broker's authorize URL with a session starts the flow as the
        // connect page does; any other URL (the provider's) is followed.
        let start = Url::parse(authorize_url).unwrap();
        let first = if start.query_pairs().any(|(k, _)| k == "session") {
            let started = self.start_connect(authorize_url).await;
            assert_eq!(started.status, 303, "authorize: {}", started.body);
            self.follow_from(started, callback_prefix).await
        } else {
            self.follow(&start, callback_prefix).await
        };
        let mut page = match first {
            Ok(p) => p,
            Err(cb) => return cb,
        };
        for _ in 0..4 {
            assert_eq!(
                page.status,
                200,
                "provider page {}: {}",
                page.url.path(),
                page.body
            );
            let action = form_re
                .captures(&page.body)
                .unwrap_or_else(|| panic!("no form on {}", page.url.path()))[1]
                .to_string();
            let target = page.url.join(&action).unwrap();
            let resp = if action.ends_with("/login") {
                self.post_form(&target, &[("login", login), ("password", "demo")])
                    .await
            } else if consent {
                self.post_form(&target, &[]).await
            } else {
                let abort = target.as_str().replace("/confirm", "/abort");
                self.post_form(&Url::parse(&abort).unwrap(), &[]).await
            };
            let next = resp
                .location
                .clone()
                .unwrap_or_else(|| panic!("no redirect after {action}: {}", resp.status));
            if next.as_str().starts_with(callback_prefix) {
                return next;
            }
            page = match self.follow(&next, callback_prefix).await {
                Ok(p) => p,
                Err(cb) => return cb,
            };
        }
        panic!("provider interaction did not end at the callback");
    }
}

/// Helpers for the token lifecycle tests (refresh, sweep, revocation).
impl Stack {
    /// Runs the popup flow for `end_user` of `tenant` at the real provider
    /// as account `login`, and answers the callback's page (its code and
    /// state go to the ledger).
    pub async fn popup(
        &self,
        tenant: &Tenant,
        integration: &str,
        end_user: &str,
        login: &str,
        origin: &str,
    ) -> Page {
        let session = self
            .connect_session(tenant, end_user, &[integration], origin)
            .await;
        let authorize = self.url(&format!("/oauth/{integration}/authorize?session={session}"));
        let prefix = self.url(&format!("/oauth/{integration}/callback"));
        let browser = Browser::new();
        let cb = browser
            .sign_in_at_provider(&authorize, login, true, &prefix)
            .await;
        for (k, v) in cb.query_pairs() {
            if k == "code" || k == "state" {
                ledger(&v);
            }
        }
        browser.get(cb.as_str()).await
    }

    /// Name of the secret holding connection `id`'s credentials: the one
    /// its record names (each connect writes a secret of its own).
    pub async fn connection_secret_name(&self, tenant: &Tenant, id: &str) -> String {
        self.connection_item(tenant, id)
            .await
            .and_then(|item| item.get("secret_name")?.as_s().ok().cloned())
            .unwrap_or_else(|| panic!("connection {id} names no secret"))
    }

    /// What every secret of connection `id` is named with (its generations
    /// are `<this>/<grant>`): fault rules match requests on it.
    pub fn connection_secret_prefix(&self, tenant: &Tenant, id: &str) -> String {
        format!("{}connections/{}/{}", self.secret_prefix, tenant.id, id)
    }

    /// Token endpoint requests the provider counted for `client_id`, by
    /// grant type (`authorization_code`, `refresh_token`).
    pub async fn token_requests_by_grant(&self, client_id: &str, grant: &str) -> u64 {
        let mut u = self.issuer.join("__test/token-requests").unwrap();
        u.query_pairs_mut().append_pair("client_id", client_id);
        let v: Value = self.http.get(u).send().await.unwrap().json().await.unwrap();
        v["by_grant"][grant].as_u64().unwrap_or(0)
    }

    /// Revocation requests the provider counted for `client_id`.
    pub async fn revocations(&self, client_id: &str) -> u64 {
        let mut u = self.issuer.join("__test/revocations").unwrap();
        u.query_pairs_mut().append_pair("client_id", client_id);
        let v: Value = self.http.get(u).send().await.unwrap().json().await.unwrap();
        v["count"].as_u64().expect("count")
    }

    /// Runs the scheduled sweep (the `refresh` function) for one tenant and
    /// returns its report.
    pub async fn sweep(&self, tenant: &Tenant) -> Value {
        let resp = self
            .http
            .post(self.url("/2015-03-31/functions/refresh/invocations"))
            .json(&json!({"tenant_id": tenant.id}))
            .send()
            .await
            .expect("invoke refresh");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "refresh invoke: {status}: {text}");
        serde_json::from_str(&text).expect("sweep report json")
    }

    /// The DynamoDB item of connection `id`, if any.
    pub async fn connection_item(
        &self,
        tenant: &Tenant,
        id: &str,
    ) -> Option<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> {
        use aws_sdk_dynamodb::types::AttributeValue as A;
        self.dynamo
            .get_item()
            .table_name(&self.table)
            .key("pk", A::S(format!("TENANT#{}", tenant.id)))
            .key("sk", A::S(format!("CONNECTION#{id}")))
            .consistent_read(true)
            .send()
            .await
            .expect("get item")
            .item
    }

    /// Whether a secret named `name` exists.
    pub async fn secret_exists(&self, name: &str) -> bool {
        match self.secrets.get_secret_value().secret_id(name).send().await {
            Ok(_) => true,
            Err(e) => {
                assert!(
                    e.as_service_error()
                        .is_some_and(|s| s.is_resource_not_found_exception()),
                    "get secret: {e:?}"
                );
                false
            }
        }
    }

    /// Writes a new current version of secret `name` (as another instance would).
    /// Writes a new current version of a secret; answers its version id.
    pub async fn put_secret_json(&self, name: &str, value: &Value) -> String {
        self.secrets
            .put_secret_value()
            .secret_id(name)
            .secret_string(value.to_string())
            .send()
            .await
            .expect("put secret value")
            .version_id
            .expect("version id")
    }

    /// Puts a connection record as it is, bypassing the state machine (a
    /// record in a state no transition makes, or a thousand at once).
    pub async fn seed_connection(&self, c: &domain::model::Connection) {
        self.dynamo
            .put_item()
            .table_name(&self.table)
            .set_item(Some(aws::dynamo::connection_item(c).expect("item")))
            .send()
            .await
            .expect("seed a connection");
    }

    /// Creates a token secret with `value` as its first version; answers
    /// the version's id.
    pub async fn seed_token_secret(&self, name: &str, value: &str) -> String {
        self.secrets
            .create_secret()
            .name(name)
            .secret_string(value)
            .send()
            .await
            .expect("create a token secret")
            .version_id
            .expect("version id")
    }

    /// Controls time for functions whose clock a test cannot set: stamps the
    /// token set connection `id` holds as obtained at `at` (unix seconds),
    /// as a new version of its secret that the record is committed to, the
    /// way a sibling's refresh lands. The tokens themselves are unchanged.
    pub async fn restamp_obtained_at(&self, tenant: &Tenant, id: &str, at: i64) {
        let name = self.connection_secret_name(tenant, id).await;
        let mut tokens = self.secret_json(&name).await;
        tokens["obtained_at"] = Value::from(at);
        let version = self.put_secret_json(&name, &tokens).await;
        self.commit_as_sibling(tenant, id, &version).await;
    }

    /// Ends a connection's back-off now, as if its wait had passed (time,
    /// controlled): its failure count stays.
    pub async fn end_backoff(&self, tenant: &Tenant, id: &str) {
        use aws_sdk_dynamodb::types::AttributeValue as A;
        self.dynamo
            .update_item()
            .table_name(&self.table)
            .key("pk", A::S(format!("TENANT#{}", tenant.id)))
            .key("sk", A::S(format!("CONNECTION#{id}")))
            .update_expression("SET version = version + :one REMOVE next_retry_at")
            .expression_attribute_values(":one", A::N("1".into()))
            .send()
            .await
            .expect("end back-off");
    }

    /// Plays another instance's refresh commit: the record points at
    /// `secret_version`, its version moves and its lease is released.
    pub async fn commit_as_sibling(&self, tenant: &Tenant, id: &str, secret_version: &str) {
        use aws_sdk_dynamodb::types::AttributeValue as A;
        self.dynamo
            .update_item()
            .table_name(&self.table)
            .key("pk", A::S(format!("TENANT#{}", tenant.id)))
            .key("sk", A::S(format!("CONNECTION#{id}")))
            .update_expression(
                "SET secret_version = :s, version = version + :one REMOVE lease_owner, lease_until",
            )
            .expression_attribute_values(":s", A::S(secret_version.into()))
            .expression_attribute_values(":one", A::N("1".into()))
            .send()
            .await
            .expect("sibling commit");
    }
}

/// The fault-injecting proxy between the functions and moto
/// (`scripts/faultproxy.py`), at `FAULT_PROXY_URL`.
#[derive(Clone)]
pub struct Faults {
    base: Url,
    http: reqwest::Client,
}

impl Faults {
    pub fn from_env() -> Self {
        Self {
            base: Url::parse(&format!(
                "{}/__faults/",
                env("FAULT_PROXY_URL").trim_end_matches('/')
            ))
            .expect("FAULT_PROXY_URL"),
            http: reqwest::Client::new(),
        }
    }

    /// Adds a rule (see `scripts/faultproxy.py`); answers its id.
    pub async fn add(&self, rule: Value) -> String {
        let resp = self
            .http
            .post(self.base.join("rules").unwrap())
            .json(&rule)
            .send()
            .await
            .expect("fault rule");
        assert!(resp.status().is_success(), "rule refused: {rule}");
        let v: Value = resp.json().await.unwrap();
        v["id"].as_str().expect("rule id").to_string()
    }

    /// A rule as the proxy reports it (`fired`, `hits`, ...).
    pub async fn rule(&self, id: &str) -> Value {
        self.http
            .get(self.base.join(&format!("rules/{id}")).unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Removes a rule; a request it holds (`hang`) then goes ahead.
    pub async fn remove(&self, id: &str) {
        self.http
            .delete(self.base.join(&format!("rules/{id}")).unwrap())
            .send()
            .await
            .expect("delete rule");
    }

    /// Waits until rule `id` has fired at least once (bounded).
    pub async fn wait_fired(&self, id: &str) {
        for _ in 0..1200 {
            if self.rule(id).await["fired"].as_u64().unwrap_or(0) > 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("fault rule {id} never fired");
    }

    /// Calls per action (`dynamodb:GetItem`, ...) whose body contains
    /// `matching`, since the last [`Faults::reset_calls`] for it.
    /// AWS calls counted since the last reset whose body contains
    /// `matching`, leaving out the `deliver` function's: it works from the
    /// table's stream, whenever its events arrive, so it is no part of the
    /// flow being counted.
    pub async fn calls(&self, matching: &str) -> std::collections::BTreeMap<String, u64> {
        let mut u = self.base.join("calls").unwrap();
        u.query_pairs_mut().append_pair("match", matching);
        if let Some(key) = profile_key("deliver") {
            u.query_pairs_mut().append_pair("not_caller", &key);
        }
        self.http.get(u).send().await.unwrap().json().await.unwrap()
    }

    pub async fn reset_calls(&self, matching: &str) {
        let mut u = self.base.join("calls/reset").unwrap();
        u.query_pairs_mut().append_pair("match", matching);
        self.http.post(u).send().await.expect("reset calls");
    }
}

/// The connection id the broker derives for an OAuth account (see the
/// callback): one connection per tenant, integration, end user and account.
pub fn oauth_connection_id(
    tenant: &Tenant,
    integration: &str,
    end_user: &str,
    account: &str,
) -> String {
    use sha2::{Digest, Sha256};
    let identity = format!("{}\n{integration}\n{end_user}\n{account}", tenant.id);
    let hex: String = Sha256::digest(identity.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("conn_{}", &hex[..24])
}
