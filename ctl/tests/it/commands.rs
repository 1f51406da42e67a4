//! Each command's output and exit status against the fake control plane, as text and as JSON.

use crate::fake::{Fake, LEADER, NODES, REVISION, cluster, owner_of};
use crate::run;

/// The 16 rows of the bucket map in `status` output: the row digit, then 16 cells.
fn map_rows(stdout: &str) -> Vec<(String, Vec<char>)> {
    let lines: Vec<&str> = stdout.lines().collect();
    let header = lines
        .iter()
        .position(|l| *l == "   0123456789abcdef")
        .unwrap_or_else(|| panic!("no map header in:\n{stdout}"));
    lines[header + 1..header + 17]
        .iter()
        .map(|l| (l[..3].trim().to_owned(), l[3..].chars().collect()))
        .collect()
}

#[tokio::test]
async fn status_shows_leader_counts_moves_and_the_map() {
    let fake = Fake::start().await;
    let out = run(&["--controlplane", &fake.url(), "status"]).await;
    out.assert_ok();
    let text = &out.stdout;
    assert!(!text.contains('\u{1b}'), "colour on a pipe:\n{text}");
    assert!(
        text.contains(&format!("control plane  {} (leader)", fake.url())),
        "{text}"
    );
    assert!(
        text.contains(&format!("leader         {LEADER}\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("revision       {REVISION}\n")),
        "{text}"
    );
    assert!(
        text.contains("nodes          3: 2 active, 1 cordoned\n"),
        "{text}"
    );
    assert!(
        text.contains("buckets        255 assigned, 1 unassigned\n"),
        "{text}"
    );
    assert!(
        text.contains("moves          1 in flight: 2a dtable-server-a -> dtable-server-b\n"),
        "{text}"
    );

    // The legend gives each node a symbol; the map shows it in every bucket the node owns.
    let legend: Vec<(char, String)> = text
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let symbol = words.next()?;
            let id = words.next()?;
            (symbol.chars().count() == 1 && id.starts_with("dtable-server-"))
                .then(|| (symbol.chars().next().unwrap(), id.to_owned()))
        })
        .collect();
    assert_eq!(legend.len(), 3, "{text}");
    let symbol_of = |id: &str| legend.iter().find(|(_, n)| n == id).unwrap().0;
    let rows = map_rows(text);
    assert_eq!(rows.len(), 16);
    for (r, (label, cells)) in rows.iter().enumerate() {
        assert_eq!(label, &format!("{r:x}"));
        assert_eq!(cells.len(), 16, "row {label}: {cells:?}");
        for (c, cell) in cells.iter().enumerate() {
            let bucket = (r * 16 + c) as u8;
            let want = match bucket {
                0x2a => '*',
                0xff => '.',
                b => symbol_of(owner_of(b)),
            };
            assert_eq!(*cell, want, "bucket {bucket:02x}");
        }
    }
    assert!(
        text.contains("dtable-server-c  85 buckets  cordoned"),
        "{text}"
    );
    // One call of each read.
    for method in ["GetLeader", "GetAssignment", "ListNodes", "ListMoves"] {
        assert_eq!(
            fake.calls_of(method).len(),
            1,
            "{method}: {:?}",
            fake.calls()
        );
    }
}

