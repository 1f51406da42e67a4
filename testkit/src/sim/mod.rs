//! `dtable-server-sim`, a stand-in dtable-server for tests, benchmarks and the demo.
//!
//! Version 2 is what the proxy's tests need as a backend. It owns buckets (all of them alone,
//! or those etcd's assignment gives it with `--etcd`) and answers base requests for a bucket
//! it does not own with 409 and `X-Dtable-Not-Owner: 1`; it describes each base request back
//! as JSON; it streams uploads and downloads and echoes WebSocket messages under `/_sim/`; it
//! serves socket.io at `/socket.io/`; and every response carries `X-Dtable-Node: <node_id>`.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /ping/` | `pong` |
//! | any `/dtables/<uuid>[/...]`, `/api/v1/dtables/<uuid>/...`, `/api/v1/internal/dtables/<uuid>/...`, `/dtable-server/api/v1/dtables/<uuid>/...` | see *Base routes* below |
//! | `POST /_sim/upload` | `{"bytes","sha256"}` of the body, read as a stream |
//! | `GET /_sim/download?bytes=N&seed=S` | N bytes of [`pattern_chunk`], streamed |
//! | `GET /_sim/ws` | WebSocket: `hello from <node_id>`, then an echo |
//! | `GET /_sim/state` | `{"node_id","follows_etcd","revision","owned":{"xx":epoch}}` |
//! | `/socket.io/?dtable_uuid=<uuid>` | socket.io; `join-room` → ack + `joined` |
//!
//! # Base routes
//! A malformed UUID gets 400 JSON; `?delay_ms=N` (N ≤ 30000) waits N ms, then a base whose
//! bucket the sim does not own gets 409 `{"error":"not_owner","bucket","node_id"}`; otherwise
//! 200 `{"node_id","dtable_uuid","method","path","epoch","request_epoch","forwarded_for",
//! "forwarded_proto","forwarded_host","body_bytes"}`.

mod app;
mod config;
mod ownership;
mod routes;
mod socketio;
mod stream;

use std::future::Future;

use axum::Router;
use dtable_core::Bucket;
use socketioxide::SocketIo;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use app::NODE_HEADER;
pub use config::{CONFIG_EXIT_CODE, SimConfig};
pub use ownership::Ownership;
pub use routes::{EPOCH_HEADER, MAX_DELAY_MS, NOT_OWNER_HEADER};
pub use socketio::{JOIN_EVENT, JOINED_EVENT, MISMATCH_EVENT, SOCKETIO_PATH};
pub use stream::{DOWNLOAD_CHUNK, pattern_chunk, pattern_sha256};

use app::AppState;
use socketio::SocketIndex;

