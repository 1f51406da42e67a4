//! The leader's loop: place the buckets from the current view and write the changes, on every
//! membership change (debounced, so a burst of joins is one placement) and periodically, to
//! repair drift such as an `assign-xx` edited by hand.

use std::sync::Arc;
use std::time::Duration;

use dtable_core::etcd::{LeaseState, ViewRx, lease_lost};
use dtable_core::keys::REBALANCE_REQUEST;
use dtable_core::placement::{Policy, place_around};
use dtable_core::{ClusterView, NodeState};
use tokio::sync::watch;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use crate::handoff::{HandoffSettings, LeaderMemory, Verdict, split};
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
    /// Limits of planned moves.
    pub handoff: HandoffSettings,
}

/// The nodes and their states and weights: what a membership change changes.
fn membership(view: &ClusterView) -> Vec<(&str, NodeState, u32)> {
    view.nodes
        .values()
        .map(|n| (n.record.node_id.as_str(), n.record.state, n.record.weight))
        .collect()
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
    let mut memory = LeaderMemory::default();
    loop {
        let view: Arc<ClusterView> = view_rx.borrow_and_update().clone();
        let mut retry_soon = false;
        if view.revision >= min_revision {
            let empty = view.eligible().is_empty();
            if empty && !warned_empty {
                tracing::warn!(
                    "no node takes buckets (none registered and active, or all cordoned or drained); leaving the assignment as it is"
                );
            }
            warned_empty = empty;
            match reconcile(&writer, &view, settings, &mut memory).await {
                Ok(Pass::Settled) => {}
                Ok(Pass::Wrote(rev) | Pass::Stale(rev)) => min_revision = rev,
                Ok(Pass::Failed) => retry_soon = true,
                Err(stepdown) => return stepdown,
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
                // Let a burst of membership changes settle into one placement; other
                // changes (acks, moves, hand edits) are acted on at once.
                let newer = view_rx.borrow().clone();
                if membership(&newer) != membership(&view) {
                    tokio::select! {
                        _ = shutdown.cancelled() => return Stepdown::Shutdown,
                        _ = sleep(settings.debounce) => {}
                    }
                }
            }
            _ = sleep(next_pass) => {}
        }
    }
}

