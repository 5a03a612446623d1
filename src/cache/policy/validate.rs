//! Validating a stored response with the origin (RFC 9111 §4.3): building the conditional
//! request and freshening the stored response with a `304 Not Modified`.
//!
//! Engine flow: `conditional_request_headers` → send → on 304, check
//! [`not_modified_applies`], then [`freshen_with_304`] and reset the entry's `request_time` /
//! `response_time` to those of the revalidation exchange; on 200, replace the entry.

use http::{HeaderMap, HeaderName, HeaderValue, header};

use super::conditional::stored_etag;
use super::fields::{connection_named_fields, is_hop_by_hop, last_modified, trim_ows};
use super::store::strip_unstorable_headers;
use super::vary::vary_fields;

/// The validators to send when revalidating `stored` (RFC 9111 §4.3.1): `If-None-Match`
/// from `ETag` and `If-Modified-Since` from `Last-Modified`.
///
/// The `ETag` is copied as received (even if not strictly well-formed: the origin minted it
/// and is the one comparing). `Last-Modified` is copied verbatim only when it is a valid
/// date. `Date` is never used as a stand-in for `Last-Modified`: it says when the response
/// was generated, not when the representation changed, so the origin could wrongly answer
/// 304. The caller adds these to the forwarded request in place of the client's own
/// validators (the client's conditional is answered by the cache afterwards).
pub fn conditional_request_headers(stored: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    if let Some(value) = stored.get(header::ETAG).and_then(trimmed) {
        out.insert(header::IF_NONE_MATCH, value);
    }
    if last_modified(stored).is_some()
        && let Some(value) = stored.get(header::LAST_MODIFIED).and_then(trimmed)
    {
        out.insert(header::IF_MODIFIED_SINCE, value);
    }
    out
}

/// The value without surrounding whitespace, `None` if that leaves nothing.
fn trimmed(value: &HeaderValue) -> Option<HeaderValue> {
    let text = std::str::from_utf8(value.as_bytes()).ok()?;
    let text = trim_ows(text);
    if text.is_empty() {
        return None;
    }
    HeaderValue::from_str(text).ok()
}

/// Does a 304 refer to this stored response (RFC 9111 §4.3.4)?
///
/// - a strong `ETag` in the 304 must equal the stored `ETag` strongly;
/// - a weak one must match weakly;
/// - without `ETag`, a `Last-Modified` must equal the stored one;
/// - a 304 with no validator at all is accepted. §4.3.4 would only accept it for a stored
///   response without validators, but this function is meant for answers to our own
///   conditional request, built from this very response, and many origins omit validators
///   from 304s. Refusing would turn every such revalidation into a full refetch.
pub fn not_modified_applies(stored: &HeaderMap, not_modified: &HeaderMap) -> bool {
    if not_modified.contains_key(header::ETAG) {
        return match (stored_etag(not_modified), stored_etag(stored)) {
            (Some(new), Some(old)) if !new.weak => new.strong_eq(&old),
            (Some(new), Some(old)) => new.weak_eq(&old),
            _ => false,
        };
    }
    if not_modified.contains_key(header::LAST_MODIFIED) {
        return match (last_modified(not_modified), last_modified(stored)) {
            (Some(new), Some(old)) => new == old,
            _ => false,
        };
    }
    true
}

/// What [`freshen_with_304`] changed that the caller must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreshenReport {
    /// The stored `Vary` changed: the entry's variant key must be recomputed (or the entry
    /// dropped), since it may now select on different request fields.
    pub vary_changed: bool,
}

/// Fields a 304 never overwrites in the stored response (RFC 9111 §3.2):
/// - `Content-Length`: a 304 has no content, so its value (if any) is not ours;
/// - `Content-Encoding` and `Content-Range`: the stored bytes were produced under the stored
///   values; §3.2 allows keeping fields needed for the stored response's integrity;
/// - `Set-Cookie`: never stored (STON rule).
const NOT_UPDATED_BY_304: [&str; 5] = [
    "content-length",
    "content-encoding",
    "content-range",
    "set-cookie",
    "set-cookie2",
];

