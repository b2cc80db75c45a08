//! End to end over HTTP: the functions served by `cargo lambda watch`, the
//! real `oidc-provider`, moto's DynamoDB and Secrets Manager. Each test has
//! its own tenant and its own provider client, so counts and writes are its
//! own.

use integration_tests::{Browser, ProviderClient, Stack, Tenant, ledger};
use reqwest::Method;
use serde_json::{Value, json};

const ORIGIN: &str = "http://localhost:9299";

struct Fixture {
    stack: Stack,
    tenant: Tenant,
    client: ProviderClient,
    integration: String,
}

async fn fixture() -> Fixture {
    let stack = Stack::from_env().await;
    let tenant = stack.create_tenant().await;
    let integration = "demo-crm".to_string();
    let client = stack.register_client(&integration).await;
    stack
        .create_integration(&tenant, &integration, &client)
        .await;
    Fixture {
        stack,
        tenant,
        client,
        integration,
    }
}

impl Fixture {
    fn callback_prefix(&self) -> String {
        self.stack
            .url(&format!("/oauth/{}/callback", self.integration))
    }

    async fn authorize_url(&self, end_user: &str) -> String {
        let token = self
            .stack
            .connect_session(&self.tenant, end_user, &[&self.integration], ORIGIN)
            .await;
        self.stack.url(&format!(
            "/oauth/{}/authorize?session={token}",
            self.integration
        ))
    }

    /// Runs the popup flow up to the provider's redirect to the callback.
    async fn until_callback(&self, browser: &Browser, end_user: &str, consent: bool) -> url::Url {
        let url = self.authorize_url(end_user).await;
        let cb = browser
            .sign_in_at_provider(&url, "alice", consent, &self.callback_prefix())
            .await;
        for (k, v) in cb.query_pairs() {
            if k == "code" || k == "state" {
                ledger(&v);
            }
        }
        cb
    }

    async fn assert_nothing_written(&self) {
        assert!(
            self.stack.connection_items(&self.tenant).await.is_empty(),
            "a connection record was written"
        );
        assert!(
            self.stack.connection_secrets(&self.tenant).await.is_empty(),
            "a connection secret was written"
        );
    }
}

fn with_param(url: &url::Url, name: &str, value: &str) -> String {
    let mut u = url.clone();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    u.query_pairs_mut()
        .clear()
        .extend_pairs(pairs)
        .append_pair(name, value);
    u.to_string()
}