/// Tends the moves in flight, places the buckets from `view`, writes orphans directly and
/// starts handoffs for the rest. A rebalance request (an intent anyone may write) lifts the
/// move cap of `--auto-rebalance=false` once, and is cleared when carried out.
async fn reconcile(
    writer: &AssignmentWriter,
    view: &ClusterView,
    settings: LeaderSettings,
    memory: &mut LeaderMemory,
) -> Result<Pass, Stepdown> {
    let now = Instant::now();
    memory.observe(view, now, &settings.handoff);
    let mut outcome = Outcome::default();

    // 1. Moves in flight: commit the acknowledged ones, abandon the hopeless ones.
    for (&bucket, mv) in &view.moves {
        let result = match memory.verdict(view, bucket, now, &settings.handoff) {
            Verdict::Wait => continue,
            Verdict::Commit => {
                let r = writer.commit_move(view, bucket, mv).await;
                if let Ok(Some(_)) = r {
                    metrics::counter!("dtable_moves_total", "result" => "committed").increment(1);
                    tracing::info!(%bucket, from = %mv.from, to = %mv.to, move_id = mv.create_revision, "handoff committed");
                }
                r
            }
            Verdict::Abandon(why) => {
                let r = writer.abandon_move(bucket, mv.create_revision).await;
                if let Ok(Some(_)) = r {
                    metrics::counter!("dtable_moves_total", "result" => why).increment(1);
                    tracing::warn!(%bucket, from = %mv.from, to = %mv.to, move_id = mv.create_revision, reason = why, "move abandoned");
                }
                r
            }
        };
        outcome.note(result);
    }

    // Acks that arrived after their move ended (the releasing agent's view lagged) go.
    let live_acks: Vec<String> = view
        .moves
        .iter()
        .map(|(b, m)| dtable_core::keys::ack_name(*b, m.create_revision))
        .collect();
    for (name, (_, rev)) in view.cluster_keys.range("acks/".to_owned()..) {
        if !name.starts_with("acks/") {
            break;
        }
        if !live_acks.contains(name) {
            outcome.note(writer.delete_stale_ack(name, *rev).await);
        }
    }

    // 2. Placement, cordons applied: a cordoned node keeps its buckets and gets none, a
    // drained one is left out so its buckets move away by handoff. Buckets with a move in
    // flight count at their new owner and wait for the move to end.
    let nodes = memory.eligible(view);
    if nodes.is_empty() {
        return outcome.finish(writer, view).await;
    }
    let held = memory.held_back(view);
    if !held.is_empty() {
        tracing::debug!(?held, "returning nodes wait out the rejoin hold");
    }
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
    let placement = place_around(&view.table(), &view.moving_to(), &nodes, &policy);
    let (direct, handoffs) = split(view, placement.moves);

    if !direct.is_empty() {
        let result = writer.apply(view, &direct).await;
        if let Ok(WriteOutcome::Applied { .. }) = result {
            // Orphans had no live owner; the others belonged to servers that registered
            // themselves, which acknowledge no release (see `split`).
            let orphaned = direct
                .iter()
                .filter(|m| m.from.as_ref().is_none_or(|f| !view.nodes.contains_key(f)))
                .count();
            metrics::counter!("dtable_placement_moves_total").increment(direct.len() as u64);
            tracing::info!(
                orphaned,
                reassigned = direct.len() - orphaned,
                nodes = nodes.open.len(),
                "buckets placed directly"
            );
        }
        outcome.note(result.map(|w| match w {
            WriteOutcome::Applied { revision } => Some(revision),
            WriteOutcome::Rejected { .. } => None,
        }));
    }
    let room = settings
        .handoff
        .max_concurrent
        .saturating_sub(view.moves.len());
    for (bucket, from, to) in handoffs.iter().take(room) {
        let result = writer.start_move(view, *bucket, from, to).await;
        if let Ok(Some(id)) = result {
            metrics::counter!("dtable_moves_total", "result" => "started").increment(1);
            tracing::info!(%bucket, %from, %to, move_id = id, "handoff started");
        }
        outcome.note(result);
    }
    if handoffs.len() > room {
        tracing::debug!(
            waiting = handoffs.len() - room,
            "moves wait for a free slot"
        );
    }
    // The request stays until the cluster is balanced, so a leader change mid-rebalance
    // loses none of it.
    if let Some(rev) = request
        && handoffs.is_empty()
        && view.moves.is_empty()
        && outcome.rejected == 0
        && outcome.failed == 0
        && writer.clear_rebalance_request(rev).await.unwrap_or(false)
    {
        tracing::info!("rebalance request carried out");
    }
    outcome.finish(writer, view).await
}

/// Tally of one pass's writes.
#[derive(Default)]
struct Outcome {
    /// Highest commit revision.
    wrote: Option<i64>,
    rejected: usize,
    failed: usize,
}

impl Outcome {
    fn note(&mut self, result: Result<Option<i64>, etcd_client::Error>) {
        match result {
            Ok(Some(rev)) => self.wrote = Some(self.wrote.map_or(rev, |w| w.max(rev))),
            Ok(None) => self.rejected += 1,
            Err(e) => {
                tracing::warn!(error = %e, "placement write failed; retrying");
                self.failed += 1;
            }
        }
    }

    async fn finish(self, writer: &AssignmentWriter, view: &ClusterView) -> Result<Pass, Stepdown> {
        if self.rejected > 0 {
            if let Ok(false) = writer.still_leader().await {
                tracing::warn!("placement write rejected: no longer the leader");
                return Err(Stepdown::Deposed);
            }
            tracing::debug!(
                view_revision = view.revision,
                "a guarded write was rejected: view is stale; waiting for it to catch up"
            );
            return Ok(Pass::Stale(view.revision + 1));
        }
        if self.failed > 0 {
            return Ok(Pass::Failed);
        }
        Ok(self.wrote.map_or(Pass::Settled, Pass::Wrote))
    }
}
