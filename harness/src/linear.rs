//! Linearizability of each partition's log (the `log` workload).
//!
//! A partition is a linearizable log object with this sequential specification: the state is
//! the list of committed records (offsets `0..HW`); `produce(v)` appends `v` at offset HW and
//! returns that offset; `read(o)` returns the record at `o` if `o < HW`, and nothing otherwise.
//! Kafka promises exactly this for `acks=all` producers and consumers that only see records
//! below the high watermark (KIP-101/KIP-279 closed the holes where this used to fail).
//!
//! The search is Wing & Gong's: repeatedly pick a pending call that is minimal (invoked before
//! the earliest pending return), apply it to the model, and backtrack when some operation's
//! return is reached before it could be linearized. Lowe's memoisation skips configurations
//! (set of linearized ops, model state) already explored. P-compositionality (Herlihy & Wing's
//! locality) lets every partition be checked alone; partitions run in parallel on threads.
//!
//! Operations that completed `info` (or never completed) may or may not have taken effect: they
//! never return, so they are never *required*; the search may linearize them anywhere after
//! their call. `fail` produces did not happen and are dropped; reads that did not complete `ok`
//! observed nothing and are dropped.
//!
//! Indeterminate produces are linearized *just in time*, which keeps the search from trying
//! every subset of them at every step (exponential in the number of crashed producers):
//! - one whose record some read returned at offset `o` may only take effect when the HW is `o`;
//! - one whose record nobody read may only take effect at HW `L` when offset `L` is a gap (no
//!   acknowledged produce returned `L` and no read returned a record at `L`: otherwise that
//!   record is at `L`) and some operation still to be linearized needs the log to grow past
//!   `L` (an acknowledged produce at an offset above `L`, or a read that returned a record at
//!   an offset `>= L`). This is sound: in any linearization, an unread record appended when
//!   nothing later needs it can be dropped together with every later unread one, and the rest
//!   stays legal (reads that found nothing still find nothing; reads that found a record read
//!   below `L`).
//!
//! Implementation notes: the linearized set is stored in the cache as a 128-bit Zobrist
//! fingerprint (XOR of a random word per op) instead of Lowe's bitset, so a cache entry is 20
//! bytes whatever the history length (a bitset of 10^5 ops would be 12.5 KB per entry). Two
//! distinct sets collide with probability about `entries² / 2^128`, which is negligible. Model
//! states are hash-consed into a trie of logs, so two states compare equal exactly when their
//! logs are equal.

use crate::history::{History, OpType, OpValue};
use crate::Verdict;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One operation on one partition, as the search sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogCall {
    /// Append `value`; `offset` is what the broker returned (`None` when unknown).
    Produce { value: u64, offset: Option<u64> },
    /// The record at `offset` was `value` (`None`: nothing, the offset is at or above HW).
    Read { offset: u64, value: Option<u64> },
}

/// An operation with its place in the history.
#[derive(Debug, Clone)]
pub struct LogOp {
    pub call: LogCall,
    /// History index of the invocation.
    pub invoke: u64,
    /// History index of the `ok` completion; `None` if the op may or may not have happened.
    pub complete: Option<u64>,
    /// Position of the invocation and completion in the history (orders events).
    call_pos: usize,
    ret_pos: Option<usize>,
}

impl LogOp {
    pub fn describe(&self) -> String {
        match &self.call {
            LogCall::Produce { value, offset } => match offset {
                Some(o) => format!("produce {value} -> offset {o}"),
                None => format!("produce {value} -> offset unknown"),
            },
            LogCall::Read {
                offset,
                value: Some(v),
            } => format!("read offset {offset} -> {v}"),
            LogCall::Read {
                offset,
                value: None,
            } => format!("read offset {offset} -> nothing"),
        }
    }
}

