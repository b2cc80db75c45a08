//! DynamoDB adapter for every record port: one table, composite `pk`/`sk`
//! keys (see [`super::keys`]), `ttl` on the short-lived items.

use crate::keys::{self, DUE_SHARDS, INTENT_SHARD, due_shard};
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, Put, PutRequest, ReturnValue, TransactWriteItem, WriteRequest,
};
use domain::events::{Event, EventPage};
use domain::model::*;
use domain::storage::*;
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

/// Maps an SDK failure (see [`super::classify_sdk_error`]).
fn classify<E, R>(err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    crate::classify_sdk_error(
        err,
        &[
            "ProvisionedThroughputExceededException",
            "ThrottlingException",
            "RequestLimitExceeded",
            "InternalServerError",
            "ServiceUnavailable",
        ],
    )
}

fn record<T: DeserializeOwned>(attrs: Attrs) -> Result<T, StoreError> {
    from_item(attrs).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Rounds of one [`DynamoStore::batch_get`].
const BATCH_GET_ATTEMPTS: u32 = 3;

/// An item's `(pk, sk)`.
fn item_key(item: &Attrs) -> Option<(String, String)> {
    match (item.get("pk"), item.get("sk")) {
        (Some(AttributeValue::S(pk)), Some(AttributeValue::S(sk))) => {
            Some((pk.clone(), sk.clone()))
        }
        _ => None,
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

    /// One conditional PutItem; `refused` when the condition does not hold.
    async fn put_if(
        &self,
        attrs: Attrs,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
        refused: StoreError,
    ) -> Result<(), StoreError> {
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(attrs))
            .condition_expression(condition);
        for (name, v) in values {
            req = req.expression_attribute_values(name, v);
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Err(refused),
            Err(e) => Err(classify(e)),
        }
    }

    /// Deletes an item; deleting a missing item is not an error.
    async fn delete(&self, key: (String, String)) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_attrs(key)))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Items by key, strongly consistent, in one `BatchGetItem` when
    /// DynamoDB serves it whole. Keys it leaves unprocessed (throttling)
    /// are asked again, at most [`BATCH_GET_ATTEMPTS`] rounds in all; keys
    /// still unprocessed then make the read `Unavailable`.
    async fn batch_get(
        &self,
        keys: Vec<(String, String)>,
    ) -> Result<HashMap<(String, String), Attrs>, StoreError> {
        let mut found = HashMap::new();
        let mut pending: Vec<Attrs> = keys.into_iter().map(key_attrs).collect();
        for attempt in 0..BATCH_GET_ATTEMPTS {
            if pending.is_empty() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(25 << attempt)).await;
            }
            let ask = aws_sdk_dynamodb::types::KeysAndAttributes::builder()
                .set_keys(Some(std::mem::take(&mut pending)))
                .consistent_read(true)
                .build()
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            let out = self
                .client
                .batch_get_item()
                .request_items(&self.table, ask)
                .send()
                .await
                .map_err(classify)?;
            for item in out
                .responses
                .and_then(|mut r| r.remove(&self.table))
                .unwrap_or_default()
            {
                if let Some(key) = item_key(&item) {
                    found.insert(key, item);
                }
            }
            pending = out
                .unprocessed_keys
                .and_then(|mut u| u.remove(&self.table))
                .map(|k| k.keys)
                .unwrap_or_default();
        }
        if !pending.is_empty() {
            return Err(StoreError::Unavailable(
                "BatchGetItem left keys unprocessed".into(),
            ));
        }
        Ok(found)
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
impl ApiKeyIssuer for DynamoStore {
    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.put(item(keys::api_key(&key.key_id), None, key)?).await
    }
}

#[async_trait]
impl ApiKeyStore for DynamoStore {
    async fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.get(keys::api_key(key_id)).await
    }
}

#[async_trait]
impl SessionIssuer for DynamoStore {
    async fn put_session(&self, s: &ConnectSession) -> Result<(), StoreError> {
        let ttl = Some(s.expires_at + TTL_GRACE_SECONDS);
        self.put(item(keys::session(&s.token_sha256), ttl, s)?)
            .await
    }
}

#[async_trait]
impl SessionReader for DynamoStore {
    async fn get_session(&self, token_sha256: &str) -> Result<Option<ConnectSession>, StoreError> {
        self.get(keys::session(token_sha256)).await
    }
}

#[async_trait]
impl SessionStart for DynamoStore {
    async fn get_session_and_integration(
        &self,
        token_sha256: &str,
        tenant_id: &str,
        integration_id: &str,
    ) -> Result<(Option<ConnectSession>, Option<Integration>), StoreError> {
        let session = keys::session(token_sha256);
        let integration = keys::integration(tenant_id, integration_id);
        let mut items = self
            .batch_get(vec![session.clone(), integration.clone()])
            .await?;
        let session = items.remove(&session).map(record).transpose()?;
        let integration = items.remove(&integration).map(record).transpose()?;
        Ok((session, integration))
    }
}

