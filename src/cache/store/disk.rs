//! The disk tier's files: layout, atomic writes, verified reads. Blocking code, always run on
//! tokio's blocking pool by the callers.
//!
//! Layout under each configured directory:
//!
//! ```text
//! <dir>/<2 hex>/<32 hex>.meta                  the object's meta (+ chunk 0 inline if small)
//! <dir>/<2 hex>/<32 hex>.<16 hex version>.<n>  chunk n of one version
//! <dir>/<2 hex>/<final name>.<run>-<seq>.tmp   a write in progress (deleted at start-up)
//! ```
//!
//! Every file is written to a temporary name and renamed into place, so a reader or a crash
//! sees either no file or a whole one. Each chunk file starts with a header carrying its
//! length, CRC-32, index and version, and the meta lists each chunk's CRC: a file that is torn,
//! stale or rotted is reported as `Corrupt` and never served.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;

use super::error::StoreError;
use super::index::KeyHash;
use super::meta::{self, META_HEADER_LEN, MetaHeader, ObjectMeta};
use crate::zerocopy::{self, FileSpan, SendFile};

/// Magic opening every chunk file.
const CHUNK_MAGIC: &[u8; 4] = b"STC1";
/// Length of a chunk file's header: magic, crc, len, index (u32 each), version (u64).
pub(crate) const CHUNK_HEADER_LEN: usize = 24;
/// Allocation unit assumed for quota accounting: a 100-byte file still costs a block.
const BLOCK: u64 = 4096;

/// Disk bytes a file of `len` bytes is charged for.
pub(crate) fn file_cost(len: u64) -> u64 {
    len.div_ceil(BLOCK).max(1) * BLOCK
}

/// `bytes` (a disk charge, so a multiple of the block) in blocks, as the index keeps it:
/// 32 bits of 4 KiB blocks reach 16 TiB per object; a larger charge is clamped there.
pub(crate) fn blocks(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(BLOCK)).unwrap_or(u32::MAX)
}

/// The bytes of `blocks` disk blocks.
pub(crate) fn blocks_bytes(blocks: u32) -> u64 {
    u64::from(blocks) * BLOCK
}

/// Disk bytes charged for one stored version: its `.meta` file plus every chunk file.
pub(crate) fn object_cost(meta: &ObjectMeta, meta_file_len: u64, inline0: bool) -> u64 {
    let chunks: u64 = (0..meta.chunk_slots().len() as u32)
        .filter(|&i| meta.chunk_crc(i).is_some() && !(inline0 && i == 0))
        .map(|i| file_cost(CHUNK_HEADER_LEN as u64 + meta.stored_len(i)))
        .sum();
    file_cost(meta_file_len) + chunks
}

/// A file found in a fan-out directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StoreFile {
    /// `<hash>.meta`
    Meta(KeyHash),
    /// `<hash>.<version>.<index>`
    Chunk {
        hash: KeyHash,
        version: u64,
        index: u32,
    },
    /// A temporary file written by the run `run`.
    Temp { run: u64 },
    /// Not ours; left alone.
    Other,
}

/// Classifies a file name of the layout.
pub(crate) fn parse_name(name: &str) -> StoreFile {
    if let Some(stem) = name.strip_suffix(".tmp") {
        let tag = stem.rsplit('.').next().unwrap_or("");
        let run = tag
            .split('-')
            .next()
            .and_then(|r| u64::from_str_radix(r, 16).ok());
        return run.map_or(StoreFile::Other, |run| StoreFile::Temp { run });
    }
    if let Some(stem) = name.strip_suffix(".meta") {
        return KeyHash::from_hex(stem).map_or(StoreFile::Other, StoreFile::Meta);
    }
    let mut parts = name.split('.');
    let (Some(h), Some(v), Some(n), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return StoreFile::Other;
    };
    match (
        KeyHash::from_hex(h),
        (v.len() == 16).then(|| u64::from_str_radix(v, 16).ok()),
        n.parse(),
    ) {
        (Some(hash), Some(Some(version)), Ok(index)) => StoreFile::Chunk {
            hash,
            version,
            index,
        },
        _ => StoreFile::Other,
    }
}

