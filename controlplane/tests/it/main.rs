//! Scenarios of agents and control planes as real processes against a real etcd.

mod api;
mod config;
mod election;
mod handoff;
mod intents;
mod membership;
mod repair;
mod security;
mod self_registered;
mod status_page;

use std::time::Duration;

/// Generous bound for anything that should happen "within a second or two" on a loaded box.
pub const SETTLE: Duration = Duration::from_secs(20);

/// Generous bound for a cluster of fresh processes to register and be placed: every agent
/// waits for healthy probes, and each join may start handoffs. Slow on a loaded two-core box.
pub const STARTUP: Duration = Duration::from_secs(60);
