//! Partial content (RFC 9111 §3.3–3.4): when a miss forwards the client's `Range`, which
//! validator a completing request carries, and when two partial responses may be combined.
//!
//! Pure functions over header maps; the proxy does the fetching and the store the keeping.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, header};

use super::conditional::stored_etag;
use super::fields::{date_field, last_modified};
use crate::cache::range::{self, RangeRequest};

/// Whether a miss should ask the origin for just the client's range instead of the whole
/// object. Only a GET naming exactly one range does; a range that starts at 0 and runs to
/// the end (`bytes=0-`, how players open a stream) is the whole object, and several ranges
/// are fetched whole so the fill can be shared with other clients.
pub fn forwards_range(method: &Method, req: &HeaderMap) -> bool {
    if *method != Method::GET {
        return false;
    }
    let mut values = req.get_all(header::RANGE).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return false;
    };
    let Ok(text) = v.to_str() else {
        return false;
    };
    let Some(spec) = text.trim().strip_prefix("bytes=") else {
        return false;
    };
    let parts: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    match parts.as_slice() {
        [one] => {
            // Syntax check against a huge length: only the shape matters here.
            let whole = one
                .split_once('-')
                .is_some_and(|(a, b)| a.trim() == "0" && b.trim().is_empty());
            !whole && matches!(range::parse(Some(text), u64::MAX), RangeRequest::Ranges(_))
        }
        _ => false,
    }
}

/// The `If-Range` value for a request that completes a stored partial object: its strong
/// `ETag`, else its `Last-Modified` when that is strong (RFC 9110 §13.1.5 allows only strong
/// validators). None when the stored response has no strong validator, in which case it
/// cannot be completed safely.
pub fn if_range_for(stored: &HeaderMap) -> Option<HeaderValue> {
    if let Some(tag) = stored_etag(stored) {
        return (!tag.weak)
            .then(|| stored.get(header::ETAG).cloned())
            .flatten();
    }
    strong_last_modified(stored)?;
    stored.get(header::LAST_MODIFIED).cloned()
}

/// Whether a new partial response and a stored one are parts of the same representation
/// (RFC 9111 §3.4): the same strong `ETag`, or — when neither has an `ETag` — the same
/// strong `Last-Modified`. Anything else is never combined: the bytes could mix versions.
pub fn combinable(stored: &HeaderMap, new: &HeaderMap) -> bool {
    match (stored_etag(stored), stored_etag(new)) {
        (Some(a), Some(b)) => a.strong_eq(&b),
        (None, None) => match (strong_last_modified(stored), strong_last_modified(new)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        },
        _ => false,
    }
}

/// `Last-Modified` when it is a strong validator: at least 60 s before the response's `Date`
/// (RFC 9110 §8.8.2.2).
fn strong_last_modified(h: &HeaderMap) -> Option<std::time::SystemTime> {
    let modified = last_modified(h)?;
    let date = date_field(h, &header::DATE).valid()?;
    date.duration_since(modified)
        .is_ok_and(|gap| gap >= Duration::from_secs(60))
        .then_some(modified)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(n.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        m
    }

    const DATE: &str = "Wed, 25 Nov 2026 12:00:00 GMT";
    const OLD: &str = "Wed, 25 Nov 2026 10:00:00 GMT";
    const RECENT: &str = "Wed, 25 Nov 2026 11:59:30 GMT";

    #[test]
    fn rfc9111_3_3_which_misses_forward_the_range() {
        let cases: &[(&str, &[&str], bool)] = &[
            ("GET", &["bytes=-5"], true),
            ("GET", &["bytes=100-199"], true),
            ("GET", &["bytes=5-"], true),
            ("GET", &["bytes=0-"], false),
            ("GET", &["bytes=0-0"], true),
            ("GET", &["bytes=0-1,5-9"], false),
            ("GET", &["bytes=9-1"], false),
            ("GET", &["items=0-1"], false),
            ("GET", &["bytes=1-2", "bytes=3-4"], false),
            ("GET", &[], false),
            ("HEAD", &["bytes=1-2"], false),
        ];
        for (method, ranges, want) in cases {
            let mut m = HeaderMap::new();
            for r in *ranges {
                m.append(header::RANGE, HeaderValue::from_str(r).expect("value"));
            }
            let method = Method::from_bytes(method.as_bytes()).expect("method");
            assert_eq!(forwards_range(&method, &m), *want, "{method} {ranges:?}");
        }
    }

    #[test]
    fn rfc9110_13_1_5_if_range_needs_a_strong_validator() {
        let strong = h(&[("etag", "\"v1\""), ("date", DATE)]);
        assert_eq!(
            if_range_for(&strong).as_ref().map(|v| v.as_bytes()),
            Some(&b"\"v1\""[..])
        );
        assert_eq!(if_range_for(&h(&[("etag", "W/\"v1\"")])), None);
        let lm = h(&[("last-modified", OLD), ("date", DATE)]);
        assert_eq!(
            if_range_for(&lm).as_ref().map(|v| v.as_bytes()),
            Some(OLD.as_bytes())
        );
        // Modified within a minute of Date: the date may name two versions.
        assert_eq!(
            if_range_for(&h(&[("last-modified", RECENT), ("date", DATE)])),
            None
        );
        assert_eq!(if_range_for(&HeaderMap::new()), None);
    }

    #[test]
    fn rfc9111_3_4_only_the_same_strong_validator_combines() {
        type Fields<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Fields, Fields, bool)] = &[
            (&[("etag", "\"a\"")], &[("etag", "\"a\"")], true),
            (&[("etag", "\"a\"")], &[("etag", "\"b\"")], false),
            (&[("etag", "W/\"a\"")], &[("etag", "W/\"a\"")], false),
            (&[("etag", "\"a\"")], &[], false),
            (&[], &[], false),
            (
                &[("last-modified", OLD), ("date", DATE)],
                &[("last-modified", OLD), ("date", DATE)],
                true,
            ),
            (
                &[("last-modified", OLD), ("date", DATE)],
                &[("last-modified", RECENT), ("date", DATE)],
                false,
            ),
            (
                &[("last-modified", RECENT), ("date", DATE)],
                &[("last-modified", RECENT), ("date", DATE)],
                false,
            ),
        ];
        for (stored, new, want) in cases {
            assert_eq!(
                combinable(&h(stored), &h(new)),
                *want,
                "{stored:?} + {new:?}"
            );
        }
    }
}
