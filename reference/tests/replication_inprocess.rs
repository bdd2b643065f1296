//! Replication between brokers in one process: each broker is the sans-IO
//! [`PartitionState`] over a real [`PartitionLog`] in a temporary directory, the controller
//! is a hand-driven sequence of partition registrations (the images the quorum would
//! commit), and fetches move real record batches from the leader's log to the follower's.
//!
//! Each scenario is a counterexample the replication model found (`specs/replication.md`),
//! replayed step for step: with the correct protocol the invariant holds; with the
//! broker-side bug flag the reference broker loses the acknowledged record (or diverges) just
//! as the model says it must.

use kcheck_models::replication::ReplicationBug;
use kcheck_reference::batch::{self, build};
use kcheck_reference::log::{LogConfig, PartitionLog, ReadResult};
use kcheck_reference::metadata::PartitionRegistration;
use kcheck_reference::partition::{
    code, truncation_offset, AlterPartitionRequest, BrokerBugs, FollowerFetch,
    FollowerFetchOutcome, PartitionState, Transition,
};

/// One broker's replica of partition 0.
struct Node {
    id: i32,
    dir: tempfile::TempDir,
    state: PartitionState,
    log: PartitionLog,
    broker_epoch: i64,
    bugs: BrokerBugs,
}

/// (offset, leader epoch) of every record: within an epoch one leader writes each offset
/// once, so the pair names a record, as in the model.
type Record = (i64, i32);

impl Node {
    fn new(id: i32, bugs: &BrokerBugs) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
        let mut state = PartitionState::new(0, id, 0, 0, 0);
        state.min_insync_replicas = 2;
        state.bugs = bugs.clone();
        Node {
            id,
            dir,
            state,
            log,
            broker_epoch: 100 + i64::from(id),
            bugs: bugs.clone(),
        }
    }

    /// Applies a registration the way the broker's metadata listener does.
    fn apply(&mut self, reg: &PartitionRegistration) {
        match self.state.apply_registration(reg, 0) {
            Transition::BecomeLeader { leader_epoch } => {
                self.log.assign_epoch_at_leo(leader_epoch).unwrap();
            }
            Transition::BecomeFollower {
                truncate_to: Some(offset),
                ..
            } => {
                let leo = self.log.truncate_to(offset).unwrap();
                self.state.on_truncated(leo);
            }
            _ => {}
        }
    }

    /// A one-record acks=all produce; returns the record's offset once appended.
    fn produce(&mut self, id: u64) -> Result<i64, i16> {
        self.state
            .check_produce(-1)
            .map_err(|_| code::NOT_ENOUGH_REPLICAS)?;
        let plan = self.state.prepare_append(build(0, 1, 8, 0)).unwrap();
        self.log.append(&plan.records, &plan.batches).unwrap();
        self.state.on_local_append(&plan);
        self.state.await_acks_all(id, plan.last_offset);
        Ok(plan.last_offset)
    }

    /// Appends a record of `epoch` directly (to set up a log the model reached).
    fn append_raw(&mut self, epoch: i32) {
        let mut b = build(0, 1, 8, 0);
        batch::assign(&mut b, self.log.log_end_offset(), epoch);
        self.log.append_as_follower(&b).unwrap();
        self.state.log_end_offset = self.log.log_end_offset();
    }

    fn records(&self) -> Vec<Record> {
        let leo = self.log.log_end_offset();
        match self.log.read(0, usize::MAX, leo).unwrap() {
            ReadResult::Records(r) => batch::scan(&r)
                .batches
                .iter()
                .map(|(_, h)| (h.base_offset, h.partition_leader_epoch))
                .collect(),
            ReadResult::OutOfRange => Vec::new(),
        }
    }

    /// An unclean shutdown that loses everything above `flushed`, then a restart with a new
    /// broker epoch (KIP-903: the next registration's epoch is larger).
    fn crash_and_restart(&mut self, flushed: i64) {
        self.log.truncate_to(flushed).unwrap();
        let hw = self.state.high_watermark.min(self.log.log_end_offset());
        let (log, _) = PartitionLog::open(self.dir.path(), LogConfig::default()).unwrap();
        self.log = log;
        let mut state = PartitionState::new(0, self.id, 0, self.log.log_end_offset(), hw);
        state.min_insync_replicas = 2;
        state.bugs = self.bugs.clone();
        self.state = state;
        self.broker_epoch += 1000;
    }

    fn fetch_request(&self) -> FollowerFetch {
        let (fetch_offset, last_fetched_epoch) = self.state.fetch_position(self.log.epochs());
        FollowerFetch {
            replica_id: self.id,
            broker_epoch: self.broker_epoch,
            current_leader_epoch: self.state.leader_epoch,
            fetch_offset,
            last_fetched_epoch,
        }
    }
}

