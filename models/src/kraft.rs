//! KRaft: the controller quorum (KIP-595 Raft with pull-based replication), pre-vote (KIP-996)
//! and the `__cluster_metadata` log it replicates to brokers, which are observers that apply
//! committed records to their metadata image (KIP-500, KIP-631). See `specs/kraft.md`.
//!
//! The model follows Apache Kafka's `raft` module:
//! * voters move through `QuorumState`'s states (Unattached, Prospective, Candidate, Voted,
//!   Leader, Follower, Resigned) and persist epoch, vote and leader in the `quorum-state` file;
//! * a voter grants a vote once per epoch and only to a candidate whose log (last epoch, end
//!   offset) is at least as up to date as its own; pre-votes (KIP-996) change nothing persisted;
//! * followers and observers Fetch with (fetch offset, last fetched epoch); the leader answers
//!   with records and its HW, or with a diverging epoch and end offset (KAFKA-10487) from which
//!   the follower computes its truncation offset exactly as `ReplicatedLog.truncateToEndOffset`;
//! * a new leader appends a LeaderChange control record and advances the HW only over an offset
//!   of its own epoch replicated by a majority (`LeaderState.maybeUpdateHighWatermark`);
//! * a leader that has not received Fetch from a majority within the check-quorum timeout
//!   resigns (KAFKA-15489's split brain; the timeout is a nondeterministic action).
//!
//! The network lives in the state: a sorted, bounded multiset of in-flight messages. Delivering
//! any message is an action (reordering), dropping one is an action (loss), delivering and
//! keeping one is an action (duplication, bounded), and a send into a full network is a loss.

use crate::catalog::{Bound, BugFlag, Config, KcheckModel};
use crate::compact::InlineVec;
use crate::property::Property;
use crate::replication::{BrokerSet, LeaderEpoch, Offset};
use serde::{Deserialize, Serialize};
use stateright::Model;
use std::fmt;

/// A node of the cluster: voters (controllers) are `0..voters`, brokers follow them.
pub type NodeId = u8;

pub const MAX_VOTERS: usize = 5;
pub const MAX_OBSERVERS: usize = 2;
/// The longest `__cluster_metadata` log (metadata records plus one LeaderChange per epoch).
pub const MAX_LOG: usize = 10;
/// The most messages the network can hold (the `network` bound's maximum).
pub const MAX_NETWORK: usize = 6;
/// The highest leader epoch a state can hold (the `epochs` bound's maximum).
pub const MAX_EPOCH: usize = 5;

// ---- the metadata log ------------------------------------------------------------------

/// What a `__cluster_metadata` record says. Broker ids are node ids.
#[derive(
    Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum MetadataRecord {
    /// The control record a new leader appends at the start of its epoch (KIP-595).
    #[default]
    LeaderChange,
    /// RegisterBrokerRecord: the broker registered and is fenced until it catches up.
    RegisterBroker { broker: NodeId },
    /// UnfenceBrokerRecord: the broker's heartbeats show it caught up with the metadata log.
    UnfenceBroker { broker: NodeId },
    /// FenceBrokerRecord: the broker's BrokerHeartbeat session expired.
    FenceBroker { broker: NodeId },
    /// PartitionChangeRecord for the one partition: a new leader, leader epoch and ISR.
    PartitionChange {
        leader: NodeId,
        leader_epoch: LeaderEpoch,
        isr: BrokerSet,
    },
}

/// A record of the metadata log: the leader epoch that wrote it and what it says. Within an
/// epoch one leader appends each offset once, so (offset, epoch) names a record.
#[derive(
    Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Record {
    pub epoch: LeaderEpoch,
    pub body: MetadataRecord,
}

/// The metadata image a broker (or the active controller) builds by applying records in order.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub struct MetadataImage {
    pub registered: BrokerSet,
    pub unfenced: BrokerSet,
    pub partition_leader: Option<NodeId>,
    pub partition_leader_epoch: LeaderEpoch,
    pub isr: BrokerSet,
}

impl MetadataImage {
    /// Apply one record (MetadataDelta.replay, reduced to the records modelled).
    pub fn apply(mut self, record: &MetadataRecord) -> Self {
        match *record {
            MetadataRecord::LeaderChange => {}
            MetadataRecord::RegisterBroker { broker } => {
                self.registered = self.registered.with(broker);
                self.unfenced = self.unfenced.without(broker);
            }
            MetadataRecord::UnfenceBroker { broker } => self.unfenced = self.unfenced.with(broker),
            MetadataRecord::FenceBroker { broker } => {
                self.unfenced = self.unfenced.without(broker);
            }
            MetadataRecord::PartitionChange {
                leader,
                leader_epoch,
                isr,
            } => {
                self.partition_leader = Some(leader);
                self.partition_leader_epoch = leader_epoch;
                self.isr = isr;
            }
        }
        self
    }

    pub fn of(log: &[Record]) -> Self {
        log.iter()
            .fold(MetadataImage::default(), |i, r| i.apply(&r.body))
    }

    /// The records the active controller may write next for `brokers`: it registers a broker
    /// that sent BrokerRegistration, unfences a registered one whose heartbeat shows it caught
    /// up, fences one whose session expired, and moves the partition's leadership to an
    /// unfenced broker (bumping the partition's leader epoch, ISR = unfenced brokers).
    pub fn next_records(&self, brokers: impl Iterator<Item = NodeId>) -> Vec<MetadataRecord> {
        let mut out = Vec::new();
        for b in brokers {
            if !self.registered.contains(b) {
                out.push(MetadataRecord::RegisterBroker { broker: b });
            } else if !self.unfenced.contains(b) {
                out.push(MetadataRecord::UnfenceBroker { broker: b });
            } else {
                out.push(MetadataRecord::FenceBroker { broker: b });
                if self.partition_leader != Some(b) {
                    out.push(MetadataRecord::PartitionChange {
                        leader: b,
                        leader_epoch: self.partition_leader_epoch + 1,
                        isr: self.unfenced,
                    });
                }
            }
        }
        out
    }
}

/// The last epoch of a log and its end offset, as a candidate sends them in VoteRequest.
pub fn last_epoch_and_end_offset(log: &[Record]) -> (LeaderEpoch, Offset) {
    (log.last().map_or(0, |r| r.epoch), log.len() as Offset)
}

/// Whether a voter whose log ends at `own` (last epoch, end offset) may vote for a candidate
/// whose log ends at `candidate`: the candidate's log must be at least as up to date, compared
/// by last epoch first and end offset second (KIP-595, Raft's election restriction).
pub fn candidate_log_is_up_to_date(
    candidate: (LeaderEpoch, Offset),
    own: (LeaderEpoch, Offset),
) -> bool {
    candidate >= own
}

/// The leader's `endOffsetForEpoch`: the largest epoch of its log at or below `epoch` and where
/// it ends. An epoch older than every epoch of the log answers with the requested epoch and
/// the start of the first epoch above it (Kafka's leader-epoch cache does the same).
pub fn end_offset_for_epoch(log: &[Record], epoch: LeaderEpoch) -> (LeaderEpoch, Offset) {
    let (latest, leo) = last_epoch_and_end_offset(log);
    if epoch >= latest {
        // At the latest epoch the log's end is the epoch's end. A newer epoch than any of the
        // log's cannot come from a follower of this leader; answer with the log's end.
        return (latest, leo);
    }
    let higher = log
        .iter()
        .position(|r| r.epoch > epoch)
        .unwrap_or(log.len());
    match log[..higher].last() {
        Some(r) => (r.epoch, higher as Offset),
        None => (epoch, higher as Offset),
    }
}

/// What the leader answers a Fetch at (`fetch_offset`, `last_fetched_epoch`):
/// `None` if the position is on its log, else the diverging epoch and its end offset
/// (`KafkaRaftClient.validateOffsetAndEpoch`, KAFKA-10487).
pub fn diverging_epoch(
    leader_log: &[Record],
    fetch_offset: Offset,
    last_fetched_epoch: LeaderEpoch,
) -> Option<(LeaderEpoch, Offset)> {
    if fetch_offset == 0 && last_fetched_epoch == 0 {
        return None;
    }
    let (epoch, end) = end_offset_for_epoch(leader_log, last_fetched_epoch);
    (epoch != last_fetched_epoch || end < fetch_offset).then_some((epoch, end))
}

/// Where a follower truncates on a diverging epoch and end offset from the leader
/// (`ReplicatedLog.truncateToEndOffset`): to the smaller of the two end offsets of that epoch
/// when it has the epoch, else to the end of its own largest epoch below it.
pub fn truncation_offset(log: &[Record], diverging: (LeaderEpoch, Offset)) -> Offset {
    let (epoch, end) = diverging;
    let leo = log.len() as Offset;
    if epoch == 0 {
        return end.min(leo);
    }
    let (local_epoch, local_end) = end_offset_for_epoch(log, epoch);
    if local_epoch == epoch {
        local_end.min(end)
    } else {
        local_end
    }
}

// ---- quorum state ----------------------------------------------------------------------

/// Kafka's KRaft `EpochState`s (`QuorumState`), with KIP-996's Prospective.
#[derive(
    Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum QuorumStateKind {
    /// Knows the epoch but no leader and has not voted in it.
    #[default]
    Unattached,
    /// Pre-vote (KIP-996): asks whether it could win without bumping the epoch.
    Prospective,
    /// Bumped the epoch, voted for itself and asks for votes.
    Candidate,
    /// Granted its vote in the current epoch.
    Voted,
    Leader,
    Follower,
    /// A leader that stepped down (shutdown or check-quorum) and waits for a successor.
    Resigned,
}

