//! DynamoDB adapter for every record port: one table, composite `pk`/`sk`
//! keys (see [`super::keys`]), `ttl` on the short-lived items.

use super::*;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_dynamo::aws_sdk_dynamodb_1::{from_item, to_item};
use std::collections::HashMap;

/// DynamoDB-backed records.
#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

/// Seconds an expired item is kept before DynamoDB's TTL may remove it;
/// expiry itself is always checked in code, since TTL deletion is lazy.
const TTL_GRACE_SECONDS: i64 = 3600;

#[derive(Serialize)]
struct Item<'a, T> {
    pk: String,
    sk: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<i64>,
    #[serde(flatten)]
    record: &'a T,
}

type Attrs = HashMap<String, AttributeValue>;

fn item<T: Serialize>(
    key: (String, String),
    ttl: Option<i64>,
    record: &T,
) -> Result<Attrs, StoreError> {
    let (pk, sk) = key;
    to_item(Item {
        pk,
        sk,
        ttl,
        record,
    })
    .map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn record<T: DeserializeOwned>(attrs: Attrs) -> Result<T, StoreError> {
    from_item(attrs).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Maps an SDK failure: throttling and transport problems are retryable.
fn classify<E, R>(err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let retryable = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => true,
        SdkError::ServiceError(e) => matches!(
            e.err().code(),
            Some(
                "ProvisionedThroughputExceededException"
                    | "ThrottlingException"
                    | "RequestLimitExceeded"
                    | "InternalServerError"
                    | "ServiceUnavailable"
            )
        ),
        _ => false,
    };
    let text = DisplayErrorContext(&err).to_string();
    if retryable {
        StoreError::Unavailable(text)
    } else {
        StoreError::Backend(text)
    }
}

fn key_attrs(key: (String, String)) -> Attrs {
    HashMap::from([
        ("pk".to_string(), AttributeValue::S(key.0)),
        ("sk".to_string(), AttributeValue::S(key.1)),
    ])
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    async fn put(&self, attrs: Attrs) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(attrs))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn get<T: DeserializeOwned>(
        &self,
        key: (String, String),
    ) -> Result<Option<T>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_attrs(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(classify)?;
        out.item.map(record).transpose()
    }
}

#[async_trait]
impl ApiKeyStore for DynamoStore {
    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.put(item(keys::api_key(&key.key_id), None, key)?).await
    }
    async fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.get(keys::api_key(key_id)).await
    }
}

#[async_trait]
impl SessionStore for DynamoStore {
    async fn put_session(&self, s: &ConnectSession) -> Result<(), StoreError> {
        let ttl = Some(s.expires_at + TTL_GRACE_SECONDS);
        self.put(item(keys::session(&s.token_sha256), ttl, s)?)
            .await
    }
    async fn get_session(&self, token_sha256: &str) -> Result<Option<ConnectSession>, StoreError> {
        self.get(keys::session(token_sha256)).await
    }
}

#[async_trait]
impl IntegrationStore for DynamoStore {
    async fn create_integration(&self, i: &Integration) -> Result<(), StoreError> {
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item(keys::integration(&i.tenant_id, &i.id), None, i)?))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Err(StoreError::AlreadyExists)
            }
            Err(e) => Err(classify(e)),
        }
    }
    async fn get_integration(&self, t: &str, id: &str) -> Result<Option<Integration>, StoreError> {
        self.get(keys::integration(t, id)).await
    }
    async fn delete_integration(&self, t: &str, id: &str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_attrs(keys::integration(t, id))))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }
}

#[async_trait]
impl FlowStore for DynamoStore {
    async fn put_flow(&self, f: &PendingFlow) -> Result<(), StoreError> {
        let ttl = Some(f.expires_at + TTL_GRACE_SECONDS);
        self.put(item(keys::flow(&f.state_sha256), ttl, f)?).await
    }

    async fn take_flow(
        &self,
        state_sha256: &str,
        binding_sha256: &str,
    ) -> Result<Option<PendingFlow>, StoreError> {
        // One conditional delete: exactly one of any number of concurrent
        // callbacks gets the item back, and only the browser that holds the
        // binding cookie can consume it.
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_attrs(keys::flow(state_sha256))))
            .condition_expression("attribute_exists(pk) AND binding_sha256 = :b")
            .expression_attribute_values(":b", AttributeValue::S(binding_sha256.to_string()))
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        match res {
            Ok(out) => out
                .attributes
                .filter(|a| !a.is_empty())
                .map(record)
                .transpose(),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(classify(e)),
        }
    }
}

#[async_trait]
impl ConnectionStore for DynamoStore {
    async fn put_connection(&self, c: &Connection) -> Result<(), StoreError> {
        self.put(item(keys::connection(&c.tenant_id, &c.id), None, c)?)
            .await
    }
    async fn get_connection(&self, t: &str, id: &str) -> Result<Option<Connection>, StoreError> {
        self.get(keys::connection(t, id)).await
    }
    async fn list_connections(&self, t: &str) -> Result<Vec<Connection>, StoreError> {
        let pages = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", AttributeValue::S(keys::tenant(t)))
            .expression_attribute_values(
                ":prefix",
                AttributeValue::S(keys::CONNECTION_PREFIX.into()),
            )
            .into_paginator()
            .items()
            .send()
            .collect::<Vec<_>>()
            .await;
        pages
            .into_iter()
            .map(|r| r.map_err(classify).and_then(record))
            .collect()
    }
}
