//! The status page in a real browser: Debian's headless Chromium, driven over WebDriver by
//! chromedriver, watches a real control plane place buckets over real agents and sims, and
//! must follow a node crash, a join with planned moves and a control-plane restart live,
//! without a reload, its grid matching the `assign-*` keys in etcd cell by cell.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dtable_testkit::cluster::{
    Farm, balanced_over, read_assignment, spawn_controlplane, spawn_server,
};
use dtable_testkit::{Etcd, free_port, scratch_dir, wait_until};
use etcd_client::GetOptions;
use fantoccini::actions::{InputSource, MouseActions, PointerAction};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::Deserialize;
use tempfile::TempDir;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const INSTALL_HINT: &str = "install them with `apt-get install -y chromium chromium-driver` \
     (scripts/install-deps.sh does)";

/// Bound for anything the page or the cluster should do; generous, the box is slow and shared.
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// The viewport, which is also the size of the screenshot kept for the docs.
const VIEWPORT: (u32, u32) = (1280, 900);

const NODES: [&str; 3] = ["dtable-server-a", "dtable-server-b", "dtable-server-c"];

/// Headless Chromium under chromedriver, with a fresh profile in a scratch dir.
///
/// chromedriver runs in its own process group, which Chromium's processes inherit; dropping
/// the guard SIGKILLs that group and then any straggler whose command line names the scratch
/// dir (Chromium's crash handler leaves the group), so no browser outlives its test, passed or
/// failed.
struct Browser {
    /// The WebDriver session; `None` once closed.
    client: Option<Client>,
    /// The chromedriver process, leader of the group.
    driver: Child,
    /// Profile, config home and chromedriver's log.
    dir: TempDir,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a session in a fresh headless
    /// Chromium.
    ///
    /// # Panics
    /// If Chromium or chromedriver is not installed (saying how to install them), or the
    /// session cannot be opened.
    async fn start() -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(Path::new(bin).is_file(), "{bin} is missing: {INSTALL_HINT}");
        }
        let dir = scratch_dir("dtable-chromium-");
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                dir.path().join("chromedriver.log").display()
            ))
            // Chromium's crash database goes under the config home: keep it in the scratch dir.
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let mut browser = Browser {
            client: None,
            driver,
            dir,
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = tokio::time::Instant::now() + PAGE_TIMEOUT;
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = browser.driver.try_wait() {
                panic!(
                    "chromedriver exited ({status}) before listening on {addr}:\n{}",
                    browser.driver_log()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not listen on {addr} within {PAGE_TIMEOUT:?}:\n{}",
                browser.driver_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = browser.dir.path().join("profile");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--hide-scrollbars",
            &format!("--window-size={},{}", VIEWPORT.0, VIEWPORT.1),
            &format!("--user-data-dir={}", profile.display()),
        ];
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!("capabilities are an object")
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://{addr}"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot open a Chromium session through chromedriver: {e}\n{}",
                    browser.driver_log()
                )
            });
        browser.client = Some(client);
        browser
    }

    /// The open WebDriver session.
    fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open")
    }

    /// The last lines of chromedriver's log, for failure messages.
    fn driver_log(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// What the page shows right now, read in one script round trip.
    async fn page(&self) -> Page {
        let value = self
            .client()
            .execute(READ_PAGE_JS, vec![])
            .await
            .unwrap_or_else(|e| panic!("cannot read the page: {e}"));
        serde_json::from_value(value).unwrap_or_else(|e| panic!("unexpected page read: {e}"))
    }

    /// Resizes the window so that the page's viewport is [`VIEWPORT`]: the window size
    /// Chromium is started with includes its (invisible) frame.
    async fn fit_viewport(&self) {
        let inner = self
            .client()
            .execute("return [window.innerWidth, window.innerHeight];", vec![])
            .await
            .expect("read the viewport size");
        let (inner_w, inner_h) = (
            inner[0].as_i64().unwrap_or(0),
            inner[1].as_i64().unwrap_or(0),
        );
        let (outer_w, outer_h) = self.client().get_window_size().await.expect("window size");
        let grow = |outer: u64, inner: i64, want: u32| {
            u32::try_from(outer as i64 + i64::from(want) - inner).expect("window size")
        };
        self.client()
            .set_window_size(
                grow(outer_w, inner_w, VIEWPORT.0),
                grow(outer_h, inner_h, VIEWPORT.1),
            )
            .await
            .expect("resize the window");
    }

    /// Ends the session, which makes chromedriver quit Chromium cleanly.
    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            client.close().await.expect("close the WebDriver session");
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- chromedriver log tail ----\n{}", self.driver_log());
        }
        if let Ok(pid) = i32::try_from(self.driver.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.driver.wait();
        // Chromium's crash handlers run in sessions of their own: they name the scratch dir.
        for _ in 0..50 {
            let stragglers = processes_naming(self.dir.path());
            if stragglers.is_empty() {
                break;
            }
            for pid in stragglers {
                let _ = kill(pid, Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Processes whose command line mentions `dir`: the ones this test's browser started.
fn processes_naming(dir: &Path) -> Vec<Pid> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .map(Pid::from_raw)
        .collect()
}

/// Reads the page's DOM hooks: the grid, header, tables and the live-stream markers.
const READ_PAGE_JS: &str = r##"
const grid = document.getElementById("grid");
const all = (sel) => Array.from(document.querySelectorAll(sel));
return {
  revision: Number(grid.dataset.revision),
  connection: document.body.dataset.connection,
  badge: document.getElementById("conn").textContent,
  stream_events: Number(document.body.dataset.streamEvents),
  instance: document.getElementById("instance").textContent,
  leader: document.body.dataset.leader || "",
  cells: all("#grid [data-bucket]").map((c) => [c.dataset.bucket, c.dataset.node, Number(c.dataset.epoch)]),
  node_rows: all("#nodes tr[data-node]").map((r) => r.dataset.node),
  leases: all("#nodes tr[data-node] td.ttl").map((td) => td.textContent),
  legend: all("#legend li[data-node]").map((l) => l.dataset.node),
  event_kinds: all("#events li[data-kind]").map((l) => l.dataset.kind),
  not_reloaded: window.__statusPageTestMark === true,
};
"##;

/// Remembers the most grid cells marked moving, and rows in the moves table, seen at once.
const WATCH_MOVES_JS: &str = r##"
window.__movingSeen = 0;
window.__moveRowsSeen = 0;
const note = () => {
  const cells = document.querySelectorAll("#grid .cell.moving").length;
  const rows = document.querySelectorAll("#moves tr[data-bucket]").length;
  window.__movingSeen = Math.max(window.__movingSeen, cells);
  window.__moveRowsSeen = Math.max(window.__moveRowsSeen, rows);
};
new MutationObserver(note).observe(document.body, { subtree: true, childList: true, attributes: true });
return true;
"##;

/// One reading of the page.
#[derive(Debug, Deserialize)]
struct Page {
    revision: i64,
    connection: String,
    badge: String,
    stream_events: u64,
    instance: String,
    leader: String,
    /// (bucket, data-node, data-epoch) of every grid cell, in DOM order.
    cells: Vec<(String, String, i64)>,
    node_rows: Vec<String>,
    /// The "lease left" column, row by row.
    leases: Vec<String>,
    legend: Vec<String>,
    event_kinds: Vec<String>,
    /// The mark the test left in the window is still there: the page was never reloaded.
    not_reloaded: bool,
}

impl Page {
    /// Why the grid does not show exactly `etcd`'s assignment, owners and epochs, with all 256
    /// buckets owned, or `None` when it does.
    fn grid_mismatch(&self, etcd: &Assignment) -> Option<String> {
        if self.connection != "live" {
            return Some(format!("the stream is {}", self.connection));
        }
        if self.cells.len() != 256 {
            return Some(format!("{} cells", self.cells.len()));
        }
        if etcd.owners.len() != 256 {
            return Some(format!(
                "etcd has {} of 256 buckets assigned",
                etcd.owners.len()
            ));
        }
        let wrong: Vec<String> = self
            .cells
            .iter()
            .filter(|(bucket, node, epoch)| {
                node.is_empty()
                    || etcd.owners.get(bucket) != Some(node)
                    || etcd.epochs.get(bucket) != Some(epoch)
            })
            .map(|(bucket, node, epoch)| {
                let want = etcd.owners.get(bucket).map_or("-", String::as_str);
                let want_epoch = etcd.epochs.get(bucket).copied().unwrap_or(0);
                format!("{bucket}: page {node:?}@{epoch}, etcd {want:?}@{want_epoch}")
            })
            .collect();
        (!wrong.is_empty()).then(|| {
            format!(
                "{} cells differ (first: {})",
                wrong.len(),
                wrong[..wrong.len().min(5)].join("; ")
            )
        })
    }
}

/// The assignment in etcd: the owners as dtable-web reads them, and each bucket's epoch.
struct Assignment {
    /// bucket → node id, from [`read_assignment`].
    owners: BTreeMap<String, String>,
    /// bucket → mod_revision of `assign-<bucket>`.
    epochs: BTreeMap<String, i64>,
}

impl Assignment {
    /// Reads the `assign-*` keys.
    async fn read(client: &etcd_client::Client) -> Assignment {
        let owners = read_assignment(client).await;
        let resp = client
            .clone()
            .get("assign-", Some(GetOptions::new().with_prefix()))
            .await
            .expect("read assign- keys");
        let epochs = resp
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                (
                    key.trim_start_matches("assign-").to_owned(),
                    kv.mod_revision(),
                )
            })
            .collect();
        Assignment { owners, epochs }
    }
}

/// Polls the page and etcd's assignment until `check` finds nothing wrong with them, and
/// returns that reading of the page; panics after [`PAGE_TIMEOUT`] with the last complaint.
async fn wait_for_page(
    browser: &Browser,
    etcd: &etcd_client::Client,
    what: &str,
    check: impl Fn(&Page, &Assignment) -> Option<String>,
) -> Page {
    let deadline = tokio::time::Instant::now() + PAGE_TIMEOUT;
    loop {
        let page = browser.page().await;
        let assignment = Assignment::read(etcd).await;
        let Some(why) = check(&page, &assignment) else {
            return page;
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {PAGE_TIMEOUT:?} waiting for {what}: {why}\npage: {page:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Where the screenshot for the docs goes.
fn screenshot_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/images/status-page.png")
}

#[tokio::test]
async fn the_status_page_follows_a_crash_a_join_and_a_restart_without_a_reload() {
    // First, so a machine without Chromium fails at once with the install hint.
    let browser = Browser::start().await;
    let etcd = Etcd::start().await;
    let farm = Farm::new();
    let client = etcd.client().await;
    let mut cp = spawn_controlplane(&etcd, "cp1", 3, &[]);
    let mut servers: Vec<_> = NODES
        .iter()
        .map(|n| spawn_server(&etcd, &farm, n, 3, &[]))
        .collect();
    wait_until("256 buckets over three nodes", PAGE_TIMEOUT, || {
        balanced_over(&client, &NODES)
    })
    .await;

    let url = format!("http://{}/", cp.http);
    browser
        .client()
        .goto(&url)
        .await
        .expect("open the status page");
    browser.fit_viewport().await;
    browser
        .client()
        .execute("window.__statusPageTestMark = true; return true;", vec![])
        .await
        .expect("mark the window");
    let before = wait_for_page(
        &browser,
        &client,
        "the grid to show etcd's assignment",
        |page, etcd| {
            page.grid_mismatch(etcd).or_else(|| {
                (page.node_rows.len() != 3).then(|| format!("node rows {:?}", page.node_rows))
            })
        },
    )
    .await;
    assert_eq!(
        before.instance, "cp1",
        "the page names the instance serving it"
    );
    assert_eq!(before.leader, "cp1", "the page names the leader");
    assert_eq!(before.badge, "live");
    assert!(before.revision > 0, "the grid carries the view's revision");
    assert_eq!(before.legend, NODES, "the legend lists every owner");
    assert!(before.not_reloaded);

    // A crash: the node's lease (3 s) expires and its buckets are placed on the others.
    let dead = NODES[2];
    let owners_before = read_assignment(&client).await;
    servers[2].agent.proc.kill9();
    servers[2].sim.kill9();
    let after = wait_for_page(
        &browser,
        &client,
        "the page to drop the dead node",
        |page, etcd| {
            if etcd.owners.values().any(|n| n == dead) {
                return Some(format!("etcd still assigns buckets to {dead}"));
            }
            page.grid_mismatch(etcd)
                .or_else(|| {
                    page.node_rows
                        .iter()
                        .any(|n| n == dead)
                        .then(|| format!("{dead} still in the node table"))
                })
                .or_else(|| {
                    page.legend
                        .iter()
                        .any(|n| n == dead)
                        .then(|| format!("{dead} still in the legend"))
                })
        },
    )
    .await;
    assert!(after.not_reloaded, "the page was reloaded");
    assert!(
        after.stream_events > before.stream_events,
        "the change did not arrive over the event stream: {} events before, {} after",
        before.stream_events,
        after.stream_events
    );
    assert!(
        after.revision > before.revision,
        "revision {} then {}",
        before.revision,
        after.revision
    );
    // Every owner change and the node's leaving came as events (the list keeps the last 50).
    let owners_after = read_assignment(&client).await;
    let changed = owners_before
        .iter()
        .filter(|(b, n)| owners_after.get(*b) != Some(*n))
        .count();
    assert!(changed >= 85, "only {changed} buckets changed owner");
    assert!(
        after.stream_events - before.stream_events > changed as u64,
        "{changed} buckets changed owner and a node left, but only {} events arrived",
        after.stream_events - before.stream_events
    );
    assert!(
        after.event_kinds.iter().any(|k| k == "bucket"),
        "no bucket event listed: {:?}",
        after.event_kinds
    );
    assert!(balanced_over(&client, &NODES[..2]).await);

    // A join: planned moves hand buckets to the joiner, and the page marks them while they
    // are in flight (a mutation observer remembers the most it ever showed at once).
    browser
        .client()
        .execute(WATCH_MOVES_JS, vec![])
        .await
        .expect("watch the moving marks");
    let joiner = "dtable-server-d";
    let _joiner = spawn_server(&etcd, &farm, joiner, 3, &[]);
    let three = [NODES[0], NODES[1], joiner];
    wait_for_page(
        &browser,
        &client,
        "the joiner's buckets on the page",
        |page, etcd| {
            let counts = etcd.owners.values().filter(|n| *n == joiner).count();
            if counts < 256 / 3 {
                return Some(format!("etcd gives the joiner {counts} buckets so far"));
            }
            page.grid_mismatch(etcd)
                .or_else(|| (page.legend != three).then(|| format!("legend {:?}", page.legend)))
        },
    )
    .await;
    assert!(balanced_over(&client, &three).await);
    let seen = browser
        .client()
        .execute(
            "return [window.__movingSeen, window.__moveRowsSeen];",
            vec![],
        )
        .await
        .expect("read the moving marks");
    assert!(
        seen[0].as_u64() > Some(0) && seen[1].as_u64() > Some(0),
        "no bucket was shown moving during the join (cells, move rows): {seen}"
    );
    let joined = browser.page().await;
    assert!(joined.not_reloaded, "the page was reloaded");
    assert!(
        joined.event_kinds.iter().any(|k| k == "move"),
        "no move event listed: {:?}",
        joined.event_kinds
    );

    // Hovering a cell the dead node held tells its bucket, new owner and epoch.
    let bucket = owners_before
        .iter()
        .find(|(_, n)| *n == dead)
        .map(|(b, _)| b.clone())
        .expect("the dead node held buckets");
    let now = Assignment::read(&client).await;
    let (owner, epoch) = (&now.owners[&bucket], now.epochs[&bucket]);
    let cell = browser
        .client()
        .find(Locator::Css(&format!("#grid [data-bucket=\"{bucket}\"]")))
        .await
        .expect("the cell of the bucket");
    browser
        .client()
        .perform_actions(
            MouseActions::new("mouse".to_owned()).then(PointerAction::MoveToElement {
                element: cell,
                duration: None,
                x: 0.0,
                y: 0.0,
            }),
        )
        .await
        .expect("hover the cell");
    let tip = browser
        .client()
        .find(Locator::Id("tip"))
        .await
        .expect("the tooltip");
    let want = [
        format!("bucket {bucket}"),
        format!("node {owner}"),
        format!("epoch {epoch}"),
    ];
    wait_until("the tooltip of the hovered cell", PAGE_TIMEOUT, || {
        let tip = tip.clone();
        let want = want.clone();
        async move {
            let text = tip.text().await.unwrap_or_default();
            want.iter().all(|w| text.contains(w.as_str()))
        }
    })
    .await;

    // The page is fully drawn and matches etcd: keep a picture of it for the docs.
    let page = browser.page().await;
    assert_eq!(page.grid_mismatch(&Assignment::read(&client).await), None);
    let png = browser.client().screenshot().await.expect("screenshot");
    std::fs::create_dir_all(screenshot_path().parent().expect("docs/images")).expect("docs/images");
    std::fs::write(screenshot_path(), &png).expect("write docs/images/status-page.png");

    // The control plane goes away: the page says so, then reconnects by itself.
    cp.proc.kill9();
    wait_for_page(&browser, &client, "the disconnected badge", |page, _| {
        (page.connection != "disconnected" || page.badge != "disconnected")
            .then(|| format!("connection {:?}, badge {:?}", page.connection, page.badge))
    })
    .await;
    cp.respawn();
    let back = wait_for_page(&browser, &client, "the page to reconnect", |page, etcd| {
        page.grid_mismatch(etcd)
    })
    .await;
    assert!(back.not_reloaded, "the page was reloaded");
    assert_eq!(back.badge, "live");
    assert_eq!(back.node_rows, three);

    // Every live node's lease shows the seconds it has left (re-read, as no event says so).
    wait_for_page(
        &browser,
        &client,
        "lease TTLs in the node table",
        |page, _| {
            let known = page.leases.len() == 3
                && page.leases.iter().all(|l| {
                    l.strip_suffix(" s")
                        .and_then(|n| n.parse::<u32>().ok())
                        .is_some_and(|n| n <= 3)
                });
            (!known).then(|| format!("lease column {:?}", page.leases))
        },
    )
    .await;

    browser.close().await;
}
