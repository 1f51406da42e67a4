//! `dtable-server-sim`: parses its configuration, sets up logging, and serves the stand-in
//! dtable-server until SIGTERM or SIGINT.

use std::io::IsTerminal;

use anyhow::Context;
use dtable_testkit::sim::{SimConfig, serve_sim, shutdown_signal};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = SimConfig::parse_or_exit();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let shutdown = shutdown_signal();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    serve_sim(listener, config.options(), shutdown).await?;
    Ok(())
}
