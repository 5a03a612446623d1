//! Targeted cache-control fields (RFC 9213): choosing which directive set governs the cache.
//!
//! Strata's target list, in precedence order, is `Strata-Cache-Control` (our own field,
//! addressed to Strata only), `CDN-Cache-Control` (RFC 9213 §3, addressed to every CDN), then
//! plain `Cache-Control`. The first targeted field that is present, non-empty and parses
//! replaces `Cache-Control` *and* `Expires` wholesale for this cache's decisions (RFC 9213
//! §2.2); nothing is merged. A targeted field that fails to parse is ignored as if absent.
//!
//! Targeted fields are Structured Field Dictionaries (RFC 8941), so their syntax is stricter
//! than `Cache-Control`: keys must be lower case, integers are bare (`max-age=60`), field
//! lists are strings (`private="set-cookie"`) and `?0` switches a directive off.
//!
//! These fields only steer this cache. When serving downstream they are forwarded unchanged
//! (the proxy layer owns that), so caches further down see the origin's intent too.

use http::{HeaderMap, HeaderName, header};

use super::cache_control::{RawDirective, ResponseDirectives, raw_directives};
use super::fields::trim_ows;

/// `Strata-Cache-Control`: a targeted field addressed to Strata alone; beats every other field.
pub const STRATA_CACHE_CONTROL: HeaderName = HeaderName::from_static("strata-cache-control");

/// `CDN-Cache-Control` (RFC 9213 §3): addressed to all CDN caches; beats `Cache-Control`.
pub const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// Which field the effective directives came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectiveSource {
    /// `Strata-Cache-Control`.
    StrataCacheControl,
    /// `CDN-Cache-Control`.
    CdnCacheControl,
    /// Plain `Cache-Control` (possibly absent, giving empty directives).
    CacheControl,
}

/// The directive set that governs this cache for one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveDirectives {
    /// The directives themselves.
    pub directives: ResponseDirectives,
    /// The field they were read from.
    pub source: DirectiveSource,
}

impl EffectiveDirectives {
    /// Whether `Expires` still counts. RFC 9213 §2.2 says a cache that uses a targeted field
    /// ignores both `Cache-Control` and `Expires`.
    pub fn honours_expires(&self) -> bool {
        self.source == DirectiveSource::CacheControl
    }
}

/// Picks the directives that govern this cache: `Strata-Cache-Control`, else
/// `CDN-Cache-Control`, else `Cache-Control` (see the module docs).
pub fn effective_directives(headers: &HeaderMap) -> EffectiveDirectives {
    let targeted = [
        (STRATA_CACHE_CONTROL, DirectiveSource::StrataCacheControl),
        (CDN_CACHE_CONTROL, DirectiveSource::CdnCacheControl),
    ];
    for (name, source) in targeted {
        if let Some(directives) = targeted_directives(headers, &name) {
            return EffectiveDirectives { directives, source };
        }
    }
    EffectiveDirectives {
        directives: ResponseDirectives::from_raw(&raw_directives(headers, &header::CACHE_CONTROL)),
        source: DirectiveSource::CacheControl,
    }
}

/// Parses one targeted field. `None` when it is absent, empty, or not a valid Dictionary
/// (RFC 9213 §2.1: such a field is ignored).
pub fn targeted_directives(headers: &HeaderMap, name: &HeaderName) -> Option<ResponseDirectives> {
    let mut lines = Vec::new();
    for value in headers.get_all(name) {
        lines.push(std::str::from_utf8(value.as_bytes()).ok()?);
    }
    // RFC 8941 §4.2: field lines are combined with commas before parsing.
    let joined = lines.join(",");
    let joined = trim_ows(&joined);
    if joined.is_empty() {
        return None;
    }
    let members = SfParser::new(joined).dictionary()?;
    let raw: Vec<RawDirective> = members.into_iter().filter_map(to_raw_directive).collect();
    Some(ResponseDirectives::from_raw(&raw))
}

/// Maps a Dictionary member to the `Cache-Control` shape so one interpreter serves both.
fn to_raw_directive((name, item): (String, SfItem)) -> Option<RawDirective> {
    let (value, malformed) = match item {
        // `?0` means "this directive is off".
        SfItem::Boolean(false) => return None,
        SfItem::Boolean(true) => (None, false),
        SfItem::Integer(n) if n >= 0 => (Some(n.to_string()), false),
        // Delta-seconds directives take an Integer: `max-age="60"` is the wrong type.
        SfItem::String(_) | SfItem::Token(_) if takes_seconds(&name) => (Some(String::new()), true),
        SfItem::String(s) | SfItem::Token(s) => (Some(s), false),
        // Negative integers, decimals, byte sequences and inner lists fit no cache
        // directive; RFC 9213 §2.1 says not to coerce them, so the argument is unusable.
        SfItem::Integer(_) | SfItem::Other => (Some(String::new()), true),
    };
    Some(RawDirective {
        name,
        value,
        malformed,
    })
}

