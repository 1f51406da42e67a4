//! The routing listener: HTTP/1.1 with keep-alive and upgrades, and HTTP/2 cleartext with
//! prior knowledge (gRPC), with the protections a public-facing port needs: a header read
//! timeout, a header size cap (431), a connection cap, and a graceful drain on shutdown.
//!
//! One task accepts; each accepted connection is handed to one of `--workers` threads, each
//! running its own single-threaded runtime (as nginx runs one event loop per worker). A
//! connection and the upstream connections its requests open stay on that thread, so the
//! request path crosses no thread and takes no contended lock; the pools keep one idle list
//! per worker for the same reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use dtable_core::tls::{HANDSHAKE_TIMEOUT, ServerTls};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::forward::{Forwarder, Peer};

/// Limits of the routing listener.
#[derive(Clone, Debug)]
pub struct Limits {
    /// A client must send its request head within this time (slowloris).
    pub header_timeout: Duration,
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

/// Serves `listener` (over TLS when `tls` is set) until `shutdown`, then drains connections
/// for up to the grace period.
pub async fn serve(
    listener: TcpListener,
    fwd: Arc<Forwarder>,
    limits: Limits,
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
) {
    let acceptor = tls.as_ref().map(ServerTls::acceptor);
    let builder = Arc::new(connection_builder(&limits));
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let stop_workers = CancellationToken::new();
    let workers = limits.workers.max(1);
    let (queues, threads): (Vec<_>, Vec<_>) = (0..workers)
        .map(|i| {
            let (tx, rx) = mpsc::unbounded_channel();
            let thread = spawn_worker(
                i,
                rx,
                Arc::clone(&fwd),
                Arc::clone(&builder),
                acceptor.clone(),
                stop_workers.clone(),
            );
            (tx, thread)
        })
        .unzip();
    tracing::info!(workers, "routing workers started");
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
            tracing::error!(worker = next % workers, "routing worker is gone");
        }
        next = next.wrapping_add(1);
    }
    drop(listener);
    drop(queues);
    tracing::info!(grace = ?limits.shutdown_grace, "no longer accepting; draining connections");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(limits.shutdown_grace) => tracing::warn!("shutdown grace period over; closing the remaining connections"),
    }
    stop_workers.cancel();
    let joined = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    });
    let _ = joined.await;
}

fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32);
    builder
}

/// Starts worker `index`: a thread with a single-threaded runtime that serves the connections
/// it receives, until `stop` (which comes after the drain).
fn spawn_worker(
    index: usize,
    mut queue: mpsc::UnboundedReceiver<Accepted>,
    fwd: Arc<Forwarder>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    acceptor: Option<TlsAcceptor>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("dtable-proxy-w{index}"))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a worker runtime can be built");
            crate::pool::set_worker(index);
            rt.block_on(async move {
                while let Some(a) = queue.recv().await {
                    serve_connection(a, &fwd, &builder, acceptor.as_ref());
                }
                stop.cancelled().await;
            });
        })
        .expect("a worker thread can be started")
}

/// Serves one client connection on the current worker, after a TLS handshake when
/// `acceptor` is set.
fn serve_connection(
    a: Accepted,
    fwd: &Arc<Forwarder>,
    builder: &Arc<auto::Builder<TokioExecutor>>,
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
    let (fwd, builder, permit, watcher) =
        (Arc::clone(fwd), Arc::clone(builder), a.permit, a.watcher);
    match acceptor {
        None => {
            tokio::spawn(async move {
                http(stream, peer, false, fwd, &builder, watcher).await;
                drop(permit);
            });
        }
        Some(acceptor) => {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => http(tls, peer, true, fwd, &builder, watcher).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
                drop(permit);
            });
        }
    }
}

/// Speaks HTTP on one client connection until it ends or the drain closes it.
async fn http<I>(
    io: I,
    peer: SocketAddr,
    tls: bool,
    fwd: Arc<Forwarder>,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = Arc::new(Peer::new(peer, tls));
    let svc = service_fn(move |req| {
        let fwd = Arc::clone(&fwd);
        let client = Arc::clone(&client);
        async move { Ok::<_, std::convert::Infallible>(fwd.handle(req, &client).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(%peer, error = %e, "client connection ended with an error");
    }
}

/// The address a listener is bound to, for logs.
pub fn bound(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
