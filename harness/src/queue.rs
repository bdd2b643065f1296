//! Kafka queue anomalies (the `queue` workload), with the names and meanings of Jepsen's
//! `jepsen.tests.kafka` checker so that results compare with Jepsen's Kafka and Redpanda
//! analyses.
//!
//! Each key is one topic-partition. From every `ok`/`info` send with a known offset and every
//! `ok` poll we build the key's *version order*: the offsets that hold a value, in order, with
//! gaps removed (transaction markers take offsets that no consumer sees, so gaps are legal).
//! A value's *index* is its position in that order. Every check compares indices, never raw
//! offsets.

use crate::history::{History, Mop, OpType, OpValue, Process};
use crate::Verdict;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Every anomaly this checker reports: (name, meaning). Jepsen's names; `phantom` is kcheck's
/// addition for a polled value that no operation ever sent.
pub const ANOMALIES: &[(&str, &str)] = &[
    ("lost-write", "an acknowledged write (or an indeterminate one that was seen) sits below the highest polled index of its key, yet no poll ever returned it"),
    ("duplicate", "one value appears at more than one offset of a key"),
    ("inconsistent-offsets", "sends and polls disagree on the value at one offset of a key"),
    ("poll-skip", "two successive polls of one consumer (without reassignment) skipped over values of a key"),
    ("nonmonotonic-poll", "a consumer's poll started at or before where its previous poll of the key ended"),
    ("nonmonotonic-send", "a producer's send landed at or before its previous send to the same key"),
    ("int-poll-skip", "within one poll, two consecutive records of a key skipped over values"),
    ("int-nonmonotonic-poll", "within one poll, records of a key went backwards or repeated"),
    ("int-send-skip", "within one transaction, two consecutive sends to a key were not adjacent in the log"),
    ("int-nonmonotonic-send", "within one transaction, sends to a key landed out of order"),
    ("G1a", "aborted read: a poll returned a value whose send failed (was aborted)"),
    ("unseen", "an acknowledged write above every polled index of its key that no poll ever returned, even after the final reads"),
    ("phantom", "a poll returned a value that no operation ever sent (kcheck addition)"),
];

/// One instance of an anomaly.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Example {
    pub key: u64,
    /// History indices of the operations involved (completions when there is one).
    pub ops: Vec<u64>,
    pub values: Vec<u64>,
    pub description: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AnomalyReport {
    pub meaning: &'static str,
    pub count: usize,
    pub examples: Vec<Example>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueReport {
    pub verdict: Verdict,
    /// Only the anomalies found; every name in `checked` was looked for.
    pub anomalies: BTreeMap<&'static str, AnomalyReport>,
    pub checked: Vec<&'static str>,
    pub keys: usize,
    pub sends: usize,
    pub polls: usize,
    /// Keys whose final reads did not complete (the harness's `final-reads-incomplete` op,
    /// e.g. a partition KIP-966 keeps offline after every ISR member crashed uncleanly), and
    /// how many acknowledged writes to them no poll returned: `unseen` there is undecided
    /// (unavailable or lost cannot be told apart), so the verdict is `unknown`, not `valid`.
    pub unseen_undecided: BTreeMap<u64, usize>,
}

impl QueueReport {
    pub fn count(&self, name: &str) -> usize {
        self.anomalies.get(name).map_or(0, |a| a.count)
    }
}

/// A send/poll/txn op with its outcome.
struct Txn {
    /// History index of the completion, or of the invocation if none.
    at: u64,
    kind: OpType,
    /// (key, value, offset) in the order sent.
    writes: Vec<(u64, u64, Option<u64>)>,
    /// Key -> (offset, value) in the order polled; only for `ok`.
    reads: BTreeMap<u64, Vec<(u64, u64)>>,
}

/// Per key: the version order.
#[derive(Default)]
struct KeyOrder {
    /// offset -> values seen there.
    offsets: BTreeMap<u64, BTreeSet<u64>>,
    /// offset -> index in the version order (filled by `index`).
    index_of_offset: HashMap<u64, usize>,
    /// value -> smallest index it appears at.
    index_of_value: HashMap<u64, usize>,
    /// index -> values there.
    by_index: Vec<Vec<u64>>,
}

impl KeyOrder {
    fn index(&mut self) {
        for (i, (o, vs)) in self.offsets.iter().enumerate() {
            self.index_of_offset.insert(*o, i);
            for v in vs {
                self.index_of_value.entry(*v).or_insert(i);
            }
            self.by_index.push(vs.iter().copied().collect());
        }
    }
}

struct Collector {
    max_examples: usize,
    found: BTreeMap<&'static str, AnomalyReport>,
}

impl Collector {
    fn add(&mut self, name: &'static str, ex: Example) {
        let meaning = ANOMALIES
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, m)| m);
        let r = self.found.entry(name).or_insert_with(|| AnomalyReport {
            meaning,
            count: 0,
            examples: Vec::new(),
        });
        r.count += 1;
        if r.examples.len() < self.max_examples {
            r.examples.push(ex);
        }
    }
}

