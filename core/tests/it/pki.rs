//! A throw-away PKI for the TLS tests, made with rcgen: a CA, a server certificate for
//! 127.0.0.1 and localhost, a client certificate from that CA, and a client certificate from
//! an unrelated CA. Written as PEM files to a scratch directory removed on drop.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

/// A certificate and its key, as PEM files.
pub struct Pair {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key (PKCS#8).
    pub key: PathBuf,
}

/// The test PKI's files.
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
    /// Client certificate signed by `other_ca`.
    pub stranger: Pair,
    /// Holds the files.
    dir: TempDir,
}

impl Pki {
    /// Generates every certificate and writes the files.
    pub fn generate() -> Pki {
        let dir = dtable_testkit::scratch_dir("dtable-pki-");
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
            std::fs::write(&path, pem).unwrap();
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
}

/// A self-signed CA certificate and its key.
fn make_ca(name: &str) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.distinguished_name.push(DnType::CommonName, name);
    (params.self_signed(&key).unwrap(), key)
}

/// A leaf certificate for `names` signed by `issuer`.
fn leaf(
    names: Vec<String>,
    common_name: &str,
    usages: Vec<ExtendedKeyUsagePurpose>,
    (issuer, issuer_key): (&Certificate, &KeyPair),
) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages;
    (params.signed_by(&key, issuer, issuer_key).unwrap(), key)
}
