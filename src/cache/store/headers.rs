//! Stored response header fields, kept in one compact shared allocation.
//!
//! A cached object keeps its header fields for as long as it is stored, so their in-memory
//! form is compact: every pair lives in one `Arc<[u8]>` (none at all when there are no
//! fields), and the names of common response fields are one-byte codes. Pairs come back
//! exactly as they were given, in order; the encoding is canonical, so equal lists have
//! equal bytes. Cloning shares the allocation.
//!
//! Encoding of one pair (in memory only; the `.meta` file format is in `meta`): a name code
//! `1..=KNOWN.len()`, or `0` followed by the name's length (LEB128) and bytes; then the
//! value's length (LEB128) and bytes.

use std::sync::Arc;

use bytes::Bytes;

/// Lowercase names of common response header fields; a name equal to one of these is
/// stored as its index + 1. The table is never written to disk, so it may change freely.
const KNOWN: [&str; 60] = [
    "date",
    "server",
    "content-type",
    "content-length",
    "last-modified",
    "etag",
    "expires",
    "cache-control",
    "accept-ranges",
    "vary",
    "content-encoding",
    "age",
    "content-language",
    "content-location",
    "content-disposition",
    "content-range",
    "content-security-policy",
    "link",
    "location",
    "via",
    "pragma",
    "warning",
    "allow",
    "retry-after",
    "set-cookie",
    "www-authenticate",
    "alt-svc",
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-headers",
    "access-control-allow-methods",
    "access-control-expose-headers",
    "access-control-max-age",
    "cross-origin-resource-policy",
    "cross-origin-opener-policy",
    "cross-origin-embedder-policy",
    "strict-transport-security",
    "referrer-policy",
    "permissions-policy",
    "timing-allow-origin",
    "server-timing",
    "x-content-type-options",
    "x-frame-options",
    "x-xss-protection",
    "x-powered-by",
    "x-robots-tag",
    "x-ua-compatible",
    "x-request-id",
    "x-cache",
    "x-cache-hits",
    "x-served-by",
    "x-amz-request-id",
    "x-amz-id-2",
    "x-amz-version-id",
    "x-amz-server-side-encryption",
    "surrogate-key",
    "surrogate-control",
    "cdn-cache-control",
    "nel",
    "report-to",
];

/// The code of a known name (index + 1).
fn code_of(name: &str) -> Option<u8> {
    KNOWN.iter().position(|k| *k == name).map(|i| i as u8 + 1)
}

/// Appends `n` as LEB128 (7 bits a byte, low first, high bit = more).
fn put_len(buf: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        buf.push(n as u8 | 0x80);
        n >>= 7;
    }
    buf.push(n as u8);
}

/// The response header fields of a stored object, in order, values as raw bytes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(Option<Arc<[u8]>>);

impl Headers {
    /// No fields.
    pub fn new() -> Headers {
        Headers(None)
    }

    /// The fields of `pairs`, in order.
    pub fn from_pairs<N, V>(pairs: impl IntoIterator<Item = (N, V)>) -> Headers
    where
        N: AsRef<str>,
        V: AsRef<[u8]>,
    {
        let mut b = HeadersBuilder::default();
        for (n, v) in pairs {
            b.push(n.as_ref(), v.as_ref());
        }
        b.finish()
    }

