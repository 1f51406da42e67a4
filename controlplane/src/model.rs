//! The API's records, built from one cluster view: the JSON bodies of the HTTP API and their
//! gRPC twins. Both transports answer from the same records, so they cannot drift apart.
//!
//! # JSON shapes
//!
//! A missing owner or node is the empty string `""`, as in the gRPC messages. Times are RFC
//! 3339 wall-clock strings, for humans only.
//!
//! ```text
//! NODE   = {"node_id", "node_url", "local_node_url", "state": "active"|"draining",
//!           "weight": N, "version", "bucket_count": N, "lease_id": N,
//!           "lease_ttl_seconds": N (-1 when unknown), "started_at",
//!           "role": "server"|"slave", "cordoned": bool (a cordon or drain intent exists),
//!           "draining": bool (the intent is a drain), "healthy": true}
//!   A slave (a read replica registered under dtable-cluster/slaves/) has role "slave",
//!   bucket_count 0 and is never cordoned or draining; it is registered only while its agent
//!   finds it healthy, so it is listed only while healthy. Lists hold the servers in node-id
//!   order, then the slaves in node-id order.
//! MOVE   = {"bucket": "3f", "from", "to", "started_at", "move_id": N, "acked": bool}
//! BUCKET = {"bucket": "3f", "node_id", "epoch": N, "moving": bool}
//! STATUS = {"revision": N, "leader": "<instance or empty>", "instance": "<this instance>",
//!           "this_instance_leads": bool, "buckets": [BUCKET x 256], "nodes": [NODE],
//!           "moves": [MOVE], "recent_events": [EVENT, newest last, at most 50]}
//! EVENT  = {"at": "<RFC 3339, ms>", "revision": N, "kind": ..., "text": "<one human line>", ...}
//!   kind "bucket":   "bucket", "from", "to", "epoch"
//!   kind "move":     "phase": "started"|"acked"|"ended", "move": MOVE
//!   kind "node":     "change": "joined"|"left"|"changed", "node_id",
//!                    "role": "server"|"slave", "node": NODE or null
//!   kind "leader":   "leader"
//!   kind "snapshot": every field of STATUS (only first on a stream, or after it lagged)
//! PLAN   = {"requested": bool, "revision": N, "planned_moves": [{"bucket", "from", "to"}]}
//! INTENT = {"node_id", "key": "dtable-cluster/cordon/<node_id>", "revision": N, "message"}
//! ERROR  = {"code": "bad_uuid"|"not_ready"|"unknown_node"|"bad_request"|"etcd_error"|
//!           "etcd_timeout", "error": "<one human line>"}
//! ```

use std::collections::HashMap;

use dtable_core::keys::ack_name;
use dtable_core::node::{ROLE_SERVER, ROLE_SLAVE};
use dtable_core::view::{CordonMode, MoveEntry, NodeEntry, SlaveEntry};
use dtable_core::{Bucket, ClusterView};
use dtable_core::{NodeRecord, NodeState};
use dtable_proto::v1 as pb;
use serde::Serialize;

/// Seconds left on each lease, by lease id, as far as they are known.
pub type LeaseTtlMap = HashMap<i64, i64>;

/// One registered node (NODE).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeInfo {
    /// The node id, also its etcd key.
    pub node_id: String,
    /// Browser-facing URL.
    pub node_url: String,
    /// LAN URL.
    pub local_node_url: String,
    /// "active" or "draining", as the node registered itself.
    pub state: String,
    /// Relative share of the buckets.
    pub weight: u32,
    /// Version of its agent.
    pub version: String,
    /// Buckets assigned to it.
    pub bucket_count: u32,
    /// The etcd lease its key hangs on (0 for none).
    pub lease_id: i64,
    /// Seconds left on that lease as etcd reports it; -1 when unknown.
    pub lease_ttl_seconds: i64,
    /// When it registered, as it says.
    pub started_at: String,
    /// "server" for bucket owners, "slave" for read replicas.
    pub role: String,
    /// A cordon or drain intent exists for it.
    pub cordoned: bool,
    /// The intent is a drain: its buckets are being moved away.
    pub draining: bool,
    /// Servers and slaves are registered only while healthy, so always true here.
    pub healthy: bool,
}

