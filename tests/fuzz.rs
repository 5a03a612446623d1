//! Fuzz tests: many deterministic pseudo-random inputs through every parser that takes
//! outside data (configuration, Range, cache keys, Cache-Control, dates) and through a live
//! server's sockets. Nothing may panic, a broken configuration must name file and line, and
//! the server must keep serving well-formed requests whatever arrived before.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use http::{HeaderMap, HeaderValue, Method};
use strata::cache::{key, policy, range};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// xorshift64*: small, deterministic, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

/// Mutates `input`: flips, deletes, duplicates and inserts interesting fragments.
fn mutate(rng: &mut Rng, input: &str, fragments: &[&str]) -> String {
    let mut b = input.as_bytes().to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            b.extend_from_slice(rng.pick(fragments).as_bytes());
            continue;
        }
        let at = rng.below(b.len());
        match rng.below(5) {
            0 => b[at] = (rng.next() & 0xff) as u8,
            1 => {
                let end = (at + rng.below(16)).min(b.len());
                b.drain(at..end);
            }
            2 => {
                let end = (at + rng.below(32)).min(b.len());
                let dup = b[at..end].to_vec();
                b.splice(at..at, dup);
            }
            3 => b.truncate(at),
            _ => {
                let f = rng.pick(fragments).as_bytes().to_vec();
                b.splice(at..at, f);
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

const SEED_VHOSTS: &str = include_str!("fixtures/seed/vhosts.xml");
const SEED_SERVER: &str = include_str!("fixtures/seed/server.xml");

#[test]
fn broken_configurations_never_panic_and_always_name_file_and_line() {
    let frags = [
        "<",
        ">",
        "</Vhost>",
        "<Vhost Name=\"x\">",
        "\"",
        "&amp;",
        "&bogus;",
        "<!--",
        "-->",
        "<![CDATA[",
        "]]>",
        "<BalanceMode>Hsah</BalanceMode>",
        "<Listen>99999</Listen>",
        "<Address>:::</Address>",
        "Quota=\"-1\"",
        "<VhostLink Condition=\"9xx\">foo.com</VhostLink>",
        "\u{0}",
        "é",
        "<TTL><Res2xx>abc</Res2xx></TTL>",
    ];
    let mut rng = Rng(0x5eed_c0ff_ee00_0001);
    let dir = tempfile::tempdir().unwrap();
    for i in 0..1500 {
        let (server, vhosts) = if i % 3 == 0 {
            (
                mutate(&mut rng, SEED_SERVER, &frags),
                SEED_VHOSTS.to_string(),
            )
        } else {
            (
                SEED_SERVER.to_string(),
                mutate(&mut rng, SEED_VHOSTS, &frags),
            )
        };
        std::fs::write(dir.path().join("server.xml"), &server).unwrap();
        std::fs::write(dir.path().join("vhosts.xml"), &vhosts).unwrap();
        let (_cfg, diags) = strata::config::load_for_check(dir.path());
        for d in &diags {
            let text = d.to_string();
            assert!(
                text.contains(".xml:"),
                "diagnostic without file:line: {text}"
            );
            assert!(d.line >= 1, "{text}");
        }
        if let Err(e) = strata::config::load(dir.path()) {
            assert!(e.to_string().contains(".xml:"), "{e}");
        }
    }
}

#[test]
fn range_headers_never_panic_and_stay_in_bounds() {
    let frags = [
        "bytes=",
        "-",
        ",",
        "0",
        "1",
        "999999999999999999999",
        "-0",
        " ",
        "items=",
        "5-1",
    ];
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let mut h = String::new();
        for _ in 0..rng.below(8) {
            h.push_str(rng.pick(&frags));
        }
        let len = [0u64, 1, 10, 1000, u64::MAX / 2][rng.below(5)];
        if let range::RangeRequest::Ranges(rs) = range::parse(Some(&h), len) {
            assert!(!rs.is_empty());
            for (s, e) in rs {
                assert!(s <= e && e < len, "{h:?} len {len} gave {s}-{e}");
            }
        }
    }
}

#[test]
fn cache_keys_never_panic_and_are_idempotent() {
    let frags = [
        "/", "..", ".", "%", "%2", "%2e", "%2F", "%41", "?", "a", "Ä", "%zz", "//", "~", "%7E",
    ];
    let mut rng = Rng(7);
    let rules = key::KeyRules {
        case_sensitive: true,
        apply_query_string: true,
    };
    for _ in 0..20_000 {
        let mut p = String::new();
        for _ in 0..rng.below(10) {
            p.push_str(rng.pick(&frags));
        }
        let k = key::cache_key("h.com", &p, rules);
        assert!(k.starts_with("h.com/"), "{p:?} → {k:?}");
        // Normalising a normalised path changes nothing.
        let again = key::cache_key("h.com", &k["h.com".len()..], rules);
        assert_eq!(k, again, "{p:?}");
    }
}

#[test]
fn hostile_caching_headers_never_panic() {
    let frags = [
        "max-age=",
        "s-maxage=",
        "no-cache",
        "private",
        "=",
        "\"",
        ",",
        "-1",
        "99999999999999999999",
        "no-store",
        "stale-while-revalidate=",
        "must-revalidate",
        "public",
        ";",
        "\u{7f}",
        " ",
        "Mon, 01 Jan 1990 00:00:00 GMT",
        "0",
    ];
    let names = [
        "cache-control",
        "cdn-cache-control",
        "strata-cache-control",
        "expires",
        "age",
        "date",
        "last-modified",
        "vary",
        "etag",
        "pragma",
    ];
    let mut rng = Rng(99);
    let now = SystemTime::now();
    let opts = policy::PolicyOptions::default();
    for _ in 0..5_000 {
        let mut resp = HeaderMap::new();
        let mut req = HeaderMap::new();
        for _ in 0..rng.below(6) {
            let mut v = String::new();
            for _ in 0..rng.below(6) {
                v.push_str(rng.pick(&frags));
            }
            if let Ok(v) = HeaderValue::from_str(&v) {
                let target = if rng.below(2) == 0 {
                    &mut resp
                } else {
                    &mut req
                };
                target.append(rng.pick(&names), v);
            }
        }
        let facts = policy::ResponseFacts {
            status: [200u16, 206, 301, 404, 500, 599][rng.below(6)],
            headers: resp.clone(),
            request_time: now - Duration::from_secs(rng.below(100_000) as u64),
            response_time: now - Duration::from_secs(rng.below(100) as u64),
        };
        let _ = policy::is_storable(&Method::GET, &req, &facts, &opts);
        let _ = policy::decide_reuse(&Method::GET, &req, &facts, now, &opts);
        let _ = policy::age_header_value(&facts, now);
        let _ = policy::may_serve_stale_on_error(&facts, now, &opts);
        let _ = policy::evaluate_conditionals(&Method::GET, &req, &resp, facts.status);
        let spec = policy::vary_fields(&resp);
        let _ = policy::variant_key(&spec, &req);
        let mut stored = resp.clone();
        policy::strip_unstorable_headers(&mut stored);
        let _ = policy::freshen_with_304(&mut stored, &req);
    }
}

#[tokio::test]
async fn random_bytes_on_the_wire_never_stop_the_server() {
    let o = Origin::start(handler(|_, _| {
        resp(200, &[("cache-control", "max-age=60")], "ok")
    }))
    .await;
    let conf = ConfDir::new(
        &server_xml("", ""),
        &format!(
            r#"<Vhosts><Vhost Name="a.com"><Listen>127.0.0.1:0</Listen><Origin><Address>{}</Address></Origin></Vhost><Default>a.com</Default></Vhosts>"#,
            o.addr
        ),
    );
    let s = start(&conf).await;
    let addr = s.http[0];
    let good = "GET /p HTTP/1.1\r\nHost: a.com\r\nRange: bytes=0-1\r\nIf-None-Match: \"x\"\r\n\r\n";
    let frags = [
        "\r\n",
        ": ",
        "GET ",
        "HTTP/1.1",
        "Host",
        "Content-Length: 99999999999",
        "Transfer-Encoding: chunked",
        "\0",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "%00",
        "Range: bytes=-",
        "Expect: 100-continue",
    ];
    let mut rng = Rng(2024);
    for i in 0..300 {
        let bytes = mutate(&mut rng, good, &frags);
        let Ok(mut c) = tokio::net::TcpStream::connect(addr).await else {
            panic!("server stopped accepting at case {i}")
        };
        let _ = c.write_all(bytes.as_bytes()).await;
        let _ = c.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(500), c.read_to_end(&mut sink)).await;
        if i % 50 == 0 {
            let g = get(addr, "a.com", "/p", &[]).await;
            assert_eq!(
                (g.status.as_u16(), g.body.as_ref()),
                (200, &b"ok"[..]),
                "after case {i}"
            );
        }
    }
    let g = get(addr, "a.com", "/p", &[]).await;
    assert_eq!(g.status, 200);
    s.shutdown.cancel();
}
