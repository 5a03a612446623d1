//! What a request must be before it is routed: its target's form and its `Host` (RFC 9112
//! §3.2), and the methods an edge answers itself rather than forwarding (CONNECT, TRACE,
//! `OPTIONS *` and `Max-Forwards: 0`, RFC 9110 §7.6.2). Pure functions over the request's
//! head; the proxy turns a [`Verdict`] into an answer.

use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version, header};

/// The methods this server answers or forwards, for `Allow`.
pub const ALLOW: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS";

/// What to do with a request before routing it.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Route it by this host (the target's authority in absolute form, else `Host`; `None`
    /// for an HTTP/1.0 request without one: the default vhost).
    Route(Option<String>),
    /// Refuse it with this status and reason (400 for a malformed target or Host, 405 for
    /// TRACE, 501 for CONNECT).
    Refuse(StatusCode, &'static str),
    /// Answer `OPTIONS` ourselves: `OPTIONS *` asks about the server, and `Max-Forwards: 0`
    /// makes this server the final recipient.
    Options,
}

/// Checks a request's target and `Host` and says how to route it.
pub fn check(method: &Method, uri: &Uri, version: Version, headers: &HeaderMap) -> Verdict {
    if *method == Method::CONNECT {
        return Verdict::Refuse(
            StatusCode::NOT_IMPLEMENTED,
            "CONNECT (tunnels) is not offered",
        );
    }
    if *method == Method::TRACE {
        // Echoing a request's fields back (cookies included) helps cross-site tracing more
        // than it helps anyone debug an edge; most CDNs refuse it too.
        return Verdict::Refuse(StatusCode::METHOD_NOT_ALLOWED, "TRACE is not allowed");
    }
    let asterisk = uri.scheme().is_none() && uri.path() == "*" && uri.authority().is_none();
    if asterisk {
        return if *method == Method::OPTIONS {
            Verdict::Options
        } else {
            Verdict::Refuse(
                StatusCode::BAD_REQUEST,
                "\"*\" is a target for OPTIONS only",
            )
        };
    }
    let absolute = uri.scheme().is_some();
    if !absolute && uri.authority().is_some() {
        return Verdict::Refuse(
            StatusCode::BAD_REQUEST,
            "authority-form is for CONNECT only",
        );
    }
    if !absolute && !uri.path().starts_with('/') {
        return Verdict::Refuse(StatusCode::BAD_REQUEST, "the target must begin with \"/\"");
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return Verdict::Refuse(StatusCode::BAD_REQUEST, "more than one Host field");
    }
    if let Some(h) = first
        && !valid_host(h)
    {
        return Verdict::Refuse(StatusCode::BAD_REQUEST, "Host is not a host[:port]");
    }
    if *method == Method::OPTIONS && max_forwards(headers) == Some(0) {
        return Verdict::Options;
    }
    // Absolute form: the target's authority decides and Host is ignored (§3.2.2); HTTP/2
    // requests always arrive so (`:authority`).
    if absolute {
        return Verdict::Route(uri.authority().map(|a| a.as_str().to_string()));
    }
    match first {
        Some(h) => Verdict::Route(h.to_str().ok().map(str::to_string)),
        None if version == Version::HTTP_10 || version == Version::HTTP_09 => Verdict::Route(None),
        None => Verdict::Refuse(StatusCode::BAD_REQUEST, "an HTTP/1.1 request needs a Host"),
    }
}

