//! ZooKeeper mode's composite fault `zombie-failover`: a controller that becomes a zombie with
//! a leader's death still queued (`specs/cluster-zookeeper.md`, "Two leaders in one leader
//! epoch"), lined up with signals and timing only.
//!
//! The zombie window needs the controller `c` to hold a BrokerChange when its session
//! expires. A plain `zombie` pause catches that only by luck; this fault makes it the
//! schedule, the way it happened in production: a controller busy failing over a broker that
//! led many partitions (a leader election, a conditional ZooKeeper write and a LeaderAndIsr
//! each) when it stalls (a GC pause) past its session timeout.
//!
//! 0. The run makes the work: in ZooKeeper mode with this fault it creates a ballast topic
//!    ([`BALLAST_TOPIC`], [`BALLAST_PARTITIONS`] partitions, no client writes to it) before the
//!    workload starts, and its leader probe covers it too.
//! 1. `kill -9` of a partition leader `l` that is not the controller, preferably the one that
//!    leads the most partitions the zombie could give a second leader ([`choose_victim`]; a
//!    follower when the controller leads every partition). Its session lives on for about one
//!    session timeout T (the ZooKeeper server expires it then).
//! 2. The harness watches `/brokers/ids/l` and the state znodes of the partitions `l` leads or
//!    is in the ISR of, from a ZooKeeper session of its own: when `l`'s znode goes, `c`'s
//!    `/brokers/ids` watch fires and `c` starts the BrokerChange (read the live brokers, then
//!    one fenced partition-state write per partition to change, hundreds of milliseconds with
//!    the ballast). [`pause_offset`] (a seeded 0 to [`PAUSE_OFFSET_MAX`]) after the first of
//!    those writes the harness sends `c` SIGSTOP: the event is in hand, its writes under way.
//!    `c`'s own session expires about T later. (Pausing at the expiry itself missed: the
//!    harness's session may hear of it before the controller's, and a notification still in
//!    the socket is dropped on resume when the client's read timeout fires first.)
//! 3. Another broker `n` becomes controller (a higher controller epoch), sees neither `l` nor
//!    `c` live and elects new leaders in the next leader epoch E.
//! 4. [`RESUME_AFTER_ELECTION`] after `n` took `/controller`, SIGCONT of `c`: its next
//!    ZooKeeper call fails with the session expired, and the controller finishes the event in
//!    hand on its new session (Kafka's pre-KAFKA-6082 window) from its stale cache — leader
//!    epoch E − 1 for the partitions it had not written yet, `l` dead, `c` live again — and
//!    elects for leader epoch E too. Only `no-controller-epoch-check` and
//!    `no-zkversion-check` together let those writes through.
//! 5. The leaders are watched closely ([`WATCH_AFTER_RESUME`]): the zombie's leadership may
//!    last only until the new controller's next LeaderAndIsr.
//! 6. `l` stays down until the fault ends: were it back before the zombie read the live
//!    brokers, the zombie would see no failure to act on.
//!
//! The choices (which leader, the offset) are seeded; the waits are bounded.

use crate::nemesis::grudge::NodeId;
use crate::sim::Rng;
use std::time::Duration;

/// The ballast topic of a ZooKeeper-mode run with `zombie-failover`: partitions for the
/// controller to fail over, so that a BrokerChange takes long enough to be paused in the
/// middle. No client reads or writes it; the leader probe watches its leaders. Its name sorts
/// after the test topic's (`kcheck-log`): the controller fails topics over in name order, so
/// the test topic's partitions get their new leaders first and the ballast delays only
/// itself (named before, it held the test topic's elections back by seconds on a loaded
/// machine, and a run's final reads then met a leader whose high watermark still lagged).
pub const BALLAST_TOPIC: &str = "kcheck-z-ballast";

/// The ballast's partition count (replication factor 3, as the test topic's). A third of them
/// are led by the broker killed (the placement spreads leaders), and the controller writes
/// each one's state in its own ZooKeeper round trip (a multi-op the ensemble logs and syncs
/// before it answers).
pub const BALLAST_PARTITIONS: i32 = 150;

