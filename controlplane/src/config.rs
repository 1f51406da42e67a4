//! The control plane's configuration: flags with environment twins, validated once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use dtable_core::auth::{AdminArgs, AdminToken};
use dtable_core::cli::EtcdArgs;
use dtable_core::config::ConfigError;
use dtable_core::etcd::EtcdOptions;
use dtable_core::tls::{ServerTls, TlsArgs};
use dtable_core::{KeyLayout, LeaseTiming};

/// Command-line flags of `dtable-controlplane`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "dtable-controlplane",
    version,
    about = "Leader-elected placement of the 256 buckets over the registered dtable-servers"
)]
pub struct Args {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub etcd: EtcdArgs,
    /// TLS (and mutual TLS) of both listeners, gRPC and HTTP.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// The admin token that guards the intents (rebalance, drain, cordon, uncordon).
    #[command(flatten)]
    pub admin: AdminArgs,
    /// TTL of the leader's election lease, seconds (at least 3). A dead leader is replaced
    /// after about this long.
    #[arg(long, env = "DTABLE_ELECTION_TTL", default_value_t = 10)]
    pub election_ttl: i64,
    /// gRPC API listen address.
    #[arg(long, env = "DTABLE_GRPC_LISTEN", default_value = "0.0.0.0:5580")]
    pub grpc_listen: SocketAddr,
    /// HTTP API, metrics and health listen address.
    #[arg(long, env = "DTABLE_HTTP_LISTEN", default_value = "0.0.0.0:5581")]
    pub http_listen: SocketAddr,
    /// This instance's name in the election; defaults to hostname-pid.
    #[arg(long, env = "DTABLE_INSTANCE_NAME")]
    pub name: Option<String>,
    /// How long to wait for a burst of membership changes to settle before placing, in ms.
    #[arg(long, env = "DTABLE_DEBOUNCE_MS", default_value_t = 200)]
    pub debounce_ms: u64,
    /// How often the leader re-checks the whole assignment to repair drift, in seconds.
    #[arg(long, env = "DTABLE_REPAIR_INTERVAL", default_value_t = 5)]
    pub repair_interval: u64,
    /// Move buckets between live nodes to keep them balanced. With false, only the buckets of
    /// departed nodes are re-placed, and a joiner waits for a rebalance request
    /// (`POST /rebalance/` on the proxy).
    #[arg(long, env = "DTABLE_AUTO_REBALANCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_rebalance: bool,
    /// A planned move whose release is not acknowledged within this time is abandoned and the
    /// bucket stays where it is. Keep proxies' --hold-timeout at or above it.
    #[arg(long, env = "DTABLE_RELEASE_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub release_timeout: Duration,
    /// At most this many planned moves in flight at once.
    #[arg(long, env = "DTABLE_MAX_CONCURRENT_MOVES", default_value_t = 16)]
    pub max_concurrent_moves: usize,
    /// A node that left less than this long ago gets no buckets when it returns, so a
    /// flapping node cannot churn the cluster.
    #[arg(long, env = "DTABLE_REJOIN_HOLD", default_value = "30s", value_parser = duration)]
    pub rejoin_hold: Duration,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. 30s, 500ms, 2m)"))
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// How to reach etcd.
    pub etcd: EtcdOptions,
    /// Key layout (namespace).
    pub keys: KeyLayout,
    /// Election lease TTL, seconds.
    pub election_ttl: i64,
    /// gRPC listen address.
    pub grpc_listen: SocketAddr,
    /// HTTP listen address.
    pub http_listen: SocketAddr,
    /// Instance name.
    pub name: String,
    /// Debounce of view changes.
    pub debounce: Duration,
    /// Period of full repairs.
    pub repair_interval: Duration,
    /// Whether to rebalance between live nodes without being asked.
    pub auto_rebalance: bool,
    /// Limits of planned moves.
    pub handoff: crate::handoff::HandoffSettings,
    /// TLS of the gRPC and HTTP listeners; `None` serves plain gRPC and HTTP.
    pub tls: Option<ServerTls>,
    /// The token the intents demand; `None` leaves them open (see
    /// [`dtable_core::auth::warn_open`]).
    pub admin_token: Option<Arc<AdminToken>>,
}

impl ControlPlaneConfig {
    /// How the listeners are secured, in words for the start-up log line.
    pub fn tls_mode(&self) -> &'static str {
        match &self.tls {
            None => "off (plain gRPC and HTTP)",
            Some(tls) if tls.requires_client_cert() => "mutual (client certificates required)",
            Some(_) => "on (no client certificates)",
        }
    }
}

impl Args {
    /// Validates the flags.
    pub fn into_config(self) -> Result<ControlPlaneConfig, ConfigError> {
        let file = self.etcd.seatable()?;
        let (etcd, keys) = self.etcd.resolve(&file)?;
        let tls = self.tls.load()?;
        let admin_token = self.admin.load()?;
        LeaseTiming::new(self.election_ttl)
            .map_err(|e| ConfigError::field("--election-ttl", e.to_string()))?;
        if self.max_concurrent_moves == 0 {
            return Err(ConfigError::field(
                "--max-concurrent-moves",
                "must be at least 1",
            ));
        }
        if self.repair_interval == 0 {
            return Err(ConfigError::field(
                "--repair-interval",
                "must be at least 1 second",
            ));
        }
        let name = self.name.unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "controlplane".into());
            format!("{host}-{}", std::process::id())
        });
        Ok(ControlPlaneConfig {
            etcd,
            keys,
            election_ttl: self.election_ttl,
            grpc_listen: self.grpc_listen,
            http_listen: self.http_listen,
            name,
            debounce: Duration::from_millis(self.debounce_ms),
            repair_interval: Duration::from_secs(self.repair_interval),
            auto_rebalance: self.auto_rebalance,
            handoff: crate::handoff::HandoffSettings {
                release_timeout: self.release_timeout,
                max_concurrent: self.max_concurrent_moves,
                rejoin_hold: self.rejoin_hold,
            },
            tls,
            admin_token,
        })
    }
}
