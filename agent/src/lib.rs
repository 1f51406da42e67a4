//! dtable-agent: the sidecar beside one dtable-server.
//!
//! - Mode `managed` (the default), role `server`: it probes the server, registers it in etcd
//!   under a lease only while it is healthy, and pushes the server's share of the assignment
//!   over a local stream that carries a serving lease the server enforces. When it can no
//!   longer renew its lease, or the server dies, it fences the server before the lease can
//!   free the buckets for others. On SIGTERM it drains the node by handoff (`supervisor.rs`).
//! - Mode `managed`, role `slave`: beside a read replica it registers the slave under
//!   `dtable-cluster/slaves/<node_id>` while the slave is healthy (`slave.rs`).
//! - Mode `seatable`: beside an unmodified SeaTable server that registers itself, it only
//!   probes the server and revokes its registration's lease once it is dead (`seatable.rs`).

pub mod config;
pub mod health;
pub mod local;
pub mod ops;
pub mod push;
pub mod registration;
pub mod seatable;
mod slave;
mod supervisor;

use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use dtable_core::LeaseTiming;
use dtable_core::cli::bind;
use dtable_core::etcd::{ClusterWatch, EtcdError, connect};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use config::{AgentConfig, Args, Mode, Role};
use health::Health;
use local::{Contact, Local};
use push::{Phase, PushState};

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// etcd could not be reached at start-up.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// A listener could not be bound.
    #[error(transparent)]
    Listen(#[from] dtable_core::cli::ListenError),
}

/// Runs the agent in its mode and role until `shutdown` (a managed server's agent: until it
/// has drained after it), or fails to start.
pub async fn run(
    cfg: AgentConfig,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    metrics::gauge!("dtable_agent_info", "mode" => cfg.mode.name(), "role" => cfg.role.name(), "node_id" => cfg.node_id.to_string())
        .set(1.0);
    match (cfg.mode, cfg.role) {
        (Mode::Managed, Role::Server) => run_managed(cfg, metrics, shutdown).await,
        (Mode::Managed, Role::Slave) => run_slave(cfg, metrics, shutdown).await,
        (Mode::Seatable, _) => run_seatable(cfg, metrics, shutdown).await,
    }
}

/// Starts probing the server's health until `stop`; the receiver follows the verdict.
fn start_probe(cfg: &AgentConfig, stop: &CancellationToken) -> watch::Receiver<Health> {
    let (health_tx, health_rx) = watch::channel(Health::default());
    tokio::spawn(health::run(cfg.probe.clone(), health_tx, stop.clone()));
    health_rx
}

/// Beside a slave: register it while it is healthy; no local push API.
async fn run_slave(
    cfg: AgentConfig,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let http = bind(cfg.http_listen).await?;
    let client = connect(&cfg.etcd).await?;
    let background = CancellationToken::new();
    let health_rx = start_probe(&cfg, &background);
    tokio::spawn(ops::serve_http(http, metrics, background.clone()));
    tracing::info!(http = %cfg.http_listen, health = %cfg.probe.url, "slave agent listening");
    let sup = slave::SlaveSupervisor {
        cfg,
        client,
        health_rx,
    };
    sup.run(shutdown).await;
    background.cancel();
    Ok(())
}

/// Beside a self-registering SeaTable server: watch, probe, and revoke a dead server's lease.
async fn run_seatable(
    cfg: AgentConfig,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let http = bind(cfg.http_listen).await?;
    let client = connect(&cfg.etcd).await?;
    let background = CancellationToken::new();
    let health_rx = start_probe(&cfg, &background);
    let (registrations, registration_rx) = seatable::RegistrationWatch::new(
        client.clone(),
        cfg.keys.node(&cfg.node_id),
        cfg.node_id.to_string(),
    );
    tokio::spawn(registrations.run(background.clone()));
    tokio::spawn(ops::serve_http(http, metrics, background.clone()));
    tracing::info!(http = %cfg.http_listen, "seatable agent listening");
    let watchdog = seatable::Watchdog {
        cfg,
        client,
        health_rx,
        registration_rx,
    };
    watchdog.run(shutdown).await;
    background.cancel();
    Ok(())
}

/// A managed server's agent: register, push, fence, drain.
async fn run_managed(
    cfg: AgentConfig,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let grpc = bind(cfg.grpc_listen).await?;
    let http = bind(cfg.http_listen).await?;
    let client = connect(&cfg.etcd).await?;
    let timing = LeaseTiming::new(cfg.lease_ttl).expect("validated at start-up");
    // Everything below runs until the agent has fenced and revoked, after the drain.
    let background = CancellationToken::new();

    let (watcher, view_rx) = ClusterWatch::new(client.clone(), cfg.keys.clone());
    tokio::spawn(watcher.run(background.clone()));
    let health_rx = start_probe(&cfg, &background);

    let (phase_tx, phase_rx) = watch::channel(Phase::Fenced);
    let initial = PushState::compute(&view_rx.borrow(), &cfg.node_id, &Phase::Fenced, 0);
    let (state_tx, state_rx) = watch::channel(Arc::new(initial));
    tokio::spawn(publish(
        view_rx.clone(),
        phase_rx,
        cfg.node_id.clone(),
        state_tx,
        background.clone(),
    ));

    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let local = Local {
        node_id: cfg.node_id.clone(),
        keys: cfg.keys.clone(),
        client: client.clone(),
        state_rx,
        events_tx,
        contact: Arc::new(Contact::default()),
        lease: Arc::new(AtomicI64::new(0)),
        push_interval: timing.interval,
        metrics,
    };
    tokio::spawn(local::serve_grpc(grpc, local.clone(), background.clone()));
    tokio::spawn(local::serve_http(http, local.clone(), background.clone()));
    tracing::info!(grpc = %cfg.grpc_listen, http = %cfg.http_listen, health = %cfg.probe.url, "local API listening; server fenced until registered");

    let sup = supervisor::Supervisor {
        cfg,
        client,
        timing,
        view_rx,
        health_rx,
        phase_tx,
        events_rx,
        local,
    };
    sup.run(shutdown).await;
    background.cancel();
    Ok(())
}

/// Recomputes what the server is told whenever the view or the phase changes.
async fn publish(
    mut view_rx: dtable_core::etcd::ViewRx,
    mut phase_rx: watch::Receiver<Phase>,
    node: dtable_core::NodeId,
    state_tx: watch::Sender<Arc<PushState>>,
    stop: CancellationToken,
) {
    let mut version = 0;
    loop {
        let view = view_rx.borrow_and_update().clone();
        let phase = phase_rx.borrow_and_update().clone();
        version += 1;
        let next = PushState::compute(&view, &node, &phase, version);
        state_tx.send_if_modified(|cur| {
            let same = cur.owned == next.owned
                && cur.release == next.release
                && cur.acked == next.acked
                && cur.fenced == next.fenced
                && cur.deadline == next.deadline
                && cur.revision == next.revision;
            if !same {
                metrics::gauge!("dtable_agent_owned_buckets").set(next.owned.len() as f64);
                *cur = Arc::new(next);
            }
            !same
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            r = view_rx.changed() => if r.is_err() { return },
            r = phase_rx.changed() => if r.is_err() { return },
        }
    }
}
