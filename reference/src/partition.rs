//! Sans-IO partition replica state (Kafka's `Partition`): leader epoch, partition epoch, ISR,
//! per-follower log end offsets (LEO), the high watermark (HW), the acks=all purgatory and
//! the follower's truncation decisions. Inputs are plain values (metadata image registrations,
//! fetch requests and responses, the clock), outputs are plans and requests the IO adapter
//! carries out; nothing here touches a file or a socket.
//!
//! It follows the replication model (`models/src/replication.rs`, `specs/replication.md`)
//! action for action, with Kafka's names:
//! * [`PartitionState::apply_registration`] is the model's election / `BecomeFollower`: a
//!   broker leads or follows whatever the committed `PartitionRecord`s say (KIP-631), never
//!   going back in leader or partition epoch;
//! * [`PartitionState::on_follower_fetch`] is `Fetch` on the leader: KIP-320 fencing by the
//!   current leader epoch, the diverging-epoch check of Fetch v12 (KIP-595's scheme, which
//!   replaced the separate OffsetsForLeaderEpoch round trip of KIP-101/KIP-279), the
//!   follower's LEO and caught-up time, the HW from the maximal ISR (KIP-497) only while the
//!   ISR has `min.insync.replicas` members (KIP-966), and ISR expansion;
//! * [`PartitionState::maybe_shrink_isr`] is `ShrinkIsr` (`replica.lag.time.max.ms`), and
//!   both ISR changes are [`AlterPartitionRequest`]s carrying the partition epoch (KIP-497)
//!   and the followers' broker epochs (KIP-903);
//! * [`truncation_offset`] is the follower's side of KIP-279, one round per diverging-epoch
//!   answer.
//!
//! The model's invariants that one replica can check on its own (`replica-state-well-formed`:
//! HW ≤ LEO; the leader's HW never moves back; `leader-in-isr` on the leader) are asserted
//! after every change, so a bug stops the broker at its cause.

use crate::batch::{self, BatchError, BatchHeader};
use crate::log::EpochCache;
use crate::metadata::{
    BrokerEpoch, BrokerId, LeaderEpoch, PartitionEpoch, PartitionRegistration, NO_LEADER,
};
use kcheck_models::replication::ReplicationBug;
use thiserror::Error;

/// Kafka error codes of the replication protocol.
pub mod code {
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const NOT_ENOUGH_REPLICAS: i16 = 19;
    pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
}

/// Kafka's "no epoch" / "no offset" in requests and responses.
pub const UNDEFINED_EPOCH: i32 = -1;
pub const UNDEFINED_OFFSET: i64 = -1;

/// The replication model's bug flags that are choices of the broker (the data plane); the
/// controller-side ones (`unclean-election`, `elect-without-isr-reset`) belong to the
/// controller and `acks-1` to the producer. Off unless named with `--bug`.
pub const BROKER_BUGS: [ReplicationBug; 4] = [
    ReplicationBug::TruncateToHw,
    ReplicationBug::SingleEpochLookup,
    ReplicationBug::LastReplicaStanding,
    ReplicationBug::NoBrokerEpochCheck,
];

/// The broker-side bug flags switched on (`--bug NAME`, repeatable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerBugs(Vec<ReplicationBug>);

impl BrokerBugs {
    pub fn none() -> Self {
        BrokerBugs(Vec::new())
    }

    pub fn of(bugs: &[ReplicationBug]) -> Self {
        assert!(
            bugs.iter().all(|b| BROKER_BUGS.contains(b)),
            "not a broker-side bug flag: {bugs:?}"
        );
        BrokerBugs(bugs.to_vec())
    }

    /// Parses `--bug` values; an unknown or non-broker name is refused with the known ones.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, String> {
        let known: Vec<&str> = BROKER_BUGS.iter().map(|b| b.name()).collect();
        let mut bugs = Vec::new();
        for name in names {
            let name = name.as_ref();
            match BROKER_BUGS.iter().find(|b| b.name() == name) {
                Some(b) if !bugs.contains(b) => bugs.push(*b),
                Some(_) => {}
                None if ReplicationBug::ALL.iter().any(|b| b.name() == name) => {
                    return Err(format!(
                        "bug flag '{name}' is not a broker choice (it belongs to the controller \
                         or the producer); broker bug flags: {}",
                        known.join(", ")
                    ))
                }
                None => {
                    return Err(format!(
                        "unknown bug flag '{name}' for the broker (known: {})",
                        known.join(", ")
                    ))
                }
            }
        }
        Ok(BrokerBugs(bugs))
    }

    pub fn has(&self, bug: ReplicationBug) -> bool {
        self.0.contains(&bug)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|b| b.name()).collect()
    }
}

/// What a follower replica looks like from the leader (Kafka's `Replica` state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteReplica {
    pub broker_id: BrokerId,
    /// The follower's LEO, learnt from its last fetch offset; -1 until it fetches in this
    /// leader epoch (so it holds the HW back, as the model's reset `follower_leo` does).
    pub log_end_offset: i64,
    /// The broker epoch of the incarnation that sent the last fetch (KIP-903); -1 unknown.
    pub broker_epoch: BrokerEpoch,
    /// Last time the follower had fetched up to the leader's LEO (`replica.lag.time.max.ms`).
    pub last_caught_up_time_ms: u64,
    pub last_fetch_time_ms: u64,
    pub last_fetch_leader_log_end_offset: i64,
}

/// An ISR change the leader asks the controller for (AlterPartition, KIP-497).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlterPartitionRequest {
    pub partition: i32,
    pub leader_id: BrokerId,
    pub leader_epoch: LeaderEpoch,
    /// The partition epoch the leader last saw; the controller answers INVALID_UPDATE_VERSION
    /// if it is not the current one.
    pub partition_epoch: PartitionEpoch,
    /// The proposed ISR with each member's broker epoch (KIP-903); -1 is "not checked".
    pub new_isr_with_epochs: Vec<(BrokerId, BrokerEpoch)>,
}

impl AlterPartitionRequest {
    pub fn new_isr(&self) -> Vec<BrokerId> {
        self.new_isr_with_epochs.iter().map(|&(b, _)| b).collect()
    }
}

