//! The byte path: plain HTTP/1.1 requests forwarded without building messages.
//!
//! hyper parses both messages of every exchange into header maps, encodes them again, and
//! passes each request between the client connection's task and the upstream connection's
//! (see bench/README.md for what that costs). On this path, the routing listener's common
//! request instead goes through the client connection's own task as bytes:
//! - the request head is parsed in place with httparse (the parser hyper uses) and written
//!   straight into the bytes sent upstream: hop-by-hop headers out; `Host`,
//!   `X-Forwarded-For`/`-Proto`/`-Host` and `X-Dtable-Epoch` in, as [`crate::forward`] sets
//!   them;
//! - the upstream connection is a plain TCP stream from the upstream's pool
//!   ([`crate::pool::ConnPool::checkout_raw`]), used by this task and given back when the
//!   response has ended;
//! - the response head is parsed and rewritten the same way, and the body passes through as
//!   it comes, in its own framing (a chunked body stays chunked; `Chunked` finds its end).
//!
//! The rest goes to hyper ([`crate::server`]) for the rest of the connection, with the bytes
//! read so far (`watchdog::Watched::after`): a request that is not HTTP/1.1 in origin form; an upgrade;
//! `Expect`; `Transfer-Encoding`; a body larger than [`BODY_LIMIT`] or the retry limit; a
//! `Connection` header naming other headers; a base that is not a UUID (hyper's path answers
//! 400); a head that does not parse or is too large (hyper answers 400 or 431); HTTP/2's
//! preface.
//!
//! A request that takes this path gets the answer hyper's path would give: holding while its
//! bucket has no owner, the not-owner retry, the resend of an idempotent request whose
//! kept-alive connection closed, the one retry after a failed connect, and the JSON errors
//! (`forward::Forwarder::resolve`/`pick` choose the target for both). One difference: while a
//! request is held or waits for its answer, this path does not read the client, so a client
//! that leaves is noticed before the request is sent (again), not at once.

use std::io;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use dtable_core::Bucket;
use hyper::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::forward::{ForwardError, Forwarder, Peer, Target};
use crate::locate;
use crate::table::Upstream;
use crate::watchdog::ConnClock;

/// Most headers in a message (hyper's default).
const MAX_HEADERS: usize = 100;
/// Largest request body this path takes; it is read whole before the request goes out, so
/// that a not-owner answer can be retried. Larger bodies stream through hyper's path.
pub const BODY_LIMIT: usize = 64 * 1024;
/// Largest upstream response head.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Room kept free in a buffer before each read.
const READ_ROOM: usize = 4 * 1024;
/// Size of the buffer response bodies pass through.
const BODY_CHUNK: usize = 16 * 1024;
/// Buffers larger than this are dropped between requests.
const KEEP_BETWEEN_REQUESTS: usize = 2 * BODY_CHUNK;

/// How a client connection's time on this path ended.
pub enum Ended {
    /// The connection is done: closed by either side, or drained.
    Closed,
    /// The rest of the connection goes to hyper, starting with these bytes already read.
    Fallback(Vec<u8>),
}

/// Serves plain HTTP/1.1 requests on `client` until the connection ends or a request needs
/// hyper's path. `max_head` is the listener's request head limit; `draining` ends the
/// connection at its next idle moment.
pub async fn serve(
    client: &mut TcpStream,
    fwd: &Forwarder,
    peer: &Peer,
    clock: &Arc<ConnClock>,
    max_head: usize,
    draining: &CancellationToken,
) -> Ended {
    let mut conn = Conn {
        client,
        fwd,
        inbuf: Vec::new(),
        mid: Vec::new(),
        out: Vec::new(),
        resp: Vec::new(),
    };
    let body_limit = BODY_LIMIT.min(fwd.settings.retry_body_limit);
    loop {
        let head = loop {
            if !conn.inbuf.is_empty() {
                match parse_request(&conn.inbuf, &mut conn.mid, peer, body_limit) {
                    Parse::Ready(head) if head.len <= max_head => break head,
                    Parse::Partial if conn.inbuf.len() < max_head => {}
                    // Hyper's path answers 431 to a head over the limit, 400 to a bad one.
                    Parse::Ready(_) | Parse::Partial => {
                        return conn.hand_over(Handoff::HeadTooLarge);
                    }
                    Parse::Other(why) => return conn.hand_over(why),
                }
            }
            reserve(&mut conn.inbuf, READ_ROOM);
            let read = tokio::select! {
                biased;
                read = conn.client.read_buf(&mut conn.inbuf) => read,
                () = draining.cancelled(), if conn.inbuf.is_empty() => return Ended::Closed,
            };
            match read {
                Ok(0) | Err(_) => return Ended::Closed,
                Ok(_) => clock.bytes_in(),
            }
        };
        let started = Instant::now();
        // `None` while the bucket is moving or unowned: the request is held below.
        let target = fwd.pick(&fwd.table_rx.borrow(), head.bucket, None);
        let in_flight = clock.request_started();
        let whole = head.len + head.body_len;
        while conn.inbuf.len() < whole {
            let missing = whole - conn.inbuf.len();
            reserve(&mut conn.inbuf, missing);
            match conn.client.read_buf(&mut conn.inbuf).await {
                Ok(0) | Err(_) => return Ended::Closed,
                Ok(_) => {}
            }
        }
        let close = head.close || draining.is_cancelled();
        let flow = conn.forward(&head, target, started, close).await;
        drop(in_flight);
        if conn.inbuf.len() == whole {
            conn.inbuf.clear();
        } else {
            conn.inbuf.drain(..whole);
        }
        conn.trim();
        if matches!(flow, Flow::Close) || draining.is_cancelled() {
            let _ = conn.client.shutdown().await;
            return Ended::Closed;
        }
    }
}

