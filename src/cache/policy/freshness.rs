//! Freshness (RFC 9111 §4.2): how long a stored response stays fresh, and how old it is.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, header};

use super::cache_control::parse_delta_seconds;
use super::fields::{DELTA_SECONDS_MAX, DateField, date_field, last_modified, split_list};
use super::options::PolicyOptions;
use super::store::{effective_no_store, is_heuristically_cacheable};
use super::targeted::effective_directives;

/// What the policy needs to know about a stored (or just received) response.
#[derive(Debug, Clone)]
pub struct ResponseFacts {
    /// The response status code.
    pub status: u16,
    /// The response header fields, as stored.
    pub headers: HeaderMap,
    /// When the request that produced this response was sent (RFC 9111 §4.2.3
    /// `request_time`). After a successful revalidation, the time the conditional was sent.
    pub request_time: SystemTime,
    /// When the response was received (`response_time`). After a successful revalidation,
    /// the time the 304 arrived.
    pub response_time: SystemTime,
}

/// Where a freshness lifetime came from, most authoritative first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreshnessSource {
    /// STON `<TTL><NoStore>` applied to a `no-store` response.
    NoStoreTtl,
    /// STON `<TTL><NoCache>` applied to a `no-cache` response.
    NoCacheTtl,
    /// `s-maxage` (§5.2.2.10).
    SMaxAge,
    /// `max-age` (§5.2.2.1).
    MaxAge,
    /// `Expires` minus `Date` (§5.3); an invalid `Expires` gives zero.
    Expires,
    /// STON `<TTL><ResNxx>` for a response without explicit freshness.
    StatusTtl,
    /// 10% of the time since `Last-Modified`, capped (§4.2.2).
    Heuristic,
    /// No information: the lifetime is zero.
    None,
}

/// A freshness lifetime together with its source (handy for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// How long the response is fresh, measured from its generation at the origin.
    pub lifetime: Duration,
    /// Which rule produced `lifetime`.
    pub source: FreshnessSource,
}

/// The lifetime of a response and the rule behind it.
///
/// Order (RFC 9111 §4.2.1, with the STON overrides slotted in):
/// 1. STON `NoStore` / `NoCache` TTL, when configured and the response carries that directive;
/// 2. `s-maxage`, then `max-age`, then `Expires − Date` (explicit freshness; `Expires` is
///    ignored when a targeted field governs, RFC 9213 §2.2);
/// 3. STON status-class TTL;
/// 4. the heuristic, only for heuristically cacheable statuses or `public` responses;
/// 5. otherwise zero.
pub fn freshness(facts: &ResponseFacts, opts: &PolicyOptions) -> Freshness {
    let effective = effective_directives(&facts.headers);
    let d = &effective.directives;
    let found = |secs: u64, source| Freshness {
        lifetime: Duration::from_secs(secs.min(DELTA_SECONDS_MAX)),
        source,
    };
    if let Some(ttl) = &opts.ttl {
        if effective_no_store(d, facts.status)
            && let Some(secs) = ttl.no_store
        {
            return found(secs, FreshnessSource::NoStoreTtl);
        }
        if d.no_cache_all()
            && let Some(secs) = ttl.no_cache
        {
            return found(secs, FreshnessSource::NoCacheTtl);
        }
    }
    if let Some(secs) = d.s_maxage {
        return found(secs, FreshnessSource::SMaxAge);
    }
    if let Some(secs) = d.max_age {
        return found(secs, FreshnessSource::MaxAge);
    }
    if effective.honours_expires() {
        match date_field(&facts.headers, &header::EXPIRES) {
            DateField::Absent => {}
            // §5.3: an invalid Expires (notably "0") means "already expired".
            DateField::Invalid => return found(0, FreshnessSource::Expires),
            DateField::Valid(expires) => {
                let lifetime = expires
                    .duration_since(date_value(facts))
                    .unwrap_or(Duration::ZERO);
                return Freshness {
                    lifetime: lifetime.min(Duration::from_secs(DELTA_SECONDS_MAX)),
                    source: FreshnessSource::Expires,
                };
            }
        }
    }
    if let Some(secs) = opts.ttl.as_ref().and_then(|t| t.for_status(facts.status)) {
        return found(secs, FreshnessSource::StatusTtl);
    }
    if (is_heuristically_cacheable(facts.status) || d.public)
        && let Some(lifetime) = heuristic_lifetime(facts, opts.heuristic_cap)
    {
        return Freshness {
            lifetime,
            source: FreshnessSource::Heuristic,
        };
    }
    Freshness {
        lifetime: Duration::ZERO,
        source: FreshnessSource::None,
    }
}