#[async_trait]
impl SessionOutcome for DynamoStore {
    async fn record_session_result(
        &self,
        token_sha256: &str,
        result: &SessionResult,
    ) -> Result<(), StoreError> {
        let value = serde_dynamo::aws_sdk_dynamodb_1::to_attribute_value(result)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_attrs(keys::session(token_sha256))))
            .update_expression("SET #r = :r")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#r", "result")
            .expression_attribute_values(":r", value)
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Ok(()),
            Err(e) => Err(classify(e)),
        }
    }
    async fn spend_session(&self, token_sha256: &str, state: &str) -> Result<bool, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_attrs(keys::session(token_sha256))))
            .update_expression("SET spent_by = :s")
            .condition_expression(
                "attribute_exists(pk) AND (attribute_not_exists(spent_by) OR spent_by = :s)",
            )
            .expression_attribute_values(":s", AttributeValue::S(state.to_string()))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(classify(e)),
        }
    }
}

#[async_trait]
impl IntegrationStore for DynamoStore {
    async fn create_integration(&self, i: &Integration) -> Result<(), StoreError> {
        let attrs = item(keys::integration(&i.tenant_id, &i.id), None, i)?;
        self.put_if(
            attrs,
            "attribute_not_exists(pk)",
            vec![],
            StoreError::AlreadyExists,
        )
        .await
    }
    async fn delete_integration(&self, t: &str, id: &str) -> Result<(), StoreError> {
        self.delete(keys::integration(t, id)).await
    }
    async fn replace_integration(&self, i: &Integration) -> Result<(), StoreError> {
        let attrs = item(keys::integration(&i.tenant_id, &i.id), None, i)?;
        let prev = i.revision.saturating_sub(1);
        // Records written before revisions existed have none: revision 0.
        let condition = if prev == 0 {
            "attribute_exists(pk) AND (attribute_not_exists(revision) OR revision = :prev)"
        } else {
            "attribute_exists(pk) AND revision = :prev"
        };
        let prev = AttributeValue::N(prev.to_string());
        self.put_if(
            attrs,
            condition,
            vec![(":prev", prev)],
            StoreError::Conflict,
        )
        .await
    }
}

#[async_trait]
impl IntegrationReader for DynamoStore {
    async fn get_integration(&self, t: &str, id: &str) -> Result<Option<Integration>, StoreError> {
        self.get(keys::integration(t, id)).await
    }
}

#[async_trait]
impl IntegrationCatalog for DynamoStore {
    async fn list_integrations(&self, t: &str) -> Result<Vec<Integration>, StoreError> {
        self.query_prefix(t, keys::INTEGRATION_PREFIX).await
    }
}

#[async_trait]
impl FlowStarter for DynamoStore {
    async fn put_flow(&self, f: &PendingFlow) -> Result<(), StoreError> {
        let ttl = Some(f.expires_at + TTL_GRACE_SECONDS);
        let flow = item(keys::flow(&f.state_sha256), ttl, f)?;
        if f.session_sha256.is_empty() {
            return self.put(flow).await;
        }
        // One transaction: the flow, and its session marked as having a
        // flow at the provider (its last outcome cleared).
        let session = aws_sdk_dynamodb::types::Update::builder()
            .table_name(&self.table)
            .set_key(Some(key_attrs(keys::session(&f.session_sha256))))
            // A spent session's outcome is its connection's: never cleared.
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(spent_by)")
            .update_expression("SET flow_until = :until REMOVE #result")
            .expression_attribute_names("#result", "result")
            .expression_attribute_values(":until", AttributeValue::N(f.expires_at.to_string()))
            .build()
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let items = vec![
            self.transact_put(flow, None)?,
            TransactWriteItem::builder().update(session).build(),
        ];
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err) => match cancellation_codes(&err) {
                Some(codes) if codes.get(1) == Some(&"ConditionalCheckFailed") => {
                    Err(StoreError::Conflict)
                }
                _ => Err(classify_transact(err)),
            },
        }
    }
}

#[async_trait]
impl FlowStore for DynamoStore {
    async fn take_flow(
        &self,
        state_sha256: &str,
        binding_sha256: &str,
        now: i64,
        intent_until: i64,
    ) -> Result<Option<PendingFlow>, StoreError> {
        // One conditional update: exactly one of any number of concurrent
        // callbacks gets the flow, only the browser that holds the binding
        // cookie can consume it, and the consumed flow stays behind as the
        // callback's intent, in the due index, until the callback finishes.
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_attrs(keys::flow(state_sha256))))
            .condition_expression(
                "attribute_exists(pk) AND binding_sha256 = :b AND attribute_not_exists(consumed_at)",
            )
            // The code is about to be spent: the verifier is of no more use,
            // so the intent does not keep it.
            .update_expression(
                "SET consumed_at = :now, due_shard = :shard, due_at = :due, #ttl = :ttl, pkce_verifier = :spent",
            )
            .expression_attribute_values(":spent", AttributeValue::S(String::new()))
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":b", AttributeValue::S(binding_sha256.to_string()))
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .expression_attribute_values(":shard", AttributeValue::S(INTENT_SHARD.into()))
            .expression_attribute_values(":due", AttributeValue::N(intent_until.to_string()))
            .expression_attribute_values(
                ":ttl",
                AttributeValue::N((intent_until + 7 * 86_400).to_string()),
            )
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        old_flow(res.map(|out| out.attributes))
    }
    async fn record_intent(&self, state_sha256: &str, intent: &str) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_attrs(keys::flow(state_sha256))))
            .condition_expression("attribute_exists(consumed_at)")
            .update_expression("SET intent = :i")
            .expression_attribute_values(":i", AttributeValue::S(intent.to_string()))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Err(StoreError::Conflict),
            Err(e) => Err(classify(e)),
        }
    }
    async fn finish_flow(&self, state_sha256: &str) -> Result<(), StoreError> {
        self.delete(keys::flow(state_sha256)).await
    }
    async fn burn_flow(&self, state_sha256: &str) -> Result<Option<PendingFlow>, StoreError> {
        // Conditional: a consumed flow is a callback's intent, left alone.
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_attrs(keys::flow(state_sha256))))
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(consumed_at)")
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        old_flow(res.map(|out| out.attributes))
    }
}

