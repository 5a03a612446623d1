//! Invalidation after unsafe requests (RFC 9111 §4.4).
//!
//! A successful unsafe request (POST, PUT, DELETE, PATCH, or any method not known to be safe)
//! probably changed the resource, so the cache drops what it holds for the target URI and for
//! the URIs in `Location` / `Content-Location` on the same host. Other hosts are never
//! touched: otherwise one site could purge another's cache entries (§4.4, last paragraph).

use http::{HeaderMap, Method, header};

use super::fields::trim_ows;

/// Is `method` unsafe for invalidation purposes: anything except GET, HEAD, OPTIONS and
/// TRACE (RFC 9110 §9.2.1), including unknown extension methods?
pub fn is_unsafe_method(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The path+query strings whose stored responses must be invalidated after `method` on
/// `request_path_and_query` at `request_authority` (the request's `Host`, port included if
/// sent) got `status` with `response_headers`.
///
/// Empty unless the method is unsafe and the status is 2xx or 3xx (a "non-error" status).
/// Then: the request target, followed by `Location` and `Content-Location` when they resolve
/// (RFC 3986 §5.2) to the same authority (host compared case-insensitively, default ports
/// ignored). Results are normalised with [`normalize_path_and_query`] and deduplicated; pass
/// them through the cache-key builder like any request target.
pub fn invalidation_targets(
    method: &Method,
    status: u16,
    request_path_and_query: &str,
    request_authority: &str,
    response_headers: &HeaderMap,
) -> Vec<String> {
    if !is_unsafe_method(method) || !(200..=399).contains(&status) {
        return Vec::new();
    }
    let mut targets = vec![normalize_path_and_query(request_path_and_query)];
    let base_path = request_path_and_query
        .split(['?', '#'])
        .next()
        .unwrap_or("/");
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        // Both fields are singletons; extra lines are ignored rather than guessed at.
        let Some(value) = response_headers.get(&name) else {
            continue;
        };
        let Ok(text) = std::str::from_utf8(value.as_bytes()) else {
            continue;
        };
        if let Some(path) = resolve_same_origin(trim_ows(text), base_path, request_authority)
            && !targets.contains(&path)
        {
            targets.push(path);
        }
    }
    targets
}

/// Whether a `POST` answer may be stored for later `GET`s of its target (RFC 9110 §9.3.3):
/// a 200 whose `Content-Location` names the request target itself (same authority, same
/// normalised path and query). The caller also requires explicit freshness.
pub fn post_answer_names_its_target(
    status: u16,
    request_path_and_query: &str,
    request_authority: &str,
    response_headers: &HeaderMap,
) -> bool {
    if status != 200 {
        return false;
    }
    let mut values = response_headers.get_all(header::CONTENT_LOCATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Ok(text) = std::str::from_utf8(value.as_bytes()) else {
        return false;
    };
    let base_path = request_path_and_query
        .split(['?', '#'])
        .next()
        .unwrap_or("/");
    resolve_same_origin(trim_ows(text), base_path, request_authority)
        .is_some_and(|p| p == normalize_path_and_query(request_path_and_query))
}

/// Resolves a URI reference against the request and returns its normalised path+query,
/// or `None` when it names another authority, a non-HTTP scheme, or nothing at all.
fn resolve_same_origin(
    reference: &str,
    base_path: &str,
    request_authority: &str,
) -> Option<String> {
    let reference = reference.split('#').next().unwrap_or("");
    if reference.is_empty() {
        return None; // "this same document": already the request target
    }
    if let Some((scheme, rest)) = split_scheme(reference) {
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return None;
        }
        let rest = rest.strip_prefix("//")?;
        return same_authority_path(rest, Some(&scheme), request_authority);
    }
    if let Some(rest) = reference.strip_prefix("//") {
        return same_authority_path(rest, None, request_authority);
    }
    if reference.starts_with('/') {
        return Some(normalize_path_and_query(reference));
    }
    if reference.starts_with('?') {
        return Some(normalize_path_and_query(&format!("{base_path}{reference}")));
    }
    // A relative path: merge with the directory of the request path (RFC 3986 §5.2.3).
    let directory = match base_path.rfind('/') {
        Some(i) => &base_path[..=i],
        None => "/",
    };
    Some(normalize_path_and_query(&format!("{directory}{reference}")))
}

