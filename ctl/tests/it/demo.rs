//! The README's first command, end to end: `deploy/local/cluster.sh up` starts the local
//! cluster (3 etcd members, 2 control planes, 3 servers with agents, the proxy), `dtablectl`
//! drives it through status, cordon, drain, uncordon and rebalance, and `cluster.sh down`
//! leaves nothing running. The demo uses fixed ports (etcd 2379, control planes 5580/5581,
//! proxy 5550/5555, ...), so it refuses to run beside a demo that is already up.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use dtable_testkit::wait_until;
use serde_json::Value;

use crate::{Run, run};

/// `up` may install packages first (the binaries are built before the tests); generous.
const UP_TIMEOUT: Duration = Duration::from_secs(900);
const DOWN_TIMEOUT: Duration = Duration::from_secs(120);
/// Drains and rebalances run as handoffs, one release each; generous on a loaded box.
const MOVES: Duration = Duration::from_secs(120);

const CONTROLPLANES: &str = "http://127.0.0.1:5580,http://127.0.0.1:15580";
const NODE: &str = "dtable-server-1";

/// The repository, as `cluster.sh` names it (an absolute path without `..`).
fn repo() -> PathBuf {
    std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .expect("the repository directory")
}

fn script() -> PathBuf {
    repo().join("deploy/local/cluster.sh")
}

fn run_dir() -> PathBuf {
    repo().join("deploy/local/run")
}

/// Runs `cluster.sh <verb>` to completion within `limit`: its exit status and output.
async fn cluster(verb: &str, limit: Duration) -> (Option<i32>, String) {
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(script())
        .arg(verb)
        // The workspace's binaries are built before the tests; a rebuild here would replace
        // files that other tests are running.
        .env("DTABLE_LOCAL_SKIP_BUILD", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("cluster.sh {verb} did not finish within {limit:?}"))
        .expect("run cluster.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Processes that carry the demo's marker (`DTABLE_LOCAL_RUN=<run dir>`) in their environment.
fn demo_processes() -> Vec<u32> {
    let marker = format!("DTABLE_LOCAL_RUN={}", run_dir().display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

/// Stops the demo if the test fails half-way, so no process outlives it.
struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::process::Command::new("bash")
                .arg(script())
                .arg("down")
                .stdin(Stdio::null())
                .output();
        }
    }
}

async fn ctl(args: &[&str]) -> Run {
    let mut all = vec!["--controlplane", CONTROLPLANES];
    all.extend_from_slice(args);
    run(&all).await
}

async fn nodes() -> Vec<Value> {
    let out = ctl(&["--json", "nodes"]).await;
    out.assert_ok();
    out.json()["nodes"].as_array().cloned().unwrap_or_default()
}

fn node<'a>(nodes: &'a [Value], id: &str) -> &'a Value {
    nodes
        .iter()
        .find(|n| n["node_id"] == id)
        .unwrap_or_else(|| panic!("{id} not among {nodes:#?}"))
}

fn counts(nodes: &[Value]) -> Vec<u64> {
    let mut c: Vec<u64> = nodes
        .iter()
        .map(|n| n["bucket_count"].as_u64().unwrap())
        .collect();
    c.sort_unstable();
    c
}

#[tokio::test]
async fn the_local_demo_starts_is_operated_with_dtablectl_and_stops_clean() {
    assert!(
        !run_dir().exists() && demo_processes().is_empty(),
        "a local demo is already running ({}); stop it with `deploy/local/cluster.sh down`",
        run_dir().display()
    );
    let _down = Down;

    let (code, out) = cluster("up", UP_TIMEOUT).await;
    assert_eq!(code, Some(0), "cluster.sh up failed:\n{out}");
    assert!(
        out.contains("http://127.0.0.1:5581/"),
        "no status page URL:\n{out}"
    );
    assert!(
        out.contains("$ dtablectl status"),
        "no dtablectl status:\n{out}"
    );
    assert!(
        out.contains("dtable-server-3"),
        "status shows no servers:\n{out}"
    );
    let page = dtable_testkit::http::get(([127, 0, 0, 1], 5581).into(), "/")
        .await
        .expect("status page");
    assert_eq!(page.status, 200);

    // status: the whole map placed over three servers.
    let status = ctl(&["--json", "status"]).await;
    status.assert_ok();
    let s = status.json();
    let owned = s.to_string().matches("dtable-server-").count();
    assert!(owned >= 256, "status names too few owners: {s}");
    assert_eq!(counts(&nodes().await), vec![85, 85, 86]);
    ctl(&["status"]).await.assert_ok();

    // cordon: the node keeps its buckets and is marked.
    ctl(&["cordon", NODE]).await.assert_ok();
    wait_until("the cordon shows", crate::SETTLE, || async {
        node(&nodes().await, NODE)["cordoned"] == true
    })
    .await;
    assert!(node(&nodes().await, NODE)["bucket_count"].as_u64().unwrap() > 0);

    // drain: its buckets move to the others by handoff.
    ctl(&["drain", NODE]).await.assert_ok();
    wait_until("the drained node holds nothing", MOVES, || async {
        let n = nodes().await;
        node(&n, NODE)["bucket_count"] == 0 && counts(&n) == vec![0, 128, 128]
    })
    .await;

    // uncordon + rebalance: it gets its share back.
    ctl(&["uncordon", NODE]).await.assert_ok();
    let plan = ctl(&["--json", "rebalance"]).await;
    plan.assert_ok();
    wait_until("balanced again over three", MOVES, || async {
        counts(&nodes().await) == vec![85, 85, 86]
    })
    .await;
    let moves = ctl(&["--json", "moves"]).await;
    moves.assert_ok();

    let (code, out) = cluster("down", DOWN_TIMEOUT).await;
    assert_eq!(code, Some(0), "cluster.sh down failed:\n{out}");
    assert!(!run_dir().exists(), "down left {}", run_dir().display());
    let left = demo_processes();
    assert!(left.is_empty(), "down left processes running: {left:?}");
}
