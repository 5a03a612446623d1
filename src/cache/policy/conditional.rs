//! Answering clients' conditional requests from a stored response (RFC 9110 §13).
//!
//! RFC 9111 §4.3.2 notes that `If-Match` and `If-Unmodified-Since` address the origin rather
//! than a cache. Strata is a gateway acting for the origin (a reverse proxy), so it evaluates
//! them against the stored response it is about to serve, i.e. one that is fresh or has just
//! been validated. Only GET and HEAD are ever answered from cache, so other methods report
//! [`Conditional::None`] and go to the origin.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, Method, header};

use super::fields::{date_field, last_modified, parse_http_date, trim_ows};
use super::targeted::{CDN_CACHE_CONTROL, STRATA_CACHE_CONTROL};

/// An entity tag (RFC 9110 §8.8.3): `"opaque"` or `W/"opaque"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityTag {
    /// True for a weak tag (`W/` prefix).
    pub weak: bool,
    /// The opaque string between the quotes.
    pub opaque: String,
}

impl EntityTag {
    /// Parses a single entity tag. Unquoted or otherwise malformed tags are rejected: they
    /// cannot be compared reliably, and a false match would serve the wrong representation.
    pub fn parse(text: &str) -> Option<EntityTag> {
        let text = trim_ows(text);
        let (tag, rest) = read_entity_tag(text.as_bytes(), 0)?;
        (rest == text.len()).then_some(tag)
    }

    /// Strong comparison (§8.8.3.2): both strong and identical opaque strings.
    pub fn strong_eq(&self, other: &EntityTag) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }

    /// Weak comparison (§8.8.3.2): identical opaque strings, weakness ignored.
    pub fn weak_eq(&self, other: &EntityTag) -> bool {
        self.opaque == other.opaque
    }
}

/// Reads an entity tag starting at `i`; returns it and the index just past it.
fn read_entity_tag(bytes: &[u8], mut i: usize) -> Option<(EntityTag, usize)> {
    let weak = bytes[i..].starts_with(b"W/");
    if weak {
        i += 2;
    }
    if bytes.get(i) != Some(&b'"') {
        return None;
    }
    let start = i + 1;
    let mut end = start;
    // etagc: %x21 / %x23-7E (obs-text is rejected to keep the opaque tag a plain String).
    while let Some(&b) = bytes.get(end) {
        match b {
            b'"' => {
                let opaque = String::from_utf8_lossy(&bytes[start..end]).into_owned();
                return Some((EntityTag { weak, opaque }, end + 1));
            }
            0x21 | 0x23..=0x7e => end += 1,
            _ => return None,
        }
    }
    None
}

/// The value of `If-Match` / `If-None-Match`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TagList {
    /// `*`
    Any,
    /// The valid tags listed (possibly none, when every member was malformed).
    Tags(Vec<EntityTag>),
}

/// Reads an entity-tag list field; `None` when the field is absent. Malformed members are
/// skipped; a `*` mixed with tags is invalid and ignored.
fn tag_list(headers: &HeaderMap, name: &HeaderName) -> Option<TagList> {
    let mut present = false;
    let mut star = false;
    let mut tags = Vec::new();
    for value in headers.get_all(name) {
        present = true;
        let bytes = value.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b',' | b' ' | b'\t' => i += 1,
                b'*' => {
                    star = true;
                    i += 1;
                }
                _ => match read_entity_tag(bytes, i) {
                    Some((tag, next)) => {
                        tags.push(tag);
                        i = next;
                    }
                    None => {
                        // Skip the malformed member up to the next comma.
                        while i < bytes.len() && bytes[i] != b',' {
                            i += 1;
                        }
                    }
                },
            }
        }
    }
    if !present {
        return None;
    }
    Some(if star && tags.is_empty() {
        TagList::Any
    } else {
        TagList::Tags(tags)
    })
}

/// The stored response's entity tag, if it has a valid one.
pub(crate) fn stored_etag(headers: &HeaderMap) -> Option<EntityTag> {
    headers
        .get(header::ETAG)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(EntityTag::parse)
}

/// A request date precondition; several lines make it invalid (a singleton field with more
/// than one member, RFC 9110 §13.1.3), as does a value that is not an HTTP-date.
fn request_date(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    std::str::from_utf8(first.as_bytes())
        .ok()
        .and_then(parse_http_date)
}

/// The outcome of evaluating a request's preconditions against the stored response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conditional {
    /// No precondition applies (or all passed): serve the stored response normally.
    None,
    /// Answer `304 Not Modified` (see [`headers_for_304`] for its header fields).
    NotModified,
    /// Answer `412 Precondition Failed`.
    PreconditionFailed,
}

