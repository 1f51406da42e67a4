//! Leader election on etcd's election API. The election lease is kept alive by its own task
//! while `campaign` blocks (otherwise the lease can expire before the campaign returns), and a
//! leader steps down the moment that lease is lost.

use dtable_core::etcd::{Backoff, CALL_TIMEOUT, LeaseKeeper, ViewRx, lease_lost};
use etcd_client::Client;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::ControlPlaneConfig;
use crate::leader::{LeaderSettings, Stepdown, lead};
use crate::writer::{AssignmentWriter, Leadership};

/// Campaigns, leads while elected, and campaigns again, until shutdown. `is_leader_tx` tells
/// the API whether this instance leads.
pub async fn run_election(
    client: Client,
    cfg: ControlPlaneConfig,
    view_rx: ViewRx,
    is_leader_tx: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::default();
    while !shutdown.is_cancelled() {
        // Stopped explicitly, after shutdown is handled, so a shutdown never looks like a lost lease.
        let stop = CancellationToken::new();
        let (keeper, mut lease_rx) = match LeaseKeeper::grant(&client, cfg.election_ttl).await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "cannot grant the election lease; retrying");
                backoff.wait(&shutdown).await;
                continue;
            }
        };
        let lease = keeper.id();
        tokio::spawn(keeper.run(stop.clone()));
        let mut c = client.clone();
        let campaign = c.campaign(cfg.keys.election(), cfg.name.clone(), lease);
        let won = tokio::select! {
            biased;
            _ = shutdown.cancelled() => None,
            _ = lease_lost(&mut lease_rx) => None,
            r = campaign => match r {
                Ok(resp) => resp.leader().map(|l| Leadership {
                    key: l.key().to_vec(),
                    create_revision: l.rev(),
                    lease,
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "campaign failed; retrying");
                    None
                }
            },
        };
        if let Some(leadership) = won {
            backoff.reset();
            tracing::info!(instance = %cfg.name, election_key = %String::from_utf8_lossy(&leadership.key), revision = leadership.create_revision, "elected leader");
            metrics::gauge!("dtable_controlplane_is_leader").set(1.0);
            is_leader_tx.send_replace(true);
            let writer =
                AssignmentWriter::new(client.clone(), cfg.keys.clone(), leadership.clone());
            let settings = LeaderSettings {
                debounce: cfg.debounce,
                repair_interval: cfg.repair_interval,
                auto_rebalance: cfg.auto_rebalance,
                handoff: cfg.handoff,
            };
            let why = lead(
                writer,
                view_rx.clone(),
                lease_rx.clone(),
                leadership.create_revision,
                settings,
                shutdown.clone(),
            )
            .await;
            is_leader_tx.send_replace(false);
            metrics::gauge!("dtable_controlplane_is_leader").set(0.0);
            tracing::warn!(reason = ?why, "stepped down");
            if why != Stepdown::Shutdown {
                backoff.wait(&shutdown).await;
            }
        } else if !shutdown.is_cancelled() {
            backoff.wait(&shutdown).await;
        }
        stop.cancel();
        // Revoking lets a standby take over at once instead of after the TTL.
        let mut c = client.clone();
        let _ = tokio::time::timeout(CALL_TIMEOUT, c.lease_revoke(lease)).await;
    }
}
