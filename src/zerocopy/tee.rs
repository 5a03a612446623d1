//! Sending a verified file's bytes by `tee` from pipes that already hold its pages.
//!
//! `sendfile` looks each 4 KiB page up in the page cache again on every send. On a hot large
//! object that lookup (`filemap_get_entry`: walk the page-cache tree, then take a reference on
//! a page the receiving core is releasing at the same time) was about a fifth of the server's
//! CPU in perf, the whole read side of the splice about a third. A *master* pipe filled once
//! from the file holds references to the pages; `tee` copies those references into the
//! connection's own pipe with no lookup at all, and `splice` moves them on into the socket.
//! A bare C sender on this machine's loopback: 0.07–0.11 CPU s/GB this way against
//! 0.14–0.16 with `sendfile`.
//!
//! `tee` always starts at a pipe's head, so a master covers one [`SEGMENT`] of a file from a
//! given offset, and the connection pipe takes a segment only when it is empty and the write
//! starts exactly there; every other write (a range starting mid-segment, the rest after a
//! fallback) goes by `sendfile`. Masters are made lazily, bounded per file and per process
//! ([`MAX_PER_FILE`], [`MAX_LIVE`]); when the kernel refuses a pipe its size (an unprivileged
//! user over `fs.pipe-user-pages-soft`) the bytes go by `sendfile` instead.
//!
//! Integrity is the file's: a master is filled only after the file passed its stamp check,
//! and it pins the very page-cache pages `sendfile` would send.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustix::pipe::{PipeFlags, SpliceFlags};

/// Bytes one master holds. A segment starting anywhere in a page spans at most
/// `SEGMENT / 4096 + 1` pages, which fit a pipe of [`PIPE_BYTES`].
pub const SEGMENT: usize = 512 * 1024;

/// Capacity asked of every pipe here: 256 page slots, within the default
/// `fs.pipe-max-size` (1 MiB), so unprivileged processes get it too.
const PIPE_BYTES: usize = 1024 * 1024;

/// Masters one file keeps (a chunk of the default 1 MiB needs two; ranges add a few).
pub const MAX_PER_FILE: usize = 8;

/// Masters alive in the process at most. Each costs a descriptor and a kernel table of 256
/// slots (about 10 KiB); the pages themselves are the file's. Fewer when descriptors are
/// scarce (see [`fd_budget`]).
pub const MAX_LIVE: usize = 1024;

/// Masters alive now.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Connection pipes alive now.
static CONN_PIPES: AtomicUsize = AtomicUsize::new(0);

/// Masters alive now (all files of the process).
pub fn masters_alive() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Connection pipes alive now.
pub fn connection_pipes_alive() -> usize {
    CONN_PIPES.load(Ordering::Relaxed)
}

/// Descriptors each of masters and connection pipes may hold: a sixteenth of the open-files
/// limit, so that together with the store's open chunk files (a quarter) they leave most
/// descriptors to connections, which must never be refused for a pipe's sake.
fn fd_budget() -> usize {
    static BUDGET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(|| usize::try_from(super::fd_share(16)).unwrap_or(usize::MAX))
}

/// Takes one of `max` places counted by `live`; false (nothing taken) when all are taken.
fn take_place(live: &AtomicUsize, max: usize) -> bool {
    if live.fetch_add(1, Ordering::Relaxed) >= max {
        live.fetch_sub(1, Ordering::Relaxed);
        return false;
    }
    true
}

/// A pipe holding `len` bytes of a file from offset `at`, never read from, only teed.
#[derive(Debug)]
struct Master {
    at: u64,
    len: usize,
    /// The read end; `None` when making it failed (so it is not retried for this offset).
    /// Shared so a `tee` runs outside the file's lock (see [`Masters::tee`]).
    read: Option<Arc<OwnedFd>>,
}

