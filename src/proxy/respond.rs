//! Building the client's answer from a stored (or filling) object: headers, `Age`, `Via`,
//! conditional requests (304/412), `Range` (206, multipart/byteranges, 416) and HEAD.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::Entry;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::VhostRuntime;
use crate::body::{self, Body, BoxError};
use crate::cache::fill::{self, Source};
use crate::cache::key;
use crate::cache::policy::{self, Conditional, ResponseFacts};
use crate::cache::range::{self, RangeRequest};
use crate::cache::store::{Headers, ObjectMeta, Store};
use crate::log::CacheResult;
use crate::zerocopy::{self, FileSpan};

/// An answer and how the cache came to it.
pub struct Reply {
    /// The response.
    pub response: Response<Body>,
    /// The cache result code for the access log.
    pub result: CacheResult,
}

impl Reply {
    /// An error answer with a plain-text body.
    pub fn error(status: StatusCode, msg: &str) -> Reply {
        Reply {
            response: error(status, msg),
            result: CacheResult::Error,
        }
    }
}

/// Status of the marker object that records a URL's `Vary` fields (never served).
pub const VARY_MARKER_STATUS: u16 = 0;

/// Whether `meta` is a `Vary` marker rather than a response.
pub fn is_vary_marker(meta: &ObjectMeta) -> bool {
    meta.status == VARY_MARKER_STATUS
}

