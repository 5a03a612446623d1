//! The origin pool of one vhost: its addresses, the balance choice (RoundRobin, Session,
//! Hash), health (exclusion and recovery by probing, `Address2` standby), timeouts and
//! retries. The proxy hands it a request; it returns the origin's response or why none came.

pub mod client;
pub mod file;
pub mod health;
pub mod resolve;
pub mod ring;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, header};
use tokio_util::sync::CancellationToken;

use crate::body::{self, Body};
use crate::config::{
    BalanceMode, HealthChecker, OriginAddress, OriginOptions, OriginScheme, Retry, Vhost,
};
use client::{HttpClient, TimeoutBody};
use health::{AddressHealth, HealthPolicy, Transition};
use ring::Ring;

/// Why the origin gave no response. Every variant is what STON's link condition `fail` means.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OriginError {
    /// Every address is excluded (or there are none).
    #[error("no usable origin address (all excluded)")]
    Unavailable,
    /// Could not connect (refused, unreachable, DNS, or past `ConnectTimeout`).
    #[error("cannot connect to origin {0}")]
    Connect(String),
    /// Connected, but no response head within `ReceiveTimeout`.
    #[error("origin {0} sent no response within ReceiveTimeout")]
    Timeout(String),
    /// The connection broke or the origin spoke broken HTTP.
    #[error("origin {0}: {1}")]
    Protocol(String, String),
    /// The client's request body broke on its way up (malformed chunks, or the client left):
    /// the request's fault, not the origin's.
    #[error("the request body broke: {0}")]
    ClientBody(String),
}

/// Where an origin's 1xx interim answers go (HTTP/1 origins only: hyper's h2 client drops
/// them). Called on the origin connection's task, before the final response is returned.
pub type InterimSink = Arc<dyn Fn(http::StatusCode, &HeaderMap) + Send + Sync>;

/// What the proxy asks of the pool.
pub struct OriginRequest {
    /// Method sent upstream.
    pub method: Method,
    /// Path and query as requested by the client (the address's path prefix is added here).
    pub path_and_query: String,
    /// Headers to send (already stripped of hop-by-hop; Host is set by the pool).
    pub headers: HeaderMap,
    /// Request body; None = empty (GET/HEAD), which also makes the request replayable.
    pub body: Option<Body>,
    /// What the Hash balance hashes: the object's cache key (never a block number).
    pub balance_key: String,
    /// Client address, for the Session balance.
    pub client_ip: IpAddr,
    /// The client's Host header, for `<OriginOptions><Host>*</Host>`.
    pub client_host: Option<String>,
    /// Gets the origin's 1xx answers; only for the client whose request this is.
    pub on_interim: Option<InterimSink>,
}

/// The body-less part of a request: shared by reference across retries (a body is not `Sync`).
struct Head {
    method: Method,
    path_and_query: String,
    headers: HeaderMap,
    client_host: Option<String>,
    on_interim: Option<InterimSink>,
}

/// One address and its health.
struct Slot {
    addr: OriginAddress,
    /// Health as seen by traffic (and recovery probes).
    health: Mutex<AddressHealth>,
    /// Verdict of each `<HealthChecker>` (in config order); all must be healthy.
    checkers: Vec<Mutex<CheckerState>>,
}

impl Slot {
    /// Usable when traffic and every health checker agree.
    fn usable(&self) -> bool {
        self.health.lock().map(|h| h.is_usable()).unwrap_or(true)
            && self
                .checkers
                .iter()
                .all(|c| c.lock().map(|c| !c.excluded).unwrap_or(true))
    }
}

/// One health checker's running verdict on one address: consecutive results decide.
#[derive(Debug, Default)]
struct CheckerState {
    failures: u32,
    successes: u32,
    excluded: bool,
}

impl CheckerState {
    /// Feeds one probe result; returns Some(true) on recovery, Some(false) on exclusion.
    fn record(&mut self, ok: bool, exclusion: u32, recovery: u32) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.excluded && recovery > 0 && self.successes >= recovery {
                self.excluded = false;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if !self.excluded && exclusion > 0 && self.failures >= exclusion {
                self.excluded = true;
                return Some(false);
            }
        }
        None
    }
}

