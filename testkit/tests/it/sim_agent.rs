//! Agent mode against a fake `LocalAgent` written here: the sim serves what it is told to own
//! and nothing else, releases with `AckRelease`, acknowledges `fenced`, fences itself when the
//! serving lease lapses or the stream ends, reconnects, and its event log passes the checker.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dtable_core::Bucket;
use dtable_proto::v1::local_agent_server::{LocalAgent, LocalAgentServer};
use dtable_proto::v1::{
    AckFencedRequest, AckFencedResponse, AckReleaseRequest, AckReleaseResponse, AgentState,
    AgentStatus, OwnedBucket, ReleaseBucket, StatusRequest, WatchRequest,
};
use dtable_testkit::events::{Event, EventKind};
use dtable_testkit::sim::{NOT_OWNER_HEADER, SimOptions};
use dtable_testkit::{checker, scratch_dir, store, wait_until};
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

use crate::sim::{BASE_AB, BASE_AB_HEX, TestSim};
use crate::sim_rows::send_json;

/// A base in bucket `cd`, which the sim is never told to own.
const BASE_CD: &str = "cd12cd34ef56ab12cd34ef56ab12cd34";

/// One `Watch` stream the sim opened: send on it, or drop it to end the stream.
type WatchTx = mpsc::Sender<Result<AgentState, Status>>;

/// What the sim acknowledged.
#[derive(Debug, PartialEq)]
enum Ack {
    Release(String, i64),
    Fenced,
}

/// The fake agent's service: hands each new stream to the test and reports the acks.
struct Service {
    watches_tx: mpsc::UnboundedSender<WatchTx>,
    acks_tx: mpsc::UnboundedSender<Ack>,
}

#[tonic::async_trait]
impl LocalAgent for Service {
    type WatchStream = ReceiverStream<Result<AgentState, Status>>;

    async fn watch(&self, _: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let _ = self.watches_tx.send(tx);
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn ack_release(
        &self,
        request: Request<AckReleaseRequest>,
    ) -> Result<Response<AckReleaseResponse>, Status> {
        let AckReleaseRequest { bucket, move_id } = request.into_inner();
        let _ = self.acks_tx.send(Ack::Release(bucket, move_id));
        Ok(Response::new(AckReleaseResponse {}))
    }

    async fn ack_fenced(
        &self,
        _: Request<AckFencedRequest>,
    ) -> Result<Response<AckFencedResponse>, Status> {
        let _ = self.acks_tx.send(Ack::Fenced);
        Ok(Response::new(AckFencedResponse {}))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<AgentStatus>, Status> {
        Err(Status::unimplemented("fake agent"))
    }
}

/// A fake agent served in-process on a free loopback port.
struct FakeAgent {
    url: String,
    watches_rx: mpsc::UnboundedReceiver<WatchTx>,
    acks_rx: mpsc::UnboundedReceiver<Ack>,
    _server: tokio::task::JoinHandle<()>,
}

impl FakeAgent {
    async fn start() -> FakeAgent {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (watches_tx, watches_rx) = mpsc::unbounded_channel();
        let (acks_tx, acks_rx) = mpsc::unbounded_channel();
        let service = LocalAgentServer::new(Service {
            watches_tx,
            acks_tx,
        });
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .expect("fake agent serves");
        });
        FakeAgent {
            url: format!("http://{addr}"),
            watches_rx,
            acks_rx,
            _server: server,
        }
    }

    /// The next stream the sim opens, within 10 s.
    async fn next_watch(&mut self) -> WatchTx {
        tokio::time::timeout(Duration::from_secs(10), self.watches_rx.recv())
            .await
            .expect("the sim watches in time")
            .expect("fake agent alive")
    }

    /// The next ack, within 10 s.
    async fn next_ack(&mut self) -> Ack {
        tokio::time::timeout(Duration::from_secs(10), self.acks_rx.recv())
            .await
            .expect("an ack in time")
            .expect("fake agent alive")
    }
}

