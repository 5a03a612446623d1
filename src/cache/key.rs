//! The cache key: vhost + normalised path (+ query per `ApplyQueryString`), so equivalent
//! URLs share one object. `Range` never enters the key: every range of an object is served
//! from the same chunks.
//!
//! The key reads like STON's purge targets (`foo.com/img/a.jpg?x=1`), which is what makes
//! purge by URL, directory and `*` pattern a plain match over keys.

use std::borrow::Cow;

/// How a vhost builds keys (from `<Options>`).
#[derive(Debug, Clone, Copy)]
pub struct KeyRules {
    /// `<CaseSensitive>`: OFF lower-cases path and query.
    pub case_sensitive: bool,
    /// `<ApplyQueryString>`: OFF drops the query.
    pub apply_query_string: bool,
}

/// Separates a primary key from its `Vary` variant suffix; never appears in a URL. The store's
/// group separator, so a URL's variants are one group of the store.
pub const VARIANT_SEPARATOR: char = super::store::GROUP_SEPARATOR;

/// Builds the primary key of `path_and_query` on `vhost`.
pub fn cache_key(vhost: &str, path_and_query: &str, rules: KeyRules) -> String {
    let (path, query) = normal_parts(path_and_query);
    let mut key = String::with_capacity(vhost.len() + path_and_query.len() + 1);
    key.push_str(vhost);
    key.make_ascii_lowercase();
    key.push_str(&path);
    if rules.apply_query_string
        && let Some(q) = query
        && !q.is_empty()
    {
        key.push('?');
        key.push_str(&q);
    }
    if !rules.case_sensitive {
        key.make_ascii_lowercase();
    }
    key
}

/// The request target as it is keyed and forwarded: the path normalised (escapes of
/// unreserved characters decoded, dot-segments removed; RFC 3986 §6.2.2) and the query's
/// escapes normalised. Forwarding exactly what is keyed is what keeps one URL from being
/// answered with another's resource: `/p/evil/..` is `/p/` for the key, so it must be `/p/`
/// for the origin too.
pub fn normalize_target(path_and_query: &str) -> String {
    match normal_parts(path_and_query) {
        (path, None) => path.into_owned(),
        (path, Some(q)) => format!("{path}?{q}"),
    }
}

/// The path and the query of a request target in normal form, borrowed where they already
/// are (most paths have no escapes and no dot-segments): the one normalisation both the key
/// and the forwarded target are made of.
fn normal_parts(path_and_query: &str) -> (Cow<'_, str>, Option<Cow<'_, str>>) {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let path = if path.starts_with('/') && !path.contains('%') && !has_dot_segment(path) {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(normalize_path(path))
    };
    let query = query.map(|q| {
        if q.contains('%') {
            Cow::Owned(normalize_escapes(q))
        } else {
            Cow::Borrowed(q)
        }
    });
    (path, query)
}

/// The key of one variant of `primary` (the normalised values of the `Vary` fields).
pub fn variant_key(primary: &str, variant: &str) -> String {
    let mut k = String::with_capacity(primary.len() + variant.len() + 1);
    k.push_str(primary);
    k.push(VARIANT_SEPARATOR);
    k.push_str(variant);
    k
}

/// The primary key a stored key belongs to (strips a variant suffix).
pub fn primary_of(key: &str) -> &str {
    key.split(VARIANT_SEPARATOR).next().unwrap_or(key)
}

/// Whether `path` has a `.` or `..` segment.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| seg == "." || seg == "..")
}

/// Normalises a path: decodes escapes of unreserved characters, upper-cases the other
/// escapes, and removes dot-segments (RFC 3986 §5.2.4), always starting with `/`.
pub fn normalize_path(path: &str) -> String {
    let decoded = normalize_escapes(path);
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut joined = out.join("/");
    if !joined.starts_with('/') {
        joined.insert(0, '/');
    }
    joined
}

