//! Header-field helpers shared by the policy submodules: HTTP-date parsing, list splitting
//! (RFC 9110 §5.6.1) and the hop-by-hop field rules (RFC 9110 §7.6.1).

use std::time::SystemTime;

use http::{HeaderMap, HeaderName, header};

/// The largest delta-seconds value the policy keeps. RFC 9111 §1.2.2 tells a cache to use
/// 2^31 when a received value (or a calculation) overflows; capping every delta-seconds value
/// there also keeps `SystemTime` arithmetic far from overflow.
pub const DELTA_SECONDS_MAX: u64 = 2_147_483_648;

/// Hop-by-hop fields that a proxy never stores or forwards (RFC 9110 §7.6.1, RFC 9111 §3.1),
/// in addition to whatever `Connection` names. `Proxy-Connection` and `Keep-Alive` are not
/// standard but are widely sent, so they are treated the same way.
pub const HOP_BY_HOP_FIELDS: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Parses an HTTP-date (RFC 9110 §5.6.7): IMF-fixdate, the obsolete RFC 850 form and asctime.
///
/// Surrounding spaces and tabs are tolerated because they are optional whitespace around a
/// field value; anything else that does not parse is rejected (`None`).
pub fn parse_http_date(text: &str) -> Option<SystemTime> {
    let trimmed = trim_ows(text);
    if trimmed.is_empty() {
        return None;
    }
    httpdate::parse_http_date(trimmed).ok()
}

/// The state of a singleton date field such as `Expires` or `Last-Modified`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DateField {
    /// The field is not present.
    Absent,
    /// Present but unusable: unparseable, or several lines that disagree.
    Invalid,
    /// A valid date.
    Valid(SystemTime),
}

impl DateField {
    /// The date if it is valid.
    pub(crate) fn valid(self) -> Option<SystemTime> {
        match self {
            DateField::Valid(t) => Some(t),
            _ => None,
        }
    }
}

/// Reads a singleton date field. Several field lines are accepted only when they all carry
/// the same date: RFC 9111 §4.2.1 allows treating conflicting values as invalid, which is the
/// conservative reading for `Expires` (it then means "already expired").
pub(crate) fn date_field(headers: &HeaderMap, name: &HeaderName) -> DateField {
    let mut result = DateField::Absent;
    for value in headers.get_all(name) {
        let parsed = std::str::from_utf8(value.as_bytes())
            .ok()
            .and_then(parse_http_date);
        let Some(date) = parsed else {
            return DateField::Invalid;
        };
        match result {
            DateField::Valid(previous) if previous != date => return DateField::Invalid,
            _ => result = DateField::Valid(date),
        }
    }
    result
}

/// The valid `Last-Modified` date, if any.
pub(crate) fn last_modified(headers: &HeaderMap) -> Option<SystemTime> {
    date_field(headers, &header::LAST_MODIFIED).valid()
}

/// Strips optional whitespace (SP / HTAB, RFC 9110 §5.6.3) from both ends.
pub(crate) fn trim_ows(text: &str) -> &str {
    text.trim_matches([' ', '\t'])
}

/// Is `b` a `tchar`, i.e. allowed in a token (RFC 9110 §5.6.2)?
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Is `text` a non-empty token (RFC 9110 §5.6.2), e.g. a valid field name?
pub(crate) fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(is_tchar)
}

