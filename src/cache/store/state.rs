//! The store's shared mutable state and the bookkeeping done under its lock: index, memory
//! tier, per-disk accounting, in-progress writers, and the evictions that keep every tier
//! within its budget. Nothing here performs I/O; it decides, and the callers act on disk.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::index::{DiskNodes, Entry, IdHasher, Index, KeyHash, MemNodes};
use super::memory::{MemObject, MemoryTier, Pending};
use super::meta::ObjectMeta;
use super::s3fifo::S3Fifo;

type IdBuild = BuildHasherDefault<IdHasher>;

/// Counters reported by `Store::stats`; bumped under the state lock the caller holds anyway.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub lookup_hits: u64,
    pub lookup_misses: u64,
    pub memory_hits: u64,
    pub disk_hits: u64,
    pub memory_evictions: u64,
    pub disk_evictions: u64,
    pub corrupt: u64,
    pub disk_write_errors: u64,
}

/// Quota accounting of one disk.
pub(crate) struct DiskTier {
    /// Eviction over the objects on this disk, weighted by their charged bytes.
    pub fifo: S3Fifo<KeyHash>,
    /// Bytes written by in-progress writers, not yet committed (or aborted).
    pub reserved: u64,
    /// After the disk refused a write: new objects are not given to it before this time.
    pub failing_until: Option<Instant>,
}

/// How long new objects keep away from a disk after it refused a write. The first object
/// after that tries it again.
pub(crate) const DISK_RETRY: Duration = Duration::from_secs(10);

impl DiskTier {
    /// Whether the disk refused a write less than [`DISK_RETRY`] ago.
    pub fn failing(&self, now: Instant) -> bool {
        self.failing_until.is_some_and(|t| now < t)
    }
}

/// Where a newly indexed object enters the disk policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// A new write: S3-FIFO admission (small queue unless a ghost).
    New,
    /// Found on disk (start-up): treated as established, main queue.
    Established,
}

/// Files of one version to delete after it left the index: its chunk files, and its `.meta`
/// file unless, by the time the deletion runs under the key's stripe lock, the index says the
/// key lives on that disk again (re-committed there, so the `.meta` is the new version's).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Doomed {
    pub hash: KeyHash,
    pub version: u64,
    pub disk: u8,
    pub chunk_count: u32,
    pub inline0: bool,
}

impl Doomed {
    /// The files of `e`, stored at `hash`; `None` for a memory-only object.
    pub fn of(hash: KeyHash, e: &Entry) -> Option<Doomed> {
        Some(Doomed {
            hash,
            version: e.version,
            disk: e.disk()?,
            chunk_count: e.chunk_count,
            inline0: e.inline0,
        })
    }
}

/// Result of looking a key up in memory.
pub(crate) enum Probe {
    /// Indexed and its meta is in memory.
    Hit(Arc<ObjectMeta>),
    /// Indexed (on disk) but its meta is not in memory.
    Cold,
    /// Not indexed, and the index is not complete yet: the disk may still have it.
    Unknown,
    /// Certainly not stored.
    Miss,
}

/// Everything behind the store's lock.
pub(crate) struct State {
    pub index: Index,
    pub memory: MemoryTier,
    pub disks: Vec<DiskTier>,
    /// Chunks held by in-progress writers, by version; also the set of live write versions
    /// (their chunk files are not orphans).
    pub pending: HashMap<u64, Pending, IdBuild>,
    /// Keys evicted from a disk whose files are not deleted yet: must not be loaded back.
    pub evicting: HashSet<KeyHash, IdBuild>,
    pub counters: Counters,
}

impl State {
    /// Empty state for a memory tier of `memory_bytes` and disks with the given quotas.
    pub fn new(memory_bytes: u64, memory_max_object: u64, quotas: &[u64]) -> State {
        State {
            index: Index::default(),
            memory: MemoryTier::new(memory_bytes, memory_max_object),
            disks: quotas
                .iter()
                .map(|&q| DiskTier {
                    fifo: S3Fifo::new(q),
                    reserved: 0,
                    failing_until: None,
                })
                .collect(),
            pending: HashMap::default(),
            evicting: HashSet::default(),
            counters: Counters::default(),
        }
    }

