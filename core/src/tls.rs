//! TLS for our HTTP and gRPC listeners, optionally mutual (clients must show a certificate from
//! a CA we name), and the PEM loading it shares with the etcd client. Everything uses rustls
//! with the ring provider; nothing here pulls in a second crypto provider.
//!
//! A binary flattens [`TlsArgs`] into its arguments, calls [`TlsArgs::load`] once at start-up
//! (a bad file exits 64 naming the flag), then hands the [`ServerTls`] to [`serve_http`] for an
//! axum router, or to tonic through [`ServerTls::tonic_config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::ConfigError;

/// A client must finish its TLS handshake within this time, or its connection is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS flags of a binary's listeners, flattened into its arguments. With none of them set
/// the listeners speak plain HTTP and gRPC.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate chain (leaf first) this process presents on its HTTP and gRPC
    /// listeners. With --tls-key set, those listeners accept TLS only (https, grpcs).
    #[arg(long, env = "DTABLE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "DTABLE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) for mutual TLS: every client must present a certificate signed
    /// by one of them, or its handshake is refused. Needs --tls-cert and --tls-key.
    #[arg(long, env = "DTABLE_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// Reads and checks the certificate, key and client CA: `None` when no TLS flag is set.
    /// Every error names the flag whose file is missing, unreadable, not PEM, or does not
    /// match.
    ///
    /// It also makes ring the process-wide default rustls provider (if none is installed
    /// yet), so that tonic's TLS, which asks for the default, uses it too.
    pub fn load(&self) -> Result<Option<ServerTls>, ConfigError> {
        let (cert_path, key_path) = match (&self.tls_cert, &self.tls_key) {
            (None, None) if self.tls_client_ca.is_none() => return Ok(None),
            (None, None) => {
                return Err(ConfigError::field(
                    "--tls-cert",
                    "required with --tls-client-ca: mutual TLS needs a server certificate and key",
                ));
            }
            (Some(_), None) => {
                return Err(ConfigError::field("--tls-key", "required with --tls-cert"));
            }
            (None, Some(_)) => {
                return Err(ConfigError::field("--tls-cert", "required with --tls-key"));
            }
            (Some(c), Some(k)) => (c, k),
        };
        let identity = read_identity(("--tls-cert", cert_path), ("--tls-key", key_path))?;
        let client_ca = match &self.tls_client_ca {
            Some(path) => {
                let pem = read_pem("--tls-client-ca", path)?;
                let certs = parse_certs("--tls-client-ca", path, &pem)?;
                Some((pem, certs, path.as_path()))
            }
            None => None,
        };
        let config = server_config(
            &identity,
            client_ca
                .as_ref()
                .map(|(_, certs, path)| (certs.clone(), *path)),
        )?;
        // Err means one is installed already; with only ring compiled in, that is ring too.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Some(ServerTls {
            config: Arc::new(config),
            cert_pem: Arc::from(identity.cert_pem),
            key_pem: Arc::from(identity.key_pem),
            client_ca_pem: client_ca.map(|(pem, _, _)| Arc::from(pem)),
        }))
    }
}

/// A checked server certificate and key, and the client CA when TLS is mutual: everything a
/// listener needs to speak TLS. Cheap to clone. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct ServerTls {
    /// The rustls configuration built from the PEM below (ring, ALPN h2 and http/1.1).
    config: Arc<rustls::ServerConfig>,
    /// The certificate chain as read, for tonic.
    cert_pem: Arc<[u8]>,
    /// The private key as read, for tonic.
    key_pem: Arc<[u8]>,
    /// The client CA as read, when client certificates are required.
    client_ca_pem: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mutual", &self.requires_client_cert())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// The rustls server configuration: ring provider, TLS 1.2 and 1.3, ALPN `h2` then
    /// `http/1.1`, and a client-certificate verifier when TLS is mutual.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.config)
    }

    /// An acceptor for a hand-written accept loop (a listener that is not an axum router).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server_config())
    }

    /// Whether clients must present a certificate signed by `--tls-client-ca`.
    pub fn requires_client_cert(&self) -> bool {
        self.client_ca_pem.is_some()
    }

    /// The same certificate, key and client CA for a tonic server:
    /// `Server::builder().tls_config(tls.tonic_config())?`. tonic builds its own rustls
    /// configuration with the process-default provider, which [`TlsArgs::load`] made ring.
    pub fn tonic_config(&self) -> tonic::transport::ServerTlsConfig {
        let identity = tonic::transport::Identity::from_pem(&*self.cert_pem, &*self.key_pem);
        let config = tonic::transport::ServerTlsConfig::new()
            .identity(identity)
            .timeout(HANDSHAKE_TIMEOUT);
        match &self.client_ca_pem {
            Some(ca) => config
                .client_ca_root(tonic::transport::Certificate::from_pem(&**ca))
                .client_auth_optional(false),
            None => config,
        }
    }
}

/// The ring crypto provider, the only one this project uses.
pub(crate) fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM file named by `flag`; a missing or unreadable file is an error naming the flag.
pub(crate) fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| ConfigError::field(flag, format!("cannot read {}: {e}", path.display())))
}

