//! Exit statuses and messages when things go wrong: usage errors (64, nothing sent), a control
//! plane that is unreachable or answers with an error (1, one line naming URL and code), the
//! admin token, and failover to the next URL.

use std::time::{Duration, Instant};

use crate::fake::{Fake, Options};
use crate::{run, run_env};

#[tokio::test]
async fn usage_errors_exit_64_and_send_nothing() {
    let fake = Fake::start().await;
    let url = fake.url();
    let cases: [&[&str]; 7] = [
        &[],
        &["frobnicate"],
        &["drain"],
        &["lookup"],
        &["nodes", "--timeout", "soon"],
        &["status", "--no-such-flag"],
        &["rebalance", "extra-arg"],
    ];
    for args in cases {
        let mut full = vec!["--controlplane", url.as_str()];
        full.extend_from_slice(args);
        let out = run(&full).await;
        assert_eq!(out.code, Some(64), "{args:?}: {out:#?}");
        assert!(!out.stderr.is_empty(), "{args:?}: no message");
        assert!(out.stdout.is_empty(), "{args:?}: {out:#?}");
    }
    // A missing argument is named.
    let out = run(&["--controlplane", &url, "drain"]).await;
    assert!(out.stderr.contains("<NODE>"), "{}", out.stderr);
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
}

#[tokio::test]
async fn help_exits_0() {
    let out = run(&["--help"]).await;
    out.assert_ok();
    assert!(out.stdout.contains("admin token"), "{}", out.stdout);
    let out = run(&["cordon", "--help"]).await;
    out.assert_ok();
    assert!(
        out.stdout.contains("Needs the admin token"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn a_malformed_uuid_or_node_id_is_refused_before_any_call() {
    let fake = Fake::start().await;
    let url = fake.url();
    for uuid in [
        "not-a-uuid",
        "2a1b2c3d4e5f60718293a4b5c6d7e8f",
        "2a1b2c3d-4e5f60718293-a4b5c6d7e8f9",
        "zz1b2c3d4e5f60718293a4b5c6d7e8f9",
    ] {
        let out = run(&["--controlplane", &url, "lookup", uuid]).await;
        assert_eq!(out.code, Some(64), "{uuid}: {out:#?}");
        assert_eq!(
            out.stderr,
            format!(
                "dtablectl: lookup {uuid}: malformed base UUID {uuid:?}: want 32 hex \
                 characters or the 8-4-4-4-12 form\n"
            )
        );
        assert!(out.stdout.is_empty());
    }
    let out = run(&["--controlplane", &url, "drain", "server-b"]).await;
    assert_eq!(out.code, Some(64), "{out:#?}");
    assert!(out.stderr.contains("dtable-server-"), "{}", out.stderr);
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
}

#[tokio::test]
async fn bad_flag_values_are_usage_errors_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "\n\n").unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["--timeout", "0s", "nodes"], "--timeout"),
        (
            &["--controlplane", "ftp://cp:5580", "nodes"],
            "--controlplane",
        ),
        (&["--controlplane", " , ", "nodes"], "--controlplane"),
        (
            &["--token-file", empty.to_str().unwrap(), "nodes"],
            "--token-file",
        ),
        (
            &["--token-file", "/nonexistent/token", "nodes"],
            "--token-file",
        ),
        (
            &[
                "--controlplane",
                "https://localhost:5580",
                "--ca",
                not_pem.to_str().unwrap(),
                "nodes",
            ],
            "--ca",
        ),
    ];
    for (args, flag) in cases {
        let out = run(args).await;
        assert_eq!(out.code, Some(64), "{args:?}: {out:#?}");
        assert!(out.stderr.contains(flag), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    }
}

#[tokio::test]
async fn an_unreachable_control_plane_exits_1_naming_it() {
    let dead = format!("http://127.0.0.1:{}", dtable_testkit::free_port());
    for args in [
        vec!["--controlplane", dead.as_str(), "nodes"],
        vec!["--controlplane", dead.as_str(), "--json", "status"],
        vec!["--controlplane", dead.as_str(), "watch"],
        vec!["--controlplane", dead.as_str(), "cordon", "dtable-server-a"],
    ] {
        let out = run(&args).await;
        assert_eq!(out.code, Some(1), "{args:?}: {out:#?}");
        assert!(out.stdout.is_empty(), "{out:#?}");
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(out.stderr.starts_with("dtablectl: "), "{}", out.stderr);
        assert!(
            out.stderr.contains("failed: UNAVAILABLE: "),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains(&dead), "{}", out.stderr);
    }
}

