//! The proxy's metrics, with handles made once so the request path does no registry look-ups.

use std::time::Duration;

use hyper::StatusCode;
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

/// Handles of the proxy's metrics.
pub struct ProxyMetrics {
    /// `dtable_proxy_requests_total{class}` for 1xx..5xx.
    by_class: [Counter; 5],
    /// `dtable_proxy_request_duration_seconds`, client's view.
    duration: Histogram,
    /// `dtable_proxy_upstream_latency_seconds`: time to the upstream's response head.
    pub upstream_latency: Histogram,
    /// `dtable_proxy_held_requests`: requests waiting for their bucket to get an owner.
    pub held: Gauge,
    /// `dtable_proxy_not_owner_retries_total`.
    pub not_owner_retries: Counter,
    /// `dtable_proxy_stale_connection_retries_total`: idempotent requests sent again on a new
    /// connection after a kept-alive one closed under them.
    pub stale_retries: Counter,
    /// `dtable_proxy_websockets_open`.
    pub websockets_open: Gauge,
    /// `dtable_proxy_websockets_closed_on_move_total`.
    pub websockets_closed_on_move: Counter,
}

impl ProxyMetrics {
    /// Registers the metrics with the installed recorder.
    pub fn new() -> ProxyMetrics {
        ProxyMetrics {
            by_class: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|class| counter!("dtable_proxy_requests_total", "class" => class)),
            duration: histogram!("dtable_proxy_request_duration_seconds"),
            upstream_latency: histogram!("dtable_proxy_upstream_latency_seconds"),
            held: gauge!("dtable_proxy_held_requests"),
            not_owner_retries: counter!("dtable_proxy_not_owner_retries_total"),
            stale_retries: counter!("dtable_proxy_stale_connection_retries_total"),
            websockets_open: gauge!("dtable_proxy_websockets_open"),
            websockets_closed_on_move: counter!("dtable_proxy_websockets_closed_on_move_total"),
        }
    }

    /// Counts one answered request.
    pub fn observe(&self, status: StatusCode, took: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.by_class[class].increment(1);
        self.duration.record(took.as_secs_f64());
    }
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The stable codes the slave listener answers with itself (see
/// [`SlaveError`](crate::slaves::SlaveError)).
const SLAVE_REFUSALS: [&str; 5] = [
    "bad_dtable_uuid",
    "no_slave",
    "upstream_unreachable",
    "bad_body",
    "upgrade_unsupported",
];

/// Handles of the slave listener's metrics. Requests answered by each slave are counted by
/// the slave (`dtable_proxy_slave_requests_total{slave}`, see
/// [`Slave`](crate::slaves::Slave)); `dtable_proxy_slaves_healthy` is kept by the pool.
pub struct SlaveMetrics {
    /// `dtable_proxy_slave_refusals_total{code}`: answered by the proxy itself, by code.
    refusals: [Counter; SLAVE_REFUSALS.len()],
    /// `dtable_proxy_slave_fallbacks_total`: served by the bucket's owner for want of a
    /// healthy slave (`--slave-fallback-to-owner`); the routing metrics count them too.
    pub fallbacks: Counter,
    /// `dtable_proxy_slave_retries_total`: sent to the next slave after a connection failure.
    pub retries: Counter,
    /// `dtable_proxy_slave_request_duration_seconds`, client's view.
    duration: Histogram,
}

impl SlaveMetrics {
    /// Registers the metrics with the installed recorder.
    pub fn new() -> SlaveMetrics {
        SlaveMetrics {
            refusals: SLAVE_REFUSALS
                .map(|code| counter!("dtable_proxy_slave_refusals_total", "code" => code)),
            fallbacks: counter!("dtable_proxy_slave_fallbacks_total"),
            retries: counter!("dtable_proxy_slave_retries_total"),
            duration: histogram!("dtable_proxy_slave_request_duration_seconds"),
        }
    }

    /// Counts one request the proxy answered itself with `code`.
    pub fn refused(&self, code: &str) {
        if let Some(i) = SLAVE_REFUSALS.iter().position(|c| *c == code) {
            self.refusals[i].increment(1);
        }
    }

    /// Records how long one request took.
    pub fn observe(&self, took: Duration) {
        self.duration.record(took.as_secs_f64());
    }
}

impl Default for SlaveMetrics {
    fn default() -> Self {
        Self::new()
    }
}
