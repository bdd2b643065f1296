//! `kcheck compare`'s measurements: the generic shortest-path search and the ZooKeeper-mode
//! figures it produces (the model's own numbers, checked so a model change that alters them
//! is noticed and the spec's table updated).

use kcheck_models::compare::{shortest_path, Scenario};
use kcheck_models::zk_controller::{self, Action, ZkController};
use kcheck_models::{find, KcheckModel};
use stateright::Model;

#[test]
fn zookeeper_controller_failover_costs_six_steps_and_fourteen_messages() {
    // New controller: /controller watch + getData + multi + getChildren + getData (5), its
    // failover LeaderAndIsr+UpdateMetadata to b1 and b2 (4); the election's multi-op (1) and
    // LeaderAndIsr+UpdateMetadata to b1 and b2 (4). Steps: become controller, elect, and two
    // deliveries on each of the two connections.
    let m = zk_controller::controller_failover(3).expect("the failover completes");
    assert_eq!((m.steps, m.messages), (6, 14));
}

#[test]
fn zookeeper_leader_change_messages_grow_with_the_brokers() {
    assert_eq!(zk_controller::leader_change(1), None, "no other replica");
    let messages: Vec<usize> = (2..=4)
        .map(|n| {
            zk_controller::leader_change(n)
                .expect("a new leader")
                .messages
        })
        .collect();
    // watch + getChildren + multi-op, then LeaderAndIsr and UpdateMetadata per live broker.
    assert_eq!(messages, vec![5, 7, 9]);
}

#[test]
fn a_failed_controller_costs_more_than_a_leader_change_alone() {
    for n in 2..=4 {
        let failover = zk_controller::controller_failover(n).unwrap();
        let change = zk_controller::leader_change(n).unwrap();
        assert!(failover.messages > change.messages, "{n} brokers");
        assert!(failover.steps > change.steps, "{n} brokers");
    }
}

#[test]
fn shortest_path_is_none_when_the_goal_cannot_be_reached() {
    let config = find("zk-controller").unwrap().config(&[], &[]).unwrap();
    let model = ZkController::from_config(&config);
    let start = model
        .next_state(&model.initial_state(), Action::ExpireSession { broker: 0 })
        .unwrap();
    // Without deliveries no broker ever learns the new leader.
    let found = shortest_path(
        Scenario {
            model: &model,
            start,
            allowed: |a| !matches!(a, Action::Deliver { .. }),
            goal: |_, s| {
                s.zk.partition.leader != Some(0) && zk_controller::every_live_broker_knows_leader(s)
            },
            messages: |_, b, a, c| zk_controller::messages(b, a, c),
        },
        100_000,
    );
    assert_eq!(found, None);
}
