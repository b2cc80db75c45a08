//! The handlers driven in-process with the in-memory adapters, a manual
//! clock and a local mock provider (wiremock) standing in for the token
//! and JWKS endpoints. Every refusal also proves the token endpoint was not
//! called and nothing was written.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use domain::deadline::Deadline;
use domain::model::*;
use domain::storage::*;
use domain::{App, Config};
use lambda_http::{Body, Request, Response};
use providers::Registry;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use testkit::ManualClock;
use testkit::{Faults, MemoryStore, MemoryVault};
use web::handlers::{api, authorize, callback, token};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const BASE: &str = "https://broker.example.com";
const BASE_ORIGIN: &str = "https://broker.example.com";
const ORIGIN: &str = "https://app.example.com";
const NOW: i64 = 1_800_000_000;

/// An ES256 signing key with its JWK, standing in for the provider's keys.
struct SigningKey {
    der: Vec<u8>,
    jwk: Value,
}

fn signing_key() -> SigningKey {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = pair.public_key().as_ref(); // 0x04 || x || y
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    });
    SigningKey {
        der: pkcs8.as_ref().to_vec(),
        jwk,
    }
}

impl SigningKey {
    fn id_token(&self, claims: Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_der(&self.der),
        )
        .unwrap()
    }
}

struct World {
    app: App,
    store: Arc<MemoryStore>,
    vault: Arc<MemoryVault>,
    /// Kills a process at a storage step, or fails a step (the store's and
    /// the vault's shared plan).
    kill: Arc<Faults>,
    clock: ManualClock,
    provider: MockServer,
    api_key: String,
    tenant: String,
    key: SigningKey,
}

fn registry(host: &str) -> &'static Registry {
    let doc = format!(
        r#"
[plain]
display_name = "Plain OAuth"
categories = ["crm"]
docs_url = "https://example.com/docs"
auth_mode = "oauth2"
authorization_url = "http://{{host}}/authorize"
token_url = "http://{{host}}/token"
revocation_url = "http://{{host}}/revoke"
default_scopes = ["read", "write"]
[plain.config_fields.host]
pattern = "127\\.0\\.0\\.1:[0-9]{{2,5}}"
description = "mock provider"
example = "{host}"

[plain-token]
display_name = "Plain OAuth, revoked per token"
categories = ["crm"]
docs_url = "https://example.com/docs"
auth_mode = "oauth2"
authorization_url = "http://{{host}}/authorize"
token_url = "http://{{host}}/token"
revocation_url = "http://{{host}}/revoke"
revocation_scope = "token"
default_scopes = ["read", "write"]
[plain-token.config_fields.host]
pattern = "127\\.0\\.0\\.1:[0-9]{{2,5}}"
description = "mock provider"
example = "{host}"

[oidc]
display_name = "OIDC"
categories = ["identity"]
docs_url = "https://example.com/docs"
auth_mode = "oauth2"
authorization_url = "http://{{host}}/authorize"
token_url = "http://{{host}}/token"
default_scopes = ["openid", "offline_access"]
authorization_response_iss = true
oidc = {{ issuer = "http://{{host}}", jwks_uri = "http://{{host}}/jwks" }}
[oidc.config_fields.host]
pattern = "127\\.0\\.0\\.1:[0-9]{{2,5}}"
description = "mock provider"
example = "{host}"

[oidc-lax]
display_name = "OIDC without iss on errors"
categories = ["identity"]
docs_url = "https://example.com/docs"
auth_mode = "oauth2"
authorization_url = "http://{{host}}/authorize"
token_url = "http://{{host}}/token"
default_scopes = ["openid"]
authorization_response_iss = true
iss_omitted_on_errors = true
oidc = {{ issuer = "http://{{host}}", jwks_uri = "http://{{host}}/jwks" }}
[oidc-lax.config_fields.host]
pattern = "127\\.0\\.0\\.1:[0-9]{{2,5}}"
description = "mock provider"
example = "{host}"

[shop]
display_name = "Shops"
categories = ["e-commerce"]
docs_url = "https://example.com/docs"
auth_mode = "oauth2"
authorization_url = "http://{{host}}/shops/{{shop}}/authorize"
token_url = "http://{{host}}/shops/{{shop}}/token"
default_scopes = ["read"]
[shop.config_fields.host]
pattern = "127\\.0\\.0\\.1:[0-9]{{2,5}}"
description = "mock provider"
example = "{host}"
[shop.config_fields.shop]
pattern = "[a-z0-9][a-z0-9-]{{0,30}}"
description = "the shop"
example = "acme"
end_user = true
label = "Shop name"

[keyed]
display_name = "Keyed API"
categories = ["developer-tools"]
docs_url = "https://example.com/docs"
auth_mode = "api_key"
api_key = {{ header = "Authorization", prefix = "Bearer " }}
verification = {{ url = "http://{{host}}/shops/{{shop}}/whoami" }}
[keyed.config_fields.host]
pattern = "127\\.0\\.0\\.1:[0-9]{{2,5}}"
description = "mock provider"
example = "{host}"
[keyed.config_fields.shop]
pattern = "[a-z0-9][a-z0-9-]{{0,30}}"
description = "the shop"
example = "acme"
end_user = true
"#
    );
    Box::leak(Box::new(Registry::parse(&doc).expect("test registry")))
}

