//! What a broker process uses to talk to the controller quorum: find the active controller
//! among `--controller-quorum-voters`, register (BrokerRegistration), heartbeat
//! (BrokerHeartbeat), follow `__cluster_metadata` as a KRaft *observer* (the same
//! [`crate::raft`] core, not a voter) and publish each committed image on a
//! `tokio::sync::watch` channel, and forward AlterPartition, CreateTopics and the reassignment
//! RPCs to the active controller.

use crate::controller::AlterPartitionRequest as AlterItem;
use crate::controller_server::{apply_committed, s, send_raft, ControllerNode};
use crate::metadata::{BrokerEpoch, BrokerId, LeaderEpoch, MetadataImage, PartitionEpoch};
use crate::raft::{NodeId, Output, QuorumState, RaftConfig, RaftNode};
use crate::server::{frame_request, response_body};
use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, HeaderVersion, Request as KafkaRequest};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use uuid::Uuid;

const NOT_CONTROLLER: i16 = 41;
const STALE_BROKER_EPOCH: i16 = 77;
const BROKER_ID_NOT_REGISTERED: i16 = 102;
/// Largest response frame accepted from a controller.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// One lazily (re)connected Kafka-protocol connection, one request at a time.
pub struct Connection {
    addr: String,
    stream: Option<TcpStream>,
    correlation: i32,
}

impl Connection {
    pub fn new(addr: String) -> Connection {
        Connection {
            addr,
            stream: None,
            correlation: 0,
        }
    }

    /// Sends `req` and waits for its response; any failure drops the connection so the next
    /// request reconnects.
    pub async fn request<R: KafkaRequest>(
        &mut self,
        version: i16,
        req: &R,
        timeout: Duration,
    ) -> anyhow::Result<R::Response> {
        let res = tokio::time::timeout(timeout, self.request_inner(version, req)).await;
        match res {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                anyhow::bail!("request to {} timed out after {timeout:?}", self.addr)
            }
        }
    }

    async fn request_inner<R: KafkaRequest>(
        &mut self,
        version: i16,
        req: &R,
    ) -> anyhow::Result<R::Response> {
        if self.stream.is_none() {
            let st = TcpStream::connect(&self.addr).await?;
            st.set_nodelay(true)?;
            self.stream = Some(st);
        }
        let st = self.stream.as_mut().expect("connected");
        self.correlation = self.correlation.wrapping_add(1);
        let key = ApiKey::try_from(R::KEY).map_err(|_| anyhow::anyhow!("unknown API key"))?;
        let frame = frame_request(key, version, self.correlation, req)?;
        st.write_all(&frame).await?;
        let n = st.read_i32().await?;
        anyhow::ensure!(
            n >= 0 && (n as usize) <= MAX_RESPONSE_BYTES,
            "bad response length {n}"
        );
        let mut buf = vec![0u8; n as usize];
        st.read_exact(&mut buf).await?;
        let (c, mut body) = response_body(Bytes::from(buf), R::Response::header_version(version))?;
        anyhow::ensure!(
            c == self.correlation,
            "correlation id {c} != {}",
            self.correlation
        );
        R::Response::decode(&mut body, version)
    }
}

/// Parses `1@127.0.0.1:19093,2@127.0.0.1:19094` (Kafka's `controller.quorum.voters`).
pub fn parse_voters(spec: &str) -> Result<BTreeMap<NodeId, SocketAddr>, String> {
    let mut out = BTreeMap::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item.split_once('@').ok_or_else(|| {
            format!("bad voter {item:?} in --controller-quorum-voters: want ID@HOST:PORT, e.g. 1@127.0.0.1:19093")
        })?;
        let id: NodeId = id
            .parse()
            .ok()
            .filter(|i| *i >= 0)
            .ok_or_else(|| format!("bad voter id {id:?} in --controller-quorum-voters"))?;
        let addr: SocketAddr = addr.parse().map_err(|e| {
            format!("bad voter address {addr:?} in --controller-quorum-voters: {e}")
        })?;
        if out.insert(id, addr).is_some() {
            return Err(format!(
                "voter {id} appears twice in --controller-quorum-voters"
            ));
        }
    }
    if out.is_empty() {
        return Err("--controller-quorum-voters is empty: want ID@HOST:PORT,...".into());
    }
    Ok(out)
}

