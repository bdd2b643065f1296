//! The workloads' Kafka client: blocking, one connection per broker, over the Kafka wire
//! protocol (the `kafka-protocol` crate's codecs, framed by `kcheck_reference::client`).
//!
//! It is deliberately plain: no retries, no batching, no idempotence, so that every operation
//! the history records is exactly one request and its outcome is classified honestly:
//! - [`Outcome::Definite`]: the broker answered with an error that means the operation did not
//!   take effect (NOT_ENOUGH_REPLICAS, UNKNOWN_TOPIC_OR_PARTITION, NOT_LEADER_OR_FOLLOWER on
//!   a fetch...):
//!   the history records `fail`;
//! - [`Outcome::Indeterminate`]: no answer (timeout, connection lost) or an answer that does
//!   not say whether it took effect (REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS_AFTER_APPEND: the
//!   record was appended but not replicated in time; NOT_LEADER_OR_FOLLOWER on a produce: a
//!   leader that stepped down fails the appended produces it was waiting on): the history
//!   records `info`.
//!
//! Record values are the decimal form of the workload's unique `u64` values.

use bytes::{Bytes, BytesMut};
use kcheck_reference::client::Client;
use kcheck_reference::kafka_protocol::messages::create_topics_request::CreatableTopic;
use kcheck_reference::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kcheck_reference::kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsTopic,
};
use kcheck_reference::kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kcheck_reference::kafka_protocol::messages::produce_request::{
    PartitionProduceData, TopicProduceData,
};
use kcheck_reference::kafka_protocol::messages::*;
use kcheck_reference::kafka_protocol::protocol::StrBytes;
use kcheck_reference::kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// Kafka error codes the workloads distinguish.
pub mod code {
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const NOT_ENOUGH_REPLICAS: i16 = 19;
    pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
}

/// How an operation ended when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It certainly did not take effect (`fail`).
    Definite(String),
    /// It may or may not have taken effect (`info`).
    Indeterminate(String),
}

impl Outcome {
    fn from_code(what: &str, code: i16) -> Outcome {
        let name = code_name(code);
        match code {
            code::REQUEST_TIMED_OUT | code::NOT_ENOUGH_REPLICAS_AFTER_APPEND => {
                Outcome::Indeterminate(format!("{what}: {name}"))
            }
            _ => Outcome::Definite(format!("{what}: {name}")),
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Outcome::Definite(m) | Outcome::Indeterminate(m) => m,
        }
    }
}

/// How a produce error is recorded. A leader that loses its leadership fails the acks=all
/// produces it had already appended and was waiting on with NOT_LEADER_OR_FOLLOWER (as Kafka's
/// delayed produce does), and the record may survive on the new leader: the outcome is
/// unknown, not a failure. (`kcheck test` under pauses showed it: a produce answered
/// NOT_LEADER_OR_FOLLOWER was read back later.)
fn produce_error(code: i16) -> Outcome {
    match code {
        code::NOT_LEADER_OR_FOLLOWER => Outcome::Indeterminate(
            "produce: NOT_LEADER_OR_FOLLOWER (it may have been appended)".into(),
        ),
        c => Outcome::from_code("produce", c),
    }
}

fn code_name(code: i16) -> String {
    let name = match code {
        code::OFFSET_OUT_OF_RANGE => "OFFSET_OUT_OF_RANGE",
        code::UNKNOWN_TOPIC_OR_PARTITION => "UNKNOWN_TOPIC_OR_PARTITION",
        code::LEADER_NOT_AVAILABLE => "LEADER_NOT_AVAILABLE",
        code::NOT_LEADER_OR_FOLLOWER => "NOT_LEADER_OR_FOLLOWER",
        code::REQUEST_TIMED_OUT => "REQUEST_TIMED_OUT",
        code::NOT_ENOUGH_REPLICAS => "NOT_ENOUGH_REPLICAS",
        code::NOT_ENOUGH_REPLICAS_AFTER_APPEND => "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
        code::FENCED_LEADER_EPOCH => "FENCED_LEADER_EPOCH",
        code::UNKNOWN_LEADER_EPOCH => "UNKNOWN_LEADER_EPOCH",
        _ => return format!("error code {code}"),
    };
    name.to_string()
}

/// A transport failure: the request may have reached the broker.
fn lost(what: &str, e: impl std::fmt::Display) -> Outcome {
    Outcome::Indeterminate(format!("{what}: {e}"))
}

