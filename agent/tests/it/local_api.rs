//! The agent's local HTTP twin (for servers that do not speak gRPC), and the rejoin hold.

use std::time::{Duration, Instant};

use dtable_testkit::cluster::{
    Farm, read_assignment, read_nodes, spawn_controlplane, spawn_server,
};
use dtable_testkit::{Etcd, http, wait_until};

use crate::harness::SETTLE;

fn json(r: &http::HttpResponse) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

#[tokio::test]
async fn the_http_twin_long_polls_the_assignment_and_serves_metrics() {
    let etcd = Etcd::start().await;
    let farm = Farm::new();
    let client = etcd.client().await;
    let _cp = spawn_controlplane(&etcd, "cp1", 3, &[]);
    let server = spawn_server(&etcd, &farm, "dtable-server-h", 10, &[]);
    let addr = server.agent.http;
    wait_until("the node owns all 256 buckets", SETTLE, || async move {
        http::get(addr, "/v1/assignment")
            .await
            .is_ok_and(|r| json(&r)["owned"].as_array().is_some_and(|o| o.len() == 256))
    })
    .await;
    let now = json(&http::get(addr, "/v1/assignment").await.unwrap());
    assert_eq!(now["node_id"], "dtable-server-h");
    assert_eq!(now["fenced"], false);
    let serve_for = now["serve_for_ms"].as_u64().unwrap();
    assert!(
        serve_for > 0 && serve_for <= 9000,
        "serve_for_ms {serve_for} within TTL − margin"
    );
    let epoch = now["owned"][0]["epoch"].as_i64().unwrap();
    let mut kv = client.clone();
    let assign = kv.get("assign-00", None).await.unwrap();
    assert_eq!(
        epoch,
        assign.kvs()[0].mod_revision(),
        "epoch = mod_revision of assign-00"
    );

    // A long poll past the current version waits for a change (at most the push interval).
    let version = now["version"].as_u64().unwrap();
    let asked = Instant::now();
    let next = json(
        &http::get(addr, &format!("/v1/assignment?after={version}&timeout=30"))
            .await
            .unwrap(),
    );
    assert!(
        next["version"].as_u64().unwrap() > version || asked.elapsed() >= Duration::from_secs(1)
    );

    // Acks for releases nobody asked for change nothing.
    let req = hyper::Request::post(format!("http://{addr}/v1/release/zz/ack"))
        .body(Default::default())
        .unwrap();
    assert_eq!(
        http::send(addr, req, Duration::from_secs(5))
            .await
            .unwrap()
            .status,
        400
    );
    let req = hyper::Request::post(format!("http://{addr}/v1/release/00/ack"))
        .body(Default::default())
        .unwrap();
    assert_eq!(
        http::send(addr, req, Duration::from_secs(5))
            .await
            .unwrap()
            .status,
        409
    );
    assert_eq!(read_assignment(&client).await["00"], "dtable-server-h");

    assert_eq!(http::get(addr, "/healthz").await.unwrap().status, 200);
    let metrics = http::get(addr, "/metrics").await.unwrap().text();
    for name in [
        "dtable_agent_registered",
        "dtable_agent_server_healthy",
        "dtable_agent_owned_buckets",
        "dtable_lease_keepalives_total",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
}

#[tokio::test]
async fn a_returning_node_waits_out_the_rejoin_hold() {
    let etcd = Etcd::start().await;
    let farm = Farm::new();
    let client = etcd.client().await;
    let _cp = spawn_controlplane(&etcd, "cp1", 3, &["--rejoin-hold", "6s"]);
    let mut servers: Vec<_> = (0..3)
        .map(|i| spawn_server(&etcd, &farm, &format!("dtable-server-{i}"), 4, &[]))
        .collect();
    let all = ["dtable-server-0", "dtable-server-1", "dtable-server-2"];
    wait_until("balanced over three", SETTLE, || {
        dtable_testkit::cluster::balanced_over(&client, &all)
    })
    .await;

    servers[2].agent.proc.kill9();
    wait_until("balanced over two", SETTLE, || {
        dtable_testkit::cluster::balanced_over(&client, &all[..2])
    })
    .await;
    servers[2].agent.respawn();
    wait_until("re-registered", SETTLE, || async {
        read_nodes(&client).await.contains_key("dtable-server-2")
    })
    .await;
    let back = Instant::now();
    // Within the hold it gets nothing...
    while back.elapsed() < Duration::from_secs(3) {
        assert!(
            !read_assignment(&client)
                .await
                .values()
                .any(|n| n == "dtable-server-2"),
            "got buckets within the rejoin hold"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...and its share once the hold has passed.
    wait_until("balanced over three again", SETTLE, || {
        dtable_testkit::cluster::balanced_over(&client, &all)
    })
    .await;
    let report =
        dtable_testkit::checker::check(&farm.event_logs(), &farm.storage()).expect("single owner");
    assert!(report.buckets_seen > 0);
}

#[tokio::test]
async fn a_drain_with_nowhere_to_go_times_out_fences_and_exits() {
    let etcd = Etcd::start().await;
    let farm = Farm::new();
    let client = etcd.client().await;
    let _cp = spawn_controlplane(&etcd, "cp1", 3, &[]);
    let mut only = spawn_server(
        &etcd,
        &farm,
        "dtable-server-alone",
        10,
        &["--drain-timeout", "2s"],
    );
    wait_until("the node owns everything", SETTLE, || {
        dtable_testkit::cluster::balanced_over(&client, &["dtable-server-alone"])
    })
    .await;
    only.agent.proc.sigterm();
    let sent = Instant::now();
    let status = only
        .agent
        .proc
        .wait_exit(SETTLE)
        .await
        .expect("the agent exits");
    assert!(status.success(), "{status:?}");
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "exited after {took:?}"
    );
    assert!(
        only.agent.proc.log().contains("drain timed out"),
        "{}",
        only.agent.proc.log_tail(20)
    );
    assert!(
        !read_nodes(&client)
            .await
            .contains_key("dtable-server-alone"),
        "registration left behind"
    );
    // The sim was fenced before the lease went: it answers not-owner now.
    let r = http::get(
        only.sim.addr,
        "/api/v1/dtables/00000000000000000000000000000001/rows/",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 409);
    dtable_testkit::checker::check(&farm.event_logs(), &farm.storage()).expect("single owner");
}
