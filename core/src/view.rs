//! The cluster view: what etcd says about nodes, read replicas (slaves), the assignment and
//! moves at one revision.
//! Built from key-value events without I/O; the watch loop feeds it and publishes snapshots.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bucket::{BUCKET_COUNT, Bucket, BucketError};
use crate::keys::{ELECTION, KeyKind, KeyLayout};
use crate::node::{NodeId, NodeRecord, NodeState, ROLE_SLAVE};
use crate::placement::{Candidates, Eligible, Move, Policy, place_around};

/// A live node registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    /// The record as registered.
    pub record: NodeRecord,
    /// The etcd lease the key is attached to (0 for none).
    pub lease: i64,
    /// Revision the key was created at: tells a re-registration from the previous one.
    pub create_revision: i64,
    /// Revision of the last change, for guarded writes.
    pub mod_revision: i64,
}

/// A live read-replica (slave) registration, `dtable-cluster/slaves/<node_id>`. Slaves serve
/// reads of bases they load through the proxy; they own no bucket and are never placement
/// candidates, which is why they are kept apart from [`ClusterView::nodes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlaveEntry {
    /// The record as registered; its role is always [`ROLE_SLAVE`].
    pub record: NodeRecord,
    /// The etcd lease the key is attached to (0 for none).
    pub lease: i64,
    /// Revision the key was created at: tells a re-registration from the previous one.
    pub create_revision: i64,
    /// Revision of the last change.
    pub mod_revision: i64,
}

/// The value of one `assign-<xx>` key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssignEntry {
    /// The owner, when the value is a well-formed node id.
    pub owner: Option<NodeId>,
    /// The value as stored, for logs.
    pub raw: String,
    /// mod_revision of the key: the bucket's fencing epoch, and the guard for rewriting it.
    pub mod_revision: i64,
}

/// A planned move in flight (`dtable-cluster/moves/<xx>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveEntry {
    /// Current owner, releasing.
    pub from: String,
    /// Next owner, acquiring.
    pub to: String,
    /// Wall-clock start, for humans only.
    pub started_at: String,
    /// The move id.
    pub create_revision: i64,
    /// For guarded deletes.
    pub mod_revision: i64,
}

/// What an operator asked of a node through `dtable-cluster/cordon/<node_id>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CordonMode {
    /// The node keeps its buckets and receives no new ones.
    Cordon,
    /// The node receives nothing and its buckets move away by handoff, as for a node in state
    /// `draining`.
    Drain,
}

/// The JSON value of a cordon key: `{"mode":"cordon"|"drain","at":"<rfc3339>","by":"<who>"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CordonIntent {
    /// Cordon or drain.
    pub mode: CordonMode,
    /// Wall-clock time of the request, for humans only.
    #[serde(default)]
    pub at: String,
    /// The instance that wrote it, for humans only.
    #[serde(default)]
    pub by: String,
}

impl CordonIntent {
    /// The JSON written to etcd.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a cordon intent serializes")
    }
}

/// A cordon key as the view holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CordonEntry {
    /// What was asked. A value that cannot be read counts as a plain cordon: the safe reading,
    /// as it moves nothing.
    pub intent: CordonIntent,
    /// mod_revision of the key.
    pub mod_revision: i64,
}

/// A value that could not be understood. The view leaves it out (or keeps the key's revision
/// only) and goes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corrupt {
    /// The full key.
    pub key: String,
    /// Its mod_revision, so each bad value is reported once.
    pub mod_revision: i64,
    /// What is wrong with it.
    pub problem: String,
}