/// A node state as the API spells it.
fn state_name(state: NodeState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl NodeInfo {
    /// The record of `node` in `view`, with its lease's TTL from `ttls` when known.
    pub fn of(view: &ClusterView, node: &NodeEntry, ttls: &LeaseTtlMap) -> NodeInfo {
        let id = &node.record.node_id;
        let bucket_count = view
            .assignment
            .iter()
            .flatten()
            .filter(|a| a.owner.as_ref() == Some(id))
            .count();
        let cordon = view.cordons.get(id).map(|c| c.intent.mode);
        NodeInfo {
            bucket_count: bucket_count as u32,
            cordoned: cordon.is_some(),
            draining: cordon == Some(CordonMode::Drain),
            ..NodeInfo::registered(&node.record, ROLE_SERVER, node.lease, ttls)
        }
    }

    /// The record of the slave `slave`: it owns no bucket and is never cordoned.
    pub fn of_slave(slave: &SlaveEntry, ttls: &LeaseTtlMap) -> NodeInfo {
        NodeInfo::registered(&slave.record, ROLE_SLAVE, slave.lease, ttls)
    }

    /// What a registration says, before buckets and cordons.
    fn registered(record: &NodeRecord, role: &str, lease: i64, ttls: &LeaseTtlMap) -> NodeInfo {
        NodeInfo {
            node_id: record.node_id.to_string(),
            node_url: record.node_url.clone(),
            local_node_url: record.local_node_url.clone(),
            state: state_name(record.state),
            weight: record.weight,
            version: record.version.clone(),
            bucket_count: 0,
            lease_id: lease,
            lease_ttl_seconds: ttls.get(&lease).copied().unwrap_or(-1),
            started_at: record.started_at.clone(),
            role: role.to_owned(),
            cordoned: false,
            draining: false,
            healthy: true,
        }
    }

    /// Every registered server of `view` in node-id order, then every registered slave in
    /// node-id order.
    pub fn all(view: &ClusterView, ttls: &LeaseTtlMap) -> Vec<NodeInfo> {
        let servers = view.nodes.values().map(|n| NodeInfo::of(view, n, ttls));
        let slaves = view.slaves.values().map(|s| NodeInfo::of_slave(s, ttls));
        servers.chain(slaves).collect()
    }

    /// The leases of every registration `view` holds, servers' and slaves', for their TTLs.
    pub fn leases(view: &ClusterView) -> impl Iterator<Item = i64> + '_ {
        let servers = view.nodes.values().map(|n| n.lease);
        servers.chain(view.slaves.values().map(|s| s.lease))
    }
}

impl From<NodeInfo> for pb::Node {
    fn from(n: NodeInfo) -> pb::Node {
        pb::Node {
            node_id: n.node_id,
            node_url: n.node_url,
            local_node_url: n.local_node_url,
            state: n.state,
            weight: n.weight,
            version: n.version,
            bucket_count: n.bucket_count,
            lease_id: n.lease_id,
            cordoned: n.cordoned,
            draining: n.draining,
            lease_ttl_seconds: n.lease_ttl_seconds,
            started_at: n.started_at,
            role: n.role,
            healthy: n.healthy,
        }
    }
}

/// One planned move in flight (MOVE).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MoveInfo {
    /// The bucket, two lowercase hex characters.
    pub bucket: String,
    /// Releasing node.
    pub from: String,
    /// Acquiring node.
    pub to: String,
    /// Wall-clock start as the leader wrote it.
    pub started_at: String,
    /// create_revision of `dtable-cluster/moves/<bucket>`.
    pub move_id: i64,
    /// The releasing node's agent acknowledged the release (its ack key exists).
    pub acked: bool,
}

impl MoveInfo {
    /// The record of the move of `bucket` in `view`.
    pub fn of(view: &ClusterView, bucket: Bucket, mv: &MoveEntry) -> MoveInfo {
        MoveInfo {
            bucket: bucket.to_string(),
            from: mv.from.clone(),
            to: mv.to.clone(),
            started_at: mv.started_at.clone(),
            move_id: mv.create_revision,
            acked: view
                .cluster_keys
                .contains_key(&ack_name(bucket, mv.create_revision)),
        }
    }

    /// Every move in flight in `view`, in bucket order.
    pub fn all(view: &ClusterView) -> Vec<MoveInfo> {
        view.moves
            .iter()
            .map(|(b, m)| MoveInfo::of(view, *b, m))
            .collect()
    }
}