/// A produce request waiting in the acks=all purgatory (Kafka's DelayedProduce).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingAck {
    pub id: u64,
    pub last_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub partition: i32,
    pub local_broker: BrokerId,
    pub leader: Option<BrokerId>,
    pub leader_epoch: LeaderEpoch,
    /// -1 until the first registration is applied.
    pub partition_epoch: PartitionEpoch,
    pub replicas: Vec<BrokerId>,
    pub isr: Vec<BrokerId>,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    pub high_watermark: i64,
    pub remotes: Vec<RemoteReplica>,
    /// Leader: the offset where its leader epoch starts (its LEO when it became leader); a
    /// follower rejoins the ISR only once past it.
    pub leader_epoch_start_offset: i64,
    pub min_insync_replicas: usize,
    pub replica_lag_time_max_ms: u64,
    pub alter_in_flight: Option<AlterPartitionRequest>,
    pub pending_acks: Vec<PendingAck>,
    /// Purgatory outbox: (request id, error code) of acks=all requests decided since the
    /// adapter last took them ([`PartitionState::take_completed_acks`]).
    pub completed_acks: Vec<(u64, i16)>,
    pub bugs: BrokerBugs,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProduceError {
    /// Kafka CORRUPT_MESSAGE (2): bad CRC, torn batch or trailing garbage.
    #[error("corrupt record batch: {0}")]
    Corrupt(BatchError),
    /// Kafka INVALID_RECORD (87): structurally fine but not acceptable (e.g. empty).
    #[error("invalid records: {0}")]
    Invalid(&'static str),
    /// Kafka NOT_LEADER_OR_FOLLOWER (6).
    #[error("this broker is not the leader")]
    NotLeader,
    /// Kafka NOT_ENOUGH_REPLICAS (19): acks=all with the ISR below min.insync.replicas.
    #[error("ISR has {isr} members, below min.insync.replicas {min}")]
    NotEnoughReplicas { isr: usize, min: usize },
}

/// Validated, offset-assigned batches ready to be written to the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendPlan {
    pub records: Vec<u8>,
    pub batches: Vec<(usize, BatchHeader)>,
    pub base_offset: i64,
    pub last_offset: i64,
}

/// How far a fetcher may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchBound {
    OutOfRange,
    /// Read batches below this offset (HW for consumers, LEO for followers).
    UpTo(i64),
}

/// What applying a partition registration from the metadata image means for this replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// This broker now leads `leader_epoch`: the adapter records the epoch's start offset in
    /// the log (`PartitionLog::assign_epoch_at_leo`) before the first append, and stops
    /// fetching.
    BecomeLeader { leader_epoch: LeaderEpoch },
    /// This broker follows `leader` in `leader_epoch`: the adapter (re)starts fetching from
    /// it. `truncate_to` is set only under `truncate-to-hw` (pre-KIP-101: truncate to the
    /// own HW right away); the correct protocol truncates only on a diverging-epoch answer.
    BecomeFollower {
        leader: BrokerId,
        leader_epoch: LeaderEpoch,
        truncate_to: Option<i64>,
    },
    /// Same leader and leader epoch; the ISR or the partition epoch changed.
    Updated,
    /// Not newer than what was applied: ignored.
    Stale,
    /// Offline, or this broker is no longer a replica: stop leading and fetching.
    Stopped,
}

/// A fetch from a follower, as the leader sees it (Fetch v12 `replica_state` + partition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerFetch {
    pub replica_id: BrokerId,
    pub broker_epoch: BrokerEpoch,
    /// KIP-320: the leader epoch the follower believes is current (-1: not checked).
    pub current_leader_epoch: LeaderEpoch,
    pub fetch_offset: i64,
    /// Epoch of the last record the follower has (-1: no check, pre-KIP-595 fetchers).
    pub last_fetched_epoch: LeaderEpoch,
}

/// The leader's answer to a follower fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowerFetchOutcome {
    /// Read records from `fetch_offset` up to the LEO. `high_watermark` is the HW read
    /// before this fetch moved it (the one-round lag KIP-101 is about). `alter` is an ISR
    /// expansion to send.
    Read {
        high_watermark: i64,
        alter: Option<AlterPartitionRequest>,
    },
    /// The follower's log diverges: it must truncate (see [`truncation_offset`]). Epoch -1
    /// and offset -1 mean the leader knows nothing that old (UNDEFINED).
    Diverging {
        epoch: LeaderEpoch,
        end_offset: i64,
        high_watermark: i64,
    },
    /// A Kafka error code (KIP-320 fencing, NOT_LEADER_OR_FOLLOWER, OFFSET_OUT_OF_RANGE).
    Error(i16),
}

/// OffsetsForLeaderEpoch as the leader answers it (Kafka's `LeaderEpochFileCache.endOffsetFor`,
/// the model's `offset_for_leader_epoch`): the largest epoch at or below `requested` and the
/// offset where it ends; `None` is UNDEFINED (the leader has no epoch that new or that old).
///
/// Under `single-epoch-lookup` it answers as KIP-101 did before KIP-279: the requested epoch
/// itself with the start of the next higher one, even when this log never had it.
pub fn end_offset_for_epoch(
    epochs: &EpochCache,
    log_end_offset: i64,
    requested: LeaderEpoch,
    bugs: &BrokerBugs,
) -> Option<(LeaderEpoch, i64)> {
    if requested < 0 {
        return None;
    }
    if epochs.latest_epoch() == Some(requested) {
        return Some((requested, log_end_offset));
    }
    if bugs.has(ReplicationBug::SingleEpochLookup) {
        let end = epochs
            .entries
            .iter()
            .find(|&&(e, _)| e > requested)
            .map_or(log_end_offset, |&(_, start)| start);
        return Some((requested, end));
    }
    let &(_, higher_start) = epochs.entries.iter().find(|&&(e, _)| e > requested)?;
    let floor = epochs.entries.iter().rev().find(|&&(e, _)| e <= requested);
    Some((floor.map_or(requested, |&(e, _)| e), higher_start))
}

