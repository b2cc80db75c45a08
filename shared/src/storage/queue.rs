//! The delivery queue: an SQS FIFO queue whose message groups are
//! `(endpoint, connection)`, so one connection's events reach one endpoint
//! in order, and a failing delivery holds back only its own group. Events
//! of no one connection (a provider webhook no connection matched) group
//! by the provider account they name, else each is its own group: one
//! refused event never holds back an integration's whole stream.

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
        let e = &self.event;
        let of = if !e.connection_id.is_empty() {
            e.connection_id.clone()
        } else {
            match e.data.get("account").and_then(|a| a.as_str()) {
                Some(account) => format!("integration:{}:account:{account}", e.integration_id),
                None => format!("event:{}", e.id),
            }
        };
        format!("{}:{}", self.endpoint_id, &sha256_hex(&of)[..32])
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

/// Bytes of message bodies one SendMessageBatch carries at most (SQS caps a
/// batch's total as it caps one message).
const BATCH_BYTES: usize = 240 * 1024;

/// Indexes of `bodies` in order, in batches of at most 10 messages and
/// [`BATCH_BYTES`] (a message bigger than that goes alone).
fn batches(bodies: &[String]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut size = 0;
    for (i, b) in bodies.iter().enumerate() {
        match out.last_mut() {
            Some(last) if last.len() < 10 && size + b.len() <= BATCH_BYTES => {
                last.push(i);
                size += b.len();
            }
            _ => {
                out.push(vec![i]);
                size = b.len();
            }
        }
    }
    out
}

#[async_trait]
impl DeliveryQueue for SqsQueue {
    async fn enqueue(&self, deliveries: &[Delivery], redelivery: bool) -> Result<(), StoreError> {
        let bodies: Vec<String> = deliveries
            .iter()
            .map(|d| serde_json::to_string(d).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect::<Result<_, _>>()?;
        for chunk in batches(&bodies) {
            let mut entries = Vec::with_capacity(chunk.len());
            for (i, &n) in chunk.iter().enumerate() {
                let (d, body) = (&deliveries[n], bodies[n].clone());
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

#[cfg(test)]
mod batch_tests {
    use super::*;

    #[test]
    fn groups_order_a_connection_or_an_account_and_leave_other_events_apart() {
        let d = |connection: &str, account: Option<&str>, id: &str| {
            let mut event = crate::events::Event {
                id: id.into(),
                tenant_id: "t".into(),
                connection_id: connection.into(),
                integration_id: "stripe-in".into(),
                end_user_id: String::new(),
                kind: crate::events::EventKind::ProviderEvent,
                outcome: crate::events::Outcome::Ok,
                error_code: None,
                duration_ms: None,
                attempt: None,
                at: 0,
                data: Default::default(),
                deliver: true,
                expires_at: 0,
            };
            if let Some(a) = account {
                event.data.insert("account".into(), serde_json::json!(a));
            }
            Delivery {
                tenant_id: "t".into(),
                endpoint_id: "ep".into(),
                event,
            }
        };
        assert_eq!(
            d("conn_1", None, "e1").group(),
            d("conn_1", Some("x"), "e2").group()
        );
        assert_ne!(
            d("conn_1", None, "e1").group(),
            d("conn_2", None, "e1").group()
        );
        assert_eq!(
            d("", Some("acct_1"), "e1").group(),
            d("", Some("acct_1"), "e2").group()
        );
        assert_ne!(
            d("", Some("acct_1"), "e1").group(),
            d("", Some("acct_2"), "e1").group()
        );
        assert_ne!(d("", None, "e1").group(), d("", None, "e2").group());
        assert!(d("", None, "e1").group().starts_with("ep:"));
    }

    #[test]
    fn batches_hold_ten_messages_and_a_bounded_size_in_order() {
        let small: Vec<String> = (0..12).map(|i| format!("m{i}")).collect();
        assert_eq!(
            batches(&small),
            vec![(0..10).collect::<Vec<_>>(), vec![10, 11]]
        );
        let big = vec!["x".repeat(100 * 1024); 3];
        assert_eq!(batches(&big), vec![vec![0, 1], vec![2]]);
        let huge = vec!["x".repeat(300 * 1024), "y".into()];
        assert_eq!(
            batches(&huge),
            vec![vec![0], vec![1]],
            "an oversized message goes alone"
        );
    }
}
