//! Object metadata — what the store knows about one cached object — and its on-disk encoding.
//!
//! An object is a response (status, headers, times) plus a body cut into fixed-size chunks;
//! only the last chunk may be short. The meta records which chunks are held and the CRC-32 of
//! each, so a partially stored object (a Range fill) knows exactly which bytes it can serve.

use std::ops::{Deref, DerefMut, Range};
use std::sync::Arc;

use super::error::StoreError;
use super::headers::{Headers, HeadersBuilder};

/// Presence of one chunk of an object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChunkSlot {
    /// Not stored: never written, or outside what a partial fill fetched.
    #[default]
    Absent,
    /// Stored; `crc` is the CRC-32 of the chunk's bytes, checked on every disk read.
    Present {
        /// CRC-32 (IEEE) of the chunk's bytes.
        crc: u32,
    },
    /// Only bytes `start..start + len` of the chunk are stored (an origin's 206 that began or
    /// ended inside it); the stored bytes are exactly that span.
    Part {
        /// Offset of the span inside the chunk.
        start: u32,
        /// Length of the span (never the whole chunk: that is `Present`).
        len: u32,
        /// CRC-32 (IEEE) of the span's bytes.
        crc: u32,
    },
}

/// Everything the store keeps about one version of one object, except the body.
///
/// Readers get it as `Arc<ObjectMeta>` from [`super::Store::lookup`] or from an in-progress
/// writer; it is an immutable snapshot. Chunk presence is private so that only the store can
/// claim bytes are held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The full cache key.
    pub key: String,
    /// Unique per write, also across restarts; chunk files carry it in their name so chunks of
    /// two versions never mix.
    pub version: u64,
    /// HTTP status of the stored response.
    pub status: u16,
    /// Response headers, in order, values as raw bytes.
    pub headers: Headers,
    /// When the request that fetched this response was sent (unix millis).
    pub request_time_ms: u64,
    /// When the response arrived (unix millis).
    pub response_time_ms: u64,
    /// Set by purge/expire commands: the object counts as expired at this time (unix millis).
    pub expires_override_ms: Option<u64>,
    /// Body length, when known (always known once committed).
    pub total_len: Option<u64>,
    /// Size of every chunk but the last.
    pub chunk_size: u32,
    /// All chunks `0..chunk_count` are present.
    pub complete: bool,
    pub(super) chunks: ChunkTable,
    /// Disk holding this version's files (`None`: memory only). Not encoded: it is where the
    /// file was found.
    pub(super) disk: Option<u8>,
    /// What the caller derives from this snapshot (parsed headers, say), computed once.
    pub derived: Derived,
}

/// A once-per-snapshot slot for data the caller derives from a meta, so a hit does not parse
/// the stored headers again. Never encoded; a clone starts empty because a copied meta is
/// usually about to be changed. The value's size is recorded with it: the memory tier charges
/// it to the object's copy, so parsed headers of hot objects count against the tier's bound.
#[derive(Default)]
pub struct Derived {
    value: std::sync::OnceLock<Arc<dyn std::any::Any + Send + Sync>>,
    /// Heap bytes of the value, allocator overhead included (0 while unset).
    bytes: std::sync::atomic::AtomicU32,
}

impl Derived {
    /// The derived value, computed by `make` on first use and weighed by `heap_bytes` (the
    /// bytes it owns beyond its own struct). None if a value of another type was stored first.
    pub fn get_or_init<T: std::any::Any + Send + Sync>(
        &self,
        make: impl FnOnce() -> T,
        heap_bytes: impl FnOnce(&T) -> usize,
    ) -> Option<Arc<T>> {
        self.value
            .get_or_init(|| {
                let v = make();
                let total =
                    alloc_cost(2 * size_of::<usize>() + size_of::<T>()) + heap_bytes(&v) as u64;
                self.bytes.store(
                    u32::try_from(total).unwrap_or(u32::MAX),
                    std::sync::atomic::Ordering::Relaxed,
                );
                Arc::new(v)
            })
            .clone()
            .downcast::<T>()
            .ok()
    }