/// Where a follower truncates when the leader answers a fetch with a diverging epoch (the
/// model's `truncation_offset`, one KIP-279 round): if the follower has the answered epoch it
/// truncates to the smaller of the two end offsets and is done; if not, it truncates to the
/// end of its own largest epoch below the answer, and its next fetch (carrying that epoch as
/// the last fetched one) asks again. UNDEFINED answers, or a follower with no epoch that old,
/// fall back to the HW.
pub fn truncation_offset(
    epochs: &EpochCache,
    log_end_offset: i64,
    high_watermark: i64,
    diverging_epoch: LeaderEpoch,
    diverging_end_offset: i64,
) -> i64 {
    let fallback = high_watermark.min(log_end_offset);
    if diverging_epoch < 0 || diverging_end_offset < 0 {
        return fallback;
    }
    let Some(idx) = epochs
        .entries
        .iter()
        .rposition(|&(e, _)| e <= diverging_epoch)
    else {
        return fallback;
    };
    let (own_epoch, _) = epochs.entries[idx];
    let own_end = epochs
        .entries
        .get(idx + 1)
        .map_or(log_end_offset, |&(_, start)| start);
    if own_epoch == diverging_epoch {
        own_end.min(diverging_end_offset).min(log_end_offset)
    } else {
        own_end.min(log_end_offset)
    }
}

impl PartitionState {
    /// A replica before any registration is applied: not leading, not following.
    pub fn new(partition: i32, broker: BrokerId, log_start: i64, leo: i64, hw: i64) -> Self {
        PartitionState {
            partition,
            local_broker: broker,
            leader: None,
            leader_epoch: -1,
            partition_epoch: -1,
            replicas: Vec::new(),
            isr: Vec::new(),
            log_start_offset: log_start,
            log_end_offset: leo,
            high_watermark: hw.clamp(log_start, leo),
            remotes: Vec::new(),
            leader_epoch_start_offset: leo,
            min_insync_replicas: 1,
            replica_lag_time_max_ms: 30_000,
            alter_in_flight: None,
            pending_acks: Vec::new(),
            completed_acks: Vec::new(),
            bugs: BrokerBugs::none(),
        }
    }

    /// A partition this broker leads alone (single-node cluster, or a fresh leader with no
    /// caught-up followers yet).
    pub fn sole_leader(
        partition: i32,
        broker: i32,
        leader_epoch: i32,
        log_start: i64,
        leo: i64,
    ) -> Self {
        let mut p = PartitionState::new(partition, broker, log_start, leo, leo);
        p.leader = Some(broker);
        p.leader_epoch = leader_epoch;
        p.replicas = vec![broker];
        p.isr = vec![broker];
        p
    }

    pub fn is_leader(&self) -> bool {
        self.leader == Some(self.local_broker)
    }

    /// The leader this replica fetches from, if it is a follower.
    pub fn following(&self) -> Option<BrokerId> {
        self.leader
            .filter(|&l| l != self.local_broker && self.replicas.contains(&self.local_broker))
    }

    /// Applies the partition's registration from a newer metadata image. Leader and
    /// partition epochs never go back (an older registration is [`Transition::Stale`]).
    pub fn apply_registration(&mut self, reg: &PartitionRegistration, now_ms: u64) -> Transition {
        let newer_leader_epoch = reg.leader_epoch > self.leader_epoch;
        if reg.leader_epoch < self.leader_epoch
            || (!newer_leader_epoch && reg.partition_epoch <= self.partition_epoch)
        {
            return Transition::Stale;
        }
        let was_leader = self.is_leader();
        self.replicas = reg.replicas.clone();
        self.isr = reg.isr.clone();
        self.partition_epoch = reg.partition_epoch;
        self.leader_epoch = reg.leader_epoch;
        self.leader = (reg.leader != NO_LEADER).then_some(reg.leader);
        // Whatever was in flight was either applied (this is its result) or is now stale.
        self.alter_in_flight = None;
        let transition = if !reg.replicas.contains(&self.local_broker) || self.leader.is_none() {
            Transition::Stopped
        } else if self.is_leader() {
            if newer_leader_epoch || !was_leader {
                self.become_leader(now_ms);
                Transition::BecomeLeader {
                    leader_epoch: self.leader_epoch,
                }
            } else {
                // Replicas removed by a reassignment stop counting; new ones are tracked.
                self.remotes.retain(|r| reg.replicas.contains(&r.broker_id));
                for &b in &reg.replicas {
                    if b != self.local_broker && !self.remotes.iter().any(|r| r.broker_id == b) {
                        self.remotes.push(fresh_remote(b, now_ms));
                    }
                }
                self.maybe_advance_hw();
                Transition::Updated
            }
        } else if newer_leader_epoch || was_leader {
            let truncate_to = self
                .bugs
                .has(ReplicationBug::TruncateToHw)
                .then_some(self.high_watermark);
            Transition::BecomeFollower {
                leader: reg.leader,
                leader_epoch: reg.leader_epoch,
                truncate_to,
            }
        } else {
            Transition::Updated
        };
        if !self.is_leader() {
            self.remotes.clear();
            for p in std::mem::take(&mut self.pending_acks) {
                // The acks=all requests of a lost leadership fail; the producer retries.
                self.completed_acks
                    .push((p.id, code::NOT_LEADER_OR_FOLLOWER));
            }
        }
        self.check_invariants();
        transition
    }

    /// Kafka's `makeLeader`: every follower's state restarts unknown (its LEO -1 holds the
    /// HW until it fetches in this epoch), caught up as of now so none is shrunk at once.
    fn become_leader(&mut self, now_ms: u64) {
        self.leader_epoch_start_offset = self.log_end_offset;
        self.remotes = self
            .replicas
            .iter()
            .filter(|&&b| b != self.local_broker)
            .map(|&b| fresh_remote(b, now_ms))
            .collect();
        self.maybe_advance_hw();
    }

    /// KIP-320: a request naming a leader epoch older than ours is FENCED_LEADER_EPOCH (the
    /// sender missed an election), a newer one UNKNOWN_LEADER_EPOCH (we have not applied it
    /// yet, the sender retries); -1 skips the check (old clients).
    pub fn check_leader_epoch(&self, current_leader_epoch: LeaderEpoch) -> Result<(), i16> {
        if current_leader_epoch < 0 || current_leader_epoch == self.leader_epoch {
            Ok(())
        } else if current_leader_epoch < self.leader_epoch {
            Err(code::FENCED_LEADER_EPOCH)
        } else {
            Err(code::UNKNOWN_LEADER_EPOCH)
        }
    }

    /// A request only the leader serves (Produce, consumer Fetch, follower Fetch).
    pub fn check_leader_request(&self, current_leader_epoch: LeaderEpoch) -> Result<(), i16> {
        self.check_leader_epoch(current_leader_epoch)?;
        if self.is_leader() {
            Ok(())
        } else {
            Err(code::NOT_LEADER_OR_FOLLOWER)
        }
    }

