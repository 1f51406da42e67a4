//! The sim's socket.io, driven by a real socket.io client (`rust_socketio`): `join-room` over
//! polling, websocket and polling upgraded to websocket, refused handshakes for bases it does not own, and sockets told
//! `dtable-server-mismatch` and disconnected when their bucket goes.

use std::net::SocketAddr;
use std::time::Duration;

use dtable_core::Bucket;
use dtable_testkit::sim::{
    JOIN_EVENT, JOINED_EVENT, MISMATCH_EVENT, NODE_HEADER, NOT_OWNER_HEADER, SimOptions,
};
use dtable_testkit::{Etcd, http, wait_until};
use futures::FutureExt;
use hyper::StatusCode;
use rust_socketio::asynchronous::{Client, ClientBuilder};
use rust_socketio::{Payload, TransportType};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::sim::{BASE_AB, BASE_AB_HEX, TestSim};

/// What a client saw: an event name (or `ack`) and its first argument.
type Seen = (String, Value);

/// Connects a socket.io client for `uuid` over `transport`; everything it receives goes to
/// the returned channel. Waits until the namespace connect is acknowledged.
async fn connect(
    addr: SocketAddr,
    uuid: &str,
    transport: TransportType,
) -> (Client, mpsc::UnboundedReceiver<Seen>) {
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let mut builder = ClientBuilder::new(format!("http://{addr}/socket.io/?dtable_uuid={uuid}"))
        .transport_type(transport)
        .reconnect(false);
    // rust_socketio calls the namespace connect acknowledgement "open".
    for event in ["open", "error", JOINED_EVENT, MISMATCH_EVENT] {
        let seen_tx = seen_tx.clone();
        builder = builder.on(event, move |payload: Payload, _: Client| {
            let _ = seen_tx.send((event.to_owned(), first(payload)));
            async {}.boxed()
        });
    }
    let client = tokio::time::timeout(Duration::from_secs(10), builder.connect())
        .await
        .expect("connected in time")
        .expect("connects");
    let (event, payload) = next(&mut seen_rx).await;
    assert_eq!(event, "open", "{payload}");
    (client, seen_rx)
}

/// The first argument of an event.
fn first(payload: Payload) -> Value {
    match payload {
        Payload::Text(mut values) if !values.is_empty() => values.swap_remove(0),
        _ => Value::Null,
    }
}

/// The next thing a client saw, within 10 s.
async fn next(seen_rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
        .await
        .expect("an event in time")
        .expect("client alive")
}

/// Emits `join-room` with an ack; returns the ack's and the `joined` event's payloads.
async fn join(client: &Client, seen_rx: &mut mpsc::UnboundedReceiver<Seen>) -> (Value, Value) {
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    client
        .emit_with_ack(
            JOIN_EVENT,
            json!({ "dtable_uuid": BASE_AB, "user": "u1" }),
            Duration::from_secs(10),
            move |payload: Payload, _: Client| {
                let _ = ack_tx.send(first(payload));
                async {}.boxed()
            },
        )
        .await
        .unwrap();
    let ack = tokio::time::timeout(Duration::from_secs(10), ack_rx.recv())
        .await
        .expect("ack in time")
        .unwrap();
    // rust_socketio hands an ack's whole argument list over as one array.
    let ack = match ack {
        Value::Array(mut args) if args.len() == 1 => args.swap_remove(0),
        other => other,
    };
    let (event, joined) = next(seen_rx).await;
    assert_eq!(event, JOINED_EVENT);
    (ack, joined)
}

#[tokio::test]
async fn clients_join_over_polling_and_websocket() {
    let sim = TestSim::start(SimOptions::alone("dtable-server-io1")).await;
    let mut clients = Vec::new();
    let transports = [
        TransportType::Polling,
        TransportType::Websocket,
        TransportType::WebsocketUpgrade,
    ];
    for transport in transports {
        let (client, mut seen_rx) = connect(sim.addr, BASE_AB, transport).await;
        let (ack, joined) = join(&client, &mut seen_rx).await;
        let want = json!({ "node_id": "dtable-server-io1", "dtable_uuid": BASE_AB_HEX });
        assert_eq!(joined, want);
        assert_eq!(ack, want);
        clients.push((client, seen_rx));
    }
    assert_eq!(sim.handle.socket_count(Bucket(0xab)), 3);

    assert_eq!(sim.handle.disconnect_bucket(Bucket(0xab)), 3);
    for (_client, seen_rx) in &mut clients {
        let (event, message) = next(seen_rx).await;
        assert_eq!(event, MISMATCH_EVENT);
        assert_eq!(message["bucket"], "ab");
        assert_eq!(message["node_id"], "dtable-server-io1");
        assert_eq!(message["dtable_uuid"], BASE_AB_HEX);
    }
    assert_eq!(sim.handle.socket_count(Bucket(0xab)), 0);
    sim.stop().await;
}

#[tokio::test]
async fn handshakes_need_ownership_and_release_disconnects() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    client
        .put("assign-ab", "dtable-server-io2", None)
        .await
        .unwrap();
    let options = SimOptions::following("dtable-server-io2", etcd.endpoints(), "");
    let sim = TestSim::start(options).await;
    let addr = sim.addr;
    let handshake = |uuid: &'static str| async move {
        let path = format!("/socket.io/?dtable_uuid={uuid}&EIO=4&transport=polling");
        http::get(addr, &path).await.unwrap()
    };
    wait_until("the sim to own ab", Duration::from_secs(10), || async {
        handshake(BASE_AB).await.status == StatusCode::OK
    })
    .await;

    // A raw Engine.IO v4 polling handshake: an open packet with a session id.
    let open = handshake(BASE_AB).await;
    assert_eq!(open.header(NODE_HEADER), Some("dtable-server-io2"));
    assert!(
        open.text().starts_with("0{") && open.text().contains("\"sid\""),
        "{}",
        open.text()
    );
    let refused = handshake("cd12cd34ef56ab12cd34ef56ab12cd34").await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(refused.header(NOT_OWNER_HEADER), Some("1"));
    assert_eq!(refused.header(NODE_HEADER), Some("dtable-server-io2"));
    let malformed = handshake("nope").await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);

    // Losing the bucket tells its sockets and disconnects them.
    let (_io, mut seen_rx) = connect(addr, BASE_AB, TransportType::Polling).await;
    assert_eq!(sim.handle.socket_count(Bucket(0xab)), 1);
    client
        .put("assign-ab", "dtable-server-other", None)
        .await
        .unwrap();
    let (event, message) = next(&mut seen_rx).await;
    assert_eq!(event, MISMATCH_EVENT);
    assert_eq!(message["bucket"], "ab");
    assert_eq!(sim.handle.socket_count(Bucket(0xab)), 0);
    sim.stop().await;
}