fn collect_txns(history: &History) -> Vec<Txn> {
    let mut out = Vec::new();
    for (inv, comp) in history.client_pairs() {
        if !matches!(inv.f.as_str(), "send" | "poll" | "txn") {
            continue;
        }
        let kind = comp.map_or(OpType::Info, |c| c.kind);
        // Completions carry the results; fall back to the invocation's micro-ops.
        let mops = match comp {
            Some(c) if !c.mops().is_empty() => c.mops(),
            _ => inv.mops(),
        };
        let mut t = Txn {
            at: comp.map_or(inv.index, |c| c.index),
            kind,
            writes: Vec::new(),
            reads: BTreeMap::new(),
        };
        for m in mops {
            match m {
                Mop::Send { key, value } => t.writes.push((*key, *value, None)),
                Mop::Sent { key, offset, value } => t.writes.push((*key, *value, *offset)),
                Mop::Polled(map) if kind == OpType::Ok => {
                    for (k, recs) in map {
                        t.reads.entry(*k).or_default().extend(recs.iter().copied());
                    }
                }
                _ => {}
            }
        }
        out.push(t);
    }
    out
}

/// Runs every queue check. `max_examples` bounds the examples kept per anomaly.
pub fn check(history: &History, max_examples: usize) -> QueueReport {
    let txns = collect_txns(history);
    let mut c = Collector {
        max_examples,
        found: BTreeMap::new(),
    };

    // Writers: (key, value) -> txn position.
    let mut writer: HashMap<(u64, u64), usize> = HashMap::new();
    // Whether some write of a txn was read (an indeterminate txn that was seen committed).
    let mut txn_seen = vec![false; txns.len()];
    let mut orders: BTreeMap<u64, KeyOrder> = BTreeMap::new();
    // (key, offset) -> ops that put or saw a value there, for inconsistent-offsets examples.
    let mut witnesses: HashMap<(u64, u64), Vec<(u64, u64)>> = HashMap::new();
    let mut value_offsets: HashMap<(u64, u64), BTreeSet<u64>> = HashMap::new();
    let mut record = |k: u64, o: u64, v: u64, at: u64, orders: &mut BTreeMap<u64, KeyOrder>| {
        orders
            .entry(k)
            .or_default()
            .offsets
            .entry(o)
            .or_default()
            .insert(v);
        let w = witnesses.entry((k, o)).or_default();
        if w.len() < 8 && !w.iter().any(|x| x.0 == v) {
            w.push((v, at));
        }
        value_offsets.entry((k, v)).or_default().insert(o);
    };
    let (mut sends, mut polls) = (0, 0);
    for (i, t) in txns.iter().enumerate() {
        for &(k, v, o) in &t.writes {
            sends += 1;
            writer.entry((k, v)).or_insert(i);
            orders.entry(k).or_default();
            if let (Some(o), OpType::Ok | OpType::Info) = (o, t.kind) {
                record(k, o, v, t.at, &mut orders);
            }
        }
        if !t.reads.is_empty() {
            polls += 1;
        }
        for (&k, recs) in &t.reads {
            for &(o, v) in recs {
                record(k, o, v, t.at, &mut orders);
            }
        }
    }
    for t in &txns {
        for (&k, recs) in &t.reads {
            for &(_, v) in recs {
                if let Some(&w) = writer.get(&(k, v)) {
                    txn_seen[w] = true;
                }
            }
        }
    }
    for o in orders.values_mut() {
        o.index();
    }

    // inconsistent-offsets and duplicate.
    for (&k, ord) in &orders {
        for (&o, vs) in &ord.offsets {
            if vs.len() > 1 {
                let w = &witnesses[&(k, o)];
                c.add(
                    "inconsistent-offsets",
                    Example {
                        key: k,
                        ops: w.iter().map(|x| x.1).collect(),
                        values: vs.iter().copied().collect(),
                        description: format!("offset {o} of key {k} holds {vs:?}"),
                    },
                );
            }
        }
    }
    let mut dups: Vec<(&(u64, u64), &BTreeSet<u64>)> = value_offsets
        .iter()
        .filter(|(_, os)| os.len() > 1)
        .collect();
    dups.sort();
    for ((k, v), os) in dups {
        let ops = os
            .iter()
            .filter_map(|o| witnesses[&(*k, *o)].iter().find(|x| x.0 == *v).map(|x| x.1))
            .collect();
        c.add(
            "duplicate",
            Example {
                key: *k,
                ops,
                values: vec![*v],
                description: format!("value {v} of key {k} is at offsets {os:?}"),
            },
        );
    }

    // Reads: which values were read, and the highest index read per key.
    let mut read: HashSet<(u64, u64)> = HashSet::new();
    let mut max_read: HashMap<u64, (usize, u64)> = HashMap::new();
    for t in &txns {
        for (&k, recs) in &t.reads {
            let ord = &orders[&k];
            for &(o, v) in recs {
                read.insert((k, v));
                let i = ord.index_of_offset[&o];
                let m = max_read.entry(k).or_insert((i, t.at));
                if i > m.0 {
                    *m = (i, t.at);
                }
                match writer.get(&(k, v)) {
                    Some(&w) if txns[w].kind == OpType::Fail => c.add(
                        "G1a",
                        Example {
                            key: k,
                            ops: vec![txns[w].at, t.at],
                            values: vec![v],
                            description: format!(
                                "op {} polled {v} from key {k}, but its send (op {}) failed",
                                t.at, txns[w].at
                            ),
                        },
                    ),
                    Some(_) => {}
                    None => c.add(
                        "phantom",
                        Example {
                            key: k,
                            ops: vec![t.at],
                            values: vec![v],
                            description: format!(
                                "op {} polled {v} at offset {o} of key {k}, which nobody sent",
                                t.at
                            ),
                        },
                    ),
                }
            }
        }
    }

    // Keys whose final reads the harness could not complete: unseen writes there are undecided.
    let unfinished: BTreeSet<u64> = history
        .ops
        .iter()
        .filter(|op| !op.is_client() && op.f == FINAL_READS_INCOMPLETE)
        .filter_map(|op| match &op.value {
            OpValue::Other(v) => v.get("keys").and_then(|k| k.as_array()).cloned(),
            _ => None,
        })
        .flatten()
        .filter_map(|k| k.as_u64())
        .collect();
    let mut unseen_undecided: BTreeMap<u64, usize> = BTreeMap::new();

    // lost-write and unseen.
    let must_have_committed = |w: usize| match txns[w].kind {
        OpType::Ok => true,
        OpType::Info => txn_seen[w],
        _ => false,
    };
    for (&k, ord) in &orders {
        let bound = max_read.get(&k).copied();
        if let Some((bound, reader)) = bound {
            for (i, vs) in ord.by_index.iter().enumerate().take(bound + 1) {
                for &v in vs {
                    if read.contains(&(k, v)) {
                        continue;
                    }
                    let Some(&w) = writer.get(&(k, v)) else {
                        continue;
                    };
                    if must_have_committed(w) {
                        c.add(
                            "lost-write",
                            Example {
                                key: k,
                                ops: vec![txns[w].at, reader],
                                values: vec![v],
                                description: format!(
                                    "value {v} (index {i}) of key {k}, sent by op {}, was never polled, though op {reader} polled index {bound}",
                                    txns[w].at
                                ),
                            },
                        );
                    }
                }
            }
        }
    }
    for t in &txns {
        if t.kind != OpType::Ok {
            continue;
        }
        for &(k, v, _) in &t.writes {
            if read.contains(&(k, v)) {
                continue;
            }
            let ord = &orders[&k];
            let idx = ord.index_of_value.get(&v).copied();
            let bound = max_read.get(&k).map(|m| m.0);
            let below = matches!((idx, bound), (Some(i), Some(b)) if i <= b);
            if !below && unfinished.contains(&k) {
                *unseen_undecided.entry(k).or_default() += 1;
            } else if !below {
                c.add(
                    "unseen",
                    Example {
                        key: k,
                        ops: vec![t.at],
                        values: vec![v],
                        description: format!(
                            "value {v} of key {k}, acknowledged by op {}, was never polled",
                            t.at
                        ),
                    },
                );
            }
        }
    }

    // Internal contiguity of polls and sends.
    for t in &txns {
        for (&k, recs) in &t.reads {
            let ord = &orders[&k];
            for w in recs.windows(2) {
                let (i1, i2) = (ord.index_of_offset[&w[0].0], ord.index_of_offset[&w[1].0]);
                contiguity(
                    &mut c,
                    "int-poll",
                    k,
                    i1,
                    i2,
                    [w[0].1, w[1].1],
                    vec![t.at],
                    ord,
                );
            }
        }
        if matches!(t.kind, OpType::Ok | OpType::Info) {
            let mut by_key: BTreeMap<u64, Vec<(usize, u64)>> = BTreeMap::new();
            for &(k, v, o) in &t.writes {
                let ord = &orders[&k];
                let idx = match o {
                    Some(o) => ord.index_of_offset.get(&o).copied(),
                    None => ord.index_of_value.get(&v).copied(),
                };
                if let Some(i) = idx {
                    by_key.entry(k).or_default().push((i, v));
                }
            }
            for (k, ws) in by_key {
                for w in ws.windows(2) {
                    let ord = &orders[&k];
                    contiguity(
                        &mut c,
                        "int-send",
                        k,
                        w[0].0,
                        w[1].0,
                        [w[0].1, w[1].1],
                        vec![t.at],
                        ord,
                    );
                }
            }
        }
    }

    // Across a process's successive operations.
    per_process(history, &txns, &orders, &mut c);

    let verdict = if !c.found.is_empty() {
        Verdict::Invalid
    } else if !unseen_undecided.is_empty() {
        Verdict::Unknown
    } else {
        Verdict::Valid
    };
    QueueReport {
        verdict,
        anomalies: c.found,
        checked: ANOMALIES.iter().map(|(n, _)| *n).collect(),
        keys: orders.len(),
        sends,
        polls,
        unseen_undecided,
    }
}

