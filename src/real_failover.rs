//! `kcheck compare controller-failover --real`: the models' failover scenario on real
//! processes. In each mode a cluster of `kcheck broker` processes runs on 127.0.0.1 (a 3-server
//! ZooKeeper ensemble with brokers electing `/controller`, or a 3-voter KRaft quorum with
//! brokers); each run creates a topic replicated on every broker, kills with SIGKILL the active
//! controller and the partition leader's broker at the same instant (in ZooKeeper mode they are
//! one broker, as in the `zk-controller` model's scenario), and measures the wall time until every
//! live broker's Metadata names one new, live leader. The killed processes are restarted and the
//! cluster is waited ready between runs. See `specs/zookeeper-vs-kraft.md` for the figures.

use kcheck_reference::client::Client;
use kcheck_reference::cluster::{metadata, ClusterSpec, ClusterState};
use kcheck_reference::cluster_zookeeper::ZkClusterSpec;
use kcheck_reference::kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic,
};
use kcheck_reference::kafka_protocol::messages::{BrokerId, CreateTopicsRequest, TopicName};
use kcheck_reference::kafka_protocol::protocol::StrBytes;
use std::path::Path;
use std::time::{Duration, Instant};

/// Failure detection in both modes: a ZooKeeper session timeout, and KRaft's broker session
/// timeout (the controller quorum's own fetch timeout is 2 s at the default election timeout).
const SESSION_TIMEOUT_MS: u64 = 2000;
/// A failover that takes longer is reported as an error, not a figure.
const FAILOVER_LIMIT: Duration = Duration::from_secs(60);

/// One mode's measured failovers.
pub struct RealFailover {
    pub mode: &'static str,
    pub failover_ms: Vec<u64>,
    pub settings: String,
}

impl RealFailover {
    pub fn median_ms(&self) -> u64 {
        let mut v = self.failover_ms.clone();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    }
}

/// Stops a cluster however the measurement ends.
struct Running(ClusterState);
impl Drop for Running {
    fn drop(&mut self) {
        self.0.stop_all(Duration::from_secs(5));
    }
}

pub fn measure_both(dir: &Path, brokers: usize, runs: usize) -> anyhow::Result<Vec<RealFailover>> {
    let exe = std::env::current_exe()?;
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot wipe {}: {e}", dir.display()))?;
    }
    let zk = {
        let spec = ZkClusterSpec {
            brokers,
            zookeeper_servers: 3,
            data_dir: dir.join("zookeeper-mode"),
            executable: exe.clone(),
            broker_args: vec!["--min-insync-replicas".into(), "1".into()],
            session_timeout_ms: SESSION_TIMEOUT_MS,
            ready_timeout: Duration::from_secs(120),
        };
        let mut c = Running(ClusterState::start_zookeeper(&spec)?);
        c.0.wait_ready_zookeeper(spec.ready_timeout)?;
        let ms = runs_of(&mut c.0, Mode::Zookeeper, runs);
        // Restarts changed pids: keep the state file true for `cluster down` and the tests.
        c.0.save(&spec.data_dir)?;
        let ms = ms?;
        RealFailover {
            mode: "zookeeper",
            failover_ms: ms,
            settings: format!(
                "3 ZooKeeper servers (tickTime 200 ms), zookeeper.session.timeout.ms {SESSION_TIMEOUT_MS}"
            ),
        }
    };
    let kraft = {
        let spec = ClusterSpec {
            brokers,
            controllers: 3,
            data_dir: dir.join("kraft-mode"),
            executable: exe,
            broker_args: vec!["--min-insync-replicas".into(), "1".into()],
            controller_args: vec![
                "--broker-session-timeout-ms".into(),
                SESSION_TIMEOUT_MS.to_string(),
            ],
            ready_timeout: Duration::from_secs(120),
        };
        let mut c = Running(ClusterState::start(&spec)?);
        c.0.wait_ready(spec.ready_timeout)?;
        let ms = runs_of(&mut c.0, Mode::Kraft, runs);
        c.0.save(&spec.data_dir)?;
        let ms = ms?;
        RealFailover {
            mode: "kraft",
            failover_ms: ms,
            settings: format!(
                "3 controllers, election timeout 1000 ms (fetch timeout 2000 ms), broker.session.timeout.ms {SESSION_TIMEOUT_MS}"
            ),
        }
    };
    Ok(vec![zk, kraft])
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Zookeeper,
    Kraft,
}

