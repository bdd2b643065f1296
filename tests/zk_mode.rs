//! ZooKeeper mode for real (`specs/cluster-zookeeper.md`): `kcheck cluster up --metadata
//! zookeeper` starts a ZooKeeper ensemble and brokers that elect their controller through the
//! ephemeral `/controller` znode. kcat produces and consumes through it; `kill -9` of the
//! controller (which also leads the partition) makes another broker controller with the next
//! controller epoch, and the partition keeps serving every acknowledged record. A zombie
//! controller (SIGSTOP past its session timeout, then SIGCONT) has its stale requests refused
//! with STALE_CONTROLLER_EPOCH — and accepted under `--bug no-controller-epoch-check`, which
//! sends the metadata back in time. A zombie controller finishing the event it had in hand on
//! its new session (the zombie window, lined up with the test hold) is fenced by the
//! `/controller_epoch` check — and without both checks elects a second leader in one leader
//! epoch.
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

/// Waits (bounded) for a line of `id`'s log containing `needle` after the first `skip` bytes;
/// returns the line and the log's length then.
fn wait_log(state: &ClusterState, id: i32, skip: usize, needle: &str) -> (String, usize) {
    let log = state.node(id).unwrap().log_file.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text
            .get(skip..)
            .unwrap_or("")
            .lines()
            .find(|l| l.contains(needle))
        {
            return (l.to_owned(), text.len());
        }
        assert!(
            Instant::now() < deadline,
            "broker {id} never logged {needle:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(state: &ClusterState, id: i32, sig: &str) {
    let pid = state.node(id).unwrap().pid.to_string();
    assert!(Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

/// acks=all produce of `value` to partition 0 on `addr` itself (not routed by Metadata): the
/// partition's error code (0: acknowledged), or -1 without an answer.
fn produce_to(addr: &str, topic: &str, value: u64) -> i16 {
    use kcheck_reference::kafka_protocol::messages::produce_request::{
        PartitionProduceData, TopicProduceData,
    };
    use kcheck_reference::kafka_protocol::messages::ProduceRequest;
    let Ok(mut c) = Client::connect(addr) else {
        return -1;
    };
    let _ = c.stream.set_read_timeout(Some(Duration::from_secs(10)));
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(kcheck_harness::kafka::encode_value(value)))])]);
    c.request(9, &req)
        .map_or(-1, |r| r.responses[0].partition_responses[0].error_code)
}

/// The values `addr` serves from partition 0 (up to its HW), if it answers as leader.
fn values_on(addr: &str, topic: &str) -> Option<Vec<u64>> {
    use kcheck_reference::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kcheck_reference::kafka_protocol::messages::FetchRequest;
    let mut c = Client::connect(addr).ok()?;
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let r = c.request(11, &req).ok()?;
    let p = &r.responses[0].partitions[0];
    if p.error_code != 0 {
        return None;
    }
    let values = match &p.records {
        Some(b) => kcheck_harness::kafka::decode_values(b.clone()).ok()?,
        None => Vec::new(),
    };
    Some(
        values
            .into_iter()
            .filter(|&(o, _)| (o as i64) < p.high_watermark)
            .map(|(_, v)| v)
            .collect(),
    )
}

/// What one run of the zombie window showed.
struct ZombieWindow {
    zombie: i32,
    new_controller: i32,
    /// The leader epoch the new controller's election gave the partition (its leader: itself).
    new_epoch: i32,
    /// (broker, leader epoch) every answer as the partition's leader, after the zombie's turn.
    led_after: Vec<(i32, i32)>,
    /// The zombie's "resigned as controller" line.
    resigned: String,
    /// The error code of an acks=all produce of value 1 to the new controller while it led
    /// `new_epoch`, and of value 2 to each broker that led afterwards.
    produced_to_new: i16,
    produced_after: Vec<(i32, i16)>,
    /// (broker, values it serves) for each broker that leads at the end.
    served: Vec<(i32, Vec<u64>)>,
}