/// The nemesis-process op a run records when its final reads could not reach some keys' HW
/// (value `{"keys": [...]}`): without them, `unseen` on those keys is not evidence.
pub const FINAL_READS_INCOMPLETE: &str = "final-reads-incomplete";

/// Reports `<prefix>-skip` or `<prefix>-nonmonotonic-...` for a pair of indices that should be
/// adjacent (`i2 == i1 + 1`).
#[allow(clippy::too_many_arguments)]
fn contiguity(
    c: &mut Collector,
    prefix: &str,
    k: u64,
    i1: usize,
    i2: usize,
    values: [u64; 2],
    ops: Vec<u64>,
    ord: &KeyOrder,
) {
    let (skip, nonmono): (&'static str, &'static str) = match prefix {
        "int-poll" => ("int-poll-skip", "int-nonmonotonic-poll"),
        "int-send" => ("int-send-skip", "int-nonmonotonic-send"),
        "poll" => ("poll-skip", "nonmonotonic-poll"),
        _ => ("", "nonmonotonic-send"),
    };
    let delta = i2 as i64 - i1 as i64;
    if delta > 1 && !skip.is_empty() {
        let skipped: Vec<u64> = ord.by_index[i1 + 1..i2]
            .iter()
            .flatten()
            .copied()
            .take(16)
            .collect();
        c.add(
            skip,
            Example {
                key: k,
                ops,
                values: values.to_vec(),
                description: format!(
                    "key {k}: {} then {} skipped {} value(s), e.g. {skipped:?}",
                    values[0],
                    values[1],
                    delta - 1
                ),
            },
        );
    } else if delta < 1 {
        c.add(
            nonmono,
            Example {
                key: k,
                ops,
                values: values.to_vec(),
                description: format!(
                    "key {k}: {} (index {i1}) then {} (index {i2}) goes backwards or repeats",
                    values[0], values[1]
                ),
            },
        );
    }
}

