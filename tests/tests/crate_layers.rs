//! The crates depend one way, as the README's "Crates" section says: the
//! provider metadata and domain crates carry no AWS SDK, no Lambda runtime
//! and no HTTP server in their dependency trees; the test kit reaches no
//! function binary. Read from `cargo metadata` (the resolved graph, normal
//! and build dependencies only: what links into a binary).

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

struct Graph {
    /// package id -> (name, normal/build dependency ids)
    nodes: BTreeMap<String, (String, Vec<String>)>,
}

impl Graph {
    fn get() -> &'static Graph {
        static GRAPH: std::sync::OnceLock<Graph> = std::sync::OnceLock::new();
        GRAPH.get_or_init(Graph::load)
    }

    fn load() -> Graph {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap();
        let rustc = std::process::Command::new("rustc")
            .arg("-vV")
            .output()
            .expect("run rustc -vV");
        let host = String::from_utf8_lossy(&rustc.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
            .expect("rustc names its host");
        // This machine's platform only: what the functions link here.
        let out = std::process::Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1", "--locked", "--offline"])
            .args(["--filter-platform", &host])
            .current_dir(root)
            .output()
            .expect("run cargo metadata");
        assert!(
            out.status.success(),
            "cargo metadata: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
        let names: BTreeMap<&str, &str> = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
            .collect();
        let mut nodes = BTreeMap::new();
        for n in meta["resolve"]["nodes"].as_array().unwrap() {
            let id = n["id"].as_str().unwrap();
            let deps = n["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["kind"].is_null() || k["kind"] == "build")
                })
                .map(|d| d["pkg"].as_str().unwrap().to_string())
                .collect();
            nodes.insert(id.to_string(), (names[id].to_string(), deps));
        }
        Graph { nodes }
    }

    fn id(&self, name: &str) -> &str {
        self.nodes
            .iter()
            .find(|(_, (n, _))| n == name)
            .map(|(id, _)| id.as_str())
            .unwrap_or_else(|| panic!("no package {name}"))
    }

    /// Names of every package `name` links, itself left out.
    fn linked(&self, name: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![self.id(name).to_string()];
        while let Some(id) = stack.pop() {
            for dep in &self.nodes[&id].1 {
                if seen.insert(dep.clone()) {
                    stack.push(dep.clone());
                }
            }
        }
        seen.iter().map(|id| self.nodes[id].0.clone()).collect()
    }
}

/// Packages that are the AWS SDK, the Lambda runtime or an HTTP server.
fn forbidden_in_the_core(name: &str) -> bool {
    name.starts_with("aws-sdk-")
        || name.starts_with("aws-smithy-")
        || name.starts_with("aws-config")
        || name.starts_with("aws-types")
        || name.starts_with("aws-sigv4")
        || name.starts_with("lambda_")
        || name.starts_with("aws_lambda_events")
        || ["axum", "actix-web", "warp", "hyper-server", "serde_dynamo"].contains(&name)
}

#[test]
fn crate_dependencies_follow_the_layers() {
    let g = Graph::get();
    for core in ["broker-providers", "broker-domain"] {
        let bad: Vec<String> = g
            .linked(core)
            .into_iter()
            .filter(|n| forbidden_in_the_core(n))
            .collect();
        assert!(bad.is_empty(), "{core} links {bad:?}");
    }
    // The direction between the broker's own crates.
    let own = |name: &str| -> BTreeSet<String> {
        g.linked(name)
            .into_iter()
            .filter(|n| n.starts_with("broker-"))
            .collect()
    };
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(own("broker-providers"), set(&[]));
    assert_eq!(own("broker-domain"), set(&["broker-providers"]));
    assert_eq!(
        own("broker-aws"),
        set(&["broker-domain", "broker-providers"])
    );
    assert_eq!(
        own("broker-web"),
        set(&["broker-domain", "broker-providers"])
    );
    assert_eq!(
        own("broker-testkit"),
        set(&["broker-domain", "broker-providers"])
    );
    // No function links the test kit (nor, through it, a fault hook).
    for f in [
        "admin",
        "api",
        "authorize",
        "callback",
        "deliver",
        "inbound",
        "proxy",
        "refresh",
        "test-connection",
        "token",
    ] {
        assert!(
            !g.linked(f).contains("broker-testkit"),
            "{f} links the test kit"
        );
    }
}

#[test]
fn the_layer_check_sees_what_the_functions_link() {
    // The check above is only worth something if the graph is read right:
    // a function does link the SDK and the runtime.
    let g = Graph::get();
    let token = g.linked("token");
    assert!(token.contains("aws-sdk-dynamodb"), "{token:?}");
    assert!(token.contains("lambda_http"), "{token:?}");
    assert!(forbidden_in_the_core("aws-sdk-dynamodb"));
}
