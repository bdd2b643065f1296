//! The replicated data plane's tokio adapters around the sans-IO [`crate::partition`] core:
//! the metadata-image listener (become leader / follower), one replica fetcher per leader
//! broker (Kafka's `ReplicaFetcherThread`: all partitions followed from that leader in one
//! Fetch v15 request over one TCP connection), the ISR-shrink timer, and the AlterPartition
//! sender. The protocol decisions stay in the core; this module only moves bytes and time.

use crate::broker::{FetchedPartition, RoleChange};
use crate::metadata::{BrokerId, MetadataImage, PartitionRegistration};
use crate::partition::{code as rcode, AlterPartitionRequest};
use crate::server::{frame_request, response_body, Shared};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ReplicaState};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, ApiKey,
    BrokerId as WireBrokerId, CreateTopicsRequest, CreateTopicsResponse, FetchRequest,
    FetchResponse, ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
};
use kafka_protocol::protocol::{Decodable, HeaderVersion};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a broker asks of the active controller (implemented over the controller RPCs by the
/// quorum's client; by an in-process fake in tests).
pub trait ControllerChannel: Send + Sync {
    /// AlterPartition (KIP-497): the partition's new registration, or the controller's error
    /// code (FENCED_LEADER_EPOCH, INVALID_UPDATE_VERSION, INELIGIBLE_REPLICA...).
    fn alter_partition(
        &self,
        topic_id: Uuid,
        request: AlterPartitionRequest,
    ) -> BoxFuture<Result<PartitionRegistration, i16>>;

    /// This broker's current broker epoch, which its Fetch requests carry (KIP-903's
    /// `ReplicaState.ReplicaEpoch`); `None` when unknown (the leader then uses its image).
    fn broker_epoch(&self) -> Option<crate::metadata::BrokerEpoch> {
        None
    }

    /// CreateTopics forwarded to the controller (KIP-590 style forwarding).
    fn create_topics(
        &self,
        request: CreateTopicsRequest,
        version: i16,
    ) -> BoxFuture<CreateTopicsResponse>;

    /// AlterPartitionReassignments forwarded to the controller (KIP-455).
    fn alter_partition_reassignments(
        &self,
        request: AlterPartitionReassignmentsRequest,
    ) -> BoxFuture<AlterPartitionReassignmentsResponse> {
        let _ = request;
        Box::pin(async {
            AlterPartitionReassignmentsResponse::default().with_error_code(NOT_CONTROLLER)
        })
    }

    /// ListPartitionReassignments forwarded to the controller (KIP-455).
    fn list_partition_reassignments(
        &self,
        request: ListPartitionReassignmentsRequest,
    ) -> BoxFuture<ListPartitionReassignmentsResponse> {
        let _ = request;
        Box::pin(async {
            ListPartitionReassignmentsResponse::default().with_error_code(NOT_CONTROLLER)
        })
    }
}

/// Kafka NOT_CONTROLLER: what a channel without a controller behind it answers.
const NOT_CONTROLLER: i16 = 41;

/// The cluster-mode handles the server keeps.
pub struct Cluster {
    pub image: watch::Receiver<Arc<MetadataImage>>,
    pub controller: Arc<dyn ControllerChannel>,
    fetchers: Mutex<HashMap<BrokerId, JoinHandle<()>>>,
    /// The hold points of `--test-control` (issue 9's replay of model traces); `None` in
    /// production, when nothing is ever held.
    pub test_control: Option<Arc<crate::test_control::TestControl>>,
}

impl Cluster {
    pub fn new(
        image: watch::Receiver<Arc<MetadataImage>>,
        controller: Arc<dyn ControllerChannel>,
    ) -> Self {
        Cluster {
            image,
            controller,
            fetchers: Mutex::new(HashMap::new()),
            test_control: None,
        }
    }

    /// Adds the test-only hold points (`kcheck broker --test-control`).
    pub fn with_test_control(mut self, control: Arc<crate::test_control::TestControl>) -> Self {
        self.test_control = Some(control);
        self
    }

    pub fn current_image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }
}

