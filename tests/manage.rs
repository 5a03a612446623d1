//! End-to-end tests of the management listener: the purge family STON-style, the
//! allow-list and the token.

mod common;

use common::*;

async fn setup(extra_host: &str) -> (Origin, ConfDir, strata::server::Running) {
    setup_with(extra_host, &[]).await
}

/// `setup` with more response fields from the origin.
async fn setup_with(
    extra_host: &str,
    fields: &'static [(&'static str, &'static str)],
) -> (Origin, ConfDir, strata::server::Running) {
    let o = Origin::start(handler(move |req, n| {
        let etag = format!("\"v{n}\"");
        let mut all = vec![("cache-control", "max-age=600"), ("etag", etag.as_str())];
        all.extend_from_slice(fields);
        resp(200, &all, format!("{} #{n}", req.uri().path()))
    }))
    .await;
    let conf = ConfDir::new(
        &server_xml(extra_host, ""),
        &format!(
            r#"<Vhosts><Vhost Name="a.com"><Listen>127.0.0.1:0</Listen><Origin><Address>{}</Address></Origin></Vhost></Vhosts>"#,
            o.addr
        ),
    );
    let s = start(&conf).await;
    (o, conf, s)
}

/// The client has every byte before the fill commits: wait for the commit.
async fn wait_stored(s: &strata::server::Running, key: &str) {
    let t0 = std::time::Instant::now();
    while s.proxy.store.lookup(key).await.is_none() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "{key} never stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

fn json_count(body: &[u8]) -> u64 {
    json_number(body, "Count")
}

/// A number field of a purge answer.
fn json_number(body: &[u8], field: &str) -> u64 {
    let t = String::from_utf8_lossy(body);
    let name = format!("\"{field}\":");
    let i = t.find(&name).expect("field in result") + name.len();
    t[i..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .expect("number")
}

#[tokio::test]
async fn purge_expire_and_hardpurge_by_url_and_pattern() {
    let (o, _conf, s) = setup("").await;
    let a = s.http[0];
    let m = s.manager.unwrap();
    for p in ["/img/1.jpg", "/img/2.jpg", "/img/3.png", "/css/s.css"] {
        get(a, "a.com", p, &[]).await;
        wait_stored(&s, &format!("a.com{p}")).await;
    }
    assert_eq!(o.count(), 4);

    // Pattern purge: both jpgs; counted once, not again on a second purge.
    let r = get(m, "127.0.0.1", "/command/purge?url=a.com/img/*.jpg", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(json_count(&r.body), 2, "{:?}", r.body);
    let r = get(
        m,
        "127.0.0.1",
        "/command/purge?url=http://a.com/img/*.jpg",
        &[],
    )
    .await;
    assert_eq!(
        json_count(&r.body),
        0,
        "already purged objects are not counted again"
    );
    // The purged objects are refetched, the others stay hits.
    assert_eq!(
        get(a, "a.com", "/img/1.jpg", &[]).await.body.as_ref(),
        b"/img/1.jpg #5"
    );
    assert_eq!(
        get(a, "a.com", "/img/3.png", &[]).await.body.as_ref(),
        b"/img/3.png #3"
    );
    assert_eq!(o.count(), 5);

    // Expire: the next request revalidates (conditional), `|` separates targets and a target
    // without a host reuses the last one.
    let r = get(
        m,
        "127.0.0.1",
        "/command/expire?url=a.com/css/s.css|/img/3.png",
        &[],
    )
    .await;
    assert_eq!(json_count(&r.body), 2);
    get(a, "a.com", "/css/s.css", &[]).await;
    assert_eq!(o.count(), 6);

    // Hard purge deletes.
    let r = get(m, "127.0.0.1", "/command/hardpurge?url=a.com/*", &[]).await;
    assert!(json_count(&r.body) >= 4, "{:?}", r.body);
    get(a, "a.com", "/img/2.jpg", &[]).await;
    assert_eq!(o.count(), 7);

    // No url: a clear error.
    let r = get(m, "127.0.0.1", "/command/purge", &[]).await;
    assert_eq!(r.status, 400);

    // expireafter: `sec` must be a positive whole number when given.
    for (sec, status) in [
        ("abc", 400),
        ("-5", 400),
        ("0", 400),
        ("1.5", 400),
        ("60", 200),
    ] {
        let r = get(
            m,
            "127.0.0.1",
            &format!("/command/expireafter?sec={sec}&url=a.com/css/s.css"),
            &[],
        )
        .await;
        assert_eq!(r.status.as_u16(), status, "sec={sec}: {:?}", r.body);
    }
    // A `sec` too large to add to the clock means "never": the object stays a hit (this
    // overflowed once: a dropped answer in debug builds, an expiry in the past in release).
    get(a, "a.com", "/css/s.css", &[]).await;
    wait_stored(&s, "a.com/css/s.css").await;
    let fetched = o.count();
    let r = get(
        m,
        "127.0.0.1",
        "/command/expireafter?sec=18446744073709551615&url=a.com/css/s.css",
        &[],
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), json_count(&r.body)),
        (200, 1),
        "{:?}",
        r.body
    );
    get(a, "a.com", "/css/s.css", &[]).await;
    assert_eq!(o.count(), fetched, "still fresh after expireafter u64::MAX");
    s.shutdown.cancel();
}

#[tokio::test]
async fn an_exact_url_purge_takes_every_vary_variant_of_the_url() {
    let (o, _conf, s) = setup_with("", &[("vary", "accept-encoding")]).await;
    let a = s.http[0];
    let m = s.manager.unwrap();
    for enc in ["gzip", "br"] {
        get(a, "a.com", "/v", &[("accept-encoding", enc)]).await;
    }
    get(a, "a.com", "/w", &[("accept-encoding", "gzip")]).await;
    let t0 = std::time::Instant::now();
    while s.proxy.store.group_keys("a.com/v").len() < 2 {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "variants never stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(o.count(), 3);
    let r = get(m, "127.0.0.1", "/command/hardpurge?url=a.com/v", &[]).await;
    assert_eq!(r.status, 200);
    // Both variants ("/v #1", "/v #2": 5 bytes each); the Vary marker holds no body.
    assert_eq!(json_count(&r.body), 3, "{:?}", r.body);
    assert_eq!(json_number(&r.body, "Size"), 10, "{:?}", r.body);
    assert!(s.proxy.store.group_keys("a.com/v").is_empty());
    for enc in ["gzip", "br"] {
        get(a, "a.com", "/v", &[("accept-encoding", enc)]).await;
    }
    assert_eq!(o.count(), 5, "both variants refetched");
    get(a, "a.com", "/w", &[("accept-encoding", "gzip")]).await;
    assert_eq!(o.count(), 5, "another URL is untouched");
    s.shutdown.cancel();
}

#[tokio::test]
async fn a_purged_object_is_served_when_the_origin_is_down() {
    let (o, _conf, s) = setup("").await;
    let a = s.http[0];
    let first = get(a, "a.com", "/x", &[]).await;
    wait_stored(&s, "a.com/x").await;
    get(
        s.manager.unwrap(),
        "127.0.0.1",
        "/command/purge?url=a.com/x",
        &[],
    )
    .await;
    o.stop();
    drop(o);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let g = get(a, "a.com", "/x", &[]).await;
    assert_eq!(
        (g.status, g.body),
        (first.status, first.body),
        "STON restores a purged object while the origin is down"
    );
    s.shutdown.cancel();
}

#[tokio::test]
async fn the_token_is_required_when_configured() {
    let o = Origin::start(handler(|_, _| resp(200, &[], "x"))).await;
    let conf = ConfDir::new(
        &server_xml("", "").replace(
            "<Manager Port=\"0\" Listen=\"127.0.0.1\">",
            "<Manager Port=\"0\" Listen=\"127.0.0.1\" Token=\"s3cret\">",
        ),
        &format!(
            r#"<Vhosts><Vhost Name="a.com"><Listen>127.0.0.1:0</Listen><Origin><Address>{}</Address></Origin></Vhost></Vhosts>"#,
            o.addr
        ),
    );
    let s = start(&conf).await;
    let m = s.manager.unwrap();
    assert_eq!(get(m, "127.0.0.1", "/version", &[]).await.status, 401);
    assert_eq!(
        get(
            m,
            "127.0.0.1",
            "/version",
            &[("authorization", "Bearer s3cret")]
        )
        .await
        .status,
        200
    );
    s.shutdown.cancel();
}

#[tokio::test]
async fn callers_outside_the_allow_list_have_their_connection_closed() {
    let o = Origin::start(handler(|_, _| resp(200, &[], "x"))).await;
    // Only 10.9.9.9 may talk to the manager: loopback is refused.
    let conf = ConfDir::new(
        &server_xml("", "").replace("<Allow>127.0.0.1</Allow>", "<Allow>10.9.9.9</Allow>"),
        &format!(
            r#"<Vhosts><Vhost Name="a.com"><Listen>127.0.0.1:0</Listen><Origin><Address>{}</Address></Origin></Vhost></Vhosts>"#,
            o.addr
        ),
    );
    let s = start(&conf).await;
    let r = request(
        "GET",
        s.manager.unwrap(),
        "127.0.0.1",
        "/version",
        &[],
        bytes::Bytes::new(),
    )
    .await;
    assert!(
        r.is_err(),
        "the connection is closed without an answer: {r:?}"
    );
    s.shutdown.cancel();
}

#[tokio::test]
async fn the_purge_method_on_a_service_port_is_guarded_by_the_allow_list() {
    let (o, _conf, s) = setup("").await;
    let a = s.http[0];
    get(a, "a.com", "/m", &[]).await;
    wait_stored(&s, "a.com/m").await;
    let r = request("PURGE", a, "a.com", "/m", &[], bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(json_count(&r.body), 1);
    get(a, "a.com", "/m", &[]).await;
    assert_eq!(o.count(), 2, "purged by the method, refetched");
    s.shutdown.cancel();

    // From an address outside the allow-list the method is refused.
    let o = Origin::start(handler(|_, _| {
        resp(200, &[("cache-control", "max-age=60")], "x")
    }))
    .await;
    let conf = ConfDir::new(
        &server_xml("", "").replace("<Allow>127.0.0.1</Allow>", "<Allow>10.9.9.9</Allow>"),
        &format!(
            r#"<Vhosts><Vhost Name="a.com"><Listen>127.0.0.1:0</Listen><Origin><Address>{}</Address></Origin></Vhost></Vhosts>"#,
            o.addr
        ),
    );
    let s = start(&conf).await;
    get(s.http[0], "a.com", "/m", &[]).await;
    let r = request("PURGE", s.http[0], "a.com", "/m", &[], bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    get(s.http[0], "a.com", "/m", &[]).await;
    assert_eq!(o.count(), 1, "nothing was purged");
    s.shutdown.cancel();
}

/// A service with `manager_tag` for the test's `<Manager>` and `allow` for its `<Allow>`,
/// and one vhost a.com whose origin counts its requests, with `/m` fetched and stored.
async fn setup_manager(
    manager_tag: &str,
    allow: &str,
) -> (Origin, ConfDir, strata::server::Running) {
    let o = Origin::start(handler(|req, n| {
        resp(
            200,
            &[("cache-control", "max-age=600")],
            format!("{} #{n}", req.uri().path()),
        )
    }))
    .await;
    let conf = ConfDir::new(
        &server_xml("", "")
            .replace("<Manager Port=\"0\" Listen=\"127.0.0.1\">", manager_tag)
            .replace(
                "<Allow>127.0.0.1</Allow>",
                &format!("<Allow>{allow}</Allow>"),
            ),
        &format!(
            r#"<Vhosts><Vhost Name="a.com"><Listen>127.0.0.1:0</Listen><Origin><Address>{}</Address></Origin></Vhost></Vhosts>"#,
            o.addr
        ),
    );
    let s = start(&conf).await;
    get(s.http[0], "a.com", "/m", &[]).await;
    wait_stored(&s, "a.com/m").await;
    (o, conf, s)
}

#[tokio::test]
async fn the_purge_method_needs_the_token_and_http_method_off_opens_it() {
    // HttpMethod="ON" (the default) with a token: the allow-list is not enough.
    let (o, _conf, s) = setup_manager(
        "<Manager Port=\"0\" Listen=\"127.0.0.1\" Token=\"s3cret\">",
        "127.0.0.1",
    )
    .await;
    let a = s.http[0];
    for (auth, status) in [
        (None, 401),
        (Some("Bearer wrong!"), 401),
        (Some("Bearer s3cre"), 401),
        (Some("Basic s3cret"), 401),
        (Some("Bearer s3cret"), 200),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|v| ("authorization", v)).into_iter().collect();
        let r = request("PURGE", a, "a.com", "/m", &headers, bytes::Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status.as_u16(), status, "{auth:?}");
    }
    get(a, "a.com", "/m", &[]).await;
    assert_eq!(o.count(), 2, "purged once, by the request with the token");
    s.shutdown.cancel();

    // HttpMethod="OFF": STON's meaning, the methods skip the allow-list (here, loopback is
    // not on it) and the token.
    let (o, _conf, s) = setup_manager(
        "<Manager Port=\"0\" Listen=\"127.0.0.1\" HttpMethod=\"OFF\" Token=\"s3cret\">",
        "10.9.9.9",
    )
    .await;
    let a = s.http[0];
    let r = request("PURGE", a, "a.com", "/m", &[], bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!((r.status.as_u16(), json_count(&r.body)), (200, 1));
    get(a, "a.com", "/m", &[]).await;
    assert_eq!(o.count(), 2);
    s.shutdown.cancel();
}

/// `POST` to the manager at `path` with `form` as an urlencoded body.
async fn post_form(m: std::net::SocketAddr, path: &str, form: &str) -> Got {
    request(
        "POST",
        m,
        "127.0.0.1",
        path,
        &[("content-type", "application/x-www-form-urlencoded")],
        bytes::Bytes::from(form.to_string()),
    )
    .await
    .expect("an answer")
}

#[tokio::test]
async fn the_manager_port_takes_the_purge_method_and_a_posted_url() {
    let (o, _conf, s) = setup("").await;
    let (a, m) = (s.http[0], s.manager.unwrap());
    for p in ["/x", "/y", "/z"] {
        get(a, "a.com", p, &[]).await;
        wait_stored(&s, &format!("a.com{p}")).await;
    }
    // STON's `PURGE /path` to the manager port, the vhost in Host (its port ignored).
    let r = request("PURGE", m, "A.com:10040", "/x", &[], bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(
        (r.status.as_u16(), json_count(&r.body)),
        (200, 1),
        "{:?}",
        r.body
    );
    assert!(String::from_utf8_lossy(&r.body).contains("\"method\":\"purge\""));
    // `POST /command/...` with the url in a form body, alone or after a query.
    let r = post_form(m, "/command/hardpurge", "url=a.com/y").await;
    assert_eq!(
        (r.status.as_u16(), json_count(&r.body)),
        (200, 1),
        "{:?}",
        r.body
    );
    let r = post_form(m, "/command/expireafter?sec=600", "url=a.com/z").await;
    assert_eq!(
        (r.status.as_u16(), json_count(&r.body)),
        (200, 1),
        "{:?}",
        r.body
    );
    // An empty POST still needs its url; a form past 64 KiB is refused.
    let r = post_form(m, "/command/purge", "").await;
    assert_eq!(r.status, 400);
    let big = format!("url=a.com/{}", "a".repeat(70_000));
    let r = post_form(m, "/command/purge", &big).await;
    assert_eq!(r.status, 413);

    for p in ["/x", "/y", "/z"] {
        get(a, "a.com", p, &[]).await;
    }
    assert_eq!(o.count(), 5, "/x and /y refetched, /z still fresh");
    s.shutdown.cancel();
}

/// A purge that arrives while the object is still filling reaches what that fill commits:
/// the client already reading gets its whole answer, and the next request is not served the
/// bytes fetched before the purge. For each of purge, expire and hardpurge, and by URL and by
/// pattern.
#[tokio::test]
async fn a_purge_during_a_fill_reaches_what_the_fill_commits() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::{Notify, mpsc};

    let gate = Arc::new(Notify::new());
    let hold = Arc::new(AtomicBool::new(true));
    let (g2, h2) = (gate.clone(), hold.clone());
    let o = Origin::start(Arc::new(move |req, n| {
        let (gate, hold) = (g2.clone(), h2.clone());
        let body = format!("{} version {n} ", req.uri().path()).repeat(100);
        Box::pin(async move {
            let (tx, rx) = mpsc::channel::<Result<bytes::Bytes, BoxError>>(2);
            tokio::spawn(async move {
                let (first, rest) = body.split_at(body.len() / 2);
                let _ = tx.send(Ok(bytes::Bytes::from(first.to_string()))).await;
                if hold.load(Ordering::SeqCst) {
                    let _ =
                        tokio::time::timeout(std::time::Duration::from_secs(10), gate.notified())
                            .await;
                }
                let _ = tx.send(Ok(bytes::Bytes::from(rest.to_string()))).await;
            });
            http::Response::builder()
                .status(200)
                .header("cache-control", "max-age=600")
                .body(strata::body::from_channel(rx))
                .expect("response")
        })
    }))
    .await;
    let conf = ConfDir::new(
        &server_xml("", ""),
        &format!(
            r#"<Vhosts><Vhost Name="a.com"><Listen>127.0.0.1:0</Listen><Origin><Address>{}</Address></Origin></Vhost></Vhosts>"#,
            o.addr
        ),
    );
    let s = start(&conf).await;
    let (a, m) = (s.http[0], s.manager.unwrap());
    for (i, command) in ["purge", "expire", "hardpurge", "purge"].iter().enumerate() {
        let path = format!("/slow/{i}");
        // By URL, and (the last round) by pattern.
        let target = if i == 3 {
            "a.com/slow/*".to_string()
        } else {
            format!("a.com{path}")
        };
        hold.store(true, Ordering::SeqCst);
        let before = o.count();
        let p2 = path.clone();
        let reader = tokio::spawn(async move { get(a, "a.com", &p2, &[]).await });
        let t0 = std::time::Instant::now();
        while !s.proxy.fills.is_filling(&format!("a.com{path}")) {
            assert!(t0.elapsed() < std::time::Duration::from_secs(10), "no fill");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let r = get(
            m,
            "127.0.0.1",
            &format!("/command/{command}?url={target}"),
            &[],
        )
        .await;
        assert_eq!(r.status, 200);
        assert!(json_count(&r.body) >= 1, "{command}: {:?}", r.body);
        hold.store(false, Ordering::SeqCst);
        gate.notify_waiters();
        let first = reader.await.expect("reader");
        let whole = format!("{path} version {} ", before + 1).repeat(100);
        assert!(
            first.body == whole,
            "{command}: the reader gets its whole answer"
        );
        if *command != "hardpurge" {
            wait_stored(&s, &format!("a.com{path}")).await;
        }
        let again = get(a, "a.com", &path, &[]).await;
        assert_eq!(
            o.count(),
            before + 2,
            "{command}: the next request went to the origin"
        );
        assert!(
            String::from_utf8_lossy(&again.body)
                .starts_with(&format!("{path} version {} ", before + 2)),
            "{command}: got {:?}",
            String::from_utf8_lossy(&again.body[..40.min(again.body.len())])
        );
    }
    s.shutdown.cancel();
}

/// A reload binds the service addresses it adds and stops accepting on those it drops, while
/// the listeners it keeps go on serving.
#[tokio::test]
async fn a_reload_opens_new_listen_addresses_and_closes_dropped_ones() {
    let (o, conf, s) = setup("").await;
    let (a, m) = (s.http[0], s.manager.unwrap());
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let vhosts = |with_b: bool| {
        let b = if with_b {
            format!(
                r#"<Vhost Name="b.com"><Listen>127.0.0.1:{port}</Listen><Origin><Address>{}</Address></Origin></Vhost>"#,
                o.addr
            )
        } else {
            String::new()
        };
        format!(
            r#"<Vhosts><Vhost Name="a.com"><Listen>127.0.0.1:0</Listen><Origin><Address>{}</Address></Origin></Vhost>{b}</Vhosts>"#,
            o.addr
        )
    };
    std::fs::write(conf.path().join("vhosts.xml"), vhosts(true)).unwrap();
    let r = get(m, "127.0.0.1", "/conf/reload", &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let b: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let g = get(b, "b.com", "/new", &[]).await;
    assert_eq!((g.status.as_u16(), &g.body[..]), (200, &b"/new #1"[..]));
    assert_eq!(get(a, "a.com", "/old", &[]).await.status, 200);

    std::fs::write(conf.path().join("vhosts.xml"), vhosts(false)).unwrap();
    let r = get(m, "127.0.0.1", "/conf/reload", &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let t0 = std::time::Instant::now();
    while tokio::net::TcpStream::connect(b).await.is_ok() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "the dropped address still accepts"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(get(a, "a.com", "/still", &[]).await.status, 200);

    // An address that cannot be bound (the manager's own) refuses the reload, changing nothing.
    let taken = vhosts(false).replace(
        "</Vhosts>",
        &format!(
            r#"<Vhost Name="c.com"><Listen>127.0.0.1:{}</Listen><Origin><Address>{}</Address></Origin></Vhost></Vhosts>"#,
            m.port(),
            o.addr
        ),
    );
    std::fs::write(conf.path().join("vhosts.xml"), taken).unwrap();
    let r = get(m, "127.0.0.1", "/conf/reload", &[]).await;
    assert_ne!(r.status, 200);
    assert!(
        String::from_utf8_lossy(&r.body).contains("cannot listen"),
        "{:?}",
        r.body
    );
    assert_eq!(get(a, "a.com", "/after-refusal", &[]).await.status, 200);
    s.shutdown.cancel();
}

/// `/command/releasememory` hands the allocator's free pages back and nothing else: what is
/// cached stays cached (a release that evicted would be a purge in disguise).
#[tokio::test]
async fn releasing_free_memory_keeps_what_is_cached() {
    let (o, _conf, s) = setup("").await;
    let a = s.http[0];
    get(a, "a.com", "/kept", &[]).await;
    wait_stored(&s, "a.com/kept").await;
    let r = get(
        s.manager.unwrap(),
        "127.0.0.1",
        "/command/releasememory",
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        String::from_utf8_lossy(&r.body).contains("\"status\":\"OK\""),
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    let again = get(a, "a.com", "/kept", &[]).await;
    assert_eq!(again.status, 200);
    assert_eq!(o.count(), 1, "served from the cache after the release");
    s.shutdown.cancel();
}
