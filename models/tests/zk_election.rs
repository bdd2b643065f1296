//! The zk-election model: the correct protocol passes exhaustively, each bug flag is caught
//! as its documented property (and the other invariants are shown able to fail), recorded
//! traces replay, and random walks of the correct protocol never violate an invariant.

use kcheck_models::engine::CheckOptions;
use kcheck_models::zk_election::{self, ZkElection};
use kcheck_models::{find, Config, KcheckModel, ModelDef, Trace};
use proptest::prelude::*;
use stateright::Model;

fn model() -> &'static dyn ModelDef {
    find("zk-election").expect("zk-election is in the catalog")
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
    let m = ZkElection::from_config(&config(bugs));
    match kcheck_models::catalog::shortest_violation(&m, property) {
        Ok(path) => path.steps.len(),
        Err(e) => panic!("{bugs:?}: {e}"),
    }
}

#[test]
fn ignore_zxid_elects_a_leader_without_committed_transactions() {
    // s2 commits with s0, crashes; ordered by id alone s1 wins and truncates s0 to its history.
    let steps = counterexample(&["ignore-zxid"], "leader-has-committed-history");
    assert_eq!(steps, 8);
}

#[test]
fn reuse_epoch_gives_two_leaders_one_epoch() {
    let steps = counterexample(&["reuse-epoch"], "one-leader-per-epoch");
    assert!(steps <= 8, "{steps} steps");
}

#[test]
fn votes_follow_zxid_then_epoch_then_id() {
    let m = ZkElection::from_config(&config(&[]));
    let vote = |leader, epoch, counter| zk_election::Vote {
        leader,
        zxid: zk_election::Zxid { epoch, counter },
        epoch,
    };
    assert!(
        m.better(&vote(0, 1, 2), &vote(2, 1, 1)),
        "a longer history wins over a higher id"
    );
    assert!(
        m.better(&vote(0, 2, 1), &vote(2, 1, 5)),
        "a later epoch wins"
    );
    assert!(
        m.better(&vote(2, 1, 1), &vote(0, 1, 1)),
        "the id breaks ties"
    );
    let buggy = ZkElection::from_config(&config(&["ignore-zxid"]));
    assert!(!buggy.better(&vote(0, 1, 2), &vote(2, 1, 1)));
}

fn trace_path(flag: &str) -> String {
    format!(
        "{}/../specs/traces/zk-election-{flag}.json",
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
    let mut trace = read_trace("ignore-zxid");
    trace.steps[0].state[0].push_str(" tampered");
    assert!(model()
        .replay(&trace)
        .unwrap_err()
        .contains("different state"));
}

#[test]
fn invariants_reject_hand_made_bad_states() {
    let m = ZkElection::from_config(&config(&[]));
    let mut s = m.init_states().remove(0);
    assert!(zk_election::one_leader_per_epoch(&s));
    s.servers[0].led_epochs = 1 << 1;
    assert!(
        !zk_election::one_leader_per_epoch(&s),
        "s0 and s2 both led epoch 1"
    );
    let mut s = m.init_states().remove(0);
    s.servers[2].current_epoch = 2;
    s.committed.push(zk_election::Zxid {
        epoch: 1,
        counter: 1,
    });
    assert!(
        !zk_election::leader_has_committed_history(&s),
        "leader s2 lacks 0x101"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn random_walks_of_the_correct_protocol_never_violate(seed in any::<u64>()) {
        let cfg = model().config(&[], &[("crashes".into(), 4), ("rounds".into(), 6), ("txns".into(), 3), ("losses".into(), 3)]).unwrap();
        if let Err(trace) = model().random_walk(&cfg, seed, 200) {
            panic!("random walk violated {}:\n{}", trace.property, trace.render());
        }
    }
}

#[test]
fn random_walks_find_a_bug() {
    let cfg = model()
        .config(
            &["ignore-zxid".to_string()],
            &[
                ("crashes".into(), 3),
                ("rounds".into(), 4),
                ("txns".into(), 2),
            ],
        )
        .unwrap();
    let found = (0..2000u64).any(|seed| model().random_walk(&cfg, seed, 200).is_err());
    assert!(found);
}