/// Fetcher settings (Kafka's `replica.fetch.*`).
const FETCH_MAX_WAIT_MS: i32 = 200;
const FETCH_MAX_BYTES: i32 = 16 << 20;
const FETCH_PARTITION_MAX_BYTES: i32 = 4 << 20;
const FETCH_BACKOFF: Duration = Duration::from_millis(50);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const ISR_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Starts the image listener and the ISR-shrink timer. The first image is applied before
/// this returns, so the broker never serves a partition it does not know the role of.
pub fn start(shared: Arc<Shared>) {
    apply_current_image(&shared);
    let s = shared.clone();
    tokio::spawn(async move {
        let Some(cluster) = s.cluster.as_ref() else {
            return;
        };
        let mut rx = cluster.image.clone();
        while rx.changed().await.is_ok() {
            apply_current_image(&s);
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ISR_CHECK_INTERVAL);
        loop {
            tick.tick().await;
            let now = shared.now_ms();
            let requests = shared.lock().shrink_isrs(now);
            for (topic_id, topic, req) in requests {
                tracing::info!(%topic, partition = req.partition, isr = ?req.new_isr(), "ISR shrink: sending AlterPartition");
                send_alter_partition(shared.clone(), topic_id, topic, req);
            }
        }
    });
}

fn apply_current_image(shared: &Arc<Shared>) {
    let Some(cluster) = shared.cluster.as_ref() else {
        return;
    };
    let image = cluster.current_image();
    let now = shared.now_ms();
    let changes: Vec<RoleChange> = {
        let mut b = shared.lock();
        let changes = b.apply_image(&image, now);
        shared.deliver_acks(&mut b);
        changes
    };
    if !changes.is_empty() {
        tracing::debug!(
            changes = changes.len(),
            offset = image.offset,
            "applied metadata image"
        );
        shared.appended.notify_waiters();
    }
    ensure_fetchers(shared);
}

/// One fetcher task per leader broker that some local follower replica fetches from.
fn ensure_fetchers(shared: &Arc<Shared>) {
    let Some(cluster) = shared.cluster.as_ref() else {
        return;
    };
    let leaders: Vec<BrokerId> = {
        let b = shared.lock();
        let mut ls: Vec<BrokerId> = b
            .topics
            .values()
            .flat_map(|t| &t.partitions)
            .filter_map(|r| r.state.following())
            .collect();
        ls.sort_unstable();
        ls.dedup();
        ls
    };
    let mut fetchers = cluster.fetchers.lock().unwrap_or_else(|p| p.into_inner());
    fetchers.retain(|_, h| !h.is_finished());
    for leader in leaders {
        fetchers
            .entry(leader)
            .or_insert_with(|| tokio::spawn(fetcher(shared.clone(), leader)));
    }
}

/// Hands an AlterPartition to the controller and feeds the answer back to the core.
pub fn send_alter_partition(
    shared: Arc<Shared>,
    topic_id: Uuid,
    topic: String,
    req: AlterPartitionRequest,
) {
    let Some(cluster) = shared.cluster.as_ref() else {
        return;
    };
    let controller = cluster.controller.clone();
    let control = cluster.test_control.clone();
    tokio::spawn(async move {
        let partition = req.partition;
        if let Some(c) = &control {
            c.alter_partition.pass().await;
        }
        let result = controller.alter_partition(topic_id, req).await;
        if let Some(c) = &control {
            c.alter_partition.done();
        }
        if let Err(c) = &result {
            tracing::info!(%topic, partition, error_code = c, "AlterPartition refused");
        }
        let now = shared.now_ms();
        let mut b = shared.lock();
        if let Ok(r) = b.replica_mut(&topic, partition) {
            let hw_before = r.state.high_watermark;
            let t = r
                .state
                .on_alter_partition_response(result.as_ref().map_err(|c| *c), now);
            crate::broker::trace_transition(&topic, r, &t, hw_before);
        }
        shared.deliver_acks(&mut b);
    });
}

