//! The reassignment model: the correct protocol passes exhaustively (every replication
//! invariant, the reassignment invariants and the "can complete without further faults" check),
//! every bug flag is caught as a counterexample of the property it is documented to violate,
//! recorded traces replay, and random walks of the correct model never violate an invariant.

use kcheck_models::engine::{self, CheckOptions, Stop, Verdict};
use kcheck_models::reassignment::{self, Action, Reassignment, ReassignmentAction};
use kcheck_models::replication::{self, BrokerSet};
use kcheck_models::testkit::Suite;
use kcheck_models::{Config, KcheckModel, ModelDef, PropertyKind, Trace};
use proptest::prelude::*;
use std::collections::{HashSet, VecDeque};

fn suite() -> Suite {
    Suite::new("reassignment")
}

fn model() -> &'static dyn ModelDef {
    suite().model
}

fn config(bugs: &[&str], bounds: &[(&str, u32)]) -> Config {
    suite().config(bugs, bounds)
}

fn read_trace(flag: &str) -> Trace {
    suite().read_trace(flag)
}

#[test]
fn correct_protocol_passes_exhaustively_at_default_bounds() {
    suite().assert_passes_exhaustively(&[], Stop::FirstViolation, 100_000);
}

/// Check only the property a bug flag is documented to violate and return the length of its
/// shortest counterexample.
fn counterexample(bug: &str, bounds: &[(&str, u32)]) -> usize {
    let flag = model()
        .bug_flags()
        .iter()
        .find(|b| b.name == bug)
        .expect("known flag");
    let m = Reassignment::from_config(&config(&[bug], bounds));
    let properties: Vec<_> = Reassignment::named_properties()
        .into_iter()
        .filter(|p| p.name == flag.violates)
        .collect();
    assert_eq!(properties.len(), 1, "{bug} names a property of the model");
    let outcome = engine::check(
        &m,
        &properties,
        Reassignment::representative,
        &CheckOptions::default(),
        &|_| {},
    );
    match outcome.verdict(flag.violates) {
        Some(Verdict::Violated(path)) => {
            if let PropertyKind::Always(holds) = properties[0].kind {
                assert!(
                    !holds(&m, path.last_state()),
                    "the path ends in a violation"
                );
            }
            path.steps.len()
        }
        other => panic!(
            "{bug}: expected a counterexample of {}, got {other:?}",
            flag.violates
        ),
    }
}

#[test]
fn remove_before_caught_up_loses_committed_data() {
    // Produce m0, b1 fetches it twice, b2 stops (the HW reaches 1, m0 is acknowledged), the
    // admin moves the partition off b0 onto b3, and the controller completes at once, electing
    // b3, which has nothing.
    assert_eq!(counterexample("remove-before-caught-up", &[]), 6);
}

#[test]
fn leader_outside_target_leaves_the_leader_on_a_removed_broker() {
    assert_eq!(counterexample("leader-outside-target", &[]), 5);
}

#[test]
fn cancel_keeping_adding_replicas_in_the_isr_breaks_isr_subset_of_replicas() {
    assert_eq!(counterexample("cancel-keeps-adding-in-isr", &[]), 5);
}

#[test]
fn replace_from_grown_set_reports_completion_before_the_target_is_in_sync() {
    // {b0,b1,b2} -> {b0,b1,b3} replaced by {b0,b2,b3}: b3 is taken as an origin replica,
    // nothing is "adding", and the controller completes with b3 out of the ISR.
    assert_eq!(counterexample("replace-from-grown-set", &[]), 3);
}

#[test]
fn no_leader_move_cannot_complete_without_faults() {
    // AG EF needs the whole graph: small bounds keep this fast.
    let steps = counterexample("no-leader-move", &[("crashes", 0), ("requests", 1)]);
    assert_eq!(
        steps, 1,
        "the request that removes the leader is already stuck"
    );
}

#[test]
fn every_bug_flag_has_a_recorded_trace_that_replays() {
    suite().assert_traces_replay_to_their_violation();
}

/// Rebuild the last state of a recorded trace under `bugs`.
fn last_state(trace: &Trace, bugs: &[&str]) -> (Reassignment, reassignment::State) {
    let m = Reassignment::from_config(&config(bugs, &[]));
    let mut s = m.initial_state();
    for step in &trace.steps {
        let action: Action = serde_json::from_value(step.action.clone()).unwrap();
        s = stateright::Model::next_state(&m, &s, action).expect("the recorded step applies");
    }
    (m, s)
}

