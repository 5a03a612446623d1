//! Reusing stored responses (RFC 9111 §4): serve, serve-and-refresh, revalidate or refetch,
//! and when a stale response may cover for a failing origin (RFC 5861, STON TTL extension).

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, header};

use super::cache_control::{MaxStale, RequestDirectives, ResponseDirectives};
use super::fields::last_modified;
use super::freshness::{
    Freshness, FreshnessSource, ResponseFacts, age_at, current_age, freshness, initial_age,
};
use super::options::{PolicyOptions, StonTtl, VaryMode};
use super::targeted::effective_directives;
use super::vary::{VarySpec, effective_vary};

/// What to do with a stored response for an incoming request. The secondary key (`Vary`)
/// is assumed to match already: the caller looked the entry up with `variant_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Serve the stored response without contacting the origin. It is fresh, or stale
    /// within what the client accepts with `max-stale`.
    Fresh,
    /// Serve the stored (stale) response now and refresh it once in the background
    /// (`stale-while-revalidate`, RFC 5861 §3). Concurrent requests should not start more
    /// than one refresh.
    StaleWhileRevalidate,
    /// Send a conditional request ([`conditional_request_headers`]) to the origin and serve
    /// the stored response only if it answers 304.
    ///
    /// [`conditional_request_headers`]: super::validate::conditional_request_headers
    MustRevalidate,
    /// The stored response cannot be used for this request: fetch a new one
    /// unconditionally. Keep the old entry until it is replaced, so that
    /// [`may_serve_stale_on_error`] can still fall back on it if the fetch fails.
    Unusable,
}

/// Decides how a stored response may satisfy a request (RFC 9111 §4, §4.2.4, §5.2).
///
/// In order:
/// 1. Only GET and HEAD are answered from cache (a HEAD from the stored GET response).
///    Stored entries that should never have been stored (`private`, `Vary: *`, a 304, a
///    non-final status) are `Unusable`.
/// 2. Response `no-cache` means validation before every reuse (§5.2.2.4), unless STON's
///    `NoCache` (or `NoStore`) TTL turned it into a fixed lifetime.
/// 3. Client reload signals (request `no-cache`, `Pragma: no-cache`, request `max-age`
///    exceeded) require validation, unless `no_cache_request_expire` is off. `immutable`
///    does not change this: RFC 8246 lets *user agents* skip reload revalidation, but a
///    shared cache serving many clients keeps the RFC 9111 rule.
/// 4. Fresh responses are served, unless the client's `min-fresh` asks for more remaining
///    freshness than is left.
/// 5. Stale responses: `must-revalidate`, `proxy-revalidate`, `s-maxage` (§5.2.2.10),
///    `no-store` and STON-`NoCache` entries are never served stale. Otherwise the client's
///    `max-stale` allows serving as is; then `stale-while-revalidate` allows serving while
///    refreshing. A request `max-age` without `max-stale` excludes stale answers (§5.2.1.1).
/// 6. Everything else needs validation: `MustRevalidate` when the stored response has a
///    validator (`ETag` or `Last-Modified`), `Unusable` when it has none to send.
///
/// Request `only-if-cached` is left to the caller: answer 504 unless the result is `Fresh`
/// or `StaleWhileRevalidate` (see [`RequestDirectives::only_if_cached`]).
pub fn decide_reuse(
    req_method: &Method,
    req_headers: &HeaderMap,
    stored: &ResponseFacts,
    now: SystemTime,
    opts: &PolicyOptions,
) -> Reuse {
    decide_reuse_for(
        req_method,
        &RequestDirectives::parse(req_headers),
        &StoredReuse::new(stored, opts),
        now,
        opts,
    )
}

/// What [`decide_reuse_for`] needs from one stored response under one vhost's options.
/// It depends only on the stored response and the options, so the proxy computes it once
/// per stored snapshot and a hit does not parse the stored fields again.
#[derive(Debug, Clone)]
pub struct StoredReuse {
    directives: ResponseDirectives,
    reusable: bool,
    has_validator: bool,
    fresh: Freshness,
    initial_age: Duration,
    response_time: SystemTime,
    // The options it was computed under (those it depends on).
    ttl: Option<StonTtl>,
    heuristic_cap: Duration,
    vary_mode: VaryMode,
}