#[tokio::test]
async fn status_json_carries_the_whole_picture() {
    let fake = Fake::start().await;
    let out = run(&["--controlplane", &fake.url(), "status", "--json"]).await;
    out.assert_ok();
    let v = out.json();
    assert_eq!(v["control_plane"], fake.url());
    assert_eq!(v["leader"], LEADER);
    assert_eq!(v["this_instance_leads"], true);
    assert_eq!(v["revision"], REVISION);
    assert_eq!(v["assigned"], 255);
    assert_eq!(v["unassigned"], 1);
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(v["moves"][0]["bucket"], "2a");
    let buckets = v["assignment"]["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 256);
    for (i, b) in buckets.iter().enumerate() {
        assert_eq!(b["bucket"], format!("{i:02x}"));
        assert_eq!(b["node_id"], owner_of(i as u8));
    }
}

#[tokio::test]
async fn nodes_prints_a_table_and_json() {
    let fake = Fake::start().await;
    let out = run(&["--controlplane", &fake.url(), "nodes"]).await;
    out.assert_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "NODE", "ROLE", "HEALTH", "STATE", "CORDON", "WEIGHT", "BUCKETS", "LEASE", "VERSION",
            "LOCAL", "URL"
        ]
    );
    for (i, node) in cluster().nodes.iter().enumerate() {
        let cells: Vec<&str> = lines[i + 1].split_whitespace().collect();
        let cordon = if node.cordoned { "cordoned" } else { "-" };
        let lease = format!("{}s", node.lease_ttl_seconds);
        let weight = node.weight.to_string();
        let held = node.bucket_count.to_string();
        assert_eq!(
            cells,
            [
                node.node_id.as_str(),
                "server",
                "healthy",
                "active",
                cordon,
                weight.as_str(),
                held.as_str(),
                lease.as_str(),
                node.version.as_str(),
                node.local_node_url.as_str(),
            ],
            "{}",
            out.stdout
        );
    }
    assert!(
        out.stdout.ends_with(&format!(
            "3 nodes, 255 buckets held (revision {REVISION})\n"
        )),
        "{}",
        out.stdout
    );

    let out = run(&["--controlplane", &fake.url(), "--json", "nodes"]).await;
    out.assert_ok();
    let v = out.json();
    assert_eq!(v["revision"], REVISION);
    let ids: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, NODES);
    assert_eq!(v["nodes"][2]["cordoned"], true);
    assert_eq!(v["nodes"][0]["lease_ttl_seconds"], 61);
    assert_eq!(v["nodes"][1]["local_node_url"], "http://10.1.0.2:5000/");
}

#[tokio::test]
async fn lookup_accepts_both_forms_and_names_the_owner() {
    let fake = Fake::start().await;
    let url = fake.url();
    for uuid in [
        "2a1b2c3d4e5f60718293a4b5c6d7e8f9",
        "2A1B2C3D-4E5F-6071-8293-A4B5C6D7E8F9",
    ] {
        let out = run(&["--controlplane", &url, "lookup", uuid]).await;
        out.assert_ok();
        let owner = owner_of(0x2a);
        let want = format!(
            "base            2a1b2c3d4e5f60718293a4b5c6d7e8f9\n\
             bucket          2a\n\
             node            {owner}\n\
             node_url        https://cloud.example/{owner}/\n\
             local_node_url  http://10.1.0.1:5000/\n\
             epoch           {}\n",
            1000 + 0x2a
        );
        assert_eq!(out.stdout, want);
    }
    // The control plane gets the normalized form.
    for call in fake.calls_of("Lookup") {
        assert_eq!(call.arg, "2a1b2c3d4e5f60718293a4b5c6d7e8f9");
    }

    let out = run(&[
        "--controlplane",
        &url,
        "lookup",
        "ff000000000000000000000000000000",
        "--json",
    ])
    .await;
    out.assert_ok();
    let v = out.json();
    assert_eq!(v["dtable_uuid"], "ff000000000000000000000000000000");
    assert_eq!(v["bucket"], "ff");
    assert_eq!(v["node_id"], "");
    let out = run(&[
        "--controlplane",
        &url,
        "lookup",
        "ff000000000000000000000000000000",
    ])
    .await;
    out.assert_ok();
    assert!(out.stdout.contains("unassigned"), "{}", out.stdout);
}