/// The origin pool of one vhost.
pub struct OriginPool {
    vhost_name: String,
    /// Active addresses.
    active: Vec<Slot>,
    /// `<Address2>` standbys.
    standby: Vec<Slot>,
    ring: Ring,
    rr: AtomicUsize,
    opts: OriginOptions,
    checkers: Vec<HealthChecker>,
    policy: HealthPolicy,
    client: HttpClient,
    /// Directory the config was loaded from (relative `file://` roots resolve here).
    conf_dir: PathBuf,
}

impl OriginPool {
    /// Builds the pool of `vhost` with a shared client configuration.
    pub fn new(vhost: &Vhost, client: HttpClient, conf_dir: PathBuf) -> OriginPool {
        let checkers = vhost.origin.health_checkers.len();
        let slot = |a: &OriginAddress| Slot {
            addr: a.clone(),
            health: Mutex::new(AddressHealth::new()),
            checkers: (0..checkers)
                .map(|_| Mutex::new(CheckerState::default()))
                .collect(),
        };
        let names: Vec<String> = vhost
            .origin
            .addresses
            .iter()
            .map(|a| a.raw.clone())
            .collect();
        let opts = vhost.origin_options.clone();
        OriginPool {
            vhost_name: vhost.name.clone(),
            active: vhost.origin.addresses.iter().map(slot).collect(),
            standby: vhost.origin.standby.iter().map(slot).collect(),
            ring: Ring::new(&names),
            rr: AtomicUsize::new(0),
            policy: HealthPolicy {
                exclusion: opts.exclusion,
                recovery: opts.recovery.count,
                cycle: opts.recovery.cycle,
                probe_status: opts.recovery.res_codes.clone(),
            },
            opts,
            checkers: vhost.origin.health_checkers.clone(),
            client,
            conf_dir,
        }
    }

    /// The receive timeout, for callers that read the body themselves.
    pub fn receive_timeout(&self) -> Duration {
        self.opts.receive_timeout
    }

