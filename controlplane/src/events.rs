//! The cluster's changes as events: the feed diffs each view the watch publishes against the
//! one before, stamps the changes with the wall-clock time, keeps the last [`RING`] of them for
//! the status page, and fans them out over a broadcast channel to every `WatchAssignment`
//! and `/api/v1/events` subscriber.
//!
//! A subscriber gets a snapshot first and then every event of a later revision. One that falls
//! more than the channel's capacity behind gets a fresh snapshot instead of an error, and goes
//! on from there. The JSON shape of an event is documented in [`crate::model`].

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use dtable_core::etcd::ViewRx;
use dtable_core::node::{ROLE_SERVER, ROLE_SLAVE};
use dtable_core::view::AssignEntry;
use dtable_core::{Bucket, ClusterView, NodeId};
use dtable_proto::v1 as pb;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::lease_ttl::LeaseTtls;
use crate::model::{LeaseTtlMap, MoveInfo, NodeInfo};

/// How many recent events are kept.
pub const RING: usize = 200;

/// How many events a subscriber may fall behind before it is sent a fresh snapshot.
const FANOUT_CAPACITY: usize = 1024;

/// One change of the cluster (EVENT).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// When this instance saw it: RFC 3339 with milliseconds.
    pub at: String,
    /// etcd revision of the view it was seen in.
    pub revision: i64,
    /// What changed; serialized as `"kind"` and its fields.
    #[serde(flatten)]
    pub change: Change,
    /// One human line saying what changed.
    pub text: String,
}

/// What changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Change {
    /// `assign-<bucket>` changed owner (or was rewritten: a new epoch).
    Bucket {
        /// The bucket.
        bucket: String,
        /// Owner before; empty when it was unassigned.
        from: String,
        /// Owner now; empty when it became unassigned.
        to: String,
        /// The new epoch, 0 when unassigned.
        epoch: i64,
    },
    /// A planned move started, was acknowledged, or ended.
    Move {
        /// Which of the three.
        phase: MovePhase,
        /// The move as it stood.
        #[serde(rename = "move")]
        info: MoveInfo,
    },
    /// A node (a server or a slave) joined, left, or changed (state, weight, URLs, version,
    /// lease or cordon).
    Node {
        /// Which of the three.
        change: NodeChange,
        /// The node.
        node_id: String,
        /// "server" or "slave": where it is registered.
        role: String,
        /// The node now; `None` when it left.
        node: Option<NodeInfo>,
    },
    /// Another instance leads (or none does).
    Leader {
        /// The leading instance; empty when none leads.
        leader: String,
    },
}

/// The phases of a planned move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MovePhase {
    /// The leader created the move.
    Started,
    /// The releasing node's agent acknowledged the release.
    Acked,
    /// Committed or abandoned: the move key is gone.
    Ended,
}

/// How a node changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeChange {
    /// Registered.
    Joined,
    /// Its registration is gone.
    Left,
    /// Its record, lease or cordon changed.
    Changed,
}

impl MovePhase {
    fn as_str(self) -> &'static str {
        match self {
            MovePhase::Started => "started",
            MovePhase::Acked => "acked",
            MovePhase::Ended => "ended",
        }
    }
}

impl NodeChange {
    fn as_str(self) -> &'static str {
        match self {
            NodeChange::Joined => "joined",
            NodeChange::Left => "left",
            NodeChange::Changed => "changed",
        }
    }
}

impl Event {
    /// The event as a gRPC `ClusterEvent`; `None` for leader changes, which that stream does
    /// not carry.
    pub fn to_pb(&self) -> Option<pb::ClusterEvent> {
        use pb::cluster_event::Event as E;
        let event = match &self.change {
            Change::Bucket {
                bucket,
                from,
                to,
                epoch,
            } => E::Bucket(pb::BucketChanged {
                bucket: bucket.clone(),
                from: from.clone(),
                to: to.clone(),
                epoch: *epoch,
            }),
            Change::Move { phase, info } => E::Move(pb::MoveChanged {
                r#move: Some(info.clone().into()),
                phase: phase.as_str().to_owned(),
            }),
            Change::Node {
                change,
                node_id,
                node,
                ..
            } => E::Node(pb::NodeChanged {
                node: node.clone().map(Into::into),
                node_id: node_id.clone(),
                change: change.as_str().to_owned(),
            }),
            Change::Leader { .. } => return None,
        };
        Some(pb::ClusterEvent {
            revision: self.revision,
            event: Some(event),
        })
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "(unassigned)" } else { s }
}

