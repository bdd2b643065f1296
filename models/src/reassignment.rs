//! Partition reassignment (KIP-455) on top of the replication model: the controller grows the
//! replica set to origin ∪ target, waits for the adding replicas to join the ISR, then shrinks
//! it to the target in one partition change that also moves leadership into the target and
//! bumps the leader epoch. AlterPartitionReassignments may cancel a running reassignment
//! (revert to the origin) or replace it with a new target. Every replication action (produce,
//! fetch, truncation, AlterPartition, crashes, restarts, elections) interleaves with each step.
//! See `specs/reassignment.md`.
//!
//! The replication model's state, actions and invariants are reused as they are: this module
//! adds the PartitionRecord's `addingReplicas` / `removingReplicas`, the admin's requests and
//! the controller's reassignment partition changes, and runs `Replication::replication_step`
//! for everything else.

use crate::catalog::{Bound, BugFlag, Config, KcheckModel};
use crate::property::Property;
use crate::replication::{self, BrokerId, BrokerSet, Replica, Replication, MAX_BROKERS};
use serde::{Deserialize, Serialize};
use stateright::Model;

/// The model's state: the replication state (whose `partition.replicas` is the assigned
/// replica set, origin ∪ target while a reassignment runs) plus KIP-455's reassignment fields.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct State {
    pub replication: replication::State,
    /// PartitionRecord.addingReplicas: target replicas not in the origin (KIP-455).
    pub adding: BrokerSet,
    /// PartitionRecord.removingReplicas: origin replicas not in the target (KIP-455).
    pub removing: BrokerSet,
    /// Ghost: the replica set before the running reassignment started (a replacing request
    /// keeps it). Equal to the replica set when no reassignment runs.
    pub origin: BrokerSet,
    /// Ghost: the target of the admin's last AlterPartitionReassignments request. Equal to the
    /// replica set when no reassignment runs.
    pub target: BrokerSet,
    /// Ghost: the previous step completed a reassignment (what `completes-to-target` judges).
    pub just_completed: bool,
    /// AlterPartitionReassignments requests sent so far (new, replacing or cancelling).
    pub requests: u8,
}

impl State {
    /// KRaft's `isReassignmentInProgress`: the partition has adding or removing replicas.
    pub fn reassigning(&self) -> bool {
        !self.adding.union(self.removing).is_empty()
    }
}

/// Actions: every replication action, plus the admin's requests and the controller's
/// completion. The JSON of a replication action is the replication model's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Action {
    Replication(replication::Action),
    Reassignment(ReassignmentAction),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum ReassignmentAction {
    /// AlterPartitionReassignments with a target replica set: starts a reassignment or
    /// replaces the running one. `leader` is the leader after the partition change (a new one
    /// only when a replacing request drops the current leader, an adding replica of the
    /// previous target).
    Reassign {
        #[serde(with = "broker_list")]
        target: BrokerSet,
        leader: BrokerId,
    },
    /// AlterPartitionReassignments with a null target: revert to the origin replicas.
    Cancel { leader: BrokerId },
    /// The controller's completion partition change: replicas := target, ISR minus the
    /// removing replicas, leader moved into the target if it is being removed, leader epoch
    /// bumped. In Kafka it rides on the AlterPartition that adds the last adding replica (or on
    /// the request itself when nothing is added); the model lets it happen any time after.
    CompleteReassignment { leader: BrokerId },
}

/// A broker set in traces as the list of broker ids an admin would write (`[1, 2, 3]`).
mod broker_list {
    use crate::replication::{BrokerId, BrokerSet, MAX_BROKERS};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(set: &BrokerSet, ser: S) -> Result<S::Ok, S::Error> {
        set.iter().collect::<Vec<BrokerId>>().serialize(ser)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<BrokerSet, D::Error> {
        let ids = Vec::<BrokerId>::deserialize(de)?;
        ids.into_iter().try_fold(BrokerSet::default(), |set, b| {
            if (b as usize) < MAX_BROKERS {
                Ok(set.with(b))
            } else {
                Err(serde::de::Error::custom(format!(
                    "broker id {b} is out of range (brokers are 0..{MAX_BROKERS})"
                )))
            }
        })
    }
}

/// The bugs this model can switch on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReassignmentBug {
    RemoveBeforeCaughtUp,
    LeaderOutsideTarget,
    NoLeaderMove,
    CancelKeepsAddingInIsr,
    ReplaceFromGrownSet,
}

