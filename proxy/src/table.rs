//! The routing table: an immutable snapshot, derived from the cluster view on every change,
//! that the request path reads without locks or etcd round trips.

use std::collections::HashMap;
use std::sync::Arc;

use dtable_core::{BUCKET_COUNT, Bucket, ClusterView, NodeState};
use hyper::header::HeaderValue;
use hyper::http::uri::{Authority, Scheme};

use crate::pool::{ConnPool, PoolSettings};

/// Where requests for one node go: its `local_node_url`, parsed once, and the pool of
/// keep-alive connections to it.
#[derive(Debug)]
pub struct Upstream {
    /// The node id, for logs and headers.
    pub node_id: String,
    /// http or https.
    pub scheme: Scheme,
    /// host:port.
    pub authority: Authority,
    /// A path prefix from the URL, without the trailing slash ("" for none).
    pub prefix: String,
    /// The `Host` header for requests to it.
    pub host: HeaderValue,
    /// Idle HTTP/1.1 connections to it.
    pub pool: Arc<ConnPool>,
}

impl Upstream {
    /// Parses a node's `local_node_url`; `None` when it is not an absolute http URL.
    pub fn parse(node_id: &str, url: &str, settings: PoolSettings) -> Option<Upstream> {
        let uri: hyper::Uri = url.parse().ok()?;
        let scheme = uri.scheme()?.clone();
        if scheme != Scheme::HTTP {
            return None;
        }
        let authority = uri.authority()?.clone();
        let addr = match authority.port_u16() {
            Some(_) => authority.as_str().to_owned(),
            None => format!("{}:80", authority.host()),
        };
        Some(Upstream {
            node_id: node_id.to_owned(),
            scheme,
            host: HeaderValue::from_str(authority.as_str()).ok()?,
            authority,
            prefix: uri.path().trim_end_matches('/').to_owned(),
            pool: ConnPool::new(addr, settings),
        })
    }

    /// True when both send to the same place (their pools aside).
    pub fn same_target(&self, other: &Upstream) -> bool {
        self.node_id == other.node_id
            && self.scheme == other.scheme
            && self.authority == other.authority
            && self.prefix == other.prefix
    }
}

/// Where a bucket's requests go right now.
#[derive(Clone, Debug)]
pub enum Route {
    /// Served by `upstream`; `epoch` is the mod_revision of `assign-<xx>`.
    Owned {
        /// The owner.
        upstream: Arc<Upstream>,
        /// The bucket's epoch.
        epoch: i64,
        /// The epoch as the `X-Dtable-Epoch` value.
        epoch_header: HeaderValue,
    },
    /// A planned move is in flight: hold requests until it ends.
    Moving,
    /// No live owner (unassigned, or its node is gone): hold until one is placed.
    Unowned,
}

/// One immutable snapshot of the routes.
#[derive(Debug)]
pub struct RoutingTable {
    /// etcd revision the table comes from; 0 before the first load.
    pub revision: i64,
    routes: Vec<Route>,
    /// Active servers, for requests that name no base.
    active: Vec<Arc<Upstream>>,
}

impl Default for RoutingTable {
    fn default() -> Self {
        RoutingTable {
            revision: 0,
            routes: vec![Route::Unowned; BUCKET_COUNT],
            active: Vec::new(),
        }
    }
}

impl RoutingTable {
    /// Builds the table from a view, reusing the upstreams (and so their connections) of
    /// `previous` whose URL is unchanged.
    pub fn from_view(
        view: &ClusterView,
        previous: &RoutingTable,
        settings: PoolSettings,
    ) -> RoutingTable {
        let known: HashMap<&str, &Arc<Upstream>> = previous
            .active_and_owners()
            .map(|u| (u.node_id.as_str(), u))
            .collect();
        let mut upstreams: HashMap<&str, Arc<Upstream>> = HashMap::new();
        for (id, node) in &view.nodes {
            let url = &node.record.local_node_url;
            let fresh = Upstream::parse(id.as_str(), url, settings);
            let Some(fresh) = fresh else {
                tracing::warn!(node_id = %id, local_node_url = %url, "node has no usable http local_node_url; not routing to it");
                continue;
            };
            let up = match known.get(id.as_str()) {
                Some(old) if old.same_target(&fresh) => Arc::clone(old),
                _ => Arc::new(fresh),
            };
            upstreams.insert(id.as_str(), up);
        }
        let routes = Bucket::all()
            .map(|b| {
                if view.moves.contains_key(&b) {
                    return Route::Moving;
                }
                match view.owner(b) {
                    Some(owner) => match upstreams.get(owner.node.record.node_id.as_str()) {
                        Some(up) => Route::Owned {
                            upstream: Arc::clone(up),
                            epoch: owner.epoch,
                            epoch_header: HeaderValue::from(owner.epoch),
                        },
                        None => Route::Unowned,
                    },
                    None => Route::Unowned,
                }
            })
            .collect();
        let active = view
            .nodes
            .iter()
            .filter(|(_, n)| n.record.state == NodeState::Active)
            .filter_map(|(id, _)| upstreams.get(id.as_str()).cloned())
            .collect();
        RoutingTable {
            revision: view.revision,
            routes,
            active,
        }
    }

