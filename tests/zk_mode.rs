//! ZooKeeper mode for real (`specs/cluster-zookeeper.md`): `kcheck cluster up --metadata
//! zookeeper` starts a ZooKeeper ensemble and brokers that elect their controller through the
//! ephemeral `/controller` znode. kcat produces and consumes through it; `kill -9` of the
//! controller (which also leads the partition) makes another broker controller with the next
//! controller epoch, and the partition keeps serving every acknowledged record. A zombie
//! controller (SIGSTOP past its session timeout, then SIGCONT) has its stale requests refused
//! with STALE_CONTROLLER_EPOCH — and accepted under `--bug no-controller-epoch-check`, which
//! sends the metadata back in time.
//!
//! Skips with a notice without Java/ZooKeeper or kcat, unless `CI` is set.

mod broker_support;

use broker_support::{has_command, require};
use kcheck_reference::client::Client;
use kcheck_reference::cluster::{metadata, ClusterState};
use kcheck_reference::kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic,
};
use kcheck_reference::kafka_protocol::messages::{BrokerId, CreateTopicsRequest, TopicName};
use kcheck_reference::kafka_protocol::protocol::StrBytes;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn kcheck(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kcheck"))
        .args(args)
        .output()
        .expect("run kcheck")
}

static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Down<'a>(&'a Path);
impl Drop for Down<'_> {
    fn drop(&mut self) {
        if let Ok(s) = ClusterState::load(self.0) {
            s.stop_all(Duration::from_secs(5));
        }
    }
}

fn prerequisites() -> bool {
    broker_support::zookeeper_installed()
        && require("kcat", has_command("kcat"), "apt-get install -y kcat")
}

fn up(data: &Path, extra: &[&str]) -> (ClusterState, String) {
    let mut args = vec![
        "cluster",
        "up",
        "--metadata",
        "zookeeper",
        "--brokers",
        "3",
        "--data-dir",
        data.to_str().unwrap(),
        "--min-insync-replicas",
        "2",
    ];
    args.extend_from_slice(extra);
    let out = kcheck(&args);
    assert!(
        out.status.success(),
        "cluster up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bootstrap = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (ClusterState::load(data).unwrap(), bootstrap)
}

/// CreateTopics with a manual assignment (the first replica leads).
fn create_topic(addr: &str, topic: &str, replicas: &[i32]) {
    let mut c = Client::connect(addr).unwrap();
    c.stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(15_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_num_partitions(-1)
            .with_replication_factor(-1)
            .with_assignments(vec![CreatableReplicaAssignment::default()
                .with_partition_index(0)
                .with_broker_ids(
                    replicas.iter().map(|&b| BrokerId(b)).collect(),
                )])]);
    let r = c.request(5, &req).unwrap();
    assert_eq!(r.topics[0].error_code, 0, "CreateTopics: {r:?}");
}