/// Evaluates `If-Match`, `If-Unmodified-Since`, `If-None-Match` and `If-Modified-Since` in the
/// order of RFC 9110 §13.2.2 against the stored response's validators.
///
/// Preconditions are ignored unless the stored status is 2xx (§13.2.1: they only apply when
/// the unconditional answer would be 2xx). `If-Modified-Since` is compared with
/// `Last-Modified`, or with `Date` when there is none (RFC 9111 §4.3.2).
pub fn evaluate_conditionals(
    req_method: &Method,
    req_headers: &HeaderMap,
    stored_headers: &HeaderMap,
    stored_status: u16,
) -> Conditional {
    let safe = req_method == Method::GET || req_method == Method::HEAD;
    if !safe || !(200..=299).contains(&stored_status) {
        return Conditional::None;
    }
    // Most requests carry no precondition: skip parsing the stored validators.
    let conditional = [
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
    ]
    .iter()
    .any(|n| req_headers.contains_key(n));
    if !conditional {
        return Conditional::None;
    }
    let etag = stored_etag(stored_headers);
    let modified = last_modified(stored_headers);

    // Step 1: If-Match, strong comparison. `*` matches: we hold a current representation.
    if let Some(list) = tag_list(req_headers, &header::IF_MATCH) {
        let matched = match list {
            TagList::Any => true,
            TagList::Tags(tags) => etag
                .as_ref()
                .is_some_and(|e| tags.iter().any(|t| t.strong_eq(e))),
        };
        if !matched {
            return Conditional::PreconditionFailed;
        }
    } else if let Some(since) = request_date(req_headers, &header::IF_UNMODIFIED_SINCE) {
        // Step 2: If-Unmodified-Since, only without If-Match, and only if we know a
        // modification date (without one the condition cannot be evaluated).
        if modified.is_some_and(|m| m > since) {
            return Conditional::PreconditionFailed;
        }
    }

    // Step 3: If-None-Match, weak comparison.
    if let Some(list) = tag_list(req_headers, &header::IF_NONE_MATCH) {
        let matched = match list {
            TagList::Any => true,
            TagList::Tags(tags) => etag
                .as_ref()
                .is_some_and(|e| tags.iter().any(|t| t.weak_eq(e))),
        };
        return if matched {
            Conditional::NotModified
        } else {
            Conditional::None
        };
    }

    // Step 4: If-Modified-Since, only when If-None-Match is absent.
    if let Some(since) = request_date(req_headers, &header::IF_MODIFIED_SINCE) {
        let validator = modified.or_else(|| date_field(stored_headers, &header::DATE).valid());
        if validator.is_some_and(|m| m <= since) {
            return Conditional::NotModified;
        }
    }
    Conditional::None
}

/// Whether a `Range` request may be served as a range given its `If-Range` (RFC 9110
/// §13.1.5). True when there is no `If-Range`. An entity tag must match the stored `ETag`
/// strongly; a date must equal the stored `Last-Modified` exactly, and only when that is a
/// strong validator, i.e. at least 60 s older than the stored `Date` (§8.8.2.2). Anything
/// else (weak tags, invalid values, several lines) means "send the whole representation".
pub fn if_range_matches(req_headers: &HeaderMap, stored_headers: &HeaderMap) -> bool {
    let mut values = req_headers.get_all(header::IF_RANGE).iter();
    let Some(value) = values.next() else {
        return true;
    };
    if values.next().is_some() {
        return false;
    }
    let Ok(text) = std::str::from_utf8(value.as_bytes()) else {
        return false;
    };
    let text = trim_ows(text);
    if text.starts_with('"') || text.starts_with("W/") {
        return match (EntityTag::parse(text), stored_etag(stored_headers)) {
            (Some(wanted), Some(stored)) => wanted.strong_eq(&stored),
            _ => false,
        };
    }
    let (Some(wanted), Some(modified), Some(date)) = (
        parse_http_date(text),
        last_modified(stored_headers),
        date_field(stored_headers, &header::DATE).valid(),
    ) else {
        return false;
    };
    let strong = date
        .duration_since(modified)
        .is_ok_and(|gap| gap >= Duration::from_secs(60));
    strong && wanted == modified
}

