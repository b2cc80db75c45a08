//! The route table (`web::routes::ROUTES`) is the one source of the HTTP
//! surface: the deployed HTTP API (`template.yaml`'s `HttpApi` events) and
//! the local router (`cargo lambda watch`'s, in `Cargo.toml`) route exactly
//! its paths, with its methods, to its functions. The OpenAPI document is
//! held to it in `openapi_doc.rs`.

use std::collections::BTreeSet;
use std::path::Path;
use web::routes::ROUTES;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// (function, METHOD, path) of every `HttpApi` event in `template.yaml`.
fn deployed() -> BTreeSet<(String, String, String)> {
    let template = std::fs::read_to_string(root().join("template.yaml")).unwrap();
    let mut out = BTreeSet::new();
    let (mut function, mut method) = (None, None);
    for line in template.lines().map(str::trim) {
        if let Some(b) = line.strip_prefix("Binary: ") {
            function = Some(b.to_string());
        } else if let Some(m) = line.strip_prefix("Method: ") {
            method = Some(m.to_string());
        } else if let Some(p) = line.strip_prefix("Path: ") {
            let f = function.clone().expect("a Path before any function");
            let m = method.take().expect("Method before Path");
            assert!(out.insert((f, m, p.to_string())), "{p} routed twice");
        }
    }
    out
}

/// path -> function of `cargo lambda watch`'s router.
fn local() -> BTreeSet<(String, String)> {
    let cargo = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let mut out = BTreeSet::new();
    let mut in_router = false;
    for line in cargo.lines().map(str::trim) {
        if line.starts_with('[') {
            in_router = line == "[workspace.metadata.lambda.watch.router]";
            continue;
        }
        if let (true, Some((path, function))) = (in_router, line.split_once(" = ")) {
            // The local router's `{*name}` is API Gateway's `{name+}`.
            let path = path
                .trim_matches('"')
                .split('/')
                .map(|seg| match seg.strip_prefix("{*") {
                    Some(name) => format!("{{{}", name.replace('}', "+}")),
                    None => seg.to_string(),
                })
                .collect::<Vec<_>>()
                .join("/");
            out.insert((path, function.trim_matches('"').to_string()));
        }
    }
    out
}

#[test]
fn the_template_deploys_exactly_the_route_table() {
    let table: BTreeSet<(String, String, String)> = ROUTES
        .iter()
        .map(|r| (r.function.into(), r.method.into(), r.path.into()))
        .collect();
    assert_eq!(table.len(), ROUTES.len(), "a route is in the table twice");
    assert!(table.len() >= 40, "{table:?}");
    assert_eq!(deployed(), table);
}

#[test]
fn the_local_router_routes_the_route_tables_paths_to_the_same_functions() {
    let table: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.path.to_string(), r.function.to_string()))
        .collect();
    let local = local();
    assert!(local.contains(&("/proxy/{id}/{path+}".into(), "proxy".into())));
    assert_eq!(local, table);
}
