//! Bad network input against the real `kcheck broker`: each case gets the Kafka error code a
//! client expects or a closed connection plus a log line, and the broker keeps serving with
//! its log intact.

mod broker_support;

use broker_support::Broker;
use kcheck_reference::batch::build;
use kcheck_reference::client::Client;
use kcheck_reference::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kcheck_reference::kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsTopic,
};
use kcheck_reference::kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kcheck_reference::kafka_protocol::messages::produce_request::{
    PartitionProduceData, TopicProduceData,
};
use kcheck_reference::kafka_protocol::messages::*;
use kcheck_reference::kafka_protocol::protocol::StrBytes;
use std::io::Write;

const CORRUPT_MESSAGE: i16 = 2;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const UNSUPPORTED_VERSION: i16 = 35;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

fn produce(c: &mut Client, topic: &str, records: Vec<u8>) -> i16 {
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(1000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records.into()))])]);
    c.request(9, &req).expect("produce response").responses[0].partition_responses[0].error_code
}

fn latest_offset(c: &mut Client, topic: &str) -> (i16, i64) {
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1)])]);
    let r = c.request(7, &req).expect("list offsets");
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.offset)
}

fn create(c: &mut Client, topic: &str) {
    use kcheck_reference::kafka_protocol::messages::create_topics_request::CreatableTopic;
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(name(topic))
            .with_num_partitions(1)
            .with_replication_factor(1)]);
    let r = c.request(7, &req).expect("create topics");
    assert_eq!(r.topics[0].error_code, 0);
}

fn assert_closed(c: &mut Client) {
    assert!(
        c.read_frame().expect("read").is_none(),
        "broker must close the connection"
    );
}

fn alive(addr: &str) {
    let mut c = Client::connect(addr).unwrap();
    let r = c
        .request(3, &ApiVersionsRequest::default())
        .expect("broker still serving");
    assert_eq!(r.error_code, 0);
}

#[test]
fn bad_frames_close_the_connection_and_the_broker_survives() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--max-request-bytes", "65536"],
    );
    // Oversized frame.
    let mut c = Client::connect(&broker.addr).unwrap();
    c.stream.write_all(&(1i32 << 20).to_be_bytes()).unwrap();
    assert_closed(&mut c);
    // Negative length.
    let mut c = Client::connect(&broker.addr).unwrap();
    c.stream.write_all(&(-5i32).to_be_bytes()).unwrap();
    assert_closed(&mut c);
    // Truncated frame: promise 100 bytes, send 10, half-close.
    let mut c = Client::connect(&broker.addr).unwrap();
    c.stream.write_all(&100i32.to_be_bytes()).unwrap();
    c.stream.write_all(&[0u8; 10]).unwrap();
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_closed(&mut c);
    // Frame too short for a header.
    let mut c = Client::connect(&broker.addr).unwrap();
    c.stream.write_all(&[0, 0, 0, 3, 0, 3, 0]).unwrap();
    assert_closed(&mut c);
    // Unknown API key.
    let mut c = Client::connect(&broker.addr).unwrap();
    c.stream
        .write_all(&[0, 0, 0, 10, 0x27, 0x0f, 0, 0, 0, 0, 0, 1, 0, 0])
        .unwrap();
    assert_closed(&mut c);
    // Known API, unsupported version (Metadata v99).
    let mut c = Client::connect(&broker.addr).unwrap();
    c.stream
        .write_all(&[0, 0, 0, 10, 0, 3, 0, 99, 0, 0, 0, 1, 0, 0])
        .unwrap();
    assert_closed(&mut c);
    // Garbage body for a valid header (Metadata v1 whose topic array is cut short).
    let mut c = Client::connect(&broker.addr).unwrap();
    c.stream
        .write_all(&[0, 0, 0, 13, 0, 3, 0, 1, 0, 0, 0, 1, 0xff, 0xff, 0, 0, 0])
        .unwrap();
    assert_closed(&mut c);
    alive(&broker.addr);
    // The broker logs after closing the socket, so give the last line a moment to land.
    let needles = [
        "exceeds the limit",
        "truncated frame",
        "unknown API key 9999",
        "unsupported version 99",
        "malformed Metadata",
    ];
    let mut log = broker.stderr();
    for _ in 0..100 {
        if needles.iter().all(|n| log.contains(n)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        log = broker.stderr();
    }
    for needle in needles {
        assert!(
            log.contains(needle),
            "missing log line {needle:?} in:\n{log}"
        );
    }
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn api_versions_with_unknown_version_answers_unsupported_version() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), "127.0.0.1:0", &[]);
    let mut c = Client::connect(&broker.addr).unwrap();
    // ApiVersions v99: the broker answers in v0 with UNSUPPORTED_VERSION and its version list.
    c.stream
        .write_all(&[0, 0, 0, 10, 0, 18, 0, 99, 0, 0, 0, 7, 0, 0])
        .unwrap();
    let frame = c.read_frame().unwrap().expect("a response");
    let (corr, mut body) = kcheck_reference::server::response_body(frame, 0).unwrap();
    use kcheck_reference::kafka_protocol::protocol::Decodable;
    let r = ApiVersionsResponse::decode(&mut body, 0).unwrap();
    assert_eq!((corr, r.error_code), (7, UNSUPPORTED_VERSION));
    assert!(r
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::Produce as i16));
}

