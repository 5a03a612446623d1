//! Errors of the storage engine.

use std::sync::Arc;

/// Why a store operation failed.
///
/// `Clone` so that one failure can be handed to every reader of a shared fill.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The object or chunk is not stored (never was, was replaced, removed or evicted).
    #[error("not in the store")]
    Missing,
    /// Stored bytes failed their CRC or format check; the object has been removed so the
    /// caller refetches it. Never served.
    #[error("stored data failed its integrity check")]
    Corrupt,
    /// The file system failed.
    #[error("store i/o error: {0}")]
    Io(Arc<std::io::Error>),
    /// The caller broke the writer's contract (wrong chunk length, index past the end, ...).
    #[error("invalid store operation: {0}")]
    Invalid(&'static str),
    /// A commit found chunks missing or lengths not adding up; nothing became visible.
    #[error("object incomplete: {0}")]
    Incomplete(&'static str),
    /// The object does not fit anywhere: above every disk quota, or above the memory tier's
    /// object limit in a memory-only store.
    #[error("object too large for this store")]
    TooLarge,
    /// The disk tier refused a write a short while ago, and the object may not live in memory
    /// alone (too large for the memory tier, or of unknown length): it is not stored until the
    /// disk is tried again (`state::DISK_RETRY`), so it passes through uncached instead of
    /// failing mid-body.
    #[error("the disk tier is refusing writes; the object is not stored")]
    DiskFailing,
    /// The store was closed; no new writes are accepted.
    #[error("store is closed")]
    Closed,
    /// The configuration cannot work (e.g. a zero chunk size, too many disks).
    #[error("invalid store configuration: {0}")]
    Config(&'static str),
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(Arc::new(e))
    }
}