fn request(method: &str, uri: &str, headers: &[(&str, &str)], body: Option<Value>) -> Request {
    let mut b = lambda_http::http::Request::builder()
        .method(method)
        .uri(format!("{BASE}{uri}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    b.body(body.map_or(Body::Empty, |v| Body::Text(v.to_string())))
        .unwrap()
}

/// A status poll for `token`, as the SDK sends it: a form POST from `origin`.
fn status_post(token: &str, origin: Option<&str>) -> Request {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("session", token)
        .finish();
    let mut b = lambda_http::http::Request::builder()
        .method("POST")
        .uri(format!("{BASE}/oauth/status"))
        .header(
            "content-type",
            "application/x-www-form-urlencoded;charset=UTF-8",
        );
    if let Some(o) = origin {
        b = b.header("origin", o);
    }
    b.body(Body::Text(body)).unwrap()
}

/// The broker's connect page posting `token` for a page of [`ORIGIN`]
/// (the popup path); the form is what the page submits.
fn authorize_post(integration: &str, token: &str) -> Request {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("session", token)
        .append_pair("origin", ORIGIN)
        .finish();
    lambda_http::http::Request::builder()
        .method("POST")
        .uri(format!("{BASE}/oauth/{integration}/authorize"))
        .header("origin", BASE_ORIGIN)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::Text(body))
        .unwrap()
}

fn body_text(resp: &Response<Body>) -> String {
    match resp.body() {
        Body::Text(t) => t.clone(),
        Body::Binary(b) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    }
}

fn json_body(resp: &Response<Body>) -> Value {
    serde_json::from_str(&body_text(resp)).unwrap()
}

fn posted(resp: &Response<Body>) -> Value {
    let text = body_text(resp);
    let start = text.find(r#"id="result""#).expect("result element");
    let open = start + text[start..].find('>').unwrap() + 1;
    let close = open + text[open..].find("</script>").unwrap();
    serde_json::from_str(&text[open..close]).unwrap()
}

fn post_origin(resp: &Response<Body>) -> String {
    let text = body_text(resp);
    let at = text.find(r#"data-origin=""#).unwrap() + 13;
    text[at..at + text[at..].find('"').unwrap()].to_string()
}

async fn world() -> World {
    let provider = MockServer::start().await;
    let host = provider.address().to_string();
    let vars: HashMap<String, String> = [
        ("TABLE_NAME", "unused"),
        ("SECRET_PREFIX", "broker/"),
        ("PUBLIC_BASE_URL", BASE),
        ("ALLOW_INSECURE_LOOPBACK", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let kill = Arc::new(Faults::default());
    let store = Arc::new(MemoryStore::with_faults(kill.clone()));
    let vault = Arc::new(MemoryVault::with_faults(kill.clone()));
    let clock = ManualClock::new(NOW);
    let mut app = App::new(
        Config::from_vars(&vars).unwrap(),
        store.clone(),
        vault.clone(),
        Arc::new(clock.clone()),
    );
    app.registry_override = Some(registry(&host));
    let minted = domain::auth::mint("acme", NOW);
    store.put_api_key(&minted.record).await.unwrap();
    let w = World {
        app,
        store,
        vault,
        kill,
        clock,
        provider,
        api_key: minted.key.expose_secret().to_string(),
        tenant: "acme".into(),
        key: signing_key(),
    };
    for (id, prov) in [
        ("plain-app", "plain"),
        ("oidc-app", "oidc"),
        ("shop-app", "shop"),
    ] {
        let resp = w
            .api(
                "POST",
                "/integrations",
                Some(json!({"id": id, "provider": prov, "client_id": "client-1", "client_secret": "s3cret-client", "config": {"host": host}})),
            )
            .await;
        assert_eq!(resp.status(), 201, "{}", body_text(&resp));
    }
    let resp = w
        .api(
            "POST",
            "/integrations",
            Some(json!({"id": "key-app", "provider": "keyed", "config": {"host": host}})),
        )
        .await;
    assert_eq!(resp.status(), 201, "{}", body_text(&resp));
    w
}

struct Started {
    state: String,
    cookie: String,
    query: HashMap<String, String>,
    /// The connect session's token.
    session: String,
}

impl World {
    async fn api(&self, m: &str, uri: &str, body: Option<Value>) -> Response<Body> {
        let auth = format!("Bearer {}", self.api_key);
        api::handle(
            &self.app,
            request(m, uri, &[("authorization", &auth)], body),
        )
        .await
    }

    async fn session(&self, integrations: &[&str]) -> String {
        let resp = self
            .api("POST", "/connect-sessions", Some(json!({"end_user_id": "user-1", "integrations": integrations, "origin": ORIGIN})))
            .await;
        assert_eq!(resp.status(), 201, "{}", body_text(&resp));
        json_body(&resp)["token"].as_str().unwrap().to_string()
    }

    async fn start(&self, integration: &str) -> Started {
        let token = self.session(&[integration]).await;
        let resp = authorize::handle(&self.app, authorize_post(integration, &token)).await;
        assert_eq!(resp.status(), 303, "{}", body_text(&resp));
        let location = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
        let query: HashMap<String, String> = location.query_pairs().into_owned().collect();
        let set_cookie = resp.headers()["set-cookie"].to_str().unwrap();
        let cookie = set_cookie.split(';').next().unwrap().to_string();
        Started {
            state: query["state"].clone(),
            cookie,
            query,
            session: token,
        }
    }

    async fn callback(
        &self,
        integration: &str,
        query: &str,
        cookie: Option<&str>,
    ) -> Response<Body> {
        let headers: Vec<(&str, &str)> = cookie.map(|c| vec![("cookie", c)]).unwrap_or_default();
        callback::handle(
            &self.app,
            request(
                "GET",
                &format!("/oauth/{integration}/callback?{query}"),
                &headers,
                None,
            ),
        )
        .await
    }

    async fn token_requests(&self) -> Vec<wiremock::Request> {
        self.provider
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.url.path() == "/token")
            .collect()
    }

    async fn mock_tokens(&self, body: Value) {
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .mount(&self.provider)
            .await;
    }

    async fn mock_jwks(&self) {
        Mock::given(method("GET"))
            .and(path("/jwks"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"keys": [self.key.jwk.clone()]})),
            )
            .mount(&self.provider)
            .await;
    }

    fn issuer(&self) -> String {
        format!("http://{}", self.provider.address())
    }

    async fn assert_nothing_written(&self) {
        assert!(
            self.token_requests().await.is_empty(),
            "the token endpoint was called"
        );
        assert!(
            self.store
                .list_connections(&self.tenant)
                .await
                .unwrap()
                .is_empty(),
            "a connection was written"
        );
        assert!(
            !self
                .vault
                .names()
                .iter()
                .any(|n| n.contains("/connections/")),
            "a token secret was written"
        );
    }
}

fn q(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

#[tokio::test]
async fn authorize_redirects_with_state_s256_challenge_and_host_prefixed_cookie() {
    let w = world().await;
    let s = w.start("plain-app").await;
    assert_eq!(s.query["response_type"], "code");
    assert_eq!(s.query["client_id"], "client-1");
    assert_eq!(
        s.query["redirect_uri"],
        format!("{BASE}/oauth/plain-app/callback")
    );
    assert_eq!(s.query["scope"], "read write");
    assert_eq!(s.query["code_challenge_method"], "S256");
    assert_eq!(s.query["code_challenge"].len(), 43);
    assert!(
        URL_SAFE_NO_PAD.decode(&s.state).unwrap().len() >= 16,
        "state has at least 128 bits"
    );
    assert!(
        !s.query.contains_key("nonce"),
        "no nonce for a plain OAuth provider"
    );
    let oidc = w.start("oidc-app").await;
    assert!(oidc.query["nonce"].len() >= 22);
    assert_ne!(oidc.state, s.state);
    // Over https the cookie is `__Host-` (Secure, Path=/, no Domain), HttpOnly.
    let token = w.session(&["plain-app"]).await;
    let resp = authorize::handle(&w.app, authorize_post("plain-app", &token)).await;
    let sc = resp.headers()["set-cookie"].to_str().unwrap();
    for part in [
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/;",
        "Max-Age=600",
    ] {
        assert!(sc.contains(part), "{sc}");
    }
    assert!(sc.starts_with("__Host-obk_flow_"), "{sc}");
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    assert_eq!(resp.headers()["cache-control"], "no-store");
}

#[tokio::test]
async fn callback_exchanges_code_with_verifier_and_stores_tokens_then_record() {
    let w = world().await;
    w.mock_tokens(json!({"access_token": "at-123456789", "refresh_token": "rt-123456789", "expires_in": 3600, "token_type": "Bearer", "scope": "read"})).await;
    let s = w.start("plain-app").await;
    let resp = w
        .callback(
            "plain-app",
            &q(&[("code", "code-abcdef"), ("state", &s.state)]),
            Some(&s.cookie),
        )
        .await;
    assert_eq!(resp.status(), 200, "{}", body_text(&resp));
    let msg = posted(&resp);
    assert_eq!(msg["status"], "connected");
    assert_eq!(post_origin(&resp), ORIGIN);
    let html = body_text(&resp);
    assert!(!html.contains("at-123456789") && !html.contains("code-abcdef"));
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    assert!(
        resp.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'nonce-")
    );
    assert!(
        resp.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0"),
        "binding cookie cleared"
    );

    // One token request, with the PKCE verifier matching the challenge and Basic client auth.
    let reqs = w.token_requests().await;
    assert_eq!(reqs.len(), 1);
    let form: HashMap<String, String> = url::form_urlencoded::parse(&reqs[0].body)
        .into_owned()
        .collect();
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code"], "code-abcdef");
    assert_eq!(
        form["redirect_uri"],
        format!("{BASE}/oauth/plain-app/callback")
    );
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(form["code_verifier"].as_bytes()));
    assert_eq!(challenge, s.query["code_challenge"]);
    let basic = reqs[0].headers["authorization"].to_str().unwrap();
    assert_eq!(
        basic,
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("client-1:s3cret-client")
        )
    );

    let id = msg["connection_id"].as_str().unwrap();
    let conn = w
        .store
        .get_connection("acme", id)
        .await
        .unwrap()
        .expect("record");
    assert_eq!(conn.status(), ConnectionStatus::Active);
    assert_eq!(conn.end_user_id(), "user-1");
    assert_eq!(conn.scopes(), ["read"]);
    assert_eq!(conn.token_expires_at(), Some(NOW + 3600));
    let secret = w
        .vault
        .get_secret(conn.secret_name())
        .await
        .unwrap()
        .expect("token secret");
    let tokens: Value = serde_json::from_str(secret.expose_secret()).unwrap();
    assert_eq!(tokens["access_token"], "at-123456789");
    assert_eq!(tokens["refresh_token"], "rt-123456789");
    // One secret per connect (its generation), under the connection's name.
    let generation = conn
        .secret_name()
        .strip_prefix(&format!("broker/connections/acme/{id}/"))
        .expect("the connection's generation secret");
    assert!(generation.len() == 24 && generation.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(w.store.flow_count(), 0, "the flow was consumed");
}

#[tokio::test]
async fn callback_rejects_missing_state() {
    let w = world().await;
    let resp = w.callback("plain-app", &q(&[("code", "c")]), None).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(posted(&resp)["error"], "missing_state");
    assert_eq!(post_origin(&resp), "", "origin unknown: nothing is posted");
    w.assert_nothing_written().await;
}

#[tokio::test]
async fn callback_rejects_forged_state() {
    let w = world().await;
    let s = w.start("plain-app").await;
    let forged = "A".repeat(43);
    let base = url::Url::parse(BASE).unwrap();
    let scope =
        domain::config::BindingCookie::of(&base, "plain-app", &domain::crypto::sha256_hex(&forged));
    let cookie_name = scope.name;
    let cookie = format!("{cookie_name}={}", s.cookie.split_once('=').unwrap().1);
    let resp = w
        .callback(
            "plain-app",
            &q(&[("code", "c"), ("state", &forged)]),
            Some(&cookie),
        )
        .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(posted(&resp)["error"], "invalid_state");
    w.assert_nothing_written().await;
}

#[tokio::test]
async fn callback_rejects_replayed_state() {
    let w = world().await;
    w.mock_tokens(json!({"access_token": "at-1", "token_type": "Bearer"}))
        .await;
    let s = w.start("plain-app").await;
    let query = q(&[("code", "c1"), ("state", &s.state)]);
    assert_eq!(
        w.callback("plain-app", &query, Some(&s.cookie))
            .await
            .status(),
        200
    );
    let replay = w.callback("plain-app", &query, Some(&s.cookie)).await;
    assert_eq!(replay.status(), 400);
    assert_eq!(posted(&replay)["error"], "invalid_state");
    assert_eq!(
        w.token_requests().await.len(),
        1,
        "the replay made no exchange"
    );
}

#[tokio::test]
async fn callback_rejects_expired_state() {
    let w = world().await;
    let s = w.start("plain-app").await;
    w.clock.advance(601);
    let resp = w
        .callback(
            "plain-app",
            &q(&[("code", "c"), ("state", &s.state)]),
            Some(&s.cookie),
        )
        .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(posted(&resp)["error"], "state_expired");
    assert_eq!(post_origin(&resp), ORIGIN);
    w.assert_nothing_written().await;
}

/// The leaked-URL attack: Mallory starts a flow, the victim signs in at
/// the provider and lands on the callback without Mallory's cookie; the
/// refusal ends the flow, so Mallory replaying the victim's URL with his
/// own cookie finishes nothing, and his session reads why.
#[tokio::test]
async fn a_callback_without_its_browsers_cookie_ends_the_flow_so_a_leaked_url_finishes_nothing() {
    let w = world().await;
    w.mock_tokens(json!({"access_token": "at-1", "token_type": "Bearer"}))
        .await;
    let s = w.start("plain-app").await;
    let leaked = q(&[("code", "c"), ("state", &s.state)]);
    let victim = w.callback("plain-app", &leaked, None).await;
    assert_eq!(victim.status(), 400);
    assert_eq!(posted(&victim)["error"], "missing_binding_cookie");
    assert_eq!(
        post_origin(&victim),
        "",
        "nothing is posted to the flow's origin"
    );
    assert_eq!(w.store.flow_count(), 0, "the refusal ended the flow");
    let replay = w.callback("plain-app", &leaked, Some(&s.cookie)).await;
    assert_eq!(replay.status(), 400);
    assert_eq!(posted(&replay)["error"], "invalid_state");
    assert!(
        w.token_requests().await.is_empty(),
        "the code was never redeemed"
    );
    w.assert_nothing_written().await;
    let status = authorize::handle(&w.app, status_post(&s.session, Some(ORIGIN))).await;
    let status = json_body(&status);
    assert_eq!(
        (status["status"].clone(), status["error"].clone()),
        (json!("error"), json!("missing_binding_cookie")),
        "{status}"
    );
}

#[tokio::test]
async fn a_callback_with_another_browsers_cookie_ends_the_flow() {
    let w = world().await;
    w.mock_tokens(json!({"access_token": "at-1", "token_type": "Bearer"}))
        .await;
    let s = w.start("plain-app").await;
    let name = s.cookie.split_once('=').unwrap().0;
    let query = q(&[("code", "c"), ("state", &s.state)]);
    let resp = w
        .callback("plain-app", &query, Some(&format!("{name}=attacker-value")))
        .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(posted(&resp)["error"], "invalid_state");
    let own = w.callback("plain-app", &query, Some(&s.cookie)).await;
    assert_eq!(posted(&own)["error"], "invalid_state", "the flow is over");
    assert!(w.token_requests().await.is_empty());
    w.assert_nothing_written().await;
}

/// A refusal never removes a flow whose callback is under way: its intent
/// names tokens that may be stored, which the reconciler must still see.
#[tokio::test]
async fn an_unbound_callback_leaves_a_consumed_flows_intent_alone() {
    let w = world().await;
    w.mock_tokens(json!({"access_token": "at-1", "token_type": "Bearer"}))
        .await;
    let s = w.start("plain-app").await;
    let query = q(&[("code", "c"), ("state", &s.state)]);
    w.kill.fail("finish_flow", 1);
    assert_eq!(
        w.callback("plain-app", &query, Some(&s.cookie))
            .await
            .status(),
        200
    );
    assert_eq!(
        w.store.intent_count(),
        1,
        "the finished flow was left for the sweep"
    );
    let stranger = w.callback("plain-app", &query, None).await;
    assert_eq!(posted(&stranger)["error"], "missing_binding_cookie");
    assert_eq!(w.store.intent_count(), 1, "the consumed flow is left alone");
}

/// Production (https): the binding cookie is `__Host-` (Secure, `Path=/`,
/// no `Domain`), which a browser stores only from the broker's own host;
/// the un-prefixed name a sibling host could toss is never read.
#[tokio::test]
async fn production_binding_cookie_is_host_prefixed_and_a_tossed_one_is_ignored() {
    let w = world().await;
    let prod = &w.app;
    let token = w.session(&["plain-app"]).await;
    let resp = authorize::handle(prod, authorize_form(Some(ORIGIN), &[("session", &token)])).await;
    assert_eq!(resp.status(), 303, "{}", body_text(&resp));
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    let (pair, attrs) = set.split_once(';').unwrap();
    let (name, value) = pair.split_once('=').unwrap();
    assert!(name.starts_with("__Host-obk_flow_"), "{set}");
    assert!(
        attrs.contains("Path=/;") && attrs.contains("Secure") && attrs.contains("HttpOnly"),
        "{set}"
    );
    assert!(!attrs.to_ascii_lowercase().contains("domain"), "{set}");
    let location = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let state = location
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .to_string();
    let tossed = format!("{}={value}", name.trim_start_matches("__Host-"));
    let resp = callback::handle(
        prod,
        request(
            "GET",
            &format!(
                "/oauth/plain-app/callback?{}",
                q(&[("code", "c"), ("state", &state)])
            ),
            &[("cookie", &tossed)],
            None,
        ),
    )
    .await;
    assert_eq!(posted(&resp)["error"], "missing_binding_cookie");
    assert!(w.token_requests().await.is_empty());
    w.assert_nothing_written().await;
}

#[tokio::test]
async fn callback_rejects_state_of_another_integration() {
    let w = world().await;
    let s = w.start("plain-app").await;
    let resp = w
        .callback(
            "oidc-app",
            &q(&[("code", "c"), ("state", &s.state)]),
            Some(&s.cookie),
        )
        .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(posted(&resp)["error"], "invalid_state");
    w.assert_nothing_written().await;
}

#[tokio::test]
async fn callback_rejects_wrong_or_missing_issuer() {
    let w = world().await;
    let s = w.start("oidc-app").await;
    let resp = w
        .callback(
            "oidc-app",
            &q(&[
                ("code", "c"),
                ("state", &s.state),
                ("iss", "https://evil.example"),
            ]),
            Some(&s.cookie),
        )
        .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(posted(&resp)["error"], "issuer_mismatch");
    let s = w.start("oidc-app").await;
    let resp = w
        .callback(
            "oidc-app",
            &q(&[("code", "c"), ("state", &s.state)]),
            Some(&s.cookie),
        )
        .await;
    assert_eq!(
        posted(&resp)["error"],
        "issuer_missing",
        "this provider always sends iss: its absence is not a wrong issuer"
    );
    w.assert_nothing_written().await;
}

#[tokio::test]
async fn an_error_response_from_another_issuer_is_a_mismatch_and_one_without_iss_is_issuer_missing()
{
    // RFC 9207 section 2.4: error responses carry iss too; a forged
    // access_denied is a mix-up, not the user's refusal.
    let w = world().await;
    for (iss, code) in [
        (Some("https://evil.example"), "issuer_mismatch"),
        (None, "issuer_missing"),
    ] {
        let s = w.start("oidc-app").await;
        let mut params = vec![("error", "access_denied"), ("state", s.state.as_str())];
        if let Some(iss) = iss {
            params.push(("iss", iss));
        }
        let resp = w.callback("oidc-app", &q(&params), Some(&s.cookie)).await;
        assert_eq!(resp.status(), 400, "{iss:?}");
        assert_eq!(posted(&resp)["error"], code, "{iss:?}");
    }
    // From the right issuer, the denial is the user's.
    let s = w.start("oidc-app").await;
    let issuer = w.issuer();
    let resp = w
        .callback(
            "oidc-app",
            &q(&[
                ("error", "access_denied"),
                ("state", &s.state),
                ("iss", &issuer),
            ]),
            Some(&s.cookie),
        )
        .await;
    assert_eq!(posted(&resp)["error"], "access_denied");
    w.assert_nothing_written().await;
}

/// A provider the registry marks `iss_omitted_on_errors` (django-oauth-toolkit
/// on `access_denied`): a denial without `iss` is the user's denial; a
/// success without it, or an error from another issuer, is still refused.
#[tokio::test]
async fn a_denial_without_iss_reads_as_access_denied_where_the_provider_omits_iss_on_errors() {
    let w = world().await;
    let host = w.provider.address().to_string();
    let resp = w
        .api(
            "POST",
            "/integrations",
            Some(json!({"id": "lax-app", "provider": "oidc-lax", "client_id": "client-1", "client_secret": "s3cret-client", "config": {"host": host}})),
        )
        .await;
    assert_eq!(resp.status(), 201, "{}", body_text(&resp));
    let cases = [
        (vec![("error", "access_denied")], "access_denied"),
        (
            vec![("error", "access_denied"), ("iss", "https://evil.example")],
            "issuer_mismatch",
        ),
        (vec![("code", "c")], "issuer_missing"),
    ];
    for (params, code) in cases {
        let s = w.start("lax-app").await;
        let mut params = params.clone();
        params.push(("state", s.state.as_str()));
        let resp = w.callback("lax-app", &q(&params), Some(&s.cookie)).await;
        assert_eq!(posted(&resp)["error"], code, "{params:?}");
    }
    assert!(w.token_requests().await.is_empty());
    w.assert_nothing_written().await;
}

#[tokio::test]
async fn provider_access_denied_ends_in_the_page_with_a_stable_code() {
    let w = world().await;
    let s = w.start("plain-app").await;
    let resp = w
        .callback(
            "plain-app",
            &q(&[("error", "access_denied"), ("state", &s.state)]),
            Some(&s.cookie),
        )
        .await;
    assert_eq!(resp.status(), 403);
    assert_eq!(
        posted(&resp),
        json!({"type": "oauth-broker:result", "status": "error", "error": "access_denied"})
    );
    assert_eq!(post_origin(&resp), ORIGIN);
    w.assert_nothing_written().await;
}

#[tokio::test]
async fn script_in_error_description_is_escaped() {
    let w = world().await;
    let s = w.start("plain-app").await;
    let evil = r#"<script>alert(document.cookie)</script><img src=x onerror=alert(1)>"#;
    let resp = w
        .callback(
            "plain-app",
            &q(&[
                ("error", "server_error"),
                ("error_description", evil),
                ("state", &s.state),
            ]),
            Some(&s.cookie),
        )
        .await;
    assert_eq!(resp.status(), 400);
    let html = body_text(&resp);
    assert!(
        !html.contains("<script>alert") && !html.contains("<img"),
        "{html}"
    );
    assert!(html.contains("&lt;script&gt;alert(document.cookie)&lt;/script&gt;"));
    assert_eq!(posted(&resp)["error"], "provider_error");
    w.assert_nothing_written().await;
}

#[tokio::test]
async fn authorize_refuses_forged_and_expired_sessions() {
    let w = world().await;
    let resp = authorize::handle(&w.app, authorize_post("plain-app", "cs_forged")).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(posted(&resp)["error"], "invalid_session");
    let mut no_session = authorize_post("plain-app", "");
    *no_session.body_mut() = Body::Text(String::new());
    let resp = authorize::handle(&w.app, no_session).await;
    assert_eq!(resp.status(), 401);
    let token = w.session(&["plain-app"]).await;
    w.clock.advance(901);
    let resp = authorize::handle(&w.app, authorize_post("plain-app", &token)).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(posted(&resp)["error"], "session_expired");
    assert_eq!(w.store.flow_count(), 0, "no flow stored");
    w.assert_nothing_written().await;
}

#[tokio::test]
async fn a_session_token_with_another_tenant_written_in_reaches_no_session() {
    let w = world().await;
    let other = domain::auth::mint("t-other", NOW);
    w.store.put_api_key(&other.record).await.unwrap();
    let token = w.session(&["plain-app"]).await;
    // The tenant part is not what finds the session: the whole token's
    // hash is. Another tenant named in the same token finds nothing.
    let (tenant, secret) = token.strip_prefix("cs_").unwrap().split_once('.').unwrap();
    assert_eq!(tenant, w.tenant);
    let forged = format!("cs_t-other.{secret}");
    let resp = authorize::handle(&w.app, authorize_post("plain-app", &forged)).await;
    assert_eq!(resp.status(), 401, "{}", body_text(&resp));
    assert_eq!(posted(&resp)["error"], "invalid_session");
    assert_eq!(w.store.flow_count(), 0, "no flow stored");
    // The real token still works.
    let resp = authorize::handle(&w.app, authorize_post("plain-app", &token)).await;
    assert_eq!(resp.status(), 303, "{}", body_text(&resp));
}

#[tokio::test]
async fn a_session_token_of_the_older_form_still_starts_a_flow() {
    let w = world().await;
    let token = w.session(&["plain-app"]).await;
    let mut session = w
        .store
        .get_session(&domain::crypto::sha256_hex(&token))
        .await
        .unwrap()
        .unwrap();
    // A token minted before tokens named their tenant: `cs_` and 43 chars.
    let legacy = "cs_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    session.token_sha256 = domain::crypto::sha256_hex(legacy);
    w.store.put_session(&session).await.unwrap();
    let resp = authorize::handle(&w.app, authorize_post("plain-app", legacy)).await;
    assert_eq!(resp.status(), 303, "{}", body_text(&resp));
    assert_eq!(w.store.flow_count(), 1);
}

#[tokio::test]
async fn authorize_refuses_an_integration_the_session_does_not_allow() {
    let w = world().await;
    let token = w.session(&["oidc-app"]).await;
    let resp = authorize::handle(&w.app, authorize_post("plain-app", &token)).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(posted(&resp)["error"], "integration_not_allowed");
    assert_eq!(post_origin(&resp), ORIGIN);
    assert_eq!(w.store.flow_count(), 0);
    w.assert_nothing_written().await;
}

#[tokio::test]
async fn concurrent_callbacks_with_one_state_make_one_exchange() {
    let w = world().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_delay(std::time::Duration::from_millis(200))
                .set_body_json(json!({"access_token": "at-1", "token_type": "Bearer"})),
        )
        .mount(&w.provider)
        .await;
    let s = w.start("plain-app").await;
    let query = q(&[("code", "c1"), ("state", &s.state)]);
    let calls = (0..8).map(|_| w.callback("plain-app", &query, Some(&s.cookie)));
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.status() == 200).count();
    assert_eq!(ok, 1, "exactly one callback completes");
    assert!(
        results
            .iter()
            .filter(|r| r.status() != 200)
            .all(|r| posted(r)["error"] == "invalid_state")
    );
    assert_eq!(w.token_requests().await.len(), 1);
}

