//! A fault-injecting TCP proxy for one link (one node's connections to another).
//!
//! The harness puts one proxy in front of every (from, to) pair of nodes, so that network
//! faults work without root or netem: a partition in Jepsen's shapes is a set of links set to
//! `Drop` (packets silently dropped, like an iptables DROP rule: connections hang) or `Refuse`
//! (connections reset, like REJECT); one-way partitions set one direction only. A dropped
//! direction holds its bytes rather than discarding them, as TCP does: a segment a DROP rule
//! swallows is retransmitted and crosses once the rule is gone, so a request sent into a
//! partition arrives whole after the heal (or never, if its connection closes first) and a
//! frame is never torn. `delay` adds
//! latency per chunk; `loss` models packet loss the way an application sees it over TCP: a lost
//! segment is retransmitted after a retransmission timeout, so it shows up as a latency spike of
//! `rto`, never as missing bytes (dropping bytes from a TCP stream would be byte corruption,
//! which no real network produces).
//!
//! Listens on 127.0.0.1 only. Every loop ends on end of stream, error, or shutdown.

use crate::sim::Rng;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What happens to traffic in one direction of a link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Forwarded (with `delay`/`loss`).
    Pass,
    /// Nothing crosses: connections stay open and hang, and what was sent waits to cross
    /// at the heal (TCP retransmission).
    Drop,
    /// Connections are reset, new ones are closed at once.
    Refuse,
}

/// Faults of one direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Direction {
    pub mode: Mode,
    pub delay: Duration,
    /// Probability that a chunk suffers a retransmission timeout.
    pub loss: f64,
    pub rto: Duration,
}

impl Default for Direction {
    fn default() -> Self {
        Direction {
            mode: Mode::Pass,
            delay: Duration::ZERO,
            loss: 0.0,
            rto: Duration::from_millis(200),
        }
    }
}

/// Faults of a link: `forward` is client to upstream, `backward` upstream to client.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkFaults {
    pub forward: Direction,
    pub backward: Direction,
}

impl LinkFaults {
    /// Both directions healthy.
    pub fn healed() -> LinkFaults {
        LinkFaults::default()
    }
    /// Both directions in `mode` (a two-way partition when `Drop` or `Refuse`).
    pub fn both(mode: Mode) -> LinkFaults {
        let d = Direction {
            mode,
            ..Direction::default()
        };
        LinkFaults {
            forward: d,
            backward: d,
        }
    }
}

/// A running proxy. Dropping the handle does not stop it; call `shutdown`.
pub struct Proxy {
    pub local_addr: SocketAddr,
    faults: watch::Sender<LinkFaults>,
    stop: watch::Sender<bool>,
}

impl Proxy {
    /// Listens on an ephemeral 127.0.0.1 port and forwards each connection to `upstream`.
    /// `seed` makes loss decisions reproducible.
    pub async fn start(upstream: SocketAddr, seed: u64) -> io::Result<Proxy> {
        Proxy::start_patient(upstream, seed, Duration::ZERO).await
    }