#[async_trait]
impl IntentSweep for DynamoStore {
    async fn due_intents(&self, until: i64, limit: usize) -> Result<Vec<PendingFlow>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(keys::DUE_INDEX)
            .key_condition_expression("due_shard = :s AND due_at <= :until")
            .expression_attribute_values(":s", AttributeValue::S(INTENT_SHARD.into()))
            .expression_attribute_values(":until", AttributeValue::N(until.to_string()))
            .limit(limit.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(classify)?;
        let mut flows = Vec::new();
        for key in out.items.unwrap_or_default() {
            let pk = key.get("pk").and_then(|v| v.as_s().ok());
            let Some(state) = pk.and_then(|pk| pk.strip_prefix("FLOW#")) else {
                continue;
            };
            if let Some(f) = self.get::<PendingFlow>(keys::flow(state)).await? {
                flows.push(f);
            }
        }
        Ok(flows)
    }
}

impl DynamoStore {
    /// Every item of a tenant's partition whose sort key starts with `prefix`.
    async fn query_prefix<T: DeserializeOwned>(
        &self,
        tenant: &str,
        prefix: &str,
    ) -> Result<Vec<T>, StoreError> {
        let pages = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", AttributeValue::S(keys::tenant(tenant)))
            .expression_attribute_values(":prefix", AttributeValue::S(prefix.into()))
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

#[async_trait]
impl CustomProviderStore for DynamoStore {
    async fn create_custom_provider(&self, p: &CustomProviderRecord) -> Result<(), StoreError> {
        let attrs = item(keys::custom_provider(&p.tenant_id, &p.id), None, p)?;
        self.put_if(
            attrs,
            "attribute_not_exists(pk)",
            vec![],
            StoreError::AlreadyExists,
        )
        .await
    }
    async fn list_custom_providers(
        &self,
        t: &str,
    ) -> Result<Vec<CustomProviderRecord>, StoreError> {
        self.query_prefix(t, keys::CUSTOM_PROVIDER_PREFIX).await
    }
    async fn delete_custom_provider(&self, t: &str, id: &str) -> Result<(), StoreError> {
        self.delete(keys::custom_provider(t, id)).await
    }
}

#[async_trait]
impl CustomProviderReader for DynamoStore {
    async fn get_custom_provider(
        &self,
        t: &str,
        id: &str,
    ) -> Result<Option<CustomProviderRecord>, StoreError> {
        self.get(keys::custom_provider(t, id)).await
    }
}

fn event_item(e: &Event) -> Result<Attrs, StoreError> {
    item(
        keys::event(&e.tenant_id, &e.connection_id, &e.id),
        Some(e.expires_at),
        e,
    )
}

/// How a transaction ended, when it did not fail.
enum Transact {
    Done,
    /// The first item's condition did not hold.
    Refused,
}

impl DynamoStore {
    /// A transaction's Put of one item, with its condition if any.
    fn transact_put(
        &self,
        attrs: Attrs,
        condition: Option<&str>,
    ) -> Result<TransactWriteItem, StoreError> {
        Put::builder()
            .table_name(&self.table)
            .set_item(Some(attrs))
            .set_condition_expression(condition.map(str::to_string))
            .build()
            .map(|p| TransactWriteItem::builder().put(p).build())
            .map_err(|e| StoreError::Backend(e.to_string()))
    }

    /// One TransactWriteItems: `first` (the conditional record write) and
    /// a Put of each event. All land or none does. No counter rides in it
    /// ([`StatsStore::add_counts`] follows the commit), so commits of one
    /// integration's connections never contend on its counter item.
    async fn transact(
        &self,
        first: TransactWriteItem,
        events: &[Event],
    ) -> Result<Transact, StoreError> {
        let mut items = vec![first];
        for e in events {
            items.push(self.transact_put(event_item(e)?, None)?);
        }
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(Transact::Done),
            Err(err) => {
                if let Some(codes) = cancellation_codes(&err) {
                    if codes.first() == Some(&"ConditionalCheckFailed") {
                        return Ok(Transact::Refused);
                    }
                    // Another transaction on the record at the same moment:
                    // as a lost conditional write, the caller re-reads.
                    if codes.contains(&"TransactionConflict") {
                        return Err(StoreError::Conflict);
                    }
                    if codes
                        .iter()
                        .any(|c| matches!(*c, "ThrottlingError" | "ProvisionedThroughputExceeded"))
                    {
                        return Err(StoreError::Unavailable(format!(
                            "transaction throttled: {codes:?}"
                        )));
                    }
                }
                Err(classify_transact(err))
            }
        }
    }
}

/// The per-item reasons of a cancelled transaction (`None` when it failed
/// otherwise).
fn cancellation_codes<R>(err: &SdkError<TransactWriteItemsError, R>) -> Option<Vec<&str>> {
    match err.as_service_error()? {
        TransactWriteItemsError::TransactionCanceledException(c) => Some(
            c.cancellation_reasons()
                .iter()
                .map(|r| r.code().unwrap_or("None"))
                .collect(),
        ),
        _ => None,
    }
}

fn classify_transact<R>(err: SdkError<TransactWriteItemsError, R>) -> StoreError
where
    R: std::fmt::Debug + Send + Sync + 'static,
{
    crate::classify_sdk_error(
        err,
        &[
            "ProvisionedThroughputExceededException",
            "ThrottlingException",
            "RequestLimitExceeded",
            "InternalServerError",
            "ServiceUnavailable",
            "TransactionInProgressException",
        ],
    )
}

/// The Update of one counter item: ADD the counts, SET the times and TTL.
fn stats_update(
    table: &str,
    tenant: &str,
    scope: &domain::stats::Scope,
    day: &str,
    tally: &domain::stats::Tally,
) -> Result<aws_sdk_dynamodb::types::Update, StoreError> {
    use aws_sdk_dynamodb::types::Update;
    let mut names = HashMap::new();
    let mut values = HashMap::new();
    let mut sets = vec!["#ttl = :ttl".to_string()];
    let mut adds = Vec::new();
    for (i, (k, v)) in tally.set.iter().enumerate() {
        names.insert(format!("#s{i}"), k.clone());
        values.insert(format!(":s{i}"), AttributeValue::N(v.to_string()));
        sets.push(format!("#s{i} = :s{i}"));
    }
    for (i, (k, v)) in tally.add.iter().enumerate() {
        names.insert(format!("#a{i}"), k.clone());
        values.insert(format!(":a{i}"), AttributeValue::N(v.to_string()));
        adds.push(format!("#a{i} :a{i}"));
    }
    names.insert("#ttl".into(), "ttl".into());
    let expires = tally.set.values().max().copied().unwrap_or(0)
        + domain::stats::STATS_RETENTION_DAYS * 86_400;
    values.insert(":ttl".into(), AttributeValue::N(expires.to_string()));
    let mut expr = format!("SET {}", sets.join(", "));
    if !adds.is_empty() {
        expr.push_str(&format!(" ADD {}", adds.join(", ")));
    }
    Update::builder()
        .table_name(table)
        .set_key(Some(key_attrs(keys::stats(tenant, scope, day))))
        .update_expression(expr)
        .set_expression_attribute_names(Some(names))
        .set_expression_attribute_values(Some(values))
        .build()
        .map_err(|e| StoreError::Backend(e.to_string()))
}

#[async_trait]
impl Counters for DynamoStore {
    async fn add_counts(&self, events: &[Event]) -> Result<(), StoreError> {
        let mut updates = Vec::new();
        for (tenant, scope, day, tally) in domain::stats::tallies(events) {
            updates.push(stats_update(&self.table, &tenant, &scope, &day, &tally)?);
        }
        self.add_counters(updates).await
    }
}

#[async_trait]
impl StatsReader for DynamoStore {
    async fn stats_days(
        &self,
        t: &str,
        scope: &domain::stats::Scope,
        from: &str,
        to: &str,
    ) -> Result<Vec<domain::stats::Day>, StoreError> {
        let (pk, _) = keys::stats(t, scope, from);
        let pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
            .expression_attribute_values(":pk", AttributeValue::S(pk))
            .expression_attribute_values(":from", AttributeValue::S(from.into()))
            .expression_attribute_values(":to", AttributeValue::S(to.into()))
            .into_paginator()
            .items()
            .send()
            .collect::<Vec<_>>()
            .await;
        let mut days = Vec::new();
        for item in pages {
            let item = item.map_err(classify)?;
            let day = item
                .get("sk")
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_default();
            let counters = item
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "pk" | "sk" | "ttl"))
                .filter_map(|(k, v)| Some((k.clone(), v.as_n().ok()?.parse::<i64>().ok()?)))
                .collect();
            days.push((day, counters));
        }
        Ok(days)
    }
}

