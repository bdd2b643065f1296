//! `kcheck broker`: the clap command and its runner (wired into the root CLI).

use crate::broker::BrokerConfig;
use crate::log::FlushPolicy;
use clap::{Arg, ArgAction, ArgMatches, Command};
use std::path::PathBuf;
use std::sync::Arc;

pub fn broker_command() -> Command {
    Command::new("broker")
        .about("Run the reference Kafka broker (single node, durable segmented log)")
        .arg(
            Arg::new("node-id")
                .long("node-id")
                .default_value("0")
                .value_parser(clap::value_parser!(i32))
                .help("Broker id (node.id)"),
        )
        .arg(
            Arg::new("listen")
                .long("listen")
                .default_value("127.0.0.1:9092")
                .help("Listener address (loopback by default; port 0 picks a free port)"),
        )
        .arg(
            Arg::new("data-dir")
                .long("data-dir")
                .default_value("kcheck-data")
                .help("Log directory (log.dirs)"),
        )
        .arg(
            Arg::new("flush")
                .long("flush")
                .num_args(1..=2)
                .default_values(["never"])
                .help("fsync policy: always | interval-ms N | never"),
        )
        .arg(
            Arg::new("auto-create-topics")
                .long("auto-create-topics")
                .action(ArgAction::SetTrue)
                .help("Create topics on first use (auto.create.topics.enable)"),
        )
        .arg(
            Arg::new("partitions")
                .long("partitions")
                .default_value("1")
                .value_parser(clap::value_parser!(i32))
                .help("Partitions of auto-created topics (num.partitions)"),
        )
        .arg(Arg::new("process-roles").long("process-roles").help(
            "KRaft roles: broker | controller | broker,controller (none: single-node broker)",
        ))
        .arg(
            Arg::new("controller-listen")
                .long("controller-listen")
                .help("Controller listener address (controllers only), e.g. 127.0.0.1:19093"),
        )
        .arg(
            Arg::new("controller-quorum-voters")
                .long("controller-quorum-voters")
                .help("Voters as ID@HOST:PORT,... (controller.quorum.voters)"),
        )
        .arg(
            Arg::new("bug")
                .long("bug")
                .action(ArgAction::Append)
                .help("Switch on a protocol bug flag (off by default; refused unless named here)"),
        )
        .arg(
            Arg::new("peer-address")
                .long("peer-address")
                .value_name("ID=HOST:PORT")
                .action(ArgAction::Append)
                .help("Reach node ID at HOST:PORT for inter-node traffic (replica fetches, the controller quorum) instead of its registered or voter address; clients are still told the registered one (a test harness's per-link proxies)"),
        )
        .arg(
            Arg::new("min-insync-replicas")
                .long("min-insync-replicas")
                .default_value("1")
                .value_parser(clap::value_parser!(u16).range(1..))
                .help("min.insync.replicas: acks=all needs this many ISR members (cluster mode)"),
        )
        .arg(
            Arg::new("replica-lag-time-max-ms")
                .long("replica-lag-time-max-ms")
                .default_value("30000")
                .value_parser(clap::value_parser!(u64))
                .help("replica.lag.time.max.ms: a follower not caught up this long leaves the ISR"),
        )
        .arg(
            Arg::new("broker-session-timeout-ms")
                .long("broker-session-timeout-ms")
                .default_value("9000")
                .value_parser(clap::value_parser!(u64))
                .help("broker.session.timeout.ms: fence a broker whose heartbeats lapse this long"),
        )
        .arg(
            Arg::new("election-timeout-ms")
                .long("election-timeout-ms")
                .default_value("1000")
                .value_parser(clap::value_parser!(u64))
                .help("controller.quorum.election.timeout.ms (fetch timeout is twice this)"),
        )
        .arg(Arg::new("zookeeper").long("zookeeper").help(
            "ZooKeeper mode: the ensemble as HOST:PORT,... (zookeeper.connect); excludes --process-roles",
        ))
        .arg(
            Arg::new("zookeeper-session-timeout-ms")
                .long("zookeeper-session-timeout-ms")
                .default_value("6000")
                .value_parser(clap::value_parser!(u64).range(100..=600_000))
                .help("zookeeper.session.timeout.ms: a broker silent this long loses its registration (and the controller role)"),
        )
        .arg(
            Arg::new("test-hold-controller-events")
                .long("test-hold-controller-events")
                .action(ArgAction::SetTrue)
                .help("TESTS ONLY, ZooKeeper mode: SIGUSR2 holds this broker's controller event processing (events queue up), the next SIGUSR2 releases it; lines up a zombie controller's window (specs/cluster-zookeeper.md)"),
        )
        .arg(
            Arg::new("test-control")
                .long("test-control")
                .help("TESTS ONLY: serve the hold/release control endpoint on this loopback address (kcheck replay --against cluster); off when absent"),
        )
        .arg(
            Arg::new("trace-file")
                .long("trace-file")
                .value_name("PATH")
                .help("Write protocol transition events as JSON lines to PATH (for `kcheck conform`)"),
        )
        .arg(
            Arg::new("max-request-bytes")
                .long("max-request-bytes")
                .default_value("104857600")
                .value_parser(clap::value_parser!(usize))
                .help("Largest request frame accepted (socket.request.max.bytes)"),
        )
}