/// A partition the fetcher asks for, with the epoch it was asked in.
struct Wanted {
    topic: String,
    topic_id: Uuid,
    partition: i32,
    leader_epoch: i32,
    fetch_offset: i64,
    last_fetched_epoch: i32,
}

fn wanted_from(shared: &Shared, leader: BrokerId) -> Vec<Wanted> {
    let b = shared.lock();
    let mut out = Vec::new();
    for (name, t) in &b.topics {
        for r in &t.partitions {
            if r.state.following() == Some(leader) {
                let (fetch_offset, last_fetched_epoch) = r.state.fetch_position(r.log.epochs());
                out.push(Wanted {
                    topic: name.clone(),
                    topic_id: t.id,
                    partition: r.state.partition,
                    leader_epoch: r.state.leader_epoch,
                    fetch_offset,
                    last_fetched_epoch,
                });
            }
        }
    }
    out
}

/// The replica fetcher for one leader broker. Ends when no local replica follows it.
async fn fetcher(shared: Arc<Shared>, leader: BrokerId) {
    let Some(cluster) = shared.cluster.as_ref() else {
        return;
    };
    let me = shared.lock().config.node_id;
    let mut conn: Option<TcpStream> = None;
    let mut correlation = 0i32;
    tracing::info!(leader, "replica fetcher started");
    loop {
        let wanted = wanted_from(&shared, leader);
        if wanted.is_empty() {
            tracing::info!(leader, "replica fetcher stopped: nothing to follow");
            return;
        }
        // `--peer-address` (a harness's per-link proxy) before the registered endpoint, which
        // is what clients are told.
        let peer = shared
            .lock()
            .config
            .replication
            .peer_addresses
            .get(&leader)
            .cloned();
        let endpoint = peer.or_else(|| {
            cluster
                .current_image()
                .brokers
                .get(&leader)
                .map(|b| b.endpoint.clone())
        });
        let Some(endpoint) = endpoint else {
            tokio::time::sleep(FETCH_BACKOFF).await;
            continue;
        };
        if conn.is_none() {
            match tokio::time::timeout(FETCH_TIMEOUT, TcpStream::connect(&endpoint)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    conn = Some(s);
                }
                _ => {
                    tokio::time::sleep(FETCH_BACKOFF).await;
                    continue;
                }
            }
        }
        // A replay may hold this broker's fetchers between rounds (`--test-control`): the
        // request is built after the gate opens, from the replica's position then.
        let wanted = match &cluster.test_control {
            Some(c) => {
                c.fetcher.pass().await;
                let wanted = wanted_from(&shared, leader);
                if wanted.is_empty() {
                    tracing::info!(leader, "replica fetcher stopped: nothing to follow");
                    return;
                }
                wanted
            }
            None => wanted,
        };
        correlation = correlation.wrapping_add(1);
        let epoch = cluster.controller.broker_epoch().unwrap_or(-1);
        let mut request = fetch_request(me, epoch, &wanted);
        if cluster
            .test_control
            .as_ref()
            .is_some_and(|c| c.fetcher.is_held())
        {
            // A stepped round is answered at once: a long poll would be re-read when it
            // expires and carry the HW this very fetch moved, where the model's follower
            // learns it one round later.
            request.max_wait_ms = 0;
        }
        let stream = conn.as_mut().expect("connected above");
        let response =
            tokio::time::timeout(FETCH_TIMEOUT, round_trip(stream, correlation, &request)).await;
        let response = match response {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(leader, error = %e, "fetch failed; reconnecting");
                conn = None;
                tokio::time::sleep(FETCH_BACKOFF).await;
                continue;
            }
            Err(_) => {
                conn = None;
                continue;
            }
        };
        let mut backoff = response.error_code != 0;
        let mut changed = false;
        {
            let mut b = shared.lock();
            for t in &response.responses {
                for p in &t.partitions {
                    let Some(w) = wanted
                        .iter()
                        .find(|w| w.topic_id == t.topic_id && w.partition == p.partition_index)
                    else {
                        continue;
                    };
                    let fetched =
                        if p.diverging_epoch.epoch >= 0 || p.diverging_epoch.end_offset >= 0 {
                            FetchedPartition::Diverging {
                                epoch: p.diverging_epoch.epoch,
                                end_offset: p.diverging_epoch.end_offset,
                            }
                        } else if p.error_code == rcode::OFFSET_OUT_OF_RANGE {
                            // The leader's HW is a lower bound of its LEO (only reachable without
                            // an epoch check, i.e. under truncate-to-hw).
                            FetchedPartition::OffsetOutOfRange {
                                leader_log_end_offset: p.high_watermark.max(0),
                            }
                        } else if p.error_code != 0 {
                            // FENCED_LEADER_EPOCH / UNKNOWN_LEADER_EPOCH / NOT_LEADER_OR_FOLLOWER:
                            // wait for the metadata image to catch up.
                            backoff = true;
                            continue;
                        } else {
                            FetchedPartition::Records {
                                records: p.records.as_ref().map_or_else(Vec::new, |r| r.to_vec()),
                                high_watermark: p.high_watermark,
                            }
                        };
                    match b.on_fetch_response(&w.topic, w.partition, w.leader_epoch, fetched) {
                        Ok(c) => changed |= c,
                        Err(c) => {
                            tracing::warn!(topic = %w.topic, partition = w.partition, error_code = c, "follower could not apply a fetch");
                            backoff = true;
                        }
                    }
                }
            }
        }
        if changed {
            shared.appended.notify_waiters();
        }
        if let Some(c) = &cluster.test_control {
            c.fetcher.done();
        }
        if backoff {
            tokio::time::sleep(FETCH_BACKOFF).await;
        }
    }
}