/// A plain-text error response.
pub fn error(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(body::full(Bytes::copy_from_slice(msg.as_bytes())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(msg.len()));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Stored header pairs → a `HeaderMap` (invalid pairs are skipped). The values share the
/// stored list's memory rather than copying it.
pub fn header_map(v: &Headers) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(v.len());
    for (n, val) in v.shared_values() {
        if let (Ok(n), Ok(val)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_maybe_shared(val),
        ) {
            h.append(n, val);
        }
    }
    h
}

/// A `HeaderMap` → stored header pairs.
pub fn header_vec(h: &HeaderMap) -> Headers {
    Headers::from_pairs(h.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
}

/// `Content-Length`, when present and valid.
pub fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A stored snapshot as the policy sees it, parsed once per snapshot (hits reuse it): its
/// facts (status, headers, times) and its reuse analysis under the vhost's options.
pub struct StoredView {
    facts: ResponseFacts,
    reuse: arc_swap::ArcSwapOption<policy::StoredReuse>,
}

impl std::ops::Deref for StoredView {
    type Target = ResponseFacts;
    fn deref(&self) -> &ResponseFacts {
        &self.facts
    }
}

impl StoredView {
    /// Heap bytes it owns beyond its own struct, allocator overhead roughly included: the
    /// header map's two tables (slots, and a 4-byte index per bucket) and the buffer its
    /// values share, and the reuse analysis once computed. Charged to the memory tier.
    pub fn heap_bytes(&self) -> usize {
        /// A `HeaderMap` slot: hash, links, name and value.
        const SLOT: usize = 2 * size_of::<usize>()
            + size_of::<u16>()
            + size_of::<HeaderName>()
            + size_of::<HeaderValue>();
        let h = &self.facts.headers;
        let cap = h.capacity();
        let buckets = (cap * 4 / 3).next_power_of_two();
        let values: usize = h.iter().map(|(_, v)| v.len()).sum();
        let reuse = 2 * size_of::<usize>() + size_of::<policy::StoredReuse>();
        cap * SLOT + buckets * 4 + values + 32 + reuse + 48
    }

    /// The reuse analysis under `opts`, computed on first use (and again only if a reload
    /// changed the options it depends on).
    pub fn reuse(&self, opts: &policy::PolicyOptions) -> Arc<policy::StoredReuse> {
        if let Some(r) = self.reuse.load_full()
            && r.computed_under(opts)
        {
            return r;
        }
        let r = Arc::new(policy::StoredReuse::new(&self.facts, opts));
        self.reuse.store(Some(r.clone()));
        r
    }
}

/// The policy's view of a stored object, parsed once per stored snapshot (hits reuse it).
pub fn facts(meta: &ObjectMeta) -> Arc<StoredView> {
    let make = || {
        let t = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let mut headers = header_map(&meta.headers);
        // No stored answer is sent chunked again: dropped here once, not per hit.
        headers.remove(header::TRANSFER_ENCODING);
        StoredView {
            facts: ResponseFacts {
                status: meta.status,
                headers,
                request_time: t(meta.request_time_ms),
                response_time: t(meta.response_time_ms),
            },
            reuse: arc_swap::ArcSwapOption::empty(),
        }
    };
    meta.derived
        .get_or_init(make, StoredView::heap_bytes)
        .unwrap_or_else(|| Arc::new(make()))
}

/// Answers from a committed object. None when its bytes cannot be read (missing or corrupt
/// chunk): the caller then treats the request as a miss and refetches.
pub async fn from_store(
    store: &Store,
    vh: &VhostRuntime,
    method: &Method,
    req: &HeaderMap,
    meta: Arc<ObjectMeta>,
    result: CacheResult,
    now: SystemTime,
) -> Option<Reply> {
    let total = meta.total_len.unwrap_or(0);
    // Small objects: read the one chunk now, so a bad chunk becomes a refetch, not a broken answer.
    let inline = if *method != Method::HEAD
        && meta.complete
        && total > 0
        && total <= meta.chunk_size as u64
    {
        // On a connection that can send from files, also the verified file holding it.
        let read = if zerocopy::active() {
            store.read_chunk_for_send(&meta, 0).await
        } else {
            store.read_chunk(&meta, 0).await.map(|b| (b, None))
        };
        match read {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!(key = %meta.key, error = %e, "stored chunk unreadable; refetching");
                return None;
            }
        }
    } else {
        None
    };
    Some(build(
        store,
        vh,
        method,
        req,
        meta,
        Source::Stored,
        inline,
        result,
        now,
    ))
}

/// Answers from an object still filling (its headers are known, its body is arriving).
pub fn from_fill(
    store: &Store,
    vh: &VhostRuntime,
    method: &Method,
    req: &HeaderMap,
    meta: Arc<ObjectMeta>,
    fill: Arc<fill::Fill>,
    result: CacheResult,
) -> Reply {
    build(
        store,
        vh,
        method,
        req,
        meta,
        |_| Source::Filling(fill),
        None,
        result,
        SystemTime::now(),
    )
}

/// Whether a request that finds `fill` in flight may wait on it: always while the origin has
/// not answered (collapsing), else only when the answer may be reused for it now.
pub fn may_join(fill: &fill::Fill, vh: &VhostRuntime, method: &Method, req: &HeaderMap) -> bool {
    let state = fill.subscribe().borrow().clone();
    match state {
        fill::FillState::Streaming { meta, .. } | fill::FillState::Done(meta) => {
            reusable_for(&meta, vh, method, req)
        }
        _ => true,
    }
}

/// Whether the answer `meta` (filling or stored) may be served to this request without
/// asking the origin: it is the variant the request selects, and it is fresh for it.
/// Collapsed requests are held to the same rule (RFC 9111 §4: a response may satisfy several
/// requests only where it may be reused for each): a `no-cache`, `max-age=0` or
/// freshness-less answer — typically a page made for one user — goes to its own client only,
/// and every waiter asks the origin for its own.
pub fn reusable_for(
    meta: &ObjectMeta,
    vh: &VhostRuntime,
    method: &Method,
    req: &HeaderMap,
) -> bool {
    selects(meta, vh, req)
        && policy::decide_reuse(method, req, &facts(meta), SystemTime::now(), &vh.policy)
            == policy::Reuse::Fresh
}

/// Waits (up to `timeout`) for `fill` to end; true when its object was committed.
pub async fn landed(fill: &fill::Fill, timeout: Duration) -> bool {
    let mut rx = fill.subscribe();
    let end = rx.wait_for(|s| {
        !matches!(
            s,
            fill::FillState::Pending | fill::FillState::Streaming { .. }
        )
    });
    matches!(
        tokio::time::timeout(timeout, end).await,
        Ok(Ok(s)) if matches!(*s, fill::FillState::Done(_))
    )
}

/// Whether `meta` (stored or filling) is the variant `req` selects (RFC 9111 §4.1). A request
/// that joined a fill before the answer's `Vary` was known may need another variant.
pub fn selects(meta: &ObjectMeta, vh: &VhostRuntime, req: &HeaderMap) -> bool {
    let headers = header_map(&meta.headers);
    let spec = policy::effective_vary(&headers, &vh.policy.vary_mode);
    let primary = key::primary_of(&meta.key);
    match policy::variant_key(&spec, req) {
        None => false,
        Some(v) if v.is_empty() => primary == meta.key,
        Some(v) => key::variant_key(primary, &v) == meta.key,
    }
}

/// The common path of both: headers, conditionals, ranges, body.
#[allow(clippy::too_many_arguments)]
fn build(
    store: &Store,
    vh: &VhostRuntime,
    method: &Method,
    req: &HeaderMap,
    meta: Arc<ObjectMeta>,
    source: impl FnOnce(Arc<ObjectMeta>) -> Source,
    inline: Option<(Bytes, Option<FileSpan>)>,
    result: CacheResult,
    now: SystemTime,
) -> Reply {
    let status = StatusCode::from_u16(meta.status).unwrap_or(StatusCode::OK);
    let facts = facts(&meta);
    // Content-Length is replaced below by the length of what this answer sends.
    let mut headers = facts.headers.clone();
    if vh.cfg.options.age_header != Some(false) {
        // RFC 9111 §5.1 (capped at 2^31 s, §1.2.2); the analysis holds the parsed inputs.
        let age = facts.reuse(&vh.policy).age(now).as_secs().min(1 << 31);
        headers.insert(header::AGE, HeaderValue::from(age));
    }
    if !headers.contains_key(header::DATE)
        && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now()))
    {
        headers.insert(header::DATE, v);
    }
    if let Some(via) = &vh.via {
        append_via(&mut headers, via);
    }

    match policy::evaluate_conditionals(method, req, &headers, meta.status) {
        Conditional::NotModified => {
            let mut r = Response::new(body::empty());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            *r.headers_mut() = not_modified_headers(&headers);
            return Reply {
                response: r,
                result: CacheResult::ImsHit,
            };
        }
        Conditional::PreconditionFailed => {
            let mut r = error(StatusCode::PRECONDITION_FAILED, "precondition failed\n");
            r.headers_mut().remove(header::CACHE_CONTROL);
            return Reply {
                response: r,
                result,
            };
        }
        Conditional::None => {}
    }

    let total = meta.total_len;
    let head = *method == Method::HEAD;
    let ranges = match (total, status) {
        (Some(len), StatusCode::OK)
            if req.contains_key(header::RANGE) && *method == Method::GET =>
        {
            // A failed If-Range means "send me the whole thing" (RFC 9110 §13.1.5).
            if req.contains_key(header::IF_RANGE) && !policy::if_range_matches(req, &headers) {
                RangeRequest::Full
            } else {
                range::parse(req.get(header::RANGE).and_then(|v| v.to_str().ok()), len)
            }
        }
        _ => RangeRequest::Full,
    };
    if status == StatusCode::OK {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    let src = source(meta.clone());
    let (status, body) = match ranges {
        RangeRequest::Unsatisfiable => {
            let len = total.unwrap_or(0);
            let mut r = error(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Reply {
                response: r,
                result,
            };
        }
        RangeRequest::Ranges(rs) if rs.len() == 1 => {
            let (s, e) = rs[0];
            let len = total.unwrap_or(0);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {s}-{e}/{len}")) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(e - s + 1));
            let body = if head {
                body::empty()
            } else if let Some((b, file)) = &inline {
                let part = b.slice(s as usize..=e as usize);
                zerocopy::body(part, file.as_ref().map(|f| f.skip(s)))
            } else {
                fill::stream_range(store.clone(), src, s, e)
            };
            (StatusCode::PARTIAL_CONTENT, body)
        }
        RangeRequest::Ranges(rs) => {
            let len = total.unwrap_or(0);
            let ctype = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/octet-stream")
                .to_string();
            let boundary = format!(
                "strata-{:016x}",
                xxhash_rust::xxh3::xxh3_64(meta.key.as_bytes()) ^ meta.version
            );
            let (body, body_len) = multipart(store.clone(), src, &rs, len, &ctype, &boundary, head);
            if let Ok(v) =
                HeaderValue::from_str(&format!("multipart/byteranges; boundary={boundary}"))
            {
                headers.insert(header::CONTENT_TYPE, v);
            }
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
            (StatusCode::PARTIAL_CONTENT, body)
        }
        RangeRequest::Full => {
            match total {
                Some(len) => headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len)),
                None => headers.remove(header::CONTENT_LENGTH),
            };
            let body = if head || total == Some(0) || status_has_no_body(status) {
                body::empty()
            } else if let Some((b, file)) = inline {
                zerocopy::body(b, file)
            } else {
                let end = total.map_or(fill::TO_THE_END, |l| l.saturating_sub(1));
                fill::stream_range(store.clone(), src, 0, end)
            };
            (status, body)
        }
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    Reply {
        response: r,
        result,
    }
}

