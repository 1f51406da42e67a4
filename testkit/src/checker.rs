//! The checker: proves invariant 1 (single owner) and invariant 4 (nothing lost) from the event
//! logs of the sims (see [`crate::events`]) and the storage directory they shared (see
//! [`crate::store`]).
//!
//! * **Single owner.** Per bucket, each node's `own`..`disown` intervals (an interval never
//!   closed ends at +infinity, so a sim killed without a chance to log its `disown` counts as
//!   owning for ever) must not overlap any other node's, on the wall clock of the one host.
//! * **Nothing lost.** Per base, the acknowledged writes replayed in time order (a create adds
//!   the row id, a delete removes it) must match the final storage file: every expected row is
//!   there and every deleted one is not.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::events::{Event, EventKind, WriteOp};
use crate::store;

/// What the checker looked at, so a test can assert that it checked something.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Distinct buckets with at least one ownership interval.
    pub buckets_seen: usize,
    /// Ownership intervals built from `own`/`disown`.
    pub intervals: usize,
    /// Acknowledged writes replayed.
    pub writes: usize,
    /// Bases whose storage file was checked.
    pub bases: usize,
}

/// One spell of a node serving a bucket, on the wall clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interval {
    /// The node that served.
    pub node: String,
    /// The epoch it served at when it started.
    pub epoch: i64,
    /// Nanoseconds since the Unix epoch of the `own`.
    pub start_ns: u64,
    /// Of the `disown`; `None` if it never came (+infinity).
    pub end_ns: Option<u64>,
}

impl Interval {
    /// Whether the two intervals share an instant (touching ends do not).
    pub fn overlaps(&self, other: &Interval) -> bool {
        let before = |end: Option<u64>, start: u64| end.is_some_and(|end| end <= start);
        !before(self.end_ns, other.start_ns) && !before(other.end_ns, self.start_ns)
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self
            .end_ns
            .map_or_else(|| "+inf".to_owned(), |e| e.to_string());
        write!(
            f,
            "{} at epoch {} [{} ns, {end} ns)",
            self.node, self.epoch, self.start_ns
        )
    }
}

/// A broken invariant, or evidence the checker could not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// An event log could not be read or has a line that is not an event.
    BadLog {
        /// The log.
        path: PathBuf,
        /// 1-based line number; 0 when the file itself could not be read.
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// Two nodes served the same bucket at the same time.
    Overlap {
        /// The bucket.
        bucket: String,
        /// One node's interval.
        first: Interval,
        /// The other node's, overlapping it.
        second: Interval,
    },
    /// A row whose create was acknowledged (and not deleted since) is missing from storage.
    Lost {
        /// The base.
        base: String,
        /// The row id.
        row: String,
    },
    /// A row whose delete was acknowledged is still in storage.
    Resurrected {
        /// The base.
        base: String,
        /// The row id.
        row: String,
    },
    /// A base's storage file could not be read.
    Storage {
        /// The base.
        base: String,
        /// Why.
        detail: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::BadLog { path, line, detail } => {
                write!(f, "event log {}:{line}: {detail}", path.display())
            }
            Violation::Overlap {
                bucket,
                first,
                second,
            } => write!(
                f,
                "bucket {bucket} served twice at once: {first} and {second}"
            ),
            Violation::Lost { base, row } => {
                write!(
                    f,
                    "base {base}: acknowledged row {row} is missing from storage"
                )
            }
            Violation::Resurrected { base, row } => {
                write!(f, "base {base}: deleted row {row} is still in storage")
            }
            Violation::Storage { base, detail } => write!(f, "base {base}: {detail}"),
        }
    }
}

/// An event and where it came from, for a total order: time, then log, then line.
struct Located {
    event: Event,
    log: usize,
    line: usize,
}

