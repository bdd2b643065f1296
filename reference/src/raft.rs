//! KRaft: the Raft variant that replicates `__cluster_metadata` among the controllers
//! (KIP-595), with pre-vote and check-quorum (KIP-996). A sans-IO core: requests, responses and
//! the clock go in, [`Output`]s come out (requests to send, quorum-state and log changes to make
//! durable). The tokio adapter is [`crate::controller_server`]; the deterministic simulation is
//! `reference/tests/kraft_sim.rs`.
//!
//! Differences from textbook Raft that Kafka made and this core keeps:
//! - replication is *pull*: followers and observers send Fetch(fetch offset, last fetched
//!   epoch); the leader answers with records, the high watermark, or the diverging epoch and its
//!   end offset, and the follower truncates (KIP-595 reuses KIP-320's divergence check);
//! - a leader announces itself with BeginQuorumEpoch and its first write in the epoch is a
//!   leader-change control record; the HW only advances over an offset of the leader's own
//!   epoch (Raft's "commit only current-term entries");
//! - a leader that resigns gracefully sends EndQuorumEpoch so followers elect at once;
//! - a would-be candidate first asks for pre-votes (Prospective, KIP-996) and a leader that no
//!   longer hears from a majority resigns (check-quorum), so a partitioned node cannot disrupt
//!   a healthy quorum by bumping the epoch.
//!
//! The names of the invariants asserted here are those of the `kraft` model: `election-safety`,
//! `log-matching`, `leader-completeness`, `hw-monotonic`, `observer-prefix`.

use crate::proto_trace::TARGET;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};

pub type NodeId = i32;
pub type Epoch = i32;

/// One entry of the replicated log. `control` marks the leader-change record a new leader
/// writes first in its epoch (Kafka's LeaderChangeMessage control batch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub epoch: Epoch,
    pub control: bool,
    pub value: Bytes,
}

/// The `quorum-state` file: what a voter must remember across restarts so it never votes twice
/// in an epoch nor forgets the epoch it has seen. Persisted before any answer depends on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuorumState {
    pub leader_epoch: Epoch,
    pub voted_for: Option<NodeId>,
    pub leader_id: Option<NodeId>,
}

/// The states of KIP-595 plus KIP-996's Prospective.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Knows the epoch, has no leader and no vote in it.
    Unattached,
    /// Asking for pre-votes before bumping the epoch (KIP-996).
    Prospective,
    /// Voted for itself in `leader_epoch`, asking for votes.
    Candidate,
    /// Voted for another candidate in `leader_epoch`.
    Voted,
    Leader,
    Follower,
    /// A former leader (graceful resignation, failed check-quorum or restart) waiting for the
    /// next election.
    Resigned,
}

/// Kafka error codes these RPCs use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaftError {
    None,
    /// The request's epoch is older than the receiver's (KIP-320 naming).
    FencedLeaderEpoch,
    /// The request's epoch is newer than the receiver knows.
    UnknownLeaderEpoch,
    /// A Fetch sent to a replica that is not the leader.
    NotLeaderOrFollower,
    /// A Vote or BeginQuorumEpoch from or to a node outside the voter set.
    InconsistentVoterSet,
}

