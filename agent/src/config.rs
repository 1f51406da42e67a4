//! The agent's configuration: flags with environment twins, completed from SeaTable's
//! `dtable_server_config.json` (or `dtable_server_slave_config.json` for a slave), validated
//! once at start-up.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use dtable_core::cli::EtcdArgs;
use dtable_core::config::ConfigError;
use dtable_core::etcd::EtcdOptions;
use dtable_core::node::MAX_WEIGHT;
use dtable_core::{KeyLayout, LeaseTiming, NodeId};

use crate::health::ProbeSettings;

/// How the agent works with its server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// The agent registers the server under its own lease while the server is healthy and
    /// pushes the server's buckets over the local stream, under a serving lease.
    #[default]
    Managed,
    /// Beside an unmodified SeaTable dtable-server that registers itself: the agent never
    /// registers anything; it probes the server and revokes the lease of the server's own
    /// registration once the server is judged dead, so failover need not wait for the TTL.
    Seatable,
}

impl Mode {
    /// `managed` or `seatable`, as logs and metrics label it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Managed => "managed",
            Mode::Seatable => "seatable",
        }
    }
}

/// What kind of server the agent sits beside.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// A bucket-owning dtable-server, registered at the root key `<node_id>`.
    #[default]
    Server,
    /// A read replica (dtable-server-slave), registered under `dtable-cluster/slaves/<node_id>`
    /// only: it owns no bucket and nothing is pushed to it.
    Slave,
}

impl Role {
    /// `server` or `slave`, as the record's `role` field and the metrics say it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Server => dtable_core::node::ROLE_SERVER,
            Role::Slave => dtable_core::node::ROLE_SLAVE,
        }
    }
}

/// Command-line flags of `dtable-agent`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "dtable-agent",
    version,
    about = "Registers a dtable-server in etcd under a lease"
)]
pub struct Args {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub etcd: EtcdArgs,
    /// `managed`: register the server and push its buckets. `seatable`: beside a SeaTable
    /// server that registers itself, only probe it and revoke its lease once it is dead.
    #[arg(long, env = "DTABLE_AGENT_MODE", value_enum, default_value_t = Mode::Managed)]
    pub mode: Mode,
    /// `server`: a bucket owner, registered at `<node_id>`. `slave`: a read replica,
    /// registered under `dtable-cluster/slaves/<node_id>` only (managed mode).
    #[arg(long, env = "DTABLE_AGENT_ROLE", value_enum, default_value_t = Role::Server)]
    pub role: Role,
    /// The server's node id; must start with "dtable-server-".
    #[arg(long, env = "DTABLE_NODE_ID")]
    pub node_id: Option<String>,
    /// Browser-facing URL of the server.
    #[arg(long, env = "DTABLE_NODE_URL")]
    pub node_url: Option<String>,
    /// LAN URL of the server, used by the proxy.
    #[arg(long, env = "DTABLE_LOCAL_NODE_URL")]
    pub local_node_url: Option<String>,
    /// Registration lease TTL in seconds (at least 3).
    #[arg(long, env = "DTABLE_LEASE_TTL", default_value_t = 90)]
    pub lease_ttl: i64,
    /// Relative share of buckets (1..=1000).
    #[arg(long, env = "DTABLE_WEIGHT", default_value_t = 1)]
    pub weight: u32,
    /// The local push API (gRPC `LocalAgent`) for the server. Not opened in seatable mode or
    /// for a slave, which are pushed nothing.
    #[arg(
        long,
        env = "DTABLE_AGENT_GRPC_LISTEN",
        default_value = "127.0.0.1:5570"
    )]
    pub grpc_listen: SocketAddr,
    /// The HTTP twin of the push API, with /metrics and /healthz (only these two in seatable
    /// mode and for a slave).
    #[arg(
        long,
        env = "DTABLE_AGENT_HTTP_LISTEN",
        default_value = "127.0.0.1:5571"
    )]
    pub http_listen: SocketAddr,
    /// The server's health probe; defaults to <local-node-url>/ping/.
    #[arg(long, env = "DTABLE_HEALTH_URL")]
    pub health_url: Option<String>,
    /// Time between health probes.
    #[arg(long, env = "DTABLE_HEALTH_INTERVAL", default_value = "1s", value_parser = duration)]
    pub health_interval: Duration,
    /// Time allowed for one probe.
    #[arg(long, env = "DTABLE_HEALTH_TIMEOUT", default_value = "1s", value_parser = duration)]
    pub health_timeout: Duration,
    /// Successful probes in a row before the server is registered.
    #[arg(long, env = "DTABLE_HEALTHY_AFTER", default_value_t = 2)]
    pub healthy_after: u32,
    /// Timed-out or failed probes in a row before the server counts as dead (a refused
    /// connection counts at once).
    #[arg(long, env = "DTABLE_UNHEALTHY_AFTER", default_value_t = 3)]
    pub unhealthy_after: u32,
    /// On SIGTERM the node drains by handoff; past this time the agent fences its server and
    /// leaves anyway.
    #[arg(long, env = "DTABLE_DRAIN_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub drain_timeout: Duration,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. 30s, 500ms, 2m)"))
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Managed or seatable.
    pub mode: Mode,
    /// Server or slave.
    pub role: Role,
    /// How to reach etcd.
    pub etcd: EtcdOptions,
    /// Key layout (namespace).
    pub keys: KeyLayout,
    /// This server's id.
    pub node_id: NodeId,
    /// Browser-facing URL (empty in seatable mode when not given: the server registers its
    /// own record).
    pub node_url: String,
    /// LAN URL (empty in seatable mode when --health-url is given instead).
    pub local_node_url: String,
    /// Requested lease TTL, seconds.
    pub lease_ttl: i64,
    /// Share weight.
    pub weight: u32,
    /// gRPC push API address.
    pub grpc_listen: SocketAddr,
    /// HTTP twin address.
    pub http_listen: SocketAddr,
    /// Health probe.
    pub probe: ProbeSettings,
    /// Longest drain.
    pub drain_timeout: Duration,
}

