//! Deterministic simulation of the KRaft core (`kcheck_reference::raft`): 3 voters and 2
//! observers exchange requests over a seeded network that loses, delays (so reorders) and
//! duplicates messages, isolates nodes and crashes them (a crash loses everything but the
//! persisted quorum-state and log). After every step the simulation checks the invariants of
//! the `kraft` model, by the same names:
//! - `election-safety`: at most one leader per epoch;
//! - `log-matching`: two logs with an entry of the same epoch at the same offset agree on
//!   everything up to it;
//! - `leader-completeness`: every committed entry (below some voter's HW) is in every later
//!   leader's log;
//! - `hw-monotonic`: a node's HW never decreases (within one incarnation);
//! - `observer-prefix`: an observer's log below its HW is a prefix of the committed log.
//!
//! A failing seed is a reproducible bug report. The bug-flag tests show each check can fail.

use bytes::Bytes;
use kcheck_reference::raft::{
    Entry, NodeId, Output, QuorumState, RaftBug, RaftConfig, RaftNode, Request, Response, Rng, Role,
};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

const VOTERS: [NodeId; 3] = [1, 2, 3];
const OBSERVERS: [NodeId; 2] = [11, 12];
const STEP_MS: u64 = 5;

#[derive(Clone, Copy)]
struct Faults {
    loss_pct: u64,
    duplicate_pct: u64,
    delay_ms_max: u64,
    /// Per step, per mille chance to crash a random node / isolate one.
    crash_per_mille: u64,
    isolate_per_mille: u64,
    /// A crashed node stays down for `down_ms_min + [0, down_ms_span)`.
    down_ms_min: u64,
    down_ms_span: u64,
}

const FAULTS: Faults = Faults {
    loss_pct: 5,
    duplicate_pct: 3,
    delay_ms_max: 30,
    crash_per_mille: 3,
    isolate_per_mille: 2,
    down_ms_min: 50,
    down_ms_span: 500,
};

/// Frequent, short crashes: nodes restart in the middle of elections and replication.
const CRASHY: Faults = Faults {
    loss_pct: 5,
    duplicate_pct: 3,
    delay_ms_max: 30,
    crash_per_mille: 40,
    isolate_per_mille: 2,
    down_ms_min: 5,
    down_ms_span: 60,
};

enum Msg {
    Req(Request),
    Resp(Request, Response),
}

struct InFlight {
    at_ms: u64,
    from: NodeId,
    to: NodeId,
    msg: Msg,
}

/// Read through `Debug` in failure messages.
#[allow(dead_code)]
#[derive(Debug)]
struct Violation {
    property: String,
    seed: u64,
    at_ms: u64,
    detail: String,
}

#[derive(Debug, Default)]
struct Stats {
    committed: usize,
    elections: usize,
    crashes: usize,
    max_epoch: i32,
}

struct Sim {
    seed: u64,
    faults: Faults,
    rng: Rng,
    now_ms: u64,
    config: RaftConfig,
    nodes: BTreeMap<NodeId, RaftNode>,
    down_until: BTreeMap<NodeId, u64>,
    isolated_until: BTreeMap<NodeId, u64>,
    net: Vec<InFlight>,
    leaders: BTreeMap<i32, NodeId>,
    committed: Vec<Entry>,
    /// The epoch in which each committed entry was first seen committed.
    commit_epoch: Vec<i32>,
    last_hw: BTreeMap<NodeId, i64>,
    next_value: u64,
    stats: Stats,
}

fn all_nodes() -> impl Iterator<Item = NodeId> {
    VOTERS.into_iter().chain(OBSERVERS)
}

