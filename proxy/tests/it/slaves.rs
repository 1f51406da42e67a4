//! The slave listener (`--slave-listen`) of a real proxy process, against a real etcd, in
//! front of slaves registered under `dtable-cluster/slaves/<node_id>` on a lease as a slave's
//! agent registers them. The slaves' backends are sims that own every bucket (started without
//! `--etcd`), so each answers every read of a base with 200 and its `X-Dtable-Node`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dtable_testkit::cluster::{Sim, read_slaves, spawn_proxy, spawn_slave_agent, spawn_slave_sim};
use dtable_testkit::pki::{Pki, https_client};
use dtable_testkit::{Etcd, free_port, http, run_to_exit, wait_until};
use etcd_client::{Client, PutOptions};
use http_body_util::Full;
use hyper::Request;
use serde_json::Value;

use crate::{SETTLE, Setup, client, get, json, node_of, send, uuid_in_bucket};

/// TTL of a hand registration: long, as the tests revoke the leases themselves (as a slave's
/// agent does when its slave fails the health probe).
const LEASE_TTL: i64 = 60;

/// A slave's backend: a sim owning every bucket at epoch 0, so it serves every base.
fn spawn_backend(node_id: &str) -> Sim {
    Sim::start(node_id, &[])
}

/// Registers a slave as its agent would: its node record at `dtable-cluster/slaves/<id>` on a
/// lease of its own. Returns the lease.
async fn register_slave(client: &Client, node_id: &str, local_node_url: &str) -> i64 {
    let mut c = client.clone();
    let lease = c
        .lease_grant(LEASE_TTL, None)
        .await
        .expect("grant a lease")
        .id();
    let record = serde_json::json!({
        "node_id": node_id,
        "node_url": format!("https://cloud.example/{node_id}/"),
        "local_node_url": local_node_url,
        "role": "slave",
        "state": "active",
        "weight": 1,
        "version": "test",
        "started_at": "2026-01-01T00:00:00Z",
    });
    c.put(
        format!("dtable-cluster/slaves/{node_id}"),
        record.to_string(),
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .expect("put the slave record");
    lease
}

/// Revokes a registration's lease, as a slave's agent does when its slave turns unhealthy.
async fn revoke(client: &Client, lease: i64) {
    client
        .clone()
        .lease_revoke(lease)
        .await
        .expect("revoke the lease");
}

/// The proxy's slave pool, as its admin port lists it.
async fn pool(admin: SocketAddr, query: &str) -> Value {
    let r = http::get(admin, &format!("/api/v1/slaves{query}"))
        .await
        .expect("admin answers");
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).expect("JSON")
}

/// Waits until the proxy's pool is exactly `want` (node ids), loaded from etcd.
async fn wait_for_pool(admin: SocketAddr, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
    wait_until("the proxy's slave pool", SETTLE, || {
        let want = want.clone();
        async move {
            let Ok(r) = http::get(admin, "/api/v1/slaves").await else {
                return false;
            };
            let Ok(j) = serde_json::from_slice::<Value>(&r.body) else {
                return false;
            };
            let ids: BTreeSet<String> = j["slaves"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["node_id"].as_str().map(str::to_owned))
                .collect();
            j["revision"].as_i64() > Some(0) && ids == want
        }
    })
    .await;
}

/// The slave the proxy picks for `uuid`, as its admin port says.
async fn slave_of(admin: SocketAddr, uuid: &str) -> Option<String> {
    pool(admin, &format!("?dtable_uuid={uuid}")).await["slave"]
        .as_str()
        .map(str::to_owned)
}

/// How many requests the proxy has in flight to `slave`.
async fn in_flight(admin: SocketAddr, slave: &str) -> u64 {
    pool(admin, "").await["slaves"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["node_id"] == slave)
        .and_then(|s| s["in_flight"].as_u64())
        .unwrap_or(0)
}

/// `n` pseudo-random base UUIDs, 32 lowercase hex characters each.
fn random_uuids(n: usize, mut seed: u64) -> Vec<String> {
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..n)
        .map(|_| format!("{:016x}{:016x}", next(), next()))
        .collect()
}

