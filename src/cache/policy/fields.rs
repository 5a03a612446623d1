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
/// The grammar is followed exactly (one space between parts, two-digit hours, four-digit
/// years in IMF-fixdate, `GMT` only), except that day names, month names and `GMT` are read
/// case-insensitively: they are case-sensitive in the grammar, but RFC 9110 §5.6.7 asks
/// recipients to be robust, and a wrongly cased date is still unambiguous. The weekday is not
/// checked against the date. Surrounding spaces and tabs are tolerated because they are
/// optional whitespace around a field value; anything else is rejected (`None`), which for
/// `Expires` means "already expired".
pub fn parse_http_date(text: &str) -> Option<SystemTime> {
    let t = trim_ows(text);
    if !t.is_ascii() {
        return None;
    }
    let (day_name, rest) = t.split_once([',', ' '])?;
    let sep = t.as_bytes()[day_name.len()];
    if sep == b',' {
        let rest = rest.strip_prefix(' ')?;
        if SHORT_DAYS.iter().any(|d| d.eq_ignore_ascii_case(day_name)) {
            imf_fixdate(rest)
        } else if LONG_DAYS.iter().any(|d| d.eq_ignore_ascii_case(day_name)) {
            rfc850_date(rest)
        } else {
            None
        }
    } else if SHORT_DAYS.iter().any(|d| d.eq_ignore_ascii_case(day_name)) {
        asctime_date(rest)
    } else {
        None
    }
}

const SHORT_DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const LONG_DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `DD Mon YYYY HH:MM:SS GMT`
fn imf_fixdate(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 24 || b[2] != b' ' || b[6] != b' ' || b[11] != b' ' || b[20] != b' ' {
        return None;
    }
    let day = digits(&s[0..2])?;
    let month = month(&s[3..6])?;
    let year = digits(&s[7..11])?;
    let (h, m, sec) = time_of_day(&s[12..20])?;
    s[21..].eq_ignore_ascii_case("GMT").then_some(())?;
    civil(year, month, day, h, m, sec)
}

/// `DD-Mon-YY HH:MM:SS GMT`; a two-digit year below 70 is 20YY, otherwise 19YY.
fn rfc850_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 22 || b[2] != b'-' || b[6] != b'-' || b[9] != b' ' || b[18] != b' ' {
        return None;
    }
    let day = digits(&s[0..2])?;
    let month = month(&s[3..6])?;
    let yy = digits(&s[7..9])?;
    let year = if yy < 70 { 2000 + yy } else { 1900 + yy };
    let (h, m, sec) = time_of_day(&s[10..18])?;
    s[19..].eq_ignore_ascii_case("GMT").then_some(())?;
    civil(year, month, day, h, m, sec)
}

/// `Mon DD HH:MM:SS YYYY`, the day padded with a space (`Nov  6`).
fn asctime_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 20 || b[3] != b' ' || b[6] != b' ' || b[15] != b' ' {
        return None;
    }
    let month = month(&s[0..3])?;
    let day = match (b[4], b[5]) {
        (b' ', d) if d.is_ascii_digit() => u64::from(d - b'0'),
        _ => digits(&s[4..6])?,
    };
    let (h, m, sec) = time_of_day(&s[7..15])?;
    let year = digits(&s[16..20])?;
    civil(year, month, day, h, m, sec)
}

/// All-digit text as a number.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn month(s: &str) -> Option<u64> {
    MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(s))
        .map(|i| i as u64 + 1)
}

/// `HH:MM:SS`, two digits each.
fn time_of_day(s: &str) -> Option<(u64, u64, u64)> {
    let b = s.as_bytes();
    if b.len() != 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (h, m, sec) = (digits(&s[0..2])?, digits(&s[3..5])?, digits(&s[6..8])?);
    // 60 is a leap second (RFC 9110 §5.6.7 allows it); it is read as the last second.
    (h < 24 && m < 60 && sec <= 60).then_some((h, m, sec.min(59)))
}

/// A calendar date and time (UTC) as a `SystemTime`; `None` for impossible dates.
fn civil(year: u64, month: u64, day: u64, h: u64, m: u64, s: u64) -> Option<SystemTime> {
    if !(1900..=9999).contains(&year) {
        return None;
    }
    let leap = year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400));
    let days_in_month = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if day == 0 || day > days_in_month[(month - 1) as usize] {
        return None;
    }
    // Days from 1970-01-01 (H. Hinnant's days_from_civil), in signed arithmetic.
    let (y, mo, d) = (
        year as i64 - i64::from(month <= 2),
        month as i64,
        day as i64,
    );
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (mo + if mo > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + (h * 3_600 + m * 60 + s) as i64;
    let offset = std::time::Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(offset)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(offset)
    }
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
            // Names are read case-insensitively; the weekday is not checked.
            ("SUN, 06 NOV 1994 08:49:37 gmt", Some(784_111_777)),
            ("Mon, 06 Nov 1994 08:49:37 GMT", Some(784_111_777)),
            ("Thu, 01 Jan 1970 00:00:00 GMT", Some(0)),
            ("Thu, 29 Feb 2024 00:00:00 GMT", Some(1_709_164_800)),
            ("Sun, 06 Nov 1994 08:49:60 GMT", Some(784_111_799)),
            // Everything else must follow the grammar exactly.
            ("Thu, 29 Feb 2023 00:00:00 GMT", None),
            ("Sun, 06 Nov 1994 08:49:37 UTC", None),
            ("Sun, 06 Nov 94 08:49:37 GMT", None),
            ("Sun 06 Nov 1994 08:49:37 GMT", None),
            ("Sun, 06  Nov  1994 08:49:37 GMT", None),
            ("Sun, 06-Nov-1994 08:49:37 GMT", None),
            ("Sun, 06 Nov 1994 08.49.37 GMT", None),
            ("Sun, 06 Nov 1994 8:49:37 GMT", None),
            ("Sun, 06 Nov 1994 24:00:00 GMT", None),
            ("Sunday, 06 Nov 1994 08:49:37 GMT", None),
            ("Sun, 6 Nov 1994 08:49:37 GMT", None),
            ("Sun Nov 06 08:49:37 1994", Some(784_111_777)),
            ("Sun Nov 6 08:49:37 1994", None),
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
