//! The compact in-memory index of every committed object, keyed by the key's 128-bit hash.
//!
//! One [`Entry`] per object says which version is current, where it lives (disk, memory) and
//! what it weighs, plus the per-tier S3-FIFO state. Bodies and metas are not held here (the
//! memory tier hangs off the entry), so an entry costs ~90 bytes plus, when it has no memory
//! copy, the key (a memory copy's meta holds the key: it is not stored twice).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use super::disk;
use super::memory::MemObject;
use super::meta::{ObjectMeta, alloc_cost};
use super::s3fifo::{FifoKey, FifoNode, Nodes};

/// The 128-bit xxh3 hash of a cache key; names the object's files and keys the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeyHash {
    pub hi: u64,
    pub lo: u64,
}

impl KeyHash {
    /// Hash of `key`.
    pub fn of(key: &str) -> KeyHash {
        let h = xxhash_rust::xxh3::xxh3_128(key.as_bytes());
        KeyHash {
            hi: (h >> 64) as u64,
            lo: h as u64,
        }
    }

    /// 32 lowercase hex digits, the stem of the object's file names.
    pub fn hex(&self) -> String {
        format!("{:016x}{:016x}", self.hi, self.lo)
    }

    /// Parses [`Self::hex`] back.
    pub fn from_hex(s: &str) -> Option<KeyHash> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let hi = u64::from_str_radix(&s[..16], 16).ok()?;
        let lo = u64::from_str_radix(&s[16..], 16).ok()?;
        Some(KeyHash { hi, lo })
    }

    /// The fan-out directory (0..=255) holding the object's files.
    pub fn subdir(&self) -> u8 {
        (self.hi >> 56) as u8
    }
}

impl Hash for KeyHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already uniformly distributed: one word is all a table needs.
        state.write_u64(self.lo);
    }
}

impl FifoKey for KeyHash {
    fn fingerprint(&self) -> u64 {
        self.lo
    }
}

/// Near pass-through hasher for keys that are already hashes or counters (skips SipHash on
/// the hot path).
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached by keys that are not single words; fold them in (FNV-1a).
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // A multiply spreads sequential values (write versions) into the high bits the table
        // also uses; random hashes stay random.
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Marker for "not on any disk" in [`Entry::disk`].
pub(crate) const NO_DISK: u8 = u8::MAX;

/// What the store knows about one committed object.
///
/// The full key (hash collisions are told apart by it, and purge-by-pattern lists it) is the
/// memory copy's `meta.key` when there is a memory copy, else held here; the memory copy is
/// given and taken through [`Index::set_mem`], which moves the key.
pub(crate) struct Entry {
    /// The key, when there is no memory copy.
    cold_key: Option<Box<str>>,
    /// The memory tier's copy (meta, and the chunks that are resident).
    mem: Option<Box<MemObject>>,
    /// The current committed version.
    pub version: u64,
    /// Body bytes held (sum of present chunk lengths).
    pub size: u64,
    /// Bytes charged to the disk quota, in disk blocks (0 when memory-only): see
    /// [`Entry::disk_bytes`].
    disk_blocks: u32,
    /// Memory-tier policy state.
    pub mem_node: FifoNode,
    /// Disk-tier policy state.
    pub disk_node: FifoNode,
    /// Chunk slots of the version (files `0..chunk_count` may exist).
    pub chunk_count: u32,
    /// Disk index, or [`NO_DISK`].
    pub disk: u8,
    /// Chunk 0 is stored inside the `.meta` file rather than in a chunk file.
    pub inline0: bool,
}

impl Entry {
    /// An entry for the version `meta` describes, with a memory copy or without, on `disk`
    /// ([`NO_DISK`] for none); not attached to any policy yet.
    pub fn new(
        meta: &ObjectMeta,
        mem: Option<Box<MemObject>>,
        disk: u8,
        disk_bytes: u64,
        inline0: bool,
    ) -> Entry {
        Entry {
            cold_key: mem.is_none().then(|| meta.key.as_str().into()),
            mem,
            version: meta.version,
            size: meta.held_bytes(),
            disk_blocks: disk::blocks(disk_bytes),
            mem_node: FifoNode::default(),
            disk_node: FifoNode::default(),
            chunk_count: meta.chunk_slots().len() as u32,
            disk,
            inline0,
        }
    }

