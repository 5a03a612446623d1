//! Writing one new version of an object, chunk by chunk, readable while it is written.
//!
//! Each chunk is published as soon as it is stored: its file is renamed into place (or it is
//! held in memory) *before* the writer's meta snapshot lists it, so a reader holding any
//! snapshot finds every chunk the snapshot claims. Nothing is visible to `lookup` until
//! `commit` writes the meta; until then an older version stays served. A writer dropped without
//! commit deletes its chunk files, and a crash leaves only files that no committed meta lists,
//! which the start-up rebuild deletes.
//!
//! Chunk 0 is held back in memory while it is the only chunk: if the object turns out to be a
//! single chunk it is stored inline in the `.meta` file, one file instead of two.
//!
//! A disk that refuses a write (out of descriptors, out of space, gone read-only) does not fail
//! the fill when the memory tier may hold the whole body: the object goes on in memory only
//! and its files on that disk are deleted. Only a body too large for memory fails with the disk.
//! For a while after (`state::DISK_RETRY`) new objects skip that disk (`Store::begin`): in
//! memory if it may hold them, else not stored at all, so they pass through whole.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::Inner;
use super::disk::{self, CHUNK_HEADER_LEN};
use super::error::StoreError;
use super::index::{Entry, KeyHash, NO_DISK};
use super::memory::MemObject;
use super::meta::{ChunkSlot, ObjectMeta};
use super::state::{DISK_RETRY, Doomed, Placement};

/// Lifecycle of a writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Accepting chunks; on drop its files are deleted.
    Writing,
    /// Committed or cleaned up; nothing left to do on drop.
    Finished,
}

/// Stores one new version of an object. Obtained from [`super::Store::begin`].
pub struct ObjectWriter {
    inner: Arc<Inner>,
    hash: KeyHash,
    meta: Arc<ObjectMeta>,
    phase: Phase,
    /// Chunk 0 is held in memory only, not yet in a file (it may end up inline).
    deferred0: bool,
    /// The body is small enough for the memory tier: its chunks are held for it.
    keep: bool,
    /// Bytes of the chunks held for the memory tier.
    kept_bytes: u64,
    /// Disk bytes reserved against the quota for this writer's chunk files.
    reserved: u64,
    /// One past the highest chunk index a file may have been written for (for cleanup, even
    /// when a `write_chunk` future was cancelled mid-write).
    max_index: u32,
}

impl ObjectWriter {
    pub(super) fn new(inner: Arc<Inner>, hash: KeyHash, meta: ObjectMeta) -> ObjectWriter {
        ObjectWriter {
            inner,
            hash,
            meta: Arc::new(meta),
            phase: Phase::Writing,
            deferred0: false,
            keep: true,
            kept_bytes: 0,
            reserved: 0,
            max_index: 0,
        }
    }

    /// Snapshot of the object so far, chunks written included: hand it to readers of the
    /// in-progress fill, who read its chunks with [`super::Store::read_chunk`].
    pub fn meta(&self) -> Arc<ObjectMeta> {
        Arc::clone(&self.meta)
    }

