//! Which buckets the sim serves, and at which epoch: one table that every request checks and
//! that logs `own` and `disown` as it changes. Three sources fill it: every bucket at epoch 0
//! when the sim runs alone; the buckets whose `assign-<xx>` in etcd names it (`--etcd`); or
//! what its local agent pushes, bounded by the serving lease (`--agent`, see `agent.rs`).
//!
//! An `own` is logged before the bucket is put in the table and a `disown` after it is taken
//! out, so the logged intervals always cover the time the sim really served.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dtable_core::etcd::{ClusterWatch, EtcdOptions, ViewRx, connect};
use dtable_core::{Bucket, ClusterView, KeyLayout};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::SimError;
use crate::events::{EventKind, EventLog};

/// One spell of owning a bucket: its epoch, and a generation number unique within the
/// process so that memory loaded in an earlier spell is never mistaken for this one's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Term {
    /// The bucket epoch (mod_revision of `assign-<xx>`; 0 when alone).
    pub epoch: i64,
    /// Increases with every `own` in this process.
    pub generation: u64,
}

/// Where the sim's ownership comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Every bucket at epoch 0.
    Alone,
    /// The `assign-<xx>` keys in etcd.
    Etcd,
    /// The local agent's `Watch` stream.
    Agent,
    /// Nothing: a slave owns no bucket.
    Slave,
}

impl Source {
    /// `alone`, `etcd`, `agent` or `slave`.
    pub fn name(self) -> &'static str {
        match self {
            Source::Alone => "alone",
            Source::Etcd => "etcd",
            Source::Agent => "agent",
            Source::Slave => "slave",
        }
    }
}

/// The sim's ownership table. Cheap to clone; all clones share it.
#[derive(Clone, Debug)]
pub struct Ownership {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The node id the assignment must name for a bucket to be ours.
    node_id: Arc<str>,
    /// Where ownership comes from.
    source: Source,
    /// Where `own` and `disown` are logged.
    log: EventLog,
    /// The table itself; never held across an `.await`.
    table: Mutex<Table>,
    /// Every bucket given up, with the term it was held at, for the sim to unload and to
    /// disconnect its sockets.
    lost_tx: mpsc::UnboundedSender<(Bucket, Term)>,
    /// The receiving half, until the sim takes it.
    lost_rx: Mutex<Option<mpsc::UnboundedReceiver<(Bucket, Term)>>>,
}

#[derive(Debug, Default)]
struct Table {
    /// The buckets held (logged as owned), with their terms.
    owned: BTreeMap<Bucket, Term>,
    /// Held buckets being released: refused already, disowned once saved and unloaded.
    releasing: BTreeSet<Bucket>,
    /// The end of the serving lease; `None` when there is none (alone, etcd).
    serve_until: Option<Instant>,
    /// The last generation handed out.
    generation: u64,
    /// The etcd revision of the view behind the table, if any.
    revision: Option<i64>,
}

impl Ownership {
    fn new(node_id: &str, source: Source, log: EventLog, serve_until: Option<Instant>) -> Self {
        let (lost_tx, lost_rx) = mpsc::unbounded_channel();
        let table = Table {
            serve_until,
            ..Table::default()
        };
        Ownership {
            inner: Arc::new(Inner {
                node_id: node_id.into(),
                source,
                log,
                table: Mutex::new(table),
                lost_tx,
                lost_rx: Mutex::new(Some(lost_rx)),
            }),
        }
    }

    /// Owns every bucket at epoch 0: the sim without `--etcd` or `--agent`.
    pub fn everything(node_id: &str, log: EventLog) -> Ownership {
        let own = Ownership::new(node_id, Source::Alone, log, None);
        own.reconcile(
            &Bucket::all().map(|b| (b, 0)).collect(),
            None,
            &BTreeSet::new(),
        );
        own
    }

