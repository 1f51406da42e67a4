//! Bad security configuration is refused at start-up with one line naming the flag at fault:
//! a half-given certificate/key pair, an unreadable file, a file that is not PEM, a key that
//! does not fit its certificate, an endpoint whose scheme contradicts the TLS flags.

use std::path::PathBuf;

use dtable_core::cli::EtcdArgs;
use dtable_core::config::ConfigError;
use dtable_core::tls::TlsArgs;
use dtable_testkit::pki::Pki;

/// The flag a configuration error names, and its one-line message.
fn flag_of(err: ConfigError) -> (String, String) {
    let line = err.to_string();
    assert!(!line.contains('\n'), "not one line: {line}");
    match err {
        ConfigError::Field { field, .. } => (field, line),
        other => panic!("expected an error naming a flag, got {other}"),
    }
}

fn tls_args(cert: Option<&PathBuf>, key: Option<&PathBuf>, ca: Option<&PathBuf>) -> TlsArgs {
    TlsArgs {
        tls_cert: cert.cloned(),
        tls_key: key.cloned(),
        tls_client_ca: ca.cloned(),
    }
}

fn etcd_args(
    endpoint: &str,
    ca: Option<&PathBuf>,
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
) -> EtcdArgs {
    EtcdArgs {
        etcd: Some(endpoint.to_owned()),
        etcd_prefix: String::new(),
        etcd_user: None,
        etcd_password: None,
        etcd_ca: ca.cloned(),
        etcd_cert: cert.cloned(),
        etcd_key: key.cloned(),
        seatable_config: None,
    }
}

fn etcd_error(args: EtcdArgs) -> (String, String) {
    flag_of(args.resolve(&Default::default()).unwrap_err())
}

#[test]
fn listener_tls_errors_name_the_flag() {
    let pki = Pki::generate();
    let missing = pki.dir().join("missing.pem");
    let garbage = pki.dir().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();

    let (flag, line) = flag_of(
        tls_args(Some(&pki.server.cert), None, None)
            .load()
            .unwrap_err(),
    );
    assert_eq!(flag, "--tls-key", "{line}");

    let (flag, line) = flag_of(
        tls_args(Some(&missing), Some(&pki.server.key), None)
            .load()
            .unwrap_err(),
    );
    assert_eq!(flag, "--tls-cert", "{line}");
    assert!(
        line.contains("cannot read") && line.contains("missing.pem"),
        "{line}"
    );

    let (flag, line) = flag_of(
        tls_args(Some(&pki.server.cert), Some(&missing), None)
            .load()
            .unwrap_err(),
    );
    assert_eq!(flag, "--tls-key", "{line}");

    let (flag, line) = flag_of(
        tls_args(Some(&garbage), Some(&pki.server.key), None)
            .load()
            .unwrap_err(),
    );
    assert_eq!(flag, "--tls-cert", "{line}");
    assert!(line.contains("no PEM certificate"), "{line}");

    // The client's key does not fit the server's certificate.
    let (flag, line) = flag_of(
        tls_args(Some(&pki.server.cert), Some(&pki.client.key), None)
            .load()
            .unwrap_err(),
    );
    assert_eq!(flag, "--tls-key", "{line}");
    assert!(line.contains("does not fit"), "{line}");

    let (flag, line) = flag_of(
        tls_args(
            Some(&pki.server.cert),
            Some(&pki.server.key),
            Some(&missing),
        )
        .load()
        .unwrap_err(),
    );
    assert_eq!(flag, "--tls-client-ca", "{line}");

    let (flag, line) = flag_of(
        tls_args(
            Some(&pki.server.cert),
            Some(&pki.server.key),
            Some(&garbage),
        )
        .load()
        .unwrap_err(),
    );
    assert_eq!(flag, "--tls-client-ca", "{line}");

    // A key file's content never shows in an error.
    let key_text = std::fs::read_to_string(&pki.client.key).unwrap();
    let key_body = key_text.lines().nth(1).unwrap();
    let line = tls_args(Some(&pki.server.cert), Some(&pki.client.key), None)
        .load()
        .unwrap_err()
        .to_string();
    assert!(!line.contains(key_body), "{line}");
}

#[test]
fn etcd_tls_errors_name_the_flag() {
    let pki = Pki::generate();
    let missing = pki.dir().join("missing.pem");
    let garbage = pki.dir().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let ep = "127.0.0.1:2379";

    let (flag, line) = etcd_error(etcd_args(ep, Some(&pki.ca), Some(&pki.client.cert), None));
    assert_eq!(flag, "--etcd-key", "{line}");
    let (flag, line) = etcd_error(etcd_args(ep, Some(&pki.ca), None, Some(&pki.client.key)));
    assert_eq!(flag, "--etcd-cert", "{line}");
    let (flag, line) = etcd_error(etcd_args(
        ep,
        None,
        Some(&pki.client.cert),
        Some(&pki.client.key),
    ));
    assert_eq!(flag, "--etcd-ca", "{line}");

    let (flag, line) = etcd_error(etcd_args(ep, Some(&missing), None, None));
    assert_eq!(flag, "--etcd-ca", "{line}");
    assert!(line.contains("cannot read"), "{line}");
    let (flag, line) = etcd_error(etcd_args(ep, Some(&garbage), None, None));
    assert_eq!(flag, "--etcd-ca", "{line}");
    let (flag, line) = etcd_error(etcd_args(
        ep,
        Some(&pki.ca),
        Some(&pki.client.cert),
        Some(&missing),
    ));
    assert_eq!(flag, "--etcd-key", "{line}");
    let (flag, line) = etcd_error(etcd_args(
        ep,
        Some(&pki.ca),
        Some(&pki.client.cert),
        Some(&pki.server.key),
    ));
    assert_eq!(flag, "--etcd-key", "{line}");
    assert!(line.contains("does not fit"), "{line}");

    // Schemes that contradict the TLS flags.
    let (flag, line) = etcd_error(etcd_args(
        "http://127.0.0.1:2379",
        Some(&pki.ca),
        None,
        None,
    ));
    assert_eq!(flag, "--etcd", "{line}");
    let (flag, line) = etcd_error(etcd_args("https://127.0.0.1:2379", None, None, None));
    assert_eq!(flag, "--etcd", "{line}");
    assert!(line.contains("--etcd-ca"), "{line}");

    // And what is right resolves.
    let (opts, _) = etcd_args(
        "https://127.0.0.1:2379,127.0.0.1:2380",
        Some(&pki.ca),
        Some(&pki.client.cert),
        Some(&pki.client.key),
    )
    .resolve(&Default::default())
    .unwrap();
    let tls = opts.tls.expect("TLS is configured");
    assert!(tls.identity.is_some());
    assert!(!format!("{tls:?}").contains("PRIVATE KEY"));
}

#[test]
fn password_without_user_is_refused() {
    let mut args = etcd_args("127.0.0.1:2379", None, None, None);
    args.etcd_password = Some("pw-secret".to_owned());
    let (flag, line) = etcd_error(args.clone());
    assert_eq!(flag, "--etcd-user", "{line}");
    assert!(!format!("{args:?}").contains("pw-secret"), "{args:?}");
}