/// Parses `--flush` values: `always`, `never`, `interval-ms N` (or `interval-ms=N`).
pub fn parse_flush(values: &[String]) -> Result<FlushPolicy, String> {
    match values {
        [one] => one.parse(),
        [k, n] if k == "interval-ms" => n
            .parse()
            .map(FlushPolicy::IntervalMs)
            .map_err(|_| format!("bad interval {n:?}")),
        other => Err(format!(
            "bad flush policy {other:?}: want always, never or interval-ms N"
        )),
    }
}

pub fn broker_config(m: &ArgMatches) -> Result<BrokerConfig, String> {
    let flush: Vec<String> = m
        .get_many::<String>("flush")
        .map(|v| v.cloned().collect())
        .unwrap_or_default();
    let mut cfg = BrokerConfig::new(PathBuf::from(
        m.get_one::<String>("data-dir").expect("has default"),
    ));
    cfg.node_id = *m.get_one::<i32>("node-id").expect("has default");
    let listen = m.get_one::<String>("listen").expect("has default");
    cfg.listen = listen
        .parse()
        .map_err(|e| format!("bad --listen {listen:?}: {e}"))?;
    cfg.flush = parse_flush(&flush)?;
    cfg.auto_create_topics = m.get_flag("auto-create-topics");
    cfg.default_partitions = *m.get_one::<i32>("partitions").expect("has default");
    cfg.max_request_bytes = *m
        .get_one::<usize>("max-request-bytes")
        .expect("has default");
    let (broker_bugs, _) = split_bug_flags(&bug_names(m))?;
    // The data plane's flags; the broker's KRaft observer flags go to its metadata fetcher.
    let broker_bugs: Vec<String> = broker_bugs
        .into_iter()
        .filter(|b| crate::raft::RaftBug::parse(b).is_err())
        .collect();
    cfg.replication = crate::broker::ReplicationConfig {
        min_insync_replicas: usize::from(
            *m.get_one::<u16>("min-insync-replicas")
                .expect("has default"),
        ),
        replica_lag_time_max_ms: *m
            .get_one::<u64>("replica-lag-time-max-ms")
            .expect("has default"),
        bugs: crate::partition::BrokerBugs::parse(&broker_bugs)?,
        peer_addresses: peer_addresses(m)?
            .into_iter()
            .map(|(id, a)| (id, a.to_string()))
            .collect(),
    };
    Ok(cfg)
}

/// `--peer-address ID=HOST:PORT`, each id at most once.
pub fn peer_addresses(
    m: &ArgMatches,
) -> Result<std::collections::BTreeMap<i32, std::net::SocketAddr>, String> {
    let mut out = std::collections::BTreeMap::new();
    for item in m.get_many::<String>("peer-address").into_iter().flatten() {
        let bad =
            || format!("bad --peer-address {item:?}: want ID=HOST:PORT, e.g. 2=127.0.0.1:40002");
        let (id, addr) = item.split_once('=').ok_or_else(bad)?;
        let id: i32 = id.trim().parse().map_err(|_| bad())?;
        let addr: std::net::SocketAddr = addr.trim().parse().map_err(|_| bad())?;
        if out.insert(id, addr).is_some() {
            return Err(format!("--peer-address names node {id} twice"));
        }
    }
    Ok(out)
}

