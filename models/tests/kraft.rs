//! The kraft model: the correct protocol passes exhaustively, every bug flag is caught as a
//! counterexample of the property it is documented to violate, recorded traces replay, and
//! random walks of the correct model never violate an invariant.

use kcheck_models::engine::{self, CheckOptions, Verdict};
use kcheck_models::kraft::{self, Kraft};
use kcheck_models::{find, Config, KcheckModel, ModelDef, PropertyKind, Trace};
use proptest::prelude::*;

fn model() -> &'static dyn ModelDef {
    find("kraft").expect("kraft is in the catalog")
}

/// The bounds each bug flag's test (and its recorded trace) uses: the smallest that hold its
/// counterexample, so the breadth-first search reaches it in seconds.
fn bug_bounds(bug: &str) -> Vec<(String, u32)> {
    let b = |pairs: &[(&str, u32)]| pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    match bug {
        "vote-ignores-log" => b(&[
            ("epochs", 2),
            ("records", 0),
            ("brokers", 0),
            ("crashes", 0),
            ("duplicates", 0),
            ("network", 2),
        ]),
        "commit-prior-epoch" => b(&[
            ("epochs", 4),
            ("records", 0),
            ("brokers", 0),
            ("crashes", 1),
            ("duplicates", 0),
            ("network", 2),
        ]),
        "no-diverging-epoch" => b(&[
            ("epochs", 2),
            ("records", 1),
            ("brokers", 1),
            ("crashes", 0),
            ("duplicates", 0),
            ("network", 2),
        ]),
        "apply-uncommitted" => b(&[
            ("epochs", 1),
            ("records", 0),
            ("brokers", 1),
            ("crashes", 0),
            ("duplicates", 0),
            ("network", 2),
        ]),
        "forget-vote-on-restart" => b(&[
            ("epochs", 1),
            ("records", 0),
            ("brokers", 0),
            ("crashes", 1),
            ("duplicates", 0),
            ("network", 2),
        ]),
        "no-election-timeout" => b(&[
            ("epochs", 1),
            ("records", 0),
            ("brokers", 0),
            ("crashes", 0),
            ("duplicates", 0),
            ("network", 2),
        ]),
        other => panic!("no bounds for {other}"),
    }
}

fn config(bugs: &[&str], bounds: &[(String, u32)]) -> Config {
    let bugs: Vec<String> = bugs.iter().map(|b| b.to_string()).collect();
    model().config(&bugs, bounds).expect("valid config")
}

