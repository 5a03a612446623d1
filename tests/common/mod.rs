//! Shared pieces of the end-to-end tests: a real HTTP origin on a loopback port whose
//! behaviour each test scripts, a throw-away configuration directory, an in-process Strata
//! (real listeners, real sockets) and a small HTTP client.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use strata::body::{Body, BoxError};

/// A boxed handler future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;
/// A scripted origin's handler: gets the request and the number of this request (1-based).
pub type Handler = Arc<dyn Fn(Request<Incoming>, usize) -> HandlerFuture + Send + Sync>;

/// A real HTTP/1.1 origin on 127.0.0.1 that counts its requests.
pub struct Origin {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests received so far.
    pub hits: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Origin {
    /// Starts an origin running `handler` for every request.
    pub async fn start(handler: Handler) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        Self::serve(listener, handler)
    }

    /// Starts an origin on a given listener (to restart on the same port).
    pub fn serve(listener: TcpListener, handler: Handler) -> Origin {
        let addr = listener.local_addr().expect("origin addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (h2, s2) = (hits.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = s2.cancelled() => return,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let (handler, hits, stop) = (handler.clone(), h2.clone(), s2.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
                        let f = handler(req, n);
                        async move { Ok::<_, Infallible>(f.await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        Origin { addr, hits, stop }
    }

    /// Requests received so far.
    pub fn count(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting and drops open connections.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A handler from a plain closure that builds the response synchronously.
pub fn handler<F>(f: F) -> Handler
where
    F: Fn(&Request<Incoming>, usize) -> Response<Body> + Send + Sync + 'static,
{
    Arc::new(move |req, n| {
        let r = f(&req, n);
        Box::pin(async move { r })
    })
}

/// A response with a body and headers.
pub fn resp(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<Body> {
    let body: Bytes = body.into();
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.header("content-length", body.len())
        .body(strata::body::full(body))
        .expect("response")
}

/// A throw-away configuration directory.
pub struct ConfDir {
    /// The directory (deleted on drop).
    pub dir: tempfile::TempDir,
}

impl ConfDir {
    /// Writes `server.xml` and `vhosts.xml`. `{DIR}` in either is replaced by the directory path.
    pub fn new(server_xml: &str, vhosts_xml: &str) -> ConfDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().display().to_string();
        std::fs::write(
            dir.path().join("server.xml"),
            server_xml.replace("{DIR}", &p),
        )
        .expect("server.xml");
        std::fs::write(
            dir.path().join("vhosts.xml"),
            vhosts_xml.replace("{DIR}", &p),
        )
        .expect("vhosts.xml");
        ConfDir { dir }
    }

    /// The directory path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A server.xml for tests: manager on an ephemeral port, memory tier and a disk in the dir.
pub fn server_xml(extra_host: &str, extra_cache: &str) -> String {
    format!(
        r#"<Server>
  <Host>
    <Name>strata-test</Name>
    <Manager Port="0" Listen="127.0.0.1"><Allow>127.0.0.1</Allow></Manager>
    {extra_host}
  </Host>
  <Cache>
    <Storage><Disk Quota="1GB">{{DIR}}/cache</Disk></Storage>
    <MemorySize>64MB</MemorySize>
    {extra_cache}
  </Cache>
</Server>"#
    )
}

/// Starts Strata in-process on `conf`.
pub async fn start(conf: &ConfDir) -> strata::server::Running {
    strata::server::start(conf.path())
        .await
        .expect("strata starts")
}

/// A plain client (HTTP/1.1, pooled).
pub fn client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// A fetched response.
#[derive(Debug)]
pub struct Got {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Got {
    /// A header as a string ("" when absent).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }
}

/// `GET http://addr{path}` with `Host: host` and extra headers.
pub async fn get(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Got {
    request("GET", addr, host, path, headers, Bytes::new())
        .await
        .expect("request succeeds")
}

/// Any request; Err when the body did not arrive complete.
pub async fn request(
    method: &str,
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Got, BoxError> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(body))?;
    let resp = tokio::time::timeout(Duration::from_secs(60), client().request(req)).await??;
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(120), body.collect())
        .await??
        .to_bytes();
    Ok(Got {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// An origin answering `/big` with `big` and every other path with `other`, both cacheable
/// for ten minutes.
pub async fn origin_of_big_and(big: Bytes, other: Bytes) -> Origin {
    Origin::start(handler(move |req, _| {
        let body = if req.uri().path() == "/big" {
            big.clone()
        } else {
            other.clone()
        };
        resp(200, &[("cache-control", "max-age=600")], body)
    }))
    .await
}

/// Deterministic pseudo-random bytes (so bodies are checkable without storing them).
pub fn pattern(len: usize, seed: u64) -> Bytes {
    let mut out = Vec::with_capacity(len);
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// The path of the built `strata` binary (for multi-process tests).
pub fn strata_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_strata"))
}

/// The real `strata` binary as a child process. Killed (SIGKILL, by PID) when dropped, so a
/// failing test never leaves it behind.
pub struct ChildStrata {
    child: std::process::Child,
    /// Its first HTTP listener.
    pub addr: SocketAddr,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

/// An address the child logged: `serving HTTP on A` or `management on A`.
fn logged_addr(line: &str, after: &str) -> Option<SocketAddr> {
    let rest = line.split(after).nth(1)?;
    let token: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    token.parse().ok()
}

impl ChildStrata {
    /// Starts `strata run --conf dir` and waits until it logs its HTTP address.
    pub async fn start(conf: &Path) -> ChildStrata {
        Self::spawn(conf, None).await
    }

    /// [`ChildStrata::start`] with the child's open-files limit (soft and hard) set to
    /// `nofile`: a server short of descriptors.
    pub async fn start_with_nofile(conf: &Path, nofile: u64) -> ChildStrata {
        Self::spawn(conf, Some(nofile)).await
    }

    async fn spawn(conf: &Path, nofile: Option<u64>) -> ChildStrata {
        use std::io::{BufRead, BufReader};
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};

        let mut cmd = Command::new(strata_bin());
        cmd.arg("run")
            .arg("--conf")
            .arg(conf)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(n) = nofile {
            let limit = rustix::process::Rlimit {
                current: Some(n),
                maximum: Some(n),
            };
            // SAFETY: between fork and exec the closure makes one system call (setrlimit),
            // which is async-signal-safe; it allocates nothing and takes no lock.
            unsafe {
                cmd.pre_exec(move || {
                    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn strata");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        let log2 = log.clone();
        // Drains stderr for the child's whole life (a full pipe would block it).
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = logged_addr(&line, "serving HTTP on ") {
                    let _ = tx.send(a);
                }
                if let Ok(mut l) = log2.lock()
                    && l.len() < 10_000
                {
                    l.push(line);
                }
            }
        });
        let mut me = ChildStrata {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await
            .expect("join");
        match addr {
            Ok(a) => me.addr = a,
            Err(_) => panic!("strata did not start:\n{}", me.log_text()),
        }
        me
    }

    /// The management address the child logged (it logs it right after its HTTP ones).
    pub async fn manager(&self) -> SocketAddr {
        for _ in 0..100 {
            let found = self.log.lock().ok().and_then(|l| {
                l.iter()
                    .find_map(|line| logged_addr(line, "management on "))
            });
            if let Some(a) = found {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no management address logged:\n{}", self.log_text())
    }

    /// The child's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the child is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything the child logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// A `kB` field of /proc/<pid>/status (VmRSS, VmHWM).
    pub fn status_kb(&self, field: &str) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        s.lines()
            .find(|l| l.starts_with(field))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildStrata {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A raw HTTP/1 origin on 127.0.0.1, for tests that need byte-level control of the answer:
/// for each request head it reads (up to 64 KiB), `answer(head)` gives the bytes to write
/// and whether the connection then stays open for another request.
pub async fn raw_origin<F>(answer: F) -> SocketAddr
where
    F: Fn(&str) -> (Vec<u8>, bool) + Send + Sync + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
                        match tokio::time::timeout(Duration::from_secs(10), sock.read(&mut byte))
                            .await
                        {
                            Ok(Ok(1)) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let (bytes, keep_open) = answer(&String::from_utf8_lossy(&head));
                    if sock.write_all(&bytes).await.is_err() || !keep_open {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The value of the unlabelled metric `name` on the manager at `manager`.
pub async fn metric(manager: SocketAddr, name: &str) -> u64 {
    let m = get(manager, "127.0.0.1", "/metrics", &[]).await;
    assert_eq!(m.status, 200);
    let text = String::from_utf8_lossy(&m.body);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}
