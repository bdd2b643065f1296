//! The active controller (KIP-500, KIP-631): a sans-IO state machine that turns broker and
//! admin requests into `__cluster_metadata` records. It decides against the *latest* image
//! (committed records plus the ones it wrote and the quorum has not committed yet, as Kafka's
//! QuorumController does), and every record it writes is applied to that image at once, with
//! the image's invariant checks: a controller bug stops at the record that would break
//! `leader-in-isr` or an epoch rule, never reaching the brokers.
//!
//! Requests map to Kafka's RPCs:
//! - BrokerRegistration: the broker epoch is the offset of its RegisterBrokerRecord, so a
//!   restarted broker always gets a larger one (KIP-903 relies on it). A new registration is
//!   fenced; a restart after an unclean shutdown also leaves ISR and ELR (KIP-966).
//! - BrokerHeartbeat: a broker whose heartbeats lapse for `broker.session.timeout.ms` is fenced
//!   and loses its leaderships (elect from the ISR, then the ELR; an out-of-sync replica only
//!   with `--bug unclean-election`); a fenced broker that has caught up with the metadata log
//!   is unfenced.
//! - CreateTopics: replicas placed round-robin over the unfenced brokers.
//! - AlterPartition: leader epoch, partition epoch (INVALID_UPDATE_VERSION, KIP-497) and broker
//!   epochs of the ISR members (INELIGIBLE_REPLICA, KIP-903) are checked; each decision is a
//!   `controller.alter_partition` trace event for `kcheck conform`.
//! - AlterPartitionReassignments / ListPartitionReassignments (KIP-455): grow to
//!   origin ∪ target, wait until the adding replicas are in the ISR, move the leader if it is
//!   not a target, shrink to target.

use crate::metadata::{
    BrokerEpoch, BrokerId, LeaderEpoch, MetadataImage, MetadataRecord, PartitionChange,
    PartitionEpoch, PartitionRegistration, NO_LEADER,
};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Controller-side protocol choices of the replication model, off unless explicitly given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ControllerBug {
    /// `unclean.leader.election.enable`: with no live ISR or ELR member, elect any live replica
    /// (KIP-106); acknowledged records it never fetched are lost.
    UncleanElection,
    /// Pre-KIP-966: no ELR, the last ISR member stays in the ISR through an unclean restart
    /// and can be re-elected without its unflushed tail (KAFKA-15332).
    LastReplicaStanding,
    /// Pre-KIP-903: AlterPartition's ISR members are not checked against their current broker
    /// epochs (KAFKA-14139).
    NoBrokerEpochCheck,
    /// Mutation of KIP-455's completion rule: the reassignment completes (the removing
    /// replicas are dropped) without waiting for the adding replicas to join the ISR, which
    /// are counted as in sync. An adding replica elected then holds nothing of the log.
    RemoveBeforeCaughtUp,
    /// Mutation of KIP-455's completion: the leader is kept even when the target removes it
    /// (KRaft's PartitionChangeBuilder elects a target replica). The controller's own image
    /// refuses the record (`leader-in-replicas`) and the controller stops there.
    LeaderOutsideTarget,
    /// Mutation of KIP-455's completion: it waits for the leader to be a target replica, but
    /// nothing moves the leader there, so a reassignment that removes the leader never ends.
    NoLeaderMove,
    /// Mutation of the revert (KRaft's `PartitionReassignmentRevert`): cancelling restores the
    /// origin replicas but leaves adding replicas that joined the ISR in it. The image refuses
    /// the record (`isr-subset-of-replicas`) and the controller stops there.
    CancelKeepsAddingInIsr,
    /// Mutation of a replacing AlterPartitionReassignments: adding/removing are computed from
    /// the grown replica set (origin ∪ old target) instead of the origin, so a replica the
    /// first request added counts as an origin replica and the reassignment completes without it
    /// in the ISR.
    ReplaceFromGrownSet,
}

impl ControllerBug {
    pub const ALL: [ControllerBug; 8] = [
        ControllerBug::UncleanElection,
        ControllerBug::LastReplicaStanding,
        ControllerBug::NoBrokerEpochCheck,
        ControllerBug::RemoveBeforeCaughtUp,
        ControllerBug::LeaderOutsideTarget,
        ControllerBug::NoLeaderMove,
        ControllerBug::CancelKeepsAddingInIsr,
        ControllerBug::ReplaceFromGrownSet,
    ];
    pub fn name(self) -> &'static str {
        match self {
            ControllerBug::UncleanElection => "unclean-election",
            ControllerBug::LastReplicaStanding => "last-replica-standing",
            ControllerBug::NoBrokerEpochCheck => "no-broker-epoch-check",
            ControllerBug::RemoveBeforeCaughtUp => "remove-before-caught-up",
            ControllerBug::LeaderOutsideTarget => "leader-outside-target",
            ControllerBug::NoLeaderMove => "no-leader-move",
            ControllerBug::CancelKeepsAddingInIsr => "cancel-keeps-adding-in-isr",
            ControllerBug::ReplaceFromGrownSet => "replace-from-grown-set",
        }
    }
    /// The fewest brokers with which the flag can act, at replication factor 3. A
    /// reassignment needs a broker outside the replica set to move to (four); the revert that
    /// `cancel-keeps-adding-in-isr` corrupts needs a target adding two brokers, one of which
    /// joins the ISR while the other still lags (five): with four, the one adding replica
    /// completes the move in the change that adds it to the ISR, so there is nothing to
    /// cancel. The other flags act in any replicated cluster.
    pub fn min_brokers(self) -> usize {
        match self {
            ControllerBug::RemoveBeforeCaughtUp
            | ControllerBug::LeaderOutsideTarget
            | ControllerBug::NoLeaderMove
            | ControllerBug::ReplaceFromGrownSet => 4,
            ControllerBug::CancelKeepsAddingInIsr => 5,
            ControllerBug::UncleanElection
            | ControllerBug::LastReplicaStanding
            | ControllerBug::NoBrokerEpochCheck => 3,
        }
    }
    pub fn parse(name: &str) -> Result<ControllerBug, String> {
        ControllerBug::ALL
            .into_iter()
            .find(|b| b.name() == name)
            .ok_or_else(|| {
                let known: Vec<_> = ControllerBug::ALL.iter().map(|b| b.name()).collect();
                format!(
                    "unknown bug flag '{name}' for the controller (known: {})",
                    known.join(", ")
                )
            })
    }
}

#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// `broker.session.timeout.ms`.
    pub session_timeout_ms: u64,
    /// `min.insync.replicas`: an ISR shrinking below it sends the removed replicas to the ELR.
    pub min_insync_replicas: usize,
    /// `default.replication.factor` (capped by the number of unfenced brokers).
    pub default_replication_factor: usize,
    pub bugs: Vec<ControllerBug>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            session_timeout_ms: 9000,
            min_insync_replicas: 2,
            default_replication_factor: 3,
            bugs: Vec::new(),
        }
    }
}

