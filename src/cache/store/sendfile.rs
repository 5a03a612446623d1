//! Chunk files kept open, verified, for zero-copy sends (see `crate::zerocopy`).
//!
//! A chunk on a memory-backed disk can be sent with `sendfile` instead of being copied into
//! the socket, but only from a file whose bytes were checked against the chunk's CRC. Checking
//! costs a read of the chunk, so a checked file is kept open here and reused by later hits:
//! the CRC is verified once per load into this table, not on every send (the send itself
//! re-checks the file's `fstat` stamp, which catches any later change).
//!
//! The table is bounded (open descriptors), least recently used out first. Entries leave it
//! when their version's files are deleted, so an open handle never holds a deleted file's
//! space for long.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;

use super::Store;
use super::error::StoreError;
use super::index::KeyHash;
use super::meta::ObjectMeta;
use crate::zerocopy::FileSpan;

/// One chunk of one version.
type Key = (KeyHash, u64, u32);

/// Upper bound of open files, whatever the descriptor limit.
const MAX_FILES: u64 = 4096;

enum Slot {
    /// Verified and open.
    Open(FileSpan, u64),
    /// Being opened and verified in the background.
    Opening,
    /// Has no file to send from (e.g. not on a memory-backed disk after all).
    None(u64),
}

/// The table of open, verified chunk files.
pub(crate) struct SendFiles {
    map: Mutex<HashMap<Key, Slot>>,
    capacity: usize,
    tick: AtomicU64,
}

impl SendFiles {
    /// A table sized to a quarter of the open-files limit (connections need the rest).
    pub fn new() -> SendFiles {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(MAX_FILES * 4);
        SendFiles {
            map: Mutex::new(HashMap::new()),
            capacity: (limit / 4).min(MAX_FILES) as usize,
            tick: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Slot>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> u64 {
        self.tick.fetch_add(1, Ordering::Relaxed)
    }

    /// The verified file of `key`: `Some(Some)` open, `Some(None)` known to have none or
    /// being opened, `None` not known yet. A stale file (changed on disk) is forgotten.
    fn get(&self, key: &Key) -> Option<Option<FileSpan>> {
        let now = self.now();
        let mut map = self.lock();
        match map.get_mut(key)? {
            Slot::Open(span, used) if !span.file.is_stale() => {
                *used = now;
                Some(Some(span.clone()))
            }
            Slot::Open(..) => {
                map.remove(key);
                None
            }
            Slot::None(used) => {
                *used = now;
                Some(None)
            }
            Slot::Opening => Some(None),
        }
    }

    /// Records what opening `key` gave, evicting the least recently used entry when full.
    fn put(&self, key: Key, span: Option<FileSpan>) {
        let now = self.now();
        let mut map = self.lock();
        if map.len() >= self.capacity && !map.contains_key(&key) {
            let oldest = map
                .iter()
                .filter_map(|(k, v)| match v {
                    Slot::Open(_, t) | Slot::None(t) => Some((*t, *k)),
                    Slot::Opening => None,
                })
                .min_by_key(|(t, _)| *t)
                .map(|(_, k)| k);
            match oldest {
                Some(k) => {
                    map.remove(&k);
                }
                None => return,
            }
        }
        let slot = match span {
            Some(s) => Slot::Open(s, now),
            None => Slot::None(now),
        };
        map.insert(key, slot);
    }

    /// Claims the background opening of `key`; false when it is known or already claimed.
    fn claim(&self, key: Key) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let mut map = self.lock();
        if map.contains_key(&key) {
            return false;
        }
        map.insert(key, Slot::Opening);
        true
    }

    /// Gives up a claim that produced nothing to record.
    fn unclaim(&self, key: &Key) {
        let mut map = self.lock();
        if matches!(map.get(key), Some(Slot::Opening)) {
            map.remove(key);
        }
    }

    /// Forgets every chunk of `version` (its files are deleted).
    pub fn forget(&self, hash: &KeyHash, version: u64) {
        self.lock()
            .retain(|(h, v, _), _| !(h == hash && *v == version));
    }
}

impl Store {
    /// [`Store::read_chunk`] for a response about to be written on a connection that can send
    /// from files: the chunk's bytes and, when a verified file on a memory-backed disk holds
    /// them, that file. The first hit on a chunk held in memory gets no file: its file is
    /// opened and verified in the background, for the hits after it.
    pub async fn read_chunk_for_send(
        &self,
        meta: &ObjectMeta,
        index: u32,
    ) -> Result<(Bytes, Option<FileSpan>), StoreError> {
        let sendable = meta
            .disk
            .and_then(|d| self.inner.disks.get(d as usize))
            .is_some_and(|d| d.memory_backed());
        if !sendable || self.inner.send_files.capacity == 0 {
            return self.read_chunk(meta, index).await.map(|b| (b, None));
        }
        let key = (KeyHash::of(&meta.key), meta.version, index);
        let known = self.inner.send_files.get(&key);
        let (bytes, opened) = self.load_chunk(meta, index, known.is_none()).await?;
        match (known, opened) {
            (Some(span), _) => Ok((bytes, span)),
            (None, Some(span)) => {
                self.remember(key, Some(span.clone()));
                Ok((bytes, Some(span)))
            }
            (None, None) => {
                // From memory: no file was read. Verify it off the request's path.
                self.open_in_background(meta, index, key);
                Ok((bytes, None))
            }
        }
    }

    /// Records an opened file, unless its version left the index meanwhile (then its files
    /// are being deleted, and the deletion's `forget` may already have run).
    fn remember(&self, key: Key, span: Option<FileSpan>) {
        let (hash, version, _) = key;
        self.inner.send_files.put(key, span);
        let current = self
            .inner
            .lock()
            .index
            .get(&hash)
            .is_some_and(|e| e.version == version);
        if !current {
            self.inner.send_files.forget(&hash, version);
        }
    }

    /// Opens and verifies the file of a chunk that was read from memory, in the background.
    /// A corrupt file is handled as a corrupt read would be: the object is removed.
    fn open_in_background(&self, meta: &ObjectMeta, index: u32, key: Key) {
        let (Some(crc), Some(d)) = (meta.chunk_crc(index), meta.disk) else {
            return;
        };
        if !self.inner.send_files.claim(key) {
            return;
        }
        let (hash, version, _) = key;
        let len = meta.stored_len(index);
        let inline_hint = index == 0
            && self
                .inner
                .lock()
                .index
                .get(&hash)
                .is_some_and(|e| e.version == version && e.inline0);
        let store = self.clone();
        let name = meta.key.clone();
        self.inner.spawn_tracked(async move {
            let inner = &store.inner;
            let r = inner
                .blocking(move |i| {
                    i.disks[d as usize].load_chunk(&hash, version, index, len, crc, inline_hint, true)
                })
                .await
                .and_then(|r| r);
            inner.send_files.unclaim(&key);
            match r {
                Ok((_, span)) => store.remember(key, span),
                Err(StoreError::Corrupt) => {
                    tracing::warn!(key = %name, index, "cache store: corrupt chunk, object removed");
                    inner.lock().counters.corrupt += 1;
                    inner.drop_version(hash, version).await;
                }
                // Gone meanwhile (replaced, evicted): nothing to keep.
                Err(_) => {}
            }
        });
    }
}
