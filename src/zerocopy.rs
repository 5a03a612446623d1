//! Zero-copy sending of cached bytes that also live in a file on a memory-backed file system.
//!
//! On a large hit nearly all of the server's CPU goes into the kernel copying the body from
//! user memory into the socket. When the store also holds the bytes in a file on tmpfs (its
//! disk tier there), the kernel can send the file's pages without copying them (`sendfile`).
//!
//! hyper writes only the bytes it is handed, so the hand-over goes by address. A body that
//! yields a frame of cached bytes *offers* it to its connection's [`Lane`] together with the
//! file and offset that hold the same bytes; when hyper then writes those bytes, the
//! connection's stream ([`ZcStream`]) recognises them (the lane keeps the buffer alive, so no
//! other buffer can occupy its addresses) and sends them from the file instead. Everything
//! it does not recognise is written as usual: hyper's own framing, a stream that cannot send
//! files (TLS: never wrapped), a body polled outside its connection's task (an h2 stream)
//! simply take the copying path. The frame always carries the real bytes, so any path that
//! does not know about the lane still sends the right ones.
//!
//! How the file's bytes reach the socket: a whole segment at a time by `tee` from a pipe that
//! holds the file's pages (see [`tee`]), else by `sendfile`.
//!
//! Integrity: a [`SendFile`] is opened by the store, which reads it and checks its CRC before
//! handing it out, and it is `fstat`ed before every `sendfile` and every segment teed: once its
//! size, times or inode differ from what was verified it is never sent from again (the
//! verified bytes in memory are written instead, and the store drops the handle). Only
//! memory-backed file systems qualify (see [`memory_backed`]): nothing decays under the page
//! cache there after the check, and neither `sendfile` nor `splice` waits for a device, so
//! both are safe on the event loop.
//!
//! The parts, a file each: `file` (a verified file, [`SendFile`], and the span of bytes it
//! holds), `lane` (a connection's offers, [`Lane`], and the body that makes them), `stream`
//! (the connection's socket, [`ZcStream`], which sends offered bytes from their files),
//! [`tee`], [`view`] and [`pacing`] (a rate ceiling on connections sending from files).

mod file;
mod lane;
pub mod pacing;
mod stream;
pub mod tee;
pub mod view;

use std::sync::atomic::{AtomicU64, Ordering};

pub use file::{FileSpan, SendFile, memory_backed};
pub use lane::{Lane, active, body, offer, scope};
pub use stream::ZcStream;

/// Frames smaller than this are copied. Each zero-copy response costs three more system
/// calls than a copied one (the file's `fstat` stamp check, the head sent on its own, the
/// `tee` before the `splice`) and a page reference taken and dropped per 4 KiB, so small
/// frames are cheaper copied. At 100 KiB hits (figure 2 of the bench, CUBIC, 2026-11-28,
/// interleaved A/Bs against the copy) the zero-copy send won: unpinned 4,345 vs 4,129 MB/s
/// at 0.309 vs 0.334 server CPU s/GB, pinned 3,192 vs 2,933 MB/s at 0.309 vs 0.340; under BBR
/// they were level. Frames under 64 KiB (16 pages) were not measured and stay copied.
pub const MIN_SEND: usize = 64 * 1024;

/// Bytes sent from files since the process started (all connections).
static SENT: AtomicU64 = AtomicU64::new(0);

/// Connections paced since the process started (see [`pacing::Pacer`]).
static PACED: AtomicU64 = AtomicU64::new(0);

/// `1/divisor` of the process's open-files limit (unbounded when the limit is): the share of
/// descriptors one kind of zero-copy handle (the store's verified files, the pipes) may hold
/// beside the connections.
pub fn fd_share(divisor: u64) -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(u64::MAX, |limit| limit / divisor)
}

/// Bytes sent from files since the process started: what zero-copy saved from copying.
pub fn sent_bytes() -> u64 {
    SENT.load(Ordering::Relaxed)
}

/// Connections whose receiver held them back, so that they were paced, since the process
/// started.
pub fn paced_connections() -> u64 {
    PACED.load(Ordering::Relaxed)
}

/// Helpers for the zero-copy unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use std::fs::File;
    use std::io::Write;
    use std::sync::Arc;

    use super::{SendFile, memory_backed};

    /// A file in /dev/shm (tmpfs) holding `data` after a 7-byte header, or None when the
    /// machine has no /dev/shm.
    pub fn shm_file(data: &[u8]) -> Option<(tempfile::NamedTempFile, Arc<SendFile>)> {
        let mut f = tempfile::NamedTempFile::new_in("/dev/shm").ok()?;
        f.write_all(b"HEADER:").ok()?;
        f.write_all(data).ok()?;
        f.flush().ok()?;
        let file = File::open(f.path()).ok()?;
        assert!(memory_backed(&file));
        let sf = Arc::new(SendFile::new(file).ok()?);
        Some((f, sf))
    }

    /// Distinct bytes, so that a misplaced one shows.
    pub fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Rewrites a file made by `shm_file` with `len` other bytes, as someone might after it
    /// was verified (late enough for its times to change).
    pub fn rewrite(path: &std::path::Path, len: usize) {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut bad = b"HEADER:".to_vec();
        bad.extend(std::iter::repeat_n(0xAAu8, len));
        std::fs::write(path, &bad).unwrap();
    }
}
