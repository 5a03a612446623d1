//! `Vary` handling (RFC 9111 §4.1): which request fields select a stored variant, and a
//! normalised variant key so that equivalent requests share one stored response.

use std::collections::BTreeMap;

use http::{HeaderMap, header};

use super::fields::{is_token, list_members, split_list, trim_ows};
use super::options::VaryMode;

/// The secondary-key specification carried by a response's `Vary` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VarySpec {
    /// No `Vary` (or only empty/invalid members): one variant per URL.
    None,
    /// `Vary: *`: the response can never be selected for a later request (§4.1).
    Star,
    /// The request fields that select the variant: lower-cased, sorted, deduplicated.
    Fields(Vec<String>),
}

/// The content codings the variant key distinguishes for `Accept-Encoding`: every coding of
/// the IANA HTTP Content Coding registry (but `identity`, which every client takes). A
/// response in any of them may be served only to clients that accept it, so each must split
/// the cache (a client offering `dcz` must not give its `dcz` answer to one that does not);
/// unregistered names are left out so that a client cannot make unbounded variants.
pub const DISTINGUISHED_CODINGS: [&str; 10] = [
    "aes128gcm",
    "br",
    "compress",
    "dcb",
    "dcz",
    "deflate",
    "exi",
    "gzip",
    "pack200-gzip",
    "zstd",
];

/// Reads the response's `Vary` field as RFC 9111 §4.1 defines it.
pub fn vary_fields(headers: &HeaderMap) -> VarySpec {
    let mut names = Vec::new();
    for member in list_members(headers, &header::VARY) {
        if member == "*" {
            return VarySpec::Star;
        }
        // Members that are not field names cannot match any request field; skip them.
        if is_token(&member) {
            names.push(member.to_ascii_lowercase());
        }
    }
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        VarySpec::None
    } else {
        VarySpec::Fields(names)
    }
}

/// Applies the operator's [`VaryMode`] to [`vary_fields`].
pub fn effective_vary(headers: &HeaderMap, mode: &VaryMode) -> VarySpec {
    match mode {
        VaryMode::Standard => vary_fields(headers),
        VaryMode::Ignore => VarySpec::None,
        VaryMode::Fields(allowed) => match vary_fields(headers) {
            VarySpec::Fields(names) => {
                let kept: Vec<String> = names
                    .into_iter()
                    .filter(|n| allowed.iter().any(|a| a.eq_ignore_ascii_case(n)))
                    .collect();
                if kept.is_empty() {
                    VarySpec::None
                } else {
                    VarySpec::Fields(kept)
                }
            }
            other => other,
        },
    }
}

/// The variant key of a request under `spec`: `None` for `Vary: *` (never reusable),
/// `Some("")` without `Vary`, otherwise one line per field.
///
/// Each line is `name:normalised-value`, or the bare `name` when the request lacks the
/// field, because RFC 9111 §4.1 lets an absent field match only another absent field. Lines
/// are joined with `\n`, which no field name or value can contain, so keys never collide.
/// Values are normalised (see [`normalize_field_value`]); `Accept-Encoding` is reduced to
/// the set of [`DISTINGUISHED_CODINGS`] the client accepts (see
/// [`normalize_accept_encoding`]).
pub fn variant_key(spec: &VarySpec, req_headers: &HeaderMap) -> Option<String> {
    let names = match spec {
        VarySpec::Star => return None,
        VarySpec::None => return Some(String::new()),
        VarySpec::Fields(names) => names,
    };
    let mut key = String::new();
    for name in names {
        if !key.is_empty() {
            key.push('\n');
        }
        key.push_str(name);
        let lines: Vec<String> = req_headers
            .get_all(name.as_str())
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        if lines.is_empty() {
            continue;
        }
        // Several field lines are equivalent to one line joined by commas (RFC 9110 §5.3).
        let joined = lines.join(",");
        key.push(':');
        if name == "accept-encoding" {
            key.push_str(&normalize_accept_encoding(&joined));
        } else if name == "accept-language" {
            key.push_str(&normalize_accept_language(&joined));
        } else {
            key.push_str(&normalize_field_value(&joined));
        }
    }
    Some(key)
}

/// Generic value normalisation: trims, drops empty list members and the whitespace around
/// commas (outside quoted strings). `a ,b,, c` and `a,b,c` thus select the same variant.
/// Case is kept, since most field values are case-sensitive.
pub fn normalize_field_value(value: &str) -> String {
    split_list(value).join(",")
}