impl Sim {
    fn new(seed: u64, bugs: Vec<RaftBug>, faults: Faults) -> Sim {
        let config = RaftConfig {
            election_timeout_ms: 150,
            fetch_timeout_ms: 300,
            fetch_interval_ms: 10,
            request_timeout_ms: 100,
            max_fetch_entries: 8,
            bugs,
        };
        let nodes = all_nodes()
            .map(|id| {
                let n = RaftNode::restore(
                    id,
                    VOTERS,
                    config.clone(),
                    QuorumState::default(),
                    vec![],
                    0,
                    seed,
                );
                (id, n)
            })
            .collect();
        Sim {
            seed,
            faults,
            rng: Rng::new(seed),
            now_ms: 0,
            config,
            nodes,
            down_until: BTreeMap::new(),
            isolated_until: BTreeMap::new(),
            net: Vec::new(),
            leaders: BTreeMap::new(),
            committed: Vec::new(),
            commit_epoch: Vec::new(),
            last_hw: BTreeMap::new(),
            next_value: 0,
            stats: Stats::default(),
        }
    }

    fn up(&self, id: NodeId) -> bool {
        self.down_until.get(&id).is_none_or(|t| self.now_ms >= *t)
    }

    fn connected(&self, a: NodeId, b: NodeId) -> bool {
        let iso = |n: NodeId| {
            self.isolated_until
                .get(&n)
                .is_some_and(|t| self.now_ms < *t)
        };
        !iso(a) && !iso(b)
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: Msg) {
        if self.rng.below(100) < self.faults.loss_pct || !self.connected(from, to) {
            return;
        }
        let copies = if self.rng.below(100) < self.faults.duplicate_pct {
            2
        } else {
            1
        };
        for i in 0..copies {
            let at_ms = self.now_ms + 1 + self.rng.below(self.faults.delay_ms_max);
            let msg = if i == 0 {
                match &msg {
                    Msg::Req(r) => Msg::Req(r.clone()),
                    Msg::Resp(q, r) => Msg::Resp(q.clone(), r.clone()),
                }
            } else {
                match &msg {
                    Msg::Req(r) => Msg::Req(r.clone()),
                    Msg::Resp(q, r) => Msg::Resp(q.clone(), r.clone()),
                }
            };
            self.net.push(InFlight {
                at_ms,
                from,
                to,
                msg,
            });
        }
    }

    /// Persistence is synchronous (the adapter fsyncs before sending), so the in-memory log
    /// and quorum-state are what survives a crash; only sends need routing.
    fn route(&mut self, from: NodeId, outputs: Vec<Output>) {
        for o in outputs {
            if let Output::Send { to, request } = o {
                self.send(from, to, Msg::Req(request));
            }
        }
    }

    fn step(&mut self) {
        self.now_ms += STEP_MS;
        let now = self.now_ms;
        // Deliver what is due, in a seeded order.
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.net.len() {
            if self.net[i].at_ms <= now {
                due.push(self.net.swap_remove(i));
            } else {
                i += 1;
            }
        }
        for m in due {
            if !self.up(m.to) {
                continue;
            }
            match m.msg {
                Msg::Req(req) => {
                    let node = self.nodes.get_mut(&m.to).expect("node");
                    let (resp, out) = node.handle_request(now, m.from, req.clone());
                    self.route(m.to, out);
                    self.send(m.to, m.from, Msg::Resp(req, resp));
                }
                Msg::Resp(req, resp) => {
                    let node = self.nodes.get_mut(&m.to).expect("node");
                    let out = node.handle_response(now, m.from, &req, resp);
                    self.route(m.to, out);
                }
            }
        }
        // Timers and client writes.
        for id in all_nodes() {
            if !self.up(id) {
                continue;
            }
            let node = self.nodes.get_mut(&id).expect("node");
            let out = node.tick(now);
            self.route(id, out);
            let node = self.nodes.get_mut(&id).expect("node");
            if node.role() == Role::Leader && self.rng.below(10) == 0 && node.log_end_offset() < 400
            {
                self.next_value += 1;
                let v = Bytes::from(format!("v{}", self.next_value));
                let (_, out) = node.append_as_leader(vec![v]).expect("leader appends");
                self.route(id, out);
            }
        }
        // Faults.
        if self.rng.below(1000) < self.faults.crash_per_mille {
            let ids: Vec<NodeId> = all_nodes().collect();
            let victim = ids[self.rng.below(ids.len() as u64) as usize];
            if self.up(victim) {
                let old = &self.nodes[&victim];
                let restarted = RaftNode::restore(
                    victim,
                    VOTERS,
                    self.config.clone(),
                    old.quorum_state().clone(),
                    old.log().to_vec(),
                    now,
                    self.seed.wrapping_add(now),
                );
                self.nodes.insert(victim, restarted);
                self.last_hw.remove(&victim);
                self.down_until.insert(
                    victim,
                    now + self.faults.down_ms_min + self.rng.below(self.faults.down_ms_span),
                );
                self.stats.crashes += 1;
            }
        }
        if self.rng.below(1000) < self.faults.isolate_per_mille {
            let victim = VOTERS[self.rng.below(3) as usize];
            self.isolated_until
                .insert(victim, now + 200 + self.rng.below(800));
        }
    }

