//! Zero-copy sending of cached bytes that also live in a file on a memory-backed file system.
//!
//! On a large hit nearly all of the server's CPU goes into the kernel copying the body from
//! user memory into the socket. When the store also holds the bytes in a file on tmpfs (its
//! disk tier there), the kernel can send the file's pages without copying them (`sendfile`).
//!
//! hyper writes only the bytes it is handed, so the hand-over goes by address. A body that
//! yields a frame of cached bytes *offers* it to its connection's [`Lane`] together with the
//! file and offset that hold the same bytes; when hyper then writes those bytes, the
//! connection's stream ([`ZcStream`]) recognises them (the lane keeps the buffer alive, so no
//! other buffer can occupy its addresses) and sends them from the file instead. Everything
//! it does not recognise is written as usual: hyper's own framing, a stream that cannot send
//! files (TLS: never wrapped), a body polled outside its connection's task (an h2 stream)
//! simply take the copying path. The frame always carries the real bytes, so any path that
//! does not know about the lane still sends the right ones.
//!
//! How the file's bytes reach the socket: a whole segment at a time by `tee` from a pipe that
//! holds the file's pages (see [`tee`]), else by `sendfile`.
//!
//! Integrity: a [`SendFile`] is opened by the store, which reads it and checks its CRC before
//! handing it out, and it is `fstat`ed before every `sendfile` and every segment teed: once its
//! size, times or inode differ from what was verified it is never sent from again (the
//! verified bytes in memory are written instead, and the store drops the handle). Only
//! memory-backed file systems qualify (see [`memory_backed`]): nothing decays under the page
//! cache there after the check, and neither `sendfile` nor `splice` waits for a device, so
//! both are safe on the event loop.

pub mod tee;
pub mod view;

use std::fs::File;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::body::{Body, BoxError};

/// Frames smaller than this are copied. Measured on 100 KiB hits (figure 2 of the bench),
/// `sendfile` cost *more* server CPU per byte than the copy (0.50 vs 0.42 CPU s/GB pinned,
/// 0.58 vs 0.50 unpinned): two more syscalls per response (`fstat`, the head on its own) and
/// a reference taken and dropped on every 4 KiB page, by both cores, for a hot object's few
/// pages. From a chunk-sized frame (1 MiB) on, the saved copy dominates.
pub const MIN_SEND: usize = 256 * 1024;

/// Bytes sent from files since the process started (all connections).
static SENT: AtomicU64 = AtomicU64::new(0);

/// `1/divisor` of the process's open-files limit (unbounded when the limit is): the share of
/// descriptors one kind of zero-copy handle (the store's verified files, the pipes) may hold
/// beside the connections.
pub fn fd_share(divisor: u64) -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(u64::MAX, |limit| limit / divisor)
}

/// Bytes sent from files since the process started: what zero-copy saved from copying.
pub fn sent_bytes() -> u64 {
    SENT.load(Ordering::Relaxed)
}

/// Offers a connection keeps at most (hyper holds one or two large frames at a time; the
/// bound only matters for bodies dropped before they were written).
const MAX_OFFERS: usize = 16;

/// What a file's `fstat` said when its contents were verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    /// Plain `fstat`, taken before every send: std's `metadata` is a `statx` with an empty
    /// path, which costs the kernel a path-name copy each time.
    #[allow(clippy::unnecessary_cast)] // the fields' widths differ between targets
    fn of(file: &File) -> io::Result<Stamp> {
        let m = rustix::fs::fstat(file)?;
        Ok(Stamp {
            dev: m.st_dev as u64,
            ino: m.st_ino as u64,
            size: m.st_size as u64,
            mtime: (m.st_mtime as i64, m.st_mtime_nsec as i64),
            ctime: (m.st_ctime as i64, m.st_ctime_nsec as i64),
        })
    }
}

/// An open file whose contents the store has verified, to send cached bytes from.
#[derive(Debug)]
pub struct SendFile {
    file: File,
    stamp: Stamp,
    stale: AtomicBool,
    /// Pipes holding the file's pages, made on first send.
    masters: tee::Masters,
    /// The file mapped read-only, made on first [`SendFile::view`] (`None`: it cannot be).
    mapping: OnceLock<Option<Arc<view::Mapping>>>,
}

