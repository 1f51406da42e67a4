//! `dtable-server-sim`, the stand-in dtable-server for tests, benchmarks and the demo.
//!
//! Version 4. It owns buckets: all of them at epoch 0 alone, those etcd's `assign-<xx>` names
//! it in (`--etcd`, and with `--self-register` it also registers itself at `<node_id>` under
//! its own lease, as SeaTable's enterprise dtable-server does: see `register.rs`), or those
//! its local agent pushes under a serving lease it enforces itself (`--agent`, see
//! `agent.rs`). With `--role slave` it is a read replica instead: it owns nothing, loads bases
//! through `--proxy-url`, and serves reads of them from a short-lived cache (see `slave.rs`). A request for a base whose bucket it does not serve
//! gets 409 and `X-Dtable-Not-Owner: 1` and changes nothing. With `--storage-dir` it keeps
//! bases in memory, loaded from the shared storage on first use and written through at the
//! bucket epoch before every acknowledged write (see [`crate::store`]); with `--event-log` it
//! appends own/disown/load/unload/write events (see [`crate::events`]) for
//! [`crate::checker`]. It also streams uploads and downloads and echoes WebSocket messages
//! under `/_sim/`, serves socket.io at `/socket.io/`, and every response carries
//! `X-Dtable-Node: <node_id>`.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /ping/` | `pong` |
//! | `…/rows/`, `…/rows/<id>` under every base path | the rows API with `--storage-dir` (see `rows.rs`), else as below |
//! | any `/dtables/<uuid>[/...]`, `/api/v1/dtables/<uuid>/...`, `/api/v1/internal/dtables/<uuid>/...`, `/dtable-server/api/v1/dtables/<uuid>/...` | see *Base routes* below |
//! | `POST /_sim/upload` | `{"bytes","sha256"}` of the body, read as a stream |
//! | `GET /_sim/download?bytes=N&seed=S` | N bytes of [`pattern_chunk`], streamed |
//! | `GET /_sim/ws` | WebSocket: `hello from <node_id>`, then an echo |
//! | `GET /_sim/state` | `{"node_id","mode","role","follows_etcd","revision","serve_for_ms","storage_dir","base_requests","registration","owned":{"xx":epoch}}` |
//! | `/socket.io/?dtable_uuid=<uuid>` | socket.io; `join-room` → ack + `joined` |
//!
//! # Base routes
//! A malformed UUID gets 400 JSON; `?delay_ms=N` (N ≤ 30000) waits N ms, then a base whose
//! bucket the sim does not own gets 409 `{"error":"not_owner","bucket","node_id"}`; otherwise
//! 200 `{"node_id","dtable_uuid","method","path","epoch","request_epoch","forwarded_for",
//! "forwarded_proto","forwarded_host","body_bytes"}`, and with `--storage-dir` a `GET` of
//! `/dtables/<uuid>` itself adds `"rows":[...]`, the base's content.

mod agent;
mod app;
mod bases;
mod config;
mod ownership;
mod register;
mod routes;
mod rows;
mod slave;
mod socketio;
mod stream;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use dtable_core::Bucket;
use socketioxide::SocketIo;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use agent::{BACKOFF_MAX, BACKOFF_MIN};
pub use app::NODE_HEADER;
pub use config::{CONFIG_EXIT_CODE, DEFAULT_CACHE_TTL_MS, DEFAULT_LEASE_TTL, SimConfig, SimRole};
pub use ownership::{Ownership, Source, Term};
pub use routes::{EPOCH_HEADER, MAX_DELAY_MS, NOT_OWNER_HEADER};
pub use slave::SLAVE_HEADER;
pub use socketio::{JOIN_EVENT, JOINED_EVENT, MISMATCH_EVENT, SOCKETIO_PATH};
pub use stream::{DOWNLOAD_CHUNK, pattern_chunk, pattern_sha256};

