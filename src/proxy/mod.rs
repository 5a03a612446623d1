//! The request path: route the Host to a vhost, look the object up in the cache, fill it
//! from the origin once, and answer — the flow of design.md, top to bottom.
//!
//! `handle` is the only entry point. Policy (what may be stored, for how long, whether a
//! stored answer may be reused) comes from `cache::policy`; storage from `cache::store`;
//! collapsing from `cache::fill`; origins from `origin`. This module decides the order: it
//! routes, looks up and answers hits; `fill` handles misses and revalidations, `pass` what
//! the cache does not answer (other methods, POST), `respond` builds answers from the store.

mod fill;
pub mod forward;
pub mod partial;
mod pass;
pub mod respond;
pub mod target;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::cache::fill::Fills;
use crate::cache::key::{self, KeyRules};
use crate::cache::policy::{self, PolicyOptions, Reuse};
use crate::cache::store::{NewObject, ObjectMeta, Store};
use crate::chain;
use crate::config::{Config, Vhost, VhostLink};
use crate::log::{AccessEntry, AccessLog, CacheResult, LoggedBody};
use crate::origin::{InterimSink, OriginError, OriginPool};
use crate::purge;
use crate::router::{self, Router};
use crate::stats::Stats;
use forward::Hop;
use respond::Reply;

/// One vhost, ready to serve: its config, origin pool and derived rules.
pub struct VhostRuntime {
    /// The vhost's configuration.
    pub cfg: Vhost,
    /// Its origin pool.
    pub pool: Arc<OriginPool>,
    /// How its cache keys are built.
    pub key_rules: KeyRules,
    /// Its caching policy options.
    pub policy: PolicyOptions,
    /// Our `Via` entry, None when `<ViaHeader>` is OFF.
    pub via: Option<HeaderValue>,
}

/// Everything derived from one configuration; replaced whole on reload.
pub struct Runtime {
    /// The configuration.
    pub cfg: Arc<Config>,
    /// Host → vhost.
    pub router: Router,
    /// Vhosts in config order (indices match the router's).
    pub vhosts: Vec<VhostRuntime>,
    /// Our Via / CDN-Loop identity.
    pub hop: Hop,
}

/// The proxy: the current runtime plus what outlives reloads (store, fills, log, stats).
pub struct Proxy {
    /// The current runtime (swapped on reload).
    pub runtime: ArcSwap<Runtime>,
    /// The object store.
    pub store: Store,
    /// In-flight fills.
    pub fills: Arc<Fills>,
    /// Access log.
    pub log: AccessLog,
    /// Per-vhost counters.
    pub stats: Arc<Stats>,
    /// Counts a finished response in `stats`; made once, since every answer's body holds it.
    pub record: crate::log::OnEnd,
}

/// What the request path knows about the client connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// Client address.
    pub addr: SocketAddr,
    /// Local port it connected to.
    pub local_port: u16,
}

/// The part of the request every step needs.
struct Ctx<'a> {
    rt: &'a Runtime,
    vh: &'a VhostRuntime,
    method: Method,
    path_and_query: String,
    headers: HeaderMap,
    peer: Peer,
    client_host: Option<String>,
    /// The request already carries our CDN-Loop token: answer from the cache or refuse.
    looped: bool,
    /// This vhost's link, when following it would not stop (target exists, not visited):
    /// a fresh stored answer that triggers it is not worth building into a response.
    followable_link: Option<&'a VhostLink>,
    /// Where the origin's 1xx answers to this client's own requests go (HTTP/1.1 clients).
    interim: Option<InterimSink>,
    /// The request's `Cache-Control` (and `Pragma`), parsed once for every hop of a chain.
    directives: policy::RequestDirectives,
}

/// Marks a response that stands for "the origin gave no answer" (link condition `fail`).
#[derive(Debug, Clone, Copy)]
pub struct OriginFailed;

