//! `Cache-Control` parsing (RFC 9111 §5.2) into typed request and response directive sets.
//!
//! The syntax is a comma-separated list of `name[=value]` where the value is a token or a
//! quoted string (RFC 9110 §5.6). Names are case-insensitive; unknown directives are ignored.
//! Where the input is broken or contradictory, the parser picks the reading that makes the
//! cache do *less* (store less, serve stale less, revalidate more), because a cache that errs
//! on the side of revalidation costs latency while the opposite mistake serves wrong content.

use http::{HeaderMap, header};

use super::fields::{DELTA_SECONDS_MAX, is_token, list_members, split_list};

/// One `name[=value]` element of a directive list, before interpretation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawDirective {
    /// The directive name, lower-cased.
    pub(crate) name: String,
    /// The argument with quotes and escapes removed, if an `=` was present.
    pub(crate) value: Option<String>,
    /// The element had an argument we could not read (unterminated quote, junk after it,
    /// a non-integer where a number belongs, ...).
    pub(crate) malformed: bool,
}

impl RawDirective {
    /// The argument as delta-seconds (RFC 9111 §1.2.2), `None` if absent or invalid.
    fn seconds(&self) -> Option<u64> {
        if self.malformed {
            return None;
        }
        self.value.as_deref().and_then(parse_delta_seconds)
    }
}

/// Parses delta-seconds: one or more ASCII digits, saturating at [`DELTA_SECONDS_MAX`].
pub(crate) fn parse_delta_seconds(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut value: u64 = 0;
    for digit in text.bytes() {
        value = value
            .saturating_mul(10)
            .saturating_add(u64::from(digit - b'0'));
    }
    Some(value.min(DELTA_SECONDS_MAX))
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn skip_ows(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && is_ows(bytes[i]) {
        i += 1;
    }
    i
}

/// Advances from `i` to the next comma that is not inside a quoted string (or the end).
fn skip_to_comma(bytes: &[u8], mut i: usize) -> usize {
    let mut in_quotes = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_quotes => i += 1,
            b'"' => in_quotes = !in_quotes,
            b',' if !in_quotes => return i,
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

/// Reads the quoted string starting at `start` (which holds `"`). Returns the unescaped text
/// and the index just past the closing quote, or `None` if it is unterminated.
fn read_quoted(text: &str, start: usize) -> Option<(String, usize)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return Some((String::from_utf8_lossy(&out).into_owned(), i + 1)),
            b'\\' if i + 1 < bytes.len() => {
                out.push(bytes[i + 1]);
                i += 2;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    None
}

/// Parses one directive-list field value, appending its elements to `out`.
pub(crate) fn parse_directive_list(text: &str, out: &mut Vec<RawDirective>) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        // Skip separators and empty list elements.
        while i < bytes.len() && (bytes[i] == b',' || is_ows(bytes[i])) {
            i += 1;
        }
        if i >= bytes.len() {
            break;
        }
        let name_start = i;
        while i < bytes.len() && super::fields::is_tchar(bytes[i]) {
            i += 1;
        }
        if i == name_start {
            // The element does not start with a token: it carries no usable directive.
            i = skip_to_comma(bytes, i);
            continue;
        }
        let name = text[name_start..i].to_ascii_lowercase();
        let mut value = None;
        let mut malformed = false;
        let mut j = i;
        if j < bytes.len() && bytes[j] == b'=' {
            // No whitespace is allowed around `=` (RFC 9111 §5.2): `max-age =60` and
            // `max-age= 60` are malformed, so their argument is distrusted below.
            j += 1;
            if j < bytes.len() && bytes[j] == b'"' {
                match read_quoted(text, j) {
                    Some((unquoted, end)) => {
                        value = Some(unquoted);
                        j = end;
                    }
                    None => {
                        value = Some(String::new());
                        malformed = true;
                        j = bytes.len();
                    }
                }
            } else {
                let value_start = j;
                while j < bytes.len() && super::fields::is_tchar(bytes[j]) {
                    j += 1;
                }
                malformed = j == value_start;
                value = Some(text[value_start..j].to_owned());
            }
        }
        j = skip_ows(bytes, j);
        if j < bytes.len() && bytes[j] != b',' {
            // Junk such as `max-age=60 foo`: keep the directive but distrust its argument.
            malformed = true;
            j = skip_to_comma(bytes, j);
        }
        out.push(RawDirective {
            name,
            value,
            malformed,
        });
        i = j;
    }
}