use crate::events::EventLog;
use app::AppState;
use bases::Bases;
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
    /// The agent URL is not a valid URI.
    #[error("invalid agent URL {0}")]
    BadAgentUrl(String),
    /// Both `--etcd` and `--agent` were given.
    #[error("follow either etcd or an agent, not both")]
    TwoSources,
    /// `--self-register` without `--etcd`, or with a node id the cluster cannot see.
    #[error("--self-register: {0}")]
    SelfRegister(String),
    /// `--role slave` with an option a slave does not take.
    #[error("--role slave: {0}")]
    Slave(String),
    /// The storage directory cannot be created.
    #[error("storage directory {path}: {source}")]
    StorageDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The event log cannot be opened for appending.
    #[error("event log {path}: {source}")]
    EventLog {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Accepting or serving connections failed.
    #[error("serving HTTP failed: {0}")]
    Io(#[from] std::io::Error),
}

/// How to run a sim.
#[derive(Clone, Debug, Default)]
pub struct SimOptions {
    /// This server's node id, sent in `X-Dtable-Node` and matched against `assign-<xx>`.
    pub node_id: String,
    /// `(endpoints, key prefix)` of the etcd whose assignment the sim follows.
    pub etcd: Option<(Vec<String>, String)>,
    /// URL of the local agent whose `Watch` stream the sim follows. With neither this nor
    /// `etcd` the sim owns every bucket at epoch 0.
    pub agent: Option<String>,
    /// The storage directory shared by all sims; `None` describes base requests back.
    pub storage_dir: Option<PathBuf>,
    /// The JSON-lines event log to append to; `None` logs no events.
    pub event_log: Option<PathBuf>,
    /// Register `<node_id>` in etcd under the sim's own lease (needs `etcd`).
    pub self_register: Option<SelfRegister>,
    /// Be a slave (read replica) instead of a server: owns nothing, needs no etcd.
    pub slave: Option<SlaveOptions>,
}

/// How a sim registers itself, as SeaTable's enterprise dtable-server does.
#[derive(Clone, Debug)]
pub struct SelfRegister {
    /// Lease TTL in seconds; the lease is kept alive every TTL/3.
    pub ttl: i64,
    /// The record's `node_url`; the local node URL when `None`.
    pub node_url: Option<String>,
    /// The record's `local_node_url`; `http://<listen address>/` when `None`.
    pub local_node_url: Option<String>,
}

impl Default for SelfRegister {
    fn default() -> Self {
        SelfRegister {
            ttl: config::DEFAULT_LEASE_TTL,
            node_url: None,
            local_node_url: None,
        }
    }
}

/// How a slave sim loads bases.
#[derive(Clone, Debug)]
pub struct SlaveOptions {
    /// Base URL bases are loaded from, without a trailing slash: `GET <proxy_url>/dtables/<uuid>`.
    pub proxy_url: String,
    /// How long a loaded base is served before it is loaded again.
    pub cache_ttl: Duration,
}

impl SimOptions {
    /// A sim that owns every bucket.
    pub fn alone(node_id: impl Into<String>) -> SimOptions {
        SimOptions {
            node_id: node_id.into(),
            ..SimOptions::default()
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
            ..SimOptions::default()
        }
    }

    /// A sim that follows the local agent at `url` (e.g. `http://127.0.0.1:5570`).
    pub fn agent(node_id: impl Into<String>, url: impl Into<String>) -> SimOptions {
        SimOptions {
            node_id: node_id.into(),
            agent: Some(url.into()),
            ..SimOptions::default()
        }
    }

    /// A sim that follows the assignment in etcd and registers itself at `<node_id>` under
    /// its own lease of `ttl` seconds, as SeaTable's enterprise dtable-server does.
    pub fn self_registering(
        node_id: impl Into<String>,
        endpoints: Vec<String>,
        prefix: impl Into<String>,
        ttl: i64,
    ) -> SimOptions {
        SimOptions {
            self_register: Some(SelfRegister {
                ttl,
                ..SelfRegister::default()
            }),
            ..SimOptions::following(node_id, endpoints, prefix)
        }
    }

    /// A slave: owns nothing, loads bases from `proxy_url` and keeps them for `cache_ttl`.
    pub fn slave(
        node_id: impl Into<String>,
        proxy_url: impl Into<String>,
        cache_ttl: Duration,
    ) -> SimOptions {
        let proxy_url: String = proxy_url.into();
        SimOptions {
            node_id: node_id.into(),
            slave: Some(SlaveOptions {
                proxy_url: proxy_url.trim_end_matches('/').to_owned(),
                cache_ttl,
            }),
            ..SimOptions::default()
        }
    }

    /// The same, keeping bases in `dir` (created if missing).
    pub fn with_storage(mut self, dir: impl Into<PathBuf>) -> SimOptions {
        self.storage_dir = Some(dir.into());
        self
    }

    /// The same, appending events to `path`.
    pub fn with_event_log(mut self, path: impl Into<PathBuf>) -> SimOptions {
        self.event_log = Some(path.into());
        self
    }
}

/// A sim ready to serve: its router built and, with etcd or an agent, the task that follows
/// its ownership running.
pub struct SimServer {
    router: Router,
    /// The socket.io handle to close at shutdown; a slave has none.
    io: Option<SocketIo>,
    handle: SimHandle,
    /// With `--self-register`, the registration to start once the address is known, and the
    /// token that stops it.
    registration: Option<(register::SelfRegistration, CancellationToken)>,
    /// Stops the etcd watch or agent follower and the bucket-lost handler when the server
    /// is done or dropped.
    tasks: DropGuard,
}

/// A handle on a running sim, for tests that steer it from outside. Cheap to clone.
#[derive(Clone)]
pub struct SimHandle {
    state: AppState,
}

impl SimServer {
    /// Builds the sim: validates the options, opens the event log, creates the storage
    /// directory, and connects to etcd or starts following the agent. Sockets of a bucket
    /// the sim stops serving are sent [`MISMATCH_EVENT`] and disconnected, and its bases are
    /// written back and unloaded.
    ///
    /// # Errors
    /// [`SimError::InvalidNodeId`], [`SimError::TwoSources`], [`SimError::BadAgentUrl`],
    /// [`SimError::EventLog`], [`SimError::StorageDir`], or [`SimError::Etcd`] if etcd
    /// cannot be reached.
    pub async fn new(options: SimOptions) -> Result<SimServer, SimError> {
        let node_id = options.node_id.as_str();
        app::node_header(node_id)?;
        if options.etcd.is_some() && options.agent.is_some() {
            return Err(SimError::TwoSources);
        }
        if let Some(slave) = &options.slave {
            return SimServer::new_slave(&options, slave.clone());
        }
        let log = match &options.event_log {
            None => EventLog::disabled(node_id),
            Some(path) => EventLog::open(path, node_id).map_err(|source| SimError::EventLog {
                path: path.clone(),
                source,
            })?,
        };
        let bases = match &options.storage_dir {
            None => None,
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| SimError::StorageDir {
                    path: dir.clone(),
                    source,
                })?;
                Some(Bases::new(dir.clone(), log.clone()))
            }
        };
        let tasks = CancellationToken::new();
        let registration = match (&options.self_register, &options.etcd) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(SimError::SelfRegister(
                    "needs --etcd to register in".to_owned(),
                ));
            }
            (Some(reg), Some((endpoints, prefix))) => {
                let id = dtable_core::NodeId::new(node_id)
                    .map_err(|e| SimError::SelfRegister(e.to_string()))?;
                let opts = dtable_core::etcd::EtcdOptions {
                    endpoints: endpoints.clone(),
                    ..Default::default()
                };
                let client = dtable_core::etcd::connect(&opts).await?;
                let keys = dtable_core::KeyLayout::new(prefix.clone());
                let r = register::SelfRegistration::new(client, &keys, id, reg.clone());
                Some((r, tasks.child_token()))
            }
        };
        let ownership = match (&options.etcd, &options.agent) {
            (Some((endpoints, prefix)), _) => {
                let (endpoints, prefix) = (endpoints.clone(), prefix.clone());
                Ownership::connect(node_id, endpoints, prefix, log, tasks.child_token()).await?
            }
            (None, Some(_)) => Ownership::agent(node_id, log),
            (None, None) => Ownership::everything(node_id, log),
        };
        let state = AppState {
            ownership: ownership.clone(),
            bases,
            sockets: SocketIndex::default(),
            shutdown: tasks.child_token(),
            base_requests: Arc::default(),
            registration: registration
                .as_ref()
                .map(|(r, _)| (r.key().to_owned(), r.lease())),
        };
        if let Some(url) = &options.agent {
            let follower = agent::AgentFollower::new(url, state.clone())?;
            tokio::spawn(follower.run(tasks.child_token()));
        }
        let (router, io) = app::router(state.clone())?;
        if let Some(lost_rx) = ownership.take_lost() {
            tokio::spawn(handle_losses(state.clone(), lost_rx, tasks.child_token()));
        }
        Ok(SimServer {
            router,
            io: Some(io),
            handle: SimHandle { state },
            registration,
            tasks: tasks.drop_guard(),
        })
    }

    /// A slave: no ownership source, no storage, no socket.io; the slave router.
    fn new_slave(options: &SimOptions, slave: SlaveOptions) -> Result<SimServer, SimError> {
        let clash = [
            ("--etcd", options.etcd.is_some()),
            ("--agent", options.agent.is_some()),
            ("--storage-dir", options.storage_dir.is_some()),
            ("--self-register", options.self_register.is_some()),
        ]
        .into_iter()
        .find(|(_, given)| *given);
        if let Some((flag, _)) = clash {
            return Err(SimError::Slave(format!("a slave takes no {flag}")));
        }
        let node_id = options.node_id.as_str();
        let tasks = CancellationToken::new();
        let state = AppState {
            ownership: Ownership::nothing(node_id, EventLog::disabled(node_id)),
            bases: None,
            sockets: SocketIndex::default(),
            shutdown: tasks.child_token(),
            base_requests: Arc::default(),
            registration: None,
        };
        let router = slave::router(slave::SlaveState::new(node_id, slave))?;
        Ok(SimServer {
            router,
            io: None,
            handle: SimHandle { state },
            registration: None,
            tasks: tasks.drop_guard(),
        })
    }

    /// A handle on this sim that outlives [`SimServer::serve`].
    pub fn handle(&self) -> SimHandle {
        self.handle.clone()
    }

    /// Serves on `listener` until `shutdown` completes; then closes socket.io sessions and
    /// WebSockets, finishes the requests in flight, stops following its ownership source,
    /// gives up every bucket (logging `disown`), writes the bases back, and returns.
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
        let mode = self.handle.state.ownership.source().name();
        tracing::info!(%addr, node_id, mode, self_register = self.registration.is_some(), "dtable-server-sim listening");
        let registered = self
            .registration
            .map(|(r, stop)| tokio::spawn(r.run(addr, stop)));
        let io = self.io;
        let sessions = self.handle.state.shutdown.clone();
        let stop = async move {
            shutdown.await;
            sessions.cancel();
            if let Some(io) = io {
                io.close().await;
            }
        };
        let served = axum::serve(listener, self.router)
            .with_graceful_shutdown(stop)
            .await;
        // Stop following first, so that nothing is owned again, then give everything up and
        // write the bases back. A self-registered sim revokes its lease as it leaves.
        self.tasks.disarm().cancel();
        if let Some(task) = registered {
            let _ = tokio::time::timeout(Duration::from_secs(6), task).await;
        }
        let state = &self.handle.state;
        state.ownership.disown_all("shutting down");
        if let Some(bases) = &state.bases {
            bases.unload_all().await;
        }
        served?;
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

    /// The sim's ownership table.
    pub fn ownership(&self) -> &Ownership {
        &self.state.ownership
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

/// Disconnects the sockets of every bucket the sim gives up and writes back and unloads the
/// bases it loaded while it held the bucket, until `shutdown`.
async fn handle_losses(
    state: AppState,
    mut lost_rx: tokio::sync::mpsc::UnboundedReceiver<(Bucket, Term)>,
    shutdown: CancellationToken,
) {
    loop {
        let (bucket, term) = tokio::select! {
            _ = shutdown.cancelled() => return,
            lost = lost_rx.recv() => match lost {
                Some(lost) => lost,
                None => return,
            },
        };
        tracing::info!(%bucket, epoch = term.epoch, "bucket lost");
        state
            .sockets
            .disconnect_bucket(bucket, state.ownership.node_id());
        if let Some(bases) = &state.bases {
            bases.unload(bucket, term).await;
        }
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
