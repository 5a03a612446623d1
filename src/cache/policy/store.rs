//! Storing responses (RFC 9111 §3): may this response enter the shared cache, and which of
//! its header fields must be left out.

use http::{HeaderMap, Method, header};

use super::cache_control::{RequestDirectives, ResponseDirectives};
use super::fields::remove_hop_by_hop_headers;
use super::freshness::ResponseFacts;
use super::options::PolicyOptions;
use super::targeted::effective_directives;
use super::vary::{VarySpec, effective_vary};

/// Status codes that are heuristically cacheable (RFC 9110 §15.1): they may be stored and
/// given a heuristic lifetime without explicit freshness information.
pub const HEURISTICALLY_CACHEABLE: [u16; 12] =
    [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// Is `status` heuristically cacheable (RFC 9110 §15.1)?
pub fn is_heuristically_cacheable(status: u16) -> bool {
    HEURISTICALLY_CACHEABLE.contains(&status)
}

/// Does the cache understand `status` (RFC 9111 §3, needed for `must-understand`, 206 and
/// 304)? These are the final status codes defined by RFC 9110, whose caching rules we follow.
pub fn is_understood_status(status: u16) -> bool {
    matches!(
        status,
        200..=206 | 300..=305 | 307 | 308 | 400..=417 | 421 | 422 | 426 | 500..=505
    )
}

/// May the answer to this request be stored? GET or HEAD without request `no-store`
/// (RFC 9111 §5.2.1.5). HEAD counts because it can be answered from a stored GET response;
/// its own response is never stored (see [`check_storable`]).
///
/// Lookup is a separate question: a stored response may still be reused for a request that
/// carries `no-store` (see [`decide_reuse`](super::reuse::decide_reuse)).
pub fn is_cacheable_request(method: &Method, headers: &HeaderMap) -> bool {
    (method == Method::GET || method == Method::HEAD) && !RequestDirectives::parse(headers).no_store
}

/// Why a response may not be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStorable {
    /// Only GET responses are stored. (A HEAD response has no content; storing it would
    /// shadow the GET response, and updating a GET entry from HEAD is not implemented.)
    Method,
    /// The request carried `no-store` (§5.2.1.5).
    RequestNoStore,
    /// Not a final status code (1xx, or outside 100–599).
    Status,
    /// A 304 refreshes a stored response (§4.3.4); it is never a new entry.
    NotModified,
    /// `must-understand` with a status code the cache does not understand (§5.2.2.3).
    MustUnderstand,
    /// Unqualified `private` (§5.2.2.7): a shared cache never stores it.
    Private,
    /// The request had `Authorization` and the response lacks `public`, `s-maxage` and
    /// `must-revalidate` (§3.5).
    Authorization,
    /// `no-store` (§5.2.2.5) and no STON `NoStore` TTL.
    NoStore,
    /// `Vary: *` (§4.1): it could never be reused, so it is not kept.
    VaryStar,
    /// No explicit freshness, not `public`, not heuristically cacheable, and no STON TTL.
    NoFreshnessInformation,
}

/// `no-store` as it applies to `status`: `must-understand` makes a cache that understands
/// the status code ignore `no-store` (RFC 9111 §5.2.2.3).
pub(crate) fn effective_no_store(d: &ResponseDirectives, status: u16) -> bool {
    d.no_store && !(d.must_understand && is_understood_status(status))
}

