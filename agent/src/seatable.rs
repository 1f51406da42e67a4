//! Seatable mode (`--mode seatable`): the agent beside an unmodified SeaTable dtable-server
//! that registers itself at `<node_id>` under its own lease (TTL 90 s). The agent registers
//! nothing and pushes nothing. It watches that one key, probes the server exactly as a managed
//! agent does, and once the server is judged dead (a refused connection at once; timeouts or
//! error answers after `--unhealthy-after` in a row) it revokes the lease the key is attached
//! to, so the server's buckets fail over in seconds instead of after the TTL.
//!
//! It revokes each lease once, and only on a verdict from a probe sent after it saw that
//! registration, so a server that restarted and registered again is judged afresh. It never
//! touches the registration of a server that answers, and never deletes or writes a key.

use std::collections::VecDeque;

use dtable_core::etcd::{Backoff, CALL_TIMEOUT};
use etcd_client::{Client, EventType, KeyValue, WatchOptions};
use tokio::sync::watch;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::health::{Health, Probe, State};
use crate::registration::{Revoked, try_revoke};

/// How many revoked leases are remembered, so each is revoked once.
const REMEMBERED_LEASES: usize = 16;

/// The server's own registration as last seen in etcd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The lease the key is attached to; 0 for none.
    pub lease: i64,
    /// Revision the key was created at: tells a re-registration from the previous one.
    pub create_revision: i64,
    /// Revision of the key's last change.
    pub mod_revision: i64,
    /// When this agent first saw this registration (this lease and create revision).
    pub seen_at: Instant,
}

/// Follows the single key `<prefix><node_id>`: a get, then a watch from the next revision,
/// starting over with a fresh get whenever the stream breaks or is compacted.
pub(crate) struct RegistrationWatch {
    client: Client,
    key: String,
    node_id: String,
    registration_tx: watch::Sender<Option<Registration>>,
}

impl RegistrationWatch {
    /// A watch of `key`, and the receiver of what it sees (`None` until the key is seen).
    pub fn new(
        client: Client,
        key: String,
        node_id: String,
    ) -> (RegistrationWatch, watch::Receiver<Option<Registration>>) {
        let (registration_tx, registration_rx) = watch::channel(None);
        let w = RegistrationWatch {
            client,
            key,
            node_id,
            registration_tx,
        };
        (w, registration_rx)
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        loop {
            let why = tokio::select! {
                _ = shutdown.cancelled() => return,
                why = self.session(&mut backoff) => why,
            };
            tracing::warn!(
                key = self.key,
                error = why,
                retry_in_ms = backoff.peek().as_millis() as u64,
                "watch of the server's registration broken; starting over"
            );
            backoff.wait(&shutdown).await;
        }
    }

    /// One get-then-watch session; returns why it ended.
    async fn session(&mut self, backoff: &mut Backoff) -> String {
        let got = match timeout(CALL_TIMEOUT, self.client.get(self.key.as_str(), None)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return format!("get: {e}"),
            Err(_) => return "get timed out".to_owned(),
        };
        let Some(revision) = got.header().map(|h| h.revision()) else {
            return "get answer without a header".to_owned();
        };
        self.publish(got.kvs().first());
        let opts = WatchOptions::new().with_start_revision(revision + 1);
        let mut stream = match self.client.watch(self.key.as_str(), Some(opts)).await {
            Ok(s) => s,
            Err(e) => return format!("watch: {e}"),
        };
        backoff.reset();
        loop {
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return "watch stream ended".to_owned(),
                Err(e) => return format!("watch: {e}"),
            };
            if msg.compact_revision() > 0 {
                return format!("revision compacted at {}", msg.compact_revision());
            }
            if msg.canceled() {
                return format!("watch canceled: {}", msg.cancel_reason());
            }
            for ev in msg.events() {
                match ev.event_type() {
                    EventType::Put => self.publish(ev.kv()),
                    EventType::Delete => self.publish(None),
                }
            }
        }
    }

    /// Publishes the key's state, logging when the registration appears, changes or goes.
    fn publish(&self, kv: Option<&KeyValue>) {
        let node_id = self.node_id.as_str();
        self.registration_tx.send_if_modified(|current| {
            let next = kv.map(|kv| {
                let same = current
                    .filter(|c| c.lease == kv.lease() && c.create_revision == kv.create_revision());
                Registration {
                    lease: kv.lease(),
                    create_revision: kv.create_revision(),
                    mod_revision: kv.mod_revision(),
                    seen_at: same.map_or_else(Instant::now, |c| c.seen_at),
                }
            });
            if *current == next {
                return false;
            }
            match (&*current, &next) {
                (_, Some(n)) if current.is_none_or(|c| c.lease != n.lease) => {
                    tracing::info!(
                        node_id,
                        lease = format!("{:x}", n.lease),
                        create_revision = n.create_revision,
                        "the server's own registration is present"
                    )
                }
                (Some(c), None) => {
                    tracing::info!(
                        node_id,
                        lease = format!("{:x}", c.lease),
                        "the server's registration is gone"
                    )
                }
                _ => {}
            }
            metrics::gauge!("dtable_agent_registered").set(if next.is_some() { 1.0 } else { 0.0 });
            *current = next;
            true
        });
    }
}

/// Revokes the lease of a dead server's own registration.
pub(crate) struct Watchdog {
    /// The validated configuration; its mode is `seatable`.
    pub cfg: AgentConfig,
    /// etcd.
    pub client: Client,
    /// The probe's verdicts.
    pub health_rx: watch::Receiver<Health>,
    /// The server's registration.
    pub registration_rx: watch::Receiver<Option<Registration>>,
}