/// Normalises an `Accept-Language` value (RFC 9110 §12.5.4): language ranges compared
/// case-insensitively, whitespace dropped, refused ranges (`q=0`), unreadable weights and
/// repeated ranges dropped, and ranges ordered by weight, so `en;q=0.5, de` and
/// `DE, en;q=0.5` share a variant. Ranges of equal weight keep their order: servers take
/// the leftmost as the preferred one, so `en, de` and `de, en` may get different answers.
pub fn normalize_accept_language(value: &str) -> String {
    let mut ranges: Vec<(u16, String)> = Vec::new();
    for member in split_list(value) {
        let mut parts = member.split(';');
        let range = trim_ows(parts.next().unwrap_or("")).to_ascii_lowercase();
        if range.is_empty() {
            continue;
        }
        let mut weight = Some(1000);
        for param in parts {
            let param = trim_ows(param);
            if let Some(q) = param
                .strip_prefix("q=")
                .or_else(|| param.strip_prefix("Q="))
            {
                weight = qvalue_millis(q);
            }
        }
        match weight {
            Some(w) if w > 0 => ranges.push((w, range)),
            _ => {}
        }
    }
    // Stable: equal weights stay in the client's order. A repeated range keeps its first.
    ranges.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut seen = std::collections::HashSet::new();
    ranges.retain(|(_, r)| seen.insert(r.clone()));
    ranges
        .iter()
        .map(|(w, r)| {
            if *w == 1000 {
                r.clone()
            } else {
                format!("{r};q={w}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A qvalue (RFC 9110 §12.4.2) in thousandths, `None` if unreadable.
fn qvalue_millis(text: &str) -> Option<u16> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_millis = format!("{frac:0<3}").parse::<u16>().ok()?;
    match int {
        "0" => Some(frac_millis),
        "1" if frac_millis == 0 => Some(1000),
        _ => None,
    }
}

/// Reduces an `Accept-Encoding` value to the sorted, comma-joined subset of
/// [`DISTINGUISHED_CODINGS`] the client accepts (RFC 9110 §12.5.3): codings are compared
/// case-insensitively, `x-gzip` means `gzip`, `q=0` refuses a coding, and `*` stands for
/// every coding not listed explicitly. Preference order (other q-values) is ignored: origins
/// pick a coding by what is acceptable, and keeping the order would multiply variants.
///
/// `gzip, deflate, br` and `BR;q=0.5, x-gzip, deflate` both give `br,deflate,gzip`;
/// `identity` gives the empty string.
pub fn normalize_accept_encoding(value: &str) -> String {
    let mut explicit: BTreeMap<String, bool> = BTreeMap::new();
    let mut star: Option<bool> = None;
    for member in split_list(value) {
        let mut parts = member.split(';');
        let coding = trim_ows(parts.next().unwrap_or("")).to_ascii_lowercase();
        let coding = match coding.as_str() {
            "x-gzip" => "gzip".to_owned(),
            "x-compress" => "compress".to_owned(),
            _ => coding,
        };
        let mut accepted = true;
        for param in parts {
            let param = trim_ows(param);
            if let Some(q) = param
                .strip_prefix("q=")
                .or_else(|| param.strip_prefix("Q="))
            {
                match qvalue_is_positive(q) {
                    Some(positive) => accepted = positive,
                    // A member with an unreadable weight is dropped: guessing either way
                    // could send an encoding the client cannot decode.
                    None => accepted = false,
                }
            }
        }
        if coding == "*" {
            star = Some(star.unwrap_or(true) && accepted);
        } else if is_token(&coding) {
            // If a coding is listed twice, a refusal wins.
            let entry = explicit.entry(coding).or_insert(true);
            *entry = *entry && accepted;
        }
    }
    DISTINGUISHED_CODINGS
        .iter()
        .filter(|c| explicit.get(**c).copied().or(star).unwrap_or(false))
        .copied()
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads a qvalue (RFC 9110 §12.4.2: `0[.ddd]` or `1[.000]`): `Some(q > 0)`, or `None`
/// when it is not a valid qvalue.
fn qvalue_is_positive(text: &str) -> Option<bool> {
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, f),
        None => (text, ""),
    };
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match int {
        "0" => Some(frac.bytes().any(|b| b != b'0')),
        "1" if frac.bytes().all(|b| b == b'0') => Some(true),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::test_support::hm;

    fn fields(names: &[&str]) -> VarySpec {
        VarySpec::Fields(names.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn rfc9111_4_1_vary_field_parsing() {
        let cases: &[(&[(&str, &str)], VarySpec)] = &[
            (&[], VarySpec::None),
            (&[("vary", "")], VarySpec::None),
            (&[("vary", "Accept-Encoding")], fields(&["accept-encoding"])),
            (
                &[
                    ("vary", "User-Agent, accept-encoding"),
                    ("vary", "ACCEPT-ENCODING"),
                ],
                fields(&["accept-encoding", "user-agent"]),
            ),
            (&[("vary", "Accept-Encoding, *")], VarySpec::Star),
            (&[("vary", "bad name, Origin")], fields(&["origin"])),
        ];
        for (headers, expected) in cases {
            assert_eq!(vary_fields(&hm(headers)), *expected, "{headers:?}");
        }
    }

    #[test]
    fn rfc9111_4_1_vary_modes() {
        let headers = hm(&[("vary", "Accept-Encoding, User-Agent")]);
        let star = hm(&[("vary", "*")]);
        let only_ae = VaryMode::Fields(vec!["Accept-Encoding".into()]);
        let only_cookie = VaryMode::Fields(vec!["cookie".into()]);
        assert_eq!(
            effective_vary(&headers, &VaryMode::Standard),
            fields(&["accept-encoding", "user-agent"])
        );
        assert_eq!(effective_vary(&headers, &VaryMode::Ignore), VarySpec::None);
        assert_eq!(effective_vary(&star, &VaryMode::Ignore), VarySpec::None);
        assert_eq!(
            effective_vary(&headers, &only_ae),
            fields(&["accept-encoding"])
        );
        assert_eq!(effective_vary(&headers, &only_cookie), VarySpec::None);
        assert_eq!(effective_vary(&star, &only_ae), VarySpec::Star);
    }

    #[test]
    fn rfc9111_4_1_variant_keys_normalise_equivalent_requests() {
        let spec = fields(&["accept-encoding", "accept-language", "x-device"]);
        // (request A, request B, should they share a variant?)
        type Req<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Req, Req, bool)] = &[
            (
                &[
                    ("accept-encoding", "gzip, deflate, br"),
                    ("accept-language", "en, fr"),
                ],
                &[
                    ("accept-encoding", "br,gzip,deflate"),
                    ("accept-language", "en ,fr"),
                ],
                true,
            ),
            (
                &[("accept-encoding", "gzip")],
                &[("accept-encoding", "x-gzip;q=0.8, identity")],
                true,
            ),
            (
                &[("accept-encoding", "gzip")],
                &[("accept-encoding", "gzip, br")],
                false,
            ),
            (
                &[("accept-encoding", "gzip;q=0")],
                &[("accept-encoding", "identity")],
                true,
            ),
            // Absent matches only absent (§4.1), even against an empty value.
            (&[], &[("x-device", "")], false),
            (&[], &[], true),
            // Several lines equal one comma-joined line.
            (
                &[("accept-language", "en"), ("accept-language", "fr")],
                &[("accept-language", "en, fr")],
                true,
            ),
            // Values are case-sensitive outside Accept-Encoding and Accept-Language.
            (&[("x-device", "Mobile")], &[("x-device", "mobile")], false),
            // Accept-Language: case, whitespace, refused and repeated ranges do not matter,
            // nor where a lower weight is written; the order among equal weights does (the
            // leftmost is preferred).
            (
                &[("accept-language", "en, de")],
                &[("accept-language", " EN ,de;q=1.0, fr;q=0, en")],
                true,
            ),
            (
                &[("accept-language", "en, de")],
                &[("accept-language", "de, en")],
                false,
            ),
            (
                &[("accept-language", "fr, de;q=0.5")],
                &[("accept-language", "de;q=0.5, FR")],
                true,
            ),
            (
                &[("accept-language", "en, de")],
                &[("accept-language", "en;q=0.5, de")],
                false,
            ),
        ];
        for (a, b, same) in cases {
            let ka = variant_key(&spec, &hm(a));
            let kb = variant_key(&spec, &hm(b));
            assert!(ka.is_some() && kb.is_some());
            assert_eq!(ka == kb, *same, "{a:?} vs {b:?}: {ka:?} / {kb:?}");
        }
        assert_eq!(variant_key(&VarySpec::Star, &hm(&[])), None);
        assert_eq!(
            variant_key(&VarySpec::None, &hm(&[("accept-encoding", "gzip")])),
            Some(String::new())
        );
        let key = variant_key(&spec, &hm(&[("accept-encoding", "gzip")])).unwrap_or_default();
        assert!(
            !key.contains('\0'),
            "the cache key module reserves NUL as its separator"
        );
    }

    #[test]
    fn rfc9110_12_5_3_accept_encoding_normalisation() {
        let cases: &[(&str, &str)] = &[
            ("gzip, deflate, br", "br,deflate,gzip"),
            ("GZIP", "gzip"),
            ("x-gzip", "gzip"),
            (
                "br;q=1.0, gzip;q=0.8, *;q=0.1",
                "aes128gcm,br,compress,dcb,dcz,deflate,exi,gzip,pack200-gzip,zstd",
            ),
            (
                "*",
                "aes128gcm,br,compress,dcb,dcz,deflate,exi,gzip,pack200-gzip,zstd",
            ),
            ("*;q=0, gzip", "gzip"),
            (
                "gzip;q=0, *",
                "aes128gcm,br,compress,dcb,dcz,deflate,exi,pack200-gzip,zstd",
            ),
            ("gzip;q=0.000", ""),
            ("gzip;q=0.001", "gzip"),
            ("gzip;q=2", ""),
            ("gzip, gzip;q=0", ""),
            ("identity", ""),
            ("", ""),
            // Every registered coding splits: a `compress` or `dcz` answer must reach only
            // clients that take it; unregistered names do not (variants stay bounded).
            ("compress, zstd", "compress,zstd"),
            (
                "gzip, deflate, br, zstd, dcb, dcz",
                "br,dcb,dcz,deflate,gzip,zstd",
            ),
            ("gzip, made-up-1, made-up-2", "gzip"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                normalize_accept_encoding(input),
                *expected,
                "input {input:?}"
            );
        }
    }
}
