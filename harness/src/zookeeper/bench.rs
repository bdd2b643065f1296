//! `kcheck bench-zookeeper`: how long a real three-server ZooKeeper ensemble takes to fail over
//! when its leader is killed with SIGKILL, measured over repeated trials (a measurement, never
//! a test assertion).
//!
//! Each trial: with all three servers serving, kill -9 the leader, then measure
//! - **election**: until a new leader and a majority answer `srvr` as leader/follower (polled
//!   every 20 ms, so figures are ±20 ms);
//! - **first write**: until a client session connected to every server completes a `setData`
//!   again (its writes are retried every 10 ms with a 500 ms timeout): what an application
//!   sees, including the client's reconnection.
//!
//! The killed server is restarted and waited for as a follower before the next trial.

use kcheck_reference::zk_ensemble::{ZkEnsemble, ZkEnsembleSpec, ZkMode};
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zookeeper_client as zk;

#[derive(Debug, Clone, Serialize)]
pub struct FailoverTrial {
    pub killed_leader: u32,
    pub new_leader: u32,
    pub election_ms: f64,
    /// `None` when no write succeeded within the trial's limit.
    pub first_write_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub p90_ms: f64,
}

/// Median, min, max and 90th percentile (nearest rank) of `xs`; `None` when empty.
pub fn spread(xs: &[f64]) -> Option<Spread> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    Some(Spread {
        median_ms: median,
        min_ms: v[0],
        max_ms: v[v.len() - 1],
        p90_ms: rank(0.9),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    pub servers: usize,
    pub tick_time_ms: u32,
    pub sync_limit: u32,
    pub trials: Vec<FailoverTrial>,
    pub election: Option<Spread>,
    pub first_write: Option<Spread>,
}

/// Runs `trials` failovers on a fresh ensemble under `dir`.
pub fn failover(trials: usize, dir: &Path) -> anyhow::Result<FailoverReport> {
    anyhow::ensure!(
        (1..=100).contains(&trials),
        "--trials must be 1..=100, got {trials}"
    );
    let spec = ZkEnsembleSpec::new(3, dir);
    let mut ensemble = ZkEnsemble::launch(spec.clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cs = ensemble.connect_string();
    let client = rt.block_on(async {
        let c = zk::Client::connector()
            .with_session_timeout(Duration::from_secs(4))
            .connect(&cs)
            .await?;
        let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        match c.create("/kcheck-bench", b"0", &opts).await {
            Ok(_) | Err(zk::Error::NodeExists) => Ok::<_, zk::Error>(c),
            Err(e) => Err(e),
        }
    })?;
    let mut out = Vec::new();
    for _ in 0..trials {
        let leader = ensemble.wait_serving(Duration::from_secs(60))?;
        // The writer: retries until a write that started after the kill completes.
        let killed_at_ns = Arc::new(AtomicU64::new(0));
        let first_ok_ns = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let base = Instant::now();
        let writer = {
            let (client, killed_at_ns, first_ok_ns, stop) = (
                client.clone(),
                killed_at_ns.clone(),
                first_ok_ns.clone(),
                stop.clone(),
            );
            rt.spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let started = base.elapsed().as_nanos() as u64;
                    let w = client.set_data("/kcheck-bench", b"x", None);
                    let ok = matches!(
                        tokio::time::timeout(Duration::from_millis(500), w).await,
                        Ok(Ok(_))
                    );
                    let killed = killed_at_ns.load(Ordering::SeqCst);
                    if ok && killed > 0 && started >= killed {
                        first_ok_ns.store(base.elapsed().as_nanos() as u64, Ordering::SeqCst);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        killed_at_ns.store(base.elapsed().as_nanos() as u64, Ordering::SeqCst);
        ensemble.kill(leader)?;
        let t0 = Instant::now();
        let new_leader = ensemble.wait_new_leader(leader, Duration::from_secs(60))?;
        let election_ms = t0.elapsed().as_secs_f64() * 1e3;
        let deadline = Instant::now() + Duration::from_secs(30);
        while first_ok_ns.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::SeqCst);
        let _ = rt.block_on(writer);
        let ok = first_ok_ns.load(Ordering::SeqCst);
        let first_write_ms =
            (ok > 0).then(|| (ok - killed_at_ns.load(Ordering::SeqCst)) as f64 / 1e6);
        out.push(FailoverTrial {
            killed_leader: leader,
            new_leader,
            election_ms,
            first_write_ms,
        });
        ensemble.restart(leader)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while ensemble.mode(leader) != ZkMode::Follower {
            anyhow::ensure!(
                Instant::now() < deadline,
                "server {leader} did not rejoin as a follower within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop(client);
    ensemble.stop_all(Duration::from_secs(3));
    let elections: Vec<f64> = out.iter().map(|t| t.election_ms).collect();
    let writes: Vec<f64> = out.iter().filter_map(|t| t.first_write_ms).collect();
    Ok(FailoverReport {
        servers: spec.servers,
        tick_time_ms: spec.tick_time_ms,
        sync_limit: spec.sync_limit,
        election: spread(&elections),
        first_write: spread(&writes),
        trials: out,
    })
}

pub fn bench_command() -> clap::Command {
    use clap::{value_parser, Arg, ArgAction};
    clap::Command::new("bench-zookeeper")
        .about("Failover time of a real 3-server ZooKeeper ensemble: kill -9 the leader, time the new leader and the first client write")
        .arg(
            Arg::new("trials")
                .long("trials")
                .value_name("N")
                .default_value("10")
                .value_parser(value_parser!(usize))
                .help("Failovers to measure"),
        )
        .arg(
            Arg::new("json")
                .long("json")
                .action(ArgAction::SetTrue)
                .help("Print the report as JSON"),
        )
}

pub fn run_bench(m: &clap::ArgMatches) -> u8 {
    let trials = *m.get_one::<usize>("trials").expect("defaulted");
    let dir = match tempfile_dir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("kcheck bench-zookeeper: cannot create a work directory: {e}");
            return 2;
        }
    };
    let r = failover(trials, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kcheck bench-zookeeper: {e}");
            return 2;
        }
    };
    if m.get_flag("json") {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).expect("report serializes")
        );
        return 0;
    }
    println!(
        "ZooKeeper 3.8, {} servers on 127.0.0.1, tickTime {} ms, syncLimit {}: kill -9 the leader",
        r.servers, r.tick_time_ms, r.sync_limit
    );
    for (i, t) in r.trials.iter().enumerate() {
        println!(
            "  trial {:>2}: leader {} killed, new leader {} after {:>6.0} ms, first write after {}",
            i + 1,
            t.killed_leader,
            t.new_leader,
            t.election_ms,
            t.first_write_ms
                .map_or("none within 30 s".to_string(), |w| format!("{w:.0} ms"))
        );
    }
    let line = |name: &str, s: &Option<Spread>| match s {
        Some(s) => println!(
            "{name}: median {:.0} ms, min {:.0}, p90 {:.0}, max {:.0} ({} trials)",
            s.median_ms,
            s.min_ms,
            s.p90_ms,
            s.max_ms,
            r.trials.len()
        ),
        None => println!("{name}: no data"),
    };
    line("new leader serving", &r.election);
    line("first client write", &r.first_write);
    0
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let d = std::env::temp_dir().join(format!(
        "kcheck-bench-zookeeper-{}-{stamp}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn spread_of_measurements() {
        let s = spread(&[30.0, 10.0, 20.0, 40.0]).unwrap();
        assert_eq!(
            (s.median_ms, s.min_ms, s.max_ms, s.p90_ms),
            (25.0, 10.0, 40.0, 40.0)
        );
        assert!(spread(&[]).is_none());
    }
}