/// The freshness lifetime alone; see [`freshness`].
pub fn freshness_lifetime(facts: &ResponseFacts, opts: &PolicyOptions) -> Duration {
    freshness(facts, opts).lifetime
}

/// The STON override lifetime that applies to this response, if any (`NoStore`, `NoCache`
/// or status-class TTL); `None` when the standard rules decide.
pub fn ttl_for(facts: &ResponseFacts, opts: &PolicyOptions) -> Option<Duration> {
    let f = freshness(facts, opts);
    match f.source {
        FreshnessSource::NoStoreTtl | FreshnessSource::NoCacheTtl | FreshnessSource::StatusTtl => {
            Some(f.lifetime)
        }
        _ => None,
    }
}

/// RFC 9111 §4.2.2: 10% of the interval since `Last-Modified`, at most `cap`. `None` without
/// a valid `Last-Modified`, since there is then nothing to base a guess on.
fn heuristic_lifetime(facts: &ResponseFacts, cap: Duration) -> Option<Duration> {
    let modified = last_modified(&facts.headers)?;
    let since = date_value(facts)
        .duration_since(modified)
        .unwrap_or(Duration::ZERO);
    Some((since / 10).min(cap))
}

/// `date_value` (§4.2.3): the `Date` field, or the receipt time when it is missing or invalid
/// (RFC 9110 §6.6.1 has the recipient supply one).
pub fn date_value(facts: &ResponseFacts) -> SystemTime {
    date_field(&facts.headers, &header::DATE)
        .valid()
        .unwrap_or(facts.response_time)
}

/// Reads the `Age` field (RFC 9111 §5.1) in seconds: the first member of the first line, if it
/// is a non-negative integer; otherwise the field is ignored (0). Huge values saturate at
/// 2^31 (§1.2.2).
pub fn parse_age(headers: &HeaderMap) -> u64 {
    let Some(value) = headers.get(header::AGE) else {
        return 0;
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    split_list(&text)
        .first()
        .and_then(|first| parse_delta_seconds(first))
        .unwrap_or(0)
}

/// `current_age` (RFC 9111 §4.2.3):
///
/// ```text
/// apparent_age          = max(0, response_time - date_value)
/// response_delay        = response_time - request_time
/// corrected_age_value   = age_value + response_delay
/// corrected_initial_age = max(apparent_age, corrected_age_value)
/// resident_time         = now - response_time
/// current_age           = corrected_initial_age + resident_time
/// ```
///
/// All subtractions saturate at zero, so clock skew can only make a response look younger
/// than zero-age, never negative.
pub fn current_age(facts: &ResponseFacts, now: SystemTime) -> Duration {
    age_at(initial_age(facts), facts.response_time, now)
}

/// `corrected_initial_age` (§4.2.3): the response's age when it arrived. Fixed per stored
/// response, so it can be computed once and aged with [`age_at`].
pub fn initial_age(facts: &ResponseFacts) -> Duration {
    let apparent_age = since(facts.response_time, date_value(facts));
    let response_delay = since(facts.response_time, facts.request_time);
    let corrected_age_value = Duration::from_secs(parse_age(&facts.headers)) + response_delay;
    apparent_age.max(corrected_age_value)
}

/// The current age of a response that was `initial` old when it arrived at `response_time`.
pub fn age_at(initial: Duration, response_time: SystemTime, now: SystemTime) -> Duration {
    initial.saturating_add(since(now, response_time))
}

fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or(Duration::ZERO)
}

/// The value of the `Age` field to send with a response served from cache, in whole seconds
/// (capped at 2^31, §1.2.2).
pub fn age_header_value(facts: &ResponseFacts, now: SystemTime) -> u64 {
    current_age(facts, now).as_secs().min(DELTA_SECONDS_MAX)
}

