//! Partition replication: one partition replicated on a few brokers, its leader, leader epoch,
//! ISR and ELR owned by the controller, and each replica's log, LEO, HW, leader-epoch cache and
//! log durability owned by its broker. See `specs/replication.md`.
//!
//! The protocol follows Apache Kafka as of KIP-966 (ELR) in KRaft mode:
//! * followers fetch from the leader's LEO view, the leader advances its HW to the minimum LEO
//!   of the (maximal) ISR, and the fetch response carries the HW read *before* this fetch moved
//!   it, which is why a follower's HW lags the leader's by one round (the root of KIP-101);
//! * a follower that learns of a new leader epoch truncates with OffsetsForLeaderEpoch as fixed
//!   by KIP-279 before it fetches (KIP-101 used a single lookup, pre-KIP-101 Kafka its own HW);
//! * the leader changes the ISR with AlterPartition (KIP-497), fenced by leader and partition
//!   epochs; fenced brokers leave the ISR, the last member stays (the partition goes offline);
//! * KIP-966: the HW advances only while the ISR has `min.insync.replicas` members, replicas
//!   removed while it is smaller become eligible leaders (ELR), and a broker that restarts
//!   after an unclean shutdown leaves both ISR and ELR.
//!
//! Reassignment (`crate::reassignment`) reuses these types and actions.

use crate::catalog::{Bound, BugFlag, Config, KcheckModel};
use crate::compact::InlineVec;
use crate::property::Property;
use serde::{Deserialize, Serialize};
use stateright::Model;

pub type BrokerId = u8;
pub type LeaderEpoch = u8;
pub type Offset = u8;

/// The most brokers a partition state can name (bit sets are `u8`).
pub const MAX_BROKERS: usize = 4;
/// The longest log a replica can hold (the `records` bound's maximum is below it, and the
/// acks=all purgatory is a `u8` bit set over offsets).
pub const MAX_RECORDS: usize = 8;
/// The most leader epochs a leader-epoch cache can hold (the `epochs` bound's maximum).
pub const MAX_EPOCHS: usize = 8;

/// A set of broker ids (ISR, ELR, replica set) as a bit set.
pub type BrokerSet = crate::compact::IdSet<'b'>;

/// What the controller owns for the partition (KRaft's PartitionRecord / PartitionChangeRecord).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct PartitionState {
    pub replicas: BrokerSet,
    pub leader: Option<BrokerId>,
    pub leader_epoch: LeaderEpoch,
    pub isr: BrokerSet,
    /// Eligible leader replicas (KIP-966): left the ISR while it was below min.insync.replicas
    /// but still hold every record below the HW.
    pub elr: BrokerSet,
}

/// What one broker owns for its replica of the partition.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Replica {
    pub alive: bool,
    /// `log[o]` is the leader epoch that wrote the record at offset `o`: within one epoch a
    /// single leader appends each offset once, so (offset, epoch) names a record.
    pub log: InlineVec<LeaderEpoch, MAX_RECORDS>,
    pub hw: Offset,
    /// The leader-epoch checkpoint: (epoch, start offset) pairs, ascending.
    pub epoch_cache: InlineVec<(LeaderEpoch, Offset), MAX_EPOCHS>,
    /// The leader epoch of the last LeaderAndIsr / partition change this broker applied; 0
    /// after a restart until it applies one (and, as a follower, truncates).
    pub applied_leader_epoch: LeaderEpoch,
    /// Its last shutdown was unclean (KIP-966's BrokerRegistration carries this).
    pub unclean_shutdown: bool,
}

impl Replica {
    pub fn leo(&self) -> Offset {
        self.log.len() as Offset
    }
    /// A fresh replica: alive, empty log (also what reassignment leaves when it deletes a
    /// removed replica's log, as StopReplica with deletePartition does).
    pub fn new() -> Self {
        Replica {
            alive: true,
            log: InlineVec::new(),
            hw: 0,
            epoch_cache: InlineVec::new(),
            applied_leader_epoch: 0,
            unclean_shutdown: false,
        }
    }
    /// Append a record of `epoch`, keeping the leader-epoch cache in step.
    pub fn append(&mut self, epoch: LeaderEpoch) {
        self.assign_epoch(epoch);
        self.log.push(epoch);
    }
    /// Record that `epoch` starts at the LEO (a new leader does this before appending).
    pub fn assign_epoch(&mut self, epoch: LeaderEpoch) {
        if self.epoch_cache.last().is_none_or(|(e, _)| *e < epoch) {
            self.epoch_cache.push((epoch, self.leo()));
        }
    }
    /// Truncate the log to `offset` (Kafka's truncateTo + the epoch cache's truncateFromEnd).
    pub fn truncate_to(&mut self, offset: Offset) {
        if offset < self.leo() {
            self.log.truncate(offset as usize);
        }
        let leo = self.leo();
        self.epoch_cache.retain(|(_, start)| *start < leo);
        self.hw = self.hw.min(leo);
    }
    pub fn latest_epoch(&self) -> Option<LeaderEpoch> {
        self.epoch_cache.last().map(|(e, _)| *e)
    }
    /// The leader's answer to OffsetsForLeaderEpoch(`requested`) (Kafka's `endOffsetFor`): the
    /// largest epoch it has at or below `requested` (or `requested` itself when it has none
    /// that old) and where that epoch ends; `None` is UNDEFINED_EPOCH_OFFSET.
    pub fn offset_for_leader_epoch(&self, requested: LeaderEpoch) -> Option<(LeaderEpoch, Offset)> {
        if self.latest_epoch() == Some(requested) {
            return Some((requested, self.leo()));
        }
        let higher = self.epoch_cache.iter().find(|(e, _)| *e > requested)?;
        let floor = self.epoch_cache.iter().rev().find(|(e, _)| *e <= requested);
        Some((floor.map_or(requested, |(e, _)| *e), higher.1))
    }

