//! The consumer-offsets model: the correct group protocol passes exhaustively, every bug flag is
//! caught as a counterexample of the property it is documented to violate (and of the deeper
//! consequences named below), recorded traces replay, and random walks of the correct protocol
//! never violate an invariant.

use kcheck_models::consumer_offsets::{
    self, ConsumerOffsets, ConsumerStatus, MemberSet, PartitionSet,
};
use kcheck_models::engine::{CheckOptions, Stop};
use kcheck_models::testkit::Suite;
use kcheck_models::{Config, KcheckModel, ModelDef, Report};
use proptest::prelude::*;

fn suite() -> Suite {
    Suite::new("consumer-offsets")
}

fn model() -> &'static dyn ModelDef {
    suite().model
}

fn config(bugs: &[&str]) -> Config {
    suite().config(bugs, &[])
}

/// Check only the named properties with `bugs` on, deciding each (the AG EF one needs the
/// whole state graph, the others stop at their shortest counterexample).
fn check(bugs: &[&str], properties: &[&str]) -> Report {
    let options = CheckOptions {
        stop: Stop::AllOf(properties.iter().map(|p| p.to_string()).collect()),
        ..CheckOptions::default()
    };
    model().check(&config(bugs), &options, &|_| {})
}

/// The status of `property` and, when violated, the length of its counterexample.
fn verdict(report: &Report, property: &str) -> (&'static str, Option<usize>) {
    let r = report
        .result(property)
        .expect("the model names this property");
    (r.status, r.trace.as_ref().map(|t| t.steps.len()))
}

#[test]
fn correct_protocol_passes_exhaustively_at_default_bounds() {
    suite().assert_passes_exhaustively(&[], Stop::AllDecided, 100_000);
}

#[test]
fn commit_before_process_loses_a_record_in_a_crash() {
    // Produce, join, sync, poll, commit the position, crash: the record below the committed
    // offset was never processed and no future owner fetches it (at-most-once).
    let report = check(
        &["commit-before-process"],
        &["at-least-once", "group-processes-every-record"],
    );
    assert_eq!(verdict(&report, "at-least-once"), ("violated", Some(7)));
    let trace = report
        .result("at-least-once")
        .unwrap()
        .trace
        .clone()
        .unwrap();
    assert!(trace.steps[5].description.contains("OffsetCommit"));
    assert!(trace.steps[6].description.contains("crashes"));
    // The liveness view of the same loss: once faults stop, the record is never processed.
    assert_eq!(
        verdict(&report, "group-processes-every-record").0,
        "violated"
    );
}

#[test]
fn auto_commit_loses_a_record_in_a_crash() {
    let report = check(&["auto-commit"], &["at-least-once"]);
    assert_eq!(verdict(&report, "at-least-once"), ("violated", Some(7)));
    let trace = report
        .result("at-least-once")
        .unwrap()
        .trace
        .clone()
        .unwrap();
    assert!(trace.steps[5].description.contains("auto-commit timer"));
}

#[test]
fn no_generation_fencing_lets_a_zombie_commit_and_move_the_offset_back() {
    let report = check(
        &["no-generation-fencing"],
        &["no-zombie-commit", "committed-offset-monotonic"],
    );
    // A generation-1 zombie commits after generation 2 gave its partitions to another member.
    assert_eq!(verdict(&report, "no-zombie-commit"), ("violated", Some(10)));
    let trace = report
        .result("no-zombie-commit")
        .unwrap()
        .trace
        .clone()
        .unwrap();
    let last = trace.steps.last().unwrap();
    assert!(
        last.description.contains("OffsetCommit(generation 1")
            && last.state[0].contains("generation=2"),
        "{}",
        trace.render()
    );
    // The damage: the zombie's commit lands after the new owner's OffsetFetch, so the two
    // disagree about where p0 is, and the next commit moves the offset backwards.
    let (status, _) = verdict(&report, "committed-offset-monotonic");
    assert_eq!(status, "violated");
    let trace = report
        .result("committed-offset-monotonic")
        .unwrap()
        .trace
        .clone()
        .unwrap();
    assert!(
        trace
            .steps
            .iter()
            .any(|s| s.description.contains("no fencing; correct answer")),
        "the backwards move follows a zombie's commit:\n{}",
        trace.render()
    );
}

#[test]
fn overlapping_assignment_breaks_exclusive_ownership() {
    let report = check(
        &["overlapping-assignment"],
        &["exclusive-ownership-per-generation"],
    );
    assert_eq!(
        verdict(&report, "exclusive-ownership-per-generation"),
        ("violated", Some(5))
    );
}

#[test]
fn auto_offset_reset_latest_skips_records_produced_before_the_first_commit() {
    // A record is produced, the group's first member finds no committed offset, starts at the
    // log end, and its first commit puts the record below the committed offset unprocessed.
    let report = check(&["auto-offset-reset-latest"], &["at-least-once"]);
    assert_eq!(verdict(&report, "at-least-once"), ("violated", Some(5)));
    let trace = report
        .result("at-least-once")
        .unwrap()
        .trace
        .clone()
        .unwrap();
    assert!(trace.steps[3]
        .description
        .contains("auto.offset.reset=latest"));
}

#[test]
fn recorded_traces_replay_to_their_violation() {
    suite().assert_traces_replay_to_their_violation();
}

#[test]
fn the_correct_protocol_rejects_the_bug_traces() {
    // Without their flag the traces are not behaviours of the correct protocol: the commit
    // carries the processed offset, the zombie's commit is fenced, the timer does not exist.
    suite().assert_correct_protocol_rejects_every_trace(false);
}

