//! `kcheck analyze`: exit codes, results.json, history.edn, one-line verdicts.

use kcheck_harness::history::History;
use kcheck_harness::sim::{log_history, queue_history, SimConfig};
use std::path::Path;
use std::process::Command;

fn kcheck(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kcheck"))
        .args(args)
        .output()
        .expect("run kcheck");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn save(h: &History, path: &Path) {
    let mut buf = Vec::new();
    h.write(&mut buf).unwrap();
    std::fs::write(path, buf).unwrap();
}

#[test]
fn a_valid_run_folder_exits_0_and_writes_results_and_edn() {
    let dir = tempfile::tempdir().unwrap();
    save(
        &queue_history(&SimConfig::default()),
        &dir.path().join("history.jsonl"),
    );
    let (code, stdout, stderr) = kcheck(&["analyze", dir.path().to_str().unwrap(), "--edn"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("VALID"), "{stderr}");
    assert!(stdout.contains("queue:"), "{stdout}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap())
            .unwrap();
    assert_eq!(results["verdict"], "valid");
    assert!(std::fs::read_to_string(dir.path().join("report.html"))
        .unwrap()
        .contains("<svg"));
    assert!(std::fs::read_to_string(dir.path().join("history.edn"))
        .unwrap()
        .starts_with("{:index 0"));
}

#[test]
fn an_anomaly_exits_1_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("h.jsonl");
    let text = r#"{"index":0,"time":0,"type":"invoke","process":0,"f":"produce","value":{"partition":0,"value":7}}
{"index":1,"time":1,"type":"ok","process":0,"f":"produce","value":{"partition":0,"value":7,"offset":0}}
{"index":2,"time":2,"type":"invoke","process":1,"f":"read","value":{"partition":0,"offset":0}}
{"index":3,"time":3,"type":"ok","process":1,"f":"read","value":{"partition":0,"offset":0,"value":null}}
"#;
    std::fs::write(&file, text).unwrap();
    let (code, stdout, stderr) = kcheck(&["analyze", file.to_str().unwrap(), "--json"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("INVALID") && stderr.contains("partition 0"),
        "{stderr}"
    );
    let results: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        results["linearizability"]["partitions"][0]["first_illegal"]["invoke_index"],
        2
    );
    assert!(
        dir.path().join("results.json").exists(),
        "written beside the history"
    );
}

#[test]
fn bad_input_and_unknown_results_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"index\":0}\n").unwrap();
    let (code, _, stderr) = kcheck(&["analyze", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("line 1") && stderr.contains("harness/input failure"),
        "{stderr}"
    );
    let (code, _, stderr) = kcheck(&["analyze", dir.path().join("missing").to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    let big = dir.path().join("big.jsonl");
    save(
        &log_history(&SimConfig {
            ops: 20_000,
            partitions: 1,
            ..SimConfig::default()
        }),
        &big,
    );
    let (code, _, stderr) = kcheck(&["analyze", big.to_str().unwrap(), "--time-limit", "0"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("UNKNOWN") && stderr.contains("time limit"),
        "{stderr}"
    );
    let (code, _, _) = kcheck(&["analyze", big.to_str().unwrap(), "--time-limit", "-1"]);
    assert_eq!(code, 2);
}
