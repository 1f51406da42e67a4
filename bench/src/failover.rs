//! The failover benchmark of issue 4. A real cluster on loopback, as release binaries: one
//! etcd, one control plane, three `dtable-server-sim`s each with its `dtable-agent`, and a
//! `dtable-proxy`, all through `dtable_testkit`'s harness. Three scenarios, each on a fresh
//! cluster:
//!
//! - `server`: `kill -9` server 0's sim; time until a request for a base in one of its buckets
//!   succeeds through the proxy again (served by another node). Restore: respawn the sim, wait
//!   until the assignment is balanced over all three again.
//! - `host`: `kill -9` server 0's sim and agent; the same measurement (the lease must expire).
//!   Restore: respawn both.
//! - `drain`: writers post rows through the proxy to 16 bases in server 0's buckets while its
//!   agent gets SIGTERM; count failed requests and time the drain. Restore: respawn the agent.
//!
//! Every wait is bounded; the whole run stops starting trials when its time budget would be
//! exceeded and reports how many it ran.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use dtable_testkit::cluster::{
    ControlPlane, Farm, Proxy, Server, balanced_over, read_assignment, spawn_controlplane,
    spawn_proxy, spawn_server,
};
use dtable_testkit::{Etcd, http};
use etcd_client::{Client, EventType, GetOptions};
use tokio::time::{Instant, sleep, timeout};

use crate::stats::{Summary, ms};

/// Servers in the cluster.
const SERVERS: usize = 3;

/// The server that is crashed or drained.
const VICTIM: usize = 0;

/// Longest a cluster may take to settle (start, restore, drain) before the run aborts.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// Longest one failover may take before the trial counts as failed and the run aborts.
const FAILOVER_LIMIT: Duration = Duration::from_secs(60);

/// Hard limit of one write (above the proxy's 30 s hold timeout).
const WRITE_TIMEOUT: Duration = Duration::from_secs(40);

/// Writes before a drain starts, so every writer is in its loop.
const LOAD_BEFORE_DRAIN: Duration = Duration::from_secs(1);

/// Writes after a drain ended, so requests held across its end are counted too.
const LOAD_AFTER_DRAIN: Duration = Duration::from_millis(500);

/// Cap of writes kept per trial (latency samples), so memory stays bounded.
const MAX_WRITES_PER_TRIAL: usize = 200_000;

/// A failure scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// `kill -9` the victim's sim.
    Server,
    /// `kill -9` the victim's sim and agent.
    Host,
    /// SIGTERM the victim's agent under write load.
    Drain,
}

impl Scenario {
    /// Relative share of the time budget: a host crash waits for the lease.
    fn weight(self) -> f64 {
        match self {
            Scenario::Server => 1.0,
            Scenario::Host => 2.2,
            Scenario::Drain => 1.6,
        }
    }
}

/// Flags of `dtable-bench failover`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Scenarios to run, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "server,host,drain"
    )]
    pub scenarios: Vec<Scenario>,
    /// Trials of the server and host crash scenarios.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub trials: u32,
    /// Trials of the drain scenario (fewer are run if the time budget runs out).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub drain_trials: u32,
    /// The agents' registration lease TTL, seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(3..=90))]
    pub ttl: u32,
    /// The agents' health probe interval in ms (the agent's own default is 1000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=5000))]
    pub health_interval_ms: u64,
    /// The control plane's rejoin hold.
    #[arg(long, default_value = "1s")]
    pub rejoin_hold: String,
    /// Pause after a failed probe request, ms.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub poll_ms: u64,
    /// Timeout of one probe request, ms.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=30000))]
    pub request_timeout_ms: u64,
    /// Bases written during a drain, in distinct buckets of the drained node.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub bases: u32,
    /// Concurrent writer loops during a drain, each one request at a time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub writers: u32,
    /// Time budget of the whole run, seconds; trials that would not fit are not started.
    #[arg(long, default_value_t = 840, value_parser = clap::value_parser!(u64).range(30..=3600))]
    pub max_seconds: u64,
}

/// Runs the scenarios and prints one table each.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let hard = Duration::from_secs(args.max_seconds + 120);
    timeout(hard, run_inner(args))
        .await
        .map_err(|_| anyhow!("the run took longer than {hard:?}; aborted"))?
}

