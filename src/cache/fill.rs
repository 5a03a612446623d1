//! Single-flight fill: one origin read per object, fanned out to its sinks.
//!
//! The first miss on a key becomes the *leader*: it fetches from the origin and, if the
//! answer may be stored, hands the body to a fill task. Concurrent misses become *waiters*.
//! The fill task writes the body into the store chunk by chunk (the store is the primary
//! sink: readers read what it holds) and keeps only the chunk in progress in memory, so
//! memory stays bounded however many clients wait and however large the object is. Extra
//! sinks (the backup pipe) receive every completed chunk after the store has it.
//!
//! A fill that breaks mid-body ends every reader with an error and leaves nothing behind.
//! An answer that may not be stored releases the waiters to fetch on their own
//! (hit-for-miss), so they never queue behind an uncacheable object.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, watch};

use crate::body::{self, Body, BoxError};
use crate::cache::store::{NewObject, ObjectMeta, Store, StoreError};
use crate::origin::OriginError;
use crate::zerocopy::{self, FileSpan};

/// A boxed future, for the object-safe sink trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a fill's bytes go besides the store and its readers (the backup pipe plugs in here).
///
/// A sink sees chunks in order and then either `finish` (the object is complete and its
/// length checked) or `abort` (it is not; nothing may be committed). A sink that fails is
/// dropped from the fill; it never slows or fails the clients.
pub trait FillSink: Send {
    /// A completed chunk: `index` × chunk size is its offset.
    fn chunk(&mut self, index: u32, data: Bytes) -> BoxFuture<'_, Result<(), BoxError>>;
    /// The object is complete and committed to the store as `meta`.
    fn finish(&mut self, meta: Arc<ObjectMeta>) -> BoxFuture<'_, Result<(), BoxError>>;
    /// The fill failed: discard everything received.
    fn abort(&mut self, why: &str);
}

/// The progress of one fill, as its readers see it.
#[derive(Clone)]
pub enum FillState {
    /// The leader is waiting for the origin's response head.
    Pending,
    /// The body is arriving: `written` bytes are readable (chunks in `meta`, the rest in the tail).
    Streaming {
        /// The store writer's latest snapshot.
        meta: Arc<ObjectMeta>,
        /// Bytes received so far.
        written: u64,
    },
    /// The object is complete and committed.
    Done(Arc<ObjectMeta>),
    /// The answer may not be stored: fetch on your own (hit-for-miss).
    Uncacheable,
    /// The origin gave no answer.
    OriginFailed(OriginError),
    /// The body broke; every reader must fail.
    Aborted(Arc<str>),
    /// The leader went away (its client disconnected) before the origin's answer was
    /// resolved: nothing was fetched, so a waiter joins again (and may lead) instead of
    /// failing — one client leaving never fails the others.
    Abandoned,
}

/// The chunk being filled, not yet in the store.
struct Tail {
    index: u32,
    buf: BytesMut,
}

/// What a purge that arrived while an object was filling asks of it once it is committed
/// (the readers already on the fill still get their whole answer; later misses fetch anew).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFill {
    /// Commit it with this expiry override (ms since the epoch; `purge::PURGED` for a purge).
    ExpireAt(u64),
    /// Remove it once committed (a hard purge).
    Remove,
}

impl AfterFill {
    /// The stricter of two requests: removal over expiry, the earlier expiry over the later.
    fn merge(self, other: AfterFill) -> AfterFill {
        match (self, other) {
            (AfterFill::ExpireAt(a), AfterFill::ExpireAt(b)) => AfterFill::ExpireAt(a.min(b)),
            _ => AfterFill::Remove,
        }
    }
}

/// One in-flight fill.
pub struct Fill {
    /// The object's key.
    pub key: String,
    state: watch::Sender<FillState>,
    tail: Mutex<Tail>,
    /// Set by a purge that detached this fill while it ran.
    after: Mutex<Option<AfterFill>>,
}

impl Fill {
    /// A receiver of this fill's state changes.
    pub fn subscribe(&self) -> watch::Receiver<FillState> {
        self.state.subscribe()
    }

