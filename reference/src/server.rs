//! Thin tokio adapter: TCP framing, the `kafka-protocol` codecs, and dispatch to [`Broker`].
//!
//! Requests on one connection are handled one at a time, in order (as Kafka mutes a channel
//! while a request is in flight), so producer ordering holds. Anything malformed closes the
//! connection with a log line; nothing read from the network can panic the broker.

use crate::broker::{code, Broker, BrokerConfig};
use crate::group::{JoinRequest, Reply, RequestId};
use crate::log::FlushPolicy;
use crate::offsets::Committed;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};

/// The versions this broker speaks (intersected with what the codec crate knows). Capped
/// below the topic-id based Produce versions (KIP-516) and KIP-848 commit versions; Fetch
/// goes to v15, whose `ReplicaState.ReplicaEpoch` lets a leader tell a follower's
/// incarnations apart (KIP-903), naming topics by id from v13.
pub fn supported_versions(key: ApiKey) -> Option<(i16, i16)> {
    let (min, max) = match key {
        ApiKey::Produce => (3, 9),
        ApiKey::Fetch => (4, 15),
        ApiKey::ListOffsets => (1, 7),
        ApiKey::Metadata => (0, 12),
        ApiKey::OffsetCommit => (2, 8),
        ApiKey::OffsetFetch => (1, 7),
        ApiKey::FindCoordinator => (0, 4),
        ApiKey::JoinGroup => (0, 7),
        ApiKey::Heartbeat => (0, 4),
        ApiKey::LeaveGroup => (0, 4),
        ApiKey::SyncGroup => (0, 5),
        ApiKey::ApiVersions => (0, 4),
        ApiKey::CreateTopics => (2, 7),
        ApiKey::DeleteTopics => (1, 6),
        // Forwarded to the controller in cluster mode (KIP-455).
        ApiKey::AlterPartitionReassignments => (0, 0),
        ApiKey::ListPartitionReassignments => (0, 0),
        _ => return None,
    };
    let v = key.valid_versions();
    let (min, max) = (min.max(v.min), max.min(v.max));
    (min <= max).then_some((min, max))
}

pub struct Shared {
    pub broker: Mutex<Broker>,
    /// Woken on every append so long-polling fetches re-check (Kafka's DelayedFetch purgatory).
    pub(crate) appended: Notify,
    /// Cluster mode: the metadata image and the controller channel.
    pub(crate) cluster: Option<crate::replication::Cluster>,
    /// ZooKeeper mode: the node that answers the controller's LeaderAndIsr and UpdateMetadata.
    pub(crate) zk: Option<Arc<crate::zk_controller::ZkNode>>,
    /// acks=all produce requests waiting for the HW (Kafka's DelayedProduce purgatory).
    acks: Mutex<HashMap<u64, oneshot::Sender<i16>>>,
    next_ack: AtomicU64,
    waiters: Mutex<HashMap<RequestId, oneshot::Sender<Reply>>>,
    next_request: AtomicU64,
    started: Instant,
    host: String,
    port: i32,
}

impl Shared {
    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
    /// Answers the acks=all requests the partition cores decided (call with the lock held,
    /// after anything that can move a HW).
    pub(crate) fn deliver_acks(&self, b: &mut Broker) {
        let done = b.take_completed_acks();
        if done.is_empty() {
            return;
        }
        let mut w = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        for (id, code) in done {
            if let Some(tx) = w.remove(&id) {
                let _ = tx.send(code);
            }
        }
    }
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Broker> {
        self.broker.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn deliver(&self, replies: Vec<Reply>) {
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        for r in replies {
            let id = match &r {
                Reply::Join(id, _) | Reply::Sync(id, _, _) => *id,
            };
            if let Some(tx) = w.remove(&id) {
                let _ = tx.send(r);
            }
        }
    }
    fn wait_for(&self) -> (RequestId, oneshot::Receiver<Reply>) {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        (id, rx)
    }
}

/// A reason to drop the connection (logged by the caller).
#[derive(Debug)]
pub struct Close(pub String);

fn close<T>(msg: impl Into<String>) -> Result<T, Close> {
    Err(Close(msg.into()))
}

/// Binds the listener and serves until `shutdown` resolves. Prints the bound address.
pub async fn serve(
    config: BrokerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen).await?;
    serve_listener(listener, config, shutdown).await
}

/// Serves on an already bound listener (the benchmark binds port 0 and keeps the address).
pub async fn serve_listener(
    listener: TcpListener,
    config: BrokerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    serve_inner(listener, config, None, None, None, shutdown).await
}

/// Serves a broker of a replicated cluster: partitions lead and follow as the committed
/// metadata image says, followers fetch from their leaders, ISR changes and CreateTopics go
/// to the controller.
pub async fn serve_cluster(
    listener: TcpListener,
    config: BrokerConfig,
    image: tokio::sync::watch::Receiver<Arc<crate::metadata::MetadataImage>>,
    controller: Arc<dyn crate::replication::ControllerChannel>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    serve_cluster_with(listener, config, image, controller, None, shutdown).await
}

/// [`serve_cluster`] with the test-only control endpoint (`kcheck broker --test-control`)
/// listening on `test_control` when given.
pub async fn serve_cluster_with(
    listener: TcpListener,
    config: BrokerConfig,
    image: tokio::sync::watch::Receiver<Arc<crate::metadata::MetadataImage>>,
    controller: Arc<dyn crate::replication::ControllerChannel>,
    test_control: Option<TcpListener>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut cluster = crate::replication::Cluster::new(image, controller);
    let control = test_control.map(|l| {
        (
            l,
            Arc::new(crate::test_control::TestControl::fetcher_held()),
        )
    });
    if let Some((_, c)) = &control {
        cluster = cluster.with_test_control(c.clone());
    }
    serve_inner(listener, config, Some(cluster), control, None, shutdown).await
}

/// Serves a broker of a ZooKeeper-mode cluster: the same data plane as [`serve_cluster`], with
/// the image built from the controller's LeaderAndIsr and UpdateMetadata requests.
pub async fn serve_zookeeper(
    listener: TcpListener,
    config: BrokerConfig,
    node: Arc<crate::zk_controller::ZkNode>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let channel: Arc<dyn crate::replication::ControllerChannel> =
        Arc::new(crate::zk_controller::ZkChannel(node.clone()));
    let cluster = crate::replication::Cluster::new(node.image(), channel);
    serve_inner(listener, config, Some(cluster), None, Some(node), shutdown).await
}

