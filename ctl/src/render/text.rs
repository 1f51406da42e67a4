//! Human-readable output of each command.

use dtable_proto::v1 as pb;
use pb::cluster_event::Event;

use super::map::{Legend, bucket_map, legend_lines};
use super::table::table;
use super::{StatusData, Style};

/// How many moves `status` lists before pointing at `dtablectl moves`.
const STATUS_MOVES_SHOWN: usize = 4;

/// `draining`, `cordoned` or empty: whether a node takes new buckets and keeps its own.
pub fn cordon_note(node: &pb::Node) -> &'static str {
    if node.draining || node.state == "draining" {
        "draining"
    } else if node.cordoned {
        "cordoned"
    } else {
        ""
    }
}

/// Whether a listed node is a read replica (a dtable-server-slave): it owns no bucket and is
/// never cordoned. An empty role (an older control plane) is a server.
pub fn is_slave(node: &pb::Node) -> bool {
    node.role == "slave"
}

/// `server` or `slave`, as the ROLE column shows it.
fn role(node: &pb::Node) -> &str {
    if node.role.is_empty() {
        "server"
    } else {
        &node.role
    }
}

/// `healthy` or `unhealthy`, as the HEALTH column shows it.
fn health(node: &pb::Node) -> &'static str {
    if node.healthy { "healthy" } else { "unhealthy" }
}

/// A node id, or `(unassigned)` for the empty one.
fn owner(id: &str) -> &str {
    if id.is_empty() { "(unassigned)" } else { id }
}

/// "1 move", "2 moves".
fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `status`: who leads, the revision, node and bucket counts, moves in flight, the map and
/// its legend.
pub fn status(data: &StatusData, style: Style) -> String {
    let (slaves, servers): (Vec<pb::Node>, Vec<pb::Node>) =
        data.nodes.nodes.iter().cloned().partition(is_slave);
    let nodes = &servers;
    let moves = data.moves();
    let role = if data.leader.this_instance_leads {
        "leader"
    } else {
        "standby"
    };
    let leader = if data.leader.leader.is_empty() {
        "none: no instance leads, placement is paused".to_owned()
    } else {
        data.leader.leader.clone()
    };
    let assigned = data
        .assignment
        .buckets
        .iter()
        .filter(|b| !b.node_id.is_empty())
        .count();
    let unassigned = dtable_core::BUCKET_COUNT.saturating_sub(assigned);
    let moves_line = match &data.moves {
        None => "unknown: this control plane does not serve ListMoves".to_owned(),
        Some(_) if moves.is_empty() => "none in flight".to_owned(),
        Some(_) => {
            let mut shown: Vec<String> = moves
                .iter()
                .take(STATUS_MOVES_SHOWN)
                .map(|m| format!("{} {} -> {}", m.bucket, owner(&m.from), m.to))
                .collect();
            if moves.len() > STATUS_MOVES_SHOWN {
                shown.push(format!(
                    "{} more (dtablectl moves)",
                    moves.len() - STATUS_MOVES_SHOWN
                ));
            }
            format!("{} in flight: {}", moves.len(), shown.join(", "))
        }
    };
    let mut rows = vec![
        ("control plane", format!("{} ({role})", data.url)),
        ("leader", leader),
        ("revision", data.assignment.revision.to_string()),
        ("nodes", node_counts(nodes)),
    ];
    if !slaves.is_empty() {
        rows.push(("slaves", slave_counts(&slaves)));
    }
    rows.extend([
        (
            "buckets",
            format!("{assigned} assigned, {unassigned} unassigned"),
        ),
        ("moves", moves_line),
    ]);
    let mut out = String::new();
    for (key, value) in rows {
        out.push_str(&format!("{key:<15}{value}\n"));
    }
    let legend = Legend::new(nodes, &data.assignment);
    out.push('\n');
    out.push_str(&bucket_map(&data.assignment, moves, &legend, style));
    out.push('\n');
    out.push_str(&legend_lines(
        &data.assignment,
        nodes,
        moves,
        &legend,
        style,
    ));
    out
}

/// "3: 1 active, 1 cordoned, 1 draining".
fn node_counts(nodes: &[pb::Node]) -> String {
    let count = |note: &str| nodes.iter().filter(|n| cordon_note(n) == note).count();
    let mut parts = vec![format!("{} active", count(""))];
    for note in ["cordoned", "draining"] {
        let n = count(note);
        if n > 0 {
            parts.push(format!("{n} {note}"));
        }
    }
    let unhealthy = nodes.iter().filter(|n| !n.healthy).count();
    if unhealthy > 0 {
        parts.push(format!("{unhealthy} unhealthy"));
    }
    format!("{}: {}", nodes.len(), parts.join(", "))
}

