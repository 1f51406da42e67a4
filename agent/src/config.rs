//! The agent's configuration: flags with environment twins, completed from SeaTable's
//! `dtable_server_config.json`, validated once at start-up.

use clap::Parser;
use dtable_core::cli::EtcdArgs;
use dtable_core::config::ConfigError;
use dtable_core::etcd::EtcdOptions;
use dtable_core::node::MAX_WEIGHT;
use dtable_core::{KeyLayout, LeaseTiming, NodeId};

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
        Ok(AgentConfig {
            etcd,
            keys,
            node_id,
            node_url,
            local_node_url,
            lease_ttl: self.lease_ttl,
            weight: self.weight,
        })
    }
}