fn fetch_request(
    me: BrokerId,
    broker_epoch: crate::metadata::BrokerEpoch,
    wanted: &[Wanted],
) -> FetchRequest {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for w in wanted {
        let p = FetchPartition::default()
            .with_partition(w.partition)
            .with_current_leader_epoch(w.leader_epoch)
            .with_fetch_offset(w.fetch_offset)
            .with_last_fetched_epoch(w.last_fetched_epoch)
            .with_log_start_offset(-1)
            .with_partition_max_bytes(FETCH_PARTITION_MAX_BYTES);
        match topics.iter_mut().find(|t| t.topic_id == w.topic_id) {
            Some(t) => t.partitions.push(p),
            None => topics.push(
                FetchTopic::default()
                    .with_topic_id(w.topic_id)
                    .with_partitions(vec![p]),
            ),
        }
    }
    FetchRequest::default()
        .with_replica_state(
            ReplicaState::default()
                .with_replica_id(WireBrokerId(me))
                .with_replica_epoch(broker_epoch),
        )
        .with_max_wait_ms(FETCH_MAX_WAIT_MS)
        .with_min_bytes(1)
        .with_max_bytes(FETCH_MAX_BYTES)
        .with_session_epoch(-1)
        .with_topics(topics)
}

/// The Fetch version replica fetchers use: v12 carries the last fetched epoch and answers
/// with the diverging epoch (KIP-595's scheme adopted for replication in Kafka 2.7); v13
/// names topics by id (KIP-516); v15 carries the follower's broker epoch (KIP-903), so a
/// leader can tell a fetch of a killed incarnation from the restarted one's.
pub const REPLICA_FETCH_VERSION: i16 = 15;

async fn round_trip(
    stream: &mut TcpStream,
    correlation: i32,
    request: &FetchRequest,
) -> anyhow::Result<FetchResponse> {
    let frame = frame_request(ApiKey::Fetch, REPLICA_FETCH_VERSION, correlation, request)?;
    stream.write_all(&frame).await?;
    let len = stream.read_i32().await?;
    anyhow::ensure!(
        (0..=(64 << 20)).contains(&len),
        "fetch response length {len} out of range"
    );
    let mut buf = BytesMut::zeroed(len as usize);
    stream.read_exact(&mut buf).await?;
    let (c, mut body) = response_body(
        Bytes::from(buf),
        FetchResponse::header_version(REPLICA_FETCH_VERSION),
    )?;
    anyhow::ensure!(c == correlation, "correlation id {c} != {correlation}");
    Ok(FetchResponse::decode(&mut body, REPLICA_FETCH_VERSION)?)
}

