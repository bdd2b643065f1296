//! Thin tokio adapter for a controller node: the controller listener speaking Kafka's RPCs with
//! the `kafka-protocol` codecs (framing shared with [`crate::server`]), the KRaft core
//! ([`crate::raft`]) made durable by [`crate::metadata_log`], and — on the quorum leader — the
//! active controller ([`crate::controller`]).
//!
//! One `std::sync::Mutex` guards the cores; nothing awaits while holding it. Every output of the
//! KRaft core is persisted (fsync) before the response or request that depends on it leaves.
//! Controller writes are answered once their records are committed (the HW passed them), as
//! Kafka's QuorumController does; a node that is not the active controller answers
//! NOT_CONTROLLER.

use crate::controller::{
    AlterPartitionRequest as AlterItem, Controller, ControllerConfig, ControllerError,
};
use crate::controller_client::Connection;
use crate::controller_test_control::{ControllerTestControl, Rpc};
use crate::metadata::{MetadataImage, MetadataRecord};
use crate::metadata_log::{decode_entries, encode_entries, MetadataLog, METADATA_TOPIC};
use crate::raft::{
    Entry, NodeId, Output, RaftConfig, RaftError, RaftNode, Request, Response, Role,
};
use crate::server::{decode, decode_frame_with, encode_response, Close};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// API versions of the controller listener.
pub fn controller_versions(key: ApiKey) -> Option<(i16, i16)> {
    let (min, max) = match key {
        ApiKey::ApiVersions => (0, 3),
        ApiKey::Vote => (0, 2),
        ApiKey::BeginQuorumEpoch => (0, 0),
        ApiKey::EndQuorumEpoch => (0, 0),
        ApiKey::Fetch => (4, 12),
        ApiKey::DescribeQuorum => (0, 1),
        ApiKey::BrokerRegistration => (0, 3),
        ApiKey::BrokerHeartbeat => (0, 1),
        ApiKey::AlterPartition => (2, 3),
        ApiKey::CreateTopics => (2, 7),
        ApiKey::AlterPartitionReassignments => (0, 0),
        ApiKey::ListPartitionReassignments => (0, 0),
        _ => return None,
    };
    let v = key.valid_versions();
    let (min, max) = (min.max(v.min), max.min(v.max));
    (min <= max).then_some((min, max))
}

/// The versions this node uses when it sends the KRaft RPCs.
pub const VOTE_VERSION: i16 = 2;
pub const BEGIN_QUORUM_EPOCH_VERSION: i16 = 0;
pub const END_QUORUM_EPOCH_VERSION: i16 = 0;
pub const FETCH_VERSION: i16 = 12;

const NOT_CONTROLLER: i16 = 41;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

pub fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

fn metadata_topic() -> TopicName {
    TopicName(s(METADATA_TOPIC))
}

fn opt_id(id: i32) -> Option<NodeId> {
    (id >= 0).then_some(id)
}

// ---- KRaft messages <-> Kafka RPCs ----------------------------------------------------------

/// A KRaft request as the Kafka request it travels in.
pub enum WireRequest {
    Vote(VoteRequest),
    BeginQuorumEpoch(BeginQuorumEpochRequest),
    EndQuorumEpoch(EndQuorumEpochRequest),
    Fetch(FetchRequest),
}

pub fn request_to_wire(r: &Request) -> WireRequest {
    match r {
        Request::Vote {
            candidate_epoch,
            candidate_id,
            last_offset_epoch,
            last_offset,
            pre_vote,
        } => WireRequest::Vote(VoteRequest::default().with_topics(vec![
            vote_request::TopicData::default()
                .with_topic_name(metadata_topic())
                .with_partitions(vec![vote_request::PartitionData::default()
                    .with_replica_epoch(*candidate_epoch)
                    .with_replica_id(BrokerId(*candidate_id))
                    .with_last_offset_epoch(*last_offset_epoch)
                    .with_last_offset(*last_offset)
                    .with_pre_vote(*pre_vote)]),
        ])),
        Request::BeginQuorumEpoch {
            leader_epoch,
            leader_id,
        } => WireRequest::BeginQuorumEpoch(BeginQuorumEpochRequest::default().with_topics(
            vec![begin_quorum_epoch_request::TopicData::default()
                .with_topic_name(metadata_topic())
                .with_partitions(vec![begin_quorum_epoch_request::PartitionData::default()
                    .with_leader_id(BrokerId(*leader_id))
                    .with_leader_epoch(*leader_epoch)])],
        )),
        Request::EndQuorumEpoch {
            leader_epoch,
            leader_id,
            preferred_successors,
        } => WireRequest::EndQuorumEpoch(EndQuorumEpochRequest::default().with_topics(vec![
            end_quorum_epoch_request::TopicData::default()
                .with_topic_name(metadata_topic())
                .with_partitions(vec![end_quorum_epoch_request::PartitionData::default()
                    .with_leader_id(BrokerId(*leader_id))
                    .with_leader_epoch(*leader_epoch)
                    .with_preferred_successors(preferred_successors.clone())]),
        ])),
        Request::Fetch {
            replica_id,
            current_leader_epoch,
            fetch_offset,
            last_fetched_epoch,
        } => WireRequest::Fetch(
            FetchRequest::default()
                .with_replica_id(BrokerId(*replica_id))
                .with_max_wait_ms(0)
                .with_min_bytes(0)
                .with_max_bytes(8 << 20)
                .with_session_epoch(-1)
                .with_topics(vec![fetch_request::FetchTopic::default()
                    .with_topic(metadata_topic())
                    .with_partitions(vec![fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_current_leader_epoch(*current_leader_epoch)
                        .with_fetch_offset(*fetch_offset)
                        .with_last_fetched_epoch(*last_fetched_epoch)
                        .with_log_start_offset(-1)
                        .with_partition_max_bytes(8 << 20)])]),
        ),
    }
}