    /// Waits until the fill is past `Pending` (or `timeout` passes) and returns its state.
    pub async fn head(&self, timeout: Duration) -> Option<FillState> {
        let mut rx = self.subscribe();
        let wait = rx.wait_for(|s| !matches!(s, FillState::Pending));
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(s)) => Some(s.clone()),
            // The sender is gone only if the leader vanished: treat as aborted.
            Ok(Err(_)) => Some(FillState::Aborted("fill abandoned".into())),
            Err(_) => None,
        }
    }

    /// What a purge asked of this fill's object, if one arrived while it filled.
    pub fn after(&self) -> Option<AfterFill> {
        self.after.lock().ok().and_then(|a| *a)
    }

    /// Copies `[start, end)` out of the tail if the tail holds chunk `index`.
    fn read_tail(&self, index: u32, start: usize, end: usize) -> Option<Bytes> {
        let t = self.tail.lock().ok()?;
        (t.index == index && t.buf.len() >= end).then(|| Bytes::copy_from_slice(&t.buf[start..end]))
    }
}

/// The table of in-flight fills, plus the short memory of uncacheable keys.
#[derive(Default)]
pub struct Fills {
    inflight: Mutex<HashMap<String, Arc<Fill>>>,
    /// Keys recently found uncacheable: misses on them go straight to the origin.
    hit_for_miss: Mutex<HashMap<String, Instant>>,
}

/// What a miss becomes.
pub enum Join {
    /// You fetch; resolve the guard with the origin's answer.
    Leader(FillGuard),
    /// Someone already fetches; read from this fill.
    Waiter(Arc<Fill>),
    /// This key is known to be uncacheable: fetch on your own.
    Bypass,
}

/// How long an uncacheable answer keeps its key out of collapsing.
const HIT_FOR_MISS: Duration = Duration::from_secs(10);

impl Fills {
    /// Joins the fill of `key`, becoming its leader if there is none.
    pub fn join(self: &Arc<Self>, key: &str) -> Join {
        if let Ok(mut h) = self.hit_for_miss.lock()
            && let Some(until) = h.get(key)
        {
            if Instant::now() < *until {
                return Join::Bypass;
            }
            h.remove(key);
        }
        let Ok(mut map) = self.inflight.lock() else {
            return Join::Bypass;
        };
        if let Some(f) = map.get(key) {
            return Join::Waiter(f.clone());
        }
        let (tx, _) = watch::channel(FillState::Pending);
        let fill = Arc::new(Fill {
            key: key.to_string(),
            state: tx,
            tail: Mutex::new(Tail {
                index: 0,
                buf: BytesMut::new(),
            }),
            after: Mutex::new(None),
        });
        map.insert(key.to_string(), fill.clone());
        Join::Leader(FillGuard {
            fills: self.clone(),
            fill: Some(fill),
        })
    }

    /// Whether a fill of `key` is in flight.
    pub fn is_filling(&self, key: &str) -> bool {
        self.inflight
            .lock()
            .map(|m| m.contains_key(key))
            .unwrap_or(false)
    }