fn trace_path(flag: &str) -> String {
    format!(
        "{}/../specs/traces/kraft-{flag}.json",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn correct_protocol_passes_exhaustively_at_default_bounds() {
    let report = model().check(&config(&[], &[]), &CheckOptions::default(), &|_| {});
    assert!(report.complete, "the default bounds are exhausted");
    assert!(
        report.unique_states > 100_000,
        "the state space is not trivial"
    );
    for r in &report.results {
        let expected = if r.kind == "sometimes" {
            "reached"
        } else {
            "holds"
        };
        assert_eq!(r.status, expected, "{} should be {expected}", r.name);
    }
    assert!(!report.failed());
}

/// Check only the property a bug flag is documented to violate, stopping at its first
/// (shortest) counterexample; returns its length.
fn counterexample(bug: &str) -> usize {
    let flag = model()
        .bug_flags()
        .iter()
        .find(|b| b.name == bug)
        .expect("known flag");
    let m = Kraft::from_config(&config(&[bug], &bug_bounds(bug)));
    let properties: Vec<_> = Kraft::named_properties()
        .into_iter()
        .filter(|p| p.name == flag.violates)
        .collect();
    assert_eq!(properties.len(), 1, "{bug} names a property of the model");
    let outcome = engine::check(
        &m,
        &properties,
        Kraft::representative,
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

/// The same bounds without the flag: the property holds (so the flag, not the bounds, breaks it).
fn holds_without_flag(bug: &str) {
    let flag = model().bug_flags().iter().find(|b| b.name == bug).unwrap();
    let m = Kraft::from_config(&config(&[], &bug_bounds(bug)));
    let properties: Vec<_> = Kraft::named_properties()
        .into_iter()
        .filter(|p| p.name == flag.violates)
        .collect();
    let outcome = engine::check(
        &m,
        &properties,
        Kraft::representative,
        &CheckOptions::default(),
        &|_| {},
    );
    assert!(outcome.complete);
    assert_eq!(
        outcome.verdict(flag.violates),
        Some(&Verdict::Holds),
        "{bug}: {} holds without the flag",
        flag.violates
    );
}

#[test]
fn vote_ignores_log_elects_a_leader_without_committed_records() {
    assert!(counterexample("vote-ignores-log") <= 20);
    holds_without_flag("vote-ignores-log");
}

#[test]
fn commit_prior_epoch_loses_committed_data() {
    counterexample("commit-prior-epoch");
}

#[test]
fn no_diverging_epoch_breaks_log_matching() {
    counterexample("no-diverging-epoch");
    holds_without_flag("no-diverging-epoch");
}

#[test]
fn apply_uncommitted_breaks_observer_prefix() {
    counterexample("apply-uncommitted");
    holds_without_flag("apply-uncommitted");
}

#[test]
fn forget_vote_on_restart_elects_two_leaders_in_one_epoch() {
    counterexample("forget-vote-on-restart");
    holds_without_flag("forget-vote-on-restart");
}

#[test]
fn no_election_timeout_never_elects_a_leader() {
    let bounds = bug_bounds("no-election-timeout");
    let report = model().check(
        &config(&["no-election-timeout"], &bounds),
        &CheckOptions {
            stop: engine::Stop::Never,
            ..CheckOptions::default()
        },
        &|_| {},
    );
    assert_eq!(
        report.result("leader-electable").unwrap().status,
        "violated"
    );
    let report = model().check(
        &config(&[], &bounds),
        &CheckOptions {
            stop: engine::Stop::Never,
            ..CheckOptions::default()
        },
        &|_| {},
    );
    assert_eq!(report.result("leader-electable").unwrap().status, "holds");
}

#[test]
fn every_bug_flag_has_a_recorded_trace_that_replays_to_its_violation() {
    for flag in model().bug_flags() {
        let path = trace_path(flag.name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let trace: Trace = serde_json::from_str(&text).unwrap();
        assert_eq!(trace.bugs, vec![flag.name.to_string()]);
        assert_eq!(trace.property, flag.violates);
        let report = model()
            .replay(&trace)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        if flag.name != "no-election-timeout" {
            assert!(
                report.violated.contains(&flag.violates),
                "{path} ends in a violation of {} (got {:?})",
                flag.violates,
                report.violated
            );
        }
    }
}

#[test]
fn replay_detects_a_tampered_trace() {
    let mut trace: Trace = serde_json::from_str(
        &std::fs::read_to_string(trace_path("forget-vote-on-restart")).unwrap(),
    )
    .unwrap();
    trace.steps[0].state[0].push_str(" tampered");
    assert!(model()
        .replay(&trace)
        .unwrap_err()
        .contains("different state"));
}

#[test]
fn replay_without_the_bug_flag_rejects_the_trace_or_holds() {
    let mut trace: Trace =
        serde_json::from_str(&std::fs::read_to_string(trace_path("vote-ignores-log")).unwrap())
            .unwrap();
    trace.bugs.clear();
    match model().replay(&trace) {
        Err(e) => assert!(
            e.contains("different state") || e.contains("not enabled"),
            "{e}"
        ),
        Ok(report) => assert!(report.violated.is_empty()),
    }
}

#[test]
fn kafka_vote_and_truncation_rules() {
    use kraft::{
        candidate_log_is_up_to_date, diverging_epoch, truncation_offset, MetadataRecord, Record,
    };
    let r = |epoch| Record {
        epoch,
        body: MetadataRecord::LeaderChange,
    };
    assert!(candidate_log_is_up_to_date((3, 1), (2, 4)));
    assert!(!candidate_log_is_up_to_date((2, 3), (2, 4)));
    // A follower that wrote offset 1 in epoch 2, which the leader (epochs 1 then 3) never had.
    let leader = [r(1), r(3)];
    let follower = [r(1), r(2)];
    let diverging = diverging_epoch(&leader, 2, 2).expect("diverges");
    assert_eq!(diverging, (1, 1));
    assert_eq!(truncation_offset(&follower, diverging), 1);
}

#[test]
fn invariants_reject_hand_made_bad_states() {
    let m = Kraft::from_config(&config(&[], &[]));
    let mut s = m.initial_state();
    assert!(kraft::election_safety(&s));
    s.epoch_leaders[1] = kcheck_models::replication::BrokerSet(0b011);
    assert!(!kraft::election_safety(&s), "two leaders in epoch 1");
    let mut s = m.initial_state();
    let r = |epoch| kraft::Record {
        epoch,
        body: kraft::MetadataRecord::LeaderChange,
    };
    s.voters[0].log = [r(1), r(2)].as_slice().into();
    s.voters[1].log = [r(2), r(2)].as_slice().into();
    assert!(
        !kraft::log_matching(&s),
        "same epoch at offset 1, different offset 0"
    );
    let mut s = m.initial_state();
    s.observers[0].applied = [r(1)].as_slice().into();
    assert!(
        !kraft::observer_prefix(&s),
        "applied a record that is not committed"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]
    #[test]
    fn random_walks_of_the_correct_protocol_never_violate(seed in any::<u64>()) {
        let cfg = model().config(&[], &[("epochs".into(), 4), ("records".into(), 3), ("brokers".into(), 2), ("crashes".into(), 3), ("network".into(), 4), ("duplicates".into(), 2)]).unwrap();
        if let Err(trace) = model().random_walk(&cfg, seed, 300) {
            panic!("random walk violated {}:\n{}", trace.property, trace.render());
        }
    }
}

#[test]
fn random_walks_find_a_bug() {
    let cfg = model()
        .config(
            &["apply-uncommitted".to_string()],
            &[("records".into(), 2), ("epochs".into(), 3)],
        )
        .unwrap();
    assert!((0..2000u64).any(|seed| model().random_walk(&cfg, seed, 200).is_err()));
}