/// The quorum's controller client as the data plane's [`ControllerChannel`].
pub struct ClientChannel(pub Arc<crate::controller_client::ControllerClient>);

impl ControllerChannel for ClientChannel {
    fn broker_epoch(&self) -> Option<crate::metadata::BrokerEpoch> {
        self.0.session().borrow().broker_epoch
    }

    fn alter_partition(
        &self,
        topic_id: Uuid,
        request: AlterPartitionRequest,
    ) -> BoxFuture<Result<PartitionRegistration, i16>> {
        let client = self.0.clone();
        Box::pin(async move {
            let item = crate::controller::AlterPartitionRequest {
                topic_id,
                partition_id: request.partition,
                leader_epoch: request.leader_epoch,
                partition_epoch: request.partition_epoch,
                new_isr: request.new_isr_with_epochs.clone(),
            };
            match client.alter_partition(item).await {
                Ok(Ok(r)) => {
                    // The answer names leader, epochs and ISR; the rest of the registration
                    // is the image's (the change record is committed before the answer).
                    let image = client.image().borrow().clone();
                    let mut reg = image
                        .topics
                        .get(&topic_id)
                        .and_then(|t| t.partitions.get(&request.partition))
                        .cloned()
                        .ok_or(rcode::NOT_LEADER_OR_FOLLOWER)?;
                    reg.leader = r.leader;
                    reg.leader_epoch = r.leader_epoch;
                    reg.isr = r.isr;
                    reg.partition_epoch = r.partition_epoch;
                    Ok(reg)
                }
                Ok(Err(code)) => Err(code),
                Err(e) => {
                    tracing::warn!(error = %e, "AlterPartition not answered");
                    Err(REQUEST_TIMED_OUT)
                }
            }
        })
    }

    fn create_topics(
        &self,
        request: CreateTopicsRequest,
        version: i16,
    ) -> BoxFuture<CreateTopicsResponse> {
        let client = self.0.clone();
        Box::pin(async move {
            match client.create_topics(version, &request).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "CreateTopics not answered by the controller");
                    let topics = request
                        .topics
                        .into_iter()
                        .map(|t| {
                            kafka_protocol::messages::create_topics_response::CreatableTopicResult::default()
                                .with_name(t.name)
                                .with_error_code(REQUEST_TIMED_OUT)
                        })
                        .collect();
                    CreateTopicsResponse::default().with_topics(topics)
                }
            }
        })
    }

    fn alter_partition_reassignments(
        &self,
        request: AlterPartitionReassignmentsRequest,
    ) -> BoxFuture<AlterPartitionReassignmentsResponse> {
        let client = self.0.clone();
        Box::pin(async move {
            client
                .alter_partition_reassignments(&request)
                .await
                .unwrap_or_else(|e| {
                    AlterPartitionReassignmentsResponse::default().with_error_code(
                        ClientChannel::forward_failed(e, "AlterPartitionReassignments"),
                    )
                })
        })
    }

    fn list_partition_reassignments(
        &self,
        request: ListPartitionReassignmentsRequest,
    ) -> BoxFuture<ListPartitionReassignmentsResponse> {
        let client = self.0.clone();
        Box::pin(async move {
            client
                .list_partition_reassignments(&request)
                .await
                .unwrap_or_else(|e| {
                    ListPartitionReassignmentsResponse::default().with_error_code(
                        ClientChannel::forward_failed(e, "ListPartitionReassignments"),
                    )
                })
        })
    }
}

/// Kafka REQUEST_TIMED_OUT.
const REQUEST_TIMED_OUT: i16 = 7;

impl ClientChannel {
    fn forward_failed(e: anyhow::Error, what: &str) -> i16 {
        tracing::warn!(error = %e, "{what} not answered by the controller");
        REQUEST_TIMED_OUT
    }
}
