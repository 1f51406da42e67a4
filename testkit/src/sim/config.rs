//! The sim binary's configuration: flags with `DTABLE_SIM_*` environment twins, validated
//! once at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::error::{ContextKind, ErrorKind};
use clap::{Parser, ValueEnum};

use super::{SelfRegister, SimOptions, SlaveOptions};

/// Default TTL of a self-registering sim's lease, as SeaTable's dtable-server uses.
pub const DEFAULT_LEASE_TTL: i64 = 90;
/// Default time a slave keeps a loaded base before loading it again.
pub const DEFAULT_CACHE_TTL_MS: u64 = 5_000;

/// What the sim stands in for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum SimRole {
    /// A dtable-server: owns buckets and serves their bases.
    #[default]
    Server,
    /// A dtable-server-slave: owns nothing, loads bases through the proxy and serves reads of
    /// them from a short-lived cache.
    Slave,
}

/// Exit status for invalid configuration (`EX_USAGE`), as every dtable-cluster binary uses.
pub const CONFIG_EXIT_CODE: i32 = 64;

/// Configuration of `dtable-server-sim`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "dtable-server-sim",
    version,
    about = "A stand-in dtable-server for tests"
)]
pub struct SimConfig {
    /// Address to serve HTTP on (port 0 picks a free port).
    #[arg(long, env = "DTABLE_SIM_LISTEN", default_value = "127.0.0.1:5000")]
    pub listen: SocketAddr,

    /// This server's node id, sent back in `X-Dtable-Node` on every response.
    #[arg(long, env = "DTABLE_SIM_NODE_ID", value_parser = parse_node_id)]
    pub node_id: String,

    /// etcd endpoints (`host:port,...`) whose `assign-<xx>` keys say which buckets this sim
    /// owns. Without it (or `--agent`) the sim owns every bucket at epoch 0.
    #[arg(long, env = "DTABLE_SIM_ETCD", value_delimiter = ',', num_args = 1..)]
    pub etcd: Option<Vec<String>>,

    /// URL of the local agent (e.g. `http://127.0.0.1:5570`) whose `Watch` stream says
    /// which buckets this sim owns, under a serving lease it enforces.
    #[arg(long, env = "DTABLE_SIM_AGENT", value_parser = parse_agent_url, conflicts_with = "etcd")]
    pub agent: Option<String>,

    /// Directory of the base storage shared by all sims (`<uuid32>.json` per base). Without
    /// it base requests are described back instead of served from storage.
    #[arg(long, env = "DTABLE_SIM_STORAGE_DIR")]
    pub storage_dir: Option<PathBuf>,

    /// JSON-lines file to append own/disown/load/unload/write events to, for the checker.
    #[arg(long, env = "DTABLE_SIM_EVENT_LOG")]
    pub event_log: Option<PathBuf>,

    /// Key prefix in front of every cluster key in etcd (empty for SeaTable's layout).
    #[arg(long, env = "DTABLE_SIM_ETCD_PREFIX", default_value = "")]
    pub etcd_prefix: String,

    /// Register `<node_id>` in etcd under the sim's own lease, as SeaTable's enterprise
    /// dtable-server does with a `cluster_config` (needs `--etcd`). A kill -9 leaves the
    /// registration until its TTL runs out.
    #[arg(long, env = "DTABLE_SIM_SELF_REGISTER", requires = "etcd")]
    pub self_register: bool,

    /// TTL in seconds of the self-registration's lease, kept alive every TTL/3.
    #[arg(long, env = "DTABLE_SIM_LEASE_TTL", default_value_t = DEFAULT_LEASE_TTL,
        value_parser = clap::value_parser!(i64).range(2..))]
    pub lease_ttl: i64,

    /// `node_url` of the self-registration; defaults to the local node URL.
    #[arg(long, env = "DTABLE_SIM_NODE_URL")]
    pub node_url: Option<String>,

    /// `local_node_url` of the self-registration; defaults to `http://<listen address>/`.
    #[arg(long, env = "DTABLE_SIM_LOCAL_NODE_URL")]
    pub local_node_url: Option<String>,

    /// `server` (a dtable-server) or `slave` (a dtable-server-slave: read-only, loads bases
    /// through `--proxy-url`, owns nothing, never touches the storage).
    #[arg(long, env = "DTABLE_SIM_ROLE", value_enum, default_value_t = SimRole::Server)]
    pub role: SimRole,

    /// Where a slave loads bases from: `GET <proxy-url>/dtables/<uuid>` (the proxy, or in
    /// tests an owning sim directly). Required with `--role slave`.
    #[arg(long, env = "DTABLE_SIM_PROXY_URL", value_parser = parse_http_url,
        required_if_eq("role", "slave"))]
    pub proxy_url: Option<String>,

    /// How long, in milliseconds, a slave serves a loaded base before loading it again.
    #[arg(long, env = "DTABLE_SIM_CACHE_TTL_MS", default_value_t = DEFAULT_CACHE_TTL_MS)]
    pub cache_ttl_ms: u64,
}