    /// acks=all is refused up front while the ISR is below min.insync.replicas
    /// (NOT_ENOUGH_REPLICAS): the record could be acknowledged without the redundancy the
    /// producer asked for.
    pub fn check_produce(&self, acks: i16) -> Result<(), ProduceError> {
        if !self.is_leader() {
            return Err(ProduceError::NotLeader);
        }
        if acks == -1 && self.isr.len() < self.min_insync_replicas {
            return Err(ProduceError::NotEnoughReplicas {
                isr: self.isr.len(),
                min: self.min_insync_replicas,
            });
        }
        Ok(())
    }

    /// Validates a produce request's records (every batch v2 with a good CRC, nothing
    /// trailing) and assigns offsets from the LEO by rewriting each batch's base offset and
    /// stamping the leader epoch. The records themselves are untouched.
    pub fn prepare_append(&self, mut records: Vec<u8>) -> Result<AppendPlan, ProduceError> {
        if !self.is_leader() {
            return Err(ProduceError::NotLeader);
        }
        let scan = batch::scan(&records);
        if let Some(e) = scan.stopped {
            return Err(ProduceError::Corrupt(e));
        }
        if scan.batches.is_empty() {
            return Err(ProduceError::Invalid("no record batches"));
        }
        let mut next = self.log_end_offset;
        let mut batches = Vec::with_capacity(scan.batches.len());
        for (pos, mut h) in scan.batches {
            batch::assign(&mut records[pos..pos + h.size], next, self.leader_epoch);
            h.base_offset = next;
            h.partition_leader_epoch = self.leader_epoch;
            next = h.last_offset() + 1;
            batches.push((pos, h));
        }
        Ok(AppendPlan {
            records,
            batches,
            base_offset: self.log_end_offset,
            last_offset: next - 1,
        })
    }

    /// The log accepted the plan: advance the LEO, and the HW if the ISR allows.
    pub fn on_local_append(&mut self, plan: &AppendPlan) {
        self.log_end_offset = plan.last_offset + 1;
        self.maybe_advance_hw();
        self.check_invariants();
    }

    /// Puts an appended acks=all request in the purgatory until the HW passes `last_offset`.
    /// It may complete at once (e.g. a sole-replica ISR).
    pub fn await_acks_all(&mut self, id: u64, last_offset: i64) {
        self.pending_acks.push(PendingAck { id, last_offset });
        self.complete_acks();
    }

    /// Takes the acks=all requests decided since the last call: NONE, or
    /// NOT_ENOUGH_REPLICAS_AFTER_APPEND when the HW passed them while the ISR was below
    /// min.insync.replicas (only possible under `last-replica-standing`), or
    /// NOT_LEADER_OR_FOLLOWER when leadership was lost.
    pub fn take_completed_acks(&mut self) -> Vec<(u64, i16)> {
        std::mem::take(&mut self.completed_acks)
    }

    fn complete_acks(&mut self) {
        let hw = self.high_watermark;
        let enough = self.isr.len() >= self.min_insync_replicas;
        let (done, waiting): (Vec<PendingAck>, Vec<PendingAck>) =
            std::mem::take(&mut self.pending_acks)
                .into_iter()
                .partition(|p| p.last_offset < hw);
        self.pending_acks = waiting;
        for p in done {
            let c = if enough {
                code::NONE
            } else {
                code::NOT_ENOUGH_REPLICAS_AFTER_APPEND
            };
            self.completed_acks.push((p.id, c));
        }
    }

    /// acks=all is satisfied once every ISR member has the batch, i.e. the HW passed it.
    pub fn acks_all_satisfied(&self, last_offset: i64) -> bool {
        self.high_watermark > last_offset
    }

    /// The leader handles a follower's fetch (Kafka's `Partition.fetchRecords` +
    /// `updateFollowerFetchState`). `epochs` and the LEO describe the leader's log.
    pub fn on_follower_fetch(
        &mut self,
        fetch: &FollowerFetch,
        epochs: &EpochCache,
        now_ms: u64,
    ) -> FollowerFetchOutcome {
        if let Err(c) = self.check_leader_request(fetch.current_leader_epoch) {
            return FollowerFetchOutcome::Error(c);
        }
        if !self.replicas.contains(&fetch.replica_id) || fetch.replica_id == self.local_broker {
            return FollowerFetchOutcome::Error(code::NOT_LEADER_OR_FOLLOWER);
        }
        let hw_before = self.high_watermark;
        if fetch.last_fetched_epoch >= 0 {
            // Fetch v12: the leader checks the follower's last fetched epoch itself.
            match end_offset_for_epoch(
                epochs,
                self.log_end_offset,
                fetch.last_fetched_epoch,
                &self.bugs,
            ) {
                None => {
                    return FollowerFetchOutcome::Diverging {
                        epoch: UNDEFINED_EPOCH,
                        end_offset: UNDEFINED_OFFSET,
                        high_watermark: hw_before,
                    }
                }
                Some((epoch, end_offset))
                    if epoch < fetch.last_fetched_epoch || end_offset < fetch.fetch_offset =>
                {
                    return FollowerFetchOutcome::Diverging {
                        epoch,
                        end_offset,
                        high_watermark: hw_before,
                    }
                }
                Some(_) => {}
            }
        }
        if fetch.fetch_offset < self.log_start_offset || fetch.fetch_offset > self.log_end_offset {
            return FollowerFetchOutcome::Error(code::OFFSET_OUT_OF_RANGE);
        }
        let leo = self.log_end_offset;
        let check_broker_epoch = !self.bugs.has(ReplicationBug::NoBrokerEpochCheck);
        let remote = match self
            .remotes
            .iter_mut()
            .find(|r| r.broker_id == fetch.replica_id)
        {
            Some(r) => r,
            None => {
                self.remotes.push(fresh_remote(fetch.replica_id, now_ms));
                self.remotes.last_mut().expect("just pushed")
            }
        };
        if check_broker_epoch && remote.broker_epoch != fetch.broker_epoch {
            // A new incarnation (KIP-903): nothing learnt from the old one counts.
            remote.last_caught_up_time_ms = 0;
        }
        remote.broker_epoch = fetch.broker_epoch;
        if fetch.fetch_offset >= leo {
            remote.last_caught_up_time_ms = now_ms;
        } else if fetch.fetch_offset >= remote.last_fetch_leader_log_end_offset
            && remote.last_fetch_leader_log_end_offset >= 0
        {
            remote.last_caught_up_time_ms = remote.last_fetch_time_ms;
        }
        remote.log_end_offset = fetch.fetch_offset;
        remote.last_fetch_time_ms = now_ms;
        remote.last_fetch_leader_log_end_offset = leo;
        let alter = self.maybe_expand_isr(fetch.replica_id);
        self.maybe_advance_hw();
        self.check_invariants();
        FollowerFetchOutcome::Read {
            high_watermark: hw_before,
            alter,
        }
    }

