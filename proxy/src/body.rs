//! Request bodies on their way upstream: small ones with a known length are buffered so they
//! can be sent again after a not-owner answer; others stream through a tee that keeps a copy
//! while it stays under the retry limit, so a short body of unknown length can be replayed
//! too, and a long one is never held in memory.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::HeaderMap;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::CONTENT_LENGTH;

use crate::pool::PooledBody;
use crate::slaves::InFlight;

/// Errors crossing the proxy's bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body sent upstream: buffered bytes, or the client's body through a tee. An enum rather
/// than a boxed trait object, so a request costs no allocation for its body.
pub enum UpstreamBody {
    /// The whole body, sent as one frame (`None` once sent).
    Full(Option<Bytes>),
    /// Streaming from the client.
    Tee(Tee),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            UpstreamBody::Tee(tee) => Pin::new(tee).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Full(bytes) => bytes.is_none(),
            UpstreamBody::Tee(tee) => tee.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            UpstreamBody::Tee(tee) => tee.size_hint(),
        }
    }
}

/// A client's request body, ready to be sent (and maybe re-sent).
pub enum Payload {
    /// Fully buffered; can be sent any number of times.
    Buffered(Bytes),
    /// Streaming from the client; sent once, with a copy kept while it is small.
    Streaming {
        /// The client's body, until it is sent.
        body: Option<Incoming>,
        /// The copy.
        copy: Arc<Mutex<Copy>>,
    },
}

/// What a tee has kept of a streaming body.
#[derive(Default)]
pub struct Copy {
    chunks: Vec<Bytes>,
    size: usize,
    overflowed: bool,
    complete: bool,
}

/// Why a client's request body could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The client's body could not be read.
    #[error("cannot read the request body: {0}")]
    Read(String),
    /// The request body exceeded the length it declared.
    #[error("request body larger than its Content-Length")]
    TooLarge,
}

impl Payload {
    /// Prepares a request body: buffers it when its declared `Content-Length` (in `headers`)
    /// is within `limit`.
    pub async fn prepare(
        headers: &HeaderMap,
        body: Incoming,
        limit: usize,
    ) -> Result<Payload, BodyError> {
        if body.is_end_stream() {
            return Ok(Payload::Buffered(Bytes::new()));
        }
        let content_length = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        match content_length {
            Some(len) if len <= limit as u64 => {
                // Boxed: the request path's future stays small for bodiless requests.
                let collect = Box::pin(Limited::new(body, limit).collect());
                let collected = collect.await.map_err(|e| {
                    if e.downcast_ref::<LengthLimitError>().is_some() {
                        BodyError::TooLarge
                    } else {
                        BodyError::Read(e.to_string())
                    }
                })?;
                Ok(Payload::Buffered(collected.to_bytes()))
            }
            _ => Ok(Payload::Streaming {
                body: Some(body),
                copy: Arc::default(),
            }),
        }
    }

    /// Whether the request has no body at all.
    pub fn is_empty(&self) -> bool {
        matches!(self, Payload::Buffered(bytes) if bytes.is_empty())
    }

    /// Whether [`Payload::next_attempt`] would give a body.
    pub fn can_send_again(&self) -> bool {
        match self {
            Payload::Buffered(_) | Payload::Streaming { body: Some(_), .. } => true,
            Payload::Streaming { body: None, copy } => {
                let c = copy.lock().expect("tee copy");
                c.complete && !c.overflowed
            }
        }
    }

    /// The body for the next attempt; `None` when it cannot be sent again (streamed and too
    /// large, or not yet fully read by the last attempt).
    pub fn next_attempt(&mut self, limit: usize) -> Option<UpstreamBody> {
        match self {
            Payload::Buffered(bytes) => Some(full(bytes.clone())),
            Payload::Streaming { body, copy } => {
                if let Some(inner) = body.take() {
                    let tee = Tee {
                        inner,
                        copy: Arc::clone(copy),
                        limit,
                    };
                    return Some(UpstreamBody::Tee(tee));
                }
                let c = copy.lock().expect("tee copy");
                (c.complete && !c.overflowed).then(|| {
                    let mut all = Vec::with_capacity(c.size);
                    for chunk in &c.chunks {
                        all.extend_from_slice(chunk);
                    }
                    full(Bytes::from(all))
                })
            }
        }
    }
}

/// A buffered upstream body; an empty one ends at once.
pub fn full(bytes: Bytes) -> UpstreamBody {
    UpstreamBody::Full((!bytes.is_empty()).then_some(bytes))
}

/// A client's body on its way upstream, with a copy kept while it is small.
pub struct Tee {
    inner: Incoming,
    copy: Arc<Mutex<Copy>>,
    limit: usize,
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let limit = self.limit;
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let mut copy = self.copy.lock().expect("tee copy");
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !copy.overflowed {
                        copy.size += data.len();
                        if copy.size > limit {
                            copy.overflowed = true;
                            copy.chunks.clear();
                        } else {
                            copy.chunks.push(data.clone());
                        }
                    }
                } else {
                    // Trailers cannot be replayed from a plain copy.
                    copy.overflowed = true;
                }
            }
            Poll::Ready(None) => copy.complete = true,
            _ => {}
        }
        if self.inner.is_end_stream() {
            copy.complete = true;
        }
        drop(copy);
        polled.map(|o| o.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body of a response to a client: the upstream's, streamed, or one of the proxy's own.
pub enum ClientBody {
    /// From an upstream over a pooled HTTP/1.1 connection, which goes back to its pool when
    /// the body has been read.
    Pooled(PooledBody),
    /// From an upstream over HTTP/2, or the answer to an upgrade request.
    Upstream(Incoming),
    /// From a slave over a pooled connection, counted in flight until the body is dropped.
    Slave(PooledBody, InFlight),
    /// The proxy's own answer (`None` once sent).
    Own(Option<Bytes>),
}

impl ClientBody {
    /// One of the proxy's own answers.
    pub fn own(bytes: Bytes) -> ClientBody {
        ClientBody::Own((!bytes.is_empty()).then_some(bytes))
    }

    /// An empty body.
    pub fn empty() -> ClientBody {
        ClientBody::Own(None)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ClientBody::Pooled(b) => Pin::new(b).poll_frame(cx),
            ClientBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ClientBody::Slave(b, _) => Pin::new(b).poll_frame(cx),
            ClientBody::Own(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Pooled(b) => b.is_end_stream(),
            ClientBody::Upstream(b) => b.is_end_stream(),
            ClientBody::Slave(b, _) => b.is_end_stream(),
            ClientBody::Own(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Pooled(b) => b.size_hint(),
            ClientBody::Upstream(b) => b.size_hint(),
            ClientBody::Slave(b, _) => b.size_hint(),
            ClientBody::Own(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