/// poll-skip, nonmonotonic-poll and nonmonotonic-send: walk each process's operations in
/// order. An `assign`/`subscribe` keeps only the state of the keys still assigned, as a
/// consumer's position on other keys is reset.
fn per_process(
    history: &History,
    txns: &[Txn],
    orders: &BTreeMap<u64, KeyOrder>,
    c: &mut Collector,
) {
    let by_at: HashMap<u64, usize> = txns.iter().enumerate().map(|(i, t)| (t.at, i)).collect();
    // process -> key -> (last index, value, op)
    type Last = HashMap<u64, (usize, u64, u64)>;
    let mut last_read: HashMap<Process, Last> = HashMap::new();
    let mut last_sent: HashMap<Process, Last> = HashMap::new();
    for (i, op) in history.ops.iter().enumerate() {
        if !op.is_client() || op.kind == OpType::Invoke {
            continue;
        }
        match op.f.as_str() {
            "assign" | "subscribe" if op.kind != OpType::Fail => {
                let keys: HashSet<u64> = match (&op.value, history.pair[i]) {
                    (OpValue::Keys(k), _) => k.iter().copied().collect(),
                    (_, Some(j)) => match &history.ops[j].value {
                        OpValue::Keys(k) => k.iter().copied().collect(),
                        _ => HashSet::new(),
                    },
                    _ => HashSet::new(),
                };
                for m in [&mut last_read, &mut last_sent] {
                    if let Some(l) = m.get_mut(&op.process) {
                        l.retain(|k, _| keys.contains(k));
                    }
                }
            }
            "send" | "poll" | "txn" => {
                let Some(&ti) = by_at.get(&op.index) else {
                    continue;
                };
                let t = &txns[ti];
                if t.kind == OpType::Ok {
                    let lr = last_read.entry(op.process).or_default();
                    for (&k, recs) in &t.reads {
                        let ord = &orders[&k];
                        let (Some(first), Some(last)) = (recs.first(), recs.last()) else {
                            continue;
                        };
                        let fi = ord.index_of_offset[&first.0];
                        if let Some(&(li, lv, lop)) = lr.get(&k) {
                            contiguity(c, "poll", k, li, fi, [lv, first.1], vec![lop, t.at], ord);
                        }
                        lr.insert(k, (ord.index_of_offset[&last.0], last.1, t.at));
                    }
                }
                if matches!(t.kind, OpType::Ok | OpType::Info) {
                    let ls = last_sent.entry(op.process).or_default();
                    let mut firsts: BTreeMap<u64, (usize, u64)> = BTreeMap::new();
                    let mut lasts: BTreeMap<u64, (usize, u64)> = BTreeMap::new();
                    for &(k, v, o) in &t.writes {
                        let ord = &orders[&k];
                        let idx = match o {
                            Some(o) => ord.index_of_offset.get(&o).copied(),
                            None => ord.index_of_value.get(&v).copied(),
                        };
                        if let Some(i) = idx {
                            firsts.entry(k).or_insert((i, v));
                            lasts.insert(k, (i, v));
                        }
                    }
                    for (k, (fi, fv)) in firsts {
                        if let Some(&(li, lv, lop)) = ls.get(&k) {
                            contiguity(
                                c,
                                "send",
                                k,
                                li,
                                fi,
                                [lv, fv],
                                vec![lop, t.at],
                                &orders[&k],
                            );
                        }
                    }
                    for (k, (li, lv)) in lasts {
                        ls.insert(k, (li, lv, t.at));
                    }
                }
            }
            _ => {}
        }
    }
}