impl QuorumStateKind {
    pub fn name(self) -> &'static str {
        match self {
            QuorumStateKind::Unattached => "unattached",
            QuorumStateKind::Prospective => "prospective",
            QuorumStateKind::Candidate => "candidate",
            QuorumStateKind::Voted => "voted",
            QuorumStateKind::Leader => "leader",
            QuorumStateKind::Follower => "follower",
            QuorumStateKind::Resigned => "resigned",
        }
    }
}

/// A controller (voter) of the KRaft quorum.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Voter {
    pub alive: bool,
    pub state: QuorumStateKind,
    /// The quorum epoch (the `__cluster_metadata` leader epoch); persisted in quorum-state.
    pub epoch: LeaderEpoch,
    /// Persisted in quorum-state: whom it voted for in `epoch`.
    pub voted_for: Option<NodeId>,
    /// Persisted in quorum-state: the leader of `epoch` it knows.
    pub leader: Option<NodeId>,
    /// Prospective / Candidate: voters that granted the (pre-)vote, itself included.
    pub votes: BrokerSet,
    pub log: InlineVec<Record, MAX_LOG>,
    /// The leader's HW: `None` until it commits in its epoch, and on voters that do not lead
    /// (a follower's HW is not modelled).
    pub hw: Option<Offset>,
    /// Leader: each voter's end offset from its last Fetch in this epoch.
    pub end_offsets: [Offset; MAX_VOTERS],
}

impl Voter {
    pub fn leo(&self) -> Offset {
        self.log.len() as Offset
    }
}

/// A broker: an observer of `__cluster_metadata` that fetches it and applies committed records.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Observer {
    pub alive: bool,
    pub epoch: LeaderEpoch,
    pub leader: Option<NodeId>,
    pub log: InlineVec<Record, MAX_LOG>,
    pub hw: Option<Offset>,
    /// The records applied to its metadata image, in order (the image is their fold).
    pub applied: InlineVec<Record, MAX_LOG>,
    /// History: the HW this broker had before a restart made it unknown, until it learns one
    /// again (for `hw-monotonic`).
    pub hw_floor: Offset,
}

// ---- messages --------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum FetchData {
    /// Nothing new (or an error): just epoch, leader and HW.
    Empty,
    /// The record at the fetch offset (one record per response: a small fetch.max.bytes).
    Record { record: Record },
    /// The fetch position is not on the leader's log.
    Diverging {
        epoch: LeaderEpoch,
        end_offset: Offset,
    },
    /// NOT_LEADER_OR_FOLLOWER / FENCED_LEADER_EPOCH: the response names epoch and leader.
    NotLeader,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "api", rename_all = "kebab-case")]
pub enum Body {
    Vote {
        pre_vote: bool,
        epoch: LeaderEpoch,
        last_epoch: LeaderEpoch,
        end_offset: Offset,
    },
    VoteResponse {
        pre_vote: bool,
        epoch: LeaderEpoch,
        granted: bool,
    },
    BeginQuorumEpoch {
        epoch: LeaderEpoch,
    },
    EndQuorumEpoch {
        epoch: LeaderEpoch,
    },
    Fetch {
        epoch: LeaderEpoch,
        fetch_offset: Offset,
        last_fetched_epoch: LeaderEpoch,
    },
    FetchResponse {
        epoch: LeaderEpoch,
        leader: Option<NodeId>,
        /// Echo of the request's fetch offset (the correlation the client matches on).
        fetch_offset: Offset,
        data: FetchData,
        hw: Option<Offset>,
    },
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub body: Body,
}

impl Default for Message {
    fn default() -> Self {
        Message {
            from: 0,
            to: 0,
            body: Body::BeginQuorumEpoch { epoch: 0 },
        }
    }
}

// ---- state and actions -----------------------------------------------------------------

/// The model's state. `committed`, `commit_conflict` and `epoch_leaders` are history (ghost)
/// variables for the invariants; no node reads them.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct State {
    pub voters: InlineVec<Voter, MAX_VOTERS>,
    pub observers: InlineVec<Observer, MAX_OBSERVERS>,
    /// In-flight messages, sorted (a multiset).
    pub network: InlineVec<Message, MAX_NETWORK>,
    /// Messages sent by the step being taken (always empty between steps).
    pub outbox: InlineVec<Message, 8>,
    /// Every record ever below a leader's HW, with the epoch of the leader that committed it.
    pub committed: InlineVec<(Record, LeaderEpoch), MAX_LOG>,
    /// A leader's HW passed an offset whose committed record it does not hold.
    pub commit_conflict: bool,
    /// Some node's HW went below one it had before.
    pub hw_regressed: bool,
    /// Voters that became leader in each epoch.
    pub epoch_leaders: [BrokerSet; MAX_EPOCH + 1],
    pub written: u8,
    pub crashes: u8,
    pub duplicates: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// The election timer (Unattached, Voted, Candidate, Resigned), the fetch timer (Follower)
    /// or the pre-vote timer (Prospective) of a voter expires; an observer's fetch timer expires.
    Timeout {
        node: NodeId,
    },
    /// The network delivers a message (in any order).
    Deliver {
        message: Message,
    },
    /// The network delivers a message and keeps a copy (duplication).
    Duplicate {
        message: Message,
    },
    /// The network loses a message.
    Drop {
        message: Message,
    },
    /// A follower or observer sends Fetch to `to` (its leader, or any voter to find one).
    SendFetch {
        node: NodeId,
        to: NodeId,
    },
    /// A follower's Fetch is handled by the leader (which records its end offset and may
    /// advance the HW) but the response is lost: the follower learns nothing.
    FetchResponseLost {
        node: NodeId,
        to: NodeId,
    },
    /// A candidate or prospective voter resends a lost (pre-)VoteRequest.
    ResendVote {
        voter: NodeId,
        to: NodeId,
    },
    /// The leader resends BeginQuorumEpoch to a voter that has not fetched in its epoch.
    ResendBeginQuorumEpoch {
        voter: NodeId,
        to: NodeId,
    },
    /// The active controller appends a metadata record.
    ControllerAppend {
        voter: NodeId,
        record: MetadataRecord,
    },
    /// The leader resigns and sends EndQuorumEpoch: a graceful shutdown, or its check-quorum
    /// timer fired without Fetch from a majority (KAFKA-15489). Allowing it at any time covers
    /// both, since the timer's length is arbitrary.
    Resign {
        voter: NodeId,
    },
    /// A prospective voter's pre-vote round: every live voter is asked at once (pre-votes change
    /// nothing persisted, so their interleaving does not matter for safety); with a majority
    /// of grants it becomes candidate in the next epoch (KIP-996).
    PreVote {
        voter: NodeId,
    },
    /// The node stops; what was sent to it is lost.
    Crash {
        node: NodeId,
    },
    Restart {
        node: NodeId,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KraftBug {
    VoteIgnoresLog,
    CommitPriorEpoch,
    NoDivergingEpoch,
    ApplyUncommitted,
    ForgetVoteOnRestart,
    NoElectionTimeout,
    HwBeyondLogEnd,
    HwBeforeLeaderChangeCommitted,
    ProspectiveFollowsItself,
}

impl KraftBug {
    pub fn name(self) -> &'static str {
        match self {
            KraftBug::VoteIgnoresLog => "vote-ignores-log",
            KraftBug::CommitPriorEpoch => "commit-prior-epoch",
            KraftBug::NoDivergingEpoch => "no-diverging-epoch",
            KraftBug::ApplyUncommitted => "apply-uncommitted",
            KraftBug::ForgetVoteOnRestart => "forget-vote-on-restart",
            KraftBug::NoElectionTimeout => "no-election-timeout",
            KraftBug::HwBeyondLogEnd => "hw-beyond-log-end",
            KraftBug::HwBeforeLeaderChangeCommitted => "hw-before-leader-change-committed",
            KraftBug::ProspectiveFollowsItself => "prospective-follows-itself",
        }
    }
    pub const ALL: [KraftBug; 9] = [
        KraftBug::VoteIgnoresLog,
        KraftBug::CommitPriorEpoch,
        KraftBug::NoDivergingEpoch,
        KraftBug::ApplyUncommitted,
        KraftBug::ForgetVoteOnRestart,
        KraftBug::NoElectionTimeout,
        KraftBug::HwBeyondLogEnd,
        KraftBug::HwBeforeLeaderChangeCommitted,
        KraftBug::ProspectiveFollowsItself,
    ];
}

