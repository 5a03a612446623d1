//! Misses and revalidations: one fill per key from the origin (the others join it), stored
//! as it streams; answers built from parts an origin sent as ranges; the background refresh
//! of a stale answer served while it revalidates.

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use super::respond::{self, Reply};
use super::{
    Ctx, Proxy, forward, interim_sink, loop_detected, ms, new_object, origin_error, partial,
};
use crate::body::{self, Body};
use crate::cache::fill::{FillState, Join};
use crate::cache::key;
use crate::cache::policy::{self, ResponseFacts};
use crate::cache::range;
use crate::cache::store::{NewObject, ObjectMeta};
use crate::log::CacheResult;
use crate::origin::{OriginError, OriginRequest};

impl Proxy {
    /// A miss or a revalidation: join the key's single-flight fill and answer from it.
    pub(super) async fn fill(
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
                    if respond::reusable_for(&meta, ctx.vh, &ctx.method, &ctx.headers) =>
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
                // A fill already committed: reusable for this request, or the outcome of the
                // revalidation this request also needed (the origin confirmed the stored copy,
                // or STON's TTLExtensionBy5xx keeps it), as current for it as for the leader.
                Some(FillState::Done(meta))
                    if respond::reusable_for(&meta, ctx.vh, &ctx.method, &ctx.headers)
                        || (stale.is_some() && respond::selects(&meta, ctx.vh, &ctx.headers)) =>
                {
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
                if range_fill && status == StatusCode::RANGE_NOT_SATISFIABLE {
                    // It answers this request's Range, which the key does not hold: stored, it
                    // would be served for the whole URL (RFC 9110 §15.5.17). Pass it on only.
                    guard.release();
                    return respond::passed(resp, ctx.vh, &ctx.method, CacheResult::Miss);
                }

                // Revalidation answered: 304 freshens the stored copy; STON's
                // TTLExtensionBy5xx treats a 5xx the same way.
                if let Some(old) = &stale {
                    if status == StatusCode::NOT_MODIFIED
                        && !policy::not_modified_applies(
                            &respond::facts(old).headers,
                            resp.headers(),
                        )
                    {
                        // The 304 names another representation (RFC 9111 §4.3.4): it may not
                        // update this one. Ask again unconditionally; waiters fetch on their own.
                        guard.release();
                        return Box::pin(self.fill(ctx, primary, key, None)).await;
                    }
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
    pub(super) async fn from_partial(
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
    pub(super) fn revalidate_in_background(
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
            // A partly stored object is fetched again, not revalidated: a 304 could refresh
            // its head but never complete it, and the request does what a client's would
            // once it is not servable stale any more.
            let stored = stored.filter(|m| m.complete);
            if let Some(key) = key {
                let reply = this.fill(&ctx, &primary, &key, stored).await;
                // Drain the body so the fill completes even though no client reads it.
                use http_body_util::BodyExt;
                let _ = reply.response.into_body().collect().await;
            }
        });
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
