//! A local cluster of `kcheck broker` processes on 127.0.0.1 (`kcheck cluster up|status|down`)
//! and the process management the harness reuses: start, `kill -9`, SIGSTOP/SIGCONT and
//! restart one node by id, with its arguments and address kept in a state file so another
//! process (`status`, `down`, a test) can pick the cluster up.
//!
//! Node ids follow Kafka's examples: brokers are 1..=B, controllers 3001..=3000+C (KRaft
//! shares one id space between the roles).

use crate::client::Client;
use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The state file `kcheck cluster up` writes in the data directory.
pub const STATE_FILE: &str = "cluster.json";
/// Controller ids start above this (Kafka's examples use 3000+ for dedicated controllers).
pub const CONTROLLER_ID_BASE: i32 = 3000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Broker,
    Controller,
}

/// One node as started: enough to restart it identically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub id: i32,
    pub role: Role,
    pub pid: u32,
    /// Client listener (brokers) or controller listener (controllers).
    pub address: String,
    pub data_dir: PathBuf,
    pub log_file: PathBuf,
    /// `kcheck broker` arguments.
    pub args: Vec<String>,
}

impl NodeState {
    /// A broker on a free loopback port with its data directory and log under `data_dir`.
    /// `metadata` says where its metadata comes from (the KRaft quorum or ZooKeeper); `extra`
    /// are the user's broker arguments.
    pub(crate) fn broker(
        data_dir: &Path,
        id: i32,
        metadata: &[String],
        extra: &[String],
    ) -> std::io::Result<NodeState> {
        let address = format!("127.0.0.1:{}", free_port()?);
        let dir = data_dir.join(format!("broker-{id}"));
        let mut args: Vec<String> = vec![
            "broker".into(),
            "--node-id".into(),
            id.to_string(),
            "--listen".into(),
            address.clone(),
            "--data-dir".into(),
            dir.display().to_string(),
        ];
        args.extend(metadata.iter().cloned());
        args.extend(extra.iter().cloned());
        Ok(NodeState {
            id,
            role: Role::Broker,
            pid: 0,
            address,
            log_file: data_dir.join(format!("broker-{id}.log")),
            data_dir: dir,
            args,
        })
    }
}

/// Kafka's `bootstrap.servers` for these nodes: every broker's client address.
pub(crate) fn bootstrap_servers(nodes: &[NodeState]) -> String {
    nodes
        .iter()
        .filter(|n| n.role == Role::Broker)
        .map(|n| n.address.clone())
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub bootstrap: String,
    pub controller_quorum_voters: String,
    pub executable: PathBuf,
    pub nodes: Vec<NodeState>,
    /// ZooKeeper mode (`cluster up --metadata zookeeper`): the ensemble; `None` in KRaft mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zookeeper: Option<crate::cluster_zookeeper::ZkPart>,
}

/// What `kcheck cluster up` starts.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub brokers: usize,
    pub controllers: usize,
    pub data_dir: PathBuf,
    pub executable: PathBuf,
    /// Extra `kcheck broker` arguments for the brokers (`--bug`, `--min-insync-replicas`...).
    pub broker_args: Vec<String>,
    /// Extra arguments for the controllers (`--bug unclean-election`...).
    pub controller_args: Vec<String>,
    pub ready_timeout: Duration,
}

/// A listening port for a node that keeps it across restarts: free on 127.0.0.1 now, and
/// taken *below* the kernel's ephemeral range (`ip_local_port_range`).
///
/// Why not `bind(":0")`: that hands out a port from the ephemeral range, the same range the
/// kernel draws the local ports of outgoing connections from. A node killed by a nemesis must
/// bind its port again on restart, and by then a client's or a replica fetcher's connection
/// may hold it as its local port, so the restart fails with EADDRINUSE (a harness failure,
/// not a finding). Ports below the range are never used for outgoing connections. Each call
/// moves a process-wide cursor that starts at a pid- and time-derived offset, so one process
/// never hands out a port twice and concurrent test processes rarely try the same ones.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CURSOR: AtomicU32 = AtomicU32::new(u32::MAX);
    const LOW: u32 = 10_000;
    let high = ephemeral_port_low().clamp(LOW + 1_000, 65_536);
    let span = high - LOW;
    if CURSOR.load(Ordering::Relaxed) == u32::MAX {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let seed = std::process::id().wrapping_mul(2_654_435_761) ^ nanos;
        let _ =
            CURSOR.compare_exchange(u32::MAX, seed % span, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..span {
        let port = LOW + CURSOR.fetch_add(1, Ordering::Relaxed) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return Ok(port as u16);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free port on 127.0.0.1 in {LOW}..{high}"),
    ))
}

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_port_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

