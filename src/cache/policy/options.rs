//! Operator overrides (STON-style configuration) of the standard RFC 9111 policy.
//!
//! `PolicyOptions::default()` is a strict RFC 9111 shared cache. Each field documents which
//! STON setting it mirrors. Some rules hold whatever the options say: `private` and
//! `Authorization`-protected answers are never shared, `must-revalidate` /
//! `proxy-revalidate` / `s-maxage` forbid serving stale, and `Set-Cookie` is never stored.

use std::time::Duration;

/// Overrides applied on top of the RFC 9111 rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyOptions {
    /// STON `<TTL>`: fixed lifetimes for responses without explicit freshness. `None` means
    /// the RFC heuristic (§4.2.2) applies.
    pub ttl: Option<StonTtl>,
    /// STON `<TTLExtensionByFail>` (default on): serve a stale response, however old, when
    /// the origin cannot be reached. RFC 9111 §4.2.4 permits this for a disconnected cache.
    pub ttl_extension_by_fail: bool,
    /// STON `<TTLExtensionBy5xx>` (default on): a 5xx answer to a revalidation is treated
    /// like a 304 (the stale response is served and may be re-armed).
    pub ttl_extension_by_5xx: bool,
    /// Upper bound of the heuristic lifetime (RFC 9111 §4.2.2). Default: one day.
    pub heuristic_cap: Duration,
    /// How the origin's `Vary` is honoured (STON `<VaryHeader>`).
    pub vary_mode: VaryMode,
    /// STON `<NoCacheRequestExpire>`: whether the client's reload signals (request
    /// `no-cache`, `Pragma: no-cache`, request `max-age`) force revalidation. Default `true`,
    /// the RFC behaviour; `false` shields the origin from reload storms.
    pub no_cache_request_expire: bool,
    /// STON `<RefreshExpired>` (default on): a request for a stale response waits for its
    /// revalidation. Off: whatever may be served stale (not `must-revalidate`, not refused
    /// by the request) is served at once and revalidated in the background, as if it
    /// carried an unbounded `stale-while-revalidate`.
    pub refresh_expired: bool,
}

impl Default for PolicyOptions {
    fn default() -> PolicyOptions {
        PolicyOptions {
            ttl: None,
            ttl_extension_by_fail: true,
            ttl_extension_by_5xx: true,
            heuristic_cap: Duration::from_secs(24 * 60 * 60),
            vary_mode: VaryMode::Standard,
            no_cache_request_expire: true,
            refresh_expired: true,
        }
    }
}

/// STON `<TTL>` values in seconds; `None` for an element the configuration does not write.
///
/// The status-class TTLs apply only to responses *without* explicit freshness (no
/// `s-maxage`, `max-age` or `Expires`), replacing the heuristic and enabling negative caching
/// of 4xx/5xx. `no_cache` / `no_store` make responses carrying those directives cacheable
/// for that long; without them such responses follow the RFC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StonTtl {
    /// `<Res2xx>`: 2xx responses.
    pub res2xx: Option<u64>,
    /// `<Res3xx>`: 3xx responses (never 304, which only refreshes a stored response).
    pub res3xx: Option<u64>,
    /// `<Res4xx>`: 4xx responses (negative caching).
    pub res4xx: Option<u64>,
    /// `<Res5xx>`: 5xx responses (negative caching).
    pub res5xx: Option<u64>,
    /// `<NoCache>`: lifetime of responses with an unqualified `no-cache`, instead of
    /// revalidating on every request.
    pub no_cache: Option<u64>,
    /// `<NoStore>`: lifetime of responses with `no-store`, which are then stored anyway.
    pub no_store: Option<u64>,
}

impl StonTtl {
    /// The status-class TTL configured for `status`, if any.
    pub fn for_status(&self, status: u16) -> Option<u64> {
        match status {
            200..=299 => self.res2xx,
            300..=399 if status != 304 => self.res3xx,
            400..=499 => self.res4xx,
            500..=599 => self.res5xx,
            _ => None,
        }
    }
}

/// How the origin's `Vary` field is honoured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum VaryMode {
    /// RFC 9111 §4.1: every field `Vary` names selects the variant.
    #[default]
    Standard,
    /// STON `<VaryHeader />` written empty: `Vary` is ignored; one variant per URL.
    Ignore,
    /// STON `<VaryHeader>` with a list: only these fields (any case) are honoured, the other
    /// names in `Vary` are ignored. `Vary: *` is still honoured (never reused).
    Fields(Vec<String>),
}