#[tokio::test]
async fn oidc_callback_validates_the_id_token_and_keeps_the_subject() {
    let w = world().await;
    w.mock_jwks().await;
    let s = w.start("oidc-app").await;
    // jsonwebtoken checks exp against the system clock: use a real future time.
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let id_token = w.key.id_token(json!({"iss": w.issuer(), "aud": "client-1", "sub": "alice", "nonce": s.query["nonce"], "exp": exp}));
    w.mock_tokens(json!({"access_token": "at-1", "refresh_token": "rt-1", "id_token": id_token, "token_type": "Bearer", "expires_in": 60})).await;
    let resp = w
        .callback(
            "oidc-app",
            &q(&[("code", "c"), ("state", &s.state), ("iss", &w.issuer())]),
            Some(&s.cookie),
        )
        .await;
    assert_eq!(resp.status(), 200, "{}", body_text(&resp));
    let id = posted(&resp)["connection_id"].as_str().unwrap().to_string();
    let conn = w.store.get_connection("acme", &id).await.unwrap().unwrap();
    assert_eq!(conn.provider_account_id(), Some("alice"));
}

async fn oidc_rejects(claims: impl Fn(&str, &str) -> Value, why: &str) {
    let w = world().await;
    w.mock_jwks().await;
    let s = w.start("oidc-app").await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let mut c = claims(&w.issuer(), &s.query["nonce"]);
    if c.get("exp").is_none() {
        c["exp"] = json!(exp);
    }
    let id_token = w.key.id_token(c);
    w.mock_tokens(json!({"access_token": "at-1", "id_token": id_token, "token_type": "Bearer"}))
        .await;
    let resp = w
        .callback(
            "oidc-app",
            &q(&[("code", "c"), ("state", &s.state), ("iss", &w.issuer())]),
            Some(&s.cookie),
        )
        .await;
    assert_eq!(resp.status(), 502, "{why}: {}", body_text(&resp));
    assert_eq!(posted(&resp)["error"], "invalid_id_token", "{why}");
    assert!(
        w.store.list_connections("acme").await.unwrap().is_empty(),
        "{why}: record written"
    );
    assert!(
        !w.vault.names().iter().any(|n| n.contains("/connections/")),
        "{why}: secret written"
    );
}

#[tokio::test]
async fn oidc_callback_rejects_id_token_with_wrong_nonce_audience_issuer_or_expiry() {
    oidc_rejects(
        |iss, _| json!({"iss": iss, "aud": "client-1", "sub": "a", "nonce": "other"}),
        "wrong nonce",
    )
    .await;
    oidc_rejects(
        |iss, n| json!({"iss": iss, "aud": "someone-else", "sub": "a", "nonce": n}),
        "wrong audience",
    )
    .await;
    oidc_rejects(
        |_, n| json!({"iss": "https://evil.example", "aud": "client-1", "sub": "a", "nonce": n}),
        "wrong issuer",
    )
    .await;
    oidc_rejects(
        |iss, n| json!({"iss": iss, "aud": "client-1", "sub": "a", "nonce": n, "exp": 1000}),
        "expired",
    )
    .await;
}

#[tokio::test]
async fn oidc_callback_rejects_an_unsigned_id_token() {
    let w = world().await;
    w.mock_jwks().await;
    let s = w.start("oidc-app").await;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(json!({"iss": w.issuer(), "aud": "client-1", "sub": "a", "nonce": s.query["nonce"], "exp": 4_000_000_000u64}).to_string());
    w.mock_tokens(json!({"access_token": "at-1", "id_token": format!("{header}.{payload}."), "token_type": "Bearer"})).await;
    let resp = w
        .callback(
            "oidc-app",
            &q(&[("code", "c"), ("state", &s.state), ("iss", &w.issuer())]),
            Some(&s.cookie),
        )
        .await;
    assert_eq!(posted(&resp)["error"], "invalid_id_token");
    assert!(w.store.list_connections("acme").await.unwrap().is_empty());
}

#[tokio::test]
async fn failed_token_exchange_writes_nothing() {
    let w = world().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(
                json!({"error": "invalid_grant", "error_description": "code expired"}),
            ),
        )
        .mount(&w.provider)
        .await;
    let s = w.start("plain-app").await;
    let resp = w
        .callback(
            "plain-app",
            &q(&[("code", "c"), ("state", &s.state)]),
            Some(&s.cookie),
        )
        .await;
    assert_eq!(resp.status(), 502);
    assert_eq!(posted(&resp)["error"], "token_exchange_failed");
    assert!(!body_text(&resp).contains("code expired"));
    assert!(w.store.list_connections("acme").await.unwrap().is_empty());
    assert!(!w.vault.names().iter().any(|n| n.contains("/connections/")));
}

#[tokio::test]
async fn failed_record_write_after_exchange_leaves_no_record_and_deletes_nothing() {
    let w = world().await;
    w.mock_tokens(json!({"access_token": "at-1", "refresh_token": "rt-1", "token_type": "Bearer"}))
        .await;
    w.kill.fail("record_commit", usize::MAX);
    let s = w.start("plain-app").await;
    let resp = w
        .callback(
            "plain-app",
            &q(&[("code", "c"), ("state", &s.state)]),
            Some(&s.cookie),
        )
        .await;
    assert_eq!(resp.status(), 503);
    assert_eq!(posted(&resp)["error"], "temporarily_unavailable");
    assert!(
        w.store.list_connections("acme").await.unwrap().is_empty(),
        "no record points at anything"
    );
    // No compensating delete: another flow for the same account may have
    // written its own version into this secret meanwhile.
    let secrets: Vec<_> = w
        .vault
        .names()
        .into_iter()
        .filter(|n| n.contains("/connections/"))
        .collect();
    assert_eq!(secrets.len(), 1, "{secrets:?}");
    assert_eq!(w.vault.version_count(&secrets[0]), 1);
}

