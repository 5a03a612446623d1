//! The process's allocator as an operator sees it: handing freed memory back to the system.
//!
//! The binary runs on jemalloc (see `main.rs`), which keeps pages it has freed for reuse and
//! returns them to the system only as they age (about ten seconds, and only while it is
//! being called). After a burst — a mass purge, a fill of many objects that grew the index
//! table and freed the old one — the resident size stays high until then. Redis has
//! `MEMORY PURGE` for the same reason; ours is `/command/releasememory`, and the benchmark
//! uses it so that what it reads is what the cache holds, not what the allocator keeps.

use std::ffi::{CStr, c_char};
use std::ptr;

/// jemalloc's pseudo-arena meaning "all arenas" (`MALLCTL_ARENAS_ALL`).
const ALL_ARENAS_PURGE: &CStr = c"arena.4096.purge";

/// Why the allocator could not release its free pages.
#[derive(Debug, thiserror::Error)]
#[error("the allocator refused to release free memory (jemalloc mallctl error {0})")]
pub struct ReleaseError(i32);

/// Returns every page the allocator holds free (in all its arenas) to the system now.
///
/// Without jemalloc as the global allocator (the library's own tests), jemalloc's arenas
/// hold nothing and this returns `Ok` having released nothing.
pub fn release_free_memory() -> Result<(), ReleaseError> {
    // SAFETY: a NUL-terminated control name, and no old or new value: this mallctl takes
    // none (it is a command, not a setting).
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            ALL_ARENAS_PURGE.as_ptr() as *const c_char,
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(ReleaseError(rc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releasing_free_memory_is_accepted() {
        // A wrong control name is an error (ENOENT), so this checks the name is jemalloc's.
        assert!(release_free_memory().is_ok());
    }
}
