//! The README names the test that holds each invariant and each row of the
//! attack matrix; a renamed or deleted test must not leave a claim behind.

use std::path::Path;

fn read_tree(dir: &Path, ext: &str, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if !path.ends_with("node_modules") {
                read_tree(&path, ext, out);
            }
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn every_test_the_readme_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut rust = String::new();
    read_tree(&root.join("shared"), "rs", &mut rust);
    read_tree(&root.join("tests"), "rs", &mut rust);
    let mut browser = String::new();
    read_tree(&root.join("tests/browser"), "mjs", &mut browser);
    // The local stack's own Python tests (scripts/test_*.py).
    let mut python = String::new();
    read_tree(&root.join("scripts"), "py", &mut python);

    let name = regex::Regex::new(r"`([a-z][a-z0-9]*(?:_[a-z0-9]+){3,})`").unwrap();
    let browser_name = regex::Regex::new(r"browser: `([^`]+)`").unwrap();
    let mut missing = Vec::new();
    let mut checked = 0;
    for line in readme.lines().filter(|l| l.starts_with('|')) {
        for c in name.captures_iter(line) {
            let n = &c[1];
            checked += 1;
            let defined = rust.contains(&format!("fn {n}("))
                || rust.contains(&format!("fn {n}<"))
                || python.contains(&format!("def {n}("));
            if !defined {
                missing.push(n.to_string());
            }
        }
        for c in browser_name.captures_iter(line) {
            checked += 1;
            if !browser.contains(&format!("test('{}'", &c[1])) {
                missing.push(format!("browser: {}", &c[1]));
            }
        }
    }
    assert!(
        checked > 60,
        "only {checked} test names found in the README's tables"
    );
    assert!(
        missing.is_empty(),
        "the README names tests that do not exist: {missing:?}"
    );
}
