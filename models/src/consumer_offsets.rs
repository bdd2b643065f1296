//! Consumer groups and committed offsets: the classic (pre-KIP-848) group protocol with eager
//! rebalancing, a group coordinator that stores committed offsets durably (as the
//! `__consumer_offsets` topic does), and consumers that poll up to the HW, process and commit.
//! See `specs/consumer-offsets.md`.
//!
//! What the model follows from Apache Kafka:
//! * JoinGroup / SyncGroup: a rebalance moves the group to PreparingRebalance, waits until every
//!   known member has rejoined (members that do not are removed by their session or rebalance
//!   timeout), then bumps the generation id and installs the leader's assignment;
//! * eager rebalancing: a member revokes all its partitions before it rejoins, and a member
//!   starts a newly assigned partition at the committed offset (OffsetFetch; earliest when none);
//! * the coordinator's OffsetCommit check: UNKNOWN_MEMBER_ID for a member id it no longer has,
//!   ILLEGAL_GENERATION for an older generation id; commits from current members are accepted
//!   during PreparingRebalance (that is what `onPartitionsRevoked` relies on);
//! * session expiry is a nondeterministic action: for a crashed consumer it is the session
//!   timeout doing its job; for a live one (GC pause, partition, `max.poll.interval.ms`) it makes
//!   a zombie, a member of an old generation that keeps fetching, processing and committing.
//!
//! Ghost (history) variables the invariants read, never seen by consumers or the coordinator:
//! `processed` (which offsets some consumer's application has processed), `max_committed` (the
//! highest offset ever committed per partition: the committed history as far as monotonicity
//! needs it), `zombie_commit` (a commit from someone other than the partition's owner in the
//! current generation changed its committed offset) and `duplicate` (some offset was processed
//! twice).

use crate::catalog::{Bound, BugFlag, Config, KcheckModel};
use crate::property::Property;
use crate::replication::Offset;
use serde::{Deserialize, Serialize};
use stateright::Model;
use std::fmt;

/// A consumer's member id: its slot in the model. A restarted consumer joins with a fresh
/// member id in Kafka; the model reuses the slot only once the coordinator has forgotten the old
/// one (see `Action::Restart`), so the slot names exactly one live member id at a time.
pub type MemberId = u8;
/// The group's generation id, bumped by every completed rebalance.
pub type Generation = u8;
pub type PartitionId = u8;

/// The most consumers a state can hold.
pub const MAX_CONSUMERS: usize = 4;
/// The most partitions of the subscribed topic (assignments are bit sets, actions carry arrays).
pub const MAX_PARTITIONS: usize = 3;
/// The most records per partition (`processed` is a `u8` bit set over offsets).
pub const MAX_RECORDS: usize = 8;

/// A set of member ids (group membership, rejoined members, a partition's owners).
pub type MemberSet = crate::compact::IdSet<'c'>;

/// A set of partitions of the subscribed topic (a member's assignment).
#[derive(Clone, Copy, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct PartitionSet(pub u8);

impl PartitionSet {
    pub fn contains(self, p: PartitionId) -> bool {
        self.0 & (1 << p) != 0
    }
    pub fn with(self, p: PartitionId) -> Self {
        PartitionSet(self.0 | (1 << p))
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn intersects(self, o: PartitionSet) -> bool {
        self.0 & o.0 != 0
    }
    pub fn iter(self) -> impl Iterator<Item = PartitionId> {
        (0..8u8).filter(move |p| self.contains(*p))
    }
}

impl fmt::Debug for PartitionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<String> = self.iter().map(|p| format!("p{p}")).collect();
        write!(f, "{{{}}}", ids.join(","))
    }
}

/// The classic group state machine. CompletingRebalance (waiting for the leader's SyncGroup) is
/// folded into `CompleteJoin`, which installs the leader's assignment in the same step.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupState {
    #[default]
    Empty,
    PreparingRebalance,
    Stable,
}

/// What the group coordinator owns: group metadata and the committed offsets it writes to
/// `__consumer_offsets` (durable: a coordinator failover reloads them, so the model keeps them
/// across everything).
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub struct Coordinator {
    pub generation: Generation,
    pub state: GroupState,
    /// Member ids the coordinator knows (each has a live session as far as it can tell).
    pub members: MemberSet,
    /// Members whose JoinGroup arrived during the current PreparingRebalance.
    pub joined: MemberSet,
    /// The current generation's assignment: the owners of each partition.
    pub assignment: [MemberSet; MAX_PARTITIONS],
    /// The committed offset of each partition: the next offset the group has to process.
    pub committed: [Offset; MAX_PARTITIONS],
    /// Partitions with a committed offset at all; OffsetFetch of the others answers "none" and
    /// the consumer falls back to `auto.offset.reset`. Tracked only under
    /// `auto-offset-reset-latest`: with `earliest`, "none" positions a consumer at 0 like a
    /// committed 0 does.
    pub has_committed: PartitionSet,
}

