//! The KRaft side of `kcheck compare controller-failover` (`specs/zookeeper-vs-kraft.md`): the
//! `kraft` model's failover scenarios, measured with `compare::shortest_path`. Kept apart from
//! `kraft.rs` so the model's own module stays one protocol.

use crate::compact::InlineVec;
use crate::compare::{shortest_path, Measured, Scenario};
use crate::kraft::{
    Action, Body, Kraft, Message, MetadataImage, MetadataRecord, NodeId, QuorumStateKind, Record,
    State, MAX_LOG, MAX_VOTERS,
};
use crate::replication::{BrokerSet, Offset};
use stateright::Model;

/// The most brokers the kraft model holds.
pub const MAX_BROKERS: usize = crate::kraft::MAX_OBSERVERS;

/// The model for the scenarios: no bug, records enough for registering, unfencing and moving
/// leadership, a quorum epoch for the failover, two crashes (the active controller and the
/// partition leader's broker), the largest network, no duplication.
fn scenario_model(voters: usize, brokers: usize) -> Kraft {
    Kraft {
        voters,
        observers: brokers,
        max_epoch: 3,
        max_records: 8,
        max_crashes: 2,
        max_network: crate::kraft::MAX_NETWORK,
        max_duplicates: 0,
        bugs: Vec::new(),
    }
}

/// No faults and no client-visible churn: what the cluster does on its own to make progress.
fn no_fault(action: &Action) -> bool {
    !matches!(
        action,
        Action::Crash { .. }
            | Action::Restart { .. }
            | Action::Drop { .. }
            | Action::Duplicate { .. }
            | Action::FetchResponseLost { .. }
            | Action::Resign { .. }
    )
}

fn image_names_live_leader(m: &Kraft, s: &State, image: &MetadataImage) -> bool {
    image.partition_leader.is_some_and(|l| {
        let o = l as usize - m.voters;
        s.observers[o].alive && image.unfenced.contains(l)
    })
}

/// Every live broker's metadata image names a live, unfenced partition leader.
fn brokers_know_a_live_leader(m: &Kraft, s: &State) -> bool {
    s.observers.iter().filter(|o| o.alive).all(|o| {
        let image = MetadataImage::of(&o.applied);
        image_names_live_leader(m, s, &image)
    })
}

/// Requests one step sends (responses are not counted, as on the ZooKeeper side): requests
/// that enter the network, plus those the model handles inside the step (a fetch's request, two
/// when a broker is told the leader and fetches again, a pre-vote round's requests to the other
/// live voters).
pub fn messages(m: &Kraft, before: &State, action: &Action, after: &State) -> usize {
    let mut pool: Vec<Message> = before.network.to_vec();
    if let Action::Deliver { message } = action {
        if let Some(i) = pool.iter().position(|x| x == message) {
            pool.remove(i);
        }
    }
    let mut entered = 0;
    for msg in after.network.iter() {
        match pool.iter().position(|x| x == msg) {
            Some(i) => {
                pool.remove(i);
            }
            None => {
                let response = matches!(
                    msg.body,
                    Body::VoteResponse { .. } | Body::FetchResponse { .. }
                );
                entered += usize::from(!response);
            }
        }
    }
    let inside = match *action {
        Action::SendFetch { node, to } => m.fetch_requests(before, node, to),
        Action::FetchResponseLost { .. } => 1,
        Action::PreVote { .. } => before
            .voters
            .iter()
            .filter(|v| v.alive)
            .count()
            .saturating_sub(1),
        _ => 0,
    };
    entered + inside
}

/// The steady state the scenarios start from, built directly (a breadth-first search from an
/// empty cluster to it is too deep): controller c0 leads quorum epoch 1; the log holds the
/// LeaderChange record, every broker's registration and unfencing and a PartitionChange making
/// the first broker the partition's leader; all of it is committed, and every voter and broker
/// holds and every broker has applied it.
pub fn steady_state(m: &Kraft) -> State {
    let mut s = m.initial_state();
    let first = m.voters as NodeId;
    let brokers: Vec<NodeId> = (first..first + m.observers as NodeId).collect();
    let record = |body| Record { epoch: 1, body };
    let mut log: InlineVec<Record, MAX_LOG> = InlineVec::new();
    log.push(record(MetadataRecord::LeaderChange));
    for b in &brokers {
        log.push(record(MetadataRecord::RegisterBroker { broker: *b }));
    }
    for b in &brokers {
        log.push(record(MetadataRecord::UnfenceBroker { broker: *b }));
    }
    let all = brokers
        .iter()
        .fold(BrokerSet::default(), |set, b| set.with(*b));
    if let Some(leader) = brokers.first() {
        log.push(record(MetadataRecord::PartitionChange {
            leader: *leader,
            leader_epoch: 1,
            isr: all,
        }));
    }
    let end = log.len() as Offset;
    for (i, v) in s.voters.iter_mut().enumerate() {
        v.epoch = 1;
        v.voted_for = Some(0);
        v.leader = Some(0);
        v.log = log;
        if i == 0 {
            v.state = QuorumStateKind::Leader;
            v.hw = Some(end);
            v.end_offsets = [end; MAX_VOTERS];
        } else {
            v.state = QuorumStateKind::Follower;
        }
    }
    for o in s.observers.iter_mut() {
        o.epoch = 1;
        o.leader = Some(0);
        o.log = log;
        o.hw = Some(end);
        o.applied = log;
    }
    s.committed = log.iter().map(|r| (*r, 1)).collect();
    s.epoch_leaders[1] = BrokerSet::single(0);
    s.written = (log.len() - 1) as u8;
    s
}

fn partition_leader(s: &State) -> Option<u8> {
    MetadataImage::of(&s.observers[0].applied).partition_leader
}

/// The brokers' fetches to the failed controller time out: they forget it and look for the
/// leader again (the kraft model at this commit has no observer fetch-timeout action).
fn lose_leader(mut s: State, failed: NodeId) -> State {
    for o in s.observers.iter_mut() {
        if o.leader == Some(failed) {
            o.leader = None;
        }
    }
    s
}

fn recover(m: &Kraft, start: State) -> Option<Measured> {
    shortest_path(
        Scenario {
            model: m,
            start,
            allowed: no_fault,
            goal: brokers_know_a_live_leader,
            messages,
        },
        3_000_000,
    )
}

/// One partition-leader change: the partition leader's broker fails, the controllers are
/// healthy. `None` with one broker: no other replica can lead.
pub fn leader_change(brokers: usize) -> Option<Measured> {
    if !(2..=MAX_BROKERS).contains(&brokers) {
        return None;
    }
    let m = scenario_model(3, brokers);
    let steady = steady_state(&m);
    let start = m.next_state(
        &steady,
        Action::Crash {
            node: partition_leader(&steady)?,
        },
    )?;
    recover(&m, start)
}

/// `kcheck compare controller-failover`, KRaft mode: 3 controllers, `brokers` brokers; the
/// active controller and the partition leader's broker fail.
pub fn controller_failover(brokers: usize) -> Option<Measured> {
    if !(2..=MAX_BROKERS).contains(&brokers) {
        return None;
    }
    let m = scenario_model(3, brokers);
    let steady = steady_state(&m);
    let leader = steady
        .voters
        .iter()
        .position(|v| v.state == QuorumStateKind::Leader)? as u8;
    let s = m.next_state(&steady, Action::Crash { node: leader })?;
    let start = m.next_state(
        &s,
        Action::Crash {
            node: partition_leader(&steady)?,
        },
    )?;
    recover(&m, lose_leader(start, 0))
}