/// Checks invariants 1 and 4 over `event_logs` and the bases in `storage_dir`.
///
/// # Errors
/// Every violation found (and every unreadable log line or storage file).
pub fn check(event_logs: &[PathBuf], storage_dir: &Path) -> Result<Report, Vec<Violation>> {
    let mut violations = Vec::new();
    let mut events = Vec::new();
    for (log, path) in event_logs.iter().enumerate() {
        read_log(log, path, &mut events, &mut violations);
    }
    let intervals = intervals(&events);
    for (bucket, spells) in &intervals {
        for (i, first) in spells.iter().enumerate() {
            for second in &spells[i + 1..] {
                if first.node != second.node && first.overlaps(second) {
                    violations.push(Violation::Overlap {
                        bucket: bucket.clone(),
                        first: first.clone(),
                        second: second.clone(),
                    });
                }
            }
        }
    }
    let (writes, bases) = check_writes(&mut events, storage_dir, &mut violations);
    if !violations.is_empty() {
        return Err(violations);
    }
    Ok(Report {
        buckets_seen: intervals.len(),
        intervals: intervals.values().map(Vec::len).sum(),
        writes,
        bases,
    })
}

/// Closes, at `at_ns`, every interval left open in the event log of a sim that was killed
/// (SIGKILL leaves no `disown`): appends a `disown` for each, and returns how many. Call it
/// once the kill is confirmed (the process reaped), with [`crate::events::now_ns`] taken then;
/// the sim served nothing after that instant, so the closed interval still covers its service.
///
/// # Errors
/// If the log cannot be read or appended to.
pub fn mark_dead(event_log: &Path, at_ns: u64) -> std::io::Result<usize> {
    use std::io::Write;
    let mut events = Vec::new();
    let mut unreadable = Vec::new();
    read_log(0, event_log, &mut events, &mut unreadable);
    if let Some(Violation::BadLog {
        line: 0, detail, ..
    }) = unreadable.first()
    {
        return Err(std::io::Error::other(detail.clone()));
    }
    let mut lines = String::new();
    let mut closed = 0;
    for (bucket, spells) in intervals(&events) {
        for spell in spells.into_iter().filter(|s| s.end_ns.is_none()) {
            let disown = Event {
                t_ns: at_ns.max(spell.start_ns),
                node: spell.node,
                ev: EventKind::Disown,
                bucket: bucket.clone(),
                epoch: spell.epoch,
                base: None,
                op: None,
                row: None,
            };
            lines.push_str(&serde_json::to_string(&disown).map_err(std::io::Error::other)?);
            lines.push('\n');
            closed += 1;
        }
    }
    let mut file = std::fs::File::options().append(true).open(event_log)?;
    file.write_all(lines.as_bytes())?;
    file.flush()?;
    Ok(closed)
}

/// Appends the events of log number `log` at `path`.
fn read_log(log: usize, path: &Path, events: &mut Vec<Located>, violations: &mut Vec<Violation>) {
    let bad = |line, detail: String| Violation::BadLog {
        path: path.to_path_buf(),
        line,
        detail,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return violations.push(bad(0, e.to_string())),
    };
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Event>(raw) {
            Ok(event) if event.ev == EventKind::Write && write_of(&event).is_none() => {
                violations.push(bad(i + 1, "a write without base, op or row".to_owned()));
            }
            Ok(event) => events.push(Located {
                event,
                log,
                line: i + 1,
            }),
            Err(e) => violations.push(bad(i + 1, e.to_string())),
        }
    }
}