/// Whether the client connection stays open after an answer.
enum Flow {
    KeepAlive,
    Close,
}

/// Why one attempt got no answer to the client.
enum Failed {
    /// No connection to the upstream; nothing was sent.
    Connect(io::Error),
    /// A kept-alive connection closed under the request before any answer.
    Stale(String),
    /// The upstream failed before the client got anything.
    Upstream(String),
    /// The upstream said it does not own the base; the client got nothing.
    NotOwner,
    /// The client got part of an answer (with this status), or went away: the connection
    /// must end.
    Cut(Option<StatusCode>),
}

/// What answered the client.
struct Answered {
    status: StatusCode,
    close: bool,
}

/// One client connection on this path, with its buffers (reused by each request).
struct Conn<'a> {
    client: &'a mut TcpStream,
    fwd: &'a Forwarder,
    /// Bytes from the client.
    inbuf: Vec<u8>,
    /// The request's headers as they go upstream, except Host and the epoch.
    mid: Vec<u8>,
    /// The bytes of the next write: the upstream request, then the client's response head.
    out: Vec<u8>,
    /// Bytes from the upstream.
    resp: Vec<u8>,
}

impl Conn<'_> {
    /// Leaves the rest of the connection to hyper, counting why.
    fn hand_over(&mut self, why: Handoff) -> Ended {
        ::metrics::counter!("dtable_proxy_hyper_handoffs_total", "reason" => why.as_str())
            .increment(1);
        Ended::Fallback(std::mem::take(&mut self.inbuf))
    }

    /// Lets go of buffers a large message grew, so that an idle connection keeps little.
    fn trim(&mut self) {
        for buf in [&mut self.inbuf, &mut self.out, &mut self.resp] {
            if buf.capacity() > KEEP_BETWEEN_REQUESTS && buf.is_empty() {
                *buf = Vec::new();
            }
        }
    }

    /// Whether the client has gone away (bytes it sent meanwhile are kept for later).
    fn client_gone(&mut self) -> bool {
        reserve(&mut self.inbuf, READ_ROOM);
        match self.client.try_read_buf(&mut self.inbuf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        }
    }

    /// Sends the request to `target`, and again wherever hyper's path would send it again,
    /// until the client has an answer.
    async fn forward(
        &mut self,
        head: &Head,
        target: Option<Target>,
        started: Instant,
        close: bool,
    ) -> Flow {
        let fwd = self.fwd;
        let deadline = started + fwd.settings.hold_timeout;
        let mut target = match target {
            Some(t) => t,
            // Held until the bucket has an owner, as on hyper's path. Boxed: rare.
            None => match Box::pin(fwd.resolve(head.bucket, deadline, None)).await {
                Ok(t) if self.client_gone() => {
                    tracing::debug!(node = %t.upstream.node_id, "client left while its request was held");
                    return Flow::Close;
                }
                Ok(t) => t,
                Err(e) => return self.refuse(e, started, close).await,
            },
        };
        let mut retried_connect = false;
        let mut stale = false;
        let mut backoff = Duration::from_millis(25);
        loop {
            self.build_request(head, &target);
            match self.exchange(&target.upstream, stale, head, close).await {
                Ok(answered) => {
                    fwd.metrics.observe(answered.status, started.elapsed());
                    return if answered.close {
                        Flow::Close
                    } else {
                        Flow::KeepAlive
                    };
                }
                Err(Failed::NotOwner) => {
                    let b = head.bucket.expect("only requests with a base are retried");
                    fwd.metrics.not_owner_retries.increment(1);
                    // As hyper's path: wait for the assignment to move past the epoch sent, or
                    // a short back-off (the server's view may lag ours).
                    let sent_epoch = target.epoch;
                    let wait_until = deadline.min(Instant::now() + backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    let next = match fwd.resolve(Some(b), wait_until, sent_epoch).await {
                        Ok(t) => Ok(t),
                        Err(_) if Instant::now() < deadline => {
                            fwd.resolve(Some(b), deadline, None).await
                        }
                        Err(e) => Err(e),
                    };
                    target = match next {
                        Ok(t) => t,
                        Err(e) => return self.refuse(e, started, close).await,
                    };
                    // While it waited, no one watched the client: a request whose client has
                    // left is not sent again (as on hyper's path, where it is dropped).
                    if self.client_gone() {
                        return Flow::Close;
                    }
                }
                Err(Failed::Stale(e)) if !stale && head.idempotent => {
                    tracing::debug!(node = %target.upstream.node_id, error = %e, "sending again on a new connection");
                    fwd.metrics.stale_retries.increment(1);
                    stale = true;
                }
                Err(Failed::Connect(e)) => {
                    let next = (!retried_connect)
                        .then(|| fwd.moved_elsewhere(head.bucket, &target))
                        .flatten();
                    match next {
                        Some(t) => {
                            retried_connect = true;
                            target = t;
                        }
                        None => {
                            let e = ForwardError::unreachable(
                                &target.upstream,
                                format!("connect failed: {e}"),
                            );
                            return self.refuse(e, started, close).await;
                        }
                    }
                }
                Err(Failed::Stale(e) | Failed::Upstream(e)) => {
                    let e = ForwardError::unreachable(&target.upstream, e);
                    return self.refuse(e, started, close).await;
                }
                Err(Failed::Cut(status)) => {
                    if let Some(status) = status {
                        fwd.metrics.observe(status, started.elapsed());
                    }
                    return Flow::Close;
                }
            }
        }
    }

    /// Writes the request for `target` into `out`: request line (with the upstream's path
    /// prefix), Host, epoch, the client's headers, the body.
    fn build_request(&mut self, head: &Head, target: &Target) {
        let up = &target.upstream;
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(&self.inbuf[head.method.clone()]);
        out.push(b' ');
        out.extend_from_slice(up.prefix.as_bytes());
        out.extend_from_slice(&self.inbuf[head.target.clone()]);
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(up.host.as_bytes());
        if let Some(epoch) = &target.epoch_header {
            out.extend_from_slice(b"\r\nx-dtable-epoch: ");
            out.extend_from_slice(epoch.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.mid);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.inbuf[head.len..head.len + head.body_len]);
    }

    /// One attempt: `out` to an upstream connection (a new one when `fresh`), and its answer
    /// to the client, unless it is a not-owner answer to a request with a base.
    async fn exchange(
        &mut self,
        up: &Upstream,
        fresh: bool,
        head: &Head,
        close: bool,
    ) -> Result<Answered, Failed> {
        let pooled = if fresh { None } else { up.pool.checkout_raw() };
        let reused = pooled.is_some();
        let mut stream = match pooled {
            Some(s) => s,
            // Boxed: connecting is rare, and its future would make every request's larger.
            None => Box::pin(up.pool.connect_raw())
                .await
                .map_err(Failed::Connect)?,
        };
        let lost = |e: String| {
            if reused {
                Failed::Stale(e)
            } else {
                Failed::Upstream(e)
            }
        };
        let sent = Instant::now();
        if let Err(e) = stream.write_all(&self.out).await {
            return Err(lost(e.to_string()));
        }
        self.resp.clear();
        let rh = loop {
            if !self.resp.is_empty() {
                match parse_response(&self.resp, &mut self.out, head.head_method, close) {
                    Ok(RespParse::Ready(rh)) => break rh,
                    Ok(RespParse::Informational(n)) => {
                        self.resp.drain(..n);
                        continue;
                    }
                    Ok(RespParse::Partial) if self.resp.len() < MAX_RESPONSE_HEAD => {}
                    Ok(RespParse::Partial) => {
                        return Err(Failed::Upstream("response head too large".into()));
                    }
                    Err(e) => return Err(Failed::Upstream(e.into())),
                }
            }
            reserve(&mut self.resp, READ_ROOM);
            match stream.read_buf(&mut self.resp).await {
                Ok(0) if self.resp.is_empty() => {
                    return Err(lost("connection closed before an answer".into()));
                }
                Ok(0) => {
                    return Err(Failed::Upstream(
                        "connection closed in the response head".into(),
                    ));
                }
                Err(e) if self.resp.is_empty() => return Err(lost(e.to_string())),
                Err(e) => return Err(Failed::Upstream(e.to_string())),
                Ok(_) => {}
            }
        };
        if rh.not_owner && head.bucket.is_some() {
            return Err(Failed::NotOwner);
        }
        self.fwd
            .metrics
            .upstream_latency
            .record(sent.elapsed().as_secs_f64());
        let mut body = rh.body;
        let Ok((take, mut done)) = body.advance(&self.resp[rh.len..]) else {
            return Err(Failed::Upstream("malformed chunked body".into()));
        };
        self.out
            .extend_from_slice(&self.resp[rh.len..rh.len + take]);
        let mut surplus = self.resp.len() > rh.len + take;
        let cut = || Failed::Cut(Some(rh.status));
        if self.client.write_all(&self.out).await.is_err() {
            return Err(cut());
        }
        while !done {
            self.resp.clear();
            reserve(&mut self.resp, BODY_CHUNK);
            let n = match stream.read_buf(&mut self.resp).await {
                Ok(n) => n,
                Err(_) => return Err(cut()),
            };
            if n == 0 {
                if matches!(body, Body::Close) {
                    break;
                }
                return Err(cut());
            }
            let Ok((take, end)) = body.advance(&self.resp) else {
                return Err(cut());
            };
            if self.client.write_all(&self.resp[..take]).await.is_err() {
                return Err(cut());
            }
            surplus = self.resp.len() > take;
            done = end;
        }
        // An upstream that sent more than its response is not trusted with another request.
        if rh.reuse && !surplus && !matches!(body, Body::Close) {
            up.pool.checkin_raw(stream);
        }
        Ok(Answered {
            status: rh.status,
            close: rh.close_client,
        })
    }

    /// Answers the client with `e`'s JSON error, as hyper's path does.
    async fn refuse(&mut self, e: ForwardError, started: Instant, close: bool) -> Flow {
        tracing::warn!(error = %e, "request not forwarded");
        let (status, code, retry) = e.parts();
        let body = serde_json::json!({ "code": code, "error": e.to_string() }).to_string();
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\ncontent-type: application/json\r\n");
        if retry {
            out.extend_from_slice(b"retry-after: 1\r\n");
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
        out.extend_from_slice(body.as_bytes());
        self.fwd.metrics.observe(status, started.elapsed());
        match self.client.write_all(&self.out).await {
            Ok(()) if !close => Flow::KeepAlive,
            _ => Flow::Close,
        }
    }
}

/// Makes room for at least `room` more bytes.
fn reserve(buf: &mut Vec<u8>, room: usize) {
    if buf.capacity() - buf.len() < room {
        buf.reserve(room);
    }
}

/// A request head this path takes; ranges index the connection's input buffer.
#[derive(Debug)]
struct Head {
    /// Length of the head, up to and including its blank line.
    len: usize,
    method: Range<usize>,
    /// Origin-form target: path and query.
    target: Range<usize>,
    /// Content-Length (0 without one).
    body_len: usize,
    /// May be sent again after a kept-alive connection closed under it.
    idempotent: bool,
    /// HEAD: the response has no body, whatever its headers say.
    head_method: bool,
    /// The client asked to close the connection after this request.
    close: bool,
    bucket: Option<Bucket>,
}

#[derive(Debug)]
enum Parse {
    /// The head is not complete yet.
    Partial,
    /// The request is for hyper's path, for this reason.
    Other(Handoff),
    Ready(Head),
}

/// Why a connection went over to hyper's path (the `reason` of
/// `dtable_proxy_hyper_handoffs_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handoff {
    /// HTTP/2 with prior knowledge (gRPC).
    Http2,
    /// HTTP/1.0.
    Http10,
    /// A head that does not parse (hyper answers 400).
    Malformed,
    /// A head over `--max-header-bytes` (hyper answers 431).
    HeadTooLarge,
    /// Not a path in origin form, or not in plain ASCII.
    RequestTarget,
    /// A WebSocket or other upgrade.
    Upgrade,
    /// `Expect: 100-continue`.
    Expect,
    /// A chunked request body.
    Chunked,
    /// A request body over [`BODY_LIMIT`] (or `--retry-body-limit`).
    LargeBody,
    /// A `Connection` header naming other headers.
    ConnectionHeader,
    /// A base that is not a UUID (hyper's path answers 400).
    BadUuid,
}