impl Change {
    /// One human line, e.g. "bucket 3f: dtable-server-a → dtable-server-b".
    fn text(&self, detail: &str) -> String {
        match self {
            Change::Bucket {
                bucket, from, to, ..
            } if from == to => format!("bucket {bucket}: {} rewritten", or_none(to)),
            Change::Bucket {
                bucket, from, to, ..
            } => format!("bucket {bucket}: {} → {}", or_none(from), or_none(to)),
            Change::Move { phase, info } => format!(
                "move of bucket {} {} → {} {}",
                info.bucket,
                info.from,
                info.to,
                match phase {
                    MovePhase::Started => "started",
                    MovePhase::Acked => "released by its owner",
                    MovePhase::Ended => "ended",
                }
            ),
            Change::Node {
                change,
                node_id,
                role,
                ..
            } => {
                let who = if role == ROLE_SLAVE {
                    format!("slave {node_id}")
                } else {
                    node_id.clone()
                };
                match change {
                    NodeChange::Joined => format!("{who} joined"),
                    NodeChange::Left => format!("{who} left"),
                    NodeChange::Changed => format!("{who} changed: {detail}"),
                }
            }
            Change::Leader { leader } if leader.is_empty() => "no instance leads".to_owned(),
            Change::Leader { leader } => format!("{leader} leads"),
        }
    }
}

/// What about a node a [`NodeChange::Changed`] event reports, as (field, text) for the
/// description; compared between two views.
fn node_facts(view: &ClusterView, node: &NodeId) -> Vec<(&'static str, String)> {
    let Some(n) = view.nodes.get(node) else {
        return Vec::new();
    };
    let cordon = view.cordons.get(node).map_or("none".to_owned(), |c| {
        format!("{:?}", c.intent.mode).to_lowercase()
    });
    vec![
        ("state", format!("{:?}", n.record.state).to_lowercase()),
        ("weight", n.record.weight.to_string()),
        ("cordon", cordon),
        ("lease", format!("{:x}", n.lease)),
        ("registration", n.create_revision.to_string()),
        ("node_url", n.record.node_url.clone()),
        ("local_node_url", n.record.local_node_url.clone()),
        ("version", n.record.version.clone()),
    ]
}

/// What about a slave a [`NodeChange::Changed`] event reports, as for a server less the
/// cordon, which a slave never has.
fn slave_facts(view: &ClusterView, slave: &NodeId) -> Vec<(&'static str, String)> {
    let Some(s) = view.slaves.get(slave) else {
        return Vec::new();
    };
    vec![
        ("state", format!("{:?}", s.record.state).to_lowercase()),
        ("weight", s.record.weight.to_string()),
        ("lease", format!("{:x}", s.lease)),
        ("registration", s.create_revision.to_string()),
        ("node_url", s.record.node_url.clone()),
        ("local_node_url", s.record.local_node_url.clone()),
        ("version", s.record.version.clone()),
    ]
}

/// `field a → b` for each fact that differs.
fn fact_changes(before: &[(&str, String)], after: &[(&str, String)]) -> String {
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| b.1 != a.1)
        .map(|(b, a)| format!("{} {} → {}", b.0, b.1, a.1))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The changes from `old` to `new`, each with the detail of its text: leader first, then
