//! Client connection timeouts without a timer per request.
//!
//! hyper's own header-read timeout arms a timer each time a keep-alive connection starts
//! waiting for its next request: an allocation, a timer-wheel insert and removal, and often a
//! wake-up of the event loop through its eventfd, for every request. Here each connection
//! has one [`ConnClock`] instead, kept up to date by plain stores:
//! - its I/O ([`Watched`]) notes when the first byte of a request head arrives;
//! - the service notes when the head is complete ([`ConnClock::request_started`]);
//! - the end of the response body ([`Tracked`]) notes when the connection goes idle.
//!
//! [`watch`] runs beside the connection with one sleep, which wakes at most once per timeout
//! period, reads the clock, and says when to close the connection:
//! - a request head has been arriving for longer than the header timeout (slowloris);
//! - no request has been in flight for longer than the keep-alive timeout.
//!
//! HTTP/2 connections (recognised by their preface) are left alone, as hyper's header
//! timeout left them: gRPC clients keep idle channels open on purpose.
//!
//! Bytes that arrive while a request is in flight start no head: a pipelined head that came in
//! part during the previous response runs on the keep-alive timeout, not the header timeout.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The HTTP/2 connection preface a prior-knowledge client starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The client connection timeouts the watchdog enforces.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// From the first byte of a request head to its end.
    pub header: Duration,
    /// With no request in flight and no request head arriving.
    pub keepalive: Duration,
}

/// Why the watchdog closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// A request head took longer than the header timeout.
    Header,
    /// The connection was idle for longer than the keep-alive timeout.
    Idle,
}

impl Cut {
    /// The label in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Cut::Header => "header_timeout",
            Cut::Idle => "keepalive_timeout",
        }
    }
}

/// What one client connection is doing, as far as its timeouts care. Times are nanoseconds
/// since the connection began, plus one, so that 0 means "not set". Every field is touched by
/// the connection's own thread only; atomics make it shareable, not synchronised.
#[derive(Debug)]
pub struct ConnClock {
    began: Instant,
    /// Requests whose response body has not ended yet (HTTP/1.1: 0 or 1).
    in_flight: AtomicU32,
    /// When the first byte of the request head now arriving came in.
    head_since: AtomicU64,
    /// When the connection last became idle (it begins idle).
    idle_since: AtomicU64,
    /// An HTTP/2 connection: no timeouts.
    exempt: AtomicBool,
}

impl Default for ConnClock {
    fn default() -> Self {
        ConnClock {
            began: Instant::now(),
            in_flight: AtomicU32::new(0),
            head_since: AtomicU64::new(0),
            idle_since: AtomicU64::new(1),
            exempt: AtomicBool::new(false),
        }
    }
}

impl ConnClock {
    fn stamp(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.began).as_nanos()).unwrap_or(u64::MAX - 1)
            + 1
    }

    fn instant(&self, stamp: u64) -> Instant {
        self.began + Duration::from_nanos(stamp - 1)
    }

    /// Bytes came in from the client. Between requests, the first of them starts a head.
    pub(crate) fn bytes_in(&self) {
        if self.in_flight.load(Relaxed) == 0 && self.head_since.load(Relaxed) == 0 {
            self.head_since.store(self.stamp(Instant::now()), Relaxed);
        }
    }

    /// A request head is complete and the request is being served; the returned guard ends
    /// the request when dropped (keep it with the response body).
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        self.head_since.store(0, Relaxed);
        self.idle_since.store(0, Relaxed);
        InFlight(Arc::clone(self))
    }

    fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.idle_since.store(self.stamp(Instant::now()), Relaxed);
        }
    }

    /// What the watchdog should do at `now`.
    fn check(&self, now: Instant, t: Timeouts) -> Check {
        if self.exempt.load(Relaxed) {
            return Check::Never;
        }
        if self.in_flight.load(Relaxed) > 0 {
            return Check::Busy;
        }
        let (since, limit, cut) = match self.head_since.load(Relaxed) {
            0 => (self.idle_since.load(Relaxed), t.keepalive, Cut::Idle),
            head => (head, t.header, Cut::Header),
        };
        if since == 0 {
            return Check::Busy;
        }
        let due = self.instant(since) + limit;
        if due <= now {
            Check::Cut(cut)
        } else {
            Check::At(due)
        }
    }
}

enum Check {
    Cut(Cut),
    At(Instant),
    Busy,
    Never,
}

