//! One budget of Secrets Manager writes per second for every writer in the
//! deployment ([`crate::storage::WriteBudget`]), reserved before anything
//! is asked of a provider.

use crate::clock::Clock;
use crate::error::ApiError;
use crate::storage::{StoreError, WriteBudget};

/// How often a writer tries again for a slot in the write budget before it
/// gives up (answering 503), and how long it waits between tries: about a
/// second in all, so a full second's budget is followed by the next one's.
const BUDGET_TRIES: u32 = 5;
const BUDGET_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// The deployment-wide budget of secret writes, as a writer reserves from
/// it: only the [`WriteBudget`] port and the clock.
#[derive(Clone, Copy)]
pub struct SecretWrites<'a> {
    budget: &'a dyn WriteBudget,
    clock: &'a dyn Clock,
    per_second: u32,
}

impl<'a> SecretWrites<'a> {
    /// A budget of `per_second` writes, kept by `budget`.
    pub fn new(budget: &'a dyn WriteBudget, clock: &'a dyn Clock, per_second: u32) -> Self {
        Self {
            budget,
            clock,
            per_second,
        }
    }

    /// Reserves one Secrets Manager write in the deployment-wide budget
    /// ([`WriteBudget`]). Callers reserve *before* asking the provider for
    /// tokens, so a spent budget never strands a token the provider has
    /// already rotated. Tests: `a_spent_budget_is_a_clean_503_after_five_tries`,
    /// `a_write_is_reserved_in_the_current_second_under_the_configured_limit`.
    pub async fn reserve(&self) -> Result<(), ApiError> {
        for attempt in 0..BUDGET_TRIES {
            if self
                .budget
                .take_secret_write(self.clock.now(), self.per_second)
                .await?
            {
                return Ok(());
            }
            if attempt + 1 < BUDGET_TRIES {
                tokio::time::sleep(BUDGET_WAIT).await;
            }
        }
        tracing::warn!("secret write budget spent; refusing for now");
        Err(ApiError::Storage(StoreError::Unavailable(
            "secret write budget spent".into(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// The one port a writer reserves from, as a fake: refuses its first
    /// `refusals` takes, and records what each take asked for.
    struct Budget {
        refusals: usize,
        asked: Mutex<Vec<(i64, u32)>>,
    }

    impl Budget {
        fn refusing(refusals: usize) -> Self {
            Self {
                refusals,
                asked: Mutex::new(Vec::new()),
            }
        }
    }

    #[async_trait::async_trait]
    impl WriteBudget for Budget {
        async fn take_secret_write(&self, second: i64, limit: u32) -> Result<bool, StoreError> {
            let mut asked = self.asked.lock().unwrap();
            asked.push((second, limit));
            Ok(asked.len() > self.refusals)
        }
    }

    struct Fixed;
    impl Clock for Fixed {
        fn now(&self) -> i64 {
            1_000
        }
    }

    #[tokio::test]
    async fn a_write_is_reserved_in_the_current_second_under_the_configured_limit() {
        let budget = Budget::refusing(2);
        SecretWrites::new(&budget, &Fixed, 7)
            .reserve()
            .await
            .unwrap();
        assert_eq!(*budget.asked.lock().unwrap(), vec![(1_000, 7); 3]);
    }

    #[tokio::test]
    async fn a_spent_budget_is_a_clean_503_after_five_tries() {
        let budget = Budget::refusing(usize::MAX);
        let err = SecretWrites::new(&budget, &Fixed, 10)
            .reserve()
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::Storage(StoreError::Unavailable(_))));
        assert_eq!(err.status(), 503);
        assert_eq!(budget.asked.lock().unwrap().len(), 5);
    }
}
