//! ZooKeeper's own leader election: Fast Leader Election (FLE) among the ensemble's servers,
//! then the new leader's synchronisation of its followers (Zab's discovery and sync phases)
//! before it serves. See `specs/zk-election.md`.
//!
//! What the model keeps from ZooKeeper 3.5+:
//! * a LOOKING server votes for itself with its last zxid and its current epoch, in a new
//!   round (FLE's logical clock), and sends the vote to every other server;
//! * a vote replaces the current one when it is better by `totalOrderPredicate`: higher epoch,
//!   then higher zxid, then higher server id; a notification from a higher round resets the
//!   server's round and received votes; a lower round is ignored;
//! * a server decides once a quorum's received votes equal its own (FOLLOWING the winner, or
//!   LEADING); a LOOKING server also joins an established ensemble once a quorum of FOLLOWING
//!   or LEADING servers name a leader that itself says LEADING (`checkLeader`);
//! * the elected leader establishes epoch `max(current epochs of a quorum) + 1` and syncs its
//!   followers to its own history (DIFF/TRUNC) before serving: ZooKeeper's leader does not
//!   pull a more recent history from a follower, which is why the vote order must put the most
//!   up-to-date server first;
//! * a transaction is committed when a quorum of the leader's synced followers (with the
//!   leader) hold it; servers crash and restart keeping their on-disk history and epoch;
//!   notifications are lost and reordered.

use crate::catalog::{Bound, BugFlag, Config, KcheckModel};
use crate::compact::InlineVec;
use crate::property::Property;
use serde::{Deserialize, Serialize};
use stateright::Model;
use std::fmt;

pub type ServerId = u8;
pub type Epoch = u8;

pub const MAX_SERVERS: usize = 5;
pub const MAX_TXNS: usize = 4;
/// Notifications in flight at once; a broadcast that would exceed it is not taken.
pub const MAX_NOTIFICATIONS: usize = 16;

/// A transaction id: the epoch of the leader that proposed it and a counter in that epoch.
#[derive(
    Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Zxid {
    pub epoch: Epoch,
    pub counter: u8,
}

impl fmt::Display for Zxid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{}{:02}", self.epoch, self.counter)
    }
}

/// An FLE vote: the proposed leader, its last zxid and its epoch.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Vote {
    pub leader: ServerId,
    pub zxid: Zxid,
    pub epoch: Epoch,
}

#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Down,
    #[default]
    Looking,
    Following(ServerId),
    Leading,
}

#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Server {
    pub role: Role,
    /// A leader that established its epoch / a follower synced to it.
    pub synced: bool,
    pub history: InlineVec<Zxid, MAX_TXNS>,
    /// The epoch of the last leader this server synced with (on disk).
    pub current_epoch: Epoch,
    /// FLE's logical clock.
    pub round: u8,
    pub vote: Vote,
    /// The latest vote received from each server in this round, with whether the sender was
    /// LOOKING (false: FOLLOWING or LEADING, and then whether it was LEADING).
    pub received: [Option<(Vote, Role)>; MAX_SERVERS],
    /// Epochs this server established as leader (a bit set; ghost).
    pub led_epochs: u16,
}

impl Server {
    fn last_zxid(&self) -> Zxid {
        self.history.last().copied().unwrap_or_default()
    }
}