/// Where a consumer process is in the group protocol, as the consumer itself believes.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConsumerStatus {
    /// Crashed: no process, no memory.
    #[default]
    Down,
    /// Running, not a member (just started, or told UNKNOWN_MEMBER_ID / ILLEGAL_GENERATION).
    Unjoined,
    /// JoinGroup sent; waiting for the rebalance to complete and for its SyncGroup answer.
    Joining,
    /// Has an assignment for `generation` and consumes it. A zombie is a `Stable` consumer whose
    /// generation the coordinator has moved past: it does not know yet.
    Stable,
}

/// What one consumer process holds in memory (all lost in a crash).
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Consumer {
    pub status: ConsumerStatus,
    /// The generation id it got from JoinGroup (meaningful when `Stable`).
    pub generation: Generation,
    pub assigned: PartitionSet,
    /// The fetch position per partition: the next offset `poll()` returns.
    pub position: [Offset; MAX_PARTITIONS],
    /// The next offset the application processes: records in `[processed_upto, position)` were
    /// returned by `poll()` and are not processed yet.
    pub processed_upto: [Offset; MAX_PARTITIONS],
}

impl Consumer {
    fn running() -> Self {
        Consumer {
            status: ConsumerStatus::Unjoined,
            ..Consumer::default()
        }
    }

    /// Between two `poll()` calls: everything the last poll returned is processed. Rebalances
    /// (JoinGroup, SyncGroup, a heartbeat's error) happen inside `poll()`, so only here.
    pub fn at_poll_boundary(&self) -> bool {
        self.position == self.processed_upto
    }

    /// Drop the assignment and the in-memory positions and become `status`.
    fn reset(&mut self, status: ConsumerStatus) {
        *self = Consumer {
            status,
            ..Consumer::default()
        };
    }

    /// Whether it still has offset `o` of partition `p` to process.
    pub fn holds_unprocessed(&self, p: PartitionId, o: Offset) -> bool {
        self.status != ConsumerStatus::Down
            && self.processed_upto[p as usize] <= o
            && o < self.position[p as usize]
    }
}

/// The model's whole state.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct State {
    pub coordinator: Coordinator,
    pub consumers: [Consumer; MAX_CONSUMERS],
    /// Each partition's high watermark: a producer appends and the partition's replicas commit
    /// records (the `replication` model covers how); consumers fetch only below it.
    pub hw: [Offset; MAX_PARTITIONS],
    /// Ghost: bit `o` of `processed[p]` is set once some consumer processed offset `o` of `p`.
    pub processed: [u8; MAX_PARTITIONS],
    /// Ghost: the highest offset ever committed per partition.
    pub max_committed: [Offset; MAX_PARTITIONS],
    /// Ghost: an OffsetCommit changed the committed offset of a partition although the
    /// committer was not its owner in the current generation (an older generation's zombie).
    pub zombie_commit: bool,
    /// Ghost: some offset was processed twice (at-least-once allows it).
    pub duplicate: bool,
    pub crashes: u8,
    pub expiries: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// A record is appended to `partition` and replicated: its HW grows by one.
    Produce { partition: PartitionId },
    /// The consumer sends JoinGroup: as a new member, or (eager) after revoking its partitions
    /// because its heartbeat answered REBALANCE_IN_PROGRESS.
    JoinGroup { member: MemberId },
    /// Every member has rejoined: the coordinator bumps the generation and installs the
    /// leader's assignment (`owners[p]`: the members `p` is assigned to).
    CompleteJoin { owners: [MemberSet; MAX_PARTITIONS] },
    /// The consumer gets its SyncGroup answer: its assignment, then OffsetFetch positions it at
    /// the committed offsets; or UNKNOWN_MEMBER_ID when it was removed meanwhile.
    SyncGroup { member: MemberId },
    /// `poll()` fetches `partition` from the position up to the HW.
    Fetch {
        member: MemberId,
        partition: PartitionId,
    },
    /// The application processes the next record `poll()` returned from `partition`.
    Process {
        member: MemberId,
        partition: PartitionId,
    },
    /// The application calls `commitSync()` for its assigned partitions.
    Commit { member: MemberId },
    /// `enable.auto.commit`: the timer commits the consumer's positions (`auto-commit` only).
    AutoCommit { member: MemberId },
    /// A heartbeat answered UNKNOWN_MEMBER_ID or ILLEGAL_GENERATION: the consumer learns it was
    /// fenced, loses its partitions (`onPartitionsLost`) and must rejoin.
    Heartbeat { member: MemberId },
    /// The consumer process dies, losing its positions and its unprocessed records.
    Crash { member: MemberId },
    /// The consumer process starts again, once the coordinator has forgotten its old member id.
    Restart { member: MemberId },
    /// The session of a crashed consumer times out (`session.timeout.ms`): removed, rebalance.
    SessionTimeout { member: MemberId },
    /// The session of a *live* consumer expires (heartbeats delayed by a GC pause or a network
    /// partition, or `max.poll.interval.ms` exceeded, or it missed the rebalance timeout): it
    /// is removed and keeps running as a zombie. A fault, bounded by `expiries`.
    ExpireLiveSession { member: MemberId },
}

