//! S3-FIFO admission and eviction (Yang et al., SOSP '23), weighted by bytes.
//!
//! New objects enter a small FIFO (~10% of the capacity). When the small FIFO is evicted, an
//! object that was hit while there moves to the main FIFO, the others leave and only their hash
//! is remembered in a ghost FIFO. An object re-inserted while its hash is a ghost goes straight
//! to main. Main is a FIFO with reinsertion (a CLOCK): a hit object gets another lap, its
//! counter decremented. A one-pass scan of one-hit objects therefore only churns the small FIFO
//! and never flushes the hot set in main, unlike LRU.
//!
//! The per-object state ([`FifoNode`]) lives in the caller's index entry, not in a map here, so
//! the policy costs a few bytes per object; the policy reaches it through [`Nodes`]. Removal
//! is lazy: a queue slot whose sequence number no longer matches its node is skipped.

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasherDefault;

use super::index::IdHasher;

/// Cap of the access counter: an object earns at most this many extra laps in main.
const MAX_FREQ: u8 = 3;

/// Which FIFO an object is in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Queue {
    /// Not tracked by this policy.
    #[default]
    Detached,
    /// In the small (probation) FIFO.
    Small,
    /// In the main FIFO.
    Main,
}

/// Per-object policy state, stored in the caller's entry.
///
/// Packed to 6 bytes (from 8): an index entry holds two, and every byte of an entry is paid
/// once per cached object (see the index's `entry_is_compact`).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, packed(2))]
pub(crate) struct FifoNode {
    /// Matches the queue slot that is live for this object; older slots are stale.
    seq: u32,
    /// Hits since insertion or since the last lap (saturating at [`MAX_FREQ`]).
    freq: u8,
    queue: Queue,
}

impl FifoNode {
    /// Whether the object is tracked by a policy.
    pub fn is_attached(&self) -> bool {
        self.queue != Queue::Detached
    }

    /// Records a hit. Cheap enough for the hot path: no queue is touched.
    pub fn touch(&mut self) {
        if self.is_attached() && self.freq < MAX_FREQ {
            self.freq += 1;
        }
    }
}

/// A key the policy can queue: cheap to copy, and with a 64-bit fingerprint for the ghost.
pub(crate) trait FifoKey: Copy {
    /// A well-mixed 64-bit digest of the key.
    fn fingerprint(&self) -> u64;
}

/// Access to the nodes of the objects a policy tracks.
pub(crate) trait Nodes<K> {
    /// The node and current weight of `key`, if the caller still knows the object.
    fn node(&mut self, key: K) -> Option<(&mut FifoNode, u64)>;
}

/// One S3-FIFO instance with a byte capacity.
pub(crate) struct S3Fifo<K> {
    capacity: u64,
    small: VecDeque<(K, u32)>,
    main: VecDeque<(K, u32)>,
    small_bytes: u64,
    main_bytes: u64,
    small_live: usize,
    main_live: usize,
    ghost: Ghost,
    next_seq: u32,
}

