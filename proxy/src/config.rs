//! The proxy's configuration: flags with environment twins, validated once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use dtable_core::KeyLayout;
use dtable_core::auth::{AdminArgs, AdminToken};
use dtable_core::cli::EtcdArgs;
use dtable_core::config::ConfigError;
use dtable_core::etcd::EtcdOptions;
use dtable_core::tls::{ServerTls, TlsArgs};

use crate::forward::ForwardSettings;
use crate::server::Limits;

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. 30s, 500ms, 2m)"))
}

/// Command-line flags of `dtable-proxy`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "dtable-proxy",
    version,
    about = "Routes each request to the dtable-server owning its base"
)]
pub struct Args {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub etcd: EtcdArgs,
    /// TLS of every listener (routing, admin, and slave when on).
    #[command(flatten)]
    pub tls: TlsArgs,
    /// The admin token that guards POST /rebalance/ on the admin port.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Routing listener.
    #[arg(long, env = "DTABLE_PROXY_LISTEN", default_value = "0.0.0.0:5550")]
    pub listen: SocketAddr,
    /// Slave listener: spreads reads over the registered dtable-server-slaves, each base
    /// sticking to one slave (point dtable-server's `dtable_server_slave_url` here; deploy
    /// files use 0.0.0.0:4000). Off unless set.
    #[arg(long, env = "DTABLE_PROXY_SLAVE_LISTEN")]
    pub slave_listen: Option<SocketAddr>,
    /// On the slave listener, serve a request that finds no healthy slave by the owner of
    /// its base's bucket (any active server for a request without a base) instead of
    /// answering 503 `no_slave`.
    #[arg(long, env = "DTABLE_PROXY_SLAVE_FALLBACK_TO_OWNER")]
    pub slave_fallback_to_owner: bool,
    /// Admin listener: POST /rebalance/, /api/v1/lookup/<uuid>, /api/v1/slaves, /metrics,
    /// /healthz, /readyz.
    #[arg(
        long,
        env = "DTABLE_PROXY_ADMIN_LISTEN",
        default_value = "0.0.0.0:5555"
    )]
    pub admin_listen: SocketAddr,
    /// How long a request for a moving or unowned bucket is held before 503. Keep it at or
    /// above the control plane's release timeout.
    #[arg(long, env = "DTABLE_PROXY_HOLD_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub hold_timeout: Duration,
    /// Largest request body kept to resend after a not-owner answer, in bytes.
    #[arg(long, env = "DTABLE_PROXY_RETRY_BODY_LIMIT", default_value_t = 1 << 20)]
    pub retry_body_limit: usize,
    /// A client must send its request head within this time of the head's first byte.
    #[arg(long, env = "DTABLE_PROXY_HEADER_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub header_timeout: Duration,
    /// A client connection with no request in flight is closed after this long.
    #[arg(long, env = "DTABLE_PROXY_KEEPALIVE_TIMEOUT", default_value = "75s", value_parser = duration)]
    pub keepalive_timeout: Duration,
    /// Largest request head in bytes (at least 8192); larger ones get 431.
    #[arg(long, env = "DTABLE_PROXY_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// Most client connections at once.
    #[arg(long, env = "DTABLE_PROXY_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Timeout for connecting to a dtable-server.
    #[arg(long, env = "DTABLE_PROXY_CONNECT_TIMEOUT", default_value = "3s", value_parser = duration)]
    pub connect_timeout: Duration,
    /// Idle upstream connections are closed after this long.
    #[arg(long, env = "DTABLE_PROXY_IDLE_TIMEOUT", default_value = "90s", value_parser = duration)]
    pub idle_timeout: Duration,
    /// Threads serving client connections, each with its own event loop; 0 = one per CPU
    /// this process may run on.
    #[arg(long, env = "DTABLE_PROXY_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// Forward plain HTTP/1.1 requests on the routing listener as bytes, without hyper's
    /// message types (faster; the answers are the same). `false` sends every request through
    /// hyper, as before this path existed.
    #[arg(long, env = "DTABLE_PROXY_H1_FAST_PATH", default_value_t = true, action = clap::ArgAction::Set)]
    pub h1_fast_path: bool,
    /// On SIGTERM, in-flight requests may finish for this long.
    #[arg(long, env = "DTABLE_PROXY_SHUTDOWN_GRACE", default_value = "30s", value_parser = duration)]
    pub shutdown_grace: Duration,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// How to reach etcd.
    pub etcd: EtcdOptions,
    /// Key layout (namespace).
    pub keys: KeyLayout,
    /// Routing listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Slave listener; `None` when off.
    pub slave_listen: Option<SocketAddr>,
    /// Requests that find no healthy slave go to the owner.
    pub slave_fallback_to_owner: bool,
    /// Request-path settings.
    pub forward: ForwardSettings,
    /// Listener limits.
    pub limits: Limits,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Upstream idle timeout.
    pub idle_timeout: Duration,
    /// TLS of every listener; `None` serves plain HTTP.
    pub tls: Option<ServerTls>,
    /// The token `POST /rebalance/` demands; `None` leaves it open, as in SeaTable.
    pub admin_token: Option<Arc<AdminToken>>,
}

