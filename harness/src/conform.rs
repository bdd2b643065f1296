//! Trace validation (issue 9): `kcheck conform <run-dir>` reads the protocol transition events
//! the reference nodes wrote (`--trace-file`, see `kcheck_reference::proto_trace`), merges them
//! into one order by the host's monotonic clock (each node's own events stay in sequence
//! order), maps them onto the abstract states of the `replication` model (one per partition)
//! and of the `kraft` model (the controller quorum), and checks that each event is one of the
//! model's actions from the current abstract state and that the model's invariants hold on the
//! mapped states. The first event no model action explains is reported with the abstract
//! state before it.
//!
//! The models' bounds do not apply: logs are plain vectors of leader epochs (one per offset)
//! of any length. Where a check is a model predicate, the predicate is the models crate's own
//! function (`replication::logs_agree_below_hw`, `kraft::track_hw`). Which checks are per node
//! and which are global, and why each is sound under clock-order merging, is written down in
//! `specs/conformance.md`.

use kcheck_models::kraft::track_hw;
use kcheck_models::replication::logs_agree_below_hw;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The name of each node's trace file in its run folder (`<run>/n<ID>/trace.jsonl`).
pub const TRACE_FILE: &str = "trace.jsonl";

/// One protocol transition event as a node wrote it.
#[derive(Debug, Clone, Serialize)]
pub struct TraceEvent {
    pub node: i32,
    pub seq: u64,
    pub mono_ns: u64,
    pub event: String,
    /// Every field of the line, `node`, `seq`, `mono_ns` and `event` included.
    pub fields: Value,
}

impl TraceEvent {
    /// Parses one JSON line; the error names what is missing.
    pub fn parse(line: &str) -> Result<TraceEvent, String> {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let int = |k: &str| v.get(k).and_then(Value::as_i64);
        let (Some(node), Some(seq), Some(mono)) = (int("node"), int("seq"), int("mono_ns")) else {
            return Err("an event needs integer node, seq and mono_ns fields".into());
        };
        let Some(event) = v.get("event").and_then(Value::as_str) else {
            return Err("an event needs an `event` name".into());
        };
        Ok(TraceEvent {
            node: node as i32,
            seq: seq as u64,
            mono_ns: mono as u64,
            event: event.to_string(),
            fields: v.clone(),
        })
    }

    fn i(&self, k: &str) -> Result<i64, String> {
        self.fields.get(k).and_then(Value::as_i64).ok_or_else(|| {
            format!(
                "event {} of node {} has no integer `{k}`",
                self.event, self.node
            )
        })
    }

    fn b(&self, k: &str) -> bool {
        self.fields.get(k).and_then(Value::as_bool).unwrap_or(false)
    }

    fn s(&self, k: &str) -> String {
        self.fields
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    }

    fn ints(&self, k: &str) -> Result<Vec<i64>, String> {
        let bad = || {
            format!(
                "event {} of node {} has no integer list `{k}`",
                self.event, self.node
            )
        };
        self.fields
            .get(k)
            .and_then(Value::as_array)
            .ok_or_else(bad)?
            .iter()
            .map(|x| x.as_i64().ok_or_else(bad))
            .collect()
    }

    /// A list of fixed-size integer tuples (`batches`, `epochs`).
    fn tuples<const N: usize>(&self, k: &str) -> Result<Vec<[i64; N]>, String> {
        let bad = || {
            format!(
                "event {} of node {} has no list of {N}-tuples `{k}`",
                self.event, self.node
            )
        };
        let arr = self
            .fields
            .get(k)
            .and_then(Value::as_array)
            .ok_or_else(bad)?;
        arr.iter()
            .map(|t| {
                let t = t.as_array().filter(|t| t.len() == N).ok_or_else(bad)?;
                let mut out = [0i64; N];
                for (o, x) in out.iter_mut().zip(t) {
                    *o = x.as_i64().ok_or_else(bad)?;
                }
                Ok(out)
            })
            .collect()
    }

    fn short(&self) -> String {
        let mut f = self.fields.clone();
        if let Some(m) = f.as_object_mut() {
            for k in ["node", "seq", "mono_ns", "event"] {
                m.remove(k);
            }
        }
        format!("node {} #{} {} {}", self.node, self.seq, self.event, f)
    }
}

