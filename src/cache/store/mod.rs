//! The cache storage engine: objects (meta + fixed-size chunks) kept in a memory tier and a
//! disk tier, surviving restarts.
//!
//! The store is mechanism only: it stores bytes and metadata faithfully and evicts to stay in
//! budget; what to cache and for how long is decided by the caller.
//!
//! * [`Store::lookup`] answers from the in-memory index; for memory-resident objects it does no
//!   I/O and no allocation beyond an `Arc` clone.
//! * [`Store::begin`] returns an [`ObjectWriter`]; chunks it writes are readable at once
//!   through its snapshot; [`ObjectWriter::commit`] makes the object visible atomically.
//! * Memory tier: S3-FIFO over bytes (`s3fifo`), inclusive of the disk tier.
//! * Disk tier: one or more directories with byte quotas, each under its own S3-FIFO; whole
//!   objects are evicted. Layout and crash safety: see `disk` and `writer`.
//! * Start-up: [`Store::open`] returns at once; lookups of keys the index has not seen yet read
//!   the meta file named by the key's hash, while a background task rebuilds the index,
//!   accounts quota and deletes orphans (`rebuild`).
//!
//! Locking: one `std::sync::Mutex` guards all bookkeeping ([`state::State`]) and is never held
//! across I/O. Every create/replace/delete of a key's `.meta` file, and every load of one into
//! the index, happens under that key's async stripe lock, so the index and the disk agree.

mod disk;
mod error;
mod headers;
mod index;
mod memory;
mod meta;
mod rebuild;
mod s3fifo;
mod sendfile;
mod state;
mod writer;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::Notify;

pub use error::StoreError;
pub use headers::{Headers, HeadersBuilder};
pub use index::GROUP_SEPARATOR;
pub use meta::{ChunkSlot, NewObject, ObjectMeta};
pub use writer::ObjectWriter;

use crate::zerocopy::FileSpan;
use disk::{Disk, LoadedMeta};
use index::{Entry, KeyHash};
use memory::MemObject;
use state::{Doomed, Placement, Probe, State};

/// Number of stripe locks serialising `.meta` file changes per key.
const STRIPES: usize = 256;

/// One cache directory and its quota.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// The directory (created if missing).
    pub path: PathBuf,
    /// Bytes the store may use there (files counted in 4 KiB blocks).
    pub quota_bytes: u64,
}

/// Sizes and places of the tiers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Capacity of the memory tier in bytes (metas and chunk bytes).
    pub memory_bytes: u64,
    /// Bodies larger than this never have chunks in memory (their meta may be).
    pub memory_max_object: u64,
    /// Chunk size in bytes (every chunk but the last).
    pub chunk_size: u32,
    /// Disk directories; empty means memory only (nothing survives a restart).
    pub disks: Vec<DiskConfig>,
    /// fsync each file before its rename and the directory after, so committed objects also
    /// survive power loss, at a cost per write. Without it they survive a process crash
    /// (kill -9), and after a power loss CRCs turn any lost data into misses, never bad bytes.
    pub sync_writes: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            memory_bytes: 256 << 20,
            memory_max_object: 4 << 20,
            chunk_size: 1 << 20,
            disks: Vec::new(),
            sync_writes: false,
        }
    }
}

