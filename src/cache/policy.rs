//! RFC 9111 caching policy for Strata's shared cache, as pure functions over plain data.
//!
//! Nothing here does I/O or reads the clock: callers pass header maps, status codes and
//! `SystemTime`s, so every rule is unit-tested beside its code (test names cite the RFC
//! section they check). The defaults are a strict RFC 9111 *shared* cache; operator
//! overrides in the style of STON arrive through [`PolicyOptions`].
//!
//! How the proxy uses it, in request order:
//!
//! 1. **Lookup.** [`is_cacheable_request`] says whether the answer may be stored. Entries are
//!    found by primary key plus [`variant_key`] of the stored response's
//!    [`effective_vary`] (which applies the operator's [`VaryMode`]; [`vary_fields`] alone
//!    does not).
//! 2. **Reuse.** [`decide_reuse`] returns [`Reuse::Fresh`], [`Reuse::StaleWhileRevalidate`],
//!    [`Reuse::MustRevalidate`] or [`Reuse::Unusable`]. Responses served from cache carry
//!    `Age: `[`age_header_value`].
//! 3. **Revalidation.** [`conditional_request_headers`] builds the validators; a 304 is
//!    checked with [`not_modified_applies`] and merged with [`freshen_with_304`] (check its
//!    [`FreshenReport`] for a changed `Vary`). If the origin cannot be reached,
//!    [`may_serve_stale_on_error`] says whether the stale copy may be served; for a 5xx
//!    answer, [`may_serve_stale_on_5xx`].
//! 4. **Storing.** [`check_storable`] applies RFC 9111 §3; [`strip_unstorable_headers`]
//!    removes hop-by-hop fields, `Set-Cookie` and fields named by `private=` / `no-cache=`.
//!    [`freshness()`] gives the lifetime ([`freshness_lifetime`] / [`ttl_for`]).
//! 5. **Answering the client.** [`evaluate_conditionals`] turns the client's preconditions
//!    into 304 / 412, [`if_range_matches`] decides `If-Range`, and [`headers_for_304`] picks
//!    the fields of a 304.
//! 6. **Unsafe methods.** [`invalidation_targets`] lists what a successful POST/PUT/DELETE
//!    invalidates.
//!
//! Directive precedence: `Strata-Cache-Control` > `CDN-Cache-Control` (RFC 9213) >
//! `Cache-Control`; the first valid one is used whole ([`effective_directives`]). Targeted
//! fields are forwarded downstream unchanged; that is the proxy layer's job.
//!
//! Rules no option relaxes: `private` and `Authorization`-protected answers are never shared,
//! `must-revalidate` / `proxy-revalidate` / `s-maxage` forbid serving stale, and `Set-Cookie`
//! is never stored.

pub mod cache_control;
pub mod combine;
pub mod conditional;
pub mod fields;
pub mod freshness;
pub mod invalidate;
pub mod options;
pub mod reuse;
pub mod store;
pub mod targeted;
pub mod validate;
pub mod vary;

#[cfg(test)]
mod test_support;

pub use cache_control::{FieldScope, MaxStale, RequestDirectives, ResponseDirectives};
pub use combine::{combinable, forwards_range, if_range_for};
pub use conditional::{
    Conditional, EntityTag, evaluate_conditionals, headers_for_304, if_range_matches,
};
pub use fields::{parse_http_date, remove_hop_by_hop_headers};
pub use freshness::{
    Freshness, FreshnessSource, ResponseFacts, age_header_value, current_age, freshness,
    freshness_lifetime, is_fresh, ttl_for,
};
pub use invalidate::{
    invalidation_targets, is_unsafe_method, normalize_path_and_query, post_answer_names_its_target,
};
pub use options::{PolicyOptions, StonTtl, VaryMode};
pub use reuse::{
    Reuse, StoredReuse, decide_reuse, decide_reuse_for, may_serve_stale_on_5xx,
    may_serve_stale_on_error,
};
pub use store::{
    NotStorable, check_storable, is_cacheable_request, is_storable, strip_unstorable_headers,
};
pub use targeted::{
    CDN_CACHE_CONTROL, DirectiveSource, EffectiveDirectives, STRATA_CACHE_CONTROL,
    effective_directives,
};
pub use validate::{
    FreshenReport, conditional_request_headers, freshen_with_304, not_modified_applies,
};
pub use vary::{VarySpec, effective_vary, variant_key, vary_fields};
