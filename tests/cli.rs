//! The `kcheck` command line: exit codes, messages for bad input, JSON output, replay.

use std::process::{Command, Output};

fn kcheck(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kcheck"))
        .args(args)
        .output()
        .expect("kcheck runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn unknown_model_exits_2_and_lists_the_models() {
    for sub in ["check", "explore"] {
        let o = kcheck(&[sub, "paxos"]);
        assert_eq!(o.status.code(), Some(2));
        assert!(
            stderr(&o).contains("unknown model 'paxos' (known: replication"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn unknown_bug_flag_exits_2_and_lists_the_flags() {
    let o = kcheck(&["check", "replication", "--bug", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown bug flag 'nope' for model replication (known: truncate-to-hw")
    );
}

#[test]
fn bad_bounds_exit_2() {
    let o = kcheck(&["check", "replication", "--records", "99"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("bound 'records' of model replication must be between"));
    let o = kcheck(&["check", "replication", "--records", "x"]);
    assert_eq!(o.status.code(), Some(2));
    let o = kcheck(&["check", "replication", "--no-such-bound", "1"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn models_lists_invariants_and_bug_flags_as_json() {
    let o = kcheck(&["models", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let replication = v
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "replication")
        .unwrap();
    let props: Vec<&str> = replication["properties"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in [
        "no-committed-data-loss",
        "replica-log-consistency",
        "consumed-records-stable",
        "leader-in-isr",
        "isr-subset-of-replicas",
    ] {
        assert!(props.contains(&name), "{name}");
    }
    assert!(replication["bug_flags"].as_array().unwrap().len() >= 5);
    let text = stdout(&kcheck(&["models"]));
    assert!(text.contains("no-committed-data-loss") && text.contains("truncate-to-hw"));
}

#[test]
fn a_bug_flag_exits_1_with_a_numbered_counterexample_and_writes_the_trace() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let o = kcheck(&[
        "check",
        "replication",
        "--bug",
        "acks-1",
        "--epochs",
        "2",
        "--trace-out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("violated     no-committed-data-loss"),
        "{text}"
    );
    assert!(
        text.contains("  1. producer sends m0@e1 (acks=1) to leader b0"),
        "{text}"
    );
    let replay = kcheck(&["replay", out.to_str().unwrap()]);
    assert_eq!(replay.status.code(), Some(1));
    assert!(stdout(&replay).contains("the last state violates: no-committed-data-loss"));
}

#[test]
fn the_correct_model_exits_0_with_json() {
    let o = kcheck(&[
        "check",
        "replication",
        "--records",
        "1",
        "--epochs",
        "2",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["complete"], true);
    assert!(v["unique_states"].as_u64().unwrap() > 100);
}

#[test]
fn state_limit_gives_unknown_exit_2() {
    let o = kcheck(&["check", "replication", "--max-states", "100"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("result unknown"));
}

#[test]
fn replay_rejects_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let o = kcheck(&["replay", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read"));
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "{not json").unwrap();
    let o = kcheck(&["replay", garbage.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("is not a kcheck trace"));
}

#[test]
fn recorded_traces_replay_from_the_cli() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/specs/traces");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let o = kcheck(&["replay", path.to_str().unwrap()]);
            assert_eq!(
                o.status.code(),
                Some(1),
                "{}: {}",
                path.display(),
                stderr(&o)
            );
            n += 1;
        }
    }
    assert!(n >= 5);
}

#[test]
fn explore_refuses_a_busy_port() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let o = kcheck(&["explore", "replication", "--listen", &addr]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot listen on"));
}

#[test]
fn explore_serves_the_model_on_loopback() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kcheck"))
        .args(["explore", "replication", "--listen", &addr])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut body = String::new();
    for _ in 0..50 {
        if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
            use std::io::{Read, Write};
            s.write_all(b"GET /.states/0 HTTP/1.0\r\nHost: x\r\n\r\n")
                .unwrap();
            s.read_to_string(&mut body).unwrap();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        body.contains("producer sends m0@e1 (acks=all) to leader b0"),
        "{body}"
    );
}

#[test]
fn bench_prints_figures_and_rejects_unknown_models() {
    let o = kcheck(&["bench", "nope", "--threads", "2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown model 'nope'"));
    let o = kcheck(&["bench", "replication", "--threads", "2", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let row = &v[0];
    assert_eq!(row["model"], "replication");
    assert!(row["unique_states"].as_u64().unwrap() > 1_000_000);
    assert!(row["states_per_second"].as_f64().unwrap() > 0.0);
}