/// The `--bug` names of the data plane and the KRaft controller (ZooKeeper-mode flags are
/// [`zk_bug_names`]).
fn bug_names(m: &ArgMatches) -> Vec<String> {
    m.get_many::<String>("bug")
        .map(|v| {
            v.filter(|n| crate::zk_controller::ZkBug::parse(n).is_none())
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn zk_bug_names(m: &ArgMatches) -> Vec<crate::zk_controller::ZkBug> {
    m.get_many::<String>("bug")
        .map(|v| {
            v.filter_map(|n| crate::zk_controller::ZkBug::parse(n))
                .collect()
        })
        .unwrap_or_default()
}

/// `--zookeeper`: the ZooKeeper-mode settings, or `None` (KRaft or single-node). ZooKeeper-mode
/// bug flags without `--zookeeper`, or `--zookeeper` with KRaft options, are refused.
pub fn zookeeper_args(m: &ArgMatches) -> Result<Option<crate::zk_controller::ZkConfig>, String> {
    let bugs = zk_bug_names(m);
    let test_event_hold = m.get_flag("test-hold-controller-events");
    let Some(connect) = m.get_one::<String>("zookeeper") else {
        if test_event_hold {
            return Err(
                "--test-hold-controller-events holds a ZooKeeper-mode controller: it needs --zookeeper HOST:PORT,...".into(),
            );
        }
        if let Some(b) = bugs.first() {
            return Err(format!(
                "bug flag '{}' is a ZooKeeper-mode choice: it needs --zookeeper HOST:PORT,...",
                b.name()
            ));
        }
        return Ok(None);
    };
    if m.get_one::<String>("process-roles").is_some()
        || m.get_one::<String>("controller-quorum-voters").is_some()
        || m.get_one::<String>("controller-listen").is_some()
    {
        return Err("--zookeeper is ZooKeeper mode: drop --process-roles, --controller-quorum-voters and --controller-listen (those are KRaft mode)".into());
    }
    for hp in connect.split(',') {
        let ok = hp
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok {
            return Err(format!(
                "bad --zookeeper {connect:?}: want HOST:PORT[,HOST:PORT...], e.g. 127.0.0.1:2181"
            ));
        }
    }
    if let Some(b) = bug_names(m).first() {
        if crate::controller::ControllerBug::ALL
            .iter()
            .any(|x| x.name() == b)
        {
            return Err(format!(
                "bug flag '{b}' is a KRaft controller choice; ZooKeeper mode knows no-controller-epoch-check, no-zkversion-check and the data plane's flags"
            ));
        }
    }
    Ok(Some(crate::zk_controller::ZkConfig {
        connect: connect.clone(),
        session_timeout_ms: *m
            .get_one::<u64>("zookeeper-session-timeout-ms")
            .expect("has default"),
        bugs: crate::zk_controller::ZkBugs(bugs),
        test_event_hold,
    }))
}

/// The KRaft mutations an observer runs (a broker fetching `__cluster_metadata`): they go to
/// brokers, the other [`crate::raft::RaftBug`]s to the controllers (voters).
/// `observer-no-divergence-check` is about observers but is the leader's choice (it serves
/// their fetches), so it goes to the controllers.
pub fn is_observer_bug(b: crate::raft::RaftBug) -> bool {
    matches!(b, crate::raft::RaftBug::ApplyUncommitted)
}

/// Splits `--bug` names into the broker's (data plane, [`crate::partition::BROKER_BUGS`]; the
/// KRaft observer's) and the controller's ([`crate::controller::ControllerBug`]; the KRaft
/// voters' [`crate::raft::RaftBug`]s); a flag with a half on each side
/// (`last-replica-standing`, `no-broker-epoch-check`) goes to both. Unknown names are refused
/// with every known one.
pub fn split_bug_flags(names: &[String]) -> Result<(Vec<String>, Vec<String>), String> {
    use crate::controller::ControllerBug;
    use crate::raft::RaftBug;
    let (mut broker, mut controller) = (Vec::new(), Vec::new());
    for n in names {
        let raft = RaftBug::parse(n).ok();
        let b = crate::partition::BROKER_BUGS.iter().any(|x| x.name() == n)
            || raft.is_some_and(is_observer_bug);
        let c = ControllerBug::ALL.iter().any(|x| x.name() == n)
            || raft.is_some_and(|r| !is_observer_bug(r));
        if !b && !c {
            let mut known: Vec<&str> = crate::partition::BROKER_BUGS
                .iter()
                .map(|x| x.name())
                .chain(ControllerBug::ALL.iter().map(|x| x.name()))
                .chain(RaftBug::ALL.iter().map(|x| x.name()))
                .collect();
            known.sort_unstable();
            known.dedup();
            return Err(format!(
                "unknown bug flag '{n}' for kcheck broker (known: {})",
                known.join(", ")
            ));
        }
        if b {
            broker.push(n.clone());
        }
        if c {
            controller.push(n.clone());
        }
    }
    Ok((broker, controller))
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

/// The KRaft part of `kcheck broker`: which roles this process plays and how it reaches the
/// quorum. `None` when no `--process-roles` is given (the single-node broker of today).
#[derive(Clone, Debug)]
pub struct KraftArgs {
    pub broker: bool,
    /// The KRaft observer's mutations for this broker's metadata fetcher.
    pub observer_bugs: Vec<crate::raft::RaftBug>,
    pub controller: Option<crate::controller_server::ControllerNodeConfig>,
    pub voters: std::collections::BTreeMap<i32, std::net::SocketAddr>,
}

/// Validates the role flags together; every bad combination names the fix.
pub fn kraft_args(m: &ArgMatches) -> Result<Option<KraftArgs>, String> {
    use crate::controller::{ControllerBug, ControllerConfig};
    let roles = m.get_one::<String>("process-roles");
    let listen = m.get_one::<String>("controller-listen");
    let voters = m.get_one::<String>("controller-quorum-voters");
    let all_bugs = bug_names(m);
    let (broker_bugs, controller_bugs) = split_bug_flags(&all_bugs)?;
    let Some(roles) = roles else {
        let bugs = all_bugs;
        if listen.is_some() || voters.is_some() || !bugs.is_empty() {
            return Err("--controller-listen, --controller-quorum-voters and --bug need --process-roles broker|controller|broker,controller".into());
        }
        return Ok(None);
    };
    let (mut broker, mut controller) = (false, false);
    for r in roles.split(',').map(str::trim) {
        match r {
            "broker" => broker = true,
            "controller" => controller = true,
            other => {
                return Err(format!(
                    "unknown process role {other:?} in --process-roles: want broker, controller or broker,controller"
                ))
            }
        }
    }
    let voters =
        voters.ok_or("--process-roles needs --controller-quorum-voters ID@HOST:PORT,...")?;
    let mut voters = crate::controller_client::parse_voters(voters)?;
    let node_id = *m.get_one::<i32>("node-id").expect("has default");
    // This node reaches the other voters through their overrides; its own entry stays the
    // address it listens on.
    for (id, addr) in peer_addresses(m)? {
        if id != node_id {
            if let Some(v) = voters.get_mut(&id) {
                *v = addr;
            }
        }
    }
    // The controller's names are the active controller's choices or the voters' KRaft
    // mutations; the broker's KRaft names are its observer's.
    let bugs: Vec<ControllerBug> = controller_bugs
        .iter()
        .filter_map(|b| ControllerBug::parse(b).ok())
        .collect();
    let raft_bugs: Vec<crate::raft::RaftBug> = controller_bugs
        .iter()
        .filter_map(|b| crate::raft::RaftBug::parse(b).ok())
        .collect();
    let observer_bugs: Vec<crate::raft::RaftBug> = broker_bugs
        .iter()
        .filter_map(|b| crate::raft::RaftBug::parse(b).ok())
        .collect();
    if !broker {
        if let Some(b) = broker_bugs.iter().find(|b| !controller_bugs.contains(b)) {
            return Err(format!(
                "bug flag '{b}' is a broker choice: it needs --process-roles broker or broker,controller"
            ));
        }
    }
    let controller = if controller {
        let listen =
            listen.ok_or("--process-roles controller needs --controller-listen HOST:PORT")?;
        let listen: std::net::SocketAddr = listen
            .parse()
            .map_err(|e| format!("bad --controller-listen {listen:?}: {e}"))?;
        match voters.get(&node_id) {
            None => {
                return Err(format!(
                    "--node-id {node_id} is not in --controller-quorum-voters: a controller must be a voter"
                ))
            }
            Some(a) if a.port() != listen.port() => {
                return Err(format!(
                    "--controller-listen {listen} differs from voter {node_id}'s address {a} in --controller-quorum-voters"
                ))
            }
            Some(_) => {}
        }
        let election = *m
            .get_one::<u64>("election-timeout-ms")
            .expect("has default");
        let data_dir = PathBuf::from(m.get_one::<String>("data-dir").expect("has default"));
        Some(crate::controller_server::ControllerNodeConfig {
            node_id,
            listen,
            voters: voters.clone(),
            data_dir: data_dir.join("kraft"),
            raft: crate::raft::RaftConfig {
                election_timeout_ms: election.max(10),
                fetch_timeout_ms: 2 * election.max(10),
                fetch_interval_ms: 20,
                request_timeout_ms: (election / 2).max(50),
                bugs: raft_bugs,
                ..crate::raft::RaftConfig::default()
            },
            controller: ControllerConfig {
                session_timeout_ms: *m
                    .get_one::<u64>("broker-session-timeout-ms")
                    .expect("has default"),
                bugs,
                ..ControllerConfig::default()
            },
            seed: std::process::id() as u64,
        })
    } else {
        if listen.is_some() {
            return Err(
                "--controller-listen is only for --process-roles controller or broker,controller"
                    .into(),
            );
        }
        if let Some(b) = controller_bugs.iter().find(|b| !broker_bugs.contains(b)) {
            return Err(format!(
                "bug flag '{b}' is a controller choice: it needs --process-roles controller or broker,controller"
            ));
        }
        if voters.contains_key(&node_id) {
            return Err(format!(
                "--node-id {node_id} is a voter in --controller-quorum-voters: give this broker another id, or use --process-roles broker,controller"
            ));
        }
        None
    };
    Ok(Some(KraftArgs {
        broker,
        observer_bugs,
        controller,
        voters,
    }))
}

/// Runs the broker until Ctrl-C. Exit 0 on clean shutdown, 2 on bad arguments, 1 when the
/// broker cannot start (e.g. corrupt committed data).
pub fn run_broker(m: &ArgMatches) -> u8 {
    let node_id = *m.get_one::<i32>("node-id").expect("has default");
    let trace_file = m.get_one::<String>("trace-file").map(PathBuf::from);
    if let Err(e) = crate::proto_trace::init(trace_file.as_deref(), node_id) {
        eprintln!(
            "kcheck broker: cannot open --trace-file {}: {e} (give a writable path)",
            trace_file
                .as_deref()
                .unwrap_or(std::path::Path::new(""))
                .display()
        );
        return 2;
    }
    let cfg = match broker_config(m) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kcheck broker: {e}");
            return 2;
        }
    };
    let zookeeper = match zookeeper_args(m) {
        Ok(z) => z,
        Err(e) => {
            eprintln!("kcheck broker: {e}");
            return 2;
        }
    };
    let kraft = match zookeeper {
        Some(_) => None,
        None => match kraft_args(m) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("kcheck broker: {e}");
                return 2;
            }
        },
    };
    let test_control = match m.get_one::<String>("test-control") {
        None => None,
        Some(a) => match crate::test_control::parse_addr(a) {
            Ok(a)
                if kraft
                    .as_ref()
                    .is_some_and(|k| k.broker || k.controller.is_some()) =>
            {
                Some(a)
            }
            Ok(_) => {
                eprintln!("kcheck broker: --test-control holds a cluster node's replication (a broker's) or its KRaft messages (a controller's): it needs --process-roles broker, controller or broker,controller");
                return 2;
            }
            Err(e) => {
                eprintln!("kcheck broker: {e}");
                return 2;
            }
        },
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kcheck broker: cannot start runtime: {e}");
            return 1;
        }
    };
    // Clean shutdown (flush + checkpoints) on Ctrl-C or SIGTERM, as Kafka's controlled shutdown.
    let res = match (zookeeper, kraft) {
        (Some(z), _) => rt.block_on(run_zookeeper_broker(cfg, z)),
        (None, None) => rt.block_on(crate::server::serve(cfg, shutdown_signal())),
        (None, Some(k)) => rt.block_on(run_kraft_roles(cfg, k, test_control)),
    };
    match res {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kcheck broker: {e:#}");
            tracing::error!(error = %e, "broker failed");
            1
        }
    }
}