async fn serve_inner(
    listener: TcpListener,
    config: BrokerConfig,
    cluster: Option<crate::replication::Cluster>,
    test_control: Option<(TcpListener, Arc<crate::test_control::TestControl>)>,
    zk: Option<Arc<crate::zk_controller::ZkNode>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let flush = config.flush;
    let mut broker = Broker::open(config)?;
    if cluster.is_some() {
        broker.enter_cluster_mode();
    }
    let shared = Arc::new(Shared {
        broker: Mutex::new(broker),
        appended: Notify::new(),
        cluster,
        zk,
        acks: Mutex::new(HashMap::new()),
        next_ack: AtomicU64::new(1),
        waiters: Mutex::new(HashMap::new()),
        next_request: AtomicU64::new(1),
        started: Instant::now(),
        host: addr.ip().to_string(),
        port: i32::from(addr.port()),
    });
    tracing::info!(%addr, "kcheck broker listening");
    println!("kcheck broker listening on {addr}");
    spawn_timers(shared.clone(), flush);
    if let Some((l, c)) = test_control {
        println!("kcheck broker test control on {}", l.local_addr()?);
        tokio::spawn(crate::test_control::serve(l, shared.clone(), c));
    }
    if shared.cluster.is_some() {
        crate::replication::start(shared.clone());
    }
    let accept = async {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let s = shared.clone();
                    tokio::spawn(async move {
                        if let Err(Close(why)) = connection(s, stream).await {
                            tracing::warn!(%peer, reason = %why, "closing connection");
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
    tracing::info!("shutting down: flushing and checkpointing");
    let mut b = shared.lock();
    let flushed = b.flush_all();
    b.checkpoint_all();
    flushed.map_err(|e| anyhow::anyhow!("shutdown could not flush every log: {e}"))
}

fn spawn_timers(shared: Arc<Shared>, flush: FlushPolicy) {
    let s = shared.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let replies = s.lock().groups.tick(s.now_ms());
            s.deliver(replies);
        }
    });
    let s = shared.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let s = s.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let snapshot = s.lock().checkpoint_snapshot();
                crate::broker::write_checkpoints(snapshot);
            })
            .await;
        }
    });
    if let FlushPolicy::IntervalMs(ms) = flush {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(ms.max(1)));
            loop {
                tick.tick().await;
                let s = shared.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let handles = s.lock().begin_flush_all();
                    for (topic, p, file, upto) in handles {
                        match file.sync_data() {
                            Ok(()) => s.lock().complete_flush(&topic, p, upto),
                            Err(e) => tracing::error!(topic, partition = p, error = %e, "periodic flush failed"),
                        }
                    }
                })
                .await;
            }
        });
    }
}

async fn connection(shared: Arc<Shared>, stream: TcpStream) -> Result<(), Close> {
    let max = shared.lock().config.max_request_bytes;
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    loop {
        let len = match rd.read_i32().await {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return close(format!("read error: {e}")),
        };
        if len < 0 || len as usize > max {
            return close(format!(
                "request frame of {len} bytes exceeds the limit of {max} bytes"
            ));
        }
        let mut frame = BytesMut::zeroed(len as usize);
        if let Err(e) = rd.read_exact(&mut frame).await {
            return close(format!("truncated frame (wanted {len} bytes): {e}"));
        }
        let response = handle_frame(&shared, frame.freeze()).await?;
        if let Some(resp) = response {
            let io = async {
                wr.write_i32(resp.len() as i32).await?;
                wr.write_all(&resp).await?;
                if rd.buffer().is_empty() {
                    wr.flush().await?;
                }
                Ok::<_, std::io::Error>(())
            };
            if let Err(e) = io.await {
                return close(format!("write error: {e}"));
            }
        } else if rd.buffer().is_empty() {
            let _ = wr.flush().await;
        }
    }
}

/// Parsed request header plus the undecoded body.
pub struct Frame {
    pub key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: Bytes,
}

/// Decodes a request frame (without the length prefix). Pure; never panics.
pub fn decode_frame(frame: Bytes) -> Result<Result<Frame, (ApiKey, i32)>, Close> {
    decode_frame_with(frame, supported_versions)
}