/// The dashed upper-case form of a 32-hex UUID.
fn dashed_upper(hex: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
    .to_uppercase()
}

/// The value of metric line `name` (with its labels) in Prometheus text, if present.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A cluster of servers owning the buckets, a proxy with a slave listener, and slaves
/// registered by hand in front of their backends.
struct Slaves {
    setup: Setup,
    /// The slave listener.
    addr: SocketAddr,
    backends: Vec<Sim>,
    leases: Vec<i64>,
}

impl Slaves {
    /// `servers` owning sims, a proxy with `--slave-listen` and `extra` flags, and `slaves`
    /// slaves named `dtable-server-slave-<i>`, registered and in the proxy's pool.
    async fn start(servers: usize, slaves: usize, extra: &[&str]) -> Slaves {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let listen = addr.to_string();
        let mut flags = vec!["--slave-listen", listen.as_str()];
        flags.extend_from_slice(extra);
        let setup = Setup::start(servers, &flags).await;
        let backends: Vec<Sim> = (0..slaves)
            .map(|i| spawn_backend(&format!("dtable-server-slave-{i}")))
            .collect();
        let mut leases = Vec::new();
        for b in &backends {
            let sim = b.addr;
            wait_until("slave backend up", SETTLE, || async move {
                http::get(sim, "/ping/")
                    .await
                    .is_ok_and(|r| r.status == 200)
            })
            .await;
            leases.push(register_slave(&setup.client, &b.node_id, &b.url()).await);
        }
        let ids: Vec<&str> = backends.iter().map(|b| b.node_id.as_str()).collect();
        wait_for_pool(setup.proxy.admin, &ids).await;
        Slaves {
            setup,
            addr,
            backends,
            leases,
        }
    }

    fn admin(&self) -> SocketAddr {
        self.setup.proxy.admin
    }

    fn slave(&self, i: usize) -> &str {
        &self.backends[i].node_id
    }
}

#[tokio::test]
async fn each_base_sticks_to_one_slave_and_the_bases_split_evenly() {
    let s = Slaves::start(1, 2, &[]).await;
    let c = client();
    let uuids = random_uuids(1000, 0x51a7e);
    let mut chosen: BTreeMap<&str, String> = BTreeMap::new();
    // Three rounds over all bases, so the requests of one base are interleaved with the
    // others'; each base is asked for in both forms and in several path shapes.
    for round in 0..3 {
        for (i, hex) in uuids.iter().enumerate() {
            let path = match (i + round) % 3 {
                0 => format!("/dtables/{hex}"),
                1 => format!("/api/v1/internal/dtables/{}/", dashed_upper(hex)),
                _ => format!(
                    "/dtable-server/api/v1/dtables/{}/metadata/",
                    dashed_upper(hex)
                ),
            };
            let (resp, body) = send(&c, get(s.addr, &path)).await;
            assert_eq!(
                resp.status(),
                200,
                "{path}: {}",
                String::from_utf8_lossy(&body)
            );
            let j = json(&body);
            assert_eq!(j["dtable_uuid"], hex.as_str());
            assert_eq!(j["forwarded_for"], "127.0.0.1");
            assert_eq!(j["forwarded_proto"], "http");
            assert_eq!(j["request_epoch"], Value::Null, "slaves get no epoch");
            let node = node_of(&resp);
            match chosen.get(hex.as_str()) {
                None => {
                    chosen.insert(hex, node);
                }
                Some(first) => assert_eq!(*first, node, "{hex} moved in round {round}"),
            }
        }
    }
    let mut split: BTreeMap<&str, usize> = BTreeMap::new();
    for node in chosen.values() {
        *split.entry(node).or_default() += 1;
    }
    assert_eq!(
        split.keys().copied().collect::<Vec<_>>(),
        [s.slave(0), s.slave(1)]
    );
    for (node, n) in &split {
        assert!((400..=600).contains(n), "{node} got {n} of 1000 bases");
    }
    // The admin port names the same slave for a base.
    for hex in uuids.iter().take(20) {
        assert_eq!(
            slave_of(s.admin(), &dashed_upper(hex)).await.as_deref(),
            Some(chosen[hex.as_str()].as_str())
        );
    }

    // A malformed UUID is refused as on the routing port; an upgrade is refused.
    let (resp, body) = send(&c, get(s.addr, "/api/v1/dtables/not-a-uuid/rows/")).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(json(&body)["code"], "bad_dtable_uuid");
    let upgrade = Request::get(format!("http://{}/dtables/{}", s.addr, uuids[0]))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(Full::<Bytes>::default())
        .unwrap();
    let (resp, body) = send(&c, upgrade).await;
    assert_eq!(resp.status(), 501);
    assert_eq!(json(&body)["code"], "upgrade_unsupported");

    let m = http::get(s.admin(), "/metrics").await.unwrap().text();
    assert_eq!(metric(&m, "dtable_proxy_slaves_healthy"), Some(2.0), "{m}");
    for (node, n) in &split {
        let line = format!("dtable_proxy_slave_requests_total{{slave=\"{node}\"}}");
        assert_eq!(metric(&m, &line), Some(3.0 * *n as f64), "{line}\n{m}");
    }
    let line = "dtable_proxy_slave_refusals_total{code=\"bad_dtable_uuid\"}";
    assert_eq!(metric(&m, line), Some(1.0), "{m}");
    assert!(
        m.contains("dtable_proxy_slave_request_duration_seconds"),
        "{m}"
    );
}