/// "2: 2 healthy" or "2: 1 healthy, 1 unhealthy" (the `slaves` line of `status`).
fn slave_counts(slaves: &[pb::Node]) -> String {
    let healthy = slaves.iter().filter(|n| n.healthy).count();
    let mut parts = vec![format!("{healthy} healthy")];
    if healthy < slaves.len() {
        parts.push(format!("{} unhealthy", slaves.len() - healthy));
    }
    format!("{}: {}", slaves.len(), parts.join(", "))
}

/// `nodes`: one row per node (servers, then slaves, as the control plane lists them), then a
/// total. A slave owns no bucket and is never cordoned: both columns show `-`.
pub fn nodes(resp: &pb::ListNodesResponse) -> String {
    if resp.nodes.is_empty() {
        return format!("no nodes registered (revision {})\n", resp.revision);
    }
    let rows: Vec<Vec<String>> = resp
        .nodes
        .iter()
        .map(|n| {
            let cordon = match cordon_note(n) {
                "" => "-",
                note => note,
            };
            let held = if is_slave(n) {
                "-".to_owned()
            } else {
                n.bucket_count.to_string()
            };
            vec![
                n.node_id.clone(),
                role(n).to_owned(),
                health(n).to_owned(),
                dash(&n.state),
                cordon.to_owned(),
                n.weight.to_string(),
                held,
                lease(n.lease_ttl_seconds),
                dash(&n.version),
                dash(&n.local_node_url),
            ]
        })
        .collect();
    let held: u64 = resp.nodes.iter().map(|n| u64::from(n.bucket_count)).sum();
    let mut out = table(
        &[
            "NODE",
            "ROLE",
            "HEALTH",
            "STATE",
            "CORDON",
            "WEIGHT",
            "BUCKETS",
            "LEASE",
            "VERSION",
            "LOCAL URL",
        ],
        &rows,
    );
    let slaves = resp.nodes.iter().filter(|n| is_slave(n)).count();
    let count = match slaves {
        0 => plural(resp.nodes.len(), "node", "nodes"),
        _ => format!(
            "{} and {}",
            plural(resp.nodes.len() - slaves, "server", "servers"),
            plural(slaves, "slave", "slaves")
        ),
    };
    out.push_str(&format!(
        "\n{count}, {held} buckets held (revision {})\n",
        resp.revision
    ));
    out
}

/// Seconds left on a lease, `-` when unknown.
fn lease(ttl: i64) -> String {
    if ttl < 0 {
        "-".to_owned()
    } else {
        format!("{ttl}s")
    }
}

/// The value, or `-` when empty.
fn dash(value: &str) -> String {
    if value.is_empty() {
        "-".to_owned()
    } else {
        value.to_owned()
    }
}

/// `lookup`: where the base `uuid` (normalized) is served.
pub fn lookup(uuid: &str, resp: &pb::LookupResponse) -> String {
    let mut rows = vec![("base", uuid.to_owned()), ("bucket", resp.bucket.clone())];
    if resp.node_id.is_empty() {
        rows.push((
            "node",
            "(unassigned: no server serves this bucket right now)".to_owned(),
        ));
    } else {
        rows.push(("node", resp.node_id.clone()));
        rows.push(("node_url", dash(&resp.node_url)));
        rows.push(("local_node_url", dash(&resp.local_node_url)));
        rows.push(("epoch", resp.epoch.to_string()));
    }
    rows.iter()
        .map(|(key, value)| format!("{key:<16}{value}\n"))
        .collect()
}

/// `rebalance`: what was requested and the planned moves.
pub fn rebalance(dry_run: bool, resp: &pb::RebalanceResponse) -> String {
    let n = resp.planned_moves.len();
    let mut out = if dry_run {
        format!(
            "dry run at revision {}: {} planned, nothing written\n",
            resp.revision,
            plural(n, "move", "moves")
        )
    } else if resp.requested {
        format!(
            "rebalance requested at revision {}: {} planned; the leader carries them out as \
             handoffs (follow with `dtablectl moves` or `dtablectl watch`)\n",
            resp.revision,
            plural(n, "move", "moves")
        )
    } else {
        format!(
            "rebalance not requested (revision {}): {} planned\n",
            resp.revision,
            plural(n, "move", "moves")
        )
    };
    if n == 0 {
        out.push_str("the assignment is already balanced\n");
        return out;
    }
    let rows: Vec<Vec<String>> = resp
        .planned_moves
        .iter()
        .map(|m| vec![m.bucket.clone(), owner(&m.from).to_owned(), m.to.clone()])
        .collect();
    out.push('\n');
    out.push_str(&table(&["BUCKET", "FROM", "TO"], &rows));
    out
}

