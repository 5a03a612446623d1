//! The server: loads the configuration, opens the store, binds the service, TLS and
//! management listeners, serves connections (HTTP/1.1 and h2/h2c), reloads the
//! configuration on SIGHUP or `/conf/reload` without dropping connections, and shuts down
//! gracefully.

pub mod interim;
pub mod runtime;
pub mod tls;

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::affinity;
use crate::cache::fill::Fills;
use crate::cache::store::{DiskConfig as StoreDisk, Store, StoreConfig};
use crate::config::{self, Config};
use crate::log::AccessLog;
use crate::manage::Manager;
use crate::proxy::{Peer, Proxy};
use crate::stats::Stats;
use crate::yielding;
use crate::zerocopy::{self, ZcStream};
use runtime::RuntimeBuilder;
use tls::{CertTable, SniResolver};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration has errors (each printed with file:line).
    #[error("{0}")]
    Config(#[from] config::LoadError),
    /// The store could not be opened.
    #[error("cache store: {0}")]
    Store(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// TLS material could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// Anything else at start-up.
    #[error("{0}")]
    Other(String),
}

/// A running server's handles (for tests and the binary).
pub struct Running {
    /// The bound service addresses (HTTP), in config order.
    pub http: Vec<SocketAddr>,
    /// The bound HTTPS addresses.
    pub https: Vec<SocketAddr>,
    /// The management address.
    pub manager: Option<SocketAddr>,
    /// The proxy (for in-process inspection).
    pub proxy: Arc<Proxy>,
    /// Cancel to shut down.
    pub shutdown: CancellationToken,
    /// Resolves when the server has stopped.
    pub done: tokio::task::JoinHandle<()>,
}

/// Loads `conf_dir` and starts serving. Returns once every listener is bound.
pub async fn start(conf_dir: &Path) -> Result<Running, ServerError> {
    let conf_dir = conf_dir.to_path_buf();
    let (cfg, warnings) = config::load(&conf_dir)?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let cfg = Arc::new(cfg);

    let store = Store::open(store_config(&cfg))
        .await
        .map_err(|e| ServerError::Store(e.to_string()))?;
    let log = match &cfg.server.log.dir {
        Some(d) => AccessLog::open(&resolve_path(&cfg.dir, d))
            .await
            .map_err(|e| ServerError::Other(format!("access log {}: {e}", d.display())))?,
        None => AccessLog::default(),
    };

    let builder = RuntimeBuilder::new().map_err(|e| ServerError::Other(e.to_string()))?;
    let (rt, rt_stop) = builder.build(cfg.clone()).map_err(ServerError::Other)?;
    let stats = Arc::new(Stats::default());
    let counted = stats.clone();
    let proxy = Arc::new(Proxy {
        runtime: ArcSwap::from_pointee(rt),
        store: store.clone(),
        fills: Arc::new(Fills::default()),
        log,
        stats,
        record: Arc::new(move |e, bytes| counted.record(e, bytes)),
    });

    let shutdown = CancellationToken::new();
    let graceful = Arc::new(std::sync::Mutex::new(Some(GracefulShutdown::new())));

    // The certificates first: HTTPS listeners answer handshakes from the moment they open.
    let resolver = Arc::new(SniResolver {
        table: ArcSwap::from_pointee(CertTable::load(&configured_certs(&cfg))?),
    });
    // One acceptor for every HTTPS listener, now and after reloads: it resolves certificates
    // through the (swappable) table.
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(resolver.clone())?));
    let listeners = Arc::new(ServiceListeners {
        proxy: proxy.clone(),
        tls: acceptor,
        shutdown: shutdown.clone(),
        graceful: graceful.clone(),
        open: std::sync::Mutex::new(HashMap::new()),
    });
    let (mut http_addrs, mut https_addrs) = (Vec::new(), Vec::new());
    for (service, addr) in listeners.reconcile(&cfg)? {
        match service {
            Service::Http => http_addrs.push(addr),
            Service::Https => https_addrs.push(addr),
        }
    }

    let manager = Arc::new(Manager::new(
        proxy.clone(),
        conf_dir.clone(),
        builder.clone(),
        resolver.clone(),
        std::sync::Mutex::new(rt_stop),
        listeners,
    ));
    let m = &cfg.server.manager;
    let maddr = SocketAddr::new(m.listen, m.port);
    let ml = bind(maddr)?;
    let manager_addr = ml.local_addr().ok();
    spawn_manager(ml, manager.clone(), shutdown.clone(), graceful.clone());

    // SIGHUP reloads, as operators expect of a daemon.
    #[cfg(unix)]
    {
        let manager = manager.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    got = hup.recv() => if got.is_none() { return },
                }
                match manager.reload() {
                    Ok(n) => tracing::info!(warnings = n, "configuration reloaded"),
                    Err(e) => {
                        tracing::error!("reload refused, keeping the running configuration:\n{e}")
                    }
                }
            }
        });
    }

    let done = {
        let shutdown = shutdown.clone();
        let manager = manager.clone();
        let log = proxy.log.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            manager.stop_runtime();
            let g = graceful.lock().ok().and_then(|mut g| g.take());
            if let Some(g) = g {
                // In-flight responses get a bounded grace period.
                let _ = tokio::time::timeout(Duration::from_secs(10), g.shutdown()).await;
            }
            log.flush().await;
            store.close().await;
        })
    };

    Ok(Running {
        http: http_addrs,
        https: https_addrs,
        manager: manager_addr,
        proxy,
        shutdown,
        done,
    })
}

