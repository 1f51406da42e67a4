//! Registration: the node record under a lease, created only when the key is absent, so a
//! live registration (for instance a crashed predecessor's, whose lease still runs) is never
//! stolen. A server registers at `<node_id>`; a slave at `dtable-cluster/slaves/<node_id>`
//! and nowhere else.

use std::time::{Duration, SystemTime};

use dtable_core::etcd::{Backoff, CALL_TIMEOUT, LeaseKeeper, LeaseState, lease_lost};
use dtable_core::{NodeRecord, NodeState};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, WatchOptions};
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, Role};
use crate::health::Health;

/// Why registering failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// An etcd call failed; the caller retries.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// An etcd call did not answer in time; the caller retries.
    #[error("etcd call timed out")]
    Timeout,
    /// Our own lease ran out while we waited.
    #[error("our lease was lost while waiting to register: {0}")]
    LeaseLost(String),
    /// Shutdown was requested.
    #[error("shutting down")]
    Shutdown,
}

/// The key this agent registers its server at: `<prefix><node_id>` for a server,
/// `<prefix>dtable-cluster/slaves/<node_id>` for a slave (never a `dtable-server-` root key,
/// so neither dtable-web nor the placement can take a slave for a bucket owner).
pub fn registration_key(cfg: &AgentConfig) -> String {
    match cfg.role {
        Role::Server => cfg.keys.node(&cfg.node_id),
        Role::Slave => cfg.keys.slave(&cfg.node_id),
    }
}

/// Writes this node's record (see [`node_record`]) at [`registration_key`] under `lease`,
/// waiting out any other holder of the key.
///
/// Returns the revision the record was created at.
pub async fn register(
    client: &Client,
    cfg: &AgentConfig,
    lease: i64,
    lease_rx: &mut watch::Receiver<LeaseState>,
    shutdown: &CancellationToken,
) -> Result<i64, RegisterError> {
    let mut client = client.clone();
    let key = registration_key(cfg);
    let record = node_record(cfg);
    loop {
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                record.to_json(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = call(client.txn(txn)).await?;
        if resp.succeeded() {
            let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            tracing::info!(node_id = %cfg.node_id, role = cfg.role.name(), key, lease = format!("{lease:x}"), revision, "registered");
            return Ok(revision);
        }
        let holder = resp.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => {
                g.kvs().first().map(|kv| (kv.lease(), kv.mod_revision()))
            }
            _ => None,
        });
        let Some((held_by, seen_rev)) = holder else {
            continue; // deleted between compare and get: try again at once
        };
        let wait = if held_by == 0 {
            tracing::error!(node_id = %cfg.node_id, key, "node id is held by a key without a lease; it is never overwritten: delete it by hand if it is stale");
            Duration::from_secs(10)
        } else {
            let ttl = call(client.lease_time_to_live(held_by, None))
                .await?
                .ttl()
                .max(0) as u64;
            tracing::warn!(
                node_id = %cfg.node_id,
                held_by_lease = format!("{held_by:x}"),
                expires_in_s = ttl,
                "node id is still registered by another lease (a previous run?); waiting for it to expire"
            );
            Duration::from_secs(ttl + 1)
        };
        wait_for_delete(&mut client, &key, seen_rev, wait, lease_rx, shutdown).await?;
    }
}

