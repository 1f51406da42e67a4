//! Guarded placement writes. Every transaction compares the leader's election key (its
//! create_revision) and the mod_revision of every key it changes as last seen, so neither a
//! deposed leader nor a leader acting on a stale view can overwrite an assignment. etcd allows
//! at most 128 compares and 128 operations per transaction, so big changes are split.

use dtable_core::placement::Move;
use dtable_core::{ClusterView, KeyLayout};
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

/// At most this many operations and compares in one transaction (etcd's --max-txn-ops).
pub const MAX_TXN_OPS: usize = 128;

/// The proof of leadership every placement write carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leadership {
    /// The election key etcd created for us.
    pub key: Vec<u8>,
    /// Its create_revision; a new leader's key has a different one.
    pub create_revision: i64,
    /// The election lease.
    pub lease: i64,
}

/// What became of a batch of writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Every transaction committed; the last one at `revision`.
    Applied {
        /// Revision of the last commit.
        revision: i64,
    },
    /// A guard failed: we are deposed or our view is stale. `applied` transactions committed
    /// before it; `revision` is the store's revision when the guard failed.
    Rejected {
        /// Moves committed before the rejection.
        applied: usize,
        /// etcd's revision at the rejection.
        revision: i64,
    },
}

/// Writes `assign-<xx>` keys on behalf of one leadership.
#[derive(Clone)]
pub struct AssignmentWriter {
    client: Client,
    keys: KeyLayout,
    leader: Leadership,
}

impl AssignmentWriter {
    /// A writer guarded by `leader`.
    pub fn new(client: Client, keys: KeyLayout, leader: Leadership) -> AssignmentWriter {
        AssignmentWriter {
            client,
            keys,
            leader,
        }
    }

    /// Applies `moves`, each guarded by the mod_revision `view` holds for its key (0 when the
    /// key is absent, which etcd compares as "does not exist").
    pub async fn apply(
        &self,
        view: &ClusterView,
        moves: &[Move],
    ) -> Result<WriteOutcome, etcd_client::Error> {
        let mut client = self.client.clone();
        let mut applied = 0;
        let mut revision = view.revision;
        for chunk in moves.chunks(MAX_TXN_OPS - 1) {
            let mut compares = Vec::with_capacity(chunk.len() + 1);
            compares.push(Compare::create_revision(
                self.leader.key.clone(),
                CompareOp::Equal,
                self.leader.create_revision,
            ));
            let mut ops = Vec::with_capacity(chunk.len());
            for m in chunk {
                let key = self.keys.assign(m.bucket);
                let seen = view.assignment[m.bucket.index()]
                    .as_ref()
                    .map_or(0, |a| a.mod_revision);
                compares.push(Compare::mod_revision(key.as_str(), CompareOp::Equal, seen));
                ops.push(match &m.to {
                    Some(node) => TxnOp::put(key, node.as_str(), None),
                    None => TxnOp::delete(key, None),
                });
            }
            let resp = client.txn(Txn::new().when(compares).and_then(ops)).await?;
            revision = resp.header().map_or(revision, |h| h.revision());
            if !resp.succeeded() {
                metrics::counter!("dtable_placement_txn_total", "result" => "rejected")
                    .increment(1);
                return Ok(WriteOutcome::Rejected { applied, revision });
            }
            metrics::counter!("dtable_placement_txn_total", "result" => "committed").increment(1);
            applied += chunk.len();
        }
        Ok(WriteOutcome::Applied { revision })
    }

    /// Deletes the rebalance request seen at `mod_revision`, unless a newer one replaced it.
    /// Returns whether it was deleted.
    pub async fn clear_rebalance_request(
        &self,
        mod_revision: i64,
    ) -> Result<bool, etcd_client::Error> {
        let key = self.keys.rebalance_request();
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                mod_revision,
            )])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.client.clone().txn(txn).await?.succeeded())
    }

    /// Whether our election key still exists with our create_revision.
    pub async fn still_leader(&self) -> Result<bool, etcd_client::Error> {
        let mut client = self.client.clone();
        let resp = client.get(self.leader.key.clone(), None).await?;
        Ok(resp
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == self.leader.create_revision))
    }
}
