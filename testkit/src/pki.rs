//! A throw-away PKI for TLS tests, made with rcgen: a CA, a server certificate for 127.0.0.1
//! and localhost, a client certificate from that CA, and a client certificate from an
//! unrelated CA, written as PEM files to a scratch directory removed on drop. Plus the clients
//! that use them: an HTTPS client ([`https_client`]) and a gRPC client TLS configuration
//! ([`grpc_tls`]), both with the ring provider only.
//!
//! ```no_run
//! # async fn demo() {
//! use dtable_testkit::pki::{Pki, https_client};
//! let pki = Pki::generate();
//! // Start a server with --tls-cert pki.server.cert --tls-key pki.server.key
//! // (and --tls-client-ca pki.ca for mutual TLS), then:
//! let client = https_client(&pki.ca, Some(&pki.client));
//! let answer = client.get("https://127.0.0.1:5581/healthz").send().await;
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

use crate::scratch::scratch_dir;

/// The HTTP client crate of [`https_client`], so that a test crate without a reqwest
/// dependency of its own can name its types.
pub use reqwest;

/// How long a request of an [`https_client`] may take, connection and TLS handshake included.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key (PKCS#8).
    pub key: PathBuf,
}

impl Pair {
    /// The certificate file as text.
    ///
    /// # Panics
    /// If the file cannot be read.
    pub fn cert_pem(&self) -> String {
        read(&self.cert)
    }

    /// The key file as text.
    ///
    /// # Panics
    /// If the file cannot be read.
    pub fn key_pem(&self) -> String {
        read(&self.key)
    }

    /// The certificate's path as a flag value (`--tls-cert`, `--etcd-cert`, ...).
    pub fn cert_arg(&self) -> &str {
        path_arg(&self.cert)
    }

    /// The key's path as a flag value (`--tls-key`, `--etcd-key`, ...).
    pub fn key_arg(&self) -> &str {
        path_arg(&self.key)
    }
}

/// The test PKI's files.
#[derive(Debug)]
pub struct Pki {
    /// The trusted CA's certificate.
    pub ca: PathBuf,
    /// A second, untrusted CA's certificate.
    pub other_ca: PathBuf,
    /// Server certificate for 127.0.0.1 and localhost, signed by `ca`; with the clientAuth
    /// usage too, because etcd's gateway presents it as a client certificate.
    pub server: Pair,
    /// Client certificate signed by `ca`.
    pub client: Pair,
    /// Client certificate signed by `other_ca`: well-formed, but from a CA nobody trusts.
    pub stranger: Pair,
    /// Holds the files.
    dir: TempDir,
}

impl Pki {
    /// Generates every certificate and writes the files.
    ///
    /// # Panics
    /// If a key cannot be generated or a file cannot be written.
    pub fn generate() -> Pki {
        let dir = scratch_dir("dtable-pki-");
        let (ca, ca_key) = make_ca("dtable test CA");
        let (other_ca, other_ca_key) = make_ca("some other CA");
        let server = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            "server",
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            (&ca, &ca_key),
        );
        let client = leaf(
            vec![],
            "client",
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            (&ca, &ca_key),
        );
        let stranger = leaf(
            vec![],
            "stranger",
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            (&other_ca, &other_ca_key),
        );
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            path
        };
        Pki {
            ca: write("ca.pem", ca.pem()),
            other_ca: write("other-ca.pem", other_ca.pem()),
            server: Pair {
                cert: write("server.pem", server.0.pem()),
                key: write("server-key.pem", server.1.serialize_pem()),
            },
            client: Pair {
                cert: write("client.pem", client.0.pem()),
                key: write("client-key.pem", client.1.serialize_pem()),
            },
            stranger: Pair {
                cert: write("stranger.pem", stranger.0.pem()),
                key: write("stranger-key.pem", stranger.1.serialize_pem()),
            },
            dir,
        }
    }

    /// The directory of the files, for more files a test writes.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The flags that make a binary serve TLS with the server certificate: `--tls-cert`,
    /// `--tls-key`, and with `mutual` also `--tls-client-ca` naming the trusted CA.
    pub fn server_args(&self, mutual: bool) -> Vec<String> {
        let mut args = vec![
            "--tls-cert".to_owned(),
            self.server.cert_arg().to_owned(),
            "--tls-key".to_owned(),
            self.server.key_arg().to_owned(),
        ];
        if mutual {
            args.push("--tls-client-ca".to_owned());
            args.push(path_arg(&self.ca).to_owned());
        }
        args
    }
}

