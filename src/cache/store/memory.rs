//! The memory tier: metas and chunk bytes of objects kept in RAM, bounded by bytes under
//! S3-FIFO, plus the chunks that in-progress writers hold until they commit.
//!
//! The tier is inclusive of the disk tier: a disk object can have its meta (and, when small
//! enough, its chunks) here too. Objects above `memory_max_object` only ever get their meta
//! here, so a hot large object costs no disk read for its lookup but never fills RAM.

use std::sync::Arc;

use bytes::Bytes;

use super::index::{Entry, KeyHash};
use super::meta::{ObjectMeta, alloc_cost};
use super::s3fifo::S3Fifo;

/// Memory a resident chunk of `len` bytes takes: its buffer's allocation plus the shared
/// header `Bytes` allocates once the chunk is cloned.
fn chunk_cost(len: usize) -> u64 {
    alloc_cost(len) + alloc_cost(3 * size_of::<usize>())
}

/// Bookkeeping of an object that lives in memory only, charged to the memory tier: its index
/// slot (hash table slot and control byte, at an average load of 2/3) and its S3-FIFO queue
/// slot (queues at half capacity on average). A disk object's are counted in `index_bytes`.
const MEMORY_ONLY_INDEX_COST: u64 =
    ((size_of::<(KeyHash, Entry)>() + 1) * 3 / 2 + size_of::<(KeyHash, u32)>() * 2) as u64;

/// The memory tier's copy of one object.
pub(crate) struct MemObject {
    /// The current meta; handed out by `lookup` without touching the disk.
    pub meta: Arc<ObjectMeta>,
    /// Resident chunks.
    chunks: Resident,
    /// Bytes charged to the tier: what the meta, this copy and its resident chunks take in
    /// memory, allocator overhead included (and the index slot of a memory-only object).
    pub weight: u64,
    /// The part of `weight` that is the meta's derived value (see [`ObjectMeta::derived`]):
    /// it appears after the copy was weighed, on the first hit.
    derived_charged: u64,
}

/// Resident chunks of a memory copy. A small object's single chunk needs no table.
enum Resident {
    /// None (a meta-only copy).
    Nothing,
    /// Chunk 0 only.
    First(Bytes),
    /// Any chunks, indexed like the meta's chunk table.
    Table(Box<[Option<Bytes>]>),
}

impl Resident {
    /// The compact form of a chunk table.
    fn from_table(chunks: Vec<Option<Bytes>>) -> Resident {
        if chunks.iter().skip(1).any(Option::is_some) {
            Resident::Table(chunks.into_boxed_slice())
        } else {
            match chunks.into_iter().next().flatten() {
                Some(b) => Resident::First(b),
                None => Resident::Nothing,
            }
        }
    }

    /// The chunks as a table of `n` slots.
    fn into_table(self, n: usize) -> Vec<Option<Bytes>> {
        let mut t = match self {
            Resident::Nothing => Vec::new(),
            Resident::First(b) => vec![Some(b)],
            Resident::Table(t) => t.into_vec(),
        };
        t.resize(n.max(t.len()), None);
        t
    }
}

impl MemObject {
    /// A copy holding `meta` and the given chunks (an empty vector = meta only).
    pub fn new(meta: Arc<ObjectMeta>, chunks: Vec<Option<Bytes>>) -> MemObject {
        let body: u64 = chunks.iter().flatten().map(|b| chunk_cost(b.len())).sum();
        let mut m = MemObject {
            derived_charged: meta.derived.bytes(),
            meta,
            chunks: Resident::from_table(chunks),
            weight: 0,
        };
        m.weight = m.fixed_cost() + body;
        m
    }

    /// The weight of the copy without its chunks.
    fn fixed_cost(&self) -> u64 {
        let table = match &self.chunks {
            Resident::Table(t) => alloc_cost(t.len() * size_of::<Option<Bytes>>()),
            _ => 0,
        };
        let index = if self.meta.disk.is_none() {
            MEMORY_ONLY_INDEX_COST
        } else {
            0
        };
        self.meta.approx_bytes()
            + self.derived_charged
            + alloc_cost(size_of::<MemObject>())
            + table
            + index
    }

