//! One `kcheck test` run: start the system, run client workers and the nemesis on a seeded
//! schedule, heal, read everything back, stop, check the history and write the run's folder.
//!
//! The pieces are Jepsen's: the *system* ([`crate::system`]), the *workload* (clients that
//! invoke operations and record their outcome), the *nemesis* (faults on a schedule), and the
//! *checker* ([`crate::analyze`]), which reads only the history.

use crate::history::{Mop, OpType, OpValue, Process, Produce, Read, Recorder};
use crate::kafka::{KafkaClient, Outcome};
use crate::nemesis::grudge::{Grudge, NodeId};
use crate::sim::Rng;
use crate::system::{NodeSpec, ProcessSystem};
use crate::zookeeper::metadata_ensemble::MetadataEnsemble;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The faults a run can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NemesisKind {
    /// SIGKILL a node, restart it when the fault ends.
    Kill,
    /// SIGSTOP a node, SIGCONT it when the fault ends.
    Pause,
    /// Cut the network between nodes (needs two nodes or more).
    Partition,
    /// Move a node's wall clock (libfaketime).
    Clock,
    /// SIGKILL a node and lose every write it had not fsynced (LazyFs), then restart it.
    LoseUnsynced,
    /// ZooKeeper mode: SIGKILL a ZooKeeper server (the ensemble's leader half the time),
    /// restart it when the fault ends.
    ZkKill,
    /// ZooKeeper mode: cut a ZooKeeper server (the ensemble's leader half the time) from the
    /// other servers; its clients still reach it and are told it does not serve.
    ZkPartition,
    /// ZooKeeper mode: SIGSTOP the active controller (the broker `/controller` names) past its
    /// session timeout, then SIGCONT: a zombie until it notices its session expired. The
    /// requests it had in flight arrive late (SIGUSR1, `ZkNode::resend_last`), after the new
    /// controller's: the reordering the `zk-controller` model explores.
    Zombie,
    /// ZooKeeper mode: cut the active controller from every ZooKeeper server past its session
    /// timeout while it runs on (and reaches the other brokers): its session expires.
    ExpireSession,
    /// ZooKeeper mode: `kill -9` of a partition leader that is not the controller, SIGSTOP of
    /// the controller before that leader's session expires (the BrokerChange waits for it),
    /// SIGCONT once another broker is controller: a zombie with a leader's death queued,
    /// which it handles on its new session (`crate::nemesis::zombie_failover`). The leader
    /// restarts when the fault ends.
    ZombieFailover,
    /// KRaft cluster: AlterPartitionReassignments (KIP-455) moving one partition of the test
    /// topic to a random other set of replicas, or replacing a move in progress, sometimes
    /// with an added replica stalled; a move still in progress when the fault ends is
    /// cancelled, replaced or left running (see `stop_reassign`), and the moves left running
    /// are awaited after the heal. Needs a broker outside each replica set
    /// ([`REASSIGN_MIN_BROKERS`]). The reassignment model's bugs (`ControllerBug`) happen only
    /// while one is in progress.
    Reassign,
    /// Latency on inter-node links (the proxies only, `--net proxy`): a delay per chunk on the
    /// followers' requests to the partition leaders, or on every link. A request read before
    /// a node dies is still delivered late, after its restart (TCP half-close).
    Delay,
    /// Packet loss on inter-node links as TCP shows it (the proxies only): a chunk waits a
    /// retransmission timeout with some probability; no byte is lost.
    Loss,
    /// KRaft cluster of three controllers or more: a fault lined up around the controller
    /// quorum's leader (`crate::nemesis::quorum`: the leader cut from the other controllers
    /// only, a lagging follower that outlives the leader, the leader crash-restarted).
    Quorum,
}

/// Brokers the reassign nemesis needs: the replication factor (3) plus one to move to.
pub const REASSIGN_MIN_BROKERS: usize = 4;

impl NemesisKind {
    pub const ALL: [NemesisKind; 5] = [
        NemesisKind::Kill,
        NemesisKind::Pause,
        NemesisKind::Partition,
        NemesisKind::Clock,
        NemesisKind::LoseUnsynced,
    ];

    /// The faults of a ZooKeeper-mode run's metadata side (`--metadata zookeeper`).
    pub const ZOOKEEPER_MODE: [NemesisKind; 5] = [
        NemesisKind::ZkKill,
        NemesisKind::ZkPartition,
        NemesisKind::Zombie,
        NemesisKind::ExpireSession,
        NemesisKind::ZombieFailover,
    ];

    pub fn name(self) -> &'static str {
        match self {
            NemesisKind::Kill => "kill",
            NemesisKind::Pause => "pause",
            NemesisKind::Partition => "partition",
            NemesisKind::Clock => "clock",
            NemesisKind::LoseUnsynced => "lose-unsynced",
            NemesisKind::ZkKill => "zk-kill",
            NemesisKind::ZkPartition => "zk-partition",
            NemesisKind::Zombie => "zombie",
            NemesisKind::ExpireSession => "expire-session",
            NemesisKind::ZombieFailover => "zombie-failover",
            NemesisKind::Reassign => "reassign",
            NemesisKind::Delay => "delay",
            NemesisKind::Loss => "loss",
            NemesisKind::Quorum => "quorum",
        }
    }

    /// Whether the fault shuts a broker down uncleanly (SIGKILL) until it ends.
    pub fn crashes(self) -> bool {
        matches!(
            self,
            NemesisKind::Kill | NemesisKind::LoseUnsynced | NemesisKind::ZombieFailover
        )
    }

    /// Whether the fault needs a ZooKeeper-mode cluster.
    pub fn zookeeper_mode(self) -> bool {
        NemesisKind::ZOOKEEPER_MODE.contains(&self)
    }

    /// Every fault `--nemesis` knows.
    fn known() -> impl Iterator<Item = NemesisKind> {
        NemesisKind::ALL
            .into_iter()
            .chain(NemesisKind::ZOOKEEPER_MODE)
            .chain([
                NemesisKind::Reassign,
                NemesisKind::Delay,
                NemesisKind::Loss,
                NemesisKind::Quorum,
            ])
    }

    /// Whether the fault shapes links (only the proxies can).
    pub fn shapes_links(self) -> bool {
        matches!(self, NemesisKind::Delay | NemesisKind::Loss)
    }

    /// Whether the fault acts on the network between nodes.
    pub fn network(self) -> bool {
        // A quorum fault cuts controllers off each other (two of its three shapes).
        matches!(self, NemesisKind::Partition | NemesisKind::Quorum) || self.shapes_links()
    }

    /// Parses `kill,pause,...` or `all` (every fault of [`NemesisKind::ALL`]; a ZooKeeper-mode
    /// run adds its own, a KRaft cluster of [`REASSIGN_MIN_BROKERS`] brokers or more adds
    /// `reassign`: `kcheck test` does), naming the known faults on error.
    pub fn parse_list(s: &str) -> Result<Vec<NemesisKind>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "all" {
                out.extend(NemesisKind::ALL);
                continue;
            }
            if part == "none" {
                continue;
            }
            let kind = NemesisKind::known()
                .find(|k| k.name() == part)
                .ok_or_else(|| {
                    let known: Vec<&str> = NemesisKind::known().map(|k| k.name()).collect();
                    format!(
                        "unknown nemesis '{part}' (known: {}, all, none)",
                        known.join(", ")
                    )
                })?;
            out.push(kind);
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// The workloads a run can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Every partition a linearizable log: `produce` returns an offset, `read` at an offset.
    Log,
    /// Jepsen's Kafka queue: keyed sends, consumers that assign partitions and poll them,
    /// checked for lost writes, duplicates, skips and the rest of `jepsen.tests.kafka`.
    Queue,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Log => "log",
            Workload::Queue => "queue",
        }
    }
}

/// How a run's network faults reach the links between nodes (`--net`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Net {
    /// One TCP proxy per directed link between nodes (`kcheck broker --peer-address`);
    /// partitions, delay and loss; no root needed.
    Proxy,
    /// Every node in its own network namespace with nftables drop rules (root); partitions.
    Netns,
}

impl Net {
    pub fn name(self) -> &'static str {
        match self {
            Net::Proxy => "proxy",
            Net::Netns => "netns",
        }
    }

    /// The default: the namespaces where they work (as root) and the faults need nothing
    /// else, the proxies otherwise (delay and loss are the proxies' alone).
    pub fn default_for(nemeses: &[NemesisKind]) -> Net {
        if nemeses.iter().any(|k| k.shapes_links()) || crate::nemesis::netns::available().is_err() {
            Net::Proxy
        } else {
            Net::Netns
        }
    }
}

/// Where the cluster's brokers keep their metadata (`kcheck cluster up --metadata`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metadata {
    /// A KRaft controller quorum (`--controllers N`), or one standalone broker.
    Kraft,
    /// A ZooKeeper ensemble (`--zookeeper-servers N`); the brokers elect their controller
    /// through `/controller`, as Kafka did before KIP-500.
    Zookeeper,
}

impl Metadata {
    pub fn name(self) -> &'static str {
        match self {
            Metadata::Kraft => "kraft",
            Metadata::Zookeeper => "zookeeper",
        }
    }
}

/// Everything that defines a run; written to `test.json` in the run's folder.
#[derive(Debug, Clone, Serialize)]
pub struct TestConfig {
    pub brokers: usize,
    pub controllers: usize,
    pub metadata: Metadata,
    /// ZooKeeper servers of a ZooKeeper-mode run.
    pub zookeeper_servers: usize,
    pub workload: Workload,
    pub nemeses: Vec<NemesisKind>,
    /// How network faults are injected.
    pub net: Net,
    pub time_limit: Duration,
    /// Client operations per second, over all workers.
    pub rate: f64,
    pub concurrency: usize,
    pub seed: u64,
    pub bugs: Vec<String>,
    pub store: PathBuf,
    /// The brokers' `--flush` policy.
    pub flush: String,
    pub partitions: i32,
    /// How long each fault lasts, and the quiet time between two.
    pub nemesis_interval: Duration,
    /// The `kcheck` executable that runs the nodes.
    pub program: PathBuf,
    /// Per-request client timeout.
    pub client_timeout: Duration,
    /// How long final reads may wait for the healed system.
    pub final_read_limit: Duration,
}

/// What a run produced.
#[derive(Debug)]
pub struct RunOutcome {
    pub dir: PathBuf,
    pub history_ops: usize,
    pub faults: Vec<String>,
    /// The host's monotonic clock (the one trace events carry) when the workload started,
    /// the history's time zero: places a conformance violation on the history's clock.
    pub start_mono_ns: u64,
}

const TOPIC: &str = "kcheck-log";

