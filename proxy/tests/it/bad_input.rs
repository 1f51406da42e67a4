//! Bad input gets a clear answer and disturbs nobody else.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Setup, client, get, json, send, uuid_in_bucket};

#[tokio::test]
async fn bad_uuid_large_headers_and_slow_clients() {
    let s = Setup::start(
        2,
        &["--header-timeout", "2s", "--max-header-bytes", "16384"],
    )
    .await;
    let addr = s.proxy.addr;
    let c = client();

    let (resp, body) = send(&c, get(addr, "/api/v1/dtables/not-a-uuid/rows/")).await;
    assert_eq!(resp.status(), 400);
    let j = json(&body);
    assert_eq!(j["code"], "bad_dtable_uuid");
    assert!(j["error"].as_str().unwrap().contains("not-a-uuid"));

    // A slow client that never finishes its headers...
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /ping/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let opened = Instant::now();

    // ...does not disturb a normal one meanwhile.
    let ok_path = format!("/dtables/{}", uuid_in_bucket(0x01, 1));
    let (resp, _) = send(&c, get(addr, &ok_path)).await;
    assert_eq!(resp.status(), 200);

    // Headers over the limit: 431.
    let mut big = TcpStream::connect(addr).await.unwrap();
    let huge = "a".repeat(32 * 1024);
    big.write_all(format!("GET /ping/ HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), big.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&answer[..n]);
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");

    // The slow client is cut after the header timeout.
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf))
        .await
        .expect("cut within 10 s");
    let cut_after = opened.elapsed();
    assert!(
        matches!(read, Ok(0))
            || read.is_err()
            || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"),
        "{read:?}"
    );
    assert!(
        cut_after >= Duration::from_millis(1500),
        "cut after {cut_after:?}, before the timeout"
    );

    let (resp, _) = send(&client(), get(addr, &ok_path)).await;
    assert_eq!(resp.status(), 200, "others still served");
}

#[tokio::test]
async fn the_connection_cap_queues_extra_clients_until_a_slot_frees() {
    let s = Setup::start(1, &["--max-connections", "2"]).await;
    let addr = s.proxy.addr;
    let request = b"GET /ping/ HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(request).await.unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(c);
    }
    // A third client connects (the kernel queues it) but is not served while both slots are
    // taken by idle keep-alive connections.
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(request).await.unwrap();
    let mut buf = [0u8; 256];
    let early = tokio::time::timeout(Duration::from_millis(1500), third.read(&mut buf)).await;
    assert!(early.is_err(), "served beyond the cap");
    drop(held.pop());
    let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf))
        .await
        .expect("served once a slot frees")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}
