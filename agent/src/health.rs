//! The health probe: `GET <health-url>` every interval. The server counts as healthy after
//! `healthy_after` successes in a row; as dead at once when the connection is refused (its
//! process is gone), and after `unhealthy_after` timeouts or error answers in a row.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
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

/// Folds probe results into the healthy/dead verdict.
#[derive(Debug)]
pub struct Verdict {
    healthy: bool,
    oks: u32,
    fails: u32,
}

impl Verdict {
    /// Starts dead: a server must prove itself first.
    pub fn new() -> Verdict {
        Verdict {
            healthy: false,
            oks: 0,
            fails: 0,
        }
    }

    /// Takes one result; returns the verdict after it.
    pub fn take(&mut self, probe: Probe, s: &ProbeSettings) -> bool {
        match probe {
            Probe::Ok => {
                self.fails = 0;
                self.oks = self.oks.saturating_add(1);
                if self.oks >= s.healthy_after {
                    self.healthy = true;
                }
            }
            Probe::Refused => {
                self.oks = 0;
                self.fails = self.fails.saturating_add(1);
                self.healthy = false;
            }
            Probe::Failed => {
                self.oks = 0;
                self.fails = self.fails.saturating_add(1);
                if self.fails >= s.unhealthy_after {
                    self.healthy = false;
                }
            }
        }
        self.healthy
    }
}

impl Default for Verdict {
    fn default() -> Self {
        Self::new()
    }
}

/// Probes until `shutdown`, publishing the verdict on `healthy_tx`.
pub async fn run(s: ProbeSettings, healthy_tx: watch::Sender<bool>, shutdown: CancellationToken) {
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
        let probe = probe_once(&client, &s).await;
        metrics::counter!("dtable_agent_health_probes_total", "result" => match probe {
            Probe::Ok => "ok",
            Probe::Refused => "refused",
            Probe::Failed => "failed",
        })
        .increment(1);
        let healthy = verdict.take(probe, &s);
        healthy_tx.send_if_modified(|h| {
            let changed = *h != healthy;
            if changed {
                tracing::info!(healthy, last_probe = ?probe, url = %s.url, "server health changed");
            }
            *h = healthy;
            changed
        });
        metrics::gauge!("dtable_agent_server_healthy").set(if healthy { 1.0 } else { 0.0 });
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
        assert!(!v.take(Probe::Ok, &s), "one success is not enough");
        assert!(v.take(Probe::Ok, &s));
        assert!(v.take(Probe::Failed, &s), "one timeout is tolerated");
        assert!(v.take(Probe::Failed, &s));
        assert!(!v.take(Probe::Failed, &s), "three in a row is dead");
        assert!(!v.take(Probe::Ok, &s));
        assert!(v.take(Probe::Ok, &s));
        assert!(!v.take(Probe::Refused, &s), "refused is dead at once");
    }
}
