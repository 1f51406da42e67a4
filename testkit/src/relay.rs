//! A TCP fault relay: sits between a process and a server on loopback so a test can cut the
//! link (every connection closed, new ones refused), blackhole it (connections stay open but
//! nothing gets through, as across a silent partition), delay it, and heal it again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the relay does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    /// Pass everything through.
    Open,
    /// Hold every byte until the mode changes; connections stay open.
    Blackhole,
    /// Pass everything through after this delay per chunk.
    Delay(Duration),
}

/// A running relay from a loopback port to `target`. Dropping it stops it.
pub struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Bumped on every cut, so live connections notice and close.
    generation_tx: watch::Sender<u64>,
    mode_tx: watch::Sender<LinkMode>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Starts relaying connections on a free loopback port to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay port");
        let addr = listener.local_addr().expect("relay address");
        let cut = Arc::new(AtomicBool::new(false));
        let (generation_tx, generation_rx) = watch::channel(0u64);
        let (mode_tx, mode_rx) = watch::channel(LinkMode::Open);
        let task = tokio::spawn(accept_loop(
            listener,
            target,
            cut.clone(),
            generation_rx,
            mode_rx,
        ));
        Relay {
            addr,
            cut,
            generation_tx,
            mode_tx,
            task,
        }
    }

    /// The address clients should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every relayed connection and refuses new ones until [`Relay::heal`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation_tx.send_modify(|g| *g += 1);
    }

    /// Holds all traffic (connections stay open) until [`Relay::heal`].
    pub fn blackhole(&self) {
        self.mode_tx.send_replace(LinkMode::Blackhole);
    }

    /// Delays every chunk by `delay` until [`Relay::heal`].
    pub fn delay(&self, delay: Duration) {
        self.mode_tx.send_replace(LinkMode::Delay(delay));
    }

    /// Lets connections and traffic through again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.mode_tx.send_replace(LinkMode::Open);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    cut: Arc<AtomicBool>,
    generation_rx: watch::Receiver<u64>,
    mode_rx: watch::Receiver<LinkMode>,
) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        if cut.load(Ordering::SeqCst) {
            drop(inbound);
            continue;
        }
        let mut gen_rx = generation_rx.clone();
        gen_rx.mark_unchanged();
        let mode_rx = mode_rx.clone();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_r, in_w) = inbound.into_split();
            let (out_r, out_w) = outbound.into_split();
            tokio::select! {
                _ = pump(in_r, out_w, mode_rx.clone()) => {}
                _ = pump(out_r, in_w, mode_rx) => {}
                _ = gen_rx.changed() => {}
            }
        });
    }
}

/// Copies one direction, obeying the link mode before every chunk.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode_rx: watch::Receiver<LinkMode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            let mode = *mode_rx.borrow_and_update();
            match mode {
                LinkMode::Open => break,
                LinkMode::Delay(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                LinkMode::Blackhole => {
                    if mode_rx.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
