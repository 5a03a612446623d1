//! End-to-end tests of the content chain (VhostLink) and the CDN-Loop guard, over real
//! sockets with real origins.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_like::join_all;

/// A tiny join_all (the tests avoid pulling a futures crate for one function).
mod futures_like {
    pub async fn join_all<F: std::future::Future + Send + 'static>(fs: Vec<F>) -> Vec<F::Output>
    where
        F::Output: Send + 'static,
    {
        let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.expect("task"));
        }
        out
    }
}

/// An origin that has only the paths in `have` (200, cacheable) and answers 404 otherwise.
async fn storage(name: &'static str, have: &'static [&'static str]) -> Origin {
    Origin::start(handler(move |req, _| {
        let p = req.uri().path().to_string();
        if have.contains(&p.as_str()) {
            resp(
                200,
                &[("cache-control", "max-age=60"), ("x-from", name)],
                format!("{name}:{p}"),
            )
        } else {
            resp(404, &[("x-from", name)], format!("{name}: no {p}"))
        }
    }))
    .await
}

fn vhost(name: &str, origin: &str, link: Option<(&str, &str)>, extra: &str) -> String {
    let link = link
        .map(|(cond, target)| format!(r#"<VhostLink Condition="{cond}">{target}</VhostLink>"#))
        .unwrap_or_default();
    format!(
        r#"<Vhost Name="{name}"><Listen>127.0.0.1:0</Listen><Origin><Address>{origin}</Address></Origin>{link}{extra}</Vhost>"#
    )
}

#[tokio::test]
async fn a_404_on_foo_is_served_from_bar_and_both_answers_are_cached() {
    let foo = storage("foo", &["/only-foo"]).await;
    let bar = storage("bar", &["/only-bar", "/only-foo"]).await;
    let vhosts = format!(
        "<Vhosts>{}{}</Vhosts>",
        vhost(
            "foo.com",
            &foo.addr.to_string(),
            Some(("404", "bar.com")),
            ""
        ),
        vhost("bar.com", &bar.addr.to_string(), None, "")
    );
    let conf = ConfDir::new(
        &server_xml(&format!("<LogDir>{}/log</LogDir>", "{DIR}"), ""),
        &vhosts,
    );
    let s = start(&conf).await;
    let a = s.http[0];

    let g = get(a, "foo.com", "/only-foo", &[]).await;
    assert_eq!(
        (g.status.as_u16(), g.body.as_ref()),
        (200, &b"foo:/only-foo"[..])
    );
    let g = get(a, "foo.com", "/only-bar", &[]).await;
    assert_eq!(
        (g.status.as_u16(), g.body.as_ref()),
        (200, &b"bar:/only-bar"[..])
    );
    assert_eq!((foo.count(), bar.count()), (2, 1));

    // Again: foo's 404 is negatively cached (30 s by default for link triggers) and bar's
    // copy is a hit, so neither storage is asked.
    let g = get(a, "foo.com", "/only-bar", &[]).await;
    assert_eq!(g.body.as_ref(), b"bar:/only-bar");
    assert_eq!((foo.count(), bar.count()), (2, 1));
    // bar.com's own clients hit the copy cached under bar.com's key.
    let g = get(a, "bar.com", "/only-bar", &[]).await;
    assert_eq!(g.body.as_ref(), b"bar:/only-bar");
    assert_eq!(bar.count(), 1);

    // Nobody has it: the last vhost's own answer is returned.
    let g = get(a, "foo.com", "/nowhere", &[]).await;
    assert_eq!(g.status, 404);
    assert_eq!(g.body.as_ref(), b"bar: no /nowhere");

    // A POST does not link.
    let r = request(
        "POST",
        a,
        "foo.com",
        "/only-bar",
        &[],
        bytes::Bytes::from_static(b"x"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-from"), "foo");

    // The access log records the chain on the entry vhost's lines.
    s.shutdown.cancel();
    let _ = s.done.await;
    let log = std::fs::read_to_string(conf.path().join("log/access.log")).unwrap();
    let linked: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("/only-bar") && l.contains(" foo.com+bar.com "))
        .collect();
    assert_eq!(linked.len(), 2, "{log}");
    assert!(
        linked.iter().all(|l| l.ends_with(" foo.com")),
        "stats and logs belong to foo.com: {log}"
    );
    let direct = log.lines().find(|l| l.contains("GET /only-foo")).unwrap();
    assert!(direct.contains(" - foo.com"), "{direct}");
}

#[tokio::test]
async fn fail_and_5xx_conditions_link_when_the_origin_is_down_slow_or_broken() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let slow = Origin::start(Arc::new(|_, _| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            resp(200, &[], "too late")
        })
    }))
    .await;
    let broken = Origin::start(handler(|_, _| resp(503, &[], "down for maintenance"))).await;
    let bar = storage("bar", &["/x"]).await;
    let opts = "<OriginOptions><ReceiveTimeout>1</ReceiveTimeout><ConnectTimeout>1</ConnectTimeout><Exclusion>0</Exclusion></OriginOptions>";
    let vhosts = format!(
        "<Vhosts>{}{}{}{}</Vhosts>",
        vhost(
            "down.com",
            &dead.to_string(),
            Some(("5xx,fail", "bar.com")),
            opts
        ),
        vhost(
            "slow.com",
            &slow.addr.to_string(),
            Some(("5xx,fail", "bar.com")),
            opts
        ),
        vhost(
            "broken.com",
            &broken.addr.to_string(),
            Some(("5xx,fail", "bar.com")),
            opts
        ),
        vhost("bar.com", &bar.addr.to_string(), None, "")
    );
    let conf = ConfDir::new(&server_xml("", ""), &vhosts);
    let s = start(&conf).await;
    for host in ["down.com", "slow.com", "broken.com"] {
        let g = get(s.http[0], host, "/x", &[]).await;
        assert_eq!(
            (g.status.as_u16(), g.body.as_ref()),
            (200, &b"bar:/x"[..]),
            "{host}"
        );
    }
    // `404` alone does not cover an unreachable origin.
    s.shutdown.cancel();
    let vhosts = format!(
        "<Vhosts>{}{}</Vhosts>",
        vhost(
            "down.com",
            &dead.to_string(),
            Some(("404", "bar.com")),
            opts
        ),
        vhost("bar.com", &bar.addr.to_string(), None, "")
    );
    let conf = ConfDir::new(&server_xml("", ""), &vhosts);
    let s = start(&conf).await;
    let g = get(s.http[0], "down.com", "/x", &[]).await;
    assert_eq!(g.status, 502);
    s.shutdown.cancel();
}

