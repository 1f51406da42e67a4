//! Seconds left on each node's lease, asked of etcd (`LeaseTimeToLive`) in parallel, each
//! call with a short timeout, and kept for about a second so that a status page polling every
//! instance does not turn into a stream of etcd calls.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::Client;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

use crate::model::LeaseTtlMap;

/// How long an answer is reused.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// How long one `LeaseTimeToLive` call may take before its lease counts as unknown (-1).
pub const CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// A shared cache of lease TTLs.
#[derive(Clone)]
pub struct LeaseTtls {
    client: Client,
    cached: Arc<Mutex<Cached>>,
}

#[derive(Default)]
struct Cached {
    /// When `ttls` was fetched; `None` before the first fetch.
    at: Option<Instant>,
    /// Lease id → seconds left, -1 when etcd did not say.
    ttls: LeaseTtlMap,
}

impl LeaseTtls {
    /// An empty cache asking etcd through `client`.
    pub fn new(client: Client) -> LeaseTtls {
        LeaseTtls {
            client,
            cached: Arc::default(),
        }
    }

    /// The TTLs of `leases` (0, "no lease", is skipped): from the cache when it is younger
    /// than [`MAX_AGE`] and knows every one of them, else fresh from etcd. Never fails: a
    /// lease etcd does not answer for within [`CALL_TIMEOUT`] is -1.
    pub async fn get(&self, leases: impl IntoIterator<Item = i64>) -> LeaseTtlMap {
        let mut wanted: Vec<i64> = leases.into_iter().filter(|l| *l != 0).collect();
        wanted.sort_unstable();
        wanted.dedup();
        {
            let c = self.cached.lock().expect("lease cache lock");
            let fresh = c.at.is_some_and(|at| at.elapsed() < MAX_AGE);
            if fresh && wanted.iter().all(|l| c.ttls.contains_key(l)) {
                return c.ttls.clone();
            }
        }
        let mut calls = JoinSet::new();
        for lease in wanted {
            let mut client = self.client.clone();
            calls.spawn(async move {
                let ttl = match timeout(CALL_TIMEOUT, client.lease_time_to_live(lease, None)).await
                {
                    Ok(Ok(r)) => r.ttl(),
                    _ => -1,
                };
                (lease, ttl)
            });
        }
        let mut ttls = LeaseTtlMap::new();
        while let Some(done) = calls.join_next().await {
            if let Ok((lease, ttl)) = done {
                ttls.insert(lease, ttl);
            }
        }
        let mut c = self.cached.lock().expect("lease cache lock");
        c.at = Some(Instant::now());
        c.ttls = ttls.clone();
        ttls
    }

    /// Whatever the cache holds now, without asking etcd (for event payloads).
    pub fn cached(&self) -> LeaseTtlMap {
        self.cached.lock().expect("lease cache lock").ttls.clone()
    }
}
