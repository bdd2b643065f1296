//! ZooKeeper mode (Kafka before KIP-500): every broker keeps a ZooKeeper session, registers
//! itself under the ephemeral `/brokers/ids/<id>` and runs a controller elector; the broker that
//! creates the ephemeral `/controller` znode (and, in the same multi-op, bumps
//! `/controller_epoch` with a zkVersion check, KAFKA-6082) is the controller. It reads the
//! cluster back from ZooKeeper, elects partition leaders when brokers leave, writes each
//! partition-state znode conditionally on its zkVersion, and pushes the result to brokers with
//! LeaderAndIsr and UpdateMetadata requests stamped with its controller epoch. Brokers refuse a
//! request from an older controller epoch (STALE_CONTROLLER_EPOCH) and feed the accepted
//! partition states into the same data plane KRaft mode uses (the broker's metadata image), so
//! partition.rs and replication.rs do not know which mode they run in.
//!
//! The model of this protocol is `models/src/zk_controller.rs` (`specs/zk-controller.md`): the
//! znodes, the request fields, the checks and the bug flags carry the same names. The reference
//! cluster's layout is in `specs/cluster-zookeeper.md`.
//!
//! Sans-IO parts (unit-tested below): the znode formats, the leader election, the replica
//! placement, the controller-epoch fence, the wire codec of the two controller requests and how
//! a broker folds them into its image. The tokio parts: [`ZkNode::start`] (session, registration,
//! elector, controller event loop, request senders) and [`ZkChannel`] (the leader's ISR writes
//! and CreateTopics).

use crate::metadata::{
    BrokerId, BrokerRegistration, MetadataImage, PartitionRegistration, TopicImage, NO_LEADER,
};
use crate::partition::AlterPartitionRequest;
use crate::replication::{BoxFuture, ControllerChannel};
use crate::server::Close;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;
use zookeeper_client as zk;

/// Kafka API keys of the ZooKeeper-era controller requests (removed from Kafka 4.0, and so from
/// the `kafka-protocol` crate: the codec is [`wire`]).
pub const LEADER_AND_ISR: i16 = 4;
pub const UPDATE_METADATA: i16 = 6;
/// The versions spoken: LeaderAndIsr v2 (topic-grouped, broker epoch: KIP-380) and
/// UpdateMetadata v5 (the same grouping), the last versions before flexible encoding.
pub const LEADER_AND_ISR_VERSION: i16 = 2;
pub const UPDATE_METADATA_VERSION: i16 = 5;

/// Kafka error codes of this protocol.
pub mod code {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    /// A request from a controller epoch older than one the broker accepted (the zombie's).
    pub const STALE_CONTROLLER_EPOCH: i16 = 11;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    pub const NOT_CONTROLLER: i16 = 41;
    /// Assignments given together with a partition count or replication factor.
    pub const INVALID_REQUEST: i16 = 42;
    /// The partition-state znode moved on (BadVersion): the writer's zkVersion is stale.
    pub const INVALID_UPDATE_VERSION: i16 = 108;
}

// ---------------------------------------------------------------------------------------------
// Bug flags

/// ZooKeeper-mode bug flags (the `zk-controller` model's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZkBug {
    /// KAFKA-6082 and STALE_CONTROLLER_EPOCH switched off: brokers obey a request from any
    /// controller epoch, and the controller's writes skip the `/controller_epoch` check.
    NoControllerEpochCheck,
    /// KAFKA-2729 / KAFKA-1382: partition-state writes ignore the cached zkVersion.
    NoZkVersionCheck,
}

impl ZkBug {
    pub const ALL: [ZkBug; 2] = [ZkBug::NoControllerEpochCheck, ZkBug::NoZkVersionCheck];

    pub fn name(self) -> &'static str {
        match self {
            ZkBug::NoControllerEpochCheck => "no-controller-epoch-check",
            ZkBug::NoZkVersionCheck => "no-zkversion-check",
        }
    }

    pub fn parse(name: &str) -> Option<ZkBug> {
        ZkBug::ALL.into_iter().find(|b| b.name() == name)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZkBugs(pub Vec<ZkBug>);

impl ZkBugs {
    pub fn has(&self, b: ZkBug) -> bool {
        self.0.contains(&b)
    }
}

// ---------------------------------------------------------------------------------------------
// Znodes (Kafka's paths and JSON formats)

pub const CONTROLLER: &str = "/controller";
pub const CONTROLLER_EPOCH: &str = "/controller_epoch";
pub const BROKER_IDS: &str = "/brokers/ids";
pub const TOPICS: &str = "/brokers/topics";
pub const ISR_CHANGE_NOTIFICATION: &str = "/isr_change_notification";
/// Persistent znodes every broker makes sure exist before it registers.
const PERSISTENT_PATHS: [&str; 5] = [
    "/brokers",
    BROKER_IDS,
    TOPICS,
    ISR_CHANGE_NOTIFICATION,
    "/brokers/seqid",
];

pub fn broker_path(id: BrokerId) -> String {
    format!("{BROKER_IDS}/{id}")
}

pub fn topic_path(topic: &str) -> String {
    format!("{TOPICS}/{topic}")
}

pub fn partition_state_path(topic: &str, p: i32) -> String {
    format!("{TOPICS}/{topic}/partitions/{p}/state")
}

/// `/controller`: `{"version":1,"brokerid":N,"timestamp":"..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerZnode {
    pub version: i32,
    pub brokerid: BrokerId,
    #[serde(default)]
    pub timestamp: String,
}

/// `/brokers/ids/<id>` (the fields this cluster uses of Kafka's version 4 format).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerZnode {
    pub version: i32,
    pub host: String,
    pub port: i32,
    #[serde(default)]
    pub endpoints: Vec<String>,
}

/// `/brokers/topics/<t>`: the replica assignment (version 3 carries the topic id, KIP-516).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicZnode {
    pub version: i32,
    #[serde(default)]
    pub topic_id: Option<Uuid>,
    pub partitions: BTreeMap<String, Vec<BrokerId>>,
}

impl TopicZnode {
    pub fn assignment(&self) -> BTreeMap<i32, Vec<BrokerId>> {
        self.partitions
            .iter()
            .filter_map(|(p, r)| Some((p.parse().ok()?, r.clone())))
            .collect()
    }
}

/// `/brokers/topics/<t>/partitions/<p>/state`; its zkVersion is the partition epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStateZnode {
    pub controller_epoch: i32,
    pub leader: BrokerId,
    pub version: i32,
    pub leader_epoch: i32,
    pub isr: Vec<BrokerId>,
}

impl PartitionStateZnode {
    pub fn new(controller_epoch: i32, leader: BrokerId, leader_epoch: i32, isr: Vec<i32>) -> Self {
        PartitionStateZnode {
            controller_epoch,
            leader,
            version: 1,
            leader_epoch,
            isr,
        }
    }
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("znode formats serialize")
}