    /// Charges the meta's derived value if it appeared (or changed) since the copy was
    /// weighed; returns the weight before, or None when nothing changed.
    pub fn charge_derived(&mut self) -> Option<u64> {
        let now = self.meta.derived.bytes();
        if now == self.derived_charged {
            return None;
        }
        let before = self.weight;
        self.weight = self.weight - self.derived_charged + now;
        self.derived_charged = now;
        Some(before)
    }

    /// Resident chunk `i`.
    pub fn chunk(&self, i: u32) -> Option<&Bytes> {
        match &self.chunks {
            Resident::Nothing => None,
            Resident::First(b) => (i == 0).then_some(b),
            Resident::Table(t) => t.get(i as usize)?.as_ref(),
        }
    }

    /// Body bytes resident.
    pub fn resident_bytes(&self) -> u64 {
        match &self.chunks {
            Resident::Nothing => 0,
            Resident::First(b) => b.len() as u64,
            Resident::Table(t) => t.iter().flatten().map(|b| b.len() as u64).sum(),
        }
    }

    /// Makes chunk `i` resident; returns the weight added (0 if it already was).
    pub fn put_chunk(&mut self, i: u32, data: Bytes) -> u64 {
        let Some(n) = self.meta.chunk_count() else {
            return 0;
        };
        if i >= n || self.chunk(i).is_some() {
            return 0;
        }
        let before = self.weight;
        let fixed = self.fixed_cost();
        let add = chunk_cost(data.len());
        match &mut self.chunks {
            Resident::Table(t) if (i as usize) < t.len() => t[i as usize] = Some(data),
            Resident::Nothing if i == 0 => self.chunks = Resident::First(data),
            _ => {
                let mut t =
                    std::mem::replace(&mut self.chunks, Resident::Nothing).into_table(n as usize);
                t[i as usize] = Some(data);
                self.chunks = Resident::Table(t.into_boxed_slice());
            }
        }
        // A table may have appeared: the fixed part is recomputed.
        self.weight = self.weight - fixed + self.fixed_cost() + add;
        self.weight - before
    }

    /// Replaces the meta (same version, new headers or times), keeping resident chunks.
    pub fn set_meta(&mut self, meta: Arc<ObjectMeta>) {
        let old = self.fixed_cost();
        self.derived_charged = meta.derived.bytes();
        self.meta = meta;
        self.weight = self.weight - old + self.fixed_cost();
    }
}

/// Byte-bounded memory tier policy and limits.
pub(crate) struct MemoryTier {
    /// Admission/eviction over the resident copies, weighted by [`MemObject::weight`].
    pub fifo: S3Fifo<KeyHash>,
    /// Largest body whose chunks may be resident.
    pub max_object: u64,
    /// Bytes of chunks held by in-progress writers (not yet in the tier).
    pub pending_bytes: u64,
}

impl MemoryTier {
    /// A tier of `capacity` bytes admitting chunks of bodies up to `max_object` bytes.
    pub fn new(capacity: u64, max_object: u64) -> MemoryTier {
        MemoryTier {
            fifo: S3Fifo::new(capacity),
            max_object: max_object.min(capacity),
            pending_bytes: 0,
        }
    }

    /// Whether chunks of a body of `len` bytes may be resident.
    pub fn admits_body(&self, len: u64) -> bool {
        self.fifo.capacity() > 0 && len <= self.max_object
    }
}

/// Chunks an in-progress writer keeps in memory: the chunks of a body small enough for the
/// memory tier, and chunk 0 while it may still be inlined into the `.meta` file. Readers of
/// the fill find them here before the disk.
#[derive(Default)]
pub(crate) struct Pending {
    /// Held chunks by index.
    pub chunks: Vec<Option<Bytes>>,
}

impl Pending {
    /// Chunk `i`, if held.
    pub fn chunk(&self, i: u32) -> Option<&Bytes> {
        self.chunks.get(i as usize)?.as_ref()
    }

