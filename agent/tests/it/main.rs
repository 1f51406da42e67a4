//! The agent as a real process against a real etcd: registration, restarts, bad config.

mod config;
mod registration;
