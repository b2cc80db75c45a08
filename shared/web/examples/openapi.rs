//! Writes the OpenAPI document generated from the types
//! (`web::openapi::generate`) to `shared/web/openapi.json`:
//! `cargo run -p broker-web --example openapi`.

fn main() {
    let doc = web::openapi::generate();
    let text = serde_json::to_string_pretty(&doc).expect("a JSON value serializes") + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    std::fs::write(&path, text).expect("write openapi.json");
    eprintln!("wrote {}", path.display());
}
