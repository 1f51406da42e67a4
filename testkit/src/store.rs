//! The stand-in for SeaTable's file storage, shared by every sim: one JSON file per base,
//! `<dir>/<uuid32>.json` = `{"epoch": i64, "rows": [{"_id": str, ...}]}`.
//!
//! A save writes the whole base to a temp file in the same directory and renames it over the
//! old one, under an exclusive lock of `<dir>/<uuid32>.lock`, and is refused when the file on
//! disk carries a higher epoch than the writer's: a zombie owner (one whose bucket moved on
//! to a newer epoch) can never overwrite the newer owner's data. Readers need no lock because
//! the rename replaces the file in one step. Nothing is fsynced: the storage survives crashes
//! of the processes writing it, which is what the tests exercise, not of the machine.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One row of a base: a JSON object whose `_id` is a string.
pub type Row = Map<String, Value>;

/// A base as stored: the epoch of the bucket owner that saved it last, and its rows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BaseFile {
    /// The bucket epoch (mod_revision of `assign-<xx>`) the last save was stamped with.
    pub epoch: i64,
    /// The rows, in insertion order.
    pub rows: Vec<Row>,
}

/// Why the storage refused or failed a load or save.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file on disk was saved at a higher epoch than the writer's: the writer is a zombie
    /// owner and nothing was written.
    #[error("stale epoch: storage holds epoch {stored}, the writer has {ours}")]
    StaleEpoch {
        /// The epoch on disk.
        stored: i64,
        /// The writer's epoch.
        ours: i64,
    },
    /// The base UUID is not 32 lowercase hex characters, so it cannot name a file.
    #[error("not a normalized base UUID: {0:?}")]
    BadUuid(String),
    /// The file exists but is not a base file.
    #[error("{path}: not a base file: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Reading, writing, locking or renaming failed.
    #[error("{path}: {source}")]
    Io {
        /// The file the operation was on.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// The file of base `uuid` (32 lowercase hex) in `dir`.
pub fn base_path(dir: &Path, uuid: &str) -> PathBuf {
    dir.join(format!("{uuid}.json"))
}

/// The lock file that serializes saves of base `uuid` in `dir`.
pub fn lock_path(dir: &Path, uuid: &str) -> PathBuf {
    dir.join(format!("{uuid}.lock"))
}

/// Reads base `uuid` from `dir`; `None` if it was never saved.
///
/// # Errors
/// [`StoreError::BadUuid`], [`StoreError::Corrupt`] or [`StoreError::Io`].
pub fn load_base(dir: &Path, uuid: &str) -> Result<Option<BaseFile>, StoreError> {
    check_uuid(uuid)?;
    let path = base_path(dir, uuid);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StoreError::Io { path, source }),
    };
    let base: BaseFile = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    if let Some(bad) = base.rows.iter().position(|r| row_id(r).is_none()) {
        let detail = format!("row {bad} has no string `_id`");
        return Err(StoreError::Corrupt { path, detail });
    }
    Ok(Some(base))
}

/// Saves the whole base `uuid` in `dir` stamped with `epoch`: temp file and rename, under the
/// base's exclusive lock, refused if the file on disk carries a higher epoch.
///
/// # Errors
/// [`StoreError::StaleEpoch`] for a zombie writer (nothing is written);
/// [`StoreError::BadUuid`], [`StoreError::Corrupt`] (the file on disk is unreadable) or
/// [`StoreError::Io`].
pub fn save_base(dir: &Path, uuid: &str, epoch: i64, rows: &[Row]) -> Result<(), StoreError> {
    check_uuid(uuid)?;
    let lock = lock_path(dir, uuid);
    let io_at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    let lock_file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(io_at(&lock))?;
    lock_file.lock().map_err(io_at(&lock))?;
    let path = base_path(dir, uuid);
    if let Some(stored) = stored_epoch(&path)?
        && stored > epoch
    {
        return Err(StoreError::StaleEpoch {
            stored,
            ours: epoch,
        });
    }
    #[derive(Serialize)]
    struct Out<'a> {
        epoch: i64,
        rows: &'a [Row],
    }
    let body = serde_json::to_vec(&Out { epoch, rows }).map_err(|e| StoreError::Io {
        path: path.clone(),
        source: e.into(),
    })?;
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{uuid}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io_at(dir))?;
    temp.write_all(&body).map_err(io_at(temp.path()))?;
    temp.persist(&path).map_err(|e| StoreError::Io {
        path: path.clone(),
        source: e.error,
    })?;
    // Dropping `lock_file` releases the lock.
    drop(lock_file);
    Ok(())
}

/// The `_id` of a row, if it is a string.
pub fn row_id(row: &Row) -> Option<&str> {
    row.get("_id").and_then(Value::as_str)
}

/// The epoch stamped on the file at `path`, `None` if there is no file.
fn stored_epoch(path: &Path) -> Result<Option<i64>, StoreError> {
    #[derive(Deserialize)]
    struct EpochOnly {
        epoch: i64,
    }
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            let path = path.to_path_buf();
            return Err(StoreError::Io { path, source });
        }
    };
    let stored: EpochOnly = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    Ok(Some(stored.epoch))
}

/// Refuses anything but 32 lowercase hex characters, so a UUID can never escape `dir`.
fn check_uuid(uuid: &str) -> Result<(), StoreError> {
    let ok = uuid.len() == 32
        && uuid
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadUuid(uuid.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const UUID: &str = "ab12cd34ef56ab12cd34ef56ab12cd34";

    fn rows(ids: &[&str]) -> Vec<Row> {
        ids.iter()
            .map(|id| match json!({ "_id": id, "name": id }) {
                Value::Object(row) => row,
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn saves_load_back_and_stale_epochs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_base(dir.path(), UUID).unwrap().is_none());
        save_base(dir.path(), UUID, 5, &rows(&["a"])).unwrap();
        save_base(dir.path(), UUID, 5, &rows(&["a", "b"])).unwrap();
        let err = save_base(dir.path(), UUID, 4, &rows(&[])).unwrap_err();
        assert!(
            matches!(err, StoreError::StaleEpoch { stored: 5, ours: 4 }),
            "{err}"
        );
        let base = load_base(dir.path(), UUID).unwrap().unwrap();
        assert_eq!(
            base,
            BaseFile {
                epoch: 5,
                rows: rows(&["a", "b"])
            }
        );
        save_base(dir.path(), UUID, 9, &rows(&["c"])).unwrap();
        assert_eq!(load_base(dir.path(), UUID).unwrap().unwrap().epoch, 9);
        // Only the base file and its lock are left behind.
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [format!("{UUID}.json"), format!("{UUID}.lock")]);
    }

    #[test]
    fn bad_uuids_and_corrupt_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../etc/passwd", "AB12CD34EF56AB12CD34EF56AB12CD34", ""] {
            assert!(matches!(
                save_base(dir.path(), bad, 1, &[]),
                Err(StoreError::BadUuid(_))
            ));
        }
        std::fs::write(base_path(dir.path(), UUID), b"{\"epoch\":1,\"rows\":[{}]}").unwrap();
        assert!(matches!(
            load_base(dir.path(), UUID),
            Err(StoreError::Corrupt { .. })
        ));
        std::fs::write(base_path(dir.path(), UUID), b"nope").unwrap();
        assert!(matches!(
            save_base(dir.path(), UUID, 1, &[]),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
