//! End-to-end tests of zero-copy hits: with the disk tier on tmpfs, large hits are sent from
//! the chunk files (`tee`/`splice` from pipes holding their pages, else `sendfile`) over plain
//! HTTP/1.1 — whole, byte for byte, also for ranges — and a file damaged after it was verified
//! is never sent from.
//!
//! They need /dev/shm (tmpfs); without it they pass without checking anything.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// A server.xml whose disk tier is `disk`; `cache` adds `<Cache>` elements.
fn server_conf(disk: &Path, cache: &str) -> String {
    format!(
        r#"<Server>
  <Host>
    <Name>strata-zerocopy</Name>
    <Manager Port="0" Listen="127.0.0.1"><Allow>127.0.0.1</Allow></Manager>
  </Host>
  <Cache>
    <Storage><Disk Quota="1GB">{}</Disk></Storage>
    {cache}
  </Cache>
</Server>"#,
        disk.display()
    )
}

fn vhost_conf(origin: std::net::SocketAddr) -> String {
    format!(
        r#"<Vhosts>
  <Vhost Name="a.com">
    <Listen>127.0.0.1:0</Listen>
    <Origin><Address>{origin}</Address></Origin>
  </Vhost>
</Vhosts>"#
    )
}

/// Strata with its disk tier in `disk` (plus `cache` elements) in front of `origin`; the
/// configuration directory lives as long as the server is used.
async fn strata(disk: &Path, cache: &str, origin: &Origin) -> (ConfDir, strata::server::Running) {
    let conf = ConfDir::new(&server_conf(disk, cache), &vhost_conf(origin.addr));
    let s = start(&conf).await;
    (conf, s)
}

/// An origin answering every request with `body`, cacheable for ten minutes.
async fn origin_of(body: bytes::Bytes) -> Origin {
    Origin::start(handler(move |_, _| {
        resp(200, &[("cache-control", "max-age=600")], body.clone())
    }))
    .await
}

/// The tests of this file run one at a time: they read the process-wide count of bytes
/// sent from files.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Files under the disk tier's fan-out directories.
fn cache_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|sub| {
            std::fs::read_dir(sub.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|f| f.path())
        .collect()
}

