//! The sim's streaming endpoints: 50 MB up and down without buffering, and a WebSocket echo.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use dtable_testkit::sim::{DOWNLOAD_CHUNK, NODE_HEADER, SimOptions, pattern_chunk, pattern_sha256};
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::sim::{TestSim, json};

const FIFTY_MB: u64 = 50 * 1024 * 1024;

/// An HTTP/1 connection to `addr`, its driver running in the background.
async fn connect<B>(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

#[tokio::test]
async fn upload_of_50_mb_is_hashed_as_a_stream() {
    let sim = TestSim::start(SimOptions::alone("dtable-server-s1")).await;
    // The body is generated chunk by chunk as hyper sends it, and hashed on the way.
    let chunks = (0..FIFTY_MB.div_ceil(DOWNLOAD_CHUNK as u64)).map(|i| {
        let offset = i * DOWNLOAD_CHUNK as u64;
        let len = (FIFTY_MB - offset).min(DOWNLOAD_CHUNK as u64) as usize;
        Ok::<_, Infallible>(Frame::data(Bytes::from(pattern_chunk(9, offset, len))))
    });
    let body = StreamBody::new(futures::stream::iter(chunks));
    let mut sender = connect(sim.addr).await;
    let req = Request::post("/_sim/upload?dtable_uuid=ab12cd34ef56ab12cd34ef56ab12cd34")
        .header("host", sim.addr.to_string())
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(60), sender.send_request(req))
        .await
        .expect("upload answered in time")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[NODE_HEADER], "dtable-server-s1");
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["bytes"], FIFTY_MB);
    assert_eq!(body["sha256"], pattern_sha256(9, FIFTY_MB));
    sim.stop().await;
}

#[tokio::test]
async fn download_of_50_mb_matches_the_pattern() {
    let sim = TestSim::start(SimOptions::alone("dtable-server-s2")).await;
    let mut sender = connect::<Empty<Bytes>>(sim.addr).await;
    let req = Request::get(format!("/_sim/download?bytes={FIFTY_MB}&seed=5"))
        .header("host", sim.addr.to_string())
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[NODE_HEADER], "dtable-server-s2");
    assert_eq!(
        resp.headers()["content-length"],
        FIFTY_MB.to_string().as_str()
    );
    let mut body = resp.into_body();
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let read_all = async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                received += data.len() as u64;
                hasher.update(&data);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read_all)
        .await
        .expect("download finished in time");
    assert_eq!(received, FIFTY_MB);
    assert_eq!(hex::encode(hasher.finalize()), pattern_sha256(5, FIFTY_MB));

    let bad = crate::sim::request(
        sim.addr,
        hyper::Method::GET,
        "/_sim/download?seed=1",
        &[],
        b"",
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(json(&bad)["error"], "bad_query");
    sim.stop().await;
}

/// The next WebSocket message, within 5 s.
async fn next(ws: &mut WebSocketStream<MaybeTlsStream<TcpStream>>) -> Message {
    tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a message in time")
        .expect("open")
        .unwrap()
}

#[tokio::test]
async fn websocket_says_hello_and_echoes() {
    let sim = TestSim::start(SimOptions::alone("dtable-server-s3")).await;
    let url = format!(
        "ws://{}/_sim/ws?dtable_uuid=ab12cd34ef56ab12cd34ef56ab12cd34",
        sim.addr
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()[NODE_HEADER], "dtable-server-s3");
    assert_eq!(
        next(&mut ws).await,
        Message::text("hello from dtable-server-s3")
    );
    ws.send(Message::text("ping 1")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("ping 1"));
    let blob: Vec<u8> = (0..=255).collect();
    ws.send(Message::binary(blob.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(blob));
    ws.close(None).await.unwrap();

    // Shutting the sim down closes a session still open.
    let url = format!("ws://{}/_sim/ws", sim.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert!(next(&mut ws).await.is_text());
    sim.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("closed in time");
    assert!(
        matches!(end, None | Some(Ok(Message::Close(_))) | Some(Err(_))),
        "{end:?}"
    );
}