static BUG_FLAGS: &[BugFlag] = &[
    BugFlag {
        name: "vote-ignores-log",
        meaning: "a voter grants its vote without comparing the candidate's last epoch and end offset",
        source: "KIP-595 (Raft's election restriction)",
        violates: "leader-completeness",
    },
    BugFlag {
        name: "commit-prior-epoch",
        meaning: "the leader advances the HW over whatever offset a majority of voters reached, records of prior epochs included, so a new leader's HW can fall below its predecessor's",
        source: "KIP-595 (a leader commits only through a record of its own epoch); Raft paper §5.4.2",
        violates: "hw-monotonic",
    },
    BugFlag {
        name: "hw-before-leader-change-committed",
        meaning: "the new leader advances the HW once a majority reached its epoch start offset, before its LeaderChange record is replicated (an off-by-one): prior epochs' records commit (Raft figure 8)",
        source: "KAFKA-12619 (fixed in Kafka 3.0)",
        violates: "no-committed-data-loss",
    },
    BugFlag {
        name: "prospective-follows-itself",
        meaning: "a resigned leader that went prospective in its own epoch handles a rejected pre-vote naming it as leader by becoming follower of itself",
        source: "KAFKA-16281 (found by Jack Vanlightly's KIP-996 TLA+ model)",
        violates: "valid-quorum-state",
    },
    BugFlag {
        name: "hw-beyond-log-end",
        meaning: "mutation: a broker takes the leader's HW from a FetchResponse without bounding it by its own log end offset",
        source: "mutation of KafkaRaftClient.updateFollowerHighWatermark (HW = min(leader HW, LEO))",
        violates: "hw-within-log",
    },
    BugFlag {
        name: "no-diverging-epoch",
        meaning: "the leader does not validate the fetch position and followers append without truncating",
        source: "KIP-595, KAFKA-10487",
        violates: "log-matching",
    },
    BugFlag {
        name: "apply-uncommitted",
        meaning: "brokers apply metadata records above the HW",
        source: "KIP-500 / KIP-631 (brokers apply committed metadata)",
        violates: "observer-prefix",
    },
    BugFlag {
        name: "forget-vote-on-restart",
        meaning: "a voter does not persist its vote in quorum-state and votes again after a restart",
        source: "KIP-595 (quorum-state file)",
        violates: "election-safety",
    },
    BugFlag {
        name: "no-election-timeout",
        meaning: "mutation (not historical): voters without a leader never start an election",
        source: "mutation of KIP-595's election timeout",
        violates: "leader-electable",
    },
];

static BOUNDS: &[Bound] = &[
    Bound {
        name: "voters",
        meaning: "controllers in the KRaft quorum (controller.quorum.voters)",
        default: 3,
        release: 3,
        min: 1,
        max: MAX_VOTERS as u32,
    },
    Bound {
        name: "brokers",
        meaning: "brokers observing __cluster_metadata",
        default: 1,
        release: 1,
        min: 0,
        max: MAX_OBSERVERS as u32,
    },
    Bound {
        name: "epochs",
        meaning: "highest quorum (leader) epoch a candidate may start",
        default: 2,
        release: 2,
        min: 1,
        max: MAX_EPOCH as u32,
    },
    Bound {
        name: "records",
        meaning: "metadata records the active controllers write",
        default: 1,
        release: 1,
        min: 0,
        max: 4,
    },
    Bound {
        name: "crashes",
        meaning: "node crashes (graceful or not); restarts are free",
        default: 0,
        release: 1,
        min: 0,
        max: 4,
    },
    Bound {
        name: "network",
        meaning: "messages in flight at once (a send into a full network is lost)",
        default: 1,
        release: 1,
        min: 1,
        max: MAX_NETWORK as u32,
    },
    Bound {
        name: "duplicates",
        meaning: "messages the network duplicates",
        default: 0,
        release: 0,
        min: 0,
        max: 3,
    },
];

/// The KRaft model with its configuration.
#[derive(Clone, Debug)]
pub struct Kraft {
    pub voters: usize,
    pub observers: usize,
    pub max_epoch: LeaderEpoch,
    pub max_records: u8,
    pub max_crashes: u8,
    pub max_network: usize,
    pub max_duplicates: u8,
    pub bugs: Vec<KraftBug>,
}

fn node_name(n: NodeId, voters: usize) -> String {
    if (n as usize) < voters {
        format!("c{n}")
    } else {
        format!("b{n}")
    }
}

impl Kraft {
    pub fn has(&self, bug: KraftBug) -> bool {
        self.bugs.contains(&bug)
    }

    fn majority(&self) -> usize {
        self.voters / 2 + 1
    }

    fn is_voter(&self, n: NodeId) -> bool {
        (n as usize) < self.voters
    }

    fn observer_ids(&self) -> impl Iterator<Item = NodeId> {
        let v = self.voters as NodeId;
        v..v + self.observers as NodeId
    }

    fn name(&self, n: NodeId) -> String {
        node_name(n, self.voters)
    }

    /// Every voter starts Unattached in epoch 0 with an empty log; brokers start with no leader.
    pub fn initial_state(&self) -> State {
        State {
            voters: (0..self.voters)
                .map(|_| Voter {
                    alive: true,
                    ..Voter::default()
                })
                .collect(),
            observers: (0..self.observers)
                .map(|_| Observer {
                    alive: true,
                    ..Observer::default()
                })
                .collect(),
            network: InlineVec::new(),
            outbox: InlineVec::new(),
            committed: InlineVec::new(),
            commit_conflict: false,
            hw_regressed: false,
            epoch_leaders: [BrokerSet::default(); MAX_EPOCH + 1],
            written: 0,
            crashes: 0,
            duplicates: 0,
        }
    }

    /// Queue a message; the step's messages enter the network together at its end.
    fn send(&self, s: &mut State, from: NodeId, to: NodeId, body: Body) {
        s.outbox.push(Message { from, to, body });
    }

    /// Put a step's messages on the network, or lose them all when they do not fit. All or
    /// nothing keeps the model symmetric in voter ids (which messages of a broadcast got in
    /// must not depend on the ids' order).
    fn flush_outbox(&self, s: &mut State) {
        if s.network.len() + s.outbox.len() <= self.max_network {
            for m in s.outbox.iter() {
                s.network.push(*m);
            }
            s.network.sort_unstable();
        }
        s.outbox.clear();
        let voters = self.voters;
        let dead: Vec<bool> = s
            .network
            .iter()
            .map(|m| (m.to as usize) < voters && inert(m, &s.voters[m.to as usize]))
            .collect();
        if dead.iter().any(|d| *d) {
            let mut kept = InlineVec::new();
            for (m, d) in s.network.iter().zip(dead) {
                if !d {
                    kept.push(*m);
                }
            }
            s.network = kept;
        }
    }

    fn in_flight(&self, s: &State, pred: impl Fn(&Message) -> bool) -> bool {
        s.network.iter().any(pred)
    }

    /// Persisted quorum-state moves to a higher epoch: no vote, no leader (yet).
    fn to_unattached(v: &mut Voter, epoch: LeaderEpoch) {
        v.hw = None;
        v.epoch = epoch;
        v.state = QuorumStateKind::Unattached;
        v.voted_for = None;
        v.leader = None;
        v.votes = BrokerSet::default();
        v.end_offsets = [0; MAX_VOTERS];
    }

    fn to_follower(v: &mut Voter, epoch: LeaderEpoch, leader: NodeId) {
        if epoch > v.epoch {
            v.voted_for = None;
        }
        v.hw = None;
        v.epoch = epoch;
        v.state = QuorumStateKind::Follower;
        v.leader = Some(leader);
        v.votes = BrokerSet::default();
        v.end_offsets = [0; MAX_VOTERS];
    }

    /// React to a higher epoch seen in any request or response.
    fn observe_epoch(v: &mut Voter, epoch: LeaderEpoch, leader: Option<NodeId>) {
        if epoch > v.epoch {
            match leader {
                Some(l) => Self::to_follower(v, epoch, l),
                None => Self::to_unattached(v, epoch),
            }
        }
    }

    /// Enter Prospective (KIP-996): the pre-vote round itself is the `PreVote` action.
    fn to_prospective(&self, s: &mut State, id: NodeId) {
        let v = &mut s.voters[id as usize];
        v.state = QuorumStateKind::Prospective;
        v.votes = BrokerSet::default();
        v.end_offsets = [0; MAX_VOTERS];
    }

    /// Whether voter `r` grants a pre-vote to a candidate in `epoch` whose log ends at
    /// `candidate` (KIP-996): the epoch is not behind, the log is up to date, and `r` is not a
    /// leader or a follower that has a leader to fetch from.
    pub fn grants_pre_vote(
        &self,
        r: &Voter,
        epoch: LeaderEpoch,
        candidate: (LeaderEpoch, Offset),
    ) -> bool {
        epoch >= r.epoch
            && (self.has(KraftBug::VoteIgnoresLog)
                || candidate_log_is_up_to_date(candidate, last_epoch_and_end_offset(&r.log)))
            && !matches!(r.state, QuorumStateKind::Leader | QuorumStateKind::Follower)
    }

    /// A prospective voter with a majority of pre-votes becomes candidate in the next epoch;
    /// a candidate with a majority of votes becomes leader.
    fn maybe_win(&self, s: &mut State, id: NodeId) {
        let v = s.voters[id as usize];
        if v.votes.len() < self.majority() {
            return;
        }
        match v.state {
            QuorumStateKind::Prospective if v.epoch < self.max_epoch => {
                let v = &mut s.voters[id as usize];
                v.epoch += 1;
                v.state = QuorumStateKind::Candidate;
                v.voted_for = Some(id);
                v.leader = None;
                v.votes = BrokerSet::single(id);
                let (last_epoch, end_offset) = last_epoch_and_end_offset(&v.log);
                let epoch = v.epoch;
                if self.majority() == 1 {
                    self.become_leader(s, id);
                    return;
                }
                for to in 0..self.voters as NodeId {
                    if to != id {
                        let body = Body::Vote {
                            pre_vote: false,
                            epoch,
                            last_epoch,
                            end_offset,
                        };
                        self.send(s, id, to, body);
                    }
                }
            }
            QuorumStateKind::Candidate => self.become_leader(s, id),
            _ => {}
        }
    }

