//! The control-plane API against a real etcd, real agents and sims: stable error codes, the
//! status document, the event stream and `WatchAssignment`; plus small clients the intent
//! scenarios share (a raw HTTP POST, an SSE reader, a gRPC client).

use std::net::SocketAddr;
use std::time::Duration;

use dtable_proto::v1 as pb;
use dtable_proto::v1::control_plane_client::ControlPlaneClient;
use dtable_testkit::cluster::{
    ControlPlane, Farm, balanced_over, put_node, read_assignment, read_slaves, spawn_controlplane,
    spawn_server, spawn_slave_agent, spawn_slave_sim,
};
use dtable_testkit::{Etcd, http, wait_until};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tonic::transport::Channel;

use crate::{SETTLE, STARTUP};

/// `GET path` as JSON: the status and the body.
pub async fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let resp = http::get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let body = serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("GET {path}: {e}: {}", resp.text()));
    (resp.status.as_u16(), body)
}

/// `POST path` with a JSON `body` on a fresh connection (the testkit client builds its bodies
/// with a crate this package does not depend on): the status and the JSON answer.
pub async fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, Value) {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("POST {path}: no answer within 10 s"))
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("POST {path}: incomplete answer {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("POST {path}: bad status line in {head:?}"));
    let json = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("POST {path} answered {status} {body:?}: {e}"));
    (status, json)
}

