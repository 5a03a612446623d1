//! `hitload`: the bench's load generator for large hits, which throws bodies away in the
//! kernel so that the server, not the client, is what the figure measures.
//!
//! On loopback the client's core pays for every byte it reads: wrk copies each body into its
//! buffer, and how much that costs depends on how the *sender* built its segments (page-cache
//! pages sent by `sendfile` arrive as 4 KiB fragments, each checked on copy-out; copied bytes
//! arrive in 32 KiB ones). At 100 KiB and 10 MiB that copy makes wrk the bottleneck, so every
//! server meets the same ceiling and the ratio measures the client. A client behind a real
//! NIC pays the same whatever the server did. This client reads each response's head, checks
//! status and `Content-Length`, then discards exactly the body's bytes with
//! `recv(MSG_TRUNC)`, which TCP frees without copying; every byte is still counted.
//!
//! Closed loop, HTTP/1.1 keep-alive, one request in flight per connection, on one thread:
//!
//! ```text
//! hitload --addr 127.0.0.1:8080 --path /obj/100k.bin --conns 16 --duration 5 \
//!         [--host H] [--timeout S] [--lowat BYTES]
//! ```
//!
//! `--lowat` sets `SO_RCVLOWAT` while a body is discarded: the kernel wakes the client once
//! that many bytes are queued instead of on every segment. On loopback the receiver's wakeups
//! run in the receive path on the *sender's* core, so a client woken per segment bills every
//! server for its own wakeups; the bench uses 256 KiB.
//!
//! prints one line `HITLOADJSON {...}` with requests, bytes, duration_us, p50_us, p99_us
//! and the error counts (connect, read, status = any status but 200, length = a body shorter
//! or longer than its `Content-Length`, timeout).

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustix::net::RecvFlags;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// Largest response head accepted.
const HEAD_MAX: usize = 16 * 1024;
/// Bytes a head is read in at a time: a head is a few hundred bytes and the body usually
/// follows it in the same segment; reading 16 KiB at once would copy that much of every body.
const HEAD_STEP: usize = 1024;
/// Bytes discarded per `recv` at most (the buffer is never written: `MSG_TRUNC`).
const SINK: usize = 4 * 1024 * 1024;

/// The command line.
struct Args {
    addr: SocketAddr,
    path: String,
    host: String,
    conns: usize,
    duration: Duration,
    timeout: Duration,
    /// `SO_RCVLOWAT` cap while a body is discarded (0: the kernel's default, 1 byte).
    lowat: u64,
}

/// What one connection's loop counted.
#[derive(Default)]
struct Tally {
    requests: u64,
    bytes: u64,
    latencies_us: Vec<u32>,
    connect: u64,
    read: u64,
    status: u64,
    length: u64,
    timeout: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.requests += other.requests;
        self.bytes += other.bytes;
        self.latencies_us.extend(other.latencies_us);
        self.connect += other.connect;
        self.read += other.read;
        self.status += other.status;
        self.length += other.length;
        self.timeout += other.timeout;
    }
}

/// Why one exchange failed.
enum Failure {
    /// The socket failed or closed early.
    Read,
    /// The head was malformed or lacked `Content-Length`, or the body ran past it.
    Length,
}

fn parse_args() -> Result<Args, String> {
    let mut addr = None;
    let mut path = "/".to_string();
    let mut host = None;
    let mut conns = 16usize;
    let mut duration = 5.0f64;
    let mut timeout = 5.0f64;
    let mut lowat = 0u64;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |_| format!("{flag}: cannot read {value:?}");
        match flag.as_str() {
            "--addr" => addr = Some(value.parse::<SocketAddr>().map_err(|_| bad(()))?),
            "--path" => path = value.clone(),
            "--host" => host = Some(value.clone()),
            "--conns" => conns = value.parse().map_err(|_| bad(()))?,
            "--duration" => duration = value.parse().map_err(|_| bad(()))?,
            "--timeout" => timeout = value.parse().map_err(|_| bad(()))?,
            "--lowat" => lowat = value.parse().map_err(|_| bad(()))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let addr = addr.ok_or("--addr is required")?;
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if conns == 0 || !positive(duration) || duration > 600.0 || !positive(timeout) {
        return Err("--conns must be > 0, --duration in (0, 600], --timeout > 0".into());
    }
    Ok(Args {
        addr,
        host: host.unwrap_or_else(|| addr.to_string()),
        path,
        conns,
        duration: Duration::from_secs_f64(duration),
        timeout: Duration::from_secs_f64(timeout),
        lowat,
    })
}

/// Reads one response head; returns (status, content length, body bytes already read).
async fn read_head(stream: &mut TcpStream, buf: &mut [u8]) -> Result<(u16, u64, u64), Failure> {
    let mut filled = 0;
    loop {
        let end = (filled + HEAD_STEP).min(buf.len());
        let n = stream
            .read(&mut buf[filled..end])
            .await
            .map_err(|_| Failure::Read)?;
        if n == 0 {
            return Err(Failure::Read);
        }
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf[..filled]) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = response.code.unwrap_or(0);
                let length = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or(Failure::Length)?;
                return Ok((status, length, (filled - head_len) as u64));
            }
            Ok(httparse::Status::Partial) if filled < buf.len() => {}
            _ => return Err(Failure::Length),
        }
    }
}