impl Drop for Master {
    fn drop(&mut self) {
        if self.read.is_some() {
            LIVE.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The masters of one file.
#[derive(Debug, Default)]
pub struct Masters(Mutex<Vec<Master>>);

impl Masters {
    /// Masters made for the file so far, failed ones included.
    pub fn count(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// `tee`s up to `len` bytes of `file` from `at` into `into` (the write end of an empty
    /// pipe of [`PIPE_BYTES`]), making the master for `at` first if needed. `None` when no
    /// master can serve `at`.
    pub fn tee(&self, file: &File, at: u64, len: usize, into: &OwnedFd) -> Option<usize> {
        let mut masters = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let i = match masters.iter().position(|m| m.at == at) {
            Some(i) => i,
            None => {
                if masters.len() >= MAX_PER_FILE {
                    return None;
                }
                masters.push(Master::fill(file, at, len.min(SEGMENT)));
                masters.len() - 1
            }
        };
        let m = &masters[i];
        let (read, have) = (m.read.clone()?, m.len);
        // The tee runs after the lock is released: the workers serving one hot object tee
        // from the same master at once, and a lock held across the system call made them
        // queue on a futex (0.65 futex calls per 100 KiB hit with two workers). The pipe
        // itself stays open while teed from, even if the master is dropped meanwhile.
        drop(masters);
        match rustix::pipe::tee(&*read, into, len.min(have), SpliceFlags::NONBLOCK) {
            Ok(n) if n > 0 => Some(n),
            _ => None,
        }
    }
}

impl Master {
    /// Splices `len` bytes of `file` from `at` into a new pipe; a failed master when the
    /// process has [`MAX_LIVE`] already, the kernel refuses the pipe, or the file is short.
    fn fill(file: &File, at: u64, len: usize) -> Master {
        let failed = Master {
            at,
            len: 0,
            read: None,
        };
        if !take_place(&LIVE, MAX_LIVE.min(fd_budget())) {
            return failed;
        }
        match fill_pipe(file, at, len) {
            Ok(read) => Master {
                at,
                len,
                read: Some(Arc::new(read)),
            },
            Err(e) => {
                LIVE.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "zero-copy: no master pipe, using sendfile");
                failed
            }
        }
    }
}

/// A new pipe holding `len` bytes of `file` from `at`; only its read end is kept.
fn fill_pipe(file: &File, at: u64, len: usize) -> io::Result<OwnedFd> {
    let (read, write) = new_pipe()?;
    let mut off = at;
    let mut got = 0;
    while got < len {
        let n = rustix::pipe::splice(
            file,
            Some(&mut off),
            &write,
            None,
            len - got,
            SpliceFlags::NONBLOCK,
        )?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than verified",
            ));
        }
        got += n;
    }
    Ok(read)
}

/// A non-blocking pipe of [`PIPE_BYTES`]: (read end, write end).
fn new_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    if rustix::pipe::fcntl_setpipe_size(&write, PIPE_BYTES)? < PIPE_BYTES {
        return Err(io::Error::other("pipe smaller than asked"));
    }
    Ok((read, write))
}

/// Bytes of a file waiting in a connection's pipe.
#[derive(Debug)]
struct Held<F> {
    /// Whose bytes (compared by identity).
    file: Arc<F>,
    /// File offset of the first byte still in the pipe.
    at: u64,
    /// Bytes still in the pipe.
    len: usize,
}

/// A connection's pipe between the masters and its socket.
#[derive(Debug)]
pub struct ConnPipe<F> {
    read: OwnedFd,
    write: OwnedFd,
    held: Option<Held<F>>,
}

