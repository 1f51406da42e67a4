//! The sim served in-process through `serve_sim`.

use std::time::Duration;

use dtable_testkit::http;
use dtable_testkit::sim::{NODE_HEADER, serve_sim};
use hyper::{Method, Request, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

#[tokio::test]
async fn in_process_sim_serves_and_shuts_down() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_sim(listener, "dtable-server-in".to_owned(), async {
        let _ = stop_rx.await;
    }));

    let resp = http::get(addr, "/ping/").await.unwrap();
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (StatusCode::OK, "pong")
    );
    assert_eq!(resp.header(NODE_HEADER), Some("dtable-server-in"));

    let post = Request::builder()
        .method(Method::POST)
        .uri("/ping/")
        .body(http_body_util::Full::default())
        .unwrap();
    let resp = http::send(addr, post, Duration::from_secs(5))
        .await
        .unwrap();
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
    let err = serve_sim(listener, String::new(), async {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid node id"), "{err}");
}
