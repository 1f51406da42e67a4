//! Test harness for dtable-cluster: a real etcd on free loopback ports, helpers to run the
//! workspace binaries as child processes, polling helpers, a tiny HTTP client, the
//! `dtable-server-sim` stand-in dtable-server with its storage and event log, and the checker
//! that proves the single-owner and nothing-lost invariants from those.
//!
//! Everything here is for tests: failures panic with a message that says what to do, and every
//! process or directory a helper creates is cleaned up when its owner is dropped. Set
//! `DTABLE_TESTKIT_KEEP=1` to keep the scratch directories (data dirs, logs) for a post-mortem.

pub mod checker;
pub mod cluster;
pub mod etcd;
pub mod events;
pub mod http;
pub mod pki;
pub mod process;
pub mod relay;
pub mod scratch;
pub mod sim;
pub mod store;
pub mod wait;

pub use etcd::Etcd;
pub use process::{Proc, bin_path, run_to_exit};
pub use relay::{LinkMode, Relay};
pub use scratch::scratch_dir;
pub use wait::{free_port, free_ports, wait_until};
