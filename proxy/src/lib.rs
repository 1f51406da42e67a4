//! dtable-proxy: routes every request to the dtable-server that owns the request's base,
//! including WebSockets, streaming bodies and gRPC over HTTP/2, and holds requests while a
//! bucket has no owner. Its admin port serves `POST /rebalance/`, lookups and metrics. With
//! `--slave-listen` it also spreads reads over the pool of dtable-server-slaves ([`slaves`]).

pub mod admin;
pub mod body;
pub mod config;
pub mod forward;
pub mod h1;
pub mod locate;
pub mod metrics;
pub mod pool;
pub mod server;
pub mod slaves;
pub mod table;
pub mod upgrade;
pub mod watchdog;

use std::sync::Arc;

use dtable_core::cli::bind;
use dtable_core::etcd::{ClusterWatch, EtcdError, ViewRx, connect};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use config::{Args, ProxyConfig};
use forward::Forwarder;
use pool::PoolSettings;
use server::Listener;
use slaves::{SlavePool, SlaveRouter, SlaveSettings};
use table::RoutingTable;
use upgrade::SocketRegistry;

/// Why the proxy stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// etcd could not be reached at start-up.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// A listener could not be bound.
    #[error(transparent)]
    Listen(#[from] dtable_core::cli::ListenError),
}

/// Runs the proxy until `shutdown`, then drains in-flight requests.
pub async fn run(
    cfg: ProxyConfig,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<(), ProxyError> {
    let listener = bind(cfg.listen).await?;
    let admin = bind(cfg.admin_listen).await?;
    let slave_listener = match cfg.slave_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let client = connect(&cfg.etcd).await?;
    let (watcher, view_rx) = ClusterWatch::new(client.clone(), cfg.keys.clone());
    let background = CancellationToken::new();
    tokio::spawn(watcher.run(background.clone()));

    let sockets = Arc::new(SocketRegistry::new());
    let (table_tx, table_rx) = watch::channel(Arc::new(RoutingTable::default()));
    let pool = PoolSettings {
        connect_timeout: cfg.connect_timeout,
        idle_timeout: cfg.idle_timeout,
    };
    tokio::spawn(follow_view(
        view_rx.clone(),
        table_tx,
        pool,
        Arc::clone(&sockets),
        background.clone(),
    ));
    tokio::spawn(sweep_idle(table_rx.clone(), pool, background.clone()));
    let fwd = Arc::new(Forwarder::new(
        table_rx,
        cfg.forward.clone(),
        cfg.connect_timeout,
        cfg.idle_timeout,
        sockets,
    ));
    let slave_pool_rx = slave_listener.as_ref().map(|_| {
        let (pool_tx, pool_rx) = watch::channel(Arc::new(SlavePool::default()));
        tokio::spawn(slaves::follow(
            view_rx.clone(),
            pool_tx,
            pool,
            background.clone(),
        ));
        tokio::spawn(slaves::sweep_idle(
            pool_rx.clone(),
            pool,
            background.clone(),
        ));
        pool_rx
    });
    let slave_task = slave_listener
        .zip(slave_pool_rx.clone())
        .map(|(l, pool_rx)| {
            let fallback = cfg.slave_fallback_to_owner.then(|| Arc::clone(&fwd));
            let router = Arc::new(SlaveRouter::new(
                pool_rx,
                fallback,
                SlaveSettings {
                    load_timeout: cfg.forward.hold_timeout,
                    retry_body_limit: cfg.forward.retry_body_limit,
                },
            ));
            tracing::info!(
                slave_listen = ?server::bound(&l),
                fallback_to_owner = cfg.slave_fallback_to_owner,
                "slave listener serving"
            );
            tokio::spawn(server::serve(
                Listener::Slave,
                l,
                router,
                cfg.limits.clone(),
                cfg.tls.clone(),
                shutdown.clone(),
            ))
        });
    let state = admin::AdminState {
        view_rx,
        client,
        keys: cfg.keys.clone(),
        metrics,
        slave_pool_rx,
    };
    let admin_task = tokio::spawn(admin::serve(
        admin,
        state,
        cfg.tls.clone(),
        cfg.admin_token.clone(),
        shutdown.clone(),
    ));
    tracing::info!(listen = ?server::bound(&listener), admin = %cfg.admin_listen, "dtable-proxy serving");
    server::serve(
        Listener::Routing,
        listener,
        fwd,
        cfg.limits.clone(),
        cfg.tls.clone(),
        shutdown,
    )
    .await;
    if let Some(task) = slave_task {
        let _ = task.await;
    }
    let _ = admin_task.await;
    background.cancel();
    Ok(())
}

/// Rebuilds the routing table on every view change, and closes WebSockets of buckets whose
/// owner changed.
async fn follow_view(
    mut view_rx: ViewRx,
    table_tx: watch::Sender<Arc<RoutingTable>>,
    pool: PoolSettings,
    sockets: Arc<SocketRegistry>,
    stop: CancellationToken,
) {
    loop {
        let view = view_rx.borrow_and_update().clone();
        if view.revision > 0 {
            let table = Arc::new(RoutingTable::from_view(&view, &table_tx.borrow(), pool));
            let closed = sockets.retain(&table);
            if closed > 0 {
                tracing::info!(buckets = closed, "closed WebSockets of moved buckets");
            }
            ::metrics::gauge!("dtable_proxy_table_revision").set(table.revision as f64);
            table_tx.send_replace(table);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = view_rx.changed() => if changed.is_err() { return },
        }
    }
}

/// Closes upstream connections that sat idle past the idle timeout.
async fn sweep_idle(
    table_rx: watch::Receiver<Arc<RoutingTable>>,
    pool: PoolSettings,
    stop: CancellationToken,
) {
    let every = (pool.idle_timeout / 2).max(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let table = Arc::clone(&table_rx.borrow());
        let mut seen = std::collections::HashSet::new();
        let idle: usize = table
            .upstreams()
            .filter(|u| seen.insert(Arc::as_ptr(u)))
            .map(|u| u.pool.sweep())
            .sum();
        ::metrics::gauge!("dtable_proxy_upstream_idle_connections").set(idle as f64);
    }
}
