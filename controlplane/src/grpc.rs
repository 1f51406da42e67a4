//! The gRPC `ControlPlane` service: the API's operations ([`crate::api`]) in the messages of
//! `dtable/cluster/v1/controlplane.proto`.

use dtable_core::view::CordonMode;
use dtable_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::api::ApiState;
use crate::events::Item;
use crate::model;

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::control_plane_server::ControlPlane for ApiState {
    async fn lookup(&self, req: Request<pb::LookupRequest>) -> Answer<pb::LookupResponse> {
        let a = ApiState::lookup(self, &req.get_ref().dtable_uuid)?;
        Ok(Response::new(pb::LookupResponse {
            bucket: a.bucket,
            node_id: a.node_id.unwrap_or_default(),
            node_url: a.node_url.unwrap_or_default(),
            local_node_url: a.local_node_url.unwrap_or_default(),
            epoch: a.epoch,
        }))
    }

    async fn get_assignment(&self, _: Request<pb::GetAssignmentRequest>) -> Answer<pb::Assignment> {
        Ok(Response::new(model::assignment(&*self.view()?)))
    }

    async fn list_nodes(&self, _: Request<pb::ListNodesRequest>) -> Answer<pb::ListNodesResponse> {
        let (revision, nodes) = self.nodes().await?;
        Ok(Response::new(pb::ListNodesResponse {
            revision,
            nodes: nodes.into_iter().map(Into::into).collect(),
        }))
    }

    async fn get_leader(&self, _: Request<pb::GetLeaderRequest>) -> Answer<pb::LeaderInfo> {
        Ok(Response::new(self.leader().await))
    }

    async fn list_moves(&self, _: Request<pb::ListMovesRequest>) -> Answer<pb::ListMovesResponse> {
        let (revision, moves) = self.moves()?;
        Ok(Response::new(pb::ListMovesResponse {
            revision,
            moves: moves.into_iter().map(Into::into).collect(),
        }))
    }

    type WatchAssignmentStream = ReceiverStream<Result<pb::ClusterEvent, Status>>;

    /// A snapshot, then every bucket, move and node change. Leader changes are not part of
    /// this stream; a subscriber that lags gets a fresh snapshot.
    async fn watch_assignment(
        &self,
        _: Request<pb::WatchAssignmentRequest>,
    ) -> Answer<Self::WatchAssignmentStream> {
        let state = self.clone();
        let stream = self.events.follow(self.shutdown.clone(), move |item| {
            let state = state.clone();
            async move {
                match item {
                    Item::Snapshot(view) => {
                        let ttls = state.ttls.get(view.nodes.values().map(|n| n.lease)).await;
                        Some(Ok(pb::ClusterEvent {
                            revision: view.revision,
                            event: Some(pb::cluster_event::Event::Snapshot(model::snapshot(
                                &view, &ttls,
                            ))),
                        }))
                    }
                    Item::Event(e) => e.to_pb().map(Ok),
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn rebalance(&self, req: Request<pb::RebalanceRequest>) -> Answer<pb::RebalanceResponse> {
        let plan = ApiState::rebalance(self, req.get_ref().dry_run).await?;
        Ok(Response::new(plan.into()))
    }

    async fn drain(&self, req: Request<pb::NodeRequest>) -> Answer<pb::IntentResponse> {
        let done = self
            .set_cordon(&req.get_ref().node_id, CordonMode::Drain)
            .await?;
        Ok(Response::new(done.into()))
    }

    async fn cordon(&self, req: Request<pb::NodeRequest>) -> Answer<pb::IntentResponse> {
        let done = self
            .set_cordon(&req.get_ref().node_id, CordonMode::Cordon)
            .await?;
        Ok(Response::new(done.into()))
    }

    async fn uncordon(&self, req: Request<pb::NodeRequest>) -> Answer<pb::IntentResponse> {
        let done = ApiState::uncordon(self, &req.get_ref().node_id).await?;
        Ok(Response::new(done.into()))
    }
}

/// Serves the gRPC API until `shutdown`.
pub async fn serve(listener: TcpListener, state: ApiState, shutdown: CancellationToken) {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let served = tonic::transport::Server::builder()
        .add_service(pb::control_plane_server::ControlPlaneServer::new(state))
        .serve_with_incoming_shutdown(incoming, async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "gRPC API stopped");
    }
}