impl Args {
    /// Merges the SeaTable config under the flags and validates the result.
    pub fn into_config(self) -> Result<AgentConfig, ConfigError> {
        let file = self.etcd.seatable()?;
        let (etcd, keys) = self.etcd.resolve(&file)?;
        let required = |flag: &str, given: Option<String>, in_file: Option<String>| {
            given.or(in_file).ok_or_else(|| {
                ConfigError::field(
                    format!("--{flag}"),
                    format!(
                        "missing: set --{flag} or cluster_config.{} in --seatable-config",
                        flag.replace('-', "_")
                    ),
                )
            })
        };
        let node_id = required("node-id", self.node_id, file.node_id)?;
        let node_id =
            NodeId::new(node_id).map_err(|e| ConfigError::field("--node-id", e.to_string()))?;
        if self.mode == Mode::Seatable && self.role == Role::Slave {
            return Err(ConfigError::field(
                "--role",
                "slave needs --mode managed: a slave's registration is its agent's own",
            ));
        }
        let (node_url, local_node_url) = match self.mode {
            Mode::Managed => (
                required("node-url", self.node_url, file.node_url)?,
                required("local-node-url", self.local_node_url, file.local_node_url)?,
            ),
            // The server registers its own record; only the probe needs an address.
            Mode::Seatable => {
                let local = self.local_node_url.or(file.local_node_url);
                if local.is_none() && self.health_url.is_none() {
                    return Err(ConfigError::field(
                        "--local-node-url",
                        "missing: seatable mode probes <local-node-url>/ping/; set \
                         --local-node-url, cluster_config.local_node_url in --seatable-config, \
                         or --health-url",
                    ));
                }
                (
                    self.node_url.or(file.node_url).unwrap_or_default(),
                    local.unwrap_or_default(),
                )
            }
        };
        for (field, url) in [
            ("--node-url", &node_url),
            ("--local-node-url", &local_node_url),
        ] {
            if url.is_empty() && self.mode == Mode::Seatable {
                continue;
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::field(
                    field,
                    format!("{url:?} is not an http(s) URL"),
                ));
            }
        }
        LeaseTiming::new(self.lease_ttl)
            .map_err(|e| ConfigError::field("--lease-ttl", e.to_string()))?;
        if self.weight == 0 || self.weight > MAX_WEIGHT {
            return Err(ConfigError::field(
                "--weight",
                format!("{} is outside 1..={MAX_WEIGHT}", self.weight),
            ));
        }
        let health_url = self
            .health_url
            .unwrap_or_else(|| format!("{}/ping/", local_node_url.trim_end_matches('/')));
        let url: hyper::Uri = health_url
            .parse()
            .map_err(|e| ConfigError::field("--health-url", format!("{health_url:?}: {e}")))?;
        if self.healthy_after == 0 || self.unhealthy_after == 0 {
            return Err(ConfigError::field(
                "--healthy-after",
                "thresholds must be at least 1",
            ));
        }
        let probe = ProbeSettings {
            url,
            interval: self.health_interval,
            timeout: self.health_timeout,
            healthy_after: self.healthy_after,
            unhealthy_after: self.unhealthy_after,
        };
        Ok(AgentConfig {
            mode: self.mode,
            role: self.role,
            etcd,
            keys,
            node_id,
            node_url,
            local_node_url,
            lease_ttl: self.lease_ttl,
            weight: self.weight,
            grpc_listen: self.grpc_listen,
            http_listen: self.http_listen,
            probe,
            drain_timeout: self.drain_timeout,
        })
    }
}