fn vote_from_wire(req: &VoteRequest) -> Option<Request> {
    let p = req.topics.first()?.partitions.first()?;
    Some(Request::Vote {
        candidate_epoch: p.replica_epoch,
        candidate_id: p.replica_id.0,
        last_offset_epoch: p.last_offset_epoch,
        last_offset: p.last_offset,
        pre_vote: p.pre_vote,
    })
}

fn fetch_from_wire(req: &FetchRequest) -> Option<Request> {
    let t = req.topics.first()?;
    if t.topic.0.as_str() != METADATA_TOPIC {
        return None;
    }
    let p = t.partitions.first()?;
    let replica_id = if req.replica_id.0 >= 0 {
        req.replica_id.0
    } else {
        req.replica_state.replica_id.0
    };
    Some(Request::Fetch {
        replica_id,
        current_leader_epoch: p.current_leader_epoch,
        fetch_offset: p.fetch_offset,
        last_fetched_epoch: p.last_fetched_epoch,
    })
}

/// Decodes a Fetch response on `__cluster_metadata` into the KRaft response.
pub fn fetch_response_from_wire(
    fetch_offset: i64,
    resp: &FetchResponse,
) -> anyhow::Result<Response> {
    let p = resp
        .responses
        .first()
        .and_then(|t| t.partitions.first())
        .ok_or_else(|| anyhow::anyhow!("Fetch response without a partition"))?;
    let records = match &p.records {
        Some(b) if !b.is_empty() => decode_entries(fetch_offset, b)?,
        _ => Vec::new(),
    };
    Ok(Response::Fetch {
        error: RaftError::from_code(p.error_code),
        leader_epoch: p.current_leader.leader_epoch,
        leader_id: opt_id(p.current_leader.leader_id.0),
        high_watermark: p.high_watermark,
        records,
        diverging_epoch: (p.diverging_epoch.epoch >= 0 && p.diverging_epoch.end_offset >= 0)
            .then_some((p.diverging_epoch.epoch, p.diverging_epoch.end_offset)),
    })
}

fn fetch_response_to_wire(fetch_offset: i64, r: &Response) -> FetchResponse {
    let Response::Fetch {
        error,
        leader_epoch,
        leader_id,
        high_watermark,
        records,
        diverging_epoch,
    } = r
    else {
        unreachable!("a Fetch is answered with a Fetch response")
    };
    let (de, dend) = diverging_epoch.unwrap_or((-1, -1));
    let bytes = (!records.is_empty()).then(|| Bytes::from(encode_entries(fetch_offset, records)));
    FetchResponse::default().with_responses(vec![fetch_response::FetchableTopicResponse::default()
        .with_topic(metadata_topic())
        .with_partitions(vec![fetch_response::PartitionData::default()
            .with_partition_index(0)
            .with_error_code(error.code())
            .with_high_watermark(*high_watermark)
            .with_diverging_epoch(
                fetch_response::EpochEndOffset::default()
                    .with_epoch(de)
                    .with_end_offset(dend),
            )
            .with_current_leader(
                fetch_response::LeaderIdAndEpoch::default()
                    .with_leader_id(BrokerId(leader_id.unwrap_or(-1)))
                    .with_leader_epoch(*leader_epoch),
            )
            .with_records(bytes)])])
}

/// Sends one KRaft request over `conn` and returns the KRaft response.
pub async fn send_raft(
    conn: &mut Connection,
    request: &Request,
    timeout: Duration,
) -> anyhow::Result<Response> {
    Ok(match request_to_wire(request) {
        WireRequest::Vote(r) => {
            let resp = conn.request(VOTE_VERSION, &r, timeout).await?;
            let p = resp
                .topics
                .first()
                .and_then(|t| t.partitions.first())
                .ok_or_else(|| anyhow::anyhow!("Vote response without a partition"))?;
            let code = if p.error_code != 0 {
                p.error_code
            } else {
                resp.error_code
            };
            Response::Vote {
                error: RaftError::from_code(code),
                leader_epoch: p.leader_epoch,
                leader_id: opt_id(p.leader_id.0),
                vote_granted: p.vote_granted && code == 0,
            }
        }
        WireRequest::BeginQuorumEpoch(r) => {
            let resp = conn
                .request(BEGIN_QUORUM_EPOCH_VERSION, &r, timeout)
                .await?;
            let p = resp
                .topics
                .first()
                .and_then(|t| t.partitions.first())
                .ok_or_else(|| anyhow::anyhow!("BeginQuorumEpoch response without a partition"))?;
            Response::BeginQuorumEpoch {
                error: RaftError::from_code(p.error_code),
                leader_epoch: p.leader_epoch,
                leader_id: opt_id(p.leader_id.0),
            }
        }
        WireRequest::EndQuorumEpoch(r) => {
            let resp = conn.request(END_QUORUM_EPOCH_VERSION, &r, timeout).await?;
            let p = resp
                .topics
                .first()
                .and_then(|t| t.partitions.first())
                .ok_or_else(|| anyhow::anyhow!("EndQuorumEpoch response without a partition"))?;
            Response::EndQuorumEpoch {
                error: RaftError::from_code(p.error_code),
                leader_epoch: p.leader_epoch,
                leader_id: opt_id(p.leader_id.0),
            }
        }
        WireRequest::Fetch(r) => {
            let Request::Fetch { fetch_offset, .. } = request else {
                unreachable!()
            };
            let resp = conn.request(FETCH_VERSION, &r, timeout).await?;
            fetch_response_from_wire(*fetch_offset, &resp)?
        }
    })
}

// ---- the node --------------------------------------------------------------------------------