/// What a fetch returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    /// (offset, value) of each record at or after the fetch offset, below the HW.
    pub records: Vec<(u64, u64)>,
    pub high_watermark: u64,
}

/// A client for one topic, routing each partition's requests to its leader.
pub struct KafkaClient {
    bootstrap: Vec<String>,
    timeout: Duration,
    topic: TopicName,
    /// broker id → address, partition → leader id, from the last Metadata.
    brokers: BTreeMap<i32, String>,
    leaders: BTreeMap<i32, i32>,
    /// partition → ISR size in the last Metadata.
    isr_sizes: BTreeMap<i32, usize>,
    /// partition → replica set (broker ids, preferred leader first) in the last Metadata.
    replicas: BTreeMap<i32, Vec<i32>>,
    /// partition → ISR (broker ids) in the last Metadata.
    isrs: BTreeMap<i32, Vec<i32>>,
    connections: BTreeMap<String, Client>,
}

impl KafkaClient {
    /// `bootstrap` is a comma-separated list of `host:port`.
    pub fn new(bootstrap: &str, topic: &str, timeout: Duration) -> KafkaClient {
        KafkaClient {
            bootstrap: bootstrap.split(',').map(str::to_string).collect(),
            timeout,
            topic: TopicName(StrBytes::from_string(topic.to_string())),
            brokers: BTreeMap::new(),
            leaders: BTreeMap::new(),
            isr_sizes: BTreeMap::new(),
            replicas: BTreeMap::new(),
            isrs: BTreeMap::new(),
            connections: BTreeMap::new(),
        }
    }

    fn connection(&mut self, addr: &str) -> Result<&mut Client, Outcome> {
        if !self.connections.contains_key(addr) {
            let c = connect(addr, self.timeout)
                .map_err(|e| Outcome::Definite(format!("connect {addr}: {e}")))?;
            self.connections.insert(addr.to_string(), c);
        }
        Ok(self.connections.get_mut(addr).expect("inserted above"))
    }

    /// Sends one request to `addr`; a transport error drops the connection.
    fn call<R: kcheck_reference::kafka_protocol::protocol::Request>(
        &mut self,
        addr: &str,
        version: i16,
        req: &R,
        what: &str,
    ) -> Result<R::Response, Outcome> {
        let result = self.connection(addr)?.request(version, req);
        result.map_err(|e| {
            self.connections.remove(addr);
            lost(what, e)
        })
    }