    /// Heap bytes of the value (0 while unset).
    pub fn bytes(&self) -> u64 {
        u64::from(self.bytes.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl Clone for Derived {
    fn clone(&self) -> Self {
        Derived::default()
    }
}

impl PartialEq for Derived {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Derived {}

impl std::fmt::Debug for Derived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.value.get().is_some() {
            "Derived(set)"
        } else {
            "Derived(empty)"
        })
    }
}

/// What a caller knows about a response when it starts storing it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewObject {
    /// The full cache key.
    pub key: String,
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: Headers,
    /// When the request was sent (unix millis).
    pub request_time_ms: u64,
    /// When the response arrived (unix millis).
    pub response_time_ms: u64,
    /// Body length if known in advance (Content-Length).
    pub total_len: Option<u64>,
}

impl ObjectMeta {
    /// A meta with no chunks held yet; `total_len`, when known, sizes the chunk table.
    pub(super) fn new(obj: NewObject, version: u64, chunk_size: u32, disk: Option<u8>) -> Self {
        let mut meta = ObjectMeta {
            key: obj.key,
            version,
            status: obj.status,
            headers: obj.headers,
            request_time_ms: obj.request_time_ms,
            response_time_ms: obj.response_time_ms,
            expires_override_ms: None,
            total_len: obj.total_len,
            chunk_size,
            complete: false,
            chunks: ChunkTable::default(),
            disk,
            derived: Derived::default(),
        };
        if let Some(n) = meta.chunk_count() {
            meta.chunks.resize(n as usize, ChunkSlot::Absent);
        }
        meta
    }

    /// Number of chunks of the whole body; `None` while the length is unknown.
    pub fn chunk_count(&self) -> Option<u32> {
        let total = self.total_len?;
        u32::try_from(total.div_ceil(u64::from(self.chunk_size.max(1)))).ok()
    }

    /// Whether all of chunk `i` is stored.
    pub fn has_chunk(&self, i: u32) -> bool {
        matches!(self.chunks.get(i as usize), Some(ChunkSlot::Present { .. }))
    }

    /// The CRC-32 of what is stored of chunk `i` (all of it, or its span), if anything is.
    pub fn chunk_crc(&self, i: u32) -> Option<u32> {
        match self.chunks.get(i as usize) {
            Some(ChunkSlot::Present { crc } | ChunkSlot::Part { crc, .. }) => Some(*crc),
            _ => None,
        }
    }

    /// The body bytes held of chunk `i`, as an absolute half-open range.
    pub fn held_span(&self, i: u32) -> Option<Range<u64>> {
        let (s, e) = self.chunk_range(i);
        match self.chunks.get(i as usize)? {
            ChunkSlot::Absent => None,
            ChunkSlot::Present { .. } => Some(s..e),
            ChunkSlot::Part { start, len, .. } => {
                let from = s + u64::from(*start);
                Some(from..(from + u64::from(*len)).min(e))
            }
        }
    }

    /// Number of bytes stored for chunk `i` (the chunk's length, its span's, or 0).
    pub fn stored_len(&self, i: u32) -> u64 {
        self.held_span(i).map_or(0, |r| r.end - r.start)
    }

    /// Presence of every chunk slot known so far.
    pub fn chunk_slots(&self) -> &[ChunkSlot] {
        &self.chunks
    }

    /// Byte offsets of chunk `i` as a half-open range `(start, end_exclusive)`. While the total
    /// length is unknown every chunk is assumed full.
    pub fn chunk_range(&self, i: u32) -> (u64, u64) {
        let cs = u64::from(self.chunk_size);
        let start = u64::from(i) * cs;
        let end = start + cs;
        match self.total_len {
            Some(total) => (start.min(total), end.min(total)),
            None => (start, end),
        }
    }

    /// Length in bytes of chunk `i`.
    pub fn chunk_len(&self, i: u32) -> u64 {
        let (s, e) = self.chunk_range(i);
        e - s
    }

    /// Whether every byte of `start..=end_inclusive` is stored (and inside the body).
    pub fn has_range(&self, start: u64, end_inclusive: u64) -> bool {
        if start > end_inclusive || self.chunk_size == 0 {
            return false;
        }
        if let Some(total) = self.total_len
            && end_inclusive >= total
        {
            return false;
        }
        let cs = u64::from(self.chunk_size);
        let (first, last) = (start / cs, end_inclusive / cs);
        (first..=last).all(|i| {
            let Ok(i) = u32::try_from(i) else {
                return false;
            };
            let (cs_start, cs_end) = self.chunk_range(i);
            let need = start.max(cs_start)..(end_inclusive + 1).min(cs_end);
            self.held_span(i)
                .is_some_and(|h| h.start <= need.start && need.end <= h.end)
        })
    }

