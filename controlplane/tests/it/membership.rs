//! Membership changes: registration, SeaTable's lookup, crash, SIGTERM, and a join.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dtable_testkit::cluster::{
    Farm, balanced_over, bucket_counts, read_assignment, read_nodes, spawn_controlplane,
    spawn_server,
};
use dtable_testkit::{Etcd, wait_until};

use crate::{SETTLE, STARTUP};

const NODES: [&str; 3] = ["dtable-server-a", "dtable-server-b", "dtable-server-c"];

/// SeaTable dtable-web's lookup, step by step: the UUID as 32 lowercase hex characters,
/// `assign-` + its first two, then the `dtable-server-` prefix map, then the JSON at that key.
async fn seatable_lookup(client: &etcd_client::Client, uuid: &str) -> (String, String, String) {
    let hex = uuid.replace('-', "").to_lowercase();
    let mut c = client.clone();
    let node_id = c.get(format!("assign-{}", &hex[..2]), None).await.unwrap();
    let node_id = node_id.kvs()[0].value_str().unwrap().to_owned();
    let map = read_nodes(client).await;
    let info = &map[&node_id];
    (
        node_id,
        info["node_url"].as_str().unwrap().to_owned(),
        info["local_node_url"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn three_agents_split_85_85_86_and_seatable_finds_them() {
    let etcd = Etcd::start().await;
    let farm = Farm::new();
    let client = etcd.client().await;
    let _cp = spawn_controlplane(&etcd, "cp1", 3, &[]);
    let servers: Vec<_> = NODES
        .iter()
        .map(|n| spawn_server(&etcd, &farm, n, 10, &[]))
        .collect();
    wait_until("256 buckets over three nodes", SETTLE, || {
        balanced_over(&client, &NODES)
    })
    .await;

    let mut counts: Vec<usize> = bucket_counts(&client).await.into_values().collect();
    counts.sort();
    assert_eq!(counts, vec![85, 85, 86]);

    for uuid in [
        "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        "FF1B2C3D-4E5F-6071-8293-A4B5C6D7E8F9",
        "7c000000-0000-0000-0000-000000000000",
    ] {
        let (node, url, local) = seatable_lookup(&client, uuid).await;
        let bucket = uuid.replace('-', "").to_lowercase()[..2].to_owned();
        assert_eq!(read_assignment(&client).await[&bucket], node);
        assert_eq!(url, format!("https://cloud.example/{node}/"));
        let server = servers.iter().find(|s| s.node_id() == node).unwrap();
        assert_eq!(local, server.sim.url());
        let json = &read_nodes(&client).await[&node];
        assert_eq!(json["role"], "server");
        assert_eq!(json["state"], "active");
        assert_eq!(json["node_id"], node.as_str());
    }
}

#[tokio::test]
async fn a_killed_agent_loses_exactly_its_buckets_after_its_lease_expires() {
    let etcd = Etcd::start().await;
    let farm = Farm::new();
    let client = etcd.client().await;
    let _cp = spawn_controlplane(&etcd, "cp1", 3, &[]);
    let mut agents: Vec<_> = NODES
        .iter()
        .map(|n| spawn_server(&etcd, &farm, n, 3, &[]))
        .collect();
    wait_until("balanced over three", STARTUP, || {
        balanced_over(&client, &NODES)
    })
    .await;
    let before = read_assignment(&client).await;

    agents[2].agent.proc.kill9();
    let killed = Instant::now();
    // The lease is still alive for a while: nothing moves before it expires.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        read_assignment(&client).await,
        before,
        "buckets moved before the lease expired"
    );

    wait_until(
        "the dead node's buckets re-placed",
        Duration::from_secs(10),
        || balanced_over(&client, &NODES[..2]),
    )
    .await;
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(3 + 2),
        "took {took:?}, want within TTL + 2 s"
    );
    let after = read_assignment(&client).await;
    for (bucket, owner) in &before {
        if owner != NODES[2] {
            assert_eq!(
                &after[bucket], owner,
                "bucket {bucket} of a live node moved"
            );
        }
    }
}

#[tokio::test]
async fn a_sigterm_drains_the_node_by_handoff_and_exits_zero() {
    let etcd = Etcd::start().await;
    let farm = Farm::new();
    let client = etcd.client().await;
    let _cp = spawn_controlplane(&etcd, "cp1", 3, &[]);
    let mut agents: Vec<_> = NODES
        .iter()
        .map(|n| spawn_server(&etcd, &farm, n, 30, &[]))
        .collect();
    wait_until("balanced over three", STARTUP, || {
        balanced_over(&client, &NODES)
    })
    .await;
    let before = read_assignment(&client).await;

    agents[0].agent.proc.sigterm();
    let sent = Instant::now();
    wait_until(
        "buckets handed off the draining node",
        Duration::from_secs(30),
        || balanced_over(&client, &NODES[1..]),
    )
    .await;
    let took = sent.elapsed();
    assert!(
        took <= Duration::from_secs(30),
        "took {took:?}, want within 30 s"
    );
    let status = agents[0]
        .agent
        .proc
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("agent exits");
    assert!(status.success(), "{status:?}");
    let after = read_assignment(&client).await;
    let moved = before.iter().filter(|(b, o)| after[*b] != **o).count();
    assert_eq!(moved, before.values().filter(|o| *o == NODES[0]).count());
    assert!(
        _cp.proc.log().contains("handoff committed"),
        "moved without handoffs"
    );
}

#[tokio::test]
async fn a_fourth_agent_takes_64_buckets_from_the_others_only() {
    let etcd = Etcd::start().await;
    let farm = Farm::new();
    let client = etcd.client().await;
    let _cp = spawn_controlplane(&etcd, "cp1", 3, &[]);
    let _agents: Vec<_> = NODES
        .iter()
        .map(|n| spawn_server(&etcd, &farm, n, 10, &[]))
        .collect();
    wait_until("balanced over three", STARTUP, || {
        balanced_over(&client, &NODES)
    })
    .await;
    let before = read_assignment(&client).await;

    let _d = spawn_server(&etcd, &farm, "dtable-server-d", 10, &[]);
    let four = [NODES[0], NODES[1], NODES[2], "dtable-server-d"];
    wait_until("balanced over four", SETTLE, || {
        balanced_over(&client, &four)
    })
    .await;
    let after = read_assignment(&client).await;
    let mut moved: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (b, from) in &before {
        if after[b] != *from {
            *moved.entry((from.as_str(), after[b].as_str())).or_default() += 1;
        }
    }
    assert!(
        moved.keys().all(|(_, to)| *to == "dtable-server-d"),
        "moves: {moved:?}"
    );
    assert_eq!(moved.values().sum::<usize>(), 64);
    assert_eq!(bucket_counts(&client).await["dtable-server-d"], 64);
}
