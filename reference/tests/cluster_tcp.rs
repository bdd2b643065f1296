//! Three cluster-mode brokers in one process talking real TCP on 127.0.0.1: the replica
//! fetchers, follower Fetch handling, acks=all purgatory, KIP-320 fencing and AlterPartition
//! run as they do between processes. The controller is an in-process stand-in that owns the
//! metadata image (registrations it writes, AlterPartition it checks like the real one) and
//! publishes it on a `watch` channel, the interface the quorum's controller client provides.

use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kcheck_reference::broker::{BrokerConfig, ReplicationConfig};
use kcheck_reference::client::Client;
use kcheck_reference::metadata::{
    MetadataImage, MetadataRecord, PartitionChange, PartitionRegistration,
};
use kcheck_reference::partition::{code, AlterPartitionRequest, BrokerBugs};
use kcheck_reference::replication::{BoxFuture, ControllerChannel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use uuid::Uuid;

const FENCED_LEADER_EPOCH: i16 = 74;
const INVALID_UPDATE_VERSION: i16 = 108;

/// Owns the image; applies records in log order and publishes each new image.
struct FakeController {
    image: Mutex<MetadataImage>,
    tx: watch::Sender<Arc<MetadataImage>>,
}

impl FakeController {
    fn append(&self, record: MetadataRecord) {
        let mut image = self.image.lock().unwrap();
        let offset = image.offset + 1;
        image.apply(offset, &record).expect("valid record");
        self.tx.send_replace(Arc::new(image.clone()));
    }

    fn partition(&self, topic: &str) -> PartitionRegistration {
        self.image
            .lock()
            .unwrap()
            .partition(topic, 0)
            .cloned()
            .unwrap()
    }

    fn change(&self, topic_id: Uuid, leader: Option<i32>, isr: Vec<i32>) {
        let cur = self.partition("t");
        let mut change = PartitionChange {
            leader,
            isr: Some(isr),
            leader_epoch: cur.leader_epoch,
            partition_epoch: cur.partition_epoch + 1,
            ..PartitionChange::default()
        };
        if cur.change_bumps_leader_epoch(&change) {
            change.leader_epoch += 1;
        }
        self.append(MetadataRecord::PartitionChange {
            topic_id,
            partition_id: 0,
            change,
        });
    }
}

impl ControllerChannel for FakeController {
    fn alter_partition(
        &self,
        topic_id: Uuid,
        req: AlterPartitionRequest,
    ) -> BoxFuture<Result<PartitionRegistration, i16>> {
        let cur = self.partition("t");
        let result = if req.leader_epoch != cur.leader_epoch {
            Err(FENCED_LEADER_EPOCH)
        } else if req.partition_epoch != cur.partition_epoch {
            Err(INVALID_UPDATE_VERSION)
        } else {
            self.change(topic_id, None, req.new_isr());
            Ok(self.partition("t"))
        };
        Box::pin(async move { result })
    }

    fn create_topics(&self, req: CreateTopicsRequest, _v: i16) -> BoxFuture<CreateTopicsResponse> {
        let topics = req
            .topics
            .into_iter()
            .map(|t| {
                CreatableTopicResult::default()
                    .with_name(t.name)
                    .with_error_code(41) // NOT_CONTROLLER: not supported by the stand-in
            })
            .collect();
        Box::pin(async move { CreateTopicsResponse::default().with_topics(topics) })
    }
}

struct TestCluster {
    controller: Arc<FakeController>,
    addrs: Vec<String>,
    /// One runtime per broker: dropping it stops every task of that broker (listener,
    /// connections, fetchers, timers), as a crash would.
    brokers: Vec<Option<tokio::runtime::Runtime>>,
    topic_id: Uuid,
    _dirs: Vec<tempfile::TempDir>,
}

impl TestCluster {
    /// Three brokers, topic `t` with one partition on all of them, led by broker 0.
    fn start(min_isr: usize, lag_ms: u64) -> TestCluster {
        let runtimes: Vec<tokio::runtime::Runtime> = (0..3)
            .map(|_| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .unwrap()
            })
            .collect();
        let listeners: Vec<tokio::net::TcpListener> = runtimes
            .iter()
            .map(|rt| {
                rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                    .unwrap()
            })
            .collect();
        let addrs: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().to_string())
            .collect();
        let (tx, rx) = watch::channel(Arc::new(MetadataImage::default()));
        let controller = Arc::new(FakeController {
            image: Mutex::new(MetadataImage::default()),
            tx,
        });
        for (i, addr) in addrs.iter().enumerate() {
            controller.append(MetadataRecord::RegisterBroker {
                broker_id: i as i32,
                broker_epoch: 10 + i as i64,
                incarnation_id: Uuid::new_v4(),
                endpoint: addr.clone(),
                fenced: false,
                unclean_shutdown: false,
            });
        }
        let topic_id = Uuid::new_v4();
        controller.append(MetadataRecord::Topic {
            name: "t".into(),
            topic_id,
        });
        controller.append(MetadataRecord::Partition {
            topic_id,
            partition_id: 0,
            registration: PartitionRegistration {
                replicas: vec![0, 1, 2],
                isr: vec![0, 1, 2],
                elr: vec![],
                adding_replicas: vec![],
                removing_replicas: vec![],
                leader: 0,
                leader_epoch: 0,
                partition_epoch: 0,
            },
        });
        let mut dirs = Vec::new();
        for (i, (listener, rt)) in listeners.into_iter().zip(&runtimes).enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = BrokerConfig::new(dir.path().to_path_buf());
            cfg.node_id = i as i32;
            cfg.replication = ReplicationConfig {
                min_insync_replicas: min_isr,
                replica_lag_time_max_ms: lag_ms,
                bugs: BrokerBugs::none(),
                ..ReplicationConfig::default()
            };
            let ch: Arc<dyn ControllerChannel> = controller.clone();
            rt.spawn(kcheck_reference::server::serve_cluster(
                listener,
                cfg,
                rx.clone(),
                ch,
                std::future::pending::<()>(),
            ));
            dirs.push(dir);
        }
        TestCluster {
            controller,
            addrs,
            brokers: runtimes.into_iter().map(Some).collect(),
            topic_id,
            _dirs: dirs,
        }
    }

    /// Stops every task of `broker` at once (its sockets close).
    fn kill(&mut self, broker: usize) {
        if let Some(rt) = self.brokers[broker].take() {
            rt.shutdown_background();
        }
    }

    fn client(&self, broker: usize) -> Client {
        Client::connect(&self.addrs[broker]).unwrap()
    }
}

