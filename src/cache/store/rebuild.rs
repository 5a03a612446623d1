//! Background index rebuild after start-up: walks every fan-out directory once, indexes the
//! committed metas (for quota accounting, eviction and `keys`), and deletes what no committed
//! meta owns: temporary files of earlier runs and chunk files of versions that never committed
//! or were replaced. The store serves meanwhile; lookups of keys not indexed yet read their
//! meta directly.
//!
//! Races with the live store are settled by its rules: a `.meta` file is only loaded under the
//! key's stripe lock (so it is the current one, and an entry the live store already has wins),
//! and a chunk file is an orphan only if, under the state lock, no writer of its version is in
//! progress, the index does not hold that version on that disk and no reader holds it (an
//! evicted version a client is still streaming keeps its files until the client is done).

use std::fs;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::Inner;
use super::disk::{StoreFile, parse_name, remove_quietly};
use super::error::StoreError;
use super::index::KeyHash;

/// Starts the rebuild on the blocking pool.
pub(super) fn spawn(inner: &Arc<Inner>) {
    let weak = Arc::downgrade(inner);
    let guard = super::BgGuard::enter(inner);
    inner.rt.spawn_blocking(move || {
        let _guard = guard;
        let done = run(&weak);
        if let Some(inner) = weak.upgrade() {
            if done {
                inner.index_complete.store(true, Ordering::Release);
                let st = inner.lock();
                tracing::info!(objects = st.index.len(), "cache store: index rebuilt");
            }
            inner.rebuilt.notify_waiters();
        }
    });
}

/// Scans every directory; `false` if the store was closed or dropped first.
pub(super) fn run(weak: &Weak<Inner>) -> bool {
    let Some(n) = weak.upgrade().map(|i| i.disks.len()) else {
        return false;
    };
    for d in 0..n {
        for sub in 0..=255u8 {
            // Holding the store only per directory lets a dropped store go away.
            let Some(inner) = weak.upgrade() else {
                return false;
            };
            if inner.closed.load(Ordering::Acquire) {
                return false;
            }
            if let Err(e) = scan(&inner, d as u8, sub) {
                tracing::warn!(dir = %inner.disks[d].subdir(sub).display(), error = %e,
                    "cache store: rebuild cannot scan directory");
            }
        }
    }
    true
}

/// Indexes one fan-out directory and deletes its leftovers.
fn scan(inner: &Arc<Inner>, d: u8, sub: u8) -> std::io::Result<()> {
    let disk = &inner.disks[d as usize];
    let mut metas = Vec::new();
    let mut chunks = Vec::new();
    for ent in fs::read_dir(disk.subdir(sub))? {
        let ent = ent?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        match parse_name(name) {
            StoreFile::Meta(h) => metas.push(h),
            StoreFile::Chunk {
                hash,
                version,
                index,
            } => chunks.push((hash, version, index)),
            StoreFile::Temp { run } if run != disk.run_id() => remove_quietly(&ent.path()),
            StoreFile::Temp { .. } | StoreFile::Other => {}
        }
    }
    for h in metas {
        load_meta(inner, d, h);
    }
    let orphans: Vec<_> = {
        // State, then pins: the order `pin` and `ReaderHold::drop` never reverse (they take
        // pins alone). Under both, a version evicted but still held is seen as held.
        let st = inner.lock();
        let pins = inner.pins.lock().unwrap_or_else(|e| e.into_inner());
        chunks
            .into_iter()
            .filter(|(h, v, _)| {
                !st.pending.contains_key(v)
                    && !st
                        .index
                        .get(h)
                        .is_some_and(|e| e.version == *v && e.disk == d)
                    && !pins.readers.contains_key(&(*h, *v))
            })
            .collect()
    };
    for (h, v, i) in orphans {
        remove_quietly(&disk.chunk_path(&h, v, i));
    }
    Ok(())
}

/// Indexes the `.meta` file of `h` on disk `d` unless the live store already knows the key.
fn load_meta(inner: &Arc<Inner>, d: u8, h: KeyHash) {
    let disk = &inner.disks[d as usize];
    let _stripe = inner.stripe(&h).blocking_lock();
    let known = {
        let st = inner.lock();
        if st.evicting.contains(&h) {
            return;
        }
        st.index.get(&h).map(|e| (e.version, e.disk))
    };
    if matches!(known, Some((_, ed)) if ed == d) {
        return; // already indexed from this very file
    }
    let path = disk.meta_path(&h);
    match disk.read_meta_section(&path) {
        Ok(Some(lm)) => {
            if KeyHash::of(&lm.meta.key) != h {
                tracing::warn!(path = %path.display(), "cache store: misnamed meta file deleted");
                remove_quietly(&path);
                return;
            }
            if let Some((v, _)) = known
                && v >= lm.meta.version
            {
                // A newer version of the key lives on another disk: this copy is stale.
                remove_quietly(&path);
                return;
            }
            let (_, doomed) = inner.install_loaded(h, d, lm, false);
            inner.delete_in_background(doomed);
        }
        Ok(None) => {}
        Err(StoreError::Corrupt) => {
            tracing::warn!(path = %path.display(), "cache store: corrupt meta file deleted");
            inner.lock().counters.corrupt += 1;
            remove_quietly(&path);
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cache store: cannot read meta");
        }
    }
}
