//! Test harness for dtable-cluster: a real etcd on free loopback ports, helpers to run the
//! workspace binaries as child processes, polling helpers, a tiny HTTP client, and the
//! `dtable-server-sim` stand-in dtable-server.
//!
//! Everything here is for tests: failures panic with a message that says what to do, and every
//! process or directory a helper creates is cleaned up when its owner is dropped. Set
//! `DTABLE_TESTKIT_KEEP=1` to keep the scratch directories (data dirs, logs) for a post-mortem.

pub mod cluster;
pub mod etcd;
pub mod http;
pub mod process;
pub mod relay;
pub mod scratch;
pub mod sim;
pub mod wait;

pub use etcd::Etcd;
pub use process::{Proc, bin_path, run_to_exit};
pub use relay::Relay;
pub use scratch::scratch_dir;
pub use wait::{free_port, free_ports, wait_until};
