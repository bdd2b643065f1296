//! The log linearizability checker: valid concurrent histories pass, known non-linearizable
//! ones fail with the right first illegal operation, and histories of a real concurrent
//! execution of an in-memory log always pass while injected violations never do.

mod common;

use common::hist;
use kcheck_harness::history::{History, OpType, OpValue};
use kcheck_harness::linear::{check, log_ops, LinReport};
use kcheck_harness::sim::{log_history, SimConfig};
use kcheck_harness::Verdict;
use proptest::prelude::*;
use std::time::Duration;

fn lin(h: &History) -> LinReport {
    check(h, Duration::from_secs(30), 2)
}

const P0: &str = "{\"partition\":0,\"value\":";

fn produce(v: u64) -> String {
    format!("{P0}{v}}}")
}
fn produced(v: u64, o: u64) -> String {
    format!("{P0}{v},\"offset\":{o}}}")
}
fn read(o: u64) -> String {
    format!("{{\"partition\":0,\"offset\":{o}}}")
}
fn read_ok(o: u64, v: Option<u64>) -> String {
    let v = v.map_or("null".to_string(), |v| v.to_string());
    format!("{{\"partition\":0,\"offset\":{o},\"value\":{v}}}")
}

#[test]
fn stale_read_after_acknowledged_produce_is_not_linearizable() {
    let h = hist(&[
        ("0", "invoke", "produce", &produce(7)),
        ("0", "ok", "produce", &produced(7, 0)),
        ("1", "invoke", "read", &read(0)),
        ("1", "ok", "read", &read_ok(0, None)),
    ]);
    let r = lin(&h);
    assert_eq!(r.verdict, Verdict::Invalid);
    let p = &r.partitions[0];
    assert_eq!(
        p.linearized_prefix,
        vec![0],
        "produce 7 is the longest prefix"
    );
    let bad = p.first_illegal.as_ref().expect("an illegal op");
    assert_eq!(bad.invoke_index, 2);
    assert_eq!(bad.complete_index, Some(3));
    assert!(
        bad.explanation.contains("below the HW"),
        "{}",
        bad.explanation
    );
}

#[test]
fn two_acknowledged_produces_at_one_offset_are_not_linearizable() {
    let h = hist(&[
        ("0", "invoke", "produce", &produce(1)),
        ("1", "invoke", "produce", &produce(2)),
        ("0", "ok", "produce", &produced(1, 0)),
        ("1", "ok", "produce", &produced(2, 0)),
    ]);
    assert_eq!(lin(&h).verdict, Verdict::Invalid);
}

#[test]
fn reading_a_record_before_it_was_produced_is_not_linearizable() {
    let h = hist(&[
        ("1", "invoke", "read", &read(0)),
        ("1", "ok", "read", &read_ok(0, Some(5))),
        ("0", "invoke", "produce", &produce(5)),
        ("0", "ok", "produce", &produced(5, 0)),
    ]);
    let r = lin(&h);
    assert_eq!(r.verdict, Verdict::Invalid);
    assert_eq!(
        r.partitions[0].first_illegal.as_ref().unwrap().invoke_index,
        0
    );
}

#[test]
fn offsets_against_real_time_order_are_not_linearizable() {
    let h = hist(&[
        ("0", "invoke", "produce", &produce(1)),
        ("0", "ok", "produce", &produced(1, 1)),
        ("1", "invoke", "produce", &produce(2)),
        ("1", "ok", "produce", &produced(2, 0)),
    ]);
    assert_eq!(lin(&h).verdict, Verdict::Invalid);
}

#[test]
fn an_offset_nobody_could_have_filled_is_not_linearizable() {
    let h = hist(&[
        ("0", "invoke", "produce", &produce(1)),
        ("0", "ok", "produce", &produced(1, 1)),
    ]);
    assert_eq!(lin(&h).verdict, Verdict::Invalid);
}