/// [`decode_frame`] for a listener with its own API versions (the controller listener).
pub fn decode_frame_with(
    mut frame: Bytes,
    supported_versions: fn(ApiKey) -> Option<(i16, i16)>,
) -> Result<Result<Frame, (ApiKey, i32)>, Close> {
    if frame.len() < 8 {
        return close(format!(
            "request of {} bytes is shorter than a request header",
            frame.len()
        ));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Ok(key) = ApiKey::try_from(raw_key) else {
        return close(format!("unknown API key {raw_key}"));
    };
    match supported_versions(key) {
        Some((min, max)) if (min..=max).contains(&version) => {}
        // ApiVersions must answer any version so clients can negotiate (KIP-511).
        _ if key == ApiKey::ApiVersions => return Ok(Err((key, correlation))),
        _ => return close(format!("unsupported version {version} of {key:?}")),
    }
    let header = RequestHeader::decode(&mut frame, key.request_header_version(version))
        .map_err(|e| Close(format!("bad request header for {key:?} v{version}: {e}")))?;
    Ok(Ok(Frame {
        key,
        version,
        header,
        body: frame,
    }))
}

pub fn decode<T: Decodable>(f: &mut Frame) -> Result<T, Close> {
    let v = T::decode(&mut f.body, f.version)
        .map_err(|e| Close(format!("malformed {:?} v{}: {e}", f.key, f.version)))?;
    Ok(v)
}

pub fn encode_response<T: Encodable + HeaderVersion>(
    correlation: i32,
    version: i16,
    body: &T,
) -> Result<Bytes, Close> {
    let mut buf = BytesMut::new();
    let header = ResponseHeader::default().with_correlation_id(correlation);
    header
        .encode(&mut buf, T::header_version(version))
        .and_then(|_| body.encode(&mut buf, version))
        .map_err(|e| Close(format!("cannot encode response v{version}: {e}")))?;
    Ok(buf.freeze())
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

async fn handle_frame(shared: &Arc<Shared>, frame: Bytes) -> Result<Option<Bytes>, Close> {
    if let Some(zk) = &shared.zk {
        if let Some(out) = zk.handle_control_frame(&frame).await? {
            return Ok(Some(out));
        }
    }
    let mut f = match decode_frame(frame)? {
        Ok(f) => f,
        Err((_, correlation)) => {
            tracing::info!(
                "ApiVersions with an unsupported version: answering v0 with UNSUPPORTED_VERSION"
            );
            let mut r = api_versions();
            r.error_code = code::UNSUPPORTED_VERSION;
            return encode_response(correlation, 0, &r).map(Some);
        }
    };
    let corr = f.header.correlation_id;
    let v = f.version;
    let out = match f.key {
        ApiKey::ApiVersions => {
            let _req: ApiVersionsRequest = decode(&mut f)?;
            encode_response(corr, v, &api_versions())?
        }
        ApiKey::Metadata => {
            let req: MetadataRequest = decode(&mut f)?;
            encode_response(corr, v, &metadata(shared, req, v))?
        }
        ApiKey::CreateTopics => {
            let req: CreateTopicsRequest = decode(&mut f)?;
            let resp = match &shared.cluster {
                Some(c) => c.controller.create_topics(req, v).await,
                None => create_topics(shared, req, v),
            };
            encode_response(corr, v, &resp)?
        }
        ApiKey::AlterPartitionReassignments => {
            let req: AlterPartitionReassignmentsRequest = decode(&mut f)?;
            let resp = match &shared.cluster {
                Some(c) => c.controller.alter_partition_reassignments(req).await,
                // A single broker has no replicas to move.
                None => AlterPartitionReassignmentsResponse::default()
                    .with_error_code(code::UNSUPPORTED_VERSION),
            };
            encode_response(corr, v, &resp)?
        }
        ApiKey::ListPartitionReassignments => {
            let req: ListPartitionReassignmentsRequest = decode(&mut f)?;
            let resp = match &shared.cluster {
                Some(c) => c.controller.list_partition_reassignments(req).await,
                None => ListPartitionReassignmentsResponse::default()
                    .with_error_code(code::UNSUPPORTED_VERSION),
            };
            encode_response(corr, v, &resp)?
        }
        ApiKey::DeleteTopics => {
            let req: DeleteTopicsRequest = decode(&mut f)?;
            encode_response(corr, v, &delete_topics(shared, req, v))?
        }
        ApiKey::Produce => {
            let req: ProduceRequest = decode(&mut f)?;
            let acks = req.acks;
            let resp = produce(shared, req, v).await;
            if acks == 0 {
                return Ok(None);
            }
            encode_response(corr, v, &resp)?
        }
        ApiKey::Fetch => {
            let req: FetchRequest = decode(&mut f)?;
            encode_response(corr, v, &fetch(shared, req, v).await)?
        }
        ApiKey::ListOffsets => {
            let req: ListOffsetsRequest = decode(&mut f)?;
            encode_response(corr, v, &list_offsets(shared, req, v))?
        }
        ApiKey::FindCoordinator => {
            let req: FindCoordinatorRequest = decode(&mut f)?;
            encode_response(corr, v, &find_coordinator(shared, req, v))?
        }
        ApiKey::OffsetCommit => {
            let req: OffsetCommitRequest = decode(&mut f)?;
            encode_response(corr, v, &offset_commit(shared, req, v))?
        }
        ApiKey::OffsetFetch => {
            let req: OffsetFetchRequest = decode(&mut f)?;
            encode_response(corr, v, &offset_fetch(shared, req, v))?
        }
        ApiKey::JoinGroup => {
            let client = f
                .header
                .client_id
                .as_ref()
                .map_or("consumer", |c| c.as_str())
                .to_owned();
            let req: JoinGroupRequest = decode(&mut f)?;
            encode_response(corr, v, &join_group(shared, req, client, v).await)?
        }
        ApiKey::SyncGroup => {
            let req: SyncGroupRequest = decode(&mut f)?;
            encode_response(corr, v, &sync_group(shared, req, v).await)?
        }
        ApiKey::Heartbeat => {
            let req: HeartbeatRequest = decode(&mut f)?;
            let now = shared.now_ms();
            let code = shared.lock().groups.heartbeat(
                now,
                req.group_id.as_str(),
                req.member_id.as_str(),
                req.generation_id,
            );
            encode_response(corr, v, &HeartbeatResponse::default().with_error_code(code))?
        }
        ApiKey::LeaveGroup => {
            let req: LeaveGroupRequest = decode(&mut f)?;
            encode_response(corr, v, &leave_group(shared, req, v))?
        }
        other => return close(format!("API {other:?} is not implemented")),
    };
    Ok(Some(out))
}

fn api_versions() -> ApiVersionsResponse {
    let api_keys = ApiKey::iter()
        .filter_map(|k| {
            let (min, max) = supported_versions(k)?;
            Some(
                ApiVersion::default()
                    .with_api_key(k as i16)
                    .with_min_version(min)
                    .with_max_version(max),
            )
        })
        .collect();
    ApiVersionsResponse::default().with_api_keys(api_keys)
}

/// Metadata answered from the committed metadata image (cluster mode): every unfenced
/// broker, and for each partition its leader, leader epoch, replicas, ISR and the replicas
/// that are offline (fenced or unregistered). Any broker forwards CreateTopics, so the
/// lowest active broker id is named as the "controller" for clients that need one.
fn metadata_from_image(
    image: &crate::metadata::MetadataImage,
    req: MetadataRequest,
    v: i16,
) -> MetadataResponse {
    let brokers: Vec<MetadataResponseBroker> = image
        .active_brokers()
        .filter_map(|reg| {
            let (host, port) = reg.endpoint.rsplit_once(':')?;
            Some(
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(reg.broker_id))
                    .with_host(s(host))
                    .with_port(port.parse().ok()?),
            )
        })
        .collect();
    let names: Vec<String> = match req.topics {
        Some(ts) if !(v == 0 && ts.is_empty()) => ts
            .into_iter()
            .filter_map(|t| t.name.map(|n| n.0.to_string()))
            .collect(),
        _ => image.topic_ids.keys().cloned().collect(),
    };
    let online = |b: &i32| image.brokers.get(b).is_some_and(|r| !r.fenced);
    let topics = names
        .into_iter()
        .map(|name| {
            let mut t = MetadataResponseTopic::default().with_name(Some(TopicName(s(&name))));
            match image.topic(&name) {
                None => t.error_code = code::UNKNOWN_TOPIC_OR_PARTITION,
                Some(topic) => {
                    if v >= 10 {
                        t.topic_id = topic.topic_id;
                    }
                    t.partitions = topic
                        .partitions
                        .iter()
                        .map(|(&i, reg)| {
                            let ids = |v: &[i32]| v.iter().map(|&b| BrokerId(b)).collect();
                            let mut p = MetadataResponsePartition::default()
                                .with_partition_index(i)
                                .with_leader_id(BrokerId(reg.leader))
                                .with_replica_nodes(ids(&reg.replicas))
                                .with_isr_nodes(ids(&reg.isr));
                            if !reg.has_leader() {
                                p.error_code = LEADER_NOT_AVAILABLE;
                            }
                            if v >= 5 {
                                p.offline_replicas = reg
                                    .replicas
                                    .iter()
                                    .filter(|b| !online(b))
                                    .map(|&b| BrokerId(b))
                                    .collect();
                            }
                            if v >= 7 {
                                p.leader_epoch = reg.leader_epoch;
                            }
                            p
                        })
                        .collect();
                }
            }
            t
        })
        .collect();
    let mut r = MetadataResponse::default()
        .with_brokers(brokers)
        .with_topics(topics);
    if v >= 1 {
        r.controller_id = BrokerId(
            image
                .active_brokers()
                .map(|b| b.broker_id)
                .min()
                .unwrap_or(-1),
        );
    }
    if v >= 2 {
        r.cluster_id = Some(s("kcheck-reference"));
    }
    r
}

/// Kafka LEADER_NOT_AVAILABLE: the partition is offline (no leader elected).
const LEADER_NOT_AVAILABLE: i16 = 5;

fn metadata(shared: &Shared, req: MetadataRequest, v: i16) -> MetadataResponse {
    if let Some(c) = &shared.cluster {
        return metadata_from_image(&c.current_image(), req, v);
    }
    let mut b = shared.lock();
    let node = b.config.node_id;
    let names: Vec<String> = match req.topics {
        Some(ts) if !(v == 0 && ts.is_empty()) => ts
            .into_iter()
            .filter_map(|t| t.name.map(|n| n.0.to_string()))
            .collect(),
        _ => b.topics.keys().cloned().collect(),
    };
    let allow_create = v < 4 || req.allow_auto_topic_creation;
    let topics = names
        .into_iter()
        .map(|name| {
            let mut t = MetadataResponseTopic::default().with_name(Some(TopicName(s(&name))));
            match b.topic_or_create(&name, allow_create) {
                Err(code) => t.error_code = code,
                Ok(topic) => {
                    if v >= 10 {
                        t.topic_id = topic.id;
                    }
                    t.partitions = topic
                        .partitions
                        .iter()
                        .map(|r| {
                            let mut p = MetadataResponsePartition::default()
                                .with_partition_index(r.state.partition)
                                .with_leader_id(BrokerId(r.state.leader.unwrap_or(-1)))
                                .with_replica_nodes(vec![BrokerId(node)])
                                .with_isr_nodes(r.state.isr.iter().map(|&i| BrokerId(i)).collect());
                            if v >= 7 {
                                p.leader_epoch = r.state.leader_epoch;
                            }
                            p
                        })
                        .collect();
                }
            }
            t
        })
        .collect();
    let mut r = MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(node))
            .with_host(s(&shared.host))
            .with_port(shared.port)])
        .with_topics(topics);
    if v >= 1 {
        r.controller_id = BrokerId(node);
    }
    if v >= 2 {
        r.cluster_id = Some(s("kcheck-reference"));
    }
    r
}