async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `--zookeeper`: a broker with a ZooKeeper session and a controller elector. SIGUSR1 is the
/// test-only zombie trigger ([`crate::zk_controller::ZkNode::resend_last`]); with
/// `--test-hold-controller-events`, SIGUSR2 holds and releases the controller's event
/// processing ([`crate::zk_controller::ZkNode::toggle_event_hold`]).
async fn run_zookeeper_broker(
    cfg: BrokerConfig,
    z: crate::zk_controller::ZkConfig,
) -> anyhow::Result<()> {
    use crate::zk_controller::{LiveBroker, ZkNode};
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind --listen {}: {e}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let endpoint = LiveBroker {
        id: cfg.node_id,
        host: addr.ip().to_string(),
        port: i32::from(addr.port()),
    };
    let hold = z.test_event_hold;
    let node = ZkNode::start(cfg.node_id, endpoint, z);
    if hold {
        let n = node.clone();
        tokio::spawn(async move {
            let Ok(mut usr2) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())
            else {
                return;
            };
            while usr2.recv().await.is_some() {
                let held = n.toggle_event_hold();
                println!(
                    "kcheck broker {}: controller events {} (test hold)",
                    n.node_id,
                    if held { "held" } else { "released" }
                );
            }
        });
    }
    let n = node.clone();
    tokio::spawn(async move {
        let Ok(mut usr1) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        else {
            return;
        };
        while usr1.recv().await.is_some() {
            let answers = n.resend_last().await;
            println!(
                "kcheck broker {}: resent the last controller requests, answers {answers:?}",
                n.node_id
            );
        }
    });
    let node_id = cfg.node_id;
    let mut topics_seen = node.image();
    tokio::spawn(async move {
        let mut last: Vec<String> = Vec::new();
        while topics_seen.changed().await.is_ok() {
            let topics: Vec<String> = topics_seen.borrow().topic_ids.keys().cloned().collect();
            if topics != last {
                println!("kcheck broker {node_id}: topics {topics:?}");
                last = topics;
            }
        }
    });
    crate::server::serve_zookeeper(listener, cfg, node, shutdown_signal()).await
}

