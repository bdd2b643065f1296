//! One `kcheck test --system zookeeper` run: start the ensemble behind proxies, run the
//! workload's clients and a seeded nemesis, heal, read back, stop, write the run folder.
//!
//! The network: every server dials every other server's quorum and election ports through its
//! own proxy ([`ZkEnsemble::route_peer`]), and every worker reaches every server's client port
//! through its own proxy, so a partition can cut servers from servers (the quorum) or a client
//! from the whole ensemble (which is how a session expires while its owner lives on: Kafka's
//! zombie controller). Proxies drop traffic silently (an iptables DROP), so connections hang
//! and time out as they would across a real partition.
//!
//! The nemesis, one fault at a time on a seeded schedule (same seed, same choices), each
//! lasting one or two `nemesis_interval`s with a quiet interval after it:
//! - `kill`: SIGKILL the leader or a random server, restart it at the end;
//! - `pause`: SIGSTOP the leader or a random server, SIGCONT at the end;
//! - `partition`: isolate the leader or a random server from the other servers, or isolate a
//!   worker (in the election workload, the current controller) from every server for at least
//!   twice its session timeout;
//! - `clock`: move a server's wall clock by up to an hour either way (libfaketime).

use super::election::{self, ElectionBug, CONTROLLER, CONTROLLER_EPOCH, PARTITION_STATE};
use super::register::{self, RegisterReport};
use crate::history::{History, OpType, OpValue, Process, Recorder};
use crate::nemesis::clock::FakeClock;
use crate::proxy::{LinkFaults, Mode, Proxy};
use crate::run::NemesisKind;
use crate::sim::Rng;
use crate::Verdict;
use kcheck_reference::zk_ensemble::{ZkEnsemble, ZkEnsembleSpec};
use serde::Serialize;
use serde_json::{json, Value as Json};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zookeeper_client as zk;

/// The workloads of `--system zookeeper`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ZkWorkload {
    /// Compare-and-set registers on znodes (see [`super::register`]).
    Register,
    /// Kafka's controller election (see [`super::election`]).
    Election,
}

impl ZkWorkload {
    pub fn name(self) -> &'static str {
        match self {
            ZkWorkload::Register => "register",
            ZkWorkload::Election => "election",
        }
    }
    pub fn parse(s: &str) -> Result<ZkWorkload, String> {
        match s {
            "register" => Ok(ZkWorkload::Register),
            "election" => Ok(ZkWorkload::Election),
            _ => Err(format!(
                "unknown workload '{s}' for --system zookeeper (known: register, election)"
            )),
        }
    }
}

/// Everything that defines a run; written to `test.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ZkTestConfig {
    pub workload: ZkWorkload,
    pub nemeses: Vec<NemesisKind>,
    pub time_limit: Duration,
    /// Client operations per second, over all workers.
    pub rate: f64,
    pub concurrency: usize,
    pub seed: u64,
    pub store: PathBuf,
    pub nemesis_interval: Duration,
    pub bugs: Vec<ElectionBug>,
    /// Registers (znodes) of the register workload.
    pub keys: u64,
    pub servers: usize,
    /// The session timeout clients ask for (the ensemble grants 0.6 s to 6 s).
    pub session_timeout: Duration,
    /// Per-request timeout.
    pub client_timeout: Duration,
}