    /// The end offset of `epoch` in this replica: the start of the next higher epoch, or the
    /// LEO when `epoch` is the latest.
    fn end_offset_of(&self, epoch: LeaderEpoch) -> Offset {
        self.epoch_cache
            .iter()
            .find(|(e, _)| *e > epoch)
            .map_or(self.leo(), |(_, start)| *start)
    }
}

/// An AlterPartition request in flight from the leader to the controller.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct AlterPartition {
    pub proposed_isr: BrokerSet,
    pub leader_epoch: LeaderEpoch,
    /// Kafka bumps the partition epoch on every partition change and the controller rejects
    /// a request carrying an older one (KIP-497, INVALID_UPDATE_VERSION). Absolute epochs only
    /// grow and would make the state space infinite, so the model keeps what matters: whether
    /// the partition changed since the leader sent the request.
    pub partition_epoch_stale: bool,
    /// A broker it adds restarted after the leader saw its fetch: the broker epoch in the
    /// request is stale (KIP-903), so the controller must reject it.
    pub stale_broker_epoch: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Acks {
    #[serde(rename = "all")]
    All,
    #[serde(rename = "1")]
    One,
}

/// The model's whole state. The `acked`, `pending_acks` and `consumed` fields are history
/// (ghost) variables the invariants read; brokers never see them.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct State {
    pub partition: PartitionState,
    pub replicas: InlineVec<Replica, MAX_BROKERS>,
    /// The leader's view of each follower's LEO (its last fetch offset), reset on election.
    pub follower_leo: [Offset; MAX_BROKERS],
    pub alter_in_flight: Option<AlterPartition>,
    /// Offsets of acks=all produce requests waiting at the leader for the HW (the purgatory).
    pub pending_acks: u8,
    /// Acknowledged records as (offset, epoch): acks=all with the ISR at min.insync.replicas,
    /// and acks=1 ones when the producer relies on them (`acks-1`).
    pub acked: InlineVec<(Offset, LeaderEpoch), MAX_RECORDS>,
    /// What a consumer reading up to the leader's HW has read, by offset.
    pub consumed: InlineVec<LeaderEpoch, MAX_RECORDS>,
    pub produced: u8,
    pub crashes: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// A producer sends one record to the leader.
    Produce {
        acks: Acks,
    },
    /// A follower fetches from its LEO; the leader answers with records and its HW.
    Fetch {
        follower: BrokerId,
    },
    /// A broker applies the new leader epoch as a follower and truncates its log.
    BecomeFollower {
        broker: BrokerId,
    },
    /// The leader asks the controller to drop a lagging follower from the ISR.
    ShrinkIsr {
        follower: BrokerId,
    },
    /// The leader asks the controller to add a caught-up follower to the ISR.
    ExpandIsr {
        follower: BrokerId,
    },
    /// The controller handles the AlterPartition request in flight.
    HandleAlterPartition,
    /// The broker stops with its log fsynced up to `flushed`; the rest is lost. A clean
    /// shutdown flushes everything first. Instead of tracking fsyncs as actions, an unclean
    /// crash picks any flushed prefix (every one is reachable by a flush at the right moment),
    /// which keeps the state small. The controller fences the broker at once (heartbeat
    /// expiry is not modelled separately).
    Crash {
        broker: BrokerId,
        clean: bool,
        flushed: Offset,
    },
    Restart {
        broker: BrokerId,
    },
    /// The controller elects a leader for the offline partition.
    ElectLeader {
        broker: BrokerId,
    },
}

/// The historical bugs this model can switch on (see `BUG_FLAGS` for their sources).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplicationBug {
    TruncateToHw,
    SingleEpochLookup,
    UncleanElection,
    Acks1,
    LastReplicaStanding,
    ElectWithoutIsrReset,
    NoBrokerEpochCheck,
    SingleRoundEpochLookup,
}

impl ReplicationBug {
    pub fn name(self) -> &'static str {
        match self {
            ReplicationBug::TruncateToHw => "truncate-to-hw",
            ReplicationBug::SingleEpochLookup => "single-epoch-lookup",
            ReplicationBug::UncleanElection => "unclean-election",
            ReplicationBug::Acks1 => "acks-1",
            ReplicationBug::LastReplicaStanding => "last-replica-standing",
            ReplicationBug::ElectWithoutIsrReset => "elect-without-isr-reset",
            ReplicationBug::NoBrokerEpochCheck => "no-broker-epoch-check",
            ReplicationBug::SingleRoundEpochLookup => "single-round-epoch-lookup",
        }
    }
    pub const ALL: [ReplicationBug; 8] = [
        ReplicationBug::SingleRoundEpochLookup,
        ReplicationBug::NoBrokerEpochCheck,
        ReplicationBug::TruncateToHw,
        ReplicationBug::SingleEpochLookup,
        ReplicationBug::UncleanElection,
        ReplicationBug::Acks1,
        ReplicationBug::LastReplicaStanding,
        ReplicationBug::ElectWithoutIsrReset,
    ];
}

