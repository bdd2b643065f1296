//! `kcheck cluster up --metadata zookeeper`: a ZooKeeper ensemble ([`crate::zk_ensemble`]) and
//! brokers started with `--zookeeper`, which elect their controller through `/controller`
//! ([`crate::zk_controller`]). The cluster state file is the KRaft cluster's, with the ensemble
//! added, so `status`, `down`, the process tests and the harness handle both modes.

use crate::cluster::{pid_alive, ClusterState, NodeState};
use crate::zk_controller::{ControllerZnode, CONTROLLER, CONTROLLER_EPOCH};
use crate::zk_ensemble::{ZkEnsemble, ZkEnsembleSpec, ZkServer};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The ensemble of a ZooKeeper-mode cluster, as the state file keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZkPart {
    /// `host:port,...` the brokers connect to.
    pub connect: String,
    pub servers: Vec<ZkServer>,
}

/// What `kcheck cluster up --metadata zookeeper` starts.
#[derive(Clone, Debug)]
pub struct ZkClusterSpec {
    pub brokers: usize,
    /// ZooKeeper servers (3 tolerates one failure).
    pub zookeeper_servers: usize,
    pub data_dir: PathBuf,
    pub executable: PathBuf,
    /// Extra `kcheck broker` arguments (`--bug`, `--min-insync-replicas`...).
    pub broker_args: Vec<String>,
    /// zookeeper.session.timeout.ms of every broker (the ensemble grants 0.4 s to 4 s).
    pub session_timeout_ms: u64,
    pub ready_timeout: Duration,
}

/// The controller as ZooKeeper names it: `/controller`'s broker and `/controller_epoch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ZkControllerStatus {
    pub controller: Option<i32>,
    pub controller_epoch: i32,
}

impl ClusterState {
    /// Starts the ensemble, waits until it serves, then starts the brokers. The ensemble's
    /// processes outlive this call (they are stopped by [`ClusterState::stop_all`]).
    pub fn start_zookeeper(spec: &ZkClusterSpec) -> anyhow::Result<ClusterState> {
        anyhow::ensure!(
            (1..=64).contains(&spec.brokers),
            "a ZooKeeper-mode cluster has 1 to 64 brokers (--brokers N)"
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
        let mut ensemble = ZkEnsemble::new(ZkEnsembleSpec::new(
            spec.zookeeper_servers,
            &spec.data_dir.join("zookeeper"),
        ))?;
        if let Err(e) = ensemble.start() {
            ensemble.stop_all(Duration::from_secs(2));
            return Err(e.context("the ZooKeeper ensemble did not start"));
        }
        let zookeeper = ZkPart {
            connect: ensemble.connect_string(),
            servers: ensemble.servers().to_vec(),
        };
        // The servers run on after this process exits; the state file keeps their pids.
        std::mem::forget(ensemble);
        let metadata = [
            "--zookeeper".to_string(),
            zookeeper.connect.clone(),
            "--zookeeper-session-timeout-ms".into(),
            spec.session_timeout_ms.to_string(),
        ];
        let mut nodes = Vec::new();
        for id in 1..=spec.brokers as i32 {
            nodes.push(NodeState::broker(
                &spec.data_dir,
                id,
                &metadata,
                &spec.broker_args,
            )?);
        }
        let mut state = ClusterState {
            bootstrap: crate::cluster::bootstrap_servers(&nodes),
            controller_quorum_voters: String::new(),
            executable: spec.executable.clone(),
            nodes,
            zookeeper: Some(zookeeper),
        };
        for i in 0..state.nodes.len() {
            match crate::cluster::spawn_node(&state.executable, &state.nodes[i]) {
                Ok(pid) => state.nodes[i].pid = pid,
                Err(e) => {
                    state.stop_all(Duration::from_secs(2));
                    return Err(e);
                }
            }
        }
        state.save(&spec.data_dir)?;
        Ok(state)
    }

    /// Reads `/controller` and `/controller_epoch` from the ensemble.
    pub fn zk_controller(&self) -> anyhow::Result<ZkControllerStatus> {
        let zk = self
            .zookeeper
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("this cluster runs in KRaft mode (no ZooKeeper)"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let read = async {
                let c = zookeeper_client::Client::connector()
                    .with_session_timeout(Duration::from_secs(4))
                    .connect(&zk.connect)
                    .await?;
                let controller = match c.get_data(CONTROLLER).await {
                    Ok((d, _)) => serde_json::from_slice::<ControllerZnode>(&d)
                        .ok()
                        .map(|z| z.brokerid),
                    Err(zookeeper_client::Error::NoNode) => None,
                    Err(e) => return Err(anyhow::Error::from(e)),
                };
                let controller_epoch = match c.get_data(CONTROLLER_EPOCH).await {
                    Ok((d, _)) => String::from_utf8_lossy(&d).trim().parse().unwrap_or(0),
                    Err(zookeeper_client::Error::NoNode) => 0,
                    Err(e) => return Err(e.into()),
                };
                Ok(ZkControllerStatus {
                    controller,
                    controller_epoch,
                })
            };
            tokio::time::timeout(Duration::from_secs(6), read)
                .await
                .map_err(|_| anyhow::anyhow!("ZooKeeper at {} did not answer in 6 s", zk.connect))?
        })
    }

