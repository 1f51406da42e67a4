//! The handoff transactions against a real etcd: a move commits only with its own ack, a late
//! ack of an abandoned move cannot complete a newer one, and every write needs the leadership.

use dtable_controlplane::writer::{AssignmentWriter, Leadership};
use dtable_core::etcd::{ClusterWatch, EtcdOptions, connect};
use dtable_core::{Bucket, ClusterView, KeyLayout, NodeId};
use dtable_testkit::cluster::{put_node, read_assignment};
use dtable_testkit::{Etcd, wait_until};
use tokio_util::sync::CancellationToken;

use crate::SETTLE;

async fn leader(c: &mut etcd_client::Client, keys: &KeyLayout) -> Leadership {
    let lease = c.lease_grant(60, None).await.unwrap().id();
    let won = c.campaign(keys.election(), "test", lease).await.unwrap();
    let l = won.leader().unwrap();
    Leadership {
        key: l.key().to_vec(),
        create_revision: l.rev(),
        lease,
    }
}

#[tokio::test]
async fn a_late_ack_cannot_complete_a_newer_move() {
    let etcd = Etcd::start().await;
    let mut c = etcd.client().await;
    let keys = KeyLayout::default();
    put_node(&c, "dtable-server-a", "http://127.0.0.1:1/").await;
    put_node(&c, "dtable-server-b", "http://127.0.0.1:2/").await;
    c.put("assign-07", "dtable-server-a", None).await.unwrap();
    let client = connect(&EtcdOptions {
        endpoints: etcd.endpoints(),
        ..Default::default()
    })
    .await
    .unwrap();
    let (watch, view_rx) = ClusterWatch::new(client.clone(), keys.clone());
    let stop = CancellationToken::new();
    tokio::spawn(watch.run(stop.clone()));
    let writer = AssignmentWriter::new(client, keys.clone(), leader(&mut c, &keys).await);
    let (a, b) = (
        NodeId::new("dtable-server-a").unwrap(),
        NodeId::new("dtable-server-b").unwrap(),
    );
    let bucket = Bucket(7);
    let view = |f: fn(&ClusterView) -> bool| {
        let rx = view_rx.clone();
        async move {
            wait_until("view", SETTLE, || {
                let ok = f(&rx.borrow());
                async move { ok }
            })
            .await;
            rx.borrow().clone()
        }
    };

    // Move 1 starts and is abandoned before its ack arrives.
    let v = view(|v| v.owner(Bucket(7)).is_some() && v.nodes.len() == 2).await;
    let first = writer
        .start_move(&v, bucket, &a, &b)
        .await
        .unwrap()
        .expect("move 1 starts");
    let v = view(|v| v.moves.contains_key(&Bucket(7))).await;
    assert_eq!(v.moves[&bucket].create_revision, first);
    assert!(
        writer
            .start_move(&v, bucket, &a, &b)
            .await
            .unwrap()
            .is_none(),
        "one move at a time"
    );
    writer
        .abandon_move(bucket, first)
        .await
        .unwrap()
        .expect("abandoned");

    // Move 2 starts; then the late ack of move 1 arrives.
    let v = view(|v| !v.moves.contains_key(&Bucket(7))).await;
    let second = writer
        .start_move(&v, bucket, &a, &b)
        .await
        .unwrap()
        .expect("move 2 starts");
    c.put(keys.ack(bucket, first), "late", None).await.unwrap();
    let v = view(|v| {
        v.moves.contains_key(&Bucket(7)) && v.cluster_keys.keys().any(|k| k.starts_with("acks/"))
    })
    .await;
    let mv = v.moves[&bucket].clone();
    assert_eq!(mv.create_revision, second);
    assert!(
        writer.commit_move(&v, bucket, &mv).await.unwrap().is_none(),
        "a late ack completed a newer move"
    );
    assert_eq!(read_assignment(&c).await["07"], "dtable-server-a");

    // Its own ack completes it: assign-07 moves, the move and the ack are gone.
    c.put(keys.ack(bucket, second), "ack", None).await.unwrap();
    let v = view(|v| v.cluster_keys.len() >= 2).await;
    writer
        .commit_move(&v, bucket, &mv)
        .await
        .unwrap()
        .expect("commits with its own ack");
    assert_eq!(read_assignment(&c).await["07"], "dtable-server-b");
    let left = c
        .get(
            "dtable-cluster/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let keys_left: Vec<String> = left
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_owned())
        .collect();
    assert!(
        keys_left
            .iter()
            .all(|k| !k.contains("/moves/") && !k.ends_with(&format!("/{second}"))),
        "{keys_left:?}"
    );
    stop.cancel();
}

#[tokio::test]
async fn an_unacknowledged_move_is_abandoned_and_the_bucket_stays() {
    let etcd = Etcd::start().await;
    let c = etcd.client().await;
    // Two registrations nobody serves: nothing will ever acknowledge a release.
    put_node(&c, "dtable-server-a", "http://127.0.0.1:1/").await;
    for b in 0..=255u8 {
        dtable_testkit::cluster::put_assign(&c, b, "dtable-server-a").await;
    }
    put_node(&c, "dtable-server-b", "http://127.0.0.1:2/").await;
    let mut cp = dtable_testkit::cluster::spawn_controlplane(
        &etcd,
        "cp1",
        3,
        &["--release-timeout", "2s", "--max-concurrent-moves", "4"],
    );
    wait_until("moves started", SETTLE, || {
        let log = cp.proc.log();
        async move { log.contains("handoff started") }
    })
    .await;
    wait_until("a move abandoned on its release timeout", SETTLE, || {
        let log = cp.proc.log();
        async move { log.contains("move abandoned") && log.contains("release_timeout") }
    })
    .await;
    // Every bucket is still served where it was, and never more than 4 moves were in flight.
    assert!(
        read_assignment(&c)
            .await
            .values()
            .all(|n| n == "dtable-server-a")
    );
    let started = cp.proc.log().matches("handoff started").count();
    let ended = cp.proc.log().matches("move abandoned").count();
    assert!(started - ended <= 4, "{started} started, {ended} abandoned");
    let metrics = dtable_testkit::http::get(cp.http, "/metrics")
        .await
        .unwrap()
        .text();
    assert!(
        metrics.contains(r#"dtable_moves_total{result="release_timeout"}"#),
        "{metrics}"
    );
    cp.proc.kill9();
}
