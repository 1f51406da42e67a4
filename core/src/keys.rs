//! The etcd key layout. SeaTable's dtable-web reads `assign-<xx>` and the `dtable-server-`
//! prefix directly, so those keys sit at the root of the (optional) namespace.

use crate::bucket::Bucket;
use crate::node::{NODE_ID_PREFIX, NodeId};

/// Prefix of the assignment keys, `assign-<xx>`.
pub const ASSIGN_PREFIX: &str = "assign-";
/// Everything else of ours lives under this prefix.
pub const CLUSTER_PREFIX: &str = "dtable-cluster/";
/// A full-rebalance request (an intent any instance may write), relative to
/// [`CLUSTER_PREFIX`].
pub const REBALANCE_REQUEST: &str = "requests/rebalance";

/// The election name the control planes campaign on, relative to [`CLUSTER_PREFIX`]. etcd
/// puts each candidate's key at `election/<lease id in hex>`, valued with its instance name.
pub const ELECTION: &str = "election";

/// Cordon and drain intents, relative to [`CLUSTER_PREFIX`]: `cordon/<node_id>`.
pub const CORDON_PREFIX: &str = "cordon/";

/// Read-replica (slave) registrations, relative to [`CLUSTER_PREFIX`]: `slaves/<node_id>`.
/// Slaves live here and never at the root, so dtable-web's `dtable-server-` scan and the
/// placement never see them.
pub const SLAVES_PREFIX: &str = "slaves/";

/// The name of a node's cordon intent relative to [`CLUSTER_PREFIX`]: `cordon/<node_id>`.
pub fn cordon_name(node: &NodeId) -> String {
    format!("{CORDON_PREFIX}{node}")
}

/// The name of a release ack relative to [`CLUSTER_PREFIX`], as the view's `cluster_keys`
/// holds it.
pub fn ack_name(bucket: Bucket, move_id: i64) -> String {
    format!("acks/{bucket}/{move_id}")
}

/// Builds and classifies keys under an optional namespace prefix.
///
/// The prefix must stay empty wherever dtable-web reads the keys; it exists for test isolation
/// and for non-SeaTable use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyLayout {
    prefix: String,
}

/// What a key under the namespace stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// `<node_id>`: a server registration.
    Node(String),
    /// `assign-<xx>`: the owner of a bucket.
    Assign(Bucket),
    /// `assign-<something else>`: a key that looks like an assignment but names no bucket.
    BadAssign(String),
    /// `dtable-cluster/moves/<xx>`: a planned move in flight.
    Move(Bucket),
    /// `dtable-cluster/cordon/<node_id>`: a cordon or drain intent. The text after
    /// `cordon/`, not yet validated as a node id.
    Cordon(String),
    /// `dtable-cluster/slaves/<node_id>`: a read replica's registration. The text after
    /// `slaves/`, not yet validated as a node id.
    Slave(String),
    /// `dtable-cluster/...`, anything else of ours.
    Cluster(String),
    /// Not one of ours.
    Other,
}

impl KeyLayout {
    /// A layout with `prefix` in front of every key (empty for SeaTable compatibility).
    pub fn new(prefix: impl Into<String>) -> KeyLayout {
        KeyLayout {
            prefix: prefix.into(),
        }
    }

    /// The namespace prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix><node_id>`.
    pub fn node(&self, node: &NodeId) -> String {
        format!("{}{}", self.prefix, node)
    }

    /// `<prefix>dtable-server-`, the prefix dtable-web lists.
    pub fn nodes_prefix(&self) -> String {
        format!("{}{NODE_ID_PREFIX}", self.prefix)
    }

    /// `<prefix>assign-<xx>`.
    pub fn assign(&self, bucket: Bucket) -> String {
        format!("{}{ASSIGN_PREFIX}{bucket}", self.prefix)
    }

    /// `<prefix>dtable-cluster/moves/<xx>`.
    pub fn move_key(&self, bucket: Bucket) -> String {
        format!("{}{CLUSTER_PREFIX}moves/{bucket}", self.prefix)
    }

    /// `<prefix>dtable-cluster/requests/rebalance`: written to ask the leader for a full
    /// rebalance.
    pub fn rebalance_request(&self) -> String {
        format!("{}{CLUSTER_PREFIX}{REBALANCE_REQUEST}", self.prefix)
    }

    /// `<prefix>dtable-cluster/cordon/<node_id>`: the node's cordon or drain intent. Any
    /// instance writes it; the leader carries it out.
    pub fn cordon(&self, node: &NodeId) -> String {
        format!("{}{CLUSTER_PREFIX}{}", self.prefix, cordon_name(node))
    }

    /// `<prefix>dtable-cluster/acks/<xx>/<move_id>`: the releasing agent's acknowledgement that
    /// its server saved and unloaded the bucket for that move.
    pub fn ack(&self, bucket: Bucket, move_id: i64) -> String {
        format!(
            "{}{CLUSTER_PREFIX}{}",
            self.prefix,
            ack_name(bucket, move_id)
        )
    }

