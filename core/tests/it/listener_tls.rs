//! TLS on our HTTP listeners: `serve_http` with a certificate from the flags answers https
//! from a client trusting our CA; with `--tls-client-ca` it serves only clients that show a
//! certificate from that CA; plain http to a TLS port fails.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use clap::Parser;
use dtable_core::tls::{ServerTls, TlsArgs, serve_http};
use dtable_testkit::pki::{Pair, Pki};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What a binary's arguments look like around the TLS flags.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    tls: TlsArgs,
}

/// `ServerTls` from command-line flags, as a binary loads it.
fn load(flags: &[&str]) -> ServerTls {
    let args = Args::try_parse_from(std::iter::once("test").chain(flags.iter().copied()))
        .unwrap_or_else(|e| panic!("{e}"));
    args.tls.load().unwrap().expect("TLS flags were given")
}

/// A running `serve_http` on a loopback port.
struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(tls: Option<ServerTls>) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route(
            "/hello",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                format!("hello {}", peer.ip())
            }),
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve_http(listener, router, tls, stop.clone()));
        Server { addr, stop, task }
    }

    /// Stops the server and checks that it returns promptly.
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve_http did not return after shutdown")
            .unwrap()
            .unwrap();
    }
}

/// A rustls client (ring) trusting only `ca`, presenting `identity` if given.
fn client(ca: &Path, identity: Option<&Pair>) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(10));
    if let Some(pair) = identity {
        let mut pem = std::fs::read(&pair.cert).unwrap();
        pem.extend(std::fs::read(&pair.key).unwrap());
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

/// GETs `url` and returns the body of a 200, or the error.
async fn fetch(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let response = client.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    assert_eq!(response.status(), 200);
    response.text().await.map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn https_with_a_server_certificate() {
    let pki = Pki::generate();
    let tls = load(&[
        "--tls-cert",
        pki.server.cert.to_str().unwrap(),
        "--tls-key",
        pki.server.key.to_str().unwrap(),
    ]);
    assert!(!tls.requires_client_cert());
    assert_eq!(
        tls.server_config().alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    let server = Server::start(Some(tls)).await;
    let port = server.addr.port();
    let trusting = client(&pki.ca, None);

    let body = fetch(&trusting, &format!("https://127.0.0.1:{port}/hello")).await;
    assert_eq!(body.as_deref(), Ok("hello 127.0.0.1"));
    let body = fetch(&trusting, &format!("https://localhost:{port}/hello")).await;
    assert!(body.is_ok(), "{body:?}");

    // A client that does not trust our CA refuses the server.
    let distrusting = client(&pki.other_ca, None);
    let err = fetch(&distrusting, &format!("https://127.0.0.1:{port}/hello"))
        .await
        .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");

    // Plain http to the TLS port gets no answer.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let err = fetch(&plain, &format!("http://127.0.0.1:{port}/hello"))
        .await
        .unwrap_err();
    assert!(!err.contains("TimedOut"), "{err}");

    server.stop().await;
}

#[tokio::test]
async fn mutual_tls_serves_only_certified_clients() {
    let pki = Pki::generate();
    let tls = load(&[
        "--tls-cert",
        pki.server.cert.to_str().unwrap(),
        "--tls-key",
        pki.server.key.to_str().unwrap(),
        "--tls-client-ca",
        pki.ca.to_str().unwrap(),
    ]);
    assert!(tls.requires_client_cert());
    let server = Server::start(Some(tls)).await;
    let url = format!("https://127.0.0.1:{}/hello", server.addr.port());

    let err = fetch(&client(&pki.ca, None), &url).await.unwrap_err();
    assert!(err.contains("CertificateRequired"), "{err}");

    let err = fetch(&client(&pki.ca, Some(&pki.stranger)), &url)
        .await
        .unwrap_err();
    assert!(err.contains("UnknownCA"), "{err}");

    let body = fetch(&client(&pki.ca, Some(&pki.client)), &url).await;
    assert_eq!(body.as_deref(), Ok("hello 127.0.0.1"));

    server.stop().await;
}

#[tokio::test]
async fn plain_http_when_tls_is_not_configured() {
    assert!(TlsArgs::default().load().unwrap().is_none());
    let server = Server::start(None).await;
    let plain = reqwest::Client::new();
    let body = fetch(
        &plain,
        &format!("http://127.0.0.1:{}/hello", server.addr.port()),
    )
    .await;
    assert_eq!(body.as_deref(), Ok("hello 127.0.0.1"));
    server.stop().await;
}

#[tokio::test]
async fn the_same_files_secure_a_tonic_server() {
    let pki = Pki::generate();
    let tls = load(&[
        "--tls-cert",
        pki.server.cert.to_str().unwrap(),
        "--tls-key",
        pki.server.key.to_str().unwrap(),
        "--tls-client-ca",
        pki.ca.to_str().unwrap(),
    ]);
    // A tonic server (HTTP/2 only) whose one route answers plain HTTP, so that any HTTP/2
    // client can call it.
    let routes = tonic::service::Routes::from(
        Router::new().route("/hello", get(|| async { "hello from tonic" })),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}/hello",
        listener.local_addr().unwrap().port()
    );
    let stop = CancellationToken::new();
    let serving = tonic::transport::Server::builder()
        .tls_config(tls.tonic_config())
        .unwrap()
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            stop.clone().cancelled_owned(),
        );
    let task = tokio::spawn(serving);

    let err = fetch(&client(&pki.ca, Some(&pki.stranger)), &url)
        .await
        .unwrap_err();
    assert!(err.contains("UnknownCA"), "{err}");
    let body = fetch(&client(&pki.ca, Some(&pki.client)), &url).await;
    assert_eq!(body.as_deref(), Ok("hello from tonic"));

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("tonic did not stop")
        .unwrap()
        .unwrap();
}
