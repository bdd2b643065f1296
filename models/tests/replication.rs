//! The replication model: the correct protocol passes exhaustively, every bug flag is caught
//! as a counterexample of the property it is documented to violate, recorded traces replay,
//! and random walks of the correct model never violate an invariant.

use kcheck_models::engine::{self, CheckOptions, Verdict};
use kcheck_models::replication::{self, Replication};
use kcheck_models::{find, Config, KcheckModel, ModelDef, Trace};
use proptest::prelude::*;

fn model() -> &'static dyn ModelDef {
    find("replication").expect("replication is in the catalog")
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
/// (shortest) counterexample.
fn counterexample(bug: &str) -> (String, usize) {
    let flag = model()
        .bug_flags()
        .iter()
        .find(|b| b.name == bug)
        .expect("known flag");
    let m = Replication::from_config(&config(&[bug]));
    let properties: Vec<_> = Replication::named_properties()
        .into_iter()
        .filter(|p| p.name == flag.violates)
        .collect();
    assert_eq!(properties.len(), 1, "{bug} names a property of the model");
    let outcome = engine::check(
        &m,
        &properties,
        Replication::representative,
        &CheckOptions::default(),
        &|_| {},
    );
    match outcome.verdict(flag.violates) {
        Some(Verdict::Violated(path)) => {
            let last = path.last_state();
            assert!(
                !(properties[0].kind_holds(&m, last)),
                "the path ends in a violation"
            );
            (flag.violates.to_string(), path.steps.len())
        }
        other => panic!(
            "{bug}: expected a counterexample of {}, got {other:?}",
            flag.violates
        ),
    }
}

trait Holds {
    fn kind_holds(&self, m: &Replication, s: &replication::State) -> bool;
}
impl Holds for kcheck_models::Property<Replication> {
    fn kind_holds(&self, m: &Replication, s: &replication::State) -> bool {
        match self.kind {
            kcheck_models::PropertyKind::Always(f) => f(m, s),
            _ => unreachable!("bug flags violate safety properties"),
        }
    }
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
fn every_bug_flag_has_a_test_and_a_recorded_trace() {
    for flag in model().bug_flags() {
        let path = format!(
            "{}/../specs/traces/replication-{}.json",
            env!("CARGO_MANIFEST_DIR"),
            flag.name
        );
        assert!(std::path::Path::new(&path).exists(), "missing {path}");
    }
}

#[test]
fn recorded_traces_replay_to_their_violation() {
    for flag in model().bug_flags() {
        let path = format!(
            "{}/../specs/traces/replication-{}.json",
            env!("CARGO_MANIFEST_DIR"),
            flag.name
        );
        let trace: Trace = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(trace.bugs, vec![flag.name.to_string()]);
        let report = model()
            .replay(&trace)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(
            report.violated.contains(&flag.violates),
            "{path} ends in a violation of {} (got {:?})",
            flag.violates,
            report.violated
        );
    }
}

#[test]
fn replay_without_the_bug_flag_rejects_the_trace_or_holds() {
    // The truncate-to-hw trace is not a behaviour of the correct protocol: its truncation
    // step reaches a different state (KIP-101 truncation keeps the record).
    let path = format!(
        "{}/../specs/traces/replication-truncate-to-hw.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut trace: Trace = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
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
fn replay_detects_a_tampered_trace() {
    let path = format!(
        "{}/../specs/traces/replication-acks-1.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut trace: Trace = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    trace.steps[0].state[0].push_str(" tampered");
    assert!(model()
        .replay(&trace)
        .unwrap_err()
        .contains("different state"));
}

#[test]
fn symmetry_reduces_without_changing_verdicts() {
    let small = model()
        .config(&[], &[("records".into(), 1), ("epochs".into(), 2)])
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
        let cfg = model().config(&[], &[("records".into(), 4), ("epochs".into(), 6), ("crashes".into(), 5)]).unwrap();
        if let Err(trace) = model().random_walk(&cfg, seed, 200) {
            panic!("random walk violated {}:\n{}", trace.property, trace.render());
        }
    }
}

#[test]
fn random_walks_find_a_bug() {
    // The same random walks do find violations when a bug flag is on: they are not vacuous.
    let cfg = model()
        .config(
            &["acks-1".to_string()],
            &[("records".into(), 4), ("crashes".into(), 4)],
        )
        .unwrap();
    let found = (0..2000u64).any(|seed| model().random_walk(&cfg, seed, 200).is_err());
    assert!(found);
}

#[test]
fn single_round_epoch_lookup_diverges_at_release_bounds() {
    // The 17-step divergence needs three records, four leader epochs and three crashes: the
    // follower holds an epoch the leader never had and must ask a second time.
    let flag = "single-round-epoch-lookup";
    let cfg = model().config_with(&[flag.to_string()], &[], true).unwrap();
    let options = CheckOptions {
        stop: engine::Stop::AllOf(vec!["replica-log-consistency".into()]),
        ..CheckOptions::default()
    };
    let report = model().check(&cfg, &options, &|_| {});
    let r = report.result("replica-log-consistency").unwrap();
    assert_eq!(r.status, "violated");
    assert_eq!(r.trace.as_ref().unwrap().steps.len(), 17);
}
