//! Listener security of a real proxy process: both ports over TLS with a throw-away PKI
//! (mutual TLS refusing certificates from another CA), the admin token on `POST /rebalance/`
//! (and only there) that never reaches the log, and the rule that the proxy only ever
//! connects to the `local_node_url` of a registered node, whatever the request names.

use std::time::Duration;

use dtable_testkit::cluster::{put_assign, put_node, spawn_proxy, spawn_sim};
use dtable_testkit::pki::{Pki, https_client, reqwest};
use dtable_testkit::{Etcd, http, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{SETTLE, uuid_in_bucket};

/// Distinctive, so that a leak into the log cannot be missed.
const TOKEN: &str = "proxy-admin-token-7d3a91c4";

fn token_file(pki: &Pki) -> String {
    let path = pki.dir().join("admin-token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    path.to_str().unwrap().to_owned()
}

async fn post_rebalance(client: &reqwest::Client, url: &str, bearer: Option<&str>) -> u16 {
    let mut req = client.post(url);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("answer").status().as_u16()
}

#[tokio::test]
async fn tls_on_both_ports_and_the_token_on_rebalance_only() {
    let pki = Pki::generate();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let sim = spawn_sim(&etcd, "dtable-server-0", &[]);
    put_node(&client, &sim.node_id, &sim.url()).await;
    for b in 0..=255u8 {
        put_assign(&client, b, &sim.node_id).await;
    }
    let mut flags = pki.server_args(true);
    flags.extend(["--admin-token-file".to_owned(), token_file(&pki)]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let proxy = spawn_proxy(&etcd, &flags);

    let trusted = https_client(&pki.ca, Some(&pki.client));
    let stranger = https_client(&pki.ca, Some(&pki.stranger));
    let anonymous = https_client(&pki.ca, None);
    let admin = format!("https://{}", proxy.admin);
    wait_until("proxy ready over HTTPS", SETTLE, || {
        let (c, url) = (trusted.clone(), format!("{admin}/readyz"));
        async move { c.get(url).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;

    // The routing port: HTTPS with a client certificate reaches the owner, marked https.
    let uuid = uuid_in_bucket(0x42, 7);
    let url = format!("https://{}/dtables/{uuid}", proxy.addr);
    wait_until("a routed request over HTTPS", SETTLE, || {
        let (c, url) = (trusted.clone(), url.clone());
        async move { c.get(url).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let resp = trusted.get(&url).send().await.unwrap();
    assert_eq!(
        resp.headers()["x-dtable-node"].to_str().unwrap(),
        sim.node_id
    );
    // Without a certificate, or with one from another CA, nothing is served on either port.
    for (who, c) in [("no certificate", &anonymous), ("another CA", &stranger)] {
        assert!(
            c.get(&url).send().await.is_err(),
            "routing port served {who}"
        );
        let health = format!("{admin}/healthz");
        assert!(
            c.get(&health).send().await.is_err(),
            "admin port served {who}"
        );
    }
    // Plain HTTP to the TLS port gets no HTTP answer.
    assert!(
        http::get(proxy.addr, &format!("/dtables/{uuid}"))
            .await
            .is_err()
    );

    // The token guards POST /rebalance/ and nothing else.
    let rebalance = format!("{admin}/rebalance/");
    assert_eq!(post_rebalance(&trusted, &rebalance, None).await, 401);
    assert_eq!(
        post_rebalance(&trusted, &rebalance, Some("wrong")).await,
        401
    );
    let mut etcd_client = client.clone();
    let key = "dtable-cluster/requests/rebalance";
    let before = etcd_client.get(key, None).await.unwrap();
    assert!(before.kvs().is_empty(), "refused requests wrote nothing");
    assert_eq!(post_rebalance(&trusted, &rebalance, Some(TOKEN)).await, 200);
    let after = etcd_client.get(key, None).await.unwrap();
    assert_eq!(after.kvs().len(), 1, "the accepted request is recorded");
    let lookup = format!("{admin}/api/v1/lookup/{uuid}");
    assert_eq!(trusted.get(&lookup).send().await.unwrap().status(), 200);
    assert!(
        !proxy.proc.log().contains(TOKEN),
        "the token reached the log"
    );
}

#[tokio::test]
async fn without_a_token_rebalance_is_open_and_the_log_says_so() {
    let etcd = Etcd::start().await;
    let proxy = spawn_proxy(&etcd, &[]);
    wait_until("proxy ready", SETTLE, || async {
        http::get(proxy.admin, "/readyz")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    let req = hyper::Request::post(format!("http://{}/rebalance/", proxy.admin))
        .body(http_body_util::Full::default())
        .unwrap();
    let (resp, _) = crate::send(&crate::client(), req).await;
    assert_eq!(resp.status(), 200);
    wait_until("the start-up warning", SETTLE, || async {
        proxy.proc.log().contains("--admin-token-file")
    })
    .await;
}

#[tokio::test]
async fn requests_only_ever_go_to_registered_nodes() {
    // A listener that would notice any connection the proxy made to it.
    let bait = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bait_addr = bait.local_addr().unwrap();
    let s = crate::Setup::start(1, &[]).await;
    let uuid = uuid_in_bucket(0x10, 3);
    // Absolute-form target, Host and X-Forwarded-Host all naming the bait.
    let mut conn = tokio::net::TcpStream::connect(s.proxy.addr).await.unwrap();
    let req = format!(
        "GET http://{bait_addr}/dtables/{uuid} HTTP/1.1\r\nhost: {bait_addr}\r\n\
         x-forwarded-host: {bait_addr}\r\nconnection: close\r\n\r\n"
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(SETTLE, conn.read_to_string(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains(&format!("x-dtable-node: {}", s.node(0))),
        "{answer}"
    );
    let touched = tokio::time::timeout(Duration::from_millis(500), bait.accept()).await;
    assert!(
        touched.is_err(),
        "the proxy connected to an address it was only told by a client"
    );
}