    /// Refreshes brokers and leaders from any bootstrap broker that answers.
    pub fn refresh_metadata(&mut self) -> Result<(), Outcome> {
        let req = MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(self.topic.clone())),
        ]));
        let mut last = Outcome::Definite("no bootstrap broker".into());
        for addr in self.bootstrap.clone() {
            match self.call(&addr, 9, &req, "metadata") {
                Ok(resp) => {
                    self.brokers = resp
                        .brokers
                        .iter()
                        .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
                        .collect();
                    self.leaders = resp
                        .topics
                        .iter()
                        .filter(|t| t.name.as_ref() == Some(&self.topic))
                        .flat_map(|t| &t.partitions)
                        .filter(|p| p.error_code == code::NONE && p.leader_id.0 >= 0)
                        .map(|p| (p.partition_index, p.leader_id.0))
                        .collect();
                    self.isr_sizes = resp
                        .topics
                        .iter()
                        .filter(|t| t.name.as_ref() == Some(&self.topic))
                        .flat_map(|t| &t.partitions)
                        .map(|p| (p.partition_index, p.isr_nodes.len()))
                        .collect();
                    self.replicas = resp
                        .topics
                        .iter()
                        .filter(|t| t.name.as_ref() == Some(&self.topic))
                        .flat_map(|t| &t.partitions)
                        .filter(|p| p.error_code == code::NONE)
                        .map(|p| {
                            (
                                p.partition_index,
                                p.replica_nodes.iter().map(|b| b.0).collect(),
                            )
                        })
                        .collect();
                    self.isrs = resp
                        .topics
                        .iter()
                        .filter(|t| t.name.as_ref() == Some(&self.topic))
                        .flat_map(|t| &t.partitions)
                        .filter(|p| p.error_code == code::NONE)
                        .map(|p| (p.partition_index, p.isr_nodes.iter().map(|b| b.0).collect()))
                        .collect();
                    return Ok(());
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Brokers in the last Metadata (Kafka lists only registered, unfenced ones).
    pub fn broker_count(&self) -> usize {
        self.brokers.len()
    }

    /// Partitions of the topic that had a leader in the last Metadata.
    pub fn leader_count(&self) -> usize {
        self.leaders.len()
    }

    /// The partition leaders' broker ids after a fresh Metadata request, each once (the
    /// nemesis's "leaders" target).
    pub fn partition_leaders(&mut self) -> Result<Vec<i32>, Outcome> {
        self.refresh_metadata()?;
        let mut ids: Vec<i32> = self.leaders.values().copied().collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// partition → leader id of the test topic, from a fresh Metadata.
    pub fn leader_map(&mut self) -> Result<BTreeMap<i32, i32>, Outcome> {
        self.refresh_metadata()?;
        Ok(self.leaders.clone())
    }

    /// A partition's replica set (preferred leader first) after a fresh Metadata request.
    pub fn replicas(&mut self, partition: i32) -> Result<Vec<i32>, Outcome> {
        self.refresh_metadata()?;
        self.replicas
            .get(&partition)
            .cloned()
            .ok_or_else(|| Outcome::Definite(format!("partition {partition}: not in Metadata")))
    }

    /// A partition's leader (if it has one), replica set and ISR after a fresh Metadata
    /// request.
    pub fn partition_state(
        &mut self,
        partition: i32,
    ) -> Result<(Option<i32>, Vec<i32>, Vec<i32>), Outcome> {
        self.refresh_metadata()?;
        let replicas =
            self.replicas.get(&partition).cloned().ok_or_else(|| {
                Outcome::Definite(format!("partition {partition}: not in Metadata"))
            })?;
        Ok((
            self.leaders.get(&partition).copied(),
            replicas,
            self.isrs.get(&partition).cloned().unwrap_or_default(),
        ))
    }

    /// Every partition of the topic (leader, replicas in assignment order, ISR) after a fresh
    /// Metadata request: what the `lagging-successor` fault plans from.
    pub fn partition_views(
        &mut self,
    ) -> Result<Vec<crate::nemesis::successor::PartitionView>, Outcome> {
        self.refresh_metadata()?;
        Ok(self
            .replicas
            .iter()
            .map(|(&p, replicas)| crate::nemesis::successor::PartitionView {
                partition: p,
                leader: self.leaders.get(&p).copied(),
                replicas: replicas.clone(),
                isr: self.isrs.get(&p).cloned().unwrap_or_default(),
            })
            .collect())
    }

    /// Sends a request to `partition`'s leader. A transport failure (connection refused,
    /// reset, timed out) forgets that leader, so the next request asks Metadata again, as
    /// Kafka's clients request a metadata update when a connection to a leader fails; until
    /// then a worker would keep dialling a killed leader and never write to its successor.
    fn call_leader<R: kcheck_reference::kafka_protocol::protocol::Request>(
        &mut self,
        partition: i32,
        version: i16,
        req: &R,
        what: &str,
    ) -> Result<R::Response, Outcome> {
        let addr = self.leader_addr(partition)?;
        let result = self.call(&addr, version, req, what);
        if result.is_err() {
            self.leaders.remove(&partition);
        }
        result
    }

    fn leader_addr(&mut self, partition: i32) -> Result<String, Outcome> {
        if !self.leaders.contains_key(&partition) {
            self.refresh_metadata()?;
        }
        let leader = self.leaders.get(&partition).ok_or_else(|| {
            Outcome::Definite(format!("partition {partition}: LEADER_NOT_AVAILABLE"))
        })?;
        self.brokers
            .get(leader)
            .cloned()
            .ok_or_else(|| Outcome::Definite(format!("leader {leader} has no address")))
    }

    /// A routing error: forget the leader so the next request asks again.
    fn forget_leader_on(&mut self, partition: i32, code: i16) {
        if matches!(
            code,
            code::NOT_LEADER_OR_FOLLOWER
                | code::LEADER_NOT_AVAILABLE
                | code::FENCED_LEADER_EPOCH
                | code::UNKNOWN_LEADER_EPOCH
                | code::UNKNOWN_TOPIC_OR_PARTITION
        ) {
            self.leaders.remove(&partition);
        }
    }

    /// Creates the topic on any bootstrap broker (an existing topic is fine).
    pub fn create_topic(
        &mut self,
        partitions: i32,
        replication_factor: i16,
    ) -> Result<(), Outcome> {
        let req = CreateTopicsRequest::default()
            .with_timeout_ms(self.timeout.as_millis() as i32)
            .with_topics(vec![CreatableTopic::default()
                .with_name(self.topic.clone())
                .with_num_partitions(partitions)
                .with_replication_factor(replication_factor)]);
        let addr = self.bootstrap[0].clone();
        let resp = self.call(&addr, 7, &req, "create topic")?;
        match resp.topics.first().map(|t| t.error_code) {
            Some(code::NONE) | Some(code::TOPIC_ALREADY_EXISTS) => Ok(()),
            Some(c) => Err(Outcome::from_code("create topic", c)),
            None => Err(Outcome::Definite("create topic: empty response".into())),
        }
    }

    /// Appends `value` with acks=all; `Ok(offset)` once the leader acknowledged it.
    pub fn produce(&mut self, partition: i32, value: u64) -> Result<u64, Outcome> {
        self.produce_with_acks(partition, value, -1)
    }

    /// Appends `value` with `acks` (-1 all, 1 leader only: the replication model's `acks-1`
    /// producer setting); `Ok(offset)` once the leader acknowledged it.
    pub fn produce_with_acks(
        &mut self,
        partition: i32,
        value: u64,
        acks: i16,
    ) -> Result<u64, Outcome> {
        let req = ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(self.timeout.as_millis() as i32)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(self.topic.clone())
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(encode_value(value)))])]);
        let resp = self.call_leader(partition, 9, &req, "produce")?;
        let p = resp
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .ok_or_else(|| lost("produce", "empty response"))?;
        if p.error_code != code::NONE {
            self.forget_leader_on(partition, p.error_code);
            return Err(produce_error(p.error_code));
        }
        u64::try_from(p.base_offset).map_err(|_| lost("produce", "negative base offset"))
    }

    /// Reads from `offset` on the leader, up to its HW (what a consumer may see).
    pub fn fetch(&mut self, partition: i32, offset: u64) -> Result<Fetched, Outcome> {
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(0)
            .with_max_bytes(1 << 20)
            .with_isolation_level(0)
            .with_topics(vec![FetchTopic::default()
                .with_topic(self.topic.clone())
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(offset as i64)
                    .with_partition_max_bytes(1 << 20)])]);
        let resp = self.call_leader(partition, 11, &req, "fetch")?;
        let p = resp
            .responses
            .first()
            .and_then(|t| t.partitions.first())
            .ok_or_else(|| lost("fetch", "empty response"))?;
        if p.error_code != code::NONE {
            self.forget_leader_on(partition, p.error_code);
            return Err(Outcome::from_code("fetch", p.error_code));
        }
        let high_watermark = p.high_watermark.max(0) as u64;
        let mut records = Vec::new();
        if let Some(bytes) = &p.records {
            records = decode_values(bytes.clone())
                .map_err(|e| Outcome::Definite(format!("fetch: undecodable records: {e}")))?;
        }
        records.retain(|(o, _)| *o >= offset && *o < high_watermark);
        Ok(Fetched {
            records,
            high_watermark,
        })
    }

    /// The partition's HW once it can be trusted as the end of what was committed: `None`
    /// while the ISR (fresh Metadata) is below `min_isr`. Such a leader's HW does not advance
    /// (KIP-966), and one elected from a lagging follower starts below what its predecessor
    /// had acknowledged, so reads that stop there report acknowledged writes as unseen.
    pub fn settled_high_watermark(
        &mut self,
        partition: i32,
        min_isr: usize,
    ) -> Result<Option<u64>, Outcome> {
        self.refresh_metadata()?;
        if self.isr_sizes.get(&partition).copied().unwrap_or(0) < min_isr {
            return Ok(None);
        }
        self.high_watermark(partition).map(Some)
    }

    /// The partition's HW on its leader (ListOffsets latest, as a read_uncommitted consumer
    /// sees it: Kafka answers with the HW for consumers).
    pub fn high_watermark(&mut self, partition: i32) -> Result<u64, Outcome> {
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(self.topic.clone())
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(partition)
                    .with_timestamp(-1)])]);
        let resp = self.call_leader(partition, 7, &req, "list offsets")?;
        let p = resp
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .ok_or_else(|| lost("list offsets", "empty response"))?;
        if p.error_code != code::NONE {
            self.forget_leader_on(partition, p.error_code);
            return Err(Outcome::from_code("list offsets", p.error_code));
        }
        Ok(p.offset.max(0) as u64)
    }
}