/// Splits `scheme:rest` when the reference starts with a valid scheme (RFC 3986 §3.1).
fn split_scheme(reference: &str) -> Option<(&str, &str)> {
    let colon = reference.find(':')?;
    let scheme = &reference[..colon];
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (first_ok && rest_ok).then(|| (scheme, &reference[colon + 1..]))
}

/// `authority/path?query` (the part after `//`): the normalised path+query if the
/// authority is the request's.
fn same_authority_path(
    rest: &str,
    scheme: Option<&str>,
    request_authority: &str,
) -> Option<String> {
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at(end);
    if normalize_authority(authority, scheme) != normalize_authority(request_authority, scheme) {
        return None;
    }
    Some(normalize_path_and_query(path_and_query))
}

/// Lower-cases the host, drops userinfo and a port that is the scheme's default (both 80
/// and 443 when the scheme is unknown, as for `//host/path` references). Treating more
/// authorities as equal can only invalidate a little more, which is always safe.
fn normalize_authority(authority: &str, scheme: Option<&str>) -> String {
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    let lower = host_port.to_ascii_lowercase();
    let default_ports: &[&str] = match scheme {
        Some("http") => &[":80"],
        Some("https") => &[":443"],
        _ => &[":80", ":443"],
    };
    for port in default_ports {
        if let Some(host) = lower.strip_suffix(port) {
            return host.to_owned();
        }
    }
    lower
}

/// Normalises a path+query for invalidation: drops a fragment, removes dot-segments from the
/// path (RFC 3986 §5.2.4), makes it start with `/`, and upper-cases percent-escape hex digits
/// (RFC 3986 §6.2.2.1). The query is kept otherwise untouched.
pub fn normalize_path_and_query(path_and_query: &str) -> String {
    let without_fragment = path_and_query.split('#').next().unwrap_or("");
    let (path, query) = match without_fragment.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (without_fragment, None),
    };
    let mut out = uppercase_escapes(&remove_dot_segments(path));
    if let Some(q) = query {
        out.push('?');
        out.push_str(&uppercase_escapes(q));
    }
    out
}

/// RFC 3986 §5.2.4 for an absolute path; the result always starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').collect();
    let mut out: Vec<&str> = Vec::new();
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {}
            ".." => {
                out.pop();
            }
            // The empty segment before a leading '/' is the root, not a path component.
            "" if i == 0 => {}
            s => out.push(s),
        }
    }
    // A trailing "." or ".." leaves a directory, so the result keeps its trailing slash.
    let trailing_dir = matches!(segments.last(), Some(&"." | &".."));
    let mut result = String::with_capacity(path.len() + 1);
    result.push('/');
    result.push_str(&out.join("/"));
    if trailing_dir && !out.is_empty() {
        result.push('/');
    }
    result
}

