//! Seatable mode: beside self-registering servers the agent registers nothing, and revokes a
//! dead server's own lease, so its buckets fail over in seconds instead of after the TTL; a
//! paused server keeps its registration until --unhealthy-after is reached; a server that
//! answers is never touched.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dtable_testkit::cluster::{
    Sim, balanced_over, read_assignment, read_registration, spawn_controlplane,
    spawn_seatable_agent, spawn_self_registering_sim,
};
use dtable_testkit::{Etcd, Proc, free_port, http, wait_until};
use etcd_client::GetOptions;

/// Generous bound for settling on a loaded two-core machine.
const SETTLE: Duration = Duration::from_secs(30);

/// How many buckets the sim at `addr` serves, by its own account.
async fn owned_by(addr: SocketAddr) -> Option<usize> {
    let resp = http::get(addr, "/_sim/state").await.ok()?;
    let state: serde_json::Value = serde_json::from_slice(&resp.body).ok()?;
    state["owned"].as_object().map(|o| o.len())
}

/// Every key in etcd.
async fn all_keys(client: &etcd_client::Client) -> Vec<String> {
    let resp = client
        .clone()
        .get("", Some(GetOptions::new().with_all_keys().with_keys_only()))
        .await
        .expect("list every key");
    resp.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

#[tokio::test]
async fn a_killed_self_registered_server_fails_over_within_3s_and_no_healthy_lease_is_touched() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let names = [
        "dtable-server-st0",
        "dtable-server-st1",
        "dtable-server-st2",
    ];
    let mut sims: Vec<Sim> = names
        .iter()
        .map(|n| spawn_self_registering_sim(&etcd, n, 30, &[]))
        .collect();
    let mut agents: Vec<_> = sims
        .iter()
        .map(|s| spawn_seatable_agent(&etcd, &s.node_id, &s.url(), &[]))
        .collect();
    for name in names {
        wait_until(&format!("{name} registers itself"), SETTLE, || async {
            read_registration(&client, name).await.is_some()
        })
        .await;
    }
    // Every server is registered before the control plane places, so the first placement
    // spreads the buckets: seatable servers never acknowledge releases, so planned moves
    // could not complete (see the report).
    let _cp = spawn_controlplane(
        &etcd,
        "cp1",
        3,
        &["--auto-rebalance", "false", "--rejoin-hold", "2s"],
    );
    wait_until("balanced over the three servers", SETTLE, || {
        balanced_over(&client, &names)
    })
    .await;
    let assigned = read_assignment(&client).await;
    let victim_share = assigned.values().filter(|n| *n == names[0]).count();
    let victim_addr = sims[0].addr;
    wait_until("the victim serves its share", SETTLE, || async move {
        owned_by(victim_addr).await == Some(victim_share)
    })
    .await;
    let mut before = Vec::new();
    for name in names {
        before.push(read_registration(&client, name).await.expect("registered"));
    }

    sims[0].kill9();
    let killed = Instant::now();
    let mut failed_over = None;
    while killed.elapsed() < Duration::from_secs(20) {
        let a = read_assignment(&client).await;
        if a.len() == 256 && a.values().all(|n| n != names[0]) {
            failed_over = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = failed_over.unwrap_or_else(|| {
        panic!(
            "the killed server's buckets were not reassigned within 20 s; victim's agent:\n{}",
            agents[0].proc.log_tail(30)
        )
    });
    assert!(
        took <= Duration::from_secs(3),
        "failover took {took:?}, want at most 3 s (lease TTL is 30 s)"
    );
    assert_eq!(
        read_registration(&client, names[0]).await,
        None,
        "the dead server's registration is gone"
    );
    let victim_lease = before[0].lease;
    let left = client
        .clone()
        .lease_time_to_live(victim_lease, None)
        .await
        .unwrap()
        .ttl();
    assert_eq!(left, -1, "the dead server's lease was revoked");
    let log = agents[0].proc.log();
    assert!(
        log.contains("revoking the lease") && log.contains(&format!("{victim_lease:x}")),
        "the agent logs the revoke with the lease id:\n{log}"
    );
    assert!(log.contains("refused"), "and why:\n{log}");

    // The healthy servers' registrations are exactly as they were, and their agents revoked
    // nothing.
    for (i, name) in names.iter().enumerate().skip(1) {
        let now = read_registration(&client, name).await;
        assert_eq!(
            now.as_ref(),
            Some(&before[i]),
            "{name}'s registration changed"
        );
        assert!(
            !agents[i].proc.log().contains("revoking"),
            "{name}'s agent revoked something:\n{}",
            agents[i].proc.log()
        );
        assert!(agents[i].proc.try_wait().is_none(), "{name}'s agent exited");
    }
    wait_until("the survivors serve every bucket", SETTLE, || async {
        let a = owned_by(sims[1].addr).await.unwrap_or(0);
        let b = owned_by(sims[2].addr).await.unwrap_or(0);
        a + b == 256
    })
    .await;
    eprintln!("seatable failover after kill -9: {took:?}");
}

#[tokio::test]
async fn a_paused_server_keeps_its_registration_until_unhealthy_after_then_loses_it() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let node = "dtable-server-paused";
    let sim = spawn_self_registering_sim(&etcd, node, 30, &[]);
    // Probes time out after 500 ms; six in a row make the server dead.
    let agent = spawn_seatable_agent(
        &etcd,
        node,
        &sim.url(),
        &["--health-timeout", "500ms", "--unhealthy-after", "6"],
    );
    wait_until("registered and judged healthy", SETTLE, || async {
        read_registration(&client, node).await.is_some()
            && agent.proc.log().contains("healthy=true")
    })
    .await;
    let lease = read_registration(&client, node).await.unwrap().lease;

    sim.proc.sigstop();
    let stopped = Instant::now();
    // The first timed-out probe ends no earlier than the stop, and each of the next five
    // takes the full 500 ms: the server cannot be judged dead before 2.5 s.
    let still_there_until = Duration::from_millis(2000);
    let mut gone_after = None;
    while stopped.elapsed() < Duration::from_secs(20) {
        let present = read_registration(&client, node)
            .await
            .is_some_and(|r| r.lease == lease);
        let at = stopped.elapsed();
        if !present {
            gone_after = Some(at);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sim.proc.sigcont();
    let gone_after = gone_after.unwrap_or_else(|| {
        panic!(
            "the paused server was never deregistered; agent:\n{}",
            agent.proc.log_tail(30)
        )
    });
    assert!(
        gone_after >= still_there_until,
        "revoked after {gone_after:?}, before --unhealthy-after could be reached"
    );
    assert!(
        gone_after < Duration::from_secs(15),
        "revoked after {gone_after:?}: that is the lease expiring, not the agent"
    );
    let log = agent.proc.log();
    assert!(
        log.contains("probes in a row timed out or failed"),
        "the agent says why:\n{log}"
    );

    // Resumed, the server registers again; it answers, so the agent leaves it alone.
    wait_until("the resumed server registers again", SETTLE, || async {
        read_registration(&client, node)
            .await
            .is_some_and(|r| r.lease != lease)
    })
    .await;
    let again = read_registration(&client, node).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        read_registration(&client, node).await,
        Some(again),
        "the registration of a server that answers was touched"
    );
    eprintln!("paused server deregistered after {gone_after:?}");
}

#[tokio::test]
async fn a_seatable_agent_registers_nothing_and_waits_for_the_server() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let node = "dtable-server-late";
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let agent = spawn_seatable_agent(&etcd, node, &url, &[]);
    wait_until("the agent serves /healthz", SETTLE, || async {
        http::get(agent.http, "/healthz")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    // Nothing listens: the server is dead, but there is nothing to revoke and nothing is
    // written.
    wait_until("a refused probe", SETTLE, || async {
        http::get(agent.http, "/metrics")
            .await
            .is_ok_and(|r| r.text().contains(r#"result="refused""#))
    })
    .await;
    assert_eq!(all_keys(&client).await, Vec::<String>::new());
    let metrics = http::get(agent.http, "/metrics").await.unwrap().text();
    assert!(
        metrics.contains("dtable_agent_info{")
            && metrics.contains(r#"mode="seatable""#)
            && metrics.contains(&format!(r#"node_id="{node}""#)),
        "{metrics}"
    );

    let args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--node-id",
        node,
        "--etcd",
        &etcd.endpoints_arg(),
        "--self-register",
        "--lease-ttl",
        "30",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let _sim = Proc::spawn("dtable-server-sim", &args, &[]);
    wait_until("the server registers itself", SETTLE, || async {
        read_registration(&client, node).await.is_some()
    })
    .await;
    let registered = read_registration(&client, node).await.unwrap();
    wait_until("the agent sees the registration", SETTLE, || async {
        agent
            .proc
            .log()
            .contains("the server's own registration is present")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        read_registration(&client, node).await,
        Some(registered),
        "the agent touched a live server's registration"
    );
    assert_eq!(all_keys(&client).await, vec![node.to_owned()]);
    let metrics = http::get(agent.http, "/metrics").await.unwrap().text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("dtable_agent_registered") && l.ends_with(" 1")),
        "{metrics}"
    );
}
