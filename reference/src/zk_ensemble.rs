//! A real Apache ZooKeeper ensemble on 127.0.0.1, for tests, `kcheck test --system zookeeper`
//! and ZooKeeper-mode clusters.
//!
//! Each server gets its own directory with a generated `zoo.cfg`, `myid`, log4j configuration
//! and log, its own client, quorum and election ports, and is started as
//! `java -cp ... org.apache.zookeeper.server.quorum.QuorumPeerMain zoo.cfg` directly: the
//! packaged service scripts share one log directory and one pid file per machine, which a
//! second server on the same host would overwrite.
//!
//! The timeouts are small so that failovers happen within a test, but not so small that a
//! loaded two-core machine (JVMs taking seconds to start, threads starved for hundreds of
//! milliseconds) breaks a healthy quorum: `tickTime` 300 ms makes the sessions ZooKeeper
//! grants 0.6 s to 6 s (2 to 20 ticks, its defaults for the minimum and maximum session
//! timeout); a follower that hears nothing from its leader for `syncLimit` ticks (3 s) gives up
//! and rejoins Fast Leader Election; a follower has `initLimit` ticks (9 s) to connect and sync
//! to a new leader.
//!
//! Network faults between servers need somewhere to cut: [`ZkEnsemble::route_peer`] makes one
//! server reach another through a different port (a fault-injecting proxy), in that server's
//! configuration only. ZooKeeper dials peers at the addresses its own configuration lists and
//! announces its own, so per-server configurations that differ only in the peers' ports form
//! one ensemble.
//!
//! Every process started here is killed when the [`ZkEnsemble`] is dropped.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The class the packaged `zkServer.sh` runs for a replicated server.
pub const MAIN_CLASS: &str = "org.apache.zookeeper.server.quorum.QuorumPeerMain";

/// Where Debian's `zookeeper` package installs the server jar; its manifest names the
/// libraries it needs, except an SLF4J binding, which [`LOG_JARS`] adds.
pub const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";

/// SLF4J's log4j 1.2 binding and log4j itself (Debian's zookeeper depends on both): without
/// them ZooKeeper 3.8 logs nothing at all.
pub const LOG_JARS: [&str; 2] = [
    "/usr/share/java/slf4j-log4j12.jar",
    "/usr/share/java/log4j-1.2.jar",
];

/// The four-letter-word commands the servers answer (`srvr` tells leader from follower).
pub const FOUR_LETTER_WORDS: &str = "srvr,mntr,ruok";

/// Whether an ensemble can be started here, and if not, what to install.
pub fn available(java: &Path) -> Result<(), String> {
    for jar in std::iter::once(ZOOKEEPER_JAR).chain(LOG_JARS) {
        if !Path::new(jar).exists() {
            return Err(format!(
                "{jar} is missing: install Apache ZooKeeper with \
                 `DEBIAN_FRONTEND=noninteractive apt-get install -y zookeeper`"
            ));
        }
    }
    if !java.exists() {
        return Err(format!(
            "no Java runtime at {} (Debian: apt-get install -y default-jre-headless)",
            java.display()
        ));
    }
    Ok(())
}

/// The class path for [`MAIN_CLASS`].
pub fn classpath() -> String {
    std::iter::once(ZOOKEEPER_JAR)
        .chain(LOG_JARS)
        .collect::<Vec<_>>()
        .join(":")
}

/// What to start.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ZkEnsembleSpec {
    /// Number of servers (myids 1..=servers). 3 or 5 make a fault-tolerant ensemble.
    pub servers: usize,
    /// Parent of the servers' directories (`zk-1`, `zk-2`, ...).
    pub dir: PathBuf,
    pub tick_time_ms: u32,
    /// Ticks a follower may take to connect and sync to a new leader.
    pub init_limit: u32,
    /// Ticks a follower may lag behind its leader before it is dropped.
    pub sync_limit: u32,
    pub java: PathBuf,
    /// JVM heap per server.
    pub heap_mb: u32,
    /// How long [`ZkEnsemble::start`] waits for a quorum to serve.
    pub ready_timeout: Duration,
}

impl ZkEnsembleSpec {
    /// `servers` servers under `dir` with the small test timeouts of the module doc.
    pub fn new(servers: usize, dir: &Path) -> ZkEnsembleSpec {
        ZkEnsembleSpec {
            servers,
            dir: dir.to_path_buf(),
            tick_time_ms: 300,
            init_limit: 30,
            sync_limit: 10,
            java: PathBuf::from("/usr/bin/java"),
            heap_mb: 128,
            ready_timeout: Duration::from_secs(120),
        }
    }
}

