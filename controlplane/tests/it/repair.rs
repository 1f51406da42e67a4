//! Corrupt values and drift in etcd are survived and repaired by the leader.

use dtable_testkit::cluster::{
    Farm, balanced_over, read_assignment, spawn_controlplane, spawn_server,
};
use dtable_testkit::{Etcd, wait_until};

use crate::SETTLE;

#[tokio::test]
async fn corrupt_values_are_survived_and_repaired() {
    let etcd = Etcd::start().await;
    let farm = Farm::new();
    let client = etcd.client().await;
    let mut cp = spawn_controlplane(&etcd, "cp1", 3, &[]);
    let two = ["dtable-server-a", "dtable-server-b"];
    let _agents: Vec<_> = two
        .iter()
        .map(|n| spawn_server(&etcd, &farm, n, 10, &[]))
        .collect();
    wait_until("balanced over two", SETTLE, || balanced_over(&client, &two)).await;

    let mut kv = client.clone();
    kv.put("dtable-server-broken", "{this is not json", None)
        .await
        .unwrap();
    kv.put("assign-01", "not a node id", None).await.unwrap();
    kv.put("assign-02", "dtable-server-ghost", None)
        .await
        .unwrap();
    kv.delete("assign-03", None).await.unwrap();
    wait_until("drift repaired", SETTLE, || async {
        let a = read_assignment(&client).await;
        a.len() == 256
            && ["01", "02", "03"]
                .iter()
                .all(|b| two.contains(&a[*b].as_str()))
    })
    .await;
    assert!(balanced_over(&client, &two).await);

    // The view keeps updating past the bad values: a new node still gets its share.
    let _c = spawn_server(&etcd, &farm, "dtable-server-c", 10, &[]);
    let three = ["dtable-server-a", "dtable-server-b", "dtable-server-c"];
    wait_until("balanced over three", SETTLE, || {
        balanced_over(&client, &three)
    })
    .await;

    assert!(
        cp.proc.try_wait().is_none(),
        "control plane died:\n{}",
        cp.proc.log_tail(30)
    );
    let log = cp.proc.log();
    let reports = log.matches("ignoring corrupt value").count();
    assert!(
        log.contains("dtable-server-broken"),
        "bad record not logged:\n{log}"
    );
    assert_eq!(
        log.lines()
            .filter(
                |l| l.contains("ignoring corrupt value") && l.contains("key=dtable-server-broken")
            )
            .count(),
        1,
        "a bad value is logged once ({reports} reports in all)"
    );
}
