//! Stored response header fields, kept in one compact shared allocation.
//!
//! A cached object keeps its header fields for as long as it is stored, so their in-memory
//! form is compact: every pair lives in one `Arc<[u8]>` (none at all when there are no
//! fields), the names of common response fields are one-byte codes, and values that are HTTP
//! dates in the preferred format (`Date`, `Last-Modified`, `Expires`...: 29 bytes each) are
//! kept as their seconds. Pairs come back exactly as they were given, byte for byte and in
//! order; the encoding is canonical, so equal lists have equal bytes. Cloning shares the
//! allocation.
//!
//! Encoding of one pair (in memory only; the `.meta` file format is in `meta`): a first byte
//! whose low 7 bits are a name code `1..=KNOWN.len()`, or `0` followed by the name's length
//! (LEB128) and bytes, and whose high bit says the value is a date; then the value's length
//! (LEB128) and bytes, or for a date its seconds since the epoch (LEB128).

use std::fmt::Write as _;
use std::ops::{Deref, Range};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

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

/// High bit of a pair's first byte: the value is a date kept as seconds.
const DATE_FLAG: u8 = 0x80;
/// Length of an IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`.
const DATE_LEN: usize = 29;
/// 10000-01-01T00:00:00Z in seconds: only earlier dates are formatted.
const DATE_END: u64 = 253_402_300_800;

/// The code of a known name (index + 1).
fn code_of(name: &str) -> Option<u8> {
    KNOWN.iter().position(|k| *k == name).map(|i| i as u8 + 1)
}

/// Appends `n` as LEB128 (7 bits a byte, low first, high bit = more).
fn put_varint(buf: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        buf.push(n as u8 | 0x80);
        n >>= 7;
    }
    buf.push(n as u8);
}

/// `value` as seconds since the epoch, when it is an IMF-fixdate that formats back to exactly
/// these bytes (so the value can be kept as a number and given back unchanged).
fn compact_date(value: &[u8]) -> Option<u64> {
    if value.len() != DATE_LEN {
        return None;
    }
    let t = httpdate::parse_http_date(std::str::from_utf8(value).ok()?).ok()?;
    let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs();
    (format_date(secs)? == *value).then_some(secs)
}

/// The IMF-fixdate of `secs` seconds since the epoch (before the year 10000).
fn format_date(secs: u64) -> Option<[u8; DATE_LEN]> {
    /// Collects exactly one date's bytes.
    struct Out([u8; DATE_LEN], usize);
    impl std::fmt::Write for Out {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let end = self.1 + s.len();
            self.0
                .get_mut(self.1..end)
                .ok_or(std::fmt::Error)?
                .copy_from_slice(s.as_bytes());
            self.1 = end;
            Ok(())
        }
    }
    if secs >= DATE_END {
        return None;
    }
    let date = httpdate::HttpDate::from(UNIX_EPOCH + Duration::from_secs(secs));
    let mut out = Out([0; DATE_LEN], 0);
    write!(out, "{date}").ok()?;
    (out.1 == DATE_LEN).then_some(out.0)
}

/// A field value as stored: bytes of the list, or a date formatted back from its seconds.
/// Derefs to the value's bytes.
#[derive(Clone, Copy)]
pub enum Value<'a> {
    /// The value's bytes, borrowed from the list.
    Bytes(&'a [u8]),
    /// A date value, formatted.
    Date([u8; DATE_LEN]),
}

impl Deref for Value<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Value::Bytes(b) => b,
            Value::Date(d) => d,
        }
    }
}

impl AsRef<[u8]> for Value<'_> {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for Value<'_> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Value<'_> {}

impl std::fmt::Debug for Value<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        String::from_utf8_lossy(self).fmt(f)
    }
}

/// Where a value is, for [`Iter::next_raw`].
enum RawValue {
    /// These bytes of the list.
    Span(Range<usize>),
    /// A date, formatted.
    Date([u8; DATE_LEN]),
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