impl Proxy {
    /// Answers one client request. Never fails: every problem becomes an HTTP answer.
    /// `interim` forwards the origin's 1xx answers to this client, when it can take them.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
        interim: Option<InterimSink>,
    ) -> Response<Body> {
        let started = Instant::now();
        let rt = self.runtime.load_full();
        let (mut parts, incoming) = req.into_parts();
        let verdict = target::check(&parts.method, &parts.uri, parts.version, &parts.headers);
        // Normalised once, here: the key and the origin request both use this target.
        let path_and_query =
            key::normalize_target(parts.uri.path_and_query().map_or("/", |p| p.as_str()));
        let mut entry = AccessEntry {
            vhost: String::new(),
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            port: peer.local_port,
            client: peer.addr.ip(),
            user_agent: parts.headers.get(header::USER_AGENT).cloned(),
            referer: parts.headers.get(header::REFERER).cloned(),
            range: parts.headers.get(header::RANGE).cloned(),
            status: 0,
            result: CacheResult::Denied,
            vhostlink: String::new(),
            content_length: None,
            started,
        };
        let host = match verdict {
            target::Verdict::Route(host) => host,
            target::Verdict::Refuse(status, why) => {
                let mut r = respond::error(status, &format!("{why}\n"));
                if status == StatusCode::METHOD_NOT_ALLOWED {
                    r.headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static(target::ALLOW));
                }
                return self.finish(r, entry);
            }
            target::Verdict::Options => {
                let mut r = Response::new(body::empty());
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(target::ALLOW));
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                return self.finish(r, entry);
            }
        };
        if let Some(n) = target::decremented_max_forwards(&parts.method, &parts.headers) {
            parts.headers.insert(header::MAX_FORWARDS, n);
        }

        let Some(vi) = rt.router.route(host.as_deref()) else {
            let shown = host
                .as_deref()
                .map(router::normalize_host)
                .unwrap_or_default();
            let msg =
                format!("no virtual host is configured for Host \"{shown}\" (and no <Default>)\n");
            return self.finish(respond::error(StatusCode::NOT_FOUND, &msg), entry);
        };
        let vh = &rt.vhosts[vi];
        entry.vhost = vh.cfg.name.clone();

        // STON's PURGE/EXPIRE/HARDPURGE methods on service ports, guarded by the manager's
        // allow-list and token (`<Manager HttpMethod="ON">`): they act on this vhost's object
        // at this URL.
        if let Some(kind) = purge::method_kind(parts.method.as_str()) {
            entry.result = CacheResult::Denied;
            let authorization = parts.headers.get(header::AUTHORIZATION);
            if !rt
                .cfg
                .server
                .manager
                .allows_purge_method(peer.addr.ip(), authorization.map(HeaderValue::as_bytes))
            {
                let r = respond::error(
                    StatusCode::UNAUTHORIZED,
                    "purge methods need an allowed management address and, when one is set, the manager's token\n",
                );
                return self.finish(r, entry);
            }
            let target = format!("{}{}", vh.cfg.name, path_and_query);
            let method = parts.method.as_str().to_ascii_lowercase();
            let body = purge::answer(&rt, &self.store, &self.fills, &target, kind, &method).await;
            let mut r = Response::new(body::full(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return self.finish(r, entry);
        }

        // RFC 8586: a request that already went through us (or through too many CDNs) is
        // answered from the cache or refused, never forwarded again, so two instances can
        // never bounce it forever.
        let (ours, total) = forward::loop_count(&parts.headers, &rt.hop.cdn_loop);
        let looped = ours > 0 || total as u32 >= rt.cfg.server.max_cdn_loop_hops;

        let mut ctx = Ctx {
            rt: &rt,
            vh,
            method: parts.method.clone(),
            path_and_query,
            directives: policy::RequestDirectives::parse(&parts.headers),
            headers: parts.headers,
            peer,
            client_host: host,
            looped,
            followable_link: None,
            interim,
        };

        let cacheable_method = ctx.method == Method::GET || ctx.method == Method::HEAD;
        ctx.followable_link = followable(&rt.router, vh, &[vi]);
        let mut reply = if cacheable_method && !vh.cfg.options.bypass.get {
            self.cached(&ctx).await
        } else {
            Box::pin(self.pass_through(&ctx, Some(incoming))).await
        };

        // The content chain: while this vhost's answer matches its VhostLink condition, hand
        // the request to the linked vhost (its own origin, cache and options). Only GET and
        // HEAD link; stats and the log stay with the vhost the client asked for.
        if cacheable_method {
            let mut visited = vec![vi];
            loop {
                let outcome = if reply.response.extensions().get::<OriginFailed>().is_some() {
                    chain::Outcome::Fail
                } else {
                    chain::Outcome::Status(reply.response.status().as_u16())
                };
                let link = ctx.vh.cfg.link.as_ref();
                let next = match chain::next_hop(link, outcome, &visited, |n| rt.router.by_name(n))
                {
                    Ok(next) => next,
                    Err(chain::Stop::NoMatch) => break,
                    Err(stop) => {
                        tracing::debug!(vhost = %ctx.vh.cfg.name, ?stop, "link not followed");
                        break;
                    }
                };
                visited.push(next);
                ctx.vh = &rt.vhosts[next];
                ctx.followable_link = followable(&rt.router, ctx.vh, &visited);
                reply = if ctx.vh.cfg.options.bypass.get {
                    Box::pin(self.pass_through(&ctx, None)).await
                } else {
                    self.cached(&ctx).await
                };
            }
            if visited.len() > 1 {
                let names: Vec<&str> = visited
                    .iter()
                    .map(|&i| rt.vhosts[i].cfg.name.as_str())
                    .collect();
                entry.vhostlink = names.join("+");
            }
        }
        entry.result = reply.result;
        self.finish(reply.response, entry)
    }

    /// Wraps the response so the access log and stats see how it ended.
    fn finish(&self, resp: Response<Body>, mut entry: AccessEntry) -> Response<Body> {
        entry.status = resp.status().as_u16();
        entry.content_length = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let log = self.log.clone();
        let record = self.record.clone();
        resp.map(|b| {
            use http_body_util::BodyExt;
            LoggedBody::new(b, entry, log, Some(record)).boxed_unsync()
        })
    }

    /// GET/HEAD through the cache.
    ///
    /// Fills, partial answers and pass-throughs are awaited boxed: a future holds the state of
    /// its largest branch, and hyper moves the request's future around, so keeping the miss
    /// paths out of it halves what every hit moves (6.0 KB → 2.8 KB).
    async fn cached(self: &Arc<Self>, ctx: &Ctx<'_>) -> Reply {
        let primary = key::cache_key(&ctx.vh.cfg.name, &ctx.path_and_query, ctx.vh.key_rules);
        let now = SystemTime::now();
        let (key, stored) = self.lookup(ctx, &primary).await;
        let only_if_cached = ctx.directives.only_if_cached;
        let Some(key) = key else {
            if only_if_cached {
                return Reply::error(StatusCode::GATEWAY_TIMEOUT, "not cached (only-if-cached)\n");
            }
            // `Vary: *` or an unparseable variant: the cache cannot answer this request.
            return Box::pin(self.pass_through(ctx, None)).await;
        };
        // A partly stored object (an earlier 206): fresh, it answers what it holds and
        // fetches only what it lacks; stale but servable stale (`stale-while-revalidate`,
        // `<RefreshExpired>OFF`), the same, and it is fetched again in the background;
        // otherwise it is refetched like a miss.
        let stored = match stored {
            Some(meta) if !meta.complete => {
                let reuse = stored_reuse(ctx, &meta, now);
                let servable = matches!(reuse, Reuse::Fresh | Reuse::StaleWhileRevalidate);
                if servable && !self.fills.is_filling(&key) {
                    if reuse == Reuse::StaleWhileRevalidate {
                        self.revalidate_in_background(ctx, &key, meta.clone());
                    }
                    return Box::pin(self.from_partial(ctx, &primary, &key, meta, only_if_cached))
                        .await;
                }
                None
            }
            other => other,
        };
        if let Some(meta) = &stored {
            match stored_reuse(ctx, meta, now) {
                // A newer answer is on its way (a client forced a reload): the most recent
                // response is the one to use (RFC 9111 §4), so read that fill instead.
                Reuse::Fresh if !only_if_cached && self.fills.is_filling(&key) => {
                    return Box::pin(self.fill(ctx, &primary, &key, Some(meta.clone()))).await;
                }
                Reuse::Fresh
                    if ctx.followable_link.is_some_and(|l| {
                        chain::matches(&l.conditions, chain::Outcome::Status(meta.status))
                    }) =>
                {
                    // The chain moves on at once: only the status matters.
                    let mut r = Response::new(body::empty());
                    *r.status_mut() =
                        StatusCode::from_u16(meta.status).unwrap_or(StatusCode::NOT_FOUND);
                    return Reply {
                        response: r,
                        result: CacheResult::NegativeHit,
                    };
                }
                Reuse::Fresh => {
                    let result = if meta.status >= 400 {
                        CacheResult::NegativeHit
                    } else {
                        CacheResult::Hit
                    };
                    if let Some(r) = respond::from_store(
                        &self.store,
                        ctx.vh,
                        &ctx.method,
                        &ctx.headers,
                        meta.clone(),
                        result,
                        now,
                    )
                    .await
                    {
                        return r;
                    }
                    return Box::pin(self.fill(ctx, &primary, &key, None)).await;
                }
                Reuse::StaleWhileRevalidate => {
                    if let Some(r) = respond::from_store(
                        &self.store,
                        ctx.vh,
                        &ctx.method,
                        &ctx.headers,
                        meta.clone(),
                        CacheResult::Hit,
                        now,
                    )
                    .await
                    {
                        self.revalidate_in_background(ctx, &key, meta.clone());
                        return r;
                    }
                    return Box::pin(self.fill(ctx, &primary, &key, None)).await;
                }
                Reuse::MustRevalidate | Reuse::Unusable if only_if_cached => {}
                Reuse::MustRevalidate => {
                    return Box::pin(self.fill(ctx, &primary, &key, Some(meta.clone()))).await;
                }
                Reuse::Unusable => {}
            }
        }
        if only_if_cached {
            // RFC 9111 §5.2.1.7: answer from the cache or with 504, never from the origin.
            return Reply::error(StatusCode::GATEWAY_TIMEOUT, "not cached (only-if-cached)\n");
        }
        Box::pin(self.fill(ctx, &primary, &key, stored)).await
    }

    /// Finds the stored object for this request: the primary key, or the variant its `Vary` selects.
    /// Returns `(None, _)` when the request cannot be answered from the cache at all.
    async fn lookup(
        &self,
        ctx: &Ctx<'_>,
        primary: &str,
    ) -> (Option<String>, Option<Arc<ObjectMeta>>) {
        let Some(meta) = self.store.lookup(primary).await else {
            return (Some(primary.to_string()), None);
        };
        if !respond::is_vary_marker(&meta) {
            return (Some(primary.to_string()), Some(meta));
        }
        let facts = respond::facts(&meta);
        let spec = policy::effective_vary(&facts.headers, &ctx.vh.policy.vary_mode);
        match policy::variant_key(&spec, &ctx.headers) {
            Some(v) => {
                let k = key::variant_key(primary, &v);
                let m = self.store.lookup(&k).await;
                // The first answer for a URL is fetched under its primary key (its variant is
                // not known yet): while it streams in, join that fill; the waiter checks that
                // it is this request's variant (`respond::selects`).
                if m.is_none() && !self.fills.is_filling(&k) && self.fills.is_filling(primary) {
                    return (Some(primary.to_string()), None);
                }
                (Some(k), m)
            }
            None => (None, None),
        }
    }

    /// Removes a primary key and every variant stored under it.
    pub async fn invalidate(&self, primary: &str) -> (u64, u64) {
        let mut count = 0;
        let mut bytes = 0;
        if let Some(b) = self.store.remove(primary).await {
            count += 1;
            bytes += b;
        }
        // The variants are the store's group of the primary key: no scan of every key.
        for k in self.store.group_keys(primary) {
            if let Some(b) = self.store.remove(&k).await {
                count += 1;
                bytes += b;
            }
        }
        (count, bytes)
    }
}

