//! The control-plane API's operations, shared by the gRPC service ([`crate::grpc`]) and its
//! HTTP JSON twin ([`crate::http`]). Every instance answers reads from its own watch cache, so
//! standbys serve them; intents (cordon, drain, uncordon, rebalance requests) are plain etcd
//! writes that need no leadership: any instance records them and the leader carries them out.

use std::sync::Arc;
use std::time::SystemTime;

use dtable_core::etcd::{CALL_TIMEOUT, ViewRx};
use dtable_core::keys::{CLUSTER_PREFIX, cordon_name};
use dtable_core::view::{CordonIntent, CordonMode, Lookup};
use dtable_core::{Bucket, ClusterView, KeyLayout, NodeId};
use dtable_proto::v1 as pb;
use etcd_client::Client;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::events::Events;
use crate::lease_ttl::LeaseTtls;
use crate::model::{
    BucketInfo, IntentDone, MoveInfo, NodeInfo, PlannedMove, RebalancePlan, Status,
};

/// How many recent events `/api/v1/status` carries.
pub const STATUS_EVENTS: usize = 50;

/// What the API handlers read and write with.
#[derive(Clone)]
pub struct ApiState {
    /// The instance's cluster view.
    pub view_rx: ViewRx,
    /// Whether this instance leads.
    pub is_leader_rx: watch::Receiver<bool>,
    /// For the leader lookup, lease TTLs and intent writes.
    pub client: Client,
    /// Key layout.
    pub keys: KeyLayout,
    /// This instance's name, written as the author of intents.
    pub name: String,
    /// Prometheus renderer, when this process installed the recorder.
    pub metrics: Option<PrometheusHandle>,
    /// The event hub behind `WatchAssignment` and `/api/v1/events`.
    pub events: Events,
    /// Lease TTLs of the nodes, cached briefly.
    pub ttls: LeaseTtls,
    /// Whether the leader rebalances without a request (for the messages of intents).
    pub auto_rebalance: bool,
    /// Ends open event streams at shutdown.
    pub shutdown: CancellationToken,
}

/// Errors of the API, each with a stable code (see [`ApiError::code`]).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The base UUID is malformed.
    #[error(transparent)]
    BadUuid(#[from] dtable_core::BucketError),
    /// The view has not been loaded from etcd yet.
    #[error("the cluster view is not loaded yet")]
    NotReady,
    /// The node is neither registered nor cordoned.
    #[error("unknown node {0}: it is not registered and has no cordon")]
    UnknownNode(String),
    /// The request itself is malformed (a bad node id, a bad JSON body, a bad query).
    #[error("{0}")]
    BadRequest(String),
    /// etcd refused or failed the write.
    #[error("etcd failed: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// etcd did not answer in time.
    #[error("etcd did not answer within {}s", CALL_TIMEOUT.as_secs())]
    EtcdTimeout,
}

impl ApiError {
    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadUuid(_) => "bad_uuid",
            ApiError::NotReady => "not_ready",
            ApiError::UnknownNode(_) => "unknown_node",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Etcd(_) => "etcd_error",
            ApiError::EtcdTimeout => "etcd_timeout",
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> tonic::Status {
        let msg = format!("{}: {e}", e.code());
        match e {
            ApiError::BadUuid(_) | ApiError::BadRequest(_) => tonic::Status::invalid_argument(msg),
            ApiError::NotReady | ApiError::Etcd(_) => tonic::Status::unavailable(msg),
            ApiError::UnknownNode(_) => tonic::Status::not_found(msg),
            ApiError::EtcdTimeout => tonic::Status::deadline_exceeded(msg),
        }
    }
}

/// Runs an etcd call with [`CALL_TIMEOUT`].
async fn etcd<T>(call: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, ApiError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ApiError::EtcdTimeout),
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Reads.
impl ApiState {
    /// The current view, once loaded.
    pub fn view(&self) -> Result<Arc<ClusterView>, ApiError> {
        let view = self.view_rx.borrow().clone();
        if view.revision == 0 {
            return Err(ApiError::NotReady);
        }
        Ok(view)
    }

    /// Looks a base up in the view.
    pub fn lookup(&self, uuid: &str) -> Result<Lookup, ApiError> {
        Bucket::of_base(uuid)?;
        Ok(self.view()?.lookup(uuid)?)
    }