#[tokio::test]
async fn a_three_hop_chain_and_harmless_stop_rules_at_run_time() {
    let foo = storage("foo", &[]).await;
    let bar = storage("bar", &[]).await;
    let baz = storage("baz", &["/deep"]).await;
    let vhosts = format!(
        "<Vhosts>{}{}{}{}{}{}</Vhosts>",
        vhost(
            "foo.com",
            &foo.addr.to_string(),
            Some(("404", "bar.com")),
            ""
        ),
        vhost(
            "bar.com",
            &bar.addr.to_string(),
            Some(("4xx", "baz.com")),
            ""
        ),
        vhost("baz.com", &baz.addr.to_string(), None, ""),
        // Stop rules: self link, unknown target, a cycle.
        vhost(
            "self.com",
            &foo.addr.to_string(),
            Some(("404", "self.com")),
            ""
        ),
        vhost(
            "lost.com",
            &foo.addr.to_string(),
            Some(("404", "nowhere.com")),
            ""
        ),
        vhost(
            "ping.com",
            &foo.addr.to_string(),
            Some(("404", "pong.com")),
            ""
        ) + &vhost(
            "pong.com",
            &bar.addr.to_string(),
            Some(("404", "ping.com")),
            ""
        ),
    );
    let conf = ConfDir::new(&server_xml("", ""), &vhosts);
    let s = start(&conf).await;
    let a = s.http[0];
    let g = get(a, "foo.com", "/deep", &[]).await;
    assert_eq!(
        (g.status.as_u16(), g.body.as_ref()),
        (200, &b"baz:/deep"[..])
    );
    assert_eq!((foo.count(), bar.count(), baz.count()), (1, 1, 1));

    let g = get(a, "self.com", "/y", &[]).await;
    assert_eq!(
        (g.status.as_u16(), g.body.as_ref()),
        (404, &b"foo: no /y"[..])
    );
    let g = get(a, "lost.com", "/y2", &[]).await;
    assert_eq!(
        (g.status.as_u16(), g.body.as_ref()),
        (404, &b"foo: no /y2"[..])
    );
    // ping → pong → (ping again: stop) = pong's own answer.
    let g = get(a, "ping.com", "/y3", &[]).await;
    assert_eq!(
        (g.status.as_u16(), g.body.as_ref()),
        (404, &b"bar: no /y3"[..])
    );
    s.shutdown.cancel();

    // `strata check` reports each stop rule with file:line (warnings: the config still loads).
    let out = std::process::Command::new(strata_bin())
        .args(["check", "--conf"])
        .arg(conf.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("self.com") && text.contains("itself"),
        "{text}"
    );
    assert!(text.contains("nowhere.com"), "{text}");
    assert!(
        text.contains("ping.com") && text.contains("pong.com"),
        "{text}"
    );
    assert!(text.contains("vhosts.xml:1"), "{text}");
}

