//! The bases a sim keeps in memory, as dtable-server does: loaded from the shared storage on
//! the first request while the sim owns the bucket, never re-read while it owns it, written
//! through (whole base, stamped with the bucket epoch) before any write is acknowledged, and
//! written back and dropped when the bucket is released or lost.
//!
//! Each bucket has one async lock, the bucket's serialization point: every read, write,
//! release and unload of its bases holds it, including across the storage I/O (which runs on
//! the blocking pool), so a release waits for the write in flight and a write that waited for
//! a release sees that the bucket is gone. Ownership is checked again once the lock is held.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dtable_core::Bucket;
use rand::Rng;
use serde_json::Value;
use tokio::sync::{Mutex, MutexGuard};

use super::ownership::{Ownership, Term};
use crate::events::{EventKind, EventLog, WriteOp};
use crate::store::{self, Row, StoreError};

/// Length of a fresh row id, like dtable-server's.
const ROW_ID_LEN: usize = 22;

/// Why a base operation was refused. Turned into an HTTP answer at the edge.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BaseError {
    /// The sim does not serve the bucket (any more), or the storage holds the base at a
    /// newer epoch: nothing was done.
    #[error("not the owner")]
    NotOwner,
    /// No row has this id.
    #[error("no row {0:?}")]
    NoRow(String),
    /// A row with this id exists already.
    #[error("row {0:?} exists")]
    RowExists(String),
    /// The storage failed; nothing was acknowledged.
    #[error("storage: {0}")]
    Storage(StoreError),
}

/// A row write, as asked for.
#[derive(Debug)]
pub(crate) enum RowOp {
    /// Append `row`, with its `_id` or a fresh one.
    Create(Row),
    /// Set the fields of `row` on the row with this id.
    Update(String, Row),
    /// Remove the row with this id.
    Delete(String),
}

/// The in-memory bases of every bucket. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Bases {
    inner: Arc<Inner>,
}

struct Inner {
    /// The shared storage directory.
    dir: PathBuf,
    /// Per bucket, its loaded bases.
    slots: Vec<Mutex<Slot>>,
    /// Where `load`, `unload` and `write` are logged.
    log: EventLog,
}

/// The loaded bases of one bucket, and the term they were loaded in.
#[derive(Default)]
struct Slot {
    term: Option<Term>,
    bases: BTreeMap<String, Vec<Row>>,
}

impl Bases {
    /// Bases stored in `dir`, logging to `log`.
    pub(crate) fn new(dir: PathBuf, log: EventLog) -> Bases {
        let slots = Bucket::all().map(|_| Mutex::default()).collect();
        Bases {
            inner: Arc::new(Inner { dir, slots, log }),
        }
    }

    /// The storage directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The rows of base `uuid`, loading it if needed.
    pub(crate) async fn rows(
        &self,
        own: &Ownership,
        bucket: Bucket,
        uuid: &str,
    ) -> Result<Vec<Row>, BaseError> {
        let (mut slot, term) = self.lock_current(own, bucket).await?;
        Ok(self.loaded(&mut slot, bucket, term, uuid).await?.clone())
    }

    /// Applies `op` to base `uuid`: to a copy, saved through to storage at the bucket's
    /// epoch, then swapped in and logged. Returns the row id. On any error nothing changed.
    pub(crate) async fn write(
        &self,
        own: &Ownership,
        bucket: Bucket,
        uuid: &str,
        op: RowOp,
    ) -> Result<String, BaseError> {
        let (mut slot, term) = self.lock_current(own, bucket).await?;
        let mut rows = self.loaded(&mut slot, bucket, term, uuid).await?.clone();
        let (kind, id) = apply(&mut rows, op)?;
        if own.term(bucket) != Some(term) {
            return Err(BaseError::NotOwner);
        }
        let rows = self.save(uuid, term.epoch, rows).await?;
        slot.bases.insert(uuid.to_owned(), rows);
        self.inner.log.write(bucket, term.epoch, uuid, kind, &id);
        Ok(id)
    }

    /// Releases `bucket` held at `term`: writes back and unloads its bases, then gives the
    /// bucket up, all under the bucket's lock.
    pub(crate) async fn release(&self, own: &Ownership, bucket: Bucket, term: Term) {
        let mut slot = self.slot(bucket).lock().await;
        if slot.term == Some(term) {
            self.unload_slot(&mut slot, bucket).await;
        }
        own.disown(bucket, "released");
    }

    /// Writes back and unloads what `bucket` loaded during `term`, after the bucket was lost.
    pub(crate) async fn unload(&self, bucket: Bucket, term: Term) {
        let mut slot = self.slot(bucket).lock().await;
        if slot.term == Some(term) {
            self.unload_slot(&mut slot, bucket).await;
        }
    }

    /// Writes back and unloads every loaded base, at shutdown.
    pub(crate) async fn unload_all(&self) {
        for bucket in Bucket::all() {
            let mut slot = self.slot(bucket).lock().await;
            self.unload_slot(&mut slot, bucket).await;
        }
    }

    /// The bucket's slot locked, with the term the sim serves it in; memory of an earlier
    /// term is written back and dropped first.
    async fn lock_current(
        &self,
        own: &Ownership,
        bucket: Bucket,
    ) -> Result<(MutexGuard<'_, Slot>, Term), BaseError> {
        own.term(bucket).ok_or(BaseError::NotOwner)?;
        let mut slot = self.slot(bucket).lock().await;
        let term = own.term(bucket).ok_or(BaseError::NotOwner)?;
        if slot.term != Some(term) {
            self.unload_slot(&mut slot, bucket).await;
            slot.term = Some(term);
        }
        Ok((slot, term))
    }