/// Checks RFC 9111 §3 (plus the STON overrides) for storing `response`, the answer to a
/// request with `req_method` and `req_headers`, in the shared cache. Only the response's
/// status and header fields are consulted, not its times.
///
/// Rules that no option relaxes: `private`, the `Authorization` rule of §3.5, `Vary: *`
/// (unless `Vary` is ignored by configuration), and `must-understand`. 206 responses are
/// storable here; assembling partial content is the storage engine's job. `Set-Cookie` does
/// not prevent storage; [`strip_unstorable_headers`] removes it.
pub fn check_storable(
    req_method: &Method,
    req_headers: &HeaderMap,
    response: &ResponseFacts,
    opts: &PolicyOptions,
) -> Result<(), NotStorable> {
    let status = response.status;
    let resp_headers = &response.headers;
    if req_method != Method::GET {
        return Err(NotStorable::Method);
    }
    if RequestDirectives::parse(req_headers).no_store {
        return Err(NotStorable::RequestNoStore);
    }
    if !(200..=599).contains(&status) {
        return Err(NotStorable::Status);
    }
    if status == 304 {
        return Err(NotStorable::NotModified);
    }
    let effective = effective_directives(resp_headers);
    let d = &effective.directives;
    if d.must_understand && !is_understood_status(status) {
        return Err(NotStorable::MustUnderstand);
    }
    if d.private_all() {
        return Err(NotStorable::Private);
    }
    if req_headers.contains_key(header::AUTHORIZATION)
        && !(d.public || d.s_maxage.is_some() || d.must_revalidate)
    {
        return Err(NotStorable::Authorization);
    }
    let ston = opts.ttl.as_ref();
    if effective_no_store(d, status) && ston.and_then(|t| t.no_store).is_none() {
        return Err(NotStorable::NoStore);
    }
    if effective_vary(resp_headers, &opts.vary_mode) == VarySpec::Star {
        return Err(NotStorable::VaryStar);
    }
    let explicit = d.max_age.is_some()
        || d.s_maxage.is_some()
        || (effective.honours_expires() && resp_headers.contains_key(header::EXPIRES));
    let ston_ttl = ston.is_some_and(|t| {
        t.for_status(status).is_some()
            || (d.no_store && t.no_store.is_some())
            || (d.no_cache_all() && t.no_cache.is_some())
    });
    if explicit || d.public || is_heuristically_cacheable(status) || ston_ttl {
        Ok(())
    } else {
        Err(NotStorable::NoFreshnessInformation)
    }
}

/// [`check_storable`] as a yes/no answer.
pub fn is_storable(
    req_method: &Method,
    req_headers: &HeaderMap,
    response: &ResponseFacts,
    opts: &PolicyOptions,
) -> bool {
    check_storable(req_method, req_headers, response, opts).is_ok()
}