/// The header fields of a `304 Not Modified` answered from a stored response (RFC 9110
/// §15.4.5): `Cache-Control`, `Content-Location`, `Date`, `ETag`, `Expires`, `Vary`, the
/// targeted cache-control fields, and `Last-Modified` when there is no `ETag` (it then is
/// the validator the client needs). The caller adds `Age`.
pub fn headers_for_304(stored_headers: &HeaderMap) -> HeaderMap {
    let mut names = vec![
        header::CACHE_CONTROL,
        header::CONTENT_LOCATION,
        header::DATE,
        header::ETAG,
        header::EXPIRES,
        header::VARY,
        CDN_CACHE_CONTROL,
        STRATA_CACHE_CONTROL,
    ];
    if !stored_headers.contains_key(header::ETAG) {
        names.push(header::LAST_MODIFIED);
    }
    let mut out = HeaderMap::new();
    for name in names {
        for value in stored_headers.get_all(&name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::test_support::hm;

    type Headers<'a> = &'a [(&'a str, &'a str)];

    const LM: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const BEFORE: &str = "Sat, 05 Nov 1994 08:49:37 GMT";
    const AFTER: &str = "Mon, 07 Nov 1994 08:49:37 GMT";

    #[test]
    fn rfc9110_8_8_3_entity_tag_parsing_and_comparison() {
        let cases: &[(&str, Option<(bool, &str)>)] = &[
            ("\"xyzzy\"", Some((false, "xyzzy"))),
            ("W/\"xyzzy\"", Some((true, "xyzzy"))),
            (" \"\" ", Some((false, ""))),
            ("xyzzy", None),
            ("\"unterminated", None),
            ("w/\"lowercase-w\"", None),
            ("\"a\" junk", None),
        ];
        for (input, expected) in cases {
            let got = EntityTag::parse(input).map(|t| (t.weak, t.opaque));
            assert_eq!(got, expected.map(|(w, o)| (w, o.to_string())), "{input:?}");
        }
        // The comparison table of §8.8.3.2.
        let tag = |s: &str| EntityTag::parse(s).expect("valid tag");
        let table = [
            ("W/\"1\"", "W/\"1\"", false, true),
            ("W/\"1\"", "W/\"2\"", false, false),
            ("W/\"1\"", "\"1\"", false, true),
            ("\"1\"", "\"1\"", true, true),
        ];
        for (a, b, strong, weak) in table {
            assert_eq!(tag(a).strong_eq(&tag(b)), strong, "{a} {b}");
            assert_eq!(tag(a).weak_eq(&tag(b)), weak, "{a} {b}");
        }
    }

    #[test]
    fn rfc9110_13_2_2_precondition_evaluation_order() {
        let stored: Headers = &[("etag", "\"v1\""), ("last-modified", LM), ("date", AFTER)];
        let weak_stored: Headers = &[("etag", "W/\"v1\"")];
        use Conditional::*;
        // (method, request headers, stored headers, stored status, expected)
        let cases: Vec<(Method, Headers, Headers, u16, Conditional)> = vec![
            (Method::GET, &[], stored, 200, None),
            // §13.1.2 If-None-Match: weak comparison, lists with commas in tags, `*`.
            (
                Method::GET,
                &[("if-none-match", "\"v1\"")],
                stored,
                200,
                NotModified,
            ),
            (
                Method::GET,
                &[("if-none-match", "W/\"v1\"")],
                stored,
                200,
                NotModified,
            ),
            (
                Method::HEAD,
                &[("if-none-match", "\"a,b\", \"v1\"")],
                stored,
                200,
                NotModified,
            ),
            (
                Method::GET,
                &[("if-none-match", "\"v0\""), ("if-none-match", "\"v1\"")],
                stored,
                200,
                NotModified,
            ),
            (
                Method::GET,
                &[("if-none-match", "\"v2\"")],
                stored,
                200,
                None,
            ),
            (
                Method::GET,
                &[("if-none-match", "*")],
                stored,
                200,
                NotModified,
            ),
            (
                Method::GET,
                &[("if-none-match", "garbage")],
                stored,
                200,
                None,
            ),
            // §13.1.3 If-Modified-Since ignored when If-None-Match is present.
            (
                Method::GET,
                &[("if-none-match", "\"v2\""), ("if-modified-since", AFTER)],
                stored,
                200,
                None,
            ),
            (
                Method::GET,
                &[("if-modified-since", LM)],
                stored,
                200,
                NotModified,
            ),
            (
                Method::GET,
                &[("if-modified-since", AFTER)],
                stored,
                200,
                NotModified,
            ),
            (
                Method::GET,
                &[("if-modified-since", BEFORE)],
                stored,
                200,
                None,
            ),
            (
                Method::GET,
                &[("if-modified-since", "yesterday")],
                stored,
                200,
                None,
            ),
            (
                Method::GET,
                &[("if-modified-since", AFTER), ("if-modified-since", AFTER)],
                stored,
                200,
                None,
            ),
            // RFC 9111 §4.3.2: without Last-Modified the stored Date is the validator.
            (
                Method::GET,
                &[("if-modified-since", AFTER)],
                &[("date", LM)],
                200,
                NotModified,
            ),
            (Method::GET, &[("if-modified-since", AFTER)], &[], 200, None),
            // §13.1.1 If-Match: strong comparison, `*`.
            (Method::GET, &[("if-match", "\"v1\"")], stored, 200, None),
            (
                Method::GET,
                &[("if-match", "\"v2\"")],
                stored,
                200,
                PreconditionFailed,
            ),
            (
                Method::GET,
                &[("if-match", "W/\"v1\"")],
                stored,
                200,
                PreconditionFailed,
            ),
            (
                Method::GET,
                &[("if-match", "\"v1\"")],
                weak_stored,
                200,
                PreconditionFailed,
            ),
            (Method::GET, &[("if-match", "*")], &[], 200, None),
            // §13.1.4 If-Unmodified-Since, ignored when If-Match is present.
            (
                Method::GET,
                &[("if-unmodified-since", BEFORE)],
                stored,
                200,
                PreconditionFailed,
            ),
            (
                Method::GET,
                &[("if-unmodified-since", LM)],
                stored,
                200,
                None,
            ),
            (
                Method::GET,
                &[("if-unmodified-since", "nonsense")],
                stored,
                200,
                None,
            ),
            (
                Method::GET,
                &[("if-match", "\"v1\""), ("if-unmodified-since", BEFORE)],
                stored,
                200,
                None,
            ),
            // Step order: If-Match failure wins over If-None-Match.
            (
                Method::GET,
                &[("if-match", "\"v2\""), ("if-none-match", "\"v1\"")],
                stored,
                200,
                PreconditionFailed,
            ),
            // §13.2.1: only for 2xx stored responses, and only GET/HEAD here.
            (Method::GET, &[("if-none-match", "*")], stored, 404, None),
            (
                Method::POST,
                &[("if-none-match", "\"v1\"")],
                stored,
                200,
                None,
            ),
        ];
        for (method, req, stored, status, expected) in cases {
            let got = evaluate_conditionals(&method, &hm(req), &hm(stored), status);
            assert_eq!(got, expected, "{method} {req:?} vs {stored:?} ({status})");
        }
    }

    #[test]
    fn rfc9110_13_1_5_if_range() {
        let lm_strong: Headers = &[("etag", "\"v1\""), ("last-modified", LM), ("date", AFTER)];
        let lm_weak: Headers = &[
            ("last-modified", LM),
            ("date", "Sun, 06 Nov 1994 08:50:00 GMT"),
        ];
        let weak_etag: Headers = &[("etag", "W/\"v1\"")];
        let cases: &[(Headers, Headers, bool)] = &[
            (&[], lm_strong, true),
            (&[("if-range", "\"v1\"")], lm_strong, true),
            (&[("if-range", "\"v2\"")], lm_strong, false),
            (&[("if-range", "W/\"v1\"")], lm_strong, false),
            (&[("if-range", "W/\"v1\"")], weak_etag, false),
            (&[("if-range", "\"v1\"")], weak_etag, false),
            (&[("if-range", LM)], lm_strong, true),
            (&[("if-range", AFTER)], lm_strong, false),
            (&[("if-range", LM)], lm_weak, false),
            (&[("if-range", "garbage")], lm_strong, false),
            (
                &[("if-range", "\"v1\""), ("if-range", "\"v1\"")],
                lm_strong,
                false,
            ),
        ];
        for (req, stored, expected) in cases {
            assert_eq!(
                if_range_matches(&hm(req), &hm(stored)),
                *expected,
                "{req:?} vs {stored:?}"
            );
        }
    }

    #[test]
    fn rfc9110_15_4_5_not_modified_header_fields() {
        let stored = hm(&[
            ("cache-control", "max-age=60"),
            ("etag", "\"v1\""),
            ("last-modified", LM),
            ("date", LM),
            ("vary", "accept-encoding"),
            ("content-type", "text/html"),
            ("content-length", "123"),
            ("cdn-cache-control", "max-age=600"),
        ]);
        let out = headers_for_304(&stored);
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["cache-control", "cdn-cache-control", "date", "etag", "vary"]
        );
        let no_etag = headers_for_304(&hm(&[("last-modified", LM)]));
        assert!(no_etag.contains_key(header::LAST_MODIFIED));
    }
}
