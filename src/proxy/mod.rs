//! The request path: route the Host to a vhost, look the object up in the cache, fill it
//! from the origin once, and answer — the flow of design.md, top to bottom.
//!
//! `handle` is the only entry point. Policy (what may be stored, for how long, whether a
//! stored answer may be reused) comes from `cache::policy`; storage from `cache::store`;
//! collapsing from `cache::fill`; origins from `origin`. This module decides the order.

pub mod forward;
pub mod partial;
pub mod respond;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::cache::fill::{FillGuard, FillState, Fills, Join};
use crate::cache::key::{self, KeyRules};
use crate::cache::policy::{self, PolicyOptions, ResponseFacts, Reuse};
use crate::cache::range;
use crate::cache::store::{NewObject, ObjectMeta, Store};
use crate::chain;
use crate::config::{Config, Vhost, VhostLink};
use crate::log::{AccessEntry, AccessLog, CacheResult, LoggedBody};
use crate::origin::{InterimSink, OriginError, OriginPool, OriginRequest};
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
        let (parts, incoming) = req.into_parts();
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()));
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
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
        // allow-list: they act on this vhost's object at this URL.
        if let Some(kind) = purge::method_kind(parts.method.as_str()) {
            entry.result = CacheResult::Denied;
            if rt.cfg.server.manager.role_of(peer.addr.ip()) != Some(crate::config::Role::Admin) {
                let r = respond::error(
                    StatusCode::UNAUTHORIZED,
                    "purge methods need an allowed management address\n",
                );
                return self.finish(r, entry);
            }
            let t0 = Instant::now();
            let target = format!("{}{}", vh.cfg.name, path_and_query);
            let (count, size) = purge::apply(&rt, &self.store, &target, kind).await;
            let body = purge::result_json(
                &parts.method.as_str().to_ascii_lowercase(),
                count,
                size,
                t0.elapsed().as_millis(),
            );
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
        let stats = self.stats.clone();
        let on_end: crate::log::OnEnd = Arc::new(move |e, bytes| {
            stats.record(e, bytes);
        });
        let log = self.log.clone();
        resp.map(|b| {
            use http_body_util::BodyExt;
            LoggedBody::new(b, entry, log, Some(on_end)).boxed_unsync()
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
        // fetches only what it lacks; stale, it is refetched like a miss.
        let stored = match stored {
            Some(meta) if !meta.complete => {
                let fresh = match meta.expires_override_ms {
                    Some(at) => ms(now) < at,
                    None => matches!(
                        policy::decide_reuse_for(
                            &ctx.method,
                            &ctx.directives,
                            &respond::facts(&meta).reuse(&ctx.vh.policy),
                            now,
                            &ctx.vh.policy
                        ),
                        Reuse::Fresh | Reuse::StaleWhileRevalidate
                    ),
                };
                if fresh && !self.fills.is_filling(&key) {
                    return Box::pin(self.from_partial(ctx, &primary, &key, meta, only_if_cached))
                        .await;
                }
                None
            }
            other => other,
        };
        if let Some(meta) = &stored {
            let facts = respond::facts(meta);
            // The purge family's expire/expireafter override the response's own freshness.
            let reuse = match meta.expires_override_ms {
                Some(at) if ms(now) >= at => Reuse::MustRevalidate,
                Some(_) => Reuse::Fresh,
                None => {
                    let analysis = facts.reuse(&ctx.vh.policy);
                    policy::decide_reuse_for(
                        &ctx.method,
                        &ctx.directives,
                        &analysis,
                        now,
                        &ctx.vh.policy,
                    )
                }
            };
            match reuse {
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

    /// A miss or a revalidation: join the key's single-flight fill and answer from it.
    async fn fill(
        self: &Arc<Self>,
        ctx: &Ctx<'_>,
        primary: &str,
        key: &str,
        stale: Option<Arc<ObjectMeta>>,
    ) -> Reply {
        // A looped request must not wait on a fill: that fill may be the one waiting for it.
        if ctx.looped {
            return loop_detected();
        }
        let wait = ctx.rt.cfg.server.cache.fill_wait;
        match self.fills.join(key) {
            Join::Bypass => Box::pin(self.pass_through(ctx, None)).await,
            // The answer streaming in may not be reused as it is (it must be revalidated, or it
            // is another variant): let it land, then look up again.
            Join::Waiter(fill) if !respond::may_join(&fill, ctx.vh, &ctx.method, &ctx.headers) => {
                if respond::landed(&fill, wait).await {
                    return Box::pin(self.cached(ctx)).await;
                }
                Box::pin(self.pass_through(ctx, None)).await
            }
            Join::Waiter(fill) => match fill.head(wait).await {
                Some(FillState::Streaming { meta, .. })
                    if respond::selects(&meta, ctx.vh, &ctx.headers) =>
                {
                    respond::from_fill(
                        &self.store,
                        ctx.vh,
                        &ctx.method,
                        &ctx.headers,
                        meta,
                        fill,
                        CacheResult::RtHit,
                    )
                }
                Some(FillState::Done(meta)) if respond::selects(&meta, ctx.vh, &ctx.headers) => {
                    match respond::from_store(
                        &self.store,
                        ctx.vh,
                        &ctx.method,
                        &ctx.headers,
                        meta,
                        CacheResult::RtHit,
                        SystemTime::now(),
                    )
                    .await
                    {
                        Some(r) => r,
                        None => Box::pin(self.pass_through(ctx, None)).await,
                    }
                }
                Some(FillState::OriginFailed(e)) => self.origin_failed(ctx, stale, e).await,
                Some(FillState::Aborted(why)) => Reply::error(
                    StatusCode::BAD_GATEWAY,
                    &format!("origin fetch failed: {why}\n"),
                ),
                // The leader's client left before the origin answered: join again (collapsing
                // onto whichever waiter leads now) rather than failing.
                Some(FillState::Abandoned) => Box::pin(self.fill(ctx, primary, key, stale)).await,
                // Uncacheable, or the wait ran out: fetch on our own.
                _ => Box::pin(self.pass_through(ctx, None)).await,
            },
            Join::Leader(guard) => {
                let mut headers =
                    forward::upstream_headers(&ctx.headers, ctx.peer.addr.ip(), &ctx.rt.hop, true);
                let conditional = stale
                    .as_ref()
                    .filter(|m| m.expires_override_ms != Some(crate::purge::PURGED))
                    .map(|m| policy::conditional_request_headers(&respond::facts(m).headers));
                if let Some(c) = &conditional {
                    headers.extend(c.clone());
                }
                // A miss for one range asks the origin for that range only (its 206 is
                // stored as the part it is); anything else fills the whole object.
                let range_fill =
                    stale.is_none() && policy::forwards_range(&ctx.method, &ctx.headers);
                if range_fill {
                    for name in [header::RANGE, header::IF_RANGE] {
                        for v in ctx.headers.get_all(&name) {
                            headers.append(name.clone(), v.clone());
                        }
                    }
                }
                let request_time = SystemTime::now();
                // 1xx answers go to the leader's client only: the waiters did not cause them.
                let sent = fetch_get(ctx, primary, headers).await;
                let resp = match sent {
                    Ok(r) => r,
                    Err(e) => {
                        guard.fail(e.clone());
                        return self.origin_failed(ctx, stale, e).await;
                    }
                };
                let response_time = SystemTime::now();
                let status = resp.status();
                if range_fill && status == StatusCode::PARTIAL_CONTENT {
                    // Not a fill other clients can read: they fetch on their own.
                    guard.release();
                    return self
                        .range_filled(ctx, key, resp, request_time, response_time)
                        .await;
                }

                // Revalidation answered: 304 freshens the stored copy; STON's
                // TTLExtensionBy5xx treats a 5xx the same way.
                if let Some(old) = &stale {
                    let extend_5xx = status.is_server_error()
                        && policy::may_serve_stale_on_5xx(
                            &respond::facts(old),
                            &ctx.headers,
                            response_time,
                            status.as_u16(),
                            &ctx.vh.policy,
                        );
                    if status == StatusCode::NOT_MODIFIED || extend_5xx {
                        let mut vary_changed = false;
                        let updated = if extend_5xx {
                            // STON's TTLExtensionBy5xx: serve the stale copy as it is.
                            old.clone()
                        } else {
                            let not_modified = resp.headers().clone();
                            self.store
                                .update_meta(&old.key, |m| {
                                    let mut h = respond::header_map(&m.headers);
                                    vary_changed = policy::freshen_with_304(&mut h, &not_modified)
                                        .vary_changed;
                                    m.headers = respond::header_vec(&h);
                                    m.request_time_ms = ms(request_time);
                                    m.response_time_ms = ms(response_time);
                                    m.expires_override_ms = None;
                                })
                                .await
                                .unwrap_or_else(|| old.clone())
                        };
                        if vary_changed {
                            // The variant it was stored under no longer describes it.
                            self.store.remove(&old.key).await;
                        }
                        guard.done(updated.clone());
                        let result = if extend_5xx {
                            CacheResult::RefFailHit
                        } else {
                            CacheResult::RefreshHit
                        };
                        let answered = resp.headers().clone();
                        return match respond::from_store(
                            &self.store,
                            ctx.vh,
                            &ctx.method,
                            &ctx.headers,
                            updated,
                            result,
                            SystemTime::now(),
                        )
                        .await
                        {
                            Some(mut r) => {
                                if !extend_5xx {
                                    respond::add_unstored_fields(&mut r, &answered);
                                }
                                r
                            }
                            None => {
                                Reply::error(StatusCode::BAD_GATEWAY, "stored copy unreadable\n")
                            }
                        };
                    }
                }

                let (parts, body) = resp.into_parts();
                let facts = ResponseFacts {
                    status: parts.status.as_u16(),
                    headers: parts.headers.clone(),
                    request_time,
                    response_time,
                };
                let storable =
                    policy::is_storable(&Method::GET, &ctx.headers, &facts, &ctx.vh.policy)
                        && parts.status != StatusCode::PARTIAL_CONTENT
                        && parts.status != StatusCode::NOT_MODIFIED;
                // Vary: the object is stored under its variant key, with a marker at the
                // primary; `Vary: *` (no variant key) cannot be stored.
                let spec = policy::effective_vary(&parts.headers, &ctx.vh.policy.vary_mode);
                let variant = storable
                    .then(|| policy::variant_key(&spec, &ctx.headers))
                    .flatten();
                let Some(variant) = variant else {
                    // Hit-for-miss only when the answer itself is uncacheable; a refusal
                    // owed to this request (Authorization, no-store) must not send every
                    // other client to the origin for a while.
                    let for_anyone = policy::is_storable(
                        &Method::GET,
                        &HeaderMap::new(),
                        &facts,
                        &ctx.vh.policy,
                    );
                    if for_anyone && !storable {
                        guard.release();
                    } else {
                        guard.uncacheable();
                    }
                    let resp = Response::from_parts(parts, body);
                    return respond::passed(
                        resp,
                        ctx.vh,
                        &ctx.method,
                        CacheResult::ClientRefreshMiss,
                    );
                };
                let object_key = if variant.is_empty() {
                    primary.to_string()
                } else {
                    self.store_vary_marker(primary, &parts.headers, request_time, response_time)
                        .await;
                    key::variant_key(primary, &variant)
                };
                if object_key != key {
                    // The variant differs from the one we were collapsing on; still fine to
                    // fill — the guard's waiters will read this fill.
                    tracing::debug!(%key, %object_key, "fill stored under a new variant key");
                }
                let result = if stale.is_some() {
                    CacheResult::RefMiss
                } else {
                    CacheResult::Miss
                };
                let asked = (&ctx.method, &ctx.headers);
                let times = (request_time, response_time);
                self.stream_and_answer(ctx, guard, object_key, times, (parts, body), asked, result)
                    .await
            }
        }
    }

    /// A fresh partial object: answer from the bytes it holds, or first fetch the ones it
    /// lacks with `Range` + `If-Range`, combine, and answer from the combined object. When the
    /// origin's representation changed meanwhile, the stored part is dropped, never mixed.
    async fn from_partial(
        self: &Arc<Self>,
        ctx: &Ctx<'_>,
        primary: &str,
        key: &str,
        meta: Arc<ObjectMeta>,
        only_if_cached: bool,
    ) -> Reply {
        let facts = respond::facts(&meta);
        let need = partial::need(&meta, &facts.headers, &ctx.method, &ctx.headers);
        let partial::Need::Fetch { first, last } = need else {
            let now = SystemTime::now();
            let r = respond::from_store(
                &self.store,
                ctx.vh,
                &ctx.method,
                &ctx.headers,
                meta,
                CacheResult::Hit,
                now,
            );
            if let Some(r) = r.await {
                return r;
            }
            return Box::pin(self.fill(ctx, primary, key, None)).await;
        };
        if only_if_cached {
            return Reply::error(StatusCode::GATEWAY_TIMEOUT, "not cached (only-if-cached)\n");
        }
        if ctx.looped {
            return loop_detected();
        }
        if last - first >= u64::from(meta.chunk_size) {
            // Too much is missing to make the client wait for it to be stored first: fetch
            // it as a miss, streamed (a forwarded range is still combined with this part).
            return Box::pin(self.fill(ctx, primary, key, None)).await;
        }
        let total = meta.total_len.unwrap_or(0);
        let Some(if_range) = policy::if_range_for(&facts.headers) else {
            // Without a strong validator the missing bytes could be another version's.
            self.store.remove(key).await;
            return Box::pin(self.fill(ctx, primary, key, None)).await;
        };
        let mut headers =
            forward::upstream_headers(&ctx.headers, ctx.peer.addr.ip(), &ctx.rt.hop, true);
        if let Ok(v) = HeaderValue::from_str(&partial::range_value(first, last, total)) {
            headers.insert(header::RANGE, v);
        }
        headers.insert(header::IF_RANGE, if_range);
        let request_time = SystemTime::now();
        let sent = fetch_get(ctx, primary, headers).await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return self.origin_failed(ctx, None, e).await,
        };
        let response_time = SystemTime::now();
        let (parts, body) = resp.into_parts();
        if parts.status == StatusCode::PARTIAL_CONTENT
            && policy::combinable(&facts.headers, &parts.headers)
            && let Some((object, cr)) =
                self.part_object(ctx, key, &parts.headers, request_time, response_time)
            && cr.complete == total
        {
            let stored =
                partial::store_part(self.store.clone(), object, cr, body, Some(meta), None).await;
            if let Some(m) = stored {
                let h = respond::facts(&m);
                if partial::need(&m, &h.headers, &ctx.method, &ctx.headers) == partial::Need::Held
                    && let Some(r) = respond::from_store(
                        &self.store,
                        ctx.vh,
                        &ctx.method,
                        &ctx.headers,
                        m,
                        CacheResult::Miss,
                        SystemTime::now(),
                    )
                    .await
                {
                    return r;
                }
            }
            return Box::pin(self.fill(ctx, primary, key, None)).await;
        }
        // Another version (a 200 to our If-Range, or a part that does not match): the
        // stored part is outdated.
        self.store.remove(key).await;
        if parts.status == StatusCode::OK {
            let resp = Response::from_parts(parts, body);
            return respond::passed(resp, ctx.vh, &ctx.method, CacheResult::RefMiss);
        }
        Box::pin(self.fill(ctx, primary, key, None)).await
    }

    /// The object a 206 for this request would be stored as (status 200, the complete
    /// length, no per-part fields), with its range; None when it may not be stored.
    fn part_object(
        &self,
        ctx: &Ctx<'_>,
        key: &str,
        headers: &HeaderMap,
        request_time: SystemTime,
        response_time: SystemTime,
    ) -> Option<(NewObject, range::ContentRange)> {
        let cr = headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(range::parse_content_range)?;
        let facts = ResponseFacts {
            status: StatusCode::PARTIAL_CONTENT.as_u16(),
            headers: headers.clone(),
            request_time,
            response_time,
        };
        let spec = policy::effective_vary(headers, &ctx.vh.policy.vary_mode);
        // Parts of a varying response are not kept: the variant bookkeeping is per object.
        let plain = policy::variant_key(&spec, &ctx.headers).is_some_and(|v| v.is_empty());
        if !plain || !policy::is_storable(&Method::GET, &ctx.headers, &facts, &ctx.vh.policy) {
            return None;
        }
        let mut part_fields = headers.clone();
        part_fields.remove(header::CONTENT_RANGE);
        part_fields.remove(header::CONTENT_LENGTH);
        let object = new_object(
            key.to_string(),
            StatusCode::OK.as_u16(),
            part_fields,
            (request_time, response_time),
            Some(cr.complete),
        );
        Some((object, cr))
    }

    /// A miss that forwarded the client's range got a 206: the client gets it as it
    /// arrives, and the store keeps it as the part it is (combined with a stored part of
    /// the same version).
    async fn range_filled(
        &self,
        ctx: &Ctx<'_>,
        key: &str,
        resp: Response<Body>,
        request_time: SystemTime,
        response_time: SystemTime,
    ) -> Reply {
        let (parts, body) = resp.into_parts();
        let Some((object, cr)) =
            self.part_object(ctx, key, &parts.headers, request_time, response_time)
        else {
            let resp = Response::from_parts(parts, body);
            return respond::passed(resp, ctx.vh, &ctx.method, CacheResult::ClientRefreshMiss);
        };
        let old = self.store.lookup(key).await;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(partial::store_part(
            self.store.clone(),
            object,
            cr,
            body,
            old,
            Some(tx),
        ));
        let resp = Response::from_parts(parts, body::from_channel(rx));
        respond::passed(resp, ctx.vh, &ctx.method, CacheResult::Miss)
    }

    /// The origin gave no answer: serve the stale copy where the rules allow, else an error.
    async fn origin_failed(
        &self,
        ctx: &Ctx<'_>,
        stale: Option<Arc<ObjectMeta>>,
        e: OriginError,
    ) -> Reply {
        if let Some(meta) = stale {
            let facts = respond::facts(&meta);
            if policy::may_serve_stale_on_error(&facts, SystemTime::now(), &ctx.vh.policy)
                && let Some(r) = respond::from_store(
                    &self.store,
                    ctx.vh,
                    &ctx.method,
                    &ctx.headers,
                    meta,
                    CacheResult::RefFailHit,
                    SystemTime::now(),
                )
                .await
            {
                return r;
            }
        }
        origin_error(e)
    }

    /// Stores the marker that says "this URL varies on these fields".
    async fn store_vary_marker(
        &self,
        primary: &str,
        headers: &HeaderMap,
        request_time: SystemTime,
        response_time: SystemTime,
    ) {
        let mut h = HeaderMap::new();
        for v in headers.get_all(header::VARY) {
            h.append(header::VARY, v.clone());
        }
        let marker = NewObject {
            key: primary.to_string(),
            status: respond::VARY_MARKER_STATUS,
            headers: respond::header_vec(&h),
            request_time_ms: ms(request_time),
            response_time_ms: ms(response_time),
            total_len: Some(0),
        };
        if let Ok(w) = self.store.begin(marker).await {
            let _ = w.commit(0).await;
        }
    }

    /// `stale-while-revalidate`: one background refresh per key (the fill table collapses them).
    fn revalidate_in_background(
        self: &Arc<Self>,
        ctx: &Ctx<'_>,
        key: &str,
        _meta: Arc<ObjectMeta>,
    ) {
        if self.fills.is_filling(key) {
            return;
        }
        let this = self.clone();
        let rt = self.runtime.load_full();
        let Some(vi) = rt.router.by_name(&ctx.vh.cfg.name) else {
            return;
        };
        let method = Method::GET;
        let path = ctx.path_and_query.clone();
        let headers = ctx.headers.clone();
        let peer = ctx.peer;
        let client_host = ctx.client_host.clone();
        tokio::spawn(async move {
            let vh = &rt.vhosts[vi];
            let ctx = Ctx {
                rt: &rt,
                vh,
                method,
                path_and_query: path,
                directives: policy::RequestDirectives::parse(&headers),
                headers,
                peer,
                client_host,
                looped: false,
                followable_link: None,
                // No client waits on this request: its 1xx answers go nowhere.
                interim: None,
            };
            let primary = key::cache_key(&vh.cfg.name, &ctx.path_and_query, vh.key_rules);
            let (key, stored) = this.lookup(&ctx, &primary).await;
            if let Some(key) = key {
                let reply = this.fill(&ctx, &primary, &key, stored).await;
                // Drain the body so the fill completes even though no client reads it.
                use http_body_util::BodyExt;
                let _ = reply.response.into_body().collect().await;
            }
        });
    }

    /// Methods the cache does not answer: stream through to the origin, and invalidate the
    /// stored answers a successful unsafe method changes (RFC 9111 §4.4).
    async fn pass_through(&self, ctx: &Ctx<'_>, body: Option<Incoming>) -> Reply {
        if ctx.looped {
            return loop_detected();
        }
        let headers =
            forward::upstream_headers(&ctx.headers, ctx.peer.addr.ip(), &ctx.rt.hop, false);
        let has_body = body.is_some() && !matches!(ctx.method, Method::GET | Method::HEAD);
        let sent = ctx
            .vh
            .pool
            .send(OriginRequest {
                method: ctx.method.clone(),
                path_and_query: ctx.path_and_query.clone(),
                headers,
                body: if has_body {
                    body.map(body::incoming)
                } else {
                    None
                },
                balance_key: key::cache_key(
                    &ctx.vh.cfg.name,
                    &ctx.path_and_query,
                    ctx.vh.key_rules,
                ),
                client_ip: ctx.peer.addr.ip(),
                client_host: ctx.client_host.clone(),
                on_interim: interim_sink(ctx),
            })
            .await;
        match sent {
            Ok(resp) => {
                if !ctx.method.is_safe() {
                    let targets = policy::invalidation_targets(
                        &ctx.method,
                        resp.status().as_u16(),
                        &ctx.path_and_query,
                        ctx.client_host.as_deref().unwrap_or(""),
                        resp.headers(),
                    );
                    for t in targets {
                        let k = key::cache_key(&ctx.vh.cfg.name, &t, ctx.vh.key_rules);
                        self.invalidate(&k).await;
                    }
                }
                if ctx.method == Method::POST && self.post_reusable(ctx, &resp) {
                    return self.store_post_answer(ctx, resp).await;
                }
                respond::passed(resp, ctx.vh, &ctx.method, CacheResult::ClientRefreshMiss)
            }
            Err(e) => origin_error(e),
        }
    }

    /// RFC 9110 §9.3.3: a POST answer that names its own target in `Content-Location` and
    /// carries explicit freshness answers later GETs of that URL.
    fn post_reusable(&self, ctx: &Ctx<'_>, resp: &Response<Body>) -> bool {
        let facts = ResponseFacts {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            request_time: SystemTime::now(),
            response_time: SystemTime::now(),
        };
        let explicit = matches!(
            policy::freshness(&facts, &ctx.vh.policy).source,
            policy::FreshnessSource::MaxAge
                | policy::FreshnessSource::SMaxAge
                | policy::FreshnessSource::Expires
        );
        let plain = policy::effective_vary(resp.headers(), &ctx.vh.policy.vary_mode)
            == policy::VarySpec::None;
        explicit
            && plain
            && policy::post_answer_names_its_target(
                facts.status,
                &ctx.path_and_query,
                ctx.client_host.as_deref().unwrap_or(""),
                resp.headers(),
            )
            && policy::is_storable(&Method::GET, &ctx.headers, &facts, &ctx.vh.policy)
    }

    /// Stores a reusable POST answer under its URL's GET key while the POST's client
    /// reads it (from the fill, like any miss).
    async fn store_post_answer(&self, ctx: &Ctx<'_>, resp: Response<Body>) -> Reply {
        let primary = key::cache_key(&ctx.vh.cfg.name, &ctx.path_and_query, ctx.vh.key_rules);
        let Join::Leader(guard) = self.fills.join(&primary) else {
            return respond::passed(resp, ctx.vh, &ctx.method, CacheResult::ClientRefreshMiss);
        };
        let now = SystemTime::now();
        // Answered as the GET it now stands for.
        let asked = (&Method::GET, &HeaderMap::new());
        let answer = resp.into_parts();
        self.stream_and_answer(
            ctx,
            guard,
            primary,
            (now, now),
            answer,
            asked,
            CacheResult::Miss,
        )
        .await
    }

    /// Stores an origin answer under `key` (fetched at `times`: request sent, response
    /// received) through the fill `guard` leads, and answers `asked` (method and request
    /// headers) from that fill while it streams; an answer the store cannot take is passed
    /// through uncached.
    #[allow(clippy::too_many_arguments)]
    async fn stream_and_answer(
        &self,
        ctx: &Ctx<'_>,
        guard: FillGuard,
        key: String,
        times: (SystemTime, SystemTime),
        (parts, body): (http::response::Parts, Body),
        (method, req): (&Method, &HeaderMap),
        result: CacheResult,
    ) -> Reply {
        let object = new_object(
            key,
            parts.status.as_u16(),
            parts.headers.clone(),
            times,
            respond::content_length(&parts.headers),
        );
        let fill = match guard
            .stream(self.store.clone(), object, body, Vec::new())
            .await
        {
            Ok(fill) => fill,
            Err(not_stored) => {
                // Too large for the store (or it is closing): pass the answer through.
                tracing::debug!(
                    error = %not_stored,
                    "cannot store object; answering without caching"
                );
                let resp = Response::from_parts(parts, not_stored.body);
                return respond::passed(resp, ctx.vh, method, CacheResult::ClientRefreshMiss);
            }
        };
        match fill.head(ctx.rt.cfg.server.cache.fill_wait).await {
            Some(FillState::Streaming { meta, .. }) | Some(FillState::Done(meta)) => {
                let mut reply =
                    respond::from_fill(&self.store, ctx.vh, method, req, meta, fill, result);
                respond::add_unstored_fields(&mut reply, &parts.headers);
                reply
            }
            _ => Reply::error(StatusCode::BAD_GATEWAY, "origin fetch failed\n"),
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

/// GETs this request's URL from the vhost's origin with `headers`, for the cache (a fill, a
/// revalidation or a part), balanced on the object's primary key.
async fn fetch_get(
    ctx: &Ctx<'_>,
    primary: &str,
    headers: HeaderMap,
) -> Result<Response<Body>, OriginError> {
    ctx.vh
        .pool
        .send(OriginRequest {
            method: Method::GET,
            path_and_query: ctx.path_and_query.clone(),
            headers,
            body: None,
            balance_key: primary.to_string(),
            client_ip: ctx.peer.addr.ip(),
            client_host: ctx.client_host.clone(),
            on_interim: interim_sink(ctx),
        })
        .await
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
    let status = match e {
        OriginError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    let mut r = Reply::error(status, &format!("{e}\n"));
    r.result = CacheResult::Error;
    r.response.extensions_mut().insert(OriginFailed);
    r
}

/// The answer to a request that would loop (RFC 8586).
fn loop_detected() -> Reply {
    let mut r = Reply::error(
        StatusCode::LOOP_DETECTED,
        "loop detected: this request already passed through this server (CDN-Loop)\n",
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
