//! The broker's test-only control endpoint (`kcheck broker --test-control 127.0.0.1:PORT`),
//! used by `kcheck replay --against cluster` to turn a model counterexample into a
//! deterministic schedule on real processes (issue 9).
//!
//! Some model steps cannot be forced from outside a broker: "b2 fetches once from the
//! leader" must happen exactly once, and "b1 has fetched offset 1 but not yet the HW" must
//! stay true while another broker shuts down. The endpoint holds and releases the IO layer's
//! own steps — a replica fetcher's rounds, the sending of AlterPartition — and reports each
//! partition's LEO, HW, leader epoch and epoch cache so the replayer can wait for a
//! condition instead of sleeping. The hold points are gates the tokio adapters pass before
//! doing IO ([`Gate::pass`]); the sans-IO protocol cores never see them.
//!
//! A broker starts with its fetcher held ([`TestControl::fetcher_held`]). Off unless the flag
//! is given, and only on a loopback address: anyone who can reach it
//! can stop the broker's replication.
//!
//! The protocol is one line per request and one line per answer over TCP:
//!
//! | request | answer |
//! |---|---|
//! | `hold fetcher` / `hold alter-partition` / `hold follower-fetch` | `ok` — from now on the gate lets nothing pass (`follower-fetch`: followers' Fetch requests on this leader, held after they were read, before they are handled) |
//! | `release fetcher` / `release alter-partition` | `ok` — the gate is open |
//! | `step fetcher N` / `step alter-partition N` | `ok {"completed":K}` once N more rounds completed (or after 10 s, with the count so far) |
//! | `state` | `ok {JSON}`: per partition role, leader epoch, LEO, HW, epoch cache, the log's bytes |
//!
//! Anything else is answered `error ...` naming the known commands.

use crate::server::Shared;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// How long a `step` waits for its rounds before answering with what completed.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest request line accepted.
const MAX_LINE_BYTES: usize = 256;
/// The most log bytes `state` returns per partition (replays produce a handful of records).
const STATE_LOG_MAX_BYTES: usize = 1 << 20;

/// One hold point: open (every round passes), or held with a number of rounds granted.
#[derive(Default)]
pub struct Gate {
    state: Mutex<GateState>,
    changed: Notify,
}

#[derive(Default, Debug, Clone, Copy)]
struct GateState {
    held: bool,
    /// Rounds granted by `step` that have not completed yet.
    granted: u64,
    /// Rounds completed since the broker started (held or not).
    completed: u64,
    /// Rounds waiting at the gate now.
    waiting: u64,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until a round may start: the gate is open or a granted round is left. The
    /// round is counted when [`Gate::done`] is called, so a round that fails (a reset
    /// connection) and is retried does not use up the grant.
    pub async fn pass(&self) {
        let mut waiting = false;
        loop {
            let notified = self.changed.notified();
            {
                let mut s = self.lock();
                if !s.held || s.granted > 0 {
                    if waiting {
                        s.waiting -= 1;
                    }
                    return;
                }
                if !waiting {
                    s.waiting += 1;
                    waiting = true;
                }
            }
            notified.await;
        }
    }

    /// A round that passed the gate completed (its response was applied).
    pub fn done(&self) {
        let mut s = self.lock();
        s.completed += 1;
        s.granted = s.granted.saturating_sub(1);
        drop(s);
        self.changed.notify_waiters();
    }

    /// Whether rounds pass only when stepped.
    pub fn is_held(&self) -> bool {
        self.lock().held
    }

    pub fn hold(&self) {
        let mut s = self.lock();
        s.held = true;
        s.granted = 0;
    }

    pub fn release(&self) {
        self.lock().held = false;
        self.changed.notify_waiters();
    }

