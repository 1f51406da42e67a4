//! The agent's state machine: wait for a healthy server, register under a lease, serve while
//! the lease holds, and fence the server before revoking, following the contract's revoke rule:
//! revoke only after the server acknowledged `fenced`, its stream ended, or the serving lease
//! it was given lapsed. A server that is merely slow is never double-booked.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use dtable_core::etcd::{Backoff, LeaseState, ViewRx};
use dtable_core::{ClusterView, LeaseTiming};
use etcd_client::Client;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::health::Health;
use crate::local::{Local, ServerEvent};
use crate::push::Phase;
use crate::registration::{RegisterError, lease_when_healthy, mark_draining, register};

/// Why serving ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The lease could not be renewed (its local deadline passed) or etcd dropped it.
    LeaseLost,
    /// The health probe declared the server dead.
    ServerDead,
    /// Drained after SIGTERM: the node holds no buckets any more.
    Drained,
    /// The drain took longer than --drain-timeout.
    DrainTimeout,
}

/// Everything the state machine drives.
pub(crate) struct Supervisor {
    pub cfg: AgentConfig,
    pub client: Client,
    pub timing: LeaseTiming,
    pub view_rx: ViewRx,
    pub health_rx: watch::Receiver<Health>,
    pub phase_tx: watch::Sender<Phase>,
    pub events_rx: mpsc::UnboundedReceiver<ServerEvent>,
    pub local: Local,
}

impl Supervisor {
    /// Runs until drained after `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        loop {
            self.phase_tx.send_replace(Phase::Fenced);
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
            let since = match register(&self.client, &self.cfg, lease, &mut lease_rx, &shutdown)
                .await
            {
                Ok(rev) => rev,
                Err(e) => {
                    if !matches!(e, RegisterError::Shutdown) {
                        tracing::warn!(error = %e, "registration failed; starting over with a new lease");
                    }
                    stop_keeper.cancel();
                    crate::registration::revoke(&self.client, lease).await;
                    if shutdown.is_cancelled() {
                        return;
                    }
                    backoff.wait(&shutdown).await;
                    continue;
                }
            };
            backoff.reset();
            self.local.lease.store(lease, Ordering::SeqCst);
            metrics::gauge!("dtable_agent_registered").set(1.0);
            let end = self.serve(lease, since, &mut lease_rx, &shutdown).await;
            metrics::gauge!("dtable_agent_registered").set(0.0);
            tracing::warn!(reason = ?end, "leaving: fencing the server before revoking the lease");
            self.fence(end).await;
            stop_keeper.cancel();
            crate::registration::revoke(&self.client, lease).await;
            metrics::counter!("dtable_agent_lease_revokes_total", "mode" => "managed", "reason" => format!("{end:?}"))
                .increment(1);
            self.local.lease.store(0, Ordering::SeqCst);
            match end {
                End::Drained | End::DrainTimeout => return,
                End::LeaseLost | End::ServerDead => {
                    metrics::counter!("dtable_agent_fences_total", "reason" => format!("{end:?}"))
                        .increment(1);
                    if shutdown.is_cancelled() {
                        return;
                    }
                }
            }
        }
    }

    /// Serves under `lease` until it is lost, the server dies, or a drain ends.
    async fn serve(
        &mut self,
        lease: i64,
        since: i64,
        lease_rx: &mut watch::Receiver<LeaseState>,
        shutdown: &CancellationToken,
    ) -> End {
        let mut drain_until: Option<Instant> = None;
        let mut view_rx = self.view_rx.clone();
        loop {
            let deadline = match &*lease_rx.borrow_and_update() {
                LeaseState::Alive { deadline } => *deadline,
                LeaseState::Lost { .. } => return End::LeaseLost,
            };
            self.phase_tx.send_if_modified(|p| {
                let next = Phase::Serving { since, deadline };
                let changed = *p != next;
                *p = next;
                changed
            });
            let view = view_rx.borrow_and_update().clone();
            if drain_until.is_some()
                && holds_nothing(&view, &self.cfg.node_id)
                && view.revision >= since
            {
                tracing::info!("drained: the node holds no buckets");
                return End::Drained;
            }
            self.ack_for_absent_server().await;
            // Only polled while draining.
            let drain_deadline = drain_until.unwrap_or_else(Instant::now);
            tokio::select! {
                biased;
                _ = self.health_rx.wait_for(|h| !h.healthy()) => return End::ServerDead,
                _ = shutdown.cancelled(), if drain_until.is_none() => {
                    drain_until = Some(Instant::now() + self.cfg.drain_timeout);
                    match mark_draining(&self.client, &self.cfg, lease).await {
                        Ok(true) => tracing::info!(timeout = ?self.cfg.drain_timeout, "draining: buckets are handed away"),
                        Ok(false) => tracing::warn!("draining: our registration changed; cannot mark it"),
                        Err(e) => tracing::warn!(error = %e, "draining: cannot mark the registration; the drain may time out"),
                    }
                }
                _ = sleep_until(drain_deadline), if drain_until.is_some() => {
                    tracing::warn!(timeout = ?self.cfg.drain_timeout, "drain timed out");
                    return End::DrainTimeout;
                }
                // The keeper reports every renewal and the loss; a closed channel is a loss.
                r = lease_rx.changed() => if r.is_err() { return End::LeaseLost },
                _ = view_rx.changed() => {}
            }
        }
    }

    /// Acknowledges releases on the server's behalf when no server is listening: a server
    /// cut off from its agent has fenced itself, so nothing is being served.
    async fn ack_for_absent_server(&self) {
        if !self.local.contact.nobody_since(self.timing.safe_for()) {
            return;
        }
        let state = Arc::clone(&self.local.state_rx.borrow());
        for &(bucket, move_id) in &state.release {
            if let Err(e) = self.local.ack_release(bucket, Some(move_id)).await {
                tracing::warn!(%bucket, error = %e, "cannot acknowledge a release for an absent server");
            }
        }
    }

    /// Tells the server to stop serving, then waits for the first of: its acknowledgement,
    /// the end of its stream (no server listening), or the lapse of the serving lease it was
    /// last given.
    async fn fence(&mut self, end: End) {
        let lapse = match *self.phase_tx.borrow() {
            Phase::Serving { deadline, .. } => deadline,
            Phase::Fenced => Instant::now(),
        };
        while self.events_rx.try_recv().is_ok() {}
        self.phase_tx.send_replace(Phase::Fenced);
        let fenced_at = Instant::now();
        let window = self.timing.safe_for();
        let how = loop {
            if self.local.contact.nobody_since(window) {
                break "no server listening";
            }
            if end == End::LeaseLost && Instant::now() >= lapse {
                break "serving lease lapsed";
            }
            tokio::select! {
                Some(ServerEvent::FencedAck) = self.events_rx.recv() => break "server acknowledged",
                _ = self.local.contact.ended.notified() => {}
                _ = sleep_until(lapse) => break "serving lease lapsed",
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            }
        };
        tracing::info!(
            how,
            waited_ms = fenced_at.elapsed().as_millis() as u64,
            "server fenced"
        );
    }
}

/// Whether `node` owns no bucket and releases none.
fn holds_nothing(view: &ClusterView, node: &dtable_core::NodeId) -> bool {
    !view
        .assignment
        .iter()
        .flatten()
        .any(|a| a.owner.as_ref() == Some(node))
}