impl<F> Drop for ConnPipe<F> {
    fn drop(&mut self) {
        CONN_PIPES.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<F> ConnPipe<F> {
    /// A new, empty pipe: `Ok(None)` when the process holds its share of pipes already,
    /// an error when the kernel refuses a pipe of [`PIPE_BYTES`].
    pub fn new() -> io::Result<Option<ConnPipe<F>>> {
        if !take_place(&CONN_PIPES, fd_budget() / 2) {
            return Ok(None);
        }
        match new_pipe() {
            Ok((read, write)) => Ok(Some(ConnPipe {
                read,
                write,
                held: None,
            })),
            Err(e) => {
                CONN_PIPES.fetch_sub(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Bytes waiting in the pipe when they are `file`'s from offset `at`.
    pub fn holds(&self, file: &Arc<F>, at: u64) -> Option<usize> {
        self.held
            .as_ref()
            .filter(|h| Arc::ptr_eq(&h.file, file) && h.at == at)
            .map(|h| h.len)
    }

    /// Whether bytes of some other place wait in the pipe (they can only be thrown away,
    /// with the pipe).
    pub fn holds_other(&self) -> bool {
        self.held.is_some()
    }

    /// Fills the empty pipe from `masters` with up to `len` bytes of `file` from `at`;
    /// the bytes now waiting, `None` when no master serves `at`.
    pub fn refill(
        &mut self,
        masters: &Masters,
        file: &Arc<F>,
        raw: &File,
        at: u64,
        len: usize,
    ) -> Option<usize> {
        debug_assert!(self.held.is_none());
        let n = masters.tee(raw, at, len, &self.write)?;
        self.held = Some(Held {
            file: file.clone(),
            at,
            len: n,
        });
        Some(n)
    }

    /// Splices up to `max` of the waiting bytes into `socket` (`more`: further bytes follow
    /// at once).
    pub fn splice_to(
        &mut self,
        socket: &impl std::os::fd::AsFd,
        max: usize,
        more: bool,
    ) -> io::Result<usize> {
        let Some(held) = self.held.as_mut() else {
            return Ok(0);
        };
        let flags = if more {
            SpliceFlags::NONBLOCK | SpliceFlags::MORE
        } else {
            SpliceFlags::NONBLOCK
        };
        let n = rustix::pipe::splice(&self.read, None, socket, None, held.len.min(max), flags)?;
        held.at += n as u64;
        held.len -= n.min(held.len);
        if held.len == 0 {
            self.held = None;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn shm_file(data: &[u8]) -> Option<(tempfile::NamedTempFile, File)> {
        let mut f = tempfile::NamedTempFile::new_in("/dev/shm").ok()?;
        f.write_all(data).ok()?;
        f.flush().ok()?;
        let file = File::open(f.path()).ok()?;
        Some((f, file))
    }

    #[test]
    fn a_master_tees_the_same_bytes_again_and_again() {
        let data: Vec<u8> = (0..SEGMENT + 5000).map(|i| (i % 253) as u8).collect();
        let Some((_tmp, file)) = shm_file(&data) else {
            return;
        };
        let masters = Masters::default();
        let owner = Arc::new(());
        for _ in 0..3 {
            let mut pipe = ConnPipe::new().unwrap().unwrap();
            // From offset 3: a segment that starts mid-page.
            let n = pipe
                .refill(&masters, &owner, &file, 3, data.len() - 3)
                .unwrap();
            assert_eq!(n, SEGMENT, "one whole segment");
            assert_eq!(pipe.holds(&owner, 3), Some(SEGMENT));
            // Read the pipe back through a socket pair.
            let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                a.read_to_end(&mut got).unwrap();
                got
            });
            let b = std::os::fd::OwnedFd::from(b);
            let mut sent = 0;
            while sent < n {
                sent += pipe.splice_to(&b, usize::MAX, false).unwrap();
            }
            assert!(pipe.holds(&owner, 3).is_none() && !pipe.holds_other());
            drop(b);
            assert!(
                reader.join().unwrap() == data[3..3 + SEGMENT],
                "bytes differ"
            );
        }
        assert_eq!(masters.0.lock().unwrap().len(), 1, "one master, reused");
    }

    #[test]
    fn threads_tee_one_master_at_once_and_each_gets_its_bytes() {
        let data: Vec<u8> = (0..SEGMENT).map(|i| (i % 251) as u8).collect();
        let Some((_tmp, file)) = shm_file(&data) else {
            return;
        };
        let (masters, file, data) = (Arc::new(Masters::default()), Arc::new(file), Arc::new(data));
        let start = Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (masters, file, data, start) =
                    (masters.clone(), file.clone(), data.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    for _ in 0..20 {
                        let (read, write) = new_pipe().unwrap();
                        let n = masters.tee(&file, 0, SEGMENT, &write).unwrap();
                        drop(write);
                        let mut got = vec![0u8; n];
                        let mut at = 0;
                        while at < n {
                            at += rustix::io::read(&read, &mut got[at..]).unwrap();
                        }
                        assert!(got == data[..n], "bytes differ");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(masters.count(), 1, "one master, shared");
    }

    #[test]
    fn places_run_out_and_come_back() {
        let live = AtomicUsize::new(0);
        assert!(take_place(&live, 2) && take_place(&live, 2));
        assert!(!take_place(&live, 2), "the third of two places");
        assert_eq!(live.load(Ordering::Relaxed), 2, "a refusal takes nothing");
        live.fetch_sub(1, Ordering::Relaxed);
        assert!(take_place(&live, 2));
    }

    #[test]
    fn a_short_file_makes_no_master() {
        let Some((_tmp, file)) = shm_file(&[7u8; 1000]) else {
            return;
        };
        let masters = Masters::default();
        let mut pipe = ConnPipe::<()>::new().unwrap().unwrap();
        let owner = Arc::new(());
        assert!(pipe.refill(&masters, &owner, &file, 0, 5000).is_none());
        assert!(!pipe.holds_other());
        // The failure is remembered, not retried.
        assert!(pipe.refill(&masters, &owner, &file, 0, 5000).is_none());
        assert_eq!(masters.0.lock().unwrap().len(), 1);
    }
}