#[tokio::test]
async fn a_lost_slave_hands_over_only_its_own_bases() {
    let mut s = Slaves::start(1, 3, &[]).await;
    let c = client();
    let uuids = random_uuids(600, 0x1055);
    let addr = s.addr;
    let read = |hex: &String| (get(addr, &format!("/api/v1/dtables/{hex}/")), hex.clone());
    let mut before: BTreeMap<String, String> = BTreeMap::new();
    for hex in &uuids {
        let (req, hex) = read(hex);
        let (resp, _) = send(&c, req).await;
        assert_eq!(resp.status(), 200);
        before.insert(hex, node_of(&resp));
    }
    let lost = s.slave(1).to_owned();
    let of_lost = before.values().filter(|n| **n == lost).count();
    assert!(of_lost > 100, "the lost slave had {of_lost} bases");

    // kill -9 the slave while it is still registered: its reads go to the next slave by the
    // same hash, at once, and succeed.
    s.backends[1].kill9();
    let mut during: BTreeMap<String, String> = BTreeMap::new();
    for hex in &uuids {
        let (req, hex) = read(hex);
        let (resp, body) = send(&c, req).await;
        assert_eq!(
            resp.status(),
            200,
            "{hex}: {}",
            String::from_utf8_lossy(&body)
        );
        let node = node_of(&resp);
        if before[&hex] == lost {
            assert_ne!(node, lost);
        } else {
            assert_eq!(node, before[&hex], "{hex} of a live slave moved");
        }
        during.insert(hex, node);
    }
    let m = http::get(s.admin(), "/metrics").await.unwrap().text();
    assert_eq!(
        metric(&m, "dtable_proxy_slave_retries_total"),
        Some(of_lost as f64),
        "{m}"
    );

    // Its registration goes: the same bases land on the same survivors, now without a retry.
    revoke(&s.setup.client, s.leases[1]).await;
    wait_for_pool(s.admin(), &[s.slave(0), s.slave(2)]).await;
    let mut taken_over: BTreeMap<String, usize> = BTreeMap::new();
    for hex in &uuids {
        let (req, hex) = read(hex);
        let (resp, _) = send(&c, req).await;
        assert_eq!(resp.status(), 200);
        let node = node_of(&resp);
        assert_eq!(
            node, during[&hex],
            "{hex}: the next slave by hash serves it"
        );
        if before[&hex] == lost {
            *taken_over.entry(node).or_default() += 1;
        } else {
            assert_eq!(node, before[&hex], "{hex} of a surviving slave moved");
        }
    }
    assert_eq!(
        taken_over.len(),
        2,
        "both survivors took some: {taken_over:?}"
    );
    let m = http::get(s.admin(), "/metrics").await.unwrap().text();
    assert_eq!(metric(&m, "dtable_proxy_slaves_healthy"), Some(2.0), "{m}");
    assert_eq!(
        metric(&m, "dtable_proxy_slave_retries_total"),
        Some(of_lost as f64),
        "no more retries once the registration is gone"
    );
}

