//! Keep-alive on both sides: upstream connections that close under a request, and client
//! connections' keep-alive and header timeouts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dtable_testkit::cluster::{put_assign, put_node};
use dtable_testkit::{http, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{SETTLE, Setup, client, get, send, uuid_in_bucket};

/// A raw HTTP/1.1 upstream that answers the first request on each connection and closes the
/// connection when the second one arrives, without a word: what a server whose keep-alive
/// timeout ends just as a request goes out looks like. Counts connections and requests.
async fn closing_upstream() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let (conns, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c, r) = (Arc::clone(&conns), Arc::clone(&requests));
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            let r = Arc::clone(&r);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                let mut answered = false;
                loop {
                    let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    pending.drain(..end + 4);
                    r.fetch_add(1, Ordering::SeqCst);
                    if answered {
                        return; // closes the connection under the second request
                    }
                    let resp =
                        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-dtable-node: closer\r\n\r\nok";
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                    answered = true;
                }
            });
        }
    });
    (url, conns, requests)
}

#[tokio::test]
async fn an_idempotent_request_goes_out_again_when_a_kept_alive_upstream_connection_closes() {
    let s = Setup::start(1, &[]).await;
    let (url, conns, requests) = closing_upstream().await;
    put_node(&s.client, "dtable-server-closer", &url).await;
    put_assign(&s.client, 0x42, "dtable-server-closer").await;
    let path = format!("/dtables/{}", uuid_in_bucket(0x42, 1));
    let proxy = s.proxy.addr;
    wait_until("the proxy routes bucket 42 to the closer", SETTLE, || {
        let path = path.clone();
        async move {
            http::get(proxy, &path)
                .await
                .is_ok_and(|r| r.header("x-dtable-node") == Some("closer"))
        }
    })
    .await;

    // Every GET after the first finds its upstream connection closed under it and goes out
    // again on a new one: the client sees only answers.
    let c = client();
    let before = (
        conns.load(Ordering::SeqCst),
        requests.load(Ordering::SeqCst),
    );
    for i in 0..20 {
        let (resp, body) = send(&c, get(proxy, &path)).await;
        assert_eq!(resp.status(), 200, "GET {i}: {body:?}");
        assert_eq!(&body[..], b"ok");
    }
    let (opened, seen) = (
        conns.load(Ordering::SeqCst) - before.0,
        requests.load(Ordering::SeqCst) - before.1,
    );
    assert_eq!(opened, 20, "one new connection per answer");
    // The first GET takes the connection the wait above left idle, or a new one.
    assert!(
        (39..=40).contains(&seen),
        "every GET on a kept-alive connection went out twice: {seen}"
    );
    let metrics = http::get(s.proxy.admin, "/metrics").await.unwrap().text();
    let retries = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dtable_proxy_stale_connection_retries_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("the retry counter");
    assert!(retries >= 19, "{retries}");

    // A POST is not idempotent: it is not sent twice, and the client gets 502.
    let seen_before = requests.load(Ordering::SeqCst);
    let post = hyper::Request::post(format!("http://{proxy}{path}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let (resp, _) = send(&c, post).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(
        requests.load(Ordering::SeqCst) - seen_before,
        1,
        "sent once"
    );
}

/// Sends one request on `conn` and reads its answer's head.
async fn roundtrip(conn: &mut TcpStream, path: &str) -> String {
    conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(SETTLE, conn.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn an_idle_client_connection_outlives_the_header_timeout_until_the_keepalive_timeout() {
    let s = Setup::start(1, &["--header-timeout", "1s", "--keepalive-timeout", "4s"]).await;
    let path = format!("/dtables/{}", uuid_in_bucket(0x01, 1));
    let mut conn = TcpStream::connect(s.proxy.addr).await.unwrap();
    assert!(
        roundtrip(&mut conn, &path)
            .await
            .starts_with("HTTP/1.1 200")
    );

    // Idle for longer than the header timeout: still open, and serves the next request.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        roundtrip(&mut conn, &path)
            .await
            .starts_with("HTTP/1.1 200")
    );

    // Idle past the keep-alive timeout: closed by the proxy.
    let idle_from = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(SETTLE, conn.read(&mut buf))
        .await
        .expect("closed within the bound");
    assert!(matches!(read, Ok(0)) || read.is_err(), "{read:?}");
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(3500),
        "closed after {idle:?} idle"
    );

    // A head that starts but does not end is cut after the header timeout, well before the
    // keep-alive timeout.
    let mut slow = TcpStream::connect(s.proxy.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let read = tokio::time::timeout(SETTLE, slow.read(&mut buf))
        .await
        .expect("cut within the bound");
    assert!(matches!(read, Ok(0)) || read.is_err(), "{read:?}");
    let cut = started.elapsed();
    assert!(
        cut >= Duration::from_millis(500) && cut < Duration::from_millis(3500),
        "cut after {cut:?}"
    );

    let metrics = http::get(s.proxy.admin, "/metrics").await.unwrap().text();
    for reason in ["keepalive_timeout", "header_timeout"] {
        let line = format!("dtable_proxy_client_connections_closed_total{{reason=\"{reason}\"}}");
        assert!(
            metrics.lines().any(|l| l.starts_with(&line)),
            "{reason} counted: {metrics}"
        );
    }
}
