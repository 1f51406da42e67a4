//! Command-line plumbing every binary shares: the etcd flags, SeaTable's config file, exit
//! status 64 for bad configuration, and log set-up.

use std::path::PathBuf;

use clap::Parser;

use crate::config::{ClusterConfig, ConfigError, read_seatable_config, split_hosts};
use crate::etcd::EtcdOptions;
use crate::keys::KeyLayout;

/// Exit status for invalid configuration (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

/// The etcd flags, flattened into each binary's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// etcd endpoints, host:port, comma-separated.
    #[arg(long, env = "DTABLE_ETCD")]
    pub etcd: Option<String>,
    /// Namespace put in front of every key; keep it empty where dtable-web reads the keys.
    #[arg(long, env = "DTABLE_ETCD_PREFIX", default_value = "")]
    pub etcd_prefix: String,
    /// etcd user, for password auth.
    #[arg(long, env = "DTABLE_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// Password of --etcd-user.
    #[arg(long, env = "DTABLE_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    /// SeaTable's dtable_server_config.json; its cluster_config block fills unset flags.
    #[arg(long, env = "DTABLE_SEATABLE_CONFIG")]
    pub seatable_config: Option<PathBuf>,
}

impl EtcdArgs {
    /// The `cluster_config` block of `--seatable-config`, or an empty one.
    pub fn seatable(&self) -> Result<ClusterConfig, ConfigError> {
        match &self.seatable_config {
            Some(path) => read_seatable_config(path),
            None => Ok(ClusterConfig::default()),
        }
    }

    /// The etcd connection and key layout, flags first, then the SeaTable file.
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
        Ok((
            EtcdOptions {
                endpoints,
                user,
                password,
            },
            KeyLayout::new(self.etcd_prefix.clone()),
        ))
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