impl SimConfig {
    /// The library options this configuration describes.
    pub fn options(&self) -> SimOptions {
        let etcd = self.etcd.as_ref().map(|endpoints| {
            let endpoints = endpoints
                .iter()
                .map(|e| e.trim().to_owned())
                .filter(|e| !e.is_empty())
                .collect();
            (endpoints, self.etcd_prefix.clone())
        });
        let self_register = self.self_register.then(|| SelfRegister {
            ttl: self.lease_ttl,
            node_url: self.node_url.clone(),
            local_node_url: self.local_node_url.clone(),
        });
        let slave = match (self.role, &self.proxy_url) {
            (SimRole::Slave, Some(proxy_url)) => Some(SlaveOptions {
                proxy_url: proxy_url.clone(),
                cache_ttl: Duration::from_millis(self.cache_ttl_ms),
            }),
            _ => None,
        };
        SimOptions {
            node_id: self.node_id.clone(),
            etcd,
            agent: self.agent.clone(),
            storage_dir: self.storage_dir.clone(),
            event_log: self.event_log.clone(),
            self_register,
            slave,
        }
    }

    /// Checks what clap cannot: a slave follows nothing and has no storage. Returns one line
    /// naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.role != SimRole::Slave {
            return Ok(());
        }
        let clash = [
            ("--etcd", self.etcd.is_some()),
            ("--agent", self.agent.is_some()),
            ("--storage-dir", self.storage_dir.is_some()),
            ("--self-register", self.self_register),
        ]
        .into_iter()
        .find(|(_, given)| *given);
        match clash {
            Some((flag, _)) => Err(format!(
                "invalid configuration: {flag}: not with --role slave (a slave owns nothing, \
                 follows nothing and loads bases through --proxy-url only)"
            )),
            None => Ok(()),
        }
    }

    /// Parses the process's arguments and environment. Prints help or version and exits 0
    /// when asked; on invalid configuration prints one line naming the bad field and exits
    /// with [`CONFIG_EXIT_CODE`].
    pub fn parse_or_exit() -> SimConfig {
        match SimConfig::try_parse() {
            Ok(config) => match config.validate() {
                Ok(()) => config,
                Err(line) => {
                    eprintln!("{line}");
                    std::process::exit(CONFIG_EXIT_CODE);
                }
            },
            Err(err)
                if matches!(
                    err.kind(),
                    ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
                ) =>
            {
                err.exit()
            }
            Err(err) => {
                eprintln!("{}", one_line(&err));
                std::process::exit(CONFIG_EXIT_CODE);
            }
        }
    }
}

/// A node id must be usable as a header value: non-empty visible ASCII.
fn parse_node_id(value: &str) -> Result<String, String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be non-empty visible ASCII without spaces".to_owned());
    }
    Ok(value.to_owned())
}

/// An agent URL must be an `http://` or `https://` URI with a host.
fn parse_agent_url(value: &str) -> Result<String, String> {
    let uri: axum::http::Uri = value
        .parse()
        .map_err(|e| format!("not a URI ({e}); want e.g. http://127.0.0.1:5570"))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.host().is_none() {
        return Err("want http://host:port, e.g. http://127.0.0.1:5570".to_owned());
    }
    Ok(value.to_owned())
}

/// A slave's `--proxy-url`: an `http://` or `https://` URL with a host.
fn parse_http_url(value: &str) -> Result<String, String> {
    parse_agent_url(value)
        .map(|_| value.trim_end_matches('/').to_owned())
        .map_err(|_| "want http://host:port, e.g. http://127.0.0.1:5550".to_owned())
}