/// servers, slaves, moves and buckets.
pub fn diff(old: &ClusterView, new: &ClusterView, ttls: &LeaseTtlMap) -> Vec<(Change, String)> {
    let mut out = Vec::new();
    if old.leader() != new.leader() {
        let leader = new.leader().unwrap_or_default().to_owned();
        out.push((Change::Leader { leader }, String::new()));
    }

    let ids: std::collections::BTreeSet<&NodeId> =
        old.nodes.keys().chain(new.nodes.keys()).collect();
    for id in ids {
        let info = new.nodes.get(id).map(|n| NodeInfo::of(new, n, ttls));
        let was = old.nodes.contains_key(id);
        let detail = || fact_changes(&node_facts(old, id), &node_facts(new, id));
        out.extend(node_change(id, ROLE_SERVER, was, info, detail));
    }
    let slave_ids: std::collections::BTreeSet<&NodeId> =
        old.slaves.keys().chain(new.slaves.keys()).collect();
    for id in slave_ids {
        let info = new.slaves.get(id).map(|s| NodeInfo::of_slave(s, ttls));
        let was = old.slaves.contains_key(id);
        let detail = || fact_changes(&slave_facts(old, id), &slave_facts(new, id));
        out.extend(node_change(id, ROLE_SLAVE, was, info, detail));
    }

    for (b, mv) in &old.moves {
        let same = new
            .moves
            .get(b)
            .filter(|m| m.create_revision == mv.create_revision);
        match same {
            None => out.push(moved(MovePhase::Ended, MoveInfo::of(old, *b, mv))),
            Some(m) => {
                let (was, is) = (MoveInfo::of(old, *b, mv), MoveInfo::of(new, *b, m));
                if is.acked && !was.acked {
                    out.push(moved(MovePhase::Acked, is));
                }
            }
        }
    }
    for (b, mv) in &new.moves {
        let known = old
            .moves
            .get(b)
            .is_some_and(|m| m.create_revision == mv.create_revision);
        if !known {
            out.push(moved(MovePhase::Started, MoveInfo::of(new, *b, mv)));
        }
    }

    for b in Bucket::all() {
        let (was, is) = (&old.assignment[b.index()], &new.assignment[b.index()]);
        let key = |a: &Option<AssignEntry>| a.as_ref().map(|a| (a.raw.clone(), a.mod_revision));
        if key(was) != key(is) {
            let change = Change::Bucket {
                bucket: b.to_string(),
                from: was.as_ref().map(|a| a.raw.clone()).unwrap_or_default(),
                to: is.as_ref().map(|a| a.raw.clone()).unwrap_or_default(),
                epoch: is.as_ref().map_or(0, |a| a.mod_revision),
            };
            out.push((change, String::new()));
        }
    }
    out
}

/// The event of one registration (`role` "server" or "slave") that was there before (`was`)
/// and is now `info`; `detail` says what changed when it was there both times, and nothing
/// is reported when that is empty.
fn node_change(
    id: &NodeId,
    role: &str,
    was: bool,
    info: Option<NodeInfo>,
    detail: impl FnOnce() -> String,
) -> Option<(Change, String)> {
    let (change, detail) = match (was, &info) {
        (false, Some(_)) => (NodeChange::Joined, String::new()),
        (true, None) => (NodeChange::Left, String::new()),
        (true, Some(_)) => match detail() {
            d if d.is_empty() => return None,
            d => (NodeChange::Changed, d),
        },
        (false, None) => return None,
    };
    let change = Change::Node {
        change,
        node_id: id.to_string(),
        role: role.to_owned(),
        node: info,
    };
    Some((change, detail))
}

fn moved(phase: MovePhase, info: MoveInfo) -> (Change, String) {
    (Change::Move { phase, info }, String::new())
}

/// What a subscriber is sent: a whole state, or one change after it.
#[derive(Clone, Debug)]
pub enum Item {
    /// The state at the view's revision: sent first, and again after lagging behind.
    Snapshot(Arc<ClusterView>),
    /// A change of a later revision than the last snapshot.
    Event(Arc<Event>),
}

/// The event hub: the recent events, the fan-out, and the view they were computed up to.
/// Cheap to clone.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

struct Inner {
    fanout_tx: broadcast::Sender<Arc<Event>>,
    recent: Mutex<VecDeque<Arc<Event>>>,
    /// The last view the feed diffed: snapshots come from it, so that a subscriber's first
    /// event follows its snapshot exactly.
    latest_tx: watch::Sender<Arc<ClusterView>>,
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

impl Events {
    /// An empty hub; [`Events::run`] feeds it.
    pub fn new() -> Events {
        let (fanout_tx, _) = broadcast::channel(FANOUT_CAPACITY);
        let (latest_tx, _) = watch::channel(Arc::new(ClusterView::default()));
        Events {
            inner: Arc::new(Inner {
                fanout_tx,
                recent: Mutex::new(VecDeque::with_capacity(RING)),
                latest_tx,
            }),
        }
    }

