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
//! overflow a bottleneck's queue. The cost is the ceiling itself: a paced connection cannot
//! receive zero-copy bytes faster than the rate (`<ZeroCopyPacing>`, 2.5 Gbit/s by default;
//! OFF removes it). So only connections that need it are paced: the [`Pacer`] watches the
//! kernel's own account of what held each connection back (`TCP_INFO`: time with data in
//! flight, and how much of it the receiver's window was closed) and sets the ceiling once the
//! receiver is the bound. A receiver that takes bytes as fast as they come (a client that
//! does not copy them, a lower tier on a fast link) is left unpaced. 10 MiB hits, pinned, 16
//! connections (bench figure 2, 2026-11-27): to a client that discards bodies in the kernel,
//! paced from the first file byte 4,689 MB/s, watched 5,392, unpaced 6,128 (a second A/B:
//! watched 6,356, unpaced 6,594); to wrk, watched 3,626 against paced throughout 3,574.
//! Small hits are never zero-copy and so never paced.
//!
//! Only flows the kernel paces anyway are capped: those whose congestion control asks for
//! pacing (BBR; [`congestion_control_paces`]). On a flow it does not pace (CUBIC, Reno), a
//! ceiling switches on TCP's internal pacing, a timer per burst, and that costs more than the
//! bursts: 10 MiB hits to wrk under CUBIC, pinned (2026-11-27), capped 3,101 MB/s at 0.194
//! server CPU s/GB, uncapped 2,503 at 0.081 (nginx 2,505 at 0.093); to hitload, unpinned,
//! capped 10,846 MB/s, uncapped 13,155 (nginx 12,158).
//!
//! Under BBR a zero-copy flow also starts with a short queue of unsent bytes
//! (`TCP_NOTSENT_LOWAT`, [`SHORT_QUEUE`]), given back when the flow is capped. A file sent by
//! reference fills the socket's whole send buffer at once (megabytes, autotuned), and on a
//! core shared with the receiver BBR's pacing then sends it far slower than the path allows:
//! 10 MiB hits to hitload (bench figure 2) under BBR, servers and client sharing both cores
//! (2026-11-27): full buffer 6,757 MB/s, at most 256 KiB unsent 10,437 (Varnish, which
//! copies, 9,236); pinned 6,551 and 7,833 (nginx 6,483). The bytes in flight are not limited
//! (the window decides those), so a long path is not slowed. The cost is a wakeup each time
//! the queue drains below half, which a receiver that reads a little at a time makes
//! frequent: 10 MiB to wrk, server CPU per GB with the queue kept short 0.144 pinned and
//! 0.159 unpinned against 0.105 and 0.095 without (nginx 0.137, 0.112); such a flow is the
//! one the ceiling is for, and once capped its queue is given back (0.124 and 0.115). Under
//! CUBIC the queue gains little (14.9 → 15.8 GB/s to hitload at 64 KiB) and costs wrk's
//! flows as much, and nothing is changed.

use std::io;
use std::os::fd::AsRawFd;

use tokio::net::TcpStream;

/// `SO_MAX_PACING_RATE` (asm-generic and x86; the libc crate does not export it for Linux).
#[cfg(not(any(target_arch = "mips", target_arch = "mips64", target_arch = "sparc64")))]
const SO_MAX_PACING_RATE: libc::c_int = 47;

/// Bytes sent from files between two looks at a connection's `TCP_INFO`.
pub const CHECK_EVERY: u64 = 2 * 1024 * 1024;

/// The share of a connection's busy time spent waiting for the receiver's window above which
/// it is paced (see [`receiver_bound`]).
pub const RWND_LIMITED_SHARE: f64 = 0.25;

