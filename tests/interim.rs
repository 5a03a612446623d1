//! End-to-end tests of 1xx interim responses (RFC 9110 §15.2): an origin's `103 Early Hints`
//! reaches the HTTP/1.1 client that caused the origin request, before the final response,
//! and is never cached. hyper can neither send a 1xx as a server nor show one to a client,
//! so the origin and the clients here speak raw HTTP/1.1 over TCP.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long the origin thinks between its 103 and its final answer.
const THINK: Duration = Duration::from_millis(300);
/// A 103 must reach the client well before the final answer could.
const HINT_DEADLINE: Duration = Duration::from_millis(250);

const HOST: &str = "interim.test";

/// One HTTP message as a client saw it.
#[derive(Debug, Clone)]
struct Msg {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Msg {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parses a message head (without the blank line): status or request line, then fields.
fn parse_head(head: &str) -> (String, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or("").to_string();
    let fields = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').expect("a field line has a colon");
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    (first, fields)
}

/// Any client or origin byte stream (TCP or TLS).
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A byte stream read with deadlines, leftovers kept for the next message.
struct Wire {
    s: Box<dyn Io>,
    buf: Vec<u8>,
}

impl Wire {
    async fn connect(addr: SocketAddr) -> Wire {
        let s = TcpStream::connect(addr).await.expect("connect");
        Wire {
            s: Box::new(s),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
    }

    /// Reads until the buffer holds `n` bytes; false on EOF or past `deadline`.
    async fn fill_to(&mut self, n: usize, deadline: Instant) -> bool {
        while self.buf.len() < n {
            if !self.more(deadline).await {
                return false;
            }
        }
        true
    }

    async fn more(&mut self, deadline: Instant) -> bool {
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    /// The next head (up to its blank line), or None by `deadline`.
    async fn head(&mut self, deadline: Instant) -> Option<String> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.buf[..end].to_vec()).expect("ASCII head");
                self.buf.drain(..end + 4);
                return Some(head);
            }
            if !self.more(deadline).await {
                return None;
            }
        }
    }

    /// The next message a client gets: a 1xx head, or a final response with its body.
    async fn message(&mut self, deadline: Instant) -> Option<Msg> {
        let head = self.head(deadline).await?;
        let (line, headers) = parse_head(&head);
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {line:?}"));
        let mut msg = Msg {
            status,
            headers,
            body: Vec::new(),
        };
        if status >= 200 {
            let len: usize = msg
                .header("content-length")
                .expect("test responses have Content-Length")
                .parse()
                .expect("a length");
            assert!(self.fill_to(len, deadline).await, "the whole body arrives");
            msg.body = self.buf.drain(..len).collect();
        }
        Some(msg)
    }

    /// Every message up to and including the final response.
    async fn exchange(&mut self) -> Vec<Msg> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out = Vec::new();
        loop {
            let m = self
                .message(deadline)
                .await
                .expect("a final response arrives");
            let done = m.status >= 200;
            out.push(m);
            if done {
                return out;
            }
        }
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").into_bytes()
}

/// A raw HTTP/1.1 origin: for every request, `103 Early Hints` (unless the path starts with
/// `/plain`), a pause, then a 200 whose body names the path. `/nostore…` answers
/// `no-store`, everything else `max-age=60`.
struct RawOrigin {
    addr: SocketAddr,
    count: Arc<AtomicUsize>,
}

impl RawOrigin {
    async fn start() -> RawOrigin {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = l.local_addr().expect("origin addr");
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(origin_conn(s, c.clone()));
            }
        });
        RawOrigin { addr, count }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

