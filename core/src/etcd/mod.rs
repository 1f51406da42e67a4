//! The etcd layer shared by every binary: connecting, keeping a lease alive on the contract's
//! timing, and watching the cluster into an immutable [`ClusterView`](crate::ClusterView).

mod lease;
mod watch;

use std::time::Duration;

pub use etcd_client;
pub use lease::{LeaseError, LeaseKeeper, LeaseState, lease_lost};
pub use watch::{ClusterWatch, ViewRx};

/// How to reach etcd. Its `Debug` hides the password and the client key.
#[derive(Clone, Default)]
pub struct EtcdOptions {
    /// `host:port` endpoints (or URLs with a scheme); any one that answers will do.
    pub endpoints: Vec<String>,
    /// etcd user for password auth.
    pub user: Option<String>,
    /// Password of `user`.
    pub password: Option<String>,
    /// TLS to etcd; with it, `host:port` endpoints are reached over https.
    pub tls: Option<EtcdTls>,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

/// TLS to etcd, as PEM: the CA that signed etcd's server certificate, and the client
/// certificate and key for an etcd that demands one (`--client-cert-auth`).
/// [`EtcdArgs::resolve`](crate::cli::EtcdArgs::resolve) fills it from `--etcd-ca`,
/// `--etcd-cert` and `--etcd-key`, checked. Its `Debug` hides the key.
#[derive(Clone)]
pub struct EtcdTls {
    /// PEM CA certificate(s) trusted for etcd's server certificate.
    pub ca_pem: Vec<u8>,
    /// PEM client certificate chain and PEM private key, when etcd checks client certificates.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl EtcdTls {
    /// The etcd client's TLS options (tonic's, with the ring provider).
    fn options(&self) -> etcd_client::TlsOptions {
        let options = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(&self.ca_pem));
        match &self.identity {
            Some((cert, key)) => options.identity(etcd_client::Identity::from_pem(cert, key)),
            None => options,
        }
    }
}

/// Why etcd could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint given.
    #[error("no etcd endpoint configured (--etcd host:port,...)")]
    NoEndpoints,
    /// The client failed to connect.
    #[error("cannot connect to etcd at {endpoints}: {source}")]
    Connect {
        /// The endpoints tried.
        endpoints: String,
        /// Why.
        source: etcd_client::Error,
    },
    /// etcd refused the user name or password.
    #[error(
        "etcd at {endpoints} refused user {user:?}: wrong --etcd-user or --etcd-password ({source})"
    )]
    Auth {
        /// The endpoints tried.
        endpoints: String,
        /// The user that was refused.
        user: String,
        /// etcd's answer.
        source: etcd_client::Error,
    },
}

/// Time allowed for a single unary etcd call before it counts as failed.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to etcd. Every request carries require-leader, so a member cut off from its
/// cluster fails our calls and watches instead of serving stale data.
///
/// With a user, the password is checked here (etcd hands out a token), so a wrong one fails
/// at once with [`EtcdError::Auth`]. The connection itself, TLS included, is made lazily: a
/// TLS failure (an untrusted server, a refused client certificate) shows on the first call.
pub async fn connect(opts: &EtcdOptions) -> Result<etcd_client::Client, EtcdError> {
    if opts.endpoints.is_empty() {
        return Err(EtcdError::NoEndpoints);
    }
    let mut co = etcd_client::ConnectOptions::new()
        .with_require_leader(true)
        .with_connect_timeout(Duration::from_secs(3))
        // etcd refuses pings more often than its --grpc-keepalive-min-time (5 s by default)
        // with GOAWAY "too_many_pings", which would break every watch.
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true);
    if let (Some(u), Some(p)) = (&opts.user, &opts.password) {
        co = co
            .with_user(u.clone(), p.clone())
            .with_auto_token_refresh(true);
    }
    if let Some(tls) = &opts.tls {
        co = co.with_tls(tls.options());
    }
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    let endpoints: Vec<String> = opts
        .endpoints
        .iter()
        .map(|e| {
            if e.contains("://") {
                e.clone()
            } else {
                format!("{scheme}://{e}")
            }
        })
        .collect();
    etcd_client::Client::connect(&endpoints, Some(co))
        .await
        .map_err(|source| {
            let endpoints = endpoints.join(",");
            match &opts.user {
                Some(user) if is_auth_failure(&source) => EtcdError::Auth {
                    endpoints,
                    user: user.clone(),
                    source,
                },
                _ => EtcdError::Connect { endpoints, source },
            }
        })
}

/// Whether etcd refused the user name or password.
fn is_auth_failure(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            status.message().contains("authentication failed")
        }
        _ => false,
    }
}

/// Exponential back-off between retries of a failing etcd operation: 200 ms doubling to 5 s.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::MIN }
    }
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(5);

    /// The next wait, for logs.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Back to the shortest wait, after a success.
    pub fn reset(&mut self) {
        self.next = Self::MIN;
    }

    /// Waits the current delay (or until `shutdown`), then doubles it.
    pub async fn wait(&mut self, shutdown: &tokio_util::sync::CancellationToken) {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(self.next) => {}
        }
        self.next = (self.next * 2).min(Self::MAX);
    }
}