/// `--node-id`, `--controller-listen`, `--controller-quorum-voters`, data directory, timeouts.
#[derive(Clone, Debug)]
pub struct ControllerNodeConfig {
    pub node_id: NodeId,
    pub listen: SocketAddr,
    pub voters: BTreeMap<NodeId, SocketAddr>,
    pub data_dir: PathBuf,
    pub raft: RaftConfig,
    pub controller: ControllerConfig,
    pub seed: u64,
}

struct Inner {
    raft: RaftNode,
    log: MetadataLog,
    /// The image of the committed log (what brokers see).
    committed: MetadataImage,
    /// Present while this node is the active controller.
    controller: Option<Controller>,
}

pub struct ControllerNode {
    inner: Mutex<Inner>,
    config: ControllerNodeConfig,
    started: Instant,
    image_tx: watch::Sender<Arc<MetadataImage>>,
    peers: BTreeMap<NodeId, mpsc::Sender<Request>>,
    /// `--test-control`: the hold points of [`crate::controller_test_control`]; every request
    /// to a peer waits at its (peer, RPC) link instead of going out at once.
    test: Option<Arc<ControllerTestControl>>,
    /// Added to the clock by `fire election-timer` (test control only).
    clock_offset_ms: AtomicU64,
}

/// What the test control endpoint reports of a controller node.
pub struct TestState {
    pub node_id: NodeId,
    pub role: Role,
    pub epoch: i32,
    pub voted_for: Option<NodeId>,
    pub leader: Option<NodeId>,
    pub high_watermark: i64,
    /// (epoch, control) of every entry.
    pub log: Vec<(i32, bool)>,
    pub active: bool,
}

/// Applies committed entries to an image. Control entries (leader changes) carry no metadata.
pub fn apply_committed(image: &mut MetadataImage, log: &[Entry], high_watermark: i64) {
    let mut offset = image.offset + 1;
    while offset < high_watermark {
        let e = &log[offset as usize];
        if !e.control {
            match MetadataRecord::decode(&e.value) {
                Ok(r) => {
                    if let Err(err) = image.apply(offset, &r) {
                        tracing::error!(offset, error = %err, "committed metadata record refused");
                    }
                }
                Err(err) => tracing::error!(offset, error = %err, "undecodable metadata record"),
            }
        }
        image.offset = offset;
        offset += 1;
    }
}