/// Everything the cluster's processes need to know, at one etcd revision. Immutable once
/// published; readers hold an `Arc` of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterView {
    /// The etcd revision this view reflects.
    pub revision: i64,
    /// Registered nodes (bucket-owning servers) with well-formed records.
    pub nodes: BTreeMap<NodeId, NodeEntry>,
    /// Registered read replicas with well-formed records. Never in `nodes`, never eligible,
    /// never owners.
    pub slaves: BTreeMap<NodeId, SlaveEntry>,
    /// One slot per bucket; `None` when the key is missing.
    pub assignment: Vec<Option<AssignEntry>>,
    /// Moves in flight.
    pub moves: BTreeMap<Bucket, MoveEntry>,
    /// Cordon and drain intents by node, registered or not.
    pub cordons: BTreeMap<NodeId, CordonEntry>,
    /// Other keys under `dtable-cluster/`, such as acks, requests and the election (relative
    /// key → (value, mod_revision)).
    pub cluster_keys: BTreeMap<String, (Vec<u8>, i64)>,
    /// mod_revision of each key present but unreadable, so a writer can still guard on it.
    pub corrupt_keys: BTreeMap<String, i64>,
    /// How many full lists the watch has done: 1 after the first, one more after each
    /// compaction that forced a re-list. Diagnostics only.
    pub lists: u64,
}

impl Default for ClusterView {
    fn default() -> Self {
        ClusterView {
            revision: 0,
            nodes: BTreeMap::new(),
            slaves: BTreeMap::new(),
            assignment: vec![None; BUCKET_COUNT],
            moves: BTreeMap::new(),
            cordons: BTreeMap::new(),
            cluster_keys: BTreeMap::new(),
            corrupt_keys: BTreeMap::new(),
            lists: 0,
        }
    }
}

/// Where a bucket's requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner<'a> {
    /// The owning node.
    pub node: &'a NodeEntry,
    /// The bucket's epoch (mod_revision of `assign-<xx>`).
    pub epoch: i64,
}

/// Where a base lives, as the lookup APIs answer it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lookup {
    /// The bucket, two lowercase hex characters.
    pub bucket: String,
    /// The live owner, if any.
    pub node_id: Option<String>,
    /// Its browser-facing URL.
    pub node_url: Option<String>,
    /// Its LAN URL.
    pub local_node_url: Option<String>,
    /// The bucket's epoch (mod_revision of `assign-<xx>`), 0 when unassigned.
    pub epoch: i64,
    /// Whether a planned move of the bucket is in flight.
    pub moving: bool,
}

#[derive(Deserialize)]
struct MoveJson {
    from: String,
    to: String,
    #[serde(default)]
    started_at: String,
}