impl SendFile {
    /// Takes the file's stamp *before* the caller reads and verifies it: a change made
    /// during or after the read then shows as a different stamp at send time.
    pub fn new(file: File) -> io::Result<SendFile> {
        let stamp = Stamp::of(&file)?;
        Ok(SendFile {
            file,
            stamp,
            stale: AtomicBool::new(false),
            masters: tee::Masters::default(),
            mapping: OnceLock::new(),
        })
    }

    /// The verified bytes `offset..offset + len` without reading them: a view of the file,
    /// mapped on first use (see [`view`]). `None` once the file changed, or when it cannot be
    /// mapped or is shorter.
    pub fn view(&self, offset: u64, len: usize) -> Option<Bytes> {
        if self.is_stale() {
            return None;
        }
        let map = self.mapping.get_or_init(|| {
            let len = usize::try_from(self.stamp.size).ok()?;
            view::Mapping::of(&self.file, len)
                .map_err(|e| tracing::debug!(error = %e, "zero-copy: cannot map a cache file"))
                .ok()
                .map(Arc::new)
        });
        map.as_ref()?.view(usize::try_from(offset).ok()?, len)
    }

    /// Whether `p` points into a view of this file: such bytes are the file's, and are never
    /// written to a client once it changed.
    pub fn shows(&self, p: *const u8) -> bool {
        self.mapping
            .get()
            .and_then(Option::as_ref)
            .is_some_and(|m| m.contains(p))
    }

    /// The file, for the caller's verifying read.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether the file changed since it was verified (then it is never sent from again).
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// Checks the file against its stamp now; marks it stale when it changed.
    fn still_verified(&self) -> bool {
        if self.is_stale() {
            return false;
        }
        let same = Stamp::of(&self.file).is_ok_and(|s| s == self.stamp);
        if !same {
            tracing::warn!("cache file changed after it was verified; never sending from it again");
            self.stale.store(true, Ordering::Relaxed);
        }
        same
    }
}

/// Where a run of bytes also lives: `file` from byte `offset` on.
#[derive(Clone, Debug)]
pub struct FileSpan {
    /// The verified file.
    pub file: Arc<SendFile>,
    /// Offset of the first byte.
    pub offset: u64,
}

impl FileSpan {
    /// The span of the same bytes after the first `n`.
    pub fn skip(&self, n: u64) -> FileSpan {
        FileSpan {
            file: self.file.clone(),
            offset: self.offset + n,
        }
    }
}