/// What one fetch round did.
#[derive(Debug, PartialEq)]
enum Fetched {
    Records(usize),
    Truncated(i64),
    Error(i16),
}

/// One fetch round trip from `follower` to `leader` (the replica fetcher's loop body):
/// request, the leader's answer, the follower's append or truncation.
fn fetch(follower: &mut Node, leader: &mut Node, sent: &mut Vec<AlterPartitionRequest>) -> Fetched {
    let req = follower.fetch_request();
    deliver_fetch(follower, leader, req, sent)
}

fn deliver_fetch(
    follower: &mut Node,
    leader: &mut Node,
    req: FollowerFetch,
    sent: &mut Vec<AlterPartitionRequest>,
) -> Fetched {
    let epochs = leader.log.epochs().clone();
    match leader.state.on_follower_fetch(&req, &epochs, 0) {
        FollowerFetchOutcome::Read {
            high_watermark,
            alter,
        } => {
            sent.extend(alter);
            let leo = leader.state.log_end_offset;
            let ReadResult::Records(data) =
                leader.log.read(req.fetch_offset, 1 << 20, leo).unwrap()
            else {
                return Fetched::Error(code::OFFSET_OUT_OF_RANGE);
            };
            let n = follower.log.append_as_follower(&data).unwrap();
            follower
                .state
                .on_follower_append(follower.log.log_end_offset(), high_watermark);
            Fetched::Records(n)
        }
        FollowerFetchOutcome::Diverging {
            epoch, end_offset, ..
        } => {
            let to = truncation_offset(
                follower.log.epochs(),
                follower.log.log_end_offset(),
                follower.state.high_watermark,
                epoch,
                end_offset,
            );
            let leo = follower.log.truncate_to(to).unwrap();
            follower.state.on_truncated(leo);
            Fetched::Truncated(leo)
        }
        FollowerFetchOutcome::Error(c) => Fetched::Error(c),
    }
}

/// Fetches until the follower neither truncates nor receives anything (bounded).
fn catch_up(follower: &mut Node, leader: &mut Node, sent: &mut Vec<AlterPartitionRequest>) {
    for _ in 0..20 {
        if fetch(follower, leader, sent) == Fetched::Records(0) {
            return;
        }
    }
    panic!("follower {} did not catch up in 20 fetches", follower.id);
}

fn reg(leader: i32, isr: &[i32], leader_epoch: i32, partition_epoch: i32) -> PartitionRegistration {
    PartitionRegistration {
        replicas: vec![0, 1, 2],
        isr: isr.to_vec(),
        elr: vec![],
        adding_replicas: vec![],
        removing_replicas: vec![],
        leader,
        leader_epoch,
        partition_epoch,
    }
}

/// The controller's AlterPartition checks (KIP-497 partition epoch, leader epoch, KIP-903
/// broker epochs; -1 is "not sent", which Kafka's controller does not check).
fn handle_alter_partition(
    current: &PartitionRegistration,
    req: &AlterPartitionRequest,
    registered_broker_epochs: &[i64; 3],
    check_broker_epochs: bool,
) -> Result<PartitionRegistration, &'static str> {
    if req.leader_epoch != current.leader_epoch {
        return Err("FENCED_LEADER_EPOCH");
    }
    if req.partition_epoch != current.partition_epoch {
        return Err("INVALID_UPDATE_VERSION");
    }
    for &(b, e) in &req.new_isr_with_epochs {
        if check_broker_epochs
            && e != -1
            && b != req.leader_id
            && e != registered_broker_epochs[b as usize]
        {
            return Err("STALE_BROKER_EPOCH");
        }
    }
    let mut next = current.clone();
    next.isr = req.new_isr();
    next.partition_epoch += 1;
    Ok(next)
}