    fn become_leader(&self, s: &mut State, id: NodeId) {
        let v = &mut s.voters[id as usize];
        v.state = QuorumStateKind::Leader;
        v.leader = Some(id);
        v.votes = BrokerSet::default();
        v.hw = None;
        v.end_offsets = [0; MAX_VOTERS];
        let epoch = v.epoch;
        v.log.push(Record {
            epoch,
            body: MetadataRecord::LeaderChange,
        });
        v.end_offsets[id as usize] = v.leo();
        s.epoch_leaders[epoch as usize] = s.epoch_leaders[epoch as usize].with(id);
        for to in 0..self.voters as NodeId {
            if to != id {
                self.send(s, id, to, Body::BeginQuorumEpoch { epoch });
            }
        }
        self.update_leader_hw(s, id);
    }

    /// `LeaderState.maybeUpdateHighWatermark`: the largest offset a majority of voters has
    /// reached, if it covers a record of the leader's own epoch (above the epoch start), and
    /// only upwards.
    fn update_leader_hw(&self, s: &mut State, id: NodeId) {
        let v = &s.voters[id as usize];
        let mut ends: Vec<Offset> = (0..self.voters).map(|i| v.end_offsets[i]).collect();
        ends.sort_unstable_by(|a, b| b.cmp(a));
        let majority_end = ends[self.majority() - 1];
        let epoch_start = v
            .log
            .iter()
            .position(|r| r.epoch == v.epoch)
            .unwrap_or(v.log.len()) as Offset;
        // The majority must hold a record of the leader's epoch: past the epoch start, which
        // is its LeaderChange record (KAFKA-12619 fixed an off-by-one that accepted the epoch
        // start itself, i.e. only records of prior epochs).
        let own_epoch_ok = if self.has(KraftBug::CommitPriorEpoch) {
            true
        } else if self.has(KraftBug::HwBeforeLeaderChangeCommitted) {
            majority_end >= epoch_start
        } else {
            majority_end > epoch_start
        };
        if own_epoch_ok && v.hw.is_none_or(|hw| majority_end > hw) && majority_end > 0 {
            let log = v.log;
            let epoch = v.epoch;
            s.voters[id as usize].hw = Some(majority_end);
            for o in 0..majority_end as usize {
                if o < s.committed.len() {
                    if s.committed[o].0 != log[o] {
                        s.commit_conflict = true;
                    }
                } else {
                    s.committed.push((log[o], epoch));
                }
            }
        }
    }

    fn handle(&self, s: &mut State, m: Message) {
        if self.is_voter(m.to) {
            self.handle_at_voter(s, m);
        } else {
            self.handle_at_observer(s, m);
        }
    }

    fn handle_at_voter(&self, s: &mut State, m: Message) {
        let id = m.to;
        match m.body {
            Body::Vote {
                pre_vote,
                epoch,
                last_epoch,
                end_offset,
            } => {
                let v = &mut s.voters[id as usize];
                if !pre_vote {
                    Self::observe_epoch(v, epoch, None);
                }
                let log_ok = self.has(KraftBug::VoteIgnoresLog)
                    || candidate_log_is_up_to_date(
                        (last_epoch, end_offset),
                        last_epoch_and_end_offset(&v.log),
                    );
                let granted = if pre_vote {
                    // KIP-996: a pre-vote asks about epoch + 1 and changes nothing persisted;
                    // a voter that has a leader it fetches from rejects it.
                    epoch >= v.epoch
                        && log_ok
                        && !matches!(v.state, QuorumStateKind::Leader | QuorumStateKind::Follower)
                } else {
                    epoch == v.epoch
                        && log_ok
                        && v.leader.is_none()
                        && match v.voted_for {
                            Some(c) => c == m.from,
                            None => v.state == QuorumStateKind::Unattached,
                        }
                };
                if granted && !pre_vote {
                    v.state = QuorumStateKind::Voted;
                    v.voted_for = Some(m.from);
                }
                let epoch = v.epoch;
                self.send(
                    s,
                    id,
                    m.from,
                    Body::VoteResponse {
                        pre_vote,
                        epoch,
                        granted,
                    },
                );
            }
            Body::VoteResponse {
                pre_vote,
                epoch,
                granted,
            } => {
                let v = &mut s.voters[id as usize];
                Self::observe_epoch(v, epoch, None);
                let expecting = if pre_vote {
                    QuorumStateKind::Prospective
                } else {
                    QuorumStateKind::Candidate
                };
                if granted && v.state == expecting && epoch == v.epoch {
                    v.votes = v.votes.with(m.from);
                    self.maybe_win(s, id);
                }
            }
            Body::BeginQuorumEpoch { epoch } => {
                let v = &mut s.voters[id as usize];
                if epoch > v.epoch
                    || (epoch == v.epoch
                        && !matches!(v.state, QuorumStateKind::Leader | QuorumStateKind::Follower))
                {
                    Self::to_follower(v, epoch, m.from);
                }
            }
            Body::EndQuorumEpoch { epoch } => {
                let v = s.voters[id as usize];
                if epoch == v.epoch
                    && v.state == QuorumStateKind::Follower
                    && v.leader == Some(m.from)
                {
                    // KIP-996: a follower whose leader resigned starts a pre-vote at once.
                    self.to_prospective(s, id);
                }
            }
            Body::Fetch {
                epoch,
                fetch_offset,
                last_fetched_epoch,
            } => {
                let v = &s.voters[id as usize];
                if v.state != QuorumStateKind::Leader || epoch != v.epoch {
                    let (epoch, leader) = (v.epoch, v.leader);
                    self.send(
                        s,
                        id,
                        m.from,
                        Body::FetchResponse {
                            epoch,
                            leader,
                            fetch_offset,
                            data: FetchData::NotLeader,
                            hw: None,
                        },
                    );
                    return;
                }
                let diverging = if self.has(KraftBug::NoDivergingEpoch) {
                    None
                } else {
                    diverging_epoch(&v.log, fetch_offset, last_fetched_epoch)
                };
                let data = match diverging {
                    Some((epoch, end_offset)) => FetchData::Diverging { epoch, end_offset },
                    None => {
                        if self.is_voter(m.from) {
                            let v = &mut s.voters[id as usize];
                            v.end_offsets[m.from as usize] = fetch_offset;
                            self.update_leader_hw(s, id);
                        }
                        match s.voters[id as usize].log.get(fetch_offset as usize) {
                            Some(record) => FetchData::Record { record: *record },
                            None => FetchData::Empty,
                        }
                    }
                };
                let v = &s.voters[id as usize];
                let (epoch, hw) = (v.epoch, v.hw);
                self.send(
                    s,
                    id,
                    m.from,
                    Body::FetchResponse {
                        epoch,
                        leader: Some(id),
                        fetch_offset,
                        data,
                        hw,
                    },
                );
            }
            Body::FetchResponse {
                epoch,
                leader,
                fetch_offset,
                data,
                hw,
            } => {
                let v = &mut s.voters[id as usize];
                if epoch > v.epoch {
                    Self::observe_epoch(v, epoch, leader);
                    return;
                }
                if v.state != QuorumStateKind::Follower
                    || epoch != v.epoch
                    || v.leader != Some(m.from)
                    || fetch_offset != v.leo()
                {
                    return;
                }
                // A follower voter's own HW is not modelled (the observers model how committed
                // records are applied); only the leader's HW is.
                v.log = follower_fetch_response(&v.log, data, hw, true).0;
            }
        }
    }

    fn handle_at_observer(&self, s: &mut State, m: Message) {
        let idx = m.to as usize - self.voters;
        let o = &mut s.observers[idx];
        let Body::FetchResponse {
            epoch,
            leader,
            fetch_offset,
            data,
            hw,
        } = m.body
        else {
            return;
        };
        if fetch_offset != o.log.len() as Offset || epoch < o.epoch {
            return;
        }
        if data == FetchData::NotLeader {
            // Learn the epoch and leader the voter knows (none: look for one elsewhere).
            o.epoch = epoch;
            o.leader = leader;
            return;
        }
        o.epoch = epoch;
        o.leader = Some(m.from);
        let bound = !self.has(KraftBug::HwBeyondLogEnd);
        let (log, new_hw) = follower_fetch_response(&o.log, data, hw, bound);
        o.log = log;
        if let Some(h) = new_hw {
            o.hw = Some(h);
        } else if let Some(h) = o.hw {
            o.hw = Some(h.min(o.log.len() as Offset));
        }
        // Apply committed records, in order, to the metadata image.
        let limit = if self.has(KraftBug::ApplyUncommitted) {
            o.log.len()
        } else {
            o.hw.unwrap_or(0) as usize
        };
        for off in o.applied.len()..limit.min(o.log.len()) {
            let r = o.log[off];
            o.applied.push(r);
        }
    }