    /// ISR expansion (the model's `ExpandIsr`): a follower outside the ISR whose LEO reached
    /// the HW and the start of the leader's current epoch is proposed back in.
    fn maybe_expand_isr(&mut self, follower: BrokerId) -> Option<AlterPartitionRequest> {
        if self.alter_in_flight.is_some() || self.isr.contains(&follower) {
            return None;
        }
        let r = self.remotes.iter().find(|r| r.broker_id == follower)?;
        if r.log_end_offset < self.high_watermark
            || r.log_end_offset < self.leader_epoch_start_offset
        {
            return None;
        }
        let mut isr = self.isr.clone();
        isr.push(follower);
        Some(self.propose_isr(isr))
    }

    /// ISR shrink (the model's `ShrinkIsr`): followers that have not caught up with the
    /// leader's LEO within `replica.lag.time.max.ms` are proposed out. The leader stays.
    pub fn maybe_shrink_isr(&mut self, now_ms: u64) -> Option<AlterPartitionRequest> {
        if !self.is_leader() || self.alter_in_flight.is_some() {
            return None;
        }
        let lag_max = self.replica_lag_time_max_ms;
        let leo = self.log_end_offset;
        let out: Vec<BrokerId> = self
            .remotes
            .iter()
            .filter(|r| self.isr.contains(&r.broker_id))
            .filter(|r| {
                r.log_end_offset < leo && now_ms.saturating_sub(r.last_caught_up_time_ms) > lag_max
            })
            .map(|r| r.broker_id)
            .collect();
        if out.is_empty() {
            return None;
        }
        let isr = self
            .isr
            .iter()
            .copied()
            .filter(|b| !out.contains(b))
            .collect();
        Some(self.propose_isr(isr))
    }

    /// The request names each member with the broker epoch of the incarnation whose fetch the
    /// leader counted, also with `no-broker-epoch-check`: the flag's controller half is what
    /// ignores them (KAFKA-14139's controller could not check them), and the controller's
    /// `controller.alter_partition` trace event needs them to show *which* incarnation it let
    /// into the ISR, so that `kcheck conform` can attribute the acceptance.
    fn propose_isr(&mut self, isr: Vec<BrokerId>) -> AlterPartitionRequest {
        let new_isr_with_epochs = isr
            .iter()
            .map(|&b| {
                let epoch = self
                    .remotes
                    .iter()
                    .find(|r| r.broker_id == b)
                    .map_or(-1, |r| r.broker_epoch);
                (b, epoch)
            })
            .collect();
        let req = AlterPartitionRequest {
            partition: self.partition,
            leader_id: self.local_broker,
            leader_epoch: self.leader_epoch,
            partition_epoch: self.partition_epoch,
            new_isr_with_epochs,
        };
        self.alter_in_flight = Some(req.clone());
        req
    }

    /// The controller answered the AlterPartition in flight: with the partition's new
    /// registration, or an error (FENCED_LEADER_EPOCH, INVALID_UPDATE_VERSION, a stale broker
    /// epoch...), after which the leader waits for the metadata image to tell it more.
    pub fn on_alter_partition_response(
        &mut self,
        result: Result<&PartitionRegistration, i16>,
        now_ms: u64,
    ) -> Transition {
        match result {
            Ok(reg) => {
                let t = self.apply_registration(reg, now_ms);
                self.alter_in_flight = None;
                t
            }
            Err(_) => {
                self.alter_in_flight = None;
                Transition::Stale
            }
        }
    }

    fn replica_leo(&self, id: BrokerId) -> Option<i64> {
        if id == self.local_broker {
            return Some(self.log_end_offset);
        }
        self.remotes
            .iter()
            .find(|r| r.broker_id == id)
            .map(|r| r.log_end_offset)
    }

    /// KIP-497's maximal ISR: the committed ISR plus members a pending expansion adds (a
    /// pending shrink still counts the old members).
    pub fn maximal_isr(&self) -> Vec<BrokerId> {
        let mut isr = self.isr.clone();
        if let Some(a) = &self.alter_in_flight {
            for b in a.new_isr() {
                if !isr.contains(&b) {
                    isr.push(b);
                }
            }
        }
        isr
    }

    /// HW = min LEO over the maximal ISR, only while the ISR has min.insync.replicas members
    /// (KIP-966; `last-replica-standing` drops that condition); it never moves backwards.
    fn maybe_advance_hw(&mut self) -> bool {
        if !self.is_leader() {
            return false;
        }
        let may_advance = self.bugs.has(ReplicationBug::LastReplicaStanding)
            || self.isr.len() >= self.min_insync_replicas;
        let mut advanced = false;
        if may_advance {
            let min = self
                .maximal_isr()
                .iter()
                .map(|&id| self.replica_leo(id).unwrap_or(-1))
                .min();
            if let Some(m) = min.filter(|&m| m > self.high_watermark) {
                self.high_watermark = m;
                advanced = true;
            }
        }
        self.complete_acks();
        advanced
    }

    /// Follower: where the next fetch starts and the epoch of the last record before it
    /// (-1 under `truncate-to-hw`: pre-KIP-101 fetchers sent no epoch, so the leader cannot
    /// detect a divergence).
    pub fn fetch_position(&self, epochs: &EpochCache) -> (i64, LeaderEpoch) {
        let epoch = if self.bugs.has(ReplicationBug::TruncateToHw) {
            UNDEFINED_EPOCH
        } else {
            epochs.latest_epoch().unwrap_or(UNDEFINED_EPOCH)
        };
        (self.log_end_offset, epoch)
    }

    /// Follower: the log now ends at `log_end_offset` after appending fetched records; the
    /// response carried the leader's `leader_high_watermark`.
    pub fn on_follower_append(&mut self, log_end_offset: i64, leader_high_watermark: i64) {
        self.log_end_offset = log_end_offset;
        self.high_watermark = self
            .high_watermark
            .max(leader_high_watermark.min(log_end_offset));
        self.check_invariants();
    }