impl Handoff {
    fn as_str(self) -> &'static str {
        match self {
            Handoff::Http2 => "http2",
            Handoff::Http10 => "http1_0",
            Handoff::Malformed => "malformed_head",
            Handoff::HeadTooLarge => "head_too_large",
            Handoff::RequestTarget => "request_target",
            Handoff::Upgrade => "upgrade",
            Handoff::Expect => "expect",
            Handoff::Chunked => "chunked_body",
            Handoff::LargeBody => "large_body",
            Handoff::ConnectionHeader => "connection_header",
            Handoff::BadUuid => "bad_uuid",
        }
    }
}

/// The headers either path treats apart from the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Name {
    Host,
    Connection,
    /// Describes one connection: not forwarded.
    HopByHop,
    Upgrade,
    Expect,
    TransferEncoding,
    ContentLength,
    ForwardedFor,
    ForwardedProto,
    ForwardedHost,
    Epoch,
    Uuid,
    NotOwner,
    Other,
}

/// Which of [`Name`] `name` is, comparing lengths first as a `match` on strings does.
fn classify(name: &str) -> Name {
    let n = name.as_bytes();
    let is = |s: &str| n.eq_ignore_ascii_case(s.as_bytes());
    match n.len() {
        2 if is("te") => Name::HopByHop,
        4 if is("host") => Name::Host,
        6 if is("expect") => Name::Expect,
        7 if is("trailer") => Name::HopByHop,
        7 if is("upgrade") => Name::Upgrade,
        10 if is("connection") => Name::Connection,
        10 if is("keep-alive") => Name::HopByHop,
        13 if is("x-dtable-uuid") => Name::Uuid,
        14 if is("content-length") => Name::ContentLength,
        14 if is("x-dtable-epoch") => Name::Epoch,
        15 if is("x-forwarded-for") => Name::ForwardedFor,
        16 if is("x-forwarded-host") => Name::ForwardedHost,
        16 if is("proxy-connection") => Name::HopByHop,
        17 if is("x-forwarded-proto") => Name::ForwardedProto,
        17 if is("transfer-encoding") => Name::TransferEncoding,
        18 if is("proxy-authenticate") => Name::HopByHop,
        18 if is("x-dtable-not-owner") => Name::NotOwner,
        19 if is("proxy-authorization") => Name::HopByHop,
        _ => Name::Other,
    }
}

