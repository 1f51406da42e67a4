//! Role slave: the agent registers a read replica under `dtable-cluster/slaves/` only, never
//! at a `dtable-server-` root key, so the control plane places nothing on it; and it removes
//! the registration as soon as the slave dies.

use std::time::{Duration, Instant};

use dtable_testkit::cluster::{
    Farm, balanced_over, read_assignment, read_nodes, read_registration, read_slaves,
    spawn_controlplane, spawn_server, spawn_slave_agent, spawn_slave_sim,
};
use dtable_testkit::{Etcd, http, wait_until};

use crate::harness::uuid_in_bucket;

/// Generous bound for settling on a loaded two-core machine.
const SETTLE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_slave_registers_only_under_slaves_and_is_given_no_buckets() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let farm = Farm::new();
    let _cp = spawn_controlplane(&etcd, "cp1", 3, &["--rejoin-hold", "2s"]);
    let server = spawn_server(&etcd, &farm, "dtable-server-0", 10, &[]);
    let slave_id = "dtable-server-slave-1";
    let slave = spawn_slave_sim(slave_id, &server.sim.url(), &[]);
    let _agent = spawn_slave_agent(&etcd, slave_id, 10, &slave.url(), &[]);

    wait_until("the slave is registered", SETTLE, || async {
        read_slaves(&client).await.contains_key(slave_id)
    })
    .await;
    let registered = &read_slaves(&client).await[slave_id];
    assert_ne!(registered.lease, 0, "on a lease");
    assert_eq!(registered.value["role"], "slave");
    assert_eq!(registered.value["node_id"], slave_id);
    assert_eq!(registered.value["local_node_url"], slave.url());

    wait_until("every bucket on the one server", SETTLE, || {
        balanced_over(&client, &["dtable-server-0"])
    })
    .await;
    // Give the control plane time to act on the slave if it ever would.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        read_assignment(&client)
            .await
            .values()
            .all(|n| n == "dtable-server-0"),
        "a bucket was placed on the slave"
    );
    let servers: Vec<String> = read_nodes(&client).await.into_keys().collect();
    assert_eq!(
        servers,
        ["dtable-server-0"],
        "only the server is under the dtable-server- prefix"
    );
    assert_eq!(read_registration(&client, slave_id).await, None);

    // Reads through the slave load the base from the owner.
    let uuid = uuid_in_bucket(0x42, 1);
    let slave_addr = slave.addr;
    let path = format!("/dtables/{uuid}");
    wait_until("the slave serves a read", SETTLE, || async {
        http::get(slave_addr, &path)
            .await
            .is_ok_and(|r| r.status == 200 && r.header("x-dtable-slave") == Some("1"))
    })
    .await;
    let read = http::get(slave_addr, &path).await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&read.body).unwrap();
    assert_eq!(body["source_node"], "dtable-server-0");
    assert_eq!(read.header("x-dtable-node"), Some(slave_id));
}

#[tokio::test]
async fn a_killed_slave_is_deregistered_at_once_and_registered_again_when_back() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let slave_id = "dtable-server-slave-2";
    let mut slave = spawn_slave_sim(slave_id, "http://127.0.0.1:9", &[]);
    let mut agent = spawn_slave_agent(&etcd, slave_id, 60, &slave.url(), &[]);
    wait_until("the slave is registered", SETTLE, || async {
        read_slaves(&client).await.contains_key(slave_id)
    })
    .await;
    let lease = read_slaves(&client).await[slave_id].lease;
    let metrics = http::get(agent.http, "/metrics").await.unwrap().text();
    assert!(
        metrics.contains("dtable_agent_info{")
            && metrics.contains(r#"role="slave""#)
            && metrics.contains(r#"mode="managed""#),
        "{metrics}"
    );

    slave.kill9();
    let killed = Instant::now();
    let mut gone = None;
    while killed.elapsed() < Duration::from_secs(20) {
        if !read_slaves(&client).await.contains_key(slave_id) {
            gone = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = gone.unwrap_or_else(|| {
        panic!(
            "the dead slave stayed registered for 20 s; agent:\n{}",
            agent.proc.log_tail(30)
        )
    });
    assert!(
        took <= Duration::from_secs(3),
        "deregistered {took:?} after the kill, want at most 3 s (lease TTL is 60 s)"
    );
    let left = client
        .clone()
        .lease_time_to_live(lease, None)
        .await
        .unwrap()
        .ttl();
    assert_eq!(left, -1, "the slave's lease was revoked");
    assert!(agent.proc.log().contains("connection refused"));

    slave.respawn();
    wait_until("registered again once back", SETTLE, || async {
        read_slaves(&client)
            .await
            .get(slave_id)
            .is_some_and(|r| r.lease != lease)
    })
    .await;
    assert!(agent.proc.try_wait().is_none(), "the agent exited");
    eprintln!("dead slave deregistered after {took:?}");
}