    fn violation(&self, property: &str, detail: String) -> Violation {
        let summary = |log: &[Entry]| {
            let mut runs: Vec<(i32, usize, usize)> = Vec::new();
            for (i, e) in log.iter().enumerate() {
                match runs.last_mut() {
                    Some(r) if r.0 == e.epoch => r.2 = i + 1,
                    _ => runs.push((e.epoch, i, i + 1)),
                }
            }
            runs.iter()
                .map(|(e, a, b)| format!("e{e}[{a}..{b})"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut state = format!("\n  committed: {}", summary(&self.committed));
        for (id, n) in &self.nodes {
            state += &format!(
                "\n  node {id}: {:?} {:?} HW={} log: {}",
                n.role(),
                n.quorum_state(),
                n.high_watermark(),
                summary(n.log())
            );
        }
        Violation {
            property: property.into(),
            seed: self.seed,
            at_ms: self.now_ms,
            detail: detail + &state,
        }
    }

    fn check(&mut self) -> Result<(), Violation> {
        // election-safety
        for (id, n) in &self.nodes {
            if n.role() == Role::Leader {
                let e = n.leader_epoch();
                match self.leaders.get(&e) {
                    Some(l) if l != id => {
                        return Err(self.violation(
                            "election-safety",
                            format!("nodes {l} and {id} both lead epoch {e}"),
                        ))
                    }
                    Some(_) => {}
                    None => {
                        self.leaders.insert(e, *id);
                        self.stats.elections += 1;
                        self.stats.max_epoch = self.stats.max_epoch.max(e);
                    }
                }
            }
        }
        // log-matching (between voters; observers are held to `observer-prefix`)
        let ids: Vec<NodeId> = VOTERS.to_vec();
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                let (la, lb) = (self.nodes[a].log(), self.nodes[b].log());
                let n = la.len().min(lb.len());
                if let Some(last) = (0..n).rev().find(|k| la[*k].epoch == lb[*k].epoch) {
                    if la[..=last] != lb[..=last] {
                        return Err(self.violation("log-matching", format!("nodes {a} and {b} agree on the epoch at offset {last} but not on the entries before")));
                    }
                }
            }
        }
        // hw-monotonic, and the committed log grows from voters' HWs
        for (id, n) in &self.nodes {
            let hw = n.high_watermark();
            if let Some(prev) = self.last_hw.get(id) {
                if hw < *prev {
                    return Err(self.violation(
                        "hw-monotonic",
                        format!("node {id} HW went from {prev} to {hw}"),
                    ));
                }
            }
            self.last_hw.insert(*id, hw);
            let hw = hw as usize;
            let common = hw.min(self.committed.len());
            if n.log()[..common] != self.committed[..common] {
                let property = if n.is_voter() {
                    "leader-completeness"
                } else {
                    "observer-prefix"
                };
                return Err(self.violation(
                    property,
                    format!("node {id}'s log below its HW {hw} differs from the committed log"),
                ));
            }
            if n.is_voter() && hw > self.committed.len() {
                let new = hw - self.committed.len();
                self.committed
                    .extend_from_slice(&n.log()[self.committed.len()..hw]);
                self.commit_epoch
                    .extend(std::iter::repeat_n(n.leader_epoch(), new));
            }
        }
        // leader-completeness: a leader of epoch E has every entry committed in an earlier
        // epoch (a deposed leader of an older epoch may lag until it learns of the new one).
        for (id, n) in &self.nodes {
            if n.role() == Role::Leader {
                let e = n.leader_epoch();
                let k = self.commit_epoch.iter().take_while(|c| **c < e).count();
                if n.log().len() < k || n.log()[..k] != self.committed[..k] {
                    return Err(self.violation(
                        "leader-completeness",
                        format!(
                            "leader {id} of epoch {e} lacks entries committed before it (committed {k}, its LEO {})",
                            n.log_end_offset()
                        ),
                    ));
                }
            }
        }
        self.stats.committed = self.committed.len();
        Ok(())
    }
}

/// Runs one seed for `sim_ms` of simulated time. A panic of one of the core's own assertions
/// is reported as a violation of the property its message names.
fn run(seed: u64, bugs: Vec<RaftBug>, sim_ms: u64, faults: Faults) -> Result<Stats, Violation> {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut sim = Sim::new(seed, bugs, faults);
        while sim.now_ms < sim_ms {
            sim.step();
            sim.check()?;
        }
        // Heal and let the quorum settle: it must still make progress (not vacuous).
        sim.down_until.clear();
        sim.isolated_until.clear();
        Ok(sim.stats)
    }));
    match result {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let property = [
                "election-safety",
                "log-matching",
                "leader-completeness",
                "hw-monotonic",
            ]
            .into_iter()
            .find(|p| msg.contains(p))
            .unwrap_or("assertion");
            Err(Violation {
                property: property.into(),
                seed,
                at_ms: 0,
                detail: msg,
            })
        }
    }
}

