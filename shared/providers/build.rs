//! Turns the provider registry (`registry/*.toml`) into one JSON text per
//! provider, sorted by id, so a function parses only the providers it uses,
//! when it first uses them (`providers::Registry::embedded`), with
//! the JSON parser it links anyway. TOML stays the format people edit;
//! the test `embedded_json_registry_equals_the_toml_it_was_built_from`
//! holds the two equal.

use std::collections::BTreeMap;
use std::fmt::Write;

const FILES: &[&str] = &[
    "core.toml",
    "set-a.toml",
    "set-b.toml",
    "set-c.toml",
    "basic.toml",
    "client-credentials.toml",
    "signed-jwt.toml",
];

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("registry");
    println!("cargo:rerun-if-changed=registry");
    let mut entries: BTreeMap<String, String> = BTreeMap::new();
    for file in FILES {
        let path = dir.join(file);
        println!("cargo:rerun-if-changed={}", path.display());
        let text = std::fs::read_to_string(&path).expect("read a registry file");
        let table: toml::Table =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{file} is not valid TOML: {e}"));
        for (id, entry) in table {
            let json = serde_json::to_string(&entry).expect("TOML values are JSON values");
            if entries.insert(id.clone(), json).is_some() {
                panic!("{file}: provider '{id}' defined twice");
            }
        }
    }
    let mut out = String::from(
        "// The embedded registry: (id, JSON of its entry), sorted by id (build.rs).\n\
         pub(crate) static EMBEDDED: &[(&str, &str)] = &[\n",
    );
    for (id, json) in &entries {
        writeln!(out, "    ({id:?}, {json:?}),").unwrap();
    }
    out.push_str("];\n");
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("registry.rs");
    std::fs::write(dest, out).expect("write registry.rs");
}
