//! The one response/request body type the server passes around, and the ways to make one.
//!
//! Hits are usually a single `Bytes`; fills and pass-through are streams. A stream that ends
//! with an error makes hyper abort the connection, so a client can never mistake a truncated
//! object for a complete one.

use bytes::Bytes;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use tokio::sync::mpsc;

/// Any error a body stream can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response inside Strata.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body of one buffer.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body fed by a channel: each `Ok` is sent as data, an `Err` aborts the response.
pub fn from_channel(rx: mpsc::Receiver<Result<Bytes, BoxError>>) -> Body {
    ChannelBody { rx }.boxed_unsync()
}

/// Wraps hyper's incoming body (client request or origin response) into our body type.
pub fn incoming(body: hyper::body::Incoming) -> Body {
    body.map_err(|e| Box::new(e) as BoxError).boxed_unsync()
}

/// A body whose frames come from a bounded channel, so the producer feels back-pressure
/// from a slow client instead of buffering the object.
struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}