#[tokio::test]
async fn collapsing_works_across_the_link() {
    // Both storages are slow so that all 200 requests arrive while the first is in flight.
    let foo = Origin::start(Arc::new(|_, _| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            resp(404, &[], "foo: no")
        })
    }))
    .await;
    let bar = Origin::start(Arc::new(|_, _| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            resp(200, &[("cache-control", "max-age=60")], pattern(100_000, 7))
        })
    }))
    .await;
    let vhosts = format!(
        "<Vhosts>{}{}</Vhosts>",
        vhost(
            "foo.com",
            &foo.addr.to_string(),
            Some(("404", "bar.com")),
            ""
        ),
        vhost("bar.com", &bar.addr.to_string(), None, "")
    );
    let conf = ConfDir::new(&server_xml("", ""), &vhosts);
    let s = start(&conf).await;
    let a = s.http[0];
    let futs: Vec<_> = (0..200)
        .map(|_| async move { get(a, "foo.com", "/big", &[]).await })
        .collect();
    let all = join_all(futs).await;
    let want = pattern(100_000, 7);
    for g in &all {
        assert_eq!(g.status, 200);
        assert_eq!(g.body, want);
    }
    assert_eq!(
        (foo.count(), bar.count()),
        (1, 1),
        "one origin request per vhost"
    );
    s.shutdown.cancel();
}

/// A port that is free now (for two servers that must know each other's port up front).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn two_instances_linked_into_a_cycle_stop_within_one_round() {
    let (pa, pb) = (free_port(), free_port());
    let conf_a = ConfDir::new(
        &server_xml("<CdnLoop>strata-a</CdnLoop>", ""),
        &format!(
            r#"<Vhosts><Vhost Name="x.com"><Listen>127.0.0.1:{pa}</Listen><Origin><Address>127.0.0.1:{pb}</Address></Origin><OriginOptions><Host>*</Host></OriginOptions></Vhost></Vhosts>"#
        ),
    );
    let conf_b = ConfDir::new(
        &server_xml("<CdnLoop>strata-b</CdnLoop>", ""),
        &format!(
            r#"<Vhosts><Vhost Name="x.com"><Listen>127.0.0.1:{pb}</Listen><Origin><Address>127.0.0.1:{pa}</Address></Origin><OriginOptions><Host>*</Host></OriginOptions></Vhost></Vhosts>"#
        ),
    );
    let a = start(&conf_a).await;
    let b = start(&conf_b).await;
    let t0 = std::time::Instant::now();
    let g = get(a.http[0], "x.com", "/loop", &[]).await;
    assert_eq!(g.status, 508, "{:?}", g.body);
    assert!(t0.elapsed() < Duration::from_secs(5));
    a.shutdown.cancel();
    b.shutdown.cancel();
}

#[tokio::test]
async fn a_child_to_parent_hop_is_not_a_loop() {
    // Child instance → parent instance (another token) whose foo links to bar.
    let foo = storage("foo", &[]).await;
    let bar = storage("bar", &["/p"]).await;
    let parent_conf = ConfDir::new(
        &server_xml("<CdnLoop>strata-parent</CdnLoop>", ""),
        &format!(
            "<Vhosts>{}{}</Vhosts>",
            vhost(
                "foo.com",
                &foo.addr.to_string(),
                Some(("404", "bar.com")),
                ""
            ),
            vhost("bar.com", &bar.addr.to_string(), None, "")
        ),
    );
    let parent = start(&parent_conf).await;
    let child_conf = ConfDir::new(
        &server_xml("<CdnLoop>strata-child</CdnLoop>", ""),
        &format!(
            r#"<Vhosts><Vhost Name="foo.com"><Listen>127.0.0.1:0</Listen><Origin><Address>{}</Address></Origin><OriginOptions><Host>foo.com</Host></OriginOptions></Vhost></Vhosts>"#,
            parent.http[0]
        ),
    );
    let child = start(&child_conf).await;
    let g = get(child.http[0], "foo.com", "/p", &[]).await;
    assert_eq!((g.status.as_u16(), g.body.as_ref()), (200, &b"bar:/p"[..]));
    child.shutdown.cancel();
    parent.shutdown.cancel();
}
