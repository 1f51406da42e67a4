//! `dtablectl`, the operator's command-line tool for dtable-cluster: reads the cluster state
//! from the control plane's gRPC API (`ControlPlane`), records intents (rebalance, drain,
//! cordon, uncordon) through it, and follows changes live.
//!
//! The binary only parses arguments and calls [`run`]; the parts are small modules:
//! [`args`] (the command line), [`client`] (URLs with failover, TLS, the admin token),
//! [`render`] (pure text and JSON output), [`commands`] (one function per command) and
//! [`watch`] (the reconnecting stream).

pub mod args;
pub mod client;
pub mod commands;
pub mod error;
pub mod render;
pub mod watch;

pub use commands::run;
pub use error::{CtlError, EXIT_FAILED, EXIT_USAGE};