    /// Owns what the view on `view_rx` assigns to `node_id` now; [`Ownership::follow`] keeps
    /// it up to date. Before the first view arrives (revision 0) that is nothing.
    pub fn following(node_id: &str, view_rx: &ViewRx, log: EventLog) -> Ownership {
        let own = Ownership::new(node_id, Source::Etcd, log, None);
        let view = view_rx.borrow().clone();
        own.apply_view(&view);
        own
    }

    /// Owns nothing, ever: the sim with `--role slave`.
    pub fn nothing(node_id: &str, log: EventLog) -> Ownership {
        Ownership::new(node_id, Source::Slave, log, None)
    }

    /// Owns nothing until the agent says so: the sim with `--agent`.
    pub fn agent(node_id: &str, log: EventLog) -> Ownership {
        Ownership::new(node_id, Source::Agent, log, Some(Instant::now()))
    }

    /// Connects to etcd at `endpoints`, starts a [`ClusterWatch`] over the keys under
    /// `prefix` and follows its views, both until `shutdown`.
    ///
    /// # Errors
    /// [`SimError::Etcd`] if no endpoint is given or the client cannot connect.
    pub async fn connect(
        node_id: &str,
        endpoints: Vec<String>,
        prefix: String,
        log: EventLog,
        shutdown: CancellationToken,
    ) -> Result<Ownership, SimError> {
        let opts = EtcdOptions {
            endpoints,
            ..EtcdOptions::default()
        };
        let client = connect(&opts).await?;
        let (watch, view_rx) = ClusterWatch::new(client, KeyLayout::new(prefix));
        tokio::spawn(watch.run(shutdown.clone()));
        let own = Ownership::following(node_id, &view_rx, log);
        tokio::spawn(own.clone().follow(view_rx, shutdown));
        Ok(own)
    }