#[test]
fn bad_crc_is_rejected_and_never_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), "127.0.0.1:0", &[]);
    let mut c = Client::connect(&broker.addr).unwrap();
    create(&mut c, "t");
    assert_eq!(produce(&mut c, "t", build(0, 3, 10, 1)), 0);
    let mut bad = build(0, 3, 10, 1);
    let n = bad.len();
    bad[n - 4] ^= 0x40;
    assert_eq!(produce(&mut c, "t", bad), CORRUPT_MESSAGE);
    let mut torn = build(0, 3, 10, 1);
    torn.truncate(torn.len() - 7);
    assert_eq!(produce(&mut c, "t", torn), CORRUPT_MESSAGE);
    assert_eq!(
        latest_offset(&mut c, "t"),
        (0, 3),
        "only the valid batch was appended"
    );
    assert_eq!(produce(&mut c, "t", build(0, 2, 10, 1)), 0);
    assert_eq!(latest_offset(&mut c, "t"), (0, 5));
    assert!(broker.stderr().contains("CRC-32C mismatch"));
}

#[test]
fn unknown_topic_gets_unknown_topic_or_partition() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), "127.0.0.1:0", &[]);
    let mut c = Client::connect(&broker.addr).unwrap();
    assert_eq!(
        produce(&mut c, "nope", build(0, 1, 1, 0)),
        UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(latest_offset(&mut c, "nope").0, UNKNOWN_TOPIC_OR_PARTITION);
    let req = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(name("nope")))
    ]));
    assert_eq!(
        c.request(9, &req).unwrap().topics[0].error_code,
        UNKNOWN_TOPIC_OR_PARTITION
    );
    let req = FetchRequest::default()
        .with_max_wait_ms(10)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name("nope"))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1000)])]);
    let r = c.request(11, &req).unwrap();
    assert_eq!(
        r.responses[0].partitions[0].error_code,
        UNKNOWN_TOPIC_OR_PARTITION
    );
    // Out of range fetch on an existing topic.
    create(&mut c, "t");
    let req = FetchRequest::default()
        .with_max_wait_ms(10)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name("t"))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(5)
                .with_partition_max_bytes(1000)])]);
    assert_eq!(
        c.request(11, &req).unwrap().responses[0].partitions[0].error_code,
        1,
        "OFFSET_OUT_OF_RANGE"
    );
}

#[test]
fn huge_array_count_does_not_take_the_broker_down() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), "127.0.0.1:0", &[]);
    let mut c = Client::connect(&broker.addr).unwrap();
    // Metadata v1 claiming 2^31-1 topics in a 16-byte frame.
    c.stream
        .write_all(&[
            0, 0, 0, 16, 0, 3, 0, 1, 0, 0, 0, 1, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0, 0,
        ])
        .unwrap();
    assert_closed(&mut c);
    alive(&broker.addr);
}