    /// Holds chunk `i`; returns the bytes added (a replaced chunk's bytes are subtracted).
    pub fn put(&mut self, i: u32, data: Bytes) -> i64 {
        let i = i as usize;
        if self.chunks.len() <= i {
            self.chunks.resize(i + 1, None);
        }
        let add = data.len() as i64;
        let old = self.chunks[i].replace(data).map_or(0, |b| b.len() as i64);
        add - old
    }

    /// Drops chunk `i`; returns the bytes freed.
    pub fn drop_chunk(&mut self, i: u32) -> u64 {
        self.chunks
            .get_mut(i as usize)
            .and_then(Option::take)
            .map_or(0, |b| b.len() as u64)
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().flatten().map(|b| b.len() as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::super::meta::NewObject;
    use super::*;

    fn meta(total: u64) -> Arc<ObjectMeta> {
        let obj = NewObject {
            key: "k".into(),
            total_len: Some(total),
            ..Default::default()
        };
        Arc::new(ObjectMeta::new(obj, 1, 10, None))
    }

    #[test]
    fn weight_tracks_resident_chunks() {
        let mut m = MemObject::new(meta(25), Vec::new());
        let base = m.weight;
        // A chunk past 0 needs a table: its allocation is charged with the chunk.
        let table = alloc_cost(3 * size_of::<Option<Bytes>>());
        let add = m.put_chunk(1, Bytes::from_static(&[0; 10]));
        assert_eq!(add, chunk_cost(10) + table);
        assert_eq!(m.put_chunk(1, Bytes::from_static(&[0; 10])), 0);
        assert_eq!(m.put_chunk(7, Bytes::from_static(&[0; 10])), 0);
        assert_eq!(m.weight, base + add);
        assert_eq!(m.resident_bytes(), 10);
        assert!(m.chunk(1).is_some() && m.chunk(0).is_none());
        assert_eq!(m.put_chunk(0, Bytes::from_static(&[1; 10])), chunk_cost(10));
        assert_eq!(m.resident_bytes(), 20);
        assert_eq!(m.chunk(0).map(|b| b[0]), Some(1));
    }

    #[test]
    fn single_chunk_needs_no_table() {
        let mut m = MemObject::new(meta(5), Vec::new());
        let base = m.weight;
        assert_eq!(m.put_chunk(0, Bytes::from_static(&[2; 5])), chunk_cost(5));
        assert!(matches!(m.chunks, Resident::First(_)));
        assert_eq!(m.weight, base + chunk_cost(5));
        let n = MemObject::new(meta(5), vec![Some(Bytes::from_static(&[2; 5]))]);
        assert!(matches!(n.chunks, Resident::First(_)));
        assert_eq!(n.weight, m.weight);
        assert_eq!(n.chunk(0).map(Bytes::len), Some(5));
        assert!(n.chunk(1).is_none());
    }

    #[test]
    fn weight_counts_what_memory_holds() {
        // A memory-only 1 KiB object: meta, copy, chunk and index slot, overhead included.
        let obj = NewObject {
            key: "example.com/small/1.bin".into(),
            total_len: Some(1024),
            ..Default::default()
        };
        let small = ObjectMeta::new(obj, 1, 4096, None);
        let m = MemObject::new(
            Arc::new(small.clone()),
            vec![Some(Bytes::from(vec![0; 1024]))],
        );
        assert!(m.weight > 1024 + MEMORY_ONLY_INDEX_COST, "{}", m.weight);
        let mut on_disk = small;
        on_disk.disk = Some(0);
        let d = MemObject::new(Arc::new(on_disk), vec![Some(Bytes::from(vec![0; 1024]))]);
        assert_eq!(m.weight - d.weight, MEMORY_ONLY_INDEX_COST);
    }

    #[test]
    fn pending_accounting() {
        let mut p = Pending::default();
        assert_eq!(p.put(2, Bytes::from_static(&[1; 4])), 4);
        assert_eq!(p.put(2, Bytes::from_static(&[1; 3])), -1);
        assert_eq!(p.bytes(), 3);
        assert_eq!(p.drop_chunk(2), 3);
        assert_eq!(p.bytes(), 0);
    }
}