/// Parses every line of the field `name` as a directive list.
pub(crate) fn raw_directives(headers: &HeaderMap, name: &http::HeaderName) -> Vec<RawDirective> {
    let mut out = Vec::new();
    for value in headers.get_all(name) {
        parse_directive_list(&String::from_utf8_lossy(value.as_bytes()), &mut out);
    }
    out
}

/// Which header fields a `no-cache` or `private` response directive applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldScope {
    /// The unqualified form: the directive applies to the whole response.
    All,
    /// The qualified form (`private="Set-Cookie"`): only these fields, lower-cased, sorted.
    Fields(Vec<String>),
}

impl FieldScope {
    /// Reads the argument of `no-cache` / `private`. An argument we cannot read as a list of
    /// field names, or an empty list, is taken as the unqualified form: restricting only the
    /// fields we happened to understand could leak the rest.
    fn from_directive(directive: &RawDirective) -> FieldScope {
        let Some(text) = directive.value.as_deref() else {
            return FieldScope::All;
        };
        if directive.malformed {
            return FieldScope::All;
        }
        let members = split_list(text);
        if members.is_empty() || !members.iter().all(|m| is_token(m)) {
            return FieldScope::All;
        }
        let mut names: Vec<String> = members.iter().map(|m| m.to_ascii_lowercase()).collect();
        names.sort_unstable();
        names.dedup();
        FieldScope::Fields(names)
    }

    /// Combines two occurrences of the same directive: the whole-response form wins,
    /// field lists are united.
    fn merge(existing: Option<FieldScope>, new: FieldScope) -> Option<FieldScope> {
        Some(match (existing, new) {
            (None, scope) => scope,
            (Some(FieldScope::All), _) | (_, FieldScope::All) => FieldScope::All,
            (Some(FieldScope::Fields(mut a)), FieldScope::Fields(b)) => {
                a.extend(b);
                a.sort_unstable();
                a.dedup();
                FieldScope::Fields(a)
            }
        })
    }

    /// The named fields, or an empty slice for the unqualified form.
    pub fn field_names(&self) -> &[String] {
        match self {
            FieldScope::All => &[],
            FieldScope::Fields(names) => names,
        }
    }
}