#[tokio::test]
async fn reconnecting_the_same_account_updates_one_connection() {
    let w = world().await;
    w.mock_tokens(json!({"access_token": "at-1", "token_type": "Bearer"}))
        .await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let s = w.start("plain-app").await;
        let resp = w
            .callback(
                "plain-app",
                &q(&[("code", "c"), ("state", &s.state)]),
                Some(&s.cookie),
            )
            .await;
        ids.push(posted(&resp)["connection_id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids[0], ids[1]);
    let all = w.store.list_connections("acme").await.unwrap();
    assert_eq!(all.len(), 1);
    // The reconnect's grant is in a secret of its own; the generation it
    // replaced was deleted once the record no longer named it.
    assert!(all[0].retired().is_empty(), "{:?}", all[0].retired());
    let tokens: Vec<_> = w
        .vault
        .names()
        .into_iter()
        .filter(|n| n.contains("/connections/"))
        .collect();
    assert_eq!(tokens, [all[0].secret_name().to_string()]);
}

impl World {
    /// An integration `id` of `provider` on the mock provider.
    async fn integration(&self, id: &str, provider: &str, scopes: &[&str]) -> Response<Body> {
        let host = self.provider.address().to_string();
        self.api(
            "POST",
            "/integrations",
            Some(json!({"id": id, "provider": provider, "client_id": "client-1", "client_secret": "s3cret-client", "scopes": scopes, "config": {"host": host}})),
        )
        .await
    }

    /// Answers each code exchange with the next of `sets`, and every
    /// revocation with 200.
    async fn mock_token_sequence(&self, sets: &[Value]) {
        for set in sets {
            Mock::given(method("POST"))
                .and(path("/token"))
                .respond_with(ResponseTemplate::new(200).set_body_json(set))
                .up_to_n_times(1)
                .mount(&self.provider)
                .await;
        }
        Mock::given(method("POST"))
            .and(path("/revoke"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&self.provider)
            .await;
    }

    /// Runs one popup flow of `integration` to its page.
    async fn connect_once(&self, integration: &str) -> Response<Body> {
        let s = self.start(integration).await;
        self.callback(
            integration,
            &q(&[("code", "c"), ("state", &s.state)]),
            Some(&s.cookie),
        )
        .await
    }
}

fn token_set(n: u32) -> Value {
    json!({"access_token": format!("at-{n}"), "refresh_token": format!("rt-{n}"), "expires_in": 3600, "token_type": "Bearer"})
}

/// No grant left alive: where the provider revokes per token, a reconnect
/// revokes the set it replaced (refresh token first), then deletes its
/// secret; the new set is untouched.
#[tokio::test]
async fn a_reconnect_revokes_the_replaced_set_where_the_provider_revokes_per_token() {
    let w = world().await;
    assert_eq!(
        w.integration("tok-app", "plain-token", &[]).await.status(),
        201
    );
    w.mock_token_sequence(&[token_set(1), token_set(2)]).await;
    assert_eq!(w.connect_once("tok-app").await.status(), 200);
    assert!(
        w.revoked_tokens().await.is_empty(),
        "a first connect revokes nothing"
    );
    assert_eq!(w.connect_once("tok-app").await.status(), 200);
    assert_eq!(w.revoked_tokens().await, ["rt-1", "at-1"]);
    let all = w.store.list_connections("acme").await.unwrap();
    assert_eq!(all.len(), 1);
    assert!(all[0].retired().is_empty());
    assert_eq!(w.token_secrets(), [all[0].secret_name().to_string()]);
}

/// A provider may hand the same refresh token to a new grant (kept across
/// re-consent): a reconnect revokes only what the new grant does not hold.
#[tokio::test]
async fn a_reconnect_never_revokes_a_token_the_new_grant_still_holds() {
    let w = world().await;
    assert_eq!(
        w.integration("tok-app", "plain-token", &[]).await.status(),
        201
    );
    let same_rt = json!({"access_token": "at-2", "refresh_token": "rt-1", "expires_in": 3600, "token_type": "Bearer"});
    w.mock_token_sequence(&[token_set(1), same_rt]).await;
    assert_eq!(w.connect_once("tok-app").await.status(), 200);
    assert_eq!(w.connect_once("tok-app").await.status(), 200);
    assert_eq!(
        w.revoked_tokens().await,
        ["at-1"],
        "rt-1 is the new grant's too"
    );
    let all = w.store.list_connections("acme").await.unwrap();
    assert!(all[0].retired().is_empty());
}

/// A stale flow's state, replayed without its cookie after another flow of
/// the session connected, ends that flow but leaves the session's outcome.
#[tokio::test]
async fn a_stale_flows_refusal_never_overwrites_the_sessions_outcome() {
    let w = world().await;
    w.mock_tokens(json!({"access_token": "at-1", "token_type": "Bearer"}))
        .await;
    let token = w.session(&["plain-app"]).await;
    let start = || authorize::handle(&w.app, authorize_post("plain-app", &token));
    let state_of = |resp: &Response<Body>| {
        let location = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
        let state = location
            .query_pairs()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .to_string();
        let cookie = resp.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        (state, cookie)
    };
    let (stale, _) = state_of(&start().await);
    let (state, cookie) = state_of(&start().await);
    let ok = w
        .callback(
            "plain-app",
            &q(&[("code", "c"), ("state", &state)]),
            Some(&cookie),
        )
        .await;
    assert_eq!(ok.status(), 200);
    let replay = w
        .callback("plain-app", &q(&[("code", "c"), ("state", &stale)]), None)
        .await;
    assert_eq!(posted(&replay)["error"], "missing_binding_cookie");
    assert_eq!(status(&w, &token).await["status"], "connected");
    // A spent session starts no flow (its outcome stays its connection's).
    let again = authorize::handle(&w.app, authorize_post("plain-app", &token)).await;
    assert_eq!(
        posted(&again)["error"],
        "session_used",
        "{}",
        body_text(&again)
    );
    assert_eq!(status(&w, &token).await["status"], "connected");
}

/// Where revoking one token ends the whole grant (the registry's default),
/// a reconnect deletes the replaced set unrevoked: revoking it would end
/// the new connection too.
#[tokio::test]
async fn a_reconnect_revokes_nothing_where_the_provider_revokes_per_grant() {
    let w = world().await;
    w.mock_token_sequence(&[token_set(1), token_set(2)]).await;
    for _ in 0..2 {
        assert_eq!(w.connect_once("plain-app").await.status(), 200);
    }
    assert!(w.revoked_tokens().await.is_empty());
    let all = w.store.list_connections("acme").await.unwrap();
    assert_eq!(w.token_secrets(), [all[0].secret_name().to_string()]);
}

/// A replaced set whose revocation failed stays listed on the record, and
/// the disconnect revokes it with the current one.
#[tokio::test]
async fn a_replaced_set_the_provider_would_not_revoke_yet_is_revoked_by_the_disconnect() {
    let w = world().await;
    assert_eq!(
        w.integration("tok-app", "plain-token", &[]).await.status(),
        201
    );
    for set in [token_set(1), token_set(2)] {
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(set))
            .up_to_n_times(1)
            .mount(&w.provider)
            .await;
    }
    // The provider refuses the reconnect's revocations.
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_request"})))
        .up_to_n_times(2)
        .mount(&w.provider)
        .await;
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&w.provider)
        .await;
    assert_eq!(w.connect_once("tok-app").await.status(), 200);
    let resp = w.connect_once("tok-app").await;
    let id = posted(&resp)["connection_id"].as_str().unwrap().to_string();
    let record = w.store.list_connections("acme").await.unwrap().remove(0);
    assert_eq!(record.retired().len(), 1, "kept for a later try");
    assert_eq!(w.token_secrets().len(), 2);
    let resp = w.api("DELETE", &format!("/connections/{id}"), None).await;
    assert_eq!(resp.status(), 200, "{}", body_text(&resp));
    let revoked = w.revoked_tokens().await;
    for t in ["rt-1", "at-1", "rt-2", "at-2"] {
        assert!(
            revoked.iter().any(|r| r == t),
            "{t} not revoked: {revoked:?}"
        );
    }
    assert!(w.token_secrets().is_empty());
}

/// A callback that fails after the code exchange and before anything is
/// stored revokes what the provider just granted.
#[tokio::test]
async fn a_callback_failing_after_the_exchange_revokes_what_it_obtained() {
    let w = world().await;
    assert_eq!(
        w.integration("tok-app", "plain-token", &[]).await.status(),
        201
    );
    w.mock_token_sequence(&[token_set(1)]).await;
    w.kill.fail("record_intent", 1);
    let resp = w.connect_once("tok-app").await;
    assert_eq!(posted(&resp)["status"], "error", "{}", body_text(&resp));
    assert_eq!(w.revoked_tokens().await, ["rt-1", "at-1"]);
    assert!(w.token_secrets().is_empty());
}

/// An OIDC integration whose scopes lack `openid` would fail every connect
/// after the user consented (no id_token): refused when created or
/// changed, with what to add.
#[tokio::test]
async fn an_oidc_integration_without_openid_is_refused_before_any_user_consents() {
    let w = world().await;
    let resp = w.integration("no-openid", "oidc", &["profile"]).await;
    assert_eq!(resp.status(), 400);
    let body = json_body(&resp);
    assert_eq!(body["error"]["code"], "invalid_request");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"openid\""),
        "{body}"
    );
    let resp = w
        .api(
            "PATCH",
            "/integrations/oidc-app",
            Some(json!({"scopes": ["email"]})),
        )
        .await;
    assert_eq!(resp.status(), 400, "{}", body_text(&resp));
    let ok = w
        .integration("with-openid", "oidc", &["openid", "profile"])
        .await;
    assert_eq!(ok.status(), 201);
}

#[tokio::test]
async fn backend_api_requires_a_valid_key() {
    let w = world().await;
    let body = json!({"end_user_id": "u", "integrations": ["plain-app"], "origin": ORIGIN});
    let resp = api::handle(
        &w.app,
        request("POST", "/connect-sessions", &[], Some(body.clone())),
    )
    .await;
    assert_eq!(resp.status(), 401);
    assert_eq!(json_body(&resp)["error"]["code"], "unauthorized");
    let resp = api::handle(
        &w.app,
        request(
            "POST",
            "/connect-sessions",
            &[("authorization", "Bearer obk_x.y")],
            Some(body),
        ),
    )
    .await;
    assert_eq!(resp.status(), 401);
    let resp = w.api("GET", "/nope", None).await;
    assert_eq!(resp.status(), 404);
    let resp = w.api("DELETE", "/connect-sessions", None).await;
    assert_eq!(resp.status(), 405);
}

#[tokio::test]
async fn connect_session_input_is_validated() {
    let w = world().await;
    for (body, why) in [
        (
            json!({"end_user_id": "u", "integrations": ["plain-app"], "origin": "https://app.example.com/path"}),
            "origin with path",
        ),
        (
            json!({"end_user_id": "u", "integrations": ["plain-app"], "origin": "http://app.example.com"}),
            "http origin",
        ),
        (
            json!({"end_user_id": "<b>", "integrations": ["plain-app"], "origin": ORIGIN}),
            "end user id",
        ),
        (
            json!({"end_user_id": "u", "integrations": [], "origin": ORIGIN}),
            "no integrations",
        ),
        (
            json!({"end_user_id": "u", "integrations": ["plain-app"], "origin": ORIGIN, "ttl_seconds": 999999}),
            "ttl",
        ),
        (
            json!({"end_user_id": "u", "integrations": ["plain-app"], "origin": ORIGIN, "extra": 1}),
            "unknown field",
        ),
    ] {
        let resp = w.api("POST", "/connect-sessions", Some(body)).await;
        assert_eq!(resp.status(), 400, "{why}");
        assert_eq!(
            json_body(&resp)["error"]["code"],
            "invalid_request",
            "{why}"
        );
    }
    let huge =
        json!({"end_user_id": "u".repeat(70_000), "integrations": ["plain-app"], "origin": ORIGIN});
    assert_eq!(
        w.api("POST", "/connect-sessions", Some(huge))
            .await
            .status(),
        413
    );
}

#[tokio::test]
async fn integrations_keep_the_client_secret_out_of_every_answer() {
    let w = world().await;
    let resp = w.api("GET", "/integrations/plain-app", None).await;
    assert_eq!(resp.status(), 200);
    let text = body_text(&resp);
    assert!(
        !text.contains("s3cret-client") && !text.contains("client_secret"),
        "{text}"
    );
    let stored = w
        .vault
        .get_secret("broker/integrations/acme/plain-app")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.expose_secret(), "s3cret-client");
    let dup = w
        .api("POST", "/integrations", Some(json!({"id": "plain-app", "provider": "plain", "client_id": "x", "client_secret": "other", "config": {"host": "127.0.0.1:8080"}})))
        .await;
    assert_eq!(dup.status(), 409);
    assert_eq!(
        w.vault
            .get_secret("broker/integrations/acme/plain-app")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        "s3cret-client"
    );
    let unknown = w
        .api(
            "POST",
            "/integrations",
            Some(json!({"id": "x", "provider": "nope", "client_id": "x", "client_secret": "y"})),
        )
        .await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(json_body(&unknown)["error"]["code"], "unknown_provider");
    let evil_host = w
        .api("POST", "/integrations", Some(json!({"id": "x", "provider": "plain", "client_id": "x", "client_secret": "y", "config": {"host": "evil.example.com"}})))
        .await;
    assert_eq!(evil_host.status(), 400);
}

async fn redirect_session(w: &World, return_to: &str) -> String {
    let resp = w
        .api(
            "POST",
            "/connect-sessions",
            Some(json!({"end_user_id": "user-1", "integrations": ["plain-app"], "origin": ORIGIN, "return_to": return_to})),
        )
        .await;
    assert_eq!(resp.status(), 201, "{}", body_text(&resp));
    json_body(&resp)["token"].as_str().unwrap().to_string()
}

async fn start_with(w: &World, token: &str) -> Started {
    let resp = authorize::handle(&w.app, authorize_post("plain-app", token)).await;
    assert_eq!(resp.status(), 303, "{}", body_text(&resp));
    let location = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let query: HashMap<String, String> = location.query_pairs().into_owned().collect();
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    Started {
        state: query["state"].clone(),
        cookie,
        query,
        session: token.to_string(),
    }
}

#[tokio::test]
async fn redirect_mode_sends_the_browser_back_with_the_outcome() {
    let w = world().await;
    w.mock_tokens(json!({"access_token": "at-1", "token_type": "Bearer"}))
        .await;
    let token = redirect_session(&w, "https://app.example.com/settings?tab=apps").await;
    let s = start_with(&w, &token).await;
    let resp = w
        .callback(
            "plain-app",
            &q(&[("code", "c"), ("state", &s.state)]),
            Some(&s.cookie),
        )
        .await;
    assert_eq!(resp.status(), 303);
    let to = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(to.origin().ascii_serialization(), ORIGIN);
    assert_eq!(to.path(), "/settings");
    let params: HashMap<String, String> = to.query_pairs().into_owned().collect();
    assert_eq!(params["tab"], "apps");
    assert_eq!(params["status"], "connected");
    assert!(params["connection_id"].starts_with("conn_"));
    assert!(!to.as_str().contains("at-1") && !to.as_str().contains("code="));
    assert!(
        resp.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );

    // A refusal goes back the same way, with its code (a new session: the
    // first one is spent).
    let token = redirect_session(&w, "https://app.example.com/settings?tab=apps").await;
    let s = start_with(&w, &token).await;
    let resp = w
        .callback(
            "plain-app",
            &q(&[("error", "access_denied"), ("state", &s.state)]),
            Some(&s.cookie),
        )
        .await;
    assert_eq!(resp.status(), 303);
    let to = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let params: HashMap<String, String> = to.query_pairs().into_owned().collect();
    assert_eq!(
        (params["status"].as_str(), params["error"].as_str()),
        ("error", "access_denied")
    );
    assert_eq!(w.token_requests().await.len(), 1);
}

