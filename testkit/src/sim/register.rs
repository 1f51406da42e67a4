//! Self-registration (`--self-register`): the sim registers itself as SeaTable's enterprise
//! dtable-server does when it has a `cluster_config`, with no agent in between. It grants its
//! own lease (`--lease-ttl`, 90 s by default), puts its record at `<prefix><node_id>` on it,
//! and keeps the lease alive every TTL/3. When the lease is gone (revoked by a seatable-mode
//! agent, or expired while the process was paused) it registers again with a new one. On a
//! clean shutdown it revokes its lease; after a kill -9 the registration stays until the TTL
//! runs out, which is what a seatable-mode agent is there to cut short.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dtable_core::etcd::CALL_TIMEOUT;
use dtable_core::{KeyLayout, NodeId, NodeRecord, NodeState};
use etcd_client::{Client, PutOptions};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::SelfRegister;

/// Pause before registering again after a failure or a lost lease.
const RETRY: Duration = Duration::from_millis(500);

/// The self-registration task and what it shares with the sim's state page.
pub(crate) struct SelfRegistration {
    /// etcd.
    client: Client,
    /// `<prefix><node_id>`.
    key: String,
    /// The node id, valid for the cluster (`dtable-server-` prefix).
    node_id: NodeId,
    /// TTL, URLs.
    options: SelfRegister,
    /// The lease the record is on now, 0 while unregistered.
    lease: Arc<AtomicI64>,
}

impl SelfRegistration {
    /// A registration of `node_id` at its key under `keys`.
    pub(crate) fn new(
        client: Client,
        keys: &KeyLayout,
        node_id: NodeId,
        options: SelfRegister,
    ) -> SelfRegistration {
        SelfRegistration {
            client,
            key: keys.node(&node_id),
            node_id,
            options,
            lease: Arc::new(AtomicI64::new(0)),
        }
    }

    /// The key registered.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// The current lease (0 while unregistered), shared with the state page.
    pub(crate) fn lease(&self) -> Arc<AtomicI64> {
        Arc::clone(&self.lease)
    }

    /// Registers the sim listening at `addr`, keeps the registration alive and registers
    /// again whenever it is lost, until `shutdown`; then revokes the lease.
    pub(crate) async fn run(self, addr: SocketAddr, shutdown: CancellationToken) {
        let record = self.record(addr);
        loop {
            let lease = tokio::select! {
                _ = shutdown.cancelled() => return,
                granted = self.register(&record) => granted,
            };
            let lease = match lease {
                Ok(lease) => lease,
                Err(e) => {
                    tracing::warn!(key = self.key, error = e, "cannot register; retrying");
                    if pause(&shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            self.lease.store(lease, Ordering::SeqCst);
            tracing::info!(
                key = self.key,
                lease = format!("{lease:x}"),
                ttl = self.options.ttl,
                "registered itself"
            );
            let why = tokio::select! {
                _ = shutdown.cancelled() => {
                    self.lease.store(0, Ordering::SeqCst);
                    let revoked = timeout(CALL_TIMEOUT, self.client.clone().lease_revoke(lease)).await;
                    tracing::info!(key = self.key, lease = format!("{lease:x}"), ok = matches!(revoked, Ok(Ok(_))), "left: lease revoked");
                    return;
                }
                why = self.keep_alive(lease) => why,
            };
            self.lease.store(0, Ordering::SeqCst);
            tracing::warn!(
                key = self.key,
                lease = format!("{lease:x}"),
                why,
                "registration lost; registering again"
            );
            if pause(&shutdown).await {
                return;
            }
        }
    }

    /// The record, as the DESIGN's node record JSON.
    fn record(&self, addr: SocketAddr) -> String {
        let local_node_url = self
            .options
            .local_node_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}/"));
        NodeRecord {
            node_id: self.node_id.clone(),
            node_url: self
                .options
                .node_url
                .clone()
                .unwrap_or_else(|| local_node_url.clone()),
            local_node_url,
            role: dtable_core::node::ROLE_SERVER.to_owned(),
            state: NodeState::Active,
            weight: 1,
            version: format!("sim-{}", env!("CARGO_PKG_VERSION")),
            started_at: rfc3339(SystemTime::now()),
            // Like SeaTable's own server: no agent acknowledges its releases.
            agent: None,
        }
        .to_json()
    }

    /// Grants a lease and puts the record on it; returns the lease.
    async fn register(&self, record: &str) -> Result<i64, String> {
        let mut client = self.client.clone();
        let grant = timeout(CALL_TIMEOUT, client.lease_grant(self.options.ttl, None))
            .await
            .map_err(|_| "lease grant timed out".to_owned())?
            .map_err(|e| format!("lease grant: {e}"))?;
        let put = client.put(
            self.key.as_str(),
            record,
            Some(PutOptions::new().with_lease(grant.id())),
        );
        match timeout(CALL_TIMEOUT, put).await {
            Ok(Ok(_)) => Ok(grant.id()),
            failed => {
                let _ = timeout(CALL_TIMEOUT, client.lease_revoke(grant.id())).await;
                Err(match failed {
                    Ok(Err(e)) => format!("put: {e}"),
                    _ => "put timed out".to_owned(),
                })
            }
        }
    }

    /// Keeps `lease` alive every TTL/3; returns why it could not.
    async fn keep_alive(&self, lease: i64) -> String {
        let mut client = self.client.clone();
        let (mut keeper, mut stream) = match client.lease_keep_alive(lease).await {
            Ok(pair) => pair,
            Err(e) => return format!("keep-alive: {e}"),
        };
        let period = Duration::from_secs(self.options.ttl.max(1) as u64) / 3;
        loop {
            tokio::time::sleep(period).await;
            if let Err(e) = keeper.keep_alive().await {
                return format!("keep-alive: {e}");
            }
            match timeout(CALL_TIMEOUT, stream.message()).await {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => {}
                Ok(Ok(Some(_))) => return "the lease is gone (revoked or expired)".to_owned(),
                Ok(Ok(None)) => return "keep-alive stream ended".to_owned(),
                Ok(Err(e)) => return format!("keep-alive: {e}"),
                Err(_) => return "keep-alive timed out".to_owned(),
            }
        }
    }
}

/// Waits [`RETRY`]; returns whether `shutdown` came first.
async fn pause(shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(RETRY) => false,
    }
}

/// `t` as RFC 3339 in UTC, to the second (for humans only, as the record's `started_at`).
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56Z");
    }
}