impl ReassignmentBug {
    pub fn name(self) -> &'static str {
        match self {
            ReassignmentBug::RemoveBeforeCaughtUp => "remove-before-caught-up",
            ReassignmentBug::LeaderOutsideTarget => "leader-outside-target",
            ReassignmentBug::NoLeaderMove => "no-leader-move",
            ReassignmentBug::CancelKeepsAddingInIsr => "cancel-keeps-adding-in-isr",
            ReassignmentBug::ReplaceFromGrownSet => "replace-from-grown-set",
        }
    }
    pub const ALL: [ReassignmentBug; 5] = [
        ReassignmentBug::RemoveBeforeCaughtUp,
        ReassignmentBug::LeaderOutsideTarget,
        ReassignmentBug::NoLeaderMove,
        ReassignmentBug::CancelKeepsAddingInIsr,
        ReassignmentBug::ReplaceFromGrownSet,
    ];
}

static BUG_FLAGS: &[BugFlag] = &[
    BugFlag {
        name: "remove-before-caught-up",
        meaning: "the controller drops the origin replicas without waiting for the adding replicas to join the ISR, counting the target as in sync",
        source: "KIP-455 (completion waits for every adding replica in the ISR); mutation",
        violates: "no-committed-data-loss",
    },
    BugFlag {
        name: "leader-outside-target",
        meaning: "completion keeps the leader even when it is a removed replica",
        source: "KIP-455; KRaft PartitionChangeBuilder elects from the target; mutation",
        violates: "leader-in-replicas",
    },
    BugFlag {
        name: "no-leader-move",
        meaning: "completion waits for the leader to be in the target, but nothing moves it there",
        source: "KIP-455 (the completion change elects a target leader); mutation",
        violates: "reassignment-can-complete",
    },
    BugFlag {
        name: "cancel-keeps-adding-in-isr",
        meaning: "cancelling reverts the replica set but leaves the adding replicas in the ISR",
        source: "KIP-455 cancellation (KRaft PartitionReassignmentRevert); mutation",
        violates: "isr-subset-of-replicas",
    },
    BugFlag {
        name: "replace-from-grown-set",
        meaning: "a replacing request computes adding/removing from origin ∪ old target, not the origin",
        source: "KIP-455 (a new reassignment replaces the running one); mutation",
        violates: "completes-to-target",
    },
];

static BOUNDS: &[Bound] = &[
    Bound {
        name: "brokers",
        meaning: "brokers in the cluster (a move needs one more than the replication factor)",
        default: 4,
        release: 4,
        min: 2,
        max: MAX_BROKERS as u32,
    },
    Bound {
        name: "replication-factor",
        meaning: "replicas in the origin and in every target (at most brokers - 1)",
        default: 3,
        release: 3,
        min: 1,
        max: MAX_BROKERS as u32 - 1,
    },
    Bound {
        name: "records",
        meaning: "records the producer sends",
        default: 1,
        release: 1,
        min: 1,
        max: 6,
    },
    Bound {
        name: "epochs",
        meaning: "leader epoch below which crashes happen and up to which failovers elect (completion and cancel bumps come on top)",
        default: 2,
        release: 3,
        min: 1,
        max: 5,
    },
    Bound {
        name: "crashes",
        meaning: "broker crashes (clean or unclean)",
        default: 1,
        release: 2,
        min: 0,
        max: 6,
    },
    Bound {
        name: "min-isr",
        meaning: "min.insync.replicas (at most the replication factor)",
        default: 2,
        release: 2,
        min: 1,
        max: MAX_BROKERS as u32,
    },
    Bound {
        name: "requests",
        meaning: "AlterPartitionReassignments requests (start, replace or cancel)",
        default: 2,
        release: 2,
        min: 1,
        max: 3,
    },
];