/// One line naming the bad field, e.g.
/// `invalid configuration: --node-id <NODE_ID>: missing required argument`.
fn one_line(err: &clap::Error) -> String {
    let kind = err.kind().as_str().unwrap_or("invalid argument");
    let arg = err.get(ContextKind::InvalidArg).map(ToString::to_string);
    let value = err.get(ContextKind::InvalidValue).map(ToString::to_string);
    let cause = std::error::Error::source(err).map(ToString::to_string);
    match (arg, value) {
        (Some(arg), Some(value)) => {
            let cause = cause.map(|c| format!(": {c}")).unwrap_or_default();
            format!("invalid configuration: {arg}: {kind} {value:?}{cause}")
        }
        (Some(arg), None) => format!("invalid configuration: {arg}: {kind}"),
        _ => {
            let text = err.to_string();
            let first = text.lines().next().unwrap_or(kind);
            format!(
                "invalid configuration: {}",
                first.trim_start_matches("error: ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_line(args: &[&str]) -> String {
        let err = SimConfig::try_parse_from(args).expect_err("invalid");
        one_line(&err)
    }

    #[test]
    fn parses_flags() {
        let config = SimConfig::try_parse_from([
            "sim",
            "--node-id",
            "dtable-server-a",
            "--listen",
            "0.0.0.0:1",
        ])
        .expect("valid");
        assert_eq!(config.node_id, "dtable-server-a");
        assert_eq!(config.listen, "0.0.0.0:1".parse().unwrap());
        assert!(config.options().etcd.is_none());

        let config = SimConfig::try_parse_from([
            "sim",
            "--node-id",
            "dtable-server-a",
            "--etcd",
            "127.0.0.1:1,127.0.0.1:2",
            "--etcd-prefix",
            "t/",
        ])
        .expect("valid");
        let (endpoints, prefix) = config.options().etcd.expect("follows etcd");
        assert_eq!(endpoints, ["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(prefix, "t/");

        let config = SimConfig::try_parse_from([
            "sim",
            "--node-id",
            "dtable-server-a",
            "--agent",
            "http://127.0.0.1:5570",
            "--storage-dir",
            "/tmp/s",
            "--event-log",
            "/tmp/e.jsonl",
        ])
        .expect("valid");
        let options = config.options();
        assert_eq!(options.agent.as_deref(), Some("http://127.0.0.1:5570"));
        assert_eq!(options.storage_dir, Some(PathBuf::from("/tmp/s")));
        assert_eq!(options.event_log, Some(PathBuf::from("/tmp/e.jsonl")));
        assert!(options.etcd.is_none());
    }

    #[test]
    fn parses_self_register_and_slave() {
        let config = SimConfig::try_parse_from([
            "sim",
            "--node-id",
            "dtable-server-a",
            "--etcd",
            "127.0.0.1:1",
            "--self-register",
            "--lease-ttl",
            "30",
        ])
        .expect("valid");
        let reg = config.options().self_register.expect("self-registers");
        assert_eq!(reg.ttl, 30);
        assert_eq!(reg.local_node_url, None);
        assert!(config.options().slave.is_none());

        let config = SimConfig::try_parse_from([
            "sim",
            "--node-id",
            "dtable-server-s",
            "--role",
            "slave",
            "--proxy-url",
            "http://127.0.0.1:5550/",
        ])
        .expect("valid");
        config.validate().expect("a valid slave");
        let slave = config.options().slave.expect("a slave");
        assert_eq!(slave.proxy_url, "http://127.0.0.1:5550");
        assert_eq!(slave.cache_ttl, Duration::from_millis(DEFAULT_CACHE_TTL_MS));
        assert!(config.options().self_register.is_none());
    }

    #[test]
    fn bad_self_register_and_slave_flags_name_the_field() {
        let line = error_line(&["sim", "--node-id", "x", "--self-register"]);
        assert!(line.contains("--etcd"), "{line}");
        let line = error_line(&["sim", "--node-id", "x", "--role", "slave"]);
        assert!(line.contains("--proxy-url"), "{line}");
        let line = error_line(&[
            "sim",
            "--node-id",
            "x",
            "--role",
            "slave",
            "--proxy-url",
            "127.0.0.1:1",
        ]);
        assert!(line.contains("--proxy-url"), "{line}");
        let config = SimConfig::try_parse_from([
            "sim",
            "--node-id",
            "x",
            "--role",
            "slave",
            "--proxy-url",
            "http://127.0.0.1:1",
            "--storage-dir",
            "/tmp/s",
        ])
        .expect("parses");
        let line = config.validate().unwrap_err();
        assert!(
            line.contains("--storage-dir") && !line.contains('\n'),
            "{line}"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let line = error_line(&["sim"]);
        assert!(line.contains("--node-id"), "{line}");
        assert!(!line.contains('\n'), "{line}");

        let line = error_line(&["sim", "--node-id", "x", "--listen", "nope"]);
        assert!(line.contains("--listen") && line.contains("nope"), "{line}");

        let line = error_line(&["sim", "--node-id", "a b"]);
        assert!(
            line.contains("--node-id") && line.contains("visible ASCII"),
            "{line}"
        );

        let line = error_line(&["sim", "--node-id", "x", "--bogus"]);
        assert!(line.contains("--bogus"), "{line}");

        let line = error_line(&["sim", "--node-id", "x", "--agent", "127.0.0.1:5570"]);
        assert!(line.contains("--agent"), "{line}");

        let line = error_line(&[
            "sim",
            "--node-id",
            "x",
            "--agent",
            "http://127.0.0.1:1",
            "--etcd",
            "127.0.0.1:2",
        ]);
        assert!(
            line.contains("--agent") || line.contains("--etcd"),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
    }
}