/// The comma-separated tokens of a header value, trimmed, empty ones left out.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// A Content-Length value: digits only.
fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Parses the request head at the start of `buf`; when this path takes it, writes its
/// headers as they go upstream (without Host and epoch, and without the blank line) to `mid`.
fn parse_request(buf: &[u8], mid: &mut Vec<u8>, peer: &Peer, body_limit: usize) -> Parse {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(_) if buf.starts_with(b"PRI * HTTP/2") => return Parse::Other(Handoff::Http2),
        Err(_) => return Parse::Other(Handoff::Malformed),
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parse::Other(Handoff::Http10);
    };
    // Origin form only, in plain visible ASCII (what hyper's URI parser surely takes).
    if !target.starts_with('/') || !target.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
        return Parse::Other(Handoff::RequestTarget);
    }
    let offset = |s: &str| s.as_ptr() as usize - buf.as_ptr() as usize;
    mid.clear();
    let (mut host, mut forwarded_for, mut uuid) = (None, None, None);
    let (mut has_proto, mut has_host) = (false, false);
    let (mut body_len, mut close) = (None, false);
    for h in req.headers.iter() {
        match classify(h.name) {
            Name::Host => {
                host.get_or_insert(h.value);
            }
            Name::Connection => {
                for t in tokens(h.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !t.eq_ignore_ascii_case(b"keep-alive") {
                        return Parse::Other(Handoff::ConnectionHeader);
                    }
                }
            }
            Name::HopByHop | Name::Epoch => {}
            Name::Upgrade => return Parse::Other(Handoff::Upgrade),
            Name::Expect => return Parse::Other(Handoff::Expect),
            Name::TransferEncoding => return Parse::Other(Handoff::Chunked),
            Name::ContentLength => {
                let Some(n) = content_length(h.value) else {
                    return Parse::Other(Handoff::Malformed);
                };
                if body_len.is_some_and(|b| b != n) {
                    return Parse::Other(Handoff::Malformed);
                }
                if body_len.is_none() {
                    header(mid, h.name.as_bytes(), h.value);
                }
                body_len = Some(n);
            }
            Name::ForwardedFor => {
                forwarded_for.get_or_insert(h.value);
            }
            name => {
                match name {
                    Name::ForwardedProto => has_proto = true,
                    Name::ForwardedHost => has_host = true,
                    Name::Uuid => {
                        uuid.get_or_insert(h.value);
                    }
                    _ => {}
                }
                header(mid, h.name.as_bytes(), h.value);
            }
        }
    }
    let body_len = match usize::try_from(body_len.unwrap_or(0)) {
        Ok(n) if n <= body_limit => n,
        _ => return Parse::Other(Handoff::LargeBody),
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let bucket = match locate::base_in(path, query, uuid) {
        Ok(base) => match base.map(Bucket::of_base).transpose() {
            Ok(bucket) => bucket,
            Err(_) => return Parse::Other(Handoff::BadUuid),
        },
        Err(_) => return Parse::Other(Handoff::BadUuid),
    };
    // The forwarding headers, as `forward::add_forwarding` sets them.
    mid.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prev) = forwarded_for.filter(|v| locate::is_text(v)) {
        mid.extend_from_slice(prev);
        mid.extend_from_slice(b", ");
    }
    mid.extend_from_slice(peer.ip.as_bytes());
    mid.extend_from_slice(b"\r\n");
    if !has_proto {
        header(mid, b"x-forwarded-proto", peer.proto.as_bytes());
    }
    if let Some(host) = host.filter(|_| !has_host) {
        header(mid, b"x-forwarded-host", host);
    }
    let m = Method::from_bytes(method.as_bytes()).ok();
    Parse::Ready(Head {
        len,
        method: offset(method)..offset(method) + method.len(),
        target: offset(target)..offset(target) + target.len(),
        body_len,
        idempotent: m.as_ref().is_some_and(Method::is_idempotent),
        head_method: m == Some(Method::HEAD),
        close,
        bucket,
    })
}