    /// The `(name, value)` pairs, in order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            buf: self.0.as_deref().unwrap_or(&[]),
            pos: 0,
        }
    }

    /// The pairs with each value as a [`Bytes`] sharing this list's allocation: no copy, and
    /// one small allocation for the whole list (for building an HTTP header map).
    pub fn shared_values(&self) -> impl Iterator<Item = (&str, Bytes)> + '_ {
        let whole = self
            .0
            .as_ref()
            .map_or_else(Bytes::new, |a| Bytes::from_owner(Arc::clone(a)));
        let mut it = self.iter();
        std::iter::from_fn(move || {
            let (name, value) = it.next_span()?;
            Some((name, whole.slice(value)))
        })
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The value of the first field named `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The pairs as owned strings and byte vectors.
    pub fn to_vec(&self) -> Vec<(String, Vec<u8>)> {
        self.iter()
            .map(|(n, v)| (n.to_owned(), v.to_vec()))
            .collect()
    }

    /// Bytes of the encoded list (0 when empty).
    pub fn encoded_len(&self) -> usize {
        self.0.as_ref().map_or(0, |a| a.len())
    }

    /// Bytes this list's allocation requests from the allocator: the encoded pairs plus the
    /// `Arc`'s two counters (0 when empty).
    pub fn heap_bytes(&self) -> usize {
        self.0
            .as_ref()
            .map_or(0, |a| a.len() + 2 * size_of::<usize>())
    }
}

impl<N: AsRef<str>, V: AsRef<[u8]>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Headers {
        Headers::from_pairs(iter)
    }
}

impl From<Vec<(String, Vec<u8>)>> for Headers {
    fn from(v: Vec<(String, Vec<u8>)>) -> Headers {
        Headers::from_pairs(v)
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a [u8]);
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.iter()
                    .map(|(n, v)| (n, String::from_utf8_lossy(v).into_owned())),
            )
            .finish()
    }
}

/// Builds a [`Headers`] one pair at a time (when the pairs come from a fallible decoder).
#[derive(Default)]
pub struct HeadersBuilder {
    buf: Vec<u8>,
}

impl HeadersBuilder {
    /// A builder expecting about `bytes` bytes of names and values.
    pub fn with_capacity(bytes: usize) -> HeadersBuilder {
        HeadersBuilder {
            buf: Vec::with_capacity(bytes),
        }
    }

    /// Appends one field.
    pub fn push(&mut self, name: &str, value: &[u8]) {
        match code_of(name) {
            Some(c) => self.buf.push(c),
            None => {
                self.buf.push(0);
                put_len(&mut self.buf, name.len());
                self.buf.extend_from_slice(name.as_bytes());
            }
        }
        put_len(&mut self.buf, value.len());
        self.buf.extend_from_slice(value);
    }

    /// The list, in one exact-size allocation.
    pub fn finish(self) -> Headers {
        if self.buf.is_empty() {
            Headers(None)
        } else {
            Headers(Some(Arc::from(self.buf.as_slice())))
        }
    }
}

/// Iterator over the `(name, value)` pairs of a [`Headers`].
pub struct Iter<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Iter<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn varint(&mut self) -> Option<usize> {
        let mut n = 0usize;
        let mut shift = 0;
        loop {
            let b = self.byte()?;
            if shift >= usize::BITS {
                return None;
            }
            n |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(n);
            }
            shift += 7;
        }
    }

    fn span(&mut self) -> Option<std::ops::Range<usize>> {
        let n = self.varint()?;
        let start = self.pos;
        let end = start.checked_add(n).filter(|&e| e <= self.buf.len())?;
        self.pos = end;
        Some(start..end)
    }

    /// The next name and the position of its value in the encoded bytes. The encoding is
    /// only ever produced by [`HeadersBuilder`]; anything malformed ends the iteration.
    fn next_span(&mut self) -> Option<(&'a str, std::ops::Range<usize>)> {
        let buf = self.buf;
        let name = match self.byte()? {
            0 => {
                let r = self.span()?;
                std::str::from_utf8(&buf[r]).ok()?
            }
            c => *KNOWN.get(usize::from(c) - 1)?,
        };
        let value = self.span()?;
        Some((name, value))
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let buf = self.buf;
        self.next_span().map(|(n, r)| (n, &buf[r]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(h: &Headers) -> Vec<(String, Vec<u8>)> {
        h.to_vec()
    }

    #[test]
    fn round_trip_keeps_order_and_bytes() {
        let v: Vec<(String, Vec<u8>)> = vec![
            ("server".into(), b"nginx/1.22.1".to_vec()),
            ("date".into(), b"Wed, 25 Nov 2026 17:30:25 GMT".to_vec()),
            ("x-custom".into(), b"a".to_vec()),
            ("Content-Type".into(), b"text/plain".to_vec()), // not lowercase: kept as is
            ("set-cookie".into(), b"a=1".to_vec()),
            ("set-cookie".into(), b"b=2".to_vec()),
        ];
        let h = Headers::from(v.clone());
        assert_eq!(pairs(&h), v);
        assert_eq!(h.len(), 6);
        assert!(!h.is_empty());
        assert_eq!(h.get("content-type"), Some(&b"text/plain"[..]));
        assert_eq!(h.get("SET-COOKIE"), Some(&b"a=1"[..]));
        assert_eq!(h.get("nope"), None);
        // Known names cost one byte.
        let known = Headers::from_pairs([("etag", "\"x\"")]);
        assert_eq!(known.encoded_len(), 1 + 1 + 3);
    }

    #[test]
    fn empty_has_no_allocation() {
        let h = Headers::new();
        assert!(h.is_empty());
        assert_eq!(h.len(), 0);
        assert_eq!(h.iter().next(), None);
        assert_eq!(h.heap_bytes(), 0);
        assert_eq!(Headers::from_pairs(Vec::<(String, Vec<u8>)>::new()), h);
        assert_eq!(Headers::default(), h);
        assert_eq!(h.shared_values().count(), 0);
    }

    #[test]
    fn odd_bytes_and_empty_parts_survive() {
        let all: Vec<u8> = (0..=255).collect();
        let v: Vec<(String, Vec<u8>)> = vec![
            ("x-bin".into(), all.clone()),
            ("x-empty".into(), Vec::new()),
            (String::new(), b"no name".to_vec()),
            ("ünïcödé".into(), vec![0xff, 0x00, 0x80]),
            ("date".into(), Vec::new()),
        ];
        let h = Headers::from(v.clone());
        assert_eq!(pairs(&h), v);
        let shared: Vec<(String, Vec<u8>)> = h
            .shared_values()
            .map(|(n, b)| (n.to_owned(), b.to_vec()))
            .collect();
        assert_eq!(shared, v);
    }

    #[test]
    fn long_names_and_values() {
        let name = "x-".to_owned() + &"n".repeat(70_000);
        let value = vec![b'v'; 300_000];
        let v = vec![
            (name.clone(), value.clone()),
            ("age".to_owned(), b"1".to_vec()),
        ];
        let h = Headers::from(v.clone());
        assert_eq!(pairs(&h), v);
        assert_eq!(
            h.encoded_len(),
            1 + 3 + name.len() + 3 + value.len() + 1 + 1 + 1
        );
    }

    #[test]
    fn many_headers() {
        let v: Vec<(String, Vec<u8>)> = (0..1000)
            .map(|i| {
                let name = if i % 3 == 0 {
                    KNOWN[i % KNOWN.len()].to_owned()
                } else {
                    format!("x-h{i}")
                };
                (name, format!("value {i}").into_bytes())
            })
            .collect();
        let h: Headers = v.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
        assert_eq!(h.len(), 1000);
        assert_eq!(pairs(&h), v);
    }

    #[test]
    fn equal_lists_compare_equal_and_clones_share() {
        let a = Headers::from_pairs([("date", "x"), ("x-a", "1")]);
        let b = Headers::from_pairs([
            ("date".to_owned(), b"x".to_vec()),
            ("x-a".into(), b"1".to_vec()),
        ]);
        assert_eq!(a, b);
        assert_ne!(a, Headers::from_pairs([("date", "x")]));
        let c = a.clone();
        assert_eq!(c, a);
        assert!(matches!((&a.0, &c.0), (Some(x), Some(y)) if Arc::ptr_eq(x, y)));
        assert_eq!(format!("{a:?}"), r#"[("date", "x"), ("x-a", "1")]"#);
    }

    #[test]
    fn builder_matches_from_pairs() {
        let mut b = HeadersBuilder::with_capacity(16);
        b.push("cache-control", b"max-age=60");
        b.push("x-y", b"z");
        assert_eq!(
            b.finish(),
            Headers::from_pairs([("cache-control", "max-age=60"), ("x-y", "z")])
        );
    }

    #[test]
    fn malformed_encoding_ends_iteration_without_panic() {
        for bad in [
            &[0x00][..],             // custom name without a length
            &[0x00, 0x05, b'a'][..], // name longer than the rest
            &[200, 0x00][..],        // unknown code
            &[0x01, 0x85][..],       // unfinished length
            &[
                0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ][..],
            &[0x00, 0x01, 0xff, 0x00][..], // name not UTF-8
        ] {
            let h = Headers(Some(Arc::from(bad)));
            assert_eq!(h.iter().count(), 0, "{bad:?}");
        }
    }

    #[test]
    fn every_known_name_is_lowercase_and_unique() {
        for (i, k) in KNOWN.iter().enumerate() {
            assert_eq!(k.to_ascii_lowercase(), *k);
            assert_eq!(code_of(k), Some(i as u8 + 1));
        }
    }
}