#[tokio::test]
async fn return_to_must_be_on_the_session_origin() {
    let w = world().await;
    for bad in [
        "https://evil.example.com/x",
        "https://app.example.com.evil.com/",
        "https://app.example.com/x#frag",
        "javascript:alert(1)",
        "/relative",
    ] {
        let resp = w
            .api("POST", "/connect-sessions", Some(json!({"end_user_id": "u", "integrations": ["plain-app"], "origin": ORIGIN, "return_to": bad})))
            .await;
        assert_eq!(resp.status(), 400, "{bad}");
    }
}

#[tokio::test]
async fn session_status_reports_pending_then_the_outcome_to_its_origin_only() {
    let w = world().await;
    w.mock_tokens(json!({"access_token": "at-1", "token_type": "Bearer"}))
        .await;
    let token = w.session(&["plain-app"]).await;
    let status =
        |origin: &'static str| authorize::handle(&w.app, status_post(&token, Some(origin)));
    let pending = status(ORIGIN).await;
    assert_eq!(pending.status(), 200);
    assert_eq!(json_body(&pending), json!({"status": "pending"}));
    assert_eq!(pending.headers()["access-control-allow-origin"], ORIGIN);
    assert_eq!(pending.headers()["cache-control"], "no-store");

    let s = start_with(&w, &token).await;
    let page = w
        .callback(
            "plain-app",
            &q(&[("code", "c"), ("state", &s.state)]),
            Some(&s.cookie),
        )
        .await;
    let id = posted(&page)["connection_id"].as_str().unwrap().to_string();
    let done = status(ORIGIN).await;
    let v = json_body(&done);
    assert_eq!(
        (v["status"].as_str(), v["connection_id"].as_str()),
        (Some("connected"), Some(id.as_str()))
    );
    assert!(!body_text(&done).contains("at-1"));
    let foreign = status("https://evil.example.com").await;
    assert!(
        foreign
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "another origin cannot read it"
    );
    let forged = authorize::handle(&w.app, status_post("cs_forged", None)).await;
    assert_eq!(forged.status(), 401);
    assert_eq!(json_body(&forged)["error"]["code"], "invalid_session");
}

/// The session's status, as the app's page polls it.
async fn status(w: &World, token: &str) -> Value {
    json_body(&authorize::handle(&w.app, status_post(token, Some(ORIGIN))).await)
}

/// A popup the provider's page cut off from the app reads as closed while
/// the user is still signing in: the status says how long the flow may
/// still come back, and a new flow from the session clears the last
/// outcome, so the app waits for this flow's.
#[tokio::test]
async fn flow_started_from_a_session_marks_it_at_the_provider() {
    let w = world().await;
    let token = w.session(&["plain-app"]).await;
    assert_eq!(status(&w, &token).await, json!({"status": "pending"}));
    let resp = authorize::handle(&w.app, authorize_post("plain-app", &token)).await;
    let location = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let state = location
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .to_string();
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        status(&w, &token).await,
        json!({"status": "pending", "flow_expires_in": 600})
    );
    w.clock.advance(100);
    assert_eq!(status(&w, &token).await["flow_expires_in"], 500);
    let denied = w
        .callback(
            "plain-app",
            &q(&[("error", "access_denied"), ("state", &state)]),
            Some(&cookie),
        )
        .await;
    assert_eq!(posted(&denied)["error"], "access_denied");
    assert_eq!(status(&w, &token).await["error"], "access_denied");
    // The person tries again from the same session: pending again.
    let again = authorize::handle(&w.app, authorize_post("plain-app", &token)).await;
    assert_eq!(again.status(), 303);
    assert_eq!(
        status(&w, &token).await,
        json!({"status": "pending", "flow_expires_in": 600})
    );
    w.clock.advance(601);
    assert_eq!(
        status(&w, &token).await,
        json!({"status": "pending"}),
        "the flow is over"
    );
}