#[tokio::test]
async fn a_not_found_answer_exits_1_with_code_and_message() {
    let fake = Fake::start().await;
    let url = fake.url();
    let out = run(&["--controlplane", &url, "drain", "dtable-server-x"]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stdout.is_empty(), "{out:#?}");
    assert_eq!(
        out.stderr,
        format!(
            "dtablectl: drain dtable-server-x failed: NOT_FOUND: no such node (control plane \
             {url})\n"
        )
    );
    // Not retried elsewhere: the cluster answered.
    assert_eq!(fake.calls_of("Drain").len(), 1);
}

#[tokio::test]
async fn the_token_is_sent_on_every_call_and_never_printed() {
    const TOKEN: &str = "s3cret-admin-token-5f2c";
    let fake = Fake::start_with(Options {
        token: Some(TOKEN.to_owned()),
        ..Options::default()
    })
    .await;
    let url = fake.url();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("  {TOKEN}\n")).unwrap();
    let token_path = token_file.to_str().unwrap();

    let runs = [
        run(&[
            "--controlplane",
            &url,
            "--token-file",
            token_path,
            "cordon",
            "dtable-server-a",
        ])
        .await,
        run(&["--controlplane", &url, "--token-file", token_path, "status"]).await,
        run(&[
            "--controlplane",
            &url,
            "--token-file",
            token_path,
            "--json",
            "rebalance",
        ])
        .await,
        // The environment twin.
        run_env(
            &["--controlplane", &url, "drain", "dtable-server-b"],
            &[("DTABLE_ADMIN_TOKEN_FILE", token_path)],
        )
        .await,
        // A refused call prints its error, still without the token.
        run(&[
            "--controlplane",
            &url,
            "--token-file",
            token_path,
            "drain",
            "dtable-server-x",
        ])
        .await,
    ];
    for (i, out) in runs.iter().enumerate() {
        assert_eq!(out.code, Some(if i == 4 { 1 } else { 0 }), "{out:#?}");
        assert!(!out.stdout.contains(TOKEN), "token printed: {out:#?}");
        assert!(!out.stderr.contains(TOKEN), "token printed: {out:#?}");
    }
    let calls = fake.calls();
    assert!(calls.len() >= 8, "{calls:?}");
    for call in &calls {
        assert_eq!(
            call.authorization.as_deref(),
            Some(format!("Bearer {TOKEN}").as_str()),
            "{call:?}"
        );
    }
}

#[tokio::test]
async fn a_mutating_call_without_the_token_is_refused() {
    let fake = Fake::start_with(Options {
        token: Some("right".to_owned()),
        ..Options::default()
    })
    .await;
    let url = fake.url();
    let out = run(&["--controlplane", &url, "cordon", "dtable-server-a"]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr.starts_with(
            "dtablectl: cordon dtable-server-a failed: UNAUTHENTICATED: missing or wrong admin \
             token"
        ),
        "{}",
        out.stderr
    );
    assert!(fake.calls()[0].authorization.is_none());
    // Reads need no token.
    run(&["--controlplane", &url, "nodes"]).await.assert_ok();
}

#[tokio::test]
async fn a_dead_first_url_falls_back_to_the_next() {
    let fake = Fake::start().await;
    let dead = format!("http://127.0.0.1:{}", dtable_testkit::free_port());
    let list = format!("{dead},{}", fake.url());
    let out = run(&["--controlplane", &list, "status"]).await;
    out.assert_ok();
    // The answering instance is the one named.
    assert!(
        out.stdout
            .contains(&format!("control plane  {} (leader)", fake.url())),
        "{}",
        out.stdout
    );
    let out = run_env(
        &["lookup", "2a1b2c3d4e5f60718293a4b5c6d7e8f9", "--json"],
        &[("DTABLE_CONTROLPLANE", list.as_str())],
    )
    .await;
    out.assert_ok();
    assert_eq!(out.json()["bucket"], "2a");
}

#[tokio::test]
async fn a_hung_first_url_costs_one_timeout_then_falls_back() {
    let fake = Fake::start().await;
    // Accepts TCP connections (kernel backlog) but never speaks.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let list = format!("http://{},{}", hung.local_addr().unwrap(), fake.url());
    let started = Instant::now();
    let out = run(&["--controlplane", &list, "--timeout", "3s", "status"]).await;
    out.assert_ok();
    assert!(out.stdout.contains(&fake.url()), "{}", out.stdout);
    // Four calls, but the hung instance is tried (and waited for) only once: one connection
    // sits in its backlog.
    hung.set_nonblocking(true).unwrap();
    let mut connections = 0;
    while hung.accept().is_ok() {
        connections += 1;
    }
    assert_eq!(connections, 1);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(fake.calls().len(), 4, "{:?}", fake.calls());
}
