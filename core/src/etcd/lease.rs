//! The lease keeper: one keep-alive in flight every (TTL − margin)/4, using the TTL etcd
//! granted, and a local deadline of (send time of the last success) + TTL − margin on the
//! monotonic clock. Once the deadline passes, or etcd says the lease is gone, the lease is
//! reported lost and the keeper stops; the holder must stop acting on it.

use std::time::Duration;

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper as RawKeeper};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::timing::{LeaseTiming, TimingError};

/// The lease as its holder must see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Safe to act on the lease until `deadline` (monotonic).
    Alive {
        /// The local deadline: last successful keep-alive's send time + TTL − margin.
        deadline: Instant,
    },
    /// The lease can no longer be relied on. Final.
    Lost {
        /// Why, for logs.
        reason: String,
    },
}

impl LeaseState {
    /// Time left before the deadline, zero when lost.
    pub fn remaining(&self) -> Duration {
        match self {
            LeaseState::Alive { deadline } => deadline.saturating_duration_since(Instant::now()),
            LeaseState::Lost { .. } => Duration::ZERO,
        }
    }
}

/// Why a lease could not be granted.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// etcd refused or did not answer.
    #[error("lease grant failed: {0}")]
    Grant(#[from] etcd_client::Error),
    /// etcd did not answer in time.
    #[error("lease grant timed out")]
    Timeout,
    /// etcd granted a TTL too short for the margin.
    #[error(transparent)]
    Timing(#[from] TimingError),
}

/// Keeps one lease alive and publishes its [`LeaseState`].
pub struct LeaseKeeper {
    client: Client,
    id: i64,
    timing: LeaseTiming,
    state_tx: watch::Sender<LeaseState>,
}

impl LeaseKeeper {
    /// Grants a lease of `ttl_secs`; the deadline starts from the grant's send time.
    pub async fn grant(
        client: &Client,
        ttl_secs: i64,
    ) -> Result<(LeaseKeeper, watch::Receiver<LeaseState>), LeaseError> {
        LeaseTiming::new(ttl_secs)?;
        let mut client = client.clone();
        let sent = Instant::now();
        let resp = timeout(super::CALL_TIMEOUT, client.lease_grant(ttl_secs, None))
            .await
            .map_err(|_| LeaseError::Timeout)??;
        let timing = LeaseTiming::new(resp.ttl())?;
        let (state_tx, state_rx) = watch::channel(LeaseState::Alive {
            deadline: sent + timing.safe_for(),
        });
        Ok((
            LeaseKeeper {
                client,
                id: resp.id(),
                timing,
                state_tx,
            },
            state_rx,
        ))
    }

    /// The lease id, to attach keys to.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The timers in force, from the granted TTL.
    pub fn timing(&self) -> LeaseTiming {
        self.timing
    }

    /// Another receiver of the state.
    pub fn subscribe(&self) -> watch::Receiver<LeaseState> {
        self.state_tx.subscribe()
    }

    /// Keeps the lease alive until it is lost or `shutdown` fires. Returns the final state.
    /// On shutdown the lease is left alive; the caller revokes it if it wants to.
    pub async fn run(mut self, shutdown: CancellationToken) -> LeaseState {
        let mut stream: Option<(RawKeeper, LeaseKeepAliveStream)> = None;
        let mut deadline = match &*self.state_tx.borrow() {
            LeaseState::Alive { deadline } => *deadline,
            lost => return lost.clone(),
        };
        let mut next = Instant::now() + self.timing.interval;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return self.state_tx.borrow().clone(),
                _ = sleep_until(deadline) => {
                    return self.lose(format!(
                        "no successful keep-alive for {:?}; deadline passed",
                        self.timing.safe_for()
                    ));
                }
                _ = sleep_until(next) => {}
            }
            let sent = Instant::now();
            next = sent + self.timing.interval;
            let budget = deadline.saturating_duration_since(sent);
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return self.state_tx.borrow().clone(),
                r = timeout(budget, keep_alive_once(&mut self.client, self.id, &mut stream)) => r,
            };
            match outcome {
                Ok(Ok(ttl)) if ttl > 0 => {
                    if let Ok(t) = LeaseTiming::new(ttl) {
                        self.timing = t;
                    }
                    deadline = sent + self.timing.safe_for();
                    self.state_tx.send_replace(LeaseState::Alive { deadline });
                    metrics::counter!("dtable_lease_keepalives_total", "result" => "ok")
                        .increment(1);
                }
                Ok(Ok(_)) => {
                    return self.lose("etcd reports the lease expired or revoked".to_owned());
                }
                Ok(Err(e)) => {
                    stream = None;
                    metrics::counter!("dtable_lease_keepalives_total", "result" => "error")
                        .increment(1);
                    tracing::warn!(
                        lease = self.id,
                        error = %e,
                        left_ms = deadline.saturating_duration_since(Instant::now()).as_millis() as u64,
                        "lease keep-alive failed; retrying"
                    );
                    // Retry sooner than a full interval, but never spin.
                    next =
                        Instant::now() + (self.timing.interval / 4).max(Duration::from_millis(100));
                }
                Err(_) => {
                    return self.lose(format!(
                        "keep-alive unanswered until the deadline ({:?} after the last success)",
                        self.timing.safe_for()
                    ));
                }
            }
        }
    }

    fn lose(&self, reason: String) -> LeaseState {
        tracing::error!(lease = self.id, %reason, "lease lost");
        metrics::counter!("dtable_lease_lost_total").increment(1);
        let state = LeaseState::Lost { reason };
        self.state_tx.send_replace(state.clone());
        state
    }
}

/// One keep-alive round trip on the (re-)opened stream; returns the TTL etcd reports.
async fn keep_alive_once(
    client: &mut Client,
    id: i64,
    stream: &mut Option<(RawKeeper, LeaseKeepAliveStream)>,
) -> Result<i64, etcd_client::Error> {
    if stream.is_none() {
        *stream = Some(client.lease_keep_alive(id).await?);
    }
    let (keeper, responses) = stream.as_mut().expect("opened above");
    keeper.keep_alive().await?;
    match responses.message().await? {
        Some(resp) => Ok(resp.ttl()),
        None => Err(etcd_client::Error::WatchError(
            "keep-alive stream closed".into(),
        )),
    }
}

/// Resolves once the lease is lost (or its keeper is gone), with the reason.
pub async fn lease_lost(rx: &mut watch::Receiver<LeaseState>) -> String {
    match rx.wait_for(|s| matches!(s, LeaseState::Lost { .. })).await {
        Ok(state) => match &*state {
            LeaseState::Lost { reason } => reason.clone(),
            LeaseState::Alive { .. } => unreachable!("waited for Lost"),
        },
        Err(_) => "lease keeper stopped".to_owned(),
    }
}