    /// Applies every new view on `view_rx` until `shutdown` or until the watch ends.
    pub async fn follow(self, mut view_rx: ViewRx, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = view_rx.changed() => if changed.is_err() { return },
            }
            let view = view_rx.borrow_and_update().clone();
            self.apply_view(&view);
        }
    }

    /// The node id this ownership is for.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// Where ownership comes from.
    pub fn source(&self) -> Source {
        self.inner.source
    }

    /// Whether ownership comes from etcd.
    pub fn follows_etcd(&self) -> bool {
        self.inner.source == Source::Etcd
    }

    /// The etcd revision of the view in use (from etcd or the agent); `None` when alone.
    pub fn revision(&self) -> Option<i64> {
        self.lock().revision
    }

    /// The term of `bucket` if the sim serves it now: held, not being released, and within
    /// the serving lease.
    pub fn term(&self, bucket: Bucket) -> Option<Term> {
        let table = self.lock();
        if table.releasing.contains(&bucket) || lapsed(&table) {
            return None;
        }
        table.owned.get(&bucket).copied()
    }

    /// The bucket's epoch if the sim serves it now.
    pub fn epoch(&self, bucket: Bucket) -> Option<i64> {
        self.term(bucket).map(|t| t.epoch)
    }

    /// Every bucket served now, with its epoch.
    pub fn owned(&self) -> BTreeMap<Bucket, i64> {
        let table = self.lock();
        if lapsed(&table) {
            return BTreeMap::new();
        }
        let served = table.owned.iter();
        served
            .filter(|(b, _)| !table.releasing.contains(b))
            .map(|(b, t)| (*b, t.epoch))
            .collect()
    }

    /// Time left on the serving lease; `None` without one.
    pub fn serve_for(&self) -> Option<Duration> {
        self.lock()
            .serve_until
            .map(|until| until.saturating_duration_since(Instant::now()))
    }

    /// The bucket-lost receiver, the first time it is asked for.
    pub(crate) fn take_lost(&self) -> Option<mpsc::UnboundedReceiver<(Bucket, Term)>> {
        self.inner
            .lost_rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// When the serving lease lapses, if anything is held under one.
    pub(crate) fn lapse_deadline(&self) -> Option<Instant> {
        let table = self.lock();
        table.serve_until.filter(|_| !table.owned.is_empty())
    }

    /// Records the revision of the view behind the table.
    pub(crate) fn set_revision(&self, revision: i64) {
        self.lock().revision = Some(revision);
    }

    /// Makes the table hold exactly `wanted` (plus the held buckets in `keep`) under a
    /// serving lease ending at `serve_until`: gives up the rest, re-owns a bucket whose epoch
    /// changed, and owns the new ones.
    pub(crate) fn reconcile(
        &self,
        wanted: &BTreeMap<Bucket, i64>,
        serve_until: Option<Instant>,
        keep: &BTreeSet<Bucket>,
    ) {
        let mut table = self.lock();
        table.serve_until = serve_until;
        let held: Vec<(Bucket, Term)> = table.owned.iter().map(|(b, t)| (*b, *t)).collect();
        for (bucket, term) in held {
            let stays = wanted.get(&bucket) == Some(&term.epoch) || keep.contains(&bucket);
            if !stays {
                self.disown_locked(&mut table, bucket, "reassigned");
            }
        }
        for (&bucket, &epoch) in wanted {
            if !table.owned.contains_key(&bucket) {
                self.inner.log.ownership(EventKind::Own, bucket, epoch);
                table.generation += 1;
                let term = Term {
                    epoch,
                    generation: table.generation,
                };
                table.owned.insert(bucket, term);
                tracing::info!(%bucket, epoch, node_id = %self.inner.node_id, "serving bucket");
            }
        }
    }

    /// Stops serving `bucket` for a release, and returns its term, if it is held.
    pub(crate) fn begin_release(&self, bucket: Bucket) -> Option<Term> {
        let mut table = self.lock();
        let term = table.owned.get(&bucket).copied()?;
        table.releasing.insert(bucket);
        Some(term)
    }

    /// Gives up `bucket` if it is held.
    pub(crate) fn disown(&self, bucket: Bucket, why: &'static str) {
        let mut table = self.lock();
        self.disown_locked(&mut table, bucket, why);
    }

    /// Gives up every bucket at once; returns how many were held.
    pub(crate) fn disown_all(&self, why: &'static str) -> usize {
        let mut table = self.lock();
        let held: Vec<Bucket> = table.owned.keys().copied().collect();
        for &bucket in &held {
            self.disown_locked(&mut table, bucket, why);
        }
        if !held.is_empty() {
            tracing::info!(buckets = held.len(), why, "stopped serving every bucket");
        }
        held.len()
    }

    fn disown_locked(&self, table: &mut Table, bucket: Bucket, why: &'static str) {
        table.releasing.remove(&bucket);
        let Some(term) = table.owned.remove(&bucket) else {
            return;
        };
        // After the serving lease lapsed nothing was served (every request checks it), so the
        // interval ended at the deadline, however late this process noticed (say, after a
        // SIGSTOP).
        match table.serve_until.filter(|until| Instant::now() >= *until) {
            Some(until) => {
                let late = Instant::now().saturating_duration_since(until).as_nanos() as u64;
                let at = crate::events::now_ns().saturating_sub(late);
                self.inner
                    .log
                    .ownership_at(at, EventKind::Disown, bucket, term.epoch);
            }
            None => self
                .inner
                .log
                .ownership(EventKind::Disown, bucket, term.epoch),
        }
        tracing::debug!(%bucket, epoch = term.epoch, why, "stopped serving bucket");
        let _ = self.inner.lost_tx.send((bucket, term));
    }

    /// Owns what `view` assigns to this node.
    fn apply_view(&self, view: &ClusterView) {
        self.set_revision(view.revision);
        let wanted = owned_in(view, &self.inner.node_id);
        self.reconcile(&wanted, None, &BTreeSet::new());
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every update leaves the table consistent before it can panic; keep using it.
        self.inner
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether the serving lease has run out.
fn lapsed(table: &Table) -> bool {
    table
        .serve_until
        .is_some_and(|until| Instant::now() >= until)
}

/// Every bucket `view` assigns to `node_id`, with its epoch.
fn owned_in(view: &ClusterView, node_id: &str) -> BTreeMap<Bucket, i64> {
    let owned_epoch = |bucket: Bucket| {
        let entry = view.assignment.get(bucket.index())?.as_ref()?;
        let owner = entry.owner.as_ref()?;
        (owner.as_str() == node_id).then_some(entry.mod_revision)
    };
    Bucket::all()
        .filter_map(|b| owned_epoch(b).map(|e| (b, e)))
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

    fn quiet(node: &str) -> EventLog {
        EventLog::disabled(node)
    }

    #[test]
    fn alone_it_owns_everything_at_epoch_zero() {
        let own = Ownership::everything("dtable-server-a", quiet("a"));
        assert_eq!(own.epoch(Bucket(0x7f)), Some(0));
        assert_eq!(own.owned().len(), 256);
        assert_eq!(own.revision(), None);
        assert_eq!(own.source(), Source::Alone);
    }

    #[tokio::test]
    async fn following_it_owns_what_names_it_and_reports_losses() {
        let (tx, rx) = watch::channel(view(&[
            ("assign-00", "dtable-server-a", 5),
            ("assign-01", "dtable-server-b", 6),
            ("assign-02", "garbage", 7),
            ("assign-03", "dtable-server-a", 8),
        ]));
        let own = Ownership::following("dtable-server-a", &rx, quiet("a"));
        assert_eq!(own.epoch(Bucket(0)), Some(5));
        assert_eq!(own.epoch(Bucket(1)), None);
        assert_eq!(own.epoch(Bucket(2)), None);
        let owned: Vec<_> = own.owned().into_iter().collect();
        assert_eq!(owned, [(Bucket(0), 5), (Bucket(3), 8)]);
        let first = own.term(Bucket(3)).unwrap();

        let mut lost_rx = own.take_lost().unwrap();
        assert!(own.take_lost().is_none());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(own.clone().follow(rx, shutdown.clone()));
        tx.send_replace(view(&[
            ("assign-00", "dtable-server-a", 5),
            ("assign-01", "dtable-server-b", 6),
            ("assign-03", "dtable-server-a", 9),
        ]));
        // The epoch of 03 changed: the old term is lost and a new one begins.
        assert_eq!(lost_rx.recv().await, Some((Bucket(3), first)));
        let second = own.term(Bucket(3)).unwrap();
        assert_eq!(second.epoch, 9);
        assert!(second.generation > first.generation);
        tx.send_replace(view(&[("assign-03", "dtable-server-a", 9)]));
        assert_eq!(lost_rx.recv().await.map(|(b, _)| b), Some(Bucket(0)));
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_serving_lease_bounds_agent_ownership() {
        let own = Ownership::agent("dtable-server-a", quiet("a"));
        assert_eq!(own.epoch(Bucket(1)), None);
        let wanted = BTreeMap::from([(Bucket(1), 4), (Bucket(2), 4)]);
        let until = Instant::now() + Duration::from_millis(100);
        own.reconcile(&wanted, Some(until), &BTreeSet::new());
        assert_eq!(own.epoch(Bucket(1)), Some(4));
        assert_eq!(own.lapse_deadline(), Some(until));
        assert_eq!(own.begin_release(Bucket(2)).map(|t| t.epoch), Some(4));
        assert_eq!(own.epoch(Bucket(2)), None, "refused while releasing");
        assert_eq!(own.begin_release(Bucket(9)), None);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(own.epoch(Bucket(1)), None, "lapsed");
        assert!(own.owned().is_empty());
        assert_eq!(own.disown_all("lapsed"), 2);
        assert_eq!(own.lapse_deadline(), None);
    }
}
