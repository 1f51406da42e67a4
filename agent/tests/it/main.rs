//! The agent as a real process against a real etcd: registration, restarts, bad config.

mod chaos;
mod config;
mod faults;
mod harness;
mod local_api;
mod registration;
