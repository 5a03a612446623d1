//! Requests the cache does not answer from storage: streamed through to the origin, with the
//! stored answers a successful unsafe method changes invalidated, and reusable POST answers
//! stored.

use std::time::SystemTime;

use http::{HeaderMap, Method, Response};
use hyper::body::Incoming;

use super::respond::{self, Reply};
use super::{Ctx, Proxy, forward, interim_sink, loop_detected, new_object, origin_error};
use crate::body::{self, Body};
use crate::cache::fill::{FillGuard, Join};
use crate::cache::key;
use crate::cache::policy::{self, ResponseFacts};
use crate::log::CacheResult;
use crate::origin::OriginRequest;

impl Proxy {
    /// Methods the cache does not answer: stream through to the origin, and invalidate the
    /// stored answers a successful unsafe method changes (RFC 9111 §4.4).
    pub(super) async fn pass_through(&self, ctx: &Ctx<'_>, body: Option<Incoming>) -> Reply {
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
    pub(super) async fn stream_and_answer(
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
        match guard
            .stream(self.store.clone(), object, body, Vec::new())
            .await
        {
            Ok((fill, meta)) => {
                let mut reply =
                    respond::from_fill(&self.store, ctx.vh, method, req, meta, fill, result);
                respond::add_unstored_fields(&mut reply, &parts.headers);
                reply
            }
            Err(not_stored) => {
                // Too large for the store (or it is closing): pass the answer through.
                tracing::debug!(
                    error = %not_stored,
                    "cannot store object; answering without caching"
                );
                let resp = Response::from_parts(parts, not_stored.body);
                respond::passed(resp, ctx.vh, method, CacheResult::ClientRefreshMiss)
            }
        }
    }
}
