//! The agent's local API for its server: gRPC `LocalAgent` (a `Watch` stream that carries the
//! serving lease, and the acks) and its HTTP twin for servers that do not speak gRPC.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dtable_core::etcd::CALL_TIMEOUT;
use dtable_core::{Bucket, KeyLayout, NodeId};
use dtable_proto::v1 as pb;
use etcd_client::{Client, PutOptions};
use futures::Stream;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::push::PushState;

/// Something the server told the agent that the supervisor waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEvent {
    /// The server stopped serving everything.
    FencedAck,
}

/// Who is listening: open `Watch` streams and the last HTTP poll.
#[derive(Default)]
pub struct Contact {
    streams: AtomicUsize,
    last_poll: Mutex<Option<Instant>>,
    /// Woken whenever a stream ends.
    pub ended: Notify,
}

impl Contact {
    /// Whether no server can be serving on our word: no stream open and no HTTP poll within
    /// `window` (a poll's answer grants at most that much serving lease).
    pub fn nobody_since(&self, window: Duration) -> bool {
        let polled = self
            .last_poll
            .lock()
            .expect("contact")
            .is_some_and(|t| t.elapsed() < window);
        self.streams.load(Ordering::SeqCst) == 0 && !polled
    }

    fn polled(&self) {
        *self.last_poll.lock().expect("contact") = Some(Instant::now());
    }
}

struct StreamGuard(Arc<Contact>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!("dtable_agent_server_streams").decrement(1.0);
        self.0.ended.notify_waiters();
    }
}

/// Shared by the gRPC service and the HTTP twin.
#[derive(Clone)]
pub struct Local {
    /// This node.
    pub node_id: NodeId,
    /// Key layout, for ack keys.
    pub keys: KeyLayout,
    /// For writing acks.
    pub client: Client,
    /// The state pushed to the server.
    pub state_rx: watch::Receiver<Arc<PushState>>,
    /// Events for the supervisor.
    pub events_tx: mpsc::UnboundedSender<ServerEvent>,
    /// Who listens.
    pub contact: Arc<Contact>,
    /// The registration's lease, 0 when not registered; acks are written under it.
    pub lease: Arc<AtomicI64>,
    /// A message goes out at least this often.
    pub push_interval: Duration,
    /// Prometheus renderer, when installed.
    pub metrics: Option<PrometheusHandle>,
}

/// Why an ack was refused.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    /// Not a bucket name.
    #[error(transparent)]
    Bucket(#[from] dtable_core::BucketError),
    /// No release of that bucket (with that move id) is asked for right now.
    #[error("no release of bucket {0} with move id {1} is in flight")]
    NotAsked(Bucket, i64),
    /// etcd did not take the ack.
    #[error("cannot record the ack in etcd: {0}")]
    Etcd(String),
}

impl Local {
    /// Records that the server released `bucket` for `move_id`: writes
    /// `dtable-cluster/acks/<xx>/<move_id>` under our lease, for the leader to commit the move.
    /// An ack for a release no longer asked for (the move already ended) changes nothing and
    /// is answered `Ok(None)`, so a server's retry ends.
    pub async fn ack_release(
        &self,
        bucket: Bucket,
        move_id: Option<i64>,
    ) -> Result<Option<i64>, AckError> {
        let state = self.state_rx.borrow().clone();
        let asked = state
            .release
            .iter()
            .find(|(b, id)| *b == bucket && move_id.is_none_or(|m| m == *id));
        let Some(&(_, id)) = asked else {
            if move_id.is_none() {
                return Err(AckError::NotAsked(bucket, 0));
            }
            tracing::debug!(%bucket, ?move_id, "ack for a release no longer asked for; ignored");
            return Ok(None);
        };
        if state.acked.contains(&(bucket, id)) {
            return Ok(Some(id)); // already recorded in etcd
        }
        let lease = self.lease.load(Ordering::SeqCst);
        let value = serde_json::json!({"node_id": self.node_id.as_str()}).to_string();
        let mut c = self.client.clone();
        let put = c.put(
            self.keys.ack(bucket, id),
            value,
            Some(PutOptions::new().with_lease(lease)),
        );
        match tokio::time::timeout(CALL_TIMEOUT, put).await {
            Ok(Ok(_)) => {
                metrics::counter!("dtable_agent_releases_acked_total").increment(1);
                tracing::info!(%bucket, move_id = id, "release acknowledged");
                Ok(Some(id))
            }
            Ok(Err(e)) => Err(AckError::Etcd(e.to_string())),
            Err(_) => Err(AckError::Etcd("timed out".into())),
        }
    }

    fn to_proto(&self, s: &PushState) -> pb::AgentState {
        pb::AgentState {
            revision: s.revision,
            owned: s
                .owned
                .iter()
                .map(|(b, e)| pb::OwnedBucket {
                    bucket: b.to_string(),
                    epoch: *e,
                })
                .collect(),
            release: s
                .release
                .iter()
                .map(|(b, id)| pb::ReleaseBucket {
                    bucket: b.to_string(),
                    move_id: *id,
                })
                .collect(),
            fenced: s.fenced,
            serve_for_ms: s.serve_for_ms(Instant::now()),
            node_id: s.node_id.clone(),
            deadline_monotonic_ns: match (s.fenced, s.deadline) {
                (false, Some(d)) => dtable_core::timing::to_monotonic_ns(d.into_std()),
                _ => 0,
            },
        }
    }
}