#[test]
fn replay_detects_a_tampered_trace() {
    suite().assert_replay_detects_tampering("commit-before-process", 1);
}

#[test]
fn symmetry_reduces_without_changing_verdicts() {
    suite().assert_symmetry_keeps_verdicts(&[("partitions", 1), ("records", 1)], Stop::Never);
}

#[test]
fn invariants_reject_hand_made_bad_states() {
    let m = ConsumerOffsets::from_config(&config(&[]));
    let good = m.initial_state();
    assert!(consumer_offsets::at_least_once(&m, &good));
    assert!(consumer_offsets::committed_offset_monotonic(&good));
    assert!(consumer_offsets::exclusive_ownership_per_generation(
        &m, &good
    ));
    assert!(consumer_offsets::no_zombie_commit(&good));

    // Offset 0 committed, never processed, held by nobody: lost.
    let mut s = good.clone();
    s.hw[0] = 1;
    s.coordinator.committed[0] = 1;
    s.max_committed[0] = 1;
    assert!(!consumer_offsets::at_least_once(&m, &s));
    // ... unless a running consumer still holds it unprocessed.
    let c = &mut s.consumers[0];
    c.status = ConsumerStatus::Stable;
    c.assigned = PartitionSet(1);
    c.position[0] = 1;
    assert!(consumer_offsets::at_least_once(&m, &s));
    // A crashed one does not count.
    s.consumers[0].status = ConsumerStatus::Down;
    assert!(!consumer_offsets::at_least_once(&m, &s));

    let mut s = good.clone();
    s.max_committed[1] = 2;
    s.coordinator.committed[1] = 1;
    assert!(!consumer_offsets::committed_offset_monotonic(&s));

    let mut s = good.clone();
    for c in &mut s.consumers[..2] {
        c.status = ConsumerStatus::Stable;
        c.generation = 1;
        c.assigned = PartitionSet(0b10);
    }
    assert!(!consumer_offsets::exclusive_ownership_per_generation(
        &m, &s
    ));
    // A zombie of generation 1 and the owner of generation 2 may overlap.
    s.consumers[1].generation = 2;
    s.coordinator.generation = 2;
    s.coordinator.members = MemberSet::single(1);
    s.coordinator.assignment[1] = MemberSet::single(1);
    s.coordinator.state = consumer_offsets::GroupState::Stable;
    assert!(consumer_offsets::exclusive_ownership_per_generation(&m, &s));
    assert!(consumer_offsets::zombie_overlaps_new_owner(&m, &s));
}

#[test]
fn bad_configuration_names_the_fix() {
    let err = model()
        .config(&["exactly-once".to_string()], &[])
        .unwrap_err();
    assert!(err.contains("known: commit-before-process"), "{err}");
    let err = model()
        .config(&[], &[("partitions".into(), 9)])
        .unwrap_err();
    assert!(err.contains("between 1 and 3"), "{err}");
}

/// The symmetry reduction is sound only if relabelling consumers maps a state to one with the
/// same representative and the same verdicts: walk the model and check every relabelling.
fn symmetry_is_sound_along_a_walk(seed: u64) {
    use stateright::Model;
    let cfg = model()
        .config(
            &[],
            &[
                ("consumers".into(), 3),
                ("crashes".into(), 2),
                ("expiries".into(), 2),
            ],
        )
        .unwrap();
    let m = ConsumerOffsets::from_config(&cfg);
    let perms: [[u8; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    let properties = ConsumerOffsets::named_properties();
    let mut rng = seed;
    let mut s = m.init_states().remove(0);
    let mut actions = Vec::new();
    for _ in 0..60 {
        let canon = m.canonical(&s);
        for perm in &perms {
            let image = consumer_offsets::permute(&s, perm);
            assert_eq!(m.canonical(&image), canon, "{s:?} under {perm:?}");
            for p in &properties {
                if let kcheck_models::PropertyKind::Always(f)
                | kcheck_models::PropertyKind::Sometimes(f) = p.kind
                {
                    assert_eq!(f(&m, &s), f(&m, &image), "{} is not symmetric", p.name);
                }
            }
        }
        actions.clear();
        m.actions(&s, &mut actions);
        let nexts: Vec<_> = actions
            .drain(..)
            .filter_map(|a| m.next_state(&s, a))
            .collect();
        if nexts.is_empty() {
            break;
        }
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        s = nexts[(rng >> 33) as usize % nexts.len()].clone();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn random_walks_of_the_correct_protocol_never_violate(seed in any::<u64>()) {
        let cfg = model()
            .config(&[], &[("consumers".into(), 3), ("records".into(), 4), ("crashes".into(), 3), ("expiries".into(), 3)])
            .unwrap();
        if let Err(trace) = model().random_walk(&cfg, seed, 200) {
            panic!("random walk violated {}:\n{}", trace.property, trace.render());
        }
    }

    #[test]
    fn relabelling_consumers_keeps_the_representative_and_the_verdicts(seed in any::<u64>()) {
        symmetry_is_sound_along_a_walk(seed);
    }
}

#[test]
fn random_walks_find_a_bug() {
    // The same random walks do find violations when a bug flag is on: they are not vacuous.
    let cfg = model()
        .config(
            &["auto-commit".to_string()],
            &[("records".into(), 4), ("crashes".into(), 3)],
        )
        .unwrap();
    let found = (0..2000u64).any(|seed| model().random_walk(&cfg, seed, 200).is_err());
    assert!(found);
}
