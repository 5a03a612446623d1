//! A connection's lane: the cached bytes its bodies offer for sending from their files, and
//! the one-frame body that offers them when hyper takes it.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};

use super::MIN_SEND;
use super::file::{FileSpan, SendFile};
use crate::body::{Body, BoxError};

/// Offers a connection keeps at most (hyper holds one or two large frames at a time; the
/// bound only matters for bodies dropped before they were written).
const MAX_OFFERS: usize = 16;

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
pub(super) enum Plan {
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

    pub(super) fn plan(&self, bufs: &[IoSlice<'_>]) -> Plan {
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
    pub(super) fn sent(&self, from: usize, n: usize) {
        let mut offers = self.lock();
        offers.retain(|o| !(o.start() <= from && from + n == o.end()));
        self.0.count.store(offers.len(), Ordering::Release);
    }

    /// Offers registered now.
    #[cfg(test)]
    pub(super) fn offered(&self) -> usize {
        self.0.count.load(Ordering::Acquire)
    }

    /// Forgets every offer of `file` (it changed: its bytes go the copying way now).
    pub(super) fn withdraw(&self, file: &Arc<SendFile>) {
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
pub(super) const CHANGED: &str = "cache file changed after it was verified";

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zerocopy::test_support::{pattern, rewrite, shm_file};

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
        assert_eq!(lane.offered(), 0);
    }
}