    /// Number of fills in flight (for monitoring and tests).
    pub fn len(&self) -> usize {
        self.inflight.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no fill is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A purge of the keys `matches` accepts: their in-flight fills are detached (misses from
    /// now on start a fresh fill) and told to apply `after` to the object they commit, so
    /// nothing fetched before the purge is served after it. Returns how many were detached.
    pub fn purge(&self, matches: impl Fn(&str) -> bool, after: AfterFill) -> u64 {
        let Ok(mut map) = self.inflight.lock() else {
            return 0;
        };
        let keys: Vec<String> = map.keys().filter(|k| matches(k)).cloned().collect();
        for k in &keys {
            if let Some(f) = map.remove(k)
                && let Ok(mut a) = f.after.lock()
            {
                *a = Some(a.map_or(after, |prev| prev.merge(after)));
            }
        }
        keys.len() as u64
    }

    /// Removes `fill` from the table, unless a purge already replaced it there.
    fn finish(&self, fill: &Arc<Fill>) {
        if let Ok(mut m) = self.inflight.lock()
            && m.get(&fill.key).is_some_and(|f| Arc::ptr_eq(f, fill))
        {
            m.remove(&fill.key);
        }
    }

    /// Keeps `key` out of collapsing for a while: its misses go straight to the origin.
    fn mark_uncacheable(&self, key: &str) {
        if let Ok(mut h) = self.hit_for_miss.lock() {
            h.retain(|_, until| Instant::now() < *until);
            h.insert(key.to_string(), Instant::now() + HIT_FOR_MISS);
        }
    }
}

/// The store would not take the object (larger than it may hold, or closing): the body is
/// handed back untouched so the caller can pass the answer through uncached.
pub struct NotStored {
    /// Why the store refused it.
    pub error: StoreError,
    /// The origin's body, not read.
    pub body: Body,
}

impl fmt::Display for NotStored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl fmt::Debug for NotStored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotStored")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// The leader's handle: resolve it exactly once. Dropping it unresolved abandons the fill:
/// its waiters join again rather than fail.
pub struct FillGuard {
    fills: Arc<Fills>,
    fill: Option<Arc<Fill>>,
}

impl FillGuard {
    /// The origin gave no answer: waiters see the error (they may serve stale or link on it).
    pub fn fail(mut self, err: OriginError) {
        if let Some(f) = self.fill.take() {
            self.fills.finish(&f);
            f.state.send_replace(FillState::OriginFailed(err));
        }
    }

    /// The stored object was revalidated in place (304): waiters read `meta` from the store.
    pub fn done(mut self, meta: Arc<ObjectMeta>) {
        if let Some(f) = self.fill.take() {
            self.fills.finish(&f);
            f.state.send_replace(FillState::Done(meta));
        }
    }

    /// This request's answer may not be stored, for a reason of the request's own
    /// (`Authorization`, request `no-store`): waiters fetch on their own, but later misses
    /// still collapse, since other clients' answers may well be storable.
    pub fn release(mut self) {
        if let Some(f) = self.fill.take() {
            self.fills.finish(&f);
            f.state.send_replace(FillState::Uncacheable);
        }
    }

    /// The answer may not be stored: waiters fetch on their own, and so do later misses for a while.
    pub fn uncacheable(mut self) {
        if let Some(f) = self.fill.take() {
            self.fills.mark_uncacheable(&f.key);
            self.fills.finish(&f);
            f.state.send_replace(FillState::Uncacheable);
        }
    }

    /// The answer is stored: spawns the fill task that writes `body` into `store` (and
    /// `sinks`), and returns the fill to read from with the object's first snapshot. The task
    /// runs on even if every client goes away, so one disconnect never aborts the fill for
    /// the others.
    ///
    /// The snapshot is handed back rather than read from the fill's state because the task
    /// may already have failed (a dead disk refuses the first chunk at once): the leader then
    /// still answers with the origin's head and a body that fails, as it would a moment later,
    /// instead of a different answer that depends on timing.
    ///
    /// When the store refuses the object (e.g. larger than the disk quota, or than the memory
    /// tier may hold on a memory-only store) the body comes back in [`NotStored`] to be passed
    /// through, and the key is treated as uncacheable (waiters and later misses fetch on
    /// their own) — the answer is still served, just not cached.
    pub async fn stream(
        mut self,
        store: Store,
        object: NewObject,
        body: Body,
        sinks: Vec<Box<dyn FillSink>>,
    ) -> Result<(Arc<Fill>, Arc<ObjectMeta>), NotStored> {
        let Some(fill) = self.fill.clone() else {
            let e = StoreError::Io(Arc::new(std::io::Error::other("fill already resolved")));
            return Err(NotStored { error: e, body });
        };
        let expected = object.total_len;
        // The guard keeps the fill until the writer exists, so a leader dropped meanwhile
        // still releases its waiters.
        let writer = match store.begin(object).await {
            Ok(w) => w,
            Err(e) => {
                for mut s in sinks {
                    s.abort("the cache store refused the object");
                }
                self.uncacheable();
                return Err(NotStored { error: e, body });
            }
        };
        self.fill = None;
        let first = writer.meta();
        fill.state.send_replace(FillState::Streaming {
            meta: first.clone(),
            written: 0,
        });
        let task_fill = fill.clone();
        let fills = self.fills.clone();
        tokio::spawn(async move {
            let result = run_fill(&task_fill, writer, body, expected, sinks).await;
            match result {
                Ok(meta) => {
                    fills.finish(&task_fill);
                    apply_after(&store, &task_fill, &meta).await;
                    task_fill.state.send_replace(FillState::Done(meta));
                }
                Err(Failed { why, refused }) => {
                    if refused {
                        // Too large for the store after all (its length was not known up
                        // front): the next misses pass through instead of failing again.
                        fills.mark_uncacheable(&task_fill.key);
                    }
                    fills.finish(&task_fill);
                    tracing::warn!(key = %task_fill.key, %why, "fill aborted");
                    task_fill.state.send_replace(FillState::Aborted(why.into()));
                }
            }
        });
        Ok((fill, first))
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        if let Some(f) = self.fill.take() {
            self.fills.finish(&f);
            f.state.send_replace(FillState::Abandoned);
        }
    }
}

/// Applies what a purge asked of a fill's object after its commit: run_fill commits with
/// the expiry already set when the purge came first, but a purge may land during the
/// commit itself (removal always waits for it).
async fn apply_after(store: &Store, fill: &Fill, meta: &ObjectMeta) {
    match fill.after() {
        None => {}
        Some(AfterFill::ExpireAt(at)) if meta.expires_override_ms == Some(at) => {}
        Some(AfterFill::ExpireAt(at)) => {
            let _ = store
                .update_meta(&meta.key, |m| m.expires_override_ms = Some(at))
                .await;
        }
        Some(AfterFill::Remove) => {
            let _ = store.remove(&meta.key).await;
        }
    }
}

/// Why a fill task failed.
struct Failed {
    why: String,
    /// The store refused a chunk as too large for it.
    refused: bool,
}

impl From<String> for Failed {
    fn from(why: String) -> Failed {
        Failed {
            why,
            refused: false,
        }
    }
}

impl From<&str> for Failed {
    fn from(why: &str) -> Failed {
        why.to_string().into()
    }
}

/// The fill task: origin body → tail → store chunks → sinks; commit when the length checks out.
async fn run_fill(
    fill: &Fill,
    mut writer: crate::cache::store::ObjectWriter,
    mut body: Body,
    expected: Option<u64>,
    mut sinks: Vec<Box<dyn FillSink>>,
) -> Result<Arc<ObjectMeta>, Failed> {
    let chunk_size = writer.meta().chunk_size as usize;
    let mut written: u64 = 0;
    let mut meta = writer.meta();
    let abort_all = |sinks: &mut Vec<Box<dyn FillSink>>, why: &str| {
        for s in sinks.iter_mut() {
            s.abort(why);
        }
    };
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Err(e)) => {
                let why = format!("origin body failed after {written} bytes: {e}");
                abort_all(&mut sinks, &why);
                writer.abort().await;
                return Err(why.into());
            }
            Some(Ok(f)) => f,
        };
        let Ok(mut data) = frame.into_data() else {
            continue; // trailers are not stored
        };
        if let Some(exp) = expected
            && written + data.len() as u64 > exp
        {
            let why = format!("origin sent more than its Content-Length {exp}");
            abort_all(&mut sinks, &why);
            writer.abort().await;
            return Err(why.into());
        }
        while !data.is_empty() {
            let (index, full) = {
                let Ok(mut t) = fill.tail.lock() else {
                    return Err("tail lock poisoned".into());
                };
                let room = chunk_size - t.buf.len();
                let take = room.min(data.len());
                t.buf.extend_from_slice(&data.split_to(take));
                written += take as u64;
                (
                    t.index,
                    (t.buf.len() == chunk_size).then(|| t.buf.clone().freeze()),
                )
            };
            match full {
                Some(chunk) => {
                    meta =
                        flush_chunk(fill, &mut writer, &mut sinks, index, chunk, written).await?;
                }
                None => {
                    fill.state.send_replace(FillState::Streaming {
                        meta: meta.clone(),
                        written,
                    });
                }
            }
        }
    }
    if let Some(exp) = expected
        && written != exp
    {
        let why = format!("origin closed after {written} of {exp} bytes");
        abort_all(&mut sinks, &why);
        writer.abort().await;
        return Err(why.into());
    }
    let last = {
        let Ok(t) = fill.tail.lock() else {
            return Err("tail lock poisoned".into());
        };
        (!t.buf.is_empty()).then(|| (t.index, t.buf.clone().freeze()))
    };
    if let Some((index, chunk)) = last {
        flush_chunk(fill, &mut writer, &mut sinks, index, chunk, written).await?;
    }
    if let Some(AfterFill::ExpireAt(at)) = fill.after() {
        writer.set_expires_override(at);
    }
    let meta = match writer.commit(written).await {
        Ok(m) => m,
        Err(e) => {
            let why = format!("commit failed: {e}");
            abort_all(&mut sinks, &why);
            return Err(why.into());
        }
    };
    for mut s in sinks {
        if let Err(e) = s.finish(meta.clone()).await {
            tracing::warn!(key = %fill.key, error = %e, "fill sink failed to finish");
        }
    }
    Ok(meta)
}

