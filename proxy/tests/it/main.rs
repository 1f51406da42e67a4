//! The proxy as a real process, in front of real sims, against a real etcd.

mod admin;
mod bad_input;
mod bytepath;
mod holding;
mod keepalive;
mod lifecycle;
mod routing;
mod security;
mod slaves;
mod streaming;
mod upgrades;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use dtable_testkit::cluster::{Proxy, Sim, put_assign, put_node, spawn_proxy, spawn_sim};
use dtable_testkit::{Etcd, http, wait_until};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Generous bound for things that take well under a second on an idle machine.
pub const SETTLE: Duration = Duration::from_secs(20);

/// etcd, sims registered as nodes, the 256 buckets spread over them round robin, and a proxy.
pub struct Setup {
    pub etcd: Etcd,
    pub client: etcd_client::Client,
    pub sims: Vec<Sim>,
    pub proxy: Proxy,
}

impl Setup {
    pub async fn start(sims: usize, proxy_flags: &[&str]) -> Setup {
        let etcd = Etcd::start().await;
        let client = etcd.client().await;
        let sims: Vec<Sim> = (0..sims)
            .map(|i| spawn_sim(&etcd, &format!("dtable-server-{i}"), &[]))
            .collect();
        for sim in &sims {
            put_node(&client, &sim.node_id, &sim.url()).await;
        }
        for b in 0..=255u8 {
            put_assign(&client, b, &sims[usize::from(b) % sims.len()].node_id).await;
        }
        let proxy = spawn_proxy(&etcd, proxy_flags);
        let setup = Setup {
            etcd,
            client,
            sims,
            proxy,
        };
        let admin = setup.proxy.admin;
        wait_until("proxy ready", SETTLE, || async move {
            http::get(admin, "/readyz")
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await;
        // Every sim has loaded the assignment: a request for its first bucket succeeds.
        for (i, _) in setup.sims.iter().enumerate() {
            let uuid = uuid_in_bucket(i as u8, 1);
            let addr = setup.proxy.addr;
            wait_until("sims following etcd", SETTLE, || {
                let uuid = uuid.clone();
                async move {
                    http::get(addr, &format!("/dtables/{uuid}"))
                        .await
                        .is_ok_and(|r| r.status == 200)
                }
            })
            .await;
        }
        setup
    }

    /// The node id of sim `i`.
    pub fn node(&self, i: usize) -> &str {
        &self.sims[i].node_id
    }
}

/// A base UUID in `bucket`, varied by `n`.
pub fn uuid_in_bucket(bucket: u8, n: u64) -> String {
    format!(
        "{bucket:02x}{:030x}",
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15) as u128 | 1
    )
}

/// A pooled HTTP/1.1 client for tests.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Sends `req` and reads the whole answer.
pub async fn send(
    c: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (Response<()>, Bytes) {
    let resp = tokio::time::timeout(Duration::from_secs(60), c.request(req))
        .await
        .expect("answer within 60 s")
        .expect("request sent");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (Response::from_parts(parts, ()), bytes)
}

/// GET `path` on `addr`.
pub fn get(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .body(Full::default())
        .unwrap()
}

/// The JSON of a body.
pub fn json(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// The X-Dtable-Node header of a response.
pub fn node_of<B>(resp: &Response<B>) -> String {
    resp.headers()
        .get("x-dtable-node")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}
