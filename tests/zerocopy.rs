//! End-to-end tests of zero-copy hits: with the disk tier on tmpfs, large hits are sent from
//! the chunk files (`tee`/`splice` from pipes holding their pages, else `sendfile`) over plain
//! HTTP/1.1, whole, byte for byte, also for ranges; a file damaged after it was verified is
//! never sent from; and a server short of descriptors loses no byte.
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
    let origin = origin_of_big_and(big.clone(), mid.clone()).await;
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
    let manager = s.manager.expect("manager");
    assert!(metric(manager, "strata_zero_copy_sent_bytes_total").await >= big.len() as u64);
    assert!(metric(manager, "strata_zero_copy_pipes{kind=\"master\"}").await > 0);
    assert!(metric(manager, "strata_store_objects").await >= 2);

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

/// The bench's 100 KiB hits go out from files (cheaper than the copy there); a body under
/// `MIN_SEND` is copied, however often it is hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_from_min_send_up_go_from_files_and_smaller_ones_are_copied() {
    let _serial = SERIAL.lock().await;
    let Ok(disk) = tempfile::tempdir_in("/dev/shm") else {
        return;
    };
    let min = strata::zerocopy::MIN_SEND;
    let hundred = pattern(100 * 1024, 35);
    let under = pattern(min - 1, 36);
    assert!(
        hundred.len() >= min,
        "the bench's 100 KiB hits are over the threshold"
    );
    let origin = origin_of_big_and(hundred.clone(), under.clone()).await;
    let (_conf, s) = strata(disk.path(), "<MemorySize>64MB</MemorySize>", &origin).await;
    let addr = s.http[0];

    let before = strata::zerocopy::sent_bytes();
    assert!(
        until_sent_from_files(addr, "/big", &hundred, before).await,
        "a 100 KiB hit was never sent from its file"
    );
    let before = strata::zerocopy::sent_bytes();
    for _ in 0..20 {
        let g = get(addr, "a.com", "/other", &[]).await;
        assert!(
            g.status == 200 && g.body == under,
            "wrong answer under MIN_SEND"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        strata::zerocopy::sent_bytes(),
        before,
        "a body under MIN_SEND went out from a file"
    );
    assert_eq!(origin.count(), 2, "every later GET was a hit");
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

/// A large object the memory tier may not hold (`MemoryMaxObject` below its size): once its
/// chunk files are verified, hits hand hyper views of them (nothing is read or copied) and go
/// out from the files. A file damaged in place after its check fails the response that would
/// have sent it (the client sees a short body), never sends its bytes, and the object is then
/// fetched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_not_in_memory_go_out_from_files_without_a_read() {
    let _serial = SERIAL.lock().await;
    let Ok(disk) = tempfile::tempdir_in("/dev/shm") else {
        return;
    };
    let big = pattern(3 * 1024 * 1024 + 5, 71);
    let origin = origin_of(big.clone()).await;
    let cache = "<MemorySize>64MB</MemorySize><MemoryMaxObject>1MB</MemoryMaxObject>";
    let (_conf, s) = strata(disk.path(), cache, &origin).await;
    let addr = s.http[0];
    // The first hits verify the chunk files (reading them once).
    let before = strata::zerocopy::sent_bytes();
    assert!(until_sent_from_files(addr, "/big", &big, before).await);
    let (st0, sent0) = (s.proxy.store.stats(), strata::zerocopy::sent_bytes());
    for _ in 0..5 {
        let g = get(addr, "a.com", "/big", &[]).await;
        assert!(g.status == 200 && g.body == big);
    }
    let (st1, sent1) = (s.proxy.store.stats(), strata::zerocopy::sent_bytes());
    // Three chunks of 1 MiB per hit went out from files; the last 5 bytes were copied.
    assert!(
        sent1 - sent0 >= 5 * 3 * 1024 * 1024,
        "{} bytes from files",
        sent1 - sent0
    );
    assert_eq!(
        st1.memory_hits, st0.memory_hits,
        "no chunk came from memory"
    );
    assert!(
        st1.memory_bytes < 1024 * 1024,
        "no chunk was promoted into memory"
    );
    assert_eq!(origin.count(), 1);

    // Damage chunk 1 in place: its verified handle sees the change.
    let chunk1 = cache_files(disk.path())
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "1"))
        .expect("chunk file 1");
    let mut raw = std::fs::read(&chunk1).expect("read chunk");
    let at = raw.len() / 2;
    raw[at] ^= 0x40;
    std::fs::write(&chunk1, &raw).expect("write chunk");
    let t0 = Instant::now();
    while origin.count() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(10), "never refetched");
        // A body cut short is an error here: the client knows. A complete one must be exact.
        if let Ok(g) = request("GET", addr, "a.com", "/big", &[], bytes::Bytes::new()).await {
            assert!(g.body == big, "a complete body with damaged bytes");
        }
    }
    let g = get(addr, "a.com", "/big", &[]).await;
    assert!(g.status == 200 && g.body == big);
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

