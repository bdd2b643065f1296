//! The ZooKeeper ensemble behind a ZooKeeper-mode Kafka cluster in `kcheck test --metadata
//! zookeeper`, and the faults that hit it.
//!
//! The network is the one `--system zookeeper` builds: every server dials every other server's
//! quorum and election ports through its own proxy ([`ZkEnsemble::route_peer`]), so a server can
//! be cut from the others; and every broker reaches every server's client port through its own
//! proxy (its `--zookeeper` lists the proxies), so a broker can be cut from the whole ensemble
//! while it runs on and talks to the other brokers: its session expires, and if it was the
//! controller it is a zombie until it notices. Proxies drop traffic silently (an iptables DROP):
//! connections hang and time out as across a real partition.
//!
//! The brokers themselves are the harness's [`crate::system::ProcessSystem`] nodes; this part
//! owns the servers, the proxies and the tokio runtime the proxies run on.

use crate::proxy::{LinkFaults, Mode, Proxy};
use crate::system::NodeId;
use kcheck_reference::zk_controller::{ControllerZnode, BROKER_IDS, CONTROLLER, CONTROLLER_EPOCH};
use kcheck_reference::zk_ensemble::{ZkEnsemble, ZkEnsembleSpec};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// What [`MetadataEnsemble::await_failover`] saw, when.
#[derive(Debug, Clone, Copy)]
pub struct Failover {
    /// The dead broker's znode went (its session expired).
    pub expired: Option<std::time::Instant>,
    /// The controller's first partition-state write after that.
    pub written: Option<std::time::Instant>,
}

/// The ensemble, its proxies and the runtime they run on.
pub struct MetadataEnsemble {
    ensemble: ZkEnsemble,
    /// (from, to) → proxies for `to`'s quorum and election ports.
    peers: BTreeMap<(u32, u32), [Proxy; 2]>,
    /// (broker, server) → proxy to the server's client port.
    brokers: BTreeMap<(NodeId, u32), Proxy>,
    /// Declared last: the proxies' tasks stop with it.
    rt: tokio::runtime::Runtime,
}

