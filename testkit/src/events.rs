//! The sim's event log: one JSON object per line, appended and flushed per event, stamped with
//! wall-clock nanoseconds so that the logs of several sims on one host can be merged, and read
//! back by [`crate::checker`] to prove the single-owner and nothing-lost invariants.
//!
//! ```text
//! {"t_ns":1700000000000000000,"node":"dtable-server-a","ev":"own","bucket":"ab","epoch":7}
//! {"t_ns":...,"node":"dtable-server-a","ev":"load","bucket":"ab","epoch":7,"base":"ab12..."}
//! {"t_ns":...,"node":"dtable-server-a","ev":"write","bucket":"ab","epoch":7,"base":"ab12...","op":"create","row":"Xy3..."}
//! ```

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use dtable_core::Bucket;
use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The sim started serving the bucket (logged before the first request can be served).
    Own,
    /// The sim stopped serving the bucket (logged after the last request was admitted).
    Disown,
    /// A base was read from storage into memory.
    Load,
    /// A base was dropped from memory (after writing it back).
    Unload,
    /// A row write was saved to storage and is about to be acknowledged.
    Write,
}

/// Which row write was acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteOp {
    /// A row was added.
    Create,
    /// A row was changed.
    Update,
    /// A row was removed.
    Delete,
}

/// One line of the event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Wall-clock nanoseconds since the Unix epoch.
    pub t_ns: u64,
    /// The node id of the sim.
    pub node: String,
    /// What happened.
    pub ev: EventKind,
    /// The bucket, two lowercase hex characters.
    pub bucket: String,
    /// The bucket epoch the sim held it at.
    pub epoch: i64,
    /// The base UUID (32 hex) for `load`, `unload` and `write`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The kind of write, for `write`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<WriteOp>,
    /// The row id, for `write`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<String>,
}

/// Where a sim appends its events; a no-op without a file. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EventLog {
    /// The node id written on every line.
    node: Arc<str>,
    /// The open log file, if logging.
    file: Option<Arc<Mutex<File>>>,
}

impl EventLog {
    /// A log that records nothing.
    pub fn disabled(node: &str) -> EventLog {
        EventLog {
            node: node.into(),
            file: None,
        }
    }

    /// Appends to `path` (created if missing) for `node`.
    ///
    /// # Errors
    /// If the file cannot be opened for appending.
    pub fn open(path: &Path, node: &str) -> io::Result<EventLog> {
        let file = File::options().create(true).append(true).open(path)?;
        Ok(EventLog {
            node: node.into(),
            file: Some(Arc::new(Mutex::new(file))),
        })
    }

    /// Records an `own` or `disown` of `bucket` at `epoch`.
    pub fn ownership(&self, ev: EventKind, bucket: Bucket, epoch: i64) {
        self.record_at(now_ns(), ev, bucket, epoch, None, None);
    }

    /// Records an `own` or `disown` that took effect at `t_ns`, earlier than now: a serving
    /// lease that lapsed while the process was paused ended at its deadline, not when the
    /// process woke up and noticed.
    pub fn ownership_at(&self, t_ns: u64, ev: EventKind, bucket: Bucket, epoch: i64) {
        self.record_at(t_ns, ev, bucket, epoch, None, None);
    }

    /// Records a `load` or `unload` of `base`.
    pub fn base(&self, ev: EventKind, bucket: Bucket, epoch: i64, base: &str) {
        self.record_at(now_ns(), ev, bucket, epoch, Some(base), None);
    }

    /// Records an acknowledged write of `row` in `base`.
    pub fn write(&self, bucket: Bucket, epoch: i64, base: &str, op: WriteOp, row: &str) {
        self.record_at(
            now_ns(),
            EventKind::Write,
            bucket,
            epoch,
            Some(base),
            Some((op, row)),
        );
    }

    /// Writes one line in one `write` call and flushes it. A failure is logged, not returned:
    /// the log is evidence for tests, and the checker notices what is missing.
    fn record_at(
        &self,
        t_ns: u64,
        ev: EventKind,
        bucket: Bucket,
        epoch: i64,
        base: Option<&str>,
        write: Option<(WriteOp, &str)>,
    ) {
        let Some(file) = &self.file else { return };
        let event = Event {
            t_ns,
            node: self.node.to_string(),
            ev,
            bucket: bucket.to_string(),
            epoch,
            base: base.map(str::to_owned),
            op: write.map(|(op, _)| op),
            row: write.map(|(_, row)| row.to_owned()),
        };
        let mut line = match serde_json::to_vec(&event) {
            Ok(line) => line,
            Err(e) => return tracing::error!(error = %e, "cannot encode an event"),
        };
        line.push(b'\n');
        let mut file = file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = file.write_all(&line).and_then(|()| file.flush()) {
            tracing::error!(error = %e, "cannot append to the event log");
        }
    }
}

/// Wall-clock nanoseconds since the Unix epoch (0 for a clock before 1970).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let log = EventLog::open(&path, "dtable-server-a").unwrap();
        log.ownership(EventKind::Own, Bucket(0xab), 7);
        log.write(Bucket(0xab), 7, "ab00", WriteOp::Create, "r1");
        EventLog::disabled("x").ownership(EventKind::Own, Bucket(1), 1);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].contains(r#""ev":"own","bucket":"ab","epoch":7"#)
                && !lines[0].contains("base"),
            "{}",
            lines[0]
        );
        let write: Event = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(write.op, Some(WriteOp::Create));
        assert_eq!(write.row.as_deref(), Some("r1"));
        assert_eq!(write.node, "dtable-server-a");
        assert!(write.t_ns > 1_600_000_000_000_000_000);
    }
}