/// An HTTPS client (rustls with ring, HTTP/1.1 and HTTP/2) that trusts only the CA
/// certificate(s) in `ca` and presents `identity` when a server asks for a client certificate.
/// Every request gives up after [`CLIENT_TIMEOUT`].
///
/// # Panics
/// If a file cannot be read or is not PEM.
pub fn https_client(ca: &Path, identity: Option<&Pair>) -> reqwest::Client {
    let ca_cert = reqwest::Certificate::from_pem(read(ca).as_bytes())
        .unwrap_or_else(|e| panic!("{} is not a PEM certificate: {e}", ca.display()));
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca_cert)
        .timeout(CLIENT_TIMEOUT);
    if let Some(pair) = identity {
        let pem = format!("{}\n{}", pair.cert_pem(), pair.key_pem());
        let identity = reqwest::Identity::from_pem(pem.as_bytes())
            .unwrap_or_else(|e| panic!("{} is not a client identity: {e}", pair.cert.display()));
        builder = builder.identity(identity);
    }
    builder
        .build()
        .unwrap_or_else(|e| panic!("cannot build the HTTPS client: {e}"))
}

/// A tonic client TLS configuration (ring) that trusts only the CA certificate(s) in `ca` and
/// presents `identity` when given: `Endpoint::from_shared(url)?.tls_config(grpc_tls(..))?`.
///
/// # Panics
/// If a file cannot be read.
pub fn grpc_tls(ca: &Path, identity: Option<&Pair>) -> tonic::transport::ClientTlsConfig {
    let config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)));
    match identity {
        Some(pair) => config.identity(tonic::transport::Identity::from_pem(
            pair.cert_pem(),
            pair.key_pem(),
        )),
        None => config,
    }
}

/// A self-signed CA certificate and its key.
fn make_ca(name: &str) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().expect("generate a CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("self-sign the CA");
    (cert, key)
}

/// A leaf certificate for `names` signed by `issuer`.
fn leaf(
    names: Vec<String>,
    common_name: &str,
    usages: Vec<ExtendedKeyUsagePurpose>,
    (issuer, issuer_key): (&Certificate, &KeyPair),
) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().expect("generate a leaf key");
    let mut params = CertificateParams::new(names).expect("leaf parameters");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages;
    let cert = params
        .signed_by(&key, issuer, issuer_key)
        .expect("sign the leaf");
    (cert, key)
}

/// The file at `path` as text.
fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `path` as a flag value; scratch paths are always UTF-8.
fn path_arg(path: &Path) -> &str {
    path.to_str().expect("scratch paths are UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_written_as_pem_and_removed_on_drop() {
        let pki = Pki::generate();
        for (path, marker) in [
            (&pki.ca, "BEGIN CERTIFICATE"),
            (&pki.other_ca, "BEGIN CERTIFICATE"),
            (&pki.server.cert, "BEGIN CERTIFICATE"),
            (&pki.server.key, "BEGIN PRIVATE KEY"),
            (&pki.client.cert, "BEGIN CERTIFICATE"),
            (&pki.client.key, "BEGIN PRIVATE KEY"),
            (&pki.stranger.cert, "BEGIN CERTIFICATE"),
            (&pki.stranger.key, "BEGIN PRIVATE KEY"),
        ] {
            assert!(read(path).contains(marker), "{}", path.display());
        }
        assert_ne!(read(&pki.ca), read(&pki.other_ca));
        assert_eq!(
            pki.server_args(true),
            [
                "--tls-cert",
                pki.server.cert_arg(),
                "--tls-key",
                pki.server.key_arg(),
                "--tls-client-ca",
                pki.ca.to_str().unwrap(),
            ]
        );
        let dir = pki.dir().to_owned();
        assert!(dir.is_dir());
        drop(pki);
        assert!(
            !dir.exists() || crate::scratch::keep_requested(),
            "dropping the PKI removes its files"
        );
    }
}