impl MetadataEnsemble {
    /// Starts `servers` ZooKeeper servers in `dir` behind peer proxies, and a client proxy per
    /// (broker, server); returns once a quorum serves.
    pub fn start(
        dir: &Path,
        servers: usize,
        brokers: &[NodeId],
        seed: u64,
    ) -> anyhow::Result<MetadataEnsemble> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("zk-proxies")
            .enable_all()
            .build()?;
        let mut ensemble = ZkEnsemble::new(ZkEnsembleSpec::new(servers, dir))?;
        let list = ensemble.servers().to_vec();
        let (peers, mut seed) = super::run::proxy_peer_links(&mut ensemble, &rt, seed)?;
        let mut clients = BTreeMap::new();
        for &b in brokers {
            for s in &list {
                seed += 1;
                let p = rt.block_on(Proxy::start(([127, 0, 0, 1], s.client_port).into(), seed))?;
                clients.insert((b, s.myid), p);
            }
        }
        let mut me = MetadataEnsemble {
            ensemble,
            peers,
            brokers: clients,
            rt,
        };
        if let Err(e) = me.ensemble.start() {
            me.shutdown();
            return Err(e.context("the ZooKeeper ensemble did not start"));
        }
        Ok(me)
    }

    /// `broker`'s `--zookeeper`: its own proxy to each server.
    pub fn connect_string(&self, broker: NodeId) -> String {
        self.brokers
            .range((broker, 0)..(broker + 1, 0))
            .map(|(_, p)| p.local_addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn myids(&self) -> Vec<u32> {
        self.ensemble.myids()
    }

    /// The server leading the ensemble (asked with `srvr`), if a quorum serves.
    pub fn leader(&self) -> Option<u32> {
        self.ensemble.leader()
    }

    /// `/controller`'s broker and `/controller_epoch`, read over a short session of the
    /// harness's own (direct, never cut); `None` when there is no controller or no answer in 3 s.
    pub fn controller(&self) -> Option<(NodeId, i32)> {
        self.read(|c| async move {
            let (data, _) = c.get_data(CONTROLLER).await.ok()?;
            let id = serde_json::from_slice::<ControllerZnode>(&data)
                .ok()?
                .brokerid;
            let epoch = match c.get_data(CONTROLLER_EPOCH).await {
                Ok((d, _)) => String::from_utf8_lossy(&d).trim().parse().unwrap_or(0),
                Err(_) => 0,
            };
            Some((id, epoch))
        })
    }

    /// The brokers registered under `/brokers/ids` (their sessions live), read as
    /// [`Self::controller`] reads; `None` when there is no answer in 3 s.
    pub fn registered_brokers(&self) -> Option<Vec<NodeId>> {
        self.read(|c| async move {
            let ids = c.list_children(BROKER_IDS).await.ok()?;
            let mut ids: Vec<NodeId> = ids.iter().filter_map(|i| i.parse().ok()).collect();
            ids.sort();
            Some(ids)
        })
    }

    /// Follows a controller's failover of a dead broker from a ZooKeeper session of the
    /// harness's own: blocks until `/brokers/ids/<broker>` is gone (the broker's session
    /// expired; ZooKeeper notifies the controller's `/brokers/ids` watch in the same moment),
    /// then until one of the partition-state znodes `states` changes (the controller's first
    /// fenced write of the failover: from then on it has the BrokerChange in hand). Each wait
    /// is bounded (`expiry_within`, `write_within`); the watches are armed concurrently, as
    /// they may be hundreds. `None` when ZooKeeper does not answer.
    pub fn await_failover(
        &self,
        broker: NodeId,
        states: &[String],
        expiry_within: Duration,
        write_within: Duration,
    ) -> Option<Failover> {
        let connect = self.ensemble.connect_string();
        let path = format!("{BROKER_IDS}/{broker}");
        let states = states.to_vec();
        self.rt.block_on(async move {
            let c = tokio::time::timeout(
                Duration::from_secs(3),
                zookeeper_client::Client::connector()
                    .with_session_timeout(expiry_within + write_within + Duration::from_secs(4))
                    .with_connection_timeout(Duration::from_secs(1))
                    .connect(&connect),
            )
            .await
            .ok()?
            .ok()?;
            // A watch per state znode, each reporting to one channel once it fires.
            let (tx, mut written) = tokio::sync::mpsc::unbounded_channel();
            let mut arming = tokio::task::JoinSet::new();
            for state in states {
                let (c, tx) = (c.clone(), tx.clone());
                arming.spawn(async move {
                    if let Ok((_, w)) = c.check_and_watch_stat(&state).await {
                        tokio::spawn(async move {
                            w.changed().await;
                            let _ = tx.send(std::time::Instant::now());
                        });
                    }
                });
            }
            while arming.join_next().await.is_some() {}
            let (stat, watcher) = c.check_and_watch_stat(&path).await.ok()?;
            let expired = match stat {
                None => Some(std::time::Instant::now()),
                Some(_) => tokio::time::timeout(expiry_within, watcher.changed())
                    .await
                    .ok()
                    .map(|_| std::time::Instant::now()),
            };
            // A write before the expiry (a leader's own ISR write) is not the failover's.
            let first_after = |since: std::time::Instant| async move {
                loop {
                    match written.recv().await {
                        Some(at) if at >= since => return Some(at),
                        Some(_) => {}
                        None => return None,
                    }
                }
            };
            let written = match expired {
                Some(since) => tokio::time::timeout(write_within, first_after(since))
                    .await
                    .ok()
                    .flatten(),
                None => None,
            };
            Some(Failover { expired, written })
        })
    }

    /// Runs `read` on a short session of the harness's own, straight to the servers (never
    /// through the brokers' proxies, so never cut); `None` past 3 s.
    fn read<T, F: std::future::Future<Output = Option<T>>>(
        &self,
        read: impl FnOnce(zookeeper_client::Client) -> F,
    ) -> Option<T> {
        let connect = self.ensemble.connect_string();
        self.rt.block_on(async {
            let session = async {
                let c = zookeeper_client::Client::connector()
                    .with_session_timeout(Duration::from_secs(4))
                    .with_connection_timeout(Duration::from_secs(1))
                    .connect(&connect)
                    .await
                    .ok()?;
                read(c).await
            };
            tokio::time::timeout(Duration::from_secs(3), session)
                .await
                .ok()
                .flatten()
        })
    }

    /// `kill -9` of one server.
    pub fn kill(&mut self, myid: u32) -> anyhow::Result<()> {
        self.ensemble.kill(myid)
    }

    /// Starts a killed server again (it rejoins on its own).
    pub fn restart(&mut self, myid: u32) -> anyhow::Result<()> {
        if self.ensemble.is_running(myid) {
            return Ok(());
        }
        self.ensemble.restart(myid).map(|_| ())
    }

    /// Cuts (`true`) or heals every link between server `myid` and the other servers; its
    /// clients still reach it (a server alone answers them "not serving" and they move on).
    pub fn isolate_server(&self, myid: u32, cut: bool) {
        let faults = faults(cut);
        for ((from, to), ps) in &self.peers {
            if *from == myid || *to == myid {
                ps.iter().for_each(|p| p.set(faults));
            }
        }
    }

    /// Cuts (`true`) or heals every link between `broker` and the ensemble.
    pub fn isolate_broker(&self, broker: NodeId, cut: bool) {
        let faults = faults(cut);
        for ((b, _), p) in &self.brokers {
            if *b == broker {
                p.set(faults);
            }
        }
    }

    /// Every link healed, every killed server restarted (paused ones resumed).
    pub fn heal(&mut self) -> anyhow::Result<()> {
        for p in self.peers.values().flatten().chain(self.brokers.values()) {
            p.set(LinkFaults::healed());
        }
        for id in self.ensemble.myids() {
            if self.ensemble.is_running(id) {
                let _ = self.ensemble.resume(id);
            } else {
                self.ensemble.restart(id)?;
            }
        }
        Ok(())
    }

    /// Waits until a quorum serves again (after [`Self::heal`]).
    pub fn wait_serving(&self, timeout: Duration) -> anyhow::Result<u32> {
        self.ensemble.wait_serving(timeout)
    }

    /// Stops every server and proxy.
    pub fn shutdown(&mut self) {
        self.ensemble.stop_all(Duration::from_secs(3));
        for p in self.peers.values().flatten().chain(self.brokers.values()) {
            p.shutdown();
        }
    }
}

impl Drop for MetadataEnsemble {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn faults(cut: bool) -> LinkFaults {
    if cut {
        LinkFaults::both(Mode::Drop)
    } else {
        LinkFaults::healed()
    }
}