    /// The last `n` events (at most [`RING`]), newest last.
    pub fn recent(&self, n: usize) -> Vec<Arc<Event>> {
        let recent = self.inner.recent.lock().expect("events lock");
        recent
            .iter()
            .skip(recent.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// The feed: diffs each new view against the previous one and publishes the changes,
    /// until `shutdown` or the end of the watch. The first loaded view is the baseline and
    /// yields no events.
    pub async fn run(self, mut view_rx: ViewRx, ttls: LeaseTtls, shutdown: CancellationToken) {
        let mut prev = view_rx.borrow_and_update().clone();
        self.inner.latest_tx.send_replace(prev.clone());
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = view_rx.changed() => if changed.is_err() { return },
            }
            let view = view_rx.borrow_and_update().clone();
            let changes = if prev.revision > 0 {
                diff(&prev, &view, &ttls.cached())
            } else {
                Vec::new()
            };
            self.publish(&view, changes);
            prev = view;
        }
    }

    fn publish(&self, view: &Arc<ClusterView>, changes: Vec<(Change, String)>) {
        self.inner.latest_tx.send_replace(view.clone());
        if changes.is_empty() {
            return;
        }
        let at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        metrics::counter!("dtable_api_events_total").increment(changes.len() as u64);
        let mut recent = self.inner.recent.lock().expect("events lock");
        for (change, detail) in changes {
            let event = Arc::new(Event {
                at: at.clone(),
                revision: view.revision,
                text: change.text(&detail),
                change,
            });
            if recent.len() == RING {
                recent.pop_front();
            }
            recent.push_back(event.clone());
            // No subscriber is fine: the ring still has it.
            let _ = self.inner.fanout_tx.send(event);
        }
    }

