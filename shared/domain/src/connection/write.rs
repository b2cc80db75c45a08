//! What the state machine asks of the storage ports. Each type here is
//! built only by the machine (its fields are private to
//! [`crate::connection`]); adapters read it through its getters. So the
//! compiler holds that no other code puts or deletes a connection record,
//! takes or releases its lease, or writes or deletes its token secret.

use super::Connection;
use crate::clock::UnixTime;
use crate::events::Event;
use secrecy::SecretString;

/// What a conditional connection write requires of the stored record.
/// Every write of a connection names one: there is no unconditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence<'a> {
    /// No record with this id exists yet (`AlreadyExists` otherwise).
    Absent,
    /// The stored record is at this version (`Conflict` otherwise).
    Version(i64),
    /// The stored record is at this version and `owner` holds its lease
    /// (`Conflict` otherwise): a holder whose lease lapsed and was taken
    /// by another is refused by the store itself.
    Leased { version: i64, owner: &'a str },
}

/// A put or a delete of one record.
#[derive(Debug, Clone, Copy)]
pub enum RecordOp<'a> {
    /// Writes `record` if the stored one satisfies `fence`.
    Put {
        record: &'a Connection,
        fence: Fence<'a>,
    },
    /// Deletes the record if the stored one satisfies `fence` (never
    /// [`Fence::Absent`]); a record already gone is not an error, and the
    /// events are then not written.
    Delete {
        tenant_id: &'a str,
        id: &'a str,
        fence: Fence<'a>,
    },
}

/// One transition's write: the record's put or delete and the events it
/// bears, in one commit (all or nothing). Counters are not part of it
/// (they are added after the commit, so writers of one integration never
/// contend on its counter item).
#[derive(Debug)]
pub struct RecordWrite {
    pub(super) op: Op,
    pub(super) events: Vec<Event>,
}

#[derive(Debug)]
pub(super) enum Op {
    Put {
        record: Box<Connection>,
        fence: OwnedFence,
    },
    Delete {
        tenant_id: String,
        id: String,
        fence: OwnedFence,
    },
}

#[derive(Debug, Clone)]
pub(super) enum OwnedFence {
    Absent,
    Version(i64),
    Leased { version: i64, owner: String },
}

impl OwnedFence {
    fn as_fence(&self) -> Fence<'_> {
        match self {
            OwnedFence::Absent => Fence::Absent,
            OwnedFence::Version(v) => Fence::Version(*v),
            OwnedFence::Leased { version, owner } => Fence::Leased {
                version: *version,
                owner,
            },
        }
    }
}

impl RecordWrite {
    /// The put or delete.
    pub fn op(&self) -> RecordOp<'_> {
        match &self.op {
            Op::Put { record, fence } => RecordOp::Put {
                record,
                fence: fence.as_fence(),
            },
            Op::Delete {
                tenant_id,
                id,
                fence,
            } => RecordOp::Delete {
                tenant_id,
                id,
                fence: fence.as_fence(),
            },
        }
    }

    /// The events born in this commit.
    pub fn events(&self) -> &[Event] {
        &self.events
    }
}

/// A request for a connection's lease: one conditional write that takes
/// it for `owner` until `until`, unless another owner holds one that has
/// not expired at `now`. Taking (and releasing) bumps the version, so a
/// conditional write from an older read cannot undo it.
#[derive(Debug)]
pub struct LeaseRequest {
    pub(super) tenant_id: String,
    pub(super) id: String,
    pub(super) owner: String,
    pub(super) until: UnixTime,
    pub(super) now: UnixTime,
}

impl LeaseRequest {
    pub fn tenant_id(&self) -> &str {
        &self.tenant_id
    }
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn owner(&self) -> &str {
        &self.owner
    }
    pub fn until(&self) -> UnixTime {
        self.until
    }
    pub fn now(&self) -> UnixTime {
        self.now
    }
}

/// Releases a lease if `owner` still holds it.
#[derive(Debug)]
pub struct LeaseRelease {
    pub(super) tenant_id: String,
    pub(super) id: String,
    pub(super) owner: String,
}

impl LeaseRelease {
    pub fn tenant_id(&self) -> &str {
        &self.tenant_id
    }
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn owner(&self) -> &str {
        &self.owner
    }
}

/// A version of a connection's token secret, named by the transition that
/// writes it (so a retried write is idempotent), tagged with its owner.
pub struct TokenWrite {
    pub(super) name: String,
    pub(super) value: SecretString,
    pub(super) version: String,
    pub(super) tags: [(&'static str, String); 3],
}

impl std::fmt::Debug for TokenWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenWrite")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl TokenWrite {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn value(&self) -> &SecretString {
        &self.value
    }
    pub fn version(&self) -> &str {
        &self.version
    }
    /// `broker:tenant`, `broker:integration`, `broker:connection`.
    pub fn tags(&self) -> Vec<(&str, &str)> {
        self.tags.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
}

/// Deletes one generation's token secret at once (no recovery window).
#[derive(Debug)]
pub struct TokenDelete {
    pub(super) name: String,
}

impl TokenDelete {
    pub fn name(&self) -> &str {
        &self.name
    }
}