fn from_json<T: for<'a> Deserialize<'a>>(path: &str, data: &[u8]) -> anyhow::Result<T> {
    serde_json::from_slice(data).map_err(|e| anyhow::anyhow!("znode {path} does not parse: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Pure decisions

/// The controller's partition-state transition for the live broker set (Kafka's
/// PartitionStateMachine / ReplicaStateMachine in ZooKeeper mode), or `None` when nothing
/// changes. A new partition gets its first live replica as leader and the live replicas as ISR.
/// A dead leader is replaced by the first live replica (assignment order) that is in the ISR
/// (no unclean election); with none, the partition goes offline keeping its last ISR. Dead
/// followers leave the ISR. Every controller change bumps the leader epoch, as Kafka's
/// `newLeaderAndIsr` did.
pub fn elect(
    replicas: &[BrokerId],
    current: Option<&PartitionStateZnode>,
    live: &BTreeSet<BrokerId>,
    controller_epoch: i32,
) -> Option<PartitionStateZnode> {
    let is_live = |b: &BrokerId| live.contains(b);
    let Some(cur) = current else {
        let isr: Vec<BrokerId> = replicas.iter().copied().filter(is_live).collect();
        let leader = isr.first().copied().unwrap_or(NO_LEADER);
        return Some(PartitionStateZnode::new(controller_epoch, leader, 0, isr));
    };
    let live_isr: Vec<BrokerId> = cur.isr.iter().copied().filter(is_live).collect();
    if cur.leader != NO_LEADER && is_live(&cur.leader) {
        if live_isr.len() == cur.isr.len() {
            return None;
        }
        return Some(PartitionStateZnode::new(
            controller_epoch,
            cur.leader,
            cur.leader_epoch + 1,
            live_isr,
        ));
    }
    match replicas
        .iter()
        .copied()
        .find(|b| is_live(b) && cur.isr.contains(b))
    {
        Some(leader) => Some(PartitionStateZnode::new(
            controller_epoch,
            leader,
            cur.leader_epoch + 1,
            live_isr,
        )),
        None if cur.leader != NO_LEADER => Some(PartitionStateZnode::new(
            controller_epoch,
            NO_LEADER,
            cur.leader_epoch + 1,
            cur.isr.clone(),
        )),
        None => None,
    }
}

/// Replica placement for CreateTopics (Kafka's rack-unaware `assignReplicasToBrokers`, without
/// the random start): partition `p`'s replicas are `rf` consecutive live brokers from `p`.
pub fn assign_replicas(
    live: &[BrokerId],
    partitions: i32,
    replication_factor: usize,
) -> Result<Vec<Vec<BrokerId>>, i16> {
    if !(1..=10_000).contains(&partitions) {
        return Err(code::INVALID_PARTITIONS);
    }
    if replication_factor == 0 || replication_factor > live.len() {
        return Err(code::INVALID_REPLICATION_FACTOR);
    }
    Ok((0..partitions as usize)
        .map(|p| {
            (0..replication_factor)
                .map(|i| live[(p + i) % live.len()])
                .collect()
        })
        .collect())
}

/// A broker's fence against older controllers (ReplicaManager's `controllerEpoch`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControllerEpochFence {
    /// The newest controller epoch this broker accepted a request from.
    pub controller_epoch: i32,
}

impl ControllerEpochFence {
    /// Admits a request from `epoch` (remembering it if newer) or refuses it with
    /// STALE_CONTROLLER_EPOCH; under `no-controller-epoch-check` everything is admitted.
    pub fn admit(&mut self, epoch: i32, bugs: &ZkBugs) -> Result<(), i16> {
        if epoch < self.controller_epoch && !bugs.has(ZkBug::NoControllerEpochCheck) {
            return Err(code::STALE_CONTROLLER_EPOCH);
        }
        self.controller_epoch = self.controller_epoch.max(epoch);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The wire format of LeaderAndIsr v2 and UpdateMetadata v5

/// One partition's state as both requests carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionStateWire {
    pub topic: String,
    pub partition: i32,
    pub controller_epoch: i32,
    pub leader: BrokerId,
    pub leader_epoch: i32,
    pub isr: Vec<BrokerId>,
    /// The partition-state znode's zkVersion (the partition epoch).
    pub zk_version: i32,
    pub replicas: Vec<BrokerId>,
}

/// A live broker as the requests carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveBroker {
    pub id: BrokerId,
    pub host: String,
    pub port: i32,
}

impl LiveBroker {
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// LeaderAndIsr (roles, to a partition's replicas) or UpdateMetadata (metadata cache, to every
/// live broker): the same header fields, partition states and brokers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlRequest {
    pub api_key: i16,
    pub controller_id: BrokerId,
    pub controller_epoch: i32,
    pub broker_epoch: i64,
    pub partitions: Vec<PartitionStateWire>,
    /// LeaderAndIsr: the leaders named (`live_leaders`); UpdateMetadata: every live broker.
    pub brokers: Vec<LiveBroker>,
}

pub mod wire {
    //! Hand-written codec (the `kafka-protocol` crate no longer has these APIs). Decoding
    //! checks every length against what is left, so a malformed request is an error.
    use super::*;

    fn put_str(b: &mut BytesMut, s: &str) {
        b.put_i16(s.len() as i16);
        b.put_slice(s.as_bytes());
    }

    fn put_ids(b: &mut BytesMut, ids: &[i32]) {
        b.put_i32(ids.len() as i32);
        for &i in ids {
            b.put_i32(i);
        }
    }

    fn need(b: &Bytes, n: usize) -> anyhow::Result<()> {
        anyhow::ensure!(b.remaining() >= n, "truncated request");
        Ok(())
    }

    fn i16_(b: &mut Bytes) -> anyhow::Result<i16> {
        need(b, 2)?;
        Ok(b.get_i16())
    }
    fn i32_(b: &mut Bytes) -> anyhow::Result<i32> {
        need(b, 4)?;
        Ok(b.get_i32())
    }
    fn i64_(b: &mut Bytes) -> anyhow::Result<i64> {
        need(b, 8)?;
        Ok(b.get_i64())
    }
    fn str_(b: &mut Bytes) -> anyhow::Result<String> {
        let n = i16_(b)?;
        anyhow::ensure!(n >= 0, "null string");
        need(b, n as usize)?;
        let s = b.split_to(n as usize);
        String::from_utf8(s.to_vec()).map_err(|_| anyhow::anyhow!("string is not UTF-8"))
    }
    fn nullable_str(b: &mut Bytes) -> anyhow::Result<Option<String>> {
        let n = i16_(b)?;
        if n < 0 {
            return Ok(None);
        }
        need(b, n as usize)?;
        let s = b.split_to(n as usize);
        Ok(Some(String::from_utf8_lossy(&s).into_owned()))
    }
    /// An array length, bounded by what is left (each element is at least `min` bytes).
    fn len(b: &mut Bytes, min: usize) -> anyhow::Result<usize> {
        let n = i32_(b)?;
        anyhow::ensure!(n >= 0, "null array");
        anyhow::ensure!(
            n as usize * min <= b.remaining(),
            "array longer than the request"
        );
        Ok(n as usize)
    }
    fn ids(b: &mut Bytes) -> anyhow::Result<Vec<i32>> {
        let n = len(b, 4)?;
        (0..n).map(|_| i32_(b)).collect()
    }

    /// The request body (no header).
    pub fn encode(r: &ControlRequest) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i32(r.controller_id);
        b.put_i32(r.controller_epoch);
        b.put_i64(r.broker_epoch);
        let mut topics: Vec<(&str, Vec<&PartitionStateWire>)> = Vec::new();
        for p in &r.partitions {
            match topics.iter_mut().find(|(t, _)| *t == p.topic) {
                Some((_, v)) => v.push(p),
                None => topics.push((&p.topic, vec![p])),
            }
        }
        b.put_i32(topics.len() as i32);
        for (t, ps) in topics {
            put_str(&mut b, t);
            b.put_i32(ps.len() as i32);
            for p in ps {
                b.put_i32(p.partition);
                b.put_i32(p.controller_epoch);
                b.put_i32(p.leader);
                b.put_i32(p.leader_epoch);
                put_ids(&mut b, &p.isr);
                b.put_i32(p.zk_version);
                put_ids(&mut b, &p.replicas);
                if r.api_key == LEADER_AND_ISR {
                    b.put_u8(0); // is_new
                } else {
                    put_ids(&mut b, &[]); // offline_replicas
                }
            }
        }
        b.put_i32(r.brokers.len() as i32);
        for br in &r.brokers {
            b.put_i32(br.id);
            if r.api_key == LEADER_AND_ISR {
                put_str(&mut b, &br.host);
                b.put_i32(br.port);
            } else {
                b.put_i32(1); // one endpoint
                b.put_i32(br.port);
                put_str(&mut b, &br.host);
                put_str(&mut b, "PLAINTEXT");
                b.put_i16(0); // security protocol PLAINTEXT
                b.put_i16(-1); // rack: null
            }
        }
        b
    }

    pub fn decode(api_key: i16, mut b: Bytes) -> anyhow::Result<ControlRequest> {
        let controller_id = i32_(&mut b)?;
        let controller_epoch = i32_(&mut b)?;
        let broker_epoch = i64_(&mut b)?;
        let mut partitions = Vec::new();
        for _ in 0..len(&mut b, 6)? {
            let topic = str_(&mut b)?;
            for _ in 0..len(&mut b, 28)? {
                let partition = i32_(&mut b)?;
                let pce = i32_(&mut b)?;
                let leader = i32_(&mut b)?;
                let leader_epoch = i32_(&mut b)?;
                let isr = ids(&mut b)?;
                let zk_version = i32_(&mut b)?;
                let replicas = ids(&mut b)?;
                if api_key == LEADER_AND_ISR {
                    need(&b, 1)?;
                    b.advance(1);
                } else {
                    ids(&mut b)?;
                }
                partitions.push(PartitionStateWire {
                    topic: topic.clone(),
                    partition,
                    controller_epoch: pce,
                    leader,
                    leader_epoch,
                    isr,
                    zk_version,
                    replicas,
                });
            }
        }
        let mut brokers = Vec::new();
        for _ in 0..len(&mut b, 4)? {
            let id = i32_(&mut b)?;
            if api_key == LEADER_AND_ISR {
                let host = str_(&mut b)?;
                let port = i32_(&mut b)?;
                brokers.push(LiveBroker { id, host, port });
            } else {
                let mut first = None;
                for _ in 0..len(&mut b, 10)? {
                    let port = i32_(&mut b)?;
                    let host = str_(&mut b)?;
                    let _listener = str_(&mut b)?;
                    let _protocol = i16_(&mut b)?;
                    first.get_or_insert(LiveBroker { id, host, port });
                }
                let _rack = nullable_str(&mut b)?;
                if let Some(br) = first {
                    brokers.push(br);
                }
            }
        }
        Ok(ControlRequest {
            api_key,
            controller_id,
            controller_epoch,
            broker_epoch,
            partitions,
            brokers,
        })
    }

    /// A whole frame (length prefix, request header v1, body).
    pub fn frame(r: &ControlRequest, correlation: i32, client_id: &str) -> Bytes {
        let version = if r.api_key == LEADER_AND_ISR {
            LEADER_AND_ISR_VERSION
        } else {
            UPDATE_METADATA_VERSION
        };
        let body = encode(r);
        let mut b = BytesMut::new();
        b.put_i32(0);
        b.put_i16(r.api_key);
        b.put_i16(version);
        b.put_i32(correlation);
        put_str(&mut b, client_id);
        b.extend_from_slice(&body);
        let n = (b.len() - 4) as i32;
        b[..4].copy_from_slice(&n.to_be_bytes());
        b.freeze()
    }

    /// The response body: LeaderAndIsr v2 `error_code, partition_errors[]`; UpdateMetadata v5
    /// `error_code`. Framed with response header v0.
    pub fn response(
        api_key: i16,
        correlation: i32,
        error: i16,
        partitions: &[(String, i32, i16)],
    ) -> Bytes {
        let mut b = BytesMut::new();
        b.put_i32(correlation);
        b.put_i16(error);
        if api_key == LEADER_AND_ISR {
            b.put_i32(partitions.len() as i32);
            for (t, p, e) in partitions {
                put_str(&mut b, t);
                b.put_i32(*p);
                b.put_i16(*e);
            }
        }
        b.freeze()
    }

    /// The top-level error code of a response frame (after the length prefix).
    pub fn response_error(mut b: Bytes) -> anyhow::Result<(i32, i16)> {
        let c = i32_(&mut b)?;
        let e = i16_(&mut b)?;
        Ok((c, e))
    }

    /// The request header (v1) of a frame: api key, version, correlation id; the body follows.
    pub fn split_header(mut b: Bytes) -> anyhow::Result<(i16, i16, i32, Bytes)> {
        let key = i16_(&mut b)?;
        let version = i16_(&mut b)?;
        let correlation = i32_(&mut b)?;
        let _client = nullable_str(&mut b)?;
        Ok((key, version, correlation, b))
    }
}

// ---------------------------------------------------------------------------------------------
// How a broker folds the requests into its image

fn registration(p: &PartitionStateWire) -> PartitionRegistration {
    PartitionRegistration {
        replicas: p.replicas.clone(),
        isr: p.isr.clone(),
        elr: Vec::new(),
        adding_replicas: Vec::new(),
        removing_replicas: Vec::new(),
        leader: p.leader,
        leader_epoch: p.leader_epoch,
        partition_epoch: p.zk_version,
    }
}

fn broker_registration(b: &LiveBroker) -> BrokerRegistration {
    BrokerRegistration {
        broker_id: b.id,
        broker_epoch: 0,
        incarnation_id: Uuid::nil(),
        endpoint: b.endpoint(),
        fenced: false,
        in_controlled_shutdown: false,
        unclean_shutdown: false,
    }
}

/// The image after an admitted request. LeaderAndIsr (ReplicaManager's
/// `becomeLeaderOrFollower`) takes a partition state only with a higher leader epoch, or the
/// same leader epoch and a higher zkVersion; UpdateMetadata (the metadata cache) replaces the
/// live brokers and takes every partition state as sent — ZooKeeper mode's metadata cache had no
/// epoch check, which is why the controller epoch is its only fence (`specs/zk-controller.md`).
/// `topic_id` names the id of a topic the image does not know yet (read from its znode).
/// Returns the per-partition error codes (LeaderAndIsr).
pub fn apply_control_request(
    image: &mut MetadataImage,
    r: &ControlRequest,
    topic_id: &dyn Fn(&str) -> Uuid,
) -> Vec<(String, i32, i16)> {
    let mut errors = Vec::new();
    if r.api_key == UPDATE_METADATA {
        image.brokers = r
            .brokers
            .iter()
            .map(|b| (b.id, broker_registration(b)))
            .collect();
    } else {
        for b in &r.brokers {
            image
                .brokers
                .entry(b.id)
                .or_insert_with(|| broker_registration(b));
        }
    }
    for p in &r.partitions {
        let id = match image.topic_ids.get(&p.topic) {
            Some(id) => *id,
            None => {
                let id = topic_id(&p.topic);
                image.topic_ids.insert(p.topic.clone(), id);
                image.topics.insert(
                    id,
                    TopicImage {
                        name: p.topic.clone(),
                        topic_id: id,
                        partitions: BTreeMap::new(),
                    },
                );
                id
            }
        };
        let topic = image.topics.get_mut(&id).expect("inserted above");
        let newer = match topic.partitions.get(&p.partition) {
            None => true,
            Some(cur) => {
                p.leader_epoch > cur.leader_epoch
                    || (p.leader_epoch == cur.leader_epoch && p.zk_version > cur.partition_epoch)
            }
        };
        if r.api_key == UPDATE_METADATA || newer {
            topic.partitions.insert(p.partition, registration(p));
            errors.push((p.topic.clone(), p.partition, code::NONE));
        } else {
            // Kafka answers a LeaderAndIsr whose leader epoch is not newer with this code too.
            errors.push((p.topic.clone(), p.partition, code::STALE_CONTROLLER_EPOCH));
        }
    }
    image.offset += 1;
    errors
}

// ---------------------------------------------------------------------------------------------
// The tokio side: one ZooKeeper node per broker process

/// `kcheck broker --zookeeper ...` settings.
#[derive(Clone, Debug)]
pub struct ZkConfig {
    /// `host:port,...` (zookeeper.connect).
    pub connect: String,
    /// zookeeper.session.timeout.ms (Kafka's default was 18 s; the tests use less).
    pub session_timeout_ms: u64,
    pub bugs: ZkBugs,
    /// Test-only (`--test-hold-controller-events`): SIGUSR2 holds the controller's event
    /// processing and the next SIGUSR2 releases it ([`ZkNode::toggle_event_hold`]). Off by
    /// default; it only lines up the timing of the zombie window, it does not create it.
    pub test_event_hold: bool,
}

/// What `kcheck cluster status` and the tests read: this broker's view of the controller.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ControllerView {
    /// The broker `/controller` names, as last read.
    pub controller: Option<BrokerId>,
    /// Set while this broker is the controller: its controller epoch.
    pub active_epoch: Option<i32>,
    /// The newest controller epoch this broker accepted a request from.
    pub accepted_controller_epoch: i32,
}