/// The bugs this model can switch on (see `BUG_FLAGS` for their sources).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OffsetsBug {
    CommitBeforeProcess,
    NoGenerationFencing,
    AutoCommit,
    OverlappingAssignment,
    AutoOffsetResetLatest,
}

impl OffsetsBug {
    pub fn name(self) -> &'static str {
        match self {
            OffsetsBug::CommitBeforeProcess => "commit-before-process",
            OffsetsBug::NoGenerationFencing => "no-generation-fencing",
            OffsetsBug::AutoCommit => "auto-commit",
            OffsetsBug::OverlappingAssignment => "overlapping-assignment",
            OffsetsBug::AutoOffsetResetLatest => "auto-offset-reset-latest",
        }
    }
    pub const ALL: [OffsetsBug; 5] = [
        OffsetsBug::CommitBeforeProcess,
        OffsetsBug::NoGenerationFencing,
        OffsetsBug::AutoCommit,
        OffsetsBug::OverlappingAssignment,
        OffsetsBug::AutoOffsetResetLatest,
    ];
}

static BUG_FLAGS: &[BugFlag] = &[
    BugFlag {
        name: "commit-before-process",
        meaning: "the application commits what poll() returned before processing it (at-most-once)",
        source: "Kafka consumer docs: delivery semantics (at-most-once vs at-least-once)",
        violates: "at-least-once",
    },
    BugFlag {
        name: "no-generation-fencing",
        meaning: "OffsetCommit without the UNKNOWN_MEMBER_ID / ILLEGAL_GENERATION checks: zombies commit",
        source: "GroupCoordinator OffsetCommit checks (UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION); KIP-62 (max.poll.interval.ms zombies)",
        violates: "no-zombie-commit",
    },
    BugFlag {
        name: "auto-commit",
        meaning: "enable.auto.commit: a timer commits the positions, independent of processing",
        source: "Kafka consumer docs: enable.auto.commit, auto.commit.interval.ms",
        violates: "at-least-once",
    },
    BugFlag {
        name: "overlapping-assignment",
        meaning: "mutation: the leader's assignor gives a partition to two members (the classic coordinator does not validate SyncGroup)",
        source: "mutation; KIP-848 moves assignment to the coordinator",
        violates: "exclusive-ownership-per-generation",
    },
    BugFlag {
        name: "auto-offset-reset-latest",
        meaning: "auto.offset.reset=latest (Kafka's default): a partition without a committed offset starts at the log end",
        source: "Kafka consumer docs: auto.offset.reset",
        violates: "at-least-once",
    },
];

static BOUNDS: &[Bound] = &[
    Bound {
        name: "consumers",
        meaning: "consumer processes in the group",
        default: 2,
        release: 3,
        // A zombie needs someone to take its partitions over (`zombie-overlaps-new-owner`).
        min: 2,
        max: MAX_CONSUMERS as u32,
    },
    Bound {
        name: "partitions",
        meaning: "partitions of the subscribed topic",
        default: 2,
        release: 2,
        min: 1,
        max: MAX_PARTITIONS as u32,
    },
    Bound {
        name: "records",
        meaning: "records produced to each partition",
        default: 2,
        release: 2,
        min: 1,
        max: MAX_RECORDS as u32,
    },
    Bound {
        name: "crashes",
        meaning: "consumer process crashes",
        default: 1,
        release: 1,
        min: 0,
        max: 4,
    },
    Bound {
        name: "expiries",
        meaning: "sessions of live consumers that expire (zombies)",
        default: 1,
        release: 1,
        // The non-vacuity properties need a zombie.
        min: 1,
        max: 4,
    },
];

/// The consumer-offsets model with its configuration.
#[derive(Clone, Debug)]
pub struct ConsumerOffsets {
    pub consumers: usize,
    pub partitions: usize,
    pub max_records: Offset,
    pub max_crashes: u8,
    pub max_expiries: u8,
    pub bugs: Vec<OffsetsBug>,
}

impl ConsumerOffsets {
    pub fn has(&self, bug: OffsetsBug) -> bool {
        self.bugs.contains(&bug)
    }

