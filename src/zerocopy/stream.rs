//! A client's TCP stream that sends the bytes offered on its lane from their files.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use super::file::SendFile;
use super::lane::{CHANGED, Lane, Plan};
use super::{PACED, SENT, pacing, tee};

/// A client's TCP stream that sends offered bytes from their files.
pub struct ZcStream {
    tcp: TcpStream,
    lane: Lane,
    pipe: PipeState,
    /// Sets the pacing ceiling once the receiver turns out to be the bound (see [`pacing`]).
    pacer: pacing::Pacer,
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
    /// Wraps `tcp`; run the connection inside [`scope`] with the returned lane. Once its
    /// receiver holds back the bytes sent from files, the connection is paced at `pace`
    /// bytes/s (0: never; see [`pacing::Pacer`]); until then a flow its congestion control
    /// paces keeps a short unsent queue ([`pacing::SHORT_QUEUE`]).
    pub fn new(tcp: TcpStream, pace: u64) -> (ZcStream, Lane) {
        let lane = Lane::default();
        // Read once: nothing changes a connection's congestion control after this.
        let paces = pacing::congestion_control(&tcp)
            .map(|name| pacing::congestion_control_paces(&name))
            .unwrap_or(false);
        // A way of sending, not a condition of correctness: on failure the queue stays long.
        if pacing::starts_short(pace, paces)
            && let Err(e) = pacing::set_unsent_queue(&tcp, pacing::SHORT_QUEUE)
        {
            tracing::debug!(error = %e, "zero-copy: no short unsent queue");
        }
        (
            ZcStream {
                tcp,
                lane: lane.clone(),
                pipe: PipeState::Untried,
                pacer: pacing::Pacer::new(pace, paces),
            },
            lane,
        )
    }

    /// Counts `n` bytes sent from a file and, when the [`pacing::Pacer`] says so, caps the
    /// connection's rate.
    fn pace_if_receiver_bound(&mut self, n: usize) {
        if !self.pacer.due(n) {
            return;
        }
        match pacing::limits(&self.tcp) {
            Ok(now) => {
                if let Some(rate) = self.pacer.decide(now) {
                    // The short unsent queue it started with costs a receiver-bound flow a
                    // wakeup per drained half: give the default back.
                    if let Err(e) = pacing::set_unsent_queue(&self.tcp, 0) {
                        tracing::debug!(error = %e, "zero-copy: the unsent queue stays short");
                    }
                    match pacing::cap(&self.tcp, rate) {
                        Ok(()) => {
                            PACED.fetch_add(1, Ordering::Relaxed);
                        }
                        // Sending goes on unpaced: a ceiling, not a condition of correctness.
                        Err(e) => tracing::debug!(error = %e, "zero-copy: no pacing"),
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "zero-copy: no TCP_INFO, no pacing");
                self.pacer.give_up();
            }
        }
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
                        self.pace_if_receiver_bound(n);
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
    use crate::zerocopy::test_support::{pattern, rewrite, shm_file};
    use crate::zerocopy::{FileSpan, MIN_SEND, offer, scope, sent_bytes};
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (ZcStream, Lane, TcpStream) {
        paced_pair(0, None).await.unwrap()
    }

    /// A connected pair whose server side runs under the congestion control `cc` (when
    /// given) from before it is wrapped; `None` when this kernel lacks that control.
    async fn paced_pair(pace: u64, cc: Option<&str>) -> Option<(ZcStream, Lane, TcpStream)> {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        let s = s.unwrap().0;
        if let Some(cc) = cc
            && !set_congestion_control(&s, cc)
        {
            return None;
        }
        let (zc, lane) = ZcStream::new(s, pace);
        Some((zc, lane, c.unwrap()))
    }

    /// Offers `body` on `lane` as held by `sf` from byte 7 (after `shm_file`'s header).
    async fn offer_held(lane: &Lane, sf: &Arc<SendFile>, body: &Bytes) {
        let span = FileSpan {
            file: sf.clone(),
            offset: 7,
        };
        scope(lane.clone(), async { offer(body, &span) })
            .await
            .expect("offer");
    }

    /// Switches `tcp` to the congestion control `name`; false when this kernel lacks it.
    fn set_congestion_control(tcp: &TcpStream, name: &str) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open socket descriptor and a live buffer with its exact length.
        let r = unsafe {
            libc::setsockopt(
                tcp.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_CONGESTION,
                name.as_ptr().cast(),
                name.len() as libc::socklen_t,
            )
        };
        r == 0
    }

    /// A receiver that reads slowly holds its connection back by its window: once that
    /// shows in the bytes sent from a file, the connection is paced, when its congestion
    /// control paces it anyway (BBR); never without a rate, never under CUBIC. A BBR flow
    /// that may be capped starts with a short unsent queue and gets it back when capped.
    #[tokio::test]
    async fn a_connection_held_back_by_its_receiver_is_paced() {
        let data = pattern(10 * 1024 * 1024);
        assert!(data.len() as u64 >= 4 * pacing::CHECK_EVERY);
        let Some((_tmp, sf)) = shm_file(&data) else {
            return;
        };
        let short = pacing::SHORT_QUEUE;
        let cases = [
            // (pace, control, ceiling at the end, unsent queue at the start)
            (0u64, "bbr", u64::MAX, 0),
            (250_000_000, "bbr", 250_000_000, short),
            (250_000_000, "cubic", u64::MAX, 0),
        ];
        for (pace, cc, want, queue) in cases {
            let Some((mut zc, lane, mut client)) = paced_pair(pace, Some(cc)).await else {
                // Only a kernel built without the module: the other cases still run.
                eprintln!("no {cc} congestion control here: case skipped");
                continue;
            };
            assert_eq!(
                pacing::unsent_queue(&zc.tcp).unwrap(),
                queue,
                "pace {pace} under {cc}"
            );
            let reader = tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut total = 0;
                loop {
                    let n = client.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return total;
                    }
                    total += n;
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            });
            zc.write_all(b"copied head").await.unwrap();
            assert_eq!(pacing::current(&zc.tcp).unwrap(), u64::MAX);
            let body = Bytes::from(data.clone());
            offer_held(&lane, &sf, &body).await;
            zc.write_all(&body).await.unwrap();
            assert_eq!(
                pacing::current(&zc.tcp).unwrap(),
                want,
                "pace {pace} under {cc}"
            );
            // Capped or never short: the queue has its default length (again).
            assert_eq!(pacing::unsent_queue(&zc.tcp).unwrap(), 0, "{cc}");
            zc.shutdown().await.unwrap();
            drop(zc);
            assert_eq!(reader.await.unwrap(), 11 + data.len());
        }
    }

    #[tokio::test]
    async fn offered_bytes_go_out_from_the_file_with_their_head() {
        let data = pattern(300 * 1024);
        let Some((_tmp, sf)) = shm_file(&data) else {
            return;
        };
        let (mut zc, lane, mut client) = pair().await;
        let body = Bytes::from(data.clone());
        offer_held(&lane, &sf, &body).await;
        assert_eq!(lane.offered(), 1);
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
        assert_eq!(lane.offered(), 0, "the offer is used up");
        zc.shutdown().await.unwrap();
        drop(zc);
        let got = reader.await.unwrap();
        assert_eq!(&got[..head.len()], &head[..]);
        assert!(got[head.len()..] == data[..], "body bytes differ");
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
        offer_held(lane, sf, &body).await;
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
        assert_eq!(lane.offered(), 0);
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
        assert_eq!(lane.offered(), 0);
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
}
