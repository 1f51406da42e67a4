//! Registration under a lease, and a restart that must not steal a live registration.

use std::time::{Duration, Instant};

use dtable_testkit::cluster::{Farm, read_nodes, spawn_agent, spawn_server};
use dtable_testkit::{Etcd, wait_until};

async fn registration_lease(client: &etcd_client::Client, node: &str) -> Option<i64> {
    let mut c = client.clone();
    let resp = c.get(node, None).await.ok()?;
    resp.kvs().first().map(|kv| kv.lease())
}

#[tokio::test]
async fn a_restarted_agent_waits_for_its_old_lease_then_registers() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let node = "dtable-server-r";
    let farm = Farm::new();
    let mut first = spawn_server(&etcd, &farm, node, 5, &[]);
    wait_until("first registration", Duration::from_secs(10), || async {
        registration_lease(&client, node).await.is_some()
    })
    .await;
    let old_lease = registration_lease(&client, node).await.unwrap();
    assert_ne!(old_lease, 0, "registered under a lease");
    let record = &read_nodes(&client).await[node];
    assert_eq!(record["node_id"], node);

    // Crash without revoking, and restart at once with the same node id.
    first.agent.proc.kill9();
    let mut second = spawn_agent(&etcd, node, 5, &first.sim.url(), &[]);
    let restarted = Instant::now();
    wait_until(
        "the new agent notices the old lease",
        Duration::from_secs(10),
        || {
            let log = second.proc.log();
            async move {
                log.contains("still registered by another lease") && log.contains("expires_in_s")
            }
        },
    )
    .await;

    // While the old lease lives, the key stays the old one's: never stolen.
    let mut c = client.clone();
    loop {
        let ttl = c.lease_time_to_live(old_lease, None).await.unwrap().ttl();
        if ttl <= 0 {
            break;
        }
        assert_eq!(
            registration_lease(&client, node).await,
            Some(old_lease),
            "registration stolen"
        );
        assert!(
            restarted.elapsed() < Duration::from_secs(15),
            "old lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until(
        "re-registration under a new lease",
        Duration::from_secs(10),
        || async {
            registration_lease(&client, node)
                .await
                .is_some_and(|l| l != old_lease)
        },
    )
    .await;
    assert!(
        second.proc.try_wait().is_none(),
        "agent exited:\n{}",
        second.proc.log_tail(20)
    );
}

#[tokio::test]
async fn sigterm_revokes_and_exits_zero() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let farm = Farm::new();
    let mut server = spawn_server(&etcd, &farm, "dtable-server-t", 60, &[]);
    let agent = &mut server.agent;
    wait_until("registered", Duration::from_secs(10), || async {
        registration_lease(&client, "dtable-server-t")
            .await
            .is_some()
    })
    .await;
    agent.proc.sigterm();
    let status = agent
        .proc
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("exits on SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        registration_lease(&client, "dtable-server-t").await,
        None,
        "registration left behind"
    );
}
