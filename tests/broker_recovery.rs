//! Crash recovery of the real `kcheck broker`: a torn tail is truncated with a log line; a
//! corrupt batch below the recovery point makes the broker refuse to start, naming the file
//! and offset.

mod broker_support;

use broker_support::Broker;
use kcheck_reference::batch::build;
use kcheck_reference::client::Client;
use kcheck_reference::kafka_protocol::messages::create_topics_request::CreatableTopic;
use kcheck_reference::kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsTopic,
};
use kcheck_reference::kafka_protocol::messages::produce_request::{
    PartitionProduceData, TopicProduceData,
};
use kcheck_reference::kafka_protocol::messages::*;
use kcheck_reference::kafka_protocol::protocol::StrBytes;
use std::path::Path;
use std::process::Command;

fn name() -> TopicName {
    TopicName(StrBytes::from_static_str("t"))
}

fn fill(addr: &str) {
    let mut c = Client::connect(addr).unwrap();
    let req = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(name())
        .with_num_partitions(1)
        .with_replication_factor(1)]);
    assert_eq!(c.request(7, &req).unwrap().topics[0].error_code, 0);
    for _ in 0..3 {
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(1000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(name())
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(build(0, 4, 50, 1).into()))])]);
        assert_eq!(
            c.request(9, &req).unwrap().responses[0].partition_responses[0].error_code,
            0
        );
    }
}

fn leo(addr: &str) -> i64 {
    let mut c = Client::connect(addr).unwrap();
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(name())
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1)])]);
    c.request(7, &req).unwrap().topics[0].partitions[0].offset
}

fn segment(data: &Path) -> std::path::PathBuf {
    data.join("t-0").join("00000000000000000000.log")
}

/// Waits for the periodic checkpoint to record the recovery point at the LEO.
fn wait_for_recovery_point(data: &Path, want: i64) {
    let file = data.join("t-0").join("recovery-point-offset-checkpoint");
    for _ in 0..100 {
        if std::fs::read_to_string(&file).is_ok_and(|t| t.lines().nth(2) == Some(&want.to_string()))
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("recovery point never reached {want}");
}

#[test]
fn torn_tail_is_truncated_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let b = Broker::start(&data, "127.0.0.1:0", &["--flush", "always"]);
    fill(&b.addr);
    wait_for_recovery_point(&data, 12);
    b.kill();
    // A crash mid-append: half a batch after the flushed data.
    let mut bytes = std::fs::read(segment(&data)).unwrap();
    let good = bytes.len();
    bytes.extend_from_slice(&build(12, 4, 50, 1)[..40]);
    std::fs::write(segment(&data), &bytes).unwrap();
    let b = Broker::start(&data, "127.0.0.1:0", &[]);
    assert_eq!(leo(&b.addr), 12);
    assert_eq!(
        std::fs::metadata(segment(&data)).unwrap().len() as usize,
        good
    );
    let log = b.stderr();
    assert!(
        log.contains("truncating torn log tail") && log.contains("offset=12"),
        "{log}"
    );
}

#[test]
fn corruption_below_recovery_point_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let b = Broker::start(&data, "127.0.0.1:0", &["--flush", "always"]);
    fill(&b.addr);
    wait_for_recovery_point(&data, 12);
    b.kill();
    let mut bytes = std::fs::read(segment(&data)).unwrap();
    let batch = build(0, 4, 50, 1).len();
    bytes[batch + 100] ^= 0x01; // inside the second batch (offsets 4..=7)
    std::fs::write(segment(&data), &bytes).unwrap();
    let out = Command::new("timeout")
        .arg("30")
        .arg(env!("CARGO_BIN_EXE_kcheck"))
        .args(["broker", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("00000000000000000000.log")
            && stderr.contains("offset 4")
            && stderr.contains("refusing to start"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(segment(&data)).unwrap(),
        bytes,
        "the log is left untouched for inspection"
    );
}