    /// The smallest range `(first, last)` (inclusive) that covers every byte of
    /// `start..=end_inclusive` not held: what to ask the origin for to complete that range.
    /// None when all of it is held.
    pub fn missing_within(&self, start: u64, end_inclusive: u64) -> Option<(u64, u64)> {
        let mut first = None;
        let mut last = None;
        let mut pos = start;
        for held in self.byte_ranges_held() {
            if held.end <= pos {
                continue;
            }
            if held.start > end_inclusive {
                break;
            }
            if held.start > pos {
                first.get_or_insert(pos);
                last = Some(held.start - 1);
            }
            pos = held.end;
            if pos > end_inclusive {
                break;
            }
        }
        if pos <= end_inclusive {
            first.get_or_insert(pos);
            last = Some(end_inclusive);
        }
        first.zip(last)
    }

    /// The byte ranges held, merged, as half-open ranges in ascending order.
    pub fn byte_ranges_held(&self) -> Vec<Range<u64>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        for i in 0..self.chunks.len() as u32 {
            let Some(span) = self.held_span(i) else {
                continue;
            };
            match out.last_mut() {
                Some(last) if last.end == span.start => last.end = span.end,
                _ => out.push(span),
            }
        }
        out
    }

    /// Body bytes held (sum of the lengths of the present chunks).
    pub fn held_bytes(&self) -> u64 {
        (0..self.chunks.len() as u32)
            .map(|i| self.stored_len(i))
            .sum()
    }

    /// Whether every chunk of the (known-length) body is present.
    pub(super) fn all_present(&self) -> bool {
        self.chunk_count()
            .is_some_and(|n| self.chunks.len() == n as usize && (0..n).all(|i| self.has_chunk(i)))
    }

    /// Memory this meta takes when held behind its `Arc`, allocator overhead included: the
    /// `Arc`'s block, the key, the header list and the chunk table. A value a caller derived
    /// from it (see [`Derived`]) is not included.
    pub(super) fn approx_bytes(&self) -> u64 {
        alloc_cost(2 * size_of::<usize>() + size_of::<ObjectMeta>())
            + alloc_cost(self.key.capacity())
            + alloc_cost(self.headers.heap_bytes())
            + alloc_cost(self.chunks.heap_bytes())
    }
}

/// Bytes the allocator (glibc's malloc) takes for a request of `n` bytes: an 8-byte header,
/// rounded up to 16 bytes, 32 at least; nothing for `n == 0` (no allocation is made).
pub(super) fn alloc_cost(n: usize) -> u64 {
    if n == 0 {
        0
    } else {
        ((n + 8).div_ceil(16) * 16).max(32) as u64
    }
}

/// The chunk slots of a meta. One-chunk objects (most small objects) keep their slot inline
/// rather than in a vector of their own; derefs to a slice either way.
#[derive(Clone)]
pub(crate) enum ChunkTable {
    /// Zero slots or one.
    Small(Option<ChunkSlot>),
    /// Any number of slots.
    Vec(Vec<ChunkSlot>),
}

impl Default for ChunkTable {
    fn default() -> Self {
        ChunkTable::Small(None)
    }
}

impl ChunkTable {
    /// Resizes to `n` slots, new ones set to `value` (like `Vec::resize`).
    pub fn resize(&mut self, n: usize, value: ChunkSlot) {
        match self {
            ChunkTable::Small(slot) if n <= 1 => {
                if n == 0 {
                    *slot = None;
                } else {
                    slot.get_or_insert(value);
                }
            }
            ChunkTable::Small(slot) => {
                let mut v = Vec::with_capacity(n);
                v.extend(slot.take());
                v.resize(n, value);
                *self = ChunkTable::Vec(v);
            }
            ChunkTable::Vec(v) => v.resize(n, value),
        }
    }

    /// Heap bytes of the table (0 when inline).
    pub fn heap_bytes(&self) -> usize {
        match self {
            ChunkTable::Small(_) => 0,
            ChunkTable::Vec(v) => v.capacity() * size_of::<ChunkSlot>(),
        }
    }
}

impl From<Vec<ChunkSlot>> for ChunkTable {
    fn from(v: Vec<ChunkSlot>) -> Self {
        match v.len() {
            0 => ChunkTable::Small(None),
            1 => ChunkTable::Small(v.first().copied()),
            _ => ChunkTable::Vec(v),
        }
    }
}

impl Deref for ChunkTable {
    type Target = [ChunkSlot];
    fn deref(&self) -> &[ChunkSlot] {
        match self {
            ChunkTable::Small(s) => s.as_slice(),
            ChunkTable::Vec(v) => v,
        }
    }
}

