//! The kraft model: the correct protocol passes exhaustively, every bug flag is caught as a
//! counterexample of the property it is documented to violate, recorded traces replay, and
//! random walks of the correct model never violate an invariant.

use kcheck_models::engine::{self, CheckOptions, Verdict};
use kcheck_models::kraft::{self, Kraft};
use kcheck_models::{find, Config, KcheckModel, ModelDef, Trace};
use proptest::prelude::*;

fn model() -> &'static dyn ModelDef {
    find("kraft").expect("kraft is in the catalog")
}

/// The bounds each bug flag's test (and its recorded trace) uses: the smallest that hold its
/// counterexample, so the breadth-first search reaches it in seconds.
fn bug_bounds(bug: &str) -> Vec<(String, u32)> {
    // (epochs, records, brokers, crashes, network)
    let (epochs, records, brokers, crashes, network) = match bug {
        "vote-ignores-log" => (2, 0, 0, 0, 1),
        "commit-prior-epoch" => (2, 1, 1, 0, 1),
        "hw-before-leader-change-committed" => (4, 0, 0, 0, 1),
        "no-diverging-epoch" => (2, 1, 1, 0, 1),
        "apply-uncommitted" => (1, 0, 1, 0, 1),
        "forget-vote-on-restart" => (1, 0, 0, 1, 1),
        "no-election-timeout" => (1, 0, 0, 0, 1),
        "hw-beyond-log-end" => (1, 1, 1, 0, 1),
        "prospective-follows-itself" => (2, 0, 0, 0, 1),
        other => panic!("no bounds for {other}"),
    };
    [
        ("epochs", epochs),
        ("records", records),
        ("brokers", brokers),
        ("crashes", crashes),
        ("duplicates", 0),
        ("network", network),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), *v))
    .collect()
}

/// The bounds of the directed figure-8 scenario (two Votes in flight at once).
fn figure_8_bounds() -> Vec<(String, u32)> {
    [
        ("epochs", 4),
        ("records", 0),
        ("brokers", 0),
        ("crashes", 0),
        ("duplicates", 0),
        ("network", 2),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), *v))
    .collect()
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

fn violates(bug: &str) -> &'static str {
    model()
        .bug_flags()
        .iter()
        .find(|b| b.name == bug)
        .expect("known flag")
        .violates
}

/// The shortest counterexample of `property` with `bug` on, at the flag's bounds: its length.
fn counterexample_of(bug: &str, property: &str) -> usize {
    let m = Kraft::from_config(&config(&[bug], &bug_bounds(bug)));
    match kcheck_models::catalog::shortest_violation(&m, property) {
        Ok(path) => path.steps.len(),
        Err(e) => panic!("{bug}: {e}"),
    }
}

