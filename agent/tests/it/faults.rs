//! Single ownership under faults (real processes, TTL ≥ 4 s): crashes and pauses of sims and
//! agents, a cut link to etcd, and a drain under load. After each, the checker reads every
//! sim's event log and the shared storage and proves no overlap and no lost write.

use std::time::{Duration, Instant};

use dtable_testkit::cluster::{read_assignment, spawn_server_via};
use dtable_testkit::{Relay, http, wait_until};

use crate::harness::{Cluster, SETTLE, Writer, uuid_in_bucket};

/// The first bucket `node` owns.
async fn a_bucket_of(c: &Cluster, node: &str) -> u8 {
    let a = read_assignment(&c.client).await;
    let (b, _) = a
        .iter()
        .find(|(_, n)| *n == node)
        .expect("node owns a bucket");
    u8::from_str_radix(b, 16).unwrap()
}

/// Which node answered a GET of `base`'s rows through the proxy, if it succeeded.
async fn served_by(c: &Cluster, base: &str) -> Option<String> {
    let r = http::get(c.proxy.addr, &format!("/api/v1/dtables/{base}/rows/"))
        .await
        .ok()?;
    (r.status == 200).then(|| r.header("x-dtable-node").unwrap_or_default().to_owned())
}

#[tokio::test]
async fn a_killed_sim_is_served_elsewhere_within_3s() {
    let mut c = Cluster::start(3, 10, &[], &[]).await;
    let base = uuid_in_bucket(a_bucket_of(&c, "dtable-server-0").await, 1);
    assert_eq!(
        served_by(&c, &base).await.as_deref(),
        Some("dtable-server-0")
    );

    c.servers[0].sim.kill9();
    let killed = Instant::now();
    let mut took = None;
    while killed.elapsed() < Duration::from_secs(20) {
        if let Some(node) = served_by(&c, &base).await {
            assert_ne!(node, "dtable-server-0");
            took = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = took.expect("served elsewhere");
    assert!(took <= Duration::from_secs(3), "took {took:?}, want ≤ 3 s");
    c.wait_balanced(&[1, 2]).await;
    let report = c.check();
    assert!(report.buckets_seen >= 200, "{report:?}");
}

#[tokio::test]
async fn a_killed_agent_fences_its_sim_before_the_lease_expires() {
    let mut c = Cluster::start(3, 4, &[], &[]).await;
    let base = uuid_in_bucket(a_bucket_of(&c, "dtable-server-0").await, 2);
    let writer = Writer::start(c.proxy.addr, vec![base.clone()]);
    tokio::time::sleep(Duration::from_millis(500)).await;

    c.servers[0].agent.proc.kill9();
    let killed = Instant::now();
    // The sim's stream ended: it must refuse at once, long before the lease (4 s) expires.
    wait_until("the sim fences itself", Duration::from_secs(2), || async {
        let direct = http::get(
            c.servers[0].sim.addr,
            &format!("/api/v1/dtables/{base}/rows/"),
        )
        .await;
        direct.is_ok_and(|r| r.status == 409)
    })
    .await;
    assert!(killed.elapsed() < Duration::from_secs(3));
    c.wait_balanced(&[1, 2]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let errors = writer.stop().await;
    assert!(errors.is_empty(), "writes failed: {errors:?}");
    let report = c.check();
    assert!(report.writes > 0, "{report:?}");
}

#[tokio::test]
async fn a_paused_agent_loses_its_buckets_and_rejoins_cleanly() {
    let c = Cluster::start(3, 4, &[], &[]).await;
    c.servers[0].agent.proc.sigstop();
    // Longer than the TTL: the sim's serving lease lapses, etcd expires the lease, others
    // take over.
    c.wait_balanced(&[1, 2]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.servers[0].agent.proc.sigcont();
    // The woken agent finds its lease gone, fences, registers anew and, after the rejoin
    // hold, gets its share back by handoff.
    c.wait_balanced(&[0, 1, 2]).await;
    c.check();
}

#[tokio::test]
async fn a_paused_sim_is_not_double_booked() {
    let c = Cluster::start(3, 4, &["--health-timeout", "300ms"], &[]).await;
    c.servers[0].sim.proc.sigstop();
    let stopped = Instant::now();
    c.wait_balanced(&[1, 2]).await;
    // The agent may revoke only once the serving lease it last gave (≤ TTL − margin = 3 s)
    // has lapsed, so the buckets cannot move sooner than that after the sim's last message.
    assert!(
        stopped.elapsed() >= Duration::from_millis(1500),
        "moved after {:?}",
        stopped.elapsed()
    );
    c.servers[0].sim.proc.sigcont();
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.check();
}

/// Two servers, and a third whose agent reaches etcd through a relay; `fault` breaks the
/// relay. The third node must be fenced and replaced, rejoin after healing, and a writer to one
/// of its bases must see no failure and lose nothing.
async fn partition_the_third_node(fault: impl FnOnce(&Relay)) {
    let mut c = Cluster::start(2, 4, &[], &[]).await;
    let relay = Relay::start(c.etcd.endpoints()[0].parse().unwrap()).await;
    let third = spawn_server_via(
        &relay.addr().to_string(),
        &c.farm,
        "dtable-server-2",
        4,
        &[],
    );
    c.servers.push(third);
    c.wait_balanced(&[0, 1, 2]).await;
    let base = uuid_in_bucket(a_bucket_of(&c, "dtable-server-2").await, 3);
    let writer = Writer::start(c.proxy.addr, vec![base]);

    fault(&relay);
    c.wait_balanced(&[0, 1]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    relay.heal();
    c.wait_balanced(&[0, 1, 2]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let errors = writer.stop().await;
    assert!(errors.is_empty(), "writes failed: {errors:?}");
    let report = c.check();
    assert!(report.writes > 0, "{report:?}");
}

#[tokio::test]
async fn a_cut_etcd_link_fences_the_node_and_it_rejoins_after_healing() {
    partition_the_third_node(Relay::cut).await;
}

#[tokio::test]
async fn a_silent_partition_from_etcd_fences_the_node_before_others_take_over() {
    // No error, no closed connection: the agent's keep-alives just go unanswered.
    partition_the_third_node(Relay::blackhole).await;
}

#[tokio::test]
async fn a_drain_under_load_fails_no_request_and_loses_no_write() {
    let mut c = Cluster::start(3, 10, &[], &[]).await;
    let a = read_assignment(&c.client).await;
    let bases: Vec<String> = a
        .iter()
        .filter(|(_, n)| *n == "dtable-server-0")
        .take(24)
        .enumerate()
        .map(|(i, (b, _))| uuid_in_bucket(u8::from_str_radix(b, 16).unwrap(), i as u64))
        .collect();
    let writer = Writer::start(c.proxy.addr, bases);
    tokio::time::sleep(Duration::from_secs(1)).await;

    c.servers[0].agent.proc.sigterm();
    c.wait_balanced(&[1, 2]).await;
    let status = c.servers[0]
        .agent
        .proc
        .wait_exit(SETTLE)
        .await
        .expect("the agent exits after the drain");
    assert!(status.success(), "{status:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ok = writer.ok.load(std::sync::atomic::Ordering::SeqCst);
    let errors = writer.stop().await;
    assert!(
        errors.is_empty(),
        "{} writes failed: {errors:?}",
        errors.len()
    );
    assert!(ok > 20, "only {ok} writes went through");
    let report = c.check();
    assert!(report.writes as u64 >= ok, "{report:?}");
    let log = c.cp.proc.log();
    assert!(
        log.contains("handoff committed"),
        "the drain did not move buckets by handoff"
    );
}
