//! The provider catalog, integration management and custom providers on
//! the backend API, in-process with the memory adapters.

use domain::model::*;
use domain::storage::*;
use domain::{App, Config};
use lambda_http::{Body, Request, Response};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use testkit::ManualClock;
use testkit::{MemoryStore, MemoryVault};
use web::handlers::api;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const NOW: i64 = 1_800_000_000;

struct World {
    app: App,
    store: Arc<MemoryStore>,
    vault: Arc<MemoryVault>,
    key: String,
}

async fn world(allow_loopback: bool) -> World {
    let mut vars: HashMap<String, String> = [
        ("TABLE_NAME", "t"),
        ("SECRET_PREFIX", "broker/"),
        ("PUBLIC_BASE_URL", "https://broker.example.com"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if allow_loopback {
        vars.insert("ALLOW_INSECURE_LOOPBACK".into(), "true".into());
    }
    let store = Arc::new(MemoryStore::new());
    let vault = Arc::new(MemoryVault::new());
    let app = App::new(
        Config::from_vars(&vars).unwrap(),
        store.clone(),
        vault.clone(),
        Arc::new(ManualClock::new(NOW)),
    );
    let minted = domain::auth::mint("acme", NOW);
    store.put_api_key(&minted.record).await.unwrap();
    World {
        app,
        store,
        vault,
        key: minted.key.expose_secret().to_string(),
    }
}

impl World {
    async fn call(&self, m: &str, uri: &str, body: Option<Value>) -> (u16, Value) {
        let req: Request = lambda_http::http::Request::builder()
            .method(m)
            .uri(format!("https://broker.example.com{uri}"))
            .header("authorization", format!("Bearer {}", self.key))
            .header("content-type", "application/json")
            .body(body.map_or(Body::Empty, |v| Body::Text(v.to_string())))
            .unwrap();
        let resp: Response<Body> = api::handle(&self.app, req).await;
        let v = match resp.body() {
            Body::Text(t) => serde_json::from_str(t).unwrap_or(Value::Null),
            _ => Value::Null,
        };
        (resp.status().as_u16(), v)
    }
}

fn ids(v: &Value) -> Vec<String> {
    v["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn catalog_filters_orders_and_pages_without_secrets() {
    let w = world(false).await;
    let (s, all) = w.call("GET", "/providers?limit=200", None).await;
    assert_eq!(s, 200);
    let all_ids = ids(&all);
    let mut sorted = all_ids.clone();
    sorted.sort();
    assert_eq!(all_ids, sorted, "stable id order");
    assert!(all_ids.contains(&"google".to_string()));
    let (_, crm) = w
        .call("GET", "/providers?category=communication", None)
        .await;
    assert!(ids(&crm).contains(&"slack".to_string()));
    assert!(!ids(&crm).contains(&"github".to_string()));
    let (_, keys) = w.call("GET", "/providers?auth_mode=api_key", None).await;
    assert!(
        ids(&keys).contains(&"stripe".to_string()) && !ids(&keys).contains(&"google".to_string())
    );
    let (_, keys) = w.call("GET", "/providers?auth_mode=signed_jwt", None).await;
    assert!(
        ids(&keys).contains(&"google-service-account".to_string())
            && !ids(&keys).contains(&"google".to_string())
    );
    let (_, q) = w.call("GET", "/providers?q=GITHUB", None).await;
    assert_eq!(ids(&q), ["github"]);
    // Pages follow the cursor and together give the whole list.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let uri = match &cursor {
            Some(c) => format!("/providers?limit=3&cursor={c}"),
            None => "/providers?limit=3".into(),
        };
        let (_, page) = w.call("GET", &uri, None).await;
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, all_ids);
    for bad in [
        "/providers?category=nope",
        "/providers?auth_mode=saml",
        "/providers?limit=0",
        "/providers?limit=9999",
    ] {
        assert_eq!(w.call("GET", bad, None).await.0, 400, "{bad}");
    }
    assert!(!all.to_string().contains("client_secret"));
}

#[tokio::test]
async fn provider_detail_has_what_a_setup_screen_needs() {
    let w = world(false).await;
    let (s, g) = w.call("GET", "/providers/google", None).await;
    assert_eq!(s, 200);
    assert_eq!(g["auth_mode"], "oauth2");
    assert_eq!(g["openid_connect"], true);
    assert!(
        g["default_scopes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == "openid")
    );
    let (_, demo) = w.call("GET", "/providers/demo", None).await;
    let field = &demo["config_fields"][0];
    assert_eq!(field["name"], "host");
    assert!(field["pattern"].as_str().unwrap().contains("localhost"));
    let (s, v) = w.call("GET", "/providers/nope", None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("unknown_provider"))
    );
}

async fn oauth_integration(w: &World, id: &str, host: &str) {
    let (s, v) = w
        .call(
            "POST",
            "/integrations",
            Some(json!({"id": id, "provider": "demo-oauth2", "client_id": "c1", "client_secret": "first-secret", "config": {"host": host}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
}

#[tokio::test]
async fn integrations_are_listed_updated_and_their_secret_rotated_without_exposure() {
    let w = world(true).await;
    oauth_integration(&w, "crm", "127.0.0.1:9300").await;
    oauth_integration(&w, "crm2", "127.0.0.1:9301").await;
    let (s, list) = w.call("GET", "/integrations", None).await;
    assert_eq!(s, 200);
    assert_eq!(list["integrations"].as_array().unwrap().len(), 2);
    assert!(!list.to_string().contains("first-secret"));

    let (s, v) = w
        .call(
            "PATCH",
            "/integrations/crm",
            Some(json!({"scopes": ["read", "write"], "enabled": false})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["scopes"], json!(["read", "write"]));
    assert_eq!(v["enabled"], false);
    for (body, why) in [
        (
            json!({"config": {"host": "evil.example.com"}}),
            "host outside the pattern",
        ),
        (json!({"config": {"subdomain": "x"}}), "undeclared field"),
        (json!({"scopes": ["has space"]}), "scope with the separator"),
        (
            json!({"client_secret": "nope"}),
            "secrets are rotated elsewhere",
        ),
    ] {
        assert_eq!(
            w.call("PATCH", "/integrations/crm", Some(body)).await.0,
            400,
            "{why}"
        );
    }
    assert_eq!(
        w.call(
            "PATCH",
            "/integrations/missing",
            Some(json!({"enabled": true}))
        )
        .await
        .0,
        404
    );

    let (s, v) = w
        .call(
            "PUT",
            "/integrations/crm/client-secret",
            Some(json!({"client_secret": "second-secret"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(!v.to_string().contains("second-secret"));
    let stored = w
        .vault
        .get_secret("broker/integrations/acme/crm")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.expose_secret(), "second-secret");
    assert_eq!(
        w.call(
            "PUT",
            "/integrations/crm/client-secret",
            Some(json!({"client_secret": ""}))
        )
        .await
        .0,
        400
    );
}

#[tokio::test]
async fn deleting_an_integration_with_connections_is_refused_unless_they_go_too() {
    let w = world(true).await;
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&provider)
        .await;
    oauth_integration(&w, "crm", &provider.address().to_string()).await;
    let conn = testkit::record::connection(json!({
        "id": "conn_1", "tenant_id": "acme", "integration_id": "crm",
        "provider": "demo-oauth2", "end_user_id": "u1",
        "secret_name": "broker/connections/acme/conn_1",
    }));
    let tokens = TokenSet {
        access_token: SecretString::from("at-1".to_string()),
        refresh_token: Some(SecretString::from("rt-1".to_string())),
        id_token: None,
        token_type: "Bearer".into(),
        scope: None,
        expires_at: None,
        obtained_at: NOW,
        supersedes: None,
    };
    w.vault.put_now(
        conn.secret_name(),
        Credentials::Oauth2(tokens)
            .to_secret()
            .unwrap()
            .expose_secret(),
    );
    w.store.seed_connection(&conn);

    let (s, v) = w.call("DELETE", "/integrations/crm", None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("in_use")));
    assert!(
        w.store
            .get_integration("acme", "crm")
            .await
            .unwrap()
            .is_some(),
        "nothing removed"
    );
    assert_eq!(
        w.call("DELETE", "/integrations/crm?connections=maybe", None)
            .await
            .0,
        400
    );

    let (s, v) = w
        .call("DELETE", "/integrations/crm?connections=delete", None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["connections_deleted"][0]["id"], "conn_1");
    assert_eq!(
        v["connections_deleted"][0]["revoked"],
        json!({"refresh_token": true, "access_token": true})
    );
    assert!(
        w.store
            .get_integration("acme", "crm")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        w.store
            .get_connection("acme", "conn_1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        w.vault.names().is_empty(),
        "client secret and token secret deleted: {:?}",
        w.vault.names()
    );
    assert_eq!(w.call("DELETE", "/integrations/crm", None).await.0, 404);
}

fn custom(token_url: &str) -> Value {
    json!({
        "display_name": "Acme CRM",
        "categories": ["crm"],
        "docs_url": "https://developer.acme.example/oauth",
        "auth_mode": "oauth2",
        "authorization_url": "https://{subdomain}.acme.example/oauth/authorize",
        "token_url": token_url,
        "default_scopes": ["contacts.read"],
        "config_fields": {"subdomain": {"pattern": "[a-z0-9][a-z0-9-]{0,30}", "description": "Your Acme subdomain", "example": "mycompany"}}
    })
}

#[tokio::test]
async fn custom_providers_use_the_registry_schema_and_validation() {
    let w = world(false).await;
    let (s, v) = w.call("POST", "/custom-providers", Some(json!({"id": "acme", "definition": custom("https://{subdomain}.acme.example/oauth/token")}))).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["id"], "custom:acme");
    assert_eq!(v["config_fields"][0]["name"], "subdomain");
    assert_eq!(
        w.call(
            "POST",
            "/custom-providers",
            Some(json!({"id": "acme", "definition": custom("https://{subdomain}.acme.example/t")}))
        )
        .await
        .0,
        409
    );

    for (url, why) in [
        ("http://{subdomain}.acme.example/oauth/token", "plain http"),
        ("https://10.0.0.8/oauth/token", "private address"),
        (
            "https://169.254.169.254/latest/meta-data",
            "metadata address",
        ),
        ("https://[fd00::1]/token", "unique-local IPv6"),
        ("https://localhost/token", "localhost"),
        (
            "https://127.0.0.1:8443/token",
            "loopback without the development allowance",
        ),
        (
            "https://{tenant}.acme.example/token",
            "undeclared placeholder",
        ),
        ("https://user@acme.example/token", "credentials in the URL"),
        (
            "https://[::a9fe:a9fe]/token",
            "IPv4-compatible metadata address",
        ),
        (
            "https://[::ffff:a9fe:a9fe]/token",
            "IPv4-mapped metadata address",
        ),
        (
            "https://[64:ff9b::a9fe:a9fe]/token",
            "NAT64 metadata address",
        ),
        ("https://[64:ff9b:1::a00:1]/token", "local-use NAT64"),
        ("https://[2002:a9fe:a9fe::]/token", "6to4 metadata address"),
        (
            "https://[2001:0:4136:e378:8000:63bf:5601:5601]/token",
            "Teredo",
        ),
        ("https://[2001:db8::1]/token", "IPv6 documentation"),
        ("https://192.0.2.10/token", "IPv4 documentation"),
        ("https://198.18.0.1/token", "benchmarking"),
        ("https://100.64.0.1/token", "carrier-grade NAT"),
    ] {
        let (s, v) = w
            .call(
                "POST",
                "/custom-providers",
                Some(json!({"id": "bad", "definition": custom(url)})),
            )
            .await;
        assert_eq!(s, 400, "{why}: {v}");
        assert_eq!(v["error"]["code"], "invalid_request", "{why}");
    }
    let mut unknown = custom("https://{subdomain}.acme.example/t");
    unknown["surprise"] = json!(1);
    assert_eq!(
        w.call(
            "POST",
            "/custom-providers",
            Some(json!({"id": "bad", "definition": unknown}))
        )
        .await
        .0,
        400
    );
    let mut bad_pattern = custom("https://{subdomain}.acme.example/t");
    bad_pattern["config_fields"]["subdomain"]["pattern"] = json!("(unclosed");
    assert_eq!(
        w.call(
            "POST",
            "/custom-providers",
            Some(json!({"id": "bad", "definition": bad_pattern}))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        w.call(
            "POST",
            "/custom-providers",
            Some(json!({"id": "Bad Id", "definition": custom("https://x.example/t")}))
        )
        .await
        .0,
        400
    );
    let huge = json!({"id": "big", "definition": {"display_name": "x".repeat(70_000)}});
    assert_eq!(w.call("POST", "/custom-providers", Some(huge)).await.0, 413);

    // Integrations use it as custom:<id>; a subdomain cannot move the host.
    let (s, v) = w
        .call("POST", "/integrations", Some(json!({"id": "acme-app", "provider": "custom:acme", "client_id": "c", "client_secret": "s", "config": {"subdomain": "mycompany"}})))
        .await;
    assert_eq!(s, 201, "{v}");
    for evil in ["evil.com/", "a.evil", "x@evil.com", "../x"] {
        let (s, _) = w
            .call("POST", "/integrations", Some(json!({"id": "acme-evil", "provider": "custom:acme", "client_id": "c", "client_secret": "s", "config": {"subdomain": evil}})))
            .await;
        assert_eq!(s, 400, "{evil}");
    }
    assert_eq!(w.call("POST", "/integrations", Some(json!({"id": "x", "provider": "custom:missing", "client_id": "c", "client_secret": "s"}))).await.0, 404);
    // Another tenant cannot see or use it.
    let other = domain::auth::mint("other", NOW);
    w.store.put_api_key(&other.record).await.unwrap();
    let w2 = World {
        key: other.key.expose_secret().to_string(),
        app: w.app.clone(),
        store: w.store.clone(),
        vault: w.vault.clone(),
    };
    assert_eq!(w2.call("GET", "/custom-providers/acme", None).await.0, 404);
    assert_eq!(w2.call("POST", "/integrations", Some(json!({"id": "steal", "provider": "custom:acme", "client_id": "c", "client_secret": "s", "config": {"subdomain": "a"}}))).await.0, 404);

    let (s, got) = w.call("GET", "/custom-providers/acme", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        got["definition"]["token_url"],
        "https://{subdomain}.acme.example/oauth/token"
    );
    assert_eq!(
        w.call("GET", "/custom-providers", None).await.1["custom_providers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (s, v) = w.call("DELETE", "/custom-providers/acme", None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("in_use")));
    assert_eq!(
        w.call("DELETE", "/integrations/acme-app", None).await.0,
        200
    );
    assert_eq!(
        w.call("DELETE", "/custom-providers/acme", None).await.0,
        200
    );
    assert_eq!(w.call("GET", "/custom-providers/acme", None).await.0, 404);
}

#[tokio::test]
async fn integration_config_cannot_point_a_template_at_a_private_address() {
    let w = world(false).await;
    let def = json!({
        "display_name": "Self-hosted thing",
        "categories": ["developer-tools"],
        "docs_url": "https://docs.thing.example",
        "auth_mode": "oauth2",
        "authorization_url": "https://{hostname}/oauth/authorize",
        "token_url": "https://{hostname}/oauth/token",
        "config_fields": {"hostname": {"pattern": "[a-z0-9.-]{1,253}", "description": "host", "example": "thing.example.com"}}
    });
    assert_eq!(
        w.call(
            "POST",
            "/custom-providers",
            Some(json!({"id": "thing", "definition": def}))
        )
        .await
        .0,
        201
    );
    for host in ["127.0.0.1", "10.1.2.3", "169.254.169.254", "localhost"] {
        let (s, v) = w
            .call("POST", "/integrations", Some(json!({"id": "t", "provider": "custom:thing", "client_id": "c", "client_secret": "s", "config": {"hostname": host}})))
            .await;
        assert_eq!(s, 400, "{host}: {v}");
    }
    assert_eq!(
        w.call("POST", "/integrations", Some(json!({"id": "t", "provider": "custom:thing", "client_id": "c", "client_secret": "s", "config": {"hostname": "thing.acme.example"}}))).await.0,
        201
    );
}

/// Every route the table gives the API function reaches a handler: none is
/// answered 405 (routed, not served) or 500 (the dispatcher's fallthrough).
#[tokio::test]
async fn every_api_route_of_the_route_table_is_served() {
    let w = world(false).await;
    let api_routes: Vec<_> = web::routes::ROUTES
        .iter()
        .filter(|r| r.function == "api")
        .collect();
    assert!(api_routes.len() >= 30);
    for r in api_routes {
        let path = r
            .path
            .split('/')
            .map(|s| if s.starts_with('{') { "x1" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        let (status, body) = w.call(r.method, &path, Some(json!({}))).await;
        assert!(
            status != 405 && status != 500,
            "{} {path}: {status} {body}",
            r.method
        );
    }
}

/// A definition that does not parse is refused at the caller's own JSON
/// path, never at a line and column of the broker's re-encoding.
#[tokio::test]
async fn a_custom_definition_is_refused_at_the_callers_json_path() {
    let w = world(false).await;
    let mut def = custom("https://{subdomain}.acme.example/oauth/token");
    def["token_url"] = json!(5);
    let (s, v) = w
        .call(
            "POST",
            "/custom-providers",
            Some(json!({"id": "acme", "definition": def})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("definition.token_url: invalid type"),
        "{message}"
    );
    assert!(!message.contains("line 1 column"), "{message}");
    let mut def = custom("https://{subdomain}.acme.example/oauth/token");
    def["config_fields"]["subdomain"]["end_user"] = json!("yes");
    let (_, v) = w
        .call(
            "POST",
            "/custom-providers",
            Some(json!({"id": "acme", "definition": def})),
        )
        .await;
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("definition.config_fields.subdomain.end_user:"),
        "{message}"
    );
}

/// A tenant's own provider is listed to nobody else: it needs no
/// categories and no docs URL (a registry entry still does).
#[tokio::test]
async fn a_private_provider_needs_no_catalog_fields() {
    let w = world(true).await;
    let def = json!({
        "display_name": "Our internal API",
        "auth_mode": "oauth2",
        "authorization_url": "http://127.0.0.1:8080/authorize",
        "token_url": "http://127.0.0.1:8080/token",
    });
    let (s, v) = w
        .call(
            "POST",
            "/custom-providers",
            Some(json!({"id": "internal", "definition": def})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert!(v.get("docs_url").is_none(), "{v}");
    assert_eq!(v["categories"], json!([]));
    let mut bad = def.clone();
    bad["docs_url"] = json!("ftp://docs.example");
    let (s, v) = w
        .call(
            "POST",
            "/custom-providers",
            Some(json!({"id": "internal2", "definition": bad})),
        )
        .await;
    assert_eq!(s, 400, "a docs URL that is given is still checked: {v}");
}

/// `POST /provider-discovery`: the server's published metadata, mapped
/// field by field into a definition that registers as shown.
#[tokio::test]
async fn a_definition_is_imported_from_discovery_and_registers_as_shown() {
    let w = world(true).await;
    let server = MockServer::start().await;
    let issuer = format!("http://{}", server.address());
    Mock::given(method("GET"))
        .and(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/.well-known/oauth-authorization-server"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/o/authorize/"),
            "token_endpoint": format!("{issuer}/o/token/"),
            "revocation_endpoint": format!("{issuer}/o/revoke_token/"),
            "code_challenge_methods_supported": ["plain", "S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "authorization_response_iss_parameter_supported": true,
            "scopes_supported": ["read", "write"],
        })))
        .mount(&server)
        .await;
    let (s, v) = w
        .call("POST", "/provider-discovery", Some(json!({"url": issuer})))
        .await;
    assert_eq!(s, 200, "{v}");
    let d = &v["definition"];
    assert_eq!(
        v["source"],
        format!("{issuer}/.well-known/oauth-authorization-server")
    );
    assert_eq!(d["authorization_url"], format!("{issuer}/o/authorize/"));
    assert_eq!(d["token_url"], format!("{issuer}/o/token/"));
    assert_eq!(d["revocation_url"], format!("{issuer}/o/revoke_token/"));
    assert_eq!(d["pkce"], true);
    assert_eq!(d["client_auth"], "basic");
    assert_eq!(d["authorization_response_iss"], true);
    assert!(d.get("oidc").is_none(), "no OpenID Connect: {d}");
    assert!(
        v["mapped"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["metadata"] == "token_endpoint" && m["definition"] == "token_url")
    );
    assert!(!v["review"].as_array().unwrap().is_empty());
    let (s, r) = w
        .call(
            "POST",
            "/custom-providers",
            Some(json!({"id": "dot", "definition": d})),
        )
        .await;
    assert_eq!(s, 201, "it registers as shown: {r}");
    // Metadata naming another issuer (a mix-up) is refused.
    let other = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "issuer": "https://idp.example.com",
            "authorization_endpoint": "https://idp.example.com/a",
            "token_endpoint": "https://idp.example.com/t",
        })))
        .mount(&other)
        .await;
    let (s, v) = w
        .call(
            "POST",
            "/provider-discovery",
            Some(json!({"url": format!("http://{}", other.address())})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("issuer"),
        "{v}"
    );
    // Without the loopback allowance, the guard refuses the address first.
    let strict = world(false).await;
    let (s, v) = strict
        .call(
            "POST",
            "/provider-discovery",
            Some(json!({"url": "https://169.254.169.254/"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "{v}"
    );
}