/// Counters and gauges of the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes charged to the memory tier (metas + resident chunks).
    pub memory_bytes: u64,
    /// Capacity of the memory tier.
    pub memory_capacity: u64,
    /// Objects with a memory copy (meta, possibly chunks).
    pub memory_objects: u64,
    /// Bytes of chunks held by in-progress writers.
    pub memory_pending_bytes: u64,
    /// Bytes charged to the disks by committed objects.
    pub disk_bytes: u64,
    /// Bytes reserved on the disks by in-progress writers.
    pub disk_reserved_bytes: u64,
    /// Sum of the disk quotas.
    pub disk_quota_bytes: u64,
    /// Objects on disk (as far as the index knows).
    pub disk_objects: u64,
    /// Objects indexed.
    pub objects: u64,
    /// Approximate bytes of the index and policy bookkeeping.
    pub index_bytes: u64,
    /// The background rebuild has indexed everything on disk.
    pub index_complete: bool,
    /// Lookups that found an object.
    pub lookup_hits: u64,
    /// Lookups that found nothing.
    pub lookup_misses: u64,
    /// Chunk reads served from memory.
    pub memory_hits: u64,
    /// Chunk reads served from disk.
    pub disk_hits: u64,
    /// Memory copies evicted.
    pub memory_evictions: u64,
    /// Objects evicted from disk.
    pub disk_evictions: u64,
    /// Chunks or metas that failed their integrity check (object removed each time).
    pub corrupt: u64,
    /// Chunk or meta writes the disk refused (the object went on in memory only where the
    /// memory tier could hold it; otherwise its fill failed).
    pub disk_write_errors: u64,
    /// Disks new objects keep away from for now, after a refused write.
    pub disks_failing: u64,
}

/// Where one object currently lives (for diagnostics and tests; does not count as a hit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Residency {
    /// The current version.
    pub version: u64,
    /// The meta is in memory.
    pub meta_in_memory: bool,
    /// Body bytes resident in memory.
    pub memory_chunk_bytes: u64,
    /// Index of the disk holding it.
    pub disk: Option<u8>,
}

/// The cache store. Cheap to clone; all clones share one store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// Shared internals of a [`Store`].
pub(crate) struct Inner {
    chunk_size: u32,
    disks: Vec<Disk>,
    state: Mutex<State>,
    stripes: Box<[tokio::sync::Mutex<()>]>,
    next_version: AtomicU64,
    index_complete: AtomicBool,
    rebuilt: Notify,
    closed: AtomicBool,
    bg_tasks: AtomicUsize,
    bg_idle: Notify,
    rt: Handle,
    /// Verified chunk files kept open for zero-copy sends (memory-backed disks only).
    send_files: sendfile::SendFiles,
    /// Readers of stored versions and the deletions waiting for them, see [`Store::pin`].
    pins: std::sync::Mutex<Pins>,
}

/// The stored versions readers are streaming, and the evicted ones whose files wait for
/// their last reader. One lock for both: a deletion deferred for a reader can never miss
/// that reader's last release.
#[derive(Default)]
struct Pins {
    /// Readers per version (key hash, version).
    readers: HashMap<(KeyHash, u64), usize>,
    /// Evicted versions whose files wait for their last reader.
    deferred: Vec<Doomed>,
}

/// A reader's hold on a stored version: while it lives, evicting the version removes it
/// from the index but keeps its files, so a client already streaming it gets every byte.
/// The files go when the last hold is dropped.
pub struct ReaderHold {
    inner: Arc<Inner>,
    id: (KeyHash, u64),
}

