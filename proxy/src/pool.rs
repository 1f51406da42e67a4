//! Keep-alive HTTP/1.1 connections to one upstream, held as hyper `SendRequest` handles.
//!
//! The request path takes an idle connection (or opens one), sends on it, and gets it back
//! when the response body has been read to its end, so a connection carries one request at a
//! time and is reused at once. No lock is held across an await, no task is spawned per
//! request, and nothing is parsed or formatted: the upstream's address and `Host` value were
//! made when the routing table was built.
//!
//! A connection is not reused when its response body was not read to the end (the client went
//! away), when the upstream closed it, or when it sat idle longer than the idle timeout
//! ([`ConnPool::sweep`] closes those).

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::UpstreamBody;

/// Most idle connections kept per upstream and worker; more are closed when they come back.
const MAX_IDLE: usize = 1024;

/// Idle lists per pool. Worker `i` uses list `i % SHARDS`, so workers (up to this many) never
/// share one; threads that are not workers use list 0.
const SHARDS: usize = 16;

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as routing worker `index`, so it keeps its own idle connections
/// (whose connection tasks run on its runtime).
pub fn set_worker(index: usize) {
    SHARD.with(|s| s.set(index % SHARDS));
}

fn shard() -> usize {
    SHARD.with(Cell::get)
}

/// How the pool connects.
#[derive(Clone, Copy, Debug)]
pub struct PoolSettings {
    /// Limit on TCP connect.
    pub connect_timeout: Duration,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
}

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened; nothing was sent.
    #[error("connect failed: {0}")]
    Connect(io::Error),
    /// The connection failed while the request was sent or answered.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// A reused connection closed as the request went out on it, before any answer: the
    /// upstream closed it just then (a server's keep-alive timeout can end so). The upstream
    /// may or may not have seen the request.
    #[error("the upstream closed a kept-alive connection as the request went out: {0}")]
    Stale(hyper::Error),
    /// hyper-util's client (HTTP/2) failed.
    #[error(transparent)]
    Client(#[from] hyper_util::client::legacy::Error),
}

impl SendError {
    /// True when the request never reached the upstream.
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Connect(_) => true,
            SendError::Http(_) | SendError::Stale(_) => false,
            SendError::Client(e) => e.is_connect(),
        }
    }

    /// True when a kept-alive connection was closed under the request; an idempotent
    /// request may go out again on a new connection.
    pub fn is_stale(&self) -> bool {
        matches!(self, SendError::Stale(_))
    }
}

/// Whether `e` says the connection closed under a request, rather than that the upstream
/// answered something wrong.
fn closed_under_us(e: &hyper::Error) -> bool {
    e.is_incomplete_message()
        || std::error::Error::source(e)
            .and_then(|cause| cause.downcast_ref::<io::Error>())
            .is_some_and(|io| {
                matches!(
                    io.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionAborted
                )
            })
}