/// `drain`, `cordon`, `uncordon`: what the control plane recorded.
pub fn intent(verb: &str, node: &str, resp: &pb::IntentResponse) -> String {
    let message = if resp.message.is_empty() {
        "recorded".to_owned()
    } else {
        resp.message.clone()
    };
    let node = if resp.node_id.is_empty() {
        node
    } else {
        &resp.node_id
    };
    format!(
        "{verb} {node}: {message}\n(intent key {}, revision {})\n",
        dash(&resp.key),
        resp.revision
    )
}

/// `moves`: one row per move in flight.
pub fn moves(resp: &pb::ListMovesResponse) -> String {
    if resp.moves.is_empty() {
        return format!("no moves in flight (revision {})\n", resp.revision);
    }
    let rows: Vec<Vec<String>> = resp
        .moves
        .iter()
        .map(|m| {
            vec![
                m.bucket.clone(),
                owner(&m.from).to_owned(),
                m.to.clone(),
                if m.acked { "released" } else { "releasing" }.to_owned(),
                m.move_id.to_string(),
                dash(&m.started_at),
            ]
        })
        .collect();
    let mut out = format!(
        "{} in flight (revision {})\n\n",
        plural(resp.moves.len(), "move", "moves"),
        resp.revision
    );
    out.push_str(&table(
        &["BUCKET", "FROM", "TO", "RELEASE", "MOVE ID", "STARTED"],
        &rows,
    ));
    out
}

/// One `watch` line: `time`, the revision, and what happened.
pub fn event(time: &str, ev: &pb::ClusterEvent) -> String {
    let what = match &ev.event {
        Some(Event::Snapshot(s)) => snapshot(s),
        Some(Event::Bucket(b)) => format!(
            "bucket {}: {} -> {} (epoch {})",
            b.bucket,
            owner(&b.from),
            owner(&b.to),
            b.epoch
        ),
        Some(Event::Move(m)) => {
            let mv = m.r#move.clone().unwrap_or_default();
            format!(
                "move {} {} -> {} {} (move id {})",
                mv.bucket,
                owner(&mv.from),
                mv.to,
                dash(&m.phase),
                mv.move_id
            )
        }
        Some(Event::Node(n)) => node_change(n),
        None => "unknown event (newer control plane?)".to_owned(),
    };
    format!("{time} rev {} {what}", ev.revision)
}