/// Updates the stored header fields from a 304 (RFC 9111 §3.2, §4.3.4): each field present in
/// the 304 replaces all stored lines of that field, except hop-by-hop fields and the fields
/// listed in `NOT_UPDATED_BY_304`. Afterwards [`strip_unstorable_headers`] re-applies the
/// (possibly new) `no-cache` / `private` field lists.
///
/// `Date` and `Age` describe a message rather than the representation, so they are always
/// taken from the 304, and removed when it lacks them: keeping the old `Age` would count
/// the original response's age again against the new `response_time`, and an old `Date`
/// would make the refreshed entry look as old as the first one.
pub fn freshen_with_304(stored: &mut HeaderMap, not_modified: &HeaderMap) -> FreshenReport {
    let vary_before = vary_fields(stored);
    let connection_named = connection_named_fields(not_modified);
    let updatable = |name: &HeaderName| {
        let name = name.as_str();
        !is_hop_by_hop(name)
            && !connection_named.iter().any(|c| c == name)
            && !NOT_UPDATED_BY_304.contains(&name)
    };
    stored.remove(header::DATE);
    stored.remove(header::AGE);
    for name in not_modified.keys().filter(|n| updatable(n)) {
        stored.remove(name);
        for value in not_modified.get_all(name) {
            stored.append(name.clone(), value.clone());
        }
    }
    strip_unstorable_headers(stored);
    FreshenReport {
        vary_changed: vary_fields(stored) != vary_before,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::test_support::hm;

    type Headers<'a> = &'a [(&'a str, &'a str)];

    const LM: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const LATER: &str = "Mon, 07 Nov 1994 08:49:37 GMT";

    fn sorted(headers: &HeaderMap) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        out.sort();
        out
    }

    fn pairs(list: Headers) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = list
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn rfc9111_4_3_1_conditional_request_validators() {
        let cases: &[(Headers, Headers)] = &[
            (
                &[("etag", "\"v1\""), ("last-modified", LM)],
                &[("if-none-match", "\"v1\""), ("if-modified-since", LM)],
            ),
            (&[("etag", " W/\"v1\" ")], &[("if-none-match", "W/\"v1\"")]),
            (&[("last-modified", LM)], &[("if-modified-since", LM)]),
            // Date is not a validator; an invalid Last-Modified is not sent.
            (&[("date", LM)], &[]),
            (&[("last-modified", "last tuesday")], &[]),
            (&[("etag", "")], &[]),
        ];
        for (stored, expected) in cases {
            assert_eq!(
                sorted(&conditional_request_headers(&hm(stored))),
                pairs(expected),
                "{stored:?}"
            );
        }
    }

    #[test]
    fn rfc9111_4_3_4_selecting_the_response_to_update() {
        let stored: Headers = &[("etag", "\"v1\""), ("last-modified", LM)];
        let weak: Headers = &[("etag", "W/\"v1\"")];
        let cases: &[(Headers, Headers, bool)] = &[
            (stored, &[("etag", "\"v1\"")], true),
            (stored, &[("etag", "\"v2\"")], false),
            (stored, &[("etag", "W/\"v1\"")], true),
            (weak, &[("etag", "\"v1\"")], false),
            (weak, &[("etag", "W/\"v1\"")], true),
            (&[("last-modified", LM)], &[("last-modified", LM)], true),
            (&[("last-modified", LM)], &[("last-modified", LATER)], false),
            (stored, &[], true),
            (stored, &[("etag", "garbage")], false),
        ];
        for (stored, not_modified, expected) in cases {
            assert_eq!(
                not_modified_applies(&hm(stored), &hm(not_modified)),
                *expected,
                "{stored:?} / {not_modified:?}"
            );
        }
    }

    #[test]
    fn rfc9111_3_2_freshening_replaces_fields_with_exceptions() {
        let mut stored = hm(&[
            ("cache-control", "max-age=60"),
            ("content-type", "text/html"),
            ("content-length", "1234"),
            ("content-encoding", "gzip"),
            ("etag", "\"v1\""),
            ("date", LM),
            ("age", "30"),
            ("x-kept", "old"),
            ("x-multi", "a"),
            ("x-multi", "b"),
            ("vary", "accept-encoding"),
        ]);
        let not_modified = hm(&[
            ("cache-control", "max-age=120"),
            ("cache-control", "no-cache=\"x-secret\""),
            ("content-length", "0"),
            ("content-encoding", "br"),
            ("date", LATER),
            ("x-multi", "c"),
            ("x-secret", "s"),
            ("connection", "x-conn"),
            ("x-conn", "hop"),
            ("transfer-encoding", "chunked"),
            ("set-cookie", "a=b"),
            ("etag", "\"v1\""),
        ]);
        let report = freshen_with_304(&mut stored, &not_modified);
        assert!(!report.vary_changed);
        let expected: Headers = &[
            ("cache-control", "max-age=120"),
            ("cache-control", "no-cache=\"x-secret\""),
            ("content-type", "text/html"),
            ("content-length", "1234"),
            ("content-encoding", "gzip"),
            ("etag", "\"v1\""),
            ("date", LATER),
            ("x-kept", "old"),
            ("x-multi", "c"),
            ("vary", "accept-encoding"),
        ];
        assert_eq!(sorted(&stored), pairs(expected));
    }

    #[test]
    fn rfc9111_3_2_freshening_reports_vary_change() {
        let mut stored = hm(&[("vary", "accept-encoding"), ("date", LM)]);
        let report = freshen_with_304(&mut stored, &hm(&[("vary", "Accept-Encoding, Cookie")]));
        assert!(report.vary_changed);
        assert!(
            !stored.contains_key(header::DATE),
            "a 304 without Date leaves no stale Date"
        );
    }
}
