//! The KRaft controller quorum as real processes on 127.0.0.1: three `kcheck broker
//! --process-roles controller` processes elect a leader; after `kill -9` of the leader the
//! other two elect a new one (the failover time is printed, not asserted); a
//! `--process-roles broker` process registers, is unfenced, and sees a topic created through
//! the active controller in its metadata image. Bad flag combinations are clear errors.

use kcheck_reference::client::Client;
use kcheck_reference::kafka_protocol::messages::create_topics_request::CreatableTopic;
use kcheck_reference::kafka_protocol::messages::*;
use kcheck_reference::kafka_protocol::protocol::StrBytes;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(args: &[String]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kcheck"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn kcheck");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Proc { child, lines }
    }

    /// Waits for a stdout line containing `needle`.
    fn wait_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no line containing {needle:?} within {timeout:?}");
    }

    fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn free_port() -> u16 {
    kcheck_reference::cluster::free_port().expect("a free port on 127.0.0.1")
}

/// Fields drop in order: the processes die before their data directory is removed.
struct Quorum {
    procs: Vec<Option<Proc>>,
    dir: tempfile::TempDir,
    ports: Vec<u16>,
    voters: String,
}

fn start_quorum() -> Quorum {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let voters = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let procs = (0..3)
        .map(|i| {
            let args: Vec<String> = [
                "broker",
                "--node-id",
                &(i + 1).to_string(),
                "--process-roles",
                "controller",
                "--controller-listen",
                &format!("127.0.0.1:{}", ports[i]),
                "--controller-quorum-voters",
                &voters,
                "--election-timeout-ms",
                "300",
                "--data-dir",
                dir.path().join(format!("c{}", i + 1)).to_str().unwrap(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let p = Proc::spawn(&args);
            p.wait_line("listening on", Duration::from_secs(20));
            Some(p)
        })
        .collect();
    Quorum {
        dir,
        ports,
        voters,
        procs,
    }
}

/// (leader id, leader epoch) as controller `i` reports it in DescribeQuorum, if it knows one.
fn describe(port: u16) -> Option<(i32, i32)> {
    let mut c = Client::connect(&format!("127.0.0.1:{port}")).ok()?;
    c.stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    let r = c.request(0, &DescribeQuorumRequest::default()).ok()?;
    let p = r.topics.first()?.partitions.first()?;
    (p.leader_id.0 >= 0).then_some((p.leader_id.0, p.leader_epoch))
}

/// Waits until a majority of the live controllers agree on a leader with an epoch above
/// `after_epoch`.
fn wait_leader(q: &Quorum, after_epoch: i32, timeout: Duration) -> (i32, i32) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let views: Vec<(i32, i32)> = (0..3)
            .filter(|i| q.procs[*i].is_some())
            .filter_map(|i| describe(q.ports[i]))
            .filter(|(_, e)| *e > after_epoch)
            .collect();
        for v in &views {
            if views.iter().filter(|w| *w == v).count() >= 2 {
                return *v;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no leader above epoch {after_epoch} within {timeout:?}");
}

#[test]
fn three_controllers_elect_a_leader_and_fail_over_after_kill_9() {
    let mut q = start_quorum();
    let (leader, epoch) = wait_leader(&q, 0, Duration::from_secs(30));
    assert!((1..=3).contains(&leader));
    let killed = Instant::now();
    q.procs[(leader - 1) as usize].as_mut().unwrap().kill9();
    q.procs[(leader - 1) as usize] = None;
    let (next, next_epoch) = wait_leader(&q, epoch, Duration::from_secs(30));
    let failover = killed.elapsed();
    assert_ne!(next, leader);
    assert!(next_epoch > epoch);
    println!(
        "controller failover after kill -9 of leader {leader} (epoch {epoch}): leader {next} (epoch {next_epoch}) in {} ms (election timeout 300 ms, fetch timeout 600 ms)",
        failover.as_millis()
    );
    eprintln!("controller failover: {} ms", failover.as_millis());
    let _ = &q.dir;
}

#[test]
fn a_broker_registers_is_unfenced_and_sees_a_topic_created_through_the_controller() {
    let q = start_quorum();
    let (leader, _) = wait_leader(&q, 0, Duration::from_secs(30));
    let broker_port = free_port();
    let args: Vec<String> = [
        "broker",
        "--node-id",
        "101",
        "--process-roles",
        "broker",
        "--listen",
        &format!("127.0.0.1:{broker_port}"),
        "--controller-quorum-voters",
        &q.voters,
        "--data-dir",
        q.dir.path().join("b101").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let broker = Proc::spawn(&args);
    broker.wait_line("fenced false", Duration::from_secs(30));
    // CreateTopics on the active controller's listener.
    let mut c = Client::connect(&format!("127.0.0.1:{}", q.ports[(leader - 1) as usize])).unwrap();
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("orders")))
            .with_num_partitions(2)
            .with_replication_factor(1)]);
    let resp = c.request(7, &req).unwrap();
    assert_eq!(resp.topics[0].error_code, 0, "{resp:?}");
    assert_eq!(resp.topics[0].num_partitions, 2);
    broker.wait_line("\"orders\"", Duration::from_secs(20));
    // A non-leader answers NOT_CONTROLLER.
    let other = (0..3).find(|i| *i != (leader - 1) as usize).unwrap();
    let mut c = Client::connect(&format!("127.0.0.1:{}", q.ports[other])).unwrap();
    let resp = c.request(7, &req).unwrap();
    assert_eq!(
        resp.topics[0].error_code, 41,
        "NOT_CONTROLLER from a follower"
    );
}

#[test]
fn bad_role_flags_are_clear_errors() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kcheck"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run(&["broker", "--process-roles", "controller"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--controller-quorum-voters"), "{err}");
    let voters = "1@127.0.0.1:1,2@127.0.0.1:2";
    let (code, err) = run(&[
        "broker",
        "--process-roles",
        "controller",
        "--controller-quorum-voters",
        voters,
        "--node-id",
        "1",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--controller-listen"), "{err}");
    let (code, err) = run(&[
        "broker",
        "--process-roles",
        "controller",
        "--controller-quorum-voters",
        voters,
        "--node-id",
        "7",
        "--controller-listen",
        "127.0.0.1:1",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not in --controller-quorum-voters"), "{err}");
    let (code, err) = run(&[
        "broker",
        "--process-roles",
        "router",
        "--controller-quorum-voters",
        voters,
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown process role"), "{err}");
    let (code, err) = run(&[
        "broker",
        "--process-roles",
        "controller",
        "--controller-quorum-voters",
        voters,
        "--node-id",
        "1",
        "--controller-listen",
        "127.0.0.1:1",
        "--bug",
        "nope",
    ]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("unknown bug flag 'nope'") && err.contains("unclean-election"),
        "{err}"
    );
    let (code, err) = run(&[
        "broker",
        "--process-roles",
        "broker",
        "--controller-quorum-voters",
        voters,
        "--node-id",
        "2",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("is a voter"), "{err}");
    let (code, err) = run(&["broker", "--bug", "unclean-election"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--process-roles"), "{err}");
}
