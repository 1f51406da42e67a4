//! The agent beside a read replica (`--role slave`): it registers the slave under
//! `dtable-cluster/slaves/<node_id>` with a lease while the slave answers its probe, and
//! revokes that lease as soon as the slave is judged dead. A slave owns no bucket and serves
//! only reads of bases it loads through the proxy, so there is nothing to fence and nothing to
//! push: losing the registration only takes the slave out of the read rotation.

use dtable_core::LeaseTiming;
use dtable_core::etcd::{Backoff, LeaseState};
use etcd_client::Client;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::health::Health;
use crate::registration::{RegisterError, lease_when_healthy, register, registration_key, revoke};

/// Why a registration ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The health probe judged the slave dead.
    ServerDead,
    /// The lease could not be renewed, or etcd dropped it.
    LeaseLost,
    /// SIGTERM or SIGINT.
    Shutdown,
}

/// Registers the slave while it is healthy, until shutdown.
pub(crate) struct SlaveSupervisor {
    /// The validated configuration; its role is `slave`.
    pub cfg: AgentConfig,
    /// etcd.
    pub client: Client,
    /// The probe's verdicts.
    pub health_rx: watch::Receiver<Health>,
}

impl SlaveSupervisor {
    /// Runs until `shutdown`, then revokes the registration, if any, and returns.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let key = registration_key(&self.cfg);
        let timing = LeaseTiming::new(self.cfg.lease_ttl).expect("validated at start-up");
        tracing::info!(node_id = %self.cfg.node_id, key, ttl = timing.ttl.as_secs(), "slave agent: registering the slave while it is healthy");
        let mut backoff = Backoff::default();
        loop {
            let Some((lease, mut lease_rx, stop_keeper)) = lease_when_healthy(
                &self.client,
                self.cfg.lease_ttl,
                &mut self.health_rx,
                &mut backoff,
                &shutdown,
            )
            .await
            else {
                return;
            };
            let registered =
                register(&self.client, &self.cfg, lease, &mut lease_rx, &shutdown).await;
            let end = match registered {
                Ok(_) => {
                    backoff.reset();
                    metrics::gauge!("dtable_agent_registered").set(1.0);
                    let end = self.serve(&mut lease_rx, &shutdown).await;
                    metrics::gauge!("dtable_agent_registered").set(0.0);
                    Some(end)
                }
                Err(RegisterError::Shutdown) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "slave registration failed; starting over with a new lease");
                    None
                }
            };
            stop_keeper.cancel();
            if let Some(end) = end {
                let health = *self.health_rx.borrow();
                let why = match end {
                    End::ServerDead => health.why_dead(),
                    End::LeaseLost => "the lease could not be renewed".to_owned(),
                    End::Shutdown => "shutting down".to_owned(),
                };
                tracing::warn!(node_id = %self.cfg.node_id, lease = format!("{lease:x}"), reason = ?end, why, "removing the slave's registration");
                metrics::counter!("dtable_agent_lease_revokes_total", "mode" => "managed", "reason" => format!("{end:?}"))
                    .increment(1);
            }
            revoke(&self.client, lease).await;
            if shutdown.is_cancelled() {
                return;
            }
            if end.is_none() {
                backoff.wait(&shutdown).await;
            }
        }
    }

    /// Holds the registration until the slave dies, the lease is lost, or shutdown.
    async fn serve(
        &mut self,
        lease_rx: &mut watch::Receiver<LeaseState>,
        shutdown: &CancellationToken,
    ) -> End {
        loop {
            if matches!(&*lease_rx.borrow_and_update(), LeaseState::Lost { .. }) {
                return End::LeaseLost;
            }
            tokio::select! {
                biased;
                _ = self.health_rx.wait_for(|h| !h.healthy()) => return End::ServerDead,
                _ = shutdown.cancelled() => return End::Shutdown,
                r = lease_rx.changed() => if r.is_err() { return End::LeaseLost },
            }
        }
    }
}
