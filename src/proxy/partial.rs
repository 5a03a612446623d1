//! Partial content (RFC 9111 §3.3–3.4): an origin's 206 is stored as the chunks — and chunk
//! spans — it covers, and a partly stored object is completed by asking the origin for only
//! the bytes it lacks. Parts are combined only when their validators match
//! (`policy::combinable`), so an object never mixes bytes of two versions.
//!
//! The decisions are pure (`need`); the I/O is `store_part`, which the proxy runs both for a
//! miss that forwarded the client's `Range` (teeing the 206 to the client) and for a
//! completing request (storing first, answering from the store after).

use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, header};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use crate::body::{Body, BoxError};
use crate::cache::policy;
use crate::cache::range::{self, ContentRange, RangeRequest};
use crate::cache::store::{NewObject, ObjectMeta, ObjectWriter, Store, StoreError};

/// What a stored partial object lacks to answer one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Everything the answer needs is stored (or the answer has no body: HEAD, 416).
    Held,
    /// Bytes `first..=last` must be fetched first (the smallest range covering every gap).
    Fetch {
        /// First missing byte.
        first: u64,
        /// Last missing byte (inclusive).
        last: u64,
    },
}

/// What `meta` (a partial object) lacks to answer `method` with request headers `req`, read
/// the way `respond::build` will answer it: a failed `If-Range` or no `Range` means the
/// whole body.
pub fn need(meta: &ObjectMeta, stored: &HeaderMap, method: &Method, req: &HeaderMap) -> Need {
    let Some(total) = meta.total_len.filter(|&t| t > 0) else {
        return Need::Held;
    };
    if *method == Method::HEAD {
        return Need::Held;
    }
    let ranged = *method == Method::GET
        && req.contains_key(header::RANGE)
        && (!req.contains_key(header::IF_RANGE) || policy::if_range_matches(req, stored));
    let wanted = if ranged {
        let text = req.get(header::RANGE).and_then(|v| v.to_str().ok());
        match range::parse(text, total) {
            RangeRequest::Unsatisfiable => return Need::Held,
            RangeRequest::Ranges(rs) => rs,
            RangeRequest::Full => vec![(0, total - 1)],
        }
    } else {
        vec![(0, total - 1)]
    };
    let mut gap: Option<(u64, u64)> = None;
    for (s, e) in wanted {
        if let Some((f, l)) = meta.missing_within(s, e) {
            gap = Some(gap.map_or((f, l), |(gf, gl)| (gf.min(f), gl.max(l))));
        }
    }
    match gap {
        Some((first, last)) => Need::Fetch { first, last },
        None => Need::Held,
    }
}

/// The `Range` value asking for `first..=last` of `total` bytes (open-ended when it runs to
/// the end, as a resumed download does).
pub fn range_value(first: u64, last: u64, total: u64) -> String {
    if last + 1 >= total {
        format!("bytes={first}-")
    } else {
        format!("bytes={first}-{last}")
    }
}

/// Stores a 206 body holding bytes `cr` of the representation as a new version of
/// `object.key` (status 200, `object.total_len` = the complete length), carrying over what
/// `old` holds when it is the same representation. When `client` is given, every frame is
/// also sent to it as it arrives; a client that goes away does not stop the storing.
/// Returns the committed meta, or None when nothing was stored (a broken or short body, a
/// store that refused it).
pub async fn store_part(
    store: Store,
    object: NewObject,
    cr: ContentRange,
    mut body: Body,
    old: Option<Arc<ObjectMeta>>,
    mut client: Option<mpsc::Sender<Result<Bytes, BoxError>>>,
) -> Option<Arc<ObjectMeta>> {
    let new_headers = crate::proxy::respond::header_map(&object.headers);
    let key = object.key.clone();
    let mut writer = match store.begin(object).await {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::debug!(%key, error = %e, "partial answer not stored");
            None
        }
    };
    let cs = writer
        .as_ref()
        .map_or(u64::MAX, |w| u64::from(w.meta().chunk_size.max(1)));
    let mut buf = BytesMut::new();
    let mut buf_start = cr.first;
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
            Err(e) => {
                tracing::debug!(%key, error = %e, "partial answer broke off; not stored");
                if let Some(tx) = client.take() {
                    let _ = tx.send(Err(e)).await;
                }
                return None;
            }
        };
        received += data.len() as u64;
        if let Some(tx) = &client
            && tx.send(Ok(data.clone())).await.is_err()
        {
            client = None;
        }
        if received > cr.len() {
            // More bytes than the Content-Range names: not a part we can place.
            writer = None;
        }
        let Some(w) = writer.as_mut() else { continue };
        buf.extend_from_slice(&data);
        // Write every piece that reaches the end of its chunk.
        loop {
            let boundary = (buf_start / cs + 1) * cs;
            let fill_to = boundary.min(cr.last + 1);
            if buf_start + (buf.len() as u64) < fill_to {
                break;
            }
            let piece = buf.split_to((fill_to - buf_start) as usize).freeze();
            if write_span(w, cs, buf_start, piece).await.is_err() {
                writer = None;
                break;
            }
            buf_start = fill_to;
            if buf.is_empty() {
                break;
            }
        }
    }
    drop(client);
    let mut w = writer?;
    if received != cr.len() || !buf.is_empty() {
        tracing::debug!(%key, received, expected = cr.len(), "partial answer short; not stored");
        w.abort().await;
        return None;
    }
    if let Some(old) = old.filter(|o| {
        o.total_len == Some(cr.complete)
            && policy::combinable(&crate::proxy::respond::facts(o).headers, &new_headers)
    }) && let Err(e) = carry_over(&store, &mut w, &old).await
    {
        // What was carried so far is whole chunks or spans of the same representation.
        tracing::debug!(%key, error = %e, "could not combine with the stored part");
    }
    match w.commit_partial().await {
        Ok(meta) => Some(meta),
        Err(e) => {
            tracing::debug!(%key, error = %e, "partial answer not committed");
            None
        }
    }
}