    /// Every consumer is running and unjoined, the group is empty at generation 0, nothing is
    /// produced or committed.
    pub fn initial_state(&self) -> State {
        let mut consumers = [Consumer::default(); MAX_CONSUMERS];
        for c in consumers.iter_mut().take(self.consumers) {
            *c = Consumer::running();
        }
        State {
            coordinator: Coordinator::default(),
            consumers,
            hw: [0; MAX_PARTITIONS],
            processed: [0; MAX_PARTITIONS],
            max_committed: [0; MAX_PARTITIONS],
            zombie_commit: false,
            duplicate: false,
            crashes: 0,
            expiries: 0,
        }
    }

    fn member_ids(&self) -> impl Iterator<Item = MemberId> {
        0..self.consumers as MemberId
    }

    fn partition_ids(&self) -> impl Iterator<Item = PartitionId> {
        0..self.partitions as PartitionId
    }

    /// Whether member `m`'s requests carry the coordinator's current member id and generation.
    fn is_current(s: &State, m: MemberId) -> bool {
        let c = &s.consumers[m as usize];
        s.coordinator.members.contains(m) && c.generation == s.coordinator.generation
    }

    /// The coordinator forgets member `m` (session or rebalance timeout) and rebalances.
    fn remove_member(s: &mut State, m: MemberId) {
        let g = &mut s.coordinator;
        g.members = g.members.without(m);
        g.joined = g.joined.without(m);
        if g.state == GroupState::Stable {
            g.state = GroupState::PreparingRebalance;
            g.joined = MemberSet::default();
        }
    }

    /// Every assignment the leader may send: each partition to one member of `joined` (or, with
    /// `overlapping-assignment`, to any non-empty set of them). Kafka's assignors are pluggable,
    /// so the model lets the leader choose freely, which also keeps the model symmetric in
    /// member ids (range and round-robin order members by id).
    fn assignments(&self, joined: MemberSet) -> Vec<[MemberSet; MAX_PARTITIONS]> {
        let choices: Vec<MemberSet> = if self.has(OffsetsBug::OverlappingAssignment) {
            (1..=joined.0)
                .filter(|bits| bits & !joined.0 == 0)
                .map(MemberSet::from_bits)
                .collect()
        } else {
            joined.iter().map(MemberSet::single).collect()
        };
        let mut out = vec![[MemberSet::default(); MAX_PARTITIONS]];
        for p in self.partition_ids() {
            out = out
                .into_iter()
                .flat_map(|a| {
                    choices.iter().map(move |c| {
                        let mut a = a;
                        a[p as usize] = *c;
                        a
                    })
                })
                .collect();
        }
        out
    }

    /// The offsets an OffsetCommit from `m` carries for each of its partitions.
    fn commit_offsets(&self, c: &Consumer, auto: bool) -> [Offset; MAX_PARTITIONS] {
        let positions = auto || self.has(OffsetsBug::CommitBeforeProcess);
        let mut out = [0; MAX_PARTITIONS];
        for p in c.assigned.iter() {
            out[p as usize] = if positions {
                c.position[p as usize]
            } else {
                c.processed_upto[p as usize]
            };
        }
        out
    }

    /// The coordinator handles an OffsetCommit from `m`: accepted (the offsets are written to
    /// `__consumer_offsets`) or rejected, in which case the consumer learns it was fenced.
    fn handle_commit(&self, s: &mut State, m: MemberId, auto: bool) {
        let c = s.consumers[m as usize];
        let current = Self::is_current(s, m);
        if current || self.has(OffsetsBug::NoGenerationFencing) {
            let offsets = self.commit_offsets(&c, auto);
            for p in c.assigned.iter() {
                let p = p as usize;
                let g = &s.coordinator;
                let owner = c.generation == g.generation && g.assignment[p].contains(m);
                if !owner && g.committed[p] != offsets[p] {
                    // Judged from the generation and the assignment, not from the membership
                    // check the coordinator makes: the ghost records the harm, whatever let
                    // the commit through.
                    s.zombie_commit = true;
                }
                s.coordinator.committed[p] = offsets[p];
                if self.has(OffsetsBug::AutoOffsetResetLatest) {
                    // With auto.offset.reset=earliest "no committed offset" and "committed
                    // offset 0" position a consumer alike: the model tells them apart only
                    // when the reset policy does, which keeps the correct state space small.
                    s.coordinator.has_committed =
                        s.coordinator.has_committed.with(p as PartitionId);
                }
                s.max_committed[p] = s.max_committed[p].max(offsets[p]);
            }
        } else {
            // UNKNOWN_MEMBER_ID / ILLEGAL_GENERATION: CommitFailedException. The consumer drops
            // its partitions and the records it has not processed; it rejoins on its next poll.
            s.consumers[m as usize].reset(ConsumerStatus::Unjoined);
        }
    }

