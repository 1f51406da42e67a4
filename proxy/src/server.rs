//! The routing listener: HTTP/1.1 with keep-alive and upgrades, and HTTP/2 cleartext with
//! prior knowledge (gRPC), with the protections a public-facing port needs: header and
//! keep-alive timeouts (kept by [`crate::watchdog`]), a header size cap (431), a connection
//! cap, and a graceful drain on shutdown.
//!
//! One task accepts; each accepted connection is handed to one of `--workers` threads, each
//! running its own single-threaded runtime (as nginx runs one event loop per worker). A
//! connection and the upstream connections its requests open stay on that thread, so the
//! request path crosses no thread and takes no contended lock; the pools keep one idle list
//! per worker for the same reason.
//!
//! The same machinery serves the slave listener (`--slave-listen`, see [`crate::slaves`]) on
//! threads of its own: what a listener does with a request is its [`Handler`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use dtable_core::tls::{HANDSHAKE_TIMEOUT, ServerTls};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::forward::{ClientBody, Forwarder, Peer};
use crate::h1::{self, Ended};
use crate::watchdog::{self, ConnClock, Timeouts, Tracked, Watched};

/// What a listener does with each request: answers it, never failing (errors become
/// responses).
pub trait Handler: Send + Sync + 'static {
    /// Answers `req` from `peer`.
    fn call(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: &Peer,
    ) -> impl Future<Output = Response<ClientBody>> + Send;

    /// The forwarder whose byte path ([`crate::h1`]) serves this listener's plain HTTP/1.1
    /// requests; `None` sends every request through [`Handler::call`].
    fn byte_path(&self) -> Option<&Forwarder> {
        None
    }
}

/// The routing listener's handler: to the owner of the request's bucket.
impl Handler for Forwarder {
    fn call(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: &Peer,
    ) -> impl Future<Output = Response<ClientBody>> + Send {
        self.handle(req, peer)
    }

    fn byte_path(&self) -> Option<&Forwarder> {
        self.settings.h1_fast_path.then_some(self)
    }
}

/// Which of the proxy's client-facing listeners a [`serve`] runs, for logs and thread names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// `--listen`: to the owners of the buckets.
    Routing,
    /// `--slave-listen`: to the slave pool.
    Slave,
}

impl Listener {
    /// The name in log lines.
    pub fn name(self) -> &'static str {
        match self {
            Listener::Routing => "routing",
            Listener::Slave => "slave",
        }
    }

    /// The name of worker thread `index` (at most 15 bytes for small indexes, as Linux keeps).
    fn thread_name(self, index: usize) -> String {
        match self {
            Listener::Routing => format!("dtable-proxy-w{index}"),
            Listener::Slave => format!("dtable-proxy-s{index}"),
        }
    }
}

/// Limits of a client-facing listener (routing or slave; each has its own connection cap).
#[derive(Clone, Debug)]
pub struct Limits {
    /// A client must send its request head within this time of its first byte (slowloris).
    pub header_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    pub keepalive_timeout: Duration,
    /// Largest request head; beyond it the client gets 431.
    pub max_header_bytes: usize,
    /// Most client connections at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// How long in-flight requests may run on after shutdown begins.
    pub shutdown_grace: Duration,
    /// Threads serving client connections.
    pub workers: usize,
}

/// A client connection on its way to a worker.
struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    watcher: Watcher,
}

/// Serves `listener` (over TLS when `tls` is set) with `fwd` until `shutdown`, then drains
/// connections for up to the grace period.
pub async fn serve<H: Handler>(
    kind: Listener,
    listener: TcpListener,
    fwd: Arc<H>,
    limits: Limits,
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
) {
    let name = kind.name();
    let acceptor = tls.as_ref().map(ServerTls::acceptor);
    let conns = Arc::new(ConnSettings::new(&limits, shutdown.clone()));
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let stop_workers = CancellationToken::new();
    let workers = limits.workers.max(1);
    let (queues, threads): (Vec<_>, Vec<_>) = (0..workers)
        .map(|i| {
            let (tx, rx) = mpsc::unbounded_channel();
            // The slave listener's workers keep their idle connections apart from the routing
            // workers' (a fallback to an owner goes over the owners' pools).
            let shard = match kind {
                Listener::Routing => i,
                Listener::Slave => workers + i,
            };
            let thread = spawn_worker(
                kind.thread_name(i),
                shard,
                rx,
                Arc::clone(&fwd),
                Arc::clone(&conns),
                acceptor.clone(),
                stop_workers.clone(),
            );
            (tx, thread)
        })
        .unzip();
    tracing::info!(workers, "{name} workers started");
    let mut next = 0usize;
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = Arc::clone(&slots).acquire_owned() => p.expect("semaphore never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand the connection to a worker");
                continue;
            }
        };
        let accepted = Accepted {
            stream,
            peer,
            permit,
            watcher: graceful.watcher(),
        };
        if queues[next % workers].send(accepted).is_err() {
            tracing::error!(worker = next % workers, "{name} worker is gone");
        }
        next = next.wrapping_add(1);
    }
    drop(listener);
    drop(queues);
    tracing::info!(grace = ?limits.shutdown_grace, "{name} listener no longer accepting; draining connections");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("{name} listener: all connections drained"),
        _ = tokio::time::sleep(limits.shutdown_grace) => tracing::warn!("{name} listener: shutdown grace period over; closing the remaining connections"),
    }
    stop_workers.cancel();
    let joined = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    });
    let _ = joined.await;
}