async fn origin_conn(s: TcpStream, count: Arc<AtomicUsize>) {
    let mut w = Wire {
        s: Box::new(s),
        buf: Vec::new(),
    };
    let forever = Instant::now() + Duration::from_secs(3600);
    while let Some(head) = w.head(forever).await {
        let (line, fields) = parse_head(&head);
        let path = line.split(' ').nth(1).unwrap_or("/").to_string();
        let len: usize = fields
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        if !w.fill_to(len, forever).await {
            return;
        }
        w.buf.drain(..len);
        count.fetch_add(1, Ordering::SeqCst);
        if !path.starts_with("/plain") {
            let hint = format!(
                "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\
                 X-Hint-For: {path}\r\n\r\n"
            );
            if w.s.write_all(hint.as_bytes()).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(THINK).await;
        let cc = if path.starts_with("/nostore") {
            "no-store"
        } else {
            "max-age=60"
        };
        let body = format!("body of {path}");
        let resp = format!(
            "HTTP/1.1 200 OK\r\nCache-Control: {cc}\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if w.s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Strata in front of a raw origin.
struct Lab {
    strata: SocketAddr,
    origin: RawOrigin,
    running: strata::server::Running,
    _conf: ConfDir,
}

impl Lab {
    async fn start() -> Lab {
        Lab::start_with(&server_xml("", "")).await
    }

    /// With an HTTPS listener too, for the name `a.test`.
    async fn start_tls() -> Lab {
        let server = server_xml("", "").replace(
            "</Server>",
            &format!(
                r#"<Https Listen="127.0.0.1:0"><Cert Names="a.test" Cert="{}" Key="{}"/></Https></Server>"#,
                tls_fixture("a.test.pem"),
                tls_fixture("a.test.key"),
            ),
        );
        Lab::start_with(&server).await
    }

    async fn start_with(server: &str) -> Lab {
        let origin = RawOrigin::start().await;
        let vhosts = format!(
            r#"<Vhosts><Vhost Name="{HOST}"><Listen>127.0.0.1:0</Listen><Origin><Address>{}</Address></Origin></Vhost><Default>{HOST}</Default></Vhosts>"#,
            origin.addr
        );
        let conf = ConfDir::new(server, &vhosts);
        let running = start(&conf).await;
        Lab {
            strata: running.http[0],
            origin,
            running,
            _conf: conf,
        }
    }

    /// The stored header names of `path` (sorted), or None when it is not stored.
    async fn stored_fields(&self, path: &str) -> Option<(u16, Vec<String>)> {
        let rt = self.running.proxy.runtime.load_full();
        let vh = &rt.vhosts[0];
        let key = strata::cache::key::cache_key(&vh.cfg.name, path, vh.key_rules);
        let meta = self.running.proxy.store.lookup(&key).await?;
        let mut names: Vec<String> = meta
            .headers
            .iter()
            .map(|(k, _)| k.to_ascii_lowercase())
            .collect();
        names.sort();
        Some((meta.status, names))
    }

    /// [`Lab::stored_fields`] once the fill of `path` has committed: a fill commits just
    /// after its client has the last byte, and a second request may be answered from that
    /// fill before then.
    async fn stored_fields_eventually(&self, path: &str) -> Option<(u16, Vec<String>)> {
        for _ in 0..100 {
            if let Some(f) = self.stored_fields(path).await {
                return Some(f);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.running.shutdown.cancel();
    }
}

fn statuses(msgs: &[Msg]) -> Vec<u16> {
    msgs.iter().map(|m| m.status).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_hints_precede_the_final_response_and_are_never_cached() {
    let lab = Lab::start().await;
    let mut c = Wire::connect(lab.strata).await;
    let sent = Instant::now();
    c.send(&get("/a")).await;

    let hint = c
        .message(sent + HINT_DEADLINE)
        .await
        .expect("the 103 arrives while the origin is still thinking");
    assert_eq!(hint.status, 103);
    assert_eq!(hint.header("link"), Some("</s.css>; rel=preload"));
    assert!(
        hint.header("via").is_some_and(|v| v.contains("strata")),
        "a forwarded message carries our Via: {hint:?}"
    );
    let fin = c.exchange().await;
    assert_eq!(statuses(&fin), [200]);
    assert!(sent.elapsed() >= THINK, "the 200 came after the pause");
    assert_eq!(fin[0].body_str(), "body of /a");
    assert_eq!(fin[0].header("link"), None, "interim fields stay interim");
    assert_eq!(lab.origin.count(), 1);

    // Same connection: a hit, with no 103 (nothing of the interim answer was kept).
    c.send(&get("/a")).await;
    let hit = c.exchange().await;
    assert_eq!(statuses(&hit), [200], "{hit:?}");
    assert_eq!(hit[0].body_str(), "body of /a");
    assert_eq!(hit[0].header("link"), None);
    assert!(hit[0].header("age").is_some(), "served from the cache");
    assert_eq!(lab.origin.count(), 1);

    // Stored exactly as a 200 that had no 103 before it.
    let mut p = Wire::connect(lab.strata).await;
    p.send(&get("/plain")).await;
    assert_eq!(statuses(&p.exchange().await), [200]);
    let with_hint = lab.stored_fields_eventually("/a").await.expect("/a stored");
    let without = lab
        .stored_fields_eventually("/plain")
        .await
        .expect("/plain stored");
    assert_eq!(with_hint, without);
    assert!(!with_hint.1.iter().any(|n| n == "link" || n == "x-hint-for"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_clients_get_no_interim_response() {
    let lab = Lab::start().await;
    let mut c = Wire::connect(lab.strata).await;
    c.send(format!("GET /old HTTP/1.0\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    let got = c.exchange().await;
    assert_eq!(statuses(&got), [200], "{got:?}");
    assert_eq!(got[0].body_str(), "body of /old");
    assert_eq!(lab.origin.count(), 1, "the origin did send its 103");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_and_uncacheable_answers_forward_interim_responses() {
    let lab = Lab::start().await;
    let mut c = Wire::connect(lab.strata).await;
    c.send(
        format!("POST /form HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3\r\n\r\na=1").as_bytes(),
    )
    .await;
    let got = c.exchange().await;
    assert_eq!(statuses(&got), [103, 200], "{got:?}");
    assert_eq!(got[0].header("x-hint-for"), Some("/form"));
    assert_eq!(got[1].body_str(), "body of /form");

    for n in 1..=2 {
        c.send(&get("/nostore")).await;
        let got = c.exchange().await;
        assert_eq!(statuses(&got), [103, 200], "request {n}: {got:?}");
        assert_eq!(got[0].header("link"), Some("</s.css>; rel=preload"));
        assert_eq!(got[1].body_str(), "body of /nostore");
    }
    assert_eq!(lab.origin.count(), 3);
    assert_eq!(lab.stored_fields("/nostore").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_stay_well_formed() {
    let lab = Lab::start().await;
    let mut c = Wire::connect(lab.strata).await;
    let mut both = get("/p1");
    both.extend(get("/p2"));
    c.send(&both).await;
    let first = c.exchange().await;
    let second = c.exchange().await;
    assert_eq!(
        statuses(&first),
        [103, 200],
        "nothing was in flight before the first answer"
    );
    for (msgs, path) in [(&first, "/p1"), (&second, "/p2")] {
        let (fin, hints) = msgs.split_last().expect("a final response");
        assert_eq!(fin.status, 200, "{msgs:?}");
        assert_eq!(fin.body_str(), format!("body of {path}"));
        for h in hints {
            assert_eq!(h.status, 103);
            assert_eq!(
                h.header("x-hint-for"),
                Some(path),
                "a 103 precedes only its own answer"
            );
        }
    }
    // Nothing stray after the second answer.
    let mut rest = [0u8; 64];
    let extra = tokio::time::timeout(Duration::from_millis(200), c.s.read(&mut rest)).await;
    assert!(
        extra.is_err() && c.buf.is_empty(),
        "no bytes after the last response"
    );
    assert_eq!(lab.origin.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_a_collapsed_fill_get_no_interim_response() {
    let lab = Lab::start().await;
    let mut leader = Wire::connect(lab.strata).await;
    let sent = Instant::now();
    leader.send(&get("/w")).await;
    let hint = leader
        .message(sent + HINT_DEADLINE)
        .await
        .expect("the leader gets the 103");
    assert_eq!(hint.status, 103);

    // The fill is in flight (the origin is thinking): this one waits on it.
    let mut waiter = Wire::connect(lab.strata).await;
    waiter.send(&get("/w")).await;
    let got = waiter.exchange().await;
    assert_eq!(statuses(&got), [200], "{got:?}");
    assert_eq!(got[0].body_str(), "body of /w");
    assert_eq!(statuses(&leader.exchange().await), [200]);
    assert_eq!(lab.origin.count(), 1, "one origin request for both");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_clients_get_an_intact_final_response() {
    let lab = Lab::start().await;
    let s = TcpStream::connect(lab.strata).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    for path in ["/h2", "/nostore-h2"] {
        let req = http::Request::builder()
            .uri(format!("http://{HOST}{path}"))
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
            .await
            .expect("in time")
            .expect("an h2 response");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers().get("link"), None);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body, format!("body of {path}").as_bytes());
    }
    assert_eq!(lab.origin.count(), 2);
}

fn tls_fixture(name: &str) -> String {
    format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A TLS connection to `a.test` at `addr` that trusts the test CA and offers `alpn`.
async fn tls_connect(addr: SocketAddr, alpn: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(tls_fixture("ca.pem")).expect("ca.pem") {
        roots.add(c.expect("a CA certificate")).expect("added");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("a.test").expect("a name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    tls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_get_interim_responses_over_http11_only() {
    let lab = Lab::start_tls().await;
    let addr = lab.running.https[0];
    let mut c = Wire {
        s: Box::new(tls_connect(addr, b"http/1.1").await),
        buf: Vec::new(),
    };
    let sent = Instant::now();
    c.send(&get("/tls")).await;
    let hint = c
        .message(sent + HINT_DEADLINE)
        .await
        .expect("the 103 arrives over TLS");
    assert_eq!(hint.status, 103);
    assert_eq!(hint.header("link"), Some("</s.css>; rel=preload"));
    let fin = c.exchange().await;
    assert_eq!(statuses(&fin), [200]);
    assert_eq!(fin[0].body_str(), "body of /tls");

    // h2 by ALPN: the same kind of answer arrives intact, without any interim bytes.
    let tls = tls_connect(addr, b"h2").await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("https://{HOST}/tls-h2"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = send.send_request(req).await.expect("an h2 response");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, "body of /tls-h2".as_bytes());
    assert_eq!(lab.origin.count(), 2);
}