fn create_topics(shared: &Shared, req: CreateTopicsRequest, v: i16) -> CreateTopicsResponse {
    let mut b = shared.lock();
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let name = t.name.0.to_string();
            let parts = if t.num_partitions == -1 {
                b.config.default_partitions
            } else {
                t.num_partitions
            };
            let mut r = CreatableTopicResult::default().with_name(t.name);
            let res = if t.replication_factor != -1 && t.replication_factor != 1 {
                Err(code::INVALID_REPLICATION_FACTOR)
            } else if req.validate_only {
                Ok(uuid::Uuid::nil())
            } else {
                b.create_topic(&name, parts)
            };
            match res {
                Ok(id) => {
                    if v >= 7 {
                        r.topic_id = id;
                    }
                    if v >= 5 {
                        r.num_partitions = parts;
                        r.replication_factor = 1;
                    }
                }
                Err(c) => r.error_code = c,
            }
            r
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

/// Kafka TOPIC_DELETION_DISABLED: a cluster broker must not delete its local replicas on its
/// own (deletion is the controller's RemoveTopic record, not implemented here).
const TOPIC_DELETION_DISABLED: i16 = 73;

fn delete_topics(shared: &Shared, req: DeleteTopicsRequest, v: i16) -> DeleteTopicsResponse {
    if shared.cluster.is_some() {
        let responses = req
            .topics
            .into_iter()
            .map(|t| t.name)
            .chain(req.topic_names.into_iter().map(Some))
            .map(|n| {
                DeletableTopicResult::default()
                    .with_name(n)
                    .with_error_code(TOPIC_DELETION_DISABLED)
            })
            .collect();
        return DeleteTopicsResponse::default().with_responses(responses);
    }
    let mut b = shared.lock();
    let names: Vec<Option<TopicName>> = if v >= 6 {
        req.topics
            .into_iter()
            .map(|t| {
                t.name.or_else(|| {
                    b.topics
                        .iter()
                        .find(|(_, x)| x.id == t.topic_id)
                        .map(|(n, _)| TopicName(s(n)))
                })
            })
            .collect()
    } else {
        req.topic_names.into_iter().map(Some).collect()
    };
    let responses = names
        .into_iter()
        .map(|n| {
            let code = n.as_ref().map_or(code::UNKNOWN_TOPIC_OR_PARTITION, |n| {
                b.delete_topic(n.as_str())
            });
            DeletableTopicResult::default()
                .with_name(n)
                .with_error_code(code)
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}

/// Kafka REQUEST_TIMED_OUT: acks=all not satisfied within the request's timeout.
const REQUEST_TIMED_OUT: i16 = 7;

async fn produce(shared: &Shared, req: ProduceRequest, v: i16) -> ProduceResponse {
    let mut waits: Vec<(usize, usize, oneshot::Receiver<i16>)> = Vec::new();
    let mut responses: Vec<TopicProduceResponse> = {
        let mut b = shared.lock();
        let cluster = b.cluster;
        let responses = req
            .topic_data
            .into_iter()
            .enumerate()
            .map(|(ti, t)| {
                let topic = t.name.0.to_string();
                let partition_responses = t
                    .partition_data
                    .into_iter()
                    .enumerate()
                    .map(|(pi, p)| {
                        let mut r = PartitionProduceResponse::default().with_index(p.index);
                        let res = if !matches!(req.acks, -1..=1) {
                            Err(code::INVALID_REQUIRED_ACKS)
                        } else {
                            let records = p.records.map(|r| r.to_vec()).unwrap_or_default();
                            let known = if cluster {
                                b.replica(&topic, p.index).map(|_| ())
                            } else {
                                b.topic_or_create(&topic, true).map(|_| ())
                            };
                            known.and_then(|_| b.produce_acks(&topic, p.index, records, req.acks))
                        };
                        match res {
                            Ok(a) => {
                                r.base_offset = a.base_offset;
                                if v >= 5 {
                                    r.log_start_offset = a.log_start_offset;
                                }
                                // acks=all waits in the purgatory until the HW passes the
                                // batch (at once when this broker is the whole ISR).
                                let satisfied = b.replica(&topic, p.index).map_or(true, |rep| {
                                    rep.state.acks_all_satisfied(a.last_offset)
                                });
                                if req.acks == -1 && !satisfied {
                                    let id = shared.next_ack.fetch_add(1, Ordering::Relaxed);
                                    let (tx, rx) = oneshot::channel();
                                    shared
                                        .acks
                                        .lock()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .insert(id, tx);
                                    b.await_acks_all(&topic, p.index, id, a.last_offset);
                                    waits.push((ti, pi, rx));
                                }
                            }
                            Err(c) => {
                                r.error_code = c;
                                r.base_offset = -1;
                            }
                        }
                        r
                    })
                    .collect();
                TopicProduceResponse::default()
                    .with_name(t.name)
                    .with_partition_responses(partition_responses)
            })
            .collect();
        shared.deliver_acks(&mut b);
        responses
    };
    shared.appended.notify_waiters();
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(req.timeout_ms.clamp(0, 300_000) as u64);
    for (ti, pi, rx) in waits {
        let c = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(c)) => c,
            Ok(Err(_)) => code::NOT_LEADER_OR_FOLLOWER,
            Err(_) => REQUEST_TIMED_OUT,
        };
        if c != code::NONE {
            let r = &mut responses[ti].partition_responses[pi];
            r.error_code = c;
            r.base_offset = -1;
        }
    }
    ProduceResponse::default().with_responses(responses)
}

/// The broker a Fetch comes from (-1: a consumer): v15 moved it into `ReplicaState`.
fn fetch_replica_id(req: &FetchRequest, v: i16) -> i32 {
    if v >= 15 {
        req.replica_state.replica_id.0
    } else {
        req.replica_id.0
    }
}

/// The topic a Fetch names: by name up to v12, by id from v13 (KIP-516); "" for an unknown id.
fn fetch_topic_name(
    b: &Broker,
    t: &kafka_protocol::messages::fetch_request::FetchTopic,
    v: i16,
) -> String {
    if v < 13 {
        return t.topic.as_str().to_owned();
    }
    b.topics
        .iter()
        .find(|(_, x)| x.id == t.topic_id)
        .map_or_else(String::new, |(name, _)| name.clone())
}

/// A topic of a Fetch response, named as the request named it. An id the broker does not know
/// is UNKNOWN_TOPIC_ID for each partition.
fn fetch_topic_response(
    t: &kafka_protocol::messages::fetch_request::FetchTopic,
    v: i16,
    known: bool,
    mut partitions: Vec<PartitionData>,
) -> FetchableTopicResponse {
    if v < 13 {
        return FetchableTopicResponse::default()
            .with_topic(t.topic.clone())
            .with_partitions(partitions);
    }
    if !known {
        for p in &mut partitions {
            p.error_code = UNKNOWN_TOPIC_ID;
            p.records = Some(Bytes::new());
        }
    }
    FetchableTopicResponse::default()
        .with_topic_id(t.topic_id)
        .with_partitions(partitions)
}

/// Kafka's UNKNOWN_TOPIC_ID (a Fetch v13+ naming a topic id this broker does not have).
const UNKNOWN_TOPIC_ID: i16 = 100;

async fn fetch(shared: &Arc<Shared>, req: FetchRequest, v: i16) -> FetchResponse {
    // A fetch from a broker (replica_id >= 0) is a follower's, answered from the LEO with the
    // diverging-epoch check (only in cluster mode; a single broker has no followers).
    let follower = fetch_replica_id(&req, v) >= 0 && shared.cluster.is_some();
    let control = shared
        .cluster
        .as_ref()
        .and_then(|c| c.test_control.clone())
        .filter(|_| follower);
    if let Some(c) = &control {
        // `--test-control`: a replay may hold followers' fetches on the leader, after they were
        // read and before they are handled (a killed incarnation's fetch handled after its
        // restart, KIP-903).
        c.follower_fetch.pass().await;
    }
    let resp = fetch_rounds(shared, &req, v, follower).await;
    if let Some(c) = &control {
        c.follower_fetch.done();
    }
    resp
}

async fn fetch_rounds(
    shared: &Arc<Shared>,
    req: &FetchRequest,
    v: i16,
    follower: bool,
) -> FetchResponse {
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(req.max_wait_ms.clamp(0, 30_000) as u64);
    let min_bytes = req.min_bytes.max(0) as usize;
    let max_bytes = if req.max_bytes <= 0 {
        usize::MAX
    } else {
        req.max_bytes as usize
    };
    loop {
        let notified = shared.appended.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (resp, bytes, errors) = if follower {
            follower_fetch_once(shared, &req, v, max_bytes)
        } else {
            fetch_once(shared, &req, v, max_bytes)
        };
        if bytes >= min_bytes || errors || tokio::time::Instant::now() >= deadline {
            return resp;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return if follower {
                follower_fetch_once(shared, &req, v, max_bytes).0
            } else {
                fetch_once(shared, &req, v, max_bytes).0
            };
        }
    }
}

/// One pass over a follower's fetch: the leader's core decides per partition (fencing,
/// diverging epoch, follower state, HW, ISR expansion); records go up to the LEO.
fn follower_fetch_once(
    shared: &Arc<Shared>,
    req: &FetchRequest,
    v: i16,
    max_bytes: usize,
) -> (FetchResponse, usize, bool) {
    let replica_id = fetch_replica_id(req, v);
    let now = shared.now_ms();
    // The incarnation that sent the fetch (KIP-903): v15 carries its broker epoch. An older
    // fetch carries none; then the follower's current registration in the image stands in,
    // which credits a fetch from a killed incarnation handled after the restart to the new
    // one.
    let carried = req.replica_state.replica_epoch;
    let broker_epoch = if v >= 15 && carried >= 0 {
        carried
    } else {
        shared
            .cluster
            .as_ref()
            .and_then(|c| {
                c.current_image()
                    .brokers
                    .get(&replica_id)
                    .map(|b| b.broker_epoch)
            })
            .unwrap_or(-1)
    };
    let mut b = shared.lock();
    let mut total = 0usize;
    let mut errors = false;
    let mut alters = Vec::new();
    let mut responses = Vec::new();
    for t in &req.topics {
        let name = fetch_topic_name(&b, t, v);
        let topic = name.as_str();
        let topic_id = b.topics.get(topic).map(|x| x.id);
        let mut partitions = Vec::new();
        for p in &t.partitions {
            let mut r = PartitionData::default().with_partition_index(p.partition);
            r.diverging_epoch.epoch = -1;
            r.diverging_epoch.end_offset = -1;
            let fetch = crate::partition::FollowerFetch {
                replica_id,
                broker_epoch,
                current_leader_epoch: p.current_leader_epoch,
                fetch_offset: p.fetch_offset,
                last_fetched_epoch: p.last_fetched_epoch,
            };
            let budget = (p.partition_max_bytes.max(0) as usize)
                .min(max_bytes.saturating_sub(total))
                .max(1);
            match b.follower_fetch(topic, p.partition, &fetch, budget, now) {
                Ok((outcome, records)) => match outcome {
                    crate::partition::FollowerFetchOutcome::Read {
                        high_watermark,
                        alter,
                    } => {
                        total += records.len();
                        r.high_watermark = high_watermark;
                        r.last_stable_offset = high_watermark;
                        r.records = Some(Bytes::from(records));
                        if let (Some(a), Some(id)) = (alter, topic_id) {
                            alters.push((id, topic.to_owned(), a));
                        }
                    }
                    crate::partition::FollowerFetchOutcome::Diverging {
                        epoch,
                        end_offset,
                        high_watermark,
                    } => {
                        errors = true;
                        r.high_watermark = high_watermark;
                        r.diverging_epoch.epoch = epoch;
                        r.diverging_epoch.end_offset = end_offset;
                        if epoch < 0 {
                            // UNDEFINED: tell the follower to fall back to its HW.
                            r.diverging_epoch.end_offset = 0;
                            r.diverging_epoch.epoch = -1;
                        }
                        r.records = Some(Bytes::new());
                    }
                    crate::partition::FollowerFetchOutcome::Error(c) => {
                        errors = true;
                        r.error_code = c;
                        if let Ok(rep) = b.replica(topic, p.partition) {
                            r.high_watermark = rep.state.high_watermark;
                        }
                    }
                },
                Err(c) => {
                    errors = true;
                    r.error_code = c;
                }
            }
            if let Ok(rep) = b.replica(topic, p.partition) {
                r.log_start_offset = rep.state.log_start_offset;
                r.current_leader.leader_id = BrokerId(rep.state.leader.unwrap_or(-1));
                r.current_leader.leader_epoch = rep.state.leader_epoch;
            }
            partitions.push(r);
        }
        responses.push(fetch_topic_response(t, v, topic_id.is_some(), partitions));
    }
    shared.deliver_acks(&mut b);
    drop(b);
    for (id, topic, a) in alters {
        tracing::info!(%topic, partition = a.partition, isr = ?a.new_isr(), "ISR expansion: sending AlterPartition");
        crate::replication::send_alter_partition(shared.clone(), id, topic, a);
    }
    (
        FetchResponse::default().with_responses(responses),
        total,
        errors,
    )
}

fn fetch_once(
    shared: &Shared,
    req: &FetchRequest,
    v: i16,
    max_bytes: usize,
) -> (FetchResponse, usize, bool) {
    let b = shared.lock();
    let mut total = 0usize;
    let mut errors = false;
    let responses = req
        .topics
        .iter()
        .map(|t| {
            let name = fetch_topic_name(&b, t, v);
            let topic = name.as_str();
            let known = b.topics.contains_key(topic);
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut r = PartitionData::default().with_partition_index(p.partition);
                    let budget = (p.partition_max_bytes.max(0) as usize)
                        .min(max_bytes.saturating_sub(total));
                    // KIP-74: the first non-empty partition may exceed the limit by one batch.
                    let budget = if total == 0 { budget.max(1) } else { budget };
                    // KIP-320: in a cluster a consumer naming a stale or future leader
                    // epoch is fenced before it reads.
                    let fenced = if b.cluster {
                        b.replica(topic, p.partition)
                            .map_err(|c| c)
                            .and_then(|rep| rep.state.check_leader_request(p.current_leader_epoch))
                    } else {
                        Ok(())
                    };
                    match fenced.and_then(|_| b.read(topic, p.partition, p.fetch_offset, budget)) {
                        Ok(read) if budget > 0 || total == 0 => {
                            total += read.records.len();
                            r.high_watermark = read.high_watermark;
                            r.last_stable_offset = read.high_watermark;
                            if v >= 5 {
                                r.log_start_offset = read.log_start_offset;
                            }
                            r.records = Some(Bytes::from(read.records));
                        }
                        Ok(read) => {
                            r.high_watermark = read.high_watermark;
                            r.last_stable_offset = read.high_watermark;
                        }
                        Err(c) => {
                            errors = true;
                            r.error_code = c;
                            r.high_watermark = -1;
                            if let Ok(rep) = b.replica(topic, p.partition) {
                                r.high_watermark = rep.state.high_watermark;
                                r.last_stable_offset = rep.state.high_watermark;
                                if v >= 5 {
                                    r.log_start_offset = rep.state.log_start_offset;
                                }
                            }
                        }
                    }
                    r
                })
                .collect();
            fetch_topic_response(t, v, known, partitions)
        })
        .collect();
    (
        FetchResponse::default().with_responses(responses),
        total,
        errors,
    )
}

