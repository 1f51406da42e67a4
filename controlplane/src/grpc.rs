//! The gRPC `ControlPlane` service: the API's operations ([`crate::api`]) in the messages of
//! `dtable/cluster/v1/controlplane.proto`.
//!
//! Reads and `WatchAssignment` are open to every caller. The intents (`Rebalance`, dry run or
//! not, `Drain`, `Cordon`, `Uncordon`) demand the admin token when one is configured: without
//! `authorization: Bearer <token>` they answer `UNAUTHENTICATED` and change nothing. With
//! `--tls-cert` the listener speaks TLS only, and with `--tls-client-ca` it serves only
//! clients that show a certificate from that CA.

use std::sync::Arc;

use dtable_core::auth::{AdminToken, authorize_grpc};
use dtable_core::tls::ServerTls;
use dtable_core::view::CordonMode;
use dtable_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use crate::api::ApiState;
use crate::events::Item;
use crate::model;

type Answer<T> = Result<Response<T>, Status>;

/// The `ControlPlane` service: the shared API state, and the token its intents demand.
#[derive(Clone)]
pub struct ControlPlaneService {
    /// What the operations read and write with.
    state: ApiState,
    /// The admin token of the intents; `None` leaves them open.
    admin_token: Option<Arc<AdminToken>>,
}

impl ControlPlaneService {
    /// The service over `state`, its intents guarded by `admin_token` when there is one.
    pub fn new(state: ApiState, admin_token: Option<Arc<AdminToken>>) -> ControlPlaneService {
        ControlPlaneService { state, admin_token }
    }

    /// Refuses an intent whose caller does not show the admin token.
    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        authorize_grpc(self.admin_token.as_deref(), req.metadata())
    }
}

#[tonic::async_trait]
impl pb::control_plane_server::ControlPlane for ControlPlaneService {
    async fn lookup(&self, req: Request<pb::LookupRequest>) -> Answer<pb::LookupResponse> {
        let a = self.state.lookup(&req.get_ref().dtable_uuid)?;
        Ok(Response::new(pb::LookupResponse {
            bucket: a.bucket,
            node_id: a.node_id.unwrap_or_default(),
            node_url: a.node_url.unwrap_or_default(),
            local_node_url: a.local_node_url.unwrap_or_default(),
            epoch: a.epoch,
        }))
    }

    async fn get_assignment(&self, _: Request<pb::GetAssignmentRequest>) -> Answer<pb::Assignment> {
        Ok(Response::new(model::assignment(&*self.state.view()?)))
    }

    async fn list_nodes(&self, _: Request<pb::ListNodesRequest>) -> Answer<pb::ListNodesResponse> {
        let (revision, nodes) = self.state.nodes().await?;
        Ok(Response::new(pb::ListNodesResponse {
            revision,
            nodes: nodes.into_iter().map(Into::into).collect(),
        }))
    }

    async fn get_leader(&self, _: Request<pb::GetLeaderRequest>) -> Answer<pb::LeaderInfo> {
        Ok(Response::new(self.state.leader().await))
    }

    async fn list_moves(&self, _: Request<pb::ListMovesRequest>) -> Answer<pb::ListMovesResponse> {
        let (revision, moves) = self.state.moves()?;
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
        let state = self.state.clone();
        let events = &self.state.events;
        let stream = events.follow(self.state.shutdown.clone(), move |item| {
            let state = state.clone();
            async move {
                match item {
                    Item::Snapshot(view) => {
                        let ttls = state.ttls.get(model::NodeInfo::leases(&view)).await;
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

    /// Guarded even as a dry run: one rule for every intent is easier to reason about than
    /// an exception for the harmless case.
    async fn rebalance(&self, req: Request<pb::RebalanceRequest>) -> Answer<pb::RebalanceResponse> {
        self.authorize(&req)?;
        let plan = self.state.rebalance(req.get_ref().dry_run).await?;
        Ok(Response::new(plan.into()))
    }

    async fn drain(&self, req: Request<pb::NodeRequest>) -> Answer<pb::IntentResponse> {
        self.authorize(&req)?;
        let done = self
            .state
            .set_cordon(&req.get_ref().node_id, CordonMode::Drain)
            .await?;
        Ok(Response::new(done.into()))
    }

    async fn cordon(&self, req: Request<pb::NodeRequest>) -> Answer<pb::IntentResponse> {
        self.authorize(&req)?;
        let done = self
            .state
            .set_cordon(&req.get_ref().node_id, CordonMode::Cordon)
            .await?;
        Ok(Response::new(done.into()))
    }

    async fn uncordon(&self, req: Request<pb::NodeRequest>) -> Answer<pb::IntentResponse> {
        self.authorize(&req)?;
        let done = self.state.uncordon(&req.get_ref().node_id).await?;
        Ok(Response::new(done.into()))
    }
}

/// A tonic server builder that speaks TLS (mutual when `tls` demands client certificates) or,
/// without `tls`, plain HTTP/2. Made before serving so that a TLS set-up tonic refuses stops
/// the start-up instead of silently leaving the gRPC port closed.
pub fn server(tls: Option<&ServerTls>) -> Result<Server, tonic::transport::Error> {
    let builder = Server::builder();
    match tls {
        Some(tls) => builder.tls_config(tls.tonic_config()),
        None => Ok(builder),
    }
}

/// Serves `service` with `server` (see [`server`]) on `listener` until `shutdown`.
pub async fn serve(
    mut server: Server,
    listener: TcpListener,
    service: ControlPlaneService,
    shutdown: CancellationToken,
) {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let served = server
        .add_service(pb::control_plane_server::ControlPlaneServer::new(service))
        .serve_with_incoming_shutdown(incoming, async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "gRPC API stopped");
    }
}