#[tokio::test]
async fn session_status_errors_are_readable_cross_origin() {
    let w = world().await;
    let forged = authorize::handle(
        &w.app,
        status_post("cs_forged", Some("https://app.example")),
    )
    .await;
    assert_eq!(forged.status(), 401);
    assert_eq!(forged.headers()["access-control-allow-origin"], "*");
    assert_eq!(json_body(&forged)["error"]["code"], "invalid_session");
    // An expired session: its code, readable by the app's page.
    let token = w.session(&["plain-app"]).await;
    w.clock.advance(24 * 3600);
    let expired = authorize::handle(&w.app, status_post(&token, Some(ORIGIN))).await;
    assert_eq!(
        (
            expired.status().as_u16(),
            json_body(&expired)["error"]["code"].clone()
        ),
        (401, json!("session_expired"))
    );
    assert_eq!(expired.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn a_session_token_in_the_status_url_is_refused() {
    let w = world().await;
    let token = w.session(&["plain-app"]).await;
    // The old form (the token in the query) is no longer taken, by either
    // method: a URL is kept by access logs, proxies and the Referer.
    let get = authorize::handle(
        &w.app,
        request("GET", &format!("/oauth/status?session={token}"), &[], None),
    )
    .await;
    assert_eq!(get.status(), 405);
    assert_eq!(get.headers()["allow"], "POST");
    let mut in_query = status_post(&token, Some(ORIGIN));
    *in_query.uri_mut() = format!("{BASE}/oauth/status?session={token}")
        .parse()
        .unwrap();
    let resp = authorize::handle(&w.app, in_query).await;
    assert_eq!(
        (
            resp.status().as_u16(),
            json_body(&resp)["error"]["code"].clone()
        ),
        (400, json!("invalid_request"))
    );
    // A body that is not a form is refused as such.
    let json_post = authorize::handle(
        &w.app,
        request(
            "POST",
            "/oauth/status",
            &[],
            Some(json!({"session": token})),
        ),
    )
    .await;
    assert_eq!(json_post.status(), 415);
    assert_eq!(
        authorize::handle(&w.app, status_post(&token, None))
            .await
            .status(),
        200
    );
}

// ------------------------------------------------ a callback killed mid-way

impl World {
    /// Runs the callback for `s` until the process "dies" at `step`.
    async fn callback_killed_at(&self, step: &'static str, s: &Started) {
        self.kill.kill_at(step);
        let query = q(&[("code", "c"), ("state", &s.state)]);
        let run = self.callback("plain-app", &query, Some(&s.cookie));
        tokio::select! {
            resp = run => panic!("the callback finished: {}", resp.status()),
            _ = self.kill.killed() => {}
        }
        self.kill.disarm();
    }

    async fn session_status(&self, s: &Started) -> Option<SessionResult> {
        let hash = domain::crypto::sha256_hex(&s.session);
        self.store.get_session(&hash).await.unwrap().unwrap().result
    }

    /// Runs the sweep (and so the reconciler) once the callback is long gone.
    async fn sweep_later(&self) -> domain::sweep::SweepReport {
        self.clock
            .advance(domain::reconcile::INTENT_GRACE_SECONDS + 1);
        domain::sweep::sweep(&self.app.sweeper(), None, 100, Deadline::NONE)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_callback_killed_after_the_code_exchange_leaves_an_intent_the_reconciler_fails() {
    let w = world().await;
    w.mock_tokens(json!({"access_token": "at-1", "refresh_token": "rt-1", "token_type": "Bearer"}))
        .await;
    let s = w.start("plain-app").await;
    w.callback_killed_at("secret_write", &s).await;
    assert_eq!(w.token_requests().await.len(), 1, "the code was exchanged");
    assert_eq!(
        w.session_status(&s).await,
        None,
        "pending while the callback may run"
    );
    assert_eq!(w.store.intent_count(), 1);

    let report = w.sweep_later().await;
    assert_eq!(
        (
            report.reconciled.intents_finished,
            report.reconciled.intents_failed
        ),
        (0, 1)
    );
    let result = w
        .session_status(&s)
        .await
        .expect("the session has an outcome");
    assert_eq!(result.status, "error");
    assert_eq!(result.error.as_deref(), Some("interrupted"));
    assert_eq!(w.store.intent_count(), 0);
    assert!(w.store.list_connections("acme").await.unwrap().is_empty());
    assert!(!w.vault.names().iter().any(|n| n.contains("/connections/")));
}

#[tokio::test]
async fn a_callback_killed_after_the_secret_write_is_finished_by_the_reconciler() {
    let w = world().await;
    w.mock_tokens(json!({"access_token": "at-1", "refresh_token": "rt-1", "token_type": "Bearer", "expires_in": 3600}))
        .await;
    let s = w.start("plain-app").await;
    w.callback_killed_at("record_commit", &s).await;
    assert!(
        w.store.list_connections("acme").await.unwrap().is_empty(),
        "no record yet: the process died before the commit"
    );
    let report = w.sweep_later().await;
    assert_eq!(
        (
            report.reconciled.intents_finished,
            report.reconciled.intents_failed
        ),
        (1, 0)
    );
    // The saved tokens are not lost: the connection exists and points at them.
    let conns = w.store.list_connections("acme").await.unwrap();
    assert_eq!(conns.len(), 1);
    let c = &conns[0];
    let stored = w
        .vault
        .read_tokens(c.secret_name(), c.secret_version())
        .await
        .unwrap()
        .expect("the record points at the saved version");
    assert!(stored.expose_secret().contains("at-1"));
    let result = w.session_status(&s).await.expect("outcome");
    assert_eq!(result.status, "connected");
    assert_eq!(result.connection_id.as_deref(), Some(c.id()));
    // A second sweep has nothing left to do.
    let again = w.sweep_later().await;
    assert_eq!(again.reconciled, Default::default());
}

#[tokio::test]
async fn a_callback_killed_before_its_intent_is_failed_by_the_reconciler() {
    let w = world().await;
    w.mock_tokens(json!({"access_token": "at-1", "refresh_token": "rt-1", "token_type": "Bearer"}))
        .await;
    let s = w.start("plain-app").await;
    w.callback_killed_at("record_intent", &s).await;
    let report = w.sweep_later().await;
    assert_eq!(report.reconciled.intents_failed, 1);
    assert_eq!(w.session_status(&s).await.unwrap().status, "error");
}

#[tokio::test]
async fn a_failed_record_write_is_finished_by_the_reconciler_and_the_session_says_connected() {
    let w = world().await;
    w.mock_tokens(json!({"access_token": "at-1", "refresh_token": "rt-1", "token_type": "Bearer"}))
        .await;
    w.kill.fail("record_commit", usize::MAX);
    let s = w.start("plain-app").await;
    let resp = w
        .callback(
            "plain-app",
            &q(&[("code", "c"), ("state", &s.state)]),
            Some(&s.cookie),
        )
        .await;
    assert_eq!(resp.status(), 503);
    assert_eq!(w.session_status(&s).await.unwrap().status, "error");
    w.kill.fail("record_commit", 0);
    let report = w.sweep_later().await;
    assert_eq!(report.reconciled.intents_finished, 1);
    assert_eq!(w.store.list_connections("acme").await.unwrap().len(), 1);
    assert_eq!(w.session_status(&s).await.unwrap().status, "connected");
}

#[tokio::test]
async fn a_reconnect_killed_before_its_commit_wins_over_a_later_refresh_of_the_old_grant() {
    let w = world().await;
    w.mock_tokens(json!({"access_token": "at-1", "refresh_token": "rt-1", "token_type": "Bearer", "expires_in": 3600}))
        .await;
    let first = w.start("plain-app").await;
    let resp = w
        .callback(
            "plain-app",
            &q(&[("code", "c"), ("state", &first.state)]),
            Some(&first.cookie),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let old = w.store.list_connections("acme").await.unwrap().remove(0);
    // The user reconnects; the callback dies after saving the new grant.
    w.provider.reset().await;
    w.mock_tokens(json!({"access_token": "at-new-grant", "refresh_token": "rt-9", "token_type": "Bearer", "expires_in": 3600}))
        .await;
    let again = w.start("plain-app").await;
    w.callback_killed_at("record_commit", &again).await;
    // Meanwhile a refresh of the old grant commits (a later write than the
    // reconnect's flow, by the clock).
    w.clock.advance(5);
    let current = w
        .store
        .get_connection("acme", old.id())
        .await
        .unwrap()
        .unwrap();
    w.store.seed_connection(&testkit::record::patched(
        &current,
        json!({"version": current.version() + 1, "updated_at": w.app.now(), "last_refresh_at": w.app.now()}),
    ));

    let report = w.sweep_later().await;
    assert_eq!(report.reconciled.intents_finished, 1);
    let now = w
        .store
        .get_connection("acme", old.id())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(
        now.secret_version(),
        old.secret_version(),
        "the reconnect's grant won"
    );
    let stored = w
        .vault
        .read_tokens(now.secret_name(), now.secret_version())
        .await
        .unwrap()
        .unwrap();
    assert!(stored.expose_secret().contains("at-new-grant"));
    assert_eq!(w.session_status(&again).await.unwrap().status, "connected");
}

// ------------------------------------------------- a refresh killed mid-way

impl World {
    async fn token_request(&self, id: &str) -> Response<Body> {
        self.token_request_to(&self.app, id).await
    }

    /// A token request served by `app` (a function's own ports, say).
    async fn token_request_to(&self, app: &App, id: &str) -> Response<Body> {
        let auth = format!("Bearer {}", self.api_key);
        token::handle(
            app,
            request(
                "GET",
                &format!("/connections/{id}/token"),
                &[("authorization", &auth)],
                None,
            ),
        )
        .await
    }

    /// Connects through the callback; tokens live 60 s.
    async fn connect_plain(&self) -> Connection {
        Mock::given(method("POST"))
            .and(path("/token"))
            .and(wiremock::matchers::body_string_contains("grant_type=refresh_token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                json!({"access_token": "at-2", "refresh_token": "rt-2", "token_type": "Bearer", "expires_in": 3600}),
            ))
            .with_priority(1)
            .mount(&self.provider)
            .await;
        self.mock_tokens(json!({"access_token": "at-1", "refresh_token": "rt-1", "token_type": "Bearer", "expires_in": 60}))
            .await;
        let s = self.start("plain-app").await;
        let resp = self
            .callback(
                "plain-app",
                &q(&[("code", "c"), ("state", &s.state)]),
                Some(&s.cookie),
            )
            .await;
        assert_eq!(resp.status(), 200, "{}", body_text(&resp));
        self.store.list_connections("acme").await.unwrap().remove(0)
    }

    /// Runs a token request until the process "dies" at `step`.
    async fn token_killed_at(&self, step: &'static str, id: &str) {
        self.kill.kill_at(step);
        let run = self.token_request(id);
        tokio::select! {
            resp = run => panic!("the token request finished: {}", resp.status()),
            _ = self.kill.killed() => {}
        }
        self.kill.disarm();
    }

    async fn refresh_requests(&self) -> usize {
        self.token_requests()
            .await
            .iter()
            .filter(|r| String::from_utf8_lossy(&r.body).contains("grant_type=refresh_token"))
            .count()
    }

    /// The record points at a version that exists; answers its access token.
    async fn pointed_access_token(&self, id: &str) -> String {
        let c = self
            .store
            .get_connection("acme", id)
            .await
            .unwrap()
            .unwrap();
        let v = self
            .vault
            .read_tokens(c.secret_name(), c.secret_version())
            .await
            .unwrap()
            .expect("the record points at a version that exists");
        let v: Value = serde_json::from_str(v.expose_secret()).unwrap();
        v["access_token"].as_str().unwrap().to_string()
    }
}

#[tokio::test]
async fn a_refresh_killed_after_its_secret_write_is_finished_by_the_next_caller() {
    let w = world().await;
    let c = w.connect_plain().await;
    w.clock.advance(31); // past half the token's life: due
    w.token_killed_at("record_commit", c.id()).await;
    assert_eq!(w.refresh_requests().await, 1, "the provider answered");
    assert_eq!(
        w.pointed_access_token(c.id()).await,
        "at-1",
        "not committed"
    );
    // The dead holder's lease lapses; the next caller finishes its refresh
    // from the version it wrote, without asking the provider again.
    w.clock
        .advance(domain::refresh::lease_seconds(&w.app.config) + 1);
    let resp = w.token_request(c.id()).await;
    assert_eq!(resp.status(), 200, "{}", body_text(&resp));
    assert_eq!(json_body(&resp)["access_token"], "at-2");
    assert_eq!(w.refresh_requests().await, 1, "no second refresh grant");
    assert_eq!(w.pointed_access_token(c.id()).await, "at-2");
}

#[tokio::test]
async fn a_refresh_killed_before_its_secret_write_leaves_the_record_on_its_last_saved_tokens() {
    let w = world().await;
    let c = w.connect_plain().await;
    w.clock.advance(31);
    w.token_killed_at("secret_write", c.id()).await;
    assert_eq!(w.refresh_requests().await, 1, "the provider answered");
    // Nothing was written: the record still points at the first grant's
    // tokens, which exist. (A rotating provider has spent their refresh
    // token; this mock has not, so the next refresh succeeds.)
    assert_eq!(w.pointed_access_token(c.id()).await, "at-1");
    w.clock
        .advance(domain::refresh::lease_seconds(&w.app.config) + 1);
    let resp = w.token_request(c.id()).await;
    assert_eq!(resp.status(), 200, "{}", body_text(&resp));
    assert_eq!(w.refresh_requests().await, 2);
    assert_eq!(w.pointed_access_token(c.id()).await, "at-2");
}

// ------------------------------------ malformed input, as API Gateway sends it

/// An API Gateway HTTP API (payload 2.0) event, parsed by `lambda_http`
/// exactly as the deployed function parses it.
fn gateway_event(
    method: &str,
    path: &str,
    headers: Value,
    body: Option<&str>,
    base64: bool,
) -> Request {
    let event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012", "apiId": "api", "domainName": "broker.example.com",
            "domainPrefix": "broker",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.9", "userAgent": "test"},
            "requestId": "req", "routeKey": "$default", "stage": "$default",
            "time": "01/Dec/2026:00:00:00 +0000", "timeEpoch": 0
        },
        "body": body,
        "isBase64Encoded": base64
    });
    lambda_http::request::from_str(&event.to_string()).expect("a valid gateway event")
}

#[tokio::test]
async fn malformed_bodies_content_types_and_repeated_keys_get_clean_4xx_codes() {
    let w = world().await;
    let auth = format!("Bearer {}", w.api_key);
    let not_utf8 = base64::engine::general_purpose::STANDARD.encode([0xff, 0xfe, 0x7b, 0x00]);
    let cases: Vec<(&str, Request, u16, &str)> = vec![
        (
            "a base64 body that decodes to bytes that are not UTF-8 JSON",
            gateway_event(
                "POST",
                "/connect-sessions",
                json!({"authorization": auth, "content-type": "application/json"}),
                Some(&not_utf8),
                true,
            ),
            400,
            "invalid_request",
        ),
        (
            "JSON sent as text/plain",
            gateway_event(
                "POST",
                "/connect-sessions",
                json!({"authorization": auth, "content-type": "text/plain"}),
                Some(r#"{"end_user_id":"u"}"#),
                false,
            ),
            415,
            "unsupported_media_type",
        ),
        (
            "JSON sent as a form",
            gateway_event(
                "POST",
                "/integrations",
                json!({"authorization": auth, "content-type": "application/x-www-form-urlencoded"}),
                Some("id=x"),
                false,
            ),
            415,
            "unsupported_media_type",
        ),
        (
            "two Authorization headers, joined by the gateway",
            gateway_event(
                "GET",
                "/integrations",
                json!({"authorization": format!("{auth},{auth}")}),
                None,
                false,
            ),
            401,
            "unauthorized",
        ),
        (
            "an id longer than any id can be, before any storage call",
            gateway_event(
                "GET",
                &format!("/integrations/{}", "a".repeat(2000)),
                json!({}),
                None,
                false,
            ),
            404,
            "not_found",
        ),
        (
            "an id with characters no id has",
            gateway_event("GET", "/connections/conn%00%22%3Cx", json!({}), None, false),
            404,
            "not_found",
        ),
    ];
    for (what, req, status, code) in cases {
        let resp = api::handle(&w.app, req).await;
        assert_eq!(resp.status(), status, "{what}");
        assert_eq!(json_body(&resp)["error"]["code"], code, "{what}");
    }
    // Two Authorization header values (a direct invocation): refused too.
    let twice = lambda_http::http::Request::builder()
        .uri(format!("{BASE}/integrations"))
        .header("authorization", &auth)
        .header("authorization", &auth)
        .body(Body::Empty)
        .unwrap();
    assert_eq!(api::handle(&w.app, twice).await.status(), 401);
    // The token route checks its id the same way, without a key.
    let long = format!("/connections/{}/token", "c".repeat(5000));
    let resp = token::handle(&w.app, gateway_event("GET", &long, json!({}), None, false)).await;
    assert_eq!(resp.status(), 404);
    w.assert_nothing_written().await;
}

// ------------------------------------------ a connect flow bound to the app's page

/// `POST /oauth/plain-app/authorize` with `form` and the given `Origin`.
fn authorize_form(origin: Option<&str>, form: &[(&str, &str)]) -> Request {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut b = lambda_http::http::Request::builder()
        .method("POST")
        .uri(format!("{BASE}/oauth/plain-app/authorize"))
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(o) = origin {
        b = b.header("origin", o);
    }
    b.body(Body::Text(body)).unwrap()
}

#[tokio::test]
async fn authorize_requires_a_post_from_the_sessions_origin() {
    let w = world().await;
    let token = w.session(&["plain-app"]).await;
    // A bare link (an email, a chat): refused without looking at the session.
    let link = authorize::handle(
        &w.app,
        request(
            "GET",
            &format!("/oauth/plain-app/authorize?session={token}"),
            &[],
            None,
        ),
    )
    .await;
    assert_eq!(link.status(), 403);
    assert_eq!(posted(&link)["error"], "unbound_link");
    assert_eq!(post_origin(&link), "", "nothing is posted to any page");
    assert!(body_text(&link).contains("can only be started from the app"));
    type Case<'a> = (&'a str, Option<&'a str>, Vec<(&'a str, &'a str)>);
    let refused: Vec<Case> = vec![
        (
            "another site's page",
            Some("https://evil.example"),
            vec![("session", &token)],
        ),
        ("no Origin at all", None, vec![("session", &token)]),
        (
            "Origin null (a no-referrer page)",
            Some("null"),
            vec![("session", &token)],
        ),
        (
            "the connect page, handed the session by another site",
            Some(BASE_ORIGIN),
            vec![("session", &token), ("origin", "https://evil.example")],
        ),
        (
            "the connect page without an origin",
            Some(BASE_ORIGIN),
            vec![("session", &token)],
        ),
    ];
    for (what, origin, form) in refused {
        let resp = authorize::handle(&w.app, authorize_form(origin, &form)).await;
        assert_eq!(resp.status(), 403, "{what}");
        assert_eq!(posted(&resp)["error"], "origin_mismatch", "{what}");
        assert_eq!(post_origin(&resp), "", "{what}: nothing posted");
    }
    assert_eq!(w.store.flow_count(), 0, "no flow was stored");
    // The app's own page posting the session (redirect mode) starts a flow.
    let direct =
        authorize::handle(&w.app, authorize_form(Some(ORIGIN), &[("session", &token)])).await;
    assert_eq!(direct.status(), 303, "{}", body_text(&direct));
    // So does the connect page handed the session by a page of the origin.
    let via_page = authorize::handle(&w.app, authorize_post("plain-app", &token)).await;
    assert_eq!(via_page.status(), 303);
    // A broker served on the app's own origin: its connect page, handed the
    // session by another site, still names that site and is refused.
    let mut vars: HashMap<String, String> = [
        ("TABLE_NAME", "unused"),
        ("SECRET_PREFIX", "broker/"),
        ("PUBLIC_BASE_URL", "https://app.example.com/broker/"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    vars.insert("ALLOW_INSECURE_LOOPBACK".into(), "true".into());
    let same_origin = w.app.with_config(Config::from_vars(&vars).unwrap());
    let resp = authorize::handle(
        &same_origin,
        authorize_form(
            Some(ORIGIN),
            &[("session", &token), ("origin", "https://evil.example")],
        ),
    )
    .await;
    assert_eq!(
        posted(&resp)["error"],
        "origin_mismatch",
        "same-origin broker"
    );
    // Anything but a form is refused before any lookup.
    let mut json = authorize_form(Some(ORIGIN), &[("session", &token)]);
    json.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    assert_eq!(authorize::handle(&w.app, json).await.status(), 415);
}

#[tokio::test]
async fn the_connect_page_carries_its_origin_and_takes_the_session_from_its_opener() {
    let w = world().await;
    let resp = authorize::handle(
        &w.app,
        request("GET", "/oauth/plain-app/connect", &[], None),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["referrer-policy"], "same-origin");
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    let csp = resp.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'nonce-"),
        "{csp}"
    );
    let html = body_text(&resp);
    assert!(html.contains(r#"action="authorize""#), "{html}");
    assert!(html.contains("e.source !== opener"));
    let bad = authorize::handle(&w.app, request("GET", "/oauth/BAD%20ID/connect", &[], None)).await;
    assert_eq!(bad.status(), 404);
}

#[tokio::test]
async fn a_session_connects_once_and_a_second_flow_of_it_exchanges_no_code() {
    let w = world().await;
    w.mock_tokens(json!({"access_token": "at-1", "refresh_token": "rt-1", "token_type": "Bearer"}))
        .await;
    let token = w.session(&["plain-app"]).await;
    // Two flows of one session started at once (two clicks).
    let first = start_with(&w, &token).await;
    let second = start_with(&w, &token).await;
    let done = w
        .callback(
            "plain-app",
            &q(&[("code", "c"), ("state", &first.state)]),
            Some(&first.cookie),
        )
        .await;
    assert_eq!(posted(&done)["status"], "connected");
    let again = w
        .callback(
            "plain-app",
            &q(&[("code", "c2"), ("state", &second.state)]),
            Some(&second.cookie),
        )
        .await;
    assert_eq!(again.status(), 409);
    assert_eq!(posted(&again)["error"], "session_used");
    assert_eq!(
        w.token_requests().await.len(),
        1,
        "the second code was never exchanged"
    );
    let status = w.session_status(&second).await.expect("an outcome");
    assert_eq!(
        status.status, "connected",
        "the refused flow does not overwrite it"
    );
    // And the spent session starts nothing more.
    let resp = authorize::handle(&w.app, authorize_post("plain-app", &token)).await;
    assert_eq!(resp.status(), 409);
    assert_eq!(posted(&resp)["error"], "session_used");
    assert_eq!(w.store.list_connections("acme").await.unwrap().len(), 1);
}

// ------------------------------------------ per-connection values and the hosted Connect page

/// The broker's page posting `form` (plus the session and the app's origin).
fn hosted_authorize(integration: &str, token: &str, form: &[(&str, &str)]) -> Request {
    let mut all = vec![("session", token), ("origin", ORIGIN), ("hosted", "1")];
    all.extend_from_slice(form);
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(all)
        .finish();
    lambda_http::http::Request::builder()
        .method("POST")
        .uri(format!("{BASE}/oauth/{integration}/authorize"))
        .header("origin", BASE_ORIGIN)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::Text(body))
        .unwrap()
}

/// A JSON call of the hosted page, from the page's `origin`.
fn page_call(path: &str, origin: &str, body: Value) -> Request {
    request("POST", path, &[("origin", origin)], Some(body))
}

fn boot_of(resp: &Response<Body>) -> Value {
    let text = body_text(resp);
    let start = text.find(r#"id="boot""#).expect("boot element");
    let open = start + text[start..].find('>').unwrap() + 1;
    let close = open + text[open..].find("</script>").unwrap();
    serde_json::from_str(&text[open..close]).unwrap()
}

/// Starts a flow of `shop-app` from the hosted page for `shop`: the
/// provider URL it redirects to, its state and its binding cookie.
async fn start_hosted(w: &World, token: &str, shop: &str) -> (url::Url, String, String) {
    let resp = authorize::handle(
        &w.app,
        hosted_authorize("shop-app", token, &[("config.shop", shop)]),
    )
    .await;
    assert_eq!(resp.status(), 303, "{}", body_text(&resp));
    let location = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let state = location
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .to_string();
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    (location, state, cookie)
}

impl World {
    async fn session_with(&self, body: Value) -> Response<Body> {
        self.api("POST", "/connect-sessions", Some(body)).await
    }

    async fn provider_requests(&self) -> Vec<String> {
        self.provider
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.url.path().to_string())
            .collect()
    }
}

#[tokio::test]
async fn a_templated_value_typed_by_the_end_user_is_checked_before_any_request() {
    let w = world().await;
    let token = w.session(&["shop-app"]).await;
    for (form, why) in [
        (
            vec![("config.shop", "acme.evil.example")],
            "outside the pattern",
        ),
        (vec![("config.shop", "ACME")], "outside the pattern"),
        (
            vec![("config.host", "127.0.0.1:1")],
            "the integration's value",
        ),
        (vec![("config.nope", "x")], "not a field"),
        (vec![], "missing"),
    ] {
        let resp = authorize::handle(&w.app, hosted_authorize("shop-app", &token, &form)).await;
        assert_eq!(resp.status(), 400, "{why}: {}", body_text(&resp));
        assert_eq!(posted(&resp)["error"], "invalid_connection_config", "{why}");
        let text = body_text(&resp);
        assert!(
            text.contains("/connect?integration=shop-app&amp;error=invalid_connection_config"),
            "{why}: the hosted page gets the error back: {text}"
        );
    }
    assert!(
        w.provider_requests().await.is_empty(),
        "no request left the broker"
    );
    assert_eq!(w.store.flow_count(), 0, "no flow was stored");

    // A good value: the provider URL is the shop's, and so is the token call.
    w.provider
        .register(
            Mock::given(method("POST"))
                .and(path("/shops/acme/token"))
                .respond_with(ResponseTemplate::new(200).set_body_json(
                    json!({"access_token": "at-acme", "refresh_token": "rt-acme", "token_type": "Bearer", "expires_in": 3600}),
                )),
        )
        .await;
    let (location, state, cookie) = start_hosted(&w, &token, "acme").await;
    assert_eq!(location.path(), "/shops/acme/authorize");
    let done = w
        .callback(
            "shop-app",
            &q(&[("code", "c"), ("state", &state)]),
            Some(&cookie),
        )
        .await;
    assert_eq!(posted(&done)["status"], "connected", "{}", body_text(&done));
    assert_eq!(w.provider_requests().await, vec!["/shops/acme/token"]);
    let conns = w.store.list_connections("acme").await.unwrap();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].connection_config()["shop"], "acme");
    assert_eq!(
        serde_json::to_value(web::views::ConnectionView::from(&conns[0])).unwrap()["connection_config"],
        json!({"shop": "acme"})
    );
}

#[tokio::test]
async fn a_session_may_fix_connection_values_the_end_user_cannot_change() {
    let w = world().await;
    let base = json!({"end_user_id": "user-1", "integrations": ["shop-app", "plain-app"], "origin": ORIGIN});
    for (config, code) in [
        (
            json!({"shop-app": {"shop": "Not A Shop"}}),
            "invalid_connection_config",
        ),
        (
            json!({"shop-app": {"nope": "x"}}),
            "invalid_connection_config",
        ),
        (
            json!({"oidc-app": {"host": "127.0.0.1:80"}}),
            "invalid_connection_config",
        ),
        (
            json!({"shop-app": {"shop": "a\u{0}b"}}),
            "invalid_connection_config",
        ),
    ] {
        let mut body = base.clone();
        body["connection_config"] = config.clone();
        let resp = w.session_with(body).await;
        assert_eq!(resp.status(), 400, "{config}: {}", body_text(&resp));
        assert_eq!(json_body(&resp)["error"]["code"], code, "{config}");
    }
    let mut body = base.clone();
    body["connection_config"] = json!({"shop-app": {"shop": "acme"}});
    let resp = w.session_with(body).await;
    assert_eq!(resp.status(), 201, "{}", body_text(&resp));
    let token = json_body(&resp)["token"].as_str().unwrap().to_string();
    // The end user cannot move the app's value.
    let resp = authorize::handle(
        &w.app,
        hosted_authorize("shop-app", &token, &[("config.shop", "globex")]),
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(posted(&resp)["error"], "invalid_connection_config");
    let resp = authorize::handle(&w.app, hosted_authorize("shop-app", &token, &[])).await;
    assert_eq!(resp.status(), 303, "{}", body_text(&resp));
    let location = resp.headers()["location"].to_str().unwrap();
    assert!(location.contains("/shops/acme/authorize"), "{location}");
}

#[tokio::test]
async fn the_hosted_connect_page_takes_the_session_only_from_the_apps_origin() {
    let w = world().await;
    let token = w.session(&["shop-app", "key-app", "plain-app"]).await;
    // The page: nonce CSP, no inline handler, nothing of a session in a URL.
    let page = authorize::handle(
        &w.app,
        request(
            "GET",
            &format!("/connect?session={token}&integration=shop-app"),
            &[],
            None,
        ),
    )
    .await;
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.starts_with("default-src 'none'; script-src 'nonce-"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let html = body_text(&page);
    assert!(
        !html.contains(" onclick=") && !html.contains(" onload="),
        "no inline handler"
    );
    assert!(!html.contains(&token), "a session in the URL is ignored");
    let boot = boot_of(&page);
    assert_eq!(boot["mode"], "popup");
    assert_eq!(boot["integration"], "shop-app");
    assert!(boot.get("token").is_none());

    let ask = |origin: &str, reported: &str| {
        page_call(
            "/connect/session",
            origin,
            json!({"session": token, "origin": reported}),
        )
    };
    for (origin, reported, why) in [
        (ORIGIN, ORIGIN, "the app's page itself"),
        (
            BASE_ORIGIN,
            "https://evil.example",
            "another site handed the page the session",
        ),
        ("https://evil.example", ORIGIN, "another site"),
    ] {
        let resp = authorize::handle(&w.app, ask(origin, reported)).await;
        assert_eq!(resp.status(), 403, "{why}");
        assert_eq!(
            json_body(&resp)["error"]["code"],
            "origin_mismatch",
            "{why}"
        );
    }
    let resp = authorize::handle(&w.app, ask(BASE_ORIGIN, ORIGIN)).await;
    assert_eq!(resp.status(), 200, "{}", body_text(&resp));
    let v = json_body(&resp);
    let ids: Vec<&str> = v["integrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["key-app", "plain-app", "shop-app"]);
    let shop = &v["integrations"][2];
    assert_eq!(shop["display_name"], "Shops");
    assert_eq!(shop["auth_mode"], "oauth2");
    assert_eq!(shop["available"], true);
    let fields: Vec<(&str, &str)> = shop["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f["source"].as_str().unwrap()))
        .collect();
    assert_eq!(fields, vec![("host", "integration"), ("shop", "end_user")]);
    assert_eq!(v["integrations"][0]["auth_mode"], "api_key");
    assert!(!body_text(&resp).contains("s3cret-client"));

    // Redirect mode: the app's page posts the session; its Origin is the proof.
    let form = |origin: &str, token: &str| {
        lambda_http::http::Request::builder()
            .method("POST")
            .uri(format!("{BASE}/connect"))
            .header("origin", origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::Text(format!("session={token}")))
            .unwrap()
    };
    let refused = authorize::handle(&w.app, form("https://evil.example", &token)).await;
    assert_eq!(refused.status(), 403);
    assert!(!body_text(&refused).contains(&token));
    // Redirect mode needs somewhere to send the tab back to.
    let no_return = authorize::handle(&w.app, form(ORIGIN, &token)).await;
    assert_eq!(no_return.status(), 400);
    let token = redirect_session(&w, "https://app.example.com/settings").await;
    let ok = authorize::handle(&w.app, form(ORIGIN, &token)).await;
    assert_eq!(ok.status(), 200);
    let boot = boot_of(&ok);
    assert_eq!(boot["mode"], "redirect");
    assert_eq!(boot["origin"], ORIGIN);
    assert_eq!(boot["token"], token.as_str());
}

#[tokio::test]
async fn an_api_key_typed_on_the_connect_page_is_checked_before_it_is_stored() {
    let w = world().await;
    w.provider
        .register(
            Mock::given(method("GET"))
                .and(path("/shops/acme/whoami"))
                .and(wiremock::matchers::header(
                    "authorization",
                    "Bearer good-key",
                ))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true}))),
        )
        .await;
    w.provider
        .register(
            Mock::given(method("GET"))
                .and(path("/shops/acme/whoami"))
                .respond_with(ResponseTemplate::new(401)),
        )
        .await;
    let token = w.session(&["key-app"]).await;
    let submit = |key: &str, shop: &str| {
        callback::handle(
            &w.app,
            page_call(
                "/connect/api-key",
                BASE_ORIGIN,
                json!({"session": token, "origin": ORIGIN, "integration": "key-app",
                       "api_key": key, "config": {"shop": shop}}),
            ),
        )
    };
    let bad_shop = submit("good-key", "no.such/shop").await;
    assert_eq!(bad_shop.status(), 400);
    assert_eq!(
        json_body(&bad_shop)["error"]["code"],
        "invalid_connection_config"
    );
    assert!(
        w.provider_requests().await.is_empty(),
        "refused before any request"
    );

    let rejected = submit("wrong-key", "acme").await;
    assert_eq!(rejected.status(), 400);
    assert_eq!(json_body(&rejected)["error"]["code"], "api_key_rejected");
    assert!(!body_text(&rejected).contains("wrong-key"));
    assert!(w.store.list_connections("acme").await.unwrap().is_empty());
    assert!(!w.vault.names().iter().any(|n| n.contains("/connections/")));

    // The session was not spent by the rejected key: the person retries.
    let ok = submit("good-key", "acme").await;
    assert_eq!(ok.status(), 201, "{}", body_text(&ok));
    let id = json_body(&ok)["connection_id"]
        .as_str()
        .unwrap()
        .to_string();
    let conn = w.store.get_connection("acme", &id).await.unwrap().unwrap();
    assert_eq!(conn.connection_config()["shop"], "acme");
    assert_eq!(conn.end_user_id(), "user-1");
    let hash = domain::crypto::sha256_hex(&token);
    let result = w
        .store
        .get_session(&hash)
        .await
        .unwrap()
        .unwrap()
        .result
        .unwrap();
    assert_eq!(
        (result.status.as_str(), result.connection_id.as_deref()),
        ("connected", Some(id.as_str()))
    );
    let again = submit("good-key", "acme").await;
    assert_eq!(again.status(), 409);
    assert_eq!(json_body(&again)["error"]["code"], "session_used");
    // Not from the app's page: refused before the provider is asked.
    let before = w.provider_requests().await.len();
    let token2 = w.session(&["key-app"]).await;
    let foreign = callback::handle(
        &w.app,
        page_call(
            "/connect/api-key",
            BASE_ORIGIN,
            json!({"session": token2, "origin": "https://evil.example", "integration": "key-app",
                   "api_key": "good-key", "config": {"shop": "acme"}}),
        ),
    )
    .await;
    assert_eq!(foreign.status(), 403);
    assert_eq!(w.provider_requests().await.len(), before);
}

#[tokio::test]
async fn a_declined_flow_of_the_hosted_page_goes_back_to_it_with_the_code() {
    let w = world().await;
    let token = w.session(&["shop-app"]).await;
    let (_, state, cookie) = start_hosted(&w, &token, "acme").await;
    let done = w
        .callback(
            "shop-app",
            &q(&[("error", "access_denied"), ("state", &state)]),
            Some(&cookie),
        )
        .await;
    assert_eq!(done.status(), 403);
    let html = body_text(&done);
    assert!(
        html.contains(r#"data-retry="https://broker.example.com/connect?integration=shop-app&amp;error=access_denied""#),
        "{html}"
    );
    let hash = domain::crypto::sha256_hex(&token);
    let result = w
        .store
        .get_session(&hash)
        .await
        .unwrap()
        .unwrap()
        .result
        .unwrap();
    assert_eq!(result.error.as_deref(), Some("access_denied"));
    // The session is not spent: the page's retry can start a new flow.
    let again = authorize::handle(
        &w.app,
        hosted_authorize("shop-app", &token, &[("config.shop", "acme")]),
    )
    .await;
    assert_eq!(again.status(), 303);
}

#[tokio::test]
async fn a_method_a_route_does_not_take_is_answered_405_with_its_allow_header() {
    let w = world().await;
    let auth = format!("Bearer {}", w.api_key);
    let resp = api::handle(
        &w.app,
        request("TRACE", "/connections", &[("authorization", &auth)], None),
    )
    .await;
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, POST");
    assert_eq!(json_body(&resp)["error"]["code"], "method_not_allowed");
    let resp = authorize::handle(&w.app, request("PUT", "/connect", &[], None)).await;
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, POST");
    let resp = authorize::handle(&w.app, request("DELETE", "/oauth/status", &[], None)).await;
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    let resp = callback::handle(
        &w.app,
        request("POST", "/oauth/plain-app/callback", &[], None),
    )
    .await;
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET");
}

#[tokio::test]
async fn a_hosted_flow_that_fails_after_its_session_was_spent_reports_to_the_app() {
    let w = world().await;
    w.provider
        .register(
            Mock::given(method("POST"))
                .and(path("/shops/acme/token"))
                .respond_with(
                    ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"})),
                ),
        )
        .await;
    let token = w.session(&["shop-app"]).await;
    let (_, state, cookie) = start_hosted(&w, &token, "acme").await;
    let done = w
        .callback(
            "shop-app",
            &q(&[("code", "c"), ("state", &state)]),
            Some(&cookie),
        )
        .await;
    assert_eq!(posted(&done)["error"], "token_exchange_failed");
    // The session is spent: a retry could only fail, so the page reports
    // the real code to the app instead of going back to the Connect page.
    assert!(
        body_text(&done).contains(r#"data-retry="""#),
        "{}",
        body_text(&done)
    );
    assert_eq!(post_origin(&done), ORIGIN);
}

// ------------------------------------------- the state machine's hard cases

impl World {
    /// A forced token request (the refresh is coalesced for a minute, so the
    /// clock moves past that first).
    async fn forced_token(&self, id: &str) -> Response<Body> {
        self.clock.advance(61);
        let auth = format!("Bearer {}", self.api_key);
        token::handle(
            &self.app,
            request(
                "GET",
                &format!("/connections/{id}/token?force_refresh=true"),
                &[("authorization", &auth)],
                None,
            ),
        )
        .await
    }

    /// The provider rotates refresh tokens: each `(used, access, next)`
    /// answers a refresh that presents `used`.
    async fn mock_rotations(&self, rotations: &[(&str, &str, &str)]) {
        for (used, at, rt) in rotations {
            Mock::given(method("POST"))
                .and(path("/token"))
                .and(wiremock::matchers::body_string_contains(format!(
                    "refresh_token={used}"
                )))
                .respond_with(ResponseTemplate::new(200).set_body_json(
                    json!({"access_token": at, "refresh_token": rt, "token_type": "Bearer", "expires_in": 3600}),
                ))
                .with_priority(1)
                .mount(&self.provider)
                .await;
        }
    }

    /// Tokens presented to the provider's revocation endpoint.
    async fn revoked_tokens(&self) -> Vec<String> {
        self.provider
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.url.path() == "/revoke")
            .filter_map(|r| {
                url::form_urlencoded::parse(&r.body)
                    .find(|(k, _)| k == "token")
                    .map(|(_, v)| v.to_string())
            })
            .collect()
    }

    async fn disconnect(&self, id: &str) -> Response<Body> {
        self.api("DELETE", &format!("/connections/{id}"), None)
            .await
    }

    /// Names of the connections' token secrets in the vault.
    fn token_secrets(&self) -> Vec<String> {
        self.vault
            .names()
            .into_iter()
            .filter(|n| n.contains("/connections/"))
            .collect()
    }
}

/// H1: a callback commits its connect and dies before it clears its intent;
/// two refreshes of that grant commit since (each rotating the refresh
/// token). The reconciler must not point the record back at the connect's
/// tokens: their refresh token was rotated away twice.
#[tokio::test]
async fn a_reconciled_connect_never_rolls_back_a_later_refresh_of_its_grant() {
    let w = world().await;
    w.mock_rotations(&[
        ("rt-1", "at-2", "rt-2"),
        ("rt-2", "at-3", "rt-3"),
        ("rt-3", "at-4", "rt-4"),
    ])
    .await;
    w.mock_tokens(json!({"access_token": "at-1", "refresh_token": "rt-1", "token_type": "Bearer", "expires_in": 3600}))
        .await;
    let s = w.start("plain-app").await;
    w.callback_killed_at("finish_flow", &s).await;
    let id = w.store.list_connections("acme").await.unwrap()[0]
        .id()
        .to_string();
    assert_eq!(w.pointed_access_token(&id).await, "at-1");
    for at in ["at-2", "at-3"] {
        let resp = w.forced_token(&id).await;
        assert_eq!(json_body(&resp)["access_token"], at, "{}", body_text(&resp));
    }
    let before = w.store.get_connection("acme", &id).await.unwrap().unwrap();

    let report = w.sweep_later().await;
    assert_eq!(report.reconciled.intents_finished, 1);
    let after = w.store.get_connection("acme", &id).await.unwrap().unwrap();
    assert_eq!(after.secret_version(), before.secret_version());
    assert_eq!(after.version(), before.version(), "nothing was written");
    assert_eq!(w.pointed_access_token(&id).await, "at-3");
    // The newest refresh token is the one the record holds: it refreshes.
    let resp = w.forced_token(&id).await;
    assert_eq!(
        json_body(&resp)["access_token"],
        "at-4",
        "{}",
        body_text(&resp)
    );
    assert_eq!(w.session_status(&s).await.unwrap().status, "connected");
}

/// H1: two sweeps reconcile one intent at once (one pauses at its commit
/// while the other finishes): the connect is committed once.
#[tokio::test]
async fn two_reconcilers_of_one_intent_commit_it_once() {
    let w = world().await;
    w.mock_tokens(json!({"access_token": "at-1", "refresh_token": "rt-1", "token_type": "Bearer", "expires_in": 3600}))
        .await;
    let s = w.start("plain-app").await;
    w.callback_killed_at("record_commit", &s).await;
    w.clock.advance(domain::reconcile::INTENT_GRACE_SECONDS + 1);
    let now = w.app.now();
    w.kill.pause_at("record_commit");
    let first = {
        let app = w.app.clone();
        tokio::spawn(
            async move { domain::reconcile::reconcile(&app.reconciler(), None, now, 10).await },
        )
    };
    w.kill.paused().await;
    let second = domain::reconcile::reconcile(&w.app.reconciler(), None, now, 10)
        .await
        .unwrap();
    w.kill.resume();
    let first = first.await.unwrap().unwrap();
    assert_eq!(
        (first.intents_finished, second.intents_finished),
        (1, 1),
        "both see the connection"
    );
    let all = w.store.list_connections("acme").await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].version(), 1, "one commit");
    let created = w
        .store
        .all_events()
        .iter()
        .filter(|e| e.kind == domain::events::EventKind::Created)
        .count();
    assert_eq!(created, 1, "one connection.created");
    assert_eq!(w.session_status(&s).await.unwrap().status, "connected");
}

/// M1: a reconnect saved its grant and died before its commit; the user
/// then disconnected. The reconciler must not resurrect the connection,
/// and the grant it saved must not stay alive at the provider.
#[tokio::test]
async fn a_connect_killed_before_its_commit_is_revoked_when_the_account_was_disconnected_since() {
    let w = world().await;
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&w.provider)
        .await;
    let c = w.connect_plain().await;
    w.provider.reset().await;
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&w.provider)
        .await;
    w.mock_tokens(json!({"access_token": "at-9", "refresh_token": "rt-9", "token_type": "Bearer", "expires_in": 3600}))
        .await;
    let again = w.start("plain-app").await;
    w.callback_killed_at("record_commit", &again).await;
    let resp = w.disconnect(c.id()).await;
    assert_eq!(resp.status(), 200, "{}", body_text(&resp));
    assert!(w.revoked_tokens().await.contains(&"rt-1".to_string()));

    let report = w.sweep_later().await;
    assert_eq!(report.reconciled.intents_failed, 1);
    assert!(w.store.list_connections("acme").await.unwrap().is_empty());
    assert!(
        w.revoked_tokens().await.contains(&"rt-9".to_string()),
        "the orphaned grant is revoked: {:?}",
        w.revoked_tokens().await
    );
    assert!(w.token_secrets().is_empty(), "{:?}", w.token_secrets());
    assert_eq!(w.session_status(&again).await.unwrap().status, "error");
}

