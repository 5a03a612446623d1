//! The memory tier: metas and chunk bytes of objects kept in RAM, bounded by bytes under
//! S3-FIFO, plus the chunks that in-progress writers hold until they commit.
//!
//! The tier is inclusive of the disk tier: a disk object can have its meta (and, when small
//! enough, its chunks) here too. Objects above `memory_max_object` only ever get their meta
//! here, so a hot large object costs no disk read for its lookup but never fills RAM.

use std::sync::Arc;

use bytes::Bytes;

use super::index::KeyHash;
use super::meta::ObjectMeta;
use super::s3fifo::S3Fifo;

/// The memory tier's copy of one object.
pub(crate) struct MemObject {
    /// The current meta; handed out by `lookup` without touching the disk.
    pub meta: Arc<ObjectMeta>,
    /// Resident chunks, indexed like the meta's chunk table; empty for a meta-only copy.
    pub chunks: Box<[Option<Bytes>]>,
    /// Bytes charged to the tier: the meta's estimate plus resident chunk lengths.
    pub weight: u64,
}

impl MemObject {
    /// A copy holding `meta` and the given chunks (an empty vector = meta only).
    pub fn new(meta: Arc<ObjectMeta>, chunks: Vec<Option<Bytes>>) -> MemObject {
        let body: u64 = chunks.iter().flatten().map(|b| b.len() as u64).sum();
        let weight = meta.approx_bytes() + body;
        MemObject {
            meta,
            chunks: chunks.into_boxed_slice(),
            weight,
        }
    }

    /// Resident chunk `i`.
    pub fn chunk(&self, i: u32) -> Option<&Bytes> {
        self.chunks.get(i as usize)?.as_ref()
    }

    /// Body bytes resident.
    pub fn resident_bytes(&self) -> u64 {
        self.chunks.iter().flatten().map(|b| b.len() as u64).sum()
    }

    /// Makes chunk `i` resident; returns the weight added (0 if it already was).
    pub fn put_chunk(&mut self, i: u32, data: Bytes) -> u64 {
        let Some(n) = self.meta.chunk_count() else {
            return 0;
        };
        if self.chunks.is_empty() {
            self.chunks = vec![None; n as usize].into_boxed_slice();
        }
        match self.chunks.get_mut(i as usize) {
            Some(slot @ None) => {
                let add = data.len() as u64;
                *slot = Some(data);
                self.weight += add;
                add
            }
            _ => 0,
        }
    }

    /// Replaces the meta (same version, new headers or times), keeping resident chunks.
    pub fn set_meta(&mut self, meta: Arc<ObjectMeta>) {
        let old = self.meta.approx_bytes();
        self.weight = self.weight - old + meta.approx_bytes();
        self.meta = meta;
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
        assert_eq!(m.put_chunk(1, Bytes::from_static(&[0; 10])), 10);
        assert_eq!(m.put_chunk(1, Bytes::from_static(&[0; 10])), 0);
        assert_eq!(m.put_chunk(7, Bytes::from_static(&[0; 10])), 0);
        assert_eq!(m.weight, base + 10);
        assert_eq!(m.resident_bytes(), 10);
        assert!(m.chunk(1).is_some() && m.chunk(0).is_none());
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
