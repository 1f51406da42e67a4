//! Bad configuration exits 64 with one line naming the problem; SeaTable's config file fills
//! unset flags.

use std::time::Duration;

use dtable_testkit::cluster::{
    read_nodes, read_registration, read_slaves, spawn_self_registering_sim, spawn_sim,
    spawn_slave_sim,
};
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
    // Modes and roles.
    let mut bad_mode = args(&base);
    bad_mode.extend(args(&["--node-id", "dtable-server-a", "--mode", "proxy"]));
    expect_64(&bad_mode, "--mode").await;
    let mut seatable_slave = args(&base);
    seatable_slave.extend(args(&[
        "--node-id",
        "dtable-server-a",
        "--mode",
        "seatable",
        "--role",
        "slave",
    ]));
    expect_64(&seatable_slave, "--role").await;
    // Seatable mode needs somewhere to probe.
    expect_64(
        &args(&[
            "--etcd",
            "127.0.0.1:1",
            "--node-id",
            "dtable-server-a",
            "--mode",
            "seatable",
        ]),
        "--local-node-url",
    )
    .await;
}

/// Writes a SeaTable-style config (JSON with comments) with the `cluster_config` fields given.
fn write_config(dir: &std::path::Path, name: &str, fields: &[(&str, &str)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("        // {k}\n        \"{k}\": \"{v}\""))
        .collect();
    let text = format!(
        "{{\n    // written by the test\n    \"cluster_config\": {{\n{}\n    }}\n}}\n",
        body.join(",\n")
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_slave_config_file_drives_a_slave_agent() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let slave = spawn_slave_sim("dtable-server-slave-file", "http://127.0.0.1:9", &[]);
    let dir = tempfile::tempdir().unwrap();
    let endpoints = etcd.endpoints_arg();
    let url = slave.url();
    let path = write_config(
        dir.path(),
        "dtable_server_slave_config.json",
        &[
            ("etcd_host_list", endpoints.as_str()),
            ("node_id", "dtable-server-slave-file"),
            ("node_url", "https://cloud.example/slave/"),
            ("local_node_url", url.as_str()),
        ],
    );
    let _agent = Proc::spawn(
        "dtable-agent",
        &args(&[
            "--seatable-config",
            &path,
            "--role",
            "slave",
            "--lease-ttl",
            "10",
            "--http-listen",
            "127.0.0.1:0",
        ]),
        &[],
    );
    wait_until(
        "the slave registered from the file",
        Duration::from_secs(10),
        || async {
            read_slaves(&client)
                .await
                .contains_key("dtable-server-slave-file")
        },
    )
    .await;
    let rec = &read_slaves(&client).await["dtable-server-slave-file"];
    assert_eq!(rec.value["local_node_url"], slave.url());
    assert_eq!(rec.value["node_url"], "https://cloud.example/slave/");
    assert!(
        read_nodes(&client).await.is_empty(),
        "nothing at a server key"
    );
}

#[tokio::test]
async fn a_seatable_config_names_the_registration_a_seatable_agent_watches() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let mut sim = spawn_self_registering_sim(&etcd, "dtable-server-st-file", 30, &[]);
    let dir = tempfile::tempdir().unwrap();
    let endpoints = etcd.endpoints_arg();
    let url = sim.url();
    // No node_url: the server registers its own record, the agent only probes.
    let path = write_config(
        dir.path(),
        "dtable_server_config.json",
        &[
            ("etcd_host_list", endpoints.as_str()),
            ("node_id", "dtable-server-st-file"),
            ("local_node_url", url.as_str()),
        ],
    );
    let agent = Proc::spawn(
        "dtable-agent",
        &args(&[
            "--seatable-config",
            &path,
            "--mode",
            "seatable",
            "--health-interval",
            "200ms",
            "--http-listen",
            "127.0.0.1:0",
        ]),
        &[],
    );
    wait_until(
        "the agent sees the server's registration",
        Duration::from_secs(10),
        || async {
            agent
                .log()
                .contains("the server's own registration is present")
        },
    )
    .await;
    let lease = read_registration(&client, "dtable-server-st-file")
        .await
        .expect("registered")
        .lease;
    sim.kill9();
    wait_until(
        "the dead server's lease revoked",
        Duration::from_secs(10),
        || async {
            read_registration(&client, "dtable-server-st-file")
                .await
                .is_none()
        },
    )
    .await;
    let left = client
        .clone()
        .lease_time_to_live(lease, None)
        .await
        .unwrap()
        .ttl();
    assert_eq!(left, -1, "revoked, not expired");
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