fn produce(c: &mut Client, acks: i16, _value: u8) -> (i16, i64) {
    // Records are identified by offset: build() makes a valid batch as is.
    let records = kcheck_reference::batch::build(0, 1, 16, 0);
    let req = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records.into()))])]);
    let resp = c.request(9, &req).unwrap();
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// A consumer fetch naming `current_leader_epoch`; returns (error, HW, record bytes).
fn consumer_fetch(c: &mut Client, offset: i64, current_leader_epoch: i32) -> (i16, i64, usize) {
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_current_leader_epoch(current_leader_epoch)
                .with_partition_max_bytes(1 << 20)])]);
    let resp = c.request(12, &req).unwrap();
    let p = &resp.responses[0].partitions[0];
    (
        p.error_code,
        p.high_watermark,
        p.records.as_ref().map_or(0, |r| r.len()),
    )
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn acks_all_replicates_to_the_isr_and_fails_over_with_fencing() {
    let mut cluster = TestCluster::start(2, 30_000);
    let mut leader = cluster.client(0);
    for i in 0..20 {
        let (err, offset) = produce(&mut leader, -1, i);
        assert_eq!((err, offset), (0, i64::from(i)), "acks=all record {i}");
    }
    // Everything acknowledged is committed: the HW covers it and consumers read it.
    let (err, hw, bytes) = consumer_fetch(&mut leader, 0, 0);
    assert_eq!((err, hw), (0, 20));
    assert!(bytes > 0);
    // A cluster broker does not delete its replicas on its own.
    let del = DeleteTopicsRequest::default()
        .with_topic_names(vec![TopicName(StrBytes::from_static_str("t"))]);
    let r = leader.request(4, &del).unwrap();
    assert_eq!(r.responses[0].error_code, 73, "TOPIC_DELETION_DISABLED");
    // A follower refuses produce and consumer fetches.
    let mut follower = cluster.client(1);
    assert_eq!(
        produce(&mut follower, -1, 0).0,
        code::NOT_LEADER_OR_FOLLOWER
    );
    assert_eq!(
        consumer_fetch(&mut follower, 0, 0).0,
        code::NOT_LEADER_OR_FOLLOWER
    );
    // Broker 0 stops; the controller elects broker 1 from the ISR (leader epoch 1).
    cluster.kill(0);
    cluster
        .controller
        .change(cluster.topic_id, Some(1), vec![1, 2]);
    wait_until("broker 1 to lead", || produce(&mut follower, -1, 0).0 == 0);
    // The new leader has every acknowledged record (offsets 0..20 and the new one).
    let (err, hw, _) = consumer_fetch(&mut follower, 0, 1);
    assert_eq!(err, 0);
    assert!(hw >= 21, "HW {hw}");
    // KIP-320: a client still on leader epoch 0 is fenced, one from the future is told to wait.
    assert_eq!(
        consumer_fetch(&mut follower, 0, 0).0,
        code::FENCED_LEADER_EPOCH
    );
    assert_eq!(
        consumer_fetch(&mut follower, 0, 5).0,
        code::UNKNOWN_LEADER_EPOCH
    );
}

#[test]
fn a_stopped_follower_leaves_the_isr_and_acks_all_goes_on_at_min_isr() {
    let mut cluster = TestCluster::start(2, 300);
    let mut leader = cluster.client(0);
    assert_eq!(produce(&mut leader, -1, 0).0, 0);
    // Broker 2 stops fetching: after replica.lag.time.max.ms the leader shrinks the ISR with
    // AlterPartition, and acks=all completes with {0, 1}.
    cluster.kill(2);
    let mut ok = 0;
    wait_until("the ISR to shrink to {0, 1}", || {
        if produce(&mut leader, -1, 1).0 == 0 {
            ok += 1;
        }
        cluster.controller.partition("t").isr == vec![0, 1]
    });
    assert_eq!(produce(&mut leader, -1, 2).0, 0);
    // Broker 1 stops too: the ISR shrinks to {0}, below min.insync.replicas.
    cluster.kill(1);
    wait_until("the ISR to shrink to {0}", || {
        let _ = produce(&mut leader, 1, 3);
        cluster.controller.partition("t").isr == vec![0]
    });
    assert_eq!(produce(&mut leader, -1, 4).0, code::NOT_ENOUGH_REPLICAS);
    assert_eq!(produce(&mut leader, 1, 5).0, 0, "acks=1 still works");
}