#[derive(Clone, Debug)]
pub struct ControllerClientConfig {
    pub node_id: BrokerId,
    pub voters: BTreeMap<NodeId, SocketAddr>,
    /// `host:port` of the broker's client listener (advertised in its registration).
    pub endpoint: String,
    /// KIP-966: the broker epoch of the previous, cleanly shut down incarnation (-1: unclean
    /// or first start).
    pub previous_broker_epoch: BrokerEpoch,
    /// `broker.heartbeat.interval.ms`.
    pub heartbeat_interval_ms: u64,
    pub raft: RaftConfig,
    pub request_timeout: Duration,
}

impl ControllerClientConfig {
    pub fn new(node_id: BrokerId, voters: BTreeMap<NodeId, SocketAddr>, endpoint: String) -> Self {
        ControllerClientConfig {
            node_id,
            voters,
            endpoint,
            previous_broker_epoch: -1,
            heartbeat_interval_ms: 500,
            raft: RaftConfig {
                fetch_interval_ms: 20,
                ..RaftConfig::default()
            },
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// The registration as the broker knows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrokerSession {
    pub broker_epoch: Option<BrokerEpoch>,
    pub fenced: bool,
    pub active_controller: Option<NodeId>,
}

/// The result of one AlterPartition entry: the partition after the change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterPartitionResult {
    pub leader: BrokerId,
    pub leader_epoch: LeaderEpoch,
    pub isr: Vec<BrokerId>,
    pub partition_epoch: PartitionEpoch,
}

struct Observer {
    raft: RaftNode,
    image: MetadataImage,
}

pub struct ControllerClient {
    config: ControllerClientConfig,
    incarnation_id: Uuid,
    /// A broker-only process follows the log as an observer; a combined broker,controller
    /// process reads its own controller node's image instead.
    observer: Option<Arc<Mutex<Observer>>>,
    local: Option<Arc<ControllerNode>>,
    image_rx: watch::Receiver<Arc<MetadataImage>>,
    session: watch::Receiver<BrokerSession>,
    /// The observer and session tasks, aborted by [`ControllerClient::shutdown`].
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl ControllerClient {
    /// Starts observing the metadata log, registering and heartbeating. Returns at once.
    pub fn start(config: ControllerClientConfig) -> Arc<ControllerClient> {
        let started = Instant::now();
        let raft = RaftNode::restore(
            config.node_id,
            config.voters.keys().copied(),
            config.raft.clone(),
            QuorumState::default(),
            Vec::new(),
            0,
            config.node_id as u64,
        );
        assert!(
            !raft.is_voter(),
            "broker {} is also a voter: use ControllerClient::start_combined",
            config.node_id
        );
        let observer = Arc::new(Mutex::new(Observer {
            raft,
            image: MetadataImage::default(),
        }));
        let (image_tx, image_rx) = watch::channel(Arc::new(MetadataImage::default()));
        let (session_tx, session) = watch::channel(BrokerSession {
            fenced: true,
            ..BrokerSession::default()
        });
        let client = Arc::new(ControllerClient {
            config: config.clone(),
            incarnation_id: Uuid::new_v4(),
            observer: Some(observer.clone()),
            local: None,
            image_rx,
            session,
            tasks: Mutex::new(Vec::new()),
        });
        // The observer: fetch __cluster_metadata, publish committed images.
        let timeout = Duration::from_millis(config.raft.request_timeout_ms);
        let voters = config.voters.clone();
        let observer_task = tokio::spawn(async move {
            let mut conns: BTreeMap<NodeId, crate::controller_client::Connection> = voters
                .iter()
                .map(|(id, a)| (*id, Connection::new(a.to_string())))
                .collect();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let now = started.elapsed().as_millis() as u64;
                let out = lock(&observer).raft.tick(now);
                for o in out {
                    let Output::Send { to, request } = o else {
                        continue; // an observer keeps its copy in memory
                    };
                    let Some(conn) = conns.get_mut(&to) else {
                        continue;
                    };
                    match send_raft(conn, &request, timeout).await {
                        Ok(resp) => {
                            let now = started.elapsed().as_millis() as u64;
                            let mut g = lock(&observer);
                            let _ = g.raft.handle_response(now, to, &request, resp);
                            let hw = g.raft.high_watermark();
                            if hw > g.image.offset + 1 {
                                let Observer { raft, image } = &mut *g;
                                apply_committed(image, raft.log(), hw);
                                image_tx.send_replace(Arc::new(g.image.clone()));
                            }
                        }
                        Err(e) => tracing::debug!(voter = to, error = %e, "metadata fetch failed"),
                    }
                }
            }
        });
        let c = client.clone();
        let session_task = tokio::spawn(async move { c.session_loop(session_tx).await });
        lock(&client.tasks).extend([observer_task, session_task]);
        client
    }

