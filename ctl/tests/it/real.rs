//! Against a real `dtable-controlplane` on a real etcd: `nodes` and `lookup` answer what
//! SeaTable's dtable-web would read from etcd itself, and intents carry the admin token the
//! way the control plane checks it. (Needs the workspace binaries built:
//! `cargo build --workspace --bins`.)

use dtable_testkit::cluster::{
    bucket_counts, put_assign, put_node, read_assignment, read_nodes, spawn_controlplane,
};
use dtable_testkit::{Etcd, wait_until};

use crate::{SETTLE, run, run_env};

const NODES: [&str; 3] = ["dtable-server-r1", "dtable-server-r2", "dtable-server-r3"];
const SLAVE: &str = "dtable-server-slave-r";

#[tokio::test]
async fn nodes_and_lookup_against_a_real_control_plane() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    for (i, node) in NODES.iter().enumerate() {
        put_node(&client, node, &format!("http://127.0.0.1:{}/", 6001 + i)).await;
    }
    // Already balanced, so the control plane has nothing to move.
    for b in 0..=255u8 {
        put_assign(&client, b, NODES[usize::from(b) % 3]).await;
    }
    // A read replica, registered as its agent registers it.
    let slave = serde_json::json!({
        "node_id": SLAVE,
        "node_url": "https://cloud.example/slave/",
        "local_node_url": "http://127.0.0.1:4001/",
        "role": "slave",
        "version": "5.3.0",
    });
    client
        .clone()
        .put(
            format!("dtable-cluster/slaves/{SLAVE}"),
            slave.to_string(),
            None,
        )
        .await
        .unwrap();
    let cp = spawn_controlplane(&etcd, "cp1", 3, &[]);
    let url = format!("http://{}", cp.grpc);

    wait_until(
        "the control plane serves three nodes and a slave",
        SETTLE,
        || {
            let url = url.clone();
            async move {
                let out = run(&["--controlplane", &url, "--json", "nodes"]).await;
                out.code == Some(0) && out.json()["nodes"].as_array().is_some_and(|n| n.len() == 4)
            }
        },
    )
    .await;

    let counts = bucket_counts(&client).await;
    let out = run(&["--controlplane", &url, "nodes"]).await;
    out.assert_ok();
    let records = read_nodes(&client).await;
    for node in NODES {
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with(node))
            .unwrap_or_else(|| panic!("{node} missing:\n{}", out.stdout));
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[1..4], ["server", "healthy", "active"], "{line}");
        assert_eq!(cells[6], counts[node].to_string(), "{line}");
        assert_eq!(
            cells.last().copied(),
            records[node]["local_node_url"].as_str(),
            "{line}"
        );
    }

    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with(SLAVE))
        .unwrap_or_else(|| panic!("{SLAVE} missing:\n{}", out.stdout));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            SLAVE,
            "slave",
            "healthy",
            "active",
            "-",
            "1",
            "-",
            "-",
            "5.3.0",
            "http://127.0.0.1:4001/"
        ],
        "{line}"
    );
    assert!(
        out.stdout
            .contains("\n3 servers and 1 slave, 256 buckets held (revision "),
        "{}",
        out.stdout
    );

    let assignment = read_assignment(&client).await;
    for uuid in [
        "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        "FF1B2C3D-4E5F-6071-8293-A4B5C6D7E8F9",
        "7c000000-0000-0000-0000-000000000000",
    ] {
        let bucket = uuid.replace('-', "").to_lowercase()[..2].to_owned();
        let owner = &assignment[&bucket];
        let out = run(&["--controlplane", &url, "lookup", uuid, "--json"]).await;
        out.assert_ok();
        let v = out.json();
        assert_eq!(v["bucket"], bucket.as_str());
        assert_eq!(v["node_id"], owner.as_str());
        assert_eq!(v["node_url"], records[owner]["node_url"]);
        assert_eq!(v["local_node_url"], records[owner]["local_node_url"]);
        assert!(v["epoch"].as_i64().unwrap() > 0, "{v}");

        let out = run(&["--controlplane", &url, "lookup", uuid]).await;
        out.assert_ok();
        assert!(
            out.stdout.contains(&format!("node            {owner}\n")),
            "{}",
            out.stdout
        );
    }

    // status works too, whether or not this control plane serves ListMoves yet.
    wait_until("status names cp1 as leader", SETTLE, || {
        let url = url.clone();
        async move {
            let out = run(&["--controlplane", &url, "--json", "status"]).await;
            out.code == Some(0) && out.json()["leader"] == "cp1"
        }
    })
    .await;
    let out = run(&["--controlplane", &url, "status"]).await;
    out.assert_ok();
    assert!(
        out.stdout
            .contains("buckets        256 assigned, 0 unassigned"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("nodes          3: 3 active\nslaves         1: 1 healthy\n"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn intents_need_the_admin_token_of_a_real_control_plane() {
    const TOKEN: &str = "real-admin-token-9c1e";
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    for (i, node) in NODES.iter().enumerate() {
        put_node(&client, node, &format!("http://127.0.0.1:{}/", 6101 + i)).await;
    }
    for b in 0..=255u8 {
        put_assign(&client, b, NODES[usize::from(b) % 3]).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let token_path = token_file.to_str().unwrap();
    let cp = spawn_controlplane(&etcd, "cp1", 3, &["--admin-token-file", token_path]);
    let url = format!("http://{}", cp.grpc);
    wait_until("the control plane serves three nodes", SETTLE, || {
        let url = url.clone();
        async move {
            let out = run(&["--controlplane", &url, "--json", "nodes"]).await;
            out.code == Some(0) && out.json()["nodes"].as_array().is_some_and(|n| n.len() == 3)
        }
    })
    .await;

    // Without the token the intent is refused and nothing changes.
    let out = run(&["--controlplane", &url, "cordon", NODES[1]]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr.starts_with(&format!(
            "dtablectl: cordon {} failed: UNAUTHENTICATED: ",
            NODES[1]
        )),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(&url), "{}", out.stderr);

    // With it, the cordon is recorded and shows in `nodes`.
    let out = run(&[
        "--controlplane",
        &url,
        "--token-file",
        token_path,
        "--json",
        "cordon",
        NODES[1],
    ])
    .await;
    out.assert_ok();
    assert_eq!(out.json()["node_id"], NODES[1]);
    assert!(!out.stdout.contains(TOKEN));
    let cordoned = |url: String, want: bool| async move {
        let out = run(&["--controlplane", &url, "--json", "nodes"]).await;
        out.code == Some(0)
            && out.json()["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|n| n["node_id"] == NODES[1] && n["cordoned"] == want)
    };
    wait_until("nodes shows the cordon", SETTLE, || {
        cordoned(url.clone(), true)
    })
    .await;

    // An unknown node is NOT_FOUND, exit 1.
    let out = run(&[
        "--controlplane",
        &url,
        "--token-file",
        token_path,
        "drain",
        "dtable-server-nope",
    ])
    .await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr
            .starts_with("dtablectl: drain dtable-server-nope failed: NOT_FOUND: "),
        "{}",
        out.stderr
    );

    let out = run_env(
        &["--controlplane", &url, "uncordon", NODES[1]],
        &[("DTABLE_ADMIN_TOKEN_FILE", token_path)],
    )
    .await;
    out.assert_ok();
    wait_until("nodes shows the cordon lifted", SETTLE, || {
        cordoned(url.clone(), false)
    })
    .await;
}
