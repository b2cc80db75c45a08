//! Every route, called end to end (the functions under `cargo lambda
//! watch`, the real oidc-provider, moto behind the template's IAM), answers
//! as `shared/web/openapi.json` documents it: a documented status, the
//! documented content type, a body valid against the documented schema.
//! The test fails unless it covered every documented operation.

use integration_tests::openapi::OpenApi;
use integration_tests::{APP_ORIGIN, Browser, Stack, ledger};
use reqwest::Method;
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn every_documented_route_answers_as_documented() {
    let api = OpenApi::load();
    let stack = Stack::from_env().await;
    let tenant = stack.create_tenant().await;
    let http = &stack.http;
    let authed = |m: Method, p: &str| stack.api(&tenant, m, p);
    let get = |m: &'static str, p: &'static str, req| api.send(m, p, req);

    // The document itself, without a key.
    let (s, body) = get("GET", "/openapi.json", http.get(stack.url("/openapi.json"))).await;
    assert_eq!(s, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), api.doc);

    // The catalog.
    assert_eq!(
        get(
            "GET",
            "/providers",
            authed(Method::GET, "/providers?limit=3")
        )
        .await
        .0,
        200
    );
    assert_eq!(
        get(
            "GET",
            "/providers",
            authed(Method::GET, "/providers?category=nope")
        )
        .await
        .0,
        400
    );
    assert_eq!(
        get("GET", "/providers", http.get(stack.url("/providers")))
            .await
            .0,
        401
    );
    assert_eq!(
        get(
            "GET",
            "/providers/{id}",
            authed(Method::GET, "/providers/google")
        )
        .await
        .0,
        200
    );
    assert_eq!(
        get(
            "GET",
            "/providers/{id}",
            authed(Method::GET, "/providers/nope")
        )
        .await
        .0,
        404
    );

    // Integrations.
    let client = stack.register_client("conf").await;
    let host = format!(
        "{}:{}",
        stack.issuer.host_str().unwrap(),
        stack.issuer.port().unwrap()
    );
    let new = json!({"id": "conf", "provider": "demo", "client_id": client.client_id,
                     "client_secret": client.client_secret, "config": {"host": host}});
    let post_integration = || authed(Method::POST, "/integrations").json(&new);
    assert_eq!(
        get("POST", "/integrations", post_integration()).await.0,
        201
    );
    assert_eq!(
        get("POST", "/integrations", post_integration()).await.0,
        409
    );
    let bad =
        authed(Method::POST, "/integrations").json(&json!({"id": "Bad Id", "provider": "demo"}));
    assert_eq!(get("POST", "/integrations", bad).await.0, 400);
    assert_eq!(
        get("GET", "/integrations", authed(Method::GET, "/integrations"))
            .await
            .0,
        200
    );
    assert_eq!(
        get(
            "GET",
            "/integrations/{id}",
            authed(Method::GET, "/integrations/conf")
        )
        .await
        .0,
        200
    );
    assert_eq!(
        get(
            "GET",
            "/integrations/{id}",
            authed(Method::GET, "/integrations/nope")
        )
        .await
        .0,
        404
    );
    let patch = authed(Method::PATCH, "/integrations/conf")
        .json(&json!({"scopes": ["openid", "offline_access"]}));
    assert_eq!(get("PATCH", "/integrations/{id}", patch).await.0, 200);
    let rotate = authed(Method::PUT, "/integrations/conf/client-secret")
        .json(&json!({"client_secret": client.client_secret}));
    assert_eq!(
        get("PUT", "/integrations/{id}/client-secret", rotate)
            .await
            .0,
        200
    );

    // Provider webhooks in: the secret, a signed and an unsigned webhook
    // (the demo provider signs sha256= hex of "{timestamp}.{body}").
    let wh_secret = "conf-provider-webhook-secret";
    ledger(wh_secret);
    let set = authed(Method::PUT, "/integrations/conf/webhook-secret")
        .json(&json!({"secret": wh_secret}));
    assert_eq!(
        get("PUT", "/integrations/{id}/webhook-secret", set).await.0,
        200
    );
    let hook_url = stack.url(&format!("/webhooks/{}/conf", tenant.id));
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let hook_body = r#"{"type":"ping","account":"nobody"}"#;
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, wh_secret.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, format!("{ts}.{hook_body}").as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let signed_hook = http
        .post(&hook_url)
        .header("content-type", "application/json")
        .header("x-demo-signature", format!("sha256={hex}"))
        .header("x-demo-timestamp", ts.to_string())
        .header("x-demo-delivery", "conf-ping-1")
        .body(hook_body);
    assert_eq!(
        get("POST", "/webhooks/{tenant}/{integration}", signed_hook)
            .await
            .0,
        200
    );
    let unsigned_hook = http
        .post(&hook_url)
        .header("content-type", "application/json")
        .body(hook_body);
    assert_eq!(
        get("POST", "/webhooks/{tenant}/{integration}", unsigned_hook)
            .await
            .0,
        401
    );
    let remove = authed(Method::DELETE, "/integrations/conf/webhook-secret");
    assert_eq!(
        get("DELETE", "/integrations/{id}/webhook-secret", remove)
            .await
            .0,
        200
    );

    // A definition imported from the real server's metadata.
    let discover = authed(Method::POST, "/provider-discovery")
        .json(&json!({"url": stack.issuer.as_str().trim_end_matches('/')}));
    assert_eq!(get("POST", "/provider-discovery", discover).await.0, 200);

    // Custom providers.
    let definition = json!({"display_name": "Conf", "categories": ["crm"], "docs_url": "https://conf.example.com",
        "auth_mode": "oauth2", "authorization_url": "https://conf.example.com/auth", "token_url": "https://conf.example.com/token"});
    let create = authed(Method::POST, "/custom-providers")
        .json(&json!({"id": "conf", "definition": definition}));
    assert_eq!(get("POST", "/custom-providers", create).await.0, 201);
    assert_eq!(
        get(
            "GET",
            "/custom-providers",
            authed(Method::GET, "/custom-providers")
        )
        .await
        .0,
        200
    );
    assert_eq!(
        get(
            "GET",
            "/custom-providers/{id}",
            authed(Method::GET, "/custom-providers/conf")
        )
        .await
        .0,
        200
    );
    assert_eq!(
        get(
            "DELETE",
            "/custom-providers/{id}",
            authed(Method::DELETE, "/custom-providers/conf")
        )
        .await
        .0,
        200
    );
    assert_eq!(
        get(
            "DELETE",
            "/custom-providers/{id}",
            authed(Method::DELETE, "/custom-providers/conf")
        )
        .await
        .0,
        404
    );

    // An API-key connection, checked at a local fake of the provider.
    let fake = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/whoami"))
        .and(header("authorization", "Bearer good-key"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&fake)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/whoami"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&fake)
        .await;
    // Its API, for the proxy: any method under /api with the good key.
    Mock::given(path_regex("^/api(/.*)?$"))
        .and(header("authorization", "Bearer good-key"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"proxied": true})))
        .mount(&fake)
        .await;
    let keyed = authed(Method::POST, "/integrations")
        .json(&json!({"id": "keys", "provider": "demo-api-key", "config": {"host": fake.address().to_string()}}));
    assert_eq!(get("POST", "/integrations", keyed).await.0, 201);
    // Sessions and the browser routes.
    let session = |end_user: &str| {
        authed(Method::POST, "/connect-sessions")
            .json(&json!({"end_user_id": end_user, "integrations": ["conf"], "origin": APP_ORIGIN}))
    };
    let (s, body) = get("POST", "/connect-sessions", session("user-1")).await;
    assert_eq!(s, 201);
    let token = serde_json::from_str::<Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    ledger(&token);
    let bad = authed(Method::POST, "/connect-sessions")
        .json(&json!({"end_user_id": "u", "integrations": [], "origin": APP_ORIGIN}));
    assert_eq!(get("POST", "/connect-sessions", bad).await.0, 400);
    let status = |t: &str| {
        http.post(stack.url("/oauth/status"))
            .form(&[("session", t)])
    };
    assert_eq!(get("POST", "/oauth/status", status(&token)).await.0, 200);
    assert_eq!(get("POST", "/oauth/status", status("cs_nope")).await.0, 401);
    let broker = stack.broker.origin().ascii_serialization();
    assert_eq!(
        get(
            "GET",
            "/oauth/{integration}/authorize",
            http.get(stack.url("/oauth/conf/authorize"))
        )
        .await
        .0,
        403
    );
    let foreign = http
        .post(stack.url("/oauth/conf/authorize"))
        .header("origin", "https://evil.example")
        .form(&[("session", token.as_str())]);
    assert_eq!(
        get("POST", "/oauth/{integration}/authorize", foreign)
            .await
            .0,
        403
    );
    assert_eq!(
        get(
            "GET",
            "/oauth/{integration}/connect",
            http.get(stack.url("/oauth/conf/connect"))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        get(
            "GET",
            "/oauth/{integration}/callback",
            http.get(stack.url("/oauth/conf/callback"))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        get(
            "GET",
            "/connect",
            http.get(stack.url("/connect?integration=conf"))
        )
        .await
        .0,
        200
    );
    let redirect = http
        .post(stack.url("/connect"))
        .header("origin", "https://evil.example")
        .form(&[("session", token.as_str())]);
    assert_eq!(get("POST", "/connect", redirect).await.0, 403);
    let page_call = |p: &str, body: Value| {
        http.post(stack.url(p))
            .header("origin", &broker)
            .json(&body)
    };
    let (s, body) = get(
        "POST",
        "/connect/session",
        page_call(
            "/connect/session",
            json!({"session": token, "origin": APP_ORIGIN}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let (s, _) = get(
        "POST",
        "/connect/session",
        page_call(
            "/connect/session",
            json!({"session": token, "origin": "https://evil.example"}),
        ),
    )
    .await;
    assert_eq!(s, 403);
    let key =
        json!({"session": token, "origin": APP_ORIGIN, "integration": "conf", "api_key": "k"});
    let (s, body) = get(
        "POST",
        "/connect/api-key",
        page_call("/connect/api-key", key),
    )
    .await;
    assert_eq!(s, 400, "an OAuth integration takes no key: {body}");
    // From the page, for an API-key integration: checked, then stored.
    let (s, body) = get(
        "POST",
        "/connect-sessions",
        authed(Method::POST, "/connect-sessions").json(
            &json!({"end_user_id": "user-2", "integrations": ["keys"], "origin": APP_ORIGIN,
                      "return_to": format!("{APP_ORIGIN}/back")}),
        ),
    )
    .await;
    assert_eq!(s, 201);
    let keys_token = serde_json::from_str::<Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    ledger(&keys_token);
    let from_app = http
        .post(stack.url("/connect"))
        .header("origin", APP_ORIGIN)
        .form(&[("session", keys_token.as_str())]);
    assert_eq!(
        get("POST", "/connect", from_app).await.0,
        200,
        "redirect mode"
    );
    let key_from_page = json!({"session": keys_token, "origin": APP_ORIGIN, "integration": "keys", "api_key": "good-key"});
    let (s, body) = get(
        "POST",
        "/connect/api-key",
        page_call("/connect/api-key", key_from_page.clone()),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(
        get(
            "POST",
            "/connect/api-key",
            page_call("/connect/api-key", key_from_page)
        )
        .await
        .0,
        409
    );

    // A connection through the real popup flow, then its routes.
    let authorize = stack.url(&format!("/oauth/conf/authorize?session={token}"));
    let browser = Browser::new();
    let cb = browser
        .sign_in_at_provider(
            &authorize,
            "alice",
            true,
            &stack.url("/oauth/conf/callback"),
        )
        .await;
    for (k, v) in cb.query_pairs() {
        if k == "code" || k == "state" {
            ledger(&v);
        }
    }
    let page = browser.get(cb.as_str()).await;
    api.check(
        "GET",
        "/oauth/{integration}/callback",
        page.status,
        page.header("content-type").unwrap_or(""),
        &page.body,
    );
    assert_eq!(page.status, 200, "{}", page.body);
    let (s, body) = get("POST", "/oauth/status", status(&token)).await;
    assert_eq!(s, 200);
    let id = serde_json::from_str::<Value>(&body).unwrap()["connection_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        get(
            "GET",
            "/connections",
            authed(Method::GET, "/connections?limit=5")
        )
        .await
        .0,
        200
    );
    assert_eq!(
        get(
            "GET",
            "/connections",
            authed(Method::GET, "/connections?limit=0")
        )
        .await
        .0,
        400
    );
    assert_eq!(
        get(
            "GET",
            "/connections/{id}",
            authed(Method::GET, &format!("/connections/{id}"))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        get(
            "GET",
            "/connections/{id}",
            authed(Method::GET, "/connections/conn_none")
        )
        .await
        .0,
        404
    );
    let (s, body) = get(
        "GET",
        "/connections/{id}/token",
        authed(Method::GET, &format!("/connections/{id}/token")),
    )
    .await;
    assert_eq!(s, 200);
    ledger(
        serde_json::from_str::<Value>(&body).unwrap()["access_token"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(
        get(
            "GET",
            "/connections/{id}/token",
            authed(Method::GET, &format!("/connections/{id}/token?min_ttl=x"))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        get(
            "POST",
            "/connections/{id}/test",
            authed(Method::POST, &format!("/connections/{id}/test"))
        )
        .await
        .0,
        200
    );
    // Health and analytics.
    assert_eq!(
        get(
            "GET",
            "/connections/{id}/health",
            authed(Method::GET, &format!("/connections/{id}/health"))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        get(
            "GET",
            "/connections/{id}/health",
            authed(Method::GET, &format!("/connections/{id}/health?days=0"))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        get(
            "GET",
            "/integrations/{id}/stats",
            authed(Method::GET, "/integrations/conf/stats")
        )
        .await
        .0,
        200
    );
    assert_eq!(
        get(
            "GET",
            "/integrations/{id}/stats",
            authed(Method::GET, "/integrations/conf/stats?from=2026-02-31")
        )
        .await
        .0,
        400
    );
    assert_eq!(
        get(
            "GET",
            "/integrations/{id}/stats",
            authed(Method::GET, "/integrations/nope/stats")
        )
        .await
        .0,
        404
    );

    // The activity log, webhook endpoints and a redelivery.
    let (s, body) = get(
        "GET",
        "/connections/{id}/events",
        authed(Method::GET, &format!("/connections/{id}/events?limit=5")),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let events: Value = serde_json::from_str(&body).unwrap();
    let created = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "connection.created")
        .expect("connection.created in the log")["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        get(
            "GET",
            "/connections/{id}/events",
            authed(Method::GET, &format!("/connections/{id}/events?limit=0"))
        )
        .await
        .0,
        400
    );
    let receiver = std::env::var("WEBHOOK_RECEIVER_URL").expect("WEBHOOK_RECEIVER_URL");
    let (s, body) = get(
        "POST",
        "/webhook-endpoints",
        authed(Method::POST, "/webhook-endpoints")
            .json(&json!({"url": format!("{receiver}/hooks/openapi"), "description": "doc"})),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let hook: Value = serde_json::from_str(&body).unwrap();
    ledger(hook["secret"].as_str().unwrap());
    let hook_id = hook["id"].as_str().unwrap().to_string();
    assert_eq!(
        get(
            "POST",
            "/webhook-endpoints",
            authed(Method::POST, "/webhook-endpoints").json(&json!({"url": "http://example.com/"}))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        get(
            "GET",
            "/webhook-endpoints",
            authed(Method::GET, "/webhook-endpoints")
        )
        .await
        .0,
        200
    );
    let one = format!("/webhook-endpoints/{hook_id}");
    assert_eq!(
        get("GET", "/webhook-endpoints/{id}", authed(Method::GET, &one))
            .await
            .0,
        200
    );
    assert_eq!(
        get(
            "GET",
            "/webhook-endpoints/{id}",
            authed(Method::GET, "/webhook-endpoints/we_0000000000000000")
        )
        .await
        .0,
        404
    );
    assert_eq!(
        get(
            "PATCH",
            "/webhook-endpoints/{id}",
            authed(Method::PATCH, &one).json(&json!({"event_types": ["connection.deleted"]}))
        )
        .await
        .0,
        200
    );
    let (s, body) = get(
        "POST",
        "/webhook-endpoints/{id}/rotate-secret",
        authed(Method::POST, &format!("{one}/rotate-secret")).json(&json!({"overlap_seconds": 60})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    ledger(
        serde_json::from_str::<Value>(&body).unwrap()["secret"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(
        get(
            "POST",
            "/connections/{id}/events/{event}/redeliver",
            authed(
                Method::POST,
                &format!("/connections/{id}/events/{created}/redeliver")
            )
        )
        .await
        .0,
        202
    );
    assert_eq!(
        get(
            "POST",
            "/connections/{id}/events/{event}/redeliver",
            authed(
                Method::POST,
                &format!("/connections/{id}/events/evt_none/redeliver")
            )
        )
        .await
        .0,
        404
    );
    assert_eq!(
        get(
            "DELETE",
            "/webhook-endpoints/{id}",
            authed(Method::DELETE, &one)
        )
        .await
        .0,
        200
    );
    assert_eq!(
        get(
            "DELETE",
            "/connections/{id}",
            authed(Method::DELETE, &format!("/connections/{id}"))
        )
        .await
        .0,
        200
    );

    let key = |k: &str| {
        authed(Method::POST, "/connections")
            .json(&json!({"integration_id": "keys", "end_user_id": "user-1", "api_key": k}))
    };
    assert_eq!(get("POST", "/connections", key("bad-key")).await.0, 400);
    let (s, body) = get("POST", "/connections", key("good-key")).await;
    assert_eq!(s, 201, "{body}");
    // The proxy, every documented method, on its base and on a path.
    let proxied = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (m, name) in [
        (Method::GET, "GET"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::PATCH, "PATCH"),
        (Method::DELETE, "DELETE"),
    ] {
        let base = authed(m.clone(), &format!("/proxy/{proxied}"));
        assert_eq!(get(name, "/proxy/{id}", base).await.0, 200);
        let deep = authed(m, &format!("/proxy/{proxied}/items/1")).body("{}");
        assert_eq!(get(name, "/proxy/{id}/{path}", deep).await.0, 200);
    }
    let del = authed(Method::DELETE, "/integrations/keys?connections=delete");
    assert_eq!(get("DELETE", "/integrations/{id}", del).await.0, 200);
    assert_eq!(
        get(
            "DELETE",
            "/integrations/{id}",
            authed(Method::DELETE, "/integrations/conf")
        )
        .await
        .0,
        200
    );

    let missing: Vec<_> = api
        .operations()
        .difference(&api.covered())
        .cloned()
        .collect();
    assert!(missing.is_empty(), "not exercised: {missing:?}");
}