/// Whether `file` lives on a memory-backed file system (tmpfs, ramfs), the only place files
/// are sent from (see the module doc).
pub fn memory_backed(file: &File) -> bool {
    #[cfg(target_os = "linux")]
    {
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        const RAMFS_MAGIC: i64 = 0x8584_58f6;
        rustix::fs::fstatfs(file).is_ok_and(|s| {
            #[allow(clippy::unnecessary_cast)] // the field's width differs between targets
            let t = s.f_type as i64;
            t == TMPFS_MAGIC || t == RAMFS_MAGIC
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        false
    }
}

/// Bytes offered for sending from a file.
struct Offer {
    /// Keeps the buffer (and so its addresses) alive while it is registered.
    bytes: Bytes,
    span: FileSpan,
}

impl Offer {
    fn start(&self) -> usize {
        self.bytes.as_ptr() as usize
    }

    fn end(&self) -> usize {
        self.start() + self.bytes.len()
    }
}

#[derive(Default)]
struct LaneInner {
    offers: Mutex<Vec<Offer>>,
    /// Number of offers, read without the lock on every write.
    count: AtomicUsize,
}

/// One connection's offers: bodies add, the connection's stream consumes.
#[derive(Clone, Default)]
pub struct Lane(Arc<LaneInner>);

tokio::task_local! {
    static LANE: Lane;
}

/// What a write should do with its buffers.
enum Plan {
    /// Nothing offered among them: write them all.
    Plain,
    /// The first `n` buffers precede offered bytes: write them, more follows at once.
    Prefix(usize),
    /// The first buffer is offered bytes: send them from the file.
    File(FileSpan, u64),
}

impl Lane {
    fn lock(&self) -> MutexGuard<'_, Vec<Offer>> {
        self.0.offers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, bytes: &Bytes, span: &FileSpan) {
        let mut offers = self.lock();
        if offers.len() >= MAX_OFFERS {
            offers.remove(0);
        }
        offers.push(Offer {
            bytes: bytes.clone(),
            span: span.clone(),
        });
        self.0.count.store(offers.len(), Ordering::Release);
    }

    fn plan(&self, bufs: &[IoSlice<'_>]) -> Plan {
        if self.0.count.load(Ordering::Acquire) == 0 {
            return Plan::Plain;
        }
        let offers = self.lock();
        for (i, b) in bufs.iter().enumerate() {
            if b.is_empty() {
                continue;
            }
            let (s, e) = (b.as_ptr() as usize, b.as_ptr() as usize + b.len());
            let Some(o) = offers.iter().find(|o| o.start() <= s && e <= o.end()) else {
                continue;
            };
            if i > 0 {
                return Plan::Prefix(i);
            }
            let at = o.span.offset + (s - o.start()) as u64;
            return Plan::File(o.span.clone(), at);
        }
        Plan::Plain
    }

    /// `n` bytes from address `from` went out: an offer sent to its end is done.
    fn sent(&self, from: usize, n: usize) {
        let mut offers = self.lock();
        offers.retain(|o| !(o.start() <= from && from + n == o.end()));
        self.0.count.store(offers.len(), Ordering::Release);
    }

    /// Forgets every offer of `file` (it changed: its bytes go the copying way now).
    fn withdraw(&self, file: &Arc<SendFile>) {
        let mut offers = self.lock();
        offers.retain(|o| !Arc::ptr_eq(&o.span.file, file));
        self.0.count.store(offers.len(), Ordering::Release);
    }
}

/// Runs `fut` (a connection) with `lane` as the lane its bodies offer to.
pub async fn scope<F: Future>(lane: Lane, fut: F) -> F::Output {
    LANE.scope(lane, fut).await
}

/// Whether the current task serves a connection that can send from files.
pub fn active() -> bool {
    LANE.try_with(|_| ()).is_ok()
}

/// Offers `bytes` (about to be handed to hyper as a body frame) for sending from `span`,
/// which holds the same bytes. A no-op outside a connection with a lane, and for small frames.
/// An error when `bytes` are a view of a file that changed since it was verified: they are
/// not the verified bytes any more, and the frame must not be sent (a small frame of a view,
/// which is copied, has the file's stamp checked here).
pub fn offer(bytes: &Bytes, span: &FileSpan) -> Result<(), BoxError> {
    let view = span.file.shows(bytes.as_ptr());
    if bytes.len() < MIN_SEND {
        // Copied, not sent from the file: a view is checked against its stamp here, as the
        // file would be before a send.
        if view && !span.file.still_verified() {
            return Err(CHANGED.into());
        }
        return Ok(());
    }
    if span.file.is_stale() {
        return if view { Err(CHANGED.into()) } else { Ok(()) };
    }
    let _ = LANE.try_with(|lane| lane.add(bytes, span));
    Ok(())
}

/// Why a response whose bytes were a view of a cache file fails mid-body.
const CHANGED: &str = "cache file changed after it was verified";

/// A body of the one frame `bytes`, offered for sending from `span` (which holds the same
/// bytes) when hyper takes it.
pub fn body(bytes: Bytes, span: Option<FileSpan>) -> Body {
    match span {
        Some(span) if bytes.len() >= MIN_SEND => OneFrame {
            bytes: Some(bytes),
            span,
        }
        .boxed_unsync(),
        _ => crate::body::full(bytes),
    }
}

struct OneFrame {
    bytes: Option<Bytes>,
    span: FileSpan,
}

impl hyper::body::Body for OneFrame {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(bytes) = self.bytes.take() else {
            return Poll::Ready(None);
        };
        if let Err(e) = offer(&bytes, &self.span) {
            return Poll::Ready(Some(Err(e)));
        }
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.bytes.as_ref().map_or(0, |b| b.len() as u64))
    }
}

/// A client's TCP stream that sends offered bytes from their files.
pub struct ZcStream {
    tcp: TcpStream,
    lane: Lane,
    pipe: PipeState,
}

/// The connection's pipe for teed segments, made on its first large send.
enum PipeState {
    /// Not made yet (or the process held its share of pipes when last tried).
    Untried,
    /// Made (it may hold bytes not yet in the socket).
    Ready(tee::ConnPipe<SendFile>),
    /// The kernel refused one: this connection sends with `sendfile` only.
    Refused,
}