/// The latest the controller is paused after its first partition-state write of the
/// failover: well inside the ballast's failover (a write takes a millisecond or more), early
/// enough that most of its partition-state writes are still to do.
pub const PAUSE_OFFSET_MAX: Duration = Duration::from_millis(50);

/// When, after the controller's first partition-state write of the failover, to pause it:
/// seeded in `0..=PAUSE_OFFSET_MAX`.
pub fn pause_offset(rng: &mut Rng) -> Duration {
    Duration::from_millis(rng.below(PAUSE_OFFSET_MAX.as_millis() as u64 + 1))
}

/// How long to wait, once the killed broker's session expired, for the controller's first
/// partition-state write of the failover: past it the controller is paused anyway (the
/// summary says no write was seen).
pub const FIRST_WRITE_WAIT: Duration = Duration::from_millis(1000);

/// How long to wait for the killed broker's session to expire, in session timeouts (it
/// expires within 1.15 T of the kill: an idle client pings every 3/20 T, and the server
/// expires sessions in buckets of its tickTime, 0.15 T here): past it the controller is not
/// paused and the fault ends as a plain kill.
pub const EXPIRY_WAIT_SESSIONS: u32 = 2;

/// How long `c` stays stopped once another broker holds `/controller`: the new controller
/// reads the cluster, elects and sends LeaderAndIsr, and the run's leader probe (which waits
/// up to its own timeout on the stopped broker each round) sees the new leaders.
pub const RESUME_AFTER_ELECTION: Duration = Duration::from_millis(1500);

/// How long after the SIGCONT the leaders are watched closely: the zombie registers again
/// and handles its events within about a second on a loaded machine.
pub const WATCH_AFTER_RESUME: Duration = Duration::from_millis(2500);

/// How often the close watch asks every broker what it leads. A zombie's leadership lasts
/// from its own LeaderAndIsr to the new controller's next one: tens of milliseconds in the
/// runs measured.
pub const WATCH_PERIOD: Duration = Duration::from_millis(10);

/// How long to wait for another broker to take `/controller` after the pause, in session
/// timeouts (the pause's own expiry, then the election): past it the controller is resumed
/// anyway and the summary says so.
pub const NEW_CONTROLLER_WAIT_SESSIONS: u32 = 4;