static BUG_FLAGS: &[BugFlag] = &[
    BugFlag {
        name: "truncate-to-hw",
        meaning: "a follower truncates to its own HW on becoming follower (pre-KIP-101)",
        source: "KIP-101, KAFKA-1211",
        violates: "no-committed-data-loss",
    },
    BugFlag {
        name: "single-epoch-lookup",
        meaning: "OffsetsForLeaderEpoch without KIP-279's largest-epoch-below answer",
        source: "KIP-279, KAFKA-6361",
        violates: "replica-log-consistency",
    },
    BugFlag {
        name: "unclean-election",
        meaning: "unclean.leader.election.enable=true: elect an out-of-sync replica",
        source: "Kafka docs: unclean.leader.election.enable; KIP-106",
        violates: "no-committed-data-loss",
    },
    BugFlag {
        name: "acks-1",
        meaning: "the producer relies on acks=1 acknowledgements",
        source: "Kafka docs: acks; KIP-679 (acks=all default)",
        violates: "no-committed-data-loss",
    },
    BugFlag {
        name: "last-replica-standing",
        meaning: "pre-KIP-966: no ELR, HW advances below min ISR, unclean restarts stay in ISR",
        source: "KIP-966, KAFKA-15332",
        violates: "no-committed-data-loss",
    },
    BugFlag {
        name: "no-broker-epoch-check",
        meaning: "ISR expansion trusts a fetch from a follower's previous incarnation",
        source: "KIP-903, KAFKA-14139",
        violates: "no-committed-data-loss",
    },
    BugFlag {
        name: "single-round-epoch-lookup",
        meaning: "KIP-279 truncation in one round: the follower never asks again",
        source: "mutation of KIP-279 (kcheck's first model had it; release bounds found it)",
        violates: "replica-log-consistency",
    },
    BugFlag {
        name: "elect-without-isr-reset",
        meaning: "mutation (not historical): an ELR or unclean election keeps the old ISR",
        source: "mutation of KIP-966's ELR election rule",
        violates: "leader-in-isr",
    },
];

static BOUNDS: &[Bound] = &[
    Bound {
        name: "brokers",
        meaning: "replicas of the partition (one per broker)",
        default: 3,
        release: 3,
        min: 2,
        max: MAX_BROKERS as u32,
    },
    Bound {
        name: "records",
        meaning: "records the producer sends",
        default: 2,
        release: 3,
        min: 1,
        max: 6,
    },
    Bound {
        name: "epochs",
        meaning: "highest leader epoch (elections + 1)",
        default: 3,
        release: 4,
        min: 1,
        max: 8,
    },
    Bound {
        name: "crashes",
        meaning: "broker crashes (clean or unclean)",
        default: 2,
        release: 3,
        min: 0,
        max: 6,
    },
    Bound {
        name: "min-isr",
        meaning: "min.insync.replicas",
        default: 2,
        release: 2,
        min: 1,
        max: MAX_BROKERS as u32,
    },
];

/// The replication model with its configuration.
#[derive(Clone, Debug)]
pub struct Replication {
    pub brokers: usize,
    pub max_records: u8,
    pub max_epoch: LeaderEpoch,
    pub max_crashes: u8,
    pub min_isr: usize,
    pub bugs: Vec<ReplicationBug>,
}

impl Replication {
    pub fn has(&self, bug: ReplicationBug) -> bool {
        self.bugs.contains(&bug)
    }

    /// The initial state: broker 0 leads epoch 1 with every replica in sync and empty logs.
    pub fn initial_state(&self, replicas: BrokerSet, leader: BrokerId) -> State {
        let mut brokers: InlineVec<Replica, MAX_BROKERS> =
            (0..self.brokers).map(|_| Replica::new()).collect();
        for b in replicas.iter() {
            brokers[b as usize].applied_leader_epoch = 1;
        }
        brokers[leader as usize].assign_epoch(1);
        State {
            partition: PartitionState {
                replicas,
                leader: Some(leader),
                leader_epoch: 1,
                isr: replicas,
                elr: BrokerSet::default(),
            },
            replicas: brokers,
            follower_leo: [0; MAX_BROKERS],
            alter_in_flight: None,
            pending_acks: 0,
            acked: InlineVec::new(),
            consumed: InlineVec::new(),
            produced: 0,
            crashes: 0,
        }
    }

    /// The partition's leader, if it is alive.
    pub fn leader(&self, s: &State) -> Option<BrokerId> {
        s.partition.leader.filter(|l| s.replicas[*l as usize].alive)
    }

    /// The ISR the leader computes its HW over: the committed ISR plus replicas an in-flight
    /// expansion adds (KIP-497's "maximal ISR"; a pending shrink still counts the old members).
    fn maximal_isr(&self, s: &State) -> BrokerSet {
        match s.alter_in_flight {
            Some(a) => s.partition.isr.union(a.proposed_isr),
            None => s.partition.isr,
        }
    }

    fn hw_may_advance(&self, s: &State) -> bool {
        self.has(ReplicationBug::LastReplicaStanding) || s.partition.isr.len() >= self.min_isr
    }

