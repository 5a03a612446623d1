//! Ketama-style consistent-hash ring that maps a cache key to one origin node,
//! so each object is fetched from (and warms the cache path towards) the same
//! origin, and losing or adding a node moves only the keys that must move.
//!
//! Every node is hashed onto a 64-bit circle at many virtual points. A key is
//! hashed onto the same circle and owned by the first point clockwise from it.
//! Many points per node keep the shares even, and mean that when a node is
//! excluded its keys fall through to the *next usable point* one by one, so
//! they are spread over all remaining nodes rather than dumped on a single
//! neighbour. Exclusion is a filter at lookup time, not a rebuild, so the
//! keys return to the node the moment it is usable again.

use xxhash_rust::xxh3::xxh3_64;

/// Virtual points per node. 160 is the classic ketama figure: enough to keep
/// every node's share within a few percent of even for small pools, while the
/// ring for a few dozen nodes still fits comfortably in cache.
const POINTS_PER_NODE: usize = 160;

/// One virtual point on the circle: its position and the node that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Point {
    hash: u64,
    node: usize,
}

/// An immutable consistent-hash ring over a fixed list of nodes.
///
/// Nodes are identified by their index in the list given to [`Ring::new`].
/// Points are derived from node *names* only, so the same name always lands
/// on the same points whatever its position in the list; names should be
/// unique (e.g. `host:port`), since duplicates share points and the lower
/// index always wins them.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    /// Sorted by hash, then node, so ties resolve the same way every build.
    points: Vec<Point>,
    nodes: usize,
}

impl Ring {
    /// Builds the ring for `nodes`; node `i` of the result is `nodes[i]`.
    pub fn new(nodes: &[String]) -> Ring {
        let mut points: Vec<Point> = nodes
            .iter()
            .enumerate()
            .flat_map(|(node, name)| {
                (0..POINTS_PER_NODE).map(move |i| Point {
                    hash: xxh3_64(format!("{name}-{i}").as_bytes()),
                    node,
                })
            })
            .collect();
        points.sort_unstable();
        Ring {
            points,
            nodes: nodes.len(),
        }
    }

    /// Number of nodes the ring was built from.
    pub fn len(&self) -> usize {
        self.nodes
    }

    /// True when the ring has no nodes, so [`Ring::pick`] always returns `None`.
    pub fn is_empty(&self) -> bool {
        self.nodes == 0
    }

    /// Returns the node that owns `key`, skipping nodes for which `usable`
    /// returns false, or `None` if the ring is empty or no node is usable.
    ///
    /// Walks clockwise from the key's hash and returns the first point whose
    /// node is usable. `usable` is called at most once per node per lookup, so
    /// it may take a lock.
    pub fn pick(&self, key: &[u8], mut usable: impl FnMut(usize) -> bool) -> Option<usize> {
        let hash = xxh3_64(key);
        let start = self.points.partition_point(|p| p.hash < hash);
        // Clockwise from the key, wrapping past the top of the circle.
        let clockwise = self.points[start..].iter().chain(&self.points[..start]);

        // Remember rejected nodes so a down node (160 points) costs one
        // `usable` call, and so we can stop once every node has said no.
        // Allocated lazily: the common case is that the first point is usable.
        let mut rejected: Vec<bool> = Vec::new();
        let mut rejected_count = 0;
        for point in clockwise {
            if rejected.get(point.node).copied().unwrap_or(false) {
                continue;
            }
            if usable(point.node) {
                return Some(point.node);
            }
            if rejected.is_empty() {
                rejected = vec![false; self.nodes];
            }
            rejected[point.node] = true;
            rejected_count += 1;
            if rejected_count == self.nodes {
                break;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: usize = 10_000;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    fn keys() -> Vec<Vec<u8>> {
        (0..KEYS)
            .map(|i| format!("/static/img/{i}.jpg").into_bytes())
            .collect()
    }

    /// Owner of every key, with `down` excluded.
    fn owners(ring: &Ring, down: Option<usize>) -> Vec<usize> {
        keys()
            .iter()
            .map(|k| ring.pick(k, |n| Some(n) != down).expect("a usable node"))
            .collect()
    }

    #[test]
    fn excluding_a_node_moves_only_its_keys_and_spreads_them() {
        let ring = Ring::new(&names(4));
        let before = owners(&ring, None);
        let during = owners(&ring, Some(2));

        let mut moved_to = [0usize; 4];
        for (b, d) in before.iter().zip(&during) {
            if *b == 2 {
                assert_ne!(*d, 2);
                moved_to[*d] += 1;
            } else {
                assert_eq!(b, d, "a key not on the excluded node moved");
            }
        }
        let moved: usize = moved_to.iter().sum();
        assert!(moved > 0);
        for node in [0, 1, 3] {
            assert!(
                moved_to[node] * 100 > moved * 15,
                "node {node} got only {} of {moved} moved keys",
                moved_to[node]
            );
        }

        // Restoring the node hands back exactly what it had.
        assert_eq!(owners(&ring, None), before);
    }

    #[test]
    fn adding_a_node_moves_about_a_fifth_of_keys_all_to_it() {
        let four = owners(&Ring::new(&names(4)), None);
        let five = owners(&Ring::new(&names(5)), None);

        let mut moved = 0;
        for (a, b) in four.iter().zip(&five) {
            if a != b {
                assert_eq!(*b, 4, "a key moved between old nodes");
                moved += 1;
            }
        }
        let pct = moved * 100 / KEYS;
        assert!((12..=28).contains(&pct), "{pct}% of keys moved");
    }

    #[test]
    fn node_position_in_list_does_not_matter() {
        let names = names(4);
        let reversed: Vec<String> = names.iter().rev().cloned().collect();
        let a = owners(&Ring::new(&names), None);
        let b = owners(&Ring::new(&reversed), None);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(names[*x], reversed[*y]);
        }
    }

    #[test]
    fn distribution_is_balanced() {
        let mut counts = [0usize; 4];
        for node in owners(&Ring::new(&names(4)), None) {
            counts[node] += 1;
        }
        let mean = KEYS / 4;
        for (node, &count) in counts.iter().enumerate() {
            assert!(
                count * 4 >= mean * 3 && count * 4 <= mean * 5,
                "node {node} has {count} keys, mean {mean}: {counts:?}"
            );
        }
    }

    #[test]
    fn pick_is_deterministic() {
        let a = Ring::new(&names(3));
        let b = Ring::new(&names(3));
        assert_eq!(owners(&a, None), owners(&b, None));
    }

    #[test]
    fn single_node_owns_everything() {
        let ring = Ring::new(&names(1));
        assert!(owners(&ring, None).iter().all(|&n| n == 0));
    }

    #[test]
    fn empty_ring_returns_none() {
        let ring = Ring::new(&[]);
        assert!(ring.is_empty());
        assert_eq!(ring.len(), 0);
        assert_eq!(ring.pick(b"/a", |_| true), None);
        assert!(Ring::default().is_empty());
    }

    #[test]
    fn all_unusable_returns_none_asking_each_node_once() {
        let ring = Ring::new(&names(4));
        assert_eq!(ring.len(), 4);
        assert!(!ring.is_empty());
        let mut asked = [0usize; 4];
        let picked = ring.pick(b"/a", |n| {
            asked[n] += 1;
            false
        });
        assert_eq!(picked, None);
        assert_eq!(asked, [1, 1, 1, 1]);
    }

    #[test]
    fn only_usable_node_gets_everything() {
        let ring = Ring::new(&names(4));
        for key in keys().iter().take(500) {
            assert_eq!(ring.pick(key, |n| n == 3), Some(3));
        }
    }
}