/// Splits the `log` workload's operations of a history by partition.
pub fn log_ops(history: &History) -> BTreeMap<u64, Vec<LogOp>> {
    let mut out: BTreeMap<u64, Vec<LogOp>> = BTreeMap::new();
    for (i, inv) in history.ops.iter().enumerate() {
        if !inv.is_client() || inv.kind != OpType::Invoke {
            continue;
        }
        let comp = history.pair[i].map(|j| (j, &history.ops[j]));
        let done_ok = comp.filter(|(_, c)| c.kind == OpType::Ok);
        let failed = comp.is_some_and(|(_, c)| c.kind == OpType::Fail);
        let (partition, call) = match (&inv.value, done_ok.map(|(_, c)| &c.value)) {
            (OpValue::Produce(p), Some(OpValue::Produce(c))) => (
                p.partition,
                LogCall::Produce {
                    value: p.value,
                    offset: c.offset,
                },
            ),
            (OpValue::Produce(p), _) if !failed => (
                p.partition,
                LogCall::Produce {
                    value: p.value,
                    offset: comp.and_then(|(_, c)| match &c.value {
                        OpValue::Produce(c) => c.offset,
                        _ => None,
                    }),
                },
            ),
            (OpValue::Read(r), Some(OpValue::Read(c))) => (
                r.partition,
                LogCall::Read {
                    offset: r.offset,
                    value: c.value,
                },
            ),
            _ => continue,
        };
        out.entry(partition).or_default().push(LogOp {
            call,
            invoke: inv.index,
            complete: done_ok.map(|(_, c)| c.index),
            call_pos: i,
            ret_pos: done_ok.map(|(j, _)| j),
        });
    }
    out
}