fn list_offsets(shared: &Shared, req: ListOffsetsRequest, v: i16) -> ListOffsetsResponse {
    let b = shared.lock();
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut r = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index);
                    r.timestamp = -1;
                    // In a cluster only the leader answers, fenced by leader epoch (KIP-320).
                    let replica = b
                        .replica(t.name.as_str(), p.partition_index)
                        .and_then(|rep| {
                            if b.cluster {
                                rep.state.check_leader_request(p.current_leader_epoch)?;
                            }
                            Ok(rep)
                        });
                    match replica {
                        Err(c) => r.error_code = c,
                        Ok(rep) => {
                            let found = match p.timestamp {
                                -2 => Ok(Some(rep.state.log_start_offset)),
                                -1 => Ok(Some(rep.state.high_watermark)),
                                ts => rep
                                    .log
                                    .offset_for_timestamp(ts)
                                    .map_err(|_| code::KAFKA_STORAGE_ERROR),
                            };
                            match found {
                                Ok(o) => r.offset = o.unwrap_or(-1),
                                Err(c) => r.error_code = c,
                            }
                            if v >= 4 {
                                r.leader_epoch = rep.state.leader_epoch;
                            }
                        }
                    }
                    r
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

fn find_coordinator(
    shared: &Shared,
    req: FindCoordinatorRequest,
    v: i16,
) -> FindCoordinatorResponse {
    let node = shared.lock().config.node_id;
    let mut r = FindCoordinatorResponse::default();
    if v >= 4 {
        r.coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|k| {
                Coordinator::default()
                    .with_key(k)
                    .with_node_id(BrokerId(node))
                    .with_host(s(&shared.host))
                    .with_port(shared.port)
            })
            .collect();
    } else {
        r.node_id = BrokerId(node);
        r.host = s(&shared.host);
        r.port = shared.port;
        if v >= 1 {
            r.error_message = None;
        }
    }
    r
}