/// Decodes `%XX` of unreserved characters (ALPHA, DIGIT, `-._~`) and upper-cases the hex of
/// the others (RFC 3986 §6.2.2). A `%` that starts no valid escape is written `%25`, so
/// normalising twice gives the same key.
fn normalize_escapes(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            let c = h * 16 + l;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                out.push(c as char);
            } else {
                out.push('%');
                out.push(b[i + 1].to_ascii_uppercase() as char);
                out.push(b[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
            continue;
        }
        if b[i] == b'%' {
            out.push_str("%25");
            i += 1;
            continue;
        }
        // Multi-byte UTF-8 is copied through unchanged.
        let ch_len = utf8_len(b[i]);
        out.push_str(s.get(i..i + ch_len).unwrap_or(""));
        i += ch_len.max(1);
    }
    out
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STD: KeyRules = KeyRules {
        case_sensitive: true,
        apply_query_string: true,
    };

    #[test]
    fn the_forwarded_target_is_the_keyed_one() {
        for (raw, want) in [
            ("/p/evil/..", "/p/"),
            ("/q/%2e%2e/secret", "/secret"),
            ("/d/x/..?z=1", "/d/?z=1"),
            ("/a/%7Euser?%7e=%2f", "/a/~user?~=%2F"),
            ("/plain/path?x=1", "/plain/path?x=1"),
            ("/a%2fb", "/a%2Fb"),
        ] {
            let t = normalize_target(raw);
            assert_eq!(t, want, "{raw}");
            assert_eq!(cache_key("h", &t, STD), cache_key("h", raw, STD), "{raw}");
            assert_eq!(normalize_target(&t), t, "idempotent: {raw}");
        }
    }

    #[test]
    fn rfc3986_6_2_2_normalisation() {
        assert_eq!(
            cache_key("Foo.COM", "/a/%7Euser/%41.txt", STD),
            "foo.com/a/~user/A.txt"
        );
        assert_eq!(cache_key("foo.com", "/a%2fb", STD), "foo.com/a%2Fb");
        assert_eq!(cache_key("foo.com", "/a/./b/../c", STD), "foo.com/a/c");
        assert_eq!(cache_key("foo.com", "/../../x", STD), "foo.com/x");
        assert_eq!(cache_key("foo.com", "/a/b/..", STD), "foo.com/a/");
        assert_eq!(cache_key("foo.com", "/%zz", STD), "foo.com/%25zz");
        assert_eq!(cache_key("foo.com", "/%%41a", STD), "foo.com/%25Aa");
        assert_eq!(cache_key("foo.com", "/日本", STD), "foo.com/日本");
        assert_eq!(cache_key("foo.com", "/a/..", STD), "foo.com/");
        assert_eq!(cache_key("foo.com", "/a/.", STD), "foo.com/a/");
        assert_eq!(cache_key("foo.com", "/a/.b/..c", STD), "foo.com/a/.b/..c");
        assert_eq!(cache_key("foo.com", "a/b", STD), "foo.com/a/b");
        assert_eq!(cache_key("foo.com", "/a?%7e=%2f", STD), "foo.com/a?~=%2F");
        assert_eq!(cache_key("foo.com", "/a?b=c", STD), "foo.com/a?b=c");
    }

    #[test]
    fn query_and_case_rules() {
        assert_eq!(cache_key("h", "/A?x=1", STD), "h/A?x=1");
        let noq = KeyRules {
            apply_query_string: false,
            ..STD
        };
        assert_eq!(cache_key("h", "/A?x=1", noq), "h/A");
        let nocase = KeyRules {
            case_sensitive: false,
            ..STD
        };
        assert_eq!(cache_key("h", "/A?X=1", nocase), "h/a?x=1");
        assert_eq!(cache_key("h", "/a?", STD), "h/a");
    }

    #[test]
    fn variants_share_their_primary() {
        let k = variant_key("h/a", "gzip");
        assert_eq!(primary_of(&k), "h/a");
        assert_eq!(primary_of("h/a"), "h/a");
    }
}