/// The reassignment model: a replication model over `brokers` brokers whose partition starts
/// on the first `replication_factor` of them.
#[derive(Clone, Debug)]
pub struct Reassignment {
    pub replication: Replication,
    pub replication_factor: usize,
    pub max_requests: u8,
    pub bugs: Vec<ReassignmentBug>,
}

impl Reassignment {
    pub fn has(&self, bug: ReassignmentBug) -> bool {
        self.bugs.contains(&bug)
    }

    /// Broker 0 leads epoch 1 of a partition on brokers 0..replication-factor, all in sync.
    pub fn initial_state(&self) -> State {
        let replicas = BrokerSet::all(self.replication_factor);
        State {
            replication: self.replication.initial_state(replicas, 0),
            adding: BrokerSet::default(),
            removing: BrokerSet::default(),
            origin: replicas,
            target: replicas,
            just_completed: false,
            requests: 0,
        }
    }

    fn alive(&self, s: &State, set: BrokerSet) -> BrokerSet {
        set.filter(|b| s.replication.replicas[b as usize].alive)
    }

    /// The leaders a partition change leaving `replicas` / `isr` may have: the current one if
    /// it stays a replica, else (KRaft's PartitionChangeBuilder) any live member of the new
    /// ISR. Empty: the change cannot be made (no live leader, or no live ISR member to elect).
    fn leaders_after(&self, s: &State, replicas: BrokerSet, isr: BrokerSet) -> Vec<BrokerId> {
        let Some(l) = self.replication.leader(&s.replication) else {
            return Vec::new();
        };
        if replicas.contains(l) {
            return vec![l];
        }
        self.alive(s, isr).iter().collect()
    }