/// `--process-roles`: a controller node, a broker following the quorum, or both.
async fn run_kraft_roles(
    cfg: BrokerConfig,
    k: KraftArgs,
    m_test_control: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    use crate::controller_client::{ControllerClient, ControllerClientConfig};
    use crate::controller_server::{serve_node, start_with};
    let node = match &k.controller {
        Some(c) => {
            let listener = tokio::net::TcpListener::bind(c.listen).await.map_err(|e| {
                anyhow::anyhow!("cannot bind --controller-listen {}: {e}", c.listen)
            })?;
            // A controller-only process: --test-control holds its KRaft messages and timer
            // (a combined process's endpoint is the broker's).
            let test = match m_test_control.filter(|_| !k.broker) {
                Some(a) => {
                    let l = tokio::net::TcpListener::bind(a)
                        .await
                        .map_err(|e| anyhow::anyhow!("cannot bind --test-control {a}: {e}"))?;
                    let peers = c.voters.keys().copied().filter(|v| *v != c.node_id);
                    let control = Arc::new(
                        crate::controller_test_control::ControllerTestControl::new(peers),
                    );
                    Some((l, control))
                }
                None => None,
            };
            let node = start_with(c.clone(), test.as_ref().map(|t| t.1.clone()))?;
            if let Some((l, control)) = test {
                let n = node.clone();
                tokio::spawn(crate::controller_test_control::serve(l, n, control));
            }
            println!(
                "kcheck controller {} listening on {}",
                c.node_id,
                listener.local_addr()?
            );
            let n = node.clone();
            tokio::spawn(async move { serve_node(listener, n, std::future::pending()).await });
            Some(node)
        }
        None => None,
    };
    if k.broker {
        let mut client_cfg =
            ControllerClientConfig::new(cfg.node_id, k.voters.clone(), cfg.listen.to_string());
        client_cfg.raft.bugs = k.observer_bugs.clone();
        // KIP-966: register as cleanly shut down only with the marker the last incarnation
        // wrote after flushing every log.
        client_cfg.previous_broker_epoch =
            crate::clean_shutdown::take(&cfg.data_dir).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read the clean-shutdown marker in {}: {e}",
                    cfg.data_dir.display()
                )
            })?;
        let data_dir = cfg.data_dir.clone();
        let client = match &node {
            Some(n) => ControllerClient::start_combined(client_cfg, n.clone()),
            None => ControllerClient::start(client_cfg),
        };
        let mut session = client.session();
        tokio::spawn(async move {
            let mut last = *session.borrow();
            while session.changed().await.is_ok() {
                let now = *session.borrow();
                if (now.broker_epoch, now.fenced) != (last.broker_epoch, last.fenced) {
                    println!(
                        "kcheck broker {}: broker epoch {:?}, fenced {}",
                        cfg.node_id, now.broker_epoch, now.fenced
                    );
                    tracing::info!(broker_epoch = ?now.broker_epoch, fenced = now.fenced, "broker session");
                }
                last = now;
            }
        });
        // One line per change of the topic set, for operators and the process tests.
        let mut topics_seen = client.image();
        let node_id = cfg.node_id;
        tokio::spawn(async move {
            let mut last: Vec<String> = Vec::new();
            while topics_seen.changed().await.is_ok() {
                let (offset, topics) = {
                    let i = topics_seen.borrow();
                    (i.offset, i.topic_ids.keys().cloned().collect::<Vec<_>>())
                };
                if topics != last {
                    println!(
                        "kcheck broker {node_id}: metadata offset {offset}, topics {topics:?}"
                    );
                    last = topics;
                }
            }
        });
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind --listen {}: {e}", cfg.listen))?;
        let test_control = match m_test_control {
            Some(a) => Some(
                tokio::net::TcpListener::bind(a)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot bind --test-control {a}: {e}"))?,
            ),
            None => None,
        };
        let image = caught_up_image(client.image(), client.session());
        let channel: Arc<dyn crate::replication::ControllerChannel> =
            Arc::new(crate::replication::ClientChannel(client.clone()));
        // SIGTERM is a controlled shutdown: the controller fences this broker and moves its
        // leaderships to other ISR members before the process flushes and exits, instead of
        // waiting for its session to lapse.
        let shutdown_client = client.clone();
        let shutdown = async move {
            shutdown_signal().await;
            match tokio::time::timeout(
                std::time::Duration::from_secs(5),
                shutdown_client.controlled_shutdown(),
            )
            .await
            {
                Ok(Ok(())) => tracing::info!("controlled shutdown accepted"),
                Ok(Err(e)) => tracing::warn!(error = %e, "controlled shutdown failed"),
                Err(_) => tracing::warn!("controlled shutdown not answered in 5 s"),
            }
        };
        let session = client.session();
        crate::server::serve_cluster_with(listener, cfg, image, channel, test_control, shutdown)
            .await?;
        // Every log is flushed: the next incarnation may claim a clean shutdown.
        let epoch = session.borrow().broker_epoch;
        if let Some(epoch) = epoch {
            crate::clean_shutdown::write(&data_dir, epoch).map_err(|e| {
                anyhow::anyhow!(
                    "cannot write the clean-shutdown marker in {}: {e}",
                    data_dir.display()
                )
            })?;
        }
    } else {
        shutdown_signal().await;
    }
    if let Some(n) = node {
        n.resign();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Ok(())
}