#[test]
fn correct_protocol_keeps_every_invariant_under_loss_reorder_duplication_and_crashes() {
    let mut total = Stats::default();
    for seed in 0..24 {
        let stats = run(seed, vec![], 20_000, FAULTS).unwrap_or_else(|v| panic!("{}", v.detail));
        assert!(
            stats.committed > 20,
            "seed {seed}: the quorum made no progress: {stats:?}"
        );
        total.committed += stats.committed;
        total.elections += stats.elections;
        total.crashes += stats.crashes;
        total.max_epoch = total.max_epoch.max(stats.max_epoch);
    }
    eprintln!("kraft simulation: 24 seeds x 20 s: {total:?}");
    assert!(
        total.crashes > 24 && total.elections > 48,
        "faults were injected: {total:?}"
    );
}

#[test]
fn correct_protocol_keeps_every_invariant_under_frequent_short_crashes() {
    for seed in 0..8 {
        let stats = run(seed, vec![], 20_000, CRASHY).unwrap_or_else(|v| panic!("{}", v.detail));
        assert!(
            stats.committed > 0 && stats.crashes > 100,
            "seed {seed}: {stats:?}"
        );
    }
}

/// Finds the first seed whose run violates `property` with `bug` on.
fn catches(bug: RaftBug, property: &str) -> Violation {
    catches_with(bug, property, FAULTS)
}

fn catches_with(bug: RaftBug, property: &str, faults: Faults) -> Violation {
    let _quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let found = (0..200).find_map(|seed| match run(seed, vec![bug], 20_000, faults) {
        Err(v) if v.property == property => Some(v),
        _ => None,
    });
    let _ = std::panic::take_hook();
    found.unwrap_or_else(|| {
        panic!(
            "--bug {} never violated {property} in 200 seeds",
            bug.name()
        )
    })
}

#[test]
fn serving_fetches_without_the_divergence_check_breaks_log_matching() {
    let v = catches(RaftBug::NoDivergingEpoch, "log-matching");
    eprintln!("no-diverging-epoch: {v:?}");
}

#[test]
fn skipping_the_divergence_check_for_observers_breaks_observer_prefix() {
    let v = catches(RaftBug::ObserverNoDivergingEpoch, "observer-prefix");
    eprintln!("observer-no-diverging-epoch: {v:?}");
}

#[test]
fn copying_a_lower_leader_hw_breaks_hw_monotonic() {
    let v = catches(RaftBug::HwCopiedFromLeader, "hw-monotonic");
    eprintln!("hw-copied-from-leader: {v:?}");
}

