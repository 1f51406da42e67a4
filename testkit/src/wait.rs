//! Polling and port helpers, so a test waits for a condition instead of sleeping a guess.

use std::future::Future;
use std::net::TcpListener;
use std::time::Duration;

/// How often [`wait_until`] re-checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `check` every 50 ms until it returns `true`.
///
/// # Panics
/// With "timed out after {timeout:?} waiting for {what}" when `timeout` passes first.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A loopback TCP port that was free a moment ago: binds `127.0.0.1:0`, reads the port the
/// kernel chose, and releases it. Another process may take it before the caller binds it, so
/// callers that start servers should retry with a new port on failure.
///
/// # Panics
/// If no loopback port can be bound.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `count` distinct free loopback ports: all are held at once while they are picked, so no
/// two are the same. Same caveat as [`free_port`].
///
/// # Panics
/// If the ports cannot be bound.
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| {
            TcpListener::bind("127.0.0.1:0")
                .unwrap_or_else(|e| panic!("cannot bind a free loopback port: {e}"))
        })
        .collect();
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .expect("bound listener has an address")
                .port()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let mut ports = free_ports(16);
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 16);
        assert!(ports.iter().all(|&p| p != 0));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_until_returns_once_true() {
        let mut calls = 0;
        wait_until("the third call", Duration::from_secs(1), || {
            calls += 1;
            let done = calls >= 3;
            async move { done }
        })
        .await;
        assert_eq!(calls, 3);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out after 200ms waiting for nothing")]
    async fn wait_until_panics_on_timeout() {
        wait_until("nothing", Duration::from_millis(200), || async { false }).await;
    }
}