/// Per bucket, every node's ownership intervals. Events of one node are taken in log order;
/// an `own` while already owning continues the open interval, a stray `disown` is ignored.
fn intervals(events: &[Located]) -> BTreeMap<String, Vec<Interval>> {
    let mut open: BTreeMap<(usize, String, String), Interval> = BTreeMap::new();
    let mut done: BTreeMap<String, Vec<Interval>> = BTreeMap::new();
    for Located { event, log, .. } in events {
        let key = (*log, event.node.clone(), event.bucket.clone());
        match event.ev {
            EventKind::Own => {
                open.entry(key).or_insert_with(|| Interval {
                    node: event.node.clone(),
                    epoch: event.epoch,
                    start_ns: event.t_ns,
                    end_ns: None,
                });
            }
            EventKind::Disown => {
                if let Some(mut spell) = open.remove(&key) {
                    spell.end_ns = Some(event.t_ns);
                    done.entry(event.bucket.clone()).or_default().push(spell);
                }
            }
            _ => {}
        }
    }
    for ((_, _, bucket), spell) in open {
        done.entry(bucket).or_default().push(spell);
    }
    done
}

/// The base, op and row of a write event.
fn write_of(event: &Event) -> Option<(&str, WriteOp, &str)> {
    Some((event.base.as_deref()?, event.op?, event.row.as_deref()?))
}