impl<K: FifoKey> S3Fifo<K> {
    /// An empty policy for `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        S3Fifo {
            capacity,
            small: VecDeque::new(),
            main: VecDeque::new(),
            small_bytes: 0,
            main_bytes: 0,
            small_live: 0,
            main_live: 0,
            ghost: Ghost::default(),
            next_seq: 0,
        }
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes of the tracked objects.
    pub fn used(&self) -> u64 {
        self.small_bytes + self.main_bytes
    }

    /// Number of tracked objects.
    pub fn len(&self) -> usize {
        self.small_live + self.main_live
    }

    /// Approximate heap bytes of the queues and the ghost.
    pub fn heap_bytes(&self) -> u64 {
        let slot = size_of::<(K, u32)>();
        ((self.small.capacity() + self.main.capacity()) * slot + self.ghost.heap_bytes()) as u64
    }

    /// Starts tracking `key` (whose node must be detached): main if its hash is a ghost (it was
    /// evicted recently and came back), small otherwise.
    pub fn insert(&mut self, key: K, node: &mut FifoNode, weight: u64) {
        let to_main = self.ghost.take(key.fingerprint());
        self.attach(
            key,
            node,
            weight,
            if to_main { Queue::Main } else { Queue::Small },
        );
    }

    /// Starts tracking `key` directly in main: for objects known to be established, such as
    /// those found on disk at start-up.
    pub fn insert_main(&mut self, key: K, node: &mut FifoNode, weight: u64) {
        self.attach(key, node, weight, Queue::Main);
    }

    fn attach(&mut self, key: K, node: &mut FifoNode, weight: u64, queue: Queue) {
        debug_assert!(!node.is_attached(), "insert of a tracked object");
        let seq = self.bump_seq();
        *node = FifoNode {
            seq,
            freq: 0,
            queue,
        };
        match queue {
            Queue::Small => {
                self.small.push_back((key, seq));
                self.small_bytes += weight;
                self.small_live += 1;
            }
            Queue::Main => {
                self.main.push_back((key, seq));
                self.main_bytes += weight;
                self.main_live += 1;
            }
            Queue::Detached => {}
        }
    }

    /// Stops tracking an object (removed by the caller); its queue slot goes stale.
    pub fn remove(&mut self, node: &mut FifoNode, weight: u64) {
        match node.queue {
            Queue::Small => {
                self.small_bytes = self.small_bytes.saturating_sub(weight);
                self.small_live = self.small_live.saturating_sub(1);
            }
            Queue::Main => {
                self.main_bytes = self.main_bytes.saturating_sub(weight);
                self.main_live = self.main_live.saturating_sub(1);
            }
            Queue::Detached => {}
        }
        node.queue = Queue::Detached;
    }

    /// Records that a tracked object's weight changed from `old` to `new`.
    pub fn reweigh(&mut self, node: &FifoNode, old: u64, new: u64) {
        let bytes = match node.queue {
            Queue::Small => &mut self.small_bytes,
            Queue::Main => &mut self.main_bytes,
            Queue::Detached => return,
        };
        *bytes = bytes.saturating_sub(old) + new;
    }

    /// Picks the next victim and detaches it; the caller drops the object. `None` when nothing
    /// is tracked. The caller loops while [`Self::used`] exceeds what it can afford.
    pub fn evict(&mut self, nodes: &mut impl Nodes<K>) -> Option<K> {
        loop {
            if self.small_live == 0 && self.main_live == 0 {
                return None;
            }
            // Evict from small while it holds more than its 10% share (or main is empty), so
            // that newcomers cycle through small and main is left to the proven objects.
            let from_small = self.main_live == 0
                || (self.small_live > 0 && self.small_bytes > self.capacity / 10);
            let step = if from_small {
                self.step_small(nodes)
            } else {
                self.step_main(nodes)
            };
            match step {
                Step::Victim(key) => return Some(key),
                Step::Continue => {}
                Step::Empty => {
                    // The counts say objects remain but the queue has no slot: accounting
                    // drifted. Resynchronise rather than spin.
                    if from_small {
                        (self.small_live, self.small_bytes) = (0, 0);
                    } else {
                        (self.main_live, self.main_bytes) = (0, 0);
                    }
                }
            }
        }
    }

    /// Pops one slot of small: a hit object is promoted, a cold one evicted (to the ghost).
    fn step_small(&mut self, nodes: &mut impl Nodes<K>) -> Step<K> {
        let Some((key, seq)) = self.small.pop_front() else {
            return Step::Empty;
        };
        let (node, weight) = match nodes.node(key) {
            Some((node, w)) if node.queue == Queue::Small && node.seq == seq => (node, w),
            _ => return Step::Continue, // stale slot
        };
        // Saturating: a drift in the caller's weights must not take the server down.
        self.small_bytes = self.small_bytes.saturating_sub(weight);
        self.small_live = self.small_live.saturating_sub(1);
        if node.freq > 0 {
            // Promoted: it carries one less hit, spent on the promotion.
            let seq = self.bump_seq();
            node.seq = seq;
            node.freq -= 1;
            node.queue = Queue::Main;
            self.main.push_back((key, seq));
            self.main_bytes += weight;
            self.main_live += 1;
            Step::Continue
        } else {
            node.queue = Queue::Detached;
            let max_ghosts = (self.small_live + self.main_live).max(64);
            let ghost_bytes = self.capacity - self.capacity / 10;
            self.ghost
                .add(key.fingerprint(), weight, ghost_bytes, max_ghosts);
            Step::Victim(key)
        }
    }

    /// Pops one slot of main: a hit object gets another lap, a cold one is evicted.
    fn step_main(&mut self, nodes: &mut impl Nodes<K>) -> Step<K> {
        let Some((key, seq)) = self.main.pop_front() else {
            return Step::Empty;
        };
        let (node, weight) = match nodes.node(key) {
            Some((node, w)) if node.queue == Queue::Main && node.seq == seq => (node, w),
            _ => return Step::Continue,
        };
        if node.freq > 0 {
            node.freq -= 1;
            let seq = self.bump_seq();
            node.seq = seq;
            self.main.push_back((key, seq));
            Step::Continue
        } else {
            self.main_bytes = self.main_bytes.saturating_sub(weight);
            self.main_live = self.main_live.saturating_sub(1);
            node.queue = Queue::Detached;
            Step::Victim(key)
        }
    }

    /// Drops stale slots once they outnumber the live ones, so that remove-heavy workloads that
    /// never evict do not grow the queues without bound.
    pub fn compact(&mut self, nodes: &mut impl Nodes<K>) {
        fn live<K: Copy>(q: &mut VecDeque<(K, u32)>, want: Queue, nodes: &mut impl Nodes<K>) {
            q.retain(|&(k, seq)| {
                nodes
                    .node(k)
                    .is_some_and(|(n, _)| n.queue == want && n.seq == seq)
            });
        }
        if self.small.len() > 2 * self.small_live + 64 {
            live(&mut self.small, Queue::Small, nodes);
        }
        if self.main.len() > 2 * self.main_live + 64 {
            live(&mut self.main, Queue::Main, nodes);
        }
    }

    fn bump_seq(&mut self) -> u32 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }
}

