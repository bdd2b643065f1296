//! A real cluster: `kcheck cluster up` starts three controller and three broker processes
//! on 127.0.0.1; a confluent-kafka producer with acks=all runs while the partition leader is
//! killed with SIGKILL; a new leader comes from the ISR and every acknowledged message is read
//! back afterwards.

mod broker_support;

use broker_support::{clients_dir, has_python_module, require};
use kcheck_reference::cluster::{metadata, ClusterState};
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn kcheck(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kcheck"))
        .args(args)
        .output()
        .expect("run kcheck")
}

/// One cluster at a time: each test starts up to nine processes, and the machine has two
/// cores shared with everything else.
static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_cluster() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner())
}

/// Stops the cluster even when an assertion fails.
struct Down<'a>(&'a Path);
impl Drop for Down<'_> {
    fn drop(&mut self) {
        if let Ok(s) = ClusterState::load(self.0) {
            s.stop_all(Duration::from_secs(5));
        }
    }
}

fn failover_script(phase: &str, bootstrap: &str, extra: &[&str]) -> Command {
    let mut c = Command::new("timeout");
    c.arg("120")
        .arg("python3")
        .arg(clients_dir().join("cluster_failover.py"))
        .args([phase, "--bootstrap", bootstrap])
        .args(extra);
    c
}

fn last_json(out: &str) -> serde_json::Value {
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line in client output:\n{out}"));
    serde_json::from_str(line).unwrap()
}