impl DerefMut for ChunkTable {
    fn deref_mut(&mut self) -> &mut [ChunkSlot] {
        match self {
            ChunkTable::Small(s) => s.as_mut_slice(),
            ChunkTable::Vec(v) => v,
        }
    }
}

impl PartialEq for ChunkTable {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for ChunkTable {}

impl std::fmt::Debug for ChunkTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding of a `.meta` file:
//
//   magic "STRMETA1" | meta_len u32 | meta_crc u32 | inline_len u32 | inline_crc u32 |
//   meta section (meta_len bytes) | inline body (inline_len bytes, chunk 0, optional)
//
// All integers little-endian. Both sections carry a CRC, so a torn or bit-rotted file is
// rejected rather than served; the header is fixed-size so the background index rebuild reads
// only the meta section and skips an inline body.

/// Magic opening every `.meta` file.
const META_MAGIC: &[u8; 8] = b"STRMETA1";
/// Length of the fixed header of a `.meta` file.
pub(super) const META_HEADER_LEN: usize = 24;

const FLAG_COMPLETE: u8 = 1;
const FLAG_TOTAL: u8 = 2;
const FLAG_EXPIRES: u8 = 4;

/// The fixed header of a `.meta` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MetaHeader {
    pub meta_len: u32,
    pub meta_crc: u32,
    pub inline_len: u32,
    pub inline_crc: u32,
}

impl MetaHeader {
    /// Length of the whole file this header describes.
    pub fn file_len(&self) -> u64 {
        META_HEADER_LEN as u64 + u64::from(self.meta_len) + u64::from(self.inline_len)
    }
}

/// Encodes a whole `.meta` file, with chunk 0 inline when `inline` is given.
pub(super) fn encode_meta_file(meta: &ObjectMeta, inline: Option<&[u8]>) -> Vec<u8> {
    let body = encode_meta_section(meta);
    let inline = inline.unwrap_or(&[]);
    let mut out = Vec::with_capacity(META_HEADER_LEN + body.len() + inline.len());
    out.extend_from_slice(META_MAGIC);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&(inline.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(inline).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(inline);
    out
}

fn encode_meta_section(m: &ObjectMeta) -> Vec<u8> {
    let mut b = Vec::with_capacity(128 + m.key.len() + m.chunks.len() * 5);
    b.extend_from_slice(&m.version.to_le_bytes());
    b.extend_from_slice(&m.status.to_le_bytes());
    let mut flags = 0;
    if m.complete {
        flags |= FLAG_COMPLETE;
    }
    if m.total_len.is_some() {
        flags |= FLAG_TOTAL;
    }
    if m.expires_override_ms.is_some() {
        flags |= FLAG_EXPIRES;
    }
    b.push(flags);
    b.extend_from_slice(&m.request_time_ms.to_le_bytes());
    b.extend_from_slice(&m.response_time_ms.to_le_bytes());
    b.extend_from_slice(&m.expires_override_ms.unwrap_or(0).to_le_bytes());
    b.extend_from_slice(&m.total_len.unwrap_or(0).to_le_bytes());
    b.extend_from_slice(&m.chunk_size.to_le_bytes());
    b.extend_from_slice(&(m.key.len() as u32).to_le_bytes());
    b.extend_from_slice(m.key.as_bytes());
    b.extend_from_slice(&(m.headers.len() as u32).to_le_bytes());
    for (name, value) in &m.headers {
        // Header names longer than 64 KiB are not HTTP; truncation keeps the encoding valid.
        let name = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(name);
        b.extend_from_slice(&(value.len() as u32).to_le_bytes());
        b.extend_from_slice(value);
    }
    b.extend_from_slice(&(m.chunks.len() as u32).to_le_bytes());
    let mut bitmap = vec![0u8; m.chunks.len().div_ceil(8)];
    for (i, slot) in m.chunks.iter().enumerate() {
        if let ChunkSlot::Present { .. } = slot {
            bitmap[i / 8] |= 1 << (i % 8);
        }
    }
    b.extend_from_slice(&bitmap);
    for slot in m.chunks.iter() {
        if let ChunkSlot::Present { crc } = slot {
            b.extend_from_slice(&crc.to_le_bytes());
        }
    }
    // Partly held chunks follow (absent from files written before spans existed).
    let parts: Vec<(usize, u32, u32, u32)> = m
        .chunks
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            ChunkSlot::Part { start, len, crc } => Some((i, *start, *len, *crc)),
            _ => None,
        })
        .collect();
    if !parts.is_empty() {
        b.extend_from_slice(&(parts.len() as u32).to_le_bytes());
        for (i, start, len, crc) in parts {
            for w in [i as u32, start, len, crc] {
                b.extend_from_slice(&w.to_le_bytes());
            }
        }
    }
    b
}

