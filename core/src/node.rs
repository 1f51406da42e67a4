//! Node identity and the node record that agents register and dtable-web reads.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The key prefix SeaTable's dtable-web scans for servers; every node id starts with it.
pub const NODE_ID_PREFIX: &str = "dtable-server-";

/// The `role` of a bucket-owning server's record, registered at the root key `<node_id>`.
pub const ROLE_SERVER: &str = "server";
/// The `role` of a read replica's record, registered under `dtable-cluster/slaves/<node_id>`.
pub const ROLE_SLAVE: &str = "slave";

/// A server's id, which is also its etcd key (under the optional namespace).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

/// Why a node id or node record is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// dtable-web finds servers by this prefix, so any other id would be invisible to it.
    #[error("node id {0:?} must start with \"dtable-server-\" and have more after it")]
    BadPrefix(String),
    /// Ids end up in etcd keys, URLs and logs; keep them printable and short.
    #[error("node id {0:?} may hold only ASCII letters, digits, '-', '_' and '.', at most 128")]
    BadCharacters(String),
    /// The JSON is not a node record.
    #[error("bad node record: {0}")]
    BadRecord(String),
}

impl NodeId {
    /// Validates a node id: the `dtable-server-` prefix, then a non-empty printable name.
    pub fn new(id: impl Into<String>) -> Result<NodeId, NodeError> {
        let id = id.into();
        if !id.starts_with(NODE_ID_PREFIX) || id.len() == NODE_ID_PREFIX.len() {
            return Err(NodeError::BadPrefix(id));
        }
        let printable = id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !printable || id.len() > 128 {
            return Err(NodeError::BadCharacters(id));
        }
        Ok(NodeId(id))
    }

    /// The id as stored in etcd.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = NodeError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        NodeId::new(s)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a node takes new buckets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Serving and eligible for buckets.
    #[default]
    Active,
    /// Leaving: its buckets are handed away and it receives none.
    Draining,
}

/// The JSON value at key `<node_id>`. dtable-web reads `node_url` and `local_node_url`.
///
/// Unknown fields are kept out of the way (tolerated, not stored); required fields are strict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Must equal the key it is stored under.
    pub node_id: NodeId,
    /// Browser-facing URL of the server.
    pub node_url: String,
    /// URL on the LAN, used by the proxy and dtable-web's internal calls.
    pub local_node_url: String,
    /// [`ROLE_SERVER`] for bucket owners (kept for dtable-web compatibility), [`ROLE_SLAVE`]
    /// for read replicas.
    #[serde(default = "default_role")]
    pub role: String,
    /// Active or draining.
    #[serde(default)]
    pub state: NodeState,
    /// Relative share of the buckets, 1 by default.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Version of the registering agent.
    #[serde(default)]
    pub version: String,
    /// RFC 3339 wall-clock time of registration, for humans only.
    #[serde(default)]
    pub started_at: String,
    /// [`AGENT_MANAGED`] when a `dtable-agent` in managed mode registered the node: its server
    /// follows the agent's push API and acknowledges releases, so its buckets move by
    /// release-then-acquire handoff. Absent when the server registered itself (SeaTable's own
    /// cluster mode): nothing would acknowledge a release, so its buckets are reassigned
    /// directly, as SeaTable's cluster monitor does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// The `agent` of a record registered by a managed agent.
pub const AGENT_MANAGED: &str = "managed";

fn default_role() -> String {
    ROLE_SERVER.to_owned()
}

fn default_weight() -> u32 {
    1
}

/// Largest weight accepted, so that weighted sums cannot overflow.
pub const MAX_WEIGHT: u32 = 1000;

impl NodeRecord {
    /// Whether the node's releases are acknowledged, so its buckets can move by handoff.
    pub fn hands_off(&self) -> bool {
        self.agent.as_deref() == Some(AGENT_MANAGED)
    }

    /// Parses and validates a record read from etcd under `key_node_id`.
    pub fn from_json(key_node_id: &str, value: &[u8]) -> Result<NodeRecord, NodeError> {
        let record: NodeRecord =
            serde_json::from_slice(value).map_err(|e| NodeError::BadRecord(e.to_string()))?;
        if record.node_id.as_str() != key_node_id {
            return Err(NodeError::BadRecord(format!(
                "node_id {:?} differs from its key {key_node_id:?}",
                record.node_id.as_str()
            )));
        }
        if record.weight == 0 || record.weight > MAX_WEIGHT {
            return Err(NodeError::BadRecord(format!(
                "weight {} is outside 1..={MAX_WEIGHT}",
                record.weight
            )));
        }
        Ok(record)
    }

    /// The JSON written to etcd.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("node record serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_need_the_prefix() {
        assert!(NodeId::new("dtable-server-a").is_ok());
        assert!(matches!(
            NodeId::new("dtable-server-"),
            Err(NodeError::BadPrefix(_))
        ));
        assert!(matches!(
            NodeId::new("server-a"),
            Err(NodeError::BadPrefix(_))
        ));
        assert!(matches!(
            NodeId::new("dtable-server-a b"),
            Err(NodeError::BadCharacters(_))
        ));
    }

    #[test]
    fn record_tolerates_unknown_fields_and_requires_known_ones() {
        let full = br#"{"node_id":"dtable-server-a","node_url":"http://a/","local_node_url":"http://10.0.0.1:5000/","extra":{"x":1}}"#;
        let rec = NodeRecord::from_json("dtable-server-a", full).unwrap();
        assert_eq!(rec.weight, 1);
        assert_eq!(rec.state, NodeState::Active);
        assert_eq!(rec.role, "server");

        let missing = br#"{"node_id":"dtable-server-a","node_url":"http://a/"}"#;
        let err = NodeRecord::from_json("dtable-server-a", missing).unwrap_err();
        assert!(err.to_string().contains("local_node_url"), "{err}");

        assert!(NodeRecord::from_json("dtable-server-b", full).is_err());
        assert!(NodeRecord::from_json("dtable-server-a", b"{not json").is_err());
        let zero =
            br#"{"node_id":"dtable-server-a","node_url":"u","local_node_url":"l","weight":0}"#;
        assert!(NodeRecord::from_json("dtable-server-a", zero).is_err());
    }

    #[test]
    fn record_round_trips() {
        let rec = NodeRecord {
            node_id: NodeId::new("dtable-server-a").unwrap(),
            node_url: "http://a/".into(),
            local_node_url: "http://127.0.0.1:5000/".into(),
            role: "server".into(),
            state: NodeState::Draining,
            weight: 3,
            version: "0.1.0".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            agent: Some(AGENT_MANAGED.into()),
        };
        let json = rec.to_json();
        assert!(json.contains(r#""state":"draining""#), "{json}");
        assert_eq!(
            NodeRecord::from_json("dtable-server-a", json.as_bytes()).unwrap(),
            rec
        );
    }
}
