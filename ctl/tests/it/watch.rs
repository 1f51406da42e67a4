//! `watch`: the snapshot summary and one line per streamed event, JSON lines with `--json`,
//! reconnection when the stream ends, and a clean exit 0 on SIGTERM or Ctrl-C.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use crate::fake::{Fake, Options, REVISION, events};
use crate::{RUN_TIMEOUT, SETTLE, command};

/// A running `dtablectl watch`.
struct Watch {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Watch {
    fn start(args: &[&str]) -> Watch {
        let mut child = command(args, &[]).spawn().expect("start dtablectl watch");
        let stdout = child.stdout.take().expect("piped stdout");
        Watch {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next `n` lines of stdout.
    async fn lines(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        while out.len() < n {
            let line = tokio::time::timeout(SETTLE, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no line {} within {SETTLE:?}: {out:#?}", out.len()))
                .expect("read stdout")
                .unwrap_or_else(|| panic!("stdout closed after {out:#?}"));
            out.push(line);
        }
        out
    }

    /// Sends `signal` and returns the exit status and everything left on stdout and stderr.
    async fn stop(mut self, signal: Signal) -> (Option<i32>, String, String) {
        let pid = self.child.id().expect("still running") as i32;
        kill(Pid::from_raw(pid), signal).expect("send the signal");
        let status = tokio::time::timeout(RUN_TIMEOUT, self.child.wait())
            .await
            .expect("watch exits after SIGTERM")
            .expect("wait for watch");
        let mut rest = Vec::new();
        while let Ok(Some(line)) = self.lines.next_line().await {
            rest.push(line);
        }
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            err.read_to_string(&mut stderr).await.expect("read stderr");
        }
        (status.code(), rest.join("\n"), stderr)
    }
}

/// The line starts with an RFC 3339 UTC timestamp with milliseconds, then `rev N `.
fn assert_stamped(line: &str, revision: i64) {
    let (time, rest) = line.split_once(' ').unwrap();
    assert!(
        humantime::parse_rfc3339(time).is_ok() && time.ends_with('Z'),
        "no timestamp: {line}"
    );
    assert!(rest.starts_with(&format!("rev {revision} ")), "{line}");
}

#[tokio::test]
async fn watch_prints_the_snapshot_then_each_event_and_exits_0_on_sigterm() {
    let fake = Fake::start().await;
    let mut watch = Watch::start(&["--controlplane", &fake.url(), "watch"]);
    let lines = watch.lines(1 + events().len()).await;
    assert_stamped(&lines[0], REVISION);
    assert!(
        lines[0].ends_with(
            "snapshot: 3 nodes (dtable-server-a 85, dtable-server-b 85, dtable-server-c 85 \
             cordoned), 255/256 buckets assigned, 1 move in flight"
        ),
        "{}",
        lines[0]
    );
    for (line, event) in lines[1..].iter().zip(events()) {
        assert_stamped(line, event.revision);
    }
    assert!(lines[1].ends_with("move 2a dtable-server-a -> dtable-server-b acked (move id 4200)"));
    assert!(
        lines[2].ends_with(&format!(
            "bucket 2a: dtable-server-a -> dtable-server-b (epoch {})",
            REVISION + 2
        )),
        "{}",
        lines[2]
    );
    assert!(lines[3].ends_with("move 2a dtable-server-a -> dtable-server-b ended (move id 4200)"));
    assert!(
        lines[4].ends_with(
            "node dtable-server-d joined: active, weight 1, 0 buckets, http://10.1.0.4:5000/"
        ),
        "{}",
        lines[4]
    );
    let (code, rest, stderr) = watch.stop(Signal::SIGTERM).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert!(rest.is_empty(), "{rest}");
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!(fake.calls_of("WatchAssignment").len(), 1);
}

/// Also ends cleanly on Ctrl-C (SIGINT).
#[tokio::test]
async fn watch_json_prints_one_object_per_line() {
    let fake = Fake::start().await;
    let mut watch = Watch::start(&["--controlplane", &fake.url(), "watch", "--json"]);
    let lines = watch.lines(1 + events().len()).await;
    let docs: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let types: Vec<&str> = docs.iter().map(|d| d["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["snapshot", "move", "bucket", "move", "node"]);
    assert_eq!(docs[0]["revision"], REVISION);
    assert_eq!(
        docs[0]["assignment"]["buckets"].as_array().unwrap().len(),
        256
    );
    assert_eq!(docs[0]["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(docs[0]["moves"][0]["bucket"], "2a");
    assert_eq!(docs[1]["phase"], "acked");
    assert_eq!(docs[1]["move"]["acked"], true);
    assert_eq!(docs[2]["to"], "dtable-server-b");
    assert_eq!(docs[4]["change"], "joined");
    assert_eq!(docs[4]["node"]["node_id"], "dtable-server-d");
    for doc in &docs {
        assert!(humantime::parse_rfc3339(doc["time"].as_str().unwrap()).is_ok());
    }
    let (code, _, stderr) = watch.stop(Signal::SIGINT).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
}

#[tokio::test]
async fn watch_reconnects_when_the_stream_ends() {
    let fake = Fake::start_with(Options {
        end_first_watch: true,
        ..Options::default()
    })
    .await;
    let mut watch = Watch::start(&["--controlplane", &fake.url(), "watch"]);
    let per_stream = 1 + events().len();
    let lines = watch.lines(2 * per_stream).await;
    // The second stream opens with a fresh snapshot.
    assert!(lines[0].contains(" snapshot: "), "{}", lines[0]);
    assert!(lines[per_stream].contains(" snapshot: "), "{lines:#?}");
    assert_eq!(fake.calls_of("WatchAssignment").len(), 2);
    let (code, _, stderr) = watch.stop(Signal::SIGTERM).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(
        stderr,
        format!(
            "dtablectl: watch: {}: the control plane ended the stream; reconnecting in 500ms\n",
            fake.url()
        )
    );
}
