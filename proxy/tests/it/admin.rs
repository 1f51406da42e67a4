//! The admin port: `POST /rebalance/` as SeaTable documents it, lookups, metrics, health.

use std::time::Duration;

use dtable_testkit::cluster::{
    Farm, balanced_over, bucket_counts, spawn_controlplane, spawn_proxy, spawn_server,
};
use dtable_testkit::{Etcd, http, wait_until};
use hyper::Request;

use crate::{SETTLE, client, json, send};

#[tokio::test]
async fn post_rebalance_makes_the_leader_rebalance() {
    let etcd = Etcd::start().await;
    let farm = Farm::new();
    let kv = etcd.client().await;
    let _cp = spawn_controlplane(&etcd, "cp1", 3, &["--auto-rebalance=false"]);
    let two = ["dtable-server-a", "dtable-server-b"];
    let _agents: Vec<_> = two
        .iter()
        .map(|n| spawn_server(&etcd, &farm, n, 10, &[]))
        .collect();
    wait_until("balanced over two", SETTLE, || balanced_over(&kv, &two)).await;

    // A joiner gets nothing by itself with auto-rebalance off.
    let _c = spawn_server(&etcd, &farm, "dtable-server-c", 10, &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!bucket_counts(&kv).await.contains_key("dtable-server-c"));

    let proxy = spawn_proxy(&etcd, &[]);
    let admin = proxy.admin;
    wait_until("proxy sees node c", SETTLE, || async move {
        http::get(admin, "/readyz")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let req = Request::post(format!("http://{admin}/rebalance/"))
        .body(Default::default())
        .unwrap();
    let (resp, body) = send(&client(), req).await;
    assert_eq!(resp.status(), 200, "{}", String::from_utf8_lossy(&body));
    let planned = json(&body)["planned_moves"].as_array().unwrap().clone();
    assert_eq!(planned.len(), 85, "{planned:?}");
    assert!(planned.iter().all(|m| m["to"] == "dtable-server-c"));

    let three = ["dtable-server-a", "dtable-server-b", "dtable-server-c"];
    wait_until("rebalanced over three", SETTLE, || {
        balanced_over(&kv, &three)
    })
    .await;
    wait_until("request cleared", SETTLE, || {
        let mut c = kv.clone();
        async move {
            c.get("dtable-cluster/requests/rebalance", None)
                .await
                .unwrap()
                .count()
                == 0
        }
    })
    .await;
}

#[tokio::test]
async fn lookup_metrics_and_health() {
    let s = crate::Setup::start(2, &[]).await;
    let admin = s.proxy.admin;
    let uuid = crate::uuid_in_bucket(0x03, 1);
    let r = http::get(admin, &format!("/api/v1/lookup/{uuid}"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(j["bucket"], "03");
    assert_eq!(j["node_id"], s.node(1));
    assert_eq!(j["local_node_url"], s.sims[1].url());
    assert!(j["epoch"].as_i64().unwrap() > 0);
    let r = http::get(admin, "/api/v1/lookup/xyz").await.unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(http::get(admin, "/healthz").await.unwrap().status, 200);
    let m = http::get(admin, "/metrics").await.unwrap().text();
    for name in [
        "dtable_proxy_requests_total",
        "dtable_proxy_upstream_latency_seconds",
        "dtable_proxy_held_requests",
        "dtable_proxy_table_revision",
        "dtable_proxy_websockets_open",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics:\n{m}");
    }
}
