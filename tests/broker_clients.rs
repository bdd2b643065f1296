//! Real third-party Kafka clients against a freshly started `kcheck broker`.

mod broker_support;

use broker_support::{clients_dir, has_command, has_python_module, require, Broker};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};

fn run(cmd: &mut Command, stdin: Option<&str>) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().expect("client output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "client {cmd:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn python(script: &str, args: &[&str]) -> serde_json::Value {
    let out = run(
        Command::new("timeout")
            .arg("180")
            .arg("python3")
            .arg(clients_dir().join(script))
            .args(args),
        None,
    );
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("bad JSON from {script}: {e}: {out}"));
    assert!(v.get("error").is_none(), "{script} reported {v}");
    v
}

#[test]
fn kcat_produces_and_consumes() {
    if !require("kcat", has_command("kcat"), "apt-get install -y kcat") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--auto-create-topics"],
    );
    let input: String = (0..500)
        .map(|i| format!("key{}:value-{i}\n", i % 10))
        .collect();
    run(
        Command::new("timeout").args([
            "60",
            "kcat",
            "-P",
            "-b",
            &broker.addr,
            "-t",
            "kcat-topic",
            "-K:",
            "-X",
            "acks=all",
        ]),
        Some(&input),
    );
    let out = run(
        Command::new("timeout").args([
            "60",
            "kcat",
            "-C",
            "-b",
            &broker.addr,
            "-t",
            "kcat-topic",
            "-e",
            "-f",
            "%k:%s:%o\n",
        ]),
        None,
    );
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        lines.len(),
        500,
        "kcat consumed {} messages\n{}",
        lines.len(),
        broker.stderr()
    );
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(
            *l,
            format!("key{}:value-{i}:{i}", i % 10),
            "message {i} in order with offset {i}"
        );
    }
    // Consuming from a given offset (ListOffsets + Fetch from the middle of the log).
    let out = run(
        Command::new("timeout").args([
            "60",
            "kcat",
            "-C",
            "-b",
            &broker.addr,
            "-t",
            "kcat-topic",
            "-o",
            "490",
            "-e",
            "-f",
            "%o\n",
        ]),
        None,
    );
    assert_eq!(out.lines().count(), 10);
}

#[test]
fn confluent_kafka_group_resumes_after_restart_exactly_at_committed_offset() {
    if !require(
        "python confluent-kafka",
        has_python_module("confluent_kafka"),
        "pip install confluent-kafka",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = Broker::start(&data, "127.0.0.1:0", &[]);
    let addr = broker.addr.clone();
    let base = [
        "--bootstrap",
        addr.as_str(),
        "--topic",
        "orders",
        "--partitions",
        "3",
    ];
    let produced = python(
        "confluent_roundtrip.py",
        &[&["produce"][..], &base, &["--count", "10000"]].concat(),
    );
    assert_eq!(produced["produced"], 10000);
    let first = python(
        "confluent_roundtrip.py",
        &[&["consume"][..], &base, &["--limit", "4000"]].concat(),
    );
    let first_values: Vec<String> = serde_json::from_value(first["values"].clone()).unwrap();
    assert_eq!(first_values.len(), 4000);
    let committed: BTreeMap<String, i64> =
        serde_json::from_value(first["committed"].clone()).unwrap();
    // Crash the broker and restart it on the same port and data directory.
    broker.kill();
    let broker = Broker::start(&data, &addr, &[]);
    let second = python(
        "confluent_roundtrip.py",
        &[
            &["consume"][..],
            &base,
            &["--limit", "6000", "--drain", "3"],
        ]
        .concat(),
    );
    let second_values: Vec<String> = serde_json::from_value(second["values"].clone()).unwrap();
    let first_offsets: BTreeMap<String, i64> =
        serde_json::from_value(second["first_offsets"].clone()).unwrap();
    for (p, off) in &first_offsets {
        let c = committed.get(p).copied().filter(|&c| c >= 0).unwrap_or(0);
        assert_eq!(
            *off,
            c,
            "partition {p} resumed at {off}, committed {c}\n{}",
            broker.stderr()
        );
    }
    assert_eq!(second["extra"], 0, "no messages beyond the 10,000 produced");
    let all: HashSet<&String> = first_values.iter().chain(&second_values).collect();
    assert_eq!(
        first_values.len() + second_values.len(),
        10000,
        "no duplicates across the restart"
    );
    assert_eq!(
        all.len(),
        10000,
        "every produced message consumed exactly once"
    );
    assert!((0..10000).all(|i| all.contains(&format!("value-{i}"))));
}

#[test]
fn kafka_python_round_trip() {
    if !require(
        "python kafka-python",
        has_python_module("kafka"),
        "pip install kafka-python",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), "127.0.0.1:0", &[]);
    let v = python(
        "kafka_python_roundtrip.py",
        &[
            "--bootstrap",
            &broker.addr,
            "--topic",
            "kp",
            "--count",
            "200",
        ],
    );
    let values: HashSet<String> = serde_json::from_value(v["values"].clone()).unwrap();
    assert_eq!(values.len(), 200);
    assert!((0..200).all(|i| values.contains(&format!("v{i}"))));
    assert_eq!(
        v["committed_total"], 200,
        "committed offsets cover every message"
    );
}