impl RaftError {
    pub fn code(self) -> i16 {
        match self {
            RaftError::None => 0,
            RaftError::NotLeaderOrFollower => 6,
            RaftError::FencedLeaderEpoch => 74,
            RaftError::UnknownLeaderEpoch => 75,
            RaftError::InconsistentVoterSet => 94,
        }
    }
    pub fn from_code(code: i16) -> RaftError {
        match code {
            0 => RaftError::None,
            74 => RaftError::FencedLeaderEpoch,
            75 => RaftError::UnknownLeaderEpoch,
            94 => RaftError::InconsistentVoterSet,
            _ => RaftError::NotLeaderOrFollower,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `candidate_epoch` is the epoch the candidate runs in; for a pre-vote it is the epoch the
    /// prospective would run in (its own + 1), and nobody changes state because of it.
    Vote {
        candidate_epoch: Epoch,
        candidate_id: NodeId,
        last_offset_epoch: Epoch,
        /// The candidate's log end offset.
        last_offset: i64,
        pre_vote: bool,
    },
    BeginQuorumEpoch {
        leader_epoch: Epoch,
        leader_id: NodeId,
    },
    EndQuorumEpoch {
        leader_epoch: Epoch,
        leader_id: NodeId,
        preferred_successors: Vec<NodeId>,
    },
    Fetch {
        replica_id: NodeId,
        current_leader_epoch: Epoch,
        fetch_offset: i64,
        last_fetched_epoch: Epoch,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Vote {
        error: RaftError,
        leader_epoch: Epoch,
        leader_id: Option<NodeId>,
        vote_granted: bool,
    },
    BeginQuorumEpoch {
        error: RaftError,
        leader_epoch: Epoch,
        leader_id: Option<NodeId>,
    },
    EndQuorumEpoch {
        error: RaftError,
        leader_epoch: Epoch,
        leader_id: Option<NodeId>,
    },
    Fetch {
        error: RaftError,
        leader_epoch: Epoch,
        leader_id: Option<NodeId>,
        high_watermark: i64,
        /// Entries starting at the request's fetch offset.
        records: Vec<Entry>,
        /// Set when the fetcher's log diverges: the largest epoch ≤ its last fetched epoch the
        /// leader has, and that epoch's end offset on the leader. The fetcher truncates there.
        diverging_epoch: Option<(Epoch, i64)>,
    },
}

/// What the adapter must do, in order: persist first, then send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Write the `quorum-state` file (atomically) before anything after it.
    PersistQuorumState(QuorumState),
    /// Remove log entries at `offset` and above (a follower resolving a divergence).
    Truncate { offset: i64 },
    /// Append entries starting at `base_offset` (= the log end offset before the append).
    Append {
        base_offset: i64,
        entries: Vec<Entry>,
    },
    /// Send a request; feed its response back with [`RaftNode::handle_response`].
    Send { to: NodeId, request: Request },
}

/// Protocol choices switched on to show the assertions and the simulation catch them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RaftBug {
    /// Grant votes without comparing (last epoch, end offset): a stale candidate can win and
    /// truncate committed entries (breaks `leader-completeness`).
    VoteIgnoresLog,
    /// Forget the vote already given in this epoch: two leaders in one epoch
    /// (breaks `election-safety`).
    VoteTwiceInEpoch,
    /// The leader serves every Fetch from its offset without comparing the fetcher's last
    /// epoch: a follower keeps a stale suffix under new entries (breaks `log-matching`).
    NoDivergingEpoch,
    /// The same, only for observers ("they do not vote, so their log does not matter"): a
    /// broker's metadata image is built on a log that was never committed
    /// (breaks `observer-prefix`).
    ObserverNoDivergingEpoch,
    /// A voter does not keep its vote across a restart (quorum-state not persisted) and votes
    /// again in the same epoch (breaks `election-safety`).
    ForgetVoteOnRestart,
    /// An observer treats everything it fetched as committed (a broker applying metadata
    /// above the HW; breaks `observer-prefix`).
    ApplyUncommitted,
    /// A follower copies the leader's HW even when it is lower than its own (a new leader
    /// learns the HW late), so the HW goes backwards (breaks `hw-monotonic`).
    HwCopiedFromLeader,
}

impl RaftBug {
    pub const ALL: [RaftBug; 7] = [
        RaftBug::ForgetVoteOnRestart,
        RaftBug::ApplyUncommitted,
        RaftBug::VoteIgnoresLog,
        RaftBug::VoteTwiceInEpoch,
        RaftBug::NoDivergingEpoch,
        RaftBug::ObserverNoDivergingEpoch,
        RaftBug::HwCopiedFromLeader,
    ];
    pub fn name(self) -> &'static str {
        match self {
            RaftBug::VoteIgnoresLog => "vote-ignores-log",
            RaftBug::VoteTwiceInEpoch => "vote-twice-in-epoch",
            RaftBug::NoDivergingEpoch => "no-diverging-epoch",
            RaftBug::ObserverNoDivergingEpoch => "observer-no-divergence-check",
            RaftBug::HwCopiedFromLeader => "hw-copied-from-leader",
            RaftBug::ForgetVoteOnRestart => "forget-vote-on-restart",
            RaftBug::ApplyUncommitted => "apply-uncommitted",
        }
    }
    pub fn parse(name: &str) -> Result<RaftBug, String> {
        RaftBug::ALL
            .into_iter()
            .find(|b| b.name() == name)
            .ok_or_else(|| {
                let known: Vec<_> = RaftBug::ALL.iter().map(|b| b.name()).collect();
                format!(
                    "unknown bug flag '{name}' for kraft (known: {})",
                    known.join(", ")
                )
            })
    }
}

/// Timeouts (Kafka's `controller.quorum.*` settings) and limits.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    /// `controller.quorum.election.timeout.ms`: the election deadline is drawn uniformly from
    /// [T, 2T) so that voters rarely time out together.
    pub election_timeout_ms: u64,
    /// `controller.quorum.fetch.timeout.ms`: a follower that has not fetched successfully for
    /// this long starts an election; a leader resigns if a majority has not fetched within 1.5×.
    pub fetch_timeout_ms: u64,
    /// Pause between a follower's fetches (the adapter may long-poll instead).
    pub fetch_interval_ms: u64,
    /// Resend an unanswered request (BeginQuorumEpoch, Fetch) after this long.
    pub request_timeout_ms: u64,
    /// Most entries in one Fetch response.
    pub max_fetch_entries: usize,
    pub bugs: Vec<RaftBug>,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            election_timeout_ms: 1000,
            fetch_timeout_ms: 2000,
            fetch_interval_ms: 50,
            request_timeout_ms: 500,
            max_fetch_entries: 256,
            bugs: Vec::new(),
        }
    }
}

/// Seeded randomness for election timeouts (splitmix64), so a simulation replays exactly.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// What the leader knows about a replica that fetches from it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaState {
    pub log_end_offset: i64,
    pub last_fetch_ms: Option<u64>,
}

pub struct RaftNode {
    pub id: NodeId,
    voters: BTreeSet<NodeId>,
    config: RaftConfig,
    rng: Rng,
    quorum: QuorumState,
    role: Role,
    log: Vec<Entry>,
    high_watermark: i64,
    /// Role deadline: Unattached/Voted/Prospective/Candidate/Resigned: next election attempt;
    /// Follower: fetch timeout.
    deadline_ms: u64,
    /// Pre-votes (Prospective) or votes (Candidate) granted in the current attempt.
    granted: BTreeSet<NodeId>,
    /// Leader only: fetch positions of voters and observers in this epoch.
    replicas: BTreeMap<NodeId, ReplicaState>,
    /// Leader only: offset of its leader-change record.
    epoch_start_offset: i64,
    /// Leader only: voters that have not acknowledged BeginQuorumEpoch yet, with the time it
    /// was last sent.
    begin_pending: BTreeMap<NodeId, u64>,
    /// Leader only: when check-quorum last saw a majority.
    check_quorum_ms: u64,
    /// Follower/observer: when the next fetch may go out; whether one is in flight since when.
    next_fetch_ms: u64,
    fetch_in_flight_since: Option<u64>,
    /// Observer without a known leader: voter to ask next.
    bootstrap_cursor: usize,
}

