//! The sim's storage: a zombie save is refused, and the rows API writes through so that a
//! restarted sim finds every acknowledged write; the checker agrees.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use dtable_testkit::checker;
use dtable_testkit::sim::{NODE_HEADER, NOT_OWNER_HEADER, SimOptions};
use dtable_testkit::store::{self, Row, StoreError};
use dtable_testkit::{http, scratch_dir};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use serde_json::{Value, json};

use crate::sim::{BASE_AB, BASE_AB_HEX, TestSim, json};

/// Sends `method path` with a JSON body (or none).
pub async fn send_json(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> http::HttpResponse {
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap();
    http::send(addr, request, Duration::from_secs(20))
        .await
        .unwrap()
}

/// The row ids of a `{"rows": [...]}` answer.
pub fn row_ids(answer: &Value) -> Vec<String> {
    answer["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no rows in {answer}"))
        .iter()
        .map(|r| r["_id"].as_str().expect("string _id").to_owned())
        .collect()
}

/// The stored rows of [`BASE_AB_HEX`] in `dir`, and the epoch they carry.
fn stored(dir: &Path) -> (i64, Vec<Row>) {
    let file = store::load_base(dir, BASE_AB_HEX)
        .unwrap()
        .expect("base saved");
    (file.epoch, file.rows)
}

fn object(value: Value) -> Row {
    value.as_object().cloned().expect("an object")
}

#[test]
fn a_zombie_save_with_an_older_epoch_is_refused() {
    let dir = scratch_dir("sim-store");
    let newer = [object(json!({ "_id": "new", "by": "owner at epoch 12" }))];
    let older = [object(json!({ "_id": "old", "by": "zombie at epoch 11" }))];
    store::save_base(dir.path(), BASE_AB_HEX, 11, &older).unwrap();
    store::save_base(dir.path(), BASE_AB_HEX, 12, &newer).unwrap();
    let err = store::save_base(dir.path(), BASE_AB_HEX, 11, &older).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::StaleEpoch {
                stored: 12,
                ours: 11
            }
        ),
        "{err}"
    );
    assert_eq!(stored(dir.path()), (12, newer.to_vec()));
}

#[tokio::test]
async fn a_zombie_sim_is_refused_and_changes_nothing() {
    let dir = scratch_dir("sim-zombie");
    let newer = [object(json!({ "_id": "kept" }))];
    store::save_base(dir.path(), BASE_AB_HEX, 5, &newer).unwrap();
    // Alone, the sim holds every bucket at epoch 0: older than the storage's 5.
    let sim = TestSim::start(SimOptions::alone("dtable-server-z1").with_storage(dir.path())).await;
    let rows = format!("/api/v1/dtables/{BASE_AB}/rows/");
    for (method, body) in [
        (Method::GET, None),
        (Method::POST, Some(json!({ "row": { "name": "lost?" } }))),
    ] {
        let resp = send_json(sim.addr, method.clone(), &rows, body).await;
        assert_eq!(
            resp.status,
            StatusCode::CONFLICT,
            "{method}: {}",
            resp.text()
        );
        assert_eq!(resp.header(NOT_OWNER_HEADER), Some("1"));
    }
    sim.stop().await;
    assert_eq!(stored(dir.path()), (5, newer.to_vec()));
}

#[tokio::test]
async fn rows_are_written_through_and_survive_a_restart() {
    let dir = scratch_dir("sim-rows");
    let storage = dir.path().join("storage");
    let logs = [dir.path().join("run1.jsonl"), dir.path().join("run2.jsonl")];
    let options = |log: &Path| {
        SimOptions::alone("dtable-server-w1")
            .with_storage(&storage)
            .with_event_log(log)
    };
    let sim = TestSim::start(options(&logs[0])).await;
    let rows = format!("/api/v1/dtables/{BASE_AB}/rows/");
    let resp = send_json(sim.addr, Method::GET, &rows, None).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.header(NODE_HEADER), Some("dtable-server-w1"));
    assert!(row_ids(&json(&resp)).is_empty());

    // Create (wrapped, bare, with a given id), update, delete.
    let mut ids = Vec::new();
    for body in [
        json!({ "row": { "name": "a" } }),
        json!({ "name": "b" }),
        json!({ "_id": "given", "name": "c" }),
    ] {
        let resp = send_json(sim.addr, Method::POST, &rows, Some(body)).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
        ids.push(json(&resp)["_id"].as_str().unwrap().to_owned());
        // Written through before the answer.
        let (_, on_disk) = stored(&storage);
        assert_eq!(on_disk.len(), ids.len());
    }
    assert_eq!(ids[2], "given");
    let taken = send_json(
        sim.addr,
        Method::POST,
        &rows,
        Some(json!({ "_id": "given" })),
    )
    .await;
    assert_eq!(taken.status, StatusCode::CONFLICT);
    assert_eq!(taken.header(NOT_OWNER_HEADER), None);
    let item = |id: &str| format!("/dtables/{BASE_AB_HEX}/rows/{id}");
    let resp = send_json(
        sim.addr,
        Method::PUT,
        &item(&ids[0]),
        Some(json!({ "name": "A" })),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let resp = send_json(sim.addr, Method::DELETE, &item(&ids[1]), None).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let missing = send_json(sim.addr, Method::DELETE, &item(&ids[1]), None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let bad = send_json(sim.addr, Method::POST, &rows, Some(json!([1]))).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let (epoch, on_disk) = stored(&storage);
    assert_eq!(epoch, 0);
    assert_eq!(on_disk.len(), 2);
    assert_eq!(on_disk[0]["name"], "A");
    // The other base routes still describe the request back.
    let resp = send_json(
        sim.addr,
        Method::GET,
        &format!("/dtables/{BASE_AB_HEX}"),
        None,
    )
    .await;
    assert_eq!(json(&resp)["dtable_uuid"], BASE_AB_HEX);
    sim.stop().await;

    // A new sim on the same storage finds everything.
    let sim = TestSim::start(options(&logs[1])).await;
    let internal = format!("/api/v1/internal/dtables/{BASE_AB_HEX}/rows");
    let resp = send_json(sim.addr, Method::GET, &internal, None).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(row_ids(&json(&resp)), [ids[0].clone(), ids[2].clone()]);
    let resp = send_json(sim.addr, Method::GET, &item(&ids[0]), None).await;
    assert_eq!(json(&resp)["name"], "A");
    sim.stop().await;

    let report = checker::check(&logs, &storage).unwrap_or_else(|v| panic!("{v:#?}"));
    assert_eq!(report.writes, 5, "{report:?}");
    assert_eq!(report.bases, 1);
    assert_eq!(report.buckets_seen, 256);
    assert_eq!(report.intervals, 512);
}