/// Whether an idle connection is still open: nothing (no close, no stray bytes) has come in
/// on it. Costs no system call unless the event loop saw it become readable.
fn is_open(stream: &TcpStream) -> bool {
    matches!(stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// The idle connections to one upstream.
#[derive(Debug)]
pub struct ConnPool {
    /// host:port to connect to.
    addr: String,
    settings: PoolSettings,
    idle: [Mutex<Vec<Idle>>; SHARDS],
    /// Idle connections of the byte path ([`crate::h1`]), which speaks HTTP/1.1 on them itself.
    raw: [Mutex<Vec<RawIdle>>; SHARDS],
}

#[derive(Debug)]
struct RawIdle {
    stream: TcpStream,
    since: Instant,
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    since: Instant,
}

impl ConnPool {
    /// An empty pool for `addr` (host:port).
    pub fn new(addr: String, settings: PoolSettings) -> Arc<ConnPool> {
        Arc::new(ConnPool {
            addr,
            settings,
            idle: std::array::from_fn(|_| Mutex::new(Vec::new())),
            raw: std::array::from_fn(|_| Mutex::new(Vec::new())),
        })
    }

    /// Sends `req` on an idle connection, or on a new one. A request that a reused connection
    /// could not take (the upstream had just closed it) is sent again on a new connection,
    /// since none of it was written.
    ///
    /// A kept-alive connection can also close just as a request goes out on it, too late for
    /// the request to come back unsent; that is [`SendError::Stale`].
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        if let Some(mut sender) = self.checkout() {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(resp, sender)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None if closed_under_us(e.error()) => {
                        return Err(SendError::Stale(e.into_error()));
                    }
                    None => return Err(e.into_error().into()),
                },
            }
        }
        self.send_new(req).await
    }

    /// Sends `req` on a new connection.
    pub async fn send_new(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        // Boxed: connecting is rare, and its future would make every request's larger.
        let mut sender = Box::pin(self.connect()).await?;
        let resp = sender.send_request(req).await?;
        Ok(self.wrap(resp, sender))
    }

    /// Closes idle connections older than the idle timeout; returns how many are left.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut left = 0;
        for shard in &self.idle {
            let mut idle = shard.lock().expect("pool lock");
            idle.retain(|c| !c.sender.is_closed() && now - c.since < self.settings.idle_timeout);
            left += idle.len();
        }
        for shard in &self.raw {
            let mut idle = shard.lock().expect("pool lock");
            idle.retain(|c| now - c.since < self.settings.idle_timeout && is_open(&c.stream));
            left += idle.len();
        }
        left
    }

    /// The current worker's most recently returned idle TCP connection for the byte path
    /// that is still open, with nothing unread on it.
    pub fn checkout_raw(&self) -> Option<TcpStream> {
        let now = Instant::now();
        let mut idle = self.raw[shard()].lock().expect("pool lock");
        while let Some(c) = idle.pop() {
            if now - c.since < self.settings.idle_timeout && is_open(&c.stream) {
                return Some(c.stream);
            }
        }
        None
    }

    /// Gives back a byte-path connection whose last response has ended.
    pub fn checkin_raw(&self, stream: TcpStream) {
        let mut idle = self.raw[shard()].lock().expect("pool lock");
        if idle.len() < MAX_IDLE {
            idle.push(RawIdle {
                stream,
                since: Instant::now(),
            });
        }
    }

    /// The current worker's most recently returned idle connection that can take a request.
    fn checkout(&self) -> Option<http1::SendRequest<UpstreamBody>> {
        let now = Instant::now();
        let mut idle = self.idle[shard()].lock().expect("pool lock");
        while let Some(c) = idle.pop() {
            if c.sender.is_ready() && now - c.since < self.settings.idle_timeout {
                return Some(c.sender);
            }
        }
        None
    }

    fn checkin(&self, sender: http1::SendRequest<UpstreamBody>) {
        let mut idle = self.idle[shard()].lock().expect("pool lock");
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// A new TCP connection to the upstream, within the connect timeout (the byte path
    /// speaks HTTP/1.1 on it itself).
    pub async fn connect_raw(&self) -> io::Result<TcpStream> {
        let stream = tokio::time::timeout(
            self.settings.connect_timeout,
            TcpStream::connect(self.addr.as_str()),
        )
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {:?}", self.settings.connect_timeout),
            )
        })??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    async fn connect(&self) -> Result<http1::SendRequest<UpstreamBody>, SendError> {
        let stream = self.connect_raw().await.map_err(SendError::Connect)?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        let addr = self.addr.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(upstream = %addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn wrap(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        sender: http1::SendRequest<UpstreamBody>,
    ) -> Response<PooledBody> {
        resp.map(|body| PooledBody {
            inner: body,
            home: Some((sender, Arc::clone(self))),
            done: false,
        })
    }
}

/// An upstream response body that gives its connection back to the pool once read to the end.
#[derive(Debug)]
pub struct PooledBody {
    inner: Incoming,
    home: Option<(http1::SendRequest<UpstreamBody>, Arc<ConnPool>)>,
    done: bool,
}

impl PooledBody {
    /// Returns the connection to its pool: at once when it can take the next request, or
    /// from a small task once it can (the connection is still finishing the last response).
    fn give_back(&mut self, cx: Option<&mut Context<'_>>) {
        let Some((mut sender, pool)) = self.home.take() else {
            return;
        };
        if sender.is_ready() {
            pool.checkin(sender);
            return;
        }
        if let Some(cx) = cx {
            match sender.poll_ready(cx) {
                Poll::Ready(Ok(())) => return pool.checkin(sender),
                Poll::Ready(Err(_)) => return,
                Poll::Pending => {}
            }
        }
        if sender.is_closed() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.checkin(sender);
                }
            });
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            // Trailers are the last frame: hyper's server writes them and polls no further,
            // so the body's end is never seen as `None`.
            None => {
                this.done = true;
                this.give_back(Some(cx));
            }
            Some(Ok(f)) if f.is_trailers() => {
                this.done = true;
                this.give_back(Some(cx));
            }
            Some(Err(_)) => this.home = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body read to its end (or one that was empty from the start) leaves a connection
        // ready for the next request; anything else closes it with the sender.
        if self.done || self.inner.is_end_stream() {
            self.give_back(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::body::full;

    const SETTINGS: PoolSettings = PoolSettings {
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(60),
    };

    /// A raw HTTP/1.1 upstream answering every request with `body`; it counts the
    /// connections it accepted, and closes each one after `per_conn` answers (0: never).
    async fn upstream(body: &'static str, per_conn: usize) -> (String, Arc<AtomicUsize>) {
        upstream_closing_after(body, per_conn, Duration::ZERO).await
    }

    /// As [`upstream`], closing a connection `linger` after its last answer.
    async fn upstream_closing_after(
        body: &'static str,
        per_conn: usize,
        linger: Duration,
    ) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut answered = 0;
                    let mut pending = Vec::new();
                    loop {
                        let n = match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..end + 4);
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if s.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                            answered += 1;
                            if per_conn > 0 && answered == per_conn {
                                tokio::time::sleep(linger).await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn get() -> Request<UpstreamBody> {
        Request::builder()
            .uri("/dtables/x")
            .header("host", "upstream")
            .body(full(Bytes::new()))
            .unwrap()
    }

    async fn read(resp: Response<PooledBody>) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        let (addr, accepted) = upstream("hello", 0).await;
        let pool = ConnPool::new(addr, SETTINGS);
        for _ in 0..20 {
            let resp = pool.send(get()).await.unwrap();
            assert_eq!(read(resp).await, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.sweep(), 1, "the connection is idle in the pool");
    }

    #[tokio::test]
    async fn concurrent_requests_open_connections_and_keep_them() {
        let (addr, accepted) = upstream("x", 0).await;
        let pool = ConnPool::new(addr, SETTINGS);
        let round = || async {
            let sends = (0..8).map(|_| {
                let pool = Arc::clone(&pool);
                async move { read(pool.send(get()).await.unwrap()).await }
            });
            futures::future::join_all(sends).await
        };
        assert!(round().await.iter().all(|b| b == "x"));
        let after_first = accepted.load(Ordering::SeqCst);
        assert!((1..=8).contains(&after_first), "{after_first}");
        assert!(round().await.iter().all(|b| b == "x"));
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            after_first,
            "the second round reuses the first round's connections"
        );
    }

    #[tokio::test]
    async fn a_connection_closed_under_a_request_is_stale_and_a_new_one_serves_it() {
        // The upstream closes every connection right after its one answer, without saying
        // so: a request that takes that connection from the pool either finds it closed
        // (and goes out on a new one) or goes out as it closes, which is a stale error,
        // never a connect error; a new connection then serves it.
        let (addr, accepted) = upstream("once", 1).await;
        let pool = ConnPool::new(addr, SETTINGS);
        let mut stale = 0;
        for _ in 0..10 {
            let resp = match pool.send(get()).await {
                Ok(resp) => resp,
                Err(e) => {
                    assert!(e.is_stale() && !e.is_connect(), "{e}");
                    stale += 1;
                    pool.send_new(get()).await.unwrap()
                }
            };
            assert_eq!(read(resp).await, "once");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 10, "{stale} stale");
    }

    #[tokio::test]
    async fn a_request_on_a_connection_closed_while_idle_goes_out_on_a_new_one() {
        // The upstream closes each connection 100 ms after its answer, while it is idle in the
        // pool: the next request must not be lost on it (nor wait forever).
        let (addr, accepted) = upstream_closing_after("late", 1, Duration::from_millis(100)).await;
        let pool = ConnPool::new(addr, SETTINGS);
        for _ in 0..3 {
            let resp = pool.send(get()).await.unwrap();
            assert_eq!(read(resp).await, "late");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(pool.sweep(), 0, "the sweep notices the last close");
    }

    #[tokio::test]
    async fn a_body_left_unread_closes_its_connection() {
        let (addr, accepted) = upstream("unread", 0).await;
        let pool = ConnPool::new(addr, SETTINGS);
        drop(pool.send(get()).await.unwrap());
        assert_eq!(pool.sweep(), 0, "the connection did not go back");
        let resp = pool.send(get()).await.unwrap();
        assert_eq!(read(resp).await, "unread");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let (addr, accepted) = upstream("idle", 0).await;
        let pool = ConnPool::new(
            addr,
            PoolSettings {
                idle_timeout: Duration::from_millis(200),
                ..SETTINGS
            },
        );
        read(pool.send(get()).await.unwrap()).await;
        assert_eq!(pool.sweep(), 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(pool.sweep(), 0);
        read(pool.send(get()).await.unwrap()).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let pool = ConnPool::new(addr, SETTINGS);
        let err = pool.send(get()).await.unwrap_err();
        assert!(err.is_connect(), "{err}");
    }
}