/// What to do with the stored object `meta` for this request: the purge family's
/// expire/expireafter override the response's own freshness; otherwise RFC 9111 with the
/// vhost's options. The same for complete and partly stored objects.
fn stored_reuse(ctx: &Ctx<'_>, meta: &ObjectMeta, now: SystemTime) -> Reuse {
    match meta.expires_override_ms {
        Some(at) if ms(now) >= at => Reuse::MustRevalidate,
        Some(_) => Reuse::Fresh,
        None => policy::decide_reuse_for(
            &ctx.method,
            &ctx.directives,
            &respond::facts(meta).reuse(&ctx.vh.policy),
            now,
            &ctx.vh.policy,
        ),
    }
}

/// The object an origin answer is stored as: its fields without the ones that must not be
/// stored (`policy::strip_unstorable_headers`), with the times of its request and response.
fn new_object(
    key: String,
    status: u16,
    mut headers: HeaderMap,
    (request_time, response_time): (SystemTime, SystemTime),
    total_len: Option<u64>,
) -> NewObject {
    policy::strip_unstorable_headers(&mut headers);
    NewObject {
        key,
        status,
        headers: respond::header_vec(&headers),
        request_time_ms: ms(request_time),
        response_time_ms: ms(response_time),
        total_len,
    }
}