    /// The registered servers and slaves of `view`, with their lease TTLs.
    pub async fn nodes_of(&self, view: &ClusterView) -> Vec<NodeInfo> {
        let ttls = self.ttls.get(NodeInfo::leases(view)).await;
        NodeInfo::all(view, &ttls)
    }

    /// The registered servers and slaves now.
    pub async fn nodes(&self) -> Result<(i64, Vec<NodeInfo>), ApiError> {
        let view = self.view()?;
        Ok((view.revision, self.nodes_of(&view).await))
    }

    /// The moves in flight now.
    pub fn moves(&self) -> Result<(i64, Vec<MoveInfo>), ApiError> {
        let view = self.view()?;
        Ok((view.revision, MoveInfo::all(&view)))
    }

    /// The whole bucket map now.
    pub fn buckets(&self) -> Result<(i64, Vec<BucketInfo>), ApiError> {
        let view = self.view()?;
        Ok((view.revision, BucketInfo::all(&view)))
    }

    /// Which instance leads, asked of etcd's election API.
    pub async fn leader(&self) -> pb::LeaderInfo {
        let mut c = self.client.clone();
        let leader = tokio::time::timeout(CALL_TIMEOUT, c.leader(self.keys.election()))
            .await
            .ok()
            .and_then(Result::ok)
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

    /// Everything the status page shows, from `view`.
    pub async fn status_of(&self, view: &ClusterView) -> Status {
        let this_instance_leads = *self.is_leader_rx.borrow();
        let nodes = self.nodes_of(view).await;
        Status {
            revision: view.revision,
            leader: view.leader().unwrap_or_default().to_owned(),
            instance: self.name.clone(),
            this_instance_leads,
            buckets: BucketInfo::all(view),
            nodes,
            moves: MoveInfo::all(view),
            recent_events: self
                .events
                .recent(STATUS_EVENTS)
                .iter()
                .map(|e| (**e).clone())
                .collect(),
        }
    }

    /// Everything the status page shows, now.
    pub async fn status(&self) -> Result<Status, ApiError> {
        let view = self.view()?;
        Ok(self.status_of(&view).await)
    }
}

/// Intents.
impl ApiState {
    /// A full rebalance: the moves `ClusterView::rebalance_plan` plans from this instance's
    /// view (the leader's placement around the moves in flight). Unless `dry_run`, also writes the rebalance request the leader carries out, as the proxy's
    /// `POST /rebalance/` does; a dry run writes nothing.
    pub async fn rebalance(&self, dry_run: bool) -> Result<RebalancePlan, ApiError> {
        let view = self.view()?;
        let planned_moves: Vec<PlannedMove> = view
            .rebalance_plan()
            .iter()
            .map(|m| PlannedMove {
                bucket: m.bucket.to_string(),
                from: m.from.as_ref().map(NodeId::to_string).unwrap_or_default(),
                to: m.to.as_ref().map(NodeId::to_string).unwrap_or_default(),
            })
            .collect();
        if !dry_run {
            let request = serde_json::json!({"requested_at": now_rfc3339(), "by": self.name});
            let mut c = self.client.clone();
            etcd(c.put(self.keys.rebalance_request(), request.to_string(), None)).await?;
            metrics::counter!("dtable_intents_total", "kind" => "rebalance").increment(1);
            tracing::info!(
                planned = planned_moves.len(),
                revision = view.revision,
                "rebalance requested; the leader carries it out"
            );
        }
        Ok(RebalancePlan {
            requested: !dry_run,
            revision: view.revision,
            planned_moves,
        })
    }

    /// The node `raw` names, if it is registered or has a cordon key (so that a departed
    /// node's cordon can still be lifted). A slave (registered as one and not as a server)
    /// is refused unless it has a cordon key to lift: slaves own no buckets.
    fn known_node(&self, view: &ClusterView, raw: &str) -> Result<NodeId, ApiError> {
        let node = NodeId::new(raw).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        if view.nodes.contains_key(&node) || view.cordons.contains_key(&node) {
            Ok(node)
        } else if view.slaves.contains_key(&node) {
            Err(ApiError::BadRequest(format!(
                "{node} is a dtable-server-slave: slaves own no buckets, so there is nothing to \
                 cordon, drain or uncordon (stop its agent to take it out of the slave pool)"
            )))
        } else {
            Err(ApiError::UnknownNode(node.to_string()))
        }
    }

