//! The management listener (STON's manager port, default 10040): version, vhost list,
//! origin status, stats, Prometheus metrics, configuration reload and the purge family.
//! It is never open to the world: callers outside the allow-list (loopback when the list is
//! empty) have their connection closed, and a configured token is required on every call.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use crate::body::{self, Body};
use crate::cache::key;
use crate::config::{self, IpMatcher, Role};
use crate::proxy::{Proxy, ms};
use crate::server::runtime::RuntimeBuilder;
use crate::server::tls::{CertTable, SniResolver};

/// The management API.
pub struct Manager {
    proxy: Arc<Proxy>,
    conf_dir: PathBuf,
    builder: RuntimeBuilder,
    tls: Arc<SniResolver>,
    /// Stops the background tasks (health probes) of the runtime in service.
    rt_stop: Mutex<CancellationToken>,
}

/// What a purge-family command does to each target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeKind {
    /// Invalidate: the next request refetches.
    Purge,
    /// Mark stale: the next request revalidates.
    Expire,
    /// Delete for good.
    HardPurge,
    /// Expire `sec` seconds from now.
    ExpireAfter(u64),
}

impl Manager {
    /// A manager over `proxy`, reloading from `conf_dir`.
    pub fn new(
        proxy: Arc<Proxy>,
        conf_dir: PathBuf,
        builder: RuntimeBuilder,
        tls: Arc<SniResolver>,
        rt_stop: Mutex<CancellationToken>,
    ) -> Manager {
        Manager {
            proxy,
            conf_dir,
            builder,
            tls,
            rt_stop,
        }
    }

    /// Whether `ip` may talk to the manager at all.
    pub fn allowed(&self, ip: IpAddr) -> bool {
        self.role_of(ip).is_some()
    }

    /// The role `ip` has: the best `<Allow>` it matches; loopback is Admin when the list is empty.
    fn role_of(&self, ip: IpAddr) -> Option<Role> {
        let rt = self.proxy.runtime.load();
        let m = &rt.cfg.server.manager;
        if m.allow.is_empty() {
            return ip.is_loopback().then_some(Role::Admin);
        }
        m.allow
            .iter()
            .filter(|a| ip_matches(&a.matcher, ip))
            .map(|a| a.role)
            .max()
    }

    /// Re-reads the configuration and swaps it in; in-flight requests finish on the old one.
    pub fn reload(&self) -> Result<usize, String> {
        let (cfg, warnings) = config::load(&self.conf_dir).map_err(|e| e.to_string())?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let cfg = Arc::new(cfg);
        if !cfg.server.https.is_empty() {
            let certs: Vec<_> = cfg
                .server
                .https
                .iter()
                .flat_map(|h| h.certs.iter())
                .map(|c| config::CertConfig {
                    names: c.names.clone(),
                    cert: crate::server::resolve_path(&cfg.dir, &c.cert),
                    key: crate::server::resolve_path(&cfg.dir, &c.key),
                })
                .collect();
            let table = CertTable::load(&certs).map_err(|e| e.to_string())?;
            self.tls.table.store(Arc::new(table));
        }
        let (rt, stop) = self.builder.build(cfg)?;
        self.proxy.runtime.store(Arc::new(rt));
        if let Ok(mut old) = self.rt_stop.lock() {
            old.cancel();
            *old = stop;
        }
        Ok(warnings.len())
    }

    /// Stops the current runtime's background tasks (at shutdown).
    pub fn stop_runtime(&self) {
        if let Ok(s) = self.rt_stop.lock() {
            s.cancel();
        }
    }