/// Adds to the answer of the client whose request fetched `origin` the fields the cache did
/// not store (`Set-Cookie`, fields named by `private=` / `no-cache=`): they are that client's
/// alone, never served from the cache to another one. Hop-by-hop fields stay dropped.
pub fn add_unstored_fields(reply: &mut Reply, origin: &HeaderMap) {
    let mut kept = origin.clone();
    policy::remove_hop_by_hop_headers(&mut kept);
    let mut stored = kept.clone();
    policy::strip_unstorable_headers(&mut stored);
    let h = reply.response.headers_mut();
    for name in kept.keys() {
        if !stored.contains_key(name) {
            for v in kept.get_all(name) {
                h.append(name.clone(), v.clone());
            }
        }
    }
}

/// 204 and 304 carry no body.
fn status_has_no_body(s: StatusCode) -> bool {
    s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED || s.is_informational()
}

/// The fields a 304 answered from the store carries: the policy's (RFC 9110 §15.4.5), with
/// this hop's `Age` and `Via`.
fn not_modified_headers(h: &HeaderMap) -> HeaderMap {
    let mut out = policy::headers_for_304(h);
    for name in [header::AGE, header::VIA] {
        for v in h.get_all(&name) {
            out.append(name.clone(), v.clone());
        }
    }
    out
}