/// The store's configuration, with relative disk paths resolved against the config dir.
fn store_config(cfg: &Config) -> StoreConfig {
    let c = &cfg.server.cache;
    StoreConfig {
        memory_bytes: c.memory_bytes,
        memory_max_object: c.memory_max_object,
        chunk_size: c.chunk_size,
        disks: c
            .disks
            .iter()
            .map(|d| StoreDisk {
                path: resolve_path(&cfg.dir, &d.path),
                quota_bytes: d.quota_bytes,
            })
            .collect(),
        sync_writes: false,
    }
}

/// `p` as is when absolute, else relative to the config directory.
pub fn resolve_path(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// Every `<Cert>` of every `<Https>`, with its files resolved against the config dir.
pub fn configured_certs(cfg: &Config) -> Vec<config::CertConfig> {
    cfg.server
        .https
        .iter()
        .flat_map(|h| h.certs.iter())
        .map(|c| config::CertConfig {
            names: c.names.clone(),
            cert: resolve_path(&cfg.dir, &c.cert),
            key: resolve_path(&cfg.dir, &c.key),
        })
        .collect()
}

/// What a service listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    /// Plain HTTP (a vhost's `<Listen>`).
    Http,
    /// HTTPS (an `<Https Listen>`), certificates chosen by SNI.
    Https,
}

/// Every distinct service address: the active vhosts' (HTTP), sorted, then the `<Https>`
/// listeners' in configuration order.
fn service_addresses(cfg: &Config) -> Vec<(Service, SocketAddr)> {
    let set: BTreeSet<SocketAddr> = cfg
        .vhosts
        .iter()
        .filter_map(|v| cfg.service_address(v))
        .collect();
    let mut all: Vec<_> = set.into_iter().map(|a| (Service::Http, a)).collect();
    for h in &cfg.server.https {
        if !all.contains(&(Service::Https, h.listen)) {
            all.push((Service::Https, h.listen));
        }
    }
    all
}

fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let sock = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|e| ServerError::Bind { addr, source: e })?;
    let _ = sock.set_reuseaddr(true);
    sock.bind(addr)
        .map_err(|e| ServerError::Bind { addr, source: e })?;
    sock.listen(4096)
        .map_err(|e| ServerError::Bind { addr, source: e })
}

/// The service listeners (HTTP and HTTPS), by the address the configuration names. A
/// reload binds the addresses it adds and stops accepting on those it no longer names;
/// connections already open on those go on to their end.
pub struct ServiceListeners {
    proxy: Arc<Proxy>,
    /// The TLS acceptor of every HTTPS listener.
    tls: tokio_rustls::TlsAcceptor,
    shutdown: CancellationToken,
    graceful: Graceful,
    /// Each open listener's own stop (a child of the server's shutdown).
    open: std::sync::Mutex<HashMap<(Service, SocketAddr), CancellationToken>>,
}

impl ServiceListeners {
    /// Makes the open listeners those `cfg` names: binds the missing ones first (one that
    /// cannot be bound fails the call with nothing changed), then stops the others. Returns
    /// the addresses this call bound, in configuration order (the real port where the
    /// configuration says 0): at start-up, every service address.
    pub fn reconcile(&self, cfg: &Config) -> Result<Vec<(Service, SocketAddr)>, ServerError> {
        let wanted = service_addresses(cfg);
        let Ok(mut open) = self.open.lock() else {
            return Err(ServerError::Other("listener table poisoned".into()));
        };
        let mut fresh = Vec::new();
        for &(service, addr) in wanted.iter().filter(|k| !open.contains_key(k)) {
            let l = bind(addr)?;
            let local = l
                .local_addr()
                .map_err(|e| ServerError::Bind { addr, source: e })?;
            fresh.push((service, addr, local, l));
        }
        let mut bound = Vec::new();
        for (service, addr, local, l) in fresh {
            let stop = self.shutdown.child_token();
            let tls = (service == Service::Https).then(|| self.tls.clone());
            spawn_accept(
                l,
                self.proxy.clone(),
                tls,
                stop.clone(),
                self.graceful.clone(),
            );
            open.insert((service, addr), stop);
            bound.push((service, local));
        }
        open.retain(|key, stop| {
            let keep = wanted.contains(key);
            if !keep {
                let (service, addr) = key;
                tracing::info!(%addr, ?service, "listener closed: no longer configured");
                stop.cancel();
            }
            keep
        });
        Ok(bound)
    }
}