/// Writes a completed chunk to the store, publishes it, then moves the tail on and feeds the sinks.
async fn flush_chunk(
    fill: &Fill,
    writer: &mut crate::cache::store::ObjectWriter,
    sinks: &mut Vec<Box<dyn FillSink>>,
    index: u32,
    chunk: Bytes,
    written: u64,
) -> Result<Arc<ObjectMeta>, Failed> {
    let meta = match writer.write_chunk(index, chunk.clone()).await {
        Ok(m) => m,
        Err(e) => {
            let why = format!("store write failed: {e}");
            for s in sinks.iter_mut() {
                s.abort(&why);
            }
            return Err(Failed {
                why,
                refused: matches!(e, StoreError::TooLarge),
            });
        }
    };
    // Publish the snapshot that holds the chunk before the tail lets go of it, so a reader
    // always finds the bytes in one place or the other.
    fill.state.send_replace(FillState::Streaming {
        meta: meta.clone(),
        written,
    });
    if let Ok(mut t) = fill.tail.lock()
        && t.index == index
    {
        t.index += 1;
        t.buf.clear();
    }
    let mut keep = Vec::with_capacity(sinks.len());
    for mut s in sinks.drain(..) {
        match s.chunk(index, chunk.clone()).await {
            Ok(()) => keep.push(s),
            Err(e) => {
                tracing::warn!(key = %fill.key, error = %e, "fill sink dropped");
                s.abort("sink failed");
            }
        }
    }
    *sinks = keep;
    Ok(meta)
}