/// M2: Secrets Manager's deletion is asynchronous: a name just deleted
/// cannot be created again at once. Each connect writes a secret of its
/// own, so a reconnect right after a disconnect works.
#[tokio::test]
async fn a_reconnect_right_after_a_disconnect_writes_a_new_generation() {
    let w = world().await;
    let first = w.connect_plain().await;
    let resp = w.disconnect(first.id()).await;
    assert_eq!(resp.status(), 200, "{}", body_text(&resp));
    assert!(w.token_secrets().is_empty());
    let again = w.connect_plain().await;
    assert_eq!(again.id(), first.id(), "the same account");
    assert_ne!(again.secret_name(), first.secret_name());
    let resp = w.token_request(again.id()).await;
    assert_eq!(resp.status(), 200, "{}", body_text(&resp));
}

/// M2: a disconnect slow enough for its lease to lapse (it waits at its
/// secret's delete) while the user reconnects: the reconnect's record and
/// secret survive the disconnect's end, which deletes only its own
/// generation and is refused at the record.
#[tokio::test]
async fn a_disconnect_whose_lease_lapsed_deletes_nothing_a_reconnect_wrote() {
    let w = world().await;
    let first = w.connect_plain().await;
    w.kill.pause_at("secret_delete");
    let slow = {
        let app = w.app.clone();
        let auth = format!("Bearer {}", w.api_key);
        let uri = format!("/connections/{}", first.id());
        tokio::spawn(async move {
            api::handle(
                &app,
                request("DELETE", &uri, &[("authorization", &auth)], None),
            )
            .await
        })
    };
    w.kill.paused().await;
    w.clock
        .advance(domain::refresh::lease_seconds(&w.app.config) + 1);
    w.provider.reset().await;
    let again = w.connect_plain().await;
    assert_eq!(again.id(), first.id());
    w.kill.resume();
    let resp = slow.await.unwrap();
    assert_eq!(resp.status(), 503, "{}", body_text(&resp));
    let now = w
        .store
        .get_connection("acme", first.id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.secret_name(), again.secret_name());
    assert_eq!(w.token_secrets(), [again.secret_name().to_string()]);
    let resp = w.token_request(first.id()).await;
    assert_eq!(resp.status(), 200, "{}", body_text(&resp));
    assert_eq!(json_body(&resp)["access_token"], "at-1");
}