/// Nanoseconds since the run started.
fn now_ns(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

struct Shared {
    start: Instant,
    recorder: Mutex<Recorder>,
}

impl Shared {
    fn record(&self, kind: OpType, process: Process, f: &str, value: OpValue) -> u64 {
        let mut r = self.recorder.lock().unwrap_or_else(|e| e.into_inner());
        r.push(now_ns(self.start), kind, process, f, value)
    }

    fn record_error(&self, kind: OpType, process: Process, f: &str, value: OpValue, error: &str) {
        let mut r = self.recorder.lock().unwrap_or_else(|e| e.into_inner());
        let i = r.push(now_ns(self.start), kind, process, f, value);
        r.set_error(i, error);
    }
}

/// Checks what the runner cannot do before starting anything.
pub fn validate(config: &TestConfig) -> Result<(), String> {
    if config.brokers == 0 || config.brokers > 9 || config.controllers > 9 {
        return Err("--brokers must be 1..=9 and --controllers 0..=9".into());
    }
    if config.metadata == Metadata::Zookeeper {
        return validate_zookeeper(config);
    }
    if let Some(k) = config.nemeses.iter().find(|k| k.zookeeper_mode()) {
        return Err(format!(
            "{} is a ZooKeeper-side fault: add --metadata zookeeper",
            k.name()
        ));
    }
    if config.controllers == 0 && config.brokers != 1 {
        return Err(format!(
            "--brokers {} needs a controller quorum (--controllers 1 or more); \
             --controllers 0 runs one standalone broker",
            config.brokers
        ));
    }
    if config.controllers == 0 && !config.bugs.is_empty() {
        return Err(format!(
            "--bug {}: bug flags are options of the replicated cluster (--controllers 1 or more)",
            config.bugs.join(",")
        ));
    }
    kcheck_reference::cli::split_bug_flags(&config.bugs)?;
    if config.nemeses.contains(&NemesisKind::Reassign) && config.brokers < REASSIGN_MIN_BROKERS {
        return Err(format!(
            "reassign moves a partition to another set of {} replicas, which needs a broker \
             outside the set: add --brokers {REASSIGN_MIN_BROKERS} (or leave reassign out of --nemesis)",
            REASSIGN_MIN_BROKERS - 1
        ));
    }
    if config.nemeses.contains(&NemesisKind::Quorum) && config.controllers < 3 {
        return Err(format!(
            "quorum faults are aimed at a KRaft controller quorum that can lose a voter: \
             add --controllers 3 (this run has {})",
            config.controllers
        ));
    }
    if let Some(k) = config.nemeses.iter().find(|k| k.network()) {
        if config.brokers + config.controllers < 2 {
            return Err(format!(
                "the {} nemesis needs at least two nodes (--brokers 3 --controllers 3)",
                k.name()
            ));
        }
    }
    if let Some(k) = config.nemeses.iter().find(|k| k.shapes_links()) {
        if config.net != Net::Proxy {
            return Err(format!(
                "{}: only the proxies shape links (use --net proxy)",
                k.name()
            ));
        }
    }
    if config.nemeses.iter().any(|k| k.network()) && config.net == Net::Netns {
        crate::nemesis::netns::available().map_err(|e| {
            format!("partition: {e}: --net netns runs the nodes in network namespaces with nftables drop rules (--net proxy partitions without root)")
        })?;
    }
    validate_common(config)
}

/// What every run needs whatever its metadata mode: the tools its fault kinds use, and a
/// workload that does something.
fn validate_common(config: &TestConfig) -> Result<(), String> {
    if config.nemeses.contains(&NemesisKind::LoseUnsynced) {
        crate::lazyfs::available().map_err(|e| format!("lose-unsynced: {e}"))?;
    }
    if config.nemeses.contains(&NemesisKind::Clock) {
        crate::nemesis::clock::available().map_err(|e| format!("clock: {e}"))?;
    }
    if config.concurrency == 0 || config.rate <= 0.0 || config.partitions <= 0 {
        return Err("--concurrency, --rate and the partition count must be positive".into());
    }
    Ok(())
}

/// [`validate`] for `--metadata zookeeper`: brokers and a ZooKeeper ensemble, no KRaft
/// controllers, the ZooKeeper-mode bug flags and the data plane's.
fn validate_zookeeper(config: &TestConfig) -> Result<(), String> {
    if config.controllers != 0 {
        return Err("--controllers is KRaft mode: a ZooKeeper-mode cluster elects its controller among the brokers (drop --controllers)".into());
    }
    if !(1..=5).contains(&config.zookeeper_servers) {
        return Err("--zookeeper-servers must be 1..=5 (3 tolerates one failure)".into());
    }
    kcheck_reference::zk_ensemble::available(Path::new("/usr/bin/java"))?;
    let data_plane: Vec<String> = config
        .bugs
        .iter()
        .filter(|b| kcheck_reference::zk_controller::ZkBug::parse(b).is_none())
        .cloned()
        .collect();
    let (_, controller_bugs) =
        kcheck_reference::cli::split_bug_flags(&data_plane).map_err(|e| {
            format!("{e}; ZooKeeper mode also knows no-controller-epoch-check, no-zkversion-check")
        })?;
    if let Some(b) = controller_bugs.first() {
        return Err(format!(
            "bug flag '{b}' is a KRaft controller choice; ZooKeeper mode knows \
             no-controller-epoch-check, no-zkversion-check and the data plane's flags"
        ));
    }
    if config.nemeses.contains(&NemesisKind::Reassign) {
        return Err(
            "reassign: the ZooKeeper-mode controller has no AlterPartitionReassignments \
             (leave reassign out of --nemesis, or drop --metadata zookeeper)"
                .into(),
        );
    }
    if config.nemeses.contains(&NemesisKind::Quorum) {
        return Err("quorum: a ZooKeeper-mode cluster has no KRaft controller quorum".into());
    }
    if let Some(k) = config.nemeses.iter().find(|k| k.network()) {
        return Err(format!("{}: the brokers of a ZooKeeper-mode run reach each other directly; \
             its network faults cut the ZooKeeper side through proxies (use zk-partition, expire-session)", k.name()));
    }
    validate_common(config)
}

/// Runs the test and writes `history.jsonl` and `test.json` into a new folder under `store`.
pub fn run(config: &TestConfig) -> Result<RunOutcome, String> {
    validate(config)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let mode = match config.metadata {
        Metadata::Kraft => "",
        Metadata::Zookeeper => "-zookeeper",
    };
    let dir = config.store.join(format!(
        "{}{mode}-seed{}-{stamp}",
        config.workload.name(),
        config.seed
    ));
    if dir.exists() {
        return Err(format!(
            "harness failure: run folder {} exists",
            dir.display()
        ));
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::write(
        dir.join("test.json"),
        serde_json::to_string_pretty(config).expect("config serializes"),
    )
    .map_err(|e| e.to_string())?;

    // Partitions need every node in its own network namespace (addresses in a private /24);
    // without them every node listens on 127.0.0.1.
    let network = if config.nemeses.iter().any(|k| k.network()) && config.net == Net::Netns {
        let net = crate::nemesis::netns::NetnsNetwork::create(&node_ids(config))
            .map_err(|e| format!("harness failure: creating network namespaces: {e}"))?;
        crate::nemesis::netns::remove_on_signal(net.names());
        Some(net)
    } else {
        None
    };
    let host = |id: NodeId| {
        network
            .as_ref()
            .and_then(|n| n.addr(id))
            .map_or_else(|| "127.0.0.1".to_string(), |a| a.to_string())
    };
    // ZooKeeper mode: the ensemble first, the brokers' --zookeeper names their proxies to it.
    let zookeeper = match config.metadata {
        Metadata::Zookeeper => Some(
            MetadataEnsemble::start(
                &dir.join("zookeeper"),
                config.zookeeper_servers,
                &node_ids(config),
                config.seed,
            )
            .map_err(|e| format!("harness failure: {e:#}"))?,
        ),
        Metadata::Kraft => None,
    };
    let mut specs = match &zookeeper {
        Some(zk) => zookeeper_specs(config, &dir, zk),
        None => node_specs(config, &dir, &host),
    }
    .map_err(|e| format!("harness failure: {e}"))?;
    // `--net proxy`: the nodes reach each other through one proxy per directed link (stopped
    // when the system is dropped, whatever ends the run).
    let proxies = if config.net == Net::Proxy
        && config.metadata == Metadata::Kraft
        && config.nemeses.iter().any(|k| k.network())
    {
        Some(
            link_proxies(&mut specs, config.seed)
                .map_err(|e| format!("harness failure: starting the link proxies: {e}"))?,
        )
    } else {
        None
    };
    let lazy = config.nemeses.contains(&NemesisKind::LoseUnsynced);
    let clocks = config.nemeses.contains(&NemesisKind::Clock);
    let mut system = ProcessSystem::start(&dir, specs, lazy, clocks, network)
        .map_err(|e| format!("harness failure: starting the system: {e}"))?;
    system.zookeeper = zookeeper;
    system.proxies = proxies;
    let bootstrap = system.bootstrap();
    let mut admin = KafkaClient::new(&bootstrap, TOPIC, config.client_timeout);
    let replication_factor = config.brokers.min(3) as i16;
    wait_ready(
        &mut admin,
        config.brokers,
        config.partitions,
        replication_factor,
    )
    .map_err(|e| format!("harness failure: the system did not come up: {e}"))?;
    let ballast = ballast_partitions(config);
    if ballast > 0 {
        let topic = crate::nemesis::zombie_failover::BALLAST_TOPIC;
        let mut client = KafkaClient::new(&bootstrap, topic, config.client_timeout);
        wait_ready(&mut client, config.brokers, ballast, replication_factor)
            .map_err(|e| format!("harness failure: the ballast topic {topic}: {e}"))?;
    }

    let shared = Arc::new(Shared {
        start: Instant::now(),
        recorder: Mutex::new(Recorder::default()),
    });
    let start_mono_ns = kcheck_reference::proto_trace::monotonic_ns();
    let stop = Arc::new(AtomicBool::new(false));
    // ZooKeeper mode: ask every broker what it leads, all through the run (see `leaders`).
    let probe_stop = Arc::new(AtomicBool::new(false));
    let probe = (config.metadata == Metadata::Zookeeper).then(|| {
        let brokers: Vec<(NodeId, String)> = system
            .broker_ids()
            .into_iter()
            .zip(system.bootstrap().split(',').map(str::to_string))
            .collect();
        let (shared, stop, partitions) = (shared.clone(), probe_stop.clone(), config.partitions);
        std::thread::spawn(move || leader_probe(&brokers, (partitions, ballast), &shared, &stop))
    });
    let workers: Vec<_> = (0..config.concurrency)
        .map(|w| {
            let (shared, stop, config, bootstrap) = (
                shared.clone(),
                stop.clone(),
                config.clone(),
                bootstrap.clone(),
            );
            std::thread::spawn(move || match config.workload {
                Workload::Log => log_worker(w, &config, &bootstrap, &shared, &stop),
                Workload::Queue => queue_worker(w, &config, &bootstrap, &shared, &stop),
            })
        })
        .collect();

    let (mut faults, chains) = nemesis_loop(config, &mut system, &shared);
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        let _ = w.join();
    }
    for (node, status) in system.reap_exited() {
        faults.push(format!("node {node} ended on its own: {status}"));
        record_exit(&shared, node, &status);
    }
    system
        .heal()
        .map_err(|e| format!("harness failure: healing: {e}"))?;
    shared.record(
        OpType::Info,
        Process::Nemesis,
        "heal",
        OpValue::Other(serde_json::json!("all")),
    );
    if let Some(zk) = &system.zookeeper {
        zk.wait_serving(Duration::from_secs(30)).map_err(|e| {
            format!("harness failure: the healed ZooKeeper ensemble does not serve: {e}")
        })?;
    }
    // Let the healed cluster settle before the final reads, as Jepsen's final generators wait
    // after recovery: a leader elected during the heal starts from its own follower HW, below
    // what the old leader had committed, and raises it only once its followers fetch; a final
    // poll that stopped at that lagging HW would report acknowledged writes as `unseen`.
    // The reassignments the nemesis left running complete meanwhile (or are recorded
    // incomplete: `await-reassign`).
    let healed = Instant::now();
    await_reassignments(&chains, &mut system, &mut admin, &shared);
    std::thread::sleep(SETTLE_AFTER_HEAL.saturating_sub(healed.elapsed()));
    match config.workload {
        Workload::Log => final_reads(config, &system.bootstrap(), &shared),
        Workload::Queue => final_polls(config, &system.bootstrap(), &shared),
    }
    probe_stop.store(true, Ordering::SeqCst);
    if let Some(p) = probe {
        let _ = p.join();
    }
    for (node, status) in system.reap_exited() {
        faults.push(format!("node {node} ended on its own: {status}"));
        record_exit(&shared, node, &status);
    }
    system.shutdown();
    record_logged_assertions(&system, &dir, &shared);

    let shared = Arc::try_unwrap(shared).map_err(|_| "workers still running".to_string())?;
    let history = shared
        .recorder
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .finish();
    let file = std::fs::File::create(dir.join("history.jsonl")).map_err(|e| e.to_string())?;
    history
        .write(std::io::BufWriter::new(file))
        .map_err(|e| e.to_string())?;
    Ok(RunOutcome {
        dir,
        history_ops: history.ops.len(),
        faults,
        start_mono_ns,
    })
}

/// Starts a proxy for every directed link a node dials (a controller: the other controllers;
/// a broker: every controller and the other brokers; controllers never dial brokers) and
/// gives each node `--peer-address ID=PROXY` for each. Clients, the harness included, still
/// reach the nodes directly: the brokers register and advertise their own listeners.
fn link_proxies(
    specs: &mut [NodeSpec],
    seed: u64,
) -> std::io::Result<crate::nemesis::proxynet::ProxyNetwork> {
    let addr_of = |spec: &NodeSpec| -> Option<std::net::SocketAddr> {
        let a = match &spec.client_addr {
            Some(a) => a.clone(),
            None => {
                let i = spec.args.iter().position(|a| a == "--controller-listen")?;
                spec.args.get(i + 1)?.clone()
            }
        };
        a.parse().ok()
    };
    let mut addrs = BTreeMap::new();
    for spec in specs.iter() {
        let a = addr_of(spec)
            .ok_or_else(|| std::io::Error::other(format!("node {} has no address", spec.id)))?;
        addrs.insert(spec.id, a);
    }
    let controllers: Vec<NodeId> = specs
        .iter()
        .filter(|s| s.client_addr.is_none())
        .map(|s| s.id)
        .collect();
    let mut links = Vec::new();
    for spec in specs.iter() {
        let broker = spec.client_addr.is_some();
        for other in specs.iter().filter(|o| o.id != spec.id) {
            if controllers.contains(&other.id) || broker {
                links.push((spec.id, other.id));
            }
        }
    }
    let net = crate::nemesis::proxynet::ProxyNetwork::start(&links, &addrs, seed)?;
    for spec in specs.iter_mut() {
        for &(from, to) in links.iter().filter(|(f, _)| *f == spec.id) {
            let proxy = net.addr(from, to).expect("started above");
            spec.args.push("--peer-address".into());
            spec.args.push(format!("{to}={proxy}"));
        }
    }
    Ok(net)
}

/// How long the healed system settles before the final reads.
const SETTLE_AFTER_HEAL: Duration = Duration::from_secs(3);

/// The brokers' `min.insync.replicas`: 2 of RF 3 on a cluster, 1 on a single broker.
fn min_insync_replicas(config: &TestConfig) -> usize {
    if config.brokers >= 3 {
        2
    } else {
        1
    }
}

/// Controller node ids start here (as `kcheck cluster` numbers them), brokers at 1.
const CONTROLLER_ID_BASE: i32 = 3000;

/// `broker.session.timeout.ms` of the run's controllers: a killed or partitioned broker is
/// fenced this long after its last heartbeat (Kafka's default is 9 s; short, so failovers
/// happen within a run).
const BROKER_SESSION_TIMEOUT: Duration = Duration::from_millis(2000);

/// Every node id of the run: brokers from 1, controllers from [`CONTROLLER_ID_BASE`] + 1.
fn node_ids(config: &TestConfig) -> Vec<NodeId> {
    let brokers = 1..=config.brokers as i32;
    let controllers = (1..=config.controllers as i32).map(|i| CONTROLLER_ID_BASE + i);
    brokers.chain(controllers).collect()
}

/// The nodes of the system under test, with their fixed addresses: one standalone broker, or
/// a KRaft controller quorum and brokers (replication factor min(3, brokers),
/// min.insync.replicas 2 from three brokers on), with short failure-detection timeouts so
/// failovers happen within a run.
fn node_specs(
    config: &TestConfig,
    dir: &Path,
    host: &dyn Fn(NodeId) -> String,
) -> std::io::Result<Vec<NodeSpec>> {
    if config.controllers == 0 {
        return standalone_spec(config, dir, &host(1));
    }
    let port = |id: NodeId| crate::system::free_port().map(|p| format!("{}:{p}", host(id)));
    let controllers: Vec<(i32, String)> = (1..=config.controllers as i32)
        .map(|i| Ok((CONTROLLER_ID_BASE + i, port(CONTROLLER_ID_BASE + i)?)))
        .collect::<std::io::Result<_>>()?;
    let voters = controllers
        .iter()
        .map(|(id, a)| format!("{id}@{a}"))
        .collect::<Vec<_>>()
        .join(",");
    // Each process takes the flags of its role (validated before the run).
    let (broker_bugs, controller_bugs) =
        kcheck_reference::cli::split_bug_flags(&config.bugs).map_err(std::io::Error::other)?;
    let flags = |bugs: &[String]| -> Vec<String> {
        bugs.iter()
            .flat_map(|b| ["--bug".to_string(), b.clone()])
            .collect()
    };
    let mut specs = Vec::new();
    for (id, addr) in &controllers {
        let data_dir = dir.join(format!("n{id}")).join("data");
        let mut args: Vec<String> = vec![
            "broker".into(),
            "--process-roles".into(),
            "controller".into(),
            "--node-id".into(),
            id.to_string(),
            "--controller-listen".into(),
            addr.clone(),
            "--controller-quorum-voters".into(),
            voters.clone(),
            "--broker-session-timeout-ms".into(),
            BROKER_SESSION_TIMEOUT.as_millis().to_string(),
            "--flush".into(),
            config.flush.clone(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        args.extend(trace_flag(dir, *id));
        args.extend(flags(&controller_bugs));
        specs.push(NodeSpec {
            id: *id,
            program: config.program.clone(),
            args,
            data_dir,
            client_addr: None,
        });
    }
    for id in 1..=config.brokers as i32 {
        let listen = port(id)?;
        let data_dir = dir.join(format!("n{id}")).join("data");
        let mut args: Vec<String> = vec![
            "broker".into(),
            "--process-roles".into(),
            "broker".into(),
            "--node-id".into(),
            id.to_string(),
            "--listen".into(),
            listen.clone(),
            "--controller-quorum-voters".into(),
            voters.clone(),
        ];
        args.extend(replication_args(config, &data_dir));
        args.extend(trace_flag(dir, id));
        args.extend(flags(&broker_bugs));
        specs.push(NodeSpec {
            id,
            program: config.program.clone(),
            args,
            data_dir,
            client_addr: Some(listen),
        });
    }
    Ok(specs)
}

/// `zookeeper.session.timeout.ms` of a ZooKeeper-mode run's brokers: a broker paused or cut
/// off this long loses its registration (and the controller role). Kafka's default was 18 s;
/// the ensemble's tickTime of 300 ms grants 0.6 s to 6 s.
pub const ZOOKEEPER_SESSION_TIMEOUT: Duration = Duration::from_millis(2000);

/// The brokers of a ZooKeeper-mode run: each reaches the ensemble through its own proxies,
/// with the KRaft run's replication settings (min.insync.replicas 2 from three brokers on,
/// replica.lag.time.max.ms 3 s).
fn zookeeper_specs(
    config: &TestConfig,
    dir: &Path,
    zk: &MetadataEnsemble,
) -> std::io::Result<Vec<NodeSpec>> {
    let mut specs = Vec::new();
    for id in 1..=config.brokers as i32 {
        let listen = format!("127.0.0.1:{}", crate::system::free_port()?);
        let data_dir = dir.join(format!("n{id}")).join("data");
        let mut args: Vec<String> = vec![
            "broker".into(),
            "--node-id".into(),
            id.to_string(),
            "--listen".into(),
            listen.clone(),
            "--zookeeper".into(),
            zk.connect_string(id),
            "--zookeeper-session-timeout-ms".into(),
            ZOOKEEPER_SESSION_TIMEOUT.as_millis().to_string(),
        ];
        args.extend(replication_args(config, &data_dir));
        args.extend(
            config
                .bugs
                .iter()
                .flat_map(|b| ["--bug".to_string(), b.clone()]),
        );
        specs.push(NodeSpec {
            id,
            program: config.program.clone(),
            args,
            data_dir,
            client_addr: Some(listen),
        });
    }
    Ok(specs)
}

/// The ballast topic's partition count in this run: [`zombie_failover::BALLAST_PARTITIONS`]
/// in ZooKeeper mode with `zombie-failover` (the controller must have many partitions to fail
/// over for the fault to pause it in the middle), else 0 (no ballast topic).
///
/// [`zombie_failover::BALLAST_PARTITIONS`]: crate::nemesis::zombie_failover::BALLAST_PARTITIONS
fn ballast_partitions(config: &TestConfig) -> i32 {
    if config.metadata == Metadata::Zookeeper
        && config.nemeses.contains(&NemesisKind::ZombieFailover)
    {
        crate::nemesis::zombie_failover::BALLAST_PARTITIONS
    } else {
        0
    }
}

/// Leader probes of `brokers`, one connection each.
fn leader_probes(brokers: &[(NodeId, String)]) -> Vec<(NodeId, crate::kafka::LeaderProbe)> {
    brokers
        .iter()
        .map(|(id, addr)| {
            let probe = crate::kafka::LeaderProbe::new(addr, TOPIC, Duration::from_millis(300));
            (*id, probe)
        })
        .collect()
}

/// One round of the leader probes: what each broker that answers leads of the test topic's
/// `counts.0` partitions and the ballast's `counts.1` (one ListOffsets per broker), as the
/// value of a `leaders` op.
fn probe_leaders(
    probes: &mut [(NodeId, crate::kafka::LeaderProbe)],
    (partitions, ballast): (i32, i32),
) -> serde_json::Value {
    let ballast_topic = crate::nemesis::zombie_failover::BALLAST_TOPIC;
    let mut topics = vec![(TOPIC, partitions)];
    if ballast > 0 {
        topics.push((ballast_topic, ballast));
    }
    let (mut seen, mut ballast_seen) = (Vec::new(), Vec::new());
    for (id, probe) in probes.iter_mut() {
        if let Ok(led) = probe.led_in(&topics) {
            for ((topic, p), e) in led {
                let into = if topic == TOPIC {
                    &mut seen
                } else {
                    &mut ballast_seen
                };
                into.push((*id, p as u64, e));
            }
        }
    }
    crate::leaders::leaders_value(&seen, &ballast_seen)
}

/// The leader probe of a ZooKeeper-mode run: every [`crate::leaders::PROBE_INTERVAL`] it asks
/// each broker which partitions it leads (test topic and ballast, `counts`), in which leader
/// epoch, and records a `leaders` op whenever the answers change, until `stop`.
fn leader_probe(
    brokers: &[(NodeId, String)],
    counts: (i32, i32),
    shared: &Shared,
    stop: &AtomicBool,
) {
    let mut probes = leader_probes(brokers);
    let mut last: Option<serde_json::Value> = None;
    while !stop.load(Ordering::SeqCst) {
        let seen = probe_leaders(&mut probes, counts);
        if last.as_ref() != Some(&seen) {
            shared.record(
                OpType::Info,
                Process::Nemesis,
                crate::leaders::F_LEADERS,
                OpValue::Other(seen.clone()),
            );
            last = Some(seen);
        }
        std::thread::sleep(crate::leaders::PROBE_INTERVAL);
    }
}

/// Every cluster node writes its protocol transition events to `<run>/n<ID>/trace.jsonl`, for
/// `kcheck conform` (next to the node's log, not in its data directory: a LazyFs data
/// directory loses unsynced writes, and the trace must keep every event).
/// A cluster broker's replication settings, the same in both metadata modes: min.insync.replicas
/// ([`min_insync_replicas`]), replica.lag.time.max.ms 3 s (short, so ISR shrinks happen within
/// a run), the run's flush policy and its data directory.
fn replication_args(config: &TestConfig, data_dir: &Path) -> [String; 8] {
    [
        "--min-insync-replicas".into(),
        min_insync_replicas(config).to_string(),
        "--replica-lag-time-max-ms".into(),
        "3000".into(),
        "--flush".into(),
        config.flush.clone(),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ]
}

fn trace_flag(dir: &Path, id: i32) -> [String; 2] {
    let path = dir.join(format!("n{id}")).join(crate::conform::TRACE_FILE);
    ["--trace-file".into(), path.display().to_string()]
}

fn standalone_spec(config: &TestConfig, dir: &Path, host: &str) -> std::io::Result<Vec<NodeSpec>> {
    let listen = format!("{host}:{}", crate::system::free_port()?);
    let data_dir = dir.join("n1").join("data");
    Ok(vec![NodeSpec {
        id: 1,
        program: config.program.clone(),
        args: vec![
            "broker".into(),
            "--flush".into(),
            config.flush.clone(),
            "--listen".into(),
            listen.clone(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ],
        data_dir,
        client_addr: Some(listen),
    }])
}

/// The partition (key) worker `w` produces to: worker `w` mod the partition count. An acks=all
/// produce to a partition whose leader is cut off from a follower hangs until
/// replica.lag.time.max.ms shrinks the ISR; were the partition chosen at random, every worker
/// would soon wait on that one partition and the healthy ones would see no writes, which is
/// exactly when the nemesis fails their leaders (KIP-101's window needs acknowledged records
/// the followers' HW does not cover yet).
fn home_partition(w: usize, partitions: i32) -> u64 {
    (w as u64) % (partitions.max(1) as u64)
}

/// One client worker of the `log` workload: produces unique values and reads offsets it has
/// seen, at its share of the rate, until `stop`. A crashed (`info`) process is replaced by
/// process + concurrency, as Jepsen does.
fn log_worker(w: usize, config: &TestConfig, bootstrap: &str, shared: &Shared, stop: &AtomicBool) {
    let mut rng = Rng::new(config.seed.wrapping_mul(1000).wrapping_add(w as u64));
    let mut client = KafkaClient::new(bootstrap, TOPIC, config.client_timeout);
    let mut process = w as u64;
    let mut next_value = w as u64;
    let mut highest: BTreeMap<u64, u64> = BTreeMap::new();
    let period = Duration::from_secs_f64(config.concurrency as f64 / config.rate);
    let mut next_at = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now < next_at {
            std::thread::sleep((next_at - now).min(Duration::from_millis(50)));
            continue;
        }
        next_at += period;
        // Each worker keeps to its own partition (see `home_partition`).
        let partition = home_partition(w, config.partitions);
        let p = Process::Client(process);
        if rng.chance(0.6) || !highest.contains_key(&partition) {
            let value = next_value;
            next_value += config.concurrency as u64;
            let invoke = Produce {
                partition,
                value,
                offset: None,
            };
            shared.record(
                OpType::Invoke,
                p,
                "produce",
                OpValue::Produce(invoke.clone()),
            );
            match client.produce(partition as i32, value) {
                Ok(offset) => {
                    let h = highest.entry(partition).or_default();
                    *h = (*h).max(offset + 1);
                    let done = Produce {
                        offset: Some(offset),
                        ..invoke
                    };
                    shared.record(OpType::Ok, p, "produce", OpValue::Produce(done));
                }
                Err(Outcome::Definite(e)) => {
                    shared.record_error(OpType::Fail, p, "produce", OpValue::Produce(invoke), &e)
                }
                Err(Outcome::Indeterminate(e)) => {
                    shared.record_error(OpType::Info, p, "produce", OpValue::Produce(invoke), &e);
                    process += config.concurrency as u64;
                }
            }
        } else {
            let offset = rng.below(highest[&partition] + 1);
            let invoke = Read {
                partition,
                offset,
                value: None,
            };
            shared.record(OpType::Invoke, p, "read", OpValue::Read(invoke.clone()));
            match client.fetch(partition as i32, offset) {
                Ok(fetched) => match read_outcome(offset, &fetched.records) {
                    Ok(value) => {
                        let done = Read {
                            value: Some(value),
                            ..invoke
                        };
                        shared.record(OpType::Ok, p, "read", OpValue::Read(done));
                    }
                    Err(e) => {
                        shared.record_error(OpType::Fail, p, "read", OpValue::Read(invoke), &e)
                    }
                },
                // A read changes nothing: whatever went wrong, it failed.
                Err(e) => {
                    shared.record_error(OpType::Fail, p, "read", OpValue::Read(invoke), e.message())
                }
            }
        }
    }
}

/// What a fetch at `offset` of the `log` workload proves. Kafka serves a fetch only up to the
/// leader's HW, and a newly elected leader's HW starts at its own follower HW, which may lag
/// what the previous leader had committed; it catches up once its followers fetch in the new
/// epoch (KIP-207 makes ListOffsets answer OFFSET_NOT_AVAILABLE in that window for the same
/// reason). So "the fetch returned nothing at `offset`" is not evidence that `offset` is
/// uncommitted, and such a read completes `fail`: it changed nothing and tells nothing. A
/// fetch that returns a record at `offset` is evidence, and the linearizability checker
/// holds it against every acknowledged produce (a different record at a committed offset is
/// a violation).
pub fn read_outcome(offset: u64, records: &[(u64, u64)]) -> Result<u64, String> {
    records
        .iter()
        .find(|(o, _)| *o == offset)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            format!(
                "no record at offset {offset}: it is at or above this leader's HW, which after a \
                 leader change may lag the committed offsets (no information)"
            )
        })
}

/// Waits (60 s at most) until every broker is registered and unfenced (Metadata lists it), the
/// topic exists and each of its partitions has a leader.
fn wait_ready(
    admin: &mut KafkaClient,
    brokers: usize,
    partitions: i32,
    replication_factor: i16,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        let step = admin.refresh_metadata().and_then(|()| {
            if admin.broker_count() < brokers {
                return Err(Outcome::Definite(format!(
                    "{} of {brokers} brokers registered and unfenced",
                    admin.broker_count()
                )));
            }
            admin.create_topic(partitions, replication_factor)?;
            admin.refresh_metadata()?;
            match admin.leader_count() {
                n if n == partitions as usize => Ok(()),
                n => Err(Outcome::Definite(format!(
                    "{n} of {partitions} partitions have a leader"
                ))),
            }
        });
        match step {
            Ok(()) => return Ok(()),
            Err(e) => last = e.message().to_string(),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(last)
}

/// Paces a worker at its share of the rate; false once the run is over.
struct Pacer {
    period: Duration,
    next_at: Instant,
}

impl Pacer {
    fn new(config: &TestConfig) -> Pacer {
        Pacer {
            period: Duration::from_secs_f64(config.concurrency as f64 / config.rate),
            next_at: Instant::now(),
        }
    }

    fn wait(&mut self, stop: &AtomicBool) -> bool {
        loop {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            let now = Instant::now();
            if now >= self.next_at {
                self.next_at += self.period;
                return true;
            }
            std::thread::sleep((self.next_at - now).min(Duration::from_millis(50)));
        }
    }
}

/// One client of the `queue` workload: a producer and an assign-mode consumer in one process,
/// as in Jepsen's Kafka test. It sends unique values to its own key (`home_partition`; a key is a partition),
/// polls the keys it is assigned from where its last poll of each ended, and now and then
/// reassigns itself a new random set of keys (keys it keeps continue where they were; new
/// ones start at offset 0). A crash (`info`) starts a fresh process with no assignment.
fn queue_worker(
    w: usize,
    config: &TestConfig,
    bootstrap: &str,
    shared: &Shared,
    stop: &AtomicBool,
) {
    let mut rng = Rng::new(config.seed.wrapping_mul(1000).wrapping_add(w as u64));
    let mut client = KafkaClient::new(bootstrap, TOPIC, config.client_timeout);
    let mut process = w as u64;
    let mut next_value = w as u64;
    let keys = config.partitions as u64;
    // key → the offset the next poll starts at.
    let mut assigned: BTreeMap<u64, u64> = BTreeMap::new();
    let mut pacer = Pacer::new(config);
    while pacer.wait(stop) {
        let p = Process::Client(process);
        let roll = rng.below(100);
        if assigned.is_empty() || roll < 5 {
            let mut chosen: Vec<u64> = (0..keys).filter(|_| rng.chance(0.5)).collect();
            if chosen.is_empty() {
                chosen.push(rng.below(keys));
            }
            shared.record(OpType::Invoke, p, "assign", OpValue::Keys(chosen.clone()));
            assigned = chosen
                .iter()
                .map(|k| (*k, assigned.get(k).copied().unwrap_or(0)))
                .collect();
            shared.record(OpType::Ok, p, "assign", OpValue::Keys(chosen));
        } else if roll < 55 {
            let key = home_partition(w, config.partitions);
            let value = next_value;
            next_value += config.concurrency as u64;
            let invoke = OpValue::Txn(vec![Mop::Send { key, value }]);
            shared.record(OpType::Invoke, p, "send", invoke.clone());
            match client.produce(key as i32, value) {
                Ok(offset) => {
                    let done = OpValue::Txn(vec![Mop::Sent {
                        key,
                        offset: Some(offset),
                        value,
                    }]);
                    shared.record(OpType::Ok, p, "send", done);
                }
                Err(Outcome::Definite(e)) => {
                    shared.record_error(OpType::Fail, p, "send", invoke, &e)
                }
                Err(Outcome::Indeterminate(e)) => {
                    shared.record_error(OpType::Info, p, "send", invoke, &e);
                    process += config.concurrency as u64;
                    assigned.clear();
                }
            }
        } else {
            let invoke = OpValue::Txn(vec![Mop::Poll]);
            shared.record(OpType::Invoke, p, "poll", invoke.clone());
            let mut polled: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
            let mut error = None;
            for (key, position) in assigned.iter_mut() {
                match client.fetch(*key as i32, *position) {
                    Ok(f) => {
                        if let Some((last, _)) = f.records.last() {
                            *position = last + 1;
                        }
                        polled.insert(*key, f.records);
                    }
                    Err(e) => {
                        error = Some(e.message().to_string());
                        break;
                    }
                }
            }
            match error {
                // Nothing was consumed (positions moved only in memory): the poll failed, and
                // the consumer re-reads from where it was, as a Kafka consumer that did not
                // return records to the application would.
                Some(e) => {
                    for (key, records) in &polled {
                        if let Some((first, _)) = records.first() {
                            assigned.insert(*key, *first);
                        }
                    }
                    shared.record_error(OpType::Fail, p, "poll", invoke, &e);
                }
                None => {
                    let done = OpValue::Txn(vec![Mop::Polled(polled)]);
                    shared.record(OpType::Ok, p, "poll", done);
                }
            }
        }
    }
}

/// After healing, the `queue` workload's final polls: one process assigns every key and polls
/// from offset 0 until it has reached each key's HW (or `final_read_limit` passes). The HW
/// counts only while the key's ISR has min.insync.replicas members (see
/// [`KafkaClient::settled_high_watermark`]): a replica restarting after a crash can take
/// longer than the settle time to rejoin, and until it does the leader's HW may sit below
/// records its predecessor acknowledged (finding 8).
fn final_polls(config: &TestConfig, bootstrap: &str, shared: &Shared) {
    let deadline = Instant::now() + config.final_read_limit;
    let min_isr = min_insync_replicas(config);
    let mut client = KafkaClient::new(bootstrap, TOPIC, config.client_timeout);
    let process = Process::Client(1_000_000);
    let keys: Vec<u64> = (0..config.partitions as u64).collect();
    shared.record(
        OpType::Invoke,
        process,
        "assign",
        OpValue::Keys(keys.clone()),
    );
    shared.record(OpType::Ok, process, "assign", OpValue::Keys(keys.clone()));
    let mut incomplete: Vec<u64> = Vec::new();
    for key in keys {
        let mut position = 0;
        loop {
            if Instant::now() > deadline {
                incomplete.push(key);
                break;
            }
            let hw = match client.high_watermark(key as i32) {
                Ok(hw) => hw,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            };
            if position >= hw {
                match client.settled_high_watermark(key as i32, min_isr) {
                    Ok(Some(settled)) if position >= settled => break,
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
                continue;
            }
            shared.record(
                OpType::Invoke,
                process,
                "poll",
                OpValue::Txn(vec![Mop::Poll]),
            );
            match client.fetch(key as i32, position) {
                Ok(f) => {
                    if let Some((last, _)) = f.records.last() {
                        position = last + 1;
                    } else {
                        // Nothing below the HW at this offset (a gap): step over it.
                        position += 1;
                    }
                    let polled = BTreeMap::from([(key, f.records)]);
                    let done = OpValue::Txn(vec![Mop::Polled(polled)]);
                    shared.record(OpType::Ok, process, "poll", done);
                }
                Err(e) => {
                    shared.record_error(
                        OpType::Fail,
                        process,
                        "poll",
                        OpValue::Txn(vec![Mop::Poll]),
                        e.message(),
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
    // Say which keys the final reads could not finish (no leader, no HW: KIP-966 keeps a
    // partition offline once every ISR member crashed uncleanly), so the checker does not take
    // their unread writes for lost ones.
    if !incomplete.is_empty() {
        shared.record(
            OpType::Info,
            Process::Nemesis,
            crate::queue::FINAL_READS_INCOMPLETE,
            OpValue::Other(serde_json::json!({ "keys": incomplete })),
        );
    }
}

/// After healing: read every offset below each partition's HW, retrying until the system
/// answers or `final_read_limit` passes (then the reads are missing and the check may be
/// `unknown`, never silently valid).
fn final_reads(config: &TestConfig, bootstrap: &str, shared: &Shared) {
    let deadline = Instant::now() + config.final_read_limit;
    let min_isr = min_insync_replicas(config);
    let mut client = KafkaClient::new(bootstrap, TOPIC, config.client_timeout);
    let process = Process::Client(1_000_000);
    for partition in 0..config.partitions as u64 {
        // The HW once the ISR is back at min.insync.replicas (see `final_polls`); at the
        // deadline whatever HW the leader has.
        let hw = loop {
            let settled = if Instant::now() < deadline {
                client.settled_high_watermark(partition as i32, min_isr)
            } else {
                client.high_watermark(partition as i32).map(Some)
            };
            match settled {
                Ok(Some(hw)) => break Some(hw),
                Ok(None) | Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Ok(None) | Err(_) => break None,
            }
        };
        let Some(hw) = hw else { continue };
        let mut offset = 0;
        while offset < hw && Instant::now() < deadline {
            match client.fetch(partition as i32, offset) {
                // Nothing returned: this leader's HW may still lag (see `read_outcome`); ask
                // again rather than record a read that proves nothing.
                Ok(fetched) if fetched.records.is_empty() => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Ok(fetched) => {
                    // One read op per offset returned below the HW, with the record found.
                    for &(o, value) in fetched
                        .records
                        .iter()
                        .filter(|(o, _)| *o >= offset && *o < hw)
                    {
                        let read = Read {
                            partition,
                            offset: o,
                            value: None,
                        };
                        shared.record(OpType::Invoke, process, "read", OpValue::Read(read.clone()));
                        let done = Read {
                            value: Some(value),
                            ..read
                        };
                        shared.record(OpType::Ok, process, "read", OpValue::Read(done));
                    }
                    offset = fetched
                        .records
                        .last()
                        .map_or(offset, |(o, _)| o + 1)
                        .max(offset + 1);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

/// Which nodes a fault hits, in Jepsen's terms (`jepsen.nemesis.combined`'s node specs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One random node.
    One,
    /// A random minority (at least one node).
    Minority,
    /// A random majority.
    Majority,
    /// Every broker that leads a partition of the test topic (from Metadata).
    Leaders,
    /// One broker that leads no partition, i.e. only follows (from Metadata): under a delay,
    /// a crash of it leaves its last Fetch on the way to its leader, to arrive after its
    /// restart (KIP-903's stale fetch).
    Follower,
    /// One partition leader (the one a partition in force is aimed at, if it still leads),
    /// then the new leader of a partition it led as soon as Metadata names one: two failovers
    /// in quick succession, the shape of KIP-101's data loss (a follower of the short-lived
    /// leader truncated to its HW and then became leader itself).
    LeaderChain,
    /// The KRaft controller quorum leader (from DescribeQuorum on `__cluster_metadata`); in
    /// ZooKeeper mode it resolves to [`Target::Controller`].
    ControllerLeader,
    /// ZooKeeper mode: the active controller, the broker `/controller` names.
    Controller,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::One => "one",
            Target::Minority => "minority",
            Target::Majority => "majority",
            Target::Leaders => "leaders",
            Target::Follower => "follower",
            Target::LeaderChain => "leader-chain",
            Target::ControllerLeader => "controller-leader",
            Target::Controller => "controller",
        }
    }
}

/// Chooses the next fault's kind among `kinds`, seeded. A partition counts twice (it is the
/// only fault that cuts replicas off each other while they run); while one is in force, a
/// crash or pause is chosen three times in four, to fail leaders behind it (see
/// [`choose_target`]).
fn choose_kind(rng: &mut Rng, kinds: &[NemesisKind], partitioned: bool) -> NemesisKind {
    // A delay in force counts as a partition here: it holds a follower's requests back, and a
    // crash behind it completes the fault (see `choose_target`).
    let failing = |k: &NemesisKind| {
        matches!(
            k,
            NemesisKind::Kill | NemesisKind::LoseUnsynced | NemesisKind::Pause
        )
    };
    let crashes: Vec<NemesisKind> = kinds.iter().copied().filter(failing).collect();
    if partitioned && !crashes.is_empty() && rng.below(4) != 0 {
        return crashes[rng.below(crashes.len() as u64) as usize];
    }
    let weighted: Vec<NemesisKind> = kinds
        .iter()
        .flat_map(|&k| {
            // A partition and a reassignment count twice: the first sets up replication
            // bugs' first half, the second is one of six kinds under `--nemesis all` and
            // runs only when no other reassign fault is in force; so does `zombie-failover`
            // (one of nine in ZooKeeper mode, and it needs every broker free of faults). A
            // quorum fault counts three times: one kind stands for the three shapes (five
            // variants) the seven Raft bugs need, and it cannot start while another grudge holds.
            let n = match k {
                NemesisKind::Partition | NemesisKind::Reassign | NemesisKind::ZombieFailover => 2,
                NemesisKind::Quorum => 3,
                _ => 1,
            };
            std::iter::repeat_n(k, n)
        })
        .collect();
    weighted[rng.below(weighted.len() as u64) as usize]
}

/// The shapes of the partition nemesis: Jepsen's (`jepsen.nemesis.combined`: halves, random
/// halves, one node, majorities ring, the primaries, a bridge, one-way) plus two aimed at
/// the replication protocol, which cut the brokers' data plane while every broker still
/// reaches the controllers. Each is a [`Grudge`] the namespaces enforce with nftables drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionShape {
    /// A seeded random half of every node (brokers and controllers) against the other half.
    RandomHalves,
    /// One random node (broker or controller) alone.
    IsolateOne,
    /// Each partition leader alone, the rest together (Jepsen's `:primaries`): the controller
    /// fences the leaders and elects others while they still believe they lead.
    IsolateLeaders,
    /// Every node hears a different majority of all nodes (Jepsen's majorities ring).
    MajoritiesRing,
    /// A partition leader bridges the other brokers, which do not hear each other; the
    /// controllers hear everyone. The followers stay in the ISR (both fetch from the leader),
    /// but once the leader fails the new leader's followers cannot fetch from it: a follower
    /// that truncated on the leader change keeps its truncated log, the window of KIP-101's
    /// second failover (the `truncate-to-hw` trace).
    BridgeLeader,
    /// A follower of a partition leader cut from the other brokers but not the controllers:
    /// it stays registered and unfenced, falls out of the ISR after replica.lag.time.max.ms,
    /// and is the live out-of-sync replica an unclean election picks (KIP-106, KIP-966).
    IsolateFollower,
    /// A partition leader stops hearing from the controllers (one-way: what it sends arrives,
    /// answers and metadata do not), so it goes on believing it leads.
    OneWayLeader,
}

impl PartitionShape {
    pub fn name(self) -> &'static str {
        match self {
            PartitionShape::RandomHalves => "random-halves",
            PartitionShape::IsolateOne => "isolate-one",
            PartitionShape::IsolateLeaders => "isolate-leaders",
            PartitionShape::MajoritiesRing => "majorities-ring",
            PartitionShape::BridgeLeader => "bridge-leader",
            PartitionShape::IsolateFollower => "isolate-follower",
            PartitionShape::OneWayLeader => "one-way-leader",
        }
    }

    /// Seeded; the shapes aimed at leaders and their followers are favoured, since every
    /// replication bug of the reference cluster needs a leader or its follower to fail.
    fn choose(rng: &mut Rng) -> PartitionShape {
        match rng.below(11) {
            0..=3 => PartitionShape::BridgeLeader,
            4 | 5 => PartitionShape::IsolateFollower,
            6 => PartitionShape::IsolateLeaders,
            7 => PartitionShape::RandomHalves,
            8 => PartitionShape::IsolateOne,
            9 => PartitionShape::MajoritiesRing,
            _ => PartitionShape::OneWayLeader,
        }
    }
}

/// A seeded shuffle of `nodes`.
fn shuffled(rng: &mut Rng, nodes: &[NodeId]) -> Vec<NodeId> {
    let mut out = nodes.to_vec();
    for i in (1..out.len()).rev() {
        out.swap(i, rng.below(i as u64 + 1) as usize);
    }
    out
}

/// The grudge of `shape` over `brokers` and `controllers`, given the partition `leaders` (from
/// Metadata; empty when the lookup failed). A shape that needs a leader falls back to
/// isolating one node when there is none. Returns the shape actually used.
pub fn partition_grudge(
    shape: PartitionShape,
    rng: &mut Rng,
    brokers: &[NodeId],
    controllers: &[NodeId],
    leaders: &[NodeId],
) -> (PartitionShape, Grudge, Option<NodeId>) {
    use crate::nemesis::grudge;
    let all: Vec<NodeId> = brokers.iter().chain(controllers).copied().collect();
    let leader = (!leaders.is_empty()).then(|| leaders[rng.below(leaders.len() as u64) as usize]);
    let others =
        |l: NodeId| -> Vec<NodeId> { brokers.iter().copied().filter(|b| *b != l).collect() };
    match (shape, leader) {
        (PartitionShape::RandomHalves, _) => (shape, grudge::random_halves(&all, rng), None),
        (PartitionShape::MajoritiesRing, _) => {
            (shape, grudge::majorities_ring(&shuffled(rng, &all)), None)
        }
        (PartitionShape::IsolateLeaders, Some(_)) => {
            (shape, grudge::isolate_all(&all, leaders), None)
        }
        (PartitionShape::BridgeLeader, Some(l)) if brokers.len() >= 3 => {
            let mut order = shuffled(rng, &others(l));
            order.insert(brokers.len() / 2, l);
            (shape, grudge::bridge(&order), Some(l))
        }
        (PartitionShape::IsolateFollower, Some(l)) if brokers.len() >= 2 => {
            let followers = others(l);
            let f = followers[rng.below(followers.len() as u64) as usize];
            (shape, grudge::isolate(brokers, f), Some(l))
        }
        (PartitionShape::OneWayLeader, Some(l)) if !controllers.is_empty() => {
            (shape, grudge::one_way(controllers, &[l]), None)
        }
        _ => {
            let victim = all[rng.below(all.len() as u64) as usize];
            (
                PartitionShape::IsolateOne,
                grudge::isolate(&all, victim),
                None,
            )
        }
    }
}

/// At most this many faults are in force at once. Two overlapping faults are what the
/// replication bugs need: the model counterexamples (specs/traces/replication-*.json) all have
/// a second failure while the first is unhealed (the new leader crashes while the old one is
/// down under truncate-to-hw, KIP-101; the ISR's last members crash while a lagging replica
/// is out of it under unclean-election and last-replica-standing, KIP-966).
const MAX_FAULTS_IN_FORCE: usize = 2;

/// Chooses the kind of target, seeded. Partition leaders are favoured: every replication bug
/// of the reference cluster needs a leader to fail. A standalone broker has one node.
/// While a partition is in force, process faults aim at the leaders five times in six
/// (mostly `leader-chain`): a partition sets up the replication bugs' first half (a follower
/// cut off from its peers, out of the ISR or unable to refetch after truncating) and a
/// failover of the leaders completes it.
fn choose_target(rng: &mut Rng, cluster: bool, partitioned: bool, slowed: bool) -> Target {
    if !cluster {
        return Target::One;
    }
    // Under a delay, crash a follower two times in three: its last Fetch, held back on the
    // link, reaches the leader after the restart (KIP-903); otherwise the leaders.
    if slowed {
        match rng.below(6) {
            0..=3 => return Target::Follower,
            4 => return Target::LeaderChain,
            _ => {}
        }
    }
    if partitioned {
        match rng.below(6) {
            0..=3 => return Target::LeaderChain,
            4 => return Target::Leaders,
            _ => {}
        }
    }
    match rng.below(10) {
        0 | 1 => Target::One,
        2 => Target::Minority,
        3 | 4 => Target::Majority,
        5 | 6 => Target::Leaders,
        7 => Target::LeaderChain,
        _ => Target::ControllerLeader,
    }
}

/// `count` distinct nodes of `group`, seeded.
fn pick(rng: &mut Rng, group: &[NodeId], count: usize) -> Vec<NodeId> {
    let mut left = group.to_vec();
    let mut out = Vec::new();
    while out.len() < count && !left.is_empty() {
        out.push(left.remove(rng.below(left.len() as u64) as usize));
    }
    out.sort();
    out
}

/// The nodes a target names right now. Random targets choose among the brokers, or one time
/// in four among the controllers; leaders are looked up, and when the lookup fails (no
/// leader, nobody answers) the fault falls back to one random node of the same role, so the
/// schedule never stalls. Returns the target actually used.
fn resolve_target(
    target: Target,
    rng: &mut Rng,
    system: &ProcessSystem,
    admin: &mut KafkaClient,
    aim: Option<NodeId>,
) -> (Target, Vec<NodeId>) {
    let brokers = system.broker_ids();
    let controllers = system.controller_ids();
    let group = if !controllers.is_empty() && rng.below(4) == 0 {
        &controllers
    } else {
        &brokers
    };
    let n = group.len();
    match target {
        Target::One => (target, pick(rng, group, 1)),
        Target::Minority => {
            // 1 ..= (n - 1) / 2 nodes (one of three, one or two of five).
            let size = 1 + rng.below(((n.max(2) - 1) / 2).max(1) as u64) as usize;
            (target, pick(rng, group, size))
        }
        Target::Majority => (target, pick(rng, group, n / 2 + 1)),
        Target::Leaders => match admin.partition_leaders() {
            Ok(ids) if !ids.is_empty() => (target, ids),
            _ => (Target::One, pick(rng, &brokers, 1)),
        },
        Target::Follower => match admin.partition_leaders() {
            Ok(ids) if brokers.iter().any(|b| !ids.contains(b)) => {
                let followers: Vec<NodeId> = brokers
                    .iter()
                    .copied()
                    .filter(|b| !ids.contains(b))
                    .collect();
                (target, pick(rng, &followers, 1))
            }
            _ => (Target::One, pick(rng, &brokers, 1)),
        },
        Target::LeaderChain => match admin.partition_leaders() {
            Ok(ids) if aim.is_some_and(|a| ids.contains(&a)) => (target, vec![aim.unwrap()]),
            Ok(ids) if !ids.is_empty() => (target, pick(rng, &ids, 1)),
            _ => (Target::One, pick(rng, &brokers, 1)),
        },
        Target::ControllerLeader | Target::Controller if system.zookeeper.is_some() => {
            match system.zookeeper.as_ref().and_then(|zk| zk.controller()) {
                Some((c, _)) if brokers.contains(&c) => (Target::Controller, vec![c]),
                _ => (Target::One, pick(rng, &brokers, 1)),
            }
        }
        Target::ControllerLeader | Target::Controller => {
            let leader = controllers.iter().find_map(|&c| {
                let addr = system.controller_addr(c)?;
                crate::kafka::quorum_leader(&addr, Duration::from_secs(1))
                    .ok()
                    .flatten()
            });
            match leader {
                Some(id) if controllers.contains(&id) => (target, vec![id]),
                _ => (Target::One, pick(rng, &controllers, 1)),
            }
        }
    }
}

/// Polls Metadata (every 20 ms, until `deadline`) until one of the partitions `led` has a
/// leader outside `faulted`; returns those new leaders (none if no failover happened in time).
fn new_leaders(
    admin: &mut KafkaClient,
    faulted: &[NodeId],
    led: &[i32],
    deadline: Instant,
) -> Vec<NodeId> {
    while Instant::now() < deadline {
        if let Ok(map) = admin.leader_map() {
            let mut fresh: Vec<NodeId> = led
                .iter()
                .filter_map(|p| map.get(p).copied())
                .filter(|id| !faulted.contains(id))
                .collect();
            fresh.sort();
            fresh.dedup();
            if !fresh.is_empty() {
                return fresh;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Vec::new()
}

/// Crashes take down one broker at a time (of three or more; all but one of two): when every
/// ISR member of a partition has shut down uncleanly, KIP-966 correctly keeps it offline for
/// good (no replica is known to hold the committed records, and the reference has no unclean
/// recovery), so the rest of the run and its final reads would test nothing there and a
/// correct cluster's run would end undecided. Pauses of any number of brokers are allowed
/// (a paused broker comes back clean), and so are crashes of controllers.
fn spare_last_broker(
    kind: NemesisKind,
    mut nodes: Vec<NodeId>,
    in_force: &[Fault],
    system: &ProcessSystem,
) -> Vec<NodeId> {
    if !kind.crashes() {
        return nodes;
    }
    let crashed = |nodes: &[NodeId], n: &NodeId| {
        nodes.contains(n)
            || in_force
                .iter()
                .any(|f| f.kind.crashes() && f.nodes.contains(n))
    };
    let brokers = system.broker_ids();
    // One crashed broker at a time (all but one with two brokers or fewer).
    let allowed = if brokers.len() >= 3 {
        1
    } else {
        brokers.len().saturating_sub(1)
    };
    while brokers.len() > 1 && brokers.iter().filter(|b| crashed(&nodes, b)).count() > allowed {
        match nodes.iter().rposition(|n| brokers.contains(n)) {
            Some(i) => {
                nodes.remove(i);
            }
            None => break,
        }
    }
    nodes
}

/// A fault in force.
struct Fault {
    kind: NemesisKind,
    nodes: Vec<NodeId>,
    value: serde_json::Value,
    /// The nemesis tick at which it is healed.
    until_tick: u64,
    /// For a partition aimed at a partition leader: that leader. For a delay: the follower
    /// crashed behind it, once one was.
    aim: Option<NodeId>,
    /// ZooKeeper servers (myids) a ZooKeeper-side fault holds.
    servers: Vec<u32>,
}

impl Fault {
    /// A fault aimed at no leader and holding no ZooKeeper server, healed at `until_tick`.
    fn new(
        kind: NemesisKind,
        nodes: Vec<NodeId>,
        value: serde_json::Value,
        until_tick: u64,
    ) -> Fault {
        Fault {
            kind,
            nodes,
            value,
            until_tick,
            aim: None,
            servers: Vec::new(),
        }
    }

    /// A step of a composite fault, healed (resumed, or its end recorded) at the next tick.
    fn until_next_tick(
        kind: NemesisKind,
        nodes: Vec<NodeId>,
        value: serde_json::Value,
        tick: u64,
    ) -> Fault {
        Fault::new(kind, nodes, value, tick + 1)
    }
}

fn node_list(nodes: &[NodeId]) -> String {
    nodes
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts one fault on its nodes; the detail for the summary, or what failed.
fn start_fault(
    kind: NemesisKind,
    nodes: &[NodeId],
    rng: &mut Rng,
    system: &mut ProcessSystem,
) -> std::io::Result<String> {
    let mut detail = String::new();
    for &node in nodes {
        match kind {
            NemesisKind::Kill => system.kill(node)?,
            NemesisKind::LoseUnsynced => {
                system.kill(node)?;
                let r = system.lose_unsynced(node)?;
                detail.push_str(&format!(
                    " (n{node} lost {} bytes in {} files)",
                    r.bytes_truncated,
                    r.files.len()
                ));
            }
            NemesisKind::Pause => system.pause(node)?,
            NemesisKind::Clock => {
                let delta_ms = (rng.below(2 * 3_600_000) as i64) - 3_600_000;
                if let Some(c) = system.clock(node) {
                    c.set_offset_ms(delta_ms)?;
                }
                detail.push_str(&format!(" (n{node} wall clock {delta_ms:+} ms)"));
            }
            // Partitions are started by `start_partition`, for every node at once.
            NemesisKind::Partition => {}
            NemesisKind::Zombie => system.pause(node)?,
            NemesisKind::ExpireSession => zookeeper(system)?.isolate_broker(node, true),
            // ZooKeeper servers are not broker nodes: see `start_zookeeper_fault`.
            // Not a node fault: see `start_reassign`, `start_zombie_failover`.
            NemesisKind::ZombieFailover
            | NemesisKind::ZkKill
            | NemesisKind::ZkPartition
            | NemesisKind::Reassign
            | NemesisKind::Delay
            | NemesisKind::Loss
            | NemesisKind::Quorum => {
                return Err(std::io::Error::other(format!(
                    "{} does not target node {node}",
                    kind.name()
                )))
            }
        }
    }
    Ok(detail)
}

/// Heals a fault's nodes, except those another fault still in force holds the same way (a
/// node killed twice restarts when the last kill ends).
fn stop_fault(fault: &Fault, others: &[Fault], system: &mut ProcessSystem) -> std::io::Result<()> {
    if fault.kind == NemesisKind::Quorum {
        return crate::nemesis::quorum::stop(&fault.value, system);
    }
    // One grudge at a time is in force (a new partition waits for the old one's end).
    if fault.kind == NemesisKind::Partition {
        system.partition(&Grudge::default())?;
    }
    if fault.kind.shapes_links() {
        system.unshape(fault.kind.name());
        return Ok(());
    }
    let holds = |kind: NemesisKind, node: NodeId| {
        others.iter().any(|o| {
            o.nodes.contains(&node)
                && match kind {
                    k if k.crashes() => o.kind.crashes(),
                    k => o.kind == k,
                }
        })
    };
    for &node in &fault.nodes {
        if holds(fault.kind, node) || fault.kind == NemesisKind::Partition {
            continue;
        }
        match fault.kind {
            NemesisKind::Kill | NemesisKind::LoseUnsynced | NemesisKind::ZombieFailover => {
                system.restart(node)?
            }
            NemesisKind::Pause => system.resume(node)?,
            NemesisKind::Clock => system.clock(node).map_or(Ok(()), |c| c.reset())?,
            NemesisKind::Partition => {}
            // The zombie's requests queued before the pause go out after the new controller's
            // (the trigger waits for SIGCONT).
            NemesisKind::Zombie => {
                system.resend_controller_requests(node)?;
                system.resume(node)?;
            }
            NemesisKind::ExpireSession => zookeeper(system)?.isolate_broker(node, false),
            NemesisKind::ZkKill
            | NemesisKind::ZkPartition
            | NemesisKind::Reassign
            | NemesisKind::Delay
            | NemesisKind::Loss
            | NemesisKind::Quorum => {}
        }
    }
    for &server in &fault.servers {
        let zk = zookeeper(system)?;
        match fault.kind {
            NemesisKind::ZkKill => zk.restart(server).map_err(std::io::Error::other)?,
            NemesisKind::ZkPartition => zk.isolate_server(server, false),
            _ => {}
        }
    }
    Ok(())
}

/// `{"controller": id, "controller-epoch": e}` as ZooKeeper has it now (ZooKeeper mode).
fn controller_value(system: &ProcessSystem) -> Option<serde_json::Value> {
    let (id, epoch) = system.zookeeper.as_ref()?.controller()?;
    Some(serde_json::json!({ "controller": id, "controller-epoch": epoch }))
}

/// The ZooKeeper side of a ZooKeeper-mode run, or an error naming the mode.
fn zookeeper(system: &mut ProcessSystem) -> std::io::Result<&mut MetadataEnsemble> {
    system
        .zookeeper
        .as_mut()
        .ok_or_else(|| std::io::Error::other("not a ZooKeeper-mode run (--metadata zookeeper)"))
}

/// Starts a fault on one ZooKeeper server: the ensemble's leader half the time, else a random
/// server no other fault holds, so that a majority always stays up and connected (a lost
/// quorum stops the whole cluster's metadata and tests little). Returns the server and its
/// target, or `None` when every server that may fail is already held.
fn start_zookeeper_fault(
    kind: NemesisKind,
    rng: &mut Rng,
    system: &mut ProcessSystem,
    in_force: &[Fault],
) -> Option<(u32, &'static str, std::io::Result<()>)> {
    let zk = system.zookeeper.as_mut()?;
    let ids = zk.myids();
    let held: Vec<u32> = in_force.iter().flat_map(|f| f.servers.clone()).collect();
    if held.len() >= ids.len().saturating_sub(1) / 2 {
        return None;
    }
    let free: Vec<u32> = ids.into_iter().filter(|s| !held.contains(s)).collect();
    let (server, target) = match zk.leader() {
        Some(l) if free.contains(&l) && rng.below(2) == 0 => (l, "zookeeper-leader"),
        _ => (free[rng.below(free.len() as u64) as usize], "random-server"),
    };
    let started = match kind {
        NemesisKind::ZkKill => zk.kill(server).map_err(std::io::Error::other),
        _ => {
            zk.isolate_server(server, true);
            Ok(())
        }
    };
    Some((server, target, started))
}

/// Starts a `zombie-failover` ([`crate::nemesis::zombie_failover`]): `kill -9` of a partition
/// leader that is not the controller (of a follower when the controller leads everything),
/// SIGSTOP of the controller [`pause_offset`] after its first partition-state write once the
/// killed broker's znode went (the controller then has the BrokerChange in hand, failing over
/// the test topic's and the ballast's partitions), SIGCONT once another broker holds `/controller` with a higher
/// controller epoch (bounded) and [`RESUME_AFTER_ELECTION`] has passed; then watches the
/// leaders closely ([`watch_leaders`]) while the zombie acts. `counts` are the test topic's and
/// the ballast's partition counts. Each step is recorded (`start-zombie-failover`,
/// `zombie-failover-pause` with when the killed broker's session expired, `controller`,
/// `zombie-failover-resume`, `leaders`). Returns the start's value, the killed broker (down
/// until the fault ends) and the summary line; `None` when no controller or no broker to kill
/// is known, or a broker is not registered.
///
/// [`pause_offset`]: crate::nemesis::zombie_failover::pause_offset
/// [`RESUME_AFTER_ELECTION`]: crate::nemesis::zombie_failover::RESUME_AFTER_ELECTION
fn start_zombie_failover(
    counts: (i32, i32),
    rng: &mut Rng,
    system: &mut ProcessSystem,
    admin: &mut KafkaClient,
    record: &dyn Fn(&str, &serde_json::Value, Option<String>),
) -> Option<(serde_json::Value, NodeId, String)> {
    use crate::nemesis::zombie_failover as zf;
    let (controller, epoch) = system.zookeeper.as_ref()?.controller()?;
    let mut views: Vec<(&str, _)> = admin
        .partition_views()
        .ok()?
        .into_iter()
        .map(|v| (TOPIC, v))
        .collect();
    if counts.1 > 0 {
        let mut ballast = KafkaClient::new(
            &system.bootstrap(),
            zf::BALLAST_TOPIC,
            Duration::from_secs(2),
        );
        let more = ballast.partition_views().ok()?;
        views.extend(more.into_iter().map(|v| (zf::BALLAST_TOPIC, v)));
    }
    let led: Vec<(NodeId, Vec<NodeId>)> = views
        .iter()
        .filter_map(|(_, v)| v.leader.map(|l| (l, v.replicas.clone())))
        .collect();
    let brokers = system.broker_ids();
    // Every broker registered: a broker killed before it registered again (after a restart)
    // has no session left to expire while the controller is stopped.
    let registered = zookeeper(system).ok()?.registered_brokers()?;
    if brokers.iter().any(|b| !registered.contains(b)) {
        return None;
    }
    let (leader, leads) = zf::choose_victim(rng, &led, &brokers, controller)?;
    if !system.is_running(leader) || !system.is_running(controller) {
        return None;
    }
    let offset = zf::pause_offset(rng);
    // The partition states the controller rewrites when `leader` dies: those it leads (a new
    // leader) and those whose ISR it is in (a smaller ISR).
    let states: Vec<String> = views
        .iter()
        .filter(|(_, v)| v.leader == Some(leader) || v.isr.contains(&leader))
        .map(|(t, v)| kcheck_reference::zk_controller::partition_state_path(t, v.partition))
        .collect();
    let role = if leads { "leader" } else { "follower" };
    let value = serde_json::json!({
        "target": format!("{role}-then-controller"),
        "nodes": [leader],
        role: leader,
        "controller": controller,
        "controller-epoch": epoch,
        "partitions-led": led.iter().filter(|(l, _)| *l == leader).count(),
    });
    let killed_at = Instant::now();
    let killed = system.kill(leader);
    record(
        "start-zombie-failover",
        &value,
        killed.as_ref().err().map(|e| e.to_string()),
    );
    let mut summary = format!(
        "zombie-failover: kill -9 of {role} n{leader} ({} partitions led), controller n{controller} (epoch {epoch})",
        value["partitions-led"]
    );
    if let Err(e) = killed {
        summary.push_str(&format!(" FAILED: {e}"));
        return Some((value, leader, summary));
    }
    // The controller is failing over `leader`'s partitions from its first write on.
    let failover = zookeeper(system).ok().and_then(|zk| {
        zk.await_failover(
            leader,
            &states,
            ZOOKEEPER_SESSION_TIMEOUT * zf::EXPIRY_WAIT_SESSIONS,
            zf::FIRST_WRITE_WAIT,
        )
    });
    let since_kill =
        |at: Option<Instant>| at.map(|t| t.duration_since(killed_at).as_millis() as u64);
    let (expired_ms, written_ms) = match failover {
        Some(f) => (since_kill(f.expired), since_kill(f.written)),
        None => (None, None),
    };
    let Some(expired_ms) = expired_ms else {
        summary.push_str(&format!(
            "; n{leader}'s session not seen expiring ({}): no pause",
            if failover.is_none() {
                "no answer"
            } else {
                "still registered"
            }
        ));
        return Some((value, leader, summary));
    };
    std::thread::sleep(offset);
    let paused = system.pause(controller);
    let paused_ms = killed_at.elapsed().as_millis() as u64;
    record(
        "zombie-failover-pause",
        &serde_json::json!({
            "nodes": [controller],
            "after-kill-ms": paused_ms,
            "leader-expired-after-kill-ms": expired_ms,
            "first-write-after-kill-ms": written_ms,
        }),
        paused.as_ref().err().map(|e| e.to_string()),
    );
    summary.push_str(&format!(
        "; n{leader}'s session expired {expired_ms} ms after the kill, {}, SIGSTOP of n{controller} at {paused_ms} ms",
        match written_ms {
            Some(w) => format!("the first partition-state write of the failover at {w} ms"),
            None => "no partition-state write of the failover seen".to_string(),
        }
    ));
    if let Err(e) = paused {
        summary.push_str(&format!(" FAILED: {e}"));
        return Some((value, leader, summary));
    }
    let deadline = Instant::now() + ZOOKEEPER_SESSION_TIMEOUT * zf::NEW_CONTROLLER_WAIT_SESSIONS;
    let mut successor = None;
    while Instant::now() < deadline {
        match zookeeper(system).ok().and_then(|zk| zk.controller()) {
            Some((id, e)) if id != controller && e > epoch => {
                successor = Some((id, e));
                break;
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    match successor {
        Some((id, e)) => {
            record(
                "controller",
                &serde_json::json!({ "controller": id, "controller-epoch": e }),
                None,
            );
            summary.push_str(&format!(
                "; n{id} controller (epoch {e}) {} ms after the kill",
                killed_at.elapsed().as_millis()
            ));
            std::thread::sleep(zf::RESUME_AFTER_ELECTION);
        }
        None => summary.push_str("; no new controller in time"),
    }
    let resumed = system.resume(controller);
    let resumed_ms = killed_at.elapsed().as_millis() as u64;
    record(
        "zombie-failover-resume",
        &serde_json::json!({ "nodes": [controller], "after-kill-ms": resumed_ms }),
        resumed.as_ref().err().map(|e| e.to_string()),
    );
    summary.push_str(&format!("; SIGCONT of n{controller} at {resumed_ms} ms"));
    if let Err(e) = resumed {
        summary.push_str(&format!(" FAILED: {e}"));
        return Some((value, leader, summary));
    }
    let changes = watch_leaders(system, counts, zf::WATCH_AFTER_RESUME, record);
    summary.push_str(&format!(
        "; leaders watched {} ms ({changes} changes)",
        zf::WATCH_AFTER_RESUME.as_millis()
    ));
    Some((value, leader, summary))
}

/// Asks every running broker which partitions it leads, every [`zf::WATCH_PERIOD`] for `span`,
/// recording a `leaders` op whenever the answers change (the run's probe asks every
/// [`crate::leaders::PROBE_INTERVAL`] and waits on stopped brokers: a zombie's leadership can
/// last less than that before the new controller's LeaderAndIsr replaces it). Returns how many
/// changes it recorded.
///
/// [`zf::WATCH_PERIOD`]: crate::nemesis::zombie_failover::WATCH_PERIOD
fn watch_leaders(
    system: &ProcessSystem,
    counts: (i32, i32),
    span: Duration,
    record: &dyn Fn(&str, &serde_json::Value, Option<String>),
) -> usize {
    let running: Vec<(NodeId, String)> = system
        .broker_ids()
        .into_iter()
        .zip(system.bootstrap().split(',').map(str::to_string))
        .filter(|(id, _)| system.is_running(*id))
        .collect();
    let mut probes = leader_probes(&running);
    let end = Instant::now() + span;
    let mut last: Option<serde_json::Value> = None;
    let mut changes = 0;
    while Instant::now() < end {
        let seen = probe_leaders(&mut probes, counts);
        if last.as_ref() != Some(&seen) {
            record(crate::leaders::F_LEADERS, &seen, None);
            changes += 1;
            last = Some(seen);
        }
        std::thread::sleep(crate::nemesis::zombie_failover::WATCH_PERIOD);
    }
    changes
}

/// For the summary, as a `zombie-failover` ends: whether its controller finished events as a
/// zombie (the line `kcheck broker` prints then, in its `node.log`). Only a diagnostic of the
/// timing: the checkers judge the history alone.
fn zombie_outcome(system: &ProcessSystem, value: &serde_json::Value) -> String {
    let (Some(c), Some(epoch)) = (
        value["controller"].as_i64(),
        value["controller-epoch"].as_i64(),
    ) else {
        return "zombie-failover ends".into();
    };
    // The controller's tracing line as it takes its unfinished events to its new session.
    let epoch_field = format!("controller_epoch={epoch} ");
    let log = system
        .logs()
        .into_iter()
        .find(|(id, _)| i64::from(*id) == c)
        .and_then(|(_, path)| std::fs::read_to_string(path).ok());
    match log {
        Some(text) => match text
            .lines()
            .find(|l| l.contains("controller events unfinished") && l.contains(&epoch_field))
        {
            Some(line) => format!(
                "zombie-failover ends: n{c} finished {} as a zombie",
                line.split_once("events=")
                    .map_or("its events".to_string(), |(_, e)| event_counts(e))
            ),
            None => format!(
                "zombie-failover ends: n{c} resigned with nothing to finish (no zombie window)"
            ),
        },
        None => format!("zombie-failover ends: n{c}'s log unreadable"),
    }
}

/// `[BrokerChange, IsrChangeNotification, IsrChangeNotification]` (a controller's event list
/// as its log prints it) as `BrokerChange, 2 IsrChangeNotification`: a zombie may hold dozens.
fn event_counts(list: &str) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for ev in list
        .trim()
        .trim_matches(|c| c == '[' || c == ']')
        .split(", ")
    {
        match counts.iter_mut().find(|(e, _)| *e == ev) {
            Some((_, n)) => *n += 1,
            None => counts.push((ev, 1)),
        }
    }
    counts
        .iter()
        .map(|(e, n)| {
            if *n == 1 {
                e.to_string()
            } else {
                format!("{n} {e}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The reassign nemesis's target for a partition now on `current`: `rf` brokers in a seeded
/// random order (the first is the preferred leader), never the current set itself (with more
/// brokers than `rf`, one of them is swapped for a broker outside it). With `moved_leader`
/// (the partition's leader now), the target leaves it out and puts a broker it adds first:
/// the leader must move to a replica that is catching up, the window of the reassignment
/// bugs (`ControllerBug`), as the replication nemeses aim at partition leaders.
pub fn reassignment_target(
    rng: &mut Rng,
    brokers: &[NodeId],
    current: &[NodeId],
    rf: usize,
    moved_leader: Option<NodeId>,
) -> Vec<NodeId> {
    let mut order = shuffled(rng, brokers);
    if let Some(leader) = moved_leader {
        if order.len() > rf {
            order.retain(|b| *b != leader);
        }
    }
    let rf = rf.min(order.len());
    let mut target: Vec<NodeId> = order[..rf].to_vec();
    let same = |t: &[NodeId]| t.len() == current.len() && t.iter().all(|b| current.contains(b));
    if same(&target) {
        if let Some(&outside) = order[rf..].iter().find(|b| !current.contains(b)) {
            let i = rng.below(rf as u64) as usize;
            target[i] = outside;
        }
    }
    if moved_leader.is_some() {
        if let Some(i) = target.iter().position(|b| !current.contains(b)) {
            target.swap(0, i);
        }
    }
    target
}

/// A running broker's client address, the brokers `busy` (killed, paused by a fault in force)
/// aside, seeded: AlterPartitionReassignments goes to any broker, which forwards it to the
/// controller.
fn reassign_addr(rng: &mut Rng, system: &ProcessSystem, busy: &[NodeId]) -> Option<String> {
    let addrs: Vec<(NodeId, String)> = system
        .broker_ids()
        .into_iter()
        .zip(system.bootstrap().split(',').map(str::to_string))
        .filter(|(id, _)| system.is_running(*id) && !busy.contains(id))
        .collect();
    if addrs.is_empty() {
        return None;
    }
    Some(addrs[rng.below(addrs.len() as u64) as usize].1.clone())
}

/// How long the reassign nemesis waits for the controller's answer.
const REASSIGN_WAIT: Duration = Duration::from_secs(5);

/// How long after the heal the reassignments the nemesis left running may take to complete
/// before `await-reassign` records them incomplete: a replica that restarted at the heal
/// catches up and joins the ISR well within it (replica lag 3 s, session timeout 2 s).
const AWAIT_REASSIGN: Duration = Duration::from_secs(8);

/// How long a reassign fault's stop watches a move that is incomplete although its completion
/// condition holds (see `stop_reassign`); [`crate::cluster_checks::STUCK_MS`] is the shortest
/// such watch the checker counts.
const STUCK_CONFIRM: Duration = Duration::from_millis(2200);

/// A reassignment the nemesis started and has not seen end: the replicas before its first
/// request and the target of its last one (a replacing request keeps the origin, as KRaft
/// computes a replacement against it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub origin: Vec<NodeId>,
    pub target: Vec<NodeId>,
}

fn same_set(a: &[NodeId], b: &[NodeId]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

fn node_ids_of(v: &serde_json::Value) -> Vec<NodeId> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b.as_i64())
                .map(|b| b as NodeId)
                .collect()
        })
        .unwrap_or_default()
}

/// The target of a request replacing a running reassignment (origin → `running`): another set
/// of `rf` brokers, neither `running` nor the origin (a request back to the origin is a
/// cancel in all but name), when the brokers allow one.
pub fn replacement_target(
    rng: &mut Rng,
    brokers: &[NodeId],
    origin: &[NodeId],
    running: &[NodeId],
    rf: usize,
) -> Vec<NodeId> {
    let mut target = reassignment_target(rng, brokers, running, rf, None);
    for _ in 0..8 {
        if !same_set(&target, origin) {
            break;
        }
        target = reassignment_target(rng, brokers, running, rf, None);
    }
    target
}

/// Starts a reassignment of one partition of the test topic, or replaces the one running on
/// it. `carry` is the value of the reassign fault this one replaces at its stop (same
/// partition, its stalled replica stays paused); otherwise the partition is, half the time, one
/// whose reassignment the nemesis left running (a replacement, as admins re-run
/// `kafka-reassign-partitions` with a new plan), else a random one. Half the time a replica the
/// request adds is *stalled* first (SIGSTOP until the fault ends, a new broker that is slow to
/// fetch), so the reassignment stays in progress: the window for a cancel or a replacement.
/// Returns the fault's value and what failed.
fn start_reassign(
    config: &TestConfig,
    rng: &mut Rng,
    system: &mut ProcessSystem,
    admin: &mut KafkaClient,
    busy: &[NodeId],
    chains: &mut BTreeMap<i32, Chain>,
    carry: Option<&serde_json::Value>,
) -> (serde_json::Value, Option<String>) {
    let partition = match carry {
        Some(prev) => prev["partition"].as_i64().unwrap_or(0) as i32,
        None => {
            let running: Vec<i32> = chains.keys().copied().collect();
            if !running.is_empty() && rng.below(2) == 0 {
                running[rng.below(running.len() as u64) as usize]
            } else {
                rng.below(config.partitions.max(1) as u64) as i32
            }
        }
    };
    let rf = config.brokers.min(3);
    let (leader, current, isr) = admin.partition_state(partition).unwrap_or_default();
    // A running reassignment whose replicas are its target or back at its origin has ended.
    if carry.is_none() {
        if let Some(c) = chains.get(&partition) {
            if same_set(&current, &c.target) || same_set(&current, &c.origin) {
                chains.remove(&partition);
            }
        }
    }
    let chain = chains.get(&partition).cloned();
    let brokers = system.broker_ids();
    let (origin, target) = match &chain {
        Some(c) => (
            c.origin.clone(),
            replacement_target(rng, &brokers, &c.origin, &c.target, rf),
        ),
        None => {
            // Half the time the leader moves (to a replica the reassignment adds).
            let moved_leader = leader.filter(|_| rng.below(2) == 0);
            let target = reassignment_target(rng, &brokers, &current, rf, moved_leader);
            (current.clone(), target)
        }
    };
    let previous: Vec<NodeId> = chain.as_ref().map(|c| c.target.clone()).unwrap_or_default();
    // The stall: carried over from the replaced fault, or a fresh one on a replica this request
    // is the first to add (so it has fetched nothing of the partition since its addition).
    let (stalled, added_while_stalled) = match carry {
        Some(prev) => {
            let stalled = node_ids_of(&prev["stalled"]);
            let added: Vec<NodeId> = node_ids_of(&prev["added-while-stalled"])
                .into_iter()
                .filter(|b| target.contains(b))
                .collect();
            (stalled, added)
        }
        None => {
            // Without a Metadata answer the origin is unknown: a replica it holds could be
            // taken for an added one, so nothing is stalled.
            let fresh: Vec<NodeId> = target
                .iter()
                .copied()
                .filter(|_| !origin.is_empty())
                .filter(|b| !origin.contains(b) && !previous.contains(b))
                .filter(|b| system.is_running(*b) && !busy.contains(b))
                .collect();
            if !fresh.is_empty() && rng.below(2) == 0 {
                let b = fresh[rng.below(fresh.len() as u64) as usize];
                match system.pause(b) {
                    Ok(()) => (vec![b], vec![b]),
                    Err(_) => (Vec::new(), Vec::new()),
                }
            } else {
                (Vec::new(), Vec::new())
            }
        }
    };
    let mut value = serde_json::json!({
        "target": "reassign",
        "partition": partition,
        "leader": leader,
        "replicas": current,
        "isr": isr,
        "origin": origin,
        "reassign-to": target,
        "replaces": chain.as_ref().map(|c| c.target.clone()),
        "stalled": stalled,
        "added-while-stalled": added_while_stalled,
    });
    let mut not_busy = busy.to_vec();
    not_busy.extend(&stalled);
    let error = match reassign_addr(rng, system, &not_busy) {
        None => Some("no broker is running".to_string()),
        Some(addr) => {
            match crate::kafka::alter_partition_reassignment(
                &addr,
                TOPIC,
                partition,
                Some(target.clone()),
                REASSIGN_WAIT,
            ) {
                Ok(0) => None,
                Ok(c) => Some(format!("AlterPartitionReassignments error code {c}")),
                Err(e) => Some(e),
            }
        }
    };
    // A request refused with a code changed nothing; one without an answer may have.
    if !error.as_deref().is_some_and(|e| {
        e.starts_with("AlterPartitionReassignments error code") || e.starts_with("no broker")
    }) {
        chains.insert(partition, Chain { origin, target });
    }
    value["nodes"] = serde_json::json!(stalled);
    (value, error)
}

/// What the reassign nemesis does with a reassignment still in progress when its fault ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReassignEnd {
    /// It completed: nothing to do.
    Completed,
    /// AlterPartitionReassignments with null replicas (back to the origin).
    Cancel,
    /// A new reassignment of the partition replaces it (the next fault starts at once).
    Replace,
    /// It keeps running; a later fault may replace it, the end of the run awaits it.
    Leave,
}

impl ReassignEnd {
    fn name(self) -> &'static str {
        match self {
            ReassignEnd::Completed => "completed",
            ReassignEnd::Cancel => "cancel",
            ReassignEnd::Replace => "replace",
            ReassignEnd::Leave => "leave",
        }
    }
}

/// Ends a reassign fault. The partition's replicas and ISR are read first, while a stalled
/// replica is still paused (what `reassignment-completed-outside-isr` judges). A reassignment
/// on its target completed; one incomplete although every replica it adds is in the ISR is
/// watched for [`STUCK_CONFIRM`] first (`stuck-ms`). One still in progress is cancelled,
/// replaced or left running (seeded: a stalled one is cancelled one time in three and replaced
/// otherwise, since it cannot finish while stalled; a replacing one is cancelled half the time
/// if stalled, one time in three if not, and left running otherwise; others are cancelled or
/// replaced one time in four each and left running otherwise); at the end of the
/// run (`last`) it is always left running, for the heal's `await-reassign`. The stalled replica
/// resumes unless the reassignment is replaced (the replacing fault keeps it). Returns the
/// stop's value (the start's, with `replicas-at-stop`, `isr-at-stop`, `leader-at-stop`,
/// `completed`, `action` and a cancel's code), what failed, and what was done.
fn stop_reassign(
    fault: &Fault,
    rng: &mut Rng,
    system: &mut ProcessSystem,
    admin: &mut KafkaClient,
    busy: &[NodeId],
    chains: &mut BTreeMap<i32, Chain>,
    last: bool,
) -> (serde_json::Value, Option<String>, ReassignEnd) {
    let mut value = fault.value.clone();
    let partition = value["partition"].as_i64().unwrap_or(0) as i32;
    let target = node_ids_of(&value["reassign-to"]);
    let stalled = node_ids_of(&value["stalled"]);
    let (mut leader, mut now, mut isr) = admin.partition_state(partition).unwrap_or_default();
    let origin = node_ids_of(&value["origin"]);
    // KIP-455's completion condition: a leader, every replica the move adds in the ISR. While
    // it holds and the move is incomplete, watch for up to STUCK_CONFIRM: a correct controller
    // completes in the change that adds the last replica, so a move stuck that long is the
    // liveness violation `reassignment-incomplete` (`stuck-ms`).
    let condition = |leader: &Option<NodeId>, isr: &[NodeId]| {
        leader.is_some()
            && target
                .iter()
                .filter(|b| !origin.contains(b))
                .all(|b| isr.contains(b))
    };
    let watched = Instant::now();
    let mut stuck_ms = 0u64;
    while !target.is_empty() && !same_set(&now, &target) && condition(&leader, &isr) {
        stuck_ms = watched.elapsed().as_millis() as u64;
        if watched.elapsed() >= STUCK_CONFIRM {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        match admin.partition_state(partition) {
            Ok((l, r, i)) => (leader, now, isr) = (l, r, i),
            Err(_) => break,
        }
    }
    if stuck_ms > 0 {
        value["stuck-ms"] = serde_json::json!(stuck_ms);
    }
    let completed = !target.is_empty() && same_set(&now, &target);
    value["completed"] = serde_json::json!(completed);
    value["replicas-at-stop"] = serde_json::json!(now);
    value["isr-at-stop"] = serde_json::json!(isr);
    value["leader-at-stop"] = serde_json::json!(leader);
    let action = if completed {
        ReassignEnd::Completed
    } else if last {
        ReassignEnd::Leave
    } else if !value["replaces"].is_null() {
        // A stalled replacement is cancelled half the time (the stall still in force);
        // others one time in three.
        if rng.below(if stalled.is_empty() { 3 } else { 2 }) == 0 {
            ReassignEnd::Cancel
        } else {
            ReassignEnd::Leave
        }
    } else if !stalled.is_empty() {
        if rng.below(3) == 0 {
            ReassignEnd::Cancel
        } else {
            ReassignEnd::Replace
        }
    } else {
        match rng.below(4) {
            0 => ReassignEnd::Cancel,
            1 => ReassignEnd::Replace,
            _ => ReassignEnd::Leave,
        }
    };
    value["action"] = serde_json::json!(action.name());
    let mut error = None;
    match action {
        ReassignEnd::Completed => {
            chains.remove(&partition);
        }
        ReassignEnd::Cancel => {
            let mut not_busy = busy.to_vec();
            not_busy.extend(&stalled);
            error = match reassign_addr(rng, system, &not_busy) {
                None => Some("cancel: no broker is running".to_string()),
                Some(addr) => {
                    match crate::kafka::alter_partition_reassignment(
                        &addr,
                        TOPIC,
                        partition,
                        None,
                        REASSIGN_WAIT,
                    ) {
                        // NO_REASSIGNMENT_IN_PROGRESS: it completed since the Metadata above.
                        Ok(c) => {
                            value["cancel-error-code"] = serde_json::json!(c);
                            chains.remove(&partition);
                            None
                        }
                        Err(e) => Some(format!("cancel: {e}")),
                    }
                }
            };
        }
        ReassignEnd::Replace | ReassignEnd::Leave => {}
    }
    if action != ReassignEnd::Replace {
        for b in stalled {
            if let Err(e) = system.resume(b) {
                error.get_or_insert(format!("resuming stalled broker {b}: {e}"));
            }
        }
    }
    (value, error, action)
}

/// After the heal: waits up to [`AWAIT_REASSIGN`] for every reassignment the nemesis left
/// running to reach its target (Metadata), then records one `await-reassign` per partition:
/// `completed`, and the partition's leader, replicas and ISR and the nodes not running as last
/// seen (what `reassignment-incomplete` judges).
fn await_reassignments(
    chains: &BTreeMap<i32, Chain>,
    system: &mut ProcessSystem,
    admin: &mut KafkaClient,
    shared: &Shared,
) {
    if chains.is_empty() {
        return;
    }
    let start = Instant::now();
    let deadline = start + AWAIT_REASSIGN;
    let mut seen: BTreeMap<i32, (Option<NodeId>, Vec<NodeId>, Vec<NodeId>)> = BTreeMap::new();
    loop {
        for p in chains.keys() {
            if let Ok(state) = admin.partition_state(*p) {
                seen.insert(*p, state);
            }
        }
        let done = chains.iter().all(|(p, c)| {
            seen.get(p)
                .is_some_and(|(_, replicas, _)| same_set(replicas, &c.target))
        });
        if done || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for (node, status) in system.reap_exited() {
        record_exit(shared, node, &status);
    }
    let down: Vec<NodeId> = system
        .node_ids()
        .into_iter()
        .filter(|n| !system.is_running(*n))
        .collect();
    let waited = start.elapsed().as_millis() as u64;
    for (p, c) in chains {
        let (leader, replicas, isr) = seen.get(p).cloned().unwrap_or_default();
        let completed = same_set(&replicas, &c.target);
        let value = serde_json::json!({
            "partition": p,
            "origin": c.origin,
            "reassign-to": c.target,
            "completed": completed,
            "replicas": replicas,
            "isr": isr,
            "leader": leader,
            "nodes-down": down,
            "waited-ms": waited,
        });
        shared.record(
            OpType::Info,
            Process::Nemesis,
            crate::cluster_checks::F_AWAIT_REASSIGN,
            OpValue::Other(value),
        );
    }
}

/// Records a node that ended although the harness did not stop it (`node-exited`).
fn record_exit(shared: &Shared, node: NodeId, status: &str) {
    shared.record(
        OpType::Info,
        Process::Nemesis,
        crate::cluster_checks::F_NODE_EXITED,
        OpValue::Other(serde_json::json!({ "node": node, "status": status })),
    );
}

/// After shutdown: every failed assertion the nodes logged (`node-log`, see
/// [`crate::cluster_checks::scan_log`]).
fn record_logged_assertions(system: &ProcessSystem, dir: &Path, shared: &Shared) {
    for (node, path) in system.logs() {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        let file = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .display()
            .to_string();
        for a in crate::cluster_checks::scan_log(&text) {
            shared.record(
                OpType::Info,
                Process::Nemesis,
                crate::cluster_checks::F_NODE_LOG,
                OpValue::Other(serde_json::json!({
                    "node": node,
                    "file": file,
                    "line": a.line,
                    "message": a.message,
                    "text": a.text,
                })),
            );
        }
    }
}

/// The nemesis, a seeded random schedule (same seed, same choices): every
/// `nemesis_interval` (a *tick*) it heals the faults whose time is up, then, with fewer than
/// [`MAX_FAULTS_IN_FORCE`] in force, starts a new one three times in four: a kind
/// ([`choose_kind`]) and, for a partition, a [`PartitionShape`] (a grudge, one at a time,
/// lasting two or three ticks), for `delay` and `loss` the shaped links ([`link_shaping`],
/// three to five ticks), otherwise a [`Target`] (one node, a minority, a majority, the
/// partition leaders, a follower, a leader chain, the controller quorum leader), lasting one
/// to three ticks (a follower crashed behind a delay restarts at once). Faults may overlap, as Jepsen's combined nemesis packages do. Each is recorded as
/// `start-X` / `stop-X` with its target and nodes (and a partition's grudge); returns a line
/// per fault for the summary.
fn nemesis_loop(
    config: &TestConfig,
    system: &mut ProcessSystem,
    shared: &Shared,
) -> (Vec<String>, BTreeMap<i32, Chain>) {
    let mut rng = Rng::new(config.seed ^ 0x6e65_6d65_7369_73);
    // The `lagging-successor` composite's own stream (see `lagging_successor_plan`).
    let mut successor_rng = Rng::new(config.seed ^ 0x7375_6363_6573_736f);
    // The `stale-fetch` composite's own stream (see `stale_fetch_plan`).
    let mut stale_rng = Rng::new(config.seed ^ 0x7374_616c_6566_6574);
    let end = shared.start + config.time_limit;
    let mut lines = Vec::new();
    let sleep_until = |t: Instant| {
        while Instant::now() < t.min(end) {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let cluster = config.controllers > 0 || config.metadata == Metadata::Zookeeper;
    let mut admin = KafkaClient::new(&system.bootstrap(), TOPIC, Duration::from_secs(1));
    let mut in_force: Vec<Fault> = Vec::new();
    // Reassignments started and not seen to end (left running, or the one in force).
    let mut chains: BTreeMap<i32, Chain> = BTreeMap::new();
    let mut tick = 0u64;
    let record = |f: &str, value: &serde_json::Value, error: Option<String>| match error {
        None => {
            shared.record(
                OpType::Info,
                Process::Nemesis,
                f,
                OpValue::Other(value.clone()),
            );
        }
        Some(e) => shared.record_error(
            OpType::Info,
            Process::Nemesis,
            f,
            OpValue::Other(value.clone()),
            &e,
        ),
    };
    loop {
        sleep_until(Instant::now() + config.nemesis_interval);
        if Instant::now() >= end {
            break;
        }
        tick += 1;
        // A node that ended on its own (not killed by a fault) is a crash: record it.
        for (node, status) in system.reap_exited() {
            lines.push(format!("node {node} ended on its own: {status}"));
            record_exit(shared, node, &status);
        }
        let (due, kept): (Vec<Fault>, Vec<Fault>) =
            in_force.drain(..).partition(|f| f.until_tick <= tick);
        in_force = kept;
        for fault in &due {
            // Before a session fault ends: who is controller now, in which epoch.
            if matches!(
                fault.kind,
                NemesisKind::Zombie | NemesisKind::ExpireSession | NemesisKind::ZombieFailover
            ) {
                if let Some(v) = controller_value(system) {
                    record("controller", &v, None);
                }
            }
            if fault.kind == NemesisKind::Reassign {
                let busy = busy_nodes(&in_force);
                let (value, error, action) = stop_reassign(
                    fault,
                    &mut rng,
                    system,
                    &mut admin,
                    &busy,
                    &mut chains,
                    false,
                );
                lines.push(format!(
                    "reassign partition {} ends: {}",
                    value["partition"],
                    reassign_outcome(&value, &error)
                ));
                record("stop-reassign", &value, error);
                if action == ReassignEnd::Replace {
                    let busy = busy_nodes(&in_force);
                    let (value, error) = start_reassign(
                        config,
                        &mut rng,
                        system,
                        &mut admin,
                        &busy,
                        &mut chains,
                        Some(&value),
                    );
                    lines.push(reassign_summary(&value, &error));
                    record("start-reassign", &value, error);
                    in_force.push(Fault::new(
                        NemesisKind::Reassign,
                        node_ids_of(&value["stalled"]),
                        value,
                        tick + 1,
                    ));
                }
                continue;
            }
            if fault.kind == NemesisKind::ZombieFailover {
                lines.push(zombie_outcome(system, &fault.value));
            }
            let healed = stop_fault(fault, &in_force, system);
            let f = format!("stop-{}", fault.kind.name());
            record(&f, &fault.value, healed.err().map(|e| e.to_string()));
        }
        if config.nemeses.is_empty() || in_force.len() >= MAX_FAULTS_IN_FORCE || rng.below(4) == 0 {
            continue;
        }
        let partitioned = in_force.iter().any(|f| f.kind == NemesisKind::Partition);
        // A delay that has not had its follower crash yet: one per delay, so the old
        // incarnation's held-back Fetch meets a running new one (another crash would fence it
        // again, and the controller refuses a fenced replica whatever its epoch).
        let slowed = in_force
            .iter()
            .any(|f| f.kind == NemesisKind::Delay && f.aim.is_none());
        let kind = choose_kind(&mut rng, &config.nemeses, partitioned || slowed);
        let shaped = partitioned || in_force.iter().any(|f| f.kind.shapes_links());
        if let Some((plan, crash)) = stale_fetch_plan(
            config,
            &mut stale_rng,
            kind,
            shaped,
            &in_force,
            system,
            &mut admin,
        ) {
            if let Some((kind, nodes, value)) =
                stale_fetch(&plan, crash, system, &mut stale_rng, &record, &mut lines)
            {
                // Restarted at once; the stop at the next tick records the end.
                in_force.push(Fault::until_next_tick(kind, nodes, value, tick));
            }
            continue;
        }
        if kind.shapes_links() {
            // One fault of each kind at a time.
            if in_force.iter().any(|f| f.kind == kind) {
                continue;
            }
            let leaders = admin.partition_leaders().unwrap_or_default();
            let links = system
                .proxies
                .as_ref()
                .map(|p| p.links())
                .unwrap_or_default();
            let (value, shaped) = link_shaping(
                kind,
                &mut rng,
                &links,
                &system.broker_ids(),
                &leaders,
                config.nemesis_interval,
            );
            let summary = format!(
                "{} {} ({} links){}",
                kind.name(),
                value["target"].as_str().unwrap_or(""),
                shaped.len(),
                match kind {
                    NemesisKind::Delay => format!(" {} ms", value["delay-ms"]),
                    _ => format!(" p={} rto {} ms", value["loss"], value["rto-ms"]),
                }
            );
            let started = system.shape(kind.name(), shaped);
            match &started {
                Ok(()) => lines.push(summary),
                Err(e) => lines.push(format!("{summary} FAILED: {e}")),
            }
            record(
                &format!("start-{}", kind.name()),
                &value,
                started.err().map(|e| e.to_string()),
            );
            in_force.push(Fault::new(
                // Three to five ticks: a crash behind it restarts while it still holds.
                kind,
                Vec::new(),
                value,
                tick + 3 + rng.below(3),
            ));
            continue;
        }
        if kind == NemesisKind::Partition {
            if partitioned || quorum_cut(&in_force) {
                continue;
            }
            if let Some((plan, leader_fault)) =
                lagging_successor_plan(config, &mut successor_rng, &in_force, system, &mut admin)
            {
                let faults = lagging_successor(
                    plan,
                    leader_fault,
                    system,
                    &mut admin,
                    &mut successor_rng,
                    &record,
                    &mut lines,
                );
                // The successor resumes (and the leader restarts) at the next tick.
                for (kind, nodes, value) in faults {
                    in_force.push(Fault::until_next_tick(kind, nodes, value, tick));
                }
                continue;
            }
            let wanted = PartitionShape::choose(&mut rng);
            let leaders = admin.partition_leaders().unwrap_or_default();
            let (shape, grudge, aim) = partition_grudge(
                wanted,
                &mut rng,
                &system.broker_ids(),
                &system.controller_ids(),
                &leaders,
            );
            let started = system.partition(&grudge);
            let nodes: Vec<NodeId> = grudge
                .0
                .iter()
                .filter(|(_, s)| !s.is_empty())
                .map(|(n, _)| *n)
                .collect();
            let value = serde_json::json!({
                "target": shape.name(),
                "nodes": nodes,
                "grudge": grudge,
            });
            let summary = format!("partition {} {}", shape.name(), grudge.describe());
            match &started {
                Ok(()) => lines.push(summary),
                Err(e) => lines.push(format!("{summary} FAILED: {e}")),
            }
            record(
                "start-partition",
                &value,
                started.err().map(|e| e.to_string()),
            );
            in_force.push(Fault {
                kind,
                nodes,
                value,
                // At least two ticks, so a leader fault can follow while it holds.
                until_tick: tick + 2 + rng.below(2),
                aim,
                servers: Vec::new(),
            });
            continue;
        }
        if kind == NemesisKind::Reassign {
            // One reassignment at a time, as `kafka-reassign-partitions` runs them.
            if in_force.iter().any(|f| f.kind == NemesisKind::Reassign) {
                continue;
            }
            let busy = busy_nodes(&in_force);
            let (value, error) = start_reassign(
                config,
                &mut rng,
                system,
                &mut admin,
                &busy,
                &mut chains,
                None,
            );
            lines.push(reassign_summary(&value, &error));
            record("start-reassign", &value, error);
            in_force.push(Fault::new(
                // One tick: a reassignment completes in well under one (or never, under a
                // bug), and the next tick may start the next one.
                kind,
                node_ids_of(&value["stalled"]),
                value,
                tick + 1,
            ));
            continue;
        }
        if matches!(kind, NemesisKind::ZkKill | NemesisKind::ZkPartition) {
            let Some((server, target, started)) =
                start_zookeeper_fault(kind, &mut rng, system, &in_force)
            else {
                continue;
            };
            let value = serde_json::json!({ "target": target, "servers": [server] });
            let summary = format!("{} server {server} ({target})", kind.name());
            match &started {
                Ok(()) => lines.push(summary),
                Err(e) => lines.push(format!("{summary} FAILED: {e}")),
            }
            record(
                &format!("start-{}", kind.name()),
                &value,
                started.err().map(|e| e.to_string()),
            );
            in_force.push(Fault {
                kind,
                nodes: Vec::new(),
                value,
                until_tick: tick + 1 + rng.below(3),
                aim: None,
                servers: vec![server],
            });
            continue;
        }
        if kind == NemesisKind::ZombieFailover {
            // It needs every broker up and running: the leader it kills, the controller it
            // pauses and a third broker to become controller.
            if !busy_nodes(&in_force).is_empty()
                || in_force
                    .iter()
                    .any(|f| f.kind == NemesisKind::ZombieFailover)
            {
                continue;
            }
            let Some((value, leader, summary)) = start_zombie_failover(
                (config.partitions, ballast_partitions(config)),
                &mut rng,
                system,
                &mut admin,
                &record,
            ) else {
                continue;
            };
            lines.push(summary);
            in_force.push(Fault::new(
                // The leader stays down at least one more tick: the zombie reads the live
                // brokers on its new session soon after its SIGCONT, and must find it dead.
                kind,
                vec![leader],
                value,
                tick + 1 + rng.below(2),
            ));
            continue;
        }
        if kind == NemesisKind::Quorum {
            let can_cut = system.can_partition() && !partitioned && !quorum_cut(&in_force);
            if let Some(f) = start_quorum_fault(
                &mut rng,
                system,
                &in_force,
                (can_cut, end, tick),
                &record,
                &mut lines,
            ) {
                in_force.push(f);
            }
            continue;
        }
        let session_faults = matches!(kind, NemesisKind::Zombie | NemesisKind::ExpireSession);
        let wanted = if session_faults {
            Target::Controller
        } else {
            choose_target(&mut rng, cluster, partitioned, slowed)
        };
        // A partition in force aimed at a leader (bridge-leader, isolate-follower) names it.
        let aim = in_force
            .iter()
            .filter(|f| f.kind == NemesisKind::Partition)
            .find_map(|f| f.aim);
        let (target, nodes) = resolve_target(wanted, &mut rng, system, &mut admin, aim);
        // The partitions the chain's first leader leads, whose next leaders it fails next.
        let led: Vec<i32> = match target {
            Target::LeaderChain => admin
                .leader_map()
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, l)| nodes.contains(l))
                .map(|(p, _)| p)
                .collect(),
            _ => Vec::new(),
        };
        let mut nodes = spare_last_broker(kind, nodes, &in_force, system);
        // A node another process fault already holds down or stopped is left to it: faulting
        // it again would do nothing now and keep it down until the later fault ends.
        let process = |k: NemesisKind| {
            matches!(
                k,
                NemesisKind::Kill
                    | NemesisKind::LoseUnsynced
                    | NemesisKind::Pause
                    | NemesisKind::Zombie
                    | NemesisKind::ExpireSession
                    | NemesisKind::ZombieFailover
                    | NemesisKind::Quorum
            )
        };
        // The session faults are aimed at the controller: nothing else will do.
        if session_faults && target != Target::Controller {
            continue;
        }
        // A replica a reassignment stalls stays paused until that fault ends (what
        // `reassignment-completed-outside-isr` relies on): no other process fault touches it.
        if process(kind) {
            nodes.retain(|n| {
                !in_force.iter().any(|f| {
                    (process(f.kind) || f.kind == NemesisKind::Reassign) && f.nodes.contains(n)
                })
            });
        }
        if nodes.is_empty() {
            continue;
        }
        let mut started = start_fault(kind, &nodes, &mut rng, system);
        if target == Target::Follower
            && started.is_ok()
            && matches!(kind, NemesisKind::Kill | NemesisKind::LoseUnsynced)
        {
            // A crash-restart: the follower comes back at once (its stop only records the
            // end), so its new incarnation registers while its old incarnation's last Fetch
            // is still held back by the delay.
            for &n in &nodes {
                if let Err(e) = system.restart(n) {
                    started = Err(e);
                }
            }
            if let Ok(d) = &mut started {
                d.push_str(" (restarted at once)");
            }
        }
        let ok = started.is_ok();
        // A session fault lasts at least twice the session timeout, so that the session
        // expires and another broker is elected controller while the old one is away.
        let min_ticks = if session_faults {
            (2.0 * ZOOKEEPER_SESSION_TIMEOUT.as_secs_f64() / config.nemesis_interval.as_secs_f64())
                .ceil() as u64
        } else {
            1
        };
        let mut until_tick = tick + (1 + rng.below(3)).max(min_ticks);
        if target == Target::Follower {
            if let Some(d) = in_force.iter_mut().find(|f| f.kind == NemesisKind::Delay) {
                d.aim = nodes.first().copied();
            }
            // The follower crashed behind a delay was restarted at once (below).
            until_tick = tick + 1;
        }
        let mut push = |kind: NemesisKind,
                        nodes: Vec<NodeId>,
                        started: std::io::Result<String>,
                        note: &str,
                        in_force: &mut Vec<Fault>| {
            let value = serde_json::json!({ "target": target.name(), "nodes": nodes });
            let summary = format!(
                "{} node {} ({}){note}",
                kind.name(),
                node_list(&nodes),
                target.name()
            );
            match &started {
                Ok(detail) => lines.push(format!("{summary}{detail}")),
                Err(e) => lines.push(format!("{summary} FAILED: {e}")),
            }
            record(
                &format!("start-{}", kind.name()),
                &value,
                started.err().map(|e| e.to_string()),
            );
            in_force.push(Fault::new(kind, nodes, value, until_tick));
        };
        push(kind, nodes.clone(), started, "", &mut in_force);
        if session_faults {
            if let Some(v) = controller_value(system) {
                record("controller", &v, None);
            }
        }
        if target == Target::LeaderChain && kind != NemesisKind::Clock && ok {
            // The new leaders appear once the controller has fenced the old ones (their
            // sessions lapse), so wait at least two session timeouts for them.
            let deadline = Instant::now() + config.nemesis_interval.max(2 * BROKER_SESSION_TIMEOUT);
            let stalled = busy_nodes(&in_force);
            let next: Vec<NodeId> = new_leaders(&mut admin, &nodes, &led, deadline)
                .into_iter()
                .filter(|n| !nodes.contains(n) && !stalled.contains(n))
                .collect();
            // The second failure is a pause (a GC stall, a frozen VM): the new leader is
            // fenced, and it comes back clean. Were it crashed too, every ISR member would
            // have shut down uncleanly and KIP-966 would rightly keep the partition offline
            // for good (the reference has no unclean recovery), so a correct cluster's run
            // would end undecided; a pause sets up the same elections.
            if !next.is_empty() {
                let started = start_fault(NemesisKind::Pause, &next, &mut rng, system);
                push(
                    NemesisKind::Pause,
                    next,
                    started,
                    " (new leaders)",
                    &mut in_force,
                );
            }
        }
    }
    while let Some(fault) = in_force.pop() {
        if fault.kind == NemesisKind::Reassign {
            let busy = busy_nodes(&in_force);
            let (value, error, _) = stop_reassign(
                &fault,
                &mut rng,
                system,
                &mut admin,
                &busy,
                &mut chains,
                true,
            );
            lines.push(format!(
                "reassign partition {} ends: {}",
                value["partition"],
                reassign_outcome(&value, &error)
            ));
            record("stop-reassign", &value, error);
            continue;
        }
        if fault.kind == NemesisKind::ZombieFailover {
            lines.push(zombie_outcome(system, &fault.value));
        }
        let healed = stop_fault(&fault, &in_force, system);
        let f = format!("stop-{}", fault.kind.name());
        record(&f, &fault.value, healed.err().map(|e| e.to_string()));
    }
    (lines, chains)
}

/// The delay a `delay` fault adds, in nemesis ticks (at least 1 s, at most 6 s, so that a
/// replica fetcher's 10 s request timeout does not fire): long enough that a Fetch the
/// proxy read just before its follower crashed (a `follower` crash restarts at once)
/// arrives after the new incarnation registered and was unfenced, while that incarnation's
/// own fetches are held back as long (KIP-903's window).
const DELAY_TICKS: (f64, f64) = (3.0, 6.0);
const DELAY_LIMITS_MS: (u64, u64) = (1000, 6000);

/// The links a `delay` or `loss` fault shapes and how, seeded: three times in four the
/// requests on every broker's link to a partition leader (the followers' fetches; answers
/// pass), otherwise both directions of every link (half the delay each way). Returns the
/// history value (`target`, `links`, `delay-ms` or `loss` and `rto-ms`) and the shaping.
fn link_shaping(
    kind: NemesisKind,
    rng: &mut Rng,
    links: &[crate::nemesis::proxynet::Link],
    brokers: &[NodeId],
    leaders: &[NodeId],
    interval: Duration,
) -> (
    serde_json::Value,
    BTreeMap<crate::nemesis::proxynet::Link, crate::proxy::LinkFaults>,
) {
    use crate::proxy::{Direction, LinkFaults};
    let to_leaders = !leaders.is_empty() && rng.below(4) != 0;
    let tick_ms = interval.as_millis() as f64;
    let (lo, hi) = (
        (DELAY_TICKS.0 * tick_ms) as u64,
        (DELAY_TICKS.1 * tick_ms) as u64,
    );
    let ms = (lo + rng.below(hi - lo + 1)).clamp(DELAY_LIMITS_MS.0, DELAY_LIMITS_MS.1);
    let delay = Duration::from_millis(ms);
    let loss = 0.2 + 0.1 * rng.below(4) as f64;
    let rto = Duration::from_millis(200);
    let dir = |share: u32| match kind {
        NemesisKind::Delay => Direction {
            delay: delay / share,
            ..Direction::default()
        },
        _ => Direction {
            loss,
            rto,
            ..Direction::default()
        },
    };
    let shaped: BTreeMap<_, _> = links
        .iter()
        .filter(|(from, to)| !to_leaders || (brokers.contains(from) && leaders.contains(to)))
        .map(|&l| {
            let f = if to_leaders {
                LinkFaults {
                    forward: dir(1),
                    backward: Direction::default(),
                }
            } else {
                LinkFaults {
                    forward: dir(2),
                    backward: dir(2),
                }
            };
            (l, f)
        })
        .collect();
    let target = if to_leaders {
        "to-leaders"
    } else {
        "all-links"
    };
    let listed: Vec<[NodeId; 2]> = shaped.keys().map(|&(a, b)| [a, b]).collect();
    let mut value = serde_json::json!({ "target": target, "links": listed });
    match kind {
        NemesisKind::Delay => value["delay-ms"] = serde_json::json!(delay.as_millis() as u64),
        _ => {
            value["loss"] = serde_json::json!(loss);
            value["rto-ms"] = serde_json::json!(rto.as_millis() as u64);
        }
    }
    (value, shaped)
}

/// How long `lagging-successor` cuts the successor's data plane before it fails the leader:
/// time for the other follower to copy records the successor lacks (the workers' acks=all
/// produces are appended and wait on the successor), and well under replica.lag.time.max.ms
/// (3 s), so the leader has not shrunk the successor out of the ISR when it dies.
const SUCCESSOR_CUT_LEAD: Duration = Duration::from_millis(1000);

/// How long the elected successor takes writes before it is paused: the workers find it (their
/// requests to the failed leader fail and they ask Metadata again) and it appends records its
/// cut-off follower cannot fetch. Well under the lag time, so it never shrinks that follower
/// out of the ISR, which is what lets the controller elect that follower next.
const SUCCESSOR_WRITES: Duration = Duration::from_millis(800);

/// How long `lagging-successor` waits for each election: the failed broker's session lapses
/// after [`BROKER_SESSION_TIMEOUT`], then the controller elects and Metadata shows it.
fn election_wait() -> Duration {
    2 * BROKER_SESSION_TIMEOUT + Duration::from_secs(1)
}

/// Polls Metadata (every 20 ms, until `deadline`) until `partition` has a leader outside
/// `gone`; that leader, or `None` if no election happened in time.
fn await_leader(
    admin: &mut KafkaClient,
    partition: i32,
    gone: &[NodeId],
    deadline: Instant,
) -> Option<NodeId> {
    while Instant::now() < deadline {
        if let Ok(map) = admin.leader_map() {
            if let Some(&l) = map.get(&partition).filter(|l| !gone.contains(l)) {
                return Some(l);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Whether this partition fault is the `lagging-successor` composite, and its plan. Only on a
/// KRaft cluster of three brokers or more whose nemeses fail processes (the leader is killed,
/// or paused if kills are not asked for), and only while no process fault holds a broker (the
/// composite crashes one broker and pauses another: see [`spare_last_broker`]). The odds (one
/// in three of the partition faults that may take it; the other shapes keep the rest) and the choice of
/// partition come from their own seeded stream, so the other faults' draws are as they were
/// until the first composite; the partition is a seeded pick among those whose leader has two
/// ISR followers (Metadata).
fn lagging_successor_plan(
    config: &TestConfig,
    successor_rng: &mut Rng,
    in_force: &[Fault],
    system: &ProcessSystem,
    admin: &mut KafkaClient,
) -> Option<(crate::nemesis::successor::SuccessorPlan, NemesisKind)> {
    let brokers = system.broker_ids();
    let leader_fault = [NemesisKind::Kill, NemesisKind::Pause]
        .into_iter()
        .find(|k| config.nemeses.contains(k))?;
    let held = busy_nodes(in_force).iter().any(|n| brokers.contains(n));
    if config.metadata != Metadata::Kraft || config.controllers == 0 || brokers.len() < 3 || held {
        return None;
    }
    // Both draws are made whatever Metadata says, so the stream stays seeded.
    let chosen = successor_rng.below(3) == 0;
    let pick = successor_rng.below(1 << 16) as usize;
    if !chosen {
        return None;
    }
    let plans = crate::nemesis::successor::plans(&admin.partition_views().ok()?);
    (!plans.is_empty()).then(|| (plans[pick % plans.len()], leader_fault))
}

/// Starts one step of the `lagging-successor` composite on `node`: the nemesis op (`start-X`,
/// target `lagging-successor`) and the summary line. Whether it started, and its value.
fn composite_fault(
    kind: NemesisKind,
    node: NodeId,
    note: &str,
    rng: &mut Rng,
    system: &mut ProcessSystem,
    record: &dyn Fn(&str, &serde_json::Value, Option<String>),
    lines: &mut Vec<String>,
) -> (bool, serde_json::Value) {
    let started = start_fault(kind, &[node], rng, system);
    let value = serde_json::json!({ "target": "lagging-successor", "nodes": [node] });
    let summary = format!("{} node {node} (lagging-successor){note}", kind.name());
    let ok = started.is_ok();
    match &started {
        Ok(detail) => lines.push(format!("{summary}{detail}")),
        Err(e) => lines.push(format!("{summary} FAILED: {e}")),
    }
    record(
        &format!("start-{}", kind.name()),
        &value,
        started.err().map(|e| e.to_string()),
    );
    (ok, value)
}

/// The `lagging-successor` composite fault (see [`crate::nemesis::successor`]), step by step:
/// cut the successor's data plane from the other brokers (not the controllers: it stays
/// registered and in the ISR), fail the leader [`SUCCESSOR_CUT_LEAD`] later, wait for
/// Metadata to name the successor leader, let it take writes for [`SUCCESSOR_WRITES`], pause
/// it, wait for the next follower's election, and heal the cut. Each step is a nemesis op
/// (`start-partition`/`stop-partition` with target `lagging-successor`, `start-kill` or
/// `start-pause` of the leader, `start-pause` of the successor) and a summary line. Returns
/// the leader's and the successor's faults, which stay in force until the next tick: the
/// successor then resumes and fetches from the new leader, asking for the epoch it led.
fn lagging_successor(
    plan: crate::nemesis::successor::SuccessorPlan,
    leader_fault: NemesisKind,
    system: &mut ProcessSystem,
    admin: &mut KafkaClient,
    rng: &mut Rng,
    record: &dyn Fn(&str, &serde_json::Value, Option<String>),
    lines: &mut Vec<String>,
) -> Vec<(NemesisKind, Vec<NodeId>, serde_json::Value)> {
    const TARGET: &str = "lagging-successor";
    let p = plan.partition;
    let grudge = crate::nemesis::grudge::isolate(&system.broker_ids(), plan.successor);
    let nodes: Vec<NodeId> = grudge
        .0
        .iter()
        .filter(|(_, s)| !s.is_empty())
        .map(|(n, _)| *n)
        .collect();
    let mut value = serde_json::json!({
        "target": TARGET,
        "nodes": nodes,
        "grudge": grudge,
        "partition": p,
        "leader": plan.leader,
        "successor": plan.successor,
        "next": plan.next,
    });
    let cut = system.partition(&grudge);
    let summary = format!(
        "partition {TARGET} {} (partition {p}: leader {}, successor {}, next {})",
        grudge.describe(),
        plan.leader,
        plan.successor,
        plan.next
    );
    let mut faults = Vec::new();
    let failed = cut.is_err();
    match &cut {
        Ok(()) => lines.push(summary),
        Err(e) => lines.push(format!("{summary} FAILED: {e}")),
    }
    record("start-partition", &value, cut.err().map(|e| e.to_string()));
    let mut elected = Vec::new();
    if !failed {
        std::thread::sleep(SUCCESSOR_CUT_LEAD);
        let began = Instant::now();
        let mut fault = |kind: NemesisKind, node: NodeId, note: String, lines: &mut Vec<String>| {
            let (ok, value) = composite_fault(kind, node, &note, rng, system, record, lines);
            faults.push((kind, vec![node], value));
            ok
        };
        let note = format!(" (leader of partition {p})");
        if fault(leader_fault, plan.leader, note, lines) {
            let first = await_leader(admin, p, &[plan.leader], Instant::now() + election_wait());
            elected.extend(first);
            if first == Some(plan.successor) {
                lines.push(format!(
                    "{TARGET}: n{} leads partition {p} {} ms after the leader failed",
                    plan.successor,
                    began.elapsed().as_millis()
                ));
                std::thread::sleep(SUCCESSOR_WRITES);
                let note = format!(" (successor, leader of partition {p})");
                let paused = fault(NemesisKind::Pause, plan.successor, note, lines);
                if paused {
                    let began = Instant::now();
                    let gone = [plan.leader, plan.successor];
                    let second = await_leader(admin, p, &gone, Instant::now() + election_wait());
                    elected.extend(second);
                    lines.push(match second {
                        Some(l) => format!(
                            "{TARGET}: n{l} leads partition {p} {} ms after the successor paused",
                            began.elapsed().as_millis()
                        ),
                        None => format!("{TARGET}: no new leader of partition {p} in time"),
                    });
                }
            } else {
                lines.push(format!(
                    "{TARGET}: partition {p} led by {:?}, not the successor n{}: not paused",
                    first, plan.successor
                ));
            }
        }
    }
    // The cut ends once the next leader is in place (the successor is paused by then), so the
    // successor meets it as soon as it resumes.
    value["elected"] = serde_json::json!(elected);
    let healed = system.partition(&Grudge::default());
    record(
        "stop-partition",
        &value,
        healed.err().map(|e| e.to_string()),
    );
    faults
}

/// How long `stale-fetch` holds the brokers' packets to the leader before it crashes the
/// follower: the leader answers a parked Fetch within the replica fetchers' max wait (200 ms),
/// and the follower's next Fetch is then on the cut link, retransmitted by its kernel.
const STALE_FETCH_SEND_WAIT: Duration = Duration::from_millis(300);

/// The latest `stale-fetch` lets the crashed follower's packets through to the leader again,
/// from the start of the cut. A restarted broker registers about 60 ms after its process
/// starts and is unfenced one heartbeat later (0.6 s in all, measured in the node logs), and
/// the link is healed as soon as the follower's log says so. The dead incarnation's Fetch is
/// then delivered by its kernel's next retransmission (200 ms, doubling: 0.2, 0.6, 1.4, 3 s
/// after it was sent), so healing by this keeps it at 1.4 s after its send.
const STALE_FETCH_MAX_CUT: Duration = Duration::from_millis(1300);

/// When `stale-fetch` lets the other followers' packets through to the leader, from the start
/// of the cut: after the stale Fetch arrived (1.6 s at the latest, above), and well before the
/// leader shrinks them out of the ISR (replica.lag.time.max.ms, 3 s). Until then the leader's
/// HW stays at what they had fetched before the cut, at or below the stale Fetch's offset, so
/// that Fetch still qualifies its follower for the ISR.
const STALE_FETCH_HOLD_OTHERS: Duration = Duration::from_millis(2000);

/// Whether this crash is the `stale-fetch` composite, and its plan. Only on a KRaft cluster of
/// three brokers or more whose nemeses partition in network namespaces (the links are cut by
/// nftables drops, which TCP retransmits through) and crash, when `kind` is a crash or a pause
/// (the follower is crashed with `kind`, or for a pause with `lose-unsynced` if asked for,
/// else `kill`), no partition or link shaping is in force and no process
/// fault holds a broker (see [`spare_last_broker`]). The odds (one in two of the crashes and
/// pauses that may take it) and the pick come from their own seeded stream, drawn whatever Metadata says,
/// so that the other faults' draws are as they were until the first composite.
fn stale_fetch_plan(
    config: &TestConfig,
    stale_rng: &mut Rng,
    kind: NemesisKind,
    shaped: bool,
    in_force: &[Fault],
    system: &ProcessSystem,
    admin: &mut KafkaClient,
) -> Option<(crate::nemesis::stale_fetch::StaleFetchPlan, NemesisKind)> {
    let brokers = system.broker_ids();
    let eligible = config.metadata == Metadata::Kraft
        && config.controllers > 0
        && brokers.len() >= 3
        && config.nemeses.contains(&NemesisKind::Partition)
        // Namespaces, not the proxies: the kernel's retransmission is what holds the Fetch.
        && system.can_partition()
        && system.proxies.is_none()
        && matches!(
            kind,
            NemesisKind::Kill | NemesisKind::LoseUnsynced | NemesisKind::Pause
        )
        && !shaped;
    if !eligible || busy_nodes(in_force).iter().any(|n| brokers.contains(n)) {
        return None;
    }
    // A pause that becomes the composite crashes the follower all the same.
    let crash = [kind, NemesisKind::LoseUnsynced, NemesisKind::Kill]
        .into_iter()
        .find(|k| k.crashes() && config.nemeses.contains(k))?;
    let chosen = stale_rng.below(2) == 0;
    let pick = stale_rng.below(1 << 16) as usize;
    if !chosen {
        return None;
    }
    let plans = crate::nemesis::stale_fetch::plans(&admin.partition_views().ok()?);
    (!plans.is_empty()).then(|| (plans[pick % plans.len()].clone(), crash))
}

/// How many times `log` says its broker was unfenced (`broker session ... fenced=false`).
fn unfenced_count(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .map(|s| s.matches("fenced=false").count())
        .unwrap_or(0)
}

/// Sets `grudge` (empty: heals) and records it as a `stale-fetch` partition op.
fn stale_fetch_cut(
    f: &str,
    grudge: &Grudge,
    value: &serde_json::Value,
    system: &mut ProcessSystem,
    record: &dyn Fn(&str, &serde_json::Value, Option<String>),
) -> bool {
    let mut value = value.clone();
    value["grudge"] = serde_json::json!(grudge);
    let done = system.partition(grudge);
    let ok = done.is_ok();
    record(f, &value, done.err().map(|e| e.to_string()));
    ok
}

/// The `stale-fetch` composite fault (see [`crate::nemesis::stale_fetch`]), step by step: the
/// leader stops hearing the brokers (one way: its answers, its heartbeats and the metadata it
/// fetches still flow); [`STALE_FETCH_SEND_WAIT`] later the follower is crashed with `crash`
/// (losing its unsynced writes for `lose-unsynced`) and restarted at once; once its node log
/// says the new incarnation is unfenced (at most [`STALE_FETCH_MAX_CUT`] into the cut) the
/// leader hears the follower again, and at [`STALE_FETCH_HOLD_OTHERS`] the other brokers.
/// Each step is a nemesis op with target `stale-fetch` (`start-partition`, then the narrowing
/// as `stop-partition` + `start-partition`, `stop-partition`; `start-X` of the follower) and a
/// summary line. Returns the follower's crash fault (already restarted: its stop at the next
/// tick only records the end) when the crash started.
fn stale_fetch(
    plan: &crate::nemesis::stale_fetch::StaleFetchPlan,
    crash: NemesisKind,
    system: &mut ProcessSystem,
    rng: &mut Rng,
    record: &dyn Fn(&str, &serde_json::Value, Option<String>),
    lines: &mut Vec<String>,
) -> Option<(NemesisKind, Vec<NodeId>, serde_json::Value)> {
    const TARGET: &str = "stale-fetch";
    let (leader, follower) = (plan.leader, plan.follower);
    let others: Vec<NodeId> = system
        .broker_ids()
        .into_iter()
        .filter(|b| *b != leader && *b != follower)
        .collect();
    let all: Vec<NodeId> = others.iter().copied().chain([follower]).collect();
    let value = |nodes: &[NodeId]| {
        serde_json::json!({
            "target": TARGET,
            "nodes": nodes,
            "leader": leader,
            "follower": follower,
            "partitions": plan.partitions,
        })
    };
    let cut = crate::nemesis::grudge::one_way(&all, &[leader]);
    let cut_at = Instant::now();
    let summary = format!(
        "partition {TARGET} {} (n{leader} leads partitions {:?}; follower n{follower})",
        cut.describe(),
        plan.partitions
    );
    let mut cut_nodes = all.clone();
    cut_nodes.push(leader);
    cut_nodes.sort();
    if !stale_fetch_cut("start-partition", &cut, &value(&cut_nodes), system, record) {
        lines.push(format!("{summary} FAILED"));
        return None;
    }
    lines.push(summary);
    std::thread::sleep(STALE_FETCH_SEND_WAIT);
    let log = system
        .logs()
        .into_iter()
        .find(|(id, _)| *id == follower)
        .map(|(_, l)| l);
    let unfenced_before = log.as_deref().map_or(0, unfenced_count);
    let crashed_at = Instant::now();
    let mut started = start_fault(crash, &[follower], rng, system);
    if started.is_ok() {
        match system.restart(follower) {
            Ok(()) => {
                if let Ok(d) = &mut started {
                    d.push_str(" (restarted at once)");
                }
            }
            Err(e) => started = Err(e),
        }
    }
    let summary = format!(
        "{} node {follower} ({TARGET}) (follower of n{leader})",
        crash.name()
    );
    let crashed = started.is_ok();
    match &started {
        Ok(detail) => lines.push(format!("{summary}{detail}")),
        Err(e) => lines.push(format!("{summary} FAILED: {e}")),
    }
    record(
        &format!("start-{}", crash.name()),
        &value(&[follower]),
        started.err().map(|e| e.to_string()),
    );
    // Bounded by the cut's budget: the stale Fetch must arrive before the others' lag.
    let mut unfenced = None;
    if crashed {
        while cut_at.elapsed() < STALE_FETCH_MAX_CUT {
            if log.as_deref().map_or(0, unfenced_count) > unfenced_before {
                unfenced = Some(crashed_at.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The follower's packets pass again: the dead incarnation's Fetch goes out at its next
    // retransmission; the others' stay held, so the HW does not pass that Fetch's offset.
    stale_fetch_cut("stop-partition", &cut, &value(&cut_nodes), system, record);
    let held = crate::nemesis::grudge::one_way(&others, &[leader]);
    let mut held_nodes = others.clone();
    held_nodes.push(leader);
    held_nodes.sort();
    stale_fetch_cut(
        "start-partition",
        &held,
        &value(&held_nodes),
        system,
        record,
    );
    let follower_heard = cut_at.elapsed();
    while cut_at.elapsed() < STALE_FETCH_HOLD_OTHERS {
        std::thread::sleep(Duration::from_millis(20));
    }
    stale_fetch_cut(
        "stop-partition",
        &Grudge::default(),
        &value(&held_nodes),
        system,
        record,
    );
    let unfenced = match unfenced {
        Some(t) => format!("unfenced {} ms after its crash", t.as_millis()),
        None => "not unfenced in time".to_string(),
    };
    lines.push(format!(
        "{TARGET}: n{follower} {unfenced}; n{leader} hears it again {} ms into the cut, the others {} ms",
        follower_heard.as_millis(),
        cut_at.elapsed().as_millis()
    ));
    crashed.then(|| (crash, vec![follower], value(&[follower])))
}

/// Nodes a process fault in force holds down or stopped (a reassign fault's stalled replica
/// among them): they would not answer a request.
/// Whether a quorum fault holds a cut (one grudge at a time: a partition waits for its end).
fn quorum_cut(in_force: &[Fault]) -> bool {
    in_force.iter().any(|f| {
        f.kind == NemesisKind::Quorum
            && f.value["grudge"].as_object().is_some_and(|g| !g.is_empty())
    })
}

/// Starts a quorum fault (`crate::nemesis::quorum`) of a seeded shape, recording each of its
/// steps (`quorum-step`) and then `start-quorum`; `None` when it could not be lined up (a
/// controller down or held, no quorum leader, no free broker), which costs the tick nothing.
/// `(can_cut, end, tick)`: whether it may partition, the run's end, the current tick.
fn start_quorum_fault(
    rng: &mut Rng,
    system: &mut ProcessSystem,
    in_force: &[Fault],
    (can_cut, end, tick): (bool, Instant, u64),
    record: &dyn Fn(&str, &serde_json::Value, Option<String>),
    lines: &mut Vec<String>,
) -> Option<Fault> {
    use crate::nemesis::quorum;
    let shape = quorum::QuorumShape::choose(rng, can_cut);
    let busy = busy_nodes(in_force);
    let started = quorum::start(shape, rng, system, &busy, end, &mut |step| {
        match &step.error {
            None => lines.push(step.summary),
            Some(e) => lines.push(format!("{} FAILED: {e}", step.summary)),
        }
        record("quorum-step", &step.value, step.error);
    })?;
    record("start-quorum", &started.value, None);
    Some(Fault::new(
        NemesisKind::Quorum,
        started.nodes,
        started.value,
        tick + started.shape.ticks(),
    ))
}

fn busy_nodes(in_force: &[Fault]) -> Vec<NodeId> {
    in_force
        .iter()
        .filter(|f| f.kind != NemesisKind::Clock)
        .filter(|f| f.kind != NemesisKind::Partition)
        .flat_map(|f| f.nodes.iter().copied())
        .collect()
}

/// How a reassign fault ended, for the summary.
fn reassign_outcome(value: &serde_json::Value, error: &Option<String>) -> String {
    let isr = format!("ISR {}", value["isr-at-stop"]);
    match (value["action"].as_str(), error) {
        (Some("completed"), _) => format!("completed {} ({isr})", value["replicas-at-stop"]),
        (_, Some(e)) => format!("{} FAILED: {e}", value["action"].as_str().unwrap_or("?")),
        (Some("cancel"), _) => format!(
            "cancelled (code {}) at {} ({isr})",
            value["cancel-error-code"], value["replicas-at-stop"]
        ),
        (Some("replace"), _) => format!("replaced at {} ({isr})", value["replicas-at-stop"]),
        _ => format!("left running at {} ({isr})", value["replicas-at-stop"]),
    }
}

/// A started reassignment, for the summary.
fn reassign_summary(value: &serde_json::Value, error: &Option<String>) -> String {
    let mut line = format!(
        "reassign partition {} {} -> {}",
        value["partition"], value["replicas"], value["reassign-to"]
    );
    if !value["replaces"].is_null() {
        line.push_str(&format!(" (replacing -> {})", value["replaces"]));
    }
    if let Some(s) = value["stalled"].as_array().filter(|s| !s.is_empty()) {
        line.push_str(&format!(
            " (stalled {})",
            serde_json::Value::Array(s.clone())
        ));
    }
    if let Some(e) = error {
        line.push_str(&format!(" FAILED: {e}"));
    }
    line
}

/// The default store folder for runs.
pub fn default_store() -> PathBuf {
    Path::new("store").to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ballast_sorts_after_the_test_topic() {
        // The reference controller fails topics over in name order: the test topic first.
        assert!(crate::nemesis::zombie_failover::BALLAST_TOPIC > TOPIC);
    }

    #[test]
    fn a_zombies_events_are_counted_by_kind_in_order() {
        assert_eq!(
            event_counts("[BrokerChange, IsrChangeNotification, IsrChangeNotification]"),
            "BrokerChange, 2 IsrChangeNotification"
        );
        assert_eq!(event_counts("[BrokerChange]"), "BrokerChange");
    }

    #[test]
    fn a_replacement_target_is_neither_the_running_target_nor_the_origin() {
        for (brokers, origin, running) in [
            (vec![1, 2, 3, 4], vec![1, 2, 3], vec![1, 2, 4]),
            (vec![1, 2, 3, 4, 5], vec![1, 2, 3], vec![3, 4, 5]),
        ] {
            for seed in 0..200 {
                let mut rng = Rng::new(seed);
                let t = replacement_target(&mut rng, &brokers, &origin, &running, 3);
                assert_eq!(t.len(), 3, "seed {seed}: {t:?}");
                assert!(!same_set(&t, &running), "seed {seed}: {t:?} is running");
                assert!(!same_set(&t, &origin), "seed {seed}: {t:?} is the origin");
                assert!(t.iter().all(|b| brokers.contains(b)));
            }
        }
    }

    #[test]
    fn a_reassignment_target_is_another_set_of_rf_brokers() {
        let brokers = [1, 2, 3, 4];
        for seed in 0..200 {
            let mut rng = Rng::new(seed);
            let current = [1, 2, 3];
            let moved_leader = (seed % 2 == 0).then_some(2);
            let t = reassignment_target(&mut rng, &brokers, &current, 3, moved_leader);
            if moved_leader.is_some() {
                assert!(!t.contains(&2), "seed {seed}: {t:?} keeps the leader");
                assert_eq!(
                    t[0], 4,
                    "seed {seed}: {t:?} does not lead with the added broker"
                );
            }
            assert_eq!(t.len(), 3, "seed {seed}: {t:?}");
            let mut sorted = t.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 3, "seed {seed}: a broker twice in {t:?}");
            assert!(t.iter().all(|b| brokers.contains(b)));
            assert!(
                t.iter().any(|b| !current.contains(b)),
                "seed {seed}: {t:?} is the current set"
            );
        }
    }

    #[test]
    fn reassign_needs_four_brokers_and_all_adds_it_only_then() {
        assert_eq!(
            NemesisKind::parse_list("reassign,kill").unwrap(),
            vec![NemesisKind::Kill, NemesisKind::Reassign]
        );
        assert!(!NemesisKind::parse_list("all")
            .unwrap()
            .contains(&NemesisKind::Reassign));
    }
}