/// `<ZeroCopyPacing>` caps a connection sending from files once its receiver holds it back,
/// when the kernel paces it anyway (this network namespace's congestion control is BBR): a
/// client that reads slowly gets its connection paced (the manager counts it), and from
/// then on the rest of a 16 MiB hit arrives no faster than the rate, 16 Mbit/s (2 MB/s),
/// however fast the client reads. A lower bound only: a slow machine makes it longer.
/// Under CUBIC or Reno the same client is never paced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_receiver_holds_it_back_is_paced_at_the_configured_rate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _serial = SERIAL.lock().await;
    let Ok(disk) = tempfile::tempdir_in("/dev/shm") else {
        return;
    };
    let big = pattern(16 * 1024 * 1024, 61);
    let origin = origin_of(big.clone()).await;
    let cache = "<MemorySize>64MB</MemorySize><ZeroCopyPacing>16</ZeroCopyPacing>";
    let (_conf, s) = strata(disk.path(), cache, &origin).await;
    let before = strata::zerocopy::sent_bytes();
    assert!(
        until_sent_from_files(s.http[0], "/big", &big, before).await,
        "never sent from its files"
    );
    let paced_before = strata::zerocopy::paced_connections();

    let mut c = tokio::net::TcpStream::connect(s.http[0]).await.unwrap();
    c.write_all(b"GET /big HTTP/1.1\r\nHost: a.com\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::with_capacity(big.len() + 4096);
    let mut buf = vec![0u8; 64 * 1024];
    // Slowly (64 KiB a millisecond at most) until the connection is paced or 10 MiB are in.
    while strata::zerocopy::paced_connections() == paced_before && got.len() < 10 << 20 {
        let n = c.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let cc = std::fs::read("/proc/sys/net/ipv4/tcp_congestion_control").unwrap_or_default();
    if !strata::zerocopy::pacing::congestion_control_paces(&cc) {
        assert_eq!(
            strata::zerocopy::paced_connections(),
            paced_before,
            "paced under {}",
            String::from_utf8_lossy(&cc).trim()
        );
        c.read_to_end(&mut got).await.unwrap();
        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(got[head_end..] == big[..], "body differs");
        return;
    }
    assert_eq!(
        strata::zerocopy::paced_connections(),
        paced_before + 1,
        "a slow reader's connection was not paced"
    );
    let manager = s.manager.expect("manager");
    assert!(metric(manager, "strata_zero_copy_paced_connections_total").await > paced_before);
    // Then as fast as it can: at least 6 MiB are left, and what the kernel had not sent yet
    // leaves at 2 MB/s.
    let at = got.len();
    let t0 = Instant::now();
    c.read_to_end(&mut got).await.unwrap();
    let took = t0.elapsed();
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(got[head_end..] == big[..], "body differs");
    assert!(
        took >= Duration::from_millis(700),
        "the last {} bytes arrived in {took:?}",
        got.len() - at
    );
}

/// What one client connection got for its requests: each response's status and body, or the
/// error that ended the connection.
type ConnOutcome = Result<Vec<(u16, bytes::Bytes)>, String>;

/// Opens `clients` connections to `addr` first (they wait in the listen queue when the server
/// cannot take them yet), then sends `per_conn` GETs of `path` on each, one after another.
async fn many_clients(
    addr: std::net::SocketAddr,
    path: &'static str,
    clients: usize,
    per_conn: usize,
) -> Vec<ConnOutcome> {
    use http_body_util::BodyExt;
    let mut streams = Vec::new();
    for _ in 0..clients {
        streams.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                let mut got = Vec::new();
                for _ in 0..per_conn {
                    let req = http::Request::get(path)
                        .header("host", "a.com")
                        .body(http_body_util::Empty::<bytes::Bytes>::new())
                        .map_err(|e| e.to_string())?;
                    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
                    let status = resp.status().as_u16();
                    let body = resp
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| format!("body after status {status}: {e}"))?
                        .to_bytes();
                    got.push((status, body));
                }
                Ok(got)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        let r = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("a client waited over a minute");
        out.push(r.unwrap_or_else(|e| Err(e.to_string())));
    }
    out
}