/// Whether a state with no running reassignment is reachable using only the actions the
/// `reassignment-can-complete` check allows (no crash, no new request).
fn can_complete_without_faults(m: &Reassignment, from: &reassignment::State) -> bool {
    let Some(via) = Reassignment::named_properties()
        .into_iter()
        .find_map(|p| match p.kind {
            PropertyKind::AlwaysCanReach { via, .. } => Some(via),
            _ => None,
        })
    else {
        panic!("the model declares reassignment-can-complete");
    };
    let mut seen = HashSet::new();
    let mut queue = VecDeque::from([from.clone()]);
    while let Some(s) = queue.pop_front() {
        if !s.reassigning() {
            return true;
        }
        let mut actions = Vec::new();
        stateright::Model::actions(m, &s, &mut actions);
        for a in actions.into_iter().filter(via) {
            if let Some(next) = stateright::Model::next_state(m, &s, a) {
                if seen.insert(next.clone()) {
                    queue.push_back(next);
                }
            }
        }
    }
    false
}

#[test]
fn stuck_trace_is_stuck_only_with_its_flag() {
    let trace = read_trace("no-leader-move");
    let (buggy, s) = last_state(&trace, &["no-leader-move"]);
    assert!(s.reassigning());
    assert!(!can_complete_without_faults(&buggy, &s));
    // The correct controller moves leadership into the target and completes from there.
    let (correct, s) = last_state(&trace, &[]);
    assert!(can_complete_without_faults(&correct, &s));
}

#[test]
fn replay_confirms_the_stuck_state_only_with_its_flag() {
    // Replay re-explores the last state of an always-can-reach counterexample: under the
    // correct controller the same request is not stuck.
    let mut trace = read_trace("no-leader-move");
    assert!(model()
        .replay(&trace)
        .unwrap()
        .violated
        .contains(&"reassignment-can-complete"));
    trace.bugs.clear();
    assert!(model().replay(&trace).unwrap().violated.is_empty());
}

#[test]
fn replay_without_the_bug_flag_rejects_the_trace() {
    // The correct controller does not complete before b3 joins the ISR.
    let mut trace = read_trace("remove-before-caught-up");
    trace.bugs.clear();
    let e = model().replay(&trace).unwrap_err();
    assert!(e.contains("step 6") && e.contains("not enabled"), "{e}");
}

#[test]
fn replay_detects_a_tampered_trace() {
    suite().assert_replay_detects_tampering("replace-from-grown-set", 0);
}

#[test]
fn replay_rejects_a_target_naming_an_unknown_broker() {
    let mut trace = read_trace("replace-from-grown-set");
    trace.steps[0].action["target"] = serde_json::json!([0, 1, 9]);
    let e = model().replay(&trace).unwrap_err();
    assert!(e.contains("step 1: not an action"), "{e}");
}

#[test]
fn symmetry_reduces_without_changing_verdicts() {
    suite()
        .assert_symmetry_keeps_verdicts(&[("crashes", 0), ("requests", 1)], Stop::FirstViolation);
}

#[test]
fn canonical_form_is_invariant_under_relabelling() {
    // Any relabelling of a reachable state has the same representative.
    let m = Reassignment::from_config(&config(&[], &[]));
    let mut s = m.initial_state();
    for a in [
        Action::Reassignment(ReassignmentAction::Reassign {
            target: BrokerSet::from_bits(0b1110),
            leader: 0,
        }),
        Action::Replication(replication::Action::Produce {
            acks: replication::Acks::All,
        }),
        Action::Replication(replication::Action::BecomeFollower { broker: 3 }),
        Action::Replication(replication::Action::Fetch { follower: 3 }),
    ] {
        s = stateright::Model::next_state(&m, &s, a).expect("enabled");
    }
    let perm = [2u8, 0, 3, 1];
    let relabelled = reassignment::State {
        replication: replication::permute(&s.replication, &perm),
        adding: s.adding.permute(&perm),
        removing: s.removing.permute(&perm),
        origin: s.origin.permute(&perm),
        target: s.target.permute(&perm),
        ..s.clone()
    };
    assert_ne!(relabelled, s);
    assert_eq!(m.canonical(&relabelled), m.canonical(&s));
}