fn offset_commit(shared: &Shared, req: OffsetCommitRequest, _v: i16) -> OffsetCommitResponse {
    let mut b = shared.lock();
    let group = req.group_id.as_str().to_owned();
    let gen_code = b.groups.validate_commit(
        &group,
        req.member_id.as_str(),
        req.generation_id_or_member_epoch,
    );
    let mut entries = Vec::new();
    let mut topics: Vec<OffsetCommitResponseTopic> = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let c = if gen_code != code::NONE {
                        gen_code
                    } else if b.replica(t.name.as_str(), p.partition_index).is_err() {
                        code::UNKNOWN_TOPIC_OR_PARTITION
                    } else {
                        entries.push((
                            (group.clone(), t.name.as_str().to_owned(), p.partition_index),
                            Committed {
                                offset: p.committed_offset,
                                leader_epoch: p.committed_leader_epoch,
                                metadata: p
                                    .committed_metadata
                                    .as_ref()
                                    .map_or(String::new(), |m| m.as_str().to_owned()),
                            },
                        ));
                        code::NONE
                    };
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(c)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    if let Err(e) = b.offsets.commit(entries) {
        tracing::error!(error = %e, "offset commit failed");
        for t in &mut topics {
            for p in &mut t.partitions {
                if p.error_code == code::NONE {
                    p.error_code = code::KAFKA_STORAGE_ERROR;
                }
            }
        }
    }
    OffsetCommitResponse::default().with_topics(topics)
}