/// The most bytes a zero-copy flow under a pacing congestion control keeps unsent in its
/// socket until it is capped (`TCP_NOTSENT_LOWAT`; see the module's comment): a sweep under
/// BBR gave 64 KiB 10,251 MB/s, 256 KiB 9,453–10,764, 512 KiB 9,196, 1 MiB 6,968, unset
/// 4,884–6,757 (10 MiB hits to hitload, unpinned).
pub const SHORT_QUEUE: u32 = 256 * 1024;

/// Whether a zero-copy connection starts with a short unsent queue: when it may be capped
/// (a ceiling configured, `rate` > 0) and its congestion control paces it.
pub fn starts_short(rate: u64, kernel_paces: bool) -> bool {
    rate > 0 && kernel_paces
}

/// What the kernel says a connection's sending was limited by, since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Microseconds with data in flight.
    pub busy_us: u64,
    /// Of those, microseconds the receiver's window held sending back.
    pub rwnd_limited_us: u64,
}

/// Whether a connection whose limits went from `before` to `now` is held back by its
/// receiver's window: the case pacing cures (see the module's comment). A receiver that
/// takes bytes as fast as they come is never paced.
pub fn receiver_bound(before: Limits, now: Limits) -> bool {
    let busy = now.busy_us.saturating_sub(before.busy_us);
    let rwnd = now.rwnd_limited_us.saturating_sub(before.rwnd_limited_us);
    busy > 0 && rwnd as f64 > busy as f64 * RWND_LIMITED_SHARE
}

/// A connection's pacing decision: no ceiling until its receiver proves to be what holds
/// it back, then the ceiling for the rest of the connection. Only a connection that may be
/// capped is watched, which is the one that starts with a short unsent queue
/// ([`starts_short`]); capping it gives the queue back. Plain data; the stream does the I/O
/// (`TCP_INFO`, `SO_MAX_PACING_RATE`, `TCP_NOTSENT_LOWAT`).
#[derive(Debug)]
pub struct Pacer {
    rate: u64,
    state: PacerState,
}

/// Where a [`Pacer`] stands.
#[derive(Debug, PartialEq, Eq)]
enum PacerState {
    /// Nothing left to decide: no ceiling configured, a flow the kernel does not pace, the
    /// ceiling set, or no `TCP_INFO`.
    Done,
    /// Watching: bytes sent from files since the last look, and the limits seen then.
    Watching { unchecked: u64, last: Limits },
}

impl Pacer {
    /// A pacer that may cap the connection at `rate` bytes/s (0: never), when its
    /// congestion control paces it already (`kernel_paces`, [`congestion_control_paces`]);
    /// a flow the kernel does not pace is never capped (see the module's comment).
    pub fn new(rate: u64, kernel_paces: bool) -> Pacer {
        let state = if starts_short(rate, kernel_paces) {
            PacerState::Watching {
                unchecked: 0,
                last: Limits::default(),
            }
        } else {
            PacerState::Done
        };
        Pacer { rate, state }
    }

    /// Counts `n` bytes sent from files; true when it is time to look at the connection's
    /// limits (every [`CHECK_EVERY`] bytes) and pass them to [`Pacer::decide`].
    pub fn due(&mut self, n: usize) -> bool {
        let PacerState::Watching { unchecked, .. } = &mut self.state else {
            return false;
        };
        *unchecked += n as u64;
        if *unchecked < CHECK_EVERY {
            return false;
        }
        *unchecked = 0;
        true
    }

    /// Given the connection's limits now, the rate to cap it at, once: when its receiver
    /// was the bound since the last look. The caller gives the unsent queue back with it.
    pub fn decide(&mut self, now: Limits) -> Option<u64> {
        let PacerState::Watching { last, .. } = &mut self.state else {
            return None;
        };
        if receiver_bound(*last, now) {
            self.state = PacerState::Done;
            Some(self.rate)
        } else {
            *last = now;
            None
        }
    }

    /// The limits cannot be read: stop watching (the connection stays unpaced).
    pub fn give_up(&mut self) {
        self.state = PacerState::Done;
    }
}