    /// The object's full key.
    pub fn key(&self) -> &str {
        match (&self.mem, &self.cold_key) {
            (Some(m), _) => &m.meta.key,
            (None, Some(k)) => k,
            (None, None) => "",
        }
    }

    /// The memory copy.
    pub fn mem(&self) -> Option<&MemObject> {
        self.mem.as_deref()
    }

    /// The memory copy, to change its chunks or meta (not to remove it: see `Index::set_mem`).
    pub fn mem_mut(&mut self) -> Option<&mut MemObject> {
        self.mem.as_deref_mut()
    }

    /// Heap bytes of the key held here (none when the memory copy holds it).
    fn cold_key_bytes(&self) -> u64 {
        self.cold_key.as_ref().map_or(0, |k| alloc_cost(k.len()))
    }

    /// Bytes charged to the disk quota (0 when memory-only).
    pub fn disk_bytes(&self) -> u64 {
        disk::blocks_bytes(self.disk_blocks)
    }

    /// Changes the bytes charged to the disk quota; returns the charge as now held (whole
    /// blocks, saturating), which is what the disk policy must be charged.
    pub fn set_disk_bytes(&mut self, bytes: u64) -> u64 {
        self.disk_blocks = disk::blocks(bytes);
        self.disk_bytes()
    }

    /// The disk holding the object, if any.
    pub fn disk(&self) -> Option<u8> {
        (self.disk != NO_DISK).then_some(self.disk)
    }

    /// Weight of the memory-tier copy (0 when not resident).
    pub fn mem_weight(&self) -> u64 {
        self.mem.as_ref().map_or(0, |m| m.weight)
    }
}

type Map = HashMap<KeyHash, Entry, BuildHasherDefault<IdHasher>>;

/// Separates a key's group from the rest of it: `group\0member`. A group's members are found
/// without listing every key (the cache keeps a URL's `Vary` variants as one group).
pub const GROUP_SEPARATOR: char = '\u{0}';

/// The group a key belongs to, if it is a member of one.
fn group_of(key: &str) -> Option<KeyHash> {
    key.split_once(GROUP_SEPARATOR)
        .map(|(group, _)| KeyHash::of(group))
}

/// All committed objects.
#[derive(Default)]
pub(crate) struct Index {
    map: Map,
    /// Heap bytes of the keys held by entries without a memory copy.
    key_bytes: u64,
    /// Members of each group, by the group's hash (only groups with members are listed).
    groups: HashMap<KeyHash, Vec<KeyHash>, BuildHasherDefault<IdHasher>>,
}

impl Index {
    /// Entry of `hash`.
    pub fn get(&self, hash: &KeyHash) -> Option<&Entry> {
        self.map.get(hash)
    }

    /// Mutable entry of `hash`.
    pub fn get_mut(&mut self, hash: &KeyHash) -> Option<&mut Entry> {
        self.map.get_mut(hash)
    }

    /// Adds or replaces; returns the replaced entry.
    pub fn insert(&mut self, hash: KeyHash, entry: Entry) -> Option<Entry> {
        self.key_bytes += entry.cold_key_bytes();
        let group = group_of(entry.key());
        let old = self.map.insert(hash, entry);
        let same_key = match &old {
            Some(o) => {
                self.key_bytes -= o.cold_key_bytes();
                let same = self.map.get(&hash).is_some_and(|e| e.key() == o.key());
                if !same {
                    self.leave_group(o.key(), &hash);
                }
                same
            }
            None => false,
        };
        if let (Some(g), false) = (group, same_key) {
            self.groups.entry(g).or_default().push(hash);
        }
        old
    }