fn nodes(bugs: &BrokerBugs) -> [Node; 3] {
    [Node::new(0, bugs), Node::new(1, bugs), Node::new(2, bugs)]
}

fn apply_all(ns: &mut [Node; 3], r: &PartitionRegistration) {
    for n in ns.iter_mut() {
        n.apply(r);
    }
}

/// `[a, b]` mutable borrows of two distinct nodes.
fn pair(ns: &mut [Node; 3], a: usize, b: usize) -> (&mut Node, &mut Node) {
    assert_ne!(a, b);
    if a < b {
        let (x, y) = ns.split_at_mut(b);
        (&mut x[a], &mut y[0])
    } else {
        let (x, y) = ns.split_at_mut(a);
        (&mut y[0], &mut x[b])
    }
}

fn lost(acked: &[Record], leader: &Node) -> Vec<Record> {
    let log = leader.records();
    acked
        .iter()
        .filter(|(o, e)| log.get(*o as usize) != Some(&(*o, *e)))
        .copied()
        .collect()
}

#[test]
fn three_brokers_replicate_and_acks_all_waits_for_the_isr() {
    let mut ns = nodes(&BrokerBugs::none());
    apply_all(&mut ns, &reg(0, &[0, 1, 2], 1, 0));
    let mut sent = Vec::new();
    for i in 0..3 {
        ns[0].produce(i).unwrap();
    }
    assert!(ns[0].state.take_completed_acks().is_empty());
    let (l, f1) = pair(&mut ns, 0, 1);
    catch_up(f1, l, &mut sent);
    assert!(
        l.state.take_completed_acks().is_empty(),
        "b2 has not fetched"
    );
    let (l, f2) = pair(&mut ns, 0, 2);
    catch_up(f2, l, &mut sent);
    assert_eq!(l.state.high_watermark, 3);
    assert_eq!(l.state.take_completed_acks().len(), 3);
    // One more round brings the followers' HWs up (they lag one fetch behind).
    let (l, f1) = pair(&mut ns, 0, 1);
    fetch(f1, l, &mut sent);
    assert_eq!(ns[1].state.high_watermark, 3);
    assert_eq!(ns[1].records(), ns[0].records());
    assert!(sent.is_empty(), "no ISR change while everyone keeps up");
}

#[test]
fn diverging_epoch_truncation_takes_as_many_rounds_as_kip_279_needs() {
    // The spec's 17-step scenario: b1 holds m0@e1 m1@e3, the leader b2 holds m0@e2 m1@e4
    // (epochs e2@0 e4@1). b1 must end with b2's log, dropping both of its records.
    let mut ns = nodes(&BrokerBugs::none());
    ns[1].append_raw(1);
    ns[1].append_raw(3);
    ns[2].append_raw(2);
    ns[2].append_raw(4);
    ns[1].apply(&reg(2, &[1, 2], 4, 7));
    ns[2].apply(&reg(2, &[1, 2], 4, 7));
    let mut sent = Vec::new();
    let (f, l) = pair(&mut ns, 1, 2);
    // Round 1: last fetched epoch 3 -> "epoch 2 ends at 1"; b1 never had epoch 2, so it
    // truncates to the end of its epoch 1 (offset 1) and asks again.
    assert_eq!(fetch(f, l, &mut sent), Fetched::Truncated(1));
    // Round 2: epoch 1 -> "epoch 0... none below: ends at 0"; truncate to 0.
    assert_eq!(fetch(f, l, &mut sent), Fetched::Truncated(0));
    assert_eq!(fetch(f, l, &mut sent), Fetched::Records(2));
    assert_eq!(f.records(), vec![(0, 2), (1, 4)]);
    assert_eq!(f.records(), l.records());
}

