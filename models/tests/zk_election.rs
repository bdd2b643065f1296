//! The zk-election model: the correct protocol passes exhaustively, each bug flag is caught
//! as its documented property (and the other invariants are shown able to fail), recorded
//! traces replay, and random walks of the correct protocol never violate an invariant.

use kcheck_models::engine::Stop;
use kcheck_models::testkit::{violation_steps, Suite};
use kcheck_models::zk_election::{self, ZkElection};
use kcheck_models::{Config, KcheckModel};
use proptest::prelude::*;
use stateright::Model;

fn suite() -> Suite {
    Suite::new("zk-election")
}

fn config(bugs: &[&str], bounds: &[(&str, u32)]) -> Config {
    suite().config(bugs, bounds)
}

#[test]
fn correct_protocol_passes_exhaustively_at_default_bounds() {
    suite().assert_passes_exhaustively(&[], Stop::FirstViolation, 500_000);
}

/// The shortest counterexample of `property` with `bugs` on: its length.
fn counterexample(bugs: &[&str], property: &str) -> usize {
    violation_steps(&ZkElection::from_config(&config(bugs, &[])), property)
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
    let m = ZkElection::from_config(&config(&[], &[]));
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
    let buggy = ZkElection::from_config(&config(&["ignore-zxid"], &[]));
    assert!(!buggy.better(&vote(0, 1, 2), &vote(2, 1, 1)));
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
    suite().assert_replay_detects_tampering("ignore-zxid", 0);
}

#[test]
fn invariants_reject_hand_made_bad_states() {
    let m = ZkElection::from_config(&config(&[], &[]));
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
        let cfg = config(&[], &[("crashes", 4), ("rounds", 6), ("txns", 3), ("losses", 3)]);
        if let Err(trace) = suite().model.random_walk(&cfg, seed, 200) {
            panic!("random walk violated {}:\n{}", trace.property, trace.render());
        }
    }
}

#[test]
fn random_walks_find_a_bug() {
    let cfg = config(
        &["ignore-zxid"],
        &[("crashes", 3), ("rounds", 4), ("txns", 2)],
    );
    let found = (0..2000u64).any(|seed| suite().model.random_walk(&cfg, seed, 200).is_err());
    assert!(found);
}