impl ZcStream {
    /// Wraps `tcp`; run the connection inside [`scope`] with the returned lane.
    pub fn new(tcp: TcpStream) -> (ZcStream, Lane) {
        let lane = Lane::default();
        (
            ZcStream {
                tcp,
                lane: lane.clone(),
                pipe: PipeState::Untried,
            },
            lane,
        )
    }

    /// Writes `bufs` with `MSG_MORE`: offered bytes follow at once, so the head and the
    /// start of the body leave in one segment despite `TCP_NODELAY`.
    fn poll_write_more(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        use rustix::net::{SendAncillaryBuffer, SendFlags};
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let r = self.tcp.try_io(Interest::WRITABLE, || {
                rustix::net::sendmsg(
                    &self.tcp,
                    bufs,
                    &mut SendAncillaryBuffer::default(),
                    SendFlags::MORE | SendFlags::NOSIGNAL,
                )
                .map_err(io::Error::from)
            });
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    /// Sends up to `len` bytes of `file` from `offset` through the connection's pipe: the
    /// bytes already waiting there, or a segment teed in from the file's master.
    /// `Ok(None)` when the pipe cannot serve `offset` (the caller uses `sendfile`). The
    /// caller has checked the file's stamp unless the bytes already wait in the pipe.
    fn poll_pipe(
        &mut self,
        cx: &mut Context<'_>,
        file: &Arc<SendFile>,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<Option<usize>>> {
        if matches!(self.pipe, PipeState::Untried) {
            self.pipe = match tee::ConnPipe::new() {
                Ok(Some(p)) => PipeState::Ready(p),
                // The process's share of pipes is taken: this write goes by sendfile, a
                // later one tries again.
                Ok(None) => return Poll::Ready(Ok(None)),
                Err(e) => {
                    tracing::debug!(error = %e, "zero-copy: no connection pipe, using sendfile");
                    PipeState::Refused
                }
            };
        }
        let PipeState::Ready(pipe) = &mut self.pipe else {
            return Poll::Ready(Ok(None));
        };
        let waiting = match pipe.holds(file, offset) {
            Some(n) => n,
            None => {
                if pipe.holds_other() {
                    // Bytes of another place wait (a write that never continued them): a
                    // pipe cannot drop them, so it goes and the next write makes a new one.
                    self.pipe = PipeState::Untried;
                    return Poll::Ready(Ok(None));
                }
                match pipe.refill(&file.masters, file, &file.file, offset, len) {
                    Some(n) => n,
                    None => return Poll::Ready(Ok(None)),
                }
            }
        };
        // More follows at once when the frame goes on past the pipe's bytes. hyper hands the
        // rest of the frame, so `len` covers the waiting bytes; the bound is for safety: a
        // byte past `len` is one hyper never handed over, and would go out twice.
        let more = len > waiting;
        let max = len.min(waiting);
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let r = self
                .tcp
                .try_io(Interest::WRITABLE, || pipe.splice_to(&self.tcp, max, more));
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Ok(0) => return Poll::Ready(Ok(None)),
                r => return Poll::Ready(r.map(Some)),
            }
        }
    }

    /// `sendfile` of up to `len` bytes of `file` from `offset`; `Ok(None)` when the file
    /// cannot be sent from (the caller writes the bytes instead).
    fn poll_sendfile(
        &self,
        cx: &mut Context<'_>,
        file: &SendFile,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<Option<usize>>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let r = self.tcp.try_io(Interest::WRITABLE, || {
                let mut at = offset;
                rustix::fs::sendfile(&self.tcp, &file.file, Some(&mut at), len)
                    .map_err(io::Error::from)
            });
            return Poll::Ready(match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // The file ended early (it changed after the stamp check): not sendable.
                Ok(0) => Ok(None),
                Ok(n) => Ok(Some(n)),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(c) if c == rustix::io::Errno::INVAL.raw_os_error()
                            || c == rustix::io::Errno::NOSYS.raw_os_error()
                            || c == rustix::io::Errno::OPNOTSUPP.raw_os_error()
                    ) =>
                {
                    Ok(None)
                }
                Err(e) => Err(e),
            });
        }
    }
}