    fn commit_label(&self, s: &State, m: MemberId) -> &'static str {
        if !s.coordinator.members.contains(m) {
            "UNKNOWN_MEMBER_ID"
        } else if s.consumers[m as usize].generation != s.coordinator.generation {
            "ILLEGAL_GENERATION"
        } else {
            "accepted"
        }
    }

    /// Relabel consumers so that equivalent states coincide (symmetry over member ids).
    pub fn canonical(&self, s: &State) -> State {
        let n = self.consumers;
        let g = &s.coordinator;
        let key = |m: usize| {
            let id = m as MemberId;
            let owns = (0..self.partitions).fold(0u8, |acc, p| {
                acc | (u8::from(g.assignment[p].contains(id)) << p)
            });
            (
                s.consumers[m],
                g.members.contains(id),
                g.joined.contains(id),
                owns,
            )
        };
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|m| key(*m));
        let mut perm = [0 as MemberId; MAX_CONSUMERS];
        for (new, old) in order.iter().enumerate() {
            perm[*old] = new as MemberId;
        }
        permute(s, &perm[..n])
    }
}

/// Rename every member `m` in the state to `perm[m]`.
pub fn permute(s: &State, perm: &[MemberId]) -> State {
    let mut out = s.clone();
    for (old, new) in perm.iter().enumerate() {
        out.consumers[*new as usize] = s.consumers[old];
    }
    let g = &mut out.coordinator;
    g.members = s.coordinator.members.permute(perm);
    g.joined = s.coordinator.joined.permute(perm);
    for p in 0..MAX_PARTITIONS {
        g.assignment[p] = s.coordinator.assignment[p].permute(perm);
    }
    out
}