    /// Stores chunk `index`. Every chunk but the last must be exactly `chunk_size` bytes; a
    /// short chunk is the last one and fixes the body length when it was unknown. Returns the
    /// new snapshot, which lists the chunk.
    pub async fn write_chunk(
        &mut self,
        index: u32,
        data: Bytes,
    ) -> Result<Arc<ObjectMeta>, StoreError> {
        if self.phase != Phase::Writing {
            return Err(StoreError::Invalid("writer already finished"));
        }
        let mut m = (*self.meta).clone();
        let cs = u64::from(m.chunk_size);
        let len = data.len() as u64;
        if len == 0 || len > cs {
            return Err(StoreError::Invalid("chunk length"));
        }
        match m.chunk_count() {
            Some(n) if index >= n => return Err(StoreError::Invalid("chunk index past the end")),
            Some(_) if len != m.chunk_len(index) => {
                return Err(StoreError::Invalid("chunk length"));
            }
            Some(_) => {}
            None if len < cs => {
                // The short chunk is the last: the body length is now known.
                if m.chunks
                    .iter()
                    .skip(index as usize + 1)
                    .any(|s| *s != ChunkSlot::Absent)
                {
                    return Err(StoreError::Invalid("short chunk before the end"));
                }
                m.total_len = Some(u64::from(index) * cs + len);
                m.chunks.resize(index as usize + 1, ChunkSlot::Absent);
            }
            None => {
                if m.chunks.len() <= index as usize {
                    m.chunks.resize(index as usize + 1, ChunkSlot::Absent);
                }
            }
        }
        let crc = self.place(&mut m, index, data).await?;
        m.chunks[index as usize] = ChunkSlot::Present { crc };
        self.meta = Arc::new(m);
        Ok(Arc::clone(&self.meta))
    }

    /// Stores bytes `offset..offset + data.len()` of chunk `index` when a range fill holds
    /// only part of it (an origin's 206 that starts or ends inside the chunk). The body length
    /// must be known. A span covering the whole chunk is stored as the full chunk; writing an
    /// index again replaces what was written for it. Returns the new snapshot.
    pub async fn write_part(
        &mut self,
        index: u32,
        offset: u32,
        data: Bytes,
    ) -> Result<Arc<ObjectMeta>, StoreError> {
        if self.phase != Phase::Writing {
            return Err(StoreError::Invalid("writer already finished"));
        }
        let m0 = &self.meta;
        let Some(n) = m0.chunk_count() else {
            return Err(StoreError::Invalid("a partial chunk needs the body length"));
        };
        let len = data.len() as u64;
        if index >= n || len == 0 || u64::from(offset) + len > m0.chunk_len(index) {
            return Err(StoreError::Invalid("span outside its chunk"));
        }
        if offset == 0 && len == m0.chunk_len(index) {
            return self.write_chunk(index, data).await;
        }
        let mut m = (**m0).clone();
        let crc = self.place(&mut m, index, data).await?;
        m.chunks[index as usize] = ChunkSlot::Part {
            start: offset,
            len: len as u32,
            crc,
        };
        self.meta = Arc::new(m);
        Ok(Arc::clone(&self.meta))
    }

    /// Puts `data` (chunk `index` or a part of it) in the object's tiers: on its disk, which
    /// the object leaves for memory alone when the write is refused, and in memory where that
    /// tier takes it. Returns the bytes' CRC for the chunk's slot.
    async fn place(
        &mut self,
        m: &mut ObjectMeta,
        index: u32,
        data: Bytes,
    ) -> Result<u32, StoreError> {
        let crc = crc32fast::hash(&data);
        self.max_index = self.max_index.max(index + 1);
        if let Some(d) = m.disk
            && let Err(e) = self.store_on_disk(d, m, index, &data, crc).await
        {
            self.leave_disk(m, data.len() as u64, e)?;
        }
        self.hold_in_memory(m, index, data)?;
        Ok(crc)
    }

