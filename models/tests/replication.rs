//! The replication model: the correct protocol passes exhaustively, every bug flag is caught
//! as a counterexample of the property it is documented to violate, recorded traces replay,
//! and random walks of the correct model never violate an invariant.

use kcheck_models::engine::{CheckOptions, Stop};
use kcheck_models::replication::{self, Replication};
use kcheck_models::testkit::{violation_steps, Suite};
use kcheck_models::{Config, KcheckModel};
use proptest::prelude::*;

fn suite() -> Suite {
    Suite::new("replication")
}

fn config(bugs: &[&str]) -> Config {
    suite().config(bugs, &[])
}

#[test]
fn correct_protocol_passes_exhaustively_at_default_bounds() {
    suite().assert_passes_exhaustively(&[], Stop::FirstViolation, 100_000);
}

/// The property a bug flag is documented to violate, and the length of its shortest
/// counterexample.
fn counterexample(bug: &str) -> (String, usize) {
    let flag = suite()
        .model
        .bug_flags()
        .iter()
        .find(|b| b.name == bug)
        .expect("known flag");
    let m = Replication::from_config(&config(&[bug]));
    (
        flag.violates.to_string(),
        violation_steps(&m, flag.violates),
    )
}

#[test]
fn truncate_to_hw_loses_committed_data() {
    // KIP-101 scenario 1: a follower truncates to its stale HW and is elected.
    let (property, steps) = counterexample("truncate-to-hw");
    assert_eq!(property, "no-committed-data-loss");
    assert!(
        steps <= 12,
        "shortest counterexample is short ({steps} steps)"
    );
}

#[test]
fn single_epoch_lookup_diverges() {
    let (property, _) = counterexample("single-epoch-lookup");
    assert_eq!(property, "replica-log-consistency");
}

#[test]
fn unclean_election_loses_committed_data() {
    assert_eq!(
        counterexample("unclean-election").0,
        "no-committed-data-loss"
    );
}

#[test]
fn acks_1_loses_acknowledged_data() {
    let (property, steps) = counterexample("acks-1");
    assert_eq!(property, "no-committed-data-loss");
    assert_eq!(
        steps, 3,
        "produce, leader crash, elect a follower that never fetched"
    );
}

#[test]
fn last_replica_standing_loses_committed_data() {
    assert_eq!(
        counterexample("last-replica-standing").0,
        "no-committed-data-loss"
    );
}

#[test]
fn no_broker_epoch_check_loses_committed_data() {
    assert_eq!(
        counterexample("no-broker-epoch-check").0,
        "no-committed-data-loss"
    );
}

#[test]
fn elect_without_isr_reset_breaks_leader_in_isr() {
    assert_eq!(counterexample("elect-without-isr-reset").0, "leader-in-isr");
}

#[test]
fn recorded_traces_replay_to_their_violation() {
    suite().assert_traces_replay_to_their_violation();
}

#[test]
fn replay_without_the_bug_flag_rejects_the_trace_or_holds() {
    // The truncate-to-hw trace is not a behaviour of the correct protocol: its truncation
    // step reaches a different state (KIP-101 truncation keeps the record).
    suite().assert_correct_protocol_rejects(&["truncate-to-hw"], true);
}

#[test]
fn replay_detects_a_tampered_trace() {
    suite().assert_replay_detects_tampering("acks-1", 0);
}

#[test]
fn symmetry_reduces_without_changing_verdicts() {
    suite().assert_symmetry_keeps_verdicts(&[("records", 1), ("epochs", 2)], Stop::FirstViolation);
}

#[test]
fn invariants_reject_hand_made_bad_states() {
    let m = Replication::from_config(&config(&[]));
    let mut s = m.initial_state(replication::BrokerSet::all(3), 0);
    assert!(replication::isr_subset_of_replicas(&s));
    s.partition.replicas = replication::BrokerSet::all(2);
    assert!(
        !replication::isr_subset_of_replicas(&s),
        "b2 in the ISR but not a replica"
    );
    let mut s = m.initial_state(replication::BrokerSet::all(3), 0);
    s.replicas[1].log = [1u8].as_slice().into();
    s.replicas[1].hw = 2;
    assert!(!replication::replica_state_well_formed(&s), "HW above LEO");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn random_walks_of_the_correct_protocol_never_violate(seed in any::<u64>()) {
        let cfg = suite().config(&[], &[("records", 4), ("epochs", 6), ("crashes", 5)]);
        if let Err(trace) = suite().model.random_walk(&cfg, seed, 200) {
            panic!("random walk violated {}:\n{}", trace.property, trace.render());
        }
    }
}

#[test]
fn random_walks_find_a_bug() {
    // The same random walks do find violations when a bug flag is on: they are not vacuous.
    let cfg = suite().config(&["acks-1"], &[("records", 4), ("crashes", 4)]);
    let found = (0..2000u64).any(|seed| suite().model.random_walk(&cfg, seed, 200).is_err());
    assert!(found);
}

#[test]
fn single_round_epoch_lookup_diverges_at_release_bounds() {
    // The 17-step divergence needs three records, four leader epochs and three crashes: the
    // follower holds an epoch the leader never had and must ask a second time.
    let flag = "single-round-epoch-lookup";
    let cfg = suite()
        .model
        .config_with(&[flag.to_string()], &[], true)
        .unwrap();
    let options = CheckOptions {
        stop: Stop::AllOf(vec!["replica-log-consistency".into()]),
        ..CheckOptions::default()
    };
    let report = suite().model.check(&cfg, &options, &|_| {});
    let r = report.result("replica-log-consistency").unwrap();
    assert_eq!(r.status, "violated");
    assert_eq!(r.trace.as_ref().unwrap().steps.len(), 17);
}
