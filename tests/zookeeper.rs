//! `kcheck test --system zookeeper` end to end against a real Apache ZooKeeper 3.8 ensemble
//! (Debian's `zookeeper`): a short register run under kill, pause and partition faults is valid and records what
//! the checkers need; a short election run is valid; with the `no-epoch-fence` bug flag the
//! election checker finds the zombie controller's obeyed write once the controller's session
//! has expired under a client partition; bad arguments exit 2. Skips with a notice when
//! ZooKeeper is not installed, unless `CI` is set (`.ci/run` installs it).

mod broker_support;

use broker_support::zookeeper_installed as installed;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// One ensemble at a time: three JVMs per run are already a lot for a two-core machine.
static ENSEMBLES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn kcheck_test(store: &Path, args: &[&str]) -> Output {
    let _one = ENSEMBLES.lock().unwrap_or_else(|e| e.into_inner());
    Command::new(env!("CARGO_BIN_EXE_kcheck"))
        .args(["test", "--system", "zookeeper", "--store"])
        .arg(store)
        .args(args)
        .output()
        .expect("kcheck runs")
}

fn run_dir(store: &Path) -> PathBuf {
    let dirs: Vec<_> = std::fs::read_dir(store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

fn results(dir: &Path) -> Json {
    serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap()
}

fn history_fs(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join("history.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let j: Json = serde_json::from_str(l).unwrap();
            (
                j["f"].as_str().unwrap().to_string(),
                j["type"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn register_run_under_faults_is_valid() {
    if !installed() {
        return;
    }
    let store = tempfile::tempdir().unwrap();
    let out = kcheck_test(
        store.path(),
        &[
            "--workload",
            "register",
            // Not `clock`: libfaketime re-reading its offset file on every clock call makes
            // the JVMs spend most of their time in the kernel (see specs/zookeeper.md).
            "--nemesis",
            "kill,pause,partition",
            "--time-limit",
            "12",
            "--nemesis-interval",
            "1.5",
            "--seed",
            "3",
        ],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("kcheck test: VALID"), "{t}");
    let dir = run_dir(store.path());
    let r = results(&dir);
    assert_eq!(r["verdict"], "valid");
    let fs = history_fs(&dir);
    for f in ["write", "cas", "read-sync", "read-nosync"] {
        assert!(
            fs.iter().any(|(g, ty)| g == f && ty == "ok"),
            "no ok {f} in the history: {t}"
        );
    }
    assert!(
        fs.iter().any(|(f, _)| f.starts_with("start-")),
        "no fault: {t}"
    );
    assert!(fs.iter().any(|(f, _)| f == "heal"));
    // Every server wrote its own log in the run folder.
    for id in 1..=3 {
        assert!(dir.join(format!("zk-{id}/zookeeper.log")).exists());
    }
    assert!(r["register"]["synced_reads"]["reads"].as_u64().unwrap() > 0);
}

#[test]
fn election_run_is_valid_and_the_unfenced_zombie_is_caught() {
    if !installed() {
        return;
    }
    // The correct protocol: a partition isolates the controller's client until its session
    // expires; the zombie's writes on its old epoch are fenced.
    let store = tempfile::tempdir().unwrap();
    let args = [
        "--workload",
        "election",
        "--nemesis",
        "partition",
        "--time-limit",
        "14",
        "--nemesis-interval",
        "3",
        "--seed",
        "1",
    ];
    let out = kcheck_test(store.path(), &args);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    let r = results(&run_dir(store.path()));
    assert_eq!(r["verdict"], "valid");
    assert!(
        r["election"]["elections"].as_array().unwrap().len() >= 1,
        "{t}"
    );

    // Without KAFKA-6082's fence, the same schedule's zombie is obeyed.
    let store = tempfile::tempdir().unwrap();
    let mut bug = args.to_vec();
    bug.extend(["--bug", "no-epoch-fence"]);
    let out = kcheck_test(store.path(), &bug);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("no-stale-epoch-action"), "{t}");
}

#[test]
fn bad_arguments_exit_2() {
    let store = tempfile::tempdir().unwrap();
    let out = kcheck_test(
        store.path(),
        &["--bug", "no-such-flag", "--workload", "election"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("unknown bug flag 'no-such-flag'"),
        "{}",
        text(&out)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kcheck"))
        .args(["test", "--workload", "election"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("--system zookeeper"), "{}", text(&out));
}
