//! Broker state: topics with their partition replicas (sans-IO [`PartitionState`] + durable
//! [`PartitionLog`]), the group coordinator and the committed offsets store. Called by the
//! tokio adapter in [`crate::server`] under one lock; no sockets here.

use crate::batch::{self, BatchHeader};
use crate::group::GroupCoordinator;
use crate::log::{FlushPolicy, LogConfig, LogError, PartitionLog, ReadResult};
use crate::metadata::MetadataImage;
use crate::offsets::{OffsetStore, OFFSETS_TOPIC};
use crate::partition::{
    AlterPartitionRequest, BrokerBugs, FetchBound, FollowerFetch, FollowerFetchOutcome,
    PartitionState, ProduceError, Transition,
};
use crate::proto_trace::TARGET;
use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Kafka error codes used by the data plane.
pub mod code {
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const INVALID_RECORD: i16 = 87;
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: i32,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub flush: FlushPolicy,
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics (`num.partitions`).
    pub default_partitions: i32,
    /// Largest request frame accepted (`socket.request.max.bytes`).
    pub max_request_bytes: usize,
    pub log: LogConfig,
    /// The replicated data plane's settings (used once a metadata image drives the broker).
    pub replication: ReplicationConfig,
}

/// Replication settings (Kafka's broker/topic configs of the same names) and the
/// replication model's broker-side bug flags.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    pub min_insync_replicas: usize,
    pub replica_lag_time_max_ms: u64,
    pub bugs: BrokerBugs,
    /// `--peer-address ID=HOST:PORT`: where this broker's replica fetchers reach broker `ID`
    /// instead of the endpoint `ID` registered (a test harness's fault-injecting proxy). The
    /// registered endpoint is still what Metadata hands to clients.
    pub peer_addresses: std::collections::BTreeMap<i32, String>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            min_insync_replicas: 1,
            replica_lag_time_max_ms: 30_000,
            bugs: BrokerBugs::none(),
            peer_addresses: Default::default(),
        }
    }
}

impl BrokerConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        BrokerConfig {
            node_id: 0,
            listen: "127.0.0.1:9092".parse().expect("valid address"),
            data_dir,
            flush: FlushPolicy::Never,
            auto_create_topics: false,
            default_partitions: 1,
            max_request_bytes: 100 * 1024 * 1024,
            log: LogConfig::default(),
            replication: ReplicationConfig::default(),
        }
    }
}

pub struct Replica {
    pub state: PartitionState,
    pub log: PartitionLog,
}

pub struct Topic {
    pub id: Uuid,
    pub partitions: Vec<Replica>,
}

pub struct Broker {
    pub config: BrokerConfig,
    pub topics: BTreeMap<String, Topic>,
    pub offsets: OffsetStore,
    pub groups: GroupCoordinator,
    /// Set once a metadata image drives the broker (cluster mode): partitions lead or
    /// follow as the image says instead of being led by this broker alone.
    pub cluster: bool,
}

/// A partition whose role changed when an image was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleChange {
    pub topic: String,
    pub partition: i32,
    pub transition: Transition,
}

/// Kafka's legal topic names: 1..=249 of `[a-zA-Z0-9._-]`, not `.` or `..`. Also what keeps
/// a topic name from escaping the data directory.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

const METADATA_FILE: &str = "partition.metadata";

fn partition_dir(data: &Path, topic: &str, p: i32) -> PathBuf {
    data.join(format!("{topic}-{p}"))
}

/// Produce outcome for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: i64,
    pub last_offset: i64,
    pub log_start_offset: i64,
}

/// Fetch outcome for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub records: Vec<u8>,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

fn storage_error(e: LogError) -> i16 {
    tracing::error!(error = %e, "storage error");
    code::KAFKA_STORAGE_ERROR
}

