//! Broker state: topics with their partition replicas (sans-IO [`PartitionState`] + durable
//! [`PartitionLog`]), the group coordinator and the committed offsets store. Called by the
//! tokio adapter in [`crate::server`] under one lock; no sockets here.

use crate::group::GroupCoordinator;
use crate::log::{FlushPolicy, LogConfig, LogError, PartitionLog, ReadResult};
use crate::offsets::{OffsetStore, OFFSETS_TOPIC};
use crate::partition::{FetchBound, PartitionState, ProduceError};
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
        })
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

    fn replica_mut(&mut self, topic: &str, p: i32) -> Result<&mut Replica, i16> {
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
        let flush = self.config.flush;
        let r = self.replica_mut(topic, p)?;
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
        r.state.on_local_append(&plan);
        Ok(Appended {
            base_offset: plan.base_offset,
            last_offset: plan.last_offset,
            log_start_offset: r.state.log_start_offset,
        })
    }

    pub fn read(&self, topic: &str, p: i32, offset: i64, max_bytes: usize) -> Result<Read, i16> {
        let r = self.replica(topic, p)?;
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

    /// Flush everything now, under the lock (shutdown).
    pub fn flush_all(&mut self) {
        for t in self.topics.values_mut() {
            for r in &mut t.partitions {
                if let Err(e) = r.log.flush() {
                    tracing::error!(error = %e, "flush failed");
                }
            }
        }
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

fn read_topic_id(dir: &Path) -> Option<Uuid> {
    let text = fs::read_to_string(dir.join(METADATA_FILE)).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("topic_id: "))
        .and_then(|s| Uuid::parse_str(s.trim()).ok())
}

fn open_replica(cfg: &BrokerConfig, topic: &str, id: Uuid, p: i32) -> anyhow::Result<Replica> {
    let dir = partition_dir(&cfg.data_dir, topic, p);
    let (log, report) = PartitionLog::open(&dir, cfg.log)?;
    fs::write(
        dir.join(METADATA_FILE),
        format!("version: 0\ntopic_id: {id}\n"),
    )?;
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
