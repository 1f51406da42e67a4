//! The read API, served by every instance from its own watch cache: gRPC `ControlPlane` and
//! its HTTP JSON twin, plus `/metrics` and `/healthz`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use dtable_core::etcd::ViewRx;
use dtable_core::view::Lookup;
use dtable_core::{Bucket, ClusterView, KeyLayout};
use dtable_proto::v1 as pb;
use etcd_client::Client;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the API handlers read.
#[derive(Clone)]
pub struct ApiState {
    /// The instance's cluster view.
    pub view_rx: ViewRx,
    /// Whether this instance leads.
    pub is_leader_rx: watch::Receiver<bool>,
    /// For the leader lookup.
    pub client: Client,
    /// Key layout, for the election name.
    pub keys: KeyLayout,
    /// This instance's name.
    pub name: String,
    /// Prometheus renderer, when this process installed the recorder.
    pub metrics: Option<PrometheusHandle>,
}

/// Errors of the API, each with a stable code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The base UUID is malformed.
    #[error(transparent)]
    BadUuid(#[from] dtable_core::BucketError),
    /// The view has not been loaded from etcd yet.
    #[error("the cluster view is not loaded yet")]
    NotReady,
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::BadUuid(_) => "bad_uuid",
            ApiError::NotReady => "not_ready",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            ApiError::BadUuid(_) => StatusCode::BAD_REQUEST,
            ApiError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
        };
        (
            status,
            Json(serde_json::json!({"code": self.code(), "error": self.to_string()})),
        )
            .into_response()
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> tonic::Status {
        match e {
            ApiError::BadUuid(_) => tonic::Status::invalid_argument(e.to_string()),
            ApiError::NotReady => tonic::Status::unavailable(e.to_string()),
        }
    }
}

impl ApiState {
    fn view(&self) -> Result<Arc<ClusterView>, ApiError> {
        let view = self.view_rx.borrow().clone();
        if view.revision == 0 {
            return Err(ApiError::NotReady);
        }
        Ok(view)
    }

    /// Looks a base up in the view.
    pub fn lookup(&self, uuid: &str) -> Result<Lookup, ApiError> {
        dtable_core::Bucket::of_base(uuid)?;
        Ok(self.view()?.lookup(uuid)?)
    }

    /// The bucket map.
    pub fn assignment(&self) -> Result<pb::Assignment, ApiError> {
        let view = self.view()?;
        let buckets = Bucket::all()
            .map(|b| {
                let a = view.assignment[b.index()].as_ref();
                pb::BucketOwner {
                    bucket: b.to_string(),
                    node_id: a.map(|a| a.raw.clone()).unwrap_or_default(),
                    epoch: a.map_or(0, |a| a.mod_revision),
                }
            })
            .collect();
        Ok(pb::Assignment {
            revision: view.revision,
            buckets,
        })
    }

    /// The registered nodes.
    pub fn nodes(&self) -> Result<pb::ListNodesResponse, ApiError> {
        let view = self.view()?;
        let counts = view.bucket_counts();
        let nodes = view
            .nodes
            .values()
            .map(|n| pb::Node {
                node_id: n.record.node_id.to_string(),
                node_url: n.record.node_url.clone(),
                local_node_url: n.record.local_node_url.clone(),
                state: serde_json::to_value(n.record.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                weight: n.record.weight,
                version: n.record.version.clone(),
                bucket_count: counts.get(&n.record.node_id).copied().unwrap_or(0) as u32,
                lease_id: n.lease,
                lease_ttl_seconds: -1,
                started_at: n.record.started_at.clone(),
                role: "server".to_owned(),
                healthy: true,
                ..Default::default()
            })
            .collect();
        Ok(pb::ListNodesResponse {
            revision: view.revision,
            nodes,
        })
    }

    /// Which instance leads.
    pub async fn leader(&self) -> pb::LeaderInfo {
        let mut c = self.client.clone();
        let leader = c
            .leader(self.keys.election())
            .await
            .ok()
            .and_then(|r| {
                r.kv()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
            })
            .unwrap_or_default();
        pb::LeaderInfo {
            leader,
            this_instance_leads: *self.is_leader_rx.borrow(),
        }
    }
}

/// Serves the HTTP API until `shutdown`.
pub async fn serve_http(listener: TcpListener, state: ApiState, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/lookup/{uuid}", get(http_lookup))
        .route("/api/v1/assignment", get(http_assignment))
        .route("/api/v1/nodes", get(http_nodes))
        .route("/api/v1/leader", get(http_leader))
        .merge(crate::status::routes())
        .with_state(state);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "HTTP API stopped");
    }
}

