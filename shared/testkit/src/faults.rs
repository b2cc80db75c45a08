//! Fault injection at the memory adapters' named steps: a process killed
//! at a chosen storage call (the call never returns, so nothing after it
//! happens, as after a SIGKILL), or a call that fails as throttled.
//!
//! A call can also be paused at a step (a process that is slow, not
//! dead: its lease lapses while it waits) and resumed.
//!
//! Steps: `record_intent` (a callback records its intent), `finish_flow`
//! (a finished callback removes its flow), `record_commit` (a connection
//! record write), `lease` (a lease taken), `secret_write` (a token secret
//! written), `secret_delete` (a token secret deleted).

use domain::storage::StoreError;
use std::collections::HashMap;
use std::sync::Mutex;

/// The fault plan one test shares with its adapters.
#[derive(Default)]
pub struct Faults {
    kill_at: Mutex<Option<&'static str>>,
    reached: tokio::sync::Notify,
    failing: Mutex<HashMap<&'static str, usize>>,
    pause_at: Mutex<Option<&'static str>>,
    paused: tokio::sync::Notify,
    resumed: tokio::sync::Notify,
}

impl Faults {
    /// The next call at `step` never returns.
    pub fn kill_at(&self, step: &'static str) {
        *lock(&self.kill_at) = Some(step);
    }

    /// Disarms the kill switch.
    pub fn disarm(&self) {
        *lock(&self.kill_at) = None;
    }

    /// Waits until a call reaches the armed step (and hangs there).
    pub async fn killed(&self) {
        self.reached.notified().await;
    }

    /// The next `times` calls at `step` fail as throttled (`Unavailable`).
    pub fn fail(&self, step: &'static str, times: usize) {
        lock(&self.failing).insert(step, times);
    }

    /// The next call at `step` waits until [`Faults::resume`].
    pub fn pause_at(&self, step: &'static str) {
        *lock(&self.pause_at) = Some(step);
    }

    /// Waits until a call reaches the pause step.
    pub async fn paused(&self) {
        self.paused.notified().await;
    }

    /// Lets the paused call go on.
    pub fn resume(&self) {
        self.resumed.notify_one();
    }

    /// Called by an adapter at `step`.
    pub(crate) async fn at(&self, step: &'static str) -> Result<(), StoreError> {
        let pause = {
            let mut at = lock(&self.pause_at);
            let hit = *at == Some(step);
            if hit {
                *at = None;
            }
            hit
        };
        if pause {
            self.paused.notify_one();
            self.resumed.notified().await;
        }
        if *lock(&self.kill_at) == Some(step) {
            self.reached.notify_one();
            std::future::pending::<()>().await;
        }
        let mut failing = lock(&self.failing);
        match failing.get_mut(step) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Err(StoreError::Unavailable(format!("{step}: injected failure")))
            }
            _ => Ok(()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