impl ControllerNode {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + self.clock_offset_ms.load(Ordering::SeqCst)
    }

    /// Test control: moves this node's clock past every deadline its role has (an election
    /// deadline is drawn from [T, 2T), a follower's fetch deadline is 2T) and ticks the core,
    /// so its election (or fetch) timer fires now. Returns the role and epoch after the tick.
    pub fn fire_election_timer(&self) -> (Role, i32) {
        let jump = 2 * self
            .config
            .raft
            .election_timeout_ms
            .max(self.config.raft.fetch_timeout_ms)
            + 1;
        self.clock_offset_ms.fetch_add(jump, Ordering::SeqCst);
        self.tick();
        let g = self.lock();
        (g.raft.role(), g.raft.leader_epoch())
    }

    /// Test control: the core's state as the replayer compares it with the model's.
    pub fn test_state(&self) -> TestState {
        let g = self.lock();
        TestState {
            node_id: self.config.node_id,
            role: g.raft.role(),
            epoch: g.raft.leader_epoch(),
            voted_for: g.raft.quorum_state().voted_for,
            leader: g.raft.leader_id(),
            high_watermark: g.raft.high_watermark(),
            log: g.raft.log().iter().map(|e| (e.epoch, e.control)).collect(),
            active: g.controller.is_some(),
        }
    }

    /// A poisoned lock means a core assertion (a KRaft or metadata invariant) failed while it
    /// was held: stop the process at the cause rather than run on a state that broke one.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(_) => {
                eprintln!(
                    "kcheck controller {}: an invariant assertion failed (see the panic above); stopping",
                    self.config.node_id
                );
                std::process::exit(3);
            }
        }
    }

    pub fn image(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.image_tx.subscribe()
    }

    /// (role, epoch, leader, HW, LEO) for status output and tests.
    pub fn quorum_status(&self) -> (Role, i32, Option<NodeId>, i64, i64) {
        let g = self.lock();
        (
            g.raft.role(),
            g.raft.leader_epoch(),
            g.raft.leader_id(),
            g.raft.high_watermark(),
            g.raft.log_end_offset(),
        )
    }

    /// Persists outputs, sends requests, applies newly committed entries, (de)activates the
    /// controller. Persistence failures are fatal: a node that cannot keep its promises stops.
    fn after(&self, g: &mut Inner, outputs: Vec<Output>) {
        if let Err(e) = g.log.persist(&outputs) {
            tracing::error!(error = %e, "cannot persist the metadata log or quorum-state: exiting");
            eprintln!("kcheck controller: cannot persist KRaft state: {e}");
            std::process::exit(1);
        }
        for o in outputs {
            if let Output::Send { to, request } = o {
                if let Some(test) = &self.test {
                    if let Some(link) = test.link(to, Rpc::of(&request)) {
                        link.offer(request);
                    }
                } else if let Some(tx) = self.peers.get(&to) {
                    let _ = tx.try_send(request);
                }
            }
        }
        let hw = g.raft.high_watermark();
        if hw > g.committed.offset + 1 {
            let Inner {
                raft, committed, ..
            } = g;
            apply_committed(committed, raft.log(), hw);
            self.image_tx.send_replace(Arc::new(g.committed.clone()));
        }
        match g.raft.epoch_start_offset() {
            Some(start) if g.controller.is_none() && hw > start => {
                let next = g.raft.log_end_offset();
                // Everything before this epoch is committed and applied; what follows the
                // leader-change record is only ever written by this controller.
                let mut image = g.committed.clone();
                apply_committed(&mut image, g.raft.log(), next);
                tracing::info!(
                    node = self.config.node_id,
                    epoch = g.raft.leader_epoch(),
                    "active controller"
                );
                g.controller = Some(Controller::new(
                    self.config.controller.clone(),
                    image,
                    next,
                    self.now_ms(),
                ));
            }
            None if g.controller.is_some() => {
                tracing::info!(
                    node = self.config.node_id,
                    "no longer the active controller"
                );
                g.controller = None;
            }
            _ => {}
        }
    }

    fn tick(&self) {
        let now = self.now_ms();
        let mut g = self.lock();
        let out = g.raft.tick(now);
        self.after(&mut g, out);
        let records = match g.controller.as_mut() {
            Some(c) => c.tick(now),
            None => Vec::new(),
        };
        if !records.is_empty() {
            let _ = self.append(&mut g, records);
        }
    }

    fn append(&self, g: &mut Inner, records: Vec<MetadataRecord>) -> Result<i64, i16> {
        if records.is_empty() {
            return Ok(g.raft.log_end_offset() - 1);
        }
        let values = records.iter().map(|r| Bytes::from(r.encode())).collect();
        let (base, out) = g
            .raft
            .append_as_leader(values)
            .map_err(|_| NOT_CONTROLLER)?;
        let n = records.len() as i64;
        if let Some(c) = g.controller.as_ref() {
            assert_eq!(
                c.next_offset(),
                base + n,
                "controller and log disagree on the next offset"
            );
        }
        self.after(g, out);
        Ok(base + n - 1)
    }

    /// Runs `f` on the active controller, appends its records and waits until they commit.
    async fn write<T>(
        &self,
        f: impl FnOnce(&mut Controller, u64) -> Result<(T, Vec<MetadataRecord>), ControllerError>,
    ) -> Result<T, i16> {
        let now = self.now_ms();
        let (value, last, epoch) = {
            let mut g = self.lock();
            let Some(c) = g.controller.as_mut() else {
                return Err(NOT_CONTROLLER);
            };
            let (value, records) = f(c, now).map_err(|e| e.code())?;
            let epoch = g.raft.leader_epoch();
            let last = self.append(&mut g, records)?;
            (value, last, epoch)
        };
        self.wait_committed(last, epoch).await?;
        Ok(value)
    }

    async fn wait_committed(&self, offset: i64, epoch: i32) -> Result<(), i16> {
        let mut rx = self.image_tx.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if rx.borrow_and_update().offset >= offset {
                return Ok(());
            }
            if self.lock().raft.leader_epoch() != epoch {
                return Err(NOT_CONTROLLER);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(NOT_CONTROLLER),
                Err(_) => return Err(ControllerError::RequestTimedOut.code()),
            }
        }
    }

    fn raft_request(&self, request: Request) -> Response {
        let now = self.now_ms();
        let mut g = self.lock();
        let from = match &request {
            Request::Vote { candidate_id, .. } => *candidate_id,
            Request::BeginQuorumEpoch { leader_id, .. } => *leader_id,
            Request::EndQuorumEpoch { leader_id, .. } => *leader_id,
            Request::Fetch { replica_id, .. } => *replica_id,
        };
        let (resp, out) = g.raft.handle_request(now, from, request);
        self.after(&mut g, out);
        resp
    }

    fn raft_response(&self, from: NodeId, request: &Request, response: Response) {
        let now = self.now_ms();
        let mut g = self.lock();
        let out = g.raft.handle_response(now, from, request, response);
        self.after(&mut g, out);
    }

    /// Graceful resignation (SIGTERM): EndQuorumEpoch to the other voters.
    pub fn resign(&self) {
        let now = self.now_ms();
        let mut g = self.lock();
        let out = g.raft.resign(now);
        self.after(&mut g, out);
    }
}

/// Opens the node's durable state and starts its timers and peer connections.
pub fn start(config: ControllerNodeConfig) -> anyhow::Result<Arc<ControllerNode>> {
    start_with(config, None)
}

