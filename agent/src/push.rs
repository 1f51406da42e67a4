//! What the agent tells its server: a pure function of the cluster view and the agent's phase.
//! The server serves `owned` until `serve_for` lapses, releases `release`, and stops serving
//! everything when `fenced`.

use dtable_core::keys::ack_name;
use dtable_core::{Bucket, ClusterView, NodeId};
use tokio::time::Instant;

/// Where the agent stands, as far as its server is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not registered, or fencing: the server must not serve anything.
    Fenced,
    /// Registered under a lease whose local deadline is `deadline`; the server serves what
    /// views at or after `since` (the registration's revision) give it.
    Serving {
        /// Revision the registration was created at.
        since: i64,
        /// Local deadline of the lease: last successful keep-alive's send time + TTL − margin.
        deadline: Instant,
    },
}

/// One message's worth of state for the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushState {
    /// Bumped on every change, for the HTTP twin's long poll.
    pub version: u64,
    /// etcd revision of the view behind it.
    pub revision: i64,
    /// This node.
    pub node_id: String,
    /// Buckets to serve, with their epochs.
    pub owned: Vec<(Bucket, i64)>,
    /// Buckets to save, unload and acknowledge, with the move ids.
    pub release: Vec<(Bucket, i64)>,
    /// Releases whose ack is already in etcd (seen in the view).
    pub acked: Vec<(Bucket, i64)>,
    /// Serve nothing.
    pub fenced: bool,
    /// When the serving lease lapses; `None` when fenced.
    pub deadline: Option<Instant>,
}

impl PushState {
    /// Milliseconds of serving lease left now.
    pub fn serve_for_ms(&self, now: Instant) -> u64 {
        match (self.fenced, self.deadline) {
            (false, Some(d)) => d.saturating_duration_since(now).as_millis() as u64,
            _ => 0,
        }
    }

    /// Computes the state from a view and the phase.
    pub fn compute(view: &ClusterView, node: &NodeId, phase: &Phase, version: u64) -> PushState {
        let (fenced, deadline, since) = match phase {
            Phase::Fenced => (true, None, i64::MAX),
            Phase::Serving { since, deadline } => (false, Some(*deadline), *since),
        };
        let mut owned = Vec::new();
        let mut release = Vec::new();
        let mut acked = Vec::new();
        // Only a view at or after our registration may grant anything: an older one could
        // carry a previous registration's assignment.
        if !fenced && view.revision >= since {
            for b in Bucket::all() {
                let Some(a) = &view.assignment[b.index()] else {
                    continue;
                };
                if a.owner.as_ref() != Some(node) {
                    continue;
                }
                match view.moves.get(&b) {
                    Some(mv) if mv.from == node.as_str() => {
                        release.push((b, mv.create_revision));
                        if view
                            .cluster_keys
                            .contains_key(&ack_name(b, mv.create_revision))
                        {
                            acked.push((b, mv.create_revision));
                        }
                    }
                    _ => owned.push((b, a.mod_revision)),
                }
            }
        }
        PushState {
            version,
            revision: view.revision,
            node_id: node.to_string(),
            owned,
            release,
            acked,
            fenced,
            deadline,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use dtable_core::{KeyLayout, KvMeta};

    use super::*;

    fn view(rev: i64) -> ClusterView {
        let k = KeyLayout::default();
        let mut v = ClusterView {
            revision: rev,
            ..ClusterView::default()
        };
        let m = |r| KvMeta {
            create_revision: r,
            mod_revision: r,
            lease: 0,
        };
        v.put(&k, "assign-00", b"dtable-server-a", m(3)).unwrap();
        v.put(&k, "assign-01", b"dtable-server-a", m(4)).unwrap();
        v.put(&k, "assign-02", b"dtable-server-b", m(5)).unwrap();
        v.put(
            &k,
            "dtable-cluster/moves/01",
            br#"{"from":"dtable-server-a","to":"dtable-server-b"}"#,
            m(9),
        )
        .unwrap();
        v
    }

    #[test]
    fn owned_release_and_fence() {
        let a = NodeId::new("dtable-server-a").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let s = PushState::compute(&view(10), &a, &Phase::Serving { since: 2, deadline }, 1);
        assert_eq!(s.owned, vec![(Bucket(0), 3)]);
        assert_eq!(s.release, vec![(Bucket(1), 9)]);
        assert!(!s.fenced);
        assert!(s.serve_for_ms(Instant::now()) > 4000);

        let f = PushState::compute(&view(10), &a, &Phase::Fenced, 2);
        assert!(f.fenced && f.owned.is_empty() && f.release.is_empty());
        assert_eq!(f.serve_for_ms(Instant::now()), 0);
    }

    #[test]
    fn nothing_from_views_older_than_the_registration() {
        let a = NodeId::new("dtable-server-a").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let s = PushState::compute(
            &view(10),
            &a,
            &Phase::Serving {
                since: 11,
                deadline,
            },
            1,
        );
        assert!(s.owned.is_empty() && s.release.is_empty() && !s.fenced);
    }
}