/// One server: enough to (re)start it identically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZkServer {
    /// ZooKeeper's server id (`myid`, `server.N`).
    pub myid: u32,
    pub client_port: u16,
    /// Where followers connect to this server when it leads.
    pub quorum_port: u16,
    /// Fast Leader Election connections.
    pub election_port: u16,
    pub dir: PathBuf,
    /// 0 when not running.
    pub pid: u32,
    /// Extra environment (libfaketime for clock faults).
    pub env: Vec<(String, String)>,
    /// Peer myid → (quorum port, election port) this server dials instead of the peer's own.
    pub peer_routes: BTreeMap<u32, (u16, u16)>,
}

impl ZkServer {
    pub fn client_addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
    pub fn config_file(&self) -> PathBuf {
        self.dir.join("zoo.cfg")
    }
    /// log4j's output (ZooKeeper's own log).
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("zookeeper.log")
    }
    /// The JVM's stdout and stderr.
    pub fn console_file(&self) -> PathBuf {
        self.dir.join("console.log")
    }
}

/// What a server says it is (`srvr`'s `Mode:` line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZkMode {
    Leader,
    Follower,
    Observer,
    Standalone,
    /// Running but in leader election, or not answering (stopped, paused, killed).
    NotServing,
}

impl ZkMode {
    /// Whether the server is part of a quorum that serves clients.
    pub fn serving(self) -> bool {
        matches!(self, ZkMode::Leader | ZkMode::Follower | ZkMode::Standalone)
    }
}

/// A running (or stopped) ensemble; kills its processes when dropped.
pub struct ZkEnsemble {
    spec: ZkEnsembleSpec,
    servers: Vec<ZkServer>,
    children: BTreeMap<u32, Child>,
}

fn free_port() -> std::io::Result<u16> {
    crate::cluster::free_port()
}

impl ZkEnsemble {
    /// Allocates ports and writes each server's directory and `myid`; starts nothing (routes and
    /// environments may be set before [`ZkEnsemble::start`]).
    pub fn new(spec: ZkEnsembleSpec) -> anyhow::Result<ZkEnsemble> {
        anyhow::ensure!(
            (1..=9).contains(&spec.servers),
            "a ZooKeeper ensemble here has 1 to 9 servers, not {}",
            spec.servers
        );
        available(&spec.java).map_err(|e| anyhow::anyhow!(e))?;
        let mut taken = std::collections::BTreeSet::new();
        let mut port = || -> std::io::Result<u16> {
            // Three ports per server are asked for before any is bound: skip repeats.
            for _ in 0..100 {
                let p = free_port()?;
                if taken.insert(p) {
                    return Ok(p);
                }
            }
            Err(std::io::Error::other(
                "no distinct free port after 100 tries",
            ))
        };
        let mut servers = Vec::new();
        for myid in 1..=spec.servers as u32 {
            let dir = spec.dir.join(format!("zk-{myid}"));
            fs::create_dir_all(dir.join("data")).map_err(|e| {
                anyhow::anyhow!("cannot create {}: {e}", dir.join("data").display())
            })?;
            fs::write(dir.join("data").join("myid"), format!("{myid}\n"))?;
            servers.push(ZkServer {
                myid,
                client_port: port()?,
                quorum_port: port()?,
                election_port: port()?,
                dir,
                pid: 0,
                env: Vec::new(),
                peer_routes: BTreeMap::new(),
            });
        }
        Ok(ZkEnsemble {
            spec,
            servers,
            children: BTreeMap::new(),
        })
    }

    /// [`ZkEnsemble::new`] then [`ZkEnsemble::start`].
    pub fn launch(spec: ZkEnsembleSpec) -> anyhow::Result<ZkEnsemble> {
        let mut e = ZkEnsemble::new(spec)?;
        e.start()?;
        Ok(e)
    }

    pub fn spec(&self) -> &ZkEnsembleSpec {
        &self.spec
    }

    pub fn servers(&self) -> &[ZkServer] {
        &self.servers
    }

    pub fn myids(&self) -> Vec<u32> {
        self.servers.iter().map(|s| s.myid).collect()
    }

    pub fn server(&self, myid: u32) -> anyhow::Result<&ZkServer> {
        self.servers.iter().find(|s| s.myid == myid).ok_or_else(|| {
            anyhow::anyhow!("no ZooKeeper server {myid} (myids: {:?})", self.myids())
        })
    }

