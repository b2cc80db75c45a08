//! The local stack enforces the template's IAM per function, and the
//! broker's own adapters see a refusal as [`StoreError::AccessDenied`]:
//! each test acts as one function's IAM user (its profile in the generated
//! credentials file, as `cargo lambda watch` runs that function) through
//! the same adapter code the function runs.

use aws::{DynamoStore, SecretsManagerVault};
use domain::storage::{
    ConnectionStore, IntegrationStore, SecretName, SecretReader, SecretVault, StoreError,
};
use integration_tests::unique_suffix;
use secrecy::SecretString;

async fn sdk_as(function: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(integration_tests::sdk_http_client())
        .profile_name(function)
        .load()
        .await
}

fn vault(sdk: &aws_config::SdkConfig) -> SecretsManagerVault {
    SecretsManagerVault::new(aws_sdk_secretsmanager::Client::new(sdk), None)
}

#[tokio::test]
async fn a_refreshing_function_may_add_a_secret_version_but_not_create_a_secret() {
    // The actions of a token secret's writes, on a name of the vault's
    // other families (the local IAM checks actions, not resources).
    let name = SecretName::client_secret(&format!("iam-test-{}/", unique_suffix()), "t", "c");
    let value = SecretString::from("{}".to_string());
    let token = vault(&sdk_as("token").await);
    let denied = token
        .create_secret(&name, &value, &[], &"a".repeat(32))
        .await
        .unwrap_err();
    assert!(
        matches!(denied, StoreError::AccessDenied(_)),
        "token may not CreateSecret: {denied:?}"
    );
    // PutSecretValue is its own: on a missing secret it is told so, not denied.
    let missing = token
        .put_secret_version(&name, &value, &"b".repeat(32))
        .await
        .unwrap_err();
    assert!(matches!(missing, StoreError::Missing), "{missing:?}");
    // The callback creates connections: it may.
    let callback = vault(&sdk_as("callback").await);
    callback
        .create_secret(&name, &value, &[], &"c".repeat(32))
        .await
        .expect("callback may CreateSecret");
    token
        .put_secret_version(&name, &value, &"d".repeat(32))
        .await
        .expect("token may PutSecretValue");
    // The token function may not delete it; the callback (a reconnect
    // deletes the generation it replaced) and the api (disconnect) may.
    assert!(matches!(
        token.delete_secret(&name).await,
        Err(StoreError::AccessDenied(_))
    ));
    vault(&sdk_as("api").await)
        .delete_secret(&name)
        .await
        .expect("api may DeleteSecret");
}

#[tokio::test]
async fn authorize_may_not_touch_connection_records_or_secrets() {
    let sdk = sdk_as("authorize").await;
    let table = std::env::var("TABLE_NAME").expect("TABLE_NAME");
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), table);
    // DeleteItem, as a disconnect's record delete is (the local IAM checks
    // actions): not authorize's.
    let denied = store.delete_integration("t", "c").await.unwrap_err();
    assert!(matches!(denied, StoreError::AccessDenied(_)), "{denied:?}");
    let denied = vault(&sdk)
        .get_secret("iam-test/integrations/t/x")
        .await
        .unwrap_err();
    assert!(matches!(denied, StoreError::AccessDenied(_)), "{denied:?}");
    // What it does hold: reading an item.
    assert!(store.get_connection("t", "c").await.unwrap().is_none());
}

#[tokio::test]
async fn only_authorize_may_read_a_session_and_its_integration_in_one_batch() {
    use domain::storage::SessionStart;
    let table = std::env::var("TABLE_NAME").expect("TABLE_NAME");
    let as_fn = |sdk: &aws_config::SdkConfig| {
        DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), table.clone())
    };
    let hash = "0".repeat(64);
    // The callback reads the session alone; BatchGetItem is not its grant.
    let denied = as_fn(&sdk_as("callback").await)
        .get_session_and_integration(&hash, "t", "i")
        .await
        .unwrap_err();
    assert!(matches!(denied, StoreError::AccessDenied(_)), "{denied:?}");
    let (session, integration) = as_fn(&sdk_as("authorize").await)
        .get_session_and_integration(&hash, "t", "i")
        .await
        .expect("authorize may BatchGetItem");
    assert!(session.is_none() && integration.is_none());
}
