//! Registration: the node record under a lease, created only when the key is absent, so a
//! live registration (for instance a crashed predecessor's, whose lease still runs) is never
//! stolen.

use std::time::{Duration, SystemTime};

use dtable_core::etcd::{CALL_TIMEOUT, LeaseKeeper, LeaseState, lease_lost};
use dtable_core::{NodeRecord, NodeState};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, WatchOptions};
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;

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

/// Writes this node's record under `lease`, waiting out any other holder of the key.
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
    let key = cfg.keys.node(&cfg.node_id);
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
            tracing::info!(node_id = %cfg.node_id, lease = format!("{lease:x}"), revision, "registered");
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

/// The record this agent registers.
pub fn node_record(cfg: &AgentConfig) -> NodeRecord {
    NodeRecord {
        node_id: cfg.node_id.clone(),
        node_url: cfg.node_url.clone(),
        local_node_url: cfg.local_node_url.clone(),
        role: "server".into(),
        state: NodeState::Active,
        weight: cfg.weight,
        version: env!("CARGO_PKG_VERSION").into(),
        started_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
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
    let mut client = client.clone();
    match timeout(CALL_TIMEOUT, client.lease_revoke(lease)).await {
        Ok(Ok(_)) => tracing::info!(
            lease = format!("{lease:x}"),
            "lease revoked; registration removed"
        ),
        Ok(Err(e)) => {
            tracing::warn!(lease = format!("{lease:x}"), error = %e, "lease revoke failed; it expires after its TTL")
        }
        Err(_) => tracing::warn!(
            lease = format!("{lease:x}"),
            "lease revoke timed out; it expires after its TTL"
        ),
    }
}