/// A scripted run (the random schedules rarely restart a voter between two candidates'
/// vote requests): voters 2 and 3 both pass pre-vote and run in epoch 1; voter 1 votes for 2,
/// restarts from its persisted state, and is asked by 3. With the vote kept in quorum-state it
/// refuses; with `forget-vote-on-restart` both candidates have a majority in epoch 1.
fn two_candidates_and_a_restarting_voter(bugs: Vec<RaftBug>) -> Vec<NodeId> {
    let config = RaftConfig {
        bugs,
        ..RaftConfig::default()
    };
    let node = |id| {
        RaftNode::restore(
            id,
            VOTERS,
            config.clone(),
            QuorumState::default(),
            vec![],
            0,
            1,
        )
    };
    let mut nodes: BTreeMap<NodeId, RaftNode> =
        VOTERS.into_iter().map(|id| (id, node(id))).collect();
    let sends = |out: Vec<Output>| -> Vec<(NodeId, Request)> {
        out.into_iter()
            .filter_map(|o| match o {
                Output::Send { to, request } => Some((to, request)),
                _ => None,
            })
            .collect()
    };
    // Exchange one request from `from` to `to` and feed the response back.
    fn exchange(
        nodes: &mut BTreeMap<NodeId, RaftNode>,
        from: NodeId,
        to: NodeId,
        req: Request,
    ) -> Vec<Output> {
        let (resp, _) = nodes
            .get_mut(&to)
            .unwrap()
            .handle_request(10_000, from, req.clone());
        nodes
            .get_mut(&from)
            .unwrap()
            .handle_response(10_000, to, &req, resp)
    }
    // 2 and 3 time out and ask voter 1 for pre-votes; both become candidates of epoch 1.
    let mut votes = BTreeMap::new();
    for c in [2, 3] {
        let pre = sends(nodes.get_mut(&c).unwrap().tick(10_000));
        let (_, req) = pre
            .into_iter()
            .find(|(to, _)| *to == 1)
            .expect("pre-vote to 1");
        let out = exchange(&mut nodes, c, 1, req);
        assert_eq!(nodes[&c].role(), Role::Candidate);
        votes.insert(
            c,
            sends(out)
                .into_iter()
                .find(|(to, _)| *to == 1)
                .expect("vote to 1")
                .1,
        );
    }
    // Voter 1 votes for 2 ...
    exchange(&mut nodes, 2, 1, votes[&2].clone());
    // ... restarts from what it persisted ...
    let v1 = &nodes[&1];
    let restarted = RaftNode::restore(
        1,
        VOTERS,
        config.clone(),
        v1.quorum_state().clone(),
        v1.log().to_vec(),
        10_000,
        2,
    );
    nodes.insert(1, restarted);
    // ... and is asked by 3.
    exchange(&mut nodes, 3, 1, votes[&3].clone());
    nodes
        .values()
        .filter(|n| n.role() == Role::Leader && n.leader_epoch() == 1)
        .map(|n| n.id)
        .collect()
}

#[test]
fn forgetting_the_vote_on_restart_breaks_election_safety() {
    assert_eq!(
        two_candidates_and_a_restarting_voter(vec![]),
        vec![2],
        "election-safety holds"
    );
    assert_eq!(
        two_candidates_and_a_restarting_voter(vec![RaftBug::ForgetVoteOnRestart]),
        vec![2, 3],
        "election-safety: two leaders in epoch 1"
    );
}

#[test]
fn applying_uncommitted_records_breaks_observer_prefix() {
    let v = catches(RaftBug::ApplyUncommitted, "observer-prefix");
    eprintln!("apply-uncommitted: {v:?}");
}

#[test]
fn vote_ignoring_the_log_breaks_leader_completeness() {
    let v = catches(RaftBug::VoteIgnoresLog, "leader-completeness");
    eprintln!("vote-ignores-log: {v:?}");
}

#[test]
fn voting_twice_in_an_epoch_breaks_election_safety() {
    let v = catches(RaftBug::VoteTwiceInEpoch, "election-safety");
    eprintln!("vote-twice-in-epoch: {v:?}");
}