/// The operation the search could not linearize after its longest linearizable prefix.
#[derive(Debug, Clone, Serialize)]
pub struct Illegal {
    pub invoke_index: u64,
    pub complete_index: Option<u64>,
    pub op: String,
    /// The model's state after the prefix, when the op had to take effect.
    pub log_length: usize,
    pub explanation: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionResult {
    pub partition: u64,
    pub verdict: Verdict,
    pub ops: usize,
    pub indeterminate_ops: usize,
    /// Invocation indices of the longest linearizable prefix found, in linearization order
    /// (only when invalid).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub linearized_prefix: Vec<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_illegal: Option<Illegal>,
    /// Configurations memoised (Lowe's cache size).
    pub configurations: usize,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LinReport {
    pub verdict: Verdict,
    pub partitions: Vec<PartitionResult>,
}

/// splitmix64: a deterministic source for Zobrist words.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hash-consed logs: a state id names one exact list of records.
struct LogTrie {
    children: HashMap<(u32, u64), u32>,
    next: u32,
}

impl LogTrie {
    fn child(&mut self, parent: u32, value: u64) -> u32 {
        let next = &mut self.next;
        *self.children.entry((parent, value)).or_insert_with(|| {
            *next += 1;
            *next
        })
    }
}

/// Doubly linked list of call/return events in history order (Wing & Gong's "entries").
struct Events {
    /// Event `2*op` is op's call, `2*op+1` its return. `NIL` ends the list.
    next: Vec<u32>,
    prev: Vec<u32>,
    head: u32,
}

const NIL: u32 = u32::MAX;

impl Events {
    /// Only ops under `Rule::Model` are events; indeterminate produces are tried just in time.
    fn new(ops: &[LogOp], rule: &[Rule]) -> Events {
        Events::from_positions(
            ops.len(),
            ops.iter()
                .enumerate()
                .filter(|(i, _)| matches!(rule[*i], Rule::Model))
                .map(|(i, op)| (i, op.call_pos, op.ret_pos)),
        )
    }

    /// Events of `ops` ops, given (op, call position, return position) of those that take part.
    fn from_positions(
        ops: usize,
        positions: impl Iterator<Item = (usize, usize, Option<usize>)>,
    ) -> Events {
        let mut evs: Vec<(usize, u32)> = Vec::with_capacity(ops * 2);
        for (i, call_pos, ret_pos) in positions {
            evs.push((call_pos, 2 * i as u32));
            if let Some(r) = ret_pos {
                evs.push((r, 2 * i as u32 + 1));
            }
        }
        evs.sort_unstable();
        let n = ops * 2;
        let mut next = vec![NIL; n];
        let mut prev = vec![NIL; n];
        for w in evs.windows(2) {
            next[w[0].1 as usize] = w[1].1;
            prev[w[1].1 as usize] = w[0].1;
        }
        Events {
            next,
            prev,
            head: evs.first().map_or(NIL, |e| e.1),
        }
    }

    fn unlink(&mut self, e: u32) {
        let (p, n) = (self.prev[e as usize], self.next[e as usize]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n != NIL {
            self.prev[n as usize] = p;
        }
    }

    /// Re-inserts `e` where it was; valid in LIFO order of unlinks.
    fn relink(&mut self, e: u32) {
        let (p, n) = (self.prev[e as usize], self.next[e as usize]);
        if p == NIL {
            self.head = e;
        } else {
            self.next[p as usize] = e;
        }
        if n != NIL {
            self.prev[n as usize] = e;
        }
    }
}

/// How the search treats an op, derived from the whole partition before searching.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// Acknowledged produce or ok read: legal per the model.
    Model,
    /// Indeterminate produce whose record was read at this offset.
    PinnedAt(u64),
    /// Indeterminate produce nobody read: only to fill a needed offset.
    Filler,
}

/// The HW an op needs the log to grow beyond (see the module doc), if any.
fn need(call: &LogCall, required: bool) -> Option<u64> {
    match *call {
        LogCall::Produce {
            offset: Some(o), ..
        } if required => Some(o),
        LogCall::Read {
            offset,
            value: Some(_),
        } => Some(offset + 1),
        _ => None,
    }
}

/// Offsets some acknowledged produce returned or some read found a record at.
fn claimed_offsets(ops: &[LogOp]) -> HashSet<u64> {
    ops.iter()
        .filter_map(|op| match op.call {
            LogCall::Produce {
                offset: Some(o), ..
            } if op.ret_pos.is_some() => Some(o),
            LogCall::Read {
                offset,
                value: Some(_),
            } => Some(offset),
            _ => None,
        })
        .collect()
}

fn rules(ops: &[LogOp]) -> Vec<Rule> {
    let mut read_at: HashMap<u64, u64> = HashMap::new();
    for op in ops {
        if let LogCall::Read {
            offset,
            value: Some(v),
        } = op.call
        {
            let e = read_at.entry(v).or_insert(offset);
            *e = (*e).min(offset);
        }
    }
    ops.iter()
        .map(|op| match op.call {
            LogCall::Produce { value, .. } if op.ret_pos.is_none() => read_at
                .get(&value)
                .map_or(Rule::Filler, |&o| Rule::PinnedAt(o)),
            _ => Rule::Model,
        })
        .collect()
}

/// Counts of the needs of ops not yet linearized.
#[derive(Default)]
struct Needs(BTreeMap<u64, u32>);

impl Needs {
    fn add(&mut self, n: Option<u64>) {
        if let Some(n) = n {
            *self.0.entry(n).or_insert(0) += 1;
        }
    }
    fn remove(&mut self, n: Option<u64>) {
        if let Some(n) = n {
            if let Some(c) = self.0.get_mut(&n) {
                *c -= 1;
                if *c == 0 {
                    self.0.remove(&n);
                }
            }
        }
    }
    /// Whether something still needs the log to grow beyond `hw`.
    fn beyond(&self, hw: u64) -> bool {
        self.0.range(hw + 1..).next().is_some()
    }
}

/// Why a call cannot take effect in the current state, or `None` if it can.
fn illegal_reason(call: &LogCall, log: &[u64]) -> Option<String> {
    let hw = log.len() as u64;
    match *call {
        LogCall::Produce {
            offset: Some(o), ..
        } if o != hw => Some(format!(
            "the log's next offset (HW) is {hw}, not the returned offset {o}"
        )),
        LogCall::Produce { .. } => None,
        LogCall::Read {
            offset,
            value: Some(v),
        } => match log.get(offset as usize) {
            Some(&x) if x == v => None,
            Some(&x) => Some(format!("offset {offset} holds {x}, not {v}")),
            None => Some(format!(
                "offset {offset} is at or above the HW {hw}: nothing can be read there yet"
            )),
        },
        LogCall::Read {
            offset,
            value: None,
        } => (offset < hw).then(|| {
            format!(
                "offset {offset} is below the HW {hw} and holds {}, yet the read found nothing",
                log[offset as usize]
            )
        }),
    }
}

enum Outcome {
    Linearizable,
    /// Prefix (op positions in linearization order) and the op that could not follow it.
    Not {
        prefix: Vec<u32>,
        blocker: u32,
    },
    TimedOut,
}

struct Search {
    configurations: usize,
    outcome: Outcome,
}

/// Where the search continues after undoing a step.
#[derive(Clone, Copy)]
enum Resume {
    /// After this op's call event in the event list.
    Main,
    /// At candidate `index + 1` of the indeterminate candidates before return event `ret`.
    Extra { ret: u32, index: usize },
}

struct Frame {
    op: u32,
    prev_state: u32,
    appended: bool,
    node: u32,
    resume: Resume,
}

/// Record appended to the model for unread indeterminate produces: they are interchangeable.
const FILLER: u64 = u64::MAX;

/// The mutable state of one search.
struct Walk<'a> {
    ops: &'a [LogOp],
    zobrist: Vec<u128>,
    needs_of: Vec<Option<u64>>,
    needs: Needs,
    events: Events,
    done: Vec<bool>,
    /// Unlinearized unread indeterminate produces by call position.
    fillers: std::collections::BTreeSet<(usize, u32)>,
    rule: Vec<Rule>,
    trie: LogTrie,
    cache: HashSet<(u128, u32)>,
    log: Vec<u64>,
    state: u32,
    fingerprint: u128,
    stack: Vec<Frame>,
    nodes: Vec<(u32, u32)>,
    remaining_required: usize,
}

impl Walk<'_> {
    /// Linearizes `op` now if the model allows it and the configuration is new.
    fn try_lift(&mut self, op: u32, resume: Resume) -> bool {
        let o = &self.ops[op as usize];
        if illegal_reason(&o.call, &self.log).is_some() {
            return false;
        }
        let (new_state, record) = match (o.call.clone(), self.rule[op as usize]) {
            (LogCall::Produce { .. }, Rule::Filler) => {
                (self.trie.child(self.state, FILLER), Some(FILLER))
            }
            (LogCall::Produce { value, .. }, _) => {
                (self.trie.child(self.state, value), Some(value))
            }
            (LogCall::Read { .. }, _) => (self.state, None),
        };
        let fp = self.fingerprint ^ self.zobrist[op as usize];
        if !self.cache.insert((fp, new_state)) {
            return false;
        }
        let parent = self.stack.last().map_or(NIL, |f| f.node);
        self.nodes.push((op, parent));
        self.stack.push(Frame {
            op,
            prev_state: self.state,
            appended: record.is_some(),
            node: self.nodes.len() as u32 - 1,
            resume,
        });
        if let Some(r) = record {
            self.log.push(r);
        }
        self.state = new_state;
        self.fingerprint = fp;
        self.needs.remove(self.needs_of[op as usize]);
        self.done[op as usize] = true;
        match self.rule[op as usize] {
            Rule::Model => {
                self.events.unlink(2 * op);
                if o.ret_pos.is_some() {
                    self.events.unlink(2 * op + 1);
                    self.remaining_required -= 1;
                }
            }
            Rule::Filler => {
                self.fillers.remove(&(o.call_pos, op));
            }
            Rule::PinnedAt(_) => {}
        }
        true
    }