/// The metadata image the data plane sees: empty until this incarnation is first unfenced,
/// the controller's image from then on. The controller unfences a broker once it has replayed
/// its own registration, and that registration already moved the leaderships of a broker that
/// restarted away from it (and out of the ISR after an unclean shutdown, KIP-966); before it,
/// the replayed image still names this broker leader of logs it may have lost in the crash,
/// and acting on it elects an empty log with the old leader epoch. Kafka's broker likewise
/// publishes metadata only after its initial catch-up.
fn caught_up_image(
    image: tokio::sync::watch::Receiver<Arc<crate::metadata::MetadataImage>>,
    mut session: tokio::sync::watch::Receiver<crate::controller_client::BrokerSession>,
) -> tokio::sync::watch::Receiver<Arc<crate::metadata::MetadataImage>> {
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(crate::metadata::MetadataImage::default()));
    let mut image = image;
    tokio::spawn(async move {
        loop {
            let s = *session.borrow_and_update();
            if s.broker_epoch.is_some() && !s.fenced {
                break;
            }
            if session.changed().await.is_err() {
                return;
            }
        }
        loop {
            let current = image.borrow_and_update().clone();
            tx.send_replace(current);
            if image.changed().await.is_err() {
                return;
            }
        }
    });
    rx
}

pub fn bench_broker_command() -> Command {
    Command::new("bench-broker")
        .about("Benchmark the reference broker over loopback (acks 1/all x flush never/always) against disk and loopback limits")
        .arg(Arg::new("data-dir").long("data-dir").default_value("target/bench-broker").help("Directory on the disk to measure"))
        .arg(Arg::new("seconds").long("seconds").default_value("5").value_parser(clap::value_parser!(f64)).help("Duration of each run"))
        .arg(Arg::new("in-flight").long("in-flight").default_value("64").value_parser(clap::value_parser!(usize)).help("Outstanding produce requests"))
        .arg(Arg::new("records-per-batch").long("records-per-batch").default_value("100").value_parser(clap::value_parser!(i32)))
        .arg(Arg::new("record-bytes").long("record-bytes").default_value("100").value_parser(clap::value_parser!(usize)))
        .arg(Arg::new("trace-file").long("trace-file").value_name("PATH").help("Trace the in-process broker's protocol events to PATH (measures tracing's overhead)"))
}