/// Waits until `key` is deleted after `seen_rev`, `wait` passes, our lease is lost, or shutdown.
async fn wait_for_delete(
    client: &mut Client,
    key: &str,
    seen_rev: i64,
    wait: Duration,
    lease_rx: &mut watch::Receiver<LeaseState>,
    shutdown: &CancellationToken,
) -> Result<(), RegisterError> {
    let deleted = async {
        let opts = WatchOptions::new().with_start_revision(seen_rev + 1);
        let Ok(mut stream) = client.watch(key, Some(opts)).await else {
            return std::future::pending().await;
        };
        while let Ok(Some(msg)) = stream.message().await {
            if msg
                .events()
                .iter()
                .any(|e| e.event_type() == etcd_client::EventType::Delete)
                || msg.canceled()
            {
                return;
            }
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = deleted => Ok(()),
        _ = tokio::time::sleep(wait) => Ok(()),
        reason = lease_lost(lease_rx) => Err(RegisterError::LeaseLost(reason)),
        _ = shutdown.cancelled() => Err(RegisterError::Shutdown),
    }
}

async fn call<T>(
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, RegisterError> {
    Ok(timeout(CALL_TIMEOUT, fut)
        .await
        .map_err(|_| RegisterError::Timeout)??)
}

/// The record this agent registers; its `role` is `server` or `slave`.
pub fn node_record(cfg: &AgentConfig) -> NodeRecord {
    NodeRecord {
        node_id: cfg.node_id.clone(),
        node_url: cfg.node_url.clone(),
        local_node_url: cfg.local_node_url.clone(),
        role: cfg.role.name().into(),
        state: NodeState::Active,
        weight: cfg.weight,
        version: env!("CARGO_PKG_VERSION").into(),
        started_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        agent: Some(dtable_core::node::AGENT_MANAGED.into()),
    }
}

/// Waits until the probe says the server is healthy, then grants a lease and starts keeping it
/// alive. A grant that fails is retried after `backoff`, from the health check on. Returns the
/// lease, its state, and the token that stops its keeper; `None` on shutdown.
pub async fn lease_when_healthy(
    client: &Client,
    ttl: i64,
    health_rx: &mut watch::Receiver<Health>,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> Option<(i64, watch::Receiver<LeaseState>, CancellationToken)> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = health_rx.wait_for(Health::healthy) => {}
        }
        let stop_keeper = CancellationToken::new();
        match start_lease(client, ttl, stop_keeper.clone()).await {
            Ok((lease, lease_rx, _keeper)) => return Some((lease, lease_rx, stop_keeper)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot grant a lease; retrying");
                backoff.wait(shutdown).await;
            }
        }
    }
}

/// Grants a lease and starts keeping it alive; the keeper task ends when the lease is lost or
/// `stop` fires.
pub async fn start_lease(
    client: &Client,
    ttl: i64,
    stop: CancellationToken,
) -> Result<
    (
        i64,
        watch::Receiver<LeaseState>,
        tokio::task::JoinHandle<LeaseState>,
    ),
    RegisterError,
> {
    let (keeper, rx) = match LeaseKeeper::grant(client, ttl).await {
        Ok(k) => k,
        Err(dtable_core::etcd::LeaseError::Grant(e)) => return Err(RegisterError::Etcd(e)),
        Err(_) => return Err(RegisterError::Timeout),
    };
    let id = keeper.id();
    tracing::info!(
        lease = format!("{id:x}"),
        ttl = keeper.timing().ttl.as_secs(),
        interval_ms = keeper.timing().interval.as_millis() as u64,
        "lease granted"
    );
    Ok((id, rx, tokio::spawn(keeper.run(stop))))
}

/// Marks our record `draining`, only if the key is still ours (attached to `lease`).
pub async fn mark_draining(
    client: &Client,
    cfg: &AgentConfig,
    lease: i64,
) -> Result<bool, RegisterError> {
    let key = cfg.keys.node(&cfg.node_id);
    let mut record = node_record(cfg);
    record.state = NodeState::Draining;
    let txn = Txn::new()
        .when([Compare::lease(key.as_str(), CompareOp::Equal, lease)])
        .and_then([TxnOp::put(
            key.as_str(),
            record.to_json(),
            Some(PutOptions::new().with_lease(lease)),
        )]);
    Ok(call(client.clone().txn(txn)).await?.succeeded())
}

/// Revokes a lease so every key on it goes at once; failures are logged, since the lease then
/// simply expires after its TTL.
pub async fn revoke(client: &Client, lease: i64) {
    match try_revoke(client, lease).await {
        Ok(Revoked::Now) => tracing::info!(
            lease = format!("{lease:x}"),
            "lease revoked; registration removed"
        ),
        Ok(Revoked::AlreadyGone) => tracing::info!(
            lease = format!("{lease:x}"),
            "lease already gone; registration removed"
        ),
        Err(e) => {
            tracing::warn!(lease = format!("{lease:x}"), error = %e, "lease revoke failed; it expires after its TTL")
        }
    }
}

/// How a revoke ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// etcd revoked the lease now, and every key on it.
    Now,
    /// etcd no longer knows the lease: it expired or was revoked already.
    AlreadyGone,
}

/// Revokes `lease`, telling a lease that is already gone from a failure.
pub async fn try_revoke(client: &Client, lease: i64) -> Result<Revoked, RegisterError> {
    match call(client.clone().lease_revoke(lease)).await {
        Ok(_) => Ok(Revoked::Now),
        // etcd answers NotFound ("requested lease not found") for an unknown lease.
        Err(RegisterError::Etcd(etcd_client::Error::GRpcStatus(status)))
            if status.code() == tonic::Code::NotFound =>
        {
            Ok(Revoked::AlreadyGone)
        }
        Err(e) => Err(e),
    }
}
