//! Static IAM check: each function's role in `template.yaml` grants
//! exactly the actions of the ports its `main` builds.
//!
//! A function's ports are its list in `aws::functions`, which its `main`
//! hands to `aws::app_from_env` (every other port is `Unbuilt` and calls
//! nothing); each port's actions are `aws::iam::actions`. The granted
//! actions come from `scripts/iam_local.py policies`, the same reading of
//! the template that the local stack enforces, where the end-to-end suite
//! runs every function under its own policy: an adapter call missing from
//! `aws::iam` is refused there. No stack is needed here; the check runs at
//! action level (resources are held by the IAM-enforced end-to-end suite).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `{binary: [actions]}` as the local IAM copy reads the template.
fn granted() -> BTreeMap<String, BTreeSet<String>> {
    let root = workspace();
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup (or scripts/test) first",
        python.display()
    );
    let out = std::process::Command::new(python)
        .arg(root.join("scripts/iam_local.py"))
        .arg("policies")
        .output()
        .expect("run scripts/iam_local.py policies");
    assert!(
        out.status.success(),
        "iam_local.py policies failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("policies JSON")
}

/// Actions Lambda's event source mappings use with a function's role to
/// poll its sources (what the managed policies AWSLambdaDynamoDBExecutionRole
/// and AWSLambdaSQSQueueExecutionRole grant): no code of ours calls them,
/// and `scripts/esm.py` polls as the function's own user, so a missing one
/// fails the local stack as it would fail in AWS.
const POLLED_BY_LAMBDA: &[(&str, &[&str])] = &[(
    "deliver",
    &[
        "dynamodb:DescribeStream",
        "dynamodb:GetRecords",
        "dynamodb:GetShardIterator",
        "dynamodb:ListStreams",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
    ],
)];

/// What `binary`'s ports call, and what Lambda polls with its role.
fn required(binary: &str, ports: &[domain::ports::Port]) -> BTreeSet<String> {
    let mut need: BTreeSet<String> = ports
        .iter()
        .flat_map(|p| aws::iam::actions(*p))
        .map(|a| a.to_string())
        .collect();
    for (b, actions) in POLLED_BY_LAMBDA {
        if *b == binary {
            need.extend(actions.iter().map(|a| a.to_string()));
        }
    }
    need
}

#[test]
fn every_function_is_granted_exactly_what_its_ports_call() {
    let granted = granted();
    let functions: BTreeSet<String> = aws::functions::FUNCTIONS
        .iter()
        .map(|(b, _)| b.to_string())
        .collect();
    assert_eq!(
        functions,
        granted.keys().cloned().collect::<BTreeSet<_>>(),
        "the template's functions and aws::functions differ"
    );
    let mut problems = Vec::new();
    for (binary, ports) in aws::functions::FUNCTIONS {
        let need = required(binary, ports);
        let have = &granted[*binary];
        for action in need.difference(have) {
            problems.push(format!("{binary}: its ports call {action}, not granted"));
        }
        for action in have.difference(&need) {
            problems.push(format!(
                "{binary}: granted {action}, which no port of it calls"
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The local IAM copy grants on "*", so it cannot catch a secret action
/// granted on the wrong secrets: each token port's Secrets Manager actions
/// must be granted on `<SecretPrefix>connections/*` in the template (a
/// callback that could not read the generation it replaced would neither
/// revoke nor delete it, in AWS only).
#[test]
fn token_secrets_are_granted_on_the_connections_scope() {
    use domain::ports::Port::{TokenCreator, TokenDeleter, TokenVault};
    let root = workspace();
    let out = std::process::Command::new(root.join(".venv/bin/python"))
        .arg(root.join("scripts/iam_local.py"))
        .args(["policies", "--secret-scopes"])
        .output()
        .expect("run scripts/iam_local.py policies --secret-scopes");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scopes: BTreeMap<String, BTreeMap<String, Vec<String>>> =
        serde_json::from_slice(&out.stdout).expect("scopes JSON");
    let mut problems = Vec::new();
    for (binary, ports) in aws::functions::FUNCTIONS {
        for port in ports
            .iter()
            .filter(|p| [TokenVault, TokenCreator, TokenDeleter].contains(p))
        {
            for action in aws::iam::actions(*port)
                .iter()
                .filter(|a| a.starts_with("secretsmanager:"))
            {
                let granted = scopes
                    .get(*binary)
                    .and_then(|m| m.get(*action))
                    .is_some_and(|s| s.iter().any(|x| x == "connections"));
                if !granted {
                    problems.push(format!("{binary}: {action} on connections/* ({port:?})"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "not granted:\n{}", problems.join("\n"));
}

#[test]
fn each_functions_main_builds_its_own_ports() {
    for (binary, _) in aws::functions::FUNCTIONS {
        let main = workspace().join(format!("functions/{binary}/src/main.rs"));
        let text = std::fs::read_to_string(&main).expect("main.rs");
        let list = binary.to_uppercase().replace('-', "_");
        let call = format!("aws::app_from_env(aws::functions::{list})");
        assert_eq!(
            text.matches("app_from_env").count(),
            1,
            "{binary} builds its app once"
        );
        assert!(text.contains(&call), "{binary}'s main must call {call}");
    }
    let dirs: BTreeSet<String> = std::fs::read_dir(workspace().join("functions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = aws::functions::FUNCTIONS
        .iter()
        .map(|(b, _)| b.to_string())
        .collect();
    assert_eq!(dirs, listed, "every function has a port list");
}

#[test]
fn the_token_function_can_neither_create_delete_nor_list() {
    // It reads and refreshes; neither its ports nor so its grants hold a
    // secret's creation or deletion, a record's deletion or a listing.
    let token = required("token", aws::functions::TOKEN);
    for action in [
        "secretsmanager:CreateSecret",
        "secretsmanager:DeleteSecret",
        "dynamodb:DeleteItem",
        "dynamodb:Query",
    ] {
        assert!(!token.contains(action), "{action}");
    }
    assert!(token.contains("secretsmanager:PutSecretValue"));
}