/// `Max-Forwards` as a number, when present and readable.
pub fn max_forwards(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::MAX_FORWARDS)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The `Max-Forwards` to send upstream: one less than received (RFC 9110 §7.6.2), for the
/// methods it applies to; `None` when there is nothing to change.
pub fn decremented_max_forwards(method: &Method, headers: &HeaderMap) -> Option<HeaderValue> {
    if *method != Method::OPTIONS && *method != Method::TRACE {
        return None;
    }
    let n = max_forwards(headers)?;
    Some(HeaderValue::from(n.saturating_sub(1)))
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2): a reg-name (unreserved, sub-delims, `%`), an IPv4
/// address, or an IP literal in brackets, then an optional all-digit port.
fn valid_host(value: &HeaderValue) -> bool {
    let Ok(v) = value.to_str() else {
        return false;
    };
    let (host, port) = if let Some(rest) = v.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else {
            return false;
        };
        if literal.is_empty()
            || !literal
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match after {
            "" => ("x", None),
            p => match p.strip_prefix(':') {
                Some(port) => ("x", Some(port)),
                None => return false,
            },
        }
    } else {
        match v.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (v, None),
        }
    };
    let reg_name = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b));
    reg_name && port.is_none_or(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(method: &str, target: &str, version: Version, hosts: &[&str]) -> Verdict {
        let mut h = HeaderMap::new();
        for v in hosts {
            h.append(header::HOST, HeaderValue::from_str(v).unwrap());
        }
        let uri: Uri = target.parse().unwrap();
        check(
            &Method::from_bytes(method.as_bytes()).unwrap(),
            &uri,
            version,
            &h,
        )
    }

    fn route(host: &str) -> Verdict {
        Verdict::Route(Some(host.to_string()))
    }

    #[test]
    fn origin_form_routes_by_host() {
        let v11 = Version::HTTP_11;
        assert_eq!(verdict("GET", "/a?b", v11, &["a.com"]), route("a.com"));
        assert_eq!(
            verdict("GET", "/", v11, &["a.com:8080"]),
            route("a.com:8080")
        );
        assert_eq!(verdict("GET", "/", v11, &["[::1]:80"]), route("[::1]:80"));
        assert_eq!(verdict("GET", "/", v11, &["127.0.0.1"]), route("127.0.0.1"));
        // HTTP/1.0 may omit Host (the default vhost answers); HTTP/1.1 may not.
        assert_eq!(
            verdict("GET", "/", Version::HTTP_10, &[]),
            Verdict::Route(None)
        );
        assert!(matches!(
            verdict("GET", "/", v11, &[]),
            Verdict::Refuse(StatusCode::BAD_REQUEST, _)
        ));
    }

    #[test]
    fn bad_hosts_and_targets_are_refused() {
        let v11 = Version::HTTP_11;
        for hosts in [
            &["a.com", "b.com"][..],
            &["a b"],
            &["a.com/evil"],
            &["a.com@evil"],
            &["[::1"],
            &[""],
            &["a.com:80x"],
            &["[zz]"],
        ] {
            assert!(
                matches!(
                    verdict("GET", "/", v11, hosts),
                    Verdict::Refuse(StatusCode::BAD_REQUEST, _)
                ),
                "{hosts:?}"
            );
        }
        for target in ["foo", "*", "a.com:80"] {
            assert!(
                matches!(
                    verdict("GET", target, v11, &["a.com"]),
                    Verdict::Refuse(StatusCode::BAD_REQUEST, _)
                ),
                "{target}"
            );
        }
    }

    #[test]
    fn absolute_form_routes_by_its_authority_not_host() {
        let v = verdict("GET", "http://b.com/x", Version::HTTP_11, &["a.com"]);
        assert_eq!(v, route("b.com"));
        assert_eq!(
            verdict("GET", "http://b.com:81/x", Version::HTTP_2, &[]),
            route("b.com:81")
        );
    }

    #[test]
    fn methods_the_edge_answers_itself() {
        let v11 = Version::HTTP_11;
        assert!(matches!(
            verdict("CONNECT", "a.com:443", v11, &["a.com"]),
            Verdict::Refuse(StatusCode::NOT_IMPLEMENTED, _)
        ));
        assert!(matches!(
            verdict("TRACE", "/", v11, &["a.com"]),
            Verdict::Refuse(StatusCode::METHOD_NOT_ALLOWED, _)
        ));
        assert_eq!(verdict("OPTIONS", "*", v11, &["a.com"]), Verdict::Options);
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a.com"));
        h.insert(header::MAX_FORWARDS, HeaderValue::from_static("0"));
        let uri: Uri = "/x".parse().unwrap();
        assert_eq!(check(&Method::OPTIONS, &uri, v11, &h), Verdict::Options);
        // Other methods ignore Max-Forwards (RFC 9110 §7.6.2).
        assert_eq!(check(&Method::GET, &uri, v11, &h), route("a.com"));
        h.insert(header::MAX_FORWARDS, HeaderValue::from_static("5"));
        assert_eq!(check(&Method::OPTIONS, &uri, v11, &h), route("a.com"));
        assert_eq!(
            decremented_max_forwards(&Method::OPTIONS, &h),
            Some(HeaderValue::from(4u64))
        );
        assert_eq!(decremented_max_forwards(&Method::GET, &h), None);
    }
}