/// Replays the writes per base and compares with storage; returns (writes, bases) checked.
fn check_writes(
    events: &mut [Located],
    storage_dir: &Path,
    violations: &mut Vec<Violation>,
) -> (usize, usize) {
    events.sort_by_key(|e| (e.event.t_ns, e.log, e.line));
    let mut expected: BTreeMap<&str, (BTreeSet<&str>, BTreeSet<&str>)> = BTreeMap::new();
    let mut writes = 0;
    for (base, op, row) in events.iter().filter_map(|e| write_of(&e.event)) {
        writes += 1;
        let (present, deleted) = expected.entry(base).or_default();
        match op {
            WriteOp::Create => {
                present.insert(row);
                deleted.remove(row);
            }
            WriteOp::Delete => {
                present.remove(row);
                deleted.insert(row);
            }
            WriteOp::Update => {}
        }
    }
    for (base, (present, deleted)) in &expected {
        let stored: BTreeSet<String> = match store::load_base(storage_dir, base) {
            Ok(file) => file
                .map(|f| f.rows)
                .unwrap_or_default()
                .iter()
                .filter_map(|r| store::row_id(r).map(str::to_owned))
                .collect(),
            Err(e) => {
                let detail = e.to_string();
                violations.push(Violation::Storage {
                    base: (*base).to_owned(),
                    detail,
                });
                continue;
            }
        };
        let (base, rows) = ((*base).to_owned(), |ids: &BTreeSet<&str>| {
            ids.iter().map(|r| (*r).to_owned()).collect::<Vec<_>>()
        });
        for row in rows(present).into_iter().filter(|r| !stored.contains(r)) {
            violations.push(Violation::Lost {
                base: base.clone(),
                row,
            });
        }
        for row in rows(deleted).into_iter().filter(|r| stored.contains(r)) {
            violations.push(Violation::Resurrected {
                base: base.clone(),
                row,
            });
        }
    }
    (writes, expected.len())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::Row;

    const BASE: &str = "ab12cd34ef56ab12cd34ef56ab12cd34";

    fn ev(t: u64, node: &str, ev: &str, write: Option<(&str, &str)>) -> String {
        let mut line = json!({ "t_ns": t, "node": node, "ev": ev, "bucket": "ab", "epoch": 1 });
        if let Some((op, row)) = write {
            line["base"] = json!(BASE);
            line["op"] = json!(op);
            line["row"] = json!(row);
        }
        line.to_string()
    }

    fn log(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    }

    fn rows(ids: &[&str]) -> Vec<Row> {
        ids.iter()
            .map(|id| json!({ "_id": id }).as_object().cloned().unwrap())
            .collect()
    }

    /// Node a owns 10..20 and writes r1, r2, deletes r2; node b owns 20..30 and writes r3.
    fn handoff(dir: &Path) -> Vec<PathBuf> {
        let a = log(
            dir,
            "a.jsonl",
            &[
                ev(10, "a", "own", None),
                ev(11, "a", "write", Some(("create", "r1"))),
                ev(12, "a", "write", Some(("create", "r2"))),
                ev(13, "a", "write", Some(("delete", "r2"))),
                ev(14, "a", "write", Some(("update", "r1"))),
                ev(20, "a", "disown", None),
            ],
        );
        let b = log(
            dir,
            "b.jsonl",
            &[
                ev(20, "b", "own", None),
                ev(25, "b", "write", Some(("create", "r3"))),
                ev(30, "b", "disown", None),
            ],
        );
        vec![a, b]
    }

    #[test]
    fn a_clean_handoff_passes() {
        let dir = tempfile::tempdir().unwrap();
        let logs = handoff(dir.path());
        store::save_base(dir.path(), BASE, 2, &rows(&["r1", "r3"])).unwrap();
        let report = check(&logs, dir.path()).unwrap();
        let want = Report {
            buckets_seen: 1,
            intervals: 2,
            writes: 5,
            bases: 1,
        };
        assert_eq!(report, want);
    }

    #[test]
    fn an_overlap_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let mut logs = handoff(dir.path());
        // c owns from 15 and never disowns: overlaps a's [10, 20) and b's [20, 30).
        logs.push(log(dir.path(), "c.jsonl", &[ev(15, "c", "own", None)]));
        store::save_base(dir.path(), BASE, 2, &rows(&["r1", "r3"])).unwrap();
        let violations = check(&logs, dir.path()).unwrap_err();
        assert_eq!(violations.len(), 2, "{violations:?}");
        let text = violations[0].to_string();
        assert!(
            text.contains("bucket ab") && text.contains("[10 ns, 20 ns)") && text.contains("+inf"),
            "{text}"
        );
    }

    #[test]
    fn a_lost_and_a_resurrected_row_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        let logs = handoff(dir.path());
        // b's owner overwrote the base from stale memory: r3 is lost and r2 is back.
        store::save_base(dir.path(), BASE, 2, &rows(&["r1", "r2"])).unwrap();
        let violations = check(&logs, dir.path()).unwrap_err();
        assert_eq!(
            violations,
            [
                Violation::Lost {
                    base: BASE.into(),
                    row: "r3".into()
                },
                Violation::Resurrected {
                    base: BASE.into(),
                    row: "r2".into()
                },
            ]
        );
        // No file at all: every expected row is lost.
        let empty = tempfile::tempdir().unwrap();
        let violations = check(&logs, empty.path()).unwrap_err();
        assert_eq!(violations.len(), 2, "{violations:?}");
    }

    #[test]
    fn a_killed_sims_intervals_can_be_closed() {
        let dir = tempfile::tempdir().unwrap();
        let mut logs = handoff(dir.path());
        let killed = log(dir.path(), "c.jsonl", &[ev(1, "c", "own", None)]);
        logs.push(killed.clone());
        store::save_base(dir.path(), BASE, 2, &rows(&["r1", "r3"])).unwrap();
        assert!(check(&logs, dir.path()).is_err());
        assert_eq!(mark_dead(&killed, 5).unwrap(), 1);
        assert_eq!(mark_dead(&killed, 6).unwrap(), 0);
        assert_eq!(check(&logs, dir.path()).unwrap().intervals, 3);
    }

    #[test]
    fn unreadable_evidence_is_a_violation() {
        let dir = tempfile::tempdir().unwrap();
        let bad = log(
            dir.path(),
            "bad.jsonl",
            &["{nope".to_owned(), ev(1, "a", "write", None)],
        );
        let missing = dir.path().join("missing.jsonl");
        let violations = check(&[bad, missing], dir.path()).unwrap_err();
        let lines: Vec<usize> = violations
            .iter()
            .map(|v| match v {
                Violation::BadLog { line, .. } => *line,
                other => panic!("{other}"),
            })
            .collect();
        assert_eq!(lines, [1, 2, 0]);
    }
}
