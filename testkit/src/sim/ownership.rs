//! Which buckets the sim owns: every bucket at epoch 0 when it runs alone, or exactly the
//! buckets whose `assign-<xx>` key in etcd names it, at that key's mod_revision, when it
//! follows the cluster.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use dtable_core::etcd::{ClusterWatch, EtcdOptions, ViewRx, connect};
use dtable_core::{Bucket, ClusterView, KeyLayout};
use tokio_util::sync::CancellationToken;

use super::SimError;

/// The sim's answer to "do I own this bucket, and at which epoch?". Cheap to clone; readers
/// borrow the latest etcd snapshot without locks.
#[derive(Clone, Debug)]
pub struct Ownership {
    /// The node id the assignment must name for a bucket to be ours.
    node_id: Arc<str>,
    /// The cluster view when following etcd; `None` means "owns everything at epoch 0".
    view_rx: Option<ViewRx>,
}

impl Ownership {
    /// Owns every bucket at epoch 0: the sim without `--etcd`.
    pub fn everything(node_id: &str) -> Ownership {
        Ownership {
            node_id: node_id.into(),
            view_rx: None,
        }
    }

    /// Owns what the views on `view_rx` assign to `node_id`. Until the first view arrives
    /// (revision 0) that is nothing.
    pub fn following(node_id: &str, view_rx: ViewRx) -> Ownership {
        Ownership {
            node_id: node_id.into(),
            view_rx: Some(view_rx),
        }
    }

    /// Connects to etcd at `endpoints`, starts a [`ClusterWatch`] over the keys under
    /// `prefix` that runs until `shutdown`, and follows its views.
    ///
    /// # Errors
    /// [`SimError::Etcd`] if no endpoint is given or the client cannot connect.
    pub async fn connect(
        node_id: &str,
        endpoints: Vec<String>,
        prefix: String,
        shutdown: CancellationToken,
    ) -> Result<Ownership, SimError> {
        let opts = EtcdOptions {
            endpoints,
            ..EtcdOptions::default()
        };
        let client = connect(&opts).await?;
        let (watch, view_rx) = ClusterWatch::new(client, KeyLayout::new(prefix));
        tokio::spawn(watch.run(shutdown));
        Ok(Ownership::following(node_id, view_rx))
    }

    /// The node id this ownership is for.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Whether ownership comes from etcd.
    pub fn follows_etcd(&self) -> bool {
        self.view_rx.is_some()
    }

    /// The etcd revision of the view in use; `None` without etcd, 0 before the first list.
    pub fn revision(&self) -> Option<i64> {
        self.view_rx.as_ref().map(|rx| rx.borrow().revision)
    }

    /// The bucket's epoch if the sim owns it now, else `None`.
    pub fn epoch(&self, bucket: Bucket) -> Option<i64> {
        match &self.view_rx {
            None => Some(0),
            Some(rx) => owned_epoch(&rx.borrow(), &self.node_id, bucket),
        }
    }

    /// Every bucket owned now, with its epoch.
    pub fn owned(&self) -> BTreeMap<Bucket, i64> {
        match &self.view_rx {
            None => Bucket::all().map(|b| (b, 0)).collect(),
            Some(rx) => owned_in(&rx.borrow(), &self.node_id),
        }
    }

    /// Calls `on_release` for each bucket the sim stops owning, until `shutdown`. The buckets
    /// held now are taken when this is called, so a release between this call and the first
    /// poll is not missed. Without etcd nothing is ever released.
    pub fn watch_releases(
        self,
        on_release: impl Fn(Bucket) + Send + 'static,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let mut view_rx = self.view_rx;
        let node_id = self.node_id;
        let mut held = view_rx
            .as_mut()
            .map(|rx| owned_in(&rx.borrow_and_update(), &node_id))
            .unwrap_or_default();
        async move {
            let Some(mut rx) = view_rx else {
                return shutdown.cancelled().await;
            };
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = rx.changed() => if changed.is_err() { return },
                }
                let now = owned_in(&rx.borrow_and_update(), &node_id);
                for bucket in held.keys().filter(|b| !now.contains_key(b)) {
                    tracing::info!(%bucket, %node_id, "bucket released");
                    on_release(*bucket);
                }
                held = now;
            }
        }
    }
}

/// The epoch of `bucket` in `view` if its assignment names `node_id`.
fn owned_epoch(view: &ClusterView, node_id: &str, bucket: Bucket) -> Option<i64> {
    let entry = view.assignment.get(bucket.index())?.as_ref()?;
    let owner = entry.owner.as_ref()?;
    (owner.as_str() == node_id).then_some(entry.mod_revision)
}

/// Every bucket `view` assigns to `node_id`, with its epoch.
fn owned_in(view: &ClusterView, node_id: &str) -> BTreeMap<Bucket, i64> {
    Bucket::all()
        .filter_map(|b| owned_epoch(view, node_id, b).map(|e| (b, e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use dtable_core::KvMeta;
    use tokio::sync::watch;

    use super::*;

    fn view(assignments: &[(&str, &str, i64)]) -> Arc<ClusterView> {
        let keys = KeyLayout::default();
        let mut view = ClusterView {
            revision: 1,
            ..ClusterView::default()
        };
        for (key, owner, rev) in assignments {
            let meta = KvMeta {
                create_revision: *rev,
                mod_revision: *rev,
                lease: 0,
            };
            let _ = view.put(&keys, key, owner.as_bytes(), meta);
        }
        Arc::new(view)
    }

    #[test]
    fn alone_it_owns_everything_at_epoch_zero() {
        let own = Ownership::everything("dtable-server-a");
        assert_eq!(own.epoch(Bucket(0x7f)), Some(0));
        assert_eq!(own.owned().len(), 256);
        assert_eq!(own.revision(), None);
    }

    #[test]
    fn following_it_owns_what_names_it() {
        let (_tx, rx) = watch::channel(view(&[
            ("assign-00", "dtable-server-a", 5),
            ("assign-01", "dtable-server-b", 6),
            ("assign-02", "garbage", 7),
        ]));
        let own = Ownership::following("dtable-server-a", rx);
        assert_eq!(own.epoch(Bucket(0)), Some(5));
        assert_eq!(own.epoch(Bucket(1)), None);
        assert_eq!(own.epoch(Bucket(2)), None);
        assert_eq!(own.epoch(Bucket(3)), None);
        assert_eq!(
            own.owned().into_iter().collect::<Vec<_>>(),
            [(Bucket(0), 5)]
        );
    }

    #[tokio::test]
    async fn releases_are_reported() {
        let (tx, rx) = watch::channel(view(&[
            ("assign-00", "dtable-server-a", 5),
            ("assign-01", "dtable-server-a", 6),
        ]));
        let own = Ownership::following("dtable-server-a", rx);
        let (released_tx, mut released_rx) = tokio::sync::mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(own.watch_releases(
            move |b| {
                let _ = released_tx.send(b);
            },
            shutdown.clone(),
        ));
        tx.send_replace(view(&[
            ("assign-00", "dtable-server-a", 5),
            ("assign-01", "dtable-server-b", 8),
        ]));
        assert_eq!(released_rx.recv().await, Some(Bucket(1)));
        shutdown.cancel();
        task.await.unwrap();
    }
}
