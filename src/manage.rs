//! The management listener (STON's manager port, default 10040): version, vhost list,
//! origin status, stats, Prometheus metrics, configuration reload and the purge family.
//! It is never open to the world: callers outside the allow-list (loopback when the list is
//! empty) have their connection closed, and a configured token is required on every call.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use crate::body::{self, Body};
use crate::config::{self, Role};
use crate::proxy::Proxy;
use crate::purge::{self, PurgeKind};
use crate::server::ServiceListeners;
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
    /// The service listeners a reload opens and closes.
    listeners: Arc<ServiceListeners>,
}

impl Manager {
    /// A manager over `proxy`, reloading from `conf_dir`.
    pub fn new(
        proxy: Arc<Proxy>,
        conf_dir: PathBuf,
        builder: RuntimeBuilder,
        tls: Arc<SniResolver>,
        rt_stop: Mutex<CancellationToken>,
        listeners: Arc<ServiceListeners>,
    ) -> Manager {
        Manager {
            proxy,
            conf_dir,
            builder,
            tls,
            rt_stop,
            listeners,
        }
    }

    /// Whether `ip` may talk to the manager at all.
    pub fn allowed(&self, ip: IpAddr) -> bool {
        self.role_of(ip).is_some()
    }

    /// The role `ip` has: the best `<Allow>` it matches; loopback is Admin when the list is empty.
    fn role_of(&self, ip: IpAddr) -> Option<Role> {
        self.proxy.runtime.load().cfg.server.manager.role_of(ip)
    }