/// Whether the congestion control named `name` (`TCP_CONGESTION`, NUL-padded) paces its
/// flows itself: BBR (every version) does; loss-based ones (CUBIC, Reno) do not.
pub fn congestion_control_paces(name: &[u8]) -> bool {
    name.starts_with(b"bbr")
}

/// The name of `tcp`'s congestion control (`TCP_CONGESTION`), NUL-padded.
pub fn congestion_control(tcp: &TcpStream) -> io::Result<[u8; 16]> {
    get_option(tcp, libc::IPPROTO_TCP, libc::TCP_CONGESTION, [0u8; 16])
}

/// The connection's [`Limits`] from `TCP_INFO` (zeros on kernels older than 4.10, which
/// therefore never pace).
pub fn limits(tcp: &TcpStream) -> io::Result<Limits> {
    // SAFETY: tcp_info is plain old data; all zeros is a valid value.
    let zeros: libc::tcp_info = unsafe { std::mem::zeroed() };
    let info = get_option(tcp, libc::IPPROTO_TCP, libc::TCP_INFO, zeros)?;
    Ok(Limits {
        busy_us: info.tcpi_busy_time,
        rwnd_limited_us: info.tcpi_rwnd_limited,
    })
}

/// Limits the bytes `tcp` keeps unsent to `bytes` (`TCP_NOTSENT_LOWAT`); 0 gives it the
/// system's default back (`net.ipv4.tcp_notsent_lowat`, unlimited unless set).
pub fn set_unsent_queue(tcp: &TcpStream, bytes: u32) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_option(tcp, libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, v)
}

/// The bytes `tcp` keeps unsent at most (`TCP_NOTSENT_LOWAT`; 0: the system's default).
pub fn unsent_queue(tcp: &TcpStream) -> io::Result<u32> {
    let v: libc::c_int = get_option(tcp, libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, 0)?;
    Ok(u32::try_from(v).unwrap_or(0))
}

/// Caps `tcp`'s sending rate at `bytes_per_sec` (the kernel paces every later segment).
pub fn cap(tcp: &TcpStream, bytes_per_sec: u64) -> io::Result<()> {
    set_option(tcp, libc::SOL_SOCKET, SO_MAX_PACING_RATE, bytes_per_sec)
}

/// The rate `tcp` is capped at (`u64::MAX` when it is not).
pub fn current(tcp: &TcpStream) -> io::Result<u64> {
    get_option(tcp, libc::SOL_SOCKET, SO_MAX_PACING_RATE, 0u64)
}

/// A value a socket option is read into or written from as raw bytes.
///
/// # Safety
/// Every bit pattern of the type must be a valid value (the kernel writes bytes into it)
/// and it must have no padding (the kernel reads all of its bytes).
unsafe trait OptionValue: Copy {}
// SAFETY: integers and byte arrays: every bit pattern valid, no padding.
unsafe impl OptionValue for u64 {}
// SAFETY: as above.
unsafe impl OptionValue for libc::c_int {}
// SAFETY: as above.
unsafe impl OptionValue for [u8; 16] {}
// SAFETY: a C struct of integers, every bit pattern valid; only ever read from the kernel.
unsafe impl OptionValue for libc::tcp_info {}