    /// Follower: the log was truncated and now ends at `log_end_offset`.
    pub fn on_truncated(&mut self, log_end_offset: i64) {
        assert!(
            !self.is_leader(),
            "a leader never truncates its log (partition {})",
            self.partition
        );
        self.log_end_offset = log_end_offset;
        self.high_watermark = self.high_watermark.min(log_end_offset);
        self.check_invariants();
    }

    /// Consumers read up to the HW, followers up to the LEO; offsets outside
    /// [log start, LEO] are OFFSET_OUT_OF_RANGE.
    pub fn fetch_bound(&self, offset: i64, from_follower: bool) -> FetchBound {
        if offset < self.log_start_offset || offset > self.log_end_offset {
            return FetchBound::OutOfRange;
        }
        FetchBound::UpTo(if from_follower {
            self.log_end_offset
        } else {
            self.high_watermark
        })
    }

    /// The model's invariants one replica can check alone (see the module doc).
    fn check_invariants(&self) {
        assert!(
            self.log_start_offset <= self.high_watermark
                && self.high_watermark <= self.log_end_offset,
            "replica-state-well-formed: partition {} has log start {} HW {} LEO {}",
            self.partition,
            self.log_start_offset,
            self.high_watermark,
            self.log_end_offset
        );
        if self.is_leader() {
            assert!(
                self.isr.contains(&self.local_broker),
                "leader-in-isr: partition {} led by {} with ISR {:?}",
                self.partition,
                self.local_broker,
                self.isr
            );
        }
    }
}