/// How a listener's workers serve each client connection.
struct ConnSettings {
    builder: auto::Builder<TokioExecutor>,
    timeouts: Timeouts,
    /// Largest request head (for the byte path; hyper has its own copy).
    max_header_bytes: usize,
    /// Cancelled when the listener stops accepting: the byte path then closes each
    /// connection at its next idle moment, as hyper's graceful shutdown does.
    draining: CancellationToken,
}

impl ConnSettings {
    fn new(limits: &Limits, draining: CancellationToken) -> ConnSettings {
        ConnSettings {
            builder: connection_builder(limits),
            timeouts: Timeouts {
                header: limits.header_timeout,
                keepalive: limits.keepalive_timeout,
            },
            max_header_bytes: limits.max_header_bytes,
            draining,
        }
    }
}

fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // The header and keep-alive timeouts are the watchdog's (see `crate::watchdog`), which
        // costs no timer per request; hyper's own would arm one each time a connection waits.
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32);
    builder
}

/// Starts a worker: a thread named `thread_name` with a single-threaded runtime that serves
/// the connections it receives, until `stop` (which comes after the drain). It keeps its idle
/// upstream connections in pool shard `shard`.
fn spawn_worker<H: Handler>(
    thread_name: String,
    shard: usize,
    mut queue: mpsc::UnboundedReceiver<Accepted>,
    fwd: Arc<H>,
    conns: Arc<ConnSettings>,
    acceptor: Option<TlsAcceptor>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a worker runtime can be built");
            crate::pool::set_worker(shard);
            rt.block_on(async move {
                while let Some(a) = queue.recv().await {
                    serve_connection(a, &fwd, &conns, acceptor.as_ref());
                }
                stop.cancelled().await;
            });
        })
        .expect("a worker thread can be started")
}

/// Serves one client connection on the current worker, after a TLS handshake when
/// `acceptor` is set.
fn serve_connection<H: Handler>(
    a: Accepted,
    fwd: &Arc<H>,
    conns: &Arc<ConnSettings>,
    acceptor: Option<&TlsAcceptor>,
) {
    let peer = a.peer;
    let stream = match TcpStream::from_std(a.stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot register the connection");
            return;
        }
    };
    let (fwd, conns, permit, watcher) = (Arc::clone(fwd), Arc::clone(conns), a.permit, a.watcher);
    match acceptor {
        None => {
            tokio::spawn(async move {
                plain(stream, peer, fwd, &conns, watcher).await;
                drop(permit);
            });
        }
        Some(acceptor) => {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let io = Watched::new(tls, Arc::new(ConnClock::default()));
                        http(io, peer, true, fwd, &conns, watcher).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
                drop(permit);
            });
        }
    }
}

/// Serves a plain-TCP client connection: on the byte path while it can, then (if a request
/// needs it) through hyper for the rest of the connection.
async fn plain<H: Handler>(
    mut stream: TcpStream,
    peer: SocketAddr,
    fwd: Arc<H>,
    conns: &ConnSettings,
    watcher: Watcher,
) {
    let clock = Arc::new(ConnClock::default());
    let Some(router) = fwd.byte_path() else {
        let io = Watched::new(stream, clock);
        return http(io, peer, false, fwd, conns, watcher).await;
    };
    let client = Peer::new(peer, false);
    let ended = tokio::select! {
        biased;
        ended = h1::serve(&mut stream, router, &client, &clock, conns.max_header_bytes, &conns.draining) => ended,
        cut = watchdog::watch(&clock, conns.timeouts) => {
            closed_by_watchdog(peer, cut);
            return;
        }
    };
    if let Ended::Fallback(read) = ended {
        let io = Watched::after(read, stream, clock);
        http(io, peer, false, fwd, conns, watcher).await;
    }
}

fn closed_by_watchdog(peer: SocketAddr, cut: watchdog::Cut) {
    ::metrics::counter!("dtable_proxy_client_connections_closed_total", "reason" => cut.as_str())
        .increment(1);
    tracing::debug!(%peer, reason = cut.as_str(), "closing the client connection");
}

/// Speaks HTTP on one client connection until it ends, the drain closes it, or its watchdog
/// finds it past its header or keep-alive timeout.
async fn http<I, H: Handler>(
    io: Watched<I>,
    peer: SocketAddr,
    tls: bool,
    fwd: Arc<H>,
    conns: &ConnSettings,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let clock = Arc::clone(io.clock());
    let client = Arc::new(Peer::new(peer, tls));
    let svc = {
        let clock = Arc::clone(&clock);
        service_fn(move |req| {
            let request = clock.request_started();
            let fwd = Arc::clone(&fwd);
            let client = Arc::clone(&client);
            async move {
                let resp = fwd.call(req, &client).await;
                Ok::<_, std::convert::Infallible>(resp.map(|body| Tracked::new(body, request)))
            }
        })
    };
    let conn = watcher.watch(
        conns
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), svc)
            .into_owned(),
    );
    tokio::select! {
        biased;
        ended = conn => if let Err(e) = ended {
            tracing::debug!(%peer, error = %e, "client connection ended with an error");
        },
        cut = watchdog::watch(&clock, conns.timeouts) => closed_by_watchdog(peer, cut),
    }
}

/// The address a listener is bound to, for logs.
pub fn bound(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