impl AsyncRead for ZcStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ZcStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.lane.plan(bufs) {
            Plan::Plain => {}
            Plan::Prefix(n) => return self.poll_write_more(cx, &bufs[..n]),
            Plan::File(span, at) => {
                let len = bufs[0].len();
                let waiting =
                    matches!(&self.pipe, PipeState::Ready(p) if p.holds(&span.file, at).is_some());
                // Bytes already in the pipe were checked when they were teed in.
                if waiting || span.file.still_verified() {
                    let mut sent = ready!(self.poll_pipe(cx, &span.file, at, len))?;
                    if sent.is_none() {
                        sent = ready!(self.poll_sendfile(cx, &span.file, at, len))?;
                    }
                    if let Some(n) = sent {
                        SENT.fetch_add(n as u64, Ordering::Relaxed);
                        self.lane.sent(bufs[0].as_ptr() as usize, n);
                        return Poll::Ready(Ok(n));
                    }
                    span.file.stale.store(true, Ordering::Relaxed);
                }
                self.lane.withdraw(&span.file);
                if span.file.shows(bufs[0].as_ptr()) {
                    // A view of the changed file: there are no verified bytes to copy.
                    return Poll::Ready(Err(io::Error::other(CHANGED)));
                }
            }
        }
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A file in /dev/shm (tmpfs) holding `data` after a 7-byte header, or None when the
    /// machine has no /dev/shm.
    fn shm_file(data: &[u8]) -> Option<(tempfile::NamedTempFile, Arc<SendFile>)> {
        let mut f = tempfile::NamedTempFile::new_in("/dev/shm").ok()?;
        f.write_all(b"HEADER:").ok()?;
        f.write_all(data).ok()?;
        f.flush().ok()?;
        let file = File::open(f.path()).ok()?;
        assert!(memory_backed(&file));
        let sf = Arc::new(SendFile::new(file).ok()?);
        Some((f, sf))
    }

    async fn pair() -> (ZcStream, Lane, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        let (zc, lane) = ZcStream::new(s.unwrap().0);
        (zc, lane, c.unwrap())
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[tokio::test]
    async fn offered_bytes_go_out_from_the_file_with_their_head() {
        let data = pattern(300 * 1024);
        let Some((_tmp, sf)) = shm_file(&data) else {
            return;
        };
        let (mut zc, lane, mut client) = pair().await;
        let body = Bytes::from(data.clone());
        let span = FileSpan {
            file: sf.clone(),
            offset: 7,
        };
        scope(lane.clone(), async { offer(&body, &span) })
            .await
            .expect("offer");
        assert_eq!(lane.0.count.load(Ordering::Relaxed), 1);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        // As hyper does: the head and a slice of the offered body in one vectored write,
        // then the rest, continuing wherever the kernel stopped.
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 307200\r\n\r\n".to_vec();
        let mut sent_body = 0;
        let mut head_left = head.len();
        while sent_body < body.len() {
            let rest = body.slice(sent_body..);
            let bufs = [
                IoSlice::new(&head[head.len() - head_left..]),
                IoSlice::new(&rest),
            ];
            let bufs = if head_left > 0 { &bufs[..] } else { &bufs[1..] };
            let n = std::future::poll_fn(|cx| Pin::new(&mut zc).poll_write_vectored(cx, bufs))
                .await
                .unwrap();
            let from_head = n.min(head_left);
            head_left -= from_head;
            sent_body += n - from_head;
        }
        assert_eq!(
            lane.0.count.load(Ordering::Relaxed),
            0,
            "the offer is used up"
        );
        zc.shutdown().await.unwrap();
        drop(zc);
        let got = reader.await.unwrap();
        assert_eq!(&got[..head.len()], &head[..]);
        assert!(got[head.len()..] == data[..], "body bytes differ");
    }

    /// Rewrites a file made by `shm_file` with `len` other bytes, as someone might after it
    /// was verified (late enough for its times to change).
    fn rewrite(path: &std::path::Path, len: usize) {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut bad = b"HEADER:".to_vec();
        bad.extend(std::iter::repeat_n(0xAAu8, len));
        std::fs::write(path, &bad).unwrap();
    }

    /// Offers `data` (held by `sf` from byte 7) on `zc`'s lane, then writes it as hyper does,
    /// continuing wherever the kernel stopped; `between` runs after each write with the body
    /// bytes written so far. Returns what the client read.
    async fn send_offered(
        mut zc: ZcStream,
        lane: &Lane,
        mut client: TcpStream,
        sf: &Arc<SendFile>,
        data: &[u8],
        mut between: impl FnMut(usize),
    ) -> Vec<u8> {
        let body = Bytes::from(data.to_vec());
        let span = FileSpan {
            file: sf.clone(),
            offset: 7,
        };
        scope(lane.clone(), async { offer(&body, &span) })
            .await
            .expect("offer");
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut sent = 0;
        while sent < body.len() {
            let rest = body.slice(sent..);
            let bufs = [IoSlice::new(&rest)];
            sent += std::future::poll_fn(|cx| Pin::new(&mut zc).poll_write_vectored(cx, &bufs))
                .await
                .unwrap();
            between(sent);
        }
        zc.shutdown().await.unwrap();
        drop(zc);
        reader.await.unwrap()
    }

    #[tokio::test]
    async fn a_frame_of_several_segments_goes_out_whole_through_the_pipe() {
        let data = pattern(2 * tee::SEGMENT + 12_345);
        let Some((_tmp, sf)) = shm_file(&data) else {
            return;
        };
        let (zc, lane, client) = pair().await;
        // A small send buffer, so most writes stop inside a segment.
        rustix::net::sockopt::set_socket_send_buffer_size(&zc.tcp, 64 * 1024).unwrap();
        let before = sent_bytes();
        let got = send_offered(zc, &lane, client, &sf, &data, |_| {}).await;
        assert!(got == data, "body bytes differ");
        assert_eq!(sf.masters.count(), 3, "one master per segment");
        assert!(
            sent_bytes() - before >= data.len() as u64,
            "sent from the file"
        );
        assert_eq!(lane.0.count.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_connection_the_kernel_refused_a_pipe_sends_by_sendfile() {
        let data = pattern(tee::SEGMENT + 70_000);
        let Some((_tmp, sf)) = shm_file(&data) else {
            return;
        };
        let (mut zc, lane, client) = pair().await;
        zc.pipe = PipeState::Refused; // as for an unprivileged user over its pipe quota
        rustix::net::sockopt::set_socket_send_buffer_size(&zc.tcp, 64 * 1024).unwrap();
        let before = sent_bytes();
        let got = send_offered(zc, &lane, client, &sf, &data, |_| {}).await;
        assert!(got == data, "body bytes differ");
        assert_eq!(sf.masters.count(), 0, "no pipe was made");
        // The offer was taken and the file never failed a send (a failure marks it stale):
        // sendfile sent the bytes.
        assert!(!sf.is_stale(), "the file stayed sendable");
        assert!(
            sent_bytes() - before >= data.len() as u64,
            "sent from the file"
        );
    }

    #[tokio::test]
    async fn bytes_left_in_the_pipe_by_an_abandoned_write_never_go_out() {
        let a = pattern(tee::SEGMENT);
        let b: Vec<u8> = pattern(tee::SEGMENT + 1).into_iter().map(|x| !x).collect();
        let (Some((_ta, fa)), Some((_tb, fb))) = (shm_file(&a), shm_file(&b)) else {
            return;
        };
        let (mut zc, lane, mut client) = pair().await;
        rustix::net::sockopt::set_socket_send_buffer_size(&zc.tcp, 64 * 1024).unwrap();
        let (ba, bb) = (Bytes::from(a.clone()), Bytes::from(b.clone()));
        scope(lane.clone(), async {
            offer(
                &ba,
                &FileSpan {
                    file: fa.clone(),
                    offset: 7,
                },
            )
            .expect("offer");
            offer(
                &bb,
                &FileSpan {
                    file: fb.clone(),
                    offset: 7,
                },
            )
            .expect("offer");
        })
        .await;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        // Part of `a` goes out; the rest of its segment waits in the pipe...
        let bufs = [IoSlice::new(&ba)];
        let n = std::future::poll_fn(|cx| Pin::new(&mut zc).poll_write_vectored(cx, &bufs))
            .await
            .unwrap();
        assert!(n < a.len(), "the small send buffer stops the first write");
        // ...and the writer moves on to `b` instead.
        zc.write_all(&bb).await.unwrap();
        zc.shutdown().await.unwrap();
        drop(zc);
        let got = reader.await.unwrap();
        assert_eq!(got.len(), n + b.len());
        assert!(got[..n] == a[..n] && got[n..] == b[..], "bytes differ");
    }

    #[tokio::test]
    async fn a_file_changed_between_segments_is_not_sent_from_again() {
        let data = pattern(2 * tee::SEGMENT);
        let Some((tmp, sf)) = shm_file(&data) else {
            return;
        };
        let (zc, lane, client) = pair().await;
        let path = tmp.path().to_path_buf();
        let mut changed = false;
        let got = send_offered(zc, &lane, client, &sf, &data, |sent| {
            // The first segment has gone out whole: rewrite the file before the second.
            if sent >= tee::SEGMENT && !changed {
                changed = true;
                rewrite(&path, data.len());
            }
        })
        .await;
        assert!(changed);
        assert!(got == data, "the verified bytes, not the file's");
        assert!(sf.is_stale());
    }

    #[tokio::test]
    async fn a_changed_file_is_never_sent_from() {
        let data = pattern(MIN_SEND + 1000);
        let Some((tmp, sf)) = shm_file(&data) else {
            return;
        };
        rewrite(tmp.path(), data.len());
        let (zc, lane, client) = pair().await;
        let got = send_offered(zc, &lane, client, &sf, &data, |_| {}).await;
        assert!(got == data, "the verified bytes, not the file's");
        assert!(sf.is_stale());
        assert_eq!(lane.0.count.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_view_of_a_file_that_changed_is_never_written() {
        let data = pattern(2 * tee::SEGMENT);
        let Some((tmp, sf)) = shm_file(&data) else {
            return;
        };
        let view = sf.view(7, data.len()).expect("view");
        assert!(view == data && sf.shows(view.as_ptr()));
        let (mut zc, lane, mut client) = pair().await;
        let span = FileSpan {
            file: sf.clone(),
            offset: 7,
        };
        scope(lane.clone(), async { offer(&view, &span) })
            .await
            .expect("offer");
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let _ = client.read_to_end(&mut got).await;
            got
        });
        // Write as hyper does; once a segment is out, the file changes in place.
        let mut sent = 0;
        let failed = loop {
            let rest = view.slice(sent..);
            let bufs = [IoSlice::new(&rest)];
            match std::future::poll_fn(|cx| Pin::new(&mut zc).poll_write_vectored(cx, &bufs)).await
            {
                Ok(n) => sent += n,
                Err(e) => break e,
            }
            assert!(
                sent < view.len(),
                "the whole view went out after the change"
            );
            if sent >= tee::SEGMENT {
                rewrite(tmp.path(), data.len());
            }
        };
        assert_eq!(failed.to_string(), CHANGED);
        drop(zc);
        let got = reader.await.unwrap();
        assert!(
            got.len() < data.len() && got[..] == data[..got.len()],
            "only verified bytes"
        );
        // A later frame of the same view is refused before it reaches hyper.
        assert!(sf.is_stale() && sf.view(7, 10).is_none());
        assert!(offer(&view.slice(10..), &span.skip(10)).is_err());
        assert!(offer(&view.slice(10..110), &span.skip(10)).is_err());
    }

    #[test]
    fn a_small_frame_of_a_view_is_checked_before_it_is_copied() {
        let data = pattern(MIN_SEND * 2);
        let Some((tmp, sf)) = shm_file(&data) else {
            return;
        };
        let view = sf.view(7, data.len()).expect("view");
        let span = FileSpan {
            file: sf.clone(),
            offset: 7,
        };
        // Small frames are copied, not sent from the file: fine while the file is unchanged.
        offer(&view.slice(100..1100), &span.skip(100)).expect("unchanged");
        rewrite(tmp.path(), data.len());
        assert!(offer(&view.slice(100..1100), &span.skip(100)).is_err());
        assert!(sf.is_stale());
        // Bytes that are not a view (held in memory, verified) still go.
        offer(&Bytes::from(data[..1000].to_vec()), &span).expect("memory bytes");
    }

    #[tokio::test]
    async fn nothing_is_offered_outside_a_lane_or_below_the_minimum() {
        let data = pattern(MIN_SEND);
        let Some((_tmp, sf)) = shm_file(&data) else {
            return;
        };
        let span = FileSpan {
            file: sf,
            offset: 7,
        };
        assert!(!active());
        offer(&Bytes::from(data.clone()), &span).expect("no lane: ignored");
        let lane = Lane::default();
        scope(lane.clone(), async {
            assert!(active());
            offer(&Bytes::from(vec![1u8; MIN_SEND - 1]), &span).expect("too small: ignored");
        })
        .await;
        assert_eq!(lane.0.count.load(Ordering::Relaxed), 0);
    }
}