    /// Every AlterPartitionReassignments target: `replication-factor` brokers, other than the
    /// one the partition is already heading to.
    fn targets(&self, s: &State) -> impl Iterator<Item = BrokerSet> + '_ {
        let heading_to = s.replication.partition.replicas.0 & !s.removing.0;
        let n = self.replication.brokers;
        (0..(1u16 << n))
            .map(|bits| BrokerSet::from_bits(bits as u8))
            .filter(move |t| t.len() == self.replication_factor && t.0 != heading_to)
    }

    /// The origin a new request is computed against: the replicas minus the adding ones
    /// (KRaft reverts the running reassignment first).
    fn origin_of(&self, s: &State) -> BrokerSet {
        let replicas = s.replication.partition.replicas;
        if self.has(ReassignmentBug::ReplaceFromGrownSet) {
            replicas
        } else {
            replicas.difference(s.adding)
        }
    }

    fn reassign_plan(&self, s: &State, target: BrokerSet) -> (BrokerSet, BrokerSet, BrokerSet) {
        let origin = self.origin_of(s);
        let adding = target.difference(origin);
        let removing = origin.difference(target);
        (origin.union(target), adding, removing)
    }

    fn cancel_isr(&self, s: &State) -> BrokerSet {
        let isr = s.replication.partition.isr;
        if self.has(ReassignmentBug::CancelKeepsAddingInIsr) {
            isr
        } else {
            isr.difference(s.adding)
        }
    }

    /// The ISR after completion: the removing replicas leave it; under
    /// `remove-before-caught-up` the adding replicas are taken as in sync.
    fn completion_isr(&self, s: &State) -> BrokerSet {
        let isr = s.replication.partition.isr.difference(s.removing);
        if self.has(ReassignmentBug::RemoveBeforeCaughtUp) {
            isr.union(s.adding)
        } else {
            isr
        }
    }

    fn may_complete(&self, s: &State) -> bool {
        let isr = s.replication.partition.isr;
        s.reassigning()
            && (s.adding.is_subset(isr) || self.has(ReassignmentBug::RemoveBeforeCaughtUp))
            && !self.completion_isr(s).is_empty()
    }

    fn completion_leaders(&self, s: &State) -> Vec<BrokerId> {
        let target = s.replication.partition.replicas.difference(s.removing);
        let Some(l) = self.replication.leader(&s.replication) else {
            return Vec::new();
        };
        if self.has(ReassignmentBug::LeaderOutsideTarget) {
            return vec![l];
        }
        if self.has(ReassignmentBug::NoLeaderMove) && !target.contains(l) {
            return Vec::new();
        }
        self.leaders_after(s, target, self.completion_isr(s))
    }

    fn reassignment_actions(&self, s: &State, actions: &mut Vec<Action>) {
        let p = &s.replication.partition;
        if s.requests < self.max_requests {
            for target in self.targets(s) {
                let (replicas, _, _) = self.reassign_plan(s, target);
                let dropped = p.replicas.difference(replicas);
                let leaders = if dropped.is_empty() {
                    // Growing only: the leader (even none) is unchanged.
                    vec![p.leader.unwrap_or(0)]
                } else {
                    let isr = p.isr.intersection(replicas);
                    if isr.is_empty() {
                        continue;
                    }
                    self.leaders_after(s, replicas, isr)
                };
                for leader in leaders {
                    actions.push(Action::Reassignment(ReassignmentAction::Reassign {
                        target,
                        leader,
                    }));
                }
            }
            if s.reassigning() && !self.cancel_isr(s).is_empty() {
                // Kafka refuses a revert that would empty the ISR (unless unclean leader
                // election is enabled for the topic, which this model does not enable).
                let origin = p.replicas.difference(s.adding);
                let leaders = if s.adding.is_empty() {
                    vec![p.leader.unwrap_or(0)]
                } else {
                    self.leaders_after(s, origin, self.cancel_isr(s))
                };
                for leader in leaders {
                    actions.push(Action::Reassignment(ReassignmentAction::Cancel { leader }));
                }
            }
        }
        if self.may_complete(s) {
            for leader in self.completion_leaders(s) {
                actions.push(Action::Reassignment(
                    ReassignmentAction::CompleteReassignment { leader },
                ));
            }
        }
    }

    /// The controller's partition change to a new assignment. When it removes replicas, their
    /// logs are deleted (StopReplica with deletePartition), the leader moves to `leader` if it
    /// was removed, and the leader epoch is bumped (KRaft bumps it whenever a partition change
    /// removes replicas, so removed replicas stop fetching).
    fn change_assignment(
        &self,
        s: &mut State,
        replicas: BrokerSet,
        isr: BrokerSet,
        leader: BrokerId,
    ) -> Option<()> {
        let r = &mut s.replication;
        let mut p = r.partition.clone();
        let dropped = p.replicas.difference(replicas);
        p.replicas = replicas;
        p.isr = isr;
        p.elr = p.elr.intersection(replicas);
        self.replication.change_partition(r, p);
        if dropped.is_empty() {
            return Some(());
        }
        for b in dropped.iter() {
            let alive = r.replicas[b as usize].alive;
            let unclean = r.replicas[b as usize].unclean_shutdown;
            r.replicas[b as usize] = Replica {
                alive,
                unclean_shutdown: unclean,
                ..Replica::new()
            };
            r.follower_leo[b as usize] = 0;
        }
        self.replication.leader(r)?;
        self.replication.elect(r, leader);
        Some(())
    }

    fn reassignment_step(&self, s: &mut State, action: ReassignmentAction) -> Option<()> {
        match action {
            ReassignmentAction::Reassign { target, leader } => {
                let origin = if s.reassigning() {
                    s.origin
                } else {
                    s.replication.partition.replicas
                };
                let (replicas, adding, removing) = self.reassign_plan(s, target);
                let isr = s.replication.partition.isr.intersection(replicas);
                if isr.is_empty() {
                    return None;
                }
                self.change_assignment(s, replicas, isr, leader)?;
                s.requests += 1;
                s.adding = adding;
                s.removing = removing;
                s.origin = origin;
                s.target = target;
                if !s.reassigning() {
                    // Back to the origin by a new request: complete at once.
                    s.just_completed = true;
                }
            }
            ReassignmentAction::Cancel { leader } => {
                if !s.reassigning() {
                    return None;
                }
                let replicas = s.replication.partition.replicas.difference(s.adding);
                let isr = self.cancel_isr(s);
                self.change_assignment(s, replicas, isr, leader)?;
                s.requests += 1;
                s.adding = BrokerSet::default();
                s.removing = BrokerSet::default();
                s.origin = replicas;
                s.target = replicas;
            }
            ReassignmentAction::CompleteReassignment { leader } => {
                if !self.may_complete(s) {
                    return None;
                }
                let replicas = s.replication.partition.replicas.difference(s.removing);
                let isr = self.completion_isr(s);
                self.change_assignment(s, replicas, isr, leader)?;
                if s.removing.is_empty() {
                    // Nothing removed (the replication factor grew): KRaft still bumps the
                    // leader epoch when it clears the reassignment.
                    self.replication.elect(&mut s.replication, leader);
                }
                s.adding = BrokerSet::default();
                s.removing = BrokerSet::default();
                s.just_completed = true;
            }
        }
        Some(())
    }

    /// Relabel brokers so that equivalent states coincide. Every broker-indexed field is
    /// permuted together (replication state, adding, removing, the ghosts' origin and target),
    /// so any permutation of all brokers maps behaviours to behaviours: the roles that origin
    /// and target give brokers travel with them.
    pub fn canonical(&self, s: &State) -> State {
        let n = self.replication.brokers;
        let r = &s.replication;
        let key = |b: usize| {
            let bb = b as BrokerId;
            (
                r.partition.leader != Some(bb),
                r.replicas[b],
                r.partition.isr.contains(bb),
                r.partition.elr.contains(bb),
                r.partition.replicas.contains(bb),
                r.follower_leo[b],
                r.alter_in_flight.map(|a| a.proposed_isr.contains(bb)),
                s.adding.contains(bb),
                s.removing.contains(bb),
                s.origin.contains(bb),
                s.target.contains(bb),
            )
        };
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|b| key(*b));
        let mut perm = [0 as BrokerId; MAX_BROKERS];
        for (new, old) in order.iter().enumerate() {
            perm[*old] = new as BrokerId;
        }
        let perm = &perm[..n];
        State {
            replication: replication::permute(r, perm),
            adding: s.adding.permute(perm),
            removing: s.removing.permute(perm),
            origin: s.origin.permute(perm),
            target: s.target.permute(perm),
            ..*s
        }
    }
}

