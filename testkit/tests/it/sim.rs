//! The sim served in-process: ping, the base routes, and ownership that follows etcd.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dtable_testkit::sim::{
    EPOCH_HEADER, NODE_HEADER, NOT_OWNER_HEADER, SimHandle, SimOptions, SimServer, serve_sim,
};
use dtable_testkit::{Etcd, http, wait_until};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A base in bucket `ab`, in the dashed upper-case form to exercise normalization.
pub const BASE_AB: &str = "AB12CD34-EF56-AB12-CD34-EF56AB12CD34";
/// [`BASE_AB`] normalized.
pub const BASE_AB_HEX: &str = "ab12cd34ef56ab12cd34ef56ab12cd34";

/// A sim served in-process on a free loopback port; stops when dropped.
pub struct TestSim {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its handle.
    pub handle: SimHandle,
    stop_tx: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestSim {
    /// Builds and serves a sim with `options`.
    pub async fn start(options: SimOptions) -> TestSim {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = SimServer::new(options).await.expect("sim starts");
        let handle = server.handle();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stop = async {
                let _ = stop_rx.await;
            };
            server.serve(listener, stop).await.expect("sim serves");
        });
        TestSim {
            addr,
            handle,
            stop_tx: Some(stop_tx),
            task: Some(task),
        }
    }

    /// Stops it and waits until it has stopped.
    pub async fn stop(mut self) {
        if let Some(stop_tx) = self.stop_tx.take() {
            let _ = stop_tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("stops after shutdown")
                .unwrap();
        }
    }
}

impl Drop for TestSim {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Sends `method path` with `body` and `headers`.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> http::HttpResponse {
    let mut builder = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let req = builder.body(Full::new(Bytes::from_static(body))).unwrap();
    http::send(addr, req, Duration::from_secs(40))
        .await
        .unwrap()
}

/// The body as JSON.
pub fn json(resp: &http::HttpResponse) -> Value {
    serde_json::from_slice(&resp.body).unwrap_or_else(|e| panic!("{e}: {}", resp.text()))
}

#[tokio::test]
async fn in_process_sim_serves_and_shuts_down() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let options = SimOptions::alone("dtable-server-in");
    let server = tokio::spawn(serve_sim(listener, options, async {
        let _ = stop_rx.await;
    }));

    let resp = http::get(addr, "/ping/").await.unwrap();
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (StatusCode::OK, "pong")
    );
    assert_eq!(resp.header(NODE_HEADER), Some("dtable-server-in"));

    let resp = request(addr, Method::POST, "/ping/", &[], b"").await;
    assert_eq!(resp.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.header(NODE_HEADER), Some("dtable-server-in"));

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("stops after shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn in_process_sim_rejects_a_bad_node_id() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = serve_sim(listener, SimOptions::alone(""), async {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid node id"), "{err}");
}

#[tokio::test]
async fn base_routes_describe_the_request() {
    let sim = TestSim::start(SimOptions::alone("dtable-server-r1")).await;
    let path = format!("/api/v1/dtables/{BASE_AB}/rows/?x=1");
    let headers = [
        (EPOCH_HEADER, "42"),
        ("x-forwarded-for", "10.1.2.3"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "cloud.example"),
    ];
    let resp = request(sim.addr, Method::PUT, &path, &headers, b"hello").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.header(NODE_HEADER), Some("dtable-server-r1"));
    let body = json(&resp);
    assert_eq!(body["node_id"], "dtable-server-r1");
    assert_eq!(body["dtable_uuid"], BASE_AB_HEX);
    assert_eq!(body["method"], "PUT");
    assert_eq!(body["path"], format!("/api/v1/dtables/{BASE_AB}/rows/"));
    assert_eq!(body["epoch"], 0);
    assert_eq!(body["request_epoch"], 42);
    assert_eq!(body["forwarded_for"], "10.1.2.3");
    assert_eq!(body["forwarded_proto"], "https");
    assert_eq!(body["forwarded_host"], "cloud.example");
    assert_eq!(body["body_bytes"], 5);

    for path in [
        format!("/dtables/{BASE_AB_HEX}"),
        format!("/dtables/{BASE_AB_HEX}/"),
        format!("/dtables/{BASE_AB_HEX}/anything/deeper"),
        format!("/api/v1/internal/dtables/{BASE_AB_HEX}/x"),
        format!("/dtable-server/api/v1/dtables/{BASE_AB_HEX}/"),
    ] {
        let resp = request(sim.addr, Method::DELETE, &path, &[], b"").await;
        assert_eq!(resp.status, StatusCode::OK, "{path}: {}", resp.text());
        let body = json(&resp);
        assert_eq!(body["request_epoch"], Value::Null, "{path}");
        assert_eq!(body["forwarded_for"], Value::Null, "{path}");
    }
    sim.stop().await;
}

