//! The propagation benchmark: how long a membership change takes to reach every agent's view
//! of the assignment. A real etcd, one in-process control plane and N cluster watches (each on
//! its own connection, like N agents); each trial adds or removes a node and times every
//! watcher until its view shows the new, settled assignment. A second phase stops the control
//! plane and times the pure fan-out of one committed assignment write.

mod cluster;
mod fanout;
mod fleet;
mod report;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, ensure};
use dtable_core::etcd::{EtcdOptions, connect};
use dtable_core::{KeyLayout, NodeId};
use dtable_testkit::Etcd;
use tokio::time::{Instant, sleep, timeout};

use cluster::{ControlPlane, deregister, register, settled};
use fleet::{CommitProbe, Fleet, Goal};
use report::{Report, TrialSample};

/// Longest any single wait may take before the run aborts with an error.
pub const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// Longest the whole run may take, so it always ends in under five minutes.
const RUN_LIMIT: Duration = Duration::from_secs(290);

/// Nodes registered before the first trial.
const INITIAL_NODES: usize = 3;

/// Quiet time between trials on top of the debounce, so the control plane's reaction to its
/// own previous write (one more debounce, then a placement that moves nothing) is over before
/// the next change and does not shorten or lengthen it.
const SETTLE_GAP: Duration = Duration::from_millis(100);

/// Flags of `dtable-bench propagation`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of cluster watches, each on its own etcd connection.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=2000))]
    pub watchers: u32,
    /// Membership changes to time: joins and leaves alternate, starting with a join.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub trials: u32,
    /// The control plane's debounce in ms (its own default is 200).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=5000))]
    pub debounce_ms: u64,
    /// Transactions to time in the pure fan-out phase (0 skips it).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(0..=500))]
    pub fanout_trials: u32,
}

/// Runs the benchmark within [`RUN_LIMIT`] and prints its tables.
pub async fn run(args: Args) -> anyhow::Result<()> {
    timeout(RUN_LIMIT, run_inner(args))
        .await
        .map_err(|_| anyhow!("the run took longer than {RUN_LIMIT:?}; aborted"))?
}

/// The goal "the view shows the settled assignment for exactly `members`".
fn settled_goal(members: &BTreeSet<NodeId>) -> Goal {
    let members = members.clone();
    Arc::new(move |v| settled(v, &members))
}

async fn run_inner(args: Args) -> anyhow::Result<()> {
    let debounce = Duration::from_millis(args.debounce_ms);
    let etcd = Etcd::start().await;
    let opts = EtcdOptions {
        endpoints: etcd.endpoints(),
        ..EtcdOptions::default()
    };
    let keys = KeyLayout::default();
    let mut client = timeout(WAIT_LIMIT, connect(&opts))
        .await
        .context("connecting the bench's client timed out")??;

    let mut members = BTreeSet::new();
    for i in 0..INITIAL_NODES {
        let node = NodeId::new(format!("dtable-server-n{i}"))?;
        register(&mut client, &keys, &node).await?;
        members.insert(node);
    }
    let cp = ControlPlane::start(&opts, &keys, debounce)?;

    let started = Instant::now();
    let fleet = Fleet::start(&opts, &keys, args.watchers as usize).await?;
    let mut probe = CommitProbe::start(&opts, &keys).await?;
    let initial = fleet.arm(settled_goal(&members)).await;
    if let Err(e) = initial.collect("initial assignment").await {
        if cp.has_stopped() {
            return Err(cp.stop().await.err().unwrap_or(e));
        }
        return Err(e);
    }
    println!(
        "propagation: etcd at {}, {} watchers connected and holding the initial assignment of \
         {INITIAL_NODES} nodes after {:.0} ms",
        opts.endpoints.join(","),
        args.watchers,
        started.elapsed().as_secs_f64() * 1e3
    );

    let mut report = Report::new(args.watchers as usize, args.debounce_ms);
    for t in 0..args.trials as usize {
        sleep(debounce + SETTLE_GAP).await;
        let node = NodeId::new(format!("dtable-server-j{}", t / 2))?;
        let join = t % 2 == 0;
        if join {
            members.insert(node.clone());
        } else {
            members.remove(&node);
        }
        let goal = settled_goal(&members);
        ensure!(
            !goal(&fleet.view(0)),
            "trial {t}: goal already met before the change"
        );
        let armed = fleet.arm(goal).await;
        probe.clear();
        let t0 = Instant::now();
        if join {
            register(&mut client, &keys, &node).await?;
        } else {
            deregister(&mut client, &keys, &node).await?;
        }
        let what = format!(
            "trial {t}: {} {node}",
            if join { "join of" } else { "leave of" }
        );
        let met = armed.collect(&what).await?;
        let write_seen = probe.first_since(t0, Duration::from_millis(200)).await;
        report.trials.push(TrialSample {
            join,
            per_watcher: met.iter().map(|at| at.duration_since(t0)).collect(),
            write_seen: write_seen.map(|at| at.duration_since(t0)),
        });
    }

    cp.stop().await.context("stopping the control plane")?;
    for k in 0..args.fanout_trials as usize {
        let sample = fanout::trial(&fleet, &mut client, &keys, &members, k).await?;
        report.fanout.push(sample);
    }
    fleet.stop().await;
    drop(probe);
    drop(etcd);
    report.print();
    Ok(())
}
