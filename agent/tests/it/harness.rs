//! A whole managed cluster for fault scenarios: etcd, a control plane, sims with their agents,
//! and a proxy; plus a writer that keeps writing rows through the proxy and remembers what was
//! acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dtable_testkit::cluster::{
    ControlPlane, Farm, Proxy, Server, balanced_over, read_nodes, spawn_controlplane, spawn_proxy,
    spawn_server,
};
use dtable_testkit::{Etcd, http, wait_until};

/// Generous bound for settling on a loaded two-core machine.
pub const SETTLE: Duration = Duration::from_secs(30);

/// Bound for the buckets to settle over a set of servers. Generous: on a loaded box a server
/// whose health probes time out during start-up is fenced, registers again and then waits
/// out the control plane's rejoin hold (30 s) before it is given buckets.
pub const BALANCE: Duration = Duration::from_secs(90);

/// A running cluster.
pub struct Cluster {
    pub etcd: Etcd,
    pub client: etcd_client::Client,
    pub farm: Farm,
    pub cp: ControlPlane,
    pub servers: Vec<Server>,
    pub proxy: Proxy,
}

impl Cluster {
    /// `n` servers with lease TTL `ttl`; `agent_flags` and `cp_flags` are added.
    pub async fn start(n: usize, ttl: u32, agent_flags: &[&str], cp_flags: &[&str]) -> Cluster {
        let etcd = Etcd::start().await;
        let client = etcd.client().await;
        let farm = Farm::new();
        let mut flags = vec!["--rejoin-hold", "2s", "--release-timeout", "10s"];
        flags.extend_from_slice(cp_flags);
        let cp = spawn_controlplane(&etcd, "cp1", 3, &flags);
        let servers: Vec<Server> = (0..n)
            .map(|i| {
                spawn_server(
                    &etcd,
                    &farm,
                    &format!("dtable-server-{i}"),
                    ttl,
                    agent_flags,
                )
            })
            .collect();
        let proxy = spawn_proxy(&etcd, &["--hold-timeout", "30s"]);
        let c = Cluster {
            etcd,
            client,
            farm,
            cp,
            servers,
            proxy,
        };
        // With --auto-rebalance=false the first server to register may get every bucket
        // before the others come: once all are registered, one rebalance request (an intent;
        // the leader clears it when balanced) spreads them either way.
        wait_until("every server registered", BALANCE, || async {
            read_nodes(&c.client).await.len() == n
        })
        .await;
        c.client
            .clone()
            .put("dtable-cluster/requests/rebalance", "{}", None)
            .await
            .expect("write the rebalance request");
        c.wait_balanced(&(0..n).collect::<Vec<_>>()).await;
        wait_until("the rebalance request carried out", BALANCE, || async {
            c.client
                .clone()
                .get("dtable-cluster/requests/rebalance", None)
                .await
                .is_ok_and(|r| r.kvs().is_empty())
        })
        .await;
        let admin = c.proxy.admin;
        wait_until("proxy ready", SETTLE, || async move {
            http::get(admin, "/readyz")
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await;
        c
    }

    /// Node id of server `i`.
    pub fn node(&self, i: usize) -> String {
        format!("dtable-server-{i}")
    }

    /// Waits until the buckets are balanced over exactly the servers `idx`.
    pub async fn wait_balanced(&self, idx: &[usize]) {
        let names: Vec<String> = idx.iter().map(|i| self.node(*i)).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        wait_until("balanced assignment", BALANCE, || {
            balanced_over(&self.client, &refs)
        })
        .await;
    }

    /// Runs the checker over every sim's event log and the shared storage.
    pub fn check(&self) -> dtable_testkit::checker::Report {
        match dtable_testkit::checker::check(&self.farm.event_logs(), &self.farm.storage()) {
            Ok(report) => report,
            Err(violations) => panic!("invariants broken:\n{violations:#?}"),
        }
    }
}

/// A base UUID in `bucket`, varied by `n`.
pub fn uuid_in_bucket(bucket: u8, n: u64) -> String {
    format!(
        "{bucket:02x}{:030x}",
        (n.wrapping_mul(0x9e37_79b9_7f4a_7c15) as u128) | 1
    )
}

/// Keeps writing rows through the proxy to `bases`, one request at a time, counting
/// acknowledged and failed writes, until stopped.
pub struct Writer {
    pub ok: Arc<AtomicU64>,
    #[allow(dead_code)]
    pub failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Writer {
    pub fn start(proxy: std::net::SocketAddr, bases: Vec<String>) -> Writer {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (o, f, s) = (ok.clone(), failed.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut n = 0u64;
            // Bounded: at most 100,000 writes, and the test stops it long before.
            while !s.load(Ordering::SeqCst) && n < 100_000 {
                let base = &bases[(n as usize) % bases.len()];
                n += 1;
                let body = format!(r#"{{"row": {{"n": {n}}}}}"#);
                let req =
                    hyper::Request::post(format!("http://{proxy}/api/v1/dtables/{base}/rows/"))
                        .header("content-type", "application/json")
                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                        .unwrap();
                match http::send(proxy, req, Duration::from_secs(60)).await {
                    Ok(r) if r.status == 200 => {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => {
                        f.fetch_add(1, Ordering::SeqCst);
                        errors.push(format!("{base}: {} {}", r.status, r.text()));
                    }
                    Err(e) => {
                        f.fetch_add(1, Ordering::SeqCst);
                        errors.push(format!("{base}: {e}"));
                    }
                }
            }
            errors
        });
        Writer {
            ok,
            failed,
            stop,
            task,
        }
    }

    /// Stops and returns the errors seen.
    pub async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}