/// The KRaft quorum leader's node id from one controller's DescribeQuorum answer on
/// `__cluster_metadata` (KIP-595), `None` while the quorum has no leader.
pub fn quorum_leader(controller_addr: &str, timeout: Duration) -> Result<Option<i32>, Outcome> {
    use describe_quorum_request::{PartitionData, TopicData};
    let mut client = connect(controller_addr, timeout).map_err(|e| lost("describe quorum", e))?;
    let req = DescribeQuorumRequest::default().with_topics(vec![TopicData::default()
        .with_topic_name(TopicName(StrBytes::from_static_str("__cluster_metadata")))
        .with_partitions(vec![PartitionData::default().with_partition_index(0)])]);
    let resp = client
        .request(0, &req)
        .map_err(|e| lost("describe quorum", e))?;
    let leader = resp
        .topics
        .first()
        .and_then(|t| t.partitions.first())
        .map(|p| p.leader_id.0)
        .ok_or_else(|| Outcome::Definite("describe quorum: empty response".into()))?;
    Ok((leader >= 0).then_some(leader))
}

/// AlterPartitionReassignments (KIP-455) for one partition of `topic`, moving it to `target`
/// (broker ids, preferred leader first; `None` cancels the reassignment in progress), sent to
/// the broker at `addr`, which forwards it to the controller. Returns the error code (the
/// request's, else the partition's), or why there is none within `wait`. The request runs in
/// a thread: a controller stopped at an assertion never answers, and a client would wait
/// its own 30 s.
pub fn alter_partition_reassignment(
    addr: &str,
    topic: &str,
    partition: i32,
    target: Option<Vec<i32>>,
    wait: Duration,
) -> Result<i16, String> {
    use kcheck_reference::kafka_protocol::messages::alter_partition_reassignments_request::{
        ReassignablePartition, ReassignableTopic,
    };
    let req = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(wait.as_millis().min(i32::MAX as u128) as i32)
        .with_topics(vec![ReassignableTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![ReassignablePartition::default()
                .with_partition_index(partition)
                .with_replicas(
                    target.map(|t| t.into_iter().map(BrokerId).collect()),
                )])]);
    let addr = addr.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = Client::connect(&addr)
            .map_err(|e| e.to_string())
            .and_then(|mut c| c.request(0, &req).map_err(|e| e.to_string()))
            .map(|r| {
                let p = r
                    .responses
                    .first()
                    .and_then(|t| t.partitions.first())
                    .map_or(-1, |p| p.error_code);
                if r.error_code != 0 {
                    r.error_code
                } else {
                    p
                }
            });
        let _ = tx.send(r);
    });
    rx.recv_timeout(wait + Duration::from_secs(2))
        .map_err(|_| {
            format!(
                "AlterPartitionReassignments had no answer in {} s",
                (wait + Duration::from_secs(2)).as_secs()
            )
        })?
}