    fn actions_into(&self, s: &State, actions: &mut Vec<Action>) {
        let n_voters = self.voters as NodeId;
        for id in 0..n_voters {
            let v = &s.voters[id as usize];
            if !v.alive {
                if s.crashes <= self.max_crashes {
                    actions.push(Action::Restart { node: id });
                }
                continue;
            }
            let timeout = match v.state {
                QuorumStateKind::Leader => false,
                QuorumStateKind::Unattached | QuorumStateKind::Voted => {
                    !self.has(KraftBug::NoElectionTimeout)
                }
                _ => true,
            };
            if timeout {
                actions.push(Action::Timeout { node: id });
            }
            match v.state {
                QuorumStateKind::Follower => {
                    let l = v.leader.expect("a follower knows its leader");
                    if self.alive(s, l) {
                        actions.push(Action::SendFetch { node: id, to: l });
                        actions.push(Action::FetchResponseLost { node: id, to: l });
                    }
                }
                QuorumStateKind::Prospective => {
                    if v.epoch < self.max_epoch {
                        actions.push(Action::PreVote { voter: id });
                    }
                }
                QuorumStateKind::Candidate => {
                    let pre_vote = false;
                    for to in 0..n_voters {
                        if to != id && !v.votes.contains(to) && !self.in_flight(s, |m| {
                            (m.from == id && m.to == to)
                                && matches!(m.body, Body::Vote { pre_vote: p, .. } if p == pre_vote)
                                || (m.from == to && m.to == id)
                                    && matches!(m.body, Body::VoteResponse { .. })
                        }) {
                            actions.push(Action::ResendVote { voter: id, to });
                        }
                    }
                }
                QuorumStateKind::Leader => {
                    if s.written < self.max_records {
                        let image = MetadataImage::of(&v.log);
                        for record in image.next_records(self.observer_ids()) {
                            actions.push(Action::ControllerAppend { voter: id, record });
                        }
                    }
                    actions.push(Action::Resign { voter: id });
                    for to in 0..n_voters {
                        if to != id
                            && v.end_offsets[to as usize] == 0
                            && !self.in_flight(s, |m| {
                                m.from == id
                                    && m.to == to
                                    && matches!(m.body, Body::BeginQuorumEpoch { .. })
                            })
                        {
                            actions.push(Action::ResendBeginQuorumEpoch { voter: id, to });
                        }
                    }
                }
                _ => {}
            }
            if s.crashes < self.max_crashes {
                actions.push(Action::Crash { node: id });
            }
        }
        for id in self.observer_ids() {
            let o = &s.observers[id as usize - self.voters];
            if !o.alive {
                actions.push(Action::Restart { node: id });
                continue;
            }
            match o.leader {
                Some(l) => {
                    if self.alive(s, l) {
                        actions.push(Action::SendFetch { node: id, to: l });
                    }
                }
                None => {
                    for to in 0..n_voters {
                        if self.alive(s, to) {
                            actions.push(Action::SendFetch { node: id, to });
                        }
                    }
                }
            }
            if s.crashes < self.max_crashes {
                actions.push(Action::Crash { node: id });
            }
        }
        let mut last: Option<Message> = None;
        for m in s.network.iter() {
            if last == Some(*m) {
                continue;
            }
            last = Some(*m);
            if self.alive(s, m.to) {
                actions.push(Action::Deliver { message: *m });
                // TCP never duplicates; duplication models retried election requests (Vote,
                // BeginQuorumEpoch, EndQuorumEpoch), which Kafka resends on timeouts.
                if s.duplicates < self.max_duplicates && !fetch_of(m, m.from) && !fetch_of(m, m.to)
                {
                    actions.push(Action::Duplicate { message: *m });
                }
            }
            actions.push(Action::Drop { message: *m });
        }
    }

    fn alive(&self, s: &State, n: NodeId) -> bool {
        if self.is_voter(n) {
            s.voters[n as usize].alive
        } else {
            s.observers[n as usize - self.voters].alive
        }
    }

    fn step(&self, before: &State, action: Action) -> Option<State> {
        let mut s = before.clone();
        match action {
            Action::Timeout { node } => {
                if !self.is_voter(node) {
                    let o = &mut s.observers[node as usize - self.voters];
                    o.leader = None;
                } else {
                    let v = s.voters[node as usize];
                    match v.state {
                        QuorumStateKind::Prospective => {
                            // KIP-996: a pre-vote that did not win goes back to following the
                            // leader it knew, or to Unattached (keeping its vote).
                            let v = &mut s.voters[node as usize];
                            v.votes = BrokerSet::default();
                            match v.leader {
                                Some(l) if l != node => {
                                    let e = v.epoch;
                                    Self::to_follower(v, e, l)
                                }
                                _ => {
                                    v.state = if v.voted_for.is_some() {
                                        QuorumStateKind::Voted
                                    } else {
                                        QuorumStateKind::Unattached
                                    };
                                    v.leader = None;
                                }
                            }
                        }
                        QuorumStateKind::Leader => return None,
                        _ => self.to_prospective(&mut s, node),
                    }
                }
            }
            Action::Deliver { message } | Action::Duplicate { message } => {
                let i = s.network.iter().position(|m| *m == message)?;
                if !self.alive(&s, message.to) {
                    return None;
                }
                if let Action::Duplicate { .. } = action {
                    s.duplicates += 1;
                } else {
                    remove_at(&mut s.network, i);
                }
                self.handle(&mut s, message);
            }
            Action::Drop { message } => {
                let i = s.network.iter().position(|m| *m == message)?;
                remove_at(&mut s.network, i);
            }
            Action::SendFetch { node, to } | Action::FetchResponseLost { node, to } => {
                if !self.alive(&s, to) {
                    return None;
                }
                let lost = matches!(action, Action::FetchResponseLost { .. });
                self.fetch_round_trip(&mut s, node, to, lost);
                if !self.is_voter(node) {
                    // A broker told by a voter who leads (NOT_LEADER_OR_FOLLOWER naming the
                    // leader) fetches from it next; the two round trips are one step, since
                    // only the broker's own state changed in between.
                    let o = s.observers[node as usize - self.voters];
                    if let Some(l) = o.leader.filter(|l| *l != to && self.alive(&s, *l)) {
                        self.fetch_round_trip(&mut s, node, l, false);
                    }
                }
            }
            Action::ResendVote { voter, to } => {
                let v = &s.voters[voter as usize];
                let (last_epoch, end_offset) = last_epoch_and_end_offset(&v.log);
                let body = Body::Vote {
                    pre_vote: v.state == QuorumStateKind::Prospective,
                    epoch: v.epoch,
                    last_epoch,
                    end_offset,
                };
                self.send(&mut s, voter, to, body);
            }
            Action::ResendBeginQuorumEpoch { voter, to } => {
                let epoch = s.voters[voter as usize].epoch;
                self.send(&mut s, voter, to, Body::BeginQuorumEpoch { epoch });
            }
            Action::ControllerAppend { voter, record } => {
                let v = &mut s.voters[voter as usize];
                if v.state != QuorumStateKind::Leader || v.log.len() >= MAX_LOG {
                    return None;
                }
                let epoch = v.epoch;
                v.log.push(Record {
                    epoch,
                    body: record,
                });
                v.end_offsets[voter as usize] = v.leo();
                s.written += 1;
                self.update_leader_hw(&mut s, voter);
            }
            Action::Resign { voter } => self.resign(&mut s, voter),
            Action::PreVote { voter } => {
                let v = s.voters[voter as usize];
                if v.state != QuorumStateKind::Prospective || v.epoch >= self.max_epoch {
                    return None;
                }
                if self.pre_vote_grants(&s, voter) < self.majority() {
                    // A rejected pre-vote still teaches the leader of the epoch, if a voter
                    // names one: the prospective voter follows it (KIP-996). Not itself: a
                    // leader that resigned and went prospective in the same epoch is still
                    // named leader by its followers (KAFKA-16281).
                    match self.leader_named_to(&s, voter) {
                        Some(l) if l != voter || self.has(KraftBug::ProspectiveFollowsItself) => {
                            let e = v.epoch;
                            Self::to_follower(&mut s.voters[voter as usize], e, l);
                        }
                        _ => return None,
                    }
                } else {
                    s.voters[voter as usize].votes = BrokerSet::all(self.voters);
                    self.maybe_win(&mut s, voter);
                }
            }
            Action::Crash { node } => {
                s.crashes += 1;
                if self.is_voter(node) {
                    s.voters[node as usize].alive = false;
                } else {
                    s.observers[node as usize - self.voters].alive = false;
                }
                // Connections to the stopped process are gone with what they carried.
                s.network.retain(|m| m.to != node);
            }
            Action::Restart { node } => {
                if self.is_voter(node) {
                    let forget = self.has(KraftBug::ForgetVoteOnRestart);
                    let v = &mut s.voters[node as usize];
                    v.alive = true;
                    if forget {
                        v.voted_for = None;
                    }
                    v.votes = BrokerSet::default();
                    v.hw = None;
                    v.end_offsets = [0; MAX_VOTERS];
                    // QuorumState.initialize from the quorum-state file.
                    v.state = match (v.leader, v.voted_for) {
                        (Some(l), _) if l == node => QuorumStateKind::Resigned,
                        (Some(_), _) => QuorumStateKind::Follower,
                        (None, Some(_)) => QuorumStateKind::Voted,
                        (None, None) => QuorumStateKind::Unattached,
                    };
                } else {
                    let o = &mut s.observers[node as usize - self.voters];
                    // A broker's KafkaRaftClient keeps quorum-state too: epoch and leader
                    // survive, the HW does not.
                    o.alive = true;
                    o.hw = None;
                    // The image is rebuilt from the log as the HW becomes known again.
                    o.applied = InlineVec::new();
                }
            }
        }
        self.flush_outbox(&mut s);
        for v in s.voters.iter_mut() {
            self.normalize_end_offsets(v);
        }
        // History for hw-monotonic: compare every node's HW with the one it had before.
        // A voter's HW exists only while it leads; a leader's HW is never below what any
        // leader committed before (so no voter needs to remember its own old HW).
        let committed_before = before.committed.len() as Offset;
        for (new, old) in s.voters.iter().zip(before.voters.iter()) {
            s.hw_regressed |= match (old.hw, new.hw) {
                (Some(a), Some(b)) => b < a,
                (None, Some(b)) => b < committed_before,
                _ => false,
            };
        }
        for (new, old) in s.observers.iter_mut().zip(before.observers.iter()) {
            s.hw_regressed |= track_hw(old.hw, new.hw, &mut new.hw_floor);
        }
        Some(s)
    }

