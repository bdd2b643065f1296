//! The zk-controller model: the correct protocol passes exhaustively, each bug flag is caught
//! as its documented property (and the other invariants are shown able to fail), recorded
//! traces replay, and random walks of the correct protocol never violate an invariant.

use kcheck_models::engine::CheckOptions;
use kcheck_models::zk_controller::{self, ZkController};
use kcheck_models::{find, Config, KcheckModel, ModelDef, Trace};
use proptest::prelude::*;

fn model() -> &'static dyn ModelDef {
    find("zk-controller").expect("zk-controller is in the catalog")
}

fn config(bugs: &[&str]) -> Config {
    let bugs: Vec<String> = bugs.iter().map(|b| b.to_string()).collect();
    model().config(&bugs, &[]).expect("valid config")
}

#[test]
fn correct_protocol_passes_exhaustively_at_default_bounds() {
    let report = model().check(&config(&[]), &CheckOptions::default(), &|_| {});
    assert!(report.complete, "the default bounds are exhausted");
    assert!(
        report.unique_states > 500_000,
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
}

/// The shortest counterexample of `property` with `bugs` on: its length.
fn counterexample(bugs: &[&str], property: &str) -> usize {
    let m = ZkController::from_config(&config(bugs));
    match kcheck_models::catalog::shortest_violation(&m, property) {
        Ok(path) => path.steps.len(),
        Err(e) => panic!("{bugs:?}: {e}"),
    }
}

#[test]
fn no_controller_epoch_check_obeys_a_stale_controller() {
    let steps = counterexample(
        &["no-controller-epoch-check"],
        "single-effective-controller",
    );
    assert!(steps <= 8, "{steps} steps");
}

#[test]
fn no_controller_epoch_check_lets_metadata_go_back_in_time() {
    // A zombie's UpdateMetadata overwrites the new controller's in a broker's metadata cache.
    counterexample(&["no-controller-epoch-check"], "partition-state-consistent");
}

#[test]
fn no_zkversion_check_loses_committed_data() {
    // The zombie leader's ISR write overwrites the controller's election (a lost update).
    let steps = counterexample(&["no-zkversion-check"], "no-committed-data-loss");
    assert!(steps <= 8, "{steps} steps");
}

#[test]
fn zombie_controller_without_any_check_elects_two_leaders_in_one_epoch() {
    counterexample(
        &["no-controller-epoch-check", "no-zkversion-check"],
        "one-leader-per-leader-epoch",
    );
}

fn trace_path(flag: &str) -> String {
    format!(
        "{}/../specs/traces/zk-controller-{flag}.json",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn read_trace(flag: &str) -> Trace {
    let path = trace_path(flag);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn recorded_traces_replay_to_their_violation() {
    for flag in model().bug_flags() {
        let trace = read_trace(flag.name);
        assert_eq!(trace.bugs, vec![flag.name.to_string()]);
        let report = model()
            .replay(&trace)
            .unwrap_or_else(|e| panic!("{}: {e}", flag.name));
        assert!(
            report.violated.contains(&flag.violates),
            "{} ends in a violation of {} (got {:?})",
            flag.name,
            flag.violates,
            report.violated
        );
    }
}

#[test]
fn the_correct_protocol_rejects_the_recorded_traces() {
    for flag in model().bug_flags() {
        let mut trace = read_trace(flag.name);
        trace.bugs.clear();
        match model().replay(&trace) {
            Err(e) => assert!(
                e.contains("different state")
                    || e.contains("not enabled")
                    || e.contains("changes nothing"),
                "{e}"
            ),
            Ok(report) => assert!(report.violated.is_empty(), "{:?}", report.violated),
        }
    }
}

#[test]
fn replay_detects_a_tampered_trace() {
    let mut trace = read_trace("no-zkversion-check");
    trace.steps[0].state[0].push_str(" tampered");
    assert!(model()
        .replay(&trace)
        .unwrap_err()
        .contains("different state"));
}

#[test]
fn symmetry_reduces_without_changing_verdicts() {
    let small = model()
        .config(&[], &[("expiries".into(), 1), ("isr-changes".into(), 0)])
        .unwrap();
    let with = model().check(&small, &CheckOptions::default(), &|_| {});
    let without = model().check(
        &small,
        &CheckOptions {
            symmetry: false,
            ..CheckOptions::default()
        },
        &|_| {},
    );
    assert!(with.unique_states < without.unique_states);
    let statuses =
        |r: &kcheck_models::Report| r.results.iter().map(|x| x.status).collect::<Vec<_>>();
    assert_eq!(statuses(&with), statuses(&without));
}

#[test]
fn invariants_reject_hand_made_bad_states() {
    let m = ZkController::from_config(&config(&[]));
    let mut s = m.initial_state();
    assert!(zk_controller::one_leader_per_leader_epoch(&s));
    s.brokers[1].led_epochs = 1 << 1;
    assert!(
        !zk_controller::one_leader_per_leader_epoch(&s),
        "b0 and b1 both led epoch 1"
    );
    let mut s = m.initial_state();
    s.acked.push((0, 1));
    assert!(
        !zk_controller::no_committed_data_loss(&s),
        "leader b0 has an empty log"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn random_walks_of_the_correct_protocol_never_violate(seed in any::<u64>()) {
        let cfg = model().config(&[], &[("expiries".into(), 4), ("epochs".into(), 5), ("records".into(), 2), ("isr-changes".into(), 3)]).unwrap();
        if let Err(trace) = model().random_walk(&cfg, seed, 200) {
            panic!("random walk violated {}:\n{}", trace.property, trace.render());
        }
    }
}

#[test]
fn random_walks_find_a_bug() {
    let cfg = model()
        .config(
            &["no-controller-epoch-check".to_string()],
            &[("expiries".into(), 4)],
        )
        .unwrap();
    let found = (0..2000u64).any(|seed| model().random_walk(&cfg, seed, 200).is_err());
    assert!(found);
}