/// Reads every `trace.jsonl` in `run_dir` and its node folders (one level down).
pub fn read_run(run_dir: &Path) -> Result<(Vec<TraceEvent>, Vec<PathBuf>), String> {
    if !run_dir.is_dir() {
        return Err(format!(
            "{} is not a directory: give a run folder of `kcheck test` (its n<ID>/trace.jsonl files)",
            run_dir.display()
        ));
    }
    let mut files = Vec::new();
    let top = run_dir.join(TRACE_FILE);
    if top.is_file() {
        files.push(top);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(run_dir)
        .map_err(|e| format!("cannot read {}: {e}", run_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    files.extend(
        dirs.into_iter()
            .map(|d| d.join(TRACE_FILE))
            .filter(|p| p.is_file()),
    );
    if files.is_empty() {
        return Err(format!(
            "no {TRACE_FILE} in {} or its node folders: run the nodes with --trace-file (kcheck test does)",
            run_dir.display()
        ));
    }
    let mut events = Vec::new();
    for f in &files {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            match TraceEvent::parse(line) {
                Ok(e) => events.push(e),
                // A node killed in the middle of a write may leave a torn last line.
                Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
                Err(e) => return Err(format!("{}:{}: {e}", f.display(), i + 1)),
            }
        }
    }
    Ok((events, files))
}

/// Orders the events of all nodes by the host's monotonic clock; ties and each node's own
/// order by sequence number.
pub fn merge(mut events: Vec<TraceEvent>) -> Vec<TraceEvent> {
    events.sort_by_key(|e| (e.mono_ns, e.node, e.seq));
    events
}

/// The first event no model action explains.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    /// Its index in the merged trace.
    pub step: usize,
    pub event: TraceEvent,
    /// `replication` or `kraft`.
    pub model: &'static str,
    /// The model action the event maps to, or the invariant it breaks.
    pub check: &'static str,
    pub message: String,
    /// The abstract model state before the event, one line per component.
    pub state_before: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConformReport {
    pub events: usize,
    pub nodes: Vec<i32>,
    pub partitions: usize,
    pub check_ms: u128,
    pub violation: Option<Violation>,
}

impl ConformReport {
    pub fn conforms(&self) -> bool {
        self.violation.is_none()
    }

    pub fn text(&self) -> String {
        let mut out = format!(
            "conformance: {} events from nodes {:?}, {} partitions, checked in {} ms\n",
            self.events, self.nodes, self.partitions, self.check_ms
        );
        match &self.violation {
            None => out.push_str("  every event is a model action and every invariant holds\n"),
            Some(v) => {
                let _ = writeln!(
                    out,
                    "  step {} is not a {} model action: [{}] {}\n  event: {}\n  state before:",
                    v.step,
                    v.model,
                    v.check,
                    v.message,
                    v.event.short()
                );
                for l in &v.state_before {
                    let _ = writeln!(out, "    {l}");
                }
            }
        }
        out
    }
}

/// Reads, merges and checks a run folder. `Err` is bad input (exit 2).
pub fn conform_run(run_dir: &Path) -> Result<ConformReport, String> {
    let (events, _) = read_run(run_dir)?;
    Ok(check_events(events))
}

/// Checks already-read events (merged here).
pub fn check_events(events: Vec<TraceEvent>) -> ConformReport {
    let started = std::time::Instant::now();
    let events = merge(events);
    let nodes: BTreeSet<i32> = events.iter().map(|e| e.node).collect();
    let mut checker = Checker::default();
    let mut violation = None;
    for (step, e) in events.iter().enumerate() {
        if let Err(f) = checker.step(e) {
            violation = Some(Violation {
                step,
                event: e.clone(),
                model: f.model,
                check: f.check,
                message: f.message,
                state_before: f.state_before,
            });
            break;
        }
    }
    ConformReport {
        events: events.len(),
        nodes: nodes.into_iter().collect(),
        partitions: checker.partitions.len(),
        check_ms: started.elapsed().as_millis(),
        violation,
    }
}

struct Failure {
    model: &'static str,
    check: &'static str,
    message: String,
    state_before: Vec<String>,
}

// ---- replication: one abstract partition state per (topic, partition) ---------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// No registration applied since the replica was opened (or it stopped).
    None,
    Leader,
    Follower(i32),
}

/// The model's `Replica` plus what the broker applied of the controller's `PartitionState`.
#[derive(Debug, Clone)]
struct ReplicaView {
    /// `log[o]` is the leader epoch of the record at offset `o`.
    log: Vec<i32>,
    hw: i64,
    role: Role,
    leader_epoch: i32,
    partition_epoch: i32,
    isr: Vec<i32>,
    min_isr: i64,
    /// Follower: how many records, from offset 0, it holds as its leader does in `leader_epoch`
    /// (the model's `follower_leo`, as the leader may know it from this replica's fetches).
    /// Kept per leader epoch: a leader may still act on a fetch sent before the follower
    /// moved on to the next leader epoch (or restarted with its log intact).
    matched: BTreeMap<i32, usize>,
    /// How far below its HW this replica's log is known to agree with the consumed log.
    verified: usize,
    /// The incarnations before the last restart that some leader may not know ended yet,
    /// oldest first. See [`ReplicaView::countable`].
    dead: Vec<DeadIncarnation>,
}

/// A replica's incarnation that a crash ended, as the leaders may still see it.
#[derive(Debug, Clone, Default)]
struct DeadIncarnation {
    /// Its `matched` when it died (nothing clamped to what the next incarnation recovered).
    matched: BTreeMap<i32, usize>,
    /// Leaders that have applied, since it died, a registration whose ISR leaves the replica
    /// out: they know it ended, and its fetches no longer count for them.
    learnt: BTreeSet<i32>,
}

impl ReplicaView {
    fn new() -> ReplicaView {
        ReplicaView {
            log: Vec::new(),
            hw: 0,
            role: Role::None,
            leader_epoch: -1,
            partition_epoch: -1,
            isr: Vec::new(),
            min_isr: 1,
            matched: BTreeMap::new(),
            verified: 0,
            dead: Vec::new(),
        }
    }

    /// How many records the leader `leader` may count for this replica in `leader_epoch` when
    /// it advances its HW: what this incarnation holds as the leader does, or, until that
    /// leader has learnt of the restart, what a previous incarnation held (several, when the
    /// replica restarted again before the leader learnt of the first restart).
    ///
    /// Why the previous incarnation may count: the model's `Crash` fences a replica at once
    /// (its `follower_leo` drops to 0 atomically), but a real leader learns of a crash only
    /// from the metadata log. A Fetch the previous incarnation sent before it died (held on a
    /// slow link) can reach the leader after the restart, and until the leader has applied the
    /// metadata that reflects the re-registration it still has the replica in its ISR and
    /// counts that fetch's offset, which was true of the incarnation that sent it. Kafka's
    /// leader has the same window, and it is safe: the controller took the replica out of its
    /// ISR at the re-registration (KIP-966: an unclean shutdown), so it cannot be elected.
    ///
    /// Why nothing more: the window closes, per leader, at the first registration that leader
    /// applies after the restart whose ISR leaves the replica out (the ISR change the
    /// controller makes at the re-registration, or any later one). From then on the leader
    /// knows the replica's incarnation ended; putting it back in the ISR takes an
    /// AlterPartition, and a fetch from the old incarnation must not carry it (KIP-903, the
    /// `controller.alter_partition` rule). An HW the leader advances over a re-added
    /// replica counts only what its new incarnation holds.
    fn countable(&self, leader: i32, leader_epoch: i32) -> usize {
        let now = self.matched.get(&leader_epoch).copied().unwrap_or(0);
        now.max(self.dead_held(leader_epoch, |d| !d.learnt.contains(&leader)))
    }

    /// The most records an incarnation `which` picks held as the leader of `leader_epoch` did.
    fn dead_held(&self, leader_epoch: i32, which: impl Fn(&DeadIncarnation) -> bool) -> usize {
        self.dead
            .iter()
            .filter(|d| which(d))
            .filter_map(|d| d.matched.get(&leader_epoch).copied())
            .max()
            .unwrap_or(0)
    }
}

#[derive(Debug, Default)]
struct PartitionView {
    replicas: BTreeMap<i32, ReplicaView>,
    /// The broker that became leader in each leader epoch.
    leaders: BTreeMap<i32, i32>,
    /// Every record (offset, leader epoch) a leader appended (or a replica recovered).
    written: HashSet<(i64, i32)>,
    /// Below the largest HW any leader advanced to: what consumers may have read.
    consumed: Vec<i32>,
    /// Below the largest HW a leader advanced to while the ISR had min.insync.replicas
    /// members: what acks=all acknowledged.
    committed: Vec<i32>,
}

fn log_text(log: &[i32]) -> String {
    // Runs of one epoch: `e1×5 e3×2` (records 0-4 of epoch 1, 5-6 of epoch 3).
    let mut runs: Vec<(i32, usize)> = Vec::new();
    for &e in log {
        match runs.last_mut() {
            Some((le, n)) if *le == e => *n += 1,
            _ => runs.push((e, 1)),
        }
    }
    let parts: Vec<String> = runs.iter().map(|(e, n)| format!("e{e}×{n}")).collect();
    format!("[{}]", parts.join(" "))
}

impl PartitionView {
    fn describe(&self, key: &str) -> Vec<String> {
        let mut out = vec![format!(
            "partition {key}: leaders by epoch {:?}, consumed below HW {}, committed (ISR ≥ min.insync.replicas) {}",
            self.leaders,
            self.consumed.len(),
            self.committed.len()
        )];
        for (b, r) in &self.replicas {
            let role = match r.role {
                Role::None => "no role".to_string(),
                Role::Leader => "leader".to_string(),
                Role::Follower(l) => format!("follower of b{l}"),
            };
            out.push(format!(
                "b{b} {role} leader-epoch={} partition-epoch={} ISR={:?} LEO={} HW={} log={}",
                r.leader_epoch,
                r.partition_epoch,
                r.isr,
                r.log.len(),
                r.hw,
                log_text(&r.log)
            ));
        }
        out
    }

    /// The leader a follower fetches from, as that replica last applied it.
    fn leader_of(&self, b: i32) -> Option<&ReplicaView> {
        match self.replicas.get(&b)?.role {
            Role::Follower(l) => self.replicas.get(&l),
            _ => None,
        }
    }

    /// The leader `leader` applied a registration with `isr`: every replica it leaves out has
    /// ended, for this leader, the window in which its previous incarnation's fetches count
    /// (see [`ReplicaView::countable`]).
    fn learn_restarts(&mut self, leader: i32, isr: &[i32]) {
        for (&m, v) in self.replicas.iter_mut() {
            if m != leader && !isr.contains(&m) {
                for d in &mut v.dead {
                    d.learnt.insert(leader);
                }
            }
        }
    }

    /// Recomputes how far `b` matches its leader's log (only grows within a leader epoch).
    fn update_matched(&mut self, b: i32) {
        let Some(r) = self.replicas.get(&b) else {
            return;
        };
        let Role::Follower(l) = r.role else { return };
        let Some(leader) = self.replicas.get(&l) else {
            return;
        };
        let epoch = r.leader_epoch;
        let mut m = r.matched.get(&epoch).copied().unwrap_or(0);
        m = m.min(r.log.len()).min(leader.log.len());
        while m < r.log.len() && m < leader.log.len() && r.log[m] == leader.log[m] {
            m += 1;
        }
        let r = self.replicas.get_mut(&b).expect("looked up above");
        r.matched.insert(epoch, m);
    }
}

#[derive(Default)]
struct Checker {
    partitions: BTreeMap<String, PartitionView>,
    kraft: KraftView,
}

impl Checker {
    fn step(&mut self, e: &TraceEvent) -> Result<(), Failure> {
        let bad = |m: String| Failure {
            model: "trace",
            check: "well-formed-event",
            message: m,
            state_before: Vec::new(),
        };
        if e.event.starts_with("raft.") {
            return self.kraft.step(e).map_err(|f| f.unwrap_or_else(|m| bad(m)));
        }
        if e.event == "controller.alter_partition" {
            let key = format!("{}-{}", e.s("topic"), e.i("partition").map_err(bad)?);
            let state = self
                .partitions
                .get(&key)
                .map_or_else(Vec::new, |p| p.describe(&key));
            return alter_partition_step(e, &state).map_err(|f| f.unwrap_or_else(&bad));
        }
        if !(e.event.starts_with("partition.") || e.event == "replica.open") {
            return Ok(());
        }
        let key = format!("{}-{}", e.s("topic"), e.i("partition").map_err(bad)?);
        let p = self.partitions.entry(key.clone()).or_default();
        replication_step(p, &key, e).map_err(|f| f.unwrap_or_else(|m| bad(m)))
    }
}

/// `Err(Ok(f))`: a violation; `Err(Err(m))`: a malformed event.
type StepResult = Result<(), Result<Failure, String>>;

macro_rules! violation {
    ($model:expr, $check:expr, $state:expr, $($arg:tt)*) => {
        return Err(Ok(Failure { model: $model, check: $check, message: format!($($arg)*), state_before: $state }))
    };
}

fn replication_step(p: &mut PartitionView, key: &str, e: &TraceEvent) -> StepResult {
    let b = e.node;
    const M: &str = "replication";
    p.replicas.entry(b).or_insert_with(ReplicaView::new);
    // Every check reads the state before the event (so a violation can print it); the
    // state changes only after the checks passed.
    let r = &p.replicas[&b];
    macro_rules! before {
        () => {
            p.describe(key)
        };
    }
    match e.event.as_str() {
        "replica.open" => {
            // The model's Crash (a flushed prefix survives) and Restart.
            let leo = e.i("leo").map_err(Err)?;
            let runs = e.tuples::<2>("epochs").map_err(Err)?;
            let log: Vec<i32> = (0..leo)
                .map(|o| {
                    runs.iter()
                        .rev()
                        .find(|r| r[1] <= o)
                        .map_or(-1, |r| r[0] as i32)
                })
                .collect();
            // A recovered log longer than the traced one is an append the node made and was
            // killed before it traced (the event follows the write): those records existed.
            if !r.log.starts_with(&log) && !log.starts_with(&r.log) {
                violation!(M, "Crash", before!(),
                    "b{b} recovered log {} which is not a prefix of the log it had {}: a crash only loses an unflushed suffix",
                    log_text(&log), log_text(&r.log));
            }
            for (o, &ep) in log.iter().enumerate() {
                p.written.insert((o as i64, ep));
            }
            let mut n = ReplicaView::new();
            // What the leaders learnt from the previous incarnation's fetches stays true of
            // the records that survived.
            n.matched = r
                .matched
                .iter()
                .map(|(&ep, &m)| (ep, m.min(leo as usize)))
                .collect();
            // A leader that has not learnt of this restart may still count the rest; nor of an
            // earlier one, if the replica died again before every leader had.
            n.dead = r.dead.clone();
            n.dead.push(DeadIncarnation {
                matched: r.matched.clone(),
                learnt: BTreeSet::new(),
            });
            n.hw = e.i("hw").map_err(Err)?.min(leo);
            n.log = log;
            p.replicas.insert(b, n);
        }
        "partition.leader" => {
            let epoch = e.i("leader_epoch").map_err(Err)? as i32;
            let isr = e.ints("isr").map_err(Err)?;
            let replicas = e.ints("replicas").unwrap_or_default();
            if epoch < r.leader_epoch {
                violation!(M, "ElectLeader", before!(),
                    "b{b} became leader in leader epoch {epoch} after applying epoch {}: leader epochs never go back", r.leader_epoch);
            }
            if let Some(&other) = p.leaders.get(&epoch) {
                if other != b {
                    violation!(M, "ElectLeader", before!(),
                        "b{b} and b{other} both became leader in leader epoch {epoch}: one leader per leader epoch");
                }
            }
            if !isr.contains(&(b as i64)) {
                violation!(
                    M,
                    "leader-in-isr",
                    before!(),
                    "b{b} leads leader epoch {epoch} with ISR {isr:?}"
                );
            }
            if !replicas.is_empty() && !isr.iter().all(|m| replicas.contains(m)) {
                violation!(
                    M,
                    "isr-subset-of-replicas",
                    before!(),
                    "ISR {isr:?} is not within the replicas {replicas:?}"
                );
            }
            let n = p.committed.len();
            if r.log.len() < n || r.log[..n] != p.committed[..] {
                violation!(M, "no-committed-data-loss", before!(),
                    "b{b} became leader in epoch {epoch} with log {} which lacks committed records {}: an acknowledged record is lost",
                    log_text(&r.log), log_text(&p.committed));
            }
            p.leaders.insert(epoch, b);
            let isr32: Vec<i32> = isr.iter().map(|&m| m as i32).collect();
            p.learn_restarts(b, &isr32);
            let v = p.replicas.get_mut(&b).expect("inserted");
            v.role = Role::Leader;
            v.leader_epoch = epoch;
            v.partition_epoch = e.i("partition_epoch").map_err(Err)? as i32;
            v.isr = isr.iter().map(|&m| m as i32).collect();
            v.min_isr = e.i("min_isr").unwrap_or(1);
        }
        "partition.follower" => {
            let epoch = e.i("leader_epoch").map_err(Err)? as i32;
            let leader = e.i("leader").map_err(Err)? as i32;
            if epoch < r.leader_epoch {
                violation!(M, "BecomeFollower", before!(),
                    "b{b} follows leader epoch {epoch} after applying epoch {}: leader epochs never go back", r.leader_epoch);
            }
            let v = p.replicas.get_mut(&b).expect("inserted");
            v.role = Role::Follower(leader);
            v.leader_epoch = epoch;
            v.partition_epoch = e.i("partition_epoch").map_err(Err)? as i32;
            v.isr = e
                .ints("isr")
                .map_err(Err)?
                .iter()
                .map(|&m| m as i32)
                .collect();
            p.update_matched(b);
        }
        "partition.update" => {
            let pe = e.i("partition_epoch").map_err(Err)? as i32;
            let isr: Vec<i32> = e
                .ints("isr")
                .map_err(Err)?
                .iter()
                .map(|&m| m as i32)
                .collect();
            if pe < r.partition_epoch {
                violation!(M, "HandleAlterPartition", before!(),
                    "b{b} applied partition epoch {pe} after {}: partition epochs never go back (KIP-497)", r.partition_epoch);
            }
            if r.role == Role::Leader && !isr.contains(&b) {
                violation!(
                    M,
                    "leader-in-isr",
                    before!(),
                    "b{b} still leads with ISR {isr:?}"
                );
            }
            // A replica a reassignment adds learns the partition from a registration that
            // names another leader: the broker applies it as an update of a replica it just
            // created, with no `partition.follower` first. It is the model's BecomeFollower
            // of that leader epoch's leader (known from its `partition.leader` event).
            let epoch = e.i("leader_epoch").map_err(Err)? as i32;
            let adopted_leader =
                (r.role == Role::None && !e.b("leader") && epoch >= r.leader_epoch)
                    .then(|| p.leaders.get(&epoch).copied())
                    .flatten();
            if r.role == Role::Leader {
                p.learn_restarts(b, &isr);
            }
            let v = p.replicas.get_mut(&b).expect("inserted");
            v.partition_epoch = pe;
            v.isr = isr;
            if let Some(leader) = adopted_leader {
                v.role = Role::Follower(leader);
                v.leader_epoch = epoch;
                p.update_matched(b);
            }
        }
        "partition.stopped" => {
            p.replicas.get_mut(&b).expect("inserted").role = Role::None;
        }
        "partition.append" => {
            let batches = e.tuples::<3>("batches").map_err(Err)?;
            let leader = e.b("leader");
            // A fetch extends a prefix of the leader's log: the fetch validation (KIP-320's
            // last fetched epoch) and the truncation before it (KIP-279, down to the first
            // offset where the logs diverge) leave the follower nothing the leader holds
            // differently, in the model and in Kafka. A follower that kept a diverging record
            // (a truncation that stopped above the divergence) and fetches on is caught here, at
            // its first fetch, however the faults go on. Only the offsets both traces show are
            // compared: a new leader's trace may not yet show records it fetched just before
            // it switched (see `partition.hw`).
            if !leader {
                if let (Some(l), Role::Follower(lid)) = (p.leader_of(b), r.role) {
                    if let Some(x) = r.log.iter().zip(&l.log).position(|(f, l)| f != l) {
                        violation!(M, "Fetch", before!(),
                            "follower b{b} fetched on from its leader b{lid} while it holds m{x}@e{} where the leader holds m{x}@e{}: its truncation stopped above the divergence (the KIP-279 truncation offset is {x})",
                            r.log[x], l.log[x]);
                    }
                }
            }
            let mut appended: Vec<i32> = Vec::new();
            for [base, last, epoch] in batches {
                let epoch = epoch as i32;
                let leo = r.log.len() + appended.len();
                if base != leo as i64 || last < base {
                    violation!(M, if leader { "Produce" } else { "Fetch" }, before!(),
                        "b{b} appended offsets {base}..={last} to a log ending at {leo}: appends go at the LEO");
                }
                for o in base..=last {
                    if leader {
                        if r.role != Role::Leader || epoch != r.leader_epoch {
                            violation!(M, "Produce", before!(),
                                "b{b} appended m{o}@e{epoch} as leader while it {} in leader epoch {}",
                                if r.role == Role::Leader { "leads" } else { "does not lead" }, r.leader_epoch);
                        }
                        if p.written.contains(&(o, epoch)) {
                            violation!(M, "Produce", before!(),
                                "b{b} wrote offset {o} in leader epoch {epoch} a second time: (offset, leader epoch) names one record");
                        }
                    } else {
                        if !matches!(r.role, Role::Follower(_)) {
                            violation!(
                                M,
                                "Fetch",
                                before!(),
                                "b{b} appended fetched records while not a follower"
                            );
                        }
                        if epoch > r.leader_epoch || !p.written.contains(&(o, epoch)) {
                            violation!(M, "Fetch", before!(),
                                "follower b{b} appended m{o}@e{epoch}, a record no leader of epoch {epoch} wrote at offset {o}");
                        }
                    }
                    appended.push(epoch);
                }
            }
            let base = r.log.len() as i64;
            if leader {
                for (i, &ep) in appended.iter().enumerate() {
                    p.written.insert((base + i as i64, ep));
                }
            }
            let v = p.replicas.get_mut(&b).expect("inserted");
            v.log.extend_from_slice(&appended);
            if !leader {
                p.update_matched(b);
            }
        }
        "partition.truncate" => {
            let leo = e.i("leo").map_err(Err)?;
            let reason = e.s("reason");
            let action = if reason == "offset-out-of-range" {
                "Fetch"
            } else {
                "BecomeFollower"
            };
            if r.role == Role::Leader {
                violation!(
                    M,
                    action,
                    before!(),
                    "leader b{b} truncated its log to {leo}: a leader never truncates"
                );
            }
            if leo > r.log.len() as i64 || leo < 0 {
                violation!(
                    M,
                    action,
                    before!(),
                    "b{b} truncated to LEO {leo} from LEO {}",
                    r.log.len()
                );
            }
            let leo = leo as usize;
            // KIP-279: the follower keeps every record its leader holds at the same offset
            // (the model's `truncation_offset` is the first offset where the logs diverge).
            if let Some(l) = p.leader_of(b) {
                let keep = r.log.iter().zip(&l.log).take_while(|(a, c)| a == c).count();
                if leo < keep {
                    let Role::Follower(lid) = r.role else {
                        unreachable!("leader_of needs a follower")
                    };
                    violation!(M, action, before!(),
                        "b{b} truncated to {leo} ({reason}), dropping m{leo}@e{} which its leader b{lid} holds at the same offset: the model's truncation offset (KIP-279) is {keep}",
                        r.log[leo]);
                }
            }
            // The model's truncate_to also drops every epoch starting at or above the new LEO,
            // even when no record goes: an epoch left with no record behind it makes the
            // leader answer the next fetch with the same divergence, forever (finding 8).
            // Traces written before truncations carried their epochs skip this.
            if e.fields.get("epochs").is_some() {
                let runs = e.tuples::<2>("epochs").map_err(Err)?;
                if let Some([ep, start]) = runs.iter().find(|r| r[1] >= leo as i64) {
                    violation!(M, action, before!(),
                        "b{b} truncated to LEO {leo} ({reason}) but its leader-epoch cache still starts epoch {ep} at {start}: the model's truncate_to drops epochs starting at or above the LEO");
                }
            }
            let v = p.replicas.get_mut(&b).expect("inserted");
            v.log.truncate(leo);
            v.hw = v.hw.min(leo as i64);
            v.verified = v.verified.min(leo);
            let epoch = v.leader_epoch;
            if let Some(m) = v.matched.get_mut(&epoch) {
                *m = (*m).min(leo);
            }
        }
        "partition.hw" => {
            // A follower may hold records before its new leader's trace shows them (it led
            // the previous epoch, and the new leader fetched them from it after the follower
            // had switched): how far each ISR member matches is taken again now.
            if e.b("leader") {
                let isr = p.replicas[&b].isr.clone();
                for m in isr.into_iter().filter(|&m| m != b) {
                    p.update_matched(m);
                }
            }
            let r = &p.replicas[&b];
            let hw = e.i("hw").map_err(Err)?;
            if hw > r.log.len() as i64 || hw < 0 {
                violation!(
                    M,
                    "replica-state-well-formed",
                    before!(),
                    "b{b} HW {hw} beyond its LEO {}",
                    r.log.len()
                );
            }
            if e.b("leader") {
                if r.role != Role::Leader {
                    violation!(
                        M,
                        "advance_hw",
                        before!(),
                        "b{b} advanced an HW as leader without leading"
                    );
                }
                if hw < r.hw {
                    violation!(
                        M,
                        "advance_hw",
                        before!(),
                        "leader b{b} moved its HW back from {} to {hw}",
                        r.hw
                    );
                }
                if (r.isr.len() as i64) < r.min_isr {
                    violation!(M, "advance_hw", before!(),
                        "leader b{b} advanced its HW to {hw} with ISR {:?} below min.insync.replicas {} (KIP-966)", r.isr, r.min_isr);
                }
                for &m in r.isr.iter().filter(|&&m| m != b) {
                    let f = p.replicas.get(&m);
                    let matched = f.map_or(0, |f| f.countable(b, r.leader_epoch));
                    if (matched as i64) < hw {
                        // Say when a previous incarnation held more: the leader had learnt
                        // that it was gone, so its offset no longer counts.
                        let earlier = f
                            .map(|f| f.dead_held(r.leader_epoch, |_| true))
                            .filter(|&n| n > matched)
                            .map_or(String::new(), |n| format!(
                                " (its previous incarnation held {n}, but b{b} had applied an ISR without b{m} since b{m} restarted)"));
                        violation!(M, "advance_hw", before!(),
                            "leader b{b} advanced its HW to {hw} but ISR member b{m} holds only {matched} records as the leader does in leader epoch {}{earlier}: the HW is the smallest LEO of the ISR",
                            r.leader_epoch);
                    }
                }
                // `consumed-records-stable`: below its HW the leader serves what was read.
                let upto = (hw as usize).min(p.consumed.len());
                if r.log[..upto] != p.consumed[..upto] {
                    violation!(
                        M,
                        "consumed-records-stable",
                        before!(),
                        "leader b{b} serves {} below HW {hw} where consumers read {}",
                        log_text(&r.log[..upto]),
                        log_text(&p.consumed[..upto])
                    );
                }
            } else if hw as usize > p.consumed.len() {
                violation!(
                    M,
                    "Fetch",
                    before!(),
                    "follower b{b} took HW {hw}, above any HW a leader reached ({})",
                    p.consumed.len()
                );
            }
            // `replica-log-consistency` (the model's pairwise predicate, against the log every
            // replica's HW prefix must equal, the leaders' HW prefix): checked over what this
            // HW move newly covers.
            let to = hw as usize;
            let from = r.verified.min(to).min(p.consumed.len());
            let upto = to.min(p.consumed.len());
            if !logs_agree_below_hw(
                &r.log[from..upto],
                upto - from,
                &p.consumed[from..upto],
                upto - from,
            ) {
                violation!(
                    M,
                    "replica-log-consistency",
                    before!(),
                    "b{b} holds {} below its HW {hw} where the leaders' HW prefix is {}",
                    log_text(&r.log[..upto]),
                    log_text(&p.consumed[..upto])
                );
            }
            if e.b("leader") {
                let (grow_consumed, grow_committed) = (
                    r.log.get(p.consumed.len()..to).unwrap_or(&[]).to_vec(),
                    if r.isr.len() as i64 >= r.min_isr {
                        r.log.get(p.committed.len()..to).unwrap_or(&[]).to_vec()
                    } else {
                        Vec::new()
                    },
                );
                p.consumed.extend_from_slice(&grow_consumed);
                p.committed.extend_from_slice(&grow_committed);
            }
            let v = p.replicas.get_mut(&b).expect("inserted");
            v.hw = hw;
            v.verified = to;
        }
        _ => {}
    }
    Ok(())
}

/// The active controller's AlterPartition decision (`controller.alter_partition`): the
/// replication model's `HandleAlterPartition` accepts a request only if no broker it adds to
/// the ISR restarted after the leader saw the fetch it proposes it on (the model's
/// `stale_broker_epoch` guard, KIP-903). On the wire that is the proposed broker epoch of each
/// member: the controller must answer INELIGIBLE_REPLICA when it is not the epoch its image
/// registers for the broker. Members already in the ISR are not re-checked (neither the model
/// nor the controller does), and a member proposed with epoch -1 (unknown to the leader: it
/// never saw a fetch from it) carries nothing to check. Checked on the event alone: both
/// epochs are the controller's own view when it decided, so no clock-order merging is involved.
fn alter_partition_step(e: &TraceEvent, state: &[String]) -> StepResult {
    if !e.b("accepted") {
        return Ok(());
    }
    let current = e.ints("current_isr").map_err(Err)?;
    for [b, proposed, registered] in e.tuples::<3>("isr").map_err(Err)? {
        if current.contains(&b) || proposed < 0 || proposed == registered {
            continue;
        }
        let key = format!("{}-{}", e.s("topic"), e.i("partition").map_err(Err)?);
        let registered = if registered < 0 {
            "is not registered".to_string()
        } else {
            format!("is registered with broker epoch {registered}")
        };
        violation!("replication", "HandleAlterPartition", state.to_vec(),
            "controller node {} accepted leader b{}'s AlterPartition of {key} (leader epoch {}, partition epoch {}) adding b{b} to ISR {current:?} with broker epoch {proposed}, but b{b} {registered}: a fetch from a previous incarnation put it back (KIP-903: INELIGIBLE_REPLICA)",
            e.node, e.i("leader").map_err(Err)?, e.i("leader_epoch").map_err(Err)?,
            e.i("partition_epoch").map_err(Err)?);
    }
    Ok(())
}

// ---- kraft: the controller quorum -----------------------------------------------------------

#[derive(Debug, Default, Clone)]
struct VoterView {
    log: Vec<i32>,
    /// `None` after a restart until the node learns an HW (the model's unknown HW).
    hw: Option<i64>,
    hw_floor: i64,
    leader_epoch: i32,
}

#[derive(Debug, Default)]
struct KraftView {
    voters: BTreeMap<i32, VoterView>,
    /// Votes cast: (node, epoch) → candidate; survives restarts (the quorum-state file).
    votes: BTreeMap<(i32, i32), i32>,
    leaders: BTreeMap<i32, i32>,
    written: HashSet<(i64, i32)>,
    /// The log below the largest HW any node reached.
    committed: Vec<i32>,
}

impl KraftView {
    fn describe(&self) -> Vec<String> {
        let mut out = vec![format!(
            "__cluster_metadata: leaders by epoch {:?}, committed {}",
            self.leaders,
            log_text(&self.committed)
        )];
        for (n, v) in &self.voters {
            out.push(format!(
                "node {n} epoch={} LEO={} HW={} log={}",
                v.leader_epoch,
                v.log.len(),
                v.hw.map_or("unknown".into(), |h| h.to_string()),
                log_text(&v.log)
            ));
        }
        out
    }

    fn step(&mut self, e: &TraceEvent) -> StepResult {
        const M: &str = "kraft";
        let n = e.node;
        self.voters.entry(n).or_default();
        let v = &self.voters[&n];
        macro_rules! before {
            () => {
                self.describe()
            };
        }
        match e.event.as_str() {
            "raft.restore" => {
                let leo = e.i("leo").map_err(Err)?;
                let runs = e.tuples::<2>("epochs").map_err(Err)?;
                let log: Vec<i32> = (0..leo)
                    .map(|o| {
                        runs.iter()
                            .rev()
                            .find(|r| r[1] <= o)
                            .map_or(-1, |r| r[0] as i32)
                    })
                    .collect();
                for (o, &ep) in log.iter().enumerate() {
                    self.written.insert((o as i64, ep));
                }
                let w = self.voters.get_mut(&n).expect("inserted");
                let _ = track_hw(w.hw, None, &mut w.hw_floor);
                w.hw = None;
                w.log = log;
                w.leader_epoch = e.i("epoch").map_err(Err)? as i32;
            }
            "raft.vote" => {
                let epoch = e.i("epoch").map_err(Err)? as i32;
                let c = e.i("candidate").map_err(Err)? as i32;
                if let Some(&prev) = self.votes.get(&(n, epoch)) {
                    if prev != c {
                        violation!(M, "HandleVoteRequest", before!(),
                            "node {n} voted for {prev} and then for {c} in epoch {epoch}: one vote per epoch");
                    }
                }
                self.votes.insert((n, epoch), c);
                let w = self.voters.get_mut(&n).expect("inserted");
                w.leader_epoch = w.leader_epoch.max(epoch);
            }
            "raft.leader" => {
                let epoch = e.i("epoch").map_err(Err)? as i32;
                if let Some(&other) = self.leaders.get(&epoch) {
                    if other != n {
                        violation!(
                            M,
                            "election-safety",
                            before!(),
                            "nodes {other} and {n} both became leader of epoch {epoch}"
                        );
                    }
                }
                let c = self.committed.len();
                if v.log.len() < c || v.log[..c] != self.committed[..] {
                    violation!(M, "leader-completeness", before!(),
                        "node {n} became leader of epoch {epoch} without every committed record: log {} committed {}",
                        log_text(&v.log), log_text(&self.committed));
                }
                self.leaders.insert(epoch, n);
                self.voters.get_mut(&n).expect("inserted").leader_epoch = epoch;
            }
            "raft.append" => {
                let base = e.i("base_offset").map_err(Err)?;
                let epochs = e.ints("epochs").map_err(Err)?;
                let leader = e.b("leader");
                if base != v.log.len() as i64 {
                    violation!(
                        M,
                        "log-matching",
                        before!(),
                        "node {n} appended at offset {base} to a log ending at {}",
                        v.log.len()
                    );
                }
                let mut last = v.log.last().copied();
                for (i, &ep) in epochs.iter().enumerate() {
                    let ep = ep as i32;
                    let o = base + i as i64;
                    if last.is_some_and(|l| l > ep) {
                        violation!(
                            M,
                            "log-matching",
                            before!(),
                            "node {n} appended a record of epoch {ep} after one of epoch {}",
                            last.unwrap_or(0)
                        );
                    }
                    if leader {
                        if self.leaders.get(&ep) != Some(&n) {
                            violation!(M, "election-safety", before!(),
                                "node {n} appended as leader of epoch {ep} without having been elected in it");
                        }
                    } else if !self.written.contains(&(o, ep)) {
                        violation!(M, "log-matching", before!(),
                            "node {n} fetched a record of epoch {ep} at offset {o} that no leader of epoch {ep} wrote");
                    }
                    last = Some(ep);
                }
                if leader {
                    for (i, &ep) in epochs.iter().enumerate() {
                        self.written.insert((base + i as i64, ep as i32));
                    }
                }
                let w = self.voters.get_mut(&n).expect("inserted");
                w.log.extend(epochs.iter().map(|&ep| ep as i32));
            }
            "raft.truncate" => {
                let offset = e.i("offset").map_err(Err)?;
                if let Some(h) = v.hw.filter(|h| offset < *h) {
                    violation!(
                        M,
                        "leader-completeness",
                        before!(),
                        "node {n} truncated to {offset}, below its own HW {h}"
                    );
                }
                // A committed record is never removed: the first offset where this log leaves
                // the committed one is as far back as a truncation may go.
                let keep = v
                    .log
                    .iter()
                    .zip(&self.committed)
                    .take_while(|(a, c)| a == c)
                    .count() as i64;
                if offset < keep {
                    violation!(
                        M,
                        "no-committed-data-loss",
                        before!(),
                        "node {n} truncated to {offset}, dropping committed records up to {keep}"
                    );
                }
                let w = self.voters.get_mut(&n).expect("inserted");
                w.log.truncate(offset.max(0) as usize);
            }
            "raft.hw" => {
                let hw = e.i("hw").map_err(Err)?;
                let mut floor = v.hw_floor;
                if track_hw(v.hw, Some(hw), &mut floor) {
                    violation!(
                        M,
                        "hw-monotonic",
                        before!(),
                        "node {n} moved its HW from {} to {hw}",
                        v.hw.unwrap_or(v.hw_floor)
                    );
                }
                if hw > v.log.len() as i64 {
                    violation!(
                        M,
                        "hw-within-log",
                        before!(),
                        "node {n} HW {hw} beyond its LEO {}",
                        v.log.len()
                    );
                }
                let upto = (hw as usize).min(self.committed.len());
                if v.log[..upto] != self.committed[..upto] {
                    violation!(
                        M,
                        "no-committed-data-loss",
                        before!(),
                        "node {n} commits {} where {} was committed",
                        log_text(&v.log[..upto]),
                        log_text(&self.committed[..upto])
                    );
                }
                let grow = v
                    .log
                    .get(self.committed.len()..hw as usize)
                    .unwrap_or(&[])
                    .to_vec();
                self.committed.extend_from_slice(&grow);
                let w = self.voters.get_mut(&n).expect("inserted");
                w.hw = Some(hw);
                w.hw_floor = floor;
            }
            _ => {}
        }
        Ok(())
    }
}

// ---- `kcheck conform` -----------------------------------------------------------------------

pub fn conform_command() -> clap::Command {
    use clap::{Arg, ArgAction, Command};
    Command::new("conform")
        .about(
            "Check that a run's protocol traces are behaviours of the replication and kraft models",
        )
        .arg(
            Arg::new("run-dir")
                .required(true)
                .value_name("RUN_DIR")
                .value_parser(clap::value_parser!(PathBuf))
                .help("A `kcheck test` run folder (its n<ID>/trace.jsonl files)"),
        )
        .arg(
            Arg::new("json")
                .long("json")
                .action(ArgAction::SetTrue)
                .help("Print the report as JSON"),
        )
}

/// Exit 0: the traces conform; 1: an event no model action explains; 2: bad input.
pub fn run_conform(m: &clap::ArgMatches) -> u8 {
    let dir = m.get_one::<PathBuf>("run-dir").expect("required");
    let report = match conform_run(dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kcheck conform: {e}");
            return 2;
        }
    };
    if m.get_flag("json") {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        print!("{}", report.text());
    }
    if report.conforms() {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A trace in the given global order: times are the positions, sequence numbers count per
    /// node.
    fn trace(steps: &[(i32, &str, Value)]) -> Vec<TraceEvent> {
        let mut seqs: BTreeMap<i32, u64> = BTreeMap::new();
        steps
            .iter()
            .enumerate()
            .map(|(i, (node, event, f))| {
                let seq = seqs.entry(*node).or_default();
                let mut v = f.clone();
                let m = v.as_object_mut().expect("fields are an object");
                m.insert("node".into(), json!(node));
                m.insert("seq".into(), json!(*seq));
                m.insert("mono_ns".into(), json!(1000 + i as u64));
                m.insert("event".into(), json!(event));
                *seq += 1;
                TraceEvent::parse(&v.to_string()).expect("well formed")
            })
            .collect()
    }

    fn p(mut f: Value) -> Value {
        let m = f.as_object_mut().unwrap();
        m.insert("topic".into(), json!("t"));
        m.insert("partition".into(), json!(0));
        f
    }

    fn lead(epoch: i64, isr: &[i64], min_isr: i64) -> Value {
        p(
            json!({"leader_epoch": epoch, "partition_epoch": epoch, "isr": isr, "replicas": [1, 2, 3], "min_isr": min_isr, "leo": 0, "hw": 0}),
        )
    }
    fn follow(leader: i64, epoch: i64, isr: &[i64]) -> Value {
        p(
            json!({"leader": leader, "leader_epoch": epoch, "partition_epoch": epoch, "isr": isr, "replicas": [1, 2, 3], "leo": 0, "hw": 0}),
        )
    }
    fn append(leader: bool, batches: &[[i64; 3]]) -> Value {
        p(json!({"leader": leader, "leader_epoch": 1, "batches": batches, "leo": 0}))
    }
    fn hw(hw: i64, leader: bool) -> Value {
        p(json!({"hw": hw, "before": 0, "leo": 0, "leader": leader, "leader_epoch": 1}))
    }
    fn truncate(to: i64) -> Value {
        p(json!({"to": to, "leo": to, "hw": 0, "leader_epoch": 2, "reason": "diverging-epoch"}))
    }

    /// b1 leads epoch 1 with ISR {1,2}, min.insync.replicas 2; both hold m0@e1 m1@e1 and the
    /// HW covers them.
    fn replicated() -> Vec<(i32, &'static str, Value)> {
        vec![
            (1, "partition.leader", lead(1, &[1, 2], 2)),
            (2, "partition.follower", follow(1, 1, &[1, 2])),
            (1, "partition.append", append(true, &[[0, 1, 1]])),
            (2, "partition.append", append(false, &[[0, 1, 1]])),
            (1, "partition.hw", hw(2, true)),
            (2, "partition.hw", hw(2, false)),
        ]
    }

    fn check(steps: &[(i32, &str, Value)]) -> ConformReport {
        check_events(trace(steps))
    }

    /// The violation's check name and message (panics when the trace conforms).
    fn caught(steps: &[(i32, &str, Value)]) -> (&'static str, String) {
        let r = check(steps);
        let v = r
            .violation
            .unwrap_or_else(|| panic!("expected a violation"));
        assert!(
            !v.state_before.is_empty() || v.model == "trace",
            "state before is printed"
        );
        (v.check, v.message)
    }

    #[test]
    fn a_correct_replication_conforms() {
        let r = check(&replicated());
        assert!(r.conforms(), "{}", r.text());
        assert_eq!(
            (r.events, r.partitions, r.nodes.clone()),
            (6, 1, vec![1, 2])
        );
    }

    /// A registration update naming another leader, for a replica a reassignment adds.
    fn update_not_leader(epoch: i64, isr: &[i64]) -> Value {
        p(
            json!({"leader_epoch": epoch, "partition_epoch": epoch + 1, "isr": isr, "replicas": [1, 2, 3], "leader": false}),
        )
    }

    #[test]
    fn a_replica_added_by_an_update_follows_the_leader_of_its_epoch() {
        let mut t = replicated();
        // b3 is added: its first event is an update naming epoch 1 (led by b1), then it fetches.
        t.push((3, "partition.update", update_not_leader(1, &[1, 2])));
        t.push((3, "partition.append", append(false, &[[0, 1, 1]])));
        let r = check(&t);
        assert!(r.conforms(), "{}", r.text());
        // The same update for an epoch nobody has led leaves b3 in no role: its fetch is caught.
        let mut t = replicated();
        t.push((3, "partition.update", update_not_leader(2, &[1, 2])));
        t.push((3, "partition.append", append(false, &[[0, 1, 1]])));
        let (name, msg) = caught(&t);
        assert_eq!(name, "Fetch");
        assert!(msg.contains("while not a follower"), "{msg}");
    }

    #[test]
    fn a_follower_append_of_a_record_no_leader_wrote_is_caught() {
        let mut t = replicated();
        t.swap(2, 3); // the follower "fetches" m0@e1 before the leader appended it
        let (name, msg) = caught(&t);
        assert_eq!(name, "Fetch");
        assert!(msg.contains("m0@e1"), "{msg}");
    }

    #[test]
    fn a_leader_append_off_its_epoch_or_twice_is_caught() {
        let mut t = replicated();
        t[2].2 = append(true, &[[0, 1, 2]]);
        assert_eq!(caught(&t).0, "Produce");
        let mut t = replicated();
        t.insert(3, (1, "partition.append", append(true, &[[0, 0, 1]])));
        assert_eq!(caught(&t).0, "Produce", "not at the LEO");
    }

    #[test]
    fn an_hw_past_an_isr_member_or_below_min_isr_is_caught() {
        let mut t = replicated();
        t.swap(3, 4); // the leader advances before the follower has the records
        let (name, msg) = caught(&t);
        assert_eq!(name, "advance_hw");
        assert!(msg.contains("ISR member b2"), "{msg}");
        // KIP-966: the HW stays while the ISR is below min.insync.replicas.
        let mut t = replicated();
        t[0].2 = lead(1, &[1], 2);
        let (name, msg) = caught(&t);
        assert_eq!(name, "advance_hw");
        assert!(msg.contains("min.insync.replicas"), "{msg}");
        // With min.insync.replicas 1 the same ISR is fine.
        let mut t = replicated();
        t[0].2 = lead(1, &[1], 1);
        assert!(check(&t).conforms());
    }

    #[test]
    fn a_late_fetch_from_a_follower_that_moved_on_still_counts() {
        // b2 fetched in epoch 1, then applied epoch 2 (b3 leads) before b1 handled that
        // fetch and advanced its HW: what b1 learnt stays true.
        let mut t = replicated();
        t.insert(4, (2, "partition.follower", follow(3, 2, &[3, 2])));
        assert!(check(&t).conforms(), "{}", check(&t).text());
        // The same after a restart that kept the log; not after one that lost the records.
        let open = |leo: i64| p(json!({"leo": leo, "log_start": 0, "hw": 0, "epochs": [[1, 0]]}));
        let mut t = replicated();
        t.insert(4, (2, "replica.open", open(2)));
        assert!(check(&t).conforms(), "{}", check(&t).text());
        // After one that lost m1, b1 may still count the fetch b2 sent before it died until
        // b1 learns of the restart (see the next test); once it has, it may not.
        let mut t = replicated();
        t.insert(4, (2, "replica.open", open(1)));
        t.pop(); // b2's HW 2 from before it restarted
        assert!(check(&t).conforms(), "{}", check(&t).text());
        t.insert(5, (1, "partition.update", leader_update(2, &[1])));
        t.insert(6, (1, "partition.update", leader_update(3, &[1, 2])));
        assert_eq!(caught(&t).0, "advance_hw");
    }

    /// The leader b1's registration update of leader epoch 1 with partition epoch `pe`.
    fn leader_update(pe: i64, isr: &[i64]) -> Value {
        p(
            json!({"leader_epoch": 1, "partition_epoch": pe, "isr": isr, "replicas": [1, 2, 3], "leader": true}),
        )
    }

    /// `replicated` plus m2@e1 on both, then b2 crashes losing m2 (it restarts with 2
    /// records) while its fetch at offset 3 is still on its way to b1.
    fn restarted_after_fetching() -> Vec<(i32, &'static str, Value)> {
        let mut t = replicated();
        t.push((1, "partition.append", append(true, &[[2, 2, 1]])));
        t.push((2, "partition.append", append(false, &[[2, 2, 1]])));
        t.push((
            2,
            "replica.open",
            p(json!({"leo": 2, "log_start": 0, "hw": 2, "epochs": [[1, 0]]})),
        ));
        t
    }

    #[test]
    fn a_dead_incarnations_fetch_counts_only_until_the_leader_learns_of_the_restart() {
        // The stale fetch lands before b1 applied the re-registration's ISR change: b1 still
        // has b2 in its ISR and counts offset 3, which the previous b2 held.
        let mut t = restarted_after_fetching();
        t.push((1, "partition.hw", hw(3, true)));
        assert!(check(&t).conforms(), "{}", check(&t).text());
        // Also when b2 restarted twice before b1 learnt of either restart.
        let mut t = restarted_after_fetching();
        let again = t.last().expect("the restart").clone();
        t.push(again);
        t.push((1, "partition.hw", hw(3, true)));
        assert!(check(&t).conforms(), "{}", check(&t).text());
        // b1 applied the ISR without b2 (KIP-966's removal at the re-registration), then b2 was
        // put back (a controller that accepted the old incarnation): its offset 3 no longer
        // counts, and the report says why.
        let mut t = restarted_after_fetching();
        t.push((1, "partition.update", leader_update(2, &[1])));
        t.push((1, "partition.update", leader_update(3, &[1, 2])));
        t.push((1, "partition.hw", hw(3, true)));
        let (name, msg) = caught(&t);
        assert_eq!(name, "advance_hw");
        assert!(msg.contains("ISR member b2 holds only 2"), "{msg}");
        assert!(msg.contains("previous incarnation held 3"), "{msg}");
        // The window is per leader: b3 applying an ISR without b2 does not close it for b1.
        let mut t = restarted_after_fetching();
        t.push((3, "partition.update", update_not_leader(1, &[1])));
        t.push((1, "partition.hw", hw(3, true)));
        assert!(check(&t).conforms(), "{}", check(&t).text());
        // What b2's new incarnation holds counts as before.
        let mut t = restarted_after_fetching();
        t.push((1, "partition.update", leader_update(2, &[1])));
        t.push((2, "partition.follower", follow(1, 1, &[1])));
        t.push((2, "partition.append", append(false, &[[2, 2, 1]])));
        t.push((1, "partition.update", leader_update(3, &[1, 2])));
        t.push((1, "partition.hw", hw(3, true)));
        assert!(check(&t).conforms(), "{}", check(&t).text());
    }

    /// The active controller (node 9) decides an AlterPartition of t-0 from leader b1 that
    /// adds b2: each member is [broker, proposed broker epoch, registered broker epoch].
    fn alter(accepted: bool, current: &[i64], isr: &[[i64; 3]]) -> Value {
        p(
            json!({"leader": 1, "leader_epoch": 1, "partition_epoch": 4, "current_isr": current,
            "isr": isr, "accepted": accepted, "error": if accepted { 0 } else { 107 }}),
        )
    }

    #[test]
    fn a_controller_accepting_a_stale_broker_epoch_is_caught() {
        let ok = |a: Value| {
            let mut t = replicated();
            t.push((9, "controller.alter_partition", a));
            let r = check(&t);
            assert!(r.conforms(), "{}", r.text());
        };
        // The current incarnation; a stale one refused; a member already in the ISR; an
        // epoch the leader never learnt (-1).
        ok(alter(true, &[1], &[[1, 3, 3], [2, 12, 12]]));
        ok(alter(false, &[1], &[[1, 3, 3], [2, 5, 12]]));
        ok(alter(true, &[1, 2], &[[1, 3, 3], [2, 5, 12]]));
        ok(alter(true, &[1], &[[1, -1, 3], [2, -1, 12]]));
        let mut t = replicated();
        t.push((
            9,
            "controller.alter_partition",
            alter(true, &[1], &[[1, 3, 3], [2, 5, 12]]),
        ));
        let r = check(&t);
        let v = r.violation.expect("a stale incarnation accepted");
        assert_eq!((v.model, v.check), ("replication", "HandleAlterPartition"));
        for part in [
            "b2",
            "broker epoch 5",
            "broker epoch 12",
            "t-0",
            "INELIGIBLE_REPLICA",
        ] {
            assert!(v.message.contains(part), "{part}: {}", v.message);
        }
        assert!(
            !v.state_before.is_empty(),
            "the partition's state is printed"
        );
        // A broker the controller does not know is no better.
        let mut t = replicated();
        t.push((
            9,
            "controller.alter_partition",
            alter(true, &[1], &[[1, 3, 3], [2, 5, -1]]),
        ));
        assert!(caught(&t).1.contains("b2 is not registered"));
    }

    #[test]
    fn a_follower_hw_above_every_leader_hw_is_caught() {
        let mut t = replicated();
        t.swap(4, 5);
        assert_eq!(caught(&t).0, "Fetch");
    }

    #[test]
    fn two_leaders_in_one_leader_epoch_are_caught() {
        let mut t = replicated();
        t.push((3, "partition.leader", lead(1, &[3, 1], 1)));
        let (name, msg) = caught(&t);
        assert_eq!(name, "ElectLeader");
        assert!(
            msg.contains("both became leader in leader epoch 1"),
            "{msg}"
        );
    }

    /// b2 becomes leader of epoch 2; b1, now its follower, truncates.
    fn failover(to: i64) -> Vec<(i32, &'static str, Value)> {
        let mut t = replicated();
        t.push((2, "partition.leader", lead(2, &[2, 1], 1)));
        t.push((1, "partition.follower", follow(2, 2, &[2, 1])));
        t.push((1, "partition.truncate", truncate(to)));
        t
    }

    #[test]
    fn truncating_a_record_the_leader_holds_is_caught() {
        assert!(check(&failover(2)).conforms(), "truncating nothing is fine");
        let (name, msg) = caught(&failover(1));
        assert_eq!(name, "BecomeFollower");
        assert!(msg.contains("truncation offset (KIP-279) is 2"), "{msg}");
    }

    /// b1 led epoch 1 and wrote m2@e1 alone; b2 leads epoch 2 and writes m2@e2 and m3@e2;
    /// b1 follows b2 and truncates to `to`, then fetches from there.
    fn diverged_then_fetched(to: i64) -> Vec<(i32, &'static str, Value)> {
        let mut t = replicated();
        t.push((1, "partition.append", append(true, &[[2, 2, 1]])));
        t.push((2, "partition.leader", lead(2, &[2, 1], 1)));
        t.push((2, "partition.append", append(true, &[[2, 3, 2]])));
        t.push((1, "partition.follower", follow(2, 2, &[2, 1])));
        t.push((1, "partition.truncate", truncate(to)));
        t.push((1, "partition.append", append(false, &[[to, 3, 2]])));
        t
    }

    #[test]
    fn fetching_on_over_a_diverging_record_is_caught() {
        let r = check(&diverged_then_fetched(2));
        assert!(r.conforms(), "truncated to the divergence: {}", r.text());
        // KIP-101's single lookup: the truncation keeps m2@e1 where the leader holds m2@e2.
        let (name, msg) = caught(&diverged_then_fetched(3));
        assert_eq!(name, "Fetch");
        assert!(
            msg.contains("holds m2@e1 where the leader holds m2@e2"),
            "{msg}"
        );
        assert!(msg.contains("truncation offset is 2"), "{msg}");
    }

    #[test]
    fn a_follower_holding_records_before_its_new_leader_counts_for_the_hw() {
        // b1 led epoch 1 and wrote m2; it follows b2 in epoch 2 before b2's trace shows m2
        // (b2 fetched it from b1 in epoch 1 just before switching). b1 then appends nothing,
        // yet it holds m2 as b2 does, so b2's HW may cover it.
        let mut t = replicated();
        t.push((1, "partition.append", append(true, &[[2, 2, 1]])));
        t.push((1, "partition.follower", follow(2, 2, &[2, 1])));
        t.push((2, "partition.append", append(false, &[[2, 2, 1]])));
        t.push((2, "partition.leader", lead(2, &[2, 1], 2)));
        t.push((2, "partition.hw", hw(3, true)));
        assert!(check(&t).conforms());
        // A member that does not hold the leader's m2 still stops the HW.
        let mut t = replicated();
        t.push((1, "partition.append", append(true, &[[2, 2, 1]])));
        t.push((2, "partition.leader", lead(2, &[2, 1], 2)));
        t.push((2, "partition.append", append(true, &[[2, 2, 2]])));
        t.push((1, "partition.follower", follow(2, 2, &[2, 1])));
        t.push((1, "partition.truncate", truncate(2)));
        t.push((2, "partition.hw", hw(3, true)));
        let (name, _) = caught(&t);
        assert_eq!(name, "advance_hw");
    }

    #[test]
    fn an_epoch_left_at_the_leo_after_a_truncation_is_caught() {
        let with_epochs = |epochs: Value| {
            let mut t = failover(2);
            let last = t.last_mut().expect("failover truncates");
            last.2["epochs"] = epochs;
            t
        };
        assert!(check(&with_epochs(json!([[1, 0]]))).conforms());
        let (name, msg) = caught(&with_epochs(json!([[1, 0], [3, 2]])));
        assert_eq!(name, "BecomeFollower");
        assert!(msg.contains("still starts epoch 3 at 2"), "{msg}");
    }

    #[test]
    fn a_leader_without_the_committed_records_is_caught() {
        let mut t = replicated();
        // b3 never fetched, yet becomes leader (an unclean election).
        t.push((3, "partition.leader", lead(2, &[3], 1)));
        let (name, msg) = caught(&t);
        assert_eq!(name, "no-committed-data-loss");
        assert!(msg.contains("lacks committed records"), "{msg}");
    }

    #[test]
    fn a_recovered_log_must_be_a_prefix_of_the_old_one() {
        let open = |leo: i64, epochs: Value| {
            p(json!({"leo": leo, "log_start": 0, "hw": 0, "epochs": epochs}))
        };
        let mut t = replicated();
        t.push((2, "replica.open", open(1, json!([[1, 0]]))));
        assert!(
            check(&t).conforms(),
            "losing an unflushed suffix is a crash"
        );
        let mut t = replicated();
        t.push((2, "replica.open", open(3, json!([[1, 0]]))));
        assert!(check(&t).conforms(), "an append killed before its event");
        let mut t = replicated();
        t.push((2, "replica.open", open(2, json!([[7, 0]]))));
        assert_eq!(caught(&t).0, "Crash");
    }

    #[test]
    fn a_malformed_event_is_reported_as_such() {
        let mut t = replicated();
        t.push((2, "partition.hw", p(json!({"leader": false}))));
        let r = check(&t);
        let v = r.violation.unwrap();
        assert_eq!((v.model, v.check), ("trace", "well-formed-event"));
        assert!(TraceEvent::parse("{\"event\":\"x\"}").is_err());
        assert!(TraceEvent::parse("not json").is_err());
    }

    // ---- kraft ----

    fn quorum() -> Vec<(i32, &'static str, Value)> {
        let restore = || json!({"epoch": 0, "voted_for": -1, "leo": 0, "epochs": []});
        vec![
            (1, "raft.restore", restore()),
            (2, "raft.restore", restore()),
            (3, "raft.restore", restore()),
            (1, "raft.vote", json!({"epoch": 1, "candidate": 1})),
            (2, "raft.vote", json!({"epoch": 1, "candidate": 1})),
            (1, "raft.leader", json!({"epoch": 1, "leo": 0, "hw": 0})),
            (
                1,
                "raft.append",
                json!({"base_offset": 0, "epochs": [1, 1], "leader": true}),
            ),
            (
                2,
                "raft.append",
                json!({"base_offset": 0, "epochs": [1, 1], "leader": false}),
            ),
            (1, "raft.hw", json!({"hw": 2, "before": 0})),
            (2, "raft.hw", json!({"hw": 2, "before": 0})),
        ]
    }

    #[test]
    fn a_correct_quorum_conforms() {
        let r = check(&quorum());
        assert!(r.conforms(), "{}", r.text());
    }

    #[test]
    fn a_second_vote_in_an_epoch_is_caught() {
        let mut t = quorum();
        t.insert(5, (2, "raft.vote", json!({"epoch": 1, "candidate": 3})));
        let (name, msg) = caught(&t);
        assert_eq!(name, "HandleVoteRequest");
        assert!(msg.contains("one vote per epoch"), "{msg}");
        // The vote survives a restart (quorum-state): forgetting it is caught too.
        let mut t = quorum();
        t.push((
            2,
            "raft.restore",
            json!({"epoch": 1, "voted_for": -1, "leo": 2, "epochs": [[1, 0]]}),
        ));
        t.push((2, "raft.vote", json!({"epoch": 1, "candidate": 3})));
        assert_eq!(caught(&t).0, "HandleVoteRequest");
    }

    #[test]
    fn two_leaders_of_an_epoch_are_caught() {
        let mut t = quorum();
        t.push((3, "raft.leader", json!({"epoch": 1, "leo": 0, "hw": 0})));
        assert_eq!(caught(&t).0, "election-safety");
    }

    #[test]
    fn an_hw_going_back_is_caught_even_across_a_restart() {
        let mut t = quorum();
        t.push((2, "raft.hw", json!({"hw": 1, "before": 2})));
        assert_eq!(caught(&t).0, "hw-monotonic");
        let mut t = quorum();
        t.push((
            2,
            "raft.restore",
            json!({"epoch": 1, "voted_for": 1, "leo": 2, "epochs": [[1, 0]]}),
        ));
        t.push((2, "raft.hw", json!({"hw": 1, "before": 0})));
        assert_eq!(
            caught(&t).0,
            "hw-monotonic",
            "the model's track_hw keeps the floor"
        );
        let mut t = quorum();
        t.push((
            2,
            "raft.restore",
            json!({"epoch": 1, "voted_for": 1, "leo": 2, "epochs": [[1, 0]]}),
        ));
        t.push((2, "raft.hw", json!({"hw": 2, "before": 0})));
        assert!(check(&t).conforms());
    }

    #[test]
    fn losing_committed_metadata_is_caught() {
        let mut t = quorum();
        t.push((2, "raft.truncate", json!({"offset": 1, "hw": 2})));
        assert_eq!(caught(&t).0, "leader-completeness", "below its own HW");
        let mut t = quorum();
        // Node 3 never fetched; elected anyway it lacks the committed records.
        t.push((3, "raft.vote", json!({"epoch": 2, "candidate": 3})));
        t.push((3, "raft.leader", json!({"epoch": 2, "leo": 0, "hw": 0})));
        assert_eq!(caught(&t).0, "leader-completeness");
        let mut t = quorum();
        // Node 3 fetches a record that no leader of epoch 2 wrote.
        t.push((
            3,
            "raft.append",
            json!({"base_offset": 0, "epochs": [2], "leader": false}),
        ));
        assert_eq!(caught(&t).0, "log-matching");
    }

    #[test]
    fn merging_keeps_each_nodes_order_and_orders_by_the_monotonic_clock() {
        let mut t = trace(&replicated());
        t.reverse();
        let merged = merge(t);
        let order: Vec<(i32, u64)> = merged.iter().map(|e| (e.node, e.seq)).collect();
        assert_eq!(order, vec![(1, 0), (2, 0), (1, 1), (2, 1), (1, 2), (2, 2)]);
    }
}