#[tokio::test]
async fn rebalance_prints_the_planned_moves() {
    let fake = Fake::start().await;
    let url = fake.url();
    let out = run(&["--controlplane", &url, "rebalance", "--dry-run"]).await;
    out.assert_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!("dry run at revision {REVISION}: 2 moves planned, nothing written")
    );
    assert!(
        lines.contains(&"ff      (unassigned)     dtable-server-b"),
        "{}",
        out.stdout
    );
    assert!(
        lines.contains(&"02      dtable-server-c  dtable-server-a"),
        "{}",
        out.stdout
    );

    let out = run(&["--controlplane", &url, "rebalance"]).await;
    out.assert_ok();
    assert!(
        out.stdout.starts_with(&format!(
            "rebalance requested at revision {REVISION}: 2 moves planned"
        )),
        "{}",
        out.stdout
    );

    let out = run(&["--controlplane", &url, "--json", "rebalance", "--dry-run"]).await;
    out.assert_ok();
    let v = out.json();
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["requested"], false);
    assert_eq!(v["planned_moves"][0]["bucket"], "ff");
    assert_eq!(v["planned_moves"][1]["from"], "dtable-server-c");

    let args: Vec<String> = fake
        .calls_of("Rebalance")
        .into_iter()
        .map(|c| c.arg)
        .collect();
    assert_eq!(args, ["dry_run=true", "dry_run=false", "dry_run=true"]);
}

#[tokio::test]
async fn drain_cordon_uncordon_record_their_intent() {
    let fake = Fake::start().await;
    let url = fake.url();
    for (verb, method, word) in [
        ("drain", "Drain", "draining"),
        ("cordon", "Cordon", "cordoned"),
        ("uncordon", "Uncordon", "uncordoned"),
    ] {
        let out = run(&["--controlplane", &url, verb, "dtable-server-b"]).await;
        out.assert_ok();
        assert!(
            out.stdout
                .starts_with(&format!("{verb} dtable-server-b: {word}")),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout.contains(&format!(
                "(intent key dtable-cluster/cordon/dtable-server-b, revision {})",
                REVISION + 10
            )),
            "{}",
            out.stdout
        );
        let out = run(&["--controlplane", &url, verb, "dtable-server-b", "--json"]).await;
        out.assert_ok();
        let v = out.json();
        assert_eq!(v["intent"], verb);
        assert_eq!(v["node_id"], "dtable-server-b");
        assert_eq!(v["key"], "dtable-cluster/cordon/dtable-server-b");
        assert_eq!(v["revision"], REVISION + 10);
        assert!(v["message"].as_str().unwrap().starts_with(word));

        let calls = fake.calls_of(method);
        assert_eq!(calls.len(), 2, "{method}: {calls:?}");
        assert!(calls.iter().all(|c| c.arg == "dtable-server-b"));
    }
}

#[tokio::test]
async fn moves_lists_the_moves_in_flight() {
    let fake = Fake::start().await;
    let out = run(&["--controlplane", &fake.url(), "moves"]).await;
    out.assert_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], format!("1 move in flight (revision {REVISION})"));
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        ["BUCKET", "FROM", "TO", "RELEASE", "MOVE", "ID", "STARTED"]
    );
    assert_eq!(
        lines[3].split_whitespace().collect::<Vec<_>>(),
        [
            "2a",
            "dtable-server-a",
            "dtable-server-b",
            "releasing",
            "4200",
            "2026-11-25T09:30:00Z"
        ]
    );

    let out = run(&["--controlplane", &fake.url(), "moves", "--json"]).await;
    out.assert_ok();
    let v = out.json();
    assert_eq!(v["revision"], REVISION);
    assert_eq!(v["moves"][0]["move_id"], 4200);
    assert_eq!(v["moves"][0]["acked"], false);
}

#[tokio::test]
async fn every_command_prints_one_json_document() {
    let fake = Fake::start().await;
    let url = fake.url();
    let commands: [&[&str]; 9] = [
        &["status"],
        &["nodes"],
        &["lookup", "00000000-0000-0000-0000-000000000000"],
        &["rebalance"],
        &["rebalance", "--dry-run"],
        &["drain", "dtable-server-a"],
        &["cordon", "dtable-server-a"],
        &["uncordon", "dtable-server-a"],
        &["moves"],
    ];
    for cmd in commands {
        let mut args = vec!["--json", "--controlplane", url.as_str()];
        args.extend_from_slice(cmd);
        let out = run(&args).await;
        out.assert_ok();
        assert!(out.json().is_object(), "{cmd:?}: {}", out.stdout);
    }
}