    /// Reserves quota and writes the chunk file (or defers chunk 0).
    async fn store_on_disk(
        &mut self,
        d: u8,
        m: &ObjectMeta,
        index: u32,
        data: &Bytes,
        crc: u32,
    ) -> Result<(), StoreError> {
        let others = m
            .chunks
            .iter()
            .enumerate()
            .any(|(i, s)| i != 0 && *s != ChunkSlot::Absent);
        let defer = index == 0 && !others;
        let mut flush0 = None;
        if self.deferred0 && index != 0 {
            // A second chunk exists: chunk 0 will not be inline, give it its file now.
            let held = self.inner.lock().pending_chunk(m.version, 0);
            flush0 = held.zip(m.chunk_crc(0));
        }
        let cost = disk::file_cost((CHUNK_HEADER_LEN as u64) + data.len() as u64);
        if self.reserved + cost > self.inner.disks[d as usize].quota {
            return Err(StoreError::TooLarge);
        }
        self.reserve(d, cost).await;
        if defer {
            self.deferred0 = true;
            return Ok(());
        }
        let (hash, version, data) = (self.hash, m.version, data.clone());
        self.inner
            .blocking(move |inner| -> std::io::Result<()> {
                let disk = &inner.disks[d as usize];
                if let Some((b0, crc0)) = flush0 {
                    disk.write_chunk(&hash, version, 0, &b0, crc0)?;
                }
                disk.write_chunk(&hash, version, index, &data, crc)?;
                Ok(())
            })
            .await??;
        if self.deferred0 && index != 0 {
            self.deferred0 = false;
            if !self.keep {
                // Chunk 0 now has its file; it was held only to be inlined.
                let mut st = self.inner.lock();
                let freed = st.pending.get_mut(&version).map_or(0, |p| p.drop_chunk(0));
                st.memory.pending_bytes = st.memory.pending_bytes.saturating_sub(freed);
            }
        }
        Ok(())
    }

    /// The disk refused a write (`e`) for the object `m` describes, `extra` more bytes on the
    /// way. When every chunk so far is held in memory and the memory tier may hold the whole
    /// body, the object goes on in memory only: its files are deleted and its quota released,
    /// and the fill's clients never notice the disk. Otherwise `e` stands (the fill fails
    /// visibly). A quota refusal (`TooLarge`) is not a failing disk and always stands.
    fn leave_disk(
        &mut self,
        m: &mut ObjectMeta,
        extra: u64,
        e: StoreError,
    ) -> Result<(), StoreError> {
        let Some(d) = m.disk else {
            return Err(e);
        };
        if !matches!(e, StoreError::Io(_)) {
            return Err(e);
        }
        let body = m.total_len.unwrap_or(self.kept_bytes + extra);
        {
            let mut st = self.inner.lock();
            st.counters.disk_write_errors += 1;
            // New objects keep off this disk for a while (see `Store::begin`).
            st.disks[d as usize].failing_until = Some(Instant::now() + DISK_RETRY);
            if !(self.keep && st.memory.admits_body(body)) {
                return Err(e);
            }
            let r = &mut st.disks[d as usize].reserved;
            *r = r.saturating_sub(self.reserved);
        }
        tracing::warn!(key = %m.key, error = %e, "cache store: the disk refused a write; the object is kept in memory only");
        self.reserved = 0;
        self.remove_files(d, m.version);
        // Held in memory with the other chunks now, no longer waiting to be inlined.
        self.deferred0 = false;
        m.disk = None;
        Ok(())
    }

    /// Deletes, in the background, every chunk file this writer may have written on disk `d`.
    fn remove_files(&self, d: u8, version: u64) {
        if self.max_index == 0 {
            return;
        }
        let (hash, count) = (self.hash, self.max_index);
        let inner = Arc::clone(&self.inner);
        self.inner.spawn_tracked(async move {
            let _ = inner
                .blocking(move |i| i.disks[d as usize].remove_chunks(&hash, version, count, false))
                .await;
            // Open handles would keep the deleted files' space in use.
            inner.send_files.forget(&hash, version);
        });
    }

    /// Reserves `cost` bytes on disk `d`, evicting to make room, and waits until the evicted
    /// objects' files are deleted, so this chunk's file never pushes the directory over quota.
    async fn reserve(&mut self, d: u8, cost: u64) {
        self.reserved += cost;
        let doomed = {
            let mut st = self.inner.lock();
            st.disks[d as usize].reserved += cost;
            st.enforce_disk(d)
        };
        self.inner.delete_and_wait(doomed).await;
    }