impl ZkTestConfig {
    /// The defaults of `kcheck test --system zookeeper`.
    pub fn new(workload: ZkWorkload, store: PathBuf) -> ZkTestConfig {
        ZkTestConfig {
            workload,
            nemeses: vec![
                NemesisKind::Kill,
                NemesisKind::Pause,
                NemesisKind::Partition,
                NemesisKind::Clock,
            ],
            time_limit: Duration::from_secs(30),
            rate: 100.0,
            concurrency: 5,
            seed: 0,
            store,
            nemesis_interval: Duration::from_secs(4),
            bugs: Vec::new(),
            keys: 3,
            servers: 3,
            session_timeout: Duration::from_secs(3),
            client_timeout: Duration::from_secs(3),
        }
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct ZkRunOutcome {
    pub dir: PathBuf,
    pub history: History,
    pub faults: Vec<String>,
}

/// Checks what the runner cannot do before starting anything.
pub fn validate(c: &ZkTestConfig) -> Result<(), String> {
    kcheck_reference::zk_ensemble::available(std::path::Path::new("/usr/bin/java"))?;
    if let Some(k) = c.nemeses.iter().find(|k| k.zookeeper_mode()) {
        return Err(format!(
            "{} is a fault of a ZooKeeper-mode Kafka cluster (kcheck test --metadata zookeeper); \
             --system zookeeper knows kill, pause, partition, clock",
            k.name()
        ));
    }
    if let Some(k) = c.nemeses.iter().find(|k| **k == NemesisKind::LoseUnsynced) {
        return Err(format!(
            "the {} nemesis needs LazyFs under the system's data directory, which the \
             ZooKeeper runner does not mount (use kill, pause, partition, clock)",
            k.name()
        ));
    }
    if c.nemeses.contains(&NemesisKind::Clock) {
        crate::nemesis::clock::available().map_err(|e| format!("clock: {e}"))?;
    }
    if !(3..=5).contains(&c.servers) {
        return Err("a ZooKeeper run uses 3 to 5 servers".into());
    }
    if c.concurrency == 0 || c.concurrency > 32 || !(c.rate > 0.0) || c.keys == 0 {
        return Err("--concurrency (1..=32), --rate and the key count must be positive".into());
    }
    if c.workload == ZkWorkload::Register && !c.bugs.is_empty() {
        return Err("the bug flags of --system zookeeper belong to --workload election".into());
    }
    Ok(())
}

struct Shared {
    start: Instant,
    recorder: Mutex<Recorder>,
    stop: AtomicBool,
    /// The broker (worker + 1) that last won the election and has not resigned; 0: none.
    controller: AtomicU64,
}

impl Shared {
    fn record(&self, kind: OpType, process: u64, f: &str, value: Json, error: Option<&str>) {
        let mut r = self.recorder.lock().unwrap_or_else(|e| e.into_inner());
        let t = self.start.elapsed().as_nanos() as u64;
        let p = if process == u64::MAX {
            Process::Nemesis
        } else {
            Process::Client(process)
        };
        let i = r.push(t, kind, p, f, OpValue::Other(value));
        if let Some(e) = error {
            r.set_error(i, e);
        }
    }
    fn nemesis(&self, f: &str, value: Json, error: Option<&str>) {
        self.record(OpType::Info, u64::MAX, f, value, error);
    }
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// How long a peer proxy retries a server's quorum or election port that refuses (a leader
/// opens its quorum port only once elected): what the dialling server would have done itself.
const PEER_PATIENCE: Duration = Duration::from_secs(3);

/// Puts a proxy on every server-to-server link of `ensemble` (before it starts): (from, to) →
/// proxies for `to`'s quorum and election ports, which `from` dials instead of the ports
/// themselves. Partitions of ZooKeeper servers are these proxies' faults. Each proxy's seed
/// is `seed` plus its link's position; returns the next unused seed too.
pub(crate) fn proxy_peer_links(
    ensemble: &mut ZkEnsemble,
    rt: &tokio::runtime::Runtime,
    mut seed: u64,
) -> anyhow::Result<(BTreeMap<(u32, u32), [Proxy; 2]>, u64)> {
    let servers = ensemble.servers().to_vec();
    let mut peers = BTreeMap::new();
    for from in &servers {
        for to in servers.iter().filter(|t| t.myid != from.myid) {
            seed += 1;
            let dial = |port: u16| {
                rt.block_on(Proxy::start_patient(
                    ([127, 0, 0, 1], port).into(),
                    seed,
                    PEER_PATIENCE,
                ))
            };
            let (q, e) = (dial(to.quorum_port)?, dial(to.election_port)?);
            ensemble.route_peer(from.myid, to.myid, q.local_addr.port(), e.local_addr.port())?;
            peers.insert((from.myid, to.myid), [q, e]);
        }
    }
    Ok((peers, seed))
}

/// The ensemble with its proxies and clocks.
struct ZkSystem {
    ensemble: ZkEnsemble,
    /// (from, to) → proxies for to's quorum and election ports.
    peers: BTreeMap<(u32, u32), [Proxy; 2]>,
    /// (worker, server) → proxy to the server's client port.
    clients: BTreeMap<(usize, u32), Proxy>,
    clocks: BTreeMap<u32, FakeClock>,
}

impl ZkSystem {
    fn start(
        c: &ZkTestConfig,
        dir: &std::path::Path,
        rt: &tokio::runtime::Runtime,
    ) -> anyhow::Result<ZkSystem> {
        let mut ensemble = ZkEnsemble::new(ZkEnsembleSpec::new(c.servers, dir))?;
        let servers = ensemble.servers().to_vec();
        let (peers, mut seed) = proxy_peer_links(&mut ensemble, rt, c.seed)?;
        let mut clients = BTreeMap::new();
        for w in 0..c.concurrency {
            for s in &servers {
                seed += 1;
                let p = rt.block_on(Proxy::start(([127, 0, 0, 1], s.client_port).into(), seed))?;
                clients.insert((w, s.myid), p);
            }
        }
        let mut clocks = BTreeMap::new();
        if c.nemeses.contains(&NemesisKind::Clock) {
            for s in &servers {
                let clock = FakeClock::new(dir, s.myid as i32)?;
                ensemble.set_env(s.myid, clock.env())?;
                clocks.insert(s.myid, clock);
            }
        }
        let mut sys = ZkSystem {
            ensemble,
            peers,
            clients,
            clocks,
        };
        if let Err(e) = sys.ensemble.start() {
            sys.shutdown();
            return Err(e);
        }
        Ok(sys)
    }

    fn worker_connect_string(&self, w: usize) -> String {
        self.clients
            .range((w, 0)..(w + 1, 0))
            .map(|(_, p)| p.local_addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Cuts (or heals) every link between `node` and the other servers.
    fn isolate_server(&self, node: u32, faults: LinkFaults) {
        for ((from, to), ps) in &self.peers {
            if *from == node || *to == node {
                ps.iter().for_each(|p| p.set(faults));
            }
        }
    }

    fn isolate_worker(&self, w: usize, faults: LinkFaults) {
        for ((worker, _), p) in &self.clients {
            if *worker == w {
                p.set(faults);
            }
        }
    }

    /// Every process running, every link and clock healed.
    fn heal(&mut self) -> anyhow::Result<()> {
        for p in self.peers.values().flatten().chain(self.clients.values()) {
            p.set(LinkFaults::healed());
        }
        for c in self.clocks.values() {
            c.reset()?;
        }
        for id in self.ensemble.myids() {
            if self.ensemble.is_running(id) {
                self.ensemble.resume(id)?;
            } else {
                self.ensemble.restart(id)?;
            }
        }
        Ok(())
    }

    fn shutdown(&mut self) {
        self.ensemble.stop_all(Duration::from_secs(3));
        for p in self.peers.values().flatten().chain(self.clients.values()) {
            p.shutdown();
        }
    }
}

impl Drop for ZkSystem {
    fn drop(&mut self) {
        for p in self.peers.values().flatten().chain(self.clients.values()) {
            p.shutdown();
        }
    }
}

fn zk_error_name(e: &zk::Error) -> &'static str {
    match e {
        zk::Error::ConnectionLoss => "connection-loss",
        zk::Error::SessionExpired => "session-expired",
        zk::Error::Timeout => "timeout",
        zk::Error::BadVersion => "bad-version",
        zk::Error::NodeExists => "node-exists",
        zk::Error::NoNode => "no-node",
        zk::Error::ClientClosed => "client-closed",
        zk::Error::SessionMoved => "session-moved",
        zk::Error::NoHosts => "no-hosts",
        zk::Error::Throttled => "throttled",
        zk::Error::NotReadOnly => "not-read-only",
        zk::Error::UnexpectedError(_) => "unexpected-error",
        zk::Error::UnexpectedErrorCode(_) => "unexpected-error-code",
        zk::Error::RuntimeInconsistent => "runtime-inconsistent",
        zk::Error::MarshallingError => "marshalling-error",
        zk::Error::BadArguments(_) => "bad-arguments",
        _ => "error",
    }
}

/// Whether the session is gone and the worker needs a new one.
fn session_lost(e: &str) -> bool {
    matches!(e, "session-expired" | "client-closed" | "session-moved")
}

/// Runs `f` with the request timeout; the error name on failure ("timeout" when it ran out).
async fn within<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, zk::Error>>,
) -> Result<T, &'static str> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(zk_error_name(&e)),
        Err(_) => Err("timeout"),
    }
}

async fn connect(cs: &str, c: &ZkTestConfig) -> Result<zk::Client, &'static str> {
    connect_within(cs, c, c.client_timeout).await
}