/// Kafka's error codes for the controller RPCs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControllerError {
    UnknownTopicOrPartition,
    NotLeaderOrFollower,
    InvalidTopic,
    TopicAlreadyExists,
    InvalidPartitions,
    InvalidReplicationFactor,
    InvalidReplicaAssignment,
    NotController,
    InvalidRequest,
    FencedLeaderEpoch,
    StaleBrokerEpoch,
    NoReassignmentInProgress,
    InvalidUpdateVersion,
    BrokerIdNotRegistered,
    IneligibleReplica,
    RequestTimedOut,
}

impl ControllerError {
    pub fn code(self) -> i16 {
        use ControllerError::*;
        match self {
            UnknownTopicOrPartition => 3,
            NotLeaderOrFollower => 6,
            RequestTimedOut => 7,
            InvalidTopic => 17,
            TopicAlreadyExists => 36,
            InvalidPartitions => 37,
            InvalidReplicationFactor => 38,
            InvalidReplicaAssignment => 39,
            NotController => 41,
            InvalidRequest => 42,
            FencedLeaderEpoch => 74,
            StaleBrokerEpoch => 77,
            NoReassignmentInProgress => 85,
            InvalidUpdateVersion => 95,
            BrokerIdNotRegistered => 102,
            IneligibleReplica => 107,
        }
    }
}

/// What a BrokerHeartbeat is answered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatReply {
    pub is_caught_up: bool,
    pub is_fenced: bool,
    pub should_shut_down: bool,
}

/// One AlterPartition entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterPartitionRequest {
    pub topic_id: Uuid,
    pub partition_id: i32,
    pub leader_epoch: LeaderEpoch,
    pub partition_epoch: PartitionEpoch,
    /// The proposed ISR with each member's broker epoch (-1: unknown, not checked).
    pub new_isr: Vec<(BrokerId, BrokerEpoch)>,
}

/// An ongoing reassignment (ListPartitionReassignments).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OngoingReassignment {
    pub topic: String,
    pub partition_id: i32,
    pub replicas: Vec<BrokerId>,
    pub adding_replicas: Vec<BrokerId>,
    pub removing_replicas: Vec<BrokerId>,
}

pub struct Controller {
    config: ControllerConfig,
    /// Committed records plus the ones this controller wrote since.
    image: MetadataImage,
    /// Offset the next record will have in `__cluster_metadata`.
    next_offset: i64,
    last_heartbeat_ms: BTreeMap<BrokerId, u64>,
}

impl Controller {
    /// A newly active controller over the image of the whole committed log. Every registered
    /// broker gets a fresh session: the previous controller's heartbeat clock is not known.
    pub fn new(
        config: ControllerConfig,
        image: MetadataImage,
        next_offset: i64,
        now_ms: u64,
    ) -> Controller {
        assert!(
            next_offset > image.offset,
            "controller starts at {next_offset} but the image is at {}",
            image.offset
        );
        let last_heartbeat_ms = image.brokers.keys().map(|b| (*b, now_ms)).collect();
        Controller {
            config,
            image,
            next_offset,
            last_heartbeat_ms,
        }
    }