/// Outcome of popping one queue slot.
enum Step<K> {
    /// This object is evicted (already detached).
    Victim(K),
    /// A stale slot was dropped or an object got another lap; keep going.
    Continue,
    /// The queue has no slot left.
    Empty,
}

/// Fingerprints of recently evicted one-hit objects, bounded by bytes and by count.
#[derive(Default)]
struct Ghost {
    fifo: VecDeque<(u64, u64)>,
    set: HashSet<u64, BuildHasherDefault<IdHasher>>,
    bytes: u64,
}

impl Ghost {
    fn add(&mut self, fp: u64, weight: u64, max_bytes: u64, max_count: usize) {
        if self.set.insert(fp) {
            self.fifo.push_back((fp, weight));
            self.bytes += weight;
        }
        while self.bytes > max_bytes || self.fifo.len() > max_count {
            let Some((old, w)) = self.fifo.pop_front() else {
                break;
            };
            self.bytes = self.bytes.saturating_sub(w);
            self.set.remove(&old);
        }
    }

    /// Whether `fp` is a ghost; it stops being one (its slot ages out of the FIFO later).
    fn take(&mut self, fp: u64) -> bool {
        self.set.remove(&fp)
    }

    fn heap_bytes(&self) -> usize {
        self.fifo.capacity() * 16 + self.set.capacity() * 9
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    impl FifoKey for u64 {
        fn fingerprint(&self) -> u64 {
            self.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        }
    }

    /// A toy cache: key → (node, weight).
    #[derive(Default)]
    struct Toy(HashMap<u64, (FifoNode, u64)>);

    impl Nodes<u64> for Toy {
        fn node(&mut self, key: u64) -> Option<(&mut FifoNode, u64)> {
            self.0.get_mut(&key).map(|(n, w)| (n, *w))
        }
    }

    struct Cache {
        fifo: S3Fifo<u64>,
        objs: Toy,
    }

    impl Cache {
        fn new(cap: u64) -> Self {
            Cache {
                fifo: S3Fifo::new(cap),
                objs: Toy::default(),
            }
        }
        fn get(&mut self, k: u64) -> bool {
            match self.objs.0.get_mut(&k) {
                Some((n, _)) => {
                    n.touch();
                    true
                }
                None => false,
            }
        }
        fn put(&mut self, k: u64, w: u64) {
            let mut node = FifoNode::default();
            self.fifo.insert(k, &mut node, w);
            self.objs.0.insert(k, (node, w));
            while self.fifo.used() > self.fifo.capacity() {
                let Some(v) = self.fifo.evict(&mut self.objs) else {
                    break;
                };
                self.objs.0.remove(&v);
            }
        }
    }

    #[test]
    fn scan_does_not_flush_hot_set() {
        let mut c = Cache::new(100_000);
        for k in 0..40 {
            c.put(k, 1000);
            for _ in 0..3 {
                c.get(k);
            }
        }
        // One-hit sweep ten times the capacity.
        for k in 1000..2000 {
            c.put(k, 1000);
        }
        let hot = (0..40).filter(|k| c.objs.0.contains_key(k)).count();
        assert!(hot >= 36, "only {hot} of 40 hot objects survived");
        assert!(c.fifo.used() <= 100_000);
    }

    #[test]
    fn lru_like_reuse_still_works() {
        // An object evicted as one-hit and requested again enters main via the ghost.
        let mut c = Cache::new(10_000);
        c.put(1, 1000);
        // Enough newcomers to evict it, too few to age its ghost out (90% of capacity).
        for k in 100..112 {
            c.put(k, 1000);
        }
        assert!(!c.objs.0.contains_key(&1));
        c.put(1, 1000);
        assert_eq!(c.objs.0[&1].0.queue, Queue::Main);
    }

    #[test]
    fn remove_and_compact_keep_accounting() {
        let mut c = Cache::new(1_000_000);
        for k in 0..1000 {
            c.put(k, 10);
        }
        for k in 0..1000 {
            let (mut n, w) = c.objs.0.remove(&k).expect("present");
            c.fifo.remove(&mut n, w);
        }
        assert_eq!(c.fifo.used(), 0);
        assert_eq!(c.fifo.len(), 0);
        c.fifo.compact(&mut c.objs);
        assert!(c.fifo.small.is_empty());
        assert_eq!(c.fifo.evict(&mut c.objs), None);
    }

    #[test]
    fn reweigh_triggers_eviction() {
        let mut c = Cache::new(1000);
        c.put(1, 100);
        c.put(2, 100);
        let (n, _) = c.objs.0[&1];
        c.fifo.reweigh(&n, 100, 950);
        c.objs.0.get_mut(&1).expect("present").1 = 950;
        while c.fifo.used() > 1000 {
            let v = c.fifo.evict(&mut c.objs).expect("victim");
            c.objs.0.remove(&v);
        }
        assert!(c.fifo.used() <= 1000);
    }
}
