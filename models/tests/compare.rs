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

#[test]
fn kraft_steady_state_satisfies_the_kraft_invariants() {
    use kcheck_models::kraft::Kraft;
    let config = find("kraft")
        .unwrap()
        .config(&[], &[("brokers".into(), 2)])
        .unwrap();
    let m = Kraft::from_config(&config);
    let s = kcheck_models::kraft_failover::steady_state(&m);
    for p in Kraft::named_properties() {
        if let kcheck_models::PropertyKind::Always(holds) = p.kind {
            assert!(
                holds(&m, &s),
                "{} holds in the hand-built steady state",
                p.name
            );
        }
    }
}

#[test]
fn kraft_failover_and_leader_change_figures() {
    use kcheck_models::kraft_failover;
    // As measured by the kraft model (see specs/zookeeper-vs-kraft.md for the path).
    let failover = kraft_failover::controller_failover(2).expect("the failover completes");
    assert_eq!((failover.steps, failover.messages), (12, 11));
    let change = kraft_failover::leader_change(2).expect("a new leader");
    assert_eq!(change.messages, 3);
    assert_eq!(kraft_failover::leader_change(1), None, "no other replica");
    assert_eq!(
        kraft_failover::controller_failover(3),
        None,
        "beyond the kraft model's brokers"
    );
    // The measured comparison: a controller failover costs KRaft more requests than ZooKeeper
    // mode at this size, while a leader change with a healthy controller costs it fewer.
    let zk = zk_controller::controller_failover(2).unwrap();
    assert!(failover.messages > zk.messages);
    assert!(change.messages < zk_controller::leader_change(2).unwrap().messages);
}
