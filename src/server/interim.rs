//! Forwarding an origin's 1xx interim responses (RFC 9110 §15.2) to an HTTP/1.1 client.
//!
//! hyper's server cannot send a 1xx of our choosing (only its own `100 Continue`), so the
//! bytes go around it: every client connection's stream is wrapped in an [`InterimIo`] and
//! the request path gets an [`Interim`] handle that writes `HTTP/1.1 1xx …` heads straight
//! onto the socket. That is only sound while hyper holds none of an earlier response's bytes,
//! so the wrapper tracks whether hyper's last flush left the stream *clean*; when it did not,
//! the interim response is dropped (it is advisory: the final response follows anyway).
//! Interim bytes that the socket does not take at once stay queued, and the wrapper writes
//! them before any byte of hyper's, so a 1xx always precedes the final head.
//!
//! Limitations: HTTP/1.1 only. An h2 connection (by preface, cleartext or after ALPN) never
//! gets these bytes — the handle refuses, and [`Interim::for_request`] gives no sink for any
//! request that is not HTTP/1.1 — because h2 would need a HEADERS frame from inside hyper's
//! h2 stream, which hyper does not offer. HTTP/1.0 clients get none either, as §15.2 requires.
//! `100 Continue` is never forwarded (hyper answers `Expect` itself, and the origin's is one
//! we caused) and neither is `101` (a protocol switch is not an interim answer).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use http::{HeaderMap, Request, StatusCode, Version, header};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::origin::InterimSink;

/// Interim bytes allowed to wait for a slow client; past this, further 1xx are dropped
/// rather than buffered without bound for an origin that keeps sending them.
const MAX_PENDING: usize = 16 * 1024;

/// The HTTP/2 connection preface: a connection that starts with it is h2.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What became of one interim response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Handed to the socket.
    Written,
    /// Queued: written before hyper's next bytes (the connection task was woken for it).
    Queued,
    /// Not sent, and why.
    Dropped(Skip),
}

/// Why an interim response was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not a 1xx we forward (100, 101 or not 1xx at all).
    NotForwarded,
    /// The connection is not (or not yet known to be) HTTP/1.
    NotHttp1,
    /// hyper still holds bytes of an earlier response: injecting would split them.
    Busy,
    /// Too many interim bytes already wait for the client.
    Backlog,
    /// The connection is gone or the write failed.
    Closed,
}

/// What the first bytes read say the connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    /// Still matching the h2 preface; the count of bytes matched so far.
    Sniffing(usize),
    Http1,
    Http2,
}

/// The state the wrapper and its handles share; locked only around one poll call.
struct Shared<S> {
    /// None once the wrapper is dropped: the socket closes then, whoever holds a handle.
    io: Option<S>,
    /// hyper's last flush completed and it has written nothing since.
    clean: bool,
    /// Interim bytes the socket has not taken yet; they go out before hyper's next bytes.
    pending: Vec<u8>,
    proto: Proto,
    /// The connection task's waker, to make it flush `pending` when a handle could not.
    waker: Option<Waker>,
    shut: bool,
}

impl<S: AsyncWrite + Unpin> Shared<S> {
    fn remember(&mut self, cx: &Context<'_>) {
        match &self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
    }

    /// Writes `pending` out; Ready(Ok) once it is empty.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        while !self.pending.is_empty() {
            match Pin::new(&mut *io).poll_write(cx, &self.pending) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.pending.drain(..n.min(self.pending.len()));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    fn sniff(&mut self, read: &[u8]) {
        let Proto::Sniffing(mut matched) = self.proto else {
            return;
        };
        for &b in read {
            if H2_PREFACE.get(matched) != Some(&b) {
                self.proto = Proto::Http1;
                return;
            }
            matched += 1;
            if matched == H2_PREFACE.len() {
                self.proto = Proto::Http2;
                return;
            }
        }
        self.proto = Proto::Sniffing(matched);
    }

    fn inject(&mut self, head: &[u8]) -> Sent {
        if self.io.is_none() || self.shut {
            return Sent::Dropped(Skip::Closed);
        }
        if self.proto != Proto::Http1 {
            return Sent::Dropped(Skip::NotHttp1);
        }
        if !self.clean {
            return Sent::Dropped(Skip::Busy);
        }
        if self.pending.len() + head.len() > MAX_PENDING {
            return Sent::Dropped(Skip::Backlog);
        }
        self.pending.extend_from_slice(head);
        // This runs on the origin connection's task: a no-op waker, because the socket's
        // write readiness belongs to the client connection's task. Whatever is left, that
        // task writes once woken (its `poll_flush` drains `pending` and registers itself).
        let mut cx = Context::from_waker(Waker::noop());
        let drained = match self.drain(&mut cx) {
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "interim response not written");
                self.pending.clear();
                return Sent::Dropped(Skip::Closed);
            }
            Poll::Ready(Ok(())) => true,
            Poll::Pending => false,
        };
        // TLS may have taken the bytes into its buffer without sending them.
        let flushed = drained
            && self
                .io
                .as_mut()
                .is_some_and(|io| Pin::new(io).poll_flush(&mut cx).is_ready());
        if flushed {
            return Sent::Written;
        }
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
        Sent::Queued
    }
}