    /// Grants `rounds` more rounds (the gate stays held) and waits until they completed or
    /// `timeout` passed; returns the rounds completed meanwhile.
    pub async fn step(&self, rounds: u64, timeout: Duration) -> u64 {
        let start = {
            let mut s = self.lock();
            s.granted += rounds;
            s.completed
        };
        self.changed.notify_waiters();
        let wait = async {
            loop {
                let notified = self.changed.notified();
                if self.lock().completed >= start + rounds {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        let mut s = self.lock();
        let completed = s.completed - start;
        if completed < rounds {
            // Do not leave a grant behind to fire later, out of the replayer's order.
            s.granted = 0;
        }
        completed
    }
}

/// The broker's hold points.
#[derive(Default)]
pub struct TestControl {
    /// Every replica fetcher of this broker (one round = one Fetch answered and applied).
    pub fetcher: Gate,
    /// AlterPartition requests this broker sends as a leader (one round = one answer).
    pub alter_partition: Gate,
    /// Followers' Fetch requests this broker handles as a leader, held after they were read
    /// and before they are handled (one round = one Fetch handled). Open at start.
    pub follower_fetch: Gate,
}

impl TestControl {
    /// What a broker started with `--test-control` begins with: its replica fetcher held, so
    /// a follower copies nothing until the replayer steps it (a restarted broker must not
    /// fetch ahead of the schedule before the replayer reconnects); AlterPartition open.
    pub fn fetcher_held() -> Self {
        let c = TestControl::default();
        c.fetcher.hold();
        c
    }

    fn gate(&self, name: &str) -> Option<&Gate> {
        match name {
            "fetcher" => Some(&self.fetcher),
            "alter-partition" => Some(&self.alter_partition),
            "follower-fetch" => Some(&self.follower_fetch),
            _ => None,
        }
    }
}

/// Refuses a non-loopback control address: the endpoint has no authentication.
pub fn parse_addr(addr: &str) -> Result<std::net::SocketAddr, String> {
    let a: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| format!("bad --test-control {addr:?}: {e} (want 127.0.0.1:PORT)"))?;
    if !a.ip().is_loopback() {
        return Err(format!(
            "--test-control {addr} is not a loopback address: the test control endpoint can stop replication, so it only listens on 127.0.0.0/8 or ::1"
        ));
    }
    Ok(a)
}

/// One partition as `state` reports it.
#[derive(Debug, Serialize)]
struct PartitionView {
    topic: String,
    partition: i32,
    /// `leader`, `follower` or `none`.
    role: &'static str,
    leader: Option<i32>,
    leader_epoch: i32,
    isr: Vec<i32>,
    log_start_offset: i64,
    log_end_offset: i64,
    high_watermark: i64,
    /// (leader epoch, start offset) pairs: the leader-epoch checkpoint (KIP-101).
    epochs: Vec<(i32, i64)>,
    /// The log's record batches from the log start to the LEO, hex-encoded.
    log_hex: String,
}

#[derive(Debug, Serialize)]
struct StateView {
    node_id: i32,
    fetcher_rounds: u64,
    alter_partition_rounds: u64,
    /// Followers' Fetch requests held at the `follower-fetch` gate now.
    follower_fetch_waiting: u64,
    partitions: Vec<PartitionView>,
}

fn state_json(shared: &Shared, control: &TestControl) -> String {
    let b = shared.lock();
    let mut partitions = Vec::new();
    for (name, t) in &b.topics {
        for r in &t.partitions {
            let s = &r.state;
            let role = if s.is_leader() {
                "leader"
            } else if s.following().is_some() {
                "follower"
            } else {
                "none"
            };
            let bytes = match r.log.read(
                r.log.log_start_offset(),
                STATE_LOG_MAX_BYTES,
                r.log.log_end_offset(),
            ) {
                Ok(crate::log::ReadResult::Records(d)) => d,
                _ => Vec::new(),
            };
            partitions.push(PartitionView {
                topic: name.clone(),
                partition: s.partition,
                role,
                leader: s.leader,
                leader_epoch: s.leader_epoch,
                isr: s.isr.clone(),
                log_start_offset: s.log_start_offset,
                log_end_offset: s.log_end_offset,
                high_watermark: s.high_watermark,
                epochs: r.log.epochs().entries.clone(),
                log_hex: bytes.iter().map(|x| format!("{x:02x}")).collect(),
            });
        }
    }
    let view = StateView {
        node_id: b.config.node_id,
        fetcher_rounds: control.fetcher.lock().completed,
        alter_partition_rounds: control.alter_partition.lock().completed,
        follower_fetch_waiting: control.follower_fetch.lock().waiting,
        partitions,
    };
    serde_json::to_string(&view).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

async fn answer(line: &str, shared: &Shared, control: &TestControl) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let unknown_gate = |g: &str| {
        format!("error unknown hold point {g:?} (known: fetcher, alter-partition, follower-fetch)")
    };
    match words.as_slice() {
        ["state"] => format!("ok {}", state_json(shared, control)),
        ["hold", g] => match control.gate(g) {
            Some(gate) => {
                gate.hold();
                "ok".into()
            }
            None => unknown_gate(g),
        },
        ["release", g] => match control.gate(g) {
            Some(gate) => {
                gate.release();
                "ok".into()
            }
            None => unknown_gate(g),
        },
        ["step", g, n] => match (control.gate(g), n.parse::<u64>()) {
            (Some(gate), Ok(n)) if (1..=100).contains(&n) => {
                let completed = gate.step(n, STEP_TIMEOUT).await;
                format!("ok {{\"completed\":{completed}}}")
            }
            (None, _) => unknown_gate(g),
            _ => format!("error bad round count {n:?} (want 1..=100)"),
        },
        _ => format!(
            "error unknown command {line:?} (known: state, hold|release fetcher|alter-partition, step fetcher|alter-partition N)"
        ),
    }
}

/// One connection of a line-based control endpoint: a request line in, an answer line out,
/// until the peer closes. An over-long or unterminated line is answered with an error and the
/// connection is closed (its rest cannot be parsed).
async fn serve_connection<F, Fut>(stream: TcpStream, answer: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut rd)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_line(&mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let too_long = line.len() > MAX_LINE_BYTES || !line.ends_with('\n');
        let reply = if too_long {
            "error request line too long or unterminated".to_string()
        } else {
            answer(line.trim().to_string()).await
        };
        if wr.write_all(format!("{reply}\n").as_bytes()).await.is_err() || too_long {
            return;
        }
    }
}

/// Serves a line-based control endpoint (the broker's and the controller's) until the process
/// stops: every connection in a task of its own, `answer` for each request line.
pub async fn serve_lines<F, Fut>(listener: TcpListener, what: &'static str, answer: F)
where
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = String> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, answer.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "{what}: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves the control endpoint until the broker stops.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, control: Arc<TestControl>) {
    serve_lines(listener, "test control", move |line| {
        let (shared, control) = (shared.clone(), control.clone());
        async move { answer(&line, &shared, &control).await }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_accepted() {
        assert!(parse_addr("127.0.0.1:7000").is_ok());
        assert!(parse_addr("[::1]:7000").is_ok());
        let e = parse_addr("0.0.0.0:7000").unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        assert!(parse_addr("localhost")
            .unwrap_err()
            .contains("127.0.0.1:PORT"));
    }

    #[tokio::test]
    async fn a_control_connection_answers_lines_and_closes_on_an_overlong_one() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_lines(listener, "test", |line| async move {
            format!("ok {line}")
        }));
        let stream = TcpStream::connect(addr).await.unwrap();
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        let mut answer = String::new();
        wr.write_all(b"state\n").await.unwrap();
        rd.read_line(&mut answer).await.unwrap();
        assert_eq!(answer, "ok state\n");
        // Longer than MAX_LINE_BYTES: an error, then the server closes the connection.
        let long = format!("{}\n", "x".repeat(MAX_LINE_BYTES + 10));
        wr.write_all(long.as_bytes()).await.unwrap();
        answer.clear();
        rd.read_line(&mut answer).await.unwrap();
        assert!(
            answer.starts_with("error request line too long"),
            "{answer}"
        );
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the connection is closed after the error");
        server.abort();
    }

    #[tokio::test]
    async fn a_held_gate_passes_exactly_the_granted_rounds() {
        let gate = Arc::new(Gate::default());
        gate.hold();
        let g = gate.clone();
        // A stand-in fetcher: passes the gate, completes a round, repeats.
        let fetcher = tokio::spawn(async move {
            loop {
                g.pass().await;
                g.done();
                tokio::task::yield_now().await;
            }
        });
        assert_eq!(gate.step(2, Duration::from_secs(5)).await, 2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Held again: nothing ran after the two granted rounds.
        assert_eq!(gate.lock().completed, 2);
        gate.release();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(gate.lock().completed > 2, "an open gate lets rounds run");
        fetcher.abort();
    }

    #[tokio::test]
    async fn a_step_nobody_takes_times_out_and_leaves_no_grant() {
        let gate = Gate::default();
        gate.hold();
        assert_eq!(gate.step(1, Duration::from_millis(50)).await, 0);
        assert_eq!(gate.lock().granted, 0);
    }
}
