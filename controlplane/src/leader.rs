//! The leader's loop: place the buckets from the current view and write the changes, on every
//! membership change (debounced, so a burst of joins is one placement) and periodically, to
//! repair drift such as an `assign-xx` edited by hand.

use std::sync::Arc;
use std::time::Duration;

use dtable_core::etcd::{LeaseState, ViewRx, lease_lost};
use dtable_core::placement::{Eligible, Policy, place};
use dtable_core::{ClusterView, NodeState};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};
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

/// Timers of the leader loop.
#[derive(Clone, Copy, Debug)]
pub struct LeaderTimers {
    /// Quiet time after a view change before placing.
    pub debounce: Duration,
    /// Period of full re-checks.
    pub repair_interval: Duration,
}

/// The eligible nodes of a view: registered and active.
pub fn eligible(view: &ClusterView) -> Vec<Eligible> {
    view.nodes
        .values()
        .filter(|n| n.record.state == NodeState::Active)
        .map(|n| Eligible {
            node: n.record.node_id.clone(),
            weight: n.record.weight,
        })
        .collect()
}

/// Leads until shutdown, lease loss or deposition. `since` is the revision at which we won
/// the election: we act only on views at least that new, so we see what our predecessor wrote.
pub async fn lead(
    writer: AssignmentWriter,
    mut view_rx: ViewRx,
    mut lease_rx: watch::Receiver<LeaseState>,
    since: i64,
    timers: LeaderTimers,
    shutdown: CancellationToken,
) -> Stepdown {
    let policy = Policy::default();
    let mut next_repair = Instant::now();
    let mut min_revision = since;
    let mut warned_empty = false;
    loop {
        let view: Arc<ClusterView> = view_rx.borrow_and_update().clone();
        if view.revision >= min_revision {
            let nodes = eligible(&view);
            if nodes.is_empty() {
                if !warned_empty {
                    tracing::warn!(
                        "no eligible node is registered; leaving the assignment as it is"
                    );
                    warned_empty = true;
                }
            } else {
                warned_empty = false;
                let placement = place(&view.table(), &nodes, &policy);
                if !placement.moves.is_empty() {
                    match writer.apply(&view, &placement.moves).await {
                        Ok(WriteOutcome::Applied { revision }) => {
                            let orphans = placement
                                .moves
                                .iter()
                                .filter(|m| {
                                    m.from.as_ref().is_none_or(|f| !view.nodes.contains_key(f))
                                })
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
                            min_revision = revision;
                        }
                        Ok(WriteOutcome::Rejected { applied, revision }) => {
                            match writer.still_leader().await {
                                Ok(false) => {
                                    tracing::warn!(
                                        "placement write rejected: no longer the leader"
                                    );
                                    return Stepdown::Deposed;
                                }
                                _ => {
                                    tracing::info!(
                                        applied,
                                        revision,
                                        view_revision = view.revision,
                                        "placement write rejected: view is stale; waiting for it to catch up"
                                    );
                                    min_revision = revision;
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "placement write failed; retrying");
                            tokio::select! {
                                _ = shutdown.cancelled() => return Stepdown::Shutdown,
                                _ = sleep(Duration::from_millis(500)) => {}
                            }
                            continue;
                        }
                    }
                }
            }
            next_repair = Instant::now() + timers.repair_interval;
        }
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
                    _ = sleep(timers.debounce) => {}
                }
                next_repair = Instant::now();
            }
            _ = sleep_until(next_repair) => {}
        }
    }
}