    /// Undoes the last step; returns it.
    fn undo(&mut self) -> Option<Frame> {
        let f = self.stack.pop()?;
        let op = f.op;
        if f.appended {
            self.log.pop();
        }
        self.state = f.prev_state;
        self.fingerprint ^= self.zobrist[op as usize];
        self.needs.add(self.needs_of[op as usize]);
        self.done[op as usize] = false;
        let o = &self.ops[op as usize];
        match self.rule[op as usize] {
            Rule::Model => {
                if o.ret_pos.is_some() {
                    self.events.relink(2 * op + 1);
                    self.remaining_required += 1;
                }
                self.events.relink(2 * op);
            }
            Rule::Filler => {
                self.fillers.insert((o.call_pos, op));
            }
            Rule::PinnedAt(_) => {}
        }
        Some(f)
    }
}

/// Indeterminate produces that may take effect now, before the return at history position
/// `ret_pos`: those pinned at the current HW, then the earliest-invoked filler if the HW is a
/// gap that a later op needs filled (any filler would do; the earliest is available whenever
/// a later one is, so trying it alone loses no linearization).
fn extra_candidates(
    w: &Walk<'_>,
    pinned_at: &HashMap<u64, Vec<u32>>,
    claimed: &HashSet<u64>,
    ret_pos: usize,
) -> Vec<u32> {
    let hw = w.log.len() as u64;
    let mut out: Vec<u32> = pinned_at
        .get(&hw)
        .into_iter()
        .flatten()
        .copied()
        .filter(|&op| !w.done[op as usize] && w.ops[op as usize].call_pos < ret_pos)
        .collect();
    if !claimed.contains(&hw) && w.needs.beyond(hw) {
        if let Some(&(pos, op)) = w.fillers.first() {
            if pos < ret_pos {
                out.push(op);
            }
        }
    }
    out
}

