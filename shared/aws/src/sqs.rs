//! The delivery queue's SQS adapter: a FIFO queue whose message groups
//! are the deliveries' [`Delivery::group`]s.

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use domain::storage::{Delivery, DeliveryQueue, Redelivery, StoreError};

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
    crate::classify_sdk_error(
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
}

#[async_trait]
impl Redelivery for SqsQueue {
    async fn retry_later(&self, receipt: &str, seconds: u64) -> Result<(), StoreError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(seconds.min(domain::webhooks::MAX_WAIT_SECONDS) as i32)
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
