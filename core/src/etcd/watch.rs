//! The cluster watch: a small state machine that lists the view's key range at a revision,
//! watches from the next revision, resumes from the last revision seen when the stream
//! breaks, and re-lists only when that revision has been compacted away. Each
//! change is published as a new immutable `Arc<ClusterView>` on a `tokio::sync::watch`
//! channel, so readers borrow the latest snapshot without locks or etcd round trips.

use std::collections::HashSet;
use std::sync::Arc;

use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions};
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::keys::KeyLayout;
use crate::view::{ClusterView, Corrupt, KvMeta};

/// Receiving half of the view channel. Revision 0 means "not loaded yet".
pub type ViewRx = watch::Receiver<Arc<ClusterView>>;

/// Watches the cluster's keys into a [`ClusterView`].
pub struct ClusterWatch {
    client: Client,
    keys: KeyLayout,
    view_tx: watch::Sender<Arc<ClusterView>>,
    /// (key, mod_revision) of every bad value already logged, so each is logged once.
    reported: HashSet<(String, i64)>,
    /// Full lists done so far.
    lists: u64,
}

/// Why the watch must start over from a fresh list.
enum Restart {
    /// The revision we watch from was compacted away.
    Compacted(i64),
    /// The stream failed or ended.
    Broken(String),
}

impl ClusterWatch {
    /// A watch over `keys`' view range; the receiver starts with an empty view at revision 0.
    pub fn new(client: Client, keys: KeyLayout) -> (ClusterWatch, ViewRx) {
        let (view_tx, view_rx) = watch::channel(Arc::new(ClusterView::default()));
        (
            ClusterWatch {
                client,
                keys,
                view_tx,
                reported: HashSet::new(),
                lists: 0,
            },
            view_rx,
        )
    }

    /// Another receiver of the view.
    pub fn subscribe(&self) -> ViewRx {
        self.view_tx.subscribe()
    }