impl Drop for ReaderHold {
    fn drop(&mut self) {
        let due: Vec<Doomed> = match self.inner.pins.lock() {
            Ok(mut pins) => match pins.readers.get_mut(&self.id) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    Vec::new()
                }
                _ => {
                    pins.readers.remove(&self.id);
                    let (due, keep) = std::mem::take(&mut pins.deferred)
                        .into_iter()
                        .partition(|d| (d.hash, d.version) == self.id);
                    pins.deferred = keep;
                    due
                }
            },
            Err(_) => Vec::new(),
        };
        if !due.is_empty() && !self.inner.closed.load(Ordering::Relaxed) {
            self.inner.delete_in_background(due);
        }
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl Store {
    /// Holds `meta`'s version for a reader streaming it (see [`ReaderHold`]); `None` for an object
    /// with no files (memory only), which eviction cannot take from under a reader.
    pub fn pin(&self, meta: &ObjectMeta) -> Option<ReaderHold> {
        meta.disk?;
        let id = (KeyHash::of(&meta.key), meta.version);
        *self.inner.pins.lock().ok()?.readers.entry(id).or_insert(0) += 1;
        Some(ReaderHold {
            inner: Arc::clone(&self.inner),
            id,
        })
    }

    /// Opens (creating if needed) the store. Returns without scanning the disks: the index is
    /// rebuilt in the background while lookups already work.
    pub async fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
        if cfg.chunk_size == 0 {
            return Err(StoreError::Config("chunk_size must be positive"));
        }
        if cfg.disks.len() >= usize::from(index::NO_DISK) {
            return Err(StoreError::Config("too many disks"));
        }
        let nanos = now_nanos();
        // Identifies this run's temporary files; pid and time make it unique per process.
        let run_id = (nanos as u64) ^ (u64::from(std::process::id()) << 40);
        let disks: Vec<Disk> = cfg
            .disks
            .iter()
            .map(|d| Disk::new(d.path.clone(), d.quota_bytes, run_id, cfg.sync_writes))
            .collect();
        let disks = tokio::task::spawn_blocking(move || -> Result<Vec<Disk>, StoreError> {
            for d in &disks {
                d.prepare().map_err(|io| {
                    // Name the directory: "File exists" alone says nothing about which one.
                    StoreError::Io(Arc::new(std::io::Error::new(
                        io.kind(),
                        format!("disk {}: {io}", d.root().display()),
                    )))
                })?;
            }
            Ok(disks)
        })
        .await
        .map_err(|e| StoreError::Io(Arc::new(std::io::Error::other(e))))??;
        let quotas: Vec<u64> = disks.iter().map(|d| d.quota).collect();
        let no_disks = disks.is_empty();
        // Versions: microseconds since the epoch, shifted to leave room for 4096 writes per
        // microsecond, so a new run never reuses a version of an earlier run. Versions found on
        // disk push the counter further (`saw_version`).
        let first_version = ((nanos / 1000) as u64) << 12;
        let inner = Arc::new(Inner {
            chunk_size: cfg.chunk_size,
            disks,
            state: Mutex::new(State::new(cfg.memory_bytes, cfg.memory_max_object, &quotas)),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            next_version: AtomicU64::new(first_version),
            index_complete: AtomicBool::new(no_disks),
            rebuilt: Notify::new(),
            closed: AtomicBool::new(false),
            bg_tasks: AtomicUsize::new(0),
            bg_idle: Notify::new(),
            rt: Handle::current(),
            send_files: sendfile::SendFiles::new(),
            pins: std::sync::Mutex::new(Pins::default()),
        });
        if !no_disks {
            rebuild::spawn(&inner);
        }
        Ok(Store { inner })
    }

    /// The committed object stored under `key` (complete, or partial with its chunk list).
    /// Counts as an access for eviction.
    pub async fn lookup(&self, key: &str) -> Option<Arc<ObjectMeta>> {
        let hash = KeyHash::of(key);
        let complete = self.inner.index_complete.load(Ordering::Acquire);
        {
            let mut st = self.inner.lock();
            match st.probe(&hash, key, complete, true) {
                Probe::Hit(m) => {
                    st.counters.lookup_hits += 1;
                    return Some(m);
                }
                Probe::Miss => {
                    st.counters.lookup_misses += 1;
                    return None;
                }
                Probe::Cold | Probe::Unknown => {}
            }
        }
        let found = {
            let _stripe = self.inner.stripe(&hash).lock().await;
            self.inner.load_locked(hash, key).await
        };
        let mut st = self.inner.lock();
        match found {
            Some(_) => st.counters.lookup_hits += 1,
            None => st.counters.lookup_misses += 1,
        }
        found
    }

    /// Starts storing a new version of `obj.key`. The current version (if any) stays visible
    /// until the writer commits.
    pub async fn begin(&self, obj: NewObject) -> Result<ObjectWriter, StoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let hash = KeyHash::of(&obj.key);
        let chosen = self.inner.choose_disk(&hash);
        let version = self.inner.next_version.fetch_add(1, Ordering::Relaxed);
        let disk = {
            let mut st = self.inner.lock();
            // A disk that just refused a write is skipped: the object lives in memory only
            // if it may, else it is not stored at all (it passes through, whole).
            let disk = chosen.filter(|&d| !st.disks[d as usize].failing(Instant::now()));
            let skipped = disk.is_none() && chosen.is_some();
            let fits = match disk {
                Some(d) => obj
                    .total_len
                    .is_none_or(|t| t <= self.inner.disks[d as usize].quota),
                // In memory instead of a failing disk: only with a length memory admits.
                None if skipped => obj.total_len.is_some_and(|t| st.memory.admits_body(t)),
                None => st.memory.admits_body(obj.total_len.unwrap_or(0)),
            };
            if !fits {
                return Err(if skipped {
                    StoreError::DiskFailing
                } else {
                    StoreError::TooLarge
                });
            }
            st.pending.insert(version, memory::Pending::default());
            disk
        };
        let meta = ObjectMeta::new(obj, version, self.inner.chunk_size, disk);
        Ok(ObjectWriter::new(Arc::clone(&self.inner), hash, meta))
    }

    /// Chunk `index` of the object version `meta` describes (a committed meta, or a writer's
    /// snapshot): from memory if resident, else from disk with its CRC verified. `Missing` if
    /// that version no longer has it (replaced, removed, evicted); `Corrupt` if the stored bytes
    /// are damaged, in which case the object is removed so the caller refetches.
    pub async fn read_chunk(&self, meta: &ObjectMeta, index: u32) -> Result<Bytes, StoreError> {
        self.load_chunk(meta, index, false).await.map(|(b, _)| b)
    }

    /// [`Store::read_chunk`]; with `keep`, a chunk read from a memory-backed disk also comes
    /// with its verified file, to send it from (see `sendfile`).
    async fn load_chunk(
        &self,
        meta: &ObjectMeta,
        index: u32,
        keep: bool,
    ) -> Result<(Bytes, Option<FileSpan>), StoreError> {
        let Some(crc) = meta.chunk_crc(index) else {
            return Err(StoreError::Missing);
        };
        let hash = KeyHash::of(&meta.key);
        let version = meta.version;
        if let Some(b) = self.memory_chunk(&hash, version, index) {
            return Ok((b, None));
        }
        let inline_hint = self.inline_hint(&hash, version, index);
        let Some(d) = meta.disk else {
            return Err(StoreError::Missing);
        };
        let len = meta.stored_len(index);
        let result = self
            .inner
            .blocking(move |inner| {
                inner.disks[d as usize].load_chunk(
                    &hash,
                    version,
                    index,
                    len,
                    crc,
                    inline_hint,
                    keep,
                )
            })
            .await
            .and_then(|r| r);
        match result {
            Ok((b, file)) => {
                let mut st = self.inner.lock();
                st.counters.disk_hits += 1;
                st.promote_chunk(&hash, version, index, b.clone());
                st.enforce_memory();
                Ok((b, file))
            }
            Err(StoreError::Corrupt) => {
                tracing::warn!(key = %meta.key, index, "cache store: corrupt chunk, object removed");
                self.inner.lock().counters.corrupt += 1;
                self.inner.drop_version(hash, version).await;
                Err(StoreError::Corrupt)
            }
            Err(StoreError::Missing) => {
                // The current version lost a file it lists: it can no longer be served whole.
                self.inner.drop_version(hash, version).await;
                Err(StoreError::Missing)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether chunk `index` of `version` is the inline body of its `.meta` file (as far as
    /// the index knows; the disk read checks).
    fn inline_hint(&self, hash: &KeyHash, version: u64, index: u32) -> bool {
        index == 0
            && self
                .inner
                .lock()
                .index
                .get(hash)
                .is_some_and(|e| e.version == version && e.inline0)
    }

    /// Chunk `index` of `version` when memory holds it: the memory tier, or the version's
    /// writer while it is being filled.
    fn memory_chunk(&self, hash: &KeyHash, version: u64, index: u32) -> Option<Bytes> {
        let mut st = self.inner.lock();
        let b = st
            .mem_chunk(hash, version, index)
            .or_else(|| st.pending_chunk(version, index))?;
        st.counters.memory_hits += 1;
        Some(b)
    }

    /// Changes the stored meta of `key` in place (e.g. fresh headers after a 304, an expiry
    /// override) and rewrites its `.meta` file atomically. The closure may change `status`,
    /// `headers`, the times and `expires_override_ms`; identity and body fields (key, version,
    /// lengths, chunks, `complete`) are kept as they were. Returns the new meta, or `None`
    /// when the key is not stored (or the rewrite failed).
    pub async fn update_meta(
        &self,
        key: &str,
        f: impl FnOnce(&mut ObjectMeta),
    ) -> Option<Arc<ObjectMeta>> {
        let hash = KeyHash::of(key);
        let _stripe = self.inner.stripe(&hash).lock().await;
        let cur = self.inner.load_locked(hash, key).await?;
        let mut m = (*cur).clone();
        f(&mut m);
        m.key.clone_from(&cur.key);
        m.version = cur.version;
        m.total_len = cur.total_len;
        m.chunk_size = cur.chunk_size;
        m.complete = cur.complete;
        m.chunks.clone_from(&cur.chunks);
        m.disk = cur.disk;
        let mut disk_bytes = None;
        if let Some(d) = m.disk {
            let (inline0, held0) = {
                let st = self.inner.lock();
                let e = st.index.get(&hash)?;
                (e.inline0, e.mem().and_then(|mo| mo.chunk(0).cloned()))
            };
            let mm = m.clone();
            let written = self
                .inner
                .blocking(move |inner| -> Result<u64, StoreError> {
                    let disk = &inner.disks[d as usize];
                    let inline = match (inline0, held0) {
                        (false, _) => None,
                        (true, Some(b)) => Some(b),
                        (true, None) => match disk.read_meta(&hash)? {
                            Some(lm) if lm.meta.version == mm.version => lm.inline,
                            _ => return Err(StoreError::Missing),
                        },
                    };
                    Ok(disk.write_meta(&hash, &mm, inline.as_deref())?)
                })
                .await
                .and_then(|r| r);
            match written {
                Ok(file_len) => disk_bytes = Some(disk::object_cost(&m, file_len, inline0)),
                Err(e) => {
                    tracing::warn!(key, error = %e, "cache store: meta rewrite failed");
                    return None;
                }
            }
        }
        let meta = Arc::new(m);
        let mut st = self.inner.lock();
        st.replace_meta(&hash, Arc::clone(&meta), disk_bytes);
        st.enforce_memory();
        Some(meta)
    }

    /// Removes `key` (meta and chunks, every tier). Returns the body bytes it held, or `None`
    /// if it was not stored. Readers still holding its meta get `Missing`.
    pub async fn remove(&self, key: &str) -> Option<u64> {
        let hash = KeyHash::of(key);
        let _stripe = self.inner.stripe(&hash).lock().await;
        // Indexes it first if the rebuild has not reached it yet, so its files are known.
        self.inner.load_locked(hash, key).await?;
        let entry = {
            let mut st = self.inner.lock();
            match st.index.get(&hash) {
                Some(e) if e.key() == key => st.remove_entry(&hash)?,
                _ => return None,
            }
        };
        if let Some(d) = Doomed::of(hash, &entry) {
            self.inner.delete_locked(d).await;
        }
        Some(entry.size)
    }

    /// The keys stored in group `group` (keys `group` + [`GROUP_SEPARATOR`] + anything), found
    /// without listing every key. Until the background rebuild completes this lists only the
    /// members indexed so far.
    pub fn group_keys(&self, group: &str) -> Vec<String> {
        self.inner.lock().index.group_keys(group)
    }

    /// Every indexed key with the body bytes it holds (for purge by pattern). Until the
    /// background rebuild completes this lists only the objects indexed so far.
    pub fn keys(&self) -> Vec<(String, u64)> {
        let st = self.inner.lock();
        st.index
            .iter()
            .map(|(_, e)| (e.key().to_owned(), e.size))
            .collect()
    }

    /// Where `key` lives now, without counting an access. `None` if not indexed.
    pub fn residency(&self, key: &str) -> Option<Residency> {
        let hash = KeyHash::of(key);
        let st = self.inner.lock();
        let e = st.index.get(&hash).filter(|e| e.key() == key)?;
        Some(Residency {
            version: e.version,
            meta_in_memory: e.mem().is_some(),
            memory_chunk_bytes: e.mem().map_or(0, |m| m.resident_bytes()),
            disk: e.disk(),
        })
    }

    /// A snapshot of the counters and gauges.
    pub fn stats(&self) -> StoreStats {
        let st = self.inner.lock();
        let c = st.counters;
        let now = Instant::now();
        StoreStats {
            memory_bytes: st.memory.fifo.used(),
            memory_capacity: st.memory.fifo.capacity(),
            memory_objects: st.memory.fifo.len() as u64,
            memory_pending_bytes: st.memory.pending_bytes,
            disk_bytes: st.disks.iter().map(|d| d.fifo.used()).sum(),
            disk_reserved_bytes: st.disks.iter().map(|d| d.reserved).sum(),
            disk_quota_bytes: st.disks.iter().map(|d| d.fifo.capacity()).sum(),
            disk_objects: st.disks.iter().map(|d| d.fifo.len() as u64).sum(),
            objects: st.index.len() as u64,
            index_bytes: st.index_bytes(),
            index_complete: self.inner.index_complete.load(Ordering::Acquire),
            lookup_hits: c.lookup_hits,
            lookup_misses: c.lookup_misses,
            memory_hits: c.memory_hits,
            disk_hits: c.disk_hits,
            memory_evictions: c.memory_evictions,
            disk_evictions: c.disk_evictions,
            corrupt: c.corrupt,
            disk_write_errors: c.disk_write_errors,
            disks_failing: st.disks.iter().filter(|d| d.failing(now)).count() as u64,
        }
    }

    /// Waits until the background rebuild has indexed every object on disk (at once for a
    /// memory-only store). Returns `false` if the store was closed first.
    pub async fn wait_rebuilt(&self) -> bool {
        loop {
            let notified = self.inner.rebuilt.notified();
            if self.inner.index_complete.load(Ordering::Acquire) {
                return true;
            }
            if self.inner.closed.load(Ordering::Acquire)
                && self.inner.bg_tasks.load(Ordering::Acquire) == 0
            {
                return false;
            }
            notified.await;
        }
    }

    /// Clean stop: refuses new writes, stops the background rebuild and waits for pending
    /// deletions. Committed objects are already on disk (every commit writes its meta before
    /// returning), so nothing else needs flushing.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.wait_idle().await;
        self.inner.rebuilt.notify_waiters();
    }
}

impl Inner {
    /// The bookkeeping lock. Poisoning is ignored: the state stays consistent between
    /// statements that could panic.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stripe lock of a key.
    fn stripe(&self, h: &KeyHash) -> &tokio::sync::Mutex<()> {
        &self.stripes[(h.lo as usize) % STRIPES]
    }

    /// Keeps new versions above every version seen on disk.
    fn saw_version(&self, v: u64) {
        self.next_version
            .fetch_max(v.saturating_add(1), Ordering::Relaxed);
    }

    /// Rendezvous score of disk `d` for `h`, weighted by quota: adding or removing a disk moves
    /// only the keys that belong to it.
    fn disk_score(&self, h: &KeyHash, d: usize) -> f64 {
        let mut x = h.lo ^ h.hi.rotate_left(17) ^ (d as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // splitmix64 finaliser
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        let u = ((x >> 11) as f64 + 1.0) / (1u64 << 53) as f64; // (0, 1]
        let w = self.disks[d].quota as f64;
        if u >= 1.0 { f64::INFINITY } else { w / -u.ln() }
    }

    /// The disk a new version of `h` is written to.
    fn choose_disk(&self, h: &KeyHash) -> Option<u8> {
        (0..self.disks.len())
            .filter(|&d| self.disks[d].quota > 0)
            .map(|d| (self.disk_score(h, d), d))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, d)| d as u8)
    }

    /// All disks in preference order for `h` (where to look for a key not indexed yet).
    fn disk_order(&self, h: &KeyHash) -> Vec<u8> {
        let mut ds: Vec<(f64, usize)> = (0..self.disks.len())
            .map(|d| (self.disk_score(h, d), d))
            .collect();
        ds.sort_by(|a, b| b.0.total_cmp(&a.0));
        ds.into_iter().map(|(_, d)| d as u8).collect()
    }

    /// Runs blocking file work on the blocking pool.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Inner) -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Io(Arc::new(std::io::Error::other(e))))
    }

    /// Spawns background work that `close` waits for.
    fn spawn_tracked(self: &Arc<Self>, fut: impl Future<Output = ()> + Send + 'static) {
        let guard = BgGuard::enter(self);
        self.rt.spawn(async move {
            let _guard = guard;
            fut.await;
        });
    }

    /// Waits until no tracked background work is running.
    async fn wait_idle(&self) {
        loop {
            let notified = self.bg_idle.notified();
            if self.bg_tasks.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Deletes files of versions that left the index, in the background.
    fn delete_in_background(self: &Arc<Self>, doomed: Vec<Doomed>) {
        if doomed.is_empty() {
            return;
        }
        let inner = Arc::clone(self);
        self.spawn_tracked(async move {
            for d in doomed {
                let _stripe = inner.stripe(&d.hash).lock().await;
                inner.delete_locked(d).await;
            }
        });
    }

    /// Deletes the files of versions that left the index and waits until they are gone, so
    /// the space they held is free before the caller writes into it (the files on disk stay
    /// within the quota, not only the accounting). The deletion runs as a tracked task, so it
    /// completes even if the caller's future is dropped.
    async fn delete_and_wait(self: &Arc<Self>, doomed: Vec<Doomed>) {
        if doomed.is_empty() {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let inner = Arc::clone(self);
        self.spawn_tracked(async move {
            for d in doomed {
                let _stripe = inner.stripe(&d.hash).lock().await;
                inner.delete_locked(d).await;
            }
            let _ = tx.send(());
        });
        let _ = rx.await;
    }

    /// Deletes a doomed version's files; the caller holds the key's stripe lock. A version a
    /// reader still streams keeps its files until the reader is done (see [`ReaderHold`]); the disk
    /// may hold that much over its quota meanwhile.
    async fn delete_locked(self: &Arc<Self>, d: Doomed) {
        if let Ok(mut pins) = self.pins.lock()
            && pins.readers.contains_key(&(d.hash, d.version))
        {
            pins.deferred.push(d);
            return;
        }
        let delete_meta = self
            .lock()
            .index
            .get(&d.hash)
            .is_none_or(|e| e.disk != d.disk);
        let _ = self
            .blocking(move |inner| {
                let disk = &inner.disks[d.disk as usize];
                if delete_meta {
                    disk.remove_meta(&d.hash);
                }
                disk.remove_chunks(&d.hash, d.version, d.chunk_count, d.inline0);
            })
            .await;
        // Open handles would keep the deleted files' space (memory, on tmpfs) in use.
        self.send_files.forget(&d.hash, d.version);
        // Loadable again: either gone, or the index (checked first) has the key anyway.
        self.lock().evicting.remove(&d.hash);
    }

    /// Removes the object if `version` is still its current version (its files are broken).
    async fn drop_version(self: &Arc<Self>, hash: KeyHash, version: u64) {
        let _stripe = self.stripe(&hash).lock().await;
        let doomed = {
            let mut st = self.lock();
            match st.index.get(&hash) {
                Some(e) if e.version == version => {
                    st.remove_entry(&hash).and_then(|e| Doomed::of(hash, &e))
                }
                _ => None,
            }
        };
        if let Some(d) = doomed {
            self.delete_locked(d).await;
        }
    }

    /// The current meta of `key`, loading it from disk when it is not in memory; the caller
    /// holds the key's stripe lock, so the `.meta` file cannot change meanwhile.
    async fn load_locked(self: &Arc<Self>, hash: KeyHash, key: &str) -> Option<Arc<ObjectMeta>> {
        let complete = self.index_complete.load(Ordering::Acquire);
        let (candidates, indexed) = {
            let mut st = self.lock();
            match st.probe(&hash, key, complete, false) {
                Probe::Hit(m) => return Some(m),
                Probe::Miss => return None,
                Probe::Cold => match st.index.get(&hash).and_then(Entry::disk) {
                    Some(d) => (vec![d], true),
                    None => return None,
                },
                Probe::Unknown => (self.disk_order(&hash), false),
            }
        };
        for d in candidates {
            let res = self
                .blocking(move |inner| inner.disks[d as usize].read_meta(&hash))
                .await;
            match res.and_then(|r| r) {
                Ok(Some(lm)) if lm.meta.key == key => {
                    let (meta, doomed) = self.install_loaded(hash, d, lm, true);
                    self.delete_in_background(doomed);
                    return Some(meta);
                }
                Ok(_) => {}
                Err(StoreError::Corrupt) => {
                    tracing::warn!(key, "cache store: corrupt meta file, object removed");
                    self.lock().counters.corrupt += 1;
                    // Its chunk files are orphans now; the rebuild (or the drop below) deletes them.
                    let _ = self
                        .blocking(move |inner| inner.disks[d as usize].remove_meta(&hash))
                        .await;
                }
                Err(e) => {
                    tracing::warn!(key, error = %e, "cache store: cannot read meta");
                    return None;
                }
            }
        }
        if indexed {
            // The index listed it but its meta is gone: the object is lost.
            let doomed = {
                let mut st = self.lock();
                st.remove_entry(&hash).and_then(|e| Doomed::of(hash, &e))
            };
            if let Some(d) = doomed {
                self.delete_locked(d).await;
            }
        }
        None
    }

    /// Indexes a meta read from disk `d` (unless the index already has exactly it) and, with
    /// `with_mem`, gives it a memory copy (plus its inline chunk 0 when small enough). The
    /// caller holds the key's stripe lock. Returns the meta now current and files to delete.
    fn install_loaded(
        &self,
        hash: KeyHash,
        d: u8,
        lm: LoadedMeta,
        with_mem: bool,
    ) -> (Arc<ObjectMeta>, Vec<Doomed>) {
        let LoadedMeta {
            mut meta,
            inline,
            inline0,
            file_len,
        } = lm;
        meta.disk = Some(d);
        self.saw_version(meta.version);
        let cost = disk::object_cost(&meta, file_len, inline0);
        let meta = Arc::new(meta);
        let mut st = self.lock();
        let mem = with_mem.then(|| {
            let total = meta.total_len.unwrap_or(u64::MAX);
            let mut chunks = Vec::new();
            if let Some(b) = inline.filter(|_| st.memory.admits_body(total)) {
                chunks = vec![None; meta.chunk_slots().len()];
                chunks[0] = Some(b);
            }
            MemObject::new(Arc::clone(&meta), chunks)
        });
        let mut doomed = Vec::new();
        let same = st
            .index
            .get(&hash)
            .is_some_and(|e| e.version == meta.version && e.disk == d);
        if same {
            if let Some(m) = mem {
                st.attach_mem(&hash, meta.version, m);
            }
        } else {
            let entry = Entry::new(&meta, mem.map(Box::new), d, cost, inline0);
            // An entry that disagreed with the file was stale: its other files are orphans.
            let old = st.insert_entry(hash, entry, Placement::Established);
            doomed.extend(old.and_then(|o| Doomed::of(hash, &o)));
            doomed.extend(st.enforce_disk(d));
        }
        st.enforce_memory();
        let current = st
            .index
            .get(&hash)
            .and_then(Entry::mem)
            .map_or(meta, |m| Arc::clone(&m.meta));
        (current, doomed)
    }
}

/// Counts one tracked background task; decrements (and wakes `close`) when dropped, also
/// when the task panics or the runtime drops it. Holds only a weak reference, so a running
/// rebuild does not keep a dropped store alive.
pub(crate) struct BgGuard(Weak<Inner>);

impl BgGuard {
    /// Registers a task.
    pub(crate) fn enter(inner: &Arc<Inner>) -> BgGuard {
        inner.bg_tasks.fetch_add(1, Ordering::AcqRel);
        BgGuard(Arc::downgrade(inner))
    }
}

impl Drop for BgGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade()
            && inner.bg_tasks.fetch_sub(1, Ordering::AcqRel) == 1
        {
            inner.bg_idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests;