/// How the end of a response body is found.
#[derive(Debug)]
enum Body {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunked),
    /// Until the upstream closes the connection.
    Close,
}

impl Body {
    /// How many bytes at the start of `buf` belong to the body, and whether it ends there.
    fn advance(&mut self, buf: &[u8]) -> Result<(usize, bool), ()> {
        match self {
            Body::Length(left) => {
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= take as u64;
                Ok((take, *left == 0))
            }
            Body::Chunked(c) => c.feed(buf),
            Body::Close => Ok((buf.len(), false)),
        }
    }
}

#[derive(Debug)]
enum RespParse {
    Partial,
    /// A 1xx head of this length, which the client does not get (hyper's client drops them).
    Informational(usize),
    Ready(RespHead),
}

#[derive(Debug)]
struct RespHead {
    len: usize,
    status: StatusCode,
    /// 409 with `X-Dtable-Not-Owner: 1`.
    not_owner: bool,
    body: Body,
    /// The upstream connection may take another request.
    reuse: bool,
    /// The client connection ends after this response.
    close_client: bool,
}

/// Parses the response head at the start of `buf`, and writes the head the client gets to
/// `out`: hop-by-hop headers (and those the Connection header names) out, and
/// `connection: close` when the client connection ends after it (`close`, or a body that
/// ends with the upstream's connection).
fn parse_response(
    buf: &[u8],
    out: &mut Vec<u8>,
    head_method: bool,
    close: bool,
) -> Result<RespParse, &'static str> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(RespParse::Partial),
        Err(_) => return Err("malformed response head"),
    };
    let code = resp.code.ok_or("malformed response head")?;
    let status = StatusCode::from_u16(code).map_err(|_| "bad status")?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err("the upstream switched protocols unasked");
    }
    if status.is_informational() {
        return Ok(RespParse::Informational(len));
    }
    let mut reuse = resp.version == Some(1);
    let (mut length, mut chunked, mut encoded) = (None, false, false);
    let mut not_owner_header = false;
    // Each header's kind, found once; and the Connection values that name other headers
    // (rare, so a Vec only then).
    let mut kinds = [Name::Other; MAX_HEADERS];
    let mut naming: Vec<&[u8]> = Vec::new();
    for (h, kind) in resp.headers.iter().zip(&mut kinds) {
        *kind = classify(h.name);
        match *kind {
            Name::ContentLength => {
                let n = content_length(h.value).ok_or("bad content-length")?;
                if length.is_some_and(|l| l != n) {
                    return Err("conflicting content-length");
                }
                length = Some(n);
            }
            Name::TransferEncoding => {
                encoded = true;
                chunked = tokens(h.value)
                    .last()
                    .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
            }
            Name::Connection => {
                let mut names_others = false;
                for t in tokens(h.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        reuse = false;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        reuse |= resp.version == Some(0);
                    } else {
                        names_others = true;
                    }
                }
                if names_others {
                    naming.push(h.value);
                }
            }
            Name::NotOwner => not_owner_header = h.value == b"1",
            _ => {}
        }
    }
    let body =
        if head_method || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Body::Length(0)
        } else if encoded {
            if chunked {
                Body::Chunked(Chunked::default())
            } else {
                Body::Close
            }
        } else {
            length.map_or(Body::Close, Body::Length)
        };
    let close_client = close || matches!(body, Body::Close);
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    match resp.reason.filter(|r| !r.is_empty()) {
        Some(reason) => out.extend_from_slice(reason.as_bytes()),
        None => out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    for (h, kind) in resp.headers.iter().zip(kinds) {
        let skip = match kind {
            Name::Connection | Name::HopByHop | Name::Upgrade => true,
            // Transfer-Encoding wins over Content-Length.
            Name::ContentLength => encoded,
            _ => naming
                .iter()
                .any(|value| tokens(value).any(|t| t.eq_ignore_ascii_case(h.name.as_bytes()))),
        };
        if !skip {
            header(out, h.name.as_bytes(), h.value);
        }
    }
    if close_client {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(RespParse::Ready(RespHead {
        len,
        status,
        not_owner: status == StatusCode::CONFLICT && not_owner_header,
        body,
        reuse,
        close_client,
    }))
}

/// Finds the end of a chunked body passing through: chunk sizes (with extensions), data,
/// the last chunk, trailers, the blank line.
#[derive(Debug, Default)]
struct Chunked {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// At the start of a chunk size line.
    #[default]
    Size0,
    /// In a chunk size line's hex digits, with the size so far.
    Size(u64),
    /// In a chunk extension.
    Ext(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line or of the final blank line.
    LineStart,
    Trailer,
    TrailerLf,
    FinalLf,
    Done,
}

impl Chunked {
    /// How many bytes at the start of `buf` belong to the body, and whether it ends there.
    fn feed(&mut self, buf: &[u8]) -> Result<(usize, bool), ()> {
        use ChunkState::*;
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            self.state = match self.state {
                Size0 | Size(_) => {
                    let size = match self.state {
                        Size(n) => Some(n),
                        _ => None,
                    };
                    match (b as char).to_digit(16) {
                        Some(d) => {
                            let n = size.unwrap_or(0);
                            if n > u64::MAX >> 4 {
                                return Err(());
                            }
                            Size(n << 4 | u64::from(d))
                        }
                        None => match (b, size) {
                            (b';' | b' ' | b'\t', Some(n)) => Ext(n),
                            (b'\r', Some(n)) => SizeLf(n),
                            _ => return Err(()),
                        },
                    }
                }
                Ext(n) => match b {
                    b'\r' => SizeLf(n),
                    b'\n' => return Err(()),
                    _ => Ext(n),
                },
                SizeLf(n) => match (b, n) {
                    (b'\n', 0) => LineStart,
                    (b'\n', n) => Data(n),
                    _ => return Err(()),
                },
                Data(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len() - i);
                    i += take;
                    let left = n - take as u64;
                    self.state = if left == 0 { DataCr } else { Data(left) };
                    continue;
                }
                DataCr if b == b'\r' => DataLf,
                DataLf if b == b'\n' => Size0,
                DataCr | DataLf => return Err(()),
                LineStart if b == b'\r' => FinalLf,
                LineStart | Trailer if b != b'\r' => Trailer,
                Trailer => TrailerLf,
                TrailerLf if b == b'\n' => LineStart,
                FinalLf if b == b'\n' => Done,
                LineStart | TrailerLf | FinalLf => return Err(()),
                Done => return Ok((i, true)),
            };
            i += 1;
            if self.state == Done {
                return Ok((i, true));
            }
        }
        Ok((i, self.state == Done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderMap, HeaderName, HeaderValue};

    const UUID: &str = "c3a1e2f0a1b2c3d4e5f60718293a4b5c";

    fn peer() -> Peer {
        Peer::new("127.0.0.1:40000".parse().unwrap(), false)
    }

    fn parse(head: &str) -> (Parse, String) {
        let mut mid = Vec::new();
        let parsed = parse_request(head.as_bytes(), &mut mid, &peer(), BODY_LIMIT);
        (parsed, String::from_utf8(mid).unwrap())
    }

    fn ready(head: &str) -> (Head, String) {
        match parse(head) {
            (Parse::Ready(h), mid) => (h, mid),
            (other, _) => panic!("{other:?} for {head:?}"),
        }
    }

    /// The headers of `mid` (as this path sends them), lower-cased and sorted.
    fn lines(mid: &str) -> Vec<(String, String)> {
        let mut v: Vec<_> = mid
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap();
                (n.to_ascii_lowercase(), v.to_owned())
            })
            .collect();
        v.sort();
        v
    }

    /// The client's headers as hyper's path sends them upstream (before Host and epoch),
    /// sorted as [`lines`] sorts.
    fn hyper_sends(mut map: HeaderMap) -> Vec<(String, String)> {
        crate::forward::strip_hop_by_hop(&mut map, false);
        map.remove(crate::forward::EPOCH_HEADER);
        let uri = format!("/dtables/{UUID}/rows/").parse().unwrap();
        crate::forward::add_forwarding(&mut map, &uri, &peer());
        let mut sent: Vec<_> = map
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect();
        sent.sort();
        sent
    }

    #[test]
    fn the_headers_sent_upstream_are_those_of_hyper_s_path() {
        let cases: &[&[(&str, &str)]] = &[
            &[("Host", "cloud.example"), ("Accept", "*/*")],
            &[
                ("host", "inner"),
                ("X-Forwarded-For", "192.0.2.7"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "cloud.example"),
            ],
            &[
                ("Connection", "keep-alive"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Proxy-Connection", "keep-alive"),
                ("Proxy-Authorization", "Basic x"),
                ("X-Dtable-Epoch", "99"),
                ("Cookie", "a=1"),
                ("cookie", "b=2"),
            ],
            &[
                ("x-forwarded-for", "10.0.0.1"),
                ("x-forwarded-for", "10.0.0.2"),
            ],
            &[("content-length", "0"), ("x-dtable-uuid", UUID)],
        ];
        for headers in cases {
            let mut head = format!("GET /dtables/{UUID}/rows/?a=1 HTTP/1.1\r\n");
            let mut map = HeaderMap::new();
            for (n, v) in *headers {
                head.push_str(&format!("{n}: {v}\r\n"));
                map.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            head.push_str("\r\n");
            let (_, mid) = ready(&head);

            assert_eq!(lines(&mid), hyper_sends(map), "{headers:?}");
        }
    }

    /// Header names a request may carry, in the spellings clients use: the ones either path
    /// treats apart, and ordinary ones.
    const NAMES: [&str; 16] = [
        "Host",
        "host",
        "Connection",
        "Keep-Alive",
        "TE",
        "Trailer",
        "Proxy-Connection",
        "Proxy-Authorization",
        "X-Forwarded-For",
        "x-forwarded-proto",
        "X-Forwarded-Host",
        "X-Dtable-Epoch",
        "X-Dtable-Uuid",
        "Cookie",
        "Accept",
        "x-custom",
    ];

    proptest::proptest! {
        /// Any mix of those headers: the byte path sends upstream what hyper's path sends, or
        /// leaves the request to hyper.
        #[test]
        fn any_header_mix_goes_upstream_as_hyper_s_path_sends_it(
            headers in proptest::collection::vec(
                (0..NAMES.len(), proptest::sample::select(vec![
                    "keep-alive", "close", "trailers", "192.0.2.7", "a, b", "https",
                    "cloud.example", "*/*", "x", UUID, "",
                ])),
                0..12,
            )
        ) {
            let mut head = format!("GET /dtables/{UUID}/rows/ HTTP/1.1\r\n");
            let mut map = HeaderMap::new();
            for (n, v) in &headers {
                head.push_str(&format!("{}: {v}\r\n", NAMES[*n]));
                map.append(
                    HeaderName::from_bytes(NAMES[*n].as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            head.push_str("\r\n");
            let (parsed, mid) = parse(&head);
            if let Parse::Ready(h) = parsed {
                proptest::prop_assert_eq!(h.bucket, Some(Bucket(0xc3)));
                proptest::prop_assert_eq!(lines(&mid), hyper_sends(map));
            } else {
                // Only a Connection header naming another header is left to hyper here.
                let named = headers.iter().any(|(n, v)| {
                    NAMES[*n] == "Connection" && !["keep-alive", "close", ""].contains(v)
                });
                proptest::prop_assert!(
                    named && matches!(parsed, Parse::Other(Handoff::ConnectionHeader)),
                    "{:?} left to hyper", parsed
                );
            }
        }
    }

    #[test]
    fn the_head_is_read_in_place() {
        let head =
            format!("POST /api/v1/dtables/{UUID}/rows/ HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello");
        let (h, _) = ready(&head);
        assert_eq!(&head[h.method.clone()], "POST");
        assert_eq!(
            &head[h.target.clone()],
            format!("/api/v1/dtables/{UUID}/rows/")
        );
        assert_eq!(&head[h.len..h.len + h.body_len], "hello");
        assert_eq!(h.bucket, Some(Bucket(0xc3)));
        assert!(!h.idempotent && !h.head_method && !h.close);

        let (h, _) = ready("HEAD /ping/ HTTP/1.1\r\nconnection: close\r\n\r\n");
        assert!(h.idempotent && h.head_method && h.close);
        assert_eq!(h.bucket, None);
        let (h, _) = ready(&format!(
            "GET /socket.io/?EIO=4&dtable_uuid={UUID} HTTP/1.1\r\n\r\n"
        ));
        assert_eq!(h.bucket, Some(Bucket(0xc3)));
        let (h, mid) = ready(&format!(
            "GET /api/v1/query/ HTTP/1.1\r\nX-Dtable-Uuid: {UUID}\r\n\r\n"
        ));
        assert_eq!(h.bucket, Some(Bucket(0xc3)), "from the header");
        assert!(
            mid.contains(&format!("X-Dtable-Uuid: {UUID}\r\n")),
            "and passed on"
        );
    }

    #[test]
    fn everything_unusual_goes_to_hyper() {
        use Handoff::*;
        let body = "x".repeat(BODY_LIMIT + 1);
        let large = format!(
            "POST /x HTTP/1.1\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        for (head, why) in [
            ("GET /ping/ HTTP/1.0\r\n\r\n", Http10),
            ("GET http://example/ping/ HTTP/1.1\r\n\r\n", RequestTarget),
            ("OPTIONS * HTTP/1.1\r\n\r\n", RequestTarget),
            (
                "GET /socket.io/ HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
                ConnectionHeader,
            ),
            (
                "GET /socket.io/ HTTP/1.1\r\nupgrade: websocket\r\n\r\n",
                Upgrade,
            ),
            (
                "POST /x HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n",
                Expect,
            ),
            (
                "POST /x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
                Chunked,
            ),
            (large.as_str(), LargeBody),
            (
                "POST /x HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                Malformed,
            ),
            ("POST /x HTTP/1.1\r\ncontent-length: -1\r\n\r\n", Malformed),
            (
                "GET /x HTTP/1.1\r\nconnection: x-secret\r\nx-secret: 1\r\n\r\n",
                ConnectionHeader,
            ),
            ("GET /dtables/not-a-uuid/ HTTP/1.1\r\n\r\n", BadUuid),
            ("GET /x HTTP/1.1\r\nx-dtable-uuid: zz\r\n\r\n", BadUuid),
            ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Http2),
            ("GET /x HTTP/1.1\r\nbad header\r\n\r\n", Malformed),
        ] {
            let got = parse(head).0;
            assert!(
                matches!(got, Parse::Other(w) if w == why),
                "{head:?}: {got:?}"
            );
        }
        assert!(matches!(parse("GET /dtables/").0, Parse::Partial));
        assert!(matches!(
            parse("GET /x HTTP/1.1\r\nhost: a\r\n").0,
            Parse::Partial
        ));
    }

    fn response(head: &str, head_method: bool, close: bool) -> (RespHead, String) {
        let mut out = Vec::new();
        match parse_response(head.as_bytes(), &mut out, head_method, close) {
            Ok(RespParse::Ready(r)) => (r, String::from_utf8(out).unwrap()),
            other => panic!("{other:?} for {head:?}"),
        }
    }

    #[test]
    fn response_heads_keep_their_framing_and_lose_hop_by_hop_headers() {
        let (r, out) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, x-hop\r\n\
             Keep-Alive: timeout=5\r\nx-hop: 1\r\nx-dtable-node: a\r\n\r\nok",
            false,
            false,
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-dtable-node: a\r\n\r\n"
        );
        assert!(matches!(r.body, Body::Length(2)) && r.reuse && !r.close_client);

        let (r, out) = response(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 9\r\n\r\n",
            false,
            true,
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        assert!(matches!(r.body, Body::Chunked(_)) && r.close_client);

        let (r, out) = response("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n", false, false);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
        assert!(matches!(r.body, Body::Close) && !r.reuse && r.close_client);

        for (head, method_head) in [
            ("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", true),
            ("HTTP/1.1 204 No Content\r\n\r\n", false),
            (
                "HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n",
                false,
            ),
        ] {
            let (r, _) = response(head, method_head, false);
            assert!(matches!(r.body, Body::Length(0)), "{head}");
        }
        let (r, _) = response("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false, false);
        assert!(!r.reuse, "HTTP/1.0 without keep-alive");
        let (r, out) = response(
            "HTTP/1.1 409 Conflict\r\nx-dtable-not-owner: 1\r\n\r\n",
            false,
            false,
        );
        assert!(r.not_owner && out.starts_with("HTTP/1.1 409 Conflict\r\n"));
        let (r, _) = response(
            "HTTP/1.1 409 Conflict\r\ncontent-length: 0\r\n\r\n",
            false,
            false,
        );
        assert!(!r.not_owner, "another 409 is the application's");
        let (_, out) = response("HTTP/1.1 200\r\ncontent-length: 0\r\n\r\n", false, false);
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");

        let mut out = Vec::new();
        let informational = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert!(matches!(
            parse_response(informational.as_bytes(), &mut out, false, false),
            Ok(RespParse::Informational(25))
        ));
        for bad in [
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            "HTTP/1.1 abc\r\n\r\n",
        ] {
            assert!(
                parse_response(bad.as_bytes(), &mut out, false, false).is_err(),
                "{bad}"
            );
        }
    }

    /// Feeds `body` to a new scanner in pieces cut at `cuts`; returns where it says the body
    /// ends.
    fn end_of(body: &[u8], cuts: &[usize]) -> Result<Option<usize>, ()> {
        let mut c = Chunked::default();
        let mut at = 0;
        for &cut in cuts.iter().chain([&body.len()]) {
            if cut < at {
                continue;
            }
            let (took, done) = c.feed(&body[at..cut])?;
            if done {
                return Ok(Some(at + took));
            }
            assert_eq!(
                took,
                cut - at,
                "all of an unfinished piece belongs to the body"
            );
            at = cut;
        }
        Ok(None)
    }

    #[test]
    fn the_end_of_a_chunked_body_is_found_however_it_arrives() {
        let bodies: [&[u8]; 4] = [
            b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n",
            b"A\r\n0123456789\r\n0\r\nx-trailer: t\r\nx-other: u\r\n\r\n",
            b"0\r\n\r\n",
            b"1a \r\nabcdefghijklmnopqrstuvwxyz\r\n00\r\n\r\n",
        ];
        let after = b"HTTP/1.1 200 OK\r\n";
        for body in bodies {
            let mut stream = body.to_vec();
            stream.extend_from_slice(after);
            // Whole, byte by byte, and cut in two at every place.
            assert_eq!(end_of(&stream, &[]), Ok(Some(body.len())));
            let every: Vec<usize> = (1..stream.len()).collect();
            assert_eq!(end_of(&stream, &every), Ok(Some(body.len())));
            for cut in 1..stream.len() {
                assert_eq!(
                    end_of(&stream, &[cut]),
                    Ok(Some(body.len())),
                    "cut at {cut}"
                );
            }
            // Short of its end, it has not ended.
            assert_eq!(end_of(&body[..body.len() - 1], &[]), Ok(None));
        }
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloX\r\n",
            b"5\nhello\r\n",
            b"fffffffffffffffff\r\n",
            b"0\r\n\rX",
        ] {
            assert_eq!(
                end_of(bad, &[]),
                Err(()),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_length_body_takes_its_bytes_and_no_more() {
        let mut b = Body::Length(5);
        assert_eq!(b.advance(b"abc"), Ok((3, false)));
        assert_eq!(b.advance(b"defgh"), Ok((2, true)));
        let mut b = Body::Close;
        assert_eq!(b.advance(b"abc"), Ok((3, false)));
    }
}
