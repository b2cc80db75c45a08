//! Static IAM check: every AWS action a function's code can reach is
//! granted to that function in `template.yaml`, and nothing else is.
//!
//! The reachable actions come from reading the source
//! (`integration_tests::reach`, an over-approximating call graph); the
//! granted ones from `scripts/iam_local.py policies`, the same reading of
//! the template that the local stack enforces. Actions AWS checks on the
//! caller's behalf (KMS for Secrets Manager's envelope encryption, tagging
//! at create) are implied by the operation that needs them.
//! No stack is needed; the check runs at action level (resources are held
//! by the IAM-enforced end-to-end suite).

use integration_tests::reach::{Graph, Reach};
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

/// Actions an operation needs besides its own (AWS Secrets Manager user
/// guide, "Secret encryption and decryption" and the CreateSecret entry of
/// the service authorization reference).
fn implied(action: &str) -> &'static [&'static str] {
    match action {
        "secretsmanager:CreateSecret" => &[
            "secretsmanager:TagResource",
            "kms:GenerateDataKey",
            "kms:Decrypt",
        ],
        "secretsmanager:PutSecretValue" => &["kms:GenerateDataKey", "kms:Decrypt"],
        "secretsmanager:GetSecretValue" => &["kms:Decrypt"],
        _ => &[],
    }
}

/// The IAM actions that authorize an SDK operation named otherwise: a
/// DynamoDB transaction is authorized item by item (the broker's always
/// Put an event; "Using IAM with DynamoDB transactions"), SQS batch calls
/// as their single-message actions. `scripts/iam_local.py` grants moto the
/// operation's own name for these (`MOTO_EQUIVALENTS`).
fn authorized_as(op: &str) -> &[&str] {
    match op {
        "dynamodb:TransactWriteItems" => &["dynamodb:PutItem", "dynamodb:UpdateItem"],
        "sqs:SendMessageBatch" => &["sqs:SendMessage"],
        "sqs:DeleteMessageBatch" => &["sqs:DeleteMessage"],
        "sqs:ChangeMessageVisibilityBatch" => &["sqs:ChangeMessageVisibility"],
        _ => &[],
    }
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

/// Functions whose only transaction is all Puts (`inbound`: the
/// `record_provider_delivery` adapter builds Puts alone, and the end-to-end
/// suite runs it under a policy without UpdateItem), so their
/// TransactWriteItems needs PutItem only.
const TRANSACTS_PUTS_ONLY: &[&str] = &["inbound"];

fn required(reach: &Reach) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for op in reach.keys() {
        let actions: Vec<String> = match authorized_as(op) {
            [] => vec![op.clone()],
            named => named.iter().map(|a| a.to_string()).collect(),
        };
        for action in actions {
            out.extend(implied(&action).iter().map(|a| a.to_string()));
            out.insert(action);
        }
    }
    out
}

#[test]
fn every_aws_action_a_function_can_reach_is_granted_to_it_and_no_other() {
    let graph = Graph::load(&workspace());
    let granted = granted();
    let binaries = graph.binaries();
    assert_eq!(
        binaries.iter().cloned().collect::<BTreeSet<_>>(),
        granted.keys().cloned().collect::<BTreeSet<_>>(),
        "the template's functions and the workspace's functions differ"
    );
    let mut problems = Vec::new();
    for binary in &binaries {
        let reach = graph.reach(binary);
        let mut need = required(&reach);
        if TRANSACTS_PUTS_ONLY.contains(&binary.as_str())
            && reach.contains_key("dynamodb:TransactWriteItems")
            && !reach.contains_key("dynamodb:UpdateItem")
        {
            need.remove("dynamodb:UpdateItem");
        }
        for (b, actions) in POLLED_BY_LAMBDA {
            if b == binary {
                need.extend(actions.iter().map(|a| a.to_string()));
            }
        }
        let have = &granted[binary];
        for action in need.difference(have) {
            let via = reach
                .get(action)
                .map(|chain| chain.join(" -> "))
                .unwrap_or_else(|| "implied by another action".into());
            problems.push(format!(
                "{binary}: reaches {action} without a grant, via {via}"
            ));
        }
        for action in have.difference(&need) {
            problems.push(format!(
                "{binary}: granted {action}, which its code cannot reach"
            ));
        }
        eprintln!(
            "{binary}: {}",
            need.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_analysis_finds_the_adapters_calls_and_follows_dyn_ports() {
    // If parsing silently stopped seeing SDK calls, the check above would
    // pass vacuously; pin what a known path must reach.
    let graph = Graph::load(&workspace());
    let authorize = graph.reach("authorize");
    assert!(authorize.contains_key("dynamodb:PutItem"), "{authorize:?}");
    assert!(
        !authorize.keys().any(|a| a.starts_with("secretsmanager:")),
        "{authorize:?}"
    );
    let api = graph.reach("api");
    let chain = &api["secretsmanager:DeleteSecret"];
    assert!(
        chain.first().is_some_and(|f| f.ends_with("bin_api::main")),
        "{chain:?}"
    );
    assert!(
        chain
            .last()
            .is_some_and(|f| f.contains("SecretsManagerVault")),
        "{chain:?}"
    );
}
