//! Listener security of a real control-plane process: HTTPS and gRPC over TLS with the
//! certificates of a throw-away PKI, mutual TLS that serves only clients with a certificate
//! from the named CA, and the admin token that guards the intents (and only them) on both
//! APIs without ever reaching the log. Without a token the intents stay open and the start-up
//! log says so.

use std::time::Duration;

use dtable_proto::v1 as pb;
use dtable_proto::v1::control_plane_client::ControlPlaneClient;
use dtable_testkit::cluster::{ControlPlane, put_node, spawn_controlplane};
use dtable_testkit::pki::{Pair, Pki, grpc_tls, https_client, reqwest};
use dtable_testkit::{Etcd, Proc, http, run_to_exit, wait_until};
use etcd_client::Client;
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};

use crate::SETTLE;
use crate::api::{post, wait_ready};

/// The admin token of these tests: distinctive, so that a leak into the log cannot be missed.
const TOKEN: &str = "cp-admin-token-5e1f0c2a9b";

/// The node the intents are about.
const NODE: &str = "dtable-server-a";

/// Where `NODE`'s cordon intent is kept.
const CORDON_KEY: &str = "dtable-cluster/cordon/dtable-server-a";

/// Writes the admin token to a file beside the PKI's and returns its path as a flag value.
fn token_file(pki: &Pki) -> String {
    let path = pki.dir().join("admin-token");
    // A trailing newline, as `echo token > file` writes it; the control plane trims it.
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    path.to_str().unwrap().to_owned()
}

/// `https://<cp's HTTP listener><path>`.
fn https_url(cp: &ControlPlane, path: &str) -> String {
    format!("https://{}{path}", cp.http)
}

/// `GET path` over HTTPS: the status and the body, or the error with its causes.
async fn get(client: &reqwest::Client, url: &str) -> Result<(u16, String), String> {
    let response = client.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(|e| format!("{e:?}"))?;
    Ok((status, body))
}

/// `POST path` over HTTPS with `Authorization: Bearer <bearer>` when given: the status and the
/// JSON answer.
async fn post_as(client: &reqwest::Client, url: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut request = client.post(url);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e:?}"));
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("POST {url} answered {status} {body:?}: {e}"));
    (status, json)
}

/// Waits until `cp` answers `GET /api/v1/nodes` over HTTPS with a loaded view.
async fn wait_ready_https(cp: &ControlPlane, client: &reqwest::Client) {
    let url = https_url(cp, "/api/v1/nodes");
    wait_until("the control plane answering over HTTPS", SETTLE, || async {
        matches!(get(client, &url).await, Ok((200, _)))
    })
    .await;
}

/// A gRPC client of `cp` over TLS, trusting the PKI's CA and presenting `identity`; the error
/// of the connection or the first call, as text, when the server refuses it.
async fn grpc_over_tls(
    cp: &ControlPlane,
    pki: &Pki,
    identity: Option<&Pair>,
) -> Result<ControlPlaneClient<Channel>, String> {
    let endpoint = Endpoint::from_shared(format!("https://{}", cp.grpc))
        .unwrap()
        .tls_config(grpc_tls(&pki.ca, identity))
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(10));
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    let mut client = ControlPlaneClient::new(channel);
    // With TLS 1.3 a client finishes its handshake before the server has judged its
    // certificate; a refusal shows on the first call.
    client
        .list_nodes(pb::ListNodesRequest {})
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(client)
}

/// `request` with `authorization: Bearer <token>`.
fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

/// Whether etcd holds `key`.
async fn key_exists(client: &Client, key: &str) -> bool {
    !client
        .clone()
        .get(key, None)
        .await
        .unwrap()
        .kvs()
        .is_empty()
}