/// The broker to kill, seeded, and whether it leads a partition: a partition leader that is
/// not the controller, else (the controller leads every partition, as after a failover
/// without a preferred-leader election) one of the other `brokers`. `led` holds the leader and
/// replica set (assignment order) of every led partition, of the test topic and the ballast.
///
/// Preferred are leaders whose death makes the zombie elect a broker other than the new
/// controller's choice: the zombie elects the first replica after `l` in the assignment that
/// is live and in its cached ISR, which is `c` when `c` comes first among the others (the new
/// controller, seeing only itself live, elects itself). Any partition of `l` works when `c`
/// leads a partition itself: the zombie keeps `c` as leader with the next leader epoch, the one
/// the new controller gave its own election; so does a follower. Among the candidates the ones
/// with the most such partitions are chosen: the more partitions the controller must fail
/// over, the longer it holds the BrokerChange in hand (the ballast's purpose), and the more
/// partitions can end with two leaders. `None` when no partition leader is known or no other
/// broker exists.
pub fn choose_victim(
    rng: &mut Rng,
    led: &[(NodeId, Vec<NodeId>)],
    brokers: &[NodeId],
    controller: NodeId,
) -> Option<(NodeId, bool)> {
    let mut candidates: Vec<NodeId> = led
        .iter()
        .map(|(l, _)| *l)
        .filter(|&l| l != controller)
        .collect();
    candidates.sort();
    candidates.dedup();
    let controller_leads = led.iter().any(|(l, _)| *l == controller);
    let promise = |l: NodeId| {
        led.iter()
            .filter(|(leader, replicas)| {
                *leader == l
                    && (controller_leads || replicas.iter().find(|&&b| b != l) == Some(&controller))
            })
            .count()
    };
    let best = candidates.iter().map(|&l| promise(l)).max().unwrap_or(0);
    let preferred: Vec<NodeId> = candidates
        .iter()
        .copied()
        .filter(|&l| best > 0 && promise(l) == best)
        .collect();
    let pool = if preferred.is_empty() {
        &candidates
    } else {
        &preferred
    };
    if !pool.is_empty() {
        return Some((pool[rng.below(pool.len() as u64) as usize], true));
    }
    let followers: Vec<NodeId> = brokers
        .iter()
        .copied()
        .filter(|&b| b != controller)
        .collect();
    if !controller_leads || followers.is_empty() {
        return None;
    }
    Some((followers[rng.below(followers.len() as u64) as usize], false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// (leader, replicas) of each partition led, from partition → leader and → replicas.
    fn led(
        leaders: &[(i32, NodeId)],
        replicas: &[(i32, Vec<NodeId>)],
    ) -> Vec<(NodeId, Vec<NodeId>)> {
        let replicas: BTreeMap<i32, Vec<NodeId>> = replicas.iter().cloned().collect();
        leaders
            .iter()
            .map(|(p, l)| (*l, replicas[p].clone()))
            .collect()
    }

    #[test]
    fn the_controller_is_never_the_broker_killed() {
        let brokers = [1, 2, 3];
        let replicas = [(0, vec![1, 2, 3]), (1, vec![1, 3, 2])];
        // The controller leads everything: a follower dies (both occur).
        let everything = led(&[(0, 1), (1, 1)], &replicas);
        let chosen: std::collections::BTreeSet<(NodeId, bool)> = (0..40)
            .filter_map(|s| choose_victim(&mut Rng::new(s), &everything, &brokers, 1))
            .collect();
        assert_eq!(chosen, [(2, false), (3, false)].into());
        let split = led(&[(0, 1), (1, 2)], &replicas);
        for seed in 0..20 {
            assert_eq!(
                choose_victim(&mut Rng::new(seed), &split, &brokers, 1),
                Some((2, true))
            );
        }
        // No leader known, or no other broker: nothing to do.
        assert_eq!(choose_victim(&mut Rng::new(0), &[], &brokers, 1), None);
        let alone = led(&[(0, 1)], &replicas);
        assert_eq!(choose_victim(&mut Rng::new(0), &alone, &[1], 1), None);
    }

    #[test]
    fn a_leader_whose_next_replica_is_the_controller_is_preferred() {
        // Controller 3 leads nothing; partition 0 ([1, 2, 3]) would go to 2 (not the zombie),
        // partition 1 ([2, 3, 1]) to 3, the zombie: killing 2 is the promising choice.
        let partitions = led(&[(0, 1), (1, 2)], &[(0, vec![1, 2, 3]), (1, vec![2, 3, 1])]);
        for seed in 0..20 {
            assert_eq!(
                choose_victim(&mut Rng::new(seed), &partitions, &[1, 2, 3], 3),
                Some((2, true))
            );
        }
        // When the controller leads a partition, every other leader is promising, the more
        // partitions it leads the more: equal counts, both occur; one more partition for 1
        // (a ballast partition, say), only 1.
        let replicas = [
            (0, vec![1, 2, 3]),
            (1, vec![2, 1, 3]),
            (2, vec![3, 1, 2]),
            (3, vec![1, 3, 2]),
        ];
        let even = led(&[(0, 1), (1, 2), (2, 3)], &replicas);
        let chosen: std::collections::BTreeSet<(NodeId, bool)> = (0..40)
            .filter_map(|s| choose_victim(&mut Rng::new(s), &even, &[1, 2, 3], 3))
            .collect();
        assert_eq!(chosen, [(1, true), (2, true)].into());
        let more = led(&[(0, 1), (1, 2), (2, 3), (3, 1)], &replicas);
        for seed in 0..20 {
            assert_eq!(
                choose_victim(&mut Rng::new(seed), &more, &[1, 2, 3], 3),
                Some((1, true))
            );
        }
    }

    #[test]
    fn the_pause_offset_is_seeded_and_bounded() {
        let offsets: Vec<Duration> = (0..50).map(|s| pause_offset(&mut Rng::new(s))).collect();
        assert!(offsets.iter().all(|o| *o <= PAUSE_OFFSET_MAX));
        assert!(offsets.iter().any(|o| *o != offsets[0]));
        assert_eq!(
            pause_offset(&mut Rng::new(7)),
            pause_offset(&mut Rng::new(7))
        );
    }
}