/// The snapshot that opens a watch, on one line.
fn snapshot(s: &pb::Snapshot) -> String {
    let assignment = s.assignment.clone().unwrap_or_default();
    let assigned = assignment
        .buckets
        .iter()
        .filter(|b| !b.node_id.is_empty())
        .count();
    let (slaves, servers): (Vec<&pb::Node>, Vec<&pb::Node>) =
        s.nodes.iter().partition(|n| is_slave(n));
    let nodes: Vec<String> = servers
        .iter()
        .map(|n| {
            let held = assignment
                .buckets
                .iter()
                .filter(|b| b.node_id == n.node_id)
                .count();
            match cordon_note(n) {
                "" => format!("{} {held}", n.node_id),
                note => format!("{} {held} {note}", n.node_id),
            }
        })
        .collect();
    let slaves = match slaves.len() {
        0 => String::new(),
        n => format!(
            ", {} ({})",
            plural(n, "slave", "slaves"),
            slaves
                .iter()
                .map(|s| s.node_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        "snapshot: {} ({}){slaves}, {assigned}/{} buckets assigned, {} in flight",
        plural(servers.len(), "node", "nodes"),
        nodes.join(", "),
        dtable_core::BUCKET_COUNT,
        plural(s.moves.len(), "move", "moves"),
    )
}

/// A node that joined, left or changed.
fn node_change(n: &pb::NodeChanged) -> String {
    let id = match &n.node {
        Some(node) if n.node_id.is_empty() => node.node_id.as_str(),
        _ => n.node_id.as_str(),
    };
    match &n.node {
        Some(node) => {
            let mut details = vec![node.state.clone()];
            let note = cordon_note(node);
            if !note.is_empty() && note != node.state {
                details.push(note.to_owned());
            }
            details.push(format!("weight {}", node.weight));
            if !is_slave(node) {
                details.push(plural(node.bucket_count as usize, "bucket", "buckets"));
            }
            if !node.healthy {
                details.push("unhealthy".to_owned());
            }
            if !node.local_node_url.is_empty() {
                details.push(node.local_node_url.clone());
            }
            let what = if is_slave(node) { "slave" } else { "node" };
            format!("{what} {id} {}: {}", dash(&n.change), details.join(", "))
        }
        None => format!("node {id} {}", dash(&n.change)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures;

    fn status_data() -> StatusData {
        let (assignment, nodes, moves) = fixtures::cluster();
        StatusData {
            url: "http://cp1:5580".to_owned(),
            leader: pb::LeaderInfo {
                leader: "cp1".to_owned(),
                this_instance_leads: true,
            },
            nodes: pb::ListNodesResponse {
                revision: 512,
                nodes,
            },
            moves: Some(pb::ListMovesResponse {
                revision: 512,
                moves,
            }),
            assignment,
        }
    }

    #[test]
    fn status_names_leader_counts_and_moves() {
        let text = status(&status_data(), Style::PLAIN);
        assert!(
            text.contains("control plane  http://cp1:5580 (leader)"),
            "{text}"
        );
        assert!(text.contains("leader         cp1\n"), "{text}");
        assert!(text.contains("revision       512\n"), "{text}");
        assert!(
            text.contains("nodes          3: 1 active, 1 cordoned, 1 draining"),
            "{text}"
        );
        assert!(text.contains("255 assigned, 1 unassigned"), "{text}");
        assert!(
            text.contains("1 in flight: 2a dtable-server-a -> dtable-server-b"),
            "{text}"
        );
        assert!(text.contains("   0123456789abcdef\n"), "{text}");
    }

    #[test]
    fn status_without_list_moves_says_so() {
        let mut data = status_data();
        data.moves = None;
        data.leader.leader.clear();
        let text = status(&data, Style::PLAIN);
        assert!(text.contains("does not serve ListMoves"), "{text}");
        assert!(text.contains("no instance leads"), "{text}");
    }

    #[test]
    fn nodes_table_has_every_column() {
        let (_, nodes, _) = fixtures::cluster();
        let text = super::nodes(&pb::ListNodesResponse { revision: 9, nodes });
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NODE"), "{text}");
        for col in [
            "ROLE",
            "HEALTH",
            "STATE",
            "CORDON",
            "WEIGHT",
            "BUCKETS",
            "LEASE",
            "VERSION",
            "LOCAL URL",
        ] {
            assert!(lines[0].contains(col), "{col} missing: {text}");
        }
        let b: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            b,
            [
                "dtable-server-b",
                "server",
                "healthy",
                "active",
                "cordoned",
                "1",
                "85",
                "-",
                "5.3.0",
                "http://10.0.0.2:5000/"
            ]
        );
        let c: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(c[3..5], ["draining", "draining"]);
        assert_eq!(c[7], "80s");
        assert!(
            text.ends_with("3 nodes, 255 buckets held (revision 9)\n"),
            "{text}"
        );
    }

    #[test]
    fn slaves_show_their_role_and_health_and_hold_no_buckets() {
        let (assignment, mut nodes, moves) = fixtures::cluster();
        nodes.extend(fixtures::slaves());
        let text = super::nodes(&pb::ListNodesResponse {
            revision: 9,
            nodes: nodes.clone(),
        });
        let lines: Vec<&str> = text.lines().collect();
        let s1: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(
            s1,
            [
                "dtable-server-slave-1",
                "slave",
                "healthy",
                "active",
                "-",
                "1",
                "-",
                "8s",
                "5.3.0",
                "http://10.0.1.1:4000/"
            ],
            "{text}"
        );
        let s2: Vec<&str> = lines[5].split_whitespace().collect();
        assert_eq!(s2[1..3], ["slave", "unhealthy"], "{text}");
        assert!(
            text.ends_with("3 servers and 2 slaves, 255 buckets held (revision 9)\n"),
            "{text}"
        );

        let mut data = status_data();
        data.nodes.nodes = nodes.clone();
        let status = status(&data, Style::PLAIN);
        assert!(
            status.contains("nodes          3: 1 active, 1 cordoned, 1 draining\n"),
            "slaves are not counted as nodes:\n{status}"
        );
        assert!(
            status.contains("slaves         2: 1 healthy, 1 unhealthy\n"),
            "{status}"
        );
        assert!(
            !status.contains("dtable-server-slave"),
            "the map and its legend never show slaves:\n{status}"
        );
        assert!(
            !super::status(&status_data(), Style::PLAIN).contains("slaves "),
            "no slaves line without slaves"
        );

        let snapshot = event(
            "t",
            &pb::ClusterEvent {
                revision: 1,
                event: Some(Event::Snapshot(pb::Snapshot {
                    assignment: Some(assignment),
                    nodes: nodes.clone(),
                    moves,
                })),
            },
        );
        assert!(
            snapshot.contains(
                "snapshot: 3 nodes (dtable-server-a 85, dtable-server-b 85 cordoned, \
                 dtable-server-c 85 draining), 2 slaves (dtable-server-slave-1, \
                 dtable-server-slave-2), 255/256"
            ),
            "{snapshot}"
        );
        let joined = event(
            "t",
            &pb::ClusterEvent {
                revision: 2,
                event: Some(Event::Node(pb::NodeChanged {
                    node: Some(nodes[3].clone()),
                    node_id: nodes[3].node_id.clone(),
                    change: "joined".to_owned(),
                })),
            },
        );
        assert!(
            joined.ends_with(
                "slave dtable-server-slave-1 joined: active, weight 1, http://10.0.1.1:4000/"
            ),
            "{joined}"
        );
    }

    #[test]
    fn lookup_of_an_unassigned_bucket_says_so() {
        let text = lookup(
            "ff000000000000000000000000000000",
            &pb::LookupResponse {
                bucket: "ff".to_owned(),
                ..Default::default()
            },
        );
        assert!(text.contains("bucket          ff\n"), "{text}");
        assert!(text.contains("unassigned"), "{text}");
        assert!(!text.contains("epoch"), "{text}");
    }

    #[test]
    fn rebalance_lists_planned_moves() {
        let resp = pb::RebalanceResponse {
            requested: false,
            revision: 77,
            planned_moves: vec![pb::PlannedMove {
                bucket: "ff".to_owned(),
                from: String::new(),
                to: "dtable-server-c".to_owned(),
            }],
        };
        let text = rebalance(true, &resp);
        assert!(text.starts_with("dry run at revision 77: 1 move planned, nothing written\n"));
        assert!(
            text.contains("ff      (unassigned)  dtable-server-c"),
            "{text}"
        );
    }

    #[test]
    fn events_are_one_line_each() {
        let (assignment, nodes, moves) = fixtures::cluster();
        let events = [
            Event::Snapshot(pb::Snapshot {
                assignment: Some(assignment),
                nodes: nodes.clone(),
                moves: moves.clone(),
            }),
            Event::Bucket(pb::BucketChanged {
                bucket: "2a".to_owned(),
                from: "dtable-server-a".to_owned(),
                to: "dtable-server-b".to_owned(),
                epoch: 600,
            }),
            Event::Move(pb::MoveChanged {
                r#move: Some(moves[0].clone()),
                phase: "ended".to_owned(),
            }),
            Event::Node(pb::NodeChanged {
                node: None,
                node_id: "dtable-server-c".to_owned(),
                change: "left".to_owned(),
            }),
        ];
        let lines: Vec<String> = events
            .into_iter()
            .map(|e| {
                event(
                    "2026-11-25T10:00:00.000Z",
                    &pb::ClusterEvent {
                        revision: 600,
                        event: Some(e),
                    },
                )
            })
            .collect();
        for line in &lines {
            assert!(!line.contains('\n'), "{line}");
            assert!(
                line.starts_with("2026-11-25T10:00:00.000Z rev 600 "),
                "{line}"
            );
        }
        assert!(lines[0].contains("snapshot: 3 nodes"), "{}", lines[0]);
        assert!(lines[0].contains("255/256 buckets assigned, 1 move in flight"));
        assert!(lines[1].ends_with("bucket 2a: dtable-server-a -> dtable-server-b (epoch 600)"));
        assert!(lines[2].contains("move 2a dtable-server-a -> dtable-server-b ended"));
        assert!(
            lines[3].ends_with("node dtable-server-c left"),
            "{}",
            lines[3]
        );
    }
}