#[async_trait]
impl EventWriter for DynamoStore {
    async fn put_events(&self, events: &[Event]) -> Result<(), StoreError> {
        for chunk in events.chunks(25) {
            let mut requests = Vec::with_capacity(chunk.len());
            for e in chunk {
                let put = PutRequest::builder()
                    .set_item(Some(event_item(e)?))
                    .build()
                    .map_err(|e| StoreError::Backend(e.to_string()))?;
                requests.push(WriteRequest::builder().put_request(put).build());
            }
            let mut pending = HashMap::from([(self.table.clone(), requests)]);
            // Unprocessed items (throttling) are tried again, a few times.
            for _ in 0..4 {
                let out = self
                    .client
                    .batch_write_item()
                    .set_request_items(Some(pending))
                    .send()
                    .await
                    .map_err(classify)?;
                pending = out.unprocessed_items.unwrap_or_default();
                pending.retain(|_, v| !v.is_empty());
                if pending.is_empty() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            if !pending.is_empty() {
                return Err(StoreError::Unavailable("events left unprocessed".into()));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl AuditLog for DynamoStore {
    async fn record_read(&self, event: &Event) -> Result<(), StoreError> {
        self.put(event_item(event)?).await
    }
}

#[async_trait]
impl OperationLog for DynamoStore {
    async fn record_operation(&self, events: &[Event]) -> Result<(), StoreError> {
        // The events and the connection's counters in one transaction; the
        // integration's counter item, which every refresh and test of the
        // integration's connections also writes in their transactions, by
        // a plain UpdateItem: a plain write never cancels a transaction
        // (it is the one refused while one is in flight), so a busy proxy
        // cannot make refreshes fail with TransactionConflict.
        let mut items = Vec::with_capacity(events.len() + 1);
        for e in events {
            items.push(self.transact_put(event_item(e)?, None)?);
        }
        let mut apart = Vec::new();
        for (tenant, scope, day, tally) in domain::stats::tallies(events) {
            let update = stats_update(&self.table, &tenant, &scope, &day, &tally)?;
            match scope {
                domain::stats::Scope::Connection(_) => {
                    items.push(TransactWriteItem::builder().update(update).build())
                }
                domain::stats::Scope::Integration(_) => apart.push(update),
            }
        }
        // Different items: both writes at once.
        let transaction = async {
            if items.is_empty() {
                return Ok(());
            }
            self.client
                .transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await
                .map(|_| ())
                .map_err(classify_transact)
        };
        let (done, apart) = tokio::join!(transaction, self.add_counters(apart));
        done?;
        apart
    }
}

#[async_trait]
impl EventLog for DynamoStore {
    async fn get_event(&self, t: &str, c: &str, id: &str) -> Result<Option<Event>, StoreError> {
        self.get(keys::event(t, c, id)).await
    }
    async fn list_events(
        &self,
        t: &str,
        c: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        let mut req = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression(if before.is_some() {
                "pk = :pk AND sk < :before"
            } else {
                "pk = :pk"
            })
            .expression_attribute_values(":pk", AttributeValue::S(keys::events(t, c)))
            .scan_index_forward(false)
            .limit(limit.clamp(1, 1000) as i32);
        if let Some(b) = before {
            req = req.expression_attribute_values(":before", AttributeValue::S(b.into()));
        }
        let out = req.send().await.map_err(classify)?;
        let events: Vec<Event> = out
            .items
            .unwrap_or_default()
            .into_iter()
            .map(record)
            .collect::<Result<_, _>>()?;
        let next = out
            .last_evaluated_key
            .is_some()
            .then(|| events.last().map(|e| e.id.clone()))
            .flatten();
        Ok(EventPage { events, next })
    }
}

#[async_trait]
impl WebhookEndpointAdmin for DynamoStore {
    async fn create_webhook_endpoint(&self, e: &WebhookEndpoint) -> Result<(), StoreError> {
        let attrs = item(keys::webhook_endpoint(&e.tenant_id, &e.id), None, e)?;
        self.put_if(
            attrs,
            "attribute_not_exists(pk)",
            vec![],
            StoreError::AlreadyExists,
        )
        .await
    }
    async fn delete_webhook_endpoint(&self, t: &str, id: &str) -> Result<(), StoreError> {
        self.delete(keys::webhook_endpoint(t, id)).await
    }
}

#[async_trait]
impl WebhookEndpoints for DynamoStore {
    async fn get_webhook_endpoint(
        &self,
        t: &str,
        id: &str,
    ) -> Result<Option<WebhookEndpoint>, StoreError> {
        self.get(keys::webhook_endpoint(t, id)).await
    }
    async fn list_webhook_endpoints(&self, t: &str) -> Result<Vec<WebhookEndpoint>, StoreError> {
        self.query_prefix(t, keys::WEBHOOK_PREFIX).await
    }
    async fn replace_webhook_endpoint(&self, e: &WebhookEndpoint) -> Result<(), StoreError> {
        let attrs = item(keys::webhook_endpoint(&e.tenant_id, &e.id), None, e)?;
        match self
            .put_if(
                attrs,
                "version = :v",
                vec![(":v", AttributeValue::N((e.version - 1).to_string()))],
                StoreError::Conflict,
            )
            .await
        {
            Err(StoreError::Conflict) => {
                match self.get_webhook_endpoint(&e.tenant_id, &e.id).await? {
                    None => Err(StoreError::Missing),
                    Some(_) => Err(StoreError::Conflict),
                }
            }
            other => other,
        }
    }
}

#[derive(Serialize)]
struct DeliverySeen<'a> {
    tenant_id: &'a str,
    integration_id: &'a str,
    events: usize,
}

#[async_trait]
impl ProviderWebhookStore for DynamoStore {
    async fn connections_by_match(
        &self,
        key: &str,
        limit: usize,
    ) -> Result<Vec<Connection>, StoreError> {
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(keys::WEBHOOK_MATCH_INDEX)
            .key_condition_expression("webhook_match = :m")
            .expression_attribute_values(":m", AttributeValue::S(key.into()))
            .into_paginator()
            .items()
            .send();
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(item) = pages.next().await else {
                break;
            };
            out.push(record(item.map_err(classify)?)?);
        }
        Ok(out)
    }
    async fn record_provider_delivery(
        &self,
        t: &str,
        integration: &str,
        dedupe: &[String],
        expires_at: i64,
        events: &[Event],
    ) -> Result<bool, StoreError> {
        let seen = DeliverySeen {
            tenant_id: t,
            integration_id: integration,
            events: events.len(),
        };
        // Only Puts: the delivery's records, each conditional, then its
        // events (provider events add to no counter).
        let mut items = Vec::with_capacity(dedupe.len() + events.len());
        for k in dedupe {
            let attrs = item(
                keys::provider_delivery(t, integration, k),
                Some(expires_at),
                &seen,
            )?;
            items.push(self.transact_put(attrs, Some("attribute_not_exists(pk)"))?);
        }
        for e in events {
            items.push(self.transact_put(event_item(e)?, None)?);
        }
        let err = match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => return Ok(true),
            Err(err) => err,
        };
        if let Some(codes) = cancellation_codes(&err) {
            if codes
                .iter()
                .take(dedupe.len())
                .any(|c| *c == "ConditionalCheckFailed")
            {
                return Ok(false);
            }
            // The same delivery committing at this moment, or throttling:
            // the provider's retry settles it.
            return Err(StoreError::Unavailable(format!(
                "transaction cancelled: {codes:?}"
            )));
        }
        Err(classify_transact(err))
    }
}

/// The item a record is stored as (its keys, and the due index's partition
/// when it is due): tests seed records in a state no transition makes.
pub fn connection_item(c: &Connection) -> Result<Attrs, StoreError> {
    let mut attrs = item(keys::connection(c.tenant_id(), c.id()), None, c)?;
    // Sparse due index: only connections the sweep should refresh carry its key.
    if c.due_at().is_some() {
        attrs.insert("due_shard".into(), AttributeValue::S(due_shard(c.id())));
    }
    Ok(attrs)
}

/// The flow a conditional write took or removed (its old attributes);
/// `None` when its condition did not hold.
fn old_flow<E, R>(
    res: Result<Option<Attrs>, SdkError<E, R>>,
) -> Result<Option<PendingFlow>, StoreError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match res {
        Ok(attrs) => attrs.filter(|a| !a.is_empty()).map(record).transpose(),
        Err(e) if is_condition_failure(&e) => Ok(None),
        Err(e) => Err(classify(e)),
    }
}

fn is_condition_failure<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.as_service_error().and_then(|s| s.code()) == Some("ConditionalCheckFailedException")
}