    /// Move the leader's HW to the minimum LEO of the maximal ISR, complete acks=all requests
    /// below it, and let the consumer read up to it.
    fn advance_hw(&self, s: &mut State) {
        let Some(l) = self.leader(s) else { return };
        if !self.hw_may_advance(s) {
            return;
        }
        let leader_leo = s.replicas[l as usize].leo();
        let min_leo = self
            .maximal_isr(s)
            .iter()
            .map(|b| {
                if b == l {
                    leader_leo
                } else {
                    s.follower_leo[b as usize]
                }
            })
            .min()
            .unwrap_or(leader_leo);
        let leader = &mut s.replicas[l as usize];
        if min_leo > leader.hw {
            leader.hw = min_leo;
        }
        let hw = leader.hw;
        let enough = s.partition.isr.len() >= self.min_isr;
        for o in 0..hw {
            if s.pending_acks & (1 << o) != 0 {
                s.pending_acks &= !(1 << o);
                // Below min ISR the request fails with NOT_ENOUGH_REPLICAS_AFTER_APPEND.
                if enough {
                    let epoch = s.replicas[l as usize].log[o as usize];
                    s.acked.push((o, epoch));
                }
            }
        }
        s.acked.sort_unstable();
    }

    /// The consumer reads every record below the leader's HW that it has not read yet.
    fn consume(&self, s: &mut State) {
        let Some(l) = self.leader(s) else { return };
        let leader = &s.replicas[l as usize];
        for o in s.consumed.len()..leader.hw as usize {
            s.consumed.push(leader.log[o]);
        }
    }

    /// Remove `b` from the ISR as the controller does when fencing it or accepting a shrink:
    /// the last member stays (the partition goes offline instead of losing its ISR), and under
    /// KIP-966 a replica removed while the ISR is below min.insync.replicas joins the ELR.
    fn remove_from_isr(&self, p: &mut PartitionState, b: BrokerId) {
        if !p.isr.contains(b) || p.isr.len() == 1 {
            return;
        }
        p.isr = p.isr.without(b);
        if !self.has(ReplicationBug::LastReplicaStanding) && p.isr.len() < self.min_isr {
            p.elr = p.elr.with(b);
        }
    }

    fn set_isr(&self, p: &mut PartitionState, isr: BrokerSet) {
        for b in p.isr.iter().filter(|b| !isr.contains(*b)) {
            self.remove_from_isr(p, b);
        }
        let before = p.isr;
        for b in isr.iter().filter(|b| !before.contains(*b)) {
            p.isr = p.isr.with(b);
            p.elr = p.elr.without(b);
        }
        if p.isr.len() >= self.min_isr {
            p.elr = BrokerSet::default();
        }
    }

    /// OffsetsForLeaderEpoch: the offset a follower truncates to before fetching from `leader`.
    pub fn truncation_offset(&self, follower: &Replica, leader: &Replica) -> Offset {
        let Some(epoch) = follower.latest_epoch() else {
            return 0;
        };
        if self.has(ReplicationBug::SingleEpochLookup) {
            // KIP-101: the leader answers with the start of its first epoch above the
            // follower's, even when it never had the follower's epoch.
            return leader.end_offset_of(epoch).min(follower.leo());
        }
        // KIP-279: each round the follower asks for its latest epoch; the leader answers with
        // the largest epoch it has at or below it and that epoch's end offset. A follower
        // that does not have the answered epoch truncates to the end of its own largest epoch
        // below it and asks again; otherwise it truncates to the smaller end offset and is
        // done. Every round but the last removes an epoch, so this ends within MAX_EPOCHS.
        // (A single round is not enough: kcheck's release bounds found the 17-step
        // divergence where the answered epoch is one the follower never had.)
        let mut f = *follower;
        for _ in 0..=MAX_EPOCHS {
            let Some(epoch) = f.latest_epoch() else {
                return 0;
            };
            let Some((leader_epoch, leader_end)) = leader.offset_for_leader_epoch(epoch) else {
                // UNDEFINED_EPOCH: the leader knows nothing that new; fall back to the HW.
                return f.hw.min(f.leo());
            };
            match f.epoch_cache.iter().rev().find(|(e, _)| *e <= leader_epoch) {
                // The follower tracked no epoch that old: Kafka falls back to the HW.
                None => return f.hw.min(f.leo()),
                Some(&(own_epoch, _))
                    if own_epoch != leader_epoch
                        && !self.has(ReplicationBug::SingleRoundEpochLookup) =>
                {
                    let end = f.end_offset_of(own_epoch);
                    f.truncate_to(end);
                }
                Some(&(own_epoch, _)) => {
                    return f.end_offset_of(own_epoch).min(leader_end).min(f.leo());
                }
            }
        }
        unreachable!("each OffsetsForLeaderEpoch round removes an epoch from the follower")
    }

    /// Make `b` leader in a new leader epoch (also reassignment's leader move and the leader
    /// epoch bump of a partition change that removes replicas).
    pub fn elect(&self, s: &mut State, b: BrokerId) {
        let p = &mut s.partition;
        if !p.isr.contains(b) && !self.has(ReplicationBug::ElectWithoutIsrReset) {
            // An ELR election makes the new leader the ISR; an unclean one also forgets the
            // ELR, whose guarantee no longer holds against the new leader's log.
            p.elr = if p.elr.contains(b) {
                p.elr.without(b)
            } else {
                BrokerSet::default()
            };
            p.isr = BrokerSet::single(b);
        }
        p.leader = Some(b);
        p.leader_epoch += 1;
        let epoch = p.leader_epoch;
        let r = &mut s.replicas[b as usize];
        r.applied_leader_epoch = epoch;
        r.assign_epoch(epoch);
        s.follower_leo = [0; MAX_BROKERS];
        s.alter_in_flight = None;
        s.pending_acks = 0;
        self.advance_hw(s);
    }

