//! `Range` requests (RFC 9110 §14): parsing a `bytes=` range set against a known length.
//! Pure; the proxy turns the result into 206, multipart/byteranges or 416.

/// What a `Range` header asks of an object of a known length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: send the whole representation with 200 (absent, not `bytes`, or malformed).
    Full,
    /// One or more satisfiable ranges (inclusive byte offsets), overlapping ones merged.
    Ranges(Vec<(u64, u64)>),
    /// Syntactically valid but none satisfiable: 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// The most ranges honoured in one request; more is answered with the full body (a cheap
/// defence against range-amplification requests).
pub const MAX_RANGES: usize = 64;

/// Parses `header` against an object of `len` bytes.
pub fn parse(header: Option<&str>, len: u64) -> RangeRequest {
    let Some(h) = header else {
        return RangeRequest::Full;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    let mut out = Vec::new();
    let mut any = false;
    for part in spec.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((a, b)) = part.split_once('-') else {
            return RangeRequest::Full;
        };
        let (a, b) = (a.trim(), b.trim());
        any = true;
        let r = if a.is_empty() {
            // Suffix range: the last n bytes.
            let Ok(n) = b.parse::<u64>() else {
                return RangeRequest::Full;
            };
            (n > 0 && len > 0).then(|| (len.saturating_sub(n), len - 1))
        } else {
            let Ok(s) = a.parse::<u64>() else {
                return RangeRequest::Full;
            };
            let e = if b.is_empty() {
                u64::MAX
            } else {
                match b.parse::<u64>() {
                    Ok(e) if e >= s => e,
                    _ => return RangeRequest::Full,
                }
            };
            (s < len).then(|| (s, e.min(len - 1)))
        };
        if let Some(r) = r {
            out.push(r);
        }
    }
    if !any {
        return RangeRequest::Full;
    }
    if out.is_empty() {
        return RangeRequest::Unsatisfiable;
    }
    if out.len() > MAX_RANGES {
        return RangeRequest::Full;
    }
    out.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(out.len());
    for (s, e) in out {
        match merged.last_mut() {
            Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    RangeRequest::Ranges(merged)
}

/// A `Content-Range` of a 206 (RFC 9110 §14.4): bytes `first..=last` of `complete` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    /// First byte position.
    pub first: u64,
    /// Last byte position (inclusive).
    pub last: u64,
    /// Length of the whole representation.
    pub complete: u64,
}

impl ContentRange {
    /// Number of bytes in the range.
    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    /// Never true: a valid range holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Parses `bytes first-last/complete`. An unknown complete length (`/*`), an unsatisfied
/// range (`*/len`) or positions outside the length give None: such a part cannot be placed
/// in a stored object.
pub fn parse_content_range(text: &str) -> Option<ContentRange> {
    let rest = text.trim().strip_prefix("bytes")?;
    let rest = rest.strip_prefix(' ')?.trim_start();
    let (span, complete) = rest.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (first, last, complete) = (num(first)?, num(last)?, num(complete)?);
    (first <= last && last < complete).then_some(ContentRange {
        first,
        last,
        complete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::*;

    #[test]
    fn rfc9110_14_1_2_byte_ranges() {
        let cases: &[(&str, u64, RangeRequest)] = &[
            ("bytes=0-499", 1000, Ranges(vec![(0, 499)])),
            ("bytes=500-", 1000, Ranges(vec![(500, 999)])),
            ("bytes=-500", 1000, Ranges(vec![(500, 999)])),
            ("bytes=-5000", 1000, Ranges(vec![(0, 999)])),
            ("bytes=0-0,-1", 1000, Ranges(vec![(0, 0), (999, 999)])),
            ("bytes=0-10,5-20", 1000, Ranges(vec![(0, 20)])),
            ("bytes=0-10,11-20", 1000, Ranges(vec![(0, 20)])),
            ("bytes=900-2000", 1000, Ranges(vec![(900, 999)])),
            ("bytes=1000-", 1000, Unsatisfiable),
            ("bytes=-0", 1000, Unsatisfiable),
            ("bytes=5-1", 1000, Full),
            ("bytes=a-b", 1000, Full),
            ("items=0-1", 1000, Full),
            ("bytes=", 1000, Full),
            (" bytes= 1 - 2 ", 1000, Ranges(vec![(1, 2)])),
        ];
        for (h, len, want) in cases {
            assert_eq!(&parse(Some(h), *len), want, "{h}");
        }
        assert_eq!(parse(None, 10), Full);
    }

    #[test]
    fn rfc9110_14_4_content_range() {
        let ok = |f, l, c| {
            Some(ContentRange {
                first: f,
                last: l,
                complete: c,
            })
        };
        let cases: &[(&str, Option<ContentRange>)] = &[
            ("bytes 0-4/10", ok(0, 4, 10)),
            ("bytes 4-9/10", ok(4, 9, 10)),
            (" bytes  5-5/6 ", ok(5, 5, 6)),
            ("bytes 4-10/10", None),
            ("bytes 5-4/10", None),
            ("bytes 0-4/*", None),
            ("bytes */10", None),
            ("bytes -1-4/10", None),
            ("bytes 0-+4/10", None),
            ("items 0-4/10", None),
            ("bytes0-4/10", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(&parse_content_range(text), want, "{text}");
        }
        assert_eq!(ok(4, 9, 10).map(|c| c.len()), Some(6));
    }

    #[test]
    fn too_many_ranges_get_the_full_body() {
        let h = format!(
            "bytes={}",
            (0..100)
                .map(|i| format!("{}-{}", i * 10, i * 10))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(parse(Some(&h), 100_000), Full);
    }
}