    fn server_mut(&mut self, myid: u32) -> anyhow::Result<&mut ZkServer> {
        let ids = self.myids();
        self.servers
            .iter_mut()
            .find(|s| s.myid == myid)
            .ok_or_else(|| anyhow::anyhow!("no ZooKeeper server {myid} (myids: {ids:?})"))
    }

    /// `host:port,host:port,...` of every server's client port, as clients take it.
    pub fn connect_string(&self) -> String {
        self.servers
            .iter()
            .map(ZkServer::client_addr)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Makes `from` reach `to`'s quorum and election ports at these ports of 127.0.0.1
    /// (proxies); takes effect when `from` (re)starts.
    pub fn route_peer(
        &mut self,
        from: u32,
        to: u32,
        quorum_port: u16,
        election_port: u16,
    ) -> anyhow::Result<()> {
        self.server(to)?;
        anyhow::ensure!(from != to, "a server does not dial itself");
        self.server_mut(from)?
            .peer_routes
            .insert(to, (quorum_port, election_port));
        Ok(())
    }

    /// Extra environment for `myid`'s process; takes effect when it (re)starts.
    pub fn set_env(&mut self, myid: u32, env: Vec<(String, String)>) -> anyhow::Result<()> {
        self.server_mut(myid)?.env = env;
        Ok(())
    }

    /// The `zoo.cfg` of one server.
    pub fn config_text(&self, myid: u32) -> anyhow::Result<String> {
        let me = self.server(myid)?;
        let s = &self.spec;
        let mut cfg = format!(
            "# generated by kcheck for server {myid}\n\
             tickTime={}\ninitLimit={}\nsyncLimit={}\n\
             dataDir={}\n\
             clientPort={}\nclientPortAddress=127.0.0.1\n\
             4lw.commands.whitelist={FOUR_LETTER_WORDS}\n\
             admin.enableServer=false\n\
             maxClientCnxns=0\n",
            s.tick_time_ms,
            s.init_limit,
            s.sync_limit,
            me.dir.join("data").display(),
            me.client_port,
        );
        for peer in &self.servers {
            let (q, e) = me
                .peer_routes
                .get(&peer.myid)
                .copied()
                .unwrap_or((peer.quorum_port, peer.election_port));
            cfg.push_str(&format!("server.{}=127.0.0.1:{q}:{e}\n", peer.myid));
        }
        Ok(cfg)
    }

    fn write_files(&self, myid: u32) -> anyhow::Result<()> {
        let me = self.server(myid)?;
        fs::write(me.config_file(), self.config_text(myid)?)?;
        let log4j = format!(
            "# generated by kcheck: this server's own log file\n\
             log4j.rootLogger=INFO, FILE\n\
             log4j.appender.FILE=org.apache.log4j.FileAppender\n\
             log4j.appender.FILE.File={}\n\
             log4j.appender.FILE.Append=true\n\
             log4j.appender.FILE.layout=org.apache.log4j.PatternLayout\n\
             log4j.appender.FILE.layout.ConversionPattern=%d{{ISO8601}} %-5p [%t] %c{{1}} - %m%n\n",
            me.log_file().display()
        );
        fs::write(me.dir.join("log4j.properties"), log4j)?;
        Ok(())
    }

    /// Starts every server that is not running and waits until a quorum serves.
    pub fn start(&mut self) -> anyhow::Result<()> {
        for myid in self.myids() {
            if !self.is_running(myid) {
                self.spawn(myid)?;
            }
        }
        self.wait_serving(self.spec.ready_timeout).map(|_| ())
    }

    fn spawn(&mut self, myid: u32) -> anyhow::Result<u32> {
        use std::os::unix::process::CommandExt;
        self.write_files(myid)?;
        let me = self.server(myid)?.clone();
        let console = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(me.console_file())?;
        let mut cmd = Command::new(&self.spec.java);
        cmd.arg(format!("-Xmx{}m", self.spec.heap_mb))
            // Small, quick-starting JVMs: the machines running tests have few cores.
            .arg("-XX:+UseSerialGC")
            .arg("-XX:TieredStopAtLevel=1")
            .arg(format!(
                "-Dlog4j.configuration=file:{}",
                me.dir.join("log4j.properties").display()
            ))
            .arg("-cp")
            .arg(classpath())
            .arg(MAIN_CLASS)
            .arg(me.config_file())
            .envs(me.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console);
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent. Its own
        // session keeps a terminal's Ctrl-C away from the servers (they are killed on drop).
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", self.spec.java.display()))?;
        let pid = child.id();
        self.children.insert(myid, child);
        self.server_mut(myid)?.pid = pid;
        Ok(pid)
    }

    /// Whether `myid`'s process is alive (paused counts as alive).
    pub fn is_running(&mut self, myid: u32) -> bool {
        match self.children.get_mut(&myid) {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn signal(&self, myid: u32, sig: i32) -> anyhow::Result<()> {
        let pid = self.server(myid)?.pid;
        anyhow::ensure!(pid > 0, "ZooKeeper server {myid} is not running");
        // SAFETY: kill(2) on a process this ensemble started and has not reaped.
        let r = unsafe { libc::kill(pid as i32, sig) };
        anyhow::ensure!(
            r == 0,
            "signal {sig} to ZooKeeper server {myid} (pid {pid}) failed: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// `kill -9`: the server stops at once (what it fsynced to its transaction log survives).
    pub fn kill(&mut self, myid: u32) -> anyhow::Result<()> {
        self.signal(myid, libc::SIGKILL)?;
        if let Some(mut c) = self.children.remove(&myid) {
            let _ = c.wait();
        }
        self.server_mut(myid)?.pid = 0;
        Ok(())
    }

    /// SIGSTOP: the JVM freezes (a long GC pause); its sessions and peers time out.
    pub fn pause(&self, myid: u32) -> anyhow::Result<()> {
        self.signal(myid, libc::SIGSTOP)
    }

    pub fn resume(&self, myid: u32) -> anyhow::Result<()> {
        self.signal(myid, libc::SIGCONT)
    }

    /// Starts a stopped or killed server again with its configuration (routes, environment);
    /// does not wait for it to rejoin.
    pub fn restart(&mut self, myid: u32) -> anyhow::Result<u32> {
        anyhow::ensure!(
            !self.is_running(myid),
            "ZooKeeper server {myid} is still running (pid {}); kill or stop it first",
            self.server(myid)?.pid
        );
        self.spawn(myid)
    }

    /// SIGTERM (a clean shutdown), then SIGKILL after `grace`.
    pub fn stop(&mut self, myid: u32, grace: Duration) -> anyhow::Result<()> {
        if !self.is_running(myid) {
            return Ok(());
        }
        let _ = self.signal(myid, libc::SIGCONT);
        self.signal(myid, libc::SIGTERM)?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && self.is_running(myid) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.is_running(myid) {
            self.kill(myid)?;
        }
        self.children.remove(&myid);
        self.server_mut(myid)?.pid = 0;
        Ok(())
    }

    /// Stops every server (SIGTERM, then SIGKILL after `grace`).
    pub fn stop_all(&mut self, grace: Duration) {
        for myid in self.myids() {
            if self.is_running(myid) {
                let _ = self.signal(myid, libc::SIGCONT);
                let _ = self.signal(myid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && self.myids().into_iter().any(|m| self.is_running(m)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        for myid in self.myids() {
            if self.is_running(myid) {
                let _ = self.kill(myid);
            }
            self.children.remove(&myid);
            if let Ok(s) = self.server_mut(myid) {
                s.pid = 0;
            }
        }
    }

    /// What `myid` says it is; [`ZkMode::NotServing`] when it does not answer within 2 s.
    pub fn mode(&self, myid: u32) -> ZkMode {
        match self.server(myid) {
            Ok(s) => four_letter_word(s.client_port, "srvr", Duration::from_secs(2))
                .map(|text| parse_mode(&text))
                .unwrap_or(ZkMode::NotServing),
            Err(_) => ZkMode::NotServing,
        }
    }

    /// Every server's mode.
    pub fn modes(&self) -> BTreeMap<u32, ZkMode> {
        self.myids()
            .into_iter()
            .map(|m| (m, self.mode(m)))
            .collect()
    }

    /// The server that says it leads, if exactly one does while a majority serves.
    pub fn leader(&self) -> Option<u32> {
        quorum_leader(&self.modes(), self.servers.len())
    }

    /// Waits until a quorum serves (a leader and a majority of servers leading or following);
    /// returns the leader.
    pub fn wait_serving(&self, timeout: Duration) -> anyhow::Result<u32> {
        self.wait_leader(timeout, |_| true)
    }

    /// Waits until a quorum serves under a leader other than `old` (after killing `old`).
    pub fn wait_new_leader(&self, old: u32, timeout: Duration) -> anyhow::Result<u32> {
        self.wait_leader(timeout, |l| l != old)
    }

    fn wait_leader(&self, timeout: Duration, accept: impl Fn(u32) -> bool) -> anyhow::Result<u32> {
        let deadline = Instant::now() + timeout;
        let mut last = BTreeMap::new();
        while Instant::now() < deadline {
            last = self.modes();
            if let Some(l) = quorum_leader(&last, self.servers.len()).filter(|&l| accept(l)) {
                return Ok(l);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!(
            "no ZooKeeper quorum served within {:.1} s (modes: {last:?}); see the servers' \
             zookeeper.log and console.log under {}",
            timeout.as_secs_f64(),
            self.spec.dir.display()
        )
    }
}

impl Drop for ZkEnsemble {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.children) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The leader when exactly one server leads and a majority of `servers` lead or follow.
pub fn quorum_leader(modes: &BTreeMap<u32, ZkMode>, servers: usize) -> Option<u32> {
    let leaders: Vec<u32> = modes
        .iter()
        .filter(|(_, m)| matches!(m, ZkMode::Leader | ZkMode::Standalone))
        .map(|(id, _)| *id)
        .collect();
    let serving = modes.values().filter(|m| m.serving()).count();
    (leaders.len() == 1 && serving > servers / 2).then(|| leaders[0])
}

/// The `Mode:` of a `srvr` answer. A server in leader election answers "This ZooKeeper
/// instance is not currently serving requests".
pub fn parse_mode(srvr: &str) -> ZkMode {
    let mode = srvr
        .lines()
        .find_map(|l| l.strip_prefix("Mode:"))
        .map(str::trim);
    match mode {
        Some("leader") => ZkMode::Leader,
        Some("follower") => ZkMode::Follower,
        Some("observer") => ZkMode::Observer,
        Some("standalone") => ZkMode::Standalone,
        _ => ZkMode::NotServing,
    }
}

/// Sends a four-letter word to a client port and reads the answer (the server closes).
pub fn four_letter_word(port: u16, word: &str, timeout: Duration) -> std::io::Result<String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(word.as_bytes())?;
    let mut out = String::new();
    // Bounded: the answer is a few hundred bytes; stop at 64 KiB whatever happens.
    s.take(64 * 1024).read_to_string(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_from_srvr_answers() {
        assert_eq!(
            parse_mode("Zxid: 0x0\nMode: leader\nNode count: 5\n"),
            ZkMode::Leader
        );
        assert_eq!(parse_mode("Mode: follower\n"), ZkMode::Follower);
        assert_eq!(
            parse_mode("This ZooKeeper instance is not currently serving requests\n"),
            ZkMode::NotServing
        );
    }

    #[test]
    fn a_leader_needs_a_serving_majority() {
        let m = |v: &[(u32, ZkMode)]| v.iter().copied().collect::<BTreeMap<_, _>>();
        use ZkMode::*;
        assert_eq!(
            quorum_leader(&m(&[(1, Leader), (2, Follower), (3, NotServing)]), 3),
            Some(1)
        );
        assert_eq!(
            quorum_leader(&m(&[(1, Leader), (2, NotServing), (3, NotServing)]), 3),
            None
        );
        assert_eq!(
            quorum_leader(&m(&[(1, Leader), (2, Leader), (3, Follower)]), 3),
            None
        );
    }

    #[test]
    fn peer_routes_change_only_the_dialling_servers_config() {
        if available(Path::new("/usr/bin/java")).is_err() {
            eprintln!("skipping: ZooKeeper is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut e = ZkEnsemble::new(ZkEnsembleSpec::new(3, dir.path())).unwrap();
        e.route_peer(1, 2, 40001, 40002).unwrap();
        let one = e.config_text(1).unwrap();
        let two = e.config_text(2).unwrap();
        assert!(one.contains("server.2=127.0.0.1:40001:40002"), "{one}");
        let s2 = e.server(2).unwrap();
        assert!(two.contains(&format!(
            "server.2=127.0.0.1:{}:{}",
            s2.quorum_port, s2.election_port
        )));
        assert!(one.contains("4lw.commands.whitelist=srvr,mntr,ruok"));
        assert!(e.route_peer(1, 1, 1, 2).is_err());
        assert!(e.route_peer(1, 7, 1, 2).is_err());
    }
}