    /// Re-reads the configuration and swaps it in; in-flight requests finish on the old one.
    pub fn reload(&self) -> Result<usize, String> {
        let (cfg, warnings) = config::load(&self.conf_dir).map_err(|e| e.to_string())?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let cfg = Arc::new(cfg);
        // Certificates are read first (a bad one refuses the reload) but installed only
        // with the runtime: a reload refused later must leave the old ones in place.
        let certs =
            CertTable::load(&crate::server::configured_certs(&cfg)).map_err(|e| e.to_string())?;
        let (rt, stop) = self.builder.build(cfg.clone())?;
        // New service addresses are bound, dropped ones close; a port that cannot be bound
        // refuses the whole reload.
        let opened = match self.listeners.reconcile(&cfg) {
            Ok(opened) => opened,
            Err(e) => {
                // The new runtime is never installed: stop its background tasks too.
                stop.cancel();
                return Err(e.to_string());
            }
        };
        for (service, addr) in opened {
            tracing::info!(%addr, ?service, "listener opened by the reload");
        }
        self.tls.table.store(Arc::new(certs));
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
        let authorization = req.headers().get(header::AUTHORIZATION);
        if !rt
            .cfg
            .server
            .manager
            .token_ok(authorization.map(HeaderValue::as_bytes))
        {
            return json(StatusCode::UNAUTHORIZED, "{\"status\":\"unauthorized\"}");
        }
        let path = req.uri().path().to_string();
        let mut query = req.uri().query().unwrap_or("").to_string();
        let method = purge::method_kind(req.method().as_str());
        let needs_admin =
            path.starts_with("/command/") || path.starts_with("/conf/") || method.is_some();
        if needs_admin && role != Role::Admin {
            return json(StatusCode::UNAUTHORIZED, "{\"status\":\"role\"}");
        }
        // STON's `PURGE /path` (and EXPIRE, HARDPURGE) naming the vhost in `Host`.
        if let Some(kind) = method {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(crate::router::normalize_host)
                .unwrap_or_default();
            let target = format!(
                "{host}{}",
                req.uri().path_and_query().map_or("/", |p| p.as_str())
            );
            let name = req.method().as_str().to_ascii_lowercase();
            return self.purge(&name, &target, kind).await;
        }
        // STON's `POST /command/purge` with `url=...` in a form body: the body's fields count
        // as the query's.
        if req.method() == http::Method::POST {
            match Limited::new(req.into_body(), MAX_FORM).collect().await {
                Ok(b) => {
                    let form = String::from_utf8_lossy(&b.to_bytes()).trim().to_string();
                    if !form.is_empty() {
                        query = if query.is_empty() {
                            form
                        } else {
                            format!("{query}&{form}")
                        };
                    }
                }
                Err(_) => {
                    return json(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "{\"status\":\"FAIL\",\"error\":\"the form is larger than 64 KiB or was cut short\"}",
                    );
                }
            }
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
            "/command/releasememory" => match crate::memory::release_free_memory() {
                Ok(()) => json(
                    StatusCode::OK,
                    "{\"version\":\"2.0.0\",\"method\":\"releasememory\",\"status\":\"OK\"}",
                ),
                Err(e) => {
                    tracing::warn!("/command/releasememory: {e}");
                    json(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "{\"version\":\"2.0.0\",\"method\":\"releasememory\",\"status\":\"error\"}",
                    )
                }
            },
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
                for (name, value) in [
                    ("strata_store_objects", s.objects),
                    ("strata_store_memory_bytes", s.memory_bytes),
                    ("strata_store_index_bytes", s.index_bytes),
                    ("strata_store_disk_bytes", s.disk_bytes),
                    ("strata_store_disks_failing", s.disks_failing),
                ] {
                    body.push_str(&format!("# TYPE {name} gauge\n{name} {value}\n"));
                }
                // A failing disk tier: objects kept in memory only, or fills that failed.
                body.push_str(&format!(
                    "# TYPE strata_store_disk_write_errors_total counter\n\
                     strata_store_disk_write_errors_total {}\n",
                    s.disk_write_errors
                ));
                // Zero-copy: bytes sent from cache files, the connections paced because
                // their receiver held them back, and the pipes holding the files' pages
                // (none at all means large hits are being copied).
                body.push_str(&format!(
                    "# TYPE strata_zero_copy_sent_bytes_total counter\n\
                     strata_zero_copy_sent_bytes_total {}\n\
                     # TYPE strata_zero_copy_paced_connections_total counter\n\
                     strata_zero_copy_paced_connections_total {}\n\
                     # TYPE strata_zero_copy_pipes gauge\n\
                     strata_zero_copy_pipes{{kind=\"master\"}} {}\n\
                     strata_zero_copy_pipes{{kind=\"connection\"}} {}\n",
                    crate::zerocopy::sent_bytes(),
                    crate::zerocopy::paced_connections(),
                    crate::zerocopy::tee::masters_alive(),
                    crate::zerocopy::tee::connection_pipes_alive(),
                ));
                // Workers that gave their core away between requests (`<WorkerYield>`).
                body.push_str(&format!(
                    "# TYPE strata_worker_yields_total counter\n\
                     strata_worker_yields_total {}\n",
                    crate::yielding::yields()
                ));
                // Worker threads kept on a core of their own (`<WorkerAffinity>`).
                body.push_str(&format!(
                    "# TYPE strata_workers_pinned gauge\n\
                     strata_workers_pinned {}\n",
                    crate::affinity::pinned()
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
                    // No `sec`: STON's default of a day. One that is not a whole number of
                    // seconds is refused rather than read as that default.
                    _ => match param(&query, "sec").map(|s| s.parse::<u64>()) {
                        None => PurgeKind::ExpireAfter(86_400),
                        Some(Ok(sec)) => PurgeKind::ExpireAfter(sec),
                        Some(Err(_)) => PurgeKind::ExpireAfter(0),
                    },
                };
                if kind == PurgeKind::ExpireAfter(0) {
                    return json(
                        StatusCode::BAD_REQUEST,
                        "{\"status\":\"FAIL\",\"error\":\"sec must be a positive whole number of seconds\"}",
                    );
                }
                // `url=` takes the rest of the query: targets may carry their own `?` and `&`.
                let Some(targets) = query.split_once("url=").map(|(_, t)| t.to_string()) else {
                    return json(
                        StatusCode::BAD_REQUEST,
                        "{\"status\":\"FAIL\",\"error\":\"no url\"}",
                    );
                };
                self.purge(path.trim_start_matches("/command/"), &targets, kind)
                    .await
            }
            _ => json(
                StatusCode::NOT_FOUND,
                "{\"status\":\"FAIL\",\"error\":\"unknown command\"}",
            ),
        }
    }

    /// Applies `kind` to `targets` and answers with STON's JSON result under `method`.
    async fn purge(&self, method: &str, targets: &str, kind: PurgeKind) -> Response<Body> {
        let rt = self.proxy.runtime.load_full();
        let p = &self.proxy;
        json(
            StatusCode::OK,
            &purge::answer(&rt, &p.store, &p.fills, targets, kind, method).await,
        )
    }
}

/// The largest form body `POST /command/...` reads.
const MAX_FORM: usize = 64 * 1024;

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
