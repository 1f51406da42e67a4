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

/// The host's CLOCK_MONOTONIC in nanoseconds: one clock for every process on the host, so an
/// agent and its server can exchange absolute deadlines.
pub fn monotonic_ns() -> u64 {
    let ts =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    (ts.tv_sec() as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec() as u64)
}

/// `at` as CLOCK_MONOTONIC nanoseconds.
pub fn to_monotonic_ns(at: std::time::Instant) -> u64 {
    let now = std::time::Instant::now();
    let base = monotonic_ns();
    if at >= now {
        base.saturating_add((at - now).as_nanos() as u64)
    } else {
        base.saturating_sub((now - at).as_nanos() as u64)
    }
}

/// A CLOCK_MONOTONIC deadline as an `Instant` of this process.
pub fn from_monotonic_ns(deadline_ns: u64) -> std::time::Instant {
    let now = std::time::Instant::now();
    let base = monotonic_ns();
    if deadline_ns >= base {
        now + std::time::Duration::from_nanos(deadline_ns - base)
    } else {
        now.checked_sub(std::time::Duration::from_nanos(base - deadline_ns))
            .unwrap_or(now)
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
    fn monotonic_round_trip() {
        let at = std::time::Instant::now() + Duration::from_secs(3);
        let back = from_monotonic_ns(to_monotonic_ns(at));
        let diff = if back > at { back - at } else { at - back };
        assert!(diff < Duration::from_millis(5), "{diff:?}");
    }

    #[test]
    fn too_short_ttls_are_refused() {
        for ttl in [-1, 0, 1, 2] {
            assert!(LeaseTiming::new(ttl).is_err(), "{ttl}");
        }
    }
}
