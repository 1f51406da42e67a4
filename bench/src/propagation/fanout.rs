//! The pure fan-out: with the control plane stopped, the bench itself commits one transaction
//! of 128 `assign-` writes (etcd's default `--max-txn-ops` is 128, so a whole-table rewrite
//! cannot be one transaction) and times how long until every watcher's view holds all of them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use dtable_core::etcd::etcd_client::{Client, Txn, TxnOp};
use dtable_core::{Bucket, KeyLayout, NodeId};
use tokio::time::{Instant, timeout};

use super::WAIT_LIMIT;
use super::fleet::{Fleet, Goal};

/// Buckets rewritten per trial: the most one etcd transaction may hold by default.
pub const KEYS_PER_TXN: usize = 128;

/// What one fan-out trial measured.
pub struct FanoutSample {
    /// Per watcher: from just before the transaction was sent until its view held the write.
    pub per_watcher: Vec<Duration>,
    /// From send until the last watcher held it.
    pub all_from_send: Duration,
    /// From the transaction's acknowledgement until the last watcher held it.
    pub all_from_ack: Duration,
    /// Round trip of the transaction itself (send to acknowledgement).
    pub commit: Duration,
}

/// Trial `k`: moves half of the table (buckets 00..7f on even trials, 80..ff on odd ones) from
/// each bucket's owner to the next member, in one transaction.
pub async fn trial(
    fleet: &Fleet,
    client: &mut Client,
    keys: &KeyLayout,
    members: &BTreeSet<NodeId>,
    k: usize,
) -> anyhow::Result<FanoutSample> {
    let members: Vec<&NodeId> = members.iter().collect();
    let view = fleet.view(0);
    let first = (k % 2) * KEYS_PER_TXN;
    let mut target: Vec<(Bucket, NodeId)> = Vec::with_capacity(KEYS_PER_TXN);
    for b in (first..first + KEYS_PER_TXN).map(|i| Bucket(i as u8)) {
        let owner = view.assignment[b.index()]
            .as_ref()
            .and_then(|a| a.owner.as_ref())
            .with_context(|| format!("bucket {b} is unassigned before fan-out trial {k}"))?;
        let Some(at) = members.iter().position(|m| *m == owner) else {
            bail!("bucket {b} names {owner}, not a member, before fan-out trial {k}");
        };
        target.push((b, members[(at + 1) % members.len()].clone()));
    }
    let ops: Vec<TxnOp> = target
        .iter()
        .map(|(b, n)| TxnOp::put(keys.assign(*b), n.as_str(), None))
        .collect();
    let target = Arc::new(target);
    let goal: Goal = Arc::new(move |v| {
        target.iter().all(|(b, n)| {
            v.assignment[b.index()]
                .as_ref()
                .and_then(|a| a.owner.as_ref())
                == Some(n)
        })
    });
    let armed = fleet.arm(goal).await;
    let sent = Instant::now();
    timeout(WAIT_LIMIT, client.txn(Txn::new().and_then(ops)))
        .await
        .with_context(|| format!("fan-out trial {k}: transaction timed out"))?
        .with_context(|| format!("fan-out trial {k}: transaction"))?;
    let acked = Instant::now();
    let met = armed
        .collect(&format!("fan-out trial {k}: {KEYS_PER_TXN} assign- writes"))
        .await?;
    let last = met.iter().copied().max().context("no watchers")?;
    Ok(FanoutSample {
        per_watcher: met.iter().map(|at| at.duration_since(sent)).collect(),
        all_from_send: last.duration_since(sent),
        all_from_ack: last.saturating_duration_since(acked),
        commit: acked.duration_since(sent),
    })
}