/// The condition expression and values that enforce `fence`.
fn fence_condition(fence: Fence<'_>) -> (&'static str, Vec<(&'static str, AttributeValue)>) {
    match fence {
        Fence::Absent => ("attribute_not_exists(pk)", vec![]),
        Fence::Version(v) => (
            "version = :v",
            vec![(":v", AttributeValue::N(v.to_string()))],
        ),
        Fence::Leased { version, owner } => (
            "version = :v AND lease_owner = :o",
            vec![
                (":v", AttributeValue::N(version.to_string())),
                (":o", AttributeValue::S(owner.into())),
            ],
        ),
    }
}

impl DynamoStore {
    pub(crate) async fn put_connection(
        &self,
        c: &Connection,
        fence: Fence<'_>,
        events: &[Event],
    ) -> Result<(), StoreError> {
        let (condition, values) = fence_condition(fence);
        let refused = match fence {
            Fence::Absent => StoreError::AlreadyExists,
            _ => StoreError::Conflict,
        };
        if events.is_empty() {
            return self
                .put_if(connection_item(c)?, condition, values, refused)
                .await;
        }
        let mut put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(connection_item(c)?))
            .condition_expression(condition);
        for (name, v) in values {
            put = put.expression_attribute_values(name, v);
        }
        let first = TransactWriteItem::builder()
            .put(
                put.build()
                    .map_err(|e| StoreError::Backend(e.to_string()))?,
            )
            .build();
        match self.transact(first, events).await? {
            Transact::Done => Ok(()),
            Transact::Refused => Err(refused),
        }
    }

    pub(crate) async fn delete_connection(
        &self,
        t: &str,
        id: &str,
        fence: Fence<'_>,
        events: &[Event],
    ) -> Result<(), StoreError> {
        let (condition, values) = fence_condition(fence);
        if !events.is_empty() {
            // Events only with a record to delete: the fence alone, and a
            // refused fence on a record that is gone is "already gone".
            let mut del = Delete::builder()
                .table_name(&self.table)
                .set_key(Some(key_attrs(keys::connection(t, id))))
                .condition_expression(condition);
            for (name, v) in values {
                del = del.expression_attribute_values(name, v);
            }
            let first = TransactWriteItem::builder()
                .delete(
                    del.build()
                        .map_err(|e| StoreError::Backend(e.to_string()))?,
                )
                .build();
            return match self.transact(first, events).await? {
                Transact::Done => Ok(()),
                Transact::Refused => match self.get_connection(t, id).await? {
                    None => Ok(()),
                    Some(_) => Err(StoreError::Conflict),
                },
            };
        }
        let mut req = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_attrs(keys::connection(t, id))))
            // A record that is already gone stays gone: not an error.
            .condition_expression(format!("attribute_not_exists(pk) OR ({condition})"));
        for (name, v) in values {
            req = req.expression_attribute_values(name, v);
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Err(StoreError::Conflict),
            Err(e) => Err(classify(e)),
        }
    }
}