/// Wing & Gong's search with Lowe's cache over one partition's ops.
fn search(ops: &[LogOp], deadline: Instant) -> Search {
    let n = ops.len();
    let mut seed = 0x6b63_6865_636b_u64; // fixed: results are reproducible
    let zobrist: Vec<u128> = (0..n)
        .map(|_| (u128::from(splitmix(&mut seed)) << 64) | u128::from(splitmix(&mut seed)))
        .collect();
    let rule = rules(ops);
    let claimed = claimed_offsets(ops);
    let needs_of: Vec<Option<u64>> = ops
        .iter()
        .map(|o| need(&o.call, o.ret_pos.is_some()))
        .collect();
    let mut needs = Needs::default();
    for &n in &needs_of {
        needs.add(n);
    }
    let mut pinned_at: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut fillers = std::collections::BTreeSet::new();
    for (i, r) in rule.iter().enumerate() {
        match *r {
            Rule::PinnedAt(o) => pinned_at.entry(o).or_default().push(i as u32),
            Rule::Filler => {
                fillers.insert((ops[i].call_pos, i as u32));
            }
            Rule::Model => {}
        }
    }
    let mut w = Walk {
        ops,
        zobrist,
        needs_of,
        needs,
        events: Events::new(ops, &rule),
        done: vec![false; n],
        fillers,
        rule,
        trie: LogTrie {
            children: HashMap::new(),
            next: 0,
        },
        cache: HashSet::new(),
        log: Vec::new(),
        state: 0,
        fingerprint: 0,
        stack: Vec::new(),
        nodes: Vec::new(),
        remaining_required: ops.iter().filter(|o| o.ret_pos.is_some()).count(),
    };
    // (depth, prefix node or NIL, blocker op) of the deepest dead end.
    let mut best: Option<(usize, u32, u32)> = None;
    // The cursor: an event of the main list, or the indeterminate candidates before a return.
    let mut entry = w.events.head;
    let mut extra: Option<(u32, usize)> = None;
    let mut steps: u64 = 0;
    loop {
        if w.remaining_required == 0 {
            return Search {
                configurations: w.cache.len(),
                outcome: Outcome::Linearizable,
            };
        }
        steps += 1;
        if steps & 4095 == 0 && Instant::now() >= deadline {
            return Search {
                configurations: w.cache.len(),
                outcome: Outcome::TimedOut,
            };
        }
        if extra.is_none() && entry != NIL && entry & 1 == 0 {
            let op = entry / 2;
            entry = if w.try_lift(op, Resume::Main) {
                w.events.head
            } else {
                w.events.next[entry as usize]
            };
            continue;
        }
        // At a return: the op returning here must already be linearized. First try the
        // indeterminate produces that could make room for it.
        let (ret, start) = extra.take().unwrap_or((entry, 0));
        if ret != NIL {
            let ret_pos = ops[(ret / 2) as usize].ret_pos.unwrap_or(usize::MAX);
            let cands = extra_candidates(&w, &pinned_at, &claimed, ret_pos);
            let lifted = cands
                .iter()
                .enumerate()
                .skip(start)
                .any(|(index, &op)| w.try_lift(op, Resume::Extra { ret, index }));
            if lifted {
                entry = w.events.head;
                continue;
            }
            if !matches!(best, Some(b) if w.stack.len() <= b.0) {
                let node = w.stack.last().map_or(NIL, |f| f.node);
                best = Some((w.stack.len(), node, ret / 2));
            }
        }
        let Some(frame) = w.undo() else {
            let (_, node, blocker) = best.unwrap_or((0, NIL, 0));
            return Search {
                configurations: w.cache.len(),
                outcome: Outcome::Not {
                    prefix: unwind(&w.nodes, node),
                    blocker,
                },
            };
        };
        match frame.resume {
            Resume::Main => entry = w.events.next[2 * frame.op as usize],
            Resume::Extra { ret, index } => extra = Some((ret, index + 1)),
        }
    }
}