#[test]
fn a_fenced_follower_fetch_is_refused_by_leader_epoch() {
    let mut ns = nodes(&BrokerBugs::none());
    apply_all(&mut ns, &reg(0, &[0, 1, 2], 1, 0));
    ns[0].apply(&reg(0, &[0, 1, 2], 2, 1));
    let mut sent = Vec::new();
    let (l, f) = pair(&mut ns, 0, 1);
    // b1 still believes epoch 1 is current: FENCED_LEADER_EPOCH (KIP-320).
    assert_eq!(
        fetch(f, l, &mut sent),
        Fetched::Error(code::FENCED_LEADER_EPOCH)
    );
    // A follower asking a non-leader: NOT_LEADER_OR_FOLLOWER.
    let (f1, f2) = pair(&mut ns, 1, 2);
    assert_eq!(
        fetch(f1, f2, &mut sent),
        Fetched::Error(code::NOT_LEADER_OR_FOLLOWER)
    );
}

/// `truncate-to-hw` (KIP-101): the model's 10-step counterexample of no-committed-data-loss.
fn truncate_to_hw_scenario(bugs: BrokerBugs) -> (Vec<Record>, Vec<Record>) {
    let mut ns = nodes(&bugs);
    let mut sent = Vec::new();
    apply_all(&mut ns, &reg(0, &[0, 1, 2], 1, 0));
    let offset = ns[0].produce(0).unwrap();
    for _ in 0..2 {
        for f in [1, 2] {
            let (l, f) = pair(&mut ns, 0, f);
            fetch(f, l, &mut sent);
        }
    }
    // m0 is acknowledged: the leader's HW passed it, but the followers' HWs are still 0.
    assert_eq!(ns[0].state.take_completed_acks(), vec![(0, code::NONE)]);
    let acked = vec![(offset, 1)];
    assert_eq!(ns[2].state.high_watermark, 0);
    // b0 shuts down; the controller elects b1 (epoch 2); b2 becomes its follower.
    let r = reg(1, &[1, 2], 2, 1);
    ns[1].apply(&r);
    ns[2].apply(&r);
    // b1 shuts down before b2 fetches; the controller elects b2, the last ISR member.
    let r = reg(2, &[2], 3, 2);
    ns[2].apply(&r);
    (acked, lost(&[(offset, 1)], &ns[2]))
}

#[test]
fn truncate_to_hw_loses_an_acknowledged_record() {
    let (acked, lost_ok) = truncate_to_hw_scenario(BrokerBugs::none());
    assert_eq!(acked.len(), 1);
    assert!(lost_ok.is_empty(), "correct protocol lost {lost_ok:?}");
    let (_, lost_bug) = truncate_to_hw_scenario(BrokerBugs::of(&[ReplicationBug::TruncateToHw]));
    assert_eq!(
        lost_bug, acked,
        "no-committed-data-loss must fail under truncate-to-hw"
    );
}

/// `single-epoch-lookup` (KIP-279): the model's counterexample of replica-log-consistency.
/// b1 leads epoch 3 holding m0@e1; b2 comes back holding m0@e2 that nobody fetched.
fn single_epoch_lookup_scenario(bugs: BrokerBugs) -> (Vec<Record>, Vec<Record>, i64, i64) {
    let mut ns = nodes(&bugs);
    ns[1].append_raw(1);
    ns[2].append_raw(2);
    let r = reg(1, &[0, 1, 2], 3, 5);
    ns[1].apply(&r);
    ns[2].apply(&r);
    let mut sent = Vec::new();
    let (l, f) = pair(&mut ns, 1, 2);
    for _ in 0..3 {
        fetch(f, l, &mut sent);
    }
    // b2 is in the ISR: the next record needs its fetch to commit.
    l.state.isr = vec![1, 2];
    l.produce(9).unwrap();
    for _ in 0..3 {
        fetch(f, l, &mut sent);
    }
    (
        l.records(),
        f.records(),
        l.state.high_watermark,
        f.state.high_watermark,
    )
}

