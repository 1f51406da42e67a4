//! Agent mode (`--agent URL`): the sim follows its local agent's `LocalAgent.Watch` stream,
//! as a managed dtable-server does.
//!
//! Every `AgentState` renews the serving lease to now + `serve_for_ms`. `fenced` stops
//! serving everything at once and is acknowledged with `AckFenced`. Otherwise the sim serves
//! exactly `owned` at the given epochs (minus buckets being released): it gives up whatever
//! else it held, and for each `release` entry saves, unloads, gives up and disconnects the
//! bucket's sockets if it holds the bucket, then answers `AckRelease` (also when it does
//! not hold it: acks are idempotent). A timer gives up everything when the lease lapses with
//! no newer message, and so does the end of the stream; the sim then reconnects with a
//! back-off of 100 ms doubling to 2 s.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use dtable_core::Bucket;
use dtable_proto::v1::local_agent_client::LocalAgentClient;
use dtable_proto::v1::{AckFencedRequest, AckReleaseRequest, AgentState, WatchRequest};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use super::SimError;
use super::app::AppState;

/// First pause before reconnecting to the agent.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause before reconnecting to the agent.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long connecting to the agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an ack may take before it is given up (the agent asks again).
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a session with the agent ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    /// The agent could not be reached.
    #[error("connecting to the agent: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The `Watch` call failed or its stream broke.
    #[error("watch stream: {0}")]
    Watch(#[from] tonic::Status),
}

/// The task that follows the agent and drives the sim's ownership.
pub(crate) struct AgentFollower {
    /// Where the agent's local gRPC API listens.
    endpoint: Endpoint,
    /// The sim's shared state: ownership, bases, sockets.
    state: AppState,
    /// Releases already acknowledged, so each (bucket, move id) is acked once, not on every
    /// message that still lists it.
    acked: std::sync::Mutex<BTreeSet<(Bucket, i64)>>,
}

impl AgentFollower {
    /// A follower of the agent at `url` (`http://host:port`).
    ///
    /// # Errors
    /// [`SimError::BadAgentUrl`] if `url` is not a valid URI.
    pub(crate) fn new(url: &str, state: AppState) -> Result<AgentFollower, SimError> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| SimError::BadAgentUrl(format!("{url:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT);
        Ok(AgentFollower {
            endpoint,
            state,
            acked: Default::default(),
        })
    }

    /// Follows the agent until `shutdown`, reconnecting with back-off whenever the stream
    /// ends, and giving up every bucket each time it does.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = self.session(&mut backoff) => outcome,
            };
            let held = self.state.ownership.disown_all("agent stream ended");
            match outcome {
                Ok(()) => tracing::warn!(held, "the agent ended the watch stream"),
                Err(e) => tracing::warn!(held, error = %e, "lost the agent"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection: watches and applies every message, fencing when the serving lease
    /// lapses, until the stream ends.
    async fn session(&self, backoff: &mut Duration) -> Result<(), SessionError> {
        let channel = self.endpoint.connect().await?;
        let mut client = LocalAgentClient::new(channel);
        let mut stream = client.watch(WatchRequest {}).await?.into_inner();
        tracing::info!(agent = %self.endpoint.uri(), "watching the agent");
        let own = &self.state.ownership;
        loop {
            let lapse = own.lapse_deadline();
            let message = tokio::select! {
                message = stream.message() => message?,
                () = sleep_until(lapse) => {
                    let held = own.disown_all("serving lease lapsed");
                    tracing::warn!(held, "the serving lease lapsed: fenced");
                    continue;
                }
            };
            let Some(state) = message else {
                return Ok(());
            };
            *backoff = BACKOFF_MIN;
            self.apply(&mut client, state).await;
        }
    }

    /// Applies one message of the stream.
    async fn apply(&self, client: &mut LocalAgentClient<Channel>, state: AgentState) {
        let received = Instant::now();
        let own = &self.state.ownership;
        own.set_revision(state.revision);
        if state.fenced {
            own.disown_all("fenced by the agent");
            let ack = client.ack_fenced(AckFencedRequest {});
            if let Err(e) = with_timeout(ack).await {
                tracing::warn!(error = %e, "AckFenced failed");
            }
            return;
        }
        let releases: Vec<(Bucket, i64)> = state
            .release
            .iter()
            .filter_map(|r| parse_bucket(&r.bucket).map(|b| (b, r.move_id)))
            .collect();
        let releasing: BTreeSet<Bucket> = releases.iter().map(|(b, _)| *b).collect();
        let wanted: BTreeMap<Bucket, i64> = state
            .owned
            .iter()
            .filter_map(|o| parse_bucket(&o.bucket).map(|b| (b, o.epoch)))
            .filter(|(b, _)| !releasing.contains(b))
            .collect();
        if state.serve_for_ms == 0 {
            own.disown_all("no serving lease left");
        } else {
            // The absolute deadline on the host's monotonic clock is immune to a delayed
            // message (a paused sim reading its backlog); the relative one is the fallback.
            let serve_until = match state.deadline_monotonic_ns {
                0 => received + Duration::from_millis(state.serve_for_ms),
                ns => dtable_core::timing::from_monotonic_ns(ns).into(),
            };
            own.reconcile(&wanted, Some(serve_until), &releasing);
        }
        {
            // Forget acks of releases no longer listed: their moves have ended.
            let mut acked = self
                .acked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            acked.retain(|r| releases.contains(r));
        }
        for (bucket, move_id) in releases {
            let done = self
                .acked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&(bucket, move_id));
            if done {
                continue;
            }
            self.release(bucket).await;
            let ack = client.ack_release(AckReleaseRequest {
                bucket: bucket.to_string(),
                move_id,
            });
            match with_timeout(ack).await {
                Ok(()) => {
                    tracing::info!(%bucket, move_id, "acknowledged the release");
                    self.acked
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert((bucket, move_id));
                }
                Err(e) => tracing::warn!(%bucket, move_id, error = %e, "AckRelease failed"),
            }
        }
    }

    /// Saves, unloads and gives up `bucket` and disconnects its sockets, if it is held.
    async fn release(&self, bucket: Bucket) {
        let own = &self.state.ownership;
        let Some(term) = own.begin_release(bucket) else {
            return;
        };
        match &self.state.bases {
            Some(bases) => bases.release(own, bucket, term).await,
            None => own.disown(bucket, "released"),
        }
        self.state.sockets.disconnect_bucket(bucket, own.node_id());
        tracing::info!(%bucket, epoch = term.epoch, "released the bucket");
    }
}

/// A bucket name from the agent; a malformed one is logged and skipped.
fn parse_bucket(raw: &str) -> Option<Bucket> {
    raw.parse()
        .map_err(|e| tracing::warn!(error = %e, "the agent sent a malformed bucket"))
        .ok()
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Awaits an ack call for at most [`ACK_TIMEOUT`].
async fn with_timeout<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<(), tonic::Status> {
    match tokio::time::timeout(ACK_TIMEOUT, call).await {
        Ok(result) => result.map(|_| ()),
        Err(_) => Err(tonic::Status::deadline_exceeded("ack timed out")),
    }
}
