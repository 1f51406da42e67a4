//! The placement benchmark: how long one call of the pure `place()` takes for a large cluster,
//! from an empty table, after a node leaves a balanced table, and after a node joins one.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::Context;
use dtable_core::placement::{Eligible, Policy, Table, place};
use dtable_core::{BUCKET_COUNT, NodeId};

use crate::stats::{Summary, us};

/// The expectation of issue 2: one placement well under a millisecond.
const EXPECTED_P99: Duration = Duration::from_millis(1);

/// Untimed calls before each scenario, so caches and the allocator are warm.
const WARMUP_CALLS: usize = 10;

/// Flags of `dtable-bench placement`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of eligible nodes, each with a pseudo-random weight in 1..=4.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub nodes: u32,
    /// Timed calls per scenario.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub iterations: u32,
    /// Seed of the weight generator; the same seed gives the same cluster.
    #[arg(long, default_value_t = 0x5eed_d7ab)]
    pub seed: u64,
}

/// One timed scenario: the table placement starts from and the nodes it places over.
struct Scenario {
    /// Shown in the table.
    name: &'static str,
    /// The current assignment.
    current: Table,
    /// The eligible nodes.
    nodes: Vec<Eligible>,
}

/// SplitMix64: a tiny deterministic generator, so the cluster does not depend on a crate's
/// version or on the platform.
struct SplitMix64(u64);

impl SplitMix64 {
    /// The next 64 pseudo-random bits.
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A weight in 1..=4.
    fn weight(&mut self) -> u32 {
        1 + (self.next() % 4) as u32
    }
}

/// Runs the three scenarios and prints one table.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let mut rng = SplitMix64(args.seed);
    let nodes: Vec<Eligible> = (0..args.nodes)
        .map(|i| {
            Ok(Eligible {
                node: NodeId::new(format!("dtable-server-p{i:06}"))?,
                weight: rng.weight(),
            })
        })
        .collect::<Result<_, dtable_core::NodeError>>()
        .context("building node ids")?;
    let policy = Policy::default();
    let empty: Table = vec![None; BUCKET_COUNT];
    let balanced = place(&empty, &nodes, &policy).table;

    // The leaver is the owner of bucket 00, so its leave has buckets to re-place.
    let leaver = balanced[0].clone().context("bucket 00 is unassigned")?;
    let without_leaver: Vec<Eligible> =
        nodes.iter().filter(|n| n.node != leaver).cloned().collect();
    let mut with_joiner = nodes.clone();
    with_joiner.push(Eligible {
        node: NodeId::new("dtable-server-pjoin")?,
        weight: rng.weight(),
    });

    let total_weight: u64 = nodes.iter().map(|n| u64::from(n.weight)).sum();
    println!(
        "placement: {} nodes (weights 1..=4, seed {:#x}, total weight {total_weight}), \
         {} timed calls per scenario after {WARMUP_CALLS} warm-up calls",
        args.nodes, args.seed, args.iterations
    );
    println!(
        "{:<28} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "scenario", "moves", "p50 µs", "p99 µs", "mean µs", "max µs"
    );
    let scenarios = [
        Scenario {
            name: "(a) empty table",
            current: empty,
            nodes: nodes.clone(),
        },
        Scenario {
            name: "(b) balanced, one leaves",
            current: balanced.clone(),
            nodes: without_leaver,
        },
        Scenario {
            name: "(c) balanced, one joins",
            current: balanced,
            nodes: with_joiner,
        },
    ];
    let mut worst = Duration::ZERO;
    for s in &scenarios {
        let moves = place(&s.current, &s.nodes, &policy).moves.len();
        let sum = time_calls(s, &policy, args.iterations as usize)?;
        worst = worst.max(sum.p99);
        println!(
            "{:<28} {moves:>6} {} {} {} {}",
            s.name,
            us(sum.p50),
            us(sum.p99),
            us(sum.mean),
            us(sum.max)
        );
    }
    let verdict = if worst < EXPECTED_P99 {
        "meets"
    } else {
        "MISSES"
    };
    println!(
        "worst p99 {:.1} µs: {verdict} the expectation of < {} µs per call",
        worst.as_secs_f64() * 1e6,
        EXPECTED_P99.as_micros()
    );
    Ok(())
}

/// Times `iterations` calls of `place()` on one scenario.
fn time_calls(s: &Scenario, policy: &Policy, iterations: usize) -> anyhow::Result<Summary> {
    for _ in 0..WARMUP_CALLS {
        black_box(place(black_box(&s.current), black_box(&s.nodes), policy));
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let start = Instant::now();
        let placement = black_box(place(black_box(&s.current), black_box(&s.nodes), policy));
        samples.push(start.elapsed());
        drop(placement);
    }
    Summary::of(&samples).context("no samples")
}
