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
use serde::{Deserialize, Serialize};

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
}

/// Puts a received delivery back on the queue for later.
#[async_trait]
pub trait Redelivery: Send + Sync {
    /// Makes a received message visible again after `seconds`.
    async fn retry_later(&self, receipt: &str, seconds: u64) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
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
}