async fn run_inner(args: Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let budget_end = start + Duration::from_secs(args.max_seconds);
    println!(
        "failover: {SERVERS} servers, lease TTL {} s, health probe every {} ms, rejoin hold {}, \
         probe pause {} ms, probe timeout {} ms",
        args.ttl, args.health_interval_ms, args.rejoin_hold, args.poll_ms, args.request_timeout_ms
    );
    let mut results = Vec::new();
    for (i, &scenario) in args.scenarios.iter().enumerate() {
        let rest: f64 = args.scenarios[i..].iter().map(|s| s.weight()).sum();
        let left = budget_end.saturating_duration_since(Instant::now());
        let budget = left.mul_f64(scenario.weight() / rest);
        let wanted = match scenario {
            Scenario::Drain => args.drain_trials,
            _ => args.trials,
        };
        let outcome = run_scenario(&args, scenario, wanted as usize, budget).await?;
        outcome.print();
        results.push(outcome);
    }
    println!();
    println!(
        "SeaTable's own design, for context (implied, not measured): a dtable-server registers \
         under a 90 s lease and nobody else notices its death, so its bases stay unreachable \
         until that lease expires, up to 90 s after the crash."
    );
    println!("whole run: {:.0} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// A running cluster. Processes are declared first so they are dropped (SIGKILLed) before
/// etcd and the farm's directories.
struct Cluster {
    servers: Vec<Server>,
    proxy: Proxy,
    cp: ControlPlane,
    client: Client,
    farm: Farm,
    /// Kept alive for the cluster's lifetime.
    _etcd: Etcd,
}

impl Cluster {
    async fn start(args: &Args) -> anyhow::Result<Cluster> {
        let etcd = Etcd::start().await;
        let client = etcd.client().await;
        let farm = Farm::new();
        let cp = spawn_controlplane(&etcd, "cp1", 3, &["--rejoin-hold", &args.rejoin_hold]);
        let interval = format!("{}ms", args.health_interval_ms);
        let mut servers: Vec<Server> = (0..SERVERS)
            .map(|i| spawn_server(&etcd, &farm, &node(i), args.ttl, &[]))
            .collect();
        // The harness starts agents with a 200 ms probe interval and clap rejects the flag
        // twice: put ours in its place and start the agents again at once, before they can
        // register (two good probes are needed first).
        if interval != "200ms" {
            for s in &mut servers {
                let a = &mut s.agent.args;
                let at = a
                    .iter()
                    .position(|f| f == "--health-interval")
                    .context("the harness no longer passes --health-interval")?;
                a[at + 1] = interval.clone();
                s.agent.respawn();
            }
        }
        let proxy = spawn_proxy(&etcd, &[]);
        let c = Cluster {
            servers,
            proxy,
            cp,
            client,
            farm,
            _etcd: etcd,
        };
        c.wait_settled(&(0..SERVERS).collect::<Vec<_>>()).await?;
        let admin = c.proxy.admin;
        wait_for("the proxy to be ready", SETTLE_LIMIT, || async move {
            http::get(admin, "/readyz")
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await?;
        Ok(c)
    }

    /// See [`wait_settled`].
    async fn wait_settled(&self, idx: &[usize]) -> anyhow::Result<Duration> {
        wait_settled(&self.client, idx).await
    }

    /// The buckets `node` owns, in order.
    async fn buckets_of(&self, node: &str) -> Vec<u8> {
        read_assignment(&self.client)
            .await
            .iter()
            .filter(|(_, n)| *n == node)
            .filter_map(|(b, _)| u8::from_str_radix(b, 16).ok())
            .collect()
    }

    /// Waits until every base in `bases` is answered through the proxy by `node` (the proxy's
    /// view has caught up and the base is loaded).
    async fn wait_served_by(&self, bases: &[String], node: &str) -> anyhow::Result<()> {
        for base in bases {
            let proxy = self.proxy.addr;
            wait_for(
                &format!("{node} to serve {base} through the proxy"),
                SETTLE_LIMIT,
                || async move {
                    probe(proxy, base, Duration::from_secs(2))
                        .await
                        .ok()
                        .as_deref()
                        == Some(node)
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Runs the checker (invariants 1 and 4) over every sim's event log and the storage.
    fn check(&self) -> String {
        match dtable_testkit::checker::check(&self.farm.event_logs(), &self.farm.storage()) {
            Ok(r) => format!(
                "ok: no overlap, no lost write ({} buckets, {} ownership intervals, {} writes, \
                 {} bases)",
                r.buckets_seen, r.intervals, r.writes, r.bases
            ),
            Err(v) => format!("VIOLATED: {} violation(s), first: {:?}", v.len(), v.first()),
        }
    }
}

/// The node id of server `i`.
fn node(i: usize) -> String {
    format!("dtable-server-{i}")
}

/// A base UUID in `bucket`, varied by `n`.
fn uuid_in_bucket(bucket: u8, n: u64) -> String {
    format!(
        "{bucket:02x}{:030x}",
        (u128::from(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1) & ((1u128 << 120) - 1)
    )
}

/// Waits until all 256 buckets are balanced over exactly the servers `idx` and no planned
/// move is in flight; returns how long that took.
async fn wait_settled(client: &Client, idx: &[usize]) -> anyhow::Result<Duration> {
    let names: Vec<String> = idx.iter().map(|&i| node(i)).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    wait_for(
        &format!("the assignment to settle over {names:?}"),
        SETTLE_LIMIT,
        || async { balanced_over(client, &refs).await && moves_in_flight(client).await == 0 },
    )
    .await
}

/// Planned moves in flight.
async fn moves_in_flight(client: &Client) -> usize {
    let mut c = client.clone();
    c.get(
        "dtable-cluster/moves/",
        Some(GetOptions::new().with_prefix().with_count_only()),
    )
    .await
    .map(|r| usize::try_from(r.count()).unwrap_or(usize::MAX))
    .unwrap_or(usize::MAX)
}

/// Polls `check` every 20 ms until true; returns the time it took, or an error after `limit`.
async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    loop {
        if check().await {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() >= limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        sleep(Duration::from_millis(20)).await;
    }
}

/// One GET of `base`'s rows through the proxy: the answering node on 200, else what failed.
async fn probe(proxy: SocketAddr, base: &str, limit: Duration) -> Result<String, String> {
    let req = hyper::Request::get(format!("/api/v1/dtables/{base}/rows/"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("a valid request");
    match http::send(proxy, req, limit).await {
        Ok(r) if r.status == 200 => Ok(r.header("x-dtable-node").unwrap_or("?").to_owned()),
        Ok(r) => Err(format!("HTTP {}", r.status.as_u16())),
        Err(http::HttpError::Timeout { .. }) => Err("timeout".into()),
        Err(http::HttpError::Connect { .. }) => Err("connect error".into()),
        Err(http::HttpError::Http { .. }) => Err("HTTP error".into()),
    }
}

/// Records when the first event of kind `kind` on `key` arrives.
struct KeyProbe {
    rx: tokio::sync::oneshot::Receiver<Instant>,
    task: tokio::task::JoinHandle<()>,
}

impl KeyProbe {
    async fn start(client: &Client, key: &str, kind: EventType) -> anyhow::Result<KeyProbe> {
        let mut c = client.clone();
        let mut stream = timeout(Duration::from_secs(10), c.watch(key, None))
            .await
            .context("opening a watch timed out")??;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let _keep_client = c;
            while let Ok(Some(resp)) = stream.message().await {
                if resp.events().iter().any(|e| e.event_type() == kind) {
                    let _ = tx.send(Instant::now());
                    return;
                }
            }
        });
        Ok(KeyProbe { rx, task })
    }

    /// The time from `t0` to the event, if it came.
    fn since(mut self, t0: Instant) -> Option<Duration> {
        self.task.abort();
        self.rx
            .try_recv()
            .ok()
            .map(|t| t.saturating_duration_since(t0))
    }
}

/// The result of one scenario.
struct Outcome {
    scenario: Scenario,
    wanted: usize,
    /// Named series of per-trial durations (in print order).
    series: Vec<(&'static str, Vec<Duration>)>,
    /// Failed probe requests by kind, over all trials (crash scenarios).
    probe_failures: BTreeMap<String, u64>,
    /// Drain: (ok writes, failed writes, first errors).
    writes: Option<(u64, u64, Vec<String>)>,
    /// Other remarks (agent exit codes and the like).
    notes: Vec<String>,
    checker: String,
    seconds: f64,
}

impl Outcome {
    fn new(scenario: Scenario, wanted: usize, names: &[&'static str]) -> Outcome {
        Outcome {
            scenario,
            wanted,
            series: names.iter().map(|n| (*n, Vec::new())).collect(),
            probe_failures: BTreeMap::new(),
            writes: None,
            notes: Vec::new(),
            checker: String::new(),
            seconds: 0.0,
        }
    }

    fn push(&mut self, name: &str, d: Duration) {
        if let Some((_, v)) = self.series.iter_mut().find(|(n, _)| *n == name) {
            v.push(d);
        }
    }

    fn trials(&self) -> usize {
        self.series.first().map_or(0, |(_, v)| v.len())
    }

    fn print(&self) {
        let title = match self.scenario {
            Scenario::Server => "server crash (kill -9 of the sim)",
            Scenario::Host => "host crash (kill -9 of the sim and its agent)",
            Scenario::Drain => "planned drain under write load (SIGTERM to the agent)",
        };
        println!();
        println!(
            "{title}: {} of {} trials, {:.0} s; times in ms",
            self.trials(),
            self.wanted,
            self.seconds
        );
        println!(
            "{:<44}|{:>5} {:>9} {:>9} {:>9} {:>9}",
            "", "n", "p50", "p99", "max", "mean"
        );
        for (name, v) in &self.series {
            match Summary::of(v) {
                Some(s) => println!(
                    "{name:<44}|{:>5} {} {} {} {}",
                    s.count,
                    ms(s.p50),
                    ms(s.p99),
                    ms(s.max),
                    ms(s.mean)
                ),
                None => println!("{name:<44}|{:>5}", 0),
            }
        }
        if !self.probe_failures.is_empty() {
            let f: Vec<String> = self
                .probe_failures
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect();
            println!(
                "failed probe requests before success, all trials: {}",
                f.join(", ")
            );
        }
        if let Some((ok, failed, errors)) = &self.writes {
            println!(
                "writes through the proxy during the drains: {ok} acknowledged, {failed} failed"
            );
            for e in errors {
                println!("  failed: {e}");
            }
        }
        for n in &self.notes {
            println!("{n}");
        }
        println!("checker: {}", self.checker);
    }
}

async fn run_scenario(
    args: &Args,
    scenario: Scenario,
    wanted: usize,
    budget: Duration,
) -> anyhow::Result<Outcome> {
    let t_start = Instant::now();
    let end = t_start + budget;
    eprintln!(
        "[{scenario:?}] starting a cluster; budget {:.0} s for {wanted} trials",
        budget.as_secs_f64()
    );
    let mut c = Cluster::start(args).await?;
    let mut out = match scenario {
        Scenario::Server | Scenario::Host => Outcome::new(
            scenario,
            wanted,
            &[
                "kill -> first 200 through the proxy",
                "kill -> node key deleted (lease gone)",
                "kill -> assign-xx rewritten",
                "restore: respawn -> balanced over 3",
            ],
        ),
        Scenario::Drain => Outcome::new(
            scenario,
            wanted,
            &[
                "drain: SIGTERM -> agent exited + balanced",
                "SIGTERM -> agent exited",
                "SIGTERM -> balanced over the other 2",
                "slowest write per trial",
                "restore: respawn -> balanced over 3",
            ],
        ),
    };
    let mut longest = Duration::ZERO;
    let mut ok_total = 0u64;
    let mut failed_total = 0u64;
    let mut first_errors = Vec::new();
    for trial in 0..wanted {
        // Start a trial only if one as long as the longest so far (plus a margin) still fits.
        let guess = match scenario {
            Scenario::Host => Duration::from_secs(u64::from(args.ttl) + 10),
            _ => Duration::from_secs(10),
        };
        let need = longest.max(guess).mul_f64(1.3);
        if Instant::now() + need > end {
            out.notes.push(format!(
                "stopped after {trial} trials: the next one would not fit the time budget"
            ));
            break;
        }
        let t_trial = Instant::now();
        match scenario {
            Scenario::Server | Scenario::Host => {
                crash_trial(args, &mut c, scenario, trial, &mut out).await?;
            }
            Scenario::Drain => {
                let (ok, failed, errors) = drain_trial(args, &mut c, trial, &mut out).await?;
                ok_total += ok;
                failed_total += failed;
                for e in errors {
                    if first_errors.len() < 10 {
                        first_errors.push(e);
                    }
                }
            }
        }
        longest = longest.max(t_trial.elapsed());
    }
    if scenario == Scenario::Drain {
        out.writes = Some((ok_total, failed_total, first_errors));
        let log = c.cp.proc.log();
        out.notes.push(format!(
            "control plane log, whole scenario: {} handoffs committed, {} moves abandoned",
            log.matches("handoff committed").count(),
            log.matches("move abandoned").count()
        ));
    }
    out.checker = c.check();
    out.seconds = t_start.elapsed().as_secs_f64();
    Ok(out)
}

async fn crash_trial(
    args: &Args,
    c: &mut Cluster,
    scenario: Scenario,
    trial: usize,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let victim = node(VICTIM);
    let buckets = c.buckets_of(&victim).await;
    ensure!(!buckets.is_empty(), "{victim} owns no bucket");
    let bucket = buckets[trial % buckets.len()];
    let base = uuid_in_bucket(bucket, trial as u64 + 1);
    c.wait_served_by(std::slice::from_ref(&base), &victim)
        .await?;
    let gone = KeyProbe::start(&c.client, &victim, EventType::Delete).await?;
    let moved = KeyProbe::start(&c.client, &format!("assign-{bucket:02x}"), EventType::Put).await?;

    let t0 = Instant::now();
    if scenario == Scenario::Host {
        c.servers[VICTIM].agent.proc.kill9();
    }
    c.servers[VICTIM].sim.kill9();

    let limit = Duration::from_millis(args.request_timeout_ms);
    let took = loop {
        if t0.elapsed() > FAILOVER_LIMIT {
            bail!("trial {trial}: {base} not served within {FAILOVER_LIMIT:?} after the kill");
        }
        match probe(c.proxy.addr, &base, limit).await {
            Ok(n) if n != victim => break t0.elapsed(),
            Ok(n) => bail!("trial {trial}: {base} answered by the killed {n}"),
            Err(kind) => *out.probe_failures.entry(kind).or_default() += 1,
        }
        sleep(Duration::from_millis(args.poll_ms)).await;
    };
    // The probes' events precede the 200 unless the watch is slow; give them a moment.
    sleep(Duration::from_millis(200)).await;
    let gone = gone.since(t0);
    let moved = moved.since(t0);
    out.push("kill -> first 200 through the proxy", took);
    if let Some(d) = gone {
        out.push("kill -> node key deleted (lease gone)", d);
    }
    if let Some(d) = moved {
        out.push("kill -> assign-xx rewritten", d);
    }

    let t1 = Instant::now();
    if scenario == Scenario::Host {
        c.servers[VICTIM].agent.respawn();
    }
    c.servers[VICTIM].sim.respawn();
    let restore = c.wait_settled(&(0..SERVERS).collect::<Vec<_>>()).await?;
    let restore = restore.max(t1.elapsed());
    out.push("restore: respawn -> balanced over 3", restore);
    eprintln!(
        "[{scenario:?}] trial {trial}: bucket {bucket:02x}: 200 after {:.0} ms (lease gone {}, \
         assign {}), restored in {:.1} s",
        took.as_secs_f64() * 1e3,
        fmt_opt(gone),
        fmt_opt(moved),
        restore.as_secs_f64()
    );
    Ok(())
}

fn fmt_opt(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".into(),
        |d| format!("{:.0} ms", d.as_secs_f64() * 1e3),
    )
}

/// Shared state of the drain's writers.
struct Load {
    stop: AtomicBool,
    ok: Mutex<Vec<Duration>>,
    failed: Mutex<Vec<String>>,
}

async fn drain_trial(
    args: &Args,
    c: &mut Cluster,
    trial: usize,
    out: &mut Outcome,
) -> anyhow::Result<(u64, u64, Vec<String>)> {
    let victim = node(VICTIM);
    let buckets = c.buckets_of(&victim).await;
    ensure!(
        buckets.len() >= args.bases as usize,
        "{victim} owns only {} buckets, fewer than --bases {}",
        buckets.len(),
        args.bases
    );
    let offset = (trial * args.bases as usize) % buckets.len();
    let bases: Vec<String> = (0..args.bases as usize)
        .map(|i| {
            let b = buckets[(offset + i) % buckets.len()];
            uuid_in_bucket(b, (trial * 1000 + i) as u64 + 7)
        })
        .collect();
    c.wait_served_by(&bases, &victim).await?;

    let load = Arc::new(Load {
        stop: AtomicBool::new(false),
        ok: Mutex::new(Vec::new()),
        failed: Mutex::new(Vec::new()),
    });
    let bases = Arc::new(bases);
    let proxy = c.proxy.addr;
    let writers: Vec<_> = (0..args.writers as usize)
        .map(|w| {
            let (load, bases) = (load.clone(), bases.clone());
            tokio::spawn(async move {
                let mut n = w;
                while !load.stop.load(Ordering::SeqCst)
                    && load.ok.lock().expect("lock").len() < MAX_WRITES_PER_TRIAL
                {
                    let base = &bases[n % bases.len()];
                    n += 1;
                    let body = format!(r#"{{"row":{{"writer":{w},"n":{n}}}}}"#);
                    let req = hyper::Request::post(format!("/api/v1/dtables/{base}/rows/"))
                        .header("content-type", "application/json")
                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                        .expect("a valid request");
                    let t = Instant::now();
                    match http::send(proxy, req, WRITE_TIMEOUT).await {
                        Ok(r) if r.status == 200 => load.ok.lock().expect("lock").push(t.elapsed()),
                        Ok(r) => load.failed.lock().expect("lock").push(format!(
                            "{base}: HTTP {} {}",
                            r.status.as_u16(),
                            r.text().chars().take(200).collect::<String>()
                        )),
                        Err(e) => load
                            .failed
                            .lock()
                            .expect("lock")
                            .push(format!("{base}: {e}")),
                    }
                }
            })
        })
        .collect();
    sleep(LOAD_BEFORE_DRAIN).await;

    let t0 = Instant::now();
    c.servers[VICTIM].agent.proc.sigterm();
    // Both waits run at once, each timed from the SIGTERM.
    let others: Vec<usize> = (0..SERVERS).filter(|&i| i != VICTIM).collect();
    let (proc, client) = (&mut c.servers[VICTIM].agent.proc, &c.client);
    let (exit, settled) = tokio::join!(
        async {
            let status = proc.wait_exit(SETTLE_LIMIT).await;
            (status, t0.elapsed())
        },
        async { wait_settled(client, &others).await.map(|_| t0.elapsed()) }
    );
    let (status, exited) = exit;
    let status = status.with_context(|| {
        format!("trial {trial}: the agent did not exit within {SETTLE_LIMIT:?}")
    })?;
    let balanced = settled?;
    if !status.success() {
        out.notes.push(format!(
            "trial {trial}: the drained agent exited with {status}"
        ));
    }
    sleep(LOAD_AFTER_DRAIN).await;
    load.stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.context("a writer panicked")?;
    }
    let oks = std::mem::take(&mut *load.ok.lock().expect("lock"));
    let failed = std::mem::take(&mut *load.failed.lock().expect("lock"));
    let slowest = oks.iter().copied().max().unwrap_or_default();
    ensure!(
        !oks.is_empty() || !failed.is_empty(),
        "trial {trial}: no write completed"
    );
    // Either may come first.
    let drain = exited.max(balanced);
    out.push("drain: SIGTERM -> agent exited + balanced", drain);
    out.push("SIGTERM -> agent exited", exited);
    out.push("SIGTERM -> balanced over the other 2", balanced);
    out.push("slowest write per trial", slowest);

    let t1 = Instant::now();
    c.servers[VICTIM].agent.respawn();
    c.wait_settled(&(0..SERVERS).collect::<Vec<_>>()).await?;
    let restore = t1.elapsed();
    out.push("restore: respawn -> balanced over 3", restore);
    eprintln!(
        "[Drain] trial {trial}: drained in {:.0} ms (agent exit {:.0} ms), {} writes ok, {} \
         failed, slowest {:.0} ms, restored in {:.1} s",
        drain.as_secs_f64() * 1e3,
        exited.as_secs_f64() * 1e3,
        oks.len(),
        failed.len(),
        slowest.as_secs_f64() * 1e3,
        restore.as_secs_f64()
    );
    Ok((oks.len() as u64, failed.len() as u64, failed))
}
