//! A file whose contents the store verified, and the span of cached bytes it holds.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::{tee, view};

/// What a file's `fstat` said when its contents were verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    /// Plain `fstat`, taken before every send: std's `metadata` is a `statx` with an empty
    /// path, which costs the kernel a path-name copy each time.
    #[allow(clippy::unnecessary_cast)] // the fields' widths differ between targets
    fn of(file: &File) -> io::Result<Stamp> {
        let m = rustix::fs::fstat(file)?;
        Ok(Stamp {
            dev: m.st_dev as u64,
            ino: m.st_ino as u64,
            size: m.st_size as u64,
            mtime: (m.st_mtime as i64, m.st_mtime_nsec as i64),
            ctime: (m.st_ctime as i64, m.st_ctime_nsec as i64),
        })
    }
}

/// An open file whose contents the store has verified, to send cached bytes from.
#[derive(Debug)]
pub struct SendFile {
    pub(super) file: File,
    stamp: Stamp,
    pub(super) stale: AtomicBool,
    /// Pipes holding the file's pages, made on first send.
    pub(super) masters: tee::Masters,
    /// The file mapped read-only, made on first [`SendFile::view`] (`None`: it cannot be).
    mapping: OnceLock<Option<Arc<view::Mapping>>>,
}

impl SendFile {
    /// Takes the file's stamp *before* the caller reads and verifies it: a change made
    /// during or after the read then shows as a different stamp at send time.
    pub fn new(file: File) -> io::Result<SendFile> {
        let stamp = Stamp::of(&file)?;
        Ok(SendFile {
            file,
            stamp,
            stale: AtomicBool::new(false),
            masters: tee::Masters::default(),
            mapping: OnceLock::new(),
        })
    }

    /// The verified bytes `offset..offset + len` without reading them: a view of the file,
    /// mapped on first use (see [`view`]). `None` once the file changed, or when it cannot be
    /// mapped or is shorter.
    pub fn view(&self, offset: u64, len: usize) -> Option<Bytes> {
        if self.is_stale() {
            return None;
        }
        let map = self.mapping.get_or_init(|| {
            let len = usize::try_from(self.stamp.size).ok()?;
            view::Mapping::of(&self.file, len)
                .map_err(|e| tracing::debug!(error = %e, "zero-copy: cannot map a cache file"))
                .ok()
                .map(Arc::new)
        });
        map.as_ref()?.view(usize::try_from(offset).ok()?, len)
    }

    /// Whether `p` points into a view of this file: such bytes are the file's, and are never
    /// written to a client once it changed.
    pub fn shows(&self, p: *const u8) -> bool {
        self.mapping
            .get()
            .and_then(Option::as_ref)
            .is_some_and(|m| m.contains(p))
    }

    /// The file, for the caller's verifying read.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether the file changed since it was verified (then it is never sent from again).
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// Checks the file against its stamp now; marks it stale when it changed.
    pub(super) fn still_verified(&self) -> bool {
        if self.is_stale() {
            return false;
        }
        let same = Stamp::of(&self.file).is_ok_and(|s| s == self.stamp);
        if !same {
            tracing::warn!("cache file changed after it was verified; never sending from it again");
            self.stale.store(true, Ordering::Relaxed);
        }
        same
    }
}

/// Where a run of bytes also lives: `file` from byte `offset` on.
#[derive(Clone, Debug)]
pub struct FileSpan {
    /// The verified file.
    pub file: Arc<SendFile>,
    /// Offset of the first byte.
    pub offset: u64,
}

impl FileSpan {
    /// The span of the same bytes after the first `n`.
    pub fn skip(&self, n: u64) -> FileSpan {
        FileSpan {
            file: self.file.clone(),
            offset: self.offset + n,
        }
    }
}

/// Whether `file` lives on a memory-backed file system (tmpfs, ramfs), the only place files
/// are sent from (see the module doc).
pub fn memory_backed(file: &File) -> bool {
    #[cfg(target_os = "linux")]
    {
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        const RAMFS_MAGIC: i64 = 0x8584_58f6;
        rustix::fs::fstatfs(file).is_ok_and(|s| {
            #[allow(clippy::unnecessary_cast)] // the field's width differs between targets
            let t = s.f_type as i64;
            t == TMPFS_MAGIC || t == RAMFS_MAGIC
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        false
    }
}