#[test]
fn a_failed_produce_must_not_be_visible() {
    let h = hist(&[
        ("0", "invoke", "produce", &produce(9)),
        ("0", "fail", "produce", &produce(9)),
        ("1", "invoke", "read", &read(0)),
        ("1", "ok", "read", &read_ok(0, Some(9))),
    ]);
    assert_eq!(lin(&h).verdict, Verdict::Invalid);
}

#[test]
fn concurrent_read_may_see_a_produce_before_it_is_acknowledged() {
    let h = hist(&[
        ("0", "invoke", "produce", &produce(3)),
        ("1", "invoke", "read", &read(0)),
        ("1", "ok", "read", &read_ok(0, Some(3))),
        ("2", "invoke", "read", &read(0)),
        ("2", "ok", "read", &read_ok(0, Some(3))),
        ("0", "ok", "produce", &produced(3, 0)),
    ]);
    assert_eq!(lin(&h).verdict, Verdict::Valid);
}

#[test]
fn concurrent_read_may_miss_an_unacknowledged_produce() {
    let h = hist(&[
        ("0", "invoke", "produce", &produce(3)),
        ("1", "invoke", "read", &read(0)),
        ("1", "ok", "read", &read_ok(0, None)),
        ("0", "ok", "produce", &produced(3, 0)),
        ("1", "invoke", "read", &read(0)),
        ("1", "ok", "read", &read_ok(0, Some(3))),
    ]);
    assert_eq!(lin(&h).verdict, Verdict::Valid);
}

#[test]
fn indeterminate_produces_may_or_may_not_take_effect() {
    // Took effect: its record is read later, and it fills offset 0 for the next produce.
    let took = hist(&[
        ("0", "invoke", "produce", &produce(1)),
        ("0", "info", "produce", &produce(1)),
        ("1", "invoke", "produce", &produce(2)),
        ("1", "ok", "produce", &produced(2, 1)),
        ("2", "invoke", "read", &read(0)),
        ("2", "ok", "read", &read_ok(0, Some(1))),
    ]);
    assert_eq!(lin(&took).verdict, Verdict::Valid);
    // Did not take effect: the next produce gets offset 0 and nothing else is there.
    let lost = hist(&[
        ("0", "invoke", "produce", &produce(1)),
        ("0", "info", "produce", &produce(1)),
        ("1", "invoke", "produce", &produce(2)),
        ("1", "ok", "produce", &produced(2, 0)),
        ("2", "invoke", "read", &read(1)),
        ("2", "ok", "read", &read_ok(1, None)),
    ]);
    assert_eq!(lin(&lost).verdict, Verdict::Valid);
    // But it cannot take effect before it was invoked.
    let early = hist(&[
        ("2", "invoke", "read", &read(0)),
        ("2", "ok", "read", &read_ok(0, Some(1))),
        ("0", "invoke", "produce", &produce(1)),
        ("0", "info", "produce", &produce(1)),
    ]);
    assert_eq!(lin(&early).verdict, Verdict::Invalid);
}

#[test]
fn partitions_are_checked_independently() {
    let h = hist(&[
        ("0", "invoke", "produce", &produce(1)),
        ("0", "ok", "produce", &produced(1, 0)),
        ("1", "invoke", "produce", "{\"partition\":1,\"value\":2}"),
        (
            "1",
            "ok",
            "produce",
            "{\"partition\":1,\"value\":2,\"offset\":0}",
        ),
        ("1", "invoke", "read", "{\"partition\":1,\"offset\":0}"),
        (
            "1",
            "ok",
            "read",
            "{\"partition\":1,\"offset\":0,\"value\":null}",
        ),
    ]);
    let r = lin(&h);
    assert_eq!(r.verdict, Verdict::Invalid);
    let verdicts: Vec<_> = r
        .partitions
        .iter()
        .map(|p| (p.partition, p.verdict))
        .collect();
    assert_eq!(verdicts, vec![(0, Verdict::Valid), (1, Verdict::Invalid)]);
}