    /// Answers one management request.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let Some(role) = self.role_of(peer.ip()) else {
            return json(StatusCode::FORBIDDEN, "{\"status\":\"denied\"}");
        };
        let rt = self.proxy.runtime.load_full();
        if let Some(token) = &rt.cfg.server.manager.token {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if given != Some(token.as_str()) {
                return json(StatusCode::UNAUTHORIZED, "{\"status\":\"unauthorized\"}");
            }
        }
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let needs_admin = path.starts_with("/command/") || path.starts_with("/conf/");
        if needs_admin && role != Role::Admin {
            return json(StatusCode::UNAUTHORIZED, "{\"status\":\"role\"}");
        }
        match path.as_str() {
            "/version" => json(
                StatusCode::OK,
                &format!("{{\"version\":\"{}\"}}", env!("CARGO_PKG_VERSION")),
            ),
            "/monitoring/vhostslist" => {
                let names: Vec<String> = rt
                    .vhosts
                    .iter()
                    .map(|v| format!("\"{}\"", esc(&v.cfg.name)))
                    .collect();
                json(
                    StatusCode::OK,
                    &format!(
                        "{{\"version\":\"2.0.0\",\"method\":\"vhostslist\",\"status\":\"OK\",\"result\":[{}]}}",
                        names.join(",")
                    ),
                )
            }
            "/monitoring/origin" => {
                let want = param(&query, "vhost");
                let mut rows = Vec::new();
                for v in rt
                    .vhosts
                    .iter()
                    .filter(|v| want.as_deref().is_none_or(|w| w == v.cfg.name))
                {
                    let addrs: Vec<String> = v
                        .pool
                        .status()
                        .into_iter()
                        .map(|(a, ok, standby)| {
                            format!(
                                "{{\"Address\":\"{}\",\"Status\":\"{}\",\"Standby\":{standby}}}",
                                esc(&a),
                                if ok { "Active" } else { "Inactive" }
                            )
                        })
                        .collect();
                    rows.push(format!(
                        "{{\"VirtualHost\":\"{}\",\"Origins\":[{}]}}",
                        esc(&v.cfg.name),
                        addrs.join(",")
                    ));
                }
                json(
                    StatusCode::OK,
                    &format!(
                        "{{\"version\":\"2.0.0\",\"method\":\"origin\",\"status\":\"OK\",\"result\":[{}]}}",
                        rows.join(",")
                    ),
                )
            }
            "/command/resetorigin" => {
                let want = param(&query, "vhost");
                for v in rt
                    .vhosts
                    .iter()
                    .filter(|v| want.as_deref().is_none_or(|w| w == v.cfg.name))
                {
                    v.pool.reset();
                }
                json(
                    StatusCode::OK,
                    "{\"version\":\"2.0.0\",\"method\":\"resetorigin\",\"status\":\"OK\"}",
                )
            }
            "/monitoring/realtime" | "/monitoring/stats" => {
                let rows: Vec<String> = self
                    .proxy
                    .stats
                    .snapshot()
                    .into_iter()
                    .map(|(v, req, hits, bytes, c)| {
                        format!(
                            "{{\"VirtualHost\":\"{}\",\"Requests\":{req},\"Hits\":{hits},\"OutboundBytes\":{bytes},\"Res1xx\":{},\"Res2xx\":{},\"Res3xx\":{},\"Res4xx\":{},\"Res5xx\":{}}}",
                            esc(&v), c[0], c[1], c[2], c[3], c[4]
                        )
                    })
                    .collect();
                json(
                    StatusCode::OK,
                    &format!(
                        "{{\"version\":\"2.0.0\",\"method\":\"realtime\",\"status\":\"OK\",\"result\":[{}]}}",
                        rows.join(",")
                    ),
                )
            }
            "/metrics" => {
                let mut body = self.proxy.stats.prometheus();
                let s = self.proxy.store.stats();
                body.push_str(&format!(
                    "# TYPE strata_store_objects gauge\nstrata_store_objects {}\n",
                    s.objects
                ));
                body.push_str(&format!(
                    "# TYPE strata_store_memory_bytes gauge\nstrata_store_memory_bytes {}\n",
                    s.memory_bytes
                ));
                body.push_str(&format!(
                    "# TYPE strata_store_disk_bytes gauge\nstrata_store_disk_bytes {}\n",
                    s.disk_bytes
                ));
                let mut r = Response::new(body::full(body));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            "/conf/reload" => match self.reload() {
                Ok(w) => json(
                    StatusCode::OK,
                    &format!(
                        "{{\"version\":\"2.0.0\",\"method\":\"reload\",\"status\":\"OK\",\"warnings\":{w}}}"
                    ),
                ),
                Err(e) => json(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "{{\"version\":\"2.0.0\",\"method\":\"reload\",\"status\":\"FAIL\",\"error\":\"{}\"}}",
                        esc(&e)
                    ),
                ),
            },
            "/command/purge"
            | "/command/expire"
            | "/command/hardpurge"
            | "/command/expireafter" => {
                let kind = match path.as_str() {
                    "/command/purge" => PurgeKind::Purge,
                    "/command/expire" => PurgeKind::Expire,
                    "/command/hardpurge" => PurgeKind::HardPurge,
                    _ => PurgeKind::ExpireAfter(
                        param(&query, "sec")
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(86_400),
                    ),
                };
                if kind == PurgeKind::ExpireAfter(0) {
                    return json(
                        StatusCode::BAD_REQUEST,
                        "{\"status\":\"FAIL\",\"error\":\"sec must be positive\"}",
                    );
                }
                // `url=` takes the rest of the query: targets may carry their own `?` and `&`.
                let Some(targets) = query.split_once("url=").map(|(_, t)| t.to_string()) else {
                    return json(
                        StatusCode::BAD_REQUEST,
                        "{\"status\":\"FAIL\",\"error\":\"no url\"}",
                    );
                };
                let method = path.trim_start_matches("/command/");
                let started = Instant::now();
                let (count, size) = self.purge(&targets, kind).await;
                json(
                    StatusCode::OK,
                    &format!(
                        "{{\"version\":\"2.0.0\",\"method\":\"{method}\",\"status\":\"OK\",\"result\":{{\"Count\":{count},\"Size\":{size},\"Time\":{}}}}}",
                        started.elapsed().as_millis()
                    ),
                )
            }
            _ => json(
                StatusCode::NOT_FOUND,
                "{\"status\":\"FAIL\",\"error\":\"unknown command\"}",
            ),
        }
    }

    /// Applies `kind` to every target of a `|`-separated list (STON's purge target forms:
    /// `http://host/path`, `host/path`, `host/dir/`, `host/*.jpg`, `/path` reusing the last host).
    pub async fn purge(&self, targets: &str, kind: PurgeKind) -> (u64, u64) {
        let rt = self.proxy.runtime.load_full();
        let mut last_host = String::new();
        let mut count = 0;
        let mut size = 0;
        let keys = self.proxy.store.keys();
        for raw in targets.split('|').map(str::trim).filter(|t| !t.is_empty()) {
            let t = raw
                .trim_start_matches("http://")
                .trim_start_matches("https://");
            let (host, path) = match t.find('/') {
                Some(0) => (last_host.clone(), t.to_string()),
                Some(i) => (t[..i].to_ascii_lowercase(), t[i..].to_string()),
                None => (t.to_ascii_lowercase(), "/".to_string()),
            };
            last_host = host.clone();
            let Some(vi) = rt.router.route(Some(&host)) else {
                continue;
            };
            let vh = &rt.vhosts[vi];
            let pattern = if path.contains('*') {
                format!("{}{}", vh.cfg.name, path)
            } else {
                key::cache_key(&vh.cfg.name, &path, vh.key_rules)
            };
            for (k, bytes) in &keys {
                let primary = key::primary_of(k);
                if !glob(&pattern, primary) {
                    continue;
                }
                let done = match kind {
                    // STON's purge keeps the copy as a fallback: the next request refetches it
                    // unconditionally, but if the origin is down the purged copy is served.
                    PurgeKind::Purge => self.expire_at(k, PURGED).await,
                    PurgeKind::HardPurge => self.proxy.store.remove(k).await.is_some(),
                    PurgeKind::Expire => self.expire_at(k, ms(SystemTime::now())).await,
                    PurgeKind::ExpireAfter(sec) => {
                        self.expire_at(k, ms(SystemTime::now()) + sec * 1000).await
                    }
                };
                if done {
                    count += 1;
                    size += bytes;
                }
            }
        }
        (count, size)
    }

    /// Sets the expiry override; false when the key is gone or was already purged (STON
    /// does not count an already-purged object again).
    async fn expire_at(&self, key: &str, at_ms: u64) -> bool {
        let mut already = false;
        let found = self
            .proxy
            .store
            .update_meta(key, |m| {
                already = m.expires_override_ms == Some(PURGED);
                if !already {
                    m.expires_override_ms = Some(at_ms);
                }
            })
            .await
            .is_some();
        found && !already
    }
}

