//! Requests for a bucket without a routable owner are held; a not-owner answer is retried on
//! the new owner; an assignment change needs no restart and breaks no answer in flight.

use std::time::{Duration, Instant};

use bytes::Bytes;
use dtable_testkit::cluster::put_node;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use http_body_util::Full;
use hyper::Request;

use crate::{Setup, client, get, json, node_of, send, uuid_in_bucket};

#[tokio::test]
async fn a_moving_bucket_is_held_until_the_move_commits() {
    let s = Setup::start(2, &["--hold-timeout", "20s"]).await;
    let (from, to) = (s.node(0).to_owned(), s.node(1).to_owned());
    // Bucket 0x10 is on sim 0 (even buckets); mark it moving.
    let mut kv = s.client.clone();
    let mv = serde_json::json!({"from": from, "to": to, "started_at": "now"}).to_string();
    kv.put("dtable-cluster/moves/10", mv, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let addr = s.proxy.addr;
    let uuid = uuid_in_bucket(0x10, 3);
    let started = Instant::now();
    let pending =
        tokio::spawn(async move { send(&client(), get(addr, &format!("/dtables/{uuid}"))).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!pending.is_finished(), "request was not held");

    // Commit the move: assign-10 to the new owner and the move key gone, in one transaction.
    let txn = Txn::new()
        .when([Compare::version(
            "dtable-cluster/moves/10",
            CompareOp::Greater,
            0,
        )])
        .and_then([
            TxnOp::put("assign-10", to.as_str(), None),
            TxnOp::delete("dtable-cluster/moves/10", None),
        ]);
    assert!(kv.txn(txn).await.unwrap().succeeded());
    let (resp, body) = pending.await.unwrap();
    assert_eq!(resp.status(), 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(node_of(&resp), to, "completed on the new owner");
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test]
async fn a_move_that_does_not_finish_gets_503_with_retry_after() {
    let s = Setup::start(2, &["--hold-timeout", "2s"]).await;
    let mut kv = s.client.clone();
    let mv = serde_json::json!({"from": s.node(0), "to": s.node(1)}).to_string();
    kv.put("dtable-cluster/moves/20", mv, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let (resp, body) = send(
        &client(),
        get(
            s.proxy.addr,
            &format!("/dtables/{}", uuid_in_bucket(0x20, 1)),
        ),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(resp.status(), 503, "{}", String::from_utf8_lossy(&body));
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(json(&body)["code"], "bucket_unavailable");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "held {took:?}"
    );
    // Other buckets are unaffected meanwhile.
    let (resp, _) = send(
        &client(),
        get(
            s.proxy.addr,
            &format!("/dtables/{}", uuid_in_bucket(0x21, 1)),
        ),
    )
    .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_not_owner_answer_is_retried_on_the_new_owner() {
    let s = Setup::start(2, &["--hold-timeout", "20s"]).await;
    // Make the proxy send bucket 0x30 to sim 1 while sim 1 does not own it: a node record
    // "dtable-server-stale" that points at sim 1's address, and assign-30 naming it.
    put_node(&s.client, "dtable-server-stale", &s.sims[1].url()).await;
    let mut kv = s.client.clone();
    kv.put("assign-30", "dtable-server-stale", None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let addr = s.proxy.addr;
    let uuid = uuid_in_bucket(0x30, 5);
    let body = Bytes::from(vec![7u8; 4096]);
    let req = Request::post(format!("http://{addr}/api/v1/dtables/{uuid}/rows/"))
        .body(Full::new(body.clone()))
        .unwrap();
    let pending = tokio::spawn(async move { send(&client(), req).await });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        !pending.is_finished(),
        "the 409 was passed on instead of held"
    );

    // The assignment moves on to sim 1 itself: the held request is sent again and succeeds.
    kv.put("assign-30", s.node(1), None).await.unwrap();
    let (resp, answer) = pending.await.unwrap();
    assert_eq!(resp.status(), 200, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(node_of(&resp), s.node(1));
    assert_eq!(
        json(&answer)["body_bytes"],
        4096,
        "the buffered body was sent again"
    );
    assert!(!resp.headers().contains_key("x-dtable-not-owner"));

    // An application's own 409 (without the header) is passed through untouched: the sim
    // answers 409 not-owner only with the header, so check the header decides.
    let metrics = dtable_testkit::http::get(s.proxy.admin, "/metrics")
        .await
        .unwrap()
        .text();
    assert!(
        metrics.contains("dtable_proxy_not_owner_retries_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_assignment_change_applies_live_without_breaking_answers_in_flight() {
    let s = Setup::start(2, &[]).await;
    let addr = s.proxy.addr;
    let uuid = uuid_in_bucket(0x40, 2);
    // A 64 MB download from the current owner (sim 0) is being answered...
    let path = format!(
        "/_sim/download?bytes={}&seed=4&dtable_uuid={uuid}",
        64 << 20
    );
    let c = client();
    let resp = c.request(get(addr, &path)).await.unwrap();
    assert_eq!(node_of(&resp), s.node(0));
    // ...when the bucket is reassigned to sim 1.
    let mut kv = s.client.clone();
    kv.put("assign-40", s.node(1), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (next, _) = send(&client(), get(addr, &format!("/dtables/{uuid}"))).await;
    assert_eq!(next.status(), 200);
    assert_eq!(
        node_of(&next),
        s.node(1),
        "new requests follow the change without a restart"
    );
    use http_body_util::BodyExt;
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("the answer in flight completes")
        .to_bytes();
    assert_eq!(body.len(), 64 << 20);
    use sha2::Digest;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&body)),
        dtable_testkit::sim::pattern_sha256(4, 64 << 20)
    );
}

#[tokio::test]
async fn an_unreachable_owner_gets_502_with_a_json_body() {
    let s = Setup::start(2, &[]).await;
    let dead = format!("http://127.0.0.1:{}/", dtable_testkit::free_port());
    put_node(&s.client, "dtable-server-dead", &dead).await;
    let mut kv = s.client.clone();
    kv.put("assign-50", "dtable-server-dead", None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (resp, body) = send(
        &client(),
        get(
            s.proxy.addr,
            &format!("/dtables/{}", uuid_in_bucket(0x50, 1)),
        ),
    )
    .await;
    assert_eq!(resp.status(), 502, "{}", String::from_utf8_lossy(&body));
    let j = json(&body);
    assert_eq!(j["code"], "upstream_unreachable");
    assert!(
        j["error"].as_str().unwrap().contains("dtable-server-dead"),
        "{j}"
    );
}
