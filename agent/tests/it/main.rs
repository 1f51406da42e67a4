//! The agent as a real process against a real etcd: registration, restarts, bad config, and
//! the seatable mode and slave role.

mod chaos;
mod config;
mod faults;
mod harness;
mod local_api;
mod registration;
mod seatable;
mod slave;
