//! Bad configuration exits 64 with one line naming the problem; SeaTable's config file fills
//! unset flags.

use std::time::Duration;

use dtable_testkit::cluster::{read_nodes, spawn_sim};
use dtable_testkit::{Etcd, Proc, run_to_exit, wait_until};

async fn expect_64(args: &[String], names: &str) {
    let (status, out) = run_to_exit("dtable-agent", args, &[], Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(64), "{args:?}: {out}");
    assert!(out.contains(names), "{args:?} should name {names}: {out}");
    assert_eq!(
        out.trim().lines().count(),
        1,
        "{args:?}: want one line, got {out}"
    );
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn bad_configuration_exits_64_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let base = [
        "--etcd",
        "127.0.0.1:1",
        "--node-url",
        "http://a/",
        "--local-node-url",
        "http://127.0.0.1:5000/",
    ];

    // Missing field.
    expect_64(&args(&base), "--node-id").await;
    expect_64(
        &args(&["--etcd", "127.0.0.1:1", "--node-id", "dtable-server-a"]),
        "--node-url",
    )
    .await;
    // Bad node id.
    let mut bad_id = args(&base);
    bad_id.extend(args(&["--node-id", "server-1"]));
    expect_64(&bad_id, "--node-id").await;
    // TTL too short for the margin.
    let mut short = args(&base);
    short.extend(args(&["--node-id", "dtable-server-a", "--lease-ttl", "2"]));
    expect_64(&short, "--lease-ttl").await;
    // Malformed JSON in SeaTable's config.
    let broken = dir.path().join("dtable_server_config.json");
    std::fs::write(
        &broken,
        "{\n  // comment\n  \"cluster_config\": {\"node_id\": }\n}\n",
    )
    .unwrap();
    expect_64(
        &args(&["--seatable-config", broken.to_str().unwrap()]),
        "malformed JSON",
    )
    .await;
    expect_64(
        &args(&[
            "--seatable-config",
            "/nonexistent/dtable_server_config.json",
        ]),
        "cannot read",
    )
    .await;
    // Unknown flag.
    expect_64(&args(&["--no-such-flag"]), "--no-such-flag").await;
}

#[tokio::test]
async fn seatable_config_with_comments_drives_the_agent() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let sim = spawn_sim(&etcd, "dtable-server-fromfile", &[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dtable_server_config.json");
    std::fs::write(
        &path,
        format!(
            r#"{{
    // SeaTable's dtable-server configuration
    "host": "127.0.0.1",
    "port": 5000,
    "cluster_config": {{
        "etcd_host_list": "{}", // the etcd cluster
        "node_id": "dtable-server-fromfile",
        "node_url": "https://cloud.example/dtable-server-fromfile/",
        "local_node_url": "{}"
    }}
}}"#,
            etcd.endpoints_arg(),
            sim.url()
        ),
    )
    .unwrap();
    let path = path.to_str().unwrap().to_owned();
    let _agent = Proc::spawn(
        "dtable-agent",
        &args(&[
            "--seatable-config",
            &path,
            "--lease-ttl",
            "10",
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ]),
        &[],
    );
    wait_until(
        "registered from the file",
        Duration::from_secs(10),
        || async {
            read_nodes(&client)
                .await
                .contains_key("dtable-server-fromfile")
        },
    )
    .await;
    let rec = &read_nodes(&client).await["dtable-server-fromfile"];
    assert_eq!(rec["local_node_url"], sim.url());
}