    /// A subscription: a snapshot once the view is loaded, then every later event, each
    /// turned into `T` by `render` (which may skip one by returning `None`). The stream ends
    /// when the subscriber goes away or at `shutdown`, so a graceful shutdown never waits on
    /// an open stream.
    pub fn follow<T, F, Fut>(&self, shutdown: CancellationToken, mut render: F) -> ReceiverStream<T>
    where
        T: Send + 'static,
        F: FnMut(Item) -> Fut + Send + 'static,
        Fut: Future<Output = Option<T>> + Send,
    {
        let (out_tx, out_rx) = mpsc::channel(64);
        let mut fanout_rx = self.inner.fanout_tx.subscribe();
        let mut latest_rx = self.inner.latest_tx.subscribe();
        tokio::spawn(async move {
            let loaded = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = out_tx.closed() => return,
                v = latest_rx.wait_for(|v| v.revision > 0) => match v {
                    Ok(v) => v.clone(),
                    Err(_) => return,
                },
            };
            let mut since = loaded.revision;
            let mut next = Some(Item::Snapshot(loaded));
            loop {
                if let Some(item) = next.take()
                    && let Some(out) = render(item).await
                    && out_tx.send(out).await.is_err()
                {
                    return;
                }
                let received = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = out_tx.closed() => return,
                    r = fanout_rx.recv() => r,
                };
                match received {
                    Ok(event) if event.revision > since => next = Some(Item::Event(event)),
                    Ok(_) => {} // already in the snapshot
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        metrics::counter!("dtable_api_subscriber_lagged_total").increment(1);
                        tracing::debug!(
                            missed,
                            "event subscriber lagged; sending a fresh snapshot"
                        );
                        let view = latest_rx.borrow().clone();
                        since = view.revision;
                        next = Some(Item::Snapshot(view));
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        ReceiverStream::new(out_rx)
    }
}

#[cfg(test)]
mod tests {
    use dtable_core::{KeyLayout, KvMeta};

    use super::*;

    fn meta(rev: i64) -> KvMeta {
        KvMeta {
            create_revision: rev,
            mod_revision: rev,
            lease: 0x1f,
        }
    }

    fn node(id: &str) -> Vec<u8> {
        format!(r#"{{"node_id":"{id}","node_url":"u","local_node_url":"l"}}"#).into_bytes()
    }

    fn base() -> ClusterView {
        let k = KeyLayout::default();
        let mut v = ClusterView {
            revision: 10,
            ..ClusterView::default()
        };
        v.put(&k, "dtable-server-a", &node("dtable-server-a"), meta(2))
            .unwrap();
        v.put(&k, "dtable-server-b", &node("dtable-server-b"), meta(3))
            .unwrap();
        v.put(&k, "assign-3f", b"dtable-server-a", meta(4)).unwrap();
        v.put(&k, "dtable-cluster/election/1a", b"cp1", meta(5))
            .unwrap();
        v
    }

    #[test]
    fn diffs_name_every_kind_of_change() {
        let k = KeyLayout::default();
        let old = base();
        let mut new = old.clone();
        new.revision = 20;
        new.delete(&k, "dtable-server-b");
        new.put(&k, "dtable-server-c", &node("dtable-server-c"), meta(11))
            .unwrap();
        new.put(
            &k,
            "dtable-cluster/cordon/dtable-server-a",
            br#"{"mode":"drain"}"#,
            meta(12),
        )
        .unwrap();
        new.put(
            &k,
            "dtable-cluster/moves/3f",
            br#"{"from":"dtable-server-a","to":"dtable-server-c","started_at":"t"}"#,
            meta(13),
        )
        .unwrap();
        new.put(&k, "assign-40", b"dtable-server-c", meta(14))
            .unwrap();
        new.delete(&k, "dtable-cluster/election/1a");

        let changes = diff(&old, &new, &LeaseTtlMap::from([(0x1f, 7)]));
        let texts: Vec<String> = changes.iter().map(|(c, d)| c.text(d)).collect();
        assert_eq!(
            texts,
            [
                "no instance leads",
                "dtable-server-a changed: cordon none → drain",
                "dtable-server-b left",
                "dtable-server-c joined",
                "move of bucket 3f dtable-server-a → dtable-server-c started",
                "bucket 40: (unassigned) → dtable-server-c",
            ]
        );
        let Change::Node { node: Some(a), .. } = &changes[1].0 else {
            panic!("{:?}", changes[1]);
        };
        assert!(a.cordoned && a.draining);
        assert_eq!(a.lease_ttl_seconds, 7);
        assert_eq!(a.bucket_count, 1);

        // The ack, then the commit.
        let mut acked = new.clone();
        acked
            .put(&k, "dtable-cluster/acks/3f/13", b"ack", meta(21))
            .unwrap();
        let changes = diff(&new, &acked, &LeaseTtlMap::new());
        assert!(
            matches!(
                &changes[..],
                [(Change::Move { phase: MovePhase::Acked, info }, _)] if info.acked && info.move_id == 13
            ),
            "{changes:?}"
        );
        let mut done = acked.clone();
        done.delete(&k, "dtable-cluster/moves/3f");
        done.delete(&k, "dtable-cluster/acks/3f/13");
        done.put(&k, "assign-3f", b"dtable-server-c", meta(22))
            .unwrap();
        let texts: Vec<String> = diff(&acked, &done, &LeaseTtlMap::new())
            .iter()
            .map(|(c, d)| c.text(d))
            .collect();
        assert_eq!(
            texts,
            [
                "move of bucket 3f dtable-server-a → dtable-server-c ended",
                "bucket 3f: dtable-server-a → dtable-server-c",
            ]
        );
        assert!(diff(&done, &done, &LeaseTtlMap::new()).is_empty());
    }

    fn slave(id: &str, version: &str) -> Vec<u8> {
        format!(
            r#"{{"node_id":"{id}","node_url":"u","local_node_url":"http://{id}:4000/","role":"slave","version":"{version}"}}"#
        )
        .into_bytes()
    }

    #[test]
    fn slaves_join_change_and_leave_as_node_events_of_role_slave() {
        let k = KeyLayout::default();
        let old = base();
        let mut new = old.clone();
        new.revision = 30;
        let key = "dtable-cluster/slaves/dtable-server-s1";
        new.put(&k, key, &slave("dtable-server-s1", "1"), meta(30))
            .unwrap();
        let changes = diff(&old, &new, &LeaseTtlMap::from([(0x1f, 9)]));
        let [(change, detail)] = &changes[..] else {
            panic!("{changes:?}");
        };
        assert_eq!(change.text(detail), "slave dtable-server-s1 joined");
        let Change::Node {
            role,
            node: Some(info),
            ..
        } = change
        else {
            panic!("{change:?}");
        };
        assert_eq!(role, "slave");
        assert_eq!(
            (
                info.role.as_str(),
                info.bucket_count,
                info.healthy,
                info.cordoned
            ),
            ("slave", 0, true, false)
        );
        assert_eq!(info.lease_ttl_seconds, 9);
        let json = serde_json::to_value(&Event {
            at: "t".into(),
            revision: 30,
            text: change.text(detail),
            change: change.clone(),
        })
        .unwrap();
        assert_eq!(json["kind"], "node");
        assert_eq!(json["role"], "slave");
        assert_eq!(json["node"]["role"], "slave");

        let mut changed = new.clone();
        let rewritten = KvMeta {
            mod_revision: 31,
            ..meta(30)
        };
        changed
            .put(&k, key, &slave("dtable-server-s1", "2"), rewritten)
            .unwrap();
        let texts: Vec<String> = diff(&new, &changed, &LeaseTtlMap::new())
            .iter()
            .map(|(c, d)| c.text(d))
            .collect();
        assert_eq!(texts, ["slave dtable-server-s1 changed: version 1 → 2"]);

        let mut left = changed.clone();
        left.delete(&k, key);
        let texts: Vec<String> = diff(&changed, &left, &LeaseTtlMap::new())
            .iter()
            .map(|(c, d)| c.text(d))
            .collect();
        assert_eq!(texts, ["slave dtable-server-s1 left"]);
    }

    #[test]
    fn events_serialize_to_the_documented_shape() {
        let e = Event {
            at: "2026-01-01T00:00:00.000Z".into(),
            revision: 5,
            change: Change::Bucket {
                bucket: "3f".into(),
                from: "dtable-server-a".into(),
                to: String::new(),
                epoch: 0,
            },
            text: "bucket 3f: dtable-server-a → (unassigned)".into(),
        };
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"at": "2026-01-01T00:00:00.000Z", "revision": 5, "kind": "bucket",
                "bucket": "3f", "from": "dtable-server-a", "to": "", "epoch": 0,
                "text": "bucket 3f: dtable-server-a → (unassigned)"})
        );
        let leader = Event {
            change: Change::Leader {
                leader: "cp1".into(),
            },
            ..e
        };
        assert!(leader.to_pb().is_none());
        assert_eq!(serde_json::to_value(&leader).unwrap()["kind"], "leader");
    }

