//! `dtable-server-sim`, a stand-in dtable-server for tests, benchmarks and the demo.
//!
//! Version 1 answers `GET /ping/` with `pong` and stamps every response with
//! `X-Dtable-Node: <node_id>`, so a test can tell which server answered a routed request.

mod app;
mod config;

use std::future::Future;

pub use app::{NODE_HEADER, router};
pub use config::{CONFIG_EXIT_CODE, SimConfig};

/// Why the sim could not serve.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The node id cannot be sent as an HTTP header value.
    #[error("invalid node id {0:?}: it must be non-empty visible ASCII")]
    InvalidNodeId(String),
    /// Accepting or serving connections failed.
    #[error("serving HTTP failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves the sim as `node_id` on `listener` until `shutdown` completes, then finishes the
/// requests in flight and returns. Tests bind `127.0.0.1:0` and run this in-process.
pub async fn serve_sim(
    listener: tokio::net::TcpListener,
    node_id: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimError> {
    let app = router(&node_id)?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, node_id, "dtable-server-sim listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!(node_id, "dtable-server-sim stopped");
    Ok(())
}

/// A future that completes on the first SIGTERM or SIGINT: the shutdown trigger of the
/// binary. The handlers are installed when this is called, not when the future is first
/// polled, so a signal that arrives during start-up is not lost.
///
/// # Panics
/// If called outside a Tokio runtime or the handlers cannot be installed.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install a SIGINT handler");
    async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    }
}