#[test]
fn single_epoch_lookup_leaves_diverged_logs_below_the_hw() {
    let (leader, follower, lhw, fhw) = single_epoch_lookup_scenario(BrokerBugs::none());
    assert_eq!((lhw, fhw), (2, 2));
    assert_eq!(leader, follower, "replica-log-consistency holds");
    let (leader, follower, lhw, fhw) =
        single_epoch_lookup_scenario(BrokerBugs::of(&[ReplicationBug::SingleEpochLookup]));
    assert_eq!((lhw, fhw), (2, 2));
    assert_eq!(leader[0], (0, 1));
    assert_eq!(
        follower[0],
        (0, 2),
        "replica-log-consistency must fail: offset 0 differs below both HWs"
    );
}

/// `no-broker-epoch-check` (KIP-903): a fetch from b1's previous incarnation gets it back
/// into the ISR after it lost m0 in an unclean shutdown; then b1 is elected.
fn no_broker_epoch_check_scenario(bugs: BrokerBugs) -> Vec<Record> {
    let mut ns = nodes(&bugs);
    let mut sent = Vec::new();
    let r = reg(0, &[0, 1, 2], 1, 0);
    apply_all(&mut ns, &r);
    let offset = ns[0].produce(0).unwrap();
    for _ in 0..2 {
        for f in [1, 2] {
            let (l, f) = pair(&mut ns, 0, f);
            fetch(f, l, &mut sent);
        }
    }
    assert_eq!(ns[0].state.take_completed_acks(), vec![(0, code::NONE)]);
    let acked = vec![(offset, 1)];
    // b1's last fetch before it dies, still in flight.
    let stale_fetch = ns[1].fetch_request();
    // b1 crashes losing m0 (unflushed) and the controller fences it out of the ISR.
    ns[1].crash_and_restart(0);
    let r = reg(0, &[0, 2], 1, 1);
    ns[0].apply(&r);
    ns[2].apply(&r);
    // b1 re-registers with a new broker epoch.
    let broker_epochs = [ns[0].broker_epoch, ns[1].broker_epoch, ns[2].broker_epoch];
    // The old incarnation's fetch reaches the leader: b1 looks caught up.
    let (l, f) = pair(&mut ns, 0, 1);
    let out = deliver_fetch(f, l, stale_fetch, &mut sent);
    assert!(matches!(out, Fetched::Records(_)));
    let alter = sent
        .pop()
        .expect("the leader proposes b1 back into the ISR");
    let mut current = r.clone();
    // The flag has a controller half too (pre-KIP-903 controllers checked no broker epochs):
    // the leader names the stale incarnation's epoch and the flagged controller takes it.
    let check = !bugs.has(ReplicationBug::NoBrokerEpochCheck);
    if let Ok(next) = handle_alter_partition(&r, &alter, &broker_epochs, check) {
        ns[0].state.on_alter_partition_response(Ok(&next), 0);
        current = next;
    } else {
        ns[0].state.on_alter_partition_response(Err(-1), 0);
    }
    // b0 shuts down; the controller elects from the ISR, preferring b1 if it is there.
    let leader = if current.isr.contains(&1) { 1 } else { 2 };
    let isr: Vec<i32> = current.isr.iter().copied().filter(|&b| b != 0).collect();
    let r = reg(leader, &isr, 2, current.partition_epoch + 1);
    ns[leader as usize].apply(&r);
    lost(&acked, &ns[leader as usize])
}

#[test]
fn no_broker_epoch_check_loses_an_acknowledged_record() {
    let ok = no_broker_epoch_check_scenario(BrokerBugs::none());
    assert!(ok.is_empty(), "correct protocol lost {ok:?}");
    let bug = no_broker_epoch_check_scenario(BrokerBugs::of(&[ReplicationBug::NoBrokerEpochCheck]));
    assert_eq!(bug, vec![(0, 1)], "no-committed-data-loss must fail");
}

