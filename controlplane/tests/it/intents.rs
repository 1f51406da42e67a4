//! Intents against real agents and sims: a cordon survives a control-plane restart and keeps
//! a leaver's buckets off its node; a drain hands a live node's buckets away and an uncordon
//! brings them back on a rebalance; a standby records intents that the leader carries out; a
//! dry run writes nothing and plans what the leader then does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dtable_proto::v1 as pb;
use dtable_testkit::cluster::{
    ControlPlane, Farm, balanced_over, bucket_counts, read_assignment, read_nodes,
    spawn_controlplane, spawn_server,
};
use dtable_testkit::{Etcd, wait_until};
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use serde_json::Value;

use crate::api::{get_json, grpc, post, wait_ready};
use crate::{SETTLE, STARTUP};

const NODES: [&str; 3] = ["dtable-server-a", "dtable-server-b", "dtable-server-c"];

/// Every `dtable-cluster/moves/<xx>` written from now on, as (bucket, from, to).
fn record_moves(client: &Client) -> Arc<Mutex<Vec<(String, String, String)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (mut c, out) = (client.clone(), seen.clone());
    tokio::spawn(async move {
        let opts = WatchOptions::new().with_prefix();
        let mut stream = c.watch("dtable-cluster/moves/", Some(opts)).await.unwrap();
        while let Ok(Some(msg)) = stream.message().await {
            for ev in msg.events() {
                let Some(kv) = ev.kv().filter(|_| ev.event_type() == EventType::Put) else {
                    continue;
                };
                let v: Value = serde_json::from_slice(kv.value()).unwrap();
                let bucket = kv
                    .key_str()
                    .unwrap()
                    .trim_start_matches("dtable-cluster/moves/");
                out.lock().unwrap().push((
                    bucket.to_owned(),
                    v["from"].as_str().unwrap().to_owned(),
                    v["to"].as_str().unwrap().to_owned(),
                ));
            }
        }
    });
    seen
}

async fn held_by(client: &Client, node: &str) -> usize {
    bucket_counts(client).await.get(node).copied().unwrap_or(0)
}

async fn key_exists(client: &Client, key: &str) -> bool {
    !client
        .clone()
        .get(key, None)
        .await
        .unwrap()
        .kvs()
        .is_empty()
}

/// Whether `cp`'s `/api/v1/nodes` shows `node` with `cordoned` and `draining` as given.
async fn shows(cp: &ControlPlane, node: &str, cordoned: bool, draining: bool) -> bool {
    let (status, body) = get_json(cp.http, "/api/v1/nodes").await;
    status == 200
        && body["nodes"].as_array().is_some_and(|ns| {
            ns.iter().any(|n| {
                n["node_id"] == node && n["cordoned"] == cordoned && n["draining"] == draining
            })
        })
}

#[tokio::test]
async fn a_cordon_survives_a_restart_and_gets_none_of_a_leavers_buckets() {
    let etcd = Etcd::start().await;
    let farm = Farm::new();
    let client = etcd.client().await;
    let mut cp = spawn_controlplane(&etcd, "cp1", 3, &[]);
    let mut servers: Vec<_> = NODES
        .iter()
        .map(|n| spawn_server(&etcd, &farm, n, 3, &[]))
        .collect();
    wait_until("balanced over three", STARTUP, || {
        balanced_over(&client, &NODES)
    })
    .await;
    let before = read_assignment(&client).await;
    let held_by_c = held_by(&client, NODES[2]).await;

    let (status, body) = post(cp.http, "/api/v1/nodes/dtable-server-c/cordon", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("keeps its"),
        "{body}"
    );

    // The control plane restarts; the cordon lives in etcd.
    cp.respawn();
    wait_ready(&cp).await;
    wait_until("the restarted instance sees the cordon", SETTLE, || {
        shows(&cp, NODES[2], true, false)
    })
    .await;
    wait_until("the restarted instance leads", SETTLE, || {
        let log = cp.proc.log();
        async move { log.contains("elected leader") }
    })
    .await;

    // b dies: all of its buckets go to a, none to the cordoned c.
    servers[1].agent.proc.kill9();
    wait_until("b's buckets re-placed", SETTLE, || async {
        let a = read_assignment(&client).await;
        a.len() == 256 && a.values().all(|n| n != NODES[1])
    })
    .await;
    let after = read_assignment(&client).await;
    for (bucket, owner) in &before {
        match owner.as_str() {
            n if n == NODES[1] => assert_eq!(after[bucket], NODES[0], "bucket {bucket}"),
            _ => assert_eq!(&after[bucket], owner, "bucket {bucket} moved"),
        }
    }
    assert_eq!(held_by(&client, NODES[2]).await, held_by_c);
    assert_eq!(held_by(&client, NODES[0]).await, 256 - held_by_c);
}

