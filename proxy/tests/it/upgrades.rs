//! WebSockets and socket.io through the proxy: they reach the owner, and a WebSocket is closed
//! when its bucket moves to another server.

use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use rust_socketio::asynchronous::{Client, ClientBuilder};
use rust_socketio::{Payload, TransportType};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::{Setup, uuid_in_bucket};

#[tokio::test]
async fn a_websocket_reaches_the_owner_and_closes_when_the_bucket_moves() {
    let s = Setup::start(2, &[]).await;
    let uuid = uuid_in_bucket(0x61, 1);
    let url = format!("ws://{}/_sim/ws?dtable_uuid={uuid}", s.proxy.addr);
    let (mut ws, resp) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade through the proxy");
    assert_eq!(resp.status(), 101);
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first, Message::text(format!("hello from {}", s.node(1))));
    for i in 0..20 {
        ws.send(Message::text(format!("msg-{i}"))).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echo, Message::text(format!("msg-{i}")));
    }
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo, Message::binary(vec![1u8, 2, 3]));

    // Another bucket's WebSocket on the same server stays open when 0x61 moves.
    let other = format!(
        "ws://{}/_sim/ws?dtable_uuid={}",
        s.proxy.addr,
        uuid_in_bucket(0x63, 1)
    );
    let (mut ws_other, _) = tokio_tungstenite::connect_async(other).await.unwrap();
    let _hello = ws_other.next().await;

    let mut kv = s.client.clone();
    kv.put("assign-61", s.node(0), None).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        end.is_ok(),
        "the proxy did not close the moved bucket's WebSocket"
    );
    ws_other.send(Message::text("still here")).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(10), ws_other.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo, Message::text("still here"));

    // Reconnecting lands on the new owner.
    let url = format!("ws://{}/_sim/ws?dtable_uuid={uuid}", s.proxy.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let first = ws.next().await.unwrap().unwrap();
    assert_eq!(first, Message::text(format!("hello from {}", s.node(0))));
}

fn first_arg(payload: Payload) -> Value {
    match payload {
        Payload::Text(mut values) if !values.is_empty() => values.swap_remove(0),
        _ => Value::Null,
    }
}

#[tokio::test]
async fn a_socket_io_client_connects_through_the_proxy() {
    let s = Setup::start(2, &[]).await;
    let uuid = uuid_in_bucket(0x72, 1);
    for (name, transport) in [
        ("polling", TransportType::Polling),
        ("websocket", TransportType::Websocket),
    ] {
        let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(String, Value)>();
        let mut builder = ClientBuilder::new(format!(
            "http://{}/socket.io/?dtable_uuid={uuid}",
            s.proxy.addr
        ))
        .transport_type(transport)
        .reconnect(false);
        // rust_socketio calls the namespace connection "open".
        for event in ["open", dtable_testkit::sim::JOINED_EVENT] {
            let seen_tx = seen_tx.clone();
            builder = builder.on(event, move |payload: Payload, _: Client| {
                let _ = seen_tx.send((event.to_owned(), first_arg(payload)));
                async {}.boxed()
            });
        }
        let client = tokio::time::timeout(Duration::from_secs(10), builder.connect())
            .await
            .expect("connected in time")
            .expect("socket.io connects through the proxy");
        assert_eq!(next(&mut seen_rx).await.0, "open");
        client
            .emit(
                dtable_testkit::sim::JOIN_EVENT,
                json!({"dtable_uuid": uuid}),
            )
            .await
            .unwrap();
        let (event, joined) = next(&mut seen_rx).await;
        assert_eq!(event, dtable_testkit::sim::JOINED_EVENT, "{name}");
        assert_eq!(joined["node_id"], s.node(0), "{name}");
        client.disconnect().await.unwrap();
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(String, Value)>) -> (String, Value) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("event in time")
        .expect("client alive")
}