fn unwind(nodes: &[(u32, u32)], mut node: u32) -> Vec<u32> {
    let mut out = Vec::new();
    while node != NIL {
        let (op, parent) = nodes[node as usize];
        out.push(op);
        node = parent;
    }
    out.reverse();
    out
}

/// Replays a prefix on the model to explain why `blocker` cannot follow it.
fn explain(ops: &[LogOp], prefix: &[u32], blocker: u32) -> Illegal {
    let mut log = Vec::new();
    for &p in prefix {
        if let LogCall::Produce { value, .. } = ops[p as usize].call {
            log.push(value);
        }
    }
    let op = &ops[blocker as usize];
    let why = illegal_reason(&op.call, &log).unwrap_or_else(|| {
        "it is legal here, but every order that takes it now fails later (see the prefix)"
            .to_string()
    });
    Illegal {
        invoke_index: op.invoke,
        complete_index: op.complete,
        op: op.describe(),
        log_length: log.len(),
        explanation: format!(
            "after the {} linearized ops, {} must take effect before it returns, but {why}",
            prefix.len(),
            op.describe()
        ),
    }
}

/// Checks one partition.
pub fn check_partition(partition: u64, ops: &[LogOp], deadline: Instant) -> PartitionResult {
    let start = Instant::now();
    let s = search(ops, deadline);
    let mut r = PartitionResult {
        partition,
        verdict: Verdict::Valid,
        ops: ops.len(),
        indeterminate_ops: ops.iter().filter(|o| o.ret_pos.is_none()).count(),
        linearized_prefix: Vec::new(),
        first_illegal: None,
        configurations: s.configurations,
        seconds: 0.0,
    };
    match s.outcome {
        Outcome::Linearizable => {}
        Outcome::TimedOut => r.verdict = Verdict::Unknown,
        Outcome::Not { prefix, blocker } => {
            r.verdict = Verdict::Invalid;
            r.first_illegal = Some(explain(ops, &prefix, blocker));
            r.linearized_prefix = prefix.iter().map(|&p| ops[p as usize].invoke).collect();
        }
    }
    r.seconds = start.elapsed().as_secs_f64();
    r
}