/// A gRPC client of `cp`, once it listens.
pub async fn grpc(cp: &ControlPlane) -> ControlPlaneClient<Channel> {
    let url = format!("http://{}", cp.grpc);
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        match ControlPlaneClient::connect(url.clone()).await {
            Ok(c) => return c,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                panic!("gRPC API of {} never answered: {e}", cp.name)
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until `cp` answers with a loaded view.
pub async fn wait_ready(cp: &ControlPlane) {
    wait_until("the control plane's view loaded", SETTLE, || async {
        http::get(cp.http, "/api/v1/assignment")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
}

/// `GET /api/v1/events` read line by line. HTTP/1.0, so the stream is not chunked.
pub struct Sse {
    lines: Lines<BufReader<TcpStream>>,
}

impl Sse {
    /// Opens the stream and checks the answer's status and type.
    pub async fn open(addr: SocketAddr) -> Sse {
        let mut s = TcpStream::connect(addr).await.expect("connect for SSE");
        let request = format!(
            "GET /api/v1/events HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await.expect("send");
        let mut lines = BufReader::new(s).lines();
        let mut head = Vec::new();
        loop {
            let line = timeout(Duration::from_secs(10), lines.next_line())
                .await
                .expect("SSE headers in time")
                .expect("read")
                .expect("headers before the end");
            if line.trim().is_empty() {
                break;
            }
            head.push(line.to_ascii_lowercase());
        }
        assert!(head[0].contains(" 200"), "{head:?}");
        assert!(
            head.iter()
                .any(|h| h.starts_with("content-type: text/event-stream")),
            "{head:?}"
        );
        Sse { lines }
    }

    /// The next `data:` event as JSON.
    pub async fn next(&mut self) -> Value {
        loop {
            let line = timeout(SETTLE, self.lines.next_line())
                .await
                .expect("an event in time")
                .expect("read")
                .expect("the stream stays open");
            if let Some(data) = line.strip_prefix("data: ") {
                return serde_json::from_str(data).expect("event data is JSON");
            }
        }
    }
}

fn code(v: &Value) -> &str {
    v["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn errors_have_stable_codes_and_change_nothing() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    put_node(&client, "dtable-server-x", "http://127.0.0.1:1/").await;
    let cp = spawn_controlplane(&etcd, "cp1", 3, &[]);
    wait_ready(&cp).await;

    let (status, body) = get_json(cp.http, "/api/v1/lookup/not-a-uuid").await;
    assert_eq!((status, code(&body)), (400, "bad_uuid"), "{body}");
    assert!(body["error"].as_str().unwrap().contains("not-a-uuid"));
    let (status, body) = get_json(
        cp.http,
        "/api/v1/lookup/7C000000-0000-0000-0000-000000000000",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["bucket"], "7c");

    for action in ["cordon", "drain", "uncordon"] {
        let (status, body) = post(
            cp.http,
            &format!("/api/v1/nodes/dtable-server-nope/{action}"),
            "",
        )
        .await;
        assert_eq!(
            (status, code(&body)),
            (404, "unknown_node"),
            "{action}: {body}"
        );
    }
    let (status, body) = post(cp.http, "/api/v1/nodes/nope/cordon", "").await;
    assert_eq!((status, code(&body)), (400, "bad_request"), "{body}");
    let (status, body) = post(cp.http, "/api/v1/rebalance", r#"{"dryrun":true}"#).await;
    assert_eq!((status, code(&body)), (400, "bad_request"), "{body}");
    let (status, body) = post(cp.http, "/api/v1/rebalance?dry_run=perhaps", "").await;
    assert_eq!((status, code(&body)), (400, "bad_request"), "{body}");

    let mut g = grpc(&cp).await;
    let err = g
        .cordon(pb::NodeRequest {
            node_id: "dtable-server-nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    assert!(err.message().starts_with("unknown_node"), "{err}");
    let err = g
        .lookup(pb::LookupRequest {
            dtable_uuid: "xyz".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

    // None of the refused requests wrote anything.
    let mut kv = client.clone();
    let ours = kv
        .get(
            "dtable-cluster/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let written: Vec<&str> = ours
        .kvs()
        .iter()
        .filter_map(|kv| kv.key_str().ok())
        .filter(|k| !k.starts_with("dtable-cluster/election/"))
        .collect();
    assert!(written.is_empty(), "{written:?}");

    // A cordon of a node that then leaves can still be lifted, once.
    let (status, body) = post(cp.http, "/api/v1/nodes/dtable-server-x/cordon", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["key"], "dtable-cluster/cordon/dtable-server-x");
    let stored = kv
        .get("dtable-cluster/cordon/dtable-server-x", None)
        .await
        .unwrap();
    let stored: Value = serde_json::from_slice(stored.kvs()[0].value()).unwrap();
    assert_eq!(
        (stored["mode"].as_str(), stored["by"].as_str()),
        (Some("cordon"), Some("cp1"))
    );
    // The same intent again writes nothing.
    wait_until("the cordon in the view", SETTLE, || async {
        let (_, n) = get_json(cp.http, "/api/v1/nodes").await;
        n["nodes"][0]["cordoned"] == true
    })
    .await;
    let (status, again) = post(cp.http, "/api/v1/nodes/dtable-server-x/cordon", "").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["revision"], body["revision"]);
    assert!(
        again["message"].as_str().unwrap().starts_with("already so"),
        "{again}"
    );
    kv.delete("dtable-server-x", None).await.unwrap();
    wait_until("the node gone from the view", SETTLE, || async {
        let (_, nodes) = get_json(cp.http, "/api/v1/nodes").await;
        nodes["nodes"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    let (status, body) = post(cp.http, "/api/v1/nodes/dtable-server-x/uncordon", "").await;
    assert_eq!(status, 200, "{body}");
    let gone = kv
        .get("dtable-cluster/cordon/dtable-server-x", None)
        .await
        .unwrap();
    assert!(gone.kvs().is_empty(), "the cordon key is still there");
    wait_until("the view without the cordon", SETTLE, || async {
        let (status, _) = post(cp.http, "/api/v1/nodes/dtable-server-x/uncordon", "").await;
        status == 404
    })
    .await;
}

#[tokio::test]
async fn status_has_256_buckets_and_the_event_stream_opens_with_a_snapshot() {
    let etcd = Etcd::start().await;
    let farm = Farm::new();
    let client = etcd.client().await;
    let cp = spawn_controlplane(&etcd, "cp1", 3, &[]);
    let nodes = ["dtable-server-a", "dtable-server-b"];
    let _servers: Vec<_> = nodes
        .iter()
        .map(|n| spawn_server(&etcd, &farm, n, 10, &[]))
        .collect();
    wait_until("balanced over two", STARTUP, || {
        balanced_over(&client, &nodes)
    })
    .await;
    wait_until("cp1 leads, as the status says", SETTLE, || async {
        let (status, s) = get_json(cp.http, "/api/v1/status").await;
        status == 200 && s["leader"] == "cp1" && s["this_instance_leads"] == true
    })
    .await;

    let (_, s) = get_json(cp.http, "/api/v1/status").await;
    assert_eq!(s["instance"], "cp1");
    assert!(s["revision"].as_i64().unwrap() > 0);
    let buckets = s["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 256);
    let assignment = read_assignment(&client).await;
    for b in buckets {
        let bucket = b["bucket"].as_str().unwrap();
        assert_eq!(
            b["node_id"].as_str(),
            assignment.get(bucket).map(String::as_str)
        );
        assert!(b["epoch"].as_i64().unwrap() > 0);
        assert_eq!(b["moving"], false);
    }
    let listed = s["nodes"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    for n in listed {
        let ttl = n["lease_ttl_seconds"].as_i64().unwrap();
        assert!((1..=10).contains(&ttl), "lease TTL {ttl} of {n}");
        assert_ne!(n["lease_id"].as_i64().unwrap(), 0);
        assert_eq!(
            (n["role"].as_str(), n["healthy"].as_bool()),
            (Some("server"), Some(true))
        );
        assert_eq!(
            (n["cordoned"].as_bool(), n["draining"].as_bool()),
            (Some(false), Some(false))
        );
        assert!((127..=129).contains(&n["bucket_count"].as_u64().unwrap()));
    }
    assert!(s["moves"].as_array().unwrap().is_empty());
    let events = s["recent_events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .all(|e| e["at"].is_string() && e["text"].is_string())
    );

    let mut sse = Sse::open(cp.http).await;
    let first = sse.next().await;
    assert_eq!(first["kind"], "snapshot", "{first}");
    assert_eq!(first["buckets"].as_array().unwrap().len(), 256);
    assert_eq!(first["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(first["instance"], "cp1");

    let (status, body) = post(cp.http, "/api/v1/nodes/dtable-server-b/cordon", "").await;
    assert_eq!(status, 200, "{body}");
    let seen = loop {
        let e = sse.next().await;
        assert!(e["revision"].as_i64().unwrap() > first["revision"].as_i64().unwrap());
        if e["kind"] == "node" {
            break e;
        }
    };
    assert_eq!(
        (seen["change"].as_str(), seen["node_id"].as_str()),
        (Some("changed"), Some("dtable-server-b"))
    );
    assert_eq!(seen["node"]["cordoned"], true);
    assert!(seen["text"].as_str().unwrap().contains("cordon"), "{seen}");
    // A cordon moves nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(read_assignment(&client).await, assignment);
}

#[tokio::test]
async fn watch_assignment_yields_a_snapshot_then_bucket_changes_when_a_node_leaves() {
    let etcd = Etcd::start().await;
    let farm = Farm::new();
    let client = etcd.client().await;
    let cp = spawn_controlplane(&etcd, "cp1", 3, &[]);
    let nodes = ["dtable-server-a", "dtable-server-b"];
    let mut servers: Vec<_> = nodes
        .iter()
        .map(|n| spawn_server(&etcd, &farm, n, 3, &[]))
        .collect();
    wait_until("balanced over two", STARTUP, || {
        balanced_over(&client, &nodes)
    })
    .await;
    let held_by_b = read_assignment(&client)
        .await
        .values()
        .filter(|n| *n == nodes[1])
        .count();

    let mut g = grpc(&cp).await;
    let mut stream = g
        .watch_assignment(pb::WatchAssignmentRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = timeout(SETTLE, stream.message())
        .await
        .expect("a snapshot in time")
        .unwrap()
        .unwrap();
    let Some(pb::cluster_event::Event::Snapshot(snap)) = first.event else {
        panic!("the first message is not a snapshot: {first:?}");
    };
    assert_eq!(snap.assignment.as_ref().unwrap().buckets.len(), 256);
    assert_eq!(snap.nodes.len(), 2);
    assert!(first.revision > 0);

    servers[1].agent.proc.kill9();
    let mut left = false;
    let mut taken = 0;
    while !(left && taken == held_by_b) {
        let msg = timeout(SETTLE, stream.message())
            .await
            .expect("changes after the node left")
            .unwrap()
            .expect("the stream stays open");
        assert!(msg.revision > first.revision);
        match msg.event {
            Some(pb::cluster_event::Event::Node(n)) if n.change == "left" => {
                assert_eq!(n.node_id, nodes[1]);
                assert!(n.node.is_none());
                left = true;
            }
            Some(pb::cluster_event::Event::Bucket(b)) => {
                assert_eq!(
                    (b.from.as_str(), b.to.as_str()),
                    (nodes[1], nodes[0]),
                    "{b:?}"
                );
                assert!(b.epoch > first.revision);
                taken += 1;
            }
            Some(pb::cluster_event::Event::Snapshot(_)) => panic!("an unexpected snapshot"),
            _ => {}
        }
    }
    let moves = g
        .list_moves(pb::ListMovesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        moves.moves.is_empty(),
        "a failover is not a planned move: {moves:?}"
    );
}

#[tokio::test]
async fn slaves_are_listed_with_role_slave_and_refuse_cordons() {
    let etcd = Etcd::start().await;
    let farm = Farm::new();
    let client = etcd.client().await;
    let cp = spawn_controlplane(&etcd, "cp1", 3, &[]);
    let server = spawn_server(&etcd, &farm, "dtable-server-a", 10, &[]);
    // A slave loads bases through a proxy; this one is never asked for a base.
    let mut slave = spawn_slave_sim("dtable-server-slave-1", "http://127.0.0.1:1", &[]);
    let _agent = spawn_slave_agent(&etcd, &slave.node_id, 10, &slave.url(), &[]);
    let owners = [server.node_id()];
    wait_until("balanced over the server", STARTUP, || {
        balanced_over(&client, &owners)
    })
    .await;
    wait_until("the slave listed", SETTLE, || async {
        let (status, body) = get_json(cp.http, "/api/v1/nodes").await;
        status == 200 && body["nodes"].as_array().is_some_and(|n| n.len() == 2)
    })
    .await;

    // Servers first, then slaves.
    let (_, body) = get_json(cp.http, "/api/v1/nodes").await;
    let listed = body["nodes"].as_array().unwrap();
    assert_eq!(listed[0]["node_id"], server.node_id());
    assert_eq!(listed[0]["role"], "server");
    let s = &listed[1];
    assert_eq!(s["node_id"], slave.node_id.as_str());
    assert_eq!(
        (s["role"].as_str(), s["healthy"].as_bool()),
        (Some("slave"), Some(true))
    );
    assert_eq!(s["bucket_count"], 0);
    assert_eq!(s["local_node_url"], slave.url());
    assert_eq!(
        (s["cordoned"].as_bool(), s["draining"].as_bool()),
        (Some(false), Some(false))
    );
    assert_ne!(s["lease_id"].as_i64().unwrap(), 0);
    let ttl = s["lease_ttl_seconds"].as_i64().unwrap();
    assert!((1..=10).contains(&ttl), "lease TTL {ttl} of {s}");
    let (_, status) = get_json(cp.http, "/api/v1/status").await;
    assert_eq!(status["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(status["nodes"][1]["role"], "slave");
    assert!(
        status["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["node_id"] == server.node_id()),
        "no bucket names the slave"
    );
    let mut g = grpc(&cp).await;
    let nodes = g
        .list_nodes(pb::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    let roles: Vec<(&str, &str, bool)> = nodes
        .iter()
        .map(|n| (n.node_id.as_str(), n.role.as_str(), n.healthy))
        .collect();
    assert_eq!(
        roles,
        [
            (server.node_id(), "server", true),
            (slave.node_id.as_str(), "slave", true)
        ]
    );

    // A slave owns no buckets: no cordon, drain or uncordon, over HTTP or gRPC.
    for action in ["cordon", "drain", "uncordon"] {
        let path = format!("/api/v1/nodes/{}/{action}", slave.node_id);
        let (status, body) = post(cp.http, &path, "").await;
        assert_eq!(
            (status, code(&body)),
            (400, "bad_request"),
            "{action}: {body}"
        );
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("slaves own no buckets"), "{error}");
    }
    let err = g
        .drain(pb::NodeRequest {
            node_id: slave.node_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let cordons = client
        .clone()
        .get(
            "dtable-cluster/cordon/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert!(cordons.kvs().is_empty(), "a refused intent wrote a cordon");

    // The slave dies: its agent revokes the registration, and the stream says so.
    let mut sse = Sse::open(cp.http).await;
    assert_eq!(sse.next().await["kind"], "snapshot");
    slave.kill9();
    let left = loop {
        let e = sse.next().await;
        if e["kind"] == "node" {
            break e;
        }
    };
    assert_eq!(
        (
            left["change"].as_str(),
            left["node_id"].as_str(),
            left["role"].as_str()
        ),
        (Some("left"), Some(slave.node_id.as_str()), Some("slave"))
    );
    assert_eq!(
        left["text"].as_str(),
        Some(format!("slave {} left", slave.node_id).as_str())
    );
    let (_, body) = get_json(cp.http, "/api/v1/nodes").await;
    assert_eq!(body["nodes"].as_array().unwrap().len(), 1);
    assert!(read_slaves(&client).await.is_empty());
}
