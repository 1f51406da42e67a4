//! dtable-controlplane: the cluster monitor. Every instance watches the cluster; one, elected
//! through etcd, places the 256 buckets over the registered servers and writes `assign-<xx>`
//! with guarded transactions. Every instance serves the read API from its own watch cache and
//! records intents (cordon, drain, rebalance requests) that the leader carries out.

pub mod api;
pub mod config;
pub mod election;
pub mod events;
pub mod grpc;
pub mod handoff;
pub mod http;
pub mod leader;
pub mod lease_ttl;
pub mod model;
pub mod status;
pub mod writer;

use dtable_core::cli::bind;
use dtable_core::etcd::{ClusterWatch, EtcdError, connect};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use config::{Args, ControlPlaneConfig};

/// Why the control plane stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// etcd could not be reached at start-up.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// A listener could not be bound.
    #[error(transparent)]
    Listen(#[from] dtable_core::cli::ListenError),
    /// tonic refused the TLS set-up of the gRPC listener.
    #[error("cannot set up TLS on the gRPC listener: {0}")]
    GrpcTls(#[source] tonic::transport::Error),
}

/// Runs one control-plane instance until `shutdown`.
pub async fn run(
    cfg: ControlPlaneConfig,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<(), ControlPlaneError> {
    let grpc_server = grpc::server(cfg.tls.as_ref()).map_err(ControlPlaneError::GrpcTls)?;
    let client = connect(&cfg.etcd).await?;
    let http = bind(cfg.http_listen).await?;
    let grpc = bind(cfg.grpc_listen).await?;
    let (tls, admin_token) = (cfg.tls.clone(), cfg.admin_token.clone());

    let (watcher, view_rx) = ClusterWatch::new(client.clone(), cfg.keys.clone());
    let (is_leader_tx, is_leader_rx) = watch::channel(false);
    let state = api::ApiState {
        view_rx: view_rx.clone(),
        is_leader_rx,
        client: client.clone(),
        keys: cfg.keys.clone(),
        name: cfg.name.clone(),
        metrics,
        events: events::Events::new(),
        ttls: lease_ttl::LeaseTtls::new(client.clone()),
        auto_rebalance: cfg.auto_rebalance,
        shutdown: shutdown.clone(),
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(watcher.run(shutdown.clone()));
    tasks.spawn(
        state
            .events
            .clone()
            .run(view_rx.clone(), state.ttls.clone(), shutdown.clone()),
    );
    tasks.spawn(election::run_election(
        client,
        cfg,
        view_rx,
        is_leader_tx,
        shutdown.clone(),
    ));
    tasks.spawn(http::serve(
        http,
        state.clone(),
        tls,
        admin_token.clone(),
        shutdown.clone(),
    ));
    let service = grpc::ControlPlaneService::new(state, admin_token);
    tasks.spawn(grpc::serve(grpc_server, grpc, service, shutdown.clone()));
    while tasks.join_next().await.is_some() {}
    Ok(())
}