/// [`start`], with the test control's hold points when `test` is given: each (peer, RPC)
/// link gets a task and a connection of its own, which sends only what the replayer lets go.
pub fn start_with(
    config: ControllerNodeConfig,
    test: Option<Arc<ControllerTestControl>>,
) -> anyhow::Result<Arc<ControllerNode>> {
    anyhow::ensure!(
        config.voters.contains_key(&config.node_id),
        "node {} is not in --controller-quorum-voters ({}): a controller must be a voter",
        config.node_id,
        config
            .voters
            .keys()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (log, quorum, entries) = MetadataLog::open(&config.data_dir)?;
    tracing::info!(
        node = config.node_id,
        epoch = quorum.leader_epoch,
        entries = entries.len(),
        "KRaft state recovered"
    );
    let raft = RaftNode::restore(
        config.node_id,
        config.voters.keys().copied(),
        config.raft.clone(),
        quorum,
        entries,
        0,
        config.seed,
    );
    let (image_tx, _) = watch::channel(Arc::new(MetadataImage::default()));
    let mut peers = BTreeMap::new();
    let mut receivers = Vec::new();
    for (id, addr) in &config.voters {
        if *id != config.node_id {
            let (tx, rx) = mpsc::channel::<Request>(256);
            peers.insert(*id, tx);
            receivers.push((*id, *addr, rx));
        }
    }
    let node = Arc::new(ControllerNode {
        inner: Mutex::new(Inner {
            raft,
            log,
            committed: MetadataImage::default(),
            controller: None,
        }),
        config: config.clone(),
        started: Instant::now(),
        image_tx,
        peers,
        test: test.clone(),
        clock_offset_ms: AtomicU64::new(0),
    });
    let timeout = Duration::from_millis(config.raft.request_timeout_ms);
    if let Some(test) = test {
        // A replay's timeouts are long; a request to a peer that is down fails fast anyway.
        let timeout = timeout.min(Duration::from_secs(5));
        for (id, addr, _) in receivers {
            for rpc in Rpc::ALL {
                let Some(link) = test.link(id, rpc) else {
                    continue;
                };
                let n = node.clone();
                tokio::spawn(async move {
                    let mut conn = Connection::new(addr.to_string());
                    loop {
                        let req = link.next_request().await;
                        let mut resp = None;
                        for _ in 0..3 {
                            match send_raft(&mut conn, &req, timeout).await {
                                Ok(r) => {
                                    resp = Some(r);
                                    break;
                                }
                                Err(e) => {
                                    tracing::debug!(peer = id, error = %e, "KRaft request failed");
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                            }
                        }
                        let Some(resp) = resp else {
                            link.failed();
                            continue;
                        };
                        if let Some((req, resp)) = link.answered(req, resp).await {
                            n.raft_response(id, &req, resp);
                            link.delivered();
                        }
                    }
                });
            }
        }
        let n = node.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                n.tick();
            }
        });
        return Ok(node);
    }
    for (id, addr, mut rx) in receivers {
        let n = node.clone();
        tokio::spawn(async move {
            let mut conn = Connection::new(addr.to_string());
            while let Some(req) = rx.recv().await {
                match send_raft(&mut conn, &req, timeout).await {
                    Ok(resp) => n.raft_response(id, &req, resp),
                    Err(e) => tracing::debug!(peer = id, error = %e, "KRaft request failed"),
                }
            }
        });
    }
    let n = node.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            n.tick();
        }
    });
    Ok(node)
}