#[test]
fn kill_9_of_the_partition_leader_loses_no_acknowledged_message() {
    let _one = one_cluster();
    if !require(
        "python3 confluent-kafka",
        has_python_module("confluent_kafka"),
        "python3 -m pip install confluent-kafka",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cluster");
    let data_s = data.to_str().unwrap();
    let _down = Down(&data);
    let up = kcheck(&[
        "cluster",
        "up",
        "--brokers",
        "3",
        "--controllers",
        "3",
        "--data-dir",
        data_s,
        "--min-insync-replicas",
        "2",
        "--replica-lag-time-max-ms",
        "3000",
    ]);
    assert!(
        up.status.success(),
        "cluster up failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let bootstrap = String::from_utf8_lossy(&up.stdout).trim().to_owned();
    assert_eq!(bootstrap.split(',').count(), 3, "{bootstrap}");
    let state = ClusterState::load(&data).unwrap();

    let out = failover_script("create", &bootstrap, &[]).output().unwrap();
    let created = last_json(&String::from_utf8_lossy(&out.stdout));
    assert!(created["created"].is_string(), "{created}");

    let mut producer = failover_script(
        "produce",
        &bootstrap,
        &["--count", "3000", "--rate", "1000"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(producer.stdout.take().unwrap()).lines();
    let mut output = String::new();
    // Let about a third be acknowledged, then kill -9 the leader.
    for line in lines.by_ref() {
        let line = line.unwrap();
        output.push_str(&line);
        output.push('\n');
        if line.starts_with("acked 1000") {
            break;
        }
    }
    let m = metadata(state.brokers().next().unwrap().address.as_str()).unwrap();
    let p = &m.topics[0].partitions[0];
    let (old_leader, old_isr) = (p.leader_id.0, p.isr_nodes.clone());
    state.kill(old_leader).unwrap();
    for line in lines {
        output.push_str(&line.unwrap());
        output.push('\n');
    }
    assert!(producer.wait().unwrap().success());
    let produced = last_json(&output);
    let acked: HashSet<String> = produced["acked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(produced["undelivered"], 0, "{}", produced["failures"]);
    assert_eq!(acked.len(), 3000, "the producer kept going after retrying");

    // A new leader from the old ISR.
    let survivor = state
        .brokers()
        .find(|b| b.id != old_leader)
        .unwrap()
        .address
        .clone();
    let m = metadata(&survivor).unwrap();
    let p = &m.topics[0].partitions[0];
    assert_ne!(p.leader_id.0, old_leader);
    assert!(
        old_isr.contains(&p.leader_id),
        "leader {:?} not from ISR {old_isr:?}",
        p.leader_id
    );

    let out = failover_script("consume", &bootstrap, &[])
        .output()
        .unwrap();
    let consumed = last_json(&String::from_utf8_lossy(&out.stdout));
    let read: HashSet<String> = consumed["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let lost: Vec<&String> = acked.difference(&read).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );

    // The killed broker restarts (new broker epoch), truncates or catches up as a follower
    // and is added back to the ISR by an AlterPartition carrying its new epoch (KIP-903).
    let mut state = state;
    state.restart(old_leader).unwrap();
    state.save(&data).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = metadata(&survivor).unwrap();
        if m.topics[0].partitions[0].isr_nodes.len() == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "restarted broker {old_leader} never rejoined the ISR"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // status --json names the nodes, the quorum leader and the partition.
    let status = kcheck(&["cluster", "status", "--data-dir", data_s, "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(status["quorum_leader"].as_i64().unwrap() > 3000);
    assert_eq!(status["nodes"].as_array().unwrap().len(), 6);
    assert_eq!(status["partitions"][0]["leader"], p.leader_id.0);
    let down = kcheck(&["cluster", "down", "--data-dir", data_s]);
    assert!(down.status.success());
    assert!(state
        .nodes
        .iter()
        .all(|n| !kcheck_reference::cluster::pid_alive(n.pid)));
}

#[test]
fn cluster_commands_refuse_bad_input_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = kcheck(&["cluster", "status", "--data-dir", d]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("kcheck cluster up --data-dir"));
    let out = kcheck(&["cluster", "up", "--data-dir", d, "--bug", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown bug flag 'nope'") && err.contains("truncate-to-hw"),
        "{err}"
    );
    let out = kcheck(&["broker", "--bug", "truncate-to-hw"]);
    assert_eq!(out.status.code(), Some(2), "a bug flag needs cluster mode");
    // The reference Raft's mutations go to the role that runs them: a voter's to controllers,
    // an observer's to brokers.
    assert!(err.contains("vote-twice-in-epoch"), "{err}");
    let broker_only = |bug: &str| {
        kcheck(&[
            "broker",
            "--process-roles",
            "broker",
            "--node-id",
            "1",
            "--controller-quorum-voters",
            "3001@127.0.0.1:1",
            "--bug",
            bug,
        ])
    };
    let out = broker_only("vote-twice-in-epoch");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is a controller choice"), "{err}");
    let out = kcheck(&[
        "broker",
        "--process-roles",
        "controller",
        "--node-id",
        "3001",
        "--controller-listen",
        "127.0.0.1:1",
        "--controller-quorum-voters",
        "3001@127.0.0.1:1",
        "--bug",
        "apply-uncommitted",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is a broker choice"), "{err}");
}

#[test]
fn a_cluster_starts_with_the_reference_rafts_mutations_switched_on() {
    let _one = one_cluster();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("c");
    let d = d.to_str().unwrap();
    let up = kcheck(&[
        "cluster",
        "up",
        "--brokers",
        "1",
        "--controllers",
        "1",
        "--data-dir",
        d,
        "--bug",
        "forget-vote-on-restart",
        "--bug",
        "apply-uncommitted",
    ]);
    let state = std::fs::read_to_string(dir.path().join("c/cluster.json"));
    let down = kcheck(&["cluster", "down", "--data-dir", d]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(down.status.success());
    // Each flag reached the role that runs it.
    let state: serde_json::Value = serde_json::from_str(&state.unwrap()).unwrap();
    let args = |role: &str| -> String {
        state["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["role"].as_str().is_some_and(|r| r.contains(role)))
            .map(|n| n["args"].to_string())
            .collect()
    };
    assert!(
        args("controller").contains("forget-vote-on-restart"),
        "{state}"
    );
    assert!(!args("controller").contains("apply-uncommitted"), "{state}");
    assert!(args("broker").contains("apply-uncommitted"), "{state}");
}

/// AlterPartitionReassignments v0 for partition 0 of `topic`, sent to any broker (which
/// forwards it to the active controller); returns the top-level and partition error codes.
fn reassign(addr: &str, topic: &str, replicas: &[i32]) -> (i16, i16) {
    use kcheck_reference::kafka_protocol::messages::alter_partition_reassignments_request::{
        ReassignablePartition, ReassignableTopic,
    };
    use kcheck_reference::kafka_protocol::messages::*;
    use kcheck_reference::kafka_protocol::protocol::StrBytes;
    let req = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![ReassignableTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partitions(vec![ReassignablePartition::default()
                .with_partition_index(0)
                .with_replicas(Some(
                    replicas.iter().map(|&b| BrokerId(b)).collect(),
                ))])]);
    let mut c = kcheck_reference::client::Client::connect(addr).unwrap();
    let r = c.request(0, &req).unwrap();
    let p = r
        .responses
        .first()
        .and_then(|t| t.partitions.first())
        .map_or(-1, |p| p.error_code);
    (r.error_code, p)
}

#[test]
fn reassignment_to_three_other_brokers_under_load_loses_nothing() {
    let _one = one_cluster();
    if !require(
        "python3 confluent-kafka",
        has_python_module("confluent_kafka"),
        "python3 -m pip install confluent-kafka",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cluster");
    let data_s = data.to_str().unwrap();
    let _down = Down(&data);
    let up = kcheck(&[
        "cluster",
        "up",
        "--brokers",
        "6",
        "--controllers",
        "3",
        "--data-dir",
        data_s,
        "--min-insync-replicas",
        "2",
    ]);
    assert!(
        up.status.success(),
        "cluster up failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let bootstrap = String::from_utf8_lossy(&up.stdout).trim().to_owned();
    let state = ClusterState::load(&data).unwrap();
    let out = failover_script("create", &bootstrap, &["--topic", "moving"])
        .output()
        .unwrap();
    assert!(last_json(&String::from_utf8_lossy(&out.stdout))["created"].is_string());
    let any = state.brokers().next().unwrap().address.clone();
    let m = metadata(&any).unwrap();
    let from: Vec<i32> = m.topics[0].partitions[0]
        .replica_nodes
        .iter()
        .map(|b| b.0)
        .collect();
    let to: Vec<i32> = (1..=6).filter(|b| !from.contains(b)).collect();
    assert_eq!(to.len(), 3);

    let mut producer = failover_script(
        "produce",
        &bootstrap,
        &["--topic", "moving", "--count", "3000", "--rate", "600"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(producer.stdout.take().unwrap()).lines();
    let mut output = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        output.push_str(&line);
        output.push('\n');
        if line.starts_with("acked 500") {
            break;
        }
    }
    assert_eq!(reassign(&any, "moving", &to), (0, 0));
    // The reassignment completes while the producer runs: replicas become the target.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = metadata(&any).unwrap();
        let p = &m.topics[0].partitions[0];
        let mut replicas: Vec<i32> = p.replica_nodes.iter().map(|b| b.0).collect();
        replicas.sort_unstable();
        if replicas == to && to.contains(&p.leader_id.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reassignment did not complete: {p:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for line in lines {
        output.push_str(&line.unwrap());
        output.push('\n');
    }
    assert!(producer.wait().unwrap().success());
    let produced = last_json(&output);
    assert_eq!(produced["undelivered"], 0, "{}", produced["failures"]);
    let acked: HashSet<String> = produced["acked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(acked.len(), 3000);
    // Only the new replicas serve the partition now; every acknowledged message is there.
    let target_bootstrap: Vec<String> = state
        .brokers()
        .filter(|b| to.contains(&b.id))
        .map(|b| b.address.clone())
        .collect();
    let out = failover_script(
        "consume",
        &target_bootstrap.join(","),
        &["--topic", "moving"],
    )
    .output()
    .unwrap();
    let consumed = last_json(&String::from_utf8_lossy(&out.stdout));
    let read: HashSet<String> = consumed["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let lost: Vec<&String> = acked.difference(&read).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

/// One acks=all produce of a one-record batch to partition 0; the error code.
fn produce_acks_all(addr: &str, topic: &str) -> i16 {
    use kcheck_reference::kafka_protocol::messages::produce_request::{
        PartitionProduceData, TopicProduceData,
    };
    use kcheck_reference::kafka_protocol::messages::*;
    use kcheck_reference::kafka_protocol::protocol::StrBytes;
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(3000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(
                    kcheck_reference::batch::build(0, 1, 8, 0).into(),
                ))])]);
    let Ok(mut c) = kcheck_reference::client::Client::connect(addr) else {
        return -1;
    };
    c.request(9, &req)
        .map_or(-1, |r| r.responses[0].partition_responses[0].error_code)
}

#[test]
fn a_paused_follower_leaves_the_isr_and_rejoins_after_sigcont() {
    let _one = one_cluster();
    use kcheck_reference::kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kcheck_reference::kafka_protocol::messages::*;
    use kcheck_reference::kafka_protocol::protocol::StrBytes;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cluster");
    let data_s = data.to_str().unwrap();
    let _down = Down(&data);
    let up = kcheck(&[
        "cluster",
        "up",
        "--brokers",
        "3",
        "--controllers",
        "1",
        "--data-dir",
        data_s,
        "--replica-lag-time-max-ms",
        "1000",
    ]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let state = ClusterState::load(&data).unwrap();
    let any = state.brokers().next().unwrap().address.clone();
    let create = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("paused")))
            .with_num_partitions(1)
            .with_replication_factor(3)]);
    let r = kcheck_reference::client::Client::connect(&any)
        .unwrap()
        .request(7, &create)
        .unwrap();
    assert_eq!(r.topics[0].error_code, 0);
    let wait_isr = |ask: &str, want: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let m = metadata(ask).unwrap();
            let Some(p) = m.topics.first().and_then(|t| t.partitions.first()) else {
                // The broker has not applied the topic's records yet.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            if p.leader_id.0 >= 0 && p.isr_nodes.len() == want {
                let leader = state.node(p.leader_id.0).unwrap().address.clone();
                let follower = p
                    .isr_nodes
                    .iter()
                    .map(|b| b.0)
                    .find(|&b| b != p.leader_id.0);
                return (leader, follower);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ISR never reached {want} members: {p:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (leader, follower) = wait_isr(&any, 3);
    let follower = follower.unwrap();
    let mut errors = Vec::new();
    for _ in 0..20 {
        errors.push(produce_acks_all(&leader, "paused"));
    }
    // SIGSTOP a follower: acks=all stalls until the leader drops it from the ISR
    // (replica.lag.time.max.ms = 1 s), then goes on with two in-sync replicas.
    state.pause(follower).unwrap();
    // (Metadata from the leader: the paused broker answers nothing.)
    wait_isr(&leader, 2);
    assert_eq!(produce_acks_all(&leader, "paused"), 0);
    state.resume(follower).unwrap();
    wait_isr(&leader, 3);
    assert_eq!(produce_acks_all(&leader, "paused"), 0);
    assert!(errors.iter().all(|&e| e == 0), "{errors:?}");
}
