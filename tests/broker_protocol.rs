//! Protocol behaviour of the real `kcheck broker` seen from a raw client: long polling,
//! acks=0, KIP-74 oversized batches, HW in fetch responses.

mod broker_support;

use broker_support::Broker;
use kcheck_reference::batch::{build, scan};
use kcheck_reference::client::Client;
use kcheck_reference::kafka_protocol::messages::create_topics_request::CreatableTopic;
use kcheck_reference::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kcheck_reference::kafka_protocol::messages::produce_request::{
    PartitionProduceData, TopicProduceData,
};
use kcheck_reference::kafka_protocol::messages::*;
use kcheck_reference::kafka_protocol::protocol::StrBytes;
use std::time::{Duration, Instant};

fn name() -> TopicName {
    TopicName(StrBytes::from_static_str("p"))
}

fn produce_req(acks: i16, records: Vec<u8>) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(1000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name())
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records.into()))])])
}

fn fetch_req(offset: i64, max_wait_ms: i32, partition_max_bytes: i32) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name())
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(partition_max_bytes)])])
}

fn setup() -> (tempfile::TempDir, Broker, Client) {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), "127.0.0.1:0", &[]);
    let mut c = Client::connect(&broker.addr).unwrap();
    let req = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(name())
        .with_num_partitions(1)
        .with_replication_factor(1)]);
    assert_eq!(c.request(7, &req).unwrap().topics[0].error_code, 0);
    (dir, broker, c)
}

#[test]
fn long_poll_returns_when_data_arrives() {
    let (_dir, broker, mut c) = setup();
    let addr = broker.addr.clone();
    let producer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let mut p = Client::connect(&addr).unwrap();
        p.request(9, &produce_req(1, build(0, 5, 10, 0)))
            .unwrap()
            .responses[0]
            .partition_responses[0]
            .error_code
    });
    let started = Instant::now();
    let r = c.request(12, &fetch_req(0, 20_000, 1 << 20)).unwrap();
    let waited = started.elapsed();
    assert_eq!(producer.join().unwrap(), 0);
    let p = &r.responses[0].partitions[0];
    assert_eq!((p.error_code, p.high_watermark), (0, 5));
    let records = p.records.clone().unwrap_or_default();
    assert_eq!(
        scan(&records).batches.len(),
        1,
        "the fetch was answered with the new batch"
    );
    assert!(
        waited < Duration::from_secs(20),
        "answered on arrival, not at max_wait_ms"
    );
    // With nothing new, an empty answer comes back at max_wait_ms.
    let r = c.request(12, &fetch_req(5, 100, 1 << 20)).unwrap();
    let p = &r.responses[0].partitions[0];
    assert_eq!(
        (p.error_code, p.records.as_ref().map_or(0, |r| r.len())),
        (0, 0)
    );
}

#[test]
fn acks_zero_gets_no_response_and_later_responses_stay_in_order() {
    let (_dir, _broker, mut c) = setup();
    c.send(9, &produce_req(0, build(0, 2, 10, 0))).unwrap();
    c.send(9, &produce_req(0, build(0, 3, 10, 0))).unwrap();
    let r = c.request(9, &produce_req(1, build(0, 1, 10, 0))).unwrap();
    assert_eq!(
        r.responses[0].partition_responses[0].base_offset, 5,
        "both acks=0 batches were appended first"
    );
}

#[test]
fn first_batch_is_returned_even_when_larger_than_the_limit() {
    let (_dir, _broker, mut c) = setup();
    c.request(9, &produce_req(1, build(0, 50, 100, 0))).unwrap();
    c.request(9, &produce_req(1, build(0, 50, 100, 0))).unwrap();
    let r = c.request(12, &fetch_req(0, 0, 100)).unwrap();
    let records = r.responses[0].partitions[0]
        .records
        .clone()
        .unwrap_or_default();
    let batches = scan(&records);
    assert_eq!(
        batches.batches.len(),
        1,
        "exactly one whole batch despite partition_max_bytes=100 (KIP-74)"
    );
    assert!(batches.stopped.is_none() && records.len() > 100);
    let r = c.request(12, &fetch_req(60, 0, 1 << 20)).unwrap();
    let records = r.responses[0].partitions[0]
        .records
        .clone()
        .unwrap_or_default();
    let offsets: Vec<i64> = scan(&records)
        .batches
        .iter()
        .map(|(_, h)| h.base_offset)
        .collect();
    assert_eq!(
        offsets,
        vec![50],
        "a fetch from mid-batch returns the batch containing the offset"
    );
}

#[test]
fn fetch_v13_names_the_topic_by_id_and_answers_unknown_topic_id_for_another() {
    // Fetch v13+ names topics by id (KIP-516); the broker speaks up to v15 so that followers
    // can carry their broker epoch (KIP-903).
    let (_dir, _broker, mut c) = setup();
    c.request(9, &produce_req(1, build(0, 3, 10, 0))).unwrap();
    let meta = c
        .request(12, &MetadataRequest::default().with_topics(None))
        .unwrap();
    let id = meta
        .topics
        .iter()
        .find(|t| t.name.as_ref() == Some(&name()))
        .expect("the topic is listed")
        .topic_id;
    let by_id = |topic_id| {
        FetchRequest::default()
            .with_max_bytes(1 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic_id(topic_id)
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)])])
    };
    for version in [13, 15] {
        let r = c.request(version, &by_id(id)).unwrap();
        assert_eq!(r.responses[0].topic_id, id, "v{version}");
        let p = &r.responses[0].partitions[0];
        assert_eq!((p.error_code, p.high_watermark), (0, 3), "v{version}");
        let records = p.records.clone().unwrap_or_default();
        assert_eq!(scan(&records).batches.len(), 1, "v{version}");
    }
    // The nil id names no topic: UNKNOWN_TOPIC_ID.
    let r = c.request(13, &by_id(Default::default())).unwrap();
    assert_eq!(r.responses[0].partitions[0].error_code, 100);
}