#[tokio::test]
async fn popup_flow_connects_account_and_stores_tokens_then_record() {
    let f = fixture().await;
    let browser = Browser::new();
    let authorize = f.authorize_url("user-1").await;

    // authorize: 303 to the provider with S256 and a binding cookie scoped to the callback.
    let first = browser.start_connect(&authorize).await;
    assert_eq!(first.status, 303);
    let to_provider = first.location.clone().unwrap();
    assert!(
        to_provider
            .as_str()
            .starts_with(f.stack.issuer.join("auth").unwrap().as_str())
    );
    let q: std::collections::HashMap<_, _> = to_provider.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["client_id"], f.client.client_id);
    assert_eq!(q["redirect_uri"], f.callback_prefix());
    assert!(q["state"].len() >= 43, "state carries >= 256 bits");
    assert!(q.contains_key("nonce"));
    let cookie = first.header("set-cookie").unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains(&format!("Path=/oauth/{}/callback", f.integration)),
        "{cookie}"
    );

    let callback = browser
        .sign_in_at_provider(to_provider.as_str(), "alice", true, &f.callback_prefix())
        .await;
    assert_eq!(
        callback.query_pairs().find(|(k, _)| k == "iss").unwrap().1,
        f.stack.issuer.as_str().trim_end_matches('/')
    );
    let page = browser.get(callback.as_str()).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .starts_with("default-src 'none'")
    );
    assert_eq!(page.post_origin().as_deref(), Some(ORIGIN));
    let msg = page.posted_message().unwrap();
    assert_eq!(msg["status"], "connected");
    assert_eq!(
        msg.as_object().unwrap().len(),
        3,
        "only type, status and connection_id: {msg}"
    );
    let connection_id = msg["connection_id"].as_str().unwrap().to_string();
    assert!(
        !page.body.contains(
            callback
                .query_pairs()
                .find(|(k, _)| k == "code")
                .unwrap()
                .1
                .as_ref()
        )
    );

    assert_eq!(f.stack.token_requests(&f.client.client_id).await, 1);

    // The token set is in Secrets Manager, under the prefix: the secret of
    // this connect (its generation), which the record names.
    let secret_name = f
        .stack
        .connection_secret_name(&f.tenant, &connection_id)
        .await;
    assert!(secret_name.starts_with(&format!(
        "{}connections/{}/{}/",
        f.stack.secret_prefix, f.tenant.id, connection_id
    )));
    let tokens = f.stack.secret_json(&secret_name).await;
    for k in ["access_token", "refresh_token", "id_token"] {
        let v = tokens[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k} missing in secret"));
        ledger(v);
    }
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(tokens["expires_at"].as_i64().unwrap() > tokens["obtained_at"].as_i64().unwrap());
    assert!(!page.body.contains(tokens["access_token"].as_str().unwrap()));

    // The record is in DynamoDB and the API shows it without secrets.
    let items = f.stack.connection_items(&f.tenant).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["secret_name"].as_s().unwrap(), &secret_name);
    let resp = f
        .stack
        .api(
            &f.tenant,
            Method::GET,
            &format!("/connections/{connection_id}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let view: Value = resp.json().await.unwrap();
    assert_eq!(view["status"], "active");
    assert_eq!(view["provider_account_id"], "alice");
    assert_eq!(view["end_user_id"], "user-1");
    assert_eq!(view["integration_id"], f.integration.as_str());
    assert!(
        view.get("secret_name").is_none()
            && !view
                .to_string()
                .contains(tokens["access_token"].as_str().unwrap())
    );
    let scopes: Vec<&str> = view["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        scopes.contains(&"openid") && scopes.contains(&"offline_access"),
        "{scopes:?}"
    );
}

#[tokio::test]
async fn replayed_callback_is_rejected_without_a_second_exchange() {
    let f = fixture().await;
    let browser = Browser::new();
    let cb = f.until_callback(&browser, "user-2", true).await;
    let first = browser.get(cb.as_str()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    // The page cleared the binding cookie, so the same browser cannot even present it again.
    let replay = browser.get(cb.as_str()).await;
    assert_eq!(replay.status, 400);
    let code = replay.posted_message().unwrap()["error"].clone();
    assert!(
        code == "missing_binding_cookie" || code == "invalid_state",
        "{code}"
    );
    assert_eq!(f.stack.token_requests(&f.client.client_id).await, 1);
    assert_eq!(f.stack.connection_items(&f.tenant).await.len(), 1);
}

#[tokio::test]
async fn replayed_state_with_its_cookie_never_reaches_the_token_endpoint() {
    let f = fixture().await;
    let browser = Browser::new();
    let authorize = f.authorize_url("user-3").await;
    let first = browser.start_connect(&authorize).await;
    let cookie = first
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    ledger(cookie.split_once('=').unwrap().1);
    let cb = browser
        .sign_in_at_provider(
            first.location.unwrap().as_str(),
            "alice",
            true,
            &f.callback_prefix(),
        )
        .await;
    for (k, v) in cb.query_pairs() {
        if k == "code" || k == "state" {
            ledger(&v);
        }
    }
    assert_eq!(browser.get(cb.as_str()).await.status, 200);
    // Attacker replays the exact request, cookie included.
    let resp = f
        .stack
        .http
        .get(cb.as_str())
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains(r#""error":"invalid_state""#)
    );
    assert_eq!(f.stack.token_requests(&f.client.client_id).await, 1);
}

#[tokio::test]
async fn callback_with_wrong_issuer_is_refused_and_writes_nothing() {
    let f = fixture().await;
    let browser = Browser::new();
    let cb = f.until_callback(&browser, "user-4", true).await;
    let page = browser
        .get(&with_param(&cb, "iss", "http://evil.example"))
        .await;
    assert_eq!(page.status, 400);
    assert_eq!(page.posted_message().unwrap()["error"], "issuer_mismatch");
    assert_eq!(page.post_origin().as_deref(), Some(ORIGIN));
    // The real server always names itself: a response without `iss` is
    // refused as such, not as a wrong issuer.
    let cb = f.until_callback(&browser, "user-4b", true).await;
    let stripped = {
        let mut u = cb.clone();
        let kept: Vec<(String, String)> = cb
            .query_pairs()
            .filter(|(k, _)| k != "iss")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        u.query_pairs_mut().clear().extend_pairs(kept);
        u
    };
    let page = browser.get(stripped.as_str()).await;
    assert_eq!(page.posted_message().unwrap()["error"], "issuer_missing");
    assert_eq!(f.stack.token_requests(&f.client.client_id).await, 0);
    f.assert_nothing_written().await;
}

#[tokio::test]
async fn denied_consent_reports_access_denied_and_writes_nothing() {
    let f = fixture().await;
    let browser = Browser::new();
    let cb = f.until_callback(&browser, "user-5", false).await;
    assert!(
        cb.query_pairs()
            .any(|(k, v)| k == "error" && v == "access_denied")
    );
    let page = browser.get(cb.as_str()).await;
    assert_eq!(page.status, 403);
    assert_eq!(
        page.posted_message().unwrap(),
        json!({"type": "oauth-broker:result", "status": "error", "error": "access_denied"})
    );
    assert_eq!(f.stack.token_requests(&f.client.client_id).await, 0);
    f.assert_nothing_written().await;
}

/// "Paste the URL" consent phishing: Mallory starts a flow of his own and
/// lures the victim to sign in at the provider with its URL. The victim's
/// browser lands on the callback without Mallory's binding cookie; that
/// refusal ends the flow, so Mallory replaying the victim's callback URL
/// (code and state) with his own cookie attaches nothing to his end user,
/// and the code is never redeemed.
#[tokio::test]
async fn a_leaked_callback_url_replayed_with_the_starters_cookie_finishes_nothing() {
    let f = fixture().await;
    let mallory = Browser::new();
    let started = mallory
        .start_connect(&f.authorize_url("user-6").await)
        .await;
    assert_eq!(started.status, 303, "{}", started.body);
    let provider_url = started.location.clone().unwrap();
    let victim = Browser::new();
    let cb = victim
        .sign_in_at_provider(provider_url.as_str(), "alice", true, &f.callback_prefix())
        .await;
    for (k, v) in cb.query_pairs() {
        if k == "code" || k == "state" {
            ledger(&v);
        }
    }
    let page = victim.get(cb.as_str()).await;
    assert_eq!(page.status, 400);
    assert_eq!(
        page.posted_message().unwrap()["error"],
        "missing_binding_cookie"
    );
    assert_eq!(
        page.post_origin().as_deref(),
        Some(""),
        "this browser did not start the flow: nothing is posted"
    );
    let replay = mallory.get(cb.as_str()).await;
    assert_eq!(replay.status, 400);
    assert_eq!(replay.posted_message().unwrap()["error"], "invalid_state");
    assert_eq!(f.stack.token_requests(&f.client.client_id).await, 0);
    f.assert_nothing_written().await;
}

#[tokio::test]
async fn concurrent_callbacks_with_one_state_make_one_exchange() {
    let f = fixture().await;
    let browser = Browser::new();
    let cb = f.until_callback(&browser, "user-7", true).await;
    let twin = browser.same_cookies();
    let (a, b) = tokio::join!(browser.get(cb.as_str()), twin.get(cb.as_str()));
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 400], "exactly one callback wins");
    assert_eq!(f.stack.token_requests(&f.client.client_id).await, 1);
    assert_eq!(f.stack.connection_items(&f.tenant).await.len(), 1);
}