    /// The route of a bucket.
    pub fn route(&self, bucket: Bucket) -> &Route {
        &self.routes[bucket.index()]
    }

    /// The `n`-th active server, round robin; `None` when there is none.
    pub fn any_active(&self, n: usize) -> Option<&Arc<Upstream>> {
        (!self.active.is_empty()).then(|| &self.active[n % self.active.len()])
    }

    /// Every upstream the table routes to (some more than once).
    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.active_and_owners()
    }

    fn active_and_owners(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.active
            .iter()
            .chain(self.routes.iter().filter_map(|r| match r {
                Route::Owned { upstream, .. } => Some(upstream),
                _ => None,
            }))
    }
}

#[cfg(test)]
mod tests {
    use dtable_core::{KeyLayout, KvMeta};

    use super::*;

    const SETTINGS: PoolSettings = PoolSettings {
        connect_timeout: std::time::Duration::from_secs(1),
        idle_timeout: std::time::Duration::from_secs(60),
    };

    fn view() -> ClusterView {
        let k = KeyLayout::default();
        let mut v = ClusterView {
            revision: 9,
            ..ClusterView::default()
        };
        let rec = |id: &str, url: &str| {
            format!(r#"{{"node_id":"{id}","node_url":"x","local_node_url":"{url}"}}"#).into_bytes()
        };
        let meta = |r| KvMeta {
            create_revision: r,
            mod_revision: r,
            lease: 1,
        };
        v.put(
            &k,
            "dtable-server-a",
            &rec("dtable-server-a", "http://127.0.0.1:5001/"),
            meta(2),
        )
        .unwrap();
        v.put(
            &k,
            "dtable-server-b",
            &rec("dtable-server-b", "http://10.0.0.2:5000/sub/"),
            meta(3),
        )
        .unwrap();
        v.put(
            &k,
            "dtable-server-c",
            &rec("dtable-server-c", "ftp://nope/"),
            meta(3),
        )
        .unwrap();
        v.put(&k, "assign-00", b"dtable-server-a", meta(4)).unwrap();
        v.put(&k, "assign-01", b"dtable-server-b", meta(5)).unwrap();
        v.put(&k, "assign-02", b"dtable-server-gone", meta(6))
            .unwrap();
        v.put(&k, "assign-03", b"dtable-server-c", meta(7)).unwrap();
        v.put(&k, "assign-04", b"dtable-server-a", meta(8)).unwrap();
        v.put(
            &k,
            "dtable-cluster/moves/04",
            br#"{"from":"a","to":"b"}"#,
            meta(8),
        )
        .unwrap();
        v
    }

    #[test]
    fn routes_follow_the_view() {
        let t = RoutingTable::from_view(&view(), &RoutingTable::default(), SETTINGS);
        match t.route(Bucket(0)) {
            Route::Owned {
                upstream,
                epoch,
                epoch_header,
            } => {
                assert_eq!(epoch_header, "4");
                assert_eq!(upstream.authority.as_str(), "127.0.0.1:5001");
                assert_eq!(upstream.prefix, "");
                assert_eq!(*epoch, 4);
            }
            r => panic!("{r:?}"),
        }
        match t.route(Bucket(1)) {
            Route::Owned { upstream, .. } => assert_eq!(upstream.prefix, "/sub"),
            r => panic!("{r:?}"),
        }
        assert!(matches!(t.route(Bucket(2)), Route::Unowned), "dead owner");
        assert!(matches!(t.route(Bucket(3)), Route::Unowned), "unusable URL");
        assert!(matches!(t.route(Bucket(4)), Route::Moving));
        assert!(matches!(t.route(Bucket(5)), Route::Unowned));
        assert_eq!(t.active.len(), 2);
        assert_eq!(t.any_active(0).unwrap().node_id, "dtable-server-a");
        assert_eq!(t.any_active(3).unwrap().node_id, "dtable-server-b");
    }

    #[test]
    fn unchanged_upstreams_are_reused() {
        let first = RoutingTable::from_view(&view(), &RoutingTable::default(), SETTINGS);
        let second = RoutingTable::from_view(&view(), &first, SETTINGS);
        assert!(Arc::ptr_eq(
            first.any_active(0).unwrap(),
            second.any_active(0).unwrap()
        ));
    }
}
