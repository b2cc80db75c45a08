//! An in-memory delivery queue: records what was enqueued and delayed.

use async_trait::async_trait;
use domain::storage::{Delivery, DeliveryQueue, Redelivery, StoreError};
use std::sync::Mutex;

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
}

#[async_trait]
impl Redelivery for MemoryQueue {
    async fn retry_later(&self, receipt: &str, seconds: u64) -> Result<(), StoreError> {
        self.delayed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((receipt.to_string(), seconds));
        Ok(())
    }
}
