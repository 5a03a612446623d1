//! Keeps each worker thread on a core of its own (`<Host><WorkerAffinity>`).
//!
//! Why: an event-loop worker under load never sleeps, so the kernel balances busy workers by
//! count alone and often leaves two of them on one core. When the machine also runs
//! something that sleeps often (a client or a log shipper sharing the box, as in the
//! bench's unpinned mode) and it sleeps, its core has nothing to run until the next periodic
//! balance moves a worker over: the kernel does not pull a task that ran a moment ago onto
//! an idle core. Measured (bench, 100 KiB hits to hitload, server and client sharing both
//! cores): the machine sat 7–11% idle with the workers left to the kernel, 1% with one
//! worker per core, and 1 KiB hits went from 69.9k to 77.3k req/s.
//!
//! When: only when the workers cover the cores the process may use (as many workers as
//! allowed cores, or more); with fewer workers than cores (one worker on a many-core box),
//! or a single allowed core, the kernel places them. Worker `n` (numbered in the order the
//! threads first serve a request) goes on allowed core `n mod cores`. OFF (also by a reload:
//! a worker applies the setting its connection was accepted under, at that connection's next
//! request) gives every pinned worker back the process's own set of cores.
//!
//! The decision is [`core_for`], plain data; [`between_requests`] applies it on the calling
//! worker thread, so only threads that serve requests are ever pinned (never tokio's
//! blocking-pool threads).

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rustix::thread::CpuSet;

/// The core worker number `slot` belongs on, given the cores the process may use and its
/// worker count; `None` leaves the worker to the kernel.
pub fn core_for(slot: usize, allowed: &[usize], workers: usize) -> Option<usize> {
    if allowed.len() < 2 || workers < allowed.len() {
        return None;
    }
    allowed.get(slot % allowed.len()).copied()
}

/// What a worker thread has applied to itself so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    /// Nothing yet: the thread has not served a request.
    Nothing,
    /// The thread runs on the core given (`<WorkerAffinity>ON`, cores covered).
    Pinned(usize),
    /// `<WorkerAffinity>ON`, but the kernel places the thread: the workers do not cover the
    /// cores, there is one core, or the system refused.
    LeftToKernel,
    /// `<WorkerAffinity>OFF`: the thread may run on every core the process may use.
    Free,
}

impl Applied {
    /// A thread that runs on every core, under the setting `on`.
    fn unpinned(on: bool) -> Applied {
        if on {
            Applied::LeftToKernel
        } else {
            Applied::Free
        }
    }
}

/// Worker numbers handed out so far (one per thread, kept across reloads).
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);
/// Worker threads currently pinned to a core.
static PINNED: AtomicU64 = AtomicU64::new(0);
/// The cores the process may use, read before any worker pinned itself.
static ALLOWED: OnceLock<Option<(CpuSet, Vec<usize>)>> = OnceLock::new();

thread_local! {
    static APPLIED: Cell<Applied> = const { Cell::new(Applied::Nothing) };
    static SLOT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The process's cores, as the first worker found them (its own mask was the process's).
fn allowed() -> Option<&'static (CpuSet, Vec<usize>)> {
    ALLOWED
        .get_or_init(|| {
            let set = rustix::thread::sched_getaffinity(None).ok()?;
            let cores = (0..CpuSet::MAX_CPU).filter(|c| set.is_set(*c)).collect();
            Some((set, cores))
        })
        .as_ref()
}

/// Called when the runtime starts a thread: a thread inherits the affinity of the thread
/// that created it, so one that a pinned worker started (tokio's blocking pool grows from
/// the thread that asks) gets the process's cores back.
pub fn thread_started() {
    let Some((set, _)) = ALLOWED.get().and_then(Option::as_ref) else {
        // No worker has pinned itself yet: nothing can have been inherited.
        return;
    };
    if rustix::thread::sched_getaffinity(None).is_ok_and(|mine| mine != *set)
        && let Err(e) = rustix::thread::sched_setaffinity(None, set)
    {
        tracing::warn!(error = %e, "cannot give a new runtime thread the process's cores");
    }
}

/// Called before each request a worker serves, with `<WorkerAffinity>` as the connection
/// found it: pins the thread (or frees it) when the setting asks for something it has not
/// applied yet. Costs one thread-local read once applied.
pub fn between_requests(on: bool) {
    let applied = APPLIED.with(Cell::get);
    let settled = match applied {
        Applied::Nothing => false,
        Applied::Pinned(_) | Applied::LeftToKernel => on,
        Applied::Free => !on,
    };
    if !settled {
        apply(on, applied);
    }
}