impl StoredReuse {
    /// Analyses `stored` under `opts`.
    pub fn new(stored: &ResponseFacts, opts: &PolicyOptions) -> StoredReuse {
        let directives = effective_directives(&stored.headers).directives;
        StoredReuse {
            reusable: reusable_entry(stored, &directives, opts),
            has_validator: has_validator(&stored.headers),
            fresh: freshness(stored, opts),
            initial_age: initial_age(stored),
            response_time: stored.response_time,
            directives,
            ttl: opts.ttl,
            heuristic_cap: opts.heuristic_cap,
            vary_mode: opts.vary_mode.clone(),
        }
    }

    /// Whether it still holds under `opts` (a reload may have changed the TTL options).
    pub fn computed_under(&self, opts: &PolicyOptions) -> bool {
        self.ttl == opts.ttl
            && self.heuristic_cap == opts.heuristic_cap
            && self.vary_mode == opts.vary_mode
    }

    /// The response's current age at `now` (§4.2.3).
    pub fn age(&self, now: SystemTime) -> Duration {
        age_at(self.initial_age, self.response_time, now)
    }
}

/// [`decide_reuse`] with the request directives parsed and the stored response analysed.
pub fn decide_reuse_for(
    req_method: &Method,
    req: &RequestDirectives,
    stored: &StoredReuse,
    now: SystemTime,
    opts: &PolicyOptions,
) -> Reuse {
    if req_method != Method::GET && req_method != Method::HEAD {
        return Reuse::Unusable;
    }
    let d = &stored.directives;
    if !stored.reusable {
        return Reuse::Unusable;
    }
    let revalidate = if stored.has_validator {
        Reuse::MustRevalidate
    } else {
        Reuse::Unusable
    };
    let fresh = stored.fresh;
    // A STON NoCache/NoStore TTL is the operator's explicit "keep this for N seconds".
    let ston_override = matches!(
        fresh.source,
        FreshnessSource::NoCacheTtl | FreshnessSource::NoStoreTtl
    );
    if d.no_cache_all() && !ston_override {
        return revalidate;
    }

    let age = stored.age(now);
    let honour_reload = opts.no_cache_request_expire;
    if honour_reload && req.no_cache {
        return revalidate;
    }
    if honour_reload
        && req
            .max_age
            .is_some_and(|max| age > Duration::from_secs(max))
    {
        return revalidate;
    }
    let min_fresh = Duration::from_secs(req.min_fresh.unwrap_or(0));

    if fresh.lifetime > age {
        return if fresh.lifetime - age < min_fresh {
            revalidate
        } else {
            Reuse::Fresh
        };
    }

    // Stale from here on.
    let staleness = age - fresh.lifetime;
    let stale_forbidden = d.forbids_stale()
        || d.no_store
        || ston_override
        || !min_fresh.is_zero()
        || (honour_reload && req.max_age.is_some() && req.max_stale.is_none());
    if stale_forbidden {
        return revalidate;
    }
    match req.max_stale {
        Some(MaxStale::Any) => return Reuse::Fresh,
        Some(MaxStale::Seconds(max)) if staleness <= Duration::from_secs(max) => {
            return Reuse::Fresh;
        }
        _ => {}
    }
    if d.stale_while_revalidate
        .is_some_and(|window| staleness <= Duration::from_secs(window))
        || !opts.refresh_expired
    {
        return Reuse::StaleWhileRevalidate;
    }
    revalidate
}

/// Checks that hold for any reuse: a final, non-304 status, not `private`, and a `Vary` that
/// can select it.
fn reusable_entry(stored: &ResponseFacts, d: &ResponseDirectives, opts: &PolicyOptions) -> bool {
    (200..=599).contains(&stored.status)
        && stored.status != 304
        && !d.private_all()
        && effective_vary(&stored.headers, &opts.vary_mode) != VarySpec::Star
}