/// Parses the fixed header of a `.meta` file.
pub(super) fn decode_meta_header(buf: &[u8]) -> Result<MetaHeader, StoreError> {
    if buf.len() < META_HEADER_LEN || &buf[..8] != META_MAGIC {
        return Err(StoreError::Corrupt);
    }
    let mut r = Reader {
        buf: &buf[8..META_HEADER_LEN],
    };
    Ok(MetaHeader {
        meta_len: r.u32()?,
        meta_crc: r.u32()?,
        inline_len: r.u32()?,
        inline_crc: r.u32()?,
    })
}

/// Decodes and validates a meta section (the bytes after the header), checking its CRC.
pub(super) fn decode_meta_section(
    header: &MetaHeader,
    section: &[u8],
) -> Result<ObjectMeta, StoreError> {
    if section.len() != header.meta_len as usize || crc32fast::hash(section) != header.meta_crc {
        return Err(StoreError::Corrupt);
    }
    let mut r = Reader { buf: section };
    let version = r.u64()?;
    let status = r.u16()?;
    let flags = r.u8()?;
    let request_time_ms = r.u64()?;
    let response_time_ms = r.u64()?;
    let expires = r.u64()?;
    let total = r.u64()?;
    let chunk_size = r.u32()?;
    let key_len = r.u32()? as usize;
    let key = String::from_utf8(r.take(key_len)?.to_vec()).map_err(|_| StoreError::Corrupt)?;
    let n_headers = r.u32()? as usize;
    let mut headers = HeadersBuilder::with_capacity(r.buf.len().min(4096));
    for _ in 0..n_headers {
        let nl = r.u16()? as usize;
        let name = std::str::from_utf8(r.take(nl)?).map_err(|_| StoreError::Corrupt)?;
        let vl = r.u32()? as usize;
        headers.push(name, r.take(vl)?);
    }
    let headers = headers.finish();
    let n_chunks = r.u32()? as usize;
    let bitmap = r.take(n_chunks.div_ceil(8))?.to_vec();
    let mut chunks = Vec::with_capacity(n_chunks);
    for i in 0..n_chunks {
        if bitmap[i / 8] & (1 << (i % 8)) != 0 {
            chunks.push(ChunkSlot::Present { crc: r.u32()? });
        } else {
            chunks.push(ChunkSlot::Absent);
        }
    }
    if !r.buf.is_empty() {
        let n_parts = r.u32()? as usize;
        for _ in 0..n_parts {
            let (i, start, len, crc) = (r.u32()? as usize, r.u32()?, r.u32()?, r.u32()?);
            match chunks.get_mut(i) {
                Some(slot @ ChunkSlot::Absent) if len > 0 => {
                    *slot = ChunkSlot::Part { start, len, crc };
                }
                _ => return Err(StoreError::Corrupt),
            }
        }
    }
    if !r.buf.is_empty() || chunk_size == 0 {
        return Err(StoreError::Corrupt);
    }
    let meta = ObjectMeta {
        key,
        version,
        status,
        headers,
        request_time_ms,
        response_time_ms,
        expires_override_ms: (flags & FLAG_EXPIRES != 0).then_some(expires),
        total_len: (flags & FLAG_TOTAL != 0).then_some(total),
        chunk_size,
        complete: flags & FLAG_COMPLETE != 0,
        chunks: chunks.into(),
        disk: None,
        derived: Derived::default(),
    };
    // A committed meta always knows its length and has a slot per chunk; `complete` is a
    // promise that every chunk is there. Anything else was not written by us.
    let spans_fit = (0..meta.chunks.len() as u32).all(|i| match meta.chunks[i as usize] {
        ChunkSlot::Part { start, len, .. } => {
            u64::from(start) + u64::from(len) <= meta.chunk_len(i)
        }
        _ => true,
    });
    let consistent = meta
        .chunk_count()
        .is_some_and(|n| n as usize == meta.chunks.len())
        && spans_fit
        && (!meta.complete || meta.all_present());
    if !consistent {
        return Err(StoreError::Corrupt);
    }
    Ok(meta)
}