#[tokio::test]
async fn a_dead_slave_is_dropped_by_its_agent_and_only_its_bases_move() {
    // Owners behind the routing port; two real slaves, each loading bases through the routing
    // port and keeping them, registered by their agents while healthy.
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let listen = addr.to_string();
    let s = Setup::start(2, &["--slave-listen", &listen]).await;
    let origin = format!("http://{}", s.proxy.addr);
    let mut sims: Vec<Sim> = ["dtable-server-slave-a", "dtable-server-slave-b"]
        .iter()
        .map(|id| spawn_slave_sim(id, &origin, &["--cache-ttl-ms", "600000"]))
        .collect();
    let _agents: Vec<_> = sims
        .iter()
        .map(|sim| spawn_slave_agent(&s.etcd, &sim.node_id, 10, &sim.url(), &[]))
        .collect();
    let (a, b) = (sims[0].node_id.clone(), sims[1].node_id.clone());
    wait_for_pool(s.proxy.admin, &[&a, &b]).await;

    // Every read of a base lands on one slave, which loads it from its owner once.
    let c = client();
    let uuids = random_uuids(300, 0xdead);
    let mut before: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..2 {
        for hex in &uuids {
            let path = format!("/api/v1/dtables/{}/", dashed_upper(hex));
            let (resp, body) = send(&c, get(addr, &path)).await;
            assert_eq!(
                resp.status(),
                200,
                "{path}: {}",
                String::from_utf8_lossy(&body)
            );
            assert_eq!(resp.headers()["x-dtable-slave"], "1");
            let j = json(&body);
            assert_eq!(j["dtable_uuid"], hex.as_str());
            let bucket = usize::from_str_radix(&hex[..2], 16).unwrap();
            assert_eq!(
                j["source_node"],
                s.node(bucket % 2),
                "loaded from the owner"
            );
            let node = node_of(&resp);
            match round {
                0 => {
                    before.insert(hex.clone(), node);
                }
                _ => assert_eq!(before[hex], node, "{hex} moved"),
            }
        }
    }
    let count = |node: &str| before.values().filter(|n| *n == node).count() as u64;
    let (of_a, of_b) = (count(&a), count(&b));
    assert!(of_a > 90 && of_b > 90, "a {of_a}, b {of_b}");
    let fetches = |sim: SocketAddr| async move {
        let r = http::get(sim, "/_sim/state").await.expect("slave state");
        serde_json::from_slice::<Value>(&r.body).unwrap()["origin_fetches"]
            .as_u64()
            .expect("origin_fetches")
    };
    assert_eq!(
        fetches(sims[0].addr).await,
        of_a,
        "a loaded each of its bases once"
    );
    assert_eq!(
        fetches(sims[1].addr).await,
        of_b,
        "b loaded each of its bases once"
    );

    // kill -9 slave a: its agent finds it dead and revokes its registration.
    sims[0].kill9();
    let client_etcd = s.client.clone();
    let gone = a.clone();
    wait_until("the dead slave's registration is gone", SETTLE, || {
        let (c, gone) = (client_etcd.clone(), gone.clone());
        async move { !read_slaves(&c).await.contains_key(&gone) }
    })
    .await;
    wait_for_pool(s.proxy.admin, &[&b]).await;
    for hex in &uuids {
        let (resp, body) = send(&c, get(addr, &format!("/api/v1/dtables/{hex}/"))).await;
        assert_eq!(
            resp.status(),
            200,
            "{hex}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(node_of(&resp), b);
    }
    // b kept its own bases (served from its copies) and loaded only a's.
    assert_eq!(fetches(sims[1].addr).await, of_b + of_a);
}

#[tokio::test]
async fn without_a_healthy_slave_503_or_the_owner_answers() {
    let s = Slaves::start(2, 0, &[]).await;
    let c = client();
    let uuid = uuid_in_bucket(0x05, 3);
    // No slave: 503 no_slave with Retry-After, for bases and for requests without one.
    for path in [format!("/dtables/{uuid}"), "/ping/".to_owned()] {
        let (resp, body) = send(&c, get(s.addr, &path)).await;
        assert_eq!(resp.status(), 503, "{path}");
        assert!(resp.headers().contains_key("retry-after"), "{path}");
        let j = json(&body);
        assert_eq!(j["code"], "no_slave", "{j}");
        assert!(j["error"].as_str().unwrap().contains("slave"), "{j}");
    }

    // A second proxy falls back to the owner of the base's bucket.
    let fallback_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let listen = fallback_addr.to_string();
    let proxy = spawn_proxy(
        &s.setup.etcd,
        &["--slave-listen", &listen, "--slave-fallback-to-owner"],
    );
    wait_for_pool(proxy.admin, &[]).await;
    let owner = s.setup.node(0x05 % 2).to_owned();
    wait_until("the fallback proxy routes", SETTLE, || {
        let (c, path) = (client(), format!("/dtables/{uuid}"));
        async move { send(&c, get(fallback_addr, &path)).await.0.status() == 200 }
    })
    .await;
    let (resp, body) = send(&c, get(fallback_addr, &format!("/dtables/{uuid}"))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(node_of(&resp), owner);
    assert!(json(&body)["request_epoch"].as_i64() > Some(0), "as routed");
    let (resp, body) = send(&c, get(fallback_addr, "/ping/")).await;
    assert_eq!(&body[..], b"pong");
    let servers = [s.setup.node(0), s.setup.node(1)];
    assert!(servers.contains(&node_of(&resp).as_str()));

    // A slave registers: the fallback stops.
    let backend = spawn_backend("dtable-server-slave-late");
    let late = backend.addr;
    wait_until("slave backend up", SETTLE, || async move {
        http::get(late, "/ping/")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    let lease = register_slave(&s.setup.client, &backend.node_id, &backend.url()).await;
    wait_for_pool(proxy.admin, &[&backend.node_id]).await;
    wait_for_pool(s.admin(), &[&backend.node_id]).await;
    for addr in [s.addr, fallback_addr] {
        let (resp, _) = send(&c, get(addr, &format!("/dtables/{uuid}"))).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(node_of(&resp), backend.node_id);
    }
    // It goes: the owner again (and 503 on the proxy without the fallback).
    revoke(&s.setup.client, lease).await;
    wait_for_pool(proxy.admin, &[]).await;
    wait_for_pool(s.admin(), &[]).await;
    let (resp, _) = send(&c, get(fallback_addr, &format!("/dtables/{uuid}"))).await;
    assert_eq!(node_of(&resp), owner);
    let (resp, _) = send(&c, get(s.addr, &format!("/dtables/{uuid}"))).await;
    assert_eq!(resp.status(), 503);

    let m = http::get(proxy.admin, "/metrics").await.unwrap().text();
    assert!(
        metric(&m, "dtable_proxy_slave_fallbacks_total") >= Some(3.0),
        "{m}"
    );
    let m = http::get(s.admin(), "/metrics").await.unwrap().text();
    assert_eq!(
        metric(&m, "dtable_proxy_slave_refusals_total{code=\"no_slave\"}"),
        Some(3.0),
        "{m}"
    );
}

#[tokio::test]
async fn a_request_without_a_base_goes_to_the_least_busy_slave_and_sigterm_drains() {
    let mut s = Slaves::start(1, 2, &["--shutdown-grace", "20s"]).await;
    let (a, b) = (s.slave(0).to_owned(), s.slave(1).to_owned());
    let admin = s.admin();
    let mut uuid_on_a = None;
    for hex in random_uuids(50, 0xb05e) {
        if slave_of(admin, &hex).await.as_deref() == Some(a.as_str()) {
            uuid_on_a = Some(hex);
            break;
        }
    }
    let uuid = uuid_on_a.expect("some base of 50 goes to slave a");

    // One slow read holds slave a busy: every request without a base goes to b meanwhile.
    let addr = s.addr;
    let slow_path = format!("/dtables/{uuid}?delay_ms=4000");
    let slow = tokio::spawn({
        let path = slow_path.clone();
        async move { send(&client(), get(addr, &path)).await }
    });
    wait_until("the slow read in flight on a", SETTLE, || {
        let a = a.clone();
        async move { in_flight(admin, &a).await == 1 }
    })
    .await;
    let c = client();
    for _ in 0..6 {
        let (resp, body) = send(&c, get(s.addr, "/ping/")).await;
        assert_eq!(&body[..], b"pong");
        assert_eq!(node_of(&resp), b, "a is busy");
    }
    let (resp, _) = slow.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(node_of(&resp), a);
    wait_until("a idle again", SETTLE, || {
        let a = a.clone();
        async move { in_flight(admin, &a).await == 0 }
    })
    .await;
    // Both idle: in turn.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..6 {
        let (resp, _) = send(&c, get(s.addr, "/ping/")).await;
        *seen.entry(node_of(&resp)).or_default() += 1;
    }
    assert_eq!(seen, BTreeMap::from([(a.clone(), 3), (b.clone(), 3)]));

    // SIGTERM: the slave port stops accepting and lets the read in flight finish.
    let slow = tokio::spawn(async move { send(&client(), get(addr, &slow_path)).await });
    wait_until("another slow read in flight", SETTLE, || {
        let a = a.clone();
        async move { in_flight(admin, &a).await == 1 }
    })
    .await;
    s.setup.proxy.proc.sigterm();
    let stopped = Instant::now();
    let (resp, _) = slow.await.unwrap();
    assert_eq!(resp.status(), 200, "the read in flight finished");
    let status = s
        .setup
        .proxy
        .proc
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("proxy exits");
    assert!(status.success(), "{status:?}");
    assert!(stopped.elapsed() < Duration::from_secs(15));
    assert!(
        tokio::net::TcpStream::connect(s.addr).await.is_err(),
        "the slave port still accepts after exit"
    );
}

#[tokio::test]
async fn the_slave_port_speaks_tls_like_the_others() {
    let pki = Pki::generate();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let backend = spawn_backend("dtable-server-slave-tls");
    let sim = backend.addr;
    wait_until("slave backend up", SETTLE, || async move {
        http::get(sim, "/ping/")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    register_slave(&client, &backend.node_id, &backend.url()).await;
    let slave_port = free_port();
    let mut flags = pki.server_args(true);
    flags.extend([
        "--slave-listen".to_owned(),
        format!("127.0.0.1:{slave_port}"),
    ]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let proxy = spawn_proxy(&etcd, &flags);

    let trusted = https_client(&pki.ca, Some(&pki.client));
    let anonymous = https_client(&pki.ca, None);
    let uuid = uuid_in_bucket(0x42, 7);
    let url = format!("https://127.0.0.1:{slave_port}/dtables/{uuid}");
    wait_until("a read over HTTPS on the slave port", SETTLE, || {
        let (c, url) = (trusted.clone(), url.clone());
        async move { c.get(url).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let resp = trusted.get(&url).send().await.unwrap();
    assert_eq!(
        resp.headers()["x-dtable-node"].to_str().unwrap(),
        backend.node_id
    );
    let j: Value = resp.json().await.unwrap();
    assert_eq!(j["forwarded_proto"], "https");
    assert!(
        anonymous.get(&url).send().await.is_err(),
        "served a client without a certificate"
    );
    let plain = SocketAddr::from(([127, 0, 0, 1], slave_port));
    assert!(http::get(plain, &format!("/dtables/{uuid}")).await.is_err());
    drop(proxy);
}

#[tokio::test]
async fn slave_flags_are_checked_at_start_up() {
    let cases: [(&[&str], &str); 2] = [
        (
            &["--etcd", "127.0.0.1:1", "--slave-fallback-to-owner"],
            "--slave-fallback-to-owner",
        ),
        (
            &[
                "--etcd",
                "127.0.0.1:1",
                "--listen",
                "127.0.0.1:4555",
                "--slave-listen",
                "127.0.0.1:4555",
            ],
            "--slave-listen",
        ),
    ];
    for (args, field) in cases {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let (status, out) = run_to_exit("dtable-proxy", &args, &[], Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(64), "{args:?}: {out}");
        assert!(out.contains(field), "{args:?}: {out}");
        assert_eq!(out.trim().lines().count(), 1, "{args:?}: {out}");
    }
}