    /// One Fetch round trip from `node` to voter `to`: the request is handled and its response
    /// is handled by the fetcher at once, or lost. One request is outstanding per fetcher over
    /// one connection, and a response changes only its fetcher, which rejects a late one by
    /// epoch, leader and fetch offset; a response held back in the network would only add
    /// interleavings of commuting steps. Losing the request is the same as doing nothing.
    fn fetch_round_trip(&self, s: &mut State, node: NodeId, to: NodeId, lost: bool) {
        let (epoch, log) = if self.is_voter(node) {
            let v = &s.voters[node as usize];
            (v.epoch, v.log)
        } else {
            let o = &s.observers[node as usize - self.voters];
            (o.epoch, o.log)
        };
        let (last_fetched_epoch, fetch_offset) = last_epoch_and_end_offset(&log);
        let body = Body::Fetch {
            epoch,
            fetch_offset,
            last_fetched_epoch,
        };
        self.handle_at_voter(
            s,
            Message {
                from: node,
                to,
                body,
            },
        );
        if let Some(i) = s.outbox.iter().position(|m| m.to == node) {
            let response = s.outbox[i];
            let mut rest: InlineVec<Message, 8> = InlineVec::new();
            for (j, m) in s.outbox.iter().enumerate() {
                if j != i {
                    rest.push(*m);
                }
            }
            s.outbox = rest;
            if !lost {
                self.handle(s, response);
            }
        }
    }

    /// Forget what the leader's view of its followers' end offsets cannot use: an end offset
    /// at or below the HW (and the epoch start) can never raise the HW, so only whether it is
    /// 0 (the voter has not fetched: resend BeginQuorumEpoch) is kept; voters that do not lead
    /// keep none. States that differ only there behave alike, and merging them is exact.
    fn normalize_end_offsets(&self, v: &mut Voter) {
        if v.state != QuorumStateKind::Leader {
            v.end_offsets = [0; MAX_VOTERS];
            return;
        }
        let epoch_start = v
            .log
            .iter()
            .position(|r| r.epoch == v.epoch)
            .unwrap_or(v.log.len()) as Offset;
        // The HW rises only past this offset (see `update_leader_hw`).
        let base = if self.has(KraftBug::CommitPriorEpoch) {
            0
        } else if self.has(KraftBug::HwBeforeLeaderChangeCommitted) {
            epoch_start.saturating_sub(1)
        } else {
            epoch_start
        };
        let floor = base.max(v.hw.unwrap_or(0));
        for e in v.end_offsets.iter_mut() {
            if *e <= floor {
                *e = (*e).min(1);
            }
        }
    }

    /// How many Fetch requests a `SendFetch` step sends: one, or two when a broker is told the
    /// leader's name and fetches from it in the same step (for `kcheck compare`).
    pub fn fetch_requests(&self, before: &State, node: NodeId, to: NodeId) -> usize {
        if !self.alive(before, to) {
            return 0;
        }
        if self.is_voter(node) {
            return 1;
        }
        let mut s = before.clone();
        self.fetch_round_trip(&mut s, node, to, false);
        let o = s.observers[node as usize - self.voters];
        1 + usize::from(o.leader.is_some_and(|l| l != to && self.alive(&s, l)))
    }

    /// How many voters (itself included) would grant `voter`'s pre-vote now.
    fn pre_vote_grants(&self, s: &State, voter: NodeId) -> usize {
        let v = &s.voters[voter as usize];
        let candidate = last_epoch_and_end_offset(&v.log);
        s.voters
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                *i == voter as usize || (r.alive && self.grants_pre_vote(r, v.epoch, candidate))
            })
            .count()
    }

    /// The leader of `voter`'s epoch that the other live voters of that epoch name in their
    /// (pre-)vote responses, if any.
    fn leader_named_to(&self, s: &State, voter: NodeId) -> Option<NodeId> {
        let epoch = s.voters[voter as usize].epoch;
        s.voters
            .iter()
            .enumerate()
            .filter(|(i, r)| *i != voter as usize && r.alive && r.epoch == epoch)
            .find_map(|(_, r)| r.leader)
    }

    fn resign(&self, s: &mut State, id: NodeId) {
        let v = &mut s.voters[id as usize];
        if v.state != QuorumStateKind::Leader {
            return;
        }
        v.state = QuorumStateKind::Resigned;
        v.hw = None;
        let epoch = v.epoch;
        for to in 0..self.voters as NodeId {
            if to != id {
                self.send(s, id, to, Body::EndQuorumEpoch { epoch });
            }
        }
    }

    /// Relabel voters so that equivalent states coincide (symmetry reduction over voter ids).
    pub fn canonical(&self, s: &State) -> State {
        let n = self.voters;
        let key = |i: usize| {
            let v = &s.voters[i];
            (
                v.state,
                v.epoch,
                v.log,
                v.hw,
                v.alive,
                v.votes.len(),
                v.voted_for == Some(i as NodeId),
            )
        };
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|i| key(*i));
        // Voters with equal keys can still differ in whom they name (votes, leader, messages):
        // try every order within each group of equals and keep the smallest fingerprint, so
        // every relabelling of a state has the same representative.
        let mut best: Option<(u64, State)> = None;
        let mut candidates = vec![order.clone()];
        let mut start = 0;
        while start < n {
            let mut end = start + 1;
            while end < n && key(order[end]) == key(order[start]) {
                end += 1;
            }
            if end - start > 1 {
                let mut grown = Vec::new();
                for c in &candidates {
                    for p in permutations(&c[start..end]) {
                        let mut c2 = c.clone();
                        c2[start..end].copy_from_slice(&p);
                        grown.push(c2);
                    }
                }
                candidates = grown;
            }
            start = end;
        }
        for order in candidates {
            let mut perm = [0 as NodeId; 8];
            for (i, p) in perm.iter_mut().enumerate() {
                *p = i as NodeId;
            }
            for (new, old) in order.iter().enumerate() {
                perm[*old] = new as NodeId;
            }
            let t = permute(s, &perm, n);
            let fp = crate::engine::fingerprint(&t);
            if best.as_ref().is_none_or(|(b, _)| fp < *b) {
                best = Some((fp, t));
            }
        }
        best.expect("at least one order").1
    }
}

fn permutations(items: &[usize]) -> Vec<Vec<usize>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, first);
            out.push(p);
        }
    }
    out
}

/// Whether delivering `m` to voter `v` is a no-op now and forever (epochs never go back, and a
/// voter is Candidate in an epoch only once). Such messages are removed from the network as
/// they arise: the states that differ only by them are the same protocol state.
fn inert(m: &Message, v: &Voter) -> bool {
    match m.body {
        Body::VoteResponse {
            pre_vote: false,
            epoch,
            granted,
        } => {
            epoch < v.epoch
                || (epoch == v.epoch
                    && (!granted
                        || v.state != QuorumStateKind::Candidate
                        || v.votes.contains(m.from)))
        }
        Body::BeginQuorumEpoch { epoch }
        | Body::EndQuorumEpoch { epoch }
        | Body::FetchResponse { epoch, .. } => epoch < v.epoch,
        _ => false,
    }
}

/// Whether `m` is a Fetch sent by `id` or a FetchResponse sent to it.
fn fetch_of(m: &Message, id: NodeId) -> bool {
    (m.from == id && matches!(m.body, Body::Fetch { .. }))
        || (m.to == id && matches!(m.body, Body::FetchResponse { .. }))
}

fn remove_at(net: &mut InlineVec<Message, MAX_NETWORK>, i: usize) {
    let mut out = InlineVec::new();
    for (j, m) in net.iter().enumerate() {
        if j != i {
            out.push(*m);
        }
    }
    *net = out;
}

/// A follower's or observer's log and HW after a FetchResponse: append the record at its LEO,
/// or truncate on a diverging epoch; the HW is the response's, capped at the new LEO
/// (`KafkaRaftClient.updateFollowerHighWatermark` takes the smaller of the two: a follower
/// cannot have committed records it does not hold).
pub fn follower_fetch_response(
    log: &InlineVec<Record, MAX_LOG>,
    data: FetchData,
    hw: Option<Offset>,
    bound_hw_by_leo: bool,
) -> (InlineVec<Record, MAX_LOG>, Option<Offset>) {
    let mut log = *log;
    match data {
        FetchData::Record { record } => {
            if log.len() < MAX_LOG {
                log.push(record);
            }
        }
        FetchData::Diverging { epoch, end_offset } => {
            let to = truncation_offset(&log, (epoch, end_offset));
            log.truncate(to as usize);
            return (log, None);
        }
        FetchData::Empty | FetchData::NotLeader => {}
    }
    let leo = log.len() as Offset;
    if !bound_hw_by_leo {
        return (log, hw);
    }
    (log, hw.map(|h| h.min(leo)))
}