// ------------------------------------------- a function's own ports, narrow fakes

impl World {
    /// This world's app with only `ports` built, as that function's `main`
    /// builds it (the rest answer `Unbuilt`).
    fn app_with_only(&self, ports: &[domain::ports::Port]) -> App {
        let mut app = self.app.clone();
        app.ports = domain::ports::Ports::unbuilt()
            .with_records(ports, &self.store)
            .with_vault(ports, &self.vault)
            .with_keys(ports, self.app.ports.keys.clone());
        app
    }
}

#[tokio::test]
async fn the_token_function_refreshes_with_only_the_ports_its_main_builds() {
    let w = world().await;
    let c = w.connect_plain().await;
    w.clock.advance(120);
    let app = w.app_with_only(aws::functions::TOKEN);
    let resp = w.token_request_to(&app, c.id()).await;
    assert_eq!(resp.status(), 200, "{}", body_text(&resp));
    let body: Value = serde_json::from_str(&body_text(&resp)).unwrap();
    assert_eq!(body["access_token"], "at-2");
    assert_eq!(body["refreshed"], true);
}

#[tokio::test]
async fn a_port_the_token_function_does_not_build_fails_its_call_as_an_internal_error() {
    let w = world().await;
    let c = w.connect_plain().await;
    // Without its token vault the token function cannot read the secret:
    // an internal error, never another port's data.
    let without: Vec<_> = aws::functions::TOKEN
        .iter()
        .copied()
        .filter(|p| *p != domain::ports::Port::TokenVault)
        .collect();
    let app = w.app_with_only(&without);
    let resp = w.token_request_to(&app, c.id()).await;
    assert_eq!(resp.status(), 500, "{}", body_text(&resp));
    assert!(body_text(&resp).contains("internal_error"));
}

/// Counters that are always throttled: a fake of the one port it fails.
struct ThrottledCounters;

#[async_trait::async_trait]
impl Counters for ThrottledCounters {
    async fn add_counts(&self, _: &[domain::events::Event]) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("throttled".into()))
    }
}

#[tokio::test]
async fn a_counter_write_that_fails_never_fails_the_refresh_it_counts() {
    let mut w = world().await;
    let c = w.connect_plain().await;
    w.clock.advance(120);
    w.app.ports.counters = Arc::new(ThrottledCounters);
    let resp = w.token_request(c.id()).await;
    assert_eq!(resp.status(), 200, "{}", body_text(&resp));
    let after = w
        .store
        .get_connection("acme", c.id())
        .await
        .unwrap()
        .unwrap();
    assert!(after.last_refresh_at().is_some(), "the refresh committed");
    assert_ne!(after.secret_version(), c.secret_version());
}
