//! Bad configuration exits 64 with one line naming the problem.

use std::time::Duration;

use dtable_testkit::run_to_exit;

#[tokio::test]
async fn bad_flags_exit_64_naming_the_field() {
    let cases: [(&[&str], &str); 4] = [
        (&["--election-ttl", "10"], "--etcd"),
        (
            &["--etcd", "127.0.0.1:1", "--election-ttl", "2"],
            "--election-ttl",
        ),
        (&["--etcd", "no-port-here"], "--etcd"),
        (
            &["--etcd", "127.0.0.1:1", "--grpc-listen", "nonsense"],
            "--grpc-listen",
        ),
    ];
    for (args, field) in cases {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let (status, out) =
            run_to_exit("dtable-controlplane", &args, &[], Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(64), "{args:?}: {out}");
        assert!(out.contains(field), "{args:?}: {out}");
        assert_eq!(
            out.trim().lines().count(),
            1,
            "{args:?}: one line, got {out}"
        );
    }
}
