//! Servers that register themselves (SeaTable's own cluster mode) acknowledge no release, so
//! the leader moves their buckets by direct reassignment, as SeaTable's cluster monitor does,
//! instead of starting handoffs that could only time out; a drain of one says so. Nodes
//! registered by a managed agent keep moving by handoff (the other scenarios of this suite).

use dtable_testkit::cluster::{balanced_over, bucket_counts, put_assign, spawn_controlplane};
use dtable_testkit::{Etcd, wait_until};
use etcd_client::{EventType, WatchOptions};

use crate::SETTLE;
use crate::api::post;

/// A record as SeaTable's dtable-server writes it: no `agent` field.
async fn register_self(client: &etcd_client::Client, node_id: &str) {
    let record = serde_json::json!({
        "node_id": node_id,
        "node_url": format!("https://cloud.example/{node_id}/"),
        "local_node_url": "http://127.0.0.1:1/",
    });
    client
        .clone()
        .put(node_id, record.to_string(), None)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_joiner_gets_its_share_of_self_registered_servers_directly_and_a_drain_takes_it_so() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let (a, b, c) = ("dtable-server-a", "dtable-server-b", "dtable-server-c");
    register_self(&client, a).await;
    register_self(&client, b).await;
    for bucket in 0..=255u8 {
        put_assign(&client, bucket, if bucket % 2 == 0 { a } else { b }).await;
    }
    // Every move key ever written is recorded.
    let mut moves = client
        .clone()
        .watch(
            "dtable-cluster/moves/",
            Some(WatchOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let cp = spawn_controlplane(&etcd, "cp1", 3, &[]);
    wait_until("the leader keeps the balanced table", SETTLE, || async {
        balanced_over(&client, &[a, b]).await
    })
    .await;

    register_self(&client, c).await;
    wait_until("the joiner holds its share", SETTLE, || async {
        balanced_over(&client, &[a, b, c]).await
    })
    .await;
    let counts = bucket_counts(&client).await;
    assert!((85..=86).contains(&counts[c]), "{counts:?}");

    // A drain says how the buckets go, and they go the same way.
    let (status, body) = post(cp.http, &format!("/api/v1/nodes/{c}/drain"), "").await;
    assert_eq!(status, 200, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("reassigns")
            && message.contains("directly")
            && !message.contains("handoff"),
        "{message}"
    );
    wait_until(
        "the drained server's buckets are reassigned",
        SETTLE,
        || async { balanced_over(&client, &[a, b]).await },
    )
    .await;
    let log = cp.proc.log();
    assert!(
        log.contains("buckets placed directly") && log.contains("reassigned="),
        "the leader's log does not say how it placed the buckets"
    );

    // No handoff was started: of everything the watch saw, no event put a move key.
    let mut move_puts = Vec::new();
    while let Ok(Ok(Some(resp))) =
        tokio::time::timeout(std::time::Duration::from_millis(500), moves.message()).await
    {
        move_puts.extend(
            resp.events()
                .iter()
                .filter(|e| e.event_type() == EventType::Put)
                .filter_map(|e| e.kv().map(|kv| kv.key_str().unwrap_or("?").to_owned())),
        );
    }
    assert!(move_puts.is_empty(), "handoffs were started: {move_puts:?}");
}
