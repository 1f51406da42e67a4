//! Large bodies stream through both ways, intact, with the proxy's memory flat.

use bytes::Bytes;
use futures::stream;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::Request;
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};

use crate::{Setup, json, node_of, uuid_in_bucket};

const SIZE: u64 = 200 << 20;
const CHUNK: usize = 256 << 10;

/// Peak resident memory of a process, from /proc.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status")
}

/// A streamed body of `SIZE` deterministic bytes, and its sha256.
fn upload_body() -> (BoxBody<Bytes, std::convert::Infallible>, String) {
    let chunks = (SIZE / CHUNK as u64) as usize;
    let expected = dtable_testkit::sim::pattern_sha256(11, SIZE);
    let frames = stream::iter((0..chunks).map(|i| {
        let data = dtable_testkit::sim::pattern_chunk(11, (i * CHUNK) as u64, CHUNK);
        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(data)))
    }));
    (BoxBody::new(StreamBody::new(frames)), expected)
}

#[tokio::test]
async fn two_hundred_megabytes_stream_both_ways_with_flat_memory() {
    let s = Setup::start(2, &[]).await;
    let pid = s.proxy.proc.pid();
    let before = vm_hwm_kib(pid);
    // A fresh connection per request: after a streamed upload the proxy may close the client
    // connection once the answer is out, and a client that reuses it races that close (its
    // next upload then fails with a broken pipe, seen under load). Keep-alive is not what
    // this test is about.
    let c: Client<_, BoxBody<Bytes, std::convert::Infallible>> =
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
    let uuid = uuid_in_bucket(0x51, 1);

    // Upload with a declared length, then without one (chunked).
    for declared in [true, false] {
        let (body, expected) = upload_body();
        let mut req = Request::post(format!(
            "http://{}/_sim/upload?dtable_uuid={uuid}",
            s.proxy.addr
        ));
        if declared {
            req = req.header("content-length", SIZE);
        }
        let resp = c
            .request(req.body(body).unwrap())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "upload (declared={declared}): {e:?}\nproxy log:\n{}",
                    s.proxy.proc.log_tail(40)
                )
            });
        assert_eq!(resp.status(), 200);
        assert_eq!(node_of(&resp), s.node(1));
        let answer = resp.into_body().collect().await.unwrap().to_bytes();
        let j = json(&answer);
        assert_eq!(j["bytes"], SIZE, "declared={declared}");
        assert_eq!(j["sha256"], expected, "declared={declared}");
    }

    // Download, hashed as it arrives.
    let req = Request::get(format!(
        "http://{}/_sim/download?bytes={SIZE}&seed=12&dtable_uuid={uuid}",
        s.proxy.addr
    ))
    .body(BoxBody::new(http_body_util::Empty::new()))
    .unwrap();
    let resp = c.request(req).await.expect("download");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("download frame").into_data() {
            got += data.len() as u64;
            hasher.update(&data);
        }
    }
    assert_eq!(got, SIZE);
    assert_eq!(
        hex::encode(hasher.finalize()),
        dtable_testkit::sim::pattern_sha256(12, SIZE)
    );

    let grown_mib = vm_hwm_kib(pid).saturating_sub(before) / 1024;
    assert!(
        grown_mib < 32,
        "proxy peak RSS grew by {grown_mib} MiB moving 600 MB"
    );
}