/// The certificates in `pem`, at least one, all of them parsable.
pub(crate) fn parse_certs(
    flag: &str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ConfigError::field(
                flag,
                format!("{}: malformed PEM certificate: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(ConfigError::field(
            flag,
            format!(
                "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) found",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

/// The private key in `pem` (PKCS#8, PKCS#1 or SEC1). The error never quotes the file.
pub(crate) fn parse_key(
    flag: &str,
    path: &Path,
    pem: &[u8],
) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        let why = match e {
            rustls_pki_types::pem::Error::NoItemsFound => "no PEM private key found".to_owned(),
            other => format!("malformed PEM private key: {other}"),
        };
        ConfigError::field(flag, format!("{}: {why}", path.display()))
    })
}

/// A certificate chain and its private key, read from PEM files and known to fit together.
pub(crate) struct PemIdentity {
    /// The certificate file as read.
    pub(crate) cert_pem: Vec<u8>,
    /// The key file as read.
    pub(crate) key_pem: Vec<u8>,
    /// The parsed chain, leaf first.
    certs: Vec<CertificateDer<'static>>,
    /// The parsed key.
    key: PrivateKeyDer<'static>,
}

/// Reads a certificate chain and its key, each given as (flag, path), and checks that the key
/// belongs to the leaf certificate; every error names the flag at fault.
pub(crate) fn read_identity(
    (cert_flag, cert_path): (&str, &Path),
    (key_flag, key_path): (&str, &Path),
) -> Result<PemIdentity, ConfigError> {
    let cert_pem = read_pem(cert_flag, cert_path)?;
    let certs = parse_certs(cert_flag, cert_path, &cert_pem)?;
    let key_pem = read_pem(key_flag, key_path)?;
    let key = parse_key(key_flag, key_path, &key_pem)?;
    rustls::sign::CertifiedKey::from_der(certs.clone(), key.clone_key(), &ring_provider())
        .map_err(|e| {
            ConfigError::field(
                key_flag,
                format!(
                    "{} does not fit the certificate in {} ({cert_flag}): {e}",
                    key_path.display(),
                    cert_path.display()
                ),
            )
        })?;
    Ok(PemIdentity {
        cert_pem,
        key_pem,
        certs,
        key,
    })
}

/// Builds the rustls server configuration; `client_ca` is the CA certificates and their path.
fn server_config(
    identity: &PemIdentity,
    client_ca: Option<(Vec<CertificateDer<'static>>, &Path)>,
) -> Result<rustls::ServerConfig, ConfigError> {
    let provider = ring_provider();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::field("--tls-cert", format!("TLS set-up failed: {e}")))?;
    let builder = match client_ca {
        Some((cas, path)) => {
            let mut roots = RootCertStore::empty();
            for ca in cas {
                roots.add(ca).map_err(|e| {
                    ConfigError::field(
                        "--tls-client-ca",
                        format!("{}: not a usable CA certificate: {e}", path.display()),
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| {
                    ConfigError::field("--tls-client-ca", format!("{}: {e}", path.display()))
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(identity.certs.clone(), identity.key.clone_key())
        .map_err(|e| ConfigError::field("--tls-key", format!("unusable key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves `router` on `listener` until `shutdown`, then waits for open connections to finish,
/// as `axum::serve` with graceful shutdown does. With `tls` every connection must complete a
/// TLS handshake (and show a valid client certificate when TLS is mutual) within
/// [`HANDSHAKE_TIMEOUT`]; HTTP/1.1 (with upgrades, e.g. websockets) and HTTP/2 are both
/// served. Handlers can extract `axum::extract::ConnectInfo<SocketAddr>` either way.
///
/// Accept errors (e.g. out of file descriptors) are logged and retried, so this returns only
/// at shutdown; the `Result` carries an I/O error of the plain listener.
pub async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        let app = router.into_make_service_with_connect_info::<SocketAddr>();
        return axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    };
    if let Ok(addr) = listener.local_addr() {
        let client_certificates = if tls.requires_client_cert() {
            "required"
        } else {
            "not asked for"
        };
        tracing::info!(%addr, client_certificates, "serving HTTPS");
    }
    let acceptor = tls.acceptor();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A timer turns on hyper's default header-read timeout for HTTP/1.
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // Taken now, so that shutdown also waits for connections still in their handshake.
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let builder = Arc::clone(&builder);
        let router = router.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                done = handshake => match done {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
            };
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    // A Router is always ready, so it may be called without polling readiness.
                    let mut router = router.clone();
                    async move { tower_service::Service::call(&mut router, req).await }
                },
            );
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "HTTPS connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cert: Option<&str>, key: Option<&str>, ca: Option<&str>) -> TlsArgs {
        TlsArgs {
            tls_cert: cert.map(PathBuf::from),
            tls_key: key.map(PathBuf::from),
            tls_client_ca: ca.map(PathBuf::from),
        }
    }

    fn field_of(err: ConfigError) -> String {
        match err {
            ConfigError::Field { field, .. } => field,
            other => panic!("expected a field error, got {other}"),
        }
    }

    #[test]
    fn no_flags_means_plain() {
        assert!(TlsArgs::default().load().unwrap().is_none());
    }

    #[test]
    fn a_missing_half_names_the_flag_to_set() {
        let err = args(Some("/c.pem"), None, None).load().unwrap_err();
        assert!(err.to_string().starts_with("--tls-key: "), "{err}");
        assert_eq!(field_of(err), "--tls-key");
        let err = args(None, Some("/k.pem"), None).load().unwrap_err();
        assert_eq!(field_of(err), "--tls-cert");
        let err = args(None, None, Some("/ca.pem")).load().unwrap_err();
        assert_eq!(field_of(err), "--tls-cert");
    }

    #[test]
    fn an_unreadable_file_names_its_flag() {
        let err = args(Some("/nonexistent/c.pem"), Some("/nonexistent/k.pem"), None)
            .load()
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/c.pem"), "{msg}");
        assert_eq!(field_of(err), "--tls-cert");
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        let err = parse_certs("--tls-cert", Path::new("x.pem"), b"hello").unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let err = parse_key("--tls-key", Path::new("k.pem"), b"hello").unwrap_err();
        assert!(err.to_string().contains("no PEM private key"), "{err}");
    }
}