/// A meta read back from disk.
pub(crate) struct LoadedMeta {
    /// The decoded meta (its `disk` not yet set).
    pub meta: ObjectMeta,
    /// Chunk 0 when inlined in the `.meta` file.
    pub inline: Option<Bytes>,
    /// Whether chunk 0 lives in the `.meta` file (also when `inline` was not read).
    pub inline0: bool,
    /// Length of the `.meta` file.
    pub file_len: u64,
}

/// One configured cache directory.
pub(crate) struct Disk {
    root: PathBuf,
    /// Quota in bytes.
    pub quota: u64,
    /// Tags this process's temporary files so start-up cleanup spares them.
    run_id: u64,
    /// fsync files before rename and directories after (power-loss durability).
    sync: bool,
    tmp_seq: AtomicU64,
    /// The directory is on tmpfs/ramfs: its files may be sent from without a copy (`zerocopy`).
    memory_backed: AtomicBool,
}

impl Disk {
    /// A directory handle; nothing touches the file system until [`Disk::prepare`].
    pub fn new(root: PathBuf, quota: u64, run_id: u64, sync: bool) -> Disk {
        Disk {
            root,
            quota,
            run_id,
            sync,
            tmp_seq: AtomicU64::new(0),
            memory_backed: AtomicBool::new(false),
        }
    }

    /// Whether files here may be sent from without a copy (known after [`Disk::prepare`]).
    pub fn memory_backed(&self) -> bool {
        self.memory_backed.load(Ordering::Relaxed)
    }

    /// The directory.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// The identifier of this run, carried by its temporary files.
    pub fn run_id(&self) -> u64 {
        self.run_id
    }