type StateStream = Pin<Box<dyn Stream<Item = Result<pb::AgentState, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl pb::local_agent_server::LocalAgent for Local {
    type WatchStream = StateStream;

    async fn watch(
        &self,
        _: tonic::Request<pb::WatchRequest>,
    ) -> Result<tonic::Response<StateStream>, tonic::Status> {
        let (tx, rx) = mpsc::channel(4);
        let me = self.clone();
        self.contact.streams.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!("dtable_agent_server_streams").increment(1.0);
        let guard = StreamGuard(Arc::clone(&self.contact));
        tokio::spawn(async move {
            let _guard = guard;
            let mut state_rx = me.state_rx.clone();
            let mut tick = tokio::time::interval(me.push_interval);
            loop {
                let msg = me.to_proto(&state_rx.borrow_and_update().clone());
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
                tick.reset();
                tokio::select! {
                    _ = tx.closed() => return,
                    changed = state_rx.changed() => if changed.is_err() { return },
                    _ = tick.tick() => {}
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn ack_release(
        &self,
        req: tonic::Request<pb::AckReleaseRequest>,
    ) -> Result<tonic::Response<pb::AckReleaseResponse>, tonic::Status> {
        let r = req.into_inner();
        let bucket: Bucket = r.bucket.parse().map_err(|e: dtable_core::BucketError| {
            tonic::Status::invalid_argument(e.to_string())
        })?;
        match Local::ack_release(self, bucket, Some(r.move_id)).await {
            Ok(_) => Ok(tonic::Response::new(pb::AckReleaseResponse {})),
            Err(e @ AckError::NotAsked(..)) => {
                Err(tonic::Status::failed_precondition(e.to_string()))
            }
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        }
    }

    async fn ack_fenced(
        &self,
        _: tonic::Request<pb::AckFencedRequest>,
    ) -> Result<tonic::Response<pb::AckFencedResponse>, tonic::Status> {
        let _ = self.events_tx.send(ServerEvent::FencedAck);
        Ok(tonic::Response::new(pb::AckFencedResponse {}))
    }

    async fn status(
        &self,
        _: tonic::Request<pb::StatusRequest>,
    ) -> Result<tonic::Response<pb::AgentStatus>, tonic::Status> {
        let s = self.state_rx.borrow().clone();
        Ok(tonic::Response::new(pb::AgentStatus {
            node_id: self.node_id.to_string(),
            phase: if s.fenced { "fenced" } else { "serving" }.into(),
            lease_id: self.lease.load(Ordering::SeqCst),
            serve_for_ms: s.serve_for_ms(Instant::now()),
            owned_count: s.owned.len() as u32,
        }))
    }
}

/// Serves the gRPC API until `shutdown`.
pub async fn serve_grpc(
    listener: tokio::net::TcpListener,
    local: Local,
    shutdown: CancellationToken,
) {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let served = tonic::transport::Server::builder()
        .add_service(pb::local_agent_server::LocalAgentServer::new(local))
        .serve_with_incoming_shutdown(incoming, async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "local gRPC API stopped");
    }
}

#[derive(serde::Deserialize)]
struct PollQuery {
    after: Option<u64>,
    timeout: Option<u64>,
}

#[derive(serde::Deserialize, Default)]
struct AckQuery {
    move_id: Option<i64>,
}

fn to_json(s: &PushState) -> serde_json::Value {
    serde_json::json!({
        "version": s.version,
        "revision": s.revision,
        "node_id": s.node_id,
        "owned": s.owned.iter().map(|(b, e)| serde_json::json!({"bucket": b.to_string(), "epoch": e})).collect::<Vec<_>>(),
        "release": s.release.iter().map(|(b, id)| serde_json::json!({"bucket": b.to_string(), "move_id": id})).collect::<Vec<_>>(),
        "fenced": s.fenced,
        "serve_for_ms": s.serve_for_ms(Instant::now()),
    })
}

async fn poll(State(local): State<Local>, Query(q): Query<PollQuery>) -> Response {
    let mut rx = local.state_rx.clone();
    let wait = Duration::from_secs(q.timeout.unwrap_or(0).min(60)).min(local.push_interval);
    if let Some(after) = q.after {
        let newer = rx.wait_for(|s| s.version > after);
        let _ = tokio::time::timeout(wait, async { newer.await.map(|_| ()) }).await;
    }
    local.contact.polled();
    let s = rx.borrow().clone();
    Json(to_json(&s)).into_response()
}

async fn http_ack(
    State(local): State<Local>,
    Path(bucket): Path<String>,
    Query(q): Query<AckQuery>,
) -> Response {
    let bucket: Bucket = match bucket.parse() {
        Ok(b) => b,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({"code": "bad_bucket", "error": format!("{e}")})),
            )
                .into_response();
        }
    };
    match local.ack_release(bucket, q.move_id).await {
        Ok(id) => Json(serde_json::json!({"bucket": bucket.to_string(), "move_id": id, "ignored": id.is_none()})).into_response(),
        Err(e @ AckError::NotAsked(..)) => (StatusCode::CONFLICT, Json(serde_json::json!({"code": "not_asked", "error": e.to_string()}))).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"code": "etcd", "error": e.to_string()}))).into_response(),
    }
}

async fn http_fenced(State(local): State<Local>) -> Response {
    let _ = local.events_tx.send(ServerEvent::FencedAck);
    Json(serde_json::json!({"ok": true})).into_response()
}

async fn http_metrics(State(local): State<Local>) -> Response {
    match &local.metrics {
        Some(h) => h.render().into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}

/// Serves the HTTP twin until `shutdown`.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    local: Local,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/v1/assignment", get(poll))
        .route("/v1/release/{bucket}/ack", post(http_ack))
        .route("/v1/fenced/ack", post(http_fenced))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(http_metrics))
        .with_state(local);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "local HTTP API stopped");
    }
}