    /// The hot path of `lookup`: records the hit and returns the meta without I/O when it can.
    pub fn probe(&mut self, hash: &KeyHash, key: &str, index_complete: bool, touch: bool) -> Probe {
        match self.index.get_mut(hash) {
            Some(e) if e.key() == key => {
                if touch {
                    e.disk_node.touch();
                    e.mem_node.touch();
                }
                let Some(m) = e.mem_mut() else {
                    return Probe::Cold;
                };
                let meta = Arc::clone(&m.meta);
                // A hit since the last look may have parsed the meta: charge what that took.
                if touch && let Some(before) = m.charge_derived() {
                    let after = m.weight;
                    self.memory.fifo.reweigh(&e.mem_node, before, after);
                    if after > before {
                        self.enforce_memory();
                    }
                }
                Probe::Hit(meta)
            }
            Some(_) => Probe::Miss, // another key with the same 128-bit hash
            None if index_complete || self.evicting.contains(hash) => Probe::Miss,
            None => Probe::Unknown,
        }
    }

    /// Resident chunk `i` of `version`, from the memory tier.
    pub fn mem_chunk(&self, hash: &KeyHash, version: u64, i: u32) -> Option<Bytes> {
        let e = self.index.get(hash)?;
        if e.version != version {
            return None;
        }
        e.mem()?.chunk(i).cloned()
    }

    /// Chunk `i` held by the in-progress writer of `version`.
    pub fn pending_chunk(&self, version: u64, i: u32) -> Option<Bytes> {
        self.pending.get(&version)?.chunk(i).cloned()
    }

    /// Indexes `entry` (replacing and returning any previous entry of the key, detached from
    /// the policies) and registers it with the disk and memory policies.
    pub fn insert_entry(
        &mut self,
        hash: KeyHash,
        mut entry: Entry,
        place: Placement,
    ) -> Option<Entry> {
        let old = self.remove_entry(&hash);
        if let Some(d) = entry.disk() {
            let fifo = &mut self.disks[d as usize].fifo;
            let bytes = entry.disk_bytes();
            match place {
                Placement::New => fifo.insert(hash, &mut entry.disk_node, bytes),
                Placement::Established => fifo.insert_main(hash, &mut entry.disk_node, bytes),
            }
        }
        if entry.mem().is_some() {
            let w = entry.mem_weight();
            self.memory.fifo.insert(hash, &mut entry.mem_node, w);
        }
        self.index.insert(hash, entry);
        old
    }

    /// Unindexes the key, detaching it from the policies.
    pub fn remove_entry(&mut self, hash: &KeyHash) -> Option<Entry> {
        let mut e = self.index.remove(hash)?;
        let w = e.mem_weight();
        self.memory.fifo.remove(&mut e.mem_node, w);
        if let Some(d) = e.disk() {
            let bytes = e.disk_bytes();
            self.disks[d as usize].fifo.remove(&mut e.disk_node, bytes);
        }
        Some(e)
    }

    /// Gives an indexed object of `version` a memory copy, unless it has one.
    pub fn attach_mem(&mut self, hash: &KeyHash, version: u64, mem: MemObject) {
        if !self
            .index
            .get(hash)
            .is_some_and(|e| e.version == version && e.mem().is_none())
        {
            return;
        }
        let w = mem.weight;
        if let Some(e) = self.index.set_mem(hash, Some(Box::new(mem))) {
            self.memory.fifo.insert(*hash, &mut e.mem_node, w);
        }
    }