/// Removes what must not be stored with a response (RFC 9111 §3.1 and STON rules):
/// hop-by-hop fields (including those `Connection` names), `Set-Cookie` (a cookie belongs
/// to one client and must never reach another), and the fields named by `no-cache="..."`
/// or `private="..."` in the effective directives.
///
/// Stripping `no-cache`-named fields at store time is stricter than §5.2.2.4 (which allows
/// sending them after revalidation) but simpler and never wrong. For the same reason the
/// names are taken from *both* the effective directives and plain `Cache-Control`: a
/// targeted field overrides the caching decision, but dropping a field the origin marked
/// private elsewhere costs nothing, while keeping it could leak one user's data to another.
/// The targeted fields themselves are kept: they are forwarded downstream.
pub fn strip_unstorable_headers(headers: &mut HeaderMap) {
    remove_hop_by_hop_headers(headers);
    headers.remove(header::SET_COOKIE);
    headers.remove("set-cookie2");
    // RFC 9111 §3.1: authentication fields addressed to one proxy hop are not stored.
    headers.remove("proxy-authentication-info");
    let effective = effective_directives(headers).directives;
    let plain = ResponseDirectives::from_cache_control(headers);
    let named: Vec<String> = [
        &effective.no_cache,
        &effective.private,
        &plain.no_cache,
        &plain.private,
    ]
    .into_iter()
    .flatten()
    .flat_map(|scope| scope.field_names().iter().cloned())
    .collect();
    for name in named {
        headers.remove(name.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::options::{StonTtl, VaryMode};
    use crate::cache::policy::test_support::{facts, hm};

    type Headers<'a> = &'a [(&'a str, &'a str)];

    /// `check_storable` for a response with `status` and `resp` headers.
    fn check(
        method: &Method,
        req: Headers,
        status: u16,
        resp: Headers,
        opts: &PolicyOptions,
    ) -> Result<(), NotStorable> {
        check_storable(method, &hm(req), &facts(status, resp, 0, 0), opts)
    }

    #[test]
    fn rfc9111_3_storability_table() {
        const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
        let get = Method::GET;
        // (method, request headers, status, response headers, expected)
        type Row<'a> = (
            &'a Method,
            Headers<'a>,
            u16,
            Headers<'a>,
            Result<(), NotStorable>,
        );
        let cases: Vec<Row> = vec![
            (&get, &[], 200, &[], Ok(())),
            (&get, &[], 200, &[("cache-control", "max-age=60")], Ok(())),
            (
                &Method::HEAD,
                &[],
                200,
                &[("cache-control", "max-age=60")],
                Err(NotStorable::Method),
            ),
            (
                &Method::POST,
                &[],
                200,
                &[("cache-control", "max-age=60")],
                Err(NotStorable::Method),
            ),
            (
                &get,
                &[("cache-control", "no-store")],
                200,
                &[],
                Err(NotStorable::RequestNoStore),
            ),
            (&get, &[], 100, &[], Err(NotStorable::Status)),
            (
                &get,
                &[],
                304,
                &[("cache-control", "max-age=60")],
                Err(NotStorable::NotModified),
            ),
            (
                &get,
                &[],
                200,
                &[("cache-control", "no-store")],
                Err(NotStorable::NoStore),
            ),
            (
                &get,
                &[],
                200,
                &[("cache-control", "private")],
                Err(NotStorable::Private),
            ),
            (
                &get,
                &[],
                200,
                &[("cache-control", "private=\"x-user\"")],
                Ok(()),
            ),
            (&get, &[], 200, &[("vary", "*")], Err(NotStorable::VaryStar)),
            (&get, &[], 200, &[("set-cookie", "a=b")], Ok(())),
            (&get, &[], 206, &[], Ok(())),
            // Not heuristically cacheable, so it needs explicit freshness or public.
            (
                &get,
                &[],
                302,
                &[],
                Err(NotStorable::NoFreshnessInformation),
            ),
            (&get, &[], 302, &[("cache-control", "max-age=60")], Ok(())),
            (&get, &[], 500, &[("expires", DATE)], Ok(())),
            (&get, &[], 403, &[("cache-control", "public")], Ok(())),
            (
                &get,
                &[],
                500,
                &[("cache-control", "no-cache")],
                Err(NotStorable::NoFreshnessInformation),
            ),
            (&get, &[], 404, &[], Ok(())),
            // A targeted field hides Expires (RFC 9213 §2.2).
            (
                &get,
                &[],
                500,
                &[("expires", DATE), ("cdn-cache-control", "no-transform")],
                Err(NotStorable::NoFreshnessInformation),
            ),
            (
                &get,
                &[],
                200,
                &[
                    ("cache-control", "no-store"),
                    ("cdn-cache-control", "max-age=60"),
                ],
                Ok(()),
            ),
            (
                &get,
                &[],
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("strata-cache-control", "no-store"),
                ],
                Err(NotStorable::NoStore),
            ),
        ];
        for (method, req, status, resp, expected) in cases {
            let got = check(method, req, status, resp, &PolicyOptions::default());
            assert_eq!(got, expected, "{method} {req:?} {status} {resp:?}");
        }
    }

    #[test]
    fn rfc9111_3_5_authorization_requires_explicit_permission() {
        let auth: Headers = &[("authorization", "Basic dTpw")];
        let cases: &[(Headers, bool)] = &[
            (&[("cache-control", "max-age=60")], false),
            (&[], false),
            (&[("cache-control", "public")], true),
            (&[("cache-control", "s-maxage=60")], true),
            (&[("cache-control", "must-revalidate, max-age=60")], true),
            (
                &[
                    ("cdn-cache-control", "public"),
                    ("cache-control", "private"),
                ],
                true,
            ),
        ];
        let ston = PolicyOptions {
            ttl: Some(StonTtl {
                res2xx: Some(600),
                ..Default::default()
            }),
            ..Default::default()
        };
        for (resp, expected) in cases {
            for opts in [&PolicyOptions::default(), &ston] {
                assert_eq!(
                    is_storable(&Method::GET, &hm(auth), &facts(200, resp, 0, 0), opts),
                    *expected,
                    "{resp:?}"
                );
            }
        }
    }

    #[test]
    fn rfc9111_5_2_2_3_must_understand() {
        let cases: &[(u16, &str, Result<(), NotStorable>)] = &[
            (200, "must-understand, no-store, max-age=60", Ok(())),
            (
                299,
                "must-understand, no-store, max-age=60",
                Err(NotStorable::MustUnderstand),
            ),
            (299, "max-age=60", Ok(())),
            (299, "no-store, max-age=60", Err(NotStorable::NoStore)),
        ];
        for (status, cc, expected) in cases {
            let resp: Headers = &[("cache-control", cc)];
            let got = check(&Method::GET, &[], *status, resp, &PolicyOptions::default());
            assert_eq!(got, *expected, "{status} {cc}");
        }
    }

    #[test]
    fn ston_ttl_storability_overrides_but_never_private() {
        let opts = PolicyOptions {
            ttl: Some(StonTtl {
                res4xx: Some(30),
                res5xx: Some(10),
                no_store: Some(5),
                no_cache: Some(5),
                ..Default::default()
            }),
            vary_mode: VaryMode::Ignore,
            ..Default::default()
        };
        let cases: &[(u16, Headers, Result<(), NotStorable>)] = &[
            (403, &[], Ok(())),
            (503, &[], Ok(())),
            (302, &[], Err(NotStorable::NoFreshnessInformation)),
            (200, &[("cache-control", "no-store")], Ok(())),
            (302, &[("cache-control", "no-cache")], Ok(())),
            (
                200,
                &[("cache-control", "private, no-store")],
                Err(NotStorable::Private),
            ),
            (200, &[("vary", "*")], Ok(())),
        ];
        for (status, resp, expected) in cases {
            assert_eq!(
                check(&Method::GET, &[], *status, resp, &opts),
                *expected,
                "{status} {resp:?}"
            );
        }
    }

    #[test]
    fn rfc9111_5_2_1_5_cacheable_request_methods() {
        let cases: &[(Method, Headers, bool)] = &[
            (Method::GET, &[], true),
            (Method::HEAD, &[], true),
            (Method::POST, &[], false),
            (Method::OPTIONS, &[], false),
            (Method::GET, &[("cache-control", "no-store")], false),
            (Method::GET, &[("cache-control", "no-cache")], true),
        ];
        for (method, headers, expected) in cases {
            assert_eq!(
                is_cacheable_request(method, &hm(headers)),
                *expected,
                "{method} {headers:?}"
            );
        }
    }

    #[test]
    fn rfc9111_3_1_strip_unstorable_headers() {
        let mut headers = hm(&[
            (
                "cache-control",
                "max-age=60, no-cache=\"X-Trace\", private=\"X-User, X-Account\"",
            ),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("set-cookie", "session=1"),
            ("set-cookie", "other=2"),
            ("x-trace", "abc"),
            ("x-user", "alice"),
            ("x-account", "42"),
            ("cdn-cache-control", "max-age=600"),
            ("etag", "\"v1\""),
            ("proxy-authentication-info", "nextnonce=\"1\""),
        ]);
        strip_unstorable_headers(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["cache-control", "cdn-cache-control", "etag"]);
    }
}