/// A notification in flight.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Notification {
    pub from: ServerId,
    pub to: ServerId,
    pub round: u8,
    pub vote: Vote,
    pub sender: Role,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct State {
    pub servers: InlineVec<Server, MAX_SERVERS>,
    /// Sorted multiset: delivering any one reorders.
    pub network: InlineVec<Notification, MAX_NOTIFICATIONS>,
    /// Committed transactions (ghost).
    pub committed: InlineVec<Zxid, MAX_TXNS>,
    pub proposals: u8,
    pub crashes: u8,
    pub losses: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    Deliver {
        index: u8,
    },
    Lose {
        index: u8,
    },
    /// The established leader proposes a transaction.
    Propose {
        leader: ServerId,
    },
    /// A synced follower receives the leader's proposals and acknowledges them.
    Replicate {
        follower: ServerId,
    },
    /// The decided leader has a quorum of followers: it establishes a new epoch and syncs
    /// them to its history.
    Establish {
        leader: ServerId,
    },
    /// A follower that joined an established leader syncs to it.
    Sync {
        follower: ServerId,
    },
    Crash {
        server: ServerId,
    },
    Restart {
        server: ServerId,
    },
    /// A follower loses its leader (or a leader its quorum) and starts a new round.
    StartLooking {
        server: ServerId,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ZkElectionBug {
    IgnoreZxid,
    ReuseEpoch,
}

static BUG_FLAGS: &[BugFlag] = &[BugFlag {
    name: "ignore-zxid",
    meaning: "votes are ordered by server id alone, not by (epoch, zxid, id)",
    source: "mutation of FLE's totalOrderPredicate (ZOOKEEPER-1514 era FLE; Zab's leader must hold the latest history)",
    violates: "leader-has-committed-history",
}, BugFlag {
    name: "reuse-epoch",
    meaning: "mutation (not historical): a new leader takes the quorum's highest epoch instead of one more",
    source: "mutation of Zab's NEWEPOCH rule (the new epoch exceeds every epoch a quorum accepted)",
    violates: "one-leader-per-epoch",
}];

static BOUNDS: &[Bound] = &[
    Bound {
        name: "servers",
        meaning: "servers in the ensemble",
        default: 3,
        release: 3,
        min: 2,
        max: MAX_SERVERS as u32,
    },
    Bound {
        name: "txns",
        meaning: "transactions proposed",
        default: 1,
        release: 1,
        min: 0,
        max: MAX_TXNS as u32,
    },
    Bound {
        name: "crashes",
        meaning: "server crashes",
        default: 1,
        release: 1,
        min: 0,
        max: 4,
    },
    Bound {
        name: "rounds",
        meaning: "highest FLE round (logical clock)",
        default: 2,
        release: 2,
        min: 1,
        max: 8,
    },
    Bound {
        name: "losses",
        meaning: "notifications lost",
        default: 0,
        release: 1,
        min: 0,
        max: 4,
    },
];

#[derive(Clone, Debug)]
pub struct ZkElection {
    pub servers: usize,
    pub max_txns: u8,
    pub max_crashes: u8,
    pub max_round: u8,
    pub max_losses: u8,
    pub bugs: Vec<ZkElectionBug>,
}

impl ZkElection {
    fn quorum(&self) -> usize {
        self.servers / 2 + 1
    }

    /// FLE's `totalOrderPredicate`: is `new` a better vote than `cur`?
    pub fn better(&self, new: &Vote, cur: &Vote) -> bool {
        if self.bugs.contains(&ZkElectionBug::IgnoreZxid) {
            return new.leader > cur.leader;
        }
        (new.epoch, new.zxid, new.leader) > (cur.epoch, cur.zxid, cur.leader)
    }

    fn own_vote(s: &Server, id: ServerId) -> Vote {
        Vote {
            leader: id,
            zxid: s.last_zxid(),
            epoch: s.current_epoch,
        }
    }

    fn broadcast(&self, st: &mut State, from: ServerId) {
        let s = st.servers[from as usize];
        for to in 0..self.servers as ServerId {
            if to != from {
                st.network.push(Notification {
                    from,
                    to,
                    round: s.round,
                    vote: s.vote,
                    sender: s.role,
                });
            }
        }
        st.network.sort_unstable();
    }

    /// Become LOOKING in a new round, voting for itself.
    fn start_looking(&self, st: &mut State, id: ServerId) {
        let s = &mut st.servers[id as usize];
        s.role = Role::Looking;
        s.synced = false;
        s.round += 1;
        s.vote = Self::own_vote(s, id);
        s.received = [None; MAX_SERVERS];
        s.received[id as usize] = Some((s.vote, Role::Looking));
        self.broadcast(st, id);
    }

    fn decide(&self, st: &mut State, id: ServerId) {
        let s = st.servers[id as usize];
        let vote = s.vote;
        let agree = s
            .received
            .iter()
            .filter(|r| r.is_some_and(|(v, _)| v == vote))
            .count();
        if agree >= self.quorum() {
            st.servers[id as usize].role = if vote.leader == id {
                Role::Leading
            } else {
                Role::Following(vote.leader)
            };
            return;
        }
        // Join an established ensemble: a quorum of non-LOOKING servers name the same leader,
        // and that leader says it is LEADING.
        for leader in 0..self.servers as ServerId {
            let named = s
                .received
                .iter()
                .filter(|r| r.is_some_and(|(v, role)| role != Role::Looking && v.leader == leader))
                .count();
            let leading = s.received[leader as usize].is_some_and(|(_, r)| r == Role::Leading);
            if named >= self.quorum() && leading && leader != id {
                let st_s = &mut st.servers[id as usize];
                st_s.role = Role::Following(leader);
                st_s.vote = s.received[leader as usize].expect("leading").0;
                return;
            }
        }
    }

    fn receive(&self, st: &mut State, n: Notification) {
        let me = n.to;
        let s = st.servers[me as usize];
        match s.role {
            Role::Down => {}
            Role::Following(_) | Role::Leading => {
                // Tell a LOOKING server who leads.
                if n.sender == Role::Looking && st.network.len() < MAX_NOTIFICATIONS {
                    st.network.push(Notification {
                        from: me,
                        to: n.from,
                        round: s.round,
                        vote: s.vote,
                        sender: s.role,
                    });
                    st.network.sort_unstable();
                }
            }
            Role::Looking => {
                if n.sender != Role::Looking {
                    st.servers[me as usize].received[n.from as usize] = Some((n.vote, n.sender));
                    self.decide(st, me);
                    return;
                }
                if n.round < s.round {
                    return;
                }
                let mut changed = false;
                let srv = &mut st.servers[me as usize];
                if n.round > s.round {
                    srv.round = n.round;
                    srv.received = [None; MAX_SERVERS];
                    let own = Self::own_vote(srv, me);
                    srv.vote = if self.better(&n.vote, &own) {
                        n.vote
                    } else {
                        own
                    };
                    srv.received[me as usize] = Some((srv.vote, Role::Looking));
                    changed = true;
                } else if self.better(&n.vote, &srv.vote) {
                    srv.vote = n.vote;
                    srv.received[me as usize] = Some((srv.vote, Role::Looking));
                    changed = true;
                }
                srv.received[n.from as usize] = Some((n.vote, Role::Looking));
                if changed {
                    self.broadcast(st, me);
                }
                self.decide(st, me);
            }
        }
    }

    /// Commit every transaction of leader `l` that a quorum of its synced ensemble holds.
    fn commit(&self, st: &mut State, l: ServerId) {
        let leader = st.servers[l as usize];
        for (i, z) in leader.history.iter().enumerate() {
            let holders = (0..self.servers)
                .filter(|s| {
                    let srv = &st.servers[*s];
                    let in_ensemble = *s == l as usize
                        || (srv.role == Role::Following(l)
                            && srv.synced
                            && srv.current_epoch == leader.current_epoch);
                    in_ensemble && srv.history.get(i) == Some(z)
                })
                .count();
            if holders >= self.quorum() && !st.committed.contains(z) {
                st.committed.push(*z);
                st.committed.sort_unstable();
            }
        }
    }

    fn broadcast_fits(&self, st: &State) -> bool {
        st.network.len() + self.servers - 1 <= MAX_NOTIFICATIONS
    }
}

impl Model for ZkElection {
    type State = State;
    type Action = Action;

    /// The ensemble after its first election: round 1 elected the highest id (all zxids were
    /// equal), which established epoch 1 with every server synced. Elections after a crash or
    /// a lost leader are what the model explores; the first one is the same protocol.
    fn init_states(&self) -> Vec<State> {
        let leader = self.servers as ServerId - 1;
        let vote = Vote {
            leader,
            zxid: Zxid::default(),
            epoch: 0,
        };
        let servers = (0..self.servers as ServerId)
            .map(|id| Server {
                role: if id == leader {
                    Role::Leading
                } else {
                    Role::Following(leader)
                },
                synced: true,
                current_epoch: 1,
                round: 1,
                vote,
                led_epochs: if id == leader { 1 << 1 } else { 0 },
                ..Server::default()
            })
            .collect();
        vec![State {
            servers,
            network: InlineVec::new(),
            committed: InlineVec::new(),
            proposals: 0,
            crashes: 0,
            losses: 0,
        }]
    }

    fn actions(&self, st: &State, actions: &mut Vec<Action>) {
        for i in 0..st.network.len() {
            if i > 0 && st.network[i] == st.network[i - 1] {
                continue;
            }
            actions.push(Action::Deliver { index: i as u8 });
            if st.losses < self.max_losses {
                actions.push(Action::Lose { index: i as u8 });
            }
        }
        for id in 0..self.servers as ServerId {
            let s = &st.servers[id as usize];
            match s.role {
                Role::Down => actions.push(Action::Restart { server: id }),
                Role::Leading if s.synced => {
                    if st.proposals < self.max_txns {
                        actions.push(Action::Propose { leader: id });
                    }
                }
                Role::Leading => actions.push(Action::Establish { leader: id }),
                Role::Following(l) => {
                    let leader = &st.servers[l as usize];
                    if leader.role == Role::Leading && leader.synced {
                        // Zab: a server never goes back to an older epoch.
                        if !s.synced && leader.current_epoch >= s.current_epoch {
                            actions.push(Action::Sync { follower: id });
                        } else if s.history != leader.history {
                            actions.push(Action::Replicate { follower: id });
                        }
                    }
                }
                Role::Looking => {}
            }
            if s.role != Role::Down && st.crashes < self.max_crashes {
                actions.push(Action::Crash { server: id });
            }
            let lost_leader = match s.role {
                Role::Following(l) => st.servers[l as usize].role != Role::Leading,
                Role::Leading => {
                    let followers = st
                        .servers
                        .iter()
                        .filter(|f| f.role == Role::Following(id))
                        .count();
                    followers + 1 < self.quorum()
                }
                _ => false,
            };
            if lost_leader && s.round < self.max_round {
                actions.push(Action::StartLooking { server: id });
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut st = last.clone();
        match action {
            Action::Deliver { index } | Action::Lose { index } => {
                let n = *st.network.get(index as usize)?;
                let mut rest: InlineVec<Notification, MAX_NOTIFICATIONS> = InlineVec::new();
                for (j, q) in st.network.iter().enumerate() {
                    if j != index as usize {
                        rest.push(*q);
                    }
                }
                st.network = rest;
                if matches!(action, Action::Lose { .. }) {
                    st.losses += 1;
                } else {
                    if !self.broadcast_fits(&st) {
                        return None;
                    }
                    self.receive(&mut st, n);
                }
            }
            Action::Propose { leader } => {
                let s = &mut st.servers[leader as usize];
                let counter = s
                    .history
                    .iter()
                    .filter(|z| z.epoch == s.current_epoch)
                    .count() as u8
                    + 1;
                s.history.push(Zxid {
                    epoch: s.current_epoch,
                    counter,
                });
                st.proposals += 1;
                self.commit(&mut st, leader);
            }
            Action::Replicate { follower } => {
                let Role::Following(l) = st.servers[follower as usize].role else {
                    return None;
                };
                st.servers[follower as usize].history = st.servers[l as usize].history;
                self.commit(&mut st, l);
            }
            Action::Establish { leader } => {
                let quorum: Vec<usize> = (0..self.servers)
                    .filter(|s| {
                        *s == leader as usize || st.servers[*s].role == Role::Following(leader)
                    })
                    .collect();
                if quorum.len() < self.quorum() {
                    return None;
                }
                let epoch = quorum
                    .iter()
                    .map(|s| st.servers[*s].current_epoch)
                    .max()
                    .unwrap_or(0)
                    + u8::from(!self.bugs.contains(&ZkElectionBug::ReuseEpoch));
                if epoch as usize >= 16 {
                    return None;
                }
                let history = st.servers[leader as usize].history;
                for s in quorum {
                    let srv = &mut st.servers[s];
                    srv.history = history;
                    srv.current_epoch = epoch;
                    srv.synced = true;
                }
                st.servers[leader as usize].led_epochs |= 1 << epoch;
                self.commit(&mut st, leader);
            }
            Action::Sync { follower } => {
                let Role::Following(l) = st.servers[follower as usize].role else {
                    return None;
                };
                let leader = st.servers[l as usize];
                if leader.current_epoch < st.servers[follower as usize].current_epoch {
                    return None;
                }
                let f = &mut st.servers[follower as usize];
                f.history = leader.history;
                f.current_epoch = leader.current_epoch;
                f.synced = true;
                self.commit(&mut st, l);
            }
            Action::Crash { server } => {
                let s = &mut st.servers[server as usize];
                s.role = Role::Down;
                s.synced = false;
                s.received = [None; MAX_SERVERS];
                st.crashes += 1;
            }
            Action::Restart { server } => {
                if st.servers[server as usize].round >= self.max_round || !self.broadcast_fits(&st)
                {
                    return None;
                }
                self.start_looking(&mut st, server);
            }
            Action::StartLooking { server } => {
                if !self.broadcast_fits(&st) {
                    return None;
                }
                self.start_looking(&mut st, server);
            }
        }
        Some(st)
    }
}

// ---- invariants -------------------------------------------------------------------------

/// No two servers established leadership of the same epoch.
pub fn one_leader_per_epoch(st: &State) -> bool {
    st.servers.iter().enumerate().all(|(i, a)| {
        st.servers[i + 1..]
            .iter()
            .all(|b| a.led_epochs & b.led_epochs == 0)
    })
}

/// An established leader's history holds every transaction committed in an earlier epoch.
pub fn leader_has_committed_history(st: &State) -> bool {
    st.servers.iter().all(|s| {
        s.role != Role::Leading
            || !s.synced
            || st
                .committed
                .iter()
                .filter(|z| z.epoch < s.current_epoch)
                .all(|z| s.history.contains(z))
    })
}

fn role_text(r: Role) -> String {
    match r {
        Role::Down => "DOWN".into(),
        Role::Looking => "LOOKING".into(),
        Role::Following(l) => format!("FOLLOWING s{l}"),
        Role::Leading => "LEADING".into(),
    }
}

fn vote_text(v: &Vote) -> String {
    format!("(s{}, zxid {}, epoch {})", v.leader, v.zxid, v.epoch)
}

impl KcheckModel for ZkElection {
    const NAME: &'static str = "zk-election";
    const ABOUT: &'static str =
        "ZooKeeper's Fast Leader Election and the new leader's sync: votes, rounds, epochs, zxids";

    fn bounds() -> &'static [Bound] {
        BOUNDS
    }

    fn bug_flags() -> &'static [BugFlag] {
        BUG_FLAGS
    }

    fn from_config(config: &Config) -> Self {
        ZkElection {
            servers: config.bound("servers") as usize,
            max_txns: config.bound("txns") as u8,
            max_crashes: config.bound("crashes") as u8,
            max_round: config.bound("rounds") as u8,
            max_losses: config.bound("losses") as u8,
            bugs: [
                ("ignore-zxid", ZkElectionBug::IgnoreZxid),
                ("reuse-epoch", ZkElectionBug::ReuseEpoch),
            ]
            .into_iter()
            .filter(|(name, _)| config.has_bug(name))
            .map(|(_, bug)| bug)
            .collect(),
        }
    }

    fn named_properties() -> Vec<Property<Self>> {
        vec![
            Property::always(
                "one-leader-per-epoch",
                "no two servers establish leadership of the same epoch",
                |_, s| one_leader_per_epoch(s),
            ),
            Property::always(
                "leader-has-committed-history",
                "an established leader's history contains every transaction committed in an earlier epoch",
                |_, s| leader_has_committed_history(s),
            ),
            Property::sometimes(
                "committed-txn-survives-reelection",
                "non-vacuity: a transaction is committed and a leader of a later epoch is established",
                |_, s: &State| {
                    s.committed.iter().any(|z| {
                        s.servers.iter().any(|l| {
                            l.role == Role::Leading && l.synced && l.current_epoch > z.epoch
                        })
                    })
                },
            ),
        ]
    }

    fn describe_action(&self, st: &State, action: &Action) -> String {
        match *action {
            Action::Deliver { index } | Action::Lose { index } => {
                let Some(n) = st.network.get(index as usize) else {
                    return format!("notification {index}");
                };
                let verb = if matches!(action, Action::Lose { .. }) {
                    "is lost"
                } else {
                    "is delivered"
                };
                format!(
                    "s{}'s notification to s{} (round {}, vote {}, {}) {verb}",
                    n.from,
                    n.to,
                    n.round,
                    vote_text(&n.vote),
                    role_text(n.sender)
                )
            }
            Action::Propose { leader } => format!("leader s{leader} proposes a transaction"),
            Action::Replicate { follower } => {
                format!("s{follower} logs the leader's proposals and acknowledges them")
            }
            Action::Establish { leader } => format!(
                "s{leader} has a quorum of followers: it establishes a new epoch and syncs them to its history"
            ),
            Action::Sync { follower } => format!("s{follower} syncs to its established leader"),
            Action::Crash { server } => format!("s{server} crashes"),
            Action::Restart { server } => format!("s{server} restarts and starts looking"),
            Action::StartLooking { server } => {
                format!("s{server} loses its leader or quorum and starts looking")
            }
        }
    }

    fn describe_state(&self, st: &State) -> Vec<String> {
        let mut lines: Vec<String> = st
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let history: Vec<String> = s.history.iter().map(|z| z.to_string()).collect();
                format!(
                    "s{i} {}{} epoch={} round={} vote={} history=[{}]",
                    role_text(s.role),
                    if s.synced { " (synced)" } else { "" },
                    s.current_epoch,
                    s.round,
                    vote_text(&s.vote),
                    history.join(" ")
                )
            })
            .collect();
        let committed: Vec<String> = st.committed.iter().map(|z| z.to_string()).collect();
        lines.push(format!(
            "in flight={} committed=[{}]",
            st.network.len(),
            committed.join(" ")
        ));
        lines
    }
}
