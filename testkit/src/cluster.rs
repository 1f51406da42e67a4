//! Scenario helpers: start agents and control planes as real processes against a test etcd,
//! and read the assignment the way SeaTable's dtable-web does.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use etcd_client::{Client, GetOptions};

use crate::etcd::Etcd;
use crate::process::Proc;
use crate::wait::free_ports;

/// A `dtable-agent` process and what it registered as.
pub struct Agent {
    /// The process.
    pub proc: Proc,
    /// Its node id.
    pub node_id: String,
}

/// Starts `dtable-agent` for `node_id` with lease TTL `ttl` seconds; `extra` flags are added.
pub fn spawn_agent(etcd: &Etcd, node_id: &str, ttl: u32, extra: &[&str]) -> Agent {
    let mut args = vec![
        "--etcd".to_owned(),
        etcd.endpoints_arg(),
        "--node-id".to_owned(),
        node_id.to_owned(),
        "--node-url".to_owned(),
        format!("https://cloud.example/{node_id}/"),
        "--local-node-url".to_owned(),
        format!("http://127.0.0.1:1/{node_id}/"),
        "--lease-ttl".to_owned(),
        ttl.to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Agent {
        proc: Proc::spawn("dtable-agent", &args, &[]),
        node_id: node_id.to_owned(),
    }
}

/// A `dtable-controlplane` process and its listeners.
pub struct ControlPlane {
    /// The process.
    pub proc: Proc,
    /// Its instance name.
    pub name: String,
    /// HTTP API address.
    pub http: SocketAddr,
    /// gRPC API address.
    pub grpc: SocketAddr,
}

/// Starts `dtable-controlplane` named `name` with election TTL `election_ttl` seconds, on free
/// loopback ports; `extra` flags are added.
pub fn spawn_controlplane(
    etcd: &Etcd,
    name: &str,
    election_ttl: u32,
    extra: &[&str],
) -> ControlPlane {
    let ports = free_ports(2);
    let http: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
    let grpc: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
    let mut args = vec![
        "--etcd".to_owned(),
        etcd.endpoints_arg(),
        "--name".to_owned(),
        name.to_owned(),
        "--election-ttl".to_owned(),
        election_ttl.to_string(),
        "--http-listen".to_owned(),
        http.to_string(),
        "--grpc-listen".to_owned(),
        grpc.to_string(),
        "--repair-interval".to_owned(),
        "1".to_owned(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    ControlPlane {
        proc: Proc::spawn("dtable-controlplane", &args, &[]),
        name: name.to_owned(),
        http,
        grpc,
    }
}

/// The `assign-<xx>` keys as dtable-web reads them: bucket ("00".."ff") → value.
pub async fn read_assignment(client: &Client) -> BTreeMap<String, String> {
    let mut c = client.clone();
    let resp = c
        .get("assign-", Some(GetOptions::new().with_prefix()))
        .await
        .expect("read assign- keys");
    resp.kvs()
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key());
            (
                key.trim_start_matches("assign-").to_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect()
}

/// How many buckets each node holds, from the `assign-<xx>` keys.
pub async fn bucket_counts(client: &Client) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for node in read_assignment(client).await.into_values() {
        *counts.entry(node).or_default() += 1;
    }
    counts
}

/// Whether all 256 buckets are assigned, to exactly the nodes in `nodes`, each holding floor
/// or ceil of an equal share.
pub async fn balanced_over(client: &Client, nodes: &[&str]) -> bool {
    let a = read_assignment(client).await;
    if a.len() != 256 || nodes.is_empty() {
        return false;
    }
    let counts = bucket_counts(client).await;
    let floor = 256 / nodes.len();
    let ceil = floor + usize::from(256 % nodes.len() != 0);
    counts.len() == nodes.len()
        && nodes
            .iter()
            .all(|n| counts.get(*n).is_some_and(|c| (floor..=ceil).contains(c)))
}

/// The `dtable-server-` registrations as dtable-web reads them: key → JSON.
pub async fn read_nodes(client: &Client) -> BTreeMap<String, serde_json::Value> {
    let mut c = client.clone();
    let resp = c
        .get("dtable-server-", Some(GetOptions::new().with_prefix()))
        .await
        .expect("read dtable-server- keys");
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                serde_json::from_slice(kv.value()).unwrap_or(serde_json::Value::Null),
            )
        })
        .collect()
}

/// A `dtable-server-sim` process.
pub struct Sim {
    /// The process.
    pub proc: Proc,
    /// Its node id.
    pub node_id: String,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Sim {
    /// Its `local_node_url`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

/// Starts `dtable-server-sim` as `node_id` on a free port, following the assignment in `etcd`.
pub fn spawn_sim(etcd: &Etcd, node_id: &str, extra: &[&str]) -> Sim {
    let addr: SocketAddr = ([127, 0, 0, 1], free_ports(1)[0]).into();
    let mut args = vec![
        "--listen".to_owned(),
        addr.to_string(),
        "--node-id".to_owned(),
        node_id.to_owned(),
        "--etcd".to_owned(),
        etcd.endpoints_arg(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Sim {
        proc: Proc::spawn("dtable-server-sim", &args, &[]),
        node_id: node_id.to_owned(),
        addr,
    }
}

/// A `dtable-proxy` process and its listeners.
pub struct Proxy {
    /// The process.
    pub proc: Proc,
    /// The routing listener.
    pub addr: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
}

/// Starts `dtable-proxy` on free loopback ports; `extra` flags are added.
pub fn spawn_proxy(etcd: &Etcd, extra: &[&str]) -> Proxy {
    let ports = free_ports(2);
    let addr: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
    let admin: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
    let mut args = vec![
        "--etcd".to_owned(),
        etcd.endpoints_arg(),
        "--listen".to_owned(),
        addr.to_string(),
        "--admin-listen".to_owned(),
        admin.to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Proxy {
        proc: Proc::spawn(
            "dtable-proxy",
            &args,
            &[(
                "RUST_LOG".into(),
                "debug,h2=info,hyper=info,hyper_util=debug".into(),
            )],
        ),
        addr,
        admin,
    }
}

/// Registers a node record by hand (no lease), as an agent would.
pub async fn put_node(client: &Client, node_id: &str, local_node_url: &str) {
    let record = serde_json::json!({
        "node_id": node_id,
        "node_url": format!("https://cloud.example/{node_id}/"),
        "local_node_url": local_node_url,
        "role": "server",
        "state": "active",
        "weight": 1,
    });
    client
        .clone()
        .put(node_id, record.to_string(), None)
        .await
        .expect("put node record");
}

/// Writes `assign-<bucket>` = `node_id` and returns the key's new mod_revision (the epoch).
pub async fn put_assign(client: &Client, bucket: u8, node_id: &str) -> i64 {
    let resp = client
        .clone()
        .put(format!("assign-{bucket:02x}"), node_id, None)
        .await
        .expect("put assign key");
    resp.header().expect("header").revision()
}