fn apply(on: bool, applied: Applied) {
    let Some((set, cores)) = allowed() else {
        // Affinity cannot be read here: leave the kernel in charge, and do not ask again.
        APPLIED.with(|a| a.set(Applied::unpinned(on)));
        return;
    };
    let target = if on {
        let slot = SLOT.with(|s| {
            let slot = s
                .get()
                .unwrap_or_else(|| NEXT_SLOT.fetch_add(1, Ordering::Relaxed));
            s.set(Some(slot));
            slot
        });
        let workers = tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_workers())
            .unwrap_or(0);
        core_for(slot, cores, workers)
    } else {
        None
    };
    let next = match target {
        Some(core) => {
            let mut one = CpuSet::new();
            one.set(core);
            match rustix::thread::sched_setaffinity(None, &one) {
                Ok(()) => Applied::Pinned(core),
                Err(e) => {
                    tracing::warn!(core, error = %e, "cannot pin a worker thread; leaving it to the kernel");
                    Applied::LeftToKernel
                }
            }
        }
        None => {
            if matches!(applied, Applied::Pinned(_))
                && let Err(e) = rustix::thread::sched_setaffinity(None, set)
            {
                tracing::warn!(error = %e, "cannot unpin a worker thread");
            }
            Applied::unpinned(on)
        }
    };
    let pinned = |a: Applied| matches!(a, Applied::Pinned(_));
    match (pinned(applied), pinned(next)) {
        (true, false) => {
            PINNED.fetch_sub(1, Ordering::Relaxed);
        }
        (false, true) => {
            PINNED.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
    APPLIED.with(|a| a.set(next));
}

/// Worker threads pinned to a core right now.
pub fn pinned() -> u64 {
    PINNED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_worker_per_core_when_the_workers_cover_the_cores() {
        let cores = [0, 1];
        assert_eq!(core_for(0, &cores, 2), Some(0));
        assert_eq!(core_for(1, &cores, 2), Some(1));
        // More workers than cores: round robin.
        assert_eq!(core_for(2, &cores, 4), Some(0));
        assert_eq!(core_for(3, &cores, 4), Some(1));
        // The allowed set need not start at 0 nor be contiguous.
        assert_eq!(core_for(1, &[2, 5, 7], 3), Some(5));
    }

    #[test]
    fn the_kernel_places_workers_that_do_not_cover_the_cores() {
        // One worker on a two-core box, two on four cores, or a single allowed core.
        assert_eq!(core_for(0, &[0, 1], 1), None);
        assert_eq!(core_for(0, &[0, 1, 2, 3], 2), None);
        assert_eq!(core_for(0, &[3], 4), None);
        assert_eq!(core_for(0, &[], 4), None);
    }

    #[test]
    fn a_thread_pins_itself_and_off_frees_it() {
        // A thread outside any runtime sees no workers: left to the kernel, and settled
        // (asked again only when the setting changes).
        std::thread::spawn(|| {
            between_requests(true);
            assert_eq!(APPLIED.with(Cell::get), Applied::LeftToKernel);
            between_requests(false);
            assert_eq!(APPLIED.with(Cell::get), Applied::Free);
        })
        .join()
        .expect("thread");

        // Inside a runtime whose workers cover the cores, a worker pins itself; OFF frees it.
        let Some((set, cores)) = allowed() else {
            panic!("sched_getaffinity failed on Linux");
        };
        let cores = cores.clone();
        let original = *set;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores.len().max(1))
            .on_thread_start(thread_started)
            .build()
            .expect("runtime");
        let (on, blocking, off) = rt.block_on(async move {
            tokio::spawn(async move {
                between_requests(true);
                let on = (
                    APPLIED.with(Cell::get),
                    rustix::thread::sched_getaffinity(None).expect("affinity"),
                );
                // The runtime's first blocking thread, started by this pinned worker.
                let blocking = tokio::task::spawn_blocking(|| {
                    rustix::thread::sched_getaffinity(None).expect("affinity")
                })
                .await
                .expect("blocking");
                between_requests(false);
                let off = (
                    APPLIED.with(Cell::get),
                    rustix::thread::sched_getaffinity(None).expect("affinity"),
                );
                (on, blocking, off)
            })
            .await
            .expect("task")
        });
        if cores.len() >= 2 {
            let Applied::Pinned(core) = on.0 else {
                panic!("not pinned: {:?}", on.0);
            };
            assert!(cores.contains(&core));
            assert!(on.1.is_set(core) && on.1.count() == 1);
        } else {
            assert_eq!(
                on.0,
                Applied::LeftToKernel,
                "a single core is left to the kernel"
            );
        }
        assert_eq!(
            blocking, original,
            "a blocking thread inherited a worker's core"
        );
        assert_eq!(off.0, Applied::Free);
        assert_eq!(off.1, original);
    }
}
