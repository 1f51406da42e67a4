//! A fake `ControlPlane` served in-process on a free loopback port, with canned but realistic
//! data: three nodes, 255 of the 256 buckets spread over them, one move in flight. It records
//! every call with its `authorization` metadata, and can require an admin token for the
//! mutating calls as the real control plane does when configured with one.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dtable_core::Bucket;
use dtable_proto::v1 as pb;
use pb::cluster_event::Event;
use pb::control_plane_server::{ControlPlane, ControlPlaneServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::ServerTlsConfig;
use tonic::{Request, Response, Status};

/// The nodes of the fake cluster.
pub const NODES: [&str; 3] = ["dtable-server-a", "dtable-server-b", "dtable-server-c"];

/// The instance the fake reports as leader.
pub const LEADER: &str = "cp-fake-1";

/// The etcd revision of the fake's view.
pub const REVISION: i64 = 4242;

/// One call the fake received.
#[derive(Debug, Clone)]
pub struct Call {
    /// The RPC name, e.g. `Drain`.
    pub method: &'static str,
    /// The request's argument, e.g. the node id or `dry_run=true`.
    pub arg: String,
    /// The `authorization` metadata, if any.
    pub authorization: Option<String>,
}

/// How the fake behaves.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// When set, mutating calls need `authorization: Bearer <token>`.
    pub token: Option<String>,
    /// When set, the first `WatchAssignment` stream ends after its events instead of staying
    /// open, as when a control plane restarts.
    pub end_first_watch: bool,
    /// Server TLS (identity and, for mutual TLS, the client CA).
    pub tls: Option<ServerTlsConfig>,
}

/// A running fake; stops when dropped.
pub struct Fake {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it received.
    calls: Arc<Mutex<Vec<Call>>>,
    /// Stops the server and its open streams.
    stop: CancellationToken,
}

impl Fake {
    /// Starts a fake with default options.
    pub async fn start() -> Fake {
        Fake::start_with(Options::default()).await
    }

    /// Starts a fake with `options` on a free loopback port.
    pub async fn start_with(options: Options) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for the fake control plane");
        let addr = listener.local_addr().expect("bound address");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let service = Service {
            cluster: Arc::new(cluster()),
            calls: calls.clone(),
            token: options.token.clone(),
            end_first_watch: options.end_first_watch,
            stop: stop.clone(),
        };
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = options.tls {
            builder = builder.tls_config(tls).expect("server TLS config");
        }
        let router = builder.add_service(ControlPlaneServer::new(service));
        let shutdown = stop.clone();
        tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                    shutdown.cancelled().await
                })
                .await
                .expect("fake control plane serves");
        });
        Fake { addr, calls, stop }
    }

    /// Its URL over plain HTTP/2.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every call received so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The calls of one method.
    pub fn calls_of(&self, method: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method)
            .collect()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The canned cluster.
pub struct Cluster {
    /// Bucket map; bucket `ff` unassigned.
    pub assignment: pb::Assignment,
    /// a active, b active, c cordoned.
    pub nodes: Vec<pb::Node>,
    /// Bucket 2a moving from its owner a to b.
    pub moves: Vec<pb::Move>,
}

/// The owner of bucket `i` in the canned cluster.
pub fn owner_of(i: u8) -> &'static str {
    if i == 0xff {
        ""
    } else {
        NODES[usize::from(i) % 3]
    }
}