fn offset_fetch(shared: &Shared, req: OffsetFetchRequest, v: i16) -> OffsetFetchResponse {
    let b = shared.lock();
    let group = req.group_id.as_str();
    let wanted: Vec<(TopicName, Vec<i32>)> = match req.topics {
        Some(ts) => ts
            .into_iter()
            .map(|t| (t.name, t.partition_indexes))
            .collect(),
        None => b
            .topics
            .iter()
            .map(|(n, t)| {
                (
                    TopicName(s(n)),
                    (0..t.partitions.len() as i32).collect::<Vec<_>>(),
                )
            })
            .filter(|(n, ps)| {
                ps.iter()
                    .any(|&p| b.offsets.get(group, n.as_str(), p).is_some())
            })
            .collect(),
    };
    let topics = wanted
        .into_iter()
        .map(|(name, ps)| {
            let partitions = ps
                .into_iter()
                .map(|p| {
                    let mut r = OffsetFetchResponsePartition::default().with_partition_index(p);
                    match b.offsets.get(group, name.as_str(), p) {
                        Some(c) => {
                            r.committed_offset = c.offset;
                            r.metadata = Some(s(&c.metadata));
                            if v >= 5 {
                                r.committed_leader_epoch = c.leader_epoch;
                            }
                        }
                        None => {
                            r.committed_offset = -1;
                            r.metadata = Some(s(""));
                        }
                    }
                    r
                })
                .collect();
            OffsetFetchResponseTopic::default()
                .with_name(name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

async fn join_group(
    shared: &Shared,
    req: JoinGroupRequest,
    client_id: String,
    v: i16,
) -> JoinGroupResponse {
    let (id, rx) = shared.wait_for();
    let join = JoinRequest {
        group_id: req.group_id.as_str().to_owned(),
        member_id: req.member_id.as_str().to_owned(),
        client_id,
        protocol_type: req.protocol_type.as_str().to_owned(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.as_str().to_owned(), p.metadata.to_vec()))
            .collect(),
        session_timeout_ms: req.session_timeout_ms.max(1) as u64,
        rebalance_timeout_ms: if v >= 1 {
            req.rebalance_timeout_ms.max(1) as u64
        } else {
            req.session_timeout_ms.max(1) as u64
        },
    };
    let now = shared.now_ms();
    let replies = shared.lock().groups.join(now, id, join);
    shared.deliver(replies);
    let result = match rx.await {
        Ok(Reply::Join(_, r)) => r,
        _ => crate::group::JoinResult {
            error: crate::group::code::REBALANCE_IN_PROGRESS,
            ..Default::default()
        },
    };
    let mut r = JoinGroupResponse::default()
        .with_error_code(result.error)
        .with_generation_id(result.generation_id)
        .with_leader(s(&result.leader))
        .with_member_id(s(&result.member_id))
        .with_members(
            result
                .members
                .into_iter()
                .map(|(m, md)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(s(&m))
                        .with_metadata(Bytes::from(md))
                })
                .collect(),
        );
    r.protocol_name = Some(s(&result.protocol_name));
    if v >= 7 {
        r.protocol_type = Some(s(&result.protocol_type));
    }
    r
}

async fn sync_group(shared: &Shared, req: SyncGroupRequest, v: i16) -> SyncGroupResponse {
    let (id, rx) = shared.wait_for();
    let assignments = req
        .assignments
        .iter()
        .map(|a| (a.member_id.as_str().to_owned(), a.assignment.to_vec()))
        .collect();
    let replies = shared.lock().groups.sync(
        id,
        req.group_id.as_str(),
        req.member_id.as_str(),
        req.generation_id,
        assignments,
    );
    shared.deliver(replies);
    let (code, assignment) = match rx.await {
        Ok(Reply::Sync(_, c, a)) => (c, a),
        _ => (crate::group::code::REBALANCE_IN_PROGRESS, Vec::new()),
    };
    let mut r = SyncGroupResponse::default()
        .with_error_code(code)
        .with_assignment(Bytes::from(assignment));
    if v >= 5 {
        r.protocol_type = req.protocol_type;
        r.protocol_name = req.protocol_name;
    }
    r
}

fn leave_group(shared: &Shared, req: LeaveGroupRequest, v: i16) -> LeaveGroupResponse {
    let members: Vec<String> = if v >= 3 {
        req.members
            .iter()
            .map(|m| m.member_id.as_str().to_owned())
            .collect()
    } else {
        vec![req.member_id.as_str().to_owned()]
    };
    let now = shared.now_ms();
    let (codes, replies) = shared
        .lock()
        .groups
        .leave(now, req.group_id.as_str(), &members);
    shared.deliver(replies);
    let mut r = LeaveGroupResponse::default();
    if v >= 3 {
        r.members = members
            .iter()
            .zip(&codes)
            .map(|(m, &c)| {
                MemberResponse::default()
                    .with_member_id(s(m))
                    .with_error_code(c)
            })
            .collect();
    } else {
        r.error_code = codes.first().copied().unwrap_or(0);
    }
    r
}

/// Length-prefixes a request for the wire (used by tests and the benchmark client).
pub fn frame_request<T: Encodable + HeaderVersion>(
    key: ApiKey,
    version: i16,
    correlation: i32,
    body: &T,
) -> anyhow::Result<Vec<u8>> {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(s("kcheck")));
    header.encode(&mut buf, key.request_header_version(version))?;
    body.encode(&mut buf, version)?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.to_vec())
}