fn runs_of(state: &mut ClusterState, mode: Mode, runs: usize) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::new();
    for run in 0..runs {
        let topic = format!("failover-{run}");
        let brokers: Vec<i32> = state.brokers().map(|b| b.id).collect();
        // The nodes to kill: ZooKeeper mode's controller leads the partition (manual
        // assignment); KRaft's active controller and the leader the placement chose.
        let victims: Vec<i32> = match mode {
            Mode::Zookeeper => {
                let c = state
                    .zk_controller()?
                    .controller
                    .ok_or_else(|| anyhow::anyhow!("no ZooKeeper-mode controller"))?;
                let mut replicas = vec![c];
                replicas.extend(brokers.iter().copied().filter(|&b| b != c));
                create_topic(
                    &state.node(brokers[0])?.address,
                    &topic,
                    Some(&replicas),
                    -1,
                )?;
                wait_agree(state, &topic, &[])?;
                vec![c]
            }
            Mode::Kraft => {
                let (c, _) = state
                    .quorum_leader()?
                    .ok_or_else(|| anyhow::anyhow!("no KRaft quorum leader"))?;
                create_topic(
                    &state.node(brokers[0])?.address,
                    &topic,
                    None,
                    brokers.len() as i16,
                )?;
                let leader = wait_agree(state, &topic, &[])?;
                vec![c, leader]
            }
        };
        let start = Instant::now();
        for &v in &victims {
            state.kill(v)?;
        }
        let leader = wait_agree(state, &topic, &victims)?;
        let ms = start.elapsed().as_millis() as u64;
        eprintln!(
            "{} run {}: killed {victims:?}, new leader {leader} named by every live broker after {ms} ms",
            if mode == Mode::Zookeeper { "zookeeper" } else { "kraft" },
            run + 1
        );
        out.push(ms);
        for &v in &victims {
            state.restart(v)?;
        }
        match mode {
            Mode::Zookeeper => state.wait_ready_zookeeper(Duration::from_secs(120))?,
            Mode::Kraft => state.wait_ready(Duration::from_secs(120))?,
        }
    }
    Ok(out)
}

/// CreateTopics: a manual assignment, or `replication_factor` replicas placed by the cluster.
fn create_topic(
    addr: &str,
    topic: &str,
    replicas: Option<&[i32]>,
    replication_factor: i16,
) -> anyhow::Result<()> {
    let mut c = Client::connect(addr)?;
    c.stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut t = CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
        .with_num_partitions(1)
        .with_replication_factor(-1);
    if let Some(r) = replicas {
        t = t
            .with_num_partitions(-1)
            .with_assignments(vec![CreatableReplicaAssignment::default()
                .with_partition_index(0)
                .with_broker_ids(r.iter().map(|&b| BrokerId(b)).collect())]);
    } else {
        t = t.with_replication_factor(replication_factor);
    }
    let r = c.request(
        5,
        &CreateTopicsRequest::default()
            .with_timeout_ms(20_000)
            .with_topics(vec![t]),
    )?;
    let e = r.topics.first().map_or(-1, |t| t.error_code);
    anyhow::ensure!(e == 0, "CreateTopics {topic} answered error {e}");
    Ok(())
}

/// Waits until every broker not in `dead` names the same live leader for `topic`-0 in its
/// Metadata; returns it.
fn wait_agree(state: &ClusterState, topic: &str, dead: &[i32]) -> anyhow::Result<i32> {
    let deadline = Instant::now() + FAILOVER_LIMIT;
    let live: Vec<String> = state
        .brokers()
        .filter(|b| !dead.contains(&b.id))
        .map(|b| b.address.clone())
        .collect();
    loop {
        let leaders: Vec<Option<i32>> = live
            .iter()
            .map(|a| {
                let m = metadata(a).ok()?;
                let t = m
                    .topics
                    .iter()
                    .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == topic))?;
                t.partitions.first().map(|p| p.leader_id.0)
            })
            .collect();
        if let Some(Some(l)) = leaders.first() {
            if *l >= 0 && !dead.contains(l) && leaders.iter().all(|x| *x == Some(*l)) {
                return Ok(*l);
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the live brokers name leaders {leaders:?} for {topic}-0 after {FAILOVER_LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