    /// Creates the directory and those of its 256 fan-out subdirectories that are missing.
    /// One listing finds the present ones, so a restart makes no `mkdir` (and no `stat`) at
    /// all before it listens: 512 system calls fewer.
    pub fn prepare(&self) -> io::Result<()> {
        fs::create_dir_all(&self.root)?;
        let mut present = [false; 256];
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            let Some(sub) = entry.file_name().to_str().and_then(fan_out_index) else {
                continue;
            };
            present[sub] = entry.file_type()?.is_dir();
        }
        for sub in 0..=255u8 {
            if !present[usize::from(sub)] {
                fs::create_dir_all(self.subdir(sub))?;
            }
        }
        let backed = File::open(&self.root).is_ok_and(|d| zerocopy::memory_backed(&d));
        self.memory_backed.store(backed, Ordering::Relaxed);
        Ok(())
    }

    /// Path of fan-out directory `sub` (named as [`fan_out_index`] reads it).
    pub fn subdir(&self, sub: u8) -> PathBuf {
        self.root.join(format!("{sub:02x}"))
    }

    /// Path of the object's `.meta` file.
    pub fn meta_path(&self, h: &KeyHash) -> PathBuf {
        self.subdir(h.subdir()).join(format!("{}.meta", h.hex()))
    }

    /// Path of chunk `index` of `version`.
    pub fn chunk_path(&self, h: &KeyHash, version: u64, index: u32) -> PathBuf {
        self.subdir(h.subdir())
            .join(format!("{}.{version:016x}.{index}", h.hex()))
    }

    /// Writes `parts` to `path` atomically: a uniquely named temporary file, renamed over.
    fn write_atomic(&self, path: &Path, parts: &[&[u8]]) -> io::Result<()> {
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{:016x}-{seq:x}.tmp", self.run_id));
        let tmp = PathBuf::from(tmp);
        let result = (|| {
            let mut f = File::create(&tmp)?;
            for p in parts {
                f.write_all(p)?;
            }
            if self.sync {
                f.sync_data()?;
            }
            drop(f);
            fs::rename(&tmp, path)?;
            if self.sync
                && let Some(dir) = path.parent()
            {
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Writes chunk `index` of `version`; returns the disk bytes it costs.
    pub fn write_chunk(
        &self,
        h: &KeyHash,
        version: u64,
        index: u32,
        data: &[u8],
        crc: u32,
    ) -> io::Result<u64> {
        let mut header = [0u8; CHUNK_HEADER_LEN];
        header[..4].copy_from_slice(CHUNK_MAGIC);
        header[4..8].copy_from_slice(&crc.to_le_bytes());
        header[8..12].copy_from_slice(&(data.len() as u32).to_le_bytes());
        header[12..16].copy_from_slice(&index.to_le_bytes());
        header[16..24].copy_from_slice(&version.to_le_bytes());
        self.write_atomic(&self.chunk_path(h, version, index), &[&header, data])?;
        Ok(file_cost((CHUNK_HEADER_LEN + data.len()) as u64))
    }

    /// Chunk `index` of `version` read and verified, looking in the `.meta` file for an
    /// inline chunk 0 (first when `inline_first`, else when chunk 0 has no file of its own).
    /// With `keep`, on a memory-backed directory, the verified file stays open so later hits
    /// can send from it (see `zerocopy`).
    #[allow(clippy::too_many_arguments)]
    pub fn load_chunk(
        &self,
        h: &KeyHash,
        version: u64,
        index: u32,
        len: u64,
        crc: u32,
        inline_first: bool,
        keep: bool,
    ) -> Result<(Bytes, Option<FileSpan>), StoreError> {
        let keep = keep && self.memory_backed();
        if inline_first {
            return self.load_inline(h, version, crc, keep);
        }
        match self.load_chunk_file(h, version, index, len, crc, keep) {
            // Chunk 0 of a writer that committed meanwhile may have gone inline.
            Err(StoreError::Missing) if index == 0 => self.load_inline(h, version, crc, keep),
            r => r,
        }
    }

    /// Chunk 0 of `version` from the `.meta` file, where the inline body ends the file.
    fn load_inline(
        &self,
        h: &KeyHash,
        version: u64,
        crc: u32,
        keep: bool,
    ) -> Result<(Bytes, Option<FileSpan>), StoreError> {
        let Some((buf, file)) = read_whole(&self.meta_path(h), keep)? else {
            return Err(StoreError::Missing);
        };
        let buf = Bytes::from(buf);
        let (meta, inline) = meta::decode_meta_file(&buf)?;
        let Some(inline) = inline.filter(|_| meta.version == version) else {
            return Err(StoreError::Missing);
        };
        if meta.chunk_crc(0) != Some(crc) {
            return Err(StoreError::Missing);
        }
        let bytes = buf.slice_ref(inline);
        let offset = (buf.len() - bytes.len()) as u64;
        Ok((bytes, file.map(|f| FileSpan { file: f, offset })))
    }

    /// Reads and verifies chunk `index` of `version`: `Missing` when the file is absent,
    /// `Corrupt` when its header or bytes disagree with what the meta expects.
    fn load_chunk_file(
        &self,
        h: &KeyHash,
        version: u64,
        index: u32,
        len: u64,
        crc: u32,
        keep: bool,
    ) -> Result<(Bytes, Option<FileSpan>), StoreError> {
        let Some((buf, file)) = read_whole(&self.chunk_path(h, version, index), keep)? else {
            return Err(StoreError::Missing);
        };
        if buf.len() < CHUNK_HEADER_LEN || &buf[..4] != CHUNK_MAGIC {
            return Err(StoreError::Corrupt);
        }
        let word = |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let mut v = [0u8; 8];
        v.copy_from_slice(&buf[16..24]);
        let body = &buf[CHUNK_HEADER_LEN..];
        let ok = word(4) == crc
            && u64::from(word(8)) == len
            && body.len() as u64 == len
            && word(12) == index
            && u64::from_le_bytes(v) == version
            && crc32fast::hash(body) == crc;
        if !ok {
            return Err(StoreError::Corrupt);
        }
        let span = file.map(|f| FileSpan {
            file: f,
            offset: CHUNK_HEADER_LEN as u64,
        });
        Ok((Bytes::from(buf).slice(CHUNK_HEADER_LEN..), span))
    }

    /// Deletes chunk files `0..count` of `version` (chunk 0 too unless `skip0`); absent files
    /// are fine (partial objects, or deleted already).
    pub fn remove_chunks(&self, h: &KeyHash, version: u64, count: u32, skip0: bool) {
        for i in u32::from(skip0)..count {
            remove_quietly(&self.chunk_path(h, version, i));
        }
    }

    /// Writes the `.meta` file atomically; returns its length.
    pub fn write_meta(
        &self,
        h: &KeyHash,
        meta: &ObjectMeta,
        inline: Option<&[u8]>,
    ) -> io::Result<u64> {
        let file = meta::encode_meta_file(meta, inline);
        self.write_atomic(&self.meta_path(h), &[&file])?;
        Ok(file.len() as u64)
    }

    /// Reads the whole `.meta` file (with an inline chunk 0). `Ok(None)` when absent.
    pub fn read_meta(&self, h: &KeyHash) -> Result<Option<LoadedMeta>, StoreError> {
        let buf = match fs::read(self.meta_path(h)) {
            Ok(b) => Bytes::from(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let (meta, inline) = meta::decode_meta_file(&buf)?;
        let inline = inline.map(|s| buf.slice_ref(s));
        let inline0 = inline.is_some();
        Ok(Some(LoadedMeta {
            meta,
            inline,
            inline0,
            file_len: buf.len() as u64,
        }))
    }

    /// Reads only the header and meta section of a `.meta` file, skipping an inline body (for
    /// the start-up index rebuild). `Ok(None)` when absent.
    pub fn read_meta_section(&self, path: &Path) -> Result<Option<LoadedMeta>, StoreError> {
        let mut f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut buf = vec![0u8; 4096];
        let mut got = 0;
        while got < buf.len() {
            match f.read(&mut buf[got..])? {
                0 => break,
                n => got += n,
            }
        }
        let header: MetaHeader = meta::decode_meta_header(&buf[..got])?;
        let need = META_HEADER_LEN + header.meta_len as usize;
        if need > got {
            buf.resize(need, 0);
            f.read_exact(&mut buf[got..need])
                .map_err(|_| StoreError::Corrupt)?;
        }
        let file_len = f.metadata()?.len();
        if file_len != header.file_len() {
            return Err(StoreError::Corrupt);
        }
        let meta = meta::decode_meta_section(&header, &buf[META_HEADER_LEN..need])?;
        let inline0 = header.inline_len > 0;
        if inline0 && meta.chunk_crc(0) != Some(header.inline_crc) {
            return Err(StoreError::Corrupt);
        }
        Ok(Some(LoadedMeta {
            meta,
            inline: None,
            inline0,
            file_len,
        }))
    }

    /// Deletes the `.meta` file (absent is fine).
    pub fn remove_meta(&self, h: &KeyHash) {
        remove_quietly(&self.meta_path(h));
    }
}

/// A file's bytes, and with them the open file when it is kept for sending.
type Whole = (Vec<u8>, Option<Arc<SendFile>>);

/// The whole file at `path` (`None` when absent); with `keep` also the open file, stamped
/// before the read so that a change made during or after it is noticed before any send.
fn read_whole(path: &Path, keep: bool) -> Result<Option<Whole>, StoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut buf = Vec::new();
    if keep {
        let send = SendFile::new(file)?;
        send.file().read_to_end(&mut buf)?;
        Ok(Some((buf, Some(Arc::new(send)))))
    } else {
        (&file).read_to_end(&mut buf)?;
        Ok(Some((buf, None)))
    }
}

/// Deletes a file, logging failures other than "already gone".
pub(crate) fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cache store: cannot delete file");
    }
}

/// The index of a fan-out directory from its name: two lower-case hex digits.
fn fan_out_index(name: &str) -> Option<usize> {
    let hex = name.len() == 2 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    hex.then(|| usize::from_str_radix(name, 16).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::super::meta::NewObject;
    use super::*;

    fn disk(dir: &Path) -> Disk {
        let d = Disk::new(dir.to_path_buf(), 1 << 30, 0xabc, false);
        d.prepare().expect("prepare");
        d
    }

    #[test]
    fn disk_charges_round_trip_through_blocks() {
        for len in [0, 1, 4095, 4096, 4097, 1 << 20, 5 << 30] {
            let cost = file_cost(len);
            assert_eq!(blocks_bytes(blocks(cost)), cost, "{len}");
        }
        // Beyond 16 TiB the index's 32 bits of blocks saturate rather than wrap.
        assert_eq!(blocks(u64::MAX), u32::MAX);
    }

    #[test]
    fn prepare_makes_only_the_missing_fan_out_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = disk(dir.path());
        let h = KeyHash::of("k");
        d.write_chunk(&h, 1, 0, b"kept", crc32fast::hash(b"kept"))
            .expect("write");
        std::fs::remove_dir(d.subdir(0x7f)).expect("remove one");
        std::fs::write(dir.path().join("AB"), b"").expect("an unrelated file");
        d.prepare().expect("prepare again");
        for sub in 0..=255u8 {
            assert!(d.subdir(sub).is_dir(), "{sub:02x}");
        }
        assert!(d.chunk_path(&h, 1, 0).is_file(), "existing files stay");
        assert_eq!(fan_out_index("7f"), Some(0x7f));
        assert_eq!(fan_out_index("7F"), None);
        assert_eq!(fan_out_index("7"), None);
        assert_eq!(fan_out_index("+1"), None);
    }

    #[test]
    fn names_round_trip() {
        let h = KeyHash::of("a");
        let d = Disk::new(PathBuf::from("/x"), 0, 7, false);
        let name = |p: PathBuf| {
            p.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_owned()
        };
        assert_eq!(parse_name(&name(d.meta_path(&h))), StoreFile::Meta(h));
        assert_eq!(
            parse_name(&name(d.chunk_path(&h, 42, 3))),
            StoreFile::Chunk {
                hash: h,
                version: 42,
                index: 3
            }
        );
        assert_eq!(
            parse_name(&format!("{}.meta.00000000000000ff-3.tmp", h.hex())),
            StoreFile::Temp { run: 255 }
        );
        assert_eq!(parse_name("README"), StoreFile::Other);
        assert_eq!(parse_name("a.b.c"), StoreFile::Other);
    }

    #[test]
    fn chunk_round_trip_and_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = disk(dir.path());
        let h = KeyHash::of("k");
        let data = vec![5u8; 1000];
        let crc = crc32fast::hash(&data);
        d.write_chunk(&h, 9, 2, &data, crc).expect("write");
        assert_eq!(
            d.load_chunk_file(&h, 9, 2, 1000, crc, false)
                .map(|(b, _)| b)
                .expect("read"),
            &data[..]
        );
        assert!(matches!(
            d.load_chunk_file(&h, 9, 3, 1000, crc, false)
                .map(|(b, _)| b),
            Err(StoreError::Missing)
        ));
        assert!(matches!(
            d.load_chunk_file(&h, 9, 2, 999, crc, false).map(|(b, _)| b),
            Err(StoreError::Corrupt)
        ));
        let path = d.chunk_path(&h, 9, 2);
        let mut raw = fs::read(&path).expect("raw");
        raw[CHUNK_HEADER_LEN + 500] ^= 1;
        fs::write(&path, raw).expect("rewrite");
        assert!(matches!(
            d.load_chunk_file(&h, 9, 2, 1000, crc, false)
                .map(|(b, _)| b),
            Err(StoreError::Corrupt)
        ));
        d.remove_chunks(&h, 9, 3, false);
        assert!(!path.exists());
    }

    #[test]
    fn meta_round_trip_with_and_without_inline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = disk(dir.path());
        let h = KeyHash::of("k");
        let body = vec![3u8; 10];
        let obj = NewObject {
            key: "k".into(),
            total_len: Some(10),
            ..Default::default()
        };
        let mut m = ObjectMeta::new(obj, 1, 64, None);
        m.chunks[0] = meta::ChunkSlot::Present {
            crc: crc32fast::hash(&body),
        };
        m.complete = true;
        let len = d.write_meta(&h, &m, Some(&body)).expect("write");
        let full = d.read_meta(&h).expect("read").expect("present");
        assert_eq!(full.meta, m);
        assert_eq!(full.inline.as_deref(), Some(&body[..]));
        assert_eq!(full.file_len, len);
        let sec = d
            .read_meta_section(&d.meta_path(&h))
            .expect("read")
            .expect("present");
        assert_eq!(sec.meta, m);
        assert!(sec.inline0 && sec.inline.is_none());
        d.remove_meta(&h);
        assert!(d.read_meta(&h).expect("read").is_none());
        // No temporary files are left behind.
        let left = fs::read_dir(d.subdir(h.subdir())).expect("ls").count();
        assert_eq!(left, 0);
    }
}