impl ClusterState {
    pub fn load(data_dir: &Path) -> anyhow::Result<ClusterState> {
        let path = data_dir.join(STATE_FILE);
        let text = fs::read_to_string(&path).map_err(|e| {
            anyhow::anyhow!(
                "no cluster state at {} ({e}); start one with `kcheck cluster up --data-dir {}`",
                path.display(),
                data_dir.display()
            )
        })?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not a cluster state file: {e}", path.display()))
    }

    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        let path = data_dir.join(STATE_FILE);
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        fs::rename(&tmp, &path)?;
        Ok(())
    }

    pub fn node(&self, id: i32) -> anyhow::Result<&NodeState> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| anyhow::anyhow!("no node {id} in this cluster (ids: {:?})", self.ids()))
    }

    fn ids(&self) -> Vec<i32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn brokers(&self) -> impl Iterator<Item = &NodeState> {
        self.nodes.iter().filter(|n| n.role == Role::Broker)
    }

    pub fn controllers(&self) -> impl Iterator<Item = &NodeState> {
        self.nodes.iter().filter(|n| n.role == Role::Controller)
    }

    /// Starts every node (processes in their own session, so a Ctrl-C at the terminal that
    /// ran `cluster up` does not reach them).
    pub fn start(spec: &ClusterSpec) -> anyhow::Result<ClusterState> {
        anyhow::ensure!(
            spec.brokers >= 1 && spec.controllers >= 1,
            "a cluster needs at least one broker and one controller (--brokers N --controllers N)"
        );
        anyhow::ensure!(
            spec.brokers <= 64 && spec.controllers <= 9,
            "at most 64 brokers and 9 controllers on one machine"
        );
        fs::create_dir_all(&spec.data_dir)?;
        if let Ok(old) = ClusterState::load(&spec.data_dir) {
            if old.nodes.iter().any(|n| pid_alive(n.pid)) {
                anyhow::bail!(
                    "a cluster is already running from {} (stop it with `kcheck cluster down --data-dir {}`)",
                    spec.data_dir.display(),
                    spec.data_dir.display()
                );
            }
        }
        let controllers: Vec<(i32, String)> = (1..=spec.controllers as i32)
            .map(|i| {
                Ok((
                    CONTROLLER_ID_BASE + i,
                    format!("127.0.0.1:{}", free_port()?),
                ))
            })
            .collect::<std::io::Result<_>>()?;
        let voters = controllers
            .iter()
            .map(|(id, a)| format!("{id}@{a}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for (id, addr) in &controllers {
            let dir = spec.data_dir.join(format!("controller-{id}"));
            let mut args = vec![
                "broker".into(),
                "--process-roles".into(),
                "controller".into(),
                "--node-id".into(),
                id.to_string(),
                "--controller-listen".into(),
                addr.clone(),
                "--controller-quorum-voters".into(),
                voters.clone(),
                "--data-dir".into(),
                dir.display().to_string(),
            ];
            args.extend(spec.controller_args.iter().cloned());
            nodes.push(NodeState {
                id: *id,
                role: Role::Controller,
                pid: 0,
                address: addr.clone(),
                log_file: spec.data_dir.join(format!("controller-{id}.log")),
                data_dir: dir,
                args,
            });
        }
        let metadata = [
            "--process-roles".to_string(),
            "broker".into(),
            "--controller-quorum-voters".into(),
            voters.clone(),
        ];
        for id in 1..=spec.brokers as i32 {
            nodes.push(NodeState::broker(
                &spec.data_dir,
                id,
                &metadata,
                &spec.broker_args,
            )?);
        }
        let mut state = ClusterState {
            bootstrap: bootstrap_servers(&nodes),
            controller_quorum_voters: voters,
            executable: spec.executable.clone(),
            nodes,
            zookeeper: None,
        };
        for i in 0..state.nodes.len() {
            let pid = spawn_node(&state.executable, &state.nodes[i])?;
            state.nodes[i].pid = pid;
        }
        state.save(&spec.data_dir)?;
        Ok(state)
    }

    /// Waits until the quorum has a leader and every broker is registered and unfenced (a
    /// broker's Metadata lists only unfenced brokers).
    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let brokers = self.brokers().count();
        loop {
            for n in &self.nodes {
                if !pid_alive(n.pid) {
                    anyhow::bail!(
                        "node {} ({:?}) exited; see {}",
                        n.id,
                        n.role,
                        n.log_file.display()
                    );
                }
            }
            let leader = self.quorum_leader().ok().flatten();
            let unfenced = self
                .brokers()
                .next()
                .and_then(|b| metadata(&b.address).ok())
                .map_or(0, |m| m.brokers.len());
            if leader.is_some() && unfenced == brokers {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "cluster not ready after {:?}: quorum leader {:?}, {unfenced} of {brokers} brokers unfenced",
                    timeout,
                    leader
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// (leader id, leader epoch) from the first controller that answers DescribeQuorum.
    pub fn quorum_leader(&self) -> anyhow::Result<Option<(i32, i32)>> {
        let mut last = anyhow::anyhow!("no controller");
        for c in self.controllers() {
            match describe_quorum(&c.address) {
                Ok(r) => return Ok(r),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// `kill -9`: the node stops at once, losing whatever it had not fsynced.
    pub fn kill(&self, id: i32) -> anyhow::Result<()> {
        signal(self.node(id)?.pid, libc::SIGKILL)
    }

    /// SIGSTOP: the process freezes (a long GC pause or a hung disk, as Jepsen's pause).
    pub fn pause(&self, id: i32) -> anyhow::Result<()> {
        signal(self.node(id)?.pid, libc::SIGSTOP)
    }

    pub fn resume(&self, id: i32) -> anyhow::Result<()> {
        signal(self.node(id)?.pid, libc::SIGCONT)
    }

    /// Starts a stopped node again with its original arguments (same id, address and data
    /// directory) and records its new pid.
    pub fn restart(&mut self, id: i32) -> anyhow::Result<u32> {
        let i = self
            .nodes
            .iter()
            .position(|n| n.id == id)
            .ok_or_else(|| anyhow::anyhow!("no node {id} in this cluster"))?;
        anyhow::ensure!(
            !pid_alive(self.nodes[i].pid),
            "node {id} is still running (pid {}); kill it first",
            self.nodes[i].pid
        );
        let pid = spawn_node(&self.executable, &self.nodes[i])?;
        self.nodes[i].pid = pid;
        Ok(pid)
    }

    /// SIGTERM every node (a clean shutdown flushes and checkpoints), SIGKILL what is still
    /// alive after `grace`. Brokers go first, while the quorum can still answer their
    /// controlled shutdown; then the controllers.
    pub fn stop_all(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for role in [Role::Broker, Role::Controller] {
            let nodes: Vec<&NodeState> = self.nodes.iter().filter(|n| n.role == role).collect();
            for n in &nodes {
                let _ = signal(n.pid, libc::SIGCONT);
                let _ = signal(n.pid, libc::SIGTERM);
            }
            let phase_end = match role {
                Role::Broker => Instant::now() + grace / 2,
                Role::Controller => deadline,
            };
            while Instant::now() < phase_end && nodes.iter().any(|n| pid_alive(n.pid)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for n in self.nodes.iter().filter(|n| pid_alive(n.pid)) {
            let _ = signal(n.pid, libc::SIGKILL);
        }
        self.stop_zookeeper(grace / 2);
    }
}

pub(crate) fn spawn_node(exe: &Path, n: &NodeState) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    fs::create_dir_all(&n.data_dir)?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&n.log_file)?;
    let mut cmd = Command::new(exe);
    cmd.args(&n.args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", exe.display()))?;
    let pid = child.id();
    // The child is reaped by whoever waits for it; `cluster up` exits and init adopts it.
    std::mem::forget(child);
    Ok(pid)
}

pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    // Reap it if it is our own exited child (tests start and kill nodes in-process).
    let mut status = 0;
    // SAFETY: plain syscalls on a pid.
    unsafe {
        libc::waitpid(pid as i32, &mut status, libc::WNOHANG);
        libc::kill(pid as i32, 0) == 0
    }
}

fn signal(pid: u32, sig: i32) -> anyhow::Result<()> {
    anyhow::ensure!(pid > 0, "node has no process");
    // SAFETY: kill(2) on a pid we started.
    let r = unsafe { libc::kill(pid as i32, sig) };
    anyhow::ensure!(
        r == 0,
        "signal {sig} to pid {pid} failed: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

pub fn metadata(addr: &str) -> anyhow::Result<MetadataResponse> {
    let mut c = Client::connect(addr)?;
    c.stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    c.request(12, &MetadataRequest::default().with_topics(None))
}

fn describe_quorum(addr: &str) -> anyhow::Result<Option<(i32, i32)>> {
    let mut c = Client::connect(addr)?;
    c.stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let req = DescribeQuorumRequest::default().with_topics(vec![TopicData::default()
        .with_topic_name(TopicName(StrBytes::from_static_str("__cluster_metadata")))
        .with_partitions(vec![PartitionData::default().with_partition_index(0)])]);
    let r = c.request(0, &req)?;
    let p = r
        .topics
        .first()
        .and_then(|t| t.partitions.first())
        .ok_or_else(|| anyhow::anyhow!("empty DescribeQuorum response"))?;
    Ok((p.leader_id.0 >= 0).then_some((p.leader_id.0, p.leader_epoch)))
}

/// The high watermark the partition's leader reports (ListOffsets latest).
pub fn high_watermark(addr: &str, topic: &str, partition: i32) -> anyhow::Result<i64> {
    let mut c = Client::connect(addr)?;
    c.stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(-1)])]);
    let r = c.request(7, &req)?;
    let p = &r.topics[0].partitions[0];
    anyhow::ensure!(p.error_code == 0, "ListOffsets error {}", p.error_code);
    Ok(p.offset)
}

/// `kcheck cluster status` as data (printed as text or JSON).
#[derive(Debug, Serialize)]
pub struct Status {
    pub bootstrap: String,
    pub quorum_leader: Option<i32>,
    pub quorum_epoch: Option<i32>,
    pub nodes: Vec<NodeStatus>,
    pub partitions: Vec<PartitionStatus>,
    /// ZooKeeper mode: `/controller` and `/controller_epoch`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zookeeper: Option<crate::cluster_zookeeper::ZkControllerStatus>,
    /// ZooKeeper mode: the ensemble (`host:port,...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zookeeper_connect: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub id: i32,
    pub role: Role,
    pub pid: u32,
    pub address: String,
    pub alive: bool,
}

#[derive(Debug, Serialize)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub high_watermark: Option<i64>,
}

pub fn status(state: &ClusterState) -> Status {
    let quorum = state.quorum_leader().ok().flatten();
    let nodes = state
        .nodes
        .iter()
        .map(|n| NodeStatus {
            id: n.id,
            role: n.role,
            pid: n.pid,
            address: n.address.clone(),
            alive: pid_alive(n.pid),
        })
        .collect();
    let meta = state
        .brokers()
        .filter(|b| pid_alive(b.pid))
        .find_map(|b| metadata(&b.address).ok());
    let mut partitions = Vec::new();
    if let Some(m) = meta {
        let addr_of = |id: i32| {
            m.brokers
                .iter()
                .find(|b| b.node_id.0 == id)
                .map(|b| format!("{}:{}", b.host.as_str(), b.port))
        };
        for t in &m.topics {
            let name = t.name.as_ref().map_or("", |n| n.as_str()).to_owned();
            for p in &t.partitions {
                let hw = addr_of(p.leader_id.0)
                    .and_then(|a| high_watermark(&a, &name, p.partition_index).ok());
                partitions.push(PartitionStatus {
                    topic: name.clone(),
                    partition: p.partition_index,
                    leader: p.leader_id.0,
                    leader_epoch: p.leader_epoch,
                    replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                    isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                    high_watermark: hw,
                });
            }
        }
    }
    Status {
        bootstrap: state.bootstrap.clone(),
        quorum_leader: quorum.map(|q| q.0),
        quorum_epoch: quorum.map(|q| q.1),
        nodes,
        partitions,
        zookeeper: state
            .zookeeper
            .as_ref()
            .and_then(|_| state.zk_controller().ok()),
        zookeeper_connect: state.zookeeper.as_ref().map(|z| z.connect.clone()),
    }
}

pub fn status_text(s: &Status) -> String {
    let mut out = format!("bootstrap: {}\n", s.bootstrap);
    if let Some(c) = &s.zookeeper_connect {
        out.push_str(&format!("zookeeper: {c}\n"));
    }
    match (s.zookeeper, s.quorum_leader, s.quorum_epoch) {
        (Some(z), _, _) => out.push_str(&format!(
            "controller (ZooKeeper /controller): {}, controller epoch {}\n",
            z.controller
                .map_or("none".into(), |c| format!("broker {c}")),
            z.controller_epoch
        )),
        (None, Some(l), Some(e)) => out.push_str(&format!("quorum: leader {l}, epoch {e}\n")),
        _ => out.push_str("quorum: no leader\n"),
    }
    out.push_str("nodes:\n");
    for n in &s.nodes {
        out.push_str(&format!(
            "  {:>5} {:<10} pid {:<8} {:<22} {}\n",
            n.id,
            format!("{:?}", n.role).to_lowercase(),
            n.pid,
            n.address,
            if n.alive { "up" } else { "down" }
        ));
    }
    out.push_str("partitions:\n");
    for p in &s.partitions {
        out.push_str(&format!(
            "  {}-{} leader {} epoch {} replicas {:?} ISR {:?} HW {}\n",
            p.topic,
            p.partition,
            p.leader,
            p.leader_epoch,
            p.replicas,
            p.isr,
            p.high_watermark.map_or("?".into(), |h| h.to_string())
        ));
    }
    out
}

pub fn cluster_command() -> clap::Command {
    use clap::{Arg, ArgAction, Command};
    let data_dir = || {
        Arg::new("data-dir")
            .long("data-dir")
            .default_value("kcheck-cluster")
            .help("Directory with every node's data, logs and the cluster state file")
    };
    Command::new("cluster")
        .about("Run a local cluster of kcheck broker and controller processes on 127.0.0.1")
        .subcommand_required(true)
        .subcommand(
            Command::new("up")
                .about("Start the processes and wait until the quorum has a leader and every broker is unfenced")
                .arg(Arg::new("brokers").long("brokers").default_value("3").value_parser(clap::value_parser!(u16).range(1..=64)))
                .arg(Arg::new("controllers").long("controllers").default_value("3").value_parser(clap::value_parser!(u16).range(1..=9)))
                .arg(Arg::new("metadata").long("metadata").default_value("kraft").value_parser(["kraft", "zookeeper"]).help("Where the cluster metadata lives: a KRaft controller quorum, or ZooKeeper with a controller elected among the brokers"))
                .arg(Arg::new("zookeeper-servers").long("zookeeper-servers").default_value("3").value_parser(clap::value_parser!(u16).range(1..=9)).help("ZooKeeper ensemble size (--metadata zookeeper)"))
                .arg(Arg::new("zookeeper-session-timeout-ms").long("zookeeper-session-timeout-ms").default_value("2000").value_parser(clap::value_parser!(u64).range(400..=4000)).help("Brokers' ZooKeeper session timeout (--metadata zookeeper; the ensemble grants 0.4 s to 4 s)"))
                .arg(data_dir())
                .arg(Arg::new("min-insync-replicas").long("min-insync-replicas").default_value("2").value_parser(clap::value_parser!(u16).range(1..)))
                .arg(Arg::new("replica-lag-time-max-ms").long("replica-lag-time-max-ms").default_value("10000").value_parser(clap::value_parser!(u64)))
                .arg(Arg::new("bug").long("bug").action(ArgAction::Append).help("Protocol bug flag for every node that has its side (see `kcheck broker --help`)"))
                .arg(Arg::new("timeout-s").long("timeout-s").default_value("60").value_parser(clap::value_parser!(u64))),
        )
        .subcommand(
            Command::new("status")
                .about("Bootstrap address, nodes, quorum leader and epoch, partitions with leader, ISR and HW")
                .arg(data_dir())
                .arg(Arg::new("json").long("json").action(ArgAction::SetTrue)),
        )
        .subcommand(Command::new("down").about("Stop every node (SIGTERM, then SIGKILL)").arg(data_dir()))
}

/// Exit codes: 0 done, 1 the cluster failed (did not become ready, a node died), 2 bad input.
pub fn run_cluster(m: &clap::ArgMatches) -> u8 {
    let dir =
        |m: &clap::ArgMatches| PathBuf::from(m.get_one::<String>("data-dir").expect("has default"));
    match m.subcommand() {
        Some(("up", m)) => {
            let bugs: Vec<String> = m
                .get_many::<String>("bug")
                .map(|v| v.cloned().collect())
                .unwrap_or_default();
            if m.get_one::<String>("metadata").map(String::as_str) == Some("zookeeper") {
                return up_zookeeper(m, &bugs, dir(m));
            }
            let (broker_bugs, controller_bugs) = match crate::cli::split_bug_flags(&bugs) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("kcheck cluster up: {e}");
                    return 2;
                }
            };
            let mut broker_args = vec![
                "--min-insync-replicas".to_string(),
                m.get_one::<u16>("min-insync-replicas")
                    .expect("default")
                    .to_string(),
                "--replica-lag-time-max-ms".to_string(),
                m.get_one::<u64>("replica-lag-time-max-ms")
                    .expect("default")
                    .to_string(),
            ];
            for b in broker_bugs {
                broker_args.extend(["--bug".to_string(), b]);
            }
            let mut controller_args = Vec::new();
            for b in controller_bugs {
                controller_args.extend(["--bug".to_string(), b]);
            }
            let executable = match std::env::current_exe() {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("kcheck cluster up: cannot find the kcheck executable: {e}");
                    return 1;
                }
            };
            let spec = ClusterSpec {
                brokers: usize::from(*m.get_one::<u16>("brokers").expect("default")),
                controllers: usize::from(*m.get_one::<u16>("controllers").expect("default")),
                data_dir: dir(m),
                executable,
                broker_args,
                controller_args,
                ready_timeout: Duration::from_secs(
                    *m.get_one::<u64>("timeout-s").expect("default"),
                ),
            };
            let state = match ClusterState::start(&spec) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("kcheck cluster up: {e:#}");
                    return 2;
                }
            };
            if let Err(e) = state.wait_ready(spec.ready_timeout) {
                eprintln!("kcheck cluster up: {e:#}; stopping it");
                state.stop_all(Duration::from_secs(5));
                return 1;
            }
            println!("{}", state.bootstrap);
            0
        }
        Some(("status", m)) => match ClusterState::load(&dir(m)) {
            Ok(state) => {
                let s = status(&state);
                if m.get_flag("json") {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&s).expect("status serializes")
                    );
                } else {
                    print!("{}", status_text(&s));
                }
                0
            }
            Err(e) => {
                eprintln!("kcheck cluster status: {e:#}");
                2
            }
        },
        Some(("down", m)) => match ClusterState::load(&dir(m)) {
            Ok(state) => {
                state.stop_all(Duration::from_secs(10));
                println!("stopped {} nodes", state.nodes.len());
                0
            }
            Err(e) => {
                eprintln!("kcheck cluster down: {e:#}");
                2
            }
        },
        _ => 2,
    }
}