impl ClusterView {
    /// The live owner of a bucket: assigned to a node that is registered.
    pub fn owner(&self, bucket: Bucket) -> Option<Owner<'_>> {
        let a = self.assignment[bucket.index()].as_ref()?;
        let node = self.nodes.get(a.owner.as_ref()?)?;
        Some(Owner {
            node,
            epoch: a.mod_revision,
        })
    }

    /// Where the base `uuid` lives.
    pub fn lookup(&self, uuid: &str) -> Result<Lookup, BucketError> {
        let bucket = Bucket::of_base(uuid)?;
        let owner = self.owner(bucket);
        Ok(Lookup {
            bucket: bucket.to_string(),
            node_id: owner.as_ref().map(|o| o.node.record.node_id.to_string()),
            node_url: owner.as_ref().map(|o| o.node.record.node_url.clone()),
            local_node_url: owner.as_ref().map(|o| o.node.record.local_node_url.clone()),
            epoch: owner.map_or(0, |o| o.epoch),
            moving: self.moves.contains_key(&bucket),
        })
    }

    /// The nodes that may hold buckets, with the cordons applied: registered, active nodes
    /// without a cordon key are open; those with a plain cordon keep what they hold. Drained
    /// and draining nodes are in neither list, so their buckets move away.
    pub fn eligible(&self) -> Candidates {
        let mut out = Candidates::default();
        for n in self.nodes.values() {
            if n.record.state != NodeState::Active {
                continue;
            }
            match self.cordons.get(&n.record.node_id).map(|c| c.intent.mode) {
                None => out.open.push(Eligible {
                    node: n.record.node_id.clone(),
                    weight: n.record.weight,
                }),
                Some(CordonMode::Cordon) => out.cordoned.push(n.record.node_id.clone()),
                Some(CordonMode::Drain) => {}
            }
        }
        out
    }

    /// Whether `node` may receive buckets now: registered, active, and neither cordoned nor
    /// drained.
    pub fn accepts_buckets(&self, node: &NodeId) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|n| n.record.state == NodeState::Active)
            && !self.cordons.contains_key(node)
    }

    /// The elected control-plane instance as the election keys show it: the value of the key
    /// under `dtable-cluster/election/` created first (etcd's election rule; a candidate's key
    /// is written once, so its mod_revision is its create_revision).
    pub fn leader(&self) -> Option<&str> {
        let prefix = format!("{ELECTION}/");
        self.cluster_keys
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .min_by_key(|(_, (_, rev))| *rev)
            .map(|(_, (value, _))| std::str::from_utf8(value).unwrap_or("(not UTF-8)"))
    }

    /// The assignment as a placement table: the owner named by each key, live or not.
    pub fn table(&self) -> Vec<Option<NodeId>> {
        self.assignment
            .iter()
            .map(|a| a.as_ref().and_then(|a| a.owner.clone()))
            .collect()
    }

    /// The buckets with a move in flight and the node each is moving to (`None` if the move
    /// names no valid node id), for [`crate::placement::place_around`].
    pub fn moving_to(&self) -> BTreeMap<Bucket, Option<NodeId>> {
        self.moves
            .iter()
            .map(|(b, m)| (*b, NodeId::new(m.to.clone()).ok()))
            .collect()
    }

    /// The moves a full rebalance plans from this view: the leader's placement (default
    /// policy, cordons applied) around the moves in flight. None when no node takes buckets,
    /// as the leader then leaves the assignment as it is.
    pub fn rebalance_plan(&self) -> Vec<Move> {
        let nodes = self.eligible();
        if nodes.is_empty() {
            return Vec::new();
        }
        place_around(&self.table(), &self.moving_to(), &nodes, &Policy::default()).moves
    }

    /// How many buckets each registered node holds.
    pub fn bucket_counts(&self) -> BTreeMap<&NodeId, usize> {
        let mut c: BTreeMap<&NodeId, usize> = self.nodes.keys().map(|n| (n, 0)).collect();
        for a in self.assignment.iter().flatten() {
            if let Some(n) = a.owner.as_ref().and_then(|o| c.get_mut(o)) {
                *n += 1;
            }
        }
        c
    }

    /// Buckets whose key names a node that is not registered (or is malformed): the state
    /// right after a node died, or damage to repair.
    pub fn orphaned(&self) -> Vec<(Bucket, &AssignEntry)> {
        Bucket::all()
            .filter_map(|b| self.assignment[b.index()].as_ref().map(|a| (b, a)))
            .filter(|(_, a)| a.owner.as_ref().is_none_or(|o| !self.nodes.contains_key(o)))
            .collect()
    }

    /// Applies a put. A value that cannot be understood is left out of the view and returned.
    pub fn put(
        &mut self,
        keys: &KeyLayout,
        key: &str,
        value: &[u8],
        kv: KvMeta,
    ) -> Result<(), Corrupt> {
        let corrupt = |problem: String| Corrupt {
            key: key.to_owned(),
            mod_revision: kv.mod_revision,
            problem,
        };
        // A new value replaces whatever was there, readable or not.
        self.delete(keys, key);
        let result = match keys.classify(key) {
            KeyKind::Node(id) => match NodeRecord::from_json(&id, value) {
                Ok(record) if record.role == ROLE_SLAVE => Err(corrupt(format!(
                    "role \"{ROLE_SLAVE}\" at a server key: slaves register under \
                     dtable-cluster/slaves/"
                ))),
                Ok(record) => {
                    let entry = NodeEntry {
                        record,
                        lease: kv.lease,
                        create_revision: kv.create_revision,
                        mod_revision: kv.mod_revision,
                    };
                    self.nodes.insert(entry.record.node_id.clone(), entry);
                    Ok(())
                }
                Err(e) => Err(corrupt(e.to_string())),
            },
            KeyKind::Assign(b) => {
                let raw = String::from_utf8_lossy(value).into_owned();
                let owner = NodeId::new(raw.clone());
                let problem = owner.as_ref().err().map(|e| e.to_string());
                let owner = owner.ok();
                self.assignment[b.index()] = Some(AssignEntry {
                    owner,
                    raw,
                    mod_revision: kv.mod_revision,
                });
                problem.map_or(Ok(()), |p| Err(corrupt(p)))
            }
            KeyKind::BadAssign(_) => Err(corrupt("not a bucket: want assign-00..assign-ff".into())),
            KeyKind::Move(b) => match serde_json::from_slice::<MoveJson>(value) {
                Ok(m) => {
                    let entry = MoveEntry {
                        from: m.from,
                        to: m.to,
                        started_at: m.started_at,
                        create_revision: kv.create_revision,
                        mod_revision: kv.mod_revision,
                    };
                    self.moves.insert(b, entry);
                    Ok(())
                }
                Err(e) => Err(corrupt(format!("bad move record: {e}"))),
            },
            KeyKind::Cordon(id) => match NodeId::new(id) {
                Ok(node) => {
                    let parsed = serde_json::from_slice::<CordonIntent>(value);
                    let problem = parsed
                        .as_ref()
                        .err()
                        .map(|e| format!("bad cordon intent, counted as a plain cordon: {e}"));
                    let intent = parsed.unwrap_or(CordonIntent {
                        mode: CordonMode::Cordon,
                        at: String::new(),
                        by: String::new(),
                    });
                    let mod_revision = kv.mod_revision;
                    self.cordons.insert(
                        node,
                        CordonEntry {
                            intent,
                            mod_revision,
                        },
                    );
                    problem.map_or(Ok(()), |p| Err(corrupt(p)))
                }
                Err(e) => Err(corrupt(format!("cordon of no node: {e}"))),
            },
            KeyKind::Slave(id) => match NodeRecord::from_json(&id, value) {
                Ok(record) if record.role != ROLE_SLAVE => Err(corrupt(format!(
                    "slave record with role {:?}, want \"{ROLE_SLAVE}\"",
                    record.role
                ))),
                Ok(record) => {
                    let entry = SlaveEntry {
                        record,
                        lease: kv.lease,
                        create_revision: kv.create_revision,
                        mod_revision: kv.mod_revision,
                    };
                    self.slaves.insert(entry.record.node_id.clone(), entry);
                    Ok(())
                }
                Err(e) => Err(corrupt(format!("bad slave record: {e}"))),
            },
            KeyKind::Cluster(rest) => {
                self.cluster_keys
                    .insert(rest, (value.to_vec(), kv.mod_revision));
                Ok(())
            }
            KeyKind::Other => Ok(()),
        };
        if result.is_err() {
            self.corrupt_keys.insert(key.to_owned(), kv.mod_revision);
        }
        result
    }

    /// Applies a delete.
    pub fn delete(&mut self, keys: &KeyLayout, key: &str) {
        self.corrupt_keys.remove(key);
        match keys.classify(key) {
            KeyKind::Node(id) => {
                self.nodes.retain(|n, _| n.as_str() != id);
            }
            KeyKind::Assign(b) => self.assignment[b.index()] = None,
            KeyKind::Move(b) => {
                self.moves.remove(&b);
            }
            KeyKind::Cordon(id) => {
                self.cordons.retain(|n, _| n.as_str() != id);
            }
            KeyKind::Slave(id) => {
                self.slaves.retain(|n, _| n.as_str() != id);
            }
            KeyKind::Cluster(rest) => {
                self.cluster_keys.remove(&rest);
            }
            KeyKind::BadAssign(_) | KeyKind::Other => {}
        }
    }
}

