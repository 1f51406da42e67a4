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
