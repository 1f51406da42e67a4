//! The cluster watch: live updates, corrupt values, and a compaction past the watch's
//! revision while its stream is down.

use std::time::Duration;

use dtable_core::etcd::{ClusterWatch, EtcdOptions, ViewRx, connect};
use dtable_core::{Bucket, KeyLayout};
use dtable_testkit::{Etcd, Relay, wait_until};
use tokio_util::sync::CancellationToken;

fn record(id: &str) -> String {
    format!(
        r#"{{"node_id":"{id}","node_url":"http://{id}/","local_node_url":"http://{id}:5000/"}}"#
    )
}

async fn wait_view(rx: &ViewRx, what: &str, check: impl Fn(&dtable_core::ClusterView) -> bool) {
    wait_until(what, Duration::from_secs(20), || {
        let ok = check(&rx.borrow());
        async move { ok }
    })
    .await;
}

#[tokio::test]
async fn view_follows_changes_and_survives_corrupt_values() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let client = connect(&EtcdOptions {
        endpoints: etcd.endpoints(),
        ..Default::default()
    })
    .await
    .unwrap();
    let (watch, rx) = ClusterWatch::new(client, KeyLayout::default());
    let stop = CancellationToken::new();
    tokio::spawn(watch.run(stop.clone()));

    kv.put("dtable-server-a", record("dtable-server-a"), None)
        .await
        .unwrap();
    kv.put("assign-00", "dtable-server-a", None).await.unwrap();
    wait_view(&rx, "node a and bucket 00", |v| {
        v.owner(Bucket(0)).is_some()
    })
    .await;

    // Corrupt values: a node record that is not JSON, an assignment that is not a node id,
    // and an assignment to a node that is not registered. None stops later updates.
    kv.put("dtable-server-bad", "{not json", None)
        .await
        .unwrap();
    kv.put("assign-01", "garbage value", None).await.unwrap();
    kv.put("assign-02", "dtable-server-ghost", None)
        .await
        .unwrap();
    kv.put("dtable-server-b", record("dtable-server-b"), None)
        .await
        .unwrap();
    kv.put("assign-03", "dtable-server-b", None).await.unwrap();
    wait_view(&rx, "node b after the corrupt values", |v| {
        v.owner(Bucket(3)).is_some()
    })
    .await;
    let v = rx.borrow().clone();
    assert_eq!(
        v.nodes.len(),
        2,
        "the bad record is left out: {:?}",
        v.nodes.keys()
    );
    assert!(v.corrupt_keys.contains_key("dtable-server-bad"));
    assert!(v.owner(Bucket(1)).is_none() && v.owner(Bucket(2)).is_none());
    assert_eq!(v.orphaned().len(), 2);
    stop.cancel();
}

#[tokio::test]
async fn compaction_during_an_outage_forces_a_correct_relist() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let relay = Relay::start(etcd.endpoints()[0].parse().unwrap()).await;
    let client = connect(&EtcdOptions {
        endpoints: vec![relay.addr().to_string()],
        ..Default::default()
    })
    .await
    .unwrap();
    let (watch, rx) = ClusterWatch::new(client, KeyLayout::default());
    let stop = CancellationToken::new();
    tokio::spawn(watch.run(stop.clone()));

    for id in ["dtable-server-a", "dtable-server-b"] {
        kv.put(id, record(id), None).await.unwrap();
    }
    kv.put("assign-10", "dtable-server-a", None).await.unwrap();
    wait_view(&rx, "initial view", |v| {
        v.nodes.len() == 2 && v.owner(Bucket(0x10)).is_some()
    })
    .await;
    assert_eq!(rx.borrow().lists, 1);

    // Cut the watch's link, change things (including a delete, which only a correct re-list
    // can notice once its event is compacted away), and compact past the watch's revision.
    relay.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    kv.delete("dtable-server-a", None).await.unwrap();
    kv.put("assign-10", "dtable-server-b", None).await.unwrap();
    let rev = kv
        .put("assign-11", "dtable-server-b", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    kv.compact(rev, None).await.unwrap();
    relay.heal();

    wait_view(&rx, "view re-listed after compaction", |v| {
        v.lists == 2
            && !v.nodes.keys().any(|n| n.as_str() == "dtable-server-a")
            && v.owner(Bucket(0x10))
                .is_some_and(|o| o.node.record.node_id.as_str() == "dtable-server-b")
            && v.owner(Bucket(0x11)).is_some()
    })
    .await;
    assert!(rx.borrow().revision >= rev);

    // And it keeps following after the re-list.
    kv.put("assign-12", "dtable-server-b", None).await.unwrap();
    wait_view(&rx, "update after re-list", |v| {
        v.owner(Bucket(0x12)).is_some()
    })
    .await;
    stop.cancel();
}