/// Splits one comma-separated list value into its trimmed, non-empty members (RFC 9110
/// §5.6.1). Commas inside quoted strings do not split, so `"a, b", c` has two members.
pub(crate) fn split_list(text: &str) -> Vec<&str> {
    fn push<'a>(members: &mut Vec<&'a str>, member: &'a str) {
        let member = trim_ows(member);
        if !member.is_empty() {
            members.push(member);
        }
    }
    let mut members = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, b) in text.bytes().enumerate() {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_quotes = false;
            }
            continue;
        }
        match b {
            b'"' => in_quotes = true,
            b',' => {
                push(&mut members, &text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    push(&mut members, &text[start..]);
    members
}

/// All list members of every line of the field `name`, in order. Lines that are not valid
/// UTF-8 are read lossily: the callers only look for ASCII tokens in them.
pub(crate) fn list_members(headers: &HeaderMap, name: &HeaderName) -> Vec<String> {
    let mut out = Vec::new();
    for value in headers.get_all(name) {
        let text = String::from_utf8_lossy(value.as_bytes());
        out.extend(split_list(&text).into_iter().map(str::to_owned));
    }
    out
}

/// Is `name` (any case) a hop-by-hop field from the fixed list?
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP_FIELDS
        .iter()
        .any(|hop| hop.eq_ignore_ascii_case(name))
}

/// The lower-cased field names listed by `Connection` (its "connection options").
pub(crate) fn connection_named_fields(headers: &HeaderMap) -> Vec<String> {
    list_members(headers, &header::CONNECTION)
        .into_iter()
        .map(|name| name.to_ascii_lowercase())
        .collect()
}

/// Removes the hop-by-hop fields: every field named by `Connection`, then `Connection`
/// itself and the rest of [`HOP_BY_HOP_FIELDS`] (RFC 9110 §7.6.1). These describe one
/// connection, so they are neither stored nor forwarded.
pub fn remove_hop_by_hop_headers(headers: &mut HeaderMap) {
    for name in connection_named_fields(headers) {
        // `remove` with a string that is not a valid field name simply finds nothing.
        headers.remove(name.as_str());
    }
    for name in HOP_BY_HOP_FIELDS {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::test_support::{at, hm};

    #[test]
    fn rfc9110_5_6_7_http_date_formats() {
        // (input, expected seconds since the epoch or None)
        let cases: &[(&str, Option<u64>)] = &[
            ("Sun, 06 Nov 1994 08:49:37 GMT", Some(784_111_777)),
            ("Sunday, 06-Nov-94 08:49:37 GMT", Some(784_111_777)),
            ("Sun Nov  6 08:49:37 1994", Some(784_111_777)),
            ("  Sun, 06 Nov 1994 08:49:37 GMT\t", Some(784_111_777)),
            ("0", None),
            ("", None),
            ("tomorrow", None),
            ("Sun, 06 Nov 1994 08:49:37", None),
            ("Sun, 32 Nov 1994 08:49:37 GMT", None),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_http_date(input), expected.map(at), "input {input:?}");
        }
    }

    #[test]
    fn rfc9111_4_2_1_conflicting_date_lines_are_invalid() {
        let same = hm(&[
            ("expires", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("expires", "Sunday, 06-Nov-94 08:49:37 GMT"),
        ]);
        assert_eq!(
            date_field(&same, &header::EXPIRES),
            DateField::Valid(at(784_111_777))
        );
        let differ = hm(&[
            ("expires", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("expires", "Mon, 07 Nov 1994 08:49:37 GMT"),
        ]);
        assert_eq!(date_field(&differ, &header::EXPIRES), DateField::Invalid);
        assert_eq!(date_field(&hm(&[]), &header::EXPIRES), DateField::Absent);
    }

    #[test]
    fn rfc9110_5_6_1_list_splitting_respects_quotes() {
        let cases: &[(&str, &[&str])] = &[
            ("a, b ,c", &["a", "b", "c"]),
            (" , a,, ,b, ", &["a", "b"]),
            ("no-cache=\"a, b\", c", &["no-cache=\"a, b\"", "c"]),
            ("x=\"q\\\"uote, y\", z", &["x=\"q\\\"uote, y\"", "z"]),
            ("", &[]),
        ];
        for (input, expected) in cases {
            assert_eq!(split_list(input), *expected, "input {input:?}");
        }
    }

    #[test]
    fn rfc9110_7_6_1_hop_by_hop_and_connection_named_fields_removed() {
        let mut headers = hm(&[
            ("connection", "close, X-Hop"),
            ("connection", "x-other"),
            ("x-hop", "1"),
            ("x-other", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic abc"),
            ("content-type", "text/plain"),
            ("x-end-to-end", "kept"),
        ]);
        remove_hop_by_hop_headers(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-end-to-end"]);
    }
}
