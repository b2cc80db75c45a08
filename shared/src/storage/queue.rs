//! The delivery queue: an SQS FIFO queue whose message groups are
//! `(endpoint, connection)`, so one connection's events reach one endpoint
//! in order, and a failing delivery holds back only its own group.

use super::StoreError;
use crate::crypto::{random_bytes_hex, sha256_hex};
use crate::events::Event;
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// One event for one endpoint, as a queue message carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub tenant_id: String,
    pub endpoint_id: String,
    pub event: Event,
}

impl Delivery {
    /// The FIFO message group: deliveries of one group go out in order.
    pub fn group(&self) -> String {
        format!(
            "{}:{}",
            self.endpoint_id,
            sha256_hex(&self.event.connection_id)[..32].to_owned()
        )
    }

    /// The FIFO deduplication id: a stream batch delivered twice enqueues
    /// each delivery once; a redelivery asked for by the app is new.
    pub fn dedupe_id(&self, redelivery: bool) -> String {
        let base = format!("{}:{}", self.event.id, self.endpoint_id);
        if redelivery {
            sha256_hex(&format!("{base}:redeliver:{}", random_bytes_hex(8)))
        } else {
            sha256_hex(&base)
        }
    }
}

#[async_trait]
pub trait DeliveryQueue: Send + Sync {
    /// Enqueues `deliveries` in order (batched, 10 a call).
    async fn enqueue(&self, deliveries: &[Delivery], redelivery: bool) -> Result<(), StoreError>;
    /// Makes a received message visible again after `seconds`.
    async fn retry_later(&self, receipt: &str, seconds: u64) -> Result<(), StoreError>;
}

/// SQS adapter.
#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: Client,
    url: String,
}

impl SqsQueue {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }
}

fn classify<E, R>(err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    super::classify_sdk_error(
        err,
        &[
            "RequestThrottled",
            "ThrottlingException",
            "ServiceUnavailable",
            "InternalFailure",
            "KmsThrottled",
        ],
    )
}

#[async_trait]
impl DeliveryQueue for SqsQueue {
    async fn enqueue(&self, deliveries: &[Delivery], redelivery: bool) -> Result<(), StoreError> {
        for chunk in deliveries.chunks(10) {
            let mut entries = Vec::with_capacity(chunk.len());
            for (i, d) in chunk.iter().enumerate() {
                let body =
                    serde_json::to_string(d).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                entries.push(
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .message_group_id(d.group())
                        .message_deduplication_id(d.dedupe_id(redelivery))
                        .build()
                        .map_err(|e| StoreError::Backend(e.to_string()))?,
                );
            }
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(classify)?;
            // A partial failure is retried whole: the deduplication ids
            // keep the ones that landed from landing twice.
            if let Some(f) = out.failed().first() {
                return Err(StoreError::Unavailable(format!(
                    "SendMessageBatch entry failed: {}",
                    f.code()
                )));
            }
        }
        Ok(())
    }

    async fn retry_later(&self, receipt: &str, seconds: u64) -> Result<(), StoreError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(seconds.min(crate::webhooks::MAX_WAIT_SECONDS) as i32)
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }
}

/// In-memory queue for tests: records what was enqueued and delayed.
#[derive(Default)]
pub struct MemoryQueue {
    pub sent: Mutex<Vec<(Delivery, String, String)>>,
    pub delayed: Mutex<Vec<(String, u64)>>,
}

#[async_trait]
impl DeliveryQueue for MemoryQueue {
    async fn enqueue(&self, deliveries: &[Delivery], redelivery: bool) -> Result<(), StoreError> {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        for d in deliveries {
            let dedupe = d.dedupe_id(redelivery);
            if !sent.iter().any(|(_, _, id)| *id == dedupe) {
                sent.push((d.clone(), d.group(), dedupe));
            }
        }
        Ok(())
    }
    async fn retry_later(&self, receipt: &str, seconds: u64) -> Result<(), StoreError> {
        self.delayed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((receipt.to_string(), seconds));
        Ok(())
    }
}
