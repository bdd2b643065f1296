//! `kcheck bench-quorum`: controller failover time of a 3-voter KRaft quorum of real processes
//! on 127.0.0.1. Each trial stops the active controller — `kill -9` (the survivors notice by
//! their fetch timeout, then pre-vote and vote) or SIGTERM (graceful resignation with
//! EndQuorumEpoch) — and measures the time until both survivors report the same new leader in
//! DescribeQuorum; the stopped node is restarted from its data directory before the next trial.

use crate::client::Client;
use kafka_protocol::messages::DescribeQuorumRequest;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct BenchQuorumConfig {
    pub data_dir: PathBuf,
    pub trials: usize,
    pub election_timeout_ms: u64,
    pub base_port: u16,
}

struct Controllers {
    exe: PathBuf,
    cfg: BenchQuorumConfig,
    voters: String,
    children: Vec<Option<Child>>,
}

impl Controllers {
    fn port(&self, i: usize) -> u16 {
        self.cfg.base_port + i as u16
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let child = Command::new(&self.exe)
            .args([
                "broker",
                "--node-id",
                &(i + 1).to_string(),
                "--process-roles",
                "controller",
                "--controller-listen",
                &format!("127.0.0.1:{}", self.port(i)),
                "--controller-quorum-voters",
                &self.voters,
                "--election-timeout-ms",
                &self.cfg.election_timeout_ms.to_string(),
                "--data-dir",
                self.cfg
                    .data_dir
                    .join(format!("c{}", i + 1))
                    .to_str()
                    .unwrap_or("."),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// (leader, epoch) as node `i` reports it.
    fn describe(&self, i: usize) -> Option<(i32, i32)> {
        let mut c = Client::connect(&format!("127.0.0.1:{}", self.port(i))).ok()?;
        c.stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .ok()?;
        let r = c.request(0, &DescribeQuorumRequest::default()).ok()?;
        let p = r.topics.first()?.partitions.first()?;
        (p.leader_id.0 >= 0).then_some((p.leader_id.0, p.leader_epoch))
    }

    /// Waits until every live node reports the same leader with an epoch above `after`.
    fn agreed_leader(&self, after: i32, timeout: Duration) -> anyhow::Result<(i32, i32)> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let live: Vec<usize> = (0..3).filter(|i| self.children[*i].is_some()).collect();
            let views: Vec<Option<(i32, i32)>> = live.iter().map(|i| self.describe(*i)).collect();
            if let Some(Some(first)) = views.first() {
                if first.1 > after && views.iter().all(|v| *v == Some(*first)) {
                    return Ok(*first);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        anyhow::bail!("no agreed leader above epoch {after} within {timeout:?}")
    }
}

impl Drop for Controllers {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn summary(name: &str, ms: &mut [f64]) {
    if ms.is_empty() {
        return;
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{name}: {} trials, failover min {:.0} ms, median {:.0} ms, max {:.0} ms",
        ms.len(),
        ms[0],
        ms[ms.len() / 2],
        ms[ms.len() - 1]
    );
}

pub fn run(cfg: &BenchQuorumConfig) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(&cfg.data_dir);
    std::fs::create_dir_all(&cfg.data_dir)?;
    let voters = (0..3)
        .map(|i| format!("{}@127.0.0.1:{}", i + 1, cfg.base_port + i as u16))
        .collect::<Vec<_>>()
        .join(",");
    let mut q = Controllers {
        exe: std::env::current_exe()?,
        cfg: cfg.clone(),
        voters,
        children: vec![None, None, None],
    };
    for i in 0..3 {
        q.spawn(i)?;
    }
    let long = Duration::from_secs(30);
    let (mut leader, mut epoch) = q.agreed_leader(0, long)?;
    println!(
        "bench-quorum: 3 controllers on 127.0.0.1:{}-{}, election timeout {} ms, fetch timeout {} ms",
        cfg.base_port,
        cfg.base_port + 2,
        cfg.election_timeout_ms,
        2 * cfg.election_timeout_ms
    );
    let (mut kill9, mut term) = (Vec::new(), Vec::new());
    for t in 0..cfg.trials * 2 {
        let graceful = t % 2 == 1;
        let i = (leader - 1) as usize;
        let mut child = q.children[i].take().expect("leader process is running");
        let stopped = Instant::now();
        if graceful {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        } else {
            let _ = child.kill();
        }
        let (next, next_epoch) = q.agreed_leader(epoch, long)?;
        let ms = stopped.elapsed().as_secs_f64() * 1000.0;
        let _ = child.wait();
        println!(
            "  {} leader {leader} (epoch {epoch}) -> leader {next} (epoch {next_epoch}): {ms:.0} ms",
            if graceful { "SIGTERM" } else { "kill -9" }
        );
        if graceful { &mut term } else { &mut kill9 }.push(ms);
        q.spawn(i)?;
        let (l, e) = q.agreed_leader(next_epoch - 1, long)?;
        (leader, epoch) = (l, e);
    }
    summary("kill -9 (fetch timeout, pre-vote, vote)", &mut kill9);
    summary("SIGTERM (EndQuorumEpoch)", &mut term);
    Ok(())
}
