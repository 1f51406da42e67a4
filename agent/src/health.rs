//! The health probe: `GET <health-url>` every interval. The server counts as healthy after
//! `healthy_after` successes in a row; as dead at once when the connection is refused (its
//! process is gone), and after `unhealthy_after` timeouts or error answers in a row. Every
//! mode of the agent uses the same probe and the same verdict.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Probe settings.
#[derive(Clone, Debug)]
pub struct ProbeSettings {
    /// The URL probed.
    pub url: hyper::Uri,
    /// Time between probes.
    pub interval: Duration,
    /// Time allowed for one probe.
    pub timeout: Duration,
    /// Successes in a row before the server counts as healthy.
    pub healthy_after: u32,
    /// Timeouts or error answers in a row before it counts as dead.
    pub unhealthy_after: u32,
}

/// One probe's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// 2xx.
    Ok,
    /// Connection refused: nothing listens, the process is gone.
    Refused,
    /// Timed out, or answered with an error status.
    Failed,
}

impl Probe {
    /// `ok`, `refused` or `failed`, as the metrics label it.
    pub fn name(self) -> &'static str {
        match self {
            Probe::Ok => "ok",
            Probe::Refused => "refused",
            Probe::Failed => "failed",
        }
    }
}

/// What the probes say about the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum State {
    /// Not proven either way yet: at start-up, after a failure or two short of the threshold
    /// with no healthy spell before, or answering again after being dead but not yet
    /// `healthy_after` times.
    #[default]
    Unknown,
    /// `healthy_after` successes in a row, and not dead since.
    Healthy,
    /// Judged dead: the connection was refused, or `unhealthy_after` probes in a row timed out
    /// or failed.
    Dead,
}

/// The verdict after the latest probe, as published to the agent's state machines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// The verdict.
    pub state: State,
    /// The latest probe's result; `None` before the first.
    pub last: Option<Probe>,
    /// Timed-out or failed probes in a row (a refusal counts as one).
    pub fails: u32,
    /// When the latest probe was sent, so a verdict can be told from one that predates
    /// something else the caller saw (a registration, say).
    pub probed_at: Option<Instant>,
}

impl Health {
    /// Whether the server is healthy: what a managed agent registers on.
    pub fn healthy(&self) -> bool {
        self.state == State::Healthy
    }

    /// Why the server was judged dead, for logs: `connection refused` or `N probes in a row
    /// timed out or failed`.
    pub fn why_dead(&self) -> String {
        match self.last {
            Some(Probe::Refused) => "connection refused: nothing listens".to_owned(),
            _ => format!("{} probes in a row timed out or failed", self.fails),
        }
    }
}

/// Folds probe results into the healthy/unknown/dead verdict.
#[derive(Debug, Default)]
pub struct Verdict {
    state: State,
    oks: u32,
    fails: u32,
}

impl Verdict {
    /// Starts unknown: a server must prove itself healthy, or be proven dead.
    pub fn new() -> Verdict {
        Verdict::default()
    }

    /// Takes one result; returns the verdict after it.
    pub fn take(&mut self, probe: Probe, s: &ProbeSettings) -> State {
        match probe {
            Probe::Ok => {
                self.fails = 0;
                self.oks = self.oks.saturating_add(1);
                if self.oks >= s.healthy_after {
                    self.state = State::Healthy;
                } else if self.state == State::Dead {
                    // It answers: no longer dead, not yet proven healthy.
                    self.state = State::Unknown;
                }
            }
            Probe::Refused => {
                self.oks = 0;
                self.fails = self.fails.saturating_add(1);
                self.state = State::Dead;
            }
            Probe::Failed => {
                self.oks = 0;
                self.fails = self.fails.saturating_add(1);
                if self.fails >= s.unhealthy_after {
                    self.state = State::Dead;
                }
            }
        }
        self.state
    }

    /// Failed probes in a row.
    pub fn fails(&self) -> u32 {
        self.fails
    }
}

/// Probes until `shutdown`, publishing the verdict after every probe on `health_tx`.
pub async fn run(s: ProbeSettings, health_tx: watch::Sender<Health>, shutdown: CancellationToken) {
    let client: Client<HttpConnector, Empty<Bytes>> = {
        let mut c = HttpConnector::new();
        c.set_connect_timeout(Some(s.timeout));
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build(c)
    };
    let mut verdict = Verdict::new();
    let mut tick = tokio::time::interval(s.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let probed_at = Instant::now();
        let probe = probe_once(&client, &s).await;
        metrics::counter!("dtable_agent_health_probes_total", "result" => probe.name())
            .increment(1);
        let state = verdict.take(probe, &s);
        let next = Health {
            state,
            last: Some(probe),
            fails: verdict.fails(),
            probed_at: Some(probed_at),
        };
        let before = health_tx.send_replace(next);
        if before.state != state {
            tracing::info!(healthy = next.healthy(), ?state, last_probe = ?probe, fails = next.fails, url = %s.url, "server health changed");
        }
        metrics::gauge!("dtable_agent_server_healthy").set(if next.healthy() { 1.0 } else { 0.0 });
    }
}

async fn probe_once(client: &Client<HttpConnector, Empty<Bytes>>, s: &ProbeSettings) -> Probe {
    match tokio::time::timeout(s.timeout, client.get(s.url.clone())).await {
        Ok(Ok(resp)) if resp.status().is_success() => Probe::Ok,
        Ok(Ok(_)) => Probe::Failed,
        Ok(Err(e)) if e.is_connect() => Probe::Refused,
        Ok(Err(_)) | Err(_) => Probe::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ProbeSettings {
        ProbeSettings {
            url: "http://127.0.0.1:1/ping/".parse().unwrap(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_after: 2,
            unhealthy_after: 3,
        }
    }

    #[test]
    fn thresholds() {
        let s = settings();
        let mut v = Verdict::new();
        assert_eq!(
            v.take(Probe::Ok, &s),
            State::Unknown,
            "one success is not enough"
        );
        assert_eq!(v.take(Probe::Ok, &s), State::Healthy);
        assert_eq!(
            v.take(Probe::Failed, &s),
            State::Healthy,
            "one timeout is tolerated"
        );
        assert_eq!(v.take(Probe::Failed, &s), State::Healthy);
        assert_eq!(
            v.take(Probe::Failed, &s),
            State::Dead,
            "three in a row is dead"
        );
        assert_eq!(v.fails(), 3);
        assert_eq!(
            v.take(Probe::Ok, &s),
            State::Unknown,
            "answers, not yet healthy"
        );
        assert_eq!(v.take(Probe::Ok, &s), State::Healthy);
        assert_eq!(
            v.take(Probe::Refused, &s),
            State::Dead,
            "refused is dead at once"
        );
    }

    #[test]
    fn failures_before_any_success_are_not_death_until_the_threshold() {
        let s = settings();
        let mut v = Verdict::new();
        assert_eq!(v.take(Probe::Failed, &s), State::Unknown);
        assert_eq!(v.take(Probe::Failed, &s), State::Unknown);
        assert_eq!(v.take(Probe::Failed, &s), State::Dead);
        let mut v = Verdict::new();
        assert_eq!(v.take(Probe::Refused, &s), State::Dead);
    }

    #[test]
    fn why_dead_names_the_cause() {
        let refused = Health {
            state: State::Dead,
            last: Some(Probe::Refused),
            fails: 1,
            probed_at: None,
        };
        assert!(refused.why_dead().contains("refused"));
        let slow = Health {
            last: Some(Probe::Failed),
            fails: 3,
            ..refused
        };
        assert!(slow.why_dead().contains("3 probes"), "{}", slow.why_dead());
    }
}