/// Does the stored response carry something a conditional request can be built from?
fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ETAG) || last_modified(headers).is_some()
}

/// How the origin failed while the cache tried to fetch or revalidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OriginFailure {
    /// No usable answer: connection refused or reset, timeout, TLS failure.
    Unreachable,
    /// The origin answered with this 5xx status.
    ServerError(u16),
}

/// May a stored response be served because the origin could not be reached (connection
/// refused or reset, timeout, TLS failure)? RFC 9111 §4.2.4 lets a disconnected cache serve
/// stale; RFC 5861 §4 `stale-if-error`; STON `TTLExtensionByFail`.
///
/// - Never when stale serving is forbidden: `must-revalidate`, `proxy-revalidate`,
///   `s-maxage`, unqualified `no-cache` (§4.2.4 lists it) or `no-store` (entries kept under
///   STON's TTLs), or an entry that is not reusable at all (`private`, `Vary: *`).
/// - Always when it is still fresh.
/// - Within the response's `stale-if-error=N` window.
/// - Beyond that, whenever `ttl_extension_by_fail` is on (the default).
pub fn may_serve_stale_on_error(
    stored: &ResponseFacts,
    now: SystemTime,
    opts: &PolicyOptions,
) -> bool {
    may_serve_stale(stored, now, OriginFailure::Unreachable, opts)
}

/// May a stored response be served in place of the 5xx `status` the origin answered while
/// revalidating it? Same prohibitions as [`may_serve_stale_on_error`]; allowed when fresh,
/// within `stale-if-error=N` for 500, 502, 503 and 504 (the errors RFC 5861 §4 names), and
/// for any 5xx when `ttl_extension_by_5xx` is on (the default) — unless a `stale-if-error`
/// of the stored response or of the request (`req_headers`) bounds it: a 5xx is an answer,
/// not a disconnection, so an explicit window from the origin or the client is honoured
/// over the operator's default (RFC 5861 §4).
///
/// STON treats such a 5xx like a 304: when this returns true the caller may re-arm the entry
/// (for instance `freshen_with_304` with an empty header map and new exchange times) so the
/// failing origin is not asked again on every request. Returns false for non-5xx statuses.
pub fn may_serve_stale_on_5xx(
    stored: &ResponseFacts,
    req_headers: &HeaderMap,
    now: SystemTime,
    status: u16,
    opts: &PolicyOptions,
) -> bool {
    if !(500..=599).contains(&status) {
        return false;
    }
    let requested = RequestDirectives::parse(req_headers).stale_if_error;
    if let Some(window) = requested
        && matches!(status, 500 | 502 | 503 | 504)
    {
        let fresh = freshness(stored, opts).lifetime;
        let staleness = current_age(stored, now).saturating_sub(fresh);
        if staleness > Duration::from_secs(window) {
            return false;
        }
    }
    may_serve_stale(stored, now, OriginFailure::ServerError(status), opts)
}