/// The shortest counterexample of the property a bug flag is documented to violate.
fn counterexample(bug: &str) -> usize {
    counterexample_of(bug, violates(bug))
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

/// A step of a directed scenario: who acts, or which message the network delivers or loses.
enum Step {
    Timeout(u8),
    PreVote(u8),
    Resign(u8),
    Fetch(u8, u8),
    FetchLost(u8, u8),
    Deliver(u8, u8, &'static str),
    Drop(u8, u8, &'static str),
}

/// Run a directed scenario; `Err(step)` names the first step that is not enabled.
fn run(m: &Kraft, steps: &[Step]) -> Result<Vec<(kraft::Action, kraft::State)>, usize> {
    use kraft::Action;
    use stateright::Model;
    let mut s = m.init_states().remove(0);
    let mut path = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let find = |from: u8, to: u8, kind: &str| {
            s.network
                .iter()
                .find(|x| x.from == from && x.to == to && format!("{:?}", x.body).starts_with(kind))
                .copied()
        };
        let action = match *step {
            Step::Timeout(n) => Some(Action::Timeout { node: n }),
            Step::PreVote(n) => Some(Action::PreVote { voter: n }),
            Step::Resign(n) => Some(Action::Resign { voter: n }),
            Step::Fetch(n, to) => Some(Action::SendFetch { node: n, to }),
            Step::FetchLost(n, to) => Some(Action::FetchResponseLost { node: n, to }),
            Step::Deliver(f, t, k) => find(f, t, k).map(|message| Action::Deliver { message }),
            Step::Drop(f, t, k) => find(f, t, k).map(|message| Action::Drop { message }),
        };
        let mut enabled = Vec::new();
        m.actions(&s, &mut enabled);
        let Some(action) = action.filter(|a| enabled.contains(a)) else {
            return Err(i + 1);
        };
        s = m.next_state(&s, action).ok_or(i + 1)?;
        path.push((action, s.clone()));
    }
    Ok(path)
}

/// Raft's figure 8 in KRaft: c0 leads epoch 1 with LC@e1 alone, c1 leads epoch 2 with LC@e2
/// alone, c0 leads epoch 3 and replicates LC@e1 to c2; when a majority holding that prior
/// epoch's offset commits it, c1 wins epoch 4 (its last epoch 2 beats c2's 1) and c2
/// truncates the committed record.
fn figure_8() -> Vec<Step> {
    use Step::*;
    vec![
        Timeout(0),
        PreVote(0),
        Deliver(0, 1, "Vote {"),
        Deliver(1, 0, "VoteResponse"),
        Drop(0, 2, "Vote {"),
        // c0 leads epoch 1 with [LC@e1]; its BeginQuorumEpochs did not fit the network.
        Timeout(1),
        PreVote(1),
        Deliver(1, 2, "Vote {"),
        Drop(1, 0, "Vote {"),
        Deliver(2, 1, "VoteResponse"),
        Deliver(1, 0, "BeginQuorumEpoch"),
        Drop(1, 2, "BeginQuorumEpoch"),
        // c1 leads epoch 2 with [LC@e2]; c0 follows it without fetching yet.
        Resign(1),
        Drop(1, 0, "EndQuorumEpoch"),
        Drop(1, 2, "EndQuorumEpoch"),
        Timeout(0),
        PreVote(0),
        Deliver(0, 2, "Vote {"),
        Deliver(0, 1, "Vote {"),
        Deliver(2, 0, "VoteResponse"),
        Deliver(0, 2, "BeginQuorumEpoch"),
        Drop(0, 1, "BeginQuorumEpoch"),
        // c0 leads epoch 3 with [LC@e1 LC@e3] and replicates offset 0 to c2.
        Fetch(2, 0),
        // With either bug the HW passes offset 0, a record of epoch 1: LC@e1 is "committed".
        FetchLost(2, 0),
        Resign(0),
        Drop(0, 1, "EndQuorumEpoch"),
        Drop(0, 2, "EndQuorumEpoch"),
        Timeout(2),
        Timeout(1),
        PreVote(1),
        Deliver(1, 2, "Vote {"),
        Drop(1, 0, "Vote {"),
        Deliver(2, 1, "VoteResponse"),
        // c1 leads epoch 4 without LC@e1 and c2 truncates it on the diverging epoch.
        Deliver(1, 2, "BeginQuorumEpoch"),
        Drop(1, 0, "BeginQuorumEpoch"),
        Fetch(2, 1),
    ]
}

/// Figure 8 loses a committed record with either HW bug, and the correct protocol, which
/// commits only through a record of the leader's own epoch, loses nothing on the same steps.
#[test]
fn figure_8_loses_committed_data_with_either_hw_bug() {
    for bug in ["commit-prior-epoch", "hw-before-leader-change-committed"] {
        let m = Kraft::from_config(&config(&[bug], &figure_8_bounds()));
        let path =
            run(&m, &figure_8()).unwrap_or_else(|step| panic!("{bug}: step {step} is not enabled"));
        let last = &path.last().unwrap().1;
        assert!(
            !kraft::no_committed_data_loss(&m, last),
            "{bug}: LC@e1 was committed and is lost"
        );
        assert!(
            path.iter().any(|(_, s)| !kraft::leader_completeness(s)),
            "{bug}: c1 led epoch 4 without it"
        );
    }
    let correct = Kraft::from_config(&config(&[], &figure_8_bounds()));
    match run(&correct, &figure_8()) {
        Err(_) => {}
        Ok(path) => {
            for (_, s) in &path {
                assert!(kraft::no_committed_data_loss(&correct, s));
                assert!(kraft::leader_completeness(s));
            }
        }
    }
}

/// KAFKA-12619's off-by-one, found by the breadth-first search itself (four epochs).
#[test]
fn hw_before_leader_change_committed_is_found_by_the_checker() {
    let steps = counterexample("hw-before-leader-change-committed");
    assert!(steps <= 45, "{steps} steps");
}

#[test]
fn commit_prior_epoch_lets_the_hw_go_backwards() {
    assert!(counterexample("commit-prior-epoch") <= 30);
    // (The correct protocol at these bounds, the default ones, is the default-bounds test.)
}

#[test]
fn no_diverging_epoch_breaks_log_matching() {
    assert!(counterexample("no-diverging-epoch") <= 20);
    // The leader also counts the follower's unvalidated fetch offset toward its HW.
    counterexample_of("no-diverging-epoch", "no-committed-data-loss");
}

#[test]
fn apply_uncommitted_breaks_observer_prefix() {
    counterexample("apply-uncommitted");
    holds_without_flag("apply-uncommitted");
}

#[test]
fn hw_beyond_log_end_breaks_hw_within_log() {
    assert!(counterexample("hw-beyond-log-end") <= 12);
    holds_without_flag("hw-beyond-log-end");
}

/// KAFKA-16281 (Jack Vanlightly, KIP-996 TLA+ model): a leader resigns, goes prospective in
/// its own epoch, and its followers reject the pre-vote naming it as leader.
#[test]
fn prospective_follows_itself_breaks_valid_quorum_state() {
    assert!(counterexample("prospective-follows-itself") <= 20);
    holds_without_flag("prospective-follows-itself");
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
    // `no-election-timeout` violates an always-can-reach property: its counterexample is a
    // state from which no leader can be elected, which replay cannot show as a violated
    // invariant of the last state (and `kcheck replay` would exit 0), so it has no file.
    for flag in model()
        .bug_flags()
        .iter()
        .filter(|f| f.name != "no-election-timeout")
    {
        let path = trace_path(flag.name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let trace: Trace = serde_json::from_str(&text).unwrap();
        assert_eq!(trace.bugs, vec![flag.name.to_string()]);
        assert_eq!(trace.property, flag.violates);
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
    let m = Kraft::from_config(&config(&[], &[("brokers".into(), 1)]));
    let mut s = m.initial_state();
    assert!(kraft::election_safety(&s));
    s.epoch_leaders[1] = kcheck_models::replication::BrokerSet::from_bits(0b011);
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
    s.voters[0].state = kraft::QuorumStateKind::Follower;
    s.voters[0].leader = Some(0);
    assert!(!kraft::valid_quorum_state(&s), "c0 follows itself");
    s.voters[0].leader = Some(1);
    assert!(kraft::valid_quorum_state(&s));
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
            &[
                ("records".into(), 2),
                ("epochs".into(), 3),
                ("brokers".into(), 1),
            ],
        )
        .unwrap();
    assert!((0..2000u64).any(|seed| model().random_walk(&cfg, seed, 200).is_err()));
}