fn connect(addr: &str, timeout: Duration) -> std::io::Result<Client> {
    use std::net::ToSocketAddrs;
    let sock = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let stream = std::net::TcpStream::connect_timeout(&sock, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(Client::from_stream(stream))
}

/// A connection to one broker that asks which of the topic's partitions it leads (the run's
/// leader probe, [`crate::leaders`]): ListOffsets v7 for every partition, answered without
/// error only by a replica that believes it leads, with its leader epoch.
pub struct LeaderProbe {
    addr: String,
    timeout: Duration,
    topic: TopicName,
    connection: Option<Client>,
}

impl LeaderProbe {
    pub fn new(addr: &str, topic: &str, timeout: Duration) -> LeaderProbe {
        LeaderProbe {
            addr: addr.to_string(),
            timeout,
            topic: TopicName(StrBytes::from_string(topic.to_string())),
            connection: None,
        }
    }

    /// partition → leader epoch of the partitions (of `0..partitions`) this broker leads; an
    /// error when it does not answer (paused, killed: it is then seen leading nothing).
    pub fn led(&mut self, partitions: i32) -> Result<BTreeMap<i32, i32>, String> {
        let topic = self.topic.0.to_string();
        Ok(self
            .led_in(&[(topic.as_str(), partitions)])?
            .into_iter()
            .map(|((_, p), e)| (p, e))
            .collect())
    }

    /// (topic, partition) → leader epoch of what this broker leads among `topics` (name,
    /// partition count), asked in one ListOffsets, so that covering a second topic (the
    /// ZooKeeper-mode ballast) costs no extra round trip.
    pub fn led_in(
        &mut self,
        topics: &[(&str, i32)],
    ) -> Result<BTreeMap<(String, i32), i32>, String> {
        if self.connection.is_none() {
            self.connection =
                Some(connect(&self.addr, self.timeout).map_err(|e| format!("connect: {e}"))?);
        }
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(
                topics
                    .iter()
                    .map(|(name, partitions)| {
                        ListOffsetsTopic::default()
                            .with_name(TopicName(StrBytes::from_string(name.to_string())))
                            .with_partitions(
                                (0..*partitions)
                                    .map(|p| {
                                        ListOffsetsPartition::default()
                                            .with_partition_index(p)
                                            .with_timestamp(-1)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let answer = self
            .connection
            .as_mut()
            .expect("connected above")
            .request(7, &req);
        let resp = answer.map_err(|e| {
            self.connection = None;
            format!("list offsets: {e}")
        })?;
        Ok(resp
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(move |p| (t.name.0.to_string(), p)))
            .filter(|(_, p)| p.error_code == code::NONE)
            .map(|(t, p)| ((t, p.partition_index), p.leader_epoch))
            .collect())
    }
}

/// One record batch holding one record whose value is `value` in decimal.
pub fn encode_value(value: u64) -> Bytes {
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 0,
        key: None,
        value: Some(Bytes::from(value.to_string())),
        headers: Default::default(),
    };
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &[record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("one uncompressed record encodes");
    buf.freeze()
}

/// (offset, value) of every record in `bytes` whose value is a decimal `u64` (others, such as
/// control records, are skipped). A partial batch at the end (Kafka may cut the last batch at
/// the size limit) ends the list.
pub fn decode_values(mut bytes: Bytes) -> Result<Vec<(u64, u64)>, String> {
    let mut out = Vec::new();
    while bytes.len() >= 12 {
        let size = i32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if size < 0 || bytes.len() < 12 + size as usize {
            break;
        }
        let mut one = bytes.split_to(12 + size as usize);
        let set = RecordBatchDecoder::decode(&mut one).map_err(|e| e.to_string())?;
        for r in set.records {
            if r.control {
                continue;
            }
            let value = r
                .value
                .as_deref()
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok());
            if let (Some(v), Ok(o)) = (value, u64::try_from(r.offset)) {
                out.push((o, v));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_record_batches() {
        let mut all = BytesMut::new();
        all.extend_from_slice(&encode_value(7));
        all.extend_from_slice(&encode_value(123_456_789));
        let decoded = decode_values(all.freeze()).unwrap();
        assert_eq!(
            decoded.iter().map(|r| r.1).collect::<Vec<_>>(),
            vec![7, 123_456_789]
        );
    }

    #[test]
    fn a_truncated_last_batch_ends_the_list() {
        let mut all = BytesMut::new();
        all.extend_from_slice(&encode_value(1));
        let second = encode_value(2);
        all.extend_from_slice(&second[..second.len() - 3]);
        assert_eq!(decode_values(all.freeze()).unwrap().len(), 1);
    }

    #[test]
    fn errors_are_classified_as_fail_or_info() {
        assert!(matches!(
            Outcome::from_code("fetch", code::NOT_LEADER_OR_FOLLOWER),
            Outcome::Definite(_)
        ));
        assert!(matches!(
            produce_error(code::NOT_LEADER_OR_FOLLOWER),
            Outcome::Indeterminate(_)
        ));
        assert!(matches!(
            produce_error(code::NOT_ENOUGH_REPLICAS),
            Outcome::Definite(_)
        ));
        assert!(matches!(
            Outcome::from_code("produce", code::NOT_ENOUGH_REPLICAS_AFTER_APPEND),
            Outcome::Indeterminate(_)
        ));
        assert!(matches!(
            Outcome::from_code("produce", code::REQUEST_TIMED_OUT),
            Outcome::Indeterminate(_)
        ));
    }
}
