//! The local stack routes requests as the deployed HTTP API does: the
//! `cargo lambda watch` router in `Cargo.toml` and the `HttpApi` events in
//! `template.yaml` name the same paths for the same functions.

use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn the_local_router_and_the_templates_http_api_route_the_same_paths_to_the_same_functions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let template = std::fs::read_to_string(root.join("template.yaml")).unwrap();

    let mut local = BTreeMap::new();
    let mut in_router = false;
    for line in cargo.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_router = line == "[workspace.metadata.lambda.watch.router]";
            continue;
        }
        if let (true, Some((path, function))) = (in_router, line.split_once(" = ")) {
            local.insert(
                path.trim_matches('"').to_string(),
                function.trim_matches('"').to_string(),
            );
        }
    }

    let mut deployed = BTreeMap::new();
    let mut function = None;
    for line in template.lines() {
        let line = line.trim();
        if let Some(b) = line.strip_prefix("Binary: ") {
            function = Some(b.to_string());
        } else if let Some(p) = line.strip_prefix("Path: ") {
            let f = function.clone().expect("a Path before any function");
            // API Gateway's greedy `{name+}` is the local router's `{*name}`.
            let p = &greedy_as_catch_all(p);
            if let Some(other) = deployed.insert(p.to_string(), f.clone()) {
                assert_eq!(other, f, "{p} routed to two functions");
            }
        }
    }
    assert!(deployed.len() >= 15, "{deployed:?}");
    assert_eq!(local, deployed);
}

fn greedy_as_catch_all(path: &str) -> String {
    path.split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix("+}")) {
                Some(name) => format!("{{*{name}}}"),
                None => seg.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}
