//! The queue checker: histories of a real concurrent execution of an in-memory Kafka-like log
//! pass; each anomaly injected into such a history is reported under its own Jepsen name.

mod common;

use common::hist;
use kcheck_harness::history::{History, Mop, OpType, OpValue, Process};
use kcheck_harness::queue::{check, QueueReport, ANOMALIES};
use kcheck_harness::sim::{queue_history, SimConfig};
use kcheck_harness::Verdict;
use proptest::prelude::*;
use std::collections::HashMap;

fn cfg(seed: u64) -> SimConfig {
    SimConfig {
        seed,
        ops: 300,
        concurrency: 4,
        partitions: 3,
        ..SimConfig::default()
    }
}

fn polled(
    op: &mut kcheck_harness::history::Op,
) -> Option<&mut std::collections::BTreeMap<u64, Vec<(u64, u64)>>> {
    if op.kind != OpType::Ok {
        return None;
    }
    match &mut op.value {
        OpValue::Txn(m) => m.iter_mut().find_map(|m| match m {
            Mop::Polled(p) => Some(p),
            _ => None,
        }),
        _ => None,
    }
}

fn rebuild(ops: Vec<kcheck_harness::history::Op>) -> History {
    History::from_ops(ops).expect("injection keeps the history well-formed")
}

/// (key, value) -> (position of the completion, its type) for every send.
fn writers(h: &History) -> HashMap<(u64, u64), (usize, OpType)> {
    let mut out = HashMap::new();
    for (i, op) in h.ops.iter().enumerate() {
        if op.kind == OpType::Invoke || !op.is_client() {
            continue;
        }
        for m in op.mops() {
            if let Some(kv) = m.send() {
                out.insert(kv, (i, op.kind));
            }
        }
    }
    out
}

/// Every polled record: (op position, key, offset, value).
fn records(h: &History) -> Vec<(usize, u64, u64, u64)> {
    let mut out = Vec::new();
    for (i, op) in h.ops.iter().enumerate() {
        let mut op = op.clone();
        if let Some(p) = polled(&mut op) {
            for (k, recs) in p.iter() {
                out.extend(recs.iter().map(|&(o, v)| (i, *k, o, v)));
            }
        }
    }
    out
}

fn remove_value(h: &History, k: u64, v: u64) -> History {
    let mut ops = h.ops.clone();
    for op in &mut ops {
        if let Some(p) = polled(op) {
            if let Some(recs) = p.get_mut(&k) {
                recs.retain(|r| r.1 != v);
            }
        }
    }
    rebuild(ops)
}

/// The offset of value `v` of key `k` as the history says.
fn offset_of(h: &History, k: u64, v: u64) -> Option<u64> {
    records(h)
        .into_iter()
        .find(|r| r.1 == k && r.3 == v)
        .map(|r| r.2)
}

