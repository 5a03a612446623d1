//! End-to-end tests of the serving skeleton ("Strata core"): routing, Host rules, HTTP/2,
//! TLS by SNI, balance and health, retries and bad input — over real sockets.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An origin that answers every request with its own name, the Host it saw and the path.
async fn echo_origin(name: &'static str) -> (Origin, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let o = Origin::start(handler(move |req, _| {
        let host = req
            .headers()
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        s2.lock().unwrap().push(host.clone());
        resp(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("x-origin", name),
                ("x-host", &host),
            ],
            format!("{name} {}", req.uri().path()),
        )
    }))
    .await;
    (o, seen)
}

/// Strata with one vhost `a.com` in front of an [`echo_origin`] named `name`.
async fn echo_server(name: &'static str) -> (Origin, ConfDir, strata::server::Running) {
    let (o, _) = echo_origin(name).await;
    let (conf, s) = a_com_server(o.addr).await;
    (o, conf, s)
}

/// Strata with one vhost `a.com` in front of the origin at `origin`.
async fn a_com_server(origin: SocketAddr) -> (ConfDir, strata::server::Running) {
    let conf = one_vhost_conf("", "a.com", origin);
    let s = start(&conf).await;
    (conf, s)
}

/// A configuration of one vhost `name` in front of `origin`, with `host_xml` in `<Host>`.
fn one_vhost_conf(host_xml: &str, name: &str, origin: SocketAddr) -> ConfDir {
    ConfDir::new(
        &server_xml(host_xml, ""),
        &format!("<Vhosts>{}</Vhosts>", vhost(name, "", &origin.to_string())),
    )
}

fn vhost(name: &str, extra: &str, origin: &str) -> String {
    format!(
        r#"<Vhost Name="{name}">{extra}<Listen>127.0.0.1:0</Listen><Origin><Address>{origin}</Address></Origin></Vhost>"#
    )
}

#[tokio::test]
async fn routes_by_name_alias_pattern_and_default() {
    let (a, _) = echo_origin("a").await;
    let (b, _) = echo_origin("b").await;
    let (c, _) = echo_origin("c").await;
    let vhosts = format!(
        "<Vhosts>{}{}{}<Default>c.com</Default></Vhosts>",
        vhost("a.com", "<Alias>www.a.com</Alias>", &a.addr.to_string()),
        vhost("b.com", "<Alias>*.b.com</Alias>", &b.addr.to_string()),
        vhost("c.com", "", &c.addr.to_string()),
    );
    let conf = ConfDir::new(&server_xml("", ""), &vhosts);
    let s = start(&conf).await;
    let addr = s.http[0];
    assert_eq!(get(addr, "a.com", "/x", &[]).await.header("x-origin"), "a");
    assert_eq!(
        get(addr, "WWW.A.com:8080", "/x", &[])
            .await
            .header("x-origin"),
        "a"
    );
    assert_eq!(
        get(addr, "img.b.com", "/x", &[]).await.header("x-origin"),
        "b"
    );
    assert_eq!(get(addr, "b.com", "/x", &[]).await.header("x-origin"), "b");
    assert_eq!(
        get(addr, "unknown.org", "/x", &[]).await.header("x-origin"),
        "c"
    );
    s.shutdown.cancel();
}

#[tokio::test]
async fn unknown_host_without_default_is_404_never_an_open_proxy() {
    let (a, _conf, s) = echo_server("a").await;
    let g = get(s.http[0], "evil.example", "/x", &[]).await;
    assert_eq!(g.status, 404);
    assert!(String::from_utf8_lossy(&g.body).contains("evil.example"));
    // An absolute-form request for another host is routed by that host, not proxied to it.
    let answer = raw(
        s.http[0],
        b"GET http://evil.example/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert_eq!(a.count(), 0);
    s.shutdown.cancel();
}

#[tokio::test]
async fn host_header_to_origin_follows_ston_rules() {
    let (o, seen) = echo_origin("o").await;
    let port = o.addr.port();
    let server = server_xml(
        &format!(
            r#"<Resolve Name="parent-1.example.com">127.0.0.1:{port}</Resolve><Resolve Name="named.example.com">127.0.0.1</Resolve>"#
        ),
        "",
    );
    let vhosts = format!(
        "<Vhosts>{}{}{}{}</Vhosts>",
        // A name address without a port: Host is the name (port 80 is not written).
        vhost("child.com", "", "parent-1.example.com"),
        // A name with a port: Host carries the port.
        vhost("port.com", "", &format!("named.example.com:{port}")),
        // An IP address: Host is the vhost's name.
        vhost("ip.com", "", &o.addr.to_string()),
        // <Host>*</Host> passes the client's Host.
        vhost(
            "pass.com",
            "<Alias>alias.pass.com</Alias><OriginOptions><Host>*</Host></OriginOptions>",
            &o.addr.to_string()
        ),
    );
    let conf = ConfDir::new(&server, &vhosts);
    let s = start(&conf).await;
    let a = s.http[0];
    assert_eq!(get(a, "child.com", "/1", &[]).await.status, 200);
    assert_eq!(get(a, "port.com", "/2", &[]).await.status, 200);
    assert_eq!(get(a, "ip.com", "/3", &[]).await.status, 200);
    assert_eq!(get(a, "alias.pass.com", "/4", &[]).await.status, 200);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            "parent-1.example.com".to_string(),
            format!("named.example.com:{port}"),
            "ip.com".to_string(),
            "alias.pass.com".to_string(),
        ]
    );
    s.shutdown.cancel();
}

