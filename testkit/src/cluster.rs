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
    /// Its local gRPC API (`LocalAgent`).
    pub grpc: SocketAddr,
    /// Its local HTTP twin.
    pub http: SocketAddr,
    /// The arguments it was started with, to start it again.
    pub args: Vec<String>,
}

impl Agent {
    /// Starts the agent again with the same arguments (killing the old process if alive).
    pub fn respawn(&mut self) {
        self.proc.kill9();
        self.proc = Proc::spawn("dtable-agent", &self.args, &[]);
    }
}

/// Starts `dtable-agent` for `node_id` beside the server at `local_node_url`, with lease TTL
/// `ttl` seconds and its local APIs on free ports; `extra` flags are added. Health probes run
/// every 200 ms so tests stay quick.
pub fn spawn_agent(
    etcd: &Etcd,
    node_id: &str,
    ttl: u32,
    local_node_url: &str,
    extra: &[&str],
) -> Agent {
    let ports = free_ports(2);
    let grpc: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
    let http: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
    spawn_agent_on(
        &etcd.endpoints_arg(),
        node_id,
        ttl,
        local_node_url,
        grpc,
        http,
        extra,
    )
}

fn spawn_agent_on(
    etcd: &str,
    node_id: &str,
    ttl: u32,
    local_node_url: &str,
    grpc: SocketAddr,
    http: SocketAddr,
    extra: &[&str],
) -> Agent {
    let mut args: Vec<String> = [
        "--etcd",
        etcd,
        "--node-id",
        node_id,
        "--node-url",
        &format!("https://cloud.example/{node_id}/"),
        "--local-node-url",
        local_node_url,
        "--lease-ttl",
        &ttl.to_string(),
        "--grpc-listen",
        &grpc.to_string(),
        "--http-listen",
        &http.to_string(),
        "--health-interval",
        "200ms",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Agent {
        proc: Proc::spawn("dtable-agent", &args, &[]),
        node_id: node_id.to_owned(),
        grpc,
        http,
        args,
    }
}

/// Shared scratch space of a set of servers: the storage directory all sims share (like
/// SeaTable's file storage) and one event log per sim.
pub struct Farm {
    dir: tempfile::TempDir,
}

impl Farm {
    /// A fresh, empty farm.
    pub fn new() -> Farm {
        let dir = crate::scratch::scratch_dir("dtable-farm");
        std::fs::create_dir_all(dir.path().join("storage")).expect("storage dir");
        std::fs::create_dir_all(dir.path().join("events")).expect("events dir");
        Farm { dir }
    }

    /// The shared storage directory.
    pub fn storage(&self) -> std::path::PathBuf {
        self.dir.path().join("storage")
    }

    /// The event log of `node_id`.
    pub fn event_log(&self, node_id: &str) -> std::path::PathBuf {
        self.dir
            .path()
            .join("events")
            .join(format!("{node_id}.jsonl"))
    }

    /// Every event log written so far.
    pub fn event_logs(&self) -> Vec<std::path::PathBuf> {
        let mut logs: Vec<_> = std::fs::read_dir(self.dir.path().join("events"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        logs.sort();
        logs
    }
}

impl Default for Farm {
    fn default() -> Self {
        Farm::new()
    }
}

/// A managed server: a sim that follows its agent's stream, and the agent.
pub struct Server {
    /// The stand-in dtable-server.
    pub sim: Sim,
    /// Its agent.
    pub agent: Agent,
}

impl Server {
    /// The node id.
    pub fn node_id(&self) -> &str {
        &self.sim.node_id
    }
}

/// Starts a sim in agent mode (storage and event log in `farm`) and its agent with lease TTL
/// `ttl`; `agent_extra` flags go to the agent.
pub fn spawn_server(
    etcd: &Etcd,
    farm: &Farm,
    node_id: &str,
    ttl: u32,
    agent_extra: &[&str],
) -> Server {
    spawn_server_via(&etcd.endpoints_arg(), farm, node_id, ttl, agent_extra)
}

/// Like [`spawn_server`], with the agent reaching etcd at `agent_etcd` (for instance through a
/// [`Relay`](crate::Relay) a test can cut).
pub fn spawn_server_via(
    agent_etcd: &str,
    farm: &Farm,
    node_id: &str,
    ttl: u32,
    agent_extra: &[&str],
) -> Server {
    let ports = free_ports(3);
    let agent_grpc: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
    let sim_addr: SocketAddr = ([127, 0, 0, 1], ports[2]).into();
    let sim_args: Vec<String> = [
        "--listen",
        &sim_addr.to_string(),
        "--node-id",
        node_id,
        "--agent",
        &format!("http://{agent_grpc}"),
        "--storage-dir",
        farm.storage().to_str().expect("utf-8 path"),
        "--event-log",
        farm.event_log(node_id).to_str().expect("utf-8 path"),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let sim = Sim {
        proc: Proc::spawn("dtable-server-sim", &sim_args, &[]),
        node_id: node_id.to_owned(),
        addr: sim_addr,
        args: sim_args,
        event_log: Some(farm.event_log(node_id)),
    };
    let agent_http: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
    let agent = spawn_agent_on(
        agent_etcd,
        node_id,
        ttl,
        &sim.url(),
        agent_grpc,
        agent_http,
        agent_extra,
    );
    Server { sim, agent }
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
    /// The arguments it was started with.
    pub args: Vec<String>,
}

impl ControlPlane {
    /// Starts the instance again with the same arguments (killing the old process if alive).
    pub fn respawn(&mut self) {
        self.proc.kill9();
        self.proc = Proc::spawn("dtable-controlplane", &self.args, &[]);
    }
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
        args,
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

/// Whether the cluster has settled over `nodes`: all 256 buckets assigned, to exactly these
/// nodes, each holding floor or ceil of an equal share, and no move in flight (a move may
/// still land while the counts already look balanced).
pub async fn balanced_over(client: &Client, nodes: &[&str]) -> bool {
    let a = read_assignment(client).await;
    if a.len() != 256 || nodes.is_empty() || moves_in_flight(client).await > 0 {
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

/// How many `dtable-cluster/moves/<xx>` keys there are.
pub async fn moves_in_flight(client: &Client) -> i64 {
    let mut c = client.clone();
    c.get(
        "dtable-cluster/moves/",
        Some(GetOptions::new().with_prefix().with_count_only()),
    )
    .await
    .expect("count dtable-cluster/moves/ keys")
    .count()
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
    /// The arguments it was started with.
    pub args: Vec<String>,
    /// Its event log, if it keeps one.
    pub event_log: Option<std::path::PathBuf>,
}

impl Sim {
    /// Starts `dtable-server-sim` as `node_id` on a free port, with `flags` after its
    /// `--listen` and `--node-id`.
    pub fn start(node_id: &str, flags: &[&str]) -> Sim {
        let addr: SocketAddr = ([127, 0, 0, 1], free_ports(1)[0]).into();
        let mut args = vec![
            "--listen".to_owned(),
            addr.to_string(),
            "--node-id".to_owned(),
            node_id.to_owned(),
        ];
        args.extend(flags.iter().map(|s| (*s).to_owned()));
        Sim {
            proc: Proc::spawn("dtable-server-sim", &args, &[]),
            node_id: node_id.to_owned(),
            addr,
            args,
            event_log: None,
        }
    }

    /// kill -9. A killed sim logs nothing more, so its event log is closed at the moment it
    /// was reaped: it served nothing after that.
    pub fn kill9(&mut self) {
        let was_running = self.proc.try_wait().is_none();
        self.proc.kill9();
        if let (true, Some(log)) = (was_running, &self.event_log) {
            crate::checker::mark_dead(log, crate::events::now_ns()).expect("close the event log");
        }
    }

    /// Starts the sim again with the same arguments (killing the old process if alive).
    pub fn respawn(&mut self) {
        self.kill9();
        self.proc = Proc::spawn("dtable-server-sim", &self.args, &[]);
    }

    /// Its `local_node_url`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

/// Starts `dtable-server-sim` as `node_id` on a free port, following the assignment in `etcd`.
pub fn spawn_sim(etcd: &Etcd, node_id: &str, extra: &[&str]) -> Sim {
    let endpoints = etcd.endpoints_arg();
    let mut flags = vec!["--etcd", endpoints.as_str()];
    flags.extend_from_slice(extra);
    Sim::start(node_id, &flags)
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
        proc: Proc::spawn("dtable-proxy", &args, &[]),
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
        // As a managed agent registers it: its buckets move by handoff.
        "agent": "managed",
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

/// Starts `dtable-agent --mode seatable` beside the self-registering server `node_id` whose
/// local URL is `local_node_url`: it registers nothing, and revokes the server's own lease once
/// the server is judged dead. Probes run every 200 ms; `extra` flags are added.
pub fn spawn_seatable_agent(
    etcd: &Etcd,
    node_id: &str,
    local_node_url: &str,
    extra: &[&str],
) -> Agent {
    let mut flags = vec!["--mode", "seatable"];
    flags.extend_from_slice(extra);
    spawn_agent(etcd, node_id, 90, local_node_url, &flags)
}

/// Starts `dtable-agent --role slave` beside the slave `node_id` at `local_node_url`, with
/// lease TTL `ttl` seconds: it registers the slave under `dtable-cluster/slaves/<node_id>`
/// while the slave is healthy. Probes run every 200 ms; `extra` flags are added.
pub fn spawn_slave_agent(
    etcd: &Etcd,
    node_id: &str,
    ttl: u32,
    local_node_url: &str,
    extra: &[&str],
) -> Agent {
    let mut flags = vec!["--role", "slave"];
    flags.extend_from_slice(extra);
    spawn_agent(etcd, node_id, ttl, local_node_url, &flags)
}

/// Starts `dtable-server-sim --self-register` as `node_id` on a free port: it follows the
/// assignment in `etcd` and registers itself at `<node_id>` under its own lease of `ttl`
/// seconds, as SeaTable's enterprise dtable-server does. `extra` flags are added.
pub fn spawn_self_registering_sim(etcd: &Etcd, node_id: &str, ttl: u32, extra: &[&str]) -> Sim {
    let ttl = ttl.to_string();
    let mut flags = vec!["--self-register", "--lease-ttl", ttl.as_str()];
    flags.extend_from_slice(extra);
    spawn_sim(etcd, node_id, &flags)
}

/// Starts `dtable-server-sim --role slave` as `node_id` on a free port, loading bases from
/// `proxy_url` (`GET <proxy_url>/dtables/<uuid>`). `extra` flags are added.
pub fn spawn_slave_sim(node_id: &str, proxy_url: &str, extra: &[&str]) -> Sim {
    let mut flags = vec!["--role", "slave", "--proxy-url", proxy_url];
    flags.extend_from_slice(extra);
    Sim::start(node_id, &flags)
}

/// One key's value and lease, as etcd holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Registered {
    /// The value, parsed as JSON (`Null` if it is not JSON).
    pub value: serde_json::Value,
    /// The lease the key is attached to, 0 for none.
    pub lease: i64,
    /// The revision the key was created at.
    pub create_revision: i64,
}

/// The key `key` (a node registration, say) with its lease, if present.
pub async fn read_registration(client: &Client, key: &str) -> Option<Registered> {
    let resp = client.clone().get(key, None).await.expect("read a key");
    resp.kvs().first().map(|kv| Registered {
        value: serde_json::from_slice(kv.value()).unwrap_or(serde_json::Value::Null),
        lease: kv.lease(),
        create_revision: kv.create_revision(),
    })
}

/// The slave registrations under `dtable-cluster/slaves/`: node id → record and lease.
pub async fn read_slaves(client: &Client) -> BTreeMap<String, Registered> {
    let prefix = dtable_core::KeyLayout::default().slaves_prefix();
    let resp = client
        .clone()
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .expect("read dtable-cluster/slaves/ keys");
    resp.kvs()
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key());
            let registered = Registered {
                value: serde_json::from_slice(kv.value()).unwrap_or(serde_json::Value::Null),
                lease: kv.lease(),
                create_revision: kv.create_revision(),
            };
            (key.trim_start_matches(&prefix).to_owned(), registered)
        })
        .collect()
}