/// Binds the controller listener, serves until `shutdown`, then resigns gracefully.
pub async fn serve(
    config: ControllerNodeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind --controller-listen {}: {e}", config.listen))?;
    let node = start(config)?;
    let addr = listener.local_addr()?;
    println!(
        "kcheck controller {} listening on {addr}",
        node.config.node_id
    );
    serve_node(listener, node.clone(), shutdown).await;
    node.resign();
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

pub async fn serve_node(
    listener: TcpListener,
    node: Arc<ControllerNode>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let accept = async {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let n = node.clone();
                    tokio::spawn(async move {
                        if let Err(Close(why)) = connection(n, stream).await {
                            tracing::debug!(%peer, reason = %why, "closing controller connection");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = shutdown => {}
    }
}

const MAX_REQUEST_BYTES: usize = 16 << 20;

async fn connection(node: Arc<ControllerNode>, stream: TcpStream) -> Result<(), Close> {
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut wr = BufWriter::new(wr);
    loop {
        let len = match rd.read_i32().await {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(Close(format!("read error: {e}"))),
        };
        if len < 0 || len as usize > MAX_REQUEST_BYTES {
            return Err(Close(format!(
                "request frame of {len} bytes exceeds the limit"
            )));
        }
        let mut frame = BytesMut::zeroed(len as usize);
        rd.read_exact(&mut frame)
            .await
            .map_err(|e| Close(format!("truncated frame: {e}")))?;
        let resp = handle_frame(&node, frame.freeze()).await?;
        let io = async {
            wr.write_i32(resp.len() as i32).await?;
            wr.write_all(&resp).await?;
            wr.flush().await
        };
        io.await.map_err(|e| Close(format!("write error: {e}")))?;
    }
}

fn api_versions() -> ApiVersionsResponse {
    let keys = ApiKey::iter()
        .filter_map(|k| {
            let (min, max) = controller_versions(k)?;
            Some(
                ApiVersion::default()
                    .with_api_key(k as i16)
                    .with_min_version(min)
                    .with_max_version(max),
            )
        })
        .collect();
    ApiVersionsResponse::default().with_api_keys(keys)
}

async fn handle_frame(node: &Arc<ControllerNode>, frame: Bytes) -> Result<Bytes, Close> {
    let mut f = match decode_frame_with(frame, controller_versions)? {
        Ok(f) => f,
        Err((_, correlation)) => {
            let mut r = api_versions();
            r.error_code = 35; // UNSUPPORTED_VERSION
            return encode_response(correlation, 0, &r);
        }
    };
    let corr = f.header.correlation_id;
    let v = f.version;
    let bad = |what: &str| Close(format!("malformed {what}: no __cluster_metadata partition"));
    match f.key {
        ApiKey::ApiVersions => {
            let _: ApiVersionsRequest = decode(&mut f)?;
            encode_response(corr, v, &api_versions())
        }
        ApiKey::Vote => {
            let req: VoteRequest = decode(&mut f)?;
            let r = vote_from_wire(&req).ok_or_else(|| bad("Vote"))?;
            let Response::Vote {
                error,
                leader_epoch,
                leader_id,
                vote_granted,
            } = node.raft_request(r)
            else {
                unreachable!()
            };
            let resp =
                VoteResponse::default().with_topics(vec![vote_response::TopicData::default()
                    .with_topic_name(metadata_topic())
                    .with_partitions(vec![vote_response::PartitionData::default()
                        .with_error_code(error.code())
                        .with_leader_id(BrokerId(leader_id.unwrap_or(-1)))
                        .with_leader_epoch(leader_epoch)
                        .with_vote_granted(vote_granted)])]);
            encode_response(corr, v, &resp)
        }
        ApiKey::BeginQuorumEpoch => {
            let req: BeginQuorumEpochRequest = decode(&mut f)?;
            let p = req
                .topics
                .first()
                .and_then(|t| t.partitions.first())
                .ok_or_else(|| bad("BeginQuorumEpoch"))?;
            let r = Request::BeginQuorumEpoch {
                leader_epoch: p.leader_epoch,
                leader_id: p.leader_id.0,
            };
            let Response::BeginQuorumEpoch {
                error,
                leader_epoch,
                leader_id,
            } = node.raft_request(r)
            else {
                unreachable!()
            };
            let resp = BeginQuorumEpochResponse::default().with_topics(vec![
                begin_quorum_epoch_response::TopicData::default()
                    .with_topic_name(metadata_topic())
                    .with_partitions(vec![begin_quorum_epoch_response::PartitionData::default()
                        .with_error_code(error.code())
                        .with_leader_id(BrokerId(leader_id.unwrap_or(-1)))
                        .with_leader_epoch(leader_epoch)]),
            ]);
            encode_response(corr, v, &resp)
        }
        ApiKey::EndQuorumEpoch => {
            let req: EndQuorumEpochRequest = decode(&mut f)?;
            let p = req
                .topics
                .first()
                .and_then(|t| t.partitions.first())
                .ok_or_else(|| bad("EndQuorumEpoch"))?;
            let r = Request::EndQuorumEpoch {
                leader_epoch: p.leader_epoch,
                leader_id: p.leader_id.0,
                preferred_successors: p.preferred_successors.clone(),
            };
            let Response::EndQuorumEpoch {
                error,
                leader_epoch,
                leader_id,
            } = node.raft_request(r)
            else {
                unreachable!()
            };
            let resp = EndQuorumEpochResponse::default().with_topics(vec![
                end_quorum_epoch_response::TopicData::default()
                    .with_topic_name(metadata_topic())
                    .with_partitions(vec![end_quorum_epoch_response::PartitionData::default()
                        .with_error_code(error.code())
                        .with_leader_id(BrokerId(leader_id.unwrap_or(-1)))
                        .with_leader_epoch(leader_epoch)]),
            ]);
            encode_response(corr, v, &resp)
        }
        ApiKey::Fetch => {
            let req: FetchRequest = decode(&mut f)?;
            let Some(r) = fetch_from_wire(&req) else {
                let resp = FetchResponse::default().with_error_code(UNKNOWN_TOPIC_OR_PARTITION);
                return encode_response(corr, v, &resp);
            };
            let Request::Fetch {
                fetch_offset,
                replica_id,
                ..
            } = r
            else {
                unreachable!()
            };
            // Test control: an observer's Fetch is lost unless the replayer let it through.
            let observer = node
                .test
                .as_ref()
                .filter(|_| !node.config.voters.contains_key(&replica_id));
            if let Some(t) = observer {
                if !t.admit_observer_fetch(replica_id) {
                    return Err(Close(format!(
                        "test control: Fetch of observer {replica_id} held (lost)"
                    )));
                }
            }
            let resp = node.raft_request(r);
            let out = encode_response(corr, v, &fetch_response_to_wire(fetch_offset, &resp));
            if let Some(t) = observer {
                t.observer_fetch_handled(replica_id);
            }
            out
        }
        ApiKey::DescribeQuorum => {
            let _: DescribeQuorumRequest = decode(&mut f)?;
            encode_response(corr, v, &describe_quorum(node))
        }
        ApiKey::BrokerRegistration => {
            let req: BrokerRegistrationRequest = decode(&mut f)?;
            let endpoint = req
                .listeners
                .first()
                .map(|l| format!("{}:{}", l.host.as_str(), l.port))
                .unwrap_or_default();
            let previous = if v >= 3 {
                req.previous_broker_epoch
            } else {
                -1
            };
            let res = node
                .write(|c, now| {
                    Ok(c.register_broker(
                        now,
                        req.broker_id.0,
                        req.incarnation_id,
                        endpoint,
                        previous,
                    ))
                })
                .await;
            let resp = match res {
                Ok(epoch) => BrokerRegistrationResponse::default().with_broker_epoch(epoch),
                Err(code) => BrokerRegistrationResponse::default()
                    .with_error_code(code)
                    .with_broker_epoch(-1),
            };
            encode_response(corr, v, &resp)
        }
        ApiKey::BrokerHeartbeat => {
            let req: BrokerHeartbeatRequest = decode(&mut f)?;
            let res = node
                .write(|c, now| {
                    c.heartbeat(
                        now,
                        req.broker_id.0,
                        req.broker_epoch,
                        req.current_metadata_offset,
                        req.want_fence,
                        req.want_shut_down,
                    )
                })
                .await;
            let resp = match res {
                Ok(r) => BrokerHeartbeatResponse::default()
                    .with_is_caught_up(r.is_caught_up)
                    .with_is_fenced(r.is_fenced)
                    .with_should_shut_down(r.should_shut_down),
                Err(code) => BrokerHeartbeatResponse::default()
                    .with_error_code(code)
                    .with_is_fenced(true),
            };
            encode_response(corr, v, &resp)
        }
        ApiKey::AlterPartition => {
            let req: AlterPartitionRequest = decode(&mut f)?;
            encode_response(corr, v, &alter_partition(node, req, v).await)
        }
        ApiKey::CreateTopics => {
            let req: CreateTopicsRequest = decode(&mut f)?;
            encode_response(corr, v, &create_topics(node, req, v).await)
        }
        ApiKey::AlterPartitionReassignments => {
            let req: AlterPartitionReassignmentsRequest = decode(&mut f)?;
            encode_response(corr, v, &alter_reassignments(node, req).await)
        }
        ApiKey::ListPartitionReassignments => {
            let req: ListPartitionReassignmentsRequest = decode(&mut f)?;
            encode_response(corr, v, &list_reassignments(node, req))
        }
        other => Err(Close(format!(
            "API {other:?} is not served on the controller listener"
        ))),
    }
}

fn describe_quorum(node: &ControllerNode) -> DescribeQuorumResponse {
    use describe_quorum_response as dq;
    let g = node.lock();
    let mut p = dq::PartitionData::default()
        .with_leader_id(BrokerId(g.raft.leader_id().unwrap_or(-1)))
        .with_leader_epoch(g.raft.leader_epoch())
        .with_high_watermark(g.raft.high_watermark());
    if g.raft.role() != Role::Leader {
        p.error_code = 6; // NOT_LEADER_OR_FOLLOWER: ask the leader
    }
    let state = |id: NodeId, leo: i64| {
        dq::ReplicaState::default()
            .with_replica_id(BrokerId(id))
            .with_log_end_offset(leo)
    };
    for v in g.raft.voters() {
        let leo = if *v == node.config.node_id {
            g.raft.log_end_offset()
        } else {
            g.raft
                .replica_states()
                .get(v)
                .map_or(-1, |r| r.log_end_offset)
        };
        p.current_voters.push(state(*v, leo));
    }
    for (id, r) in g.raft.replica_states() {
        if !g.raft.voters().contains(id) {
            p.observers.push(state(*id, r.log_end_offset));
        }
    }
    DescribeQuorumResponse::default().with_topics(vec![dq::TopicData::default()
        .with_topic_name(metadata_topic())
        .with_partitions(vec![p])])
}

async fn alter_partition(
    node: &ControllerNode,
    req: AlterPartitionRequest,
    v: i16,
) -> AlterPartitionResponse {
    use alter_partition_response as ap;
    let broker_id = req.broker_id.0;
    let broker_epoch = req.broker_epoch;
    let items: Vec<AlterItem> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(move |p| AlterItem {
                topic_id: t.topic_id,
                partition_id: p.partition_index,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                new_isr: if v >= 3 {
                    p.new_isr_with_epochs
                        .iter()
                        .map(|b| (b.broker_id.0, b.broker_epoch))
                        .collect()
                } else {
                    p.new_isr.iter().map(|b| (b.0, -1)).collect()
                },
            })
        })
        .collect();
    let res = node
        .write(|c, _| {
            let mut records = Vec::new();
            let results: Vec<_> = items
                .iter()
                .map(|i| c.alter_partition(broker_id, broker_epoch, i, &mut records))
                .collect();
            Ok((results, records))
        })
        .await;
    let results = match res {
        Ok(r) => r,
        Err(code) => return AlterPartitionResponse::default().with_error_code(code),
    };
    let mut topics: Vec<ap::TopicData> = Vec::new();
    for (item, r) in items.iter().zip(results) {
        let mut p = ap::PartitionData::default().with_partition_index(item.partition_id);
        match r {
            Ok(reg) => {
                p.leader_id = BrokerId(reg.leader);
                p.leader_epoch = reg.leader_epoch;
                p.isr = reg.isr.iter().map(|b| BrokerId(*b)).collect();
                p.partition_epoch = reg.partition_epoch;
            }
            Err(e) => p.error_code = e.code(),
        }
        match topics.iter_mut().find(|t| t.topic_id == item.topic_id) {
            Some(t) => t.partitions.push(p),
            None => topics.push(
                ap::TopicData::default()
                    .with_topic_id(item.topic_id)
                    .with_partitions(vec![p]),
            ),
        }
    }
    AlterPartitionResponse::default().with_topics(topics)
}

async fn create_topics(
    node: &ControllerNode,
    req: CreateTopicsRequest,
    v: i16,
) -> CreateTopicsResponse {
    use create_topics_response::CreatableTopicResult;
    let mut out = Vec::new();
    for t in req.topics {
        let name = t.name.0.to_string();
        let (parts, rf) = (t.num_partitions, t.replication_factor);
        let validate_only = req.validate_only;
        let res = node
            .write(|c, _| {
                if validate_only {
                    return Ok(((uuid::Uuid::nil(), 0, 0), Vec::new()));
                }
                let (id, records) = c.create_topic(&name, parts, rf)?;
                let reg = &c.image().topics[&id].partitions;
                let rf = reg.values().next().map_or(0, |p| p.replicas.len() as i16);
                Ok(((id, reg.len() as i32, rf), records))
            })
            .await;
        let mut r = CreatableTopicResult::default().with_name(t.name);
        match res {
            Ok((id, n, rf)) => {
                if v >= 7 {
                    r.topic_id = id;
                }
                if v >= 5 {
                    r.num_partitions = n;
                    r.replication_factor = rf;
                }
            }
            Err(code) => r.error_code = code,
        }
        out.push(r);
    }
    CreateTopicsResponse::default().with_topics(out)
}

async fn alter_reassignments(
    node: &ControllerNode,
    req: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    use alter_partition_reassignments_response as ar;
    let items: Vec<(String, i32, Option<Vec<i32>>)> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(move |p| {
                (
                    t.name.0.to_string(),
                    p.partition_index,
                    p.replicas.as_ref().map(|r| r.iter().map(|b| b.0).collect()),
                )
            })
        })
        .collect();
    let res = node
        .write(|c, _| {
            let mut records = Vec::new();
            let results: Vec<_> = items
                .iter()
                .map(|(t, p, target)| c.alter_reassignment(t, *p, target.clone(), &mut records))
                .collect();
            Ok((results, records))
        })
        .await;
    let results = match res {
        Ok(r) => r,
        Err(code) => return AlterPartitionReassignmentsResponse::default().with_error_code(code),
    };
    let mut topics: Vec<ar::ReassignableTopicResponse> = Vec::new();
    for ((t, p, _), r) in items.iter().zip(results) {
        let mut pr = ar::ReassignablePartitionResponse::default().with_partition_index(*p);
        if let Err(e) = r {
            pr.error_code = e.code();
        }
        match topics.iter_mut().find(|x| x.name.0.as_str() == t) {
            Some(x) => x.partitions.push(pr),
            None => topics.push(
                ar::ReassignableTopicResponse::default()
                    .with_name(TopicName(s(t)))
                    .with_partitions(vec![pr]),
            ),
        }
    }
    AlterPartitionReassignmentsResponse::default().with_responses(topics)
}