    /// Addresses in the order they should be tried for this request.
    fn candidates(&self, req: &OriginRequest) -> Vec<&Slot> {
        let usable = |s: &Slot| s.usable();
        let n = self.active.len();
        let mut order: Vec<usize> = Vec::with_capacity(n);
        let first = match self.opts.balance {
            BalanceMode::Hash => self
                .ring
                .pick(req.balance_key.as_bytes(), |i| usable(&self.active[i])),
            BalanceMode::Session => {
                let ok: Vec<usize> = (0..n).filter(|&i| usable(&self.active[i])).collect();
                (!ok.is_empty()).then(|| ok[ip_hash(req.client_ip) % ok.len()])
            }
            BalanceMode::RoundRobin => {
                let start = self.rr.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n.max(1))
                    .find(|&i| usable(&self.active[i]))
            }
        };
        if let Some(f) = first {
            order.push(f);
            // Retries go to the next usable addresses after the first choice.
            order.extend(
                (1..n)
                    .map(|k| (f + k) % n)
                    .filter(|&i| usable(&self.active[i])),
            );
        }
        let mut out: Vec<&Slot> = order.into_iter().map(|i| &self.active[i]).collect();
        // Standbys come last: they are tried only when the active addresses failed.
        out.extend(self.standby.iter().filter(|s| usable(s)));
        out
    }

    /// Sends `req` to the origin, trying further addresses as STON's rules allow: a
    /// connection that fails before any response byte always moves to the next address;
    /// other failures are retried only as `<Retry>` says, and only for body-less requests.
    pub async fn send(&self, req: OriginRequest) -> Result<Response<Body>, OriginError> {
        let candidates = self.candidates(&req);
        let mut body = req.body;
        let head = Head {
            method: req.method,
            path_and_query: req.path_and_query,
            headers: req.headers,
            client_host: req.client_host,
            on_interim: req.on_interim,
        };
        if candidates.is_empty() {
            return Err(OriginError::Unavailable);
        }
        let retry_budget = match self.opts.retry {
            Retry::All => usize::MAX,
            Retry::Count(n) => n as usize,
        };
        let mut retries_used = 0usize;
        let mut last = OriginError::Unavailable;
        let replayable = body.is_none();
        for slot in candidates {
            match self.send_once(slot, &head, body.take()).await {
                Ok(resp) => {
                    self.record(slot, true);
                    return Ok(resp);
                }
                Err(e) => {
                    // STON counts connect and receive timeouts toward exclusion; an origin
                    // that answers badly (closes mid-response) is still up.
                    if matches!(e, OriginError::Connect(_) | OriginError::Timeout(_)) {
                        self.record(slot, false);
                    }
                    let connect_failure = matches!(e, OriginError::Connect(_));
                    last = e;
                    if !replayable {
                        break;
                    }
                    if !connect_failure {
                        if retries_used >= retry_budget {
                            break;
                        }
                        retries_used += 1;
                    }
                }
            }
        }
        Err(last)
    }

    /// One attempt against one address.
    async fn send_once(
        &self,
        slot: &Slot,
        req: &Head,
        body: Option<Body>,
    ) -> Result<Response<Body>, OriginError> {
        let addr = &slot.addr;
        if addr.scheme == OriginScheme::File {
            let root = self.conf_dir.join(&addr.path);
            let range = req.headers.get(header::RANGE).and_then(|v| v.to_str().ok());
            return Ok(file::serve(&root, &req.method, &req.path_and_query, range).await);
        }
        let uri = upstream_uri(addr, &req.path_and_query)
            .map_err(|e| OriginError::Protocol(addr.raw.clone(), e))?;
        let mut builder = Request::builder().method(req.method.clone()).uri(uri);
        let has_body = body.is_some();
        if let Some(h) = builder.headers_mut() {
            *h = req.headers.clone();
            if !has_body {
                // No body goes up (a GET's is never forwarded): a framing field the client
                // sent would make the origin wait for bytes that never come, or read the
                // next request on this pooled connection as them (RFC 9112 §6.3).
                h.remove(header::CONTENT_LENGTH);
                h.remove(header::TRANSFER_ENCODING);
            }
            let host = host_header(
                &self.opts,
                addr,
                req.client_host.as_deref(),
                &self.vhost_name,
            );
            if let Ok(v) = HeaderValue::from_str(&host) {
                h.insert(header::HOST, v);
            }
        }
        let mut request = builder
            .body(body.unwrap_or_else(body::empty))
            .map_err(|e| OriginError::Protocol(addr.raw.clone(), e.to_string()))?;
        if let Some(sink) = &req.on_interim {
            let sink = sink.clone();
            hyper::ext::on_informational(&mut request, move |res| {
                sink(res.status(), res.headers())
            });
        }
        let timeout = self.opts.receive_timeout;
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Err(_) => Err(OriginError::Timeout(addr.raw.clone())),
            Ok(Err(e)) if e.is_connect() => Err(OriginError::Connect(format!("{}: {e}", addr.raw))),
            Ok(Err(e)) if has_body && caused_by_our_request(&e) => {
                Err(OriginError::ClientBody(error_chain(&e)))
            }
            Ok(Err(e)) => Err(OriginError::Protocol(addr.raw.clone(), error_chain(&e))),
            Ok(Ok(mut resp)) => {
                let head = client::head_size(resp.headers());
                if head > client::MAX_ORIGIN_HEAD {
                    return Err(OriginError::Protocol(
                        addr.raw.clone(),
                        format!(
                            "response head of {head} bytes is over the {} KiB limit",
                            client::MAX_ORIGIN_HEAD / 1024
                        ),
                    ));
                }
                if let Some(why) = unusable_framing(&resp) {
                    return Err(OriginError::Protocol(addr.raw.clone(), why));
                }
                if resp.headers().contains_key(header::TRANSFER_ENCODING) {
                    // Both framings: the body was read by Transfer-Encoding, so the length
                    // field describes nothing we hold and must not be passed on (RFC 9112 §6.3).
                    resp.headers_mut().remove(header::CONTENT_LENGTH);
                }
                Ok(resp.map(|b| {
                    use http_body_util::BodyExt;
                    TimeoutBody::new(body::incoming(b), timeout).boxed_unsync()
                }))
            }
        }
    }

    /// Feeds a transaction's outcome into the address's health.
    fn record(&self, slot: &Slot, ok: bool) {
        let Ok(mut h) = slot.health.lock() else {
            return;
        };
        if ok {
            h.on_success();
        } else if h.on_failure(&self.policy, Instant::now()) == Transition::Excluded {
            tracing::warn!(vhost = %self.vhost_name, address = %slot.addr.raw, "origin address excluded");
        }
    }

    /// Health of each address, for `/monitoring/origin`: (address, usable, standby?).
    pub fn status(&self) -> Vec<(String, bool, bool)> {
        let row = |s: &Slot, standby| (s.addr.raw.clone(), s.usable(), standby);
        self.active
            .iter()
            .map(|s| row(s, false))
            .chain(self.standby.iter().map(|s| row(s, true)))
            .collect()
    }

    /// Re-admits every address (`/command/resetorigin`).
    pub fn reset(&self) {
        for s in self.active.iter().chain(&self.standby) {
            if let Ok(mut h) = s.health.lock() {
                h.reset();
            }
            for c in &s.checkers {
                if let Ok(mut c) = c.lock() {
                    *c = CheckerState::default();
                }
            }
        }
    }

    /// Probes excluded addresses every second until `stop`, re-admitting them per `<Recovery>`.
    pub async fn run_recovery(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            for slot in self.active.iter().chain(&self.standby) {
                let due = slot
                    .health
                    .lock()
                    .map(|mut h| h.start_probe(&self.policy, Instant::now()))
                    .unwrap_or(false);
                if !due {
                    continue;
                }
                let status = self.probe(slot).await;
                if let Ok(mut h) = slot.health.lock()
                    && h.on_probe_result(&self.policy, status, Instant::now())
                        == Transition::Recovered
                {
                    tracing::info!(vhost = %self.vhost_name, address = %slot.addr.raw, "origin address recovered");
                }
            }
        }
    }

    /// Runs every `<HealthChecker>` until `stop`: each probes every address on its own cycle,
    /// independently of traffic and of the others, and excludes or re-admits by its counts.
    pub async fn run_health_checkers(self: Arc<Self>, stop: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        for (ci, checker) in self.checkers.iter().enumerate() {
            let pool = self.clone();
            let checker = checker.clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(checker.cycle.max(Duration::from_millis(100)));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    for slot in pool.active.iter().chain(&pool.standby) {
                        let head = Head {
                            method: Method::GET,
                            path_and_query: checker.uri.clone(),
                            headers: HeaderMap::new(),
                            client_host: None,
                            on_interim: None,
                        };
                        let status = tokio::time::timeout(checker.timeout, pool.send_once(slot, &head, None))
                            .await
                            .ok()
                            .and_then(|r| r.ok())
                            .map(|r| r.status().as_u16());
                        let ok = status.is_some_and(|s| checker.res_codes.is_empty() || checker.res_codes.contains(&s));
                        let Some(state) = slot.checkers.get(ci) else { continue };
                        let changed = state
                            .lock()
                            .ok()
                            .and_then(|mut c| c.record(ok, checker.exclusion, checker.recovery));
                        match changed {
                            Some(false) => tracing::warn!(vhost = %pool.vhost_name, address = %slot.addr.raw, checker = %checker.uri, "health checker excluded address"),
                            Some(true) => tracing::info!(vhost = %pool.vhost_name, address = %slot.addr.raw, checker = %checker.uri, "health checker re-admitted address"),
                            None => {}
                        }
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// One recovery probe: the status of `GET <Recovery Uri>`, or None when it failed.
    async fn probe(&self, slot: &Slot) -> Option<u16> {
        let req = Head {
            method: Method::GET,
            path_and_query: self.opts.recovery.uri.clone(),
            headers: HeaderMap::new(),
            client_host: None,
            on_interim: None,
        };
        let resp = self.send_once(slot, &req, None).await.ok()?;
        Some(resp.status().as_u16())
    }
}

/// The URI sent upstream: scheme and authority of the address, its path prefix, then the request's.
fn upstream_uri(addr: &OriginAddress, path_and_query: &str) -> Result<Uri, String> {
    let scheme = if addr.scheme == OriginScheme::Https {
        "https"
    } else {
        "http"
    };
    let default_port = if addr.scheme == OriginScheme::Https {
        443
    } else {
        80
    };
    let authority = if addr.port == default_port {
        addr.host.clone()
    } else {
        format!("{}:{}", addr.host, addr.port)
    };
    format!("{scheme}://{authority}{}{path_and_query}", addr.path)
        .parse::<Uri>()
        .map_err(|e| e.to_string())
}

/// The Host header STON sends: `<OriginOptions><Host>` if set (`*` passes the client's), else
/// the address's domain (with `:port` unless 80), else the vhost's name.
pub fn host_header(
    opts: &OriginOptions,
    addr: &OriginAddress,
    client_host: Option<&str>,
    vhost_name: &str,
) -> String {
    match opts.host.as_deref() {
        Some("*") => client_host.unwrap_or(vhost_name).to_string(),
        Some(h) => h.to_string(),
        None if addr.host_is_name() => {
            if addr.port == 80 {
                addr.host.clone()
            } else {
                format!("{}:{}", addr.host, addr.port)
            }
        }
        None => vhost_name.to_string(),
    }
}

fn ip_hash(ip: IpAddr) -> usize {
    let bytes = match ip {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    };
    xxhash_rust::xxh3::xxh3_64(&bytes) as usize
}

/// Whether hyper failed on what we handed it rather than on the origin's side: with a
/// request body, that is the client's body stream breaking.
fn caused_by_our_request(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(h) = c.downcast_ref::<hyper::Error>() {
            return h.is_user();
        }
        cur = c.source();
    }
    false
}

/// The error and its causes on one line (hyper's errors hide the useful part in `source`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Why an origin's answer cannot be relayed as an HTTP message, if it cannot: a switch of
/// protocols nobody asked for (the upstream request never carries `Upgrade`), or a transfer
/// coding other than `chunked` — hyper removes only the chunked framing, so the body would
/// reach clients and the cache still coded, with nothing saying so (RFC 9112 §6.1, §7).
fn unusable_framing<B>(resp: &http::Response<B>) -> Option<String> {
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        return Some("101 Switching Protocols to a request that asked for no upgrade".into());
    }
    let other = resp
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .find(|c| !c.is_empty() && !c.eq_ignore_ascii_case("chunked"))?;
    Some(format!("unsupported transfer coding {other:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checker_counts_consecutive_results() {
        let mut c = CheckerState::default();
        assert_eq!(c.record(false, 2, 3), None);
        assert_eq!(
            c.record(true, 2, 3),
            None,
            "a success resets the failure count"
        );
        assert_eq!(c.record(false, 2, 3), None);
        assert_eq!(c.record(false, 2, 3), Some(false));
        assert_eq!(c.record(true, 2, 3), None);
        assert_eq!(c.record(true, 2, 3), None);
        assert_eq!(c.record(true, 2, 3), Some(true));
        let mut never = CheckerState::default();
        for _ in 0..10 {
            assert_eq!(
                never.record(false, 0, 3),
                None,
                "Exclusion 0 never excludes"
            );
        }
    }

    fn addr(host: &str, port: u16) -> OriginAddress {
        OriginAddress {
            raw: format!("{host}:{port}"),
            scheme: OriginScheme::Http,
            host: host.into(),
            port,
            path: String::new(),
        }
    }

    #[test]
    fn host_header_follows_ston() {
        let mut o = OriginOptions::default();
        let name = addr("parent-1.example.com", 80);
        let name_port = addr("parent-1.example.com", 8080);
        let ip = addr("10.0.0.1", 80);
        assert_eq!(
            host_header(&o, &name, Some("www.a.com"), "v"),
            "parent-1.example.com"
        );
        assert_eq!(
            host_header(&o, &name_port, None, "v"),
            "parent-1.example.com:8080"
        );
        assert_eq!(host_header(&o, &ip, Some("www.a.com"), "v"), "v");
        o.host = Some("*".into());
        assert_eq!(host_header(&o, &ip, Some("www.a.com"), "v"), "www.a.com");
        o.host = Some("fixed.example".into());
        assert_eq!(
            host_header(&o, &name, Some("www.a.com"), "v"),
            "fixed.example"
        );
    }

    #[test]
    fn upstream_uri_keeps_prefix_and_default_port() {
        let mut a = addr("example.com", 80);
        a.path = "/base".into();
        assert_eq!(
            upstream_uri(&a, "/x?y=1").unwrap().to_string(),
            "http://example.com/base/x?y=1"
        );
        let b = addr("10.0.0.1", 8080);
        assert_eq!(
            upstream_uri(&b, "/").unwrap().to_string(),
            "http://10.0.0.1:8080/"
        );
    }
}
