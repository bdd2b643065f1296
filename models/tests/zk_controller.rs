//! The zk-controller model: the correct protocol passes exhaustively, each bug flag is caught
//! as its documented property (and the other invariants are shown able to fail), recorded
//! traces replay, and random walks of the correct protocol never violate an invariant.

use kcheck_models::engine::Stop;
use kcheck_models::testkit::{violation_steps, Suite};
use kcheck_models::zk_controller::{self, ZkController};
use kcheck_models::{Config, KcheckModel};
use proptest::prelude::*;

fn suite() -> Suite {
    Suite::new("zk-controller")
}

fn config(bugs: &[&str]) -> Config {
    suite().config(bugs, &[])
}

fn config_with(bugs: &[&str], bounds: &[(&str, u32)]) -> Config {
    suite().config(bugs, bounds)
}

#[test]
fn correct_protocol_passes_exhaustively_at_default_bounds() {
    suite().assert_passes_exhaustively(&[], Stop::FirstViolation, 500_000);
}

/// The shortest counterexample of `property` with `bugs` on: its length.
fn counterexample(bugs: &[&str], property: &str) -> usize {
    violation_steps(&ZkController::from_config(&config(bugs)), property)
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

#[test]
fn recorded_traces_replay_to_their_violation() {
    suite().assert_traces_replay_to_their_violation();
}

#[test]
fn the_correct_protocol_rejects_the_recorded_traces() {
    suite().assert_correct_protocol_rejects_every_trace(true);
}

#[test]
fn replay_detects_a_tampered_trace() {
    suite().assert_replay_detects_tampering("no-zkversion-check", 0);
}

#[test]
fn symmetry_reduces_without_changing_verdicts() {
    suite().assert_symmetry_keeps_verdicts(
        &[("expiries", 1), ("isr-changes", 0)],
        Stop::FirstViolation,
    );
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
        let cfg = config_with(&[], &[("expiries", 4), ("epochs", 5), ("records", 2), ("isr-changes", 3)]);
        if let Err(trace) = suite().model.random_walk(&cfg, seed, 200) {
            panic!("random walk violated {}:\n{}", trace.property, trace.render());
        }
    }
}

#[test]
fn random_walks_find_a_bug() {
    let cfg = config_with(&["no-controller-epoch-check"], &[("expiries", 4)]);
    let found = (0..2000u64).any(|seed| suite().model.random_walk(&cfg, seed, 200).is_err());
    assert!(found);
}
