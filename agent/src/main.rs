//! `dtable-agent`: parses the configuration and runs the agent until SIGTERM or SIGINT.

use std::process::ExitCode;

use dtable_agent::{Args, run};
use dtable_core::cli::{exit_config_error, init_tracing, parse_or_exit, shutdown_on_signals};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = parse_or_exit();
    let cfg = args
        .into_config()
        .unwrap_or_else(|e| exit_config_error("dtable-agent", &e));
    init_tracing();
    tracing::info!(node_id = %cfg.node_id, mode = cfg.mode.name(), role = cfg.role.name(), etcd = ?cfg.etcd.endpoints, ttl = cfg.lease_ttl, "dtable-agent starting");
    let metrics = dtable_core::cli::install_metrics();
    let shutdown = shutdown_on_signals();
    match run(cfg, metrics, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "dtable-agent failed");
            ExitCode::FAILURE
        }
    }
}
