//! Kafka's controller in ZooKeeper mode: one partition replicated on every broker, the
//! controller elected through the ephemeral `/controller` znode, and partition state kept in
//! ZooKeeper under conditional (zkVersion) writes. See `specs/zk-controller.md`.
//!
//! What the model keeps from Kafka 2.x in ZooKeeper mode:
//! * ZooKeeper is one linearizable store: every ZooKeeper operation is one atomic step. Broker
//!   sessions expire nondeterministically (a GC pause, a network partition) and take their
//!   ephemeral znodes (`/controller`, `/brokers/ids/<id>`) with them. Watches fire
//!   asynchronously: a broker may act on a deletion at any later step.
//! * Becoming controller creates `/controller` and bumps `/controller_epoch` with a conditional
//!   write in one multi-op; the new controller reads the partition state and sends
//!   UpdateMetadata and LeaderAndIsr to every live broker (`onControllerFailover`).
//! * Every ZooKeeper write of the controller checks the `/controller_epoch` zkVersion in the
//!   same multi-op (KAFKA-6082, Kafka 2.2): a controller that lost its session but has not
//!   processed the expiry yet (the zombie) cannot change ZooKeeper, and resigns on
//!   ControllerMovedException. Brokers drop requests whose controller epoch is older than the
//!   newest they have seen (STALE_CONTROLLER_EPOCH).
//! * The partition-state znode (leader, leader epoch, ISR) is written by the controller on a
//!   leader election and by the leader itself when it shrinks or expands the ISR (before
//!   KIP-497); both writes are conditional on the zkVersion the writer cached, and a leader
//!   whose write fails keeps its old ISR (KAFKA-2729's "Cached zkVersion not equal to that in
//!   zookeeper").
//! * Brokers apply a LeaderAndIsr only with a higher leader epoch; UpdateMetadata replaces the
//!   metadata cache with no leader-epoch check, so the controller epoch is its only fence.
//! * The data plane is as small as `no-committed-data-loss` needs: a follower fetching at the
//!   leader's epoch ends with the leader's log (the truncation protocol itself is the
//!   `replication` model's business), and a record is acknowledged once every member of the
//!   leader's cached ISR holds it (acks=all, min.insync.replicas=1 as ZooKeeper-era Kafka
//!   defaulted to).

use crate::catalog::{Bound, BugFlag, Config, KcheckModel};
use crate::compact::InlineVec;
use crate::property::Property;
use crate::replication::{BrokerId, BrokerSet, LeaderEpoch, Offset, MAX_BROKERS, MAX_RECORDS};
use serde::{Deserialize, Serialize};
use stateright::Model;
use std::fmt;

/// `/controller_epoch`'s value. Its zkVersion moves with it (one write per election), so the
/// model compares epochs where Kafka compares the zkVersion.
pub type ControllerEpoch = u8;
/// The zkVersion of the partition-state znode: bumped by every write.
pub type ZkVersion = u8;

/// The most controller requests in flight at once: a send that would exceed it is not taken
/// (the bounds keep real runs far below it; `requests_fit` says which sends are disabled).
pub const MAX_REQUESTS: usize = 24;

/// The partition-state znode's content with its zkVersion (Kafka's LeaderIsrAndControllerEpoch
/// plus the version the writer read or wrote).
#[derive(
    Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct LeaderAndIsr {
    pub leader: Option<BrokerId>,
    pub leader_epoch: LeaderEpoch,
    pub isr: BrokerSet,
    pub zk_version: ZkVersion,
}

impl LeaderAndIsr {
    fn permute(self, perm: &[BrokerId]) -> Self {
        LeaderAndIsr {
            leader: self.leader.map(|l| perm[l as usize]),
            isr: self.isr.permute(perm),
            ..self
        }
    }
}

impl fmt::Display for LeaderAndIsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "leader={} leader-epoch={} ISR={:?} zkVersion={}",
            self.leader.map_or("none".to_string(), |l| format!("b{l}")),
            self.leader_epoch,
            self.isr,
            self.zk_version
        )
    }
}

/// What ZooKeeper holds.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Zk {
    /// The ephemeral `/controller` znode's owner.
    pub controller: Option<BrokerId>,
    pub controller_epoch: ControllerEpoch,
    pub partition: LeaderAndIsr,
}

/// The controller's in-memory context (Kafka's ControllerContext, cut to one partition).
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct ControllerContext {
    pub epoch: ControllerEpoch,
    /// The partition state as last read or written; stale once someone else writes.
    pub partition: LeaderAndIsr,
    /// Live brokers as of the last `/brokers/ids` watch it processed.
    pub live: BrokerSet,
}

/// One broker: its ZooKeeper session, the controller role if it holds one, its replica and
/// its metadata cache. The last three fields are history (ghost) variables the invariants read.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Broker {
    /// The ZooKeeper session is alive (the broker is registered under `/brokers/ids`).
    pub session: bool,
    pub controller: Option<ControllerContext>,
    /// The newest controller epoch this broker accepted a request from.
    pub controller_epoch: ControllerEpoch,
    /// The partition state of the last LeaderAndIsr applied (a leader also updates it on its
    /// own ISR writes): its role, leader epoch, ISR and cached zkVersion.
    pub replica: LeaderAndIsr,
    /// The metadata cache (UpdateMetadata): what clients are told.
    pub metadata: LeaderAndIsr,
    /// `log[o]` is the leader epoch that wrote offset `o`.
    pub log: InlineVec<LeaderEpoch, MAX_RECORDS>,
    /// Leader epochs in which this broker became leader, as a bit set.
    pub led_epochs: u8,
    /// It acted on a request from an older controller epoch than one it had accepted.
    pub obeyed_stale_controller: bool,
    /// It applied a partition state older (by zkVersion) than one it had applied.
    pub applied_out_of_order: bool,
}