/// The zombie window (`specs/cluster-zookeeper.md`): 3 brokers, 1 ZooKeeper server, session
/// timeout 1 s. Controller `c`; the partition on `[l, c, n]` led by `l`. The test hold
/// (SIGUSR2, `--test-hold-controller-events`) keeps `c` from handling events; `kill -9` of `l`
/// leaves `c` a BrokerChange in hand. `c` is paused past its session timeout: `n` becomes
/// controller (epoch 2) and, seeing neither `l` nor `c` live, elects itself in the next leader
/// epoch. `c` resumes, registers with a new session and — released — handles its BrokerChange
/// on it before resigning: with its cached state (leader `l`, ISR `{l, c, n}`) and `c` live
/// again it elects `c`, in the same leader epoch `n` got. Every broker is asked which epoch it
/// leads the partition in (ListOffsets), before and after the zombie's turn.
fn zombie_window_run(bugs: &[&str]) -> ZombieWindow {
    use kcheck_harness::kafka::LeaderProbe;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("zk-window");
    let _down = Down(&data);
    let mut broker_args: Vec<String> = [
        "--min-insync-replicas",
        "1",
        "--test-hold-controller-events",
    ]
    .map(String::from)
    .to_vec();
    for b in bugs {
        broker_args.extend(["--bug".to_string(), b.to_string()]);
    }
    let spec = kcheck_reference::cluster_zookeeper::ZkClusterSpec {
        brokers: 3,
        zookeeper_servers: 1,
        data_dir: data.clone(),
        executable: env!("CARGO_BIN_EXE_kcheck").into(),
        broker_args,
        session_timeout_ms: 1000,
        ready_timeout: Duration::from_secs(60),
    };
    let state = ClusterState::start_zookeeper(&spec).unwrap();
    state.wait_ready_zookeeper(Duration::from_secs(60)).unwrap();
    let (c, epoch) = state
        .wait_zk_controller(None, Duration::from_secs(30))
        .unwrap();
    assert_eq!(epoch, 1);
    let others: Vec<i32> = (1..=3).filter(|&b| b != c).collect();
    let (l, n) = (others[0], others[1]);
    let addr = |id: i32| state.node(id).unwrap().address.clone();
    create_topic(&addr(n), "w", &[l, c, n]);
    wait_leaders(&[addr(c), addr(n)], "w", |x| x == l);

    signal(&state, c, "-USR2");
    let (_, at) = wait_log(&state, c, 0, "controller events held");
    state.kill(l).unwrap();
    let (_, at) = wait_log(&state, c, at, "controller event BrokerChange held");
    state.pause(c).unwrap();
    let (controller, epoch) = state
        .wait_zk_controller(Some(c), Duration::from_secs(30))
        .unwrap();
    assert_eq!((controller, epoch), (n, 2));
    let mut probe_n = LeaderProbe::new(&addr(n), "w", Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(20);
    let new_epoch = loop {
        if let Some(&e) = probe_n
            .led(1)
            .ok()
            .and_then(|m| m.get(&0).copied())
            .as_ref()
        {
            break e;
        }
        assert!(Instant::now() < deadline, "broker {n} never led w-0");
        std::thread::sleep(Duration::from_millis(50));
    };
    let produced_to_new = produce_to(&addr(n), "w", 1);

    state.resume(c).unwrap();
    let (_, at) = wait_log(&state, c, at, "finishes its events on it before resigning");
    signal(&state, c, "-USR2");
    let (resigned, _) = wait_log(&state, c, at, "resigned as controller (epoch 1)");
    let mut probe_c = LeaderProbe::new(&addr(c), "w", Duration::from_secs(2));
    let mut led_after = Vec::new();
    for _ in 0..15 {
        for (id, p) in [(c, &mut probe_c), (n, &mut probe_n)] {
            if let Some(&e) = p.led(1).ok().and_then(|m| m.get(&0).copied()).as_ref() {
                if !led_after.contains(&(id, e)) {
                    led_after.push((id, e));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let leaders_now: Vec<i32> = [c, n]
        .into_iter()
        .filter(|&b| led_after.iter().any(|&(x, _)| x == b))
        .collect();
    let produced_after: Vec<(i32, i16)> = leaders_now
        .iter()
        .map(|&b| (b, produce_to(&addr(b), "w", 2)))
        .collect();
    let served: Vec<(i32, Vec<u64>)> = leaders_now
        .iter()
        .filter_map(|&b| values_on(&addr(b), "w").map(|v| (b, v)))
        .collect();
    eprintln!(
        "zombie window {bugs:?}: zombie {c}, new controller {n} led leader epoch {new_epoch} (produce: {produced_to_new}); after: {led_after:?}, produce {produced_after:?}, served {served:?}; {resigned}"
    );
    if std::env::var_os("KCHECK_KEEP_LOGS").is_some() {
        for id in [c, n] {
            let log = state.node(id).unwrap().log_file.clone();
            eprintln!(
                "--- broker {id}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
    ZombieWindow {
        zombie: c,
        new_controller: n,
        new_epoch,
        led_after,
        resigned,
        produced_to_new,
        produced_after,
        served,
    }
}

#[test]
fn a_zombie_controller_finishing_its_event_elects_a_second_leader_in_one_epoch_only_without_both_checks(
) {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    if !prerequisites() {
        return;
    }
    // Correct protocol: the zombie's write fails the /controller_epoch check (KAFKA-6082) and
    // it resigns; the new controller's leader is the partition's only leader in its epoch.
    let w = zombie_window_run(&[]);
    assert!(
        w.resigned.contains("ControllerMovedException"),
        "{}",
        w.resigned
    );
    assert!(
        !w.led_after.iter().any(|&(b, _)| b == w.zombie),
        "the zombie {} led: {:?}",
        w.zombie,
        w.led_after
    );
    assert!(
        w.led_after.contains(&(w.new_controller, w.new_epoch)),
        "{:?}",
        w.led_after
    );
    assert_eq!(w.produced_to_new, 0);
    assert_eq!(w.produced_after, [(w.new_controller, 0)]);
    assert_eq!(
        w.served,
        [(w.new_controller, vec![1, 2])],
        "every acknowledged record"
    );
    // Without the controller-epoch check alone the zombie's write still carries the zkVersion
    // it cached, which the new controller's election moved on: BadVersion, no election (the
    // model needs both flags too).
    let w = zombie_window_run(&["no-controller-epoch-check"]);
    assert!(
        !w.led_after.iter().any(|&(b, _)| b == w.zombie),
        "the zombie {} led: {:?}",
        w.zombie,
        w.led_after
    );
    assert!(
        w.led_after.contains(&(w.new_controller, w.new_epoch)),
        "{:?}",
        w.led_after
    );
    // Without both checks (the model's 8-step one-leader-per-leader-epoch): the zombie's
    // election is written and obeyed, and the zombie broker leads in the epoch the new
    // controller gave its own leader.
    let w = zombie_window_run(&["no-controller-epoch-check", "no-zkversion-check"]);
    assert!(
        w.led_after.contains(&(w.zombie, w.new_epoch)),
        "broker {} led leader epoch {} and broker {} never did: {:?} ({})",
        w.new_controller,
        w.new_epoch,
        w.zombie,
        w.led_after,
        w.resigned
    );
    // Both leaders of that epoch acknowledged an acks=all produce in it. (The zombie's broker
    // had followed the new controller's leader in that same epoch before its own election, so
    // it holds record 1 too: in this schedule the two leaderships follow each other.)
    assert_eq!(w.produced_to_new, 0, "broker {} led", w.new_controller);
    assert!(
        w.produced_after.contains(&(w.zombie, 0)),
        "{:?}",
        w.produced_after
    );
    assert!(
        w.served
            .iter()
            .any(|(b, v)| *b == w.zombie && v.contains(&2)),
        "{:?}",
        w.served
    );
}

#[test]
fn bad_zookeeper_arguments_exit_2_naming_the_fix() {
    let out = kcheck(&["broker", "--zookeeper", "nowhere"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HOST:PORT"));
    let out = kcheck(&["broker", "--test-hold-controller-events"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--zookeeper"));
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