    /// As [`Proxy::start`], but a connection whose upstream refuses keeps retrying the upstream
    /// for up to `patience` before it is closed. The proxy accepts before the upstream does, so
    /// a peer that would have seen "connection refused" and retried (a ZooKeeper follower
    /// dialling a leader that has not opened its quorum port yet) would otherwise see an
    /// accepted connection close at once, which it treats as a failure of the leader.
    pub async fn start_patient(
        upstream: SocketAddr,
        seed: u64,
        patience: Duration,
    ) -> io::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let local_addr = listener.local_addr()?;
        let (faults, faults_rx) = watch::channel(LinkFaults::healed());
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(accept_loop(
            listener, upstream, seed, patience, faults_rx, stop_rx,
        ));
        Ok(Proxy {
            local_addr,
            faults,
            stop,
        })
    }

    /// Changes the link's faults; applies to open connections at once.
    pub fn set(&self, f: LinkFaults) {
        self.faults.send_replace(f);
    }

    pub fn faults(&self) -> LinkFaults {
        *self.faults.borrow()
    }

    /// Stops accepting and closes every connection.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    seed: u64,
    patience: Duration,
    faults: watch::Receiver<LinkFaults>,
    mut stop: watch::Receiver<bool>,
) {
    let conns = Arc::new(AtomicU64::new(0));
    while !*stop.borrow() {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        let Ok((client, _)) = accepted else {
            // e.g. out of file descriptors: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if faults.borrow().forward.mode == Mode::Refuse
            || faults.borrow().backward.mode == Mode::Refuse
        {
            let _ = client.set_zero_linger(); // RST, like REJECT
            drop(client);
            continue;
        }
        let n = conns.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(
            client,
            upstream,
            seed ^ n,
            patience,
            faults.clone(),
            stop.clone(),
        ));
    }
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    seed: u64,
    patience: Duration,
    faults: watch::Receiver<LinkFaults>,
    stop: watch::Receiver<bool>,
) {
    // A connection accepted across a dropped link reaches its upstream only at the heal, as a
    // SYN a DROP rule swallows is retried: the upstream never sees a peer it cannot hear.
    if !held(|f| f.forward, &mut faults.clone(), &mut stop.clone()).await {
        return;
    }
    let give_up = tokio::time::Instant::now() + patience;
    let server = loop {
        match TcpStream::connect(upstream).await {
            Ok(s) => break s,
            Err(_) if tokio::time::Instant::now() < give_up && !*stop.borrow() => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => return,
        }
    };
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let fwd = pump(
        cr,
        sw,
        |f| f.forward,
        Rng::new(seed),
        faults.clone(),
        stop.clone(),
    );
    let bwd = tokio::spawn(pump(sr, cw, |f| f.backward, Rng::new(!seed), faults, stop));
    // TCP half-close, as a real network carries it: when the client's side ends (it closed, or
    // its process died), what the proxy already read from it is still delivered upstream
    // (after its delay) and only then is the upstream's side shut down; the upstream's answer
    // or close ends the backward direction. An ending backward direction (the upstream
    // closed, or the dead client cannot take an answer) never cancels bytes the forward one
    // still holds: a delayed request from a killed client reaches its server late, as it
    // would through a slow router.
    fwd.await;
    let _ = tokio::time::timeout(HALF_CLOSED_LINGER, bwd).await;
}

/// How long a connection whose client side ended waits for the upstream to answer or close.
const HALF_CLOSED_LINGER: Duration = Duration::from_secs(30);

/// Waits while the direction `dir` is dropped. False when the link refuses or the proxy
/// stops meanwhile (the connection ends), true once the direction passes again.
async fn held(
    dir: fn(&LinkFaults) -> Direction,
    faults: &mut watch::Receiver<LinkFaults>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        if *stop.borrow() {
            return false;
        }
        match dir(&faults.borrow_and_update()).mode {
            Mode::Pass => return true,
            Mode::Refuse => return false,
            Mode::Drop => {}
        }
        tokio::select! {
            c = faults.changed() => if c.is_err() { return false; },
            _ = stop.changed() => return false,
        }
    }
}

/// Copies one direction, applying its faults, until end of stream (then shuts the writing side
/// down), error, `Refuse` or stop. A chunk read before the end is written before it. While the
/// direction is dropped nothing is read, so the sender's bytes wait in its socket buffer (and
/// a full buffer blocks it, as a partition's unacknowledged window does); a chunk read just
/// before the drop waits for the heal.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    dir: fn(&LinkFaults) -> Direction,
    mut rng: Rng,
    mut faults: watch::Receiver<LinkFaults>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !held(dir, &mut faults, &mut stop).await {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    // End of stream: pass the half-close on (every byte read was written).
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            c = faults.changed() => {
                if c.is_err() { return; }
                continue;
            }
            _ = stop.changed() => return,
        };
        if !held(dir, &mut faults, &mut stop).await {
            return;
        }
        let d = dir(&faults.borrow());
        let mut wait = d.delay;
        if d.loss > 0.0 && rng.chance(d.loss) {
            wait += d.rto;
        }
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {},
                _ = stop.changed() => return,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