/// A message owning `owned` and releasing `release` for `serve_for_ms`.
fn state(owned: &[(&str, i64)], release: &[(&str, i64)], serve_for_ms: u64) -> AgentState {
    AgentState {
        revision: 1,
        owned: owned
            .iter()
            .map(|(b, e)| OwnedBucket {
                bucket: (*b).to_owned(),
                epoch: *e,
            })
            .collect(),
        release: release
            .iter()
            .map(|(b, m)| ReleaseBucket {
                bucket: (*b).to_owned(),
                move_id: *m,
            })
            .collect(),
        fenced: false,
        serve_for_ms,
        // Relative only, as a server that is not on the agent's host would get it.
        deadline_monotonic_ns: 0,
        node_id: "dtable-server-ag".to_owned(),
    }
}

/// The status of `GET …/rows/` of `uuid`.
async fn rows_status(addr: SocketAddr, uuid: &str) -> StatusCode {
    let path = format!("/api/v1/dtables/{uuid}/rows/");
    send_json(addr, Method::GET, &path, None).await.status
}

/// Waits until `GET …/rows/` of [`BASE_AB`] answers `status`.
async fn wait_rows(addr: SocketAddr, status: StatusCode, what: &str) {
    wait_until(what, Duration::from_secs(10), || async move {
        rows_status(addr, BASE_AB).await == status
    })
    .await;
}

/// The events of `log`.
fn events(log: &Path) -> Vec<Event> {
    let text = std::fs::read_to_string(log).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A sim in agent mode with storage and an event log in a scratch dir.
async fn agent_sim(agent: &FakeAgent, dir: &Path) -> (TestSim, PathBuf, PathBuf) {
    let (storage, log) = (dir.join("storage"), dir.join("events.jsonl"));
    let options = SimOptions::agent("dtable-server-ag", &agent.url)
        .with_storage(&storage)
        .with_event_log(&log);
    (TestSim::start(options).await, storage, log)
}

#[tokio::test]
async fn agent_mode_serves_owned_buckets_and_releases_on_request() {
    let mut agent = FakeAgent::start().await;
    let dir = scratch_dir("sim-agent");
    let (sim, storage, log) = agent_sim(&agent, dir.path()).await;
    let watch = agent.next_watch().await;
    assert_eq!(rows_status(sim.addr, BASE_AB).await, StatusCode::CONFLICT);

    watch
        .send(Ok(state(&[("ab", 7)], &[], 60_000)))
        .await
        .unwrap();
    wait_rows(sim.addr, StatusCode::OK, "the sim to serve ab").await;
    let refused = send_json(
        sim.addr,
        Method::GET,
        &format!("/dtables/{BASE_CD}/rows/"),
        None,
    )
    .await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(refused.header(NOT_OWNER_HEADER), Some("1"));
    let rows = format!("/api/v1/dtables/{BASE_AB}/rows/");
    let created = send_json(sim.addr, Method::POST, &rows, Some(json!({ "n": 1 }))).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text());
    let stored = store::load_base(&storage, BASE_AB_HEX).unwrap().unwrap();
    assert_eq!((stored.epoch, stored.rows.len()), (7, 1));

    // Release ab (still listed as owned, as until the move commits), and cd it never held.
    let release = state(&[("ab", 7)], &[("ab", 42), ("cd", 43)], 60_000);
    watch.send(Ok(release)).await.unwrap();
    assert_eq!(agent.next_ack().await, Ack::Release("ab".into(), 42));
    assert_eq!(agent.next_ack().await, Ack::Release("cd".into(), 43));
    let resp = send_json(sim.addr, Method::POST, &rows, Some(json!({ "n": 2 }))).await;
    assert_eq!(resp.status, StatusCode::CONFLICT, "{}", resp.text());
    assert_eq!(resp.header(NOT_OWNER_HEADER), Some("1"));
    let kinds: Vec<EventKind> = events(&log).iter().map(|e| e.ev).collect();
    let want = [
        EventKind::Own,
        EventKind::Load,
        EventKind::Write,
        EventKind::Unload,
        EventKind::Disown,
    ];
    assert_eq!(kinds, want);

    // Owned again at a newer epoch: re-read from storage, then fenced by the agent.
    watch
        .send(Ok(state(&[("ab", 9)], &[], 60_000)))
        .await
        .unwrap();
    wait_rows(sim.addr, StatusCode::OK, "the sim to serve ab again").await;
    let mut fenced = state(&[("ab", 9)], &[], 60_000);
    fenced.fenced = true;
    watch.send(Ok(fenced)).await.unwrap();
    assert_eq!(agent.next_ack().await, Ack::Fenced);
    assert_eq!(rows_status(sim.addr, BASE_AB).await, StatusCode::CONFLICT);
    assert_eq!(sim.handle.epoch(Bucket(0xab)), None);
    sim.stop().await;

    let report = checker::check(&[log], &storage).unwrap_or_else(|v| panic!("{v:#?}"));
    assert_eq!((report.intervals, report.writes, report.bases), (2, 1, 1));
}