    /// Holds the chunk for readers and for the memory tier, while the body may live there.
    fn hold_in_memory(
        &mut self,
        m: &ObjectMeta,
        index: u32,
        data: Bytes,
    ) -> Result<(), StoreError> {
        let mut st = self.inner.lock();
        let body = m
            .total_len
            .unwrap_or(0)
            .max(self.kept_bytes + data.len() as u64);
        let keep = self.keep && st.memory.admits_body(body);
        let must_hold = keep || (index == 0 && self.deferred0);
        if m.disk.is_none() && !keep {
            return Err(StoreError::TooLarge);
        }
        let st = &mut *st;
        let Some(p) = st.pending.get_mut(&m.version) else {
            return Err(StoreError::Invalid("writer no longer registered"));
        };
        if self.keep && !keep {
            // Too large for memory after all: drop what was held, except a deferred chunk 0
            // (it has no file yet).
            for i in u32::from(self.deferred0)..p.chunks.len() as u32 {
                st.memory.pending_bytes = st.memory.pending_bytes.saturating_sub(p.drop_chunk(i));
            }
            self.keep = false;
        }
        if must_hold {
            let delta = p.put(index, data.clone());
            st.memory.pending_bytes = st.memory.pending_bytes.saturating_add_signed(delta);
            if keep {
                self.kept_bytes = p.bytes();
            }
        }
        Ok(())
    }

    /// Sets the expiry override the object is committed with (a purge that arrived while
    /// it filled).
    pub fn set_expires_override(&mut self, at_ms: u64) {
        Arc::make_mut(&mut self.meta).expires_override_ms = Some(at_ms);
    }

    /// Makes the object visible as complete with a body of `total_len` bytes, replacing any
    /// previous version. Fails, leaving nothing visible, unless every chunk `0..n` is present
    /// and the lengths add up. Runs to completion even if the returned future is dropped.
    pub async fn commit(self, total_len: u64) -> Result<Arc<ObjectMeta>, StoreError> {
        let rt = self.inner.rt.clone();
        rt.spawn(self.commit_inner(total_len))
            .await
            .map_err(join_error)?
    }

    async fn commit_inner(self, total_len: u64) -> Result<Arc<ObjectMeta>, StoreError> {
        let mut m = (*self.meta).clone();
        let cs = u64::from(m.chunk_size);
        match m.total_len {
            Some(t) if t != total_len => return Err(StoreError::Incomplete("length mismatch")),
            Some(_) => {}
            None => {
                // Every chunk written so far was full (a short one would have fixed the length).
                if !total_len.is_multiple_of(cs) {
                    return Err(StoreError::Incomplete("length mismatch"));
                }
                let n = (total_len / cs) as usize;
                if m.chunks.iter().skip(n).any(|s| *s != ChunkSlot::Absent) {
                    return Err(StoreError::Incomplete("length mismatch"));
                }
                m.total_len = Some(total_len);
                m.chunks.resize(n, ChunkSlot::Absent);
            }
        }
        if !m.all_present() {
            return Err(StoreError::Incomplete("chunks missing"));
        }
        m.complete = true;
        self.finish(m).await
    }

    /// Keeps what was written as a partial object (for Range fills): `lookup` returns it with
    /// `complete == false` (or `true` if every chunk happens to be present). The body length
    /// must be known.
    pub async fn commit_partial(self) -> Result<Arc<ObjectMeta>, StoreError> {
        let rt = self.inner.rt.clone();
        rt.spawn(self.commit_partial_inner())
            .await
            .map_err(join_error)?
    }

    async fn commit_partial_inner(self) -> Result<Arc<ObjectMeta>, StoreError> {
        let mut m = (*self.meta).clone();
        if m.total_len.is_none() {
            return Err(StoreError::Invalid(
                "a partial object needs its total length",
            ));
        }
        if !m.chunks.iter().any(|s| *s != ChunkSlot::Absent) {
            return Err(StoreError::Incomplete("no chunk written"));
        }
        m.complete = m.all_present();
        self.finish(m).await
    }