    /// Makes a chunk read from disk resident, when the object's memory copy exists, is still
    /// this version and its body may live in memory.
    pub fn promote_chunk(&mut self, hash: &KeyHash, version: u64, i: u32, data: Bytes) {
        let Some(e) = self.index.get_mut(hash) else {
            return;
        };
        if e.version != version {
            return;
        }
        let Some(m) = e.mem_mut() else { return };
        let total = m.meta.total_len.unwrap_or(u64::MAX);
        if !self.memory.admits_body(total) {
            return;
        }
        let old = m.weight;
        if m.put_chunk(i, data) > 0 {
            let new = m.weight;
            self.memory.fifo.reweigh(&e.mem_node, old, new);
        }
    }

    /// Replaces the meta of `version` (same version, updated fields) and its disk charge.
    pub fn replace_meta(&mut self, hash: &KeyHash, meta: Arc<ObjectMeta>, disk_bytes: Option<u64>) {
        let Some(e) = self.index.get_mut(hash) else {
            return;
        };
        if e.version != meta.version {
            return;
        }
        if let (Some(new), Some(d)) = (disk_bytes, e.disk()) {
            // The policy is charged what the entry holds, so removal takes off the same.
            let old = e.disk_bytes();
            let new = e.set_disk_bytes(new);
            self.disks[d as usize].fifo.reweigh(&e.disk_node, old, new);
        }
        if let Some(m) = e.mem_mut() {
            let old = m.weight;
            m.set_meta(meta);
            let new = m.weight;
            self.memory.fifo.reweigh(&e.mem_node, old, new);
            return;
        }
        let m = MemObject::new(meta, Vec::new());
        let w = m.weight;
        if let Some(e) = self.index.set_mem(hash, Some(Box::new(m))) {
            self.memory.fifo.insert(*hash, &mut e.mem_node, w);
        }
    }

    /// Evicts memory copies until the memory tier fits its capacity. An object with no disk
    /// copy leaves the store with its memory copy.
    pub fn enforce_memory(&mut self) {
        let cap = self.memory.fifo.capacity();
        while self.memory.fifo.used() > cap {
            let Some(victim) = self.memory.fifo.evict(&mut MemNodes(&mut self.index)) else {
                break;
            };
            self.counters.memory_evictions += 1;
            let gone = self
                .index
                .set_mem(&victim, None)
                .is_some_and(|e| e.disk().is_none());
            if gone {
                self.remove_entry(&victim);
            }
        }
        self.memory.fifo.compact(&mut MemNodes(&mut self.index));
    }

    /// Evicts whole objects from disk `d` until its committed plus reserved bytes fit the quota;
    /// returns the files to delete. Victims leave the index at once (lookups miss) and stay in
    /// `evicting` until their files are gone.
    pub fn enforce_disk(&mut self, d: u8) -> Vec<Doomed> {
        let mut doomed = Vec::new();
        let Some(tier) = self.disks.get(d as usize) else {
            return doomed;
        };
        let quota = tier.fifo.capacity();
        loop {
            let tier = &mut self.disks[d as usize];
            if tier.fifo.used() + tier.reserved <= quota {
                break;
            }
            let Some(victim) = tier.fifo.evict(&mut DiskNodes(&mut self.index)) else {
                break;
            };
            let Some(mut e) = self.index.remove(&victim) else {
                continue;
            };
            let w = e.mem_weight();
            self.memory.fifo.remove(&mut e.mem_node, w);
            self.counters.disk_evictions += 1;
            self.evicting.insert(victim);
            doomed.extend(Doomed::of(victim, &e));
        }
        self.disks[d as usize]
            .fifo
            .compact(&mut DiskNodes(&mut self.index));
        doomed
    }

    /// Approximate bytes of the index and policy bookkeeping (not of cached bodies or metas).
    pub fn index_bytes(&self) -> u64 {
        self.index.heap_bytes()
            + self.memory.fifo.heap_bytes()
            + self.disks.iter().map(|d| d.fifo.heap_bytes()).sum::<u64>()
    }
}