    /// Install a new partition state; a change bumps the partition epoch, which fences the
    /// AlterPartition request in flight.
    pub fn change_partition(&self, s: &mut State, p: PartitionState) {
        if p != s.partition {
            if let Some(a) = &mut s.alter_in_flight {
                a.partition_epoch_stale = true;
            }
            s.partition = p;
        }
    }

    fn electable(&self, s: &State) -> BrokerSet {
        let p = &s.partition;
        let alive = |set: BrokerSet| set.filter(|b| s.replicas[b as usize].alive);
        let in_isr = alive(p.isr);
        if !in_isr.is_empty() {
            return in_isr;
        }
        let in_elr = alive(p.elr);
        if !in_elr.is_empty() {
            return in_elr;
        }
        if self.has(ReplicationBug::UncleanElection) {
            return alive(p.replicas);
        }
        BrokerSet::default()
    }

    fn is_follower(&self, s: &State, b: BrokerId) -> bool {
        s.partition.leader != Some(b)
            && s.partition.replicas.contains(b)
            && s.replicas[b as usize].alive
    }

    /// Enumerate the enabled actions (shared with the reassignment model).
    pub fn replication_actions(&self, s: &State, actions: &mut Vec<Action>) {
        let p = &s.partition;
        let n = self.brokers as BrokerId;
        if let Some(l) = self.leader(s) {
            if s.produced < self.max_records && s.replicas[l as usize].leo() < 8 {
                if p.isr.len() >= self.min_isr {
                    actions.push(Action::Produce { acks: Acks::All });
                }
                actions.push(Action::Produce { acks: Acks::One });
            }
            let leader_leo = s.replicas[l as usize].leo();
            for f in 0..n {
                if !self.is_follower(s, f) {
                    continue;
                }
                let r = &s.replicas[f as usize];
                if r.applied_leader_epoch != p.leader_epoch {
                    actions.push(Action::BecomeFollower { broker: f });
                    continue;
                }
                if r.leo() != leader_leo
                    || s.follower_leo[f as usize] != r.leo()
                    || r.hw < s.replicas[l as usize].hw
                {
                    actions.push(Action::Fetch { follower: f });
                }
                if s.alter_in_flight.is_none() {
                    let lagging = s.follower_leo[f as usize] < leader_leo;
                    if p.isr.contains(f) && lagging {
                        actions.push(Action::ShrinkIsr { follower: f });
                    }
                    let caught_up = s.follower_leo[f as usize] >= s.replicas[l as usize].hw
                        && s.replicas[l as usize]
                            .epoch_cache
                            .last()
                            .is_some_and(|(_, start)| s.follower_leo[f as usize] >= *start);
                    if !p.isr.contains(f) && caught_up {
                        actions.push(Action::ExpandIsr { follower: f });
                    }
                }
            }
        } else if p.leader_epoch < self.max_epoch {
            for b in self.electable(s).iter() {
                actions.push(Action::ElectLeader { broker: b });
            }
        }
        if s.alter_in_flight.is_some() {
            actions.push(Action::HandleAlterPartition);
        }
        for b in 0..n {
            let r = &s.replicas[b as usize];
            if r.alive {
                if s.crashes < self.max_crashes {
                    actions.push(Action::Crash {
                        broker: b,
                        clean: true,
                        flushed: r.leo(),
                    });
                    for flushed in 0..=r.leo() {
                        actions.push(Action::Crash {
                            broker: b,
                            clean: false,
                            flushed,
                        });
                    }
                }
            } else {
                actions.push(Action::Restart { broker: b });
            }
        }
    }