/// The etcd metadata of a key-value pair that the view keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvMeta {
    /// Revision the key was created at.
    pub create_revision: i64,
    /// Revision of its last change.
    pub mod_revision: i64,
    /// Its lease, 0 for none.
    pub lease: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(rev: i64) -> KvMeta {
        KvMeta {
            create_revision: rev,
            mod_revision: rev,
            lease: 7,
        }
    }

    fn record(id: &str) -> Vec<u8> {
        format!(
            r#"{{"node_id":"{id}","node_url":"http://{id}/","local_node_url":"http://{id}:5000/"}}"#
        )
        .into_bytes()
    }

    #[test]
    fn owner_needs_a_live_node() {
        let k = KeyLayout::default();
        let mut v = ClusterView::default();
        v.put(&k, "assign-0a", b"dtable-server-a", meta(5)).unwrap();
        assert!(v.owner(Bucket(0x0a)).is_none());
        assert_eq!(v.orphaned().len(), 1);
        v.put(&k, "dtable-server-a", &record("dtable-server-a"), meta(6))
            .unwrap();
        let o = v.owner(Bucket(0x0a)).unwrap();
        assert_eq!(o.epoch, 5);
        assert_eq!(o.node.record.local_node_url, "http://dtable-server-a:5000/");
        assert!(v.orphaned().is_empty());
        v.delete(&k, "dtable-server-a");
        assert!(v.owner(Bucket(0x0a)).is_none());
    }

    #[test]
    fn corrupt_values_are_reported_and_skipped() {
        let k = KeyLayout::default();
        let mut v = ClusterView::default();
        let e = v.put(&k, "dtable-server-b", b"{oops", meta(3)).unwrap_err();
        assert_eq!(e.key, "dtable-server-b");
        assert!(v.nodes.is_empty());
        assert_eq!(v.corrupt_keys.get("dtable-server-b"), Some(&3));

        let e = v.put(&k, "assign-01", b"garbage", meta(4)).unwrap_err();
        assert!(e.problem.contains("dtable-server-"), "{}", e.problem);
        assert_eq!(v.assignment[1].as_ref().unwrap().mod_revision, 4);
        assert_eq!(v.orphaned().len(), 1);

        // A good value replaces the bad one.
        v.put(&k, "dtable-server-b", &record("dtable-server-b"), meta(8))
            .unwrap();
        assert!(!v.corrupt_keys.contains_key("dtable-server-b"));
        assert_eq!(v.nodes.len(), 1);
        assert!(v.put(&k, "assign-zz", b"dtable-server-b", meta(9)).is_err());
        assert!(
            v.put(&k, "dtable-cluster/moves/01", b"[]", meta(9))
                .is_err()
        );
    }

    #[test]
    fn moves_and_cluster_keys() {
        let k = KeyLayout::new("ns/");
        let mut v = ClusterView::default();
        v.put(
            &k,
            "ns/dtable-cluster/moves/ff",
            br#"{"from":"a","to":"b","started_at":"t"}"#,
            meta(10),
        )
        .unwrap();
        assert_eq!(v.moves[&Bucket(0xff)].create_revision, 10);
        v.put(&k, "ns/dtable-cluster/election/x", b"me", meta(11))
            .unwrap();
        assert_eq!(v.cluster_keys["election/x"].0, b"me");
        v.delete(&k, "ns/dtable-cluster/moves/ff");
        assert!(v.moves.is_empty());
    }

    fn active(id: &str, weight: u32) -> Vec<u8> {
        format!(r#"{{"node_id":"{id}","node_url":"u","local_node_url":"l","weight":{weight}}}"#)
            .into_bytes()
    }

    #[test]
    fn cordons_shape_the_candidates() {
        let k = KeyLayout::default();
        let mut v = ClusterView::default();
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            let id = format!("dtable-server-{id}");
            v.put(&k, &id, &active(&id, 2), meta(i as i64 + 1)).unwrap();
        }
        let draining = br#"{"node_id":"dtable-server-d","node_url":"u","local_node_url":"l","state":"draining"}"#;
        v.put(&k, "dtable-server-d", draining, meta(5)).unwrap();
        v.put(
            &k,
            "dtable-cluster/cordon/dtable-server-b",
            br#"{"mode":"cordon","at":"t","by":"cp1"}"#,
            meta(6),
        )
        .unwrap();
        v.put(
            &k,
            "dtable-cluster/cordon/dtable-server-c",
            br#"{"mode":"drain","at":"t","by":"cp1"}"#,
            meta(7),
        )
        .unwrap();
        // A cordon of a node that is not registered is kept (so it can be lifted) and
        // changes nothing else.
        v.put(
            &k,
            "dtable-cluster/cordon/dtable-server-gone",
            br#"{"mode":"drain"}"#,
            meta(8),
        )
        .unwrap();

        let c = v.eligible();
        let a = NodeId::new("dtable-server-a").unwrap();
        let b = NodeId::new("dtable-server-b").unwrap();
        assert_eq!(
            c.open,
            vec![Eligible {
                node: a.clone(),
                weight: 2
            }]
        );
        assert_eq!(c.cordoned, vec![b.clone()]);
        assert!(v.accepts_buckets(&a));
        assert!(!v.accepts_buckets(&b));
        assert_eq!(v.cordons.len(), 3);
        assert_eq!(v.cordons[&b].intent.by, "cp1");
        assert!(
            v.cluster_keys.is_empty(),
            "cordons are not loose cluster keys"
        );

        v.delete(&k, "dtable-cluster/cordon/dtable-server-b");
        assert_eq!(v.eligible().open.len(), 2);
        assert!(v.eligible().cordoned.is_empty());
    }

    #[test]
    fn a_corrupt_cordon_counts_as_a_plain_cordon_and_is_reported() {
        let k = KeyLayout::default();
        let mut v = ClusterView::default();
        v.put(
            &k,
            "dtable-server-a",
            &active("dtable-server-a", 1),
            meta(1),
        )
        .unwrap();
        let e = v
            .put(
                &k,
                "dtable-cluster/cordon/dtable-server-a",
                b"{oops",
                meta(2),
            )
            .unwrap_err();
        assert!(e.problem.contains("plain cordon"), "{}", e.problem);
        let a = NodeId::new("dtable-server-a").unwrap();
        assert_eq!(v.cordons[&a].intent.mode, CordonMode::Cordon);
        assert_eq!(v.eligible().cordoned, vec![a.clone()]);
        assert_eq!(
            v.corrupt_keys.get("dtable-cluster/cordon/dtable-server-a"),
            Some(&2)
        );
        // A key naming no valid node id is reported and cordons nothing.
        assert!(
            v.put(&k, "dtable-cluster/cordon/junk", b"{}", meta(3))
                .is_err()
        );
        assert_eq!(v.cordons.len(), 1);
        // A well-formed rewrite clears the report.
        let drain = CordonIntent {
            mode: CordonMode::Drain,
            at: "t".into(),
            by: "me".into(),
        };
        v.put(
            &k,
            "dtable-cluster/cordon/dtable-server-a",
            drain.to_json().as_bytes(),
            meta(4),
        )
        .unwrap();
        assert!(
            !v.corrupt_keys
                .contains_key("dtable-cluster/cordon/dtable-server-a")
        );
        assert_eq!(v.cordons[&a].intent, drain);
        assert!(v.eligible().cordoned.is_empty() && v.eligible().open.is_empty());
    }

    #[test]
    fn the_leader_is_the_first_election_key() {
        let k = KeyLayout::default();
        let mut v = ClusterView::default();
        assert_eq!(v.leader(), None);
        v.put(&k, "dtable-cluster/election/694d8a1b", b"cp2", meta(9))
            .unwrap();
        v.put(&k, "dtable-cluster/election/694d8a0f", b"cp1", meta(7))
            .unwrap();
        v.put(&k, "dtable-cluster/electionx", b"no", meta(1))
            .unwrap();
        assert_eq!(v.leader(), Some("cp1"));
        v.delete(&k, "dtable-cluster/election/694d8a0f");
        assert_eq!(v.leader(), Some("cp2"));
    }

    fn slave(id: &str) -> Vec<u8> {
        format!(
            r#"{{"node_id":"{id}","node_url":"http://{id}/","local_node_url":"http://{id}:5000/","role":"slave"}}"#
        )
        .into_bytes()
    }

    #[test]
    fn slaves_are_kept_apart_from_nodes() {
        let k = KeyLayout::new("ns/");
        let mut v = ClusterView::default();
        v.put(
            &k,
            "ns/dtable-server-a",
            &record("dtable-server-a"),
            meta(1),
        )
        .unwrap();
        v.put(
            &k,
            "ns/dtable-cluster/slaves/dtable-server-s1",
            &slave("dtable-server-s1"),
            KvMeta {
                create_revision: 2,
                mod_revision: 3,
                lease: 42,
            },
        )
        .unwrap();
        let s1 = NodeId::new("dtable-server-s1").unwrap();
        let entry = &v.slaves[&s1];
        assert_eq!(entry.record.role, ROLE_SLAVE);
        assert_eq!(entry.record.local_node_url, "http://dtable-server-s1:5000/");
        assert_eq!(
            (entry.lease, entry.create_revision, entry.mod_revision),
            (42, 2, 3)
        );
        // Never a node, never eligible, never an owner, not a loose cluster key.
        assert!(!v.nodes.contains_key(&s1));
        assert!(!v.accepts_buckets(&s1));
        assert_eq!(v.eligible().open.len(), 1);
        assert!(v.eligible().open.iter().all(|e| e.node != s1));
        v.put(&k, "ns/assign-10", b"dtable-server-s1", meta(4))
            .unwrap();
        assert!(v.owner(Bucket(0x10)).is_none());
        assert_eq!(v.orphaned().len(), 1);
        assert!(v.cluster_keys.is_empty());
        assert!(!v.bucket_counts().contains_key(&s1));

        v.delete(&k, "ns/dtable-cluster/slaves/dtable-server-s1");
        assert!(v.slaves.is_empty());
        assert_eq!(v.nodes.len(), 1);
    }

    #[test]
    fn corrupt_slave_values_are_reported_and_skipped() {
        let k = KeyLayout::default();
        let mut v = ClusterView::default();
        let key = "dtable-cluster/slaves/dtable-server-s1";
        let e = v.put(&k, key, b"{oops", meta(3)).unwrap_err();
        assert!(e.problem.contains("bad slave record"), "{}", e.problem);
        assert_eq!(v.corrupt_keys.get(key), Some(&3));
        assert!(v.slaves.is_empty());

        // A server's record (role missing = "server") is not a slave's.
        let e = v
            .put(&k, key, &record("dtable-server-s1"), meta(4))
            .unwrap_err();
        assert!(e.problem.contains("role"), "{}", e.problem);
        assert!(v.slaves.is_empty());

        // The node id must be valid and match the key.
        assert!(
            v.put(&k, "dtable-cluster/slaves/junk", &slave("junk"), meta(5))
                .is_err()
        );
        assert!(v.put(&k, key, &slave("dtable-server-s2"), meta(6)).is_err());
        assert!(v.slaves.is_empty());

        // A good value replaces the bad one and clears the report.
        v.put(&k, key, &slave("dtable-server-s1"), meta(7)).unwrap();
        assert!(!v.corrupt_keys.contains_key(key));
        assert_eq!(v.slaves.len(), 1);

        // A slave's record at a server key is refused: it would be taken for an owner.
        let e = v
            .put(&k, "dtable-server-s3", &slave("dtable-server-s3"), meta(8))
            .unwrap_err();
        assert!(
            e.problem.contains("dtable-cluster/slaves/"),
            "{}",
            e.problem
        );
        assert!(v.nodes.is_empty());
        assert_eq!(v.corrupt_keys.get("dtable-server-s3"), Some(&8));
    }
}
