//! `dtable-proxy`: parses the configuration and routes until SIGTERM/SIGINT, then drains.

use std::process::ExitCode;

use dtable_core::auth::warn_open;
use dtable_core::cli::{exit_config_error, init_tracing, parse_or_exit, shutdown_on_signals};
use dtable_proxy::{Args, run};

/// mimalloc instead of the system allocator: the request path allocates and frees many
/// small buffers (headers, URIs, body frames), and glibc's malloc spent a measurable share
/// of the proxy's CPU on them (bench/README.md, "Proxy throughput"). Its version 2 (the
/// crate's `v2` feature): Rust asks for every block with its alignment, and version 3's
/// aligned path took about 460 more instructions per proxied request.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

// Requests are served by the routing workers' own runtimes (see `server`); this one only
// accepts connections, follows etcd and serves the admin port.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Args = parse_or_exit();
    let cfg = args
        .into_config()
        .unwrap_or_else(|e| exit_config_error("dtable-proxy", &e));
    init_tracing();
    let metrics = dtable_core::cli::install_metrics();
    tracing::info!(
        listen = %cfg.listen,
        admin = %cfg.admin_listen,
        slave_listen = ?cfg.slave_listen,
        etcd = ?cfg.etcd.endpoints,
        workers = cfg.limits.workers,
        tls = cfg.tls_mode(),
        admin_token = if cfg.admin_token.is_some() { "required for POST /rebalance/" } else { "none" },
        "dtable-proxy starting"
    );
    if cfg.admin_token.is_none() {
        warn_open("dtable-proxy");
    }
    match run(cfg, metrics, shutdown_on_signals()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "dtable-proxy failed");
            ExitCode::FAILURE
        }
    }
}