/// Decodes a whole `.meta` file: the meta and, when present, the inline chunk 0 (CRC-checked
/// against both the file header and the meta's chunk table).
pub(super) fn decode_meta_file(buf: &[u8]) -> Result<(ObjectMeta, Option<&[u8]>), StoreError> {
    let header = decode_meta_header(buf)?;
    if buf.len() as u64 != header.file_len() {
        return Err(StoreError::Corrupt);
    }
    let meta_end = META_HEADER_LEN + header.meta_len as usize;
    let meta = decode_meta_section(&header, &buf[META_HEADER_LEN..meta_end])?;
    if header.inline_len == 0 {
        return Ok((meta, None));
    }
    let inline = &buf[meta_end..];
    let crc = crc32fast::hash(inline);
    if crc != header.inline_crc
        || meta.chunk_crc(0) != Some(crc)
        || meta.stored_len(0) != inline.len() as u64
    {
        return Err(StoreError::Corrupt);
    }
    Ok((meta, Some(inline)))
}

/// Bounds-checked little-endian reader: malformed input becomes `Corrupt`, never a panic.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.buf.len() < n {
            return Err(StoreError::Corrupt);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, StoreError> {
        let mut a = [0; 2];
        a.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(a))
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        let mut a = [0; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(total: Option<u64>) -> ObjectMeta {
        ObjectMeta::new(
            NewObject {
                key: "vhost/path?q=1".into(),
                status: 200,
                headers: Headers::from_pairs([("content-type", "text/plain")]),
                request_time_ms: 10,
                response_time_ms: 20,
                total_len: total,
            },
            7,
            100,
            None,
        )
    }

    #[test]
    fn chunk_geometry() {
        let mut m = sample(Some(250));
        assert_eq!(m.chunk_count(), Some(3));
        assert_eq!(m.chunk_range(0), (0, 100));
        assert_eq!(m.chunk_range(2), (200, 250));
        assert_eq!(m.chunk_len(2), 50);
        m.chunks[0] = ChunkSlot::Present { crc: 1 };
        m.chunks[2] = ChunkSlot::Present { crc: 3 };
        assert!(m.has_range(0, 99));
        assert!(!m.has_range(0, 100));
        assert!(m.has_range(200, 249));
        assert!(!m.has_range(200, 250));
        assert_eq!(m.byte_ranges_held(), vec![0..100, 200..250]);
        assert_eq!(m.held_bytes(), 150);
        m.chunks[1] = ChunkSlot::Present { crc: 2 };
        assert_eq!(m.byte_ranges_held(), vec![0..250]);
        assert!(m.all_present());
    }

    #[test]
    fn empty_body_has_no_chunks() {
        let m = sample(Some(0));
        assert_eq!(m.chunk_count(), Some(0));
        assert!(m.all_present());
        assert!(m.byte_ranges_held().is_empty());
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut m = sample(Some(150));
        m.chunks[0] = ChunkSlot::Present {
            crc: crc32fast::hash(&[1u8; 100]),
        };
        m.chunks[1] = ChunkSlot::Present { crc: 0xdead_beef };
        m.complete = true;
        m.expires_override_ms = Some(99);
        let inline = [1u8; 100];
        let file = encode_meta_file(&m, Some(&inline));
        let (back, inl) = decode_meta_file(&file).expect("decodes");
        assert_eq!(back, m);
        assert_eq!(inl, Some(&inline[..]));

        let file = encode_meta_file(&m, None);
        let (back, inl) = decode_meta_file(&file).expect("decodes");
        assert_eq!(back, m);
        assert_eq!(inl, None);
    }

    #[test]
    fn any_flipped_byte_is_rejected() {
        let mut m = sample(Some(100));
        let body = [7u8; 100];
        m.chunks[0] = ChunkSlot::Present {
            crc: crc32fast::hash(&body),
        };
        m.complete = true;
        let file = encode_meta_file(&m, Some(&body));
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x40;
            assert!(decode_meta_file(&bad).is_err(), "flip at {i} accepted");
        }
        assert!(decode_meta_file(&file[..file.len() - 1]).is_err());
    }

    #[test]
    fn complete_without_all_chunks_is_rejected() {
        let mut m = sample(Some(150));
        m.complete = true;
        let file = encode_meta_file(&m, None);
        assert!(decode_meta_file(&file).is_err());
    }
}