/// Directives whose argument is delta-seconds (an sf-integer in a targeted field).
fn takes_seconds(name: &str) -> bool {
    matches!(
        name,
        "max-age" | "s-maxage" | "stale-while-revalidate" | "stale-if-error"
    )
}

/// The bare-item kinds that matter for cache directives.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SfItem {
    Integer(i64),
    String(String),
    Token(String),
    Boolean(bool),
    /// Decimal, byte sequence or inner list.
    Other,
}

/// A minimal RFC 8941 Dictionary parser: validates the full syntax but keeps only what the
/// cache needs (member keys and simple values; parameters are ignored per RFC 9213 §2.1).
struct SfParser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> SfParser<'a> {
    fn new(text: &'a str) -> SfParser<'a> {
        SfParser {
            bytes: text.as_bytes(),
            pos: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, expected: u8) -> bool {
        if self.peek() == Some(expected) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// RFC 8941 §4.2.2. Later duplicates of a key replace earlier ones (keeping order).
    fn dictionary(&mut self) -> Option<Vec<(String, SfItem)>> {
        let mut members: Vec<(String, SfItem)> = Vec::new();
        self.skip_sp();
        loop {
            let key = self.key()?;
            let item = if self.eat(b'=') {
                self.item_or_inner_list()?
            } else {
                self.parameters()?;
                SfItem::Boolean(true)
            };
            members.retain(|(k, _)| *k != key);
            members.push((key, item));
            self.skip_ows();
            if self.peek().is_none() {
                return Some(members);
            }
            if !self.eat(b',') {
                return None;
            }
            self.skip_ows();
            // A trailing comma (nothing after it) is invalid.
            self.peek()?;
        }
    }

    /// RFC 8941 §4.2.3.3: `( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )`.
    fn key(&mut self) -> Option<String> {
        let start = self.pos;
        match self.peek() {
            Some(b'a'..=b'z' | b'*') => self.pos += 1,
            _ => return None,
        }
        while matches!(
            self.peek(),
            Some(b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*')
        ) {
            self.pos += 1;
        }
        Some(String::from_utf8_lossy(&self.bytes[start..self.pos]).into_owned())
    }

    fn item_or_inner_list(&mut self) -> Option<SfItem> {
        if self.eat(b'(') {
            loop {
                self.skip_sp();
                if self.eat(b')') {
                    break;
                }
                self.bare_item()?;
                self.parameters()?;
                if !matches!(self.peek(), Some(b' ' | b')')) {
                    return None;
                }
            }
            self.parameters()?;
            return Some(SfItem::Other);
        }
        let item = self.bare_item()?;
        self.parameters()?;
        Some(item)
    }

    fn parameters(&mut self) -> Option<()> {
        while self.eat(b';') {
            self.skip_sp();
            self.key()?;
            if self.eat(b'=') {
                self.bare_item()?;
            }
        }
        Some(())
    }

    fn bare_item(&mut self) -> Option<SfItem> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => self.string(),
            b'*' | b'a'..=b'z' | b'A'..=b'Z' => Some(self.token()),
            b':' => self.byte_sequence(),
            b'?' => self.boolean(),
            _ => None,
        }
    }

    /// RFC 8941 §4.2.4: integers have at most 15 digits; decimals at most 12 integer and
    /// 3 fractional digits.
    fn number(&mut self) -> Option<SfItem> {
        let negative = self.eat(b'-');
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        let int_digits = self.pos - start;
        if int_digits == 0 {
            return None;
        }
        if self.eat(b'.') {
            let frac_start = self.pos;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.pos += 1;
            }
            let frac_digits = self.pos - frac_start;
            if int_digits > 12 || !(1..=3).contains(&frac_digits) {
                return None;
            }
            return Some(SfItem::Other);
        }
        if int_digits > 15 {
            return None;
        }
        let text = std::str::from_utf8(&self.bytes[start..self.pos]).ok()?;
        let magnitude: i64 = text.parse().ok()?;
        Some(SfItem::Integer(if negative {
            -magnitude
        } else {
            magnitude
        }))
    }

    fn string(&mut self) -> Option<SfItem> {
        self.pos += 1; // opening quote
        let mut out = Vec::new();
        loop {
            let b = self.peek()?;
            self.pos += 1;
            match b {
                b'"' => return Some(SfItem::String(String::from_utf8_lossy(&out).into_owned())),
                b'\\' => {
                    let escaped = self.peek()?;
                    if escaped != b'"' && escaped != b'\\' {
                        return None;
                    }
                    out.push(escaped);
                    self.pos += 1;
                }
                0x20..=0x7e => out.push(b),
                _ => return None,
            }
        }
    }

    fn token(&mut self) -> SfItem {
        let start = self.pos;
        self.pos += 1;
        while let Some(b) = self.peek() {
            if super::fields::is_tchar(b) || b == b':' || b == b'/' {
                self.pos += 1;
            } else {
                break;
            }
        }
        SfItem::Token(String::from_utf8_lossy(&self.bytes[start..self.pos]).into_owned())
    }

    fn byte_sequence(&mut self) -> Option<SfItem> {
        self.pos += 1; // opening colon
        while let Some(b) = self.peek() {
            self.pos += 1;
            match b {
                b':' => return Some(SfItem::Other),
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' | b'=' => {}
                _ => return None,
            }
        }
        None
    }

    fn boolean(&mut self) -> Option<SfItem> {
        self.pos += 1; // '?'
        let value = match self.peek()? {
            b'0' => false,
            b'1' => true,
            _ => return None,
        };
        self.pos += 1;
        Some(SfItem::Boolean(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::cache_control::FieldScope;
    use crate::cache::policy::test_support::hm;

    #[test]
    fn rfc9213_2_2_precedence_strata_then_cdn_then_cache_control() {
        // (headers, expected source, expected max_age)
        type Row<'a> = (&'a [(&'a str, &'a str)], DirectiveSource, Option<u64>);
        let cases: &[Row] = &[
            (
                &[("cache-control", "max-age=10")],
                DirectiveSource::CacheControl,
                Some(10),
            ),
            (
                &[
                    ("cache-control", "max-age=10"),
                    ("cdn-cache-control", "max-age=20"),
                ],
                DirectiveSource::CdnCacheControl,
                Some(20),
            ),
            (
                &[
                    ("cache-control", "max-age=10"),
                    ("cdn-cache-control", "max-age=20"),
                    ("strata-cache-control", "max-age=30"),
                ],
                DirectiveSource::StrataCacheControl,
                Some(30),
            ),
            // The targeted field replaces Cache-Control entirely: no merge of max-age.
            (
                &[
                    ("cache-control", "max-age=10"),
                    ("cdn-cache-control", "no-transform"),
                ],
                DirectiveSource::CdnCacheControl,
                None,
            ),
            // §2.1: invalid (upper-case key) or empty targeted fields are ignored.
            (
                &[
                    ("cache-control", "max-age=10"),
                    ("cdn-cache-control", "Max-Age=20"),
                ],
                DirectiveSource::CacheControl,
                Some(10),
            ),
            (
                &[("cache-control", "max-age=10"), ("cdn-cache-control", "  ")],
                DirectiveSource::CacheControl,
                Some(10),
            ),
            (
                &[
                    ("cdn-cache-control", "max-age=20,"),
                    ("strata-cache-control", "max-age=\"x"),
                ],
                DirectiveSource::CacheControl,
                None,
            ),
            // Several lines combine into one Dictionary; a later duplicate key wins (RFC 8941).
            (
                &[
                    ("cdn-cache-control", "max-age=20"),
                    ("cdn-cache-control", "max-age=40"),
                ],
                DirectiveSource::CdnCacheControl,
                Some(40),
            ),
        ];
        for (headers, source, max_age) in cases {
            let eff = effective_directives(&hm(headers));
            assert_eq!(
                (eff.source, eff.directives.max_age),
                (*source, *max_age),
                "{headers:?}"
            );
            assert_eq!(
                eff.honours_expires(),
                *source == DirectiveSource::CacheControl
            );
        }
    }

    #[test]
    fn rfc9213_2_1_structured_values_map_to_directives() {
        let parse =
            |v: &str| targeted_directives(&hm(&[("cdn-cache-control", v)]), &CDN_CACHE_CONTROL);
        let d = parse("max-age=60;x=1, no-store=?0, must-revalidate, private=\"Set-Cookie\"")
            .expect("valid dictionary");
        assert_eq!(d.max_age, Some(60));
        assert!(!d.no_store, "?0 switches a directive off");
        assert!(d.must_revalidate);
        assert_eq!(
            d.private,
            Some(FieldScope::Fields(vec!["set-cookie".into()]))
        );
        // Values that violate a directive's type are not coerced: max-age becomes stale.
        assert_eq!(parse("max-age=1.5").map(|d| d.max_age), Some(Some(0)));
        assert_eq!(parse("max-age=-3").map(|d| d.max_age), Some(Some(0)));
        assert_eq!(parse("max-age=\"60\"").map(|d| d.max_age), Some(Some(0)));
        assert_eq!(parse("max-age=sixty").map(|d| d.max_age), Some(Some(0)));
        assert_eq!(parse("s-maxage=(1 2)").map(|d| d.s_maxage), Some(Some(0)));
        assert_eq!(parse("none").map(|d| d.max_age), Some(None));
        for invalid in [
            "max-age=",
            "max-age=1234567890123456",
            "a=:@@:",
            "a=?2",
            "=1",
            "a b",
        ] {
            assert_eq!(parse(invalid), None, "{invalid:?} must be rejected");
        }
    }
}
