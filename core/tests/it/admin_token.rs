//! The admin bearer token on an HTTP listener: mutating routes answer 401 without the right
//! token and pass with it, read-only routes stay open, and the token never reaches the logs.
//! Logs are captured by a subscriber local to the test's (single) thread.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use clap::Parser;
use dtable_core::auth::{AdminArgs, AdminToken, require_admin, warn_open};
use dtable_core::tls::serve_http;
use dtable_testkit::pki::Pki;
use tokio_util::sync::CancellationToken;

/// What a binary's arguments look like around the admin flag.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    admin: AdminArgs,
}

/// Everything logged while it is installed, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Installs a subscriber writing every event (all levels) into this buffer, for the
    /// current thread, until the guard is dropped.
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let sink = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An admin-like router: `POST /rebalance/` guarded, `GET /healthz` open.
fn admin_router(token: Option<Arc<AdminToken>>) -> Router {
    Router::new()
        .route("/rebalance/", post(|| async { "rebalanced" }))
        .route_layer(require_admin(token))
        .route("/healthz", get(|| async { "ok" }))
}

/// Serves `router` on a loopback port; returns its base URL and the stop token.
async fn serve(router: Router) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(serve_http(listener, router, None, stop.clone()));
    (url, stop)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_token_guards_mutations_and_stays_secret() {
    const TOKEN: &str = "tok-8fKq2LmZr4Wx";
    let logs = Captured::default();
    let _guard = logs.install();
    let pki = Pki::generate();
    let file = pki.dir().join("admin-token");
    std::fs::write(&file, format!("  {TOKEN}\n")).unwrap();

    let args =
        Args::try_parse_from(["test", "--admin-token-file", file.to_str().unwrap()]).unwrap();
    let token = args.admin.load().unwrap().expect("a token file was given");
    tracing::info!(?token, %token, ?args, "loaded the admin token");
    let (url, stop) = serve(admin_router(Some(token))).await;
    let http = http();
    let rebalance = format!("{url}/rebalance/");

    let missing = http.post(&rebalance).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"code": "unauthorized", "error": "missing or wrong admin token"})
    );

    let wrong = http
        .post(&rebalance)
        .bearer_auth("tok-guessed")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.headers()["www-authenticate"], "Bearer");

    let right = http
        .post(&rebalance)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    assert_eq!(right.text().await.unwrap(), "rebalanced");

    let open = http.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(open.status(), 200);

    stop.cancel();
    let text = logs.text();
    assert!(text.contains("admin request refused"), "{text}");
    assert!(text.contains("<redacted>"), "{text}");
    assert!(
        !text.contains(TOKEN),
        "the token leaked into the logs:\n{text}"
    );
    assert!(
        !text.contains("tok-guessed"),
        "a presented token leaked:\n{text}"
    );
}

#[tokio::test]
async fn without_a_token_mutations_are_open_and_a_warning_says_so() {
    let logs = Captured::default();
    let _guard = logs.install();

    let args = Args::try_parse_from(["test"]).unwrap();
    let token = args.admin.load().unwrap();
    assert!(token.is_none());
    warn_open("dtable-proxy admin");
    let (url, stop) = serve(admin_router(token)).await;

    let response = http()
        .post(format!("{url}/rebalance/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    stop.cancel();

    let text = logs.text();
    assert!(text.contains("WARN"), "{text}");
    assert!(text.contains("dtable-proxy admin"), "{text}");
    assert!(text.contains("mutating admin endpoints are open"), "{text}");
    assert!(text.contains("--admin-token-file"), "{text}");
}

#[test]
fn an_empty_or_unreadable_token_file_is_refused() {
    let pki = Pki::generate();
    let empty = pki.dir().join("empty-token");
    std::fs::write(&empty, " \n").unwrap();
    let args = AdminArgs {
        admin_token_file: Some(empty),
    };
    let err = args.load().unwrap_err().to_string();
    assert!(err.starts_with("--admin-token-file: "), "{err}");
    assert!(err.contains("empty"), "{err}");

    let args = AdminArgs {
        admin_token_file: Some(pki.dir().join("no-such-file")),
    };
    let err = args.load().unwrap_err().to_string();
    assert!(err.starts_with("--admin-token-file: cannot read"), "{err}");
}
