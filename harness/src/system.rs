//! The system under test as real OS processes the nemesis can kill, pause and restart.
//!
//! A node is a `kcheck broker` process (later also controllers and ZooKeeper servers) with its
//! own data directory, optionally on a [`LazyFsMount`] (so a crash can lose exactly what it had
//! not fsynced) and optionally started under libfaketime (so its wall clock can be moved).
//! A node keeps its listen address across restarts, so clients reconnect to the same place.

use crate::lazyfs::{LazyFsMount, LossReport};
use crate::nemesis::clock::FakeClock;
use crate::nemesis::grudge::Grudge;
use crate::nemesis::netns::NetnsNetwork;
use crate::nemesis::proxynet::{Link, ProxyNetwork};
use crate::proxy::LinkFaults;
use crate::zookeeper::metadata_ensemble::MetadataEnsemble;
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub type NodeId = i32;

/// How to start one node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: NodeId,
    pub program: PathBuf,
    /// Every argument, including the node's fixed listen addresses and `data_dir`.
    pub args: Vec<String>,
    /// Where the node keeps its data (mounted on LazyFs when asked for).
    pub data_dir: PathBuf,
    /// The address clients use, for brokers.
    pub client_addr: Option<String>,
}

/// A port for a node, chosen before its first start and kept across restarts (outside the
/// ephemeral range: see [`kcheck_reference::cluster::free_port`]).
pub fn free_port() -> io::Result<u16> {
    kcheck_reference::cluster::free_port()
}

struct Node {
    spec: NodeSpec,
    /// Where the node writes (the LazyFs mount point when there is one).
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
    lazyfs: Option<LazyFsMount>,
    clock: Option<FakeClock>,
}

/// A set of node processes.
pub struct ProcessSystem {
    nodes: BTreeMap<NodeId, Node>,
    /// When the run partitions the network: one namespace per node, each node started inside
    /// its own. Declared after `nodes` so the namespaces outlive the processes on drop.
    network: Option<NetnsNetwork>,
    /// Without namespaces: one proxy per directed link between nodes (the nodes were started
    /// with `--peer-address` naming them), stopped when the system is dropped.
    pub proxies: Option<ProxyNetwork>,
    /// ZooKeeper mode: the ensemble the brokers keep their metadata in (healed and stopped with
    /// the brokers, after them).
    pub zookeeper: Option<MetadataEnsemble>,
}

/// What a node (broker or controller) prints once it accepts connections.
const LISTENING: &str = " listening on ";

impl ProcessSystem {
    /// Prepares the nodes in `run_dir` (one folder each) and starts them. `lazy` puts each data
    /// directory on LazyFs, `clocks` starts each node under libfaketime, `network` (whose node
    /// ids are the specs') starts each node in its own network namespace, where its addresses
    /// in the specs must live.
    pub fn start(
        run_dir: &Path,
        specs: Vec<NodeSpec>,
        lazy: bool,
        clocks: bool,
        network: Option<NetnsNetwork>,
    ) -> io::Result<ProcessSystem> {
        let mut system = ProcessSystem {
            nodes: BTreeMap::new(),
            network,
            proxies: None,
            zookeeper: None,
        };
        for spec in specs {
            let dir = run_dir.join(format!("n{}", spec.id));
            fs::create_dir_all(&dir)?;
            fs::create_dir_all(&spec.data_dir)?;
            let lazyfs = if lazy {
                let backing = dir.join("data.backing");
                fs::create_dir_all(&backing)?;
                Some(LazyFsMount::mount(&backing, &spec.data_dir)?)
            } else {
                None
            };
            let clock = if clocks {
                Some(FakeClock::new(&dir, spec.id)?)
            } else {
                None
            };
            let id = spec.id;
            system.nodes.insert(
                id,
                Node {
                    spec,
                    log: dir.join("node.log"),
                    child: None,
                    paused: false,
                    lazyfs,
                    clock,
                },
            );
            system.restart(id)?;
        }
        Ok(system)
    }

    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// Broker nodes (those clients talk to), in id order.
    pub fn broker_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.spec.client_addr.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// KRaft controller nodes, in id order.
    pub fn controller_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.spec.client_addr.is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The quorum address a controller listens on (its `--controller-listen` argument).
    pub fn controller_addr(&self, id: NodeId) -> Option<String> {
        let args = &self.nodes.get(&id)?.spec.args;
        let i = args.iter().position(|a| a == "--controller-listen")?;
        args.get(i + 1).cloned()
    }

    /// Every broker's client address, comma-separated.
    pub fn bootstrap(&self) -> String {
        let addrs: Vec<&str> = self
            .nodes
            .values()
            .filter_map(|n| n.spec.client_addr.as_deref())
            .collect();
        addrs.join(",")
    }

