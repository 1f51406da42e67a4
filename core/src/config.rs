//! SeaTable's `dtable_server_config.json` (JSON with `//` comments): the `cluster_config`
//! block gives the etcd hosts and the node's identity, so an existing SeaTable config can
//! drive every binary.

use std::path::Path;

use serde::Deserialize;

/// Why a configuration is refused. Binaries print it as one line and exit 64.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not JSON (after stripping comments) of the expected shape.
    #[error("{path}: malformed JSON: {source}")]
    Json {
        /// The file.
        path: String,
        /// Where and why.
        source: serde_json::Error,
    },
    /// A field is missing or wrong.
    #[error("{field}: {problem}")]
    Field {
        /// The field, as a flag or a path in the file.
        field: String,
        /// What is wrong.
        problem: String,
    },
}

impl ConfigError {
    /// A missing or bad field.
    pub fn field(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Field {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// The `cluster_config` block, every field optional here; each binary says which it needs.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd endpoints, `host:port`, as a list or a comma-separated string.
    #[serde(default, deserialize_with = "host_list")]
    pub etcd_host_list: Option<Vec<String>>,
    /// The server's node id (`dtable-server-...`).
    pub node_id: Option<String>,
    /// Browser-facing URL.
    pub node_url: Option<String>,
    /// LAN URL.
    pub local_node_url: Option<String>,
}

#[derive(Deserialize)]
struct ServerConfig {
    #[serde(default)]
    cluster_config: Option<ClusterConfig>,
}

fn host_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Hosts {
        One(String),
        Many(Vec<String>),
    }
    Ok(Option::<Hosts>::deserialize(d)?.map(|h| match h {
        Hosts::One(s) => split_hosts(&s),
        Hosts::Many(v) => v.iter().flat_map(|s| split_hosts(s)).collect(),
    }))
}

/// Splits `a:2379, b:2379` into hosts, dropping blanks.
pub fn split_hosts(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Reads the `cluster_config` block of a SeaTable config file. A file without the block
/// yields an empty block.
pub fn read_seatable_config(path: &Path) -> Result<ClusterConfig, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    parse_seatable_config(&shown, &text)
}

/// Parses the text of a SeaTable config file; `name` is used in errors.
pub fn parse_seatable_config(name: &str, text: &[u8]) -> Result<ClusterConfig, ConfigError> {
    let stripped = json_comments::StripComments::new(text);
    let cfg: ServerConfig =
        serde_json::from_reader(stripped).map_err(|source| ConfigError::Json {
            path: name.to_owned(),
            source,
        })?;
    Ok(cfg.cluster_config.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_seatable_json_with_comments() {
        let text = br#"{
            // SeaTable writes comments like this one
            "host": "127.0.0.1",
            "cluster_config": {
                "etcd_host_list": "10.0.0.1:2379, 10.0.0.2:2379",
                "node_id": "dtable-server-1", // trailing comment
                "node_url": "https://cloud.example/dtable-server-1/",
                "local_node_url": "http://10.0.0.5:5000/"
            }
        }"#;
        let c = parse_seatable_config("x.json", text).unwrap();
        assert_eq!(
            c.etcd_host_list.unwrap(),
            vec!["10.0.0.1:2379", "10.0.0.2:2379"]
        );
        assert_eq!(c.node_id.as_deref(), Some("dtable-server-1"));
    }

    #[test]
    fn list_form_and_missing_block() {
        let c = parse_seatable_config(
            "x",
            br#"{"cluster_config":{"etcd_host_list":["a:1","b:2"]}}"#,
        )
        .unwrap();
        assert_eq!(c.etcd_host_list.unwrap(), vec!["a:1", "b:2"]);
        assert_eq!(
            parse_seatable_config("x", b"{}").unwrap(),
            ClusterConfig::default()
        );
    }

    #[test]
    fn malformed_json_names_the_file_and_place() {
        let e = parse_seatable_config("conf/dtable_server_config.json", b"{\"a\": }").unwrap_err();
        let line = e.to_string();
        assert!(
            line.contains("dtable_server_config.json") && line.contains("line 1"),
            "{line}"
        );
    }
}