/// A server short of descriptors (an open-files limit of 64) under more clients than it can
/// hold: the listener backs off and takes them as others leave, zero-copy stays within its
/// share of descriptors, and every large hit is whole and exact. A cold object fetched by all
/// of them at once, whose chunk files the disk then cannot take, is kept in memory and reaches
/// every client whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_short_of_descriptors_loses_no_byte() {
    let _serial = SERIAL.lock().await;
    let Ok(disk) = tempfile::tempdir_in("/dev/shm") else {
        return;
    };
    let big = pattern(3 * 1024 * 1024 + 7, 61);
    let cold = pattern(2 * 1024 * 1024 + 11, 62);
    let origin = origin_of_big_and(big.clone(), cold.clone()).await;
    let conf = ConfDir::new(
        &server_conf(disk.path(), "<MemorySize>64MB</MemorySize>"),
        &vhost_conf(origin.addr),
    );
    let mut s = ChildStrata::start_with_nofile(conf.path(), 64).await;

    // Warm, then hit: 96 connections, 3 hits each.
    let g = get(s.addr, "a.com", "/big", &[]).await;
    assert!(g.status == 200 && g.body == big, "first fetch");
    for outcome in many_clients(s.addr, "/big", 96, 3).await {
        let got = outcome.unwrap_or_else(|e| panic!("a hit failed: {e}\n{}", s.log_text()));
        for (status, body) in got {
            assert_eq!(status, 200);
            assert!(body == big, "a hit's body differs ({} bytes)", body.len());
        }
    }
    assert!(s.running(), "strata died:\n{}", s.log_text());
    assert!(
        s.log_text().contains("accept failed"),
        "the clients never exhausted the descriptors, so this tested nothing:\n{}",
        s.log_text()
    );
    assert_eq!(origin.count(), 1, "every later GET was a hit");

    // Zero-copy kept working within its budget: bytes went out from files.
    let sent = metric(s.manager().await, "strata_zero_copy_sent_bytes_total").await;
    assert!(sent > 0, "no hit was sent from files");

    // A cold object, all at once. Its chunk files cannot all be created (the descriptors are
    // taken): the store keeps it in memory instead, so every client that got an answer got
    // the exact bytes; the only failure allowed is an error status (no descriptor left for
    // the origin connection), never a body cut short.
    let mut exact = 0;
    for outcome in many_clients(s.addr, "/cold", 96, 1).await {
        let got = outcome.unwrap_or_else(|e| panic!("a cold fetch broke: {e}\n{}", s.log_text()));
        for (status, body) in got {
            if status == 200 {
                assert!(
                    body == cold,
                    "a 200 with wrong bytes ({} bytes)",
                    body.len()
                );
                exact += 1;
            } else {
                assert!(status >= 500, "status {status}");
            }
        }
    }
    assert!(exact > 0, "no client got the cold object");
    // The disk did refuse a chunk file (else this tested nothing).
    let refused = metric(s.manager().await, "strata_store_disk_write_errors_total").await;
    assert!(
        refused >= 1,
        "the disk never refused a write:\n{}",
        s.log_text()
    );
    assert!(s.running(), "strata died:\n{}", s.log_text());
    // With the descriptors back, the object is served whole.
    let g = get(s.addr, "a.com", "/cold", &[]).await;
    assert!(g.status == 200 && g.body == cold);
}