    pub fn image(&self) -> &MetadataImage {
        &self.image
    }
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }
    /// Skips offsets the log used for something else (the leader-change record).
    pub fn skip_to(&mut self, offset: i64) {
        assert!(offset >= self.next_offset);
        self.next_offset = offset;
    }
    fn has(&self, bug: ControllerBug) -> bool {
        self.config.bugs.contains(&bug)
    }

    /// Applies a record this controller writes, at the next offset.
    fn emit(&mut self, out: &mut Vec<MetadataRecord>, record: MetadataRecord) {
        if let Err(e) = self.image.apply(self.next_offset, &record) {
            panic!("the controller wrote a record its own image refuses ({e}): {record:?}");
        }
        self.next_offset += 1;
        out.push(record);
    }

    fn unfenced(&self, b: BrokerId) -> bool {
        self.image
            .brokers
            .get(&b)
            .is_some_and(|r| !r.fenced && !r.in_controlled_shutdown)
    }

    fn partition_change(
        &mut self,
        out: &mut Vec<MetadataRecord>,
        topic_id: Uuid,
        partition_id: i32,
        mut next: PartitionRegistration,
    ) {
        let cur = self.image.topics[&topic_id].partitions[&partition_id].clone();
        next.elr.retain(|b| !next.isr.contains(b));
        // KIP-966: the ELR exists only while the ISR is below min.insync.replicas, when the HW
        // cannot advance. Once the ISR is back at min ISR the HW moves on without the ELR
        // members, so they are no longer safe leaders: Kafka's PartitionChangeBuilder clears
        // the ELR then. (Keeping it let `kcheck test` elect a replica paused through a later
        // commit and lose acknowledged records with no bug flag set.)
        if next.isr.len() >= self.config.min_insync_replicas {
            next.elr.clear();
        }
        if next == cur {
            return;
        }
        let diff = |n: &Vec<BrokerId>, c: &Vec<BrokerId>| (n != c).then(|| n.clone());
        let mut change = PartitionChange {
            leader: (next.leader != cur.leader).then_some(next.leader),
            isr: diff(&next.isr, &cur.isr),
            elr: diff(&next.elr, &cur.elr),
            replicas: diff(&next.replicas, &cur.replicas),
            adding_replicas: diff(&next.adding_replicas, &cur.adding_replicas),
            removing_replicas: diff(&next.removing_replicas, &cur.removing_replicas),
            leader_epoch: cur.leader_epoch,
            partition_epoch: cur.partition_epoch + 1,
        };
        if cur.change_bumps_leader_epoch(&change) {
            change.leader_epoch += 1;
        }
        self.emit(
            out,
            MetadataRecord::PartitionChange {
                topic_id,
                partition_id,
                change,
            },
        );
    }

    /// Leader election for one partition (Kafka's PartitionChangeBuilder): a live ISR member
    /// (the current leader if still eligible, else in replica order), then a live ELR member
    /// (KIP-966), then — only with `unclean-election` — any live replica.
    fn elect(&self, p: &mut PartitionRegistration) {
        if p.has_leader() && self.unfenced(p.leader) && p.isr.contains(&p.leader) {
            return;
        }
        let live_isr = p
            .replicas
            .iter()
            .find(|b| p.isr.contains(b) && self.unfenced(**b));
        if let Some(b) = live_isr {
            p.leader = *b;
            return;
        }
        let live_elr = p
            .replicas
            .iter()
            .find(|b| p.elr.contains(b) && self.unfenced(**b));
        if let Some(b) = live_elr.copied() {
            p.leader = b;
            p.isr = vec![b];
            p.elr.retain(|x| *x != b);
            return;
        }
        if self.has(ControllerBug::UncleanElection) {
            if let Some(b) = p.replicas.iter().find(|b| self.unfenced(**b)).copied() {
                tracing::warn!(
                    leader = b,
                    "unclean leader election (--bug unclean-election)"
                );
                p.leader = b;
                p.isr = vec![b];
                p.elr.clear();
                return;
            }
        }
        p.leader = NO_LEADER;
    }

    /// `broker` can no longer lead or stay in the ISR (fenced, shutting down, restarted).
    /// Removed ISR members go to the ELR while the ISR is below min.insync.replicas (KIP-966);
    /// `leave_elr` also drops it from the ELR (an unclean restart may have lost records).
    fn move_away(&mut self, out: &mut Vec<MetadataRecord>, broker: BrokerId, leave_elr: bool) {
        let ids: Vec<(Uuid, i32)> = self
            .image
            .topics
            .iter()
            .flat_map(|(id, t)| t.partitions.keys().map(move |p| (*id, *p)))
            .collect();
        let legacy = self.has(ControllerBug::LastReplicaStanding);
        for (topic_id, partition_id) in ids {
            let cur = self.image.topics[&topic_id].partitions[&partition_id].clone();
            let involved = cur.leader == broker
                || cur.isr.contains(&broker)
                || (leave_elr && cur.elr.contains(&broker));
            if !involved {
                continue;
            }
            let mut next = cur.clone();
            if cur.isr.contains(&broker) {
                if legacy && cur.isr.len() == 1 {
                    // Pre-KIP-966: the last ISR member stays in the ISR, offline.
                } else {
                    next.isr.retain(|b| *b != broker);
                    if !legacy && next.isr.len() < self.config.min_insync_replicas && !leave_elr {
                        next.elr.push(broker);
                    }
                }
            }
            if leave_elr {
                next.elr.retain(|b| *b != broker);
            }
            if next.leader == broker {
                next.leader = NO_LEADER;
            }
            if !next.isr.contains(&next.leader) {
                next.leader = NO_LEADER;
            }
            self.elect(&mut next);
            self.partition_change(out, topic_id, partition_id, next);
        }
    }

    /// Offline partitions get another chance when a broker comes back.
    fn elect_offline(&mut self, out: &mut Vec<MetadataRecord>) {
        let ids: Vec<(Uuid, i32)> = self
            .image
            .topics
            .iter()
            .flat_map(|(id, t)| {
                t.partitions
                    .iter()
                    .filter(|(_, p)| !p.has_leader())
                    .map(move |(p, _)| (*id, *p))
            })
            .collect();
        for (topic_id, partition_id) in ids {
            let mut next = self.image.topics[&topic_id].partitions[&partition_id].clone();
            self.elect(&mut next);
            self.partition_change(out, topic_id, partition_id, next);
        }
    }

    // ---- BrokerRegistration / BrokerHeartbeat ---------------------------------------------

    /// Registers a broker; returns its new broker epoch (the offset of its RegisterBroker
    /// record) and the records. A retry of the same incarnation gets the same epoch back.
    /// `previous_broker_epoch` is -1 after an unclean shutdown (KIP-966's field).
    pub fn register_broker(
        &mut self,
        now_ms: u64,
        broker_id: BrokerId,
        incarnation_id: Uuid,
        endpoint: String,
        previous_broker_epoch: BrokerEpoch,
    ) -> (BrokerEpoch, Vec<MetadataRecord>) {
        let mut out = Vec::new();
        if let Some(old) = self.image.brokers.get(&broker_id) {
            if old.incarnation_id == incarnation_id {
                self.last_heartbeat_ms.insert(broker_id, now_ms);
                return (old.broker_epoch, out);
            }
        }
        let known = self.image.brokers.get(&broker_id).map(|b| b.broker_epoch);
        let unclean_shutdown = known.is_some_and(|e| e != previous_broker_epoch);
        let broker_epoch = self.next_offset;
        self.emit(
            &mut out,
            MetadataRecord::RegisterBroker {
                broker_id,
                broker_epoch,
                incarnation_id,
                endpoint,
                fenced: true,
                unclean_shutdown,
            },
        );
        if known.is_some() {
            let leave_elr = unclean_shutdown && !self.has(ControllerBug::LastReplicaStanding);
            self.move_away(&mut out, broker_id, leave_elr);
        }
        self.last_heartbeat_ms.insert(broker_id, now_ms);
        (broker_epoch, out)
    }

    /// A broker is caught up once its metadata offset reaches its own registration record.
    pub fn heartbeat(
        &mut self,
        now_ms: u64,
        broker_id: BrokerId,
        broker_epoch: BrokerEpoch,
        current_metadata_offset: i64,
        want_fence: bool,
        want_shut_down: bool,
    ) -> Result<(HeartbeatReply, Vec<MetadataRecord>), ControllerError> {
        let reg = self
            .image
            .brokers
            .get(&broker_id)
            .ok_or(ControllerError::BrokerIdNotRegistered)?;
        if reg.broker_epoch != broker_epoch {
            return Err(ControllerError::StaleBrokerEpoch);
        }
        let (fenced, shutting_down) = (reg.fenced, reg.in_controlled_shutdown);
        self.last_heartbeat_ms.insert(broker_id, now_ms);
        let is_caught_up = current_metadata_offset >= broker_epoch;
        let mut out = Vec::new();
        if want_shut_down && !shutting_down {
            self.emit(
                &mut out,
                MetadataRecord::BrokerRegistrationChange {
                    broker_id,
                    broker_epoch,
                    fenced: Some(true),
                    in_controlled_shutdown: Some(true),
                },
            );
            self.move_away(&mut out, broker_id, false);
        } else if fenced && !want_fence && !want_shut_down && is_caught_up && !shutting_down {
            self.emit(
                &mut out,
                MetadataRecord::BrokerRegistrationChange {
                    broker_id,
                    broker_epoch,
                    fenced: Some(false),
                    in_controlled_shutdown: None,
                },
            );
            self.elect_offline(&mut out);
        } else if !fenced && want_fence {
            self.fence(&mut out, broker_id);
        }
        let reg = &self.image.brokers[&broker_id];
        let reply = HeartbeatReply {
            is_caught_up,
            is_fenced: reg.fenced,
            should_shut_down: want_shut_down,
        };
        Ok((reply, out))
    }

    fn fence(&mut self, out: &mut Vec<MetadataRecord>, broker_id: BrokerId) {
        let broker_epoch = self.image.brokers[&broker_id].broker_epoch;
        self.emit(
            out,
            MetadataRecord::BrokerRegistrationChange {
                broker_id,
                broker_epoch,
                fenced: Some(true),
                in_controlled_shutdown: None,
            },
        );
        self.move_away(out, broker_id, false);
    }

    /// Fences the unfenced brokers whose session lapsed.
    pub fn tick(&mut self, now_ms: u64) -> Vec<MetadataRecord> {
        let lapsed: Vec<BrokerId> = self
            .image
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .filter(|b| {
                let last = self
                    .last_heartbeat_ms
                    .get(&b.broker_id)
                    .copied()
                    .unwrap_or(0);
                now_ms.saturating_sub(last) > self.config.session_timeout_ms
            })
            .map(|b| b.broker_id)
            .collect();
        let mut out = Vec::new();
        for b in lapsed {
            tracing::info!(broker = b, "broker session lapsed: fencing");
            self.fence(&mut out, b);
        }
        out
    }

    // ---- CreateTopics --------------------------------------------------------------------

    /// Creates a topic; `num_partitions` / `replication_factor` of -1 take the defaults.
    pub fn create_topic(
        &mut self,
        name: &str,
        num_partitions: i32,
        replication_factor: i16,
    ) -> Result<(Uuid, Vec<MetadataRecord>), ControllerError> {
        let valid = !name.is_empty()
            && name.len() <= 249
            && name != "."
            && name != ".."
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !valid || name == "__cluster_metadata" {
            return Err(ControllerError::InvalidTopic);
        }
        if self.image.topic_ids.contains_key(name) {
            return Err(ControllerError::TopicAlreadyExists);
        }
        let brokers: Vec<BrokerId> = self
            .image
            .brokers
            .keys()
            .copied()
            .filter(|b| self.unfenced(*b))
            .collect();
        let partitions = if num_partitions == -1 {
            1
        } else {
            num_partitions
        };
        if !(1..=10_000).contains(&partitions) {
            return Err(ControllerError::InvalidPartitions);
        }
        let rf = if replication_factor == -1 {
            self.config.default_replication_factor.min(brokers.len())
        } else {
            usize::try_from(replication_factor).unwrap_or(0)
        };
        if rf == 0 || rf > brokers.len() {
            return Err(ControllerError::InvalidReplicationFactor);
        }
        let topic_id = Uuid::new_v4();
        let mut out = Vec::new();
        self.emit(
            &mut out,
            MetadataRecord::Topic {
                name: name.to_owned(),
                topic_id,
            },
        );
        let n = brokers.len();
        let start = (self.next_offset as usize) % n;
        for p in 0..partitions {
            let replicas: Vec<BrokerId> = (0..rf)
                .map(|i| brokers[(start + p as usize + i) % n])
                .collect();
            let registration = PartitionRegistration {
                leader: replicas[0],
                isr: replicas.clone(),
                replicas,
                elr: vec![],
                adding_replicas: vec![],
                removing_replicas: vec![],
                leader_epoch: 0,
                partition_epoch: 0,
            };
            self.emit(
                &mut out,
                MetadataRecord::Partition {
                    topic_id,
                    partition_id: p,
                    registration,
                },
            );
        }
        Ok((topic_id, out))
    }

    // ---- AlterPartition ------------------------------------------------------------------

    /// One partition of an AlterPartition from the leader `broker_id`. On success returns the
    /// registration after the change (what the response carries).
    ///
    /// The decision is a protocol transition event (`controller.alter_partition`, see
    /// [`crate::proto_trace`]): the proposed ISR with each member's proposed broker epoch next
    /// to the epoch this controller's image registers for it *when it decides*, so
    /// `kcheck conform` can tell a controller that accepted a stale incarnation (KIP-903)
    /// from a leader that merely proposed one. Only the active controller has a `Controller`,
    /// so only its decisions are traced.
    pub fn alter_partition(
        &mut self,
        broker_id: BrokerId,
        broker_epoch: BrokerEpoch,
        req: &AlterPartitionRequest,
        out: &mut Vec<MetadataRecord>,
    ) -> Result<PartitionRegistration, ControllerError> {
        // Read before deciding: an accepted change rewrites the partition's ISR.
        let topic = self.image.topics.get(&req.topic_id);
        let topic_name = topic.map_or(String::new(), |t| t.name.clone());
        let current_isr: Vec<BrokerId> = topic
            .and_then(|t| t.partitions.get(&req.partition_id))
            .map_or(Vec::new(), |p| p.isr.clone());
        let isr: Vec<[i64; 3]> = req
            .new_isr
            .iter()
            .map(|&(b, proposed)| {
                let registered = self.image.brokers.get(&b).map_or(-1, |r| r.broker_epoch);
                [i64::from(b), proposed, registered]
            })
            .collect();
        let result = self.decide_alter_partition(broker_id, broker_epoch, req, out);
        let error = result.as_ref().err().map_or(0, |e| e.code());
        tracing::info!(target: crate::proto_trace::TARGET, topic = topic_name.as_str(),
            partition = req.partition_id, leader = broker_id, leader_epoch = req.leader_epoch,
            partition_epoch = req.partition_epoch, current_isr = ?current_isr, isr = ?isr,
            accepted = result.is_ok(), error, "controller.alter_partition");
        result
    }

    /// [`Controller::alter_partition`]'s checks and change, in Kafka's order.
    fn decide_alter_partition(
        &mut self,
        broker_id: BrokerId,
        broker_epoch: BrokerEpoch,
        req: &AlterPartitionRequest,
        out: &mut Vec<MetadataRecord>,
    ) -> Result<PartitionRegistration, ControllerError> {
        let reg = self
            .image
            .brokers
            .get(&broker_id)
            .ok_or(ControllerError::BrokerIdNotRegistered)?;
        if reg.broker_epoch != broker_epoch {
            return Err(ControllerError::StaleBrokerEpoch);
        }
        let cur = self
            .image
            .topics
            .get(&req.topic_id)
            .and_then(|t| t.partitions.get(&req.partition_id))
            .cloned()
            .ok_or(ControllerError::UnknownTopicOrPartition)?;
        if cur.leader != broker_id {
            return Err(ControllerError::NotLeaderOrFollower);
        }
        if req.leader_epoch < cur.leader_epoch {
            return Err(ControllerError::FencedLeaderEpoch);
        }
        if req.leader_epoch > cur.leader_epoch || req.partition_epoch != cur.partition_epoch {
            return Err(ControllerError::InvalidUpdateVersion);
        }
        let isr: Vec<BrokerId> = req.new_isr.iter().map(|(b, _)| *b).collect();
        if !isr.contains(&broker_id)
            || isr.iter().any(|b| !cur.replicas.contains(b))
            || isr.iter().enumerate().any(|(i, b)| isr[..i].contains(b))
        {
            return Err(ControllerError::InvalidRequest);
        }
        for (b, epoch) in &req.new_isr {
            if cur.isr.contains(b) {
                continue;
            }
            let Some(r) = self.image.brokers.get(b) else {
                return Err(ControllerError::IneligibleReplica);
            };
            let stale = *epoch >= 0
                && *epoch != r.broker_epoch
                && !self.has(ControllerBug::NoBrokerEpochCheck);
            if r.fenced || r.in_controlled_shutdown || stale {
                return Err(ControllerError::IneligibleReplica);
            }
        }
        let mut next = cur.clone();
        let removed: Vec<BrokerId> = cur
            .isr
            .iter()
            .copied()
            .filter(|b| !isr.contains(b))
            .collect();
        next.isr = isr;
        if !self.has(ControllerBug::LastReplicaStanding)
            && next.isr.len() < self.config.min_insync_replicas
        {
            next.elr.extend(removed);
        }
        self.partition_change(out, req.topic_id, req.partition_id, next);
        self.maybe_complete_reassignment(out, req.topic_id, req.partition_id);
        Ok(self.image.topics[&req.topic_id].partitions[&req.partition_id].clone())
    }

    // ---- reassignment (KIP-455) ----------------------------------------------------------

    /// Starts (`Some(target)`) or cancels (`None`) a reassignment of one partition.
    pub fn alter_reassignment(
        &mut self,
        topic: &str,
        partition_id: i32,
        target: Option<Vec<BrokerId>>,
        out: &mut Vec<MetadataRecord>,
    ) -> Result<(), ControllerError> {
        let topic_id = *self
            .image
            .topic_ids
            .get(topic)
            .ok_or(ControllerError::UnknownTopicOrPartition)?;
        let cur = self.image.topics[&topic_id]
            .partitions
            .get(&partition_id)
            .cloned()
            .ok_or(ControllerError::UnknownTopicOrPartition)?;
        let ongoing = !cur.adding_replicas.is_empty() || !cur.removing_replicas.is_empty();
        let origin: Vec<BrokerId> = cur
            .replicas
            .iter()
            .copied()
            .filter(|b| !cur.adding_replicas.contains(b))
            .collect();
        // A replacing request is computed against the origin (KRaft reverts the running
        // reassignment first); the mutation computes it against the grown set.
        let base = if target.is_some() && self.has(ControllerBug::ReplaceFromGrownSet) {
            cur.replicas.clone()
        } else {
            origin.clone()
        };
        let mut next = cur.clone();
        match target {
            None => {
                if !ongoing {
                    return Err(ControllerError::NoReassignmentInProgress);
                }
                next.replicas = origin.clone();
                if !self.has(ControllerBug::CancelKeepsAddingInIsr) {
                    next.isr.retain(|b| origin.contains(b));
                }
                next.elr.retain(|b| origin.contains(b));
                next.adding_replicas.clear();
                next.removing_replicas.clear();
                if next.isr.is_empty() {
                    // Cancelling would leave no ISR: keep the target members instead.
                    return Err(ControllerError::InvalidReplicaAssignment);
                }
                if !next.isr.contains(&next.leader) {
                    next.leader = NO_LEADER;
                    self.elect(&mut next);
                }
            }
            Some(target) => {
                let dup = target
                    .iter()
                    .enumerate()
                    .any(|(i, b)| target[..i].contains(b));
                if target.is_empty()
                    || dup
                    || target.iter().any(|b| !self.image.brokers.contains_key(b))
                {
                    return Err(ControllerError::InvalidReplicaAssignment);
                }
                let mut replicas = target.clone();
                replicas.extend(base.iter().copied().filter(|b| !target.contains(b)));
                next.replicas = replicas;
                next.adding_replicas = target
                    .iter()
                    .copied()
                    .filter(|b| !base.contains(b))
                    .collect();
                next.removing_replicas = base
                    .iter()
                    .copied()
                    .filter(|b| !target.contains(b))
                    .collect();
                next.isr.retain(|b| next.replicas.contains(b));
                next.elr.retain(|b| next.replicas.contains(b));
            }
        }
        self.partition_change(out, topic_id, partition_id, next);
        self.maybe_complete_reassignment(out, topic_id, partition_id);
        Ok(())
    }

    /// Once every adding replica is in the ISR: move the leader onto a target replica if
    /// needed and shrink the replicas to the target.
    fn maybe_complete_reassignment(
        &mut self,
        out: &mut Vec<MetadataRecord>,
        topic_id: Uuid,
        partition_id: i32,
    ) {
        let cur = self.image.topics[&topic_id].partitions[&partition_id].clone();
        if cur.adding_replicas.is_empty() && cur.removing_replicas.is_empty() {
            return;
        }
        let caught_up = cur.adding_replicas.iter().all(|b| cur.isr.contains(b));
        if !caught_up && !self.has(ControllerBug::RemoveBeforeCaughtUp) {
            return;
        }
        let target: Vec<BrokerId> = cur
            .replicas
            .iter()
            .copied()
            .filter(|b| !cur.removing_replicas.contains(b))
            .collect();
        if self.has(ControllerBug::NoLeaderMove) && !target.contains(&cur.leader) {
            return; // waits for a leader move that nothing makes
        }
        let mut next = cur.clone();
        next.replicas = target.clone();
        next.isr.retain(|b| target.contains(b));
        if self.has(ControllerBug::RemoveBeforeCaughtUp) {
            for b in &cur.adding_replicas {
                if !next.isr.contains(b) {
                    tracing::warn!(
                        replica = b,
                        "completing a reassignment with an adding replica outside the ISR (--bug remove-before-caught-up)"
                    );
                    next.isr.push(*b);
                }
            }
        }
        next.elr.retain(|b| target.contains(b));
        next.adding_replicas.clear();
        next.removing_replicas.clear();
        if next.isr.is_empty() {
            return; // wait: no target replica is in sync yet
        }
        if self.has(ControllerBug::LeaderOutsideTarget) && next.has_leader() {
            // Keeps the removed leader: the image refuses the record (leader-in-replicas).
        } else if !next.isr.contains(&next.leader) {
            next.leader = NO_LEADER;
            self.elect(&mut next);
        }
        self.partition_change(out, topic_id, partition_id, next);
    }

    /// ListPartitionReassignments (all topics when `topics` is None).
    pub fn list_reassignments(&self, topics: Option<&[String]>) -> Vec<OngoingReassignment> {
        let mut out = Vec::new();
        for t in self.image.topics.values() {
            if topics.is_some_and(|names| !names.contains(&t.name)) {
                continue;
            }
            for (p, r) in &t.partitions {
                if !r.adding_replicas.is_empty() || !r.removing_replicas.is_empty() {
                    out.push(OngoingReassignment {
                        topic: t.name.clone(),
                        partition_id: *p,
                        replicas: r.replicas.clone(),
                        adding_replicas: r.adding_replicas.clone(),
                        removing_replicas: r.removing_replicas.clone(),
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(bugs: Vec<ControllerBug>) -> (Controller, Vec<BrokerEpoch>) {
        let config = ControllerConfig {
            bugs,
            ..ControllerConfig::default()
        };
        let mut c = Controller::new(config, MetadataImage::default(), 1, 0);
        let mut epochs = Vec::new();
        for b in 1..=3 {
            let (epoch, _) =
                c.register_broker(0, b, Uuid::new_v4(), format!("127.0.0.1:{}", 9090 + b), -1);
            let (reply, _) = c.heartbeat(0, b, epoch, epoch, false, false).unwrap();
            assert!(!reply.is_fenced);
            epochs.push(epoch);
        }
        (c, epochs)
    }

    #[test]
    fn broker_epoch_is_the_offset_of_its_registration_record() {
        let mut c = Controller::new(ControllerConfig::default(), MetadataImage::default(), 10, 0);
        let (epoch, records) = c.register_broker(0, 1, Uuid::new_v4(), "h:1".into(), -1);
        assert_eq!(epoch, 10);
        assert_eq!(records.len(), 1);
        // Not caught up yet: stays fenced.
        let (reply, _) = c.heartbeat(1, 1, epoch, 5, false, false).unwrap();
        assert!(reply.is_fenced && !reply.is_caught_up);
        assert_eq!(
            c.heartbeat(1, 1, epoch - 1, 20, false, false).unwrap_err(),
            ControllerError::StaleBrokerEpoch
        );
        let (reply, _) = c.heartbeat(1, 1, epoch, 10, false, false).unwrap();
        assert!(!reply.is_fenced);
    }

    #[test]
    fn a_lapsed_session_fences_the_broker_and_moves_its_leaderships_to_the_isr() {
        let (mut c, epochs) = cluster(vec![]);
        let (id, _) = c.create_topic("t", 3, 3).unwrap();
        for b in [2, 3] {
            c.heartbeat(8000, b, epochs[b as usize - 1], 100, false, false)
                .unwrap();
        }
        let led: Vec<i32> = c.image().topics[&id]
            .partitions
            .iter()
            .filter(|(_, p)| p.leader == 1)
            .map(|(i, _)| *i)
            .collect();
        assert!(!led.is_empty());
        let records = c.tick(10_000);
        assert!(!records.is_empty());
        assert!(c.image().brokers[&1].fenced);
        for p in c.image().topics[&id].partitions.values() {
            assert_ne!(p.leader, 1);
            assert!(!p.isr.contains(&1));
        }
    }

    #[test]
    fn elr_keeps_the_last_isr_members_electable_and_unclean_election_needs_its_flag() {
        for bugs in [vec![], vec![ControllerBug::UncleanElection]] {
            let unclean = !bugs.is_empty();
            let (mut c, epochs) = cluster(bugs);
            let (id, _) = c.create_topic("t", 1, 3).unwrap();
            let order = c.image().topics[&id].partitions[&0].replicas.clone();
            // Fence the replicas one by one (2nd, 3rd, then the leader): the ISR shrinks to
            // nothing; the last ones removed below min.insync.replicas are in the ELR.
            let mut now = 0;
            for (i, gone) in [order[1], order[2], order[0]].into_iter().enumerate() {
                now += 10_000;
                for b in 1..=3 {
                    let fenced_already = [order[1], order[2], order[0]][..=i].contains(&b);
                    if !fenced_already {
                        c.heartbeat(now - 1, b, epochs[b as usize - 1], 100, false, false)
                            .unwrap();
                    }
                }
                c.tick(now);
                assert!(c.image().brokers[&gone].fenced);
            }
            let p = c.image().topics[&id].partitions[&0].clone();
            assert_eq!(p.leader, NO_LEADER, "{p:?}");
            assert!(
                p.isr.is_empty() && p.elr.contains(&order[0]) && p.elr.contains(&order[2]),
                "{p:?}"
            );
            // The first replica fenced (out of sync, not in the ELR) comes back.
            let back = order[1];
            let (reply, _) = c
                .heartbeat(now, back, epochs[back as usize - 1], 100, false, false)
                .unwrap();
            assert!(!reply.is_fenced);
            let p = c.image().topics[&id].partitions[&0].clone();
            if unclean {
                assert_eq!(
                    p.leader, back,
                    "unclean election picks the out-of-sync replica: {p:?}"
                );
            } else {
                assert_eq!(p.leader, NO_LEADER, "stays offline without the flag: {p:?}");
            }
        }
    }

    /// KIP-966: a replica enters the ELR when the ISR drops below min.insync.replicas and
    /// leaves it once the ISR is back at min ISR (the HW then advances without it, so it is
    /// no longer a safe leader). Fails if `partition_change` keeps the ELR.
    #[test]
    fn the_elr_is_cleared_once_the_isr_is_back_at_min_isr() {
        let (mut c, epochs) = cluster(vec![]);
        let (id, _) = c.create_topic("t", 1, 3).unwrap();
        let p = c.image().topics[&id].partitions[&0].clone();
        let l = p.leader;
        let others: Vec<BrokerId> = p.replicas.iter().copied().filter(|b| *b != l).collect();
        let (f1, f2) = (others[0], others[1]);
        let e = |b: BrokerId| epochs[b as usize - 1];
        let mut out = Vec::new();
        let mut alter = |c: &mut Controller, partition_epoch, new_isr| {
            let req = AlterPartitionRequest {
                topic_id: id,
                partition_id: 0,
                leader_epoch: p.leader_epoch,
                partition_epoch,
                new_isr,
            };
            c.alter_partition(l, e(l), &req, &mut out).unwrap()
        };
        let r = alter(&mut c, p.partition_epoch, vec![(l, e(l)), (f2, e(f2))]);
        assert!(r.elr.is_empty(), "ISR at min ISR: no ELR {r:?}");
        let r = alter(&mut c, r.partition_epoch, vec![(l, e(l))]);
        assert_eq!(
            r.elr,
            vec![f2],
            "below min ISR the removed member is eligible: {r:?}"
        );
        let r = alter(&mut c, r.partition_epoch, vec![(l, e(l)), (f1, e(f1))]);
        assert!(
            r.elr.is_empty(),
            "back at min ISR the ELR is cleared: {r:?}"
        );
    }

    #[test]
    fn alter_partition_checks_epochs() {
        let (mut c, epochs) = cluster(vec![]);
        let (id, _) = c.create_topic("t", 1, 3).unwrap();
        let p = c.image().topics[&id].partitions[&0].clone();
        let l = p.leader;
        let le = epochs[l as usize - 1];
        let mut out = Vec::new();
        let mut req = AlterPartitionRequest {
            topic_id: id,
            partition_id: 0,
            leader_epoch: 0,
            partition_epoch: 0,
            new_isr: vec![(l, le)],
        };
        c.alter_partition(l, le, &req, &mut out).unwrap();
        // Same partition epoch again: INVALID_UPDATE_VERSION.
        assert_eq!(
            c.alter_partition(l, le, &req, &mut out).unwrap_err(),
            ControllerError::InvalidUpdateVersion
        );
        // Re-adding a follower with a stale broker epoch (KIP-903).
        let f = p.replicas.iter().copied().find(|b| *b != l).unwrap();
        req.partition_epoch = 1;
        req.new_isr = vec![(l, le), (f, epochs[f as usize - 1] - 1)];
        assert_eq!(
            c.alter_partition(l, le, &req, &mut out).unwrap_err(),
            ControllerError::IneligibleReplica
        );
        req.new_isr[1].1 = epochs[f as usize - 1];
        let after = c.alter_partition(l, le, &req, &mut out).unwrap();
        assert_eq!(after.isr.len(), 2);
        assert_eq!(
            c.alter_partition(f, epochs[f as usize - 1], &req, &mut out)
                .unwrap_err(),
            ControllerError::NotLeaderOrFollower
        );
    }

    #[test]
    fn a_stale_broker_epoch_passes_only_with_no_broker_epoch_check() {
        for bugs in [vec![], vec![ControllerBug::NoBrokerEpochCheck]] {
            let lax = !bugs.is_empty();
            let (mut c, epochs) = cluster(bugs);
            let (id, _) = c.create_topic("t", 1, 3).unwrap();
            let p = c.image().topics[&id].partitions[&0].clone();
            let (l, f) = (p.leader, p.replicas[1]);
            let le = epochs[l as usize - 1];
            let mut out = Vec::new();
            let shrink = AlterPartitionRequest {
                topic_id: id,
                partition_id: 0,
                leader_epoch: 0,
                partition_epoch: 0,
                new_isr: vec![(l, le)],
            };
            c.alter_partition(l, le, &shrink, &mut out).unwrap();
            // The follower restarts (new broker epoch); the leader re-adds it on the strength
            // of a fetch from the previous incarnation.
            let (f_new, _) = c.register_broker(1, f, Uuid::new_v4(), "h:f".into(), -1);
            c.heartbeat(1, f, f_new, f_new, false, false).unwrap();
            let stale = AlterPartitionRequest {
                partition_epoch: c.image().topics[&id].partitions[&0].partition_epoch,
                new_isr: vec![(l, le), (f, epochs[f as usize - 1])],
                ..shrink
            };
            let r = c.alter_partition(l, le, &stale, &mut out);
            if lax {
                assert!(
                    r.unwrap().isr.contains(&f),
                    "the stale incarnation joins the ISR"
                );
            } else {
                assert_eq!(r.unwrap_err(), ControllerError::IneligibleReplica);
            }
        }
    }

    /// Runs `f` with the protocol trace going to a file; returns its `controller.*` events.
    fn traced(f: impl FnOnce()) -> Vec<serde_json::Value> {
        use tracing_subscriber::layer::SubscriberExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.jsonl");
        let layer = crate::proto_trace::JsonLinesLayer::open(&path, 9).unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), f);
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| {
                v["event"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("controller."))
            })
            .collect()
    }

    #[test]
    fn alter_partition_decisions_carry_proposed_and_registered_broker_epochs() {
        for bugs in [vec![], vec![ControllerBug::NoBrokerEpochCheck]] {
            let lax = !bugs.is_empty();
            let (mut c, epochs) = cluster(bugs);
            let (id, _) = c.create_topic("t", 1, 3).unwrap();
            let p = c.image().topics[&id].partitions[&0].clone();
            let (l, f) = (p.leader, p.replicas[1]);
            let (le, f_old) = (epochs[l as usize - 1], epochs[f as usize - 1]);
            let mut out = Vec::new();
            let shrink = AlterPartitionRequest {
                topic_id: id,
                partition_id: 0,
                leader_epoch: 0,
                partition_epoch: 0,
                new_isr: vec![(l, le)],
            };
            let events = traced(|| {
                c.alter_partition(l, le, &shrink, &mut out).unwrap();
            });
            assert_eq!(events.len(), 1, "{events:?}");
            assert_eq!(
                (events[0]["accepted"].as_bool(), events[0]["error"].as_i64()),
                (Some(true), Some(0))
            );
            // The follower restarts; the leader proposes it back with the old incarnation's.
            let (f_new, _) = c.register_broker(1, f, Uuid::new_v4(), "h:f".into(), -1);
            c.heartbeat(1, f, f_new, f_new, false, false).unwrap();
            let stale = AlterPartitionRequest {
                partition_epoch: c.image().topics[&id].partitions[&0].partition_epoch,
                new_isr: vec![(l, le), (f, f_old)],
                ..shrink
            };
            let events = traced(|| {
                let _ = c.alter_partition(l, le, &stale, &mut out);
            });
            assert_eq!(events.len(), 1, "{events:?}");
            let e = &events[0];
            assert_eq!(e["event"], "controller.alter_partition");
            assert_eq!(
                (e["topic"].as_str(), e["partition"].as_i64()),
                (Some("t"), Some(0))
            );
            assert_eq!(e["leader"], l);
            assert_eq!(e["current_isr"], serde_json::json!([l]));
            assert_eq!(
                e["isr"],
                serde_json::json!([[l, le, le], [f, f_old, f_new]]),
                "each member: [broker, proposed epoch, registered epoch]"
            );
            assert_eq!(e["accepted"], lax);
            let code = if lax {
                0
            } else {
                ControllerError::IneligibleReplica.code()
            };
            assert_eq!(e["error"], code);
        }
    }

    #[test]
    fn an_unclean_restart_of_the_last_isr_member_reelects_it_only_with_last_replica_standing() {
        for bugs in [vec![], vec![ControllerBug::LastReplicaStanding]] {
            let legacy = !bugs.is_empty();
            let (mut c, epochs) = cluster(bugs);
            let (id, _) = c.create_topic("t", 1, 3).unwrap();
            let l = c.image().topics[&id].partitions[&0].leader;
            let le = epochs[l as usize - 1];
            let mut out = Vec::new();
            let shrink = AlterPartitionRequest {
                topic_id: id,
                partition_id: 0,
                leader_epoch: 0,
                partition_epoch: 0,
                new_isr: vec![(l, le)],
            };
            c.alter_partition(l, le, &shrink, &mut out).unwrap();
            // The leader stops heartbeating and is fenced; the others keep theirs.
            for b in (1..=3).filter(|b| *b != l) {
                c.heartbeat(9_000, b, epochs[b as usize - 1], 100, false, false)
                    .unwrap();
            }
            c.tick(10_000);
            // It comes back after an unclean shutdown (it may have lost unflushed records).
            let (e, _) = c.register_broker(10_001, l, Uuid::new_v4(), "h:l".into(), -1);
            c.heartbeat(10_002, l, e, e, false, false).unwrap();
            let p = c.image().topics[&id].partitions[&0].clone();
            if legacy {
                assert_eq!((p.leader, p.isr.clone()), (l, vec![l]), "re-elected: {p:?}");
            } else {
                assert_ne!(p.leader, l, "{p:?}");
                assert!(!p.isr.contains(&l) && !p.elr.contains(&l), "{p:?}");
                assert!(p.has_leader(), "an ELR member leads: {p:?}");
            }
        }
    }

    #[test]
    fn reassignment_grows_waits_for_the_isr_then_shrinks() {
        let (mut c, mut epochs) = cluster(vec![]);
        let (e4, _) = c.register_broker(0, 4, Uuid::new_v4(), "h:4".into(), -1);
        c.heartbeat(0, 4, e4, e4, false, false).unwrap();
        epochs.push(e4);
        let (id, _) = c.create_topic("t", 1, 1).unwrap();
        let p = c.image().topics[&id].partitions[&0].clone();
        let old = p.leader;
        let target = vec![(old % 4) + 1];
        let mut out = Vec::new();
        c.alter_reassignment("t", 0, Some(target.clone()), &mut out)
            .unwrap();
        assert_eq!(c.list_reassignments(None).len(), 1);
        let p = c.image().topics[&id].partitions[&0].clone();
        assert_eq!(p.adding_replicas, target);
        assert_eq!(p.removing_replicas, vec![old]);
        // The new replica catches up: the leader adds it to the ISR; the controller finishes.
        let req = AlterPartitionRequest {
            topic_id: id,
            partition_id: 0,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            new_isr: vec![
                (old, epochs[old as usize - 1]),
                (target[0], epochs[target[0] as usize - 1]),
            ],
        };
        c.alter_partition(old, epochs[old as usize - 1], &req, &mut out)
            .unwrap();
        let p = c.image().topics[&id].partitions[&0].clone();
        assert_eq!((p.replicas.clone(), p.leader), (target.clone(), target[0]));
        assert!(c.list_reassignments(None).is_empty());
        assert_eq!(
            c.alter_reassignment("t", 0, None, &mut out).unwrap_err(),
            ControllerError::NoReassignmentInProgress
        );
    }

    /// Four brokers, a topic of one partition on three of them; returns the controller, the
    /// broker epochs (index = id - 1), the topic id, the origin replicas and the spare broker.
    fn four_brokers(
        bugs: Vec<ControllerBug>,
    ) -> (Controller, Vec<BrokerEpoch>, Uuid, Vec<BrokerId>, BrokerId) {
        let (mut c, mut epochs) = cluster(bugs);
        let (e4, _) = c.register_broker(0, 4, Uuid::new_v4(), "h:4".into(), -1);
        c.heartbeat(0, 4, e4, e4, false, false).unwrap();
        epochs.push(e4);
        let (id, _) = c.create_topic("t", 1, 3).unwrap();
        let origin = c.image().topics[&id].partitions[&0].replicas.clone();
        let spare = (1..=4).find(|b| !origin.contains(b)).unwrap();
        (c, epochs, id, origin, spare)
    }

    fn add_to_isr(c: &mut Controller, epochs: &[BrokerEpoch], id: Uuid, b: BrokerId) {
        let p = c.image().topics[&id].partitions[&0].clone();
        let mut isr: Vec<(BrokerId, BrokerEpoch)> = p
            .isr
            .iter()
            .map(|x| (*x, epochs[*x as usize - 1]))
            .collect();
        isr.push((b, epochs[b as usize - 1]));
        let req = AlterPartitionRequest {
            topic_id: id,
            partition_id: 0,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            new_isr: isr,
        };
        let mut out = Vec::new();
        c.alter_partition(p.leader, epochs[p.leader as usize - 1], &req, &mut out)
            .unwrap();
    }

    #[test]
    fn remove_before_caught_up_completes_with_the_adding_replica_outside_the_isr() {
        for bug in [false, true] {
            let bugs = if bug {
                vec![ControllerBug::RemoveBeforeCaughtUp]
            } else {
                vec![]
            };
            let (mut c, _, id, origin, spare) = four_brokers(bugs);
            // Move off the leader, the spare broker first in the target.
            let target = vec![spare, origin[1], origin[2]];
            let mut out = Vec::new();
            c.alter_reassignment("t", 0, Some(target.clone()), &mut out)
                .unwrap();
            let p = c.image().topics[&id].partitions[&0].clone();
            if bug {
                // Completed at once: the spare broker, which fetched nothing, leads.
                assert_eq!((p.replicas.clone(), p.leader), (target.clone(), spare));
                assert!(p.isr.contains(&spare), "{p:?}");
                assert!(c.list_reassignments(None).is_empty());
            } else {
                assert_eq!(p.leader, origin[0]);
                assert_eq!(p.adding_replicas, vec![spare]);
                assert!(!p.isr.contains(&spare));
            }
        }
    }

    #[test]
    #[should_panic(expected = "leader-in-replicas")]
    fn leader_outside_target_is_refused_by_the_controllers_own_image() {
        let (mut c, epochs, id, origin, spare) =
            four_brokers(vec![ControllerBug::LeaderOutsideTarget]);
        let mut out = Vec::new();
        c.alter_reassignment("t", 0, Some(vec![spare, origin[1], origin[2]]), &mut out)
            .unwrap();
        add_to_isr(&mut c, &epochs, id, spare);
    }

    #[test]
    fn the_correct_completion_moves_the_leader_into_the_target_and_no_leader_move_waits_forever() {
        for bug in [false, true] {
            let bugs = if bug {
                vec![ControllerBug::NoLeaderMove]
            } else {
                vec![]
            };
            let (mut c, epochs, id, origin, spare) = four_brokers(bugs);
            let target = vec![spare, origin[1], origin[2]];
            let mut out = Vec::new();
            c.alter_reassignment("t", 0, Some(target.clone()), &mut out)
                .unwrap();
            add_to_isr(&mut c, &epochs, id, spare);
            let p = c.image().topics[&id].partitions[&0].clone();
            if bug {
                assert_eq!(p.leader, origin[0]);
                assert_eq!(c.list_reassignments(None).len(), 1, "still in progress");
            } else {
                assert_eq!((p.replicas.clone(), p.leader), (target, spare));
                assert!(p.leader_epoch > 0);
            }
        }
    }

    #[test]
    #[should_panic(expected = "isr-subset-of-replicas")]
    fn cancel_keeps_adding_in_isr_is_refused_by_the_controllers_own_image() {
        let (mut c, mut epochs, id, origin, spare) =
            four_brokers(vec![ControllerBug::CancelKeepsAddingInIsr]);
        // Two adding replicas: the reassignment is still running after the first joins the
        // ISR (with one, the AlterPartition adding it completes the reassignment).
        let (e5, _) = c.register_broker(0, 5, Uuid::new_v4(), "h:5".into(), -1);
        c.heartbeat(0, 5, e5, e5, false, false).unwrap();
        epochs.push(e5);
        let mut out = Vec::new();
        c.alter_reassignment("t", 0, Some(vec![origin[0], spare, 5]), &mut out)
            .unwrap();
        add_to_isr(&mut c, &epochs, id, spare);
        assert_eq!(c.list_reassignments(None).len(), 1, "5 is still adding");
        c.alter_reassignment("t", 0, None, &mut out).unwrap();
    }

    #[test]
    fn replace_from_grown_set_completes_without_the_first_requests_new_replica() {
        for bug in [false, true] {
            let bugs = if bug {
                vec![ControllerBug::ReplaceFromGrownSet]
            } else {
                vec![]
            };
            let (mut c, _, id, origin, spare) = four_brokers(bugs);
            let mut out = Vec::new();
            c.alter_reassignment("t", 0, Some(vec![origin[0], origin[1], spare]), &mut out)
                .unwrap();
            c.alter_reassignment("t", 0, Some(vec![origin[0], origin[2], spare]), &mut out)
                .unwrap();
            let p = c.image().topics[&id].partitions[&0].clone();
            if bug {
                // Nothing was adding: completed with the spare outside the ISR.
                assert_eq!(p.replicas, vec![origin[0], origin[2], spare]);
                assert!(!p.isr.contains(&spare));
                assert!(c.list_reassignments(None).is_empty());
            } else {
                assert_eq!(p.adding_replicas, vec![spare]);
                assert_eq!(p.removing_replicas, vec![origin[1]]);
            }
        }
    }
}
