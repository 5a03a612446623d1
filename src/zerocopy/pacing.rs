//! Pacing of zero-copy sends: a per-connection rate ceiling the kernel enforces
//! (`SO_MAX_PACING_RATE`, TCP's own pacing when the interface has no `fq` qdisc).
//!
//! Why a cache paces at all: a body sent from the page cache is always fully queued, so each
//! acknowledgement releases the next segments at once, in a burst the size of the client's
//! window. On a fast path (loopback in the bench, a LAN) a window then arrives in a few
//! microseconds, the client's receive-window autotuning (which sizes the buffer by the data
//! that arrives within its RTT estimate, and takes that estimate from the time a window takes
//! to arrive) never sees more than one small window per "RTT", and the window stays at
//! 100-200 KB for good; the client's core ends up processing every acknowledgement and the
//! segments each one releases. Measured (10 MiB hits at 16 connections, pinned, interleaved
//! rounds with the peers, 2026-11-26): unpaced 1,959 MB/s at 0.209 server CPU s/GB; paced at
//! 2 Gbit/s per connection 3,318 MB/s at 0.154 (Varnish 3,141 at 0.224, nginx 1,600 at 0.188);
//! a sweep of the rate: 2.0 Gbit/s 3,445, 2.2 3,448, 2.5 3,801-4,270 (at 0.12 CPU s/GB), 2.8
//! 3,305, 3.2 3,558, 4.0 3,547, Varnish 3,270-3,349. Spread over the pacing interval, a window
//! takes long enough to arrive for the client to grow it to megabytes, and the flow is no
//! longer clocked by its acknowledgements.
//!
//! Over a real network pacing is what `fq` does for every flow: it smooths the bursts that
//! overflow a bottleneck's queue. The cost is the ceiling itself: one connection cannot
//! receive zero-copy bytes faster than the rate (`<ZeroCopyPacing>`, 2.5 Gbit/s by default; OFF
//! removes it). Small hits are never zero-copy and so never paced.

use std::io;
use std::os::fd::AsRawFd;

use tokio::net::TcpStream;

/// `SO_MAX_PACING_RATE` (asm-generic and x86; the libc crate does not export it for Linux).
#[cfg(not(any(target_arch = "mips", target_arch = "mips64", target_arch = "sparc64")))]
const SO_MAX_PACING_RATE: libc::c_int = 47;

/// Caps `tcp`'s sending rate at `bytes_per_sec` (the kernel paces every later segment).
pub fn cap(tcp: &TcpStream, bytes_per_sec: u64) -> io::Result<()> {
    let rate: u64 = bytes_per_sec;
    // SAFETY: a valid open socket descriptor (borrowed from `tcp` for the call) and a
    // pointer to a live u64 with its exact size, as setsockopt(2) documents for this option.
    let r = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MAX_PACING_RATE,
            (&rate as *const u64).cast(),
            std::mem::size_of::<u64>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The rate `tcp` is capped at (`u64::MAX` when it is not).
pub fn current(tcp: &TcpStream) -> io::Result<u64> {
    let mut rate: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: as in `cap`; `len` tells the kernel the size of `rate`.
    let r = unsafe {
        libc::getsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MAX_PACING_RATE,
            (&mut rate as *mut u64).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(rate)
    } else {
        Err(io::Error::last_os_error())
    }
}
