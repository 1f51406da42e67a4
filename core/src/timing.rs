//! Lease timing, as the contract fixes it: margin = max(1 s, TTL/10); one keep-alive in
//! flight every (TTL − margin)/4; the local deadline is the send time of the last successful
//! keep-alive + TTL − margin, on the local monotonic clock.

use std::time::Duration;

/// Derived timers of one lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// The TTL etcd granted (it may differ from the one asked for).
    pub ttl: Duration,
    /// Safety margin subtracted from the TTL, so the local deadline falls before etcd's.
    pub margin: Duration,
    /// Time between keep-alives.
    pub interval: Duration,
}

/// A TTL too short to leave room for the margin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lease TTL {ttl_secs} s is below 3 × its margin of {margin_secs} s; use at least 3 s")]
pub struct TimingError {
    /// The TTL refused.
    pub ttl_secs: i64,
    /// Its margin.
    pub margin_secs: u64,
}

impl LeaseTiming {
    /// Timers for a TTL in whole seconds (etcd's unit).
    pub fn new(ttl_secs: i64) -> Result<LeaseTiming, TimingError> {
        let ttl = Duration::from_secs(ttl_secs.max(0) as u64);
        let margin = Duration::from_secs(1).max(ttl / 10);
        if ttl_secs <= 0 || ttl < margin * 3 {
            return Err(TimingError {
                ttl_secs,
                margin_secs: margin.as_secs(),
            });
        }
        Ok(LeaseTiming {
            ttl,
            margin,
            interval: (ttl - margin) / 4,
        })
    }

    /// How long after a keep-alive was sent its success keeps the holder safe.
    pub fn safe_for(&self) -> Duration {
        self.ttl - self.margin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_figures() {
        let t = LeaseTiming::new(90).unwrap();
        assert_eq!(t.margin, Duration::from_secs(9));
        assert_eq!(t.interval, Duration::from_secs(81) / 4);
        assert_eq!(t.safe_for(), Duration::from_secs(81));

        let t = LeaseTiming::new(3).unwrap();
        assert_eq!(t.margin, Duration::from_secs(1));
        assert_eq!(t.interval, Duration::from_millis(500));
    }

    #[test]
    fn too_short_ttls_are_refused() {
        for ttl in [-1, 0, 1, 2] {
            assert!(LeaseTiming::new(ttl).is_err(), "{ttl}");
        }
    }
}
