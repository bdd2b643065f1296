//! The controller RPCs end to end over loopback TCP, in one process: three controller nodes,
//! four brokers' `ControllerClient`s. A topic is created through a broker's client; a
//! reassignment (AlterPartitionReassignments) grows the replica set, the leader's AlterPartition
//! adds the new replica to the ISR, the controller completes the move (ListPartitionReassignments
//! empties, leader and replicas change in every broker's image); a stale partition epoch is
//! INVALID_UPDATE_VERSION; a broker that stops heartbeating is fenced and loses its leadership.

use kcheck_reference::controller::{AlterPartitionRequest as AlterItem, ControllerConfig};
use kcheck_reference::controller_client::{ControllerClient, ControllerClientConfig};
use kcheck_reference::controller_server::{serve_node, start, ControllerNodeConfig};
use kcheck_reference::kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kcheck_reference::kafka_protocol::messages::*;
use kcheck_reference::kafka_protocol::protocol::StrBytes;
use kcheck_reference::metadata::{MetadataImage, NO_LEADER};
use kcheck_reference::raft::RaftConfig;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

const INVALID_UPDATE_VERSION: i16 = 95;

async fn wait_image(
    client: &ControllerClient,
    what: &str,
    cond: impl Fn(&MetadataImage) -> bool,
) -> Arc<MetadataImage> {
    let mut rx = client.image();
    let r = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let img = rx.borrow_and_update().clone();
            if cond(&img) {
                return img;
            }
            rx.changed().await.unwrap();
        }
    })
    .await;
    r.unwrap_or_else(|_| panic!("image never showed {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_reassignment_alter_partition_and_fencing_through_the_controller_rpcs() {
    let dir = tempfile::tempdir().unwrap();
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let voters: BTreeMap<i32, _> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (i as i32 + 1, l.local_addr().unwrap()))
        .collect();
    let raft = RaftConfig {
        election_timeout_ms: 200,
        fetch_timeout_ms: 400,
        fetch_interval_ms: 10,
        request_timeout_ms: 100,
        ..RaftConfig::default()
    };
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as i32 + 1;
        let node = start(ControllerNodeConfig {
            node_id: id,
            listen: voters[&id],
            voters: voters.clone(),
            data_dir: dir.path().join(format!("c{id}")),
            raft: raft.clone(),
            controller: ControllerConfig {
                session_timeout_ms: 1000,
                ..ControllerConfig::default()
            },
            seed: id as u64,
        })
        .unwrap();
        tokio::spawn(serve_node(listener, node, std::future::pending()));
    }
    let mut brokers = BTreeMap::new();
    for b in 101..=104 {
        let mut cfg =
            ControllerClientConfig::new(b, voters.clone(), format!("127.0.0.1:{}", 9000 + b));
        cfg.heartbeat_interval_ms = 100;
        cfg.raft = raft.clone();
        brokers.insert(b, ControllerClient::start(cfg));
    }
    let mut epochs = BTreeMap::new();
    for (b, c) in &brokers {
        epochs.insert(*b, c.wait_unfenced(Duration::from_secs(20)).await.unwrap());
    }
    let c = &brokers[&101];
    let topic_id = c.create_topic("moving", 1, 1).await.unwrap().unwrap();
    assert_eq!(
        c.create_topic("moving", 1, 1).await.unwrap(),
        Err(36),
        "TOPIC_ALREADY_EXISTS"
    );
    let img = wait_image(c, "the topic", |i| i.topic("moving").is_some()).await;
    let p = img.partition("moving", 0).unwrap().clone();
    let old = p.leader;
    let target = *brokers.keys().find(|b| **b != old).unwrap();

    // Reassign to another broker: replicas grow to target + origin.
    let req = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![ReassignableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("moving")))
            .with_partitions(vec![ReassignablePartition::default()
                .with_partition_index(0)
                .with_replicas(Some(vec![BrokerId(target)]))])]);
    let r = c.alter_partition_reassignments(&req).await.unwrap();
    assert_eq!(
        (r.error_code, r.responses[0].partitions[0].error_code),
        (0, 0),
        "{r:?}"
    );
    let listed = c
        .list_partition_reassignments(
            &ListPartitionReassignmentsRequest::default().with_timeout_ms(5000),
        )
        .await
        .unwrap();
    assert_eq!(listed.topics.len(), 1, "{listed:?}");
    assert_eq!(
        listed.topics[0].partitions[0].adding_replicas,
        vec![BrokerId(target)]
    );
    assert_eq!(
        listed.topics[0].partitions[0].removing_replicas,
        vec![BrokerId(old)]
    );
    let img = wait_image(c, "the growing replica set", |i| {
        i.partition("moving", 0).unwrap().replicas.len() == 2
    })
    .await;
    let p = img.partition("moving", 0).unwrap().clone();

    // The leader adds the caught-up target to the ISR; a stale partition epoch is refused.
    let leader_client = &brokers[&old];
    let item = AlterItem {
        topic_id,
        partition_id: 0,
        leader_epoch: p.leader_epoch,
        partition_epoch: p.partition_epoch - 1,
        new_isr: vec![(old, epochs[&old]), (target, epochs[&target])],
    };
    assert_eq!(
        leader_client.alter_partition(item.clone()).await.unwrap(),
        Err(INVALID_UPDATE_VERSION)
    );
    let done = leader_client
        .alter_partition(AlterItem {
            partition_epoch: p.partition_epoch,
            ..item
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (done.leader, done.isr.clone()),
        (target, vec![target]),
        "{done:?}"
    );
    let img = wait_image(c, "the completed move", |i| {
        i.partition("moving", 0).unwrap().replicas == vec![target]
    })
    .await;
    let p = img.partition("moving", 0).unwrap().clone();
    assert_eq!(p.leader, target);
    assert!(p.leader_epoch > 0);
    let listed = c
        .list_partition_reassignments(
            &ListPartitionReassignmentsRequest::default().with_timeout_ms(5000),
        )
        .await
        .unwrap();
    assert!(listed.topics.is_empty(), "{listed:?}");

    // Controlled shutdown of a broker that leads nothing here: it is fenced at once.
    let idle = *brokers
        .keys()
        .find(|b| **b != target && **b != old && **b != 101)
        .unwrap();
    brokers[&idle].controlled_shutdown().await.unwrap();
    let img = wait_image(c, "the shut down broker", |i| i.brokers[&idle].fenced).await;
    assert!(img.brokers[&idle].in_controlled_shutdown);

    // The new leader's broker stops heartbeating: fenced, the partition goes offline (its
    // only replica), the broker is in the ELR.
    brokers[&target].shutdown();
    let watcher = &brokers[brokers
        .keys()
        .find(|b| **b != target && **b != idle)
        .unwrap()];
    let img = wait_image(watcher, "the fenced broker", |i| i.brokers[&target].fenced).await;
    let p = img.partition("moving", 0).unwrap();
    assert_eq!(p.leader, NO_LEADER, "{p:?}");
    assert_eq!(p.elr, vec![target], "{p:?}");
}