/// `cluster up --metadata zookeeper`: every `--bug` goes to the brokers (they are the
/// controllers too); `kcheck broker` refuses the ones it does not know.
fn up_zookeeper(m: &clap::ArgMatches, bugs: &[String], data_dir: PathBuf) -> u8 {
    let mut broker_args = vec![
        "--min-insync-replicas".to_string(),
        m.get_one::<u16>("min-insync-replicas")
            .expect("default")
            .to_string(),
        "--replica-lag-time-max-ms".to_string(),
        m.get_one::<u64>("replica-lag-time-max-ms")
            .expect("default")
            .to_string(),
    ];
    for b in bugs {
        let known = crate::zk_controller::ZkBug::parse(b).is_some()
            || crate::partition::BROKER_BUGS.iter().any(|x| x.name() == b);
        if !known {
            eprintln!(
                "kcheck cluster up: unknown bug flag '{b}' for --metadata zookeeper (known: no-controller-epoch-check, no-zkversion-check, {})",
                crate::partition::BROKER_BUGS
                    .iter()
                    .map(|x| x.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return 2;
        }
        broker_args.extend(["--bug".to_string(), b.clone()]);
    }
    let executable = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("kcheck cluster up: cannot find the kcheck executable: {e}");
            return 1;
        }
    };
    let spec = crate::cluster_zookeeper::ZkClusterSpec {
        brokers: usize::from(*m.get_one::<u16>("brokers").expect("default")),
        zookeeper_servers: usize::from(*m.get_one::<u16>("zookeeper-servers").expect("default")),
        data_dir,
        executable,
        broker_args,
        session_timeout_ms: *m
            .get_one::<u64>("zookeeper-session-timeout-ms")
            .expect("default"),
        ready_timeout: Duration::from_secs(*m.get_one::<u64>("timeout-s").expect("default")),
    };
    let state = match ClusterState::start_zookeeper(&spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kcheck cluster up: {e:#}");
            return 2;
        }
    };
    if let Err(e) = state.wait_ready_zookeeper(spec.ready_timeout) {
        eprintln!("kcheck cluster up: {e:#}; stopping it");
        state.stop_all(Duration::from_secs(5));
        return 1;
    }
    println!("{}", state.bootstrap);
    0
}
