//! Model counterexamples replayed on real broker processes (issue 9): each trace's schedule
//! runs on a fresh KRaft cluster (one controller, three brokers on 127.0.0.1; four for the
//! reassignment traces) twice — with the trace's bug flag the cluster shows the model's
//! violation, named as the model names it; without it the same schedule shows no anomaly. The fastest traces only (a few seconds
//! each); `kcheck replay TRACE --against cluster` runs the others. The kraft traces run on three
//! controllers (and a broker for a model observer) instead, in well under a second each but
//! `apply-uncommitted` (about 3 s: the broker's metadata fetcher asks the voters in turn).

mod broker_support;

use kcheck_harness::replay_cluster::{replay, ReplayOptions, ReplayReport};
use kcheck_models::Trace;
use std::path::PathBuf;
use std::process::Command;

/// One cluster at a time: the machine has two cores shared with everything else.
static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn trace(name: &str) -> Trace {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("specs/traces")
        .join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Replays `name` with `bugs` switched on; the cluster's processes are stopped when the
/// replay returns (or panics: the process system is dropped on unwind).
fn run(name: &str, bugs: &[&str]) -> ReplayReport {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let opts = ReplayOptions {
        program: PathBuf::from(env!("CARGO_BIN_EXE_kcheck")),
        run_dir: dir.path().to_path_buf(),
        bugs: bugs.iter().map(|b| b.to_string()).collect(),
        verbose: false,
    };
    let report = replay(&trace(name), &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!("{}", report.text());
    report
}

/// With the flag: exit 1 and the trace's own property among the violations. Without it:
/// exit 0, no violation. Returns the run with the flag.
fn reproduces_only_with_the_flag(name: &str, flag: &str) -> ReplayReport {
    let t = trace(name);
    let with = run(name, &[flag]);
    assert_eq!(with.exit_code(), 1, "{name} --bug {flag}:\n{}", with.text());
    assert!(
        with.violations.iter().any(|v| v.property == t.property),
        "{name} --bug {flag} must violate {}:\n{}",
        t.property,
        with.text()
    );
    let without = run(name, &[]);
    assert_eq!(
        without.exit_code(),
        0,
        "{name} correct:\n{}",
        without.text()
    );
    assert!(without.violations.is_empty(), "{}", without.text());
    // The same schedule ran: every step is reported in both runs.
    assert_eq!(with.steps.len(), t.steps.len());
    assert_eq!(without.steps.len(), t.steps.len());
    with
}

#[test]
fn truncate_to_hw_loses_the_acknowledged_record_only_with_the_flag() {
    let with = reproduces_only_with_the_flag("replication-truncate-to-hw", "truncate-to-hw");
    // Kafka's terms: the acknowledged offset and value, and where it went.
    let v = &with.violations[0];
    assert!(
        v.detail.contains("offset 0 acknowledged as v1 (acks=all)") && v.detail.contains("lost"),
        "{v:?}"
    );
    // The model's step 8: b2 truncated to its HW (0) on becoming follower; every step ran.
    assert!(with.steps.iter().all(|s| s.happened), "{}", with.text());
}

#[test]
fn acks_1_loses_the_record_the_leader_alone_acknowledged() {
    let with = reproduces_only_with_the_flag("replication-acks-1", "acks-1");
    assert!(with.acknowledged.iter().all(|a| a.acks == 1));
}

#[test]
fn single_epoch_lookup_leaves_replicas_that_differ_below_the_hw() {
    let with =
        reproduces_only_with_the_flag("replication-single-epoch-lookup", "single-epoch-lookup");
    assert!(
        with.violations[0].detail.contains("below both HWs"),
        "{:?}",
        with.violations
    );
}

#[test]
fn last_replica_standing_reelects_the_replica_that_lost_its_unflushed_record() {
    // The unclean crash loses b1's unflushed record through LazyFs (root and /dev/fuse).
    if !broker_support::require(
        "LazyFs (root and /dev/fuse)",
        kcheck_harness::lazyfs::available().is_ok(),
        "run as root on a kernel with FUSE",
    ) {
        return;
    }
    let with = run(
        "replication-last-replica-standing",
        &["last-replica-standing"],
    );
    assert_eq!(with.exit_code(), 1, "{}", with.text());
    assert_eq!(with.violations[0].property, "no-committed-data-loss");
    // The healed cluster settles: b1, restarted after LazyFs dropped its unsynced files,
    // leads with the committed topic id and its AlterPartition is accepted (it was refused
    // with UNKNOWN_TOPIC_OR_PARTITION when partition.metadata was not fsynced).
    let consumed = with
        .consumed_after_heal
        .as_ref()
        .expect("healed and read back");
    assert!(!consumed.iter().any(|r| r.1 == 1), "{consumed:?}");
}

#[test]
fn no_broker_epoch_check_readds_the_killed_incarnation_only_with_the_flag() {
    // The unclean crash loses b1's unflushed record through LazyFs (root and /dev/fuse).
    if !broker_support::require(
        "LazyFs (root and /dev/fuse)",
        kcheck_harness::lazyfs::available().is_ok(),
        "run as root on a kernel with FUSE",
    ) {
        return;
    }
    let with =
        reproduces_only_with_the_flag("replication-no-broker-epoch-check", "no-broker-epoch-check");
    // b1's killed incarnation's Fetch (offset 1), handled after the restart, put the empty
    // b1 back in the ISR; b0's clean shutdown elected it.
    assert!(
        with.violations[0].detail.contains("leader b1"),
        "{:?}",
        with.violations
    );
}

#[test]
fn remove_before_caught_up_elects_the_adding_replica_that_holds_nothing() {
    let with = reproduces_only_with_the_flag(
        "reassignment-remove-before-caught-up",
        "remove-before-caught-up",
    );
    // The acknowledged record is gone from the new leader b3 (the broker the reassignment
    // added, which never fetched), and from the healed cluster.
    let v = &with.violations[0];
    assert!(
        v.detail.contains("offset 0 acknowledged as v1 (acks=all)")
            && v.detail.contains("leader b3")
            && v.detail.contains("lost"),
        "{v:?}"
    );
    assert!(with.steps.iter().all(|s| s.happened), "{}", with.text());
    let consumed = with.consumed_after_heal.as_ref().expect("healed");
    assert!(consumed.is_empty(), "{consumed:?}");
}

#[test]
fn leader_outside_target_stops_the_controller_at_its_own_assertion() {
    let with = reproduces_only_with_the_flag(
        "reassignment-leader-outside-target",
        "leader-outside-target",
    );
    assert!(
        with.violations[0]
            .detail
            .contains("the active controller refused its own metadata record"),
        "{:?}",
        with.violations
    );
}

#[test]
fn replace_from_grown_set_completes_without_the_added_replica_in_the_isr() {
    let with = reproduces_only_with_the_flag(
        "reassignment-replace-from-grown-set",
        "replace-from-grown-set",
    );
    assert!(
        with.violations[0].detail.contains("outside the ISR"),
        "{:?}",
        with.violations
    );
}

#[test]
fn no_leader_move_never_completes_on_the_healed_cluster() {
    reproduces_only_with_the_flag("reassignment-no-leader-move", "no-leader-move");
}

// ---- KRaft traces: three controllers held at every (peer, RPC) link ----------------------

#[test]
fn kraft_forget_vote_on_restart_elects_two_leaders_in_one_epoch_only_with_the_flag() {
    let with =
        reproduces_only_with_the_flag("kraft-forget-vote-on-restart", "forget-vote-on-restart");
    assert!(with.steps.iter().all(|s| s.happened), "{}", with.text());
    assert!(
        with.violations[0].detail.contains("[3001, 3002]")
            && with.violations[0].detail.contains("epoch 1"),
        "{:?}",
        with.violations
    );
}

#[test]
fn kraft_vote_ignores_log_elects_a_leader_without_the_committed_entry_only_with_the_flag() {
    let with = reproduces_only_with_the_flag("kraft-vote-ignores-log", "vote-ignores-log");
    assert!(with.steps.iter().all(|s| s.happened), "{}", with.text());
}

#[test]
fn kraft_no_diverging_epoch_leaves_logs_that_do_not_match_only_with_the_flag() {
    let with = reproduces_only_with_the_flag("kraft-no-diverging-epoch", "no-diverging-epoch");
    assert!(with.steps.iter().all(|s| s.happened), "{}", with.text());
}

#[test]
fn kraft_apply_uncommitted_broker_applies_beyond_the_quorum_hw_only_with_the_flag() {
    reproduces_only_with_the_flag("kraft-apply-uncommitted", "apply-uncommitted");
}

#[test]
fn cancel_keeps_adding_in_isr_is_refused_by_the_controller_on_a_padded_reassignment() {
    let with = reproduces_only_with_the_flag(
        "reassignment-cancel-keeps-adding-in-isr",
        "cancel-keeps-adding-in-isr",
    );
    // The pad: a fifth broker added in place of a kept replica, so the cancel finds the
    // reassignment in progress.
    assert_eq!(with.brokers.len(), 5, "{}", with.text());
    assert!(
        with.violations[0]
            .detail
            .contains("the active controller refused its own metadata record"),
        "{:?}",
        with.violations
    );
}

#[test]
fn traces_that_cannot_run_on_a_cluster_exit_2_with_the_reason() {
    let kcheck = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kcheck"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap()
    };
    // A KRaft model mutation the reference Raft has no flag for.
    let out = kcheck(&[
        "replay",
        "specs/traces/kraft-commit-prior-epoch.json",
        "--against",
        "cluster",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("mutation of the kraft model only"), "{err}");
    // A flag the trace was not recorded with.
    let out = kcheck(&[
        "replay",
        "specs/traces/replication-acks-1.json",
        "--against",
        "cluster",
        "--bug",
        "truncate-to-hw",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not this trace's flag"), "{err}");
    // An unknown target.
    let out = kcheck(&[
        "replay",
        "specs/traces/replication-acks-1.json",
        "--against",
        "zookeeper",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the only target is `cluster`"));
}

#[test]
fn the_test_control_endpoint_is_refused_off_loopback_and_outside_a_cluster() {
    let kcheck = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kcheck"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = kcheck(&[
        "broker",
        "--process-roles",
        "broker",
        "--node-id",
        "1",
        "--controller-quorum-voters",
        "3001@127.0.0.1:1",
        "--test-control",
        "0.0.0.0:7000",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not a loopback address"), "{err}");
    let out = kcheck(&["broker", "--test-control", "127.0.0.1:7000"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("needs --process-roles broker"), "{err}");
}