impl Watchdog {
    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(
            node_id = %self.cfg.node_id,
            key = self.cfg.keys.node(&self.cfg.node_id),
            health = %self.cfg.probe.url,
            unhealthy_after = self.cfg.probe.unhealthy_after,
            "seatable mode: the server registers itself; its lease is revoked once it is judged dead"
        );
        let mut revoked: VecDeque<i64> = VecDeque::new();
        let mut absent_logged = false;
        let mut no_lease_logged = None;
        let mut backoff = Backoff::default();
        loop {
            let health = *self.health_rx.borrow_and_update();
            let registration = *self.registration_rx.borrow_and_update();
            match registration {
                None if !absent_logged => {
                    tracing::debug!(node_id = %self.cfg.node_id, "the server's registration is absent; waiting for it");
                    absent_logged = true;
                }
                None => {}
                Some(r) => {
                    absent_logged = false;
                    if r.lease == 0 && no_lease_logged != Some(r.create_revision) {
                        tracing::warn!(node_id = %self.cfg.node_id, create_revision = r.create_revision, "the server's registration has no lease; there is nothing this agent can revoke");
                        no_lease_logged = Some(r.create_revision);
                    }
                }
            }
            if let Some(r) = registration.filter(|r| due(&health, r, &revoked)) {
                match self.revoke(&health, &r).await {
                    Ok(()) => {
                        backoff.reset();
                        if revoked.len() == REMEMBERED_LEASES {
                            revoked.pop_front();
                        }
                        revoked.push_back(r.lease);
                    }
                    Err(e) => {
                        tracing::warn!(node_id = %self.cfg.node_id, lease = format!("{:x}", r.lease), error = %e, retry_in_ms = backoff.peek().as_millis() as u64, "cannot revoke the dead server's lease; retrying");
                        backoff.wait(&shutdown).await;
                        if shutdown.is_cancelled() {
                            return;
                        }
                        continue;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.health_rx.changed() => if r.is_err() { return },
                r = self.registration_rx.changed() => if r.is_err() { return },
            }
        }
    }

    /// Revokes the lease of registration `r`, logging why.
    async fn revoke(
        &self,
        health: &Health,
        r: &Registration,
    ) -> Result<(), crate::registration::RegisterError> {
        let node_id = &self.cfg.node_id;
        let lease = format!("{:x}", r.lease);
        let why = health.why_dead();
        let ttl_left = timeout(
            CALL_TIMEOUT,
            self.client.clone().lease_time_to_live(r.lease, None),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|t| t.ttl());
        tracing::warn!(%node_id, lease, lease_id = r.lease, why, ttl_left_s = ?ttl_left, "the server is dead: revoking the lease of its own registration so its buckets fail over now");
        let reason = match health.last {
            Some(Probe::Refused) => "refused",
            _ => "unhealthy",
        };
        match try_revoke(&self.client, r.lease).await? {
            Revoked::Now => {
                tracing::warn!(%node_id, lease, "revoked the dead server's lease; its registration is gone")
            }
            Revoked::AlreadyGone => {
                tracing::info!(%node_id, lease, "the dead server's lease was already gone")
            }
        }
        metrics::counter!("dtable_agent_lease_revokes_total", "mode" => "seatable", "reason" => reason)
            .increment(1);
        Ok(())
    }
}

/// Whether registration `r` is to be revoked now: the server is judged dead by a probe sent
/// after the registration was first seen, the key has a lease, and that lease was not revoked
/// already.
fn due(health: &Health, r: &Registration, revoked: &VecDeque<i64>) -> bool {
    health.state == State::Dead
        && r.lease != 0
        && !revoked.contains(&r.lease)
        && health.probed_at.is_some_and(|t| t >= r.seen_at)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn dead(probed_at: Instant, last: Probe) -> Health {
        Health {
            state: State::Dead,
            last: Some(last),
            fails: 1,
            probed_at: Some(probed_at),
        }
    }

    #[test]
    fn revokes_only_a_dead_servers_lease_once_and_after_seeing_it() {
        let seen = Instant::now();
        let r = Registration {
            lease: 7,
            create_revision: 3,
            mod_revision: 3,
            seen_at: seen,
        };
        let later = seen + Duration::from_secs(1);
        let mut revoked = VecDeque::new();
        assert!(due(&dead(later, Probe::Refused), &r, &revoked));
        let alive = Health {
            state: State::Healthy,
            ..dead(later, Probe::Ok)
        };
        assert!(!due(&alive, &r, &revoked), "never a server that answers");
        let unknown = Health {
            state: State::Unknown,
            ..dead(later, Probe::Failed)
        };
        assert!(
            !due(&unknown, &r, &revoked),
            "not yet past --unhealthy-after"
        );
        let earlier = seen.checked_sub(Duration::from_millis(1)).unwrap();
        assert!(
            !due(&dead(earlier, Probe::Refused), &r, &revoked),
            "a verdict older than the registration is not about it"
        );
        let unleased = Registration { lease: 0, ..r };
        assert!(!due(&dead(later, Probe::Refused), &unleased, &revoked));
        revoked.push_back(7);
        assert!(
            !due(&dead(later, Probe::Refused), &r, &revoked),
            "once per lease"
        );
        let next = Registration { lease: 8, ..r };
        assert!(due(&dead(later, Probe::Refused), &next, &revoked));
    }
}
