//! Placement: a pure function from (current assignment, nodes, policy) to (new assignment,
//! moves). No I/O, so the control plane rebuilds it from etcd at any time and plain tests can
//! prove its properties.
//!
//! Each open node (one that takes new buckets) ends with floor or ceil of its weighted share
//! of the buckets that cordoned nodes do not hold. The spare ceil slots go to the nodes that
//! already hold more than their floor, most first, so that as few buckets as possible move.
//! A bucket stays where it is unless its node is gone, ineligible, or over its target; a
//! cordoned node keeps every bucket it holds and receives none.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use crate::bucket::{BUCKET_COUNT, Bucket};
use crate::node::NodeId;

/// Who owns each bucket: index = bucket number; `None` = unassigned.
pub type Table = Vec<Option<NodeId>>;

/// A node that may hold buckets, with its relative weight (at least 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eligible {
    /// The node.
    pub node: NodeId,
    /// Relative share; a node of weight 2 gets twice the buckets of a node of weight 1.
    pub weight: u32,
}

/// The nodes of a placement run: the open ones, which take buckets, and the cordoned ones,
/// which keep what they hold and receive nothing. Any node in neither list (gone, draining,
/// drained) loses its buckets.
///
/// `ClusterView::eligible` builds one with the cordons applied, so that any process computes
/// the leader's plan with
/// `place_around(&view.table(), &view.moving_to(), &view.eligible(), &policy)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Candidates {
    /// Nodes that may receive buckets.
    pub open: Vec<Eligible>,
    /// Cordoned nodes: they keep their buckets, receive none, and give none up for balance.
    pub cordoned: Vec<NodeId>,
}

impl Candidates {
    /// Whether no node can receive a bucket.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// Anything [`place`] can place over: a plain list of open nodes (nothing cordoned) or
/// [`Candidates`].
pub trait NodeSet {
    /// Nodes that may receive buckets.
    fn open(&self) -> &[Eligible];
    /// Nodes that keep what they hold and receive nothing; a node in both lists is cordoned.
    fn cordoned(&self) -> &[NodeId] {
        &[]
    }
}

impl NodeSet for [Eligible] {
    fn open(&self) -> &[Eligible] {
        self
    }
}

impl NodeSet for Vec<Eligible> {
    fn open(&self) -> &[Eligible] {
        self
    }
}

impl<const N: usize> NodeSet for [Eligible; N] {
    fn open(&self) -> &[Eligible] {
        self
    }
}

impl NodeSet for Candidates {
    fn open(&self) -> &[Eligible] {
        &self.open
    }
    fn cordoned(&self) -> &[NodeId] {
        &self.cordoned
    }
}

/// Knobs of the placement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// At most this many moves between live nodes per run (orphans are always placed);
    /// `None` for no cap.
    pub max_rebalance_moves: Option<usize>,
}

/// One bucket changing hands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    /// The bucket.
    pub bucket: Bucket,
    /// Its owner before; `None` when it was unassigned.
    pub from: Option<NodeId>,
    /// Its owner after; `None` when no node is eligible.
    pub to: Option<NodeId>,
}

/// The result of a placement run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The assignment to write.
    pub table: Table,
    /// The buckets whose owner changes, in bucket order.
    pub moves: Vec<Move>,
}

/// How many buckets each node should hold: floor or ceil of its weighted share, summing to
/// 256, with the spare ceil slots given to the nodes holding the most above their floor
/// (ties by node id). `nodes` must be free of duplicates.
pub fn targets(current: &[Option<NodeId>], nodes: &[Eligible]) -> BTreeMap<NodeId, usize> {
    shares(current, nodes, BUCKET_COUNT)
}

/// [`targets`] for `buckets` buckets: the ones left once cordoned nodes keep theirs.
fn shares(
    current: &[Option<NodeId>],
    nodes: &[Eligible],
    buckets: usize,
) -> BTreeMap<NodeId, usize> {
    let total: u64 = nodes.iter().map(|n| u64::from(n.weight)).sum();
    if total == 0 {
        return BTreeMap::new();
    }
    let mut held: BTreeMap<&NodeId, usize> = BTreeMap::new();
    for owner in current.iter().flatten() {
        *held.entry(owner).or_default() += 1;
    }
    let mut out = BTreeMap::new();
    // (excess over floor, node) for the nodes whose share is fractional, so ceil = floor + 1.
    let mut fractional = Vec::new();
    let mut assigned = 0usize;
    for n in nodes {
        let share = buckets as u64 * u64::from(n.weight);
        let floor = (share / total) as usize;
        if !share.is_multiple_of(total) {
            let have = held.get(&n.node).copied().unwrap_or(0);
            fractional.push((have.saturating_sub(floor), &n.node));
        }
        assigned += floor;
        out.insert(n.node.clone(), floor);
    }
    // Most excess first; ties by node id, ascending.
    fractional.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let spare = buckets - assigned;
    for (_, node) in fractional.into_iter().take(spare) {
        *out.get_mut(node).expect("target exists") += 1;
    }
    out
}