async fn metrics(State(s): State<ApiState>) -> Response {
    match &s.metrics {
        Some(h) => h.render().into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}

async fn http_lookup(State(s): State<ApiState>, Path(uuid): Path<String>) -> Response {
    s.lookup(&uuid).map(Json).into_response()
}

async fn http_assignment(State(s): State<ApiState>) -> Response {
    s.assignment()
        .map(|a| {
            let buckets: Vec<_> = a
                .buckets
                .iter()
                .map(|b| serde_json::json!({"bucket": b.bucket, "node_id": b.node_id, "epoch": b.epoch}))
                .collect();
            Json(serde_json::json!({"revision": a.revision, "buckets": buckets}))
        })
        .into_response()
}

async fn http_nodes(State(s): State<ApiState>) -> Response {
    s.nodes()
        .map(|r| {
            let nodes: Vec<_> = r
                .nodes
                .iter()
                .map(|n| {
                    serde_json::json!({
                        "node_id": n.node_id, "node_url": n.node_url,
                        "local_node_url": n.local_node_url, "state": n.state,
                        "weight": n.weight, "version": n.version,
                        "bucket_count": n.bucket_count, "lease_id": n.lease_id,
                    })
                })
                .collect();
            Json(serde_json::json!({"revision": r.revision, "nodes": nodes}))
        })
        .into_response()
}

async fn http_leader(State(s): State<ApiState>) -> Response {
    let l = s.leader().await;
    Json(serde_json::json!({"leader": l.leader, "this_instance_leads": l.this_instance_leads}))
        .into_response()
}

#[tonic::async_trait]
impl pb::control_plane_server::ControlPlane for ApiState {
    async fn lookup(
        &self,
        req: tonic::Request<pb::LookupRequest>,
    ) -> Result<tonic::Response<pb::LookupResponse>, tonic::Status> {
        let a = ApiState::lookup(self, &req.get_ref().dtable_uuid)?;
        Ok(tonic::Response::new(pb::LookupResponse {
            bucket: a.bucket,
            node_id: a.node_id.unwrap_or_default(),
            node_url: a.node_url.unwrap_or_default(),
            local_node_url: a.local_node_url.unwrap_or_default(),
            epoch: a.epoch,
        }))
    }

    async fn get_assignment(
        &self,
        _: tonic::Request<pb::GetAssignmentRequest>,
    ) -> Result<tonic::Response<pb::Assignment>, tonic::Status> {
        Ok(tonic::Response::new(self.assignment()?))
    }

    async fn list_nodes(
        &self,
        _: tonic::Request<pb::ListNodesRequest>,
    ) -> Result<tonic::Response<pb::ListNodesResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.nodes()?))
    }

    async fn get_leader(
        &self,
        _: tonic::Request<pb::GetLeaderRequest>,
    ) -> Result<tonic::Response<pb::LeaderInfo>, tonic::Status> {
        Ok(tonic::Response::new(self.leader().await))
    }

    async fn list_moves(
        &self,
        _: tonic::Request<pb::ListMovesRequest>,
    ) -> Result<tonic::Response<pb::ListMovesResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("ListMoves"))
    }

    type WatchAssignmentStream =
        tokio_stream::Empty<Result<pb::ClusterEvent, tonic::Status>>;

    async fn watch_assignment(
        &self,
        _: tonic::Request<pb::WatchAssignmentRequest>,
    ) -> Result<tonic::Response<Self::WatchAssignmentStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("WatchAssignment"))
    }

    async fn rebalance(
        &self,
        _: tonic::Request<pb::RebalanceRequest>,
    ) -> Result<tonic::Response<pb::RebalanceResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("Rebalance"))
    }

    async fn drain(
        &self,
        _: tonic::Request<pb::NodeRequest>,
    ) -> Result<tonic::Response<pb::IntentResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("Drain"))
    }

    async fn cordon(
        &self,
        _: tonic::Request<pb::NodeRequest>,
    ) -> Result<tonic::Response<pb::IntentResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("Cordon"))
    }

    async fn uncordon(
        &self,
        _: tonic::Request<pb::NodeRequest>,
    ) -> Result<tonic::Response<pb::IntentResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("Uncordon"))
    }
}

/// Serves the gRPC API until `shutdown`.
pub async fn serve_grpc(listener: TcpListener, state: ApiState, shutdown: CancellationToken) {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let served = tonic::transport::Server::builder()
        .add_service(pb::control_plane_server::ControlPlaneServer::new(state))
        .serve_with_incoming_shutdown(incoming, async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "gRPC API stopped");
    }
}