    /// Apply an action (shared with the reassignment model). `None`: not applicable.
    pub fn replication_step(&self, s: &State, action: Action) -> Option<State> {
        let mut s = s.clone();
        match action {
            Action::Produce { acks } => {
                let l = self.leader(&s)?;
                let epoch = s.partition.leader_epoch;
                let offset = s.replicas[l as usize].leo();
                s.replicas[l as usize].append(epoch);
                s.produced += 1;
                match acks {
                    Acks::All => s.pending_acks |= 1 << offset,
                    Acks::One if self.has(ReplicationBug::Acks1) => {
                        s.acked.push((offset, epoch));
                        s.acked.sort_unstable();
                    }
                    Acks::One => {}
                }
                self.advance_hw(&mut s);
            }
            Action::Fetch { follower } => {
                let l = self.leader(&s)?;
                let leader = s.replicas[l as usize].clone();
                let f = &mut s.replicas[follower as usize];
                if f.leo() > leader.leo() {
                    // OFFSET_OUT_OF_RANGE: the follower truncates to the leader's LEO.
                    f.truncate_to(leader.leo());
                }
                let fetch_offset = f.leo();
                // The response carries the HW as read before this fetch moves it.
                let response_hw = leader.hw;
                for o in fetch_offset..leader.leo() {
                    f.append(leader.log[o as usize]);
                }
                f.hw = f.hw.max(response_hw.min(f.leo()));
                s.follower_leo[follower as usize] = fetch_offset;
                self.advance_hw(&mut s);
            }
            Action::BecomeFollower { broker } => {
                let l = self.leader(&s)?;
                let offset = if self.has(ReplicationBug::TruncateToHw) {
                    s.replicas[broker as usize].hw
                } else {
                    self.truncation_offset(&s.replicas[broker as usize], &s.replicas[l as usize])
                };
                let r = &mut s.replicas[broker as usize];
                r.truncate_to(offset);
                r.applied_leader_epoch = s.partition.leader_epoch;
            }
            Action::ShrinkIsr { follower } => {
                s.alter_in_flight = Some(AlterPartition {
                    proposed_isr: s.partition.isr.without(follower),
                    leader_epoch: s.partition.leader_epoch,
                    partition_epoch_stale: false,
                    stale_broker_epoch: false,
                });
            }
            Action::ExpandIsr { follower } => {
                s.alter_in_flight = Some(AlterPartition {
                    proposed_isr: s.partition.isr.with(follower),
                    leader_epoch: s.partition.leader_epoch,
                    partition_epoch_stale: false,
                    stale_broker_epoch: false,
                });
            }
            Action::HandleAlterPartition => {
                let a = s.alter_in_flight.take()?;
                let p = &s.partition;
                // FENCED_LEADER_EPOCH / INVALID_UPDATE_VERSION, and KIP-841: no fenced
                // (dead) broker may join the ISR.
                let accepted = a.leader_epoch == p.leader_epoch
                    && !a.partition_epoch_stale
                    && !a.stale_broker_epoch
                    && a.proposed_isr
                        .iter()
                        .all(|b| s.replicas[b as usize].alive || p.isr.contains(b));
                if accepted {
                    let mut p = s.partition.clone();
                    self.set_isr(&mut p, a.proposed_isr);
                    s.partition = p;
                }
                self.advance_hw(&mut s);
            }
            Action::Crash {
                broker,
                clean,
                flushed,
            } => {
                s.crashes += 1;
                let r = &mut s.replicas[broker as usize];
                if !r.alive || flushed > r.leo() || (clean && flushed != r.leo()) {
                    return None;
                }
                r.alive = false;
                r.unclean_shutdown = !clean;
                r.truncate_to(flushed);
                if !self.has(ReplicationBug::NoBrokerEpochCheck) {
                    // The next incarnation registers with a new broker epoch: what the leader
                    // learnt from this one's fetches can no longer get it into the ISR.
                    s.follower_leo[broker as usize] = 0;
                    if let Some(a) = &mut s.alter_in_flight {
                        if a.proposed_isr.contains(broker) && !s.partition.isr.contains(broker) {
                            a.stale_broker_epoch = true;
                        }
                    }
                }
                let mut p = s.partition.clone();
                if p.leader == Some(broker) {
                    p.leader = None;
                    s.alter_in_flight = None;
                    s.pending_acks = 0;
                }
                self.remove_from_isr(&mut p, broker);
                self.change_partition(&mut s, p);
                self.advance_hw(&mut s);
            }
            Action::Restart { broker } => {
                let r = &mut s.replicas[broker as usize];
                r.alive = true;
                r.applied_leader_epoch = 0;
                if r.unclean_shutdown && !self.has(ReplicationBug::LastReplicaStanding) {
                    // KIP-966: a broker that may have lost acknowledged data is no longer
                    // eligible; it must catch up from a leader to rejoin the ISR.
                    let mut p = s.partition.clone();
                    p.isr = p.isr.without(broker);
                    p.elr = p.elr.without(broker);
                    self.change_partition(&mut s, p);
                }
            }
            Action::ElectLeader { broker } => {
                if self.leader(&s).is_some() {
                    return None;
                }
                self.elect(&mut s, broker);
            }
        }
        self.consume(&mut s);
        Some(s)
    }

    fn broker_role(&self, s: &State, b: BrokerId) -> &'static str {
        let r = &s.replicas[b as usize];
        if !r.alive {
            if r.unclean_shutdown {
                "down (unclean)"
            } else {
                "down"
            }
        } else if s.partition.leader == Some(b) {
            "leader"
        } else if !s.partition.replicas.contains(b) {
            "not a replica"
        } else {
            "follower"
        }
    }

    /// Relabel brokers so that equivalent states coincide (symmetry reduction).
    pub fn canonical(&self, s: &State) -> State {
        let n = self.brokers;
        let key = |b: usize| {
            let bb = b as BrokerId;
            (
                s.partition.leader != Some(bb),
                s.replicas[b].clone(),
                s.partition.isr.contains(bb),
                s.partition.elr.contains(bb),
                s.partition.replicas.contains(bb),
                s.follower_leo[b],
                s.alter_in_flight.map(|a| a.proposed_isr.contains(bb)),
            )
        };
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|b| key(*b));
        let mut perm = [0 as BrokerId; MAX_BROKERS];
        for (new, old) in order.iter().enumerate() {
            perm[*old] = new as BrokerId;
        }
        permute(s, &perm[..n])
    }
}