/// GETs `path` until the process has sent more bytes from files than `before` (the first hits
/// on a chunk held in memory verify its file in the background), checking every body.
async fn until_sent_from_files(
    addr: std::net::SocketAddr,
    path: &str,
    want: &[u8],
    before: u64,
) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        let g = get(addr, "a.com", path, &[]).await;
        assert_eq!(g.status, 200);
        assert!(
            g.body == want,
            "{path}: body differs ({} bytes)",
            g.body.len()
        );
        if strata::zerocopy::sent_bytes() > before {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_hits_are_sent_from_files_whole_and_in_ranges() {
    let _serial = SERIAL.lock().await;
    let Ok(disk) = tempfile::tempdir_in("/dev/shm") else {
        return;
    };
    let big = pattern(3 * 1024 * 1024 + 5, 31); // 4 chunks of 1 MiB, the last of 5 bytes
    let mid = pattern(600 * 1024, 32); // one chunk, inline in its .meta file
    let (b, m) = (big.clone(), mid.clone());
    let origin = Origin::start(handler(move |req, _| {
        let body = if req.uri().path() == "/big" {
            b.clone()
        } else {
            m.clone()
        };
        resp(200, &[("cache-control", "max-age=600")], body)
    }))
    .await;
    let (_conf, s) = strata(disk.path(), "<MemorySize>64MB</MemorySize>", &origin).await;
    let addr = s.http[0];

    for (path, body) in [("/big", &big), ("/mid", &mid)] {
        let before = strata::zerocopy::sent_bytes();
        assert!(
            until_sent_from_files(addr, path, body, before).await,
            "{path} was never sent from its files"
        );
    }
    assert_eq!(origin.count(), 2, "every later GET was a hit");
    // The chunks went by tee: pipes holding their pages are alive (the store keeps the
    // verified files, and their pipes, open for later hits). The manager's metrics say so.
    assert!(
        strata::zerocopy::tee::masters_alive() > 0,
        "no chunk was sent through a pipe"
    );
    let m = get(s.manager.expect("manager"), "127.0.0.1", "/metrics", &[]).await;
    assert_eq!(m.status, 200);
    let text = String::from_utf8_lossy(&m.body);
    let metric = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    assert!(metric("strata_zero_copy_sent_bytes_total") >= big.len() as u64);
    assert!(metric("strata_zero_copy_pipes{kind=\"master\"}") > 0);
    assert!(metric("strata_store_objects") >= 2);

    // Ranges within a chunk, across chunks and of the inline body: the right bytes.
    for (path, body, from, to) in [
        ("/big", &big, 100usize, 1_500_000usize),
        ("/big", &big, 1_048_576, 3 * 1_048_576 + 4),
        ("/mid", &mid, 40_000, 400_000),
    ] {
        let range = format!("bytes={from}-{to}");
        let g = get(addr, "a.com", path, &[("range", &range)]).await;
        assert_eq!(g.status, 206, "{path} {range}");
        assert!(g.body == body[from..=to], "{path} {range}: wrong bytes");
    }
    // HEAD sends no body at all.
    let h = request("HEAD", addr, "a.com", "/big", &[], bytes::Bytes::new())
        .await
        .expect("HEAD");
    assert_eq!((h.status.as_u16(), h.body.len()), (200, 0));
    assert_eq!(origin.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_file_damaged_after_its_check_is_never_sent() {
    let _serial = SERIAL.lock().await;
    let Ok(disk) = tempfile::tempdir_in("/dev/shm") else {
        return;
    };
    let big = pattern(2 * 1024 * 1024, 41);
    let origin = origin_of(big.clone()).await;
    let (_conf, s) = strata(disk.path(), "<MemorySize>64MB</MemorySize>", &origin).await;
    let addr = s.http[0];
    let before = strata::zerocopy::sent_bytes();
    assert!(until_sent_from_files(addr, "/big", &big, before).await);

    // Damage chunk 1's file in place (same inode: the open, verified handle sees it).
    let chunk1 = cache_files(disk.path())
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "1"))
        .expect("chunk file 1");
    let mut raw = std::fs::read(&chunk1).expect("read chunk");
    let at = raw.len() / 2;
    raw[at] ^= 0x40;
    std::fs::write(&chunk1, &raw).expect("write chunk");
    let corrupt_before = s.proxy.store.stats().corrupt;

    // Never the damaged bytes: the change is seen before sending, the bytes held in memory
    // (verified) go out instead, and the damage is then found and the object dropped.
    let t0 = Instant::now();
    while s.proxy.store.stats().corrupt == corrupt_before {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "damage never detected"
        );
        let g = get(addr, "a.com", "/big", &[]).await;
        assert!(g.body == big, "damaged bytes served");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let g = get(addr, "a.com", "/big", &[]).await;
    assert!(g.body == big);
    assert_eq!(origin.count(), 2, "the damaged object was refetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_copy_off_copies_every_byte() {
    let _serial = SERIAL.lock().await;
    let Ok(disk) = tempfile::tempdir_in("/dev/shm") else {
        return;
    };
    let big = pattern(2 * 1024 * 1024 + 3, 51);
    let origin = origin_of(big.clone()).await;
    let cache = "<MemorySize>64MB</MemorySize><ZeroCopy>OFF</ZeroCopy>";
    let (_conf, s) = strata(disk.path(), cache, &origin).await;
    let before = strata::zerocopy::sent_bytes();
    for _ in 0..10 {
        let g = get(s.http[0], "a.com", "/big", &[]).await;
        assert!(g.body == big);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        strata::zerocopy::sent_bytes(),
        before,
        "nothing sent from files"
    );
    assert_eq!(origin.count(), 1);
}