fn produce(bootstrap: &str, topic: &str, values: std::ops::Range<u32>) {
    let mut p = Command::new("timeout")
        .args(["30", "kcat", "-b", bootstrap, "-t", topic, "-P", "-p", "0"])
        .args(["-X", "acks=all", "-X", "message.send.max.retries=20"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = p.stdin.take().unwrap();
    for v in values {
        writeln!(stdin, "m{v}").unwrap();
    }
    drop(stdin);
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kcat produce failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn consume(bootstrap: &str, topic: &str) -> Vec<String> {
    let out = Command::new("timeout")
        .args(["30", "kcat", "-b", bootstrap, "-t", topic, "-C", "-p", "0"])
        .args(["-o", "beginning", "-e", "-q"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// (leader, leader epoch) of `topic`-0 in `addr`'s Metadata.
fn leader_at(addr: &str, topic: &str) -> Option<(i32, i32)> {
    let m = metadata(addr).ok()?;
    let p = m
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == topic))?
        .partitions
        .first()?;
    Some((p.leader_id.0, p.leader_epoch))
}

/// Waits until every broker in `addrs` names a leader in `ok` for `topic`-0.
fn wait_leaders(addrs: &[String], topic: &str, ok: impl Fn(i32) -> bool) -> Vec<(i32, i32)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen: Vec<Option<(i32, i32)>> = addrs.iter().map(|a| leader_at(a, topic)).collect();
        if seen.iter().all(|s| s.is_some_and(|(l, _)| ok(l))) {
            return seen.into_iter().flatten().collect();
        }
        assert!(
            Instant::now() < deadline,
            "brokers' Metadata leaders for {topic}-0: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn kill_9_of_the_controller_elects_a_new_one_with_the_next_epoch_and_the_partition_keeps_serving() {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("zk-cluster");
    let _down = Down(&data);
    let (state, bootstrap) = up(&data, &["--zookeeper-servers", "3"]);
    assert_eq!(bootstrap.split(',').count(), 3);
    let status = kcheck(&[
        "cluster",
        "status",
        "--json",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let controller = status["zookeeper"]["controller"].as_i64().unwrap() as i32;
    assert_eq!(status["zookeeper"]["controller_epoch"], 1, "{status}");
    assert_eq!(
        status["zookeeper_connect"]
            .as_str()
            .unwrap()
            .split(',')
            .count(),
        3
    );

    // The controller leads the partition (ZooKeeper mode co-locates the two, as the models'
    // failover scenario does).
    let mut replicas = vec![controller];
    replicas.extend((1..=3).filter(|&b| b != controller));
    create_topic(&state.node(controller).unwrap().address, "zk", &replicas);
    produce(&bootstrap, "zk", 0..10);
    assert_eq!(consume(&bootstrap, "zk").len(), 10);
    // A balanced consumer group (FindCoordinator, JoinGroup, SyncGroup, OffsetCommit) too.
    let group = Command::new("timeout")
        .args([
            "30", "kcat", "-b", &bootstrap, "-G", "zk-group", "zk", "-e", "-q",
        ])
        .args(["-X", "auto.offset.reset=earliest"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&group.stdout).lines().count(),
        10,
        "{}",
        String::from_utf8_lossy(&group.stderr)
    );

    state.kill(controller).unwrap();
    let (next, epoch) = state
        .wait_zk_controller(Some(controller), Duration::from_secs(30))
        .unwrap();
    assert_ne!(next, controller);
    assert_eq!(epoch, 2, "the new controller bumps /controller_epoch once");
    let live: Vec<String> = state
        .brokers()
        .filter(|b| b.id != controller)
        .map(|b| b.address.clone())
        .collect();
    let leaders = wait_leaders(&live, "zk", |l| l != controller && l >= 0);
    assert!(leaders.iter().all(|&(_, e)| e >= 1), "{leaders:?}");
    let live_bootstrap = live.join(",");
    produce(&live_bootstrap, "zk", 10..20);
    let got = consume(&live_bootstrap, "zk");
    let want: Vec<String> = (0..20).map(|v| format!("m{v}")).collect();
    assert_eq!(
        got, want,
        "every acknowledged record, in order, after the failover"
    );

    // A ZooKeeper-side fault: kill -9 of the ensemble's leader. Two of three servers are a
    // quorum; the brokers' sessions move to them and the partition keeps serving.
    let zk_leader = state.zookeeper_leader().expect("the ensemble has a leader");
    state.kill_zookeeper(zk_leader).unwrap();
    produce(&live_bootstrap, "zk", 20..30);
    let got = consume(&live_bootstrap, "zk");
    let want: Vec<String> = (0..30).map(|v| format!("m{v}")).collect();
    assert_eq!(
        got, want,
        "after the ZooKeeper leader {zk_leader} was killed"
    );
    let (c, _) = state
        .wait_zk_controller(None, Duration::from_secs(30))
        .unwrap();
    assert_ne!(c, controller, "the killed broker cannot be controller");
}

/// The zombie: the controller `c` is paused past its session timeout while the partition's
/// leader `a` is killed; the last broker `b` becomes controller (epoch 2) and leader. The zombie
/// resumes and — test trigger SIGUSR1, see `ZkNode::resend_last` — its last LeaderAndIsr and
/// UpdateMetadata (epoch 1, naming `a`) reach `b` late. Returns `b`, the zombie's log line with
/// the answers it got, and the leader `b`'s Metadata names afterwards, with `a`.
fn zombie_run(bug: bool) -> (i32, String, i32, i32) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("zk-zombie");
    let _down = Down(&data);
    let mut extra = vec![
        "--zookeeper-servers",
        "1",
        "--zookeeper-session-timeout-ms",
        "1000",
    ];
    if bug {
        extra.extend(["--bug", "no-controller-epoch-check"]);
    }
    let (state, _) = up(&data, &extra);
    let (zombie, epoch) = state
        .wait_zk_controller(None, Duration::from_secs(30))
        .unwrap();
    assert_eq!(epoch, 1);
    let others: Vec<i32> = (1..=3).filter(|&b| b != zombie).collect();
    let (a, b) = (others[0], others[1]);
    let addr = |id: i32| state.node(id).unwrap().address.clone();
    create_topic(&addr(b), "z", &[a, b]);
    wait_leaders(&[addr(b)], "z", |l| l == a);

    state.pause(zombie).unwrap();
    state.kill(a).unwrap();
    let (controller, epoch) = state
        .wait_zk_controller(Some(zombie), Duration::from_secs(30))
        .unwrap();
    assert_eq!((controller, epoch), (b, 2));
    wait_leaders(&[addr(b)], "z", |l| l == b);

    let log = state.node(zombie).unwrap().log_file.clone();
    let pid = state.node(zombie).unwrap().pid as i32;
    // The trigger stays pending while the process is stopped and runs on SIGCONT.
    let sent = Command::new("kill")
        .args(["-USR1", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    state.resume(zombie).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let answers = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text
            .lines()
            .find(|l| l.contains("resent the last controller requests"))
        {
            break l.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the zombie never resent:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // The zombie notices its expired session and registers again; the controller's requests
    // that follow carry no state for `z` (nothing about it changes).
    state
        .wait_zk_controller(Some(zombie), Duration::from_secs(5))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let leader = leader_at(&addr(b), "z").map_or(-2, |x| x.0);
    // Whatever its Metadata says, b's replica still leads: only a leader answers ListOffsets
    // (the zombie's LeaderAndIsr carried an older leader epoch and was refused per partition).
    let hw = kcheck_reference::cluster::high_watermark(&addr(b), "z", 0);
    assert!(hw.is_ok(), "broker {b} no longer leads z-0: {hw:?}");
    (b, answers, leader, a)
}

/// The answers `[(broker, error code), ...]` the zombie logged, for broker `id`.
fn answers_of(line: &str, id: i32) -> Vec<i32> {
    let list = line.split("answers").nth(1).unwrap_or("");
    list.split(['(', ')'])
        .filter_map(|pair| {
            let (b, e) = pair.split_once(',')?;
            let b: i32 = b.trim().parse().ok()?;
            let e: i32 = e.trim().parse().ok()?;
            (b == id).then_some(e)
        })
        .collect()
}

#[test]
fn a_zombie_controllers_requests_are_refused_by_epoch_and_accepted_without_the_check() {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    if !prerequisites() {
        return;
    }
    // Correct protocol: the surviving broker answers STALE_CONTROLLER_EPOCH (11) to both
    // requests and keeps naming itself, the new controller's leader.
    let (b, answers, leader, _) = zombie_run(false);
    let got = answers_of(&answers, b);
    assert!(
        got.len() == 2 && got.iter().all(|&e| e == 11),
        "broker {b}: {answers}"
    );
    assert_eq!(leader, b);
    // no-controller-epoch-check: the broker obeys the zombie (single-effective-controller is
    // broken) and the zombie's UpdateMetadata — the metadata cache has no leader-epoch check —
    // sends its Metadata back to the dead old leader (partition-state-consistent is broken):
    // clients are pointed at a broker that is gone while `b` leads.
    let (b, answers, leader, a) = zombie_run(true);
    let got = answers_of(&answers, b);
    assert!(
        got.len() == 2 && got.iter().all(|&e| e == 0),
        "broker {b}: {answers}"
    );
    assert_eq!(leader, a, "broker {b} names the zombie's stale leader");
}

#[test]
fn bad_zookeeper_arguments_exit_2_naming_the_fix() {
    let out = kcheck(&["broker", "--zookeeper", "nowhere"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HOST:PORT"));
    let out = kcheck(&["broker", "--bug", "no-controller-epoch-check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--zookeeper"));
    let out = kcheck(&[
        "broker",
        "--zookeeper",
        "127.0.0.1:1",
        "--process-roles",
        "broker",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KRaft"));
}

#[test]
fn compare_real_measures_a_failover_in_both_modes() {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("compare");
    let out = kcheck(&[
        "compare",
        "controller-failover",
        "--real",
        "--runs",
        "1",
        "--json",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let real = v["real"].as_array().unwrap();
    let modes: Vec<&str> = real.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["zookeeper", "kraft"]);
    for r in real {
        assert_eq!(r["failover_ms"].as_array().unwrap().len(), 1, "{r}");
        assert!(r["median_ms"].as_u64().unwrap() > 0, "{r}");
    }
    // The model column sits beside it.
    assert_eq!(v["failover"][0]["steps"], 4);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("zookeeper run 1") && stderr.contains("kraft run 1"),
        "{stderr}"
    );
    // Every process the runs started is gone.
    for mode in ["zookeeper-mode", "kraft-mode"] {
        let s = ClusterState::load(&data.join(mode)).unwrap();
        let mut pids: Vec<u32> = s.nodes.iter().map(|n| n.pid).collect();
        pids.extend(
            s.zookeeper
                .iter()
                .flat_map(|z| z.servers.iter().map(|x| x.pid)),
        );
        assert!(
            pids.iter()
                .all(|&p| !kcheck_reference::cluster::pid_alive(p)),
            "{mode}: {pids:?}"
        );
    }
}

#[test]
fn compare_runs_without_real_is_refused() {
    let out = kcheck(&["compare", "controller-failover", "--runs", "2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--real"));
}
