//! Read-only views of verified cache files, for chunks that are not in the memory tier.
//!
//! A large hit goes out from its chunk file (`tee`/`sendfile`, see the parent module), but
//! hyper is still handed the chunk's bytes as a frame, which only a path that cannot send
//! from files ever reads. When the chunk is not in the memory tier, reading it (and checking
//! its CRC, and promoting it) on every hit cost three times the CPU per byte of the send
//! itself (0.50 against 0.17 CPU s/GB for nginx, 10 MiB hits from a tmpfs disk tier behind a
//! 4 MB memory tier). A file whose contents were verified once is mapped instead, and the
//! frame is a view of that mapping: nothing is read or copied.
//!
//! A view shows the file's pages as they are. The store never changes a file in place: it
//! writes new files and renames or unlinks old ones, and a mapping keeps an unlinked file's
//! pages. A file changed in place by someone else fails its stamp check before any send
//! (`SendFile::still_verified`); from then on a view of it is never written to a client (the
//! response fails instead), since its bytes are no longer the verified ones (and reading past
//! the end of a truncated file would fault).

use std::fs::File;
use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

use bytes::Bytes;

/// A whole file mapped read-only, unmapped when the last view of it goes.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is read-only and owned: shared references to its bytes may cross
// threads like any `&[u8]`, and only `Drop` unmaps it.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `file` (shared, read-only). Fails for `len == 0`.
    pub fn of(file: &File, len: usize) -> io::Result<Mapping> {
        use rustix::mm::{MapFlags, ProtFlags, mmap};
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty file"));
        }
        // SAFETY: a fresh mapping chosen by the kernel (null hint), aliasing no Rust object;
        // it is only ever read, through `bytes`, while `self` lives.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::SHARED,
                file,
                0,
            )
        }?;
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null pointer"))?;
        Ok(Mapping { ptr, len })
    }

    /// The mapped bytes.
    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr..ptr + len` is mapped readable for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Bytes `start..start + len` as a [`Bytes`] that keeps the mapping alive; `None` past
    /// the end.
    pub fn view(self: &Arc<Self>, start: usize, len: usize) -> Option<Bytes> {
        let end = start.checked_add(len)?;
        (end <= self.len).then(|| {
            Bytes::from_owner(View {
                map: Arc::clone(self),
                start,
                end,
            })
        })
    }

    /// Whether the byte at `p` belongs to this mapping.
    pub fn contains(&self, p: *const u8) -> bool {
        let start = self.ptr.as_ptr() as usize;
        (start..start + self.len).contains(&(p as usize))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `of` mapped; no view outlives `self` (each holds an Arc).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A range of a mapping, owned by the [`Bytes`] that shows it.
struct View {
    map: Arc<Mapping>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for View {
    fn as_ref(&self) -> &[u8] {
        &self.map.bytes()[self.start..self.end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_view_shows_the_file_and_outlives_its_handles() {
        let mut f = tempfile::tempfile().expect("tempfile");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).expect("write");
        let map = Arc::new(Mapping::of(&f, data.len()).expect("map"));
        let v = map.view(100, 5_000).expect("view");
        assert_eq!(&v[..], &data[100..5_100]);
        assert!(map.contains(v.as_ptr()));
        assert!(!map.contains(data.as_ptr()));
        assert!(map.view(9_000, 1_001).is_none(), "past the end");
        // The view keeps the mapping after the file and every other handle are gone.
        drop(f);
        drop(map);
        assert_eq!(&v.slice(10..20)[..], &data[110..120]);
    }

    #[test]
    fn an_empty_file_is_not_mapped() {
        let f = tempfile::tempfile().expect("tempfile");
        assert!(Mapping::of(&f, 0).is_err());
    }
}
