//! dtable-agent: the sidecar beside one dtable-server. It registers the server in etcd under a
//! lease and keeps that lease alive; when the lease is lost it registers again with a new one;
//! on shutdown it revokes the lease so the server's buckets move at once.

pub mod config;
pub mod registration;

use dtable_core::etcd::{Backoff, CALL_TIMEOUT, EtcdError, connect, lease_lost};
use etcd_client::Client;
use tokio_util::sync::CancellationToken;

pub use config::{AgentConfig, Args};
use registration::{RegisterError, register, start_lease};

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// etcd could not be reached at start-up.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

/// Runs the agent until `shutdown`; then revokes the lease and returns.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let client = connect(&cfg.etcd).await?;
    let mut backoff = Backoff::default();
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        // Stopped explicitly, after shutdown is handled, so a shutdown never looks like a lost lease.
        let stop = CancellationToken::new();
        let (lease, mut lease_rx, _keeper) = match start_lease(&client, cfg.lease_ttl, stop.clone())
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.peek().as_millis() as u64, "cannot grant a lease");
                backoff.wait(&shutdown).await;
                continue;
            }
        };
        match register(&client, &cfg, lease, &mut lease_rx, &shutdown).await {
            Ok(_) => backoff.reset(),
            Err(RegisterError::Shutdown) => {
                stop.cancel();
                revoke(&client, lease).await;
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "registration failed; starting over with a new lease");
                stop.cancel();
                revoke(&client, lease).await;
                backoff.wait(&shutdown).await;
                continue;
            }
        }
        metrics::gauge!("dtable_agent_registered").set(1.0);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                stop.cancel();
                revoke(&client, lease).await;
                metrics::gauge!("dtable_agent_registered").set(0.0);
                return Ok(());
            }
            reason = lease_lost(&mut lease_rx) => {
                metrics::gauge!("dtable_agent_registered").set(0.0);
                metrics::counter!("dtable_agent_reregistrations_total").increment(1);
                tracing::error!(node_id = %cfg.node_id, %reason, "registration lease lost; registering again with a new lease");
                stop.cancel();
                backoff.wait(&shutdown).await;
            }
        }
    }
}

/// Revokes a lease so every key on it goes at once; failures are logged, since the lease then
/// simply expires after its TTL.
pub async fn revoke(client: &Client, lease: i64) {
    let mut client = client.clone();
    match tokio::time::timeout(CALL_TIMEOUT, client.lease_revoke(lease)).await {
        Ok(Ok(_)) => tracing::info!(
            lease = format!("{lease:x}"),
            "lease revoked; registration removed"
        ),
        Ok(Err(e)) => {
            tracing::warn!(lease = format!("{lease:x}"), error = %e, "lease revoke failed; it expires after its TTL")
        }
        Err(_) => tracing::warn!(
            lease = format!("{lease:x}"),
            "lease revoke timed out; it expires after its TTL"
        ),
    }
}