/// Rename every broker `b` in the state to `perm[b]`.
pub fn permute(s: &State, perm: &[BrokerId]) -> State {
    let n = perm.len();
    let mut out = s.clone();
    for old in 0..n {
        out.replicas[perm[old] as usize] = s.replicas[old].clone();
        out.follower_leo[perm[old] as usize] = s.follower_leo[old];
    }
    let p = &mut out.partition;
    p.replicas = s.partition.replicas.permute(perm);
    p.isr = s.partition.isr.permute(perm);
    p.elr = s.partition.elr.permute(perm);
    p.leader = s.partition.leader.map(|l| perm[l as usize]);
    out.alter_in_flight = s.alter_in_flight.map(|a| AlterPartition {
        proposed_isr: a.proposed_isr.permute(perm),
        ..a
    });
    out
}

fn record_name(offset: Offset, epoch: LeaderEpoch) -> String {
    format!("m{offset}@e{epoch}")
}

fn log_text(log: &[LeaderEpoch]) -> String {
    let records: Vec<String> = log
        .iter()
        .enumerate()
        .map(|(o, e)| record_name(o as Offset, *e))
        .collect();
    format!("[{}]", records.join(" "))
}

impl Model for Replication {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![self.initial_state(BrokerSet::all(self.brokers), 0)]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        self.replication_actions(s, actions)
    }

    fn next_state(&self, s: &State, action: Action) -> Option<State> {
        self.replication_step(s, action)
    }
}

// ---- invariants -------------------------------------------------------------------------

/// Every acknowledged record is in the current leader's log at its offset.
pub fn no_committed_data_loss(s: &State) -> bool {
    let Some(l) = s.partition.leader else {
        return true;
    };
    let log = &s.replicas[l as usize].log;
    s.acked.iter().all(|(o, e)| log.get(*o as usize) == Some(e))
}

/// Any two replicas hold the same record at every offset below both of their HWs.
pub fn replica_log_consistency(s: &State) -> bool {
    s.replicas.iter().enumerate().all(|(i, a)| {
        s.replicas[i + 1..]
            .iter()
            .all(|b| logs_agree_below_hw(&a.log, a.hw as usize, &b.log, b.hw as usize))
    })
}

/// The pairwise core of `replica-log-consistency`, over logs of any length (each record named
/// by its leader epoch): two replicas hold the same records below the smaller of their HWs.
/// An HW beyond its own log is a disagreement too. Shared with trace validation
/// (`kcheck conform`), which runs it on the real brokers' logs without the model's bounds.
pub fn logs_agree_below_hw<E: PartialEq>(a: &[E], a_hw: usize, b: &[E], b_hw: usize) -> bool {
    let upto = a_hw.min(b_hw);
    upto <= a.len() && upto <= b.len() && a[..upto] == b[..upto]
}

/// The leader serves, below its HW, exactly what the consumer already read there.
pub fn consumed_records_stable(s: &State) -> bool {
    let Some(l) = s.partition.leader else {
        return true;
    };
    let leader = &s.replicas[l as usize];
    let upto = (leader.hw as usize).min(s.consumed.len());
    leader.log[..upto] == s.consumed[..upto]
}

pub fn leader_in_isr(s: &State) -> bool {
    s.partition
        .leader
        .is_none_or(|l| s.partition.isr.contains(l))
}

pub fn isr_subset_of_replicas(s: &State) -> bool {
    s.partition.isr.is_subset(s.partition.replicas)
}

/// Each replica's HW is at most its LEO and its leader-epoch cache describes its log.
pub fn replica_state_well_formed(s: &State) -> bool {
    s.replicas.iter().all(|r| {
        r.hw <= r.leo()
            && r.log.iter().enumerate().all(|(o, e)| {
                r.epoch_cache
                    .iter()
                    .rev()
                    .find(|(_, start)| *start as usize <= o)
                    .map(|(ce, _)| ce)
                    == Some(e)
            })
    })
}

impl KcheckModel for Replication {
    const NAME: &'static str = "replication";
    const ABOUT: &'static str =
        "one partition's replication: ISR, HW, leader epochs, AlterPartition, ELR, truncation";