/// Rename every voter `i` to `perm[i]` (node ids of brokers are unchanged).
pub fn permute(s: &State, perm: &[NodeId; 8], voters: usize) -> State {
    let p = |n: NodeId| perm[n as usize];
    let ps = |set: BrokerSet| {
        // Broker ids (>= voters) stay; voter ids move.
        let mut out = BrokerSet::default();
        for b in set.iter() {
            out = out.with(if (b as usize) < voters { p(b) } else { b });
        }
        out
    };
    let mut out = s.clone();
    for old in 0..voters {
        let mut v = s.voters[old];
        v.voted_for = v.voted_for.map(p);
        v.leader = v.leader.map(p);
        v.votes = ps(v.votes);
        let mut ends = [0; MAX_VOTERS];
        for i in 0..voters {
            ends[p(i as NodeId) as usize] = v.end_offsets[i];
        }
        v.end_offsets = ends;
        out.voters[p(old as NodeId) as usize] = v;
    }
    for o in out.observers.iter_mut() {
        o.leader = o.leader.map(p);
    }
    let mut net: InlineVec<Message, MAX_NETWORK> = InlineVec::new();
    for m in s.network.iter() {
        let mut m = *m;
        m.from = p(m.from);
        m.to = p(m.to);
        if let Body::FetchResponse { leader, .. } = &mut m.body {
            *leader = leader.map(p);
        }
        net.push(m);
    }
    net.sort_unstable();
    out.network = net;
    for e in out.epoch_leaders.iter_mut() {
        *e = ps(*e);
    }
    out
}

impl Model for Kraft {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![self.initial_state()]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        self.actions_into(s, actions)
    }

    fn next_state(&self, s: &State, action: Action) -> Option<State> {
        let next = self.step(s, action)?;
        (next != *s).then_some(next)
    }
}

// ---- invariants -------------------------------------------------------------------------

/// At most one voter became leader in each epoch.
pub fn election_safety(s: &State) -> bool {
    s.epoch_leaders.iter().all(|l| l.len() <= 1)
}

fn all_logs(s: &State) -> impl Iterator<Item = &[Record]> {
    s.voters
        .iter()
        .map(|v| &v.log[..])
        .chain(s.observers.iter().map(|o| &o.log[..]))
}

/// Two logs holding a record of the same epoch at an offset agree on everything up to it.
pub fn log_matching(s: &State) -> bool {
    let logs: Vec<&[Record]> = all_logs(s).collect();
    logs.iter().enumerate().all(|(i, a)| {
        logs[i + 1..].iter().all(|b| {
            (0..a.len().min(b.len())).all(|o| a[o].epoch != b[o].epoch || a[..=o] == b[..=o])
        })
    })
}

/// Every live leader of epoch e holds every record committed by a leader of an earlier epoch.
pub fn leader_completeness(s: &State) -> bool {
    s.voters
        .iter()
        .filter(|v| v.alive && v.state == QuorumStateKind::Leader)
        .all(|v| {
            s.committed
                .iter()
                .enumerate()
                .all(|(o, (r, by))| *by >= v.epoch || v.log.get(o) == Some(r))
        })
}

/// A committed record is never replaced (no leader commits a different record at its offset)
/// and a majority of voters keeps holding every committed record.
pub fn no_committed_data_loss(m: &Kraft, s: &State) -> bool {
    if s.commit_conflict {
        return false;
    }
    let n = s.committed.len();
    let holding = s
        .voters
        .iter()
        .filter(|v| {
            v.log.len() >= n
                && v.log[..n]
                    .iter()
                    .zip(s.committed.iter())
                    .all(|(a, (b, _))| a == b)
        })
        .count();
    holding >= m.majority()
}

/// No node's HW ever goes below a HW it had before (a restart makes it unknown, not lower).
pub fn hw_monotonic(s: &State) -> bool {
    !s.hw_regressed
}

/// One node's HW moved from `old` to `new`: whether it went below what the node knew before.
/// An HW that becomes unknown is remembered in `floor` until the node learns one again.
/// Generic over the offset type: trace validation (`kcheck conform`) runs it on the real
/// controllers' 64-bit offsets.
pub fn track_hw<O: Ord + Copy + Default>(old: Option<O>, new: Option<O>, floor: &mut O) -> bool {
    match (old, new) {
        (Some(a), Some(b)) => b < a,
        (Some(a), None) => {
            *floor = (*floor).max(a);
            false
        }
        (None, Some(b)) => {
            let regressed = b < *floor;
            *floor = O::default();
            regressed
        }
        (None, None) => false,
    }
}

/// Every live voter's quorum state is one `QuorumState` allows (Kafka throws
/// IllegalStateException on the others): a Follower's leader is another voter, a Leader leads
/// itself, a Candidate voted for itself and knows no leader, a Voted voter holds its vote.
pub fn valid_quorum_state(s: &State) -> bool {
    s.voters.iter().enumerate().all(|(i, v)| {
        let id = i as NodeId;
        !v.alive
            || match v.state {
                QuorumStateKind::Follower => v.leader.is_some_and(|l| l != id),
                QuorumStateKind::Leader => v.leader == Some(id),
                QuorumStateKind::Candidate => v.voted_for == Some(id) && v.leader.is_none(),
                QuorumStateKind::Voted => v.voted_for.is_some(),
                _ => true,
            }
    })
}

/// Every broker's applied records are a prefix of the committed log.
pub fn observer_prefix(s: &State) -> bool {
    s.observers.iter().all(|o| {
        o.applied.len() <= s.committed.len()
            && o.applied
                .iter()
                .zip(s.committed.iter())
                .all(|(a, (c, _))| a == c)
    })
}

/// HW ≤ LEO on every node, and a follower's HW never exceeds the committed log.
pub fn hw_within_log(s: &State) -> bool {
    s.voters
        .iter()
        .map(|v| (v.hw, v.log.len()))
        .chain(s.observers.iter().map(|o| (o.hw, o.log.len())))
        .all(|(hw, leo)| hw.is_none_or(|h| h as usize <= leo && h as usize <= s.committed.len()))
}

fn leader_electable_goal(m: &Kraft, s: &State) -> bool {
    let top = s
        .voters
        .iter()
        .filter(|v| v.alive)
        .map(|v| v.epoch)
        .max()
        .unwrap_or(0);
    s.voters
        .iter()
        .filter(|v| v.alive)
        .any(|v| v.state == QuorumStateKind::Leader && v.epoch == top)
        || s.voters.iter().any(|v| v.epoch >= m.max_epoch)
}

fn no_faults(a: &Action) -> bool {
    !matches!(
        a,
        Action::Crash { .. }
            | Action::Drop { .. }
            | Action::Duplicate { .. }
            | Action::FetchResponseLost { .. }
    )
}

impl KcheckModel for Kraft {
    const NAME: &'static str = "kraft";
    const ABOUT: &'static str =
        "the KRaft controller quorum (KIP-595, KIP-996) and brokers applying __cluster_metadata";