impl ProxyConfig {
    /// How the listeners are secured, in words for the start-up log line.
    pub fn tls_mode(&self) -> &'static str {
        match &self.tls {
            None => "off (plain HTTP)",
            Some(tls) if tls.requires_client_cert() => "mutual (client certificates required)",
            Some(_) => "on (no client certificates)",
        }
    }
}

impl Args {
    /// Validates the flags.
    pub fn into_config(self) -> Result<ProxyConfig, ConfigError> {
        let file = self.etcd.seatable()?;
        let (etcd, keys) = self.etcd.resolve(&file)?;
        let tls = self.tls.load()?;
        let admin_token = self.admin.load()?;
        if self.hold_timeout < Duration::from_secs(1) {
            return Err(ConfigError::field("--hold-timeout", "must be at least 1s"));
        }
        // The watchdog rechecks a connection once per the shorter of the two.
        for (flag, value) in [
            ("--header-timeout", self.header_timeout),
            ("--keepalive-timeout", self.keepalive_timeout),
        ] {
            if value < Duration::from_millis(100) {
                return Err(ConfigError::field(flag, "must be at least 100ms"));
            }
        }
        if self.max_header_bytes < 8192 {
            return Err(ConfigError::field(
                "--max-header-bytes",
                "must be at least 8192",
            ));
        }
        if self.workers > 1024 {
            return Err(ConfigError::field("--workers", "must be at most 1024"));
        }
        if self.slave_fallback_to_owner && self.slave_listen.is_none() {
            return Err(ConfigError::field(
                "--slave-fallback-to-owner",
                "needs --slave-listen",
            ));
        }
        if let Some(slave) = self.slave_listen
            && slave.port() != 0
            && (slave == self.listen || slave == self.admin_listen)
        {
            return Err(ConfigError::field(
                "--slave-listen",
                "must differ from --listen and --admin-listen",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::field(
                "--max-connections",
                "must be at least 1",
            ));
        }
        Ok(ProxyConfig {
            etcd,
            keys,
            listen: self.listen,
            admin_listen: self.admin_listen,
            slave_listen: self.slave_listen,
            slave_fallback_to_owner: self.slave_fallback_to_owner,
            forward: ForwardSettings {
                hold_timeout: self.hold_timeout,
                retry_body_limit: self.retry_body_limit,
                h1_fast_path: self.h1_fast_path,
            },
            limits: Limits {
                header_timeout: self.header_timeout,
                keepalive_timeout: self.keepalive_timeout,
                max_header_bytes: self.max_header_bytes,
                max_connections: self.max_connections,
                shutdown_grace: self.shutdown_grace,
                workers: match self.workers {
                    0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                    n => n,
                },
            },
            connect_timeout: self.connect_timeout,
            idle_timeout: self.idle_timeout,
            tls,
            admin_token,
        })
    }
}
