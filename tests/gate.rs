//! `kcheck gate`: passes when every property holds, fails (exit 1, a JUnit failure carrying
//! the counterexample) when a bug flag breaks one, and refuses bad arguments (exit 2).

use std::process::{Command, Output};

fn gate(dir: &std::path::Path, args: &[&str]) -> (Output, String) {
    let junit = dir.join("gate.xml");
    let o = Command::new(env!("CARGO_BIN_EXE_kcheck"))
        .args([
            "gate",
            "-q",
            "--bounds",
            "default",
            "--model",
            "replication",
            "--junit",
        ])
        .arg(&junit)
        .args(args)
        .output()
        .expect("kcheck runs");
    let xml = std::fs::read_to_string(&junit).unwrap_or_default();
    (o, xml)
}

#[test]
fn the_gate_passes_a_correct_model_and_writes_junit() {
    let dir = tempfile::tempdir().unwrap();
    let (o, xml) = gate(dir.path(), &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("gate PASSED"));
    assert!(
        xml.contains(r#"<testsuite name="model replication""#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"failures="0""#) && xml.contains(r#"errors="0""#),
        "{xml}"
    );
    assert!(xml.contains(r#"<testcase name="no-committed-data-loss""#));
}

#[test]
fn the_gate_fails_on_a_violation_with_the_counterexample_in_junit() {
    let dir = tempfile::tempdir().unwrap();
    let (o, xml) = gate(dir.path(), &["--bug", "replication:acks-1"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("gate FAILED: replication/no-committed-data-loss violated"),
        "{out}"
    );
    assert!(xml.contains(r#"failures="1""#), "{xml}");
    assert!(xml.contains("<failure"), "{xml}");
    assert!(
        xml.contains("initial state"),
        "the trace is in the report: {xml}"
    );
}

#[test]
fn the_gate_refuses_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    for (args, expected) in [
        (&["--bug", "replication"][..], "--bug takes MODEL:FLAG"),
        (
            &["--bug", "replication:nope"][..],
            "unknown bug flag 'nope'",
        ),
        (&["--bug", "paxos:x"][..], "unknown model 'paxos'"),
    ] {
        let (o, _) = gate(dir.path(), args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

/// The gate's seeded harness runs (`--harness-runs quick`: one `kcheck test` per workload
/// against the reference cluster under kills, pauses and partitions) join the JUnit report as their own
/// suite, one case per run, and a correct cluster passes them.
#[test]
fn the_gate_runs_the_seeded_harness_runs_as_a_junit_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (o, xml) = gate(
        dir.path(),
        &[
            "--harness-runs",
            "quick",
            "--harness-store",
            store.to_str().unwrap(),
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        xml.contains(r#"<testsuite name="harness runs""#),
        "{out}{xml}"
    );
    assert!(
        xml.contains(r#"<testcase name="queue seed 1 (10 s, kill, pause, partition)""#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<testcase name="log seed 1 (10 s, kill, pause, partition)""#),
        "{xml}"
    );
    assert!(out.contains("harness runs: 2 (quick)"), "{out}");
    assert_eq!(
        o.status.code(),
        Some(0),
        "a correct cluster passes: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        std::fs::read_dir(&store).unwrap().count(),
        2,
        "two run folders"
    );
}