/// How long a client has to send its first request head (and each later one once begun),
/// and how long a new connection may stay silent.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);

/// The connection builder: HTTP/1.1 with keep-alive and h2c by preface, bounded header sizes.
fn conn_builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(FIRST_BYTE_TIMEOUT)
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    b
}

type Graceful = Arc<std::sync::Mutex<Option<GracefulShutdown>>>;

/// A watcher for a new connection; `None` once the graceful shutdown has begun, when no
/// new connection is served.
fn watcher(graceful: &Graceful) -> Option<hyper_util::server::graceful::Watcher> {
    graceful
        .lock()
        .ok()
        .and_then(|g| g.as_ref().map(|g| g.watcher()))
}

/// The next accepted connection; `None` once `stop` fires.
async fn next_connection(
    listener: &TcpListener,
    stop: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

fn spawn_accept(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: CancellationToken,
    graceful: Graceful,
) {
    tokio::spawn(async move {
        let builder = Arc::new(conn_builder());
        loop {
            let Some((stream, peer)) = next_connection(&listener, &stop).await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            let local_port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
            let peer = Peer {
                addr: peer,
                local_port,
            };
            let proxy = proxy.clone();
            let builder = builder.clone();
            let Some(watcher) = watcher(&graceful) else {
                return;
            };
            let tls = tls.clone();
            tokio::spawn(async move {
                // hyper's header timeout runs from a request's first byte: a connection that
                // never sends one would keep its descriptor for good (enough of them starve
                // the server of descriptors).
                // (`peek`, not `readable`: readiness can be reported before a byte is there.)
                let mut first = [0u8; 1];
                if tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.peek(&mut first))
                    .await
                    .is_err()
                {
                    tracing::debug!(peer = %peer.addr, "closed: nothing sent within the header timeout");
                    return;
                }
                // Plain TCP may send cached bytes straight from their files (paced at this rate).
                let (zero_copy, worker_yield, worker_affinity) = {
                    let server = &proxy.runtime.load().cfg.server;
                    let cache = &server.cache;
                    (
                        cache.zero_copy.then_some(cache.zero_copy_pacing),
                        server.worker_yield,
                        server.worker_affinity,
                    )
                };
                let conn = Conn {
                    proxy,
                    peer,
                    watcher,
                    worker_yield,
                    worker_affinity,
                };
                match (tls, zero_copy) {
                    (None, Some(pace)) => {
                        let (stream, lane) = ZcStream::new(stream, pace);
                        zerocopy::scope(lane, serve(stream, &builder, conn)).await
                    }
                    (None, None) => serve(stream, &builder, conn).await,
                    (Some(acceptor), _) => {
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => serve(s, &builder, conn).await,
                            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        }
                    }
                }
            });
        }
    });
}

/// What serving one accepted connection needs besides its stream.
struct Conn {
    proxy: Arc<Proxy>,
    peer: Peer,
    watcher: hyper_util::server::graceful::Watcher,
    /// `<Host><WorkerYield>` when the connection was accepted.
    worker_yield: Option<Duration>,
    /// `<Host><WorkerAffinity>` when the connection was accepted.
    worker_affinity: bool,
}

async fn serve<S>(stream: S, builder: &auto::Builder<TokioExecutor>, conn: Conn)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Conn {
        proxy,
        peer,
        watcher,
        worker_yield,
        worker_affinity,
    } = conn;
    // hyper's server cannot send an origin's 1xx: the handle writes them around it.
    let io = interim::InterimIo::new(stream);
    let conn_interim = io.handle();
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        affinity::between_requests(worker_affinity);
        yielding::between_requests(worker_yield);
        let proxy = proxy.clone();
        let interim = conn_interim.for_request(&req);
        async move { Ok::<_, Infallible>(proxy.handle(req, peer, interim).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

fn spawn_manager(
    listener: TcpListener,
    manager: Arc<Manager>,
    stop: CancellationToken,
    graceful: Graceful,
) {
    tokio::spawn(async move {
        let builder = Arc::new(conn_builder());
        loop {
            let Some((stream, peer)) = next_connection(&listener, &stop).await else {
                return;
            };
            // Callers outside the allow-list have their connection closed, as STON does.
            if !manager.allowed(peer.ip()) {
                drop(stream);
                continue;
            }
            let manager = manager.clone();
            let builder = builder.clone();
            let Some(watcher) = watcher(&graceful) else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let manager = manager.clone();
                    async move { Ok::<_, Infallible>(manager.handle(req, peer).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                let _ = watcher.watch(conn.into_owned()).await;
            });
        }
    });
}