/// Reads the socket option `name` at `level` of `tcp`, starting from `value` (the kernel may
/// write fewer bytes than the type holds).
fn get_option<T: OptionValue>(
    tcp: &TcpStream,
    level: libc::c_int,
    name: libc::c_int,
    mut value: T,
) -> io::Result<T> {
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: a valid open socket descriptor (borrowed from `tcp` for the call), a pointer
    // to a live `T` and its size in `len`; the kernel writes at most `len` bytes, and any
    // bytes are a valid `T` (`OptionValue`).
    let r = unsafe {
        libc::getsockopt(
            tcp.as_raw_fd(),
            level,
            name,
            (&mut value as *mut T).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the socket option `name` at `level` of `tcp` to `value`.
fn set_option<T: OptionValue>(
    tcp: &TcpStream,
    level: libc::c_int,
    name: libc::c_int,
    value: T,
) -> io::Result<()> {
    // SAFETY: a valid open socket descriptor (borrowed from `tcp` for the call) and a
    // pointer to a live `T` with its exact size, which has no padding (`OptionValue`).
    let r = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            level,
            name,
            (&value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(busy_us: u64, rwnd_limited_us: u64) -> Limits {
        Limits {
            busy_us,
            rwnd_limited_us,
        }
    }

    #[test]
    fn the_receiver_is_the_bound_when_its_window_held_back_over_a_quarter_of_the_time() {
        let cases = [
            // (before, now, bound)
            (at(0, 0), at(1_000, 0), false),
            (at(0, 0), at(1_000, 250), false),
            (at(0, 0), at(1_000, 251), true),
            (at(0, 0), at(1_000, 900), true),
            // Only the interval counts: a receiver that was slow earlier is not now.
            (at(1_000, 900), at(2_000, 950), false),
            (at(1_000, 100), at(2_000, 700), true),
            // Nothing in flight (or counters that went backwards): not bound.
            (at(5_000, 10), at(5_000, 10), false),
            (at(5_000, 10), at(4_000, 9), false),
        ];
        for (before, now, bound) in cases {
            assert_eq!(receiver_bound(before, now), bound, "{before:?} -> {now:?}");
        }
    }

    #[test]
    fn a_pacer_looks_every_check_interval_and_caps_once() {
        let mut p = Pacer::new(1_000, true);
        assert!(!p.due((CHECK_EVERY - 1) as usize));
        assert!(p.due(1));
        // A fast receiver: no ceiling, and the next look compares with this one.
        assert_eq!(p.decide(at(10_000, 100)), None);
        assert!(p.due(CHECK_EVERY as usize));
        assert_eq!(p.decide(at(20_000, 6_000)), Some(1_000));
        // Set once: nothing more to look at.
        assert!(!p.due(10 * CHECK_EVERY as usize));
        assert_eq!(p.decide(at(30_000, 16_000)), None);
    }

    #[test]
    fn a_pacer_without_a_rate_or_without_tcp_info_never_caps() {
        let mut none = Pacer::new(0, true);
        assert!(!none.due(10 * CHECK_EVERY as usize));
        assert_eq!(none.decide(at(1_000, 1_000)), None);
        let mut blind = Pacer::new(1_000, true);
        blind.give_up();
        assert!(!blind.due(10 * CHECK_EVERY as usize));
        assert_eq!(blind.decide(at(1_000, 1_000)), None);
    }

    #[test]
    fn only_a_flow_that_may_be_capped_and_is_paced_by_its_kernel_starts_short() {
        assert!(starts_short(1_000, true));
        assert!(!starts_short(1_000, false), "CUBIC: nothing changed");
        assert!(
            !starts_short(0, true),
            "<ZeroCopyPacing>OFF: nothing to give it back"
        );
    }

    #[test]
    fn a_flow_its_congestion_control_does_not_pace_is_never_capped() {
        let mut p = Pacer::new(1_000, false);
        // Held back by its receiver all the time, but under CUBIC: left alone for good.
        assert!(!p.due(10 * CHECK_EVERY as usize));
        assert_eq!(p.decide(at(10_000, 9_000)), None);
        assert_eq!(p.decide(at(20_000, 19_000)), None);
    }

    #[test]
    fn bbr_paces_its_flows_and_loss_based_controls_do_not() {
        for (name, paces) in [
            (&b"bbr\0\0\0"[..], true),
            (b"bbr2", true),
            (b"bbr3\0", true),
            (b"cubic\0\0", false),
            (b"reno", false),
            (b"", false),
        ] {
            assert_eq!(congestion_control_paces(name), paces, "{name:?}");
        }
    }
}