/// Checks every partition of the `log` workload in parallel (`threads` workers, at least 1),
/// giving up with `unknown` on any partition still searching after `time_limit`.
pub fn check(history: &History, time_limit: Duration, threads: usize) -> LinReport {
    let parts: Vec<(u64, Vec<LogOp>)> = log_ops(history).into_iter().collect();
    let deadline = Instant::now() + time_limit;
    let next = AtomicUsize::new(0);
    let workers = threads.clamp(1, parts.len().max(1));
    let mut results: Vec<PartitionResult> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((p, ops)) = parts.get(i) else { break };
                        mine.push(check_partition(*p, ops, deadline));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("checker thread panicked"))
            .collect()
    });
    results.sort_by_key(|r| r.partition);
    LinReport {
        verdict: Verdict::combine(results.iter().map(|r| r.verdict)),
        partitions: results,
    }
}

// ---------------------------------------------------------------------------------------------
// Any sequential object: the same Wing & Gong search with Lowe's cache, for a model given as a
// trait. The log above keeps its own search because it linearizes indeterminate produces just
// in time, which only a log's offsets make possible; other objects (the ZooKeeper register)
// have few enough indeterminate ops that the plain search, which may linearize one anywhere
// after its call or never, stays fast.

/// The sequential specification of an object: its state and what each call does to it.
pub trait SequentialModel {
    /// A state of the object; the search memoises (linearized set, state) pairs.
    type State: Clone + Eq + std::hash::Hash;
    /// One operation with the result it returned.
    type Call;
    fn init(&self) -> Self::State;
    /// The state after `call` takes effect in `state`, or why it cannot (its result differs
    /// from what the object would return there).
    fn step(&self, state: &Self::State, call: &Self::Call) -> Result<Self::State, String>;
    fn describe_call(&self, call: &Self::Call) -> String;
    fn describe_state(&self, state: &Self::State) -> String;
}

/// An operation for [`check_model`]: its call and its place in the history.
#[derive(Debug, Clone)]
pub struct ModelOp<C> {
    pub call: C,
    /// History index of the invocation.
    pub invoke: u64,
    /// History index of the `ok` (or definite `fail`) completion; `None` if the op may or
    /// may not have happened.
    pub complete: Option<u64>,
    /// Positions of the invocation and the completion in the history.
    pub call_pos: usize,
    pub ret_pos: Option<usize>,
}

/// Why an op could not follow the longest linearizable prefix, in the model's terms.
#[derive(Debug, Clone, Serialize)]
pub struct ModelIllegal {
    pub invoke_index: u64,
    pub complete_index: Option<u64>,
    pub op: String,
    /// The object's state after the prefix.
    pub state: String,
    pub explanation: String,
}

/// The verdict on one object (one key) of a history.
#[derive(Debug, Clone, Serialize)]
pub struct ModelResult {
    pub key: u64,
    pub verdict: Verdict,
    pub ops: usize,
    pub indeterminate_ops: usize,
    /// Invocation indices of the longest linearizable prefix found (only when invalid).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub linearized_prefix: Vec<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_illegal: Option<ModelIllegal>,
    pub configurations: usize,
    pub seconds: f64,
}

struct ModelFrame<S> {
    op: u32,
    prev_state: S,
    node: u32,
}

