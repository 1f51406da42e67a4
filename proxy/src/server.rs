//! The routing listener: HTTP/1.1 with keep-alive and upgrades, and HTTP/2 cleartext with
//! prior knowledge (gRPC), with the protections a public-facing port needs: a header read
//! timeout, a header size cap (431), a connection cap, and a graceful drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
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
}

/// Serves `listener` until `shutdown`, then drains connections for up to the grace period.
pub async fn serve(
    listener: TcpListener,
    fwd: Arc<Forwarder>,
    limits: Limits,
    shutdown: CancellationToken,
) {
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
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
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
        let fwd = Arc::clone(&fwd);
        let client = Arc::new(Peer::new(peer));
        let svc = service_fn(move |req| {
            let fwd = Arc::clone(&fwd);
            let client = Arc::clone(&client);
            async move { Ok::<_, std::convert::Infallible>(fwd.handle(req, &client).await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!(grace = ?limits.shutdown_grace, "no longer accepting; draining connections");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(limits.shutdown_grace) => tracing::warn!("shutdown grace period over; closing the remaining connections"),
    }
}

/// The address a listener is bound to, for logs.
pub fn bound(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
