//! Planned moves as release-then-acquire handoffs, and what the leader remembers between
//! passes: when it first saw each move (timeouts run on the leader's own monotonic clock, never
//! on wall clocks compared across hosts) and when each node left (so a flapping node waits out
//! the rejoin hold before it gets buckets again).

use std::collections::HashMap;
use std::time::Duration;

use dtable_core::keys::ack_name;
use dtable_core::placement::{Candidates, Move};
use dtable_core::{Bucket, ClusterView, NodeId};
use tokio::time::Instant;

/// Limits of planned moves.
#[derive(Clone, Copy, Debug)]
pub struct HandoffSettings {
    /// A move whose release is not acknowledged within this time is abandoned.
    pub release_timeout: Duration,
    /// At most this many moves in flight at once.
    pub max_concurrent: usize,
    /// A node that left less than this long ago gets no buckets when it returns.
    pub rejoin_hold: Duration,
}

/// What to do with a move in flight.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Released and acknowledged: give the bucket to its new owner.
    Commit,
    /// Give up; the bucket stays with (or falls back to failover from) its owner. The reason
    /// is for logs and the metric label.
    Abandon(&'static str),
    /// Still waiting for the release.
    Wait,
}

/// The leader's memory between passes. Rebuilt from nothing by a new leader.
#[derive(Debug, Default)]
pub struct LeaderMemory {
    /// (bucket, move id) → when this leader first saw the move.
    first_seen: HashMap<(Bucket, i64), Instant>,
    /// Nodes seen registered in the last pass.
    present: Vec<NodeId>,
    /// Node → when this leader saw it leave.
    departed: HashMap<NodeId, Instant>,
}

impl LeaderMemory {
    /// Notes the moves and nodes of a new view.
    pub fn observe(&mut self, view: &ClusterView, now: Instant, settings: &HandoffSettings) {
        self.first_seen
            .retain(|(b, id), _| view.moves.get(b).is_some_and(|m| m.create_revision == *id));
        for (b, m) in &view.moves {
            self.first_seen
                .entry((*b, m.create_revision))
                .or_insert(now);
        }
        for gone in self.present.iter().filter(|n| !view.nodes.contains_key(*n)) {
            self.departed.insert(gone.clone(), now);
        }
        self.present = view.nodes.keys().cloned().collect();
        self.departed
            .retain(|_, left| now.duration_since(*left) < settings.rejoin_hold);
    }

    /// Eligible nodes of the view (cordons applied), less those still within their rejoin
    /// hold.
    pub fn eligible(&self, view: &ClusterView) -> Candidates {
        let mut c = view.eligible();
        c.open.retain(|e| !self.departed.contains_key(&e.node));
        c.cordoned.retain(|n| !self.departed.contains_key(n));
        c
    }

    /// Nodes held back right now, for logs.
    pub fn held_back(&self, view: &ClusterView) -> Vec<&NodeId> {
        self.departed
            .keys()
            .filter(|n| view.nodes.contains_key(*n))
            .collect()
    }

    /// Judges the move of `bucket` in flight.
    pub fn verdict(
        &self,
        view: &ClusterView,
        bucket: Bucket,
        now: Instant,
        settings: &HandoffSettings,
    ) -> Verdict {
        let Some(mv) = view.moves.get(&bucket) else {
            return Verdict::Wait;
        };
        let from_alive = NodeId::new(mv.from.clone()).is_ok_and(|n| view.nodes.contains_key(&n));
        // The new owner must still take buckets: registered, active, not cordoned or drained
        // since the move began, and not within its rejoin hold.
        let to_ok = NodeId::new(mv.to.clone())
            .is_ok_and(|n| view.accepts_buckets(&n) && !self.departed.contains_key(&n));
        let owner_is_from = view.assignment[bucket.index()]
            .as_ref()
            .is_some_and(|a| a.raw == mv.from);
        if !from_alive {
            return Verdict::Abandon("old_owner_gone");
        }
        if !owner_is_from
            || view.assignment[bucket.index()]
                .as_ref()
                .is_some_and(|a| a.mod_revision >= mv.create_revision)
        {
            return Verdict::Abandon("assignment_changed");
        }
        if !to_ok {
            return Verdict::Abandon("new_owner_unavailable");
        }
        if view
            .cluster_keys
            .contains_key(&ack_name(bucket, mv.create_revision))
        {
            return Verdict::Commit;
        }
        let seen = self
            .first_seen
            .get(&(bucket, mv.create_revision))
            .copied()
            .unwrap_or(now);
        if now.duration_since(seen) >= settings.release_timeout {
            return Verdict::Abandon("release_timeout");
        }
        Verdict::Wait
    }
}

/// Splits placement moves: buckets whose owner is a live node registered by a managed agent
/// move by handoff; the others (unassigned, owned by a node that is gone, or by a server that
/// registered itself and so acknowledges no release) are written directly.
pub fn split(view: &ClusterView, moves: Vec<Move>) -> (Vec<Move>, Vec<(Bucket, NodeId, NodeId)>) {
    let mut direct = Vec::new();
    let mut handoffs = Vec::new();
    for m in moves {
        match (&m.from, &m.to) {
            (Some(from), Some(to))
                if view.nodes.get(from).is_some_and(|n| n.record.hands_off()) =>
            {
                handoffs.push((m.bucket, from.clone(), to.clone()));
            }
            _ => direct.push(m),
        }
    }
    (direct, handoffs)
}