/// Upper-cases the two hex digits after each `%`.
fn uppercase_escapes(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let is_escape = bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit();
        if is_escape {
            out.push('%');
            out.push(char::from(bytes[i + 1].to_ascii_uppercase()));
            out.push(char::from(bytes[i + 2].to_ascii_uppercase()));
            i += 3;
        } else {
            // Copy one whole (possibly multi-byte) character.
            let ch_len = text[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&text[i..i + ch_len]);
            i += ch_len;
        }
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn rfc9110_9_3_3_post_answers_naming_their_target() {
        let h = |loc: &str| {
            let mut m = HeaderMap::new();
            m.insert(
                header::CONTENT_LOCATION,
                http::HeaderValue::from_str(loc).expect("value"),
            );
            m
        };
        let cases: &[(u16, &str, bool)] = &[
            (200, "/a/b?x=1", true),
            (200, "http://example.com/a/b?x=1", true),
            (200, "http://EXAMPLE.com:80/a/./b?x=1", true),
            (200, "b?x=1", true),
            (200, "/a/b", false),
            (200, "/a/c?x=1", false),
            (200, "http://other.com/a/b?x=1", false),
            (201, "/a/b?x=1", false),
        ];
        for (status, loc, want) in cases {
            assert_eq!(
                post_answer_names_its_target(*status, "/a/b?x=1", "example.com", &h(loc)),
                *want,
                "{status} {loc}"
            );
        }
        assert!(!post_answer_names_its_target(
            200,
            "/a/b",
            "example.com",
            &HeaderMap::new()
        ));
    }

    use super::*;
    use crate::cache::policy::test_support::hm;

    type Headers<'a> = &'a [(&'a str, &'a str)];

    #[test]
    fn rfc9111_4_4_invalidation_targets() {
        // (method, status, request target, response headers, expected)
        let cases: Vec<(Method, u16, &str, Headers, Vec<&str>)> = vec![
            (Method::GET, 200, "/a", &[], vec![]),
            (Method::HEAD, 200, "/a", &[], vec![]),
            (Method::OPTIONS, 200, "/a", &[], vec![]),
            (Method::POST, 200, "/a?x=1", &[], vec!["/a?x=1"]),
            (Method::DELETE, 204, "/a", &[], vec!["/a"]),
            (Method::PUT, 303, "/a", &[], vec!["/a"]),
            // Error statuses do not invalidate.
            (Method::POST, 404, "/a", &[], vec![]),
            (Method::POST, 500, "/a", &[], vec![]),
            (Method::POST, 100, "/a", &[], vec![]),
            // Unknown methods are unsafe.
            (
                Method::from_bytes(b"PURGEX").unwrap_or(Method::POST),
                200,
                "/a",
                &[],
                vec!["/a"],
            ),
            // Location / Content-Location on the same host, relative or absolute.
            (
                Method::POST,
                201,
                "/items",
                &[("location", "/items/7")],
                vec!["/items", "/items/7"],
            ),
            (
                Method::POST,
                201,
                "/items/",
                &[("location", "7")],
                vec!["/items/", "/items/7"],
            ),
            (
                Method::POST,
                201,
                "/a/b",
                &[("location", "../c?z=1#frag")],
                vec!["/a/b", "/c?z=1"],
            ),
            (
                Method::POST,
                201,
                "/a/b?q",
                &[("location", "?page=2")],
                vec!["/a/b?q", "/a/b?page=2"],
            ),
            (
                Method::PUT,
                200,
                "/a",
                &[("content-location", "http://Example.COM:80/a/x")],
                vec!["/a", "/a/x"],
            ),
            (
                Method::PUT,
                200,
                "/a",
                &[("content-location", "https://example.com:443/s")],
                vec!["/a", "/s"],
            ),
            (
                Method::PUT,
                200,
                "/a",
                &[("content-location", "//example.com/n")],
                vec!["/a", "/n"],
            ),
            (
                Method::PUT,
                200,
                "/a",
                &[("location", "https://example.com")],
                vec!["/a", "/"],
            ),
            (Method::PUT, 200, "/a", &[("location", "/a")], vec!["/a"]),
            // Other hosts, ports or schemes are never invalidated.
            (
                Method::POST,
                201,
                "/a",
                &[("location", "http://evil.example/a")],
                vec!["/a"],
            ),
            (
                Method::POST,
                201,
                "/a",
                &[("location", "http://example.com:8080/b")],
                vec!["/a"],
            ),
            (
                Method::POST,
                201,
                "/a",
                &[("location", "ftp://example.com/b")],
                vec!["/a"],
            ),
            (
                Method::POST,
                201,
                "/a",
                &[("location", "mailto:x@example.com")],
                vec!["/a"],
            ),
        ];
        for (method, status, target, resp, expected) in cases {
            let got = invalidation_targets(&method, status, target, "example.com", &hm(resp));
            assert_eq!(got, expected, "{method} {status} {target} {resp:?}");
        }
    }

    #[test]
    fn rfc3986_5_2_4_path_normalisation() {
        let cases: &[(&str, &str)] = &[
            ("/a/b/c/./../../g", "/a/g"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("", "/"),
            ("/", "/"),
            ("/a//b", "/a//b"),
            ("/a%2fb?x=%3d", "/a%2Fb?x=%3D"),
            ("/x#frag", "/x"),
            ("/%zz/%4", "/%zz/%4"),
            ("/caf\u{e9}", "/caf\u{e9}"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_path_and_query(input), *expected, "{input:?}");
        }
    }
}