    /// Runs until `shutdown`: list, watch, resume after a broken stream (with back-off), and
    /// list again after a compaction.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = super::Backoff::default();
        // The view being maintained; `None` forces a fresh list.
        let mut current: Option<ClusterView> = None;
        loop {
            let restart = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.session(&mut current) => r,
            };
            match restart {
                Restart::Compacted(rev) => {
                    current = None;
                    metrics::counter!("dtable_view_relists_total").increment(1);
                    tracing::info!(
                        compact_revision = rev,
                        "watch revision compacted; re-listing"
                    );
                    backoff.reset();
                }
                Restart::Broken(why) => {
                    metrics::counter!("dtable_view_watch_breaks_total").increment(1);
                    tracing::warn!(error = %why, retry_in_ms = backoff.peek().as_millis() as u64, "cluster watch broken; resuming");
                    backoff.wait(&shutdown).await;
                }
            }
        }
    }

    /// One watch session: list if there is no view to resume from, then watch from the view's
    /// revision + 1 until the stream ends.
    async fn session(&mut self, current: &mut Option<ClusterView>) -> Restart {
        let (start, end) = self.keys.view_range();
        let view = match current {
            Some(view) => view,
            None => match self.list(&start, &end).await {
                Ok(view) => current.insert(view),
                Err(why) => return Restart::Broken(why),
            },
        };
        let opts = WatchOptions::new()
            .with_range(end.as_bytes())
            .with_start_revision(view.revision + 1);
        let mut stream = match self.client.watch(start.as_bytes(), Some(opts)).await {
            Ok(s) => s,
            Err(e) => return Restart::Broken(format!("watch: {e}")),
        };
        loop {
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return Restart::Broken("watch stream ended".into()),
                Err(e) => return Restart::Broken(format!("watch: {e}")),
            };
            if msg.compact_revision() > 0 {
                return Restart::Compacted(msg.compact_revision());
            }
            if msg.canceled() {
                return Restart::Broken(format!("watch canceled: {}", msg.cancel_reason()));
            }
            if msg.events().is_empty() {
                continue;
            }
            for ev in msg.events() {
                let Some(kv) = ev.kv() else { continue };
                match ev.event_type() {
                    EventType::Put => self.apply_put(view, kv),
                    EventType::Delete => {
                        view.delete(&self.keys, &String::from_utf8_lossy(kv.key()))
                    }
                }
            }
            if let Some(h) = msg.header() {
                view.revision = view.revision.max(h.revision());
            }
            self.publish(view.clone());
        }
    }

    /// Lists the whole range at one revision into a fresh view and publishes it.
    async fn list(&mut self, start: &str, end: &str) -> Result<ClusterView, String> {
        let listed = timeout(
            super::CALL_TIMEOUT,
            self.client.get(
                start.as_bytes(),
                Some(GetOptions::new().with_range(end.as_bytes())),
            ),
        )
        .await;
        let resp = match listed {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(format!("list: {e}")),
            Err(_) => return Err("list timed out".into()),
        };
        let Some(revision) = resp.header().map(|h| h.revision()) else {
            return Err("list answer without a header".into());
        };
        self.lists += 1;
        let mut view = ClusterView {
            revision,
            lists: self.lists,
            ..ClusterView::default()
        };
        for kv in resp.kvs() {
            self.apply_put(&mut view, kv);
        }
        self.publish(view.clone());
        Ok(view)
    }

    fn apply_put(&mut self, view: &mut ClusterView, kv: &KeyValue) {
        let key = String::from_utf8_lossy(kv.key());
        let meta = KvMeta {
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        };
        if let Err(bad) = view.put(&self.keys, &key, kv.value(), meta) {
            self.report(&bad, "malformed");
        }
    }

    fn report(&mut self, bad: &Corrupt, kind: &'static str) {
        if self.reported.insert((bad.key.clone(), bad.mod_revision)) {
            metrics::counter!("dtable_view_corrupt_values_total", "kind" => kind).increment(1);
            tracing::warn!(key = %bad.key, mod_revision = bad.mod_revision, problem = %bad.problem, "ignoring corrupt value in etcd");
        }
    }

    fn publish(&mut self, view: ClusterView) {
        // Assignments naming a node that is not registered: normal for a moment after a node
        // leaves (the leader re-places them), damage if they persist. Logged once per value.
        let orphans: Vec<Corrupt> = view
            .orphaned()
            .into_iter()
            .filter(|(_, a)| a.owner.is_some())
            .map(|(b, a)| Corrupt {
                key: self.keys.assign(b),
                mod_revision: a.mod_revision,
                problem: format!("names {:?}, which is not registered", a.raw),
            })
            .filter(|c| !self.reported.contains(&(c.key.clone(), c.mod_revision)))
            .collect();
        if !orphans.is_empty() {
            metrics::counter!("dtable_view_corrupt_values_total", "kind" => "unregistered_node")
                .increment(orphans.len() as u64);
            let sample: Vec<String> = orphans
                .iter()
                .take(8)
                .map(|c| format!("{} {}", c.key, c.problem))
                .collect();
            tracing::info!(count = orphans.len(), revision = view.revision, first = ?sample, "assignments name unregistered nodes");
            for c in orphans {
                self.reported.insert((c.key, c.mod_revision));
            }
        }
        // Forget reports of values that are gone, so the set stays bounded.
        if self.reported.len() > 4096 {
            self.reported
                .retain(|(k, rev)| view.corrupt_keys.get(k) == Some(rev));
        }
        metrics::gauge!("dtable_view_revision").set(view.revision as f64);
        metrics::gauge!("dtable_view_nodes").set(view.nodes.len() as f64);
        metrics::gauge!("dtable_view_orphaned_buckets").set(view.orphaned().len() as f64);
        self.view_tx.send_replace(Arc::new(view));
    }
}