    /// Writes a cordon (`Cordon`) or drain (`Drain`) intent for `node`. Writing the mode the
    /// node already has changes nothing.
    pub async fn set_cordon(&self, node: &str, mode: CordonMode) -> Result<IntentDone, ApiError> {
        let view = self.view()?;
        let node = self.known_node(&view, node)?;
        if view.slaves.contains_key(&node) && !view.nodes.contains_key(&node) {
            // A leftover cordon of a slave id can be lifted, but no new one written.
            return Err(ApiError::BadRequest(format!(
                "{node} is a dtable-server-slave: slaves own no buckets, so there is nothing to \
                 cordon or drain"
            )));
        }
        let key = format!("{CLUSTER_PREFIX}{}", cordon_name(&node));
        let held = view.bucket_counts().get(&node).copied().unwrap_or(0);
        let what = match mode {
            CordonMode::Cordon => {
                format!("{node} is cordoned: it keeps its {held} buckets and receives no new ones")
            }
            // A server that registered itself acknowledges no release: its buckets are
            // reassigned directly, as the leader's `split` decides.
            CordonMode::Drain if view.nodes.get(&node).is_some_and(|n| !n.record.hands_off()) => {
                format!(
                    "{node} is drained: it registered itself and acknowledges no release, so the \
                     leader reassigns its {held} buckets directly and it receives no new ones"
                )
            }
            CordonMode::Drain => format!(
                "{node} is drained: the leader moves its {held} buckets away by handoff and it receives no new ones"
            ),
        };
        // The same intent again changes nothing, unless the stored value is unreadable (it
        // counts as a plain cordon): then it is rewritten.
        let readable = !view.corrupt_keys.contains_key(&self.keys.cordon(&node));
        if let Some(existing) = view.cordons.get(&node)
            && existing.intent.mode == mode
            && readable
        {
            let since = match existing.intent.at.as_str() {
                "" => String::new(),
                at => format!(" since {at}"),
            };
            return Ok(IntentDone {
                node_id: node.to_string(),
                key,
                revision: existing.mod_revision,
                message: format!("already so{since}: {what}"),
            });
        }
        let intent = CordonIntent {
            mode,
            at: now_rfc3339(),
            by: self.name.clone(),
        };
        let mut c = self.client.clone();
        let resp = etcd(c.put(self.keys.cordon(&node), intent.to_json(), None)).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let kind = match mode {
            CordonMode::Cordon => "cordon",
            CordonMode::Drain => "drain",
        };
        metrics::counter!("dtable_intents_total", "kind" => kind).increment(1);
        tracing::info!(%node, mode = kind, revision, "{what}");
        Ok(IntentDone {
            node_id: node.to_string(),
            key,
            revision,
            message: what,
        })
    }

    /// Lifts a cordon or drain of `node` by deleting its intent key.
    pub async fn uncordon(&self, node: &str) -> Result<IntentDone, ApiError> {
        let view = self.view()?;
        let node = self.known_node(&view, node)?;
        let key = format!("{CLUSTER_PREFIX}{}", cordon_name(&node));
        if !view.cordons.contains_key(&node) {
            return Ok(IntentDone {
                node_id: node.to_string(),
                key,
                revision: view.revision,
                message: format!("{node} was not cordoned; nothing to do"),
            });
        }
        let mut c = self.client.clone();
        let resp = etcd(c.delete(self.keys.cordon(&node), None)).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let message = if !view.nodes.contains_key(&node) {
            format!("the cordon of {node}, which is not registered, is lifted")
        } else if self.auto_rebalance {
            format!("{node} takes buckets again; the leader gives it its share")
        } else {
            format!(
                "{node} takes buckets again; it gets its share on the next rebalance (POST /api/v1/rebalance)"
            )
        };
        metrics::counter!("dtable_intents_total", "kind" => "uncordon").increment(1);
        tracing::info!(%node, revision, "{message}");
        Ok(IntentDone {
            node_id: node.to_string(),
            key,
            revision,
            message,
        })
    }
}