/// Writes `data` (body bytes from `start`, all inside one chunk) into the writer.
async fn write_span(
    w: &mut ObjectWriter,
    cs: u64,
    start: u64,
    data: Bytes,
) -> Result<(), StoreError> {
    let index = u32::try_from(start / cs).map_err(|_| StoreError::Invalid("offset"))?;
    let offset = (start - u64::from(index) * cs) as u32;
    w.write_part(index, offset, data).await.map(|_| ())
}

/// Copies into the writer what `old` holds and the new part does not: whole chunks as they
/// are, and a chunk both hold a span of as the union of the two spans when they touch.
async fn carry_over(
    store: &Store,
    w: &mut ObjectWriter,
    old: &ObjectMeta,
) -> Result<(), StoreError> {
    let cs = u64::from(old.chunk_size.max(1));
    for i in 0..old.chunk_count().unwrap_or(0) {
        let Some(o) = old.held_span(i) else { continue };
        let chunk_start = u64::from(i) * cs;
        let current = w.meta();
        let merged = match current.held_span(i) {
            None => None,
            Some(n) if n.start <= o.start && o.end <= n.end => continue,
            Some(n) if o.start <= n.end && n.start <= o.end => Some(n),
            // Two spans of one chunk with a hole between: keep the new one.
            Some(_) => continue,
        };
        let old_bytes = store.read_chunk(old, i).await?;
        let (span, data) = match merged {
            None => (o, old_bytes),
            Some(n) => {
                let new_bytes = store.read_chunk(&current, i).await?;
                let union: Range<u64> = o.start.min(n.start)..o.end.max(n.end);
                let mut buf = vec![0u8; (union.end - union.start) as usize];
                let at = |r: &Range<u64>| (r.start - union.start) as usize;
                buf[at(&o)..at(&o) + old_bytes.len()].copy_from_slice(&old_bytes);
                buf[at(&n)..at(&n) + new_bytes.len()].copy_from_slice(&new_bytes);
                (union, Bytes::from(buf))
            }
        };
        w.write_part(i, (span.start - chunk_start) as u32, data)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::store::Headers;
    use http::HeaderValue;

    /// A memory store with 8-byte chunks, so small bodies cross chunk boundaries.
    async fn mem_store() -> Store {
        Store::open(crate::cache::store::StoreConfig {
            memory_bytes: 1 << 20,
            memory_max_object: 1 << 20,
            chunk_size: 8,
            ..Default::default()
        })
        .await
        .expect("store")
    }

    fn cr(first: u64, last: u64, complete: u64) -> ContentRange {
        ContentRange {
            first,
            last,
            complete,
        }
    }

    fn req(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(n.clone(), HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[tokio::test]
    async fn rfc9111_3_4_what_a_partial_object_lacks() {
        let store = mem_store().await;
        let m = store_part(
            store,
            object("\"v\"", 20),
            cr(4, 9, 20),
            body_of(&[b"456789"]),
            None,
            None,
        )
        .await
        .expect("stored");
        assert_eq!(m.byte_ranges_held(), vec![4..10]);
        let none = HeaderMap::new();
        let get = Method::GET;
        let cases: &[(&[(header::HeaderName, &str)], Need)] = &[
            (&[], Need::Fetch { first: 0, last: 19 }),
            (&[(header::RANGE, "bytes=4-9")], Need::Held),
            (&[(header::RANGE, "bytes=6-8")], Need::Held),
            (
                &[(header::RANGE, "bytes=6-12")],
                Need::Fetch {
                    first: 10,
                    last: 12,
                },
            ),
            (
                &[(header::RANGE, "bytes=0-1,5-6")],
                Need::Fetch { first: 0, last: 1 },
            ),
            (
                &[(header::RANGE, "bytes=-3")],
                Need::Fetch {
                    first: 17,
                    last: 19,
                },
            ),
            (&[(header::RANGE, "bytes=30-")], Need::Held),
            (
                &[
                    (header::RANGE, "bytes=4-9"),
                    (header::IF_RANGE, "\"other\""),
                ],
                Need::Fetch { first: 0, last: 19 },
            ),
        ];
        for (h, want) in cases {
            assert_eq!(need(&m, &none, &get, &req(h)), *want, "{h:?}");
        }
        assert_eq!(
            need(&m, &none, &Method::HEAD, &HeaderMap::new()),
            Need::Held
        );
    }

    #[test]
    fn completing_ranges_are_open_ended_at_the_end() {
        assert_eq!(range_value(5, 9, 10), "bytes=5-");
        assert_eq!(range_value(0, 3, 10), "bytes=0-3");
    }

    fn body_of(parts: &[&'static [u8]]) -> Body {
        let (tx, rx) = mpsc::channel(8);
        for p in parts {
            tx.try_send(Ok(Bytes::from_static(p))).expect("send");
        }
        crate::body::from_channel(rx)
    }

    fn object(etag: &str, total: u64) -> NewObject {
        NewObject {
            key: "k".into(),
            status: 200,
            headers: Headers::from_pairs([("etag", etag)]),
            total_len: Some(total),
            ..Default::default()
        }
    }

    async fn bytes_of(store: &Store, m: &ObjectMeta) -> Vec<Option<u8>> {
        let total = m.total_len.expect("len");
        let mut out = vec![None; total as usize];
        for i in 0..m.chunk_count().expect("count") {
            if let Some(span) = m.held_span(i) {
                let b = store.read_chunk(m, i).await.expect("read");
                for (k, x) in b.iter().enumerate() {
                    out[span.start as usize + k] = Some(*x);
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn parts_of_one_version_combine_into_a_whole_object() {
        let store = mem_store().await;
        let cr = |f, l| cr(f, l, 20);
        // Bytes 3..=12 (spans in chunks 0 and 1), then 13..=19, then 0..=2.
        let a = store_part(
            store.clone(),
            object("\"v\"", 20),
            cr(3, 12),
            body_of(&[b"3456", b"789abc"]),
            None,
            None,
        )
        .await
        .expect("first part");
        assert_eq!(a.byte_ranges_held(), vec![3..13]);
        let b = store_part(
            store.clone(),
            object("\"v\"", 20),
            cr(13, 19),
            body_of(&[b"defghij"]),
            Some(a),
            None,
        )
        .await
        .expect("second part");
        assert_eq!(b.byte_ranges_held(), vec![3..20]);
        assert!(!b.complete);
        let c = store_part(
            store.clone(),
            object("\"v\"", 20),
            cr(0, 2),
            body_of(&[b"012"]),
            Some(b),
            None,
        )
        .await
        .expect("third part");
        assert!(c.complete, "every chunk present");
        let got: Vec<u8> = bytes_of(&store, &c).await.into_iter().flatten().collect();
        assert_eq!(got, b"0123456789abcdefghij");
    }

    #[tokio::test]
    async fn parts_of_another_version_replace_instead_of_mixing() {
        let store = mem_store().await;
        let cr = |f, l| cr(f, l, 20);
        let a = store_part(
            store.clone(),
            object("\"v1\"", 20),
            cr(0, 9),
            body_of(&[b"0123456789"]),
            None,
            None,
        )
        .await
        .expect("first part");
        let b = store_part(
            store.clone(),
            object("\"v2\"", 20),
            cr(10, 19),
            body_of(&[b"ABCDEFGHIJ"]),
            Some(a),
            None,
        )
        .await
        .expect("second part");
        assert_eq!(
            b.byte_ranges_held(),
            vec![10..20],
            "v1's bytes are not kept"
        );
    }

    #[tokio::test]
    async fn short_or_long_or_broken_parts_are_never_stored_but_reach_the_client() {
        let store = mem_store().await;
        let cr = cr(4, 9, 10);
        let (tx, mut rx) = mpsc::channel(8);
        let short = store_part(
            store.clone(),
            object("\"v\"", 10),
            cr,
            body_of(&[b"01234"]),
            None,
            Some(tx),
        )
        .await;
        assert!(short.is_none());
        assert_eq!(
            rx.recv().await.map(|r| r.ok()),
            Some(Some(Bytes::from_static(b"01234")))
        );
        let long = store_part(
            store.clone(),
            object("\"v\"", 10),
            cr,
            body_of(&[b"0123456"]),
            None,
            None,
        )
        .await;
        assert!(long.is_none());
        let (tx, rx) = mpsc::channel(1);
        tx.try_send(Err::<Bytes, BoxError>("origin reset".into()))
            .expect("send");
        let broken = store_part(
            store.clone(),
            object("\"v\"", 10),
            cr,
            crate::body::from_channel(rx),
            None,
            None,
        )
        .await;
        assert!(broken.is_none());
        assert!(store.lookup("k").await.is_none(), "nothing visible");
    }
}