impl DynamoStore {
    /// Takes the lease for `owner` until `until`, unless another holds one
    /// that has not expired at `now` (one conditional update).
    pub(crate) async fn lease(
        &self,
        t: &str,
        id: &str,
        owner: &str,
        until: i64,
        now: i64,
    ) -> Result<Lease, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_attrs(keys::connection(t, id))))
            // The version moves with the lease, so a write based on a read
            // from before the lease was taken (or released) fails its
            // version check instead of clobbering the lease.
            .update_expression("SET lease_owner = :o, lease_until = :u, version = version + :one")
            .condition_expression("attribute_exists(pk) AND (attribute_not_exists(lease_until) OR lease_until < :now)")
            .expression_attribute_values(":o", AttributeValue::S(owner.into()))
            .expression_attribute_values(":u", AttributeValue::N(until.to_string()))
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match res {
            Ok(out) => Ok(Lease::Acquired(record(out.attributes.unwrap_or_default())?)),
            Err(e) if is_condition_failure(&e) => Ok(match self.get_connection(t, id).await? {
                Some(c) => Lease::Busy(c),
                None => Lease::Missing,
            }),
            Err(e) => Err(classify(e)),
        }
    }

    /// Releases the lease if `owner` still holds it (one conditional update).
    pub(crate) async fn release(&self, t: &str, id: &str, owner: &str) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_attrs(keys::connection(t, id))))
            .update_expression("REMOVE lease_owner, lease_until SET version = version + :one")
            .condition_expression("lease_owner = :o")
            .expression_attribute_values(":o", AttributeValue::S(owner.into()))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Ok(()),
            Err(e) => Err(classify(e)),
        }
    }
}

