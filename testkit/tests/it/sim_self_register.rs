//! The sim as SeaTable's enterprise dtable-server with a `cluster_config`: it registers itself
//! under its own lease, follows `assign-<xx>` itself, registers again when its lease is
//! revoked, and revokes its lease when it stops cleanly.

use std::time::Duration;

use dtable_testkit::cluster::{put_assign, read_registration};
use dtable_testkit::sim::SimOptions;
use dtable_testkit::{Etcd, http, wait_until};
use hyper::StatusCode;

use crate::sim::{BASE_AB, TestSim, json};

#[tokio::test]
async fn a_self_registering_sim_registers_follows_its_assignment_and_leaves_cleanly() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let node = "dtable-server-self1";
    let sim = TestSim::start(SimOptions::self_registering(node, etcd.endpoints(), "", 6)).await;
    wait_until(
        "the sim registers itself",
        Duration::from_secs(10),
        || async { read_registration(&client, node).await.is_some() },
    )
    .await;
    let first = read_registration(&client, node).await.unwrap();
    assert_ne!(first.lease, 0, "registered under a lease");
    let record = &first.value;
    assert_eq!(record["node_id"], node);
    assert_eq!(record["local_node_url"], format!("http://{}/", sim.addr));
    assert_eq!(record["node_url"], record["local_node_url"]);
    assert_eq!(record["role"], "server");
    assert_eq!(record["state"], "active");
    assert_eq!(record["weight"], 1);
    assert!(
        record["started_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let ttl = client
        .clone()
        .lease_time_to_live(first.lease, None)
        .await
        .unwrap();
    assert!(
        (1..=6).contains(&ttl.granted_ttl()),
        "granted {}",
        ttl.granted_ttl()
    );
    let state = json(&http::get(sim.addr, "/_sim/state").await.unwrap());
    assert_eq!(state["registration"]["lease"], first.lease);

    // Kept alive past its TTL.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        read_registration(&client, node).await.map(|r| r.lease),
        Some(first.lease),
        "the lease was not kept alive"
    );

    // It owns exactly what is assigned to it.
    let refused = http::get(sim.addr, &format!("/dtables/{BASE_AB}"))
        .await
        .unwrap();
    assert_eq!(refused.status, StatusCode::CONFLICT);
    let epoch = put_assign(&client, 0xab, node).await;
    wait_until(
        "the sim owns bucket ab",
        Duration::from_secs(10),
        || async { sim.handle.epoch(dtable_core::Bucket(0xab)) == Some(epoch) },
    )
    .await;
    let served = http::get(sim.addr, &format!("/dtables/{BASE_AB}"))
        .await
        .unwrap();
    assert_eq!(served.status, StatusCode::OK, "{}", served.text());
    assert_eq!(sim.handle.ownership().owned().len(), 1);

    // Someone revokes its lease (a seatable agent would): it registers again.
    client.clone().lease_revoke(first.lease).await.unwrap();
    wait_until(
        "the sim registers again with a new lease",
        Duration::from_secs(15),
        || async {
            read_registration(&client, node)
                .await
                .is_some_and(|r| r.lease != first.lease && r.lease != 0)
        },
    )
    .await;

    // A clean stop revokes the lease: the key goes at once.
    sim.stop().await;
    assert_eq!(read_registration(&client, node).await, None);
}

#[tokio::test]
async fn self_registration_needs_a_cluster_node_id() {
    let etcd = Etcd::start().await;
    let err = dtable_testkit::sim::SimServer::new(SimOptions::self_registering(
        "server-without-prefix",
        etcd.endpoints(),
        "",
        6,
    ))
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("--self-register"), "{err}");
}