    /// `<prefix>dtable-cluster/slaves/<node_id>`: a read replica's registration, on its
    /// agent's lease. Never a root key, so a slave can never be taken for a bucket owner.
    pub fn slave(&self, node: &NodeId) -> String {
        format!("{}{}", self.slaves_prefix(), node)
    }

    /// `<prefix>dtable-cluster/slaves/`, the prefix to list every slave registration.
    pub fn slaves_prefix(&self) -> String {
        format!("{}{CLUSTER_PREFIX}{SLAVES_PREFIX}", self.prefix)
    }

    /// The election name the control planes campaign on.
    pub fn election(&self) -> String {
        format!("{}{CLUSTER_PREFIX}{ELECTION}", self.prefix)
    }

    /// The key range the cluster view watches: `[assign-, dtable-server.)`. It holds the
    /// assignment, everything under `dtable-cluster/`, and every node registration, in one
    /// range so that one list and one watch see a consistent cut of all of them.
    pub fn view_range(&self) -> (String, String) {
        (
            format!("{}{ASSIGN_PREFIX}", self.prefix),
            format!("{}dtable-server.", self.prefix),
        )
    }

    /// Classifies a full key read from etcd.
    pub fn classify(&self, key: &str) -> KeyKind {
        let Some(rest) = key.strip_prefix(self.prefix.as_str()) else {
            return KeyKind::Other;
        };
        if let Some(b) = rest.strip_prefix(ASSIGN_PREFIX) {
            return match b.parse() {
                Ok(bucket) => KeyKind::Assign(bucket),
                Err(_) => KeyKind::BadAssign(rest.to_owned()),
            };
        }
        if rest.starts_with(NODE_ID_PREFIX) {
            return KeyKind::Node(rest.to_owned());
        }
        if let Some(ours) = rest.strip_prefix(CLUSTER_PREFIX) {
            if let Some(Ok(bucket)) = ours.strip_prefix("moves/").map(str::parse) {
                return KeyKind::Move(bucket);
            }
            if let Some(node) = ours.strip_prefix(CORDON_PREFIX) {
                return KeyKind::Cordon(node.to_owned());
            }
            if let Some(node) = ours.strip_prefix(SLAVES_PREFIX) {
                return KeyKind::Slave(node.to_owned());
            }
            return KeyKind::Cluster(ours.to_owned());
        }
        KeyKind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seatable_keys_at_the_root() {
        let k = KeyLayout::default();
        let n = NodeId::new("dtable-server-a").unwrap();
        assert_eq!(k.node(&n), "dtable-server-a");
        assert_eq!(k.assign(Bucket(0x0f)), "assign-0f");
        assert_eq!(k.move_key(Bucket(0xff)), "dtable-cluster/moves/ff");
        assert_eq!(k.classify("assign-0f"), KeyKind::Assign(Bucket(0x0f)));
        assert_eq!(
            k.classify("assign-0F"),
            KeyKind::BadAssign("assign-0F".into())
        );
        assert_eq!(
            k.classify("dtable-server-a"),
            KeyKind::Node("dtable-server-a".into())
        );
        assert_eq!(
            k.classify("dtable-cluster/moves/ab"),
            KeyKind::Move(Bucket(0xab))
        );
        assert_eq!(
            k.classify("dtable-cluster/election/1"),
            KeyKind::Cluster("election/1".into())
        );
        assert_eq!(k.classify("unrelated"), KeyKind::Other);
        assert_eq!(k.slave(&n), "dtable-cluster/slaves/dtable-server-a");
        assert_eq!(k.slaves_prefix(), "dtable-cluster/slaves/");
        assert_eq!(
            k.classify("dtable-cluster/slaves/dtable-server-a"),
            KeyKind::Slave("dtable-server-a".into())
        );
        assert!(!k.slave(&n).starts_with(NODE_ID_PREFIX));
        assert_eq!(k.cordon(&n), "dtable-cluster/cordon/dtable-server-a");
        assert_eq!(
            k.classify("dtable-cluster/cordon/dtable-server-a"),
            KeyKind::Cordon("dtable-server-a".into())
        );
        assert_eq!(
            k.classify("dtable-cluster/cordon/junk"),
            KeyKind::Cordon("junk".into())
        );
    }

    #[test]
    fn prefix_isolates_and_range_covers_every_kind() {
        let k = KeyLayout::new("t1/");
        assert_eq!(k.assign(Bucket(1)), "t1/assign-01");
        assert_eq!(k.slaves_prefix(), "t1/dtable-cluster/slaves/");
        assert_eq!(k.classify("assign-01"), KeyKind::Other);
        let (start, end) = k.view_range();
        let n = NodeId::new("dtable-server-zz").unwrap();
        for key in [
            k.assign(Bucket(0)),
            k.assign(Bucket(255)),
            k.move_key(Bucket(3)),
            k.cordon(&n),
            k.rebalance_request(),
            k.slave(&n),
            k.node(&n),
        ] {
            assert!(start <= key && key < end, "{key} outside [{start}, {end})");
        }
    }
}