impl Model for ConsumerOffsets {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![self.initial_state()]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        use ConsumerStatus::*;
        let g = &s.coordinator;
        for p in self.partition_ids() {
            if s.hw[p as usize] < self.max_records {
                actions.push(Action::Produce { partition: p });
            }
        }
        if g.state == GroupState::PreparingRebalance && g.joined == g.members {
            for owners in self.assignments(g.joined) {
                actions.push(Action::CompleteJoin { owners });
            }
        }
        for m in self.member_ids() {
            let c = &s.consumers[m as usize];
            let member = g.members.contains(m);
            let rejoin_needed =
                g.state == GroupState::PreparingRebalance && member && !g.joined.contains(m);
            match c.status {
                Down => {
                    if !member {
                        actions.push(Action::Restart { member: m });
                    } else {
                        actions.push(Action::SessionTimeout { member: m });
                    }
                }
                Unjoined => actions.push(Action::JoinGroup { member: m }),
                Joining => {
                    if rejoin_needed {
                        actions.push(Action::JoinGroup { member: m });
                    }
                    if !member || (g.state == GroupState::Stable) {
                        actions.push(Action::SyncGroup { member: m });
                    }
                }
                Stable => {
                    let boundary = c.at_poll_boundary();
                    if boundary && rejoin_needed && Self::is_current(s, m) {
                        actions.push(Action::JoinGroup { member: m });
                    }
                    if boundary && !Self::is_current(s, m) {
                        actions.push(Action::Heartbeat { member: m });
                    }
                    for p in c.assigned.iter() {
                        let i = p as usize;
                        if boundary && c.position[i] < s.hw[i] {
                            actions.push(Action::Fetch {
                                member: m,
                                partition: p,
                            });
                        }
                        if c.processed_upto[i] < c.position[i] {
                            actions.push(Action::Process {
                                member: m,
                                partition: p,
                            });
                        }
                    }
                    if !c.assigned.is_empty() {
                        actions.push(Action::Commit { member: m });
                        if self.has(OffsetsBug::AutoCommit) {
                            actions.push(Action::AutoCommit { member: m });
                        }
                    }
                }
            }
            if c.status != Down && s.crashes < self.max_crashes {
                actions.push(Action::Crash { member: m });
            }
            if c.status != Down && member && s.expiries < self.max_expiries {
                actions.push(Action::ExpireLiveSession { member: m });
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        use ConsumerStatus::*;
        let mut s = last.clone();
        match action {
            Action::Produce { partition } => s.hw[partition as usize] += 1,
            Action::JoinGroup { member } => {
                s.consumers[member as usize].reset(Joining);
                let g = &mut s.coordinator;
                if g.state != GroupState::PreparingRebalance {
                    g.state = GroupState::PreparingRebalance;
                    g.joined = MemberSet::default();
                }
                g.members = g.members.with(member);
                g.joined = g.joined.with(member);
            }
            Action::CompleteJoin { owners } => {
                let g = &mut s.coordinator;
                g.generation += 1;
                g.joined = MemberSet::default();
                g.assignment = owners;
                g.state = if g.members.is_empty() {
                    GroupState::Empty
                } else {
                    GroupState::Stable
                };
            }
            Action::SyncGroup { member } => {
                let g = s.coordinator;
                let c = &mut s.consumers[member as usize];
                if !g.members.contains(member) {
                    c.reset(Unjoined);
                } else {
                    c.status = Stable;
                    c.generation = g.generation;
                    for p in self.partition_ids() {
                        if g.assignment[p as usize].contains(member) {
                            c.assigned = c.assigned.with(p);
                            // OffsetFetch: start at the committed offset, or where
                            // auto.offset.reset says when there is none.
                            let start = if g.has_committed.contains(p)
                                || !self.has(OffsetsBug::AutoOffsetResetLatest)
                            {
                                g.committed[p as usize]
                            } else {
                                s.hw[p as usize]
                            };
                            c.position[p as usize] = start;
                            c.processed_upto[p as usize] = start;
                        }
                    }
                }
            }
            Action::Fetch { member, partition } => {
                let p = partition as usize;
                s.consumers[member as usize].position[p] = s.hw[p];
            }
            Action::Process { member, partition } => {
                let p = partition as usize;
                let c = &mut s.consumers[member as usize];
                let o = c.processed_upto[p];
                c.processed_upto[p] += 1;
                if s.processed[p] & (1 << o) != 0 {
                    s.duplicate = true;
                }
                s.processed[p] |= 1 << o;
            }
            Action::Commit { member } => self.handle_commit(&mut s, member, false),
            Action::AutoCommit { member } => self.handle_commit(&mut s, member, true),
            Action::Heartbeat { member } => s.consumers[member as usize].reset(Unjoined),
            Action::Crash { member } => {
                s.consumers[member as usize].reset(Down);
                s.crashes += 1;
            }
            Action::Restart { member } => s.consumers[member as usize].reset(Unjoined),
            Action::SessionTimeout { member } => Self::remove_member(&mut s, member),
            Action::ExpireLiveSession { member } => {
                Self::remove_member(&mut s, member);
                s.expiries += 1;
            }
        }
        (s != *last).then_some(s)
    }
}

// ---- invariants -------------------------------------------------------------------------

/// At-least-once: every offset below a partition's committed offset has been processed, or is
/// still held unprocessed by a running consumer that will process it. A record below the
/// committed offset that neither holds is lost: no future owner fetches below the committed
/// offset.
pub fn at_least_once(m: &ConsumerOffsets, s: &State) -> bool {
    (0..m.partitions).all(|p| {
        (0..s.coordinator.committed[p]).all(|o| {
            s.processed[p] & (1 << o) != 0
                || s.consumers[..m.consumers]
                    .iter()
                    .any(|c| c.holds_unprocessed(p as PartitionId, o))
        })
    })
}

/// Only an owner of a partition in the current generation moves its committed offset: no commit
/// of an older generation's member takes effect. The coordinator never checks ownership (only
/// member id and generation id), so this holds by the protocol, not by the check.
pub fn no_zombie_commit(s: &State) -> bool {
    !s.zombie_commit
}

/// Each partition's committed offset is the highest ever committed: it never moved back.
pub fn committed_offset_monotonic(s: &State) -> bool {
    s.coordinator.committed == s.max_committed
}

/// No two consumers that believe they are in the same generation own a common partition. (Two
/// consumers of *different* generations can: a zombie and the partition's new owner.)
pub fn exclusive_ownership_per_generation(m: &ConsumerOffsets, s: &State) -> bool {
    let stable: Vec<&Consumer> = s.consumers[..m.consumers]
        .iter()
        .filter(|c| c.status == ConsumerStatus::Stable)
        .collect();
    stable.iter().enumerate().all(|(i, a)| {
        stable[i + 1..]
            .iter()
            .all(|b| a.generation != b.generation || !a.assigned.intersects(b.assigned))
    })
}

/// Every record below the HW of every partition has been processed.
pub fn everything_processed(m: &ConsumerOffsets, s: &State) -> bool {
    (0..m.partitions).all(|p| {
        let below_hw = ((1u16 << s.hw[p]) - 1) as u8;
        s.processed[p] & below_hw == below_hw
    })
}

/// A zombie (a consumer of an older generation) and the current owner hold the same partition.
pub fn zombie_overlaps_new_owner(m: &ConsumerOffsets, s: &State) -> bool {
    let g = &s.coordinator;
    s.consumers[..m.consumers]
        .iter()
        .enumerate()
        .any(|(z, zombie)| {
            zombie.status == ConsumerStatus::Stable
                && !ConsumerOffsets::is_current(s, z as MemberId)
                && s.consumers[..m.consumers]
                    .iter()
                    .enumerate()
                    .any(|(o, owner)| {
                        owner.status == ConsumerStatus::Stable
                            && ConsumerOffsets::is_current(s, o as MemberId)
                            && owner.assigned.intersects(zombie.assigned)
                            && g.state == GroupState::Stable
                    })
        })
}

/// The committed offsets, `none` for a partition without one.
fn committed_text(m: &ConsumerOffsets, g: &Coordinator) -> String {
    let parts: Vec<String> = (0..m.partitions)
        .map(|p| {
            if g.has_committed.contains(p as PartitionId)
                || !m.has(OffsetsBug::AutoOffsetResetLatest)
            {
                format!("p{p}:{}", g.committed[p])
            } else {
                format!("p{p}:none")
            }
        })
        .collect();
    parts.join(" ")
}

fn offsets_text(m: &ConsumerOffsets, offsets: &[Offset; MAX_PARTITIONS]) -> String {
    let parts: Vec<String> = (0..m.partitions)
        .map(|p| format!("p{p}:{}", offsets[p]))
        .collect();
    parts.join(" ")
}

fn bits_text(bits: u8) -> String {
    let offsets: Vec<String> = (0..8)
        .filter(|o| bits & (1 << o) != 0)
        .map(|o| o.to_string())
        .collect();
    format!("{{{}}}", offsets.join(","))
}

impl KcheckModel for ConsumerOffsets {
    const NAME: &'static str = "consumer-offsets";
    const ABOUT: &'static str =
        "a consumer group: generations, JoinGroup/SyncGroup, OffsetCommit fencing, crashes, zombies";

