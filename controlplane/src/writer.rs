//! Guarded placement writes. Every transaction compares the leader's election key (its
//! create_revision) and the mod_revision of every key it changes as last seen, so neither a
//! deposed leader nor a leader acting on a stale view can overwrite an assignment. etcd allows
//! at most 128 compares and 128 operations per transaction, so big changes are split.

use dtable_core::placement::Move;
use dtable_core::view::MoveEntry;
use dtable_core::{Bucket, ClusterView, KeyLayout, NodeId};
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

/// Planned moves: start, commit and abandon, each guarded as the contract's handoff protocol
/// says.
impl AssignmentWriter {
    fn leader_guard(&self) -> Compare {
        Compare::create_revision(
            self.leader.key.clone(),
            CompareOp::Equal,
            self.leader.create_revision,
        )
    }

    async fn commit(
        &self,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> Result<Option<i64>, etcd_client::Error> {
        let resp = self
            .client
            .clone()
            .txn(Txn::new().when(compares).and_then(ops))
            .await?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map_or(0, |h| h.revision())))
    }

    /// Starts moving `bucket` from `from` to `to`: creates `dtable-cluster/moves/<xx>` if no move
    /// is in flight and `assign-<xx>` is as `view` saw it. Returns the commit revision (the
    /// move id), or `None` when a guard failed.
    pub async fn start_move(
        &self,
        view: &ClusterView,
        bucket: Bucket,
        from: &NodeId,
        to: &NodeId,
    ) -> Result<Option<i64>, etcd_client::Error> {
        let assign = self.keys.assign(bucket);
        let seen = view.assignment[bucket.index()]
            .as_ref()
            .map_or(0, |a| a.mod_revision);
        let key = self.keys.move_key(bucket);
        let value = serde_json::json!({
            "from": from.as_str(),
            "to": to.as_str(),
            "started_at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        });
        self.commit(
            vec![
                self.leader_guard(),
                Compare::mod_revision(assign, CompareOp::Equal, seen),
                Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            ],
            vec![TxnOp::put(key, value.to_string(), None)],
        )
        .await
    }

    /// Completes a move once its ack exists: `assign-<xx>` = `to`, and the move and the ack are
    /// deleted, in one transaction that also checks the move id, the ack, `assign-<xx>`
    /// unchanged since the move started, and that `to` is still registered.
    pub async fn commit_move(
        &self,
        view: &ClusterView,
        bucket: Bucket,
        mv: &MoveEntry,
    ) -> Result<Option<i64>, etcd_client::Error> {
        let Ok(to) = NodeId::new(mv.to.clone()) else {
            return Ok(None);
        };
        let assign = self.keys.assign(bucket);
        let assign_rev = view.assignment[bucket.index()]
            .as_ref()
            .map_or(0, |a| a.mod_revision);
        if assign_rev >= mv.create_revision {
            return Ok(None); // the assignment changed after the move began
        }
        let ack = self.keys.ack(bucket, mv.create_revision);
        let key = self.keys.move_key(bucket);
        self.commit(
            vec![
                self.leader_guard(),
                Compare::create_revision(key.as_str(), CompareOp::Equal, mv.create_revision),
                Compare::version(ack.as_str(), CompareOp::Greater, 0),
                Compare::mod_revision(assign.as_str(), CompareOp::Equal, assign_rev),
                Compare::version(self.keys.node(&to), CompareOp::Greater, 0),
            ],
            vec![
                TxnOp::put(assign, to.as_str(), None),
                TxnOp::delete(key, None),
                TxnOp::delete(ack, None),
            ],
        )
        .await
    }

    /// Deletes an ack (by its name under `dtable-cluster/`) that arrived after its move ended,
    /// unless it changed since seen.
    pub async fn delete_stale_ack(
        &self,
        name: &str,
        mod_revision: i64,
    ) -> Result<Option<i64>, etcd_client::Error> {
        let key = format!(
            "{}{}{name}",
            self.keys.prefix(),
            dtable_core::keys::CLUSTER_PREFIX
        );
        self.commit(
            vec![Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                mod_revision,
            )],
            vec![TxnOp::delete(key, None)],
        )
        .await
    }

    /// Abandons a move: deletes it and its ack (if any), guarded by the move id, so a newer
    /// move of the same bucket is never touched. The bucket stays with its owner.
    pub async fn abandon_move(
        &self,
        bucket: Bucket,
        move_id: i64,
    ) -> Result<Option<i64>, etcd_client::Error> {
        let key = self.keys.move_key(bucket);
        self.commit(
            vec![
                self.leader_guard(),
                Compare::create_revision(key.as_str(), CompareOp::Equal, move_id),
            ],
            vec![
                TxnOp::delete(key, None),
                TxnOp::delete(self.keys.ack(bucket, move_id), None),
            ],
        )
        .await
    }
}