    /// Removes and returns the entry.
    pub fn remove(&mut self, hash: &KeyHash) -> Option<Entry> {
        let old = self.map.remove(hash);
        if let Some(o) = &old {
            self.key_bytes -= o.cold_key_bytes();
            self.leave_group(o.key(), hash);
        }
        old
    }

    /// Takes `hash` (whose key is `key`) out of the key's group, if it is in one.
    fn leave_group(&mut self, key: &str, hash: &KeyHash) {
        if let Some(g) = group_of(key)
            && let Some(members) = self.groups.get_mut(&g)
        {
            members.retain(|m| m != hash);
            if members.is_empty() {
                self.groups.remove(&g);
            }
        }
    }

    /// The keys of the members of group `group` (keys `group\0…`), in no particular order.
    pub fn group_keys(&self, group: &str) -> Vec<String> {
        let Some(members) = self.groups.get(&KeyHash::of(group)) else {
            return Vec::new();
        };
        members
            .iter()
            .filter_map(|h| self.map.get(h))
            .map(|e| e.key())
            // Two groups whose names share a hash: keep this one's members only.
            .filter(|k| {
                k.split_once(GROUP_SEPARATOR)
                    .is_some_and(|(g, _)| g == group)
            })
            .map(str::to_owned)
            .collect()
    }

    /// Gives the entry of `hash` a memory copy, replacing any, or takes its copy away; the key
    /// moves between the copy's meta and the entry. Returns the entry.
    pub fn set_mem(&mut self, hash: &KeyHash, mem: Option<Box<MemObject>>) -> Option<&mut Entry> {
        let e = self.map.get_mut(hash)?;
        self.key_bytes -= e.cold_key_bytes();
        match mem {
            Some(m) => {
                e.cold_key = None;
                e.mem = Some(m);
            }
            None => {
                if let Some(m) = e.mem.take() {
                    e.cold_key = Some(m.meta.key.as_str().into());
                }
            }
        }
        self.key_bytes += e.cold_key_bytes();
        Some(e)
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// All entries.
    pub fn iter(&self) -> impl Iterator<Item = (&KeyHash, &Entry)> {
        self.map.iter()
    }

    /// Approximate bytes of the index itself: table slots, control bytes and the keys it
    /// holds (allocator overhead included). Memory-tier copies are not included.
    pub fn heap_bytes(&self) -> u64 {
        let slot = size_of::<(KeyHash, Entry)>() + 1;
        // `capacity` is 7/8 of the buckets (a power of two) once the table has grown.
        let buckets = match self.map.capacity() {
            0 => 0,
            c => (c * 8 / 7).next_power_of_two(),
        };
        let groups: usize = self
            .groups
            .values()
            .map(|m| size_of::<(KeyHash, Vec<KeyHash>)>() + m.capacity() * size_of::<KeyHash>())
            .sum();
        (buckets * slot + groups) as u64 + self.key_bytes
    }
}

/// The index seen as the memory tier's policy nodes.
pub(crate) struct MemNodes<'a>(pub &'a mut Index);

impl Nodes<KeyHash> for MemNodes<'_> {
    fn node(&mut self, key: KeyHash) -> Option<(&mut FifoNode, u64)> {
        let e = self.0.map.get_mut(&key)?;
        let w = e.mem_weight();
        Some((&mut e.mem_node, w))
    }
}

/// The index seen as one disk's policy nodes.
pub(crate) struct DiskNodes<'a>(pub &'a mut Index);