/// Is the response fresh at `now` (`freshness_lifetime > current_age`, §4.2)?
pub fn is_fresh(facts: &ResponseFacts, now: SystemTime, opts: &PolicyOptions) -> bool {
    freshness_lifetime(facts, opts) > current_age(facts, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::options::StonTtl;
    use crate::cache::policy::test_support::{T0, at, date, facts};

    type Headers<'a> = &'a [(&'a str, &'a str)];

    #[test]
    fn rfc9111_4_2_1_lifetime_precedence() {
        let d0 = date(T0);
        let exp = date(T0 + 500);
        let lm = date(T0 - 10_000);
        // (status, headers, expected lifetime secs, expected source)
        type Row<'a> = (u16, Vec<(&'a str, &'a str)>, u64, FreshnessSource);
        let cases: Vec<Row> = vec![
            (
                200,
                vec![("cache-control", "max-age=60, s-maxage=120")],
                120,
                FreshnessSource::SMaxAge,
            ),
            (
                200,
                vec![
                    ("cache-control", "max-age=60"),
                    ("expires", &exp),
                    ("date", &d0),
                ],
                60,
                FreshnessSource::MaxAge,
            ),
            (
                200,
                vec![("expires", &exp), ("date", &d0)],
                500,
                FreshnessSource::Expires,
            ),
            (
                200,
                vec![("expires", "0"), ("date", &d0)],
                0,
                FreshnessSource::Expires,
            ),
            (
                200,
                vec![("expires", "garbage"), ("last-modified", &lm)],
                0,
                FreshnessSource::Expires,
            ),
            (
                200,
                vec![("expires", &lm), ("date", &d0)],
                0,
                FreshnessSource::Expires,
            ),
            (
                200,
                vec![("date", &d0), ("last-modified", &lm)],
                1_000,
                FreshnessSource::Heuristic,
            ),
            (200, vec![("date", &d0)], 0, FreshnessSource::None),
            // Explicit freshness applies to any status ("every status with explicit freshness
            // is reusable"), but the heuristic only to heuristically cacheable ones.
            (
                500,
                vec![("cache-control", "max-age=30")],
                30,
                FreshnessSource::MaxAge,
            ),
            (
                302,
                vec![("date", &d0), ("last-modified", &lm)],
                0,
                FreshnessSource::None,
            ),
            (
                302,
                vec![
                    ("cache-control", "public"),
                    ("date", &d0),
                    ("last-modified", &lm),
                ],
                1_000,
                FreshnessSource::Heuristic,
            ),
        ];
        for (status, headers, secs, source) in cases {
            let f = freshness(&facts(status, &headers, T0, T0), &PolicyOptions::default());
            assert_eq!(
                f,
                Freshness {
                    lifetime: Duration::from_secs(secs),
                    source
                },
                "{status} {headers:?}"
            );
        }
    }

    #[test]
    fn rfc9111_4_2_1_s_maxage_beats_max_age() {
        let f = facts(200, &[("cache-control", "s-maxage=5, max-age=999")], T0, T0);
        assert_eq!(
            freshness_lifetime(&f, &PolicyOptions::default()),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn rfc9213_2_2_targeted_field_ignores_expires() {
        let d0 = date(T0);
        let exp = date(T0 + 500);
        let cases: &[(Headers, u64, FreshnessSource)] = &[
            (
                &[
                    ("cdn-cache-control", "max-age=50"),
                    ("cache-control", "max-age=5"),
                ],
                50,
                FreshnessSource::MaxAge,
            ),
            (
                &[
                    ("cdn-cache-control", "public"),
                    ("expires", &exp),
                    ("date", &d0),
                ],
                0,
                FreshnessSource::None,
            ),
            (
                &[
                    ("cdn-cache-control", "Bad"),
                    ("expires", &exp),
                    ("date", &d0),
                ],
                500,
                FreshnessSource::Expires,
            ),
        ];
        for (headers, secs, source) in cases {
            let f = freshness(&facts(200, headers, T0, T0), &PolicyOptions::default());
            assert_eq!(
                (f.lifetime.as_secs(), f.source),
                (*secs, *source),
                "{headers:?}"
            );
        }
    }

    #[test]
    fn rfc9111_4_2_2_heuristic_is_capped_and_needs_last_modified() {
        let d0 = date(T0);
        let lm_old = date(T0 - 100 * 86_400);
        let lm_future = date(T0 + 100);
        let cases: &[(Headers, u64, u64)] = &[
            // (headers, cap secs, expected lifetime secs)
            (&[("date", &d0), ("last-modified", &lm_old)], 86_400, 86_400),
            (&[("date", &d0), ("last-modified", &lm_old)], 3_600, 3_600),
            (&[("date", &d0), ("last-modified", &lm_future)], 86_400, 0),
            (&[("date", &d0), ("last-modified", "yesterday")], 86_400, 0),
        ];
        for (headers, cap, expected) in cases {
            let opts = PolicyOptions {
                heuristic_cap: Duration::from_secs(*cap),
                ..Default::default()
            };
            assert_eq!(
                freshness_lifetime(&facts(200, headers, T0, T0), &opts).as_secs(),
                *expected,
                "{headers:?}"
            );
        }
    }

    #[test]
    fn ston_ttl_overrides_only_without_explicit_freshness() {
        let ttl = StonTtl {
            res2xx: Some(1800),
            res3xx: Some(300),
            res4xx: Some(30),
            res5xx: Some(10),
            no_cache: Some(5),
            no_store: Some(2),
        };
        let opts = PolicyOptions {
            ttl: Some(ttl),
            ..Default::default()
        };
        let lm = date(T0 - 10_000);
        let cases: &[(u16, Headers, u64, FreshnessSource)] = &[
            (
                200,
                &[("last-modified", &lm)],
                1800,
                FreshnessSource::StatusTtl,
            ),
            (
                200,
                &[("cache-control", "max-age=60")],
                60,
                FreshnessSource::MaxAge,
            ),
            (301, &[], 300, FreshnessSource::StatusTtl),
            (404, &[], 30, FreshnessSource::StatusTtl),
            (503, &[], 10, FreshnessSource::StatusTtl),
            (
                200,
                &[("cache-control", "no-cache, max-age=600")],
                5,
                FreshnessSource::NoCacheTtl,
            ),
            (
                200,
                &[("cache-control", "no-store, no-cache")],
                2,
                FreshnessSource::NoStoreTtl,
            ),
            // no-cache with field names is not "no-cache" for the TTL override.
            (
                200,
                &[("cache-control", "no-cache=\"set-cookie\", max-age=9")],
                9,
                FreshnessSource::MaxAge,
            ),
        ];
        for (status, headers, secs, source) in cases {
            let f = facts(*status, headers, T0, T0);
            assert_eq!(
                freshness(&f, &opts),
                Freshness {
                    lifetime: Duration::from_secs(*secs),
                    source: *source
                },
                "{status} {headers:?}"
            );
        }
        let f = facts(200, &[], T0, T0);
        assert_eq!(ttl_for(&f, &opts), Some(Duration::from_secs(1800)));
        assert_eq!(ttl_for(&f, &PolicyOptions::default()), None);
    }

    #[test]
    fn rfc9111_5_1_age_field_parsing() {
        let cases: &[(Headers, u64)] = &[
            (&[], 0),
            (&[("age", "42")], 42),
            (&[("age", " 42 ")], 42),
            (&[("age", "42, 7")], 42),
            (&[("age", "-1")], 0),
            (&[("age", "4.2")], 0),
            (&[("age", "abc")], 0),
            (&[("age", "99999999999999999999")], DELTA_SECONDS_MAX),
        ];
        for (headers, expected) in cases {
            assert_eq!(
                parse_age(&crate::cache::policy::test_support::hm(headers)),
                *expected,
                "{headers:?}"
            );
        }
    }

    #[test]
    fn rfc9111_4_2_3_current_age_calculation() {
        // (Date or None, Age, request_time, response_time, now, expected age), in seconds
        type Row<'a> = (Option<u64>, Option<&'a str>, u64, u64, u64, u64);
        let cases: &[Row] = &[
            // Nothing but residence time.
            (Some(T0), None, T0, T0, T0 + 30, 30),
            // apparent_age: the origin's Date is 10 s before receipt.
            (Some(T0 - 10), None, T0, T0, T0 + 5, 15),
            // Age plus response delay (2 s) beats apparent age (0).
            (Some(T0 + 2), Some("100"), T0, T0 + 2, T0 + 2, 102),
            // A Date in the future (skew) does not produce negative age.
            (Some(T0 + 500), None, T0, T0, T0 + 1, 1),
            // Missing Date: date_value is the response time.
            (None, None, T0, T0 + 3, T0 + 3, 3),
            // `now` before response_time (clock step) saturates.
            (Some(T0), None, T0, T0, T0 - 50, 0),
        ];
        for (date_at, age, req, resp, now, expected) in cases {
            let d = date_at.map(date);
            let mut headers: Vec<(&str, &str)> = Vec::new();
            if let Some(d) = &d {
                headers.push(("date", d));
            }
            if let Some(a) = age {
                headers.push(("age", a));
            }
            let f = facts(200, &headers, *req, *resp);
            assert_eq!(
                current_age(&f, at(*now)).as_secs(),
                *expected,
                "{headers:?}"
            );
            assert_eq!(age_header_value(&f, at(*now)), *expected);
        }
        let huge = facts(200, &[("age", "99999999999")], T0, T0);
        assert_eq!(
            age_header_value(&huge, at(T0 + 10_000_000_000)),
            DELTA_SECONDS_MAX
        );
    }

    #[test]
    fn rfc9111_4_2_freshness_is_strictly_less_than_lifetime() {
        let d0 = date(T0);
        let f = facts(
            200,
            &[("cache-control", "max-age=10"), ("date", &d0)],
            T0,
            T0,
        );
        let opts = PolicyOptions::default();
        assert!(is_fresh(&f, at(T0 + 9), &opts));
        assert!(!is_fresh(&f, at(T0 + 10), &opts));
    }
}
