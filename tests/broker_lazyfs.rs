//! The lose-unsynced storage fault against the real broker: on LazyFs, a SIGKILL alone loses
//! nothing (the page cache survives it), a SIGKILL followed by losing the unsynced writes
//! loses what `--flush never` acknowledged but never fsynced, and `--flush always` loses
//! nothing either way.

mod broker_support;

use broker_support::Broker;
use kcheck_harness::lazyfs::{self, LazyFsMount};
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

const BATCHES: i64 = 20;
const RECORDS_PER_BATCH: i64 = 5;

fn name() -> TopicName {
    TopicName(StrBytes::from_static_str("t"))
}

/// Creates the topic and produces `BATCHES` acknowledged batches with acks=1.
fn produce(addr: &str) {
    let mut c = Client::connect(addr).unwrap();
    let req = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(name())
        .with_num_partitions(1)
        .with_replication_factor(1)]);
    assert_eq!(c.request(7, &req).unwrap().topics[0].error_code, 0);
    for _ in 0..BATCHES {
        let req = ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(1000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(name())
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(
                        build(0, RECORDS_PER_BATCH as i32, 64, 1).into(),
                    ))])]);
        let resp = c.request(9, &req).unwrap();
        assert_eq!(resp.responses[0].partition_responses[0].error_code, 0);
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

/// Runs the broker on a fresh LazyFs mount: produce, SIGKILL, optionally lose the unsynced
/// writes, restart on the same mount; returns the LEO after the restart.
fn crash_and_restart(flush: &str, lose: bool) -> Option<i64> {
    if let Err(why) = lazyfs::available() {
        if std::env::var_os("CI").is_some() {
            panic!("LazyFs is required in CI: {why}");
        }
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let fs = LazyFsMount::mount(&backing, &mnt).expect("mount LazyFs");
    let data = mnt.join("data");
    let broker = Broker::start(&data, "127.0.0.1:0", &["--flush", flush]);
    let addr = broker.addr.clone();
    produce(&addr);
    assert_eq!(leo(&addr), BATCHES * RECORDS_PER_BATCH);
    broker.kill();
    if lose {
        fs.lose_unsynced().expect("roll back unsynced writes");
    }
    let broker = Broker::start(&data, &addr, &["--flush", flush]);
    let end = leo(&broker.addr);
    broker.kill();
    Some(end)
}

#[test]
fn a_kill_alone_loses_nothing_even_unflushed() {
    if let Some(end) = crash_and_restart("never", false) {
        assert_eq!(end, BATCHES * RECORDS_PER_BATCH);
    }
}

#[test]
fn losing_unsynced_writes_loses_what_flush_never_acknowledged() {
    if let Some(end) = crash_and_restart("never", true) {
        assert!(
            end < BATCHES * RECORDS_PER_BATCH,
            "acknowledged but unflushed records must be lost, LEO {end}"
        );
    }
}

#[test]
fn flush_always_loses_nothing_acknowledged() {
    if let Some(end) = crash_and_restart("always", true) {
        assert_eq!(end, BATCHES * RECORDS_PER_BATCH);
    }
}