/// Builds the canned cluster.
pub fn cluster() -> Cluster {
    let buckets = (0..=255u8)
        .map(|i| pb::BucketOwner {
            bucket: Bucket(i).to_string(),
            node_id: owner_of(i).to_owned(),
            epoch: if i == 0xff { 0 } else { 1000 + i64::from(i) },
        })
        .collect();
    let nodes = NODES
        .iter()
        .enumerate()
        .map(|(i, id)| pb::Node {
            node_id: (*id).to_owned(),
            node_url: format!("https://cloud.example/{id}/"),
            local_node_url: format!("http://10.1.0.{}:5000/", i + 1),
            state: "active".to_owned(),
            weight: 1,
            version: "5.3.1".to_owned(),
            bucket_count: 85,
            lease_id: 0x7f00 + i as i64,
            cordoned: i == 2,
            draining: false,
            lease_ttl_seconds: 61 + i as i64,
            started_at: "2026-11-25T09:00:00Z".to_owned(),
            role: "server".to_owned(),
            healthy: true,
        })
        .collect();
    let moves = vec![pb::Move {
        bucket: "2a".to_owned(),
        from: owner_of(0x2a).to_owned(),
        to: NODES[1].to_owned(),
        started_at: "2026-11-25T09:30:00Z".to_owned(),
        move_id: 4200,
        acked: false,
    }];
    Cluster {
        assignment: pb::Assignment {
            revision: REVISION,
            buckets,
        },
        nodes,
        moves,
    }
}

/// The events the fake streams after the snapshot, each with its revision.
pub fn events() -> Vec<pb::ClusterEvent> {
    let c = cluster();
    let mut released = c.moves[0].clone();
    released.acked = true;
    let joined = pb::Node {
        node_id: "dtable-server-d".to_owned(),
        local_node_url: "http://10.1.0.4:5000/".to_owned(),
        state: "active".to_owned(),
        weight: 1,
        role: "server".to_owned(),
        healthy: true,
        ..Default::default()
    };
    [
        Event::Move(pb::MoveChanged {
            r#move: Some(released.clone()),
            phase: "acked".to_owned(),
        }),
        Event::Bucket(pb::BucketChanged {
            bucket: "2a".to_owned(),
            from: released.from.clone(),
            to: released.to.clone(),
            epoch: REVISION + 2,
        }),
        Event::Move(pb::MoveChanged {
            r#move: Some(released),
            phase: "ended".to_owned(),
        }),
        Event::Node(pb::NodeChanged {
            node: Some(joined),
            node_id: "dtable-server-d".to_owned(),
            change: "joined".to_owned(),
        }),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, event)| pb::ClusterEvent {
        revision: REVISION + 1 + i as i64,
        event: Some(event),
    })
    .collect()
}

/// The gRPC service.
struct Service {
    cluster: Arc<Cluster>,
    calls: Arc<Mutex<Vec<Call>>>,
    token: Option<String>,
    end_first_watch: bool,
    stop: CancellationToken,
}

impl Service {
    /// Records the call.
    fn record<T>(&self, method: &'static str, arg: String, req: &Request<T>) {
        let authorization = req
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or("<not ascii>").to_owned());
        self.calls.lock().unwrap().push(Call {
            method,
            arg,
            authorization,
        });
    }

    /// Refuses a mutating call without the right token, as the real control plane does.
    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let want = format!("Bearer {token}");
        match req.metadata().get("authorization") {
            Some(v) if v.to_str().ok() == Some(want.as_str()) => Ok(()),
            _ => Err(Status::unauthenticated(
                dtable_core::auth::UNAUTHORIZED_MESSAGE,
            )),
        }
    }

    /// An intent on a known node.
    fn intent(
        &self,
        method: &'static str,
        req: Request<pb::NodeRequest>,
        message: &str,
    ) -> Result<Response<pb::IntentResponse>, Status> {
        let node = req.get_ref().node_id.clone();
        self.record(method, node.clone(), &req);
        self.authorize(&req)?;
        if !self.cluster.nodes.iter().any(|n| n.node_id == node) {
            return Err(Status::not_found("no such node"));
        }
        Ok(Response::new(pb::IntentResponse {
            key: format!("dtable-cluster/cordon/{node}"),
            node_id: node,
            revision: REVISION + 10,
            message: message.to_owned(),
        }))
    }
}

