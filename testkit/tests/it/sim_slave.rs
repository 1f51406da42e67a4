//! The sim as a dtable-server-slave: it loads a base through a URL (here an owning sim
//! directly, as the proxy would route it), serves reads from a short-lived cache, and refuses
//! writes; and its configuration errors.

use std::time::Duration;

use dtable_testkit::sim::{NODE_HEADER, SLAVE_HEADER, SimOptions, SimServer};
use dtable_testkit::{free_port, http, run_to_exit, scratch_dir};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::args;
use crate::sim::{BASE_AB, BASE_AB_HEX, TestSim, json};
use crate::sim_rows::{row_ids, send_json};

/// How many base requests `addr` (a server sim) has answered.
async fn base_requests(addr: std::net::SocketAddr) -> u64 {
    let state = json(&http::get(addr, "/_sim/state").await.unwrap());
    state["base_requests"].as_u64().expect("base_requests")
}

#[tokio::test]
async fn a_slave_serves_reads_from_a_copy_loaded_through_the_url_and_refuses_writes() {
    let storage = scratch_dir("slave-origin");
    let origin =
        TestSim::start(SimOptions::alone("dtable-server-origin").with_storage(storage.path()))
            .await;
    let rows_path = format!("/api/v1/dtables/{BASE_AB}/rows/");
    let first = send_json(
        origin.addr,
        Method::POST,
        &rows_path,
        Some(json!({"row": {"_id": "r1", "name": "one"}})),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let before = base_requests(origin.addr).await;

    let ttl = Duration::from_millis(1500);
    let slave = TestSim::start(SimOptions::slave(
        "dtable-server-slave1",
        format!("http://{}/", origin.addr),
        ttl,
    ))
    .await;

    // The first read loads the base from the origin.
    let loaded_at = std::time::Instant::now();
    let whole = http::get(slave.addr, &format!("/dtables/{BASE_AB}"))
        .await
        .unwrap();
    assert_eq!(whole.status, StatusCode::OK, "{}", whole.text());
    assert_eq!(whole.header(NODE_HEADER), Some("dtable-server-slave1"));
    assert_eq!(whole.header(SLAVE_HEADER), Some("1"));
    let body = json(&whole);
    assert_eq!(body["node_id"], "dtable-server-slave1");
    assert_eq!(body["dtable_uuid"], BASE_AB_HEX);
    assert_eq!(body["slave"], true);
    assert_eq!(body["source_node"], "dtable-server-origin");
    assert_eq!(row_ids(&body["base"]), ["r1"]);
    assert_eq!(base_requests(origin.addr).await, before + 1);

    // A second read within the TTL (the rows API this time) comes from the cache.
    let rows = http::get(slave.addr, &rows_path).await.unwrap();
    assert!(
        loaded_at.elapsed() < ttl,
        "the box is too slow to test within the TTL"
    );
    assert_eq!(rows.status, StatusCode::OK, "{}", rows.text());
    assert_eq!(rows.header(SLAVE_HEADER), Some("1"));
    assert_eq!(row_ids(&json(&rows)), ["r1"]);
    let one = http::get(slave.addr, &format!("{rows_path}r1"))
        .await
        .unwrap();
    assert_eq!(json(&one)["name"], "one");
    let none = http::get(slave.addr, &format!("{rows_path}r9"))
        .await
        .unwrap();
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    assert_eq!(
        base_requests(origin.addr).await,
        before + 1,
        "a read within the TTL went to the origin"
    );

    // Writes are refused with 405 and a JSON error, and reach nobody.
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        let path = match method {
            Method::POST => rows_path.clone(),
            _ => format!("{rows_path}r1"),
        };
        let refused = send_json(
            slave.addr,
            method.clone(),
            &path,
            Some(json!({"name": "x"})),
        )
        .await;
        assert_eq!(refused.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(json(&refused)["error"], "read_only");
        assert_eq!(refused.header("allow"), Some("GET, HEAD"));
        assert_eq!(refused.header(SLAVE_HEADER), Some("1"));
    }
    assert_eq!(base_requests(origin.addr).await, before + 1);
    let stored = json(&http::get(origin.addr, &rows_path).await.unwrap());
    assert_eq!(row_ids(&stored), ["r1"], "a refused write changed the base");

    // The slave owns nothing, and counts what it did.
    let state = json(&http::get(slave.addr, "/_sim/state").await.unwrap());
    assert_eq!(state["mode"], "slave");
    assert_eq!(state["owned"], json!({}));
    assert_eq!(state["origin_fetches"], 1);
    assert_eq!(
        state["cache_hits"], 3,
        "rows, row r1 and row r9 came from the cache"
    );

    // After the TTL the base is loaded again, with the origin's newer writes.
    let second = send_json(
        origin.addr,
        Method::POST,
        &rows_path,
        Some(json!({"row": {"_id": "r2"}})),
    )
    .await;
    assert_eq!(second.status, StatusCode::OK);
    let requests = base_requests(origin.addr).await;
    tokio::time::sleep(ttl).await;
    let fresh = json(&http::get(slave.addr, &rows_path).await.unwrap());
    assert_eq!(row_ids(&fresh), ["r1", "r2"]);
    assert_eq!(base_requests(origin.addr).await, requests + 1);

    slave.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn a_slave_refuses_bad_uuids_and_reports_an_origin_it_cannot_reach() {
    let closed = free_port();
    let slave = TestSim::start(SimOptions::slave(
        "dtable-server-slave2",
        format!("http://127.0.0.1:{closed}"),
        Duration::from_secs(5),
    ))
    .await;
    let bad = http::get(slave.addr, "/dtables/not-a-uuid").await.unwrap();
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(json(&bad)["error"], "malformed_uuid");
    let ping = http::get(slave.addr, "/ping/").await.unwrap();
    assert_eq!(ping.text(), "pong");
    assert_eq!(ping.header(SLAVE_HEADER), Some("1"));

    let down = http::get(slave.addr, &format!("/dtables/{BASE_AB}"))
        .await
        .unwrap();
    assert_eq!(down.status, StatusCode::BAD_GATEWAY);
    assert_eq!(json(&down)["error"], "origin_unavailable");
    assert_eq!(down.header(NODE_HEADER), Some("dtable-server-slave2"));
    let state: Value = json(&http::get(slave.addr, "/_sim/state").await.unwrap());
    assert_eq!(state["origin_fetches"], 1, "the bad UUID fetched nothing");
    slave.stop().await;
}

#[tokio::test]
async fn a_slave_with_server_options_is_refused() {
    let err = SimServer::new(SimOptions {
        storage_dir: Some(scratch_dir("slave-storage").path().to_path_buf()),
        ..SimOptions::slave(
            "dtable-server-s",
            "http://127.0.0.1:1",
            Duration::from_secs(1),
        )
    })
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("--storage-dir"), "{err}");

    for (flags, names) in [
        (
            args(&["--node-id", "dtable-server-s", "--role", "slave"]),
            "--proxy-url",
        ),
        (
            args(&[
                "--node-id",
                "dtable-server-s",
                "--role",
                "slave",
                "--proxy-url",
                "http://127.0.0.1:1",
                "--etcd",
                "127.0.0.1:2",
            ]),
            "--etcd",
        ),
        (
            args(&["--node-id", "dtable-server-s", "--self-register"]),
            "--etcd",
        ),
    ] {
        let (status, out) =
            run_to_exit("dtable-server-sim", &flags, &[], Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(64), "{flags:?}: {out}");
        assert!(out.contains(names), "{flags:?} should name {names}: {out}");
        assert_eq!(out.trim().lines().count(), 1, "{flags:?}: {out}");
    }
}