    /// The rows of `uuid` in `slot`, read from storage on first use. A base stored at a
    /// newer epoch than ours means another server owns the bucket now: not loaded.
    async fn loaded<'s>(
        &self,
        slot: &'s mut Slot,
        bucket: Bucket,
        term: Term,
        uuid: &str,
    ) -> Result<&'s mut Vec<Row>, BaseError> {
        if !slot.bases.contains_key(uuid) {
            let dir = self.inner.dir.clone();
            let id = uuid.to_owned();
            let stored = blocking(move || store::load_base(&dir, &id))
                .await
                .map_err(BaseError::Storage)?;
            let rows = match stored {
                Some(file) if file.epoch > term.epoch => {
                    tracing::warn!(%bucket, uuid, stored = file.epoch, ours = term.epoch,
                        "storage holds a newer epoch: refusing to serve the base");
                    return Err(BaseError::NotOwner);
                }
                Some(file) => file.rows,
                None => Vec::new(),
            };
            self.inner
                .log
                .base(EventKind::Load, bucket, term.epoch, uuid);
            slot.bases.insert(uuid.to_owned(), rows);
        }
        slot.bases.get_mut(uuid).ok_or(BaseError::NotOwner)
    }

    /// Writes every base of `slot` back at its term's epoch (refused for a zombie, which is
    /// only logged: its memory holds nothing the storage lacks) and drops it.
    async fn unload_slot(&self, slot: &mut Slot, bucket: Bucket) {
        let Some(term) = slot.term.take() else {
            return;
        };
        for (uuid, rows) in std::mem::take(&mut slot.bases) {
            if let Err(e) = self.save(&uuid, term.epoch, rows).await {
                tracing::warn!(%bucket, uuid, error = %e, "write-back on unload refused");
            }
            self.inner
                .log
                .base(EventKind::Unload, bucket, term.epoch, &uuid);
        }
    }

    /// Saves `rows` as base `uuid` at `epoch` and hands them back.
    async fn save(&self, uuid: &str, epoch: i64, rows: Vec<Row>) -> Result<Vec<Row>, BaseError> {
        let dir = self.inner.dir.clone();
        let id = uuid.to_owned();
        let saved = blocking(move || store::save_base(&dir, &id, epoch, &rows).map(|()| rows));
        saved.await.map_err(|e| match e {
            StoreError::StaleEpoch { stored, ours } => {
                tracing::warn!(
                    uuid,
                    stored,
                    ours,
                    "save refused: storage holds a newer epoch"
                );
                BaseError::NotOwner
            }
            other => BaseError::Storage(other),
        })
    }

    fn slot(&self, bucket: Bucket) -> &Mutex<Slot> {
        &self.inner.slots[bucket.index()]
    }
}

/// Runs storage I/O on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StoreError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(e),
        })
    })
}

/// Applies `op` to `rows`; returns what kind of write it was and the row id.
fn apply(rows: &mut Vec<Row>, op: RowOp) -> Result<(WriteOp, String), BaseError> {
    let position = |rows: &[Row], id: &str| rows.iter().position(|r| store::row_id(r) == Some(id));
    match op {
        RowOp::Create(mut row) => {
            let id = store::row_id(&row).map_or_else(fresh_row_id, str::to_owned);
            if position(rows, &id).is_some() {
                return Err(BaseError::RowExists(id));
            }
            row.insert("_id".to_owned(), Value::String(id.clone()));
            rows.push(row);
            Ok((WriteOp::Create, id))
        }
        RowOp::Update(id, fields) => {
            let at = position(rows, &id).ok_or_else(|| BaseError::NoRow(id.clone()))?;
            let row = &mut rows[at];
            row.extend(fields.into_iter().filter(|(k, _)| k != "_id"));
            Ok((WriteOp::Update, id))
        }
        RowOp::Delete(id) => {
            let at = position(rows, &id).ok_or_else(|| BaseError::NoRow(id.clone()))?;
            rows.remove(at);
            Ok((WriteOp::Delete, id))
        }
    }
}

/// A random row id of [`ROW_ID_LEN`] alphanumeric characters.
fn fresh_row_id() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(ROW_ID_LEN)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn row(value: Value) -> Row {
        match value {
            Value::Object(row) => row,
            _ => unreachable!(),
        }
    }

    #[test]
    fn row_ops_apply() {
        let mut rows = Vec::new();
        let (op, a) = apply(&mut rows, RowOp::Create(row(json!({ "n": 1 })))).unwrap();
        assert_eq!((op, a.len()), (WriteOp::Create, ROW_ID_LEN));
        let (_, b) = apply(&mut rows, RowOp::Create(row(json!({ "_id": "b" })))).unwrap();
        assert_eq!(b, "b");
        assert!(matches!(
            apply(&mut rows, RowOp::Create(row(json!({ "_id": "b" })))),
            Err(BaseError::RowExists(_))
        ));
        let fields = row(json!({ "_id": "zzz", "n": 2 }));
        apply(&mut rows, RowOp::Update(a.clone(), fields)).unwrap();
        assert_eq!(rows[0], row(json!({ "_id": a, "n": 2 })));
        assert!(matches!(
            apply(&mut rows, RowOp::Update("nope".into(), Row::new())),
            Err(BaseError::NoRow(_))
        ));
        apply(&mut rows, RowOp::Delete(a)).unwrap();
        assert_eq!(rows, [row(json!({ "_id": "b" }))]);
        assert!(matches!(
            apply(&mut rows, RowOp::Delete("nope".into())),
            Err(BaseError::NoRow(_))
        ));
    }
}
