//! The byte path (plain HTTP/1.1 forwarded as bytes) against hyper's path: the same upstream
//! requests, the same answers, whatever framing the upstream uses, and a connection that
//! moves from one path to the other mid-way.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dtable_testkit::cluster::{Proxy, put_assign, put_node, spawn_proxy};
use dtable_testkit::{http, wait_until};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{SETTLE, Setup, client, send, uuid_in_bucket};

const BUCKET: u8 = 0x42;

/// The request heads an upstream saw, and how many connections it accepted.
#[derive(Clone, Default)]
struct Seen {
    heads: Arc<Mutex<Vec<String>>>,
    conns: Arc<AtomicUsize>,
}

fn content_length(head: &str) -> usize {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.trim().parse().unwrap())
}

/// The first whole request in `buf`: its head, its body (by length or chunked) and how many
/// bytes it took.
fn request(buf: &[u8]) -> Option<(String, Vec<u8>, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    let mut at = end + 4;
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let len = content_length(&head);
        let body = buf.get(at..at + len)?.to_vec();
        return Some((head, body, at + len));
    }
    let mut body = Vec::new();
    loop {
        let line = buf[at..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&buf[at..at + line]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        at += line + 2;
        if size == 0 {
            buf.get(at..at + 2)?;
            return Some((head, body, at + 2));
        }
        body.extend_from_slice(buf.get(at..at + size)?);
        buf.get(at + size..at + size + 2)?;
        at += size + 2;
    }
}

/// A raw HTTP/1.1 upstream whose answer depends on the path: `/chunked` (chunked, with an
/// extension and a trailer), `/echo` (the request body), `/close` (no length: ends with the
/// connection), `/informational` (a 100 before the answer), `/not-owner` (409 not-owner), else
/// the query as the body.
async fn upstream() -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let seen = Seen::default();
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            s.conns.fetch_add(1, Ordering::SeqCst);
            let heads = Arc::clone(&s.heads);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Some((head, body, used)) = request(&pending) else {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    pending.drain(..used);
                    let target = head.split(' ').nth(1).unwrap().to_owned();
                    heads.lock().unwrap().push(head);
                    let plain = |body: &[u8]| {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-dtable-node: raw\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(body);
                        r
                    };
                    let (answer, then_close) = if target.contains("/chunked") {
                        let r = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-dtable-node: raw\r\n\r\n\
                                 5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: t\r\n\r\n";
                        (r.as_bytes().to_vec(), false)
                    } else if target.contains("/echo") {
                        (plain(&body), false)
                    } else if target.contains("/close") {
                        (
                            b"HTTP/1.1 200 OK\r\nx-dtable-node: raw\r\n\r\nuntil close".to_vec(),
                            true,
                        )
                    } else if target.contains("/not-owner") {
                        let r = "HTTP/1.1 409 Conflict\r\nx-dtable-not-owner: 1\r\ncontent-length: 0\r\n\r\n";
                        (r.as_bytes().to_vec(), false)
                    } else if target.contains("/informational") {
                        let mut r = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
                        r.extend(plain(b"after 100"));
                        (r, false)
                    } else {
                        let query = target.split_once('?').map_or("", |(_, q)| q);
                        (plain(query.as_bytes()), false)
                    };
                    if conn.write_all(&answer).await.is_err() || then_close {
                        return;
                    }
                }
            });
        }
    });
    (url, seen)
}

/// A raw [`upstream`] registered as `dtable-server-raw` and given [`BUCKET`]: its URL, what it
/// sees, and the path of base `n` in the bucket.
async fn raw_bucket(s: &Setup, n: u64) -> (String, Seen, String) {
    let (url, seen) = upstream().await;
    put_node(&s.client, "dtable-server-raw", &url).await;
    put_assign(&s.client, BUCKET, "dtable-server-raw").await;
    (url, seen, format!("/dtables/{}", uuid_in_bucket(BUCKET, n)))
}

/// Waits until `proxy` sends requests for `path` to the raw upstream.
async fn routed_to_raw(proxy: &Proxy, path: &str) {
    let addr = proxy.addr;
    wait_until(
        "the proxy routes the bucket to the raw upstream",
        SETTLE,
        || async move {
            http::get(addr, path)
                .await
                .is_ok_and(|r| r.header("x-dtable-node") == Some("raw"))
        },
    )
    .await;
}

