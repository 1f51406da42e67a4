//! Process helpers against the real `dtable-server-sim` binary.

use std::net::SocketAddr;
use std::time::Duration;

use dtable_testkit::http;
use dtable_testkit::sim::{CONFIG_EXIT_CODE, NODE_HEADER};
use dtable_testkit::{Proc, bin_path, free_port, run_to_exit, wait_until};

use crate::args;

/// Starts the sim binary as `node_id` on a free port and waits until it answers.
async fn start_sim(node_id: &str) -> (Proc, SocketAddr) {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let listen = addr.to_string();
    let proc = Proc::spawn(
        "dtable-server-sim",
        &args(&["--listen", &listen, "--node-id", node_id]),
        &[],
    );
    wait_until(
        "the sim to answer /ping/",
        Duration::from_secs(10),
        || async move { http::get(addr, "/ping/").await.is_ok() },
    )
    .await;
    (proc, addr)
}

#[tokio::test]
async fn sim_binary_answers_ping_with_its_node_header() {
    let (mut proc, addr) = start_sim("dtable-server-p1").await;

    let resp = http::get(addr, "/ping/").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "pong");
    assert_eq!(resp.header(NODE_HEADER), Some("dtable-server-p1"));
    assert!(
        resp.header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );

    let missing = http::get(addr, "/no/such/path").await.unwrap();
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header(NODE_HEADER), Some("dtable-server-p1"));

    assert!(
        proc.log().contains("dtable-server-sim listening"),
        "{}",
        proc.log()
    );
    proc.sigterm();
    let status = proc
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn sigstop_freezes_and_sigcont_resumes() {
    let (mut proc, addr) = start_sim("dtable-server-p2").await;
    proc.sigstop();
    let quick = |addr| {
        let req = hyper::Request::get("/ping/")
            .body(http_body_util::Full::default())
            .unwrap();
        http::send(addr, req, Duration::from_millis(300))
    };
    assert!(matches!(
        quick(addr).await,
        Err(http::HttpError::Timeout { .. })
    ));
    proc.sigcont();
    assert_eq!(http::get(addr, "/ping/").await.unwrap().text(), "pong");
    proc.kill9();
    let status = proc
        .wait_exit(Duration::from_secs(1))
        .await
        .expect("killed");
    assert!(!status.success());
}

#[tokio::test]
async fn invalid_config_exits_64_naming_the_field() {
    let (status, output) = run_to_exit(
        "dtable-server-sim",
        &args(&["--listen", "127.0.0.1:0"]),
        &[],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(status.code(), Some(CONFIG_EXIT_CODE), "{output}");
    assert!(output.contains("--node-id"), "{output}");
    assert_eq!(output.trim().lines().count(), 1, "{output}");
}

#[tokio::test]
async fn env_twins_configure_the_sim() {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let _proc = Proc::spawn(
        "dtable-server-sim",
        &[],
        &[
            ("DTABLE_SIM_LISTEN".to_owned(), addr.to_string()),
            (
                "DTABLE_SIM_NODE_ID".to_owned(),
                "dtable-server-env".to_owned(),
            ),
        ],
    );
    wait_until(
        "the sim to answer /ping/",
        Duration::from_secs(10),
        || async move { http::get(addr, "/ping/").await.is_ok() },
    )
    .await;
    let resp = http::get(addr, "/ping/").await.unwrap();
    assert_eq!(resp.header(NODE_HEADER), Some("dtable-server-env"));
}

#[test]
#[should_panic(expected = "build it first with `cargo build --bins`")]
fn missing_binary_panics_with_advice() {
    bin_path("dtable-no-such-binary");
}