    #[tokio::test]
    async fn a_subscriber_gets_a_snapshot_then_later_events_and_the_ring_is_bounded() {
        let events = Events::new();
        let view = Arc::new(base());
        let stop = CancellationToken::new();
        let mut stream = events.follow(stop.clone(), |item| async move { Some(item) });
        events.publish(&view, Vec::new());
        use tokio_stream::StreamExt;
        let Some(Item::Snapshot(s)) = stream.next().await else {
            panic!("no snapshot first");
        };
        assert_eq!(s.revision, 10);

        let mut later = (*view).clone();
        for i in 0..(RING + 5) {
            later.revision = 11 + i as i64;
            let change = Change::Leader {
                leader: format!("cp{i}"),
            };
            events.publish(&Arc::new(later.clone()), vec![(change, String::new())]);
        }
        let Some(Item::Event(first)) = stream.next().await else {
            panic!("no event after the snapshot");
        };
        assert_eq!(first.revision, 11);
        assert_eq!(first.text, "cp0 leads");
        let recent = events.recent(50);
        assert_eq!(recent.len(), 50);
        assert_eq!(recent.last().unwrap().revision, 11 + RING as i64 + 4);
        assert_eq!(events.recent(usize::MAX).len(), RING);

        stop.cancel();
        while stream.next().await.is_some() {}
    }

    #[tokio::test]
    async fn a_lagging_subscriber_gets_a_fresh_snapshot() {
        let events = Events::new();
        let mut view = base();
        events.publish(&Arc::new(view.clone()), Vec::new());
        let stop = CancellationToken::new();
        let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
        let mut gate = Some((entered_tx, gate_rx));
        // The renderer holds the snapshot back until the fan-out has overflowed.
        let mut stream = events.follow(stop.clone(), move |item| {
            let gate = gate.take();
            async move {
                if let Some((entered, g)) = gate {
                    let _ = entered.send(());
                    let _ = g.await;
                }
                Some(item)
            }
        });
        entered_rx.await.unwrap();
        for i in 0..(FANOUT_CAPACITY + 10) {
            view.revision = 11 + i as i64;
            let change = Change::Leader {
                leader: format!("cp{i}"),
            };
            events.publish(&Arc::new(view.clone()), vec![(change, String::new())]);
        }
        gate_tx.send(()).unwrap();
        use tokio_stream::StreamExt;
        assert!(matches!(stream.next().await, Some(Item::Snapshot(s)) if s.revision == 10));
        let Some(Item::Snapshot(fresh)) = stream.next().await else {
            panic!("a lagging subscriber must get a fresh snapshot");
        };
        assert_eq!(fresh.revision, view.revision);
        stop.cancel();
    }
}