#[tokio::test]
async fn malformed_uuids_and_delays_get_400_json() {
    let sim = TestSim::start(SimOptions::alone("dtable-server-r2")).await;
    for path in [
        "/dtables/not-a-uuid",
        "/api/v1/dtables/ab12cd34ef56ab12cd34ef56ab12cd3/rows/",
        "/dtable-server/api/v1/dtables/zz12cd34ef56ab12cd34ef56ab12cd34/",
        "/dtables/ab12cd34ef56ab12cd34ef56ab12cd34?delay_ms=30001",
        "/dtables/ab12cd34ef56ab12cd34ef56ab12cd34?delay_ms=soon",
    ] {
        let resp = request(sim.addr, Method::GET, path, &[], b"").await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(resp.header(NODE_HEADER), Some("dtable-server-r2"));
        assert!(json(&resp)["error"].is_string(), "{path}");
    }
    sim.stop().await;
}

#[tokio::test]
async fn delay_holds_the_answer() {
    let sim = TestSim::start(SimOptions::alone("dtable-server-r3")).await;
    let started = Instant::now();
    let path = format!("/dtables/{BASE_AB_HEX}?delay_ms=300");
    let resp = request(sim.addr, Method::GET, &path, &[], b"").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
    sim.stop().await;
}

/// Waits until `GET /dtables/<BASE_AB>` answers `status`, and returns that answer.
async fn wait_for_status(addr: SocketAddr, status: StatusCode, what: &str) -> http::HttpResponse {
    let path = format!("/dtables/{BASE_AB_HEX}");
    wait_until(what, Duration::from_secs(10), || {
        let path = path.clone();
        async move { matches!(http::get(addr, &path).await, Ok(r) if r.status == status) }
    })
    .await;
    http::get(addr, &path).await.unwrap()
}

#[tokio::test]
async fn ownership_follows_the_assignment_in_etcd() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let put = client
        .put("t/assign-ab", "dtable-server-o1", None)
        .await
        .unwrap();
    let epoch = put.header().unwrap().revision();
    let options = SimOptions::following("dtable-server-o1", etcd.endpoints(), "t/");
    let sim = TestSim::start(options).await;

    let resp = wait_for_status(sim.addr, StatusCode::OK, "the sim to own bucket ab").await;
    assert_eq!(json(&resp)["epoch"], epoch);
    assert_eq!(sim.handle.epoch(dtable_core::Bucket(0xab)), Some(epoch));
    // Another bucket, unassigned, is not ours.
    let other = http::get(sim.addr, "/dtables/cd12cd34ef56ab12cd34ef56ab12cd34")
        .await
        .unwrap();
    assert_eq!(other.status, StatusCode::CONFLICT);
    let state = json(&http::get(sim.addr, "/_sim/state").await.unwrap());
    assert_eq!(state["owned"]["ab"], epoch, "{state}");
    assert_eq!(state["follows_etcd"], true);

    // A request in flight when the bucket moves is refused: ownership is checked after
    // the delay.
    let in_flight = tokio::spawn(request(
        sim.addr,
        Method::POST,
        "/dtables/ab12cd34ef56ab12cd34ef56ab12cd34?delay_ms=1500",
        &[],
        b"{}",
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    client
        .put("t/assign-ab", "dtable-server-o2", None)
        .await
        .unwrap();
    let resp = wait_for_status(sim.addr, StatusCode::CONFLICT, "the sim to lose ab").await;
    assert_eq!(resp.header(NOT_OWNER_HEADER), Some("1"));
    assert_eq!(resp.header(NODE_HEADER), Some("dtable-server-o1"));
    let body = json(&resp);
    assert_eq!(body["error"], "not_owner");
    assert_eq!(body["bucket"], "ab");
    assert_eq!(body["node_id"], "dtable-server-o1");
    let late = in_flight.await.unwrap();
    assert_eq!(late.status, StatusCode::CONFLICT, "{}", late.text());
    assert_eq!(late.header(NOT_OWNER_HEADER), Some("1"));

    // Given back, at a new epoch.
    let put = client
        .put("t/assign-ab", "dtable-server-o1", None)
        .await
        .unwrap();
    let epoch = put.header().unwrap().revision();
    let resp = wait_for_status(sim.addr, StatusCode::OK, "the sim to own ab again").await;
    assert_eq!(json(&resp)["epoch"], epoch);
    sim.stop().await;
}

#[tokio::test]
async fn sim_binary_follows_etcd_with_flags() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let put = client
        .put("p/assign-ab", "dtable-server-b1", None)
        .await
        .unwrap();
    let epoch = put.header().unwrap().revision();
    let addr: SocketAddr = ([127, 0, 0, 1], dtable_testkit::free_port()).into();
    let _proc = dtable_testkit::Proc::spawn(
        "dtable-server-sim",
        &crate::args(&[
            "--listen",
            &addr.to_string(),
            "--node-id",
            "dtable-server-b1",
            "--etcd",
            &etcd.endpoints_arg(),
        ]),
        &[("DTABLE_SIM_ETCD_PREFIX".to_owned(), "p/".to_owned())],
    );
    let resp = wait_for_status(addr, StatusCode::OK, "the sim binary to own ab").await;
    assert_eq!(json(&resp)["epoch"], epoch);
    client
        .put("p/assign-ab", "dtable-server-b2", None)
        .await
        .unwrap();
    let resp = wait_for_status(addr, StatusCode::CONFLICT, "the sim binary to lose ab").await;
    assert_eq!(resp.header(NOT_OWNER_HEADER), Some("1"));
}