    /// Waits until a controller is elected and every broker's Metadata lists every broker.
    pub fn wait_ready_zookeeper(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let brokers = self.brokers().count();
        loop {
            for n in &self.nodes {
                anyhow::ensure!(
                    pid_alive(n.pid),
                    "broker {} exited; see {}",
                    n.id,
                    n.log_file.display()
                );
            }
            let controller = self.zk_controller().ok().and_then(|c| c.controller);
            let listed = self
                .brokers()
                .map(|b| crate::cluster::metadata(&b.address).map_or(0, |m| m.brokers.len()))
                .min()
                .unwrap_or(0);
            if controller.is_some() && listed == brokers {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "ZooKeeper-mode cluster not ready after {timeout:?}: controller {controller:?}, every broker lists {listed} of {brokers} brokers"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the ensemble's servers (SIGTERM, SIGKILL after `grace`), after the brokers.
    pub(crate) fn stop_zookeeper(&self, grace: Duration) {
        let Some(zk) = &self.zookeeper else { return };
        for s in &zk.servers {
            if pid_alive(s.pid) {
                // SAFETY: signals to the servers this cluster started.
                unsafe {
                    libc::kill(s.pid as i32, libc::SIGCONT);
                    libc::kill(s.pid as i32, libc::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && zk.servers.iter().any(|s| pid_alive(s.pid)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        for s in zk.servers.iter().filter(|s| pid_alive(s.pid)) {
            // SAFETY: as above.
            unsafe {
                libc::kill(s.pid as i32, libc::SIGKILL);
            }
        }
    }

    /// The broker that ZooKeeper names controller, waiting (bounded) for one different from
    /// `not` to be elected; with its controller epoch.
    pub fn wait_zk_controller(
        &self,
        not: Option<i32>,
        timeout: Duration,
    ) -> anyhow::Result<(i32, i32)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(ZkControllerStatus {
                controller: Some(c),
                controller_epoch,
            }) = self.zk_controller()
            {
                if Some(c) != not {
                    return Ok((c, controller_epoch));
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no controller other than {not:?} after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// ZooKeeper-side faults on a running ZooKeeper-mode cluster (the brokers' faults are
/// [`ClusterState::kill`], [`ClusterState::pause`]: a broker paused past its session timeout is
/// how a controller's session expires).
impl ClusterState {
    fn zk_server(&self, myid: u32) -> anyhow::Result<&ZkServer> {
        let zk = self
            .zookeeper
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("this cluster runs in KRaft mode (no ZooKeeper)"))?;
        zk.servers.iter().find(|s| s.myid == myid).ok_or_else(|| {
            anyhow::anyhow!(
                "no ZooKeeper server {myid} (myids: {:?})",
                zk.servers.iter().map(|s| s.myid).collect::<Vec<_>>()
            )
        })
    }

    fn zk_signal(&self, myid: u32, sig: i32) -> anyhow::Result<()> {
        let pid = self.zk_server(myid)?.pid;
        anyhow::ensure!(pid_alive(pid), "ZooKeeper server {myid} is not running");
        // SAFETY: kill(2) on a server this cluster started.
        let r = unsafe { libc::kill(pid as i32, sig) };
        anyhow::ensure!(
            r == 0,
            "signal {sig} to ZooKeeper server {myid} failed: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// `kill -9` of one ZooKeeper server.
    pub fn kill_zookeeper(&self, myid: u32) -> anyhow::Result<()> {
        self.zk_signal(myid, libc::SIGKILL)
    }

    /// SIGSTOP / SIGCONT of one ZooKeeper server.
    pub fn pause_zookeeper(&self, myid: u32) -> anyhow::Result<()> {
        self.zk_signal(myid, libc::SIGSTOP)
    }

    pub fn resume_zookeeper(&self, myid: u32) -> anyhow::Result<()> {
        self.zk_signal(myid, libc::SIGCONT)
    }

    /// The ZooKeeper server that leads the ensemble (asked with `srvr`).
    pub fn zookeeper_leader(&self) -> Option<u32> {
        let zk = self.zookeeper.as_ref()?;
        zk.servers.iter().find_map(|s| {
            let text =
                crate::zk_ensemble::four_letter_word(s.client_port, "srvr", Duration::from_secs(1))
                    .ok()?;
            (crate::zk_ensemble::parse_mode(&text) == crate::zk_ensemble::ZkMode::Leader)
                .then_some(s.myid)
        })
    }
}