/// The expiry override that marks a purged object: refetch it, serve it only if the origin fails.
pub const PURGED: u64 = 0;

/// `*` matches any run of characters; everything else literally.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

fn ip_matches(m: &IpMatcher, ip: IpAddr) -> bool {
    match (m, ip) {
        (IpMatcher::Exact(a), ip) => *a == ip,
        (IpMatcher::Range(IpAddr::V4(a), IpAddr::V4(b)), IpAddr::V4(ip)) => {
            (u32::from(*a)..=u32::from(*b)).contains(&u32::from(ip))
        }
        (IpMatcher::Prefix(IpAddr::V4(net), bits), IpAddr::V4(ip)) => {
            let mask = if *bits == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from((*bits).min(32)))
            };
            u32::from(*net) & mask == u32::from(ip) & mask
        }
        (IpMatcher::Prefix(IpAddr::V6(net), bits), IpAddr::V6(ip)) => {
            let mask = if *bits == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from((*bits).min(128)))
            };
            u128::from(*net) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}

fn param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o
}

fn json(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(body::full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("h/img/*.jpg", "h/img/a.jpg"));
        assert!(glob("h/*", "h/x/y?z"));
        assert!(!glob("h/img/*.jpg", "h/img/a.png"));
        assert!(glob("h/a", "h/a"));
        assert!(!glob("h/a", "h/ab"));
    }

    #[test]
    fn allow_matchers() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(ip_matches(
            &IpMatcher::Prefix(ip("192.168.3.0"), 24),
            ip("192.168.3.77")
        ));
        assert!(!ip_matches(
            &IpMatcher::Prefix(ip("192.168.3.0"), 24),
            ip("192.168.4.1")
        ));
        assert!(ip_matches(
            &IpMatcher::Range(ip("192.168.2.1"), ip("192.168.2.255")),
            ip("192.168.2.9")
        ));
        assert!(ip_matches(
            &IpMatcher::Exact(ip("127.0.0.1")),
            ip("127.0.0.1")
        ));
    }
}