impl RaftNode {
    /// A node starting from its persisted quorum-state and log (both empty on first start).
    /// Restart rules as KafkaRaftClient: a former leader comes back Resigned, a follower
    /// comes back Follower (and must hear from its leader within the fetch timeout).
    pub fn restore(
        id: NodeId,
        voters: impl IntoIterator<Item = NodeId>,
        config: RaftConfig,
        quorum: QuorumState,
        log: Vec<Entry>,
        now_ms: u64,
        seed: u64,
    ) -> RaftNode {
        let voters: BTreeSet<NodeId> = voters.into_iter().collect();
        let mut quorum = quorum;
        if config.bugs.contains(&RaftBug::ForgetVoteOnRestart) && quorum.leader_id.is_none() {
            quorum.voted_for = None;
        }
        let role = match (quorum.leader_id, quorum.voted_for) {
            (Some(l), _) if l == id => Role::Resigned,
            (Some(_), _) => Role::Follower,
            (None, Some(v)) if v == id => Role::Candidate,
            (None, Some(_)) => Role::Voted,
            (None, None) => Role::Unattached,
        };
        let mut node = RaftNode {
            id,
            voters,
            config,
            rng: Rng::new(seed ^ (id as u64).wrapping_mul(0x1000_0000_01b3)),
            quorum,
            role,
            log,
            high_watermark: 0,
            deadline_ms: 0,
            granted: BTreeSet::new(),
            replicas: BTreeMap::new(),
            epoch_start_offset: 0,
            begin_pending: BTreeMap::new(),
            check_quorum_ms: now_ms,
            next_fetch_ms: now_ms,
            fetch_in_flight_since: None,
            bootstrap_cursor: 0,
        };
        node.check_log_epochs();
        node.trace_restore();
        node.deadline_ms = match role {
            Role::Follower => now_ms + node.config.fetch_timeout_ms,
            _ => node.random_election_deadline(now_ms),
        };
        if role == Role::Candidate {
            // A restarted candidate does not know who voted for it: ask again.
            node.role = Role::Prospective;
        }
        node
    }

    // ---- accessors -----------------------------------------------------------------------