#[test]
fn time_limit_yields_unknown_not_a_verdict() {
    let h = log_history(&SimConfig {
        seed: 3,
        ops: 20_000,
        partitions: 1,
        concurrency: 8,
        ..SimConfig::default()
    });
    let r = check(&h, Duration::ZERO, 1);
    assert_eq!(r.verdict, Verdict::Unknown);
    assert_eq!(lin(&h).verdict, Verdict::Valid, "with time it is valid");
}

/// Turns the `nth` eligible ok read into one that returns nothing, choosing a read invoked
/// after the produce of that offset was acknowledged (so "nothing" is a stale read).
fn inject_stale_read(h: &History, nth: usize) -> Option<History> {
    let mut acked_at: Vec<(u64, u64, usize)> = Vec::new(); // (partition, offset, completion pos)
    for (i, op) in h.ops.iter().enumerate() {
        if let (OpType::Ok, OpValue::Produce(p)) = (op.kind, &op.value) {
            acked_at.push((p.partition, p.offset?, i));
        }
    }
    let mut seen = 0;
    for (i, op) in h.ops.iter().enumerate() {
        let (OpType::Ok, OpValue::Read(r)) = (op.kind, &op.value) else {
            continue;
        };
        if r.value.is_none() {
            continue;
        }
        let inv = h.pair[i]?;
        let stale = acked_at
            .iter()
            .any(|&(p, o, at)| p == r.partition && o == r.offset && at < inv);
        if stale {
            if seen == nth {
                let mut ops = h.ops.clone();
                if let OpValue::Read(r) = &mut ops[i].value {
                    r.value = None;
                }
                return Some(History::from_ops(ops).expect("same shape"));
            }
            seen += 1;
        }
    }
    None
}

/// Swaps the offsets of two acknowledged produces of one partition that did not overlap.
fn inject_offset_swap(h: &History) -> Option<History> {
    let prods: Vec<(usize, usize, u64)> = h
        .ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match (op.kind, &op.value) {
            (OpType::Ok, OpValue::Produce(p)) => Some((h.pair[i]?, i, p.partition)),
            _ => None,
        })
        .collect();
    for a in &prods {
        if let Some(b) = prods.iter().find(|b| b.2 == a.2 && b.0 > a.1) {
            let mut ops = h.ops.clone();
            let oa = match &ops[a.1].value {
                OpValue::Produce(p) => p.offset,
                _ => None,
            };
            let ob = match &ops[b.1].value {
                OpValue::Produce(p) => p.offset,
                _ => None,
            };
            if let OpValue::Produce(p) = &mut ops[a.1].value {
                p.offset = ob;
            }
            if let OpValue::Produce(p) = &mut ops[b.1].value {
                p.offset = oa;
            }
            return Some(History::from_ops(ops).expect("same shape"));
        }
    }
    None
}

#[test]
fn injections_find_sites_in_simulated_histories() {
    let h = log_history(&SimConfig::default());
    assert!(inject_stale_read(&h, 0).is_some());
    assert!(inject_offset_swap(&h).is_some());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn real_concurrent_executions_are_linearizable(
        seed in any::<u64>(),
        ops in 1usize..400,
        concurrency in 1usize..10,
        partitions in 1u64..4,
        crash in 0.0f64..0.2,
    ) {
        let h = log_history(&SimConfig { seed, ops, concurrency, partitions, crash, ..SimConfig::default() });
        let r = lin(&h);
        prop_assert_eq!(r.verdict, Verdict::Valid, "{:?}", r.partitions.iter().find(|p| p.first_illegal.is_some()));
    }

    #[test]
    fn injected_stale_reads_and_offset_swaps_are_caught(
        seed in any::<u64>(),
        nth in 0usize..5,
        concurrency in 1usize..8,
    ) {
        let h = log_history(&SimConfig { seed, ops: 300, concurrency, partitions: 2, ..SimConfig::default() });
        if let Some(bad) = inject_stale_read(&h, nth) {
            prop_assert_eq!(lin(&bad).verdict, Verdict::Invalid);
        }
        if let Some(bad) = inject_offset_swap(&h) {
            prop_assert_eq!(lin(&bad).verdict, Verdict::Invalid);
        }
    }

    #[test]
    fn one_thread_or_many_give_the_same_verdicts(seed in any::<u64>()) {
        let h = log_history(&SimConfig { seed, ops: 300, partitions: 4, ..SimConfig::default() });
        let bad = inject_stale_read(&h, 0).unwrap_or(h);
        let one = check(&bad, Duration::from_secs(30), 1);
        let many = check(&bad, Duration::from_secs(30), 4);
        let v1: Vec<_> = one.partitions.iter().map(|p| (p.partition, p.verdict)).collect();
        let v4: Vec<_> = many.partitions.iter().map(|p| (p.partition, p.verdict)).collect();
        prop_assert_eq!(v1, v4);
    }
}