/// Why the sim could not serve.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The node id cannot be sent as an HTTP header value.
    #[error("invalid node id {0:?}: it must be non-empty visible ASCII")]
    InvalidNodeId(String),
    /// etcd could not be reached to follow the assignment.
    #[error(transparent)]
    Etcd(#[from] dtable_core::etcd::EtcdError),
    /// Accepting or serving connections failed.
    #[error("serving HTTP failed: {0}")]
    Io(#[from] std::io::Error),
}

/// How to run a sim.
#[derive(Clone, Debug, Default)]
pub struct SimOptions {
    /// This server's node id, sent in `X-Dtable-Node` and matched against `assign-<xx>`.
    pub node_id: String,
    /// `(endpoints, key prefix)` of the etcd whose assignment the sim follows; `None` to own
    /// every bucket at epoch 0.
    pub etcd: Option<(Vec<String>, String)>,
}

impl SimOptions {
    /// A sim that owns every bucket.
    pub fn alone(node_id: impl Into<String>) -> SimOptions {
        SimOptions {
            node_id: node_id.into(),
            etcd: None,
        }
    }

    /// A sim that follows the assignment in the etcd at `endpoints`, keys under `prefix`.
    pub fn following(
        node_id: impl Into<String>,
        endpoints: Vec<String>,
        prefix: impl Into<String>,
    ) -> SimOptions {
        SimOptions {
            node_id: node_id.into(),
            etcd: Some((endpoints, prefix.into())),
        }
    }
}

/// A sim ready to serve: its router built and, with etcd, its assignment watch running.
pub struct SimServer {
    router: Router,
    io: SocketIo,
    handle: SimHandle,
    /// Stops the etcd watch and the release watcher when the server is done or dropped.
    _tasks: DropGuard,
}

/// A handle on a running sim, for tests that steer it from outside. Cheap to clone.
#[derive(Clone)]
pub struct SimHandle {
    state: AppState,
}

impl SimServer {
    /// Builds the sim: validates the node id and, with etcd, connects and starts following
    /// the assignment. Sockets of a bucket the sim stops owning are sent
    /// [`MISMATCH_EVENT`] and disconnected.
    ///
    /// # Errors
    /// [`SimError::InvalidNodeId`] for a node id that cannot be a header value;
    /// [`SimError::Etcd`] if etcd cannot be reached.
    pub async fn new(options: SimOptions) -> Result<SimServer, SimError> {
        app::node_header(&options.node_id)?;
        let tasks = CancellationToken::new();
        let ownership = match options.etcd {
            None => Ownership::everything(&options.node_id),
            Some((endpoints, prefix)) => {
                Ownership::connect(&options.node_id, endpoints, prefix, tasks.child_token()).await?
            }
        };
        let state = AppState {
            ownership: ownership.clone(),
            sockets: SocketIndex::default(),
            shutdown: tasks.child_token(),
        };
        let (router, io) = app::router(state.clone())?;
        let handle = SimHandle { state };
        let releases = handle.clone();
        tokio::spawn(ownership.watch_releases(
            move |bucket| {
                releases.disconnect_bucket(bucket);
            },
            tasks.child_token(),
        ));
        Ok(SimServer {
            router,
            io,
            handle,
            _tasks: tasks.drop_guard(),
        })
    }

    /// A handle on this sim that outlives [`SimServer::serve`].
    pub fn handle(&self) -> SimHandle {
        self.handle.clone()
    }

    /// Serves on `listener` until `shutdown` completes; then closes socket.io sessions and
    /// WebSockets, finishes the requests in flight, and returns.
    ///
    /// # Errors
    /// [`SimError::Io`] if the listener fails.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), SimError> {
        let addr = listener.local_addr()?;
        let node_id = self.handle.node_id().to_owned();
        let follows_etcd = self.handle.state.ownership.follows_etcd();
        tracing::info!(%addr, node_id, follows_etcd, "dtable-server-sim listening");
        let io = self.io;
        let sessions = self.handle.state.shutdown.clone();
        let stop = async move {
            shutdown.await;
            sessions.cancel();
            io.close().await;
        };
        axum::serve(listener, self.router)
            .with_graceful_shutdown(stop)
            .await?;
        tracing::info!(node_id, "dtable-server-sim stopped");
        Ok(())
    }
}

impl SimHandle {
    /// The sim's node id.
    pub fn node_id(&self) -> &str {
        self.state.ownership.node_id()
    }

    /// The epoch of `bucket` if the sim owns it now.
    pub fn epoch(&self, bucket: Bucket) -> Option<i64> {
        self.state.ownership.epoch(bucket)
    }

    /// How many socket.io sockets are connected for bases in `bucket`.
    pub fn socket_count(&self, bucket: Bucket) -> usize {
        self.state.sockets.count(bucket)
    }

    /// Sends [`MISMATCH_EVENT`] to every socket.io socket of `bucket` and disconnects it from
    /// the namespace, as on releasing the bucket. Returns how many sockets it disconnected.
    /// The Engine.IO transport stays open until the client closes it, as socket.io clients
    /// do after a server disconnect.
    pub fn disconnect_bucket(&self, bucket: Bucket) -> usize {
        self.state
            .sockets
            .disconnect_bucket(bucket, self.state.ownership.node_id())
    }
}

/// Serves the sim described by `options` on `listener` until `shutdown` completes, then
/// finishes the requests in flight and returns. Tests bind `127.0.0.1:0` and run this
/// in-process; use [`SimServer`] to keep a [`SimHandle`].
///
/// # Errors
/// As [`SimServer::new`] and [`SimServer::serve`].
pub async fn serve_sim(
    listener: tokio::net::TcpListener,
    options: SimOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimError> {
    SimServer::new(options)
        .await?
        .serve(listener, shutdown)
        .await
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