/// A new session, giving each server `limit / 2` to answer (`limit` in all).
async fn connect_within(
    cs: &str,
    c: &ZkTestConfig,
    limit: Duration,
) -> Result<zk::Client, &'static str> {
    within(
        limit,
        zk::Client::connector()
            .with_session_timeout(c.session_timeout)
            .with_connection_timeout(limit / 2)
            .connect(cs),
    )
    .await
}

fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

/// The znodes the workload starts from. Retried for up to a minute: a quorum that has just
/// formed on a loaded machine may take seconds to take sessions, and the client drops a
/// connection that stays silent for 40% of the session timeout.
async fn setup(cs: &str, c: &ZkTestConfig) -> Result<(), String> {
    let mut paths: Vec<(String, &'static [u8])> = vec![("/kcheck".into(), b"")];
    match c.workload {
        ZkWorkload::Register => paths.extend((0..c.keys).map(|k| (register::path(k), &b"0"[..]))),
        ZkWorkload::Election => {
            paths.push((CONTROLLER_EPOCH.into(), b"0"));
            paths.push((PARTITION_STATE.into(), b""));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        let client = match connect_within(cs, c, Duration::from_secs(10)).await {
            Ok(cl) => cl,
            Err(e) => {
                last = format!("connecting: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut done = true;
        for (path, data) in &paths {
            let created = tokio::time::timeout(
                Duration::from_secs(10),
                client.create(path, data, &persistent()),
            )
            .await;
            match created {
                Ok(Ok(_)) | Ok(Err(zk::Error::NodeExists)) => {}
                Ok(Err(e)) => {
                    last = format!("creating {path}: {e:?}");
                    done = false;
                    break;
                }
                Err(_) => {
                    last = format!("creating {path}: no answer within 10 s");
                    done = false;
                    break;
                }
            }
        }
        if done {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last)
}

fn parse_u64(data: &[u8]) -> u64 {
    std::str::from_utf8(data)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Sleeps about `concurrency / rate` (jittered), in slices so a stop is seen quickly.
async fn pace(c: &ZkTestConfig, rng: &mut Rng) {
    let mean = c.concurrency as f64 / c.rate;
    let secs = mean * (0.5 + (rng.below(1000) as f64) / 1000.0);
    tokio::time::sleep(Duration::from_secs_f64(secs.min(5.0))).await;
}

async fn register_worker(w: usize, cs: String, c: ZkTestConfig, shared: Arc<Shared>) {
    let mut rng = Rng::new(c.seed ^ (w as u64 + 1).wrapping_mul(0x9E37));
    let mut process = w as u64;
    let mut client: Option<zk::Client> = None;
    let mut versions: HashMap<u64, i32> = HashMap::new();
    let mut counter = 0u64;
    let new_process = |p: &mut u64| *p += c.concurrency as u64;
    while !shared.stopping() {
        pace(&c, &mut rng).await;
        let Some(cl) = client.clone() else {
            match connect(&cs, &c).await {
                Ok(cl) => client = Some(cl),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            continue;
        };
        let key = rng.below(c.keys);
        let path = register::path(key);
        counter += 1;
        let value = ((w as u64 + 1) << 32) | counter;
        let (f, inv) = match rng.below(4) {
            0 => (register::F_WRITE, register::write_value(key, value)),
            1 => {
                let expected = versions.get(&key).copied().unwrap_or(0);
                (register::F_CAS, register::cas_value(key, expected, value))
            }
            2 => (register::F_READ_SYNC, register::read_value(key)),
            _ => (register::F_READ_NOSYNC, register::read_value(key)),
        };
        shared.record(OpType::Invoke, process, f, inv.clone(), None);
        let outcome: Result<Json, &'static str> = match f {
            register::F_WRITE => within(
                c.client_timeout,
                cl.set_data(&path, value.to_string().as_bytes(), None),
            )
            .await
            .map(|st| register::with_version(inv.clone(), value, st.version)),
            register::F_CAS => {
                let expected = inv["expected-version"].as_i64().unwrap_or(0) as i32;
                within(
                    c.client_timeout,
                    cl.set_data(&path, value.to_string().as_bytes(), Some(expected)),
                )
                .await
                .map(|st| register::with_version(inv.clone(), value, st.version))
            }
            _ => {
                let synced = if f == register::F_READ_SYNC {
                    within(c.client_timeout, cl.sync(&path)).await
                } else {
                    Ok(())
                };
                match synced {
                    Ok(()) => within(c.client_timeout, cl.get_data(&path))
                        .await
                        .map(|(d, st)| {
                            register::with_version(inv.clone(), parse_u64(&d), st.version)
                        }),
                    Err(e) => Err(e),
                }
            }
        };
        match outcome {
            Ok(v) => {
                if let Some(r) = v["version"].as_i64() {
                    versions.insert(key, r as i32);
                }
                shared.record(OpType::Ok, process, f, v, None);
            }
            Err("bad-version") if f == register::F_CAS => {
                // Refused: it did not happen. Learn the version for the next cas.
                versions.remove(&key);
                if let Ok((_, st)) = within(c.client_timeout, cl.get_data(&path)).await {
                    versions.insert(key, st.version);
                }
                shared.record(OpType::Fail, process, f, inv, Some("bad-version"));
            }
            Err(e) if f == register::F_READ_SYNC || f == register::F_READ_NOSYNC => {
                shared.record(OpType::Fail, process, f, inv, Some(e));
                if session_lost(e) {
                    client = None;
                    new_process(&mut process);
                }
            }
            Err(e) => {
                shared.record(OpType::Info, process, f, inv, Some(e));
                new_process(&mut process);
                if session_lost(e) {
                    client = None;
                }
            }
        }
    }
}

/// How many actions a broker whose session expired takes on its old epoch before it notices
/// it is no longer controller (Kafka's controller processed the expiry from its event queue,
/// after the work already queued), unless the fence stops it first.
const ZOMBIE_ACTS: u32 = 3;

async fn election_worker(w: usize, cs: String, c: ZkTestConfig, shared: Arc<Shared>) {
    let broker = w as u64 + 1;
    let fence = !c.bugs.contains(&ElectionBug::NoEpochFence);
    let mut rng = Rng::new(c.seed ^ (w as u64 + 1).wrapping_mul(0xE1EC));
    let mut process = w as u64;
    let mut client: Option<zk::Client> = None;
    // The controller epoch and its zkVersion this broker believes it holds.
    let mut holding: Option<(i64, i32)> = None;
    let mut zombie_acts_left: Option<u32> = None;
    let mut seq = 0u64;
    let next_process = |p: &mut u64| *p += c.concurrency as u64;
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    while !shared.stopping() {
        pace(&c, &mut rng).await;
        let Some(cl) = client.clone() else {
            let reason = json!({ "broker": broker, "reason": "session-expired" });
            match connect(&cs, &c).await {
                Ok(cl) => {
                    if holding.is_some() {
                        // The old session expired while this broker was controller: it opens
                        // a new one and carries on with its cached epoch (the zombie).
                        shared.record(
                            OpType::Invoke,
                            process,
                            election::F_NEW_SESSION,
                            reason.clone(),
                            None,
                        );
                        shared.record(
                            OpType::Ok,
                            process,
                            election::F_NEW_SESSION,
                            json!({ "broker": broker, "session": cl.session_id().0,
                                    "epoch": holding.map(|h| h.0) }),
                            None,
                        );
                        zombie_acts_left = Some(ZOMBIE_ACTS);
                    }
                    client = Some(cl);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            continue;
        };
        if let Some((epoch, zk_version)) = holding {
            seq += 1;
            let inv = election::act_value(broker, epoch, seq);
            shared.record(OpType::Invoke, process, election::F_ACT, inv.clone(), None);
            let data = format!("{epoch}:{seq}");
            let result = if fence {
                let mut m = cl.new_multi_writer();
                let built = m
                    .add_check_version(CONTROLLER_EPOCH, zk_version)
                    .and_then(|_| m.add_set_data(PARTITION_STATE, data.as_bytes(), None));
                match built {
                    Ok(()) => match tokio::time::timeout(c.client_timeout, m.commit()).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(zk_error_name(&zk::Error::from(e))),
                        Err(_) => Err("timeout"),
                    },
                    Err(e) => Err(zk_error_name(&e)),
                }
            } else {
                within(
                    c.client_timeout,
                    cl.set_data(PARTITION_STATE, data.as_bytes(), None),
                )
                .await
                .map(|_| ())
            };
            match result {
                Ok(()) => shared.record(OpType::Ok, process, election::F_ACT, inv, None),
                Err("bad-version") => {
                    // ControllerMovedException: resign.
                    shared.record(
                        OpType::Fail,
                        process,
                        election::F_ACT,
                        inv,
                        Some("controller-moved"),
                    );
                    holding = None;
                    zombie_acts_left = None;
                    let _ = shared.controller.compare_exchange(
                        broker,
                        0,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                    resign(&cl, &c).await;
                }
                Err(e) => {
                    shared.record(OpType::Info, process, election::F_ACT, inv, Some(e));
                    next_process(&mut process);
                    if session_lost(e) {
                        client = None;
                    }
                }
            }
            if let Some(left) = zombie_acts_left.as_mut() {
                *left = left.saturating_sub(1);
                if *left == 0 {
                    // The broker processes its session expiry: it resigns.
                    holding = None;
                    zombie_acts_left = None;
                    let _ = shared.controller.compare_exchange(
                        broker,
                        0,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                }
            }
            continue;
        }
        // Candidate: Kafka's KafkaController.elect().
        shared.record(
            OpType::Invoke,
            process,
            election::F_ELECT,
            election::elect_value(broker),
            None,
        );
        let created = match within(
            c.client_timeout,
            cl.create(CONTROLLER, broker.to_string().as_bytes(), &ephemeral),
        )
        .await
        {
            Ok(_) => Ok(true),
            Err("node-exists") => {
                // Ours already, if an earlier create's answer was lost (KAFKA-7165)?
                match within(c.client_timeout, cl.get_data(CONTROLLER)).await {
                    Ok((_, st)) => Ok(st.ephemeral_owner == cl.session_id().0),
                    Err("no-node") => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let outcome: Result<(i64, i32), (OpType, &'static str)> = match created {
            Ok(false) => Err((OpType::Fail, "controller-exists")),
            Err(e) => Err((OpType::Info, e)),
            Ok(true) => match within(c.client_timeout, cl.get_data(CONTROLLER_EPOCH)).await {
                Err(e) => Err((OpType::Info, e)),
                Ok((d, st)) => {
                    let epoch = parse_u64(&d) as i64 + 1;
                    match within(
                        c.client_timeout,
                        cl.set_data(
                            CONTROLLER_EPOCH,
                            epoch.to_string().as_bytes(),
                            Some(st.version),
                        ),
                    )
                    .await
                    {
                        Ok(st) => Ok((epoch, st.version)),
                        Err("bad-version") => {
                            resign(&cl, &c).await;
                            Err((OpType::Fail, "epoch-moved"))
                        }
                        Err(e) => Err((OpType::Info, e)),
                    }
                }
            },
        };
        match outcome {
            Ok((epoch, v)) => {
                shared.record(
                    OpType::Ok,
                    process,
                    election::F_ELECT,
                    election::elected_value(broker, epoch, v),
                    None,
                );
                holding = Some((epoch, v));
                shared.controller.store(broker, Ordering::SeqCst);
            }
            Err((kind, e)) => {
                shared.record(
                    kind,
                    process,
                    election::F_ELECT,
                    election::elect_value(broker),
                    Some(e),
                );
                if kind == OpType::Info {
                    next_process(&mut process);
                    // Whether it holds /controller is unknown: let the session go, as a broker
                    // that cannot tell would have to.
                    client = None;
                    if !session_lost(e) {
                        resign(&cl, &c).await;
                    }
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Deletes `/controller` if this session owns it (best effort).
async fn resign(cl: &zk::Client, c: &ZkTestConfig) {
    if let Ok((_, st)) = within(c.client_timeout, cl.get_data(CONTROLLER)).await {
        if st.ephemeral_owner == cl.session_id().0 {
            let _ = within(c.client_timeout, cl.delete(CONTROLLER, Some(st.version))).await;
        }
    }
}

/// Reads back after the heal: every register with `sync`, or the controller epoch.
async fn final_reads(cs: &str, c: &ZkTestConfig, shared: &Shared) {
    let process = 1_000_000;
    let Ok(cl) = connect_within(cs, c, Duration::from_secs(20)).await else {
        return;
    };
    match c.workload {
        ZkWorkload::Register => {
            for key in 0..c.keys {
                let path = register::path(key);
                let inv = register::read_value(key);
                shared.record(
                    OpType::Invoke,
                    process,
                    register::F_READ_SYNC,
                    inv.clone(),
                    None,
                );
                let r = match within(Duration::from_secs(10), cl.sync(&path)).await {
                    Ok(()) => within(Duration::from_secs(10), cl.get_data(&path)).await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok((d, st)) => shared.record(
                        OpType::Ok,
                        process,
                        register::F_READ_SYNC,
                        register::with_version(inv, parse_u64(&d), st.version),
                        None,
                    ),
                    Err(e) => {
                        shared.record(OpType::Fail, process, register::F_READ_SYNC, inv, Some(e))
                    }
                }
            }
        }
        ZkWorkload::Election => {
            shared.record(
                OpType::Invoke,
                process,
                election::F_FINAL_READ,
                json!({}),
                None,
            );
            let r = match within(Duration::from_secs(10), cl.sync(CONTROLLER_EPOCH)).await {
                Ok(()) => within(Duration::from_secs(10), cl.get_data(CONTROLLER_EPOCH)).await,
                Err(e) => Err(e),
            };
            match r {
                Ok((d, st)) => shared.record(
                    OpType::Ok,
                    process,
                    election::F_FINAL_READ,
                    json!({ "controller-epoch": parse_u64(&d), "zk-version": st.version }),
                    None,
                ),
                Err(e) => shared.record(
                    OpType::Fail,
                    process,
                    election::F_FINAL_READ,
                    json!({}),
                    Some(e),
                ),
            }
        }
    }
}

/// One fault in force.
struct Fault {
    kind: NemesisKind,
    value: Json,
    undo: Undo,
    until_tick: u64,
}

enum Undo {
    Restart(u32),
    Resume(u32),
    HealServer(u32),
    HealWorker(usize),
    ResetClock(u32),
}

fn start_fault(
    kind: NemesisKind,
    rng: &mut Rng,
    sys: &mut ZkSystem,
    c: &ZkTestConfig,
    shared: &Shared,
) -> anyhow::Result<(Json, Undo, String)> {
    let ids = sys.ensemble.myids();
    let leader = sys.ensemble.leader();
    let server = match leader {
        Some(l) if rng.below(2) == 0 => (l, "leader"),
        _ => (ids[rng.below(ids.len() as u64) as usize], "random server"),
    };
    Ok(match kind {
        NemesisKind::Kill => {
            sys.ensemble.kill(server.0)?;
            let v = json!({ "server": server.0, "target": server.1 });
            (
                v,
                Undo::Restart(server.0),
                format!("kill -9 server {} ({})", server.0, server.1),
            )
        }
        NemesisKind::Pause => {
            sys.ensemble.pause(server.0)?;
            let v = json!({ "server": server.0, "target": server.1 });
            (
                v,
                Undo::Resume(server.0),
                format!("pause server {} ({})", server.0, server.1),
            )
        }
        NemesisKind::Partition if rng.below(2) == 0 => {
            sys.isolate_server(server.0, LinkFaults::both(Mode::Drop));
            let v = json!({ "server": server.0, "target": server.1, "cut": "quorum" });
            (
                v,
                Undo::HealServer(server.0),
                format!(
                    "isolate server {} ({}) from the other servers",
                    server.0, server.1
                ),
            )
        }
        NemesisKind::Partition => {
            let controller = shared.controller.load(Ordering::SeqCst);
            let (w, target) = if c.workload == ZkWorkload::Election && controller > 0 {
                (controller as usize - 1, "controller")
            } else {
                (rng.below(c.concurrency as u64) as usize, "random client")
            };
            sys.isolate_worker(w, LinkFaults::both(Mode::Drop));
            let v = json!({ "worker": w, "broker": w + 1, "target": target, "cut": "client" });
            (
                v,
                Undo::HealWorker(w),
                format!("isolate client {w} ({target}) from every server"),
            )
        }
        NemesisKind::Clock => {
            let delta_ms = rng.below(2 * 3_600_000) as i64 - 3_600_000;
            let clock = sys
                .clocks
                .get(&server.0)
                .ok_or_else(|| anyhow::anyhow!("server {} has no fake clock", server.0))?;
            clock.set_offset_ms(delta_ms)?;
            let v = json!({ "server": server.0, "target": server.1, "offset-ms": delta_ms });
            (
                v,
                Undo::ResetClock(server.0),
                format!(
                    "server {} ({}) wall clock {delta_ms:+} ms",
                    server.0, server.1
                ),
            )
        }
        NemesisKind::LoseUnsynced => anyhow::bail!("lose-unsynced is not supported here"),
        k @ (NemesisKind::ZkKill
        | NemesisKind::ZkPartition
        | NemesisKind::Zombie
        | NemesisKind::ExpireSession
        | NemesisKind::ZombieFailover) => {
            anyhow::bail!("{} belongs to --metadata zookeeper runs", k.name())
        }
        NemesisKind::Reassign => {
            anyhow::bail!(
                "reassign needs a KRaft cluster of kcheck brokers (kcheck test --system kafka)"
            )
        }
        k @ (NemesisKind::Delay | NemesisKind::Loss) => {
            anyhow::bail!(
                "{} shapes the links between kcheck brokers (kcheck test --system kafka)",
                k.name()
            )
        }
        NemesisKind::Quorum => {
            anyhow::bail!(
                "quorum is aimed at a KRaft controller quorum of kcheck brokers (kcheck test --system kafka)"
            )
        }
    })
}

fn stop_fault(undo: &Undo, sys: &mut ZkSystem) -> anyhow::Result<()> {
    match *undo {
        Undo::Restart(id) => sys.ensemble.restart(id).map(|_| ()),
        Undo::Resume(id) => sys.ensemble.resume(id),
        Undo::HealServer(id) => {
            sys.isolate_server(id, LinkFaults::healed());
            Ok(())
        }
        Undo::HealWorker(w) => {
            sys.isolate_worker(w, LinkFaults::healed());
            Ok(())
        }
        Undo::ResetClock(id) => Ok(sys.clocks.get(&id).map_or(Ok(()), |c| c.reset())?),
    }
}

fn nemesis_loop(c: &ZkTestConfig, sys: &mut ZkSystem, shared: &Shared) -> Vec<String> {
    let mut rng = Rng::new(c.seed ^ 0x7a6b_6e65_6d65_7369);
    let end = shared.start + c.time_limit;
    let mut lines = Vec::new();
    let mut tick = 0u64;
    let mut in_force: Option<Fault> = None;
    let mut quiet_until = 1u64;
    loop {
        let wake = (Instant::now() + c.nemesis_interval).min(end);
        while Instant::now() < wake {
            std::thread::sleep(Duration::from_millis(20));
        }
        if Instant::now() >= end {
            break;
        }
        tick += 1;
        if in_force.as_ref().is_some_and(|f| f.until_tick <= tick) {
            let f = in_force.take().expect("checked");
            let r = stop_fault(&f.undo, sys);
            let e = r.err().map(|e| e.to_string());
            shared.nemesis(&format!("stop-{}", f.kind.name()), f.value, e.as_deref());
            quiet_until = tick + 1;
            continue;
        }
        if in_force.is_some() || c.nemeses.is_empty() || tick < quiet_until {
            continue;
        }
        let kind = c.nemeses[rng.below(c.nemeses.len() as u64) as usize];
        let f = format!("start-{}", kind.name());
        match start_fault(kind, &mut rng, sys, c, shared) {
            Ok((value, undo, line)) => {
                shared.nemesis(&f, value.clone(), None);
                lines.push(line);
                // A client cut off from the ensemble stays cut off for at least twice its
                // session timeout, so that its session expires while it lives on.
                let min_ticks = match undo {
                    Undo::HealWorker(_) => (2.0 * c.session_timeout.as_secs_f64()
                        / c.nemesis_interval.as_secs_f64())
                    .ceil() as u64,
                    _ => 1,
                };
                in_force = Some(Fault {
                    kind,
                    value,
                    undo,
                    until_tick: tick + (1 + rng.below(2)).max(min_ticks),
                });
            }
            Err(e) => {
                shared.nemesis(&f, json!({}), Some(&e.to_string()));
                lines.push(format!("{} FAILED: {e}", kind.name()));
            }
        }
    }
    if let Some(f) = in_force.take() {
        let r = stop_fault(&f.undo, sys);
        let e = r.err().map(|e| e.to_string());
        shared.nemesis(&format!("stop-{}", f.kind.name()), f.value, e.as_deref());
    }
    lines
}

/// Runs the test; writes `test.json`, `history.jsonl` and the servers' directories (configs,
/// logs) into a new folder under `store`.
pub fn run(c: &ZkTestConfig) -> Result<ZkRunOutcome, String> {
    validate(c)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let dir = c.store.join(format!(
        "zookeeper-{}-seed{}-{stamp}",
        c.workload.name(),
        c.seed
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::write(
        dir.join("test.json"),
        serde_json::to_string_pretty(c).expect("config serializes"),
    )
    .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("harness failure: tokio: {e}"))?;
    let mut sys = ZkSystem::start(c, &dir, &rt)
        .map_err(|e| format!("harness failure: starting the ensemble: {e}"))?;
    let direct = sys.ensemble.connect_string();
    rt.block_on(setup(&direct, c))
        .map_err(|e| format!("harness failure: creating the znodes: {e}"))?;

    let shared = Arc::new(Shared {
        start: Instant::now(),
        recorder: Mutex::new(Recorder::default()),
        stop: AtomicBool::new(false),
        controller: AtomicU64::new(0),
    });
    let workers: Vec<_> = (0..c.concurrency)
        .map(|w| {
            let (cs, c, shared) = (sys.worker_connect_string(w), c.clone(), shared.clone());
            rt.spawn(async move {
                match c.workload {
                    ZkWorkload::Register => register_worker(w, cs, c, shared).await,
                    ZkWorkload::Election => election_worker(w, cs, c, shared).await,
                }
            })
        })
        .collect();
    let faults = nemesis_loop(c, &mut sys, &shared);
    shared.stop.store(true, Ordering::SeqCst);
    rt.block_on(async {
        for w in workers {
            // Bounded: an op takes at most the request timeout (a connect a little more).
            let _ = tokio::time::timeout(c.client_timeout * 3, w).await;
        }
    });
    let healed = sys.heal();
    shared.nemesis(
        "heal",
        json!("all"),
        healed.as_ref().err().map(|e| e.to_string()).as_deref(),
    );
    healed.map_err(|e| format!("harness failure: healing: {e}"))?;
    sys.ensemble
        .wait_serving(Duration::from_secs(30))
        .map_err(|e| format!("harness failure: the healed ensemble does not serve: {e}"))?;
    rt.block_on(final_reads(&direct, c, &shared));
    sys.shutdown();
    drop(sys);
    rt.shutdown_timeout(Duration::from_secs(2));

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
    Ok(ZkRunOutcome {
        dir,
        history,
        faults,
    })
}

/// What the checkers found.
#[derive(Debug, Clone, Serialize)]
pub struct ZkResults {
    pub verdict: Verdict,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub register: Option<RegisterReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub election: Option<election::ElectionReport>,
}

/// Client operations by (f, completion type).
fn op_counts(h: &History) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for op in h
        .ops
        .iter()
        .filter(|o| o.is_client() && o.kind != OpType::Invoke)
    {
        *out.entry(format!("{} {}", op.f, op.kind.name()))
            .or_insert(0) += 1;
    }
    out
}

/// Runs the workload's checkers on a history.
pub fn check(h: &History, workload: ZkWorkload, time_limit: Duration) -> ZkResults {
    let counts = op_counts(h);
    let counts_line = counts
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    match workload {
        ZkWorkload::Register => {
            let r = register::check(h, time_limit);
            let bad = r
                .linearizable
                .iter()
                .find_map(|k| k.first_illegal.as_ref().map(|i| (k.key, i)));
            let summary = format!(
                "{}; synced reads {} ({} stale); plain reads {} ({} stale, up to {} versions \
                 behind; with plain reads the history is {}); session regressions {}{}; ops: {counts_line}",
                match r.verdict {
                    Verdict::Valid => "writes, cas and synced reads linearizable",
                    Verdict::Invalid => "NOT linearizable",
                    Verdict::Unknown => "linearizability unknown (time limit)",
                },
                r.synced_reads.reads,
                r.synced_reads.stale,
                r.plain_reads.reads,
                r.plain_reads.stale,
                r.plain_reads.max_versions_behind,
                match r.with_plain_reads {
                    Verdict::Valid => "linearizable",
                    Verdict::Invalid => "not linearizable",
                    Verdict::Unknown => "undecided",
                },
                r.session_regressions.len(),
                bad.map_or(String::new(), |(k, i)| format!(
                    "; key {k}: op {} {}",
                    i.invoke_index, i.explanation
                )),
            );
            ZkResults {
                verdict: r.verdict,
                summary,
                register: Some(r),
                election: None,
            }
        }
        ZkWorkload::Election => {
            let r = election::check(h);
            let zombie_acts: usize = r
                .zombie_windows
                .iter()
                .map(|w| w.acts_applied + w.acts_fenced + w.acts_unknown)
                .sum();
            let summary = format!(
                "{}; {} controller epochs won, {} session expiries of a controller, {} zombie \
                 windows ({} zombie acts: {} fenced, {} obeyed), acts {} applied / {} fenced / \
                 {} unknown{}; ops: {counts_line}",
                if r.violations.is_empty() {
                    "zk-controller invariants hold"
                } else {
                    "zk-controller invariant VIOLATED"
                },
                r.elections.len(),
                r.session_expiries,
                r.zombie_windows.len(),
                zombie_acts,
                r.zombie_windows
                    .iter()
                    .map(|w| w.acts_fenced)
                    .sum::<usize>(),
                r.zombie_windows
                    .iter()
                    .map(|w| w.acts_applied)
                    .sum::<usize>(),
                r.acts_applied,
                r.acts_fenced,
                r.acts_unknown,
                r.violations.first().map_or(String::new(), |v| format!(
                    "; {}: op {} {}",
                    v.invariant, v.invoke_index, v.explanation
                )),
            );
            ZkResults {
                verdict: r.verdict,
                summary,
                register: None,
                election: Some(r),
            }
        }
    }
}

/// `kcheck test --system zookeeper`: parse, run, check, print; exit 0 valid, 1 violation,
/// 2 unknown or harness failure.
pub fn run_cli(m: &clap::ArgMatches) -> u8 {
    const EXIT_UNKNOWN: u8 = 2;
    let parsed = (|| -> Result<ZkTestConfig, String> {
        let workload = match m.value_source("workload") {
            Some(clap::parser::ValueSource::DefaultValue) | None => ZkWorkload::Register,
            _ => ZkWorkload::parse(m.get_one::<String>("workload").expect("defaulted"))?,
        };
        let mut c = ZkTestConfig::new(
            workload,
            m.get_one::<PathBuf>("store").expect("defaulted").clone(),
        );
        if m.value_source("nemesis") == Some(clap::parser::ValueSource::CommandLine) {
            c.nemeses = NemesisKind::parse_list(m.get_one::<String>("nemesis").expect("given"))?;
        }
        c.time_limit = crate::test_cli::secs(m, "time-limit")?;
        c.rate = *m.get_one("rate").expect("defaulted");
        c.concurrency = *m.get_one("concurrency").expect("defaulted");
        c.seed = *m.get_one("seed").expect("defaulted");
        if m.value_source("nemesis-interval") == Some(clap::parser::ValueSource::CommandLine) {
            c.nemesis_interval = crate::test_cli::secs(m, "nemesis-interval")?;
        }
        c.bugs = m
            .get_many::<String>("bug")
            .into_iter()
            .flatten()
            .map(|b| ElectionBug::parse(b))
            .collect::<Result<_, _>>()?;
        if m.value_source("brokers") == Some(clap::parser::ValueSource::CommandLine)
            || m.value_source("controllers") == Some(clap::parser::ValueSource::CommandLine)
        {
            return Err(
                "--brokers and --controllers are for --system kafka; a ZooKeeper run \
                        starts three servers"
                    .into(),
            );
        }
        Ok(c)
    })();
    let c = match parsed {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kcheck test: bad arguments: {e}");
            return EXIT_UNKNOWN;
        }
    };
    let outcome = match run(&c) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("kcheck test: UNKNOWN: {e}");
            return EXIT_UNKNOWN;
        }
    };
    println!("run folder: {}", outcome.dir.display());
    println!("faults injected: {}", outcome.faults.len());
    for f in &outcome.faults {
        println!("  {f}");
    }
    let results = check(&outcome.history, c.workload, Duration::from_secs(60));
    if let Err(e) = std::fs::write(
        outcome.dir.join("results.json"),
        serde_json::to_string_pretty(&results).expect("results serialize"),
    ) {
        eprintln!("kcheck test: UNKNOWN: harness failure: writing results.json: {e}");
        return EXIT_UNKNOWN;
    }
    let line = match results.verdict {
        Verdict::Valid => "VALID: no anomaly found",
        Verdict::Invalid => "INVALID: an anomaly was found",
        Verdict::Unknown => "UNKNOWN: the checkers could not decide",
    };
    println!("kcheck test: {line}: {}", results.summary);
    results.verdict.exit_code()
}
