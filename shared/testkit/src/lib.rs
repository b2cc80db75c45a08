//! Test doubles of the broker's ports: in-memory adapters of the storage
//! ports and the delivery queue, fault injection, and a clock moved by hand.
//! A dev-dependency only, so no fault hook ships in a function binary
//! (`crate_dependencies_follow_the_layers`).

pub mod clock;
pub mod faults;
pub mod keys;
pub mod memory;
pub mod queue;
pub mod record;

pub use clock::ManualClock;
pub use faults::Faults;
pub use keys::MemoryKeys;
pub use memory::{MemoryStore, MemoryVault, ReadFault};
pub use queue::MemoryQueue;
