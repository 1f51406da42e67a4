//! etcd secured like production: TLS with client certificates, and password auth. The
//! connection is configured through the real flags (`EtcdArgs` parsed by clap), so these
//! tests also prove that the flags reach the etcd client.

use std::time::Duration;

use clap::Parser;
use dtable_core::cli::EtcdArgs;
use dtable_core::etcd::{EtcdError, EtcdOptions, connect};
use dtable_testkit::etcd::{EtcdTlsFiles, Security};
use dtable_testkit::pki::Pki;
use dtable_testkit::{Etcd, wait_until};

/// What a binary's arguments look like around the etcd flags.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    etcd: EtcdArgs,
}

/// `EtcdOptions` from command-line flags, as a binary resolves them.
fn options(flags: &[&str]) -> EtcdOptions {
    let args = Args::try_parse_from(std::iter::once("test").chain(flags.iter().copied()))
        .unwrap_or_else(|e| panic!("{e}"));
    let (opts, _) = args.etcd.resolve(&Default::default()).unwrap();
    opts
}

/// A put then a get through `opts`, each bounded in time; the error says what went wrong.
async fn round_trip(opts: &EtcdOptions) -> Result<String, String> {
    let attempt = async {
        let mut client = connect(opts).await.map_err(|e| e.to_string())?;
        client
            .put("security-probe", "it works", None)
            .await
            .map_err(|e| e.to_string())?;
        let got = client
            .get("security-probe", None)
            .await
            .map_err(|e| e.to_string())?;
        let kv = got.kvs().first().ok_or("key not found")?;
        Ok(kv.value_str().map_err(|e| e.to_string())?.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(15), attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()))
}

/// Waits until etcd's log shows `line`, proving that etcd itself refused the client.
async fn etcd_logged(etcd: &Etcd, line: &str) {
    wait_until(
        &format!("etcd to log {line:?}"),
        Duration::from_secs(10),
        || {
            let logged = etcd.member_log(0).contains(line);
            async move { logged }
        },
    )
    .await;
}

#[tokio::test]
async fn tls_with_client_certificates() {
    let pki = Pki::generate();
    let etcd = Etcd::start_secured(Security {
        tls: Some(EtcdTlsFiles {
            ca: pki.ca.clone(),
            cert: pki.server.cert.clone(),
            key: pki.server.key.clone(),
            client: Some((pki.client.cert.clone(), pki.client.key.clone())),
        }),
        root_password: None,
    })
    .await;
    let endpoints = etcd.endpoints_arg();
    let ca = pki.ca.to_str().unwrap();
    let cert = pki.client.cert.to_str().unwrap();
    let key = pki.client.key.to_str().unwrap();

    // host:port endpoints get the https scheme; the client certificate is accepted.
    let good = options(&[
        "--etcd",
        &endpoints,
        "--etcd-ca",
        ca,
        "--etcd-cert",
        cert,
        "--etcd-key",
        key,
    ]);
    assert!(!good.endpoints[0].contains("://"), "{:?}", good.endpoints);
    assert_eq!(round_trip(&good).await.as_deref(), Ok("it works"));

    // Same CA, no client certificate: etcd refuses the handshake.
    let no_cert = options(&["--etcd", &endpoints, "--etcd-ca", ca]);
    let err = round_trip(&no_cert).await.unwrap_err();
    assert!(!err.contains("timed out"), "{err}");
    etcd_logged(&etcd, "tls: client didn't provide a certificate").await;

    // A CA that did not sign etcd's certificate: we refuse the server.
    let wrong_ca = options(&[
        "--etcd",
        &endpoints,
        "--etcd-ca",
        pki.other_ca.to_str().unwrap(),
        "--etcd-cert",
        cert,
        "--etcd-key",
        key,
    ]);
    let err = round_trip(&wrong_ca).await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");

    // A client certificate from another CA: etcd refuses it.
    let stranger = options(&[
        "--etcd",
        &endpoints,
        "--etcd-ca",
        ca,
        "--etcd-cert",
        pki.stranger.cert.to_str().unwrap(),
        "--etcd-key",
        pki.stranger.key.to_str().unwrap(),
    ]);
    let err = round_trip(&stranger).await.unwrap_err();
    assert!(!err.contains("timed out"), "{err}");
    etcd_logged(&etcd, "failed to verify client certificate").await;

    // Plain http to the TLS port fails too.
    let plain = options(&["--etcd", &endpoints]);
    let err = round_trip(&plain).await.unwrap_err();
    assert!(!err.contains("timed out"), "{err}");
}

#[tokio::test]
async fn password_auth() {
    const PASSWORD: &str = "pw-Gx7uQ2v9";
    let etcd = Etcd::start_secured(Security {
        tls: None,
        root_password: Some(PASSWORD.to_owned()),
    })
    .await;
    let endpoints = etcd.endpoints_arg();

    let good = options(&[
        "--etcd",
        &endpoints,
        "--etcd-user",
        "root",
        "--etcd-password",
        PASSWORD,
    ]);
    assert!(!format!("{good:?}").contains(PASSWORD), "{good:?}");
    assert_eq!(round_trip(&good).await.as_deref(), Ok("it works"));

    // A wrong password is refused at connect, with an error that names the flags and does
    // not repeat the password.
    let wrong = options(&[
        "--etcd",
        &endpoints,
        "--etcd-user",
        "root",
        "--etcd-password",
        "not-the-password",
    ]);
    let Err(err) = tokio::time::timeout(Duration::from_secs(15), connect(&wrong))
        .await
        .expect("connect timed out")
    else {
        panic!("a wrong password was accepted");
    };
    assert!(matches!(err, EtcdError::Auth { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("--etcd-password"), "{msg}");
    assert!(msg.contains("\"root\""), "{msg}");
    assert!(!msg.contains("not-the-password"), "{msg}");

    // Without a user, auth-enabled etcd refuses the request.
    let anonymous = options(&["--etcd", &endpoints]);
    let err = round_trip(&anonymous).await.unwrap_err();
    assert!(err.contains("user name is empty"), "{err}");
}
