//! The leader's loop: place the buckets from the current view and write the changes, on every
//! membership change (debounced, so a burst of joins is one placement) and periodically, to
//! repair drift such as an `assign-xx` edited by hand.

use std::sync::Arc;
use std::time::Duration;

use dtable_core::ClusterView;
use dtable_core::etcd::{LeaseState, ViewRx, lease_lost};
use dtable_core::keys::REBALANCE_REQUEST;
use dtable_core::placement::{Policy, place};
use tokio::sync::watch;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;

use crate::writer::{AssignmentWriter, WriteOutcome};

/// Why the leader loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Stepdown {
    /// Shutdown was requested.
    Shutdown,
    /// The election lease was lost.
    LeaseLost,
    /// The election key is gone or belongs to someone else.
    Deposed,
}

/// Settings of the leader loop.
#[derive(Clone, Copy, Debug)]
pub struct LeaderSettings {
    /// Quiet time after a view change before placing.
    pub debounce: Duration,
    /// Period of full re-checks.
    pub repair_interval: Duration,
    /// Rebalance between live nodes without a request.
    pub auto_rebalance: bool,
}

/// What one reconciliation pass came to.
enum Pass {
    /// The assignment matches the placement (or nothing can be placed).
    Settled,
    /// Written; act only on views at or past this revision from now on.
    Wrote(i64),
    /// A guard failed on a stale view; wait for the view to reach this revision.
    Stale(i64),
    /// etcd failed; try again shortly.
    Failed,
}

/// Leads until shutdown, lease loss or deposition. `since` is the revision at which we won
/// the election: we act only on views at least that new, so we see what our predecessor wrote.
pub async fn lead(
    writer: AssignmentWriter,
    mut view_rx: ViewRx,
    mut lease_rx: watch::Receiver<LeaseState>,
    since: i64,
    settings: LeaderSettings,
    shutdown: CancellationToken,
) -> Stepdown {
    let mut min_revision = since;
    let mut warned_empty = false;
    loop {
        let view: Arc<ClusterView> = view_rx.borrow_and_update().clone();
        let mut retry_soon = false;
        if view.revision >= min_revision {
            if view.eligible().is_empty() {
                if !warned_empty {
                    tracing::warn!(
                        "no eligible node is registered; leaving the assignment as it is"
                    );
                }
                warned_empty = true;
            } else {
                warned_empty = false;
                match reconcile(&writer, &view, settings).await {
                    Ok(Pass::Settled) => {}
                    Ok(Pass::Wrote(rev) | Pass::Stale(rev)) => min_revision = rev,
                    Ok(Pass::Failed) => retry_soon = true,
                    Err(stepdown) => return stepdown,
                }
            }
        }
        let next_pass = if retry_soon {
            Duration::from_millis(500)
        } else {
            settings.repair_interval
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Stepdown::Shutdown,
            _ = lease_lost(&mut lease_rx) => return Stepdown::LeaseLost,
            changed = view_rx.changed() => {
                if changed.is_err() {
                    return Stepdown::Shutdown;
                }
                // Let a burst of changes settle into one placement.
                tokio::select! {
                    _ = shutdown.cancelled() => return Stepdown::Shutdown,
                    _ = sleep(settings.debounce) => {}
                }
            }
            _ = sleep(next_pass) => {}
        }
    }
}

/// Places the buckets from `view` and writes the difference. A rebalance request (an intent
/// anyone may write) lifts the move cap of `--auto-rebalance=false` once, and is cleared when
/// carried out.
async fn reconcile(
    writer: &AssignmentWriter,
    view: &ClusterView,
    settings: LeaderSettings,
) -> Result<Pass, Stepdown> {
    let nodes = view.eligible();
    let request = view
        .cluster_keys
        .get(REBALANCE_REQUEST)
        .map(|(_, rev)| *rev);
    let policy = if settings.auto_rebalance || request.is_some() {
        Policy::default()
    } else {
        Policy {
            max_rebalance_moves: Some(0),
        }
    };
    let placement = place(&view.table(), &nodes, &policy);
    let pass = if placement.moves.is_empty() {
        Pass::Settled
    } else {
        match writer.apply(view, &placement.moves).await {
            Ok(WriteOutcome::Applied { revision }) => {
                let orphans = placement
                    .moves
                    .iter()
                    .filter(|m| m.from.as_ref().is_none_or(|f| !view.nodes.contains_key(f)))
                    .count();
                metrics::counter!("dtable_placement_moves_total")
                    .increment(placement.moves.len() as u64);
                tracing::info!(
                    moved = placement.moves.len(),
                    orphans_placed = orphans,
                    rebalanced = placement.moves.len() - orphans,
                    nodes = nodes.len(),
                    revision,
                    "assignment written"
                );
                Pass::Wrote(revision)
            }
            Ok(WriteOutcome::Rejected { applied, revision }) => {
                if let Ok(false) = writer.still_leader().await {
                    tracing::warn!("placement write rejected: no longer the leader");
                    return Err(Stepdown::Deposed);
                }
                tracing::info!(
                    applied,
                    revision,
                    view_revision = view.revision,
                    "placement write rejected: view is stale; waiting for it to catch up"
                );
                return Ok(Pass::Stale(revision));
            }
            Err(e) => {
                tracing::warn!(error = %e, "placement write failed; retrying");
                return Ok(Pass::Failed);
            }
        }
    };
    if let Some(rev) = request
        && writer.clear_rebalance_request(rev).await.unwrap_or(false)
    {
        tracing::info!(
            moved = placement.moves.len(),
            "rebalance request carried out"
        );
    }
    Ok(pass)
}