fn fresh_remote(broker_id: BrokerId, now_ms: u64) -> RemoteReplica {
    RemoteReplica {
        broker_id,
        log_end_offset: -1,
        broker_epoch: -1,
        last_caught_up_time_ms: now_ms,
        last_fetch_time_ms: 0,
        last_fetch_leader_log_end_offset: -1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::build;
    use proptest::prelude::*;

    #[test]
    fn offsets_assigned_from_leo_and_epoch_stamped() {
        let mut p = PartitionState::sole_leader(0, 1, 4, 0, 10);
        let mut recs = build(99, 3, 5, 0);
        recs.extend(build(7, 2, 5, 0));
        let plan = p.prepare_append(recs).unwrap();
        assert_eq!((plan.base_offset, plan.last_offset), (10, 14));
        let s = batch::scan(&plan.records);
        assert!(
            s.stopped.is_none(),
            "CRC still valid after rewriting base offsets"
        );
        let got: Vec<_> = s
            .batches
            .iter()
            .map(|(_, h)| (h.base_offset, h.partition_leader_epoch))
            .collect();
        assert_eq!(got, vec![(10, 4), (13, 4)]);
        p.on_local_append(&plan);
        assert_eq!((p.log_end_offset, p.high_watermark), (15, 15));
        assert!(p.acks_all_satisfied(14));
    }

    #[test]
    fn corrupt_and_empty_are_rejected() {
        let p = PartitionState::sole_leader(0, 1, 0, 0, 0);
        let mut b = build(0, 1, 5, 0);
        let n = b.len();
        b[n - 1] ^= 0x55;
        assert!(matches!(
            p.prepare_append(b),
            Err(ProduceError::Corrupt(BatchError::BadCrc { .. }))
        ));
        assert!(matches!(
            p.prepare_append(vec![]),
            Err(ProduceError::Invalid(_))
        ));
        let mut trailing = build(0, 1, 5, 0);
        trailing.extend_from_slice(&[0, 0, 0]);
        assert!(matches!(
            p.prepare_append(trailing),
            Err(ProduceError::Corrupt(_))
        ));
    }

    #[test]
    fn fetch_bounds() {
        let p = PartitionState::sole_leader(0, 1, 0, 5, 20);
        assert_eq!(p.fetch_bound(4, false), FetchBound::OutOfRange);
        assert_eq!(p.fetch_bound(21, false), FetchBound::OutOfRange);
        assert_eq!(p.fetch_bound(20, false), FetchBound::UpTo(20));
    }

    fn reg(leader: i32, isr: &[i32], le: i32, pe: i32) -> PartitionRegistration {
        PartitionRegistration {
            replicas: vec![0, 1, 2],
            isr: isr.to_vec(),
            elr: vec![],
            adding_replicas: vec![],
            removing_replicas: vec![],
            leader,
            leader_epoch: le,
            partition_epoch: pe,
        }
    }

    fn cache(entries: &[(i32, i64)]) -> EpochCache {
        EpochCache {
            entries: entries.to_vec(),
        }
    }

    /// A leader of epoch 1 over brokers {0,1,2} with min.insync.replicas 2 and `n` records.
    fn leader_with(n: i32) -> PartitionState {
        let mut p = PartitionState::new(0, 0, 0, 0, 0);
        p.min_insync_replicas = 2;
        assert_eq!(
            p.apply_registration(&reg(0, &[0, 1, 2], 1, 0), 0),
            Transition::BecomeLeader { leader_epoch: 1 }
        );
        if n > 0 {
            let plan = p.prepare_append(build(0, n, 1, 0)).unwrap();
            p.on_local_append(&plan);
        }
        p
    }

    #[test]
    fn registrations_make_leaders_and_followers_and_never_go_back() {
        let mut p = PartitionState::new(0, 1, 0, 0, 0);
        let t = p.apply_registration(&reg(0, &[0, 1, 2], 1, 0), 0);
        assert_eq!(
            t,
            Transition::BecomeFollower {
                leader: 0,
                leader_epoch: 1,
                truncate_to: None
            }
        );
        assert_eq!(p.following(), Some(0));
        assert_eq!(
            p.apply_registration(&reg(0, &[0, 1], 1, 1), 0),
            Transition::Updated
        );
        assert_eq!(p.isr, vec![0, 1]);
        // Older partition epoch, older leader epoch: ignored.
        assert_eq!(
            p.apply_registration(&reg(0, &[0, 1, 2], 1, 0), 0),
            Transition::Stale
        );
        assert_eq!(
            p.apply_registration(&reg(2, &[2], 0, 5), 0),
            Transition::Stale
        );
        assert_eq!(
            p.apply_registration(&reg(1, &[1], 2, 2), 0),
            Transition::BecomeLeader { leader_epoch: 2 }
        );
        assert_eq!(
            p.apply_registration(&reg(-1, &[1], 3, 3), 0),
            Transition::Stopped
        );
        assert!(!p.is_leader() && p.following().is_none());
    }

    #[test]
    fn kip_320_fencing_by_current_leader_epoch() {
        let p = leader_with(0);
        assert_eq!(p.check_leader_request(1), Ok(()));
        assert_eq!(p.check_leader_request(-1), Ok(()));
        assert_eq!(p.check_leader_request(0), Err(code::FENCED_LEADER_EPOCH));
        assert_eq!(p.check_leader_request(2), Err(code::UNKNOWN_LEADER_EPOCH));
        let mut f = PartitionState::new(0, 1, 0, 0, 0);
        f.apply_registration(&reg(0, &[0, 1, 2], 1, 0), 0);
        assert_eq!(f.check_leader_request(1), Err(code::NOT_LEADER_OR_FOLLOWER));
        let mut leader = leader_with(0);
        let fetch = FollowerFetch {
            current_leader_epoch: 0,
            ..follower_fetch(1, 0)
        };
        assert_eq!(
            leader.on_follower_fetch(&fetch, &cache(&[(1, 0)]), 0),
            FollowerFetchOutcome::Error(code::FENCED_LEADER_EPOCH)
        );
    }

    #[test]
    fn hw_waits_for_the_isr_and_stops_below_min_isr() {
        let mut p = leader_with(2);
        let epochs = cache(&[(1, 0)]);
        p.await_acks_all(7, 1);
        // Followers start unknown: the HW stays until both fetch in this epoch.
        p.on_follower_fetch(&follower_fetch(1, 2), &epochs, 0);
        assert_eq!(p.high_watermark, 0);
        let out = p.on_follower_fetch(&follower_fetch(2, 2), &epochs, 0);
        // The response carries the HW read before this fetch moved it.
        assert_eq!(
            out,
            FollowerFetchOutcome::Read {
                high_watermark: 0,
                alter: None
            }
        );
        assert_eq!(p.high_watermark, 2);
        assert_eq!(p.take_completed_acks(), vec![(7, code::NONE)]);
        // The ISR shrinks to the leader alone: acks=all is refused, the HW freezes.
        p.apply_registration(&reg(0, &[0], 1, 1), 0);
        assert!(matches!(
            p.check_produce(-1),
            Err(ProduceError::NotEnoughReplicas { isr: 1, min: 2 })
        ));
        assert_eq!(p.check_produce(1), Ok(()));
        let plan = p.prepare_append(build(0, 1, 1, 0)).unwrap();
        p.on_local_append(&plan);
        p.await_acks_all(8, plan.last_offset);
        assert_eq!(p.high_watermark, 2, "KIP-966: no HW progress below min ISR");
        assert!(p.take_completed_acks().is_empty());
    }

    #[test]
    fn last_replica_standing_advances_the_hw_below_min_isr() {
        let mut p = leader_with(0);
        p.bugs = BrokerBugs::of(&[ReplicationBug::LastReplicaStanding]);
        p.apply_registration(&reg(0, &[0], 1, 1), 0);
        let plan = p.prepare_append(build(0, 1, 1, 0)).unwrap();
        p.on_local_append(&plan);
        p.await_acks_all(1, plan.last_offset);
        assert_eq!(p.high_watermark, 1);
        assert_eq!(
            p.take_completed_acks(),
            vec![(1, code::NOT_ENOUGH_REPLICAS_AFTER_APPEND)]
        );
    }

    #[test]
    fn isr_expands_from_fetches_and_shrinks_on_lag() {
        let mut p = leader_with(0);
        let epochs = cache(&[(1, 0)]);
        p.apply_registration(&reg(0, &[0, 1], 1, 1), 0);
        let plan = p.prepare_append(build(0, 3, 1, 0)).unwrap();
        p.on_local_append(&plan);
        // Broker 2 behind the HW (0 < ... no: HW is 0, so it is not behind): caught up enough.
        let out = p.on_follower_fetch(&follower_fetch(2, 0), &epochs, 10);
        let FollowerFetchOutcome::Read { alter: Some(a), .. } = out else {
            panic!("{out:?}")
        };
        assert_eq!(
            (a.new_isr(), a.leader_epoch, a.partition_epoch),
            (vec![0, 1, 2], 1, 1)
        );
        assert_eq!(a.new_isr_with_epochs[2], (2, 1), "KIP-903 broker epoch");
        // One request at a time.
        assert!(p.maybe_shrink_isr(100_000).is_none());
        assert_eq!(p.maximal_isr(), vec![0, 1, 2]);
        p.on_alter_partition_response(Err(crate::broker::code::NOT_LEADER_OR_FOLLOWER), 10);
        // Broker 1 never fetched: after replica.lag.time.max.ms it is proposed out.
        p.replica_lag_time_max_ms = 1000;
        assert!(p.maybe_shrink_isr(500).is_none());
        let a = p.maybe_shrink_isr(1001).unwrap();
        assert_eq!(a.new_isr(), vec![0]);
        p.on_alter_partition_response(Ok(&reg(0, &[0], 1, 2)), 1001);
        assert_eq!((p.isr.clone(), p.partition_epoch), (vec![0], 2));
    }

    #[test]
    fn the_proposal_names_the_fetching_incarnation_with_or_without_the_flag() {
        for bugs in [vec![], vec![ReplicationBug::NoBrokerEpochCheck]] {
            let mut p = leader_with(0);
            p.bugs = BrokerBugs::of(&bugs);
            p.apply_registration(&reg(0, &[0, 1], 1, 1), 0);
            let out = p.on_follower_fetch(&follower_fetch(2, 0), &cache(&[(1, 0)]), 0);
            let FollowerFetchOutcome::Read { alter: Some(a), .. } = out else {
                panic!("{out:?}")
            };
            // b2's fetch carried broker epoch 1; b1 never fetched in this leader epoch.
            assert_eq!(a.new_isr_with_epochs, vec![(0, -1), (1, -1), (2, 1)]);
        }
    }

    #[test]
    fn end_offset_for_epoch_follows_kip_279() {
        let none = BrokerBugs::none();
        let c = cache(&[(1, 0), (3, 4), (5, 7)]);
        assert_eq!(end_offset_for_epoch(&c, 9, 5, &none), Some((5, 9)));
        assert_eq!(end_offset_for_epoch(&c, 9, 3, &none), Some((3, 7)));
        // The leader never had epoch 2: the largest below it (1) and where it ends.
        assert_eq!(end_offset_for_epoch(&c, 9, 2, &none), Some((1, 4)));
        assert_eq!(end_offset_for_epoch(&c, 9, 0, &none), Some((0, 0)));
        assert_eq!(end_offset_for_epoch(&c, 9, 6, &none), None);
        // KIP-101's answer claims epoch 2 and says it ends where epoch 3 starts.
        let bug = BrokerBugs::of(&[ReplicationBug::SingleEpochLookup]);
        assert_eq!(end_offset_for_epoch(&c, 9, 2, &bug), Some((2, 4)));
    }

    #[test]
    fn truncation_offset_is_one_kip_279_round() {
        // Follower: m0@e1 m1@e3 (epochs e1@0 e3@1), HW 0; leader answers "epoch 2 ends at 1":
        // the follower never had epoch 2, so it truncates to the end of epoch 1 and asks again.
        let f = cache(&[(1, 0), (3, 1)]);
        assert_eq!(truncation_offset(&f, 2, 0, 2, 1), 1);
        // Second round: "epoch 1 ends at 0" -> truncate to 0 (the spec's 17-step scenario).
        let f = cache(&[(1, 0)]);
        assert_eq!(truncation_offset(&f, 1, 0, 1, 0), 0);
        // Same epoch: the smaller end offset wins.
        let f = cache(&[(1, 0), (2, 3)]);
        assert_eq!(truncation_offset(&f, 6, 0, 2, 4), 4);
        assert_eq!(truncation_offset(&f, 6, 2, -1, -1), 2, "UNDEFINED: HW");
    }

    #[test]
    fn leader_answers_diverging_epoch() {
        // Leader: e1@0 e2@2, LEO 4. Follower fetches at 3 with last epoch 1: diverging (1, 2).
        let mut p = leader_with(0);
        p.apply_registration(&reg(0, &[0, 1, 2], 2, 1), 0);
        p.log_end_offset = 4;
        let leader_epochs = cache(&[(1, 0), (2, 2)]);
        let fetch = FollowerFetch {
            last_fetched_epoch: 1,
            ..follower_fetch(1, 3)
        };
        assert_eq!(
            p.on_follower_fetch(&fetch, &leader_epochs, 0),
            FollowerFetchOutcome::Diverging {
                epoch: 1,
                end_offset: 2,
                high_watermark: 0
            }
        );
        let fetch = FollowerFetch {
            last_fetched_epoch: 1,
            ..follower_fetch(1, 2)
        };
        assert!(matches!(
            p.on_follower_fetch(&fetch, &leader_epochs, 0),
            FollowerFetchOutcome::Read { .. }
        ));
        // A follower whose last epoch is newer than anything the leader has.
        let fetch = FollowerFetch {
            last_fetched_epoch: 3,
            ..follower_fetch(1, 2)
        };
        assert!(matches!(
            p.on_follower_fetch(&fetch, &leader_epochs, 0),
            FollowerFetchOutcome::Diverging { epoch: -1, .. }
        ));
    }

    #[test]
    fn truncate_to_hw_truncates_on_becoming_follower_and_sends_no_epoch() {
        let mut p = PartitionState::new(0, 2, 0, 1, 0);
        p.bugs = BrokerBugs::of(&[ReplicationBug::TruncateToHw]);
        let t = p.apply_registration(&reg(1, &[1, 2], 2, 3), 0);
        assert_eq!(
            t,
            Transition::BecomeFollower {
                leader: 1,
                leader_epoch: 2,
                truncate_to: Some(0)
            }
        );
        assert_eq!(p.fetch_position(&cache(&[(1, 0)])), (1, UNDEFINED_EPOCH));
    }

    #[test]
    fn bug_flags_parse_and_refuse_unknown_names() {
        assert_eq!(BrokerBugs::parse::<&str>(&[]).unwrap(), BrokerBugs::none());
        let b = BrokerBugs::parse(&["truncate-to-hw", "single-epoch-lookup"]).unwrap();
        assert!(b.has(ReplicationBug::TruncateToHw) && !b.has(ReplicationBug::Acks1));
        let e = BrokerBugs::parse(&["nope"]).unwrap_err();
        assert!(
            e.contains("unknown bug flag 'nope'") && e.contains("truncate-to-hw"),
            "{e}"
        );
        let e = BrokerBugs::parse(&["unclean-election"]).unwrap_err();
        assert!(e.contains("not a broker choice"), "{e}");
    }

    fn follower_fetch(id: i32, offset: i64) -> FollowerFetch {
        FollowerFetch {
            replica_id: id,
            broker_epoch: 1,
            current_leader_epoch: -1,
            fetch_offset: offset,
            last_fetched_epoch: -1,
        }
    }

    proptest! {
        /// With followers in the ISR, the HW is the minimum ISR LEO, never decreases, and
        /// acks=all only completes for offsets every ISR member has.
        #[test]
        fn hw_is_min_isr_leo_and_monotonic(steps in proptest::collection::vec((0u8..3, 1i64..5), 1..40)) {
            let mut p = PartitionState::sole_leader(0, 0, 0, 0, 0);
            p.replicas = vec![0, 1, 2];
            p.isr = vec![0, 1, 2];
            let epochs = EpochCache::default();
            let mut follower = [0i64; 3];
            let mut last_hw = 0;
            let mut next_id = 0;
            let mut acked_below = i64::MAX;
            for (who, n) in steps {
                if who == 0 {
                    let plan = p.prepare_append(build(0, n as i32, 1, 0)).unwrap();
                    p.on_local_append(&plan);
                    p.await_acks_all(next_id, plan.last_offset);
                    next_id += 1;
                } else {
                    let w = who as usize;
                    follower[w] = (follower[w] + n).min(p.log_end_offset);
                    let out = p.on_follower_fetch(&follower_fetch(i32::from(who), follower[w]), &epochs, 0);
                    prop_assert!(matches!(out, FollowerFetchOutcome::Read { .. }), "{out:?}");
                }
                let min = p.log_end_offset.min(follower[1]).min(follower[2]);
                prop_assert!(p.high_watermark >= last_hw);
                prop_assert_eq!(p.high_watermark, min.max(last_hw));
                for (_, c) in p.take_completed_acks() {
                    prop_assert_eq!(c, code::NONE);
                    acked_below = acked_below.min(follower[1].min(follower[2]));
                }
                prop_assert!(acked_below == i64::MAX || acked_below <= p.high_watermark);
                last_hw = p.high_watermark;
            }
        }
    }
}