/// Moves `a` to `b`'s offset and `b` to `a`'s in every send and poll.
fn swap_values(h: &History, k: u64, a: u64, b: u64) -> Option<History> {
    let (oa, ob) = (offset_of(h, k, a)?, offset_of(h, k, b)?);
    let mut ops = h.ops.clone();
    for op in &mut ops {
        if let OpValue::Txn(mops) = &mut op.value {
            for m in mops.iter_mut() {
                match m {
                    Mop::Sent {
                        key,
                        offset: Some(o),
                        value,
                    } if *key == k => {
                        if *value == a {
                            *o = ob;
                        } else if *value == b {
                            *o = oa;
                        }
                    }
                    Mop::Polled(p) => {
                        for r in p.get_mut(&k).into_iter().flatten() {
                            if r.1 == a {
                                r.1 = b;
                            } else if r.1 == b {
                                r.1 = a;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Some(rebuild(ops))
}

fn lost_write(h: &History) -> Option<History> {
    let w = writers(h);
    let recs = records(h);
    let mut max: HashMap<u64, u64> = HashMap::new();
    for r in &recs {
        let m = max.entry(r.1).or_insert(r.2);
        *m = (*m).max(r.2);
    }
    let r = recs
        .iter()
        .find(|r| r.2 < max[&r.1] && w.get(&(r.1, r.3)).is_some_and(|x| x.1 == OpType::Ok))?;
    Some(remove_value(h, r.1, r.3))
}

fn unseen(h: &History) -> Option<History> {
    let w = writers(h);
    let recs = records(h);
    let top = recs
        .iter()
        .filter(|r| !recs.iter().any(|s| s.1 == r.1 && s.2 > r.2))
        .find(|r| w.get(&(r.1, r.3)).is_some_and(|x| x.1 == OpType::Ok))?;
    Some(remove_value(h, top.1, top.3))
}

fn duplicate(h: &History) -> Option<History> {
    let recs = records(h);
    let &(i, k, _, v) = recs.last()?;
    let top = recs.iter().filter(|r| r.1 == k).map(|r| r.2).max()?;
    let mut ops = h.ops.clone();
    polled(&mut ops[i])?.get_mut(&k)?.push((top + 1, v));
    Some(rebuild(ops))
}

fn inconsistent_offsets(h: &History) -> Option<History> {
    let recs = records(h);
    let mut ops = h.ops.clone();
    for op in &mut ops {
        if op.kind != OpType::Ok {
            continue;
        }
        if let OpValue::Txn(mops) = &mut op.value {
            for m in mops.iter_mut() {
                if let Mop::Sent {
                    key,
                    offset: Some(o),
                    value,
                } = m
                {
                    if let Some(other) = recs.iter().find(|r| r.1 == *key && r.3 != *value) {
                        *o = other.2;
                        return Some(rebuild(ops));
                    }
                }
            }
        }
    }
    None
}

/// Sites where a process polls key k in two successive ok polls (as the checker pairs them):
/// (previous op position, this op position, key).
fn successive_polls(h: &History) -> Vec<(usize, usize, u64)> {
    let mut last: HashMap<(Process, u64), usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, op) in h.ops.iter().enumerate() {
        if !op.is_client() || op.kind == OpType::Invoke {
            continue;
        }
        if let (OpValue::Keys(ks), OpType::Ok | OpType::Info) = (&op.value, op.kind) {
            last.retain(|(p, k), _| *p != op.process || ks.contains(k));
            continue;
        }
        let mut o = op.clone();
        if let Some(p) = polled(&mut o) {
            for (k, recs) in p.iter() {
                if recs.is_empty() {
                    continue;
                }
                if let Some(&prev) = last.get(&(op.process, *k)) {
                    out.push((prev, i, *k));
                }
                last.insert((op.process, *k), i);
            }
        }
    }
    out
}

fn poll_skip(h: &History) -> Option<History> {
    let mut ops = h.ops.clone();
    let &(_, i, k) = successive_polls(h)
        .iter()
        .find(|s| polled(&mut ops[s.1].clone()).is_some_and(|p| p[&s.2].len() >= 2))?;
    polled(&mut ops[i])?.get_mut(&k)?.remove(0);
    Some(rebuild(ops))
}

fn nonmonotonic_poll(h: &History) -> Option<History> {
    let mut ops = h.ops.clone();
    let &(prev, i, k) = successive_polls(h).first()?;
    let last = *polled(&mut ops[prev].clone())?.get(&k)?.last()?;
    polled(&mut ops[i])?.get_mut(&k)?.insert(0, last);
    Some(rebuild(ops))
}

fn int_poll(h: &History, skip: bool) -> Option<History> {
    let mut ops = h.ops.clone();
    for op in &mut ops {
        if let Some(p) = polled(op) {
            if let Some(recs) = p.values_mut().find(|r| r.len() >= 3) {
                if skip {
                    recs.remove(1);
                } else {
                    recs.swap(0, 1);
                }
                return Some(rebuild(ops));
            }
        }
    }
    None
}

/// An ok op with two successive sends (a, b) to one key, plus a value c of that key sent by
/// another op after b.
fn int_send_site(h: &History) -> Option<(u64, u64, u64, u64)> {
    for op in &h.ops {
        if op.kind != OpType::Ok {
            continue;
        }
        let sends: Vec<(u64, u64)> = op.mops().iter().filter_map(Mop::send).collect();
        for (x, s1) in sends.iter().enumerate() {
            if let Some(s2) = sends[x + 1..].iter().find(|s| s.0 == s1.0) {
                let k = s1.0;
                let o2 = offset_of(h, k, s2.1)?;
                let mine: Vec<u64> = sends.iter().filter(|s| s.0 == k).map(|s| s.1).collect();
                if let Some(c) = records(h)
                    .iter()
                    .find(|r| r.1 == k && r.2 > o2 && !mine.contains(&r.3))
                {
                    return Some((k, s1.1, s2.1, c.3));
                }
            }
        }
    }
    None
}

fn nonmonotonic_send(h: &History) -> Option<History> {
    let mut last: HashMap<(Process, u64), u64> = HashMap::new();
    for op in &h.ops {
        if !op.is_client() || op.kind == OpType::Invoke {
            continue;
        }
        if let OpValue::Keys(ks) = &op.value {
            last.retain(|(p, k), _| *p != op.process || ks.contains(k));
            continue;
        }
        if op.kind != OpType::Ok {
            continue;
        }
        let sends: Vec<(u64, u64)> = op.mops().iter().filter_map(Mop::send).collect();
        for (k, v) in &sends {
            if let Some(&prev) = last.get(&(op.process, *k)) {
                let first = sends.iter().find(|s| s.0 == *k).expect("present").1;
                if offset_of(h, *k, prev).is_some() && offset_of(h, *k, first).is_some() {
                    return swap_values(h, *k, prev, first);
                }
            }
            let _ = v;
        }
        for (k, v) in sends {
            last.insert((op.process, k), v);
        }
    }
    None
}

fn aborted_read(h: &History) -> Option<History> {
    let w = writers(h);
    let r = records(h)
        .into_iter()
        .find(|r| w.get(&(r.1, r.3)).is_some_and(|x| x.1 == OpType::Ok))?;
    let mut ops = h.ops.clone();
    ops[w[&(r.1, r.3)].0].kind = OpType::Fail;
    Some(rebuild(ops))
}

fn phantom(h: &History) -> Option<History> {
    let recs = records(h);
    let &(i, k, _, _) = recs.last()?;
    let top = recs.iter().filter(|r| r.1 == k).map(|r| r.2).max()?;
    let mut ops = h.ops.clone();
    polled(&mut ops[i])?.get_mut(&k)?.push((top + 1, 1 << 40));
    Some(rebuild(ops))
}

type Injection = fn(&History) -> Option<History>;

fn injections() -> Vec<(&'static str, Injection)> {
    vec![
        ("lost-write", lost_write),
        ("unseen", unseen),
        ("duplicate", duplicate),
        ("inconsistent-offsets", inconsistent_offsets),
        ("poll-skip", poll_skip),
        ("nonmonotonic-poll", nonmonotonic_poll),
        ("nonmonotonic-send", nonmonotonic_send),
        ("int-poll-skip", |h| int_poll(h, true)),
        ("int-nonmonotonic-poll", |h| int_poll(h, false)),
        ("int-send-skip", |h| {
            let (k, _, b, c) = int_send_site(h)?;
            swap_values(h, k, b, c)
        }),
        ("int-nonmonotonic-send", |h| {
            let (k, a, b, _) = int_send_site(h)?;
            swap_values(h, k, a, b)
        }),
        ("G1a", aborted_read),
        ("phantom", phantom),
    ]
}

fn describe(r: &QueueReport) -> String {
    r.anomalies
        .iter()
        .map(|(n, a)| format!("{n}: {:?}", a.examples.first().map(|e| &e.description)))
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn every_named_anomaly_has_an_injection() {
    let names: Vec<&str> = injections().iter().map(|i| i.0).collect();
    for (name, _) in ANOMALIES {
        assert!(names.contains(name), "no injection test for {name}");
    }
}

#[test]
fn each_injected_anomaly_is_reported_under_its_name() {
    for (name, inject) in injections() {
        let mut caught = 0;
        for seed in 0..20 {
            let h = queue_history(&cfg(seed));
            assert_eq!(check(&h, 4).verdict, Verdict::Valid, "seed {seed}");
            if let Some(bad) = inject(&h) {
                let r = check(&bad, 4);
                assert!(
                    r.count(name) > 0,
                    "seed {seed}: injected {name} but found {}",
                    describe(&r)
                );
                assert_eq!(r.verdict, Verdict::Invalid);
                let ex = &r.anomalies[name].examples[0];
                assert!(!ex.ops.is_empty(), "examples name their ops");
                caught += 1;
            }
        }
        assert!(
            caught >= 5,
            "{name}: injection site found in only {caught}/20 histories"
        );
    }
}

#[test]
fn examples_are_bounded_but_counts_are_not() {
    let h = queue_history(&cfg(1));
    let mut ops = h.ops.clone();
    for op in &mut ops {
        if let Some(p) = polled(op) {
            for recs in p.values_mut() {
                recs.reverse();
            }
        }
    }
    let r = check(&rebuild(ops), 2);
    let a = &r.anomalies["int-nonmonotonic-poll"];
    assert!(a.count > 2);
    assert_eq!(a.examples.len(), 2);
}

#[test]
fn a_hand_written_aborted_read_and_lost_write() {
    let h = hist(&[
        ("0", "invoke", "send", "[[\"send\",1,10]]"),
        ("0", "fail", "send", "[[\"send\",1,10]]"),
        ("0", "invoke", "send", "[[\"send\",1,11],[\"send\",1,12]]"),
        (
            "0",
            "ok",
            "send",
            "[[\"send\",1,[0,11]],[\"send\",1,[1,12]]]",
        ),
        ("1", "invoke", "poll", "[[\"poll\"]]"),
        ("1", "ok", "poll", "[[\"poll\",{\"1\":[[1,12],[2,10]]}]]"),
        ("\"nemesis\"", "info", "kill", "\"n1\""),
    ]);
    let r = check(&h, 4);
    assert_eq!(r.count("G1a"), 1);
    assert_eq!(
        r.count("lost-write"),
        1,
        "11 sits below the polled 12 and was never read"
    );
    assert_eq!(r.anomalies["lost-write"].examples[0].values, vec![11]);
    assert_eq!(r.anomalies["lost-write"].examples[0].ops, vec![3, 5]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn real_concurrent_executions_have_no_anomaly(
        seed in any::<u64>(),
        ops in 0usize..400,
        concurrency in 1usize..8,
        partitions in 1u64..5,
        crash in 0.0f64..0.2,
        fail in 0.0f64..0.2,
    ) {
        let h = queue_history(&SimConfig { seed, ops, concurrency, partitions, crash, fail, nemesis: true });
        let r = check(&h, 4);
        prop_assert_eq!(r.verdict, Verdict::Valid, "{}", describe(&r));
    }

    #[test]
    fn injections_are_caught_on_random_histories(seed in any::<u64>(), which in 0usize..13) {
        let (name, inject) = injections()[which];
        let h = queue_history(&SimConfig { seed, ..cfg(0) });
        if let Some(bad) = inject(&h) {
            let r = check(&bad, 4);
            prop_assert!(r.count(name) > 0, "injected {} but found {}", name, describe(&r));
        }
    }
}

/// `unseen` needs the final reads: on a key the run says it could not finish reading
/// (`final-reads-incomplete`, e.g. a partition left offline), an acknowledged write nobody
/// polled is undecided (verdict unknown), never valid; on other keys it stays `unseen`.
#[test]
fn unseen_writes_on_a_key_whose_final_reads_did_not_complete_are_undecided() {
    use kcheck_harness::history::History;
    use kcheck_harness::Verdict;
    let rows = |marker: &str| {
        let mut text = String::new();
        let ops = [
            r#""type":"invoke","process":0,"f":"send","value":[["send",1,7]]"#.to_string(),
            r#""type":"ok","process":0,"f":"send","value":[["send",1,[0,7]]]"#.to_string(),
            format!(r#""type":"info","process":"nemesis","f":"{marker}","value":{{"keys":[1]}}"#),
        ];
        for (i, op) in ops.iter().enumerate() {
            text.push_str(&format!("{{\"index\":{i},\"time\":{i},{op}}}\n"));
        }
        History::read(text.as_bytes()).unwrap()
    };
    let r = kcheck_harness::queue::check(&rows(kcheck_harness::queue::FINAL_READS_INCOMPLETE), 8);
    assert_eq!(r.verdict, Verdict::Unknown);
    assert_eq!(r.count("unseen"), 0);
    assert_eq!(r.unseen_undecided.get(&1), Some(&1));
    // Any other nemesis op changes nothing: the write is unseen.
    let r = kcheck_harness::queue::check(&rows("heal"), 8);
    assert_eq!(r.verdict, Verdict::Invalid);
    assert_eq!(r.count("unseen"), 1);
}
