//! Command-line plumbing every binary shares: the etcd flags, SeaTable's config file, exit
//! status 64 for bad configuration, and log set-up.

use std::path::PathBuf;

use clap::Parser;

use crate::config::{ClusterConfig, ConfigError, read_seatable_config, split_hosts};
use crate::etcd::{EtcdOptions, EtcdTls};
use crate::keys::KeyLayout;
use crate::tls::{parse_certs, read_identity, read_pem};

/// Exit status for invalid configuration (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

/// The etcd flags, flattened into each binary's arguments. Its `Debug` hides the password.
#[derive(Clone, clap::Args)]
pub struct EtcdArgs {
    /// etcd endpoints, host:port, comma-separated.
    #[arg(long, env = "DTABLE_ETCD")]
    pub etcd: Option<String>,
    /// Namespace put in front of every key; keep it empty where dtable-web reads the keys.
    #[arg(long, env = "DTABLE_ETCD_PREFIX", default_value = "")]
    pub etcd_prefix: String,
    /// etcd user, for etcd's password auth (`etcdctl auth enable`). Needs --etcd-password.
    #[arg(long, env = "DTABLE_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// Password of --etcd-user. Prefer the environment variable to the flag, which other
    /// local users can read in the process list; it is never logged.
    #[arg(long, env = "DTABLE_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    /// PEM CA certificate(s) that signed etcd's server certificate. Setting it turns on TLS
    /// to etcd: endpoints given as host:port are reached over https.
    #[arg(long, env = "DTABLE_ETCD_CA", value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// PEM client certificate presented to etcd, for an etcd run with --client-cert-auth.
    /// Needs --etcd-key and --etcd-ca.
    #[arg(long, env = "DTABLE_ETCD_CERT", value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --etcd-cert.
    #[arg(long, env = "DTABLE_ETCD_KEY", value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
    /// SeaTable's dtable_server_config.json; its cluster_config block fills unset flags.
    #[arg(long, env = "DTABLE_SEATABLE_CONFIG")]
    pub seatable_config: Option<PathBuf>,
}

impl std::fmt::Debug for EtcdArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdArgs")
            .field("etcd", &self.etcd)
            .field("etcd_prefix", &self.etcd_prefix)
            .field("etcd_user", &self.etcd_user)
            .field(
                "etcd_password",
                &self.etcd_password.as_ref().map(|_| "<redacted>"),
            )
            .field("etcd_ca", &self.etcd_ca)
            .field("etcd_cert", &self.etcd_cert)
            .field("etcd_key", &self.etcd_key)
            .field("seatable_config", &self.seatable_config)
            .finish()
    }
}

impl EtcdArgs {
    /// The `cluster_config` block of `--seatable-config`, or an empty one.
    pub fn seatable(&self) -> Result<ClusterConfig, ConfigError> {
        match &self.seatable_config {
            Some(path) => read_seatable_config(path),
            None => Ok(ClusterConfig::default()),
        }
    }

    /// The etcd connection and key layout, flags first, then the SeaTable file. Reads and
    /// checks the TLS files, so a missing or broken one is refused here, naming its flag.
    pub fn resolve(&self, file: &ClusterConfig) -> Result<(EtcdOptions, KeyLayout), ConfigError> {
        let endpoints = match &self.etcd {
            Some(list) => split_hosts(list),
            None => file.etcd_host_list.clone().unwrap_or_default(),
        };
        if endpoints.is_empty() {
            return Err(ConfigError::field(
                "--etcd",
                "missing: set --etcd host:port or cluster_config.etcd_host_list in --seatable-config",
            ));
        }
        if let Some(bad) = endpoints.iter().find(|e| !e.contains(':')) {
            return Err(ConfigError::field(
                "--etcd",
                format!("{bad:?} is not host:port"),
            ));
        }
        let (user, password) = match (&self.etcd_user, &self.etcd_password) {
            (Some(u), Some(p)) => (Some(u.clone()), Some(p.clone())),
            (None, None) => (None, None),
            _ => {
                return Err(ConfigError::field(
                    "--etcd-user",
                    "set both --etcd-user and --etcd-password, or neither",
                ));
            }
        };
        let tls = self.etcd_tls()?;
        if let Some(bad) = endpoints.iter().find(|e| {
            let https = e.starts_with("https://");
            (tls.is_some() && !https && e.contains("://")) || (tls.is_none() && https)
        }) {
            let problem = if tls.is_some() {
                format!(
                    "{bad:?} is plain http but --etcd-ca turns TLS on; give host:port or https://"
                )
            } else {
                format!("{bad:?} is https: set --etcd-ca to the CA that signed etcd's certificate")
            };
            return Err(ConfigError::field("--etcd", problem));
        }
        Ok((
            EtcdOptions {
                endpoints,
                user,
                password,
                tls,
            },
            KeyLayout::new(self.etcd_prefix.clone()),
        ))
    }

    /// The TLS settings from --etcd-ca, --etcd-cert and --etcd-key, read and checked.
    fn etcd_tls(&self) -> Result<Option<EtcdTls>, ConfigError> {
        let identity = match (&self.etcd_cert, &self.etcd_key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::field(
                    "--etcd-key",
                    "required with --etcd-cert",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::field(
                    "--etcd-cert",
                    "required with --etcd-key",
                ));
            }
            (Some(cert), Some(key)) => Some((cert, key)),
        };
        let Some(ca) = &self.etcd_ca else {
            if identity.is_some() {
                return Err(ConfigError::field(
                    "--etcd-ca",
                    "required with --etcd-cert: the CA that signed etcd's server certificate",
                ));
            }
            return Ok(None);
        };
        let ca_pem = read_pem("--etcd-ca", ca)?;
        parse_certs("--etcd-ca", ca, &ca_pem)?;
        let identity = match identity {
            Some((cert, key)) => {
                let id = read_identity(("--etcd-cert", cert), ("--etcd-key", key))?;
                Some((id.cert_pem, id.key_pem))
            }
            None => None,
        };
        Ok(Some(EtcdTls { ca_pem, identity }))
    }
}

/// Parses the arguments; a usage error prints one line and exits 64, `--help` exits 0.
pub fn parse_or_exit<T: Parser>() -> T {
    match T::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let first = e.to_string();
            let first = first.lines().next().unwrap_or("invalid arguments");
            eprintln!("{first}");
            std::process::exit(i32::from(EXIT_CONFIG));
        }
    }
}

/// Prints a configuration error as one line naming the field, and exits 64.
pub fn exit_config_error(binary: &str, err: &ConfigError) -> ! {
    eprintln!("{binary}: invalid configuration: {err}");
    std::process::exit(i32::from(EXIT_CONFIG));
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
        t.cancel();
    });
    token
}

/// Installs the Prometheus recorder, with fixed histogram buckets (cheap to record and to
/// scrape), and keeps it tidy: without periodic upkeep, recorded samples pile up between
/// scrapes. Returns the handle that renders `/metrics`, or `None` if a recorder exists.
pub fn install_metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    const SECONDS: [f64; 14] = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&SECONDS)
        .ok()?
        .install_recorder()
        .ok()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Some(handle)
}

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ListenError {
    /// The address.
    pub addr: std::net::SocketAddr,
    /// Why.
    pub source: std::io::Error,
}

/// Binds a TCP listener, naming the address in the error.
pub async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, ListenError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError { addr, source })
}