/// The broker's ZooKeeper-mode state shared with the request handlers.
pub struct ZkNode {
    pub node_id: BrokerId,
    pub endpoint: LiveBroker,
    config: ZkConfig,
    image_tx: watch::Sender<Arc<MetadataImage>>,
    fence: Mutex<ControllerEpochFence>,
    session: watch::Sender<Option<zk::Client>>,
    view: watch::Sender<ControllerView>,
    /// The last LeaderAndIsr + UpdateMetadata frames this broker sent to each broker while it
    /// was controller (the test-only zombie resend replays them, see [`ZkNode::resend_last`]).
    last_sent: Mutex<BTreeMap<BrokerId, Vec<Bytes>>>,
    /// The controller epoch of this broker's controller task while it runs, including after
    /// its session expired (the zombie window: [`Controller::run`]); `None` when it has ended.
    controller_task: watch::Sender<Option<i32>>,
    /// Test-only hold of the controller's event processing ([`ZkConfig::test_event_hold`]).
    event_hold: watch::Sender<bool>,
}

impl ZkNode {
    /// Starts the session loop (connect, register, elect, control) and returns at once.
    pub fn start(node_id: BrokerId, endpoint: LiveBroker, config: ZkConfig) -> Arc<ZkNode> {
        let (image_tx, _) = watch::channel(Arc::new(MetadataImage::default()));
        let (session, _) = watch::channel(None);
        let (view, _) = watch::channel(ControllerView::default());
        let node = Arc::new(ZkNode {
            node_id,
            endpoint,
            config,
            image_tx,
            fence: Mutex::new(ControllerEpochFence::default()),
            session,
            view,
            last_sent: Mutex::new(BTreeMap::new()),
            controller_task: watch::channel(None).0,
            event_hold: watch::channel(false).0,
        });
        let n = node.clone();
        tokio::spawn(async move { n.session_loop().await });
        node
    }

    pub fn image(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.image_tx.subscribe()
    }

    pub fn view(&self) -> watch::Receiver<ControllerView> {
        self.view.subscribe()
    }

    fn client(&self) -> Option<zk::Client> {
        self.session.borrow().clone()
    }