#[test]
fn log_ops_drop_failed_produces_and_unfinished_reads() {
    let h = hist(&[
        ("0", "invoke", "produce", &produce(1)),
        ("0", "fail", "produce", &produce(1)),
        ("1", "invoke", "read", &read(0)),
        ("1", "info", "read", &read(0)),
        ("2", "invoke", "produce", &produce(2)),
    ]);
    let ops = log_ops(&h);
    assert_eq!(
        ops[&0].len(),
        1,
        "only the unfinished produce may have happened"
    );
    assert_eq!(ops[&0][0].complete, None);
}

/// Brute force: is there an order of all acknowledged ops and some of the indeterminate ones
/// that respects real time and the log's sequential specification?
fn oracle(ops: &[kcheck_harness::linear::LogOp]) -> bool {
    use kcheck_harness::linear::LogCall;
    fn go(ops: &[kcheck_harness::linear::LogOp], used: &mut Vec<bool>, log: &mut Vec<u64>) -> bool {
        let required_left = ops
            .iter()
            .zip(used.iter())
            .any(|(o, u)| !u && o.complete.is_some());
        if !required_left {
            return true;
        }
        for i in 0..ops.len() {
            if used[i] {
                continue;
            }
            // i may go next only if no unused op returned before i was invoked.
            let blocked = ops
                .iter()
                .zip(used.iter())
                .any(|(o, u)| !u && o.complete.is_some_and(|c| c < ops[i].invoke));
            if blocked {
                continue;
            }
            let hw = log.len() as u64;
            let ok = match ops[i].call {
                LogCall::Produce { offset, .. } => !matches!(offset, Some(o) if o != hw),
                LogCall::Read { offset, value } => log.get(offset as usize).copied() == value,
            };
            if !ok {
                continue;
            }
            used[i] = true;
            if let LogCall::Produce { value, .. } = ops[i].call {
                log.push(value);
            }
            let found = go(ops, used, log);
            if matches!(ops[i].call, LogCall::Produce { .. }) {
                log.pop();
            }
            used[i] = false;
            if found {
                return true;
            }
        }
        false
    }
    go(ops, &mut vec![false; ops.len()], &mut Vec::new())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// The search (with its just-in-time handling of indeterminate produces) agrees with brute
    /// force on small histories, valid ones and randomly corrupted ones.
    #[test]
    fn search_agrees_with_brute_force(
        seed in any::<u64>(),
        ops in 1usize..8,
        concurrency in 1usize..4,
        corrupt in proptest::collection::vec((0usize..16, 0u64..4, proptest::option::of(0u64..6)), 0..3),
    ) {
        let h = log_history(&SimConfig { seed, ops, concurrency, partitions: 1, crash: 0.4, fail: 0.1, nemesis: false });
        let mut raw = h.ops.clone();
        for (at, offset, value) in corrupt {
            let oks: Vec<usize> = (0..raw.len()).filter(|&i| raw[i].kind == OpType::Ok).collect();
            if oks.is_empty() { break; }
            let i = oks[at % oks.len()];
            match &mut raw[i].value {
                OpValue::Read(r) => { r.offset = offset; r.value = value; }
                OpValue::Produce(p) => p.offset = Some(offset),
                _ => {}
            }
        }
        // Reads keep the invocation's offset in step with the completion's.
        for i in 0..raw.len() {
            if let (OpType::Ok, OpValue::Read(r)) = (raw[i].kind, raw[i].value.clone()) {
                let inv = h.pair[i].expect("paired");
                if let OpValue::Read(ri) = &mut raw[inv].value { ri.offset = r.offset; }
            }
        }
        let h = History::from_ops(raw).expect("same shape");
        let parts = log_ops(&h);
        let expected = !parts.contains_key(&0) || oracle(&parts[&0]);
        let got = lin(&h).verdict;
        prop_assert_eq!(got == Verdict::Valid, expected, "{:?}", h.ops);
    }
}