    /// For `--process-roles broker,controller`: the broker uses the image its own controller
    /// node replicates (a voter must not also fetch as an observer under the same id).
    pub fn start_combined(
        config: ControllerClientConfig,
        node: Arc<ControllerNode>,
    ) -> Arc<ControllerClient> {
        let (session_tx, session) = watch::channel(BrokerSession {
            fenced: true,
            ..BrokerSession::default()
        });
        let client = Arc::new(ControllerClient {
            config,
            incarnation_id: Uuid::new_v4(),
            observer: None,
            image_rx: node.image(),
            local: Some(node),
            session,
            tasks: Mutex::new(Vec::new()),
        });
        let c = client.clone();
        let session_task = tokio::spawn(async move { c.session_loop(session_tx).await });
        lock(&client.tasks).push(session_task);
        client
    }

    /// Controlled shutdown (Kafka's `want_shut_down` heartbeat): the controller fences this
    /// broker and moves its leaderships away before the process exits, then the client stops.
    pub async fn controlled_shutdown(&self) -> anyhow::Result<()> {
        let epoch =
            self.session.borrow().broker_epoch.ok_or_else(|| {
                anyhow::anyhow!("broker {} is not registered", self.config.node_id)
            })?;
        let req = BrokerHeartbeatRequest::default()
            .with_broker_id(BrokerId(self.config.node_id))
            .with_broker_epoch(epoch)
            .with_current_metadata_offset(self.image_rx.borrow().offset)
            .with_want_fence(true)
            .with_want_shut_down(true);
        let r = self.send_to_controller(0, &req, |r| r.error_code).await;
        self.shutdown();
        let r = r?;
        anyhow::ensure!(
            r.error_code == 0,
            "controlled shutdown refused with error {}",
            r.error_code
        );
        Ok(())
    }

    /// Stops observing and heartbeating (the broker process is going away; the controller
    /// fences it once its session lapses).
    pub fn shutdown(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }

    /// The committed metadata image, updated as the log is replicated.
    pub fn image(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.image_rx.clone()
    }

    pub fn session(&self) -> watch::Receiver<BrokerSession> {
        self.session.clone()
    }

    /// The active controller as the observer last learned it.
    pub fn active_controller(&self) -> Option<NodeId> {
        match (&self.observer, &self.local) {
            (Some(o), _) => lock(o).raft.leader_id(),
            (None, Some(n)) => n.quorum_status().2,
            (None, None) => None,
        }
    }

    /// Waits until this broker is registered and unfenced.
    pub async fn wait_unfenced(&self, timeout: Duration) -> anyhow::Result<BrokerEpoch> {
        let mut rx = self.session.clone();
        let r = tokio::time::timeout(timeout, async {
            loop {
                let s = *rx.borrow_and_update();
                if let (Some(e), false) = (s.broker_epoch, s.fenced) {
                    return Ok(e);
                }
                rx.changed().await?;
            }
        })
        .await;
        r.map_err(|_| {
            anyhow::anyhow!(
                "broker {} not unfenced within {timeout:?}",
                self.config.node_id
            )
        })?
    }