/// One request being served; dropping it (with the response body, or with the handler when
/// the connection goes away) ends the request on the connection's clock.
#[derive(Debug)]
pub struct InFlight(Arc<ConnClock>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// Resolves when the connection whose clock this is should be closed, and why. It sleeps
/// until the earliest moment that could be due, so a connection costs one timer wake-up per
/// timeout period, not one timer per request.
pub async fn watch(clock: &ConnClock, t: Timeouts) -> Cut {
    let recheck = t.header.min(t.keepalive);
    let sleep = tokio::time::sleep(recheck);
    tokio::pin!(sleep);
    loop {
        sleep.as_mut().await;
        let now = Instant::now();
        match clock.check(now, t) {
            Check::Cut(cut) => return cut,
            // Anything that starts later is due later than a recheck from now.
            Check::At(due) => sleep.as_mut().reset(due.min(now + recheck)),
            Check::Busy => sleep.as_mut().reset(now + recheck),
            Check::Never => std::future::pending::<()>().await,
        }
    }
}

/// A client connection's I/O, telling its clock when bytes come in. Bytes already read from
/// the connection (by the byte path, [`crate::h1`]) can be put back in front.
#[derive(Debug)]
pub struct Watched<I> {
    io: I,
    clock: Arc<ConnClock>,
    /// How much of the HTTP/2 preface the connection has started with; `None` once decided.
    preface: Option<usize>,
    /// Bytes read before, returned first; `at` of them so far.
    read: Vec<u8>,
    at: usize,
}

impl<I> Watched<I> {
    /// Wraps `io`, whose clock is `clock`.
    pub fn new(io: I, clock: Arc<ConnClock>) -> Self {
        Watched::after(Vec::new(), io, clock)
    }

    /// The connection's clock.
    pub fn clock(&self) -> &Arc<ConnClock> {
        &self.clock
    }

    /// Wraps `io`, whose reads first return `read`, the bytes already read from it.
    pub fn after(read: Vec<u8>, io: I, clock: Arc<ConnClock>) -> Self {
        Watched {
            io,
            clock,
            preface: Some(0),
            read,
            at: 0,
        }
    }

    fn note(&mut self, new: &[u8]) {
        if let Some(matched) = self.preface {
            let n = new.len().min(H2_PREFACE.len() - matched);
            self.preface = if new[..n] != H2_PREFACE[matched..matched + n] {
                None
            } else if matched + n == H2_PREFACE.len() {
                self.clock.exempt.store(true, Relaxed);
                None
            } else {
                Some(matched + n)
            };
        }
        self.clock.bytes_in();
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        if this.at < this.read.len() {
            let n = (this.read.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.read[this.at..this.at + n]);
            this.at += n;
            if this.at == this.read.len() {
                (this.read, this.at) = (Vec::new(), 0);
            }
        } else {
            ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        }
        if buf.filled().len() > before {
            this.note(&buf.filled()[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A response body that ends its request on the connection's clock when it is dropped
/// (hyper drops it once it has taken the last frame, or when the connection goes away).
#[derive(Debug)]
pub struct Tracked<B> {
    body: B,
    _request: InFlight,
}

impl<B> Tracked<B> {
    /// `body`, ending `request` when dropped.
    pub fn new(body: B, request: InFlight) -> Self {
        Tracked {
            body,
            _request: request,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header: Duration::from_secs(10),
        keepalive: Duration::from_secs(75),
    };

    fn watched() -> Watched<tokio::io::Empty> {
        Watched::new(tokio::io::empty(), Arc::new(ConnClock::default()))
    }

    fn due(clock: &ConnClock, after: Duration) -> Option<Cut> {
        match clock.check(clock.began + after, T) {
            Check::Cut(cut) => Some(cut),
            _ => None,
        }
    }

    #[tokio::test]
    async fn bytes_read_before_come_first_and_count_as_the_connection_s() {
        use tokio::io::AsyncReadExt;
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        drop(a);
        let clock = Arc::new(ConnClock::default());
        let mut io = Watched::after(b"PRI * HTTP/2.0".to_vec(), b, Arc::clone(&clock));
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, H2_PREFACE);
        assert!(clock.exempt.load(Relaxed), "the preface spans both parts");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_is_idle_until_its_first_byte() {
        let w = watched();
        assert_eq!(due(&w.clock, Duration::from_secs(74)), None);
        assert_eq!(due(&w.clock, Duration::from_secs(75)), Some(Cut::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_started_must_end_within_the_header_timeout() {
        let mut w = watched();
        tokio::time::advance(Duration::from_secs(5)).await;
        w.note(b"GET / HT");
        assert_eq!(due(&w.clock, Duration::from_secs(14)), None);
        w.note(b"TP/1.1\r\n");
        assert_eq!(
            due(&w.clock, Duration::from_secs(15)),
            Some(Cut::Header),
            "more bytes of the same head do not restart its clock"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_is_never_cut_and_its_end_starts_the_idle_clock() {
        let mut w = watched();
        w.note(b"GET / HTTP/1.1\r\n\r\n");
        let request = w.clock.request_started();
        w.note(b"body bytes do not start a head");
        assert_eq!(due(&w.clock, Duration::from_secs(1000)), None);
        tokio::time::advance(Duration::from_secs(100)).await;
        drop(request);
        assert_eq!(due(&w.clock, Duration::from_secs(174)), None);
        assert_eq!(due(&w.clock, Duration::from_secs(175)), Some(Cut::Idle));
        w.note(b"G");
        assert_eq!(
            due(&w.clock, Duration::from_secs(110)),
            Some(Cut::Header),
            "the next head runs on the header timeout"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_is_exempt() {
        let mut w = watched();
        w.note(&H2_PREFACE[..5]);
        assert!(!w.clock.exempt.load(Relaxed));
        w.note(&H2_PREFACE[5..]);
        assert!(w.clock.exempt.load(Relaxed));
        assert!(matches!(
            w.clock.check(w.clock.began + Duration::from_secs(1000), T),
            Check::Never
        ));

        let mut h1 = watched();
        h1.note(b"PRI");
        h1.note(b"NT / HTTP/1.1");
        assert!(
            !h1.clock.exempt.load(Relaxed),
            "an HTTP/1 head is not a preface"
        );
        assert_eq!(h1.preface, None);
    }

    #[tokio::test(start_paused = true)]
    async fn watch_cuts_at_the_deadline_not_a_recheck_later() {
        let mut w = watched();
        let clock = Arc::clone(&w.clock);
        let start = Instant::now();
        let watchdog = tokio::spawn(async move {
            let cut = watch(&clock, T).await;
            (cut, start.elapsed())
        });
        tokio::time::advance(Duration::from_secs(3)).await;
        w.note(b"GET /slow");
        let (cut, after) = watchdog.await.unwrap();
        assert_eq!(cut, Cut::Header);
        assert!(
            after >= Duration::from_secs(13) && after < Duration::from_millis(13_100),
            "{after:?}"
        );
    }
}