#[tokio::test]
async fn agent_mode_fences_itself_when_the_lease_lapses_or_the_stream_ends() {
    let mut agent = FakeAgent::start().await;
    let dir = scratch_dir("sim-agent-fence");
    let (sim, storage, log) = agent_sim(&agent, dir.path()).await;
    let watch = agent.next_watch().await;

    // 1500 ms of serving lease, then silence.
    let granted = Instant::now();
    watch
        .send(Ok(state(&[("ab", 3)], &[], 1500)))
        .await
        .unwrap();
    wait_rows(sim.addr, StatusCode::OK, "the sim to serve ab").await;
    let rows = format!("/api/v1/dtables/{BASE_AB}/rows/");
    let created = send_json(sim.addr, Method::POST, &rows, Some(json!({ "n": 1 }))).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text());
    wait_rows(sim.addr, StatusCode::CONFLICT, "the lease to lapse").await;
    let lapsed = granted.elapsed();
    assert!(
        lapsed >= Duration::from_millis(1400) && lapsed < Duration::from_secs(5),
        "{lapsed:?}"
    );
    // The timer logs the disown (then the bases are unloaded).
    wait_until("the disown on lapse", Duration::from_secs(5), || {
        let disowned = events(&log).iter().any(|e| e.ev == EventKind::Disown);
        async move { disowned }
    })
    .await;

    // A newer message brings it back; the end of the stream fences at once.
    watch
        .send(Ok(state(&[("ab", 3)], &[], 60_000)))
        .await
        .unwrap();
    wait_rows(sim.addr, StatusCode::OK, "the sim to serve ab again").await;
    let ended = Instant::now();
    drop(watch);
    wait_rows(
        sim.addr,
        StatusCode::CONFLICT,
        "the sim to fence on stream end",
    )
    .await;
    assert!(
        ended.elapsed() < Duration::from_secs(3),
        "{:?}",
        ended.elapsed()
    );

    // It reconnects, and serves again on the new stream.
    let watch = agent.next_watch().await;
    watch
        .send(Ok(state(&[("ab", 3)], &[], 60_000)))
        .await
        .unwrap();
    wait_rows(
        sim.addr,
        StatusCode::OK,
        "the sim to serve ab after reconnecting",
    )
    .await;
    let resp = send_json(sim.addr, Method::GET, &rows, None).await;
    assert_eq!(crate::sim_rows::row_ids(&crate::sim::json(&resp)).len(), 1);
    sim.stop().await;

    let report =
        checker::check(std::slice::from_ref(&log), &storage).unwrap_or_else(|v| panic!("{v:#?}"));
    assert_eq!((report.intervals, report.writes), (3, 1), "{report:?}");
    // Every spell ended with a disown, the last one at shutdown.
    let owns = events(&log)
        .iter()
        .filter(|e| e.ev == EventKind::Own)
        .count();
    let disowns = events(&log)
        .iter()
        .filter(|e| e.ev == EventKind::Disown)
        .count();
    assert_eq!((owns, disowns), (3, 3));
}