#[tokio::test]
async fn backend_api_refuses_missing_and_wrong_keys() {
    let stack = Stack::from_env().await;
    let body = json!({"end_user_id": "u", "integrations": ["x"], "origin": ORIGIN});
    let none = stack
        .http
        .post(stack.url("/connect-sessions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    let wrong = stack
        .http
        .post(stack.url("/connect-sessions"))
        .bearer_auth("obk_AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let v: Value = wrong.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unauthorized");
}

#[tokio::test]
async fn session_cannot_start_an_integration_it_does_not_allow() {
    let f = fixture().await;
    let token = f
        .stack
        .connect_session(&f.tenant, "user-8", &["other-app"], ORIGIN)
        .await;
    let page = Browser::new()
        .start_connect(&f.stack.url(&format!(
            "/oauth/{}/authorize?session={token}",
            f.integration
        )))
        .await;
    assert_eq!(page.status, 403);
    assert_eq!(
        page.posted_message().unwrap()["error"],
        "integration_not_allowed"
    );
    assert_eq!(page.post_origin().as_deref(), Some(ORIGIN));
    let forged = Browser::new()
        .start_connect(&f.stack.url(&format!(
            "/oauth/{}/authorize?session=cs_forged",
            f.integration
        )))
        .await;
    assert_eq!(forged.status, 401);
    assert_eq!(forged.posted_message().unwrap()["error"], "invalid_session");
}

#[tokio::test]
async fn other_tenants_cannot_read_a_connection_or_integration() {
    let f = fixture().await;
    let browser = Browser::new();
    let cb = f.until_callback(&browser, "user-9", true).await;
    let page = browser.get(cb.as_str()).await;
    let id = page.posted_message().unwrap()["connection_id"]
        .as_str()
        .unwrap()
        .to_string();
    let other = f.stack.create_tenant().await;
    let resp = f
        .stack
        .api(&other, Method::GET, &format!("/connections/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = f
        .stack
        .api(
            &other,
            Method::GET,
            &format!("/integrations/{}", f.integration),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let own = f
        .stack
        .api(
            &f.tenant,
            Method::GET,
            &format!("/integrations/{}", f.integration),
        )
        .send()
        .await
        .unwrap();
    let v: Value = own.json().await.unwrap();
    assert!(v.get("client_secret").is_none() && !v.to_string().contains(&f.client.client_secret));
}

#[tokio::test]
async fn redirect_mode_returns_to_the_app_and_the_outcome_can_be_polled() {
    let f = fixture().await;
    let resp = f
        .stack
        .api(&f.tenant, Method::POST, "/connect-sessions")
        .json(
            &json!({"end_user_id": "user-10", "integrations": [f.integration], "origin": ORIGIN,
                      "return_to": format!("{ORIGIN}/settings/integrations?from=broker")}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let token = resp.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    ledger(&token);
    let status_url = f.stack.url("/oauth/status");
    let poll = || {
        f.stack
            .http
            .post(&status_url)
            .form(&[("session", token.as_str())])
            .header("origin", ORIGIN)
            .send()
    };
    let pending = poll().await.unwrap();
    assert_eq!(pending.headers()["access-control-allow-origin"], ORIGIN);
    assert_eq!(pending.json::<Value>().await.unwrap()["status"], "pending");

    let browser = Browser::new();
    let authorize = f.stack.url(&format!(
        "/oauth/{}/authorize?session={token}",
        f.integration
    ));
    let cb = browser
        .sign_in_at_provider(&authorize, "alice", true, &f.callback_prefix())
        .await;
    for (k, v) in cb.query_pairs() {
        if k == "code" || k == "state" {
            ledger(&v);
        }
    }
    let back = browser.get(cb.as_str()).await;
    assert_eq!(back.status, 303, "{}", back.body);
    let to = back.location.clone().unwrap();
    assert_eq!(
        to.as_str().split('?').next().unwrap(),
        format!("{ORIGIN}/settings/integrations")
    );
    let params: std::collections::HashMap<_, _> = to.query_pairs().into_owned().collect();
    assert_eq!(params["from"], "broker");
    assert_eq!(params["status"], "connected");
    let id = params["connection_id"].clone();

    let done: Value = poll().await.unwrap().json().await.unwrap();
    assert_eq!(done["status"], "connected");
    assert_eq!(done["connection_id"], id.as_str());
    assert_eq!(f.stack.token_requests(&f.client.client_id).await, 1);
}

/// A custom provider imported from the real server's published metadata
/// (`POST /provider-discovery`), registered as shown, connects an account
/// at that server: the mapping is true to a server nobody here wrote the
/// metadata of.
#[tokio::test]
async fn discovery_imports_the_real_servers_metadata() {
    let stack = Stack::from_env().await;
    let tenant = stack.create_tenant().await;
    let issuer = stack.issuer.as_str().trim_end_matches('/').to_string();
    let resp = stack
        .api(&tenant, Method::POST, "/provider-discovery")
        .json(&json!({"url": issuer}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let d = &v["definition"];
    assert_eq!(
        v["source"],
        format!("{issuer}/.well-known/openid-configuration")
    );
    assert_eq!(d["authorization_url"], format!("{issuer}/auth"));
    assert_eq!(d["token_url"], format!("{issuer}/token"));
    assert_eq!(d["revocation_url"], format!("{issuer}/token/revocation"));
    assert_eq!(d["oidc"]["issuer"], issuer);
    assert_eq!(d["pkce"], true);
    assert_eq!(d["authorization_response_iss"], true);
    let resp = stack
        .api(&tenant, Method::POST, "/custom-providers")
        .json(&json!({"id": "imported", "definition": d}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        201,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let integration = "imported-app";
    let client = stack.register_client(integration).await;
    let resp = stack
        .api(&tenant, Method::POST, "/integrations")
        .json(&json!({
            "id": integration, "provider": "custom:imported",
            "client_id": client.client_id, "client_secret": client.client_secret,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        201,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let page = stack
        .popup(&tenant, integration, "user-d", "alice", ORIGIN)
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.posted_message().unwrap()["status"], "connected");
}