    async fn session_loop(&self, tx: watch::Sender<BrokerSession>) {
        let mut conns: BTreeMap<NodeId, Connection> = BTreeMap::new();
        let interval = Duration::from_millis(self.config.heartbeat_interval_ms);
        let mut epoch: Option<BrokerEpoch> = None;
        loop {
            let Some(leader) = self.active_controller() else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let addr = self.config.voters[&leader];
            let conn = conns
                .entry(leader)
                .or_insert_with(|| Connection::new(addr.to_string()));
            match epoch {
                None => {
                    let (host, port) = self
                        .config
                        .endpoint
                        .rsplit_once(':')
                        .map(|(h, p)| (h.to_owned(), p.parse().unwrap_or(0)))
                        .unwrap_or_default();
                    let req = BrokerRegistrationRequest::default()
                        .with_broker_id(BrokerId(self.config.node_id))
                        .with_cluster_id(s("kcheck"))
                        .with_incarnation_id(self.incarnation_id)
                        .with_previous_broker_epoch(self.config.previous_broker_epoch)
                        .with_listeners(vec![broker_registration_request::Listener::default()
                            .with_name(s("PLAINTEXT"))
                            .with_host(s(&host))
                            .with_port(port)]);
                    match conn.request(3, &req, self.config.request_timeout).await {
                        Ok(r) if r.error_code == 0 => {
                            epoch = Some(r.broker_epoch);
                            tracing::info!(
                                broker = self.config.node_id,
                                broker_epoch = r.broker_epoch,
                                "registered"
                            );
                            tx.send_modify(|s| {
                                s.broker_epoch = epoch;
                                s.fenced = true;
                                s.active_controller = Some(leader);
                            });
                            continue;
                        }
                        Ok(r) => tracing::debug!(code = r.error_code, "registration refused"),
                        Err(e) => tracing::debug!(error = %e, "registration failed"),
                    }
                }
                Some(e) => {
                    let offset = self.image_rx.borrow().offset;
                    let req = BrokerHeartbeatRequest::default()
                        .with_broker_id(BrokerId(self.config.node_id))
                        .with_broker_epoch(e)
                        .with_current_metadata_offset(offset);
                    match conn.request(0, &req, self.config.request_timeout).await {
                        Ok(r) if r.error_code == 0 => {
                            tx.send_modify(|s| {
                                s.fenced = r.is_fenced;
                                s.active_controller = Some(leader);
                            });
                        }
                        Ok(r)
                            if r.error_code == STALE_BROKER_EPOCH
                                || r.error_code == BROKER_ID_NOT_REGISTERED =>
                        {
                            tracing::warn!(
                                code = r.error_code,
                                "registration lost: registering again"
                            );
                            epoch = None;
                            tx.send_modify(|s| {
                                s.broker_epoch = None;
                                s.fenced = true;
                            });
                            continue;
                        }
                        Ok(r) => tracing::debug!(code = r.error_code, "heartbeat refused"),
                        Err(e) => tracing::debug!(error = %e, "heartbeat failed"),
                    }
                }
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Sends any controller RPC to the active controller, retrying on NOT_CONTROLLER and
    /// connection errors until `request_timeout` passes. `error_code` extracts the top-level
    /// error of the response.
    pub async fn send_to_controller<R: KafkaRequest>(
        &self,
        version: i16,
        req: &R,
        error_code: impl Fn(&R::Response) -> i16,
    ) -> anyhow::Result<R::Response> {
        let deadline = Instant::now() + self.config.request_timeout;
        let mut last_err = String::from("no active controller known");
        while Instant::now() < deadline {
            if let Some(leader) = self.active_controller() {
                let mut conn = Connection::new(self.config.voters[&leader].to_string());
                match conn
                    .request(version, req, self.config.request_timeout)
                    .await
                {
                    Ok(r) if error_code(&r) == NOT_CONTROLLER => {
                        last_err = format!("controller {leader} is not active")
                    }
                    Ok(r) => return Ok(r),
                    Err(e) => last_err = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("no answer from the active controller: {last_err}")
    }

    /// AlterPartition (v3, KIP-903 broker epochs) for one partition from this broker as
    /// leader. `Ok(Err(code))` is the controller's refusal (INVALID_UPDATE_VERSION, ...).
    pub async fn alter_partition(
        &self,
        item: AlterItem,
    ) -> anyhow::Result<Result<AlterPartitionResult, i16>> {
        let epoch =
            self.session.borrow().broker_epoch.ok_or_else(|| {
                anyhow::anyhow!("broker {} is not registered", self.config.node_id)
            })?;
        let req = AlterPartitionRequest::default()
            .with_broker_id(BrokerId(self.config.node_id))
            .with_broker_epoch(epoch)
            .with_topics(vec![alter_partition_request::TopicData::default()
                .with_topic_id(item.topic_id)
                .with_partitions(vec![
                    alter_partition_request::PartitionData::default()
                        .with_partition_index(item.partition_id)
                        .with_leader_epoch(item.leader_epoch)
                        .with_partition_epoch(item.partition_epoch)
                        .with_new_isr_with_epochs(
                            item.new_isr
                                .iter()
                                .map(|(b, e)| {
                                    alter_partition_request::BrokerState::default()
                                        .with_broker_id(BrokerId(*b))
                                        .with_broker_epoch(*e)
                                })
                                .collect(),
                        ),
                ])]);
        let r = self.send_to_controller(3, &req, |r| r.error_code).await?;
        if r.error_code != 0 {
            return Ok(Err(r.error_code));
        }
        let p = r
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .ok_or_else(|| anyhow::anyhow!("AlterPartition response without the partition"))?;
        if p.error_code != 0 {
            return Ok(Err(p.error_code));
        }
        Ok(Ok(AlterPartitionResult {
            leader: p.leader_id.0,
            leader_epoch: p.leader_epoch,
            isr: p.isr.iter().map(|b| b.0).collect(),
            partition_epoch: p.partition_epoch,
        }))
    }

    /// CreateTopics forwarded as the client sent it (v2-7); the broker answers the client with
    /// the controller's response.
    pub async fn create_topics(
        &self,
        version: i16,
        req: &CreateTopicsRequest,
    ) -> anyhow::Result<CreateTopicsResponse> {
        self.send_to_controller(version, req, |r| {
            r.topics
                .iter()
                .map(|t| t.error_code)
                .find(|c| *c == NOT_CONTROLLER)
                .unwrap_or(0)
        })
        .await
    }

    /// Creates one topic; `Ok(Err(code))` is the controller's refusal (TOPIC_ALREADY_EXISTS...).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
    ) -> anyhow::Result<Result<Uuid, i16>> {
        let req = CreateTopicsRequest::default()
            .with_timeout_ms(5000)
            .with_topics(vec![create_topics_request::CreatableTopic::default()
                .with_name(TopicName(s(name)))
                .with_num_partitions(partitions)
                .with_replication_factor(replication_factor)]);
        let r = self.create_topics(7, &req).await?;
        let t = r
            .topics
            .first()
            .ok_or_else(|| anyhow::anyhow!("empty CreateTopics response"))?;
        Ok(if t.error_code == 0 {
            Ok(t.topic_id)
        } else {
            Err(t.error_code)
        })
    }

    pub async fn alter_partition_reassignments(
        &self,
        req: &AlterPartitionReassignmentsRequest,
    ) -> anyhow::Result<AlterPartitionReassignmentsResponse> {
        self.send_to_controller(0, req, |r| r.error_code).await
    }

    pub async fn list_partition_reassignments(
        &self,
        req: &ListPartitionReassignmentsRequest,
    ) -> anyhow::Result<ListPartitionReassignmentsResponse> {
        self.send_to_controller(0, req, |r| r.error_code).await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voters_parse_and_bad_ones_name_the_fix() {
        let v = parse_voters("1@127.0.0.1:19093,2@127.0.0.1:19094").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[&2].port(), 19094);
        for bad in [
            "",
            "1:127.0.0.1:1",
            "x@127.0.0.1:1",
            "1@nowhere",
            "1@127.0.0.1:1,1@127.0.0.1:2",
        ] {
            let e = parse_voters(bad).unwrap_err();
            assert!(e.contains("--controller-quorum-voters"), "{e}");
        }
    }
}
