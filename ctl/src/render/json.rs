//! Machine-readable output: each command's answer as one JSON document whose fields carry the
//! proto field names, so scripts can rely on the API's own vocabulary. Empty strings stay
//! empty strings (an unassigned bucket has `"node_id": ""`), as in the API.

use dtable_proto::v1 as pb;
use pb::cluster_event::Event;
use serde_json::{Value, json};

use super::StatusData;

/// A node.
pub fn node(n: &pb::Node) -> Value {
    json!({
        "node_id": n.node_id,
        "node_url": n.node_url,
        "local_node_url": n.local_node_url,
        "state": n.state,
        "role": n.role,
        "healthy": n.healthy,
        "weight": n.weight,
        "version": n.version,
        "bucket_count": n.bucket_count,
        "lease_id": n.lease_id,
        "lease_ttl_seconds": n.lease_ttl_seconds,
        "cordoned": n.cordoned,
        "draining": n.draining,
        "started_at": n.started_at,
    })
}

/// A move in flight.
pub fn move_(m: &pb::Move) -> Value {
    json!({
        "bucket": m.bucket,
        "from": m.from,
        "to": m.to,
        "started_at": m.started_at,
        "move_id": m.move_id,
        "acked": m.acked,
    })
}

/// The bucket map.
pub fn assignment(a: &pb::Assignment) -> Value {
    let buckets: Vec<Value> = a
        .buckets
        .iter()
        .map(|b| json!({"bucket": b.bucket, "node_id": b.node_id, "epoch": b.epoch}))
        .collect();
    json!({"revision": a.revision, "buckets": buckets})
}

/// `nodes`.
pub fn nodes(resp: &pb::ListNodesResponse) -> Value {
    json!({
        "revision": resp.revision,
        "nodes": resp.nodes.iter().map(node).collect::<Vec<_>>(),
    })
}

/// `moves`.
pub fn moves(resp: &pb::ListMovesResponse) -> Value {
    json!({
        "revision": resp.revision,
        "moves": resp.moves.iter().map(move_).collect::<Vec<_>>(),
    })
}

/// `lookup` of base `uuid` (normalized).
pub fn lookup(uuid: &str, resp: &pb::LookupResponse) -> Value {
    json!({
        "dtable_uuid": uuid,
        "bucket": resp.bucket,
        "node_id": resp.node_id,
        "node_url": resp.node_url,
        "local_node_url": resp.local_node_url,
        "epoch": resp.epoch,
    })
}

/// `rebalance`.
pub fn rebalance(dry_run: bool, resp: &pb::RebalanceResponse) -> Value {
    let planned: Vec<Value> = resp
        .planned_moves
        .iter()
        .map(|m| json!({"bucket": m.bucket, "from": m.from, "to": m.to}))
        .collect();
    json!({
        "dry_run": dry_run,
        "requested": resp.requested,
        "revision": resp.revision,
        "planned_moves": planned,
    })
}

/// `drain`, `cordon`, `uncordon`.
pub fn intent(verb: &str, resp: &pb::IntentResponse) -> Value {
    json!({
        "intent": verb,
        "node_id": resp.node_id,
        "key": resp.key,
        "revision": resp.revision,
        "message": resp.message,
    })
}

/// `status`: the answering instance, the leader, counts, nodes, moves and the bucket map.
/// `moves` is null when the control plane does not serve `ListMoves`.
pub fn status(data: &StatusData) -> Value {
    let assigned = data
        .assignment
        .buckets
        .iter()
        .filter(|b| !b.node_id.is_empty())
        .count();
    json!({
        "control_plane": data.url,
        "leader": data.leader.leader,
        "this_instance_leads": data.leader.this_instance_leads,
        "revision": data.assignment.revision,
        "assigned": assigned,
        "unassigned": dtable_core::BUCKET_COUNT.saturating_sub(assigned),
        "nodes": data.nodes.nodes.iter().map(node).collect::<Vec<_>>(),
        "moves": data.moves.as_ref().map(|m| m.moves.iter().map(move_).collect::<Vec<_>>()),
        "assignment": assignment(&data.assignment),
    })
}