    fn bounds() -> &'static [Bound] {
        BOUNDS
    }

    fn bug_flags() -> &'static [BugFlag] {
        BUG_FLAGS
    }

    fn from_config(config: &Config) -> Self {
        Kraft {
            voters: config.bound("voters") as usize,
            observers: config.bound("brokers") as usize,
            max_epoch: config.bound("epochs") as LeaderEpoch,
            max_records: config.bound("records") as u8,
            max_crashes: config.bound("crashes") as u8,
            max_network: config.bound("network") as usize,
            max_duplicates: config.bound("duplicates") as u8,
            bugs: config.bugs(&KraftBug::ALL, KraftBug::name),
        }
    }

    fn named_properties() -> Vec<Property<Self>> {
        vec![
            Property::always(
                "election-safety",
                "at most one voter becomes leader in each epoch",
                |_, s| election_safety(s),
            ),
            Property::always(
                "log-matching",
                "two logs with a record of the same epoch at an offset agree up to that offset",
                |_, s| log_matching(s),
            ),
            Property::always(
                "leader-completeness",
                "a leader holds every record committed in an earlier epoch",
                |_, s| leader_completeness(s),
            ),
            Property::always(
                "no-committed-data-loss",
                "a committed metadata record is never removed from a majority or replaced",
                no_committed_data_loss,
            ),
            Property::always(
                "hw-monotonic",
                "no HW goes backwards: a node's never decreases, a new leader's is not below the committed log, a broker's survives its restart",
                |_, s| hw_monotonic(s),
            ),
            Property::always(
                "observer-prefix",
                "every broker's applied metadata image comes from a prefix of the committed log",
                |_, s| observer_prefix(s),
            ),
            Property::always(
                "hw-within-log",
                "every HW is at most the node's LEO and covers only committed records",
                |_, s| hw_within_log(s),
            ),
            Property::always(
                "valid-quorum-state",
                "every live voter's quorum state is one Kafka allows: a follower follows another voter, a leader leads itself, a candidate voted for itself, a voted voter holds its vote",
                |_, s| valid_quorum_state(s),
            ),
            Property::sometimes(
                "metadata-committed-after-failover",
                "non-vacuity: a record written after a failover (epoch 2 or later) is committed, and applied by every broker",
                |_, s: &State| {
                    s.committed.iter().any(|(r, _)| r.epoch >= 2)
                        && s.observers
                            .iter()
                            .all(|o| o.applied.iter().any(|r| r.epoch >= 2))
                },
            ),
            Property::always_can_reach(
                "leader-electable",
                "once faults stop, a leader of the highest epoch can still be elected (or the epoch bound is spent)",
                leader_electable_goal,
                no_faults,
            ),
        ]
    }

    fn representative(&self, s: &State) -> State {
        self.canonical(s)
    }

    fn describe_action(&self, s: &State, action: &Action) -> String {
        let n = |id: NodeId| self.name(id);
        match *action {
            Action::Timeout { node } => {
                if !self.is_voter(node) {
                    return format!(
                        "{}'s fetch timer expires: it looks for the leader again",
                        n(node)
                    );
                }
                let v = &s.voters[node as usize];
                match v.state {
                    QuorumStateKind::Prospective => format!(
                        "{}'s pre-vote times out: back to {}",
                        n(node),
                        if v.leader.is_some_and(|l| l != node) {
                            "follower"
                        } else {
                            "waiting"
                        }
                    ),
                    QuorumStateKind::Follower => format!(
                        "{}'s fetch timer expires: it becomes prospective in epoch {}",
                        n(node),
                        v.epoch
                    ),
                    _ => format!(
                        "{}'s election timer expires: it becomes prospective in epoch {}",
                        n(node),
                        v.epoch
                    ),
                }
            }
            Action::Deliver { message } => format!("deliver {}", self.describe_message(&message)),
            Action::Duplicate { message } => {
                format!("deliver a duplicate of {}", self.describe_message(&message))
            }
            Action::Drop { message } => {
                format!("the network loses {}", self.describe_message(&message))
            }
            Action::SendFetch { node, to } => {
                let log = if self.is_voter(node) {
                    s.voters[node as usize].log
                } else {
                    s.observers[node as usize - self.voters].log
                };
                let (e, o) = last_epoch_and_end_offset(&log);
                format!(
                    "{} sends Fetch(offset {o}, last fetched epoch {e}) to {}{}",
                    n(node),
                    n(to),
                    if self.is_voter(node) {
                        ", which answers"
                    } else {
                        " and applies the answer"
                    }
                )
            }
            Action::FetchResponseLost { node, to } => {
                let (e, o) = last_epoch_and_end_offset(&s.voters[node as usize].log);
                format!(
                    "{} sends Fetch(offset {o}, last fetched epoch {e}) to {}, whose answer the network loses",
                    n(node),
                    n(to)
                )
            }
            Action::ResendVote { voter, to } => {
                format!("{} resends its vote request to {}", n(voter), n(to))
            }
            Action::ResendBeginQuorumEpoch { voter, to } => {
                format!("leader {} resends BeginQuorumEpoch to {}", n(voter), n(to))
            }
            Action::ControllerAppend { voter, record } => format!(
                "active controller {} appends {} in epoch {}",
                n(voter),
                self.describe_body(&record),
                s.voters[voter as usize].epoch
            ),
            Action::Resign { voter } => format!(
                "leader {} resigns (shutdown or check-quorum timeout) and sends EndQuorumEpoch",
                n(voter)
            ),
            Action::PreVote { voter } => {
                let epoch = s.voters[voter as usize].epoch;
                if self.pre_vote_grants(s, voter) >= self.majority() {
                    format!(
                        "{} wins its pre-vote and becomes candidate for epoch {}",
                        n(voter),
                        epoch + 1
                    )
                } else {
                    let l = self.leader_named_to(s, voter).unwrap_or(voter);
                    format!(
                        "{}'s pre-vote is rejected by voters that name {} leader of epoch {epoch}: it follows {}",
                        n(voter),
                        n(l),
                        n(l)
                    )
                }
            }
            Action::Crash { node } => format!("{} crashes", n(node)),
            Action::Restart { node } => format!("{} restarts", n(node)),
        }
    }

    fn describe_state(&self, s: &State) -> Vec<String> {
        let mut lines = Vec::new();
        for (i, v) in s.voters.iter().enumerate() {
            let state = if v.alive { v.state.name() } else { "down" };
            lines.push(format!(
                "c{i} {:<11} epoch={} voted={} leader={} log={} LEO={} HW={}",
                state,
                v.epoch,
                v.voted_for.map_or("-".into(), |x| self.name(x)),
                v.leader.map_or("-".into(), |x| self.name(x)),
                self.log_text(&v.log),
                v.leo(),
                v.hw.map_or("?".to_string(), |h| h.to_string()),
            ));
        }
        for (i, o) in s.observers.iter().enumerate() {
            let id = (self.voters + i) as NodeId;
            let image = MetadataImage::of(&o.applied);
            lines.push(format!(
                "{} {:<11} epoch={} leader={} log={} HW={} applied={} image: registered={:?} unfenced={:?} partition leader={} epoch {}",
                self.name(id),
                if o.alive { "observer" } else { "down" },
                o.epoch,
                o.leader.map_or("-".into(), |x| self.name(x)),
                self.log_text(&o.log),
                o.hw.map_or("?".to_string(), |h| h.to_string()),
                o.applied.len(),
                image.registered,
                image.unfenced,
                image.partition_leader.map_or("-".into(), |x| self.name(x)),
                image.partition_leader_epoch,
            ));
        }
        let committed: Vec<Record> = s.committed.iter().map(|(r, _)| *r).collect();
        lines.push(format!("committed={}", self.log_text(&committed)));
        let net: Vec<String> = s.network.iter().map(|m| self.describe_message(m)).collect();
        lines.push(format!("network: [{}]", net.join("; ")));
        lines
    }
}

impl Kraft {
    fn describe_body(&self, r: &MetadataRecord) -> String {
        match *r {
            MetadataRecord::LeaderChange => "LeaderChange".into(),
            MetadataRecord::RegisterBroker { broker } => {
                format!("RegisterBroker({})", self.name(broker))
            }
            MetadataRecord::UnfenceBroker { broker } => {
                format!("UnfenceBroker({})", self.name(broker))
            }
            MetadataRecord::FenceBroker { broker } => format!("FenceBroker({})", self.name(broker)),
            MetadataRecord::PartitionChange {
                leader,
                leader_epoch,
                isr,
            } => format!(
                "PartitionChange(leader={} leader-epoch={leader_epoch} ISR={isr:?})",
                self.name(leader)
            ),
        }
    }

    fn log_text(&self, log: &[Record]) -> String {
        let items: Vec<String> = log
            .iter()
            .map(|r| format!("{}@e{}", self.describe_body(&r.body), r.epoch))
            .collect();
        format!("[{}]", items.join(" "))
    }

    fn describe_message(&self, m: &Message) -> String {
        let route = format!("{}→{}", self.name(m.from), self.name(m.to));
        match m.body {
            Body::Vote {
                pre_vote,
                epoch,
                last_epoch,
                end_offset,
            } => format!(
                "{}(epoch {epoch}, last epoch {last_epoch}, end offset {end_offset}) {route}",
                if pre_vote { "PreVote" } else { "Vote" }
            ),
            Body::VoteResponse {
                pre_vote,
                epoch,
                granted,
            } => format!(
                "{}Response(epoch {epoch}, {}) {route}",
                if pre_vote { "PreVote" } else { "Vote" },
                if granted { "granted" } else { "rejected" }
            ),
            Body::BeginQuorumEpoch { epoch } => format!("BeginQuorumEpoch(epoch {epoch}) {route}"),
            Body::EndQuorumEpoch { epoch } => format!("EndQuorumEpoch(epoch {epoch}) {route}"),
            Body::Fetch {
                epoch,
                fetch_offset,
                last_fetched_epoch,
            } => format!("Fetch(epoch {epoch}, offset {fetch_offset}, last fetched epoch {last_fetched_epoch}) {route}"),
            Body::FetchResponse {
                epoch,
                leader,
                fetch_offset,
                data,
                hw,
            } => {
                let what = match data {
                    FetchData::Empty => "no records".to_string(),
                    FetchData::Record { record } => format!(
                        "{}@e{}",
                        self.describe_body(&record.body),
                        record.epoch
                    ),
                    FetchData::Diverging { epoch, end_offset } => {
                        format!("diverging epoch {epoch} ends at {end_offset}")
                    }
                    FetchData::NotLeader => format!(
                        "NOT_LEADER (leader {})",
                        leader.map_or("unknown".into(), |l| self.name(l))
                    ),
                };
                format!(
                    "FetchResponse(epoch {epoch}, offset {fetch_offset}, {what}, HW {}) {route}",
                    hw.map_or("?".to_string(), |h| h.to_string())
                )
            }
        }
    }
}

impl fmt::Display for QuorumStateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: LeaderEpoch) -> Record {
        Record {
            epoch,
            body: MetadataRecord::LeaderChange,
        }
    }

    #[test]
    fn vote_granting_compares_last_epoch_then_end_offset() {
        assert!(candidate_log_is_up_to_date((2, 1), (1, 5)));
        assert!(candidate_log_is_up_to_date((2, 3), (2, 3)));
        assert!(!candidate_log_is_up_to_date((2, 2), (2, 3)));
        assert!(!candidate_log_is_up_to_date((1, 9), (2, 1)));
    }

    #[test]
    fn diverging_epoch_and_truncation_follow_kafka() {
        let leader = [rec(1), rec(1), rec(3)];
        // On the leader's log: no divergence.
        assert_eq!(diverging_epoch(&leader, 2, 1), None);
        assert_eq!(diverging_epoch(&leader, 3, 3), None);
        assert_eq!(diverging_epoch(&leader, 0, 0), None);
        // The follower wrote offset 2 in epoch 2, which the leader never had.
        let follower = [rec(1), rec(1), rec(2)];
        assert_eq!(diverging_epoch(&leader, 3, 2), Some((1, 2)));
        assert_eq!(truncation_offset(&follower, (1, 2)), 2);
        // The follower has more of epoch 1 than the leader.
        let follower = [rec(1), rec(1), rec(1)];
        assert_eq!(
            diverging_epoch(&[rec(1), rec(1), rec(3)], 3, 1),
            Some((1, 2))
        );
        assert_eq!(truncation_offset(&follower, (1, 2)), 2);
        // A follower with no epoch at or below the diverging one truncates to its start.
        assert_eq!(truncation_offset(&[rec(2)], (1, 1)), 0);
    }
}
