//! The command line: global flags (where the control plane is, how to talk to it, how to
//! print) and one subcommand per operation.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Default control-plane gRPC URL (the control plane's default gRPC port, 5580).
pub const DEFAULT_CONTROLPLANE: &str = "http://127.0.0.1:5580";

/// `dtablectl`: everything the command line says.
#[derive(Debug, Parser)]
#[command(
    name = "dtablectl",
    version,
    about = "Operate a dtable-cluster through its control plane: status, nodes, lookups, \
             rebalance, drain, cordon and a live watch",
    long_about = None,
    after_help = "Exit status: 0 ok, 1 the operation failed (control plane unreachable or it \
                  answered with an error), 64 usage error.\n\
                  Commands that change the cluster (rebalance, drain, cordon, uncordon) need \
                  the admin token (--token-file) when the control plane is configured with one."
)]
pub struct Cli {
    /// How to reach the control plane and how to print.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes, before or after the command name.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// Control-plane gRPC URLs (http:// or https://), comma-separated; tried in order until
    /// one answers, so one dead instance does not stop the CLI.
    #[arg(
        long,
        env = "DTABLE_CONTROLPLANE",
        default_value = DEFAULT_CONTROLPLANE,
        value_name = "URL[,URL...]",
        global = true
    )]
    pub controlplane: String,
    /// Print machine-readable JSON on stdout: one document per command, one object per line
    /// for `watch`. Errors still go to stderr as one line, with nothing on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to wait for a control plane to connect and to answer one call, e.g. `10s`,
    /// `500ms`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Duration,
    /// PEM file of the CA that signed the control plane's certificate, for https:// URLs
    /// (without it the system's trusted CAs are used).
    #[arg(long, env = "DTABLE_CA", value_name = "FILE", global = true)]
    pub ca: Option<PathBuf>,
    /// PEM client certificate, for control planes that require mutual TLS (with --key).
    #[arg(long, env = "DTABLE_CERT", value_name = "FILE", global = true)]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, env = "DTABLE_KEY", value_name = "FILE", global = true)]
    pub key: Option<PathBuf>,
    /// File holding the admin token; its trimmed content is sent as `authorization: Bearer
    /// <token>` on every call. Commands that change the cluster need it when the control
    /// plane has a token configured.
    #[arg(
        long,
        env = "DTABLE_ADMIN_TOKEN_FILE",
        value_name = "FILE",
        global = true
    )]
    pub token_file: Option<PathBuf>,
}

/// The operations.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Cluster overview: leader, revision, nodes, moves in flight, and a 16x16 map of the 256
    /// buckets (one character per bucket: its node's symbol, `.` unassigned, `*` moving).
    Status,
    /// The registered nodes: state, cordon or drain, weight, buckets held, lease time left,
    /// version and local URL.
    Nodes,
    /// Which node serves a base: its bucket, owner, URLs and fencing epoch.
    Lookup {
        /// Base UUID: 32 hex characters or the dashed 8-4-4-4-12 form, any case.
        uuid: String,
    },
    /// Plan a full rebalance and ask the leader to carry it out as handoffs; prints the
    /// planned moves. Needs the admin token when the control plane has one.
    Rebalance {
        /// Only print the moves a rebalance would make; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Cordon a node and move all of its buckets away by handoff. Needs the admin token when
    /// the control plane has one.
    Drain {
        /// Node id, `dtable-server-...`.
        node: String,
    },
    /// Keep a node's buckets where they are but give it no new ones. Needs the admin token
    /// when the control plane has one.
    Cordon {
        /// Node id, `dtable-server-...`.
        node: String,
    },
    /// Lift a node's cordon or drain, so it receives buckets again. Needs the admin token when
    /// the control plane has one.
    Uncordon {
        /// Node id, `dtable-server-...`.
        node: String,
    },
    /// The planned moves in flight: bucket, from, to, whether the release was acknowledged.
    Moves,
    /// Follow the cluster live: a summary of the current state, then one timestamped line per
    /// change (buckets, moves, nodes). Reconnects by itself; stop with Ctrl-C.
    Watch,
}

impl Command {
    /// How the command is named in messages, with its argument: `drain dtable-server-x`.
    pub fn describe(&self) -> String {
        match self {
            Command::Status => "status".to_owned(),
            Command::Nodes => "nodes".to_owned(),
            Command::Lookup { uuid } => format!("lookup {uuid}"),
            Command::Rebalance { dry_run: true } => "rebalance --dry-run".to_owned(),
            Command::Rebalance { dry_run: false } => "rebalance".to_owned(),
            Command::Drain { node } => format!("drain {node}"),
            Command::Cordon { node } => format!("cordon {node}"),
            Command::Uncordon { node } => format!("uncordon {node}"),
            Command::Moves => "moves".to_owned(),
            Command::Watch => "watch".to_owned(),
        }
    }
}

/// Parses the process's arguments. `--help` and `--version` print and exit 0; a usage error
/// prints clap's message (with the usage line, so a missing argument is named) and exits 64,
/// not clap's default 2.
pub fn parse_or_exit() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // Printing can only fail when stderr is gone; the exit status still tells.
            let _ = e.print();
            std::process::exit(i32::from(dtable_core::cli::EXIT_CONFIG));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_before_or_after_the_command() {
        let cli = Cli::try_parse_from([
            "dtablectl",
            "--controlplane",
            "http://a:1,http://b:2",
            "nodes",
            "--json",
            "--timeout",
            "250ms",
        ])
        .unwrap();
        assert!(cli.global.json);
        assert_eq!(cli.global.controlplane, "http://a:1,http://b:2");
        assert_eq!(cli.global.timeout, Duration::from_millis(250));
        assert!(matches!(cli.command, Command::Nodes));
    }

    #[test]
    fn mutating_commands_say_they_need_the_token() {
        let cmd = Cli::command();
        for name in ["rebalance", "drain", "cordon", "uncordon"] {
            let sub = cmd.find_subcommand(name).unwrap();
            let about = sub.get_about().unwrap().to_string();
            assert!(about.contains("admin token"), "{name}: {about}");
        }
        for name in ["status", "nodes", "lookup", "moves", "watch"] {
            let sub = cmd.find_subcommand(name).unwrap();
            assert!(sub.get_about().is_some(), "{name} has no help text");
        }
    }

    #[test]
    fn describe_names_the_argument() {
        let cli = Cli::try_parse_from(["dtablectl", "drain", "dtable-server-x"]).unwrap();
        assert_eq!(cli.command.describe(), "drain dtable-server-x");
    }
}