    /// One ZooKeeper session after another: a session that expires (the broker was paused or
    /// cut off past the session timeout) ends this broker's controllership, and the broker
    /// registers again with a new session, as Kafka's `KafkaZkClient` did.
    async fn session_loop(self: Arc<Self>) {
        loop {
            let client = match zk::Client::connector()
                .with_session_timeout(Duration::from_millis(self.config.session_timeout_ms))
                .connect(&self.config.connect)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, connect = %self.config.connect, "cannot open a ZooKeeper session; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut states = client.state_watcher();
            if let Err(e) = self.register(&client).await {
                tracing::warn!(error = %e, "broker registration in ZooKeeper failed; new session");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            self.session.send_replace(Some(client.clone()));
            tracing::info!(session = ?client.session_id(), "registered in ZooKeeper");
            self.await_zombie_controller().await;
            let expired = async {
                loop {
                    let s = states.changed().await;
                    if s.is_terminated() {
                        return s;
                    }
                }
            };
            tokio::select! {
                s = expired => tracing::warn!(state = %s, "ZooKeeper session ended: registering again"),
                _ = self.clone().elector(client.clone()) => {}
            }
            self.session.send_replace(None);
        }
    }

    /// The zombie window's end. A controller task that outlived its session (it had events
    /// in progress or queued: [`Controller::run`]) finishes them on the session just
    /// registered and then resigns; this broker's elector starts only after that, as Kafka's
    /// re-election event queued behind the events already in its controller's queue. Bounded:
    /// after [`ZOMBIE_WINDOW_MAX`] the elector starts anyway.
    async fn await_zombie_controller(&self) {
        let mut task = self.controller_task.subscribe();
        let Some(epoch) = *task.borrow_and_update() else {
            return;
        };
        tracing::warn!(
            controller_epoch = epoch,
            "new session registered while the controller of the expired one still runs: it finishes its events first"
        );
        println!(
            "kcheck broker {}: new ZooKeeper session registered; the controller of epoch {epoch} finishes its events on it before resigning",
            self.node_id
        );
        if tokio::time::timeout(ZOMBIE_WINDOW_MAX, task.wait_for(Option::is_none))
            .await
            .is_err()
        {
            tracing::error!(
                controller_epoch = epoch,
                "the expired session's controller still runs after {ZOMBIE_WINDOW_MAX:?}; electing anyway"
            );
        }
    }

    /// Test-only ([`ZkConfig::test_event_hold`], SIGUSR2): flips the hold of the controller's
    /// event processing; returns whether it is now held.
    pub fn toggle_event_hold(&self) -> bool {
        let mut held = false;
        self.event_hold.send_modify(|h| {
            *h = !*h;
            held = *h;
        });
        held
    }

    /// Creates the persistent paths and this broker's ephemeral registration. A registration
    /// left by this broker's previous (expired) session blocks until ZooKeeper deletes it.
    async fn register(&self, client: &zk::Client) -> anyhow::Result<()> {
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        for p in PERSISTENT_PATHS {
            match client.create(p, b"", &persistent).await {
                Ok(_) | Err(zk::Error::NodeExists) => {}
                Err(e) => anyhow::bail!("creating {p}: {e}"),
            }
        }
        let data = to_json(&BrokerZnode {
            version: 4,
            host: self.endpoint.host.clone(),
            port: self.endpoint.port,
            endpoints: vec![format!("PLAINTEXT://{}", self.endpoint.endpoint())],
        });
        let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
        for _ in 0..600 {
            match client
                .create(&broker_path(self.node_id), &data, &ephemeral)
                .await
            {
                Ok(_) => return Ok(()),
                Err(zk::Error::NodeExists) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => anyhow::bail!("registering {}: {e}", broker_path(self.node_id)),
            }
        }
        anyhow::bail!(
            "{} still held by an older session after 60 s",
            broker_path(self.node_id)
        )
    }

    /// The controller elector: watch `/controller`; when it is absent, try to become controller.
    async fn elector(self: Arc<Self>, client: zk::Client) {
        loop {
            match client.check_and_watch_stat(CONTROLLER).await {
                Ok((None, _)) => match self.try_become_controller(&client).await {
                    Ok(Some(epoch)) => {
                        // Its own task: when the session expires this elector is dropped, and
                        // the controller runs on through its zombie window (`Controller::run`).
                        let task =
                            tokio::spawn(Controller::run(self.clone(), client.clone(), epoch));
                        let reason = match task.await {
                            Ok(r) => r,
                            Err(e) => Resign::Zk(format!("controller task ended: {e}")),
                        };
                        if matches!(reason, Resign::SessionExpired) {
                            continue;
                        }
                        // Resigned over a ZooKeeper error with the session alive: give the role
                        // up in ZooKeeper too, or /controller would name a broker not acting.
                        self.release_controller(&client).await;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "controller election failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Ok((Some(_), watcher)) => {
                    if let Ok((data, _)) = client.get_data(CONTROLLER).await {
                        if let Ok(c) = from_json::<ControllerZnode>(CONTROLLER, &data) {
                            self.view.send_modify(|v| v.controller = Some(c.brokerid));
                        }
                    }
                    watcher.changed().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watching /controller failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Deletes `/controller` if it names this broker (conditionally on the version read).
    async fn release_controller(&self, client: &zk::Client) {
        if let Ok((data, stat)) = client.get_data(CONTROLLER).await {
            if from_json::<ControllerZnode>(CONTROLLER, &data)
                .is_ok_and(|z| z.brokerid == self.node_id)
            {
                let _ = client.delete(CONTROLLER, Some(stat.version)).await;
            }
        }
    }

    /// Kafka's `registerControllerAndIncrementControllerEpoch`: one multi-op creates the
    /// ephemeral `/controller` and sets `/controller_epoch` to epoch + 1 conditionally on the
    /// zkVersion read, so two brokers can never both win one epoch. Returns the new epoch and
    /// `/controller_epoch`'s new zkVersion.
    async fn try_become_controller(&self, client: &zk::Client) -> anyhow::Result<Option<Epoch>> {
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        let (data, stat) = match client.get_data(CONTROLLER_EPOCH).await {
            Ok(x) => x,
            Err(zk::Error::NoNode) => {
                match client.create(CONTROLLER_EPOCH, b"0", &persistent).await {
                    Ok(_) | Err(zk::Error::NodeExists) => {}
                    Err(e) => anyhow::bail!("creating {CONTROLLER_EPOCH}: {e}"),
                }
                client.get_data(CONTROLLER_EPOCH).await?
            }
            Err(e) => return Err(e.into()),
        };
        let current: i32 = std::str::from_utf8(&data)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{CONTROLLER_EPOCH} holds {data:?}, not a number"))?;
        let epoch = current + 1;
        let me = to_json(&ControllerZnode {
            version: 1,
            brokerid: self.node_id,
            timestamp: now_millis().to_string(),
        });
        let mut multi = client.new_multi_writer();
        multi.add_create(
            CONTROLLER,
            &me,
            &zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all()),
        )?;
        multi.add_set_data(
            CONTROLLER_EPOCH,
            epoch.to_string().as_bytes(),
            Some(stat.version),
        )?;
        match multi.commit().await {
            Ok(results) => {
                let zk_version = match results.get(1) {
                    Some(zk::MultiWriteResult::SetData { stat }) => stat.version,
                    _ => stat.version + 1,
                };
                tracing::info!(
                    controller_epoch = epoch,
                    "became controller (created /controller, bumped /controller_epoch)"
                );
                println!(
                    "kcheck broker {}: controller with controller epoch {epoch}",
                    self.node_id
                );
                self.view.send_modify(|v| {
                    v.controller = Some(self.node_id);
                    v.active_epoch = Some(epoch);
                });
                Ok(Some(Epoch { epoch, zk_version }))
            }
            Err(zk::MultiWriteError::OperationFailed { index, source }) => {
                tracing::debug!(index, error = %source, "lost the controller election");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A LeaderAndIsr or UpdateMetadata frame (length prefix removed) for this broker, or
    /// `None` when the frame is another API. Malformed requests close the connection.
    pub async fn handle_control_frame(&self, frame: &Bytes) -> Result<Option<Bytes>, Close> {
        if frame.len() < 2 {
            return Ok(None);
        }
        let key = i16::from_be_bytes([frame[0], frame[1]]);
        if key != LEADER_AND_ISR && key != UPDATE_METADATA {
            return Ok(None);
        }
        let (key, version, correlation, body) = wire::split_header(frame.clone())
            .map_err(|e| Close(format!("bad controller request header: {e}")))?;
        let expected = if key == LEADER_AND_ISR {
            LEADER_AND_ISR_VERSION
        } else {
            UPDATE_METADATA_VERSION
        };
        if version != expected {
            return Err(Close(format!(
                "unsupported version {version} of API {key} (this broker speaks v{expected})"
            )));
        }
        let req = wire::decode(key, body)
            .map_err(|e| Close(format!("malformed controller request {key}: {e}")))?;
        // Topic ids come from the topic znodes (LeaderAndIsr v2 predates KIP-516).
        let mut ids = BTreeMap::new();
        let known: BTreeSet<String> = self.image_tx.borrow().topic_ids.keys().cloned().collect();
        for p in &req.partitions {
            if !known.contains(&p.topic) && !ids.contains_key(&p.topic) {
                let id = self.read_topic_id(&p.topic).await;
                ids.insert(p.topic.clone(), id);
            }
        }
        let admitted = self
            .fence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(req.controller_epoch, &self.config.bugs);
        let (error, partitions) = match admitted {
            Err(c) => {
                tracing::warn!(
                    api_key = key,
                    controller = req.controller_id,
                    controller_epoch = req.controller_epoch,
                    "refusing a request from an older controller epoch (STALE_CONTROLLER_EPOCH)"
                );
                (c, Vec::new())
            }
            Ok(()) => {
                let epoch = req.controller_epoch;
                self.view.send_modify(|v| {
                    v.accepted_controller_epoch = v.accepted_controller_epoch.max(epoch)
                });
                let mut errors = Vec::new();
                self.image_tx.send_modify(|image| {
                    let mut next = (**image).clone();
                    errors = apply_control_request(&mut next, &req, &|t| {
                        ids.get(t).copied().unwrap_or_else(Uuid::new_v4)
                    });
                    *image = Arc::new(next);
                });
                (code::NONE, errors)
            }
        };
        Ok(Some(wire::response(key, correlation, error, &partitions)))
    }

    async fn read_topic_id(&self, topic: &str) -> Uuid {
        if let Some(c) = self.client() {
            if let Ok((data, _)) = c.get_data(&topic_path(topic)).await {
                if let Ok(Some(id)) = from_json::<TopicZnode>(topic, &data).map(|t| t.topic_id) {
                    return id;
                }
            }
        }
        Uuid::new_v4()
    }

    /// Test-only (SIGUSR1 on `kcheck broker --zookeeper`): send again, to every broker, the last
    /// LeaderAndIsr and UpdateMetadata this broker sent while it was controller, stamped with its
    /// old controller epoch. It stands for a zombie controller's request delayed in the network
    /// or retried by its send thread after a newer controller took over (the reordering of
    /// controller requests the `zk-controller` model explores); the real protocol must refuse it.
    pub async fn resend_last(&self) -> Vec<(BrokerId, i16)> {
        let batches: Vec<(BrokerId, Vec<Bytes>)> = self
            .last_sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(b, f)| (*b, f.clone()))
            .collect();
        let image = self.image_tx.borrow().clone();
        let mut out = Vec::new();
        for (broker, frames) in batches {
            let endpoint = image
                .brokers
                .get(&broker)
                .map(|b| b.endpoint.clone())
                .or_else(|| (broker == self.node_id).then(|| self.endpoint.endpoint()));
            let Some(endpoint) = endpoint else { continue };
            for f in frames {
                match send_once(&endpoint, &f).await {
                    Ok(e) => out.push((broker, e)),
                    Err(e) => tracing::warn!(broker, error = %e, "zombie resend failed"),
                }
            }
        }
        tracing::warn!(answers = ?out, "test trigger: resent the last controller requests");
        out
    }
}

fn now_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// One request over a fresh connection; the top-level error code of the answer.
async fn send_once(endpoint: &str, frame: &Bytes) -> anyhow::Result<i16> {
    let io = async {
        let mut s = TcpStream::connect(endpoint).await?;
        s.write_all(frame).await?;
        let n = s.read_i32().await?;
        anyhow::ensure!((6..=1 << 20).contains(&n), "response length {n}");
        let mut buf = vec![0u8; n as usize];
        s.read_exact(&mut buf).await?;
        Ok(wire::response_error(Bytes::from(buf))?.1)
    };
    tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| anyhow::anyhow!("no answer in 5 s"))?
}

/// The longest a controller runs on after its session expired (its zombie window) before the
/// broker's new session elects without it.
const ZOMBIE_WINDOW_MAX: Duration = Duration::from_secs(60);
/// The most events a controller finishes after its session expired (the ones it had queued).
const ZOMBIE_EVENTS_MAX: usize = 64;

/// The controller epoch won and `/controller_epoch`'s zkVersion after the win (KAFKA-6082's
/// fence: every controller write checks it).
#[derive(Clone, Copy, Debug)]
pub struct Epoch {
    pub epoch: i32,
    pub zk_version: i32,
}

#[derive(Debug)]
enum Event {
    BrokerChange,
    TopicChange,
    IsrChangeNotification,
    ControllerChange,
}

/// The active controller's context (Kafka's ControllerContext).
struct Controller {
    node: Arc<ZkNode>,
    client: zk::Client,
    epoch: Epoch,
    live: BTreeMap<BrokerId, LiveBroker>,
    topics: BTreeMap<String, BTreeMap<i32, Vec<BrokerId>>>,
    /// Partition state and its zkVersion, as last read or written.
    states: BTreeMap<(String, i32), (PartitionStateZnode, i32)>,
    senders: BTreeMap<BrokerId, mpsc::UnboundedSender<Bytes>>,
    correlation: i32,
}

/// Why a controller stopped.
#[derive(Debug)]
enum Resign {
    /// KAFKA-6082: a write's `/controller_epoch` check failed.
    ControllerMoved,
    /// `/controller` no longer names this broker.
    Replaced,
    /// The session expired: the controller processed the expiry (after finishing the events
    /// it had, `Controller::run`).
    SessionExpired,
    Zk(String),
}

impl std::fmt::Display for Resign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resign::ControllerMoved => {
                write!(f, "/controller_epoch moved on (ControllerMovedException)")
            }
            Resign::Replaced => write!(f, "/controller names another broker"),
            Resign::SessionExpired => write!(f, "its ZooKeeper session expired"),
            Resign::Zk(e) => write!(f, "ZooKeeper error: {e}"),
        }
    }
}

impl From<zk::Error> for Resign {
    fn from(e: zk::Error) -> Self {
        match e {
            zk::Error::SessionExpired => Resign::SessionExpired,
            e => Resign::Zk(e.to_string()),
        }
    }
}

/// Re-arms a one-shot watch on `path` (children or the node itself) and sends `event` every
/// time it fires; ends when the controller drops the receiver or the session ends.
fn spawn_watch(
    client: zk::Client,
    path: &'static str,
    children: bool,
    event: fn() -> Event,
    tx: mpsc::UnboundedSender<Event>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // A failed re-arm (connection loss while the ensemble elects a leader) is retried;
        // a change may have been missed meanwhile, so one event is sent once it is armed again.
        // The first arming counts as such a gap: the controller reads the path concurrently
        // (`on_controller_failover`), and a broker that registers between that read and the
        // arming would otherwise never be seen (its first watch event is the next change).
        // The handlers compare against what the controller already knows, so the extra event
        // costs one re-read.
        let mut missed = true;
        for _ in 0..100_000u32 {
            let watcher = if children {
                client.list_and_watch_children(path).await.map(|(_, w)| w)
            } else {
                client.check_and_watch_stat(path).await.map(|(_, w)| w)
            };
            let watcher = match watcher {
                Ok(w) => w,
                Err(zk::Error::SessionExpired | zk::Error::ClientClosed) => return,
                Err(e) => {
                    tracing::debug!(path, error = %e, "re-arming a watch failed; retrying");
                    missed = true;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if std::mem::take(&mut missed) && tx.send(event()).is_err() {
                return;
            }
            let ev = watcher.changed().await;
            if ev.session_state.is_terminated() || tx.send(event()).is_err() {
                return;
            }
        }
    })
}

impl Controller {
    async fn run(node: Arc<ZkNode>, client: zk::Client, epoch: Epoch) -> Resign {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let watches = [
            spawn_watch(
                client.clone(),
                BROKER_IDS,
                true,
                || Event::BrokerChange,
                tx.clone(),
            ),
            spawn_watch(
                client.clone(),
                TOPICS,
                true,
                || Event::TopicChange,
                tx.clone(),
            ),
            spawn_watch(
                client.clone(),
                ISR_CHANGE_NOTIFICATION,
                true,
                || Event::IsrChangeNotification,
                tx.clone(),
            ),
            spawn_watch(
                client.clone(),
                CONTROLLER,
                false,
                || Event::ControllerChange,
                tx,
            ),
        ];
        let mut c = Controller {
            node,
            client,
            epoch,
            live: BTreeMap::new(),
            topics: BTreeMap::new(),
            states: BTreeMap::new(),
            senders: BTreeMap::new(),
            correlation: 0,
        };
        c.node.controller_task.send_replace(Some(epoch.epoch));
        let mut session = c.client.state_watcher();
        let reason = async {
            c.on_controller_failover().await?;
            loop {
                let ev = tokio::select! {
                    biased;
                    ev = rx.recv() => ev.ok_or_else(|| Resign::Zk("watches ended".into()))?,
                    _ = async {
                        while !session.changed().await.is_terminated() {}
                    } => return c.finish_after_expiry(&mut rx, None).await,
                };
                c.hold(&ev).await;
                match c.handle(&ev).await {
                    Ok(()) => {}
                    Err(Resign::SessionExpired) => {
                        return c.finish_after_expiry(&mut rx, Some(ev)).await
                    }
                    Err(Resign::Zk(e)) if c.expired_meanwhile().await => {
                        tracing::warn!(error = %e, ?ev, "a controller call failed as the session expired: the event is in hand");
                        return c.finish_after_expiry(&mut rx, Some(ev)).await;
                    }
                    Err(r) => return Err(r),
                }
            }
        }
        .await
        .unwrap_err();
        for w in watches {
            w.abort();
        }
        tracing::warn!(%reason, controller_epoch = epoch.epoch, "resigned as controller");
        println!(
            "kcheck broker {}: resigned as controller (epoch {}): {reason}",
            c.node.node_id, epoch.epoch
        );
        c.node.view.send_modify(|v| v.active_epoch = None);
        c.node.controller_task.send_replace(None);
        reason
    }

    async fn handle(&mut self, ev: &Event) -> Result<(), Resign> {
        tracing::debug!(?ev, "controller event");
        match ev {
            Event::BrokerChange => self.on_broker_change().await,
            Event::TopicChange => self.on_topic_change().await,
            Event::IsrChangeNotification => self.on_isr_change_notification().await,
            Event::ControllerChange => self.check_still_controller().await,
        }
    }

    /// Whether a call that failed with a connection error (the client's own read timeout, a
    /// lost connection) failed because the session was expiring: the client, now disconnected,
    /// either reconnects (the session lives: false) or learns that the session is gone (true).
    /// Kafka's ZooKeeper client retried such a call until connected, which after an expiry
    /// was on the session it had re-created: the event in hand went on there (the zombie
    /// window), so the controller treats it as interrupted by the expiry. Bounded by two
    /// session timeouts (false past them).
    async fn expired_meanwhile(&self) -> bool {
        let mut states = self.client.state_watcher();
        let settled = async {
            loop {
                match states.state() {
                    s if s.is_terminated() => return true,
                    zk::SessionState::Disconnected => {}
                    _ => return false,
                }
                states.changed().await;
            }
        };
        let bound = Duration::from_millis(2 * self.node.config.session_timeout_ms);
        tokio::time::timeout(bound, settled).await.unwrap_or(false)
    }

    /// Test-only ([`ZkConfig::test_event_hold`]): waits while the event processing is held.
    async fn hold(&self, ev: &Event) {
        let mut held = self.node.event_hold.subscribe();
        if !*held.borrow_and_update() {
            return;
        }
        println!(
            "kcheck broker {}: controller event {ev:?} held (test hold)",
            self.node.node_id
        );
        let _ = held.wait_for(|h| !*h).await;
    }

    /// The zombie window. Kafka's controller (one event thread, KAFKA-5028) learnt of a session
    /// expiry as one more event in its queue: the event it was handling, and those queued
    /// before the expiry (a BrokerChange from the watch that fired as a leader died), ran
    /// first, and their ZooKeeper calls went through the session its ZooKeeper client had
    /// re-created. Until KAFKA-6082 nothing fenced those writes; its `/controller_epoch`
    /// zkVersion check makes the first one fail (ControllerMovedException) once another
    /// broker has become controller, and brokers refuse the requests by controller epoch
    /// (STALE_CONTROLLER_EPOCH). So: `in_progress` (interrupted by the expiry) and the events
    /// still queued (at most [`ZOMBIE_EVENTS_MAX`]) are handled again on this broker's next
    /// session, once it has registered, and then the controller resigns. With nothing to
    /// finish it resigns at once. The `zk-controller` model's `ExpireSession` … `NoticeExpiry`.
    async fn finish_after_expiry(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Event>,
        in_progress: Option<Event>,
    ) -> Result<(), Resign> {
        let mut events: Vec<Event> = in_progress.into_iter().collect();
        while events.len() < ZOMBIE_EVENTS_MAX {
            match rx.try_recv() {
                Ok(ev) => events.push(ev),
                Err(_) => break,
            }
        }
        if events.is_empty() {
            return Err(Resign::SessionExpired);
        }
        let old = self.client.session_id();
        let mut sessions = self.node.session.subscribe();
        let next = tokio::time::timeout(ZOMBIE_WINDOW_MAX, async {
            sessions
                .wait_for(|c| c.as_ref().is_some_and(|c| c.session_id() != old))
                .await
                .ok()
                .and_then(|c| c.clone())
        })
        .await;
        let Ok(Some(client)) = next else {
            return Err(Resign::SessionExpired);
        };
        tracing::warn!(
            controller_epoch = self.epoch.epoch,
            ?events,
            "session expired with controller events unfinished: handling them on the new session before resigning"
        );
        println!(
            "kcheck broker {}: zombie controller (epoch {}) handles {events:?} on its new session",
            self.node.node_id, self.epoch.epoch
        );
        self.client = client;
        for ev in &events {
            self.hold(ev).await;
            self.handle(ev).await?;
        }
        Err(Resign::SessionExpired)
    }

    async fn check_still_controller(&mut self) -> Result<(), Resign> {
        match self.client.get_data(CONTROLLER).await {
            Ok((data, _)) => match from_json::<ControllerZnode>(CONTROLLER, &data) {
                Ok(z) if z.brokerid == self.node.node_id => Ok(()),
                _ => Err(Resign::Replaced),
            },
            Err(_) => Err(Resign::Replaced),
        }
    }

    /// Kafka's `onControllerFailover`: read brokers, topics and partition states back from
    /// ZooKeeper, elect leaders where needed, and send every live broker the full state.
    async fn on_controller_failover(&mut self) -> Result<(), Resign> {
        self.live = self.read_live_brokers().await?;
        for b in self.live.keys().copied().collect::<Vec<_>>() {
            self.ensure_sender(b);
        }
        let names = self.client.list_children(TOPICS).await?;
        for t in names {
            self.load_topic(&t).await?;
        }
        let changed = self.elect_all().await?;
        let _ = changed;
        let all: Vec<(String, i32)> = self.states.keys().cloned().collect();
        let live: Vec<BrokerId> = self.live.keys().copied().collect();
        self.send_batch(&live, &all);
        Ok(())
    }

    async fn read_live_brokers(&self) -> Result<BTreeMap<BrokerId, LiveBroker>, Resign> {
        let mut out = BTreeMap::new();
        for id in self.client.list_children(BROKER_IDS).await? {
            let Ok(id) = id.parse::<BrokerId>() else {
                continue;
            };
            match self.client.get_data(&broker_path(id)).await {
                Ok((data, _)) => {
                    if let Ok(z) = from_json::<BrokerZnode>(&broker_path(id), &data) {
                        out.insert(
                            id,
                            LiveBroker {
                                id,
                                host: z.host,
                                port: z.port,
                            },
                        );
                    }
                }
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    async fn load_topic(&mut self, topic: &str) -> Result<(), Resign> {
        let (data, _) = match self.client.get_data(&topic_path(topic)).await {
            Ok(x) => x,
            Err(zk::Error::NoNode) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let Ok(z) = from_json::<TopicZnode>(topic, &data) else {
            tracing::warn!(topic, "topic znode does not parse; skipped");
            return Ok(());
        };
        let assignment = z.assignment();
        for &p in assignment.keys() {
            match self.client.get_data(&partition_state_path(topic, p)).await {
                Ok((data, stat)) => {
                    if let Ok(s) = from_json::<PartitionStateZnode>(topic, &data) {
                        self.states.insert((topic.to_owned(), p), (s, stat.version));
                    }
                }
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.topics.insert(topic.to_owned(), assignment);
        Ok(())
    }

    /// Elects every partition that needs it; returns the partitions whose state changed.
    async fn elect_all(&mut self) -> Result<Vec<(String, i32)>, Resign> {
        let live: BTreeSet<BrokerId> = self.live.keys().copied().collect();
        let mut changed = Vec::new();
        let todo: Vec<(String, i32, Vec<BrokerId>)> = self
            .topics
            .iter()
            .flat_map(|(t, a)| a.iter().map(move |(p, r)| (t.clone(), *p, r.clone())))
            .collect();
        for (t, p, replicas) in todo {
            let key = (t.clone(), p);
            let current = self.states.get(&key).cloned();
            let Some(next) = elect(
                &replicas,
                current.as_ref().map(|c| &c.0),
                &live,
                self.epoch.epoch,
            ) else {
                continue;
            };
            if self.write_state(&t, p, &next, current.map(|c| c.1)).await? {
                tracing::info!(topic = %t, partition = p, leader = next.leader, leader_epoch = next.leader_epoch, isr = ?next.isr, "partition state written");
                changed.push(key);
            }
        }
        Ok(changed)
    }

    /// The fenced partition-state write: one multi-op that checks `/controller_epoch`'s zkVersion
    /// (KAFKA-6082; skipped under `no-controller-epoch-check`) and sets the state conditionally on
    /// the cached zkVersion (skipped under `no-zkversion-check`) or creates it. Returns false on
    /// BadVersion (the cache is refreshed from ZooKeeper); a failed epoch check resigns.
    async fn write_state(
        &mut self,
        topic: &str,
        p: i32,
        state: &PartitionStateZnode,
        expected: Option<i32>,
    ) -> Result<bool, Resign> {
        let bugs = &self.node.config.bugs;
        let path = partition_state_path(topic, p);
        if expected.is_none() {
            let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
            for parent in [
                format!("{TOPICS}/{topic}/partitions"),
                format!("{TOPICS}/{topic}/partitions/{p}"),
            ] {
                match self.client.create(&parent, b"", &persistent).await {
                    Ok(_) | Err(zk::Error::NodeExists) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let data = to_json(state);
        let mut multi = self.client.new_multi_writer();
        let fenced = !bugs.has(ZkBug::NoControllerEpochCheck);
        let build = |m: &mut zk::MultiWriter<'_>| -> Result<(), zk::Error> {
            if fenced {
                m.add_check_version(CONTROLLER_EPOCH, self.epoch.zk_version)?;
            }
            match expected {
                None => m.add_create(
                    &path,
                    &data,
                    &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
                ),
                Some(v) => {
                    let v = (!bugs.has(ZkBug::NoZkVersionCheck)).then_some(v);
                    m.add_set_data(&path, &data, v)
                }
            }
        };
        build(&mut multi)?;
        match multi.commit().await {
            Ok(results) => {
                let version = match results.last() {
                    Some(zk::MultiWriteResult::SetData { stat }) => stat.version,
                    _ => 0,
                };
                self.states
                    .insert((topic.to_owned(), p), (state.clone(), version));
                Ok(true)
            }
            Err(zk::MultiWriteError::OperationFailed { index: 0, .. }) if fenced => {
                Err(Resign::ControllerMoved)
            }
            Err(zk::MultiWriteError::OperationFailed { source, .. }) => {
                tracing::warn!(topic, partition = p, error = %source, "partition-state write refused; re-reading the state");
                if let Ok((d, stat)) = self.client.get_data(&path).await {
                    if let Ok(s) = from_json::<PartitionStateZnode>(&path, &d) {
                        self.states.insert((topic.to_owned(), p), (s, stat.version));
                    }
                }
                Ok(false)
            }
            Err(zk::MultiWriteError::RequestFailed { source }) => Err(source.into()),
        }
    }

    /// `onBrokerStartup` / `onBrokerFailure`: re-elect for the new live set; new brokers get
    /// every partition's state, everyone gets the changed partitions.
    async fn on_broker_change(&mut self) -> Result<(), Resign> {
        let live = self.read_live_brokers().await?;
        let old: BTreeSet<BrokerId> = self.live.keys().copied().collect();
        let new: BTreeSet<BrokerId> = live.keys().copied().collect();
        if old == new {
            return Ok(());
        }
        tracing::info!(?old, ?new, "live brokers changed");
        let previous = std::mem::replace(&mut self.live, live);
        for b in old.difference(&new) {
            self.senders.remove(b);
        }
        let started: Vec<BrokerId> = new.difference(&old).copied().collect();
        for &b in &started {
            self.ensure_sender(b);
        }
        let changed = match self.elect_all().await {
            Ok(c) => c,
            Err(e) => {
                // Handled again (a zombie's retry on its new session) it must see the change.
                self.live = previous;
                return Err(e);
            }
        };
        let all: Vec<(String, i32)> = self.states.keys().cloned().collect();
        self.send_batch(&started, &all);
        let others: Vec<BrokerId> = new
            .iter()
            .copied()
            .filter(|b| !started.contains(b))
            .collect();
        self.send_batch(&others, &changed);
        Ok(())
    }

    async fn on_topic_change(&mut self) -> Result<(), Resign> {
        let names = self.client.list_children(TOPICS).await?;
        let mut new = Vec::new();
        for t in names {
            if !self.topics.contains_key(&t) {
                self.load_topic(&t).await?;
                new.push(t);
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        tracing::info!(topics = ?new, "new topics");
        let changed = self.elect_all().await?;
        let live: Vec<BrokerId> = self.live.keys().copied().collect();
        self.send_batch(&live, &changed);
        Ok(())
    }

    /// A leader changed an ISR in ZooKeeper and left a notification: re-read those partitions'
    /// states and tell every broker (Kafka's IsrChangeNotification handling).
    async fn on_isr_change_notification(&mut self) -> Result<(), Resign> {
        let children = self.client.list_children(ISR_CHANGE_NOTIFICATION).await?;
        if children.is_empty() {
            return Ok(());
        }
        let mut changed = Vec::new();
        for c in children {
            let path = format!("{ISR_CHANGE_NOTIFICATION}/{c}");
            if let Ok((data, _)) = self.client.get_data(&path).await {
                if let Ok(n) = from_json::<IsrChangeZnode>(&path, &data) {
                    for p in n.partitions {
                        let key = (p.topic.clone(), p.partition);
                        let sp = partition_state_path(&p.topic, p.partition);
                        if let Ok((d, stat)) = self.client.get_data(&sp).await {
                            if let Ok(s) = from_json::<PartitionStateZnode>(&sp, &d) {
                                self.states.insert(key.clone(), (s, stat.version));
                                changed.push(key);
                            }
                        }
                    }
                }
            }
            let _ = self.client.delete(&path, None).await;
        }
        changed.sort();
        changed.dedup();
        let live: Vec<BrokerId> = self.live.keys().copied().collect();
        self.send_batch(&live, &changed);
        Ok(())
    }

    fn ensure_sender(&mut self, broker: BrokerId) {
        if self.senders.contains_key(&broker) {
            return;
        }
        let Some(b) = self.live.get(&broker) else {
            return;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(request_send_loop(broker, b.endpoint(), rx));
        self.senders.insert(broker, tx);
    }

    fn wire_state(&self, key: &(String, i32)) -> Option<PartitionStateWire> {
        let (s, v) = self.states.get(key)?;
        let replicas = self.topics.get(&key.0)?.get(&key.1)?.clone();
        Some(PartitionStateWire {
            topic: key.0.clone(),
            partition: key.1,
            controller_epoch: s.controller_epoch,
            leader: s.leader,
            leader_epoch: s.leader_epoch,
            isr: s.isr.clone(),
            zk_version: *v,
            replicas,
        })
    }

    /// Kafka's ControllerBrokerRequestBatch: to each broker, a LeaderAndIsr with the given
    /// partitions it replicates, then an UpdateMetadata with all of them and the live brokers.
    fn send_batch(&mut self, brokers: &[BrokerId], partitions: &[(String, i32)]) {
        if brokers.is_empty() || partitions.is_empty() && brokers.len() == self.live.len() {
            // Still send UpdateMetadata when the live set changed with no partition change.
            if brokers.is_empty() {
                return;
            }
        }
        let states: Vec<PartitionStateWire> = partitions
            .iter()
            .filter_map(|k| self.wire_state(k))
            .collect();
        let live: Vec<LiveBroker> = self.live.values().cloned().collect();
        for &b in brokers {
            let mine: Vec<PartitionStateWire> = states
                .iter()
                .filter(|s| s.replicas.contains(&b))
                .cloned()
                .collect();
            let mut frames = Vec::new();
            if !mine.is_empty() {
                let leaders: Vec<LiveBroker> = live
                    .iter()
                    .filter(|l| mine.iter().any(|s| s.leader == l.id))
                    .cloned()
                    .collect();
                frames.push(self.frame(LEADER_AND_ISR, mine, leaders));
            }
            frames.push(self.frame(UPDATE_METADATA, states.clone(), live.clone()));
            if let Some(tx) = self.senders.get(&b) {
                for f in &frames {
                    let _ = tx.send(f.clone());
                }
            }
            self.node
                .last_sent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(b, frames);
        }
    }

    fn frame(
        &mut self,
        api_key: i16,
        partitions: Vec<PartitionStateWire>,
        brokers: Vec<LiveBroker>,
    ) -> Bytes {
        self.correlation = self.correlation.wrapping_add(1);
        let r = ControlRequest {
            api_key,
            controller_id: self.node.node_id,
            controller_epoch: self.epoch.epoch,
            broker_epoch: -1,
            partitions,
            brokers,
        };
        wire::frame(&r, self.correlation, "kcheck-zk-controller")
    }
}

/// Kafka's RequestSendThread: one connection per broker, requests in order, each retried until
/// the broker answers (bounded) or the controller drops the broker.
async fn request_send_loop(
    broker: BrokerId,
    endpoint: String,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) {
    let mut conn: Option<TcpStream> = None;
    while let Some(frame) = rx.recv().await {
        for attempt in 0..100 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if conn.is_none() {
                match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&endpoint))
                    .await
                {
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        conn = Some(s);
                    }
                    _ => continue,
                }
            }
            let s = conn.as_mut().expect("connected above");
            let io = async {
                s.write_all(&frame).await?;
                let n = s.read_i32().await?;
                anyhow::ensure!((6..=1 << 20).contains(&n), "response length {n}");
                let mut buf = vec![0u8; n as usize];
                s.read_exact(&mut buf).await?;
                Ok(wire::response_error(Bytes::from(buf))?.1)
            };
            match tokio::time::timeout(Duration::from_secs(5), io).await {
                Ok(Ok(error)) => {
                    if error != code::NONE {
                        tracing::warn!(broker, error_code = error, "controller request refused");
                    }
                    break;
                }
                _ => conn = None,
            }
        }
        if rx.is_closed() && rx.is_empty() {
            break;
        }
    }
}

/// `/isr_change_notification/isr_change_<seq>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsrChangeZnode {
    pub version: i32,
    pub partitions: Vec<IsrChangePartition>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsrChangePartition {
    pub topic: String,
    pub partition: i32,
}

// ---------------------------------------------------------------------------------------------
// The data plane's controller channel in ZooKeeper mode

/// How the data plane reaches the control plane in ZooKeeper mode: ISR changes are the leader's
/// own conditional writes of the partition-state znode (before KIP-497 the leader wrote the ISR
/// itself, KAFKA-2729's "cached zkVersion" check), followed by an ISR change notification;
/// CreateTopics writes the topic's assignment znode and waits for the controller to elect.
pub struct ZkChannel(pub Arc<ZkNode>);

impl ControllerChannel for ZkChannel {
    fn alter_partition(
        &self,
        topic_id: Uuid,
        request: AlterPartitionRequest,
    ) -> BoxFuture<Result<PartitionRegistration, i16>> {
        let node = self.0.clone();
        Box::pin(async move { node.write_isr(topic_id, request).await })
    }

    fn create_topics(
        &self,
        request: CreateTopicsRequest,
        version: i16,
    ) -> BoxFuture<CreateTopicsResponse> {
        let node = self.0.clone();
        Box::pin(async move { node.create_topics(request, version).await })
    }
}

impl ZkNode {
    async fn write_isr(
        &self,
        topic_id: Uuid,
        req: AlterPartitionRequest,
    ) -> Result<PartitionRegistration, i16> {
        let client = self.client().ok_or(code::REQUEST_TIMED_OUT)?;
        let (topic, current) = {
            let image = self.image_tx.borrow();
            let t = image
                .topics
                .get(&topic_id)
                .ok_or(code::UNKNOWN_TOPIC_OR_PARTITION)?;
            let cur = t
                .partitions
                .get(&req.partition)
                .cloned()
                .ok_or(code::UNKNOWN_TOPIC_OR_PARTITION)?;
            (t.name.clone(), cur)
        };
        let isr = req.new_isr();
        let controller_epoch = self
            .fence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .controller_epoch;
        let state = PartitionStateZnode::new(
            controller_epoch,
            self.node_id,
            req.leader_epoch,
            isr.clone(),
        );
        let path = partition_state_path(&topic, req.partition);
        let expected =
            (!self.config.bugs.has(ZkBug::NoZkVersionCheck)).then_some(req.partition_epoch);
        let stat = match client.set_data(&path, &to_json(&state), expected).await {
            Ok(s) => s,
            Err(zk::Error::BadVersion) => {
                tracing::info!(%topic, partition = req.partition, "cached zkVersion not equal to that in ZooKeeper: ISR not updated");
                return Err(code::INVALID_UPDATE_VERSION);
            }
            Err(e) => {
                tracing::warn!(%topic, error = %e, "ISR write failed");
                return Err(code::REQUEST_TIMED_OUT);
            }
        };
        let reg = PartitionRegistration {
            isr,
            leader: self.node_id,
            leader_epoch: req.leader_epoch,
            partition_epoch: stat.version,
            ..current
        };
        let note = to_json(&IsrChangeZnode {
            version: 1,
            partitions: vec![IsrChangePartition {
                topic: topic.clone(),
                partition: req.partition,
            }],
        });
        let seq = zk::CreateMode::PersistentSequential.with_acls(zk::Acls::anyone_all());
        if let Err(e) = client
            .create(
                &format!("{ISR_CHANGE_NOTIFICATION}/isr_change_"),
                &note,
                &seq,
            )
            .await
        {
            tracing::warn!(error = %e, "ISR change notification not written");
        }
        Ok(reg)
    }

    async fn create_topics(&self, req: CreateTopicsRequest, version: i16) -> CreateTopicsResponse {
        let mut results = Vec::new();
        for t in req.topics {
            let name = t.name.0.to_string();
            let mut r = CreatableTopicResult::default().with_name(t.name.clone());
            match self.create_topic(&name, &t, req.validate_only).await {
                Ok((id, partitions, rf)) => {
                    if version >= 7 {
                        r.topic_id = id;
                    }
                    if version >= 5 {
                        r.num_partitions = partitions;
                        r.replication_factor = rf;
                    }
                }
                Err(c) => r.error_code = c,
            }
            results.push(r);
        }
        CreateTopicsResponse::default().with_topics(results)
    }

    /// AdminZkClient's `createTopic`: the assignment znode (manual assignment or placement over
    /// the live brokers), then wait (bounded) until the controller's LeaderAndIsr reached this
    /// broker, so a client can produce right after the response.
    async fn create_topic(
        &self,
        name: &str,
        t: &kafka_protocol::messages::create_topics_request::CreatableTopic,
        validate_only: bool,
    ) -> Result<(Uuid, i32, i16), i16> {
        if !crate::broker::valid_topic_name(name) || name == crate::offsets::OFFSETS_TOPIC {
            return Err(code::INVALID_TOPIC_EXCEPTION);
        }
        let client = self.client().ok_or(code::REQUEST_TIMED_OUT)?;
        let live: Vec<BrokerId> = client
            .list_children(BROKER_IDS)
            .await
            .map_err(|_| code::REQUEST_TIMED_OUT)?
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let assignment: Vec<Vec<BrokerId>> = if !t.assignments.is_empty() {
            if t.num_partitions != -1 || t.replication_factor != -1 {
                return Err(code::INVALID_REQUEST);
            }
            let mut a: Vec<(i32, Vec<BrokerId>)> = t
                .assignments
                .iter()
                .map(|x| {
                    (
                        x.partition_index,
                        x.broker_ids.iter().map(|b| b.0).collect(),
                    )
                })
                .collect();
            a.sort_by_key(|x| x.0);
            let ok = a.iter().enumerate().all(|(i, (p, r))| {
                *p == i as i32
                    && !r.is_empty()
                    && r.iter().enumerate().all(|(j, b)| !r[..j].contains(b))
            });
            if !ok {
                return Err(code::INVALID_REPLICA_ASSIGNMENT);
            }
            a.into_iter().map(|x| x.1).collect()
        } else {
            let partitions = if t.num_partitions == -1 {
                1
            } else {
                t.num_partitions
            };
            let rf = if t.replication_factor == -1 {
                live.len().min(3)
            } else {
                usize::try_from(t.replication_factor)
                    .map_err(|_| code::INVALID_REPLICATION_FACTOR)?
            };
            assign_replicas(&live, partitions, rf)?
        };
        let partitions = assignment.len() as i32;
        let rf = assignment.first().map_or(0, |r| r.len()) as i16;
        if validate_only {
            return Ok((Uuid::nil(), partitions, rf));
        }
        let id = Uuid::new_v4();
        let znode = TopicZnode {
            version: 3,
            topic_id: Some(id),
            partitions: assignment
                .iter()
                .enumerate()
                .map(|(p, r)| (p.to_string(), r.clone()))
                .collect(),
        };
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        match client
            .create(&topic_path(name), &to_json(&znode), &persistent)
            .await
        {
            Ok(_) => {}
            Err(zk::Error::NodeExists) => return Err(code::TOPIC_ALREADY_EXISTS),
            Err(e) => {
                tracing::warn!(topic = name, error = %e, "topic znode not written");
                return Err(code::REQUEST_TIMED_OUT);
            }
        }
        tracing::info!(
            topic = name,
            partitions,
            "wrote the topic's assignment znode"
        );
        let mut image = self.image();
        let ready = async {
            loop {
                {
                    let i = image.borrow_and_update();
                    if i.topic(name)
                        .is_some_and(|t| t.partitions.len() == partitions as usize)
                    {
                        return;
                    }
                }
                if image.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), ready).await;
        Ok((id, partitions, rf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(ids: &[i32]) -> BTreeSet<i32> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_new_partition_leads_on_its_first_live_replica() {
        let s = elect(&[2, 3, 1], None, &live(&[1, 3]), 4).unwrap();
        assert_eq!(
            (s.leader, s.leader_epoch, s.isr.clone(), s.controller_epoch),
            (3, 0, vec![3, 1], 4)
        );
    }

    #[test]
    fn a_dead_leader_is_replaced_from_the_isr_and_the_leader_epoch_grows() {
        let cur = PartitionStateZnode::new(1, 1, 5, vec![1, 2, 3]);
        let s = elect(&[1, 2, 3], Some(&cur), &live(&[2, 3]), 2).unwrap();
        assert_eq!((s.leader, s.leader_epoch, s.isr), (2, 6, vec![2, 3]));
        // Nothing to do when every ISR member lives.
        assert_eq!(elect(&[1, 2, 3], Some(&cur), &live(&[1, 2, 3]), 2), None);
        // A dead follower leaves the ISR (with a leader epoch bump, as Kafka's controller did).
        let s = elect(&[1, 2, 3], Some(&cur), &live(&[1, 2]), 2).unwrap();
        assert_eq!((s.leader, s.leader_epoch, s.isr), (1, 6, vec![1, 2]));
    }

    #[test]
    fn no_unclean_election_the_partition_goes_offline_and_comes_back_with_its_isr() {
        let cur = PartitionStateZnode::new(1, 1, 0, vec![1]);
        let off = elect(&[1, 2], Some(&cur), &live(&[2]), 1).unwrap();
        assert_eq!((off.leader, off.isr.clone()), (NO_LEADER, vec![1]));
        assert_eq!(elect(&[1, 2], Some(&off), &live(&[2]), 1), None);
        let back = elect(&[1, 2], Some(&off), &live(&[1, 2]), 1).unwrap();
        assert_eq!((back.leader, back.leader_epoch), (1, 2));
    }

    #[test]
    fn placement_spreads_replicas_and_refuses_bad_factors() {
        assert_eq!(
            assign_replicas(&[1, 2, 3], 3, 2).unwrap(),
            vec![vec![1, 2], vec![2, 3], vec![3, 1]]
        );
        assert_eq!(
            assign_replicas(&[1, 2], 1, 3),
            Err(code::INVALID_REPLICATION_FACTOR)
        );
        assert_eq!(
            assign_replicas(&[1, 2], 0, 1),
            Err(code::INVALID_PARTITIONS)
        );
    }

    #[test]
    fn the_fence_refuses_older_controller_epochs_unless_the_bug_is_on() {
        let mut f = ControllerEpochFence::default();
        assert_eq!(f.admit(2, &ZkBugs::default()), Ok(()));
        assert_eq!(
            f.admit(1, &ZkBugs::default()),
            Err(code::STALE_CONTROLLER_EPOCH)
        );
        assert_eq!(f.admit(2, &ZkBugs::default()), Ok(()));
        let bug = ZkBugs(vec![ZkBug::NoControllerEpochCheck]);
        assert_eq!(f.admit(1, &bug), Ok(()));
        assert_eq!(f.controller_epoch, 2);
    }

    fn request(api_key: i16, leader: i32, leader_epoch: i32, zk_version: i32) -> ControlRequest {
        ControlRequest {
            api_key,
            controller_id: 1,
            controller_epoch: 3,
            broker_epoch: -1,
            partitions: vec![PartitionStateWire {
                topic: "t".into(),
                partition: 0,
                controller_epoch: 3,
                leader,
                leader_epoch,
                isr: vec![1, 2],
                zk_version,
                replicas: vec![1, 2],
            }],
            brokers: vec![LiveBroker {
                id: 1,
                host: "127.0.0.1".into(),
                port: 9092,
            }],
        }
    }

    #[test]
    fn both_requests_round_trip_and_truncations_are_errors() {
        for key in [LEADER_AND_ISR, UPDATE_METADATA] {
            let r = request(key, 1, 2, 3);
            let frame = wire::frame(&r, 7, "c");
            let (k, v, c, body) = wire::split_header(frame.slice(4..)).unwrap();
            assert_eq!((k, c), (key, 7));
            assert!(v == LEADER_AND_ISR_VERSION || v == UPDATE_METADATA_VERSION);
            assert_eq!(wire::decode(key, body.clone()).unwrap(), r);
            for cut in 0..body.len() {
                assert!(
                    wire::decode(key, body.slice(..cut)).is_err(),
                    "cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn leader_and_isr_needs_a_newer_epoch_update_metadata_does_not() {
        let mut image = MetadataImage::default();
        let id = Uuid::new_v4();
        apply_control_request(&mut image, &request(LEADER_AND_ISR, 1, 2, 3), &|_| id);
        assert_eq!(image.partition("t", 0).unwrap().leader_epoch, 2);
        // An older leader epoch is refused by LeaderAndIsr...
        let e = apply_control_request(&mut image, &request(LEADER_AND_ISR, 2, 1, 9), &|_| id);
        assert_eq!(e[0].2, code::STALE_CONTROLLER_EPOCH);
        assert_eq!(image.partition("t", 0).unwrap().leader, 1);
        // ...a newer zkVersion in the same leader epoch is taken (an ISR change)...
        apply_control_request(&mut image, &request(LEADER_AND_ISR, 1, 2, 4), &|_| id);
        assert_eq!(image.partition("t", 0).unwrap().partition_epoch, 4);
        // ...and UpdateMetadata replaces whatever it carries: the metadata cache has no check.
        apply_control_request(&mut image, &request(UPDATE_METADATA, 2, 1, 1), &|_| id);
        let p = image.partition("t", 0).unwrap();
        assert_eq!((p.leader, p.leader_epoch), (2, 1));
        assert_eq!(image.topic_ids["t"], id);
    }
}