/// The shared rules of [`may_serve_stale_on_error`] and [`may_serve_stale_on_5xx`].
fn may_serve_stale(
    stored: &ResponseFacts,
    now: SystemTime,
    failure: OriginFailure,
    opts: &PolicyOptions,
) -> bool {
    let d = effective_directives(&stored.headers).directives;
    if !reusable_entry(stored, &d, opts) {
        return false;
    }
    if d.forbids_stale() || d.no_store || d.no_cache_all() {
        return false;
    }
    let lifetime = freshness(stored, opts).lifetime;
    let age = current_age(stored, now);
    if lifetime > age {
        return true;
    }
    let staleness = age - lifetime;
    let rfc5861_error = match failure {
        OriginFailure::Unreachable => true,
        OriginFailure::ServerError(status) => matches!(status, 500 | 502 | 503 | 504),
    };
    if rfc5861_error && let Some(window) = d.stale_if_error {
        let within = staleness <= Duration::from_secs(window);
        // Past the origin's window a 5xx stands (see `may_serve_stale_on_5xx`); only a
        // disconnection still falls back on `ttl_extension_by_fail`.
        if within || failure != OriginFailure::Unreachable {
            return within;
        }
    }
    match failure {
        OriginFailure::Unreachable => opts.ttl_extension_by_fail,
        OriginFailure::ServerError(_) => opts.ttl_extension_by_5xx,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::options::StonTtl;
    use crate::cache::policy::test_support::{T0, at, date, facts, hm};

    type Headers<'a> = &'a [(&'a str, &'a str)];

    /// The analysis computed once per snapshot gives the same decisions as parsing every
    /// time, and notices when a reload changed the options it depends on.
    #[test]
    fn rfc9111_4_stored_analysis_is_equivalent_and_tracks_options() {
        let opts = PolicyOptions::default();
        let ston = PolicyOptions {
            ttl: Some(StonTtl::default()),
            ..PolicyOptions::default()
        };
        for cc in [
            "max-age=100",
            "no-cache",
            "max-age=10, stale-while-revalidate=60",
            "",
        ] {
            let f = stored(cc);
            let a = StoredReuse::new(&f, &opts);
            assert!(a.computed_under(&opts) && !a.computed_under(&ston));
            for secs in [0, 5, 50, 99, 101, 1000] {
                for req in [&[][..], &[("cache-control", "max-age=20")][..]] {
                    let h = hm(req);
                    let want = decide_reuse(&Method::GET, &h, &f, at(T0 + secs), &opts);
                    let got = decide_reuse_for(
                        &Method::GET,
                        &RequestDirectives::parse(&h),
                        &a,
                        at(T0 + secs),
                        &opts,
                    );
                    assert_eq!(got, want, "{cc} at +{secs}s {req:?}");
                }
            }
            assert_eq!(a.age(at(T0 + 7)), current_age(&f, at(T0 + 7)));
        }
    }

    /// A stored 200 received at T0 with `Date: T0`, an ETag, and the given Cache-Control.
    fn stored(cc: &str) -> ResponseFacts {
        let d = date(T0);
        let mut headers: Vec<(&str, &str)> = vec![("date", &d), ("etag", "\"v1\"")];
        if !cc.is_empty() {
            headers.push(("cache-control", cc));
        }
        facts(200, &headers, T0, T0)
    }

    #[test]
    fn rfc9111_4_reuse_decision_table() {
        use Reuse::*;
        // (stored Cache-Control, request headers, seconds after T0, expected)
        let cases: &[(&str, Headers, u64, Reuse)] = &[
            ("max-age=60", &[], 10, Fresh),
            ("max-age=60", &[], 60, MustRevalidate),
            ("max-age=60", &[], 600, MustRevalidate),
            // §5.2.2.4 response no-cache: always revalidate, even when fresh.
            ("no-cache, max-age=60", &[], 0, MustRevalidate),
            ("no-cache=\"set-cookie\", max-age=60", &[], 0, Fresh),
            // §5.2.1.4 request no-cache / §5.4 Pragma.
            (
                "max-age=60",
                &[("cache-control", "no-cache")],
                0,
                MustRevalidate,
            ),
            ("max-age=60", &[("pragma", "no-cache")], 0, MustRevalidate),
            (
                "max-age=60",
                &[("pragma", "no-cache"), ("cache-control", "max-stale")],
                0,
                Fresh,
            ),
            // RFC 8246 immutable does not exempt a shared cache from a client's no-cache.
            (
                "max-age=60, immutable",
                &[("cache-control", "no-cache")],
                0,
                MustRevalidate,
            ),
            // §5.2.1.1 request max-age.
            (
                "max-age=60",
                &[("cache-control", "max-age=5")],
                10,
                MustRevalidate,
            ),
            ("max-age=60", &[("cache-control", "max-age=10")], 10, Fresh),
            ("max-age=60", &[("cache-control", "max-age=0")], 0, Fresh),
            (
                "max-age=60",
                &[("cache-control", "max-age=0")],
                1,
                MustRevalidate,
            ),
            (
                "max-age=60, stale-while-revalidate=100",
                &[("cache-control", "max-age=100")],
                70,
                MustRevalidate,
            ),
            // §5.2.1.3 min-fresh.
            (
                "max-age=60",
                &[("cache-control", "min-fresh=30")],
                20,
                Fresh,
            ),
            (
                "max-age=60",
                &[("cache-control", "min-fresh=30")],
                40,
                MustRevalidate,
            ),
            // §5.2.1.2 max-stale.
            ("max-age=60", &[("cache-control", "max-stale")], 6000, Fresh),
            (
                "max-age=60",
                &[("cache-control", "max-stale=30")],
                80,
                Fresh,
            ),
            (
                "max-age=60",
                &[("cache-control", "max-stale=30")],
                100,
                MustRevalidate,
            ),
            (
                "max-age=60",
                &[("cache-control", "max-stale, min-fresh=1")],
                100,
                MustRevalidate,
            ),
            // §5.2.2.2 / §5.2.2.8 / §5.2.2.10: never stale, even with max-stale.
            (
                "max-age=60, must-revalidate",
                &[("cache-control", "max-stale")],
                100,
                MustRevalidate,
            ),
            (
                "max-age=60, proxy-revalidate",
                &[("cache-control", "max-stale")],
                100,
                MustRevalidate,
            ),
            (
                "s-maxage=60",
                &[("cache-control", "max-stale")],
                100,
                MustRevalidate,
            ),
            // RFC 5861 §3 stale-while-revalidate.
            (
                "max-age=60, stale-while-revalidate=30",
                &[],
                70,
                StaleWhileRevalidate,
            ),
            (
                "max-age=60, stale-while-revalidate=30",
                &[],
                90,
                StaleWhileRevalidate,
            ),
            (
                "max-age=60, stale-while-revalidate=30",
                &[],
                91,
                MustRevalidate,
            ),
            (
                "max-age=60, stale-while-revalidate=30, must-revalidate",
                &[],
                70,
                MustRevalidate,
            ),
            (
                "s-maxage=60, stale-while-revalidate=30",
                &[],
                70,
                MustRevalidate,
            ),
            (
                "max-age=60, stale-while-revalidate=30",
                &[("cache-control", "no-cache")],
                70,
                MustRevalidate,
            ),
            // Request no-store does not prevent reuse of what is already stored.
            ("max-age=60", &[("cache-control", "no-store")], 10, Fresh),
            // Defensive: never reuse what a shared cache must not hold.
            ("private, max-age=60", &[], 10, Unusable),
        ];
        let opts = PolicyOptions::default();
        for (cc, req, after, expected) in cases {
            let got = decide_reuse(&Method::GET, &hm(req), &stored(cc), at(T0 + after), &opts);
            assert_eq!(got, *expected, "stored {cc:?}, request {req:?}, +{after}s");
        }
    }

    #[test]
    fn ston_refresh_expired_off_serves_stale_at_once_where_stale_may_be_served() {
        use Reuse::*;
        let off = PolicyOptions {
            refresh_expired: false,
            ..PolicyOptions::default()
        };
        let cases: &[(&str, Headers, u64, Reuse)] = &[
            ("max-age=60", &[], 10, Fresh),
            // Stale, however old: served, revalidated behind the client's back.
            ("max-age=60", &[], 61, StaleWhileRevalidate),
            ("max-age=60", &[], 86_400 * 30, StaleWhileRevalidate),
            // Never where the response or the request forbids stale.
            ("max-age=60, must-revalidate", &[], 61, MustRevalidate),
            ("max-age=60, proxy-revalidate", &[], 61, MustRevalidate),
            ("s-maxage=60", &[], 61, MustRevalidate),
            ("max-age=60, no-cache", &[], 10, MustRevalidate),
            (
                "max-age=60",
                &[("cache-control", "min-fresh=1")],
                61,
                MustRevalidate,
            ),
            (
                "max-age=60",
                &[("cache-control", "no-cache")],
                61,
                MustRevalidate,
            ),
            (
                "max-age=60",
                &[("cache-control", "max-age=5")],
                61,
                MustRevalidate,
            ),
            ("private, max-age=60", &[], 61, Unusable),
        ];
        for (cc, req, after, expected) in cases {
            let got = decide_reuse(&Method::GET, &hm(req), &stored(cc), at(T0 + after), &off);
            assert_eq!(got, *expected, "stored {cc:?}, request {req:?}, +{after}s");
            // On (the default), nothing stale is served without revalidation.
            let on = decide_reuse(
                &Method::GET,
                &hm(req),
                &stored(cc),
                at(T0 + after),
                &PolicyOptions::default(),
            );
            assert_ne!(on, StaleWhileRevalidate, "{cc:?} +{after}s");
        }
    }

    #[test]
    fn rfc9111_4_reuse_needs_get_or_head_and_a_validator_to_revalidate() {
        let opts = PolicyOptions::default();
        let s = stored("max-age=60");
        assert_eq!(
            decide_reuse(&Method::HEAD, &hm(&[]), &s, at(T0 + 1), &opts),
            Reuse::Fresh
        );
        assert_eq!(
            decide_reuse(&Method::POST, &hm(&[]), &s, at(T0 + 1), &opts),
            Reuse::Unusable
        );
        let d = date(T0);
        let no_validator = facts(
            200,
            &[("date", &d), ("cache-control", "max-age=60")],
            T0,
            T0,
        );
        assert_eq!(
            decide_reuse(&Method::GET, &hm(&[]), &no_validator, at(T0 + 61), &opts),
            Reuse::Unusable
        );
        let lm = date(T0 - 100);
        let with_lm = facts(
            200,
            &[
                ("date", &d),
                ("last-modified", &lm),
                ("cache-control", "max-age=60"),
            ],
            T0,
            T0,
        );
        assert_eq!(
            decide_reuse(&Method::GET, &hm(&[]), &with_lm, at(T0 + 61), &opts),
            Reuse::MustRevalidate
        );
        let star = facts(
            200,
            &[("vary", "*"), ("cache-control", "max-age=60")],
            T0,
            T0,
        );
        assert_eq!(
            decide_reuse(&Method::GET, &hm(&[]), &star, at(T0), &opts),
            Reuse::Unusable
        );
    }

    #[test]
    fn ston_no_cache_request_expire_off_ignores_reload_signals() {
        let opts = PolicyOptions {
            no_cache_request_expire: false,
            ..Default::default()
        };
        let cases: &[(Headers, Reuse)] = &[
            (&[("cache-control", "no-cache")], Reuse::Fresh),
            (&[("pragma", "no-cache")], Reuse::Fresh),
            (&[("cache-control", "max-age=0")], Reuse::Fresh),
            (&[("cache-control", "min-fresh=100")], Reuse::MustRevalidate),
        ];
        for (req, expected) in cases {
            let got = decide_reuse(
                &Method::GET,
                &hm(req),
                &stored("max-age=60"),
                at(T0 + 10),
                &opts,
            );
            assert_eq!(got, *expected, "{req:?}");
        }
    }

    #[test]
    fn ston_no_cache_ttl_replaces_per_request_revalidation() {
        let opts = PolicyOptions {
            ttl: Some(StonTtl {
                no_cache: Some(5),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = stored("no-cache, stale-while-revalidate=60");
        assert_eq!(
            decide_reuse(&Method::GET, &hm(&[]), &s, at(T0 + 3), &opts),
            Reuse::Fresh
        );
        assert_eq!(
            decide_reuse(&Method::GET, &hm(&[]), &s, at(T0 + 6), &opts),
            Reuse::MustRevalidate
        );
        let no_store = PolicyOptions {
            ttl: Some(StonTtl {
                no_store: Some(5),
                ..Default::default()
            }),
            ..Default::default()
        };
        for cc in [
            "no-store, stale-while-revalidate=60",
            "no-store, no-cache, must-revalidate, max-age=0",
        ] {
            let s = stored(cc);
            let reuse_at =
                |secs| decide_reuse(&Method::GET, &hm(&[]), &s, at(T0 + secs), &no_store);
            assert_eq!(reuse_at(3), Reuse::Fresh, "{cc}");
            assert_eq!(reuse_at(6), Reuse::MustRevalidate, "{cc}");
        }
    }

    #[test]
    fn rfc5861_4_stale_if_error_and_ston_ttl_extension() {
        use OriginFailure::*;
        let strict = PolicyOptions {
            ttl_extension_by_fail: false,
            ttl_extension_by_5xx: false,
            ..Default::default()
        };
        let ston = PolicyOptions::default();
        // (stored Cache-Control, seconds after T0, failure, allowed strict, allowed STON)
        let cases: &[(&str, u64, OriginFailure, bool, bool)] = &[
            ("max-age=60", 10, Unreachable, true, true),
            ("max-age=60", 100, Unreachable, false, true),
            ("max-age=60", 100, ServerError(503), false, true),
            (
                "max-age=60, stale-if-error=60",
                100,
                ServerError(503),
                true,
                true,
            ),
            (
                "max-age=60, stale-if-error=60",
                100,
                Unreachable,
                true,
                true,
            ),
            // Past the origin's stale-if-error window its 5xx stands, even under STON.
            (
                "max-age=60, stale-if-error=60",
                121,
                ServerError(500),
                false,
                false,
            ),
            (
                "max-age=60, stale-if-error=60",
                121,
                Unreachable,
                false,
                true,
            ),
            // RFC 5861 names only 500, 502, 503, 504; STON's flag covers every 5xx.
            (
                "max-age=60, stale-if-error=60",
                100,
                ServerError(501),
                false,
                true,
            ),
            (
                "max-age=60, stale-if-error=60",
                100,
                ServerError(404),
                false,
                false,
            ),
            // Explicit prohibitions win over everything (RFC 9111 §4.2.4).
            (
                "max-age=60, must-revalidate, stale-if-error=600",
                100,
                Unreachable,
                false,
                false,
            ),
            (
                "max-age=60, proxy-revalidate",
                100,
                Unreachable,
                false,
                false,
            ),
            (
                "s-maxage=60, stale-if-error=600",
                100,
                ServerError(503),
                false,
                false,
            ),
            ("no-cache, max-age=60", 10, Unreachable, false, false),
        ];
        for (cc, after, failure, want_strict, want_ston) in cases {
            let s = stored(cc);
            let now = at(T0 + after);
            // The public entry point for each kind of failure.
            let check = |opts: &PolicyOptions| match failure {
                Unreachable => may_serve_stale_on_error(&s, now, opts),
                ServerError(status) => {
                    may_serve_stale_on_5xx(&s, &HeaderMap::new(), now, *status, opts)
                }
            };
            assert_eq!(
                check(&strict),
                *want_strict,
                "strict {cc:?} +{after} {failure:?}"
            );
            assert_eq!(check(&ston), *want_ston, "ston {cc:?} +{after} {failure:?}");
        }
    }

    #[test]
    fn rfc5861_4_request_stale_if_error_bounds_ston_ttl_extension() {
        let ston = PolicyOptions::default();
        let s = stored("max-age=60");
        let req = |v: &str| hm(&[("cache-control", v)]);
        // (request Cache-Control, seconds after T0, allowed)
        let cases: &[(&str, u64, bool)] = &[
            ("", 100, true),
            ("stale-if-error=60", 100, true),
            ("stale-if-error=10", 100, false),
            ("stale-if-error=10", 50, true),
        ];
        for (cc, after, want) in cases {
            let got = may_serve_stale_on_5xx(&s, &req(cc), at(T0 + after), 500, &ston);
            assert_eq!(got, *want, "request {cc:?} +{after}");
        }
    }
}