#[tonic::async_trait]
impl ControlPlane for Service {
    async fn lookup(
        &self,
        req: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupResponse>, Status> {
        let uuid = req.get_ref().dtable_uuid.clone();
        self.record("Lookup", uuid.clone(), &req);
        let bucket = Bucket::of_base(&uuid).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let owner = &self.cluster.assignment.buckets[bucket.index()];
        let node = self
            .cluster
            .nodes
            .iter()
            .find(|n| n.node_id == owner.node_id);
        Ok(Response::new(pb::LookupResponse {
            bucket: bucket.to_string(),
            node_id: owner.node_id.clone(),
            node_url: node.map(|n| n.node_url.clone()).unwrap_or_default(),
            local_node_url: node.map(|n| n.local_node_url.clone()).unwrap_or_default(),
            epoch: owner.epoch,
        }))
    }

    async fn get_assignment(
        &self,
        req: Request<pb::GetAssignmentRequest>,
    ) -> Result<Response<pb::Assignment>, Status> {
        self.record("GetAssignment", String::new(), &req);
        Ok(Response::new(self.cluster.assignment.clone()))
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.record("ListNodes", String::new(), &req);
        Ok(Response::new(pb::ListNodesResponse {
            revision: REVISION,
            nodes: self.cluster.nodes.clone(),
        }))
    }

    async fn get_leader(
        &self,
        req: Request<pb::GetLeaderRequest>,
    ) -> Result<Response<pb::LeaderInfo>, Status> {
        self.record("GetLeader", String::new(), &req);
        Ok(Response::new(pb::LeaderInfo {
            leader: LEADER.to_owned(),
            this_instance_leads: true,
        }))
    }

    async fn list_moves(
        &self,
        req: Request<pb::ListMovesRequest>,
    ) -> Result<Response<pb::ListMovesResponse>, Status> {
        self.record("ListMoves", String::new(), &req);
        Ok(Response::new(pb::ListMovesResponse {
            revision: REVISION,
            moves: self.cluster.moves.clone(),
        }))
    }

    type WatchAssignmentStream = ReceiverStream<Result<pb::ClusterEvent, Status>>;

    async fn watch_assignment(
        &self,
        req: Request<pb::WatchAssignmentRequest>,
    ) -> Result<Response<Self::WatchAssignmentStream>, Status> {
        self.record("WatchAssignment", String::new(), &req);
        let first = self
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.method == "WatchAssignment")
            .count()
            == 1;
        let end = self.end_first_watch && first;
        let snapshot = pb::ClusterEvent {
            revision: REVISION,
            event: Some(Event::Snapshot(pb::Snapshot {
                assignment: Some(self.cluster.assignment.clone()),
                nodes: self.cluster.nodes.clone(),
                moves: self.cluster.moves.clone(),
            })),
        };
        let (tx, rx) = mpsc::channel(16);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            for event in std::iter::once(snapshot).chain(events()) {
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
                // Apart in time, as real changes are.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if !end {
                // Stay open until the client goes or the fake stops.
                tokio::select! {
                    _ = tx.closed() => {}
                    _ = stop.cancelled() => {}
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn rebalance(
        &self,
        req: Request<pb::RebalanceRequest>,
    ) -> Result<Response<pb::RebalanceResponse>, Status> {
        let dry_run = req.get_ref().dry_run;
        self.record("Rebalance", format!("dry_run={dry_run}"), &req);
        self.authorize(&req)?;
        Ok(Response::new(pb::RebalanceResponse {
            requested: !dry_run,
            revision: REVISION,
            planned_moves: vec![
                pb::PlannedMove {
                    bucket: "ff".to_owned(),
                    from: String::new(),
                    to: NODES[1].to_owned(),
                },
                pb::PlannedMove {
                    bucket: "02".to_owned(),
                    from: NODES[2].to_owned(),
                    to: NODES[0].to_owned(),
                },
            ],
        }))
    }

    async fn drain(
        &self,
        req: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::IntentResponse>, Status> {
        self.intent(
            "Drain",
            req,
            "draining: its buckets are handed to other nodes one by one",
        )
    }

    async fn cordon(
        &self,
        req: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::IntentResponse>, Status> {
        self.intent(
            "Cordon",
            req,
            "cordoned: it keeps its buckets and receives no new ones",
        )
    }

    async fn uncordon(
        &self,
        req: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::IntentResponse>, Status> {
        self.intent(
            "Uncordon",
            req,
            "uncordoned: it receives buckets again at the next placement",
        )
    }
}