#[tokio::test]
async fn a_drain_hands_a_live_nodes_buckets_away_and_an_uncordon_brings_them_back() {
    let etcd = Etcd::start().await;
    let farm = Farm::new();
    let client = etcd.client().await;
    // Without auto-rebalance, so that the uncordoned node waits for a rebalance request.
    let cp = spawn_controlplane(&etcd, "cp1", 3, &["--auto-rebalance", "false"]);
    let _servers: Vec<_> = NODES
        .iter()
        .map(|n| spawn_server(&etcd, &farm, n, 10, &[]))
        .collect();
    // Without auto-rebalance the first server to register may get every bucket before the
    // others come; one rebalance request, once all three are there, spreads them.
    wait_until("three registered", STARTUP, || async {
        read_nodes(&client).await.len() == 3
    })
    .await;
    let (status, answer) = post(cp.http, "/api/v1/rebalance", "").await;
    assert_eq!(status, 200, "{answer}");
    wait_until("balanced over three", STARTUP, || {
        balanced_over(&client, &NODES)
    })
    .await;
    let held_by_a = held_by(&client, NODES[0]).await;
    let moves = record_moves(&client);

    let mut g = grpc(&cp).await;
    let done = g
        .drain(pb::NodeRequest {
            node_id: NODES[0].into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.key, "dtable-cluster/cordon/dtable-server-a");
    assert!(done.revision > 0);
    assert!(done.message.contains("by handoff"), "{}", done.message);
    let saw_in_flight = Arc::new(AtomicBool::new(false));
    wait_until("a drained, b and c balanced", SETTLE * 3, || {
        let (client, mut g, saw) = (client.clone(), g.clone(), saw_in_flight.clone());
        async move {
            let listed = g
                .list_moves(pb::ListMovesRequest {})
                .await
                .unwrap()
                .into_inner();
            for m in &listed.moves {
                assert_eq!(m.from, NODES[0], "{m:?}");
                assert!(m.move_id > 0);
                saw.store(true, Ordering::Relaxed);
            }
            balanced_over(&client, &NODES[1..]).await
        }
    })
    .await;
    let seen = moves.lock().unwrap().clone();
    assert!(
        seen.len() >= held_by_a,
        "{} moves for {held_by_a} buckets",
        seen.len()
    );
    assert!(
        seen.iter()
            .all(|(_, from, to)| from == NODES[0] && to != NODES[0]),
        "{seen:?}"
    );
    assert!(
        saw_in_flight.load(Ordering::Relaxed),
        "ListMoves never showed a move in flight"
    );
    assert!(cp.proc.log().contains("handoff committed"));
    assert!(shows(&cp, NODES[0], true, true).await);

    // Uncordoned, a takes nothing on its own (no auto-rebalance) ...
    let (status, body) = post(cp.http, "/api/v1/nodes/dtable-server-a/uncordon", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(!key_exists(&client, "dtable-cluster/cordon/dtable-server-a").await);
    wait_until("the uncordon seen", SETTLE, || {
        shows(&cp, NODES[0], false, false)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(held_by(&client, NODES[0]).await, 0);
    // ... and gets its share back on a rebalance.
    let (status, plan) = post(cp.http, "/api/v1/rebalance", "").await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["requested"], true);
    assert!(!plan["planned_moves"].as_array().unwrap().is_empty());
    wait_until("balanced over three again", SETTLE * 3, || {
        balanced_over(&client, &NODES)
    })
    .await;
    wait_until("the rebalance request cleared", SETTLE, || async {
        !key_exists(&client, "dtable-cluster/requests/rebalance").await
    })
    .await;
}

#[tokio::test]
async fn intents_accepted_by_a_standby_are_carried_out_by_the_leader() {
    let etcd = Etcd::start().await;
    let farm = Farm::new();
    let client = etcd.client().await;
    let cps = [
        spawn_controlplane(&etcd, "cp1", 3, &[]),
        spawn_controlplane(&etcd, "cp2", 3, &[]),
    ];
    let _servers: Vec<_> = NODES
        .iter()
        .map(|n| spawn_server(&etcd, &farm, n, 10, &[]))
        .collect();
    wait_until("balanced over three", STARTUP, || {
        balanced_over(&client, &NODES)
    })
    .await;
    let started = tokio::time::Instant::now();
    let si = 'found: loop {
        for (i, cp) in cps.iter().enumerate() {
            let (_, l) = get_json(cp.http, "/api/v1/leader").await;
            if l["this_instance_leads"] == false && l["leader"] == cps[1 - i].name {
                break 'found i;
            }
        }
        assert!(started.elapsed() < SETTLE, "no leader and standby");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (standby, leader) = (&cps[si], &cps[1 - si]);

    let mut g = grpc(standby).await;
    let done = g
        .drain(pb::NodeRequest {
            node_id: NODES[1].into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.node_id, NODES[1]);
    wait_until("b drained by the leader", SETTLE * 3, || {
        let pair = [NODES[0], NODES[2]];
        let client = client.clone();
        async move { balanced_over(&client, &pair).await }
    })
    .await;
    assert!(leader.proc.log().contains("handoff committed"));
    assert!(!standby.proc.log().contains("handoff started"));
    // Both instances report the drain from their own views.
    for cp in &cps {
        wait_until("the drain shown", SETTLE, || {
            shows(cp, NODES[1], true, true)
        })
        .await;
    }
}

#[tokio::test]
async fn a_dry_run_writes_nothing_and_plans_what_the_leader_then_does() {
    let etcd = Etcd::start().await;
    let farm = Farm::new();
    let client = etcd.client().await;
    let cp = spawn_controlplane(&etcd, "cp1", 3, &["--auto-rebalance", "false"]);
    let (a, b) = (NODES[0], NODES[1]);
    let (only_a, both) = ([a], [a, b]);
    let mut servers = vec![spawn_server(&etcd, &farm, a, 10, &[])];
    wait_until("a holds everything", SETTLE, || {
        balanced_over(&client, &only_a)
    })
    .await;
    // b joins and, without auto-rebalance, gets nothing until asked.
    servers.push(spawn_server(&etcd, &farm, b, 10, &[]));
    wait_until("b registered", SETTLE, || async {
        let (_, n) = get_json(cp.http, "/api/v1/nodes").await;
        n["nodes"].as_array().is_some_and(|n| n.len() == 2)
    })
    .await;
    let before = read_assignment(&client).await;

    let mut g = grpc(&cp).await;
    let plan = g
        .rebalance(pb::RebalanceRequest { dry_run: true })
        .await
        .unwrap()
        .into_inner();
    assert!(!plan.requested);
    let (status, http_plan) = post(cp.http, "/api/v1/rebalance?dry_run=true", "").await;
    assert_eq!(status, 200, "{http_plan}");
    assert_eq!(http_plan["requested"], false);
    let (status, body_plan) = post(cp.http, "/api/v1/rebalance", r#"{"dry_run": true}"#).await;
    assert_eq!(
        (status, &body_plan["requested"]),
        (200, &Value::Bool(false))
    );

    // Half of a's buckets go to b; an even split has no spare slot, so the plan is exact.
    let planned: BTreeMap<String, (String, String)> = plan
        .planned_moves
        .iter()
        .map(|m| (m.bucket.clone(), (m.from.clone(), m.to.clone())))
        .collect();
    assert_eq!(planned.len(), 128, "{planned:?}");
    assert!(planned.values().all(|(from, to)| from == a && to == b));
    for p in [&http_plan, &body_plan] {
        let moves = p["planned_moves"].as_array().unwrap();
        let same: BTreeMap<String, (String, String)> = moves
            .iter()
            .map(|m| {
                let s = |f: &str| m[f].as_str().unwrap().to_owned();
                (s("bucket"), (s("from"), s("to")))
            })
            .collect();
        assert_eq!(same, planned);
    }

    // Nothing was written: no request, no move, and the assignment stays as it was.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(read_assignment(&client).await, before);
    let ours = client
        .clone()
        .get("dtable-cluster/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let keys: Vec<&str> = ours
        .kvs()
        .iter()
        .filter_map(|kv| kv.key_str().ok())
        .collect();
    assert!(
        keys.iter()
            .all(|k| k.starts_with("dtable-cluster/election/")),
        "{keys:?}"
    );

    // The real request: the leader moves exactly the planned buckets.
    let real = g
        .rebalance(pb::RebalanceRequest { dry_run: false })
        .await
        .unwrap()
        .into_inner();
    assert!(real.requested);
    assert_eq!(real.planned_moves, plan.planned_moves);
    wait_until("balanced over two", SETTLE * 3, || {
        balanced_over(&client, &both)
    })
    .await;
    let after = read_assignment(&client).await;
    let moved: BTreeMap<String, (String, String)> = before
        .iter()
        .filter(|(bucket, from)| after[*bucket] != **from)
        .map(|(bucket, from)| (bucket.clone(), (from.clone(), after[bucket].clone())))
        .collect();
    assert_eq!(moved, planned);
}