/// Places the 256 buckets over `nodes`, moving as few as possible.
///
/// `current` has one slot per bucket and may name nodes that are unknown or ineligible; their
/// buckets are re-placed. The buckets of cordoned nodes stay; the open nodes are balanced over
/// the rest. Deterministic, and idempotent: placing its own output moves nothing.
pub fn place<N: NodeSet + ?Sized>(
    current: &[Option<NodeId>],
    nodes: &N,
    policy: &Policy,
) -> Placement {
    assert_eq!(
        current.len(),
        BUCKET_COUNT,
        "a table has one slot per bucket"
    );
    let cordoned: BTreeSet<&NodeId> = nodes.cordoned().iter().collect();
    let mut open: Vec<Eligible> = nodes
        .open()
        .iter()
        .filter(|n| !cordoned.contains(&n.node))
        .cloned()
        .collect();
    open.sort_by(|a, b| a.node.cmp(&b.node));
    open.dedup_by(|a, b| a.node == b.node);

    let mut table: Table = vec![None; BUCKET_COUNT];
    let mut pinned = 0;
    for (i, owner) in current.iter().enumerate() {
        if let Some(owner) = owner.as_ref().filter(|o| cordoned.contains(o)) {
            table[i] = Some(owner.clone());
            pinned += 1;
        }
    }
    let target = shares(current, &open, BUCKET_COUNT - pinned);

    let mut kept: BTreeMap<&NodeId, usize> = BTreeMap::new();
    let mut free = Vec::new();
    let mut surplus = Vec::new();
    for (i, owner) in current.iter().enumerate() {
        if table[i].is_some() {
            continue; // a cordoned node's
        }
        match owner.as_ref().and_then(|o| target.get_key_value(o)) {
            Some((node, &want)) => {
                let have = kept.entry(node).or_default();
                if *have < want {
                    *have += 1;
                    table[i] = Some(node.clone());
                } else {
                    surplus.push(i);
                }
            }
            None => free.push(i),
        }
    }

    // Surplus buckets of live nodes move only within the policy's cap; the rest stay put,
    // over target, until a later run.
    let cap = policy.max_rebalance_moves.unwrap_or(usize::MAX);
    for (n, i) in surplus.into_iter().enumerate() {
        if n < cap {
            free.push(i);
        } else {
            let owner = current[i].clone().expect("surplus has an owner");
            *kept
                .entry(target.get_key_value(&owner).expect("live").0)
                .or_default() += 1;
            table[i] = Some(owner);
        }
    }
    free.sort_unstable();

    // Hand the free buckets to the nodes furthest below target, ties by node id: a max-heap
    // on (deficit, reversed id), so each bucket costs O(log nodes).
    let mut deficit: BinaryHeap<(usize, Reverse<&NodeId>)> = target
        .iter()
        .map(|(node, &want)| {
            let have = kept.get(node).copied().unwrap_or(0);
            (want.saturating_sub(have), Reverse(node))
        })
        .filter(|(d, _)| *d > 0)
        .collect();
    for i in free {
        match deficit.pop() {
            Some((d, Reverse(node))) => {
                table[i] = Some(node.clone());
                if d > 1 {
                    deficit.push((d - 1, Reverse(node)));
                }
            }
            None => table[i] = None,
        }
    }

    let moves = Bucket::all()
        .filter(|b| current[b.index()] != table[b.index()])
        .map(|b| Move {
            bucket: b,
            from: current[b.index()].clone(),
            to: table[b.index()].clone(),
        })
        .collect();
    Placement { table, moves }
}

/// [`place`] around the moves in flight, as the leader plans: each bucket of `in_flight`
/// counts at the node it is moving to (where it is, if its move names no valid node), and
/// gets no move of its own until its move ends.
///
/// Placing over the assignment as it stands would count those buckets at their old owner and
/// send their new owner that many more, so a scale-out would overshoot and move some buckets
/// twice (there and back). A move that is abandoned leaves its bucket short of its target for
/// one pass; the next pass, over the assignment it left, places it again.
pub fn place_around<N: NodeSet + ?Sized>(
    current: &[Option<NodeId>],
    in_flight: &BTreeMap<Bucket, Option<NodeId>>,
    nodes: &N,
    policy: &Policy,
) -> Placement {
    let mut landed = current.to_vec();
    for (bucket, to) in in_flight {
        if let Some(to) = to {
            landed[bucket.index()] = Some(to.clone());
        }
    }
    let mut placement = place(&landed, nodes, policy);
    placement
        .moves
        .retain(|m| !in_flight.contains_key(&m.bucket));
    placement
}

#[cfg(test)]
mod tests;