/// The client's 1xx sink for an origin request made on its behalf, with our `Via` entry:
/// RFC 9110 §7.6.3 asks for it on every message a proxy forwards, interim ones included.
fn interim_sink(ctx: &Ctx<'_>) -> Option<InterimSink> {
    let sink = ctx.interim.clone()?;
    let Some(via) = ctx.vh.via.clone() else {
        return Some(sink);
    };
    Some(Arc::new(move |status, headers: &HeaderMap| {
        let mut h = headers.clone();
        h.append(header::VIA, via.clone());
        sink(status, &h)
    }))
}

/// `v`'s link, when following it would not stop (its target exists and was not visited).
fn followable<'a>(
    router: &Router,
    v: &'a VhostRuntime,
    visited: &[usize],
) -> Option<&'a VhostLink> {
    v.cfg.link.as_ref().filter(|l| {
        router
            .by_name(&l.target)
            .is_some_and(|t| !visited.contains(&t))
    })
}

/// The answer when the origin gave none: 502 (504 on a timeout), marked for link conditions.
fn origin_error(e: OriginError) -> Reply {
    if let OriginError::ClientBody(why) = &e {
        // Not the origin's failure: no link condition, no internals in the answer.
        tracing::debug!(%why, "request body broke on its way to the origin");
        let mut r = Reply::error(
            StatusCode::BAD_REQUEST,
            "request body malformed or cut short\n",
        );
        r.result = CacheResult::Error;
        return r;
    }
    // The details (which address, what broke) go to the log only: an edge must not tell
    // its clients where its origins are.
    tracing::warn!(error = %e, "origin fetch failed");
    let (status, msg) = match e {
        OriginError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "origin timed out\n"),
        OriginError::Unavailable => (StatusCode::BAD_GATEWAY, "no origin available\n"),
        _ => (StatusCode::BAD_GATEWAY, "origin fetch failed\n"),
    };
    let mut r = Reply::error(status, msg);
    r.result = CacheResult::Error;
    r.response.extensions_mut().insert(OriginFailed);
    r
}

/// The answer to a request that would loop (RFC 8586).
fn loop_detected() -> Reply {
    let mut r = Reply::error(
        StatusCode::LOOP_DETECTED,
        "loop detected: this request already passed through this server, or through more CDNs than MaxCdnLoopHops allows (CDN-Loop)\n",
    );
    r.result = CacheResult::Denied;
    r
}

/// Milliseconds since the Unix epoch.
pub fn ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `Via` value for this host.
pub fn via_value(host_name: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("1.1 {host_name} (strata)"))
        .unwrap_or(HeaderValue::from_static("1.1 strata"))
}