    pub fn is_running(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.child.is_some())
    }

    fn node(&mut self, id: NodeId) -> io::Result<&mut Node> {
        self.nodes
            .get_mut(&id)
            .ok_or_else(|| io::Error::other(format!("no node {id}")))
    }

    /// Starts a node that is not running and waits until it listens (30 s at most).
    pub fn restart(&mut self, id: NodeId) -> io::Result<()> {
        let node = self.node(id)?;
        if node.child.is_some() {
            return Ok(());
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let mut cmd = Command::new(&node.spec.program);
        cmd.args(&node.spec.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        if let Some(clock) = &node.clock {
            cmd.envs(clock.env());
        }
        // Opened here, entered in the child between fork and exec: the node's sockets live in
        // its namespace, and the pid we signal is the node's own (no `ip netns exec` between).
        let namespace = match self.network.as_ref().and_then(|n| n.node(id)) {
            Some(n) => Some(fs::File::open(format!("/var/run/netns/{}", n.namespace))?),
            None => None,
        };
        let fd = namespace.as_ref().map(|ns| {
            use std::os::fd::AsRawFd;
            ns.as_raw_fd()
        });
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl and setns are async-signal-safe; the fd stays open until spawn
            // returns. PR_SET_PDEATHSIG: a node dies with the harness (a killed run leaves no
            // broker behind).
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    if let Some(fd) = fd {
                        if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let spawned = cmd.spawn();
        drop(namespace);
        self.after_spawn(id, spawned?)
    }

    /// Waits until a just-spawned node listens (30 s at most), then keeps it.
    fn after_spawn(&mut self, id: NodeId, mut child: Child) -> io::Result<()> {
        let node = self.node(id)?;
        let stdout = child.stdout.take().expect("piped");
        let mut reader = BufReader::new(stdout);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).unwrap_or(0);
            if n == 0 || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let tail = fs::read_to_string(&node.log).unwrap_or_default();
                let tail: String = tail.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                return Err(io::Error::other(format!(
                    "node {id} exited or hung before listening: {tail}"
                )));
            }
            if line.contains(LISTENING) {
                break;
            }
        }
        // Keep draining stdout so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// Nodes whose process ended although the harness did not stop it (a crash, an assertion,
    /// a fatal error), each with how it ended. Reaped: the node counts as not running, so a
    /// heal restarts it. A node the nemesis kills or stops is reaped by [`Self::kill`] /
    /// [`Self::terminate`] themselves and never shows up here.
    pub fn reap_exited(&mut self) -> Vec<(NodeId, String)> {
        let mut out = Vec::new();
        for (id, node) in self.nodes.iter_mut() {
            let Some(child) = node.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                node.child = None;
                node.paused = false;
                out.push((*id, exit_description(status)));
            }
        }
        out
    }

    /// Each node's log file (`nN/node.log` in the run folder), in id order.
    pub fn logs(&self) -> Vec<(NodeId, PathBuf)> {
        self.nodes
            .iter()
            .map(|(id, n)| (*id, n.log.clone()))
            .collect()
    }

    /// SIGKILL: the process dies at once, the kernel keeps what it wrote (see `lose_unsynced`).
    pub fn kill(&mut self, id: NodeId) -> io::Result<()> {
        let node = self.node(id)?;
        if let Some(mut child) = node.child.take() {
            child.kill()?;
            child.wait()?;
        }
        node.paused = false;
        Ok(())
    }

    /// SIGTERM (a broker's controlled shutdown: it flushes and checkpoints), then SIGKILL if
    /// it is still running after `grace`. Returns whether it exited on its own.
    pub fn terminate(&mut self, id: NodeId, grace: Duration) -> io::Result<bool> {
        let node = self.node(id)?;
        let Some(mut child) = node.child.take() else {
            return Ok(true);
        };
        // SAFETY: the pid is our own child's, which has not been reaped (SIGCONT first, so a
        // paused node handles the SIGTERM).
        unsafe {
            libc::kill(child.id() as i32, libc::SIGCONT);
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        node.paused = false;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill()?;
        child.wait()?;
        Ok(false)
    }

    /// After [`Self::kill`]: roll the node's files back to what it had fsynced.
    pub fn lose_unsynced(&mut self, id: NodeId) -> io::Result<LossReport> {
        let node = self.node(id)?;
        if node.child.is_some() {
            return Err(io::Error::other(format!(
                "node {id} is running: kill it before losing its unsynced writes"
            )));
        }
        match &node.lazyfs {
            Some(fs) => fs.lose_unsynced(),
            None => Err(io::Error::other(format!("node {id} is not on LazyFs"))),
        }
    }

    fn signal(&mut self, id: NodeId, signal: i32) -> io::Result<bool> {
        let node = self.node(id)?;
        let Some(child) = &node.child else {
            return Ok(false);
        };
        // SAFETY: the pid is our own child's, which has not been reaped.
        if unsafe { libc::kill(child.id() as i32, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(true)
    }

    /// SIGSTOP (a GC pause, a VM stall): the node holds its sockets but answers nothing.
    pub fn pause(&mut self, id: NodeId) -> io::Result<()> {
        if self.signal(id, libc::SIGSTOP)? {
            self.node(id)?.paused = true;
        }
        Ok(())
    }

    /// SIGUSR1: a ZooKeeper-mode broker's test-only trigger to send its last controller
    /// requests again (`ZkNode::resend_last`); pending while the node is paused, run on SIGCONT.
    pub fn resend_controller_requests(&mut self, id: NodeId) -> io::Result<()> {
        self.signal(id, libc::SIGUSR1).map(|_| ())
    }

    pub fn resume(&mut self, id: NodeId) -> io::Result<()> {
        if self.signal(id, libc::SIGCONT)? {
            self.node(id)?.paused = false;
        }
        Ok(())
    }

    /// Whether nodes run in network namespaces or behind proxies, so [`Self::partition`] can
    /// cut links.
    pub fn can_partition(&self) -> bool {
        self.network.is_some() || self.proxies.is_some()
    }

    /// The address a node listens on inside its namespace, or 127.0.0.1 without namespaces.
    pub fn host(&self, id: NodeId) -> String {
        self.network
            .as_ref()
            .and_then(|n| n.addr(id))
            .map_or_else(|| "127.0.0.1".to_string(), |a| a.to_string())
    }

    /// Makes `grudge` the network's partition (replacing any previous one); the harness's own
    /// connections to the nodes are never cut.
    pub fn partition(&mut self, grudge: &Grudge) -> io::Result<()> {
        if let Some(p) = &mut self.proxies {
            return p.apply(grudge);
        }
        match &self.network {
            Some(n) => n.apply(grudge),
            None => Err(io::Error::other(
                "the nodes run neither in network namespaces nor behind proxies: cannot partition",
            )),
        }
    }

    /// Adds the link-shaping fault `kind` (delay, loss) on `links`; proxies only.
    pub fn shape(&mut self, kind: &str, links: BTreeMap<Link, LinkFaults>) -> io::Result<()> {
        match &mut self.proxies {
            Some(p) => {
                p.shape(kind, links);
                Ok(())
            }
            None => Err(io::Error::other(format!(
                "{kind} needs the nodes behind proxies (--net proxy)"
            ))),
        }
    }

    /// Ends the link-shaping fault `kind`.
    pub fn unshape(&mut self, kind: &str) {
        if let Some(p) = &mut self.proxies {
            p.unshape(kind);
        }
    }

    pub fn clock(&self, id: NodeId) -> Option<&FakeClock> {
        self.nodes.get(&id).and_then(|n| n.clock.as_ref())
    }

    /// Undo every fault: reconnect the network, resume paused nodes, restart dead ones, reset
    /// clocks.
    pub fn heal(&mut self) -> io::Result<()> {
        if let Some(n) = &self.network {
            n.heal()?;
        }
        if let Some(p) = &mut self.proxies {
            p.heal()?;
        }
        if let Some(zk) = &mut self.zookeeper {
            zk.heal().map_err(io::Error::other)?;
        }
        for id in self.node_ids() {
            self.resume(id)?;
            self.restart(id)?;
            if let Some(c) = self.clock(id) {
                c.reset()?;
            }
        }
        Ok(())
    }

    /// Stops every node (SIGCONT first so SIGKILL is delivered to paused ones) and unmounts.
    pub fn shutdown(&mut self) {
        for id in self.node_ids() {
            let _ = self.resume(id);
            let _ = self.kill(id);
        }
        for node in self.nodes.values_mut() {
            if let Some(fs) = node.lazyfs.take() {
                let _ = fs.unmount();
            }
        }
        if let Some(zk) = &mut self.zookeeper {
            zk.shutdown();
        }
        if let Some(p) = &mut self.proxies {
            p.shutdown();
        }
    }
}

impl Drop for ProcessSystem {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `exit code 3`, `signal 6 (SIGABRT)`: how a process ended.
fn exit_description(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => {
            let name = match s {
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGBUS => " (SIGBUS)",
                _ => "",
            };
            format!("signal {s}{name}")
        }
        (None, None) => "ended".to_string(),
    }
}