impl From<MoveInfo> for pb::Move {
    fn from(m: MoveInfo) -> pb::Move {
        pb::Move {
            bucket: m.bucket,
            from: m.from,
            to: m.to,
            started_at: m.started_at,
            move_id: m.move_id,
            acked: m.acked,
        }
    }
}

/// One bucket of the map (BUCKET).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BucketInfo {
    /// The bucket, two lowercase hex characters.
    pub bucket: String,
    /// The node `assign-<bucket>` names, as stored; empty when unassigned.
    pub node_id: String,
    /// mod_revision of `assign-<bucket>`, 0 when unassigned.
    pub epoch: i64,
    /// A planned move of the bucket is in flight.
    pub moving: bool,
}

impl BucketInfo {
    /// All 256 buckets of `view`, `00` first.
    pub fn all(view: &ClusterView) -> Vec<BucketInfo> {
        Bucket::all()
            .map(|b| {
                let a = view.assignment[b.index()].as_ref();
                BucketInfo {
                    bucket: b.to_string(),
                    node_id: a.map(|a| a.raw.clone()).unwrap_or_default(),
                    epoch: a.map_or(0, |a| a.mod_revision),
                    moving: view.moves.contains_key(&b),
                }
            })
            .collect()
    }
}

/// The bucket map as the gRPC `Assignment`.
pub fn assignment(view: &ClusterView) -> pb::Assignment {
    pb::Assignment {
        revision: view.revision,
        buckets: BucketInfo::all(view)
            .into_iter()
            .map(|b| pb::BucketOwner {
                bucket: b.bucket,
                node_id: b.node_id,
                epoch: b.epoch,
            })
            .collect(),
    }
}

/// The gRPC `Snapshot`: the bucket map, the nodes and the moves of one view.
pub fn snapshot(view: &ClusterView, ttls: &LeaseTtlMap) -> pb::Snapshot {
    pb::Snapshot {
        assignment: Some(assignment(view)),
        nodes: NodeInfo::all(view, ttls)
            .into_iter()
            .map(Into::into)
            .collect(),
        moves: MoveInfo::all(view).into_iter().map(Into::into).collect(),
    }
}

/// Everything the status page shows at once (STATUS).
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// etcd revision of the view.
    pub revision: i64,
    /// The leading instance as the election keys show it; empty when none leads.
    pub leader: String,
    /// This instance's name.
    pub instance: String,
    /// Whether this instance leads.
    pub this_instance_leads: bool,
    /// All 256 buckets.
    pub buckets: Vec<BucketInfo>,
    /// Registered nodes.
    pub nodes: Vec<NodeInfo>,
    /// Moves in flight.
    pub moves: Vec<MoveInfo>,
    /// The latest events, newest last.
    pub recent_events: Vec<crate::events::Event>,
}

/// One move a rebalance plans.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedMove {
    /// The bucket.
    pub bucket: String,
    /// Current owner; empty for an unassigned bucket.
    pub from: String,
    /// Next owner; empty when no node can take it.
    pub to: String,
}

/// The answer to a rebalance request (PLAN).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RebalancePlan {
    /// Whether the request was written (false for a dry run).
    pub requested: bool,
    /// Revision of the view the plan was computed from.
    pub revision: i64,
    /// What the leader's placement would do from that view.
    pub planned_moves: Vec<PlannedMove>,
}

impl From<RebalancePlan> for pb::RebalanceResponse {
    fn from(p: RebalancePlan) -> pb::RebalanceResponse {
        pb::RebalanceResponse {
            requested: p.requested,
            revision: p.revision,
            planned_moves: p
                .planned_moves
                .into_iter()
                .map(|m| pb::PlannedMove {
                    bucket: m.bucket,
                    from: m.from,
                    to: m.to,
                })
                .collect(),
        }
    }
}

/// The answer to a cordon, drain or uncordon (INTENT).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IntentDone {
    /// The node.
    pub node_id: String,
    /// The intent key written or deleted, relative to the key prefix.
    pub key: String,
    /// etcd revision of the write (or of the key as it stands, when nothing had to change).
    pub revision: i64,
    /// One human line: what happens now.
    pub message: String,
}

impl From<IntentDone> for pb::IntentResponse {
    fn from(i: IntentDone) -> pb::IntentResponse {
        pb::IntentResponse {
            node_id: i.node_id,
            key: i.key,
            revision: i.revision,
            message: i.message,
        }
    }
}