    pub fn role(&self) -> Role {
        self.role
    }
    pub fn quorum_state(&self) -> &QuorumState {
        &self.quorum
    }
    pub fn leader_epoch(&self) -> Epoch {
        self.quorum.leader_epoch
    }
    pub fn leader_id(&self) -> Option<NodeId> {
        self.quorum.leader_id
    }
    pub fn is_voter(&self) -> bool {
        self.voters.contains(&self.id)
    }
    pub fn voters(&self) -> &BTreeSet<NodeId> {
        &self.voters
    }
    pub fn log(&self) -> &[Entry] {
        &self.log
    }
    pub fn log_end_offset(&self) -> i64 {
        self.log.len() as i64
    }
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }
    pub fn last_epoch(&self) -> Epoch {
        self.log.last().map_or(0, |e| e.epoch)
    }
    pub fn replica_states(&self) -> &BTreeMap<NodeId, ReplicaState> {
        &self.replicas
    }
    /// Leader only: the offset of its epoch's leader-change record. Everything before it is
    /// committed once the HW passes it.
    pub fn epoch_start_offset(&self) -> Option<i64> {
        (self.role == Role::Leader).then_some(self.epoch_start_offset)
    }
    fn has(&self, bug: RaftBug) -> bool {
        self.config.bugs.contains(&bug)
    }
    fn majority(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    // ---- time ----------------------------------------------------------------------------

    fn random_election_deadline(&mut self, now_ms: u64) -> u64 {
        let t = self.config.election_timeout_ms;
        now_ms + t + self.rng.below(t)
    }

    /// Advances timers: elections, fetches, BeginQuorumEpoch retries, check-quorum.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        match self.role {
            Role::Leader => {
                self.check_quorum(now_ms, &mut out);
                if self.role == Role::Leader {
                    let retry = self.config.request_timeout_ms;
                    let due: Vec<NodeId> = self
                        .begin_pending
                        .iter()
                        .filter(|(_, sent)| now_ms >= **sent + retry)
                        .map(|(n, _)| *n)
                        .collect();
                    for n in due {
                        self.begin_pending.insert(n, now_ms);
                        out.push(self.begin_quorum_epoch_to(n));
                    }
                }
            }
            Role::Follower => {
                if now_ms >= self.deadline_ms {
                    if self.is_voter() {
                        self.become_prospective(now_ms, &mut out);
                    } else {
                        // An observer forgets the silent leader and asks the voters again.
                        self.quorum.leader_id = None;
                        self.role = Role::Unattached;
                        self.fetch_in_flight_since = None;
                        self.deadline_ms = now_ms + self.config.fetch_timeout_ms;
                    }
                } else {
                    self.maybe_fetch(now_ms, &mut out);
                }
            }
            Role::Unattached
            | Role::Voted
            | Role::Prospective
            | Role::Candidate
            | Role::Resigned => {
                if !self.is_voter() {
                    self.maybe_fetch(now_ms, &mut out);
                } else if now_ms >= self.deadline_ms {
                    self.become_prospective(now_ms, &mut out);
                }
            }
        }
        out
    }

    /// KIP-996 check-quorum: a leader that has not been fetched from by a majority of voters
    /// (itself included) within 1.5 × fetch timeout resigns, so the rest can elect.
    fn check_quorum(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let window = self.config.fetch_timeout_ms * 3 / 2;
        let recent = 1 + self
            .voters
            .iter()
            .filter(|v| **v != self.id)
            .filter(|v| {
                self.replicas
                    .get(v)
                    .and_then(|r| r.last_fetch_ms)
                    .is_some_and(|t| now_ms.saturating_sub(t) < window)
            })
            .count();
        if recent >= self.majority() {
            self.check_quorum_ms = now_ms;
        } else if now_ms >= self.check_quorum_ms + window {
            tracing::info!(
                node = self.id,
                epoch = self.leader_epoch(),
                "check-quorum failed: resigning"
            );
            self.resign_inner(now_ms, out);
        }
    }

    fn maybe_fetch(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        if let Some(since) = self.fetch_in_flight_since {
            if now_ms < since + self.config.request_timeout_ms {
                return;
            }
        }
        if now_ms < self.next_fetch_ms {
            return;
        }
        let to = match (self.role, self.quorum.leader_id) {
            (Role::Follower, Some(l)) => l,
            _ => {
                // Leader unknown (observer): ask the voters in turn.
                let voters: Vec<NodeId> = self.voters.iter().copied().collect();
                if voters.is_empty() {
                    return;
                }
                self.bootstrap_cursor = (self.bootstrap_cursor + 1) % voters.len();
                voters[self.bootstrap_cursor]
            }
        };
        self.fetch_in_flight_since = Some(now_ms);
        out.push(Output::Send {
            to,
            request: Request::Fetch {
                replica_id: self.id,
                current_leader_epoch: self.leader_epoch(),
                fetch_offset: self.log_end_offset(),
                last_fetched_epoch: self.last_epoch(),
            },
        });
    }

    // ---- transitions ---------------------------------------------------------------------

    fn persist(&self, out: &mut Vec<Output>) {
        out.push(Output::PersistQuorumState(self.quorum.clone()));
    }

    /// A higher epoch was seen: adopt it, with its leader if known.
    fn observe_epoch(
        &mut self,
        now_ms: u64,
        epoch: Epoch,
        leader: Option<NodeId>,
        out: &mut Vec<Output>,
    ) {
        if epoch > self.leader_epoch() {
            self.quorum = QuorumState {
                leader_epoch: epoch,
                voted_for: None,
                leader_id: None,
            };
            self.role = Role::Unattached;
            self.leave_leadership();
            self.deadline_ms = self.random_election_deadline(now_ms);
            if leader.is_none() {
                self.persist(out);
            }
        }
        if let Some(l) = leader {
            if epoch == self.leader_epoch() && l != self.id && self.quorum.leader_id != Some(l) {
                self.become_follower(now_ms, l, out);
            }
        }
    }

    fn leave_leadership(&mut self) {
        self.replicas.clear();
        self.begin_pending.clear();
        self.granted.clear();
        self.fetch_in_flight_since = None;
    }

    fn become_follower(&mut self, now_ms: u64, leader: NodeId, out: &mut Vec<Output>) {
        assert!(
            !(self.role == Role::Leader && self.quorum.leader_id == Some(self.id)),
            "election-safety: node {} leads epoch {} and was told node {leader} does",
            self.id,
            self.leader_epoch()
        );
        self.quorum.leader_id = Some(leader);
        self.role = Role::Follower;
        self.leave_leadership();
        self.deadline_ms = now_ms + self.config.fetch_timeout_ms;
        self.next_fetch_ms = now_ms;
        self.persist(out);
    }

    fn become_prospective(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        self.role = Role::Prospective;
        self.leave_leadership();
        self.granted.insert(self.id);
        self.deadline_ms = self.random_election_deadline(now_ms);
        let request = self.vote_request(self.leader_epoch() + 1, true);
        for v in self.voters.clone() {
            if v != self.id {
                out.push(Output::Send {
                    to: v,
                    request: request.clone(),
                });
            }
        }
        self.maybe_win(now_ms, out);
    }

    fn become_candidate(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        self.quorum = QuorumState {
            leader_epoch: self.leader_epoch() + 1,
            voted_for: Some(self.id),
            leader_id: None,
        };
        self.role = Role::Candidate;
        tracing::info!(target: TARGET, node = self.id, epoch = self.leader_epoch(),
            candidate = self.id, "raft.vote");
        self.granted.clear();
        self.granted.insert(self.id);
        self.deadline_ms = self.random_election_deadline(now_ms);
        self.persist(out);
        let request = self.vote_request(self.leader_epoch(), false);
        for v in self.voters.clone() {
            if v != self.id {
                out.push(Output::Send {
                    to: v,
                    request: request.clone(),
                });
            }
        }
        self.maybe_win(now_ms, out);
    }

    fn maybe_win(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        if self.granted.len() < self.majority() {
            return;
        }
        match self.role {
            Role::Prospective => self.become_candidate(now_ms, out),
            Role::Candidate => self.become_leader(now_ms, out),
            _ => {}
        }
    }

    fn become_leader(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        self.quorum.leader_id = Some(self.id);
        self.role = Role::Leader;
        tracing::info!(target: TARGET, node = self.id, epoch = self.leader_epoch(),
            leo = self.log_end_offset(), hw = self.high_watermark, "raft.leader");
        self.granted.clear();
        self.replicas.clear();
        self.check_quorum_ms = now_ms;
        self.persist(out);
        // The leader-change record: once it is committed, so is everything before it.
        self.epoch_start_offset = self.log_end_offset();
        let entry = Entry {
            epoch: self.leader_epoch(),
            control: true,
            value: Bytes::from(format!("{{\"leader_id\":{}}}", self.id)),
        };
        self.append_local(vec![entry], out);
        self.begin_pending = self
            .voters
            .iter()
            .filter(|v| **v != self.id)
            .map(|v| (*v, now_ms))
            .collect();
        for v in self.begin_pending.keys().copied().collect::<Vec<_>>() {
            out.push(self.begin_quorum_epoch_to(v));
        }
        tracing::info!(
            node = self.id,
            epoch = self.leader_epoch(),
            "elected leader"
        );
        self.advance_leader_hw();
    }

    fn begin_quorum_epoch_to(&self, to: NodeId) -> Output {
        Output::Send {
            to,
            request: Request::BeginQuorumEpoch {
                leader_epoch: self.leader_epoch(),
                leader_id: self.id,
            },
        }
    }

    /// Graceful resignation (controlled shutdown of the active controller): EndQuorumEpoch to
    /// the other voters, most caught-up first, so the best successor runs first.
    pub fn resign(&mut self, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        if self.role == Role::Leader {
            self.resign_inner(now_ms, &mut out);
        }
        out
    }

    fn resign_inner(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let mut successors: Vec<(i64, NodeId)> = self
            .voters
            .iter()
            .filter(|v| **v != self.id)
            .map(|v| (self.replicas.get(v).map_or(0, |r| r.log_end_offset), *v))
            .collect();
        successors.sort_by(|a, b| b.cmp(a));
        let preferred_successors: Vec<NodeId> = successors.iter().map(|(_, v)| *v).collect();
        self.role = Role::Resigned;
        self.leave_leadership();
        self.deadline_ms = self.random_election_deadline(now_ms);
        for v in &preferred_successors {
            out.push(Output::Send {
                to: *v,
                request: Request::EndQuorumEpoch {
                    leader_epoch: self.leader_epoch(),
                    leader_id: self.id,
                    preferred_successors: preferred_successors.clone(),
                },
            });
        }
    }

    fn vote_request(&self, candidate_epoch: Epoch, pre_vote: bool) -> Request {
        Request::Vote {
            candidate_epoch,
            candidate_id: self.id,
            last_offset_epoch: self.last_epoch(),
            last_offset: self.log_end_offset(),
            pre_vote,
        }
    }

    // ---- the log -------------------------------------------------------------------------

    fn append_local(&mut self, entries: Vec<Entry>, out: &mut Vec<Output>) {
        if entries.is_empty() {
            return;
        }
        let base_offset = self.log_end_offset();
        for e in &entries {
            assert!(
                e.epoch >= self.last_epoch() && e.epoch <= self.leader_epoch(),
                "log-matching: entry of epoch {} appended after epoch {} in epoch {}",
                e.epoch,
                self.last_epoch(),
                self.leader_epoch()
            );
            self.log.push(e.clone());
        }
        let epochs: Vec<Epoch> = entries.iter().map(|e| e.epoch).collect();
        tracing::info!(target: TARGET, node = self.id, base_offset, epochs = ?epochs,
            leader = self.role == Role::Leader, "raft.append");
        out.push(Output::Append {
            base_offset,
            entries,
        });
    }

    fn truncate_local(&mut self, offset: i64, out: &mut Vec<Output>) {
        assert!(
            self.role != Role::Leader,
            "leader-completeness: leader {} asked to truncate its log",
            self.id
        );
        assert!(
            offset >= self.high_watermark,
            "leader-completeness: node {} truncates to {offset} below its high watermark {}",
            self.id,
            self.high_watermark
        );
        if offset < self.log_end_offset() {
            self.log.truncate(offset as usize);
            tracing::info!(target: TARGET, node = self.id, offset, hw = self.high_watermark,
                "raft.truncate");
            out.push(Output::Truncate { offset });
        }
    }

    fn set_high_watermark(&mut self, hw: i64) {
        assert!(
            hw <= self.log_end_offset(),
            "hw-monotonic: node {} HW {hw} beyond its log end offset {}",
            self.id,
            self.log_end_offset()
        );
        if hw > self.high_watermark {
            self.trace_hw(hw);
            self.high_watermark = hw;
        }
    }

    /// Leader appends (the active controller's metadata records). `Err` names the leader to
    /// ask instead.
    pub fn append_as_leader(
        &mut self,
        values: Vec<Bytes>,
    ) -> Result<(i64, Vec<Output>), Option<NodeId>> {
        if self.role != Role::Leader {
            return Err(self.quorum.leader_id.filter(|l| *l != self.id));
        }
        let mut out = Vec::new();
        let base = self.log_end_offset();
        let epoch = self.leader_epoch();
        let entries = values
            .into_iter()
            .map(|value| Entry {
                epoch,
                control: false,
                value,
            })
            .collect();
        self.append_local(entries, &mut out);
        self.advance_leader_hw();
        Ok((base, out))
    }

    /// The largest epoch ≤ `epoch` in the log and the offset where it ends (KIP-101's
    /// OffsetsForLeaderEpoch answer; (0, 0) when the log has none).
    pub fn end_offset_for_epoch(&self, epoch: Epoch) -> (Epoch, i64) {
        let idx = self.log.partition_point(|e| e.epoch <= epoch);
        if idx == 0 {
            return (0, 0);
        }
        (self.log[idx - 1].epoch, idx as i64)
    }

    /// The HW advances to the largest offset a majority of voters has replicated, provided
    /// the entry below it is of the leader's own epoch (never commit an older epoch's entries
    /// by counting replicas alone).
    fn advance_leader_hw(&mut self) {
        let mut ends: Vec<i64> = self
            .voters
            .iter()
            .map(|v| {
                if *v == self.id {
                    self.log_end_offset()
                } else {
                    self.replicas.get(v).map_or(0, |r| r.log_end_offset)
                }
            })
            .collect();
        if !self.voters.contains(&self.id) {
            return;
        }
        ends.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = ends[self.majority() - 1];
        if candidate > self.epoch_start_offset {
            self.set_high_watermark(candidate);
        }
    }

    /// The HW moves from its current value to `hw` (a `raft.hw` event for `kcheck conform`).
    fn trace_hw(&self, hw: i64) {
        tracing::info!(target: TARGET, node = self.id, hw, before = self.high_watermark,
            leo = self.log_end_offset(), leader = self.role == Role::Leader, "raft.hw");
    }

    /// What a (re)started node remembers: its quorum-state and its log as (epoch, start
    /// offset) runs; its HW is unknown (0) until it learns one.
    fn trace_restore(&self) {
        let mut runs: Vec<[i64; 2]> = Vec::new();
        for (o, e) in self.log.iter().enumerate() {
            if runs.last().is_none_or(|r| r[0] != i64::from(e.epoch)) {
                runs.push([i64::from(e.epoch), o as i64]);
            }
        }
        tracing::info!(target: TARGET, node = self.id, epoch = self.quorum.leader_epoch,
            voted_for = self.quorum.voted_for.unwrap_or(-1), leo = self.log_end_offset(),
            epochs = ?runs, "raft.restore");
    }

    fn check_log_epochs(&self) {
        for w in self.log.windows(2) {
            assert!(
                w[0].epoch <= w[1].epoch,
                "log-matching: epochs decrease in node {}'s log",
                self.id
            );
        }
        assert!(
            self.last_epoch() <= self.leader_epoch(),
            "log-matching: node {} has entries of epoch {} beyond its epoch {}",
            self.id,
            self.last_epoch(),
            self.leader_epoch()
        );
    }

    // ---- requests ------------------------------------------------------------------------

    /// Answers a request. The outputs (quorum-state, log changes) must be made durable before
    /// the response is sent.
    pub fn handle_request(
        &mut self,
        now_ms: u64,
        from: NodeId,
        request: Request,
    ) -> (Response, Vec<Output>) {
        let mut out = Vec::new();
        let resp = match request {
            Request::Vote {
                candidate_epoch,
                candidate_id,
                last_offset_epoch,
                last_offset,
                pre_vote,
            } => self.on_vote(
                now_ms,
                candidate_epoch,
                candidate_id,
                (last_offset_epoch, last_offset),
                pre_vote,
                &mut out,
            ),
            Request::BeginQuorumEpoch {
                leader_epoch,
                leader_id,
            } => {
                let error = if leader_epoch < self.leader_epoch() {
                    RaftError::FencedLeaderEpoch
                } else if !self.voters.contains(&leader_id) {
                    RaftError::InconsistentVoterSet
                } else {
                    self.observe_epoch(now_ms, leader_epoch, Some(leader_id), &mut out);
                    RaftError::None
                };
                Response::BeginQuorumEpoch {
                    error,
                    leader_epoch: self.leader_epoch(),
                    leader_id: self.quorum.leader_id,
                }
            }
            Request::EndQuorumEpoch {
                leader_epoch,
                leader_id,
                preferred_successors,
            } => {
                let error = if leader_epoch < self.leader_epoch() {
                    RaftError::FencedLeaderEpoch
                } else {
                    self.observe_epoch(now_ms, leader_epoch, Some(leader_id), &mut out);
                    if self.role == Role::Follower
                        && self.quorum.leader_id == Some(leader_id)
                        && self.is_voter()
                    {
                        // Elect soon; the most caught-up successor first.
                        let rank = preferred_successors
                            .iter()
                            .position(|s| *s == self.id)
                            .unwrap_or(preferred_successors.len())
                            as u64;
                        self.deadline_ms = now_ms
                            + rank * self.config.election_timeout_ms / 4
                            + self.rng.below(50);
                    }
                    RaftError::None
                };
                Response::EndQuorumEpoch {
                    error,
                    leader_epoch: self.leader_epoch(),
                    leader_id: self.quorum.leader_id,
                }
            }
            Request::Fetch {
                replica_id,
                current_leader_epoch,
                fetch_offset,
                last_fetched_epoch,
            } => {
                let _ = from;
                self.on_fetch(
                    now_ms,
                    replica_id,
                    current_leader_epoch,
                    fetch_offset,
                    last_fetched_epoch,
                )
            }
        };
        (resp, out)
    }

    fn on_vote(
        &mut self,
        now_ms: u64,
        candidate_epoch: Epoch,
        candidate: NodeId,
        candidate_log: (Epoch, i64),
        pre_vote: bool,
        out: &mut Vec<Output>,
    ) -> Response {
        let reject = |s: &RaftNode, error| Response::Vote {
            error,
            leader_epoch: s.leader_epoch(),
            leader_id: s.quorum.leader_id,
            vote_granted: false,
        };
        if !self.is_voter() || !self.voters.contains(&candidate) {
            return reject(self, RaftError::InconsistentVoterSet);
        }
        let up_to_date = candidate_log >= (self.last_epoch(), self.log_end_offset())
            || self.has(RaftBug::VoteIgnoresLog);
        if pre_vote {
            // KIP-996: no state change; refuse while this node still hears from a leader.
            if candidate_epoch <= self.leader_epoch() {
                return reject(self, RaftError::FencedLeaderEpoch);
            }
            let has_live_leader = match self.role {
                Role::Leader => true,
                Role::Follower => {
                    now_ms < self.deadline_ms && self.quorum.leader_id != Some(candidate)
                }
                _ => false,
            };
            return Response::Vote {
                error: RaftError::None,
                leader_epoch: self.leader_epoch(),
                leader_id: self.quorum.leader_id,
                vote_granted: up_to_date && !has_live_leader,
            };
        }
        if candidate_epoch < self.leader_epoch() {
            return reject(self, RaftError::FencedLeaderEpoch);
        }
        self.observe_epoch(now_ms, candidate_epoch, None, out);
        let may_vote = match self.role {
            Role::Unattached | Role::Prospective => {
                self.quorum.voted_for.is_none() && self.quorum.leader_id.is_none()
            }
            Role::Voted => {
                self.quorum.voted_for == Some(candidate) || self.has(RaftBug::VoteTwiceInEpoch)
            }
            _ => false,
        };
        let granted = may_vote && up_to_date;
        if granted && self.quorum.voted_for != Some(candidate) {
            tracing::info!(target: TARGET, node = self.id, epoch = self.leader_epoch(),
                candidate, "raft.vote");
            self.quorum.voted_for = Some(candidate);
            self.role = Role::Voted;
            self.deadline_ms = self.random_election_deadline(now_ms);
            self.persist(out);
        }
        Response::Vote {
            error: RaftError::None,
            leader_epoch: self.leader_epoch(),
            leader_id: self.quorum.leader_id,
            vote_granted: granted,
        }
    }

    fn on_fetch(
        &mut self,
        now_ms: u64,
        replica: NodeId,
        epoch: Epoch,
        fetch_offset: i64,
        last_fetched_epoch: Epoch,
    ) -> Response {
        let mut resp = Response::Fetch {
            error: RaftError::None,
            leader_epoch: self.leader_epoch(),
            leader_id: self.quorum.leader_id,
            high_watermark: self.high_watermark,
            records: Vec::new(),
            diverging_epoch: None,
        };
        let Response::Fetch {
            error,
            records,
            diverging_epoch,
            high_watermark,
            ..
        } = &mut resp
        else {
            unreachable!()
        };
        if self.role != Role::Leader {
            *error = RaftError::NotLeaderOrFollower;
            return resp;
        }
        if epoch < self.leader_epoch() {
            *error = RaftError::FencedLeaderEpoch;
            return resp;
        }
        if epoch > self.leader_epoch() {
            *error = RaftError::UnknownLeaderEpoch;
            return resp;
        }
        if fetch_offset < 0 {
            *error = RaftError::NotLeaderOrFollower;
            return resp;
        }
        // KIP-595/KIP-320: the fetcher's last epoch must end no earlier here than its fetch
        // offset, else it has entries this leader never had.
        let (epoch_here, end_here) = self.end_offset_for_epoch(last_fetched_epoch);
        let skip_check = self.has(RaftBug::NoDivergingEpoch)
            || (self.has(RaftBug::ObserverNoDivergingEpoch) && !self.voters.contains(&replica));
        if fetch_offset > 0
            && !skip_check
            && (epoch_here != last_fetched_epoch || end_here < fetch_offset)
        {
            *diverging_epoch = Some((epoch_here, end_here));
            return resp;
        }
        if fetch_offset > self.log_end_offset() {
            *diverging_epoch = Some(self.end_offset_for_epoch(self.last_epoch()));
            return resp;
        }
        let r = self.replicas.entry(replica).or_default();
        r.log_end_offset = fetch_offset;
        r.last_fetch_ms = Some(now_ms);
        self.begin_pending.remove(&replica);
        self.advance_leader_hw();
        let from = fetch_offset as usize;
        let to = (from + self.config.max_fetch_entries).min(self.log.len());
        *records = self.log[from..to].to_vec();
        *high_watermark = self.high_watermark;
        resp
    }

    // ---- responses -----------------------------------------------------------------------

    /// Feeds back the response to a request this node sent (`request` is that request).
    pub fn handle_response(
        &mut self,
        now_ms: u64,
        from: NodeId,
        request: &Request,
        response: Response,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        match (request, response) {
            (
                Request::Vote {
                    candidate_epoch,
                    pre_vote,
                    ..
                },
                Response::Vote {
                    leader_epoch,
                    leader_id,
                    vote_granted,
                    ..
                },
            ) => {
                if leader_epoch > self.leader_epoch() {
                    self.observe_epoch(now_ms, leader_epoch, leader_id, &mut out);
                    return out;
                }
                if let Some(l) = leader_id {
                    if leader_epoch == self.leader_epoch() {
                        self.observe_epoch(now_ms, leader_epoch, Some(l), &mut out);
                    }
                }
                let counting = if *pre_vote {
                    self.role == Role::Prospective && *candidate_epoch == self.leader_epoch() + 1
                } else {
                    self.role == Role::Candidate && *candidate_epoch == self.leader_epoch()
                };
                if counting && vote_granted {
                    self.granted.insert(from);
                    self.maybe_win(now_ms, &mut out);
                }
            }
            (
                Request::BeginQuorumEpoch {
                    leader_epoch: sent, ..
                },
                Response::BeginQuorumEpoch {
                    error,
                    leader_epoch,
                    leader_id,
                },
            ) => {
                if leader_epoch > self.leader_epoch() {
                    self.observe_epoch(now_ms, leader_epoch, leader_id, &mut out);
                } else if error == RaftError::None && *sent == self.leader_epoch() {
                    self.begin_pending.remove(&from);
                }
            }
            (
                Request::EndQuorumEpoch { .. },
                Response::EndQuorumEpoch {
                    leader_epoch,
                    leader_id,
                    ..
                },
            ) => {
                if leader_epoch > self.leader_epoch() {
                    self.observe_epoch(now_ms, leader_epoch, leader_id, &mut out);
                }
            }
            (
                Request::Fetch {
                    fetch_offset,
                    current_leader_epoch,
                    last_fetched_epoch,
                    ..
                },
                Response::Fetch {
                    error,
                    leader_epoch,
                    leader_id,
                    high_watermark,
                    records,
                    diverging_epoch,
                },
            ) => {
                self.fetch_in_flight_since = None;
                self.next_fetch_ms = now_ms + self.config.fetch_interval_ms;
                if leader_epoch > self.leader_epoch()
                    || (leader_epoch == self.leader_epoch()
                        && leader_id.is_some()
                        && self.quorum.leader_id.is_none())
                {
                    self.observe_epoch(now_ms, leader_epoch, leader_id, &mut out);
                    if leader_id.is_some() {
                        self.next_fetch_ms = now_ms;
                    }
                    return out;
                }
                let from_leader = self.role == Role::Follower
                    && self.quorum.leader_id == Some(from)
                    && leader_epoch == self.leader_epoch()
                    && *current_leader_epoch == self.leader_epoch();
                if error != RaftError::None || !from_leader {
                    return out;
                }
                self.deadline_ms = now_ms + self.config.fetch_timeout_ms;
                if *fetch_offset != self.log_end_offset()
                    || *last_fetched_epoch != self.last_epoch()
                {
                    return out; // a stale or duplicated response
                }
                if let Some((epoch, end)) = diverging_epoch {
                    let (_, local_end) = self.end_offset_for_epoch(epoch);
                    self.truncate_local(end.min(local_end), &mut out);
                    self.next_fetch_ms = now_ms;
                    return out;
                }
                let n = records.len();
                self.append_local(records, &mut out);
                let hw = if self.has(RaftBug::ApplyUncommitted) && !self.is_voter() {
                    self.log_end_offset()
                } else {
                    high_watermark.min(self.log_end_offset())
                };
                if self.has(RaftBug::HwCopiedFromLeader) {
                    if hw != self.high_watermark {
                        self.trace_hw(hw);
                    }
                    self.high_watermark = hw;
                } else {
                    self.set_high_watermark(hw);
                }
                if n > 0 {
                    self.next_fetch_ms = now_ms;
                }
            }
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId) -> RaftNode {
        RaftNode::restore(
            id,
            [1, 2, 3],
            RaftConfig::default(),
            QuorumState::default(),
            vec![],
            0,
            7,
        )
    }

    fn entry(epoch: Epoch) -> Entry {
        Entry {
            epoch,
            control: false,
            value: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn vote_is_granted_once_per_epoch_and_only_to_an_up_to_date_log() {
        let mut n = node(1);
        let vote = |c, epoch, last: (Epoch, i64)| Request::Vote {
            candidate_epoch: epoch,
            candidate_id: c,
            last_offset_epoch: last.0,
            last_offset: last.1,
            pre_vote: false,
        };
        let (r, out) = n.handle_request(0, 2, vote(2, 1, (0, 0)));
        assert!(matches!(
            r,
            Response::Vote {
                vote_granted: true,
                ..
            }
        ));
        assert!(out
            .iter()
            .any(|o| matches!(o, Output::PersistQuorumState(q) if q.voted_for == Some(2))));
        let (r, _) = n.handle_request(0, 3, vote(3, 1, (0, 0)));
        assert!(
            matches!(
                r,
                Response::Vote {
                    vote_granted: false,
                    ..
                }
            ),
            "second vote in epoch 1"
        );
        // A log behind ours is refused in a new epoch.
        n.log.push(entry(1));
        let (r, _) = n.handle_request(0, 3, vote(3, 2, (0, 0)));
        assert!(matches!(
            r,
            Response::Vote {
                vote_granted: false,
                ..
            }
        ));
        // With the bug flag the same vote is granted (the catch).
        let mut b = node(1);
        b.config.bugs.push(RaftBug::VoteIgnoresLog);
        b.log.push(entry(0));
        let (r, _) = b.handle_request(0, 3, vote(3, 2, (0, 0)));
        assert!(matches!(
            r,
            Response::Vote {
                vote_granted: true,
                ..
            }
        ));
    }

    #[test]
    fn a_follower_with_a_live_leader_refuses_pre_votes() {
        let mut n = node(1);
        let (_, _) = n.handle_request(
            0,
            2,
            Request::BeginQuorumEpoch {
                leader_epoch: 1,
                leader_id: 2,
            },
        );
        assert_eq!(n.role(), Role::Follower);
        let pre = Request::Vote {
            candidate_epoch: 2,
            candidate_id: 3,
            last_offset_epoch: 0,
            last_offset: 0,
            pre_vote: true,
        };
        let (r, out) = n.handle_request(10, 3, pre.clone());
        assert!(matches!(
            r,
            Response::Vote {
                vote_granted: false,
                ..
            }
        ));
        assert!(out.is_empty(), "a pre-vote changes nothing");
        assert_eq!(n.leader_epoch(), 1);
        // After the fetch timeout it grants.
        let (r, _) = n.handle_request(5000, 3, pre);
        assert!(matches!(
            r,
            Response::Vote {
                vote_granted: true,
                ..
            }
        ));
    }

    #[test]
    fn diverging_fetch_makes_the_follower_truncate() {
        let mut leader = node(1);
        leader.quorum = QuorumState {
            leader_epoch: 3,
            voted_for: Some(1),
            leader_id: Some(1),
        };
        leader.log = vec![entry(1), entry(1), entry(3)];
        leader.role = Role::Leader;
        leader.epoch_start_offset = 2;
        let mut f = node(2);
        f.quorum = QuorumState {
            leader_epoch: 3,
            voted_for: None,
            leader_id: Some(1),
        };
        f.role = Role::Follower;
        f.log = vec![entry(1), entry(1), entry(2), entry(2)];
        let req = Request::Fetch {
            replica_id: 2,
            current_leader_epoch: 3,
            fetch_offset: 4,
            last_fetched_epoch: 2,
        };
        let (resp, _) = leader.handle_request(0, 2, req.clone());
        assert!(
            matches!(
                resp,
                Response::Fetch {
                    diverging_epoch: Some((1, 2)),
                    ..
                }
            ),
            "{resp:?}"
        );
        let out = f.handle_response(0, 1, &req, resp);
        assert_eq!(out, vec![Output::Truncate { offset: 2 }]);
        assert_eq!(f.log_end_offset(), 2);
    }
}