/// One `watch` event, stamped with the local `time` it was received.
pub fn event(time: &str, ev: &pb::ClusterEvent) -> Value {
    let mut out = json!({"time": time, "revision": ev.revision});
    let (kind, body) = match &ev.event {
        Some(Event::Snapshot(s)) => (
            "snapshot",
            json!({
                "assignment": assignment(&s.assignment.clone().unwrap_or_default()),
                "nodes": s.nodes.iter().map(node).collect::<Vec<_>>(),
                "moves": s.moves.iter().map(move_).collect::<Vec<_>>(),
            }),
        ),
        Some(Event::Bucket(b)) => (
            "bucket",
            json!({"bucket": b.bucket, "from": b.from, "to": b.to, "epoch": b.epoch}),
        ),
        Some(Event::Move(m)) => (
            "move",
            json!({"move": m.r#move.as_ref().map(move_), "phase": m.phase}),
        ),
        Some(Event::Node(n)) => (
            "node",
            json!({"node_id": n.node_id, "change": n.change, "node": n.node.as_ref().map(node)}),
        ),
        None => ("unknown", json!({})),
    };
    out["type"] = Value::from(kind);
    if let (Value::Object(out), Value::Object(body)) = (&mut out, body) {
        out.extend(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures;

    /// Serializes and parses back, as a script would read it.
    fn roundtrip(v: &Value) -> Value {
        serde_json::from_str(&serde_json::to_string(v).unwrap()).unwrap()
    }

    #[test]
    fn status_carries_the_data() {
        let (assignment, nodes, moves) = fixtures::cluster();
        let data = StatusData {
            url: "http://cp:5580".to_owned(),
            leader: pb::LeaderInfo {
                leader: "cp1".to_owned(),
                this_instance_leads: false,
            },
            assignment,
            nodes: pb::ListNodesResponse {
                revision: 512,
                nodes,
            },
            moves: Some(pb::ListMovesResponse {
                revision: 512,
                moves,
            }),
        };
        let v = roundtrip(&status(&data));
        assert_eq!(v["leader"], "cp1");
        assert_eq!(v["this_instance_leads"], false);
        assert_eq!(v["revision"], 512);
        assert_eq!(v["assigned"], 255);
        assert_eq!(v["unassigned"], 1);
        assert_eq!(v["nodes"].as_array().unwrap().len(), 3);
        assert_eq!(v["nodes"][1]["cordoned"], true);
        assert_eq!(v["nodes"][2]["draining"], true);
        assert_eq!(v["moves"][0]["bucket"], "2a");
        assert_eq!(v["assignment"]["buckets"].as_array().unwrap().len(), 256);
        assert_eq!(v["assignment"]["buckets"][3]["node_id"], "dtable-server-a");
        assert_eq!(v["assignment"]["buckets"][255]["node_id"], "");

        let unknown = StatusData {
            moves: None,
            ..data
        };
        assert!(roundtrip(&status(&unknown))["moves"].is_null());
    }

    #[test]
    fn events_carry_type_time_and_fields() {
        let (_, nodes, moves) = fixtures::cluster();
        let ev = pb::ClusterEvent {
            revision: 7,
            event: Some(Event::Move(pb::MoveChanged {
                r#move: Some(moves[0].clone()),
                phase: "acked".to_owned(),
            })),
        };
        let v = roundtrip(&event("T", &ev));
        assert_eq!(v["type"], "move");
        assert_eq!(v["time"], "T");
        assert_eq!(v["revision"], 7);
        assert_eq!(v["phase"], "acked");
        assert_eq!(v["move"]["to"], "dtable-server-b");

        let ev = pb::ClusterEvent {
            revision: 8,
            event: Some(Event::Node(pb::NodeChanged {
                node: Some(nodes[0].clone()),
                node_id: nodes[0].node_id.clone(),
                change: "joined".to_owned(),
            })),
        };
        let v = roundtrip(&event("T", &ev));
        assert_eq!(v["type"], "node");
        assert_eq!(v["node"]["local_node_url"], "http://10.0.0.1:5000/");
    }

    #[test]
    fn every_answer_is_a_json_object() {
        let (_, nodes, moves) = fixtures::cluster();
        let docs = [
            super::nodes(&pb::ListNodesResponse { revision: 1, nodes }),
            super::moves(&pb::ListMovesResponse { revision: 1, moves }),
            lookup(
                "2a000000000000000000000000000000",
                &pb::LookupResponse {
                    bucket: "2a".to_owned(),
                    node_id: "dtable-server-a".to_owned(),
                    epoch: 140,
                    ..Default::default()
                },
            ),
            rebalance(false, &pb::RebalanceResponse::default()),
            intent("cordon", &pb::IntentResponse::default()),
        ];
        for doc in docs {
            assert!(roundtrip(&doc).is_object(), "{doc}");
        }
    }
}