/// Discards `remaining` body bytes without copying them out of the kernel.
async fn discard(
    stream: &TcpStream,
    mut remaining: u64,
    sink: &mut [u8],
    lowat: u64,
) -> Result<(), Failure> {
    while remaining > 0 {
        if lowat > 0 {
            // Wake only when this much of the body is queued (never more than is left).
            set_recv_lowat(stream, remaining.min(lowat)).map_err(|_| Failure::Read)?;
        }
        let want = remaining.min(sink.len() as u64) as usize;
        let got = stream.try_io(Interest::READABLE, || {
            rustix::net::recv(stream, &mut sink[..want], RecvFlags::TRUNC)
                .map(|(_, len)| len)
                .map_err(io::Error::from)
        });
        match got {
            Ok(0) => return Err(Failure::Read),
            Ok(n) => remaining = remaining.saturating_sub(n as u64),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                stream.readable().await.map_err(|_| Failure::Read)?
            }
            Err(_) => return Err(Failure::Read),
        }
    }
    Ok(())
}

/// `SO_RCVLOWAT`: the socket reports readable once `bytes` are queued (or at its end).
fn set_recv_lowat(stream: &TcpStream, bytes: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid open socket descriptor (borrowed for the call) and a pointer to a live
    // c_int with its exact size, as setsockopt(2) documents for SO_RCVLOWAT.
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One request and its response; returns the body's length.
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    head: &mut [u8],
    sink: &mut [u8],
    lowat: u64,
) -> Result<(u16, u64), Failure> {
    stream.write_all(request).await.map_err(|_| Failure::Read)?;
    let (status, length, already) = read_head(stream, head).await?;
    if already > length {
        return Err(Failure::Length);
    }
    discard(stream, length - already, sink, lowat).await?;
    Ok((status, length))
}

/// One connection's closed loop until the deadline (reconnecting after a failure).
async fn connection(args: std::sync::Arc<Args>, deadline: Instant) -> Tally {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: hitload\r\n\r\n",
        args.path, args.host
    );
    let mut head = vec![0u8; HEAD_MAX];
    let mut sink = vec![0u8; SINK];
    let mut tally = Tally::default();
    let mut stream: Option<TcpStream> = None;
    while Instant::now() < deadline {
        let s = match stream.as_mut() {
            Some(s) => s,
            None => match TcpStream::connect(args.addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream.insert(s)
                }
                Err(_) => {
                    tally.connect += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let t0 = Instant::now();
        let step = exchange(s, request.as_bytes(), &mut head, &mut sink, args.lowat);
        match tokio::time::timeout(args.timeout, step).await {
            Ok(Ok((status, length))) => {
                tally.requests += 1;
                tally.bytes += length;
                let us = t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                tally.latencies_us.push(us);
                if status != 200 {
                    tally.status += 1;
                }
            }
            Ok(Err(failure)) => {
                match failure {
                    Failure::Read => tally.read += 1,
                    Failure::Length => tally.length += 1,
                }
                stream = None;
            }
            Err(_) => {
                tally.timeout += 1;
                stream = None;
            }
        }
    }
    tally
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let args = match parse_args() {
        Ok(a) => std::sync::Arc::new(a),
        Err(e) => {
            eprintln!("hitload: {e}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hitload: cannot start the runtime: {e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let deadline = started + args.duration;
    let total = runtime.block_on(async {
        let tasks: Vec<_> = (0..args.conns)
            .map(|_| tokio::spawn(connection(args.clone(), deadline)))
            .collect();
        let mut total = Tally::default();
        for t in tasks {
            if let Ok(tally) = t.await {
                total.add(tally);
            }
        }
        total
    });
    let elapsed = started.elapsed();
    let mut lat = total.latencies_us;
    lat.sort_unstable();
    println!(
        "HITLOADJSON {{\"requests\": {}, \"bytes\": {}, \"duration_us\": {}, \"p50_us\": {}, \
         \"p99_us\": {}, \"connect\": {}, \"read\": {}, \"status\": {}, \"length\": {}, \
         \"timeout\": {}}}",
        total.requests,
        total.bytes,
        elapsed.as_micros(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        total.connect,
        total.read,
        total.status,
        total.length,
        total.timeout
    );
}