impl Nodes<KeyHash> for DiskNodes<'_> {
    fn node(&mut self, key: KeyHash) -> Option<(&mut FifoNode, u64)> {
        let e = self.0.map.get_mut(&key)?;
        let bytes = e.disk_bytes();
        Some((&mut e.disk_node, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let h = KeyHash::of("example.com/a/b.jpg");
        let s = h.hex();
        assert_eq!(s.len(), 32);
        assert_eq!(KeyHash::from_hex(&s), Some(h));
        assert_eq!(KeyHash::from_hex("zz"), None);
        assert_eq!(u8::from_str_radix(&s[..2], 16).ok(), Some(h.subdir()));
    }

    /// An entry whose key is `key`, memory-less, on no disk.
    fn entry(key: &str) -> Entry {
        let meta = ObjectMeta::new(
            super::super::meta::NewObject {
                key: key.to_owned(),
                ..Default::default()
            },
            1,
            1024,
            None,
        );
        Entry::new(&meta, None, NO_DISK, 0, false)
    }

    #[test]
    fn group_members_are_listed_without_a_scan_and_leave_with_their_entries() {
        let mut ix = Index::default();
        for k in ["h/a", "h/a\0gzip", "h/a\0br", "h/ab\0gzip", "h/b"] {
            ix.insert(KeyHash::of(k), entry(k));
        }
        // Replacing a member does not list it twice.
        ix.insert(KeyHash::of("h/a\0br"), entry("h/a\0br"));
        let mut got = ix.group_keys("h/a");
        got.sort();
        assert_eq!(got, ["h/a\0br", "h/a\0gzip"]);
        assert_eq!(ix.group_keys("h/b"), Vec::<String>::new());
        ix.remove(&KeyHash::of("h/a\0gzip"));
        assert_eq!(ix.group_keys("h/a"), ["h/a\0br"]);
        ix.remove(&KeyHash::of("h/a\0br"));
        assert!(ix.group_keys("h/a").is_empty());
        assert!(
            !ix.groups.contains_key(&KeyHash::of("h/a")),
            "empty groups are dropped"
        );
        assert_eq!(ix.group_keys("h/ab"), ["h/ab\0gzip"]);
        // Another key under the same hash (a collision) replaces the entry and its group.
        let h = KeyHash::of("h/ab\0gzip");
        ix.insert(h, entry("h/c\0x"));
        assert!(!ix.groups.contains_key(&KeyHash::of("h/ab")));
        assert_eq!(ix.group_keys("h/c"), ["h/c\0x"]);
        ix.remove(&h);
        assert!(ix.groups.is_empty());
    }

    /// Random inserts, replacements and removals (xorshift, fixed seed): the groups always
    /// list exactly the members a scan of every key finds.
    #[test]
    fn groups_agree_with_a_full_scan_under_random_churn() {
        let mut ix = Index::default();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let groups = ["h/a", "h/b", "h/ab", "h/a\0x"];
        for step in 0..5_000 {
            let g = groups[(next() % 4) as usize];
            let key = match next() % 3 {
                0 => g.to_owned(),
                _ => format!("{g}\0v{}", next() % 5),
            };
            // Now and then a key lands under another key's hash (a collision).
            let hash = if next() % 50 == 0 {
                KeyHash::of(&format!("h/b\0v{}", next() % 5))
            } else {
                KeyHash::of(&key)
            };
            if next() % 3 == 0 {
                if ix.get(&hash).is_some_and(|e| e.key() == key) {
                    ix.remove(&hash);
                }
            } else {
                ix.insert(hash, entry(&key));
            }
            for g in ["h/a", "h/b", "h/ab"] {
                let mut got = ix.group_keys(g);
                got.sort();
                let mut want: Vec<String> = ix
                    .iter()
                    .map(|(_, e)| e.key().to_owned())
                    .filter(|k| k.split_once(GROUP_SEPARATOR).is_some_and(|(p, _)| p == g))
                    .collect();
                want.sort();
                assert_eq!(got, want, "step {step}, group {g}");
            }
        }
        let listed: usize = ix.groups.values().map(Vec::len).sum();
        let members = ix
            .iter()
            .filter(|(_, e)| group_of(e.key()).is_some())
            .count();
        assert_eq!(listed, members, "no stale members left in the groups");
    }

    #[test]
    fn entry_is_compact() {
        // The per-object budget is 200 bytes including the key; keep the fixed part small.
        assert!(
            size_of::<(KeyHash, Entry)>() <= 80,
            "{}",
            size_of::<(KeyHash, Entry)>()
        );
    }
}
