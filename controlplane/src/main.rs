//! `dtable-controlplane`: parses the configuration and runs one instance until SIGTERM/SIGINT.

use std::process::ExitCode;

use dtable_controlplane::{Args, run};
use dtable_core::auth::warn_open;
use dtable_core::cli::{exit_config_error, init_tracing, parse_or_exit, shutdown_on_signals};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = parse_or_exit();
    let cfg = args
        .into_config()
        .unwrap_or_else(|e| exit_config_error("dtable-controlplane", &e));
    init_tracing();
    let metrics = dtable_core::cli::install_metrics();
    tracing::info!(
        instance = %cfg.name,
        etcd = ?cfg.etcd.endpoints,
        grpc = %cfg.grpc_listen,
        http = %cfg.http_listen,
        tls = cfg.tls_mode(),
        admin_token = if cfg.admin_token.is_some() { "required for intents" } else { "none" },
        "dtable-controlplane starting"
    );
    if cfg.admin_token.is_none() {
        warn_open("dtable-controlplane");
    }
    match run(cfg, metrics, shutdown_on_signals()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "dtable-controlplane failed");
            ExitCode::FAILURE
        }
    }
}
