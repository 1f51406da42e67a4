//! `dtable-bench`: hand-run benchmarks of dtable-cluster (issue 2). `propagation` times how
//! fast a membership change reaches N agents' views through a real etcd and control plane;
//! `placement` times the pure placement function for a large cluster. `responder` is the
//! trivial backend of the proxy benchmark of issue 3 (`bench/proxy.sh`). `failover` times
//! issue 4's failover and drain on a real cluster of release binaries. See bench/README.md.

mod failover;
mod placement;
mod propagation;
mod responder;
mod stats;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Command line of `dtable-bench`.
#[derive(Debug, Parser)]
#[command(
    name = "dtable-bench",
    version,
    about = "Benchmarks of dtable-cluster, run by hand on loopback (see bench/README.md)"
)]
struct Cli {
    /// The benchmark to run.
    #[command(subcommand)]
    bench: Bench,
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
enum Bench {
    /// Time from a node joining or leaving until N watchers hold the new assignment, and the
    /// pure fan-out of one assignment write (starts its own etcd on loopback).
    Propagation(propagation::Args),
    /// Time of one `place()` call for a large cluster.
    Placement(placement::Args),
    /// A trivial HTTP/1.1 backend for `bench/proxy.sh`: answers every request with 200 and
    /// `X-Dtable-Node: <node id>`; prints its bound address, then serves until killed.
    Responder(responder::Args),
    /// Failover of issue 4 on a real loopback cluster (etcd, control plane, 3 sims with agents,
    /// proxy): time from a server or host crash to the first successful request through the
    /// proxy, and failed requests and duration of a planned drain under write load.
    Failover(failover::Args),
}

fn main() -> anyhow::Result<()> {
    // Warnings only by default: a broken watch or a failed write would make the figures
    // meaningless and must show; the control plane's routine "stepped down" at shutdown need not.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,dtable_controlplane::election=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().bench {
        Bench::Placement(args) => placement::run(&args),
        Bench::Responder(args) => responder::run(&args),
        Bench::Propagation(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(propagation::run(args)),
        Bench::Failover(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(failover::run(args)),
    }
}
