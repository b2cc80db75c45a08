//! `scripts/bench warm`: handler CPU per request, in-process, with the
//! memory adapters (no network, no AWS), and the one-off costs a cold
//! instance pays on its first request: the provider registry and the TLS
//! roots. Not a test; the figures depend on the machine.
//!
//!   cargo run --release -p broker-shared --example bench_warm -- [requests]

use domain::clock::SystemClock;
use domain::storage::ApiKeyIssuer;
use domain::tls::{TlsRoots, TlsSettings};
use domain::{App, Config};
use lambda_http::{Body, Request};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use testkit::{MemoryStore, MemoryVault};
use web::handlers::{api, authorize};

const BASE: &str = "https://broker.example.com";
const ORIGIN: &str = "https://app.example.com";

/// CPU time of this thread (the runtime is single-threaded).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn request(method: &str, uri: &str, headers: &[(&str, &str)], body: Body) -> Request {
    let mut b = lambda_http::http::Request::builder()
        .method(method)
        .uri(format!("{BASE}{uri}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body).expect("request")
}

fn json_req(method: &str, uri: &str, key: &str, body: Option<Value>) -> Request {
    let auth = format!("Bearer {key}");
    let body = body.map_or(Body::Empty, |v| Body::Text(v.to_string()));
    request(
        method,
        uri,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let p50 = samples[samples.len() / 2];
    let p99 = samples[(samples.len() * 99 / 100).min(samples.len() - 1)];
    println!(
        "{name:<34} {:>10.1} {:>10.1} {:>8}",
        us(p50),
        us(p99),
        samples.len()
    );
}

fn once<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = thread_cpu();
    let out = f();
    (out, thread_cpu() - start)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);

    // First-request costs, each paid once per instance.
    let registry = providers::Registry::embedded();
    let (_, one) = once(|| registry.get("github").map(|p| p.id.len()));
    let (_, all) = once(|| registry.iter().count());
    let compiled = TlsSettings::default();
    let system = TlsSettings {
        roots: TlsRoots::System,
        ..TlsSettings::default()
    };
    let (_, tls_compiled) = once(|| domain::tls::client_config(&compiled).expect("compiled"));
    let (sys, tls_system) = once(|| domain::tls::client_config(&system));
    println!("one-off, CPU µs (first call in this process)");
    println!(
        "  registry, first provider         {:>10.1}",
        one.as_secs_f64() * 1e6
    );
    println!(
        "  registry, every other provider   {:>10.1}",
        all.as_secs_f64() * 1e6
    );
    println!(
        "  TLS config, compiled roots       {:>10.1}",
        tls_compiled.as_secs_f64() * 1e6
    );
    match sys {
        Ok(_) => println!(
            "  TLS config, system bundle        {:>10.1}",
            tls_system.as_secs_f64() * 1e6
        ),
        Err(e) => println!("  TLS config, system bundle        unavailable: {e}"),
    }

    let vars = [
        ("TABLE_NAME", "bench"),
        ("SECRET_PREFIX", "bench/"),
        ("PUBLIC_BASE_URL", BASE),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let store = Arc::new(MemoryStore::new());
    let app = App::new(
        Config::from_vars(&vars).expect("config"),
        store.clone(),
        Arc::new(MemoryVault::new()),
        Arc::new(SystemClock),
    );
    let minted = domain::auth::mint("t-bench", app.now());
    store.put_api_key(&minted.record).await.expect("key");
    let key = minted.key.expose_secret().to_string();
    let resp = api::handle(
        &app,
        json_req(
            "POST",
            "/integrations",
            &key,
            Some(json!({"id": "gh", "provider": "github", "client_id": "c", "client_secret": "s"})),
        ),
    )
    .await;
    assert_eq!(resp.status(), 201, "integration");
    let new_session = || {
        json_req(
            "POST",
            "/connect-sessions",
            &key,
            Some(
                json!({"end_user_id": "u", "integrations": ["gh"], "origin": ORIGIN, "ttl_seconds": 1800}),
            ),
        )
    };
    let resp = api::handle(&app, new_session()).await;
    let session = match resp.body() {
        Body::Text(t) => serde_json::from_str::<Value>(t).expect("json")["token"]
            .as_str()
            .expect("token")
            .to_string(),
        _ => panic!("session body"),
    };
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("session", &session)
        .finish();

    println!();
    println!("warm handler CPU per request, µs       p50        p99 requests");
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let req = request(
            "POST",
            "/oauth/gh/authorize",
            &[
                ("origin", ORIGIN),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            Body::Text(form.clone()),
        );
        let start = thread_cpu();
        let resp = authorize::handle(&app, req).await;
        samples.push(thread_cpu() - start);
        assert_eq!(resp.status(), 303, "authorize");
    }
    report("authorize POST (redirect)", samples);

    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let req = json_req("GET", "/integrations", &key, None);
        let start = thread_cpu();
        let resp = api::handle(&app, req).await;
        samples.push(thread_cpu() - start);
        assert_eq!(resp.status(), 200, "list");
    }
    report("api GET /integrations", samples);

    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let req = new_session();
        let start = thread_cpu();
        let resp = api::handle(&app, req).await;
        samples.push(thread_cpu() - start);
        assert_eq!(resp.status(), 201, "session");
    }
    report("api POST /connect-sessions", samples);
}