fn search_model<M: SequentialModel>(
    model: &M,
    ops: &[ModelOp<M::Call>],
    deadline: Instant,
) -> Search {
    let n = ops.len();
    let mut seed = 0x6b63_6865_636b_u64;
    let zobrist: Vec<u128> = (0..n)
        .map(|_| (u128::from(splitmix(&mut seed)) << 64) | u128::from(splitmix(&mut seed)))
        .collect();
    let mut events = Events::from_positions(
        n,
        ops.iter()
            .enumerate()
            .map(|(i, o)| (i, o.call_pos, o.ret_pos)),
    );
    let mut remaining_required = ops.iter().filter(|o| o.ret_pos.is_some()).count();
    let mut state = model.init();
    let mut fingerprint = 0u128;
    let mut cache: HashSet<(u128, M::State)> = HashSet::new();
    let mut stack: Vec<ModelFrame<M::State>> = Vec::new();
    let mut nodes: Vec<(u32, u32)> = Vec::new();
    let mut best: Option<(usize, u32, u32)> = None;
    let mut entry = events.head;
    let mut steps: u64 = 0;
    loop {
        if remaining_required == 0 {
            return Search {
                configurations: cache.len(),
                outcome: Outcome::Linearizable,
            };
        }
        steps += 1;
        if steps & 4095 == 0 && Instant::now() >= deadline {
            return Search {
                configurations: cache.len(),
                outcome: Outcome::TimedOut,
            };
        }
        if entry != NIL && entry & 1 == 0 {
            let op = entry / 2;
            let o = &ops[op as usize];
            let lifted = match model.step(&state, &o.call) {
                Ok(next) => {
                    let fp = fingerprint ^ zobrist[op as usize];
                    if cache.insert((fp, next.clone())) {
                        let parent = stack.last().map_or(NIL, |f| f.node);
                        nodes.push((op, parent));
                        stack.push(ModelFrame {
                            op,
                            prev_state: std::mem::replace(&mut state, next),
                            node: nodes.len() as u32 - 1,
                        });
                        fingerprint = fp;
                        events.unlink(2 * op);
                        if o.ret_pos.is_some() {
                            events.unlink(2 * op + 1);
                            remaining_required -= 1;
                        }
                        true
                    } else {
                        false
                    }
                }
                Err(_) => false,
            };
            entry = if lifted {
                events.head
            } else {
                events.next[entry as usize]
            };
            continue;
        }
        // At a return (every remaining call before it tried): backtrack.
        if entry != NIL && !matches!(best, Some(b) if stack.len() <= b.0) {
            let node = stack.last().map_or(NIL, |f| f.node);
            best = Some((stack.len(), node, entry / 2));
        }
        let Some(frame) = stack.pop() else {
            let (_, node, blocker) = best.unwrap_or((0, NIL, 0));
            return Search {
                configurations: cache.len(),
                outcome: Outcome::Not {
                    prefix: unwind(&nodes, node),
                    blocker,
                },
            };
        };
        let op = frame.op;
        state = frame.prev_state;
        fingerprint ^= zobrist[op as usize];
        if ops[op as usize].ret_pos.is_some() {
            events.relink(2 * op + 1);
            remaining_required += 1;
        }
        events.relink(2 * op);
        entry = events.next[2 * op as usize];
    }
}

/// Checks that `ops` (one object's operations) are linearizable with respect to `model`.
pub fn check_model<M: SequentialModel>(
    model: &M,
    key: u64,
    ops: &[ModelOp<M::Call>],
    deadline: Instant,
) -> ModelResult {
    let start = Instant::now();
    let s = search_model(model, ops, deadline);
    let mut r = ModelResult {
        key,
        verdict: Verdict::Valid,
        ops: ops.len(),
        indeterminate_ops: ops.iter().filter(|o| o.ret_pos.is_none()).count(),
        linearized_prefix: Vec::new(),
        first_illegal: None,
        configurations: s.configurations,
        seconds: 0.0,
    };
    match s.outcome {
        Outcome::Linearizable => {}
        Outcome::TimedOut => r.verdict = Verdict::Unknown,
        Outcome::Not { prefix, blocker } => {
            r.verdict = Verdict::Invalid;
            let mut state = model.init();
            for &p in &prefix {
                state = model
                    .step(&state, &ops[p as usize].call)
                    .expect("the prefix was linearized step by step");
            }
            let op = &ops[blocker as usize];
            let why = model.step(&state, &op.call).err().unwrap_or_else(|| {
                "it is legal here, but every order that takes it now fails later (see the prefix)"
                    .to_string()
            });
            let call = model.describe_call(&op.call);
            r.first_illegal = Some(ModelIllegal {
                invoke_index: op.invoke,
                complete_index: op.complete,
                op: call.clone(),
                state: model.describe_state(&state),
                explanation: format!(
                    "after the {} linearized ops, {call} must take effect before it returns, but {why}",
                    prefix.len()
                ),
            });
            r.linearized_prefix = prefix.iter().map(|&p| ops[p as usize].invoke).collect();
        }
    }
    r.seconds = start.elapsed().as_secs_f64();
    r
}
