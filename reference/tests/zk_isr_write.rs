//! The leader's ISR write in ZooKeeper mode, against a real ZooKeeper server: a one-broker
//! ZooKeeper-mode cluster runs in-process (the broker is its own controller), a controller
//! election is written to the partition-state znode behind the leader's back, and the leader
//! then writes an ISR change from its stale cache. With the zkVersion check the write is refused
//! (INVALID_UPDATE_VERSION, Kafka's "Cached zkVersion not equal to that in zookeeper, skip
//! updating ISR"); under `no-zkversion-check` it overwrites the election — the lost update of
//! KAFKA-2729 that the `zk-controller` model turns into `no-committed-data-loss`.
//!
//! Skips with a notice when ZooKeeper is not installed, unless `CI` is set.

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::{CreateTopicsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kcheck_reference::broker::BrokerConfig;
use kcheck_reference::partition::AlterPartitionRequest;
use kcheck_reference::replication::ControllerChannel;
use kcheck_reference::zk_controller::{
    partition_state_path, LiveBroker, PartitionStateZnode, ZkBug, ZkBugs, ZkChannel, ZkConfig,
    ZkNode,
};
use kcheck_reference::zk_ensemble::{available, ZkEnsemble, ZkEnsembleSpec};
use std::path::Path;
use std::time::Duration;
use zookeeper_client as zk;

fn installed() -> bool {
    match available(Path::new("/usr/bin/java")) {
        Ok(()) => true,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping: {e}");
            false
        }
        Err(e) => panic!("CI must run the ZooKeeper tests: {e}"),
    }
}

/// Runs the scenario; returns the leader's write result and the leader epoch ZooKeeper holds
/// afterwards.
async fn stale_isr_write(connect: &str, data: &Path, bugs: ZkBugs) -> (Result<i32, i16>, i32) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = BrokerConfig::new(data.to_path_buf());
    cfg.node_id = 1;
    cfg.listen = addr;
    let node = ZkNode::start(
        1,
        LiveBroker {
            id: 1,
            host: addr.ip().to_string(),
            port: i32::from(addr.port()),
        },
        ZkConfig {
            connect: connect.to_owned(),
            session_timeout_ms: 4000,
            bugs,
            test_event_hold: false,
        },
    );
    let n = node.clone();
    let server = tokio::spawn(async move {
        let _ = kcheck_reference::server::serve_zookeeper(listener, cfg, n, std::future::pending())
            .await;
    });
    let mut view = node.view();
    tokio::time::timeout(
        Duration::from_secs(30),
        view.wait_for(|v| v.active_epoch.is_some()),
    )
    .await
    .expect("the only broker becomes controller")
    .unwrap();
    let channel = ZkChannel(node.clone());
    let created = channel
        .create_topics(
            CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("w")))
                .with_num_partitions(1)
                .with_replication_factor(1)]),
            5,
        )
        .await;
    assert_eq!(created.topics[0].error_code, 0, "{created:?}");
    let image = node.image().borrow().clone();
    let topic_id = image.topic_ids["w"];
    let cached = image.partition("w", 0).unwrap().clone();
    assert_eq!((cached.leader, cached.leader_epoch), (1, 0));

    // Behind the leader's back: an election bumps the leader epoch (zkVersion 0 -> 1).
    let path = partition_state_path("w", 0);
    let c = zk::Client::connector()
        .with_session_timeout(Duration::from_secs(4))
        .connect(connect)
        .await
        .unwrap();
    let elected = PartitionStateZnode::new(1, 1, 1, vec![1]);
    c.set_data(
        &path,
        &serde_json::to_vec(&elected).unwrap(),
        Some(cached.partition_epoch),
    )
    .await
    .unwrap();

    // The leader, from its cache (leader epoch 0, zkVersion 0), writes an ISR change.
    let result = channel
        .alter_partition(
            topic_id,
            AlterPartitionRequest {
                partition: 0,
                leader_id: 1,
                leader_epoch: cached.leader_epoch,
                partition_epoch: cached.partition_epoch,
                new_isr_with_epochs: vec![(1, -1)],
            },
        )
        .await
        .map(|r| r.partition_epoch);
    let (data, _) = c.get_data(&path).await.unwrap();
    let now: PartitionStateZnode = serde_json::from_slice(&data).unwrap();
    server.abort();
    (result, now.leader_epoch)
}

#[test]
fn a_stale_isr_write_is_refused_by_zkversion_and_overwrites_the_election_without_the_check() {
    if !installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (bug, expect_ok) in [(false, false), (true, true)] {
        let zk_dir = dir.path().join(format!("zk-{bug}"));
        let ensemble = ZkEnsemble::launch(ZkEnsembleSpec::new(1, &zk_dir)).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let bugs = ZkBugs(if bug {
            vec![ZkBug::NoZkVersionCheck]
        } else {
            vec![]
        });
        let data = dir.path().join(format!("broker-{bug}"));
        let (result, leader_epoch) =
            rt.block_on(stale_isr_write(&ensemble.connect_string(), &data, bugs));
        rt.shutdown_timeout(Duration::from_secs(2));
        drop(ensemble);
        if expect_ok {
            assert!(result.is_ok(), "no-zkversion-check: {result:?}");
            assert_eq!(
                leader_epoch, 0,
                "the stale write replaced the election (a lost update)"
            );
        } else {
            assert_eq!(result, Err(108), "INVALID_UPDATE_VERSION");
            assert_eq!(leader_epoch, 1, "the election stands");
        }
    }
}