#[tokio::test]
async fn miss_then_hit_and_via_and_forwarded_for() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let o = Origin::start(handler(move |req, _| {
        let xff = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let via = req
            .headers()
            .get("via")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let conn = req.headers().get("x-hop").is_some();
        s2.lock().unwrap().push((xff, via, conn));
        resp(200, &[("cache-control", "max-age=60")], "hello")
    }))
    .await;
    let (_conf, s) = a_com_server(o.addr).await;
    let g1 = get(
        s.http[0],
        "a.com",
        "/x",
        &[("connection", "x-hop"), ("x-hop", "1")],
    )
    .await;
    let g2 = get(s.http[0], "a.com", "/x", &[]).await;
    assert_eq!(
        (g1.body.as_ref(), g2.body.as_ref()),
        (&b"hello"[..], &b"hello"[..])
    );
    assert_eq!(o.count(), 1, "second request is a hit");
    assert!(g2.header("via").contains("strata"));
    assert!(!g2.header("age").is_empty());
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].0, "127.0.0.1");
    assert!(seen[0].1.contains("strata"));
    assert!(
        !seen[0].2,
        "a field named by Connection is hop-by-hop and must not reach the origin"
    );
    s.shutdown.cancel();
}

#[tokio::test]
async fn http2_cleartext_prior_knowledge() {
    let (_o, _conf, s) = echo_server("o").await;
    let stream = TcpStream::connect(s.http[0]).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let req = Request::builder()
            .uri(format!("http://a.com/h2/{i}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = send.send_request(req).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), http::Version::HTTP_2);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("o /h2/{i}"));
    }
    s.shutdown.cancel();
}

fn tls_fixture(name: &str) -> String {
    format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A TLS client that trusts the test CA and offers `alpn`.
fn tls_connector(alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(tls_fixture("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

#[tokio::test]
async fn tls_picks_the_certificate_by_sni_and_negotiates_h2() {
    let (o, _) = echo_origin("o").await;
    let server = server_xml("", "").replace(
        "</Server>",
        &format!(
            r#"<Https Listen="127.0.0.1:0"><Cert Names="a.test,*.a.test" Cert="{}" Key="{}"/><Cert Names="b.test" Cert="{}" Key="{}"/></Https></Server>"#,
            tls_fixture("a.test.pem"),
            tls_fixture("a.test.key"),
            tls_fixture("b.test.pem"),
            tls_fixture("b.test.key")
        ),
    );
    let vhosts = format!(
        "<Vhosts>{}{}</Vhosts>",
        vhost("a.test", "<Alias>www.a.test</Alias>", &o.addr.to_string()),
        vhost("b.test", "", &o.addr.to_string())
    );
    let conf = ConfDir::new(&server, &vhosts);
    let s = start(&conf).await;
    let addr = s.https[0];
    for (sni, alpn, want_h2) in [
        ("a.test", &b"h2"[..], true),
        ("www.a.test", &b"http/1.1"[..], false),
        ("b.test", &b"h2"[..], true),
    ] {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
        // Verification against the SNI name proves the right certificate was chosen.
        let tls = tls_connector(&[alpn])
            .connect(name, tcp)
            .await
            .expect("certificate valid for the SNI name");
        let negotiated = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        assert_eq!(negotiated.as_deref() == Some(b"h2"), want_h2);
        let req = Request::builder()
            .uri(format!("https://{sni}/tls"))
            .header("host", sni)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = if want_h2 {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            send.send_request(req).await.unwrap()
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(conn);
            send.send_request(req).await.unwrap()
        };
        assert_eq!(r.status(), 200, "{sni}");
    }
    s.shutdown.cancel();
}

/// A reload refused after its certificates were read (here: a Listen address it cannot bind)
/// leaves the certificates the server had; a reload that lands installs the new ones and
/// moves the HTTPS listener where the new `<Https Listen>` says.
#[tokio::test]
async fn a_refused_reload_keeps_the_certificates_and_a_landed_one_swaps_them() {
    let (o, _) = echo_origin("o").await;
    let https = |listen: &str, pem: &str, key: &str| {
        server_xml("", "").replace(
            "</Server>",
            &format!(
                r#"<Https Listen="{listen}"><Cert Names="a.test" Cert="{}" Key="{}"/></Https></Server>"#,
                tls_fixture(pem),
                tls_fixture(key)
            ),
        )
    };
    let a_vhost = vhost("a.test", "", &o.addr.to_string());
    let conf = ConfDir::new(
        &https("127.0.0.1:0", "a.test.pem", "a.test.key"),
        &format!("<Vhosts>{a_vhost}</Vhosts>"),
    );
    let s = start(&conf).await;
    let (addr, m) = (s.https[0], s.manager.unwrap());
    // Whether a handshake for a.test at `at` verifies: only a.test's own certificate does.
    let a_test_verifies = |at: std::net::SocketAddr| async move {
        let tcp = TcpStream::connect(at).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("a.test".to_string()).unwrap();
        tls_connector(&[b"http/1.1"])
            .connect(name, tcp)
            .await
            .is_ok()
    };
    assert!(a_test_verifies(addr).await);

    // b.test's certificate under a.test's name, and a Listen address already taken (the
    // manager's): the reload is refused and a.test still presents its own certificate.
    std::fs::write(
        conf.path().join("server.xml"),
        https("127.0.0.1:0", "b.test.pem", "b.test.key"),
    )
    .unwrap();
    let taken = format!(
        r#"<Vhosts>{a_vhost}<Vhost Name="c.test"><Listen>127.0.0.1:{}</Listen><Origin><Address>{}</Address></Origin></Vhost></Vhosts>"#,
        m.port(),
        o.addr
    );
    std::fs::write(conf.path().join("vhosts.xml"), taken).unwrap();
    let r = get(m, "127.0.0.1", "/conf/reload", &[]).await;
    assert_ne!(r.status, 200, "{:?}", r.body);
    assert!(
        a_test_verifies(addr).await,
        "a refused reload installed its certificates"
    );

    // The same certificates on a new HTTPS address with a bindable configuration: the reload
    // lands, opens the new address, closes the old one and presents the new certificate.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let moved = free.local_addr().unwrap();
    drop(free);
    std::fs::write(
        conf.path().join("server.xml"),
        https(&moved.to_string(), "b.test.pem", "b.test.key"),
    )
    .unwrap();
    std::fs::write(
        conf.path().join("vhosts.xml"),
        format!("<Vhosts>{a_vhost}</Vhosts>"),
    )
    .unwrap();
    let r = get(m, "127.0.0.1", "/conf/reload", &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(
        !a_test_verifies(moved).await,
        "the landed reload kept the old certificate"
    );
    let tcp = TcpStream::connect(moved).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("b.test".to_string()).unwrap();
    tls_connector(&[b"http/1.1"])
        .connect(name, tcp)
        .await
        .expect("the new certificate, on the new address");
    let t0 = std::time::Instant::now();
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the old HTTPS address still accepts"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.shutdown.cancel();
}

#[tokio::test]
async fn hash_balance_spreads_keys_and_moves_only_the_excluded_share() {
    let mut origins = Vec::new();
    for name in ["p1", "p2", "p3", "p4"] {
        origins.push(echo_origin(name).await.0);
    }
    let addrs: String = origins
        .iter()
        .map(|o| format!("<Address>{}</Address>", o.addr))
        .collect();
    let vhosts = format!(
        r#"<Vhosts><Vhost Name="child.com"><Listen>127.0.0.1:0</Listen><Origin>{addrs}</Origin>
        <OriginOptions><BalanceMode>Hash</BalanceMode><Exclusion>1</Exclusion><Recovery Cycle="1" Uri="/health">1</Recovery><ConnectTimeout>1</ConnectTimeout></OriginOptions>
        <Options><TTL><Res2xx>0</Res2xx></TTL></Options></Vhost></Vhosts>"#
    );
    let conf = ConfDir::new(&server_xml("", ""), &vhosts);
    let s = start(&conf).await;
    let a = s.http[0];
    // no-store on the request side is not enough to bypass; use unique query-less paths and a
    // cache-busting request header the origin ignores: every request must reach an origin.
    let owner = |g: &Got| g.header("x-origin");
    let mut before = HashMap::new();
    for i in 0..200 {
        let g = get(
            a,
            "child.com",
            &format!("/obj/{i}"),
            &[("cache-control", "no-cache")],
        )
        .await;
        before.insert(i, owner(&g));
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for o in before.values() {
        *counts.entry(o.clone()).or_default() += 1;
    }
    assert_eq!(counts.len(), 4, "all four parents get keys: {counts:?}");
    // Same key, same parent.
    for i in 0..20 {
        let g = get(
            a,
            "child.com",
            &format!("/obj/{i}"),
            &[("cache-control", "no-cache")],
        )
        .await;
        assert_eq!(owner(&g), before[&i]);
    }
    // Take p3 down: only its keys move, spread over the others.
    origins[2].stop();
    let mut after = HashMap::new();
    for i in 0..200 {
        let g = get(
            a,
            "child.com",
            &format!("/obj/{i}"),
            &[("cache-control", "no-cache")],
        )
        .await;
        assert_eq!(
            g.status, 200,
            "a failed connect is retried on the next address"
        );
        after.insert(i, owner(&g));
    }
    let mut moved_to: HashMap<String, usize> = HashMap::new();
    for i in 0..200 {
        if before[&i] == "p3" {
            assert_ne!(after[&i], "p3");
            *moved_to.entry(after[&i].clone()).or_default() += 1;
        } else {
            assert_eq!(
                after[&i], before[&i],
                "key {i} did not belong to p3 and must stay"
            );
        }
    }
    assert!(
        moved_to.len() >= 2,
        "p3's keys are spread, not handed to one neighbour: {moved_to:?}"
    );
    s.shutdown.cancel();
}

#[tokio::test]
async fn exclusion_then_recovery_by_probing() {
    let (o, _) = echo_origin("o").await;
    let port = o.addr.port();
    let vhosts = format!(
        r#"<Vhosts><Vhost Name="a.com"><Listen>127.0.0.1:0</Listen><Origin><Address>127.0.0.1:{port}</Address></Origin>
        <OriginOptions><Exclusion>2</Exclusion><Recovery Cycle="1" Uri="/health">2</Recovery><ConnectTimeout>1</ConnectTimeout></OriginOptions></Vhost></Vhosts>"#
    );
    let conf = ConfDir::new(&server_xml("", ""), &vhosts);
    let s = start(&conf).await;
    let a = s.http[0];
    o.stop();
    drop(o);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..2 {
        let g = get(a, "a.com", &format!("/down/{i}"), &[]).await;
        assert_eq!(g.status, 502);
    }
    let m = s.manager.unwrap();
    let st = get(m, "127.0.0.1", "/monitoring/origin", &[]).await;
    assert!(
        String::from_utf8_lossy(&st.body).contains("Inactive"),
        "excluded after 2 failures: {:?}",
        st.body
    );
    // Bring the origin back on the same port: two probes one second apart re-admit it.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let back = Origin::serve(listener, handler(|_, _| resp(200, &[], "back")));
    let t0 = Instant::now();
    loop {
        let st = get(m, "127.0.0.1", "/monitoring/origin", &[]).await;
        if String::from_utf8_lossy(&st.body).contains("\"Active\"") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "not recovered in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(back.count() >= 2, "recovery came from probes");
    assert_eq!(get(a, "a.com", "/up", &[]).await.status, 200);
    s.shutdown.cancel();
}

#[tokio::test]
async fn failed_connect_moves_to_the_next_address_with_zero_client_errors() {
    // A port with nothing listening.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (o, _) = echo_origin("live").await;
    let vhosts = format!(
        r#"<Vhosts><Vhost Name="a.com"><Listen>127.0.0.1:0</Listen><Origin><Address>{dead}</Address><Address>{}</Address></Origin>
        <OriginOptions><Retry>0</Retry><Exclusion>0</Exclusion></OriginOptions></Vhost></Vhosts>"#,
        o.addr
    );
    let conf = ConfDir::new(&server_xml("", ""), &vhosts);
    let s = start(&conf).await;
    for i in 0..20 {
        let g = get(s.http[0], "a.com", &format!("/r/{i}"), &[]).await;
        assert_eq!(g.status, 200, "request {i}");
        assert_eq!(g.header("x-origin"), "live");
    }
    s.shutdown.cancel();
}

/// Sends raw bytes and returns what the server answered (until it closes or 2 s pass).
async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_others_keep_being_served() {
    let (_o, _conf, s) = echo_server("o").await;
    let a = s.http[0];
    let cases: Vec<Vec<u8>> = vec![
        b"GARBAGE\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\nHost: a.com\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost a.com\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: a.com\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"
            .to_vec(),
        format!(
            "GET / HTTP/1.1\r\nHost: a.com\r\nX-Big: {}\r\n\r\n",
            "x".repeat(100_000)
        )
        .into_bytes(),
        b"POST / HTTP/1.1\r\nHost: a.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        // A good chunk first, so the body is already on its way to the origin when it breaks.
        b"POST / HTTP/1.1\r\nHost: a.com\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n"
            .to_vec(),
        vec![0u8; 64],
    ];
    for c in &cases {
        let answer = raw(a, c).await;
        // The client's fault is a 4xx, never blamed on the origin (502) or explained with
        // our internals.
        assert!(
            (answer.is_empty() || answer.starts_with("HTTP/1.1 4")) && !answer.contains("origin"),
            "bad input {:?} answered with {answer:?}",
            String::from_utf8_lossy(&c[..c.len().min(80)])
        );
        // Everyone else is still served.
        assert_eq!(get(a, "a.com", "/fine", &[]).await.status, 200);
    }
    s.shutdown.cancel();
}

/// Targets and Hosts that do not say which resource is meant are refused (400) before any
/// routing, and so are methods an edge does not forward (CONNECT 501, TRACE 405); `OPTIONS *`
/// and `OPTIONS` with `Max-Forwards: 0` are answered here; an absolute-form target is routed
/// by its own authority, not by `Host` (RFC 9112 §3.2, RFC 9110 §7.6.2).
#[tokio::test]
async fn request_targets_hosts_and_hop_methods_are_checked() {
    let (a, _) = echo_origin("a").await;
    let (b, _) = echo_origin("b").await;
    let heads = Arc::new(Mutex::new(Vec::<String>::new()));
    let h2 = heads.clone();
    let raw_o = raw_origin(move |head| {
        h2.lock().unwrap().push(head.to_string());
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            true,
        )
    })
    .await;
    let conf = ConfDir::new(
        &server_xml("", ""),
        &format!(
            "<Vhosts>{}{}{}</Vhosts>",
            vhost("a.com", "", &a.addr.to_string()),
            vhost("b.com", "", &b.addr.to_string()),
            vhost("m.com", "", &raw_o.to_string()),
        ),
    );
    let s = start(&conf).await;
    let addr = s.http[0];
    let status = |answer: &str| answer.split(' ').nth(1).unwrap_or("").to_string();
    for (request, want) in [
        ("GET / HTTP/1.1\r\n\r\n", "400"),
        (
            "GET / HTTP/1.1\r\nHost: b.com\r\nHost: a.com\r\n\r\n",
            "400",
        ),
        ("GET / HTTP/1.1\r\nHost: a.com/evil\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nHost: a.com@b.com\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nHost: \r\n\r\n", "400"),
        ("GET foo HTTP/1.1\r\nHost: a.com\r\n\r\n", "400"),
        ("GET * HTTP/1.1\r\nHost: a.com\r\n\r\n", "400"),
        (
            "CONNECT a.com:443 HTTP/1.1\r\nHost: a.com:443\r\n\r\n",
            "501",
        ),
        ("TRACE / HTTP/1.1\r\nHost: a.com\r\n\r\n", "405"),
        ("OPTIONS * HTTP/1.1\r\nHost: a.com\r\n\r\n", "200"),
        ("GET / HTTP/1.0\r\n\r\n", "404"), // no Host, no <Default>: routed, not refused
    ] {
        let closing = request.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
        let answer = raw(addr, closing.as_bytes()).await;
        assert_eq!(status(&answer), want, "{request:?}: {answer}");
        if want == "405" || request.starts_with("OPTIONS") {
            assert!(
                answer.to_ascii_lowercase().contains("\r\nallow: get"),
                "{answer}"
            );
        }
    }
    // Absolute form: the target's authority wins over Host.
    let answer = raw(
        addr,
        b"GET http://b.com/abs HTTP/1.1\r\nHost: a.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.ends_with("b /abs"), "{answer}");

    // OPTIONS: Max-Forwards 0 is answered here, 3 goes on as 2; other methods leave it.
    let options = |mf: &str| {
        format!(
            "OPTIONS /o HTTP/1.1\r\nHost: m.com\r\nMax-Forwards: {mf}\r\nConnection: close\r\n\r\n"
        )
    };
    let answer = raw(addr, options("0").as_bytes()).await;
    assert_eq!(status(&answer), "200", "{answer}");
    assert!(
        heads.lock().unwrap().is_empty(),
        "Max-Forwards 0 went upstream"
    );
    let answer = raw(addr, options("3").as_bytes()).await;
    assert_eq!(status(&answer), "200", "{answer}");
    let sent = heads.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert!(
        sent[0].to_ascii_lowercase().contains("max-forwards: 2\r\n"),
        "{}",
        sent[0]
    );
    s.shutdown.cancel();
}

/// A connection that never sends a byte is closed after the header timeout (30 s), as one
/// that stops mid-head is: silent connections cannot pile up and starve the server of
/// descriptors.
#[tokio::test]
async fn a_silent_connection_is_closed_after_the_header_timeout() {
    let (_o, _conf, s) = echo_server("o").await;
    let t0 = Instant::now();
    let mut silent = TcpStream::connect(s.http[0]).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(45), silent.read(&mut buf)).await;
    let took = t0.elapsed();
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "still open after {took:?}: {read:?}"
    );
    assert!(
        took >= Duration::from_secs(25),
        "closed early, after {took:?}"
    );
    s.shutdown.cancel();
}

/// A URL is keyed and forwarded in one normalised form: a client cannot make the origin
/// answer `/p/evil/..` and have that answer served for `/p/` (cache poisoning).
#[tokio::test]
async fn dot_segments_are_removed_before_the_origin_sees_them() {
    let (_o, _conf, s) = echo_server("o").await;
    let a = s.http[0];
    for (sent, resource) in [
        ("/p/evil/..", "/p/"),
        ("/q/%2e%2e/secret", "/secret"),
        ("/d/x/..?z=1", "/d/"),
    ] {
        let answer = raw(
            a,
            format!("GET {sent} HTTP/1.1\r\nHost: a.com\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(
            answer.ends_with(&format!("o {resource}")),
            "{sent}: {answer}"
        );
    }
    // And the normalised URL is served what its own resource answered.
    assert_eq!(get(a, "a.com", "/p/", &[]).await.body, Bytes::from("o /p/"));
    s.shutdown.cancel();
}

/// A client's GET may carry a body (and its `Content-Length`); the body is never forwarded on
/// a miss, so neither may its framing be: an origin that honours the field waits for bytes
/// that never come, or reads the next request on the pooled connection as them.
#[tokio::test]
async fn a_get_with_a_body_is_forwarded_without_its_framing() {
    let heads = Arc::new(Mutex::new(Vec::<String>::new()));
    let h2 = heads.clone();
    let oaddr = raw_origin(move |head| {
        h2.lock().unwrap().push(head.to_ascii_lowercase());
        let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: max-age=60\r\n\r\nok";
        (answer.as_bytes().to_vec(), true)
    })
    .await;
    let (_conf, s) = a_com_server(oaddr).await;
    let a = s.http[0];
    let answer = raw(
        a,
        b"GET /with-body HTTP/1.1\r\nHost: a.com\r\nContent-Length: 16\r\nConnection: close\r\n\r\nGET /smuggled/x",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = raw(
        a,
        b"GET /chunked-body HTTP/1.1\r\nHost: a.com\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The next request on the same pooled origin connection arrives whole.
    assert_eq!(get(a, "a.com", "/after", &[]).await.body, Bytes::from("ok"));
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 3, "{heads:?}");
    for h in &heads {
        assert!(
            !h.contains("content-length") && !h.contains("transfer-encoding"),
            "a bodiless request went up with framing: {h:?}"
        );
    }
    assert!(heads[2].starts_with("get /after "), "{heads:?}");
    s.shutdown.cancel();
}

#[tokio::test]
async fn a_broken_reload_keeps_the_running_configuration() {
    let (_o, conf, s) = echo_server("o").await;
    std::fs::write(
        conf.path().join("vhosts.xml"),
        "<Vhosts><Vhost Name=\"a.com\"><Origin>",
    )
    .unwrap();
    let r = get(s.manager.unwrap(), "127.0.0.1", "/conf/reload", &[]).await;
    assert_eq!(r.status, 400);
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        body.contains("vhosts.xml"),
        "the error names the file: {body}"
    );
    assert_eq!(get(s.http[0], "a.com", "/still", &[]).await.status, 200);
    s.shutdown.cancel();
}

#[test]
fn check_reports_file_line_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("server.xml"),
        "<Server><Host><Name>t</Name></Host></Server>",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("vhosts.xml"),
        "<Vhosts>\n<Vhost Name=\"a.com\">\n<Origin><Address>127.0.0.1:1</Address></Origin>\n<OriginOptions>\n<BalanceMode>Hsah</BalanceMode>\n</OriginOptions>\n<Frobnicate/>\n</Vhost>\n</Vhosts>\n",
    )
    .unwrap();
    let out = std::process::Command::new(strata_bin())
        .args(["check", "--conf"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "an error makes check fail: {text}");
    assert!(text.contains("vhosts.xml:5"), "{text}");
    assert!(
        text.contains("Hsah") && text.contains("RoundRobin") && text.contains("Hash"),
        "{text}"
    );
    assert!(
        text.contains("vhosts.xml:7") && text.contains("Frobnicate"),
        "{text}"
    );
}

#[test]
fn check_accepts_the_seed_configurations_and_the_default() {
    let root = env!("CARGO_MANIFEST_DIR");
    for dir in ["conf", "tests/fixtures/seed"] {
        let out = std::process::Command::new(strata_bin())
            .args(["check", "--conf"])
            .arg(format!("{root}/{dir}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{dir}: {text}");
        assert!(text.contains("0 error(s)"), "{dir}: {text}");
        assert!(!text.contains("unknown element"), "{dir}: {text}");
    }
}

/// An HTTPS origin presenting the `origin.test` certificate (signed by the test CA).
async fn tls_origin() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(tls_fixture("origin.test.pem"))
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
    let key = PrivateKeyDer::from_pem_file(tls_fixture("origin.test.key")).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h2 = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let hits = h2.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let v = format!("{:?}", req.version());
                    async move {
                        Ok::<_, std::convert::Infallible>(resp(
                            200,
                            &[("cache-control", "max-age=60"), ("x-version", &v)],
                            "secure",
                        ))
                    }
                });
                let io = TokioIo::new(tls);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    (addr, hits)
}

#[tokio::test]
async fn https_origins_are_verified_and_spoken_to_over_h2() {
    let (addr, hits) = tls_origin().await;
    let port = addr.port();
    let resolve = format!(r#"<Resolve Name="origin.test">127.0.0.1:{port}</Resolve>"#);
    let vh = r#"<Vhosts><Vhost Name="s.com"><Listen>127.0.0.1:0</Listen><Origin><Address>https://origin.test</Address></Origin></Vhost></Vhosts>"#;
    // Trusted through <OriginCa>: served, over h2 (ALPN).
    let trusted = ConfDir::new(
        &server_xml(
            &format!("{resolve}<OriginCa>{}</OriginCa>", tls_fixture("ca.pem")),
            "",
        ),
        vh,
    );
    let s = start(&trusted).await;
    let g = get(s.http[0], "s.com", "/a", &[]).await;
    assert_eq!((g.status.as_u16(), g.body.as_ref()), (200, &b"secure"[..]));
    assert_eq!(g.header("x-version"), "HTTP/2.0");
    s.shutdown.cancel();
    // Not trusted: the certificate is refused and nothing is served from that origin.
    let before = hits.load(std::sync::atomic::Ordering::SeqCst);
    let untrusted = ConfDir::new(&server_xml(&resolve, ""), vh);
    let s = start(&untrusted).await;
    let g = get(s.http[0], "s.com", "/b", &[]).await;
    assert_eq!(g.status, 502);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), before);
    s.shutdown.cancel();
}

#[tokio::test]
async fn certificates_are_reloaded_without_restart() {
    let (o, _) = echo_origin("o").await;
    let conf = ConfDir::new("", "");
    let cert = conf.path().join("cert.pem");
    let key = conf.path().join("key.pem");
    std::fs::copy(tls_fixture("a.test.pem"), &cert).unwrap();
    std::fs::copy(tls_fixture("a.test.key"), &key).unwrap();
    let server = server_xml("", "").replace(
        "</Server>",
        &format!(
            r#"<Https Listen="127.0.0.1:0"><Cert Cert="{}" Key="{}"/></Https></Server>"#,
            cert.display(),
            key.display()
        ),
    );
    std::fs::write(
        conf.path().join("server.xml"),
        server.replace("{DIR}", &conf.path().display().to_string()),
    )
    .unwrap();
    std::fs::write(
        conf.path().join("vhosts.xml"),
        format!(
            "<Vhosts>{}</Vhosts>",
            vhost("a.test", "<Alias>b.test</Alias>", &o.addr.to_string())
        ),
    )
    .unwrap();
    let s = start(&conf).await;
    let https = s.https[0];
    let handshake = |sni: &'static str| async move {
        let tcp = TcpStream::connect(https).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(sni).unwrap();
        tls_connector(&[b"http/1.1"])
            .connect(name, tcp)
            .await
            .is_ok()
    };
    assert!(handshake("a.test").await);
    assert!(
        !handshake("b.test").await,
        "a.test's certificate is not valid for b.test"
    );
    std::fs::copy(tls_fixture("b.test.pem"), &cert).unwrap();
    std::fs::copy(tls_fixture("b.test.key"), &key).unwrap();
    let r = get(s.manager.unwrap(), "127.0.0.1", "/conf/reload", &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(
        handshake("b.test").await,
        "the new certificate is served after reload"
    );
    assert!(!handshake("a.test").await);
    s.shutdown.cancel();
}

#[tokio::test]
async fn a_standby_address_replaces_a_failed_active_one() {
    let (active, _) = echo_origin("active").await;
    let (standby, _) = echo_origin("standby").await;
    let vhosts = format!(
        r#"<Vhosts><Vhost Name="a.com"><Listen>127.0.0.1:0</Listen><Origin><Address>{}</Address><Address2>{}</Address2></Origin>
        <OriginOptions><Exclusion>1</Exclusion><Recovery Cycle="1">1</Recovery><ConnectTimeout>1</ConnectTimeout></OriginOptions></Vhost></Vhosts>"#,
        active.addr, standby.addr
    );
    let conf = ConfDir::new(&server_xml("", ""), &vhosts);
    let s = start(&conf).await;
    let a = s.http[0];
    assert_eq!(
        get(a, "a.com", "/1", &[("cache-control", "no-cache")])
            .await
            .header("x-origin"),
        "active"
    );
    assert_eq!(
        standby.count(),
        0,
        "the standby is not used while the active one is healthy"
    );
    let port = active.addr.port();
    active.stop();
    drop(active);
    // The failed connect falls through to the standby at once, and the active one is excluded.
    for i in 0..5 {
        let g = get(a, "a.com", &format!("/s{i}"), &[]).await;
        assert_eq!(
            (g.status.as_u16(), g.header("x-origin").as_str()),
            (200, "standby")
        );
    }
    // The active one comes back: traffic returns to it after recovery.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let _back = Origin::serve(
        listener,
        handler(|_, _| resp(200, &[("x-origin", "active-again")], "x")),
    );
    let t0 = Instant::now();
    loop {
        let g = get(a, "a.com", &format!("/t{}", t0.elapsed().as_millis()), &[]).await;
        if g.header("x-origin") == "active-again" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the active address never came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.shutdown.cancel();
}

#[tokio::test]
async fn a_health_checker_excludes_and_readmits_independently_of_traffic() {
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let h2 = healthy.clone();
    let o = Origin::start(handler(move |req, _| {
        if req.uri().path() == "/health" {
            let ok = h2.load(std::sync::atomic::Ordering::SeqCst);
            resp(if ok { 200 } else { 503 }, &[], "")
        } else {
            resp(200, &[("cache-control", "no-store")], "content")
        }
    }))
    .await;
    let vhosts = format!(
        r#"<Vhosts><Vhost Name="a.com"><Listen>127.0.0.1:0</Listen><Origin><Address>{}</Address>
        <HealthChecker ResCode="200" Timeout="1" Cycle="1" Exclusion="2" Recovery="2">/health</HealthChecker></Origin></Vhost></Vhosts>"#,
        o.addr
    );
    let conf = ConfDir::new(&server_xml("", ""), &vhosts);
    let s = start(&conf).await;
    let m = s.manager.unwrap();
    let state = || async move {
        String::from_utf8_lossy(&get(m, "127.0.0.1", "/monitoring/origin", &[]).await.body)
            .to_string()
    };
    assert!(state().await.contains("\"Active\""));
    healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    let t0 = Instant::now();
    while !state().await.contains("Inactive") {
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "not excluded by the checker"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        get(s.http[0], "a.com", "/c", &[]).await.status,
        502,
        "an excluded origin is not used"
    );
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    let t0 = Instant::now();
    while !state().await.contains("\"Active\"") {
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "not re-admitted by the checker"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get(s.http[0], "a.com", "/c", &[]).await.status, 200);
    s.shutdown.cancel();
}

/// `<Host><WorkerYield>` reaches the serving path of the real binary: with a 1 µs budget
/// the workers serving a stream of hits give their core away between requests (counted in
/// `strata_worker_yields_total`); with OFF none ever does.
#[tokio::test]
async fn worker_yield_gives_the_core_away_between_requests_and_off_never_does() {
    let origin = Origin::start(handler(|_, _| {
        resp(200, &[("cache-control", "max-age=600")], "hit me")
    }))
    .await;
    for (setting, yields) in [("1", true), ("OFF", false)] {
        let conf = one_vhost_conf(
            &format!("<WorkerYield>{setting}</WorkerYield>"),
            "y.com",
            origin.addr,
        );
        let strata = ChildStrata::start(conf.path()).await;
        let addr = strata.addr;
        // Eight clients at once keep the workers busy, so that each serves several
        // requests in a row.
        let clients: Vec<_> = (0..8)
            .map(|_| {
                tokio::spawn(async move {
                    let mut statuses = Vec::new();
                    for _ in 0..25 {
                        statuses.push(get(addr, "y.com", "/a", &[]).await.status);
                    }
                    statuses
                })
            })
            .collect();
        for c in clients {
            let statuses = c.await.expect("client");
            assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        }
        let n = metric(strata.manager().await, "strata_worker_yields_total").await;
        if yields {
            assert!(n > 0, "200 requests, a 1 µs budget and no yield");
        } else {
            assert_eq!(n, 0, "<WorkerYield>OFF yielded");
        }
    }
}

/// The cores a thread of `pid` may run on (`Cpus_allowed_list` of its status file).
fn thread_cores(pid: u32, tid: &str) -> Vec<usize> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap_or_default();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("")
        .trim()
        .to_string();
    let mut cores = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (a.parse().expect("core"), b.parse().expect("core"));
        cores.extend(a..=b);
    }
    cores
}

/// `<Host><WorkerAffinity>` in the real binary: with ON (the default) and as many workers as
/// cores (the default count), each worker that served requests runs on a core of its own,
/// one per core, and tokio's other threads keep every core; with OFF no thread is pinned.
#[tokio::test]
async fn worker_affinity_gives_each_worker_a_core_and_off_pins_none() {
    let origin = Origin::start(handler(|_, _| {
        resp(200, &[("cache-control", "max-age=600")], "hit me")
    }))
    .await;
    let allowed = rustix::thread::sched_getaffinity(None).expect("affinity");
    let cores: Vec<usize> = (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|c| allowed.is_set(*c))
        .collect();
    // The child runs tokio's default worker count. Workers that do not cover the cores,
    // or a single core, are left to the kernel: nothing is pinned then, even with ON.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut want: Vec<usize> = if cores.len() >= 2 && workers >= cores.len() {
        (0..workers).map(|n| cores[n % cores.len()]).collect()
    } else {
        Vec::new()
    };
    want.sort_unstable();
    let expect_pinned = want.len();
    for (setting, on) in [("ON", true), ("OFF", false)] {
        let conf = one_vhost_conf(
            &format!("<WorkerAffinity>{setting}</WorkerAffinity>"),
            "p.com",
            origin.addr,
        );
        let strata = ChildStrata::start(conf.path()).await;
        let addr = strata.addr;
        let manager = strata.manager().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut pinned = 0;
        // Bursts of concurrent clients until every worker has served a request (or the
        // deadline): a worker pins itself before its first one.
        while Instant::now() < deadline {
            let clients: Vec<_> = (0..16)
                .map(|_| {
                    tokio::spawn(async move {
                        let mut ok = true;
                        for _ in 0..10 {
                            ok &= get(addr, "p.com", "/a", &[]).await.status == 200;
                        }
                        ok
                    })
                })
                .collect();
            for c in clients {
                assert!(c.await.expect("client"), "a request failed");
            }
            pinned = metric(manager, "strata_workers_pinned").await;
            if !on || pinned >= expect_pinned as u64 {
                break;
            }
        }
        let tids: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", strata.pid()))
            .expect("tasks")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        let masks: Vec<Vec<usize>> = tids.iter().map(|t| thread_cores(strata.pid(), t)).collect();
        let mut single: Vec<usize> = masks
            .iter()
            .filter(|m| m.len() == 1 && cores.len() > 1)
            .map(|m| m[0])
            .collect();
        single.sort_unstable();
        if on {
            assert_eq!(pinned, expect_pinned as u64, "strata_workers_pinned");
            assert_eq!(
                single, want,
                "one pinned thread per worker, round the cores: {masks:?}"
            );
            // The main thread and the blocking pool keep every core.
            assert!(
                masks.iter().filter(|m| **m == cores).count() >= 1,
                "{masks:?}"
            );
        } else {
            assert_eq!(pinned, 0, "<WorkerAffinity>OFF pinned a worker");
            assert!(single.is_empty(), "OFF, yet pinned: {masks:?}");
        }
    }
}