    fn bounds() -> &'static [Bound] {
        BOUNDS
    }

    fn bug_flags() -> &'static [BugFlag] {
        BUG_FLAGS
    }

    fn from_config(config: &Config) -> Self {
        ConsumerOffsets {
            consumers: config.bound("consumers") as usize,
            partitions: config.bound("partitions") as usize,
            max_records: config.bound("records") as Offset,
            max_crashes: config.bound("crashes") as u8,
            max_expiries: config.bound("expiries") as u8,
            bugs: config.bugs(&OffsetsBug::ALL, OffsetsBug::name),
        }
    }

    fn named_properties() -> Vec<Property<Self>> {
        vec![
            Property::always(
                "at-least-once",
                "every record below a committed offset was processed or is held by a running consumer that will process it",
                at_least_once,
            ),
            Property::always(
                "no-zombie-commit",
                "only the partition's owner in the current generation moves its committed offset: a zombie's commit never takes effect",
                |_, s| no_zombie_commit(s),
            ),
            Property::always(
                "committed-offset-monotonic",
                "a partition's committed offset never moves backwards",
                |_, s| committed_offset_monotonic(s),
            ),
            Property::always(
                "exclusive-ownership-per-generation",
                "no two consumers of the same generation own the same partition",
                exclusive_ownership_per_generation,
            ),
            Property::always_can_reach(
                "group-processes-every-record",
                "once crashes and zombie-making expiries stop, the group can still process every record below the HW",
                everything_processed,
                |a| !matches!(a, Action::Crash { .. } | Action::ExpireLiveSession { .. }),
            ),
            Property::sometimes(
                "zombie-overlaps-new-owner",
                "non-vacuity: a zombie still owns a partition the current generation gave to another consumer",
                zombie_overlaps_new_owner,
            ),
            Property::sometimes(
                "duplicate-processing",
                "at-least-once is not exactly-once: some record is processed twice",
                |_, s: &State| s.duplicate,
            ),
            Property::sometimes(
                "all-committed-after-rebalance",
                "non-vacuity: every produced record is committed, at generation 2 or later, after a live session expired",
                |m: &ConsumerOffsets, s: &State| {
                    s.expiries > 0
                        && s.coordinator.generation >= 2
                        && (0..m.partitions).all(|p| {
                            s.hw[p] == m.max_records && s.coordinator.committed[p] == m.max_records
                        })
                },
            ),
        ]
    }

    fn representative(&self, s: &State) -> State {
        self.canonical(s)
    }

    fn describe_action(&self, s: &State, action: &Action) -> String {
        let g = &s.coordinator;
        match *action {
            Action::Produce { partition } => format!(
                "a producer appends offset {} to p{partition}; it is replicated and the HW becomes {}",
                s.hw[partition as usize],
                s.hw[partition as usize] + 1
            ),
            Action::JoinGroup { member } => {
                let c = &s.consumers[member as usize];
                let why = match c.status {
                    ConsumerStatus::Stable => format!(
                        "after REBALANCE_IN_PROGRESS, revoking {:?} (eager)",
                        c.assigned
                    ),
                    ConsumerStatus::Joining => "again: the rebalance restarted".to_string(),
                    _ => "as a new member".to_string(),
                };
                let effect = if g.state == GroupState::PreparingRebalance {
                    ""
                } else {
                    "; the group starts rebalancing"
                };
                format!("c{member} sends JoinGroup {why}{effect}")
            }
            Action::CompleteJoin { owners } => {
                let parts: Vec<String> = (0..self.partitions)
                    .map(|p| format!("p{p}->{:?}", owners[p]))
                    .collect();
                format!(
                    "every member rejoined: the coordinator completes the rebalance as generation {} with members {:?}; the leader's SyncGroup assigns {}",
                    g.generation + 1,
                    g.members,
                    parts.join(" ")
                )
            }
            Action::SyncGroup { member } => {
                if g.members.contains(member) {
                    format!(
                        "c{member} gets its SyncGroup answer for generation {} and OffsetFetch positions it at the committed offsets{}",
                        g.generation,
                        if self.has(OffsetsBug::AutoOffsetResetLatest)
                            && (0..self.partitions as PartitionId).any(|p| {
                                g.assignment[p as usize].contains(member)
                                    && !g.has_committed.contains(p)
                            })
                        {
                            " (where there is none, auto.offset.reset=latest: the HW)"
                        } else {
                            ""
                        }
                    )
                } else {
                    format!("c{member}'s SyncGroup fails with UNKNOWN_MEMBER_ID")
                }
            }
            Action::Fetch { member, partition } => {
                let p = partition as usize;
                format!(
                    "c{member} polls p{partition} from offset {} up to the HW {}",
                    s.consumers[member as usize].position[p], s.hw[p]
                )
            }
            Action::Process { member, partition } => {
                let p = partition as usize;
                let o = s.consumers[member as usize].processed_upto[p];
                let again = if s.processed[p] & (1 << o) != 0 {
                    " (again: a duplicate)"
                } else {
                    ""
                };
                format!("c{member} processes p{partition} offset {o}{again}")
            }
            Action::Commit { member } | Action::AutoCommit { member } => {
                let auto = matches!(action, Action::AutoCommit { .. });
                let c = &s.consumers[member as usize];
                let offsets = self.commit_offsets(c, auto);
                let parts: Vec<String> = c
                    .assigned
                    .iter()
                    .map(|p| format!("p{p}:{}", offsets[p as usize]))
                    .collect();
                let who = if auto {
                    format!("c{member}'s auto-commit timer fires and sends")
                } else {
                    format!("c{member} sends")
                };
                let label = self.commit_label(s, member);
                let verdict = match (label, self.has(OffsetsBug::NoGenerationFencing)) {
                    ("accepted", _) => "the coordinator accepts it".to_string(),
                    (_, true) => format!("the coordinator accepts it (no fencing; correct answer: {label})"),
                    (_, false) => format!("the coordinator rejects it with {label}; c{member} must rejoin"),
                };
                format!(
                    "{who} OffsetCommit(generation {}, {}): {verdict}",
                    c.generation,
                    parts.join(" ")
                )
            }
            Action::Heartbeat { member } => format!(
                "c{member}'s heartbeat answers {}: it loses its partitions and will rejoin",
                self.commit_label(s, member)
            ),
            Action::Crash { member } => format!(
                "c{member} crashes, losing its positions and unprocessed records (its session is still open)"
            ),
            Action::Restart { member } => format!("c{member} restarts"),
            Action::SessionTimeout { member } => format!(
                "c{member}'s session times out: the coordinator removes it and rebalances"
            ),
            Action::ExpireLiveSession { member } => format!(
                "c{member}'s heartbeats stop arriving (GC pause or partition): its session expires while it keeps running, a zombie"
            ),
        }
    }

    fn describe_state(&self, s: &State) -> Vec<String> {
        let g = &s.coordinator;
        let owners: Vec<String> = (0..self.partitions)
            .map(|p| format!("p{p}->{:?}", g.assignment[p]))
            .collect();
        let mut lines = vec![
            format!(
                "coordinator: generation={} state={:?} members={:?} joined={:?} assignment=[{}] committed=[{}]",
                g.generation,
                g.state,
                g.members,
                g.joined,
                owners.join(" "),
                committed_text(self, g)
            ),
            format!("log: HW=[{}]", offsets_text(self, &s.hw)),
        ];
        for (m, c) in s.consumers[..self.consumers].iter().enumerate() {
            let line = match c.status {
                ConsumerStatus::Stable => format!(
                    "c{m} stable{} generation={} assigned={:?} position=[{}] processed-upto=[{}]",
                    if Self::is_current(s, m as MemberId) {
                        ""
                    } else {
                        " (zombie)"
                    },
                    c.generation,
                    c.assigned,
                    offsets_text(self, &c.position),
                    offsets_text(self, &c.processed_upto)
                ),
                ConsumerStatus::Down => format!("c{m} down"),
                ConsumerStatus::Unjoined => format!("c{m} unjoined"),
                ConsumerStatus::Joining => format!("c{m} joining"),
            };
            lines.push(line);
        }
        let processed: Vec<String> = (0..self.partitions)
            .map(|p| format!("p{p}:{}", bits_text(s.processed[p])))
            .collect();
        lines.push(format!(
            "history: processed=[{}] max-committed=[{}] zombie-commit={} duplicate={}",
            processed.join(" "),
            offsets_text(self, &s.max_committed),
            s.zombie_commit,
            s.duplicate
        ));
        lines
    }
}