/// The brute-force comparison is not vacuous: corrupted small histories are often invalid.
#[test]
fn brute_force_comparison_sees_both_verdicts() {
    let (mut valid, mut invalid) = (0, 0);
    for seed in 0..300u64 {
        let h = log_history(&SimConfig {
            seed,
            ops: 6,
            concurrency: 3,
            partitions: 1,
            crash: 0.4,
            fail: 0.1,
            nemesis: false,
        });
        let mut raw = h.ops.clone();
        let mut rng = kcheck_harness::sim::Rng::new(seed);
        if let Some(i) = (0..raw.len()).find(|&i| raw[i].kind == OpType::Ok && rng.chance(0.5)) {
            match &mut raw[i].value {
                OpValue::Read(r) => r.value = r.value.map_or(Some(1), |_| None),
                OpValue::Produce(p) => p.offset = Some(rng.below(3)),
                _ => {}
            }
        }
        let h = History::from_ops(raw).unwrap();
        let parts = log_ops(&h);
        let expected = !parts.contains_key(&0) || oracle(&parts[&0]);
        assert_eq!(lin(&h).verdict == Verdict::Valid, expected, "seed {seed}");
        if expected {
            valid += 1
        } else {
            invalid += 1
        }
    }
    assert!(
        valid > 50 && invalid > 50,
        "valid {valid}, invalid {invalid}"
    );
}

/// The `log` workload's read semantics (`run::read_outcome`): a fetch that finds nothing at an
/// offset completes `fail` (a new leader's HW may lag what was committed, so the empty answer
/// proves nothing), and the history stays linearizable; a fetch that finds a *different*
/// record at an acknowledged offset is still a violation.
#[test]
fn an_empty_read_is_no_information_but_a_different_record_at_a_committed_offset_fails() {
    use kcheck_harness::run::read_outcome;
    assert!(
        read_outcome(0, &[]).is_err(),
        "nothing at 0: no information"
    );
    assert!(read_outcome(2, &[(0, 7), (1, 9)]).is_err());
    assert_eq!(read_outcome(1, &[(0, 7), (1, 9)]), Ok(9));

    // Produce 7 acknowledged at 0; a read right after a failover finds nothing (recorded
    // `fail` by the workload), a later one finds 7: valid.
    let after_failover = |v: u64| {
        hist(&[
            ("0", "invoke", "produce", &produce(7)),
            ("0", "ok", "produce", &produced(7, 0)),
            ("1", "invoke", "read", &read(0)),
            ("1", "fail", "read", &read(0)),
            ("2", "invoke", "read", &read(0)),
            ("2", "ok", "read", &read_ok(0, Some(v))),
        ])
    };
    assert_eq!(lin(&after_failover(7)).verdict, Verdict::Valid);
    // The new leader lost record 7 and put 8 at offset 0: a violation, blamed on that read.
    let r = lin(&after_failover(8));
    assert_eq!(r.verdict, Verdict::Invalid);
    let bad = r.partitions[0]
        .first_illegal
        .as_ref()
        .expect("an illegal op");
    assert_eq!(bad.invoke_index, 4, "{}", bad.explanation);
}
