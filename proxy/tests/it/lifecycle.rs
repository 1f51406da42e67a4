//! Start-up and shutdown: bad configuration exits 64; SIGTERM stops accepting and lets the
//! requests in flight finish.

use std::time::{Duration, Instant};

use dtable_testkit::run_to_exit;

use crate::{Setup, client, get, node_of, send, uuid_in_bucket};

#[tokio::test]
async fn bad_configuration_exits_64_naming_the_field() {
    let cases: [(&[&str], &str); 4] = [
        (&[], "--etcd"),
        (
            &["--etcd", "127.0.0.1:1", "--hold-timeout", "soon"],
            "--hold-timeout",
        ),
        (
            &["--etcd", "127.0.0.1:1", "--hold-timeout", "100ms"],
            "--hold-timeout",
        ),
        (
            &["--etcd", "127.0.0.1:1", "--max-header-bytes", "100"],
            "--max-header-bytes",
        ),
    ];
    for (args, field) in cases {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let (status, out) = run_to_exit("dtable-proxy", &args, &[], Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(64), "{args:?}: {out}");
        assert!(out.contains(field), "{args:?}: {out}");
        assert_eq!(out.trim().lines().count(), 1, "{args:?}: {out}");
    }
}

#[tokio::test]
async fn sigterm_drains_requests_in_flight() {
    let mut s = Setup::start(2, &["--shutdown-grace", "20s"]).await;
    let addr = s.proxy.addr;
    let uuid = uuid_in_bucket(0x11, 1);
    let slow = tokio::spawn(async move {
        send(
            &client(),
            get(addr, &format!("/dtables/{uuid}?delay_ms=2000")),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.proxy.proc.sigterm();
    let stopped = Instant::now();
    let (resp, _) = slow.await.unwrap();
    assert_eq!(resp.status(), 200, "the request in flight finished");
    assert_eq!(node_of(&resp), s.node(1));
    let status = s
        .proxy
        .proc
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("proxy exits");
    assert!(
        status.success(),
        "{status:?}\n{}",
        s.proxy.proc.log_tail(20)
    );
    assert!(stopped.elapsed() < Duration::from_secs(15));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after exit"
    );
}
