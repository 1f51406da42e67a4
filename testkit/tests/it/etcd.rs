//! The etcd harness: single member, cluster failover and restart, cleanup on drop.

use std::time::Duration;

use dtable_testkit::{Etcd, wait_until};
use nix::sys::signal::kill;
use nix::unistd::Pid;

#[tokio::test]
async fn single_member_put_get() {
    let etcd = Etcd::start().await;
    let endpoints = etcd.endpoints();
    assert_eq!(endpoints.len(), 1);
    assert!(endpoints[0].starts_with("127.0.0.1:"), "{endpoints:?}");
    assert_eq!(etcd.endpoints_arg(), endpoints[0]);

    let mut client = etcd.client().await;
    client
        .put("assign-00", "dtable-server-a", None)
        .await
        .unwrap();
    let resp = client.get("assign-00", None).await.unwrap();
    assert_eq!(resp.kvs()[0].value_str().unwrap(), "dtable-server-a");
}

#[tokio::test]
async fn cluster_survives_a_member_loss_and_restart() {
    let mut etcd = Etcd::start_cluster(3).await;
    assert_eq!(etcd.len(), 3);
    assert_eq!(etcd.endpoints_arg().split(',').count(), 3);
    let mut client = etcd.client().await;
    client.put("k", "before", None).await.unwrap();

    etcd.kill_member(1);
    assert_eq!(etcd.member_pid(1), None);
    // The balanced client may first try the dead member; it must get through within seconds.
    wait_until(
        "a write with one member down",
        Duration::from_secs(10),
        || {
            let mut client = client.clone();
            async move {
                let put = client.put("k", "during", None);
                matches!(
                    tokio::time::timeout(Duration::from_secs(1), put).await,
                    Ok(Ok(_))
                )
            }
        },
    )
    .await;

    etcd.restart_member(1).await;
    assert!(etcd.member_pid(1).is_some());
    // A linearizable read through the restarted member sees the write made while it was down.
    let mut member = etcd.member_client(1).await;
    let resp = member.get("k", None).await.unwrap();
    assert_eq!(resp.kvs()[0].value_str().unwrap(), "during");
    assert!(etcd.member_log(1).contains("\"name\":\"m1\""));
}

#[tokio::test]
async fn drop_kills_members_and_removes_the_dir() {
    let etcd = Etcd::start().await;
    let dir = etcd.dir().to_path_buf();
    let pid = etcd.member_pid(0).expect("running");
    assert!(dir.join("m0.etcd").is_dir());
    drop(etcd);
    assert!(!dir.exists(), "{} still exists", dir.display());
    let pid = Pid::from_raw(i32::try_from(pid).unwrap());
    assert!(kill(pid, None).is_err(), "etcd pid {pid} still exists");
}
