//! Chunk files kept open, verified, for zero-copy sends (see `crate::zerocopy`).
//!
//! A chunk on a memory-backed disk can be sent from its file (by `tee` from pipes holding its
//! pages, or `sendfile`) instead of being copied into the socket, but only from a file whose
//! bytes were checked against the chunk's CRC. Checking costs a read of the chunk, so a
//! checked file is kept open here and reused by later hits: the CRC is verified once per load
//! into this table, not on every send (each send re-checks the file's `fstat` stamp, which
//! catches any later change). The file's pipes, and its read-only mapping (the bytes handed to
//! hyper for a chunk that is not in memory), live as long as its entry here and the responses
//! using them.
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
use crate::zerocopy::{self, FileSpan};

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
        SendFiles {
            map: Mutex::new(HashMap::new()),
            capacity: zerocopy::fd_share(4).min(MAX_FILES) as usize,
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
    /// opened and verified in the background, for the hits after it. Once the file is
    /// verified, a chunk not in memory comes as a view of the file (`zerocopy::view`): no
    /// read, no CRC, no copy on the hits after the first.
    pub async fn read_chunk_for_send(
        &self,
        meta: &ObjectMeta,
        index: u32,
    ) -> Result<(Bytes, Option<FileSpan>), StoreError> {
        // Small chunks are always copied (`zerocopy::MIN_SEND`): no file is opened for them.
        let sendable = meta.stored_len(index) >= zerocopy::MIN_SEND as u64
            && meta
                .disk
                .and_then(|d| self.inner.disks.get(d as usize))
                .is_some_and(|d| d.memory_backed());
        if !sendable || self.inner.send_files.capacity == 0 {
            return self.read_chunk(meta, index).await.map(|b| (b, None));
        }
        let key = (KeyHash::of(&meta.key), meta.version, index);
        let known = self.inner.send_files.get(&key);
        if let Some(Some(span)) = &known {
            // A verified file: the bytes from memory when it holds them, else a view of the
            // file. Nothing is read, checked or promoted: the file was verified when it was
            // opened, and its stamp is checked before every send.
            if let Some(b) = self.memory_chunk(&key.0, key.1, index) {
                return Ok((b, Some(span.clone())));
            }
            let len = usize::try_from(meta.stored_len(index)).unwrap_or(usize::MAX);
            if let Some(b) = span.file.view(span.offset, len) {
                self.inner.lock().counters.disk_hits += 1;
                return Ok((b, Some(span.clone())));
            }
        }
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
        let inline_hint = self.inline_hint(&hash, version, index);
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use bytes::Bytes;

    use super::super::index::KeyHash;
    use super::super::{DiskConfig, NewObject, ObjectMeta, Store, StoreConfig, StoreError};
    use crate::zerocopy::FileSpan;

    /// Chunks large enough to be sent from files (`zerocopy::MIN_SEND`).
    const CHUNK: u32 = 512 * 1024;

    /// A directory on tmpfs, or None where there is no /dev/shm (the tests then pass vacuously).
    fn shm_dir() -> Option<tempfile::TempDir> {
        tempfile::tempdir_in("/dev/shm").ok()
    }

    async fn open(dir: &Path, memory: u64, memory_max_object: u64) -> Store {
        Store::open(StoreConfig {
            memory_bytes: memory,
            memory_max_object,
            chunk_size: CHUNK,
            disks: vec![DiskConfig {
                path: dir.to_path_buf(),
                quota_bytes: 1 << 30,
            }],
            sync_writes: false,
        })
        .await
        .expect("open")
    }

    fn body(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    async fn put(store: &Store, key: &str, data: &[u8]) -> Arc<ObjectMeta> {
        let obj = NewObject {
            key: key.to_owned(),
            total_len: Some(data.len() as u64),
            ..Default::default()
        };
        let mut w = store.begin(obj).await.expect("begin");
        for (i, c) in data.chunks(CHUNK as usize).enumerate() {
            w.write_chunk(i as u32, Bytes::copy_from_slice(c))
                .await
                .expect("write_chunk");
        }
        w.commit(data.len() as u64).await.expect("commit")
    }

    /// The file's bytes where `span` says `expected` are.
    fn file_bytes(span: &FileSpan, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        span.file
            .file()
            .read_exact_at(&mut buf, span.offset)
            .expect("read the span");
        buf
    }

    /// Reads chunk `index` for sending until it comes with its file (the first read of a
    /// chunk held in memory verifies its file in the background).
    async fn read_with_file(store: &Store, meta: &ObjectMeta, index: u32) -> (Bytes, FileSpan) {
        let t0 = Instant::now();
        loop {
            let (b, f) = store.read_chunk_for_send(meta, index).await.expect("read");
            if let Some(f) = f {
                return (b, f);
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "no file for chunk {index}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn chunks_held_in_memory_get_their_verified_file_after_the_first_read() {
        let Some(dir) = shm_dir() else { return };
        let store = open(dir.path(), 64 << 20, 16 << 20).await;
        let data = body(3 * CHUNK as usize + 100, 1);
        let m = put(&store, "k", &data).await;
        let (b, f) = store.read_chunk_for_send(&m, 1).await.expect("read");
        assert_eq!(b, data[CHUNK as usize..2 * CHUNK as usize]);
        assert!(
            f.is_none(),
            "from memory: the file is verified off the request's path"
        );
        for i in 0..3u32 {
            let (b, f) = read_with_file(&store, &m, i).await;
            let start = (i * CHUNK) as usize;
            assert_eq!(b, data[start..start + CHUNK as usize]);
            assert_eq!(
                file_bytes(&f, b.len()),
                b,
                "chunk {i}: the file holds the same bytes"
            );
        }
        // The last chunk holds 100 bytes: copied, never sent from a file.
        for _ in 0..3 {
            let (b, f) = store.read_chunk_for_send(&m, 3).await.expect("read");
            assert_eq!(b, data[3 * CHUNK as usize..]);
            assert!(f.is_none());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let key = (KeyHash::of("k"), m.version, 3);
        assert!(store.inner.send_files.get(&key).is_none(), "no file opened");
        assert_eq!(store.stats().disk_hits, 0, "every byte came from memory");
    }

    #[tokio::test]
    async fn chunks_read_from_disk_come_with_their_file_at_once() {
        let Some(dir) = shm_dir() else { return };
        // Bodies over 1 KiB never have chunks in memory: every read goes to disk.
        let store = open(dir.path(), 64 << 20, 1024).await;
        let data = body(2 * CHUNK as usize + 7, 2);
        let m = put(&store, "k", &data).await;
        for i in 0..2u32 {
            let (b, f) = store.read_chunk_for_send(&m, i).await.expect("read");
            let f = f.expect("read from a file on tmpfs: sendable");
            assert_eq!(file_bytes(&f, b.len()), b);
        }
        let (b, f) = store.read_chunk_for_send(&m, 2).await.expect("read");
        assert_eq!((b.len(), f.is_none()), (7, true), "a small chunk is copied");
        // Later reads come from the table's verified file, as views of it: nothing is read.
        let (b1, f1) = store.read_chunk_for_send(&m, 0).await.expect("read");
        let (b2, f2) = store.read_chunk_for_send(&m, 0).await.expect("read");
        let (f1, f2) = (f1.expect("file"), f2.expect("file"));
        assert!(Arc::ptr_eq(&f1.file, &f2.file), "one open file per chunk");
        assert!(b1 == data[..CHUNK as usize] && b2 == b1);
        assert!(f1.file.shows(b1.as_ptr()) && f2.file.shows(b2.as_ptr()));
        let st = store.stats();
        assert_eq!((st.disk_hits, st.memory_hits), (5, 0));
    }

    #[tokio::test]
    async fn a_view_outlives_its_object() {
        let Some(dir) = shm_dir() else { return };
        let store = open(dir.path(), 64 << 20, 1024).await;
        let data = body(CHUNK as usize + 9, 7);
        let m = put(&store, "k", &data).await;
        let (_, f) = store.read_chunk_for_send(&m, 0).await.expect("verify");
        assert!(f.is_some());
        let (view, f) = store.read_chunk_for_send(&m, 0).await.expect("view");
        assert!(f.expect("file").file.shows(view.as_ptr()));
        // Evicted or replaced mid-response: the files go, the view still shows their bytes.
        assert!(store.remove("k").await.is_some());
        assert!(
            super::super::tests::files(dir.path())
                .iter()
                .all(|p| { !p.to_string_lossy().contains(&KeyHash::of("k").hex()) })
        );
        assert_eq!(view, data[..CHUNK as usize]);
    }

    #[tokio::test]
    async fn a_single_chunk_object_is_sent_from_its_meta_file() {
        let Some(dir) = shm_dir() else { return };
        let store = open(dir.path(), 64 << 20, 16 << 20).await;
        let data = body(300_000, 3);
        let m = put(&store, "small", &data).await;
        let (b, f) = read_with_file(&store, &m, 0).await;
        assert_eq!(b, data);
        assert_eq!(
            file_bytes(&f, b.len()),
            data,
            "the inline body ends the .meta file"
        );
        let meta_len = f.file.file().metadata().expect("stat").len();
        assert_eq!(f.offset + data.len() as u64, meta_len);
    }

    #[tokio::test]
    async fn a_corrupt_file_found_by_the_background_check_removes_the_object() {
        let Some(dir) = shm_dir() else { return };
        let store = open(dir.path(), 64 << 20, 16 << 20).await;
        let data = body(2 * CHUNK as usize, 4);
        let m = put(&store, "k", &data).await;
        // Damage chunk 1's file before its first read for sending.
        let chunk1 = super::super::tests::files(dir.path())
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "1"))
            .expect("chunk file 1");
        let mut raw = std::fs::read(&chunk1).expect("read");
        let last = raw.len() - 1;
        raw[last] ^= 1;
        std::fs::write(&chunk1, raw).expect("write");
        let (b, f) = store.read_chunk_for_send(&m, 1).await.expect("from memory");
        assert_eq!(b, data[CHUNK as usize..], "the bytes in memory are intact");
        assert!(f.is_none());
        let t0 = Instant::now();
        while store.stats().corrupt == 0 {
            assert!(t0.elapsed() < Duration::from_secs(5), "damage not detected");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            store.lookup("k").await.is_none(),
            "the damaged object is removed"
        );
        assert!(matches!(
            store.read_chunk_for_send(&m, 1).await,
            Err(StoreError::Missing)
        ));
    }

    #[tokio::test]
    async fn removing_an_object_closes_its_files() {
        let Some(dir) = shm_dir() else { return };
        let store = open(dir.path(), 64 << 20, 16 << 20).await;
        let m = put(&store, "k", &body(CHUNK as usize + 1, 5)).await;
        let (_, f) = read_with_file(&store, &m, 0).await;
        assert!(Arc::strong_count(&f.file) >= 2, "held by the table");
        assert!(store.remove("k").await.is_some());
        assert_eq!(
            Arc::strong_count(&f.file),
            1,
            "the table let go of the deleted file"
        );
    }

    #[tokio::test]
    async fn files_on_a_regular_disk_are_never_offered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), 64 << 20, 1024).await;
        if store.inner.disks[0].memory_backed() {
            return; // the temporary directory is on tmpfs here: nothing to check
        }
        let m = put(&store, "k", &body(CHUNK as usize, 6)).await;
        let (_, f) = store.read_chunk_for_send(&m, 0).await.expect("read");
        assert!(f.is_none());
    }
}