/// Response directives (RFC 9111 §5.2.2, RFC 5861, RFC 8246) as seen by a shared cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseDirectives {
    /// `max-age=N` (§5.2.2.1). Invalid or conflicting values read as `0` (stale), per §4.2.1.
    pub max_age: Option<u64>,
    /// `s-maxage=N` (§5.2.2.10), same invalid/conflict rule as `max_age`.
    pub s_maxage: Option<u64>,
    /// `no-store` (§5.2.2.5).
    pub no_store: bool,
    /// `no-cache` (§5.2.2.4), unqualified or with field names.
    pub no_cache: Option<FieldScope>,
    /// `private` (§5.2.2.7), unqualified or with field names.
    pub private: Option<FieldScope>,
    /// `public` (§5.2.2.9).
    pub public: bool,
    /// `must-revalidate` (§5.2.2.2).
    pub must_revalidate: bool,
    /// `proxy-revalidate` (§5.2.2.8).
    pub proxy_revalidate: bool,
    /// `immutable` (RFC 8246). Recorded for completeness; see `decide_reuse` for why a shared
    /// cache does not act on it.
    pub immutable: bool,
    /// `stale-while-revalidate=N` (RFC 5861 §3). Invalid values are ignored; the smallest
    /// of several values is kept.
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error=N` (RFC 5861 §4), same rules as `stale_while_revalidate`.
    pub stale_if_error: Option<u64>,
    /// `must-understand` (§5.2.2.3).
    pub must_understand: bool,
    /// `no-transform` (§5.2.2.6). Strata never transforms content; recorded for callers.
    pub no_transform: bool,
}

impl ResponseDirectives {
    /// Parses the `Cache-Control` field of a response. Use
    /// [`effective_directives`](super::targeted::effective_directives) instead when the
    /// targeted fields (`Strata-Cache-Control`, `CDN-Cache-Control`) should be considered.
    pub fn from_cache_control(headers: &HeaderMap) -> ResponseDirectives {
        ResponseDirectives::from_raw(&raw_directives(headers, &header::CACHE_CONTROL))
    }

    /// Interprets already-split directives (from `Cache-Control` or a targeted field).
    pub(crate) fn from_raw(directives: &[RawDirective]) -> ResponseDirectives {
        let mut out = ResponseDirectives::default();
        for d in directives {
            match d.name.as_str() {
                "max-age" => out.max_age = merge_freshness(out.max_age, d.seconds()),
                "s-maxage" => out.s_maxage = merge_freshness(out.s_maxage, d.seconds()),
                "no-store" => out.no_store = true,
                "no-cache" => {
                    out.no_cache = FieldScope::merge(out.no_cache, FieldScope::from_directive(d))
                }
                "private" => {
                    out.private = FieldScope::merge(out.private, FieldScope::from_directive(d))
                }
                "public" => out.public = true,
                "must-revalidate" => out.must_revalidate = true,
                "proxy-revalidate" => out.proxy_revalidate = true,
                "immutable" => out.immutable = true,
                "stale-while-revalidate" => {
                    out.stale_while_revalidate = min_valid(out.stale_while_revalidate, d.seconds())
                }
                "stale-if-error" => out.stale_if_error = min_valid(out.stale_if_error, d.seconds()),
                "must-understand" => out.must_understand = true,
                "no-transform" => out.no_transform = true,
                _ => {}
            }
        }
        out
    }

    /// True when the response must not be served stale by a shared cache:
    /// `must-revalidate`, `proxy-revalidate`, or `s-maxage` (which carries the semantics of
    /// `proxy-revalidate`, RFC 9111 §5.2.2.10).
    pub fn forbids_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some()
    }

    /// True for the unqualified `no-cache` (revalidate before every reuse).
    pub fn no_cache_all(&self) -> bool {
        self.no_cache == Some(FieldScope::All)
    }

    /// True for the unqualified `private` (a shared cache must not store the response).
    pub fn private_all(&self) -> bool {
        self.private == Some(FieldScope::All)
    }
}

/// `max-age` / `s-maxage` occurrences: an invalid value, or a second value that disagrees
/// with the first, makes the response stale (`0`), which RFC 9111 §4.2.1 allows and which
/// cannot make us serve content longer than the origin meant.
fn merge_freshness(existing: Option<u64>, new: Option<u64>) -> Option<u64> {
    match (existing, new) {
        (None, Some(v)) => Some(v),
        (Some(a), Some(b)) if a == b => Some(a),
        _ => Some(0),
    }
}

/// Keeps the smallest valid value (invalid occurrences are ignored).
fn min_valid(existing: Option<u64>, new: Option<u64>) -> Option<u64> {
    match (existing, new) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The request's `max-stale` directive (RFC 9111 §5.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxStale {
    /// `max-stale` without a value: any staleness is acceptable to the client.
    Any,
    /// `max-stale=N`: up to N seconds past expiry.
    Seconds(u64),
}

/// Request directives (RFC 9111 §5.2.1), with `Pragma: no-cache` folded in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    /// `no-store` (§5.2.1.5): do not store the response to this request.
    pub no_store: bool,
    /// `no-cache` (§5.2.1.4), or `Pragma: no-cache` when no `Cache-Control` is present
    /// (§5.4): do not reuse without successful validation.
    pub no_cache: bool,
    /// `max-age=N` (§5.2.1.1). Invalid reads as `0`; the smallest of several is kept.
    pub max_age: Option<u64>,
    /// `max-stale[=N]` (§5.2.1.2). Invalid values are ignored; the strictest is kept.
    pub max_stale: Option<MaxStale>,
    /// `min-fresh=N` (§5.2.1.3). Invalid values are ignored; the largest is kept.
    pub min_fresh: Option<u64>,
    /// `only-if-cached` (§5.2.1.7): answer 504 rather than contact the origin.
    pub only_if_cached: bool,
    /// `no-transform` (§5.2.1.6).
    pub no_transform: bool,
    /// `stale-if-error=N` sent by the client (RFC 5861 §4).
    pub stale_if_error: Option<u64>,
}

impl RequestDirectives {
    /// Parses the request's `Cache-Control` (and `Pragma` when `Cache-Control` is absent).
    pub fn parse(headers: &HeaderMap) -> RequestDirectives {
        let mut out = RequestDirectives::default();
        for d in raw_directives(headers, &header::CACHE_CONTROL) {
            match d.name.as_str() {
                "no-store" => out.no_store = true,
                "no-cache" => out.no_cache = true,
                // An unreadable max-age is taken as 0: the client wanted *some* bound, and
                // revalidating is the safe way to honour an unknown one.
                "max-age" => {
                    let v = d.seconds().unwrap_or(0);
                    out.max_age = Some(out.max_age.map_or(v, |old| old.min(v)));
                }
                "max-stale" => {
                    let new = match (&d.value, d.malformed) {
                        (None, false) => Some(MaxStale::Any),
                        _ => d.seconds().map(MaxStale::Seconds),
                    };
                    out.max_stale = match (out.max_stale, new) {
                        (Some(MaxStale::Seconds(a)), Some(MaxStale::Seconds(b))) => {
                            Some(MaxStale::Seconds(a.min(b)))
                        }
                        (Some(MaxStale::Seconds(a)), _) | (_, Some(MaxStale::Seconds(a))) => {
                            Some(MaxStale::Seconds(a))
                        }
                        (old, new) => old.or(new),
                    };
                }
                "min-fresh" => {
                    if let Some(v) = d.seconds() {
                        out.min_fresh = Some(out.min_fresh.map_or(v, |old| old.max(v)));
                    }
                }
                "only-if-cached" => out.only_if_cached = true,
                "no-transform" => out.no_transform = true,
                "stale-if-error" => out.stale_if_error = min_valid(out.stale_if_error, d.seconds()),
                _ => {}
            }
        }
        // RFC 9111 §5.4: Pragma is only consulted when Cache-Control is absent altogether.
        if !headers.contains_key(header::CACHE_CONTROL)
            && list_members(headers, &header::PRAGMA)
                .iter()
                .any(|m| m.eq_ignore_ascii_case("no-cache"))
        {
            out.no_cache = true;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::test_support::hm;

    fn response(cc: &str) -> ResponseDirectives {
        ResponseDirectives::from_cache_control(&hm(&[("cache-control", cc)]))
    }

    fn fields(names: &[&str]) -> Option<FieldScope> {
        Some(FieldScope::Fields(
            names.iter().map(|s| s.to_string()).collect(),
        ))
    }

    #[test]
    fn rfc9111_5_2_directive_list_syntax() {
        // (input, [(name, value, malformed)])
        type Expect<'a> = &'a [(&'a str, Option<&'a str>, bool)];
        let cases: &[(&str, Expect)] = &[
            ("max-age=60", &[("max-age", Some("60"), false)]),
            (
                "MAX-AGE=60, Public",
                &[("max-age", Some("60"), false), ("public", None, false)],
            ),
            ("max-age=\"60\"", &[("max-age", Some("60"), false)]),
            (" , ,no-store,,", &[("no-store", None, false)]),
            ("max-age = 5", &[("max-age", None, true)]),
            ("max-age= 5", &[("max-age", Some(""), true)]),
            (
                "no-store , public",
                &[("no-store", None, false), ("public", None, false)],
            ),
            (
                "max-age=5 junk, public",
                &[("max-age", Some("5"), true), ("public", None, false)],
            ),
            (
                "private=\"a, b\", x",
                &[("private", Some("a, b"), false), ("x", None, false)],
            ),
            ("x=\"esc\\\"aped\"", &[("x", Some("esc\"aped"), false)]),
            ("x=\"unterminated, y", &[("x", Some(""), true)]),
            ("max-age=", &[("max-age", Some(""), true)]),
            ("@@@, public", &[("public", None, false)]),
        ];
        for (input, expected) in cases {
            let mut got = Vec::new();
            parse_directive_list(input, &mut got);
            let want: Vec<RawDirective> = expected
                .iter()
                .map(|(n, v, m)| RawDirective {
                    name: n.to_string(),
                    value: v.map(str::to_string),
                    malformed: *m,
                })
                .collect();
            assert_eq!(got, want, "input {input:?}");
        }
    }

    #[test]
    fn rfc9111_1_2_2_delta_seconds() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("60", Some(60)),
            ("007", Some(7)),
            ("2147483648", Some(DELTA_SECONDS_MAX)),
            ("99999999999999999999999", Some(DELTA_SECONDS_MAX)),
            ("-1", None),
            ("1.5", None),
            ("+5", None),
            ("", None),
            ("abc", None),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_delta_seconds(input), *expected, "input {input:?}");
        }
    }

    #[test]
    fn rfc9111_4_2_1_invalid_or_conflicting_max_age_means_stale() {
        let cases: &[(&str, Option<u64>, Option<u64>)] = &[
            // (Cache-Control, max_age, s_maxage)
            ("max-age=60", Some(60), None),
            ("max-age=60, max-age=60", Some(60), None),
            ("max-age=60, max-age=120", Some(0), None),
            ("max-age=abc", Some(0), None),
            ("max-age=-5", Some(0), None),
            ("max-age", Some(0), None),
            ("max-age=5 junk", Some(0), None),
            ("s-maxage=30, max-age=10", Some(10), Some(30)),
            ("s-maxage=1.5", None, Some(0)),
        ];
        for (cc, max_age, s_maxage) in cases {
            let d = response(cc);
            assert_eq!((d.max_age, d.s_maxage), (*max_age, *s_maxage), "cc {cc:?}");
        }
    }

    #[test]
    fn rfc9111_5_2_2_response_directive_flags() {
        let d = response(
            "Public, must-revalidate, PROXY-REVALIDATE, immutable, no-store, must-understand, \
             no-transform, stale-while-revalidate=30, stale-if-error=600, stale-if-error=60, \
             stale-while-revalidate=bogus, unknown-ext=\"x\"",
        );
        assert!(d.public && d.must_revalidate && d.proxy_revalidate && d.immutable);
        assert!(d.no_store && d.must_understand && d.no_transform);
        assert_eq!(d.stale_while_revalidate, Some(30));
        assert_eq!(d.stale_if_error, Some(60));
        assert_eq!(d.no_cache, None);
        assert!(response("s-maxage=10").forbids_stale());
        assert!(!response("max-age=10").forbids_stale());
    }

    #[test]
    fn rfc9111_5_2_2_4_and_5_2_2_7_field_scoped_no_cache_and_private() {
        let cases: &[(&str, Option<FieldScope>, Option<FieldScope>)] = &[
            // (Cache-Control, no_cache, private)
            ("no-cache", Some(FieldScope::All), None),
            ("no-cache=\"Set-Cookie\"", fields(&["set-cookie"]), None),
            (
                "no-cache=\"Set-Cookie, X-A\", no-cache=x-b",
                fields(&["set-cookie", "x-a", "x-b"]),
                None,
            ),
            (
                "no-cache=\"Set-Cookie\", no-cache",
                Some(FieldScope::All),
                None,
            ),
            ("no-cache=\"\"", Some(FieldScope::All), None),
            ("no-cache=\"bad name!@\"", Some(FieldScope::All), None),
            ("private", None, Some(FieldScope::All)),
            (
                "private=\"Authorization-Info\"",
                None,
                fields(&["authorization-info"]),
            ),
            ("private=\"unterminated", None, Some(FieldScope::All)),
        ];
        for (cc, no_cache, private) in cases {
            let d = response(cc);
            assert_eq!((&d.no_cache, &d.private), (no_cache, private), "cc {cc:?}");
        }
    }

    #[test]
    fn rfc9111_5_2_1_request_directives() {
        let cases: &[(&[(&str, &str)], RequestDirectives)] = &[
            (
                &[("cache-control", "no-cache")],
                RequestDirectives {
                    no_cache: true,
                    ..Default::default()
                },
            ),
            (
                &[("pragma", "no-cache")],
                RequestDirectives {
                    no_cache: true,
                    ..Default::default()
                },
            ),
            // §5.4: Pragma is ignored once Cache-Control is present.
            (
                &[("pragma", "no-cache"), ("cache-control", "max-age=5")],
                RequestDirectives {
                    max_age: Some(5),
                    ..Default::default()
                },
            ),
            (
                &[("cache-control", "max-age=oops")],
                RequestDirectives {
                    max_age: Some(0),
                    ..Default::default()
                },
            ),
            (
                &[("cache-control", "max-age=60, max-age=10")],
                RequestDirectives {
                    max_age: Some(10),
                    ..Default::default()
                },
            ),
            (
                &[("cache-control", "max-stale")],
                RequestDirectives {
                    max_stale: Some(MaxStale::Any),
                    ..Default::default()
                },
            ),
            (
                &[("cache-control", "max-stale, max-stale=30")],
                RequestDirectives {
                    max_stale: Some(MaxStale::Seconds(30)),
                    ..Default::default()
                },
            ),
            (
                &[("cache-control", "max-stale=abc")],
                RequestDirectives::default(),
            ),
            (
                &[("cache-control", "min-fresh=10, min-fresh=20")],
                RequestDirectives {
                    min_fresh: Some(20),
                    ..Default::default()
                },
            ),
            (
                &[(
                    "cache-control",
                    "no-store, only-if-cached, no-transform, stale-if-error=9",
                )],
                RequestDirectives {
                    no_store: true,
                    only_if_cached: true,
                    no_transform: true,
                    stale_if_error: Some(9),
                    ..Default::default()
                },
            ),
        ];
        for (headers, expected) in cases {
            assert_eq!(
                RequestDirectives::parse(&hm(headers)),
                *expected,
                "headers {headers:?}"
            );
        }
    }
}