    /// Writes the meta (the commit point on disk), then swaps the index entry, then deletes
    /// the replaced version's files. On error `self` drops and cleans up.
    async fn finish(mut self, mut m: ObjectMeta) -> Result<Arc<ObjectMeta>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let hash = self.hash;
        let version = m.version;
        let _stripe = inner.stripe(&hash).lock().await;

        let (disk_bytes, inline0) = match m.disk {
            Some(d) => {
                let inline = if self.deferred0 {
                    inner.lock().pending_chunk(version, 0)
                } else {
                    None
                };
                if self.deferred0 && inline.is_none() {
                    return Err(StoreError::Invalid("deferred chunk lost"));
                }
                let (mm, inl) = (m.clone(), inline.clone());
                let written = inner
                    .blocking(move |i| i.disks[d as usize].write_meta(&hash, &mm, inl.as_deref()))
                    .await
                    .and_then(|r| r.map_err(StoreError::from));
                match written {
                    Ok(file_len) => (
                        disk::object_cost(&m, file_len, inline.is_some()),
                        inline.is_some(),
                    ),
                    Err(e) => {
                        self.leave_disk(&mut m, 0, e)?;
                        (0, false)
                    }
                }
            }
            None => (0, false),
        };

        let meta = Arc::new(m);
        let doomed = {
            let mut st = inner.lock();
            let pending = st.pending.remove(&version).unwrap_or_default();
            st.memory.pending_bytes = st.memory.pending_bytes.saturating_sub(pending.bytes());
            if let Some(d) = meta.disk {
                let r = &mut st.disks[d as usize].reserved;
                *r = r.saturating_sub(self.reserved);
            }
            self.reserved = 0;
            let n = meta.chunk_slots().len();
            let mem = (st.memory.fifo.capacity() > 0).then(|| {
                let total = meta.total_len.unwrap_or(u64::MAX);
                let chunks = if self.keep && st.memory.admits_body(total) {
                    let mut c = pending.chunks;
                    c.resize(n, None);
                    c
                } else {
                    Vec::new() // meta only: lookups of a large object still avoid the disk
                };
                Box::new(MemObject::new(Arc::clone(&meta), chunks))
            });
            let disk = meta.disk.unwrap_or(NO_DISK);
            let entry = Entry::new(&meta, mem, disk, disk_bytes, inline0);
            let old = st.insert_entry(hash, entry, Placement::New);
            // The replaced version: its chunks go; its meta only if it was on another disk
            // (on this one it has just been overwritten).
            let mut doomed: Vec<Doomed> =
                old.and_then(|o| Doomed::of(hash, &o)).into_iter().collect();
            if let Some(d) = meta.disk {
                doomed.extend(st.enforce_disk(d));
            }
            st.enforce_memory();
            doomed
        };
        self.phase = Phase::Finished;
        drop(_stripe);
        inner.delete_and_wait(doomed).await;
        Ok(meta)
    }

    /// Discards the object: nothing of it becomes visible and its files are deleted.
    pub async fn abort(mut self) {
        self.cleanup();
    }

    /// Unregisters the writer, releases its quota reservation and deletes its chunk files.
    fn cleanup(&mut self) {
        if self.phase != Phase::Writing {
            return;
        }
        self.phase = Phase::Finished;
        let version = self.meta.version;
        let disk = self.meta.disk;
        {
            let mut st = self.inner.lock();
            if let Some(p) = st.pending.remove(&version) {
                st.memory.pending_bytes = st.memory.pending_bytes.saturating_sub(p.bytes());
            }
            if let Some(d) = disk {
                let r = &mut st.disks[d as usize].reserved;
                *r = r.saturating_sub(self.reserved);
            }
        }
        self.reserved = 0;
        if let Some(d) = disk {
            self.remove_files(d, version);
        }
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn join_error(e: tokio::task::JoinError) -> StoreError {
    StoreError::Io(Arc::new(std::io::Error::other(e)))
}