    fn bounds() -> &'static [Bound] {
        BOUNDS
    }

    fn bug_flags() -> &'static [BugFlag] {
        BUG_FLAGS
    }

    fn from_config(config: &Config) -> Self {
        let brokers = config.bound("brokers") as usize;
        Replication {
            brokers,
            max_records: config.bound("records") as u8,
            max_epoch: config.bound("epochs") as u8,
            max_crashes: config.bound("crashes") as u8,
            min_isr: (config.bound("min-isr") as usize).min(brokers),
            bugs: config.bugs(&ReplicationBug::ALL, ReplicationBug::name),
        }
    }

    fn named_properties() -> Vec<Property<Self>> {
        vec![
            Property::always(
                "no-committed-data-loss",
                "a record acknowledged with acks=all while the ISR met min.insync.replicas is never lost or replaced",
                |_, s| no_committed_data_loss(s),
            ),
            Property::always(
                "replica-log-consistency",
                "replicas agree on every offset below their HWs",
                |_, s| replica_log_consistency(s),
            ),
            Property::always(
                "consumed-records-stable",
                "a record a consumer read at offset o is never replaced at o",
                |_, s| consumed_records_stable(s),
            ),
            Property::always(
                "leader-in-isr",
                "the partition's leader is a member of its ISR",
                |_, s| leader_in_isr(s),
            ),
            Property::always(
                "isr-subset-of-replicas",
                "every ISR member is an assigned replica",
                |_, s| isr_subset_of_replicas(s),
            ),
            Property::always(
                "replica-state-well-formed",
                "HW <= LEO on every replica and its leader-epoch cache matches its log",
                |_, s| replica_state_well_formed(s),
            ),
            Property::sometimes(
                "committed-record-survives-failover",
                "non-vacuity: a record is acknowledged and a later leader epoch still serves it",
                |_, s: &State| {
                    s.partition.leader_epoch >= 2
                        && s.partition.leader.is_some()
                        && !s.acked.is_empty()
                        && no_committed_data_loss(s)
                },
            ),
        ]
    }

    fn representative(&self, s: &State) -> State {
        self.canonical(s)
    }

    fn describe_action(&self, s: &State, action: &Action) -> String {
        let leader = s
            .partition
            .leader
            .map_or("-".to_string(), |l| format!("b{l}"));
        match *action {
            Action::Produce { acks } => {
                let l = s.partition.leader.unwrap_or(0);
                let o = s.replicas[l as usize].leo();
                let acks = match acks {
                    Acks::All => "all",
                    Acks::One => "1",
                };
                format!(
                    "producer sends {} (acks={acks}) to leader {leader} in leader epoch {}",
                    record_name(o, s.partition.leader_epoch),
                    s.partition.leader_epoch
                )
            }
            Action::Fetch { follower } => format!(
                "b{follower} fetches from leader {leader} at offset {} (leader HW {})",
                s.replicas[follower as usize].leo(),
                s.partition.leader.map_or(0, |l| s.replicas[l as usize].hw)
            ),
            Action::BecomeFollower { broker } => {
                let how = if self.has(ReplicationBug::TruncateToHw) {
                    "truncates to its HW".to_string()
                } else {
                    match s.partition.leader {
                        Some(l) => format!(
                            "truncates to offset {} (OffsetsForLeaderEpoch to b{l})",
                            self.truncation_offset(
                                &s.replicas[broker as usize],
                                &s.replicas[l as usize]
                            )
                        ),
                        None => "truncates".to_string(),
                    }
                };
                format!(
                    "b{broker} becomes follower of {leader} in leader epoch {} and {how}",
                    s.partition.leader_epoch
                )
            }
            Action::ShrinkIsr { follower } => format!(
                "leader {leader} sends AlterPartition to remove lagging b{follower} from ISR {:?}",
                s.partition.isr
            ),
            Action::ExpandIsr { follower } => format!(
                "leader {leader} sends AlterPartition to add caught-up b{follower} to ISR {:?}",
                s.partition.isr
            ),
            Action::HandleAlterPartition => {
                let a = s
                    .alter_in_flight
                    .expect("enabled only with a request in flight");
                let p = &s.partition;
                let verdict = if a.stale_broker_epoch {
                    "rejects it: stale broker epoch (KIP-903)"
                } else if a.leader_epoch != p.leader_epoch {
                    "rejects it: FENCED_LEADER_EPOCH"
                } else if a.partition_epoch_stale {
                    "rejects it: INVALID_UPDATE_VERSION"
                } else {
                    "accepts it"
                };
                format!(
                    "controller handles AlterPartition ISR={:?} and {verdict}",
                    a.proposed_isr
                )
            }
            Action::Crash {
                broker,
                clean: true,
                ..
            } => {
                format!("b{broker} shuts down cleanly and the controller fences it")
            }
            Action::Crash {
                broker,
                clean: false,
                flushed,
            } => {
                let lost = s.replicas[broker as usize].leo().saturating_sub(flushed);
                format!(
                    "b{broker} crashes with its log fsynced to offset {flushed}, losing {lost} \
                     record(s), and the controller fences it"
                )
            }
            Action::Restart { broker } => format!("b{broker} restarts"),
            Action::ElectLeader { broker } => {
                let p = &s.partition;
                let from = if p.isr.contains(broker) {
                    "ISR"
                } else if p.elr.contains(broker) {
                    "ELR"
                } else {
                    "outside ISR and ELR (unclean)"
                };
                format!(
                    "controller elects b{broker} from the {from} as leader for epoch {}",
                    p.leader_epoch + 1
                )
            }
        }
    }

    fn describe_state(&self, s: &State) -> Vec<String> {
        let p = &s.partition;
        let mut lines = vec![format!(
            "controller: leader={} leader-epoch={} ISR={:?} ELR={:?}{}",
            p.leader.map_or("none".to_string(), |l| format!("b{l}")),
            p.leader_epoch,
            p.isr,
            p.elr,
            match s.alter_in_flight {
                None => String::new(),
                Some(a) => format!(
                    " AlterPartition(ISR={:?}) in flight{}",
                    a.proposed_isr,
                    if a.partition_epoch_stale || a.stale_broker_epoch {
                        ", stale"
                    } else {
                        ""
                    }
                ),
            }
        )];
        for (b, r) in s.replicas.iter().enumerate() {
            let epochs: Vec<String> = r
                .epoch_cache
                .iter()
                .map(|(e, o)| format!("e{e}@{o}"))
                .collect();
            lines.push(format!(
                "b{b} {:<14} log={} LEO={} HW={} epochs=[{}]",
                self.broker_role(s, b as BrokerId),
                log_text(&r.log),
                r.leo(),
                r.hw,
                epochs.join(" ")
            ));
        }
        let acked: Vec<String> = s.acked.iter().map(|(o, e)| record_name(*o, *e)).collect();
        lines.push(format!(
            "acknowledged=[{}] consumed={}",
            acked.join(" "),
            log_text(&s.consumed)
        ));
        lines
    }
}