impl Model for Reassignment {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![self.initial_state()]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        let mut inner = Vec::new();
        self.replication
            .replication_actions(&s.replication, &mut inner);
        let p = &s.replication.partition;
        for a in inner {
            if let replication::Action::Crash { broker, .. } = a {
                // Faults only hit replicas of the partition, and only while a failover
                // election is still within the epoch bound: "without further faults the
                // reassignment can complete" must not fail merely because the bound ran out.
                if !p.replicas.contains(broker) || p.leader_epoch >= self.replication.max_epoch {
                    continue;
                }
            }
            actions.push(Action::Replication(a));
        }
        self.reassignment_actions(s, actions);
    }

    fn next_state(&self, s: &State, action: Action) -> Option<State> {
        let mut next = s.clone();
        if next.just_completed {
            next.just_completed = false;
            next.origin = next.replication.partition.replicas;
            next.target = next.replication.partition.replicas;
        }
        match action {
            Action::Replication(a) => {
                next.replication = self.replication.replication_step(&next.replication, a)?;
            }
            Action::Reassignment(a) => self.reassignment_step(&mut next, a)?,
        }
        Some(next)
    }
}

// ---- invariants -------------------------------------------------------------------------

/// The leader is an assigned replica.
pub fn leader_in_replicas(s: &State) -> bool {
    let p = &s.replication.partition;
    p.leader.is_none_or(|l| p.replicas.contains(l))
}

