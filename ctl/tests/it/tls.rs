//! TLS: `--ca` to trust the control plane's certificate, `--cert`/`--key` for mutual TLS, with
//! certificates made for the test by a throwaway CA.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};
use tonic::transport::{Identity, ServerTlsConfig};

use crate::fake::{Fake, Options};
use crate::run;

/// A certificate and its key, as PEM.
struct Pem {
    cert: String,
    key: String,
}

/// A throwaway CA, a server certificate for `localhost` and a client certificate, written
/// to `dir`.
struct Pki {
    ca: Pem,
    server: Pem,
    client: Pem,
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "dtablectl test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf = |name: &str, ca: &Certificate| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.signed_by(&key, ca, &ca_key).unwrap();
            Pem {
                cert: cert.pem(),
                key: key.serialize_pem(),
            }
        };
        let pki = Pki {
            server: leaf("localhost", &ca),
            client: leaf("operator", &ca),
            ca: Pem {
                cert: ca.pem(),
                key: ca_key.serialize_pem(),
            },
            dir: dir.to_owned(),
        };
        for (name, pem) in [
            ("ca", &pki.ca),
            ("server", &pki.server),
            ("client", &pki.client),
        ] {
            std::fs::write(dir.join(format!("{name}.pem")), &pem.cert).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), &pem.key).unwrap();
        }
        pki
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_owned()
    }

    /// Server TLS requiring a client certificate signed by the CA.
    fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.server.cert, &self.server.key))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca.cert))
    }
}

#[tokio::test]
async fn mutual_tls_with_ca_cert_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let fake = Fake::start_with(Options {
        tls: Some(pki.server_config()),
        ..Options::default()
    })
    .await;
    let url = format!("https://localhost:{}", fake.addr.port());
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );

    let out = run(&[
        "--controlplane",
        &url,
        "--ca",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "nodes",
        "--json",
    ])
    .await;
    out.assert_ok();
    assert_eq!(out.json()["nodes"].as_array().unwrap().len(), 3);

    // The environment twins work the same.
    let out = crate::run_env(
        &["--controlplane", &url, "moves"],
        &[
            ("DTABLE_CA", ca.as_str()),
            ("DTABLE_CERT", cert.as_str()),
            ("DTABLE_KEY", key.as_str()),
        ],
    )
    .await;
    out.assert_ok();
    assert!(out.stdout.starts_with("1 move in flight"), "{}", out.stdout);

    // Without a client certificate the server refuses the connection.
    let out = run(&["--controlplane", &url, "--ca", &ca, "nodes"]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains(&url), "{}", out.stderr);
    // (With TLS 1.3 the refusal reaches the client as an alert or as a closed connection,
    // depending on timing; either way this instance did not answer.)
    assert!(
        out.stderr
            .contains("UNAVAILABLE: no control plane answered"),
        "{}",
        out.stderr
    );

    // A CA that did not sign the server's certificate is not trusted.
    let other = tempfile::tempdir().unwrap();
    let stranger = Pki::new(other.path());
    let out = run(&[
        "--controlplane",
        &url,
        "--ca",
        &stranger.path("ca.pem"),
        "--cert",
        &cert,
        "--key",
        &key,
        "nodes",
    ])
    .await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("UNAVAILABLE"), "{}", out.stderr);
    assert!(
        out.stderr.contains("invalid peer certificate"),
        "{}",
        out.stderr
    );
    assert_eq!(fake.calls_of("ListNodes").len(), 1);
}

#[tokio::test]
async fn a_cert_without_its_key_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let out = run(&[
        "--controlplane",
        "https://localhost:5580",
        "--ca",
        &pki.path("ca.pem"),
        "--cert",
        &pki.path("client.pem"),
        "nodes",
    ])
    .await;
    assert_eq!(out.code, Some(64), "{out:#?}");
    assert!(out.stderr.contains("--key"), "{}", out.stderr);
    // A key that does not parse is named too.
    std::fs::write(
        dir.path().join("bad.key"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n",
    )
    .unwrap();
    let out = run(&[
        "--controlplane",
        "https://localhost:5580",
        "--ca",
        &pki.path("ca.pem"),
        "--cert",
        &pki.path("client.pem"),
        "--key",
        &pki.path("bad.key"),
        "nodes",
    ])
    .await;
    assert_eq!(out.code, Some(64), "{out:#?}");
    assert!(out.stderr.contains("--cert/--key"), "{}", out.stderr);
}