async fn ready(proxy: &Proxy) {
    let admin = proxy.admin;
    wait_until("proxy ready", SETTLE, || async move {
        http::get(admin, "/readyz")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
}

/// A request on a raw client connection, and everything the proxy answered until it closed
/// the connection.
async fn exchange(proxy: &Proxy, request: &str) -> String {
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(SETTLE, conn.read_to_end(&mut answer))
        .await
        .expect("the proxy closes the connection")
        .unwrap();
    String::from_utf8(answer).unwrap()
}

/// The header lines of a request head, lower-cased names, sorted, without the request line.
fn header_set(head: &str) -> Vec<String> {
    let mut lines: Vec<String> = head
        .lines()
        .skip(1)
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            format!("{}: {}", n.to_ascii_lowercase(), v.trim())
        })
        .collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn both_paths_send_the_same_requests_and_pass_every_framing_through() {
    let s = Setup::start(1, &[]).await;
    let hyper_only = spawn_proxy(&s.etcd, &["--h1-fast-path", "false"]);
    ready(&hyper_only).await;
    let (url, seen, base) = raw_bucket(&s, 7).await;
    for proxy in [&s.proxy, &hyper_only] {
        routed_to_raw(proxy, &format!("{base}/?n=0")).await;
    }

    // The same request through each path: the upstream gets the same headers.
    let request = format!(
        "GET {base}/rows/?n=1 HTTP/1.1\r\nHost: cloud.example\r\nConnection: keep-alive, close\r\n\
         Keep-Alive: timeout=5\r\nTE: trailers\r\nX-Forwarded-For: 192.0.2.7\r\n\
         X-Dtable-Epoch: 1\r\nCookie: a=1\r\nAccept: */*\r\n\r\n"
    );
    let mut sent = Vec::new();
    for proxy in [&s.proxy, &hyper_only] {
        let answer = exchange(proxy, &request).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nn=1"), "{answer}");
        let head = seen.heads.lock().unwrap().last().unwrap().clone();
        assert!(
            head.starts_with(&format!("GET {base}/rows/?n=1 HTTP/1.1\r\n")),
            "{head}"
        );
        sent.push(header_set(&head));
    }
    assert_eq!(sent[0], sent[1], "byte path, then hyper's path");
    let epoch = etcd_epoch(&s.client, BUCKET).await;
    let upstream_host = url.trim_start_matches("http://").trim_end_matches('/');
    for want in [
        format!("host: {upstream_host}"),
        "x-forwarded-for: 192.0.2.7, 127.0.0.1".to_owned(),
        "x-forwarded-proto: http".to_owned(),
        "x-forwarded-host: cloud.example".to_owned(),
        format!("x-dtable-epoch: {epoch}"),
        "cookie: a=1".to_owned(),
    ] {
        assert!(sent[0].contains(&want), "{want} in {:?}", sent[0]);
    }
    for gone in ["connection", "keep-alive", "te"] {
        assert!(
            !sent[0].iter().any(|l| l.starts_with(&format!("{gone}:"))),
            "{gone} in {:?}",
            sent[0]
        );
    }

    for proxy in [&s.proxy, &hyper_only] {
        let c = client();
        let url = |p: &str| format!("http://{}{base}{p}", proxy.addr);
        // Chunked, five times on one client connection: one upstream connection does.
        let before = seen.conns.load(Ordering::SeqCst);
        for _ in 0..5 {
            let (resp, body) = send(
                &c,
                hyper::Request::get(url("/chunked"))
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
            assert_eq!(resp.status(), 200);
            assert_eq!(&body[..], b"hello world");
        }
        assert!(
            seen.conns.load(Ordering::SeqCst) - before <= 1,
            "kept alive through {}: {} connections",
            proxy.addr,
            seen.conns.load(Ordering::SeqCst) - before
        );

        let post = hyper::Request::post(url("/echo"))
            .body(Full::new(Bytes::from_static(b"a body")))
            .unwrap();
        let (resp, body) = send(&c, post).await;
        assert_eq!((resp.status().as_u16(), &body[..]), (200, &b"a body"[..]));

        let (resp, body) = send(
            &c,
            hyper::Request::get(url("/informational"))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(
            (resp.status().as_u16(), &body[..]),
            (200, &b"after 100"[..])
        );

        let get = hyper::Request::get(url("/close"))
            .body(Full::default())
            .unwrap();
        let (resp, body) = send(&c, get).await;
        assert_eq!(
            (resp.status().as_u16(), &body[..]),
            (200, &b"until close"[..])
        );
    }
    // A body that ends with the upstream's connection: hyper's path sends it on chunked; the
    // byte path passes it on as it is, so the client connection ends with it.
    let answer = exchange(
        &s.proxy,
        &format!("GET {base}/close HTTP/1.1\r\nhost: x\r\n\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nuntil close"), "{answer}");
}

async fn etcd_epoch(client: &etcd_client::Client, bucket: u8) -> i64 {
    let key = format!("assign-{bucket:02x}");
    let resp = client.clone().get(key.as_str(), None).await.unwrap();
    resp.kvs()[0].mod_revision()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_across_both_paths() {
    let s = Setup::start(1, &[]).await;
    let (_, seen, base) = raw_bucket(&s, 9).await;
    routed_to_raw(&s.proxy, &format!("{base}/?n=0")).await;

    // Sent at once: two on the byte path, one with a chunked body (hyper's path from there
    // on), then two more, the last asking to close.
    let requests = format!(
        "GET {base}/?n=1 HTTP/1.1\r\nhost: x\r\n\r\n\
         POST {base}/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nn=2\
         POST {base}/echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nn=3\r\n0\r\n\r\n\
         GET {base}/?n=4 HTTP/1.1\r\nhost: x\r\n\r\n\
         GET {base}/?n=5 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    );
    let before = seen.heads.lock().unwrap().len();
    let answer = exchange(&s.proxy, &requests).await;
    let bodies: Vec<&str> = answer
        .split("HTTP/1.1 200 OK\r\n")
        .skip(1)
        .map(|r| r.rsplit("\r\n\r\n").next().unwrap())
        .collect();
    assert_eq!(bodies, ["n=1", "n=2", "n=3", "n=4", "n=5"], "{answer}");
    assert_eq!(seen.heads.lock().unwrap().len() - before, 5);
    let metrics = http::get(s.proxy.admin, "/metrics").await.unwrap().text();
    assert!(
        metrics.contains("dtable_proxy_hyper_handoffs_total{reason=\"chunked_body\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_refused_request_whose_client_left_is_not_sent_again() {
    let s = Setup::start(1, &[]).await;
    let (_, seen, base) = raw_bucket(&s, 11).await;
    routed_to_raw(&s.proxy, &format!("{base}/?n=0")).await;

    // The upstream refuses every time: the proxy resends with a back-off of 25 ms doubling to
    // 500 ms, until the client goes away.
    let count = || {
        seen.heads
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.contains("/not-owner"))
            .count()
    };
    let mut conn = TcpStream::connect(s.proxy.addr).await.unwrap();
    let request = format!("GET {base}/not-owner HTTP/1.1\r\nhost: x\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    wait_until("the proxy resends the refused request", SETTLE, || async {
        count() >= 3
    })
    .await;
    drop(conn);
    // One more may be on its way as the client leaves; none after that.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let after_leaving = count();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(count(), after_leaving, "sent again after its client left");
}

#[tokio::test]
async fn a_held_request_is_sent_when_its_bucket_lands_unless_its_client_left() {
    let s = Setup::start(1, &[]).await;
    let (_, seen, base) = raw_bucket(&s, 13).await;
    routed_to_raw(&s.proxy, &format!("{base}/?n=0")).await;
    let mut kv = s.client.clone();
    let moves = format!("dtable-cluster/moves/{BUCKET:02x}");
    let mv = serde_json::json!({"from": "dtable-server-raw", "to": s.node(0)}).to_string();
    kv.put(moves.as_str(), mv, None).await.unwrap();
    let lookup = format!("/api/v1/lookup/{}", uuid_in_bucket(BUCKET, 13));
    let admin = s.proxy.admin;
    wait_until("the proxy sees the move", SETTLE, || {
        let lookup = lookup.clone();
        async move {
            http::get(admin, &lookup)
                .await
                .is_ok_and(|r| r.text().contains("\"moving\":true"))
        }
    })
    .await;

    // Two requests arrive while the bucket moves; the client of the first leaves.
    let sent = |n: u32| {
        let heads = seen.heads.lock().unwrap();
        heads
            .iter()
            .filter(|h| h.contains(&format!("?n={n} ")))
            .count()
    };
    let mut left = TcpStream::connect(s.proxy.addr).await.unwrap();
    let request = |n: u32| format!("GET {base}/?n={n} HTTP/1.1\r\nhost: x\r\n\r\n");
    left.write_all(request(1).as_bytes()).await.unwrap();
    let mut stays = TcpStream::connect(s.proxy.addr).await.unwrap();
    stays.write_all(request(2).as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    drop(left);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!((sent(1), sent(2)), (0, 0), "held while the bucket moves");

    // The move ends with the bucket where it was: the held request that still has a client
    // goes out, the other one does not.
    kv.delete(moves.as_str(), None).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(SETTLE, stays.read(&mut answer))
        .await
        .expect("the held request is answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(
        answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("n=2"),
        "{answer}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!((sent(1), sent(2)), (0, 1));
}