/// Right after a reassignment completes, the replica set is exactly the requested target, no
/// reassignment is recorded as running, the leader and the ISR lie within the target, and
/// every replica the reassignment added is in the ISR. (A replica kept from the origin may be
/// out of the ISR: Kafka completes once the *adding* replicas are in sync.)
pub fn completes_to_target(s: &State) -> bool {
    if !s.just_completed {
        return true;
    }
    let p = &s.replication.partition;
    let added = s.target.difference(s.origin);
    p.replicas == s.target
        && !s.reassigning()
        && p.isr.is_subset(s.target)
        && added.is_subset(p.isr)
        && p.leader.is_none_or(|l| s.target.contains(l))
}

/// The partition has no leader and no replica it may elect without losing acknowledged data:
/// every ISR and ELR member is down after an unclean shutdown (and leaves both sets when it
/// restarts, KIP-966). Kafka keeps such a partition offline until unclean recovery or
/// `unclean.leader.election.enable`, so no reassignment can complete there; the
/// "can complete" check exempts these states rather than blame the reassignment protocol.
pub fn needs_unclean_recovery(s: &State) -> bool {
    let r = &s.replication;
    let p = &r.partition;
    p.leader.is_none()
        && p.isr.union(p.elr).iter().all(|b| {
            let replica = &r.replicas[b as usize];
            !replica.alive && replica.unclean_shutdown
        })
}

impl KcheckModel for Reassignment {
    const NAME: &'static str = "reassignment";
    const ABOUT: &'static str =
        "KIP-455 partition reassignment (grow, catch up, move leader, shrink; cancel, replace) over replication";