pub fn run_bench_broker(m: &ArgMatches) -> u8 {
    let trace_file = m.get_one::<String>("trace-file").map(PathBuf::from);
    if let Some(path) = &trace_file {
        if let Err(e) = crate::proto_trace::init(Some(path), 0) {
            eprintln!(
                "kcheck bench-broker: cannot open --trace-file {}: {e} (give a writable path)",
                path.display()
            );
            return 2;
        }
    }
    let cfg = crate::bench::BenchConfig {
        data_dir: PathBuf::from(m.get_one::<String>("data-dir").expect("has default")),
        seconds: m
            .get_one::<f64>("seconds")
            .copied()
            .unwrap_or(5.0)
            .clamp(0.1, 600.0),
        in_flight: m
            .get_one::<usize>("in-flight")
            .copied()
            .unwrap_or(64)
            .clamp(1, 10_000),
        records_per_batch: m
            .get_one::<i32>("records-per-batch")
            .copied()
            .unwrap_or(100)
            .clamp(1, 100_000),
        record_bytes: m
            .get_one::<usize>("record-bytes")
            .copied()
            .unwrap_or(100)
            .min(1 << 20),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kcheck bench-broker: {e}");
            return 1;
        }
    };
    let started = std::time::Instant::now();
    match rt.block_on(crate::bench::run(&cfg)) {
        Ok(_) => {
            if let Some(path) = &trace_file {
                let events = std::fs::read_to_string(path).map_or(0, |t| t.lines().count());
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "trace: {events} protocol events in {secs:.1} s ({:.0} events/s) to {}",
                    events as f64 / secs,
                    path.display()
                );
            }
            0
        }
        Err(e) => {
            eprintln!("kcheck bench-broker: {e:#}");
            1
        }
    }
}