    /// The pairs with each value as a [`Bytes`] sharing this list's allocation (for building
    /// an HTTP header map): no copy and one small allocation for the whole list, plus one per
    /// date value.
    pub fn shared_values(&self) -> impl Iterator<Item = (&str, Bytes)> + '_ {
        let whole = self
            .0
            .as_ref()
            .map_or_else(Bytes::new, |a| Bytes::from_owner(Arc::clone(a)));
        let mut it = self.iter();
        std::iter::from_fn(move || {
            let (name, value) = it.next_raw()?;
            let value = match value {
                RawValue::Span(r) => whole.slice(r),
                RawValue::Date(d) => Bytes::copy_from_slice(&d),
            };
            Some((name, value))
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
    pub fn get(&self, name: &str) -> Option<Value<'_>> {
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
    type Item = (&'a str, Value<'a>);
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
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
        let date = compact_date(value);
        let flag = if date.is_some() { DATE_FLAG } else { 0 };
        match code_of(name) {
            Some(c) => self.buf.push(c | flag),
            None => {
                self.buf.push(flag);
                put_varint(&mut self.buf, name.len() as u64);
                self.buf.extend_from_slice(name.as_bytes());
            }
        }
        match date {
            Some(secs) => put_varint(&mut self.buf, secs),
            None => {
                put_varint(&mut self.buf, value.len() as u64);
                self.buf.extend_from_slice(value);
            }
        }
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

    fn varint(&mut self) -> Option<u64> {
        let mut n = 0u64;
        let mut shift = 0;
        loop {
            let b = self.byte()?;
            if shift >= u64::BITS {
                return None;
            }
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(n);
            }
            shift += 7;
        }
    }

    fn span(&mut self) -> Option<Range<usize>> {
        let n = usize::try_from(self.varint()?).ok()?;
        let start = self.pos;
        let end = start.checked_add(n).filter(|&e| e <= self.buf.len())?;
        self.pos = end;
        Some(start..end)
    }

    /// The next name and where its value is. The encoding is only ever produced by
    /// [`HeadersBuilder`]; anything malformed ends the iteration.
    fn next_raw(&mut self) -> Option<(&'a str, RawValue)> {
        let buf = self.buf;
        let first = self.byte()?;
        let name = match first & !DATE_FLAG {
            0 => {
                let r = self.span()?;
                std::str::from_utf8(&buf[r]).ok()?
            }
            c => *KNOWN.get(usize::from(c) - 1)?,
        };
        let value = if first & DATE_FLAG != 0 {
            RawValue::Date(format_date(self.varint()?)?)
        } else {
            RawValue::Span(self.span()?)
        };
        Some((name, value))
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, Value<'a>);
    fn next(&mut self) -> Option<Self::Item> {
        let buf = self.buf;
        let (name, value) = self.next_raw()?;
        let value = match value {
            RawValue::Span(r) => Value::Bytes(&buf[r]),
            RawValue::Date(d) => Value::Date(d),
        };
        Some((name, value))
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
        assert_eq!(h.get("content-type").as_deref(), Some(&b"text/plain"[..]));
        assert_eq!(h.get("SET-COOKIE").as_deref(), Some(&b"a=1"[..]));
        assert!(h.get("nope").is_none());
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
    fn preferred_dates_are_kept_as_seconds_and_given_back_exactly() {
        let dates = [
            "Wed, 25 Nov 2026 17:30:25 GMT",
            "Thu, 01 Jan 1970 00:00:00 GMT",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT",
        ];
        for d in dates {
            let h = Headers::from_pairs([("last-modified", d), ("x-when", d)]);
            assert_eq!(
                pairs(&h),
                vec![
                    ("last-modified".to_owned(), d.as_bytes().to_vec()),
                    ("x-when".to_owned(), d.as_bytes().to_vec())
                ],
                "{d}"
            );
            // Code and at most 6 bytes of seconds; flag, name and seconds.
            assert!(h.encoded_len() <= 7 + 8 + 6, "{d}: {}", h.encoded_len());
            let shared: Vec<Vec<u8>> = h.shared_values().map(|(_, b)| b.to_vec()).collect();
            assert_eq!(shared, vec![d.as_bytes().to_vec(); 2]);
            assert!(matches!(h.get("x-when"), Some(Value::Date(_))));
        }
    }

    #[test]
    fn other_date_spellings_are_kept_as_bytes() {
        let mut odd: Vec<Vec<u8>> = [
            "Wed, 25 Nov 2026 17:30:25 gmt",     // not the preferred spelling
            "Mon, 25 Nov 2026 17:30:25 GMT",     // wrong weekday
            "Wednesday, 25-Nov-26 17:30:25 GMT", // RFC 850
            "Wed Nov 25 17:30:25 2026",          // asctime
            "Sat, 31 Feb 2026 00:00:00 GMT",     // no such day
            "Wed, 31 Dec 1969 23:59:59 GMT",     // before the epoch
            "Wed, 25 Nov 2026 17:30:25 GMT ",    // trailing space
            "0",                                 // Expires: 0
        ]
        .iter()
        .map(|d| d.as_bytes().to_vec())
        .collect();
        odd.push([&[0xff, 0xfe][..], b", 25 Nov 2026 17:30:25 GMT"].concat()); // not UTF-8
        for value in odd {
            let h = Headers::from_pairs([("expires", value.as_slice())]);
            let d = String::from_utf8_lossy(&value);
            assert_eq!(h.encoded_len(), 1 + 1 + value.len(), "{d}");
            assert_eq!(
                pairs(&h),
                vec![("expires".to_owned(), value.clone())],
                "{d}"
            );
            assert!(matches!(h.get("expires"), Some(Value::Bytes(_))));
        }
    }

    #[test]
    fn every_known_name_is_lowercase_and_unique() {
        assert!(KNOWN.len() < usize::from(DATE_FLAG));
        for (i, k) in KNOWN.iter().enumerate() {
            assert_eq!(k.to_ascii_lowercase(), *k);
            assert_eq!(code_of(k), Some(i as u8 + 1));
        }
    }
}