/// A client connection's stream, with room for interim responses; see the module doc.
pub struct InterimIo<S> {
    shared: Arc<Mutex<Shared<S>>>,
}

impl<S> InterimIo<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Wraps a freshly accepted (and, for TLS, handshaken) client stream.
    pub fn new(io: S) -> InterimIo<S> {
        InterimIo {
            shared: Arc::new(Mutex::new(Shared {
                io: Some(io),
                clean: true,
                pending: Vec::new(),
                proto: Proto::Sniffing(0),
                waker: None,
                shut: false,
            })),
        }
    }

    /// The handle that injects interim responses into this connection.
    pub fn handle(&self) -> Interim {
        Interim {
            conn: self.shared.clone(),
        }
    }
}

fn poisoned() -> io::Error {
    io::Error::other("client connection state poisoned")
}

impl<S> Drop for InterimIo<S> {
    fn drop(&mut self) {
        // Handles may outlive hyper's connection (in an origin request still in flight):
        // the socket must close now, not when the last of them goes.
        if let Ok(mut g) = self.shared.lock() {
            g.io = None;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for InterimIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut g = self.shared.lock().map_err(|_| poisoned())?;
        g.remember(cx);
        let before = buf.filled().len();
        let Some(io) = g.io.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let r = Pin::new(io).poll_read(cx, buf);
        if matches!(g.proto, Proto::Sniffing(_)) {
            g.sniff(&buf.filled()[before..]);
        }
        r
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for InterimIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut g = self.shared.lock().map_err(|_| poisoned())?;
        g.remember(cx);
        std::task::ready!(g.drain(cx))?;
        if !buf.is_empty() {
            g.clean = false;
        }
        match g.io.as_mut() {
            Some(io) => Pin::new(io).poll_write(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut g = self.shared.lock().map_err(|_| poisoned())?;
        g.remember(cx);
        std::task::ready!(g.drain(cx))?;
        if bufs.iter().any(|b| !b.is_empty()) {
            g.clean = false;
        }
        match g.io.as_mut() {
            Some(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.shared
            .lock()
            .ok()
            .and_then(|g| g.io.as_ref().map(|io| io.is_write_vectored()))
            .unwrap_or(false)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut g = self.shared.lock().map_err(|_| poisoned())?;
        g.remember(cx);
        std::task::ready!(g.drain(cx))?;
        let Some(io) = g.io.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let r = Pin::new(io).poll_flush(cx);
        // hyper's h1 connection flushes the stream only after handing it all of its own
        // buffer, so a completed flush means no response bytes are held anywhere.
        if matches!(r, Poll::Ready(Ok(()))) {
            g.clean = true;
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut g = self.shared.lock().map_err(|_| poisoned())?;
        g.shut = true;
        match g.io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// The part of the shared state a handle needs, without the stream's type.
trait Inject: Send + Sync {
    fn inject(&self, head: &[u8]) -> Sent;
}

impl<S: AsyncWrite + Unpin + Send> Inject for Mutex<Shared<S>> {
    fn inject(&self, head: &[u8]) -> Sent {
        match self.lock() {
            Ok(mut g) => g.inject(head),
            Err(_) => Sent::Dropped(Skip::Closed),
        }
    }
}

/// A cloneable handle that sends interim responses on one client connection.
#[derive(Clone)]
pub struct Interim {
    conn: Arc<dyn Inject>,
}

impl std::fmt::Debug for Interim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interim")
    }
}

impl Interim {
    /// The sink for the origin's 1xx answers to `req`: None unless `req` is HTTP/1.1, so
    /// HTTP/1.0 and h2 requests can never be handed one.
    pub fn for_request<B>(&self, req: &Request<B>) -> Option<InterimSink> {
        if req.version() != Version::HTTP_11 {
            return None;
        }
        let me = self.clone();
        Some(Arc::new(move |status, headers: &HeaderMap| {
            me.send(status, headers);
        }))
    }

    /// Sends one interim response now, or queues it before hyper's next bytes, or drops it
    /// when the stream is not in a state to take it (see [`Skip`]).
    pub fn send(&self, status: StatusCode, headers: &HeaderMap) -> Sent {
        let sent = match head_bytes(status, headers) {
            Some(head) => self.conn.inject(&head),
            None => Sent::Dropped(Skip::NotForwarded),
        };
        if let Sent::Dropped(why) = sent {
            tracing::debug!(
                status = status.as_u16(),
                ?why,
                "interim response not forwarded"
            );
        }
        sent
    }
}

/// The HTTP/1.1 head of an interim response, without hop-by-hop fields; None for a status
/// that is not forwarded.
pub fn head_bytes(status: StatusCode, headers: &HeaderMap) -> Option<Vec<u8>> {
    if !status.is_informational()
        || status == StatusCode::CONTINUE
        || status == StatusCode::SWITCHING_PROTOCOLS
    {
        return None;
    }
    let mut forwarded = headers.clone();
    crate::cache::policy::remove_hop_by_hop_headers(&mut forwarded);
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &forwarded {
        // A 1xx has no content (RFC 9110 §8.6).
        if name == header::CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::Wake;
    use std::time::Duration;

    use http::HeaderValue;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn hints() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append(
            header::LINK,
            HeaderValue::from_static("</s.css>; rel=preload"),
        );
        h
    }

    const EARLY_HINTS: &[u8] = b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\n";

    /// A wrapped server side whose client has sent the start of an HTTP/1.1 request.
    async fn h1_pair(capacity: usize) -> (InterimIo<DuplexStream>, Interim, DuplexStream) {
        let (server, mut client) = tokio::io::duplex(capacity);
        let mut io = InterimIo::new(server);
        let handle = io.handle();
        client.write_all(b"GET ").await.unwrap();
        let mut buf = [0u8; 64];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET ");
        (io, handle, client)
    }

    async fn read_exactly(client: &mut DuplexStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut buf))
            .await
            .expect("bytes arrive")
            .unwrap();
        buf
    }

    #[test]
    fn head_has_status_line_fields_and_blank_line() {
        let mut h = hints();
        h.append(
            header::LINK,
            HeaderValue::from_static("</a.js>; rel=preload"),
        );
        let got = head_bytes(StatusCode::EARLY_HINTS, &h).unwrap();
        assert_eq!(
            String::from_utf8(got).unwrap(),
            "HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\
             link: </a.js>; rel=preload\r\n\r\n"
        );
        let odd = StatusCode::from_u16(199).unwrap();
        assert_eq!(
            head_bytes(odd, &HeaderMap::new()).unwrap(),
            b"HTTP/1.1 199 \r\n\r\n",
            "an unknown 1xx has an empty reason phrase"
        );
    }

    #[test]
    fn head_drops_hop_by_hop_and_connection_named_fields() {
        let mut h = hints();
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("content-length", "0"),
            ("x-secret", "1"),
            ("x-kept", "2"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let got = String::from_utf8(head_bytes(StatusCode::EARLY_HINTS, &h).unwrap()).unwrap();
        assert_eq!(
            got,
            "HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\nx-kept: 2\r\n\r\n"
        );
    }

    #[test]
    fn continue_switching_and_final_statuses_are_not_forwarded() {
        for s in [100, 101, 200, 304, 500] {
            let s = StatusCode::from_u16(s).unwrap();
            assert_eq!(head_bytes(s, &hints()), None, "{s}");
        }
        assert!(head_bytes(StatusCode::PROCESSING, &HeaderMap::new()).is_some());
    }

    #[tokio::test]
    async fn clean_stream_takes_interim_bytes_at_once() {
        let (_io, handle, mut client) = h1_pair(1024).await;
        assert_eq!(
            handle.send(StatusCode::EARLY_HINTS, &hints()),
            Sent::Written
        );
        assert_eq!(
            read_exactly(&mut client, EARLY_HINTS.len()).await,
            EARLY_HINTS
        );
        assert_eq!(
            handle.send(StatusCode::CONTINUE, &HeaderMap::new()),
            Sent::Dropped(Skip::NotForwarded)
        );
    }

    #[tokio::test]
    async fn unflushed_response_bytes_make_the_stream_busy() {
        let (mut io, handle, mut client) = h1_pair(1024).await;
        io.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        assert_eq!(
            handle.send(StatusCode::EARLY_HINTS, &hints()),
            Sent::Dropped(Skip::Busy),
            "hyper may still hold the rest of that head"
        );
        io.write_all(b"content-length: 0\r\n\r\n").await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(
            handle.send(StatusCode::EARLY_HINTS, &hints()),
            Sent::Written
        );
        let final_head = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let got = read_exactly(&mut client, final_head.len() + EARLY_HINTS.len()).await;
        assert_eq!(&got[..final_head.len()], final_head);
        assert_eq!(&got[final_head.len()..], EARLY_HINTS);
    }

    #[tokio::test]
    async fn queued_interim_bytes_go_out_before_the_final_head() {
        // A pipe smaller than the interim head: most of it must wait.
        let (mut io, handle, mut client) = h1_pair(8).await;
        assert_eq!(handle.send(StatusCode::EARLY_HINTS, &hints()), Sent::Queued);
        let final_resp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let writer = tokio::spawn(async move {
            io.write_all(final_resp).await.unwrap();
            io.flush().await.unwrap();
            io
        });
        let got = read_exactly(&mut client, EARLY_HINTS.len() + final_resp.len()).await;
        assert_eq!(&got[..EARLY_HINTS.len()], EARLY_HINTS);
        assert_eq!(&got[EARLY_HINTS.len()..], final_resp);
        let _io = writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_flush_alone_drains_the_queue() {
        let (mut io, handle, mut client) = h1_pair(8).await;
        assert_eq!(handle.send(StatusCode::EARLY_HINTS, &hints()), Sent::Queued);
        let flusher = tokio::spawn(async move {
            io.flush().await.unwrap();
            io
        });
        assert_eq!(
            read_exactly(&mut client, EARLY_HINTS.len()).await,
            EARLY_HINTS
        );
        let _io = flusher.await.unwrap();
    }

    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn queueing_wakes_the_connection_task() {
        let (mut io, handle, _client) = h1_pair(8).await;
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut space = [0u8; 16];
        let mut buf = ReadBuf::new(&mut space);
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut buf).is_pending());
        assert_eq!(handle.send(StatusCode::EARLY_HINTS, &hints()), Sent::Queued);
        assert!(flag.0.load(Ordering::SeqCst), "its flush writes the rest");
    }

    #[tokio::test]
    async fn backlog_is_bounded() {
        let (_io, handle, _client) = h1_pair(8).await;
        let mut big = HeaderMap::new();
        big.insert(
            HeaderName::from_static("x-big"),
            HeaderValue::from_str(&"a".repeat(MAX_PENDING / 2)).unwrap(),
        );
        assert_eq!(handle.send(StatusCode::EARLY_HINTS, &big), Sent::Queued);
        assert_eq!(
            handle.send(StatusCode::EARLY_HINTS, &big),
            Sent::Dropped(Skip::Backlog)
        );
    }

    #[tokio::test]
    async fn h2_connections_and_unread_connections_get_nothing() {
        let (server, mut client) = tokio::io::duplex(1024);
        let mut io = InterimIo::new(server);
        let handle = io.handle();
        assert_eq!(
            handle.send(StatusCode::EARLY_HINTS, &hints()),
            Sent::Dropped(Skip::NotHttp1),
            "nothing read yet"
        );
        // The preface split across reads, as TCP may deliver it.
        let mut buf = [0u8; 64];
        client.write_all(&H2_PREFACE[..5]).await.unwrap();
        let _ = io.read(&mut buf).await.unwrap();
        assert_eq!(
            handle.send(StatusCode::EARLY_HINTS, &hints()),
            Sent::Dropped(Skip::NotHttp1)
        );
        client.write_all(&H2_PREFACE[5..]).await.unwrap();
        let mut got = 5;
        while got < H2_PREFACE.len() {
            got += io.read(&mut buf).await.unwrap();
        }
        assert_eq!(
            handle.send(StatusCode::EARLY_HINTS, &hints()),
            Sent::Dropped(Skip::NotHttp1)
        );
    }

    #[tokio::test]
    async fn only_http11_requests_get_a_sink() {
        let (_io, handle, _client) = h1_pair(64).await;
        let mut req = Request::new(());
        *req.version_mut() = Version::HTTP_11;
        assert!(handle.for_request(&req).is_some());
        for v in [Version::HTTP_10, Version::HTTP_2, Version::HTTP_09] {
            *req.version_mut() = v;
            assert!(handle.for_request(&req).is_none(), "{v:?}");
        }
    }

    #[tokio::test]
    async fn dropping_the_stream_closes_it_despite_live_handles() {
        let (io, handle, mut client) = h1_pair(64).await;
        drop(io);
        let mut buf = [0u8; 8];
        assert_eq!(client.read(&mut buf).await.unwrap(), 0, "EOF");
        assert_eq!(
            handle.send(StatusCode::EARLY_HINTS, &hints()),
            Sent::Dropped(Skip::Closed)
        );
    }
}
