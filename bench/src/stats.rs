//! Small statistics over latency samples: nearest-rank percentiles, mean and max, and the
//! formatting the benchmark tables share.

use std::time::Duration;

/// The summary of one set of latency samples.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Median (nearest rank).
    pub p50: Duration,
    /// 99th percentile (nearest rank). With fewer than 100 samples this is the maximum or
    /// close to it, so read it together with `count`.
    pub p99: Duration,
    /// Arithmetic mean.
    pub mean: Duration,
    /// Largest sample.
    pub max: Duration,
}

impl Summary {
    /// Summarizes `samples`; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let total: Duration = sorted.iter().sum();
        Some(Summary {
            count: sorted.len(),
            p50: percentile(&sorted, 50.0),
            p99: percentile(&sorted, 99.0),
            mean: total / u32::try_from(sorted.len()).unwrap_or(u32::MAX),
            max: *sorted.last().expect("not empty"),
        })
    }
}

/// The nearest-rank percentile `p` (0 < p <= 100) of `sorted`, which must be sorted and not
/// empty: the smallest sample that at least p % of the samples do not exceed.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds with two decimals, right-aligned in 9 columns.
pub fn ms(d: Duration) -> String {
    format!("{:>9.2}", d.as_secs_f64() * 1e3)
}

/// Microseconds with one decimal, right-aligned in 10 columns.
pub fn us(d: Duration) -> String {
    format!("{:>10.1}", d.as_secs_f64() * 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let sum = Summary::of(&s).unwrap();
        assert_eq!(sum.p50, Duration::from_millis(50));
        assert_eq!(sum.p99, Duration::from_millis(99));
        assert_eq!(sum.max, Duration::from_millis(100));
        let one = Summary::of(&[Duration::from_millis(7)]).unwrap();
        assert_eq!(
            (one.p50, one.p99),
            (Duration::from_millis(7), Duration::from_millis(7))
        );
        assert!(Summary::of(&[]).is_none());
    }
}