/// The requests one controller event sends to one broker, in flight. Kafka's
/// ControllerBrokerRequestBatch sends a LeaderAndIsr and then an UpdateMetadata over the same
/// connection and the broker handles them back to back; the model delivers the pair in one
/// step (and counts both requests in `messages`).
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Request {
    pub to: BrokerId,
    pub controller_epoch: ControllerEpoch,
    pub leader_and_isr: bool,
    pub update_metadata: bool,
    pub state: LeaderAndIsr,
}

impl Request {
    pub fn kinds(&self) -> &'static str {
        match (self.leader_and_isr, self.update_metadata) {
            (true, true) => "LeaderAndIsr+UpdateMetadata",
            (true, false) => "LeaderAndIsr",
            _ => "UpdateMetadata",
        }
    }
    /// Kafka requests this stands for.
    pub fn count(&self) -> usize {
        self.leader_and_isr as usize + self.update_metadata as usize
    }
    /// One controller's requests to one broker travel over one connection, in order.
    fn channel(&self) -> (BrokerId, ControllerEpoch) {
        (self.to, self.controller_epoch)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct State {
    pub zk: Zk,
    pub brokers: InlineVec<Broker, MAX_BROKERS>,
    /// In flight, sorted by channel (stable: each channel's requests keep their order).
    pub network: InlineVec<Request, MAX_REQUESTS>,
    /// Acknowledged records as (offset, leader epoch).
    pub acked: InlineVec<(Offset, LeaderEpoch), MAX_RECORDS>,
    pub produced: u8,
    pub expiries: u8,
    pub isr_changes: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// The broker's ZooKeeper session expires (GC pause, partition): its ephemeral znodes go.
    ExpireSession { broker: BrokerId },
    /// The broker processes the expiry: it resigns as controller and registers again with a
    /// new session.
    NoticeExpiry { broker: BrokerId },
    /// The `/controller` deletion watch fired: the broker creates `/controller`, bumps
    /// `/controller_epoch`, reads the partition state and sends UpdateMetadata and
    /// LeaderAndIsr to every live broker.
    BecomeController { broker: BrokerId },
    /// The controller processes the `/brokers/ids` watch: brokers that registered get
    /// LeaderAndIsr and UpdateMetadata; when brokers left and the leader is still live, every
    /// live broker gets UpdateMetadata.
    BrokerChange { controller: BrokerId },
    /// The controller elects `leader` from the live ISR for the offline partition and writes
    /// it to ZooKeeper (conditional on both zkVersions), then sends LeaderAndIsr and
    /// UpdateMetadata to every live broker.
    ElectLeader {
        controller: BrokerId,
        leader: BrokerId,
    },
    /// Deliver the in-flight request at this position (any channel's head: reordering across
    /// controllers and brokers).
    Deliver { index: u8 },
    /// A producer sends one record (acks=all) to a broker that believes it leads.
    Produce { leader: BrokerId },
    /// A follower fetches from the leader it knows, at the same leader epoch.
    Fetch { follower: BrokerId },
    /// The leader drops a lagging follower from the ISR with a conditional ZooKeeper write.
    ShrinkIsr {
        leader: BrokerId,
        follower: BrokerId,
    },
    /// The leader adds a caught-up follower to the ISR with a conditional ZooKeeper write.
    ExpandIsr {
        leader: BrokerId,
        follower: BrokerId,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ZkControllerBug {
    NoControllerEpochCheck,
    NoZkVersionCheck,
}

impl ZkControllerBug {
    pub fn name(self) -> &'static str {
        match self {
            ZkControllerBug::NoControllerEpochCheck => "no-controller-epoch-check",
            ZkControllerBug::NoZkVersionCheck => "no-zkversion-check",
        }
    }
    pub const ALL: [ZkControllerBug; 2] = [
        ZkControllerBug::NoControllerEpochCheck,
        ZkControllerBug::NoZkVersionCheck,
    ];
}

static BUG_FLAGS: &[BugFlag] = &[
    BugFlag {
        name: "no-controller-epoch-check",
        meaning: "the controller epoch fences nothing: brokers obey any controller and a zombie controller's ZooKeeper writes go through",
        source: "KAFKA-6082 (Kafka 2.2); STALE_CONTROLLER_EPOCH",
        violates: "single-effective-controller",
    },
    BugFlag {
        name: "no-zkversion-check",
        meaning: "partition-state writes ignore the cached zkVersion: lost updates of the leader and ISR",
        source: "KAFKA-2729, KAFKA-1382 (conditional partition-state updates)",
        violates: "no-committed-data-loss",
    },
];

static BOUNDS: &[Bound] = &[
    Bound {
        name: "brokers",
        meaning: "brokers (each a replica of the partition and a controller candidate)",
        default: 3,
        release: 3,
        min: 1,
        max: MAX_BROKERS as u32,
    },
    Bound {
        name: "expiries",
        meaning: "ZooKeeper session expiries",
        default: 2,
        release: 2,
        min: 0,
        max: 6,
    },
    Bound {
        name: "epochs",
        meaning: "highest leader epoch (elections + 1)",
        default: 3,
        release: 3,
        min: 1,
        max: 8,
    },
    Bound {
        name: "records",
        meaning: "records the producer sends",
        default: 1,
        release: 2,
        min: 0,
        max: 4,
    },
    Bound {
        name: "isr-changes",
        meaning: "ISR shrinks and expands written by leaders",
        default: 1,
        release: 2,
        min: 0,
        max: 4,
    },
];

#[derive(Clone, Debug)]
pub struct ZkController {
    pub brokers: usize,
    pub max_expiries: u8,
    pub max_epoch: LeaderEpoch,
    pub max_records: u8,
    pub max_isr_changes: u8,
    pub bugs: Vec<ZkControllerBug>,
}

fn all_brokers(s: &State) -> impl Iterator<Item = BrokerId> {
    0..s.brokers.len() as BrokerId
}

impl ZkController {
    pub fn has(&self, bug: ZkControllerBug) -> bool {
        self.bugs.contains(&bug)
    }

    /// Broker 0 is the controller (controller epoch 1) and leads leader epoch 1 with every
    /// broker in the ISR; every broker has applied that state.
    pub fn initial_state(&self) -> State {
        let n = self.brokers;
        let partition = LeaderAndIsr {
            leader: Some(0),
            leader_epoch: 1,
            isr: BrokerSet::all(n),
            zk_version: 0,
        };
        let brokers = (0..n)
            .map(|b| Broker {
                session: true,
                controller: (b == 0).then_some(ControllerContext {
                    epoch: 1,
                    partition,
                    live: BrokerSet::all(n),
                }),
                controller_epoch: 1,
                replica: partition,
                metadata: partition,
                led_epochs: if b == 0 { 1 << 1 } else { 0 },
                ..Broker::default()
            })
            .collect();
        State {
            zk: Zk {
                controller: Some(0),
                controller_epoch: 1,
                partition,
            },
            brokers,
            network: InlineVec::new(),
            acked: InlineVec::new(),
            produced: 0,
            expiries: 0,
            isr_changes: 0,
        }
    }

    /// Brokers registered under `/brokers/ids`.
    pub fn registered(s: &State) -> BrokerSet {
        all_brokers(s)
            .filter(|b| s.brokers[*b as usize].session)
            .fold(BrokerSet::default(), BrokerSet::with)
    }

    fn requests_fit(s: &State, extra: usize) -> bool {
        s.network.len() + extra <= MAX_REQUESTS
    }

    /// Queue (LeaderAndIsr and) UpdateMetadata to each broker in `to`.
    fn send(
        s: &mut State,
        epoch: ControllerEpoch,
        to: BrokerSet,
        leader_and_isr: bool,
        state: LeaderAndIsr,
    ) {
        for b in to.iter() {
            s.network.push(Request {
                to: b,
                controller_epoch: epoch,
                leader_and_isr,
                update_metadata: true,
                state,
            });
        }
        sort_network(&mut s.network);
    }

    /// The leader a broker believes itself to be: it applied a LeaderAndIsr naming itself.
    fn acts_as_leader(s: &State, b: BrokerId) -> bool {
        s.brokers[b as usize].replica.leader == Some(b)
    }

    /// Acknowledge every record of leader `l` that each member of its cached ISR holds.
    fn acknowledge(s: &mut State, l: BrokerId) {
        let leader = s.brokers[l as usize];
        for (o, e) in leader.log.iter().enumerate() {
            let held = leader
                .replica
                .isr
                .iter()
                .all(|m| s.brokers[m as usize].log.get(o) == Some(e));
            if held && !s.acked.contains(&(o as Offset, *e)) {
                s.acked.push((o as Offset, *e));
                s.acked.sort_unstable();
            }
        }
    }

    /// The leader `l` writes a new ISR to the partition-state znode.
    fn write_isr(&self, s: &mut State, l: BrokerId, isr: BrokerSet) -> Option<()> {
        let cached = s.brokers[l as usize].replica;
        if cached.zk_version != s.zk.partition.zk_version
            && !self.has(ZkControllerBug::NoZkVersionCheck)
        {
            // BadVersion: the leader keeps its ISR and retries on the next LeaderAndIsr.
            return None;
        }
        let written = LeaderAndIsr {
            isr,
            zk_version: s.zk.partition.zk_version + 1,
            ..cached
        };
        s.zk.partition = written;
        s.brokers[l as usize].replica = written;
        s.isr_changes += 1;
        Self::acknowledge(s, l);
        Some(())
    }

    fn apply_request(&self, s: &mut State, r: Request) {
        let b = &mut s.brokers[r.to as usize];
        if r.controller_epoch < b.controller_epoch {
            if !self.has(ZkControllerBug::NoControllerEpochCheck) {
                return; // STALE_CONTROLLER_EPOCH
            }
            b.obeyed_stale_controller = true;
        }
        b.controller_epoch = b.controller_epoch.max(r.controller_epoch);
        if r.leader_and_isr && r.state.leader_epoch > b.replica.leader_epoch {
            // (a LeaderAndIsr whose leader epoch is not higher is ignored)
            if r.state.zk_version < b.replica.zk_version {
                b.applied_out_of_order = true;
            }
            b.replica = r.state;
            if r.state.leader == Some(r.to) {
                b.led_epochs |= 1 << r.state.leader_epoch;
            }
        }
        if r.update_metadata {
            if r.state.zk_version < b.metadata.zk_version {
                b.applied_out_of_order = true;
            }
            b.metadata = r.state;
        }
    }

    /// Offline-partition leader election by controller `c` (PartitionStateMachine): the
    /// multi-op checks `/controller_epoch` and the partition's zkVersion, then writes.
    fn elect(&self, s: &mut State, c: BrokerId, leader: BrokerId) {
        let ctx = s.brokers[c as usize]
            .controller
            .expect("a controller elects");
        if s.zk.controller_epoch != ctx.epoch && !self.has(ZkControllerBug::NoControllerEpochCheck)
        {
            // ControllerMovedException: the zombie finds out and resigns.
            s.brokers[c as usize].controller = None;
            return;
        }
        if s.zk.partition.zk_version != ctx.partition.zk_version
            && !self.has(ZkControllerBug::NoZkVersionCheck)
        {
            // BadVersion: re-read the partition state; the election is retried from it.
            s.brokers[c as usize].controller = Some(ControllerContext {
                partition: s.zk.partition,
                ..ctx
            });
            return;
        }
        let written = LeaderAndIsr {
            leader: Some(leader),
            leader_epoch: ctx.partition.leader_epoch + 1,
            isr: ctx.partition.isr.intersection(ctx.live),
            zk_version: s.zk.partition.zk_version + 1,
        };
        s.zk.partition = written;
        s.brokers[c as usize].controller = Some(ControllerContext {
            partition: written,
            ..ctx
        });
        Self::send(s, ctx.epoch, ctx.live, true, written);
    }

    fn electable(&self, s: &State, c: BrokerId) -> BrokerSet {
        let Some(ctx) = s.brokers[c as usize].controller else {
            return BrokerSet::default();
        };
        let p = ctx.partition;
        if p.leader.is_some_and(|l| ctx.live.contains(l)) || p.leader_epoch >= self.max_epoch {
            return BrokerSet::default();
        }
        p.isr.intersection(ctx.live)
    }

    /// The requests a controller action sends (to check they fit in the network).
    fn sends(&self, s: &State, action: Action) -> usize {
        let n = s.brokers.len();
        match action {
            Action::BecomeController { .. }
            | Action::ElectLeader { .. }
            | Action::BrokerChange { .. } => n,
            _ => 0,
        }
    }
}

/// Stable sort by channel: requests of one channel keep their send order.
fn sort_network(network: &mut InlineVec<Request, MAX_REQUESTS>) {
    network.sort_by_key(|r| r.channel());
}

/// Rename every broker `b` to `perm[b]`.
pub fn permute(s: &State, perm: &[BrokerId]) -> State {
    let mut out = s.clone();
    out.zk.controller = s.zk.controller.map(|c| perm[c as usize]);
    out.zk.partition = s.zk.partition.permute(perm);
    for (old, b) in s.brokers.iter().enumerate() {
        let mut nb = *b;
        nb.controller = b.controller.map(|ctx| ControllerContext {
            partition: ctx.partition.permute(perm),
            live: ctx.live.permute(perm),
            ..ctx
        });
        nb.replica = b.replica.permute(perm);
        nb.metadata = b.metadata.permute(perm);
        out.brokers[perm[old] as usize] = nb;
    }
    out.network = s
        .network
        .iter()
        .map(|r| Request {
            to: perm[r.to as usize],
            state: r.state.permute(perm),
            ..*r
        })
        .collect();
    sort_network(&mut out.network);
    out
}

/// Relabel brokers so that equivalent states coincide (symmetry reduction): order brokers by
/// what they are, with every id-valued field replaced by a relation to the broker itself.
/// Brokers that tie are left in their order, so this is sound but not always the smallest
/// representative.
pub fn canonical(s: &State) -> State {
    let n = s.brokers.len();
    let me = |p: &LeaderAndIsr, b: BrokerId| {
        (
            p.leader == Some(b),
            p.isr.contains(b),
            p.leader_epoch,
            p.zk_version,
        )
    };
    let key = |b: usize| {
        let id = b as BrokerId;
        let r = &s.brokers[b];
        let inflight: InlineVec<(ControllerEpoch, bool, (bool, bool, u8, u8)), MAX_REQUESTS> = s
            .network
            .iter()
            .filter(|q| q.to == id)
            .map(|q| (q.controller_epoch, q.leader_and_isr, me(&q.state, id)))
            .collect();
        (
            s.zk.controller != Some(id),
            me(&s.zk.partition, id),
            r.session,
            r.controller
                .map(|c| (c.epoch, c.partition.zk_version, c.live.len())),
            r.controller_epoch,
            me(&r.replica, id),
            r.replica.isr.len(),
            me(&r.metadata, id),
            r.log,
            (
                r.led_epochs,
                r.obeyed_stale_controller,
                r.applied_out_of_order,
            ),
            inflight,
        )
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_cached_key(|b| key(*b));
    let mut perm = [0 as BrokerId; MAX_BROKERS];
    for (new, old) in order.iter().enumerate() {
        perm[*old] = new as BrokerId;
    }
    permute(s, &perm[..n])
}

impl Model for ZkController {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![self.initial_state()]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        let registered = Self::registered(s);
        for b in all_brokers(s) {
            let broker = &s.brokers[b as usize];
            if broker.session && s.expiries < self.max_expiries {
                actions.push(Action::ExpireSession { broker: b });
            }
            if !broker.session {
                actions.push(Action::NoticeExpiry { broker: b });
            }
            if broker.session && broker.controller.is_none() && s.zk.controller.is_none() {
                actions.push(Action::BecomeController { broker: b });
            }
            if let Some(ctx) = broker.controller {
                if ctx.live != registered {
                    actions.push(Action::BrokerChange { controller: b });
                }
                for l in self.electable(s, b).iter() {
                    actions.push(Action::ElectLeader {
                        controller: b,
                        leader: l,
                    });
                }
            }
            if Self::acts_as_leader(s, b) {
                let leader = broker;
                if s.produced < self.max_records {
                    actions.push(Action::Produce { leader: b });
                }
                if s.isr_changes < self.max_isr_changes {
                    for f in all_brokers(s).filter(|f| *f != b) {
                        let fr = &s.brokers[f as usize];
                        let following = fr.replica.leader == Some(b)
                            && fr.replica.leader_epoch == leader.replica.leader_epoch;
                        let caught_up = following && fr.log == leader.log;
                        if leader.replica.isr.contains(f) && !caught_up {
                            actions.push(Action::ShrinkIsr {
                                leader: b,
                                follower: f,
                            });
                        }
                        if !leader.replica.isr.contains(f) && caught_up {
                            actions.push(Action::ExpandIsr {
                                leader: b,
                                follower: f,
                            });
                        }
                    }
                }
            } else if let Some(l) = broker.replica.leader {
                let lr = &s.brokers[l as usize];
                if lr.replica.leader == Some(l)
                    && lr.replica.leader_epoch == broker.replica.leader_epoch
                    && lr.log != broker.log
                {
                    actions.push(Action::Fetch { follower: b });
                }
            }
        }
        for (i, r) in s.network.iter().enumerate() {
            if i == 0 || s.network[i - 1].channel() != r.channel() {
                actions.push(Action::Deliver { index: i as u8 });
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        if !Self::requests_fit(last, self.sends(last, action)) {
            return None;
        }
        let mut s = last.clone();
        match action {
            Action::ExpireSession { broker } => {
                let b = &mut s.brokers[broker as usize];
                if !b.session || s.expiries >= self.max_expiries {
                    return None;
                }
                b.session = false;
                s.expiries += 1;
                if s.zk.controller == Some(broker) {
                    s.zk.controller = None;
                }
            }
            Action::NoticeExpiry { broker } => {
                let b = &mut s.brokers[broker as usize];
                if b.session {
                    return None;
                }
                b.session = true;
                b.controller = None;
            }
            Action::BecomeController { broker } => {
                let b = &s.brokers[broker as usize];
                if !b.session || b.controller.is_some() || s.zk.controller.is_some() {
                    return None;
                }
                s.zk.controller = Some(broker);
                s.zk.controller_epoch += 1;
                let ctx = ControllerContext {
                    epoch: s.zk.controller_epoch,
                    partition: s.zk.partition,
                    live: Self::registered(&s),
                };
                s.brokers[broker as usize].controller = Some(ctx);
                Self::send(&mut s, ctx.epoch, ctx.live, true, ctx.partition);
            }
            Action::BrokerChange { controller } => {
                let mut ctx = s.brokers[controller as usize].controller?;
                let now = Self::registered(&s);
                if ctx.live == now {
                    return None;
                }
                let joined = now.difference(ctx.live);
                let left = ctx.live.difference(now);
                ctx.live = now;
                s.brokers[controller as usize].controller = Some(ctx);
                // onBrokerStartup: the new brokers learn the partition state.
                Self::send(&mut s, ctx.epoch, joined, true, ctx.partition);
                // onBrokerFailure with no leader change: UpdateMetadata to every live broker.
                let leader_live = ctx.partition.leader.is_some_and(|l| now.contains(l));
                if !left.is_empty() && leader_live {
                    Self::send(
                        &mut s,
                        ctx.epoch,
                        now.difference(joined),
                        false,
                        ctx.partition,
                    );
                }
            }
            Action::ElectLeader { controller, leader } => {
                if !self.electable(&s, controller).contains(leader) {
                    return None;
                }
                self.elect(&mut s, controller, leader);
            }
            Action::Deliver { index } => {
                let i = index as usize;
                if i >= s.network.len()
                    || (i > 0 && s.network[i - 1].channel() == s.network[i].channel())
                {
                    return None;
                }
                let r = s.network[i];
                let mut rest: InlineVec<Request, MAX_REQUESTS> = InlineVec::new();
                for (j, q) in s.network.iter().enumerate() {
                    if j != i {
                        rest.push(*q);
                    }
                }
                s.network = rest;
                self.apply_request(&mut s, r);
            }
            Action::Produce { leader } => {
                if !Self::acts_as_leader(&s, leader) || s.produced >= self.max_records {
                    return None;
                }
                let b = &mut s.brokers[leader as usize];
                let epoch = b.replica.leader_epoch;
                b.log.push(epoch);
                s.produced += 1;
                Self::acknowledge(&mut s, leader);
            }
            Action::Fetch { follower } => {
                let l = s.brokers[follower as usize].replica.leader?;
                let log = s.brokers[l as usize].log;
                s.brokers[follower as usize].log = log;
                Self::acknowledge(&mut s, l);
            }
            Action::ShrinkIsr { leader, follower } => {
                let isr = s.brokers[leader as usize].replica.isr.without(follower);
                self.write_isr(&mut s, leader, isr)?;
            }
            Action::ExpandIsr { leader, follower } => {
                let isr = s.brokers[leader as usize].replica.isr.with(follower);
                self.write_isr(&mut s, leader, isr)?;
            }
        }
        Some(s)
    }
}

// ---- invariants -------------------------------------------------------------------------

/// No broker acted on a request from a controller epoch older than one it had accepted.
pub fn single_effective_controller(s: &State) -> bool {
    s.brokers.iter().all(|b| !b.obeyed_stale_controller)
}

/// No two brokers became leader in the same leader epoch.
pub fn one_leader_per_leader_epoch(s: &State) -> bool {
    s.brokers.iter().enumerate().all(|(i, a)| {
        s.brokers[i + 1..]
            .iter()
            .all(|b| a.led_epochs & b.led_epochs == 0)
    })
}

/// Every broker applied partition states (LeaderAndIsr and UpdateMetadata alike) in the order
/// ZooKeeper's writes made them.
pub fn partition_state_consistent(s: &State) -> bool {
    s.brokers.iter().all(|b| !b.applied_out_of_order)
}

/// The leader ZooKeeper names, once it acts as that leader, holds every acknowledged record
/// (the `replication` model's notion: the record at each acknowledged (offset, epoch)).
pub fn no_committed_data_loss(s: &State) -> bool {
    let p = s.zk.partition;
    let Some(l) = p.leader else { return true };
    let leader = &s.brokers[l as usize];
    if leader.replica.leader != Some(l) || leader.replica.leader_epoch != p.leader_epoch {
        return true;
    }
    s.acked
        .iter()
        .all(|(o, e)| leader.log.get(*o as usize) == Some(e))
}

/// Every broker whose session is alive knows (metadata cache) the leader ZooKeeper names, and
/// that leader has applied its leader epoch.
pub fn every_live_broker_knows_leader(s: &State) -> bool {
    let p = s.zk.partition;
    let Some(l) = p.leader else { return false };
    let leader = &s.brokers[l as usize];
    leader.session
        && leader.replica.leader == Some(l)
        && leader.replica.leader_epoch == p.leader_epoch
        && s.brokers.iter().all(|b| {
            !b.session
                || (b.metadata.leader == Some(l) && b.metadata.leader_epoch == p.leader_epoch)
        })
}

impl KcheckModel for ZkController {
    const NAME: &'static str = "zk-controller";
    const ABOUT: &'static str =
        "Kafka's ZooKeeper-mode controller: /controller election, controller epoch, zkVersion writes, zombies";

    fn bounds() -> &'static [Bound] {
        BOUNDS
    }

    fn bug_flags() -> &'static [BugFlag] {
        BUG_FLAGS
    }

    fn from_config(config: &Config) -> Self {
        ZkController {
            brokers: config.bound("brokers") as usize,
            max_expiries: config.bound("expiries") as u8,
            max_epoch: config.bound("epochs") as u8,
            max_records: config.bound("records") as u8,
            max_isr_changes: config.bound("isr-changes") as u8,
            bugs: config.bugs(&ZkControllerBug::ALL, ZkControllerBug::name),
        }
    }

    fn named_properties() -> Vec<Property<Self>> {
        vec![
            Property::always(
                "single-effective-controller",
                "no broker acts on a request from a controller epoch older than one it accepted",
                |_, s| single_effective_controller(s),
            ),
            Property::always(
                "one-leader-per-leader-epoch",
                "no two brokers become leader of the partition in the same leader epoch",
                |_, s| one_leader_per_leader_epoch(s),
            ),
            Property::always(
                "partition-state-consistent",
                "brokers apply partition states (LeaderAndIsr, UpdateMetadata) in ZooKeeper's write order",
                |_, s| partition_state_consistent(s),
            ),
            Property::always(
                "no-committed-data-loss",
                "the leader ZooKeeper names holds every acknowledged record once it leads",
                |_, s| no_committed_data_loss(s),
            ),
            Property::sometimes(
                "controller-failover-completes",
                "non-vacuity: a new controller elects a new leader and every live broker knows it",
                |_, s: &State| {
                    s.zk.controller_epoch >= 2
                        && s.zk.partition.leader_epoch >= 2
                        && every_live_broker_knows_leader(s)
                },
            ),
            Property::sometimes(
                "committed-record-survives-failover",
                "non-vacuity: a record is acknowledged and a later leader epoch's leader holds it",
                |_, s: &State| {
                    !s.acked.is_empty()
                        && s.zk.partition.leader_epoch >= 2
                        && s.zk.partition.leader.is_some_and(|l| {
                            s.brokers[l as usize].replica.leader_epoch == s.zk.partition.leader_epoch
                        })
                        && no_committed_data_loss(s)
                },
            ),
        ]
    }

    fn representative(&self, s: &State) -> State {
        canonical(s)
    }

    fn describe_action(&self, s: &State, action: &Action) -> String {
        match *action {
            Action::ExpireSession { broker } => {
                let role = if s.zk.controller == Some(broker) {
                    " (the controller: /controller is deleted)"
                } else {
                    ""
                };
                format!("b{broker}'s ZooKeeper session expires{role}")
            }
            Action::NoticeExpiry { broker } => {
                let resign = if s.brokers[broker as usize].controller.is_some() {
                    ", resigns as controller"
                } else {
                    ""
                };
                format!("b{broker} notices its session expired{resign} and registers with a new session")
            }
            Action::BecomeController { broker } => format!(
                "b{broker} creates /controller, bumps /controller_epoch to {} and sends LeaderAndIsr and UpdateMetadata with {} to every live broker",
                s.zk.controller_epoch + 1,
                s.zk.partition
            ),
            Action::BrokerChange { controller } => {
                let epoch = s.brokers[controller as usize].controller.map_or(0, |c| c.epoch);
                format!(
                    "controller b{controller} (epoch {epoch}) processes the /brokers/ids watch: live brokers are now {:?}",
                    Self::registered(s)
                )
            }
            Action::ElectLeader { controller, leader } => {
                let ctx = s.brokers[controller as usize].controller.unwrap_or_default();
                let outcome = if s.zk.controller_epoch != ctx.epoch
                    && !self.has(ZkControllerBug::NoControllerEpochCheck)
                {
                    "the /controller_epoch check fails: ControllerMovedException, it resigns".to_string()
                } else if s.zk.partition.zk_version != ctx.partition.zk_version
                    && !self.has(ZkControllerBug::NoZkVersionCheck)
                {
                    "BadVersion: it re-reads the partition state".to_string()
                } else {
                    format!(
                        "writes leader epoch {} (zkVersion {}) and sends LeaderAndIsr and UpdateMetadata",
                        ctx.partition.leader_epoch + 1,
                        s.zk.partition.zk_version + 1
                    )
                };
                format!(
                    "controller b{controller} (epoch {}) elects b{leader} from ISR {:?} (cached zkVersion {}): {outcome}",
                    ctx.epoch, ctx.partition.isr, ctx.partition.zk_version
                )
            }
            Action::Deliver { index } => match s.network.get(index as usize) {
                Some(r) => {
                    let b = &s.brokers[r.to as usize];
                    let verdict = if r.controller_epoch < b.controller_epoch
                        && !self.has(ZkControllerBug::NoControllerEpochCheck)
                    {
                        " and drops it: STALE_CONTROLLER_EPOCH"
                    } else if r.leader_and_isr && r.state.leader_epoch <= b.replica.leader_epoch {
                        " (LeaderAndIsr ignored: leader epoch not higher)"
                    } else {
                        ""
                    };
                    format!(
                        "b{} receives {} from controller epoch {} ({}){verdict}",
                        r.to,
                        r.kinds(),
                        r.controller_epoch,
                        r.state
                    )
                }
                None => format!("deliver request {index}"),
            },
            Action::Produce { leader } => format!(
                "producer sends m{}@e{} (acks=all) to b{leader}",
                s.brokers[leader as usize].log.len(),
                s.brokers[leader as usize].replica.leader_epoch
            ),
            Action::Fetch { follower } => {
                let r = s.brokers[follower as usize].replica;
                format!(
                    "b{follower} fetches from leader b{} in leader epoch {}",
                    r.leader.unwrap_or(0),
                    r.leader_epoch
                )
            }
            Action::ShrinkIsr { leader, follower } | Action::ExpandIsr { leader, follower } => {
                let r = s.brokers[leader as usize].replica;
                let (verb, isr) = match action {
                    Action::ShrinkIsr { .. } => ("removes", r.isr.without(follower)),
                    _ => ("adds", r.isr.with(follower)),
                };
                format!(
                    "leader b{leader} {verb} b{follower}: writes ISR {isr:?} with cached zkVersion {} (ZooKeeper has {})",
                    r.zk_version, s.zk.partition.zk_version
                )
            }
        }
    }

    fn describe_state(&self, s: &State) -> Vec<String> {
        let mut lines = vec![format!(
            "zookeeper: /controller={} /controller_epoch={} partition: {}",
            s.zk.controller
                .map_or("none".to_string(), |c| format!("b{c}")),
            s.zk.controller_epoch,
            s.zk.partition
        )];
        for (i, b) in s.brokers.iter().enumerate() {
            let controller = match b.controller {
                Some(c) => format!(
                    " controller(epoch {}, live {:?}, cached zkVersion {})",
                    c.epoch, c.live, c.partition.zk_version
                ),
                None => String::new(),
            };
            let role = if b.replica.leader == Some(i as BrokerId) {
                "leader"
            } else {
                "follower"
            };
            let log: Vec<String> = b
                .log
                .iter()
                .enumerate()
                .map(|(o, e)| format!("m{o}@e{e}"))
                .collect();
            let mut ghosts = String::new();
            if b.obeyed_stale_controller {
                ghosts.push_str(" OBEYED-A-STALE-CONTROLLER");
            }
            if b.applied_out_of_order {
                ghosts.push_str(" APPLIED-AN-OLDER-STATE");
            }
            lines.push(format!(
                "b{i} session={}{controller} controller-epoch={} {role} leader-epoch={} ISR={:?} zkVersion={} metadata: leader={} leader-epoch={} log=[{}]{ghosts}",
                if b.session { "alive" } else { "expired" },
                b.controller_epoch,
                b.replica.leader_epoch,
                b.replica.isr,
                b.replica.zk_version,
                b.metadata.leader.map_or("none".to_string(), |l| format!("b{l}")),
                b.metadata.leader_epoch,
                log.join(" ")
            ));
        }
        let inflight: Vec<String> = s
            .network
            .iter()
            .map(|r| {
                format!(
                    "{}(ce{} le{} zkv{})->b{}",
                    r.kinds(),
                    r.controller_epoch,
                    r.state.leader_epoch,
                    r.state.zk_version,
                    r.to
                )
            })
            .collect();
        let acked: Vec<String> = s.acked.iter().map(|(o, e)| format!("m{o}@e{e}")).collect();
        lines.push(format!(
            "in flight=[{}] acknowledged=[{}]",
            inflight.join(" "),
            acked.join(" ")
        ));
        lines
    }
}

/// Messages an action costs, for `kcheck compare`: controller-to-broker requests it sends,
/// plus ZooKeeper requests and watch notifications (responses are not counted).
pub fn messages(before: &State, action: &Action, after: &State) -> usize {
    let total = |st: &State| st.network.iter().map(Request::count).sum::<usize>();
    let delivered = match action {
        Action::Deliver { index } => before
            .network
            .get(*index as usize)
            .map_or(0, Request::count),
        _ => 0,
    };
    let sent = (total(after) + delivered).saturating_sub(total(before));
    let zookeeper = match action {
        // notification of the /controller deletion; getData /controller_epoch; the multi-op
        // creating /controller and setting /controller_epoch; getChildren /brokers/ids;
        // getData of the partition state
        Action::BecomeController { .. } => 5,
        // notification; getChildren /brokers/ids
        Action::BrokerChange { .. } => 2,
        // the multi-op (check /controller_epoch, setData partition state)
        Action::ElectLeader { .. } => 1,
        // new session; create /brokers/ids/<id>
        Action::NoticeExpiry { .. } => 2,
        Action::ShrinkIsr { .. } | Action::ExpandIsr { .. } => 1,
        // Produce and Fetch are one request each
        Action::Produce { .. } | Action::Fetch { .. } => 1,
        Action::ExpireSession { .. } | Action::Deliver { .. } => 0,
    };
    sent + zookeeper
}

// ---- failover scenarios for `kcheck compare` ---------------------------------------------

/// The broker that fails in the scenarios.
const FAILED: BrokerId = 0;

/// After the failure: the surviving controller machinery and request delivery only; no
/// further faults, no restart of the failed broker, no client traffic, and the failed broker
/// (a zombie in the model) takes no further step.
fn recovery_action(action: &Action) -> bool {
    match *action {
        Action::BecomeController { broker } => broker != FAILED,
        Action::BrokerChange { controller } | Action::ElectLeader { controller, .. } => {
            controller != FAILED
        }
        Action::Deliver { .. } => true,
        _ => false,
    }
}

/// The partition has a leader other than the failed broker and every live broker knows it.
fn recovered(_: &ZkController, s: &State) -> bool {
    s.zk.partition.leader != Some(FAILED) && every_live_broker_knows_leader(s)
}

fn scenario_model(brokers: usize) -> ZkController {
    ZkController {
        brokers,
        max_expiries: 1,
        max_epoch: 2,
        max_records: 0,
        max_isr_changes: 0,
        bugs: Vec::new(),
    }
}

/// `kcheck compare controller-failover`: broker 0 is both the controller and the partition's
/// leader (ZooKeeper mode co-locates them) and its session expires; it never comes back.
pub fn controller_failover(brokers: usize) -> Option<crate::compare::Measured> {
    let model = scenario_model(brokers);
    let start = model.next_state(
        &model.initial_state(),
        Action::ExpireSession { broker: FAILED },
    )?;
    crate::compare::shortest_path(
        crate::compare::Scenario {
            model: &model,
            start,
            allowed: recovery_action,
            goal: recovered,
            messages: |_, before, action, after| messages(before, action, after),
        },
        1_000_000,
    )
}

/// One partition-leader change: the controller (broker 1 when there is one) is healthy, the
/// leader (broker 0) fails. `None` with a single broker: no other replica can lead.
pub fn leader_change(brokers: usize) -> Option<crate::compare::Measured> {
    let model = scenario_model(brokers);
    let mut s = model.initial_state();
    if brokers < 2 {
        return None;
    }
    // Move the controller to broker 1 (controller epoch 1 still).
    let ctx = s.brokers[0].controller.take();
    s.brokers[1].controller = ctx;
    s.zk.controller = Some(1);
    let start = model.next_state(&s, Action::ExpireSession { broker: FAILED })?;
    crate::compare::shortest_path(
        crate::compare::Scenario {
            model: &model,
            start,
            allowed: recovery_action,
            goal: recovered,
            messages: |_, before, action, after| messages(before, action, after),
        },
        1_000_000,
    )
}