impl Broker {
    /// Opens the data directory, recovering every partition log. Fails (and the broker must
    /// not start) if any log has corruption below its recovery point.
    pub fn open(config: BrokerConfig) -> anyhow::Result<Broker> {
        fs::create_dir_all(&config.data_dir)?;
        let mut found: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for e in fs::read_dir(&config.data_dir)? {
            let name = e?.file_name().into_string().unwrap_or_default();
            let Some((topic, p)) = name.rsplit_once('-') else {
                continue;
            };
            let Ok(p) = p.parse::<i32>() else { continue };
            if topic == OFFSETS_TOPIC || !valid_topic_name(topic) {
                continue;
            }
            found.entry(topic.to_owned()).or_default().push(p);
        }
        let mut topics = BTreeMap::new();
        for (name, mut ps) in found {
            ps.sort_unstable();
            let count = ps.last().map_or(0, |&m| m + 1);
            let id = read_topic_id(&partition_dir(&config.data_dir, &name, ps[0]))
                .unwrap_or_else(Uuid::new_v4);
            let partitions = (0..count)
                .map(|p| open_replica(&config, &name, id, p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            tracing::info!(topic = %name, partitions = count, "loaded topic");
            topics.insert(name, Topic { id, partitions });
        }
        let offsets = OffsetStore::open(&config.data_dir)?;
        Ok(Broker {
            config,
            topics,
            offsets,
            groups: GroupCoordinator::new(),
            cluster: false,
        })
    }

    /// Switches to cluster mode before serving: every replica recovered from disk forgets
    /// the sole leadership `open` gave it and waits for the metadata image to say what it is.
    pub fn enter_cluster_mode(&mut self) {
        self.cluster = true;
        let cfg = self.config.clone();
        for (name, t) in self.topics.iter_mut() {
            for r in &mut t.partitions {
                let hw = PartitionLog::read_hw_checkpoint(r.log.dir())
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                r.state = follower_state(&cfg, r, hw);
                trace_open(name, r);
            }
        }
    }

    /// Puts an appended acks=all request in the partition's purgatory.
    pub fn await_acks_all(&mut self, topic: &str, p: i32, id: u64, last_offset: i64) {
        if let Ok(r) = self.replica_mut(topic, p) {
            r.state.await_acks_all(id, last_offset);
        }
    }

    /// Applies a committed metadata image (cluster mode): creates local replicas of new
    /// partitions assigned to this broker and applies every registration, carrying out what
    /// each transition asks of the log (a new leader records its epoch start; under
    /// `truncate-to-hw` a new follower truncates to its HW).
    pub fn apply_image(&mut self, image: &MetadataImage, now_ms: u64) -> Vec<RoleChange> {
        self.cluster = true;
        let me = self.config.node_id;
        let mut changes = Vec::new();
        for topic in image.topics.values() {
            let assigned = topic.partitions.values().any(|r| r.replicas.contains(&me));
            if !assigned && !self.topics.contains_key(&topic.name) {
                continue;
            }
            let count = topic.partitions.keys().max().map_or(0, |m| m + 1);
            if let Some(t) = self.topics.get_mut(&topic.name) {
                // The committed metadata names the topic's id; a local id that differs (lost
                // with an unsynced partition.metadata, or a topic re-created) would make every
                // AlterPartition of this broker name an unknown topic.
                if t.id != topic.topic_id {
                    tracing::warn!(topic = %topic.name, local = %t.id, committed = %topic.topic_id, "topic id differs from the metadata log: taking the committed one");
                    t.id = topic.topic_id;
                    for r in &t.partitions {
                        if let Err(e) = write_topic_id(r.log.dir(), topic.topic_id) {
                            tracing::error!(topic = %topic.name, error = %e, "cannot rewrite partition.metadata");
                        }
                    }
                }
            }
            if !self.topics.contains_key(&topic.name) {
                self.topics.insert(
                    topic.name.clone(),
                    Topic {
                        id: topic.topic_id,
                        partitions: Vec::new(),
                    },
                );
            }
            for (&p, registration) in &topic.partitions {
                let t = self.topics.get_mut(&topic.name).expect("inserted above");
                while (t.partitions.len() as i32) < count.max(p + 1) {
                    let next = t.partitions.len() as i32;
                    match open_follower_replica(&self.config, &topic.name, topic.topic_id, next) {
                        Ok(r) => {
                            trace_open(&topic.name, &r);
                            t.partitions.push(r)
                        }
                        Err(e) => {
                            tracing::error!(topic = %topic.name, partition = next, error = %e, "cannot open replica");
                            break;
                        }
                    }
                }
                let Some(r) = t.partitions.get_mut(p as usize) else {
                    continue;
                };
                let hw_before = r.state.high_watermark;
                let transition = r.state.apply_registration(registration, now_ms);
                trace_transition(&topic.name, r, &transition, hw_before);
                if let Err(e) = carry_out(&topic.name, r, &transition) {
                    tracing::error!(topic = %topic.name, partition = p, error = %e, "storage error applying a partition change");
                }
                if !matches!(transition, Transition::Stale) {
                    changes.push(RoleChange {
                        topic: topic.name.clone(),
                        partition: p,
                        transition,
                    });
                }
            }
        }
        changes
    }

    /// The leader's side of a follower fetch: KIP-320 fencing, the diverging-epoch check,
    /// the follower's state and the HW; then the records from the fetch offset to the LEO.
    pub fn follower_fetch(
        &mut self,
        topic: &str,
        p: i32,
        fetch: &FollowerFetch,
        max_bytes: usize,
        now_ms: u64,
    ) -> Result<(FollowerFetchOutcome, Vec<u8>), i16> {
        let r = self.replica_mut(topic, p)?;
        let epochs = r.log.epochs().clone();
        let hw_before = r.state.high_watermark;
        let outcome = r.state.on_follower_fetch(fetch, &epochs, now_ms);
        trace_hw(topic, r, hw_before);
        let mut records = Vec::new();
        if let FollowerFetchOutcome::Read { .. } = outcome {
            let leo = r.state.log_end_offset;
            if let ReadResult::Records(data) = r
                .log
                .read(fetch.fetch_offset, max_bytes, leo)
                .map_err(storage_error)?
            {
                records = data;
            }
        }
        Ok((outcome, records))
    }

    /// The follower's side of a fetch response for one partition, if this broker still
    /// follows in `leader_epoch`: append the records and take the leader's HW, or truncate on
    /// a diverging epoch (one KIP-279 round). Returns whether the log changed.
    pub fn on_fetch_response(
        &mut self,
        topic: &str,
        p: i32,
        leader_epoch: i32,
        response: FetchedPartition,
    ) -> Result<bool, i16> {
        let flush = self.config.flush;
        let r = self.replica_mut(topic, p)?;
        if r.state.leader_epoch != leader_epoch || r.state.following().is_none() {
            return Ok(false);
        }
        match response {
            FetchedPartition::Records {
                records,
                high_watermark,
            } => {
                let hw_before = r.state.high_watermark;
                let n = if records.is_empty() {
                    0
                } else {
                    r.log.append_as_follower(&records).map_err(|e| {
                        tracing::error!(topic, partition = p, error = %e, "follower append failed");
                        code::KAFKA_STORAGE_ERROR
                    })?
                };
                // `--flush always` (flush.messages=1) applies to every log, as in Kafka: a
                // follower's next fetch counts its records towards the HW, so they must be
                // durable before it, or a crash of the ISR's followers loses acknowledged
                // records (found by `kcheck test --nemesis lose-unsynced` on the cluster).
                if n > 0 && flush == FlushPolicy::Always {
                    r.log.flush().map_err(|e| {
                        tracing::error!(topic, partition = p, error = %e, "follower flush failed");
                        code::KAFKA_STORAGE_ERROR
                    })?;
                }
                if n > 0 {
                    let headers: Vec<BatchHeader> = batch::scan(&records)
                        .batches
                        .into_iter()
                        .take(n)
                        .map(|(_, h)| h)
                        .collect();
                    trace_append(topic, r, &headers);
                }
                r.state
                    .on_follower_append(r.log.log_end_offset(), high_watermark);
                trace_hw(topic, r, hw_before);
                Ok(n > 0)
            }
            FetchedPartition::Diverging { epoch, end_offset } => {
                let to = crate::partition::truncation_offset(
                    r.log.epochs(),
                    r.log.log_end_offset(),
                    r.state.high_watermark,
                    epoch,
                    end_offset,
                );
                tracing::info!(
                    topic,
                    partition = p,
                    epoch,
                    end_offset,
                    truncate_to = to,
                    "diverging epoch: truncating"
                );
                let leo = r.log.truncate_to(to).map_err(storage_error)?;
                r.state.on_truncated(leo);
                trace_truncate(topic, r, to, "diverging-epoch");
                Ok(true)
            }
            FetchedPartition::OffsetOutOfRange {
                leader_log_end_offset,
            } => {
                let leo = r
                    .log
                    .truncate_to(leader_log_end_offset)
                    .map_err(storage_error)?;
                r.state.on_truncated(leo);
                trace_truncate(topic, r, leader_log_end_offset, "offset-out-of-range");
                Ok(true)
            }
        }
    }

    /// ISR shrink decisions of every partition this broker leads (`replica.lag.time.max.ms`).
    pub fn shrink_isrs(&mut self, now_ms: u64) -> Vec<(Uuid, String, AlterPartitionRequest)> {
        let mut out = Vec::new();
        for (name, t) in &mut self.topics {
            for r in &mut t.partitions {
                if let Some(req) = r.state.maybe_shrink_isr(now_ms) {
                    out.push((t.id, name.clone(), req));
                }
            }
        }
        out
    }

    /// Every acks=all request decided since the last call, over all partitions.
    pub fn take_completed_acks(&mut self) -> Vec<(u64, i16)> {
        self.topics
            .values_mut()
            .flat_map(|t| t.partitions.iter_mut())
            .flat_map(|r| r.state.take_completed_acks())
            .collect()
    }

    pub fn create_topic(&mut self, name: &str, partitions: i32) -> Result<Uuid, i16> {
        if !valid_topic_name(name) || name == OFFSETS_TOPIC {
            return Err(code::INVALID_TOPIC_EXCEPTION);
        }
        if self.topics.contains_key(name) {
            return Err(code::TOPIC_ALREADY_EXISTS);
        }
        if !(1..=10_000).contains(&partitions) {
            return Err(code::INVALID_PARTITIONS);
        }
        let id = Uuid::new_v4();
        let replicas = (0..partitions)
            .map(|p| open_replica(&self.config, name, id, p))
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(|e| {
                tracing::error!(topic = name, error = %e, "cannot create topic");
                code::KAFKA_STORAGE_ERROR
            })?;
        tracing::info!(topic = name, partitions, "created topic");
        self.topics.insert(
            name.to_owned(),
            Topic {
                id,
                partitions: replicas,
            },
        );
        Ok(id)
    }

    pub fn delete_topic(&mut self, name: &str) -> i16 {
        let Some(t) = self.topics.remove(name) else {
            return code::UNKNOWN_TOPIC_OR_PARTITION;
        };
        for r in t.partitions {
            if let Err(e) = r.log.delete() {
                tracing::error!(topic = name, error = %e, "deleting partition");
            }
        }
        self.offsets.forget_topic(name);
        tracing::info!(topic = name, "deleted topic");
        code::NONE
    }

    /// Looks a topic up, creating it if auto-creation is on and the caller allows it.
    pub fn topic_or_create(&mut self, name: &str, allow_create: bool) -> Result<&Topic, i16> {
        if !self.topics.contains_key(name) {
            if !valid_topic_name(name) {
                return Err(code::INVALID_TOPIC_EXCEPTION);
            }
            if !(allow_create && self.config.auto_create_topics) {
                return Err(code::UNKNOWN_TOPIC_OR_PARTITION);
            }
            let n = self.config.default_partitions;
            self.create_topic(name, n)?;
        }
        self.topics
            .get(name)
            .ok_or(code::UNKNOWN_TOPIC_OR_PARTITION)
    }

    pub fn replica_mut(&mut self, topic: &str, p: i32) -> Result<&mut Replica, i16> {
        self.topics
            .get_mut(topic)
            .and_then(|t| t.partitions.get_mut(usize::try_from(p).ok()?))
            .ok_or(code::UNKNOWN_TOPIC_OR_PARTITION)
    }

    pub fn replica(&self, topic: &str, p: i32) -> Result<&Replica, i16> {
        self.topics
            .get(topic)
            .and_then(|t| t.partitions.get(usize::try_from(p).ok()?))
            .ok_or(code::UNKNOWN_TOPIC_OR_PARTITION)
    }

    /// Validates, assigns offsets, appends (and fsyncs under `--flush always`).
    pub fn produce(&mut self, topic: &str, p: i32, records: Vec<u8>) -> Result<Appended, i16> {
        self.produce_acks(topic, p, records, 1)
    }

    /// Produce with the request's `acks`: acks=all is refused while the ISR is below
    /// min.insync.replicas (NOT_ENOUGH_REPLICAS).
    pub fn produce_acks(
        &mut self,
        topic: &str,
        p: i32,
        records: Vec<u8>,
        acks: i16,
    ) -> Result<Appended, i16> {
        let flush = self.config.flush;
        let r = self.replica_mut(topic, p)?;
        r.state.check_produce(acks).map_err(|e| match e {
            ProduceError::NotEnoughReplicas { .. } => crate::partition::code::NOT_ENOUGH_REPLICAS,
            _ => code::NOT_LEADER_OR_FOLLOWER,
        })?;
        let plan = r.state.prepare_append(records).map_err(|e| {
            tracing::warn!(topic, partition = p, error = %e, "rejected produce");
            match e {
                ProduceError::Corrupt(_) => code::CORRUPT_MESSAGE,
                ProduceError::Invalid(_) => code::INVALID_RECORD,
                ProduceError::NotLeader => code::NOT_LEADER_OR_FOLLOWER,
                ProduceError::NotEnoughReplicas { .. } => {
                    crate::partition::code::NOT_ENOUGH_REPLICAS
                }
            }
        })?;
        r.log
            .append(&plan.records, &plan.batches)
            .map_err(storage_error)?;
        if flush == FlushPolicy::Always {
            r.log.flush().map_err(storage_error)?;
        }
        let hw_before = r.state.high_watermark;
        r.state.on_local_append(&plan);
        let headers: Vec<BatchHeader> = plan.batches.iter().map(|(_, h)| *h).collect();
        trace_append(topic, r, &headers);
        trace_hw(topic, r, hw_before);
        Ok(Appended {
            base_offset: plan.base_offset,
            last_offset: plan.last_offset,
            log_start_offset: r.state.log_start_offset,
        })
    }

    pub fn read(&self, topic: &str, p: i32, offset: i64, max_bytes: usize) -> Result<Read, i16> {
        let r = self.replica(topic, p)?;
        if self.cluster && !r.state.is_leader() {
            return Err(code::NOT_LEADER_OR_FOLLOWER);
        }
        let upto = match r.state.fetch_bound(offset, false) {
            FetchBound::OutOfRange => return Err(code::OFFSET_OUT_OF_RANGE),
            FetchBound::UpTo(o) => o,
        };
        match r.log.read(offset, max_bytes, upto).map_err(storage_error)? {
            ReadResult::OutOfRange => Err(code::OFFSET_OUT_OF_RANGE),
            ReadResult::Records(records) => Ok(Read {
                records,
                high_watermark: r.state.high_watermark,
                log_start_offset: r.state.log_start_offset,
            }),
        }
    }

    /// Handles to fsync for a periodic flush, taken under the lock (see [`PartitionLog::begin_flush`]).
    pub fn begin_flush_all(&self) -> Vec<(String, i32, std::fs::File, i64)> {
        let mut out = Vec::new();
        for (name, t) in &self.topics {
            for (p, r) in t.partitions.iter().enumerate() {
                if let Some((f, upto)) = r.log.begin_flush() {
                    out.push((name.clone(), p as i32, f, upto));
                }
            }
        }
        out
    }

    pub fn complete_flush(&mut self, topic: &str, p: i32, upto: i64) {
        if let Ok(r) = self.replica_mut(topic, p) {
            r.log.complete_flush(upto);
        }
    }

    /// Flush everything now, under the lock (shutdown). Every log is tried; the first error is
    /// returned, so a shutdown that could not flush is not declared clean (KIP-966).
    pub fn flush_all(&mut self) -> Result<(), crate::log::LogError> {
        let mut first = Ok(());
        for t in self.topics.values_mut() {
            for r in &mut t.partitions {
                if let Err(e) = r.log.flush() {
                    tracing::error!(error = %e, "flush failed");
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
            }
        }
        first
    }

    /// Writes recovery point and HW checkpoints (Kafka does this on timers, too).
    pub fn checkpoint_all(&self) {
        write_checkpoints(self.checkpoint_snapshot());
    }

    /// The values to checkpoint, taken under the broker lock; [`write_checkpoints`] does the
    /// file IO (with fsyncs) after the lock is released so produce latency does not pay it.
    pub fn checkpoint_snapshot(&self) -> Vec<(PathBuf, i64, Option<i64>)> {
        let mut out: Vec<_> = self
            .topics
            .values()
            .flat_map(|t| &t.partitions)
            .map(|r| {
                (
                    r.log.dir().to_path_buf(),
                    r.log.recovery_point(),
                    Some(r.state.high_watermark),
                )
            })
            .collect();
        let o = self.offsets.log();
        out.push((o.dir().to_path_buf(), o.recovery_point(), None));
        out
    }
}

/// Writes `recovery-point-offset-checkpoint` and `replication-offset-checkpoint` files. A
/// partition deleted meanwhile is skipped.
pub fn write_checkpoints(snapshot: Vec<(PathBuf, i64, Option<i64>)>) {
    use crate::log::{write_checkpoint, HW_FILE, RECOVERY_POINT_FILE};
    for (dir, recovery_point, hw) in snapshot {
        if !dir.exists() {
            continue;
        }
        let mut res = write_checkpoint(
            &dir.join(RECOVERY_POINT_FILE),
            &[recovery_point.to_string()],
        );
        if let Some(hw) = hw {
            res = res.and_then(|_| write_checkpoint(&dir.join(HW_FILE), &[hw.to_string()]));
        }
        if let Err(e) = res {
            tracing::warn!(dir = %dir.display(), error = %e, "checkpoint failed");
        }
    }
}

/// What a follower got back for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchedPartition {
    Records {
        records: Vec<u8>,
        high_watermark: i64,
    },
    Diverging {
        epoch: i32,
        end_offset: i64,
    },
    OffsetOutOfRange {
        leader_log_end_offset: i64,
    },
}

fn carry_out(topic: &str, r: &mut Replica, t: &Transition) -> Result<(), LogError> {
    match t {
        Transition::BecomeLeader { leader_epoch } => {
            r.log.assign_epoch_at_leo(*leader_epoch)?;
            tracing::info!(
                partition = r.state.partition,
                leader_epoch,
                leo = r.log.log_end_offset(),
                "became leader"
            );
        }
        Transition::BecomeFollower {
            leader,
            leader_epoch,
            truncate_to,
        } => {
            if let Some(offset) = truncate_to {
                let leo = r.log.truncate_to(*offset)?;
                r.state.on_truncated(leo);
                trace_truncate(topic, r, *offset, "truncate-to-hw");
            }
            tracing::info!(
                partition = r.state.partition,
                leader,
                leader_epoch,
                "became follower"
            );
        }
        _ => {}
    }
    Ok(())
}

// ---- protocol transition events (`kcheck conform`, see `crate::proto_trace`) ----------------

/// The replica's leader-epoch cache as (leader epoch, start offset) pairs, for trace events.
fn epoch_entries(r: &Replica) -> Vec<[i64; 2]> {
    r.log
        .epochs()
        .entries
        .iter()
        .map(|&(e, o)| [i64::from(e), o])
        .collect()
}

/// A replica opened after a (re)start: its recovered log as its leader-epoch cache, so the
/// checker knows what survived (the model's `Crash` keeps a flushed prefix).
fn trace_open(topic: &str, r: &Replica) {
    let epochs = epoch_entries(r);
    tracing::info!(target: TARGET, topic, partition = r.state.partition,
        leo = r.log.log_end_offset(), log_start = r.log.log_start_offset(),
        hw = r.state.high_watermark, epochs = ?epochs, "replica.open");
}

/// A registration applied: the model's election seen by the new leader, `BecomeFollower`, or
/// an ISR change (the leader computes its HW over this ISR).
pub fn trace_transition(topic: &str, r: &Replica, t: &Transition, hw_before: i64) {
    let s = &r.state;
    let p = s.partition;
    match t {
        Transition::BecomeLeader { leader_epoch } => {
            tracing::info!(target: TARGET, topic, partition = p, leader_epoch,
                partition_epoch = s.partition_epoch, isr = ?s.isr, replicas = ?s.replicas,
                min_isr = s.min_insync_replicas, leo = s.log_end_offset, hw = s.high_watermark,
                "partition.leader");
        }
        Transition::BecomeFollower {
            leader,
            leader_epoch,
            ..
        } => {
            tracing::info!(target: TARGET, topic, partition = p, leader, leader_epoch,
                partition_epoch = s.partition_epoch, isr = ?s.isr, replicas = ?s.replicas,
                leo = s.log_end_offset, hw = s.high_watermark, "partition.follower");
        }
        Transition::Updated => {
            tracing::info!(target: TARGET, topic, partition = p, leader_epoch = s.leader_epoch,
                partition_epoch = s.partition_epoch, isr = ?s.isr, replicas = ?s.replicas,
                leader = s.is_leader(), "partition.update");
        }
        Transition::Stopped => {
            tracing::info!(target: TARGET, topic, partition = p, leader_epoch = s.leader_epoch,
                partition_epoch = s.partition_epoch, "partition.stopped");
        }
        Transition::Stale => {}
    }
    trace_hw(topic, r, hw_before);
}

/// The replica's HW moved (leader: the model's `advance_hw`; follower: the fetch response's).
pub fn trace_hw(topic: &str, r: &Replica, before: i64) {
    let s = &r.state;
    if s.high_watermark != before {
        tracing::info!(target: TARGET, topic, partition = s.partition, hw = s.high_watermark,
            before, leo = s.log_end_offset, leader = s.is_leader(), leader_epoch = s.leader_epoch,
            "partition.hw");
    }
}

/// Records appended: by the leader (the model's `Produce`) or a follower (`Fetch`), each batch
/// as [base offset, last offset, leader epoch].
fn trace_append(topic: &str, r: &Replica, headers: &[BatchHeader]) {
    let s = &r.state;
    let batches: Vec<[i64; 3]> = headers
        .iter()
        .map(|h| {
            [
                h.base_offset,
                h.last_offset(),
                i64::from(h.partition_leader_epoch),
            ]
        })
        .collect();
    tracing::info!(target: TARGET, topic, partition = s.partition, leader = s.is_leader(),
        leader_epoch = s.leader_epoch, batches = ?batches, leo = r.log.log_end_offset(),
        "partition.append");
}

/// A follower truncated (`to` asked, `leo` reached: whole batches go), with the leader-epoch cache it left (`kcheck conform` checks that no epoch
/// starts at or above the new LEO, as the model's `truncate_to` guarantees).
fn trace_truncate(topic: &str, r: &Replica, to: i64, reason: &str) {
    let s = &r.state;
    let epochs = epoch_entries(r);
    tracing::info!(target: TARGET, topic, partition = s.partition, to, leo = r.log.log_end_offset(),
        hw = s.high_watermark, leader_epoch = s.leader_epoch, reason, epochs = ?epochs, "partition.truncate");
}

/// A replica whose role the metadata image decides (cluster mode): it starts neither
/// leading nor following, with its HW from the checkpoint.
fn open_follower_replica(
    cfg: &BrokerConfig,
    topic: &str,
    id: Uuid,
    p: i32,
) -> anyhow::Result<Replica> {
    let mut r = open_replica(cfg, topic, id, p)?;
    let hw = PartitionLog::read_hw_checkpoint(r.log.dir())?.unwrap_or(0);
    r.state = follower_state(cfg, &r, hw);
    Ok(r)
}

fn follower_state(cfg: &BrokerConfig, r: &Replica, hw: i64) -> PartitionState {
    let mut state = PartitionState::new(
        r.state.partition,
        cfg.node_id,
        r.log.log_start_offset(),
        r.log.log_end_offset(),
        hw,
    );
    state.min_insync_replicas = cfg.replication.min_insync_replicas;
    state.replica_lag_time_max_ms = cfg.replication.replica_lag_time_max_ms;
    state.bugs = cfg.replication.bugs.clone();
    state
}

/// Writes `partition.metadata` and fsyncs it, as Kafka's `PartitionMetadataFile` does: an
/// unsynced file comes back empty after a power loss, and a broker that then invents a topic
/// id sends AlterPartition for a topic the controller does not know (found by `kcheck replay
/// --against cluster`, whose LazyFs crash lost it).
fn write_topic_id(dir: &Path, id: Uuid) -> std::io::Result<()> {
    let path = dir.join(METADATA_FILE);
    let mut f = fs::File::create(&path)?;
    std::io::Write::write_all(&mut f, format!("version: 0\ntopic_id: {id}\n").as_bytes())?;
    f.sync_all()?;
    crate::log::fsync_dir(dir)
}

fn read_topic_id(dir: &Path) -> Option<Uuid> {
    let text = fs::read_to_string(dir.join(METADATA_FILE)).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("topic_id: "))
        .and_then(|s| Uuid::parse_str(s.trim()).ok())
}

fn open_replica(cfg: &BrokerConfig, topic: &str, id: Uuid, p: i32) -> anyhow::Result<Replica> {
    let dir = partition_dir(&cfg.data_dir, topic, p);
    let (log, report) = PartitionLog::open(&dir, cfg.log)?;
    write_topic_id(&dir, id)?;
    if let Some((file, pos, offset, dropped, reason)) = &report.truncated {
        tracing::warn!(topic, partition = p, file = %file.display(), position = pos, offset, dropped_bytes = dropped, %reason,
            "recovered partition by truncating a torn tail");
    }
    let hw_checkpoint = PartitionLog::read_hw_checkpoint(&dir)?.unwrap_or(0);
    // A sole leader's ISR is itself, so its HW is its LEO; the checkpoint is only a floor.
    let epoch = log.epochs().latest_epoch().unwrap_or(0);
    let state = PartitionState::sole_leader(
        p,
        cfg.node_id,
        epoch,
        log.log_start_offset(),
        log.log_end_offset(),
    );
    if hw_checkpoint > state.high_watermark {
        tracing::warn!(
            topic,
            partition = p,
            hw_checkpoint,
            leo = log.log_end_offset(),
            "HW checkpoint above recovered LEO"
        );
    }
    Ok(Replica { state, log })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::build;

    #[test]
    fn topics_and_data_survive_restart() {
        let d = tempfile::tempdir().unwrap();
        let cfg = BrokerConfig::new(d.path().to_path_buf());
        let mut b = Broker::open(cfg.clone()).unwrap();
        assert_eq!(
            b.create_topic("../evil", 1),
            Err(code::INVALID_TOPIC_EXCEPTION)
        );
        let id = b.create_topic("t", 2).unwrap();
        assert_eq!(b.create_topic("t", 2), Err(code::TOPIC_ALREADY_EXISTS));
        assert_eq!(b.produce("t", 1, build(0, 3, 4, 0)).unwrap().base_offset, 0);
        assert_eq!(b.produce("t", 1, build(0, 2, 4, 0)).unwrap().base_offset, 3);
        assert_eq!(
            b.produce("t", 2, build(0, 2, 4, 0)),
            Err(code::UNKNOWN_TOPIC_OR_PARTITION)
        );
        assert_eq!(b.produce("t", 0, vec![1, 2, 3]), Err(code::CORRUPT_MESSAGE));
        assert_eq!(b.read("t", 1, 6, 1000), Err(code::OFFSET_OUT_OF_RANGE));
        b.checkpoint_all();
        drop(b);
        let b = Broker::open(cfg).unwrap();
        assert_eq!(b.topics["t"].id, id);
        assert_eq!(b.topics["t"].partitions.len(), 2);
        let r = b.read("t", 1, 3, 1000).unwrap();
        assert_eq!(
            (
                r.high_watermark,
                crate::batch::scan(&r.records).batches.len()
            ),
            (5, 1)
        );
        assert!(b.read("t", 0, 0, 1000).unwrap().records.is_empty());
    }

    #[test]
    fn auto_create_only_when_enabled() {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = BrokerConfig::new(d.path().to_path_buf());
        let mut b = Broker::open(cfg.clone()).unwrap();
        assert_eq!(
            b.topic_or_create("x", true).err(),
            Some(code::UNKNOWN_TOPIC_OR_PARTITION)
        );
        drop(b);
        cfg.auto_create_topics = true;
        let mut b = Broker::open(cfg).unwrap();
        assert!(b.topic_or_create("x", false).is_err());
        assert!(b.topic_or_create("x", true).is_ok());
        assert_eq!(b.delete_topic("x"), code::NONE);
        assert_eq!(b.delete_topic("x"), code::UNKNOWN_TOPIC_OR_PARTITION);
    }
}