pub fn bench_quorum_command() -> Command {
    Command::new("bench-quorum")
        .about("Controller failover time of a 3-voter KRaft quorum of real processes (kill -9 and SIGTERM of the leader)")
        .arg(Arg::new("data-dir").long("data-dir").default_value("target/bench-quorum").help("Directory for the controllers' data (wiped first)"))
        .arg(Arg::new("trials").long("trials").default_value("5").value_parser(clap::value_parser!(usize)).help("Trials of each kind"))
        .arg(Arg::new("election-timeout-ms").long("election-timeout-ms").default_value("1000").value_parser(clap::value_parser!(u64)))
        .arg(Arg::new("base-port").long("base-port").default_value("19193").value_parser(clap::value_parser!(u16)).help("Controllers listen on this port and the next two"))
}

pub fn run_bench_quorum(m: &ArgMatches) -> u8 {
    let cfg = crate::bench_quorum::BenchQuorumConfig {
        data_dir: PathBuf::from(m.get_one::<String>("data-dir").expect("has default")),
        trials: m
            .get_one::<usize>("trials")
            .copied()
            .unwrap_or(5)
            .clamp(1, 100),
        election_timeout_ms: m
            .get_one::<u64>("election-timeout-ms")
            .copied()
            .unwrap_or(1000)
            .clamp(10, 60_000),
        base_port: m
            .get_one::<u16>("base-port")
            .copied()
            .unwrap_or(19193)
            .clamp(1024, 65_000),
    };
    match crate::bench_quorum::run(&cfg) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kcheck bench-quorum: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_policies_parse() {
        let v = |a: &[&str]| parse_flush(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(v(&["always"]), Ok(FlushPolicy::Always));
        assert_eq!(v(&["never"]), Ok(FlushPolicy::Never));
        assert_eq!(v(&["interval-ms", "50"]), Ok(FlushPolicy::IntervalMs(50)));
        assert!(v(&["interval-ms", "x"]).is_err());
        assert!(v(&["sometimes"]).is_err());
    }

    #[test]
    fn broker_args() {
        let m = broker_command()
            .try_get_matches_from([
                "broker",
                "--node-id",
                "3",
                "--flush",
                "interval-ms",
                "20",
                "--auto-create-topics",
            ])
            .unwrap();
        let c = broker_config(&m).unwrap();
        assert_eq!(
            (c.node_id, c.flush, c.auto_create_topics),
            (3, FlushPolicy::IntervalMs(20), true)
        );
        let m = broker_command()
            .try_get_matches_from(["broker", "--listen", "nowhere"])
            .unwrap();
        assert!(broker_config(&m).is_err());
    }
}