#[test]
fn invariants_reject_hand_made_bad_states() {
    let m = Reassignment::from_config(&config(&[], &[]));
    let mut s = m.initial_state();
    assert!(reassignment::leader_in_replicas(&s));
    s.replication.partition.replicas = BrokerSet::from_bits(0b1110);
    assert!(
        !reassignment::leader_in_replicas(&s),
        "b0 leads, not a replica"
    );

    // Completed to {b1,b2,b3} from {b0,b1,b2}, but b3 (added) is not in the ISR.
    let mut s = m.initial_state();
    s.just_completed = true;
    s.origin = BrokerSet::from_bits(0b0111);
    s.target = BrokerSet::from_bits(0b1110);
    s.replication.partition.replicas = BrokerSet::from_bits(0b1110);
    s.replication.partition.leader = Some(1);
    s.replication.partition.isr = BrokerSet::from_bits(0b0110);
    assert!(!reassignment::completes_to_target(&s), "b3 out of the ISR");
    s.replication.partition.isr = BrokerSet::from_bits(0b1010);
    assert!(reassignment::completes_to_target(&s), "b2 kept may lag");
    s.replication.partition.replicas = BrokerSet::from_bits(0b1111);
    assert!(!reassignment::completes_to_target(&s), "b0 still assigned");
}

#[test]
fn crashes_interleave_with_every_reassignment_step() {
    // Every kind of reassignment step is enabled in some state where a broker is down, so
    // the exhaustive check covers crashes between (not only before) the steps.
    let m = Reassignment::from_config(&config(&[], &[]));
    let mut seen = HashSet::new();
    let mut kinds = HashSet::new();
    let mut queue = VecDeque::from([m.initial_state()]);
    while let Some(s) = queue.pop_front() {
        if seen.len() > 200_000 {
            break;
        }
        let mut actions = Vec::new();
        stateright::Model::actions(&m, &s, &mut actions);
        let down = s.replication.replicas.iter().any(|r| !r.alive);
        for a in actions {
            if let (true, Action::Reassignment(r)) = (down, a) {
                kinds.insert(std::mem::discriminant(&r));
            }
            if let Some(next) = stateright::Model::next_state(&m, &s, a) {
                if seen.insert(next.clone()) {
                    queue.push_back(next);
                }
            }
        }
    }
    assert_eq!(
        kinds.len(),
        3,
        "reassign, cancel and complete with a broker down"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn random_walks_of_the_correct_protocol_never_violate(seed in any::<u64>()) {
        let cfg = config(&[], &[("records", 3), ("epochs", 4), ("crashes", 4), ("requests", 3)]);
        if let Err(trace) = model().random_walk(&cfg, seed, 200) {
            panic!("random walk violated {}:\n{}", trace.property, trace.render());
        }
    }
}

#[test]
fn random_walks_find_a_bug() {
    // The same random walks do find violations when a bug flag is on: they are not vacuous.
    let cfg = config(
        &["cancel-keeps-adding-in-isr"],
        &[("records", 3), ("crashes", 4), ("requests", 3)],
    );
    let found = (0..2000u64).any(|seed| model().random_walk(&cfg, seed, 200).is_err());
    assert!(found);
}

#[test]
fn completion_can_leave_one_isr_member_and_no_elr() {
    // specs/reassignment.md, Findings: found by reassignment-can-complete at --epochs 3 before
    // partitions needing unclean recovery were exempted from its goal.
    let m = Reassignment::from_config(&config(&[], &[("epochs", 3)]));
    let steps = [
        r#"{"action":"produce","acks":"1"}"#,
        r#"{"action":"shrink-isr","follower":1}"#,
        r#"{"action":"handle-alter-partition"}"#,
        r#"{"action":"shrink-isr","follower":2}"#,
        r#"{"action":"handle-alter-partition"}"#,
        r#"{"action":"reassign","target":[1,2,3],"leader":0}"#,
        r#"{"action":"become-follower","broker":3}"#,
        r#"{"action":"expand-isr","follower":3}"#,
        r#"{"action":"handle-alter-partition"}"#,
        r#"{"action":"complete-reassignment","leader":3}"#,
        r#"{"action":"crash","broker":3,"clean":false,"flushed":0}"#,
        r#"{"action":"reassign","target":[0,1,3],"leader":0}"#,
    ];
    let mut s = m.initial_state();
    for (i, json) in steps.iter().enumerate() {
        let action: Action = serde_json::from_str(json).unwrap();
        let mut enabled = Vec::new();
        stateright::Model::actions(&m, &s, &mut enabled);
        assert!(
            enabled.contains(&action),
            "step {}: {json} is enabled",
            i + 1
        );
        s = stateright::Model::next_state(&m, &s, action).unwrap();
        if i == 9 {
            let p = &s.replication.partition;
            assert_eq!(
                p.isr,
                BrokerSet::single(3),
                "one ISR member after completion"
            );
            assert!(p.elr.is_empty(), "and nobody eligible besides it");
            assert!(reassignment::completes_to_target(&s));
        }
    }
    assert!(s.reassigning());
    assert!(reassignment::needs_unclean_recovery(&s));
    assert!(!can_complete_without_faults(&m, &s));
}