fn append_via(h: &mut HeaderMap, via: &HeaderValue) {
    // One lookup: this runs on every hit.
    match h.entry(header::VIA) {
        Entry::Vacant(e) => {
            e.insert(via.clone());
        }
        Entry::Occupied(mut e) => {
            let joined = match e.get().to_str() {
                Ok(old) => {
                    HeaderValue::from_str(&format!("{old}, {}", via.to_str().unwrap_or("strata")))
                        .ok()
                }
                Err(_) => Some(via.clone()),
            };
            if let Some(v) = joined {
                e.insert(v);
            }
        }
    }
}

/// A multipart/byteranges body (RFC 9110 §14.6) and its exact length.
fn multipart(
    store: Store,
    src: Source,
    ranges: &[(u64, u64)],
    len: u64,
    ctype: &str,
    boundary: &str,
    head: bool,
) -> (Body, u64) {
    let parts: Vec<(Bytes, u64, u64)> = ranges
        .iter()
        .map(|&(s, e)| {
            let h = format!("\r\n--{boundary}\r\nContent-Type: {ctype}\r\nContent-Range: bytes {s}-{e}/{len}\r\n\r\n");
            (Bytes::from(h), s, e)
        })
        .collect();
    let closing = Bytes::from(format!("\r\n--{boundary}--\r\n"));
    let total: u64 = parts
        .iter()
        .map(|(h, s, e)| h.len() as u64 + e - s + 1)
        .sum::<u64>()
        + closing.len() as u64;
    if head {
        return (body::empty(), total);
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, BoxError>>(2);
    tokio::spawn(async move {
        for (h, s, e) in parts {
            if tx.send(Ok(h)).await.is_err() {
                return;
            }
            let mut b = fill::stream_range(store.clone(), src.clone(), s, e);
            while let Some(frame) = b.frame().await {
                let item = match frame {
                    Ok(f) => match f.into_data() {
                        Ok(d) => Ok(d),
                        Err(_) => continue,
                    },
                    Err(e) => Err(e),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        }
        let _ = tx.send(Ok(closing)).await;
    });
    (body::from_channel(rx), total)
}

/// An origin answer passed through without caching: hop-by-hop fields removed, `Via` added.
pub fn passed(
    resp: Response<Body>,
    vh: &VhostRuntime,
    method: &Method,
    result: CacheResult,
) -> Reply {
    let (mut parts, body) = resp.into_parts();
    policy::remove_hop_by_hop_headers(&mut parts.headers);
    if let Some(via) = &vh.via {
        append_via(&mut parts.headers, via);
    }
    let body = if *method == Method::HEAD {
        body::empty()
    } else {
        body
    };
    Reply {
        response: Response::from_parts(parts, body),
        result,
    }
}
