//! The agent's configuration: flags with environment twins, completed from SeaTable's
//! `dtable_server_config.json`, validated once at start-up.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use dtable_core::cli::EtcdArgs;
use dtable_core::config::ConfigError;
use dtable_core::etcd::EtcdOptions;
use dtable_core::node::MAX_WEIGHT;
use dtable_core::{KeyLayout, LeaseTiming, NodeId};

use crate::health::ProbeSettings;

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
    /// The local push API (gRPC `LocalAgent`) for the server.
    #[arg(
        long,
        env = "DTABLE_AGENT_GRPC_LISTEN",
        default_value = "127.0.0.1:5570"
    )]
    pub grpc_listen: SocketAddr,
    /// The HTTP twin of the push API, with /metrics and /healthz.
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
    /// How to reach etcd.
    pub etcd: EtcdOptions,
    /// Key layout (namespace).
    pub keys: KeyLayout,
    /// This server's id.
    pub node_id: NodeId,
    /// Browser-facing URL.
    pub node_url: String,
    /// LAN URL.
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
        let node_url = required("node-url", self.node_url, file.node_url)?;
        let local_node_url = required("local-node-url", self.local_node_url, file.local_node_url)?;
        for (field, url) in [
            ("--node-url", &node_url),
            ("--local-node-url", &local_node_url),
        ] {
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
