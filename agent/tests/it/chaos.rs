//! A leader killed in the middle of a rebalance, and a seeded random run of faults. The seed
//! is printed, and `DTABLE_FAULT_SEED=<seed>` replays a run.

use std::time::{Duration, Instant};

use dtable_testkit::cluster::{moves_in_flight, read_assignment, spawn_controlplane, spawn_server};
use dtable_testkit::{http, wait_until};

use crate::harness::{Cluster, SETTLE, Writer, uuid_in_bucket};

#[tokio::test]
async fn killing_the_leader_mid_rebalance_leaves_no_bucket_half_moved() {
    let mut c = Cluster::start(2, 10, &[], &["--auto-rebalance=false"]).await;
    let mut standby = spawn_controlplane(
        &c.etcd,
        "cp2",
        3,
        &[
            "--auto-rebalance=false",
            "--rejoin-hold",
            "2s",
            "--release-timeout",
            "10s",
        ],
    );
    c.servers
        .push(spawn_server(&c.etcd, &c.farm, "dtable-server-2", 10, &[]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !read_assignment(&c.client)
            .await
            .values()
            .any(|n| n == "dtable-server-2")
    );

    let req = hyper::Request::post(format!("http://{}/rebalance/", c.proxy.admin))
        .body(http_body_util::Full::default())
        .unwrap();
    let answer = http::send(c.proxy.admin, req, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    wait_until("moves in flight", SETTLE, || async {
        moves_in_flight(&c.client).await > 0
    })
    .await;
    c.cp.proc.kill9();
    let killed = Instant::now();

    // The standby takes over, finishes or abandons every move, and carries the request out.
    c.wait_balanced(&[0, 1, 2]).await;
    wait_until("no move left in flight", SETTLE, || async {
        moves_in_flight(&c.client).await == 0
    })
    .await;
    let mut kv = c.client.clone();
    let acks = kv
        .get(
            "dtable-cluster/acks/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(acks.count(), 0, "acks left behind");
    assert!(killed.elapsed() < SETTLE);
    assert!(standby.proc.log().contains("elected leader"));
    c.check();
    standby.proc.kill9();
}

/// A small deterministic generator (xorshift64*), so a seed replays a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test]
async fn a_seeded_random_fault_run_keeps_single_ownership_and_every_write() {
    let seed = std::env::var("DTABLE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("fault seed: {seed} (replay with DTABLE_FAULT_SEED={seed})");
    eprintln!("fault seed: {seed} (replay with DTABLE_FAULT_SEED={seed})");
    let mut rng = Rng(seed);
    let run_for = Duration::from_secs(
        std::env::var("DTABLE_FAULT_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(90),
    );

    let mut c = Cluster::start(4, 4, &["--drain-timeout", "15s"], &[]).await;
    let mut standby = spawn_controlplane(
        &c.etcd,
        "cp2",
        3,
        &["--rejoin-hold", "2s", "--release-timeout", "10s"],
    );
    let bases: Vec<String> = (0..32u64)
        .map(|i| uuid_in_bucket((i * 8) as u8, i))
        .collect();
    let writer = Writer::start(c.proxy.addr, bases);

    let started = Instant::now();
    let mut step = 0;
    // Bounded: by time, and by a step count.
    while started.elapsed() < run_for && step < 200 {
        step += 1;
        let i = rng.below(c.servers.len() as u64) as usize;
        let action = rng.below(6);
        let pause = Duration::from_millis(500 + rng.below(2500));
        let what = match action {
            0 => {
                c.servers[i].sim.respawn();
                "restart sim (kill -9)"
            }
            1 => {
                c.servers[i].agent.proc.sigstop();
                tokio::time::sleep(Duration::from_millis(1000 + rng.below(5000))).await;
                c.servers[i].agent.proc.sigcont();
                "pause agent"
            }
            2 => {
                c.servers[i].agent.respawn();
                "restart agent (kill -9)"
            }
            3 => {
                if rng.below(2) == 0 {
                    c.cp.respawn();
                } else {
                    standby.respawn();
                }
                "restart a control plane (kill -9)"
            }
            4 => {
                c.servers[i].agent.proc.sigterm();
                let _ = c.servers[i]
                    .agent
                    .proc
                    .wait_exit(Duration::from_secs(20))
                    .await;
                c.servers[i].agent.respawn();
                "drain and rejoin"
            }
            _ => {
                c.servers[i].sim.proc.sigstop();
                tokio::time::sleep(Duration::from_millis(500 + rng.below(3000))).await;
                c.servers[i].sim.proc.sigcont();
                "pause sim"
            }
        };
        eprintln!(
            "step {step} at {:?}: {what} on server {i}",
            started.elapsed()
        );
        tokio::time::sleep(pause).await;
    }

    // Heal: every process up; the cluster settles.
    for s in &mut c.servers {
        s.sim.proc.sigcont();
        s.agent.proc.sigcont();
        if s.sim.proc.try_wait().is_some() {
            s.sim.respawn();
        }
        if s.agent.proc.try_wait().is_some() {
            s.agent.respawn();
        }
    }
    let all: Vec<usize> = (0..c.servers.len()).collect();
    c.wait_balanced(&all).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ok = writer.ok.load(std::sync::atomic::Ordering::SeqCst);
    let errors = writer.stop().await;
    eprintln!(
        "{ok} writes acknowledged, {} failed (failures are allowed under kills)",
        errors.len()
    );
    let report = c.check();
    assert!(
        report.writes as u64 >= ok && ok > 0,
        "seed {seed}: {report:?}"
    );
    standby.proc.kill9();
}
