//! Polling and port helpers, so a test waits for a condition instead of sleeping a guess.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;

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

/// A loopback TCP port that was free a moment ago, for a server the caller is about to start.
/// See [`free_ports`].
///
/// # Panics
/// If no loopback port can be bound.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `count` distinct loopback ports that were free a moment ago; all are held at once while
/// they are picked, so no two are the same.
///
/// They are picked at random below the kernel's ephemeral range (`ip_local_port_range`),
/// where every outgoing connection and every bind to port 0 takes its local port: a port
/// from that range can be taken by any connection some other test opens between this pick
/// and the server's bind, which then fails with "address already in use". Below it, and
/// never handed out twice in one process, only another test process picking the same port
/// at random could take it first. Where no room is left below the range, the kernel picks
/// (bind to port 0).
///
/// # Panics
/// If the ports cannot be bound.
pub fn free_ports(count: usize) -> Vec<u16> {
    let held = below_ephemeral(count).unwrap_or_else(|| {
        (0..count)
            .map(|_| {
                TcpListener::bind("127.0.0.1:0")
                    .unwrap_or_else(|e| panic!("cannot bind a free loopback port: {e}"))
            })
            .collect()
    });
    held.iter()
        .map(|l| {
            l.local_addr()
                .expect("bound listener has an address")
                .port()
        })
        .collect()
}

/// Lowest port [`free_ports`] picks from.
const PICK_FROM: u16 = 10_000;

/// `count` listeners on random ports in `PICK_FROM..` up to the ephemeral range; `None` when
/// the range leaves fewer than 1,000 ports below it, or too many of them are taken.
fn below_ephemeral(count: usize) -> Option<Vec<TcpListener>> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let ephemeral_from: u16 = range.split_whitespace().next()?.parse().ok()?;
    if ephemeral_from < PICK_FROM + 1_000 {
        return None;
    }
    let mut rng = rand::rng();
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let mut held: Vec<TcpListener> = Vec::with_capacity(count);
    for _ in 0..count * 20 {
        if held.len() == count {
            break;
        }
        let port = rng.random_range(PICK_FROM..ephemeral_from);
        if given.contains(&port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    if held.len() < count {
        return None;
    }
    given.extend(
        held.iter()
            .filter_map(|l| l.local_addr().ok())
            .map(|a| a.port()),
    );
    Some(held)
}

/// Every port [`free_ports`] handed out in this process: none is handed out twice, so two
/// servers a test starts one after the other never get the same port, even when the first
/// has not bound its port yet.
static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_below_the_ephemeral_range() {
        let mut ports = free_ports(16);
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 16);
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        let ephemeral_from: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
        if ephemeral_from >= PICK_FROM + 1_000 {
            assert!(
                ports
                    .iter()
                    .all(|&p| (PICK_FROM..ephemeral_from).contains(&p)),
                "{ports:?} not in {PICK_FROM}..{ephemeral_from}"
            );
            let again = free_ports(16);
            assert!(
                again.iter().all(|p| !ports.contains(p)),
                "a port was handed out twice"
            );
        } else {
            assert!(ports.iter().all(|&p| p != 0));
        }
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