#[tokio::test]
async fn tls_on_both_listeners_and_the_admin_token_guards_only_the_intents() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    put_node(&client, NODE, "http://127.0.0.1:1/").await;
    let pki = Pki::generate();
    let mut args = pki.server_args(false);
    args.extend(["--admin-token-file".to_owned(), token_file(&pki)]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cp = spawn_controlplane(&etcd, "cp-secure", 5, &args);
    // Run it again with everything we log at debug level, to be sure none of it shows the token.
    cp.proc.kill9();
    cp.proc = Proc::spawn(
        "dtable-controlplane",
        &cp.args,
        &[("RUST_LOG".into(), "debug".into())],
    );
    let https = https_client(&pki.ca, None);
    wait_ready_https(&cp, &https).await;

    // HTTPS: a client trusting our CA reads, by address and by name.
    let (status, body) = get(&https, &https_url(&cp, "/api/v1/nodes")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(NODE), "{body}");
    let by_name = format!("https://localhost:{}/healthz", cp.http.port());
    assert_eq!(get(&https, &by_name).await, Ok((200, "ok".to_owned())));
    // A client that does not trust our CA refuses the server; plain HTTP gets no answer.
    let distrusting = https_client(&pki.other_ca, None);
    let err = get(&distrusting, &https_url(&cp, "/healthz"))
        .await
        .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    let plain = http::get(cp.http, "/healthz").await;
    assert!(plain.is_err(), "plain HTTP to the TLS port: {plain:?}");

    // Reads, metrics, health, the status page and the event stream need no token.
    for path in [
        "/healthz",
        "/metrics",
        "/api/v1/nodes",
        "/api/v1/assignment",
        "/api/v1/moves",
        "/api/v1/leader",
        "/api/v1/status",
        "/",
    ] {
        let (status, body) = get(&https, &https_url(&cp, path)).await.unwrap();
        assert_eq!(status, 200, "GET {path}: {body}");
    }
    let events = https
        .get(https_url(&cp, "/api/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    assert_eq!(
        events.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    drop(events);

    // HTTP intents: no token and a wrong token get 401 and write nothing ...
    let cordon = https_url(&cp, &format!("/api/v1/nodes/{NODE}/cordon"));
    for bearer in [None, Some("not-the-token")] {
        let (status, body) = post_as(&https, &cordon, bearer).await;
        assert_eq!(status, 401, "{bearer:?}: {body}");
        assert_eq!(body["code"], "unauthorized", "{body}");
    }
    for intent in ["drain", "uncordon"] {
        let url = https_url(&cp, &format!("/api/v1/nodes/{NODE}/{intent}"));
        let (status, body) = post_as(&https, &url, None).await;
        assert_eq!(status, 401, "{intent}: {body}");
    }
    let url = https_url(&cp, "/api/v1/rebalance?dry_run=true");
    let (status, body) = post_as(&https, &url, None).await;
    assert_eq!(status, 401, "a dry run needs the token too: {body}");
    assert!(!key_exists(&client, CORDON_KEY).await);
    // ... and the right one is obeyed.
    let (status, body) = post_as(&https, &cordon, Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert!(key_exists(&client, CORDON_KEY).await);

    // gRPC over TLS: reads are open, intents need the token.
    let mut grpc = grpc_over_tls(&cp, &pki, None).await.unwrap();
    let nodes = grpc.list_nodes(pb::ListNodesRequest {}).await.unwrap();
    assert!(nodes.get_ref().nodes.iter().any(|n| n.node_id == NODE));
    let node = || pb::NodeRequest {
        node_id: NODE.to_owned(),
    };
    let refused = grpc.uncordon(node()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let refused = grpc
        .cordon(with_bearer(node(), "not-the-token"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let refused = grpc
        .rebalance(pb::RebalanceRequest { dry_run: true })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(key_exists(&client, CORDON_KEY).await, "refused calls wrote");
    grpc.uncordon(with_bearer(node(), TOKEN)).await.unwrap();
    assert!(!key_exists(&client, CORDON_KEY).await);
    let refused = grpc.cordon(node()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(!key_exists(&client, CORDON_KEY).await);

    // The log tells how the listeners are secured and what was refused, never the token.
    let log = cp.proc.log();
    assert!(log.contains("tls=\"on (no client certificates)\""), "{log}");
    assert!(log.contains("admin request refused"), "{log}");
    assert!(log.contains("admin gRPC call refused"), "{log}");
    assert!(!log.contains("no admin token configured"), "{log}");
    assert!(
        !log.contains(TOKEN),
        "the token leaked into the log:\n{log}"
    );
}

#[tokio::test]
async fn mutual_tls_serves_only_clients_with_a_certificate_from_the_ca() {
    let etcd = Etcd::start().await;
    let pki = Pki::generate();
    let args = pki.server_args(true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cp = spawn_controlplane(&etcd, "cp-mtls", 5, &args);
    let certified = https_client(&pki.ca, Some(&pki.client));
    wait_ready_https(&cp, &certified).await;
    let url = https_url(&cp, "/api/v1/nodes");

    // HTTPS. Every client here trusts the server, so a failure is the server refusing it. The
    // client does not always learn why (TLS 1.3 lets it finish the handshake before the server
    // judges its certificate, and the alert may lose the race with the close), so the test
    // only demands that no answer comes.
    let (status, body) = get(&certified, &url).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let anonymous = get(&https_client(&pki.ca, None), &url).await;
    assert!(anonymous.is_err(), "no certificate: {anonymous:?}");
    let stranger = get(&https_client(&pki.ca, Some(&pki.stranger)), &url).await;
    assert!(stranger.is_err(), "another CA's certificate: {stranger:?}");

    // gRPC.
    let mut grpc = grpc_over_tls(&cp, &pki, Some(&pki.client)).await.unwrap();
    let leader = grpc.get_leader(pb::GetLeaderRequest {}).await;
    assert!(leader.is_ok(), "{leader:?}");
    let stranger = grpc_over_tls(&cp, &pki, Some(&pki.stranger)).await;
    assert!(stranger.is_err(), "another CA's certificate: gRPC served");
    let anonymous = grpc_over_tls(&cp, &pki, None).await;
    assert!(anonymous.is_err(), "no certificate: gRPC served");

    // Refusing them broke nothing for the certified client.
    assert_eq!(get(&certified, &url).await.map(|(s, _)| s), Ok(200));
    let leader = grpc.get_leader(pb::GetLeaderRequest {}).await;
    assert!(leader.is_ok(), "{leader:?}");

    let log = cp.proc.log();
    assert!(
        log.contains("tls=\"mutual (client certificates required)\""),
        "{log}"
    );
}

#[tokio::test]
async fn without_a_token_the_intents_are_open_and_the_start_up_says_so() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    put_node(&client, NODE, "http://127.0.0.1:1/").await;
    let cp = spawn_controlplane(&etcd, "cp-open", 5, &[]);
    wait_ready(&cp).await;
    wait_until("the node in the view", SETTLE, || async {
        http::get(cp.http, "/api/v1/nodes")
            .await
            .is_ok_and(|r| r.text().contains(NODE))
    })
    .await;

    let (status, body) = post(cp.http, &format!("/api/v1/nodes/{NODE}/cordon"), "").await;
    assert_eq!(status, 200, "{body}");
    assert!(key_exists(&client, CORDON_KEY).await);

    let log = cp.proc.log();
    assert_eq!(
        log.matches("no admin token configured").count(),
        1,
        "one warning at start-up:\n{log}"
    );
    assert!(log.contains("component=\"dtable-controlplane\""), "{log}");
    assert!(log.contains("tls=\"off (plain gRPC and HTTP)\""), "{log}");
}

#[tokio::test]
async fn bad_security_files_exit_64_naming_the_flag() {
    let pki = Pki::generate();
    let missing = pki.dir().join("missing.pem");
    let empty = pki.dir().join("empty-token");
    std::fs::write(&empty, " \n").unwrap();
    let (cert, key) = (pki.server.cert_arg(), pki.server.key_arg());
    let cases: [(&[&str], &str); 5] = [
        (
            &["--tls-cert", missing.to_str().unwrap(), "--tls-key", key],
            "--tls-cert",
        ),
        (&["--tls-cert", cert], "--tls-key"),
        // The client's key does not fit the server's certificate.
        (
            &["--tls-cert", cert, "--tls-key", pki.client.key_arg()],
            "--tls-key",
        ),
        (&["--tls-client-ca", pki.ca.to_str().unwrap()], "--tls-cert"),
        (
            &["--admin-token-file", empty.to_str().unwrap()],
            "--admin-token-file",
        ),
    ];
    for (flags, field) in cases {
        let args: Vec<String> = ["--etcd", "127.0.0.1:1"]
            .iter()
            .chain(flags)
            .map(|s| (*s).to_owned())
            .collect();
        let (status, out) =
            run_to_exit("dtable-controlplane", &args, &[], Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(64), "{args:?}: {out}");
        assert!(out.contains(field), "{args:?}: {out}");
        assert_eq!(out.trim().lines().count(), 1, "{args:?}: one line: {out}");
    }
}
