//! The cluster under test: node registrations written by the bench as agents would, one
//! in-process control plane, and the predicate that says a view shows the settled result.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use dtable_controlplane::{Args, ControlPlaneError};
use dtable_core::etcd::EtcdOptions;
use dtable_core::etcd::etcd_client::Client;
use dtable_core::{BUCKET_COUNT, Bucket, ClusterView, KeyLayout, NodeId, NodeRecord, NodeState};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::WAIT_LIMIT;

/// Registers `node` the way an agent does: its record as JSON at its key. No lease, because
/// the bench deletes the key itself and the run is shorter than any TTL would be.
pub async fn register(client: &mut Client, keys: &KeyLayout, node: &NodeId) -> anyhow::Result<()> {
    let record = NodeRecord {
        node_id: node.clone(),
        node_url: format!("http://{node}.invalid/"),
        local_node_url: format!("http://{node}.invalid:5000/"),
        role: "server".into(),
        state: NodeState::Active,
        weight: 1,
        version: env!("CARGO_PKG_VERSION").into(),
        started_at: String::new(),
        agent: Some(dtable_core::node::AGENT_MANAGED.into()),
    };
    tokio::time::timeout(
        WAIT_LIMIT,
        client.put(keys.node(node), record.to_json(), None),
    )
    .await
    .with_context(|| format!("registering {node} timed out"))?
    .with_context(|| format!("registering {node}"))?;
    Ok(())
}

/// Removes `node`'s registration, as an expired lease or a revoke would.
pub async fn deregister(
    client: &mut Client,
    keys: &KeyLayout,
    node: &NodeId,
) -> anyhow::Result<()> {
    tokio::time::timeout(WAIT_LIMIT, client.delete(keys.node(node), None))
        .await
        .with_context(|| format!("deleting {node} timed out"))?
        .with_context(|| format!("deleting {node}"))?;
    Ok(())
}

/// Whether `view` shows the settled assignment for exactly `members` (all of weight 1): they
/// and only they are registered, every bucket is owned by one of them, and each holds floor or
/// ceil of 256/len. After a join this means the joiner holds its full share; after a leave,
/// that no bucket names the leaver and all 256 are owned by live nodes.
pub fn settled(view: &ClusterView, members: &BTreeSet<NodeId>) -> bool {
    if members.is_empty()
        || view.nodes.len() != members.len()
        || !members.iter().all(|m| view.nodes.contains_key(m))
    {
        return false;
    }
    if Bucket::all().any(|b| view.owner(b).is_none()) {
        return false;
    }
    let floor = BUCKET_COUNT / members.len();
    let ceil = floor + usize::from(!BUCKET_COUNT.is_multiple_of(members.len()));
    view.bucket_counts()
        .values()
        .all(|&held| (floor..=ceil).contains(&held))
}

/// One control plane running in this process.
pub struct ControlPlane {
    /// Stops it.
    shutdown: CancellationToken,
    /// Its `run()` task.
    task: JoinHandle<Result<(), ControlPlaneError>>,
}

impl ControlPlane {
    /// Starts a control plane on `etcd` with the given debounce; its APIs listen on free
    /// loopback ports. Settings the bench does not care about keep the control plane's flag
    /// defaults: the configuration is parsed from flags and then overridden, so that the bench
    /// keeps building when the control plane gains a setting.
    pub fn start(
        etcd: &EtcdOptions,
        keys: &KeyLayout,
        debounce: Duration,
    ) -> anyhow::Result<ControlPlane> {
        let endpoints = etcd.endpoints.join(",");
        let mut cfg = Args::try_parse_from(["dtable-controlplane", "--etcd", &endpoints])
            .context("control plane flags")?
            .into_config()
            .context("control plane configuration")?;
        cfg.etcd = etcd.clone();
        cfg.keys = keys.clone();
        cfg.election_ttl = 10;
        cfg.grpc_listen = ([127, 0, 0, 1], dtable_testkit::free_port()).into();
        cfg.http_listen = ([127, 0, 0, 1], dtable_testkit::free_port()).into();
        cfg.name = "dtable-bench".into();
        cfg.debounce = debounce;
        // Repairs re-place from the view; with nothing to repair they write nothing, so a
        // long period only keeps them out of the way.
        cfg.repair_interval = Duration::from_secs(60);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(dtable_controlplane::run(cfg, None, shutdown.clone()));
        Ok(ControlPlane { shutdown, task })
    }

    /// Whether it has stopped already (it stops early only on an error).
    pub fn has_stopped(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops it and waits up to [`WAIT_LIMIT`] for it to end, reporting how it ended.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        match tokio::time::timeout(WAIT_LIMIT, self.task).await {
            Err(_) => bail!("control plane did not stop within {WAIT_LIMIT:?}"),
            Ok(Err(e)) => bail!("control plane task failed: {e}"),
            Ok(Ok(Err(e))) => bail!("control plane stopped with an error: {e}"),
            Ok(Ok(Ok(()))) => Ok(()),
        }
    }
}