fn list_reassignments(
    node: &ControllerNode,
    req: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    use list_partition_reassignments_response as lr;
    let g = node.lock();
    let Some(c) = g.controller.as_ref() else {
        return ListPartitionReassignmentsResponse::default().with_error_code(NOT_CONTROLLER);
    };
    let names: Option<Vec<String>> = req
        .topics
        .as_ref()
        .map(|ts| ts.iter().map(|t| t.name.0.to_string()).collect());
    let wanted = |t: &str, p: i32| {
        req.topics.as_ref().is_none_or(|ts| {
            ts.iter()
                .any(|x| x.name.0.as_str() == t && x.partition_indexes.contains(&p))
        })
    };
    let mut topics: Vec<lr::OngoingTopicReassignment> = Vec::new();
    for r in c.list_reassignments(names.as_deref()) {
        if !wanted(&r.topic, r.partition_id) {
            continue;
        }
        let p = lr::OngoingPartitionReassignment::default()
            .with_partition_index(r.partition_id)
            .with_replicas(r.replicas.iter().map(|b| BrokerId(*b)).collect())
            .with_adding_replicas(r.adding_replicas.iter().map(|b| BrokerId(*b)).collect())
            .with_removing_replicas(r.removing_replicas.iter().map(|b| BrokerId(*b)).collect());
        match topics.iter_mut().find(|x| x.name.0.as_str() == r.topic) {
            Some(x) => x.partitions.push(p),
            None => topics.push(
                lr::OngoingTopicReassignment::default()
                    .with_name(TopicName(s(&r.topic)))
                    .with_partitions(vec![p]),
            ),
        }
    }
    ListPartitionReassignmentsResponse::default().with_topics(topics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::frame_request;
    use kafka_protocol::protocol::{Decodable, Encodable};
    use proptest::prelude::*;

    fn round_trip<T: Encodable + Decodable>(v: &T, version: i16) -> T {
        let mut buf = BytesMut::new();
        v.encode(&mut buf, version).unwrap();
        T::decode(&mut buf.freeze(), version).unwrap()
    }

    #[test]
    fn kraft_requests_survive_the_kafka_codecs() {
        let vote = Request::Vote {
            candidate_epoch: 7,
            candidate_id: 2,
            last_offset_epoch: 6,
            last_offset: 41,
            pre_vote: true,
        };
        let WireRequest::Vote(w) = request_to_wire(&vote) else {
            panic!()
        };
        assert_eq!(vote_from_wire(&round_trip(&w, VOTE_VERSION)), Some(vote));
        let fetch = Request::Fetch {
            replica_id: 101,
            current_leader_epoch: 3,
            fetch_offset: 17,
            last_fetched_epoch: 2,
        };
        let WireRequest::Fetch(w) = request_to_wire(&fetch) else {
            panic!()
        };
        assert_eq!(fetch_from_wire(&round_trip(&w, FETCH_VERSION)), Some(fetch));
        // A Fetch for a data topic is not KRaft's.
        let mut w = w;
        w.topics[0].topic = TopicName(s("orders"));
        assert_eq!(fetch_from_wire(&w), None);
    }

    #[test]
    fn fetch_responses_carry_records_hw_and_diverging_epoch() {
        let records = vec![
            Entry {
                epoch: 2,
                control: true,
                value: Bytes::from_static(b"{}"),
            },
            Entry {
                epoch: 2,
                control: false,
                value: Bytes::from(MetadataRecord::NoOp.encode()),
            },
        ];
        for resp in [
            Response::Fetch {
                error: RaftError::None,
                leader_epoch: 2,
                leader_id: Some(1),
                high_watermark: 9,
                records: records.clone(),
                diverging_epoch: None,
            },
            Response::Fetch {
                error: RaftError::None,
                leader_epoch: 2,
                leader_id: Some(1),
                high_watermark: 9,
                records: vec![],
                diverging_epoch: Some((1, 4)),
            },
            Response::Fetch {
                error: RaftError::NotLeaderOrFollower,
                leader_epoch: 5,
                leader_id: None,
                high_watermark: 0,
                records: vec![],
                diverging_epoch: None,
            },
        ] {
            let wire = round_trip(&fetch_response_to_wire(10, &resp), FETCH_VERSION);
            assert_eq!(fetch_response_from_wire(10, &wire).unwrap(), resp);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        /// Mutated controller-listener requests never panic the frame decoder.
        #[test]
        fn mutated_controller_requests_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..5), cut in any::<usize>()) {
            let WireRequest::Vote(v) = request_to_wire(&Request::Vote { candidate_epoch: 1, candidate_id: 1, last_offset_epoch: 0, last_offset: 0, pre_vote: false }) else { panic!() };
            let mut f = frame_request(ApiKey::Vote, VOTE_VERSION, 1, &v).unwrap()[4..].to_vec();
            for (at, x) in flips { let n = f.len(); f[at % n] ^= x; }
            let keep = f.len() - cut % (f.len() / 2 + 1);
            f.truncate(keep);
            if let Ok(Ok(mut frame)) = decode_frame_with(Bytes::from(f), controller_versions) {
                if frame.key == ApiKey::Vote {
                    if let Ok(req) = decode::<VoteRequest>(&mut frame) {
                        let _ = vote_from_wire(&req);
                    }
                }
            }
        }
    }
}