#[async_trait]
impl ConnectionStore for DynamoStore {
    async fn commit(&self, write: &RecordWrite) -> Result<(), StoreError> {
        match write.op() {
            RecordOp::Put { record, fence } => {
                self.put_connection(record, fence, write.events()).await
            }
            RecordOp::Delete { .. } => Err(StoreError::Backend(
                "a delete goes through delete_record".into(),
            )),
        }
    }
    async fn get_connection(&self, t: &str, id: &str) -> Result<Option<Connection>, StoreError> {
        self.get(keys::connection(t, id)).await
    }
    async fn try_lease(&self, request: &LeaseRequest) -> Result<Lease, StoreError> {
        self.lease(
            request.tenant_id(),
            request.id(),
            request.owner(),
            request.until(),
            request.now(),
        )
        .await
    }
    async fn release_lease(&self, release: &LeaseRelease) -> Result<(), StoreError> {
        self.release(release.tenant_id(), release.id(), release.owner())
            .await
    }
}

#[async_trait]
impl ConnectionRemoval for DynamoStore {
    async fn delete_record(&self, write: &RecordWrite) -> Result<(), StoreError> {
        match write.op() {
            RecordOp::Delete {
                tenant_id,
                id,
                fence,
            } => {
                self.delete_connection(tenant_id, id, fence, write.events())
                    .await
            }
            RecordOp::Put { .. } => Err(StoreError::Backend("a put goes through commit".into())),
        }
    }
}

#[async_trait]
impl ConnectionIndex for DynamoStore {
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
    async fn list_connections_page(
        &self,
        t: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ConnectionPage, StoreError> {
        // Ids are [a-z0-9_]: "\u{1}" sorts right after an id, and every
        // "CONNECTION#..." key sorts before "CONNECTION$".
        let lo = match after {
            Some(a) => format!("{}{a}\u{1}", keys::CONNECTION_PREFIX),
            None => keys::CONNECTION_PREFIX.to_string(),
        };
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
            .expression_attribute_values(":pk", AttributeValue::S(keys::tenant(t)))
            .expression_attribute_values(":lo", AttributeValue::S(lo))
            .expression_attribute_values(":hi", AttributeValue::S("CONNECTION$".into()))
            .limit(limit.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(classify)?;
        let connections: Vec<Connection> = out
            .items
            .unwrap_or_default()
            .into_iter()
            .map(record)
            .collect::<Result<_, _>>()?;
        let next = out
            .last_evaluated_key
            .is_some()
            .then(|| connections.last().map(|c| c.id().to_string()))
            .flatten();
        Ok(ConnectionPage { connections, next })
    }
}

#[async_trait]
impl DueConnections for DynamoStore {
    async fn due_connections(
        &self,
        until: i64,
        tenant: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        // Each shard is read in due order up to `limit`; the merge keeps the
        // most overdue across shards.
        let mut out: Vec<(i64, String, String)> = Vec::new();
        for shard in 0..DUE_SHARDS {
            let mut taken = 0;
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(keys::DUE_INDEX)
                .key_condition_expression("due_shard = :s AND due_at <= :until")
                .expression_attribute_values(":s", AttributeValue::S(format!("DUE#{shard}")))
                .expression_attribute_values(":until", AttributeValue::N(until.to_string()));
            if let Some(t) = tenant {
                q = q
                    .filter_expression("pk = :pk")
                    .expression_attribute_values(":pk", AttributeValue::S(keys::tenant(t)));
            }
            let mut pages = q.into_paginator().items().send();
            while let Some(item) = pages.next().await {
                let item = item.map_err(classify)?;
                let pk = item.get("pk").and_then(|v| v.as_s().ok());
                let sk = item.get("sk").and_then(|v| v.as_s().ok());
                let due = item
                    .get("due_at")
                    .and_then(|v| v.as_n().ok())
                    .and_then(|n| n.parse().ok());
                if let (Some(pk), Some(sk), Some(due)) = (pk, sk, due) {
                    if let (Some(t), Some(id)) = (
                        pk.strip_prefix("TENANT#"),
                        sk.strip_prefix(keys::CONNECTION_PREFIX),
                    ) {
                        out.push((due, t.to_string(), id.to_string()));
                        taken += 1;
                    }
                }
                if taken >= limit {
                    break;
                }
            }
        }
        out.sort();
        Ok(out
            .into_iter()
            .take(limit)
            .map(|(_, t, id)| (t, id))
            .collect())
    }
}

#[async_trait]
impl WriteBudget for DynamoStore {
    async fn take_secret_write(&self, second: i64, limit: u32) -> Result<bool, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_attrs(keys::secret_write_budget(second))))
            .update_expression("SET n = if_not_exists(n, :zero) + :one, #ttl = :ttl")
            .condition_expression("attribute_not_exists(n) OR n < :limit")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":zero", AttributeValue::N("0".into()))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .expression_attribute_values(":limit", AttributeValue::N(limit.to_string()))
            .expression_attribute_values(":ttl", AttributeValue::N((second + 3600).to_string()))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(classify(e)),
        }
    }
}

