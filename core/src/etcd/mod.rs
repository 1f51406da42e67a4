//! The etcd layer shared by every binary: connecting, keeping a lease alive on the contract's
//! timing, and watching the cluster into an immutable [`ClusterView`](crate::ClusterView).

mod lease;
mod watch;

use std::time::Duration;

pub use etcd_client;
pub use lease::{LeaseError, LeaseKeeper, LeaseState, lease_lost};
pub use watch::{ClusterWatch, ViewRx};

/// How to reach etcd.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    /// `host:port` endpoints; any one that answers will do.
    pub endpoints: Vec<String>,
    /// etcd user for password auth.
    pub user: Option<String>,
    /// Password of `user`.
    pub password: Option<String>,
}

/// Why etcd could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint given.
    #[error("no etcd endpoint configured (--etcd host:port,...)")]
    NoEndpoints,
    /// The client failed to connect.
    #[error("cannot connect to etcd at {endpoints}: {source}")]
    Connect {
        /// The endpoints tried.
        endpoints: String,
        /// Why.
        source: etcd_client::Error,
    },
}

/// Time allowed for a single unary etcd call before it counts as failed.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to etcd. Every request carries require-leader, so a member cut off from its
/// cluster fails our calls and watches instead of serving stale data.
pub async fn connect(opts: &EtcdOptions) -> Result<etcd_client::Client, EtcdError> {
    if opts.endpoints.is_empty() {
        return Err(EtcdError::NoEndpoints);
    }
    let mut co = etcd_client::ConnectOptions::new()
        .with_require_leader(true)
        .with_connect_timeout(Duration::from_secs(3))
        // etcd refuses pings more often than its --grpc-keepalive-min-time (5 s by default)
        // with GOAWAY "too_many_pings", which would break every watch.
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true);
    if let (Some(u), Some(p)) = (&opts.user, &opts.password) {
        co = co
            .with_user(u.clone(), p.clone())
            .with_auto_token_refresh(true);
    }
    let endpoints: Vec<String> = opts
        .endpoints
        .iter()
        .map(|e| {
            if e.contains("://") {
                e.clone()
            } else {
                format!("http://{e}")
            }
        })
        .collect();
    etcd_client::Client::connect(&endpoints, Some(co))
        .await
        .map_err(|source| EtcdError::Connect {
            endpoints: endpoints.join(","),
            source,
        })
}

/// Exponential back-off between retries of a failing etcd operation: 200 ms doubling to 5 s.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::MIN }
    }
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(5);

    /// The next wait, for logs.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Back to the shortest wait, after a success.
    pub fn reset(&mut self) {
        self.next = Self::MIN;
    }

    /// Waits the current delay (or until `shutdown`), then doubles it.
    pub async fn wait(&mut self, shutdown: &tokio_util::sync::CancellationToken) {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(self.next) => {}
        }
        self.next = (self.next * 2).min(Self::MAX);
    }
}