/// Where a reader's bytes come from.
#[derive(Clone)]
pub enum Source {
    /// A committed object.
    Stored(Arc<ObjectMeta>),
    /// An object still filling.
    Filling(Arc<Fill>),
}

/// `end` for [`stream_range`] while the body's length is unknown (an origin answer that is
/// chunked or ends where its connection closes): the whole body, however long it turns out.
pub const TO_THE_END: u64 = u64::MAX - 1;

/// Streams bytes `[start, end]` (inclusive) of `source` as a body. Chunks come from the
/// store, the part not yet written from the fill's tail; the channel is bounded, so a slow
/// client holds at most a couple of chunks. Any failure ends the body with an error.
pub fn stream_range(store: Store, source: Source, start: u64, end: u64) -> Body {
    let fill = match source {
        Source::Stored(meta) => {
            return StoredBody {
                _hold: store.pin(&meta),
                store,
                meta,
                pos: start,
                end,
                pending: None,
            }
            .boxed_unsync();
        }
        Source::Filling(fill) => fill,
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, BoxError>>(2);
    tokio::spawn(async move {
        if let Err(e) = pump(&store, fill, start, end, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    body::from_channel(rx)
}

/// Upper bound of one message on a reader's channel. Messages are slices of a chunk (they
/// keep the whole chunk alive), so with the channel's two slots, the one hyper is writing
/// and the reader reading a chunk only when the channel has room, a slow client pins at most
/// two chunks however far the fill runs ahead of it.
const SLICE: u64 = 64 * 1024;

/// Streams `[start, end]` of an object still filling into `tx`: from the store where its
/// chunks already are, from the fill's tail for the rest, following the fill's state.
async fn pump(
    store: &Store,
    fill: Arc<Fill>,
    start: u64,
    end: u64,
    tx: &mpsc::Sender<Result<Bytes, BoxError>>,
) -> Result<(), BoxError> {
    let mut pos = start;
    // Keeps the committed version's files while this reader streams it (see `Store::pin`).
    let mut hold = None;
    let mut rx = fill.subscribe();
    loop {
        let state = rx.borrow_and_update().clone();
        let (meta, available, done) = match state {
            FillState::Pending => (None, 0, false),
            FillState::Streaming { meta, written } => (Some(meta), written, false),
            FillState::Done(meta) => {
                let len = meta.total_len.unwrap_or(0);
                (Some(meta), len, true)
            }
            FillState::Aborted(why) => return Err(format!("fill aborted: {why}").into()),
            FillState::OriginFailed(e) => return Err(Box::new(e)),
            FillState::Uncacheable => return Err("fill became uncacheable".into()),
            FillState::Abandoned => return Err("fill abandoned by its leader".into()),
        };
        if let Some(meta) = meta {
            // Held from the first snapshot on (the version the fill commits), so an
            // eviction right after the commit cannot take chunks from this reader.
            if hold.is_none() {
                hold = store.pin(&meta);
            }
            while pos <= end && pos < available {
                let cs = meta.chunk_size as u64;
                let index = (pos / cs) as u32;
                if meta.has_chunk(index) {
                    let sent = send_from_store(store, &meta, pos, end, tx).await?;
                    if sent == 0 {
                        return Ok(());
                    }
                    pos += sent;
                    continue;
                }
                let chunk_start = index as u64 * cs;
                let upto = available
                    .min(end + 1)
                    .min(chunk_start + cs)
                    .min(pos + SLICE);
                // Copy out of the tail only once the client can take it.
                let Ok(permit) = tx.reserve().await else {
                    return Ok(()); // client went away
                };
                match fill.read_tail(
                    index,
                    (pos - chunk_start) as usize,
                    (upto - chunk_start) as usize,
                ) {
                    Some(bytes) => {
                        pos += bytes.len() as u64;
                        permit.send(Ok(bytes));
                    }
                    // The chunk moved from the tail into the store: take a fresh snapshot.
                    None => break,
                }
            }
        }
        if pos > end || (done && pos >= available) {
            if pos <= end && end != TO_THE_END {
                return Err("object shorter than the requested range".into());
            }
            return Ok(());
        }
        if !matches!(*rx.borrow(), FillState::Pending) && rx.has_changed().unwrap_or(false) {
            continue;
        }
        if rx.changed().await.is_err() {
            // Sender dropped after a final state: loop once more to read it.
            let last = rx.borrow().clone();
            if !matches!(last, FillState::Done(_)) {
                return Err("fill ended without completing".into());
            }
        }
    }
}

/// Sends the part of the chunk holding `pos` (up to `end`) from the store; returns bytes sent
/// (0 = the client went away).
async fn send_from_store(
    store: &Store,
    meta: &ObjectMeta,
    pos: u64,
    end: u64,
    tx: &mpsc::Sender<Result<Bytes, BoxError>>,
) -> Result<u64, BoxError> {
    let cs = meta.chunk_size as u64;
    let index = (pos / cs) as u32;
    // Read the chunk only once the client can take some of it: a slow client does not pin
    // a chunk it is not ready for.
    let Ok(permit) = tx.reserve().await else {
        return Ok(0);
    };
    let chunk = store
        .read_chunk(meta, index)
        .await
        .map_err(|e| Box::new(e) as BoxError)?;
    // A partly held chunk's bytes begin where its span does.
    let base = meta.held_span(index).map_or(index as u64 * cs, |r| r.start);
    let Some(from) = pos.checked_sub(base).map(|f| f as usize) else {
        return Err("range starts before the stored span".into());
    };
    let to = ((end + 1 - base) as usize).min(chunk.len());
    if from >= to {
        return Err("stored chunk shorter than its object".into());
    }
    let mut permit = Some(permit);
    let mut sent = 0u64;
    let mut at = from;
    while at < to {
        let next = (at + SLICE as usize).min(to);
        let slice = Ok(chunk.slice(at..next));
        match permit.take() {
            Some(p) => p.send(slice),
            None => {
                if tx.send(slice).await.is_err() {
                    return Ok(0);
                }
            }
        }
        sent += (next - at) as u64;
        at = next;
    }
    Ok(sent)
}

/// A committed object's bytes `[pos, end]`, read chunk by chunk as hyper asks for them: no
/// task and no channel on the hit path, one chunk in flight per client (back-pressure is
/// hyper not polling while the socket is full). On a connection that can send from files,
/// each frame is offered with the verified file holding the same bytes (`zerocopy`).
struct StoredBody {
    /// Keeps the version's files while this body streams, even if it is evicted meanwhile.
    _hold: Option<crate::cache::store::ReaderHold>,
    store: Store,
    meta: Arc<ObjectMeta>,
    pos: u64,
    end: u64,
    pending: Option<ChunkRead>,
}

/// A chunk being read for a [`StoredBody`], with the file it may be sent from.
type ChunkRead = BoxFuture<'static, Result<(Bytes, Option<FileSpan>), StoreError>>;

impl hyper::body::Body for StoredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.pos > this.end {
            return Poll::Ready(None);
        }
        let cs = u64::from(this.meta.chunk_size.max(1));
        let index = (this.pos / cs) as u32;
        let fut = this.pending.get_or_insert_with(|| {
            let (store, meta) = (this.store.clone(), this.meta.clone());
            // Polled by the connection's own task (h1): its lane is in scope here.
            let send = zerocopy::active();
            Box::pin(async move {
                if send {
                    store.read_chunk_for_send(&meta, index).await
                } else {
                    store.read_chunk(&meta, index).await.map(|b| (b, None))
                }
            })
        });
        let (chunk, file) = match fut.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => {
                this.pending = None;
                match r {
                    Ok(c) => c,
                    Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
                }
            }
        };
        // A partly held chunk's bytes begin where its span does.
        let base = this
            .meta
            .held_span(index)
            .map_or(u64::from(index) * cs, |r| r.start);
        let from = this.pos.saturating_sub(base) as usize;
        let to = ((this.end + 1 - base) as usize).min(chunk.len());
        if this.pos < base || from >= to {
            this.pos = this.end + 1;
            return Poll::Ready(Some(Err("stored chunk shorter than its object".into())));
        }
        this.pos = base + to as u64;
        let frame = chunk.slice(from..to);
        if let Some(f) = file {
            let span = FileSpan {
                offset: f.offset + from as u64,
                file: f.file,
            };
            if let Err(e) = zerocopy::offer(&frame, &span) {
                this.pos = this.end + 1;
                return Poll::Ready(Some(Err(e)));
            }
        }
        Poll::Ready(Some(Ok(hyper::body::Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.pos > self.end
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.end.saturating_add(1).saturating_sub(self.pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(fills: &Arc<Fills>, key: &str) -> FillGuard {
        match fills.join(key) {
            Join::Leader(g) => g,
            _ => panic!("expected to lead {key}"),
        }
    }

    #[test]
    fn a_purge_detaches_the_fill_and_the_old_fill_never_removes_the_new_one() {
        let fills = Arc::new(Fills::default());
        let old = leader(&fills, "a.com/x");
        let old_fill = old.fill.clone().expect("fill");
        let _other = leader(&fills, "a.com/y");
        let n = fills.purge(|k| k == "a.com/x", AfterFill::ExpireAt(5));
        assert_eq!(n, 1);
        assert!(
            !fills.is_filling("a.com/x"),
            "detached: the next miss leads anew"
        );
        assert!(fills.is_filling("a.com/y"), "other keys untouched");
        // A later purge reaches the fill that replaced it, not the detached one.
        let new = leader(&fills, "a.com/x");
        assert_eq!(fills.purge(|k| k == "a.com/x", AfterFill::Remove), 1);
        assert_eq!(
            new.fill.as_ref().and_then(|f| f.after()),
            Some(AfterFill::Remove)
        );
        assert_eq!(old_fill.after(), Some(AfterFill::ExpireAt(5)));
        // The old leader resolving does not take the newest fill off the table.
        let newest = leader(&fills, "a.com/x");
        old.release();
        new.release();
        assert!(fills.is_filling("a.com/x"));
        newest.release();
        assert!(!fills.is_filling("a.com/x"));
    }

    #[test]
    fn after_fill_merges_to_the_stricter() {
        use AfterFill::*;
        assert_eq!(ExpireAt(9).merge(ExpireAt(3)), ExpireAt(3));
        assert_eq!(ExpireAt(3).merge(Remove), Remove);
        assert_eq!(Remove.merge(ExpireAt(1)), Remove);
    }
}