impl DynamoStore {
    /// Adds counter updates by plain UpdateItem, each tried up to three
    /// times when a transaction holds its item or the table throttles.
    async fn add_counters(
        &self,
        apart: Vec<aws_sdk_dynamodb::types::Update>,
    ) -> Result<(), StoreError> {
        for u in apart {
            let mut tries = 0;
            loop {
                tries += 1;
                let sent = self
                    .client
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(u.key().clone()))
                    .update_expression(u.update_expression())
                    .set_expression_attribute_names(u.expression_attribute_names().cloned())
                    .set_expression_attribute_values(u.expression_attribute_values().cloned())
                    .send()
                    .await;
                let sent = sent.map_err(|e| {
                    crate::classify_sdk_error(
                        e,
                        &[
                            "TransactionConflictException",
                            "ProvisionedThroughputExceededException",
                            "ThrottlingException",
                            "RequestLimitExceeded",
                            "InternalServerError",
                        ],
                    )
                });
                match sent {
                    Ok(_) => break,
                    Err(StoreError::Unavailable(_)) if tries < 3 => {
                        tokio::time::sleep(std::time::Duration::from_millis(20 * tries)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
    use wiremock::matchers::{body_string_contains, header, method};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    async fn store(server: &MockServer) -> DynamoStore {
        let tls = domain::tls::client_config(&domain::tls::TlsSettings::default()).unwrap();
        let conf = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("k", "s", None, None, "test"))
            .endpoint_url(server.uri())
            .http_client(crate::aws_http::http_client(tls))
            .build();
        DynamoStore::new(Client::from_conf(conf), "t")
    }

    fn answer(body: serde_json::Value) -> ResponseTemplate {
        ResponseTemplate::new(200)
            .insert_header("content-type", "application/x-amz-json-1.0")
            .set_body_string(body.to_string())
    }

    fn key(pk: &str) -> (String, String) {
        (pk.to_string(), "s".to_string())
    }

    #[tokio::test]
    async fn batch_get_asks_again_for_the_keys_left_unprocessed() {
        let server = MockServer::start().await;
        // First round: A served, B left unprocessed (throttled).
        Mock::given(method("POST"))
            .and(header("x-amz-target", "DynamoDB_20120810.BatchGetItem"))
            .and(body_string_contains("\"A\""))
            .respond_with(answer(serde_json::json!({
                "Responses": {"t": [{"pk": {"S": "A"}, "sk": {"S": "s"}, "v": {"S": "1"}}]},
                "UnprocessedKeys": {"t": {"Keys": [{"pk": {"S": "B"}, "sk": {"S": "s"}}], "ConsistentRead": true}}
            })))
            .expect(1)
            .mount(&server)
            .await;
        // Second round asks for B alone.
        Mock::given(method("POST"))
            .and(body_string_contains("\"B\""))
            .respond_with(answer(serde_json::json!({
                "Responses": {"t": [{"pk": {"S": "B"}, "sk": {"S": "s"}, "v": {"S": "2"}}]},
                "UnprocessedKeys": {}
            })))
            .expect(1)
            .mount(&server)
            .await;
        let found = store(&server)
            .await
            .batch_get(vec![key("A"), key("B")])
            .await
            .unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[&key("B")]["v"], AttributeValue::S("2".into()));
        let asked: Vec<String> = server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect();
        assert!(asked[0].contains("\"ConsistentRead\":true"), "{}", asked[0]);
    }

    #[tokio::test]
    async fn batch_get_keys_unprocessed_in_every_round_are_unavailable_not_missing() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(answer(serde_json::json!({
                "Responses": {"t": []},
                "UnprocessedKeys": {"t": {"Keys": [{"pk": {"S": "A"}, "sk": {"S": "s"}}]}}
            })))
            .expect(u64::from(BATCH_GET_ATTEMPTS))
            .mount(&server)
            .await;
        let err = store(&server)
            .await
            .batch_get(vec![key("A")])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    }
}