    fn bounds() -> &'static [Bound] {
        BOUNDS
    }

    fn bug_flags() -> &'static [BugFlag] {
        BUG_FLAGS
    }

    /// Cross-bound limits are clamped: the replication factor to brokers - 1 (a target must
    /// differ from the origin) and min.insync.replicas to the replication factor.
    fn from_config(config: &Config) -> Self {
        let brokers = config.bound("brokers") as usize;
        let replication_factor = (config.bound("replication-factor") as usize).min(brokers - 1);
        Reassignment {
            replication: Replication {
                brokers,
                max_records: config.bound("records") as u8,
                max_epoch: config.bound("epochs") as u8,
                max_crashes: config.bound("crashes") as u8,
                min_isr: (config.bound("min-isr") as usize).min(replication_factor),
                bugs: Vec::new(),
            },
            replication_factor,
            max_requests: config.bound("requests") as u8,
            bugs: config.bugs(&ReassignmentBug::ALL, ReassignmentBug::name),
        }
    }

    fn named_properties() -> Vec<Property<Self>> {
        // The replication model's invariants, judged on the embedded replication state.
        let mut properties: Vec<Property<Self>> = vec![
            Property::always(
                "no-committed-data-loss",
                "a record acknowledged with acks=all while the ISR met min.insync.replicas is never lost or replaced",
                |_, s: &State| replication::no_committed_data_loss(&s.replication),
            ),
            Property::always(
                "replica-log-consistency",
                "replicas agree on every offset below their HWs",
                |_, s: &State| replication::replica_log_consistency(&s.replication),
            ),
            Property::always(
                "consumed-records-stable",
                "a record a consumer read at offset o is never replaced at o",
                |_, s: &State| replication::consumed_records_stable(&s.replication),
            ),
            Property::always(
                "leader-in-isr",
                "the partition's leader is a member of its ISR",
                |_, s: &State| replication::leader_in_isr(&s.replication),
            ),
            Property::always(
                "isr-subset-of-replicas",
                "every ISR member is an assigned replica, in every intermediate reassignment state",
                |_, s: &State| replication::isr_subset_of_replicas(&s.replication),
            ),
            Property::always(
                "replica-state-well-formed",
                "HW <= LEO on every replica and its leader-epoch cache matches its log",
                |_, s: &State| replication::replica_state_well_formed(&s.replication),
            ),
        ];
        properties.extend([
            Property::always(
                "leader-in-replicas",
                "the partition's leader is an assigned replica",
                |_, s: &State| leader_in_replicas(s),
            ),
            Property::always(
                "completes-to-target",
                "a completed reassignment leaves exactly the target replicas, the added ones in the ISR, the leader in the target",
                |_, s: &State| completes_to_target(s),
            ),
            Property::always_can_reach(
                "reassignment-can-complete",
                "from every reachable state, without further crashes or requests, the running reassignment can complete (or the partition needs unclean recovery)",
                |_, s: &State| !s.reassigning() || needs_unclean_recovery(s),
                |a| {
                    !matches!(
                        a,
                        Action::Replication(replication::Action::Crash { .. })
                            | Action::Reassignment(ReassignmentAction::Reassign { .. })
                            | Action::Reassignment(ReassignmentAction::Cancel { .. })
                    )
                },
            ),
            Property::sometimes(
                "data-moves-to-added-leader",
                "non-vacuity: a reassignment completes with a record acknowledged and the leader on a replica it added",
                |_, s: &State| {
                    let p = &s.replication.partition;
                    s.just_completed
                        && !s.replication.acked.is_empty()
                        && p.leader.is_some_and(|l| !s.origin.contains(l))
                        && replication::no_committed_data_loss(&s.replication)
                },
            ),
            Property::sometimes(
                "completes-after-crash",
                "non-vacuity: a reassignment completes, with a record acknowledged, after a broker crashed",
                |_, s: &State| {
                    s.just_completed
                        && s.replication.crashes >= 1
                        && !s.replication.acked.is_empty()
                },
            ),
            Property::sometimes(
                "replaced-then-completes",
                "non-vacuity: a reassignment replaced by a second request completes to a target other than the origin",
                |_, s: &State| s.just_completed && s.requests >= 2 && s.target != s.origin,
            ),
        ]);
        properties
    }

    fn representative(&self, s: &State) -> State {
        self.canonical(s)
    }

    fn describe_action(&self, s: &State, action: &Action) -> String {
        let p = &s.replication.partition;
        let leader_change = |leader: BrokerId| match p.leader {
            Some(l) if l == leader => format!("leader b{l} stays"),
            _ => format!("b{leader} becomes leader"),
        };
        match *action {
            Action::Replication(a) => self.replication.describe_action(&s.replication, &a),
            Action::Reassignment(ReassignmentAction::Reassign { target, leader }) => {
                let (replicas, adding, removing) = self.reassign_plan(s, target);
                let verb = if s.reassigning() {
                    "replaces the running reassignment with"
                } else {
                    "requests"
                };
                let mut text = format!(
                    "admin {verb} target {target:?} (AlterPartitionReassignments): replicas {replicas:?} adding {adding:?} removing {removing:?}"
                );
                if !p.replicas.is_subset(replicas) {
                    text.push_str(&format!(
                        ", {} in a new leader epoch",
                        leader_change(leader)
                    ));
                }
                text
            }
            Action::Reassignment(ReassignmentAction::Cancel { leader }) => {
                let origin = p.replicas.difference(s.adding);
                let mut text = format!(
                    "admin cancels the reassignment (AlterPartitionReassignments, null target): replicas revert to {origin:?}"
                );
                if !s.adding.is_empty() {
                    text.push_str(&format!(
                        ", {} in a new leader epoch",
                        leader_change(leader)
                    ));
                }
                text
            }
            Action::Reassignment(ReassignmentAction::CompleteReassignment { leader }) => {
                let target = p.replicas.difference(s.removing);
                format!(
                    "controller completes the reassignment: replicas {target:?} ISR {:?}, {} in leader epoch {}",
                    self.completion_isr(s),
                    leader_change(leader),
                    p.leader_epoch + 1
                )
            }
        }
    }

    fn describe_state(&self, s: &State) -> Vec<String> {
        let p = &s.replication.partition;
        let mut lines = vec![format!(
            "assignment: replicas={:?} adding={:?} removing={:?} requests={}{}",
            p.replicas,
            s.adding,
            s.removing,
            s.requests,
            if s.just_completed {
                format!(" (completed: target {:?})", s.target)
            } else {
                String::new()
            }
        )];
        lines.extend(self.replication.describe_state(&s.replication));
        lines
    }
}
