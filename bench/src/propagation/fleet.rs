//! The watchers under test: N `ClusterWatch` loops, each on its own etcd connection like N
//! agents, plus a probe that notes when assignment writes are committed. A trial arms one
//! waiter per watcher before it changes anything, so each waiter notes the first instant its
//! watcher's view meets the trial's goal.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use dtable_core::etcd::etcd_client::{EventType, WatchOptions};
use dtable_core::etcd::{ClusterWatch, EtcdOptions, ViewRx, connect};
use dtable_core::{ClusterView, KeyLayout};
use tokio::sync::{Barrier, mpsc};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::CancellationToken;

use super::WAIT_LIMIT;

/// What a trial waits for, judged on one watcher's view.
pub type Goal = Arc<dyn Fn(&ClusterView) -> bool + Send + Sync>;

/// N independent cluster watches.
pub struct Fleet {
    /// One view receiver per watcher.
    view_rxs: Vec<ViewRx>,
    /// Stops every watch loop.
    shutdown: CancellationToken,
    /// The watch loops.
    tasks: JoinSet<()>,
}

/// The waiters of one trial, armed and waiting.
pub struct Armed {
    /// One waiter per watcher; each yields its index and the instant its goal was met.
    waiters: JoinSet<(usize, Result<Instant, String>)>,
    /// How many waiters there are.
    count: usize,
}

impl Fleet {
    /// Connects `count` clients, one per watcher, and starts a watch on each.
    pub async fn start(
        etcd: &EtcdOptions,
        keys: &KeyLayout,
        count: usize,
    ) -> anyhow::Result<Fleet> {
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut view_rxs = Vec::with_capacity(count);
        for i in 0..count {
            let client = timeout(WAIT_LIMIT, connect(etcd))
                .await
                .with_context(|| format!("connecting watcher {i} timed out"))?
                .with_context(|| format!("connecting watcher {i}"))?;
            let (watch, view_rx) = ClusterWatch::new(client, keys.clone());
            tasks.spawn(watch.run(shutdown.clone()));
            view_rxs.push(view_rx);
        }
        Ok(Fleet {
            view_rxs,
            shutdown,
            tasks,
        })
    }

    /// The latest view of watcher `i`.
    pub fn view(&self, i: usize) -> Arc<ClusterView> {
        self.view_rxs[i].borrow().clone()
    }

    /// Arms one waiter per watcher for `goal` and returns once every waiter has looked at its
    /// current view, so a change made after this returns is seen by all of them. Each waiter
    /// gives up [`WAIT_LIMIT`] after arming.
    pub async fn arm(&self, goal: Goal) -> Armed {
        let count = self.view_rxs.len();
        let armed = Arc::new(Barrier::new(count + 1));
        let mut waiters = JoinSet::new();
        for (i, view_rx) in self.view_rxs.iter().enumerate() {
            let mut view_rx = view_rx.clone();
            let goal = goal.clone();
            let armed = armed.clone();
            waiters.spawn(async move {
                let met = goal(&view_rx.borrow_and_update());
                armed.wait().await;
                let deadline = Instant::now() + WAIT_LIMIT;
                let mut met_at = met.then(Instant::now);
                while met_at.is_none() {
                    match timeout_at(deadline, view_rx.changed()).await {
                        Err(_) => return (i, Err(format!("not reached within {WAIT_LIMIT:?}"))),
                        Ok(Err(_)) => return (i, Err("watch loop ended".to_owned())),
                        Ok(Ok(())) => {}
                    }
                    if goal(&view_rx.borrow_and_update()) {
                        met_at = Some(Instant::now());
                    }
                }
                (i, Ok(met_at.expect("loop ends once met")))
            });
        }
        armed.wait().await;
        Armed { waiters, count }
    }

    /// Stops every watch loop and waits briefly for them to end.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let _ = timeout(WAIT_LIMIT, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
    }
}

impl Armed {
    /// Waits for every waiter; the instants are in watcher order. Fails, naming the first
    /// watcher that failed, if any did not reach `what` in time.
    pub async fn collect(mut self, what: &str) -> anyhow::Result<Vec<Instant>> {
        let mut met = vec![None; self.count];
        while let Some(joined) = self.waiters.join_next().await {
            let (i, at) = joined.context("a waiter panicked")?;
            match at {
                Ok(at) => met[i] = Some(at),
                Err(why) => bail!("watcher {i}: {what}: {why}"),
            }
        }
        met.into_iter()
            .enumerate()
            .map(|(i, at)| at.with_context(|| format!("watcher {i} reported nothing")))
            .collect()
    }
}

/// Notes the instant each committed write of `assign-` keys reaches a dedicated raw etcd
/// watch: an upper bound of the commit time that includes one watch delivery.
pub struct CommitProbe {
    /// Arrival instants of assign- events, oldest first.
    seen_rx: mpsc::UnboundedReceiver<Instant>,
    /// Stops the probe.
    shutdown: CancellationToken,
}

impl CommitProbe {
    /// Opens the probe's own connection and watch.
    pub async fn start(etcd: &EtcdOptions, keys: &KeyLayout) -> anyhow::Result<CommitProbe> {
        let mut client = timeout(WAIT_LIMIT, connect(etcd))
            .await
            .context("connecting the commit probe timed out")??;
        let prefix = format!("{}assign-", keys.prefix());
        let mut stream = timeout(
            WAIT_LIMIT,
            client.watch(prefix, Some(WatchOptions::new().with_prefix())),
        )
        .await
        .context("opening the commit probe's watch timed out")??;
        let (seen_tx, seen_rx) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _keep_client = client;
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = stream.message() => m,
                };
                let Ok(Some(msg)) = msg else {
                    tracing::warn!("commit probe's watch ended");
                    return;
                };
                let at = Instant::now();
                let puts = msg
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Put);
                if puts && seen_tx.send(at).is_err() {
                    return;
                }
            }
        });
        Ok(CommitProbe { seen_rx, shutdown })
    }

    /// Forgets everything seen so far.
    pub fn clear(&mut self) {
        while self.seen_rx.try_recv().is_ok() {}
    }

    /// The first arrival at or after `since`, waiting at most `grace` for one that has not
    /// arrived yet; drops every arrival before it.
    pub async fn first_since(&mut self, since: Instant, grace: Duration) -> Option<Instant> {
        let deadline = Instant::now() + grace;
        loop {
            match timeout_at(deadline, self.seen_rx.recv()).await {
                Ok(Some(at)) if at >= since => return Some(at),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

impl Drop for CommitProbe {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