#[test]
fn min_isr_refuses_acks_all_and_last_replica_standing_commits_alone() {
    let mut ns = nodes(&BrokerBugs::none());
    apply_all(&mut ns, &reg(0, &[0], 1, 0));
    assert_eq!(ns[0].produce(0), Err(code::NOT_ENOUGH_REPLICAS));
    let mut ns = nodes(&BrokerBugs::of(&[ReplicationBug::LastReplicaStanding]));
    apply_all(&mut ns, &reg(0, &[0, 1], 1, 0));
    ns[0].produce(0).unwrap();
    ns[0].apply(&reg(0, &[0], 1, 1));
    // Pre-KIP-966: the leader alone commits the record (the model's last-replica-standing
    // needs the controller's half, no ELR, to lose it; this is the broker's half).
    assert_eq!(ns[0].state.high_watermark, 1);
}

#[test]
fn a_follower_that_led_an_empty_epoch_catches_up_and_the_hw_reaches_the_acked_records() {
    // Harness finding 8: `leader-chain` fails a leader and pauses its successor as soon as it
    // is elected, before it appends anything. The successor's leader-epoch cache ends with
    // its epoch starting at its LEO; the next leader never had that epoch and answers its
    // fetch with the end of an older one, equal to that LEO. Unless the truncation drops the
    // empty epoch, the follower asks again with it forever and never rejoins the ISR, so the
    // HW stays below the records the first leader acknowledged.
    let mut ns = nodes(&BrokerBugs::none());
    let mut sent = Vec::new();
    let mut r = reg(0, &[0, 1, 2], 1, 0);
    apply_all(&mut ns, &r);
    let acked: Vec<Record> = (0..3).map(|i| (ns[0].produce(i).unwrap(), 1)).collect();
    let (l, f) = pair(&mut ns, 0, 2);
    assert_eq!(fetch(f, l, &mut sent), Fetched::Records(3));
    let (l, f) = pair(&mut ns, 0, 1);
    catch_up(f, l, &mut sent);
    let (l, f) = pair(&mut ns, 0, 2);
    assert_eq!(fetch(f, l, &mut sent), Fetched::Records(0));
    assert_eq!(ns[0].state.take_completed_acks().len(), 3);
    // The followers' HWs lag the leader's by a fetch round: they have the records, not the HW.
    assert_eq!(ns[2].state.high_watermark, 0);
    // b0 crashes; b1 is elected in epoch 2 and paused before it appends anything.
    r = reg(1, &[1, 2], 2, 1);
    ns[1].apply(&r);
    ns[2].apply(&r);
    assert_eq!(ns[1].log.epochs().entries, vec![(1, 0), (2, 3)]);
    // b1's session lapses: b2, the last live ISR member, leads epoch 3 (b1 in the ELR).
    r = reg(2, &[2], 3, 2);
    ns[2].apply(&r);
    assert_eq!(ns[2].produce(9), Err(code::NOT_ENOUGH_REPLICAS));
    // b1 resumes and follows b2: epoch 2 is news to b2, which says epoch 1 ends at 3.
    ns[1].apply(&r);
    let (f, l) = pair(&mut ns, 1, 2);
    assert_eq!(fetch(f, l, &mut sent), Fetched::Truncated(3));
    assert_eq!(
        f.log.epochs().entries,
        vec![(1, 0)],
        "the empty epoch is gone"
    );
    catch_up(f, l, &mut sent);
    let alter = sent
        .pop()
        .expect("b1 caught up: the leader proposes it back");
    assert_eq!(alter.new_isr(), vec![2, 1]);
    r = handle_alter_partition(&r, &alter, &[100, 101, 102], true).unwrap();
    ns[2].apply(&r);
    ns[1].apply(&r);
    let (f, l) = pair(&mut ns, 1, 2);
    fetch(f, l, &mut sent);
    assert_eq!(
        ns[2].state.high_watermark, 3,
        "the acknowledged records are visible"
    );
    assert!(lost(&acked, &ns[2]).is_empty());
    ns[2].produce(9).unwrap();
}
