//! Every request lands on the owner named by `assign-<xx>`.

use std::collections::BTreeMap;

use dtable_testkit::cluster::read_assignment;
use hyper::Request;

use crate::{Setup, client, get, json, node_of, send};

/// Deterministic pseudo-random 128-bit values.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn dashed(hex: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[tokio::test]
async fn a_thousand_random_bases_land_on_their_owners() {
    let s = Setup::start(3, &[]).await;
    let assignment = read_assignment(&s.client).await;
    let mut epochs = BTreeMap::new();
    let mut c2 = s.client.clone();
    for b in 0..=255u8 {
        let r = c2.get(format!("assign-{b:02x}"), None).await.unwrap();
        epochs.insert(format!("{b:02x}"), r.kvs()[0].mod_revision());
    }
    let c = client();
    let mut seed = 0x5eed_u64;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..1000 {
        let hex = format!("{:016x}{:016x}", xorshift(&mut seed), xorshift(&mut seed));
        let (uuid, path) = match i % 4 {
            0 => (hex.clone(), format!("/dtables/{hex}")),
            1 => (
                dashed(&hex).to_uppercase(),
                format!("/api/v1/dtables/{}/rows/", dashed(&hex).to_uppercase()),
            ),
            2 => (
                hex.clone(),
                format!("/dtable-server/api/v1/dtables/{hex}/metadata/"),
            ),
            _ => (
                dashed(&hex),
                format!("/api/v1/internal/dtables/{}/", dashed(&hex)),
            ),
        };
        let bucket = &hex[..2];
        let (resp, body) = send(&c, get(s.proxy.addr, &path)).await;
        assert_eq!(
            resp.status(),
            200,
            "{uuid}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(
            node_of(&resp),
            assignment[bucket],
            "{uuid} routed to the wrong node"
        );
        let j = json(&body);
        assert_eq!(j["dtable_uuid"], hex);
        assert_eq!(
            j["request_epoch"], epochs[bucket],
            "epoch passed on as X-Dtable-Epoch"
        );
        assert_eq!(j["forwarded_for"], "127.0.0.1");
        assert_eq!(j["forwarded_proto"], "http");
        *per_node.entry(node_of(&resp)).or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "{per_node:?}");

    // A request without a base goes to some active server, round robin.
    let mut seen = BTreeMap::new();
    for _ in 0..6 {
        let (resp, body) = send(&c, get(s.proxy.addr, "/ping/")).await;
        assert_eq!(&body[..], b"pong");
        *seen.entry(node_of(&resp)).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "round robin over all three: {seen:?}");
}

#[tokio::test]
async fn grpc_style_h2c_requests_route_by_header() {
    let s = Setup::start(2, &[]).await;
    let assignment = read_assignment(&s.client).await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    for bucket in [0x00u8, 0x01, 0x7f, 0xfe] {
        let uuid = crate::uuid_in_bucket(bucket, 9);
        let req = Request::post(format!("http://{}/_sim/upload", s.proxy.addr))
            .header("x-dtable-uuid", &uuid)
            .header("content-type", "application/grpc")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"hello",
            )))
            .unwrap();
        let resp = h2.request(req).await.expect("h2c request");
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        assert_eq!(node_of(&resp), assignment[&format!("{bucket:02x}")]);
    }
}