/// Splits a response frame body into (correlation id, body) for the given header version.
pub fn response_body(mut frame: Bytes, header_version: i16) -> anyhow::Result<(i32, Bytes)> {
    let h = ResponseHeader::decode(&mut frame, header_version)?;
    let _ = frame.remaining();
    Ok((h.correlation_id, frame))
}

/// Decodes a whole request frame with the same codecs the connection loop uses, dropping the
/// typed body (a pure function for the decoder property tests).
pub fn decode_request(frame: Bytes) -> Result<RequestHeader, Close> {
    let mut f = match decode_frame(frame)? {
        Err(_) => return close("ApiVersions with unsupported version"),
        Ok(f) => f,
    };
    let f = &mut f;
    match f.key {
        ApiKey::ApiVersions => decode::<ApiVersionsRequest>(f).map(drop),
        ApiKey::Metadata => decode::<MetadataRequest>(f).map(drop),
        ApiKey::CreateTopics => decode::<CreateTopicsRequest>(f).map(drop),
        ApiKey::DeleteTopics => decode::<DeleteTopicsRequest>(f).map(drop),
        ApiKey::AlterPartitionReassignments => {
            decode::<AlterPartitionReassignmentsRequest>(f).map(drop)
        }
        ApiKey::ListPartitionReassignments => {
            decode::<ListPartitionReassignmentsRequest>(f).map(drop)
        }
        ApiKey::Produce => decode::<ProduceRequest>(f).map(drop),
        ApiKey::Fetch => decode::<FetchRequest>(f).map(drop),
        ApiKey::ListOffsets => decode::<ListOffsetsRequest>(f).map(drop),
        ApiKey::FindCoordinator => decode::<FindCoordinatorRequest>(f).map(drop),
        ApiKey::OffsetCommit => decode::<OffsetCommitRequest>(f).map(drop),
        ApiKey::OffsetFetch => decode::<OffsetFetchRequest>(f).map(drop),
        ApiKey::JoinGroup => decode::<JoinGroupRequest>(f).map(drop),
        ApiKey::SyncGroup => decode::<SyncGroupRequest>(f).map(drop),
        ApiKey::Heartbeat => decode::<HeartbeatRequest>(f).map(drop),
        ApiKey::LeaveGroup => decode::<LeaveGroupRequest>(f).map(drop),
        other => close(format!("API {other:?} is not implemented")),
    }?;
    Ok(f.header.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use proptest::prelude::*;

    fn samples() -> Vec<Vec<u8>> {
        let produce = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(100)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(s("t")))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_records(Some(crate::batch::build(0, 2, 3, 0).into()))])]);
        let join = JoinGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![
                kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol::default()
                    .with_name(s("range"))
                    .with_metadata(Bytes::from_static(b"md")),
            ]);
        let strip = |v: Vec<u8>| v[4..].to_vec();
        vec![
            strip(frame_request(ApiKey::Produce, 9, 1, &produce).unwrap()),
            strip(frame_request(ApiKey::Produce, 3, 1, &produce).unwrap()),
            strip(
                frame_request(
                    ApiKey::Metadata,
                    12,
                    2,
                    &MetadataRequest::default().with_topics(None),
                )
                .unwrap(),
            ),
            strip(frame_request(ApiKey::JoinGroup, 7, 3, &join).unwrap()),
            strip(frame_request(ApiKey::Fetch, 12, 4, &FetchRequest::default()).unwrap()),
            strip(
                frame_request(ApiKey::ApiVersions, 3, 5, &ApiVersionsRequest::default()).unwrap(),
            ),
        ]
    }

    #[test]
    fn valid_requests_decode() {
        for frame in samples() {
            let h = decode_request(Bytes::from(frame)).map_err(|c| c.0).unwrap();
            assert!(h.correlation_id > 0);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Arbitrary bytes never panic the request decoder.
        #[test]
        fn random_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(Bytes::from(bytes));
        }

        /// Valid requests with random byte corruption and truncation never panic it either
        /// (this is where huge array counts come from; see `alloc_guard`).
        #[test]
        fn mutated_requests_never_panic(which in 0usize..6, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..5),
                                        cut in any::<usize>()) {
            let mut f = samples()[which].clone();
            for (at, x) in flips { let n = f.len(); f[at % n] ^= x; }
            let keep = f.len() - cut % (f.len() / 2 + 1);
            f.truncate(keep);
            let _ = decode_request(Bytes::from(f));
        }
    }
}
